/*
 * notice.c - the notice a client receives in place of a quarantined message.
 *
 * Two jobs, both called from scan jobs on the libuv thread pool, so every
 * GMime object here (parser, parser and format options, message, streams)
 * is created and destroyed within one call; only g_mime_init() is global.
 *
 * notice_read_headers() reads the header block of the captured original
 * (at most NOTICE_HDR_MAX bytes, up to the first empty line) and parses it
 * with GMimeParser. It never fails on malformed mail: whatever cannot be
 * found stays NULL.
 *
 * notice_build() composes a single-part text/plain message with GMime:
 * the original's From, To, Cc, Date and Message-ID are carried over as raw
 * values (refolded, see notice_fold()) so that clients sort and thread the
 * notice where the original would have been; the Subject is marked and
 * RFC 2047-encoded by GMime; the Japanese-then-English body is UTF-8
 * quoted-printable. GMime writes it with CRLF line endings (DOS newline
 * format). The body always ends with an empty line; padding replaces that
 * line with whitespace-only lines (see notice_pad()).
 */
#include "policy/notice.h"

#include "proxy/spool.h"

#include <gmime/gmime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define NOTICE_MARK_INFECTED "[mailmoat: ウイルス隔離 / virus quarantined]"
#define NOTICE_MARK_ERROR "[mailmoat: 検査エラーにより隔離 / quarantined, scan error]"

static pthread_once_t notice_once = PTHREAD_ONCE_INIT;

static void notice_init_once(void)
{
	g_mime_init();
}

/* Sets up GMime; safe to call more than once. Call before starting threads. */
void notice_global_init(void)
{
	pthread_once(&notice_once, notice_init_once);
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

/* The body text (UTF-8, LF line endings, ending in an empty line). */
static char *notice_body(const struct msg_headers *h, const struct notice_info *ni,
                         int is_error)
{
	char *sig = notice_clean(notice_or(ni->signature, "-"), NOTICE_TEXT_MAX);
	char *qid = notice_clean(notice_or(ni->quarantine_id, "-"), NOTICE_TEXT_MAX);
	char *subj = notice_clean(h->subject_utf8 != NULL ? h->subject_utf8 : h->subject,
	                          NOTICE_TEXT_MAX);
	char *from =
	    notice_clean(h->from_utf8 != NULL ? h->from_utf8 : h->from, NOTICE_TEXT_MAX);
	char *admin = notice_clean(ni->admin_contact, NOTICE_TEXT_MAX);
	GString *b = g_string_sized_new(2048);
	char *out;

	g_string_append(b, "このメッセージは mailmoat によって隔離されました。\n\n");
	if (is_error)
		g_string_append(
		    b, "元のメッセージのウイルス検査を完了できなかったため、安全のため\n"
		       "元のメッセージの代わりにこのお知らせをお届けしています。\n");
	else
		g_string_append(
		    b, "元のメッセージからウイルス（マルウェア）が検出されたため、\n"
		       "元のメッセージの代わりにこのお知らせをお届けしています。\n");
	g_string_append(
	    b, "元のメッセージは隔離領域に保管されており、失われてはいません。\n\n");
	g_string_append_printf(b, "  判定:         %s\n",
	                       is_error ? "検査エラー (scan error)"
	                                : "ウイルス検出 (infected)");
	g_string_append_printf(b, "  %s %s\n",
	                       is_error ? "エラー内容:  " : "検出名:      ", sig);
	g_string_append_printf(b, "  隔離ID:       %s\n", qid);
	g_string_append_printf(b, "  元の差出人:   %s\n", notice_or(from, "（不明）"));
	g_string_append_printf(b, "  元の件名:     %s\n\n",
	                       notice_or(subj, "（件名なし）"));
	g_string_append_printf(b,
	                       "元のメッセージが必要な場合は、上記の隔離IDを添えて\n"
	                       "管理者（%s）までご連絡ください。\n\n",
	                       notice_or(admin, "システム管理者"));
	g_string_append(b,
	                "----------------------------------------------------------------"
	                "------\n\n");
	g_string_append(b, "This message was quarantined by mailmoat.\n\n");
	if (is_error)
		g_string_append(
		    b, "The original message could not be scanned for viruses, so "
		       "this\nnotice was delivered in its place.\n");
	else
		g_string_append(b,
		                "A virus (malware) was found in the original message, so "
		                "this\nnotice was delivered in its place.\n");
	g_string_append(b,
	                "The original is kept in quarantine and has not been lost.\n\n");
	g_string_append_printf(b, "  Verdict:          %s\n",
	                       is_error ? "scan error" : "infected");
	g_string_append_printf(b, "  %s %s\n",
	                       is_error ? "Error:           " : "Threat:          ", sig);
	g_string_append_printf(b, "  Quarantine ID:    %s\n", qid);
	g_string_append_printf(b, "  Original sender:  %s\n",
	                       notice_or(from, "(unknown)"));
	g_string_append_printf(b, "  Original subject: %s\n\n",
	                       notice_or(subj, "(no subject)"));
	g_string_append_printf(b,
	                       "If you need the original message, contact %s\n"
	                       "and quote the quarantine ID above.\n\n",
	                       notice_or(admin, "your system administrator"));
	out = g_string_free(b, FALSE);
	g_free(sig);
	g_free(qid);
	g_free(subj);
	g_free(from);
	g_free(admin);
	return out;
}

/* Composes the notice as a GMime message (the caller unrefs it). */
static GMimeMessage *notice_compose(const struct msg_headers *h,
                                    const struct notice_info *ni)
{
	int is_error = ni->verdict != NULL && strcmp(ni->verdict, "infected") != 0;
	GMimeMessage *m = g_mime_message_new(FALSE);
	GMimeObject *o = GMIME_OBJECT(m);
	GMimeStream *st;
	GMimeDataWrapper *dw;
	GMimePart *part;
	char *subj, *orig, *body, *qid;

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

	orig = notice_clean(h->subject_utf8 != NULL ? h->subject_utf8 : h->subject,
	                    NOTICE_SUBJECT_MAX);
	subj = g_strdup_printf(
	    "%s%s%s", is_error ? NOTICE_MARK_ERROR : NOTICE_MARK_INFECTED,
	    orig != NULL && *orig != '\0' ? " " : "", orig != NULL ? orig : "");
	g_mime_message_set_subject(m, subj, "utf-8");
	g_free(subj);
	g_free(orig);

	if (h->message_id != NULL && *h->message_id != '\0')
		notice_set_raw(o, "Message-ID", h->message_id);

	/* our own values: printable ASCII only, whatever the caller passed */
	qid = notice_clean(notice_or(ni->quarantine_id, "-"), 64);
	for (char *c = qid; *c != '\0'; c++) {
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
			*c = '_';
	}
	g_mime_object_append_header(o, "X-Mailmoat-Quarantine-Id", qid, NULL);
	g_mime_object_append_header(o, "X-Mailmoat-Verdict",
	                            is_error ? "error" : "infected", NULL);
	g_free(qid);

	/* explicit UTF-8 content: g_mime_text_part_set_text() may pick another charset */
	body = notice_body(h, ni, is_error);
	part = g_mime_part_new_with_type("text", "plain");
	g_mime_object_set_content_type_parameter(GMIME_OBJECT(part), "charset", "utf-8");
	st = g_mime_stream_mem_new_with_buffer(body, strlen(body));
	dw = g_mime_data_wrapper_new_with_stream(st, GMIME_CONTENT_ENCODING_DEFAULT);
	g_mime_part_set_content(part, dw);
	g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
	g_mime_message_set_mime_part(m, GMIME_OBJECT(part));
	g_object_unref(dw);
	g_object_unref(st);
	g_object_unref(part);
	g_free(body);
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
	GMimeMessage *m = notice_compose(h, ni);
	GByteArray *ba;
	size_t len, keep;
	uint64_t total;
	char *out;

	*out_r = NULL;
	*len_r = 0;
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
