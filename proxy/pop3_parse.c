/*
 * pop3_parse.c - the POP3 response parser, command parser and dot-stuffer.
 *
 * Pure byte-level state machines: no I/O, no allocation, every length
 * bounded. The POP3 session (pop3_session.c) feeds them whatever arrived
 * from upstream or from the client and acts on the events.
 *
 * Response parser states (enum pop3_resp_state):
 *   IDLE        no response announced; any byte is an error
 *   STATUS      accumulating the status line in p->line (<= POP3_STATUS_MAX)
 *   LINE_START  body, at the start of a line
 *   DOT         body, a '.' was read at the start of a line
 *   DOT_CR      body, ".\r" was read at the start of a line
 *   MID_LINE    body, inside a line
 * Body bytes are returned as DATA events pointing into the caller's buffer:
 * one chunk runs from wherever the scan started to the next line that
 * begins with '.' (whose first dot must be dropped, RFC 1939 section 3) or
 * to the end of the input, so a clean message yields one event per read.
 * Every byte is looked at a bounded number of times (memchr for LF, one test
 * at each line start), so feeding is O(n) however the input is split.
 *
 * The command parser copies each client line into its own buffer, bounded
 * by POP3_CMD_LINE_MAX, and splits off an upper-cased verb.
 */
#include "proxy/pop3_parse.h"

#include <assert.h>
#include <string.h>

/* The CR of a ".\r" line start that turned out not to be the terminator. */
static const char pop3_cr[] = "\r";

/* Resets p to IDLE with no error, counters at zero; p is caller-owned storage. */
void pop3_resp_init(struct pop3_resp_parser *p, uint64_t max_body)
{
	memset(p, 0, sizeof(*p));
	p->state = POP3_RS_IDLE;
	p->max_body = max_body;
}

/*
 * Arms p for the next response (the session knows from the command it sent
 * whether a +OK brings a body). Only in IDLE; resets the per-response counters.
 */
void pop3_resp_expect(struct pop3_resp_parser *p, int multiline_on_ok)
{
	assert(p->state == POP3_RS_IDLE);
	p->state = POP3_RS_STATUS;
	p->multiline_on_ok = multiline_on_ok != 0;
	p->line_len = 0;
	p->body_len = 0;
	p->noncanonical = 0;
}

/* The static reason of the last POP3_ERROR, "no error" when there was none. */
const char *pop3_resp_error(const struct pop3_resp_parser *p)
{
	return p->error != NULL ? p->error : "no error";
}

/*
 * Records an error at byte index at of the current buffer. The parser stays
 * failed (every later feed returns POP3_ERROR) until pop3_resp_init.
 */
static int pop3_resp_fail(struct pop3_resp_parser *p, const char *why, size_t at,
                          size_t *consumed_r)
{
	p->error = why;
	*consumed_r = at;
	p->pos += at;
	return POP3_ERROR;
}

/* Finishes a successful feed call that used n bytes. */
static int pop3_resp_done(struct pop3_resp_parser *p, int res, size_t n,
                          size_t *consumed_r)
{
	*consumed_r = n;
	p->pos += n;
	return res;
}

/* True for the byte that may follow a status indicator ("+OK", "-ERR"). */
static int pop3_status_sep(char c)
{
	return c == ' ' || c == '\r' || c == '\n';
}

/*
 * Classifies the complete status line in p->line (it ends in LF). Returns 0
 * with *st_r set, or -1 with *bad_r the index of the offending byte.
 */
static int pop3_status_classify(const struct pop3_resp_parser *p, enum pop3_status *st_r,
                                size_t *bad_r)
{
	const char *l = p->line;
	size_t n = p->line_len - 1; /* without the LF */
	const char *cr;

	if (n > 0 && l[n - 1] == '\r')
		n--;
	/*
	 * Security: a CR inside the status line is refused. Some clients end a
	 * line at a bare CR; they would take the rest of this (unscanned) line
	 * for the first body line, and the proxy would not see that body.
	 */
	cr = memchr(l, '\r', n);
	if (cr != NULL) {
		*bad_r = (size_t)(cr - l);
		return -1;
	}
	*bad_r = 0;
	/* RFC 1939 section 3: the indicators are case-sensitive, in upper case. */
	if (l[0] == '+') {
		if (p->line_len >= 4 && memcmp(l, "+OK", 3) == 0 && pop3_status_sep(l[3]))
			*st_r = POP3_ST_OK;
		else
			*st_r = POP3_ST_CONT; /* RFC 5034 section 4: "+" SP base64 */
		return 0;
	}
	if (p->line_len >= 5 && memcmp(l, "-ERR", 4) == 0 && pop3_status_sep(l[4])) {
		*st_r = POP3_ST_ERR;
		return 0;
	}
	return -1;
}

/* STATUS state: accumulates the status line and classifies it once complete. */
static int pop3_resp_status(struct pop3_resp_parser *p, const char *buf, size_t len,
                            size_t *consumed_r, struct pop3_resp_event *ev)
{
	size_t room = POP3_STATUS_MAX - p->line_len;
	size_t n = len < room ? len : room;
	const char *nl = memchr(buf, '\n', n);
	enum pop3_status st;
	size_t bad;
	uint64_t start;

	/* refuse garbage at its first byte rather than after 512 of them */
	if (p->line_len == 0 && len > 0 && buf[0] != '+' && buf[0] != '-')
		return pop3_resp_fail(p, "status line does not start with '+' or '-'", 0,
		                      consumed_r);
	if (nl != NULL)
		n = (size_t)(nl - buf) + 1;
	memcpy(p->line + p->line_len, buf, n);
	p->line_len += n;
	if (nl == NULL) {
		if (p->line_len < POP3_STATUS_MAX)
			return pop3_resp_done(p, POP3_NEED_MORE, n, consumed_r);
		/* RFC 2449 section 4: 512 octets with the CRLF; the last one was not LF
		 */
		return pop3_resp_fail(p, "status line too long", n - 1, consumed_r);
	}
	start = p->pos + n - p->line_len; /* stream offset of the line's first byte */
	if (pop3_status_classify(p, &st, &bad) < 0) {
		p->pos = start + bad;
		p->error = bad == 0 ? "status line is not +OK, -ERR or a continuation"
		                    : "CR inside the status line";
		*consumed_r = n;
		return POP3_ERROR;
	}
	ev->type = POP3_EV_STATUS;
	ev->status = st;
	ev->multiline = st == POP3_ST_OK && p->multiline_on_ok;
	ev->data = p->line;
	ev->len = p->line_len;
	p->state = ev->multiline ? POP3_RS_LINE_START : POP3_RS_IDLE;
	return pop3_resp_done(p, POP3_OK, n, consumed_r);
}

/*
 * Body bytes from buf[start], a data byte in a line (not a line-start dot),
 * up to the next line-start '.' or the end of buf, as one DATA event. Clips
 * the chunk at max_body so the bytes up to the bound are always delivered
 * and the error comes at the first byte past it, however input is split.
 */
static int pop3_resp_chunk(struct pop3_resp_parser *p, const char *buf, size_t len,
                           size_t start, size_t *consumed_r, struct pop3_resp_event *ev)
{
	size_t end = start;
	size_t n;

	for (;;) {
		const char *nl = memchr(buf + end, '\n', len - end);

		if (nl == NULL) {
			end = len;
			p->state = POP3_RS_MID_LINE;
			break;
		}
		end = (size_t)(nl - buf) + 1;
		if (end == len || buf[end] == '.') {
			p->state = POP3_RS_LINE_START;
			break;
		}
	}
	n = end - start;
	if (p->max_body != 0 && n > p->max_body - p->body_len) {
		uint64_t room = p->max_body - p->body_len;

		if (room == 0)
			return pop3_resp_fail(p, "message body exceeds the size bound",
			                      start, consumed_r);
		n = (size_t)room;
		/* the byte after the clip is data, so the next call fails on it */
		p->state =
		    buf[start + n - 1] == '\n' ? POP3_RS_LINE_START : POP3_RS_MID_LINE;
	}
	p->body_len += n;
	ev->type = POP3_EV_DATA;
	ev->data = buf + start;
	ev->len = n;
	return pop3_resp_done(p, POP3_OK, start + n, consumed_r);
}

/* The terminator line ended at buf[i - 1]: report END, back to IDLE. */
static int pop3_resp_end(struct pop3_resp_parser *p, int crlf, size_t i,
                         size_t *consumed_r, struct pop3_resp_event *ev)
{
	p->state = POP3_RS_IDLE;
	ev->type = POP3_EV_END;
	ev->crlf_term = crlf;
	return pop3_resp_done(p, POP3_OK, i, consumed_r);
}

/* The body states: RFC 1939 section 3 byte-stuffing and the "." terminator. */
static int pop3_resp_body(struct pop3_resp_parser *p, const char *buf, size_t len,
                          size_t *consumed_r, struct pop3_resp_event *ev)
{
	size_t i = 0;

	while (i < len) {
		char c = buf[i];

		switch (p->state) {
		case POP3_RS_LINE_START:
			if (c == '.') {
				i++;
				p->state = POP3_RS_DOT;
				break;
			}
			return pop3_resp_chunk(p, buf, len, i, consumed_r, ev);
		case POP3_RS_MID_LINE:
			return pop3_resp_chunk(p, buf, len, i, consumed_r, ev);
		case POP3_RS_DOT:
			if (c == '\n')
				return pop3_resp_end(p, 0, i + 1, consumed_r, ev);
			if (c == '\r') {
				i++;
				p->state = POP3_RS_DOT_CR;
				break;
			}
			/* the dot is dropped; a server that stuffs only dots never sends
			 * ".x" */
			if (c != '.')
				p->noncanonical++;
			p->state = POP3_RS_MID_LINE;
			break;
		case POP3_RS_DOT_CR:
			if (c == '\n')
				return pop3_resp_end(p, 1, i + 1, consumed_r, ev);
			/*
			 * ".\r" then not LF: the dot was stuffing, the CR is body.
			 * The CR may sit in an earlier buffer, so hand out our own.
			 */
			p->noncanonical++;
			if (p->max_body != 0 && p->body_len >= p->max_body) {
				p->pos--; /* the offending byte is that CR */
				return pop3_resp_fail(
				    p, "message body exceeds the size bound", i,
				    consumed_r);
			}
			p->body_len++;
			p->state = POP3_RS_MID_LINE;
			ev->type = POP3_EV_DATA;
			ev->data = pop3_cr;
			ev->len = 1;
			return pop3_resp_done(p, POP3_OK, i, consumed_r);
		default:
			assert(0 && "pop3_resp_body: not a body state");
			return pop3_resp_fail(p, "internal parser state error", i,
			                      consumed_r);
		}
	}
	return pop3_resp_done(p, POP3_NEED_MORE, len, consumed_r);
}

/*
 * Feeds server bytes: at most one event per call, see pop3_parse.h. Errors
 * are sticky. DATA may point into buf, STATUS into p; neither outlives the
 * next call.
 */
int pop3_resp_feed(struct pop3_resp_parser *p, const char *buf, size_t len,
                   size_t *consumed_r, struct pop3_resp_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	*consumed_r = 0;
	if (p->error != NULL)
		return POP3_ERROR;
	switch (p->state) {
	case POP3_RS_IDLE:
		if (len == 0)
			return POP3_NEED_MORE;
		return pop3_resp_fail(
		    p, "data from the server while no response is expected", 0,
		    consumed_r);
	case POP3_RS_STATUS:
		return pop3_resp_status(p, buf, len, consumed_r, ev);
	default:
		return pop3_resp_body(p, buf, len, consumed_r, ev);
	}
}

/* ---------------- command parser ---------------- */

/* Empties p: no partial line, not discarding, no error. */
void pop3_cmd_init(struct pop3_cmd_parser *p)
{
	p->len = 0;
	p->discarding = 0;
	p->error = NULL;
}

/*
 * Splits the complete line in p->buf (ending in LF) into cmd. The verb is
 * the bytes before the first space, upper-cased; it is left empty when it
 * is too long or holds a byte outside printable ASCII.
 */
static void pop3_cmd_split(struct pop3_cmd_parser *p, struct pop3_cmd *cmd)
{
	size_t n = p->len - 1; /* without the LF */
	size_t v = 0;
	size_t i;

	if (n > 0 && p->buf[n - 1] == '\r')
		n--;
	while (v < n && p->buf[v] != ' ')
		v++;
	cmd->verb[0] = '\0';
	/*
	 * Security: a NUL, CR or other control byte would make the verb we
	 * dispatch on differ from what the server reads ("USER\0x" is not
	 * USER), so such a verb is no verb at all.
	 */
	if (v < POP3_VERB_MAX) {
		for (i = 0; i < v; i++) {
			unsigned char c = (unsigned char)p->buf[i];

			if (c < 0x21 || c > 0x7e)
				break;
			cmd->verb[i] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
		}
		cmd->verb[i == v ? v : 0] = '\0';
	}
	if (v < n) {
		cmd->args = p->buf + v + 1;
		cmd->args_len = n - v - 1;
	} else {
		cmd->args = p->buf + n;
		cmd->args_len = 0;
	}
	cmd->line = p->buf;
	cmd->line_len = p->len;
}

/*
 * Feeds client bytes; returns one complete line as a command (pointing into
 * p, valid until the next call), or one POP3_ERROR per overlong line.
 */
int pop3_cmd_feed(struct pop3_cmd_parser *p, const char *buf, size_t len,
                  size_t *consumed_r, struct pop3_cmd *cmd)
{
	size_t i = 0;
	size_t room, n;
	const char *nl;

	memset(cmd, 0, sizeof(*cmd));
	if (p->discarding) {
		nl = memchr(buf, '\n', len);
		if (nl == NULL) {
			*consumed_r = len;
			return POP3_NEED_MORE;
		}
		i = (size_t)(nl - buf) + 1;
		p->discarding = 0;
	}
	room = POP3_CMD_LINE_MAX - p->len;
	n = len - i < room ? len - i : room;
	nl = memchr(buf + i, '\n', n);
	if (nl != NULL)
		n = (size_t)(nl - (buf + i)) + 1;
	memcpy(p->buf + p->len, buf + i, n);
	p->len += n;
	i += n;
	*consumed_r = i;
	if (nl == NULL) {
		if (p->len < POP3_CMD_LINE_MAX)
			return POP3_NEED_MORE;
		/* the line does not fit with its ending: one error, then skip it */
		p->len = 0;
		p->discarding = 1;
		p->error = "command line too long";
		return POP3_ERROR;
	}
	pop3_cmd_split(p, cmd);
	p->len = 0; /* cmd points into buf until the next call, which reuses it */
	return POP3_OK;
}

/* ---------------- dot-stuffing ---------------- */

/* Starts a body: the first byte is at a line start. */
void pop3_stuff_init(struct pop3_stuffer *s)
{
	s->at_line_start = 1;
}

/* Copies in to out doubling each line-initial dot; out holds 2 * len bytes. */
size_t pop3_stuff(struct pop3_stuffer *s, const char *in, size_t len, char *out)
{
	size_t o = 0;
	size_t i = 0;

	while (i < len) {
		const char *nl;
		size_t n;

		if (s->at_line_start && in[i] == '.')
			out[o++] = '.'; /* RFC 1939 section 3: byte-stuff the dot */
		nl = memchr(in + i, '\n', len - i);
		n = nl != NULL ? (size_t)(nl - (in + i)) + 1 : len - i;
		memcpy(out + o, in + i, n);
		o += n;
		i += n;
		s->at_line_start = nl != NULL;
	}
	return o;
}

/* Ends the body: CRLF if mid-line, then the "." line; out holds 5 bytes. */
size_t pop3_stuff_finish(struct pop3_stuffer *s, int crlf, char *out)
{
	size_t o = 0;

	if (!s->at_line_start) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	out[o++] = '.';
	if (crlf)
		out[o++] = '\r';
	out[o++] = '\n';
	s->at_line_start = 1;
	return o;
}
