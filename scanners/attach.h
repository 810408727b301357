/*
 * attach.h - attachment rules on a message's MIME structure: blocked file
 * name extensions, double extensions, names hiding their extension behind
 * bidi controls, blocked declared MIME types.
 *
 * The first link of the scanner chain (rules → clamav), run on a pool
 * thread before libclamav. The check streams the message through a bounded,
 * resumable MIME structure parser: memory stays the same (a few tens of KiB)
 * whatever the message size or its number of parts, and no part content is
 * decoded, except the body of an encoded message/rfc822 part, which is
 * parsed as a nested message on the fly. Header parameters (RFC 2231
 * encoded and continued, RFC 2047 encoded-words in quoted names) are
 * decoded by GMime, so g_mime_init() must have run. Pure otherwise: no
 * global state, thread-safe, no I/O except attach_check_fd's pread.
 *
 * Independent of the configuration: the caller maps its settings into a
 * struct attach_rules (attach_rules_default() gives the shipped defaults).
 */
#ifndef MAILMOAT_ATTACH_H
#define MAILMOAT_ATTACH_H

#include <stddef.h>

/* Nesting bound used when attach_rules.max_depth is 0 (libclamav's default). */
#define ATTACH_MAX_DEPTH 17

enum attach_res {
	ATTACH_ERROR =
	    -1,          /* cannot tell: read error, nesting or a header too deep/long */
	ATTACH_PASS = 0, /* nothing blocked */
	ATTACH_BLOCKED = 1 /* a part matched a rule: the finding says which and why */
};

struct attach_rules {
	/*
	 * Blocked extensions, with or without the leading dot, any case
	 * ("exe", ".EXE"). An entry matches a name that ends in "." + entry, so
	 * it is the last extension that counts ("a.exe.pdf" is not ".exe"); an
	 * entry with a dot inside ("tar.gz") matches that whole suffix.
	 */
	const char *const *extensions;
	size_t n_extensions;
	/*
	 * Blocked declared Content-Types, "type/subtype", any case, parameters
	 * ignored. An entry ending in '*' is a prefix ("application/x-ms*");
	 * there is no other wildcard.
	 */
	const char *const *mime_types;
	size_t n_mime_types;
	/*
	 * 1: report "invoice.pdf.exe" (a document/media extension, see
	 * attach_decoy_extensions, followed by a blocked one) as a double
	 * extension, and also block a decoy followed by one of the shipped
	 * default extensions even when the configured list no longer has it
	 * ("report.pdf.js" stays blocked when "js" was allowed).
	 */
	int double_extensions;
	/*
	 * 1: block any name holding an explicit bidi embedding, override or
	 * isolate (U+202A..U+202E, U+2066..U+2069) whatever its extension.
	 * They have no use in a file name but to show "invoice<RLO>fdp.exe" as
	 * "invoiceexe.pdf". Names with them that match an extension are
	 * reported as "hidden extension (RTL override)" either way.
	 */
	int bidi_controls;
	/* Deepest multipart / message/rfc822 nesting followed; 0 = ATTACH_MAX_DEPTH. */
	unsigned max_depth;
	/*
	 * More body parts than this in the whole message (nested messages
	 * included) is ATTACH_ERROR "more than N MIME parts"; 0 = no limit.
	 */
	unsigned long max_parts;
};

struct attach_finding {
	/*
	 * The part as an IMAP section number ("2", "3.1"; "1" for a message
	 * without parts), RFC 3501 section 6.4.5.
	 */
	char part[64];
	/*
	 * The matched name after decoding and normalisation (UTF-8, bidi and
	 * zero-width characters removed; trailing dots and spaces stripped);
	 * empty when the part has none. Text from the message: escape it before
	 * logging.
	 */
	char filename[256];
	char mime_type[128]; /* the part's declared type/subtype, lower case */
	/*
	 * Why: "extension .exe", "double extension invoice.pdf.exe", "MIME type
	 * application/x-msdownload", "hidden extension (RTL override)"; on
	 * ATTACH_ERROR, what went wrong.
	 */
	char reason[160];
	/* body parts seen (the count stops past max_parts) */
	unsigned long parts;
};

/* The shipped defaults (see attach.c for why each is there). */
extern const char *const attach_default_extensions[];
extern const size_t attach_n_default_extensions;
extern const char *const attach_default_mime_types[];
extern const size_t attach_n_default_mime_types;
/* Extensions people open without a second thought: the decoys of a double extension. */
extern const char *const attach_decoy_extensions[];
extern const size_t attach_n_decoy_extensions;

/*
 * Fills *r with the shipped defaults: the lists above, double_extensions
 * and bidi_controls on, max_depth ATTACH_MAX_DEPTH. The lists are static:
 * nothing to free.
 */
void attach_rules_default(struct attach_rules *r);

/*
 * Checks one file name (UTF-8, as decoded from the message) against the
 * extension rules, as attach_check_* does for every named part. Returns
 * ATTACH_PASS or ATTACH_BLOCKED with *f_r filled (part left empty);
 * f_r may be NULL.
 */
enum attach_res attach_check_name(const char *name, const struct attach_rules *r,
                                  struct attach_finding *f_r);

/*
 * Checks every part of the message in data[0..len): declared type, and the
 * names from Content-Disposition filename and Content-Type name (every
 * occurrence of each). Stops at the first blocked part. Returns
 * ATTACH_PASS, ATTACH_BLOCKED (*f_r says which part and which rule) or
 * ATTACH_ERROR (*f_r->reason says why: nesting past max_depth, a
 * Content-Type / Content-Disposition header over 16 KiB, out of memory).
 * Malformed MIME is not an error: what cannot be split (a multipart
 * without a boundary) is one part, checked by its own headers. f_r must
 * not be NULL; it is zeroed first.
 */
enum attach_res attach_check_buffer(const void *data, size_t len,
                                    const struct attach_rules *r,
                                    struct attach_finding *f_r);

/*
 * The same for the message in fd, read with pread(2) from offset 0 to the
 * end in 64 KiB steps: the fd's offset is neither used nor moved, so other
 * threads may pread the same file meanwhile. A read error is ATTACH_ERROR.
 */
enum attach_res attach_check_fd(int fd, const struct attach_rules *r,
                                struct attach_finding *f_r);

/*
 * The streaming form under both, for a caller that has the message in
 * pieces: attach_stream_new (NULL when out of memory), then
 * attach_stream_feed for each piece in order, however split (one byte at a
 * time gives the same answer), then attach_stream_finish once. feed returns
 * ATTACH_PASS to go on; after a BLOCKED or ERROR from feed, do not feed
 * again: finish repeats that answer. The rules must outlive the stream.
 */
struct attach_stream;

struct attach_stream *attach_stream_new(const struct attach_rules *r);
enum attach_res attach_stream_feed(struct attach_stream *s, const void *data, size_t len);
enum attach_res attach_stream_finish(struct attach_stream *s, struct attach_finding *f_r);
/* Frees the stream and NULLs *sp. */
void attach_stream_free(struct attach_stream **sp);

#endif
