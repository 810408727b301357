/*
 * stats.c - the process-wide counters (see stats.h) and their renderings.
 *
 * Every counter is a _Atomic uint64_t bumped with relaxed ordering: the
 * hooks run on the loop thread (sessions, connections) and on the
 * thread pool, and none of them may wait for a lock. Nothing here orders
 * memory for anyone else; a reader sees each counter exact, the set of
 * them possibly a few events apart.
 *
 * Open sessions are derived (opened - closed) rather than kept as a gauge,
 * so no decrement can ever race an increment into a negative figure.
 *
 * Callers: the hooks in conn.c, msgjob.c, server.c and the sessions;
 * control.c and metrics.c read through stats_collect and the renderers.
 */
#include "proxy/stats.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "proxy/msgjob.h"
#include "proxy/server.h"
#include "proxy/spool.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const stats_proto_names[] = {"pop3", "imap", "relay"};
_Static_assert(ARRAY_LEN(stats_proto_names) == STATS_PROTO_COUNT, "protocol names");

static const char *const stats_err_names[] = {
    "upstream_connect", "upstream_tls",     "client_tls", "protocol",
    "timeout",          "quarantine_write", "spool",
};
_Static_assert(ARRAY_LEN(stats_err_names) == STATS_ERR_COUNT, "error kind names");

/* 1 ms .. 60 s: a clean small message scans in a few ms, a big archive in seconds */
const uint32_t stats_hist_le_ms[STATS_HIST_BUCKETS] = {
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
};

typedef _Atomic uint64_t stats_ctr;

static struct {
	stats_ctr opened[STATS_PROTO_COUNT];
	stats_ctr closed[STATS_PROTO_COUNT];
	stats_ctr scanned, scanned_bytes;
	stats_ctr verdicts[SCAN_RESULT_COUNT];
	stats_ctr hist[STATS_HIST_BUCKETS + 1];
	stats_ctr scan_ms_sum;
	stats_ctr bytes_down, bytes_up;
	stats_ctr errors[STATS_ERR_COUNT];
	stats_ctr start_time; /* Unix time */
	stats_ctr start_mono; /* uv_hrtime() at start, ns */
} st;

static void ctr_add(stats_ctr *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static uint64_t ctr_get(stats_ctr *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

const char *stats_proto_name(enum stats_proto p)
{
	return (unsigned)p < STATS_PROTO_COUNT ? stats_proto_names[p] : "?";
}

const char *stats_err_name(enum stats_err e)
{
	return (unsigned)e < STATS_ERR_COUNT ? stats_err_names[e] : "?";
}

void stats_start(void)
{
	atomic_store_explicit(&st.start_time, (uint64_t)time(NULL), memory_order_relaxed);
	atomic_store_explicit(&st.start_mono, uv_hrtime(), memory_order_relaxed);
}

void stats_session_open(enum stats_proto p)
{
	if ((unsigned)p < STATS_PROTO_COUNT)
		ctr_add(&st.opened[p], 1);
}

void stats_session_close(enum stats_proto p)
{
	if ((unsigned)p < STATS_PROTO_COUNT)
		ctr_add(&st.closed[p], 1);
}

void stats_bytes(int from_upstream, ssize_t n)
{
	if (n > 0)
		ctr_add(from_upstream ? &st.bytes_down : &st.bytes_up, (uint64_t)n);
}

void stats_scanned(enum scan_result r, uint64_t scan_ms, uint64_t size)
{
	unsigned i = 0;

	while (i < STATS_HIST_BUCKETS && scan_ms > stats_hist_le_ms[i])
		i++;
	ctr_add(&st.scanned, 1);
	ctr_add(&st.scanned_bytes, size);
	/* a verdict kind added to the enum without a name still counts in the total */
	if ((unsigned)r < SCAN_RESULT_COUNT)
		ctr_add(&st.verdicts[r], 1);
	ctr_add(&st.hist[i], 1);
	ctr_add(&st.scan_ms_sum, scan_ms);
}

void stats_msgjob(const struct msgjob *job, int status)
{
	if (status == UV_ECANCELED)
		return;
	if (!job->skip_scan)
		stats_scanned(job->verdict.result, job->verdict.scan_ms,
		              spool_size(job->spool));
	if (job->quar_failed)
		stats_error(STATS_ERR_QUARANTINE_WRITE);
}

void stats_error(enum stats_err e)
{
	if ((unsigned)e < STATS_ERR_COUNT)
		ctr_add(&st.errors[e], 1);
}

void stats_snapshot(struct stats_snap *s)
{
	uint64_t start = ctr_get(&st.start_mono);

	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < STATS_PROTO_COUNT; i++) {
		/* closed first: an open between the two loads cannot make it negative */
		uint64_t closed = ctr_get(&st.closed[i]);

		s->sess_total[i] = ctr_get(&st.opened[i]);
		s->sess_open[i] =
		    s->sess_total[i] >= closed ? s->sess_total[i] - closed : 0;
	}
	s->scanned = ctr_get(&st.scanned);
	s->scanned_bytes = ctr_get(&st.scanned_bytes);
	for (unsigned i = 0; i < SCAN_RESULT_COUNT; i++)
		s->verdicts[i] = ctr_get(&st.verdicts[i]);
	for (unsigned i = 0; i <= STATS_HIST_BUCKETS; i++)
		s->hist[i] = ctr_get(&st.hist[i]);
	s->scan_ms_sum = ctr_get(&st.scan_ms_sum);
	s->bytes_down = ctr_get(&st.bytes_down);
	s->bytes_up = ctr_get(&st.bytes_up);
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		s->errors[i] = ctr_get(&st.errors[i]);
	s->start_time = ctr_get(&st.start_time);
	if (start != 0)
		s->uptime_s = (uv_hrtime() - start) / 1000000000u;
}

/* "ID.json" / "ID.eml" (not "ID.json.tmp", not the index, not dot files). */
static int stats_quar_name(const char *name, int *is_json_r)
{
	size_t n = strlen(name);

	if (name[0] == '.')
		return 0;
	if (n > 5 && strcmp(name + n - 5, ".json") == 0) {
		*is_json_r = 1;
		return 1;
	}
	*is_json_r = 0;
	return n > 4 && strcmp(name + n - 4, ".eml") == 0;
}

int stats_quarantine_count(const char *dir, uint64_t *entries_r, uint64_t *bytes_r)
{
	DIR *d;
	struct dirent *de;
	uint64_t entries = 0, bytes = 0;

	*entries_r = *bytes_r = 0;
	d = opendir(dir);
	if (d == NULL)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		struct stat sb;
		int is_json;

		if (!stats_quar_name(de->d_name, &is_json))
			continue;
		/* an entry removed meanwhile (release, purge) is simply not counted */
		if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(sb.st_mode))
			continue;
		entries += (uint64_t)is_json;
		bytes += (uint64_t)sb.st_size;
	}
	closedir(d);
	*entries_r = entries;
	*bytes_r = bytes;
	return 0;
}

/* ---- stats_collect: the quarantine on the pool, the rest on the loop ---- */

struct stats_req {
	uv_work_t work;
	struct server *srv;
	stats_collect_cb cb;
	void *arg;
	int quar_r;
	uint64_t quar_entries, quar_bytes;
	char dir[1024];
};

static void stats_collect_work(uv_work_t *w)
{
	struct stats_req *r = w->data;

	r->quar_r = stats_quarantine_count(r->dir, &r->quar_entries, &r->quar_bytes);
}

static void stats_collect_done(uv_work_t *w, int status)
{
	struct stats_req *r = w->data;
	struct stats_snap *s = malloc(sizeof(*s));

	if (s == NULL) {
		/* the callback still runs, with the counters' zero snapshot */
		static struct stats_snap empty;

		r->cb(r->arg, &empty);
		free(r);
		return;
	}
	stats_snapshot(s);
	snprintf(s->quar_dir, sizeof(s->quar_dir), "%s", r->dir);
	if (status < 0) {
		snprintf(s->quar_err, sizeof(s->quar_err), "%s", uv_strerror(status));
	} else if (r->quar_r < 0) {
		snprintf(s->quar_err, sizeof(s->quar_err), "%s", strerror(-r->quar_r));
	} else {
		s->quar_ok = 1;
		s->quar_entries = r->quar_entries;
		s->quar_bytes = r->quar_bytes;
	}
	if (r->srv->engine != NULL) {
		s->have_engine = 1;
		s->db_version = scan_engine_db_version(r->srv->engine);
		s->signatures = scan_engine_signatures(r->srv->engine);
		s->clamav_version = scan_engine_clamav_version(r->srv->engine);
	}
	s->reloads = r->srv->engine_reloads;
	s->reload_failures = r->srv->engine_reload_failures;
	r->cb(r->arg, s);
	free(s);
	free(r);
}

int stats_collect(struct server *srv, stats_collect_cb cb, void *arg)
{
	struct stats_req *r = calloc(1, sizeof(*r));
	int e;

	if (r == NULL)
		return UV_ENOMEM;
	r->srv = srv;
	r->cb = cb;
	r->arg = arg;
	r->work.data = r;
	snprintf(r->dir, sizeof(r->dir), "%s", srv->cfg->quarantine_dir);
	e = uv_queue_work(srv->loop, &r->work, stats_collect_work, stats_collect_done);
	if (e < 0)
		free(r);
	return e;
}

/* ---- rendering ---- */

void stats_buf_printf(struct stats_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->oom)
		return;
	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->data != NULL ? b->data + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t ncap = b->cap != 0 ? b->cap * 2 : 4096;
		char *nd;

		while (ncap - b->len <= (size_t)n)
			ncap *= 2;
		nd = realloc(b->data, ncap);
		if (nd == NULL) {
			b->oom = 1;
			return;
		}
		b->data = nd;
		b->cap = ncap;
	}
}

void stats_buf_free(struct stats_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* Milliseconds as decimal seconds without trailing zeros: 2500 -> "2.5", 1 -> "0.001". */
static const char *stats_ms_as_s(uint64_t ms, char buf[32])
{
	size_t n;

	snprintf(buf, 32, "%llu.%03u", (unsigned long long)(ms / 1000),
	         (unsigned)(ms % 1000));
	n = strlen(buf);
	while (buf[n - 1] == '0')
		buf[--n] = '\0';
	if (buf[n - 1] == '.')
		buf[n - 1] = '\0';
	return buf;
}

static void prom_head(struct stats_buf *b, const char *name, const char *type,
                      const char *help)
{
	stats_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_u64(struct stats_buf *b, const char *name, const char *type,
                     const char *help, uint64_t v)
{
	prom_head(b, name, type, help);
	stats_buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

void stats_render_prom(const struct stats_snap *s, struct stats_buf *b)
{
	uint64_t cum = 0;
	char le[32];

	prom_head(b, "mailmoat_build_info", "gauge", "The running mailmoat's version.");
	stats_buf_printf(b, "mailmoat_build_info{version=\"%s\"} 1\n", MAILMOAT_VERSION);
	prom_u64(b, "mailmoat_start_time_seconds", "gauge",
	         "When the process started, in seconds since the Unix epoch.",
	         s->start_time);
	prom_u64(b, "mailmoat_uptime_seconds", "gauge",
	         "Seconds since the process started.", s->uptime_s);

	prom_head(b, "mailmoat_sessions_open", "gauge",
	          "Sessions open now, by protocol.");
	for (unsigned i = 0; i < STATS_PROTO_COUNT; i++)
		stats_buf_printf(b, "mailmoat_sessions_open{protocol=\"%s\"} %llu\n",
		                 stats_proto_names[i],
		                 (unsigned long long)s->sess_open[i]);
	prom_head(b, "mailmoat_sessions_total", "counter",
	          "Sessions accepted since start, by protocol.");
	for (unsigned i = 0; i < STATS_PROTO_COUNT; i++)
		stats_buf_printf(b, "mailmoat_sessions_total{protocol=\"%s\"} %llu\n",
		                 stats_proto_names[i],
		                 (unsigned long long)s->sess_total[i]);

	prom_u64(b, "mailmoat_messages_scanned_total", "counter", "Messages scanned.",
	         s->scanned);
	prom_u64(b, "mailmoat_scanned_bytes_total", "counter",
	         "Bytes of the messages scanned.", s->scanned_bytes);
	prom_head(b, "mailmoat_verdicts_total", "counter", "Scan verdicts, by kind.");
	for (unsigned i = 0; i < SCAN_RESULT_COUNT; i++)
		stats_buf_printf(b, "mailmoat_verdicts_total{verdict=\"%s\"} %llu\n",
		                 scan_result_name((enum scan_result)i),
		                 (unsigned long long)s->verdicts[i]);

	prom_head(b, "mailmoat_scan_duration_seconds", "histogram",
	          "Wall time of message scans.");
	for (unsigned i = 0; i < STATS_HIST_BUCKETS; i++) {
		cum += s->hist[i];
		stats_buf_printf(
		    b, "mailmoat_scan_duration_seconds_bucket{le=\"%s\"} %llu\n",
		    stats_ms_as_s(stats_hist_le_ms[i], le), (unsigned long long)cum);
	}
	cum += s->hist[STATS_HIST_BUCKETS];
	stats_buf_printf(b, "mailmoat_scan_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
	                 (unsigned long long)cum);
	stats_buf_printf(b, "mailmoat_scan_duration_seconds_sum %s\n",
	                 stats_ms_as_s(s->scan_ms_sum, le));
	stats_buf_printf(b, "mailmoat_scan_duration_seconds_count %llu\n",
	                 (unsigned long long)cum);

	prom_head(b, "mailmoat_traffic_bytes_total", "counter",
	          "Bytes received: down from upstream servers, up from clients.");
	stats_buf_printf(b, "mailmoat_traffic_bytes_total{direction=\"down\"} %llu\n",
	                 (unsigned long long)s->bytes_down);
	stats_buf_printf(b, "mailmoat_traffic_bytes_total{direction=\"up\"} %llu\n",
	                 (unsigned long long)s->bytes_up);

	prom_u64(b, "mailmoat_engine_reloads_total", "counter",
	         "Signature reloads that put a new engine in use.", s->reloads);
	prom_u64(b, "mailmoat_engine_reload_failures_total", "counter",
	         "Signature reloads that failed (the old engine stayed).",
	         s->reload_failures);
	if (s->have_engine) {
		prom_u64(b, "mailmoat_engine_signatures", "gauge",
		         "Signatures in the engine in use.", s->signatures);
		prom_u64(b, "mailmoat_engine_generation", "gauge",
		         "Generation of the engine in use (changes with every load).",
		         s->db_version);
		prom_u64(b, "mailmoat_engine_db_version", "gauge",
		         "Version of the signature databases (daily.cvd; 0: none).",
		         s->clamav_version);
	}
	if (s->quar_ok) {
		prom_u64(b, "mailmoat_quarantine_entries", "gauge",
		         "Messages in the quarantine directory.", s->quar_entries);
		prom_u64(b, "mailmoat_quarantine_bytes", "gauge",
		         "Bytes of the quarantine's entries (ID.eml and ID.json).",
		         s->quar_bytes);
	}

	prom_head(b, "mailmoat_errors_total", "counter", "Failures, by kind.");
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		stats_buf_printf(b, "mailmoat_errors_total{kind=\"%s\"} %llu\n",
		                 stats_err_names[i], (unsigned long long)s->errors[i]);
}

void stats_render_text(const struct stats_snap *s, struct stats_buf *b)
{
	uint64_t up = s->uptime_s;
	char stamp[32] = "?";
	time_t t = (time_t)s->start_time;
	struct tm tm;
	int any = 0;

	if (gmtime_r(&t, &tm) != NULL)
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	stats_buf_printf(b, "mailmoat %s, up %llud %02u:%02u:%02u (since %s)\n",
	                 MAILMOAT_VERSION, (unsigned long long)(up / 86400),
	                 (unsigned)(up % 86400 / 3600), (unsigned)(up % 3600 / 60),
	                 (unsigned)(up % 60), stamp);
	stats_buf_printf(b, "sessions:    ");
	for (unsigned i = 0; i < STATS_PROTO_COUNT; i++)
		stats_buf_printf(b, "%s%s %llu open, %llu total", i ? "; " : "",
		                 stats_proto_names[i],
		                 (unsigned long long)s->sess_open[i],
		                 (unsigned long long)s->sess_total[i]);
	stats_buf_printf(
	    b, "\nmessages:    %llu scanned, %llu bytes, average scan %llu ms\n",
	    (unsigned long long)s->scanned, (unsigned long long)s->scanned_bytes,
	    (unsigned long long)(s->scanned ? s->scan_ms_sum / s->scanned : 0));
	stats_buf_printf(b, "verdicts:    ");
	for (unsigned i = 0; i < SCAN_RESULT_COUNT; i++)
		stats_buf_printf(b, "%s%s %llu", i ? ", " : "",
		                 scan_result_name((enum scan_result)i),
		                 (unsigned long long)s->verdicts[i]);
	if (s->quar_ok)
		stats_buf_printf(b, "\nquarantine:  %llu entries, %llu bytes in %s\n",
		                 (unsigned long long)s->quar_entries,
		                 (unsigned long long)s->quar_bytes, s->quar_dir);
	else
		stats_buf_printf(b, "\nquarantine:  unavailable (%s: %s)\n", s->quar_dir,
		                 s->quar_err);
	if (s->have_engine)
		stats_buf_printf(b,
		                 "database:    generation %u, version %u, %u signatures",
		                 s->db_version, s->clamav_version, s->signatures);
	else
		stats_buf_printf(b, "database:    no engine");
	stats_buf_printf(b, "; reloads %llu, failed %llu\n",
	                 (unsigned long long)s->reloads,
	                 (unsigned long long)s->reload_failures);
	stats_buf_printf(b,
	                 "traffic:     %llu bytes down (from upstreams), %llu bytes up "
	                 "(from clients)\n",
	                 (unsigned long long)s->bytes_down,
	                 (unsigned long long)s->bytes_up);
	stats_buf_printf(b, "errors:      ");
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++) {
		if (s->errors[i] == 0)
			continue;
		stats_buf_printf(b, "%s%s %llu", any ? ", " : "", stats_err_names[i],
		                 (unsigned long long)s->errors[i]);
		any = 1;
	}
	stats_buf_printf(b, "%s\n", any ? "" : "none");
}

/* A JSON string: quotes, backslashes and control characters escaped (RFC 8259 s. 7). */
static void json_str(struct stats_buf *b, const char *s)
{
	stats_buf_printf(b, "\"");
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			stats_buf_printf(b, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			stats_buf_printf(b, "\\u%04x", c);
		else
			stats_buf_printf(b, "%c", c);
	}
	stats_buf_printf(b, "\"");
}

void stats_render_json(const struct stats_snap *s, struct stats_buf *b)
{
	stats_buf_printf(b, "{\"version\":");
	json_str(b, MAILMOAT_VERSION);
	stats_buf_printf(b, ",\"uptime_seconds\":%llu,\"start_time\":%llu,\"sessions\":{",
	                 (unsigned long long)s->uptime_s,
	                 (unsigned long long)s->start_time);
	for (unsigned i = 0; i < STATS_PROTO_COUNT; i++)
		stats_buf_printf(b, "%s\"%s\":{\"open\":%llu,\"total\":%llu}",
		                 i ? "," : "", stats_proto_names[i],
		                 (unsigned long long)s->sess_open[i],
		                 (unsigned long long)s->sess_total[i]);
	stats_buf_printf(b,
	                 "},\"messages\":{\"scanned\":%llu,\"bytes\":%llu,"
	                 "\"scan_ms_sum\":%llu},\"verdicts\":{",
	                 (unsigned long long)s->scanned,
	                 (unsigned long long)s->scanned_bytes,
	                 (unsigned long long)s->scan_ms_sum);
	for (unsigned i = 0; i < SCAN_RESULT_COUNT; i++)
		stats_buf_printf(b, "%s\"%s\":%llu", i ? "," : "",
		                 scan_result_name((enum scan_result)i),
		                 (unsigned long long)s->verdicts[i]);
	stats_buf_printf(b, "},\"quarantine\":{\"dir\":");
	json_str(b, s->quar_dir);
	if (s->quar_ok) {
		stats_buf_printf(b, ",\"entries\":%llu,\"bytes\":%llu}",
		                 (unsigned long long)s->quar_entries,
		                 (unsigned long long)s->quar_bytes);
	} else {
		stats_buf_printf(b, ",\"error\":");
		json_str(b, s->quar_err);
		stats_buf_printf(b, "}");
	}
	stats_buf_printf(b, ",\"database\":{");
	if (s->have_engine)
		stats_buf_printf(b, "\"generation\":%u,\"version\":%u,\"signatures\":%u,",
		                 s->db_version, s->clamav_version, s->signatures);
	stats_buf_printf(
	    b,
	    "\"reloads\":%llu,\"reload_failures\":%llu},"
	    "\"traffic\":{\"down_bytes\":%llu,\"up_bytes\":%llu},\"errors\":{",
	    (unsigned long long)s->reloads, (unsigned long long)s->reload_failures,
	    (unsigned long long)s->bytes_down, (unsigned long long)s->bytes_up);
	for (unsigned i = 0; i < STATS_ERR_COUNT; i++)
		stats_buf_printf(b, "%s\"%s\":%llu", i ? "," : "", stats_err_names[i],
		                 (unsigned long long)s->errors[i]);
	stats_buf_printf(b, "}}\n");
}
