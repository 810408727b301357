/*
 * stats.h - process-wide counters, and the three ways they are shown:
 * `mailmoat status` text, its --json form, and the Prometheus text format
 * (exposition format 0.0.4) of the metrics endpoint.
 *
 * Counters are C11 atomics updated with relaxed ordering from the loop
 * thread and the thread-pool threads alike: no lock on any hot path. A
 * reader takes a snapshot (stats_snapshot); the figures in it are each
 * exact but not taken at one instant together, which is all a monitoring
 * endpoint needs.
 *
 * Figures that are not counters (quarantine size, the engine's signatures,
 * uptime) are gathered per request by stats_collect(): the quarantine
 * directory is read on the thread pool, never on the loop.
 */
#ifndef MAILMOAT_STATS_H
#define MAILMOAT_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "scanners/scan.h"

struct msgjob;
struct server;

/* Kinds of sessions, as counted (relay: transparent TLS passed on unread). */
enum stats_proto { STATS_POP3, STATS_IMAP, STATS_RELAY, STATS_PROTO_COUNT };

/* "pop3", "imap", "relay"; "?" out of range */
const char *stats_proto_name(enum stats_proto p);

/*
 * Failures worth an alert, by kind (the metric's `kind` label). Append new
 * kinds before STATS_ERR_COUNT and name them in stats.c's table.
 */
enum stats_err {
	STATS_ERR_UPSTREAM_CONNECT, /* resolving or connecting failed or timed out */
	STATS_ERR_UPSTREAM_TLS,     /* handshake or verification towards the upstream */
	STATS_ERR_CLIENT_TLS,       /* handshake with a client failed */
	STATS_ERR_PROTOCOL,         /* bad input from a client or an upstream */
	STATS_ERR_TIMEOUT,          /* an upstream stopped answering mid-session */
	STATS_ERR_QUARANTINE_WRITE, /* a message due for quarantine was not stored */
	STATS_ERR_SPOOL,            /* capturing a message to the spool failed */
	STATS_ERR_COUNT
};

/* "upstream_connect", ...; "?" out of range */
const char *stats_err_name(enum stats_err e);

/*
 * Upper bounds of the scan time histogram, in milliseconds (the metric
 * shows them in seconds, with a last +Inf bucket).
 */
#define STATS_HIST_BUCKETS 14
extern const uint32_t stats_hist_le_ms[STATS_HIST_BUCKETS];

/* ---- updates: any thread, lock-free ---- */

/* Records the process start (server_start): uptime counts from here. */
void stats_start(void);

/* A session of kind p was accepted / has been freed. */
void stats_session_open(enum stats_proto p);
void stats_session_close(enum stats_proto p);

/* n bytes read from an upstream (down) or from a client (up); n <= 0 is ignored. */
void stats_bytes(int from_upstream, ssize_t n);

/* One message scanned: its verdict, the scan's wall time and the message size. */
void stats_scanned(enum scan_result r, uint64_t scan_ms, uint64_t size);

/*
 * A scan job is back on the loop (msgjob.c, before its session sees it):
 * counts the scan (unless the verdict was known without one) and a
 * quarantine that failed. status is the libuv after_work status; a
 * cancelled job counts for nothing.
 */
void stats_msgjob(const struct msgjob *job, int status);

/* One failure of kind e. */
void stats_error(enum stats_err e);

/* ---- reading ---- */

struct stats_snap {
	/* counters */
	uint64_t sess_open[STATS_PROTO_COUNT];
	uint64_t sess_total[STATS_PROTO_COUNT];
	uint64_t scanned, scanned_bytes;
	uint64_t verdicts[SCAN_RESULT_COUNT];
	uint64_t
	    hist[STATS_HIST_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
	uint64_t scan_ms_sum;
	uint64_t bytes_down, bytes_up;
	uint64_t errors[STATS_ERR_COUNT];
	uint64_t uptime_s;
	uint64_t start_time; /* Unix time of stats_start */
	/* gathered by stats_collect from the server (zero from stats_snapshot) */
	uint64_t reloads, reload_failures; /* signature reloads (server.c counts) */
	int have_engine;
	unsigned db_version, signatures;
	unsigned clamav_version; /* the databases' own version (daily.cvd) */
	int quar_ok;             /* the quarantine directory could be read */
	uint64_t quar_entries, quar_bytes;
	char quar_dir[1024];
	char quar_err[128]; /* why not, when !quar_ok */
};

/* Reads every counter into *s (other fields zeroed). */
void stats_snapshot(struct stats_snap *s);

/*
 * Counts the quarantine directory's entries (ID.json files) and the bytes
 * of their ID.json and ID.eml files; temporary and other files are not
 * counted. Blocking: thread pool only. Returns 0, or -errno.
 */
int stats_quarantine_count(const char *dir, uint64_t *entries_r, uint64_t *bytes_r);

/*
 * A snapshot with everything filled in, delivered on the loop: the
 * quarantine is counted on the thread pool first. cb(arg, snap) runs once,
 * always (snap is valid during the call only); the caller keeps arg alive
 * until then. Returns 0, or a libuv error (cb will not run).
 */
typedef void (*stats_collect_cb)(void *arg, const struct stats_snap *snap);
int stats_collect(struct server *srv, stats_collect_cb cb, void *arg);

/* ---- rendering: pure functions of a snapshot (unit-tested to the byte) ---- */

/* A growable text buffer; oom is set (and text dropped) when memory ran out. */
struct stats_buf {
	char *data;
	size_t len, cap;
	int oom;
};

void stats_buf_printf(struct stats_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void stats_buf_free(struct stats_buf *b);

/* Prometheus text exposition format 0.0.4: HELP, TYPE, samples. */
void stats_render_prom(const struct stats_snap *s, struct stats_buf *b);

/* What `mailmoat status` prints. */
void stats_render_text(const struct stats_snap *s, struct stats_buf *b);

/* `mailmoat status --json`: one JSON object and a newline. */
void stats_render_json(const struct stats_snap *s, struct stats_buf *b);

#endif
