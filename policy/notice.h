/*
 * notice.h - the message a client receives in place of a quarantined one.
 *
 * The notice is a valid RFC 5322 message that keeps the original's From,
 * To, Cc, Date and Message-ID (so it sorts where the original would), marks
 * the Subject, and carries a Japanese and English body naming the threat,
 * the quarantine id and the admin contact. Built with GMime: headers are
 * RFC 2047-encoded, the body is UTF-8 quoted-printable, lines end in CRLF.
 * When pad_to is larger than the notice, it is padded to exactly pad_to
 * octets with whitespace-only lines at the end of the body (invisible after
 * quoted-printable decoding), so clients that trust LIST / RFC822.SIZE keep
 * working.
 */
#ifndef MAILMOAT_NOTICE_H
#define MAILMOAT_NOTICE_H

#include <stddef.h>
#include <stdint.h>

struct spool;

/* Headers of the original, as found (raw, unfolded) plus decoded forms. */
struct msg_headers {
	char *from;         /* raw values, NULL when absent */
	char *to;
	char *cc;
	char *date;
	char *message_id;
	char *subject;
	char *from_utf8;    /* RFC 2047-decoded, UTF-8, NULL when absent */
	char *subject_utf8;
};

/*
 * Reads the header block at the start of the frozen spool (at most 256 KiB
 * of it) and fills *h. Never fails on malformed mail: missing headers stay
 * NULL. Returns 0, or -1 on I/O or allocation failure. Thread-safe (call
 * notice_global_init once first).
 */
int notice_read_headers(const struct spool *sp, struct msg_headers *h);

/* Frees the strings of *h and zeroes it. */
void notice_headers_free(struct msg_headers *h);

struct notice_info {
	const char *verdict;       /* "infected" | "error" */
	const char *signature;     /* the threat, or the scan error text */
	const char *quarantine_id;
	const char *admin_contact;
	uint64_t pad_to;           /* pad to this many octets when smaller (0: no padding) */
};

/* Once per process before any thread uses GMime. */
void notice_global_init(void);

/*
 * Builds the notice. Returns 0 and a malloc'd buffer (*out_r, owned by the
 * caller) of *len_r bytes, CRLF line endings, ending in CRLF; -1 on
 * allocation failure. Thread-safe.
 */
int notice_build(const struct msg_headers *h, const struct notice_info *ni,
		 char **out_r, size_t *len_r);

#endif
