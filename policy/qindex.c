/*
 * qindex.c - the quarantine index (interface and thread-safety rules in
 * qindex.h): a SQLite cache of the ID.json files, and the table of
 * released messages.
 *
 * Callers: the admin CLI (proxy/admin.c: sync, list, delete, purge, mark
 * released) and the daemon (released lookups before quarantining, add after
 * quar_store(), an hourly purge), each through its own handles.
 *
 * Schema (PRAGMA user_version 1):
 *   entries(id PK, received_at, received_s, one column per ID.json member,
 *           extra (other members as JSON text), eml, json_ino)
 *           indexes: (received_s, id), (user, received_s, id)
 *   released(sha256 PK, id, released_at, by)
 *   skipped(name PK, size, mtime_ns, reason)    unreadable ID.json files
 *   state(key PK, value)                        dir_mtime_ns, dir_ino
 *
 * Syncing without reading 100,000 files each time: a full sync reads the
 * directory's names and inode numbers (readdir only, no stat), merges them
 * against the indexed ids (both sorted) and parses only the ID.json files
 * that are new or were replaced (renamed over: another inode). A file
 * edited in place keeps its inode and is not read again; quarantine.c
 * never does that, and tools should not.
 * It then records the directory's mtime and inode; the next sync that finds
 * them unchanged does nothing at all. The mtime is recorded only when it is
 * older than QINDEX_RACY_NS at the start of the sync (as git does for its
 * index): a file renamed in within the same timestamp tick as a recorded
 * mtime would otherwise go unseen. The WAL and shm files are kept between
 * connections (SQLITE_FCNTL_PERSIST_WAL) so that opening the index, when
 * it lives in the quarantine directory, does not itself change that mtime.
 *
 * ID.json is read by a small bounded reader: a flat object whose members
 * are strings, numbers, booleans or null (nested values are accepted for
 * members we do not know and kept verbatim). Bounds: QINDEX_JSON_MAX bytes,
 * QINDEX_MEMBERS_MAX members, QINDEX_DEPTH_MAX nesting, keys of
 * QINDEX_KEY_MAX bytes.
 */
#include "policy/qindex.h"

#include "policy/config.h"
#include "policy/quarantine.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QINDEX_JSON_MAX (1 << 20)
#define QINDEX_MEMBERS_MAX 256
#define QINDEX_DEPTH_MAX 16
#define QINDEX_KEY_MAX 256
#define QINDEX_BATCH 1000                 /* rows per write transaction */
#define QINDEX_RACY_NS 2000000000LL       /* see the header comment */
#define QINDEX_NAME_MAX (QUAR_ID_MAX + 8) /* "ID.json" */
#define QINDEX_SCHEMA 1

struct qindex {
	pthread_mutex_t lock;
	sqlite3 *db;
	int readonly;
	qindex_warn_cb warn;
	void *warn_arg;
	sqlite3_stmt *st_released; /* cached: the daemon's hot path */
	char dir[CFG_PATH_MAX];
	char path[CFG_PATH_MAX];
};

/* ---------------------------------------------------------------- errors */

/*
 * strerror for worker threads: the GNU strerror_r (we build with
 * _GNU_SOURCE), as quarantine.c uses it, into a compound literal that
 * lives until the end of the enclosing block.
 */
#define IX_STRERROR(e) strerror_r((e), (char[128]){0}, 128)

static void ix_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ix_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* "index PATH: what: sqlite's message". Call with the lock held. */
static void ix_dberr(struct qindex *ix, char *err, size_t errlen, const char *what)
{
	ix_errf(err, errlen, "index %s: %s: %s", ix->path, what, sqlite3_errmsg(ix->db));
}

static void ix_warnf(struct qindex *ix, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void ix_warnf(struct qindex *ix, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (ix->warn == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ix->warn(ix->warn_arg, msg);
}

/* ------------------------------------------------------------------ time */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t ix_days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int ix_days_in_month(int y, int m)
{
	static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : days[m - 1];
}

/* n digits at s as a number, or -1. */
static int ix_digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

/* Checks a calendar date and time of day; returns the epoch seconds or -1. */
static int ix_civil(int y, int mo, int d, int h, int mi, int sec, int64_t *t_r)
{
	if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > ix_days_in_month(y, mo) || h < 0 ||
	    h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60)
		return -1;
	*t_r = ix_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	return 0;
}

/*
 * RFC 3339 section 5.6 date-time: full-date "T" full-time, "T" also 't' or
 * ' ' (the section's note), time-secfrac ignored, leap second 60 allowed.
 */
int qindex_parse_rfc3339(const char *s, int64_t *t_r)
{
	int y, mo, d, h, mi, sec, off = 0;
	const char *p;
	int64_t t;

	if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' ||
	    (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || s[13] != ':' ||
	    s[16] != ':')
		return -1;
	y = ix_digits(s, 4);
	mo = ix_digits(s + 5, 2);
	d = ix_digits(s + 8, 2);
	h = ix_digits(s + 11, 2);
	mi = ix_digits(s + 14, 2);
	sec = ix_digits(s + 17, 2);
	if (ix_civil(y, mo, d, h, mi, sec, &t) < 0)
		return -1;
	p = s + 19;
	if (*p == '.') {
		p++;
		if (*p < '0' || *p > '9')
			return -1;
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
		off = 0;
	} else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
		int oh = ix_digits(p + 1, 2), om = ix_digits(p + 4, 2);

		if (oh < 0 || oh > 23 || om < 0 || om > 59)
			return -1;
		off = (oh * 60 + om) * 60;
		if (*p == '-')
			off = -off;
	} else {
		return -1;
	}
	*t_r = t - off; /* local = UTC + offset */
	return 0;
}

int qindex_parse_time(const char *s, int64_t now, int64_t *t_r)
{
	size_t len = s != NULL ? strlen(s) : 0;

	if (len == 0)
		return -1;
	if (len >= 2 && len <= 12 && strspn(s, "0123456789") == len - 1) {
		static const struct {
			char unit;
			int64_t secs;
		} units[] = {
		    {'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'w', 604800}};
		int64_t n = strtoll(s, NULL, 10);

		for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
			if (s[len - 1] != units[i].unit)
				continue;
			/* at most 11 digits times a week: no overflow */
			*t_r = now - n * units[i].secs;
			return 0;
		}
		return -1;
	}
	if (len == 10 && s[4] == '-' && s[7] == '-') {
		int y = ix_digits(s, 4), mo = ix_digits(s + 5, 2),
		    d = ix_digits(s + 8, 2);

		return ix_civil(y, mo, d, 0, 0, 0, t_r);
	}
	return qindex_parse_rfc3339(s, t_r);
}

/* The time an id was made ("20261129T064345Z-..."), or -1. */
static int ix_id_time(const char *id, int64_t *t_r)
{
	if (strlen(id) < 16 || id[8] != 'T' || id[15] != 'Z')
		return -1;
	return ix_civil(ix_digits(id, 4), ix_digits(id + 4, 2), ix_digits(id + 6, 2),
	                ix_digits(id + 9, 2), ix_digits(id + 11, 2),
	                ix_digits(id + 13, 2), t_r);
}

static int64_t ix_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double ix_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------ JSON */

void qindex_json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s, *end;

	if (s == NULL) {
		fputs("null", f);
		return;
	}
	end = p + strlen(s);
	putc('"', f);
	while (p < end) {
		size_t n = quar_utf8_len(p, end);

		if (n == 0) {
			fputs("\xef\xbf\xbd", f);
			p++;
			continue;
		}
		if (n == 3 && p[0] == 0xe2 && p[1] == 0x80 &&
		    (p[2] == 0xa8 || p[2] == 0xa9))
			fputs(p[2] == 0xa8 ? "\\u2028" : "\\u2029", f);
		else if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p == '\r')
			fputs("\\r", f);
		else if (*p == '\t')
			fputs("\\t", f);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fwrite(p, 1, n, f);
		p += n;
	}
	putc('"', f);
}

/* The members of ID.json the index has a column for (quarantine.c). */
enum ix_field {
	IXF_ID,
	IXF_RECEIVED_AT,
	IXF_PROTOCOL,
	IXF_USER,
	IXF_UPSTREAM,
	IXF_SIGNATURE,
	IXF_VERDICT,
	IXF_SIZE,
	IXF_TRUNCATED,
	IXF_SHA256,
	IXF_FROM,
	IXF_SUBJECT,
	IXF_SESSION,
	IXF_MESSAGE,
	IXF_COUNT
};

static const char *const ix_field_names[] = {
    [IXF_ID] = "id",
    [IXF_RECEIVED_AT] = "received_at",
    [IXF_PROTOCOL] = "protocol",
    [IXF_USER] = "user",
    [IXF_UPSTREAM] = "upstream",
    [IXF_SIGNATURE] = "signature",
    [IXF_VERDICT] = "verdict",
    [IXF_SIZE] = "size",
    [IXF_TRUNCATED] = "truncated",
    [IXF_SHA256] = "sha256",
    [IXF_FROM] = "from",
    [IXF_SUBJECT] = "subject",
    [IXF_SESSION] = "session",
    [IXF_MESSAGE] = "message",
};
_Static_assert(sizeof(ix_field_names) / sizeof(ix_field_names[0]) == IXF_COUNT,
               "one name per field");

/* Members the listing adds itself: dropped from extra to avoid duplicates. */
static const char *const ix_reserved[] = {"eml", "released_at", "released_by"};

/* One parsed ID.json. Strings are owned (free with ix_rec_free). */
struct ix_rec {
	char *str[IXF_COUNT]; /* NULL: null or absent; unused for size, truncated */
	int64_t size;         /* -1: null or absent */
	int truncated;        /* -1: null or absent */
	int64_t received_s;
	uint64_t ino; /* the file's */
	char *extra;  /* NULL when none */
	size_t extra_len;
};

static void ix_rec_free(struct ix_rec *r)
{
	for (int i = 0; i < IXF_COUNT; i++)
		free(r->str[i]);
	free(r->extra);
	memset(r, 0, sizeof(*r));
}

struct jp {
	const unsigned char *start, *p, *end;
	const char *err;
	char errbuf[96];
};

static void jp_ws(struct jp *j)
{
	while (j->p < j->end &&
	       (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static int jp_fail(struct jp *j, const char *what)
{
	if (j->err == NULL) {
		snprintf(j->errbuf, sizeof(j->errbuf), "%s at byte %td", what,
		         j->p - j->start);
		j->err = j->errbuf;
	}
	return -1;
}

static int jp_hex4(const unsigned char *s)
{
	int v = 0;

	for (int i = 0; i < 4; i++) {
		int c = s[i], d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

static size_t jp_put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/*
 * A JSON string at j->p (on its opening quote). With out_r, decodes it into
 * a new NUL-terminated UTF-8 string: invalid UTF-8, lone surrogates and
 * \u0000 become U+FFFD (lenient: the value still reads). Without out_r
 * (strict), only validates, and invalid UTF-8 is an error: the raw text is
 * then kept verbatim and must be valid JSON. Returns 0 or -1.
 */
static int jp_string(struct jp *j, char **out_r, size_t maxlen)
{
	const unsigned char *start;
	char *o = NULL;
	size_t n = 0;

	if (j->p >= j->end || *j->p != '"')
		return jp_fail(j, "string expected");
	start = ++j->p;
	if (out_r != NULL) {
		const unsigned char *q = start;

		/* bound the span first: 3 output bytes per input byte at most */
		while (q < j->end && *q != '"')
			q += *q == '\\' && q + 1 < j->end ? 2 : 1;
		if ((size_t)(q - start) > maxlen)
			return jp_fail(j, "string too long");
		o = malloc((size_t)(q - start) * 3 + 1);
		if (o == NULL)
			return jp_fail(j, "out of memory");
	}
	while (j->p < j->end && *j->p != '"') {
		unsigned char c = *j->p;

		if (c < 0x20) {
			free(o);
			return jp_fail(j, "control character in string");
		}
		if (c == '\\') {
			unsigned cp;
			int h;

			if (j->end - j->p < 2) {
				free(o);
				return jp_fail(j, "unterminated string");
			}
			c = j->p[1];
			j->p += 2;
			switch (c) {
			case '"':
			case '\\':
			case '/':
				cp = c;
				break;
			case 'b':
				cp = '\b';
				break;
			case 'f':
				cp = '\f';
				break;
			case 'n':
				cp = '\n';
				break;
			case 'r':
				cp = '\r';
				break;
			case 't':
				cp = '\t';
				break;
			case 'u':
				if (j->end - j->p < 4 || (h = jp_hex4(j->p)) < 0) {
					free(o);
					return jp_fail(j, "bad \\u escape");
				}
				j->p += 4;
				cp = (unsigned)h;
				if (cp >= 0xd800 && cp <= 0xdbff && j->end - j->p >= 6 &&
				    j->p[0] == '\\' && j->p[1] == 'u' &&
				    (h = jp_hex4(j->p + 2)) >= 0xdc00 && h <= 0xdfff) {
					cp = 0x10000 + ((cp - 0xd800) << 10) +
					     ((unsigned)h - 0xdc00);
					j->p += 6;
				} else if (cp >= 0xd800 && cp <= 0xdfff) {
					cp = 0xfffd; /* a lone surrogate */
				}
				if (cp == 0)
					cp = 0xfffd; /* C strings end at NUL */
				break;
			default:
				free(o);
				return jp_fail(j, "bad escape");
			}
			if (o != NULL)
				n += jp_put_utf8(o + n, cp);
			continue;
		}
		{
			size_t len = quar_utf8_len(j->p, j->end);

			if (len == 0) {
				if (o == NULL)
					return jp_fail(j, "invalid UTF-8");
				n += jp_put_utf8(o + n, 0xfffd);
				j->p++;
				continue;
			}
			if (o != NULL)
				memcpy(o + n, j->p, len);
			n += len;
			j->p += len;
		}
	}
	if (j->p >= j->end) {
		free(o);
		return jp_fail(j, "unterminated string");
	}
	j->p++; /* the closing quote */
	if (out_r != NULL) {
		o[n] = '\0';
		*out_r = o;
	}
	return 0;
}

/* A JSON number (RFC 8259 section 6): validates and skips it. */
static int jp_number(struct jp *j)
{
	const unsigned char *s = j->p;

	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p < j->end && *j->p == '0') {
		j->p++;
	} else if (j->p < j->end && *j->p >= '1' && *j->p <= '9') {
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	} else {
		j->p = s;
		return jp_fail(j, "bad number");
	}
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (j->p >= j->end || *j->p < '0' || *j->p > '9')
			return jp_fail(j, "bad number");
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (j->p >= j->end || *j->p < '0' || *j->p > '9')
			return jp_fail(j, "bad number");
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	return 0;
}

static int jp_literal(struct jp *j, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return jp_fail(j, "bad literal");
	j->p += n;
	return 0;
}

/* Validates and skips any JSON value, nested at most QINDEX_DEPTH_MAX deep. */
static int jp_skip_value(struct jp *j, int depth)
{
	if (depth > QINDEX_DEPTH_MAX)
		return jp_fail(j, "nested too deep");
	jp_ws(j);
	if (j->p >= j->end)
		return jp_fail(j, "value expected");
	switch (*j->p) {
	case '"':
		return jp_string(j, NULL, 0);
	case 't':
		return jp_literal(j, "true");
	case 'f':
		return jp_literal(j, "false");
	case 'n':
		return jp_literal(j, "null");
	case '[':
	case '{': {
		int obj = *j->p == '{';
		unsigned char close = obj ? '}' : ']';

		j->p++;
		jp_ws(j);
		if (j->p < j->end && *j->p == close) {
			j->p++;
			return 0;
		}
		for (;;) {
			if (obj) {
				jp_ws(j);
				if (jp_string(j, NULL, 0) < 0)
					return -1;
				jp_ws(j);
				if (j->p >= j->end || *j->p != ':')
					return jp_fail(j, "':' expected");
				j->p++;
			}
			if (jp_skip_value(j, depth + 1) < 0)
				return -1;
			jp_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == close) {
				j->p++;
				return 0;
			}
			return jp_fail(j, obj ? "',' or '}' expected"
			                      : "',' or ']' expected");
		}
	}
	default:
		return jp_number(j);
	}
}

/* Appends ", \"key\": raw" (or without the comma first) to r->extra. */
static int ix_extra_add(struct ix_rec *r, const char *key, const unsigned char *raw,
                        size_t rawlen)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return -1;
	if (r->extra != NULL)
		fwrite(r->extra, 1, r->extra_len, f);
	if (r->extra != NULL)
		fputs(", ", f);
	qindex_json_str(f, key);
	fputs(": ", f);
	fwrite(raw, 1, rawlen, f);
	if (fclose(f) != 0) {
		free(buf);
		return -1;
	}
	free(r->extra);
	r->extra = buf;
	r->extra_len = len;
	return 0;
}

/* Parses one member's value into r according to its key. */
static int ix_member(struct jp *j, struct ix_rec *r, const char *key)
{
	int f;

	for (f = 0; f < IXF_COUNT; f++) {
		if (strcmp(key, ix_field_names[f]) == 0)
			break;
	}
	jp_ws(j);
	if (j->p >= j->end)
		return jp_fail(j, "value expected");
	if (f == IXF_COUNT) {
		const unsigned char *raw = j->p;

		if (jp_skip_value(j, 1) < 0)
			return -1;
		for (size_t i = 0; i < sizeof(ix_reserved) / sizeof(ix_reserved[0]);
		     i++) {
			if (strcmp(key, ix_reserved[i]) == 0)
				return 0;
		}
		if (ix_extra_add(r, key, raw, (size_t)(j->p - raw)) < 0)
			return jp_fail(j, "out of memory");
		return 0;
	}
	if (*j->p == 'n') {
		if (jp_literal(j, "null") < 0)
			return -1;
		if (f == IXF_SIZE)
			r->size = -1;
		else if (f == IXF_TRUNCATED)
			r->truncated = -1;
		free(r->str[f]);
		r->str[f] = NULL;
		return 0;
	}
	if (f == IXF_SIZE) {
		const unsigned char *s = j->p;
		int64_t v = 0;

		if (*s != '-' && (*s < '0' || *s > '9'))
			return jp_fail(j, "size: not a number");

		if (jp_number(j) < 0)
			return -1;
		if (j->p - s > 18)
			return jp_fail(j, "size: too large");
		for (const unsigned char *q = s; q < j->p; q++) {
			if (*q < '0' || *q > '9')
				return jp_fail(j, "size: not a count of bytes");
			v = v * 10 + (*q - '0');
		}
		r->size = v;
		return 0;
	}
	if (f == IXF_TRUNCATED) {
		if (*j->p == 't')
			r->truncated = 1;
		else if (*j->p == 'f')
			r->truncated = 0;
		else
			return jp_fail(j, "truncated: not a boolean");
		return jp_literal(j, r->truncated ? "true" : "false");
	}
	if (*j->p != '"') {
		snprintf(j->errbuf, sizeof(j->errbuf), "%s: not a string", key);
		j->err = j->errbuf;
		return -1;
	}
	free(r->str[f]);
	r->str[f] = NULL;
	return jp_string(j, &r->str[f], QINDEX_JSON_MAX);
}

/* Parses the text of an ID.json into r. Returns 0, or -1 with j->err. */
static int ix_parse_json(struct jp *j, struct ix_rec *r)
{
	unsigned members = 0;

	r->size = -1;
	r->truncated = -1;
	if (j->end - j->p >= 3 && memcmp(j->p, "\xef\xbb\xbf", 3) == 0)
		j->p += 3; /* a BOM, which RFC 8259 lets parsers ignore */
	jp_ws(j);
	if (j->p >= j->end || *j->p != '{')
		return jp_fail(j, "not a JSON object");
	j->p++;
	jp_ws(j);
	if (j->p < j->end && *j->p == '}') {
		j->p++;
	} else {
		for (;;) {
			char *key = NULL;
			int r2;

			if (++members > QINDEX_MEMBERS_MAX)
				return jp_fail(j, "too many members");
			jp_ws(j);
			if (jp_string(j, &key, QINDEX_KEY_MAX) < 0)
				return -1;
			assert(key != NULL); /* set on success */
			jp_ws(j);
			if (j->p >= j->end || *j->p != ':') {
				free(key);
				return jp_fail(j, "':' expected");
			}
			j->p++;
			r2 = ix_member(j, r, key);
			free(key);
			if (r2 < 0)
				return -1;
			jp_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == '}') {
				j->p++;
				break;
			}
			return jp_fail(j, "',' or '}' expected");
		}
	}
	jp_ws(j);
	if (j->p != j->end)
		return jp_fail(j, "text after the object");
	return 0;
}

/*
 * Reads and parses dir/ID.json into r, checking it describes id. Returns 0;
 * 1 when the file is gone (removed meanwhile: not an error); -1 with a
 * reason in why (the file is corrupt or unreadable) and its size and mtime
 * in *size_r, *mtime_r when known.
 */
static int ix_read_entry(int dfd, const char *id, struct ix_rec *r, char *why,
                         size_t whylen, int64_t *size_r, int64_t *mtime_r)
{
	char name[QINDEX_NAME_MAX];
	struct stat st;
	struct jp j = {0};
	char *buf;
	size_t got = 0;
	int fd;

	memset(r, 0, sizeof(*r));
	*size_r = -1;
	*mtime_r = -1;
	snprintf(name, sizeof(name), "%s.json", id);
	fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 1;
		snprintf(why, whylen, "open: %s", IX_STRERROR(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		close(fd);
		return -1;
	}
	*size_r = st.st_size;
	r->ino = (uint64_t)st.st_ino;
	*mtime_r = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	if (st.st_size > QINDEX_JSON_MAX) {
		snprintf(why, whylen, "larger than %d bytes", QINDEX_JSON_MAX);
		close(fd);
		return -1;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		snprintf(why, whylen, "out of memory");
		close(fd);
		return -1;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	j.start = j.p = (const unsigned char *)buf;
	j.end = j.p + got;
	if (ix_parse_json(&j, r) < 0) {
		snprintf(why, whylen, "not valid JSON: %s", j.err);
		goto bad;
	}
	if (r->str[IXF_ID] == NULL || strcmp(r->str[IXF_ID], id) != 0) {
		snprintf(why, whylen, "its \"id\" is not %s", id);
		goto bad;
	}
	if (r->str[IXF_RECEIVED_AT] == NULL ||
	    qindex_parse_rfc3339(r->str[IXF_RECEIVED_AT], &r->received_s) < 0) {
		char stamp[32];
		struct tm tm;
		time_t t;

		/* robust: an id says when it was made */
		if (ix_id_time(id, &r->received_s) < 0) {
			snprintf(why, whylen, "no valid \"received_at\"");
			goto bad;
		}
		t = (time_t)r->received_s;
		gmtime_r(&t, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
		free(r->str[IXF_RECEIVED_AT]);
		r->str[IXF_RECEIVED_AT] = strdup(stamp);
		if (r->str[IXF_RECEIVED_AT] == NULL) {
			snprintf(why, whylen, "out of memory");
			goto bad;
		}
	}
	free(buf);
	return 0;
bad:
	free(buf);
	ix_rec_free(r);
	return -1;
}

/* --------------------------------------------------------------- helpers */

int qindex_valid_id(const char *id)
{
	size_t n;

	if (id == NULL || id[0] == '\0' || id[0] == '.')
		return 0;
	n = strspn(id,
	           "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");
	return n < QUAR_ID_MAX && id[n] == '\0';
}

void qindex_filter_init(struct qindex_filter *f)
{
	memset(f, 0, sizeof(*f));
	f->since_s = INT64_MIN;
	f->before_s = INT64_MAX;
}

const char *qindex_dir(const struct qindex *ix)
{
	return ix->dir;
}

const char *qindex_path(const struct qindex *ix)
{
	return ix->path;
}

void qindex_set_warn(struct qindex *ix, qindex_warn_cb cb, void *arg)
{
	pthread_mutex_lock(&ix->lock);
	ix->warn = cb;
	ix->warn_arg = arg;
	pthread_mutex_unlock(&ix->lock);
}

static int ix_exec(struct qindex *ix, const char *sql, char *err, size_t errlen)
{
	if (sqlite3_exec(ix->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
		ix_dberr(ix, err, errlen, sql);
		return -1;
	}
	return 0;
}

static int ix_prepare(struct qindex *ix, const char *sql, sqlite3_stmt **st_r, char *err,
                      size_t errlen)
{
	if (sqlite3_prepare_v2(ix->db, sql, -1, st_r, NULL) != SQLITE_OK) {
		ix_dberr(ix, err, errlen, "prepare");
		*st_r = NULL;
		return -1;
	}
	return 0;
}

/* Binds s as text, or NULL. */
static void ix_bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s == NULL)
		sqlite3_bind_null(st, i);
	else
		sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
}

static const char *ix_col_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

/* Reads an integer from the state table; dflt when absent. */
static int64_t ix_state_get(struct qindex *ix, const char *key, int64_t dflt)
{
	sqlite3_stmt *st;
	int64_t v = dflt;

	if (sqlite3_prepare_v2(ix->db, "SELECT value FROM state WHERE key = ?1", -1, &st,
	                       NULL) != SQLITE_OK)
		return dflt;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static int ix_state_set(struct qindex *ix, const char *key, int64_t v)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(ix->db,
	                       "INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)",
	                       -1, &st, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, v);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* ------------------------------------------------------------ open/close */

static const char ix_schema[] =
    "CREATE TABLE IF NOT EXISTS entries ("
    " id TEXT PRIMARY KEY NOT NULL, received_at TEXT NOT NULL,"
    " received_s INTEGER NOT NULL, protocol TEXT, user TEXT, upstream TEXT,"
    " signature TEXT, verdict TEXT, size INTEGER, truncated INTEGER, sha256 TEXT,"
    " \"from\" TEXT, subject TEXT, session TEXT, message TEXT, extra TEXT,"
    " eml INTEGER NOT NULL DEFAULT 1, json_ino INTEGER);"
    "CREATE INDEX IF NOT EXISTS entries_time ON entries(received_s, id);"
    "CREATE INDEX IF NOT EXISTS entries_user ON entries(user, received_s, id);"
    "CREATE TABLE IF NOT EXISTS released ("
    " sha256 TEXT PRIMARY KEY NOT NULL, id TEXT, released_at TEXT, by TEXT);"
    "CREATE TABLE IF NOT EXISTS skipped ("
    " name TEXT PRIMARY KEY NOT NULL, size INTEGER, mtime_ns INTEGER, reason TEXT);"
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY NOT NULL, value);"
    "PRAGMA user_version = 1;";

/*
 * Creates the index file, mode 0600, before SQLite does (SQLite would use
 * 0644 minus the umask). SECURITY: the index holds senders and subjects.
 * When root creates it, it goes to the owner of the quarantine directory,
 * so the daemon running as that user can write it (SQLite then gives its
 * WAL and shm files the same owner).
 */
static int ix_precreate(const char *path, const struct stat *dirst)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	if (fchmod(fd, 0600) != 0 || (geteuid() == 0 && dirst->st_uid != 0 &&
	                              fchown(fd, dirst->st_uid, dirst->st_gid) != 0)) {
		int e = errno;

		close(fd);
		unlink(path);
		return -e;
	}
	close(fd);
	return 0;
}

struct qindex *qindex_open(const struct config *cfg, int readonly, char *err,
                           size_t errlen)
{
	struct qindex *ix = calloc(1, sizeof(*ix));
	struct stat dirst;
	int one = 1, flags, rc;
	size_t dl;

	if (ix == NULL) {
		ix_errf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&ix->lock, NULL);
	ix->readonly = readonly;
	dl = strlen(cfg->quarantine_dir);
	while (dl > 1 && cfg->quarantine_dir[dl - 1] == '/')
		dl--;
	if (dl == 0 || dl >= sizeof(ix->dir)) {
		ix_errf(err, errlen, "quarantine dir: bad path");
		goto fail;
	}
	memcpy(ix->dir, cfg->quarantine_dir, dl);
	ix->dir[dl] = '\0';
	if (cfg->quarantine_index[0] != '\0')
		rc = snprintf(ix->path, sizeof(ix->path), "%s", cfg->quarantine_index);
	else
		rc = snprintf(ix->path, sizeof(ix->path), "%s/.index.sqlite", ix->dir);
	if (rc < 0 || (size_t)rc >= sizeof(ix->path)) {
		ix_errf(err, errlen, "quarantine index: path too long");
		goto fail;
	}
	if (stat(ix->dir, &dirst) != 0) {
		ix_errf(err, errlen, "quarantine dir %s: %s", ix->dir,
		        IX_STRERROR(errno));
		goto fail;
	}
	if (!S_ISDIR(dirst.st_mode)) {
		ix_errf(err, errlen, "quarantine dir %s: not a directory", ix->dir);
		goto fail;
	}
	if (!readonly) {
		rc = ix_precreate(ix->path, &dirst);
		if (rc < 0) {
			ix_errf(err, errlen, "index %s: %s", ix->path, IX_STRERROR(-rc));
			goto fail;
		}
	}
	flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
	        SQLITE_OPEN_NOMUTEX; /* our own mutex serializes a handle */
	if (sqlite3_open_v2(ix->path, &ix->db, flags, NULL) != SQLITE_OK) {
		ix_errf(err, errlen, "index %s: %s", ix->path,
		        ix->db != NULL ? sqlite3_errmsg(ix->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(ix->db, QINDEX_BUSY_MS);
	sqlite3_file_control(ix->db, "main", SQLITE_FCNTL_PERSIST_WAL, &one);
	if (!readonly) {
		if (ix_exec(ix, "PRAGMA journal_mode = WAL", err, errlen) < 0 ||
		    ix_exec(ix, "PRAGMA synchronous = NORMAL", err, errlen) < 0 ||
		    ix_exec(ix, ix_schema, err, errlen) < 0)
			goto fail;
	}
	{
		sqlite3_stmt *st;
		int64_t ver = -1;

		if (ix_prepare(ix, "PRAGMA user_version", &st, err, errlen) < 0)
			goto fail;
		if (sqlite3_step(st) == SQLITE_ROW)
			ver = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		if (ver != QINDEX_SCHEMA) {
			ix_errf(err, errlen,
			        "index %s: schema version %" PRId64 ", want %d", ix->path,
			        ver, QINDEX_SCHEMA);
			goto fail;
		}
	}
	if (ix_prepare(ix, "SELECT 1 FROM released WHERE sha256 = ?1", &ix->st_released,
	               err, errlen) < 0)
		goto fail;
	return ix;
fail:
	qindex_close(&ix);
	return NULL;
}

void qindex_close(struct qindex **ixp)
{
	struct qindex *ix = ixp != NULL ? *ixp : NULL;

	if (ix == NULL)
		return;
	sqlite3_finalize(ix->st_released);
	sqlite3_close_v2(ix->db);
	pthread_mutex_destroy(&ix->lock);
	free(ix);
	*ixp = NULL;
}

/* ------------------------------------------------------------ sync & add */

/*
 * A growable array of ids. The id comes first in each element, so that
 * strcmp-based qsort and bsearch (with a string key) work on them.
 */
struct ix_id {
	char id[QUAR_ID_MAX];
	unsigned char flag; /* indexed: the eml column; purge: an unreadable one */
	uint64_t ino;       /* ID.json's inode (readdir's d_ino, or the index's) */
};

struct ix_ids {
	struct ix_id *v;
	size_t n, cap;
};

static int ix_ids_push(struct ix_ids *a, const char *id, size_t len, int flag,
                       uint64_t ino)
{
	if (a->n == a->cap) {
		size_t ncap = a->cap != 0 ? a->cap * 2 : 1024;
		struct ix_id *nv = realloc(a->v, ncap * sizeof(*a->v));

		if (nv == NULL)
			return -1;
		a->v = nv;
		a->cap = ncap;
	}
	memcpy(a->v[a->n].id, id, len);
	a->v[a->n].id[len] = '\0';
	a->v[a->n].flag = (unsigned char)flag;
	a->v[a->n].ino = ino;
	a->n++;
	return 0;
}

static void ix_ids_free(struct ix_ids *a)
{
	free(a->v);
	memset(a, 0, sizeof(*a));
}

static int ix_id_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int ix_ids_has(const struct ix_ids *a, const char *id)
{
	return a->n != 0 && bsearch(id, a->v, a->n, sizeof(*a->v), ix_id_cmp) != NULL;
}

/* The id of a directory entry "ID.<ext>" into *len_r, or NULL. */
static int ix_name_id(const char *name, const char *ext, size_t *len_r)
{
	size_t n = strlen(name), e = strlen(ext);
	char id[QUAR_ID_MAX];

	if (n <= e || n - e >= QUAR_ID_MAX || strcmp(name + n - e, ext) != 0)
		return 0;
	memcpy(id, name, n - e);
	id[n - e] = '\0';
	if (!qindex_valid_id(id))
		return 0;
	*len_r = n - e;
	return 1;
}

/* Inserts (or replaces) the parsed entry id. Lock held. */
static int ix_insert(struct qindex *ix, sqlite3_stmt *st, const struct ix_rec *r, int eml)
{
	int i = 1;

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	ix_bind_text(st, i++, r->str[IXF_ID]);
	ix_bind_text(st, i++, r->str[IXF_RECEIVED_AT]);
	sqlite3_bind_int64(st, i++, r->received_s);
	for (int f = IXF_PROTOCOL; f < IXF_COUNT; f++) {
		if (f == IXF_SIZE) {
			if (r->size >= 0)
				sqlite3_bind_int64(st, i, r->size);
		} else if (f == IXF_TRUNCATED) {
			if (r->truncated >= 0)
				sqlite3_bind_int(st, i, r->truncated);
		} else {
			ix_bind_text(st, i, r->str[f]);
		}
		i++;
	}
	if (r->extra != NULL)
		sqlite3_bind_text(st, i, r->extra, (int)r->extra_len, SQLITE_TRANSIENT);
	i++;
	sqlite3_bind_int(st, i++, eml);
	sqlite3_bind_int64(st, i, (int64_t)r->ino);
	return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

static const char ix_insert_sql[] =
    "INSERT OR REPLACE INTO entries(id, received_at, received_s, protocol, user,"
    " upstream, signature, verdict, size, truncated, sha256, \"from\", subject,"
    " session, message, extra, eml, json_ino)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,"
    " ?16, ?17, ?18)";

/* Statements one sync uses. */
struct ix_sync_stmts {
	sqlite3_stmt *insert, *del, *set_eml, *skip_put, *skip_del;
};

static void ix_sync_stmts_free(struct ix_sync_stmts *s)
{
	sqlite3_finalize(s->insert);
	sqlite3_finalize(s->del);
	sqlite3_finalize(s->set_eml);
	sqlite3_finalize(s->skip_put);
	sqlite3_finalize(s->skip_del);
	memset(s, 0, sizeof(*s));
}

static int ix_sync_stmts_init(struct qindex *ix, struct ix_sync_stmts *s, char *err,
                              size_t errlen)
{
	memset(s, 0, sizeof(*s));
	if (ix_prepare(ix, ix_insert_sql, &s->insert, err, errlen) < 0 ||
	    ix_prepare(ix, "DELETE FROM entries WHERE id = ?1", &s->del, err, errlen) <
	        0 ||
	    ix_prepare(ix, "UPDATE entries SET eml = ?2 WHERE id = ?1", &s->set_eml, err,
	               errlen) < 0 ||
	    ix_prepare(ix,
	               "INSERT OR REPLACE INTO skipped(name, size, mtime_ns, reason)"
	               " VALUES (?1, ?2, ?3, ?4)",
	               &s->skip_put, err, errlen) < 0 ||
	    ix_prepare(ix, "DELETE FROM skipped WHERE name = ?1", &s->skip_del, err,
	               errlen) < 0) {
		ix_sync_stmts_free(s);
		return -1;
	}
	return 0;
}

static int ix_step_text(sqlite3_stmt *st, const char *a)
{
	sqlite3_reset(st);
	sqlite3_bind_text(st, 1, a, -1, SQLITE_TRANSIENT);
	return sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
}

/*
 * Parses and indexes one entry (lock held, inside a transaction). A corrupt
 * file goes to the skipped table with one warning. Returns 1 indexed, 0
 * skipped or gone, -1 on a database error.
 */
static int ix_index_one(struct qindex *ix, struct ix_sync_stmts *s, int dfd,
                        const char *id, int eml, uint64_t ino, int *warned_r)
{
	struct ix_rec r;
	char why[160], name[QINDEX_NAME_MAX];
	int64_t size, mtime;
	int rc = ix_read_entry(dfd, id, &r, why, sizeof(why), &size, &mtime);

	snprintf(name, sizeof(name), "%s.json", id);
	if (rc == 1)
		return 0;
	if (rc < 0) {
		ix_warnf(ix, "quarantine %s/%s skipped: %s", ix->dir, name, why);
		if (warned_r != NULL)
			*warned_r = 1;
		sqlite3_reset(s->skip_put);
		sqlite3_bind_text(s->skip_put, 1, name, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(s->skip_put, 2, size);
		sqlite3_bind_int64(s->skip_put, 3, mtime);
		sqlite3_bind_text(s->skip_put, 4, why, -1, SQLITE_TRANSIENT);
		return sqlite3_step(s->skip_put) == SQLITE_DONE ? 0 : -1;
	}
	if (ino != 0)
		r.ino = ino; /* what readdir says, to compare with next time */
	rc = ix_insert(ix, s->insert, &r, eml);
	ix_rec_free(&r);
	if (rc < 0 || ix_step_text(s->skip_del, name) < 0)
		return -1;
	return 1;
}

/* A skipped file, as remembered. */
struct ix_skip {
	char name[QINDEX_NAME_MAX];
	int64_t size, mtime;
};

static int ix_skip_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ix_skip *)a)->name,
	              ((const struct ix_skip *)b)->name);
}

/* Reads the directory's ID.json and ID.eml names. Returns 0 or -errno. */
static int ix_readdir(int dfd, struct ix_ids *json, struct ix_ids *eml)
{
	int fd = dup(dfd);
	DIR *d;
	struct dirent *e;

	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (d == NULL) {
		int er = errno;

		close(fd);
		return -er;
	}
	rewinddir(d);
	errno = 0;
	while ((e = readdir(d)) != NULL) {
		size_t len;

		if (e->d_name[0] == '.')
			continue;
		if (ix_name_id(e->d_name, ".json", &len)) {
			if (ix_ids_push(json, e->d_name, len, 0, (uint64_t)e->d_ino) <
			    0) {
				closedir(d);
				return -ENOMEM;
			}
		} else if (ix_name_id(e->d_name, ".eml", &len)) {
			if (ix_ids_push(eml, e->d_name, len, 0, 0) < 0) {
				closedir(d);
				return -ENOMEM;
			}
		}
		errno = 0;
	}
	if (errno != 0) {
		int er = errno;

		closedir(d);
		return -er;
	}
	closedir(d);
	if (json->n > 1)
		qsort(json->v, json->n, sizeof(*json->v), ix_id_cmp);
	if (eml->n > 1)
		qsort(eml->v, eml->n, sizeof(*eml->v), ix_id_cmp);
	return 0;
}

static unsigned ix_count(struct qindex *ix, const char *sql)
{
	sqlite3_stmt *st;
	unsigned n = 0;

	if (sqlite3_prepare_v2(ix->db, sql, -1, &st, NULL) != SQLITE_OK)
		return 0;
	if (sqlite3_step(st) == SQLITE_ROW)
		n = (unsigned)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* Commits and begins again every QINDEX_BATCH writes, so the daemon's own
 * writes never wait long behind a big first sync. */
static int ix_batch(struct qindex *ix, unsigned *writes, char *err, size_t errlen)
{
	if (++*writes % QINDEX_BATCH != 0)
		return 0;
	if (ix_exec(ix, "COMMIT", err, errlen) < 0 ||
	    ix_exec(ix, "BEGIN IMMEDIATE", err, errlen) < 0)
		return -1;
	return 0;
}

/* The sync itself (see qindex_sync); lock held. */
static int ix_sync_locked(struct qindex *ix, struct qindex_sync_stats *st, char *err,
                          size_t errlen)
{
	struct ix_ids json = {0}, eml = {0}, db = {0};
	struct ix_skip *skips = NULL;
	size_t nskips = 0, capskips = 0, i, k;
	struct ix_sync_stmts s = {0};
	struct stat before, after;
	int64_t start_ns = ix_now_ns(), mtime_ns, record = 0;
	unsigned writes = 0;
	int dfd, rc = -1, in_txn = 0, r;
	sqlite3_stmt *q = NULL;
	double t0;

	memset(st, 0, sizeof(*st));
	if (ix->readonly) {
		ix_errf(err, errlen, "index %s: opened read-only", ix->path);
		return -1;
	}
	dfd = open(ix->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fstat(dfd, &before) != 0) {
		ix_errf(err, errlen, "quarantine dir %s: %s", ix->dir,
		        IX_STRERROR(errno));
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	mtime_ns = (int64_t)before.st_mtim.tv_sec * 1000000000LL + before.st_mtim.tv_nsec;
	if (mtime_ns != 0 && ix_state_get(ix, "dir_mtime_ns", 0) == mtime_ns &&
	    ix_state_get(ix, "dir_ino", 0) == (int64_t)before.st_ino) {
		st->skipped = ix_count(ix, "SELECT count(*) FROM skipped");
		close(dfd);
		return 0;
	}
	st->full = 1;

	t0 = ix_mono_ms();
	r = ix_readdir(dfd, &json, &eml);
	st->readdir_ms = ix_mono_ms() - t0;
	if (r < 0) {
		ix_errf(err, errlen, "quarantine dir %s: read: %s", ix->dir,
		        IX_STRERROR(-r));
		goto out;
	}
	st->scanned = (unsigned)json.n;

	/* what the index has, in the same (byte) order */
	if (ix_prepare(ix, "SELECT id, eml, json_ino FROM entries ORDER BY id", &q, err,
	               errlen) < 0)
		goto out;
	while ((r = sqlite3_step(q)) == SQLITE_ROW) {
		const char *id = ix_col_text(q, 0);
		size_t len = id != NULL ? strlen(id) : 0;

		if (len == 0 || len >= QUAR_ID_MAX)
			continue; /* not one of ours: left alone */
		if (ix_ids_push(&db, id, len, sqlite3_column_int(q, 1) != 0,
		                (uint64_t)sqlite3_column_int64(q, 2)) < 0) {
			ix_errf(err, errlen, "out of memory");
			goto out;
		}
	}
	if (r != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "read the entries");
		goto out;
	}
	sqlite3_finalize(q);
	if (ix_prepare(ix, "SELECT name, size, mtime_ns FROM skipped", &q, err, errlen) <
	    0)
		goto out;
	while ((r = sqlite3_step(q)) == SQLITE_ROW) {
		const char *name = ix_col_text(q, 0);

		if (name == NULL || strlen(name) >= QINDEX_NAME_MAX)
			continue;
		if (nskips == capskips) {
			size_t ncap = capskips != 0 ? capskips * 2 : 16;
			struct ix_skip *ns = realloc(skips, ncap * sizeof(*ns));

			if (ns == NULL) {
				ix_errf(err, errlen, "out of memory");
				goto out;
			}
			skips = ns;
			capskips = ncap;
		}
		snprintf(skips[nskips].name, sizeof(skips[nskips].name), "%s", name);
		skips[nskips].size = sqlite3_column_int64(q, 1);
		skips[nskips].mtime = sqlite3_column_int64(q, 2);
		nskips++;
	}
	if (r != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "read the skipped files");
		goto out;
	}
	sqlite3_finalize(q);
	q = NULL;
	if (nskips > 1)
		qsort(skips, nskips, sizeof(*skips), ix_skip_cmp);

	if (ix_sync_stmts_init(ix, &s, err, errlen) < 0 ||
	    ix_exec(ix, "BEGIN IMMEDIATE", err, errlen) < 0)
		goto out;
	in_txn = 1;

	/*
	 * Merge the sorted names: new files, gone files, and for the others a
	 * changed ID.eml presence or a replaced ID.json (another inode: written
	 * anew and renamed over, the only way files here change).
	 */
	for (i = 0, k = 0; i < json.n || k < db.n;) {
		int c = i == json.n ? 1
		        : k == db.n ? -1
		                    : strcmp(json.v[i].id, db.v[k].id);
		const char *id = c <= 0 ? json.v[i].id : db.v[k].id;
		int has_eml = c <= 0 && ix_ids_has(&eml, id), warned = 0;

		if (c > 0) { /* indexed, its ID.json gone */
			k++;
			if (ix_step_text(s.del, id) < 0) {
				ix_dberr(ix, err, errlen, "drop an entry");
				goto out;
			}
			st->removed++;
		} else if (c == 0 && json.v[i].ino == db.v[k].ino) {
			int old_eml = db.v[k].flag;

			i++;
			k++;
			if (has_eml == old_eml)
				continue; /* the common case: nothing to do */
			sqlite3_reset(s.set_eml);
			sqlite3_bind_text(s.set_eml, 1, id, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int(s.set_eml, 2, has_eml);
			if (sqlite3_step(s.set_eml) != SQLITE_DONE) {
				ix_dberr(ix, err, errlen, "update an entry");
				goto out;
			}
			st->updated++;
		} else if (c == 0) { /* replaced: read it again */
			uint64_t ino = json.v[i].ino;

			i++;
			k++;
			r = ix_index_one(ix, &s, dfd, id, has_eml, ino, &warned);
			if (r < 0) {
				ix_dberr(ix, err, errlen, "index an entry");
				goto out;
			}
			if (r == 0 && ix_step_text(s.del, id) < 0) { /* now unreadable */
				ix_dberr(ix, err, errlen, "drop an entry");
				goto out;
			}
			st->updated++;
			st->warned += (unsigned)warned;
		} else { /* on disk, not indexed */
			struct ix_skip key = {0}, *known;
			uint64_t ino = json.v[i].ino;

			i++;
			snprintf(key.name, sizeof(key.name), "%s.json", id);
			known = nskips != 0 ? bsearch(&key, skips, nskips, sizeof(*skips),
			                              ix_skip_cmp)
			                    : NULL;
			if (known != NULL) {
				struct stat fst;

				/* known bad: parse again only when it changed */
				if (fstatat(dfd, key.name, &fst, AT_SYMLINK_NOFOLLOW) ==
				        0 &&
				    fst.st_size == known->size &&
				    (int64_t)fst.st_mtim.tv_sec * 1000000000LL +
				            fst.st_mtim.tv_nsec ==
				        known->mtime)
					continue;
			}
			r = ix_index_one(ix, &s, dfd, id, has_eml, ino, &warned);
			if (r < 0) {
				ix_dberr(ix, err, errlen, "index an entry");
				goto out;
			}
			st->added += (unsigned)r;
			st->warned += (unsigned)warned;
		}
		if (ix_batch(ix, &writes, err, errlen) < 0)
			goto out;
	}
	/* forget bad files that are gone */
	for (i = 0; i < nskips; i++) {
		size_t len;

		if (ix_name_id(skips[i].name, ".json", &len)) {
			char id[QUAR_ID_MAX];

			memcpy(id, skips[i].name, len);
			id[len] = '\0';
			if (ix_ids_has(&json, id))
				continue;
		}
		if (ix_step_text(s.skip_del, skips[i].name) < 0) {
			ix_dberr(ix, err, errlen, "forget a skipped file");
			goto out;
		}
	}

	/*
	 * Remember the directory as read, unless it changed meanwhile or its
	 * mtime is too recent to trust (see the header comment).
	 */
	if (fstat(dfd, &after) == 0 && after.st_ino == before.st_ino &&
	    after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
	    after.st_mtim.tv_nsec == before.st_mtim.tv_nsec &&
	    mtime_ns < start_ns - QINDEX_RACY_NS)
		record = mtime_ns;
	if (ix_state_set(ix, "dir_mtime_ns", record) < 0 ||
	    ix_state_set(ix, "dir_ino", (int64_t)before.st_ino) < 0) {
		ix_dberr(ix, err, errlen, "record the directory state");
		goto out;
	}
	if (ix_exec(ix, "COMMIT", err, errlen) < 0)
		goto out;
	in_txn = 0;
	st->skipped = ix_count(ix, "SELECT count(*) FROM skipped");
	rc = 0;
out:
	if (in_txn)
		sqlite3_exec(ix->db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_finalize(q);
	ix_sync_stmts_free(&s);
	ix_ids_free(&json);
	ix_ids_free(&eml);
	ix_ids_free(&db);
	free(skips);
	close(dfd);
	return rc;
}

int qindex_sync(struct qindex *ix, struct qindex_sync_stats *st_r, char *err,
                size_t errlen)
{
	struct qindex_sync_stats st;
	int rc;

	pthread_mutex_lock(&ix->lock);
	rc = ix_sync_locked(ix, &st, err, errlen);
	pthread_mutex_unlock(&ix->lock);
	if (st_r != NULL)
		*st_r = st;
	return rc;
}

/*
 * What changing one entry needs: a valid id, an index opened for writing,
 * and the quarantine directory (its descriptor, or -1 with err set).
 */
static int ix_entry_dir(struct qindex *ix, const char *id, char *err, size_t errlen)
{
	int dfd;

	if (!qindex_valid_id(id)) {
		ix_errf(err, errlen, "not a quarantine id");
		return -1;
	}
	if (ix->readonly) {
		ix_errf(err, errlen, "index %s: opened read-only", ix->path);
		return -1;
	}
	dfd = open(ix->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		ix_errf(err, errlen, "quarantine dir %s: %s", ix->dir,
		        IX_STRERROR(errno));
	return dfd;
}

int qindex_add(struct qindex *ix, const char *id, char *err, size_t errlen)
{
	struct ix_sync_stmts s;
	char name[QINDEX_NAME_MAX];
	int dfd, rc = -1, r, warned = 0;

	dfd = ix_entry_dir(ix, id, err, errlen);
	if (dfd < 0)
		return -1;
	snprintf(name, sizeof(name), "%s.eml", id);
	pthread_mutex_lock(&ix->lock);
	if (ix_sync_stmts_init(ix, &s, err, errlen) < 0)
		goto out;
	r = ix_index_one(ix, &s, dfd, id,
	                 faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0, 0,
	                 &warned);
	ix_sync_stmts_free(&s);
	if (r < 0)
		ix_dberr(ix, err, errlen, "index an entry");
	else if (r == 0)
		ix_errf(err, errlen, "%s/%s.json: %s", ix->dir, id,
		        warned ? "unreadable (skipped)" : "no such file");
	else
		rc = 0;
out:
	pthread_mutex_unlock(&ix->lock);
	close(dfd);
	return rc;
}

/* ----------------------------------------------------------------- list */

int qindex_list(struct qindex *ix, const struct qindex_filter *f, qindex_entry_cb cb,
                void *arg, char *err, size_t errlen)
{
	struct qindex_filter all;
	char sql[1024];
	sqlite3_stmt *st = NULL;
	int n = 0, r, bi = 1;

	if (f == NULL) {
		qindex_filter_init(&all);
		f = &all;
	}
	snprintf(
	    sql, sizeof(sql),
	    "SELECT e.id, e.received_at, e.received_s, e.protocol, e.user, e.upstream,"
	    " e.signature, e.verdict, e.size, e.truncated, e.sha256, e.\"from\","
	    " e.subject, e.session, e.message, e.extra, e.eml, r.released_at, r.by"
	    " FROM entries e LEFT JOIN released r ON r.sha256 = e.sha256"
	    " WHERE e.received_s >= ?1 AND e.received_s < ?2%s%s"
	    " ORDER BY e.received_s DESC, e.id DESC LIMIT ?3",
	    f->user != NULL ? " AND e.user = ?4" : "",
	    f->id != NULL ? " AND e.id = ?5" : "");
	pthread_mutex_lock(&ix->lock);
	if (ix_prepare(ix, sql, &st, err, errlen) < 0) {
		pthread_mutex_unlock(&ix->lock);
		return -1;
	}
	sqlite3_bind_int64(st, bi++, f->since_s);
	sqlite3_bind_int64(st, bi++, f->before_s);
	sqlite3_bind_int64(
	    st, bi++, f->limit == 0 || f->limit > INT64_MAX ? -1 : (int64_t)f->limit);
	if (f->user != NULL)
		sqlite3_bind_text(st, 4, f->user, -1, SQLITE_TRANSIENT);
	if (f->id != NULL)
		sqlite3_bind_text(st, 5, f->id, -1, SQLITE_TRANSIENT);
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		struct qindex_entry e;

		e.id = ix_col_text(st, 0);
		e.received_at = ix_col_text(st, 1);
		e.received_s = sqlite3_column_int64(st, 2);
		e.protocol = ix_col_text(st, 3);
		e.user = ix_col_text(st, 4);
		e.upstream = ix_col_text(st, 5);
		e.signature = ix_col_text(st, 6);
		e.verdict = ix_col_text(st, 7);
		e.size = sqlite3_column_type(st, 8) == SQLITE_NULL
		             ? -1
		             : sqlite3_column_int64(st, 8);
		e.truncated = sqlite3_column_type(st, 9) == SQLITE_NULL
		                  ? -1
		                  : sqlite3_column_int(st, 9);
		e.sha256 = ix_col_text(st, 10);
		e.from = ix_col_text(st, 11);
		e.subject = ix_col_text(st, 12);
		e.session = ix_col_text(st, 13);
		e.message = ix_col_text(st, 14);
		e.extra = ix_col_text(st, 15);
		e.eml = sqlite3_column_int(st, 16);
		e.released_at = ix_col_text(st, 17);
		e.released_by = ix_col_text(st, 18);
		if (e.id == NULL || e.received_at == NULL)
			continue;
		n++;
		if (cb != NULL && cb(arg, &e) != 0) {
			r = SQLITE_DONE;
			break;
		}
	}
	if (r != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "list");
		n = -1;
	}
	sqlite3_finalize(st);
	pthread_mutex_unlock(&ix->lock);
	return n;
}

/* ------------------------------------------------------- delete & purge */

/*
 * Unlinks ID.json then ID.eml (metadata first: a tool that sees ID.json can
 * still rely on ID.eml). Returns 1 when either existed, 0 when neither, or
 * -errno.
 */
static int ix_unlink_entry(int dfd, const char *id)
{
	char name[QINDEX_NAME_MAX];
	int found = 0;

	snprintf(name, sizeof(name), "%s.json", id);
	if (unlinkat(dfd, name, 0) == 0)
		found = 1;
	else if (errno != ENOENT)
		return -errno;
	snprintf(name, sizeof(name), "%s.eml", id);
	if (unlinkat(dfd, name, 0) == 0)
		found = 1;
	else if (errno != ENOENT)
		return -errno;
	return found;
}

int qindex_delete(struct qindex *ix, const char *id, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int dfd, r, rc = -1;

	dfd = ix_entry_dir(ix, id, err, errlen);
	if (dfd < 0)
		return -1;
	pthread_mutex_lock(&ix->lock);
	r = ix_unlink_entry(dfd, id);
	if (r < 0) {
		ix_errf(err, errlen, "quarantine %s/%s: remove: %s", ix->dir, id,
		        IX_STRERROR(-r));
		goto out;
	}
	if (r > 0)
		fsync(dfd);
	if (ix_prepare(ix, "DELETE FROM entries WHERE id = ?1", &st, err, errlen) < 0)
		goto out;
	if (ix_step_text(st, id) < 0) {
		ix_dberr(ix, err, errlen, "drop an entry");
		goto out;
	}
	rc = r == 0 && sqlite3_changes(ix->db) == 0 ? 1 : 0;
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&ix->lock);
	close(dfd);
	return rc;
}

int qindex_purge(struct qindex *ix, int64_t older_than_s, unsigned *removed_r, char *err,
                 size_t errlen)
{
	struct qindex_sync_stats sst;
	struct ix_ids old = {0};
	sqlite3_stmt *q = NULL, *del = NULL, *skip_del = NULL;
	unsigned removed = 0, writes = 0;
	int dfd = -1, rc = -1, r, r2, in_txn = 0;

	if (removed_r != NULL)
		*removed_r = 0;
	pthread_mutex_lock(&ix->lock);
	if (ix_sync_locked(ix, &sst, err, errlen) < 0)
		goto out;
	dfd = open(ix->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		ix_errf(err, errlen, "quarantine dir %s: %s", ix->dir,
		        IX_STRERROR(errno));
		goto out;
	}
	if (ix_prepare(ix, "SELECT id FROM entries WHERE received_s < ?1", &q, err,
	               errlen) < 0)
		goto out;
	sqlite3_bind_int64(q, 1, older_than_s);
	while ((r = sqlite3_step(q)) == SQLITE_ROW) {
		const char *id = ix_col_text(q, 0);

		if (id == NULL || !qindex_valid_id(id))
			continue;
		if (ix_ids_push(&old, id, strlen(id), 0, 0) < 0) {
			ix_errf(err, errlen, "out of memory");
			goto out;
		}
	}
	if (r != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "list old entries");
		goto out;
	}
	/* unreadable ID.json files age too: by the time in their id */
	sqlite3_finalize(q);
	if (ix_prepare(ix, "SELECT name FROM skipped", &q, err, errlen) < 0)
		goto out;
	while ((r = sqlite3_step(q)) == SQLITE_ROW) {
		const char *name = ix_col_text(q, 0);
		size_t len;
		int64_t t;

		if (name == NULL || !ix_name_id(name, ".json", &len))
			continue;
		if (ix_id_time(name, &t) < 0 || t >= older_than_s)
			continue;
		if (ix_ids_push(&old, name, len, 1, 0) < 0) {
			ix_errf(err, errlen, "out of memory");
			goto out;
		}
	}
	if (r != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "list old unreadable entries");
		goto out;
	}
	if (ix_prepare(ix, "DELETE FROM entries WHERE id = ?1", &del, err, errlen) < 0 ||
	    ix_prepare(ix, "DELETE FROM skipped WHERE name = ?1", &skip_del, err,
	               errlen) < 0 ||
	    ix_exec(ix, "BEGIN IMMEDIATE", err, errlen) < 0)
		goto out;
	in_txn = 1;
	for (size_t i = 0; i < old.n; i++) {
		r = ix_unlink_entry(dfd, old.v[i].id);
		if (r < 0) {
			ix_errf(err, errlen, "quarantine %s/%s: remove: %s", ix->dir,
			        old.v[i].id, IX_STRERROR(-r));
			goto out;
		}
		if (old.v[i].flag) {
			char name[QINDEX_NAME_MAX];

			snprintf(name, sizeof(name), "%s.json", old.v[i].id);
			r2 = ix_step_text(skip_del, name);
		} else {
			r2 = ix_step_text(del, old.v[i].id);
		}
		if (r2 < 0) {
			ix_dberr(ix, err, errlen, "drop an entry");
			goto out;
		}
		removed += r > 0;
		if (ix_batch(ix, &writes, err, errlen) < 0)
			goto out;
	}
	if (ix_exec(ix, "COMMIT", err, errlen) < 0)
		goto out;
	in_txn = 0;
	rc = 0;
out:
	if (in_txn)
		sqlite3_exec(ix->db, "ROLLBACK", NULL, NULL, NULL);
	if (dfd >= 0) {
		if (removed > 0)
			fsync(dfd); /* the removals stick */
		close(dfd);
	}
	sqlite3_finalize(q);
	sqlite3_finalize(del);
	sqlite3_finalize(skip_del);
	pthread_mutex_unlock(&ix->lock);
	ix_ids_free(&old);
	if (removed_r != NULL)
		*removed_r = removed;
	return rc;
}

/* -------------------------------------------------------------- release */

/* 1 when s is 64 lower-case hex digits. */
static int ix_valid_sha(const char *s)
{
	return s != NULL && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

int qindex_released(struct qindex *ix, const char *sha256_hex)
{
	int r;

	if (!ix_valid_sha(sha256_hex))
		return -1;
	pthread_mutex_lock(&ix->lock);
	sqlite3_reset(ix->st_released);
	sqlite3_bind_text(ix->st_released, 1, sha256_hex, 64, SQLITE_TRANSIENT);
	r = sqlite3_step(ix->st_released);
	sqlite3_reset(ix->st_released);
	pthread_mutex_unlock(&ix->lock);
	return r == SQLITE_ROW ? 1 : r == SQLITE_DONE ? 0 : -1;
}

int qindex_mark_released(struct qindex *ix, const char *sha256_hex, const char *id,
                         const char *by, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	char stamp[32];
	struct tm tm;
	time_t t = time(NULL);
	int rc = -1;

	if (!ix_valid_sha(sha256_hex)) {
		ix_errf(err, errlen, "not a SHA-256 in hex");
		return -1;
	}
	if (ix->readonly) {
		ix_errf(err, errlen, "index %s: opened read-only", ix->path);
		return -1;
	}
	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	pthread_mutex_lock(&ix->lock);
	/* this row is not rebuilt from the directory: the commit is fsynced */
	if (ix_exec(ix, "PRAGMA synchronous = FULL", err, errlen) < 0)
		goto out;
	if (ix_prepare(ix,
	               "INSERT OR REPLACE INTO released(sha256, id, released_at, by)"
	               " VALUES (?1, ?2, ?3, ?4)",
	               &st, err, errlen) < 0)
		goto out;
	sqlite3_bind_text(st, 1, sha256_hex, 64, SQLITE_TRANSIENT);
	ix_bind_text(st, 2, id);
	sqlite3_bind_text(st, 3, stamp, -1, SQLITE_TRANSIENT);
	ix_bind_text(st, 4, by);
	if (sqlite3_step(st) != SQLITE_DONE) {
		ix_dberr(ix, err, errlen, "remember the release");
		goto out;
	}
	rc = 0;
out:
	sqlite3_finalize(st);
	sqlite3_exec(ix->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
	pthread_mutex_unlock(&ix->lock);
	return rc;
}
