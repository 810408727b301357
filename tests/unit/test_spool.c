/*
 * test_spool.c - Check suite for proxy/spool.c.
 *
 * Covers the two storage modes and the switch between them (memory up to
 * mem_limit inclusive, an unlinked temp file past it), content read back
 * through spool_pread after spool_freeze in odd-sized pieces, the max_size
 * cap (-EFBIG, spool_overflowed, later appends dropped), append after
 * freeze, reference counting, a bad temp directory, concurrent readers, a
 * spill whose write fails half-way, and the size hint (spool_expect).
 *
 * Every test spills into its own fresh directory and removes it at the end:
 * rmdir fails if a spill file was left behind, so that checks the unlink.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proxy/spool.h"

/* spool.c's file-mode write buffer size; appends around it take other paths */
#define WBUF 65536

static char tmpdir[64];

static void tmpdir_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/mm-test-spool-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmpdir_teardown(void)
{
	/* fails with ENOTEMPTY when a spill file was not unlinked */
	ck_assert_msg(rmdir(tmpdir) == 0, "rmdir %s: %s", tmpdir, strerror(errno));
}

/* The byte at offset i of every test message: aperiodic enough to catch shifts. */
static char pat(uint64_t i)
{
	return (char)((i * 7 + (i >> 8) * 13 + (i >> 16)) & 0xff);
}

static void fill(char *buf, uint64_t off, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = pat(off + i);
}

/* Appends the pattern bytes [off, off + len) and expects result want. */
static void append_pat(struct spool *sp, uint64_t off, size_t len, int want)
{
	char *buf = malloc(len != 0 ? len : 1);

	ck_assert_ptr_nonnull(buf);
	fill(buf, off, len);
	ck_assert_int_eq(spool_append(sp, buf, len), want);
	free(buf);
}

/*
 * Reads the whole spool back in pieces of the given size and checks it is
 * the pattern [0, size), that reads at the end return 0 and a read
 * straddling the end is short.
 */
static void check_content(const struct spool *sp, uint64_t size, size_t piece)
{
	char *buf = malloc(piece + 16);
	uint64_t off = 0;
	ssize_t r;

	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_eq(spool_size(sp), size);
	while (off < size) {
		size_t i;

		r = spool_pread(sp, buf, piece, off);
		ck_assert_int_gt(r, 0);
		for (i = 0; i < (size_t)r; i++)
			if (buf[i] != pat(off + i))
				ck_abort_msg("content differs at offset %llu",
				             (unsigned long long)(off + i));
		off += (uint64_t)r;
	}
	ck_assert_uint_eq(off, size);
	ck_assert_int_eq(spool_pread(sp, buf, piece, size), 0);
	ck_assert_int_eq(spool_pread(sp, buf, piece, size + 12345), 0);
	if (size > 0) {
		r = spool_pread(sp, buf, 16, size - 1);
		ck_assert_int_eq(r, 1);
		ck_assert_int_eq(buf[0], pat(size - 1));
	}
	free(buf);
}

START_TEST(test_memory_below_bound)
{
	struct spool *sp = spool_new(4096, tmpdir, 0);
	const char *mem;
	uint64_t off = 0;
	size_t k = 1;

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_fd(sp), -1);
	while (off + k <= 4000) {
		append_pat(sp, off, k, 0);
		off += k;
		k = k * 3 % 97 + 1;
	}
	ck_assert_int_eq(spool_fd(sp), -1);
	ck_assert_ptr_nonnull(spool_mem(sp));
	ck_assert_int_eq(spool_freeze(sp), 0);
	mem = spool_mem(sp);
	ck_assert_ptr_nonnull(mem);
	ck_assert_int_eq(mem[0], pat(0));
	ck_assert_int_eq(mem[off - 1], pat(off - 1));
	check_content(sp, off, 333);
	ck_assert_int_eq(spool_overflowed(sp), 0);
	spool_unref(&sp);
	ck_assert_ptr_null(sp);
}
END_TEST

START_TEST(test_exact_bound_then_spill)
{
	struct spool *sp = spool_new(4096, tmpdir, 0);
	struct stat st;
	int fd;

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 4000, 0);
	append_pat(sp, 4000, 96, 0);
	/* exactly mem_limit bytes: still memory */
	ck_assert_int_eq(spool_fd(sp), -1);
	ck_assert_ptr_nonnull(spool_mem(sp));
	append_pat(sp, 4096, 1, 0);
	fd = spool_fd(sp);
	ck_assert_int_ge(fd, 0);
	ck_assert_ptr_null(spool_mem(sp));
	/* the spill file is already unlinked and not inherited by children */
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_uint_eq(st.st_nlink, 0);
	ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_ptr_null(spool_mem(sp));
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_int_eq(st.st_size, 4097);
	check_content(sp, 4097, 4097);
	check_content(sp, 4097, 1000);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_spill_mixed_appends)
{
	/*
	 * Small appends (buffered), appends that just fit or just overflow the
	 * write buffer, and appends bigger than it (written straight through),
	 * interleaved, must land in order.
	 */
	static const size_t sizes[] = {100,  900,      3000, WBUF - 1, 1,    WBUF,     7,
	                               WBUF, WBUF + 1, 50,   3 * WBUF, 2,    WBUF - 9, 10,
	                               9,    1,        0,    200000,   4096, 12};
	struct spool *sp = spool_new(1000, tmpdir, 0);
	uint64_t off = 0;
	size_t i;

	ck_assert_ptr_nonnull(sp);
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		append_pat(sp, off, sizes[i], 0);
		off += sizes[i];
		ck_assert_uint_eq(spool_size(sp), off);
	}
	ck_assert_int_ge(spool_fd(sp), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, off, 65536);
	check_content(sp, off, 4093);
	check_content(sp, off, 1);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_spill_one_big_append)
{
	/* one append that jumps from empty past the bound */
	struct spool *sp = spool_new(1000, tmpdir, 0);

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 1001, 0);
	ck_assert_int_ge(spool_fd(sp), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 1001, 512);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_zero_mem_limit)
{
	struct spool *sp = spool_new(0, tmpdir, 0);

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_append(sp, "", 0), 0);
	ck_assert_int_eq(spool_fd(sp), -1);
	append_pat(sp, 0, 1, 0);
	ck_assert_int_ge(spool_fd(sp), 0);
	append_pat(sp, 1, 5, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 6, 4);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_empty)
{
	struct spool *sp = spool_new(100, tmpdir, 10);
	char c;

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_uint_eq(spool_size(sp), 0);
	ck_assert_ptr_nonnull(spool_mem(sp));
	ck_assert_int_eq(spool_fd(sp), -1);
	ck_assert_int_eq(spool_pread(sp, &c, 1, 0), 0);
	ck_assert_int_eq(spool_overflowed(sp), 0);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_max_size_memory)
{
	struct spool *sp = spool_new(1000, tmpdir, 100);

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 60, 0);
	append_pat(sp, 60, 40, 0); /* exactly max_size */
	ck_assert_int_eq(spool_overflowed(sp), 0);
	append_pat(sp, 100, 1, -EFBIG);
	ck_assert_int_eq(spool_overflowed(sp), 1);
	ck_assert_uint_eq(spool_size(sp), 100);
	/* once overflowed, every later append is dropped, even an empty one */
	append_pat(sp, 100, 0, -EFBIG);
	append_pat(sp, 100, 1, -EFBIG);
	ck_assert_uint_eq(spool_size(sp), 100);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_int_eq(spool_overflowed(sp), 1);
	check_content(sp, 100, 7);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_max_size_file)
{
	struct spool *sp = spool_new(10, tmpdir, 5000);

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 4999, 0);
	ck_assert_int_ge(spool_fd(sp), 0);
	append_pat(sp, 4999, 2, -EFBIG);
	ck_assert_int_eq(spool_overflowed(sp), 1);
	ck_assert_uint_eq(spool_size(sp), 4999);
	append_pat(sp, 4999, 1, -EFBIG);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 4999, 1024);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_max_size_single_append)
{
	/* one append over the cap is refused whole: nothing of it is kept */
	struct spool *sp = spool_new(1000, tmpdir, 100);

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 101, -EFBIG);
	ck_assert_int_eq(spool_overflowed(sp), 1);
	ck_assert_uint_eq(spool_size(sp), 0);
	ck_assert_int_eq(spool_fd(sp), -1);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_append_after_freeze)
{
	struct spool *sp = spool_new(1000, tmpdir, 0);

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 10, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	append_pat(sp, 10, 5, -EINVAL);
	ck_assert_uint_eq(spool_size(sp), 10);
	check_content(sp, 10, 3);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_refcount)
{
	struct spool *sp = spool_new(10, tmpdir, 0);
	struct spool *a, *b, *none = NULL;
	int fd;

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 100, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	fd = spool_fd(sp);
	ck_assert_int_ge(fd, 0);
	a = sp;
	spool_ref(a);
	b = sp;
	spool_ref(b);
	/* each holder drops its own reference; the spool lives until the last */
	spool_unref(&sp);
	ck_assert_ptr_null(sp);
	ck_assert_int_ne(fcntl(fd, F_GETFD), -1);
	check_content(a, 100, 64);
	spool_unref(&a);
	ck_assert_ptr_null(a);
	ck_assert_int_ne(fcntl(fd, F_GETFD), -1);
	check_content(b, 100, 33);
	spool_unref(&b);
	ck_assert_ptr_null(b);
	/* the last reference closed the spill file */
	ck_assert_int_eq(fcntl(fd, F_GETFD), -1);
	ck_assert_int_eq(errno, EBADF);
	spool_unref(&none); /* NULL is fine */
	ck_assert_ptr_null(none);
}
END_TEST

START_TEST(test_bad_tmpdir)
{
	/*
	 * The spill fails; the spool keeps what it had in memory, but the
	 * failure sticks: the byte that could not be stored makes the message
	 * incomplete, so the freeze reports it.
	 */
	struct spool *sp = spool_new(100, "/nonexistent/mailmoat-spool-test", 0);
	int r;

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 100, 0);
	r = spool_append(sp, "x", 1);
	ck_assert_int_lt(r, 0);
	ck_assert_int_ne(r, -EFBIG);
	ck_assert_int_eq(spool_overflowed(sp), 0);
	ck_assert_int_eq(spool_fd(sp), -1);
	ck_assert_uint_eq(spool_size(sp), 100);
	ck_assert_int_eq(spool_append(sp, "y", 1), r);
	ck_assert_int_eq(spool_freeze(sp), r);
	check_content(sp, 100, 100);
	spool_unref(&sp);
}
END_TEST

START_TEST(test_default_tmpdir)
{
	/* NULL and "" mean /tmp */
	struct spool *a = spool_new(1, NULL, 0);
	struct spool *b = spool_new(1, "", 0);

	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	append_pat(a, 0, 3000, 0);
	append_pat(b, 0, 3000, 0);
	ck_assert_int_ge(spool_fd(a), 0);
	ck_assert_int_ge(spool_fd(b), 0);
	ck_assert_int_eq(spool_freeze(a), 0);
	ck_assert_int_eq(spool_freeze(b), 0);
	check_content(a, 3000, 999);
	check_content(b, 3000, 999);
	spool_unref(&a);
	spool_unref(&b);
}
END_TEST

struct reader {
	struct spool *sp;
	uint64_t size;
	unsigned seed;
	int bad;
};

/* Reads random ranges of a frozen spool and counts wrong bytes. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;
	char buf[3000];
	int iter;

	for (iter = 0; iter < 2000; iter++) {
		uint64_t off = (uint64_t)rand_r(&r->seed) % r->size;
		size_t len = (size_t)rand_r(&r->seed) % sizeof(buf) + 1;
		ssize_t n = spool_pread(r->sp, buf, len, off);
		ssize_t i;

		if (n <= 0 || (uint64_t)n > r->size - off) {
			r->bad++;
			continue;
		}
		for (i = 0; i < n; i++)
			if (buf[i] != pat(off + (uint64_t)i))
				r->bad++;
	}
	spool_unref(&r->sp);
	return NULL;
}

START_TEST(test_concurrent_readers)
{
	/* after freeze a spool is read from several threads at once */
	struct spool *sp = spool_new(5000, tmpdir, 0);
	struct reader rd[4];
	pthread_t th[4];
	int i;

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 300000, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	for (i = 0; i < 4; i++) {
		spool_ref(sp);
		rd[i] = (struct reader){sp, 300000, (unsigned)i * 7919 + 1, 0};
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader_main, &rd[i]), 0);
	}
	spool_unref(&sp); /* the readers hold the last references */
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);
		ck_assert_int_eq(rd[i].bad, 0);
	}
}
END_TEST

START_TEST(test_spill_write_failure)
{
	/*
	 * The spill write fails half-way (here: RLIMIT_FSIZE, in production: a
	 * full disk). The append must report it, and the failure must stick:
	 * later appends and the freeze fail too, so a spool with bytes missing
	 * is never taken for a complete message.
	 */
	struct spool *sp = spool_new(1000, tmpdir, 0);
	char big[200] = {0};
	struct rlimit old, lim;
	void (*old_handler)(int);
	int r;

	ck_assert_ptr_nonnull(sp);
	append_pat(sp, 0, 900, 0);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 500;
	old_handler = signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = spool_append(sp, big, sizeof(big)); /* past mem_limit: spills */
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_handler);
	ck_assert_int_lt(r, 0);
	ck_assert_int_eq(spool_overflowed(sp), 0);
	ck_assert_uint_eq(spool_size(sp), 900);
	{
		/* either the spool stays usable with its content, or it stays failed */
		r = spool_append(sp, "x", 1);
		if (r == 0) {
			char c = 0;

			ck_assert_int_eq(spool_freeze(sp), 0);
			ck_assert_uint_eq(spool_size(sp), 901);
			ck_assert_int_eq(spool_pread(sp, &c, 1, 900), 1);
			ck_assert_int_eq(c, 'x');
			check_content(sp, 900, 100);
		} else {
			ck_assert_int_ne(spool_freeze(sp), 0);
		}
	}
	spool_unref(&sp);
}
END_TEST

/*
 * spool_expect below the memory bound: the content lands in one block that
 * never moves (without the hint it grows by doubling from 4 KiB), and a
 * wrong hint either way still gives the exact content.
 */
START_TEST(test_expect_memory)
{
	struct spool *sp = spool_new(1 << 20, tmpdir, 0);
	const void *at;
	uint64_t off;

	ck_assert_ptr_nonnull(sp);
	spool_expect(sp, 700000);
	at = spool_mem(sp);
	ck_assert_int_eq(spool_fd(sp), -1);
	for (off = 0; off < 700000; off += 3500)
		append_pat(sp, off, 3500, 0);
	ck_assert_ptr_eq(spool_mem(sp), at);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_int_eq(spool_fd(sp), -1);
	check_content(sp, 700000, 4093);
	spool_unref(&sp);

	/* hint too small: the usual growth takes over */
	sp = spool_new(1 << 20, tmpdir, 0);
	spool_expect(sp, 1000);
	append_pat(sp, 0, 500, 0);
	append_pat(sp, 500, 90000, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 90500, 777);
	spool_unref(&sp);

	/* hint too large (still within memory): fewer bytes are fine */
	sp = spool_new(1 << 20, tmpdir, 0);
	spool_expect(sp, 900000);
	append_pat(sp, 0, 10, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_uint_eq(spool_size(sp), 10);
	check_content(sp, 10, 3);
	spool_unref(&sp);
}
END_TEST

/* spool_expect past the memory bound: straight to the file, no memory copy. */
START_TEST(test_expect_file)
{
	struct spool *sp = spool_new(4096, tmpdir, 0);

	ck_assert_ptr_nonnull(sp);
	spool_expect(sp, 5000);
	ck_assert_int_ge(spool_fd(sp), 0);
	append_pat(sp, 0, 100, 0);
	append_pat(sp, 100, 4900, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 5000, 999);
	spool_unref(&sp);

	/* fewer bytes than announced: still a correct (file) spool */
	sp = spool_new(4096, tmpdir, 0);
	spool_expect(sp, 1 << 20);
	append_pat(sp, 0, 20, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	check_content(sp, 20, 7);
	spool_unref(&sp);
}
END_TEST

/* The hint changes nothing once bytes are held, past max_size, after freeze. */
START_TEST(test_expect_ignored)
{
	struct spool *sp = spool_new(4096, tmpdir, 1000);

	ck_assert_ptr_nonnull(sp);
	spool_expect(sp, 5000); /* past max_size: the append overflows as before */
	ck_assert_int_eq(spool_fd(sp), -1);
	append_pat(sp, 0, 1001, -EFBIG);
	ck_assert(spool_overflowed(sp));
	spool_unref(&sp);

	sp = spool_new(4096, tmpdir, 0);
	append_pat(sp, 0, 10, 0);
	spool_expect(sp, 8000); /* not empty: no early spill */
	ck_assert_int_eq(spool_fd(sp), -1);
	append_pat(sp, 10, 90, 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	spool_expect(sp, 8000);
	ck_assert_int_eq(spool_fd(sp), -1);
	check_content(sp, 100, 9);
	spool_unref(&sp);

	/* a spill directory that does not exist: stays in memory, appends report */
	sp = spool_new(16, "/nonexistent/mm-spool", 0);
	spool_expect(sp, 100);
	ck_assert_int_eq(spool_fd(sp), -1);
	append_pat(sp, 0, 10, 0);
	ck_assert_int_lt(spool_append(sp, "0123456789", 10), 0);
	spool_unref(&sp);
}
END_TEST

static Suite *spool_suite(void)
{
	Suite *s = suite_create("spool");
	TCase *tc = tcase_create("spool");

	tcase_add_checked_fixture(tc, tmpdir_setup, tmpdir_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_memory_below_bound);
	tcase_add_test(tc, test_exact_bound_then_spill);
	tcase_add_test(tc, test_spill_mixed_appends);
	tcase_add_test(tc, test_spill_one_big_append);
	tcase_add_test(tc, test_zero_mem_limit);
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_max_size_memory);
	tcase_add_test(tc, test_max_size_file);
	tcase_add_test(tc, test_max_size_single_append);
	tcase_add_test(tc, test_append_after_freeze);
	tcase_add_test(tc, test_refcount);
	tcase_add_test(tc, test_bad_tmpdir);
	tcase_add_test(tc, test_default_tmpdir);
	tcase_add_test(tc, test_concurrent_readers);
	tcase_add_test(tc, test_spill_write_failure);
	tcase_add_test(tc, test_expect_memory);
	tcase_add_test(tc, test_expect_file);
	tcase_add_test(tc, test_expect_ignored);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(spool_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
