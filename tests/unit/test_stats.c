/*
 * test_stats.c - Check suite for proxy/stats.c, the HTTP request parser of
 * proxy/metrics.c and the request line reader of proxy/control.c.
 *
 * Rendering: a fixed snapshot rendered as Prometheus text, status text and
 * JSON must match golden text to the byte. Counters: the histogram's
 * bucket edges, the scan-job hook. Parsers: table-driven; every case is
 * fed whole, one byte at a time, split in two at every point and in random
 * pieces, each piece in its own exact-size heap buffer (AddressSanitizer
 * then sees any read past what the parser was given); every run must end
 * the same way. Bounds are probed at the limit and one past it.
 */
#include <check.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "proxy/control.h"
#include "proxy/metrics.h"
#include "proxy/msgjob.h"
#include "proxy/spool.h"
#include "proxy/stats.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define B(x)                                                                             \
	{                                                                                \
		x, sizeof(x) - 1                                                         \
	}
#define RANDOM_SPLITS 40

struct bytes {
	const char *p;
	size_t n;
};

/* xorshift64: deterministic random splits */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* ---------------- rendering ---------------- */

static void golden_snap(struct stats_snap *s)
{
	memset(s, 0, sizeof(*s));
	s->sess_open[STATS_POP3] = 1;
	s->sess_open[STATS_IMAP] = 2;
	s->sess_total[STATS_POP3] = 10;
	s->sess_total[STATS_IMAP] = 20;
	s->sess_total[STATS_RELAY] = 3;
	s->scanned = 7;
	s->scanned_bytes = 123456;
	s->verdicts[SCAN_CLEAN] = 5;
	s->verdicts[SCAN_INFECTED] = 1;
	s->verdicts[SCAN_ERROR] = 1;
	s->hist[0] = 2;                  /* <= 1 ms */
	s->hist[2] = 3;                  /* <= 10 ms */
	s->hist[9] = 1;                  /* <= 2.5 s */
	s->hist[STATS_HIST_BUCKETS] = 1; /* over 60 s */
	s->scan_ms_sum = 62543;
	s->bytes_down = 1000;
	s->bytes_up = 200;
	s->reloads = 2;
	s->reload_failures = 1;
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		s->errors[i] = i;
	s->uptime_s = 3723;
	s->start_time = 1700000000;
	s->have_engine = 1;
	s->db_version = 3;
	s->clamav_version = 27480;
	s->signatures = 12345;
	s->quar_ok = 1;
	s->quar_entries = 4;
	s->quar_bytes = 9999;
	snprintf(s->quar_dir, sizeof(s->quar_dir), "/var/q");
}

static const char golden_prom[] =
    "# HELP mailmoat_build_info The running mailmoat's version.\n"
    "# TYPE mailmoat_build_info gauge\n"
    "mailmoat_build_info{version=\"" MAILMOAT_VERSION "\"} 1\n"
    "# HELP mailmoat_start_time_seconds When the process started, in seconds since "
    "the Unix epoch.\n"
    "# TYPE mailmoat_start_time_seconds gauge\n"
    "mailmoat_start_time_seconds 1700000000\n"
    "# HELP mailmoat_uptime_seconds Seconds since the process started.\n"
    "# TYPE mailmoat_uptime_seconds gauge\n"
    "mailmoat_uptime_seconds 3723\n"
    "# HELP mailmoat_sessions_open Sessions open now, by protocol.\n"
    "# TYPE mailmoat_sessions_open gauge\n"
    "mailmoat_sessions_open{protocol=\"pop3\"} 1\n"
    "mailmoat_sessions_open{protocol=\"imap\"} 2\n"
    "mailmoat_sessions_open{protocol=\"relay\"} 0\n"
    "# HELP mailmoat_sessions_total Sessions accepted since start, by protocol.\n"
    "# TYPE mailmoat_sessions_total counter\n"
    "mailmoat_sessions_total{protocol=\"pop3\"} 10\n"
    "mailmoat_sessions_total{protocol=\"imap\"} 20\n"
    "mailmoat_sessions_total{protocol=\"relay\"} 3\n"
    "# HELP mailmoat_messages_scanned_total Messages scanned.\n"
    "# TYPE mailmoat_messages_scanned_total counter\n"
    "mailmoat_messages_scanned_total 7\n"
    "# HELP mailmoat_scanned_bytes_total Bytes of the messages scanned.\n"
    "# TYPE mailmoat_scanned_bytes_total counter\n"
    "mailmoat_scanned_bytes_total 123456\n"
    "# HELP mailmoat_verdicts_total Scan verdicts, by kind.\n"
    "# TYPE mailmoat_verdicts_total counter\n"
    "mailmoat_verdicts_total{verdict=\"clean\"} 5\n"
    "mailmoat_verdicts_total{verdict=\"infected\"} 1\n"
    "mailmoat_verdicts_total{verdict=\"error\"} 1\n"
    "@V@"
    "# HELP mailmoat_scan_duration_seconds Wall time of message scans.\n"
    "# TYPE mailmoat_scan_duration_seconds histogram\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.001\"} 2\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.005\"} 2\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.01\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.025\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.05\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.1\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.25\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"0.5\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"1\"} 5\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"2.5\"} 6\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"5\"} 6\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"10\"} 6\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"30\"} 6\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"60\"} 6\n"
    "mailmoat_scan_duration_seconds_bucket{le=\"+Inf\"} 7\n"
    "mailmoat_scan_duration_seconds_sum 62.543\n"
    "mailmoat_scan_duration_seconds_count 7\n"
    "# HELP mailmoat_traffic_bytes_total Bytes received: down from upstream servers, up "
    "from clients.\n"
    "# TYPE mailmoat_traffic_bytes_total counter\n"
    "mailmoat_traffic_bytes_total{direction=\"down\"} 1000\n"
    "mailmoat_traffic_bytes_total{direction=\"up\"} 200\n"
    "# HELP mailmoat_engine_reloads_total Signature reloads that put a new engine in "
    "use.\n"
    "# TYPE mailmoat_engine_reloads_total counter\n"
    "mailmoat_engine_reloads_total 2\n"
    "# HELP mailmoat_engine_reload_failures_total Signature reloads that failed (the old "
    "engine stayed).\n"
    "# TYPE mailmoat_engine_reload_failures_total counter\n"
    "mailmoat_engine_reload_failures_total 1\n"
    "# HELP mailmoat_engine_signatures Signatures in the engine in use.\n"
    "# TYPE mailmoat_engine_signatures gauge\n"
    "mailmoat_engine_signatures 12345\n"
    "# HELP mailmoat_engine_generation Generation of the engine in use (changes with "
    "every load).\n"
    "# TYPE mailmoat_engine_generation gauge\n"
    "mailmoat_engine_generation 3\n"
    "# HELP mailmoat_engine_db_version Version of the signature databases (daily.cvd; "
    "0: none).\n"
    "# TYPE mailmoat_engine_db_version gauge\n"
    "mailmoat_engine_db_version 27480\n"
    "# HELP mailmoat_quarantine_entries Messages in the quarantine directory.\n"
    "# TYPE mailmoat_quarantine_entries gauge\n"
    "mailmoat_quarantine_entries 4\n"
    "# HELP mailmoat_quarantine_bytes Bytes of the quarantine's entries (ID.eml and "
    "ID.json).\n"
    "# TYPE mailmoat_quarantine_bytes gauge\n"
    "mailmoat_quarantine_bytes 9999\n"
    "# HELP mailmoat_errors_total Failures, by kind.\n"
    "# TYPE mailmoat_errors_total counter\n"
    "mailmoat_errors_total{kind=\"upstream_connect\"} 0\n"
    "mailmoat_errors_total{kind=\"upstream_tls\"} 1\n"
    "mailmoat_errors_total{kind=\"client_tls\"} 2\n"
    "mailmoat_errors_total{kind=\"protocol\"} 3\n"
    "mailmoat_errors_total{kind=\"timeout\"} 4\n"
    "mailmoat_errors_total{kind=\"quarantine_write\"} 5\n"
    "mailmoat_errors_total{kind=\"spool\"} 6\n";

static const char golden_text[] =
    "mailmoat " MAILMOAT_VERSION ", up 0d 01:02:03 (since 2023-11-14T22:13:20Z)\n"
    "sessions:    pop3 1 open, 10 total; imap 2 open, 20 total; relay 0 open, 3 total\n"
    "messages:    7 scanned, 123456 bytes, average scan 8934 ms\n"
    "verdicts:    clean 5, infected 1, error 1@V@\n"
    "quarantine:  4 entries, 9999 bytes in /var/q\n"
    "database:    generation 3, version 27480, 12345 signatures; reloads 2, failed 1\n"
    "traffic:     1000 bytes down (from upstreams), 200 bytes up (from clients)\n"
    "errors:      upstream_tls 1, client_tls 2, protocol 3, timeout 4, "
    "quarantine_write 5, spool 6\n";

static const char golden_json[] =
    "{\"version\":\"" MAILMOAT_VERSION "\",\"uptime_seconds\":3723,"
    "\"start_time\":1700000000,\"sessions\":{\"pop3\":{\"open\":1,\"total\":10},"
    "\"imap\":{\"open\":2,\"total\":20},\"relay\":{\"open\":0,\"total\":3}},"
    "\"messages\":{\"scanned\":7,\"bytes\":123456,\"scan_ms_sum\":62543},"
    "\"verdicts\":{\"clean\":5,\"infected\":1,\"error\":1@V@},"
    "\"quarantine\":{\"dir\":\"/var/q\",\"entries\":4,\"bytes\":9999},"
    "\"database\":{\"generation\":3,\"version\":27480,\"signatures\":12345,"
    "\"reloads\":2,"
    "\"reload_failures\":1},\"traffic\":{\"down_bytes\":1000,\"up_bytes\":200},"
    "\"errors\":{\"upstream_connect\":0,\"upstream_tls\":1,\"client_tls\":2,"
    "\"protocol\":3,\"timeout\":4,\"quarantine_write\":5,\"spool\":6}}\n";

/*
 * The golden text with "@V@" replaced by one item per verdict kind past the
 * three it spells out (the scan result enum may grow): each is fmt with
 * the kind's name, and a count of 0.
 */
static char *golden_expand(const char *tpl, const char *fmt)
{
	const char *at = strstr(tpl, "@V@");
	struct stats_buf b = {0};

	ck_assert_ptr_nonnull(at);
	stats_buf_printf(&b, "%.*s", (int)(at - tpl), tpl);
	for (unsigned i = SCAN_ERROR + 1; i < SCAN_RESULT_COUNT; i++)
		stats_buf_printf(&b, fmt, scan_result_name((enum scan_result)i));
	stats_buf_printf(&b, "%s", at + 3);
	ck_assert(!b.oom);
	return b.data;
}

/* Compares rendered text with the golden one, printing where they part. */
static void assert_golden(const char *what, const struct stats_buf *b, const char *tpl,
                          const char *fmt)
{
	char *want = golden_expand(tpl, fmt);
	size_t n = strlen(want), i = 0;

	ck_assert_msg(!b->oom, "%s: out of memory", what);
	while (i < n && i < b->len && b->data[i] == want[i])
		i++;
	ck_assert_msg(
	    i == n && b->len == n,
	    "%s differs at byte %zu (got %zu bytes, want %zu):\n got: %.60s\nwant: "
	    "%.60s",
	    what, i, b->len, n, b->data + (i < b->len ? i : b->len), want + i);
	free(want);
}

START_TEST(test_render_prom_golden)
{
	struct stats_snap s;
	struct stats_buf b = {0};

	golden_snap(&s);
	stats_render_prom(&s, &b);
	assert_golden("prometheus", &b, golden_prom,
	              "mailmoat_verdicts_total{verdict=\"%s\"} 0\n");
	stats_buf_free(&b);
}
END_TEST

START_TEST(test_render_text_golden)
{
	struct stats_snap s;
	struct stats_buf b = {0};

	golden_snap(&s);
	stats_render_text(&s, &b);
	assert_golden("text", &b, golden_text, ", %s 0");
	stats_buf_free(&b);
}
END_TEST

START_TEST(test_render_json_golden)
{
	struct stats_snap s;
	struct stats_buf b = {0};

	golden_snap(&s);
	stats_render_json(&s, &b);
	assert_golden("json", &b, golden_json, ",\"%s\":0");
	stats_buf_free(&b);
}
END_TEST

/* What is not known is left out (metrics), or said (text, JSON), escaped. */
START_TEST(test_render_unknowns)
{
	struct stats_snap s;
	struct stats_buf b = {0};

	memset(&s, 0, sizeof(s));
	snprintf(s.quar_dir, sizeof(s.quar_dir), "/q\"\\\n");
	snprintf(s.quar_err, sizeof(s.quar_err), "Permission denied");
	stats_render_prom(&s, &b);
	ck_assert_ptr_null(strstr(b.data, "mailmoat_quarantine_"));
	ck_assert_ptr_null(strstr(b.data, "engine_signatures"));
	ck_assert_ptr_null(strstr(b.data, "engine_generation"));
	ck_assert_ptr_nonnull(strstr(b.data, "mailmoat_scan_duration_seconds_sum 0\n"));
	ck_assert_ptr_nonnull(
	    strstr(b.data, "mailmoat_scan_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
	stats_buf_free(&b);

	stats_render_text(&s, &b);
	ck_assert_ptr_nonnull(strstr(b.data, "\nquarantine:  unavailable (/q\"\\\n: "
	                                     "Permission denied)\n"));
	ck_assert_ptr_nonnull(strstr(b.data, "\ndatabase:    no engine; reloads 0"));
	ck_assert_ptr_nonnull(strstr(b.data, "\nerrors:      none\n"));
	ck_assert_ptr_nonnull(strstr(b.data, "average scan 0 ms"));
	stats_buf_free(&b);

	stats_render_json(&s, &b);
	ck_assert_ptr_nonnull(strstr(b.data,
	                             "\"quarantine\":{\"dir\":\"/q\\\"\\\\\\u000a\","
	                             "\"error\":\"Permission denied\"}"));
	ck_assert_ptr_nonnull(strstr(b.data, "\"database\":{\"reloads\":0,"));
	stats_buf_free(&b);
}
END_TEST

/* The buffer grows past its first allocation without losing a byte. */
START_TEST(test_buf_growth)
{
	struct stats_buf b = {0};
	char big[3000];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < 10; i++)
		stats_buf_printf(&b, "%d:%s\n", i, big);
	ck_assert(!b.oom);
	ck_assert_uint_eq(b.len, 10 * (2 + sizeof(big)));
	ck_assert_int_eq(b.data[b.len], '\0');
	ck_assert_int_eq(memcmp(b.data + 9 * (2 + sizeof(big)), "9:xx", 4), 0);
	stats_buf_free(&b);
}
END_TEST

/* ---------------- counters ---------------- */

/* A bucket holds scans up to and including its bound (Prometheus `le`). */
START_TEST(test_hist_edges)
{
	struct stats_snap a, b;

	stats_snapshot(&a);
	for (unsigned i = 0; i < STATS_HIST_BUCKETS; i++) {
		stats_scanned(SCAN_CLEAN, stats_hist_le_ms[i], 10); /* bucket i */
		stats_scanned(SCAN_INFECTED, stats_hist_le_ms[i] + 1,
		              1); /* bucket i + 1 */
	}
	stats_scanned(SCAN_ERROR, 0, 0);
	stats_scanned(SCAN_RESULT_COUNT, 5, 0); /* an unnamed kind: counted, no verdict */
	stats_snapshot(&b);
	ck_assert_uint_eq(b.hist[0] - a.hist[0], 2);
	ck_assert_uint_eq(b.hist[1] - a.hist[1], 3);
	for (unsigned i = 2; i < STATS_HIST_BUCKETS; i++)
		ck_assert_uint_eq(b.hist[i] - a.hist[i], 2);
	ck_assert_uint_eq(b.hist[STATS_HIST_BUCKETS] - a.hist[STATS_HIST_BUCKETS], 1);
	ck_assert_uint_eq(b.scanned - a.scanned, 2 * STATS_HIST_BUCKETS + 2);
	ck_assert_uint_eq(b.verdicts[SCAN_CLEAN] - a.verdicts[SCAN_CLEAN],
	                  STATS_HIST_BUCKETS);
	ck_assert_uint_eq(b.verdicts[SCAN_INFECTED] - a.verdicts[SCAN_INFECTED],
	                  STATS_HIST_BUCKETS);
	ck_assert_uint_eq(b.verdicts[SCAN_ERROR] - a.verdicts[SCAN_ERROR], 1);
	ck_assert_uint_eq(b.scanned_bytes - a.scanned_bytes, 11 * STATS_HIST_BUCKETS);
	for (unsigned i = 1; i < STATS_HIST_BUCKETS; i++)
		ck_assert_uint_lt(stats_hist_le_ms[i - 1], stats_hist_le_ms[i]);
}
END_TEST

START_TEST(test_sessions_bytes_errors)
{
	struct stats_snap a, b;

	stats_snapshot(&a);
	stats_session_open(STATS_IMAP);
	stats_session_open(STATS_IMAP);
	stats_session_close(STATS_IMAP);
	stats_session_open(STATS_PROTO_COUNT); /* ignored */
	stats_bytes(1, 100);
	stats_bytes(0, 7);
	stats_bytes(1, -4095); /* an error code, not bytes */
	stats_error(STATS_ERR_TIMEOUT);
	stats_error(STATS_ERR_COUNT); /* ignored */
	stats_snapshot(&b);
	ck_assert_uint_eq(b.sess_total[STATS_IMAP] - a.sess_total[STATS_IMAP], 2);
	ck_assert_uint_eq(b.sess_open[STATS_IMAP] - a.sess_open[STATS_IMAP], 1);
	ck_assert_uint_eq(b.bytes_down - a.bytes_down, 100);
	ck_assert_uint_eq(b.bytes_up - a.bytes_up, 7);
	ck_assert_uint_eq(b.errors[STATS_ERR_TIMEOUT] - a.errors[STATS_ERR_TIMEOUT], 1);
	ck_assert_str_eq(stats_err_name(STATS_ERR_QUARANTINE_WRITE), "quarantine_write");
	ck_assert_str_eq(stats_err_name(STATS_ERR_COUNT), "?");
	ck_assert_str_eq(stats_proto_name(STATS_RELAY), "relay");
}
END_TEST

/* The scan-job hook: a scan counts once; a cancelled or scan-less job does not. */
START_TEST(test_msgjob_hook)
{
	struct msgjob job;
	struct stats_snap a, b;
	struct spool *sp = spool_new(1024, NULL, 0);

	ck_assert_ptr_nonnull(sp);
	ck_assert_int_eq(spool_append(sp, "hello", 5), 0);
	memset(&job, 0, sizeof(job));
	job.spool = sp;
	job.verdict.result = SCAN_INFECTED;
	job.verdict.scan_ms = 3;
	stats_snapshot(&a);
	stats_msgjob(&job, 0);
	stats_msgjob(&job, UV_ECANCELED);
	job.skip_scan = 1;
	job.quar_failed = 1;
	stats_msgjob(&job, 0);
	stats_snapshot(&b);
	ck_assert_uint_eq(b.scanned - a.scanned, 1);
	ck_assert_uint_eq(b.scanned_bytes - a.scanned_bytes, 5);
	ck_assert_uint_eq(b.verdicts[SCAN_INFECTED] - a.verdicts[SCAN_INFECTED], 1);
	ck_assert_uint_eq(b.hist[1] - a.hist[1], 1);
	ck_assert_uint_eq(b.scan_ms_sum - a.scan_ms_sum, 3);
	ck_assert_uint_eq(b.errors[STATS_ERR_QUARANTINE_WRITE] -
	                      a.errors[STATS_ERR_QUARANTINE_WRITE],
	                  1);
	spool_unref(&sp);
}
END_TEST

static void write_file(const char *dir, const char *name, size_t size)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	for (size_t i = 0; i < size; i++)
		ck_assert_int_eq(write(fd, "x", 1), 1);
	close(fd);
}

/* Entries are ID.json; bytes are ID.json + ID.eml; nothing else counts. */
START_TEST(test_quarantine_count)
{
	char dir[] = "/tmp/mm-test-stats-XXXXXX", path[512];
	uint64_t entries = 99, bytes = 99;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(stats_quarantine_count(dir, &entries, &bytes), 0);
	ck_assert_uint_eq(entries, 0);
	ck_assert_uint_eq(bytes, 0);
	write_file(dir, "A1.json", 10);
	write_file(dir, "A1.eml", 100);
	write_file(dir, "B2.json", 20);
	write_file(dir, "B2.eml", 200);
	write_file(dir, "C3.eml.tmp", 1000);  /* being written */
	write_file(dir, "C3.json.tmp", 1000); /* being written */
	write_file(dir, ".index.sqlite", 1000);
	write_file(dir, ".json", 1000);
	write_file(dir, "notes.txt", 1000);
	snprintf(path, sizeof(path), "%s/D4.json", dir);
	ck_assert_int_eq(mkdir(path, 0700), 0); /* not a regular file */
	snprintf(path, sizeof(path), "%s/E5.json", dir);
	ck_assert_int_eq(symlink("A1.json", path), 0); /* not followed */
	ck_assert_int_eq(stats_quarantine_count(dir, &entries, &bytes), 0);
	ck_assert_uint_eq(entries, 2);
	ck_assert_uint_eq(bytes, 330);

	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(path), 0);
	ck_assert_int_lt(stats_quarantine_count(dir, &entries, &bytes), 0);
	ck_assert_uint_eq(entries, 0);
}
END_TEST

/* ---------------- the HTTP request parser ---------------- */

struct http_out {
	int res;
	char method[HTTP_METHOD_MAX];
	char target[HTTP_TARGET_MAX];
	int minor;
	unsigned hosts;
	int status;
	const char *error;
	uint64_t pos;
	uint64_t consumed; /* bytes used up to OK / ERROR, over all pieces */
};

/*
 * Feeds in[0..n) cut at the ascending offsets cuts[0..ncuts): the outcome
 * of the first request (or NEED_MORE when the input ends first).
 */
static void http_run(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct http_out *o)
{
	struct http_req_parser *p = malloc(sizeof(*p));
	size_t from = 0, k;

	ck_assert_ptr_nonnull(p);
	memset(o, 0, sizeof(*o));
	http_req_init(p);
	o->res = HTTP_NEED_MORE;
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n, plen = to - from, used = SIZE_MAX;
		char *piece = malloc(plen != 0 ? plen : 1);
		int r;

		ck_assert_ptr_nonnull(piece);
		memcpy(piece, in + from, plen);
		r = http_req_feed(p, piece, plen, &used);
		free(piece);
		if (used > plen)
			ck_abort_msg("consumed %zu of %zu", used, plen);
		if (r == HTTP_NEED_MORE) {
			if (used != plen)
				ck_abort_msg("NEED_MORE left %zu bytes", plen - used);
			from = to;
			continue;
		}
		o->res = r;
		o->consumed = from + used;
		break;
	}
	if (o->res == HTTP_OK) {
		memcpy(o->method, p->method, sizeof(o->method));
		memcpy(o->target, p->target, sizeof(o->target));
		o->minor = p->minor;
		o->hosts = p->hosts;
	} else if (o->res == HTTP_ERROR) {
		o->status = p->status;
		o->error = p->error;
		o->pos = p->pos;
	}
	free(p);
}

static int http_out_eq(const struct http_out *a, const struct http_out *b)
{
	return a->res == b->res && strcmp(a->method, b->method) == 0 &&
	       strcmp(a->target, b->target) == 0 && a->minor == b->minor &&
	       a->hosts == b->hosts && a->status == b->status && a->error == b->error &&
	       a->pos == b->pos && a->consumed == b->consumed;
}

/* Runs every split of in and checks each agrees with the whole run; returns it. */
static void http_all_splits(const char *in, size_t n, struct http_out *whole)
{
	struct http_out o;
	size_t *cuts = malloc((n + 1) * sizeof(*cuts));
	uint64_t seed = 0x5eed0000u + n;

	ck_assert_ptr_nonnull(cuts);
	http_run(in, n, NULL, 0, whole);
	for (size_t i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	http_run(in, n, cuts, n > 0 ? n - 1 : 0, &o);
	ck_assert_msg(http_out_eq(whole, &o), "byte by byte differs from whole");
	for (size_t at = 0; at <= n; at++) {
		cuts[0] = at;
		http_run(in, n, cuts, 1, &o);
		ck_assert_msg(http_out_eq(whole, &o), "split at %zu differs from whole",
		              at);
	}
	for (int r = 0; r < RANDOM_SPLITS; r++) {
		size_t nc = 0, at = 0;

		for (;;) {
			at += 1 + (size_t)(rng_next(&seed) % 17);
			if (at >= n)
				break;
			cuts[nc++] = at;
		}
		http_run(in, n, cuts, nc, &o);
		ck_assert_msg(http_out_eq(whole, &o),
		              "random split %d differs from whole", r);
	}
	free(cuts);
}

struct http_case {
	const char *name;
	struct bytes in;
	int res;
	const char *method, *target;
	int minor;
	int status;
	const char *error;
	uint64_t pos;      /* ERROR: the offending byte */
	uint64_t consumed; /* OK / ERROR; 0 = the whole input */
};

static const struct http_case http_cases[] = {
    {"get 1.1", B("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), HTTP_OK, "GET", "/metrics",
     1, 0, NULL, 0, 0},
    {"get 1.0 no host", B("GET /metrics HTTP/1.0\r\n\r\n"), HTTP_OK, "GET", "/metrics", 0,
     0, NULL, 0, 0},
    {"bare LF", B("GET / HTTP/1.1\nHost: a\n\n"), HTTP_OK, "GET", "/", 1, 0, NULL, 0, 0},
    {"mixed ends", B("HEAD /m?x=1 HTTP/1.1\r\nHost:\nAccept: */*\r\n\n"), HTTP_OK, "HEAD",
     "/m?x=1", 1, 0, NULL, 0, 0},
    {"empty lines first", B("\r\n\nGET / HTTP/1.0\r\n\r\n"), HTTP_OK, "GET", "/", 0, 0,
     NULL, 0, 0},
    {"next request left", B("GET / HTTP/1.0\r\n\r\nGET /x"), HTTP_OK, "GET", "/", 0, 0,
     NULL, 0, 18},
    {"body left", B("POST /m HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
     HTTP_OK, "POST", "/m", 1, 0, NULL, 0, 48},
    {"host any case", B("GET / HTTP/1.1\r\nhOsT: a\r\nX-Host: b\r\n\r\n"), HTTP_OK, "GET",
     "/", 1, 0, NULL, 0, 0},
    {"value obs-text and tab", B("GET / HTTP/1.1\r\nHost: a\r\nX: \t\xff\xfe v \r\n\r\n"),
     HTTP_OK, "GET", "/", 1, 0, NULL, 0, 0},
    {"minor 9", B("GET / HTTP/1.9\r\nHost: a\r\n\r\n"), HTTP_OK, "GET", "/", 9, 0, NULL,
     0, 0},
    {"long field name", B("GET / HTTP/1.0\r\nX-A-Very-Long-Field-Name-Indeed: 1\r\n\r\n"),
     HTTP_OK, "GET", "/", 0, 0, NULL, 0, 0},
    {"incomplete", B("GET /metrics HTTP/1.1\r\nHost: x\r\n"), HTTP_NEED_MORE, "", "", 0,
     0, NULL, 0, 0},
    {"empty", B(""), HTTP_NEED_MORE, "", "", 0, 0, NULL, 0, 0},
    {"only empty lines", B("\r\n\r\n\n"), HTTP_NEED_MORE, "", "", 0, 0, NULL, 0, 0},
    {"no host 1.1", B("GET / HTTP/1.1\r\nHosts: a\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "no Host field", 27, 0},
    {"two hosts", B("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), HTTP_ERROR, "", "",
     0, 400, "more than one Host field", 35, 0},
    {"two hosts 1.0", B("GET / HTTP/1.0\nHost: a\nHost: b\n\n"), HTTP_ERROR, "", "", 0,
     400, "more than one Host field", 31, 0},
    {"folded", B("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "folded field line", 25, 26},
    {"space before colon", B("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), HTTP_ERROR, "", "", 0,
     400, "whitespace before colon", 20, 21},
    {"colon first", B("GET / HTTP/1.0\r\n: a\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad field name", 16, 17},
    {"CR alone in request line", B("GET / HTTP/1.1\rX"), HTTP_ERROR, "", "", 0, 400,
     "CR not followed by LF", 15, 16},
    {"CR alone at the end", B("GET / HTTP/1.0\r\n\rX"), HTTP_ERROR, "", "", 0, 400,
     "CR not followed by LF", 17, 18},
    {"CR CR first", B("\r\r\n"), HTTP_ERROR, "", "", 0, 400, "CR not followed by LF", 1,
     2},
    {"HTTP/2", B("GET / HTTP/2.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 505,
     "HTTP version not supported", 11, 12},
    {"HTTP/1.10", B("GET / HTTP/1.10\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad HTTP version", 14, 15},
    {"lower-case version", B("GET / http/1.1\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad HTTP version", 6, 7},
    {"no version", B("GET /\r\n\r\n"), HTTP_ERROR, "", "", 0, 400, "bad request-target",
     5, 6},
    {"version then space", B("GET / HTTP/1.1 \r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad HTTP version", 14, 15},
    {"bad method", B("GE(T / HTTP/1.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 400, "bad method",
     2, 3},
    {"space first", B(" GET / HTTP/1.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad request line", 0, 1},
    {"two spaces", B("GET  / HTTP/1.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad request-target", 4, 5},
    {"control in target", B("GET /a\x01 HTTP/1.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad request-target", 6, 7},
    {"8-bit in target", B("GET /\xc3\xa9 HTTP/1.0\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "bad request-target", 5, 6},
    {"NUL in value", B("GET / HTTP/1.0\r\nX: a\0b\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "control character in a field value", 20, 21},
    {"DEL in value", B("GET / HTTP/1.0\r\nX: \x7f\r\n\r\n"), HTTP_ERROR, "", "", 0, 400,
     "control character in a field value", 19, 20},
    {"TLS hello", B("\x16\x03\x01\x02\x00\x01"), HTTP_ERROR, "", "", 0, 400,
     "bad request line", 0, 1},
};

START_TEST(test_http_table)
{
	const struct http_case *c = &http_cases[_i];
	struct http_out o;

	http_all_splits(c->in.p, c->in.n, &o);
	ck_assert_msg(o.res == c->res, "%s: result %d, want %d (error %s at %llu)",
	              c->name, o.res, c->res, o.error ? o.error : "-",
	              (unsigned long long)o.pos);
	if (c->res == HTTP_NEED_MORE)
		return;
	ck_assert_msg(o.consumed == (c->consumed ? c->consumed : c->in.n),
	              "%s: consumed %llu", c->name, (unsigned long long)o.consumed);
	if (c->res == HTTP_OK) {
		ck_assert_str_eq(o.method, c->method);
		ck_assert_str_eq(o.target, c->target);
		ck_assert_int_eq(o.minor, c->minor);
		return;
	}
	ck_assert_msg(o.status == c->status, "%s: status %d", c->name, o.status);
	ck_assert_str_eq(o.error, c->error);
	ck_assert_msg(o.pos == c->pos, "%s: pos %llu", c->name,
	              (unsigned long long)o.pos);
	ck_assert_msg(o.consumed == o.pos + 1, "%s: consumed past the bad byte", c->name);
}
END_TEST

/* "GET " + target + " HTTP/1.0\r\n" + headers filling the head up to total bytes. */
static char *http_sized(const char *method, size_t target_len, size_t total, size_t *n_r)
{
	char *b = malloc(total + target_len + 64);
	size_t n = 0;

	ck_assert_ptr_nonnull(b);
	n += (size_t)sprintf(b, "%s /", method);
	memset(b + n, 'a', target_len - 1);
	n += target_len - 1;
	n += (size_t)sprintf(b + n, " HTTP/1.0\r\n");
	if (total > n + 2) {
		/* one field "X: vvv...\r\n" making up the difference */
		size_t fill = total - n - 2;

		ck_assert_uint_ge(fill, 5);
		memcpy(b + n, "X: ", 3);
		memset(b + n + 3, 'v', fill - 5);
		memcpy(b + n + fill - 2, "\r\n", 2);
		n += fill;
	}
	memcpy(b + n, "\r\n", 2);
	n += 2;
	*n_r = n;
	return b;
}

START_TEST(test_http_bounds)
{
	struct http_out o;
	size_t n;
	char *b;

	/* the head exactly at the bound, then one byte over */
	b = http_sized("GET", 10, HTTP_REQ_HEAD_MAX, &n);
	ck_assert_uint_eq(n, HTTP_REQ_HEAD_MAX);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_OK);
	ck_assert_uint_eq(o.consumed, HTTP_REQ_HEAD_MAX);
	free(b);
	b = http_sized("GET", 10, HTTP_REQ_HEAD_MAX + 1, &n);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_ERROR);
	ck_assert_int_eq(o.status, 431);
	ck_assert_uint_eq(o.pos, HTTP_REQ_HEAD_MAX);
	free(b);

	/* the target at its bound, then one over */
	b = http_sized("GET", HTTP_TARGET_MAX - 1, 0, &n);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_OK);
	ck_assert_uint_eq(strlen(o.target), HTTP_TARGET_MAX - 1);
	free(b);
	b = http_sized("GET", HTTP_TARGET_MAX, 0, &n);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_ERROR);
	ck_assert_int_eq(o.status, 414);
	ck_assert_uint_eq(o.pos, 4 + HTTP_TARGET_MAX - 1);
	free(b);

	/* the method at its bound, then one over */
	b = http_sized("ABCDEFGHIJKLMNO", 1, 0, &n);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_OK);
	ck_assert_str_eq(o.method, "ABCDEFGHIJKLMNO");
	free(b);
	b = http_sized("ABCDEFGHIJKLMNOP", 1, 0, &n);
	http_all_splits(b, n, &o);
	ck_assert_int_eq(o.res, HTTP_ERROR);
	ck_assert_int_eq(o.status, 501);
	ck_assert_uint_eq(o.pos, HTTP_METHOD_MAX - 1);
	free(b);

	/* endless empty lines are bounded too */
	b = malloc(HTTP_REQ_HEAD_MAX + 10);
	ck_assert_ptr_nonnull(b);
	memset(b, '\n', HTTP_REQ_HEAD_MAX + 10);
	http_run(b, HTTP_REQ_HEAD_MAX + 10, NULL, 0, &o);
	ck_assert_int_eq(o.res, HTTP_ERROR);
	ck_assert_int_eq(o.status, 431);
	free(b);
}
END_TEST

/* After OK or ERROR the parser stays put until it is initialised again. */
START_TEST(test_http_sticky)
{
	struct http_req_parser p;
	size_t used = 99;

	http_req_init(&p);
	ck_assert_int_eq(http_req_feed(&p, "GET / HTTP/1.0\n\nGET", 19, &used), HTTP_OK);
	ck_assert_uint_eq(used, 16);
	ck_assert_int_eq(http_req_feed(&p, "xyz", 3, &used), HTTP_OK);
	ck_assert_uint_eq(used, 0);
	http_req_init(&p);
	ck_assert_int_eq(http_req_feed(&p, "@", 1, &used), HTTP_ERROR);
	ck_assert_uint_eq(used, 1);
	ck_assert_int_eq(http_req_feed(&p, "GET", 3, &used), HTTP_ERROR);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(http_req_feed(&p, "", 0, &used), HTTP_ERROR);
}
END_TEST

/* ---------------- the control line reader ---------------- */

struct ctl_out {
	int res;
	char line[CTL_LINE_MAX];
	const char *error;
	uint64_t pos;
	uint64_t consumed;
};

static void ctl_run(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                    struct ctl_out *o)
{
	struct ctl_line_reader *r = malloc(sizeof(*r));
	size_t from = 0;

	ck_assert_ptr_nonnull(r);
	memset(o, 0, sizeof(*o));
	ctl_line_init(r);
	o->res = CTL_NEED_MORE;
	for (size_t k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n, plen = to - from, used = SIZE_MAX;
		char *piece = malloc(plen != 0 ? plen : 1);
		int res;

		ck_assert_ptr_nonnull(piece);
		memcpy(piece, in + from, plen);
		res = ctl_line_feed(r, piece, plen, &used);
		free(piece);
		if (used > plen)
			ck_abort_msg("consumed %zu of %zu", used, plen);
		if (res == CTL_NEED_MORE) {
			if (used != plen)
				ck_abort_msg("NEED_MORE left bytes");
			from = to;
			continue;
		}
		o->res = res;
		o->consumed = from + used;
		break;
	}
	if (o->res == CTL_OK)
		memcpy(o->line, r->line, sizeof(o->line));
	else if (o->res == CTL_ERROR)
		o->error = r->error;
	o->pos = r->pos;
	free(r);
}

static int ctl_out_eq(const struct ctl_out *a, const struct ctl_out *b)
{
	return a->res == b->res && strcmp(a->line, b->line) == 0 &&
	       a->error == b->error && a->pos == b->pos && a->consumed == b->consumed;
}

static void ctl_all_splits(const char *in, size_t n, struct ctl_out *whole)
{
	struct ctl_out o;
	size_t *cuts = malloc((n + 1) * sizeof(*cuts));

	ck_assert_ptr_nonnull(cuts);
	ctl_run(in, n, NULL, 0, whole);
	for (size_t i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	ctl_run(in, n, cuts, n > 0 ? n - 1 : 0, &o);
	ck_assert_msg(ctl_out_eq(whole, &o), "byte by byte differs from whole");
	for (size_t at = 0; at <= n; at++) {
		cuts[0] = at;
		ctl_run(in, n, cuts, 1, &o);
		ck_assert_msg(ctl_out_eq(whole, &o), "split at %zu differs from whole",
		              at);
	}
	free(cuts);
}

struct ctl_case {
	const char *name;
	struct bytes in;
	int res;
	const char *line;
	const char *error;
	uint64_t consumed; /* OK, ERROR */
};

static const struct ctl_case ctl_cases[] = {
    {"status", B("status\n"), CTL_OK, "status", NULL, 7},
    {"crlf", B("status json\r\n"), CTL_OK, "status json", NULL, 13},
    {"rest left", B("status\r\nmore\n"), CTL_OK, "status", NULL, 8},
    {"empty", B("\n"), CTL_OK, "", NULL, 1},
    {"utf-8", B("st\xc3\xa9\n"), CTL_OK, "st\xc3\xa9", NULL, 5},
    {"incomplete", B("stat"), CTL_NEED_MORE, "", NULL, 0},
    {"cr pending", B("status\r"), CTL_NEED_MORE, "", NULL, 0},
    {"nothing", B(""), CTL_NEED_MORE, "", NULL, 0},
    {"bare CR", B("st\ratus\n"), CTL_ERROR, "", "CR not followed by LF", 4},
    {"CR CR", B("status\r\r\n"), CTL_ERROR, "", "CR not followed by LF", 8},
    {"NUL", B("st\0atus\n"), CTL_ERROR, "", "control character", 3},
    {"tab", B("status\tjson\n"), CTL_ERROR, "", "control character", 7},
    {"DEL", B("\x7f\n"), CTL_ERROR, "", "control character", 1},
    {"escape", B("\x1b[2J\n"), CTL_ERROR, "", "control character", 1},
};

START_TEST(test_ctl_table)
{
	const struct ctl_case *c = &ctl_cases[_i];
	struct ctl_out o;

	ctl_all_splits(c->in.p, c->in.n, &o);
	ck_assert_msg(o.res == c->res, "%s: result %d", c->name, o.res);
	if (c->res == CTL_NEED_MORE) {
		ck_assert_uint_eq(o.pos, c->in.n);
		return;
	}
	ck_assert_msg(o.consumed == c->consumed, "%s: consumed %llu", c->name,
	              (unsigned long long)o.consumed);
	if (c->res == CTL_OK) {
		ck_assert_str_eq(o.line, c->line);
		ck_assert_uint_eq(o.pos, c->consumed);
	} else {
		ck_assert_str_eq(o.error, c->error);
		ck_assert_uint_eq(o.pos, c->consumed - 1);
	}
}
END_TEST

START_TEST(test_ctl_bounds)
{
	char b[CTL_LINE_MAX + 8];
	struct ctl_out o;

	/* the longest line, with CRLF, is exactly CTL_LINE_MAX bytes */
	memset(b, 'a', sizeof(b));
	memcpy(b + CTL_LINE_MAX - 2, "\r\n", 2);
	ctl_all_splits(b, CTL_LINE_MAX, &o);
	ck_assert_int_eq(o.res, CTL_OK);
	ck_assert_uint_eq(strlen(o.line), CTL_LINE_MAX - 2);
	/* with a bare LF */
	memset(b, 'a', sizeof(b));
	b[CTL_LINE_MAX - 2] = '\n';
	ctl_all_splits(b, CTL_LINE_MAX - 1, &o);
	ck_assert_int_eq(o.res, CTL_OK);
	/* one byte more is refused at that byte, whatever follows */
	memset(b, 'a', sizeof(b));
	memcpy(b + CTL_LINE_MAX - 1, "\r\n", 2);
	ctl_all_splits(b, CTL_LINE_MAX + 1, &o);
	ck_assert_int_eq(o.res, CTL_ERROR);
	ck_assert_str_eq(o.error, "line too long");
	ck_assert_uint_eq(o.pos, CTL_LINE_MAX - 2);
	/* a flood without a line end is cut at the bound, not read on */
	memset(b, 'a', sizeof(b));
	ctl_run(b, sizeof(b), NULL, 0, &o);
	ck_assert_int_eq(o.res, CTL_ERROR);
	ck_assert_uint_eq(o.consumed, CTL_LINE_MAX - 1);
}
END_TEST

static Suite *stats_suite(void)
{
	Suite *s = suite_create("stats");
	TCase *tc;

	tc = tcase_create("render");
	tcase_add_test(tc, test_render_prom_golden);
	tcase_add_test(tc, test_render_text_golden);
	tcase_add_test(tc, test_render_json_golden);
	tcase_add_test(tc, test_render_unknowns);
	tcase_add_test(tc, test_buf_growth);
	suite_add_tcase(s, tc);

	tc = tcase_create("counters");
	tcase_add_test(tc, test_hist_edges);
	tcase_add_test(tc, test_sessions_bytes_errors);
	tcase_add_test(tc, test_msgjob_hook);
	tcase_add_test(tc, test_quarantine_count);
	suite_add_tcase(s, tc);

	tc = tcase_create("http");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_http_table, 0, (int)ARRAY_LEN(http_cases));
	tcase_add_test(tc, test_http_bounds);
	tcase_add_test(tc, test_http_sticky);
	suite_add_tcase(s, tc);

	tc = tcase_create("control");
	tcase_add_loop_test(tc, test_ctl_table, 0, (int)ARRAY_LEN(ctl_cases));
	tcase_add_test(tc, test_ctl_bounds);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(stats_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
