/*
 * fuzz_pop3_cmd.c - libFuzzer harness for the POP3 command parser.
 *
 * Input: three control bytes, then the bytes "from the client".
 *   byte 0  bit 0: widen: prefix the payload with copies of its first byte,
 *                  POP3_CMD_LINE_MAX - 8 + (byte 0 >> 4) of them, so the
 *                  first line lands around the line bound
 *           bit 1: repeat the payload until it passes 2 * POP3_CMD_LINE_MAX
 *   bytes 1-2  seed for the split points
 *
 * The payload is parsed by a simple whole-input reference model and by the
 * real parser fed whole, in random pieces and one byte at a time; the traces
 * of commands and errors must all be equal, else abort(). Each piece lives
 * in its own exact-size heap buffer so AddressSanitizer sees any read past
 * what the parser was given.
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
			fprintf(stderr, "fuzz_pop3_cmd: check failed: %s (line %d)\n",   \
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

/* A command: 'C', verb with its NUL, args length and bytes, line length. */
static void tr_cmd(struct trace *t, const char *verb, const char *args, size_t args_len,
                   size_t line_len)
{
	tr_put(t, "C", 1);
	tr_put(t, verb, strlen(verb) + 1);
	tr_put(t, &args_len, sizeof(args_len));
	tr_put(t, args, args_len);
	tr_put(t, &line_len, sizeof(line_len));
}

/* RFC 1939 section 3 as a reader would write it: whole lines, then split. */
static void ref_run(const char *in, size_t n, struct trace *t)
{
	size_t pos = 0;

	while (pos < n) {
		const char *lf = memchr(in + pos, '\n', n - pos);
		size_t len, content, v, i;
		char verb[POP3_VERB_MAX] = "";

		if (lf == NULL) {
			if (n - pos >= POP3_CMD_LINE_MAX)
				tr_put(t, "X", 1);
			return;
		}
		len = (size_t)(lf - (in + pos)) + 1;
		if (len > POP3_CMD_LINE_MAX) {
			tr_put(t, "X", 1);
			pos += len;
			continue;
		}
		content = len - 1;
		if (content > 0 && in[pos + content - 1] == '\r')
			content--;
		for (v = 0; v < content && in[pos + v] != ' '; v++)
			;
		if (v < POP3_VERB_MAX) {
			for (i = 0; i < v; i++) {
				unsigned char ch = (unsigned char)in[pos + i];

				if (ch <= ' ' || ch >= 0x7f)
					break;
				verb[i] = (char)(ch >= 'a' && ch <= 'z' ? ch - 32 : ch);
			}
			verb[i < v ? 0 : v] = '\0';
		}
		if (v < content)
			tr_cmd(t, verb, in + pos + v + 1, content - v - 1, len);
		else
			tr_cmd(t, verb, "", 0, len);
		pos += len;
	}
}

/* Feeds in cut at the ascending offsets cuts[0..ncuts) and records the trace. */
static void real_run(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct trace *t)
{
	static struct pop3_cmd_parser p;
	size_t from = 0, abs = 0, k;

	pop3_cmd_init(&p);
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, off = 0;
		char *piece = malloc(plen != 0 ? plen : 1);

		CHECK(piece != NULL);
		memcpy(piece, in + from, plen);
		for (;;) {
			struct pop3_cmd cmd;
			size_t used = SIZE_MAX;
			int r = pop3_cmd_feed(&p, piece + off, plen - off, &used, &cmd);

			CHECK(used <= plen - off);
			off += used;
			abs += used;
			if (r == POP3_NEED_MORE) {
				CHECK(off == plen);
				break;
			}
			if (r == POP3_ERROR) {
				CHECK(p.error != NULL && used > 0);
				tr_put(t, "X", 1);
				continue;
			}
			CHECK(r == POP3_OK);
			CHECK(cmd.line_len >= 1 && cmd.line_len <= POP3_CMD_LINE_MAX);
			CHECK(cmd.line[cmd.line_len - 1] == '\n' && abs >= cmd.line_len);
			CHECK(memcmp(cmd.line, in + abs - cmd.line_len, cmd.line_len) ==
			      0);
			CHECK(cmd.args >= cmd.line &&
			      cmd.args + cmd.args_len < cmd.line + cmd.line_len);
			CHECK(memchr(cmd.verb, '\0', POP3_VERB_MAX) != NULL);
			tr_cmd(t, cmd.verb, cmd.args, cmd.args_len, cmd.line_len);
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
	fprintf(stderr,
	        "fuzz_pop3_cmd: %s differs from the reference (%zu vs %zu bytes)\n", what,
	        want->len, got->len);
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
	if ((data[0] & 1) && n > 0) {
		size_t rep = POP3_CMD_LINE_MAX - 8 + (data[0] >> 4);

		wide = malloc(rep + n);
		CHECK(wide != NULL);
		memset(wide, in[0], rep);
		memcpy(wide + rep, in, n);
		in = wide;
		n += rep;
	}
	if ((data[0] & 2) && n > 0) {
		size_t total = n, reps = (2 * POP3_CMD_LINE_MAX + 64) / n + 1;
		char *r = malloc(n * reps);

		CHECK(r != NULL);
		for (i = 0; i < reps; i++)
			memcpy(r + i * n, in, n);
		total = n * reps;
		free(wide);
		wide = r;
		in = wide;
		n = total;
	}
	cuts = malloc((n + 1) * sizeof(*cuts));
	CHECK(cuts != NULL);

	ref_run(in, n, &ref);

	real_run(in, n, NULL, 0, &got);
	compare("fed whole", &ref, &got);
	got.len = 0;

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
