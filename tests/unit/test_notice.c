/*
 * test_notice.c - Check suite for policy/notice.c.
 *
 * Reads headers from sample originals (folded, RFC 2047 in ISO-2022-JP and
 * UTF-8, undeclared ISO-2022-JP and Shift_JIS, missing, malformed), builds
 * notices, and parses every notice back with GMime to compare: the carried
 * headers equal the original's, the subject and body decode to what they
 * should, every line ends in CRLF and fits, and padding hits the requested
 * size exactly without changing the decoded body.
 *
 * Templates: the shipped files load and render exactly as their built-in
 * copies, the default text is unchanged, every variable and fallback, the
 * load errors (with file:line), Subjects folded into encoded words of at
 * most 75 octets on lines of at most 78 that never split a character
 * (Japanese, 300 characters, long sender names), header injection through
 * every value, padding with a template, and every verdict kind.
 */
#include "policy/notice.h"
#include "proxy/spool.h"

#include <check.h>
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
	struct notice_info ni = {"infected", SIG, QID, ADMIN, pad_to, NULL, NULL};

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

/* The decoded (charset-converted, QP-decoded) body text, LF line endings. */
static char *body_of(GMimeMessage *m)
{
	GMimeObject *part = g_mime_message_get_mime_part(m);
	char *s, *o;

	ck_assert(GMIME_IS_TEXT_PART(part));
	s = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
	for (const char *p = o = s; *p != '\0'; p++) {
		if (p[0] != '\r' || p[1] != '\n')
			*o++ = *p;
	}
	*o = '\0';
	return s;
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
	struct notice_info ni = {"infected", SIG, QID, NULL, 0, NULL, NULL};
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
	struct notice_info ni = {"error", "scan timed out", QID, ADMIN, 0, NULL, NULL};
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

/* Checks one padded notice (template t) against the unpadded one (base, blen). */
static void check_padded_with(const struct msg_headers *h,
                              const struct notice_template *t, const char *base,
                              size_t blen, const char *base_body, uint64_t pad_to)
{
	struct notice_info ni = info(pad_to);
	GMimeMessage *m;
	char *out, *body;
	size_t len, i, ws = 0;

	ni.tmpl = t;
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

static void check_padded(const struct msg_headers *h, const char *base, size_t blen,
                         const char *base_body, uint64_t pad_to)
{
	check_padded_with(h, NULL, base, blen, base_body, pad_to);
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

/* ---- templates ---- */

/* The shipped template file name, under $MAILMOAT_SRC (ctest sets it). */
static char *shipped_path(const char *name)
{
	const char *src = getenv("MAILMOAT_SRC");

	return g_strdup_printf("%s/policy/notices/%s.txt", src != NULL ? src : "../..",
	                       name);
}

static struct notice_template *parse_ok(const char *text)
{
	char err[512] = "";
	struct notice_template *t =
	    notice_template_parse("test.txt", text, strlen(text), err, sizeof(err));

	ck_assert_msg(t != NULL, "template refused: %s", err);
	return t;
}

/* Builds with template t (NULL: the default) and reparses; *out_r for raw checks. */
static GMimeMessage *build_with(const struct msg_headers *h, struct notice_info *ni,
                                const struct notice_template *t, char **out_r,
                                size_t *len_r)
{
	ni->tmpl = t;
	*out_r = build(h, ni, len_r);
	check_lines(*out_r, *len_r);
	return reparse(*out_r, *len_r);
}

/*
 * Checks header name in the raw notice: every line at most 78 octets, every
 * encoded word at most 75 octets, UTF-8 B or Q, decoding on its own to
 * valid UTF-8 (no character split between two words), and no padded B word
 * right before another B word (GMime 3.2 loses the text after it). Returns
 * the number of encoded words.
 */
static int check_encoded_header(const char *s, size_t len, const char *name)
{
	char *head =
	    g_strndup(s, (size_t)((const char *)memmem(s, len, "\r\n\r\n", 4) - s));
	char *key = g_strdup_printf("\r\n%s:", name);
	const char *p = g_str_has_prefix(head, key + 2) ? head : strstr(head, key);
	const char *e, *prev_end = NULL;
	GString *v = g_string_new(NULL);
	int words = 0, prev_padded = 0;

	ck_assert_msg(p != NULL, "no %s header", name);
	if (p != head)
		p += 2;
	for (;;) {
		const char *eol = strstr(p, "\r\n");
		size_t n = eol != NULL ? (size_t)(eol - p) : strlen(p);

		ck_assert_msg(n <= 78, "%s line of %zu octets: %.*s", name, n, (int)n, p);
		g_string_append_len(v, p, (gssize)n);
		if (eol == NULL || (eol[2] != ' ' && eol[2] != '\t'))
			break;
		p = eol + 2;
	}
	for (e = v->str; (e = strstr(e, "=?")) != NULL;) {
		const char *q;
		GString *dec = g_string_new(NULL);
		int b;

		ck_assert_msg(strncmp(e, "=?UTF-8?B?", 10) == 0 ||
		                  strncmp(e, "=?UTF-8?Q?", 10) == 0,
		              "odd word %.20s", e);
		b = e[8] == 'B';
		q = strstr(e + 10, "?=");
		ck_assert_ptr_nonnull(q);
		ck_assert_msg(q + 2 - e <= 75, "encoded word of %d octets",
		              (int)(q + 2 - e));
		if (b) {
			char *b64 = g_strndup(e + 10, (gsize)(q - e - 10));
			gsize dlen;
			guchar *d = g_base64_decode(b64, &dlen);

			g_string_append_len(dec, (const char *)d, (gssize)dlen);
			ck_assert_msg(!(prev_padded && prev_end != NULL &&
			                strspn(prev_end, " ") == (size_t)(e - prev_end)),
			              "B word after a padded one: %.80s", prev_end);
			prev_padded = strchr(b64, '=') != NULL;
			g_free(d);
			g_free(b64);
		} else {
			for (const char *c = e + 10; c < q; c++) {
				if (*c == '=') {
					char hex[3] = {c[1], c[2], 0};

					g_string_append_c(dec,
					                  (char)strtol(hex, NULL, 16));
					c += 2;
				} else {
					g_string_append_c(dec, *c == '_' ? ' ' : *c);
				}
			}
			prev_padded = 0;
		}
		ck_assert_msg(g_utf8_validate(dec->str, (gssize)dec->len, NULL),
		              "encoded word %.75s splits a character", e);
		g_string_free(dec, TRUE);
		words++;
		e = prev_end = q + 2;
	}
	g_string_free(v, TRUE);
	g_free(key);
	g_free(head);
	return words;
}

/* The decoded value of header name in m (GMime's RFC 2047 decoder). */
static char *decoded(GMimeMessage *m, const char *name)
{
	char *raw = raw_of(m, name), *d;

	ck_assert_msg(raw != NULL, "%s missing", name);
	d = g_mime_utils_header_decode_text(NULL, raw);
	g_free(raw);
	return d;
}

/* s cut as the notice cuts network text: whole characters up to max octets, "…". */
static char *cut(const char *s, size_t max)
{
	GString *g = g_string_new(NULL);

	for (const char *p = s; *p != '\0'; p = g_utf8_next_char(p)) {
		size_t c = (size_t)(g_utf8_next_char(p) - p);

		if (g->len + c > max) {
			g_string_append(g, "…");
			break;
		}
		g_string_append_len(g, p, (gssize)c);
	}
	return g_string_free(g, FALSE);
}

/* n characters of Japanese text. */
static char *japanese(size_t n)
{
	static const char *const w[] = {"請", "求", "書", "の", "ご", "案", "内",
	                                "（", "至", "急", "）", "ア", "イ", "ウ"};
	GString *g = g_string_new(NULL);

	for (size_t i = 0; i < n; i++)
		g_string_append(g, w[i % (sizeof(w) / sizeof(w[0]))]);
	return g_string_free(g, FALSE);
}

/* The default notice's text for an infected message, as it was before templates. */
#define DEFAULT_BODY_INFECTED                                                                               \
	"このメッセージは mailmoat によって隔離されました。\n\n"                        \
	"元のメッセージからウイルス（マルウェア）が検出されたため、\n"         \
	"元のメッセージの代わりにこのお知らせをお届けしています。\n"            \
	"元のメッセージは隔離領域に保管されており、失われてはいません。\n\n" \
	"  判定:         ウイルス検出 (infected)\n"                                                 \
	"  検出名:       " SIG "\n"                                                                         \
	"  隔離ID:       " QID "\n"                                                                         \
	"  元の差出人:   山田太郎 <taro@example.jp>\n"                                             \
	"  元の件名:     " SUBJECT_JA "\n\n"                                                                \
	"元のメッセージが必要な場合は、上記の隔離IDを添えて\n"                      \
	"管理者（" ADMIN "）までご連絡ください。\n\n"                                            \
	"----------------------------------------------------------------------\n\n"                        \
	"This message was quarantined by mailmoat.\n\n"                                                     \
	"A virus (malware) was found in the original message, so this\n"                                    \
	"notice was delivered in its place.\n"                                                              \
	"The original is kept in quarantine and has not been lost.\n\n"                                     \
	"  Verdict:          infected\n"                                                                    \
	"  Threat:           " SIG "\n"                                                                     \
	"  Quarantine ID:    " QID "\n"                                                                     \
	"  Original sender:  山田太郎 <taro@example.jp>\n"                                              \
	"  Original subject: " SUBJECT_JA "\n\n"                                                            \
	"If you need the original message, contact " ADMIN "\n"                                             \
	"and quote the quarantine ID above.\n\n"

START_TEST(tmpl_default_unchanged)
{
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *out, *body, *subj;
	size_t len;

	read_str(SAMPLE_FOLDED, &h);
	m = build_with(&h, &ni, NULL, &out, &len);
	body = body_of(m);
	ck_assert_str_eq(body, DEFAULT_BODY_INFECTED);
	subj = decoded(m, "Subject");
	ck_assert_str_eq(subj, MARK " " SUBJECT_JA);
	check_encoded_header(out, len, "Subject");
	g_free(subj);
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);
}
END_TEST

static const char *const verdicts[] = {
    "infected", "error",         "encrypted_archive", "blocked_attachment",
    "oversize", "denied_sender", "something_new",     NULL};
#define N_VERDICTS (sizeof(verdicts) / sizeof(verdicts[0]))

START_TEST(tmpl_shipped_load_and_render)
{
	static const char *const names[] = {"ja+en", "ja", "en"};
	struct msg_headers h;
	char err[512];

	read_str(SAMPLE_FOLDED, &h);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *path = shipped_path(names[i]);
		struct notice_template *file =
		    notice_template_load(path, err, sizeof(err));
		struct notice_template *bi =
		    notice_template_open(NULL, names[i], err, sizeof(err));

		ck_assert_msg(file != NULL, "%s: %s", path, err);
		ck_assert_ptr_nonnull(bi);
		ck_assert_str_eq(notice_template_name(file), path);
		ck_assert_ptr_nonnull(strstr(notice_template_name(bi), "built-in"));
		/* the shipped file and the built-in render alike, for every verdict */
		for (size_t v = 0; v < N_VERDICTS; v++) {
			struct notice_info ni = {verdicts[v], SIG,   QID, ADMIN,
			                         0,           "why", file};
			char *a, *b, *subj;
			size_t alen, blen;
			GMimeMessage *m;

			m = build_with(&h, &ni, file, &a, &alen);
			ni.tmpl = bi;
			b = build(&h, &ni, &blen);
			ck_assert_msg(alen == blen && memcmp(a, b, alen) == 0,
			              "%s renders unlike its built-in for %s", names[i],
			              verdicts[v] != NULL ? verdicts[v] : "NULL");
			/* the Subject mark the integration tests look for */
			subj = decoded(m, "Subject");
			ck_assert_msg(g_str_has_prefix(subj, "[mailmoat: "), "%s", subj);
			ck_assert_ptr_nonnull(strstr(subj, SUBJECT_JA));
			g_free(subj);
			g_object_unref(m);
			free(a);
			free(b);
		}
		/* the default is the shipped ja+en */
		if (strcmp(names[i], "ja+en") == 0) {
			struct notice_info ni = info(0);
			char *a, *b;
			size_t alen, blen;

			ni.tmpl = file;
			a = build(&h, &ni, &alen);
			ni.tmpl = NULL;
			b = build(&h, &ni, &blen);
			ck_assert(alen == blen && memcmp(a, b, alen) == 0);
			free(a);
			free(b);
		}
		notice_template_free(&file);
		ck_assert_ptr_null(file);
		notice_template_free(&bi);
		ck_assert_ptr_null(bi);
		g_free(path);
	}
	{
		const char *src = getenv("MAILMOAT_SRC");
		char *dir =
		    g_strdup_printf("%s/policy/notices", src != NULL ? src : "../..");

		ck_assert_int_eq(notice_templates_check(dir, err, sizeof(err)), 3);
		g_free(dir);
	}
	notice_headers_free(&h);
}
END_TEST

START_TEST(tmpl_every_variable)
{
	struct notice_template *t = parse_ok(
	    "Subject: <{{verdict}}> {{subject}} / {{ from }} / {{verdict_mark.en}}\n"
	    "X-Notice-Reason: {{reason}} ({{signature}}) {{verdict_text.ja}}\n"
	    "\n"
	    "s={{subject}}\nf={{from}}\nd={{date}}\nsig={{signature}}\nr={{reason}}\n"
	    "q={{quarantine_id}}\na={{admin_contact}}\nv={{verdict}}\n"
	    "mj={{verdict_mark.ja}}\nme={{verdict_mark.en}}\n"
	    "tj={{verdict_text.ja}}\nte={{verdict_text.en}}\n"
	    "ej={{verdict_explain.ja}}\nee={{verdict_explain.en}}\n"
	    "lj=[{{reason_label.ja}}]\nle=[{{reason_label.en}}]\n"
	    "esc={{{{subject}}\n");
	struct msg_headers h;
	struct notice_info ni = {"blocked_attachment",
	                         "Sig.Name",
	                         "Q42",
	                         "it@example.jp",
	                         0,
	                         "invoice.pdf.exe (rule: no-exe)",
	                         NULL};
	GMimeMessage *m;
	char *out, *body, *v;
	size_t len;

	read_str(SAMPLE_FOLDED, &h);
	m = build_with(&h, &ni, t, &out, &len);
	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, "s=" SUBJECT_JA "\n"));
	ck_assert_ptr_nonnull(strstr(body, "f=山田太郎 <taro@example.jp>\n"));
	ck_assert_ptr_nonnull(strstr(body, "d=Sun, 29 Nov 2026 06:33:38 +0900\n"));
	ck_assert_ptr_nonnull(strstr(body, "sig=Sig.Name\n"));
	ck_assert_ptr_nonnull(strstr(body, "r=invoice.pdf.exe (rule: no-exe)\n"));
	ck_assert_ptr_nonnull(strstr(body, "q=Q42\n"));
	ck_assert_ptr_nonnull(strstr(body, "a=it@example.jp\n"));
	ck_assert_ptr_nonnull(strstr(body, "v=blocked_attachment\n"));
	ck_assert_ptr_nonnull(strstr(body, "mj=添付ファイル制限により隔離\n"));
	ck_assert_ptr_nonnull(strstr(body, "me=quarantined, blocked attachment\n"));
	ck_assert_ptr_nonnull(strstr(body, "tj=受信できない添付ファイル\n"));
	ck_assert_ptr_nonnull(strstr(body, "te=blocked attachment\n"));
	ck_assert_ptr_nonnull(strstr(body, "ej=元のメッセージに受信が許可されていない"));
	ck_assert_ptr_nonnull(strstr(body, "ee=The original message has an attachment"));
	/* labels padded to 13 / 17 display columns (添付ファイル: is 13 already) */
	ck_assert_ptr_nonnull(strstr(body, "lj=[添付ファイル:]\n"));
	ck_assert_ptr_nonnull(strstr(body, "le=[Attachment:      ]\n"));
	ck_assert_ptr_nonnull(strstr(body, "esc={{subject}}\n"));
	v = decoded(m, "Subject");
	ck_assert_str_eq(
	    v, "<blocked_attachment> " SUBJECT_JA
	       " / 山田太郎 <taro@example.jp> / quarantined, blocked attachment");
	g_free(v);
	v = decoded(m, "X-Notice-Reason");
	ck_assert_str_eq(
	    v, "invoice.pdf.exe (rule: no-exe) (Sig.Name) 受信できない添付ファイル");
	g_free(v);
	check_encoded_header(out, len, "Subject");
	check_encoded_header(out, len, "X-Notice-Reason");
	check_raw(m, "X-Mailmoat-Verdict", "blocked_attachment");
	check_raw(m, "X-Mailmoat-Quarantine-Id", "Q42");
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_headers_free(&h);
	notice_template_free(&t);
}
END_TEST

START_TEST(tmpl_fallbacks)
{
	struct notice_template *t =
	    parse_ok("Subject: [x] {{subject|(none)}} {{ from | nobody }}\n\n"
	             "s={{subject|件名なし}}\nd={{date|?}}\nr={{reason|-}}\n"
	             "a={{admin_contact|管理者}}\nq={{quarantine_id}}.\n"
	             "full={{subject}}\n");
	struct msg_headers h = {0};
	struct notice_info ni = {NULL, "", NULL, "", 0, NULL, NULL};
	GMimeMessage *m;
	char *out, *body, *v;
	size_t len;

	m = build_with(&h, &ni, t, &out, &len);
	body = body_of(m);
	ck_assert_ptr_nonnull(
	    strstr(body, "s=件名なし\nd=?\nr=-\na=管理者\nq=.\nfull=\n"));
	v = decoded(m, "Subject");
	ck_assert_str_eq(v, "[x] (none) nobody");
	g_free(v);
	check_raw(m, "X-Mailmoat-Verdict", "infected"); /* NULL verdict: as before */
	g_free(body);
	g_object_unref(m);
	free(out);

	/* the signature stands in for an absent reason */
	ni.signature = "Win.Test.EICAR_HDB-1";
	m = build_with(&h, &ni, t, &out, &len);
	body = body_of(m);
	ck_assert_ptr_nonnull(strstr(body, "r=Win.Test.EICAR_HDB-1\n"));
	g_free(body);
	g_object_unref(m);
	free(out);
	notice_template_free(&t);
}
END_TEST

/* Builds the default notice for subject (UTF-8) and checks its Subject. */
static void check_subject(const char *subject, const char *tmpl_text, const char *prefix)
{
	struct notice_template *t = tmpl_text != NULL ? parse_ok(tmpl_text) : NULL;
	struct msg_headers h = {0};
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *out, *got, *want, *c;
	size_t len;

	h.subject = h.subject_utf8 = (char *)subject;
	m = build_with(&h, &ni, t, &out, &len);
	check_encoded_header(out, len, "Subject");
	c = cut(subject, 512);
	want = g_strdup_printf("%s%s", prefix, c);
	got = decoded(m, "Subject");
	ck_assert_str_eq(got, want);
	/* and GMime's parser agrees */
	ck_assert_str_eq(g_mime_message_get_subject(m), want);
	g_free(got);
	g_free(want);
	g_free(c);
	g_object_unref(m);
	free(out);
	notice_template_free(&t);
}

START_TEST(tmpl_subject_folding)
{
	char *ja300 = japanese(300), *ja40 = japanese(40), *mixed, *words, *longword,
	     *emoji;
	GString *g;

	check_subject(SUBJECT_JA, NULL, MARK " ");
	check_subject("ウイルス添付テスト (test) 見積書 v2", NULL, MARK " ");
	/* 900 octets: cut at 512 on a character boundary */
	check_subject(ja300, NULL, MARK " ");
	check_subject(ja300, "Subject: {{subject}}\n\n", "");
	check_subject(ja40, "Subject: {{subject}}\n\n", "");
	/* 4-octet characters, never split */
	check_subject("😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀", NULL, MARK " ");
	/* a 4-octet character before 3-octet ones: no B word could end unpadded */
	emoji = g_strdup_printf("😀%s😀 x😀%s", ja40, ja40);
	check_subject(emoji, NULL, MARK " ");
	check_subject(emoji, "Subject: {{subject}}\n\n", "");
	/* Japanese words between ASCII ones, the spacing kept exactly */
	mixed = g_strdup_printf("Re: [ML:123]  %s  and  %s end", ja40, SUBJECT_JA);
	check_subject(mixed, NULL, MARK " ");
	/* ASCII: 300 characters of words, then one 300-character word */
	g = g_string_new(NULL);
	while (g->len < 300)
		g_string_append(g, "quarterly report ");
	words = g_string_free(g, FALSE);
	g_strstrip(words);
	check_subject(words, NULL, MARK " ");
	longword = g_strnfill(300, 'x');
	check_subject(longword, NULL, MARK " ");
	/* text that looks like an encoded word stays text */
	check_subject("=?UTF-8?B?44GC?= is not mine", NULL, MARK " ");
	g_free(ja300);
	g_free(ja40);
	g_free(mixed);
	g_free(emoji);
	g_free(words);
	g_free(longword);
}
END_TEST

START_TEST(tmpl_long_names)
{
	struct notice_template *t =
	    parse_ok("Subject: {{from}} より: {{subject}}\n"
	             "X-Original-Sender: {{from}}\n\nfrom={{from}}\n");
	char *name = japanese(120);
	struct msg_headers h = {0};
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *out, *body, *want, *got, *c;
	size_t len;

	h.from = h.from_utf8 = g_strdup_printf("%s <a-very-long-local-part.for.testing@"
	                                       "sub.division.example.co.jp>",
	                                       name);
	h.subject = h.subject_utf8 = SUBJECT_JA;
	m = build_with(&h, &ni, t, &out, &len);
	check_encoded_header(out, len, "Subject");
	check_encoded_header(out, len, "X-Original-Sender");
	got = decoded(m, "X-Original-Sender");
	ck_assert_str_eq(got, h.from_utf8);
	g_free(got);
	got = decoded(m, "Subject");
	want = g_strdup_printf("%s より: %s", h.from_utf8, SUBJECT_JA);
	ck_assert_str_eq(got, want);
	g_free(got);
	g_free(want);
	/* the original From is carried over raw, as ever */
	check_raw(m, "From", h.from);
	body = body_of(m);
	c = g_strdup_printf("from=%s\n", h.from_utf8);
	ck_assert_ptr_nonnull(strstr(body, c));
	check_body_lines(out, len, 76);
	g_free(c);
	g_free(body);
	g_object_unref(m);
	free(out);

	/* longer than 512 octets: cut, still folded */
	g_free(h.from);
	g_free(name);
	name = japanese(400);
	h.from = h.from_utf8 = g_strdup_printf("%s <x@example.jp>", name);
	m = build_with(&h, &ni, t, &out, &len);
	check_encoded_header(out, len, "Subject");
	check_encoded_header(out, len, "X-Original-Sender");
	got = decoded(m, "X-Original-Sender");
	c = cut(h.from_utf8, 512);
	ck_assert_str_eq(got, c);
	g_free(c);
	g_free(got);
	g_object_unref(m);
	free(out);
	g_free(h.from);
	g_free(name);
	notice_template_free(&t);
}
END_TEST

START_TEST(tmpl_header_injection)
{
	static const char *const evil[] = {
	    "a\r\nBcc: evil@example.jp",
	    "a\nBcc: evil@example.jp\n",
	    "a\rBcc: evil@example.jp",
	    "\r\n\r\nBcc: evil@example.jp",
	    /* VT, FF, SOH, DEL, U+0085 (NEL); the octal escape ends the C1 */
	    "x\v\f\001\177\302\205Bcc: evil@example.jp",
	};
	struct notice_template *t =
	    parse_ok("Subject: [mailmoat] {{subject}} {{reason}}\n"
	             "X-Why: {{reason}} {{from}} {{admin_contact}}\n\n"
	             "{{subject}}\n{{from}}\n{{reason}}\n{{admin_contact}}\n");

	for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++) {
		struct msg_headers h = {0};
		struct notice_info ni = {"oversize", SIG, QID, evil[i], 0, evil[i], NULL};
		GMimeMessage *m;
		char *out, *body, *v;
		size_t len;

		h.subject = h.subject_utf8 = h.from_utf8 = (char *)evil[i];
		h.from = "x@example.jp";
		for (int d = 0; d < 2; d++) {
			m = build_with(&h, &ni, d ? NULL : t, &out, &len);
			ck_assert_ptr_null(raw_of(m, "Bcc"));
			ck_assert_ptr_null(memmem(out, len, "\nBcc", 4));
			v = decoded(m, "Subject");
			ck_assert_ptr_null(strpbrk(v, "\r\n"));
			ck_assert_ptr_nonnull(strstr(v, "Bcc: evil@example.jp"));
			g_free(v);
			body = body_of(m);
			ck_assert_ptr_null(strstr(body, "\nBcc"));
			g_free(body);
			g_object_unref(m);
			free(out);
		}
	}
	notice_template_free(&t);
}
END_TEST

/* One template text that must be refused with an error containing want. */
struct bad_tmpl {
	const char *text;
	size_t len; /* 0: strlen */
	const char *want;
};

START_TEST(tmpl_load_errors)
{
	static const struct bad_tmpl cases[] = {
	    {"Subject: x\n\nline 3\nline 4 {{subjet}}\n", 0,
	     "t.txt:4: unknown variable {{subjet}}"},
	    {"Subject: {{ nope }}\n\n", 0, "t.txt:1: unknown variable {{nope}}"},
	    {"# c\nSubject: x\n\n{{verdict_text}}\n", 0, "t.txt:4: unknown variable"},
	    {"Subject: x\n\n{{}}\n", 0, "t.txt:3: unknown variable {{}}"},
	    {"Subject: x\n\nok\n{{subject\n}}\n", 0, "t.txt:4: unterminated {{"},
	    {"Subject: x\n\nok {{subject", 0, "t.txt:3: unterminated {{"},
	    {"Subject: x\n\nok\n\xff\xfe\n", 0, "t.txt:4: invalid UTF-8"},
	    {"Subject: \xe8\xab\n\n", 0, "t.txt:1: invalid UTF-8"},
	    {"Subject: x\n\n\xc0\xaf overlong slash\n", 0, "t.txt:3: invalid UTF-8"},
	    {"Subject: x\n\nnul\n\0after\n", 19, "t.txt:4: NUL"},
	    {"Subject: x\r\n\r\nbare\rCR\r\n", 0, "t.txt:3: carriage return"},
	    {"Subject: x\n\nbell\x07\n", 0, "t.txt:3: control character U+0007"},
	    {"Subject: x\n\nc1\xc2\x85\n", 0, "t.txt:3: control character U+0085"},
	    {"", 0, "t.txt:1: no Subject header"},
	    {"\nbody only\n", 0, "t.txt:1: no Subject header"},
	    {"# only a comment\n", 0, "t.txt:2: no Subject header"},
	    {"Subject: x\nbody without an empty line\n", 0,
	     "t.txt:2: expected \"Name: value\""},
	    {"Subject: x\n", 0, "t.txt:2: no empty line"},
	    {"Subject: a\nSubject: b\n\n", 0, "t.txt:2: a second Subject"},
	    {"Subject: a\nFrom: evil@example.jp\n\n", 0,
	     "t.txt:2: a template sets Subject and X- headers only, not From"},
	    {"Subject: a\nBcc: evil@example.jp\n\n", 0, "not Bcc"},
	    {"Subject: a\nX-Mailmoat-Verdict: clean\n\n", 0,
	     "t.txt:2: X-Mailmoat headers"},
	    {" folded\nSubject: a\n\n", 0, "t.txt:1: continuation line without a header"},
	    {"Subject a\n\n", 0, "t.txt:1: expected"},
	    {"Sub ject: a\n\n", 0, "t.txt:1: expected"},
	    {"Subject: a\nX-1: 1\nX-2: 2\nX-3: 3\nX-4: 4\nX-5: 5\nX-6: 6\nX-7: 7\nX-8: "
	     "8\n"
	     "X-9: 9\n\n",
	     0, "t.txt:10: at most 8 X- headers"},
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = cases[i].len != 0 ? cases[i].len : strlen(cases[i].text);
		struct notice_template *t;

		err[0] = '\0';
		t = notice_template_parse("t.txt", cases[i].text, n, err, sizeof(err));
		ck_assert_msg(t == NULL, "case %zu accepted", i);
		ck_assert_msg(strstr(err, cases[i].want) != NULL,
		              "case %zu: \"%s\", want \"%s\"", i, err, cases[i].want);
	}

	/* too many variables, too large */
	{
		GString *g = g_string_new("Subject: x\n\n");
		struct notice_template *t;

		for (int i = 0; i < 257; i++)
			g_string_append(g, "{{subject}}\n");
		t = notice_template_parse("t.txt", g->str, g->len, err, sizeof(err));
		ck_assert_ptr_null(t);
		ck_assert_ptr_nonnull(strstr(err, "t.txt:259: more than 256 variables"));
		g_string_truncate(g, 12);
		while (g->len <= NOTICE_TEMPLATE_MAX)
			g_string_append(g, "0123456789abcdef\n");
		t = notice_template_parse("t.txt", g->str, g->len, err, sizeof(err));
		ck_assert_ptr_null(t);
		ck_assert_ptr_nonnull(strstr(err, "larger than 65536"));
		g_string_free(g, TRUE);
	}
}
END_TEST

/* Writes text to dir/name and returns the path (g_free it). */
static char *write_file(const char *dir, const char *name, const char *text, size_t len)
{
	char *path = g_build_filename(dir, name, NULL);
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(text, 1, len, f), len);
	fclose(f);
	return path;
}

START_TEST(tmpl_load_files)
{
	char tmpl[] = "/tmp/test_notice.XXXXXX";
	char *dir = g_mkdtemp(tmpl), *path, *big, err[512];
	struct notice_template *t, *t2;
	struct msg_headers h = {0};
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *out, *body, *v;
	size_t len;
	/* CRLF, a byte-order mark, comments, a continuation line, lower-case name */
	static const char crlf[] = "\xef\xbb\xbf# mine\r\nsubject: [mailmoat: own]\r\n"
	                           "  {{subject}}\r\n# between\r\nx-site: HQ\r\n\r\n"
	                           "Own text {{{{ {{quarantine_id}} }}\r\n\r\n\r\n";

	ck_assert_ptr_nonnull(dir);
	path = write_file(dir, "own.txt", crlf, sizeof(crlf) - 1);
	t = notice_template_load(path, err, sizeof(err));
	ck_assert_msg(t != NULL, "%s", err);
	h.subject = h.subject_utf8 = "hello";
	m = build_with(&h, &ni, t, &out, &len);
	v = decoded(m, "Subject");
	ck_assert_str_eq(v, "[mailmoat: own] hello");
	g_free(v);
	check_raw(m, "X-site", "HQ");
	body = body_of(m);
	ck_assert_str_eq(body, "Own text {{ " QID " }}\n\n");
	g_free(body);
	g_object_unref(m);
	free(out);
	g_free(path);

	/* refcounted: the last release frees */
	t2 = notice_template_ref(t);
	ck_assert_ptr_eq(t2, t);
	notice_template_free(&t);
	ck_assert_ptr_null(t);
	ni.tmpl = t2;
	out = build(&h, &ni, &len);
	free(out);
	notice_template_free(&t2);
	notice_template_free(&t2); /* NULL: nothing */

	/* errors name the file */
	path = write_file(dir, "bad.txt", "Subject: x\n\n{{nope}}\n", 21);
	ck_assert_ptr_null(notice_template_load(path, err, sizeof(err)));
	v = g_strdup_printf("%s:3: unknown variable", path);
	ck_assert_ptr_nonnull(strstr(err, v));
	g_free(v);
	ck_assert_int_eq(notice_templates_check(dir, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "bad.txt:3:"));
	unlink(path);
	g_free(path);
	ck_assert_int_eq(notice_templates_check(dir, err, sizeof(err)), 1);

	ck_assert_ptr_null(notice_template_load("/nonexistent/x.txt", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.txt: "));
	ck_assert_ptr_null(notice_template_load(dir, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
	big = g_malloc(NOTICE_TEMPLATE_MAX + 100);
	memcpy(big, "Subject: x\n\n", 12);
	memset(big + 12, 'a', NOTICE_TEMPLATE_MAX + 88);
	path = write_file(dir, "big.txt", big, NOTICE_TEMPLATE_MAX + 100);
	ck_assert_ptr_null(notice_template_load(path, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "larger than"));
	unlink(path);
	g_free(path);
	/* exactly at the limit is fine */
	path = write_file(dir, "max.txt", big, NOTICE_TEMPLATE_MAX);
	t = notice_template_load(path, err, sizeof(err));
	ck_assert_msg(t != NULL, "%s", err);
	notice_template_free(&t);
	unlink(path);
	g_free(path);
	g_free(big);

	/* names: a file in the directory first, then the built-ins */
	path = write_file(dir, "ja.txt", "Subject: site ja\n\nsite\n", 23);
	t = notice_template_open(dir, "ja", err, sizeof(err));
	ck_assert_msg(t != NULL, "%s", err);
	ck_assert_str_eq(notice_template_name(t), path);
	notice_template_free(&t);
	t = notice_template_open(dir, "en", err, sizeof(err));
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(notice_template_name(t), "built-in en");
	notice_template_free(&t);
	t = notice_template_open(NULL, "ja+en", err, sizeof(err));
	ck_assert_ptr_nonnull(t);
	notice_template_free(&t);
	t = notice_template_open(dir, "own", err, sizeof(err));
	ck_assert_msg(t != NULL, "%s", err);
	notice_template_free(&t);
	ck_assert_ptr_null(notice_template_open(dir, "fr", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "fr.txt"));
	ck_assert_ptr_null(notice_template_open(NULL, "fr", err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "not built in"));
	ck_assert_ptr_null(notice_template_open(dir, "a b", err, sizeof(err)));
	ck_assert_ptr_null(notice_template_open(dir, "..", err, sizeof(err)));
	v = g_build_filename(dir, "own.txt", NULL);
	t = notice_template_open("/nonexistent", v, err, sizeof(err));
	ck_assert_msg(t != NULL, "%s", err);
	notice_template_free(&t);
	g_free(v);
	unlink(path);
	g_free(path);
	v = g_build_filename(dir, "own.txt", NULL);
	unlink(v);
	g_free(v);
	ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(tmpl_verdict_kinds)
{
	static const struct {
		const char *verdict, *header, *ja, *en, *reason_en;
	} kinds[] = {
	    {"infected", "infected", "ウイルス隔離", "virus quarantined", "Threat:"},
	    {"malicious", "infected", "ウイルス隔離", "virus quarantined", "Threat:"},
	    {"error", "error", "検査エラーにより隔離", "quarantined, scan error",
	     "Error:"},
	    {"scan_error", "error", "検査エラーにより隔離", "quarantined, scan error",
	     "Error:"},
	    {"encrypted_archive", "encrypted_archive", "暗号化ファイルのため隔離",
	     "quarantined, encrypted archive", "File:"},
	    {"blocked_attachment", "blocked_attachment", "添付ファイル制限により隔離",
	     "quarantined, blocked attachment", "Attachment:"},
	    {"oversize", "oversize", "サイズ超過により隔離", "quarantined, too large",
	     "Details:"},
	    {"denied_sender", "denied_sender", "差出人制限により隔離",
	     "quarantined, sender denied", "Reason:"},
	    {"new kind!\r\nX: y", "new_kind___X__y", "ポリシーにより隔離",
	     "quarantined by policy", "Reason:"},
	};
	struct msg_headers h;

	read_str(SAMPLE_FOLDED, &h);
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		struct notice_info ni = {kinds[i].verdict, SIG, QID, ADMIN, 0,
		                         "the reason",     NULL};
		GMimeMessage *m;
		char *out, *body, *subj, *want, *line;
		const char *en;
		size_t len;

		m = build_with(&h, &ni, NULL, &out, &len);
		check_raw(m, "X-Mailmoat-Verdict", kinds[i].header);
		subj = decoded(m, "Subject");
		want = g_strdup_printf("[mailmoat: %s / %s] %s", kinds[i].ja, kinds[i].en,
		                       SUBJECT_JA);
		ck_assert_str_eq(subj, want);
		body = body_of(m);
		ck_assert_ptr_nonnull(strstr(body, "隔離されました"));
		en = strstr(body, "This message was quarantined by mailmoat.");
		ck_assert_ptr_nonnull(en);
		/* the reason, labelled and aligned with the other values, twice */
		line = g_strdup_printf("\n  %-17s the reason\n", kinds[i].reason_en);
		ck_assert_msg(strstr(en, line) != NULL, "no \"%s\" in %s", line, en);
		ck_assert_ptr_nonnull(strstr(body, "the reason"));
		ck_assert(strstr(body, "the reason") < en);
		ck_assert_ptr_nonnull(strstr(en, ", so this\nnotice was delivered"));
		ck_assert_ptr_nonnull(strstr(body, "ため、"));
		ck_assert_ptr_null(strstr(body, "{{"));
		check_body_lines(out, len, 76);
		check_encoded_header(out, len, "Subject");
		g_free(line);
		g_free(body);
		g_free(subj);
		g_free(want);
		g_object_unref(m);
		free(out);
	}
	notice_headers_free(&h);
}
END_TEST

START_TEST(tmpl_padding)
{
	static const uint64_t extra[] = {1, 2, 3, 77, 78, 79, 157, 4096};
	char err[512], *path = shipped_path("en");
	struct notice_template *t = notice_template_load(path, err, sizeof(err));
	struct msg_headers h;
	struct notice_info ni = info(0);
	GMimeMessage *m;
	char *base, *base_body;
	size_t blen, i;

	ck_assert_msg(t != NULL, "%s", err);
	read_str(SAMPLE_FOLDED, &h);
	ni.tmpl = t;
	base = build(&h, &ni, &blen);
	m = reparse(base, blen);
	base_body = rstrip_ws(body_of(m));
	ck_assert_ptr_nonnull(strstr(base_body, "Original date:"));
	g_object_unref(m);
	for (i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		check_padded_with(&h, t, base, blen, base_body, blen + extra[i]);
	for (i = 0; i < 2; i++) {
		char *out;
		size_t len;

		ni.pad_to = i == 0 ? blen : 10;
		out = build(&h, &ni, &len);
		ck_assert_uint_eq(len, blen);
		ck_assert(memcmp(out, base, len) == 0);
		free(out);
	}
	g_free(base_body);
	free(base);
	notice_headers_free(&h);
	notice_template_free(&t);
	g_free(path);
}
END_TEST

struct thread_arg {
	const char *ref;
	size_t ref_len;
	const struct notice_template *tmpl;
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

		ni.tmpl = a->tmpl;
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

/* Eight threads build the same notice with template t (NULL: the default). */
static void run_threads(const struct notice_template *t)
{
	struct msg_headers h;
	struct notice_info ni = info(0);
	struct thread_arg args[8];
	pthread_t tids[8];
	char *ref;
	size_t len;
	int i;

	read_str(SAMPLE_FOLDED, &h);
	ni.tmpl = t;
	ref = build(&h, &ni, &len);
	ni.pad_to = len + 1000;
	free(ref);
	ref = build(&h, &ni, &len);
	for (i = 0; i < 8; i++) {
		args[i].ref = ref;
		args[i].ref_len = len;
		args[i].tmpl = t;
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

START_TEST(threads)
{
	run_threads(NULL);
}
END_TEST

START_TEST(threads_template)
{
	/* one loaded template, read by every thread at once */
	char err[512], *path = shipped_path("ja");
	struct notice_template *t = notice_template_load(path, err, sizeof(err));

	ck_assert_msg(t != NULL, "%s", err);
	run_threads(t);
	notice_template_free(&t);
	g_free(path);
}
END_TEST

static Suite *notice_suite(void)
{
	Suite *s = suite_create("notice");
	TCase *tr = tcase_create("read");
	TCase *tb = tcase_create("build");
	TCase *tp = tcase_create("pad");
	TCase *tt = tcase_create("template");

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
	tcase_add_test(tt, tmpl_default_unchanged);
	tcase_add_test(tt, tmpl_shipped_load_and_render);
	tcase_add_test(tt, tmpl_every_variable);
	tcase_add_test(tt, tmpl_fallbacks);
	tcase_add_test(tt, tmpl_subject_folding);
	tcase_add_test(tt, tmpl_long_names);
	tcase_add_test(tt, tmpl_header_injection);
	tcase_add_test(tt, tmpl_load_errors);
	tcase_add_test(tt, tmpl_load_files);
	tcase_add_test(tt, tmpl_verdict_kinds);
	tcase_add_test(tt, tmpl_padding);
	tcase_add_test(tt, threads_template);
	tcase_add_test(tp, pad_range);
	tcase_add_test(tp, pad_large);
	tcase_add_test(tp, pad_smaller);
	tcase_set_timeout(tp, 60); /* sanitizer builds parse megabytes slowly */
	suite_add_tcase(s, tr);
	suite_add_tcase(s, tb);
	suite_add_tcase(s, tp);
	suite_add_tcase(s, tt);
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
