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
#include "policy/policy.h"
#include "policy/qindex.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/notify.h"
#include "proxy/stats.h"
#include "proxy/vcache.h"
#include "scanners/scan.h"

/* Verdicts remembered for IMAP: about 1 KiB each (notices live in spools). */
#define SERVER_VCACHE_ENTRIES 100000

/* how often the signature directory is looked at (a change settles in two) */
#define DB_WATCH_MS 5000

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
	/* a rule with its own scanner limits needs the per-scan check */
	for (unsigned i = 0; i < cfg->n_rules; i++)
		if (cfg->rules[i].ps.set &
		    (PS_MAX_FILESIZE | PS_MAX_SCANSIZE | PS_MAX_RECURSION | PS_MAX_FILES |
		     PS_MAX_SCANTIME))
			lim->per_scan_limits = 1;
}

/*
 * The listeners of a new configuration must be those already bound: same
 * number, protocol and listen address (their other keys may change).
 */
static int server_listeners_same(const struct config *a, const struct config *b)
{
	if (a->n_listeners != b->n_listeners)
		return 0;
	for (unsigned i = 0; i < a->n_listeners; i++) {
		const struct cfg_listener *x = &a->listeners[i], *y = &b->listeners[i];

		if (x->protocol != y->protocol || x->listen_port != y->listen_port ||
		    strcmp(x->listen_host, y->listen_host) != 0)
			return 0;
	}
	return 1;
}

/*
 * On the thread pool: the configuration file when asked (its errors kept
 * for the log), then the engine and TLS settings of whichever
 * configuration will be in force. The loop never waits for any of it.
 */
static void server_reload_work(uv_work_t *req)
{
	struct server *srv = req->data;
	const struct config *cfg = srv->cfg;
	struct scan_limits lim;

	if (srv->reload_config && srv->cfg_path != NULL) {
		struct config *nc = NULL;
		char *buf = NULL;
		size_t len = 0;
		FILE *errs = open_memstream(&buf, &len);

		if (config_load(srv->cfg_path, &nc, errs) == 0 &&
		    !server_listeners_same(srv->cfg, nc)) {
			if (errs != NULL)
				fprintf(errs,
				        "%s: the listeners changed (number, protocol or "
				        "listen address): that needs a restart\n",
				        srv->cfg_path);
			config_free(&nc);
		}
		if (errs != NULL)
			fclose(errs);
		srv->reload_cfg = nc;
		srv->reload_cfg_err = buf;
		if (nc != NULL)
			cfg = nc;
	}
	server_scan_limits(cfg, &lim);
	if (scan_engine_load(cfg->clamav_database, &lim, &srv->reload_engine,
	                     srv->reload_err, sizeof(srv->reload_err)) < 0)
		srv->reload_engine = NULL;
	/* certificates and keys renewed on disk (e.g. by an ACME client) */
	srv->reload_tls = calloc(srv->n_listeners, sizeof(*srv->reload_tls));
	for (unsigned i = 0; srv->reload_tls != NULL && i < srv->n_listeners; i++) {
		if (conn_tls_setup(&srv->reload_tls[i], &cfg->listeners[i]) < 0) {
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
 * The new configuration in force for new sessions: the listeners point at
 * their new settings, IMAP verdicts decided under the old policy are
 * forgotten. Sessions and jobs still holding the old one keep it.
 */
static void server_reload_config(struct server *srv)
{
	const struct config *old = srv->cfg;
	struct vcache *vc;

	if (srv->reload_cfg == NULL) {
		const char *e = srv->reload_cfg_err ? srv->reload_cfg_err : "";

		while (*e != '\0') {
			const char *nl = strchr(e, '\n');
			int n = nl != NULL ? (int)(nl - e) : (int)strlen(e);

			log_msg(LOG_LVL_ERROR, NULL, "config reload: %.*s", n, e);
			e += n + (nl != NULL);
		}
		log_msg(LOG_LVL_ERROR, NULL,
		        "config reload refused, the old configuration stays in force");
		return;
	}
	srv->cfg = srv->reload_cfg;
	srv->reload_cfg = NULL;
	for (unsigned i = 0; i < srv->n_listeners; i++)
		srv->listeners[i].lcfg = &srv->cfg->listeners[i];
	vc = vcache_new(SERVER_VCACHE_ENTRIES);
	if (vc != NULL) {
		vcache_free(&srv->vcache);
		srv->vcache = vc;
	}
	config_unref(&old);
	log_msg(LOG_LVL_INFO, NULL, "config reloaded file=%s rules=%u", srv->cfg_path,
	        srv->cfg->n_rules);
}

struct engine_free {
	uv_work_t req;
	struct scan_engine *eng;
};

static void server_engine_free_work(uv_work_t *req)
{
	scan_engine_unref(&((struct engine_free *)req)->eng);
}

static void server_engine_free_done(uv_work_t *req, int status)
{
	(void)status;
	free(req);
}

/*
 * Drops the server's reference on a replaced engine on the thread pool:
 * freeing a large one takes a second or more, which the loop must not
 * spend. Scans still holding it drop theirs on the pool too (msgjob.c).
 */
static void server_engine_release(struct server *srv, struct scan_engine *eng)
{
	struct engine_free *f = malloc(sizeof(*f));

	if (f != NULL) {
		f->req.data = f;
		f->eng = eng;
		if (uv_queue_work(srv->loop, &f->req, server_engine_free_work,
		                  server_engine_free_done) == 0)
			return;
		free(f);
	}
	scan_engine_unref(&eng);
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
	if (status == 0 && srv->reload_config)
		server_reload_config(srv);
	free(srv->reload_cfg_err);
	srv->reload_cfg_err = NULL;
	config_unref(&srv->reload_cfg); /* refused after the load: not used */
	if (status == 0)
		server_reload_tls(srv);
	if (status < 0 || srv->reload_engine == NULL) {
		srv->engine_reload_failures++;
		log_msg(LOG_LVL_ERROR, NULL,
		        "signature reload failed, keeping the old engine: %s",
		        status < 0 ? uv_strerror(status) : srv->reload_err);
		notify_send("READY=1\nSTATUS=reload failed, old signatures in use");
		return;
	}
	server_engine_release(srv, srv->engine);
	srv->engine = srv->reload_engine;
	srv->reload_engine = NULL;
	srv->engine_reloads++;
	log_msg(LOG_LVL_INFO, NULL,
	        "signatures reloaded signatures=%u generation=%u db_version=%u",
	        scan_engine_signatures(srv->engine), scan_engine_db_version(srv->engine),
	        scan_engine_clamav_version(srv->engine));
	notify_send("READY=1\nSTATUS=scanning mail");
}

int server_reload(struct server *srv, int config)
{
	if (srv->reloading || srv->stopping)
		return -1;
	srv->reloading = 1;
	srv->reload_config = config;
	srv->reload.data = srv;
	notify_send("RELOADING=1");
	if (uv_queue_work(srv->loop, &srv->reload, server_reload_work,
	                  server_reload_done) < 0) {
		srv->reloading = 0;
		return -1;
	}
	return 0;
}

/* SIGHUP (systemctl reload): configuration, signatures, certificates. */
static void server_on_hup(uv_signal_t *sig, int signum)
{
	struct server *srv = sig->data;

	(void)signum;
	log_msg(LOG_LVL_INFO, NULL,
	        "signal=HUP reloading config=%s signatures dir=%s certificates",
	        srv->cfg_path ? srv->cfg_path : "-", srv->cfg->clamav_database);
	if (server_reload(srv, 1) < 0)
		log_msg(LOG_LVL_WARN, NULL, "a reload is already running: HUP ignored");
}

/*
 * A cheap fingerprint of the signature directory: the names, sizes and
 * modification times of its entries. freshclam writes new files and renames
 * them into place, which changes it.
 */
static uint64_t server_db_fingerprint(const char *dir)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		char path[4096];
		struct stat st;
		uint64_t v[3];

		if (de->d_name[0] == '.')
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >=
		        (int)sizeof(path) ||
		    stat(path, &st) < 0)
			continue;
		/* order-independent: entries combine by addition */
		uint64_t e = 1469598103934665603ull;

		for (const char *p = de->d_name; *p; p++)
			e = (e ^ (unsigned char)*p) * 1099511628211ull;
		v[0] = (uint64_t)st.st_size;
		v[1] = (uint64_t)st.st_mtim.tv_sec;
		v[2] = (uint64_t)st.st_mtim.tv_nsec;
		for (int i = 0; i < 3; i++)
			e = (e ^ v[i]) * 1099511628211ull;
		h += e;
	}
	closedir(d);
	return h;
}

/*
 * Every DB_WATCH_MS: a signature directory that changed and then held still
 * for one period is loaded into a new engine (on the pool) and swapped in,
 * so new signatures are in force within 2 * DB_WATCH_MS plus the load.
 */
static void server_on_db_watch(uv_timer_t *t)
{
	struct server *srv = t->data;
	uint64_t fp = server_db_fingerprint(srv->cfg->clamav_database);

	if (fp == srv->db_fp) {
		srv->db_fp_seen = fp;
		return;
	}
	if (fp != srv->db_fp_seen) {
		srv->db_fp_seen = fp; /* still changing: wait for it to settle */
		return;
	}
	if (server_reload(srv, 0) == 0) {
		srv->db_fp = fp;
		log_msg(LOG_LVL_INFO, NULL,
		        "signature files changed in %s: loading a new engine",
		        srv->cfg->clamav_database);
	}
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

static void server_purge_work(uv_work_t *req)
{
	struct server *srv = req->data;
	int64_t cutoff =
	    (int64_t)time(NULL) - (int64_t)srv->cfg->quarantine_retention_days * 86400;
	struct qindex *ix;
	unsigned removed = 0;
	char err[256];

	/* a handle of its own: the scans' released checks never wait behind it */
	ix = qindex_open(srv->cfg, 0, err, sizeof(err));
	if (ix == NULL || qindex_purge(ix, cutoff, &removed, err, sizeof(err)) < 0)
		log_msg(LOG_LVL_WARN, NULL, "quarantine retention: %s", err);
	else if (removed > 0)
		log_msg(LOG_LVL_INFO, NULL,
		        "quarantine retention: removed=%u older_than_days=%u", removed,
		        srv->cfg->quarantine_retention_days);
	qindex_close(&ix);
}

static void server_purge_done(uv_work_t *req, int status)
{
	(void)status;
	((struct server *)req->data)->purging = 0;
}

/* Hourly (and once at start): quarantine entries past retention_days go. */
static void server_on_retention(uv_timer_t *t)
{
	struct server *srv = t->data;

	if (srv->purging || srv->stopping || srv->cfg->quarantine_retention_days == 0)
		return;
	srv->purging = 1;
	srv->purge.data = srv;
	if (uv_queue_work(srv->loop, &srv->purge, server_purge_work, server_purge_done) <
	    0)
		srv->purging = 0;
}

/*
 * The quarantine index, opened once the quarantine belongs to the user we
 * run as: without it the proxy still quarantines (it cannot remember
 * releases, and listings rebuild it later).
 */
static void server_open_index(struct server *srv)
{
	char err[256];

	srv->qix = qindex_open(srv->cfg, 0, err, sizeof(err));
	if (srv->qix == NULL)
		log_msg(LOG_LVL_WARN, NULL,
		        "quarantine index unavailable (%s): released messages may be "
		        "quarantined again",
		        err);
	uv_timer_start(&srv->retention, server_on_retention, 60 * 1000, 3600 * 1000);
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
	/* caught from the first moment: a client may see the port before
	   start-up ends, and a stop asked for then is done once the loop runs */
	uv_signal_start(&srv->sig_term, server_on_signal, SIGTERM);
	uv_signal_start(&srv->sig_int, server_on_signal, SIGINT);
	srv->cfg = config_ref(cfg);
	uv_timer_init(loop, &srv->db_watch);
	uv_timer_init(loop, &srv->retention);
	srv->retention.data = srv;
	srv->db_watch.data = srv;
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
	stats_start();
	if (control_start(srv) < 0 || metrics_start(srv) < 0)
		return -1;
	if (server_drop_privileges(cfg) < 0)
		return -1;
	server_open_index(srv);
	outbox_start(srv); /* notice.admin_copy: its timer and wake-up */
	uv_signal_start(&srv->sig_hup, server_on_hup, SIGHUP);
	srv->db_fp = srv->db_fp_seen = server_db_fingerprint(cfg->clamav_database);
	uv_timer_start(&srv->db_watch, server_on_db_watch, DB_WATCH_MS, DB_WATCH_MS);
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
	control_stop(srv);
	metrics_stop(srv);
	uv_close((uv_handle_t *)&srv->sig_term, NULL);
	uv_close((uv_handle_t *)&srv->sig_int, NULL);
	uv_close((uv_handle_t *)&srv->sig_hup, NULL);
	uv_close((uv_handle_t *)&srv->db_watch, NULL);
	uv_close((uv_handle_t *)&srv->retention, NULL);
	outbox_stop(srv);
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
	qindex_close(&srv->qix);
	config_unref(&srv->cfg);
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
	sb->cfg = config_ref(srv->cfg);
	sb->prev = NULL;
	sb->next = srv->sessions;
	if (srv->sessions != NULL)
		srv->sessions->prev = sb;
	srv->sessions = sb;
	srv->n_sessions++;
	/* a policy from the first moment (fail closed), refined at connect/login */
	server_session_policy(sb, NULL, NULL);
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
	config_unref(&sb->cfg);
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

void server_session_policy(struct session_base *sb, const char *upstream,
                           const char *user)
{
	struct policy_scope sc = {sb->lcfg->listen_host, sb->lcfg->listen_port, upstream,
	                          user};
	const struct cfg_rule *applied[8];
	char names[256] = "";
	size_t o = 0;
	unsigned n;

	policy_resolve(sb->cfg, &sc, &sb->policy, applied, 8, &n);
	if (n == 0)
		return;
	for (unsigned i = 0; i < n && i < 8 && o < sizeof(names); i++) {
		int w = snprintf(names + o, sizeof(names) - o, "%s%s", i ? "," : "",
		                 applied[i]->name);

		if (w < 0)
			break;
		o += (size_t)w;
	}
	log_msg(LOG_LVL_INFO, sb->sid, "policy rules=%s%s", names, n > 8 ? ",..." : "");
}
