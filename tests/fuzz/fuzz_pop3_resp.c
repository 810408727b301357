/*
 * fuzz_pop3_resp.c - libFuzzer harness for the POP3 response parser.
 *
 * Input: four control bytes, then the bytes "from the server".
 *   byte 0  bit 0: the first response is announced multi-line-on-OK
 *           bit 1: alternate single/multi-line for each next response
 *           bit 2: announce only the first response (later bytes arrive IDLE)
 *           bit 3: widen the payload: repeat its byte at index 4 about 500
 *                  times, to reach the 512-octet status bound
 *           bits 4-5: max_body: none, byte 3, byte 3 * 16, 1
 *   bytes 1-2  seed for the split points
 *   byte 3     max_body operand
 *
 * The payload is parsed by a deliberately simple whole-input reference model
 * and by the real parser fed whole, in random pieces and one byte at a time;
 * the event traces (adjacent DATA joined) must all be equal, else abort().
 * Every completed body must also survive pop3_stuff + reparse unchanged.
 * Each piece lives in its own exact-size heap buffer so AddressSanitizer
 * sees any read past what the parser was given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pop3_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_pop3_resp: check failed: %s (line %d)\n",  \
			        #cond, __LINE__);                                        \
			abort();                                                         \
		}                                                                        \
	} while (0)

struct cfg {
	unsigned flags;
	uint64_t max_body;
	uint64_t seed;
};

/* Whether response number idx is announced multi-line; -1: not announced. */
static int cfg_mode(const struct cfg *c, unsigned idx)
{
	if (idx > 0 && (c->flags & 4))
		return -1;
	return (int)((c->flags & 1) ^ ((c->flags & 2) ? (idx & 1) : 0));
}

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

static void tr_status(struct trace *t, enum pop3_status st, int ml, const char *l,
                      size_t n)
{
	tr_rec(t, 'S', (uint64_t)st * 2 + (uint64_t)ml, NULL, 0);
	tr_put(t, &n, sizeof(n));
	tr_put(t, l, n);
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

/* ---------------- the reference model ---------------- */

static int ref_sep(char c)
{
	return c == ' ' || c == '\r' || c == '\n';
}

/*
 * Emits body bytes p[0..n) that sit at stream offset off, honouring
 * max_body. Returns -1 after recording the error at the first byte too many.
 */
static int ref_emit(struct trace *t, const struct cfg *c, uint64_t *body_len,
                    const char *p, size_t n, uint64_t off, uint64_t nc)
{
	if (c->max_body != 0 && *body_len + n > c->max_body) {
		size_t room = (size_t)(c->max_body - *body_len);

		tr_data(t, p, room);
		tr_rec(t, 'X', off + room, NULL, 0);
		tr_rec(t, 'N', nc, NULL, 0);
		return -1;
	}
	tr_data(t, p, n);
	*body_len += n;
	return 0;
}

/* RFC 1939 as a reader would write it from the text: line by line, whole input. */
static void ref_run(const char *in, size_t n, const struct cfg *c, struct trace *t)
{
	size_t pos = 0;
	unsigned idx = 0;
	uint64_t nc = 0;

	for (;;) {
		int mode = cfg_mode(c, idx);
		const char *lf;
		size_t len, content, k;
		enum pop3_status st;
		uint64_t body_len = 0;

		if (mode < 0) {
			if (pos < n)
				tr_rec(t, 'X', pos, NULL, 0);
			break;
		}
		nc = 0;
		if (pos == n)
			break;
		if (in[pos] != '+' && in[pos] != '-') {
			tr_rec(t, 'X', pos, NULL, 0);
			break;
		}
		lf = memchr(in + pos, '\n',
		            n - pos < POP3_STATUS_MAX ? n - pos : POP3_STATUS_MAX);
		if (lf == NULL) {
			if (n - pos >= POP3_STATUS_MAX)
				tr_rec(t, 'X', pos + POP3_STATUS_MAX - 1, NULL, 0);
			break;
		}
		len = (size_t)(lf - (in + pos)) + 1;
		content = len - 1;
		if (content > 0 && in[pos + content - 1] == '\r')
			content--;
		for (k = 0; k < content && in[pos + k] != '\r'; k++)
			;
		if (k < content) {
			tr_rec(t, 'X', pos + k, NULL, 0);
			break;
		}
		if (in[pos] == '+')
			st = len >= 4 && memcmp(in + pos, "+OK", 3) == 0 &&
			             ref_sep(in[pos + 3])
			         ? POP3_ST_OK
			         : POP3_ST_CONT;
		else if (len >= 5 && memcmp(in + pos, "-ERR", 4) == 0 &&
		         ref_sep(in[pos + 4]))
			st = POP3_ST_ERR;
		else {
			tr_rec(t, 'X', pos, NULL, 0);
			break;
		}
		tr_status(t, st, st == POP3_ST_OK && mode, in + pos, len);
		pos += len;
		idx++;
		if (!(st == POP3_ST_OK && mode))
			continue;
		/* the body, one line at a time */
		for (;;) {
			const char *line = in + pos;
			size_t avail = n - pos;
			size_t skip = 0;

			if (avail == 0)
				goto out;
			lf = memchr(line, '\n', avail);
			len = lf != NULL ? (size_t)(lf - line) + 1 : avail;
			if (lf != NULL &&
			    ((len == 2 && line[0] == '.') ||
			     (len == 3 && line[0] == '.' && line[1] == '\r'))) {
				tr_rec(t, 'E', len == 3, NULL, 0);
				tr_rec(t, 'N', nc, NULL, 0);
				pos += len;
				break;
			}
			if (line[0] == '.') {
				/* an unfinished "." or ".\r" may still become the
				 * terminator */
				if (lf == NULL &&
				    (len == 1 || (len == 2 && line[1] == '\r')))
					goto out;
				skip = 1;
				if (line[1] != '.')
					nc++;
			}
			if (ref_emit(t, c, &body_len, line + skip, len - skip, pos + skip,
			             nc) < 0)
				return;
			pos += len;
			if (lf == NULL)
				goto out;
		}
	}
out:
	tr_rec(t, 'N', nc, NULL, 0);
}

/* ---------------- the real parser ---------------- */

/*
 * Checks that stuffing body and parsing it back gives body again, with a
 * CRLF or bare LF terminator.
 */
static void round_trip(const char *body, size_t n, int crlf)
{
	struct pop3_stuffer s;
	struct pop3_resp_parser p;
	struct pop3_resp_event ev;
	char *buf = malloc(5 + 2 * n + 5);
	size_t len = 5, off = 0, used, got = 0;
	int ended = 0;

	CHECK(buf != NULL);
	memcpy(buf, "+OK\r\n", 5);
	pop3_stuff_init(&s);
	len += pop3_stuff(&s, body, n, buf + len);
	len += pop3_stuff_finish(&s, crlf, buf + len);
	pop3_resp_init(&p, 0);
	pop3_resp_expect(&p, 1);
	while (!ended) {
		int r = pop3_resp_feed(&p, buf + off, len - off, &used, &ev);

		CHECK(r == POP3_OK);
		off += used;
		if (ev.type == POP3_EV_DATA) {
			CHECK(got + ev.len <= n &&
			      memcmp(body + got, ev.data, ev.len) == 0);
			got += ev.len;
		} else if (ev.type == POP3_EV_END) {
			CHECK(ev.crlf_term == crlf);
			ended = 1;
		}
	}
	CHECK(got == n && off == len && p.noncanonical == 0);
	free(buf);
}

/*
 * Feeds in cut at the ascending offsets cuts[0..ncuts), each piece copied to
 * its own heap buffer; records the trace and checks the per-call contract.
 */
static void real_run(const char *in, size_t n, const struct cfg *c, const size_t *cuts,
                     size_t ncuts, struct trace *t, int check_round_trip)
{
	struct pop3_resp_parser p;
	unsigned idx = 0;
	size_t from = 0, k;
	char *body = NULL;
	size_t body_n = 0, body_cap = 0;

	pop3_resp_init(&p, c->max_body);
	pop3_resp_expect(&p, cfg_mode(c, idx++));
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, off = 0;
		char *piece = malloc(plen != 0 ? plen : 1);
		int stop = 0;

		CHECK(piece != NULL);
		memcpy(piece, in + from, plen);
		for (;;) {
			struct pop3_resp_event ev;
			size_t used = SIZE_MAX;
			int r = pop3_resp_feed(&p, piece + off, plen - off, &used, &ev);

			CHECK(used <= plen - off);
			if (r == POP3_ERROR) {
				CHECK(p.error != NULL);
				tr_rec(t, 'X', p.pos, NULL, 0);
				stop = 1;
				break;
			}
			if (r == POP3_NEED_MORE) {
				CHECK(used == plen - off);
				break;
			}
			CHECK(r == POP3_OK);
			off += used;
			switch (ev.type) {
			case POP3_EV_STATUS:
				CHECK(ev.data == p.line && ev.len >= 1 &&
				      ev.len <= POP3_STATUS_MAX &&
				      ev.data[ev.len - 1] == '\n');
				tr_status(t, ev.status, ev.multiline, ev.data, ev.len);
				body_n = 0;
				break;
			case POP3_EV_DATA:
				CHECK(ev.len >= 1);
				CHECK((ev.len == 1 && ev.data[0] == '\r') ||
				      (ev.data >= piece &&
				       ev.data + ev.len <= piece + off));
				tr_data(t, ev.data, ev.len);
				if (check_round_trip) {
					if (body_n + ev.len > body_cap) {
						body_cap = (body_n + ev.len) * 2;
						body = realloc(body, body_cap);
						CHECK(body != NULL);
					}
					memcpy(body + body_n, ev.data, ev.len);
					body_n += ev.len;
				}
				break;
			case POP3_EV_END:
				tr_rec(t, 'E', (uint64_t)ev.crlf_term, NULL, 0);
				tr_rec(t, 'N', p.noncanonical, NULL, 0);
				CHECK(p.body_len == body_n || !check_round_trip);
				if (check_round_trip)
					round_trip(body, body_n, ev.crlf_term);
				break;
			default:
				CHECK(0 && "POP3_OK without an event");
			}
			if (c->max_body != 0)
				CHECK(p.body_len <= c->max_body);
			if (p.state == POP3_RS_IDLE && cfg_mode(c, idx) >= 0)
				pop3_resp_expect(&p, cfg_mode(c, idx++));
		}
		free(piece);
		from = to;
		if (stop)
			break;
	}
	tr_rec(t, 'N', p.noncanonical, NULL, 0);
	free(body);
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
	        "fuzz_pop3_resp: %s differs from the reference (%zu vs %zu bytes)\n",
	        what, want->len, got->len);
	abort();
}

/* libFuzzer entry: one input as laid out at the top of this file; 0 or abort(). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg c = {0};
	struct trace ref = {NULL, 0, 0, SIZE_MAX}, got = {NULL, 0, 0, SIZE_MAX};
	const char *in;
	char *wide = NULL;
	size_t n, i, ncuts, maxpiece;
	size_t *cuts;

	if (size < 4)
		return 0;
	c.flags = data[0];
	c.seed = ((uint64_t)data[1] << 8 | data[2]) * 0x9e3779b97f4a7c15ULL + 1;
	switch ((data[0] >> 4) & 3) {
	case 1:
		c.max_body = data[3];
		break;
	case 2:
		c.max_body = (uint64_t)data[3] * 16;
		break;
	case 3:
		c.max_body = 1;
		break;
	}
	in = (const char *)data + 4;
	n = size - 4;
	if ((c.flags & 8) && n > 4) {
		/* widen: the byte at index 4 repeated to just around the status bound */
		size_t rep = 496 + (data[2] & 31);

		wide = malloc(n + rep);
		CHECK(wide != NULL);
		memcpy(wide, in, 4);
		memset(wide + 4, in[4], rep);
		memcpy(wide + 4 + rep, in + 4, n - 4);
		in = wide;
		n += rep;
	}
	cuts = malloc((n + 1) * sizeof(*cuts));
	CHECK(cuts != NULL);

	ref_run(in, n, &c, &ref);

	real_run(in, n, &c, NULL, 0, &got, 1);
	if (!tr_eq(&ref, &got))
		fail_dump("fed whole", &ref, &got);
	got.len = 0;
	got.open_data = SIZE_MAX;

	maxpiece = 1 + (size_t)(rng_next(&c.seed) % (data[1] & 1 ? 8 : 300));
	for (ncuts = 0, i = 0;;) {
		i += 1 + (size_t)(rng_next(&c.seed) % maxpiece);
		if (i >= n)
			break;
		cuts[ncuts++] = i;
	}
	real_run(in, n, &c, cuts, ncuts, &got, 0);
	if (!tr_eq(&ref, &got))
		fail_dump("fed in pieces", &ref, &got);
	got.len = 0;
	got.open_data = SIZE_MAX;

	for (i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	real_run(in, n, &c, cuts, n > 0 ? n - 1 : 0, &got, 0);
	if (!tr_eq(&ref, &got))
		fail_dump("fed byte by byte", &ref, &got);

	free(ref.buf);
	free(got.buf);
	free(cuts);
	free(wide);
	return 0;
}
