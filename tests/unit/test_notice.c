/*
 * test_notice.c - Check suite for policy/notice.c.
 *
 * Reads headers from sample originals (folded, RFC 2047 in ISO-2022-JP and
 * UTF-8, undeclared ISO-2022-JP and Shift_JIS, missing, malformed), builds
 * notices, and parses every notice back with GMime to compare: the carried
 * headers equal the original's, the subject and body decode to what they
 * should, every line ends in CRLF and fits, and padding hits the requested
 * size exactly without changing the decoded body.
 */
#include "policy/notice.h"
#include "proxy/spool.h"

#include <check.h>
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAMPLE_FOLDED                                                                    \
	"Return-Path: <taro@example.jp>\r\n"                                             \
	"Received: from mx.example.jp by mail.example.jp;\r\n"                           \
	"\tSun, 29 Nov 2026 06:30:00 +0900\r\n"                                          \
	"From: =?UTF-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>\r\n"                       \
	"To: hanako@example.jp,\r\n"                                                     \
	"  jiro@example.jp\r\n"                                                          \
	"Cc: \"Sales\"\r\n"                                                              \
	" <sales@example.jp>\r\n"                                                        \
	"Subject: =?ISO-2022-JP?B?GyRCQEE1YT1xJE4kNDBGRmIbKEI=?=\r\n"                    \
	"Date: Sun, 29 Nov 2026 06:33:38 +0900\r\n"                                      \
	"Message-ID: <20261129063338.ABCDEF@mx.example.jp>\r\n"                          \
	"MIME-Version: 1.0\r\n"                                                          \
	"Content-Type: text/plain; charset=ISO-2022-JP\r\n"                              \
	"\r\n"                                                                           \
	"From: not-a-header@example.jp\r\n"                                              \
	"body\r\n"

#define SUBJECT_JA "請求書のご案内"
#define SIG "Eicar-Test-Signature"
#define QID "20261129T063338Z-1a2b3c4d"
#define ADMIN "admin@example.jp"
#define MARK "[mailmoat: ウイルス隔離 / virus quarantined]"

static struct spool *mkspool(const char *data, size_t len, size_t mem_limit)
{
	struct spool *sp = spool_new(mem_limit, "/tmp", 0);

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_append(sp, data, len), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	return sp;
}

static void read_str(const char *msg, struct msg_headers *h)
{
	struct spool *sp = mkspool(msg, strlen(msg), 1 << 20);

	ck_assert_int_eq(notice_read_headers(sp, h), 0);
	spool_unref(&sp);
}

static struct notice_info info(uint64_t pad_to)
{
	struct notice_info ni = {"infected", SIG, QID, ADMIN, pad_to};

	return ni;
}

static char *build(const struct msg_headers *h, const struct notice_info *ni,
                   size_t *len_r)
{
	char *out = NULL;

	ck_assert_int_eq(notice_build(h, ni, &out, len_r), 0);
	ck_assert_ptr_nonnull(out);
	return out;
}

/*
 * Every line ends in CRLF, no bare CR or LF, ends in CRLF, fits 998 octets.
 * (Check's assertions are slow, so the loop only looks; one assert reports.)
 */
static void check_lines(const char *s, size_t len)
{
	size_t i, col = 0, bad = SIZE_MAX;

	ck_assert_uint_ge(len, 2);
	ck_assert(s[len - 2] == '\r' && s[len - 1] == '\n');
	for (i = 0; i < len && bad == SIZE_MAX; i++) {
		if (s[i] == '\r') {
			if (i + 1 >= len || s[i + 1] != '\n' || col > 998)
				bad = i;
			col = 0;
			i++;
		} else if (s[i] == '\n') {
			bad = i;
		} else {
			col++;
		}
	}
	ck_assert_msg(bad == SIZE_MAX, "bare CR/LF or overlong line at offset %zu", bad);
}

/* Every body line is at most max octets without its CRLF. */
static void check_body_lines(const char *s, size_t len, size_t max)
{
	const char *p = memmem(s, len, "\r\n\r\n", 4);
	const char *end = s + len;
	size_t longest = 0;

	ck_assert_ptr_nonnull(p);
	p += 4;
	while (p < end) {
		const char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);

		ck_assert_ptr_nonnull(nl);
		if ((size_t)(nl - p) > longest)
			longest = (size_t)(nl - p);
		p = nl + 2;
	}
	ck_assert_msg(longest <= max, "body line of %zu octets", longest);
}

static GMimeMessage *reparse(const char *s, size_t len)
{
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(s, len);
	GMimeParser *p = g_mime_parser_new_with_stream(st);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);

	ck_assert_ptr_nonnull(m);
	g_object_unref(p);
	g_object_unref(st);
	return m;
}

/*
 * The raw value of a header, unfolded and trimmed; NULL when absent.
 * GMime keeps Content-* headers with the part, the others with the message.
 */
static char *raw_of(GMimeMessage *m, const char *name)
{
	GMimeObject *o = g_ascii_strncasecmp(name, "Content-", 8) == 0
	                     ? g_mime_message_get_mime_part(m)
	                     : GMIME_OBJECT(m);
	GMimeHeader *hd =
	    g_mime_header_list_get_header(g_mime_object_get_header_list(o), name);
	const char *raw;
	char *s, *t;
	size_t j = 0;

	if (hd == NULL)
		return NULL;
	raw = g_mime_header_get_raw_value(hd);
	s = g_malloc(strlen(raw) + 1);
	for (; *raw != '\0'; raw++) {
		if (*raw != '\r' && *raw != '\n')
			s[j++] = *raw;
	}
	s[j] = '\0';
	t = g_strdup(g_strstrip(s));
	g_free(s);
	return t;
}

static void check_raw(GMimeMessage *m, const char *name, const char *want)
{
	char *got = raw_of(m, name);

	ck_assert_msg(got != NULL, "%s missing", name);
	ck_assert_str_eq(got, want);
	g_free(got);
}

/* The decoded (charset-converted, QP-decoded) body text. */
static char *body_of(GMimeMessage *m)
{
	GMimeObject *part = g_mime_message_get_mime_part(m);

	ck_assert(GMIME_IS_TEXT_PART(part));
	return g_mime_text_part_get_text(GMIME_TEXT_PART(part));
}

static char *rstrip_ws(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
	                 s[n - 1] == '\n'))
		n--;
	s[n] = '\0';
	return s;
}

START_TEST(read_folded)
{
	struct msg_headers h;

	read_str(SAMPLE_FOLDED, &h);
	ck_assert_str_eq(h.from, "=?UTF-8?B?5bGx55Sw5aSq6YOO?= <taro@example.jp>");
	ck_assert_str_eq(h.to, "hanako@example.jp,  jiro@example.jp");
	ck_assert_str_eq(h.cc, "\"Sales\" <sales@example.jp>");
	ck_assert_str_eq(h.date, "Sun, 29 Nov 2026 06:33:38 +0900");
	ck_assert_str_eq(h.message_id, "<20261129063338.ABCDEF@mx.example.jp>");
	ck_assert_str_eq(h.subject, "=?ISO-2022-JP?B?GyRCQEE1YT1xJE4kNDBGRmIbKEI=?=");
	ck_assert_str_eq(h.subject_utf8, SUBJECT_JA);
	ck_assert_ptr_nonnull(strstr(h.from_utf8, "山田太郎"));
	ck_assert_ptr_nonnull(strstr(h.from_utf8, "<taro@example.jp>"));
	notice_headers_free(&h);
	ck_assert_ptr_null(h.from);
}
END_TEST

START_TEST(read_lf_and_utf8)
{
	struct msg_headers h;

	read_str("Subject: =?utf-8?b?44Km44Kk44Or44K55re75LuY44OG44K544OI?= (test)\n"
	         "From: \"=?UTF-8?B?5bGx55Sw5aSq6YOO?=\" <taro@example.jp>\n"
	         "\n"
	         "Subject: body\n",
	         &h);
	ck_assert_str_eq(h.subject_utf8, "ウイルス添付テスト (test)");
	ck_assert_ptr_nonnull(strstr(h.from_utf8, "taro@example.jp"));
	ck_assert_ptr_null(h.to);
	ck_assert_ptr_null(h.cc);
	ck_assert_ptr_null(h.date);
	ck_assert_ptr_null(h.message_id);
	notice_headers_free(&h);
}
END_TEST

START_TEST(read_undeclared_japanese)
{
	struct msg_headers h;

	/* raw ISO-2022-JP (escape sequences, 7-bit) and raw Shift_JIS */
	read_str("Subject: \x1b$B8+@Q=q\x1b(B\r\nFrom: \x97\xe9\x96\xd8 "
	         "<suzuki@example.jp>\r\n\r\n",
	         &h);
	ck_assert_str_eq(h.subject_utf8, "見積書");
	ck_assert_ptr_nonnull(strstr(h.from_utf8, "鈴木"));
	ck_assert(g_utf8_validate(h.from_utf8, -1, NULL));
	notice_headers_free(&h);
}
END_TEST

START_TEST(read_malformed)
{
	static const char *const cases[] = {
	    "",
	    "\r\nSubject: in the body\r\n",
	    "\n",
	    "no colon here\r\nSubject: x\r\n\r\n",
	    "\x01\x02\x03\xff\xfe binary junk \x00",
	    ": empty name\r\n\r\n",
	    "Subject:\r\n\r\n",
	    "Subject: =?UTF-8?B?!!!?= =?bogus?Q?x?= =?UTF-8?Q?=FF=FE?=\r\n\r\n",
	    "From: <<<@@@>>>,,,\"\r\n\r\n",
	    "From MAILER-DAEMON Sun Nov 29 06:33:38 2026\r\nSubject: mbox\r\n\r\n",
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct msg_headers h;
		char *out;
		size_t len;
		struct notice_info ni = info(0);
		struct spool *sp =
		    mkspool(cases[i], i == 4 ? 20 : strlen(cases[i]), 1 << 20);

		ck_assert_int_eq(notice_read_headers(sp, &h), 0);
		if (h.subject_utf8 != NULL)
			ck_assert(g_utf8_validate(h.subject_utf8, -1, NULL));
		if (h.from_utf8 != NULL)
			ck_assert(g_utf8_validate(h.from_utf8, -1, NULL));
		out = build(&h, &ni, &len);
		check_lines(out, len);
		free(out);
		notice_headers_free(&h);
		spool_unref(&sp);
	}
}
END_TEST

START_TEST(read_no_headers)
{
	struct msg_headers h;

	read_str("\r\nFrom: a@b\r\nSubject: body\r\n", &h);
	ck_assert_ptr_null(h.from);
	ck_assert_ptr_null(h.subject);
	notice_headers_free(&h);

	read_str("Subject: mbox\r\n\r\n", &h);
	ck_assert_str_eq(h.subject, "mbox");
	notice_headers_free(&h);

	read_str("From MAILER-DAEMON Sun Nov 29 06:33:38 2026\r\nSubject: mbox\r\n\r\n",
	         &h);
	ck_assert_str_eq(h.subject, "mbox");
	notice_headers_free(&h);

	read_str("From : obs@example.jp\r\nSubject: obs\r\n\r\n", &h);
	ck_assert_str_eq(h.subject, "obs");
	ck_assert_str_eq(h.from, "obs@example.jp");
	notice_headers_free(&h);
}
END_TEST

START_TEST(read_huge_header_block)
{
	/* 1 MiB of header without an empty line: only 256 KiB is looked at */
	size_t n = 1 << 20, i;
	char *msg = malloc(n);
	struct msg_headers h;
	struct spool *sp;

	ck_assert_ptr_nonnull(msg);
	memcpy(msg, "Subject: big\r\nX-Long: ", 22);
	for (i = 22; i < n; i++)
		msg[i] = (i % 100 == 99) ? ' ' : 'a';
	sp = mkspool(msg, n, 4096);
	ck_assert_int_ge(spool_fd(sp), 0);
	ck_assert_int_eq(notice_read_headers(sp, &h), 0);
	ck_assert_str_eq(h.subject, "big");
	notice_headers_free(&h);
	spool_unref(&sp);
	free(msg);
}
END_TEST

START_TEST(read_spilled)
{
	/* the header block spans many spill-file reads */
	GString *g = g_string_new("From: a@example.jp\r\n");
	struct msg_headers h;
	struct spool *sp;
	int i;

	for (i = 0; i < 2000; i++)
		g_string_append_printf(g, "Received: hop %d\r\n\tby relay.example.jp\r\n",
		                       i);
	g_string_append(g, "Subject: last\r\n\r\nbody\r\n");
	sp = mkspool(g->str, g->len, 64);
	ck_assert_int_ge(spool_fd(sp), 0);
	ck_assert_int_eq(notice_read_headers(sp, &h), 0);
	ck_assert_str_eq(h.from, "a@example.jp");
	ck_assert_str_eq(h.subject, "last");
	notice_headers_free(&h);
	spool_unref(&sp);
	g_string_free(g, TRUE);
}
END_TEST

START_TEST(build_roundtrip)
{
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	const char *subj;
	char *out, *body, *v;
	size_t len, nonascii = 0;

	read_str(SAMPLE_FOLDED, &h);
	out = build(&h, &ni, &len);
	check_lines(out, len);
	check_body_lines(out, len, 76);
	m = reparse(out, len);
	check_raw(m, "From", h.from);
	check_raw(m, "To", h.to);
	check_raw(m, "Cc", h.cc);
	check_raw(m, "Date", h.date);
	check_raw(m, "Message-ID", h.message_id);
	check_raw(m, "MIME-Version", "1.0");
	check_raw(m, "Content-Transfer-Encoding", "quoted-printable");
	check_raw(m, "X-Mailmoat-Quarantine-Id", QID);
	check_raw(m, "X-Mailmoat-Verdict", "infected");
	v = raw_of(m, "Content-Type");
	ck_assert_ptr_nonnull(strstr(v, "text/plain"));
	ck_assert_ptr_nonnull(strstr(v, "charset=utf-8"));
	g_free(v);
	ck_assert_ptr_null(raw_of(m, "Received"));
	/* the subject is RFC 2047-encoded (ASCII on the wire) and decodes back */
	v = raw_of(m, "Subject");
	ck_assert_ptr_nonnull(strstr(v, "=?"));
	ck_assert(g_str_is_ascii(v));
	g_free(v);
	subj = g_mime_message_get_subject(m);
	ck_assert_ptr_nonnull(strstr(subj, MARK));
	ck_assert_ptr_nonnull(strstr(subj, SUBJECT_JA));
	ck_assert(strstr(subj, MARK) < strstr(subj, SUBJECT_JA));

	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, SIG));
	ck_assert_ptr_nonnull(strstr(body, QID));
	ck_assert_ptr_nonnull(strstr(body, ADMIN));
	ck_assert_ptr_nonnull(strstr(body, SUBJECT_JA));
	ck_assert_ptr_nonnull(strstr(body, "山田太郎"));
	ck_assert_ptr_nonnull(strstr(body, "隔離されました"));
	ck_assert_ptr_nonnull(strstr(body, "ウイルス"));
	ck_assert_ptr_nonnull(strstr(body, "quarantined"));
	/* Japanese first, then English */
	ck_assert(strstr(body, "隔離されました") < strstr(body, "quarantined by"));
	/* quoted-printable: 8-bit never on the wire */
	for (size_t i = 0; i < len; i++)
		nonascii += (unsigned char)out[i] >= 0x80;
	ck_assert_uint_eq(nonascii, 0);
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);
}
END_TEST

START_TEST(build_missing_headers)
{
	struct msg_headers h = {0};
	struct notice_info ni = {"infected", SIG, QID, NULL, 0};
	GMimeMessage *m;
	GDateTime *d;
	char *out, *body, *from;
	size_t len;

	out = build(&h, &ni, &len);
	check_lines(out, len);
	m = reparse(out, len);
	from = raw_of(m, "From");
	ck_assert_ptr_nonnull(strstr(from, "postmaster@localhost"));
	g_free(from);
	ck_assert_ptr_null(raw_of(m, "To"));
	ck_assert_ptr_null(raw_of(m, "Cc"));
	ck_assert_ptr_null(raw_of(m, "Message-ID"));
	d = g_mime_message_get_date(m);
	ck_assert_ptr_nonnull(d);
	ck_assert_int_ge(g_date_time_get_year(d), 2024);
	ck_assert_str_eq(g_mime_message_get_subject(m), MARK);
	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, SIG));
	ck_assert_ptr_nonnull(strstr(body, "システム管理者"));
	ck_assert_ptr_nonnull(strstr(body, "administrator"));
	g_free(body);
	g_object_unref(m);
	free(out);
}
END_TEST

START_TEST(build_error_verdict)
{
	struct msg_headers h;
	struct notice_info ni = {"error", "scan timed out", QID, ADMIN, 0};
	GMimeMessage *m;
	char *out, *body;
	size_t len;

	read_str(SAMPLE_FOLDED, &h);
	out = build(&h, &ni, &len);
	check_lines(out, len);
	m = reparse(out, len);
	check_raw(m, "X-Mailmoat-Verdict", "error");
	ck_assert_ptr_nonnull(strstr(g_mime_message_get_subject(m), "scan error"));
	ck_assert_ptr_nonnull(strstr(g_mime_message_get_subject(m), SUBJECT_JA));
	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, "scan timed out"));
	ck_assert_ptr_nonnull(strstr(body, "検査エラー"));
	ck_assert_ptr_nonnull(strstr(body, "could not be scanned"));
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);
}
END_TEST

START_TEST(build_hostile_headers)
{
	/* no injected header lines, every line within limits */
	GString *g = g_string_new("To: ");
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *out, *body;
	size_t len;
	int i;

	for (i = 0; i < 400; i++)
		g_string_append_printf(g, "%suser%d@example.jp", i ? ", " : "", i);
	g_string_append(g, "\r\nFrom: ");
	for (i = 0; i < 2500; i++)
		g_string_append_c(g, 'x');
	g_string_append(g, "@example.jp\r\nSubject: ");
	for (i = 0; i < 3000; i++)
		g_string_append_c(g, 'S');
	g_string_append(g, " =?UTF-8?Q?a=0D=0ABcc:_evil@example.jp=0D=0A=01?=\r\n\r\n");
	read_str(g->str, &h);
	out = build(&h, &ni, &len);
	check_lines(out, len);
	m = reparse(out, len);
	check_raw(m, "To", h.to);
	ck_assert_ptr_null(raw_of(m, "Bcc"));
	ck_assert_ptr_nonnull(strstr(g_mime_message_get_subject(m), "SSSSSSSS"));
	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, QID));
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);
	g_string_free(g, TRUE);

	/* an encoded CRLF in a short subject stays inside the subject */
	read_str("Subject: =?UTF-8?Q?a=0D=0ABcc:_evil@example.jp=0D=0A=01?=\r\n\r\n", &h);
	ck_assert_ptr_null(strpbrk(h.subject_utf8, "\r\n\x01"));
	out = build(&h, &ni, &len);
	check_lines(out, len);
	m = reparse(out, len);
	ck_assert_ptr_null(raw_of(m, "Bcc"));
	ck_assert_ptr_nonnull(strstr(g_mime_message_get_subject(m), "Bcc:"));
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);

	/* nor does a CR or LF in headers filled in by hand */
	{
		char to[] = "a@example.jp\r\nBcc: evil@example.jp\nX-Evil: 1\r";
		struct msg_headers hh = {.to = to, .date = to, .message_id = to};

		out = build(&hh, &ni, &len);
		check_lines(out, len);
		m = reparse(out, len);
		ck_assert_ptr_null(raw_of(m, "Bcc"));
		ck_assert_ptr_null(raw_of(m, "X-Evil"));
		g_object_unref(m);
		free(out);
	}
}
END_TEST

/* Checks one padded notice against the unpadded one (base, blen). */
static void check_padded(const struct msg_headers *h, const char *base, size_t blen,
                         const char *base_body, uint64_t pad_to)
{
	struct notice_info ni = info(pad_to);
	GMimeMessage *m;
	char *out, *body;
	size_t len, i, ws = 0;

	out = build(h, &ni, &len);
	ck_assert_uint_eq(len, pad_to);
	check_lines(out, len);
	check_body_lines(out, len, 76);
	/* everything up to the final empty line is unchanged */
	ck_assert(memcmp(out, base, blen - 2) == 0);
	for (i = blen - 2; i < len; i++)
		ws += out[i] == ' ' || out[i] == '\r' || out[i] == '\n';
	ck_assert_uint_eq(ws, len - (blen - 2));
	m = reparse(out, len);
	body = body_of(m);
	ck_assert_str_eq(rstrip_ws(body), base_body);
	g_free(body);
	g_object_unref(m);
	free(out);
}

START_TEST(pad_range)
{
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *base, *base_body;
	size_t blen;
	uint64_t p;

	read_str(SAMPLE_FOLDED, &h);
	base = build(&h, &ni, &blen);
	m = reparse(base, blen);
	base_body = rstrip_ws(body_of(m));
	g_object_unref(m);
	for (p = blen + 1; p <= blen + 300; p++)
		check_padded(&h, base, blen, base_body, p);
	g_free(base_body);
	free(base);
	notice_headers_free(&h);
}
END_TEST

START_TEST(pad_large)
{
	static const uint64_t extra[] = {77, 78, 79, 80, 155, 156, 157, 4096, 65537};
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *base, *base_body;
	size_t blen, i;

	read_str(SAMPLE_FOLDED, &h);
	base = build(&h, &ni, &blen);
	m = reparse(base, blen);
	base_body = rstrip_ws(body_of(m));
	g_object_unref(m);
	for (i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		check_padded(&h, base, blen, base_body, blen + extra[i]);
	check_padded(&h, base, blen, base_body, 1 << 20);
	check_padded(&h, base, blen, base_body, (1 << 20) + 1);
	g_free(base_body);
	free(base);
	notice_headers_free(&h);
}
END_TEST

START_TEST(pad_smaller)
{
	static const uint64_t pads[] = {0, 1, 2, 100};
	struct msg_headers h;
	struct notice_info ni = info(0);
	char *base, *out;
	size_t blen, len, i;

	read_str(SAMPLE_FOLDED, &h);
	base = build(&h, &ni, &blen);
	for (i = 0; i <= sizeof(pads) / sizeof(pads[0]); i++) {
		ni.pad_to = i < sizeof(pads) / sizeof(pads[0]) ? pads[i] : blen - 1;
		out = build(&h, &ni, &len);
		ck_assert_uint_eq(len, blen);
		ck_assert(memcmp(out, base, len) == 0);
		free(out);
	}
	ni.pad_to = blen;
	out = build(&h, &ni, &len);
	ck_assert_uint_eq(len, blen);
	ck_assert(memcmp(out, base, len) == 0);
	free(out);
	free(base);
	notice_headers_free(&h);
}
END_TEST

struct thread_arg {
	const char *ref;
	size_t ref_len;
	int ok;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	int i;

	a->ok = 1;
	for (i = 0; i < 40; i++) {
		struct spool *sp = spool_new(1 << 20, "/tmp", 0);
		struct notice_info ni = info(a->ref_len);
		struct msg_headers h;
		char *out = NULL;
		size_t len = 0;

		spool_append(sp, SAMPLE_FOLDED, strlen(SAMPLE_FOLDED));
		spool_freeze(sp);
		if (notice_read_headers(sp, &h) != 0 ||
		    notice_build(&h, &ni, &out, &len) != 0 || len != a->ref_len ||
		    memcmp(out, a->ref, len) != 0)
			a->ok = 0;
		free(out);
		notice_headers_free(&h);
		spool_unref(&sp);
	}
	return NULL;
}

START_TEST(threads)
{
	struct msg_headers h;
	struct notice_info ni = info(0);
	struct thread_arg args[8];
	pthread_t tids[8];
	char *ref;
	size_t len;
	int i;

	read_str(SAMPLE_FOLDED, &h);
	ref = build(&h, &ni, &len);
	ni.pad_to = len + 1000;
	free(ref);
	ref = build(&h, &ni, &len);
	for (i = 0; i < 8; i++) {
		args[i].ref = ref;
		args[i].ref_len = len;
		ck_assert_int_eq(pthread_create(&tids[i], NULL, thread_main, &args[i]),
		                 0);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(tids[i], NULL);
		ck_assert(args[i].ok);
	}
	free(ref);
	notice_headers_free(&h);
}
END_TEST

static Suite *notice_suite(void)
{
	Suite *s = suite_create("notice");
	TCase *tr = tcase_create("read");
	TCase *tb = tcase_create("build");
	TCase *tp = tcase_create("pad");

	tcase_add_test(tr, read_folded);
	tcase_add_test(tr, read_lf_and_utf8);
	tcase_add_test(tr, read_undeclared_japanese);
	tcase_add_test(tr, read_malformed);
	tcase_add_test(tr, read_no_headers);
	tcase_add_test(tr, read_huge_header_block);
	tcase_add_test(tr, read_spilled);
	tcase_add_test(tb, build_roundtrip);
	tcase_add_test(tb, build_missing_headers);
	tcase_add_test(tb, build_error_verdict);
	tcase_add_test(tb, build_hostile_headers);
	tcase_add_test(tb, threads);
	tcase_add_test(tp, pad_range);
	tcase_add_test(tp, pad_large);
	tcase_add_test(tp, pad_smaller);
	tcase_set_timeout(tp, 60); /* sanitizer builds parse megabytes slowly */
	suite_add_tcase(s, tr);
	suite_add_tcase(s, tb);
	suite_add_tcase(s, tp);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	notice_global_init();
	sr = srunner_create(notice_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
