/*
 * standalone.c - a main() for the fuzz harnesses in builds without libFuzzer
 * (gcc, or clang without MAILMOAT_FUZZ), so the fuzz-smoke tests run
 * everywhere.
 *
 *   fuzz_X CORPUS_DIR ITERATIONS
 *
 * Replays every regular file of CORPUS_DIR through LLVMFuzzerTestOneInput,
 * then runs ITERATIONS inputs made by mutating corpus entries (bit flips,
 * byte changes biased to the bytes POP3 cares about, insertions, deletions,
 * duplicated runs, splices, truncation) from a fixed seed, so a failure
 * reproduces. A harness reports a bug by aborting; if none does, prints a
 * summary line and exits 0. Each input is handed over in an exact-size heap
 * buffer so AddressSanitizer catches reads past its end.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* the same bound the fuzz-smoke run gives libFuzzer (-max_len=4096) */
#define FUZZ_MAX_LEN 4096

struct entry {
	uint8_t *data;
	size_t len;
};

static uint64_t rng_state = 0x6d61696c6d6f6174ULL; /* "mailmoat" */

static uint64_t rng(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

/* Runs one input from an exact-size heap copy. */
static void run_one(const uint8_t *data, size_t len)
{
	uint8_t *copy = malloc(len != 0 ? len : 1);

	if (copy == NULL) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	if (len > 0)
		memcpy(copy, data, len);
	LLVMFuzzerTestOneInput(copy, len);
	free(copy);
}

/* Reads up to FUZZ_MAX_LEN bytes of path into a new entry; 0 on success. */
static int load_file(const char *path, struct entry *e)
{
	FILE *f = fopen(path, "rb");

	if (f == NULL)
		return -1;
	e->data = malloc(FUZZ_MAX_LEN);
	if (e->data == NULL) {
		fclose(f);
		return -1;
	}
	e->len = fread(e->data, 1, FUZZ_MAX_LEN, f);
	fclose(f);
	return 0;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads every regular, non-hidden file of dir, in name order. */
static struct entry *load_corpus(const char *dir, size_t *n_r)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL;
	struct entry *es;
	size_t n = 0, cap = 0, i, k = 0;

	if (d == NULL) {
		perror(dir);
		exit(2);
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap != 0 ? cap * 2 : 16;
			names = realloc(names, cap * sizeof(*names));
			if (names == NULL)
				exit(1);
		}
		names[n] = strdup(de->d_name);
		if (names[n] == NULL)
			exit(1);
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), cmp_name);
	es = calloc(n + 1, sizeof(*es));
	if (es == NULL)
		exit(1);
	for (i = 0; i < n; i++) {
		char path[4096];
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
		    load_file(path, &es[k]) == 0)
			k++;
		free(names[i]);
	}
	free(names);
	*n_r = k;
	return es;
}

/* One random edit of buf (len bytes, room for FUZZ_MAX_LEN); returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, const struct entry *es, size_t n)
{
	static const char interesting[] = ".\r\n+- OKER\0";
	size_t pos = len != 0 ? (size_t)(rng() % len) : 0;
	uint8_t b = (uint8_t)interesting[rng() % (sizeof(interesting) - 1)];

	switch (rng() % 8) {
	case 0: /* flip a bit */
		if (len > 0)
			buf[pos] ^= (uint8_t)(1u << (rng() % 8));
		break;
	case 1: /* any byte */
		if (len > 0)
			buf[pos] = (uint8_t)rng();
		break;
	case 2: /* an interesting byte */
		if (len > 0)
			buf[pos] = b;
		break;
	case 3: /* insert an interesting byte */
		if (len < FUZZ_MAX_LEN) {
			memmove(buf + pos + 1, buf + pos, len - pos);
			buf[pos] = b;
			len++;
		}
		break;
	case 4: /* delete a run */
		if (len > 0) {
			size_t k = 1 + (size_t)(rng() % 8);

			if (k > len - pos)
				k = len - pos;
			memmove(buf + pos, buf + pos + k, len - pos - k);
			len -= k;
		}
		break;
	case 5: /* duplicate a run */
		if (len > 0) {
			size_t k = 1 + (size_t)(rng() % 64);
			size_t at = (size_t)(rng() % (len + 1));

			if (k > len - pos)
				k = len - pos;
			if (k > FUZZ_MAX_LEN - len)
				k = FUZZ_MAX_LEN - len;
			memmove(buf + at + k, buf + at, len - at);
			memmove(buf + at, buf + (pos >= at ? pos + k : pos), k);
			len += k;
		}
		break;
	case 6: /* splice: the tail of another entry */
		if (n > 0) {
			const struct entry *o = &es[rng() % n];
			size_t from = o->len != 0 ? (size_t)(rng() % o->len) : 0;
			size_t k = o->len - from;

			if (k > FUZZ_MAX_LEN - pos)
				k = FUZZ_MAX_LEN - pos;
			memcpy(buf + pos, o->data + from, k);
			len = pos + k;
		}
		break;
	default: /* truncate */
		len = pos;
		break;
	}
	return len;
}

/* fuzz_X CORPUS_DIR ITERATIONS: 0 when no input aborted, 2 on bad usage. */
int main(int argc, char **argv)
{
	struct entry *es;
	size_t n, i;
	unsigned long iters, it;
	uint8_t *buf;
	struct timespec t0, t1;
	double secs;

	if (argc != 3) {
		fprintf(stderr, "usage: %s CORPUS_DIR ITERATIONS\n", argv[0]);
		return 2;
	}
	buf = malloc(FUZZ_MAX_LEN);
	if (buf == NULL)
		return 1;
	iters = strtoul(argv[2], NULL, 10);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	es = load_corpus(argv[1], &n);
	for (i = 0; i < n; i++)
		run_one(es[i].data, es[i].len);
	for (it = 0; it < iters; it++) {
		size_t len = 0, k, edits = 1 + (size_t)(rng() % 4);

		if (n > 0) {
			const struct entry *e = &es[rng() % n];

			memcpy(buf, e->data, e->len);
			len = e->len;
		}
		for (k = 0; k < edits; k++)
			len = mutate(buf, len, es, n);
		run_one(buf, len);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%s: %zu corpus files, %lu mutated inputs, %.1f s, no failure\n", argv[0],
	       n, iters, secs);
	for (i = 0; i < n; i++)
		free(es[i].data);
	free(es);
	free(buf);
	return 0;
}
