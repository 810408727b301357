/*
 * fuzz_http_req.c - libFuzzer harness for the metrics endpoint's HTTP
 * request-head parser (proxy/metrics.c).
 *
 * Input: three control bytes, then the bytes "from the client".
 *   byte 0  bit 0: widen: put a request line and one long header field in
 *                  front, HTTP_REQ_HEAD_MAX - 40 + (byte 0 >> 2) bytes of
 *                  them, so the payload lands around the head's bound
 *   bytes 1-2  seed for the split points
 *
 * The payload is parsed as a stream of requests (after each OK or ERROR
 * the parser starts again on the bytes that follow) fed whole, in random
 * pieces and one byte at a time; the traces of outcomes must all be equal,
 * else abort(). Each outcome is also checked on its own: an accepted head
 * is re-read line by line by a simple independent reader, an error points
 * at the byte it consumed last, and nothing passes the bounds. Each piece
 * lives in its own exact-size heap buffer so AddressSanitizer sees any read
 * past what the parser was given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_http_req: check failed: %s (line %d)\n",   \
			        #cond, __LINE__);                                        \
			abort();                                                         \
		}                                                                        \
	} while (0)

struct trace {
	char *buf;
	size_t len, cap;
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

static int tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * The independent reader: head[0..n) was accepted; re-reads it line by
 * line (LF-terminated, one CR before the LF dropped) and checks it is a
 * request line and header fields the parser's results agree with.
 */
static void ref_check_ok(const char *head, size_t n, const struct http_req_parser *p)
{
	size_t pos = 0, mlen, tlen;
	unsigned hosts = 0;
	int first = 1;

	CHECK(n >= 2 && head[n - 1] == '\n');
	for (;;) {
		const char *lf = memchr(head + pos, '\n', n - pos);
		size_t len, end;

		CHECK(lf != NULL);
		len = (size_t)(lf - (head + pos)) + 1;
		end = len - 1;
		if (end > 0 && head[pos + end - 1] == '\r')
			end--;
		for (size_t i = 0; i < end; i++)
			CHECK(head[pos + i] != '\r');
		if (first && end == 0) { /* an empty line before the request line */
			pos += len;
			continue;
		}
		if (first) {
			const char *l = head + pos;
			const char *sp1 = memchr(l, ' ', end);
			const char *sp2;

			CHECK(sp1 != NULL);
			mlen = (size_t)(sp1 - l);
			sp2 = memchr(sp1 + 1, ' ', end - mlen - 1);
			CHECK(sp2 != NULL);
			tlen = (size_t)(sp2 - sp1 - 1);
			CHECK(mlen == p->method_len && memcmp(l, p->method, mlen) == 0);
			CHECK(tlen == p->target_len &&
			      memcmp(sp1 + 1, p->target, tlen) == 0);
			CHECK(end - mlen - tlen - 2 == 8 &&
			      memcmp(sp2 + 1, "HTTP/1.", 7) == 0);
			CHECK(sp2[8] - '0' == p->minor);
			for (size_t i = 0; i < mlen; i++)
				CHECK(tchar((unsigned char)l[i]));
			for (size_t i = 0; i < tlen; i++)
				CHECK(sp1[1 + i] > ' ' && sp1[1 + i] < 0x7f);
			first = 0;
			pos += len;
			continue;
		}
		pos += len;
		if (end == 0)
			break; /* the empty line: the end of the head */
		{
			const char *l = head + pos - len;
			const char *colon = memchr(l, ':', end);
			size_t nl;

			CHECK(colon != NULL);
			nl = (size_t)(colon - l);
			CHECK(nl > 0);
			for (size_t i = 0; i < nl; i++)
				CHECK(tchar((unsigned char)l[i]));
			for (size_t i = nl + 1; i < end; i++) {
				unsigned char c = (unsigned char)l[i];

				CHECK(c == '\t' || (c >= ' ' && c != 0x7f));
			}
			hosts += nl == 4 && strncasecmp(l, "host", 4) == 0;
		}
	}
	CHECK(pos == n);
	CHECK(hosts == p->hosts);
	CHECK(hosts <= 1 && (p->minor == 0 || hosts == 1));
}

/* One outcome: kind, where it ended, and what the parser said. */
static void tr_outcome(struct trace *t, int r, uint64_t end_abs,
                       const struct http_req_parser *p)
{
	tr_put(t, &r, sizeof(r));
	tr_put(t, &end_abs, sizeof(end_abs));
	if (r == HTTP_OK) {
		tr_put(t, p->method, p->method_len + 1);
		tr_put(t, p->target, p->target_len + 1);
		tr_put(t, &p->minor, sizeof(p->minor));
		tr_put(t, &p->hosts, sizeof(p->hosts));
	} else {
		tr_put(t, &p->status, sizeof(p->status));
		tr_put(t, p->error, strlen(p->error) + 1);
		tr_put(t, &p->pos, sizeof(p->pos));
	}
}

/* Feeds in cut at the ascending offsets cuts[0..ncuts) and records the trace. */
static void real_run(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct trace *t)
{
	static struct http_req_parser p;
	size_t from = 0, abs = 0, start = 0, k;

	http_req_init(&p);
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, off = 0;
		char *piece = malloc(plen != 0 ? plen : 1);

		CHECK(piece != NULL);
		memcpy(piece, in + from, plen);
		while (off < plen || plen == 0) {
			size_t used = SIZE_MAX;
			int r = http_req_feed(&p, piece + off, plen - off, &used);

			CHECK(used <= plen - off);
			off += used;
			abs += used;
			CHECK(p.total == abs - start);
			/* only the byte refused for passing the bound lies beyond it */
			CHECK(p.total <= HTTP_REQ_HEAD_MAX ||
			      (r == HTTP_ERROR && p.status == 431 &&
			       p.total == HTTP_REQ_HEAD_MAX + 1));
			CHECK(p.method_len < HTTP_METHOD_MAX &&
			      p.target_len < HTTP_TARGET_MAX);
			if (r == HTTP_NEED_MORE) {
				CHECK(off == plen);
				break;
			}
			if (r == HTTP_OK) {
				CHECK(p.method[p.method_len] == '\0' &&
				      p.target[p.target_len] == '\0');
				ref_check_ok(in + start, abs - start, &p);
			} else {
				CHECK(r == HTTP_ERROR && p.error != NULL && used > 0);
				CHECK(p.pos == abs - start - 1);
				CHECK(p.status == 400 || p.status == 414 ||
				      p.status == 431 || p.status == 501 ||
				      p.status == 505);
			}
			tr_outcome(t, r, abs, &p);
			/* the next request starts on the byte after */
			http_req_init(&p);
			start = abs;
		}
		free(piece);
		from = to;
	}
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

static void compare(const char *what, const struct trace *want, const struct trace *got)
{
	if (want->len == got->len &&
	    (want->len == 0 || !memcmp(want->buf, got->buf, want->len)))
		return;
	fprintf(stderr, "fuzz_http_req: %s differs from fed whole (%zu vs %zu bytes)\n",
	        what, want->len, got->len);
	abort();
}

/* libFuzzer entry: one input as laid out at the top of this file; 0 or abort(). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct trace ref = {0}, got = {0};
	uint64_t seed;
	const char *in;
	char *wide = NULL;
	size_t n, i, ncuts, maxpiece;
	size_t *cuts;

	if (size < 3)
		return 0;
	seed = ((uint64_t)data[1] << 8 | data[2]) * 0x9e3779b97f4a7c15ULL + 1;
	in = (const char *)data + 3;
	n = size - 3;
	if (data[0] & 1) {
		static const char line[] = "GET /metrics HTTP/1.1\r\nX: ";
		size_t pre = HTTP_REQ_HEAD_MAX - 40 + (data[0] >> 2);
		size_t fill = pre - (sizeof(line) - 1) - 2;

		wide = malloc(pre + n);
		CHECK(wide != NULL);
		memcpy(wide, line, sizeof(line) - 1);
		memset(wide + sizeof(line) - 1, 'v', fill);
		memcpy(wide + pre - 2, "\r\n", 2);
		if (n > 0)
			memcpy(wide + pre, in, n);
		in = wide;
		n += pre;
	}
	cuts = malloc((n + 1) * sizeof(*cuts));
	CHECK(cuts != NULL);

	real_run(in, n, NULL, 0, &ref);

	maxpiece = 1 + (size_t)(rng_next(&seed) % (data[1] & 1 ? 8 : 3000));
	for (ncuts = 0, i = 0;;) {
		i += 1 + (size_t)(rng_next(&seed) % maxpiece);
		if (i >= n)
			break;
		cuts[ncuts++] = i;
	}
	real_run(in, n, cuts, ncuts, &got);
	compare("fed in pieces", &ref, &got);

	/* byte by byte; for widened inputs only now and then, it is the slow part */
	if (n <= 4096 || (data[2] & 7) == 0) {
		got.len = 0;
		for (i = 0; i + 1 < n; i++)
			cuts[i] = i + 1;
		real_run(in, n, cuts, n > 0 ? n - 1 : 0, &got);
		compare("fed byte by byte", &ref, &got);
	}

	free(ref.buf);
	free(got.buf);
	free(cuts);
	free(wide);
	return 0;
}
