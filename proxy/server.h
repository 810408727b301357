/*
 * server.h - the process: event loop, listeners, the live sessions, and the
 * shared read-only state sessions use (configuration, scan engine).
 *
 * Sessions register here under a numeric id; thread-pool jobs carry that id,
 * never a pointer, and look the session up when they finish, so a session
 * that closed while its scan ran is never touched again.
 */
#ifndef MAILMOAT_SERVER_H
#define MAILMOAT_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "policy/config.h"
#include "scanners/scan.h"
#include "proxy/conn.h"
#include "proxy/outbox.h"

struct scan_engine;
struct server;

/* Common head of every protocol session; embedded first in each. */
struct session_base {
	uint64_t id;  /* registry key, never reused */
	char sid[12]; /* the id printed in logs */
	struct server *srv;
	const struct cfg_listener *lcfg;
	struct session_base *next, *prev;
	/* ends the session now (shutdown grace ran out); must be idempotent */
	void (*force_close)(struct session_base *sb, const char *reason);
	/* asks an idle session to end at shutdown; returns when it may go on */
	void (*shutdown)(struct session_base *sb);
	/* the configuration the session started under (a reference): a reload
	   does not change it */
	const struct config *cfg;
	/* the policy in force: resolved at connect, again at login (rules by user) */
	struct policy_set policy;
};

struct server {
	uv_loop_t *loop;
	const struct config *cfg;
	struct scan_engine *engine; /* current engine: sessions take a ref per job */
	struct vcache *vcache;      /* IMAP verdicts, shared by every session */
	struct session_base *sessions;
	unsigned n_sessions;
	uint64_t next_id;
	int stopping;
	struct lsn *listeners;
	unsigned n_listeners;
	uv_signal_t sig_term, sig_int;
	uv_timer_t grace_timer;
	uv_timer_t watchdog; /* systemd WATCHDOG=1 pings */
	uv_signal_t sig_hup; /* reload the signature databases */
	uv_work_t reload;
	struct scan_engine *reload_engine; /* the new engine, on the pool */
	struct conn_tls_cfg *reload_tls;   /* new TLS settings per listener, or NULL */
	char reload_err[256];
	int reloading;
	/* configuration reloads (SIGHUP): the file, and on the pool the new
	   config or why it was refused */
	const char *cfg_path;
	int reload_config;               /* this reload reads the file again */
	const struct config *reload_cfg; /* loaded and checked, or NULL */
	char *reload_cfg_err;            /* its problems, one per line (malloc) */
	/* signature database watch: the directory's fingerprint, checked every
	   DB_WATCH_MS; a change that holds still for one more check reloads */
	uv_timer_t db_watch;
	uint64_t db_fp;
	uint64_t db_fp_seen;
	unsigned engine_reloads, engine_reload_failures;
	/* the quarantine index (policy/qindex.h): released messages are not
	   quarantined again, new entries are added; NULL when unavailable */
	struct qindex *qix;
	uv_timer_t retention; /* hourly: entries past retention_days go */
	uv_work_t purge;
	int purging;
	struct outbox outbox;         /* notice.admin_copy reports (outbox.c) */
	struct ctl_listener *control; /* the control socket (control.c), or NULL */
	struct ctl_listener *metrics; /* the metrics endpoint (metrics.c), or NULL */
};

/*
 * Binds every configured listener, drops privileges when cfg->run_as is
 * set, installs SIGTERM/SIGINT handling. Returns 0 or -1 (logged). The
 * server keeps pointers to cfg and takes a reference on engine.
 */
int server_start(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 struct scan_engine *engine);

/*
 * Reloads on the thread pool: with config set, the configuration file
 * (srv->cfg_path) first, then the signature databases and the listeners'
 * certificates. A configuration with errors is refused as a whole (the
 * reasons logged, the old one kept); listeners cannot change without a
 * restart. Sessions keep the configuration and policy they started with.
 * Returns 0, or -1 when a reload is already running (it is not queued).
 */
int server_reload(struct server *srv, int config);

/* The scanner's limits from the configuration (start-up and reloads). */
void server_scan_limits(const struct config *cfg, struct scan_limits *lim);

/* Releases what server_start took, after uv_run has returned. */
void server_cleanup(struct server *srv);

/* Stops accepting and ends sessions within the shutdown grace period. */
void server_stop(struct server *srv);

/* Registers a new session: assigns id and sid. */
void server_session_add(struct server *srv, struct session_base *sb);

/* Unregisters a session (from its final close callback). */
void server_session_remove(struct server *srv, struct session_base *sb);

/* The live session with this id, or NULL when it has gone. */
struct session_base *server_session_find(struct server *srv, uint64_t id);

/*
 * Resolves sb->policy for the session's listener, upstream ("host:port")
 * and user (NULL before the login); logs the rules applied when any.
 */
void server_session_policy(struct session_base *sb, const char *upstream,
                           const char *user);

/* ---- listener.c ---- */

struct lsn {
	uv_tcp_t tcp;
	struct server *srv;
	const struct cfg_listener *lcfg;
	int pending; /* a connection waits to be accepted (session cap reached) */
	struct conn_tls_cfg tls; /* TLS towards clients and upstream */
	int closed;
};

/* Binds and listens. Returns 0 or -1 (logged). */
int lsn_open(struct lsn *l, struct server *srv, const struct cfg_listener *lcfg);

/* Closes the listening socket. */
void lsn_close(struct lsn *l);

/* Accepts connections left waiting at the session cap, if there is room now. */
void lsn_resume(struct lsn *l);

/* "host:port" of an address, for logs. */
void lsn_addr_str(const struct sockaddr *sa, char *buf, size_t len);

#endif
