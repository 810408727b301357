/*
 * server.c - process-wide state: listeners, the session registry, signals
 * and the orderly stop.
 *
 * Stop (SIGTERM/SIGINT): close the listeners, ask every session to end
 * (idle ones close at once, busy ones after their current response), and
 * force-close what is left when the shutdown grace period runs out. The
 * loop then ends by itself once thread-pool jobs still running have
 * finished and dropped their results.
 */
#include "proxy/server.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "proxy/log.h"
#include "proxy/notify.h"
#include "proxy/vcache.h"
#include "scanners/scan.h"

/* Verdicts remembered for IMAP: about 1 KiB each (notices live in spools). */
#define SERVER_VCACHE_ENTRIES 100000

/* Drops root to cfg->run_as after the sockets are bound. */
static int server_drop_privileges(const struct config *cfg)
{
	struct passwd *pw;

	if (cfg->run_as[0] == '\0') {
		if (geteuid() == 0)
			log_msg(
			    LOG_LVL_WARN, NULL,
			    "running as root: set 'user:' in the configuration to drop "
			    "privileges after binding");
		return 0;
	}
	pw = getpwnam(cfg->run_as);
	if (pw == NULL) {
		log_msg(LOG_LVL_ERROR, NULL, "unknown user %s", cfg->run_as);
		return -1;
	}
	/* The quarantine directory must stay writable for the new identity. */
	if (chown(cfg->quarantine_dir, pw->pw_uid, pw->pw_gid) < 0)
		log_msg(LOG_LVL_WARN, NULL, "cannot chown quarantine dir %s: %s",
		        cfg->quarantine_dir, strerror(errno));
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot drop privileges to %s: %s",
		        cfg->run_as, strerror(errno));
		return -1;
	}
	log_msg(LOG_LVL_INFO, NULL, "privileges dropped user=%s uid=%u", cfg->run_as,
	        (unsigned)pw->pw_uid);
	return 0;
}

static void server_on_signal(uv_signal_t *sig, int signum)
{
	struct server *srv = sig->data;

	log_msg(LOG_LVL_INFO, NULL, "signal=%s stopping sessions=%u grace_s=%u",
	        signum == SIGTERM ? "TERM" : "INT", srv->n_sessions,
	        srv->cfg->timeout_shutdown_grace);
	server_stop(srv);
}

void server_scan_limits(const struct config *cfg, struct scan_limits *lim)
{
	memset(lim, 0, sizeof(*lim));
	lim->max_filesize = cfg->clamav_max_filesize;
	lim->max_scansize = cfg->clamav_max_scansize;
	lim->max_recursion = cfg->clamav_max_recursion;
	lim->max_files = cfg->clamav_max_files;
	lim->max_scantime_ms = cfg->clamav_max_scantime_ms;
	lim->mime_split_above = cfg->clamav_mime_split_above;
	snprintf(lim->tmpdir, sizeof(lim->tmpdir), "%s", cfg->spool_dir);
}

/* Loads the databases anew on the thread pool: the loop never waits for it. */
static void server_reload_work(uv_work_t *req)
{
	struct server *srv = req->data;
	struct scan_limits lim;

	server_scan_limits(srv->cfg, &lim);
	if (scan_engine_load(srv->cfg->clamav_database, &lim, &srv->reload_engine,
	                     srv->reload_err, sizeof(srv->reload_err)) < 0)
		srv->reload_engine = NULL;
	/* certificates and keys renewed on disk (e.g. by an ACME client) */
	srv->reload_tls = calloc(srv->n_listeners, sizeof(*srv->reload_tls));
	for (unsigned i = 0; srv->reload_tls != NULL && i < srv->n_listeners; i++) {
		if (conn_tls_setup(&srv->reload_tls[i], srv->listeners[i].lcfg) < 0) {
			for (unsigned j = 0; j <= i; j++)
				conn_tls_cleanup(&srv->reload_tls[j]);
			free(srv->reload_tls);
			srv->reload_tls = NULL;
		}
	}
}

/*
 * New TLS contexts in place of the old ones: sessions already in TLS keep
 * theirs (OpenSSL counts the references), new ones use the new files.
 */
static void server_reload_tls(struct server *srv)
{
	if (srv->reload_tls == NULL) {
		log_msg(LOG_LVL_ERROR, NULL,
		        "TLS reload failed, keeping the old certificates");
		return;
	}
	for (unsigned i = 0; i < srv->n_listeners; i++) {
		struct conn_tls_cfg old = srv->listeners[i].tls;

		srv->listeners[i].tls = srv->reload_tls[i];
		conn_tls_cleanup(&old);
	}
	free(srv->reload_tls);
	srv->reload_tls = NULL;
	log_msg(LOG_LVL_INFO, NULL, "TLS certificates reloaded listeners=%u",
	        srv->n_listeners);
}

/*
 * Swaps the new engine in: scans already running keep the old one (they
 * hold a reference) and it goes with the last of them; cached verdicts of
 * the old generation are stale from now on.
 */
static void server_reload_done(uv_work_t *req, int status)
{
	struct server *srv = req->data;

	srv->reloading = 0;
	if (status == 0)
		server_reload_tls(srv);
	if (status < 0 || srv->reload_engine == NULL) {
		log_msg(LOG_LVL_ERROR, NULL,
		        "signature reload failed, keeping the old engine: %s",
		        status < 0 ? uv_strerror(status) : srv->reload_err);
		notify_send("READY=1\nSTATUS=reload failed, old signatures in use");
		return;
	}
	scan_engine_unref(&srv->engine);
	srv->engine = srv->reload_engine;
	srv->reload_engine = NULL;
	log_msg(LOG_LVL_INFO, NULL, "signatures reloaded signatures=%u",
	        scan_engine_signatures(srv->engine));
	notify_send("READY=1\nSTATUS=scanning mail");
}

/* SIGHUP (systemctl reload; after freshclam): new signatures, no pause. */
static void server_on_hup(uv_signal_t *sig, int signum)
{
	struct server *srv = sig->data;

	(void)signum;
	if (srv->reloading || srv->stopping)
		return;
	srv->reloading = 1;
	srv->reload.data = srv;
	log_msg(LOG_LVL_INFO, NULL, "signal=HUP reloading signatures dir=%s",
	        srv->cfg->clamav_database);
	notify_send("RELOADING=1");
	if (uv_queue_work(srv->loop, &srv->reload, server_reload_work,
	                  server_reload_done) < 0)
		srv->reloading = 0;
}

static void server_on_watchdog(uv_timer_t *t)
{
	(void)t;
	notify_send("WATCHDOG=1");
}

static void server_on_grace(uv_timer_t *t)
{
	struct server *srv = t->data;
	struct session_base *sb, *next;

	if (srv->n_sessions > 0)
		log_msg(LOG_LVL_WARN, NULL, "shutdown grace over: closing sessions=%u",
		        srv->n_sessions);
	for (sb = srv->sessions; sb != NULL; sb = next) {
		next = sb->next;
		sb->force_close(sb, "shutdown");
	}
	uv_close((uv_handle_t *)&srv->grace_timer, NULL);
}

int server_start(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 struct scan_engine *engine)
{
	uint32_t seed = 0;

	memset(srv, 0, sizeof(*srv));
	srv->loop = loop;
	/* every handle server_stop closes exists from here on, even on failure */
	uv_signal_init(loop, &srv->sig_term);
	uv_signal_init(loop, &srv->sig_int);
	srv->sig_term.data = srv->sig_int.data = srv;
	uv_timer_init(loop, &srv->watchdog);
	srv->watchdog.data = srv;
	uv_signal_init(loop, &srv->sig_hup);
	srv->sig_hup.data = srv;
	srv->cfg = cfg;
	scan_engine_ref(engine);
	srv->engine = engine;
	/* ids start at a random point so logs of restarts do not repeat them */
	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		seed = (uint32_t)getpid();
	srv->next_id = ((uint64_t)seed << 16) | 1u;

	srv->listeners = calloc(cfg->n_listeners, sizeof(*srv->listeners));
	srv->vcache = vcache_new(SERVER_VCACHE_ENTRIES);
	if (srv->listeners == NULL || srv->vcache == NULL)
		return -1;
	for (unsigned i = 0; i < cfg->n_listeners; i++) {
		if (lsn_open(&srv->listeners[i], srv, &cfg->listeners[i]) < 0)
			return -1;
		srv->n_listeners++;
		if (conn_tls_setup(&srv->listeners[i].tls, &cfg->listeners[i]) < 0)
			return -1;
	}
	if (server_drop_privileges(cfg) < 0)
		return -1;
	uv_signal_start(&srv->sig_term, server_on_signal, SIGTERM);
	uv_signal_start(&srv->sig_int, server_on_signal, SIGINT);
	uv_signal_start(&srv->sig_hup, server_on_hup, SIGHUP);
	/* systemd: the watchdog at half its interval (sd_watchdog_enabled(3)) */
	if (notify_watchdog_ms() > 0)
		uv_timer_start(&srv->watchdog, server_on_watchdog,
		               notify_watchdog_ms() / 2, notify_watchdog_ms() / 2);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

void server_stop(struct server *srv)
{
	struct session_base *sb, *next;

	if (srv->stopping)
		return;
	srv->stopping = 1;
	notify_send("STOPPING=1\nSTATUS=stopping: ending sessions");
	if (!uv_is_closing((uv_handle_t *)&srv->watchdog))
		uv_close((uv_handle_t *)&srv->watchdog, NULL);
	for (unsigned i = 0; i < srv->n_listeners; i++)
		lsn_close(&srv->listeners[i]);
	uv_close((uv_handle_t *)&srv->sig_term, NULL);
	uv_close((uv_handle_t *)&srv->sig_int, NULL);
	uv_close((uv_handle_t *)&srv->sig_hup, NULL);
	uv_timer_init(srv->loop, &srv->grace_timer);
	srv->grace_timer.data = srv;
	uv_timer_start(&srv->grace_timer, server_on_grace,
	               (uint64_t)srv->cfg->timeout_shutdown_grace * 1000u, 0);
	if (srv->n_sessions == 0) {
		uv_timer_stop(&srv->grace_timer);
		uv_close((uv_handle_t *)&srv->grace_timer, NULL);
		return;
	}
	for (sb = srv->sessions; sb != NULL; sb = next) {
		next = sb->next;
		sb->shutdown(sb);
	}
}

void server_cleanup(struct server *srv)
{
	for (unsigned i = 0; i < srv->n_listeners; i++)
		conn_tls_cleanup(&srv->listeners[i].tls);
	scan_engine_unref(&srv->engine);
	vcache_free(&srv->vcache);
	free(srv->listeners);
	srv->listeners = NULL;
}

void server_session_add(struct server *srv, struct session_base *sb)
{
	sb->srv = srv;
	sb->id = srv->next_id++;
	/* a short, log-friendly id: the low 32 bits mixed so neighbours differ */
	snprintf(sb->sid, sizeof(sb->sid), "%08x",
	         (unsigned)((sb->id * 0x9e3779b97f4a7c15ull) >> 32));
	sb->prev = NULL;
	sb->next = srv->sessions;
	if (srv->sessions != NULL)
		srv->sessions->prev = sb;
	srv->sessions = sb;
	srv->n_sessions++;
}

void server_session_remove(struct server *srv, struct session_base *sb)
{
	if (sb->prev != NULL)
		sb->prev->next = sb->next;
	else
		srv->sessions = sb->next;
	if (sb->next != NULL)
		sb->next->prev = sb->prev;
	sb->next = sb->prev = NULL;
	srv->n_sessions--;
	if (srv->stopping) {
		if (srv->n_sessions == 0 &&
		    !uv_is_closing((uv_handle_t *)&srv->grace_timer)) {
			uv_timer_stop(&srv->grace_timer);
			uv_close((uv_handle_t *)&srv->grace_timer, NULL);
		}
		return;
	}
	for (unsigned i = 0; i < srv->n_listeners; i++)
		lsn_resume(&srv->listeners[i]);
}

struct session_base *server_session_find(struct server *srv, uint64_t id)
{
	/* Sessions per process are few (max_sessions); a walk is cheap. */
	for (struct session_base *sb = srv->sessions; sb != NULL; sb = sb->next)
		if (sb->id == id)
			return sb;
	return NULL;
}
