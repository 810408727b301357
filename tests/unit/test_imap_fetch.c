/*
 * test_imap_fetch.c - Check suite for proxy/imap_fetch.c.
 *
 * Table-driven: fetch attribute classification ({text, result, kind, flags,
 * section, partial}), FETCH command arguments ({args, result, set, a
 * one-line description of the items and the any_* flags}), sequence sets
 * ({set, star, result, the ranges reported}) and FETCH response walks
 * ({segments as the segmenter hands them out, the trace of walker results,
 * seq, UID}). Every input is copied into a heap buffer of exactly its size,
 * so AddressSanitizer catches a read past what the function was given. The
 * walk cases are also rebuilt into a byte stream (literal bytes in between)
 * and run through the real segmenter, whole and one byte at a time: the
 * segments must be the table's and the walk the same. Random inputs close
 * the suite: no crash, and every failure reads as content.
 */
#include <check.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/imap_fetch.h"
#include "proxy/imap_parse.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const kind_names[] = {"OTHER",  "SIZE",  "STRUCTURE",
                                         "HEADER", "WHOLE", "CONTENT"};
_Static_assert(ARRAY_LEN(kind_names) == IMAP_ITEM_KIND_COUNT, "kind_names");

/* A heap copy of exactly n bytes (at least one allocated byte for n == 0). */
static char *heap_copy(const char *s, size_t n)
{
	char *p = malloc(n != 0 ? n : 1);

	ck_assert_ptr_nonnull(p);
	if (n != 0)
		memcpy(p, s, n);
	return p;
}

/* Appends printf output to a fixed buffer (truncating quietly). */
static void appendf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void appendf(char *buf, size_t cap, const char *fmt, ...)
{
	size_t used = strlen(buf);
	va_list ap;

	if (used + 1 >= cap)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + used, cap - used, fmt, ap);
	va_end(ap);
}

/* "KIND[p][b][[section]][<o.n>]": one item, as the command tables spell it. */
static void describe_item(char *buf, size_t cap, const struct imap_item *it)
{
	appendf(buf, cap, "%s%s%s", kind_names[it->kind], it->peek ? "p" : "",
	        it->binary ? "b" : "");
	if (it->section != NULL)
		appendf(buf, cap, "[%.*s]", (int)it->section_len, it->section);
	if (it->has_partial)
		appendf(buf, cap, "<%llu.%llu>", (unsigned long long)it->partial_origin,
		        (unsigned long long)it->partial_len);
}

/* xorshift64: deterministic random inputs */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* ---------------- fetch attributes ---------------- */

struct item_case {
	const char *text;
	int rc;
	enum imap_item_kind kind;
	int peek, binary;
	const char *section; /* NULL: no section */
	int has_partial;
	uint64_t origin, plen;
};

#define BAD(t)                                                                           \
	{                                                                                \
		t, -1, IMAP_ITEM_CONTENT, 0, 0, NULL, 0, 0, 0                            \
	}

static const struct item_case item_cases[] = {
    /* the whole message */
    {"RFC822", 0, IMAP_ITEM_WHOLE, 0, 0, NULL, 0, 0, 0},
    {"rfc822", 0, IMAP_ITEM_WHOLE, 0, 0, NULL, 0, 0, 0},
    {"BODY[]", 0, IMAP_ITEM_WHOLE, 0, 0, "", 0, 0, 0},
    {"body[]", 0, IMAP_ITEM_WHOLE, 0, 0, "", 0, 0, 0},
    {"BODY.PEEK[]", 0, IMAP_ITEM_WHOLE, 1, 0, "", 0, 0, 0},
    {"Body.Peek[]", 0, IMAP_ITEM_WHOLE, 1, 0, "", 0, 0, 0},
    {"BINARY[]", 0, IMAP_ITEM_WHOLE, 0, 1, "", 0, 0, 0},
    {"BINARY.PEEK[]", 0, IMAP_ITEM_WHOLE, 1, 1, "", 0, 0, 0},
    {"binary.peek[]", 0, IMAP_ITEM_WHOLE, 1, 1, "", 0, 0, 0},
    /* partials: content, even of the whole message */
    {"BODY.PEEK[]<0.65536>", 0, IMAP_ITEM_CONTENT, 1, 0, "", 1, 0, 65536},
    {"BODY.PEEK[]<393216.393216>", 0, IMAP_ITEM_CONTENT, 1, 0, "", 1, 393216, 393216},
    {"BODY[]<0>", 0, IMAP_ITEM_CONTENT, 0, 0, "", 1, 0, 0},
    {"BODY[]<00.1>", 0, IMAP_ITEM_CONTENT, 0, 0, "", 1, 0, 1},
    {"BINARY.PEEK[]<0.100>", 0, IMAP_ITEM_CONTENT, 1, 1, "", 1, 0, 100},
    {"BINARY[1]<5.10>", 0, IMAP_ITEM_CONTENT, 0, 1, "1", 1, 5, 10},
    {"BODY[1.MIME]<0.10>", 0, IMAP_ITEM_CONTENT, 0, 0, "1.MIME", 1, 0, 10},
    {"BODY[]<9223372036854775807.9223372036854775807>", 0, IMAP_ITEM_CONTENT, 0, 0, "", 1,
     UINT64_C(9223372036854775807), UINT64_C(9223372036854775807)},
    /* other content */
    {"RFC822.TEXT", 0, IMAP_ITEM_CONTENT, 0, 0, NULL, 0, 0, 0},
    {"BODY[TEXT]", 0, IMAP_ITEM_CONTENT, 0, 0, "TEXT", 0, 0, 0},
    {"body.peek[text]", 0, IMAP_ITEM_CONTENT, 1, 0, "text", 0, 0, 0},
    {"BODY[1]", 0, IMAP_ITEM_CONTENT, 0, 0, "1", 0, 0, 0},
    {"BODY[1.2.MIME]", 0, IMAP_ITEM_CONTENT, 0, 0, "1.2.MIME", 0, 0, 0},
    {"BODY[2.TEXT]", 0, IMAP_ITEM_CONTENT, 0, 0, "2.TEXT", 0, 0, 0},
    {"BODY[1.HEADER]", 0, IMAP_ITEM_CONTENT, 0, 0, "1.HEADER", 0, 0, 0},
    {"BODY.PEEK[3.HEADER.FIELDS (From)]", 0, IMAP_ITEM_CONTENT, 1, 0,
     "3.HEADER.FIELDS (From)", 0, 0, 0},
    {"BODY[4294967295]", 0, IMAP_ITEM_CONTENT, 0, 0, "4294967295", 0, 0, 0},
    {"BINARY[1]", 0, IMAP_ITEM_CONTENT, 0, 1, "1", 0, 0, 0},
    {"BINARY.PEEK[1.2]", 0, IMAP_ITEM_CONTENT, 1, 1, "1.2", 0, 0, 0},
    /* the top-level header */
    {"RFC822.HEADER", 0, IMAP_ITEM_HEADER, 0, 0, NULL, 0, 0, 0},
    {"BODY[HEADER]", 0, IMAP_ITEM_HEADER, 0, 0, "HEADER", 0, 0, 0},
    {"BODY.PEEK[HEADER.FIELDS (X-TUID)]", 0, IMAP_ITEM_HEADER, 1, 0,
     "HEADER.FIELDS (X-TUID)", 0, 0, 0},
    {"body.peek[header.fields (From To Subject)]", 0, IMAP_ITEM_HEADER, 1, 0,
     "header.fields (From To Subject)", 0, 0, 0},
    {"BODY[HEADER.FIELDS.NOT (Received DKIM-Signature)]", 0, IMAP_ITEM_HEADER, 0, 0,
     "HEADER.FIELDS.NOT (Received DKIM-Signature)", 0, 0, 0},
    {"BODY[HEADER.FIELDS (\"From\" \"a\\\"b\")]", 0, IMAP_ITEM_HEADER, 0, 0,
     "HEADER.FIELDS (\"From\" \"a\\\"b\")", 0, 0, 0},
    {"BODY[HEADER]<0.1024>", 0, IMAP_ITEM_HEADER, 0, 0, "HEADER", 1, 0, 1024},
    /* sizes and structure */
    {"RFC822.SIZE", 0, IMAP_ITEM_SIZE, 0, 0, NULL, 0, 0, 0},
    {"Rfc822.Size", 0, IMAP_ITEM_SIZE, 0, 0, NULL, 0, 0, 0},
    {"BINARY.SIZE[1]", 0, IMAP_ITEM_SIZE, 0, 1, "1", 0, 0, 0},
    {"BINARY.SIZE[]", 0, IMAP_ITEM_SIZE, 0, 1, "", 0, 0, 0},
    {"BODY", 0, IMAP_ITEM_STRUCTURE, 0, 0, NULL, 0, 0, 0},
    {"BODYSTRUCTURE", 0, IMAP_ITEM_STRUCTURE, 0, 0, NULL, 0, 0, 0},
    {"bodystructure", 0, IMAP_ITEM_STRUCTURE, 0, 0, NULL, 0, 0, 0},
    /* nothing of the message text */
    {"FLAGS", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"UID", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"INTERNALDATE", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"ENVELOPE", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"MODSEQ", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"X-GM-MSGID", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"RFC822.SIZES", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    {"BODYX", 0, IMAP_ITEM_OTHER, 0, 0, NULL, 0, 0, 0},
    /* malformed: fail safe */
    BAD(""),
    BAD("BODY["),
    BAD("BODY[1"),
    BAD("BODY[]]"),
    BAD("BODY]"),
    BAD("BODY[]<"),
    BAD("BODY[]<1"),
    BAD("BODY[]<>"),
    BAD("BODY[]<1.>"),
    BAD("BODY[]<.5>"),
    BAD("BODY[]<1.0>"),
    BAD("BODY[]<1.05>"),
    BAD("BODY[]<a.b>"),
    BAD("BODY[]<0.1>x"),
    BAD("BODY[]<0.1><0.1>"),
    BAD("BODY[]<9223372036854775808.1>"),
    BAD("BODY[]<0.99999999999999999999>"),
    BAD("BODY[]<184467440737095516160.1>"),
    BAD("BODY[0]"),
    BAD("BODY[01]"),
    BAD("BODY[1.]"),
    BAD("BODY[1..2]"),
    BAD("BODY[.1]"),
    BAD("BODY[4294967296]"),
    BAD("BODY[99999999999999999999]"),
    BAD("BODY[MIME]"),
    BAD("BODY[TEXTX]"),
    BAD("BODY[1.FOO]"),
    BAD("BODY[HEADER.FIELDS]"),
    BAD("BODY[HEADER.FIELDS ()]"),
    BAD("BODY[HEADER.FIELDS (From]"),
    BAD("BODY[HEADER.FIELDS (From  To)]"),
    BAD("BODY[HEADER.FIELDS (\"From)]"),
    BAD("BODY[HEADER.FIELDS (From)x]"),
    BAD("BODY[HEADER] "),
    BAD("BODY<0.5>"),
    BAD("BODY.PEEK"),
    BAD("BINARY"),
    BAD("BINARY.PEEK"),
    BAD("BINARY.SIZE"),
    BAD("BINARY[TEXT]"),
    BAD("BINARY[1.MIME]"),
    BAD("BINARY.SIZE[1]<0.5>"),
    BAD("RFC822[]"),
    BAD("FLAGS[1]"),
    BAD("\\Seen"),
    BAD("BODY\x01"),
    BAD("BO DY"),
};

START_TEST(test_item_table)
{
	const struct item_case *c = &item_cases[_i];
	size_t n = strlen(c->text);
	char *copy = heap_copy(c->text, n);
	struct imap_item it;
	int rc;

	memset(&it, 0xa5, sizeof(it));
	rc = imap_item_parse(copy, n, &it);
	ck_assert_msg(rc == c->rc, "%s: rc %d, want %d", c->text, rc, c->rc);
	ck_assert_msg(it.kind == c->kind, "%s: kind %s, want %s", c->text,
	              kind_names[it.kind], kind_names[c->kind]);
	ck_assert_msg(it.peek == c->peek && it.binary == c->binary,
	              "%s: peek %d binary %d", c->text, it.peek, it.binary);
	if (c->section == NULL) {
		ck_assert_msg(it.section == NULL && it.section_len == 0, "%s: section",
		              c->text);
	} else {
		ck_assert_msg(it.section != NULL, "%s: no section", c->text);
		ck_assert_msg(it.section >= copy &&
		                  it.section + it.section_len <= copy + n,
		              "%s: section outside the text", c->text);
		ck_assert_msg(it.section_len == strlen(c->section) &&
		                  memcmp(it.section, c->section, it.section_len) == 0,
		              "%s: section '%.*s', want '%s'", c->text,
		              (int)it.section_len, it.section, c->section);
	}
	ck_assert_msg(it.has_partial == c->has_partial, "%s: has_partial", c->text);
	ck_assert_msg(it.partial_origin == c->origin && it.partial_len == c->plen,
	              "%s: partial %llu.%llu", c->text,
	              (unsigned long long)it.partial_origin,
	              (unsigned long long)it.partial_len);
	free(copy);
}
END_TEST

/* Every prefix of a well-formed attribute is parsed within its bounds. */
START_TEST(test_item_prefixes)
{
	size_t k;

	for (k = 0; k < ARRAY_LEN(item_cases); k++) {
		const char *s = item_cases[k].text;
		size_t n = strlen(s), m;

		for (m = 0; m <= n; m++) {
			char *copy = heap_copy(s, m);
			struct imap_item it;

			if (imap_item_parse(copy, m, &it) < 0)
				ck_assert_int_eq(it.kind, IMAP_ITEM_CONTENT);
			free(copy);
		}
	}
}
END_TEST

/* ---------------- FETCH commands ---------------- */

struct cmd_case {
	int uid;
	const char *args;
	int rc;
	const char *set;
	const char *items; /* describe_item of each, space-separated */
	const char *flags; /* "W C H D S V": any_whole, any_content, any_header,
	                      any_describes, changedsince, vanished */
};

#define CBAD(u, a)                                                                       \
	{                                                                                \
		u, a, -1, "", "", "W0 C1 H0 D0 S0 V0"                                    \
	}

static const struct cmd_case cmd_cases[] = {
    /* Thunderbird: the whole message in 64 KiB chunks */
    {1, "42 (UID RFC822.SIZE BODY.PEEK[]<0.65536>)\r\n", 0, "42",
     "OTHER SIZE CONTENTp[]<0.65536>", "W0 C1 H0 D1 S0 V0"},
    /* iOS Mail: later chunks */
    {1, "7 (BODY.PEEK[]<393216.393216>)\r\n", 0, "7", "CONTENTp[]<393216.393216>",
     "W0 C1 H0 D0 S0 V0"},
    /* mbsync: the header field it tracks messages by, then whole messages */
    {1, "1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (X-TUID)])\r\n",
     0, "1:*", "OTHER OTHER OTHER SIZE HEADERp[HEADER.FIELDS (X-TUID)]",
     "W0 C0 H1 D1 S0 V0"},
    {1, "5 (BODY.PEEK[])\r\n", 0, "5", "WHOLEp[]", "W1 C0 H0 D0 S0 V0"},
    /* RFC 7162 modifiers */
    {0, "1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n", 0, "1:*", "OTHER",
     "W0 C0 H0 D0 S1 V1"},
    {1, "1:* (UID FLAGS) (CHANGEDSINCE 12345)\r\n", 0, "1:*", "OTHER OTHER",
     "W0 C0 H0 D0 S1 V0"},
    {1, "1:* (FLAGS) (vanished changedsince 0)", 0, "1:*", "OTHER", "W0 C0 H0 D0 S1 V1"},
    {1, "1 FLAGS (CHANGEDSINCE 9223372036854775807)\r\n", 0, "1", "OTHER",
     "W0 C0 H0 D0 S1 V0"},
    /* macros */
    {0, "1 ALL\r\n", 0, "1", "OTHER OTHER SIZE OTHER", "W0 C0 H0 D1 S0 V0"},
    {0, "1:3 fast\r\n", 0, "1:3", "OTHER OTHER SIZE", "W0 C0 H0 D1 S0 V0"},
    {0, "2,4 Full\r\n", 0, "2,4", "OTHER OTHER SIZE OTHER STRUCTURE",
     "W0 C0 H0 D1 S0 V0"},
    {0, "1 ALL (CHANGEDSINCE 5)", 0, "1", "OTHER OTHER SIZE OTHER", "W0 C0 H0 D1 S1 V0"},
    /* single attributes and lists */
    {0, "2 RFC822\r\n", 0, "2", "WHOLE", "W1 C0 H0 D0 S0 V0"},
    {0, "2 rfc822.text\r\n", 0, "2", "CONTENT", "W0 C1 H0 D0 S0 V0"},
    {0, "3 (BODY[1] BODY[2.MIME] BINARY[1] BINARY.SIZE[1])\r\n", 0, "3",
     "CONTENT[1] CONTENT[2.MIME] CONTENTb[1] SIZEb[1]", "W0 C1 H0 D1 S0 V0"},
    {0, "1:4,7 BODYSTRUCTURE\r\n", 0, "1:4,7", "STRUCTURE", "W0 C0 H0 D1 S0 V0"},
    {0, "1 (RFC822.HEADER BODY[HEADER])", 0, "1", "HEADER HEADER[HEADER]",
     "W0 C0 H1 D0 S0 V0"},
    {1, "1:*,5 (BODY[] BODY.PEEK[TEXT]<0.10> FLAGS)", 0, "1:*,5",
     "WHOLE[] CONTENTp[TEXT]<0.10> OTHER", "W1 C1 H0 D0 S0 V0"},
    {1, "9 (UID PREVIEW (LAZY) FLAGS)\r\n", 0, "9", "OTHER OTHER OTHER",
     "W0 C0 H0 D0 S0 V0"},
    {1, "9 (PREVIEW)\r\n", 0, "9", "OTHER", "W0 C0 H0 D0 S0 V0"},
    {0, "4294967295 FLAGS\n", 0, "4294967295", "OTHER", "W0 C0 H0 D0 S0 V0"},
    /* malformed */
    CBAD(0, ""),
    CBAD(0, "\r\n"),
    CBAD(1, "42\r\n"),
    CBAD(1, "42 ()\r\n"),
    CBAD(1, "42 (UID\r\n"),
    CBAD(1, "42 (UID))\r\n"),
    CBAD(1, "42 (ALL)\r\n"),
    CBAD(1, "42 (FLAGS ALL)\r\n"),
    CBAD(0, "0 FLAGS\r\n"),
    CBAD(0, "4294967296 FLAGS\r\n"),
    CBAD(0, "1,,2 FLAGS\r\n"),
    CBAD(1, "$ FLAGS\r\n"),
    CBAD(0, "(FLAGS)\r\n"),
    CBAD(0, "1 (BODY[)\r\n"),
    CBAD(0, "1 (BODY[1.FOO])\r\n"),
    CBAD(0, "1 BODY.PEEK\r\n"),
    CBAD(0, "1 FLAGS FLAGS\r\n"),
    CBAD(0, "1 (FLAGS) extra\r\n"),
    CBAD(0, "1 (FLAGS) ()\r\n"),
    CBAD(0, "1 (FLAGS) (CHANGEDSINCE)\r\n"),
    CBAD(0, "1 (FLAGS) (CHANGEDSINCE x)\r\n"),
    CBAD(0, "1 (FLAGS) (CHANGEDSINCE 9223372036854775808)\r\n"),
    CBAD(0, "1 (FLAGS) (CHANGEDSINCE 99999999999999999999)\r\n"),
    CBAD(0, "1 (FLAGS) (FOO)\r\n"),
    CBAD(0, "1 (FLAGS) (CHANGEDSINCE 1) (VANISHED)\r\n"),
    CBAD(0, "1 (FLAGS (x))\r\n"),
    CBAD(0, "1 (PREVIEW ())\r\n"),
    CBAD(0, "1 (PREVIEW (\"x\"))\r\n"),
    CBAD(0, "1 \"FLAGS\"\r\n"),
    CBAD(0, "1 NIL\r\n"),
    CBAD(0, "1 42\r\n"),
    CBAD(0, "1 (BODY[HEADER.FIELDS {5}\r\n"),
    CBAD(0, "1 {5}\r\n"),
    CBAD(0, "1 (\"BODY[]\")\r\n"),
};

START_TEST(test_cmd_table)
{
	const struct cmd_case *c = &cmd_cases[_i];
	size_t n = strlen(c->args), k;
	char *copy = heap_copy(c->args, n);
	struct imap_fetch_cmd cmd;
	char items[1024] = "", flags[64] = "";
	int rc;

	memset(&cmd, 0x5a, sizeof(cmd));
	rc = imap_fetch_cmd_parse(c->uid, copy, n, &cmd);
	for (k = 0; k < cmd.n_items && k < IMAP_FETCH_ITEMS_MAX; k++) {
		if (k > 0)
			appendf(items, sizeof(items), " ");
		describe_item(items, sizeof(items), &cmd.items[k]);
	}
	appendf(flags, sizeof(flags), "W%d C%d H%d D%d S%d V%d", cmd.any_whole,
	        cmd.any_content, cmd.any_header, cmd.any_describes, cmd.changedsince,
	        cmd.vanished);
	ck_assert_msg(rc == c->rc, "'%s': rc %d, want %d", c->args, rc, c->rc);
	ck_assert_msg(cmd.uid == c->uid, "'%s': uid", c->args);
	ck_assert_msg(strcmp(items, c->items) == 0, "'%s': items '%s', want '%s'",
	              c->args, items, c->items);
	ck_assert_msg(strcmp(flags, c->flags) == 0, "'%s': flags '%s', want '%s'",
	              c->args, flags, c->flags);
	if (rc == 0) {
		ck_assert_msg(cmd.set >= copy && cmd.set + cmd.set_len <= copy + n,
		              "'%s': set outside args", c->args);
		ck_assert_msg(cmd.set_len == strlen(c->set) &&
		                  memcmp(cmd.set, c->set, cmd.set_len) == 0,
		              "'%s': set '%.*s'", c->args, (int)cmd.set_len, cmd.set);
	} else {
		ck_assert_msg(cmd.n_items == 0 && cmd.set == NULL, "'%s': not reset",
		              c->args);
	}
	free(copy);
}
END_TEST

/* IMAP_FETCH_ITEMS_MAX attributes fit; one more does not (and reads as content). */
START_TEST(test_cmd_item_bound)
{
	char args[2048] = "1:* (";
	struct imap_fetch_cmd cmd;
	size_t k, n;
	char *copy;

	for (k = 0; k < IMAP_FETCH_ITEMS_MAX; k++)
		appendf(args, sizeof(args), "%sFLAGS", k > 0 ? " " : "");
	appendf(args, sizeof(args), ")\r\n");
	n = strlen(args);
	copy = heap_copy(args, n);
	ck_assert_int_eq(imap_fetch_cmd_parse(1, copy, n, &cmd), 0);
	ck_assert_uint_eq(cmd.n_items, IMAP_FETCH_ITEMS_MAX);
	ck_assert_int_eq(cmd.any_content, 0);
	free(copy);

	args[n - 3] = '\0'; /* drop ")\r\n" */
	appendf(args, sizeof(args), " BODY[])\r\n");
	n = strlen(args);
	copy = heap_copy(args, n);
	ck_assert_int_eq(imap_fetch_cmd_parse(1, copy, n, &cmd), -1);
	ck_assert_uint_eq(cmd.n_items, 0);
	ck_assert_int_eq(cmd.any_content, 1);
	free(copy);
}
END_TEST

/* Each item of a parsed command points into args and matches imap_item_parse. */
START_TEST(test_cmd_sections)
{
	static const char args[] =
	    "1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.1024> BINARY[2])";
	char *copy = heap_copy(args, sizeof(args) - 1);
	struct imap_fetch_cmd cmd;

	ck_assert_int_eq(imap_fetch_cmd_parse(0, copy, sizeof(args) - 1, &cmd), 0);
	ck_assert_uint_eq(cmd.n_items, 2);
	ck_assert_ptr_eq(cmd.items[0].section, copy + 13);
	ck_assert_uint_eq(cmd.items[0].section_len, strlen("HEADER.FIELDS (From To)"));
	ck_assert_int_eq(cmd.items[0].kind, IMAP_ITEM_HEADER);
	ck_assert_uint_eq(cmd.items[0].partial_len, 1024);
	ck_assert_int_eq(cmd.items[1].kind, IMAP_ITEM_CONTENT);
	ck_assert_int_eq(cmd.items[1].binary, 1);
	ck_assert_int_eq(cmd.uid, 0);
	free(copy);
}
END_TEST

/* ---------------- sequence sets ---------------- */

struct seq_case {
	const char *set;
	uint32_t star;
	int rc;
	const char *ranges; /* "lo-hi lo-hi ..." as reported */
};

static const struct seq_case seq_cases[] = {
    {"1", 10, 0, "1-1"},
    {"1:4,7,9:*", 100, 0, "1-4 7-7 9-100"},
    {"5:2", 10, 0, "2-5"},
    {"*", 100, 0, "100-100"},
    {"*:4", 100, 0, "4-100"},
    {"*:4", 2, 0, "2-4"},
    {"3,2,1", 10, 0, "3-3 2-2 1-1"},
    {"2:2", 10, 0, "2-2"},
    {"*:*", 7, 0, "7-7"},
    {"4294967295", 10, 0, "4294967295-4294967295"},
    {"1:4294967295", 10, 0, "1-4294967295"},
    {"4294967295:1", 10, 0, "1-4294967295"},
    {"1:*", 4294967295u, 0, "1-4294967295"},
    {"4294967296", 10, -1, ""},
    {"99999999999999999999", 10, -1, ""},
    {"1:4294967296", 10, -1, ""},
    {"1,,2", 10, -1, ""},
    {"", 10, -1, ""},
    {"0", 10, -1, ""},
    {"0:5", 10, -1, ""},
    {"01", 10, -1, ""},
    {"1,", 10, -1, ""},
    {",1", 10, -1, ""},
    {"1:", 10, -1, ""},
    {":1", 10, -1, ""},
    {"1:2:3", 10, -1, ""},
    {"1 2", 10, -1, ""},
    {"1,2,x", 10, -1, ""},
    {"a", 10, -1, ""},
    {"$", 10, -1, ""},
    {"**", 10, -1, ""},
    {"1:**", 10, -1, ""},
    {"-1", 10, -1, ""},
    {"+1", 10, -1, ""},
};

struct range_log {
	char text[512];
	unsigned calls;
	unsigned stop_at; /* return 7 from this call (1-based); 0: never */
};

static int range_cb(uint32_t lo, uint32_t hi, void *ctx)
{
	struct range_log *l = ctx;

	ck_assert_uint_le(lo, hi);
	appendf(l->text, sizeof(l->text), "%s%lu-%lu", l->calls > 0 ? " " : "",
	        (unsigned long)lo, (unsigned long)hi);
	l->calls++;
	return l->stop_at != 0 && l->calls == l->stop_at ? 7 : 0;
}

START_TEST(test_seq_table)
{
	const struct seq_case *c = &seq_cases[_i];
	size_t n = strlen(c->set);
	char *copy = heap_copy(c->set, n);
	struct range_log log;
	int rc;

	memset(&log, 0, sizeof(log));
	rc = imap_seqset_foreach(copy, n, c->star, range_cb, &log);
	ck_assert_msg(rc == c->rc, "'%s': rc %d, want %d", c->set, rc, c->rc);
	ck_assert_msg(strcmp(log.text, c->ranges) == 0, "'%s': ranges '%s', want '%s'",
	              c->set, log.text, c->ranges);
	if (rc < 0)
		ck_assert_msg(!imap_seqset_contains(copy, n, c->star, 1) &&
		                  !imap_seqset_contains(copy, n, c->star, c->star),
		              "'%s': a malformed set contains something", c->set);
	free(copy);
}
END_TEST

START_TEST(test_seq_contains)
{
	static const char set[] = "1:4,7,9:*";
	static const struct {
		uint32_t n;
		int in;
	} probes[] = {{1, 1}, {4, 1},   {5, 0},   {6, 0}, {7, 1},          {8, 0},
	              {9, 1}, {100, 1}, {101, 0}, {0, 0}, {4294967295u, 0}};
	size_t k;

	for (k = 0; k < ARRAY_LEN(probes); k++)
		ck_assert_msg(imap_seqset_contains(set, strlen(set), 100, probes[k].n) ==
		                  probes[k].in,
		              "%lu", (unsigned long)probes[k].n);
	ck_assert_int_eq(imap_seqset_contains("*", 1, 4294967295u, 4294967295u), 1);
	ck_assert_int_eq(imap_seqset_contains("5:2", 3, 0, 3), 1);
	/* malformed after a match: still nothing */
	ck_assert_int_eq(imap_seqset_contains("1,2,x", 5, 10, 1), 0);
	ck_assert_int_eq(imap_seqset_contains("1,2,", 4, 10, 1), 0);
}
END_TEST

/* cb's non-zero value stops the walk and is returned. */
START_TEST(test_seq_stop)
{
	static const char set[] = "1,2,3,4";
	struct range_log log;

	memset(&log, 0, sizeof(log));
	log.stop_at = 2;
	ck_assert_int_eq(imap_seqset_foreach(set, strlen(set), 0, range_cb, &log), 7);
	ck_assert_str_eq(log.text, "1-1 2-2");
}
END_TEST

static int count_cb(uint32_t lo, uint32_t hi, void *ctx)
{
	uint64_t *sum = ctx;

	*sum += (uint64_t)hi - lo + 1;
	return 0;
}

/*
 * Large sets: 20000 elements, a set of every odd number, one range spanning
 * every UID (bounded work: one call), and a long set malformed at its end
 * (nothing called).
 */
START_TEST(test_seq_large)
{
	size_t cap = 20000 * 12, n = 0, k;
	char *set = malloc(cap);
	char *copy;
	uint64_t sum = 0;

	ck_assert_ptr_nonnull(set);
	for (k = 0; k < 20000; k++)
		n += (size_t)snprintf(set + n, cap - n, "%s%lu", k > 0 ? "," : "",
		                      (unsigned long)(2 * k + 1));
	copy = heap_copy(set, n);
	ck_assert_int_eq(imap_seqset_foreach(copy, n, 0, count_cb, &sum), 0);
	ck_assert_uint_eq(sum, 20000);
	ck_assert_int_eq(imap_seqset_contains(copy, n, 0, 39999), 1);
	ck_assert_int_eq(imap_seqset_contains(copy, n, 0, 39998), 0);
	ck_assert_int_eq(imap_seqset_contains(copy, n, 0, 40001), 0);
	free(copy);

	/* the same set with a bad last element: no callback at all */
	n += (size_t)snprintf(set + n, cap - n, ",0");
	copy = heap_copy(set, n);
	sum = 0;
	ck_assert_int_eq(imap_seqset_foreach(copy, n, 0, count_cb, &sum), -1);
	ck_assert_uint_eq(sum, 0);
	ck_assert_int_eq(imap_seqset_contains(copy, n, 0, 1), 0);
	free(copy);
	free(set);

	sum = 0;
	ck_assert_int_eq(imap_seqset_foreach("1:*", 3, 4294967295u, count_cb, &sum), 0);
	ck_assert_uint_eq(sum, UINT64_C(4294967295));
	ck_assert_int_eq(imap_seqset_contains("1:*", 3, 4294967295u, 123456789), 1);
}
END_TEST

/* ---------------- FETCH responses ---------------- */

START_TEST(test_is_fetch_response)
{
	static const struct {
		const char *seg;
		int yes;
		uint32_t seq;
	} cases[] = {
	    {"* 12 FETCH (UID 1)\r\n", 1, 12},
	    {"* 1 fetch (FLAGS ())\r\n", 1, 1},
	    {"* 4294967295 Fetch (", 1, 4294967295u},
	    {"* 4294967296 FETCH (UID 1)\r\n", 0, 0},
	    {"* 0 FETCH (UID 1)\r\n", 0, 0},
	    {"* 01 FETCH (UID 1)\r\n", 0, 0},
	    {"* 12 FETCH\r\n", 0, 0},
	    {"* 12 FETCH(UID 1)\r\n", 0, 0},
	    {"* 12  FETCH (UID 1)\r\n", 0, 0},
	    {"* 12 EXISTS\r\n", 0, 0},
	    {"* OK [UIDNEXT 4] x\r\n", 0, 0},
	    {"A1 FETCH (UID 1)\r\n", 0, 0},
	    {"* 12 FETCHX (UID 1)\r\n", 0, 0},
	    {"* ", 0, 0},
	    {"*", 0, 0},
	    {"", 0, 0},
	};
	size_t k;

	for (k = 0; k < ARRAY_LEN(cases); k++) {
		size_t n = strlen(cases[k].seg);
		char *copy = heap_copy(cases[k].seg, n);
		uint32_t seq = 99;
		int yes = imap_is_fetch_response(copy, n, &seq);

		ck_assert_msg(yes == cases[k].yes, "'%s': %d", cases[k].seg, yes);
		ck_assert_msg(seq == (yes ? cases[k].seq : 99), "'%s': seq %lu",
		              cases[k].seg, (unsigned long)seq);
		free(copy);
	}
}
END_TEST

#define MAX_SEGS 8

struct walk_case {
	const char *name;
	const char *segs[MAX_SEGS]; /* as the segmenter hands them out */
	/*
	 * One word per segment fed: "L:KIND:name" (1: a top-level literal, the
	 * attribute's name), "N" (0: nested literal), "E" (0: the line ended),
	 * "X" (-1). Feeding stops after an X.
	 */
	const char *trace;
	uint32_t seq;
	uint32_t uid; /* 0: no UID seen */
	int inline_content;
};

static const struct walk_case walk_cases[] = {
    {"dovecot whole message",
     {"* 12 FETCH (UID 42 RFC822.SIZE 3000 FLAGS (\\Seen) BODY[] {3000}\r\n", ")\r\n"},
     "L:WHOLE:BODY[] E",
     12,
     42,
     0},
    {"literal inside ENVELOPE",
     {"* 1 FETCH (ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" {5}\r\n",
      " ((NIL NIL \"a\" \"b.example\")) NIL NIL NIL NIL NIL NIL \"<id@x>\") UID 9)\r\n"},
     "N E",
     1,
     9,
     0},
    {"literal deep inside ENVELOPE",
     {"* 2 FETCH (UID 3 ENVELOPE (NIL \"s\" (({4}\r\n",
      " NIL \"a\" \"b\")) NIL NIL NIL NIL NIL NIL NIL) BODY[] {4}\r\n", ")\r\n"},
     "N L:WHOLE:BODY[] E",
     2,
     3,
     0},
    {"two body literals",
     {"* 3 FETCH (BODY[1] {3}\r\n", " BODY[2] {2}\r\n", ")\r\n"},
     "L:CONTENT:BODY[1] L:CONTENT:BODY[2] E",
     3,
     0,
     0},
    {"UID after the literal",
     {"* 4 FETCH (BODY[] {10}\r\n", " UID 77 FLAGS (\\Seen \\Answered))\r\n"},
     "L:WHOLE:BODY[] E",
     4,
     77,
     0},
    {"partial in a response",
     {"* 5 FETCH (UID 6 BODY[]<0> {100}\r\n", ")\r\n"},
     "L:CONTENT:BODY[]<0> E",
     5,
     6,
     0},
    {"literal8",
     {"* 6 FETCH (UID 8 BINARY[] ~{20}\r\n", ")\r\n"},
     "L:WHOLE:BINARY[] E",
     6,
     8,
     0},
    {"literal8 of a part, then its size",
     {"* 6 FETCH (BINARY[2] ~{4}\r\n", " BINARY.SIZE[2] 4)\r\n"},
     "L:CONTENT:BINARY[2] E",
     6,
     0,
     0},
    {"literal in BODYSTRUCTURE, then a body part",
     {"* 7 FETCH (UID 70 BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") "
      "NIL "
      "NIL \"7BIT\" 10 1 NIL NIL NIL NIL)(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" "
      "{7}\r\n",
      ") NIL NIL \"BASE64\" 100 NIL (\"ATTACHMENT\" (\"FILENAME\" {7}\r\n",
      ")) NIL NIL) \"MIXED\" (\"BOUNDARY\" \"x\") NIL NIL NIL) BODY[2] {100}\r\n",
      ")\r\n"},
     "N N L:CONTENT:BODY[2] E",
     7,
     70,
     0},
    {"no literal",
     {"* 8 FETCH (UID 1 FLAGS (\\Seen \\Answered) RFC822.SIZE 44 INTERNALDATE "
      "\"17-Jul-1996 02:44:25 -0700\" MODSEQ (12345) X-GM-LABELS (\\Inbox \"a b\"))\r\n"},
     "E",
     8,
     1,
     0},
    {"content as a quoted string",
     {"* 9 FETCH (BODY[1] \"hello\" UID 3)\r\n"},
     "E",
     9,
     3,
     1},
    {"whole message as a quoted string",
     {"* 9 FETCH (RFC822 \"X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR\")\r\n"},
     "E",
     9,
     0,
     1},
    {"content NIL", {"* 10 FETCH (BODY[1] NIL BODY[TEXT] NIL)\r\n"}, "E", 10, 0, 0},
    {"header as a quoted string is not content",
     {"* 10 FETCH (BODY[HEADER] \"\" RFC822.HEADER \"x\")\r\n"},
     "E",
     10,
     0,
     0},
    {"mbsync header fields",
     {"* 11 FETCH (UID 5 FLAGS () INTERNALDATE \"01-Jan-2024 00:00:00 +0000\" "
      "RFC822.SIZE "
      "120 BODY[HEADER.FIELDS (X-TUID)] {2}\r\n",
      ")\r\n"},
     "L:HEADER:BODY[HEADER.FIELDS (X-TUID)] E",
     11,
     5,
     0},
    {"RFC822 items",
     {"* 12 FETCH (RFC822.HEADER {10}\r\n", " RFC822.TEXT {20}\r\n", " RFC822 {30}\r\n",
      ")\r\n"},
     "L:HEADER:RFC822.HEADER L:CONTENT:RFC822.TEXT L:WHOLE:RFC822 E",
     12,
     0,
     0},
    {"lower case",
     {"* 13 fetch (uid 9 body[] {1}\r\n", ")\r\n"},
     "L:WHOLE:body[] E",
     13,
     9,
     0},
    {"bare LF line end", {"* 14 FETCH (UID 1)\n"}, "E", 14, 1, 0},
    {"same UID twice", {"* 1 FETCH (UID 1 UID 1)\r\n"}, "E", 1, 1, 0},
    {"literal as an OTHER value",
     {"* 1 FETCH (X-SNIPPET {5}\r\n", ")\r\n"},
     "L:OTHER:X-SNIPPET E",
     1,
     0,
     0},
    {"empty string literal",
     {"* 1 FETCH (BODY[] {0}\r\n", ")\r\n"},
     "L:WHOLE:BODY[] E",
     1,
     0,
     0},
    /* malformed */
    {"UID 0", {"* 1 FETCH (UID 0)\r\n"}, "X", 1, 0, 0},
    {"UID too big", {"* 1 FETCH (UID 4294967296)\r\n"}, "X", 1, 0, 0},
    {"UID quoted", {"* 1 FETCH (UID \"5\")\r\n"}, "X", 1, 0, 0},
    {"two UIDs", {"* 1 FETCH (UID 1 UID 2)\r\n"}, "X", 1, 1, 0},
    {"UID as a literal", {"* 1 FETCH (UID {2}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"UID as a list", {"* 1 FETCH (UID (5))\r\n"}, "X", 1, 0, 0},
    {"size as a literal", {"* 1 FETCH (RFC822.SIZE {2}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"structure as a literal",
     {"* 1 FETCH (BODYSTRUCTURE {2}\r\n", ")\r\n"},
     "X",
     1,
     0,
     0},
    {"a list hiding a literal as content",
     {"* 1 FETCH (BODY[] (\"x\" {5}\r\n", "))\r\n"},
     "X",
     1,
     0,
     0},
    {"header as a list", {"* 1 FETCH (BODY[HEADER] (x))\r\n"}, "X", 1, 0, 0},
    {"attribute without value", {"* 1 FETCH (FLAGS)\r\n"}, "X", 1, 0, 0},
    {"line ends inside the list", {"* 1 FETCH (UID 1\r\n"}, "X", 1, 1, 0},
    {"line ends inside FLAGS", {"* 1 FETCH (FLAGS (\\Seen)\r\n"}, "X", 1, 0, 0},
    {"text after the list", {"* 1 FETCH (UID 1) junk\r\n"}, "X", 1, 1, 0},
    {"extra parenthesis", {"* 1 FETCH (UID 1))\r\n"}, "X", 1, 1, 0},
    {"list as a name", {"* 1 FETCH ((x) 1)\r\n"}, "X", 1, 0, 0},
    {"number as a name", {"* 1 FETCH (1 2)\r\n"}, "X", 1, 0, 0},
    {"NIL as a name", {"* 1 FETCH (NIL 2)\r\n"}, "X", 1, 0, 0},
    {"unclosed section", {"* 1 FETCH (BODY[ {3}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"bad partial", {"* 1 FETCH (BODY[]<x> {3}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"bad section", {"* 1 FETCH (BODY[MIME] {3}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"literal as a name", {"* 1 FETCH ({3}\r\n", ")\r\n"}, "X", 1, 0, 0},
    {"literal after the list", {"* 1 FETCH (UID 1) {3}\r\n", "\r\n"}, "X", 1, 1, 0},
    {"sequence number 0", {"* 0 FETCH (UID 1)\r\n"}, "X", 0, 0, 0},
    {"not a FETCH", {"* 1 EXPUNGE\r\n"}, "X", 0, 0, 0},
    {"no terminator", {"* 1 FETCH (UID 1)"}, "X", 1, 1, 0},
    {"segment after the end", {"* 1 FETCH (UID 1)\r\n", ")\r\n"}, "E X", 1, 1, 0},
    {"bad quoting", {"* 1 FETCH (INTERNALDATE \"a\\x\")\r\n"}, "X", 1, 0, 0},
    {"error is sticky", {"* 1 FETCH (UID 0 BODY[] {3}\r\n", ")\r\n"}, "X", 1, 0, 0},
};

/* Feeds one segment and appends the result to trace; returns the result. */
static int walk_one(struct imap_fetch_walk *w, const char *seg, size_t n, char *trace,
                    size_t cap)
{
	struct imap_item it;
	char *copy = heap_copy(seg, n);
	int rc;

	memset(&it, 0, sizeof(it));
	rc = imap_fetch_walk_segment(w, copy, n, &it);
	if (trace[0] != '\0')
		appendf(trace, cap, " ");
	if (rc == 1) {
		ck_assert_msg(it.kind == w->item.kind && it.section == w->item.section,
		              "literal item is not the walker's");
		ck_assert_msg(it.section == NULL ||
		                  (it.section >= w->item_text &&
		                   it.section <= w->item_text + w->item_len),
		              "section outside item_text");
		appendf(trace, cap, "L:%s:%s", kind_names[it.kind], w->item_text);
	} else if (rc == 0) {
		appendf(trace, cap, "%s", w->done ? "E" : "N");
	} else {
		ck_assert_msg(rc == -1 && w->error && w->why != NULL, "bad error state");
		appendf(trace, cap, "X");
	}
	free(copy);
	return rc;
}

static void check_walk_result(const struct walk_case *c, const struct imap_fetch_walk *w,
                              const char *trace, const char *how)
{
	ck_assert_msg(strcmp(trace, c->trace) == 0, "%s (%s): trace '%s', want '%s' (%s)",
	              c->name, how, trace, c->trace, w->why != NULL ? w->why : "");
	ck_assert_msg(w->seq == c->seq, "%s (%s): seq %lu", c->name, how,
	              (unsigned long)w->seq);
	ck_assert_msg(w->have_uid == (c->uid != 0) && w->uid == c->uid,
	              "%s (%s): uid %d %lu", c->name, how, w->have_uid,
	              (unsigned long)w->uid);
	ck_assert_msg(w->inline_content == c->inline_content,
	              "%s (%s): inline_content %d", c->name, how, w->inline_content);
}

START_TEST(test_walk_table)
{
	const struct walk_case *c = &walk_cases[_i];
	struct imap_fetch_walk w;
	char trace[512] = "";
	size_t k;

	imap_fetch_walk_init(&w);
	for (k = 0; k < MAX_SEGS && c->segs[k] != NULL; k++) {
		if (walk_one(&w, c->segs[k], strlen(c->segs[k]), trace, sizeof(trace)) <
		    0)
			break;
	}
	check_walk_result(c, &w, trace, "segments");
}
END_TEST

/*
 * The literal size at the end of a segment ("{n}\r\n", "~{n}\r\n"), or -1
 * when the segment ends the line.
 */
static long long seg_literal_size(const char *seg)
{
	size_t n = strlen(seg);
	const char *open;

	if (n < 4 || seg[n - 3] != '}')
		return -1;
	open = seg + n - 3;
	while (open > seg && *open != '{')
		open--;
	return strtoll(open + 1, NULL, 10);
}

/*
 * The walk cases as one byte stream through the real segmenter: fed whole
 * and one byte at a time, it must hand out exactly the table's segments,
 * and the walk must give the same trace.
 */
START_TEST(test_walk_segmenter)
{
	const struct walk_case *c = &walk_cases[_i];
	struct imap_seg_parser *p = malloc(sizeof(*p));
	size_t cap = 0, len = 0, k, step;
	char *stream;

	ck_assert_ptr_nonnull(p);
	for (k = 0; k < MAX_SEGS && c->segs[k] != NULL; k++) {
		long long lit = seg_literal_size(c->segs[k]);

		cap += strlen(c->segs[k]) + (lit > 0 ? (size_t)lit : 0);
	}
	stream = malloc(cap + 1);
	ck_assert_ptr_nonnull(stream);
	for (k = 0; k < MAX_SEGS && c->segs[k] != NULL; k++) {
		long long lit = seg_literal_size(c->segs[k]);

		memcpy(stream + len, c->segs[k], strlen(c->segs[k]));
		len += strlen(c->segs[k]);
		if (lit > 0) {
			/* literal bytes that would confuse a walker fed them */
			memset(stream + len, ')', (size_t)lit);
			len += (size_t)lit;
		}
	}
	for (step = 0; step < 2; step++) {
		struct imap_fetch_walk w;
		char trace[512] = "";
		size_t off = 0, nseg = 0;
		int stop = 0;

		imap_seg_init(p, 0);
		imap_fetch_walk_init(&w);
		while (off < len && !stop) {
			size_t n = step == 0 ? len - off : 1, used = 0;
			struct imap_event ev;
			int res = imap_seg_feed(p, stream + off, n, &used, &ev);

			ck_assert_msg(res != IMAP_ERROR, "%s: segmenter: %s", c->name,
			              imap_seg_error(p));
			off += used;
			if (res != IMAP_OK || ev.type != IMAP_EV_SEGMENT)
				continue;
			ck_assert_msg(ev.end != IMAP_SEG_PART, "%s: a PART segment",
			              c->name);
			ck_assert_msg(nseg < MAX_SEGS && c->segs[nseg] != NULL &&
			                  ev.len == strlen(c->segs[nseg]) &&
			                  memcmp(ev.data, c->segs[nseg], ev.len) == 0,
			              "%s: segment %zu is not the table's", c->name,
			              nseg);
			nseg++;
			if (walk_one(&w, ev.data, ev.len, trace, sizeof(trace)) < 0)
				stop = 1;
		}
		if (!stop && c->segs[nseg] != NULL && off == len) {
			/* a last segment without a line end: the segmenter holds it */
			walk_one(&w, c->segs[nseg], strlen(c->segs[nseg]), trace,
			         sizeof(trace));
		}
		check_walk_result(c, &w, trace,
		                  step == 0 ? "segmenter, whole" : "segmenter, bytes");
	}
	free(stream);
	free(p);
}
END_TEST

/* The lit_item_r of a partial response item carries its origin. */
START_TEST(test_walk_item_details)
{
	static const char seg[] =
	    "* 5 FETCH (UID 6 BODY.PEEK[HEADER.FIELDS (A B)]<7> {100}\r\n";
	struct imap_fetch_walk w;
	struct imap_item it;

	imap_fetch_walk_init(&w);
	ck_assert_int_eq(imap_fetch_walk_segment(&w, seg, sizeof(seg) - 1, &it), 1);
	ck_assert_int_eq(it.kind, IMAP_ITEM_HEADER);
	ck_assert_int_eq(it.has_partial, 1);
	ck_assert_uint_eq(it.partial_origin, 7);
	ck_assert_uint_eq(it.partial_len, 0);
	ck_assert_int_eq(it.peek, 1);
	ck_assert_ptr_eq(it.section, w.item_text + strlen("BODY.PEEK["));
	ck_assert_uint_eq(it.section_len, strlen("HEADER.FIELDS (A B)"));
	ck_assert_str_eq(w.item_text, "BODY.PEEK[HEADER.FIELDS (A B)]<7>");
	ck_assert_int_eq(w.want_value, 0);
	ck_assert_int_eq(w.depth, 1);
	ck_assert_int_eq(imap_fetch_walk_segment(&w, ")\r\n", 3, &it), 0);
	ck_assert_int_eq(w.done, 1);
	ck_assert_int_eq(w.depth, 0);

	/* an error sticks: a good segment afterwards fails too */
	imap_fetch_walk_init(&w);
	ck_assert_int_eq(imap_fetch_walk_segment(&w, "* 1 FETCH (UID 0)\r\n", 19, &it),
	                 -1);
	ck_assert_int_eq(imap_fetch_walk_segment(&w, "* 1 FETCH (UID 1)\r\n", 19, &it),
	                 -1);
	ck_assert_int_eq(w.error, 1);
	ck_assert_int_eq(w.have_uid, 0);
}
END_TEST

/*
 * Builds "* 1 FETCH (BODY[HEADER.FIELDS (aaa...)] {1}\r\n" with an attribute
 * name of n bytes (n > 22).
 */
static size_t long_name_segment(char *buf, size_t cap, size_t n)
{
	size_t len = (size_t)snprintf(buf, cap, "* 1 FETCH (BODY[HEADER.FIELDS (");

	ck_assert_uint_lt(n + 32, cap);
	memset(buf + len, 'a', n - 22);
	len += n - 22;
	len += (size_t)snprintf(buf + len, cap - len, ")] {1}\r\n");
	return len;
}

/* A name of IMAP_ITEM_TEXT_MAX - 1 bytes fits; IMAP_ITEM_TEXT_MAX does not. */
START_TEST(test_walk_name_bound)
{
	char buf[2048];
	size_t n;
	struct imap_fetch_walk w;
	struct imap_item it;
	int rc;

	n = long_name_segment(buf, sizeof(buf), IMAP_ITEM_TEXT_MAX - 1);
	imap_fetch_walk_init(&w);
	rc = imap_fetch_walk_segment(&w, buf, n, &it);
	ck_assert_msg(rc == 1, "%s", w.why != NULL ? w.why : "");
	ck_assert_uint_eq(w.item_len, IMAP_ITEM_TEXT_MAX - 1);
	ck_assert_int_eq(it.kind, IMAP_ITEM_HEADER);

	n = long_name_segment(buf, sizeof(buf), IMAP_ITEM_TEXT_MAX);
	imap_fetch_walk_init(&w);
	ck_assert_int_eq(imap_fetch_walk_segment(&w, buf, n, &it), -1);
	ck_assert_int_eq(w.error, 1);
}
END_TEST

/* Nesting up to IMAP_FETCH_DEPTH_MAX is followed; one level more is refused. */
START_TEST(test_walk_depth_bound)
{
	size_t levels, cap = 4 * IMAP_FETCH_DEPTH_MAX + 64;
	char *buf = malloc(cap);

	ck_assert_ptr_nonnull(buf);
	for (levels = IMAP_FETCH_DEPTH_MAX - 1; levels <= IMAP_FETCH_DEPTH_MAX;
	     levels++) {
		struct imap_fetch_walk w;
		struct imap_item it;
		size_t n = (size_t)snprintf(buf, cap, "* 1 FETCH (X-DEEP "), k;
		int rc;

		/* depth 1 is the attribute list; each "(" adds one */
		for (k = 0; k < levels; k++)
			buf[n++] = '(';
		for (k = 0; k < levels; k++)
			buf[n++] = ')';
		n += (size_t)snprintf(buf + n, cap - n, ")\r\n");
		imap_fetch_walk_init(&w);
		rc = imap_fetch_walk_segment(&w, buf, n, &it);
		if (levels < IMAP_FETCH_DEPTH_MAX)
			ck_assert_msg(rc == 0 && w.done, "%zu levels: %s", levels,
			              w.why != NULL ? w.why : "");
		else
			ck_assert_int_eq(rc, -1);
	}
	free(buf);
}
END_TEST

/* ---------------- random inputs ---------------- */

/*
 * Random strings over the FETCH alphabet into every entry point: no crash,
 * no read outside the input (ASan), and every failure reads as content.
 */
START_TEST(test_random_inputs)
{
	static const char alpha[] = "BODY.PEEK[]<>0123456789 ()\"\\{}~*:,HEADER.FIELDS"
	                            "TEXTMIMEBINARYSIZERFC822UIDNIL\r\n";
	uint64_t rng = 0x9e3779b97f4a7c15ull;
	char buf[96];
	int round;

	for (round = 0; round < 200000; round++) {
		size_t n = (size_t)(rng_next(&rng) % sizeof(buf)), k;
		struct imap_item it;
		struct imap_fetch_cmd cmd;
		struct imap_fetch_walk w;
		uint32_t seq;
		char *copy;

		for (k = 0; k < n; k++)
			buf[k] = alpha[rng_next(&rng) % (sizeof(alpha) - 1)];
		if (round % 4 == 0 && n > 12)
			memcpy(buf, "* 1 FETCH (", 11);
		copy = heap_copy(buf, n);
		if (imap_item_parse(copy, n, &it) < 0)
			ck_assert_int_eq(it.kind, IMAP_ITEM_CONTENT);
		if (imap_fetch_cmd_parse(round & 1, copy, n, &cmd) < 0)
			ck_assert_int_eq(cmd.any_content, 1);
		(void)imap_seqset_contains(copy, n, 7, 3);
		(void)imap_is_fetch_response(copy, n, &seq);
		imap_fetch_walk_init(&w);
		if (imap_fetch_walk_segment(&w, copy, n, &it) < 0)
			ck_assert_int_eq(w.error, 1);
		free(copy);
	}
}
END_TEST

static Suite *imap_fetch_suite(void)
{
	Suite *s = suite_create("imap_fetch");
	TCase *tc;

	tc = tcase_create("item");
	tcase_add_loop_test(tc, test_item_table, 0, (int)ARRAY_LEN(item_cases));
	tcase_add_test(tc, test_item_prefixes);
	suite_add_tcase(s, tc);

	tc = tcase_create("command");
	tcase_add_loop_test(tc, test_cmd_table, 0, (int)ARRAY_LEN(cmd_cases));
	tcase_add_test(tc, test_cmd_item_bound);
	tcase_add_test(tc, test_cmd_sections);
	suite_add_tcase(s, tc);

	tc = tcase_create("seqset");
	tcase_add_loop_test(tc, test_seq_table, 0, (int)ARRAY_LEN(seq_cases));
	tcase_add_test(tc, test_seq_contains);
	tcase_add_test(tc, test_seq_stop);
	tcase_add_test(tc, test_seq_large);
	suite_add_tcase(s, tc);

	tc = tcase_create("response");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_is_fetch_response);
	tcase_add_loop_test(tc, test_walk_table, 0, (int)ARRAY_LEN(walk_cases));
	tcase_add_loop_test(tc, test_walk_segmenter, 0, (int)ARRAY_LEN(walk_cases));
	tcase_add_test(tc, test_walk_item_details);
	tcase_add_test(tc, test_walk_name_bound);
	tcase_add_test(tc, test_walk_depth_bound);
	suite_add_tcase(s, tc);

	tc = tcase_create("random");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_random_inputs);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(imap_fetch_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
