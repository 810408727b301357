/*
 * imap_parse.h - pure, resumable IMAP stream parsers (RFC 3501, RFC 9051,
 * RFC 7888 literals, RFC 3516 literal8).
 *
 * No I/O. Two layers:
 *
 *  1. The segmenter (both directions): splits a byte stream into line
 *     segments and literals. A segment is the text of a line up to and
 *     including either its CRLF (the line ends) or a literal marker at the
 *     end of the line ("{n}\r\n", "{n+}\r\n", "{n-}\r\n", "~{n}\r\n"), after
 *     which n literal bytes follow and the line goes on with the next
 *     segment. Quoted strings are tracked, so a "{5}" inside quotes is text.
 *     A bare LF also ends a line (and a marker: "{5}\n"); a bare CR is text.
 *     Segments are handed out whole up to IMAP_SEG_MAX bytes; a longer one
 *     comes in pieces (end = IMAP_SEG_PART on all but the last; the last
 *     always holds the whole literal marker). Literal bytes stream through
 *     as LITERAL_DATA chunks pointing into the caller's buffer.
 *
 *  2. The tokenizer: reads one segment's text as IMAP tokens (atoms,
 *     numbers, quoted strings, parentheses, NIL, fetch attribute names with
 *     their [section]<partial> kept whole, a literal marker), for the
 *     session's questions: which tag, which command, which FETCH items.
 *
 * The result is the same however the input is split (one byte at a time
 * included), in O(n). Pointers in events are valid until the next call.
 */
#ifndef MAILMOAT_IMAP_PARSE_H
#define MAILMOAT_IMAP_PARSE_H

#include <stddef.h>
#include <stdint.h>

enum imap_res { IMAP_NEED_MORE = 0, IMAP_OK = 1, IMAP_ERROR = -1 };

/* ---------------- segmenter ---------------- */

#define IMAP_SEG_MAX 65536

enum imap_ev_type {
	IMAP_EV_NONE,
	IMAP_EV_SEGMENT,      /* a line segment (see struct imap_event) */
	IMAP_EV_LITERAL_DATA, /* a chunk of literal bytes */
	IMAP_EV_LITERAL_END,  /* the last literal byte was read */
	IMAP_EV_COUNT
};

enum imap_seg_end {
	IMAP_SEG_CRLF,    /* the line ends here (CRLF, or a bare LF) */
	IMAP_SEG_LITERAL, /* a literal marker ends it: literal_size bytes follow */
	IMAP_SEG_PART,    /* cut at IMAP_SEG_MAX: more of the same segment follows */
	IMAP_SEG_END_COUNT
};

struct imap_event {
	enum imap_ev_type type;
	/* SEGMENT: the raw bytes, terminator included; LITERAL_DATA: the chunk */
	const char *data;
	size_t len;
	/* SEGMENT */
	enum imap_seg_end end;
	int first; /* the segment starts a new line (a PART continuation: 0) */
	uint64_t literal_size; /* end == LITERAL */
	int literal8;          /* "~{n}" (RFC 3516) */
	int nonsync;           /* "{n+}" (RFC 7888 LITERAL+) or "{n-}" (LITERAL-) */
};

enum imap_seg_state {
	IMAP_SS_LINE,      /* in a line segment, outside quotes */
	IMAP_SS_QUOTED,    /* inside a quoted string */
	IMAP_SS_QUOTED_BS, /* after a backslash inside a quoted string */
	IMAP_SS_LITERAL,   /* reading literal bytes */
	IMAP_SS_COUNT
};

/* RFC 9051 number64: a literal size is at most 2^63 - 1, so at most 19 digits. */
#define IMAP_LITERAL_DIGITS_MAX 19

struct imap_seg_parser {
	enum imap_seg_state state;
	uint64_t max_literal;  /* literal sizes above this are an error (init maps 0 to
	                          4 GiB - 1) */
	uint64_t literal_left; /* IMAP_SS_LITERAL: bytes still to come (0: LITERAL_END
	                          is the next event) */
	/*
	 * Bytes consumed since init. After IMAP_ERROR: the stream offset of the
	 * offending marker's first byte ('~' or '{').
	 */
	uint64_t pos;
	int line_start;    /* the next segment starts a new line */
	size_t len;        /* bytes held in buf */
	size_t drop;       /* bytes at the front of buf handed out by the last event,
	                      discarded at the next call */
	const char *error; /* static text after IMAP_ERROR */
	/*
	 * Literal marker recognition, private to imap_parse.c: the state of the
	 * candidate "~{digits[+-]}\r" that the bytes seen so far end with, where
	 * it starts (index in buf, and stream offset) and what it says so far.
	 */
	int mk;
	size_t mk_start;
	uint64_t mk_off;
	unsigned mk_digits;
	uint64_t mk_size;
	int mk_literal8;
	int mk_nonsync;
	char buf[IMAP_SEG_MAX]; /* the segment being read; must stay the last member */
};

/* Initialises p; literals larger than max_literal are refused (0: 4 GiB - 1). */
void imap_seg_init(struct imap_seg_parser *p, uint64_t max_literal);

/*
 * Feeds bytes. Returns IMAP_OK with one event and *consumed_r bytes used
 * (possibly 0: LITERAL_END is returned without consuming anything, so keep
 * calling until IMAP_NEED_MORE, also with len == 0); IMAP_NEED_MORE when
 * all bytes were used without completing an event; IMAP_ERROR when a
 * well-formed literal marker ends a line but its size has more than
 * IMAP_LITERAL_DIGITS_MAX digits, passes 2^63 - 1 or passes max_literal.
 * Anything that is not a well-formed marker ("{12x}\r\n", "{}\r\n", a marker
 * not at the end of its line) is text, not an error. Every byte consumed
 * ends up in exactly one event, or is still held in buf (the segmenter is
 * lossless). After an error the parser must be re-initialised.
 */
int imap_seg_feed(struct imap_seg_parser *p, const char *buf, size_t len,
                  size_t *consumed_r, struct imap_event *ev);

const char *imap_seg_error(const struct imap_seg_parser *p);

/* ---------------- tokenizer ---------------- */

enum imap_tok_type {
	IMAP_TOK_END,    /* end of the segment text (CRLF or literal marker reached) */
	IMAP_TOK_ATOM,   /* an atom; fetch attributes keep "[...]" and "<...>" in it */
	IMAP_TOK_NUMBER, /* an atom of digits only whose value fits 63 bits (in num);
	                    a longer run of digits is an IMAP_TOK_ATOM */
	IMAP_TOK_QUOTED, /* a quoted string (text is the raw form with its quotes) */
	IMAP_TOK_LPAREN,
	IMAP_TOK_RPAREN,
	IMAP_TOK_NIL,
	IMAP_TOK_LITERAL, /* the literal marker that ends the segment (text: e.g.
	                     "~{5+}", without the line ending; num: the size) */
	IMAP_TOK_ERROR,   /* malformed (unbalanced [ or <, bad quoting) */
	IMAP_TOK_COUNT
};

struct imap_tok {
	enum imap_tok_type type;
	const char *text; /* points into the segment */
	size_t len;
	uint64_t num; /* NUMBER, LITERAL: the value */
};

/*
 * Reads the next token of seg (len bytes, as handed out by the segmenter)
 * from *pos, skipping spaces, and advances *pos past it. Never reads past
 * len. Bracket (and parenthesis) nesting inside an atom is bounded
 * (IMAP_TOK_ERROR past 8). At IMAP_TOK_END *pos stays at the line ending;
 * at IMAP_TOK_ERROR it stays at the start of the bad token (text/len cover
 * the token up to the offending byte), so calling again repeats the answer.
 * Atoms are runs of printable ASCII other than SP ( ) { " (so "]", "*", "%"
 * and "\" of flags are atom bytes) and of bytes >= 0x80; other control
 * bytes, a CR not ending the line and a "{" that is not the final literal
 * marker are IMAP_TOK_ERROR. So is a section holding a literal
 * (BODY[HEADER.FIELDS ({4}\r\n...): it cannot be one token of one segment,
 * and the caller must fail safe.
 */
enum imap_tok_type imap_tok_next(const char *seg, size_t len, size_t *pos,
                                 struct imap_tok *t);

/* Case-insensitive comparison of a token with an ASCII word. */
int imap_tok_is(const struct imap_tok *t, const char *word);

#endif
