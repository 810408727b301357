/*
 * notice.c - the notice a client receives in place of a quarantined message.
 *
 * Two jobs, both called from scan jobs on the libuv thread pool, so every
 * GMime object here (parser, parser and format options, message, streams)
 * is created and destroyed within one call; only g_mime_init() is global.
 * Templates are loaded (no GMime) at start-up or reload and are then
 * immutable, shared by any number of jobs.
 *
 * notice_read_headers() reads the header block of the captured original
 * (at most NOTICE_HDR_MAX bytes, up to the first empty line) and parses it
 * with GMimeParser. It never fails on malformed mail: whatever cannot be
 * found stays NULL.
 *
 * notice_build() composes a single-part text/plain message with GMime:
 * the original's From, To, Cc, Date and Message-ID are carried over as raw
 * values (refolded, see notice_fold()) so that clients sort and thread the
 * notice where the original would have been; the Subject (and any X-
 * header) comes from the template, RFC 2047-encoded and folded here (see
 * notice_encode_header()); the body, from the template too, is UTF-8
 * quoted-printable. GMime writes it with CRLF line endings (DOS newline
 * format). The body always ends with an empty line; padding replaces that
 * line with whitespace-only lines (see notice_pad()).
 *
 * The template format (policy/notices/NAME.txt; UTF-8, at most 64 KiB, LF or
 * CRLF, a byte-order mark ignored):
 *
 *   # comment lines, before the empty line only
 *   Subject: [mailmoat: {{verdict_mark.en}}] {{subject}}
 *   X-Anything: optional X- headers (at most 8; not X-Mailmoat-*)
 *   <empty line>
 *   body text with {{variables}}
 *
 * A header continues on lines that start with whitespace. {{name}} is
 * replaced by its value, {{name|text}} by text when the value is empty;
 * spaces inside the braces do not count; "{{{{" is a literal "{{"; a
 * reference never spans lines. Unknown variables, other headers, invalid
 * UTF-8 and control characters are load errors, reported as file:line.
 * Values from the network are cleaned (valid UTF-8, control characters,
 * CR and LF as spaces) and cut at 512 octets before they are substituted;
 * a rendered header is one line whatever the values hold.
 */
#include "policy/notice.h"

#include "proxy/spool.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gmime/gmime.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How much of the original we read looking for the end of its header block. */
#define NOTICE_HDR_MAX (256 * 1024)
#define NOTICE_READ_CHUNK (16 * 1024)

/* RFC 5322 2.1.1: lines SHOULD be at most 78 and MUST be at most 998 octets. */
#define NOTICE_LINE_SOFT 78
#define NOTICE_LINE_HARD 998

/* Bounds on network text copied into the notice's subject and body. */
#define NOTICE_SUBJECT_MAX 512
#define NOTICE_TEXT_MAX 512

/*
 * Used when the original has no usable From: RFC 5322 3.6 requires one, and
 * the notice comes from the proxy itself, so it names the proxy. The local
 * part is the RFC 5321 4.5.1 mailbox every site must have.
 */
#define NOTICE_FALLBACK_FROM "mailmoat <postmaster@localhost>"

/* The template of a notice_info without one: the one shipped as ja+en.txt. */
#define NOTICE_DEFAULT_TEMPLATE "ja+en"

static pthread_once_t notice_once = PTHREAD_ONCE_INIT;

static void notice_init_once(void)
{
	g_mime_init();
}

static struct notice_template *notice_builtin(const char *name);

/*
 * Sets up GMime and parses the built-in templates (rather than in the first
 * scan job); safe to call more than once. Call before starting threads.
 */
void notice_global_init(void)
{
	pthread_once(&notice_once, notice_init_once);
	(void)notice_builtin(NOTICE_DEFAULT_TEMPLATE);
}

/* strdup() of a GLib string, which is then freed; NULL stays NULL. */
static char *notice_take(char *gs)
{
	char *s;

	if (gs == NULL)
		return NULL;
	s = strdup(gs);
	g_free(gs);
	return s;
}

/*
 * Unfolds a raw header value (RFC 5322 2.2.3: drop the CRLFs, keep the
 * whitespace) and trims the whitespace GMime keeps after the colon and
 * before the line end. Bare CRs and LFs go too, so no value can end a
 * header line early when it is written back. Returns a GLib string.
 */
static char *notice_unfold(const char *raw)
{
	size_t n = strlen(raw), i, j = 0;
	char *s = g_malloc(n + 1);

	for (i = 0; i < n; i++) {
		if (raw[i] != '\r' && raw[i] != '\n')
			s[j++] = raw[i];
	}
	while (j > 0 && (s[j - 1] == ' ' || s[j - 1] == '\t'))
		j--;
	s[j] = '\0';
	for (i = 0; s[i] == ' ' || s[i] == '\t'; i++)
		;
	memmove(s, s + i, j - i + 1);
	return s;
}

/*
 * Makes network text safe to show: valid UTF-8 (bad bytes become U+FFFD),
 * control characters replaced by spaces, at most max bytes cut on a
 * character boundary (with an ellipsis when cut). NULL stays NULL. Returns
 * a GLib string.
 */
static char *notice_clean(const char *s, size_t max)
{
	GString *out;
	char *valid;
	const char *p;

	if (s == NULL)
		return NULL;
	valid = g_utf8_make_valid(s, -1);
	out = g_string_sized_new(strlen(valid) + 1);
	for (p = valid; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);
		size_t clen = (size_t)(g_utf8_next_char(p) - p);

		if (out->len + clen > max) {
			g_string_append(out, "…");
			break;
		}
		if (g_unichar_iscntrl(c))
			g_string_append_c(out, ' ');
		else
			g_string_append_len(out, p, (gssize)clen);
	}
	g_free(valid);
	return g_string_free(out, FALSE);
}

/*
 * Decodes an unfolded header value to UTF-8: RFC 2047 encoded words, and
 * undeclared 8-bit text through the parser options' fallback charsets.
 * Undeclared ISO-2022-JP (7-bit, so the fallbacks never see it) is still
 * common in Japanese mail; an escape sequence is the sign of it.
 */
static char *notice_decode(GMimeParserOptions *po, const char *value)
{
	char *conv = NULL, *dec;

	if (strchr(value, '\x1b') != NULL)
		conv = g_convert(value, -1, "UTF-8", "ISO-2022-JP", NULL, NULL, NULL);
	dec = g_mime_utils_header_decode_text(po, conv != NULL ? conv : value);
	g_free(conv);
	return dec;
}

/*
 * Finds the end of the header block in buf[0..len): the offset just past
 * the empty line, or 0 when there is none yet. from is where to resume.
 */
static size_t notice_hdr_end(const char *buf, size_t len, size_t from)
{
	size_t i;

	if (len > 0 && (buf[0] == '\n' || (len > 1 && buf[0] == '\r' && buf[1] == '\n')))
		return buf[0] == '\n' ? 1 : 2;
	for (i = from > 0 ? from - 1 : 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (i + 1 < len && buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

/* Fills h from the parsed message's headers (h is all NULL on entry). */
static int notice_fill(GMimeMessage *m, GMimeParserOptions *po, struct msg_headers *h)
{
	static const char *const names[] = {"From", "To",         "Cc",
	                                    "Date", "Message-ID", "Subject"};
	char **slots[] = {&h->from, &h->to,         &h->cc,
	                  &h->date, &h->message_id, &h->subject};
	GMimeHeaderList *hl = g_mime_object_get_header_list(GMIME_OBJECT(m));
	InternetAddressList *from;
	size_t i;

	_Static_assert(sizeof(names) / sizeof(names[0]) ==
	                   sizeof(slots) / sizeof(slots[0]),
	               "header name table and slots differ");
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		GMimeHeader *hd = g_mime_header_list_get_header(hl, names[i]);
		const char *raw;

		if (hd == NULL || (raw = g_mime_header_get_raw_value(hd)) == NULL)
			continue;
		*slots[i] = notice_take(notice_unfold(raw));
		if (*slots[i] == NULL)
			return -1;
	}
	if (h->subject != NULL) {
		char *dec = notice_decode(po, h->subject);

		h->subject_utf8 = notice_take(notice_clean(dec, (size_t)-1));
		g_free(dec);
		if (h->subject_utf8 == NULL)
			return -1;
	}
	if (h->from != NULL) {
		/* GMime's address parser decodes display names, quoted ones too */
		char *dec = NULL;

		from = g_mime_message_get_from(m);
		if (from != NULL && internet_address_list_length(from) > 0)
			dec = internet_address_list_to_string(from, NULL, FALSE);
		if (dec == NULL || *dec == '\0') {
			g_free(dec);
			dec = notice_decode(po, h->from);
		}
		h->from_utf8 = notice_take(notice_clean(dec, (size_t)-1));
		g_free(dec);
		if (h->from_utf8 == NULL)
			return -1;
	}
	return 0;
}

/*
 * Reads and parses the original's header block. Accepts a frozen spool;
 * fills *h with malloc'd strings (free with notice_headers_free()). Returns
 * 0, even for mail with no headers at all, or -1 on a spool read or
 * allocation failure (then *h is left empty).
 */
int notice_read_headers(const struct spool *sp, struct msg_headers *h)
{
	/* Fallbacks for undeclared 8-bit text, most likely first for our users */
	static const char *fallback[] = {"UTF-8", "CP932", "EUC-JP", "ISO-8859-1", NULL};
	GMimeParserOptions *po;
	GMimeStream *st;
	GMimeParser *parser;
	GMimeMessage *m;
	char *buf;
	size_t len = 0, end = 0, start = 0;
	int r = 0;

	memset(h, 0, sizeof(*h));
	buf = malloc(NOTICE_HDR_MAX);
	if (buf == NULL)
		return -1;
	while (end == 0 && len < NOTICE_HDR_MAX) {
		size_t want = NOTICE_HDR_MAX - len;
		ssize_t n;

		if (want > NOTICE_READ_CHUNK)
			want = NOTICE_READ_CHUNK;
		n = spool_pread(sp, buf + len, want, len);
		if (n < 0) {
			free(buf);
			return -1;
		}
		if (n == 0)
			break;
		end = notice_hdr_end(buf, len + (size_t)n, len);
		len += (size_t)n;
	}
	if (end == 0)
		end = len; /* no empty line in reach: take what we have */

	/*
	 * An mbox "From " separator is not a header and GMime would stop at it;
	 * "From : x" is (RFC 5322 4.5.1 obsolete syntax) and stays.
	 */
	if (end >= 5 && memcmp(buf, "From ", 5) == 0) {
		const char *nl = memchr(buf, '\n', end);
		size_t i = 5;

		while (i < end && (buf[i] == ' ' || buf[i] == '\t'))
			i++;
		if (i < end && buf[i] != ':')
			start = nl != NULL ? (size_t)(nl - buf) + 1 : end;
	}

	po = g_mime_parser_options_new();
	g_mime_parser_options_set_fallback_charsets(po, fallback);
	st = g_mime_stream_mem_new_with_buffer(buf + start, end - start);
	parser = g_mime_parser_new_with_stream(st);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	m = g_mime_parser_construct_message(parser, po);
	if (m != NULL) {
		r = notice_fill(m, po, h);
		g_object_unref(m);
	}
	g_object_unref(parser);
	g_object_unref(st);
	g_mime_parser_options_free(po);
	free(buf);
	if (r < 0)
		notice_headers_free(h);
	return r;
}

/* Frees every string in *h and zeroes it. Accepts a zeroed *h. */
void notice_headers_free(struct msg_headers *h)
{
	free(h->from);
	free(h->to);
	free(h->cc);
	free(h->date);
	free(h->message_id);
	free(h->subject);
	free(h->from_utf8);
	free(h->subject_utf8);
	memset(h, 0, sizeof(*h));
}

/*
 * Folds an unfolded value back into a raw header value for field name:
 * " value\n" with a line break inserted before whitespace wherever a line
 * would pass 78 octets, so unfolding restores the value exactly. A run of
 * more than 998 octets without whitespace (hostile; no real address or
 * date has one) is broken with an inserted space: a changed value beats a
 * line that servers and clients may truncate or reject (RFC 5322 2.1.1).
 */
static char *notice_fold(const char *name, const char *value)
{
	GString *out = g_string_new(" ");
	size_t col = strlen(name) + 2; /* "Name: " */
	const char *p = value;

	while (*p != '\0') {
		/* a segment: whitespace, then the word after it */
		size_t seg = strspn(p, " \t");
		size_t i;

		seg += strcspn(p + seg, " \t");
		if (p != value && col + seg > NOTICE_LINE_SOFT) {
			g_string_append_c(out, '\n');
			col = 0;
		}
		for (i = 0; i < seg; i++) {
			if (col >= NOTICE_LINE_HARD) {
				g_string_append(out, "\n ");
				col = 1;
			}
			g_string_append_c(out, p[i]);
			col++;
		}
		p += seg;
	}
	g_string_append_c(out, '\n');
	return g_string_free(out, FALSE);
}

/*
 * Appends a header whose raw value is the refolded value, kept as is (GMime
 * would re-encode a value it is given). The value is unfolded again first:
 * a CR or LF in it must never end the header line (header injection).
 */
static void notice_set_raw(GMimeObject *o, const char *name, const char *value)
{
	char *v = notice_unfold(value), *raw;
	GMimeHeader *hd;

	g_mime_object_append_header(o, name, v, NULL);
	hd = g_mime_header_list_get_header(g_mime_object_get_header_list(o), name);
	if (hd != NULL) {
		raw = notice_fold(name, v);
		g_mime_header_set_raw_value(hd, raw);
		g_free(raw);
	}
	g_free(v);
}

/* Text shown for NULL or empty network strings in the body. */
static const char *notice_or(const char *s, const char *dflt)
{
	return s != NULL && *s != '\0' ? s : dflt;
}

/* ---- templates ---- */

/* Bounds on a template (the file itself: NOTICE_TEMPLATE_MAX). */
#define NOTICE_TMPL_REFS_MAX 256 /* variable references: bounds the output */
#define NOTICE_TMPL_HDRS_MAX 8   /* X- headers */
#define NOTICE_TMPL_HNAME_MAX 40 /* X- header name: the first line keeps room */
#define NOTICE_TMPL_VNAME_MAX 40 /* a variable name, as quoted in errors */

/* A rendered header value is cut here (the original subject at 512 already). */
#define NOTICE_HDR_VALUE_MAX 1024

/* The variables a template may use; {{name}} or {{name|fallback}}. */
enum notice_var {
	NV_SUBJECT,
	NV_FROM,
	NV_DATE,
	NV_SIGNATURE,
	NV_REASON,
	NV_QUARANTINE_ID,
	NV_ADMIN_CONTACT,
	NV_VERDICT,
	NV_MARK_JA,
	NV_MARK_EN,
	NV_TEXT_JA,
	NV_TEXT_EN,
	NV_EXPLAIN_JA,
	NV_EXPLAIN_EN,
	NV_LABEL_JA,
	NV_LABEL_EN,
	NV_COUNT
};

static const char *const notice_var_names[] = {
    [NV_SUBJECT] = "subject",
    [NV_FROM] = "from",
    [NV_DATE] = "date",
    [NV_SIGNATURE] = "signature",
    [NV_REASON] = "reason",
    [NV_QUARANTINE_ID] = "quarantine_id",
    [NV_ADMIN_CONTACT] = "admin_contact",
    [NV_VERDICT] = "verdict",
    [NV_MARK_JA] = "verdict_mark.ja",
    [NV_MARK_EN] = "verdict_mark.en",
    [NV_TEXT_JA] = "verdict_text.ja",
    [NV_TEXT_EN] = "verdict_text.en",
    [NV_EXPLAIN_JA] = "verdict_explain.ja",
    [NV_EXPLAIN_EN] = "verdict_explain.en",
    [NV_LABEL_JA] = "reason_label.ja",
    [NV_LABEL_EN] = "reason_label.en",
};
_Static_assert(sizeof(notice_var_names) / sizeof(notice_var_names[0]) == NV_COUNT,
               "notice_var_names must name every enum notice_var member");

/* What a notice can be about; NK_OTHER for a verdict this file does not know. */
enum notice_kind {
	NK_INFECTED,
	NK_ERROR,
	NK_ENCRYPTED_ARCHIVE,
	NK_BLOCKED_ATTACHMENT,
	NK_OVERSIZE,
	NK_DENIED_SENDER,
	NK_OTHER,
	NK_COUNT
};

enum { NL_JA, NL_EN, NL_COUNT };

/*
 * The per-verdict phrases, Japanese and English. mark: for the Subject;
 * text: the verdict's name; explain: why the original was withheld, a
 * clause the shipped templates continue (ja "…ため、" then a line break;
 * en ", so this notice was delivered…"), with line breaks of its own where
 * it is long; label: what {{reason}} is, padded at render time.
 */
struct notice_phrases {
	const char *name; /* {{verdict}} and X-Mailmoat-Verdict */
	const char *mark[NL_COUNT];
	const char *text[NL_COUNT];
	const char *explain[NL_COUNT];
	const char *label[NL_COUNT];
};

static const struct notice_phrases notice_phrases[] = {
    [NK_INFECTED] = {"infected",
                     {"ウイルス隔離", "virus quarantined"},
                     {"ウイルス検出", "infected"},
                     {"元のメッセージからウイルス（マルウェア）が検出されたため、",
                      "A virus (malware) was found in the original message"},
                     {"検出名:", "Threat:"}},
    [NK_ERROR] = {"error",
                  {"検査エラーにより隔離", "quarantined, scan error"},
                  {"検査エラー", "scan error"},
                  {"元のメッセージのウイルス検査を完了できなかったため、安全のため",
                   "The original message could not be scanned for viruses"},
                  {"エラー内容:", "Error:"}},
    [NK_ENCRYPTED_ARCHIVE] =
        {"encrypted_archive",
         {"暗号化ファイルのため隔離", "quarantined, encrypted archive"},
         {"暗号化された圧縮ファイル", "encrypted archive"},
         {"元のメッセージにはパスワード付き（暗号化）の圧縮ファイルが"
          "\n含まれており、ウイルス検査ができないため、",
          "The original message contains an encrypted "
          "(password-protected)\narchive that cannot be scanned "
          "for viruses"},
         {"ファイル名:", "File:"}},
    [NK_BLOCKED_ATTACHMENT] =
        {"blocked_attachment",
         {"添付ファイル制限により隔離", "quarantined, blocked attachment"},
         {"受信できない添付ファイル", "blocked attachment"},
         {"元のメッセージに受信が許可されていない種類の添付ファイルが"
          "\n含まれていたため、",
          "The original message has an attachment of a type that "
          "is not\naccepted here"},
         {"添付ファイル:", "Attachment:"}},
    [NK_OVERSIZE] = {"oversize",
                     {"サイズ超過により隔離", "quarantined, too large"},
                     {"サイズ超過", "message too large"},
                     {"元のメッセージがウイルス検査できるサイズの上限を超えていたため、",
                      "The original message is too large to be scanned for viruses"},
                     {"詳細:", "Details:"}},
    [NK_DENIED_SENDER] = {"denied_sender",
                          {"差出人制限により隔離", "quarantined, sender denied"},
                          {"受信拒否の差出人", "sender denied"},
                          {"元のメッセージの差出人からの受信が許可されていないため、",
                           "The sender of the original message is not accepted here"},
                          {"理由:", "Reason:"}},
    [NK_OTHER] = {"other",
                  {"ポリシーにより隔離", "quarantined by policy"},
                  {"ポリシーによる隔離", "quarantined by policy"},
                  {"元のメッセージが受信ポリシーにより止められたため、",
                   "The original message was stopped by this site's mail policy"},
                  {"理由:", "Reason:"}},
};
_Static_assert(sizeof(notice_phrases) / sizeof(notice_phrases[0]) == NK_COUNT,
               "notice_phrases must cover every enum notice_kind member");

/*
 * Display columns reason_label.* is padded to: in the shipped layouts the
 * label, one space, then the value lines up with the other values.
 */
static const unsigned notice_label_width[NL_COUNT] = {13, 17};

/* One piece of a template: literal text, or a variable and its fallback. */
struct notice_seg {
	const char *text; /* literal; for a variable its fallback, NULL if none */
	size_t len;
	int var; /* -1: literal, else an enum notice_var */
};

/* A run of segments: segs[first .. first + n). */
struct notice_part {
	size_t first, n;
};

struct notice_hdr {
	char name[NOTICE_TMPL_HNAME_MAX + 1];
	struct notice_part value;
};

/*
 * A parsed template. Immutable once made (any thread may render it); only
 * refs changes. Literal segments point into text, the file's normalised
 * copy (CRLF to LF, without a byte-order mark).
 */
struct notice_template {
	atomic_uint refs;
	int builtin; /* static for the process' lifetime: ref and free do nothing */
	char *name;
	char *text;
	struct notice_seg *segs;
	size_t nsegs, cap, nrefs;
	struct notice_part subject;
	struct notice_hdr hdrs[NOTICE_TMPL_HDRS_MAX];
	size_t nhdrs;
	struct notice_part body;
};

/* "name:line: message" (or "name: message" for line 0) into err. */
static void notice_tmpl_err(char *err, size_t errlen, const char *name, unsigned line,
                            const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void notice_tmpl_err(char *err, size_t errlen, const char *name, unsigned line,
                            const char *fmt, ...)
{
	va_list ap;
	int n;

	if (err == NULL || errlen == 0)
		return;
	if (line > 0)
		n = snprintf(err, errlen, "%s:%u: ", name, line);
	else
		n = snprintf(err, errlen, "%s: ", name);
	if (n < 0 || (size_t)n >= errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static void notice_tmpl_destroy(struct notice_template *t)
{
	free(t->name);
	free(t->text);
	free(t->segs);
	free(t);
}

/* Appends a segment; -1 when out of memory. */
static int notice_tmpl_seg(struct notice_template *t, const char *text, size_t len,
                           int var)
{
	if (var < 0 && len == 0)
		return 0;
	if (t->nsegs == t->cap) {
		size_t cap = t->cap != 0 ? t->cap * 2 : 32;
		struct notice_seg *s = realloc(t->segs, cap * sizeof(*s));

		if (s == NULL)
			return -1;
		t->segs = s;
		t->cap = cap;
	}
	t->segs[t->nsegs].text = text;
	t->segs[t->nsegs].len = len;
	t->segs[t->nsegs].var = var;
	t->nsegs++;
	return 0;
}

/* The variable named name[0..len), or -1. */
static int notice_var_find(const char *name, size_t len)
{
	for (int i = 0; i < NV_COUNT; i++) {
		if (strlen(notice_var_names[i]) == len &&
		    memcmp(notice_var_names[i], name, len) == 0)
			return i;
	}
	return -1;
}

/* s[0..*n) without leading and trailing spaces and tabs. */
static const char *notice_trim(const char *s, size_t *n)
{
	/*
	 * NOLINTBEGIN(clang-analyzer-core.UndefinedBinaryOperatorResult): a
	 * false positive. The analyzer does not tie the strcspn()/strspn()
	 * results in notice_tmpl_headers() to the text malloc'd and filled in
	 * notice_tmpl_copy(), so any s[i] looks out of bounds; *n never runs
	 * past the NUL-terminated line there.
	 */
	while (*n > 0 && (s[0] == ' ' || s[0] == '\t')) {
		s++;
		(*n)--;
	}
	while (*n > 0 && (s[*n - 1] == ' ' || s[*n - 1] == '\t'))
		(*n)--;
	return s;
	/* NOLINTEND(clang-analyzer-core.UndefinedBinaryOperatorResult) */
}

/*
 * Parses template text s[0..n) (one header value, or the whole body) into
 * segments: literals, "{{{{" as a literal "{{", and "{{ name | fallback }}"
 * references, which never span lines. *line is the line s starts on and is
 * advanced past every newline. Returns 0, or -1 with err set.
 */
static int notice_tmpl_text(struct notice_template *t, const char *s, size_t n,
                            unsigned *line, char *err, size_t errlen)
{
	size_t i = 0, lit = 0;

	while (i < n) {
		const char *close, *name, *fb = NULL;
		size_t end, nlen, fblen = 0;
		int var;

		if (s[i] == '\n')
			(*line)++;
		if (s[i] != '{' || i + 1 >= n || s[i + 1] != '{') {
			i++;
			continue;
		}
		if (notice_tmpl_seg(t, s + lit, i - lit, -1) < 0)
			goto nomem;
		if (i + 3 < n && s[i + 2] == '{' && s[i + 3] == '{') {
			/* the escape: "{{{{" is a literal "{{" */
			if (notice_tmpl_seg(t, s + i, 2, -1) < 0)
				goto nomem;
			i += 4;
			lit = i;
			continue;
		}
		for (end = i + 2; end < n && s[end] != '\n'; end++) {
			if (s[end] == '}' && end + 1 < n && s[end + 1] == '}')
				break;
		}
		if (end >= n || s[end] != '}') {
			notice_tmpl_err(err, errlen, t->name, *line,
			                "unterminated {{ (a variable is {{name}} on one "
			                "line; write {{{{ for a literal {{)");
			return -1;
		}
		name = s + i + 2;
		close = memchr(name, '|', end - (i + 2));
		nlen = (close != NULL ? (size_t)(close - name) : end - (i + 2));
		name = notice_trim(name, &nlen);
		if (close != NULL) {
			fblen = (size_t)(s + end - (close + 1));
			fb = notice_trim(close + 1, &fblen);
		}
		var = notice_var_find(name, nlen);
		if (var < 0) {
			int shown = nlen > NOTICE_TMPL_VNAME_MAX ? NOTICE_TMPL_VNAME_MAX
			                                         : (int)nlen;
			char known[512];
			size_t k = 0;

			for (int v = 0; v < NV_COUNT && k < sizeof(known); v++) {
				int w = snprintf(known + k, sizeof(known) - k, "%s%s",
				                 v > 0 ? ", " : "", notice_var_names[v]);
				if (w < 0)
					break;
				k += (size_t)w;
			}
			notice_tmpl_err(err, errlen, t->name, *line,
			                "unknown variable {{%.*s}}%s (known: %s)", shown,
			                name, (size_t)shown < nlen ? "..." : "", known);
			return -1;
		}
		if (++t->nrefs > NOTICE_TMPL_REFS_MAX) {
			notice_tmpl_err(err, errlen, t->name, *line,
			                "more than %d variables", NOTICE_TMPL_REFS_MAX);
			return -1;
		}
		if (notice_tmpl_seg(t, fb, fblen, var) < 0)
			goto nomem;
		i = end + 2;
		lit = i;
	}
	if (notice_tmpl_seg(t, s + lit, n - lit, -1) < 0)
		goto nomem;
	return 0;
nomem:
	notice_tmpl_err(err, errlen, t->name, 0, "out of memory");
	return -1;
}

/*
 * Copies text[0..len) into t->text: without a UTF-8 byte-order mark, CRLF
 * as LF. Refuses (security: nothing the template says may end up as a raw
 * control character in a header) NUL, a CR not before LF, invalid UTF-8,
 * and control characters other than tab and newline.
 */
static int notice_tmpl_copy(struct notice_template *t, const char *text, size_t len,
                            char *err, size_t errlen)
{
	const char *p = text, *end = text + len, *bad;
	unsigned line = 1;
	char *o;

	if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
		p += 3;
	o = t->text = malloc(len + 1);
	if (o == NULL) {
		notice_tmpl_err(err, errlen, t->name, 0, "out of memory");
		return -1;
	}
	for (; p < end; p++) {
		if (*p == '\r' && p + 1 < end && p[1] == '\n')
			continue;
		if (*p == '\0' || *p == '\r') {
			notice_tmpl_err(err, errlen, t->name, line, "%s",
			                *p == '\0'
			                    ? "NUL byte"
			                    : "carriage return without a line feed");
			return -1;
		}
		line += *p == '\n';
		*o++ = *p;
	}
	*o = '\0';
	if (!g_utf8_validate(t->text, o - t->text, &bad)) {
		for (p = t->text, line = 1; p < bad && p < o; p++)
			line += *p == '\n';
		notice_tmpl_err(err, errlen, t->name, line,
		                "invalid UTF-8 (byte 0x%02x): save the file as UTF-8",
		                (unsigned char)*bad);
		return -1;
	}
	for (p = t->text, line = 1; *p != '\0'; p = g_utf8_next_char(p)) {
		gunichar c = g_utf8_get_char(p);

		if (c == '\n')
			line++;
		else if (c != '\t' && g_unichar_iscntrl(c)) {
			notice_tmpl_err(err, errlen, t->name, line,
			                "control character U+%04X", (unsigned)c);
			return -1;
		}
	}
	return 0;
}

/* True for a header name this file accepts from a template: an X- header. */
static int notice_tmpl_xname(const char *name, size_t n)
{
	return n > 2 && g_ascii_strncasecmp(name, "X-", 2) == 0;
}

/*
 * Parses the header section: "Name: value" lines (Subject once, X- headers),
 * continuation lines (leading whitespace, joined with one space), "#"
 * comments, up to the empty line. Returns the offset of the body, or -1.
 */
static long notice_tmpl_headers(struct notice_template *t, unsigned *line_r, char *err,
                                size_t errlen)
{
	const char *s = t->text;
	struct notice_part *cur = NULL;
	int have_subject = 0;
	size_t pos = 0, len = strlen(s);
	unsigned line = 1;

	for (;; line++) {
		const char *l = s + pos, *v;
		size_t ll = strcspn(l, "\n"), nlen, vlen;
		unsigned vline = line;

		if (pos >= len) {
			notice_tmpl_err(
			    err, errlen, t->name, line,
			    have_subject
			        ? "no empty line between the headers and the body"
			        : "no Subject header (a template starts with "
			          "\"Subject: ...\", an empty line, then the body)");
			return -1;
		}
		pos += ll + (l[ll] == '\n');
		if (ll == 0)
			break;
		if (l[0] == '#')
			continue;
		if (l[0] == ' ' || l[0] == '\t') {
			if (cur == NULL) {
				notice_tmpl_err(err, errlen, t->name, line,
				                "continuation line without a header");
				return -1;
			}
			vlen = ll;
			v = notice_trim(l, &vlen);
			if (notice_tmpl_seg(t, " ", 1, -1) < 0 ||
			    notice_tmpl_text(t, v, vlen, &vline, err, errlen) < 0)
				return -1;
			cur->n = t->nsegs - cur->first;
			continue;
		}
		nlen = strspn(
		    l, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-");
		if (nlen == 0 || nlen >= ll || l[nlen] != ':') {
			notice_tmpl_err(
			    err, errlen, t->name, line,
			    "expected \"Name: value\" or an empty line before the "
			    "body");
			return -1;
		}
		if (nlen == 7 && g_ascii_strncasecmp(l, "Subject", 7) == 0) {
			if (have_subject) {
				notice_tmpl_err(err, errlen, t->name, line,
				                "a second Subject");
				return -1;
			}
			have_subject = 1;
			cur = &t->subject;
		} else if (notice_tmpl_xname(l, nlen)) {
			if (nlen >= 10 && g_ascii_strncasecmp(l, "X-Mailmoat", 10) == 0) {
				notice_tmpl_err(
				    err, errlen, t->name, line,
				    "X-Mailmoat headers are set by mailmoat itself");
				return -1;
			}
			if (nlen > NOTICE_TMPL_HNAME_MAX ||
			    t->nhdrs >= NOTICE_TMPL_HDRS_MAX) {
				notice_tmpl_err(
				    err, errlen, t->name, line,
				    "at most %d X- headers of at most %d characters",
				    NOTICE_TMPL_HDRS_MAX, NOTICE_TMPL_HNAME_MAX);
				return -1;
			}
			memcpy(t->hdrs[t->nhdrs].name, l, nlen);
			t->hdrs[t->nhdrs].name[nlen] = '\0';
			cur = &t->hdrs[t->nhdrs++].value;
		} else {
			notice_tmpl_err(
			    err, errlen, t->name, line,
			    "a template sets Subject and X- headers only, not %.*s "
			    "(From, To, Date... are the original's)",
			    (int)nlen, l);
			return -1;
		}
		vlen = ll - nlen - 1;
		v = notice_trim(l + nlen + 1, &vlen);
		cur->first = t->nsegs;
		if (notice_tmpl_text(t, v, vlen, &vline, err, errlen) < 0)
			return -1;
		cur->n = t->nsegs - cur->first;
	}
	if (!have_subject) {
		notice_tmpl_err(err, errlen, t->name, line,
		                "no Subject header before the empty line");
		return -1;
	}
	*line_r = line + 1;
	return (long)pos;
}

/*
 * Parses a template from memory. Accepts any bytes; returns a template
 * with one reference (the caller's), or NULL with err set.
 */
struct notice_template *notice_template_parse(const char *name, const char *text,
                                              size_t len, char *err, size_t errlen)
{
	struct notice_template *t;
	unsigned line;
	long body;

	if (len > NOTICE_TEMPLATE_MAX) {
		notice_tmpl_err(err, errlen, name, 0, "larger than %d octets",
		                NOTICE_TEMPLATE_MAX);
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL || (t->name = strdup(name)) == NULL) {
		free(t);
		notice_tmpl_err(err, errlen, name, 0, "out of memory");
		return NULL;
	}
	atomic_init(&t->refs, 1);
	if (notice_tmpl_copy(t, text, len, err, errlen) < 0 ||
	    (body = notice_tmpl_headers(t, &line, err, errlen)) < 0) {
		notice_tmpl_destroy(t);
		return NULL;
	}
	t->body.first = t->nsegs;
	if (notice_tmpl_text(t, t->text + body, strlen(t->text + body), &line, err,
	                     errlen) < 0) {
		notice_tmpl_destroy(t);
		return NULL;
	}
	t->body.n = t->nsegs - t->body.first;
	return t;
}

/*
 * Reads and parses the template file at path (a regular file of at most
 * NOTICE_TEMPLATE_MAX octets). Returns it with one reference, or NULL with
 * err set.
 */
struct notice_template *notice_template_load(const char *path, char *err, size_t errlen)
{
	struct notice_template *t = NULL;
	struct stat st;
	char *buf;
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	if (fd < 0) {
		notice_tmpl_err(err, errlen, path, 0, "%s", g_strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		notice_tmpl_err(err, errlen, path, 0, "not a regular file");
		close(fd);
		return NULL;
	}
	buf = malloc(NOTICE_TEMPLATE_MAX + 1);
	if (buf == NULL) {
		notice_tmpl_err(err, errlen, path, 0, "out of memory");
		close(fd);
		return NULL;
	}
	/* one octet more than allowed tells a file that is too large */
	while (len < NOTICE_TEMPLATE_MAX + 1) {
		ssize_t n = read(fd, buf + len, NOTICE_TEMPLATE_MAX + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			notice_tmpl_err(err, errlen, path, 0, "%s", g_strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	t = notice_template_parse(path, buf, len, err, errlen);
out:
	free(buf);
	close(fd);
	return t;
}

/*
 * The shipped templates, built in so that the names work without any file
 * (and the default needs none). policy/notices/NAME.txt are the same texts
 * with comments: test_notice checks that both render alike.
 */
#define NOTICE_JA_BODY                                                                                    \
	"このメッセージは mailmoat によって隔離されました。\n"                        \
	"\n"                                                                                              \
	"{{verdict_explain.ja}}\n"                                                                        \
	"元のメッセージの代わりにこのお知らせをお届けしています。\n"          \
	"元のメッセージは隔離領域に保管されており、失われてはいません。\n" \
	"\n"
#define NOTICE_JA_CONTACT                                                                \
	"元のメッセージが必要な場合は、上記の隔離IDを添えて\n"   \
	"管理者（{{admin_contact|システム管理者}}）までご連絡ください。\n"
#define NOTICE_EN_BODY                                                                   \
	"This message was quarantined by mailmoat.\n"                                    \
	"\n"                                                                             \
	"{{verdict_explain.en}}, so this\n"                                              \
	"notice was delivered in its place.\n"                                           \
	"The original is kept in quarantine and has not been lost.\n"                    \
	"\n"
#define NOTICE_EN_CONTACT                                                                \
	"If you need the original message, contact "                                     \
	"{{admin_contact|your system administrator}}\n"                                  \
	"and quote the quarantine ID above.\n"

static const char notice_builtin_jaen[] =
    "Subject: [mailmoat: {{verdict_mark.ja}} / {{verdict_mark.en}}] {{subject}}\n"
    "\n" NOTICE_JA_BODY "  判定:         {{verdict_text.ja}} ({{verdict_text.en}})\n"
    "  {{reason_label.ja}} {{reason|-}}\n"
    "  隔離ID:       {{quarantine_id|-}}\n"
    "  元の差出人:   {{from|（不明）}}\n"
    "  元の件名:     {{subject|（件名なし）}}\n"
    "\n" NOTICE_JA_CONTACT "\n"
    "----------------------------------------------------------------------\n"
    "\n" NOTICE_EN_BODY "  Verdict:          {{verdict_text.en}}\n"
    "  {{reason_label.en}} {{reason|-}}\n"
    "  Quarantine ID:    {{quarantine_id|-}}\n"
    "  Original sender:  {{from|(unknown)}}\n"
    "  Original subject: {{subject|(no subject)}}\n"
    "\n" NOTICE_EN_CONTACT;

static const char notice_builtin_ja[] =
    "Subject: [mailmoat: {{verdict_mark.ja}}] {{subject}}\n"
    "\n" NOTICE_JA_BODY "  判定:         {{verdict_text.ja}}\n"
    "  {{reason_label.ja}} {{reason|-}}\n"
    "  隔離ID:       {{quarantine_id|-}}\n"
    "  元の差出人:   {{from|（不明）}}\n"
    "  元の件名:     {{subject|（件名なし）}}\n"
    "  元の日付:     {{date|（不明）}}\n"
    "\n" NOTICE_JA_CONTACT;

static const char notice_builtin_en[] =
    "Subject: [mailmoat: {{verdict_mark.en}}] {{subject}}\n"
    "\n" NOTICE_EN_BODY "  Verdict:          {{verdict_text.en}}\n"
    "  {{reason_label.en}} {{reason|-}}\n"
    "  Quarantine ID:    {{quarantine_id|-}}\n"
    "  Original sender:  {{from|(unknown)}}\n"
    "  Original subject: {{subject|(no subject)}}\n"
    "  Original date:    {{date|(unknown)}}\n"
    "\n" NOTICE_EN_CONTACT;

static const struct {
	const char *name;
	const char *text;
	size_t len;
} notice_builtin_src[] = {
    {"ja+en", notice_builtin_jaen, sizeof(notice_builtin_jaen) - 1},
    {"ja", notice_builtin_ja, sizeof(notice_builtin_ja) - 1},
    {"en", notice_builtin_en, sizeof(notice_builtin_en) - 1},
};
#define NOTICE_N_BUILTIN (sizeof(notice_builtin_src) / sizeof(notice_builtin_src[0]))

static struct notice_template *notice_builtins[NOTICE_N_BUILTIN];
static pthread_once_t notice_builtin_once = PTHREAD_ONCE_INIT;

/* Parses the built-ins once; a failure is a bug here, caught by test_notice. */
static void notice_builtin_init(void)
{
	for (size_t i = 0; i < NOTICE_N_BUILTIN; i++) {
		char name[64], err[256];
		struct notice_template *t;

		snprintf(name, sizeof(name), "built-in %s", notice_builtin_src[i].name);
		t = notice_template_parse(name, notice_builtin_src[i].text,
		                          notice_builtin_src[i].len, err, sizeof(err));
		assert(t != NULL);
		if (t != NULL)
			t->builtin = 1;
		notice_builtins[i] = t;
	}
}

/* The built-in template called name ("ja+en", "ja", "en"), or NULL. */
static struct notice_template *notice_builtin(const char *name)
{
	pthread_once(&notice_builtin_once, notice_builtin_init);
	for (size_t i = 0; i < NOTICE_N_BUILTIN; i++) {
		if (strcmp(notice_builtin_src[i].name, name) == 0)
			return notice_builtins[i];
	}
	return NULL;
}

/*
 * Resolves a configured template name (see notice.h): a path with a '/',
 * else DIR/NAME.txt when it exists, else a built-in. Returns a reference
 * the caller releases, or NULL with err set.
 */
struct notice_template *notice_template_open(const char *dir, const char *name, char *err,
                                             size_t errlen)
{
	struct notice_template *t;
	struct stat st;
	char path[4096];
	size_t n;

	if (name == NULL || *name == '\0')
		name = "ja+en";
	if (strchr(name, '/') != NULL)
		return notice_template_load(name, err, errlen);
	n = strlen(name);
	if (n > 64 || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                           "0123456789_+-") != n) {
		notice_tmpl_err(err, errlen, "notice template", 0,
		                "\"%.64s\" is neither a name (ja, en, ja+en, or NAME for "
		                "templates_dir/NAME.txt) nor a path with a '/'",
		                name);
		return NULL;
	}
	if (dir != NULL && *dir != '\0') {
		int r = snprintf(path, sizeof(path), "%s/%s.txt", dir, name);

		if (r > 0 && (size_t)r < sizeof(path) &&
		    (stat(path, &st) == 0 || errno != ENOENT))
			return notice_template_load(path, err, errlen);
	}
	t = notice_builtin(name);
	if (t == NULL && dir != NULL && *dir != '\0')
		notice_tmpl_err(
		    err, errlen, "notice template", 0,
		    "no %s/%s.txt, and \"%s\" is not built in (ja, en, ja+en)", dir, name,
		    name);
	else if (t == NULL)
		notice_tmpl_err(err, errlen, "notice template", 0,
		                "\"%s\" is not built in (ja, en, ja+en) and no "
		                "templates_dir is set",
		                name);
	return t;
}

/* Loads every DIR/ *.txt that is not hidden; the count or -1 and err. */
int notice_templates_check(const char *dir, char *err, size_t errlen)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int count = 0;

	if (d == NULL) {
		notice_tmpl_err(err, errlen, dir, 0, "%s", g_strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		struct notice_template *t;
		char *path;

		if (de->d_name[0] == '.' || n < 5 ||
		    strcmp(de->d_name + n - 4, ".txt") != 0)
			continue;
		path = g_strdup_printf("%s/%s", dir, de->d_name);
		t = notice_template_load(path, err, errlen);
		g_free(path);
		if (t == NULL) {
			closedir(d);
			return -1;
		}
		notice_template_free(&t);
		count++;
	}
	closedir(d);
	return count;
}

/* Adds a reference (atomically); the built-ins need none. Returns t. */
struct notice_template *notice_template_ref(struct notice_template *t)
{
	if (t != NULL && !t->builtin)
		atomic_fetch_add(&t->refs, 1);
	return t;
}

/* Drops the caller's reference, frees t at the last, NULLs *tp. */
void notice_template_free(struct notice_template **tp)
{
	struct notice_template *t = *tp;

	*tp = NULL;
	if (t == NULL || t->builtin)
		return;
	if (atomic_fetch_sub(&t->refs, 1) == 1)
		notice_tmpl_destroy(t);
}

/* The file or built-in name of t (owned by t). */
const char *notice_template_name(const struct notice_template *t)
{
	return t->name;
}

/* ---- rendering ---- */

/* The notice kind for a verdict name (see struct notice_info). */
static enum notice_kind notice_kind_of(const char *verdict)
{
	if (verdict == NULL || strcmp(verdict, "malicious") == 0)
		return NK_INFECTED;
	if (strcmp(verdict, "scan_error") == 0)
		return NK_ERROR;
	for (int k = 0; k < NK_OTHER; k++) {
		if (strcmp(verdict, notice_phrases[k].name) == 0)
			return (enum notice_kind)k;
	}
	return NK_OTHER;
}

/*
 * The verdict as {{verdict}} and X-Mailmoat-Verdict show it: the kind's
 * name, or for a kind this file does not know, the caller's name reduced
 * to [A-Za-z0-9_-] (it goes into a header as is). A GLib string.
 */
static char *notice_verdict_name(const char *verdict, enum notice_kind k)
{
	char *s;

	if (k != NK_OTHER || verdict == NULL || *verdict == '\0')
		return g_strdup(notice_phrases[k].name);
	s = g_strndup(verdict, 32);
	for (char *c = s; *c != '\0'; c++) {
		if (!g_ascii_isalnum(*c) && *c != '_' && *c != '-')
			*c = '_';
	}
	return s;
}

/* label, then spaces up to width display columns (East Asian wide: 2). */
static char *notice_pad_label(const char *label, unsigned width)
{
	GString *g = g_string_new(label);
	unsigned w = 0;

	for (const char *p = label; *p != '\0'; p = g_utf8_next_char(p))
		w += g_unichar_iswide(g_utf8_get_char(p)) ? 2 : 1;
	while (w++ < width)
		g_string_append_c(g, ' ');
	return g_string_free(g, FALSE);
}

/*
 * The values of the variables for one notice: network text cleaned and
 * cut at NOTICE_TEXT_MAX, phrases as they are. GLib strings in vals[]
 * (NULL: absent), freed with notice_vals_free().
 */
static void notice_vals(const struct msg_headers *h, const struct notice_info *ni,
                        enum notice_kind k, char *vals[NV_COUNT])
{
	const struct notice_phrases *ph = &notice_phrases[k];
	const char *reason =
	    ni->reason != NULL && *ni->reason != '\0' ? ni->reason : ni->signature;

	vals[NV_SUBJECT] = notice_clean(
	    h->subject_utf8 != NULL ? h->subject_utf8 : h->subject, NOTICE_SUBJECT_MAX);
	vals[NV_FROM] =
	    notice_clean(h->from_utf8 != NULL ? h->from_utf8 : h->from, NOTICE_TEXT_MAX);
	vals[NV_DATE] = notice_clean(h->date, NOTICE_TEXT_MAX);
	vals[NV_SIGNATURE] = notice_clean(ni->signature, NOTICE_TEXT_MAX);
	vals[NV_REASON] = notice_clean(reason, NOTICE_TEXT_MAX);
	vals[NV_QUARANTINE_ID] = notice_clean(ni->quarantine_id, NOTICE_TEXT_MAX);
	vals[NV_ADMIN_CONTACT] = notice_clean(ni->admin_contact, NOTICE_TEXT_MAX);
	vals[NV_VERDICT] = notice_verdict_name(ni->verdict, k);
	for (int l = 0; l < NL_COUNT; l++) {
		vals[NV_MARK_JA + l] = g_strdup(ph->mark[l]);
		vals[NV_TEXT_JA + l] = g_strdup(ph->text[l]);
		vals[NV_EXPLAIN_JA + l] = g_strdup(ph->explain[l]);
		vals[NV_LABEL_JA + l] =
		    notice_pad_label(ph->label[l], notice_label_width[l]);
	}
	_Static_assert(NV_MARK_EN == NV_MARK_JA + NL_EN &&
	                   NV_TEXT_EN == NV_TEXT_JA + NL_EN &&
	                   NV_EXPLAIN_EN == NV_EXPLAIN_JA + NL_EN &&
	                   NV_LABEL_EN == NV_LABEL_JA + NL_EN,
	               "the .en variable follows its .ja one");
}

static void notice_vals_free(char *vals[NV_COUNT])
{
	for (int i = 0; i < NV_COUNT; i++)
		g_free(vals[i]);
}

/* Appends part p of t with the values vals: a fallback stands for "" or NULL. */
static void notice_render(const struct notice_template *t, struct notice_part p,
                          char *const vals[NV_COUNT], GString *out)
{
	for (size_t i = p.first; i < p.first + p.n; i++) {
		const struct notice_seg *s = &t->segs[i];
		const char *v;

		if (s->var < 0) {
			g_string_append_len(out, s->text, (gssize)s->len);
			continue;
		}
		v = vals[s->var];
		if (v != NULL && *v != '\0')
			g_string_append(out, v);
		else if (s->text != NULL)
			g_string_append_len(out, s->text, (gssize)s->len);
	}
}

/*
 * A header value rendered from part p: one line (security: control
 * characters, CR and LF from any source become spaces, so no value can
 * start a header of its own), valid UTF-8, trimmed, at most
 * NOTICE_HDR_VALUE_MAX octets. A GLib string.
 */
static char *notice_render_header(const struct notice_template *t, struct notice_part p,
                                  char *const vals[NV_COUNT])
{
	GString *g = g_string_new(NULL);
	char *v;

	notice_render(t, p, vals, g);
	v = notice_clean(g->str, NOTICE_HDR_VALUE_MAX);
	g_string_free(g, TRUE);
	return g_strstrip(v);
}

/* ---- RFC 2047 ---- */

/*
 * RFC 2047 2: an encoded word is at most 75 octets; "=?UTF-8?B?" and "?="
 * take 12 of them, leaving 60 base64 characters: 45 octets of text.
 */
#define NOTICE_EW_OVERHEAD 12
#define NOTICE_EW_TEXT_MAX 45
/* Fewer octets than this left on a line (and more to come): fold first. */
#define NOTICE_EW_TEXT_MIN 12

/*
 * True when a word cannot go out as it is: 8-bit, something a decoder
 * would take for an encoded word ("=?"), or too long to fit a folded line.
 */
static int notice_needs_ew(const char *w, size_t n)
{
	if (n > NOTICE_LINE_SOFT - 2)
		return 1;
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)w[i] >= 0x80 ||
		    (w[i] == '=' && i + 1 < n && w[i + 1] == '?'))
			return 1;
	}
	return 0;
}

/*
 * How much of s[0..n) (UTF-8) the next B encoded word carries, at most max
 * octets: whole characters (RFC 2047 5(3)) and, unless that is all of s, a
 * multiple of 3 octets, so that the word needs no base64 padding: GMime
 * 3.2, for one, decodes adjacent B words of a charset as one base64 stream
 * and loses what follows a padded word. 0 when there is no such prefix.
 */
static size_t notice_ew_take(const char *s, size_t n, size_t max)
{
	size_t i = 0, aligned = 0;

	while (i < n) {
		size_t c = (size_t)g_utf8_skip[(unsigned char)s[i]];

		if (i + c > max)
			break;
		i += c;
		if (i % 3 == 0)
			aligned = i;
	}
	return i == n ? n : aligned;
}

/* Octets of text a B word after seplen octets of whitespace at col can carry. */
static size_t notice_ew_room(size_t col, size_t seplen)
{
	size_t room = 0;

	if (col + seplen + NOTICE_EW_OVERHEAD < NOTICE_LINE_SOFT)
		room = (NOTICE_LINE_SOFT - col - seplen - NOTICE_EW_OVERHEAD) / 4 * 3;
	return room < NOTICE_EW_TEXT_MAX ? room : NOTICE_EW_TEXT_MAX;
}

/* An unstructured header value being folded: the text and its current column. */
struct notice_hout {
	GString *out;
	size_t col;
};

/* Adds sep and word, folding before sep when the line would pass 78. */
static void notice_put_word(struct notice_hout *o, const char *sep, size_t seplen,
                            const char *w, size_t n)
{
	if (seplen > 0 && o->col + seplen + n > NOTICE_LINE_SOFT) {
		g_string_append_c(o->out, '\n');
		o->col = 0;
	}
	g_string_append_len(o->out, sep, (gssize)seplen);
	g_string_append_len(o->out, w, (gssize)n);
	o->col += seplen + n;
}

/*
 * Adds s[0..n) (UTF-8) as encoded words of whole characters, filling the
 * current line before folding. The space between two encoded words is not
 * part of the text (RFC 2047 6.2), so they may split the text between any
 * two characters; the sep before the first one is kept. B words as a rule;
 * a Q word for one character where no B word could end unpadded (a 4-octet
 * character before 3-octet ones: see notice_ew_take()).
 */
static void notice_put_encoded(struct notice_hout *o, const char *sep, size_t seplen,
                               const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t full = notice_ew_take(s + i, n - i, NOTICE_EW_TEXT_MAX), take,
		       wlen;
		GString *w = g_string_new(NULL);

		if (full == 0) {
			/* RFC 2047 4.2: Q, all but letters and digits as =XX */
			size_t c = (size_t)g_utf8_skip[(unsigned char)s[i]];

			g_string_append(w, "=?UTF-8?Q?");
			for (size_t j = 0; j < c; j++) {
				unsigned char b = (unsigned char)s[i + j];

				if (g_ascii_isalnum(b))
					g_string_append_c(w, (char)b);
				else
					g_string_append_printf(w, "=%02X", b);
			}
			g_string_append(w, "?=");
			take = c;
		} else {
			char *b64;

			take =
			    notice_ew_take(s + i, n - i, notice_ew_room(o->col, seplen));
			if (take < full && take < NOTICE_EW_TEXT_MIN && seplen > 0) {
				/* not worth a word here: the next line takes a full one
				 */
				g_string_append_c(o->out, '\n');
				o->col = 0;
				take = full;
			} else if (take == 0) {
				take = full; /* no room and no fold (a long name):
				                overlong */
			}
			b64 = g_base64_encode((const guchar *)s + i, take);
			g_string_append_printf(w, "=?UTF-8?B?%s?=", b64);
			g_free(b64);
		}
		wlen = w->len;
		if (seplen > 0 && o->col > 0 &&
		    o->col + seplen + wlen > NOTICE_LINE_SOFT) {
			g_string_append_c(o->out, '\n');
			o->col = 0;
		}
		g_string_append_len(o->out, sep, (gssize)seplen);
		g_string_append_len(o->out, w->str, (gssize)w->len);
		o->col += seplen + wlen;
		g_string_free(w, TRUE);
		i += take;
		sep = " ";
		seplen = 1;
	}
}

/*
 * Encodes an unstructured header value (UTF-8, one line, no control
 * characters) for field name: ASCII words as they are, runs of other words
 * (with the whitespace between them) as UTF-8 B encoded words of at most
 * 75 octets that never split a character (RFC 2047 2, 5(1)), folded
 * before whitespace so lines stay within 78 octets (RFC 5322 2.1.1, 2.2.3).
 * Returns the raw value, " ...\n", as GMime keeps it: a GLib string.
 *
 * GMime's own encoder is not used: it makes an encoded word of any length
 * out of a long run of Japanese text.
 */
static char *notice_encode_header(const char *name, const char *value)
{
	struct notice_hout o = {g_string_new(" "), strlen(name) + 2};
	const char *p = value;
	int first = 1;

	for (;;) {
		size_t seplen = strspn(p, " \t"), n;
		const char *w = p + seplen, *end;

		n = strcspn(w, " \t");
		if (n == 0)
			break;
		if (first)
			seplen = 0;
		if (!notice_needs_ew(w, n)) {
			notice_put_word(&o, p, seplen, w, n);
			p = w + n;
			first = 0;
			continue;
		}
		/* the following words that need encoding too join this run */
		end = w + n;
		for (;;) {
			size_t s2 = strspn(end, " \t"), n2 = strcspn(end + s2, " \t");

			if (n2 == 0 || !notice_needs_ew(end + s2, n2))
				break;
			end += s2 + n2;
		}
		notice_put_encoded(&o, first ? "" : p, seplen, w, (size_t)(end - w));
		p = end;
		first = 0;
	}
	g_string_append_c(o.out, '\n');
	return g_string_free(o.out, FALSE);
}

/*
 * Appends header name with value (UTF-8, one line), RFC 2047-encoded and
 * folded by notice_encode_header() and kept as that raw value.
 */
static void notice_set_encoded(GMimeObject *o, const char *name, const char *value)
{
	GMimeHeaderList *hl = g_mime_object_get_header_list(o);
	char *raw = notice_encode_header(name, value);
	int n;

	g_mime_object_append_header(o, name, value, "utf-8");
	n = g_mime_header_list_get_count(hl);
	if (n > 0)
		g_mime_header_set_raw_value(g_mime_header_list_get_header_at(hl, n - 1),
		                            raw);
	g_free(raw);
}

/* Composes the notice from template t as a GMime message (the caller unrefs it). */
static GMimeMessage *notice_compose(const struct msg_headers *h,
                                    const struct notice_info *ni,
                                    const struct notice_template *t)
{
	enum notice_kind k = notice_kind_of(ni->verdict);
	GMimeMessage *m = g_mime_message_new(FALSE);
	GMimeObject *o = GMIME_OBJECT(m);
	char *vals[NV_COUNT] = {0};
	GMimeStream *st;
	GMimeDataWrapper *dw;
	GMimePart *part;
	GString *body;
	char *subj, *qid;

	if (h->from != NULL && *h->from != '\0')
		notice_set_raw(o, "From", h->from);
	else
		notice_set_raw(o, "From", NOTICE_FALLBACK_FROM);
	if (h->to != NULL && *h->to != '\0')
		notice_set_raw(o, "To", h->to);
	if (h->cc != NULL && *h->cc != '\0')
		notice_set_raw(o, "Cc", h->cc);
	if (h->date != NULL && *h->date != '\0') {
		notice_set_raw(o, "Date", h->date);
	} else {
		/* no date to sort by: the notice is dated when it is made */
		GDateTime *now = g_date_time_new_now_utc();

		g_mime_message_set_date(m, now);
		g_date_time_unref(now);
	}

	notice_vals(h, ni, k, vals);
	subj = notice_render_header(t, t->subject, vals);
	notice_set_encoded(o, "Subject", subj);
	g_free(subj);

	if (h->message_id != NULL && *h->message_id != '\0')
		notice_set_raw(o, "Message-ID", h->message_id);

	/* our own values: printable ASCII only, whatever the caller passed */
	qid = notice_clean(notice_or(ni->quarantine_id, "-"), 64);
	for (char *c = qid; *c != '\0'; c++) {
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
			*c = '_';
	}
	g_mime_object_append_header(o, "X-Mailmoat-Quarantine-Id", qid, NULL);
	g_mime_object_append_header(o, "X-Mailmoat-Verdict", vals[NV_VERDICT], NULL);
	g_free(qid);
	for (size_t i = 0; i < t->nhdrs; i++) {
		char *v = notice_render_header(t, t->hdrs[i].value, vals);

		notice_set_encoded(o, t->hdrs[i].name, v);
		g_free(v);
	}

	/*
	 * The body ends in exactly one empty line, whatever the file ends in
	 * (notice_build() and the padding rely on it).
	 */
	body = g_string_sized_new(4096);
	notice_render(t, t->body, vals, body);
	while (body->len > 0 && strchr(" \t\n", body->str[body->len - 1]) != NULL)
		g_string_truncate(body, body->len - 1);
	g_string_append(body, "\n\n");
	notice_vals_free(vals);

	/* explicit UTF-8 content: g_mime_text_part_set_text() may pick another charset */
	part = g_mime_part_new_with_type("text", "plain");
	g_mime_object_set_content_type_parameter(GMIME_OBJECT(part), "charset", "utf-8");
	st = g_mime_stream_mem_new_with_buffer(body->str, body->len);
	dw = g_mime_data_wrapper_new_with_stream(st, GMIME_CONTENT_ENCODING_DEFAULT);
	g_mime_part_set_content(part, dw);
	g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
	g_mime_message_set_mime_part(m, GMIME_OBJECT(part));
	g_object_unref(dw);
	g_object_unref(st);
	g_object_unref(part);
	g_string_free(body, TRUE);
	return m;
}

/*
 * Writes pad_len octets of whitespace-only lines at dst: each line is
 * spaces and CRLF, 2 to 78 octets, so no line passes the RFC 5322 SHOULD
 * limit. pad_len must be at least 2. Quoted-printable decoders delete
 * trailing whitespace (RFC 2045 6.7 rule 3), so the lines decode to empty
 * lines at the end of the body.
 */
static void notice_pad(char *dst, uint64_t pad_len)
{
	uint64_t lines = (pad_len + NOTICE_LINE_SOFT - 1) / NOTICE_LINE_SOFT;
	uint64_t base = pad_len / lines, extra = pad_len % lines, i;

	for (i = 0; i < lines; i++) {
		size_t l = (size_t)(base + (i < extra ? 1 : 0));

		memset(dst, ' ', l - 2);
		dst[l - 2] = '\r';
		dst[l - 1] = '\n';
		dst += l;
	}
}

/*
 * Builds the notice for the original described by h. Accepts h from
 * notice_read_headers() (any field may be NULL) and ni (strings may be
 * NULL). Returns 0 with a malloc'd buffer in *out_r (the caller frees it)
 * of *len_r octets: CRLF line endings, ending in CRLF, exactly ni->pad_to
 * octets when that is more than the notice needs. Returns -1 on
 * allocation failure.
 */
int notice_build(const struct msg_headers *h, const struct notice_info *ni, char **out_r,
                 size_t *len_r)
{
	GMimeFormatOptions *fo = g_mime_format_options_new();
	GMimeStream *st = g_mime_stream_mem_new();
	const struct notice_template *t =
	    ni->tmpl != NULL ? ni->tmpl : notice_builtin(NOTICE_DEFAULT_TEMPLATE);
	GMimeMessage *m;
	GByteArray *ba;
	size_t len, keep;
	uint64_t total;
	char *out;

	*out_r = NULL;
	*len_r = 0;
	if (t == NULL) {
		g_object_unref(st);
		g_mime_format_options_free(fo);
		return -1;
	}
	m = notice_compose(h, ni, t);
	g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
	g_mime_object_write_to_stream(GMIME_OBJECT(m), fo, st);
	ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(st));

	/* The body text ends with an empty line; make sure the output does too */
	len = ba->len;
	if (len < 2 || memcmp(ba->data + len - 2, "\r\n", 2) != 0)
		g_byte_array_append(ba, (const guint8 *)"\r\n", 2);
	len = ba->len;
	if (len < 4 || memcmp(ba->data + len - 4, "\r\n\r\n", 4) != 0)
		g_byte_array_append(ba, (const guint8 *)"\r\n", 2);
	len = ba->len;

	/*
	 * Padding replaces the final empty line (2 octets) with pad_to - len + 2
	 * octets of whitespace lines: always at least 3, so a shortfall of one
	 * octet needs no special case.
	 */
	total = len;
	keep = len;
	if (ni->pad_to > len) {
		total = ni->pad_to;
		keep = len - 2;
	}
	if (total > SIZE_MAX - 1 || (out = malloc((size_t)total)) == NULL) {
		g_object_unref(m);
		g_object_unref(st);
		g_mime_format_options_free(fo);
		return -1;
	}
	memcpy(out, ba->data, keep);
	if (total > len)
		notice_pad(out + keep, total - keep);
	g_object_unref(m);
	g_object_unref(st);
	g_mime_format_options_free(fo);
	*out_r = out;
	*len_r = (size_t)total;
	return 0;
}
