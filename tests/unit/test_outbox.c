/*
 * test_outbox.c - Check suite for proxy/outbox.c (notice.admin_copy).
 *
 * The report: its headers (CRLF, at most 78 octets a line, ASCII only),
 * the Subject RFC 2047-encoded for Japanese text and decoded back by GMime
 * exactly, the body's fields (decoded from quoted-printable by GMime), no
 * header injection from hostile logins or subjects, and no byte of the
 * original (an EICAR message through the real msgjob hook). The outbox:
 * files written 0600 in a 0700 directory, a fake sender driving the
 * lifecycle (sent: removed; failed: renamed ID+N+DUE.eml; retried when
 * due), a relay failure charged to every due report after one try, the
 * backoff schedule (1 min doubling to 1 h), the bound of OUTBOX_MAX_FILES,
 * the 7-day expiry, stale temporary files, and the loop side (timer, a
 * wake-up from another thread, a retry, libcurl against a closed port).
 */
#include "proxy/outbox.h"

#include "policy/config.h"
#include "policy/notice.h"
#include "proxy/msgjob.h"
#include "proxy/server.h"
#include "proxy/spool.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <gmime/gmime.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ID_A "20261129T063301Z-0000000a"
#define ID_B "20261129T063302Z-0000000b"
#define ID_C "20261129T063303Z-0000000c"
#define FROM "mailmoat@example.test"
#define TO "admin@example.test"

static char base[64];
static char obdir[128];

static void setup(void)
{
	snprintf(base, sizeof(base), "/tmp/mm-outbox-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(base));
	snprintf(obdir, sizeof(obdir), "%s/%s", base, OUTBOX_DIR);
	notice_global_init();
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void teardown(void)
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const struct outbox_report rep_ascii = {
    .id = ID_A,
    .when = 1795934018, /* 2026-11-29T06:33:38Z */
    .user = "taro",
    .upstream = "127.0.0.1:110",
    .protocol = "pop3",
    .session = "3fa2c91e",
    .message = "msg=3 uidl=abc",
    .verdict = "infected",
    .signature = "Eicar-Test-Signature",
    .from = "Mallory <mallory@example.test>",
    .subject = "Invoice 42",
    .date = "Sun, 29 Nov 2026 15:30:00 +0900",
    .size = 1234,
};

static char *render(const struct outbox_report *r, size_t *len_r)
{
	char *out = NULL;

	ck_assert_int_eq(outbox_render(r, FROM, TO, &out, len_r), 0);
	ck_assert_ptr_nonnull(out);
	/* NUL-terminated copy for the string checks */
	out = realloc(out, *len_r + 1);
	out[*len_r] = '\0';
	return out;
}

/*
 * A valid message: CRLF line ends only, header lines of at most 78 octets
 * of ASCII, body lines of at most 76 (quoted-printable), a blank line.
 */
static void check_wellformed(const char *text, size_t len)
{
	const char *end = strstr(text, "\r\n\r\n");
	size_t hdr_len, line = 0;

	ck_assert_ptr_nonnull(end);
	hdr_len = (size_t)(end - text) + 2;
	ck_assert(len >= 2 && memcmp(text + len - 2, "\r\n", 2) == 0);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)text[i];

		if (c == '\r') {
			ck_assert_msg(i + 1 < len && text[i + 1] == '\n',
			              "bare CR at %zu", i);
			ck_assert_uint_le(line, i < hdr_len ? 78 : 76);
			line = 0;
			i++;
			continue;
		}
		ck_assert_msg(c != '\n', "bare LF at %zu", i);
		ck_assert_msg(c >= 0x20 && c < 0x7f, "octet %02x at %zu", c, i);
		line++;
	}
}

static GMimeMessage *parse(const char *text, size_t len)
{
	GMimeStream *st = g_mime_stream_mem_new_with_buffer(text, len);
	GMimeParser *p = g_mime_parser_new_with_stream(st);
	GMimeMessage *m = g_mime_parser_construct_message(p, NULL);

	g_object_unref(p);
	g_object_unref(st);
	ck_assert_ptr_nonnull(m);
	return m;
}

/* The decoded text of the message's only part, LF lines (g_free it). */
static char *body_of(GMimeMessage *m)
{
	GMimeObject *part = g_mime_message_get_mime_part(m);
	char *t, *o;

	ck_assert(GMIME_IS_TEXT_PART(part));
	t = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
	o = t;
	for (const char *c = t; *c != '\0'; c++) {
		if (c[0] != '\r' || c[1] != '\n')
			*o++ = *c;
	}
	*o = '\0';
	return t;
}

/* The value of "  key: value" in the body (g_free it), or NULL. */
static char *field_of(const char *body, const char *key)
{
	char *needle = g_strdup_printf("\n  %s:", key);
	const char *p = strstr(body, needle), *e;
	char *v;

	if (p == NULL) {
		g_free(needle);
		return NULL;
	}
	p += strlen(needle);
	g_free(needle);
	e = strchr(p, '\n');
	v = g_strndup(p, e != NULL ? (size_t)(e - p) : strlen(p));
	return g_strstrip(v);
}

static void check_field(const char *body, const char *key, const char *want)
{
	char *v = field_of(body, key);

	ck_assert_msg(v != NULL, "no %s: in the body", key);
	ck_assert_str_eq(v, want);
	g_free(v);
}

/* The raw header block of text up to the blank line (g_free it). */
static char *headers_of(const char *text)
{
	return g_strndup(text, (size_t)(strstr(text, "\r\n\r\n") - text) + 2);
}

START_TEST(render_headers_and_body)
{
	size_t len;
	char *text = render(&rep_ascii, &len), *hdr = headers_of(text), *body;
	GMimeMessage *m;

	check_wellformed(text, len);
	ck_assert_ptr_eq(strstr(text, "Date: Sun, 29 Nov 2026 06:33:38 +0000\r\n"), text);
	ck_assert_ptr_nonnull(strstr(hdr, "\r\nFrom: mailmoat <" FROM ">\r\n"));
	ck_assert_ptr_nonnull(strstr(hdr, "\r\nTo: " TO "\r\n"));
	ck_assert_ptr_nonnull(
	    strstr(hdr, "\r\nSubject: [mailmoat] quarantined: infected for taro\r\n"));
	ck_assert_ptr_nonnull(
	    strstr(hdr, "\r\nMessage-ID: <" ID_A ".admin-copy@example.test>\r\n"));
	ck_assert_ptr_nonnull(strstr(hdr, "\r\nAuto-Submitted: auto-generated\r\n"));
	ck_assert_ptr_nonnull(strstr(hdr, "\r\nX-Mailmoat-Quarantine-Id: " ID_A "\r\n"));
	ck_assert_ptr_nonnull(strstr(hdr, "\r\nMIME-Version: 1.0\r\n"));
	ck_assert_ptr_nonnull(
	    strstr(hdr, "\r\nContent-Type: text/plain; charset=utf-8\r\n"));
	ck_assert_ptr_nonnull(
	    strstr(hdr, "\r\nContent-Transfer-Encoding: quoted-printable\r\n"));

	m = parse(text, len);
	ck_assert_str_eq(g_mime_message_get_subject(m),
	                 "[mailmoat] quarantined: infected for taro");
	body = body_of(m);
	check_field(body, "id", ID_A);
	check_field(body, "time", "2026-11-29T06:33:38Z");
	check_field(body, "user", "taro");
	check_field(body, "upstream", "127.0.0.1:110");
	check_field(body, "protocol", "pop3");
	check_field(body, "session", "3fa2c91e");
	check_field(body, "message", "msg=3 uidl=abc");
	check_field(body, "verdict", "infected");
	check_field(body, "signature", "Eicar-Test-Signature");
	check_field(body, "from", "Mallory <mallory@example.test>");
	check_field(body, "subject", "Invoice 42");
	check_field(body, "date", "Sun, 29 Nov 2026 15:30:00 +0900");
	check_field(body, "size", "1234 octets");
	ck_assert_ptr_nonnull(strstr(body, "\n  mailmoat quarantine show " ID_A "\n"));
	ck_assert_ptr_nonnull(strstr(body, "\n  mailmoat quarantine release " ID_A "\n"));
	ck_assert_ptr_null(strstr(body, "--config"));
	g_free(body);
	g_object_unref(m);
	g_free(hdr);
	free(text);
}
END_TEST

START_TEST(render_missing_values_and_config_path)
{
	struct outbox_report r = {.id = ID_B, .when = 0, .truncated = 1, .size = 7};
	size_t len;
	char *text, *body;
	GMimeMessage *m;

	r.config_path = "/srv/mail moat/it's.yaml";
	text = render(&r, &len);
	check_wellformed(text, len);
	m = parse(text, len);
	ck_assert_str_eq(g_mime_message_get_subject(m),
	                 "[mailmoat] quarantined: detection for unknown user");
	body = body_of(m);
	check_field(body, "user", "-");
	check_field(body, "from", "-");
	check_field(body, "subject", "-");
	ck_assert_ptr_nonnull(strstr(body, "7 octets (truncated"));
	ck_assert_ptr_nonnull(strstr(body, "mailmoat quarantine release " ID_B
	                                   " --config '/srv/mail moat/it'\\''s.yaml'\n"));
	g_free(body);
	g_object_unref(m);
	free(text);

	/* the default configuration file is not named */
	r.config_path = "/etc/mailmoat/mailmoat.yaml";
	text = render(&r, &len);
	ck_assert_ptr_null(strstr(text, "--config"));
	free(text);
}
END_TEST

/* Every encoded word of the header block is at most 75 octets (RFC 2047 2). */
static unsigned check_encoded_words(const char *hdr)
{
	const char *p = hdr;
	unsigned n = 0;

	while ((p = strstr(p, "=?")) != NULL) {
		/* =?charset?X?text?= : the text starts after the third '?' */
		const char *q = strchr(p + 2, '?'), *e;

		ck_assert_ptr_nonnull(q);
		ck_assert_int_eq(q[2], '?');
		e = strstr(q + 3, "?=");
		ck_assert_ptr_nonnull(e);
		ck_assert_int_le(e + 2 - p, 75);
		n++;
		p = e + 2;
	}
	return n;
}

START_TEST(render_japanese)
{
	struct outbox_report r = rep_ascii;
	size_t len;
	char *text, *hdr, *body, *want;
	GString *longuser = g_string_new(NULL);
	GMimeMessage *m;

	r.user = "山田太郎";
	r.from = "山田 花子 <hanako@example.jp>";
	r.subject = "請求書のご案内（至急）";
	text = render(&r, &len);
	check_wellformed(text, len);
	hdr = headers_of(text);
	ck_assert_ptr_nonnull(strstr(hdr, "Subject: [mailmoat] quarantined: infected for "
	                                  "=?UTF-8?B?"));
	ck_assert_uint_ge(check_encoded_words(hdr), 1);
	m = parse(text, len);
	ck_assert_str_eq(g_mime_message_get_subject(m),
	                 "[mailmoat] quarantined: infected for 山田太郎");
	body = body_of(m);
	check_field(body, "user", "山田太郎");
	check_field(body, "from", "山田 花子 <hanako@example.jp>");
	check_field(body, "subject", "請求書のご案内（至急）");
	g_free(body);
	g_object_unref(m);
	g_free(hdr);
	free(text);

	/* a long one: folded into several words, cut at 128 octets with "..." */
	for (int i = 0; i < 60; i++)
		g_string_append(longuser, "あ");
	r.user = longuser->str;
	text = render(&r, &len);
	check_wellformed(text, len);
	hdr = headers_of(text);
	ck_assert_uint_ge(check_encoded_words(hdr), 4);
	m = parse(text, len);
	want = g_strdup_printf("[mailmoat] quarantined: infected for %.*s...", 42 * 3,
	                       longuser->str);
	ck_assert_str_eq(g_mime_message_get_subject(m), want);
	g_free(want);
	g_object_unref(m);
	g_free(hdr);
	free(text);

	/* a 4-octet character before 3-octet ones: no B word of it ends
	   unpadded, so it goes in a Q word; the text still decodes whole */
	g_string_assign(longuser, "\xf0\x9f\x98\x80");
	for (int i = 0; i < 13; i++)
		g_string_append(longuser, "山");
	r.user = longuser->str;
	text = render(&r, &len);
	check_wellformed(text, len);
	ck_assert_ptr_nonnull(strstr(text, "=?UTF-8?Q?=F0=9F=98=80?="));
	m = parse(text, len);
	want = g_strdup_printf("[mailmoat] quarantined: infected for %s", longuser->str);
	ck_assert_str_eq(g_mime_message_get_subject(m), want);
	g_free(want);
	g_object_unref(m);
	free(text);
	g_string_free(longuser, TRUE);
}
END_TEST

START_TEST(render_hostile_text)
{
	struct outbox_report r = rep_ascii;
	size_t len;
	char *text, *hdr, *body;
	GMimeMessage *m;

	/* SECURITY: no header injection, no fake encoded words, no bidi tricks */
	r.user = "taro\r\nBcc: victim@example.test";
	r.subject = "hi\r\nX-Evil: 1\r\n\r\nbody";
	r.from = "evil \xe2\x80\xae"
	         "gpj.exe <e@example.test>";
	r.signature = "sig\x01\x7f\xc2\x85"
	              "end";
	r.date = "\xff\xfe bad utf-8";
	text = render(&r, &len);
	check_wellformed(text, len);
	hdr = headers_of(text);
	ck_assert_ptr_null(strstr(text, "\r\nBcc:"));
	ck_assert_ptr_null(strstr(text, "\r\nX-Evil:"));
	m = parse(text, len);
	ck_assert_str_eq(g_mime_message_get_subject(m),
	                 "[mailmoat] quarantined: infected for taro Bcc: "
	                 "victim@example.test");
	ck_assert_ptr_null(g_mime_object_get_header(GMIME_OBJECT(m), "Bcc"));
	body = body_of(m);
	ck_assert_ptr_null(strstr(body, "\xe2\x80\xae"));
	check_field(body, "from", "evil \xef\xbf\xbdgpj.exe <e@example.test>");
	check_field(body, "subject", "hi  X-Evil: 1    body");
	check_field(body, "signature",
	            "sig  \xef\xbf\xbd"
	            "end");
	check_field(body, "date", "\xef\xbf\xbd\xef\xbf\xbd bad utf-8");
	g_free(body);
	g_object_unref(m);
	g_free(hdr);
	free(text);

	/* a login that looks like an encoded word is encoded itself */
	r.user = "=?UTF-8?B?Zm9v?=";
	text = render(&r, &len);
	m = parse(text, len);
	ck_assert_str_eq(g_mime_message_get_subject(m),
	                 "[mailmoat] quarantined: infected for =?UTF-8?B?Zm9v?=");
	g_object_unref(m);
	free(text);
}
END_TEST

/* The EICAR test string, assembled so this file is no test virus itself. */
static char *eicar(void)
{
	return g_strconcat("X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS",
	                   "-TEST-FILE!$H+H*", NULL);
}

static char *read_file(const char *path, size_t *len_r)
{
	gchar *data = NULL;
	gsize len = 0;

	if (!g_file_get_contents(path, &data, &len, NULL))
		return NULL;
	*len_r = len;
	return data;
}

static struct config *test_config(void)
{
	struct config *cfg = calloc(1, sizeof(*cfg));

	ck_assert_ptr_nonnull(cfg);
	config_defaults(cfg);
	cfg->refs = 1;
	snprintf(cfg->quarantine_dir, sizeof(cfg->quarantine_dir), "%s", base);
	snprintf(cfg->copy_to, sizeof(cfg->copy_to), "%s", TO);
	snprintf(cfg->copy_from, sizeof(cfg->copy_from), "%s", FROM);
	snprintf(cfg->copy_smtp_url, sizeof(cfg->copy_smtp_url), "smtp://127.0.0.1:1");
	return cfg;
}

START_TEST(hook_writes_report_without_original)
{
	static struct server srv;
	struct config *cfg = test_config();
	struct msgjob *job = calloc(1, sizeof(*job));
	struct msg_headers h;
	struct spool *sp = spool_new(1 << 20, "/tmp", 0);
	char *ev = eicar(), *b64, *msg, *path, *data;
	size_t len;
	struct stat st;
	GMimeMessage *m;

	b64 = g_base64_encode((const guchar *)ev, strlen(ev));
	msg = g_strdup_printf(
	    "From: =?UTF-8?B?5bGx55Sw?= <yamada@example.jp>\r\n"
	    "Subject: =?UTF-8?B?6KuL5rGC5pu4?=\r\n"
	    "Date: Sun, 29 Nov 2026 15:30:00 +0900\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
	    "--b\r\nContent-Type: text/plain\r\n\r\n%s\r\n"
	    "--b\r\nContent-Type: application/octet-stream; name=eicar.com\r\n"
	    "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--b--\r\n",
	    ev, b64);
	ck_assert_int_eq(spool_append(sp, msg, strlen(msg)), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	memset(&h, 0, sizeof(h));
	ck_assert_int_eq(notice_read_headers(sp, &h), 0);

	memset(&srv, 0, sizeof(srv));
	job->srv = &srv;
	job->cfg = cfg;
	job->spool = sp;
	snprintf(job->quar_id, sizeof(job->quar_id), ID_A);
	snprintf(job->user, sizeof(job->user), "yamada");
	snprintf(job->upstream, sizeof(job->upstream), "127.0.0.1:110");
	snprintf(job->protocol, sizeof(job->protocol), "pop3");
	snprintf(job->session, sizeof(job->session), "0badcafe");
	job->verdict.result = SCAN_INFECTED;
	snprintf(job->verdict.signature, sizeof(job->verdict.signature),
	         "Eicar-Test-Signature");
	outbox_quarantined(job, &h);

	ck_assert_int_eq(stat(obdir, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0700);
	path = g_strdup_printf("%s/%s.eml", obdir, ID_A);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0600);
	data = read_file(path, &len);
	ck_assert_ptr_nonnull(data);
	check_wellformed(data, len);
	/* nothing of the original's content: neither raw nor base64 */
	ck_assert_ptr_null(g_strstr_len(data, (gssize)len, "EICAR"));
	ck_assert_ptr_null(g_strstr_len(data, (gssize)len, "X5O!P"));
	ck_assert_ptr_null(g_strstr_len(data, (gssize)len, "WDVPIVAl"));
	m = parse(data, len);
	{
		char *body = body_of(m), *sz = g_strdup_printf("%zu octets", strlen(msg));

		ck_assert_ptr_null(strstr(body, "EICAR"));
		check_field(body, "id", ID_A);
		check_field(body, "user", "yamada");
		check_field(body, "signature", "Eicar-Test-Signature");
		check_field(body, "from", "山田 <yamada@example.jp>");
		check_field(body, "subject", "請求書");
		check_field(body, "date", "Sun, 29 Nov 2026 15:30:00 +0900");
		check_field(body, "size", sz);
		g_free(sz);
		g_free(body);
	}
	g_object_unref(m);
	g_free(data);
	g_free(path);

	/* the same message fetched again (the entry reused): no second report */
	job->quar_reused = 1;
	snprintf(job->quar_id, sizeof(job->quar_id), ID_B);
	outbox_quarantined(job, &h);
	path = g_strdup_printf("%s/%s.eml", obdir, ID_B);
	ck_assert_int_ne(access(path, F_OK), 0);
	/* the feature off: nothing either */
	job->quar_reused = 0;
	cfg->copy_to[0] = '\0';
	outbox_quarantined(job, &h);
	ck_assert_int_ne(access(path, F_OK), 0);
	g_free(path);

	notice_headers_free(&h);
	spool_unref(&sp);
	free(job);
	config_free(&cfg);
	g_free(msg);
	g_free(b64);
	g_free(ev);
}
END_TEST

/* ---- the pass with a fake sender ---- */

struct fake {
	int results[32]; /* per call; past nres: 0 */
	int nres;
	atomic_int calls;
	char ids[32][QUAR_ID_MAX];
	int bad_content;
};

static int fake_send(void *arg, const char *id, int fd, uint64_t size, char *why,
                     size_t whylen)
{
	struct fake *f = arg;
	int n = atomic_fetch_add(&f->calls, 1);
	char head[6] = "";
	struct stat st;

	if (n < 32)
		snprintf(f->ids[n], sizeof(f->ids[n]), "%s", id);
	if (read(fd, head, 5) != 5 || memcmp(head, "Date:", 5) != 0 ||
	    fstat(fd, &st) != 0 || (uint64_t)st.st_size != size)
		f->bad_content = 1;
	snprintf(why, whylen, "fake failure %d", n);
	return n < f->nres ? f->results[n] : 0;
}

static void queue(const char *id)
{
	struct outbox_report r = rep_ascii;
	char err[256] = "";

	r.id = id;
	ck_assert_msg(outbox_write(base, FROM, TO, &r, err, sizeof(err)) == 0, "%s", err);
}

static int cmp_names(gconstpointer a, gconstpointer b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in the outbox, sorted, joined with spaces (g_free it). */
static char *names(void)
{
	GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
	DIR *d = opendir(obdir);
	struct dirent *e;
	char *out;

	if (d != NULL) {
		while ((e = readdir(d)) != NULL) {
			if (e->d_name[0] != '.')
				g_ptr_array_add(a, g_strdup(e->d_name));
		}
		closedir(d);
	}
	g_ptr_array_sort(a, cmp_names);
	g_ptr_array_add(a, NULL);
	out = g_strjoinv(" ", (char **)a->pdata);
	g_ptr_array_free(a, TRUE);
	return out;
}

/* The one file whose name starts with id (g_free it), or NULL. */
static char *file_of(const char *id)
{
	DIR *d = opendir(obdir);
	struct dirent *e;
	char *found = NULL;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, id, strlen(id)) == 0) {
			ck_assert_ptr_null(found);
			found = g_strdup(e->d_name);
		}
	}
	closedir(d);
	return found;
}

static void pass(struct outbox_pass *p, struct fake *f, int64_t now_ms, uint64_t base_ms)
{
	memset(p, 0, sizeof(*p));
	p->quarantine_dir = base;
	p->to = TO;
	p->now_ms = now_ms;
	p->retry_base_ms = base_ms;
	p->send = fake_send;
	p->send_arg = f;
	ck_assert_int_eq(outbox_run_pass(p), 0);
}

START_TEST(lifecycle)
{
	struct fake f = {.results = {0, OUTBOX_FAIL, 0}, .nres = 3};
	struct outbox_pass p;
	int64_t t = wall_ms();
	unsigned attempts;
	int64_t due;
	char id[QUAR_ID_MAX], *name, *all;

	/* nothing queued yet: no directory, nothing to do */
	pass(&p, &f, t, 60000);
	ck_assert_int_eq(atomic_load(&f.calls), 0);
	ck_assert(p.next_due_ms == INT64_MAX);

	queue(ID_C);
	queue(ID_A);
	queue(ID_B);
	pass(&p, &f, t, 60000);
	ck_assert_int_eq(atomic_load(&f.calls), 3);
	ck_assert_int_eq(f.bad_content, 0);
	/* oldest id first */
	ck_assert_str_eq(f.ids[0], ID_A);
	ck_assert_str_eq(f.ids[1], ID_B);
	ck_assert_str_eq(f.ids[2], ID_C);
	ck_assert_uint_eq(p.sent, 2);
	ck_assert_uint_eq(p.failed, 1);
	ck_assert_uint_eq(p.waiting, 1);
	/* B waits for its second attempt, a base period from now */
	name = file_of(ID_B);
	ck_assert_ptr_nonnull(name);
	ck_assert_int_eq(outbox_name_parse(name, id, sizeof(id), &attempts, &due), 0);
	ck_assert_str_eq(id, ID_B);
	ck_assert_uint_eq(attempts, 1);
	ck_assert_int_ge(due, t + 60000);
	ck_assert_int_lt(due, t + 65000);
	ck_assert(p.next_due_ms == due);
	all = names();
	ck_assert_str_eq(all, name);
	g_free(all);

	/*
	 * not due yet: not tried. A second early, not a millisecond: the pass
	 * adds the time it has been running to now_ms (a long pass must not
	 * leave reports that fell due meanwhile), and under a sanitizer on a
	 * busy machine reaching this file can take a millisecond (it did).
	 */
	pass(&p, &f, due - 1000, 60000);
	ck_assert_int_eq(atomic_load(&f.calls), 3);
	ck_assert_uint_eq(p.waiting, 1);
	ck_assert(p.next_due_ms == due);
	/* due: sent, gone */
	pass(&p, &f, due, 60000);
	ck_assert_int_eq(atomic_load(&f.calls), 4);
	ck_assert_str_eq(f.ids[3], ID_B);
	ck_assert_uint_eq(p.sent, 1);
	ck_assert(p.next_due_ms == INT64_MAX);
	all = names();
	ck_assert_str_eq(all, "");
	g_free(all);
	g_free(name);
}
END_TEST

START_TEST(relay_failure_fails_all_due)
{
	struct fake f = {.results = {OUTBOX_FAIL_RELAY}, .nres = 1};
	struct outbox_pass p;
	int64_t t = wall_ms();
	const char *ids[] = {ID_A, ID_B, ID_C};

	queue(ID_A);
	queue(ID_B);
	queue(ID_C);
	pass(&p, &f, t, 60000);
	/* one try: the relay cannot be reached, the others are not tried */
	ck_assert_int_eq(atomic_load(&f.calls), 1);
	ck_assert_uint_eq(p.failed, 3);
	ck_assert_uint_eq(p.sent, 0);
	for (int i = 0; i < 3; i++) {
		char *name = file_of(ids[i]), id[QUAR_ID_MAX];
		unsigned attempts;
		int64_t due;

		ck_assert_ptr_nonnull(name);
		ck_assert_int_eq(outbox_name_parse(name, id, sizeof(id), &attempts, &due),
		                 0);
		ck_assert_uint_eq(attempts, 1);
		ck_assert_int_ge(due, t + 60000);
		g_free(name);
	}
}
END_TEST

START_TEST(backoff_schedule)
{
	static const uint64_t want[] = {60000,   120000,  240000,  480000, 960000,
	                                1920000, 3600000, 3600000, 3600000};
	struct fake f = {.nres = 32};
	struct outbox_pass p;
	int64_t now = wall_ms();

	for (unsigned i = 0; i < 9; i++)
		ck_assert_uint_eq(outbox_backoff_ms(i + 1, 60000), want[i]);
	ck_assert_uint_eq(outbox_backoff_ms(1000, 60000), 3600000);
	ck_assert_uint_eq(outbox_backoff_ms(1, 500), 500);
	ck_assert_uint_eq(outbox_backoff_ms(3, 500), 2000);
	ck_assert_uint_eq(outbox_backoff_ms(30, 500), 30000);

	/* the same schedule through the file names, each pass when it is due */
	for (int i = 0; i < 32; i++)
		f.results[i] = OUTBOX_FAIL;
	queue(ID_A);
	for (unsigned i = 0; i < 9; i++) {
		char *name, id[QUAR_ID_MAX];
		unsigned attempts;
		int64_t due;

		pass(&p, &f, now, 60000);
		ck_assert_uint_eq(p.failed, 1);
		name = file_of(ID_A);
		ck_assert_int_eq(outbox_name_parse(name, id, sizeof(id), &attempts, &due),
		                 0);
		ck_assert_uint_eq(attempts, i + 1);
		ck_assert_int_ge(due - now, (int64_t)want[i]);
		ck_assert_int_lt(due - now, (int64_t)want[i] + 5000);
		g_free(name);
		now = due;
	}
	ck_assert_int_eq(atomic_load(&f.calls), 9);
}
END_TEST

START_TEST(bounded)
{
	struct outbox_report r = rep_ascii;
	char err[256], path[256];
	int fd;

	ck_assert_int_eq(mkdir(obdir, 0700), 0);
	for (int i = 0; i < OUTBOX_MAX_FILES - 1; i++) {
		snprintf(path, sizeof(path), "%s/20261129T000000Z-%08x.eml", obdir, i);
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
		ck_assert_int_ge(fd, 0);
		close(fd);
	}
	r.id = ID_A;
	ck_assert_int_eq(outbox_write(base, FROM, TO, &r, err, sizeof(err)), 0);
	/* 1000 wait now: the next one is not written */
	r.id = ID_B;
	ck_assert_int_eq(outbox_write(base, FROM, TO, &r, err, sizeof(err)), 1);
	snprintf(path, sizeof(path), "%s/%s.eml", obdir, ID_B);
	ck_assert_int_ne(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/%s.eml.tmp", obdir, ID_B);
	ck_assert_int_ne(access(path, F_OK), 0);
	/* room again after one went */
	snprintf(path, sizeof(path), "%s/%s.eml", obdir, ID_A);
	ck_assert_int_eq(unlink(path), 0);
	ck_assert_int_eq(outbox_write(base, FROM, TO, &r, err, sizeof(err)), 0);
	/* an id that is no file name is refused */
	r.id = "../escape";
	ck_assert_int_eq(outbox_write(base, FROM, TO, &r, err, sizeof(err)), -1);
}
END_TEST

static void set_age(const char *id, int64_t age_s)
{
	char *name = file_of(id), *path;
	struct timespec ts[2];

	ck_assert_ptr_nonnull(name);
	path = g_strdup_printf("%s/%s", obdir, name);
	clock_gettime(CLOCK_REALTIME, &ts[0]);
	ts[0].tv_sec -= age_s;
	ts[1] = ts[0];
	ck_assert_int_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
	g_free(path);
	g_free(name);
}

START_TEST(expiry)
{
	struct fake f = {.nres = 0};
	struct outbox_pass p;
	char *all;

	queue(ID_A);
	queue(ID_B);
	queue(ID_C);
	set_age(ID_A, 8 * 86400);
	set_age(ID_B, 7 * 86400 - 3600);
	pass(&p, &f, wall_ms(), 60000);
	/* A is dropped unsent; B (almost a week) and C go */
	ck_assert_uint_eq(p.dropped, 1);
	ck_assert_uint_eq(p.sent, 2);
	ck_assert_int_eq(atomic_load(&f.calls), 2);
	ck_assert_str_eq(f.ids[0], ID_B);
	ck_assert_str_eq(f.ids[1], ID_C);
	all = names();
	ck_assert_str_eq(all, "");
	g_free(all);

	/* one that waits for a retry expires the same way */
	f.results[2] = OUTBOX_FAIL;
	f.nres = 3;
	queue(ID_A);
	pass(&p, &f, wall_ms(), 60000);
	ck_assert_uint_eq(p.failed, 1);
	set_age(ID_A, 8 * 86400);
	pass(&p, &f, wall_ms() + 120000, 60000);
	ck_assert_uint_eq(p.dropped, 1);
	ck_assert_int_eq(atomic_load(&f.calls), 3);
	all = names();
	ck_assert_str_eq(all, "");
	g_free(all);
}
END_TEST

START_TEST(names_and_leftovers)
{
	static const char *const bad[] = {
	    "x.txt",      ".hidden.eml",  "ID.eml.tmp",   "ID+0+5.eml", "ID+3.eml",
	    "ID+x+1.eml", "ID+3+12a.eml", "+3+5.eml",     "ID++5.eml",  "ID+3+.eml",
	    "a/b.eml",    ".eml",         "ID+3+5+6.eml",
	};
	struct fake f = {.nres = 0};
	struct outbox_pass p;
	char id[QUAR_ID_MAX], path[256], *all;
	unsigned attempts;
	int64_t due;
	int fd;

	ck_assert_int_eq(outbox_name_parse(ID_A ".eml", id, sizeof(id), &attempts, &due),
	                 0);
	ck_assert_str_eq(id, ID_A);
	ck_assert_uint_eq(attempts, 0);
	ck_assert_int_eq(due, 0);
	ck_assert_int_eq(outbox_name_parse(ID_A "+3+1795847618000.eml", id, sizeof(id),
	                                   &attempts, &due),
	                 0);
	ck_assert_str_eq(id, ID_A);
	ck_assert_uint_eq(attempts, 3);
	ck_assert_int_eq(due, 1795847618000);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(outbox_name_parse(bad[i], id, sizeof(id), &attempts, &due) <
		                  0,
		              "%s parsed", bad[i]);

	/* a pass leaves foreign files and fresh temporaries, removes stale ones */
	queue(ID_A);
	ck_assert_int_eq(mkdir(obdir, 0700) == 0 || errno == EEXIST, 1);
	snprintf(path, sizeof(path), "%s/notes.txt", obdir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	snprintf(path, sizeof(path), "%s/%s.eml.tmp", obdir, ID_B);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	snprintf(path, sizeof(path), "%s/%s.eml.tmp", obdir, ID_C);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	set_age(ID_C, 2 * 3600);
	pass(&p, &f, wall_ms(), 60000);
	ck_assert_uint_eq(p.sent, 1);
	all = names();
	ck_assert_str_eq(all, ID_B ".eml.tmp notes.txt");
	g_free(all);
}
END_TEST

START_TEST(stop_flag)
{
	struct fake f = {.nres = 0};
	struct outbox_pass p;
	atomic_int stop = 1;
	char *name;

	queue(ID_A);
	memset(&p, 0, sizeof(p));
	p.quarantine_dir = base;
	p.to = TO;
	p.now_ms = wall_ms();
	p.retry_base_ms = 60000;
	p.send = fake_send;
	p.send_arg = &f;
	p.stop = &stop;
	ck_assert_int_eq(outbox_run_pass(&p), 0);
	ck_assert_int_eq(atomic_load(&f.calls), 0);
	name = file_of(ID_A);
	ck_assert_str_eq(name, ID_A ".eml");
	g_free(name);
}
END_TEST

/* ---- the loop side ---- */

static char logpath[160];

/* Sends stderr (the log) to a file of the test's. */
static void capture_log(void)
{
	int fd;

	snprintf(logpath, sizeof(logpath), "%s.log", base);
	fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
	close(fd);
}

static char *log_text(void)
{
	size_t len = 0;
	char *t = read_file(logpath, &len);

	return t != NULL ? t : g_strdup("");
}

struct writer {
	struct server *srv;
	const char *id;
};

/* What a scan job does on the pool: write, then wake the sender. */
static void *writer_thread(void *arg)
{
	struct writer *w = arg;

	queue(w->id);
	outbox_notify(w->srv);
	return NULL;
}

static void tick(uv_timer_t *t)
{
	(void)t;
}

/* Runs the loop until cond(arg) or 10 s; returns cond's last value. */
static int run_until(uv_loop_t *loop, int (*cond)(void *), void *arg)
{
	int64_t end = wall_ms() + 10000;
	uv_timer_t t;
	int ok;

	/* the loop must not sleep past the deadline with nothing to wake it */
	uv_timer_init(loop, &t);
	uv_timer_start(&t, tick, 50, 50);
	while (!(ok = cond(arg)) && wall_ms() < end)
		uv_run(loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&t, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	return ok;
}

static int two_calls(void *arg)
{
	return atomic_load(&((struct fake *)arg)->calls) >= 2;
}

static void stop_and_drain(struct server *srv, uv_loop_t *loop)
{
	outbox_stop(srv);
	outbox_stop(srv); /* idempotent */
	ck_assert_int_eq(uv_run(loop, UV_RUN_DEFAULT), 0);
	ck_assert_int_eq(srv->outbox.started, 0);
	ck_assert_int_eq(uv_loop_close(loop), 0);
}

START_TEST(loop_wakeup_and_retry)
{
	static struct server srv;
	static uv_loop_t loop;
	struct config *cfg = test_config();
	struct fake f = {.results = {OUTBOX_FAIL}, .nres = 1};
	struct writer w = {&srv, ID_A};
	pthread_t th;
	char *all, *log;

	capture_log();
	setenv(OUTBOX_RETRY_ENV, "100", 1);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	memset(&srv, 0, sizeof(srv));
	srv.loop = &loop;
	srv.cfg = cfg;
	srv.outbox.send = fake_send;
	srv.outbox.send_arg = &f;
	outbox_start(&srv);
	ck_assert_uint_eq(srv.outbox.retry_base_ms, 100);
	ck_assert_int_eq(pthread_create(&th, NULL, writer_thread, &w), 0);
	pthread_join(th, NULL);
	/* the first try fails, the retry 100 ms later goes through */
	ck_assert(run_until(&loop, two_calls, &f));
	all = names();
	ck_assert_str_eq(all, "");
	g_free(all);
	stop_and_drain(&srv, &loop);
	outbox_notify(&srv); /* stopped: harmless */
	ck_assert_int_eq(atomic_load(&f.calls), 2);
	log = log_text();
	ck_assert_ptr_nonnull(strstr(log, "admin copy " ID_A " failed: fake failure 0 "
	                                  "(attempt 1, next in 1 s)"));
	ck_assert_ptr_nonnull(strstr(log, "admin copy " ID_A " sent to " TO));
	g_free(log);
	config_free(&cfg);
}
END_TEST

static int renamed(void *arg)
{
	char *name = file_of(arg);
	int r = name != NULL && strchr(name, '+') != NULL;

	g_free(name);
	return r;
}

/* A port nothing listens on (bound, then closed: nobody takes it that fast). */
static int closed_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(s, (struct sockaddr *)&a, &al), 0);
	close(s);
	return ntohs(a.sin_port);
}

/* libcurl for real: a relay that is down, then settings that are refused. */
static void smtp_fails(const char *url, const char *id, const char *want_log)
{
	static struct server srv;
	static uv_loop_t loop;
	struct config *cfg = test_config();
	char *log;

	capture_log();
	snprintf(cfg->copy_smtp_url, sizeof(cfg->copy_smtp_url), "%s", url);
	snprintf(cfg->copy_user, sizeof(cfg->copy_user), "mailmoat");
	snprintf(cfg->copy_password_file, sizeof(cfg->copy_password_file), "%s/pw", base);
	g_file_set_contents(cfg->copy_password_file, "s3cret-pw\nignored\n", -1, NULL);
	setenv(OUTBOX_RETRY_ENV, "60000", 1);
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	memset(&srv, 0, sizeof(srv));
	srv.loop = &loop;
	srv.cfg = cfg;
	outbox_start(&srv);
	queue(id);
	outbox_notify(&srv);
	ck_assert(run_until(&loop, renamed, (void *)id));
	stop_and_drain(&srv, &loop);
	log = log_text();
	ck_assert_msg(strstr(log, want_log) != NULL, "%s not in\n%s", want_log, log);
	ck_assert_ptr_nonnull(strstr(log, "(attempt 1, next in 60 s)"));
	/* SECURITY: the password never reaches the log */
	ck_assert_ptr_null(strstr(log, "s3cret"));
	g_free(log);
	config_free(&cfg);
}

START_TEST(smtp_relay_down)
{
	char *url = g_strdup_printf("smtp://127.0.0.1:%d", closed_port()), *want;

	want = g_strdup_printf("admin copy " ID_A " failed: smtp://127.0.0.1:%s",
	                       strrchr(url, ':') + 1);
	smtp_fails(url, ID_A, want);
	g_free(want);
	g_free(url);
}
END_TEST

START_TEST(smtp_settings_refused)
{
	smtp_fails("smtp://mailmoat:s3cret-pw@127.0.0.1:1", ID_B,
	           "credentials in the URL");
}
END_TEST

START_TEST(smtp_scheme_refused)
{
	char *log;

	smtp_fails("http://127.0.0.1:1", ID_C, "want smtp or smtps");
	/* said at start already */
	log = log_text();
	ck_assert_ptr_nonnull(strstr(log, "admin copy: notice.admin_copy.smtp_url is not "
	                                  "smtp:// or smtps://: no report can be sent"));
	g_free(log);
}
END_TEST

static Suite *outbox_suite(void)
{
	Suite *s = suite_create("outbox");
	TCase *tr = tcase_create("report");
	TCase *tf = tcase_create("files");
	TCase *tl = tcase_create("loop");

	tcase_add_checked_fixture(tr, setup, teardown);
	tcase_add_test(tr, render_headers_and_body);
	tcase_add_test(tr, render_missing_values_and_config_path);
	tcase_add_test(tr, render_japanese);
	tcase_add_test(tr, render_hostile_text);
	tcase_add_test(tr, hook_writes_report_without_original);
	suite_add_tcase(s, tr);

	tcase_add_checked_fixture(tf, setup, teardown);
	tcase_add_test(tf, lifecycle);
	tcase_add_test(tf, relay_failure_fails_all_due);
	tcase_add_test(tf, backoff_schedule);
	tcase_add_test(tf, bounded);
	tcase_add_test(tf, expiry);
	tcase_add_test(tf, names_and_leftovers);
	tcase_add_test(tf, stop_flag);
	suite_add_tcase(s, tf);

	tcase_add_checked_fixture(tl, setup, teardown);
	tcase_add_test(tl, loop_wakeup_and_retry);
	tcase_add_test(tl, smtp_relay_down);
	tcase_add_test(tl, smtp_settings_refused);
	tcase_add_test(tl, smtp_scheme_refused);
	suite_add_tcase(s, tl);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(outbox_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
