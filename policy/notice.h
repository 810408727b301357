/*
 * notice.h - the message a client receives in place of a quarantined one.
 *
 * The notice is a valid RFC 5322 message that keeps the original's From,
 * To, Cc, Date and Message-ID (so it sorts where the original would), and
 * whose Subject and body come from a template: by default the built-in
 * Japanese-then-English text naming the threat, the quarantine id and the
 * admin contact. Built with GMime: the Subject (and any X- header of the
 * template) is RFC 2047-encoded in encoded words of at most 75 octets,
 * folded at 78; the body is UTF-8 quoted-printable; lines end in CRLF.
 * When pad_to is larger than the notice, it is padded to exactly pad_to
 * octets with whitespace-only lines at the end of the body (invisible after
 * quoted-printable decoding), so clients that trust LIST / RFC822.SIZE keep
 * working.
 *
 * Templates (policy/notices/NAME.txt, the format is described at the top of
 * notice.c and in the README) are loaded once, at start-up or reload, and
 * are then read-only: any number of threads may render one at a time.
 */
#ifndef MAILMOAT_NOTICE_H
#define MAILMOAT_NOTICE_H

#include <stddef.h>
#include <stdint.h>

struct spool;

/* Headers of the original, as found (raw, unfolded) plus decoded forms. */
struct msg_headers {
	char *from; /* raw values, NULL when absent */
	char *to;
	char *cc;
	char *date;
	char *message_id;
	char *subject;
	char *from_utf8; /* RFC 2047-decoded, UTF-8, NULL when absent */
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

struct notice_template;

/*
 * What the notice says. Strings may be NULL; they are copied, cleaned
 * (valid UTF-8, no control characters) and cut at 512 octets.
 */
struct notice_info {
	/*
	 * "infected" (NULL too), "error", "encrypted_archive",
	 * "blocked_attachment", "oversize", "denied_sender"; "malicious" and
	 * "scan_error" are taken for the first two. Anything else renders as
	 * a generic "quarantined by policy" notice.
	 */
	const char *verdict;
	const char *signature; /* the threat, or the scan error text */
	const char *quarantine_id;
	const char *admin_contact;
	uint64_t pad_to; /* pad to this many octets when smaller (0: no padding) */
	/*
	 * {{reason}}: what the admin and the user need to know, e.g. the
	 * blocked attachment's name and the rule; NULL or "": the signature.
	 */
	const char *reason;
	/* NULL: the built-in default (the same text as the shipped ja+en) */
	const struct notice_template *tmpl;
};

/* Largest template file accepted. */
#define NOTICE_TEMPLATE_MAX (64 * 1024)

/*
 * Loads and checks the template file at path: at most NOTICE_TEMPLATE_MAX
 * octets of UTF-8, known variables only, a Subject. Returns the template
 * (release it with notice_template_free()), or NULL with a message in err
 * ("path:line: what", for the admin) on any error. Does not use GMime;
 * thread-safe.
 */
struct notice_template *notice_template_load(const char *path, char *err, size_t errlen);

/*
 * The same for a template in memory (len octets of text, no NUL needed);
 * name stands for the file in messages. The text is copied.
 */
struct notice_template *notice_template_parse(const char *name, const char *text,
                                              size_t len, char *err, size_t errlen);

/*
 * Resolves a configured template name, as notice.template and a rule's
 * notice_template give it:
 *   - with a '/': the file at that path;
 *   - a bare name ([A-Za-z0-9_+-], e.g. "ja"): DIR/NAME.txt when dir is
 *     set and that file exists, else the built-in of that name ("ja",
 *     "en", "ja+en").
 * Returns a template to release with notice_template_free() (the built-ins
 * are static: releasing them does nothing), or NULL with err set.
 */
struct notice_template *notice_template_open(const char *dir, const char *name, char *err,
                                             size_t errlen);

/*
 * Loads every *.txt in dir (hidden files skipped), for --check-config.
 * Returns how many loaded, or -1 with the first error in err.
 */
int notice_templates_check(const char *dir, char *err, size_t errlen);

/*
 * One more reference to t, for a holder that may outlive the
 * configuration that loaded it (a reload while jobs run). Returns t.
 * Atomic: any thread.
 */
struct notice_template *notice_template_ref(struct notice_template *t);

/* Drops a reference (freeing t at the last one) and NULLs *t. Accepts NULL. */
void notice_template_free(struct notice_template **t);

/* The path or built-in name the template came from (for logs). */
const char *notice_template_name(const struct notice_template *t);

/* Once per process before any thread uses GMime. */
void notice_global_init(void);

/*
 * Builds the notice from ni->tmpl (NULL: the built-in default). Returns 0
 * and a malloc'd buffer (*out_r, owned by the caller) of *len_r bytes,
 * CRLF line endings, ending in CRLF; -1 on allocation failure. Thread-safe.
 */
int notice_build(const struct msg_headers *h, const struct notice_info *ni, char **out_r,
                 size_t *len_r);

#endif
