/*
 * qindex.h - the quarantine index: a SQLite cache of the ID.json files of
 * the quarantine directory (layout in quarantine.h) that keeps listing fast
 * with 100,000 entries, and the memory of released messages.
 *
 * The directory stays the truth: an entry exists while its ID.json does.
 * The index can be deleted at any time and is rebuilt by the next sync,
 * except the table of released messages (sha256 -> id, when, by whom),
 * which lives only there.
 *
 * Index file: quarantine.index, or DIR/.index.sqlite. Mode 0600, owned by
 * the quarantine directory's owner even when root creates it. SQLite in
 * WAL mode with a busy timeout, so the daemon and the CLI share it.
 *
 * Thread safety: a struct qindex is one SQLite connection behind its own
 * mutex; every function below may be called on it from any thread, and
 * calls on one handle run one at a time. qindex_released() holds the mutex
 * for one primary-key lookup (microseconds); qindex_sync() and
 * qindex_purge() hold it for their whole run (a full sync of 100,000
 * entries takes about a second), so a periodic job should open its own
 * handle: across handles and processes, readers never wait for a writer
 * (WAL) and writers wait for each other up to QINDEX_BUSY_MS. All calls
 * block (disk, fsync): call them on the thread pool, never on the loop.
 */
#ifndef MAILMOAT_QINDEX_H
#define MAILMOAT_QINDEX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct config;
struct qindex;

#define QINDEX_BUSY_MS 5000 /* how long a writer waits for another */

/*
 * One entry as the index holds it. Strings are UTF-8 and may be NULL (the
 * JSON had null, or no such member), except id and received_at. Valid only
 * during the callback that receives it.
 */
struct qindex_entry {
	const char *id;
	const char *received_at; /* RFC 3339, as in ID.json */
	int64_t received_s;      /* the same, seconds since the epoch */
	const char *protocol;
	const char *user;
	const char *upstream;
	const char *signature;
	const char *verdict;
	int64_t size;  /* -1 when absent */
	int truncated; /* 0 or 1, -1 when absent */
	const char *sha256;
	const char *from;
	const char *subject;
	const char *session;
	const char *message;
	const char *extra;       /* members without a column, as JSON text
	                            ("\"k\": v, \"k2\": v2"), or NULL */
	int eml;                 /* ID.eml was present at the last sync */
	const char *released_at; /* RFC 3339 when released, else NULL */
	const char *released_by;
};

/* Which entries qindex_list() visits (qindex_filter_init: all of them). */
struct qindex_filter {
	const char *user; /* exact match, NULL = any */
	const char *id;   /* exact match, NULL = any */
	int64_t since_s;  /* received_s >= since_s */
	int64_t before_s; /* received_s < before_s */
	uint64_t limit;   /* at most this many, 0 = no limit */
};

struct qindex_sync_stats {
	int full;          /* 1 when the directory was read, 0 when it was unchanged */
	unsigned scanned;  /* ID.json names seen (full syncs only) */
	unsigned added;    /* entries indexed */
	unsigned removed;  /* rows dropped: their ID.json is gone */
	unsigned updated;  /* rows whose ID.eml appeared or vanished */
	unsigned skipped;  /* unreadable ID.json files (all, known before or not) */
	unsigned warned;   /* of which found unreadable by this sync (warned about) */
	double readdir_ms; /* time spent reading the directory */
};

/*
 * Receives a warning ("ID.json: reason"), on the calling thread, with the
 * handle locked: it must not call qindex functions on the same handle.
 */
typedef void (*qindex_warn_cb)(void *arg, const char *msg);

/* Receives each listed entry; a non-zero return stops the listing. */
typedef int (*qindex_entry_cb)(void *arg, const struct qindex_entry *e);

/*
 * Opens (and creates, unless readonly) the index of cfg's quarantine. The
 * directory must exist. Returns a handle the caller owns (qindex_close), or
 * NULL with a one-line reason in err. readonly: no sync, purge, delete or
 * release marking; fails when the index does not exist yet.
 */
struct qindex *qindex_open(const struct config *cfg, int readonly, char *err,
                           size_t errlen);

/* Closes the handle and NULLs the caller's pointer. NULL is fine. */
void qindex_close(struct qindex **ixp);

/* Where warnings go (default: nowhere). Call before sharing the handle. */
void qindex_set_warn(struct qindex *ix, qindex_warn_cb cb, void *arg);

/* The quarantine directory and the index file of the handle. */
const char *qindex_dir(const struct qindex *ix);
const char *qindex_path(const struct qindex *ix);

/*
 * Brings the index up to date with the directory: indexes each ID.json not
 * in it yet or replaced since (another inode), drops rows whose ID.json is
 * gone, notes ID.eml presence.
 * Unreadable or corrupt ID.json files are skipped with one warning each
 * (remembered by name, size and mtime, so they are not parsed again until
 * they change). When the directory's mtime shows no change since the last
 * full sync, nothing is read at all. Returns 0, or -1 with err filled.
 * st_r may be NULL.
 */
int qindex_sync(struct qindex *ix, struct qindex_sync_stats *st_r, char *err,
                size_t errlen);

/*
 * Indexes (or re-indexes) the one entry id: what the daemon calls right
 * after quar_store(), much cheaper than a sync. Returns 0, -1 with err.
 */
int qindex_add(struct qindex *ix, const char *id, char *err, size_t errlen);

/*
 * Visits the entries matching f (NULL = all), newest first (received_s,
 * then id, descending), without syncing. Returns how many were visited, or
 * -1 with err.
 */
int qindex_list(struct qindex *ix, const struct qindex_filter *f, qindex_entry_cb cb,
                void *arg, char *err, size_t errlen);

/* Fills f so that it matches every entry. */
void qindex_filter_init(struct qindex_filter *f);

/*
 * Removes the entry id: ID.json, then ID.eml (so a crash between the two
 * never leaves metadata without its message), its row, then fsyncs the
 * directory. Its released mark, if any, stays. Returns 0, 1 when there was
 * no such entry, -1 with err.
 */
int qindex_delete(struct qindex *ix, const char *id, char *err, size_t errlen);

/*
 * Syncs, then removes every entry received before older_than_s as
 * qindex_delete() does, and every unreadable ID.json (with its ID.eml)
 * whose id's time is before it. *removed_r (may be NULL) is how many went.
 * Returns 0, or -1 with err (entries removed before the failure stay
 * removed).
 */
int qindex_purge(struct qindex *ix, int64_t older_than_s, unsigned *removed_r, char *err,
                 size_t errlen);

/*
 * Whether a message whose content has this SHA-256 (64 lower-case hex
 * digits) was released: 1 yes, 0 no, -1 on error (the caller decides; the
 * daemon should treat it as "no" and quarantine). Cheap: one lookup.
 */
int qindex_released(struct qindex *ix, const char *sha256_hex);

/*
 * Remembers sha256_hex as released from entry id by by (e.g. "root via
 * imap"), now. Durable (synchronous=FULL) before it returns 0; -1 with err.
 */
int qindex_mark_released(struct qindex *ix, const char *sha256_hex, const char *id,
                         const char *by, char *err, size_t errlen);

/*
 * 1 when id can name a quarantine entry: 1..QUAR_ID_MAX-1 characters of
 * [A-Za-z0-9._-], not starting with '.' (SECURITY: an id from the command
 * line becomes a file name; no '/', no "..").
 */
int qindex_valid_id(const char *id);

/*
 * Parses a time: RFC 3339 ("2026-11-29T06:43:45Z", "...+09:00", fractions
 * ignored), a date YYYY-MM-DD (midnight UTC), or an age before now:
 * digits and a unit s, m, h, d or w ("7d", "12h"). Returns 0 with seconds
 * since the epoch in *t_r, or -1.
 */
int qindex_parse_time(const char *s, int64_t now, int64_t *t_r);

/* Parses exactly an RFC 3339 date-time (section 5.6). Returns 0 or -1. */
int qindex_parse_rfc3339(const char *s, int64_t *t_r);

/*
 * Writes s as a JSON string (RFC 8259 section 7), or null for NULL: control
 * characters escaped, non-ASCII UTF-8 kept, invalid UTF-8 as U+FFFD, and
 * U+2028/2029 escaped (as quarantine.c does).
 */
void qindex_json_str(FILE *f, const char *s);

#endif
