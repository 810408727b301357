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
#include <sys/resource.h>
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

/*
 * A large message of very many tiny parts: more than max_files is a scan
 * error, found by counting in bounded memory before GMime would build its
 * tree (about 2 KiB a part: this one would cost some 200 MB).
 */
START_TEST(test_split_many_parts_bounded)
{
	struct scan_engine *eng = load(1024, 0); /* max_files: 10000 */
	struct scan_verdict v;
	struct rusage ru0, ru1;
	FILE *f = tmpfile();
	int fd;

	ck_assert_ptr_nonnull(f);
	fprintf(f, "From: a@example.test\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
	           "Content-Type: multipart/mixed; boundary=B\r\n\r\n");
	for (int i = 0; i < 100000; i++)
		fprintf(f, "--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n", i);
	fprintf(f, "--B--\r\n");
	fflush(f);
	fd = dup(fileno(f));
	fclose(f);
	getrusage(RUSAGE_SELF, &ru0);
	scan_fd(eng, fd, &v);
	getrusage(RUSAGE_SELF, &ru1);
	ck_assert_msg(v.result == SCAN_ERROR, "%d %s", v.result, v.error);
	ck_assert_ptr_nonnull(strstr(v.error, "MIME structure"));
	ck_assert_msg(ru1.ru_maxrss - ru0.ru_maxrss < 48 * 1024,
	              "peak RSS grew by %ld KiB", ru1.ru_maxrss - ru0.ru_maxrss);
	close(fd);
	scan_engine_unref(&eng);
}
END_TEST

/* A rule's stricter limits (scan_*_ex): the same engine, per scan. */
START_TEST(test_rule_overrides)
{
	struct scan_limits lim;
	struct scan_engine *eng = NULL;
	char err[256];

	/* the engine's limits: libclamav's; per-scan limits wanted */
	memset(&lim, 0, sizeof(lim));
	lim.per_scan_limits = 1;
	ck_assert_int_eq(
	    scan_engine_load(MAILMOAT_TESTSIGS_DIR, &lim, &eng, err, sizeof(err)), 0);
	struct scan_verdict v;
	struct scan_overrides ov;
	int fd = make_msg(64 * 1024, NULL, 0, NULL);

	/* no overrides: clean */
	scan_fd_ex(eng, fd, NULL, &v);
	ck_assert_msg(v.result == SCAN_CLEAN, "%s %s", v.signature, v.error);
	/* a 1 KiB file size limit: the 48 KiB part is over it */
	memset(&ov, 0, sizeof(ov));
	ov.max_filesize = 1024;
	scan_fd_ex(eng, fd, &ov, &v);
	ck_assert_msg(v.result == SCAN_ERROR, "%s %s", v.signature, v.error);
	ck_assert_ptr_nonnull(strstr(v.error, "MaxFileSize (rule)"));
	/* the same from memory, with a scan-size limit */
	{
		char buf[128 * 1024];
		ssize_t n = pread(fd, buf, sizeof(buf), 0);

		ck_assert_int_gt(n, 0);
		memset(&ov, 0, sizeof(ov));
		ov.max_scansize = 4096;
		scan_buffer_ex(eng, buf, (size_t)n, &ov, &v);
		ck_assert_msg(v.result == SCAN_ERROR, "%s %s", v.signature, v.error);
		ck_assert_ptr_nonnull(strstr(v.error, "MaxScanSize (rule)"));
		/* generous limits change nothing */
		memset(&ov, 0, sizeof(ov));
		ov.max_filesize = 1u << 30;
		ov.max_files = 1000;
		ov.max_scantime_ms = 60000;
		scan_buffer_ex(eng, buf, (size_t)n, &ov, &v);
		ck_assert_msg(v.result == SCAN_CLEAN, "%s %s", v.signature, v.error);
	}
	/* a message skipped by a limit never reads as clean, virus or not */
	{
		int fe = make_msg(64 * 1024, eicar, strlen(eicar), "eicar.com");

		memset(&ov, 0, sizeof(ov));
		ov.max_filesize = 1024;
		scan_fd_ex(eng, fe, &ov, &v);
		ck_assert_msg(v.result == SCAN_ERROR, "%s %s", v.signature, v.error);
		scan_fd_ex(eng, fe, NULL, &v);
		ck_assert_msg(v.result == SCAN_INFECTED, "%s %s", v.signature, v.error);
		close(fe);
	}
	close(fd);
	scan_engine_unref(&eng);
}
END_TEST

/* ---- encrypted archives ---- */

/*
 * Builds a zip in a temporary directory with zip(1): entries "name:content"
 * (NULL-terminated), those in `encrypted` with password "secret". Returns
 * the zip's bytes (g_free) and its size, or NULL when zip is not installed.
 */
static char *make_zip(const char *const *entries, const char *const *encrypted,
                      size_t *len_r)
{
	char dir[] = "/tmp/mm-scan-zip-XXXXXX", cmd[1024], *data = NULL;
	gsize len = 0;

	if (system("command -v zip >/dev/null 2>&1") != 0) {
		fprintf(stderr, "SKIP: zip(1) is not installed\n");
		return NULL;
	}
	ck_assert_ptr_nonnull(mkdtemp(dir));
	for (int pass = 0; pass < 2; pass++) {
		const char *const *list = pass == 0 ? encrypted : entries;

		for (size_t i = 0; list != NULL && list[i] != NULL; i++) {
			const char *colon = strchr(list[i], ':');
			char path[512];
			FILE *f;

			ck_assert_ptr_nonnull(colon);
			snprintf(path, sizeof(path), "%s/%.*s", dir,
			         (int)(colon - list[i]), list[i]);
			f = fopen(path, "wb");
			ck_assert_ptr_nonnull(f);
			fputs(colon + 1, f);
			fclose(f);
			snprintf(cmd, sizeof(cmd), "cd %s && zip -q %s a.zip %.*s", dir,
			         pass == 0 ? "-P secret" : "", (int)(colon - list[i]),
			         list[i]);
			ck_assert_int_eq(system(cmd), 0);
		}
	}
	snprintf(cmd, sizeof(cmd), "%s/a.zip", dir);
	ck_assert(g_file_get_contents(cmd, &data, &len, NULL));
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
	*len_r = len;
	return data;
}

/* A message of base64 attachments {name, data, len}, in order, in a file. */
struct att {
	const char *name;
	const void *data;
	size_t len;
};

static int make_msg_atts(size_t filler, const struct att *a, size_t n)
{
	FILE *f = tmpfile();
	int fd;

	ck_assert_ptr_nonnull(f);
	fprintf(f,
	        "From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n"
	        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
	        "--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n");
	for (size_t k = 0; k < n; k++) {
		char *enc = b64(a[k].data, a[k].len);
		size_t el = strlen(enc);

		fprintf(f,
		        "--BB\r\nContent-Type: application/octet-stream; name=%s\r\n"
		        "Content-Transfer-Encoding: base64\r\n\r\n",
		        a[k].name);
		for (size_t i = 0; i < el; i += 76)
			fprintf(f, "%.*s\r\n", (int)(el - i < 76 ? el - i : 76), enc + i);
		g_free(enc);
	}
	if (filler > 0) {
		fprintf(
		    f, "--BB\r\nContent-Type: application/octet-stream; name=fill.bin\r\n"
		       "Content-Transfer-Encoding: base64\r\n\r\n");
		for (size_t i = 0; i < filler; i += 76)
			fprintf(f, "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtb"
			           "m9wcXJzdHV2d3h5ejAx\r\n");
	}
	fprintf(f, "--BB--\r\n");
	fflush(f);
	fd = dup(fileno(f));
	fclose(f);
	lseek(fd, 0, SEEK_SET);
	return fd;
}

/* Scans the message whole (libclamav's mail parser) and split: same verdict. */
static void check_atts(const struct att *a, size_t n, enum scan_result want,
                       const char *sig_prefix)
{
	for (int split = 0; split < 2; split++) {
		struct scan_engine *eng = load(split ? 1024 : 0, 0);
		int fd = make_msg_atts(split ? 2u << 20 : 0, a, n);
		struct scan_verdict v;

		scan_fd(eng, fd, &v);
		ck_assert_msg(v.result == want, "split=%d: got %s (%s|%s)", split,
		              scan_result_name(v.result), v.signature, v.error);
		ck_assert_msg(strncmp(v.signature, sig_prefix, strlen(sig_prefix)) == 0,
		              "split=%d: %s", split, v.signature);
		if (want == SCAN_ENCRYPTED)
			ck_assert_msg(strstr(v.error, "encrypted archive") != NULL, "%s",
			              v.error);
		close(fd);
		scan_engine_unref(&eng);
	}
}

START_TEST(test_encrypted_zip)
{
	static const char *const harmless[] = {"notes.txt:just a harmless note\n", NULL};
	static const char *const eicar_in[] = {NULL, NULL};
	char eicar_entry[128];
	const char *enc_eicar[] = {eicar_entry, NULL};
	struct scan_engine *eng;
	struct scan_verdict v;
	size_t zl, el;
	char *zip = make_zip(NULL, harmless, &zl), *ezip;

	if (zip == NULL)
		return;
	ck_assert_str_eq(scan_result_name(SCAN_ENCRYPTED), "encrypted_archive");
	/* the zip alone, in memory */
	eng = load(0, 0);
	scan_buffer(eng, zip, zl, &v);
	ck_assert_msg(v.result == SCAN_ENCRYPTED, "%s %s", scan_result_name(v.result),
	              v.signature);
	ck_assert_str_eq(v.signature, "Heuristics.Encrypted.Zip");
	scan_engine_unref(&eng);
	/* attached to a message, whole and split */
	check_atts(&(struct att){"notes.zip", zip, zl}, 1, SCAN_ENCRYPTED,
	           "Heuristics.Encrypted.Zip");
	/* EICAR inside an encrypted zip: libclamav cannot see it */
	snprintf(eicar_entry, sizeof(eicar_entry), "eicar.com:%s", eicar);
	ezip = make_zip(eicar_in, enc_eicar, &el);
	check_atts(&(struct att){"e.zip", ezip, el}, 1, SCAN_ENCRYPTED,
	           "Heuristics.Encrypted.Zip");
	g_free(ezip);
	g_free(zip);
}
END_TEST

START_TEST(test_encrypted_zip_and_virus)
{
	static const char *const harmless[] = {"notes.txt:just a harmless note\n", NULL};
	char eicar_entry[128];
	const char *clear[] = {eicar_entry, NULL};
	size_t zl, ml;
	char *zip = make_zip(NULL, harmless, &zl), *mixed;

	if (zip == NULL)
		return;
	/* EICAR in the clear and an encrypted zip, both orders: the virus wins */
	{
		struct att a[] = {{"notes.zip", zip, zl},
		                  {"eicar.com", eicar, strlen(eicar)}};
		struct att b[] = {{"eicar.com", eicar, strlen(eicar)},
		                  {"notes.zip", zip, zl}};

		check_atts(a, 2, SCAN_INFECTED, "Mailmoat.Test.EICAR");
		check_atts(b, 2, SCAN_INFECTED, "Mailmoat.Test.EICAR");
	}
	/* one zip: an encrypted entry first, EICAR in the clear after it */
	snprintf(eicar_entry, sizeof(eicar_entry), "eicar.com:%s", eicar);
	mixed = make_zip(clear, harmless, &ml);
	check_atts(&(struct att){"mixed.zip", mixed, ml}, 1, SCAN_INFECTED,
	           "Mailmoat.Test.EICAR");
	g_free(mixed);
	g_free(zip);
}
END_TEST

START_TEST(test_encrypted_zip_and_limit)
{
	/* an exceeded limit outranks an encrypted archive: something went unscanned */
	static const char *const harmless[] = {"notes.txt:just a harmless note\n", NULL};
	struct scan_engine *eng = load(0, 4096);
	size_t zl;
	char *zip = make_zip(NULL, harmless, &zl);
	struct att a[2];
	char *big;
	struct scan_verdict v;
	int fd;

	if (zip == NULL) {
		scan_engine_unref(&eng);
		return;
	}
	big = g_strnfill(64 * 1024, 'A');
	a[0] = (struct att){"notes.zip", zip, zl};
	a[1] = (struct att){"big.txt", big, 64 * 1024};
	fd = make_msg_atts(0, a, 2);
	scan_fd(eng, fd, &v);
	ck_assert_msg(v.result == SCAN_ERROR, "%s %s %s", scan_result_name(v.result),
	              v.signature, v.error);
	close(fd);
	g_free(big);
	g_free(zip);
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
	tcase_add_test(tc, test_split_many_parts_bounded);
	tcase_add_test(tc, test_rule_overrides);
	tcase_add_test(tc, test_load_empty_dir_fails);
	tcase_add_test(tc, test_encrypted_zip);
	tcase_add_test(tc, test_encrypted_zip_and_virus);
	tcase_add_test(tc, test_encrypted_zip_and_limit);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
