/*
 * test_quarantine.c - Check suite for policy/quarantine.c.
 *
 * Stores in-memory and spilled spools and checks the contract of
 * quarantine.h: both files present with mode 0600 (whatever the umask),
 * ID.eml byte-identical to the spool, ID.json a valid JSON object whose
 * fields hold what was passed (escaped, invalid UTF-8 replaced) and a
 * SHA-256 computed independently (GLib, not OpenSSL), unique ids, and on
 * failure (missing directory, unwritable directory, a write failing half
 * way) -1 with no file left behind at all.
 */
#include "policy/quarantine.h"
#include "proxy/spool.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[64];

static void setup(void)
{
	snprintf(base, sizeof(base), "/tmp/mm-quar-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(base));
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
	chmod(base, 0700);
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *path_in(const char *dir, const char *id, const char *ext)
{
	return g_strdup_printf("%s/%s%s", dir, id, ext);
}

/* Number of entries in dir (without . and ..); *tmp_r counts "*.tmp". */
static int count_files(const char *dir, int *tmp_r)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0, tmp = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		n++;
		if (g_str_has_suffix(e->d_name, ".tmp"))
			tmp++;
	}
	closedir(d);
	if (tmp_r != NULL)
		*tmp_r = tmp;
	return n;
}

static struct spool *mkspool(const char *data, size_t len, size_t mem_limit)
{
	struct spool *sp = spool_new(mem_limit, "/tmp", 0);

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_append(sp, data, len), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	return sp;
}

/* A message with CRLFs, NULs and every byte value. */
static char *sample(size_t len)
{
	static const char head[] = "From: a@example.jp\r\nSubject: x\r\n\r\n";
	char *s = malloc(len);
	size_t i;

	ck_assert_ptr_nonnull(s);
	for (i = 0; i < len; i++)
		s[i] = (char)(i * 7 + i / 251);
	memcpy(s, head, len < sizeof(head) - 1 ? len : sizeof(head) - 1);
	return s;
}

static const struct quar_meta meta = {
    "pop3",
    "taro",
    "mail.example.jp:995",
    "Eicar-Test-Signature",
    "infected",
    "山田太郎 <taro@example.jp>",
    "請求書のご案内",
    "3fa2c91e",
    "msg=3 uidl=abc",
};

/* ---- a small strict JSON reader: one object of scalar members ---- */

struct jfield {
	char *key;
	char *val; /* decoded string, number/true/false text, or NULL for null */
	int is_str;
};

struct jdoc {
	struct jfield f[32];
	int n;
};

static void jws(const char **p)
{
	while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
		(*p)++;
}

static int jhex(const char *p, unsigned *v)
{
	unsigned x = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = p[i];

		x <<= 4;
		if (c >= '0' && c <= '9')
			x |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			x |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			x |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*v = x;
	return 0;
}

/* Parses a JSON string at *p; NULL when it is not a valid one. */
static char *jstr(const char **p)
{
	GString *g = g_string_new(NULL);
	const char *s = *p, *start;

	if (*s != '"')
		goto bad;
	s++;
	start = s;
	for (;;) {
		unsigned char c = (unsigned char)*s;

		if (c == '\0' || c < 0x20)
			goto bad;
		if (c == '"')
			break;
		if (c == '\\') {
			unsigned v;

			s++;
			switch (*s) {
			case '"':
			case '\\':
			case '/':
				g_string_append_c(g, *s);
				break;
			case 'b':
				g_string_append_c(g, '\b');
				break;
			case 'f':
				g_string_append_c(g, '\f');
				break;
			case 'n':
				g_string_append_c(g, '\n');
				break;
			case 'r':
				g_string_append_c(g, '\r');
				break;
			case 't':
				g_string_append_c(g, '\t');
				break;
			case 'u':
				if (jhex(s + 1, &v) != 0 || (v >= 0xd800 && v <= 0xdfff))
					goto bad;
				g_string_append_unichar(g, v);
				s += 4;
				break;
			default:
				goto bad;
			}
			s++;
			continue;
		}
		g_string_append_c(g, (char)c);
		s++;
	}
	(void)start;
	if (!g_utf8_validate(g->str, (gssize)g->len, NULL))
		goto bad;
	*p = s + 1;
	return g_string_free(g, FALSE);
bad:
	g_string_free(g, TRUE);
	return NULL;
}

/* Parses the whole text as one object of scalars; returns 0 when valid. */
static int jparse(const char *text, struct jdoc *d)
{
	const char *p = text;

	d->n = 0;
	jws(&p);
	if (*p++ != '{')
		return -1;
	jws(&p);
	if (*p == '}')
		goto end;
	for (;;) {
		struct jfield *f;

		if (d->n == 32)
			return -1;
		f = &d->f[d->n++];
		jws(&p);
		if ((f->key = jstr(&p)) == NULL)
			return -1;
		jws(&p);
		if (*p++ != ':')
			return -1;
		jws(&p);
		f->is_str = *p == '"';
		if (f->is_str) {
			if ((f->val = jstr(&p)) == NULL)
				return -1;
		} else if (strncmp(p, "null", 4) == 0) {
			f->val = NULL;
			p += 4;
		} else if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
			size_t n = *p == 't' ? 4 : 5;

			f->val = g_strndup(p, n);
			p += n;
		} else {
			size_t n = strspn(p, "0123456789");

			if (n == 0 || (n > 1 && *p == '0'))
				return -1;
			f->val = g_strndup(p, n);
			p += n;
		}
		jws(&p);
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p != '}')
			return -1;
		break;
	}
end:
	p++;
	jws(&p);
	return *p == '\0' ? 0 : -1;
}

static struct jfield *jget(struct jdoc *d, const char *key)
{
	int i;

	for (i = 0; i < d->n; i++) {
		if (strcmp(d->f[i].key, key) == 0)
			return &d->f[i];
	}
	ck_assert_msg(0, "no member %s", key);
	return NULL;
}

static void jstr_eq(struct jdoc *d, const char *key, const char *want)
{
	struct jfield *f = jget(d, key);

	if (want == NULL) {
		ck_assert_msg(f->val == NULL && !f->is_str, "%s should be null", key);
		return;
	}
	ck_assert_msg(f->is_str, "%s should be a string", key);
	ck_assert_str_eq(f->val, want);
}

static void jfree(struct jdoc *d)
{
	int i;

	for (i = 0; i < d->n; i++) {
		g_free(d->f[i].key);
		g_free(d->f[i].val);
	}
	d->n = 0;
}

/* ---- checks on a stored message ---- */

static void check_mode(const char *path)
{
	struct stat st;

	ck_assert_int_eq(lstat(path, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
}

static void check_id(const char *id)
{
	size_t i;

	/* 20261129T063338Z-1a2b3c4d */
	ck_assert_uint_eq(strlen(id), 25);
	for (i = 0; i < 25; i++) {
		char c = id[i];

		if (i == 8)
			ck_assert(c == 'T');
		else if (i == 15)
			ck_assert(c == 'Z');
		else if (i == 16)
			ck_assert(c == '-');
		else if (i < 16)
			ck_assert(g_ascii_isdigit(c));
		else
			ck_assert(g_ascii_isxdigit(c) && !g_ascii_isupper(c));
	}
}

/* Checks the two files of id against data and m; returns the parsed JSON. */
static void check_stored(const char *dir, const char *id, const char *data, size_t len,
                         const struct quar_meta *m, struct jdoc *d)
{
	char *eml = path_in(dir, id, ".eml"), *json = path_in(dir, id, ".json");
	char *got = NULL, *text = NULL, *sha, *size;
	gsize glen = 0;

	check_id(id);
	check_mode(eml);
	check_mode(json);
	ck_assert(g_file_get_contents(eml, &got, &glen, NULL));
	ck_assert_uint_eq(glen, len);
	ck_assert(memcmp(got, data, len) == 0);
	ck_assert(g_file_get_contents(json, &text, NULL, NULL));
	ck_assert_msg(jparse(text, d) == 0, "invalid JSON");
	jstr_eq(d, "id", id);
	jstr_eq(d, "protocol", m->protocol);
	jstr_eq(d, "user", m->user);
	jstr_eq(d, "upstream", m->upstream);
	jstr_eq(d, "signature", m->signature);
	jstr_eq(d, "verdict", m->verdict);
	jstr_eq(d, "session", m->session);
	size = g_strdup_printf("%zu", len);
	ck_assert(!jget(d, "size")->is_str);
	ck_assert_str_eq(jget(d, "size")->val, size);
	sha = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, len);
	jstr_eq(d, "sha256", sha);
	/* RFC 3339 UTC, and the same second as the id */
	{
		const char *ra = jget(d, "received_at")->val;
		GDateTime *t = g_date_time_new_from_iso8601(ra, NULL);
		char *want;

		ck_assert_ptr_nonnull(t);
		ck_assert_uint_eq(strlen(ra), 20);
		ck_assert(ra[19] == 'Z');
		want = g_date_time_format(t, "%Y%m%dT%H%M%SZ");
		ck_assert(strncmp(want, id, 16) == 0);
		g_free(want);
		g_date_time_unref(t);
	}
	g_free(size);
	g_free(sha);
	g_free(got);
	g_free(text);
	g_free(eml);
	g_free(json);
}

START_TEST(prepare_dirs)
{
	char *deep = g_strdup_printf("%s/a/b//c/", base);
	char *file = g_strdup_printf("%s/file", base);
	char *under = g_strdup_printf("%s/file/q", base);
	struct stat st;
	mode_t old = umask(0277);

	ck_assert_int_eq(quar_prepare(deep), 0);
	umask(old);
	ck_assert_int_eq(stat(deep, &st), 0);
	ck_assert(S_ISDIR(st.st_mode));
	ck_assert_uint_eq(st.st_mode & 07777, 0700);
	ck_assert_int_eq(quar_prepare(deep), 0); /* already there */
	ck_assert_int_eq(quar_prepare(base), 0);
	g_file_set_contents(file, "x", 1, NULL);
	ck_assert_int_eq(quar_prepare(file), -ENOTDIR);
	ck_assert_int_eq(quar_prepare(under), -ENOTDIR);
	ck_assert_int_eq(quar_prepare(""), -EINVAL);
	g_free(deep);
	g_free(file);
	g_free(under);
}
END_TEST

START_TEST(store_memory)
{
	size_t len = 5000;
	char *data = sample(len), id[QUAR_ID_MAX], err[256] = "";
	struct spool *sp = mkspool(data, len, 1 << 20);
	struct jdoc d;
	int tmp;
	mode_t old;

	ck_assert_ptr_nonnull(spool_mem(sp));
	old = umask(0277); /* must not matter: 0600 regardless */
	ck_assert_int_eq(quar_store(base, &meta, sp, id, err, sizeof(err)), 0);
	umask(old);
	check_stored(base, id, data, len, &meta, &d);
	jstr_eq(&d, "from", meta.from);
	jstr_eq(&d, "subject", meta.subject);
	jstr_eq(&d, "message", meta.message);
	ck_assert_str_eq(jget(&d, "truncated")->val, "false");
	jfree(&d);
	ck_assert_int_eq(count_files(base, &tmp), 2);
	ck_assert_int_eq(tmp, 0);
	spool_unref(&sp);
	free(data);
}
END_TEST

START_TEST(store_spilled)
{
	size_t len = 300 * 1024 + 17;
	char *data = sample(len), id[QUAR_ID_MAX], err[256] = "";
	struct spool *sp = mkspool(data, len, 1024);
	struct jdoc d;

	ck_assert_int_ge(spool_fd(sp), 0);
	ck_assert_int_eq(quar_store(base, &meta, sp, id, err, sizeof(err)), 0);
	check_stored(base, id, data, len, &meta, &d);
	jfree(&d);
	spool_unref(&sp);
	free(data);
}
END_TEST

START_TEST(store_empty_and_truncated)
{
	struct spool *sp = spool_new(1024, "/tmp", 10);
	char id[QUAR_ID_MAX], err[256] = "";
	struct jdoc d;

	ck_assert_int_eq(spool_append(sp, "0123456789", 10), 0);
	ck_assert_int_eq(spool_append(sp, "x", 1), -EFBIG);
	spool_freeze(sp);
	ck_assert_int_eq(quar_store(base, &meta, sp, id, err, sizeof(err)), 0);
	check_stored(base, id, "0123456789", 10, &meta, &d);
	ck_assert_str_eq(jget(&d, "truncated")->val, "true");
	jfree(&d);
	spool_unref(&sp);

	sp = mkspool("", 0, 1024);
	ck_assert_int_eq(quar_store(base, &meta, sp, id, err, sizeof(err)), 0);
	check_stored(base, id, "", 0, &meta, &d);
	jfree(&d);
	spool_unref(&sp);
}
END_TEST

START_TEST(store_escaping)
{
	struct quar_meta m = meta;
	char id[QUAR_ID_MAX], err[256] = "";
	struct spool *sp = mkspool("x", 1, 1024);
	char *json, *text = NULL;
	struct jdoc d;

	m.user = "ta\"ro\\";
	m.subject = "a\x01"
	            "b\nc\td\x7f e\xff\xfe f\xc0\xaf g\xed\xa0\x80 h\xe2\x80\xa8 "
	            "請求書 \xe3\x81";
	m.from = NULL;
	m.message = NULL;
	m.signature = "Win.Test.EICAR_HDB-1 \"quoted\"";
	ck_assert_int_eq(quar_store(base, &m, sp, id, err, sizeof(err)), 0);
	json = path_in(base, id, ".json");
	ck_assert(g_file_get_contents(json, &text, NULL, NULL));
	/* raw control bytes and invalid UTF-8 never reach the file */
	ck_assert(g_utf8_validate(text, -1, NULL));
	for (const char *c = text; *c != '\0'; c++)
		ck_assert(*c == '\n' || (unsigned char)*c >= 0x20);
	ck_assert_ptr_null(strstr(text, "\xe2\x80\xa8"));
	ck_assert_ptr_nonnull(strstr(text, "\\u2028"));
	ck_assert_ptr_nonnull(strstr(text, "\\u0001"));
	check_stored(base, id, "x", 1, &m, &d);
	jstr_eq(&d, "user", "ta\"ro\\");
	jstr_eq(&d, "subject",
	        "a\x01"
	        "b\nc\td\x7f e\xef\xbf\xbd\xef\xbf\xbd f\xef\xbf\xbd"
	        "\xef\xbf\xbd g\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd h\xe2\x80\xa8 "
	        "請求書 \xef\xbf\xbd\xef\xbf\xbd");
	jstr_eq(&d, "from", NULL);
	jstr_eq(&d, "message", NULL);
	jfree(&d);
	g_free(text);
	g_free(json);
	spool_unref(&sp);
}
END_TEST

START_TEST(ids_unique)
{
	char ids[20][QUAR_ID_MAX], err[256] = "";
	int i, j, tmp;

	for (i = 0; i < 20; i++) {
		char text[32];
		struct spool *sp;

		snprintf(text, sizeof(text), "hello %d\r\n", i);
		sp = mkspool(text, strlen(text), 1024);
		ck_assert_int_eq(quar_store(base, &meta, sp, ids[i], err, sizeof(err)),
		                 0);
		spool_unref(&sp);
		check_id(ids[i]);
		for (j = 0; j < i; j++)
			ck_assert_str_ne(ids[i], ids[j]);
		/* sortable: never earlier than the one before */
		if (i > 0)
			ck_assert(strncmp(ids[i - 1], ids[i], 16) <= 0);
	}
	ck_assert_int_eq(count_files(base, &tmp), 40);
	ck_assert_int_eq(tmp, 0);
}
END_TEST

START_TEST(same_message_stored_once)
{
	/* a client fetching the same message again must not fill the quarantine */
	struct spool *sp = mkspool("same bytes\r\n", 12, 1024);
	struct quar_meta other = meta;
	char id1[QUAR_ID_MAX], id2[QUAR_ID_MAX], id3[QUAR_ID_MAX], id4[QUAR_ID_MAX];
	char err[256] = "", path[4200];
	int tmp;

	ck_assert_int_eq(quar_store(base, &meta, sp, id1, err, sizeof(err)), 0);
	ck_assert_int_eq(quar_store(base, &meta, sp, id2, err, sizeof(err)), 1);
	ck_assert_str_eq(id1, id2);
	ck_assert_int_eq(count_files(base, &tmp), 2);
	/* another user's copy is that user's own entry */
	other.user = "someone-else";
	ck_assert_int_eq(quar_store(base, &other, sp, id3, err, sizeof(err)), 0);
	ck_assert_str_ne(id1, id3);
	/* once the admin removed the entry, the message is stored anew */
	snprintf(path, sizeof(path), "%s/%s.eml", base, id1);
	ck_assert_int_eq(unlink(path), 0);
	ck_assert_int_eq(quar_store(base, &meta, sp, id4, err, sizeof(err)), 0);
	ck_assert_str_ne(id1, id4);
	spool_unref(&sp);
}
END_TEST

struct same_arg {
	struct spool *sp;
	pthread_barrier_t *go;
	char id[QUAR_ID_MAX];
	int r;
};

static void *same_main(void *p)
{
	struct same_arg *a = p;
	char err[256];

	pthread_barrier_wait(a->go);
	a->r = quar_store(base, &meta, a->sp, a->id, err, sizeof(err));
	return NULL;
}

START_TEST(concurrent_same_message_stored_once)
{
	/* several sessions of one user fetch the same new message at once
	 * (Thunderbird's connections, two devices): one entry, one id */
	size_t len = 300000;
	char *data = sample(len);
	struct spool *sp = mkspool(data, len, 4096);
	struct same_arg args[8];
	pthread_t tids[8];
	pthread_barrier_t go;
	int i, stored = 0, tmp;

	pthread_barrier_init(&go, NULL, 8);
	for (i = 0; i < 8; i++) {
		args[i].sp = sp;
		args[i].go = &go;
		ck_assert_int_eq(pthread_create(&tids[i], NULL, same_main, &args[i]), 0);
	}
	for (i = 0; i < 8; i++)
		pthread_join(tids[i], NULL);
	for (i = 0; i < 8; i++) {
		ck_assert(args[i].r == 0 || args[i].r == 1);
		stored += args[i].r == 0;
		ck_assert_str_eq(args[i].id, args[0].id);
	}
	ck_assert_int_eq(stored, 1);
	ck_assert_int_eq(count_files(base, &tmp), 2);
	ck_assert_int_eq(tmp, 0);
	pthread_barrier_destroy(&go);
	spool_unref(&sp);
	free(data);
}
END_TEST

START_TEST(refetched_message_stays_known)
{
	/* a message fetched again and again is not pushed out of the memory
	 * of stored messages by 512 others quarantined meanwhile */
	struct spool *sp = mkspool("fetched often\r\n", 15, 1024);
	char id1[QUAR_ID_MAX], id2[QUAR_ID_MAX], err[256] = "";
	int i, tmp;

	ck_assert_int_eq(quar_store(base, &meta, sp, id1, err, sizeof(err)), 0);
	for (i = 0; i < 600; i++) {
		char body[64];
		struct spool *o;

		snprintf(body, sizeof(body), "other message %d\r\n", i);
		o = mkspool(body, strlen(body), 1024);
		ck_assert_int_eq(quar_store(base, &meta, o, NULL, err, sizeof(err)), 0);
		spool_unref(&o);
		if (i % 100 == 99) {
			ck_assert_int_eq(
			    quar_store(base, &meta, sp, id2, err, sizeof(err)), 1);
			ck_assert_str_eq(id1, id2);
		}
	}
	ck_assert_int_eq(count_files(base, &tmp), 2 * 601);
	spool_unref(&sp);
}
END_TEST

struct thread_arg {
	struct spool *sp;
	char ids[10][QUAR_ID_MAX];
	char users[10][32];
	struct quar_meta metas[10];
	int n;
	int ok;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	char err[256];
	int i;

	a->ok = 1;
	for (i = 0; i < 10; i++) {
		/* same bytes, one user per store: every store is a new entry */
		snprintf(a->users[i], sizeof(a->users[i]), "user-%d-%d", a->n, i);
		a->metas[i] = meta;
		a->metas[i].user = a->users[i];
		if (quar_store(base, &a->metas[i], a->sp, a->ids[i], err, sizeof(err)) !=
		    0)
			a->ok = 0;
	}
	return NULL;
}

START_TEST(concurrent_stores)
{
	size_t len = 70000;
	char *data = sample(len);
	struct spool *sp = mkspool(data, len, 4096);
	struct thread_arg args[8];
	pthread_t tids[8];
	GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
	int i, j, tmp;

	for (i = 0; i < 8; i++) {
		args[i].sp = sp;
		args[i].n = i;
		ck_assert_int_eq(pthread_create(&tids[i], NULL, thread_main, &args[i]),
		                 0);
	}
	for (i = 0; i < 8; i++) {
		pthread_join(tids[i], NULL);
		ck_assert(args[i].ok);
		for (j = 0; j < 10; j++) {
			struct jdoc d;

			ck_assert(!g_hash_table_contains(seen, args[i].ids[j]));
			g_hash_table_add(seen, args[i].ids[j]);
			check_stored(base, args[i].ids[j], data, len, &args[i].metas[j],
			             &d);
			jfree(&d);
		}
	}
	ck_assert_int_eq(count_files(base, &tmp), 160);
	ck_assert_int_eq(tmp, 0);
	g_hash_table_destroy(seen);
	spool_unref(&sp);
	free(data);
}
END_TEST

START_TEST(fail_missing_dir)
{
	struct spool *sp = mkspool("x", 1, 1024);
	char *dir = g_strdup_printf("%s/nope", base);
	char id[QUAR_ID_MAX] = "junk", err[256] = "";

	ck_assert_int_eq(quar_store(dir, &meta, sp, id, err, sizeof(err)), -1);
	ck_assert_str_eq(id, "");
	ck_assert_ptr_nonnull(strstr(err, "nope"));
	ck_assert_int_eq(count_files(base, NULL), 0);
	g_free(dir);
	spool_unref(&sp);
}
END_TEST

START_TEST(fail_unwritable_dir)
{
	struct spool *sp;
	char id[QUAR_ID_MAX], err[256] = "";
	int tmp;

	if (geteuid() == 0)
		return; /* root writes anyway; fail_write_midway covers failures there */
	sp = mkspool("x", 1, 1024);
	ck_assert_int_eq(chmod(base, 0500), 0);
	ck_assert_int_eq(quar_store(base, &meta, sp, id, err, sizeof(err)), -1);
	ck_assert_str_ne(err, "");
	ck_assert_int_eq(count_files(base, &tmp), 0);
	ck_assert_int_eq(quar_prepare(base), -EACCES);
	spool_unref(&sp);
}
END_TEST

/* A store whose file write fails half way (file size limit): nothing is left. */
static void store_under_fsize_limit(const struct quar_meta *m, size_t len)
{
	char *data = sample(len), id[QUAR_ID_MAX], err[256] = "";
	struct spool *sp = mkspool(data, len, 1024);
	struct rlimit old, lim;
	int r, tmp;

	signal(SIGXFSZ, SIG_IGN); /* EFBIG from write() instead of a signal */
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 4096;
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = quar_store(base, m, sp, id, err, sizeof(err));
	setrlimit(RLIMIT_FSIZE, &old);
	ck_assert_int_eq(r, -1);
	ck_assert_ptr_nonnull(strstr(err, "write"));
	ck_assert_int_eq(count_files(base, &tmp), 0);
	ck_assert_int_eq(tmp, 0);
	spool_unref(&sp);
	free(data);
}

START_TEST(fail_write_midway)
{
	struct quar_meta m = meta;
	char *big = g_malloc(20000);

	/* the .eml write fails */
	store_under_fsize_limit(&meta, 64 * 1024);
	/* the .eml fits, the .json write fails */
	memset(big, 'S', 19999);
	big[19999] = '\0';
	m.subject = big;
	store_under_fsize_limit(&m, 100);
	g_free(big);
}
END_TEST

static Suite *quarantine_suite(void)
{
	Suite *s = suite_create("quarantine");
	TCase *tc = tcase_create("store");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, prepare_dirs);
	tcase_add_test(tc, store_memory);
	tcase_add_test(tc, store_spilled);
	tcase_add_test(tc, store_empty_and_truncated);
	tcase_add_test(tc, store_escaping);
	tcase_add_test(tc, ids_unique);
	tcase_add_test(tc, same_message_stored_once);
	tcase_add_test(tc, concurrent_stores);
	tcase_add_test(tc, concurrent_same_message_stored_once);
	tcase_add_test(tc, refetched_message_stays_known);
	tcase_add_test(tc, fail_missing_dir);
	tcase_add_test(tc, fail_unwritable_dir);
	tcase_add_test(tc, fail_write_midway);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(quarantine_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
