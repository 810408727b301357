/*
 * metrics.h - the Prometheus endpoint (metrics.listen: HOST:PORT) and its
 * HTTP/1.x request parser.
 *
 * `GET /metrics` (or HEAD) answers the counters in the Prometheus text
 * format 0.0.4 (stats_render_prom); any other path is 404, any other
 * method 405. One request per connection: the answer says
 * "Connection: close". Requests are bounded (HTTP_REQ_HEAD_MAX bytes of
 * request line and header fields, METRICS_REQ_TIMEOUT_MS to send them),
 * and at most METRICS_MAX_CONNS connections are served at once.
 *
 * Security: there is no authentication. Bind it to a loopback or
 * management address only.
 */
#ifndef MAILMOAT_METRICS_H
#define MAILMOAT_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct server;

#define METRICS_MAX_CONNS 16
#define METRICS_REQ_TIMEOUT_MS 5000 /* from accept to the end of the request */

/* ---------------- the request parser (pure, resumable) ---------------- */

/* RFC 9112: request line and header fields, line ends and the empty line included */
#define HTTP_REQ_HEAD_MAX 8192
#define HTTP_METHOD_MAX 16   /* method bytes + NUL */
#define HTTP_TARGET_MAX 1024 /* request-target bytes + NUL */
#define HTTP_NAME_KEEP 16    /* field-name bytes kept to recognise Host */

enum http_res { HTTP_NEED_MORE = 0, HTTP_OK = 1, HTTP_ERROR = -1 };

enum http_state {
	HTTP_ST_START,      /* before the request line (empty lines are skipped) */
	HTTP_ST_START_CR,   /* a CR of an empty line before the request line */
	HTTP_ST_METHOD,     /* in the method token */
	HTTP_ST_TARGET,     /* in the request-target */
	HTTP_ST_VERSION,    /* in "HTTP/1.x" */
	HTTP_ST_CR,         /* after a line's CR: only LF may follow */
	HTTP_ST_LINE_START, /* at the start of a header field line */
	HTTP_ST_NAME,       /* in a field name */
	HTTP_ST_VALUE,      /* in a field value */
	HTTP_ST_END_CR,     /* the CR of the empty line that ends the head */
	HTTP_ST_DONE,       /* the head is complete */
	HTTP_ST_ERROR,
	HTTP_ST_COUNT
};

struct http_req_parser {
	enum http_state state;
	char method[HTTP_METHOD_MAX]; /* NUL-terminated */
	size_t method_len;
	char target[HTTP_TARGET_MAX]; /* NUL-terminated */
	size_t target_len;
	char version[9]; /* "HTTP/1.1" */
	size_t version_len;
	int minor; /* HTTP/1.minor */
	char name[HTTP_NAME_KEEP];
	size_t name_len;   /* may pass HTTP_NAME_KEEP: the rest is not kept */
	unsigned hosts;    /* Host fields seen */
	uint64_t total;    /* bytes consumed since init */
	const char *error; /* static text, set on HTTP_ERROR */
	int status;        /* the response status that error deserves (400, 414...) */
	uint64_t pos;      /* on HTTP_ERROR: offset of the offending byte since init */
};

void http_req_init(struct http_req_parser *p);

/*
 * Feeds bytes of a request head (RFC 9112 sections 2-5). HTTP_OK: the head
 * is complete (method, target, minor, hosts are set; *consumed_r bytes
 * were used, the final LF included, and what follows -- a body, a next
 * request -- is left). HTTP_NEED_MORE: all len bytes were used.
 * HTTP_ERROR: the input is not a request this server takes; error, status
 * and pos say why, *consumed_r counts the bytes up to the offending one,
 * included. Lines may end in CRLF or a bare LF; a CR must be followed by
 * LF. Rejected: a method that is not a token or longer than
 * HTTP_METHOD_MAX - 1 (501), a target of other than visible ASCII or
 * longer than HTTP_TARGET_MAX - 1 (414), a version other than HTTP/1.x
 * (505 for another major version), whitespace before a field's colon or at
 * a line's start (obsolete folding), control characters in a value, a head
 * over HTTP_REQ_HEAD_MAX (431), HTTP/1.1 without exactly one Host field.
 * After OK or ERROR the parser stays there: init it for the next request.
 */
int http_req_feed(struct http_req_parser *p, const char *buf, size_t len,
                  size_t *consumed_r);

/* ---------------- the endpoint ---------------- */

/*
 * Listens on metrics.listen when it is set. Returns 0, or -1 (logged) when
 * the address cannot be bound: a configured endpoint that cannot run stops
 * the start, as a listener would.
 */
int metrics_start(struct server *srv);

/* Stops listening and closes every metrics connection. */
void metrics_stop(struct server *srv);

#endif
