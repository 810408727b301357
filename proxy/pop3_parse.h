/*
 * pop3_parse.h - pure, resumable POP3 parsers (RFC 1939, RFC 2449, RFC 5034).
 *
 * No I/O here. Each parser is fed whatever bytes arrived and returns at most
 * one event per call; the result is the same however the input is split,
 * one byte at a time included. Pointers handed out in events point either
 * into the caller's buffer or into the parser, and stay valid only until the
 * next call: copy what you keep.
 *
 * Three pieces:
 *  - the response parser (server -> proxy): a status line, then for a
 *    multi-line response the dot-unstuffed body and its terminator;
 *  - the command parser (client -> proxy): bounded lines split into a verb
 *    and its arguments;
 *  - the dot-stuffer, the inverse of the response parser's unstuffing, used
 *    to send captured or substituted bodies to the client.
 */
#ifndef MAILMOAT_POP3_PARSE_H
#define MAILMOAT_POP3_PARSE_H

#include <stddef.h>
#include <stdint.h>

enum pop3_res { POP3_NEED_MORE = 0, POP3_OK = 1, POP3_ERROR = -1 };

/* RFC 2449 section 4: a response line is at most 512 octets with its CRLF. */
#define POP3_STATUS_MAX 512

/* ---------------- response parser ---------------- */

enum pop3_ev_type {
	POP3_EV_NONE,
	POP3_EV_STATUS, /* the status line is complete */
	POP3_EV_DATA,   /* a chunk of the unstuffed multi-line body */
	POP3_EV_END,    /* the terminating "." line was read */
	POP3_EV_COUNT
};

enum pop3_status { POP3_ST_OK, POP3_ST_ERR, POP3_ST_CONT, POP3_ST_COUNT };

struct pop3_resp_event {
	enum pop3_ev_type type;
	/* STATUS: the kind of status line, and whether a multi-line body follows */
	enum pop3_status status;
	int multiline;
	/*
	 * STATUS: the whole line as received, line ending included.
	 * DATA: unstuffed body bytes (line endings as received: CRLF or bare LF),
	 * in the caller's buffer or, for the CR of a ".\r" not followed by LF,
	 * a static one-byte string.
	 */
	const char *data;
	size_t len;
	/* END: 1 when the terminator line ended in CRLF, 0 for a bare LF */
	int crlf_term;
};

enum pop3_resp_state {
	POP3_RS_IDLE,       /* no response expected: any byte is an error */
	POP3_RS_STATUS,     /* reading the status line */
	POP3_RS_LINE_START, /* body: at the start of a line */
	POP3_RS_DOT,        /* body: read a '.' at line start */
	POP3_RS_DOT_CR,     /* body: read ".\r" at line start */
	POP3_RS_MID_LINE,   /* body: inside a line */
	POP3_RS_COUNT
};

struct pop3_resp_parser {
	enum pop3_resp_state state;
	int multiline_on_ok;   /* set by pop3_resp_expect */
	uint64_t max_body;     /* bound on the unstuffed body, 0 = none */
	uint64_t body_len;     /* unstuffed body bytes so far */
	uint64_t noncanonical; /* body lines that began with '.' not followed by '.' */
	size_t line_len;       /* status line bytes held in line[] */
	char line[POP3_STATUS_MAX];
	const char *error; /* static text, set on POP3_ERROR */
	/*
	 * Bytes consumed since pop3_resp_init. On POP3_ERROR: the offset (same
	 * origin) of the byte that made the input invalid, for the log line.
	 */
	uint64_t pos;
};

/* Initialises p in the IDLE state. max_body bounds a multi-line body (0 = no bound). */
void pop3_resp_init(struct pop3_resp_parser *p, uint64_t max_body);

/*
 * Announces the next response. With multiline_on_ok a "+OK" status line is
 * followed by a dot-terminated body (RETR, TOP, LIST/UIDL without argument,
 * CAPA); "-ERR" and "+ " (SASL continuation) responses are single lines.
 * Only valid in the IDLE state (after END, a single-line STATUS, or init).
 */
void pop3_resp_expect(struct pop3_resp_parser *p, int multiline_on_ok);

/*
 * Feeds bytes. Returns POP3_OK with *ev filled and *consumed_r bytes used;
 * POP3_NEED_MORE when all len bytes were used without completing an event
 * (*consumed_r == len); POP3_ERROR on invalid input (status line too long or
 * not starting with '+'/'-', body over max_body, bytes while IDLE), with
 * pop3_resp_error() describing it. After ERROR the parser must be reset with
 * pop3_resp_init. When a single-line STATUS or an END is returned the parser
 * is IDLE again. A DATA event of a body chunk may point into buf.
 */
int pop3_resp_feed(struct pop3_resp_parser *p, const char *buf, size_t len,
                   size_t *consumed_r, struct pop3_resp_event *ev);

/* The reason for the last POP3_ERROR, a static string. */
const char *pop3_resp_error(const struct pop3_resp_parser *p);

/* ---------------- command parser ---------------- */

/*
 * RFC 2449 section 4 limits a command line to 255 octets; SASL responses
 * (RFC 5034) are longer, so lines up to this bound are accepted.
 */
#define POP3_CMD_LINE_MAX 8192
#define POP3_VERB_MAX 16

struct pop3_cmd {
	/* upper-cased keyword; empty when the first word is longer than
	 * POP3_VERB_MAX - 1 or the line is empty */
	char verb[POP3_VERB_MAX];
	const char *args; /* after the verb and one space, line ending removed */
	size_t args_len;
	const char *line; /* the whole line as received, line ending included */
	size_t line_len;
};

struct pop3_cmd_parser {
	size_t len;     /* bytes held in buf */
	int discarding; /* an overlong line is being skipped to its LF */
	const char *error;
	char buf[POP3_CMD_LINE_MAX];
};

void pop3_cmd_init(struct pop3_cmd_parser *p);

/*
 * Feeds client bytes. Returns POP3_OK with *cmd filled (pointing into the
 * parser) when a whole line ending in LF was read; POP3_NEED_MORE when all
 * bytes were consumed without completing a line; POP3_ERROR once for each
 * line longer than POP3_CMD_LINE_MAX (the line is skipped through its LF,
 * the parser stays usable). *consumed_r is always set.
 */
int pop3_cmd_feed(struct pop3_cmd_parser *p, const char *buf, size_t len,
                  size_t *consumed_r, struct pop3_cmd *cmd);

/* ---------------- dot-stuffing ---------------- */

struct pop3_stuffer {
	int at_line_start; /* 1 at the start of the body and after each LF */
};

void pop3_stuff_init(struct pop3_stuffer *s);

/*
 * Dot-stuffs len bytes of body into out, which must hold at least
 * 2 * len bytes. Returns the number of bytes written. Lines keep their own
 * endings; a '.' at the start of a line is doubled (RFC 1939 section 3).
 */
size_t pop3_stuff(struct pop3_stuffer *s, const char *in, size_t len, char *out);

/*
 * Writes the terminator into out (at least 5 bytes): a CRLF first when the
 * body did not end at a line start (whatever crlf says: RFC 1939 lines end
 * in CRLF), then ".\r\n" (or ".\n" when crlf is 0). Returns the number of
 * bytes written; s is back at a line start.
 */
size_t pop3_stuff_finish(struct pop3_stuffer *s, int crlf, char *out);

#endif
