/*
 * test_qindex.c - Check suite for policy/qindex.c (and the in-process
 * side of proxy/admin.c).
 *
 * Entries are written the way policy/quarantine.c writes them (one through
 * quar_store itself, the rest by hand with chosen times), then indexed:
 * sync adds new ones and drops vanished ones, notes ID.eml presence, skips
 * corrupt ID.json files with one warning each (not parsed again until they
 * change), does nothing when the directory did not change; the JSON reader
 * decodes escapes, surrogate pairs and bad UTF-8 and keeps unknown members;
 * list filters by user, time, id and limit, newest first; delete and purge
 * remove files and rows; released hashes are remembered across handles and
 * deletes; a shared handle is used from several threads while another
 * handle syncs and purges; 100,000 entries are indexed and listed (timings
 * printed); admin_main's exit codes and export's refusal to overwrite.
 */
#include "policy/config.h"
#include "policy/qindex.h"
#include "policy/quarantine.h"
#include "proxy/admin.h"
#include "proxy/spool.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char qdir[64];
static struct config cfg;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void setup(void)
{
	snprintf(qdir, sizeof(qdir), "/tmp/mm-qindex-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(qdir));
	config_defaults(&cfg);
	snprintf(cfg.quarantine_dir, sizeof(cfg.quarantine_dir), "%s", qdir);
}

static void teardown(void)
{
	nftw(qdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void write_file(const char *dir, const char *name, const char *data, size_t len)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static int file_exists(const char *dir, const char *id, const char *ext)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s%s", dir, id, ext);
	return access(path, F_OK) == 0;
}

static void unlink_in(const char *dir, const char *id, const char *ext)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s%s", dir, id, ext);
	ck_assert_int_eq(unlink(path), 0);
}

/* An id for epoch t and a serial number, as quarantine.c forms them. */
static void make_id(char *id, size_t len, time_t t, unsigned serial)
{
	struct tm tm;
	char stamp[32];

	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(id, len, "%s-%08x", stamp, serial);
}

static void rfc3339(char *buf, size_t len, time_t t)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/*
 * Writes ID.eml (body) and ID.json with the members quarantine.c writes,
 * in its layout; extra is more members (",\n  \"k\": v") or NULL.
 */
static void put_entry(const char *id, time_t t, const char *user, const char *body,
                      const char *extra)
{
	char name[128], when[32], *json, *sha;

	rfc3339(when, sizeof(when), t);
	sha = g_compute_checksum_for_string(G_CHECKSUM_SHA256, body, -1);
	json = g_strdup_printf(
	    "{\n  \"id\": \"%s\",\n  \"received_at\": \"%s\",\n"
	    "  \"protocol\": \"pop3\",\n  \"user\": \"%s\",\n"
	    "  \"upstream\": \"127.0.0.1:110\",\n"
	    "  \"signature\": \"Eicar-Test-Signature\",\n"
	    "  \"verdict\": \"infected\",\n  \"size\": %zu,\n"
	    "  \"truncated\": false,\n  \"sha256\": \"%s\",\n"
	    "  \"from\": \"M <m@bad.example>\",\n"
	    "  \"subject\": \"Invoice %s\",\n  \"session\": \"0f62c567\",\n"
	    "  \"message\": \"msg=2 uidl=abc\"%s\n}\n",
	    id, when, user, strlen(body), sha, id, extra ? extra : "");
	snprintf(name, sizeof(name), "%s.eml", id);
	write_file(qdir, name, body, strlen(body));
	snprintf(name, sizeof(name), "%s.json", id);
	write_file(qdir, name, json, strlen(json));
	g_free(json);
	g_free(sha);
}

/* Moves the directory's mtime into the past so that a sync may trust it. */
static void age_dir(void)
{
	struct timespec ts[2];

	clock_gettime(CLOCK_REALTIME, &ts[0]);
	ts[0].tv_sec -= 60;
	ts[1] = ts[0];
	ck_assert_int_eq(utimensat(AT_FDCWD, qdir, ts, 0), 0);
}

/* Sets the directory's mtime to now: the next sync reads it again. */
static void fresh_dir(void)
{
	struct timespec ts[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};

	ck_assert_int_eq(utimensat(AT_FDCWD, qdir, ts, 0), 0);
}

struct warns {
	int n;
	char last[512];
};

static void on_warn(void *arg, const char *msg)
{
	struct warns *w = arg;

	w->n++;
	snprintf(w->last, sizeof(w->last), "%s", msg);
}

static struct qindex *open_ix(struct warns *w)
{
	char err[256] = "";
	struct qindex *ix = qindex_open(&cfg, 0, err, sizeof(err));

	ck_assert_msg(ix != NULL, "open: %s", err);
	if (w != NULL)
		qindex_set_warn(ix, on_warn, w);
	return ix;
}

static struct qindex_sync_stats sync_ok(struct qindex *ix)
{
	struct qindex_sync_stats st;
	char err[256] = "";

	ck_assert_msg(qindex_sync(ix, &st, err, sizeof(err)) == 0, "sync: %s", err);
	return st;
}

/* Collected copies of listed entries. */
struct got {
	GPtrArray *ids;
	GPtrArray *rows; /* "user|subject|from|size|truncated|eml|released|extra" */
};

static int collect(void *arg, const struct qindex_entry *e)
{
	struct got *g = arg;

	g_ptr_array_add(g->ids, g_strdup(e->id));
	g_ptr_array_add(g->rows, g_strdup_printf("%s|%s|%s|%lld|%d|%d|%s|%s",
	                                         e->user ? e->user : "(null)",
	                                         e->subject ? e->subject : "(null)",
	                                         e->from ? e->from : "(null)",
	                                         (long long)e->size, e->truncated, e->eml,
	                                         e->released_by ? e->released_by : "-",
	                                         e->extra ? e->extra : "-"));
	return 0;
}

static struct got list(struct qindex *ix, const struct qindex_filter *f)
{
	struct got g = {g_ptr_array_new_with_free_func(g_free),
	                g_ptr_array_new_with_free_func(g_free)};
	char err[256] = "";
	int n = qindex_list(ix, f, collect, &g, err, sizeof(err));

	ck_assert_msg(n >= 0, "list: %s", err);
	ck_assert_int_eq((unsigned)n, g.ids->len);
	return g;
}

static void got_free(struct got *g)
{
	g_ptr_array_free(g->ids, TRUE);
	g_ptr_array_free(g->rows, TRUE);
}

/* ------------------------------------------------------------------ time */

START_TEST(parse_times)
{
	int64_t t, now = 1800000000;

	ck_assert_int_eq(qindex_parse_rfc3339("1970-01-01T00:00:00Z", &t), 0);
	ck_assert_int_eq(t, 0);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T06:43:45Z", &t), 0);
	ck_assert_int_eq(t, 1795934625);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T15:43:45.123+09:00", &t), 0);
	ck_assert_int_eq(t, 1795934625);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29t06:43:45z", &t), 0);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-28 21:43:45-09:00", &t), 0);
	ck_assert_int_eq(t, 1795934625);
	ck_assert_int_eq(qindex_parse_rfc3339("2024-02-29T00:00:00Z", &t), 0);
	ck_assert_int_eq(qindex_parse_rfc3339("2023-02-29T00:00:00Z", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-13-01T00:00:00Z", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T24:00:00Z", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T06:43:45", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T06:43:45.Z", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T06:43:45Zjunk", &t), -1);
	ck_assert_int_eq(qindex_parse_rfc3339("2026-11-29T06:43:45+9:00", &t), -1);

	ck_assert_int_eq(qindex_parse_time("7d", now, &t), 0);
	ck_assert_int_eq(t, now - 7 * 86400);
	ck_assert_int_eq(qindex_parse_time("12h", now, &t), 0);
	ck_assert_int_eq(t, now - 12 * 3600);
	ck_assert_int_eq(qindex_parse_time("90m", now, &t), 0);
	ck_assert_int_eq(t, now - 5400);
	ck_assert_int_eq(qindex_parse_time("2w", now, &t), 0);
	ck_assert_int_eq(t, now - 14 * 86400);
	ck_assert_int_eq(qindex_parse_time("0s", now, &t), 0);
	ck_assert_int_eq(t, now);
	ck_assert_int_eq(qindex_parse_time("2026-11-29", now, &t), 0);
	ck_assert_int_eq(t, 1795910400);
	ck_assert_int_eq(qindex_parse_time("2026-11-29T06:43:45Z", now, &t), 0);
	ck_assert_int_eq(t, 1795934625);
	ck_assert_int_eq(qindex_parse_time("7", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("d", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("7y", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("-7d", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("2026-11-31", now, &t), -1);
	ck_assert_int_eq(qindex_parse_time("123456789012d", now, &t), -1);
}
END_TEST

START_TEST(valid_ids)
{
	char longid[QUAR_ID_MAX + 1];

	ck_assert(qindex_valid_id("20261129T064345Z-abef28ee"));
	ck_assert(qindex_valid_id("a"));
	ck_assert(!qindex_valid_id(""));
	ck_assert(!qindex_valid_id(NULL));
	ck_assert(!qindex_valid_id(".index"));
	ck_assert(!qindex_valid_id("../etc/passwd"));
	ck_assert(!qindex_valid_id("a/b"));
	ck_assert(!qindex_valid_id("a b"));
	memset(longid, 'a', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	ck_assert(!qindex_valid_id(longid));
	longid[QUAR_ID_MAX - 1] = '\0';
	ck_assert(qindex_valid_id(longid));
}
END_TEST

START_TEST(json_str_escapes)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	qindex_json_str(f, "a\"b\\c\n\r\t\x01\x7f \xe8\xab\x8b \xe2\x80\xa8 \xff");
	fputc(' ', f);
	qindex_json_str(f, NULL);
	fclose(f);
	ck_assert_str_eq(buf, "\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u007f \xe8\xab\x8b \\u2028 "
	                      "\xef\xbf\xbd\" null");
	free(buf);
}
END_TEST

/* ------------------------------------------------------------------ sync */

/* One entry written by quar_store itself: the index reads the real thing. */
START_TEST(sync_real_store)
{
	static const char msg[] = "From: a@example.jp\r\nSubject: x\r\n\r\nbody\r\n";
	const struct quar_meta m = {"imap",
	                            "taro",
	                            "mail.example.jp:993",
	                            "Eicar-Test-Signature",
	                            "infected",
	                            "山田太郎 <taro@example.jp>",
	                            "請求書\x01のご案内",
	                            "3fa2c91e",
	                            NULL};
	struct spool *sp = spool_new(1 << 20, "/tmp", 0);
	char id[QUAR_ID_MAX], err[256] = "";
	struct qindex *ix;
	struct got g;
	struct stat st;

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_append(sp, msg, sizeof(msg) - 1), 0);
	ck_assert_int_eq(spool_freeze(sp), 0);
	ck_assert_int_eq(quar_store(qdir, &m, sp, id, err, sizeof(err)), 0);
	spool_unref(&sp);

	ix = open_ix(NULL);
	ck_assert_int_eq(sync_ok(ix).added, 1);
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 1);
	ck_assert_str_eq(g.ids->pdata[0], id);
	ck_assert_str_eq(g.rows->pdata[0],
	                 "taro|請求書\x01のご案内|山田太郎 <taro@example.jp>|40|0|1|-|-");
	got_free(&g);
	/* SECURITY: the index file is private, like the quarantine */
	ck_assert_int_eq(stat(qindex_path(ix), &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	qindex_close(&ix);
	ck_assert_ptr_null(ix);
}
END_TEST

START_TEST(sync_add_drop_and_eml)
{
	time_t t0 = time(NULL) - 3600;
	char ids[5][QUAR_ID_MAX];
	struct qindex_sync_stats st;
	struct qindex *ix;
	struct got g;

	for (int i = 0; i < 5; i++) {
		make_id(ids[i], sizeof(ids[i]), t0 + i * 60, (unsigned)i);
		put_entry(ids[i], t0 + i * 60, i % 2 ? "bob" : "alice", "body\r\n", NULL);
	}
	ix = open_ix(NULL);
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	ck_assert_int_eq(st.scanned, 5);
	ck_assert_int_eq(st.added, 5);
	st = sync_ok(ix);
	ck_assert_int_eq(st.added, 0);
	ck_assert_int_eq(st.removed, 0);

	/* newest first */
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 5);
	for (int i = 0; i < 5; i++)
		ck_assert_str_eq(g.ids->pdata[i], ids[4 - i]);
	got_free(&g);

	/* a vanished ID.json drops the row; a vanished ID.eml is noted */
	unlink_in(qdir, ids[1], ".json");
	unlink_in(qdir, ids[2], ".eml");
	st = sync_ok(ix);
	ck_assert_int_eq(st.removed, 1);
	ck_assert_int_eq(st.updated, 1);
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 4);
	ck_assert_str_eq(g.ids->pdata[2], ids[2]);
	ck_assert(g_str_has_prefix(g.rows->pdata[2], "alice|Invoice"));
	ck_assert_ptr_nonnull(strstr(g.rows->pdata[2], "|0|-|-")); /* eml 0 */
	got_free(&g);

	/* an ID.eml alone (a store in progress) is not an entry */
	write_file(qdir, "20200101T000000Z-00000000.eml", "x", 1);
	/* qindex_add: one entry at once, as the daemon does after a store */
	{
		char id[QUAR_ID_MAX], err[256];

		make_id(id, sizeof(id), t0 + 600, 99);
		put_entry(id, t0 + 600, "carol", "hi\r\n", NULL);
		ck_assert_int_eq(qindex_add(ix, id, err, sizeof(err)), 0);
		ck_assert_int_eq(qindex_add(ix, "nope", err, sizeof(err)), -1);
		ck_assert_int_eq(qindex_add(ix, "../x", err, sizeof(err)), -1);
		g = list(ix, NULL);
		ck_assert_int_eq(g.ids->len, 5);
		ck_assert_str_eq(g.ids->pdata[0], id);
		got_free(&g);
		st = sync_ok(ix);
		ck_assert_int_eq(st.added, 0);
	}

	/* an ID.json replaced (written anew, renamed over) is read again */
	{
		char tmp[256], dst[256];
		struct qindex_filter f;
		struct warns w = {0};

		put_entry("replacement", t0 + 180, "dave", "body\r\n", NULL);
		snprintf(tmp, sizeof(tmp), "%s/replacement.json", qdir);
		snprintf(dst, sizeof(dst), "%s/%s.json", qdir, ids[3]);
		{
			gchar *text, *fixed;

			ck_assert(g_file_get_contents(tmp, &text, NULL, NULL));
			{
				gchar **parts = g_strsplit(text, "\"replacement\"", -1);
				gchar *q = g_strdup_printf("\"%s\"", ids[3]);

				fixed = g_strjoinv(q, parts);
				g_strfreev(parts);
				g_free(q);
			}
			ck_assert(g_file_set_contents(tmp, fixed, -1, NULL));
			g_free(text);
			g_free(fixed);
		}
		ck_assert_int_eq(rename(tmp, dst), 0);
		unlink_in(qdir, "replacement", ".eml");
		st = sync_ok(ix);
		ck_assert_int_eq(st.updated, 1);
		ck_assert_int_eq(st.added, 0);
		qindex_filter_init(&f);
		f.id = ids[3];
		g = list(ix, &f);
		ck_assert_int_eq(g.ids->len, 1);
		ck_assert(g_str_has_prefix(g.rows->pdata[0], "dave|"));
		got_free(&g);

		/* replaced by something unreadable: the entry goes, with a warning */
		qindex_set_warn(ix, on_warn, &w);
		ck_assert(g_file_set_contents(tmp, "{\"id\": 1}", -1, NULL));
		ck_assert_int_eq(rename(tmp, dst), 0);
		st = sync_ok(ix);
		ck_assert_int_eq(st.warned, 1);
		ck_assert_int_eq(w.n, 1);
		ck_assert_int_eq(st.skipped, 1);
		g = list(ix, &f);
		ck_assert_int_eq(g.ids->len, 0);
		got_free(&g);
	}
	qindex_close(&ix);
}
END_TEST

/* The directory's mtime lets a sync skip reading it, when it can be trusted. */
START_TEST(sync_unchanged_dir)
{
	time_t t0 = time(NULL) - 3600;
	char id[QUAR_ID_MAX];
	struct qindex_sync_stats st;
	struct qindex *ix;

	make_id(id, sizeof(id), t0, 1);
	put_entry(id, t0, "alice", "x\r\n", NULL);
	ix = open_ix(NULL);
	/* a fresh mtime is not trusted: the next sync reads again */
	fresh_dir();
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	age_dir();
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 0);
	/* reopening the index (WAL and shm kept) changes nothing */
	qindex_close(&ix);
	ix = open_ix(NULL);
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 0);
	/* a new entry changes the directory */
	make_id(id, sizeof(id), t0 + 1, 2);
	put_entry(id, t0 + 1, "bob", "y\r\n", NULL);
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	ck_assert_int_eq(st.added, 1);
	qindex_close(&ix);
}
END_TEST

/* Corrupt files: skipped with one warning each, re-read once changed. */
START_TEST(sync_corrupt_skipped)
{
	static const struct {
		const char *text, *why;
	} bad[] = {
	    {"", "not a JSON object"},
	    {"{\"id\": \"ID\",", "string expected"},
	    {"[1, 2]", "not a JSON object"},
	    {"{\"id\": \"OTHER\", \"received_at\": \"2026-01-01T00:00:00Z\"}", "is not"},
	    {"{\"id\": \"ID\", \"size\": \"12\"}", "size: not a number"},
	    {"{\"id\": \"ID\", \"size\": 1.5}", "size"},
	    {"{\"id\": \"ID\", \"size\": -1}", "size"},
	    {"{\"id\": \"ID\", \"truncated\": 0}", "truncated"},
	    {"{\"id\": \"ID\", \"user\": 7}", "user: not a string"},
	    {"{\"id\": \"ID\", \"user\": \"a\x01b\"}", "control character"},
	    {"{\"id\": \"ID\", \"user\": \"a\\qb\"}", "bad escape"},
	    {"{\"id\": \"ID\", \"user\": \"\\u12\"}", "bad \\u escape"},
	    {"{\"id\": \"ID\"} x", "text after"},
	    {"{\"id\": \"ID\" \"user\": \"a\"}", "',' or '}' expected"},
	    {"{\"id\": \"ID\", \"user\" \"a\"}", "':' expected"},
	    {"{\"id\": \"ID\", \"x\": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
	     "too deep"},
	    {"{\"id\": \"ID\", \"x\": \"\xff\"}", "invalid UTF-8"},
	    {"{\"id\": \"ID\", \"x\": 01}", "',' or '}'"},
	    {"{\"id\": \"ID\", \"x\": tru}", "bad literal"},
	    {"{\"id\": \"ID\"}", "received_at"}, /* and an id without a time */
	};
	size_t nbad = sizeof(bad) / sizeof(bad[0]);
	time_t t0 = time(NULL) - 3600;
	char good[QUAR_ID_MAX];
	struct qindex_sync_stats st;
	struct warns w = {0};
	struct qindex *ix;
	struct got g;

	make_id(good, sizeof(good), t0, 0);
	put_entry(good, t0, "alice", "ok\r\n", NULL);
	for (size_t i = 0; i < nbad; i++) {
		char id[QUAR_ID_MAX], name[80];
		gchar *text;

		if (i == nbad - 1)
			snprintf(id, sizeof(id), "notime-%zu", i);
		else
			make_id(id, sizeof(id), t0 + 1, (unsigned)(i + 1));
		text = g_strdup(bad[i].text);
		{
			/* put the file's own id where the text says ID */
			gchar **parts = g_strsplit(text, "\"ID\"", -1);
			gchar *quoted = g_strdup_printf("\"%s\"", id);

			g_free(text);
			text = g_strjoinv(quoted, parts);
			g_strfreev(parts);
			g_free(quoted);
		}
		snprintf(name, sizeof(name), "%s.json", id);
		write_file(qdir, name, text, strlen(text));
		g_free(text);
	}
	/* too big */
	{
		size_t big = (1 << 20) + 10;
		char *b = malloc(big), id[QUAR_ID_MAX], name[80];

		memset(b, ' ', big);
		make_id(id, sizeof(id), t0 + 2, 1000);
		snprintf(name, sizeof(name), "%s.json", id);
		write_file(qdir, name, b, big);
		free(b);
	}
	ix = open_ix(&w);
	st = sync_ok(ix);
	ck_assert_int_eq(st.added, 1);
	ck_assert_int_eq(st.skipped, nbad + 1);
	ck_assert_int_eq(st.warned, nbad + 1);
	ck_assert_int_eq(w.n, (int)nbad + 1);
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 1);
	got_free(&g);

	/* each reason, as warned */
	for (size_t i = 0; i < nbad; i++) {
		char id[QUAR_ID_MAX], name[80];
		struct warns one = {0};
		struct qindex *ix2;
		char path[256];

		if (i == nbad - 1)
			snprintf(id, sizeof(id), "notime-%zu", i);
		else
			make_id(id, sizeof(id), t0 + 1, (unsigned)(i + 1));
		snprintf(name, sizeof(name), "%s.json", id);
		/* touch it: changed files are read (and warned about) again */
		snprintf(path, sizeof(path), "%s/%s", qdir, name);
		{
			struct timespec ts[2] = {{0, UTIME_NOW}, {(time_t)i + 1000, 0}};

			ck_assert_int_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
		}
		fresh_dir(); /* files changed in place do not change the directory */
		ix2 = open_ix(&one);
		st = sync_ok(ix2);
		ck_assert_int_eq(one.n, 1);
		ck_assert_msg(
		    strstr(one.last, bad[i].why) != NULL && strstr(one.last, name),
		    "case %zu: warned '%s', want '%s'", i, one.last, bad[i].why);
		qindex_close(&ix2);
	}

	/* unchanged bad files are neither parsed nor warned about again */
	w.n = 0;
	fresh_dir();
	st = sync_ok(ix);
	ck_assert_int_eq(st.full, 1);
	ck_assert_int_eq(st.warned, 0);
	ck_assert_int_eq(w.n, 0);
	ck_assert_int_eq(st.skipped, nbad + 1);

	/* repaired: indexed */
	{
		char id[QUAR_ID_MAX];

		make_id(id, sizeof(id), t0 + 1, 1);
		put_entry(id, t0 + 1, "bob", "fixed\r\n", NULL);
		st = sync_ok(ix);
		ck_assert_int_eq(st.added, 1);
		ck_assert_int_eq(st.skipped, nbad);
		/* and a removed bad file is forgotten */
		make_id(id, sizeof(id), t0 + 1, 2);
		unlink_in(qdir, id, ".json");
		st = sync_ok(ix);
		ck_assert_int_eq(st.skipped, nbad - 1);
	}
	qindex_close(&ix);
}
END_TEST

/* The reader: escapes, surrogates, bad UTF-8, nulls, unknown members. */
START_TEST(json_reader)
{
	time_t t0 = time(NULL) - 3600;
	char id[QUAR_ID_MAX], name[80], *text;
	struct qindex *ix;
	struct got g;

	make_id(id, sizeof(id), t0, 7);
	text = g_strdup_printf(
	    "\xef\xbb\xbf {\"id\":\"%s\",\"received_at\":\"2026-11-29T15:43:45+09:00\","
	    "\"user\":\"t\\u00e4ro\\/x\",\"subject\":\"\\ud83d\\ude00 \\ud800 \\u0000 "
	    "\xe8\xab\x8b \xc3\x28 \\\"q\\\"\",\"from\":null,\"size\":12,"
	    "\"truncated\":true,\"future\":{\"a\":[1,-2.5e+3,\"\\u00e4\",null]},"
	    "\"n\":-0.5,\"eml\":\"dropped\",\"released_at\":1}",
	    id);
	snprintf(name, sizeof(name), "%s.json", id);
	write_file(qdir, name, text, strlen(text));
	g_free(text);
	ix = open_ix(NULL);
	ck_assert_int_eq(sync_ok(ix).added, 1);
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 1);
	ck_assert_str_eq(g.rows->pdata[0],
	                 "t\xc3\xa4ro/x|\xf0\x9f\x98\x80 \xef\xbf\xbd \xef\xbf\xbd "
	                 "\xe8\xab\x8b \xef\xbf\xbd( \"q\"|(null)|12|1|0|-|"
	                 "\"future\": {\"a\":[1,-2.5e+3,\"\\u00e4\",null]}, \"n\": -0.5");
	got_free(&g);
	/* received_at with an offset is stored as given, sorted by its instant */
	{
		struct qindex_filter f;

		qindex_filter_init(&f);
		f.since_s = 1795934625;
		f.before_s = 1795934626;
		g = list(ix, &f);
		ck_assert_int_eq(g.ids->len, 1);
		got_free(&g);
	}
	qindex_close(&ix);
}
END_TEST

/* ------------------------------------------------------------------ list */

START_TEST(list_filters)
{
	time_t t0 = time(NULL) - 10 * 86400;
	char ids[10][QUAR_ID_MAX];
	struct qindex_filter f;
	struct qindex *ix;
	struct got g;

	/* one a day for 10 days; users alternate; two at the same second */
	for (int i = 0; i < 10; i++) {
		time_t t = t0 + (i == 9 ? 8 : i) * 86400;

		make_id(ids[i], sizeof(ids[i]), t, (unsigned)i);
		put_entry(ids[i], t, i % 2 ? "bob@example.jp" : "alice", "m\r\n", NULL);
	}
	ix = open_ix(NULL);
	sync_ok(ix);

	qindex_filter_init(&f);
	f.user = "bob@example.jp";
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 5);
	ck_assert_str_eq(g.ids->pdata[0], ids[9]); /* same second as 8: id decides */
	ck_assert_str_eq(g.ids->pdata[4], ids[1]);
	for (unsigned i = 0; i < g.ids->len; i++)
		ck_assert(g_str_has_prefix(g.rows->pdata[i], "bob@example.jp|"));
	got_free(&g);

	f.user = "Bob@example.jp"; /* exact match */
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 0);
	got_free(&g);

	qindex_filter_init(&f);
	f.since_s = (int64_t)t0 + 5 * 86400;
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 5); /* days 5..8 and the extra one at 8 */
	ck_assert_str_eq(g.ids->pdata[0], ids[9]);
	ck_assert_str_eq(g.ids->pdata[1], ids[8]);
	ck_assert_str_eq(g.ids->pdata[4], ids[5]);
	got_free(&g);

	f.user = "alice";
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 2); /* 6, 8 */
	got_free(&g);

	qindex_filter_init(&f);
	f.limit = 3;
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 3);
	ck_assert_str_eq(g.ids->pdata[2], ids[7]);
	got_free(&g);

	qindex_filter_init(&f);
	f.id = ids[3];
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 1);
	ck_assert_str_eq(g.ids->pdata[0], ids[3]);
	got_free(&g);

	qindex_filter_init(&f);
	f.before_s = (int64_t)t0 + 2 * 86400;
	g = list(ix, &f);
	ck_assert_int_eq(g.ids->len, 2);
	got_free(&g);

	/* counting only */
	{
		char err[64];

		ck_assert_int_eq(qindex_list(ix, NULL, NULL, NULL, err, sizeof(err)), 10);
	}
	qindex_close(&ix);
}
END_TEST

/* ------------------------------------------------------- delete & purge */

START_TEST(delete_and_purge)
{
	time_t now = time(NULL);
	char ids[6][QUAR_ID_MAX], err[256], badid[QUAR_ID_MAX], name[80];
	unsigned removed = 99;
	struct qindex *ix;
	struct got g;

	for (int i = 0; i < 6; i++) {
		make_id(ids[i], sizeof(ids[i]), now - (i + 1) * 10 * 86400, (unsigned)i);
		put_entry(ids[i], now - (i + 1) * 10 * 86400, "alice", "m\r\n", NULL);
	}
	/* an unreadable entry, 45 days old by its id */
	make_id(badid, sizeof(badid), now - 45 * 86400, 77);
	snprintf(name, sizeof(name), "%s.json", badid);
	write_file(qdir, name, "{", 1);
	snprintf(name, sizeof(name), "%s.eml", badid);
	write_file(qdir, name, "x", 1);

	ix = open_ix(NULL);
	sync_ok(ix);
	ck_assert_int_eq(qindex_delete(ix, ids[0], err, sizeof(err)), 0);
	ck_assert(!file_exists(qdir, ids[0], ".json"));
	ck_assert(!file_exists(qdir, ids[0], ".eml"));
	ck_assert_int_eq(qindex_delete(ix, ids[0], err, sizeof(err)), 1);
	ck_assert_int_eq(qindex_delete(ix, "../../etc/passwd", err, sizeof(err)), -1);

	/* received before now-30d: 40, 50 and 60 days ago, and the bad one
	 * (45 days by its id); the one received at exactly now-30d stays */
	ck_assert_int_eq(qindex_purge(ix, now - 30 * 86400, &removed, err, sizeof(err)),
	                 0);
	ck_assert_int_eq(removed, 4);
	ck_assert(file_exists(qdir, ids[1], ".json"));
	ck_assert(file_exists(qdir, ids[2], ".json"));
	for (int i = 3; i < 6; i++) {
		ck_assert(!file_exists(qdir, ids[i], ".json"));
		ck_assert(!file_exists(qdir, ids[i], ".eml"));
	}
	ck_assert(!file_exists(qdir, badid, ".json"));
	ck_assert(!file_exists(qdir, badid, ".eml"));
	g = list(ix, NULL);
	ck_assert_int_eq(g.ids->len, 2);
	got_free(&g);
	ck_assert_int_eq(sync_ok(ix).skipped, 0);

	/* purge catches entries not indexed yet */
	{
		char id[QUAR_ID_MAX];

		make_id(id, sizeof(id), now - 100 * 86400, 50);
		put_entry(id, now - 100 * 86400, "bob", "m\r\n", NULL);
		ck_assert_int_eq(
		    qindex_purge(ix, now - 30 * 86400, &removed, err, sizeof(err)), 0);
		ck_assert_int_eq(removed, 1);
		ck_assert(!file_exists(qdir, id, ".json"));
	}
	qindex_close(&ix);
}
END_TEST

/* ------------------------------------------------------------- release */

START_TEST(released_memory)
{
	time_t t0 = time(NULL) - 3600;
	char id[QUAR_ID_MAX], err[256];
	const char *body = "the original\r\n";
	gchar *sha = g_compute_checksum_for_string(G_CHECKSUM_SHA256, body, -1);
	struct qindex *ix, *ro;
	struct got g;

	make_id(id, sizeof(id), t0, 1);
	put_entry(id, t0, "alice", body, NULL);
	ix = open_ix(NULL);
	sync_ok(ix);
	ck_assert_int_eq(qindex_released(ix, sha), 0);
	ck_assert_int_eq(qindex_released(ix, "not-a-hash"), -1);
	ck_assert_int_eq(qindex_released(ix,
	                                 "ABCDEF0000000000000000000000000000000000000000"
	                                 "000000000000000000"),
	                 -1);
	ck_assert_int_eq(
	    qindex_mark_released(ix, sha, id, "root via imap", err, sizeof(err)), 0);
	ck_assert_int_eq(qindex_released(ix, sha), 1);
	g = list(ix, NULL);
	ck_assert_ptr_nonnull(strstr(g.rows->pdata[0], "|root via imap|"));
	got_free(&g);

	/* another handle (another process: the daemon), read-only too */
	ro = qindex_open(&cfg, 1, err, sizeof(err));
	ck_assert_msg(ro != NULL, "%s", err);
	ck_assert_int_eq(qindex_released(ro, sha), 1);
	ck_assert_int_eq(qindex_sync(ro, NULL, err, sizeof(err)), -1);
	ck_assert_int_eq(qindex_mark_released(ro, sha, id, "x", err, sizeof(err)), -1);
	qindex_close(&ro);

	/* the memory outlives the entry */
	ck_assert_int_eq(qindex_delete(ix, id, err, sizeof(err)), 0);
	qindex_close(&ix);
	ix = open_ix(NULL);
	ck_assert_int_eq(qindex_released(ix, sha), 1);
	qindex_close(&ix);
	g_free(sha);
}
END_TEST

START_TEST(open_errors)
{
	char err[256] = "";
	struct config c2 = cfg;
	struct qindex *ix;

	/* read-only before the index exists */
	ix = qindex_open(&cfg, 1, err, sizeof(err));
	ck_assert_ptr_null(ix);
	ck_assert_ptr_nonnull(strstr(err, ".index.sqlite"));
	snprintf(c2.quarantine_dir, sizeof(c2.quarantine_dir), "%s/missing", qdir);
	ix = qindex_open(&c2, 0, err, sizeof(err));
	ck_assert_ptr_null(ix);
	ck_assert_ptr_nonnull(strstr(err, "missing"));
	/* an index elsewhere */
	snprintf(c2.quarantine_dir, sizeof(c2.quarantine_dir), "%s/", qdir);
	snprintf(c2.quarantine_index, sizeof(c2.quarantine_index), "%s/other.db", qdir);
	ix = qindex_open(&c2, 0, err, sizeof(err));
	ck_assert_msg(ix != NULL, "%s", err);
	ck_assert_str_eq(qindex_dir(ix), qdir);
	ck_assert(g_str_has_suffix(qindex_path(ix), "/other.db"));
	qindex_close(&ix);
	/* not an SQLite file */
	write_file(qdir, "junk.db", "this is not a database, not at all, no\n", 39);
	snprintf(c2.quarantine_index, sizeof(c2.quarantine_index), "%s/junk.db", qdir);
	ix = qindex_open(&c2, 0, err, sizeof(err));
	ck_assert_ptr_null(ix);
	qindex_close(NULL);
}
END_TEST

/* ------------------------------------------------------------ threads */

struct thr {
	struct qindex *ix;
	const char *sha_yes, *sha_no;
	int bad;
};

static void *checker(void *arg)
{
	struct thr *t = arg;

	for (int i = 0; i < 2000; i++) {
		if (qindex_released(t->ix, t->sha_yes) != 1 ||
		    qindex_released(t->ix, t->sha_no) != 0)
			t->bad++;
	}
	return NULL;
}

/* Worker threads share one handle while another handle writes. */
START_TEST(threads_share_a_handle)
{
	time_t t0 = time(NULL) - 3600;
	char id[QUAR_ID_MAX], err[256];
	gchar *yes = g_compute_checksum_for_string(G_CHECKSUM_SHA256, "yes", -1);
	gchar *no = g_compute_checksum_for_string(G_CHECKSUM_SHA256, "no", -1);
	struct qindex *shared = open_ix(NULL), *writer = open_ix(NULL);
	struct thr th[4];
	pthread_t tid[4];

	ck_assert_int_eq(qindex_mark_released(writer, yes, "x", "t", err, sizeof(err)),
	                 0);
	for (int i = 0; i < 4; i++) {
		th[i] = (struct thr){shared, yes, no, 0};
		ck_assert_int_eq(pthread_create(&tid[i], NULL, checker, &th[i]), 0);
	}
	for (unsigned i = 0; i < 200; i++) {
		make_id(id, sizeof(id), t0 + i, i);
		put_entry(id, t0 + i, "alice", "m\r\n", NULL);
		ck_assert_msg(qindex_add(writer, id, err, sizeof(err)) == 0, "%s", err);
		if (i % 50 == 0) {
			ck_assert_msg(qindex_sync(writer, NULL, err, sizeof(err)) == 0,
			              "%s", err);
			ck_assert_msg(qindex_sync(shared, NULL, err, sizeof(err)) == 0,
			              "%s", err);
		}
	}
	ck_assert_int_eq(qindex_purge(writer, t0 + 100, NULL, err, sizeof(err)), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(tid[i], NULL);
		ck_assert_int_eq(th[i].bad, 0);
	}
	ck_assert_int_eq(qindex_list(shared, NULL, NULL, NULL, err, sizeof(err)), 100);
	qindex_close(&shared);
	qindex_close(&writer);
	g_free(yes);
	g_free(no);
}
END_TEST

/* ---------------------------------------------------------- admin_main */

/* Runs admin_main with stdout and stderr into files; returns the code. */
static int run_admin(char **out_r, char **errout_r, ...)
{
	char *argv[32], outp[128], errp[128];
	int argc = 0, saved_out, saved_err, fo, fe, rc;
	va_list ap;
	const char *a;

	argv[argc++] = "quarantine";
	va_start(ap, errout_r);
	while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
		argv[argc++] = (char *)a;
	va_end(ap);
	argv[argc] = NULL;
	snprintf(outp, sizeof(outp), "%s.out", qdir);
	snprintf(errp, sizeof(errp), "%s.err", qdir);
	fflush(stdout);
	fflush(stderr);
	saved_out = dup(1);
	saved_err = dup(2);
	fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fo, 1);
	dup2(fe, 2);
	rc = admin_main(argc, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(saved_out, 1);
	dup2(saved_err, 2);
	close(saved_out);
	close(saved_err);
	close(fo);
	close(fe);
	ck_assert(g_file_get_contents(outp, out_r, NULL, NULL));
	ck_assert(g_file_get_contents(errp, errout_r, NULL, NULL));
	unlink(outp);
	unlink(errp);
	return rc;
}

static char *write_config(void)
{
	char *path = g_strdup_printf("%s.yaml", qdir);
	char *text = g_strdup_printf("listeners:\n  - protocol: pop3\n"
	                             "    listen: 127.0.0.1:11110\n"
	                             "    upstream: 127.0.0.1:110\n"
	                             "quarantine:\n  dir: %s\n",
	                             qdir);

	ck_assert(g_file_set_contents(path, text, -1, NULL));
	g_free(text);
	return path;
}

START_TEST(admin_cli)
{
	time_t t0 = time(NULL) - 3600;
	char id[QUAR_ID_MAX], *out, *eo, *conf = write_config();
	char *dest = g_strdup_printf("%s/../%s-export.eml", qdir, qdir + 5);
	const char *body = "From: a@b\r\nSubject: s\r\n\r\nbody\r\n";
	gchar *got_body;
	gsize got_len;
	struct stat st;

	make_id(id, sizeof(id), t0, 1);
	put_entry(id, t0, "alice", body, NULL);

	ck_assert_int_eq(run_admin(&out, &eo, NULL), 2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "--help", NULL), 0);
	ck_assert_ptr_nonnull(strstr(out, "quarantine list"));
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "frobnicate", NULL), 2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(
	    run_admin(&out, &eo, "list", "--to", "x", "--config", conf, NULL), 2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(
	    run_admin(&out, &eo, "list", "--since", "yesterday", "--config", conf, NULL),
	    2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "show", "--config", conf, NULL), 2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "show", "../x", "--config", conf, NULL), 2);
	g_free(out), g_free(eo);
	ck_assert_int_eq(
	    run_admin(&out, &eo, "list", "--config", "/nonexistent.yaml", NULL), 1);
	ck_assert_int_eq(strchr(eo, '\n') - eo + 1, (long)strlen(eo)); /* one line */
	g_free(out), g_free(eo);

	ck_assert_int_eq(run_admin(&out, &eo, "list", "--json", "--config", conf, NULL),
	                 0);
	ck_assert(g_str_has_prefix(out, "[\n{\"id\": \""));
	ck_assert(g_str_has_suffix(out, "}\n]\n"));
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "list", "--json", "--user=nobody",
	                           "--config", conf, NULL),
	                 0);
	ck_assert_str_eq(out, "[\n]\n");
	g_free(out), g_free(eo);

	ck_assert_int_eq(run_admin(&out, &eo, "show", id, "--config", conf, NULL), 0);
	ck_assert_ptr_nonnull(strstr(out, "\"user\": \"alice\""));
	ck_assert_ptr_nonnull(strstr(out, "\nSubject: s\n"));
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "show", "20000101T000000Z-00000000",
	                           "--config", conf, NULL),
	                 1);
	g_free(out), g_free(eo);

	/* export: 0600, byte-identical, no overwrite without --force */
	unlink(dest);
	ck_assert_int_eq(
	    run_admin(&out, &eo, "export", id, "--to", dest, "--config", conf, NULL), 0);
	g_free(out), g_free(eo);
	ck_assert_int_eq(stat(dest, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	ck_assert(g_file_get_contents(dest, &got_body, &got_len, NULL));
	ck_assert_str_eq(got_body, body);
	g_free(got_body);
	ck_assert(g_file_set_contents(dest, "keep", -1, NULL));
	ck_assert_int_eq(
	    run_admin(&out, &eo, "export", id, "--to", dest, "--config", conf, NULL), 1);
	ck_assert_ptr_nonnull(strstr(eo, "exists"));
	g_free(out), g_free(eo);
	ck_assert(g_file_get_contents(dest, &got_body, NULL, NULL));
	ck_assert_str_eq(got_body, "keep");
	g_free(got_body);
	ck_assert_int_eq(run_admin(&out, &eo, "export", id, "--force", "--to", dest,
	                           "--config", conf, NULL),
	                 0);
	g_free(out), g_free(eo);
	ck_assert(g_file_get_contents(dest, &got_body, NULL, NULL));
	ck_assert_str_eq(got_body, body);
	g_free(got_body);
	unlink(dest);

	/* release without a configured target: an error, nothing remembered */
	ck_assert_int_eq(run_admin(&out, &eo, "release", id, "--config", conf, NULL), 1);
	ck_assert_ptr_nonnull(strstr(eo, "imap_user"));
	g_free(out), g_free(eo);
	/* a truncated entry is not released (without --force) */
	{
		char id2[QUAR_ID_MAX], *path, *text, **parts, *trunc;

		make_id(id2, sizeof(id2), t0 + 1, 2);
		put_entry(id2, t0 + 1, "bob", body, NULL);
		path = g_strdup_printf("%s/%s.json", qdir, id2);
		ck_assert(g_file_get_contents(path, &text, NULL, NULL));
		parts = g_strsplit(text, "\"truncated\": false", -1);
		trunc = g_strjoinv("\"truncated\": true", parts);
		ck_assert(g_file_set_contents(path, trunc, -1, NULL));
		ck_assert_int_eq(
		    run_admin(&out, &eo, "release", id2, "--config", conf, NULL), 1);
		ck_assert_ptr_nonnull(strstr(eo, "truncated"));
		g_free(out), g_free(eo);
		ck_assert_int_eq(
		    run_admin(&out, &eo, "delete", id2, "--config", conf, NULL), 0);
		g_free(out), g_free(eo);
		g_strfreev(parts);
		g_free(text);
		g_free(trunc);
		g_free(path);
	}

	ck_assert_int_eq(
	    run_admin(&out, &eo, "purge", "--older-than", "2h", "--config", conf, NULL),
	    0);
	ck_assert_ptr_nonnull(strstr(out, "purged 0 entries"));
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "delete", id, "--config", conf, NULL), 0);
	g_free(out), g_free(eo);
	ck_assert_int_eq(run_admin(&out, &eo, "delete", id, "--config", conf, NULL), 1);
	g_free(out), g_free(eo);
	unlink(conf);
	g_free(conf);
	g_free(dest);
}
END_TEST

/* ----------------------------------------------------------- 100,000 */

/*
 * 10,000 in the default run; the bench (ctest -L bench) sets
 * MAILMOAT_QUARANTINE_SCALE=100000 for the figures in the README.
 */
static unsigned big_n_value(void)
{
	const char *e = getenv("MAILMOAT_QUARANTINE_SCALE");
	unsigned long n = e != NULL ? strtoul(e, NULL, 10) : 0;

	return n >= 100 && n <= 10000000 ? (unsigned)(n / 100 * 100) : 10000;
}
#define BIG_N big_n_value()

struct count {
	unsigned long n, user;
};

static int count_cb(void *arg, const struct qindex_entry *e)
{
	struct count *c = arg;

	c->n++;
	c->user += e->user != NULL && strcmp(e->user, "user7") == 0;
	return 0;
}

START_TEST(scale_100k)
{
	time_t t0 = time(NULL) - 20 * 86400;
	char err[256], id[QUAR_ID_MAX], name[160], json[1024];
	struct qindex_sync_stats st;
	struct qindex_filter f;
	struct count c = {0};
	struct qindex *ix;
	double t, make_ms;
	int n;

	t = now_ms();
	for (unsigned i = 0; i < BIG_N; i++) {
		time_t when = t0 + i * 10;
		char stamp[32];
		int len, fd;

		make_id(id, sizeof(id), when, i);
		rfc3339(stamp, sizeof(stamp), when);
		len = snprintf(
		    json, sizeof(json),
		    "{\n  \"id\": \"%s\",\n  \"received_at\": \"%s\",\n"
		    "  \"protocol\": \"pop3\",\n  \"user\": \"user%u\",\n"
		    "  \"upstream\": \"127.0.0.1:110\",\n  \"signature\": \"Eicar\",\n"
		    "  \"verdict\": \"infected\",\n  \"size\": 6,\n"
		    "  \"truncated\": false,\n  \"sha256\": \"%064x\",\n"
		    "  \"from\": \"a@b\",\n  \"subject\": \"n %u\",\n"
		    "  \"session\": \"s\",\n  \"message\": \"msg=1\"\n}\n",
		    id, stamp, i % 100, i, i);
		snprintf(name, sizeof(name), "%s/%s.json", qdir, id);
		fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(write(fd, json, (size_t)len), len);
		close(fd);
		snprintf(name, sizeof(name), "%s/%s.eml", qdir, id);
		fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(write(fd, "x\r\n\r\n\r\n", 6), 6);
		close(fd);
	}
	make_ms = now_ms() - t;
	ix = open_ix(NULL); /* creates the index file: a change of the directory */
	age_dir();
	t = now_ms();
	st = sync_ok(ix);
	printf(
	    "qindex 100k: files written in %.0f ms; first sync %.0f ms (readdir %.0f ms, "
	    "%u added)\n",
	    make_ms, now_ms() - t, st.readdir_ms, st.added);
	ck_assert_int_eq(st.added, BIG_N);

	t = now_ms();
	st = sync_ok(ix);
	printf("qindex 100k: sync, directory unchanged: %.2f ms (full=%d)\n",
	       now_ms() - t, st.full);
	ck_assert_int_eq(st.full, 0);

	/* one more entry: a full readdir and merge, one file parsed */
	make_id(id, sizeof(id), t0 + BIG_N * 10, BIG_N);
	put_entry(id, t0 + BIG_N * 10, "user7", "m\r\n", NULL);
	t = now_ms();
	st = sync_ok(ix);
	printf("qindex 100k: sync after one new entry: %.0f ms (readdir %.0f ms)\n",
	       now_ms() - t, st.readdir_ms);
	ck_assert_int_eq(st.full, 1);
	ck_assert_int_eq(st.added, 1);

	qindex_filter_init(&f);
	f.user = "user7";
	t = now_ms();
	n = qindex_list(ix, &f, count_cb, &c, err, sizeof(err));
	printf("qindex 100k: list --user (%d entries): %.1f ms\n", n, now_ms() - t);
	ck_assert_int_eq(n, BIG_N / 100 + 1);
	ck_assert_int_eq(c.user, BIG_N / 100 + 1);

	c = (struct count){0};
	t = now_ms();
	n = qindex_list(ix, NULL, count_cb, &c, err, sizeof(err));
	printf("qindex 100k: list all (%d entries): %.1f ms\n", n, now_ms() - t);
	ck_assert_int_eq(n, BIG_N + 1);

	qindex_filter_init(&f);
	f.since_s = (int64_t)t0 + (BIG_N - 50) * 10;
	c = (struct count){0};
	ck_assert_int_eq(qindex_list(ix, &f, count_cb, &c, err, sizeof(err)), 51);
	qindex_close(&ix);
}
END_TEST

static Suite *qindex_suite(void)
{
	Suite *s = suite_create("qindex");
	TCase *tc = tcase_create("index");
	TCase *big = tcase_create("scale");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, parse_times);
	tcase_add_test(tc, valid_ids);
	tcase_add_test(tc, json_str_escapes);
	tcase_add_test(tc, sync_real_store);
	tcase_add_test(tc, sync_add_drop_and_eml);
	tcase_add_test(tc, sync_unchanged_dir);
	tcase_add_test(tc, sync_corrupt_skipped);
	tcase_add_test(tc, json_reader);
	tcase_add_test(tc, list_filters);
	tcase_add_test(tc, delete_and_purge);
	tcase_add_test(tc, released_memory);
	tcase_add_test(tc, open_errors);
	tcase_add_test(tc, threads_share_a_handle);
	tcase_add_test(tc, admin_cli);
	suite_add_tcase(s, tc);
	tcase_add_checked_fixture(big, setup, teardown);
	tcase_set_timeout(big, 600);
	tcase_add_test(big, scale_100k);
	suite_add_tcase(s, big);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(qindex_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
