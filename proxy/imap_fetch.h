/*
 * imap_fetch.h - what an IMAP FETCH asks for, and what a FETCH response
 * carries (RFC 3501 section 6.4.5 and 7.4.2, RFC 9051, RFC 3516 BINARY,
 * RFC 7162 CHANGEDSINCE / VANISHED).
 *
 * Pure functions over text the segmenter and tokenizer (imap_parse.h) hand
 * out; no I/O, no allocation. The IMAP session asks:
 *  - does this client FETCH return message content, and is it the whole
 *    message (scannable inline from the response) or a part/partial that
 *    needs the whole message scanned first?
 *  - which sequence numbers or UIDs does it cover?
 *  - for a response literal: which item is it, and which octets of the
 *    message does it hold?
 */
#ifndef MAILMOAT_IMAP_FETCH_H
#define MAILMOAT_IMAP_FETCH_H

#include <stddef.h>
#include <stdint.h>

/* What one fetch attribute returns. */
enum imap_item_kind {
	IMAP_ITEM_OTHER,     /* FLAGS, UID, INTERNALDATE, MODSEQ, ENVELOPE, X-... */
	IMAP_ITEM_SIZE,      /* RFC822.SIZE, BINARY.SIZE[...] */
	IMAP_ITEM_STRUCTURE, /* BODY, BODYSTRUCTURE (no section) */
	IMAP_ITEM_HEADER,    /* header only: BODY[HEADER], BODY[HEADER.FIELDS (...)],
	                        BODY[HEADER.FIELDS.NOT (...)], RFC822.HEADER, with or without
	                        a    partial; of the top-level message only:
	                        BODY[1.HEADER...]    (the    header of a nested message) is
	                        CONTENT */
	IMAP_ITEM_WHOLE,   /* the whole message, no partial: BODY[], BODY.PEEK[], RFC822,
	                      BINARY[], BINARY.PEEK[] */
	IMAP_ITEM_CONTENT, /* any other content: BODY[1], BODY[TEXT], BODY[2.MIME],
	                      RFC822.TEXT, BINARY[1], any <partial> (also of BODY[]) */
	IMAP_ITEM_KIND_COUNT
};

/* One fetch attribute, as named in a command or a response. */
struct imap_item {
	enum imap_item_kind kind;
	int peek;            /* BODY.PEEK / BINARY.PEEK: does not set \Seen */
	int binary;          /* BINARY[...] / BINARY.SIZE[...] */
	const char *section; /* the text between [ and ] (may be empty), or NULL */
	size_t section_len;
	int has_partial; /* <origin[.length]> present */
	uint64_t partial_origin;
	uint64_t partial_len; /* in a command: the requested length (0 if none given);
	                         in a response only the origin appears: BODY[]<0> */
};

/*
 * Classifies one fetch attribute token (the text of an IMAP_TOK_ATOM, e.g.
 * "BODY.PEEK[HEADER.FIELDS (From To)]<0.1024>"), case-insensitively.
 * Returns 0, or -1 when it is malformed (an unclosed bracket, a bad
 * partial): *it is then reset with kind IMAP_ITEM_CONTENT, and the caller
 * treats it so (fail safe). Names other than the ones listed above are
 * IMAP_ITEM_OTHER; a section is only accepted on BODY, BODY.PEEK, BINARY,
 * BINARY.PEEK and BINARY.SIZE, a partial only on the first four. Section
 * parts are nz-numbers (32 bits); partial numbers are RFC 9051 number64
 * (at most 2^63 - 1), the length non-zero. it->section points into text.
 */
int imap_item_parse(const char *text, size_t len, struct imap_item *it);

/* The macros: ALL, FULL, FAST (RFC 3501 section 6.4.5). */
#define IMAP_FETCH_ITEMS_MAX 64

/* A parsed client FETCH / UID FETCH command. */
struct imap_fetch_cmd {
	int uid;         /* UID FETCH */
	const char *set; /* the sequence set text */
	size_t set_len;
	unsigned n_items;
	struct imap_item items[IMAP_FETCH_ITEMS_MAX];
	int any_whole;     /* some item is IMAP_ITEM_WHOLE */
	int any_content;   /* some item is IMAP_ITEM_CONTENT */
	int any_header;    /* some item is IMAP_ITEM_HEADER */
	int any_describes; /* some item is IMAP_ITEM_SIZE or _STRUCTURE */
	int changedsince;  /* (CHANGEDSINCE n) modifier present */
	int vanished;      /* (VANISHED) modifier present */
};

/*
 * Parses the arguments of FETCH / UID FETCH: "SET ITEM" or "SET (ITEM ...)"
 * or a macro, then an optional modifier list "(CHANGEDSINCE n [VANISHED])".
 * args points just after the command word and its space, within one
 * segment (args_len bytes, the segment's CRLF may be included); set and
 * the items' sections point into args afterwards. Returns 0, or -1 when the
 * command is malformed or has more than IMAP_FETCH_ITEMS_MAX items (the
 * session then lets the server refuse it, or treats it as content: fail
 * safe); after -1, cmd has no items and any_content set. An RFC 5182 "$"
 * set is malformed here (the proxy cannot tell which messages it covers).
 * RFC 8970 "PREVIEW (LAZY)" is accepted; other attribute arguments and
 * other modifiers are malformed.
 */
int imap_fetch_cmd_parse(int uid, const char *args, size_t args_len,
                         struct imap_fetch_cmd *cmd);

/* ---------------- sequence sets (RFC 3501 section 9, sequence-set) ---------------- */

/*
 * Calls cb for each range of a sequence set ("1:4,7,9:*"), with '*' given
 * as star (the largest number in use: EXISTS for sequence numbers, UIDNEXT-1
 * for UIDs). Ranges are reported low to high ("5:2" is 2..5). Stops when cb
 * returns non-zero. Returns 0, or -1 for a malformed set (the whole set is
 * checked first: nothing is called for a malformed one), or the non-zero
 * value cb returned.
 */
typedef int (*imap_range_cb)(uint32_t lo, uint32_t hi, void *ctx);
int imap_seqset_foreach(const char *set, size_t len, uint32_t star, imap_range_cb cb,
                        void *ctx);

/* True when n is in the set (with star as above); malformed sets contain nothing. */
int imap_seqset_contains(const char *set, size_t len, uint32_t star, uint32_t n);

/* ---------------- FETCH responses ---------------- */

/*
 * The head of an untagged FETCH response segment: "* 12 FETCH (". Returns
 * 1 and the sequence number when seg starts so (case-insensitive), else 0.
 */
int imap_is_fetch_response(const char *seg, size_t len, uint32_t *seq_r);

/*
 * Walks one FETCH response segment by segment (the segments of one line,
 * with literals in between), tracking parenthesis depth so that it knows
 * for each literal whether it is the value of a top-level attribute (and
 * which one) or a string inside ENVELOPE / BODYSTRUCTURE, and picking up
 * "UID n" wherever it appears at the top level.
 */
#define IMAP_ITEM_TEXT_MAX 512    /* an attribute name, NUL included */
#define IMAP_FETCH_DEPTH_MAX 1024 /* parenthesis nesting (BODYSTRUCTURE) */

struct imap_fetch_walk {
	int depth;          /* parenthesis depth; 1 = the attribute list */
	int want_value;     /* the last top-level token was an attribute name */
	int started;        /* "* n FETCH (" was read */
	int error;          /* malformed: the caller must fail safe */
	const char *why;    /* static text after an error */
	int done;           /* the closing ")" and the line's CRLF were read */
	int inline_content; /* a WHOLE or CONTENT attribute had a quoted (or atom)
	                       value: content with no literal, which the session must
	                       hold for a verdict like a literal's */
	uint32_t seq;
	uint32_t uid;
	int have_uid;
	struct imap_item item;              /* the attribute awaiting its value */
	char item_text[IMAP_ITEM_TEXT_MAX]; /* its name (item.section points here) */
	size_t item_len;
};

void imap_fetch_walk_init(struct imap_fetch_walk *w);

/*
 * Feeds one segment (as the segmenter hands it out, terminator included;
 * IMAP_SEG_PART pieces are not supported: pass whole segments). When the
 * segment ends in a literal marker, *lit_item_r is set to the attribute the
 * literal is the value of and 1 is returned (its section points into
 * w->item_text); 0 when the literal is nested (inside ENVELOPE,
 * BODYSTRUCTURE...) or the segment ended the line (w->done set); -1 on
 * malformed input (w->error and w->why set; later calls fail too). Malformed
 * includes an attribute name imap_item_parse refuses, one of
 * IMAP_ITEM_TEXT_MAX bytes or more, a UID that is not an nz-number or
 * differs from an earlier one, a list as the value of a SIZE, HEADER, WHOLE
 * or CONTENT attribute or of UID (a literal nested in such a list would
 * otherwise pass as "nested"), a literal as the value of UID, a SIZE or a
 * STRUCTURE attribute, and a segment fed after the line ended.
 */
int imap_fetch_walk_segment(struct imap_fetch_walk *w, const char *seg, size_t len,
                            struct imap_item *lit_item_r);

#endif
