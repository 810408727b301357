/*
 * bench_scan.c - the raw libclamav baseline for the benchmarks: the same
 * messages scanned by libclamav in this process, with the engine settings
 * the daemon uses by default (policy/config.c: config_defaults, applied by
 * server_scan_limits), no proxy, no network.
 *
 *   bench_scan [-t THREADS] [-m MEMORY_LIMIT] DBDIR ROUNDS FILE...
 *
 * THREADS threads (default 1) share one engine and take the files in turn
 * (the daemon's scan pool does the same). Files larger than MEMORY_LIMIT
 * bytes (default 4194304, the harness's spool.memory_limit) are scanned
 * from the file (scan_fd, as the daemon scans a spooled message), smaller
 * ones from memory (scan_buffer). Files are read into memory before the
 * clock starts. Prints, for the best of ROUNDS passes:
 *
 *   scan_baseline threads=T messages=N bytes=B malicious=K errors=E
 *   median_seconds=M seconds=S mb_per_s=X msgs_per_s=R
 *
 * (seconds and the rates: the best pass; median_seconds: the median pass;
 * cpu_seconds: the process's user + system CPU time over all passes,
 * divided by ROUNDS: what the scans cost, whatever else runs.)
 */
#include <fcntl.h>
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proxy/log.h"
#include "scanners/scan.h"

struct corpus {
	struct scan_engine *eng;
	char **paths;
	char **bufs; /* NULL for the files scanned from disk */
	size_t *lens;
	int n;
	atomic_int next;
	atomic_int malicious;
	atomic_int errors;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void *worker(void *arg)
{
	struct corpus *c = arg;
	int i;

	while ((i = atomic_fetch_add(&c->next, 1)) < c->n) {
		struct scan_verdict v;

		if (c->bufs[i] != NULL) {
			scan_buffer(c->eng, c->bufs[i], c->lens[i], &v);
		} else {
			int fd = open(c->paths[i], O_RDONLY | O_CLOEXEC);

			if (fd < 0) {
				atomic_fetch_add(&c->errors, 1);
				continue;
			}
			scan_fd(c->eng, fd, &v);
			close(fd);
		}
		if (v.result == SCAN_INFECTED)
			atomic_fetch_add(&c->malicious, 1);
		else if (v.result == SCAN_ERROR)
			atomic_fetch_add(&c->errors, 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct scan_limits lim;
	struct corpus c;
	char err[256];
	const char *tmp = getenv("TMPDIR");
	unsigned long long memlimit = 4ull << 20, bytes = 0;
	int threads = 1, rounds, opt, mal = 0, errs = 0;
	double best = 1e30, *times, cpu0;
	pthread_t *tids;

	while ((opt = getopt(argc, argv, "t:m:")) != -1) {
		if (opt == 't')
			threads = atoi(optarg);
		else if (opt == 'm')
			memlimit = strtoull(optarg, NULL, 10);
		else
			return 2;
	}
	if (argc - optind < 3 || threads < 1) {
		fprintf(stderr, "usage: bench_scan [-t THREADS] [-m MEMORY_LIMIT] DBDIR "
		                "ROUNDS FILE...\n");
		return 2;
	}
	log_set_level(LOG_LVL_ERROR);
	g_mime_init();
	if (scan_global_init() < 0)
		return 1;
	/* the daemon's defaults (policy/config.c, proxy/server.c) */
	memset(&lim, 0, sizeof(lim));
	lim.max_filesize = 100ULL << 20;
	lim.max_scansize = 400ULL << 20;
	lim.max_recursion = 17;
	lim.max_files = 10000;
	lim.max_scantime_ms = 120 * 1000;
	lim.mime_split_above = 8ULL << 20;
	snprintf(lim.tmpdir, sizeof(lim.tmpdir), "%s", tmp && *tmp ? tmp : "/tmp");
	memset(&c, 0, sizeof(c));
	if (scan_engine_load(argv[optind], &lim, &c.eng, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	rounds = atoi(argv[optind + 1]);
	c.n = argc - optind - 2;
	c.paths = argv + optind + 2;
	c.bufs = calloc((size_t)c.n, sizeof(*c.bufs));
	c.lens = calloc((size_t)c.n, sizeof(*c.lens));
	tids = calloc((size_t)threads, sizeof(*tids));
	times = calloc((size_t)(rounds > 0 ? rounds : 1), sizeof(*times));
	if (c.bufs == NULL || c.lens == NULL || tids == NULL || times == NULL ||
	    rounds < 1)
		return 1;
	for (int i = 0; i < c.n; i++) {
		FILE *f = fopen(c.paths[i], "rb");
		struct stat st;

		if (f == NULL || fstat(fileno(f), &st) < 0) {
			perror(c.paths[i]);
			return 1;
		}
		c.lens[i] = (size_t)st.st_size;
		bytes += c.lens[i];
		if ((unsigned long long)st.st_size <= memlimit) {
			c.bufs[i] = malloc(c.lens[i] + 1);
			if (c.bufs[i] == NULL ||
			    fread(c.bufs[i], 1, c.lens[i], f) != c.lens[i])
				return 1;
		}
		fclose(f);
	}
	cpu0 = cpu_s();
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s(), dt;

		atomic_store(&c.next, 0);
		atomic_store(&c.malicious, 0);
		atomic_store(&c.errors, 0);
		for (int t = 0; t < threads; t++)
			if (pthread_create(&tids[t], NULL, worker, &c) != 0)
				return 1;
		for (int t = 0; t < threads; t++)
			pthread_join(tids[t], NULL);
		dt = now_s() - t0;
		/* insertion sort: the median at the end */
		times[r] = dt;
		for (int k = r; k > 0 && times[k - 1] > times[k]; k--) {
			double x = times[k];

			times[k] = times[k - 1];
			times[k - 1] = x;
		}
		if (dt < best)
			best = dt;
		mal = atomic_load(&c.malicious);
		errs = atomic_load(&c.errors);
	}
	printf("scan_baseline threads=%d messages=%d bytes=%llu malicious=%d errors=%d "
	       "cpu_seconds=%.3f median_seconds=%.3f seconds=%.3f mb_per_s=%.2f "
	       "msgs_per_s=%.1f\n",
	       threads, c.n, bytes, mal, errs, (cpu_s() - cpu0) / rounds,
	       rounds % 2 ? times[rounds / 2]
	                  : (times[rounds / 2 - 1] + times[rounds / 2]) / 2,
	       best, (double)bytes / 1e6 / best, (double)c.n / best);
	for (int i = 0; i < c.n; i++)
		free(c.bufs[i]);
	free(c.bufs);
	free(c.lens);
	free(tids);
	free(times);
	scan_engine_unref(&c.eng);
	return 0;
}
