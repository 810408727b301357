/*
 * bench_scan.c - the baseline for the POP3 benchmark: the same corpus
 * scanned by libclamav in this process, with the same engine settings the
 * daemon uses (scanners/clamav.c), no proxy, no network.
 *
 *   bench_scan DBDIR ROUNDS FILE...
 *
 * Prints "scan_baseline messages=N bytes=B seconds=S msgs_per_s=R" for the
 * best of ROUNDS passes.
 */
#include <fcntl.h>
#include <gmime/gmime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proxy/log.h"
#include "scanners/scan.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct scan_limits lim;
	struct scan_engine *eng = NULL;
	char err[256];
	char **bufs;
	size_t *lens;
	int n, rounds;
	double best = 1e30;
	unsigned long long bytes = 0;

	if (argc < 4) {
		fprintf(stderr, "usage: bench_scan DBDIR ROUNDS FILE...\n");
		return 2;
	}
	log_set_level(LOG_LVL_ERROR);
	g_mime_init();
	if (scan_global_init() < 0)
		return 1;
	memset(&lim, 0, sizeof(lim));
	lim.mime_split_above = 8u << 20;
	if (scan_engine_load(argv[1], &lim, &eng, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	rounds = atoi(argv[2]);
	n = argc - 3;
	bufs = calloc((size_t)n, sizeof(*bufs));
	lens = calloc((size_t)n, sizeof(*lens));
	for (int i = 0; i < n; i++) {
		FILE *f = fopen(argv[3 + i], "rb");
		struct stat st;

		if (f == NULL || fstat(fileno(f), &st) < 0)
			return 1;
		lens[i] = (size_t)st.st_size;
		bufs[i] = malloc(lens[i] + 1);
		if (fread(bufs[i], 1, lens[i], f) != lens[i])
			return 1;
		fclose(f);
		bytes += lens[i];
	}
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s();

		for (int i = 0; i < n; i++) {
			struct scan_verdict v;

			scan_buffer(eng, bufs[i], lens[i], &v);
		}
		if (now_s() - t0 < best)
			best = now_s() - t0;
	}
	printf("scan_baseline messages=%d bytes=%llu seconds=%.3f msgs_per_s=%.1f\n", n,
	       bytes, best, (double)n / best);
	for (int i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(lens);
	scan_engine_unref(&eng);
	return 0;
}
