/*
 * outbox.h - notice.admin_copy: a short report of each quarantined message
 * to an administrator's address, queued on disk and sent by SMTP.
 *
 * Reports wait in QUARANTINE_DIR/.outbox/ (the quarantine index skips
 * dot-names), one file per report:
 *   ID.eml                  written, not tried yet
 *   ID+N+DUE.eml            N attempts failed; the next one not before DUE
 *                           (milliseconds since the epoch)
 *   ID.eml.tmp              being written (or left by a crash: removed after
 *                           an hour)
 * A report is a text/plain message naming the entry; it never carries the
 * original (which is malware). Its file's mtime is when it was queued: one
 * that has not gone out within OUTBOX_EXPIRE_S is dropped (logged).
 *
 * Threads: a scan job writes the report on the thread pool
 * (outbox_quarantined); the loop only starts one sending pass at a time on
 * the pool (every OUTBOX_TICK_MS, when a report was queued, and when the
 * earliest retry is due). A failing relay costs nothing but that pass's
 * pool thread: no session ever waits for it.
 */
#ifndef MAILMOAT_OUTBOX_H
#define MAILMOAT_OUTBOX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

struct config;
struct msg_headers;
struct msgjob;
struct server;

#define OUTBOX_DIR ".outbox"
#define OUTBOX_MAX_FILES 1000       /* reports waiting at most: beyond, not written */
#define OUTBOX_EXPIRE_S (7 * 86400) /* not sent within a week: dropped */
#define OUTBOX_TICK_MS 30000        /* a pass at least this often */
#define OUTBOX_RETRY_BASE_MS 60000  /* first retry after a minute, doubling... */
#define OUTBOX_RETRY_MAX_FACTOR 60  /* ...up to 60 times that (an hour) */
#define OUTBOX_SEND_TIMEOUT_S 30    /* connect, and a whole message */
/* test-only: the retry base in milliseconds, read once at start */
#define OUTBOX_RETRY_ENV "MAILMOAT_OUTBOX_RETRY_MS"

/* What one report says. Text is UTF-8; any string may be NULL or "". */
struct outbox_report {
	const char *id; /* the quarantine id (required) */
	time_t when;    /* when it was quarantined */
	const char *user, *upstream, *protocol, *session, *message;
	const char *verdict;   /* "infected", "error", "blocked_attachment"... */
	const char *signature; /* the signature, or the rule or error text */
	const char *from;      /* the original's From, Subject (decoded) and Date */
	const char *subject;
	const char *date;
	uint64_t size; /* octets kept in the quarantine */
	int truncated; /* only the first max_message_size octets were kept */
	/* the configuration file, named in the commands shown when it is not
	   the default one; NULL: the default */
	const char *config_path;
};

/*
 * Sends one report: fd is open on it (size octets, a complete message with
 * CRLF lines), id its quarantine id. Returns 0 when the relay took it,
 * OUTBOX_FAIL when this report failed, OUTBOX_FAIL_RELAY when the relay
 * cannot be used at all (not reachable, TLS or login refused, settings
 * unusable): every report still due in this pass then fails alike without
 * being tried. why receives the reason (no secrets in it).
 */
#define OUTBOX_FAIL (-1)
#define OUTBOX_FAIL_RELAY (-2)
typedef int (*outbox_send_fn)(void *arg, const char *id, int fd, uint64_t size, char *why,
                              size_t whylen);

/* One sending pass: inputs, then what it did. */
struct outbox_pass {
	const char *quarantine_dir;
	const char *to;         /* the recipient, for the log lines */
	int64_t now_ms;         /* wall clock, ms since the epoch */
	uint64_t retry_base_ms; /* OUTBOX_RETRY_BASE_MS, or the test's */
	outbox_send_fn send;
	void *send_arg;
	atomic_int *stop; /* when set: no further report this pass (may be NULL) */
	/* results */
	unsigned sent, failed, dropped, waiting;
	int64_t next_due_ms; /* the earliest retry still waiting, INT64_MAX: none */
};

/* The loop's side, embedded in struct server (server.c starts and stops it). */
struct outbox {
	uv_timer_t timer; /* the next pass */
	uv_async_t kick;  /* a report was queued (from a pool thread) */
	uv_work_t work;
	struct server *srv;
	int started, closing, busy, again;
	unsigned open_handles;
	atomic_int stop; /* the running pass should end (shutdown) */
	uint64_t retry_base_ms;
	const struct config *pass_cfg; /* the running pass's configuration (a ref) */
	int64_t pass_next_ms;
	/* tests: sends through this instead of SMTP when set (before outbox_start) */
	outbox_send_fn send;
	void *send_arg;
};

/*
 * Called by the scan job on the pool once the original is stored (see
 * msgjob.c): when job->cfg has notice.admin_copy and the entry is new (not
 * job->quar_reused), writes its report into the outbox (h: the original's
 * headers, may be NULL) and wakes the sender. Failures are logged, never
 * passed on: the session goes on whatever happens here.
 */
void outbox_quarantined(const struct msgjob *job, const struct msg_headers *h);

/*
 * Starts the sender for srv->outbox (from server_start, on the loop, after
 * privileges are dropped). Reads OUTBOX_RETRY_ENV once. Safe when the
 * feature is off: it then only looks at the configuration every tick (a
 * reload may turn it on).
 */
void outbox_start(struct server *srv);

/*
 * Stops it (server_stop): closes the handles, asks a running pass to end
 * after the report it is sending (whose transfer is aborted). Idempotent;
 * does nothing when outbox_start() was not called.
 */
void outbox_stop(struct server *srv);

/* Wakes the sender soon. Any thread; harmless when stopped or never started. */
void outbox_notify(struct server *srv);

/* ---- the parts, for the unit tests ---- */

/*
 * Renders report r from `from` to `to` (addresses, no angle brackets).
 * Returns 0 and a malloc'd message (CRLF lines, ending in CRLF) in *out_r,
 * *len_r octets; -1 on allocation failure.
 */
int outbox_render(const struct outbox_report *r, const char *from, const char *to,
                  char **out_r, size_t *len_r);

/*
 * The sender address: cfg->copy_from, or "mailmoat@" and the host name.
 * Writes into buf (len octets).
 */
void outbox_sender(const struct config *cfg, char *buf, size_t len);

/*
 * Writes r's report into QUARANTINE_DIR/.outbox/ID.eml (created mode 0700;
 * the file 0600, written to a temporary name, fsynced and renamed).
 * Returns 0; 1 when OUTBOX_MAX_FILES reports already wait (nothing
 * written); -1 with err on failure (nothing left behind). Blocks: pool.
 */
int outbox_write(const char *quarantine_dir, const char *from, const char *to,
                 const struct outbox_report *r, char *err, size_t errlen);

/* The wait after `attempts` failed attempts (>= 1): base doubling, capped. */
uint64_t outbox_backoff_ms(unsigned attempts, uint64_t base_ms);

/*
 * One pass over the outbox (see struct outbox_pass): drops reports past
 * OUTBOX_EXPIRE_S, sends those due in id order, removes a sent one and
 * renames a failed one for its next attempt, each logged. Returns 0, or -1
 * when the outbox cannot be read (logged). Blocks: pool.
 */
int outbox_run_pass(struct outbox_pass *p);

/*
 * Parses an outbox file name: id (into id_r, QUAR_ID_MAX octets), failed
 * attempts and the next attempt's time. Returns 0, or -1 for a name that
 * is not a report's.
 */
int outbox_name_parse(const char *name, char *id_r, size_t idlen, unsigned *attempts_r,
                      int64_t *due_ms_r);

#endif
