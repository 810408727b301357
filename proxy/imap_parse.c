/*
 * imap_parse.c - the IMAP segmenter and tokenizer (see imap_parse.h).
 *
 * Pure byte-level code: no I/O, no allocation, every length bounded. The
 * IMAP session (imap_session.c) feeds the segmenter whatever arrived from
 * the client or from upstream; it asks the tokenizer (and imap_fetch.c)
 * about the segments it gets back.
 *
 * Segmenter states (enum imap_seg_state):
 *   LINE       in a line segment, outside quotes
 *   QUOTED     inside a quoted string (RFC 3501 section 4.3)
 *   QUOTED_BS  after a backslash inside a quoted string
 *   LITERAL    streaming the bytes of a literal; literal_left == 0 means
 *              LITERAL_END is the next event
 * Line bytes are copied into p->buf. Besides the quote state, a small
 * machine (mk, enum imap_mk) follows the candidate literal marker the bytes
 * seen so far end with: "~{", digits, "+" or "-", "}", CR. An LF in state
 * CLOSE or CR ends the segment with a literal (RFC 3501 section 4.3,
 * RFC 7888 LITERAL+/LITERAL-, RFC 3516 literal8); any other LF ends the
 * line. The quote state resets at every line end, so a stray quote costs
 * one line, not the session. When p->buf fills up the segment is handed out
 * as an IMAP_SEG_PART piece, holding back a candidate marker (at most 24
 * bytes) so that the last piece always holds its whole marker. Each byte is
 * looked at once and a held-back tail is moved once per 64 KiB piece, so
 * feeding is O(n) however the input is split.
 *
 * Security: the proxy must frame the stream exactly as the peer does, or a
 * client could hide a command (or a server a message) inside what the
 * proxy takes for literal bytes. So a marker followed by a bare LF counts,
 * as it does for Dovecot, and a size the proxy will not stream is a fatal
 * error rather than text.
 *
 * The tokenizer is a pure function of one segment's bytes and a position.
 */
#include "proxy/imap_parse.h"

#include <assert.h>
#include <string.h>

/* The literal marker candidate at the end of the bytes read so far. */
enum imap_mk {
	IMAP_MK_NONE,   /* the bytes do not end in a marker prefix */
	IMAP_MK_TILDE,  /* "~" */
	IMAP_MK_OPEN,   /* "{" or "~{" */
	IMAP_MK_DIGITS, /* "{" 1*DIGIT */
	IMAP_MK_SIGN,   /* "{" 1*DIGIT ("+" / "-") */
	IMAP_MK_CLOSE,  /* ... "}" */
	IMAP_MK_CR,     /* ... "}" CR */
	IMAP_MK_COUNT
};

#define IMAP_NUMBER64_MAX ((uint64_t)INT64_MAX)
#define IMAP_LITERAL_DEFAULT_MAX 0xffffffffULL
/* "~{" 19 digits "+}" CR: the longest candidate ever held back */
#define IMAP_MK_HOLD_MAX (2 + IMAP_LITERAL_DIGITS_MAX + 3)
/* bracket and parenthesis nesting inside one atom */
#define IMAP_TOK_NEST_MAX 8

_Static_assert(IMAP_SEG_MAX > 2 * IMAP_MK_HOLD_MAX, "a piece must outgrow a marker");

/* Resets p to the start of a stream; buf is left as it is. */
void imap_seg_init(struct imap_seg_parser *p, uint64_t max_literal)
{
	memset(p, 0, offsetof(struct imap_seg_parser, buf));
	p->state = IMAP_SS_LINE;
	p->max_literal = max_literal != 0 ? max_literal : IMAP_LITERAL_DEFAULT_MAX;
	p->line_start = 1;
	p->mk = IMAP_MK_NONE;
}

/* The static reason of the last IMAP_ERROR, "no error" when there was none. */
const char *imap_seg_error(const struct imap_seg_parser *p)
{
	return p->error != NULL ? p->error : "no error";
}

/* Finishes a successful call that used n bytes of the caller's buffer. */
static int imap_seg_done(struct imap_seg_parser *p, int res, size_t n, size_t *consumed_r)
{
	*consumed_r = n;
	p->pos += n;
	return res;
}

/* Discards the bytes the previous event handed out of p->buf. */
static void imap_seg_drop(struct imap_seg_parser *p)
{
	size_t d = p->drop;

	if (d == 0)
		return;
	assert(d <= p->len);
	memmove(p->buf, p->buf + d, p->len - d);
	p->len -= d;
	p->mk_start = p->mk_start >= d ? p->mk_start - d : 0;
	p->drop = 0;
}

/*
 * Advances the marker machine over byte c (outside quotes), which sits at
 * p->buf[p->len - 1] and at stream offset off.
 */
static void imap_mk_step(struct imap_seg_parser *p, unsigned char c, uint64_t off)
{
	switch (c) {
	case '~':
		p->mk = IMAP_MK_TILDE;
		p->mk_start = p->len - 1;
		p->mk_off = off;
		p->mk_digits = 0; /* an older candidate's count must not stop the hold */
		break;
	case '{':
		if (p->mk == IMAP_MK_TILDE) {
			p->mk_literal8 = 1;
		} else {
			p->mk_literal8 = 0;
			p->mk_start = p->len - 1;
			p->mk_off = off;
		}
		p->mk = IMAP_MK_OPEN;
		p->mk_digits = 0;
		p->mk_size = 0;
		p->mk_nonsync = 0;
		break;
	case '0':
	case '1':
	case '2':
	case '3':
	case '4':
	case '5':
	case '6':
	case '7':
	case '8':
	case '9':
		if (p->mk != IMAP_MK_OPEN && p->mk != IMAP_MK_DIGITS) {
			p->mk = IMAP_MK_NONE;
			break;
		}
		p->mk = IMAP_MK_DIGITS;
		/* 19 digits fit in 64 bits; past them only the count grows */
		if (p->mk_digits < IMAP_LITERAL_DIGITS_MAX)
			p->mk_size = p->mk_size * 10 + (uint64_t)(c - '0');
		if (p->mk_digits <= IMAP_LITERAL_DIGITS_MAX)
			p->mk_digits++;
		break;
	case '+':
	case '-':
		if (p->mk == IMAP_MK_DIGITS) {
			p->mk = IMAP_MK_SIGN;
			p->mk_nonsync = 1;
		} else {
			p->mk = IMAP_MK_NONE;
		}
		break;
	case '}':
		p->mk = p->mk == IMAP_MK_DIGITS || p->mk == IMAP_MK_SIGN ? IMAP_MK_CLOSE
		                                                         : IMAP_MK_NONE;
		break;
	case '\r':
		p->mk = p->mk == IMAP_MK_CLOSE ? IMAP_MK_CR : IMAP_MK_NONE;
		break;
	default:
		p->mk = IMAP_MK_NONE;
		break;
	}
}

/* Hands out the held segment (p->buf[0..n)) as a SEGMENT event. */
static void imap_seg_event(struct imap_seg_parser *p, size_t n, enum imap_seg_end end,
                           struct imap_event *ev)
{
	ev->type = IMAP_EV_SEGMENT;
	ev->data = p->buf;
	ev->len = n;
	ev->end = end;
	ev->first = p->line_start;
	p->drop = n;
}

/*
 * The LF at buf[i - 1] (already appended to p->buf) ends the segment: with
 * a literal when the marker machine says so, else the line.
 */
static int imap_seg_lf(struct imap_seg_parser *p, size_t i, size_t *consumed_r,
                       struct imap_event *ev)
{
	int marker =
	    p->state == IMAP_SS_LINE && (p->mk == IMAP_MK_CLOSE || p->mk == IMAP_MK_CR);

	if (!marker) {
		imap_seg_event(p, p->len, IMAP_SEG_CRLF, ev);
		p->line_start = 1;
		p->state = IMAP_SS_LINE;
		p->mk = IMAP_MK_NONE;
		return imap_seg_done(p, IMAP_OK, i, consumed_r);
	}
	/*
	 * Security: a size we cannot stream is fatal, never text. Taking it for
	 * text would let the peer's literal bytes pass as protocol lines.
	 */
	if (p->mk_digits > IMAP_LITERAL_DIGITS_MAX || p->mk_size > IMAP_NUMBER64_MAX ||
	    p->mk_size > p->max_literal) {
		p->error = p->mk_digits > IMAP_LITERAL_DIGITS_MAX ||
		                   p->mk_size > IMAP_NUMBER64_MAX
		               ? "literal size does not fit in 63 bits"
		               : "literal size exceeds the bound";
		p->len--; /* the LF is not consumed */
		*consumed_r = i - 1;
		p->pos = p->mk_off;
		return IMAP_ERROR;
	}
	imap_seg_event(p, p->len, IMAP_SEG_LITERAL, ev);
	ev->literal_size = p->mk_size;
	ev->literal8 = p->mk_literal8;
	ev->nonsync = p->mk_nonsync;
	p->line_start = 0;
	p->state = IMAP_SS_LITERAL;
	p->literal_left = p->mk_size;
	p->mk = IMAP_MK_NONE;
	return imap_seg_done(p, IMAP_OK, i, consumed_r);
}

/*
 * p->buf is full and the segment goes on: hands out a PART piece, all but
 * a candidate marker, which stays for the next piece.
 */
static int imap_seg_part(struct imap_seg_parser *p, size_t i, size_t *consumed_r,
                         struct imap_event *ev)
{
	size_t cut = p->len;

	if (p->mk != IMAP_MK_NONE && p->mk_digits <= IMAP_LITERAL_DIGITS_MAX)
		cut = p->mk_start;
	assert(cut > 0 && p->len - cut <= IMAP_MK_HOLD_MAX);
	imap_seg_event(p, cut, IMAP_SEG_PART, ev);
	p->line_start = 0;
	return imap_seg_done(p, IMAP_OK, i, consumed_r);
}

/*
 * Bytes that may change the state, per line state: everything else is
 * copied in runs. In a line a plain byte only clears the marker candidate.
 */
static const unsigned char imap_line_special[256] = {
    ['\n'] = 1, ['\r'] = 1, ['"'] = 1, ['~'] = 1, ['{'] = 1, ['}'] = 1,
    ['+'] = 1,  ['-'] = 1,  ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1,
    ['4'] = 1,  ['5'] = 1,  ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1};
static const unsigned char imap_quoted_special[256] = {['\n'] = 1, ['"'] = 1, ['\\'] = 1};

/*
 * Copies the run of bytes from buf[i] that cannot change the state (at
 * most up to a full p->buf); returns the new i.
 */
static size_t imap_seg_run(struct imap_seg_parser *p, const char *buf, size_t len,
                           size_t i)
{
	const unsigned char *special;
	size_t lim = len - i, j;

	if (p->state == IMAP_SS_LINE)
		special = imap_line_special;
	else if (p->state == IMAP_SS_QUOTED)
		special = imap_quoted_special;
	else
		return i;
	if (lim > IMAP_SEG_MAX - p->len)
		lim = IMAP_SEG_MAX - p->len;
	for (j = i; j < i + lim && !special[(unsigned char)buf[j]]; j++)
		;
	if (j == i)
		return i;
	memcpy(p->buf + p->len, buf + i, j - i);
	p->len += j - i;
	if (p->state == IMAP_SS_LINE)
		p->mk = IMAP_MK_NONE;
	return j;
}

/* The line states: copies bytes into p->buf up to a segment's end. */
static int imap_seg_line(struct imap_seg_parser *p, const char *buf, size_t len,
                         size_t *consumed_r, struct imap_event *ev)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c;

		i = imap_seg_run(p, buf, len, i);
		if (p->len == IMAP_SEG_MAX)
			return imap_seg_part(p, i, consumed_r, ev);
		if (i == len)
			break;
		c = (unsigned char)buf[i++];
		p->buf[p->len++] = (char)c;
		if (c == '\n')
			return imap_seg_lf(p, i, consumed_r, ev);
		switch (p->state) {
		case IMAP_SS_LINE:
			if (c == '"') {
				p->state = IMAP_SS_QUOTED;
				p->mk = IMAP_MK_NONE;
			} else {
				imap_mk_step(p, c, p->pos + i - 1);
			}
			break;
		case IMAP_SS_QUOTED:
			if (c == '"')
				p->state = IMAP_SS_LINE;
			else if (c == '\\')
				p->state = IMAP_SS_QUOTED_BS;
			break;
		case IMAP_SS_QUOTED_BS:
			p->state = IMAP_SS_QUOTED;
			break;
		default:
			assert(0 && "imap_seg_line: not a line state");
			break;
		}
		if (p->len == IMAP_SEG_MAX)
			return imap_seg_part(p, i, consumed_r, ev);
	}
	return imap_seg_done(p, IMAP_NEED_MORE, len, consumed_r);
}

/* LITERAL state: hands out literal bytes straight from buf, then LITERAL_END. */
static int imap_seg_literal(struct imap_seg_parser *p, const char *buf, size_t len,
                            size_t *consumed_r, struct imap_event *ev)
{
	size_t n;

	if (p->literal_left == 0) {
		ev->type = IMAP_EV_LITERAL_END;
		p->state = IMAP_SS_LINE;
		p->mk = IMAP_MK_NONE;
		return imap_seg_done(p, IMAP_OK, 0, consumed_r);
	}
	if (len == 0)
		return imap_seg_done(p, IMAP_NEED_MORE, 0, consumed_r);
	n = (uint64_t)len < p->literal_left ? len : (size_t)p->literal_left;
	p->literal_left -= n;
	ev->type = IMAP_EV_LITERAL_DATA;
	ev->data = buf;
	ev->len = n;
	return imap_seg_done(p, IMAP_OK, n, consumed_r);
}

/*
 * Feeds bytes: at most one event per call, see imap_parse.h. Errors are
 * sticky. A SEGMENT points into p, LITERAL_DATA into buf; neither outlives
 * the next call.
 */
int imap_seg_feed(struct imap_seg_parser *p, const char *buf, size_t len,
                  size_t *consumed_r, struct imap_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	*consumed_r = 0;
	if (p->error != NULL)
		return IMAP_ERROR;
	imap_seg_drop(p);
	if (p->state == IMAP_SS_LITERAL)
		return imap_seg_literal(p, buf, len, consumed_r, ev);
	return imap_seg_line(p, buf, len, consumed_r, ev);
}

/* ---------------- tokenizer ---------------- */

static int imap_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/*
 * RFC 3501 section 9 ATOM-CHAR, widened to what the session must read as
 * one word: "]" (astring), "%" and "*" (tags, list patterns, "\*"), "\"
 * (flags) and 8-bit bytes (UTF-8 in atoms some servers send). "[" is one
 * too, but opens a section the caller reads separately.
 */
static int imap_atom_char(unsigned char c)
{
	if (c <= 0x20 || c == 0x7f)
		return 0;
	return c != '(' && c != ')' && c != '{' && c != '"';
}

/*
 * True when seg[at..len) is exactly a literal marker and its line ending:
 * ["~"] "{" 1*19DIGIT ["+" / "-"] "}" [CR] LF, the size at most 2^63 - 1.
 * Sets *size_r and *mlen_r (the marker without its line ending).
 */
static int imap_tok_marker(const char *seg, size_t len, size_t at, uint64_t *size_r,
                           size_t *mlen_r)
{
	size_t i = at, d;
	uint64_t v = 0;

	if (i < len && seg[i] == '~')
		i++;
	if (i >= len || seg[i] != '{')
		return 0;
	d = ++i;
	while (i < len && imap_is_digit((unsigned char)seg[i]) &&
	       i - d < IMAP_LITERAL_DIGITS_MAX) {
		v = v * 10 + (uint64_t)(seg[i] - '0');
		i++;
	}
	if (i == d || v > IMAP_NUMBER64_MAX)
		return 0;
	if (i < len && (seg[i] == '+' || seg[i] == '-'))
		i++;
	if (i >= len || seg[i] != '}')
		return 0;
	*mlen_r = ++i - at;
	if (i < len && seg[i] == '\r')
		i++;
	if (i + 1 != len || seg[i] != '\n')
		return 0;
	*size_r = v;
	return 1;
}

/*
 * seg[i] is the opening quote of a quoted string. Returns 0 with *end_r
 * just past the closing quote, or -1 with *end_r at the offending byte.
 * RFC 3501 section 9: only \\ and \" are escapes; CR, LF and NUL may not
 * appear (RFC 9051 allows UTF-8, so 8-bit bytes pass).
 */
static int imap_tok_quoted(const char *seg, size_t len, size_t i, size_t *end_r)
{
	for (i++; i < len; i++) {
		char c = seg[i];

		if (c == '"') {
			*end_r = i + 1;
			return 0;
		}
		if (c == '\\') {
			if (i + 1 >= len || (seg[i + 1] != '\\' && seg[i + 1] != '"'))
				break;
			i++;
		} else if (c == '\r' || c == '\n' || c == '\0') {
			break;
		}
	}
	*end_r = i;
	return -1;
}

/*
 * seg[i] is the "[" of a section: BODY[HEADER.FIELDS (From "To")]. Reads to
 * the matching "]" over spaces, parentheses and quoted strings, nesting at
 * most IMAP_TOK_NEST_MAX deep. Returns 0 with *end_r past the "]", or -1
 * with *end_r at the offending byte (a literal inside a section cannot be
 * one token either).
 */
static int imap_tok_section(const char *seg, size_t len, size_t i, size_t *end_r)
{
	char stack[IMAP_TOK_NEST_MAX];
	size_t depth = 0;

	while (i < len) {
		unsigned char c = (unsigned char)seg[i];

		switch (c) {
		case '[':
		case '(':
			if (depth == IMAP_TOK_NEST_MAX)
				goto bad;
			stack[depth++] = (char)c;
			i++;
			break;
		case ']':
		case ')':
			if (depth == 0 || stack[depth - 1] != (c == ']' ? '[' : '('))
				goto bad;
			i++;
			if (--depth == 0) {
				*end_r = i;
				return 0;
			}
			break;
		case '"':
			if (imap_tok_quoted(seg, len, i, &i) < 0)
				goto bad;
			break;
		default:
			if (c < 0x20 || c == 0x7f || c == '{')
				goto bad;
			i++;
			break;
		}
	}
bad:
	*end_r = i;
	return -1;
}

/*
 * seg[i] is the "<" right after a section: "<" 1*DIGIT ["." 1*DIGIT] ">"
 * (RFC 3501 section 6.4.5 in commands, section 7.4.2 in responses). Returns
 * 0 with *end_r past the ">", or -1 with *end_r at the offending byte.
 */
static int imap_tok_partial(const char *seg, size_t len, size_t i, size_t *end_r)
{
	size_t d = ++i;

	while (i < len && imap_is_digit((unsigned char)seg[i]))
		i++;
	if (i > d && i < len && seg[i] == '.') {
		d = ++i;
		while (i < len && imap_is_digit((unsigned char)seg[i]))
			i++;
	}
	if (i == d || i >= len || seg[i] != '>') {
		*end_r = i;
		return -1;
	}
	*end_r = i + 1;
	return 0;
}

/* Fills t with an error token from start to the offending byte at bad. */
static enum imap_tok_type imap_tok_error(const char *seg, size_t start, size_t bad,
                                         size_t *pos, struct imap_tok *t)
{
	t->type = IMAP_TOK_ERROR;
	t->text = seg + start;
	t->len = bad - start;
	*pos = start;
	return IMAP_TOK_ERROR;
}

/*
 * An atom from seg[start]: atom bytes and sections, each section optionally
 * followed by a partial. Classifies digits-only atoms as numbers and NIL.
 */
static enum imap_tok_type imap_tok_atom(const char *seg, size_t len, size_t start,
                                        size_t *pos, struct imap_tok *t)
{
	size_t i = start, k;
	int digits = 1;

	while (i < len) {
		unsigned char c = (unsigned char)seg[i];
		uint64_t size;
		size_t mlen;

		if (c == '[') {
			if (imap_tok_section(seg, len, i, &i) < 0 ||
			    (i < len && seg[i] == '<' &&
			     imap_tok_partial(seg, len, i, &i) < 0))
				return imap_tok_error(seg, start, i, pos, t);
			digits = 0;
			continue;
		}
		/* "a~{5}": the marker, not the atom, owns the "~" */
		if (c == '~' && i + 1 < len && seg[i + 1] == '{' &&
		    imap_tok_marker(seg, len, i, &size, &mlen))
			break;
		if (!imap_atom_char(c))
			break;
		digits = digits && imap_is_digit(c);
		i++;
	}
	t->type = IMAP_TOK_ATOM;
	t->text = seg + start;
	t->len = i - start;
	*pos = i;
	if (digits && t->len <= IMAP_LITERAL_DIGITS_MAX) {
		uint64_t v = 0;

		for (k = start; k < i; k++)
			v = v * 10 + (uint64_t)(seg[k] - '0');
		if (v <= IMAP_NUMBER64_MAX) {
			t->type = IMAP_TOK_NUMBER;
			t->num = v;
		}
	} else if (imap_tok_is(t, "NIL")) {
		t->type = IMAP_TOK_NIL;
	}
	return t->type;
}

/*
 * Reads the next token of one segment from *pos; see imap_parse.h. t
 * points into seg; seg stays the caller's.
 */
enum imap_tok_type imap_tok_next(const char *seg, size_t len, size_t *pos,
                                 struct imap_tok *t)
{
	size_t i = *pos, end;
	unsigned char c;

	while (i < len && seg[i] == ' ')
		i++;
	t->text = seg + i;
	t->len = 0;
	t->num = 0;
	if (i >= len) {
		*pos = i;
		return t->type = IMAP_TOK_END;
	}
	c = (unsigned char)seg[i];
	if (c == '\n' || (c == '\r' && (i + 1 == len || seg[i + 1] == '\n'))) {
		/* the line ending, or a CR that a PART piece was cut after */
		t->len = c == '\r' && i + 1 < len ? 2 : 1;
		*pos = i;
		return t->type = IMAP_TOK_END;
	}
	switch (c) {
	case '(':
	case ')':
		t->len = 1;
		*pos = i + 1;
		return t->type = c == '(' ? IMAP_TOK_LPAREN : IMAP_TOK_RPAREN;
	case '"':
		if (imap_tok_quoted(seg, len, i, &end) < 0)
			return imap_tok_error(seg, i, end, pos, t);
		t->len = end - i;
		*pos = end;
		return t->type = IMAP_TOK_QUOTED;
	case '~':
	case '{':
		if (imap_tok_marker(seg, len, i, &t->num, &t->len)) {
			*pos = i + t->len;
			return t->type = IMAP_TOK_LITERAL;
		}
		if (c == '{')
			return imap_tok_error(seg, i, i, pos, t);
		break;
	default:
		break;
	}
	if (c != '[' && !imap_atom_char(c))
		return imap_tok_error(seg, i, i, pos, t);
	return imap_tok_atom(seg, len, i, pos, t);
}

/* Compares t's text with word, ignoring ASCII case; 1 when equal. */
int imap_tok_is(const struct imap_tok *t, const char *word)
{
	size_t i;

	for (i = 0; i < t->len; i++) {
		unsigned char a = (unsigned char)t->text[i];
		unsigned char b = (unsigned char)word[i];

		if (b == '\0')
			return 0;
		if (a >= 'a' && a <= 'z')
			a = (unsigned char)(a - 'a' + 'A');
		if (b >= 'a' && b <= 'z')
			b = (unsigned char)(b - 'a' + 'A');
		if (a != b)
			return 0;
	}
	return word[i] == '\0';
}
