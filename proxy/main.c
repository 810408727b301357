/*
 * main.c - the mailmoat command line (a contract: scripts rely on it).
 *
 *   mailmoat --config FILE        run in the foreground, log to stderr
 *   mailmoat --check-config FILE  exit 0 when FILE is valid, else print
 *                                 "FILE:LINE: reason" lines and exit 1
 *   mailmoat status --config FILE [--json]  the running daemon's figures
 *   mailmoat quarantine list|show|export|release|delete|purge ...
 *                                 the quarantine (proxy/admin.c)
 *   mailmoat --version | --help
 *
 * Start-up order: configuration, libclamav and GMime, the engine (fatal if
 * no database loads), the quarantine directory, then the listeners; the
 * server drops privileges after binding.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "policy/config.h"
#include "policy/notice.h"
#include "policy/policy.h"
#include "policy/quarantine.h"
#include "proxy/admin.h"
#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/notify.h"
#include "proxy/server.h"
#include "scanners/scan.h"

static void main_usage(FILE *f)
{
	fprintf(f, "usage: mailmoat --config FILE\n"
	           "       mailmoat --check-config FILE [--user USER]\n"
	           "       mailmoat status --config FILE [--json]\n"
	           "       mailmoat quarantine list|show|export|release|delete|purge"
	           " [--config FILE] ...\n"
	           "         (mailmoat quarantine --help: the options)\n"
	           "       mailmoat --version\n");
}

/*
 * Every session holds two descriptors: the soft NOFILE limit (1024 under
 * systemd and most shells) would cap a daemon near 500 sessions whatever
 * limits.max_sessions says. Raises it to the hard limit and logs both.
 */
static void main_raise_nofile(void)
{
	struct rlimit rl;
	rlim_t was;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	was = rl.rlim_cur;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_msg(LOG_LVL_WARN, NULL,
			        "cannot raise open files limit from %llu: %s",
			        (unsigned long long)was, strerror(errno));
			return;
		}
	}
	log_msg(LOG_LVL_INFO, NULL, "open files limit=%llu (was %llu, hard limit %llu)",
	        (unsigned long long)rl.rlim_cur, (unsigned long long)was,
	        (unsigned long long)rl.rlim_max);
}

/*
 * libuv's worker pool runs the scans (and reloads, purges, the admin copy):
 * 4 threads by default whatever the machine. One per core plus two for the
 * rest, at least 4, unless UV_THREADPOOL_SIZE says otherwise; read by
 * libuv when the first job is queued, so this runs before any.
 */
static void main_pool_size(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	long n = ncpu > 0 ? ncpu + 2 : 4;
	const char *env = getenv("UV_THREADPOOL_SIZE");
	char buf[16];

	if (env == NULL || *env == '\0') {
		if (n < 4)
			n = 4;
		if (n > 128)
			n = 128;
		snprintf(buf, sizeof(buf), "%ld", n);
		setenv("UV_THREADPOOL_SIZE", buf, 1);
		env = buf;
	}
	log_msg(LOG_LVL_INFO, NULL, "worker threads=%s cpus=%ld", env, ncpu);
}

/* Runs the daemon until it is stopped; returns the process exit code. */
static int main_run(const char *path)
{
	struct config *cfg = NULL;
	struct scan_engine *engine = NULL;
	struct scan_limits lim;
	struct server srv;
	enum log_level lvl;
	char err[512];
	uv_loop_t *loop = uv_default_loop();
	int r;

	if (config_load(path, &cfg, stderr) < 0)
		return 1;
	if (log_level_parse(cfg->log_level, &lvl) == 0)
		log_set_level(lvl);
	log_set_target(cfg->log_target);
	log_msg(LOG_LVL_INFO, NULL, "mailmoat %s starting config=%s", MAILMOAT_VERSION,
	        path);
	main_raise_nofile();
	main_pool_size();
	if (scan_global_init() < 0) {
		config_free(&cfg);
		return 1;
	}
	notice_global_init();
	server_scan_limits(cfg, &lim);
	if (scan_engine_load(cfg->clamav_database, &lim, &engine, err, sizeof(err)) < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot start: %s", err);
		config_free(&cfg);
		return 1;
	}
	r = quar_prepare(cfg->quarantine_dir);
	if (r < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot start: quarantine dir %s: %s",
		        cfg->quarantine_dir, strerror(-r));
		scan_engine_unref(&engine);
		config_free(&cfg);
		return 1;
	}
	r = server_start(&srv, loop, cfg, engine);
	srv.cfg_path = path;
	scan_engine_unref(&engine); /* the server holds its own reference */
	if (r == 0) {
		log_msg(LOG_LVL_INFO, NULL, "ready");
		notify_send("READY=1\nSTATUS=scanning mail");
		uv_run(loop, UV_RUN_DEFAULT);
		log_msg(LOG_LVL_INFO, NULL, "stopped");
	} else {
		server_stop(&srv);
		uv_run(loop, UV_RUN_DEFAULT);
	}
	server_cleanup(&srv);
	uv_loop_close(loop);
	config_free(&cfg);
	return r == 0 ? 0 : 1;
}

/*
 * The listeners' TLS files (certificates, keys, CA files, intercept CAs)
 * loaded as the daemon will load them: a file that cannot be used is an
 * error of --check-config, not a surprise at start.
 */
static int main_check_tls(const char *path, const struct config *cfg)
{
	int bad = 0;

	for (unsigned i = 0; i < cfg->n_listeners; i++) {
		struct conn_tls_cfg t;

		if (conn_tls_setup(&t, &cfg->listeners[i]) < 0) {
			fprintf(
			    stderr,
			    "%s:%d: listeners[%u]: TLS files unusable (reason above)\n",
			    path, cfg->listeners[i].line, i);
			bad = 1;
		}
		conn_tls_cleanup(&t);
	}
	return bad ? -1 : 0;
}

/*
 * --check-config FILE --user U: the effective policy of user U on every
 * listener (its configured upstream; "transparent" ones for any server).
 */
static void main_print_policy(const struct config *cfg, const char *user)
{
	for (unsigned i = 0; i < cfg->n_listeners; i++) {
		const struct cfg_listener *l = &cfg->listeners[i];
		char up[300];
		struct policy_scope sc = {l->listen_host, l->listen_port, NULL, user};

		if (l->upstream_port != 0) {
			snprintf(up, sizeof(up), "%s:%u", l->upstream_host,
			         l->upstream_port);
			sc.upstream = up;
		}
		printf("\n# listeners[%u] (%s %s:%u)\n", i,
		       cfg_protocol_name(l->protocol), l->listen_host, l->listen_port);
		policy_print(stdout, cfg, &sc);
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--config") == 0)
		return main_run(argv[2]);
	if (argc >= 2 && strcmp(argv[1], "status") == 0)
		return control_status_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "quarantine") == 0)
		return admin_main(argc - 1, argv + 1);
	if ((argc == 3 || (argc == 5 && strcmp(argv[3], "--user") == 0)) &&
	    strcmp(argv[1], "--check-config") == 0) {
		struct config *cfg = NULL;

		if (config_load(argv[2], &cfg, stderr) < 0)
			return 1;
		if (main_check_tls(argv[2], cfg) < 0) {
			config_free(&cfg);
			return 1;
		}
		printf("%s: configuration OK\n", argv[2]);
		if (argc == 5)
			main_print_policy(cfg, argv[4]);
		config_free(&cfg);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("mailmoat %s\n", MAILMOAT_VERSION);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		main_usage(stdout);
		return 0;
	}
	main_usage(stderr);
	return 2;
}
