/*
 * imap_fetch.c - what a client FETCH asks for and what a server FETCH
 * response carries (RFC 3501 sections 6.4.5, 7.4.2 and 9; RFC 9051; RFC 3516
 * BINARY; RFC 7162 CHANGEDSINCE / VANISHED).
 *
 * Pure functions: no I/O, no allocation, every length bounded. The IMAP
 * session calls them on the segments the segmenter (imap_parse.c) hands out
 * and reads their tokens with imap_tok_next; this file only adds the FETCH
 * grammar on top:
 *
 *  - imap_item_parse classifies one fetch attribute ("BODY.PEEK[1.MIME]",
 *    "RFC822.SIZE", "BINARY[]<0>") by what it returns: the whole message,
 *    other content, the top-level header, a size, the structure, or nothing
 *    of the message text.
 *  - imap_fetch_cmd_parse reads the arguments of FETCH / UID FETCH.
 *  - imap_seqset_foreach / imap_seqset_contains read sequence sets as ranges,
 *    never number by number, so "1:4294967295" costs what "1" costs.
 *  - the walker follows one FETCH response line across its segments (a
 *    literal's bytes come between two segments and never pass through here).
 *    Its state is the parenthesis depth (1 = the attribute list) and whether
 *    the last top-level token was an attribute name awaiting its value; with
 *    that it says for each literal whether it is the value of a top-level
 *    attribute (and which) or a string nested in ENVELOPE / BODYSTRUCTURE.
 *
 * Security: everything malformed is reported as such (-1) and the callers
 * fail safe: an item that cannot be classified counts as content, a response
 * the walker cannot follow is not forwarded as if it carried no content.
 */
#include "proxy/imap_fetch.h"

#include "proxy/imap_parse.h"

#include <string.h>

/* RFC 9051 number64: 0 <= n <= 2^63 - 1. */
#define IMAP_NUMBER64_MAX UINT64_C(9223372036854775807)

/* ---------------- small helpers ---------------- */

/* ASCII lower case, whatever the locale. */
static int imap_lc(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int imap_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* True when s (n bytes) is word, compared case-insensitively. */
static int imap_ieq(const char *s, size_t n, const char *word)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (word[i] == '\0' || imap_lc((unsigned char)s[i]) != imap_lc(word[i]))
			return 0;
	}
	return word[n] == '\0';
}

/*
 * Reads an nz-number (RFC 3501 section 9: digit-nz *DIGIT, 32 bits) that is
 * all of s[0..n). Returns 0 with *v_r set, or -1: empty, a leading zero, a
 * non-digit, or more than 4294967295.
 */
static int imap_nz32(const char *s, size_t n, uint32_t *v_r)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || s[0] == '0')
		return -1;
	for (i = 0; i < n; i++) {
		if (!imap_is_digit(s[i]))
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > UINT32_MAX)
			return -1;
	}
	*v_r = (uint32_t)v;
	return 0;
}

/*
 * Reads a number64 (RFC 9051: 1*DIGIT, at most 2^63 - 1) that is all of
 * s[0..n); with nz, an nz-number64 (no leading zero, not 0). Returns 0 with
 * *v_r set, or -1.
 */
static int imap_num64(const char *s, size_t n, int nz, uint64_t *v_r)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || (nz && s[0] == '0'))
		return -1;
	for (i = 0; i < n; i++) {
		unsigned d;

		if (!imap_is_digit(s[i]))
			return -1;
		d = (unsigned)(s[i] - '0');
		if (v > (IMAP_NUMBER64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*v_r = v;
	return 0;
}

/*
 * True for an ATOM-CHAR (RFC 3501 section 9): printable US-ASCII except
 * atom-specials "(){ %*\"\\" and resp-specials "]".
 */
static int imap_atom_char(char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

/* ---------------- fetch attributes ---------------- */

/*
 * Reads section-part (nz-number *("." nz-number)) from s[*i], up to but not
 * including the first byte that is neither a digit nor a '.' followed by a
 * digit. Returns 0, or -1 for a bad number.
 */
static int imap_section_part(const char *s, size_t n, size_t *i)
{
	for (;;) {
		size_t start = *i;
		uint32_t v;

		while (*i < n && imap_is_digit(s[*i]))
			(*i)++;
		if (imap_nz32(s + start, *i - start, &v) < 0)
			return -1;
		if (*i + 1 < n && s[*i] == '.' && imap_is_digit(s[*i + 1])) {
			(*i)++;
			continue;
		}
		return 0;
	}
}

/*
 * Reads header-list (RFC 3501 section 9: "(" header-fld-name *(SP
 * header-fld-name) ")", each an astring) from s[*i], which must be at the
 * "(". A bare name may not hold "]" (the tokenizer ends the attribute at the
 * matching bracket, and a real header name never has one); a quoted one may
 * hold anything but CR, LF and NUL. Literals cannot occur here: the segment
 * would have ended. Returns 0 with *i past the ")", or -1.
 */
static int imap_header_list(const char *s, size_t n, size_t *i)
{
	if (*i >= n || s[*i] != '(')
		return -1;
	(*i)++;
	for (;;) {
		size_t start = *i;

		if (*i < n && s[*i] == '"') {
			(*i)++;
			while (*i < n && s[*i] != '"') {
				if (s[*i] == '\\') {
					(*i)++;
					if (*i >= n || (s[*i] != '"' && s[*i] != '\\'))
						return -1;
				} else if (s[*i] == '\r' || s[*i] == '\n' ||
				           s[*i] == '\0') {
					return -1;
				}
				(*i)++;
			}
			if (*i >= n)
				return -1;
			(*i)++; /* the closing quote */
		} else {
			while (*i < n && imap_atom_char(s[*i]))
				(*i)++;
			if (*i == start)
				return -1;
		}
		if (*i >= n)
			return -1;
		if (s[*i] == ')') {
			(*i)++;
			return 0;
		}
		if (s[*i] != ' ')
			return -1;
		(*i)++;
	}
}

/*
 * Reads a BODY section-spec from s (the text after "[", n bytes to the end
 * of the attribute) up to its "]". Returns the index of the "]" with
 * *kind_r set (WHOLE for the empty section, before any partial is seen),
 * or -1 when the section is malformed.
 */
static long imap_body_section(const char *s, size_t n, enum imap_item_kind *kind_r)
{
	size_t i = 0, kw;
	int part = 0, text = 0;

	if (n > 0 && s[0] == ']') {
		*kind_r = IMAP_ITEM_WHOLE;
		return 0;
	}
	if (n > 0 && imap_is_digit(s[0])) {
		if (imap_section_part(s, n, &i) < 0)
			return -1;
		part = 1;
		if (i < n && s[i] == ']') {
			*kind_r = IMAP_ITEM_CONTENT;
			return (long)i;
		}
		if (i >= n || s[i] != '.')
			return -1;
		i++;
	}
	/* section-msgtext, or after a part section-text (which adds "MIME") */
	kw = i;
	while (i < n && s[i] != ' ' && s[i] != ']')
		i++;
	if (imap_ieq(s + kw, i - kw, "HEADER.FIELDS") ||
	    imap_ieq(s + kw, i - kw, "HEADER.FIELDS.NOT")) {
		if (i >= n || s[i] != ' ')
			return -1;
		i++;
		if (imap_header_list(s, n, &i) < 0)
			return -1;
	} else if (imap_ieq(s + kw, i - kw, "HEADER")) {
		/* nothing follows */
	} else if (imap_ieq(s + kw, i - kw, "TEXT")) {
		text = 1;
	} else if (part && imap_ieq(s + kw, i - kw, "MIME")) {
		/* RFC 3501 section 6.4.5: MIME only with a part number */
	} else {
		return -1;
	}
	if (i >= n || s[i] != ']')
		return -1;
	/*
	 * Security: only the top-level message's header is header-only. The
	 * header of a part ("1.HEADER") is that of a message/rfc822 attachment:
	 * content of the outer message; so are TEXT and MIME.
	 */
	*kind_r = !part && !text ? IMAP_ITEM_HEADER : IMAP_ITEM_CONTENT;
	return (long)i;
}

/*
 * Reads a BINARY section (RFC 3516: "[" [section-part] "]") from s (after
 * the "["). Returns the index of the "]" with *kind_r WHOLE (empty) or
 * CONTENT, or -1.
 */
static long imap_binary_section(const char *s, size_t n, enum imap_item_kind *kind_r)
{
	size_t i = 0;

	if (n > 0 && s[0] == ']') {
		*kind_r = IMAP_ITEM_WHOLE;
		return 0;
	}
	if (imap_section_part(s, n, &i) < 0 || i >= n || s[i] != ']')
		return -1;
	*kind_r = IMAP_ITEM_CONTENT;
	return (long)i;
}

/*
 * Reads a partial ("<" number64 ["." nz-number64] ">") that is all of
 * s[0..n): RFC 3501/9051 commands give "<origin.length>", responses
 * "<origin>". Returns 0 with the values in it, or -1.
 */
static int imap_partial(const char *s, size_t n, struct imap_item *it)
{
	const char *dot;

	if (n < 3 || s[0] != '<' || s[n - 1] != '>')
		return -1;
	s++;
	n -= 2;
	dot = memchr(s, '.', n);
	if (dot == NULL)
		return imap_num64(s, n, 0, &it->partial_origin);
	if (imap_num64(s, (size_t)(dot - s), 0, &it->partial_origin) < 0)
		return -1;
	return imap_num64(dot + 1, n - (size_t)(dot - s) - 1, 1, &it->partial_len);
}

/* The attribute names without a section, and what they return. */
static const struct {
	const char *name;
	enum imap_item_kind kind;
} imap_plain_items[] = {
    {"RFC822", IMAP_ITEM_WHOLE},         {"RFC822.TEXT", IMAP_ITEM_CONTENT},
    {"RFC822.HEADER", IMAP_ITEM_HEADER}, {"RFC822.SIZE", IMAP_ITEM_SIZE},
    {"BODY", IMAP_ITEM_STRUCTURE},       {"BODYSTRUCTURE", IMAP_ITEM_STRUCTURE},
};

/* Bases that take a section, and those that also take a partial. */
enum imap_base {
	IMAP_BASE_BODY,
	IMAP_BASE_BINARY,
	IMAP_BASE_BINARY_SIZE,
	IMAP_BASE_NONE
};

/* Fails imap_item_parse: the item is reset to a fail-safe CONTENT. */
static int imap_item_fail(struct imap_item *it)
{
	memset(it, 0, sizeof(*it));
	it->kind = IMAP_ITEM_CONTENT;
	return -1;
}

/*
 * Classifies one fetch attribute (text, len bytes: the text of an
 * IMAP_TOK_ATOM such as "BODY.PEEK[HEADER.FIELDS (From)]<0.1024>"),
 * case-insensitively, per the rules in imap_fetch.h. Returns 0 with *it
 * filled (it->section points into text: the caller keeps text alive as long
 * as it uses the section), or -1 for a malformed attribute with *it reset
 * to kind IMAP_ITEM_CONTENT, the fail-safe reading.
 */
int imap_item_parse(const char *text, size_t len, struct imap_item *it)
{
	enum imap_item_kind kind;
	enum imap_base base;
	size_t ne = 0, i;
	long close;

	memset(it, 0, sizeof(*it));
	while (ne < len && text[ne] != '[' && text[ne] != '<') {
		if (!imap_atom_char(text[ne]))
			return imap_item_fail(it);
		ne++;
	}
	if (ne == 0)
		return imap_item_fail(it);
	if (imap_ieq(text, ne, "BODY") || imap_ieq(text, ne, "BODY.PEEK")) {
		base = IMAP_BASE_BODY;
	} else if (imap_ieq(text, ne, "BINARY") || imap_ieq(text, ne, "BINARY.PEEK")) {
		base = IMAP_BASE_BINARY;
	} else if (imap_ieq(text, ne, "BINARY.SIZE")) {
		base = IMAP_BASE_BINARY_SIZE;
	} else {
		base = IMAP_BASE_NONE;
	}
	it->peek =
	    base != IMAP_BASE_NONE && ne > 5 && imap_ieq(text + ne - 5, 5, ".PEEK");
	it->binary = base == IMAP_BASE_BINARY || base == IMAP_BASE_BINARY_SIZE;

	if (ne == len) {
		/* no section: BODY alone is the structure; the others need "[...]" */
		if (it->peek || base == IMAP_BASE_BINARY || base == IMAP_BASE_BINARY_SIZE)
			return imap_item_fail(it);
		it->kind = IMAP_ITEM_OTHER;
		for (i = 0; i < sizeof(imap_plain_items) / sizeof(imap_plain_items[0]);
		     i++) {
			if (imap_ieq(text, ne, imap_plain_items[i].name)) {
				it->kind = imap_plain_items[i].kind;
				break;
			}
		}
		return 0;
	}
	/* a section (only these bases take one), then maybe a partial */
	if (text[ne] != '[' || base == IMAP_BASE_NONE)
		return imap_item_fail(it);
	if (base == IMAP_BASE_BODY)
		close = imap_body_section(text + ne + 1, len - ne - 1, &kind);
	else
		close = imap_binary_section(text + ne + 1, len - ne - 1, &kind);
	if (close < 0)
		return imap_item_fail(it);
	it->section = text + ne + 1;
	it->section_len = (size_t)close;
	i = ne + 1 + (size_t)close + 1; /* past the "]" */
	if (base == IMAP_BASE_BINARY_SIZE)
		kind = IMAP_ITEM_SIZE;
	if (i < len) {
		/* RFC 3516 section 4.2: BINARY.SIZE takes no partial */
		if (base == IMAP_BASE_BINARY_SIZE ||
		    imap_partial(text + i, len - i, it) < 0)
			return imap_item_fail(it);
		it->has_partial = 1;
		/* Security: part of the whole message is content we cannot scan alone */
		if (kind == IMAP_ITEM_WHOLE)
			kind = IMAP_ITEM_CONTENT;
	}
	it->kind = kind;
	return 0;
}

/* ---------------- sequence sets ---------------- */

/*
 * Reads a seq-number (nz-number or "*") from set[*i], ending at ":" / ","
 * or the end. Returns 0 with *v_r (star for "*"), or -1.
 */
static int imap_seq_number(const char *set, size_t len, size_t *i, uint32_t star,
                           uint32_t *v_r)
{
	size_t start = *i;

	if (*i < len && set[*i] == '*') {
		(*i)++;
		*v_r = star;
		return 0;
	}
	while (*i < len && imap_is_digit(set[*i]))
		(*i)++;
	return imap_nz32(set + start, *i - start, v_r);
}

/*
 * One pass over the set: with cb NULL it only checks the grammar. Returns 0,
 * -1 for a malformed set, or what cb returned when non-zero.
 */
static int imap_seqset_walk(const char *set, size_t len, uint32_t star, imap_range_cb cb,
                            void *ctx)
{
	size_t i = 0;

	if (len == 0)
		return -1;
	for (;;) {
		uint32_t lo, hi;

		if (imap_seq_number(set, len, &i, star, &lo) < 0)
			return -1;
		hi = lo;
		if (i < len && set[i] == ':') {
			i++;
			if (imap_seq_number(set, len, &i, star, &hi) < 0)
				return -1;
			/* RFC 3501 section 9: "2:4" and "4:2" are the same range */
			if (hi < lo) {
				uint32_t t = lo;

				lo = hi;
				hi = t;
			}
		}
		if (i < len && set[i] != ',')
			return -1;
		if (cb != NULL) {
			int r = cb(lo, hi, ctx);

			if (r != 0)
				return r;
		}
		if (i == len)
			return 0;
		i++; /* the ",", which must be followed by another element */
	}
}

/*
 * Calls cb(lo, hi, ctx) for each range of the sequence set in set[0..len)
 * ("1:4,7,9:*"; RFC 3501 section 9 sequence-set), '*' standing for star.
 * The whole set is checked first: a malformed one (empty, a 0, a number past
 * 4294967295, a stray ",", RFC 5182 "$") calls nothing and returns -1.
 * Otherwise returns 0, or the first non-zero value cb returned (which stops
 * the walk). Work is linear in len whatever the ranges span.
 */
int imap_seqset_foreach(const char *set, size_t len, uint32_t star, imap_range_cb cb,
                        void *ctx)
{
	if (imap_seqset_walk(set, len, star, NULL, NULL) < 0)
		return -1;
	return imap_seqset_walk(set, len, star, cb, ctx);
}

/* Range callback for imap_seqset_contains: stops at the range holding *ctx. */
static int imap_seqset_has(uint32_t lo, uint32_t hi, void *ctx)
{
	uint32_t n = *(const uint32_t *)ctx;

	return n >= lo && n <= hi;
}

/*
 * True (1) when n is in the sequence set set[0..len) with '*' standing for
 * star; 0 otherwise, and always 0 for a malformed set.
 */
int imap_seqset_contains(const char *set, size_t len, uint32_t star, uint32_t n)
{
	return imap_seqset_foreach(set, len, star, imap_seqset_has, &n) == 1;
}

/* ---------------- FETCH commands ---------------- */

/* Fails imap_fetch_cmd_parse: the result says "content", the fail-safe reading. */
static int imap_cmd_fail(struct imap_fetch_cmd *cmd)
{
	int uid = cmd->uid;

	memset(cmd, 0, sizeof(*cmd));
	cmd->uid = uid;
	cmd->any_content = 1;
	return -1;
}

/* Adds one attribute to cmd and its kind to the any_* flags. Returns 0 or -1. */
static int imap_cmd_add(struct imap_fetch_cmd *cmd, const char *text, size_t len)
{
	struct imap_item *it;

	if (cmd->n_items >= IMAP_FETCH_ITEMS_MAX)
		return -1;
	it = &cmd->items[cmd->n_items];
	if (imap_item_parse(text, len, it) < 0)
		return -1;
	cmd->n_items++;
	switch (it->kind) {
	case IMAP_ITEM_WHOLE:
		cmd->any_whole = 1;
		break;
	case IMAP_ITEM_CONTENT:
		cmd->any_content = 1;
		break;
	case IMAP_ITEM_HEADER:
		cmd->any_header = 1;
		break;
	case IMAP_ITEM_SIZE:
	case IMAP_ITEM_STRUCTURE:
		cmd->any_describes = 1;
		break;
	case IMAP_ITEM_OTHER:
	case IMAP_ITEM_KIND_COUNT:
		break;
	}
	return 0;
}

/* The macros of RFC 3501 section 6.4.5 (RFC 9051 keeps them). */
#define IMAP_MACRO_ITEMS 5

static const struct {
	const char *name;
	const char *items[IMAP_MACRO_ITEMS];
} imap_fetch_macros[] = {
    {"ALL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", NULL}},
    {"FAST", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", NULL, NULL}},
    {"FULL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"}},
};

#define IMAP_N_MACROS (sizeof(imap_fetch_macros) / sizeof(imap_fetch_macros[0]))

/* Index of the macro t names, or -1. */
static int imap_macro(const struct imap_tok *t)
{
	size_t m;

	if (t->type != IMAP_TOK_ATOM)
		return -1;
	for (m = 0; m < IMAP_N_MACROS; m++) {
		if (imap_tok_is(t, imap_fetch_macros[m].name))
			return (int)m;
	}
	return -1;
}

/*
 * Skips an attribute's own argument list, which pos is just past the "(" of:
 * RFC 8970 "PREVIEW (LAZY)", atoms only. Returns 0 past the ")", or -1.
 */
static int imap_cmd_att_args(const char *args, size_t len, size_t *pos)
{
	struct imap_tok t;
	int n = 0;

	for (;;) {
		enum imap_tok_type ty = imap_tok_next(args, len, pos, &t);

		if (ty == IMAP_TOK_RPAREN && n > 0)
			return 0;
		if (ty != IMAP_TOK_ATOM)
			return -1;
		n++;
	}
}

/*
 * Reads the modifier list of RFC 7162 section 3.1.4 / 3.2.6 (pos just past
 * its "("): "CHANGEDSINCE n" and "VANISHED", in any order. Returns 0 past
 * the ")", or -1 for anything else (another extension's modifier included:
 * fail safe). Whether VANISHED is allowed here (UID FETCH with CHANGEDSINCE
 * only) is for the server to say.
 */
static int imap_cmd_modifiers(const char *args, size_t len, size_t *pos,
                              struct imap_fetch_cmd *cmd)
{
	struct imap_tok t;
	int n = 0;

	for (;;) {
		enum imap_tok_type ty = imap_tok_next(args, len, pos, &t);
		uint64_t modseq;

		if (ty == IMAP_TOK_RPAREN && n > 0)
			return 0;
		if (ty != IMAP_TOK_ATOM)
			return -1;
		if (imap_tok_is(&t, "CHANGEDSINCE")) {
			ty = imap_tok_next(args, len, pos, &t);
			/* mod-sequence-valzer: 63-bit, 0 allowed */
			if (ty != IMAP_TOK_NUMBER ||
			    imap_num64(t.text, t.len, 0, &modseq) < 0)
				return -1;
			cmd->changedsince = 1;
		} else if (imap_tok_is(&t, "VANISHED")) {
			cmd->vanished = 1;
		} else {
			return -1;
		}
		n++;
	}
}

/*
 * Parses the arguments of FETCH / UID FETCH (RFC 3501 section 6.4.5, RFC
 * 9051 section 6.4.5): sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att
 * / "(" fetch-att *(SP fetch-att) ")") [SP "(" fetch-modifiers ")"]. args
 * (args_len bytes, CRLF allowed at the end) is one segment's text after
 * "FETCH "; the set and the items' sections point into it afterwards.
 * Returns 0, or -1 when malformed (a literal in the arguments included),
 * with cmd reset to no items and any_content set: the fail-safe reading.
 */
int imap_fetch_cmd_parse(int uid, const char *args, size_t args_len,
                         struct imap_fetch_cmd *cmd)
{
	struct imap_tok t;
	enum imap_tok_type ty;
	size_t pos = 0;
	int m;

	memset(cmd, 0, sizeof(*cmd));
	cmd->uid = uid != 0;

	ty = imap_tok_next(args, args_len, &pos, &t);
	if ((ty != IMAP_TOK_ATOM && ty != IMAP_TOK_NUMBER) ||
	    imap_seqset_walk(t.text, t.len, 1, NULL, NULL) < 0)
		return imap_cmd_fail(cmd);
	cmd->set = t.text;
	cmd->set_len = t.len;

	ty = imap_tok_next(args, args_len, &pos, &t);
	if (ty == IMAP_TOK_LPAREN) {
		for (;;) {
			ty = imap_tok_next(args, args_len, &pos, &t);
			if (ty == IMAP_TOK_RPAREN && cmd->n_items > 0)
				break;
			/* macros stand alone, never inside the list */
			if (ty != IMAP_TOK_ATOM || imap_macro(&t) >= 0 ||
			    imap_cmd_add(cmd, t.text, t.len) < 0)
				return imap_cmd_fail(cmd);
			if (imap_tok_is(&t, "PREVIEW")) {
				size_t save = pos;

				ty = imap_tok_next(args, args_len, &pos, &t);
				if (ty != IMAP_TOK_LPAREN)
					pos = save;
				else if (imap_cmd_att_args(args, args_len, &pos) < 0)
					return imap_cmd_fail(cmd);
			}
		}
	} else if (ty == IMAP_TOK_ATOM && (m = imap_macro(&t)) >= 0) {
		size_t k;

		for (k = 0; k < IMAP_MACRO_ITEMS && imap_fetch_macros[m].items[k] != NULL;
		     k++) {
			const char *name = imap_fetch_macros[m].items[k];

			if (imap_cmd_add(cmd, name, strlen(name)) < 0)
				return imap_cmd_fail(cmd);
		}
	} else if (ty != IMAP_TOK_ATOM || imap_cmd_add(cmd, t.text, t.len) < 0) {
		return imap_cmd_fail(cmd);
	}

	ty = imap_tok_next(args, args_len, &pos, &t);
	if (ty == IMAP_TOK_LPAREN) {
		if (imap_cmd_modifiers(args, args_len, &pos, cmd) < 0)
			return imap_cmd_fail(cmd);
		ty = imap_tok_next(args, args_len, &pos, &t);
	}
	if (ty != IMAP_TOK_END)
		return imap_cmd_fail(cmd);
	return 0;
}

/* ---------------- FETCH responses ---------------- */

/*
 * Reads "* " nz-number " FETCH (" at the start of seg (RFC 3501 section
 * 7.4.2, "FETCH" in any case). Returns the length of that head with *seq_r
 * set, or 0 when seg does not start so.
 */
static size_t imap_fetch_head(const char *seg, size_t len, uint32_t *seq_r)
{
	static const char fetch[] = " FETCH (";
	size_t i = 2, start;
	uint32_t seq;

	if (len < 2 || seg[0] != '*' || seg[1] != ' ')
		return 0;
	start = i;
	while (i < len && imap_is_digit(seg[i]))
		i++;
	if (imap_nz32(seg + start, i - start, &seq) < 0)
		return 0;
	if (len - i < sizeof(fetch) - 1 || !imap_ieq(seg + i, sizeof(fetch) - 1, fetch))
		return 0;
	*seq_r = seq;
	return i + sizeof(fetch) - 1;
}

/*
 * True (1) when seg (len bytes) starts with "* <nz-number> FETCH (", the
 * head of an untagged FETCH response, "FETCH" in any case; *seq_r is then
 * the message sequence number. 0 otherwise (*seq_r untouched).
 */
int imap_is_fetch_response(const char *seg, size_t len, uint32_t *seq_r)
{
	return imap_fetch_head(seg, len, seq_r) != 0;
}

/* Resets w for a new FETCH response line; w is caller-owned storage. */
void imap_fetch_walk_init(struct imap_fetch_walk *w)
{
	memset(w, 0, sizeof(*w));
}

/* Marks w failed with a static reason; every later segment fails too. */
static int imap_walk_fail(struct imap_fetch_walk *w, const char *why)
{
	w->error = 1;
	w->why = why;
	return -1;
}

/* True when the pending top-level attribute is UID. */
static int imap_walk_is_uid(const struct imap_fetch_walk *w)
{
	return imap_ieq(w->item_text, w->item_len, "UID");
}

/* Takes t as the next top-level attribute name. Returns 0 or -1. */
static int imap_walk_name(struct imap_fetch_walk *w, const struct imap_tok *t)
{
	if (t->type != IMAP_TOK_ATOM)
		return imap_walk_fail(w, "FETCH attribute name is not an atom");
	if (t->len >= IMAP_ITEM_TEXT_MAX)
		return imap_walk_fail(w, "FETCH attribute name too long");
	memcpy(w->item_text, t->text, t->len);
	w->item_text[t->len] = '\0';
	w->item_len = t->len;
	if (imap_item_parse(w->item_text, w->item_len, &w->item) < 0)
		return imap_walk_fail(w, "malformed FETCH attribute name");
	w->want_value = 1;
	return 0;
}

/*
 * Takes t (a number, string, NIL or atom) as the value of the pending
 * top-level attribute. Returns 0 or -1.
 */
static int imap_walk_value(struct imap_fetch_walk *w, const struct imap_tok *t)
{
	w->want_value = 0;
	if (imap_walk_is_uid(w)) {
		uint32_t uid;

		/* Security: verdicts are keyed by UID; one line gives one UID */
		if (t->type != IMAP_TOK_NUMBER || imap_nz32(t->text, t->len, &uid) < 0)
			return imap_walk_fail(w, "UID is not an nz-number");
		if (w->have_uid && w->uid != uid)
			return imap_walk_fail(w,
			                      "two different UIDs in one FETCH response");
		w->uid = uid;
		w->have_uid = 1;
		return 0;
	}
	/*
	 * Security: content can also come as a quoted string (RFC 3501 section
	 * 4.3), with no literal to announce it; the session must hold it too.
	 */
	if (t->type != IMAP_TOK_NIL &&
	    (w->item.kind == IMAP_ITEM_WHOLE || w->item.kind == IMAP_ITEM_CONTENT))
		w->inline_content = 1;
	return 0;
}

/*
 * A top-level literal: it must be the value of the pending attribute, one
 * whose value may be a string. Consumes want_value. Returns 0 or -1.
 */
static int imap_walk_literal(struct imap_fetch_walk *w)
{
	if (!w->want_value || imap_walk_is_uid(w) || w->item.kind == IMAP_ITEM_SIZE ||
	    w->item.kind == IMAP_ITEM_STRUCTURE)
		return imap_walk_fail(w, "literal where no literal may be");
	w->want_value = 0;
	return 0;
}

/* A "(": checks where it may open a list, and goes one level deeper. */
static int imap_walk_open(struct imap_fetch_walk *w)
{
	/*
	 * Security: literals inside a list are reported as nested strings, so
	 * a list as the value of a content (or header, size, UID) attribute
	 * would smuggle content past the session. Only lists of OTHER
	 * attributes (FLAGS, ENVELOPE, MODSEQ...) and BODY / BODYSTRUCTURE
	 * are allowed.
	 */
	if (w->depth == 1 &&
	    (!w->want_value || imap_walk_is_uid(w) ||
	     (w->item.kind != IMAP_ITEM_OTHER && w->item.kind != IMAP_ITEM_STRUCTURE)))
		return imap_walk_fail(w, "list where no list may be");
	if (w->depth >= IMAP_FETCH_DEPTH_MAX)
		return imap_walk_fail(w, "FETCH response nested too deeply");
	w->depth++;
	return 0;
}

/* True when the segment ends a line (its terminator is the line's LF). */
static int imap_seg_ends_line(const char *seg, size_t len)
{
	return len > 0 && seg[len - 1] == '\n';
}

/*
 * Feeds one whole segment of a FETCH response line (the first one starting
 * "* n FETCH ("), terminator included. Returns 1 with *lit_item_r set (its
 * section pointing into w->item_text, valid until the next call) when the
 * segment ends in the literal that is the value of a top-level attribute;
 * 0 when it ends in a literal nested inside a list value (ENVELOPE,
 * BODYSTRUCTURE...) or ends the line (w->done set); -1 when the response is
 * malformed or fed after its end (w->error and w->why set; every later call
 * fails too).
 */
int imap_fetch_walk_segment(struct imap_fetch_walk *w, const char *seg, size_t len,
                            struct imap_item *lit_item_r)
{
	struct imap_tok t;
	size_t pos = 0;

	if (w->error)
		return -1;
	if (w->done)
		return imap_walk_fail(w, "segment after the end of the FETCH response");
	if (!w->started) {
		pos = imap_fetch_head(seg, len, &w->seq);
		if (pos == 0)
			return imap_walk_fail(w, "not a FETCH response");
		w->started = 1;
		w->depth = 1;
	}
	for (;;) {
		enum imap_tok_type ty = imap_tok_next(seg, len, &pos, &t);

		if (ty == IMAP_TOK_END) {
			if (!imap_seg_ends_line(seg, len))
				return imap_walk_fail(
				    w, "segment without a line end or literal");
			if (w->depth != 0)
				return imap_walk_fail(
				    w, "FETCH response line ends inside a list");
			w->done = 1;
			return 0;
		}
		if (ty == IMAP_TOK_ERROR)
			return imap_walk_fail(w, "malformed token in a FETCH response");
		if (w->depth == 0)
			return imap_walk_fail(w, "text after the FETCH attribute list");
		switch (ty) {
		case IMAP_TOK_LITERAL:
			if (w->depth > 1)
				return 0; /* a string inside ENVELOPE, BODYSTRUCTURE... */
			if (imap_walk_literal(w) < 0)
				return -1;
			*lit_item_r = w->item;
			return 1;
		case IMAP_TOK_LPAREN:
			if (imap_walk_open(w) < 0)
				return -1;
			break;
		case IMAP_TOK_RPAREN:
			if (w->depth == 1 && w->want_value)
				return imap_walk_fail(w,
				                      "FETCH attribute without a value");
			w->depth--;
			if (w->depth == 1)
				w->want_value = 0; /* a list value is complete */
			break;
		case IMAP_TOK_ATOM:
		case IMAP_TOK_NUMBER:
		case IMAP_TOK_QUOTED:
		case IMAP_TOK_NIL:
			if (w->depth == 1 && (w->want_value ? imap_walk_value(w, &t) < 0
			                                    : imap_walk_name(w, &t) < 0))
				return -1;
			break;
		case IMAP_TOK_END:
		case IMAP_TOK_ERROR:
		case IMAP_TOK_COUNT:
			return imap_walk_fail(w, "unexpected token in a FETCH response");
		}
	}
}
