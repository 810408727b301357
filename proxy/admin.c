/*
 * admin.c - `mailmoat quarantine ...`: list, show, export, release, delete
 * and purge quarantine entries (a contract: scripts rely on it).
 *
 *   mailmoat quarantine list [--since T] [--user U] [--limit N] [--json]
 *   mailmoat quarantine show ID
 *   mailmoat quarantine export ID --to FILE|- [--force]
 *   mailmoat quarantine release ID [--force]
 *   mailmoat quarantine delete ID
 *   mailmoat quarantine purge [--older-than T]
 *
 * Every subcommand takes --config FILE (default /etc/mailmoat/mailmoat.yaml)
 * to find quarantine.dir, quarantine.index and quarantine.release. T is an
 * RFC 3339 time, a date YYYY-MM-DD (midnight UTC) or an age (30d, 12h, 2w,
 * 90m, 45s). Exit codes: 0 ok, 1 error (one line on stderr), 2 usage.
 *
 * list syncs the index (policy/qindex.c) and prints entries newest first
 * (received_at, then id, descending): with --json a JSON array of objects,
 * each carrying every member of ID.json plus "eml" (ID.eml present),
 * "released_at" and "released_by" (null unless released); otherwise a
 * table ID, RECEIVED (UTC), USER, VERDICT (the signature for infected
 * messages, "error: reason" for scan errors, "(released)" in front once
 * released), SIZE (bytes), FROM, SUBJECT, with long cells cut ("~") to keep
 * the columns aligned (display widths of East Asian text counted).
 *
 * release delivers ID.eml, after checking it against the sha256 of its
 * ID.json, to the entry's user: quarantine.release.method imap appends it
 * to `mailbox` over imap_url, logged in as imap_user (%u = the entry's
 * user) with the first line of password_file; smtp sends it through
 * smtp_url from smtp_from to the user (user@smtp_domain when the user has
 * no '@'), with AUTH as imap_user when password_file is set. Then the
 * message's sha256 goes into the index's released table, so the daemon
 * does not quarantine it again. The entry stays until deleted or purged;
 * releasing it twice, or releasing a truncated entry (only its first
 * max_message_size bytes were kept), needs --force.
 *
 * SECURITY: the password is read from its file only, never printed, never
 * put in a URL, and wiped after use; URLs with credentials in them are
 * refused. imap:// and smtp:// to another host than loopback require
 * STARTTLS; certificates are verified (quarantine.release.ca or the system
 * store). Text from mail (subjects, senders, headers) is printed with
 * control and bidirectional-override characters replaced, so a message
 * cannot drive the administrator's terminal. A user name from the network
 * with control characters, spaces or angle brackets is never put into an
 * SMTP or IMAP command. IDs are checked (qindex_valid_id) before they
 * become file names.
 */
#include "proxy/admin.h"

#include "policy/config.h"
#include "policy/qindex.h"
#include "policy/quarantine.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <locale.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#define ADM_DEFAULT_CONFIG "/etc/mailmoat/mailmoat.yaml"
#define ADM_HEADERS_MAX (256 * 1024) /* what show reads of a message's header */
#define ADM_LINE_MAX 998             /* RFC 5322 2.1.1 */
#define ADM_PASSWORD_MAX 1024
#define ADM_COPY_CHUNK 65536

enum adm_opt {
	ADM_O_CONFIG = 1 << 0,
	ADM_O_SINCE = 1 << 1,
	ADM_O_USER = 1 << 2,
	ADM_O_JSON = 1 << 3,
	ADM_O_TO = 1 << 4,
	ADM_O_FORCE = 1 << 5,
	ADM_O_OLDER = 1 << 6,
	ADM_O_LIMIT = 1 << 7,
};

static const struct {
	const char *name;
	enum adm_opt bit;
	int value; /* takes a value */
} adm_opts[] = {
    {"config", ADM_O_CONFIG, 1},    {"since", ADM_O_SINCE, 1}, {"user", ADM_O_USER, 1},
    {"json", ADM_O_JSON, 0},        {"to", ADM_O_TO, 1},       {"force", ADM_O_FORCE, 0},
    {"older-than", ADM_O_OLDER, 1}, {"limit", ADM_O_LIMIT, 1},
};

/* One invocation: the parsed command line and what it opened. */
struct adm {
	const char *cmd;
	unsigned given; /* adm_opt bits seen */
	const char *config_path, *since, *user, *to, *older_than, *limit;
	const char *id; /* the one positional argument, when the command takes it */
	struct config *cfg;
	struct qindex *ix;
};

struct adm_cmd {
	const char *name;
	int (*run)(struct adm *a);
	unsigned opts; /* allowed besides --config */
	int takes_id;
};

/* ---------------------------------------------------------------- output */

static int adm_fail(struct adm *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "mailmoat quarantine CMD: reason" on stderr; returns exit code 1. */
static int adm_fail(struct adm *a, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "mailmoat quarantine %s: ", a->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

static void adm_warn(void *arg, const char *msg)
{
	const struct adm *a = arg;

	fflush(stdout);
	fprintf(stderr, "mailmoat quarantine %s: warning: %s\n", a->cmd, msg);
}

static void adm_usage(FILE *f)
{
	fprintf(f,
	        "usage: mailmoat quarantine list [--since T] [--user U] [--limit N] "
	        "[--json]\n"
	        "       mailmoat quarantine show ID\n"
	        "       mailmoat quarantine export ID --to FILE|- [--force]\n"
	        "       mailmoat quarantine release ID [--force]\n"
	        "       mailmoat quarantine delete ID\n"
	        "       mailmoat quarantine purge [--older-than T]\n"
	        "every command takes --config FILE (default " ADM_DEFAULT_CONFIG ")\n"
	        "T: 2026-11-29T06:43:45Z (RFC 3339), 2026-11-29 (midnight UTC), or an\n"
	        "   age: 45s, 90m, 12h, 30d, 2w\n");
}

/*
 * Decodes one UTF-8 sequence at s (len bytes left) into *cp; returns its
 * length, or 0 when invalid.
 */
static size_t adm_utf8(const unsigned char *s, size_t len, unsigned *cp)
{
	size_t n;
	unsigned v, min;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		v = s[0] & 0x1f;
		min = 0x80;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		v = s[0] & 0x0f;
		min = 0x800;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		v = s[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

/*
 * SECURITY: characters that must not reach a terminal from mail text: C0
 * and C1 controls, DEL, the line and paragraph separators, and the
 * bidirectional marks, overrides and isolates (which can make a listing
 * read differently from what it is).
 */
static int adm_unsafe_cp(unsigned cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || (cp >= 0x202a && cp <= 0x202e) ||
	       (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f ||
	       cp == 0x2028 || cp == 0x2029;
}

static int adm_cp_width(unsigned cp)
{
	int w = wcwidth((wchar_t)cp);

	return w < 0 ? 1 : w;
}

/*
 * Prints s[0..len) for a terminal (unsafe characters and invalid UTF-8 as
 * '?') in at most width display columns, cut with '~' when longer, padded
 * with spaces to width when pad. width < 0: no limit, no padding.
 */
static void adm_put_span(FILE *f, const char *s, size_t len, int width, int pad)
{
	const unsigned char *p = (const unsigned char *)s;
	int used = 0;

	while (len > 0) {
		unsigned cp;
		size_t n = adm_utf8(p, len, &cp);
		int w;

		if (n == 0 || adm_unsafe_cp(cp)) {
			cp = '?';
			n = n == 0 ? 1 : n;
		}
		w = adm_cp_width(cp);
		if (width >= 0 && used + w > width - (len > n ? 1 : 0)) {
			/* this one does not fit with room left for the cut mark */
			if (used < width) {
				fputc('~', f);
				used++;
			}
			break;
		}
		if (cp < 0x80) /* ASCII, '?' for a replaced character included */
			fputc((int)cp, f);
		else
			fwrite(p, 1, n, f);
		used += w;
		p += n;
		len -= n;
	}
	if (pad && width >= 0) {
		for (; used < width; used++)
			fputc(' ', f);
	}
}

/* adm_put_span() for the string s (NULL: empty). */
static void adm_put_cell(FILE *f, const char *s, int width, int pad)
{
	if (s == NULL)
		s = "";
	adm_put_span(f, s, strlen(s), width, pad);
}

/* Writes one entry as a JSON object: compact on one line, or pretty. */
static void adm_entry_json(FILE *f, const struct qindex_entry *e, int pretty)
{
	const char *sep = pretty ? ",\n  " : ", ";
	const struct {
		const char *key, *val;
	} strs1[] = {{"id", e->id},
	             {"received_at", e->received_at},
	             {"protocol", e->protocol},
	             {"user", e->user},
	             {"upstream", e->upstream},
	             {"signature", e->signature},
	             {"verdict", e->verdict}},
	  strs2[] = {{"sha256", e->sha256},
	             {"from", e->from},
	             {"subject", e->subject},
	             {"session", e->session},
	             {"message", e->message}};
	size_t i;

	fputs(pretty ? "{\n  " : "{", f);
	for (i = 0; i < sizeof(strs1) / sizeof(strs1[0]); i++) {
		if (i > 0)
			fputs(sep, f);
		fprintf(f, "\"%s\": ", strs1[i].key);
		qindex_json_str(f, strs1[i].val);
	}
	fputs(sep, f);
	if (e->size >= 0)
		fprintf(f, "\"size\": %" PRId64, e->size);
	else
		fputs("\"size\": null", f);
	fputs(sep, f);
	fprintf(f, "\"truncated\": %s",
	        e->truncated < 0 ? "null"
	        : e->truncated   ? "true"
	                         : "false");
	for (i = 0; i < sizeof(strs2) / sizeof(strs2[0]); i++) {
		fputs(sep, f);
		fprintf(f, "\"%s\": ", strs2[i].key);
		qindex_json_str(f, strs2[i].val);
	}
	if (e->extra != NULL && e->extra[0] != '\0') {
		fputs(sep, f);
		fputs(e->extra, f); /* members ID.json had beyond ours, as read */
	}
	fputs(sep, f);
	fprintf(f, "\"eml\": %s", e->eml ? "true" : "false");
	fputs(sep, f);
	fputs("\"released_at\": ", f);
	qindex_json_str(f, e->released_at);
	fputs(sep, f);
	fputs("\"released_by\": ", f);
	qindex_json_str(f, e->released_by);
	fputs(pretty ? "\n}\n" : "}", f);
}

/* ----------------------------------------------------------- the index */

/* Opens and syncs the index; prints warnings. Returns 0 or exit code 1. */
static int adm_open_index(struct adm *a, int sync)
{
	struct qindex_sync_stats st;
	char err[512];

	a->ix = qindex_open(a->cfg, 0, err, sizeof(err));
	if (a->ix == NULL)
		return adm_fail(a, "%s", err);
	qindex_set_warn(a->ix, adm_warn, a);
	if (!sync)
		return 0;
	if (qindex_sync(a->ix, &st, err, sizeof(err)) < 0)
		return adm_fail(a, "%s", err);
	if (st.skipped > st.warned) {
		fflush(stdout);
		fprintf(
		    stderr,
		    "mailmoat quarantine %s: warning: %u unreadable ID.json file(s) in %s"
		    " not listed\n",
		    a->cmd, st.skipped, qindex_dir(a->ix));
	}
	return 0;
}

/* Copies the entry the callback sees (only the fields release needs). */
struct adm_found {
	int found;
	char user[CFG_HOST_MAX];
	char sha256[65];
	char released_at[40];
	char released_by[128];
	int eml;
	int truncated;
	int64_t size;
	char *json; /* show: the pretty JSON */
	size_t json_len;
};

static int adm_found_cb(void *arg, const struct qindex_entry *e)
{
	struct adm_found *fd = arg;
	FILE *f;

	fd->found = 1;
	snprintf(fd->user, sizeof(fd->user), "%s", e->user != NULL ? e->user : "");
	snprintf(fd->sha256, sizeof(fd->sha256), "%s",
	         e->sha256 != NULL ? e->sha256 : "");
	snprintf(fd->released_at, sizeof(fd->released_at), "%s",
	         e->released_at != NULL ? e->released_at : "");
	snprintf(fd->released_by, sizeof(fd->released_by), "%s",
	         e->released_by != NULL ? e->released_by : "");
	fd->eml = e->eml;
	fd->truncated = e->truncated == 1;
	fd->size = e->size;
	f = open_memstream(&fd->json, &fd->json_len);
	if (f != NULL) {
		adm_entry_json(f, e, 1);
		fclose(f);
	}
	return 1;
}

/* Looks id up in the synced index. Returns 0 found, or exit code 1. */
static int adm_find(struct adm *a, struct adm_found *fd)
{
	struct qindex_filter flt;
	char err[512];

	memset(fd, 0, sizeof(*fd));
	qindex_filter_init(&flt);
	flt.id = a->id;
	if (qindex_list(a->ix, &flt, adm_found_cb, fd, err, sizeof(err)) < 0)
		return adm_fail(a, "%s", err);
	if (!fd->found)
		return adm_fail(a, "%s: no such quarantine entry", a->id);
	return 0;
}

/* Opens DIR/ID.eml for reading. Returns the fd, or -1 with errno. */
static int adm_open_eml(struct adm *a, struct stat *st)
{
	char path[PATH_MAX];
	int fd;

	if (snprintf(path, sizeof(path), "%s/%s.eml", a->cfg->quarantine_dir, a->id) >=
	    (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	return fd;
}

/* ------------------------------------------------------------------ list */

struct adm_list {
	int json;
	unsigned long n;
};

static int adm_list_json_cb(void *arg, const struct qindex_entry *e)
{
	struct adm_list *l = arg;

	if (l->n++ > 0)
		fputs(",\n", stdout);
	adm_entry_json(stdout, e, 0);
	return 0;
}

#define ADM_W_ID 25
#define ADM_W_TIME 20
#define ADM_W_USER 20
#define ADM_W_VERDICT 32
#define ADM_W_SIZE 10
#define ADM_W_FROM 28
#define ADM_W_SUBJECT 60

static int adm_list_table_cb(void *arg, const struct qindex_entry *e)
{
	struct adm_list *l = arg;
	char verdict[512];

	l->n++;
	if (e->verdict != NULL && strcmp(e->verdict, "infected") != 0)
		snprintf(verdict, sizeof(verdict), "%s%s: %s",
		         e->released_at != NULL ? "(released) " : "", e->verdict,
		         e->signature != NULL ? e->signature : "");
	else
		snprintf(verdict, sizeof(verdict), "%s%s",
		         e->released_at != NULL ? "(released) " : "",
		         e->signature != NULL ? e->signature : "-");
	adm_put_cell(stdout, e->id, ADM_W_ID, 1);
	fputs("  ", stdout);
	adm_put_cell(stdout, e->received_at, ADM_W_TIME, 1);
	fputs("  ", stdout);
	adm_put_cell(stdout, e->user != NULL && e->user[0] != '\0' ? e->user : "-",
	             ADM_W_USER, 1);
	fputs("  ", stdout);
	adm_put_cell(stdout, verdict, ADM_W_VERDICT, 1);
	if (e->size >= 0)
		printf("  %*" PRId64 "  ", ADM_W_SIZE, e->size);
	else
		printf("  %*s  ", ADM_W_SIZE, "-");
	adm_put_cell(stdout, e->from != NULL ? e->from : "-", ADM_W_FROM, 1);
	fputs("  ", stdout);
	adm_put_cell(stdout, e->subject != NULL ? e->subject : "-", ADM_W_SUBJECT, 0);
	fputc('\n', stdout);
	return 0;
}

static int adm_cmd_list(struct adm *a)
{
	struct qindex_filter flt;
	struct adm_list l = {0};
	char err[512];
	int r;

	qindex_filter_init(&flt);
	if (a->since != NULL &&
	    qindex_parse_time(a->since, time(NULL), &flt.since_s) < 0) {
		fprintf(stderr, "mailmoat quarantine list: --since %s: not a time\n",
		        a->since);
		return 2;
	}
	if (a->limit != NULL) {
		char *end;

		errno = 0;
		flt.limit = strtoull(a->limit, &end, 10);
		if (errno != 0 || end == a->limit || *end != '\0' || a->limit[0] == '-') {
			fprintf(stderr,
			        "mailmoat quarantine list: --limit %s: not a count\n",
			        a->limit);
			return 2;
		}
	}
	flt.user = a->user;
	l.json = (a->given & ADM_O_JSON) != 0;
	if (adm_open_index(a, 1) != 0)
		return 1;
	if (l.json) {
		fputs("[", stdout);
		fputs("\n", stdout);
		r = qindex_list(a->ix, &flt, adm_list_json_cb, &l, err, sizeof(err));
		fputs(l.n > 0 ? "\n]\n" : "]\n", stdout);
	} else {
		setlocale(LC_CTYPE, "C.UTF-8"); /* wcwidth for East Asian widths */
		adm_put_cell(stdout, "ID", ADM_W_ID, 1);
		fputs("  ", stdout);
		adm_put_cell(stdout, "RECEIVED", ADM_W_TIME, 1);
		fputs("  ", stdout);
		adm_put_cell(stdout, "USER", ADM_W_USER, 1);
		fputs("  ", stdout);
		adm_put_cell(stdout, "VERDICT", ADM_W_VERDICT, 1);
		printf("  %*s  ", ADM_W_SIZE, "SIZE");
		adm_put_cell(stdout, "FROM", ADM_W_FROM, 1);
		fputs("  SUBJECT\n", stdout);
		r = qindex_list(a->ix, &flt, adm_list_table_cb, &l, err, sizeof(err));
	}
	if (r < 0)
		return adm_fail(a, "%s", err);
	if (fflush(stdout) != 0 || ferror(stdout))
		return adm_fail(a, "write: %s", strerror(errno));
	return 0;
}

/* ------------------------------------------------------------------ show */

/* The header fields show prints, in the message's order. */
static const char *const adm_show_fields[] = {
    "Return-Path", "Received", "Date",         "From",         "Sender",
    "Reply-To",    "To",       "Cc",           "Subject",      "Message-ID",
    "In-Reply-To", "X-Mailer", "MIME-Version", "Content-Type",
};

static int adm_show_wanted(const char *name, size_t len, int *received_seen)
{
	for (size_t i = 0; i < sizeof(adm_show_fields) / sizeof(adm_show_fields[0]);
	     i++) {
		if (strlen(adm_show_fields[i]) == len &&
		    strncasecmp(adm_show_fields[i], name, len) == 0) {
			if (i == 1 && (*received_seen)++ > 0)
				return 0; /* the last hop only */
			return 1;
		}
	}
	return 0;
}

/*
 * Prints the main header fields of the message in buf (its first len
 * bytes), unfolded (RFC 5322 2.2.3), each cut at ADM_LINE_MAX columns.
 */
static void adm_print_headers(FILE *f, const char *buf, size_t len)
{
	size_t pos = 0;
	int received_seen = 0;

	while (pos < len) {
		size_t start = pos, end, colon;
		char *field;
		size_t flen = 0;

		/* one field: a line and its continuation lines */
		for (;;) {
			const char *nl = memchr(buf + pos, '\n', len - pos);

			pos = nl != NULL ? (size_t)(nl - buf) + 1 : len;
			if (pos >= len || (buf[pos] != ' ' && buf[pos] != '\t'))
				break;
		}
		end = pos;
		if (end - start <= 2 && (buf[start] == '\r' || buf[start] == '\n'))
			break; /* the empty line: end of the header */
		colon = start;
		while (colon < end && buf[colon] != ':' && buf[colon] != '\n')
			colon++;
		if (colon == end || buf[colon] != ':' ||
		    !adm_show_wanted(buf + start, colon - start, &received_seen))
			continue;
		field = malloc(end - start + 1);
		if (field == NULL)
			return;
		for (size_t i = start; i < end; i++) {
			if (buf[i] == '\r' || buf[i] == '\n')
				continue; /* unfold: the WSP after CRLF stays */
			field[flen++] = buf[i];
		}
		adm_put_span(f, field, flen, ADM_LINE_MAX, 0);
		fputc('\n', f);
		free(field);
	}
}

static int adm_cmd_show(struct adm *a)
{
	struct adm_found fd;
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int efd;

	if (adm_open_index(a, 1) != 0 || adm_find(a, &fd) != 0)
		return 1;
	setlocale(LC_CTYPE, "C.UTF-8");
	fwrite(fd.json, 1, fd.json_len, stdout);
	free(fd.json);
	efd = adm_open_eml(a, &st);
	if (efd < 0) {
		fflush(stdout);
		fprintf(stderr, "mailmoat quarantine show: %s.eml: %s\n", a->id,
		        strerror(errno));
		return 1;
	}
	buf = malloc(ADM_HEADERS_MAX);
	if (buf == NULL) {
		close(efd);
		return adm_fail(a, "out of memory");
	}
	while (got < ADM_HEADERS_MAX) {
		ssize_t n = read(efd, buf + got, ADM_HEADERS_MAX - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memmem(buf, got, "\n\r\n", 3) != NULL ||
		    memmem(buf, got, "\n\n", 2) != NULL)
			break;
	}
	close(efd);
	printf("\n--- headers of %s.eml (%jd bytes) ---\n", a->id, (intmax_t)st.st_size);
	adm_print_headers(stdout, buf, got);
	free(buf);
	if (fflush(stdout) != 0)
		return adm_fail(a, "write: %s", strerror(errno));
	return 0;
}

/* ---------------------------------------------------------------- export */

static int adm_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Copies src into dst; returns the byte count, or -1 with errno. */
static int64_t adm_copy(int src, int dst)
{
	char *buf = malloc(ADM_COPY_CHUNK);
	int64_t total = 0;

	if (buf == NULL)
		return -1;
	for (;;) {
		ssize_t n = read(src, buf, ADM_COPY_CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return -1;
		}
		if (n == 0)
			break;
		if (adm_write_all(dst, buf, (size_t)n) < 0) {
			free(buf);
			return -1;
		}
		total += n;
	}
	free(buf);
	return total;
}

/*
 * Writes the .eml to a temporary file next to FILE (mode 0600), fsyncs it,
 * then puts it in place: without --force only if FILE does not exist
 * (RENAME_NOREPLACE, or link() where that is not supported), so an
 * existing file is never touched; with --force by rename(). Either way
 * FILE is never seen half written.
 */
static int adm_cmd_export(struct adm *a)
{
	char tmp[PATH_MAX], dircopy[PATH_MAX];
	struct stat st;
	int64_t n;
	int src, dst, r;

	if (a->to == NULL) {
		fprintf(stderr, "mailmoat quarantine export: --to FILE is required\n");
		return 2;
	}
	src = adm_open_eml(a, &st);
	if (src < 0)
		return adm_fail(a, "%s.eml: %s", a->id, strerror(errno));
	if (strcmp(a->to, "-") == 0) {
		n = adm_copy(src, STDOUT_FILENO);
		close(src);
		if (n < 0)
			return adm_fail(a, "write: %s", strerror(errno));
		return 0;
	}
	if (!(a->given & ADM_O_FORCE) &&
	    faccessat(AT_FDCWD, a->to, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
		close(src);
		return adm_fail(a, "%s exists (--force to overwrite)", a->to);
	}
	snprintf(dircopy, sizeof(dircopy), "%s", a->to);
	if (snprintf(tmp, sizeof(tmp), "%s/.mailmoat-export-XXXXXX", dirname(dircopy)) >=
	    (int)sizeof(tmp)) {
		close(src);
		return adm_fail(a, "%s: path too long", a->to);
	}
	dst = mkstemp(tmp); /* mode 0600 */
	if (dst < 0) {
		r = errno;
		close(src);
		return adm_fail(a, "%s: %s", a->to, strerror(r));
	}
	n = adm_copy(src, dst);
	r = n < 0 ? errno : 0;
	close(src);
	if (r == 0 && (fchmod(dst, 0600) != 0 || fsync(dst) != 0))
		r = errno;
	if (close(dst) != 0 && r == 0)
		r = errno;
	if (r == 0) {
		if (a->given & ADM_O_FORCE) {
			if (rename(tmp, a->to) != 0)
				r = errno;
		} else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, a->to, RENAME_NOREPLACE) !=
		           0) {
			r = errno;
			if (r == EINVAL || r == ENOSYS || r == ENOTSUP)
				r = link(tmp, a->to) == 0 ? 0 : errno;
		}
	}
	unlink(tmp); /* after link(), or on failure; gone after a rename */
	if (r == EEXIST)
		return adm_fail(a, "%s exists (--force to overwrite)", a->to);
	if (r != 0)
		return adm_fail(a, "%s: %s", a->to, strerror(r));
	if (n != (int64_t)st.st_size)
		return adm_fail(a, "%s.eml changed while it was copied", a->id);
	printf("%s: exported %" PRId64 " bytes to %s\n", a->id, n, a->to);
	return 0;
}

/* --------------------------------------------------------------- release */

/* The SHA-256 of everything fd holds from its start, as hex. */
static int adm_sha256_fd(int fd, char hex[65])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char *buf = malloc(ADM_COPY_CHUNK);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	int r = -1;

	if (ctx == NULL || buf == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		goto out;
	if (lseek(fd, 0, SEEK_SET) != 0)
		goto out;
	for (;;) {
		ssize_t n = read(fd, buf, ADM_COPY_CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto out;
		if (n == 0)
			break;
		if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1)
			goto out;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
		goto out;
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	hex[64] = '\0';
	r = lseek(fd, 0, SEEK_SET) == 0 ? 0 : -1;
out:
	free(buf);
	EVP_MD_CTX_free(ctx);
	return r;
}

/*
 * SECURITY: a user name from the network goes into SMTP and IMAP commands
 * only without controls, spaces, quotes, backslashes and angle brackets.
 */
static int adm_safe_address(const char *s)
{
	if (s == NULL || *s == '\0')
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>' || *p == '"' ||
		    *p == '\\')
			return 0;
	}
	return 1;
}

/* imap_user with %u replaced by user ("%%" is '%'). Returns 0 or -1. */
static int adm_expand_user(const char *tmpl, const char *user, char *out, size_t outlen)
{
	size_t o = 0;

	for (const char *p = tmpl; *p != '\0'; p++) {
		const char *add = NULL;
		char one[2] = {*p, '\0'};

		if (p[0] == '%' && p[1] == 'u') {
			add = user;
			p++;
		} else if (p[0] == '%' && p[1] == '%') {
			add = "%";
			p++;
		} else {
			add = one;
		}
		if (o + strlen(add) >= outlen)
			return -1;
		memcpy(out + o, add, strlen(add));
		o += strlen(add);
	}
	out[o] = '\0';
	return 0;
}

int admin_read_password(const char *path, char *pw, size_t pwlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t got = 0;

	if (fd < 0)
		return -errno;
	while (got < pwlen - 1) {
		ssize_t n = read(fd, pw + got, pwlen - 1 - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	pw[got] = '\0';
	pw[strcspn(pw, "\r\n")] = '\0';
	return pw[0] != '\0' ? 0 : -ENODATA;
}

struct adm_upload {
	int fd;
	int64_t sent;
};

static size_t adm_curl_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct adm_upload *u = arg;
	ssize_t n;

	do
		n = read(u->fd, buf, size * nitems);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return CURL_READFUNC_ABORT;
	u->sent += n;
	return (size_t)n;
}

static int adm_is_loopback(const char *host)
{
	return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
	       strcmp(host, "::1") == 0 || strcmp(host, "[::1]") == 0;
}

/*
 * Checks url (scheme plain or plain+"s", no credentials in it) and sets it
 * on the handle, with the mailbox as its path when mailbox is not NULL.
 * Fills shown (scheme://host[:port], for messages). Returns 0 or -1 with
 * why.
 */
static int adm_curl_url(CURL *c, const char *url, const char *plain, const char *mailbox,
                        char *shown, size_t shownlen, char *why, size_t whylen)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL, *full = NULL;
	int rc = -1, tls;

	if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		snprintf(why, whylen, "%s: not a URL", url);
		goto out;
	}
	tls = strncmp(scheme, plain, strlen(plain)) == 0 &&
	      strcmp(scheme + strlen(plain), "s") == 0;
	if (strcmp(scheme, plain) != 0 && !tls) {
		snprintf(why, whylen, "URL scheme %s: want %s or %ss", scheme, plain,
		         plain);
		goto out;
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
		snprintf(why, whylen,
		         "credentials in the URL: use imap_user and password_file");
		goto out;
	}
	curl_url_get(u, CURLUPART_PORT, &port, 0);
	snprintf(shown, shownlen, "%s://%s%s%s", scheme, host, port != NULL ? ":" : "",
	         port != NULL ? port : "");
	if (mailbox != NULL) {
		char path[CFG_HOST_MAX + 2];

		snprintf(path, sizeof(path), "/%s", mailbox);
		if (curl_url_set(u, CURLUPART_PATH, path, CURLU_URLENCODE) != CURLUE_OK ||
		    curl_url_set(u, CURLUPART_QUERY, NULL, 0) != CURLUE_OK ||
		    curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) != CURLUE_OK) {
			snprintf(why, whylen, "mailbox %s: cannot be put in a URL",
			         mailbox);
			goto out;
		}
	}
	if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK) {
		snprintf(why, whylen, "%s: not a URL", url);
		goto out;
	}
	curl_easy_setopt(c, CURLOPT_URL, full);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR,
	                 strcmp(plain, "imap") == 0 ? "imap,imaps" : "smtp,smtps");
	/* SECURITY: STARTTLS is required unless the server is on loopback */
	if (!tls)
		curl_easy_setopt(
		    c, CURLOPT_USE_SSL,
		    (long)(adm_is_loopback(host) ? CURLUSESSL_TRY : CURLUSESSL_ALL));
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(user);
	curl_free(full);
	curl_url_cleanup(u);
	return rc;
}

/* The name release records as "by": the admin behind sudo, or the user. */
static void adm_by(char *by, size_t bylen, const char *method)
{
	const char *who = getenv("SUDO_USER");
	struct passwd *pw;

	if (who == NULL || *who == '\0') {
		pw = getpwuid(geteuid());
		who = pw != NULL ? pw->pw_name : "?";
	}
	snprintf(by, bylen, "%s via %s", who, method);
}

static int adm_cmd_release(struct adm *a)
{
	const struct config *cfg;
	struct adm_found fd;
	struct adm_upload up = {.fd = -1};
	struct curl_slist *rcpts = NULL;
	struct stat st;
	char hex[65], login[CFG_HOST_MAX * 2], rcpt[CFG_HOST_MAX * 2 + 4];
	char shown[CFG_PATH_MAX], why[512], by[200], cerr[CURL_ERROR_SIZE] = "";
	char err[512];
	char *pw = NULL;
	int smtp, rc = 1, pr, curl_inited = 0;
	CURL *c = NULL;
	CURLcode cc;

	if (adm_open_index(a, 1) != 0 || adm_find(a, &fd) != 0)
		return 1;
	free(fd.json);
	cfg = a->cfg;
	smtp = strcmp(cfg->release_method, "smtp") == 0;
	if (fd.released_at[0] != '\0' && !(a->given & ADM_O_FORCE))
		return adm_fail(a,
		                "%s was released at %s by %s (--force to deliver again)",
		                a->id, fd.released_at, fd.released_by);
	if (fd.truncated && !(a->given & ADM_O_FORCE))
		return adm_fail(
		    a,
		    "%s is truncated (larger than spool.max_message_size when"
		    " captured): not released (--force to deliver the part kept)",
		    a->id);
	if (!adm_safe_address(fd.user))
		return adm_fail(
		    a, "%s: the entry's user is empty or not usable as an address",
		    a->id);
	up.fd = adm_open_eml(a, &st);
	if (up.fd < 0)
		return adm_fail(a, "%s.eml: %s", a->id, strerror(errno));
	if (adm_sha256_fd(up.fd, hex) < 0) {
		rc = adm_fail(a, "%s.eml: read: %s", a->id, strerror(errno));
		goto out;
	}
	if (fd.sha256[0] != '\0' && strcmp(fd.sha256, hex) != 0) {
		rc = adm_fail(a,
		              "%s.eml does not match the sha256 of %s.json: not released",
		              a->id, a->id);
		goto out;
	}

	/* the login: imap_user with %u, for IMAP always, for SMTP AUTH */
	login[0] = '\0';
	if ((!smtp || cfg->release_password_file[0] != '\0')) {
		if (cfg->release_imap_user[0] == '\0') {
			rc = adm_fail(a, "quarantine.release.imap_user is not set");
			goto out;
		}
		if (adm_expand_user(cfg->release_imap_user, fd.user, login,
		                    sizeof(login)) < 0 ||
		    !adm_safe_address(login)) {
			rc = adm_fail(
			    a, "quarantine.release.imap_user: unusable login for %s",
			    a->id);
			goto out;
		}
		if (cfg->release_password_file[0] == '\0') {
			rc = adm_fail(a, "quarantine.release.password_file is not set");
			goto out;
		}
		pw = malloc(ADM_PASSWORD_MAX);
		if (pw == NULL) {
			rc = adm_fail(a, "out of memory");
			goto out;
		}
		pr =
		    admin_read_password(cfg->release_password_file, pw, ADM_PASSWORD_MAX);
		if (pr < 0) {
			rc =
			    adm_fail(a, "quarantine.release.password_file %s: %s",
			             cfg->release_password_file,
			             pr == -ENODATA ? "empty first line" : strerror(-pr));
			goto out;
		}
	}
	if (smtp) {
		/* the user passed adm_safe_address() above */
		if (strchr(fd.user, '@') != NULL) {
			snprintf(rcpt, sizeof(rcpt), "<%s>", fd.user);
		} else if (cfg->release_smtp_domain[0] == '\0') {
			rc = adm_fail(
			    a,
			    "user %s has no domain and quarantine.release.smtp_domain"
			    " is not set",
			    fd.user);
			goto out;
		} else if (!adm_safe_address(cfg->release_smtp_domain) ||
		           strchr(cfg->release_smtp_domain, '@') != NULL) {
			rc = adm_fail(a, "quarantine.release.smtp_domain: not a domain");
			goto out;
		} else {
			snprintf(rcpt, sizeof(rcpt), "<%s@%s>", fd.user,
			         cfg->release_smtp_domain);
		}
	}

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		rc = adm_fail(a, "libcurl: cannot initialize");
		goto out;
	}
	curl_inited = 1;
	c = curl_easy_init();
	if (c == NULL) {
		rc = adm_fail(a, "libcurl: cannot initialize");
		goto out;
	}
	why[0] = '\0';
	if (smtp) {
		char from[CFG_HOST_MAX + 2];

		if (cfg->release_smtp_url[0] == '\0') {
			rc = adm_fail(a, "quarantine.release.smtp_url is not set");
			goto out;
		}
		if (adm_curl_url(c, cfg->release_smtp_url, "smtp", NULL, shown,
		                 sizeof(shown), why, sizeof(why)) < 0) {
			rc = adm_fail(a, "quarantine.release.smtp_url: %s", why);
			goto out;
		}
		if (cfg->release_smtp_from[0] != '\0' &&
		    !adm_safe_address(cfg->release_smtp_from)) {
			rc = adm_fail(a, "quarantine.release.smtp_from: not an address");
			goto out;
		}
		snprintf(from, sizeof(from), "<%s>", cfg->release_smtp_from);
		curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
		rcpts = curl_slist_append(NULL, rcpt);
		if (rcpts == NULL) {
			rc = adm_fail(a, "out of memory");
			goto out;
		}
		curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts);
	} else {
		if (cfg->release_imap_url[0] == '\0') {
			rc = adm_fail(a, "quarantine.release.imap_url is not set");
			goto out;
		}
		if (adm_curl_url(c, cfg->release_imap_url, "imap", cfg->release_mailbox,
		                 shown, sizeof(shown), why, sizeof(why)) < 0) {
			rc = adm_fail(a, "quarantine.release.imap_url: %s", why);
			goto out;
		}
	}
	if (login[0] != '\0') {
		curl_easy_setopt(c, CURLOPT_USERNAME, login);
		curl_easy_setopt(c, CURLOPT_PASSWORD, pw);
	}
	if (cfg->release_ca[0] != '\0')
		curl_easy_setopt(c, CURLOPT_CAINFO, cfg->release_ca);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)st.st_size);
	curl_easy_setopt(c, CURLOPT_READFUNCTION, adm_curl_read);
	curl_easy_setopt(c, CURLOPT_READDATA, &up);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 120L);
	cc = curl_easy_perform(c);
	if (pw != NULL)
		explicit_bzero(pw, ADM_PASSWORD_MAX);
	if (cc != CURLE_OK) {
		rc = adm_fail(a, "%s: delivery through %s failed: %s", a->id, shown,
		              cerr[0] != '\0' ? cerr : curl_easy_strerror(cc));
		goto out;
	}
	if (up.sent != (int64_t)st.st_size) {
		rc = adm_fail(a, "%s.eml changed while it was sent", a->id);
		goto out;
	}
	adm_by(by, sizeof(by), smtp ? "smtp" : "imap");
	if (qindex_mark_released(a->ix, fd.sha256[0] != '\0' ? fd.sha256 : hex, a->id, by,
	                         err, sizeof(err)) < 0) {
		rc = adm_fail(a, "%s delivered, but not remembered as released: %s",
		              a->id, err);
		goto out;
	}
	if (smtp)
		printf("%s: released to %s through %s\n", a->id, rcpt, shown);
	else
		printf("%s: released to %s (%s at %s)\n", a->id, fd.user,
		       cfg->release_mailbox, shown);
	rc = 0;
out:
	if (pw != NULL) {
		explicit_bzero(pw, ADM_PASSWORD_MAX);
		free(pw);
	}
	curl_slist_free_all(rcpts);
	if (c != NULL)
		curl_easy_cleanup(c);
	if (curl_inited)
		curl_global_cleanup();
	if (up.fd >= 0)
		close(up.fd);
	return rc;
}

/* -------------------------------------------------------- delete & purge */

static int adm_cmd_delete(struct adm *a)
{
	char err[512];
	int r;

	if (adm_open_index(a, 0) != 0)
		return 1;
	r = qindex_delete(a->ix, a->id, err, sizeof(err));
	if (r < 0)
		return adm_fail(a, "%s", err);
	if (r == 1)
		return adm_fail(a, "%s: no such quarantine entry", a->id);
	printf("%s: deleted\n", a->id);
	return 0;
}

static int adm_cmd_purge(struct adm *a)
{
	char err[512], stamp[32];
	int64_t cutoff, now = time(NULL);
	unsigned removed = 0;
	struct tm tm;
	time_t t;

	if (a->older_than != NULL) {
		if (qindex_parse_time(a->older_than, now, &cutoff) < 0) {
			fprintf(
			    stderr,
			    "mailmoat quarantine purge: --older-than %s: not a time\n",
			    a->older_than);
			return 2;
		}
	} else if (a->cfg->quarantine_retention_days == 0) {
		printf("quarantine.retention_days is 0 (keep): nothing purged\n");
		return 0;
	} else {
		cutoff = now - (int64_t)a->cfg->quarantine_retention_days * 86400;
	}
	if (adm_open_index(a, 0) != 0)
		return 1;
	if (qindex_purge(a->ix, cutoff, &removed, err, sizeof(err)) < 0)
		return adm_fail(a, "%s (%u entries removed before that)", err, removed);
	t = (time_t)cutoff;
	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	printf("purged %u entr%s received before %s\n", removed,
	       removed == 1 ? "y" : "ies", stamp);
	return 0;
}

/* ---------------------------------------------------------- dispatching */

static const struct adm_cmd adm_cmds[] = {
    {"list", adm_cmd_list, ADM_O_SINCE | ADM_O_USER | ADM_O_JSON | ADM_O_LIMIT, 0},
    {"show", adm_cmd_show, 0, 1},
    {"export", adm_cmd_export, ADM_O_TO | ADM_O_FORCE, 1},
    {"release", adm_cmd_release, ADM_O_FORCE, 1},
    {"delete", adm_cmd_delete, 0, 1},
    {"purge", adm_cmd_purge, ADM_O_OLDER, 0},
};

/* Parses argv[2..] into a; returns 0 or 2 (usage, reason printed). */
static int adm_parse(struct adm *a, const struct adm_cmd *cmd, int argc, char **argv)
{
	int only_pos = 0;

	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i], *val = NULL, *eq;
		size_t nlen;
		size_t k;

		if (only_pos || arg[0] != '-' || strcmp(arg, "-") == 0) {
			if (!cmd->takes_id || a->id != NULL) {
				fprintf(
				    stderr,
				    "mailmoat quarantine %s: unexpected argument %s\n",
				    cmd->name, arg);
				return 2;
			}
			a->id = arg;
			continue;
		}
		if (strcmp(arg, "--") == 0) {
			only_pos = 1;
			continue;
		}
		if (strncmp(arg, "--", 2) != 0)
			goto unknown;
		eq = strchr(arg + 2, '=');
		nlen = eq != NULL ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		for (k = 0; k < sizeof(adm_opts) / sizeof(adm_opts[0]); k++) {
			if (strlen(adm_opts[k].name) == nlen &&
			    strncmp(adm_opts[k].name, arg + 2, nlen) == 0)
				break;
		}
		if (k == sizeof(adm_opts) / sizeof(adm_opts[0]) ||
		    !((cmd->opts | ADM_O_CONFIG) & adm_opts[k].bit))
			goto unknown;
		if (adm_opts[k].value) {
			if (eq != NULL)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else {
				fprintf(stderr,
				        "mailmoat quarantine %s: %s needs a value\n",
				        cmd->name, arg);
				return 2;
			}
		} else if (eq != NULL) {
			fprintf(stderr, "mailmoat quarantine %s: --%s takes no value\n",
			        cmd->name, adm_opts[k].name);
			return 2;
		}
		a->given |= adm_opts[k].bit;
		switch (adm_opts[k].bit) {
		case ADM_O_CONFIG:
			a->config_path = val;
			break;
		case ADM_O_SINCE:
			a->since = val;
			break;
		case ADM_O_USER:
			a->user = val;
			break;
		case ADM_O_TO:
			a->to = val;
			break;
		case ADM_O_OLDER:
			a->older_than = val;
			break;
		case ADM_O_LIMIT:
			a->limit = val;
			break;
		default:
			break;
		}
		continue;
	unknown:
		fprintf(stderr, "mailmoat quarantine %s: unknown option %s\n", cmd->name,
		        arg);
		return 2;
	}
	if (cmd->takes_id && a->id == NULL) {
		fprintf(stderr, "mailmoat quarantine %s: an ID is required\n", cmd->name);
		return 2;
	}
	if (a->id != NULL && !qindex_valid_id(a->id)) {
		fprintf(stderr, "mailmoat quarantine %s: %s is not a quarantine id\n",
		        cmd->name, a->id);
		return 2;
	}
	return 0;
}

/*
 * Loads the configuration; its problems (one "FILE:LINE: reason" line
 * each) are summed up in one line. Returns 0 or exit code 1.
 */
static int adm_load_config(struct adm *a)
{
	char *text = NULL;
	size_t len = 0;
	FILE *errs = open_memstream(&text, &len);
	int r;

	if (errs == NULL)
		return adm_fail(a, "out of memory");
	r = config_load(a->config_path, &a->cfg, errs);
	fclose(errs);
	if (r < 0) {
		size_t first = text != NULL ? strcspn(text, "\n") : 0;
		unsigned more = 0;

		for (size_t i = first + 1; text != NULL && i < len; i++)
			more += text[i] == '\n';
		if (text != NULL)
			text[first] = '\0';
		adm_fail(a, "%s%s", text != NULL && *text != '\0' ? text : a->config_path,
		         more > 0 ? " (and more problems: mailmoat --check-config)" : "");
		free(text);
		return 1;
	}
	free(text);
	return 0;
}

int admin_main(int argc, char **argv)
{
	struct adm a = {0};
	const struct adm_cmd *cmd = NULL;
	int r;

	if (argc < 2) {
		adm_usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		adm_usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(adm_cmds) / sizeof(adm_cmds[0]); i++) {
		if (strcmp(argv[1], adm_cmds[i].name) == 0)
			cmd = &adm_cmds[i];
	}
	if (cmd == NULL) {
		fprintf(stderr, "mailmoat quarantine: unknown command %s\n", argv[1]);
		adm_usage(stderr);
		return 2;
	}
	a.cmd = cmd->name;
	a.config_path = ADM_DEFAULT_CONFIG;
	r = adm_parse(&a, cmd, argc, argv);
	if (r != 0)
		return r;
	if (adm_load_config(&a) != 0)
		return 1;
	r = cmd->run(&a);
	qindex_close(&a.ix);
	config_free(&a.cfg);
	if (fflush(stdout) != 0 && r == 0)
		r = 1;
	return r;
}
