/*
 * test_imap_parse.c - Check suite for proxy/imap_parse.c.
 *
 * Segmenter: table-driven, each case {input, max_literal, expected events,
 * expected error and its offset}. Every case is fed whole, one byte at a
 * time, split in two at every point, and in random pieces; all runs must
 * give the expected trace, in which adjacent LITERAL_DATA chunks and the
 * IMAP_SEG_PART pieces of one segment are merged. Each run also checks the
 * per-call contract and that the segmenter is lossless: the bytes of all
 * events, then the bytes it still holds, are exactly the bytes it consumed.
 * Each piece is copied into its own heap buffer of exactly its size, so
 * AddressSanitizer catches a parser that reads past what it was given.
 *
 * Tokenizer: a table of segments and the tokens they hold, each segment
 * also tokenized at every truncated length (exact-size copies again).
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/imap_parse.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define B(x)                                                                             \
	{                                                                                \
		x, sizeof(x) - 1                                                         \
	}

/* Split every input at every point only up to this size; larger ones are strided. */
#define SPLIT_ALL_MAX 30000
#define RANDOM_SPLITS 40

/* Only call into Check on failure: the per-call checks run millions of times. */
#define REQUIRE(cond, ...)                                                               \
	do {                                                                             \
		if (!(cond))                                                             \
			ck_abort_msg(__VA_ARGS__);                                       \
	} while (0)

struct bytes {
	const char *p;
	size_t n;
};

/* xorshift64: deterministic random splits */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* ---------------- traces ---------------- */

/*
 * A run's events, serialised: 'S' first lit l8 ns size len bytes (a whole
 * segment, its PART pieces joined) | 'D' len bytes (adjacent LITERAL_DATA
 * joined) | 'E' (LITERAL_END) | 'X' pos (IMAP_ERROR). The PART pieces of a
 * segment still unfinished when the input ends are left out: the
 * lossless check covers their bytes.
 */
struct trace {
	char *buf;
	size_t len, cap;
	size_t open_data; /* offset of the open DATA record's length, or SIZE_MAX */
	char *seg;        /* the open segment's pieces so far */
	size_t seg_len, seg_cap;
	int seg_open, seg_first;
	size_t data_events, seg_events, part_events;
};

static void trace_init(struct trace *t)
{
	memset(t, 0, sizeof(*t));
	t->open_data = SIZE_MAX;
}

static void trace_free(struct trace *t)
{
	free(t->buf);
	free(t->seg);
	trace_init(t);
}

static void grow(char **buf, size_t *cap, size_t need)
{
	size_t ncap = *cap != 0 ? *cap : 256;

	if (need <= *cap)
		return;
	while (ncap < need)
		ncap *= 2;
	*buf = realloc(*buf, ncap);
	REQUIRE(*buf != NULL, "out of memory");
	*cap = ncap;
}

static void trace_put(struct trace *t, const void *p, size_t n)
{
	grow(&t->buf, &t->cap, t->len + n);
	if (n > 0)
		memcpy(t->buf + t->len, p, n);
	t->len += n;
}

static void trace_put_u64(struct trace *t, uint64_t v)
{
	trace_put(t, &v, sizeof(v));
}

/* Records one SEGMENT event (a piece, or a whole segment). */
static void trace_segment(struct trace *t, const struct imap_event *ev)
{
	t->open_data = SIZE_MAX;
	t->seg_events++;
	if (!t->seg_open) {
		t->seg_open = 1;
		t->seg_first = ev->first;
		t->seg_len = 0;
	}
	grow(&t->seg, &t->seg_cap, t->seg_len + ev->len);
	memcpy(t->seg + t->seg_len, ev->data, ev->len);
	t->seg_len += ev->len;
	if (ev->end == IMAP_SEG_PART) {
		t->part_events++;
		return;
	}
	{
		char hdr[5] = {'S', (char)('0' + t->seg_first),
		               (char)('0' + (ev->end == IMAP_SEG_LITERAL)),
		               (char)('0' + ev->literal8), (char)('0' + ev->nonsync)};

		trace_put(t, hdr, sizeof(hdr));
		trace_put_u64(t, ev->end == IMAP_SEG_LITERAL ? ev->literal_size : 0);
		trace_put_u64(t, t->seg_len);
		trace_put(t, t->seg, t->seg_len);
	}
	t->seg_open = 0;
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

static void trace_lend(struct trace *t)
{
	t->open_data = SIZE_MAX;
	trace_put(t, "E", 1);
}

static void trace_error(struct trace *t, uint64_t pos)
{
	t->open_data = SIZE_MAX;
	trace_put(t, "X", 1);
	trace_put_u64(t, pos);
}

/* Prints a trace with non-printable bytes escaped, for failure messages. */
static void trace_dump(const char *what, const struct trace *t)
{
	size_t i;

	fprintf(stderr, "  %s (%zu bytes): ", what, t->len);
	for (i = 0; i < t->len && i < 800; i++) {
		unsigned char c = (unsigned char)t->buf[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "%s\n", t->len > 800 ? "..." : "");
}

static int trace_eq(const struct trace *a, const struct trace *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->buf, b->buf, a->len) == 0);
}

/* ---------------- segmenter runs ---------------- */

/* An expected event: 'S' segment, 'D' literal data, 'E' literal end; 0 ends a list. */
struct xev {
	char t;
	const char *s;
	size_t n;
	int flags; /* X_FIRST, X_L8, X_NS */
	int lit;   /* the segment ends in a literal marker */
	uint64_t size;
};

#define X_FIRST 1
#define X_L8 2
#define X_NS 4
#define XEV_MAX 12

struct seg_case {
	const char *name;
	struct bytes in;
	uint64_t max_literal;
	struct xev ev[XEV_MAX];
	int error; /* IMAP_ERROR expected, at error_pos */
	uint64_t error_pos;
};

/* Appends the trace record of one expected event. */
static void expect_ev(struct trace *t, const struct xev *x)
{
	struct imap_event ev;

	memset(&ev, 0, sizeof(ev));
	switch (x->t) {
	case 'S':
		ev.type = IMAP_EV_SEGMENT;
		ev.data = x->s;
		ev.len = x->n;
		ev.first = (x->flags & X_FIRST) != 0;
		ev.end = x->lit ? IMAP_SEG_LITERAL : IMAP_SEG_CRLF;
		ev.literal_size = x->size;
		ev.literal8 = (x->flags & X_L8) != 0;
		ev.nonsync = (x->flags & X_NS) != 0;
		trace_segment(t, &ev);
		break;
	case 'D':
		trace_data(t, x->s, x->n);
		break;
	case 'E':
		trace_lend(t);
		break;
	default:
		ck_abort_msg("bad expected event '%c'", x->t);
	}
}

/* The trace a case's expectation fields describe. */
static void seg_expected(const struct seg_case *c, struct trace *t)
{
	size_t i;

	trace_init(t);
	for (i = 0; i < XEV_MAX && c->ev[i].t != 0; i++)
		expect_ev(t, &c->ev[i]);
	if (c->error)
		trace_error(t, c->error_pos);
}

/*
 * Feeds c->in cut at the ascending offsets cuts[0..ncuts) and records the
 * events, checking on every call: consumed within bounds, all bytes used on
 * NEED_MORE, SEGMENT data in the parser and within IMAP_SEG_MAX, PART
 * pieces as big as the marker hold-back allows, LITERAL_DATA inside the
 * consumed input and never empty; and that every event's bytes are the
 * next input bytes (lossless), the held bytes the rest of what was consumed.
 */
static void seg_run(const struct seg_case *c, const size_t *cuts, size_t ncuts,
                    struct trace *t)
{
	struct imap_seg_parser *p = malloc(sizeof(*p));
	size_t from = 0, k;
	uint64_t total = 0; /* bytes consumed */
	uint64_t out = 0;   /* bytes handed out in events */
	int failed = 0;

	REQUIRE(p != NULL, "out of memory");
	trace_init(t);
	imap_seg_init(p, c->max_literal);
	for (k = 0; k <= ncuts && !failed; k++) {
		size_t to = k < ncuts ? cuts[k] : c->in.n;
		size_t plen = to - from;
		char *piece = malloc(plen != 0 ? plen : 1);
		size_t off = 0, calls = 0;

		REQUIRE(piece != NULL, "out of memory");
		memcpy(piece, c->in.p + from, plen);
		for (;;) {
			struct imap_event ev;
			size_t used = SIZE_MAX;
			int r = imap_seg_feed(p, piece + off, plen - off, &used, &ev);

			REQUIRE(++calls <= 2 * plen + 8, "%s: parser does not progress",
			        c->name);
			REQUIRE(used <= plen - off, "%s: consumed past the input",
			        c->name);
			off += used;
			total += used;
			if (r == IMAP_ERROR) {
				REQUIRE(p->error != NULL &&
				            strcmp(imap_seg_error(p), "no error") != 0,
				        "%s: ERROR without a reason", c->name);
				trace_error(t, p->pos);
				REQUIRE(imap_seg_feed(p, "a\r\n", 3, &used, &ev) ==
				                IMAP_ERROR &&
				            used == 0,
				        "%s: error not sticky", c->name);
				failed = 1;
				break;
			}
			if (r == IMAP_NEED_MORE) {
				REQUIRE(off == plen, "%s: NEED_MORE left bytes", c->name);
				break;
			}
			REQUIRE(r == IMAP_OK, "%s: bad result %d", c->name, r);
			switch (ev.type) {
			case IMAP_EV_SEGMENT:
				REQUIRE(ev.data == p->buf && ev.len >= 1 &&
				            ev.len <= IMAP_SEG_MAX,
				        "%s: bad SEGMENT event", c->name);
				REQUIRE(ev.end == IMAP_SEG_PART
				            ? ev.len + 24 >= IMAP_SEG_MAX
				            : ev.data[ev.len - 1] == '\n',
				        "%s: bad SEGMENT end", c->name);
				REQUIRE(ev.end != IMAP_SEG_LITERAL ||
				            ev.literal_size <= p->max_literal,
				        "%s: literal over the bound", c->name);
				trace_segment(t, &ev);
				break;
			case IMAP_EV_LITERAL_DATA:
				REQUIRE(ev.len >= 1 && ev.data >= piece &&
				            ev.data + ev.len == piece + off,
				        "%s: LITERAL_DATA outside the consumed input",
				        c->name);
				trace_data(t, ev.data, ev.len);
				break;
			case IMAP_EV_LITERAL_END:
				REQUIRE(used == 0, "%s: LITERAL_END consumed bytes",
				        c->name);
				trace_lend(t);
				break;
			default:
				ck_abort_msg("%s: OK without an event", c->name);
			}
			if (ev.type != IMAP_EV_LITERAL_END) {
				REQUIRE(out + ev.len <= c->in.n &&
				            memcmp(ev.data, c->in.p + out, ev.len) == 0,
				        "%s: event bytes are not the input at %llu",
				        c->name, (unsigned long long)out);
				out += ev.len;
			}
		}
		free(piece);
		from = to;
	}
	/* lossless: what is held (after the last event's drop) is the rest */
	{
		size_t held = p->len - p->drop;

		REQUIRE(out + held == total,
		        "%s: %llu bytes out + %zu held != %llu consumed", c->name,
		        (unsigned long long)out, held, (unsigned long long)total);
		REQUIRE(memcmp(p->buf + p->drop, c->in.p + out, held) == 0,
		        "%s: held bytes are not the input", c->name);
		if (!failed)
			REQUIRE(total == c->in.n && p->pos == total,
			        "%s: not all input consumed", c->name);
	}
	free(p);
}

static void seg_compare(const struct seg_case *c, const struct trace *want,
                        const struct trace *got, const char *mode, size_t at)
{
	if (trace_eq(want, got))
		return;
	fprintf(stderr, "%s: mismatch fed %s (%zu)\n", c->name, mode, at);
	trace_dump("want", want);
	trace_dump("got ", got);
	ck_abort_msg("%s: trace mismatch fed %s (%zu)", c->name, mode, at);
}

/*
 * Split points to try for a two-piece run of an n-byte input: all of them
 * for small inputs, else the ends, around each boundary of the segmenter's
 * buffer and (unless light) a stride.
 */
static int split_wanted(size_t s, size_t n, int light)
{
	size_t r;

	if (n <= SPLIT_ALL_MAX || s < 64 || s + 64 > n)
		return 1;
	r = s % IMAP_SEG_MAX;
	if (r < 48 || r + 48 > IMAP_SEG_MAX)
		return 1;
	return !light && s % 997 == 0;
}

/*
 * Runs one case whole, byte by byte, split in two at every point (strided
 * for big inputs) and in random pieces, against want. Light: big inputs
 * are split only near the ends and the buffer boundaries, and fewer times
 * at random.
 */
static void seg_check_split(const struct seg_case *c, const struct trace *want, int light)
{
	struct trace got;
	size_t n = c->in.n;
	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	size_t i, s;
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ n;

	ck_assert_ptr_nonnull(cuts);
	seg_run(c, NULL, 0, &got);
	seg_compare(c, want, &got, "whole", 0);
	trace_free(&got);

	for (i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	seg_run(c, cuts, n > 0 ? n - 1 : 0, &got);
	seg_compare(c, want, &got, "byte by byte", 0);
	trace_free(&got);

	for (s = 0; s <= n; s++) {
		if (!split_wanted(s, n, light))
			continue;
		cuts[0] = s;
		seg_run(c, cuts, 1, &got);
		seg_compare(c, want, &got, "split at", s);
		trace_free(&got);
	}

	for (i = 0; i < (light ? 6 : RANDOM_SPLITS) && n > 1; i++) {
		size_t k = 0, at = 0;

		while (at < n) {
			at += 1 + rng_next(&seed) %
			              (i % 2 ? 7 : (n > SPLIT_ALL_MAX ? 9000 : 200));
			if (at < n)
				cuts[k++] = at;
		}
		seg_run(c, cuts, k, &got);
		seg_compare(c, want, &got, "random pieces", i);
		trace_free(&got);
	}
	free(cuts);
}

static void seg_check_against(const struct seg_case *c, const struct trace *want)
{
	seg_check_split(c, want, 0);
}

static void seg_check(const struct seg_case *c)
{
	struct trace want;

	seg_expected(c, &want);
	seg_check_against(c, &want);
	trace_free(&want);
}

/* clang-format off */
#define SEG(x) {'S', x, sizeof(x) - 1, X_FIRST, 0, 0}
#define CONT(x) {'S', x, sizeof(x) - 1, 0, 0, 0}
#define LSEG(x, sz, f) {'S', x, sizeof(x) - 1, X_FIRST | (f), 1, sz}
#define LCONT(x, sz, f) {'S', x, sizeof(x) - 1, (f), 1, sz}
#define DATA(x) {'D', x, sizeof(x) - 1, 0, 0, 0}
#define LEND {'E', NULL, 0, 0, 0, 0}
#define ERR_AT(p) .error = 1, .error_pos = p
static const struct seg_case seg_cases[] = {
	/* plain lines */
	{"greeting", B("* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"), .max_literal = 0,
	 .ev = {SEG("* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n")}},
	{"two tagged commands", B("a1 NOOP\r\na2 SELECT INBOX\r\n"), .max_literal = 0,
	 .ev = {SEG("a1 NOOP\r\n"), SEG("a2 SELECT INBOX\r\n")}},
	{"tagged response", B("a2 OK [READ-WRITE] SELECT completed\r\n"), .max_literal = 0,
	 .ev = {SEG("a2 OK [READ-WRITE] SELECT completed\r\n")}},
	{"empty lines", B("\r\n\n\r\n"), .max_literal = 0, .ev = {SEG("\r\n"), SEG("\n"), SEG("\r\n")}},
	{"unfinished line", B("a1 NOOP"), .max_literal = 0, .ev = {{0}}},
	{"unfinished marker", B("a1 LOGIN {3}\r"), .max_literal = 0, .ev = {{0}}},
	{"NUL and 8-bit bytes", B("a1 \0\xff\xfe x\r\n"), .max_literal = 0, .ev = {SEG("a1 \0\xff\xfe x\r\n")}},
	/* literals */
	{"LOGIN with literals", B("a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n"), .max_literal = 0,
	 .ev = {LSEG("a1 LOGIN {5}\r\n", 5, 0), DATA("alice"), LEND,
	  LCONT(" {6}\r\n", 6, 0), DATA("secret"), LEND, CONT("\r\n")}},
	{"APPEND {n}", B("a2 APPEND INBOX (\\Seen) {11}\r\nHello World\r\na3 NOOP\r\n"), .max_literal = 0,
	 .ev = {LSEG("a2 APPEND INBOX (\\Seen) {11}\r\n", 11, 0), DATA("Hello World"), LEND,
	  CONT("\r\n"), SEG("a3 NOOP\r\n")}},
	{"APPEND {n+}", B("a2 APPEND INBOX {3+}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("a2 APPEND INBOX {3+}\r\n", 3, X_NS), DATA("abc"), LEND, CONT("\r\n")}},
	{"APPEND {n-}", B("a2 APPEND INBOX {3-}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("a2 APPEND INBOX {3-}\r\n", 3, X_NS), DATA("abc"), LEND, CONT("\r\n")}},
	{"APPEND ~{n} binary", B("a2 APPEND INBOX ~{11}\r\n\0\r\n{5}\r\n\"\\\xff\r\n"), .max_literal = 0,
	 .ev = {LSEG("a2 APPEND INBOX ~{11}\r\n", 11, X_L8), DATA("\0\r\n{5}\r\n\"\\\xff"), LEND,
	  CONT("\r\n")}},
	{"APPEND ~{n+}", B("a2 APPEND INBOX ~{2+}\r\nxy\r\n"), .max_literal = 0,
	 .ev = {LSEG("a2 APPEND INBOX ~{2+}\r\n", 2, X_L8 | X_NS), DATA("xy"), LEND,
	  CONT("\r\n")}},
	{"MULTIAPPEND", B("a APPEND X {1+}\r\nA {2+}\r\nBC\r\n"), .max_literal = 0,
	 .ev = {LSEG("a APPEND X {1+}\r\n", 1, X_NS), DATA("A"), LEND,
	  LCONT(" {2+}\r\n", 2, X_NS), DATA("BC"), LEND, CONT("\r\n")}},
	{"double tilde", B("a ~~{2}\r\nxy\r\n"), .max_literal = 0,
	 .ev = {LSEG("a ~~{2}\r\n", 2, X_L8), DATA("xy"), LEND, CONT("\r\n")}},
	{"tilde then space is no literal8", B("a ~ {2}\r\nxy\r\n"), .max_literal = 0,
	 .ev = {LSEG("a ~ {2}\r\n", 2, 0), DATA("xy"), LEND, CONT("\r\n")}},
	{"marker at line start", B("{3}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("{3}\r\n", 3, 0), DATA("abc"), LEND, CONT("\r\n")}},
	{"marker glued to an atom", B("a LOGIN x{1}\r\ny\r\n"), .max_literal = 0,
	 .ev = {LSEG("a LOGIN x{1}\r\n", 1, 0), DATA("y"), LEND, CONT("\r\n")}},
	{"zero-length literal", B("a LOGIN {0}\r\n {0}\r\n\r\n"), .max_literal = 0,
	 .ev = {LSEG("a LOGIN {0}\r\n", 0, 0), LEND, LCONT(" {0}\r\n", 0, 0), LEND,
	  CONT("\r\n")}},
	{"consecutive literals on one line",
	 B("* 1 FETCH (BODY[1] {3}\r\nabc BODY[2] {2}\r\nde)\r\n"), .max_literal = 0,
	 .ev = {LSEG("* 1 FETCH (BODY[1] {3}\r\n", 3, 0), DATA("abc"), LEND,
	  LCONT(" BODY[2] {2}\r\n", 2, 0), DATA("de"), LEND, CONT(")\r\n")}},
	{"marker right after a literal", B("a {3}\r\nabc{2}\r\nde\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {3}\r\n", 3, 0), DATA("abc"), LEND, LCONT("{2}\r\n", 2, 0),
	  DATA("de"), LEND, CONT("\r\n")}},
	{"tilde at a literal's end is no literal8", B("a {1}\r\n~{2}\r\nxy\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {1}\r\n", 1, 0), DATA("~"), LEND, LCONT("{2}\r\n", 2, 0),
	  DATA("xy"), LEND, CONT("\r\n")}},
	{"literal bytes are not parsed", B("a {8}\r\n\"{1}\r\n\"\"\r\nb {1}\r\nz\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {8}\r\n", 8, 0), DATA("\"{1}\r\n\"\""), LEND, CONT("\r\n"),
	  LSEG("b {1}\r\n", 1, 0), DATA("z"), LEND, CONT("\r\n")}},
	{"literal unfinished", B("a {10}\r\nabc"), .max_literal = 0,
	 .ev = {LSEG("a {10}\r\n", 10, 0), DATA("abc")}},
	{"literal ends with the input", B("a {3}\r\nabc"), .max_literal = 0,
	 .ev = {LSEG("a {3}\r\n", 3, 0), DATA("abc"), LEND}},
	{"server FETCH, ENVELOPE strings with braces and parens",
	 B("* 12 FETCH (UID 7 ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" "
	   "\"re: a {3} (paren) \\\"q\\\" {5}\" ((\"Fred (x)\" NIL \"f\" \"ex.com\")) "
	   "NIL NIL NIL NIL NIL \"{2}\" \"<id@x>\") BODY[] {5}\r\nhello)\r\n"), .max_literal = 0,
	 .ev = {LSEG("* 12 FETCH (UID 7 ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" "
	       "\"re: a {3} (paren) \\\"q\\\" {5}\" ((\"Fred (x)\" NIL \"f\" \"ex.com\")) "
	       "NIL NIL NIL NIL NIL \"{2}\" \"<id@x>\") BODY[] {5}\r\n", 5, 0),
	  DATA("hello"), LEND, CONT(")\r\n")}},
	{"server FETCH, literal inside ENVELOPE",
	 B("* 3 FETCH (ENVELOPE (NIL {4}\r\nab\"c NIL) RFC822.SIZE 44)\r\n"), .max_literal = 0,
	 .ev = {LSEG("* 3 FETCH (ENVELOPE (NIL {4}\r\n", 4, 0), DATA("ab\"c"), LEND,
	  CONT(" NIL) RFC822.SIZE 44)\r\n")}},
	/* quoting */
	{"{5} inside an unterminated quoted string", B("a1 LOGIN \"{5}\r\nb2 NOOP\r\n"), .max_literal = 0,
	 .ev = {SEG("a1 LOGIN \"{5}\r\n"), SEG("b2 NOOP\r\n")}},
	{"{5} inside a quoted string, mid-line", B("a SEARCH SUBJECT \"{5}\r\" X\r\n"), .max_literal = 0,
	 .ev = {SEG("a SEARCH SUBJECT \"{5}\r\" X\r\n")}},
	{"escaped quote before a marker", B("a1 LOGIN \"x\\\"\" {3}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("a1 LOGIN \"x\\\"\" {3}\r\n", 3, 0), DATA("abc"), LEND, CONT("\r\n")}},
	{"escaped quote keeps the string open", B("a1 LOGIN \"x\\\" {3}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {SEG("a1 LOGIN \"x\\\" {3}\r\n"), SEG("abc\r\n")}},
	{"escaped backslash closes the string", B("a1 LOGIN \"x\\\\\" {3}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("a1 LOGIN \"x\\\\\" {3}\r\n", 3, 0), DATA("abc"), LEND, CONT("\r\n")}},
	{"backslash outside quotes is text", B("a STORE 1 FLAGS \\{1}\r\nx\r\n"), .max_literal = 0,
	 .ev = {LSEG("a STORE 1 FLAGS \\{1}\r\n", 1, 0), DATA("x"), LEND, CONT("\r\n")}},
	{"quote state resets after a backslash at the line end",
	 B("a \"x\\\r\nb {1}\r\nz\r\n"), .max_literal = 0,
	 .ev = {SEG("a \"x\\\r\n"), LSEG("b {1}\r\n", 1, 0), DATA("z"), LEND, CONT("\r\n")}},
	{"quote state resets after a backslash before a bare LF",
	 B("a \"x\\\nb {1}\r\nz\r\n"), .max_literal = 0,
	 .ev = {SEG("a \"x\\\n"), LSEG("b {1}\r\n", 1, 0), DATA("z"), LEND, CONT("\r\n")}},
	{"quoted string after a literal", B("a {1}\r\nx \"{2}\r\nb\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {1}\r\n", 1, 0), DATA("x"), LEND, CONT(" \"{2}\r\n"), SEG("b\r\n")}},
	/* line endings */
	{"bare LF ends a line", B("a1 NOOP\na2 NOOP\r\n"), .max_literal = 0,
	 .ev = {SEG("a1 NOOP\n"), SEG("a2 NOOP\r\n")}},
	{"bare LF after a marker", B("a {3}\nabc\n"), .max_literal = 0,
	 .ev = {LSEG("a {3}\n", 3, 0), DATA("abc"), LEND, CONT("\n")}},
	{"CR in the middle of a line", B("a1 NOOP\rX\r\n"), .max_literal = 0, .ev = {SEG("a1 NOOP\rX\r\n")}},
	{"CR after a marker, then text", B("a {3}\rX\r\n"), .max_literal = 0, .ev = {SEG("a {3}\rX\r\n")}},
	{"marker CR CR LF is text", B("a {3}\r\r\n"), .max_literal = 0, .ev = {SEG("a {3}\r\r\n")}},
	/* malformed markers are text */
	{"marker not at the end", B("a {3} b\r\n"), .max_literal = 0, .ev = {SEG("a {3} b\r\n")}},
	{"{12x}", B("a {12x}\r\n"), .max_literal = 0, .ev = {SEG("a {12x}\r\n")}},
	{"{}", B("a {}\r\n"), .max_literal = 0, .ev = {SEG("a {}\r\n")}},
	{"{+}", B("a {+}\r\n"), .max_literal = 0, .ev = {SEG("a {+}\r\n")}},
	{"{3+-}", B("a {3+-}\r\n"), .max_literal = 0, .ev = {SEG("a {3+-}\r\n")}},
	{"{-3}", B("a {-3}\r\n"), .max_literal = 0, .ev = {SEG("a {-3}\r\n")}},
	{"{ 3}", B("a { 3}\r\n"), .max_literal = 0, .ev = {SEG("a { 3}\r\n")}},
	{"{{3}", B("a {{3}\r\nabc\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {{3}\r\n", 3, 0), DATA("abc"), LEND, CONT("\r\n")}},
	{"overlong digits mid-line are text", B("a {123456789012345678901234} x\r\n"), .max_literal = 0,
	 .ev = {SEG("a {123456789012345678901234} x\r\n")}},
	/* bounds */
	{"literal exactly at max_literal", B("a {4}\r\nabcd\r\n"), .max_literal = 4,
	 .ev = {LSEG("a {4}\r\n", 4, 0), DATA("abcd"), LEND, CONT("\r\n")}},
	{"literal one past max_literal", B("a {5}\r\nabcde\r\n"), .max_literal = 4, .ev = {{0}}, ERR_AT(2)},
	{"literal8 one past max_literal", B("x\r\na ~{5+}\r\nabcde\r\n"), .max_literal = 4,
	 .ev = {SEG("x\r\n")}, ERR_AT(5)},
	{"default bound: 4 GiB - 1", B("a {4294967295}\r\nab"), .max_literal = 0,
	 .ev = {LSEG("a {4294967295}\r\n", 4294967295ULL, 0), DATA("ab")}},
	{"default bound: 4 GiB", B("a {4294967296}\r\nab"), .max_literal = 0, .ev = {{0}}, ERR_AT(2)},
	{"19 digits, 2^63 - 1, no bound", B("a {9223372036854775807}\r\nab"), .max_literal = UINT64_MAX,
	 .ev = {LSEG("a {9223372036854775807}\r\n", 9223372036854775807ULL, 0), DATA("ab")}},
	{"19 digits, 2^63", B("a {9223372036854775808}\r\nab"), .max_literal = UINT64_MAX, .ev = {{0}},
	 ERR_AT(2)},
	{"19 digits of 9", B("a {9999999999999999999}\r\n"), .max_literal = UINT64_MAX, .ev = {{0}}, ERR_AT(2)},
	{"20-digit size", B("a {12345678901234567890}\r\nab"), .max_literal = UINT64_MAX, .ev = {{0}},
	 ERR_AT(2)},
	{"20-digit size with leading zeros", B("a {00000000000000000001}\r\nx"),
	 UINT64_MAX, {{0}}, ERR_AT(2)},
	{"19 digits with leading zeros", B("a {0000000000000000001}\r\nx"), .max_literal = 0,
	 .ev = {LSEG("a {0000000000000000001}\r\n", 1, 0), DATA("x"), LEND}},
	{"100-digit size", B("ok\r\nA {"
	   "1234567890123456789012345678901234567890123456789012345678901234567890"
	   "123456789012345678901234567890+}\r\nab"), .max_literal = 0, .ev = {SEG("ok\r\n")}, ERR_AT(6)},
	{"error after a literal", B("a {1}\r\nx {99999999999}\r\n"), .max_literal = 0,
	 .ev = {LSEG("a {1}\r\n", 1, 0), DATA("x"), LEND}, ERR_AT(9)},
};
/* clang-format on */

START_TEST(test_seg_table)
{
	seg_check(&seg_cases[_i]);
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

/* Feeds in whole; returns the number of events and stores their lengths and ends. */
static size_t seg_pieces(const char *in, size_t n, size_t *lens, enum imap_seg_end *ends,
                         int *firsts, size_t max)
{
	struct imap_seg_parser *p = malloc(sizeof(*p));
	size_t off = 0, k = 0;

	ck_assert_ptr_nonnull(p);
	imap_seg_init(p, 0);
	for (;;) {
		struct imap_event ev;
		size_t used;
		int r = imap_seg_feed(p, in + off, n - off, &used, &ev);

		off += used;
		if (r != IMAP_OK)
			break;
		if (ev.type == IMAP_EV_SEGMENT && k < max) {
			lens[k] = ev.len;
			ends[k] = ev.end;
			firsts[k] = ev.first;
			k++;
		}
	}
	free(p);
	return k;
}

START_TEST(test_seg_long_line)
{
	/* a 200 KiB line: IMAP_SEG_MAX pieces, then the end, then the next line */
	size_t n, nl, k;
	char *line = gen("* SEARCH", 200 * 1024, '7', "\r\n", &nl);
	char *in = gen(line, 0, 0, "a2 LOGIN {3}\r\nabc\r\n", &n);
	struct seg_case c = {.name = "200 KiB line", .in = {in, n}};
	struct trace want;
	struct xev x[5] = {{'S', line, nl, X_FIRST, 0, 0},
	                   LSEG("a2 LOGIN {3}\r\n", 3, 0),
	                   DATA("abc"),
	                   LEND,
	                   CONT("\r\n")};
	size_t lens[8];
	enum imap_seg_end ends[8];
	int firsts[8];

	trace_init(&want);
	for (k = 0; k < 5; k++)
		expect_ev(&want, &x[k]);
	seg_check_against(&c, &want);
	trace_free(&want);

	k = seg_pieces(in, n, lens, ends, firsts, 8);
	ck_assert_uint_eq(k, 6);
	for (k = 0; k < 3; k++) {
		ck_assert_uint_eq(lens[k], IMAP_SEG_MAX);
		ck_assert_int_eq(ends[k], IMAP_SEG_PART);
		ck_assert_int_eq(firsts[k], k == 0);
	}
	ck_assert_uint_eq(lens[3], nl - 3 * IMAP_SEG_MAX);
	ck_assert_int_eq(ends[3], IMAP_SEG_CRLF);
	ck_assert_int_eq(firsts[3], 0);
	ck_assert_int_eq(ends[4], IMAP_SEG_LITERAL);
	ck_assert_int_eq(firsts[4], 1);
	free(in);
	free(line);

	/* a 200 KiB line that ends in a marker, and one inside a quoted string */
	line = gen("a APPEND X \"", 200 * 1024, 'q', "\" {3}\r\nabc\r\n", &n);
	c = (struct seg_case){.name = "200 KiB line, then a marker", .in = {line, n}};
	trace_init(&want);
	{
		struct xev y[4] = {
		    {'S', line, n - 5, X_FIRST, 1, 3}, DATA("abc"), LEND, CONT("\r\n")};

		for (k = 0; k < 4; k++)
			expect_ev(&want, &y[k]);
	}
	seg_check_against(&c, &want);
	trace_free(&want);
	free(line);

	line = gen("a APPEND X \"", 200 * 1024, 'q', " {3}\r\nabc\r\n", &n);
	c = (struct seg_case){.name = "200 KiB unterminated quoted string",
	                      .in = {line, n}};
	trace_init(&want);
	{
		struct xev y[2] = {{'S', line, n - 5, X_FIRST, 0, 0},
		                   {'S', line + n - 5, 5, X_FIRST, 0, 0}};

		expect_ev(&want, &y[0]);
		expect_ev(&want, &y[1]);
	}
	seg_check_against(&c, &want);
	trace_free(&want);
	free(line);

	/* a line of exactly IMAP_SEG_MAX bytes is one segment; one more is two */
	line = gen("", IMAP_SEG_MAX - 2, 'x', "\r\n", &n);
	k = seg_pieces(line, n, lens, ends, firsts, 8);
	ck_assert_uint_eq(k, 1);
	ck_assert_uint_eq(lens[0], IMAP_SEG_MAX);
	ck_assert_int_eq(ends[0], IMAP_SEG_CRLF);
	free(line);
	line = gen("", IMAP_SEG_MAX - 1, 'x', "\r\n", &n);
	k = seg_pieces(line, n, lens, ends, firsts, 8);
	ck_assert_uint_eq(k, 2);
	ck_assert_uint_eq(lens[0], IMAP_SEG_MAX);
	ck_assert_int_eq(ends[0], IMAP_SEG_PART);
	ck_assert_uint_eq(lens[1], 1);
	ck_assert_int_eq(ends[1], IMAP_SEG_CRLF);
	free(line);
}
END_TEST

/*
 * A marker straddling the boundary of the segmenter's buffer at every
 * offset: the last piece must hold the whole marker, tokenized as LITERAL.
 * The line opens with an overlong would-be marker, whose digit count must
 * not keep the segmenter from holding back the next candidate.
 */
START_TEST(test_seg_marker_at_boundary)
{
	static const char *const markers[] = {" ~{0000000000000000012+}\r\n", " {12}\n",
	                                      "{12-}\r\n"};
	static const char prefix[] = "{123456789012345678901}";
	size_t m, k;

	for (m = 0; m < ARRAY_LEN(markers); m++) {
		const char *ms = markers[m][0] == ' ' ? markers[m] + 1 : markers[m];
		size_t mlen = strlen(markers[m]), msl = strlen(ms);

		for (k = 0; k < 32; k++) {
			size_t n, i;
			char *head = gen(prefix, IMAP_SEG_MAX - k - strlen(prefix), 'a',
			                 markers[m], &n);
			char *in = gen(head, 0, 0, "0123456789AB\r\n", &n);
			struct seg_case c = {.name = "marker at the boundary",
			                     .in = {in, n}};
			struct trace want;
			struct xev x[4] = {
			    {'S', in, IMAP_SEG_MAX - k + mlen, X_FIRST, 1, 12},
			    DATA("0123456789AB"),
			    LEND,
			    CONT("\r\n")};
			struct imap_seg_parser *p = malloc(sizeof(*p));
			size_t off = 0, last_len = 0;
			const char *last = NULL;
			int l8 = 0;
			char *copy;

			x[0].flags |= m == 0 ? X_L8 | X_NS : m == 2 ? X_NS : 0;
			trace_init(&want);
			for (i = 0; i < 4; i++)
				expect_ev(&want, &x[i]);
			seg_check_split(&c, &want, 1);
			trace_free(&want);

			/* fed whole: the final piece ends in the whole marker */
			ck_assert_ptr_nonnull(p);
			imap_seg_init(p, 0);
			for (;;) {
				struct imap_event ev;
				size_t used;

				ck_assert_int_eq(
				    imap_seg_feed(p, in + off, n - off, &used, &ev),
				    IMAP_OK);
				off += used;
				ck_assert_int_eq(ev.type, IMAP_EV_SEGMENT);
				if (ev.end == IMAP_SEG_LITERAL) {
					last = ev.data;
					last_len = ev.len;
					l8 = ev.literal8;
					break;
				}
			}
			ck_assert_uint_ge(last_len, msl);
			ck_assert(memcmp(last + last_len - msl, ms, msl) == 0);
			copy = malloc(msl);
			ck_assert_ptr_nonnull(copy);
			memcpy(copy, ms, msl);
			{
				struct imap_tok t;
				size_t pos = 0;

				ck_assert_int_eq(imap_tok_next(copy, msl, &pos, &t),
				                 IMAP_TOK_LITERAL);
				ck_assert_uint_eq(t.num, 12);
				ck_assert_int_eq(t.text[0] == '~', l8);
			}
			free(copy);
			free(p);
			free(in);
			free(head);
		}
	}
}
END_TEST

START_TEST(test_seg_details)
{
	/* consumed counts, pointers, pos, error text, sticky errors, re-init */
	struct imap_seg_parser *p = malloc(sizeof(*p));
	struct imap_event ev;
	static const char in[] = "a1 LOGIN {5}\r\nalice {0}\r\n\r\n";
	size_t used;

	ck_assert_ptr_nonnull(p);
	imap_seg_init(p, 0);
	ck_assert_str_eq(imap_seg_error(p), "no error");
	ck_assert_uint_eq(p->max_literal, 0xffffffffULL);
	ck_assert_int_eq(imap_seg_feed(p, in, sizeof(in) - 1, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_SEGMENT);
	ck_assert_uint_eq(used, 14);
	ck_assert_uint_eq(ev.len, 14);
	ck_assert_ptr_eq(ev.data, p->buf);
	ck_assert_int_eq(ev.end, IMAP_SEG_LITERAL);
	ck_assert_uint_eq(ev.literal_size, 5);
	ck_assert_int_eq(ev.first, 1);
	ck_assert_int_eq(ev.literal8, 0);
	ck_assert_int_eq(ev.nonsync, 0);
	/* the literal comes as one chunk pointing into the caller's buffer */
	ck_assert_int_eq(imap_seg_feed(p, in + 14, sizeof(in) - 15, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_LITERAL_DATA);
	ck_assert_ptr_eq(ev.data, in + 14);
	ck_assert_uint_eq(ev.len, 5);
	ck_assert_uint_eq(used, 5);
	ck_assert_int_eq(imap_seg_feed(p, in + 19, sizeof(in) - 20, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_LITERAL_END);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(imap_seg_feed(p, in + 19, sizeof(in) - 20, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_SEGMENT);
	ck_assert_int_eq(ev.first, 0);
	ck_assert_uint_eq(ev.literal_size, 0);
	ck_assert_int_eq(ev.end, IMAP_SEG_LITERAL);
	ck_assert_uint_eq(used, 6);
	/* zero-length literal: LITERAL_END straight away, even with no input */
	ck_assert_int_eq(imap_seg_feed(p, NULL, 0, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_LITERAL_END);
	ck_assert_int_eq(imap_seg_feed(p, NULL, 0, &used, &ev), IMAP_NEED_MORE);
	ck_assert_uint_eq(used, 0);
	ck_assert_int_eq(imap_seg_feed(p, in + 25, 2, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_SEGMENT);
	ck_assert_int_eq(ev.end, IMAP_SEG_CRLF);
	ck_assert_int_eq(ev.first, 0);
	ck_assert_uint_eq(p->pos, sizeof(in) - 1);
	/* the next line starts a line again */
	ck_assert_int_eq(imap_seg_feed(p, "x\n", 2, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.first, 1);
	/* a literal chunk is capped at the literal's size */
	ck_assert_int_eq(imap_seg_feed(p, "a {2}\r\nxyz\r\n", 12, &used, &ev), IMAP_OK);
	ck_assert_int_eq(imap_seg_feed(p, "xyz\r\n", 5, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_LITERAL_DATA);
	ck_assert_uint_eq(ev.len, 2);
	ck_assert_uint_eq(used, 2);
	/* errors: text, position, sticky until init */
	imap_seg_init(p, 10);
	ck_assert_int_eq(imap_seg_feed(p, "ab {11}\r\n", 9, &used, &ev), IMAP_ERROR);
	ck_assert_str_eq(imap_seg_error(p), "literal size exceeds the bound");
	ck_assert_uint_eq(p->pos, 3);
	ck_assert_uint_eq(used, 8);
	ck_assert_int_eq(imap_seg_feed(p, "x\r\n", 3, &used, &ev), IMAP_ERROR);
	ck_assert_uint_eq(used, 0);
	imap_seg_init(p, 0);
	ck_assert_int_eq(imap_seg_feed(p, "{99999999999999999999}\r\n", 24, &used, &ev),
	                 IMAP_ERROR);
	ck_assert_str_eq(imap_seg_error(p), "literal size does not fit in 63 bits");
	ck_assert_uint_eq(p->pos, 0);
	imap_seg_init(p, 0);
	ck_assert_ptr_null(p->error);
	ck_assert_int_eq(imap_seg_feed(p, "a\r\n", 3, &used, &ev), IMAP_OK);
	ck_assert_int_eq(ev.type, IMAP_EV_SEGMENT);
	free(p);
}
END_TEST

/* ---------------- tokenizer ---------------- */

struct xtok {
	enum imap_tok_type type;
	const char *text; /* NULL ends the list */
	uint64_t num;
};

struct tok_case {
	const char *name;
	struct bytes seg;
	struct xtok tok[16];
};

/* clang-format off */
#define T_ATOM(s) {IMAP_TOK_ATOM, s, 0}
#define T_NUM(s, v) {IMAP_TOK_NUMBER, s, v}
#define T_Q(s) {IMAP_TOK_QUOTED, s, 0}
#define T_LP {IMAP_TOK_LPAREN, "(", 0}
#define T_RP {IMAP_TOK_RPAREN, ")", 0}
#define T_NIL(s) {IMAP_TOK_NIL, s, 0}
#define T_LIT(s, v) {IMAP_TOK_LITERAL, s, v}
#define T_END(s) {IMAP_TOK_END, s, 0}
#define T_ERR(s) {IMAP_TOK_ERROR, s, 0}
static const struct tok_case tok_cases[] = {
	{"FETCH with a header section and a partial",
	 B("a001 FETCH 1:* (FLAGS BODY[HEADER.FIELDS (From To)]<0.1024>)\r\n"),
	 {T_ATOM("a001"), T_ATOM("FETCH"), T_ATOM("1:*"), T_LP, T_ATOM("FLAGS"),
	  T_ATOM("BODY[HEADER.FIELDS (From To)]<0.1024>"), T_RP, T_END("\r\n")}},
	{"BODY.PEEK[]", B("a2 UID FETCH 7 BODY.PEEK[]\r\n"),
	 {T_ATOM("a2"), T_ATOM("UID"), T_ATOM("FETCH"), T_NUM("7", 7),
	  T_ATOM("BODY.PEEK[]"), T_END("\r\n")}},
	{"BINARY[1.2]<5>", B("(BINARY[1.2]<5> BINARY.SIZE[1])\r\n"),
	 {T_LP, T_ATOM("BINARY[1.2]<5>"), T_ATOM("BINARY.SIZE[1]"), T_RP, T_END("\r\n")}},
	{"section with quoted names",
	 B("BODY[HEADER.FIELDS (From \"To\")] BODY[HEADER.FIELDS (\"]\" \"a\\\"])(\")]\n"),
	 {T_ATOM("BODY[HEADER.FIELDS (From \"To\")]"),
	  T_ATOM("BODY[HEADER.FIELDS (\"]\" \"a\\\"])(\")]"), T_END("\n")}},
	{"response partial and text", B("BODY[]<0> BODY[1.MIME] RFC822.TEXT\r\n"),
	 {T_ATOM("BODY[]<0>"), T_ATOM("BODY[1.MIME]"), T_ATOM("RFC822.TEXT"),
	  T_END("\r\n")}},
	{"quoted strings with escapes", B("\"abc\" \"a\\\\b\" \"say \\\"hi\\\"\" \"\"\r\n"),
	 {T_Q("\"abc\""), T_Q("\"a\\\\b\""), T_Q("\"say \\\"hi\\\"\""), T_Q("\"\""),
	  T_END("\r\n")}},
	{"adjacent quoted strings", B("\"a\"\"b\"x\r\n"),
	 {T_Q("\"a\""), T_Q("\"b\""), T_ATOM("x"), T_END("\r\n")}},
	{"8-bit in a quoted string", B("\"\xc3\xa9t\xc3\xa9\"\r\n"),
	 {T_Q("\"\xc3\xa9t\xc3\xa9\""), T_END("\r\n")}},
	{"bad escape", B("a \"x\\n\"\r\n"), {T_ATOM("a"), T_ERR("\"x")}},
	{"backslash at the end of a quoted string", B("\"x\\"), {T_ERR("\"x")}},
	{"unterminated quoted string", B("a \"abc\r\n"), {T_ATOM("a"), T_ERR("\"abc")}},
	{"NUL in a quoted string", B("\"a\0b\"\r\n"), {T_ERR("\"a")}},
	{"numbers", B("0 42 9223372036854775807 9223372036854775808 007 12a 1:2\r\n"),
	 {T_NUM("0", 0), T_NUM("42", 42),
	  T_NUM("9223372036854775807", 9223372036854775807ULL),
	  T_ATOM("9223372036854775808"), T_NUM("007", 7), T_ATOM("12a"), T_ATOM("1:2"),
	  T_END("\r\n")}},
	{"20-digit number", B("00000000000000000001\r\n"),
	 {T_ATOM("00000000000000000001"), T_END("\r\n")}},
	{"NIL", B("NIL nil Nil NILS (NIL)NIL\r\n"),
	 {T_NIL("NIL"), T_NIL("nil"), T_NIL("Nil"), T_ATOM("NILS"), T_LP, T_NIL("NIL"),
	  T_RP, T_NIL("NIL"), T_END("\r\n")}},
	{"nested parentheses", B("((a) (b (c)))\r\n"),
	 {T_LP, T_LP, T_ATOM("a"), T_RP, T_LP, T_ATOM("b"), T_LP, T_ATOM("c"), T_RP,
	  T_RP, T_RP, T_END("\r\n")}},
	{"response code", B("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"),
	 {T_ATOM("*"), T_ATOM("OK"), T_ATOM("[UIDVALIDITY 3857529045]"), T_ATOM("UIDs"),
	  T_ATOM("valid"), T_END("\r\n")}},
	{"flags", B("* FLAGS (\\Answered \\Seen) [PERMANENTFLAGS (\\Deleted \\*)]\r\n"),
	 {T_ATOM("*"), T_ATOM("FLAGS"), T_LP, T_ATOM("\\Answered"), T_ATOM("\\Seen"),
	  T_RP, T_ATOM("[PERMANENTFLAGS (\\Deleted \\*)]"), T_END("\r\n")}},
	{"lone ] is an atom", B("a]b ] +\r\n"),
	 {T_ATOM("a]b"), T_ATOM("]"), T_ATOM("+"), T_END("\r\n")}},
	{"8 nested brackets", B("X[[[[[[[[a]]]]]]]]\r\n"),
	 {T_ATOM("X[[[[[[[[a]]]]]]]]"), T_END("\r\n")}},
	{"9 nested brackets", B("X[[[[[[[[[a]]]]]]]]]\r\n"), {T_ERR("X[[[[[[[[")}},
	{"8 nested, parentheses count", B("X[(((((((a)))))))]\r\n"),
	 {T_ATOM("X[(((((((a)))))))]"), T_END("\r\n")}},
	{"unclosed bracket", B("BODY[1\r\n"), {T_ERR("BODY[1")}},
	{"unclosed bracket at the end", B("BODY["), {T_ERR("BODY[")}},
	{"bracket closed by a parenthesis", B("BODY[(])\r\n"), {T_ERR("BODY[(")}},
	{"parenthesis closed by a bracket", B("BODY[)]\r\n"), {T_ERR("BODY[")}},
	{"partial: no digits", B("BODY[1]<>\r\n"), {T_ERR("BODY[1]<")}},
	{"partial: not closed", B("BODY[1]<1\r\n"), {T_ERR("BODY[1]<1")}},
	{"partial: dot without length", B("BODY[1]<1.>\r\n"), {T_ERR("BODY[1]<1.")}},
	{"partial: letters", B("BODY[1]<a>\r\n"), {T_ERR("BODY[1]<")}},
	{"partial: at the end", B("BODY[]<"), {T_ERR("BODY[]<")}},
	{"literal inside a section", B("BODY[HEADER.FIELDS ({4}\r\n"),
	 {T_ERR("BODY[HEADER.FIELDS (")}},
	{"CR inside a section", B("BODY[1\r]\r\n"), {T_ERR("BODY[1")}},
	{"literal marker", B("a1 LOGIN {5}\r\n"),
	 {T_ATOM("a1"), T_ATOM("LOGIN"), T_LIT("{5}", 5), T_END("\r\n")}},
	{"literal8 non-sync marker", B("~{3+}\r\n"), {T_LIT("~{3+}", 3), T_END("\r\n")}},
	{"marker with a bare LF", B("x {0-}\n"), {T_ATOM("x"), T_LIT("{0-}", 0), T_END("\n")}},
	{"marker glued to an atom", B("abc{5}\r\n"),
	 {T_ATOM("abc"), T_LIT("{5}", 5), T_END("\r\n")}},
	{"literal8 marker glued to an atom", B("x~~{2}\r\n"),
	 {T_ATOM("x~"), T_LIT("~{2}", 2), T_END("\r\n")}},
	{"continuation after a literal", B(" BODY[2] {2}\r\n"),
	 {T_ATOM("BODY[2]"), T_LIT("{2}", 2), T_END("\r\n")}},
	{"biggest literal", B("{9223372036854775807}\r\n"),
	 {T_LIT("{9223372036854775807}", 9223372036854775807ULL), T_END("\r\n")}},
	{"marker too big", B("{9223372036854775808}\r\n"), {T_ERR("")}},
	{"marker not at the end", B("{5} x\r\n"), {T_ERR("")}},
	{"marker without a line ending", B("{5}"), {T_ERR("")}},
	{"marker with bytes after its line ending", B("{5}\r\nX"), {T_ERR("")}},
	{"tilde without a marker", B("~x ~{x}\r\n"), {T_ATOM("~x"), T_ATOM("~"), T_ERR("")}},
	{"end of a line", B(")\r\n"), {T_RP, T_END("\r\n")}},
	{"empty segment", B(""), {T_END("")}},
	{"only spaces", B("   "), {T_END("")}},
	{"spaces then CRLF", B("  \r\n"), {T_END("\r\n")}},
	{"several spaces", B("a   b\r\n"), {T_ATOM("a"), T_ATOM("b"), T_END("\r\n")}},
	{"CR at the end of a piece", B("abc\r"), {T_ATOM("abc"), T_END("\r")}},
	{"CR in a line", B("a\rb\r\n"), {T_ATOM("a"), T_ERR("")}},
	{"TAB", B("a\tb\r\n"), {T_ATOM("a"), T_ERR("")}},
	{"NUL", B("a\0b\r\n"), {T_ATOM("a"), T_ERR("")}},
	{"8-bit atom", B("\xc3\xa9t\xc3\xa9\r\n"), {T_ATOM("\xc3\xa9t\xc3\xa9"), T_END("\r\n")}},
	{"atom then quote", B("a\"b\"\r\n"), {T_ATOM("a"), T_Q("\"b\""), T_END("\r\n")}},
};
/* clang-format on */

/* Tokenizes seg (an exact-size heap copy) and compares with c->tok. */
START_TEST(test_tok_table)
{
	const struct tok_case *c = &tok_cases[_i];
	char *seg = malloc(c->seg.n != 0 ? c->seg.n : 1);
	size_t pos = 0, k;

	ck_assert_ptr_nonnull(seg);
	memcpy(seg, c->seg.p, c->seg.n);
	for (k = 0; k < ARRAY_LEN(c->tok) && c->tok[k].text != NULL; k++) {
		const struct xtok *x = &c->tok[k];
		struct imap_tok t;
		size_t before = pos, again;
		enum imap_tok_type ty = imap_tok_next(seg, c->seg.n, &pos, &t);

		ck_assert_msg(ty == x->type && t.type == ty,
		              "%s: token %zu type %d, want %d", c->name, k, ty, x->type);
		ck_assert_msg(t.len == strlen(x->text) &&
		                  memcmp(t.text, x->text, t.len) == 0,
		              "%s: token %zu is \"%.*s\", want \"%s\"", c->name, k,
		              (int)t.len, t.text, x->text);
		ck_assert_msg(t.text >= seg && t.text + t.len <= seg + c->seg.n &&
		                  pos >= before && pos <= c->seg.n,
		              "%s: token %zu outside the segment", c->name, k);
		if (ty == IMAP_TOK_NUMBER || ty == IMAP_TOK_LITERAL)
			ck_assert_msg(t.num == x->num,
			              "%s: token %zu value %llu, want %llu", c->name, k,
			              (unsigned long long)t.num,
			              (unsigned long long)x->num);
		if (ty == IMAP_TOK_END || ty == IMAP_TOK_ERROR) {
			/* the answer repeats */
			again = pos;
			ck_assert_int_eq(imap_tok_next(seg, c->seg.n, &again, &t), ty);
			ck_assert_uint_eq(again, pos);
			ck_assert_msg(k + 1 == ARRAY_LEN(c->tok) ||
			                  c->tok[k + 1].text == NULL,
			              "%s: tokens expected after the end", c->name);
		} else {
			ck_assert_msg(pos > before, "%s: token %zu did not advance",
			              c->name, k);
		}
	}
	free(seg);
}
END_TEST

/* Every table segment cut at every length: terminates, stays inside. */
START_TEST(test_tok_truncated)
{
	size_t ci, n;

	for (ci = 0; ci < ARRAY_LEN(tok_cases); ci++) {
		const struct tok_case *c = &tok_cases[ci];

		for (n = 0; n <= c->seg.n; n++) {
			char *seg = malloc(n != 0 ? n : 1);
			size_t pos = 0, steps = 0;
			struct imap_tok t;
			enum imap_tok_type ty;

			ck_assert_ptr_nonnull(seg);
			memcpy(seg, c->seg.p, n);
			do {
				size_t before = pos;

				ty = imap_tok_next(seg, n, &pos, &t);
				REQUIRE(t.text >= seg && t.text + t.len <= seg + n &&
				            pos <= n,
				        "%s cut at %zu: token outside", c->name, n);
				REQUIRE(ty == IMAP_TOK_END || ty == IMAP_TOK_ERROR ||
				            pos > before,
				        "%s cut at %zu: no progress", c->name, n);
				REQUIRE(++steps <= n + 1,
				        "%s cut at %zu: too many tokens", c->name, n);
			} while (ty != IMAP_TOK_END && ty != IMAP_TOK_ERROR);
			free(seg);
		}
	}
}
END_TEST

START_TEST(test_tok_is)
{
	struct imap_tok t = {IMAP_TOK_ATOM, "Fetch", 5, 0};

	ck_assert(imap_tok_is(&t, "FETCH"));
	ck_assert(imap_tok_is(&t, "fetch"));
	ck_assert(!imap_tok_is(&t, "FETC"));
	ck_assert(!imap_tok_is(&t, "FETCHX"));
	ck_assert(!imap_tok_is(&t, ""));
	t.len = 4;
	ck_assert(imap_tok_is(&t, "feTc"));
	t.len = 0;
	ck_assert(imap_tok_is(&t, ""));
	/* only ASCII letters fold: '@' (0x40) is not '`' (0x60) */
	t.text = "@";
	t.len = 1;
	ck_assert(!imap_tok_is(&t, "`"));
}
END_TEST

static Suite *imap_parse_suite(void)
{
	Suite *s = suite_create("imap_parse");
	TCase *tc;

	tc = tcase_create("segmenter");
	tcase_set_timeout(tc, 300);
	tcase_add_loop_test(tc, test_seg_table, 0, (int)ARRAY_LEN(seg_cases));
	tcase_add_test(tc, test_seg_long_line);
	tcase_add_test(tc, test_seg_marker_at_boundary);
	tcase_add_test(tc, test_seg_details);
	suite_add_tcase(s, tc);

	tc = tcase_create("tokenizer");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, test_tok_table, 0, (int)ARRAY_LEN(tok_cases));
	tcase_add_test(tc, test_tok_truncated);
	tcase_add_test(tc, test_tok_is);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(imap_parse_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
