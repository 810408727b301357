/*
 * test_pop3_parse.c - Check suite for proxy/pop3_parse.c.
 *
 * Table-driven: each response case is {input, announced modes, max_body,
 * expected status line, concatenated DATA, END, error and its offset}; each
 * command case is {input, expected commands and errors}. Every case is fed
 * whole, one byte at a time, split in two at every point, and in random
 * pieces; all runs must give the same event trace. Each piece is copied into
 * its own heap buffer of exactly its size, so AddressSanitizer catches a
 * parser that reads past what it was given or keeps a pointer into it.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pop3_parse.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define B(x)                                                                             \
	{                                                                                \
		x, sizeof(x) - 1                                                         \
	}

/* Split every input at every point only up to this size; larger ones are strided. */
#define SPLIT_ALL_MAX 30000
#define RANDOM_SPLITS 40

/*
 * ck_assert records a mark point (a write to Check's pipe) on every passing
 * check; the per-call checks below run millions of times, so they only call
 * into Check when they fail.
 */
#define REQUIRE(cond, ...)                                                               \
	do {                                                                             \
		if (!(cond))                                                             \
			ck_abort_msg(__VA_ARGS__);                                       \
	} while (0)

struct bytes {
	const char *p;
	size_t n;
};

/* ---------------- helpers: a growable trace of events ---------------- */

/*
 * A run's events, serialised: 'S' kind multiline len line | 'D' len bytes |
 * 'E' crlf | 'X' pos | 'C' verb NUL len args. Adjacent DATA records merge, so
 * traces compare equal however the parser chose to chunk the body.
 */
struct trace {
	char *buf;
	size_t len, cap;
	size_t open_data; /* offset of the open DATA record's length, or SIZE_MAX */
	size_t data_events;
	uint64_t noncanonical;
};

static void trace_init(struct trace *t)
{
	memset(t, 0, sizeof(*t));
	t->open_data = SIZE_MAX;
}

static void trace_free(struct trace *t)
{
	free(t->buf);
	trace_init(t);
}

static void trace_put(struct trace *t, const void *p, size_t n)
{
	if (t->len + n > t->cap) {
		size_t ncap = t->cap != 0 ? t->cap : 256;

		while (ncap < t->len + n)
			ncap *= 2;
		t->buf = realloc(t->buf, ncap);
		REQUIRE(t->buf != NULL, "out of memory");
		t->cap = ncap;
	}
	if (n > 0)
		memcpy(t->buf + t->len, p, n);
	t->len += n;
}

static void trace_put_u64(struct trace *t, uint64_t v)
{
	trace_put(t, &v, sizeof(v));
}

static void trace_status(struct trace *t, enum pop3_status st, int ml, const char *line,
                         size_t n)
{
	char hdr[3] = {'S', (char)('0' + st), (char)('0' + ml)};

	t->open_data = SIZE_MAX;
	trace_put(t, hdr, 3);
	trace_put_u64(t, n);
	trace_put(t, line, n);
}

static void trace_data(struct trace *t, const char *p, size_t n)
{
	uint64_t cur;

	t->data_events++;
	if (n == 0)
		return;
	if (t->open_data == SIZE_MAX) {
		trace_put(t, "D", 1);
		t->open_data = t->len;
		trace_put_u64(t, 0);
	}
	memcpy(&cur, t->buf + t->open_data, sizeof(cur));
	cur += n;
	memcpy(t->buf + t->open_data, &cur, sizeof(cur));
	trace_put(t, p, n);
}

static void trace_end(struct trace *t, int crlf)
{
	char rec[2] = {'E', (char)('0' + crlf)};

	t->open_data = SIZE_MAX;
	trace_put(t, rec, 2);
}

static void trace_error(struct trace *t, uint64_t pos)
{
	t->open_data = SIZE_MAX;
	trace_put(t, "X", 1);
	trace_put_u64(t, pos);
}

static void trace_cmd(struct trace *t, const char *verb, const char *args, size_t n)
{
	t->open_data = SIZE_MAX;
	trace_put(t, "C", 1);
	trace_put(t, verb, strlen(verb) + 1);
	trace_put_u64(t, n);
	trace_put(t, args, n);
}

/* Prints a trace with non-printable bytes escaped, for failure messages. */
static void trace_dump(const char *what, const struct trace *t)
{
	size_t i;

	fprintf(stderr, "  %s (%zu bytes): ", what, t->len);
	for (i = 0; i < t->len && i < 600; i++) {
		unsigned char c = (unsigned char)t->buf[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "%s\n", t->len > 600 ? "..." : "");
}

static int trace_eq(const struct trace *a, const struct trace *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->buf, b->buf, a->len) == 0) &&
	       a->noncanonical == b->noncanonical;
}

/* xorshift64: deterministic random splits and bodies */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* ---------------- response parser runs ---------------- */

struct resp_case {
	const char *name;
	struct bytes in;
	/* one char per response to announce: '0' single-line, '1' multiline on OK;
	 * "" announces nothing (bytes arrive while IDLE) */
	const char *modes;
	uint64_t max_body;
	/* expectations for the first response */
	const char *status; /* the status line, NULL when none completes */
	enum pop3_status st;
	int ml; /* STATUS multiline flag */
	struct bytes data;
	int end;   /* 0 no END, 1 END with CRLF, 2 END with bare LF */
	int error; /* POP3_ERROR expected, at error_pos */
	uint64_t error_pos;
	uint64_t noncanonical;
	size_t max_data_events; /* fed whole, at most this many DATA events (0: any) */
};

/*
 * Feeds c->in cut at the offsets cuts[0..ncuts) (ascending) and records the
 * events. Checks the contract on every call: consumed within bounds, all
 * bytes used on NEED_MORE, DATA inside the piece (or the static CR), the
 * body never over max_body.
 */
static void resp_run(const struct resp_case *c, const size_t *cuts, size_t ncuts,
                     struct trace *t)
{
	struct pop3_resp_parser p;
	const char *modes = c->modes;
	size_t from = 0;
	size_t k;

	trace_init(t);
	pop3_resp_init(&p, c->max_body);
	if (*modes != '\0')
		pop3_resp_expect(&p, *modes++ - '0');
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : c->in.n;
		size_t plen = to - from;
		char *piece = malloc(plen != 0 ? plen : 1);
		size_t off = 0;
		size_t calls = 0;
		int stop = 0;

		REQUIRE(piece != NULL, "out of memory");
		memcpy(piece, c->in.p + from, plen);
		for (;;) {
			struct pop3_resp_event ev;
			size_t used = SIZE_MAX;
			int r = pop3_resp_feed(&p, piece + off, plen - off, &used, &ev);

			REQUIRE(++calls <= 2 * plen + 4, "%s: parser does not progress",
			        c->name);
			REQUIRE(used <= plen - off, "%s: consumed past the input",
			        c->name);
			if (r == POP3_ERROR) {
				REQUIRE(p.error != NULL &&
				            strcmp(pop3_resp_error(&p), "no error") != 0,
				        "%s: ERROR without a reason", c->name);
				trace_error(t, p.pos);
				/* the error is sticky until pop3_resp_init */
				REQUIRE(pop3_resp_feed(&p, "+OK\r\n", 5, &used, &ev) ==
				            POP3_ERROR,
				        "%s: error not sticky", c->name);
				stop = 1;
				break;
			}
			if (r == POP3_NEED_MORE) {
				REQUIRE(used == plen - off, "%s: NEED_MORE left bytes",
				        c->name);
				break;
			}
			REQUIRE(r == POP3_OK, "%s: bad result %d", c->name, r);
			off += used;
			switch (ev.type) {
			case POP3_EV_STATUS:
				REQUIRE(ev.data == p.line && ev.len <= POP3_STATUS_MAX &&
				            ev.data[ev.len - 1] == '\n',
				        "%s: bad STATUS event", c->name);
				trace_status(t, ev.status, ev.multiline, ev.data, ev.len);
				break;
			case POP3_EV_DATA:
				if (ev.len == 1 && ev.data[0] == '\r' &&
				    !(ev.data >= piece && ev.data < piece + plen)) {
					/* the static CR of a ".\r" line start */
				} else {
					REQUIRE(ev.data >= piece && ev.len >= 1 &&
					            ev.data + ev.len <= piece + off,
					        "%s: DATA outside the consumed input",
					        c->name);
				}
				trace_data(t, ev.data, ev.len);
				break;
			case POP3_EV_END:
				trace_end(t, ev.crlf_term);
				break;
			default:
				ck_abort_msg("%s: OK without an event", c->name);
			}
			if (c->max_body != 0)
				REQUIRE(p.body_len <= c->max_body,
				        "%s: body over max_body", c->name);
			if (p.state == POP3_RS_IDLE) {
				t->noncanonical = p.noncanonical;
				if (*modes != '\0')
					pop3_resp_expect(&p, *modes++ - '0');
			}
		}
		free(piece);
		from = to;
		if (stop)
			break;
	}
	if (p.state != POP3_RS_IDLE)
		t->noncanonical = p.noncanonical;
}

/* The trace a case's expectation fields describe. */
static void resp_expected(const struct resp_case *c, struct trace *t)
{
	trace_init(t);
	if (c->status != NULL)
		trace_status(t, c->st, c->ml, c->status, strlen(c->status));
	trace_data(t, c->data.p, c->data.n);
	if (c->end != 0)
		trace_end(t, c->end == 1);
	if (c->error)
		trace_error(t, c->error_pos);
	t->noncanonical = c->noncanonical;
}

static void resp_compare(const struct resp_case *c, const struct trace *want,
                         const struct trace *got, const char *mode, size_t at)
{
	if (trace_eq(want, got))
		return;
	fprintf(stderr, "%s: mismatch fed %s (%zu)\n", c->name, mode, at);
	trace_dump("want", want);
	trace_dump("got ", got);
	fprintf(stderr, "  noncanonical want %llu got %llu\n",
	        (unsigned long long)want->noncanonical,
	        (unsigned long long)got->noncanonical);
	ck_abort_msg("%s: trace mismatch fed %s (%zu)", c->name, mode, at);
}

/*
 * Runs one response case whole, byte by byte, split in two at every point
 * (strided for big inputs) and in random pieces, against want.
 */
static void resp_check_against(const struct resp_case *c, const struct trace *want)
{
	struct trace got;
	size_t n = c->in.n;
	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	size_t i, s, stride;
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ n;

	ck_assert_ptr_nonnull(cuts);
	resp_run(c, NULL, 0, &got);
	resp_compare(c, want, &got, "whole", 0);
	if (c->max_data_events != 0)
		ck_assert_msg(got.data_events <= c->max_data_events,
		              "%s: %zu DATA events fed whole, want at most %zu", c->name,
		              got.data_events, c->max_data_events);
	trace_free(&got);

	for (i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	resp_run(c, cuts, n > 0 ? n - 1 : 0, &got);
	resp_compare(c, want, &got, "byte by byte", 0);
	trace_free(&got);

	stride = n <= SPLIT_ALL_MAX ? 1 : 97;
	for (s = 0; s <= n; s += (s < 64 || s + 64 > n) ? 1 : stride) {
		cuts[0] = s;
		resp_run(c, cuts, 1, &got);
		resp_compare(c, want, &got, "split at", s);
		trace_free(&got);
	}

	for (i = 0; i < RANDOM_SPLITS && n > 1; i++) {
		size_t k = 0, at = 0;

		while (at < n) {
			at += 1 + rng_next(&seed) % (i % 2 ? 7 : 200);
			if (at < n)
				cuts[k++] = at;
		}
		resp_run(c, cuts, k, &got);
		resp_compare(c, want, &got, "random pieces", i);
		trace_free(&got);
	}
	free(cuts);
}

static void resp_check(const struct resp_case *c)
{
	struct trace want;

	resp_expected(c, &want);
	resp_check_against(c, &want);
	trace_free(&want);
}

/* clang-format off */
#define OK_LINE(l) .status = l, .st = POP3_ST_OK
#define ERR_AT(p) .error = 1, .error_pos = p
static const struct resp_case resp_cases[] = {
	/* status lines */
	{"single +OK", B("+OK 2 320\r\n"), "0", OK_LINE("+OK 2 320\r\n")},
	{"single +OK bare LF", B("+OK\n"), "0", OK_LINE("+OK\n")},
	{"-ERR is single-line even when multiline", B("-ERR no such message\r\n"), "1",
	 .status = "-ERR no such message\r\n", .st = POP3_ST_ERR},
	{"bare -ERR", B("-ERR\r\n"), "1", .status = "-ERR\r\n", .st = POP3_ST_ERR},
	{"SASL continuation", B("+ dXNlcm5hbWU6\r\n"), "1", .status = "+ dXNlcm5hbWU6\r\n",
	 .st = POP3_ST_CONT},
	{"empty SASL continuation", B("+\r\n"), "1", .status = "+\r\n", .st = POP3_ST_CONT},
	{"+OKAY is not +OK", B("+OKAY\r\n"), "1", .status = "+OKAY\r\n", .st = POP3_ST_CONT},
	{"+ok is not +OK (case-sensitive)", B("+ok\r\n"), "1", .status = "+ok\r\n",
	 .st = POP3_ST_CONT},
	{"-ERRX", B("-ERRX\r\n"), "1", ERR_AT(0)},
	{"-ER", B("-ER\r\n"), "1", ERR_AT(0)},
	{"-err lower case", B("-err\r\n"), "1", ERR_AT(0)},
	{"status not +/-", B("OK hi\r\n"), "1", ERR_AT(0)},
	{"empty status line", B("\r\n"), "1", ERR_AT(0)},
	{"IMAP greeting", B("* OK IMAP4rev1\r\n"), "1", ERR_AT(0)},
	{"CR inside status", B("+OK a\rb\r\n"), "1", ERR_AT(5)},
	{"CR without LF then a line", B("+OK\r+OK\r\n.\r\n"), "1", ERR_AT(3)},
	{"status CR at the end, no LF yet", B("+OK\r"), .modes = "1"},
	{"incomplete status", B("+OK 3 messages"), .modes = "0"},
	{"nothing at all", B(""), .modes = "1"},
	/* multi-line bodies */
	{"RETR body", B("+OK 120 octets\r\nline one\r\nline two\r\n.\r\n"), "1",
	 OK_LINE("+OK 120 octets\r\n"), .ml = 1, .data = B("line one\r\nline two\r\n"),
	 .end = 1, .max_data_events = 1},
	{"empty body", B("+OK\r\n.\r\n"), "1", OK_LINE("+OK\r\n"), .ml = 1, .end = 1},
	{"dot-stuffed lines", B("+OK\r\n..\r\n..foo\r\n...\r\n.bar\r\nx.y\r\n.\r\n"), "1",
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B(".\r\n.foo\r\n..\r\nbar\r\nx.y\r\n"),
	 .end = 1, .noncanonical = 1},
	{"lone dot inside", B("+OK\r\nA\r\n..\r\nB\r\n.\r\n"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("A\r\n.\r\nB\r\n"), .end = 1},
	{"bare LF body", B("+OK\nabc\n..x\n\n.\n"), "1", OK_LINE("+OK\n"), .ml = 1,
	 .data = B("abc\n.x\n\n"), .end = 2},
	{"CRLF body, bare LF terminator", B("+OK\r\nab\r\n.\n"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("ab\r\n"), .end = 2},
	{"CR without LF in body", B("+OK\r\na\rb\r\n\r\r\n.\r\n"), "1",
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("a\rb\r\n\r\r\n"), .end = 1},
	{"dot CR not followed by LF", B("+OK\r\n.\rX\r\n.\r\n"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("\rX\r\n"), .end = 1, .noncanonical = 1},
	{"dot CR CR LF", B("+OK\r\n.\r\r\n.\r\n"), "1", OK_LINE("+OK\r\n"), .ml = 1,
	 .data = B("\r\r\n"), .end = 1, .noncanonical = 1},
	{"dot CR dot", B("+OK\r\n.\r.\r\n.\r\n"), "1", OK_LINE("+OK\r\n"), .ml = 1,
	 .data = B("\r.\r\n"), .end = 1, .noncanonical = 1},
	{"dot space", B("+OK\r\n. \r\n.x\n.\r\n"), "1", OK_LINE("+OK\r\n"), .ml = 1,
	 .data = B(" \r\nx\n"), .end = 1, .noncanonical = 2},
	{"dot not at line start", B("+OK\r\nabc.\r\n"), "1", OK_LINE("+OK\r\n"), .ml = 1,
	 .data = B("abc.\r\n")},
	{"unterminated, dot pending", B("+OK\r\nabc\r\n."), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("abc\r\n")},
	{"unterminated, dot CR pending", B("+OK\r\nabc\r\n.\r"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("abc\r\n")},
	{"NUL bytes in body", B("+OK\r\na\0b\r\n\0\r\n.\r\n"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("a\0b\r\n\0\r\n"), .end = 1},
	{"no body after -ERR, dot line is idle bytes", B("-ERR x\r\n.\r\n"), "1",
	 .status = "-ERR x\r\n", .st = POP3_ST_ERR, ERR_AT(8)},
	{"single-line +OK, then bytes while idle", B("+OK\r\nX"), "0", OK_LINE("+OK\r\n"),
	 ERR_AT(5)},
	{"bytes after END", B("+OK\r\nA\r\n.\r\nX"), "1", OK_LINE("+OK\r\n"), .ml = 1,
	 .data = B("A\r\n"), .end = 1, ERR_AT(11)},
	{"bytes before any expect", B("+OK\r\n"), "", ERR_AT(0)},
	{"many lines, one chunk", B("+OK\r\na\r\nb\r\nc\r\nd\r\n.\r\n"), "1",
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("a\r\nb\r\nc\r\nd\r\n"), .end = 1,
	 .max_data_events = 1},
	{"stuffed lines cut chunks only there",
	 B("+OK\r\na\r\n..b\r\nc\r\n..d\r\ne\r\n.\r\n"), "1", OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("a\r\n.b\r\nc\r\n.d\r\ne\r\n"), .end = 1,
	 .max_data_events = 3},
	/* max_body: unstuffed bytes, the terminator does not count */
	{"body exactly at max_body", B("+OK\r\nabcd\r\n.\r\n"), "1", 6, OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("abcd\r\n"), .end = 1},
	{"body one past max_body", B("+OK\r\nabcd\r\n.\r\n"), "1", 5, OK_LINE("+OK\r\n"),
	 .ml = 1, .data = B("abcd\r"), ERR_AT(10)},
	{"max_body counts unstuffed bytes", B("+OK\r\n..\r\n.\r\n"), "1", 3,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B(".\r\n"), .end = 1},
	{"max_body past, stuffed line", B("+OK\r\n..\r\n.\r\n"), "1", 2,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B(".\r"), ERR_AT(8)},
	{"max_body at the static CR", B("+OK\r\nab\n.\rX\n.\n"), "1", 3,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("ab\n"), ERR_AT(9), .noncanonical = 1},
	{"max_body after the static CR", B("+OK\r\nab\n.\rX\n.\n"), "1", 4,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("ab\n\r"), ERR_AT(10), .noncanonical = 1},
	{"max_body before the last LF", B("+OK\r\nab\n.\rX\n.\n"), "1", 5,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("ab\n\rX"), ERR_AT(11), .noncanonical = 1},
	{"max_body exactly, static CR", B("+OK\r\nab\n.\rX\n.\n"), "1", 6,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("ab\n\rX\n"), .end = 2, .noncanonical = 1},
	{"max_body 1, empty body", B("+OK\r\n.\r\n"), "1", 1, OK_LINE("+OK\r\n"), .ml = 1,
	 .end = 1},
	{"max_body 1, byte then dot line", B("+OK\r\nx\n.\r\n"), "1", 1,
	 OK_LINE("+OK\r\n"), .ml = 1, .data = B("x"), ERR_AT(6)},
	{"max_body ignores the status line", B("+OK 0123456789\r\n.\r\n"), "1", 1,
	 OK_LINE("+OK 0123456789\r\n"), .ml = 1, .end = 1},
};
/* clang-format on */

START_TEST(test_resp_table)
{
	resp_check(&resp_cases[_i]);
}
END_TEST

/* Builds "prefix" + n copies of fill + "suffix" in a fresh heap buffer. */
static char *gen(const char *prefix, size_t n, char fill, const char *suffix,
                 size_t *len_r)
{
	size_t pl = strlen(prefix), sl = strlen(suffix);
	char *s = malloc(pl + n + sl + 1);

	ck_assert_ptr_nonnull(s);
	memcpy(s, prefix, pl);
	memset(s + pl, fill, n);
	memcpy(s + pl + n, suffix, sl + 1);
	*len_r = pl + n + sl;
	return s;
}

START_TEST(test_resp_status_bounds)
{
	struct resp_case c = {.name = "status", .modes = "1", .st = POP3_ST_OK, .ml = 1};
	size_t n;
	char *in;

	/* 4 + 506 + 2 = 512 octets with the CRLF: accepted (RFC 2449 section 4) */
	in = gen("+OK ", 506, 'x', "\r\n", &n);
	c.name = "status line of exactly 512 with CRLF";
	c.in = (struct bytes){in, n};
	c.status = in;
	resp_check(&c);
	free(in);

	in = gen("+OK ", 507, 'x', "\n", &n);
	c.name = "status line of exactly 512 with bare LF";
	c.in = (struct bytes){in, n};
	c.status = in;
	resp_check(&c);
	free(in);

	/* one more: 513, fails at the 512th byte, which should have been LF */
	in = gen("+OK ", 507, 'x', "\r\n", &n);
	c = (struct resp_case){"status line of 513", {in, n}, "1", ERR_AT(511)};
	resp_check(&c);
	free(in);

	in = gen("-ERR ", 3000, 'y', "", &n);
	c.name = "status line longer than any buffer, never ends";
	c.in = (struct bytes){in, n};
	resp_check(&c);
	free(in);

	in = gen("+OK ", 508, 'x', "\r\n", &n);
	c.name = "512 octets then CRLF";
	c.in = (struct bytes){in, n};
	resp_check(&c);
	free(in);

	in = gen("+OK ", 506, 'x', "", &n);
	c = (struct resp_case){"511 octets, no LF yet", {in, n}, .modes = "1"};
	resp_check(&c);
	free(in);
}
END_TEST

START_TEST(test_resp_long_body_line)
{
	/* a 100000-byte line: longer than any read buffer, passes as data */
	size_t n;
	char *in = gen("+OK\r\n", 100000, 'z', "\r\n.\r\n", &n);
	struct resp_case c = {"100000-byte body line",
	                      {in, n},
	                      "1",
	                      OK_LINE("+OK\r\n"),
	                      .ml = 1,
	                      .data = {in + 5, 100002},
	                      .end = 1,
	                      .max_data_events = 1};

	resp_check(&c);
	/* the same body at its exact bound, and one past it */
	c.max_body = 100002;
	c.name = "100000-byte line at max_body";
	resp_check(&c);
	c.max_body = 100001;
	c.name = "100000-byte line one past max_body";
	c.data.n = 100001;
	c.end = 0;
	c.error = 1;
	c.error_pos = 5 + 100001;
	resp_check(&c);
	free(in);
}
END_TEST

START_TEST(test_resp_pipelined)
{
	static const char in[] = "+OK 2 messages\r\n"
	                         "+OK\r\n1 120\r\n2 200\r\n.\r\n"
	                         "+ \r\n"
	                         "-ERR no\r\n"
	                         "+OK\n..\n.\n";
	struct resp_case c = {"pipelined responses", B(in), .modes = "01001"};
	struct trace want;

	trace_init(&want);
	trace_status(&want, POP3_ST_OK, 0, "+OK 2 messages\r\n", 16);
	trace_status(&want, POP3_ST_OK, 1, "+OK\r\n", 5);
	trace_data(&want, "1 120\r\n2 200\r\n", 14);
	trace_end(&want, 1);
	trace_status(&want, POP3_ST_CONT, 0, "+ \r\n", 4);
	trace_status(&want, POP3_ST_ERR, 0, "-ERR no\r\n", 9);
	trace_status(&want, POP3_ST_OK, 1, "+OK\n", 4);
	trace_data(&want, ".\n", 2);
	trace_end(&want, 0);
	resp_check_against(&c, &want);
	trace_free(&want);
}
END_TEST

START_TEST(test_resp_event_details)
{
	/* consumed counts, pos, noncanonical reset, error text, re-init */
	struct pop3_resp_parser p;
	struct pop3_resp_event ev;
	static const char in[] = "+OK\r\n.x\r\n.\r\n";
	size_t used;

	pop3_resp_init(&p, 0);
	ck_assert_str_eq(pop3_resp_error(&p), "no error");
	pop3_resp_expect(&p, 1);
	ck_assert_int_eq(pop3_resp_feed(&p, in, sizeof(in) - 1, &used, &ev), POP3_OK);
	ck_assert_int_eq(ev.type, POP3_EV_STATUS);
	ck_assert_int_eq(ev.multiline, 1);
	ck_assert_uint_eq(used, 5);
	ck_assert_uint_eq(p.pos, 5);
	ck_assert_int_eq(pop3_resp_feed(&p, in + 5, sizeof(in) - 6, &used, &ev), POP3_OK);
	ck_assert_int_eq(ev.type, POP3_EV_DATA);
	ck_assert_ptr_eq(ev.data, in + 6); /* the dot is skipped, x onward is data */
	ck_assert_uint_eq(ev.len, 3);
	ck_assert_uint_eq(used, 4);
	ck_assert_int_eq(pop3_resp_feed(&p, in + 9, 3, &used, &ev), POP3_OK);
	ck_assert_int_eq(ev.type, POP3_EV_END);
	ck_assert_int_eq(ev.crlf_term, 1);
	ck_assert_uint_eq(p.noncanonical, 1);
	ck_assert_uint_eq(p.body_len, 3);
	ck_assert_int_eq(p.state, POP3_RS_IDLE);
	/* empty feeds while idle are fine */
	ck_assert_int_eq(pop3_resp_feed(&p, "", 0, &used, &ev), POP3_NEED_MORE);
	ck_assert_uint_eq(used, 0);
	pop3_resp_expect(&p, 1);
	ck_assert_uint_eq(p.noncanonical, 0);
	ck_assert_int_eq(pop3_resp_feed(&p, "HTTP/1.1", 8, &used, &ev), POP3_ERROR);
	ck_assert_str_eq(pop3_resp_error(&p),
	                 "status line does not start with '+' or '-'");
	ck_assert_uint_eq(p.pos, 12);
	pop3_resp_init(&p, 0);
	ck_assert_ptr_null(p.error);
	pop3_resp_expect(&p, 0);
	ck_assert_int_eq(pop3_resp_feed(&p, "+OK\r\n", 5, &used, &ev), POP3_OK);
	ck_assert_int_eq(ev.type, POP3_EV_STATUS);
	ck_assert_int_eq(ev.multiline, 0);
}
END_TEST

/* ---------------- dot-stuffing ---------------- */

/* Stuffs in whole and returns a heap copy of the stuffed body + terminator. */
static char *stuff_all(const char *in, size_t n, int crlf, size_t *len_r)
{
	struct pop3_stuffer s;
	char *out = malloc(2 * n + 5);
	size_t o;

	ck_assert_ptr_nonnull(out);
	pop3_stuff_init(&s);
	o = pop3_stuff(&s, in, n, out);
	o += pop3_stuff_finish(&s, crlf, out + o);
	*len_r = o;
	return out;
}

struct stuff_case {
	struct bytes in;
	int crlf;
	struct bytes out;
};

/* clang-format off */
static const struct stuff_case stuff_cases[] = {
	{B(""), 1, B(".\r\n")},
	{B(""), 0, B(".\n")},
	{B("a\r\n"), 1, B("a\r\n.\r\n")},
	{B(".\r\n"), 1, B("..\r\n.\r\n")},
	{B("a\r\n.b\r\n..\r\nc.d\r\n"), 1, B("a\r\n..b\r\n...\r\nc.d\r\n.\r\n")},
	{B("a\n.\n"), 0, B("a\n..\n.\n")},
	{B("no newline"), 1, B("no newline\r\n.\r\n")},
	{B("no newline"), 0, B("no newline\r\n.\n")},
	{B("."), 1, B("..\r\n.\r\n")},
	{B("x\r.y\r\n"), 1, B("x\r.y\r\n.\r\n")},
};
/* clang-format on */

START_TEST(test_stuff_table)
{
	const struct stuff_case *c = &stuff_cases[_i];
	size_t n;
	char *out = stuff_all(c->in.p, c->in.n, c->crlf, &n);

	ck_assert_uint_eq(n, c->out.n);
	ck_assert_msg(memcmp(out, c->out.p, n) == 0, "stuffed output differs (case %d)",
	              _i);
	free(out);
}
END_TEST

/* A random body over a small alphabet rich in the bytes that matter. */
static size_t random_body(uint64_t *seed, char *buf, size_t max)
{
	static const char alpha[] = ".\r\n\n.a\0 b.";
	size_t n = (size_t)(rng_next(seed) % (max + 1));
	size_t i;

	for (i = 0; i < n; i++)
		buf[i] = alpha[rng_next(seed) % (sizeof(alpha) - 1)];
	return n;
}

START_TEST(test_stuff_round_trip)
{
	/* unstuff(stuff(x)) == x, the stuffer resumable at any split */
	uint64_t seed = 0x243f6a8885a308d3ULL;
	char body[2048];
	int iter;

	for (iter = 0; iter < 600; iter++) {
		size_t n = random_body(&seed, body, iter < 300 ? 40 : sizeof(body));
		int crlf = (int)(rng_next(&seed) & 1);
		size_t wlen, plen, o = 0, at = 0;
		char *whole = stuff_all(body, n, crlf, &wlen);
		char *pieced = malloc(2 * n + 5);
		char *resp;
		struct pop3_stuffer s;
		struct resp_case c = {
		    "round trip", {NULL, 0}, "1", OK_LINE("+OK\r\n"), .ml = 1};
		char *want;
		size_t want_n = n;

		ck_assert_ptr_nonnull(pieced);
		ck_assert_uint_le(wlen, 2 * n + 5);
		pop3_stuff_init(&s);
		while (at < n) {
			size_t k = 1 + (size_t)(rng_next(&seed) % 9);

			if (k > n - at)
				k = n - at;
			o += pop3_stuff(&s, body + at, k, pieced + o);
			at += k;
		}
		o += pop3_stuff_finish(&s, crlf, pieced + o);
		ck_assert_uint_eq(o, wlen);
		ck_assert(memcmp(pieced, whole, wlen) == 0);

		resp = malloc(5 + wlen);
		ck_assert_ptr_nonnull(resp);
		memcpy(resp, "+OK\r\n", 5);
		memcpy(resp + 5, whole, wlen);
		plen = 5 + wlen;
		/* a body not ending in LF gets a CRLF before the terminator */
		want = malloc(n + 2);
		ck_assert_ptr_nonnull(want);
		memcpy(want, body, n);
		if (n > 0 && body[n - 1] != '\n') {
			memcpy(want + n, "\r\n", 2);
			want_n += 2;
		}
		c.in = (struct bytes){resp, plen};
		c.data = (struct bytes){want, want_n};
		c.end = crlf ? 1 : 2;
		c.noncanonical = 0;
		if (iter < 60) {
			resp_check(&c);
		} else {
			struct trace wt, gt;

			resp_expected(&c, &wt);
			resp_run(&c, NULL, 0, &gt);
			resp_compare(&c, &wt, &gt, "whole", (size_t)iter);
			trace_free(&wt);
			trace_free(&gt);
		}
		free(want);
		free(resp);
		free(whole);
		free(pieced);
	}
}
END_TEST

/* ---------------- command parser ---------------- */

struct cmd_ev {
	int error;
	const char *verb;
	const char *args;
};

struct cmd_case {
	const char *name;
	struct bytes in;
	struct cmd_ev ev[4];
	size_t nev;
};

/*
 * Feeds c->in in the given pieces and records commands and errors; checks
 * that each command's line is exactly the input bytes it came from and that
 * its verb and arguments lie inside that line.
 */
static void cmd_run(const struct cmd_case *c, const size_t *cuts, size_t ncuts,
                    struct trace *t)
{
	struct pop3_cmd_parser *p = malloc(sizeof(*p));
	size_t from = 0, abs = 0;
	size_t k;

	REQUIRE(p != NULL, "out of memory");
	trace_init(t);
	pop3_cmd_init(p);
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : c->in.n;
		size_t plen = to - from;
		char *piece = malloc(plen != 0 ? plen : 1);
		size_t off = 0;
		size_t calls = 0;

		REQUIRE(piece != NULL, "out of memory");
		memcpy(piece, c->in.p + from, plen);
		for (;;) {
			struct pop3_cmd cmd;
			size_t used = SIZE_MAX;
			int r = pop3_cmd_feed(p, piece + off, plen - off, &used, &cmd);

			REQUIRE(++calls <= plen + 2, "%s: parser does not progress",
			        c->name);
			REQUIRE(used <= plen - off, "%s: consumed past the input",
			        c->name);
			off += used;
			abs += used;
			if (r == POP3_NEED_MORE) {
				REQUIRE(off == plen, "%s: NEED_MORE left bytes", c->name);
				break;
			}
			if (r == POP3_ERROR) {
				REQUIRE(p->error != NULL, "%s: ERROR without a reason",
				        c->name);
				trace_error(t, 0);
				continue;
			}
			REQUIRE(r == POP3_OK, "%s: bad result %d", c->name, r);
			REQUIRE(cmd.line_len <= POP3_CMD_LINE_MAX &&
			            abs >= cmd.line_len && cmd.line_len > 0 &&
			            cmd.line[cmd.line_len - 1] == '\n',
			        "%s: bad line length", c->name);
			REQUIRE(memcmp(cmd.line, c->in.p + abs - cmd.line_len,
			               cmd.line_len) == 0,
			        "%s: line is not the input", c->name);
			REQUIRE(cmd.args >= cmd.line &&
			            cmd.args + cmd.args_len < cmd.line + cmd.line_len &&
			            strlen(cmd.verb) < POP3_VERB_MAX,
			        "%s: verb or arguments outside the line", c->name);
			trace_cmd(t, cmd.verb, cmd.args, cmd.args_len);
		}
		free(piece);
		from = to;
	}
	free(p);
}

static void cmd_check(const struct cmd_case *c)
{
	struct trace want, got;
	size_t n = c->in.n;
	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	size_t i, s;
	uint64_t seed = 0x13198a2e03707344ULL ^ n;

	ck_assert_ptr_nonnull(cuts);
	trace_init(&want);
	for (i = 0; i < c->nev; i++) {
		if (c->ev[i].error)
			trace_error(&want, 0);
		else
			trace_cmd(&want, c->ev[i].verb, c->ev[i].args,
			          strlen(c->ev[i].args));
	}
	for (s = 0; s <= n + 2; s++) {
		const char *mode = "whole";
		size_t ncuts = 0;

		if (s == 1) {
			mode = "byte by byte";
			for (i = 0; i + 1 < n; i++)
				cuts[i] = i + 1;
			ncuts = n > 0 ? n - 1 : 0;
		} else if (s >= 2) {
			mode = "split at";
			cuts[0] = s - 2;
			ncuts = 1;
		}
		cmd_run(c, cuts, ncuts, &got);
		if (!trace_eq(&want, &got)) {
			fprintf(stderr, "%s: mismatch fed %s (%zu)\n", c->name, mode, s);
			trace_dump("want", &want);
			trace_dump("got ", &got);
			ck_abort_msg("%s: trace mismatch fed %s", c->name, mode);
		}
		trace_free(&got);
	}
	for (i = 0; i < RANDOM_SPLITS && n > 1; i++) {
		size_t k = 0, at = 0;

		while (at < n) {
			at += 1 + rng_next(&seed) % (i % 2 ? 5 : 3000);
			if (at < n)
				cuts[k++] = at;
		}
		cmd_run(c, cuts, k, &got);
		ck_assert_msg(trace_eq(&want, &got), "%s: mismatch fed in random pieces",
		              c->name);
		trace_free(&got);
	}
	trace_free(&want);
	free(cuts);
}

/* clang-format off */
#define CMD(v, a) {.verb = v, .args = a}
#define ERRL {.error = 1}
#define NONE {.verb = NULL}
static const struct cmd_case cmd_cases[] = {
	{"USER", B("USER alice\r\n"), {CMD("USER", "alice")}, 1},
	{"lower-case verb, bare LF", B("user alice\n"), {CMD("USER", "alice")}, 1},
	{"no arguments", B("QUIT\r\n"), {CMD("QUIT", "")}, 1},
	{"empty line", B("\r\n"), {CMD("", "")}, 1},
	{"empty line, bare LF", B("\n"), {CMD("", "")}, 1},
	{"only the first space is eaten", B("RETR  1\r\n"), {CMD("RETR", " 1")}, 1},
	{"trailing space kept", B("LIST 1 \r\n"), {CMD("LIST", "1 ")}, 1},
	{"several lines in one read", B("STAT\r\nLIST\r\nUIDL 3\r\n"),
	 {CMD("STAT", ""), CMD("LIST", ""), CMD("UIDL", "3")}, 3},
	{"incomplete", B("NOOP"), {NONE}, 0},
	{"incomplete after CR", B("NOOP\r"), {NONE}, 0},
	{"15-byte verb", B("AbCdEfGhIjKlMnO x\r\n"), {CMD("ABCDEFGHIJKLMNO", "x")}, 1},
	{"16-byte verb is dropped", B("ABCDEFGHIJKLMNOP x\r\n"), {CMD("", "x")}, 1},
	{"NUL in verb", B("US\0ER x\r\n"), {CMD("", "x")}, 1},
	{"tab is not a separator", B("USER\tbob\r\n"), {CMD("", "")}, 1},
	{"CR inside the verb", B("NOOP\rRETR 1\r\n"), {CMD("", "1")}, 1},
	{"CR CR LF", B("CAPA\r\r\n"), {CMD("", "")}, 1},
	{"high bytes", B("\xff\xfe\r\n"), {CMD("", "")}, 1},
	{"leading space", B(" USER a\r\n"), {CMD("", "USER a")}, 1},
	{"APOP", B("APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"),
	 {CMD("APOP", "mrose c4c9334bac560ecc979e58001b3e22fb")}, 1},
	{"SASL exchange", B("AUTH PLAIN\r\ndGVzdAB0ZXN0AHRlc3Q=\r\n*\r\n"),
	 {CMD("AUTH", "PLAIN"), CMD("", ""), CMD("*", "")}, 3},
	{"CR in arguments passes", B("PASS a\rb\r\n"), {CMD("PASS", "a\rb")}, 1},
};
/* clang-format on */

START_TEST(test_cmd_table)
{
	cmd_check(&cmd_cases[_i]);
}
END_TEST

START_TEST(test_cmd_line_bounds)
{
	struct cmd_case c;
	size_t n;
	char *in, *args;

	/* 8190 + CRLF = 8192: accepted; the long word is no verb */
	in = gen("", POP3_CMD_LINE_MAX - 2, 'A', "\r\n", &n);
	c = (struct cmd_case){"line of exactly the maximum", {in, n}, {CMD("", "")}, 1};
	cmd_check(&c);
	free(in);

	in = gen("", POP3_CMD_LINE_MAX - 1, 'A', "\n", &n);
	c = (struct cmd_case){"maximum with bare LF", {in, n}, {CMD("", "")}, 1};
	cmd_check(&c);
	free(in);

	in = gen("USER ", POP3_CMD_LINE_MAX - 7, 'a', "\r\n", &n);
	args = gen("", POP3_CMD_LINE_MAX - 7, 'a', "", &n);
	n = strlen(in);
	c = (struct cmd_case){
	    "long arguments at the maximum", {in, n}, {CMD("USER", args)}, 1};
	cmd_check(&c);
	free(in);
	free(args);

	/* one more: 8193 with the CRLF, one error, then the next line parses */
	in = gen("USER ", POP3_CMD_LINE_MAX - 6, 'a', "\r\nNOOP\r\n", &n);
	c = (struct cmd_case){
	    "one past the maximum, then resync", {in, n}, {ERRL, CMD("NOOP", "")}, 2};
	cmd_check(&c);
	free(in);

	in = gen("", 20000, 'B', "\r\nQUIT\r\n", &n);
	c = (struct cmd_case){"20000-byte line", {in, n}, {ERRL, CMD("QUIT", "")}, 2};
	cmd_check(&c);
	free(in);

	in = gen("", 9000, 'C', "\n", &n);
	{
		size_t n2;
		char *tail = gen("", 9000, 'D', "\nSTAT\r\n", &n2);
		char *both = malloc(n + n2 + 1);

		ck_assert_ptr_nonnull(both);
		memcpy(both, in, n);
		memcpy(both + n, tail, n2 + 1);
		c = (struct cmd_case){"two overlong lines",
		                      {both, n + n2},
		                      {ERRL, ERRL, CMD("STAT", "")},
		                      3};
		cmd_check(&c);
		free(both);
		free(tail);
	}
	free(in);

	in = gen("", 9000, 'C', "", &n);
	c = (struct cmd_case){"overlong, never ends", {in, n}, {ERRL}, 1};
	cmd_check(&c);
	free(in);

	in = gen("", POP3_CMD_LINE_MAX, 'C', "", &n);
	c = (struct cmd_case){"maximum without LF", {in, n}, {ERRL}, 1};
	cmd_check(&c);
	free(in);

	in = gen("", POP3_CMD_LINE_MAX - 1, 'C', "", &n);
	c = (struct cmd_case){"one short of the maximum, no LF", {in, n}, {NONE}, 0};
	cmd_check(&c);
	free(in);

	in = gen("", POP3_CMD_LINE_MAX - 1, 'C', "\r\n", &n);
	c = (struct cmd_case){"CR fits, LF does not", {in, n}, {ERRL}, 1};
	cmd_check(&c);
	free(in);
}
END_TEST

START_TEST(test_cmd_details)
{
	struct pop3_cmd_parser *p = malloc(sizeof(*p));
	struct pop3_cmd cmd;
	static const char in[] = "retr 7\r\nDELE 7\r\n";
	size_t used;

	ck_assert_ptr_nonnull(p);
	pop3_cmd_init(p);
	ck_assert_int_eq(pop3_cmd_feed(p, in, sizeof(in) - 1, &used, &cmd), POP3_OK);
	ck_assert_uint_eq(used, 8);
	ck_assert_str_eq(cmd.verb, "RETR");
	ck_assert_uint_eq(cmd.args_len, 1);
	ck_assert_int_eq(cmd.args[0], '7');
	ck_assert_uint_eq(cmd.line_len, 8);
	ck_assert_int_eq(pop3_cmd_feed(p, in + 8, sizeof(in) - 9, &used, &cmd), POP3_OK);
	ck_assert_str_eq(cmd.verb, "DELE");
	ck_assert_int_eq(pop3_cmd_feed(p, "", 0, &used, &cmd), POP3_NEED_MORE);
	ck_assert_uint_eq(used, 0);
	free(p);
}
END_TEST

static Suite *pop3_parse_suite(void)
{
	Suite *s = suite_create("pop3_parse");
	TCase *tc;

	tc = tcase_create("response");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_resp_table, 0, (int)ARRAY_LEN(resp_cases));
	tcase_add_test(tc, test_resp_status_bounds);
	tcase_add_test(tc, test_resp_long_body_line);
	tcase_add_test(tc, test_resp_pipelined);
	tcase_add_test(tc, test_resp_event_details);
	suite_add_tcase(s, tc);

	tc = tcase_create("stuff");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_stuff_table, 0, (int)ARRAY_LEN(stuff_cases));
	tcase_add_test(tc, test_stuff_round_trip);
	suite_add_tcase(s, tc);

	tc = tcase_create("command");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_cmd_table, 0, (int)ARRAY_LEN(cmd_cases));
	tcase_add_test(tc, test_cmd_line_bounds);
	tcase_add_test(tc, test_cmd_details);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(pop3_parse_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
