/*
 * test_attach.c - attachment rules on real messages: names from
 * Content-Disposition and Content-Type (plain, RFC 2231 single and
 * continued, RFC 2047), normalisation (case, trailing dots and spaces,
 * bidi and zero-width characters), double extensions, declared types,
 * nested and encoded message/rfc822, malformed MIME, limits. Every message
 * is fed whole, one byte at a time, and split at every point, and must give
 * the same answer. Last, 50 MiB messages from a file, with the peak RSS.
 */
#include <check.h>
#include <fcntl.h>
#include <glib.h>
#include <gmime/gmime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scanners/attach.h"

static struct attach_rules rules;

/* ---- building messages ---- */

#define HDR                                                                              \
	"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n"                   \
	"MIME-Version: 1.0\r\n"

/* A base64 body of a few bytes of "MZ" executable, wrapped at 76. */
static const char b64_body[] =
    "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n";

/* multipart/mixed with a text part and one attachment with these headers. */
static char *mixed_with(const char *att_headers)
{
	return g_strdup_printf(HDR
	                       "Content-Type: multipart/mixed; boundary=\"=_b1\"\r\n"
	                       "\r\npreamble\r\n--=_b1\r\n"
	                       "Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
	                       "--=_b1\r\n%s"
	                       "Content-Transfer-Encoding: base64\r\n\r\n%s"
	                       "--=_b1--\r\nepilogue\r\n",
	                       att_headers, b64_body);
}

/* ---- running one message every way ---- */

static enum attach_res feed_split(const char *m, size_t len, size_t step, size_t at,
                                  struct attach_finding *f)
{
	struct attach_stream *s = attach_stream_new(&rules);
	enum attach_res r = ATTACH_PASS;

	ck_assert_ptr_nonnull(s);
	if (step > 0) {
		for (size_t i = 0; i < len && r == ATTACH_PASS; i += step)
			r = attach_stream_feed(s, m + i, len - i < step ? len - i : step);
	} else {
		r = attach_stream_feed(s, m, at);
		if (r == ATTACH_PASS)
			r = attach_stream_feed(s, m + at, len - at);
	}
	r = attach_stream_finish(s, f);
	attach_stream_free(&s);
	ck_assert_ptr_null(s);
	return r;
}

static void same(const struct attach_finding *a, const struct attach_finding *b,
                 const char *how, size_t at)
{
	ck_assert_msg(
	    strcmp(a->part, b->part) == 0 && strcmp(a->filename, b->filename) == 0 &&
	        strcmp(a->mime_type, b->mime_type) == 0 &&
	        strcmp(a->reason, b->reason) == 0,
	    "%s %zu: [%s|%s|%s|%s] vs [%s|%s|%s|%s]", how, at, a->part, a->filename,
	    a->mime_type, a->reason, b->part, b->filename, b->mime_type, b->reason);
}

/*
 * Checks msg against the current rules: whole, byte by byte, split at
 * every point, and from a file. Each must give want; reason must contain
 * reason_part; part and filename must match when not NULL.
 */
static void expect(const char *msg, enum attach_res want, const char *part,
                   const char *filename, const char *reason_part)
{
	size_t len = strlen(msg);
	struct attach_finding f, g;
	enum attach_res r;
	FILE *tf;

	r = attach_check_buffer(msg, len, &rules, &f);
	ck_assert_msg(r == want, "got %d (%s) want %d\n%s", r, f.reason, want, msg);
	if (part != NULL)
		ck_assert_str_eq(f.part, part);
	if (filename != NULL)
		ck_assert_str_eq(f.filename, filename);
	if (reason_part != NULL)
		ck_assert_msg(strstr(f.reason, reason_part) != NULL,
		              "reason \"%s\" lacks \"%s\"", f.reason, reason_part);
	if (want == ATTACH_PASS)
		ck_assert_str_eq(f.reason, "");

	ck_assert_int_eq(feed_split(msg, len, 1, 0, &g), want);
	same(&f, &g, "bytewise", 0);
	for (size_t at = 0; at <= len; at++) {
		ck_assert_int_eq(feed_split(msg, len, 0, at, &g), want);
		same(&f, &g, "split", at);
	}
	tf = tmpfile();
	ck_assert_ptr_nonnull(tf);
	ck_assert_uint_eq(fwrite(msg, 1, len, tf), len);
	fflush(tf);
	ck_assert_int_eq(attach_check_fd(fileno(tf), &rules, &g), want);
	same(&f, &g, "fd", 0);
	fclose(tf);
}

static void expect_att(const char *att_headers, enum attach_res want,
                       const char *filename, const char *reason_part)
{
	char *m = mixed_with(att_headers);

	expect(m, want, want == ATTACH_BLOCKED ? "2" : NULL, filename, reason_part);
	g_free(m);
}

static void setup(void)
{
	attach_rules_default(&rules);
}

/* ---- names ---- */

/* max_parts counts body parts across nesting, encoded nested messages too. */
START_TEST(test_max_parts)
{
	/* 2 parts, the second a base64 message/rfc822 holding 3 more */
	char *inner =
	    g_strdup_printf(HDR "Content-Type: multipart/mixed; boundary=in\r\n\r\n"
	                        "--in\r\n\r\na\r\n--in\r\n\r\nb\r\n--in\r\n\r\nc\r\n"
	                        "--in--\r\n");
	char *enc = g_base64_encode((const unsigned char *)inner, strlen(inner));
	char *m =
	    g_strdup_printf(HDR "Content-Type: multipart/mixed; boundary=out\r\n\r\n"
	                        "--out\r\n\r\nhello\r\n--out\r\n"
	                        "Content-Type: message/rfc822\r\n"
	                        "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n"
	                        "--out--\r\n",
	                    enc);
	struct attach_rules r = {0};
	struct attach_finding f;

	ck_assert_int_eq(attach_check_buffer(m, strlen(m), &r, &f), ATTACH_PASS);
	ck_assert_uint_eq(f.parts, 5);
	r.max_parts = 5;
	ck_assert_int_eq(attach_check_buffer(m, strlen(m), &r, &f), ATTACH_PASS);
	r.max_parts = 4;
	ck_assert_int_eq(attach_check_buffer(m, strlen(m), &r, &f), ATTACH_ERROR);
	ck_assert_str_eq(f.reason, "more than 4 MIME parts");
	ck_assert_uint_eq(f.parts, 5);
	r.max_parts = 1;
	ck_assert_int_eq(attach_check_buffer(m, strlen(m), &r, &f), ATTACH_ERROR);
	ck_assert_uint_eq(f.parts, 2);
	g_free(m);
	g_free(enc);
	g_free(inner);
}
END_TEST

START_TEST(test_plain_filename)
{
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename=\"setup.exe\"\r\n",
	           ATTACH_BLOCKED, "setup.exe", "extension .exe");
}
END_TEST

START_TEST(test_rfc2231_single)
{
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           " filename*=UTF-8''invoice%2Epdf%2Eexe\r\n",
	           ATTACH_BLOCKED, "invoice.pdf.exe", "double extension invoice.pdf.exe");
}
END_TEST

START_TEST(test_rfc2231_continued)
{
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           "\tfilename*0*=UTF-8''%E8%AB%8B%E6%B1%82%E6%9B%B8;\r\n"
	           "\tfilename*1=\"_2024\";\r\n"
	           "\tfilename*2=\".scr\"\r\n",
	           ATTACH_BLOCKED, "請求書_2024.scr", "extension .scr");
}
END_TEST

START_TEST(test_rfc2047_name)
{
	/* Content-Type name only, as Outlook and many Japanese mailers send */
	expect_att("Content-Type: application/octet-stream;\r\n"
	           " name=\"=?UTF-8?B?6KuL5rGC5pu4LmpzZQ==?=\"\r\n",
	           ATTACH_BLOCKED, "請求書.jse", "extension .jse");
	expect_att("Content-Type: application/octet-stream;\r\n"
	           " name=\"=?ISO-2022-JP?B?GyRCQEE1YT1xGyhC?=.vbs\"\r\n",
	           ATTACH_BLOCKED, "請求書.vbs", "extension .vbs");
}
END_TEST

START_TEST(test_upper_case)
{
	expect_att("Content-Type: application/octet-stream; name=REPORT.EXE\r\n",
	           ATTACH_BLOCKED, "report.exe", "extension .exe");
}
END_TEST

START_TEST(test_trailing_dots_spaces)
{
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename=\"a.exe.\"\r\n",
	           ATTACH_BLOCKED, "a.exe", "extension .exe");
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename=\"a.bat . . \"\r\n",
	           ATTACH_BLOCKED, "a.bat", "extension .bat");
	/* %00 in RFC 2231 ends the name where Win32 ends it */
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename*=''a.cmd%00.pdf\r\n",
	           ATTACH_BLOCKED, "a.cmd", "extension .cmd");
	expect_att("Content-Type: application/octet-stream; name=\"a.exe::$DATA\"\r\n",
	           ATTACH_BLOCKED, "a.exe", "extension .exe");
}
END_TEST

START_TEST(test_rlo)
{
	/* shown as "invoiceexe.pdf" */
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           " filename*=UTF-8''invoice%E2%80%AEfdp.exe\r\n",
	           ATTACH_BLOCKED, "invoicefdp.exe", "hidden extension (RTL override)");
	/* an override alone, whatever the extension */
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           " filename*=UTF-8''photo%E2%80%AEgpj.txt\r\n",
	           ATTACH_BLOCKED, "photogpj.txt", "hidden extension (RTL override)");
	rules.bidi_controls = 0;
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           " filename*=UTF-8''photo%E2%80%AEgpj.txt\r\n",
	           ATTACH_PASS, NULL, NULL);
	/* zero-width characters hide nothing either */
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment;\r\n"
	           " filename*=UTF-8''a.e%E2%80%8Bx%EF%BB%BFe\r\n",
	           ATTACH_BLOCKED, "a.exe", "extension .exe");
}
END_TEST

START_TEST(test_double_extension)
{
	expect_att("Content-Type: application/octet-stream; name=\"Invoice.PDF.exe\"\r\n",
	           ATTACH_BLOCKED, "invoice.pdf.exe", "double extension invoice.pdf.exe");
	expect_att("Content-Type: application/octet-stream;\r\n"
	           " name=\"file.pdf                 .exe\"\r\n",
	           ATTACH_BLOCKED, NULL, "double extension file.pdf");
	rules.double_extensions = 0;
	expect_att("Content-Type: application/octet-stream; name=\"Invoice.PDF.exe\"\r\n",
	           ATTACH_BLOCKED, "invoice.pdf.exe", "extension .exe");
}
END_TEST

START_TEST(test_double_extension_beyond_list)
{
	/* "js" allowed by the administrator: a decoy in front of it still blocks */
	static const char *const only_exe[] = {".EXE"};

	rules.extensions = only_exe;
	rules.n_extensions = 1;
	expect_att("Content-Type: application/octet-stream; name=\"report.pdf.js\"\r\n",
	           ATTACH_BLOCKED, "report.pdf.js", "double extension report.pdf.js");
	expect_att("Content-Type: application/octet-stream; name=\"tool.js\"\r\n",
	           ATTACH_PASS, NULL, NULL);
	expect_att("Content-Type: application/octet-stream; name=\"setup.exe\"\r\n",
	           ATTACH_BLOCKED, "setup.exe", "extension .exe");
	rules.double_extensions = 0;
	expect_att("Content-Type: application/octet-stream; name=\"report.pdf.js\"\r\n",
	           ATTACH_PASS, NULL, NULL);
}
END_TEST

START_TEST(test_every_occurrence)
{
	/* a second filename parameter, a second header: clients differ on which wins */
	expect_att("Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename=\"safe.pdf\"; "
	           "filename=\"evil.exe\"\r\n",
	           ATTACH_BLOCKED, "evil.exe", NULL);
	expect_att("Content-Type: application/pdf; name=\"safe.pdf\"\r\n"
	           "Content-Disposition: attachment; filename=\"safe.pdf\"\r\n"
	           "Content-Disposition: attachment; filename=\"evil.hta\"\r\n",
	           ATTACH_BLOCKED, "evil.hta", NULL);
	expect_att("Content-Type: application/pdf; name=\"safe.pdf\"\r\n"
	           "Content-Type: application/octet-stream; name=\"evil.lnk\"\r\n",
	           ATTACH_BLOCKED, "evil.lnk", NULL);
	/* a NUL inside the header does not hide what follows it */
	{
		char *m =
		    mixed_with("Content-Type: application/pdf\1; name=\"x.ps1\"\r\n");
		size_t len = strlen(m);
		struct attach_finding f;

		*strchr(m, '\1') = '\0';
		ck_assert_int_eq(attach_check_buffer(m, len, &rules, &f), ATTACH_BLOCKED);
		ck_assert_str_eq(f.filename, "x.ps1");
		g_free(m);
	}
}
END_TEST

START_TEST(test_not_blocked)
{
	expect_att("Content-Type: application/pdf; name=\"invoice.pdf\"\r\n"
	           "Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n",
	           ATTACH_PASS, NULL, NULL);
	expect_att("Content-Type: application/zip; name=\"photos.zip\"\r\n", ATTACH_PASS,
	           NULL, NULL);
	/* ".exe" in the middle is not the extension */
	expect_att("Content-Type: application/pdf; name=\"setup.exe.pdf\"\r\n",
	           ATTACH_PASS, NULL, NULL);
	expect_att("Content-Type: application/octet-stream; name=\"exe\"\r\n",
	           ATTACH_PASS, NULL, NULL);
}
END_TEST

START_TEST(test_alternative_text_only)
{
	expect(HDR "Content-Type: multipart/alternative; boundary=alt\r\n\r\n"
	           "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
	           "see setup.exe attached? no.\r\n"
	           "Content-Type: application/x-msdownload; name=fake.exe\r\n"
	           "--alt\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--alt--\r\n",
	       ATTACH_PASS, NULL, NULL, NULL);
}
END_TEST

START_TEST(test_type_without_name)
{
	expect_att("Content-Type: application/x-msdownload\r\n", ATTACH_BLOCKED, "",
	           "MIME type application/x-msdownload");
	expect_att("Content-Type: Application/X-MSDownload; charset=binary\r\n",
	           ATTACH_BLOCKED, "", "MIME type application/x-msdownload");
	{
		char *m = mixed_with("Content-Type: application/x-msdownload\r\n");
		struct attach_finding f;

		ck_assert_int_eq(attach_check_buffer(m, strlen(m), &rules, &f),
		                 ATTACH_BLOCKED);
		ck_assert_str_eq(f.mime_type, "application/x-msdownload");
		g_free(m);
	}
	/* a name wins over the type in the report */
	expect_att("Content-Type: application/x-msdownload; name=a.exe\r\n",
	           ATTACH_BLOCKED, "a.exe", "extension .exe");
}
END_TEST

START_TEST(test_type_wildcard)
{
	static const char *const types[] = {"application/x-ms*"};

	rules.mime_types = types;
	rules.n_mime_types = 1;
	expect_att("Content-Type: application/x-msdos-program\r\n", ATTACH_BLOCKED, "",
	           "MIME type application/x-msdos-program");
	expect_att("Content-Type: application/x-mswrite\r\n", ATTACH_BLOCKED, "", NULL);
	expect_att("Content-Type: application/x-dosexec\r\n", ATTACH_PASS, NULL, NULL);
}
END_TEST

START_TEST(test_single_part_message)
{
	expect(HDR "Content-Type: application/octet-stream\r\n"
	           "Content-Disposition: attachment; filename=run.vbs\r\n"
	           "Content-Transfer-Encoding: base64\r\n\r\n"
	           "QUFB\r\n",
	       ATTACH_BLOCKED, "1", "run.vbs", "extension .vbs");
	expect(HDR "Content-Type: text/plain\r\n\r\nno attachments\r\n", ATTACH_PASS,
	       NULL, NULL, NULL);
	expect("", ATTACH_PASS, NULL, NULL, NULL);
	expect("Subject: headers only, no newline at the end", ATTACH_PASS, NULL, NULL,
	       NULL);
	expect("Content-Type: application/octet-stream; name=x.exe", ATTACH_BLOCKED, "1",
	       "x.exe", NULL);
}
END_TEST

/* A message/rfc822 part holding a message with an .exe, as its 2nd part. */
#define INNER                                                                            \
	"From: c@example.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"                  \
	"Content-Type: multipart/mixed; boundary=\"in\"\r\n\r\n"                         \
	"--in\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"                         \
	"--in\r\nContent-Type: application/octet-stream; name=\"inner.exe\"\r\n"         \
	"Content-Transfer-Encoding: base64\r\n\r\nTVqQ\r\n--in--\r\n"

START_TEST(test_nested_message)
{
	expect(HDR "Content-Type: multipart/mixed; boundary=out\r\n\r\n"
	           "--out\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
	           "--out\r\nContent-Type: message/rfc822\r\n"
	           "Content-Disposition: attachment; filename=\"fwd.eml\"\r\n\r\n" INNER
	           "\r\n--out--\r\n",
	       ATTACH_BLOCKED, "2.2", "inner.exe", "extension .exe");
	/* a single-part message inside: its body is part 2.1 */
	expect(HDR "Content-Type: multipart/mixed; boundary=out\r\n\r\n"
	           "--out\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
	           "--out\r\nContent-Type: message/rfc822\r\n\r\n"
	           "Subject: x\r\nContent-Type: application/x-msdownload\r\n\r\nMZ\r\n"
	           "--out--\r\n",
	       ATTACH_BLOCKED, "2.1", "", "MIME type");
	/* multipart/digest: parts are messages unless they say otherwise */
	expect(HDR "Content-Type: multipart/digest; boundary=d\r\n\r\n"
	           "--d\r\n\r\nSubject: one\r\n\r\nfine\r\n"
	           "--d\r\n\r\n" INNER "--d--\r\n",
	       ATTACH_BLOCKED, "2.2", "inner.exe", NULL);
}
END_TEST

START_TEST(test_nested_message_base64)
{
	/* RFC 2046 forbids encoding message/rfc822, clients decode it anyway */
	gchar *enc = g_base64_encode((const guchar *)INNER, strlen(INNER));
	GString *m =
	    g_string_new(HDR "Content-Type: multipart/mixed; boundary=out\r\n\r\n"
	                     "--out\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
	                     "--out\r\nContent-Type: message/rfc822\r\n"
	                     "Content-Transfer-Encoding: base64\r\n\r\n");

	for (size_t i = 0; i < strlen(enc); i += 60)
		g_string_append_printf(m, "%.60s\r\n", enc + i);
	g_string_append(m, "--out--\r\n");
	expect(m->str, ATTACH_BLOCKED, "2.2", "inner.exe", "extension .exe");
	g_string_free(m, TRUE);
	g_free(enc);
}
END_TEST

START_TEST(test_malformed)
{
	/* multipart without a boundary: one opaque part, nothing blocked */
	expect(HDR "Content-Type: multipart/mixed\r\n\r\n"
	           "--foo\r\nContent-Type: application/x-msdownload; name=a.exe\r\n\r\n"
	           "MZ\r\n--foo--\r\n",
	       ATTACH_PASS, NULL, NULL, NULL);
	/* missing close delimiter, truncated message */
	expect(HDR "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	           "--b\r\nContent-Type: text/plain\r\n\r\ntext\r\n"
	           "--b\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\nJVBE",
	       ATTACH_PASS, NULL, NULL, NULL);
	expect(HDR "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	           "--b\r\nContent-Type: text/plain\r\n\r\ntext\r\n"
	           "--b\r\nContent-Type: application/octet-stream; name=a.scr",
	       ATTACH_BLOCKED, "2", "a.scr", NULL);
	/* a part without the blank line: the boundary ends its headers */
	expect(HDR "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	           "--b\r\nContent-Type: application/x-msdownload\r\n--b--\r\n",
	       ATTACH_BLOCKED, "1", "", "MIME type");
	/* LF only, boundary with transport padding, a near-miss boundary */
	expect(HDR "Content-Type: multipart/mixed; boundary=\"a:b c\"\n\n"
	           "--a:b cd\nContent-Type: application/x-msdownload\n\n"
	           "--a:b c \t\nContent-Type: text/plain\n\nx\n"
	           "--a:b c\nContent-Disposition: attachment; filename=x.pif\n\n"
	           "--a:b c--\n",
	       ATTACH_BLOCKED, "2", "x.pif", NULL);
	/* a boundary ending in a space (RFC 2046 forbids it; GMime splits on it) */
	expect(HDR "Content-Type: multipart/mixed; boundary=\"sp \"\r\n\r\n"
	           "--sp\r\nContent-Type: application/x-msdownload\r\n\r\n"
	           "--sp \r\nContent-Type: text/plain\r\n\r\nx\r\n"
	           "--sp \r\nContent-Type: application/octet-stream; name=y.jar\r\n\r\n"
	           "--sp --\r\n",
	       ATTACH_BLOCKED, "2", "y.jar", NULL);
	/* garbage */
	expect("\r\n\r\n--\r\n--\r\n:::\r\n\t\r\n", ATTACH_PASS, NULL, NULL, NULL);
	expect("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n--x--\r\n"
	       "--x\r\n",
	       ATTACH_PASS, NULL, NULL, NULL);
}
END_TEST

START_TEST(test_depth_limit)
{
	GString *m = g_string_new(HDR);

	for (int i = 0; i < 20; i++)
		g_string_append_printf(
		    m,
		    "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n"
		    "--b%d\r\n",
		    i, i);
	g_string_append(m, "Content-Type: text/plain\r\n\r\ndeep\r\n");
	expect(m->str, ATTACH_ERROR, NULL, NULL, "nesting deeper than 17");
	rules.max_depth = 25;
	expect(m->str, ATTACH_PASS, NULL, NULL, NULL);
	g_string_free(m, TRUE);
}
END_TEST

START_TEST(test_header_too_long)
{
	GString *m = g_string_new(HDR "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	                              "--b\r\nContent-Disposition: attachment;");
	struct attach_finding f;

	for (int i = 0; i < 2000; i++)
		g_string_append_printf(m, "\r\n x%d=\"y\";", i);
	g_string_append(m, " filename=a.exe\r\n\r\n--b--\r\n");
	ck_assert_int_eq(attach_check_buffer(m->str, m->len, &rules, &f), ATTACH_ERROR);
	ck_assert_ptr_nonnull(strstr(f.reason, "Content-Disposition header longer"));
	g_string_free(m, TRUE);
}
END_TEST

START_TEST(test_check_name_table)
{
	static const struct {
		const char *name;
		enum attach_res want;
		const char *reason;
	} t[] = {
	    {"a.exe", ATTACH_BLOCKED, "extension .exe"},
	    {"A.ExE", ATTACH_BLOCKED, "extension .exe"},
	    {"a.exe.", ATTACH_BLOCKED, "extension .exe"},
	    {"a.exe   ", ATTACH_BLOCKED, "extension .exe"},
	    {"a.exe. . .", ATTACH_BLOCKED, "extension .exe"},
	    {".exe", ATTACH_BLOCKED, "extension .exe"},
	    {"a.settingcontent-ms", ATTACH_BLOCKED, "extension .settingcontent-ms"},
	    {"disk.ISO", ATTACH_BLOCKED, "extension .iso"},
	    {"a.pdf", ATTACH_PASS, NULL},
	    {"exe", ATTACH_PASS, NULL},
	    {"a.exe.pdf", ATTACH_PASS, NULL},
	    {"a.exex", ATTACH_PASS, NULL},
	    {"a.e xe", ATTACH_PASS, NULL},
	    {"", ATTACH_PASS, NULL},
	    {"a.docx.exe", ATTACH_BLOCKED, "double extension a.docx.exe"},
	    {"a.jpg  ..  .scr", ATTACH_BLOCKED, "double extension"},
	    {"a.zip.exe", ATTACH_BLOCKED, "double extension"},
	    {"a.tar.exe", ATTACH_BLOCKED, "extension .exe"},
	    {"a\xe2\x80\xae"
	     "cod.bat",
	     ATTACH_BLOCKED, "hidden extension (RTL override)"},
	    {"a\xe2\x81\xa7"
	     "x.txt",
	     ATTACH_BLOCKED, "hidden extension (RTL override)"},
	    {"a\xe2\x80\x8f.pdf", ATTACH_PASS, NULL}, /* RLM: a mark, not an override */
	    {"a.\xc2\xad"
	     "exe",
	     ATTACH_BLOCKED, "extension .exe"},
	    {"a.e\txe", ATTACH_BLOCKED, "extension .exe"},
	    {"\xff\xfe.exe", ATTACH_BLOCKED, "extension .exe"},
	    {"\xe2\x80", ATTACH_PASS, NULL},
	};
	struct attach_finding f;
	char *longname;

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		memset(&f, 0, sizeof(f));
		ck_assert_msg(attach_check_name(t[i].name, &rules, &f) == t[i].want,
		              "%zu %s", i, t[i].name);
		if (t[i].reason != NULL)
			ck_assert_msg(strstr(f.reason, t[i].reason) != NULL, "%zu %s: %s",
			              i, t[i].name, f.reason);
	}
	ck_assert_int_eq(attach_check_name("a.exe", &rules, NULL), ATTACH_BLOCKED);
	/* a long name keeps its end, where the extension is */
	longname = g_strnfill(5000, 'x');
	memcpy(longname + 4992, ".pdf.exe", 8);
	ck_assert_int_eq(attach_check_name(longname, &rules, &f), ATTACH_BLOCKED);
	ck_assert_uint_lt(strlen(f.filename), sizeof(f.filename));
	ck_assert_ptr_nonnull(strstr(f.filename, "...xx"));
	ck_assert_ptr_nonnull(strstr(f.filename, ".pdf.exe"));
	ck_assert_ptr_nonnull(strstr(f.reason, ".pdf.exe"));
	g_free(longname);
	/* every shipped default blocks, and every decoy is not one of them */
	for (size_t i = 0; i < attach_n_default_extensions; i++) {
		char n[64];

		snprintf(n, sizeof(n), "x.%s", attach_default_extensions[i]);
		ck_assert_int_eq(attach_check_name(n, &rules, NULL), ATTACH_BLOCKED);
	}
	for (size_t i = 0; i < attach_n_decoy_extensions; i++) {
		char n[64];

		snprintf(n, sizeof(n), "x.%s", attach_decoy_extensions[i]);
		ck_assert_int_eq(attach_check_name(n, &rules, NULL), ATTACH_PASS);
	}
}
END_TEST

/* ---- hostile input ---- */

static uint32_t rnd_state = 12345;

static uint32_t rnd(uint32_t n)
{
	rnd_state = rnd_state * 1103515245u + 12345u;
	return (rnd_state >> 8) % n;
}

/*
 * Mutations of real messages (bytes flipped, boundary and header pieces
 * inserted, spans cut or repeated): no crash (run under ASan/UBSan), and
 * whole, byte-wise and split feeding always agree.
 */
START_TEST(test_mutations)
{
	static const char *const pieces[] = {
	    "--",
	    "\r\n",
	    "\n",
	    "--=_b1",
	    "--=_b1--\r\n",
	    "Content-Type: multipart/mixed; boundary=x\r\n",
	    "Content-Type: message/rfc822\r\n\r\n",
	    "Content-Transfer-Encoding: base64\r\n",
	    "; name*0*=UTF-8''a%2E; name*1=exe",
	    "=?UTF-8?B?",
	    "\r\n ",
	    ":",
	    "\"",
	    ".exe",
	    "\xe2\x80\xae",
	    "\0"};
	char *seeds[4];

	seeds[0] = mixed_with("Content-Type: application/pdf; name=\"a.pdf\"\r\n");
	seeds[1] =
	    mixed_with("Content-Type: application/octet-stream\r\n"
	               "Content-Disposition: attachment; filename*=UTF-8''a%2Etxt\r\n");
	seeds[2] = g_strdup(HDR "Content-Type: multipart/mixed; boundary=out\r\n\r\n"
	                        "--out\r\nContent-Type: message/rfc822\r\n\r\n" INNER
	                        "\r\n--out--\r\n");
	seeds[3] = g_strdup(HDR "Content-Type: multipart/digest; boundary=d\r\n\r\n"
	                        "--d\r\n\r\nSubject: one\r\n\r\nfine\r\n--d--\r\n");
	for (int round = 0; round < 4000; round++) {
		const char *seed = seeds[round % 4];
		GString *m = g_string_new_len(seed, (gssize)strlen(seed));
		struct attach_finding f, g;
		enum attach_res r;

		for (uint32_t k = 1 + rnd(4); k > 0; k--) {
			uint32_t at = rnd((uint32_t)m->len + 1);

			switch (rnd(4)) {
			case 0:
				if (m->len > 0)
					m->str[rnd((uint32_t)m->len)] = (char)rnd(256);
				break;
			case 1: {
				const char *p =
				    pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))];

				g_string_insert_len(m, at, p,
				                    p[0] ? (gssize)strlen(p) : 1);
				break;
			}
			case 2: {
				gssize n = (gssize)rnd(64);

				g_string_erase(m, at, (gsize)n < m->len - at ? n : -1);
				break;
			}
			default: {
				uint32_t len = rnd(128);
				char *dup;

				if (at + len > m->len)
					len = (uint32_t)(m->len - at);
				dup = g_strndup(m->str + at, len);
				g_string_insert_len(m, at, dup, len);
				g_free(dup);
			}
			}
		}
		r = attach_check_buffer(m->str, m->len, &rules, &f);
		ck_assert_int_eq(feed_split(m->str, m->len, 1, 0, &g), r);
		same(&f, &g, "mutation bytewise", (size_t)round);
		ck_assert_int_eq(
		    feed_split(m->str, m->len, 0, rnd((uint32_t)m->len + 1), &g), r);
		same(&f, &g, "mutation split", (size_t)round);
		g_string_free(m, TRUE);
	}
	for (int i = 0; i < 4; i++)
		g_free(seeds[i]);
}
END_TEST

/* ---- size ---- */

static long vm_hwm_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmHWM: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

static void reset_hwm(void)
{
	FILE *f = fopen("/proc/self/clear_refs", "w");

	if (f != NULL) {
		fputs("5", f); /* resets the peak RSS (proc(5)) */
		fclose(f);
	}
}

/*
 * Writes a message of about `size` bytes to a temporary file: many_parts
 * small attachments, or one large base64 attachment, then last_name as the
 * last part (NULL: none).
 */
static int big_message(size_t size, int many_parts, const char *last_name)
{
	FILE *f = tmpfile();
	static const char line[] = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtb"
	                           "m9wcXJzdHV2d3h5ejAx\r\n";
	static const char part[] = "--B\r\nContent-Type: application/pdf; name=a.pdf\r\n"
	                           "Content-Transfer-Encoding: base64\r\n\r\nJVBE\r\n";
	size_t n = 0;
	int fd;

	ck_assert_ptr_nonnull(f);
	fprintf(f, HDR "Content-Type: multipart/mixed; boundary=B\r\n\r\n"
	               "--B\r\nContent-Type: text/plain\r\n\r\nbig\r\n");
	if (!many_parts)
		fprintf(f,
		        "--B\r\nContent-Type: application/octet-stream; name=fill.bin\r\n"
		        "Content-Transfer-Encoding: base64\r\n\r\n");
	while (n < size) {
		n += many_parts ? sizeof(part) - 1 : sizeof(line) - 1;
		fputs(many_parts ? part : line, f);
	}
	if (last_name != NULL)
		fprintf(f,
		        "--B\r\nContent-Type: application/octet-stream; name=\"%s\"\r\n"
		        "Content-Transfer-Encoding: base64\r\n\r\nTVqQ\r\n",
		        last_name);
	fprintf(f, "--B--\r\n");
	fflush(f);
	fd = dup(fileno(f));
	fclose(f);
	return fd;
}

#if defined(__SANITIZE_ADDRESS__)
static const int under_asan = 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
static const int under_asan = 1;
#else
static const int under_asan = 0;
#endif
#else
static const int under_asan = 0;
#endif

static void check_big(int many_parts, const char *last, enum attach_res want)
{
	int fd = big_message(50u << 20, many_parts, last);
	struct attach_finding f;
	struct timespec t0, t1;
	long base, peak;
	enum attach_res r;

	reset_hwm();
	base = vm_hwm_kib();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = attach_check_fd(fd, &rules, &f);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	peak = vm_hwm_kib();
	printf("attach 50 MiB %s%s: %s in %.0f ms, VmHWM %ld KiB (before the check %ld "
	       "KiB, +%ld KiB)\n",
	       many_parts ? "of 1-line parts" : "one attachment",
	       last != NULL ? " + .exe last" : "", f.reason[0] ? f.reason : "pass",
	       (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
	           (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
	       peak, base, peak - base);
	ck_assert_int_eq(r, want);
	if (want == ATTACH_BLOCKED)
		ck_assert_str_eq(f.filename, "last.exe");
	/*
	 * Bounded: the message is 50 MiB, the check must not hold it. Not under
	 * AddressSanitizer, whose quarantine keeps up to 256 MiB of freed memory.
	 */
	if (!under_asan)
		ck_assert_int_lt(peak - base, 8 * 1024);
	close(fd);
}

START_TEST(test_50mib_one_attachment)
{
	check_big(0, "last.exe", ATTACH_BLOCKED);
	check_big(0, NULL, ATTACH_PASS);
}
END_TEST

START_TEST(test_50mib_many_parts)
{
	check_big(1, "last.exe", ATTACH_BLOCKED);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("attach");
	TCase *tc = tcase_create("rules");
	TCase *big = tcase_create("big");
	SRunner *sr;
	int failed;

	g_mime_init();
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_max_parts);
	tcase_add_test(tc, test_plain_filename);
	tcase_add_test(tc, test_rfc2231_single);
	tcase_add_test(tc, test_rfc2231_continued);
	tcase_add_test(tc, test_rfc2047_name);
	tcase_add_test(tc, test_upper_case);
	tcase_add_test(tc, test_trailing_dots_spaces);
	tcase_add_test(tc, test_rlo);
	tcase_add_test(tc, test_double_extension);
	tcase_add_test(tc, test_double_extension_beyond_list);
	tcase_add_test(tc, test_every_occurrence);
	tcase_add_test(tc, test_not_blocked);
	tcase_add_test(tc, test_alternative_text_only);
	tcase_add_test(tc, test_type_without_name);
	tcase_add_test(tc, test_type_wildcard);
	tcase_add_test(tc, test_single_part_message);
	tcase_add_test(tc, test_nested_message);
	tcase_add_test(tc, test_nested_message_base64);
	tcase_add_test(tc, test_malformed);
	tcase_add_test(tc, test_depth_limit);
	tcase_add_test(tc, test_header_too_long);
	tcase_add_test(tc, test_check_name_table);
	tcase_add_test(tc, test_mutations);
	suite_add_tcase(s, tc);
	tcase_add_checked_fixture(big, setup, NULL);
	tcase_set_timeout(big, 300);
	tcase_add_test(big, test_50mib_one_attachment);
	tcase_add_test(big, test_50mib_many_parts);
	suite_add_tcase(s, big);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
