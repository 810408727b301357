/*
 * outbox.c - notice.admin_copy: reports of quarantined messages to an
 * administrator (the layout and threads are described in outbox.h).
 *
 * Three parts:
 *   - the report: rendered and written by the scan job on the pool right
 *     after the original was stored (outbox_quarantined). A small
 *     text/plain UTF-8 message, quoted-printable, its Subject RFC 2047
 *     encoded where it is not ASCII. Only metadata: the original's bytes
 *     are never read here, so no part of it can leak into the report.
 *   - the pass: on the pool, one at a time; sends every report that is
 *     due through libcurl's SMTP (one connection for the pass), removes
 *     what went out, renames what failed for its next attempt (backoff 1
 *     min doubling to 1 h), drops what waited a week.
 *   - the loop's side: a timer and an async handle that only queue the
 *     pass (the loop never touches the disk or the network for this).
 *
 * SECURITY: the SMTP password comes from its file only, stays in memory
 * for one pass, is wiped after it and never logged; credentials in
 * smtp_url are refused; plain smtp:// to a host other than loopback
 * requires STARTTLS; certificates are verified (ca or the system store).
 * Text from mail and logins is cleaned (valid UTF-8, no controls, no
 * bidirectional overrides) and cut before it enters the report, so it can
 * neither add header lines nor fool the reader.
 */
#include "proxy/outbox.h"

#include <assert.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "policy/config.h"
#include "policy/notice.h"
#include "policy/qindex.h"
#include "policy/quarantine.h"
#include "proxy/admin.h"
#include "proxy/log.h"
#include "proxy/msgjob.h"
#include "proxy/server.h"
#include "proxy/spool.h"

#define OB_TEXT_MAX 512     /* octets of one value from the network in the body */
#define OB_USER_MAX 128     /* ... of the user in the Subject */
#define OB_LINE_SOFT 78     /* RFC 5322 2.1.1 */
#define OB_QP_LINE 76       /* RFC 2045 6.7 (5), the "=" of a soft break included */
#define OB_EW_TEXT_MAX 39   /* octets per encoded word: "Subject: " + 64 < 78 */
#define OB_TMP_STALE_S 3600 /* a .tmp file this old was left by a crash */
#define OB_PASSWORD_MAX 1024
#define OB_DEFAULT_CONFIG "/etc/mailmoat/mailmoat.yaml"
#define OB_NAME_MAX (QUAR_ID_MAX + 48) /* "ID+N+DUE.eml" */

/*
 * strerror for the pool threads: the GNU strerror_r (built with
 * _GNU_SOURCE), into a buffer that lives until the end of the caller's
 * statement's block.
 */
#define OB_ERR(e) strerror_r((e), (char[128]){0}, 128)

/* ------------------------------------------------------------- text */

/* the UTF-8 sequence at NUL-terminated s (a NUL ends any sequence) */
static size_t ob_utf8_len(const unsigned char *s)
{
	return quar_utf8_len(s, s + strnlen((const char *)s, 4));
}

/*
 * SECURITY: C1 controls, the line and paragraph separators, and the
 * bidirectional marks, overrides and isolates (which make text read
 * differently from what it is) never reach the report.
 */
static int ob_unsafe_seq(const unsigned char *p, size_t n)
{
	if (n == 2)
		return p[0] == 0xc2 && p[1] < 0xa0;
	if (n == 3 && p[0] == 0xe2 && p[1] == 0x80)
		return p[2] == 0x8e || p[2] == 0x8f || (p[2] >= 0xa8 && p[2] <= 0xae);
	if (n == 3 && p[0] == 0xe2 && p[1] == 0x81)
		return p[2] >= 0xa6 && p[2] <= 0xa9;
	return 0;
}

/*
 * A cleaned copy of s (NULL: "") of at most max octets plus "...": invalid
 * UTF-8 and unsafe characters as U+FFFD, controls (CR, LF, tab...) as
 * spaces, surrounding spaces trimmed. Returns malloc'd text or NULL.
 */
static char *ob_clean(const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
	size_t o = 0, start = 0;
	char *out = malloc(max + 4);

	if (out == NULL)
		return NULL;
	while (*p != '\0') {
		size_t n = ob_utf8_len(p), alen;
		const char *add = (const char *)p;

		if (n == 0) {
			add = "\xef\xbf\xbd";
			alen = 3;
			n = 1;
		} else if (n == 1 && (*p < 0x20 || *p == 0x7f)) {
			add = " ";
			alen = 1;
		} else if (ob_unsafe_seq(p, n)) {
			add = "\xef\xbf\xbd";
			alen = 3;
		} else {
			alen = n;
		}
		if (o + alen > max) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, add, alen);
		o += alen;
		p += n;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
	while (out[start] == ' ')
		start++;
	memmove(out, out + start, o - start + 1);
	return out;
}

/*
 * SECURITY: an address goes into SMTP commands and headers only without
 * controls, spaces, quotes, backslashes, angle brackets, commas and
 * semicolons, with one '@' not at either end.
 */
static int ob_safe_addr(const char *s)
{
	const char *at = strchr(s, '@');

	if (at == NULL || at == s || at[1] == '\0' || strchr(at + 1, '@') != NULL)
		return 0;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p <= 0x20 || *p >= 0x7f || strchr("<>\"\\,;()[]", *p) != NULL)
			return 0;
	}
	return 1;
}

/* ----------------------------------------------------------- Subject */

/* A header being folded: where the text goes and its current column. */
struct ob_hdr {
	FILE *f;
	size_t col;
	int first;
};

/* Adds " token", folding before it when the line would pass 78. */
static void ob_hdr_token(struct ob_hdr *h, const char *t, size_t n)
{
	if (!h->first && h->col + 1 + n > OB_LINE_SOFT) {
		fputs("\r\n", h->f);
		h->col = 0;
	}
	fputc(' ', h->f);
	fwrite(t, 1, n, h->f);
	h->col += 1 + n;
	h->first = 0;
}

/* A word that cannot go out as it is: 8-bit, "=?", or too long for a line. */
static int ob_needs_ew(const char *w, size_t n)
{
	if (n > OB_LINE_SOFT - 8)
		return 1;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)w[i] >= 0x80 ||
		    (w[i] == '=' && i + 1 < n && w[i + 1] == '?'))
			return 1;
	}
	return 0;
}

/*
 * How much of s[0..n) (valid UTF-8) the next B word carries, at most max
 * octets: whole characters (RFC 2047 5(3)) and, unless that is all of s, a
 * multiple of 3 octets so the word needs no base64 padding (GMime decodes
 * adjacent B words as one stream: see notice.c). 0 when no such prefix.
 */
static size_t ob_ew_take(const char *s, size_t n, size_t max)
{
	size_t i = 0, aligned = 0;

	while (i < n) {
		size_t c = ob_utf8_len((const unsigned char *)s + i);

		if (c == 0 || i + c > max)
			break;
		i += c;
		if (i % 3 == 0)
			aligned = i;
	}
	return i == n ? n : aligned;
}

/*
 * Adds s[0..n) as UTF-8 encoded words (RFC 2047 2: at most 75 octets
 * each; the whitespace between two of them is not part of the text, 6.2,
 * so folding between them loses nothing). B words; a Q word for a single
 * character where no B word could end unpadded.
 */
static void ob_hdr_encoded(struct ob_hdr *h, const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t take = ob_ew_take(s + i, n - i, OB_EW_TEXT_MAX), wl;
		char w[96];

		if (take == 0) {
			size_t c = ob_utf8_len((const unsigned char *)s + i);

			c = c == 0 ? 1 : c;
			wl = (size_t)snprintf(w, sizeof(w), "=?UTF-8?Q?");
			for (size_t j = 0; j < c; j++)
				wl += (size_t)snprintf(w + wl, sizeof(w) - wl, "=%02X",
				                       (unsigned char)s[i + j]);
			wl += (size_t)snprintf(w + wl, sizeof(w) - wl, "?=");
			take = c;
		} else {
			wl = (size_t)snprintf(w, sizeof(w), "=?UTF-8?B?");
			wl += (size_t)EVP_EncodeBlock((unsigned char *)w + wl,
			                              (const unsigned char *)s + i,
			                              (int)take);
			wl += (size_t)snprintf(w + wl, sizeof(w) - wl, "?=");
		}
		ob_hdr_token(h, w, wl);
		i += take;
	}
}

/*
 * Writes "Name: value" (value cleaned: one line of UTF-8) with ASCII words
 * as they are and runs of other words as encoded words, folded to stay
 * within 78 octets (RFC 5322 2.2.3).
 */
static void ob_put_unstructured(FILE *f, const char *name, const char *value)
{
	struct ob_hdr h = {f, strlen(name) + 1, 1};
	const char *p = value;

	fprintf(f, "%s:", name);
	for (;;) {
		const char *end;
		size_t n;

		while (*p == ' ')
			p++;
		n = strcspn(p, " ");
		if (n == 0)
			break;
		if (!ob_needs_ew(p, n)) {
			ob_hdr_token(&h, p, n);
			p += n;
			continue;
		}
		/* the following words that need encoding join this run, with
		   the spaces between them */
		end = p + n;
		for (;;) {
			const char *q = end + strspn(end, " ");
			size_t n2 = strcspn(q, " ");

			if (n2 == 0 || !ob_needs_ew(q, n2))
				break;
			end = q + n2;
		}
		ob_hdr_encoded(&h, p, (size_t)(end - p));
		p = end;
	}
	fputs("\r\n", f);
}

/* ------------------------------------------------------------- body */

/*
 * Writes text (LF lines, UTF-8) quoted-printable (RFC 2045 6.7) with CRLF
 * line ends: lines of at most 76 octets with soft breaks, "=" and 8-bit
 * octets as =XX, a space or tab at the end of a line as =20 / =09.
 */
static void ob_put_qp(FILE *f, const char *s, size_t len)
{
	size_t col = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char b = (unsigned char)s[i];
		int eol = i + 1 == len || s[i + 1] == '\n';
		char tok[4];
		size_t tl = 1;

		if (b == '\n') {
			fputs("\r\n", f);
			col = 0;
			continue;
		}
		if ((b >= 33 && b <= 126 && b != '=') ||
		    ((b == ' ' || b == '\t') && !eol))
			tok[0] = (char)b;
		else
			tl = (size_t)snprintf(tok, sizeof(tok), "=%02X", b);
		if (col + tl > OB_QP_LINE - 1) {
			fputs("=\r\n", f);
			col = 0;
		}
		fwrite(tok, 1, tl, f);
		col += tl;
	}
	if (col > 0)
		fputs("\r\n", f);
}

/* "Sat, 29 Nov 2026 06:33:38 +0000" (RFC 5322 3.3), whatever the locale. */
static void ob_date(time_t t, char *buf, size_t len)
{
	static const char *const days[] = {"Sun", "Mon", "Tue", "Wed",
	                                   "Thu", "Fri", "Sat"};
	static const char *const mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
	         tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
	         tm.tm_min, tm.tm_sec);
}

/* path as one shell word: as it is when plain, else in single quotes. */
static void ob_shell_word(FILE *f, const char *path)
{
	if (path[strspn(path, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                      "0123456789/._-+=:@")] == '\0') {
		fputs(path, f);
		return;
	}
	fputc('\'', f);
	for (const char *p = path; *p != '\0'; p++) {
		if (*p == '\'')
			fputs("'\\''", f);
		else
			fputc(*p, f);
	}
	fputc('\'', f);
}

/* One "  key: value" line of the body; an empty value shows as "-". */
static void ob_field(FILE *f, const char *key, const char *value, int *oom)
{
	char *v = ob_clean(value, OB_TEXT_MAX);

	if (v == NULL) {
		*oom = 1;
		return;
	}
	fprintf(f, "  %-10s %s\n", key, v[0] != '\0' ? v : "-");
	free(v);
}

/* The body text (LF lines) of report r into a malloc'd buffer. */
static char *ob_body(const struct outbox_report *r, const char *id, size_t *len_r)
{
	char *text = NULL, stamp[32], size[96];
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int oom = 0;
	struct tm tm;

	if (f == NULL)
		return NULL;
	gmtime_r(&r->when, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm); /* RFC 3339 */
	snprintf(size, sizeof(size), "%" PRIu64 " octets%s", r->size,
	         r->truncated ? " (truncated: only these were kept)" : "");
	fputs("mailmoat quarantined a message. The client received a notice in its\n"
	      "place; the original is kept in the quarantine on the proxy.\n\n",
	      f);
	ob_field(f, "id:", id, &oom);
	ob_field(f, "time:", stamp, &oom);
	ob_field(f, "user:", r->user, &oom);
	ob_field(f, "upstream:", r->upstream, &oom);
	ob_field(f, "protocol:", r->protocol, &oom);
	ob_field(f, "session:", r->session, &oom);
	ob_field(f, "message:", r->message, &oom);
	ob_field(f, "verdict:", r->verdict, &oom);
	ob_field(f, "signature:", r->signature, &oom);
	fputs("\nThe original message (not attached: it may be harmful):\n\n", f);
	ob_field(f, "from:", r->from, &oom);
	ob_field(f, "subject:", r->subject, &oom);
	ob_field(f, "date:", r->date, &oom);
	ob_field(f, "size:", size, &oom);
	fputs("\nTo look at the entry, and to deliver the message to the user if it\n"
	      "is safe after all, on the proxy:\n\n",
	      f);
	for (int i = 0; i < 2; i++) {
		fprintf(f, "  mailmoat quarantine %s %s", i == 0 ? "show" : "release",
		        id);
		if (r->config_path != NULL && r->config_path[0] != '\0' &&
		    strcmp(r->config_path, OB_DEFAULT_CONFIG) != 0) {
			char *p = ob_clean(r->config_path, CFG_PATH_MAX);

			fputs(" --config ", f);
			if (p != NULL)
				ob_shell_word(f, p);
			free(p);
		}
		fputc('\n', f);
	}
	fputs("\n-- \nmailmoat, notice.admin_copy\n", f);
	if (fclose(f) != 0 || oom) {
		free(text);
		return NULL;
	}
	*len_r = len;
	return text;
}

int outbox_render(const struct outbox_report *r, const char *from, const char *to,
                  char **out_r, size_t *len_r)
{
	char *id = ob_clean(r->id, QUAR_ID_MAX);
	char *user = ob_clean(r->user, OB_USER_MAX);
	char *verdict = ob_clean(r->verdict, 64);
	char *body = NULL, *out = NULL, *subject = NULL, date[64];
	const char *dom = strchr(from, '@');
	size_t blen = 0, len = 0;
	FILE *f = NULL;
	int rc = -1;

	*out_r = NULL;
	*len_r = 0;
	if (id == NULL || user == NULL || verdict == NULL)
		goto out;
	body = ob_body(r, id, &blen);
	if (body == NULL || asprintf(&subject, "[mailmoat] quarantined: %s for %s",
	                             verdict[0] != '\0' ? verdict : "detection",
	                             user[0] != '\0' ? user : "unknown user") < 0) {
		subject = NULL;
		goto out;
	}
	f = open_memstream(&out, &len);
	if (f == NULL)
		goto out;
	dom = dom != NULL && dom[1] != '\0' ? dom + 1 : "localhost";
	ob_date(r->when, date, sizeof(date));
	/* addresses checked by the callers (ob_safe_addr, config.c) */
	fprintf(f, "Date: %s\r\n", date);
	fprintf(f, "From: mailmoat <%s>\r\n", from);
	fprintf(f, "To: %s\r\n", to);
	ob_put_unstructured(f, "Subject", subject);
	fprintf(f, "Message-ID: <%s.admin-copy@%s>\r\n", id, dom);
	/* RFC 3834: no vacation replies to this */
	fputs("Auto-Submitted: auto-generated\r\n", f);
	fprintf(f, "X-Mailmoat-Quarantine-Id: %s\r\n", id);
	fputs("MIME-Version: 1.0\r\n"
	      "Content-Type: text/plain; charset=utf-8\r\n"
	      "Content-Transfer-Encoding: quoted-printable\r\n"
	      "\r\n",
	      f);
	ob_put_qp(f, body, blen);
	if (fclose(f) != 0)
		goto out;
	*out_r = out;
	*len_r = len;
	out = NULL;
	rc = 0;
out:
	free(out);
	free(subject);
	free(body);
	free(verdict);
	free(user);
	free(id);
	return rc;
}

void outbox_sender(const struct config *cfg, char *buf, size_t len)
{
	char host[256];

	if (cfg->copy_from[0] != '\0') {
		snprintf(buf, len, "%s", cfg->copy_from);
		return;
	}
	if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	if (host[strspn(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                      "0123456789.-")] != '\0')
		snprintf(host, sizeof(host), "localhost");
	snprintf(buf, len, "mailmoat@%s", host);
}

/* ------------------------------------------------------------- files */

static int ob_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Entries in the directory dfd (not "." and ".."), or -errno. */
static int ob_count(int dfd)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *e;
	int n = 0;

	if (d == NULL) {
		int r = -errno;

		if (fd >= 0)
			close(fd);
		return r;
	}
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return n;
}

/* Opens (creating it, mode 0700) QUARANTINE_DIR/.outbox. Returns an fd or -errno. */
static int ob_open_dir(const char *qdir, int create, char *path, size_t pathlen)
{
	int fd;

	if (snprintf(path, pathlen, "%s/%s", qdir, OUTBOX_DIR) >= (int)pathlen)
		return -ENAMETOOLONG;
	if (create && mkdir(path, 0700) != 0 && errno != EEXIST)
		return -errno;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	return fd;
}

int outbox_write(const char *quarantine_dir, const char *from, const char *to,
                 const struct outbox_report *r, char *err, size_t errlen)
{
	char dir[PATH_MAX], tmp[OB_NAME_MAX], name[OB_NAME_MAX];
	char *text = NULL;
	size_t len = 0;
	int dfd, fd = -1, n, e;
	const char *what;

	if (r->id == NULL || !qindex_valid_id(r->id)) {
		snprintf(err, errlen, "not a quarantine id");
		return -1;
	}
	dfd = ob_open_dir(quarantine_dir, 1, dir, sizeof(dir));
	if (dfd < 0) {
		snprintf(err, errlen, "outbox %s/%s: %s", quarantine_dir, OUTBOX_DIR,
		         OB_ERR(-dfd));
		return -1;
	}
	n = ob_count(dfd);
	if (n >= OUTBOX_MAX_FILES) {
		close(dfd);
		return 1;
	}
	if (outbox_render(r, from, to, &text, &len) < 0) {
		close(dfd);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	snprintf(tmp, sizeof(tmp), "%s.eml.tmp", r->id);
	snprintf(name, sizeof(name), "%s.eml", r->id);
	what = "create";
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	e = fd < 0 ? errno : 0;
	if (e == 0 && fchmod(fd, 0600) != 0) /* whatever the umask */
		e = errno;
	if (e == 0 && (e = -ob_write_all(fd, text, len)) != 0)
		what = "write";
	if (e == 0 && fsync(fd) != 0) {
		e = errno;
		what = "fsync";
	}
	if (fd >= 0 && close(fd) != 0 && e == 0) {
		e = errno;
		what = "close";
	}
	/* quarantine ids are unique: no report of this one exists yet */
	if (e == 0 && renameat(dfd, tmp, dfd, name) != 0) {
		e = errno;
		what = "rename";
	}
	free(text);
	if (e != 0) {
		if (fd >= 0)
			unlinkat(dfd, tmp, 0);
		snprintf(err, errlen, "%s %s/%s: %s", what, dir, tmp, OB_ERR(e));
		close(dfd);
		return -1;
	}
	close(dfd);
	return 0;
}

uint64_t outbox_backoff_ms(unsigned attempts, uint64_t base_ms)
{
	uint64_t cap = base_ms * OUTBOX_RETRY_MAX_FACTOR, d = base_ms;

	for (unsigned i = 1; i < attempts && d < cap; i++)
		d *= 2;
	return d < cap ? d : cap;
}

int outbox_name_parse(const char *name, char *id_r, size_t idlen, unsigned *attempts_r,
                      int64_t *due_ms_r)
{
	size_t n = strlen(name), idn;
	const char *plus;

	if (n <= 4 || strcmp(name + n - 4, ".eml") != 0)
		return -1;
	n -= 4;
	plus = memchr(name, '+', n);
	idn = plus != NULL ? (size_t)(plus - name) : n;
	if (idn == 0 || idn >= idlen)
		return -1;
	memcpy(id_r, name, idn);
	id_r[idn] = '\0';
	if (!qindex_valid_id(id_r))
		return -1;
	*attempts_r = 0;
	*due_ms_r = 0;
	if (plus != NULL) {
		char *end;
		unsigned long a;
		long long due;

		if (plus[1] < '0' || plus[1] > '9')
			return -1;
		errno = 0;
		a = strtoul(plus + 1, &end, 10);
		if (errno != 0 || *end != '+' || a == 0 || a > 100000 || end[1] < '0' ||
		    end[1] > '9')
			return -1;
		due = strtoll(end + 1, &end, 10);
		if (errno != 0 || end != name + n)
			return -1;
		*attempts_r = (unsigned)a;
		*due_ms_r = due;
	}
	return 0;
}

static int ob_cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The outbox's file names (at most 4 * OUTBOX_MAX_FILES), sorted: quarantine
 * ids start with their time, so the oldest report goes first. Returns the
 * count or -errno; *names_r is malloc'd (each name too).
 */
static int ob_list(int dfd, char ***names_r)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;

	*names_r = NULL;
	if (d == NULL) {
		int r = -errno;

		if (fd >= 0)
			close(fd);
		return r < 0 ? r : -EIO; /* < 0 whatever errno says: no names */
	}
	while ((e = readdir(d)) != NULL && n < 4 * OUTBOX_MAX_FILES) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			size_t nc = cap != 0 ? cap * 2 : 64;
			char **nn = realloc(names, nc * sizeof(*names));

			if (nn == NULL)
				break;
			names = nn;
			cap = nc;
		}
		names[n] = strdup(e->d_name);
		if (names[n] == NULL)
			break;
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), ob_cmp_names);
	*names_r = names;
	return (int)n;
}

static int64_t ob_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ob_stopping(const struct outbox_pass *p)
{
	return p->stop != NULL && atomic_load(p->stop) != 0;
}

/*
 * Report `name` (id) failed its attempt number `attempt` for `why`: renamed
 * ID+N+DUE.eml for the next one after the backoff, counted and logged.
 */
static void ob_retry_later(struct outbox_pass *p, int dfd, const char *dir,
                           const char *name, const char *id, unsigned attempt,
                           const char *why, const char *to, int64_t now)
{
	uint64_t delay = outbox_backoff_ms(attempt, p->retry_base_ms);
	int64_t due = now + (int64_t)delay;
	char next[OB_NAME_MAX], esc[1024];

	snprintf(next, sizeof(next), "%s+%u+%" PRId64 ".eml", id, attempt, due);
	if (renameat(dfd, name, dfd, next) != 0) {
		log_msg(LOG_LVL_ERROR, NULL, "admin copy %s: cannot rename %s/%s: %s", id,
		        dir, name, OB_ERR(errno));
		return;
	}
	p->failed++;
	p->waiting++;
	if (due < p->next_due_ms)
		p->next_due_ms = due;
	log_escape(esc, sizeof(esc), why, strlen(why));
	log_msg(LOG_LVL_WARN, NULL,
	        "admin copy %s failed: %s (attempt %u, next in %" PRIu64 " s) to=%s", id,
	        esc[0] != '\0' ? esc : "unknown error", attempt, (delay + 999) / 1000,
	        to);
}

int outbox_run_pass(struct outbox_pass *p)
{
	char dir[PATH_MAX], relay_why[PATH_MAX + 512] = "", why[PATH_MAX + 512];
	char id[QUAR_ID_MAX], to[CFG_HOST_MAX];
	char **names = NULL;
	int64_t mono0 = ob_mono_ms(), now_s = p->now_ms / 1000;
	int dfd, n, relay_failed = 0;

	p->sent = p->failed = p->dropped = p->waiting = 0;
	p->next_due_ms = INT64_MAX;
	log_escape_token(to, sizeof(to), p->to != NULL ? p->to : "-",
	                 strlen(p->to != NULL ? p->to : "-"));
	dfd = ob_open_dir(p->quarantine_dir, 0, dir, sizeof(dir));
	if (dfd == -ENOENT)
		return 0;
	if (dfd < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "admin copy: outbox %s: %s", dir,
		        OB_ERR(-dfd));
		return -1;
	}
	n = ob_list(dfd, &names);
	if (n < 0) {
		log_msg(LOG_LVL_ERROR, NULL, "admin copy: outbox %s: %s", dir,
		        OB_ERR(-n));
		close(dfd);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		const char *name = names[i];
		unsigned attempts;
		int64_t due;
		struct stat st;
		int r, fd;

		if (ob_stopping(p))
			break;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (strlen(name) > 4 && strcmp(name + strlen(name) - 4, ".tmp") == 0) {
			if (now_s - (int64_t)st.st_mtime > OB_TMP_STALE_S)
				unlinkat(dfd, name, 0);
			continue;
		}
		if (outbox_name_parse(name, id, sizeof(id), &attempts, &due) < 0)
			continue; /* not ours */
		if (now_s - (int64_t)st.st_mtime > OUTBOX_EXPIRE_S) {
			if (unlinkat(dfd, name, 0) == 0) {
				p->dropped++;
				log_msg(LOG_LVL_ERROR, NULL,
				        "admin copy %s dropped: not sent within %d days "
				        "(attempts=%u) to=%s",
				        id, OUTBOX_EXPIRE_S / 86400, attempts, to);
			}
			continue;
		}
		if (due > p->now_ms + (ob_mono_ms() - mono0)) {
			p->waiting++;
			if (due < p->next_due_ms)
				p->next_due_ms = due;
			continue;
		}
		why[0] = '\0';
		if (relay_failed) {
			/* the relay failed for an earlier report of this pass */
			r = OUTBOX_FAIL;
			snprintf(why, sizeof(why), "%s", relay_why);
		} else if ((fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) <
		           0) {
			r = OUTBOX_FAIL;
			snprintf(why, sizeof(why), "%s/%s: %s", dir, name, OB_ERR(errno));
		} else {
			r = p->send(p->send_arg, id, fd, (uint64_t)st.st_size, why,
			            sizeof(why));
			close(fd);
			if (r == OUTBOX_FAIL_RELAY) {
				relay_failed = 1;
				snprintf(relay_why, sizeof(relay_why), "%s", why);
			}
		}
		if (r == 0) {
			if (unlinkat(dfd, name, 0) != 0)
				log_msg(
				    LOG_LVL_ERROR, NULL,
				    "admin copy %s sent, but %s/%s stays: %s (it will "
				    "be sent again)",
				    id, dir, name, OB_ERR(errno));
			p->sent++;
			log_msg(LOG_LVL_INFO, NULL, "admin copy %s sent to %s", id, to);
			continue;
		}
		if (ob_stopping(p))
			break; /* cut short by the shutdown: not an attempt */
		ob_retry_later(p, dfd, dir, name, id, attempts + 1, why, to,
		               p->now_ms + (ob_mono_ms() - mono0));
	}
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	close(dfd);
	return 0;
}

/* -------------------------------------------------------------- SMTP */

/* One pass's SMTP session: the handle (one connection for every report). */
struct ob_smtp {
	const struct config *cfg;
	atomic_int *stop;
	CURL *c;
	struct curl_slist *rcpt;
	char *pw;
	int state; /* 0: not set up yet, 1: ready, -1: unusable (why) */
	char shown[CFG_PATH_MAX + 16];
	char why[CFG_PATH_MAX + 256];
	char err[CURL_ERROR_SIZE];
	int fd; /* the report being sent */
	int64_t sent;
};

static size_t ob_curl_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct ob_smtp *s = arg;
	ssize_t n;

	do
		n = read(s->fd, buf, size * nitems);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return CURL_READFUNC_ABORT;
	s->sent += n;
	return (size_t)n;
}

/* Called by libcurl about once a second: a shutdown aborts the transfer. */
static int ob_curl_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut,
                            curl_off_t un)
{
	struct ob_smtp *s = arg;

	(void)dt;
	(void)dn;
	(void)ut;
	(void)un;
	return s->stop != NULL && atomic_load(s->stop) != 0;
}

static int ob_is_loopback(const char *host)
{
	return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
	       strcmp(host, "::1") == 0 || strcmp(host, "[::1]") == 0;
}

/*
 * Checks smtp_url (smtp or smtps, no credentials in it: SECURITY) and sets
 * it on the handle with the TLS it requires. Fills s->shown
 * (scheme://host[:port]). Returns 0 or -1 with s->why.
 */
static int ob_curl_url(struct ob_smtp *s, const char *url)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL;
	int rc = -1, tls = 0;

	if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		snprintf(s->why, sizeof(s->why), "notice.admin_copy.smtp_url: not a URL");
		goto out;
	}
	tls = strcmp(scheme, "smtps") == 0;
	if (!tls && strcmp(scheme, "smtp") != 0) {
		snprintf(s->why, sizeof(s->why),
		         "notice.admin_copy.smtp_url: scheme %s, want smtp or smtps",
		         scheme);
		goto out;
	}
	if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
		snprintf(s->why, sizeof(s->why),
		         "notice.admin_copy.smtp_url: credentials in the URL (use user "
		         "and password_file)");
		goto out;
	}
	curl_url_get(u, CURLUPART_PORT, &port, 0);
	snprintf(s->shown, sizeof(s->shown), "%s://%s%s%s", scheme, host,
	         port != NULL ? ":" : "", port != NULL ? port : "");
	curl_easy_setopt(s->c, CURLOPT_URL, url);
	curl_easy_setopt(s->c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	/* SECURITY: STARTTLS is required unless the relay is on loopback */
	if (!tls)
		curl_easy_setopt(
		    s->c, CURLOPT_USE_SSL,
		    (long)(ob_is_loopback(host) ? CURLUSESSL_TRY : CURLUSESSL_ALL));
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(user);
	curl_url_cleanup(u);
	return rc;
}

/* The handle for this pass. Returns 0 or -1 with s->why. */
static int ob_smtp_setup(struct ob_smtp *s)
{
	const struct config *cfg = s->cfg;
	char addr[CFG_HOST_MAX + 2], from[CFG_HOST_MAX];

	s->c = curl_easy_init();
	if (s->c == NULL) {
		snprintf(s->why, sizeof(s->why), "libcurl: cannot initialize");
		return -1;
	}
	if (ob_curl_url(s, cfg->copy_smtp_url) < 0)
		return -1;
	outbox_sender(cfg, from, sizeof(from));
	if (!ob_safe_addr(from)) {
		snprintf(s->why, sizeof(s->why),
		         "notice.admin_copy.from: not an address");
		return -1;
	}
	if (!ob_safe_addr(cfg->copy_to)) {
		snprintf(s->why, sizeof(s->why), "notice.admin_copy.to: not an address");
		return -1;
	}
	snprintf(addr, sizeof(addr), "<%s>", from);
	curl_easy_setopt(s->c, CURLOPT_MAIL_FROM, addr);
	snprintf(addr, sizeof(addr), "<%s>", cfg->copy_to);
	s->rcpt = curl_slist_append(NULL, addr);
	if (s->rcpt == NULL) {
		snprintf(s->why, sizeof(s->why), "out of memory");
		return -1;
	}
	curl_easy_setopt(s->c, CURLOPT_MAIL_RCPT, s->rcpt);
	if ((cfg->copy_user[0] != '\0') != (cfg->copy_password_file[0] != '\0')) {
		snprintf(s->why, sizeof(s->why),
		         "notice.admin_copy: user and password_file go together");
		return -1;
	}
	if (cfg->copy_user[0] != '\0') {
		int r;

		s->pw = malloc(OB_PASSWORD_MAX);
		if (s->pw == NULL) {
			snprintf(s->why, sizeof(s->why), "out of memory");
			return -1;
		}
		r = admin_read_password(cfg->copy_password_file, s->pw, OB_PASSWORD_MAX);
		if (r < 0) {
			snprintf(s->why, sizeof(s->why),
			         "notice.admin_copy.password_file %s: %s",
			         cfg->copy_password_file,
			         r == -ENODATA ? "empty first line" : OB_ERR(-r));
			return -1;
		}
		curl_easy_setopt(s->c, CURLOPT_USERNAME, cfg->copy_user);
		curl_easy_setopt(s->c, CURLOPT_PASSWORD, s->pw);
	}
	if (cfg->copy_ca[0] != '\0')
		curl_easy_setopt(s->c, CURLOPT_CAINFO, cfg->copy_ca);
	curl_easy_setopt(s->c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(s->c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(s->c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(s->c, CURLOPT_READFUNCTION, ob_curl_read);
	curl_easy_setopt(s->c, CURLOPT_READDATA, s);
	curl_easy_setopt(s->c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(s->c, CURLOPT_XFERINFOFUNCTION, ob_curl_progress);
	curl_easy_setopt(s->c, CURLOPT_XFERINFODATA, s);
	curl_easy_setopt(s->c, CURLOPT_ERRORBUFFER, s->err);
	curl_easy_setopt(s->c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(s->c, CURLOPT_CONNECTTIMEOUT, (long)OUTBOX_SEND_TIMEOUT_S);
	curl_easy_setopt(s->c, CURLOPT_TIMEOUT, (long)OUTBOX_SEND_TIMEOUT_S);
	return 0;
}

/*
 * Failures that are the relay's, not the report's: it is not reachable, or
 * TLS or the login failed, or the settings are wrong. The other reports of
 * the pass would fail alike.
 */
static int ob_relay_error(CURLcode cc)
{
	switch (cc) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_USE_SSL_FAILED:
	case CURLE_LOGIN_DENIED:
	case CURLE_AUTH_ERROR:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_GOT_NOTHING:
	case CURLE_ABORTED_BY_CALLBACK:
		return 1;
	default:
		return 0;
	}
}

/* outbox_send_fn through libcurl (see outbox.h for the contract). */
static int ob_smtp_send(void *arg, const char *id, int fd, uint64_t size, char *why,
                        size_t whylen)
{
	struct ob_smtp *s = arg;
	CURLcode cc;

	(void)id;
	if (s->state == 0)
		s->state = ob_smtp_setup(s) == 0 ? 1 : -1;
	if (s->state < 0) {
		snprintf(why, whylen, "%s", s->why);
		return OUTBOX_FAIL_RELAY;
	}
	s->fd = fd;
	s->sent = 0;
	s->err[0] = '\0';
	curl_easy_setopt(s->c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
	cc = curl_easy_perform(s->c);
	if (cc != CURLE_OK) {
		snprintf(why, whylen, "%s: %s", s->shown,
		         s->err[0] != '\0' ? s->err : curl_easy_strerror(cc));
		return ob_relay_error(cc) ? OUTBOX_FAIL_RELAY : OUTBOX_FAIL;
	}
	if (s->sent != (int64_t)size) {
		snprintf(why, whylen, "the report changed while it was sent");
		return OUTBOX_FAIL;
	}
	return 0;
}

/* Ends the pass's SMTP session (QUIT) and wipes the password. */
static void ob_smtp_end(struct ob_smtp *s)
{
	if (s->c != NULL)
		curl_easy_cleanup(s->c);
	s->c = NULL;
	curl_slist_free_all(s->rcpt);
	s->rcpt = NULL;
	if (s->pw != NULL) {
		explicit_bzero(s->pw, OB_PASSWORD_MAX);
		free(s->pw);
		s->pw = NULL;
	}
}

/* ------------------------------------------------------- the loop side */

/* Orders outbox_notify() (any thread) against outbox_stop() closing the kick. */
static pthread_mutex_t ob_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t ob_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ob_on_timer(uv_timer_t *t);

static void ob_arm(struct outbox *ob, uint64_t delay_ms)
{
	uv_timer_start(&ob->timer, ob_on_timer, delay_ms, 0);
}

/* The shortest wait between passes: a second, less for a test's tiny base. */
static uint64_t ob_floor_ms(const struct outbox *ob)
{
	return ob->retry_base_ms < 1000 ? ob->retry_base_ms : 1000;
}

/* On the pool: one pass with the configuration taken when it was queued. */
static void ob_work(uv_work_t *req)
{
	struct outbox *ob = req->data;
	const struct config *cfg = ob->pass_cfg;
	struct ob_smtp smtp;
	struct outbox_pass p;

	assert(cfg != NULL); /* ob_run took it for this pass */
	memset(&smtp, 0, sizeof(smtp));
	smtp.cfg = cfg;
	smtp.stop = &ob->stop;
	smtp.fd = -1;
	memset(&p, 0, sizeof(p));
	p.quarantine_dir = cfg->quarantine_dir;
	p.to = cfg->copy_to;
	p.now_ms = ob_wall_ms();
	p.retry_base_ms = ob->retry_base_ms;
	p.send = ob->send != NULL ? ob->send : ob_smtp_send;
	p.send_arg = ob->send != NULL ? ob->send_arg : &smtp;
	p.stop = &ob->stop;
	outbox_run_pass(&p);
	ob_smtp_end(&smtp);
	ob->pass_next_ms = p.next_due_ms;
}

/* Everything closed and no pass running: libcurl's globals go. */
static void ob_finish(struct outbox *ob)
{
	if (!ob->closing || ob->busy || ob->open_handles > 0)
		return;
	pthread_mutex_lock(&ob_lock);
	ob->started = 0;
	pthread_mutex_unlock(&ob_lock);
	curl_global_cleanup();
}

static void ob_after(uv_work_t *req, int status)
{
	struct outbox *ob = req->data;
	int64_t left;
	uint64_t delay;

	(void)status;
	ob->busy = 0;
	config_unref(&ob->pass_cfg);
	if (ob->closing) {
		ob_finish(ob);
		return;
	}
	if (ob->again) {
		delay = 0;
	} else {
		left = ob->pass_next_ms == INT64_MAX ? OUTBOX_TICK_MS
		                                     : ob->pass_next_ms - ob_wall_ms();
		delay = left < (int64_t)ob_floor_ms(ob) ? ob_floor_ms(ob)
		        : left > OUTBOX_TICK_MS         ? OUTBOX_TICK_MS
		                                        : (uint64_t)left;
	}
	ob_arm(ob, delay);
}

/* Queues a pass unless one runs (then another follows it at once). */
static void ob_run(struct outbox *ob)
{
	struct server *srv = ob->srv;

	if (ob->closing || srv->stopping)
		return;
	if (ob->busy) {
		ob->again = 1;
		return;
	}
	if (srv->cfg->copy_to[0] == '\0') {
		ob_arm(ob, OUTBOX_TICK_MS); /* off: a reload may turn it on */
		return;
	}
	ob->busy = 1;
	ob->again = 0;
	ob->pass_cfg = config_ref(srv->cfg);
	ob->work.data = ob;
	if (uv_queue_work(srv->loop, &ob->work, ob_work, ob_after) < 0) {
		ob->busy = 0;
		config_unref(&ob->pass_cfg);
		ob_arm(ob, OUTBOX_TICK_MS);
	}
}

static void ob_on_timer(uv_timer_t *t)
{
	ob_run(t->data);
}

static void ob_on_kick(uv_async_t *a)
{
	ob_run(a->data);
}

static void ob_on_close(uv_handle_t *h)
{
	struct outbox *ob = h->data;

	ob->open_handles--;
	ob_finish(ob);
}

/*
 * Settings that would make every attempt fail, said once at start rather
 * than at the first detection (each attempt says it again).
 */
static void ob_check_settings(const struct config *cfg)
{
	char from[CFG_HOST_MAX];
	const char *why = NULL;

	outbox_sender(cfg, from, sizeof(from));
	if (strncmp(cfg->copy_smtp_url, "smtp://", 7) != 0 &&
	    strncmp(cfg->copy_smtp_url, "smtps://", 8) != 0)
		why = "smtp_url is not smtp:// or smtps://";
	else if (!ob_safe_addr(from))
		why = "from is not an address";
	else if (!ob_safe_addr(cfg->copy_to))
		why = "to is not an address";
	else if ((cfg->copy_user[0] != '\0') != (cfg->copy_password_file[0] != '\0'))
		why = "user and password_file go together";
	else if (cfg->copy_password_file[0] != '\0' &&
	         access(cfg->copy_password_file, R_OK) != 0)
		why = "password_file is not readable";
	if (why != NULL)
		log_msg(LOG_LVL_ERROR, NULL,
		        "admin copy: notice.admin_copy.%s: no report can be sent", why);
}

void outbox_start(struct server *srv)
{
	struct outbox *ob = &srv->outbox;
	const char *env = getenv(OUTBOX_RETRY_ENV);

	ob->srv = srv;
	ob->busy = ob->again = 0;
	atomic_store(&ob->stop, 0);
	ob->retry_base_ms = OUTBOX_RETRY_BASE_MS;
	if (env != NULL && env[0] != '\0') {
		char *end;
		unsigned long long v;

		errno = 0;
		v = strtoull(env, &end, 10);
		if (errno == 0 && *end == '\0' && v >= 1 && v <= 3600 * 1000ull) {
			ob->retry_base_ms = v;
			log_msg(
			    LOG_LVL_WARN, NULL,
			    "admin copy: retry after %llu ms at first (%s, for tests)", v,
			    OUTBOX_RETRY_ENV);
		} else {
			log_msg(LOG_LVL_WARN, NULL, "admin copy: %s=%s ignored",
			        OUTBOX_RETRY_ENV, env);
		}
	}
	/* here, before any pass can run: not thread-safe in every libcurl */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		log_msg(LOG_LVL_ERROR, NULL, "admin copy: libcurl cannot initialize");
	uv_timer_init(srv->loop, &ob->timer);
	ob->timer.data = ob;
	uv_async_init(srv->loop, &ob->kick, ob_on_kick);
	ob->kick.data = ob;
	ob->open_handles = 2;
	pthread_mutex_lock(&ob_lock);
	ob->closing = 0;
	ob->started = 1;
	pthread_mutex_unlock(&ob_lock);
	if (srv->cfg->copy_to[0] != '\0') {
		char to[CFG_HOST_MAX * 4];

		log_escape_token(to, sizeof(to), srv->cfg->copy_to,
		                 strlen(srv->cfg->copy_to));
		log_msg(LOG_LVL_INFO, NULL,
		        "admin copy: reports of quarantined messages to=%s", to);
		ob_check_settings(srv->cfg);
	}
	/* reports left by an earlier run go out soon */
	ob_arm(ob, ob_floor_ms(ob));
}

void outbox_stop(struct server *srv)
{
	struct outbox *ob = &srv->outbox;

	if (!ob->started || ob->closing)
		return;
	pthread_mutex_lock(&ob_lock);
	ob->closing = 1;
	pthread_mutex_unlock(&ob_lock);
	atomic_store(&ob->stop, 1);
	uv_close((uv_handle_t *)&ob->timer, ob_on_close);
	uv_close((uv_handle_t *)&ob->kick, ob_on_close);
}

void outbox_notify(struct server *srv)
{
	struct outbox *ob = &srv->outbox;

	pthread_mutex_lock(&ob_lock);
	if (ob->started && !ob->closing)
		uv_async_send(&ob->kick);
	pthread_mutex_unlock(&ob_lock);
}

/* ---------------------------------------------------- the scan job side */

void outbox_quarantined(const struct msgjob *job, const struct msg_headers *h)
{
	const struct config *cfg = job->cfg;
	struct outbox_report r;
	char from[CFG_HOST_MAX], err[PATH_MAX + 128], esc[PATH_MAX + 256];
	int rc;

	if (cfg == NULL || cfg->copy_to[0] == '\0' || job->quar_reused ||
	    job->quar_id[0] == '\0')
		return;
	memset(&r, 0, sizeof(r));
	r.id = job->quar_id;
	r.when = time(NULL);
	r.user = job->user;
	r.upstream = job->upstream;
	r.protocol = job->protocol;
	r.session = job->session;
	r.message = job->message;
	r.verdict = scan_result_name(job->verdict.result);
	r.signature = job->verdict.result == SCAN_ERROR ? job->verdict.error
	                                                : job->verdict.signature;
	if (h != NULL) {
		r.from = h->from_utf8 != NULL ? h->from_utf8 : h->from;
		r.subject = h->subject_utf8 != NULL ? h->subject_utf8 : h->subject;
		r.date = h->date;
	}
	r.size = spool_size(job->spool);
	r.truncated = spool_overflowed(job->spool);
	r.config_path = job->srv != NULL ? job->srv->cfg_path : NULL;
	outbox_sender(cfg, from, sizeof(from));
	if (!ob_safe_addr(from) || !ob_safe_addr(cfg->copy_to)) {
		log_msg(
		    LOG_LVL_ERROR, job->session,
		    "admin copy %s not queued: notice.admin_copy.%s is not an address",
		    job->quar_id, ob_safe_addr(from) ? "to" : "from");
		return;
	}
	rc = outbox_write(cfg->quarantine_dir, from, cfg->copy_to, &r, err, sizeof(err));
	if (rc == 1) {
		log_msg(LOG_LVL_ERROR, job->session,
		        "admin copy %s not queued: %d reports already wait in %s/%s",
		        job->quar_id, OUTBOX_MAX_FILES, cfg->quarantine_dir, OUTBOX_DIR);
	} else if (rc < 0) {
		log_escape(esc, sizeof(esc), err, strlen(err));
		log_msg(LOG_LVL_ERROR, job->session, "admin copy %s not queued: %s",
		        job->quar_id, esc);
	} else {
		log_msg(LOG_LVL_DEBUG, job->session, "admin copy %s queued",
		        job->quar_id);
		if (job->srv != NULL)
			outbox_notify(job->srv);
	}
}
