/*
 * quarantine.h - the quarantine store on disk (a contract: outside tools
 * read this layout).
 *
 * For every quarantined message two files in the quarantine directory:
 *   ID.eml   the original exactly as the upstream sent it (dot-unstuffed)
 *   ID.json  metadata: id, received_at (RFC 3339), protocol, user, upstream,
 *            signature, size, sha256, from, subject (and a few more)
 * Both are mode 0600, written under temporary names, fsynced, renamed into
 * place, and the directory fsynced, before quar_store() returns: only then
 * may a notice be sent in the message's place. Blocking: thread pool only.
 */
#ifndef MAILMOAT_QUARANTINE_H
#define MAILMOAT_QUARANTINE_H

#include <stddef.h>

struct spool;

#define QUAR_ID_MAX 48

struct quar_meta {
	const char *protocol;  /* "pop3" | "imap" */
	const char *user;      /* the login name, or "" when unknown */
	const char *upstream;  /* "host:port" */
	const char *signature; /* the verdict's signature, or the scan error */
	const char *verdict;   /* "infected" | "error" */
	const char *from;      /* decoded From, UTF-8, may be NULL */
	const char *subject;   /* decoded Subject, UTF-8, may be NULL */
	const char *session;   /* session id, for cross-reference with the log */
	const char *message; /* protocol reference, e.g. "msg=3 uidl=abc", may be NULL */
};

/*
 * Creates dir (mode 0700) if it does not exist. Returns 0 or -errno.
 * Called at start-up so a bad path is reported before the first message.
 */
int quar_prepare(const char *dir);

/*
 * The SHA-256 of the frozen spool's bytes as 64 lower-case hex digits (the
 * sha256 of ID.json). Returns 0 or < 0 (read or allocation failure). Blocks:
 * the thread pool.
 */
int quar_sha256(const struct spool *sp, char hex[65]);

/*
 * Length of the valid UTF-8 sequence at s, within end (RFC 3629: no
 * overlongs, no surrogates, nothing past U+10FFFF), or 0 when it is not
 * one (or s >= end).
 */
size_t quar_utf8_len(const unsigned char *s, const unsigned char *end);

/*
 * Stores the frozen spool's content and its metadata under a new unique id
 * (written to id_r, at most QUAR_ID_MAX bytes with its NUL). Returns 0 once
 * both files and the directory are fsynced; 1 when this process stored the
 * same bytes for the same user and upstream before and that entry is still
 * on disk (id_r is its id: a message fetched again is not stored twice);
 * -1 with err filled otherwise, in which case no partial file is left under
 * the final names.
 */
int quar_store(const char *dir, const struct quar_meta *m, const struct spool *sp,
               char id_r[QUAR_ID_MAX], char *err, size_t errlen);

#endif
