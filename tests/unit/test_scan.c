/*
 * test_scan.c - the libclamav scanner with the shipped test signatures:
 * in-memory and file scans, the bounded MIME split for large messages
 * (EICAR in a base64 part, ClamAV's test executable in a zip), and limits
 * turning into scan errors rather than clean verdicts.
 */
#include <check.h>
#include <fcntl.h>
#include <gmime/gmime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scanners/scan.h"

static const char eicar[] =
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

static struct scan_engine *load(uint64_t split_above, uint64_t max_filesize)
{
	struct scan_limits lim;
	struct scan_engine *eng = NULL;
	char err[256];

	memset(&lim, 0, sizeof(lim));
	lim.mime_split_above = split_above;
	lim.max_filesize = max_filesize;
	ck_assert_int_eq(
	    scan_engine_load(MAILMOAT_TESTSIGS_DIR, &lim, &eng, err, sizeof(err)), 0);
	ck_assert_uint_gt(scan_engine_signatures(eng), 40);
	return eng;
}

static char *b64(const void *data, size_t len)
{
	return g_base64_encode(data, len);
}

/* A message with `filler` bytes of clean base64 text part and optional attachments. */
static int make_msg(size_t filler, const void *att, size_t att_len, const char *att_name)
{
	FILE *f = tmpfile();
	int fd;

	ck_assert_ptr_nonnull(f);
	fprintf(f,
	        "From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n"
	        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
	        "--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n");
	if (filler > 0) {
		fprintf(
		    f, "--BB\r\nContent-Type: application/octet-stream; name=fill.bin\r\n"
		       "Content-Transfer-Encoding: base64\r\n\r\n");
		for (size_t i = 0; i < filler; i += 76)
			fprintf(f, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtb"
			           "m9wcXJzdHV2d3h5ejAx\r\n");
	}
	if (att != NULL) {
		char *enc = b64(att, att_len);
		size_t el = strlen(enc);

		fprintf(f,
		        "--BB\r\nContent-Type: application/octet-stream; name=%s\r\n"
		        "Content-Transfer-Encoding: base64\r\n\r\n",
		        att_name);
		for (size_t i = 0; i < el; i += 76)
			fprintf(f, "%.*s\r\n", (int)(el - i < 76 ? el - i : 76), enc + i);
		g_free(enc);
	}
	fprintf(f, "--BB--\r\n");
	fflush(f);
	fd = dup(fileno(f));
	fclose(f);
	lseek(fd, 0, SEEK_SET);
	return fd;
}

START_TEST(test_buffer_eicar_and_clean)
{
	struct scan_engine *eng = load(0, 0);
	struct scan_verdict v;
	const char clean[] = "From: a@b\r\nSubject: hi\r\n\r\nnothing to see\r\n";

	scan_buffer(eng, eicar, strlen(eicar), &v);
	ck_assert_int_eq(v.result, SCAN_INFECTED);
	ck_assert_str_eq(v.signature, "Mailmoat.Test.EICAR.UNOFFICIAL");
	scan_buffer(eng, clean, strlen(clean), &v);
	ck_assert_int_eq(v.result, SCAN_CLEAN);
	scan_engine_unref(&eng);
	ck_assert_ptr_null(eng);
}
END_TEST

static void check_fd(uint64_t split_above, size_t filler, const void *att, size_t att_len,
                     const char *name, enum scan_result want, const char *sig_prefix)
{
	struct scan_engine *eng = load(split_above, 0);
	struct scan_verdict v;
	int fd = make_msg(filler, att, att_len, name);

	scan_fd(eng, fd, &v);
	ck_assert_msg(v.result == want, "split=%llu filler=%zu: got %s (%s%s)",
	              (unsigned long long)split_above, filler, scan_result_name(v.result),
	              v.signature, v.error);
	if (sig_prefix != NULL)
		ck_assert_msg(strncmp(v.signature, sig_prefix, strlen(sig_prefix)) == 0,
		              "%s", v.signature);
	close(fd);
	scan_engine_unref(&eng);
}

START_TEST(test_fd_eicar_attachment_whole_and_split)
{
	/* libclamav's own mail parser, then the bounded split: same verdict */
	check_fd(0, 0, eicar, strlen(eicar), "eicar.com", SCAN_INFECTED,
	         "Mailmoat.Test.EICAR");
	check_fd(1024, 3u << 20, eicar, strlen(eicar), "eicar.com", SCAN_INFECTED,
	         "Mailmoat.Test.EICAR");
	check_fd(1024, 3u << 20, NULL, 0, NULL, SCAN_CLEAN, NULL);
}
END_TEST

START_TEST(test_fd_clam_zip_split)
{
	FILE *f = fopen("/usr/share/clamav-testfiles/clam.zip", "rb");
	char buf[65536];
	size_t n;

	ck_assert_msg(f != NULL, "clamav-testfiles is not installed");
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	check_fd(0, 0, buf, n, "clam.zip", SCAN_INFECTED, "Mailmoat.TestFile.clam_exe");
	check_fd(1024, 1u << 20, buf, n, "clam.zip", SCAN_INFECTED,
	         "Mailmoat.TestFile.clam_exe");
}
END_TEST

START_TEST(test_limit_is_an_error)
{
	/* a file past max_filesize must never read as clean */
	struct scan_engine *eng = load(0, 1024);
	struct scan_verdict v;
	int fd = make_msg(64 * 1024, NULL, 0, NULL);

	scan_fd(eng, fd, &v);
	ck_assert_msg(v.result == SCAN_ERROR, "%s %s", v.signature, v.error);
	ck_assert_ptr_nonnull(strstr(v.error, "limit"));
	close(fd);
	scan_engine_unref(&eng);
}
END_TEST

START_TEST(test_load_empty_dir_fails)
{
	struct scan_limits lim;
	struct scan_engine *eng = NULL;
	char dir[] = "/tmp/mm-scan-empty-XXXXXX";
	char err[256];

	memset(&lim, 0, sizeof(lim));
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(scan_engine_load(dir, &lim, &eng, err, sizeof(err)), -1);
	ck_assert_ptr_null(eng);
	ck_assert_ptr_nonnull(strstr(err, "no ClamAV database"));
	rmdir(dir);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("scan");
	TCase *tc = tcase_create("clamav");
	SRunner *sr;
	int failed;

	g_mime_init();
	if (scan_global_init() != 0)
		return 1;
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_buffer_eicar_and_clean);
	tcase_add_test(tc, test_fd_eicar_attachment_whole_and_split);
	tcase_add_test(tc, test_fd_clam_zip_split);
	tcase_add_test(tc, test_limit_is_an_error);
	tcase_add_test(tc, test_load_empty_dir_fails);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
