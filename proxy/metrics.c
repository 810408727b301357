/*
 * metrics.c - the Prometheus endpoint (see metrics.h): a pure HTTP/1.x
 * request-head parser, and the endpoint on control.c's one-request
 * plumbing (bounded connections, deadlines, the lingering close).
 *
 * A connection: the request head is parsed as it arrives (the bytes are
 * not kept; METRICS_REQ_TIMEOUT_MS from accept, then a 408) -> routed ->
 * for /metrics, stats_collect counts the quarantine on the thread pool ->
 * the answer goes out with "Connection: close". Loop thread only.
 */
#include "proxy/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#include "proxy/control.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/stats.h"

/* ---------------- the request parser ---------------- */

/* tchar, RFC 9110 section 5.6.2 */
static int http_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

void http_req_init(struct http_req_parser *p)
{
	memset(p, 0, sizeof(*p));
	p->state = HTTP_ST_START;
}

static int http_fail(struct http_req_parser *p, uint64_t at, int status, const char *why,
                     size_t i, size_t *consumed_r)
{
	p->state = HTTP_ST_ERROR;
	p->status = status;
	p->error = why;
	p->pos = at;
	p->total = at + 1; /* the offending byte is consumed */
	*consumed_r = i + 1;
	return HTTP_ERROR;
}

/* The empty line ended the head: the checks that need all of it. */
static int http_done(struct http_req_parser *p, uint64_t at, size_t i, size_t *consumed_r)
{
	/* RFC 9112 section 3.2: HTTP/1.1 needs exactly one Host field */
	if (p->hosts > 1)
		return http_fail(p, at, 400, "more than one Host field", i, consumed_r);
	if (p->minor >= 1 && p->hosts == 0)
		return http_fail(p, at, 400, "no Host field", i, consumed_r);
	p->state = HTTP_ST_DONE;
	*consumed_r = i + 1;
	return HTTP_OK;
}

int http_req_feed(struct http_req_parser *p, const char *buf, size_t len,
                  size_t *consumed_r)
{
	static const char tpl[] = "HTTP/1.";

	if (p->state == HTTP_ST_DONE || p->state == HTTP_ST_ERROR) {
		*consumed_r = 0;
		return p->state == HTTP_ST_DONE ? HTTP_OK : HTTP_ERROR;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];
		uint64_t at = p->total;

		if (at >= HTTP_REQ_HEAD_MAX)
			return http_fail(p, at, 431, "request head too large", i,
			                 consumed_r);
		p->total++;
		switch (p->state) {
		case HTTP_ST_START:
			/* RFC 9112 section 2.2: empty lines before the request line */
			if (c == '\r') {
				p->state = HTTP_ST_START_CR;
			} else if (c == '\n') {
				/* skipped */
			} else if (http_tchar(c)) {
				p->method[p->method_len++] = (char)c;
				p->state = HTTP_ST_METHOD;
			} else {
				return http_fail(p, at, 400, "bad request line", i,
				                 consumed_r);
			}
			break;
		case HTTP_ST_START_CR:
		case HTTP_ST_CR:
		case HTTP_ST_END_CR:
			if (c != '\n')
				return http_fail(p, at, 400, "CR not followed by LF", i,
				                 consumed_r);
			if (p->state == HTTP_ST_END_CR)
				return http_done(p, at, i, consumed_r);
			p->state = p->state == HTTP_ST_START_CR ? HTTP_ST_START
			                                        : HTTP_ST_LINE_START;
			break;
		case HTTP_ST_METHOD:
			if (c == ' ') {
				p->method[p->method_len] = '\0';
				p->state = HTTP_ST_TARGET;
			} else if (!http_tchar(c)) {
				return http_fail(p, at, 400, "bad method", i, consumed_r);
			} else if (p->method_len + 1 >= HTTP_METHOD_MAX) {
				return http_fail(p, at, 501, "method too long", i,
				                 consumed_r);
			} else {
				p->method[p->method_len++] = (char)c;
			}
			break;
		case HTTP_ST_TARGET:
			if (c == ' ' && p->target_len > 0) {
				p->target[p->target_len] = '\0';
				p->state = HTTP_ST_VERSION;
			} else if (c <= ' ' || c >= 0x7f) {
				return http_fail(p, at, 400, "bad request-target", i,
				                 consumed_r);
			} else if (p->target_len + 1 >= HTTP_TARGET_MAX) {
				return http_fail(p, at, 414, "request-target too long", i,
				                 consumed_r);
			} else {
				p->target[p->target_len++] = (char)c;
			}
			break;
		case HTTP_ST_VERSION: {
			size_t v = p->version_len;
			int digit = c >= '0' && c <= '9';

			if (v == 8) {
				if (c == '\r')
					p->state = HTTP_ST_CR;
				else if (c == '\n')
					p->state = HTTP_ST_LINE_START;
				else
					return http_fail(p, at, 400, "bad HTTP version",
					                 i, consumed_r);
				break;
			}
			if (v == 5 && digit && c != '1')
				return http_fail(p, at, 505, "HTTP version not supported",
				                 i, consumed_r);
			if ((v == 7 && !digit) || (v < 7 && c != (unsigned char)tpl[v]))
				return http_fail(p, at, 400, "bad HTTP version", i,
				                 consumed_r);
			p->version[p->version_len++] = (char)c;
			if (p->version_len == 8)
				p->minor = c - '0';
			break;
		}
		case HTTP_ST_LINE_START:
			if (c == '\r') {
				p->state = HTTP_ST_END_CR;
			} else if (c == '\n') {
				return http_done(p, at, i, consumed_r);
			} else if (http_tchar(c)) {
				p->name[0] = (char)c;
				p->name_len = 1;
				p->state = HTTP_ST_NAME;
			} else {
				/* Security: RFC 9112 section 5.2, obsolete line folding
				 * is refused rather than guessed at */
				return http_fail(p, at, 400,
				                 c == ' ' || c == '\t'
				                     ? "folded field line"
				                     : "bad field name",
				                 i, consumed_r);
			}
			break;
		case HTTP_ST_NAME:
			if (c == ':') {
				if (p->name_len == 4 &&
				    strncasecmp(p->name, "host", 4) == 0)
					p->hosts++;
				p->state = HTTP_ST_VALUE;
			} else if (!http_tchar(c)) {
				/* RFC 9112 section 5.1: MUST be rejected */
				return http_fail(p, at, 400,
				                 c == ' ' || c == '\t'
				                     ? "whitespace before colon"
				                     : "bad field name",
				                 i, consumed_r);
			} else {
				if (p->name_len < HTTP_NAME_KEEP)
					p->name[p->name_len] = (char)c;
				p->name_len++;
			}
			break;
		case HTTP_ST_VALUE:
			if (c == '\r')
				p->state = HTTP_ST_CR;
			else if (c == '\n')
				p->state = HTTP_ST_LINE_START;
			else if ((c < ' ' && c != '\t') || c == 0x7f)
				return http_fail(p, at, 400,
				                 "control character in a field value", i,
				                 consumed_r);
			break;
		default:
			return http_fail(p, at, 500, "parser state", i, consumed_r);
		}
	}
	*consumed_r = len;
	return HTTP_NEED_MORE;
}

/* ---------------- the endpoint ---------------- */

struct mx_conn {
	struct ctl_conn c; /* first */
	struct http_req_parser p;
	struct stats_buf hdr, body;
	uv_buf_t b[2];
	int head; /* HEAD: the answer without its body */
};

/*
 * Sends a response: the status line and head fields, then the body (not
 * for HEAD). content_type NULL: a short text/plain body.
 */
static void mx_respond(struct mx_conn *m, int status, const char *reason,
                       const char *extra, const char *content_type)
{
	char date[64] = "";
	time_t now = time(NULL);
	struct tm tm;

	/* RFC 9110 section 6.6.1: Date, in IMF-fixdate (the C locale's names) */
	if (gmtime_r(&now, &tm) != NULL)
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	stats_buf_printf(&m->hdr,
	                 "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n"
	                 "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
	                 status, reason, date,
	                 content_type != NULL ? content_type
	                                      : "text/plain; charset=utf-8",
	                 m->body.len, extra != NULL ? extra : "");
	if (m->hdr.oom || m->body.oom) {
		ctl_conn_close(&m->c);
		return;
	}
	m->b[0] = uv_buf_init(m->hdr.data, (unsigned)m->hdr.len);
	m->b[1] = uv_buf_init(m->body.data, (unsigned)m->body.len);
	ctl_conn_send(&m->c, m->b, m->head || m->body.len == 0 ? 1 : 2);
}

static void mx_respond_text(struct mx_conn *m, int status, const char *reason,
                            const char *extra)
{
	stats_buf_printf(&m->body, "%d %s\n", status, reason);
	mx_respond(m, status, reason, extra, NULL);
}

static void mx_on_stats(void *arg, const struct stats_snap *snap)
{
	struct mx_conn *m = arg;

	if (!m->c.closing) {
		stats_render_prom(snap, &m->body);
		mx_respond(m, 200, "OK", NULL,
		           "text/plain; version=0.0.4; charset=utf-8");
	}
	ctl_conn_unhold(&m->c);
}

static const char *mx_reason(int status)
{
	switch (status) {
	case 400:
		return "Bad Request";
	case 414:
		return "URI Too Long";
	case 431:
		return "Request Header Fields Too Large";
	case 501:
		return "Not Implemented";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Internal Server Error";
	}
}

/* A whole request head: route it. */
static void mx_request(struct mx_conn *m)
{
	const char *t = m->p.target;
	int r;

	/* a query is ignored (Prometheus sends none, people with curl might) */
	if (strncmp(t, "/metrics", 8) != 0 || (t[8] != '\0' && t[8] != '?')) {
		mx_respond_text(m, 404, "Not Found", NULL);
		return;
	}
	m->head = strcmp(m->p.method, "HEAD") == 0;
	if (!m->head && strcmp(m->p.method, "GET") != 0) {
		mx_respond_text(m, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
		return;
	}
	ctl_conn_hold(&m->c);
	r = stats_collect(m->c.l->srv, mx_on_stats, m);
	if (r < 0) {
		ctl_conn_unhold(&m->c);
		mx_respond_text(m, 500, "Internal Server Error", NULL);
	}
}

static void mx_init(struct ctl_conn *c)
{
	http_req_init(&((struct mx_conn *)c)->p);
}

static void mx_data(struct ctl_conn *c, const char *buf, size_t n)
{
	struct mx_conn *m = (struct mx_conn *)c;
	size_t used = 0;
	int r = http_req_feed(&m->p, buf, n, &used);

	if (r == HTTP_NEED_MORE)
		return;
	/* one request per connection; what follows is read only while lingering */
	ctl_conn_stop_reading(c);
	if (r == HTTP_ERROR) {
		log_msg(LOG_LVL_DEBUG, NULL,
		        "metrics bad request status=%d error=\"%s\" pos=%llu",
		        m->p.status, m->p.error, (unsigned long long)m->p.pos);
		mx_respond_text(m, m->p.status, mx_reason(m->p.status), NULL);
		return;
	}
	mx_request(m);
}

/* A request too slow to arrive gets a 408 (RFC 9110 section 15.5.9). */
static void mx_timeout(struct ctl_conn *c)
{
	mx_respond_text((struct mx_conn *)c, 408, "Request Timeout", NULL);
}

static void mx_release(struct ctl_conn *c)
{
	struct mx_conn *m = (struct mx_conn *)c;

	stats_buf_free(&m->hdr);
	stats_buf_free(&m->body);
}

static const struct ctl_conn_ops mx_ops = {
    .name = "metrics",
    .size = sizeof(struct mx_conn),
    .timeout_ms = METRICS_REQ_TIMEOUT_MS,
    .init = mx_init,
    .data = mx_data,
    .timeout = mx_timeout,
    .release = mx_release,
};

int metrics_start(struct server *srv)
{
	const struct config *cfg = srv->cfg;
	struct sockaddr_storage ss;
	struct ctl_listener *l;
	int r;

	if (cfg->metrics_listen_host[0] == '\0')
		return 0;
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(cfg->metrics_listen_host, cfg->metrics_listen_port,
	                (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(cfg->metrics_listen_host, cfg->metrics_listen_port,
	                (struct sockaddr_in6 *)&ss) != 0) {
		log_msg(LOG_LVL_ERROR, NULL,
		        "metrics listen address is not an IP address: %s",
		        cfg->metrics_listen_host);
		return -1;
	}
	l = ctl_listener_new(srv, &mx_ops, METRICS_MAX_CONNS, 1);
	if (l == NULL)
		return -1;
	r = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&ss, 0);
	if (r == 0)
		r = ctl_listen(l, 64);
	if (r != 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot listen for metrics on %s:%u: %s",
		        cfg->metrics_listen_host, cfg->metrics_listen_port,
		        uv_strerror(r));
		ctl_listener_close(l);
		return -1;
	}
	srv->metrics = l;
	log_msg(LOG_LVL_INFO, NULL, "metrics listen=%s:%u path=/metrics",
	        cfg->metrics_listen_host, cfg->metrics_listen_port);
	return 0;
}

void metrics_stop(struct server *srv)
{
	ctl_listener_close(srv->metrics);
	srv->metrics = NULL;
}
