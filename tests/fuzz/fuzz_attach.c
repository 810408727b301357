/*
 * fuzz_attach.c - libFuzzer harness for the attachment rules' streaming
 * MIME structure parser (scanners/attach.c).
 *
 * Input: four control bytes, then the message.
 *   bytes 0-1  seed for the split points; when both top bits of byte 1
 *              are set, also max_parts = byte 0 & 15 (0: no limit)
 *   byte 2     the rules:
 *              bits 0-1: lists: 0 the shipped defaults; 1 a small custom
 *                        extension list (case, leading dots, a dotted
 *                        "tar.gz", empty entries) and custom types (exact,
 *                        prefix wildcards); 2 both lists empty; 3 the
 *                        custom extensions with the shipped types
 *              bit 2:    double_extensions off
 *              bit 3:    bidi_controls off
 *              bits 4-7: max_depth, from depth_table (0 = default, 1, 2,
 *                        ..., past DEPTH_CAP)
 *   byte 3     the shape of the message:
 *              bit 0: widen: the message follows a field whose value
 *                     is already FIELD_MAX - 64 + 16 * (byte 3 >> 5) bytes
 *                     long, so its first line lands around the 16 KiB
 *                     field bound; the field is Content-Type,
 *                     Content-Disposition or Content-Transfer-Encoding by
 *                     (byte 3 >> 5) % 3
 *              bit 1: repeat the message until it passes 17 KiB, so
 *                     a field made of the repeated text can pass the bound
 *              bit 2: wrap it as a base64 message/rfc822 part of an outer
 *                     multipart, so mutations reach the nested stream fed
 *                     with decoded bytes
 *              bit 3: wrap (after bit 2) as a quoted-printable one
 *              bit 4: base64 in one long line instead of 76-column lines
 *                     (lines past the parser's line buffer)
 *
 * The message is checked whole with attach_check_buffer, fed with
 * attach_stream_feed in random pieces and one byte at a time; the results
 * (enum, finding part, filename, mime_type, reason) must all be equal,
 * else abort(). Every run also checks the contract: a PASS finding is
 * empty; a BLOCKED one names a part ("1", "2.3", or "" for a top-level
 * multipart's own headers), a lower-case type and a known reason; an
 * ERROR one says why; finish repeats a sticky answer from feed; a name
 * reported as blocked by extension is blocked again when checked alone.
 * Each piece lives in an exact-size heap buffer (reused while the size
 * repeats) so AddressSanitizer sees any read past what the parser was
 * given.
 *
 * GMime decodes the header parameters and must be initialised: done once,
 * on the first input (the standalone driver calls no initialiser).
 */
#include <gmime/gmime.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scanners/attach.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_attach: check failed: %s (line %d)\n",     \
			        #cond, __LINE__);                                        \
			abort();                                                         \
		}                                                                        \
	} while (0)

/* attach.c's field bound (a Content-Type over it is an ERROR) */
#define FIELD_MAX 16384

static const char *const custom_extensions[] = {"EXE", ".js", "..Scr", "tar.gz",
                                                "",    ".",   "a",     "lnk"};
static const char *const custom_types[] = {
    "application/x-msdownload", "Text/Plain", "application/x-ms*", "image/*", "", "*x"};
static const unsigned depth_table[16] = {0,  1,  2,  3,  4,   5,   6,    8,
                                         16, 17, 18, 50, 100, 101, 1000, UINT_MAX};

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* A growing byte buffer for the shaped message; b_put(b, NULL, n) reserves n bytes. */
struct buf {
	char *p;
	size_t len, cap;
};

static void b_put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t ncap = b->cap != 0 ? b->cap : 1024;

		while (ncap < b->len + n)
			ncap *= 2;
		b->p = realloc(b->p, ncap);
		CHECK(b->p != NULL);
		b->cap = ncap;
	}
	if (n > 0 && p != NULL)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void b_str(struct buf *b, const char *s)
{
	b_put(b, s, strlen(s));
}

#define WRAP_HEAD                                                                        \
	"From: a@example.test\r\nMIME-Version: 1.0\r\n"                                  \
	"Content-Type: multipart/mixed; boundary=\"=_fz\"\r\n\r\n"                       \
	"--=_fz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"                     \
	"--=_fz\r\nContent-Type: message/rfc822\r\n"
#define WRAP_TAIL "\r\n--=_fz--\r\n"

/* The message in[0..n) as a base64 message/rfc822 part; one line or 76 columns. */
static void wrap_base64(struct buf *out, const char *in, size_t n, int one_line)
{
	static const char b64[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i, col = 0;

	b_str(out, WRAP_HEAD "Content-Transfer-Encoding: base64\r\n\r\n");
	for (i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
		char q[4];

		if (i + 1 < n)
			v |= (uint32_t)(unsigned char)in[i + 1] << 8;
		if (i + 2 < n)
			v |= (unsigned char)in[i + 2];
		q[0] = b64[v >> 18 & 63];
		q[1] = b64[v >> 12 & 63];
		q[2] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		q[3] = i + 2 < n ? b64[v & 63] : '=';
		b_put(out, q, 4);
		col += 4;
		if (!one_line && col == 76) {
			b_str(out, "\r\n");
			col = 0;
		}
	}
	b_str(out, WRAP_TAIL);
}

/* The message in[0..n) as a quoted-printable message/rfc822 part (RFC 2045 6.7). */
static void wrap_qp(struct buf *out, const char *in, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i, col = 0;

	b_str(out, WRAP_HEAD "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '\r' && i + 1 < n && in[i + 1] == '\n')
			continue; /* CRLF: the hard line break below */
		if (c == '\n') {
			b_str(out, "\r\n");
			col = 0;
			continue;
		}
		if (col >= 72) {
			b_str(out, "=\r\n");
			col = 0;
		}
		if (c == '=' || c < 0x20 || c >= 0x7f ||
		    ((c == ' ' || c == '\t') &&
		     (i + 1 == n || in[i + 1] == '\r' || in[i + 1] == '\n'))) {
			char e[3] = {'=', hex[c >> 4], hex[c & 15]};

			b_put(out, e, 3);
			col += 3;
		} else {
			b_put(out, &c, 1);
			col++;
		}
	}
	b_str(out, WRAP_TAIL);
}

/* Fills *r from the rules control byte (layout at the top of this file). */
static void make_rules(struct attach_rules *r, uint8_t ctl)
{
	attach_rules_default(r);
	switch (ctl & 3) {
	case 1:
		r->mime_types = custom_types;
		r->n_mime_types = sizeof(custom_types) / sizeof(custom_types[0]);
		/* fall through */
	case 3:
		r->extensions = custom_extensions;
		r->n_extensions =
		    sizeof(custom_extensions) / sizeof(custom_extensions[0]);
		break;
	case 2:
		r->extensions = NULL;
		r->n_extensions = 0;
		r->mime_types = NULL;
		r->n_mime_types = 0;
		break;
	default:
		break;
	}
	r->double_extensions = !(ctl & 4);
	r->bidi_controls = !(ctl & 8);
	r->max_depth = depth_table[ctl >> 4];
}

/* Every string of the finding ends inside its array. */
static void check_terminated(const struct attach_finding *f)
{
	CHECK(memchr(f->part, '\0', sizeof(f->part)) != NULL);
	CHECK(memchr(f->filename, '\0', sizeof(f->filename)) != NULL);
	CHECK(memchr(f->mime_type, '\0', sizeof(f->mime_type)) != NULL);
	CHECK(memchr(f->reason, '\0', sizeof(f->reason)) != NULL);
}

/*
 * "1", "2.3": section numbers from 1, RFC 3501 section 6.4.5; or "" for
 * the headers of a top-level multipart (the whole message has no number).
 */
static void check_part(const char *p)
{
	if (*p == '\0')
		return;
	for (;;) {
		CHECK(*p >= '1' && *p <= '9');
		while (*p >= '0' && *p <= '9')
			p++;
		if (*p == '\0')
			return;
		CHECK(*p == '.');
		p++;
	}
}

static int starts(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The contract of one answer (attach.h). */
static void check_result(enum attach_res res, const struct attach_finding *f,
                         const struct attach_rules *r)
{
	static const struct attach_finding zero;

	CHECK(res == ATTACH_ERROR || res == ATTACH_PASS || res == ATTACH_BLOCKED);
	check_terminated(f);
	if (res == ATTACH_PASS) {
		/* nothing but the part count (attach_check_buffer / _fd) */
		struct attach_finding g = *f;

		g.parts = 0;
		CHECK(memcmp(&g, &zero, sizeof(zero)) == 0);
		return;
	}
	CHECK(f->reason[0] != '\0');
	if (res == ATTACH_ERROR)
		return;
	check_part(f->part);
	/* "type/subtype", unless cut at the size of the field */
	CHECK(strchr(f->mime_type, '/') != NULL ||
	      strlen(f->mime_type) == sizeof(f->mime_type) - 1);
	for (const char *p = f->mime_type; *p != '\0'; p++)
		CHECK(!(*p >= 'A' && *p <= 'Z'));
	CHECK(starts(f->reason, "extension .") ||
	      starts(f->reason, "double extension ") || starts(f->reason, "MIME type ") ||
	      strcmp(f->reason, "hidden extension (RTL override)") == 0);
	if (starts(f->reason, "MIME type ")) {
		CHECK(f->filename[0] == '\0');
	} else if (!starts(f->reason, "hidden")) {
		struct attach_finding g;

		CHECK(f->filename[0] != '\0');
		/*
		 * A normalised name is blocked again, unchanged, for the same
		 * reason (normalising is idempotent: invalid bytes become '?',
		 * so dropping a character can never join stray bytes into a
		 * new one such as an RLO). Only when it was not cut: a cut
		 * name has "..." in it (and may be well under the size, cut
		 * back to a UTF-8 boundary).
		 */
		if (strstr(f->filename, "...") == NULL) {
			memset(&g, 0, sizeof(g));
			CHECK(attach_check_name(f->filename, r, &g) == ATTACH_BLOCKED);
			/* normalising is idempotent: the same name, the same rule */
			CHECK(strcmp(g.filename, f->filename) == 0);
			CHECK(strcmp(g.reason, f->reason) == 0);
		}
	}
}

/*
 * Feeds in cut at the ascending offsets cuts[0..ncuts) into a new stream,
 * stopping after the first answer that is not PASS, as attach.h asks;
 * finish must repeat that answer.
 */
static enum attach_res run(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                           const struct attach_rules *r, struct attach_finding *f_r)
{
	struct attach_stream *s = attach_stream_new(r);
	enum attach_res fed = ATTACH_PASS, res;
	size_t from = 0, k, piece_len = 0;
	char *piece = NULL;

	CHECK(s != NULL);
	for (k = 0; k <= ncuts && fed == ATTACH_PASS; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from;

		/* exact size; kept while the size repeats (one byte at a time) */
		if (piece == NULL || plen != piece_len) {
			free(piece);
			piece = malloc(plen != 0 ? plen : 1);
			piece_len = plen;
			CHECK(piece != NULL);
		}
		if (plen > 0)
			memcpy(piece, in + from, plen);
		fed = attach_stream_feed(s, piece, plen);
		CHECK(fed == ATTACH_ERROR || fed == ATTACH_PASS || fed == ATTACH_BLOCKED);
		from = to;
	}
	free(piece);
	memset(f_r, 0x5a, sizeof(*f_r)); /* finish must fill it either way */
	res = attach_stream_finish(s, f_r);
	if (fed != ATTACH_PASS)
		CHECK(res == fed);
	attach_stream_free(&s);
	CHECK(s == NULL);
	return res;
}

static void compare(const char *what, enum attach_res ra, const struct attach_finding *a,
                    enum attach_res rb, const struct attach_finding *b)
{
	if (ra == rb && strcmp(a->part, b->part) == 0 &&
	    strcmp(a->filename, b->filename) == 0 &&
	    strcmp(a->mime_type, b->mime_type) == 0 && strcmp(a->reason, b->reason) == 0)
		return;
	fprintf(stderr,
	        "fuzz_attach: %s differs from fed whole: %d [%s|%s|%s|%s] vs %d "
	        "[%s|%s|%s|%s]\n",
	        what, ra, a->part, a->filename, a->mime_type, a->reason, rb, b->part,
	        b->filename, b->mime_type, b->reason);
	abort();
}

/* attach_check_name on the message's first line (up to a NUL), with and without f_r. */
static void check_name_alone(const char *in, size_t n, const struct attach_rules *r)
{
	static const struct attach_finding zero;
	struct attach_finding f;
	enum attach_res res;
	char *name;
	size_t len = 0;

	while (len < n && len < 1024 && in[len] != '\n' && in[len] != '\0')
		len++;
	name = malloc(len + 1);
	CHECK(name != NULL);
	memcpy(name, in, len);
	name[len] = '\0';
	memset(&f, 0, sizeof(f));
	res = attach_check_name(name, r, &f);
	CHECK(res == attach_check_name(name, r, NULL));
	check_terminated(&f);
	if (res == ATTACH_PASS) {
		CHECK(memcmp(&f, &zero, sizeof(zero)) == 0);
	} else {
		CHECK(res == ATTACH_BLOCKED);
		CHECK(f.reason[0] != '\0' && f.part[0] == '\0');
	}
	free(name);
}

/* libFuzzer entry: one input as laid out at the top of this file; 0 or abort(). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int gmime_ready;
	struct attach_rules rules;
	struct attach_finding whole, got;
	enum attach_res rw, rg;
	struct buf msg = {0};
	uint64_t seed;
	const char *in;
	size_t n, i, ncuts, maxpiece;
	size_t *cuts;
	uint8_t shape;

	if (!gmime_ready) {
		g_mime_init();
		gmime_ready = 1;
	}
	if (size < 4)
		return 0;
	seed = ((uint64_t)data[0] << 8 | data[1]) * 0x9e3779b97f4a7c15ULL + 1;
	make_rules(&rules, data[2]);
	rules.max_parts = (data[1] & 0xc0) == 0xc0 ? (unsigned long)(data[0] & 15) : 0;
	shape = data[3];
	in = (const char *)data + 4;
	n = size - 4;

	check_name_alone(in, n, &rules);

	if (shape & 1) {
		static const char *const field[3] = {
		    "Content-Type: application/octet-stream; x=",
		    "Content-Disposition: attachment; x=",
		    "Content-Transfer-Encoding: base64"};
		size_t fill = FIELD_MAX - 64 + 16 * (size_t)(shape >> 5);
		struct buf w = {0};

		b_str(&w, field[(shape >> 5) % 3]);
		b_put(&w, NULL, fill);
		memset(w.p + w.len - fill, 'x', fill);
		b_put(&w, in, n);
		msg = w;
	} else {
		b_put(&msg, in, n);
	}
	if ((shape & 2) && msg.len > 0) {
		struct buf w = {0};

		while (w.len <= FIELD_MAX + 1024)
			b_put(&w, msg.p, msg.len);
		free(msg.p);
		msg = w;
	}
	if (shape & 4) {
		struct buf w = {0};

		wrap_base64(&w, msg.p, msg.len, shape & 16);
		free(msg.p);
		msg = w;
	}
	if (shape & 8) {
		struct buf w = {0};

		wrap_qp(&w, msg.p, msg.len);
		free(msg.p);
		msg = w;
	}
	/* exact size, so a read past the message is caught */
	if (shape & 15) {
		char *exact = malloc(msg.len != 0 ? msg.len : 1);

		CHECK(exact != NULL);
		if (msg.len > 0)
			memcpy(exact, msg.p, msg.len);
		free(msg.p);
		msg.p = exact;
		in = exact;
	}
	n = msg.len;

	rw = attach_check_buffer(in, n, &rules, &whole);
	check_result(rw, &whole, &rules);

	cuts = calloc(n + 1, sizeof(*cuts));
	CHECK(cuts != NULL);
	maxpiece = 1 + (size_t)(rng_next(&seed) % (data[0] & 1 ? 8 : 3000));
	for (ncuts = 0, i = 0;;) {
		i += 1 + (size_t)(rng_next(&seed) % maxpiece);
		if (i >= n)
			break;
		cuts[ncuts++] = i;
	}
	rg = run(in, n, cuts, ncuts, &rules, &got);
	check_result(rg, &got, &rules);
	compare("fed in pieces", rw, &whole, rg, &got);

	/* byte by byte; for inputs made long by the shape only now and then */
	if (n <= 8192 || (data[1] & 7) == 0) {
		for (i = 0; i + 1 < n; i++)
			cuts[i] = i + 1;
		rg = run(in, n, cuts, n > 0 ? n - 1 : 0, &rules, &got);
		compare("fed byte by byte", rw, &whole, rg, &got);
	}

	free(cuts);
	free(msg.p);
	return 0;
}
