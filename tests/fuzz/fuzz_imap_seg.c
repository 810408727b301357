/*
 * fuzz_imap_seg.c - libFuzzer harness for the IMAP segmenter and tokenizer.
 *
 * Input: four control bytes, then the IMAP byte stream.
 *   byte 0  bits 0-1: max_literal: default (4 GiB - 1), byte 1, byte 1 * 1000,
 *                     no bound (UINT64_MAX)
 *           bit 2: widen: repeat the payload's byte at index 4 about
 *                  IMAP_SEG_MAX times, so what follows straddles the end of
 *                  the segmenter's buffer (the marker hold-back)
 *           bit 3: small pieces (1-8 bytes) instead of up to 300 (not in
 *                  the widened run)
 *   byte 1     max_literal operand; low bits also tune the widening
 *   bytes 2-3  seed for the split points
 *
 * The stream is segmented by a deliberately simple whole-input reference
 * model (lines found with memchr, the marker parsed backwards from the LF)
 * and by the real segmenter fed whole, in random pieces and one byte at a
 * time (a widened run in 4 KiB pieces up to just before its end). The event traces (a
 * segment's PART pieces joined, adjacent LITERAL_DATA joined) must all be equal, else
 * abort(). Every run also checks that the segmenter is lossless (event bytes, then the
 * bytes it holds, are exactly the bytes consumed), and the whole-fed run tokenizes every
 * complete segment: the tokenizer must stay inside it, progress, and agree with the
 * segmenter about the literal marker. Each piece lives in its own exact-size heap buffer
 * so AddressSanitizer sees any read past what the code was given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/imap_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_imap_seg: check failed: %s (line %d)\n",   \
			        #cond, __LINE__);                                        \
			abort();                                                         \
		}                                                                        \
	} while (0)

#define INT63_MAX ((uint64_t)INT64_MAX)

/* ---------------- traces ---------------- */

struct trace {
	char *buf;
	size_t len, cap;
	size_t open_data; /* SIZE_MAX: no DATA record open */
};

static void tr_put(struct trace *t, const void *p, size_t n)
{
	if (t->len + n > t->cap) {
		size_t ncap = t->cap != 0 ? t->cap : 1024;

		while (ncap < t->len + n)
			ncap *= 2;
		t->buf = realloc(t->buf, ncap);
		CHECK(t->buf != NULL);
		t->cap = ncap;
	}
	if (n > 0)
		memcpy(t->buf + t->len, p, n);
	t->len += n;
}

static void tr_rec(struct trace *t, char type, uint64_t v, const void *p, size_t n)
{
	t->open_data = SIZE_MAX;
	tr_put(t, &type, 1);
	tr_put(t, &v, sizeof(v));
	tr_put(t, p, n);
}

/* A whole segment: flags = first | lit << 1 | literal8 << 2 | nonsync << 3. */
static void tr_seg(struct trace *t, unsigned flags, uint64_t size, const char *p,
                   size_t n)
{
	tr_rec(t, 'S', flags, NULL, 0);
	tr_put(t, &size, sizeof(size));
	tr_put(t, &n, sizeof(n));
	tr_put(t, p, n);
}

static void tr_data(struct trace *t, const char *p, size_t n)
{
	uint64_t cur;

	if (n == 0)
		return;
	if (t->open_data == SIZE_MAX) {
		tr_rec(t, 'D', 0, NULL, 0);
		t->open_data = t->len - sizeof(uint64_t);
	}
	memcpy(&cur, t->buf + t->open_data, sizeof(cur));
	cur += n;
	memcpy(t->buf + t->open_data, &cur, sizeof(cur));
	tr_put(t, p, n);
}

static int tr_eq(const struct trace *a, const struct trace *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->buf, b->buf, a->len) == 0);
}

static void tr_reset(struct trace *t)
{
	t->len = 0;
	t->open_data = SIZE_MAX;
}

/* ---------------- the reference model ---------------- */

/*
 * Parses a literal marker backwards from the LF at in[lf], not before
 * in[start]: ["~"] "{" 1*DIGIT ["+" / "-"] "}" [CR] LF. Returns 1 with the
 * marker's first byte, digit count, value (of up to 19 digits), literal8
 * and nonsync; 0 when the line does not end in a marker.
 */
static int ref_marker(const char *in, size_t start, size_t lf, size_t *m_r,
                      size_t *ndig_r, uint64_t *v_r, int *l8_r, int *ns_r)
{
	size_t e = lf, d, k;
	uint64_t v = 0;

	if (e > start && in[e - 1] == '\r')
		e--;
	if (e == start || in[e - 1] != '}')
		return 0;
	e--;
	*ns_r = e > start && (in[e - 1] == '+' || in[e - 1] == '-');
	if (*ns_r)
		e--;
	d = e;
	while (d > start && in[d - 1] >= '0' && in[d - 1] <= '9')
		d--;
	if (d == e || d == start || in[d - 1] != '{')
		return 0;
	*ndig_r = e - d;
	for (k = d; k < e && k < d + 19; k++)
		v = v * 10 + (uint64_t)(in[k] - '0');
	*v_r = v;
	*m_r = d - 1;
	*l8_r = *m_r > start && in[*m_r - 1] == '~';
	if (*l8_r)
		(*m_r)--;
	return 1;
}

/* RFC 3501 framing as a reader would write it from the text: whole input. */
static void ref_run(const char *in, size_t n, uint64_t max, struct trace *t)
{
	size_t pos = 0;
	unsigned first = 1;

	while (pos < n) {
		int q = 0; /* 0 outside quotes, 1 inside, 2 after a backslash inside */
		size_t k, m, ndig, end, avail;
		uint64_t v;
		int l8, ns;

		for (k = pos; k < n && in[k] != '\n'; k++) {
			if (q == 2)
				q = 1;
			else if (in[k] == '"')
				q = !q;
			else if (q == 1 && in[k] == '\\')
				q = 2;
		}
		if (k == n)
			return; /* an unfinished line */
		end = k + 1;
		if (q != 0 || !ref_marker(in, pos, k, &m, &ndig, &v, &l8, &ns)) {
			tr_seg(t, first, 0, in + pos, end - pos);
			pos = end;
			first = 1;
			continue;
		}
		if (ndig > 19 || v > INT63_MAX || v > max) {
			tr_rec(t, 'X', m, NULL, 0);
			return;
		}
		tr_seg(t, first | 2u | (unsigned)l8 << 2 | (unsigned)ns << 3, v, in + pos,
		       end - pos);
		pos = end;
		first = 0;
		avail = (uint64_t)(n - pos) < v ? n - pos : (size_t)v;
		tr_data(t, in + pos, avail);
		pos += avail;
		if (avail < v)
			return;
		tr_rec(t, 'E', 0, NULL, 0);
	}
}

/* ---------------- the tokenizer ---------------- */

/*
 * Tokenizes one complete segment (an exact-size heap copy) and checks it
 * against what the segmenter said about its end.
 */
static void tok_check(const char *s, size_t n, const struct imap_event *last)
{
	char *seg = malloc(n != 0 ? n : 1);
	size_t pos = 0, steps = 0;
	struct imap_tok t;
	enum imap_tok_type ty;

	CHECK(seg != NULL);
	memcpy(seg, s, n);
	for (;;) {
		size_t before = pos;

		ty = imap_tok_next(seg, n, &pos, &t);
		CHECK(t.type == ty && ty < IMAP_TOK_COUNT);
		CHECK(t.text >= seg && t.len <= n && t.text + t.len <= seg + n &&
		      pos <= n);
		CHECK(++steps <= n + 2);
		if (ty == IMAP_TOK_END || ty == IMAP_TOK_ERROR) {
			size_t again = pos;

			CHECK(imap_tok_next(seg, n, &again, &t) == ty && again == pos);
			break;
		}
		CHECK(pos > before && t.len >= 1);
		if (ty == IMAP_TOK_LITERAL) {
			/* the marker the segmenter saw, and nothing after it */
			CHECK(last->end == IMAP_SEG_LITERAL);
			CHECK(t.num == last->literal_size);
			CHECK((t.text[0] == '~') == (last->literal8 != 0));
			CHECK((t.text[t.len - 2] == '+' || t.text[t.len - 2] == '-') ==
			      (last->nonsync != 0));
			CHECK(imap_tok_next(seg, n, &pos, &t) == IMAP_TOK_END);
			break;
		}
		if (ty == IMAP_TOK_NUMBER)
			CHECK(t.num <= INT63_MAX);
	}
	if (ty == IMAP_TOK_END)
		CHECK(last->end == IMAP_SEG_CRLF);
	free(seg);
}

/* ---------------- the real segmenter ---------------- */

/*
 * Feeds in cut at the ascending offsets cuts[0..ncuts), each piece copied to
 * its own heap buffer; records the trace and checks the per-call contract
 * and losslessness. With tok, tokenizes every complete segment.
 */
static void real_run(const char *in, size_t n, uint64_t max, const size_t *cuts,
                     size_t ncuts, struct trace *t, int tok)
{
	struct imap_seg_parser *p = malloc(sizeof(*p));
	size_t from = 0, k, out = 0, total = 0;
	size_t seg_start = 0, seg_len = 0; /* the open segment, as input offsets */
	int seg_open = 0, seg_first = 0, failed = 0;

	CHECK(p != NULL);
	imap_seg_init(p, max);
	for (k = 0; k <= ncuts && !failed; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, off = 0, calls = 0;
		char *piece = malloc(plen != 0 ? plen : 1);

		CHECK(piece != NULL);
		memcpy(piece, in + from, plen);
		for (;;) {
			struct imap_event ev;
			size_t used = SIZE_MAX;
			int r = imap_seg_feed(p, piece + off, plen - off, &used, &ev);

			CHECK(++calls <= 2 * plen + 8);
			CHECK(used <= plen - off);
			off += used;
			total += used;
			if (r == IMAP_ERROR) {
				CHECK(p->error != NULL);
				CHECK(imap_seg_feed(p, "\r\n", 2, &used, &ev) ==
				      IMAP_ERROR);
				tr_rec(t, 'X', p->pos, NULL, 0);
				failed = 1;
				break;
			}
			if (r == IMAP_NEED_MORE) {
				CHECK(off == plen);
				break;
			}
			CHECK(r == IMAP_OK);
			switch (ev.type) {
			case IMAP_EV_SEGMENT:
				CHECK(ev.data == p->buf && ev.len >= 1 &&
				      ev.len <= IMAP_SEG_MAX);
				CHECK(ev.end < IMAP_SEG_END_COUNT);
				if (!seg_open) {
					seg_open = 1;
					seg_first = ev.first;
					seg_start = out;
					seg_len = 0;
				} else {
					CHECK(ev.first == 0);
				}
				seg_len += ev.len;
				if (ev.end == IMAP_SEG_PART) {
					CHECK(ev.len + 24 >= IMAP_SEG_MAX);
					break;
				}
				CHECK(ev.data[ev.len - 1] == '\n');
				if (ev.end == IMAP_SEG_LITERAL) {
					size_t m, nd;
					uint64_t v;
					int l8, ns;

					/* the last piece holds the whole marker */
					CHECK(ref_marker(in, seg_start,
					                 seg_start + seg_len - 1, &m, &nd,
					                 &v, &l8, &ns));
					CHECK(m >= seg_start + seg_len - ev.len);
					CHECK(ev.literal_size <= p->max_literal);
				}
				tr_seg(t,
				       (unsigned)seg_first |
				           (unsigned)(ev.end == IMAP_SEG_LITERAL) << 1 |
				           (unsigned)ev.literal8 << 2 |
				           (unsigned)ev.nonsync << 3,
				       ev.end == IMAP_SEG_LITERAL ? ev.literal_size : 0,
				       in + seg_start, seg_len);
				seg_open = 0;
				break;
			case IMAP_EV_LITERAL_DATA:
				CHECK(ev.len >= 1 && ev.data >= piece &&
				      ev.data + ev.len == piece + off);
				tr_data(t, ev.data, ev.len);
				break;
			case IMAP_EV_LITERAL_END:
				CHECK(used == 0);
				tr_rec(t, 'E', 0, NULL, 0);
				break;
			default:
				CHECK(0 && "IMAP_OK without an event");
			}
			if (ev.type != IMAP_EV_LITERAL_END) {
				/* lossless: each event's bytes are the next input bytes
				 */
				CHECK(out + ev.len <= n &&
				      memcmp(ev.data, in + out, ev.len) == 0);
				out += ev.len;
			}
			if (tok && ev.type == IMAP_EV_SEGMENT && ev.end != IMAP_SEG_PART)
				tok_check(in + seg_start, seg_len, &ev);
		}
		free(piece);
		from = to;
	}
	/* what is held is the rest of what was consumed */
	CHECK(p->drop <= p->len && out + (p->len - p->drop) == total);
	CHECK(memcmp(p->buf + p->drop, in + out, p->len - p->drop) == 0);
	if (!failed)
		CHECK(total == n && p->pos == n);
	free(p);
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void fail_dump(const char *what, const struct trace *want, const struct trace *got)
{
	fprintf(stderr,
	        "fuzz_imap_seg: %s differs from the reference (%zu vs %zu bytes)\n", what,
	        want->len, got->len);
	abort();
}

/* libFuzzer entry: one input as laid out at the top of this file; 0 or abort(). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct trace ref = {NULL, 0, 0, SIZE_MAX}, got = {NULL, 0, 0, SIZE_MAX};
	uint64_t max = 0, norm, seed;
	const char *in;
	char *wide = NULL;
	size_t n, i, ncuts, maxpiece, wide_end = 0;
	size_t *cuts;

	if (size < 4)
		return 0;
	switch (data[0] & 3) {
	case 1:
		max = data[1];
		break;
	case 2:
		max = (uint64_t)data[1] * 1000;
		break;
	case 3:
		max = UINT64_MAX;
		break;
	}
	norm = max != 0 ? max : 0xffffffffULL;
	seed = ((uint64_t)data[2] << 8 | data[3]) * 0x9e3779b97f4a7c15ULL + 1;
	in = (const char *)data + 4;
	n = size - 4;
	if ((data[0] & 4) && n > 4) {
		/* widen: the byte at index 4 repeated to around the buffer's size */
		size_t rep = IMAP_SEG_MAX - 40 + (data[1] & 63);

		wide = malloc(n + rep);
		CHECK(wide != NULL);
		memcpy(wide, in, 4);
		memset(wide + 4, in[4], rep);
		memcpy(wide + 4 + rep, in + 4, n - 4);
		in = wide;
		n += rep;
		wide_end = 4 + rep;
	}
	cuts = malloc((n + 1) * sizeof(*cuts));
	CHECK(cuts != NULL);

	ref_run(in, n, norm, &ref);

	real_run(in, n, max, NULL, 0, &got, 1);
	if (!tr_eq(&ref, &got))
		fail_dump("fed whole", &ref, &got);
	tr_reset(&got);

	maxpiece = (data[0] & 8) ? 8 : 300;
	for (ncuts = 0, i = 0;;) {
		i += 1 + (size_t)(rng_next(&seed) % (i + 64 < wide_end ? 300 : maxpiece));
		if (i >= n)
			break;
		cuts[ncuts++] = i;
	}
	real_run(in, n, max, cuts, ncuts, &got, 0);
	if (!tr_eq(&ref, &got))
		fail_dump("fed in pieces", &ref, &got);
	tr_reset(&got);

	/* one byte at a time; a widened run in 4 KiB pieces until just before its end */
	for (ncuts = 0, i = 1; i < n; i++)
		if (i + 64 >= wide_end || i % 4096 == 0)
			cuts[ncuts++] = i;
	real_run(in, n, max, cuts, ncuts, &got, 0);
	if (!tr_eq(&ref, &got))
		fail_dump("fed byte by byte", &ref, &got);

	free(ref.buf);
	free(got.buf);
	free(cuts);
	free(wide);
	return 0;
}
