/*
 * conn.c - the protocol-independent half of a proxy session (see conn.h).
 *
 * Lifetime: refs counts the three handles (client, upstream, timer) and a
 * pending name lookup. conn_pair_close() closes the handles; libuv then
 * cancels pending writes (their callbacks run with UV_ECANCELED while the
 * memory is still valid) and the pending connect, and the last close or
 * lookup callback calls ops->freed. Nothing touches the pair after that.
 */
#include "proxy/conn.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/server.h"

struct conn_write_req {
	uv_write_t req;
	struct conn_pair *p;
	struct conn_leg *leg;
	size_t len;
	char data[];
};

uint64_t conn_now(const struct conn_pair *p)
{
	return uv_now(p->loop);
}

static void conn_release(struct conn_pair *p)
{
	if (--p->refs == 0)
		p->ops->freed(p);
}

static void conn_on_closed(uv_handle_t *h)
{
	conn_release(h->data);
}

static void conn_on_tick(uv_timer_t *t)
{
	struct conn_pair *p = t->data;

	if (p->closing)
		return;
	if (p->up_state < CONN_UP_CONNECTED && p->connect_timeout_ms != 0 &&
	    conn_now(p) - p->start_ms > p->connect_timeout_ms) {
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s connect timed out",
		        p->proto, p->upstream_name);
		p->up_state = CONN_UP_GONE;
		p->ops->connected(p, UV_ETIMEDOUT);
		return;
	}
	p->ops->tick(p);
}

void conn_pair_init(struct conn_pair *p, uv_loop_t *loop, const struct conn_ops *ops,
                    const char *sid, const char *proto, char *cbuf, size_t ccap,
                    char *ubuf, size_t ucap)
{
	p->loop = loop;
	p->ops = ops;
	p->sid = sid;
	p->proto = proto;
	uv_tcp_init(loop, &p->client.tcp);
	uv_tcp_init(loop, &p->upstream.tcp);
	uv_timer_init(loop, &p->timer);
	p->client.tcp.data = p->upstream.tcp.data = p->timer.data = p;
	p->gai.data = p->connreq.data = p;
	p->refs = 3;
	p->client.buf = cbuf;
	p->client.cap = ccap;
	p->upstream.buf = ubuf;
	p->upstream.cap = ucap;
	p->start_ms = p->client.last_ms = p->upstream.last_ms = uv_now(loop);
	uv_timer_start(&p->timer, conn_on_tick, 1000, 1000);
}

void conn_refuse(uv_stream_t *listener)
{
	uv_tcp_t *tmp = malloc(sizeof(*tmp));

	if (tmp == NULL)
		return;
	uv_tcp_init(listener->loop, tmp);
	if (uv_accept(listener, (uv_stream_t *)tmp) == 0)
		log_msg(LOG_LVL_ERROR, NULL, "out of memory: connection refused");
	uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
}

int conn_pair_accept(struct conn_pair *p, uv_stream_t *listener)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	int r = uv_accept(listener, (uv_stream_t *)&p->client.tcp);

	if (r < 0)
		return r;
	if (uv_tcp_getpeername(&p->client.tcp, (struct sockaddr *)&ss, &len) == 0)
		lsn_addr_str((struct sockaddr *)&ss, p->peer, sizeof(p->peer));
	/* whole responses leave at once: no 40 ms delayed-ACK stalls */
	uv_tcp_nodelay(&p->client.tcp, 1);
	return 0;
}

static void conn_on_connect(uv_connect_t *req, int status)
{
	struct conn_pair *p = req->data;

	if (p->closing || p->up_state == CONN_UP_GONE)
		return;
	if (status < 0) {
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s connect failed: %s",
		        p->proto, p->upstream_name, uv_strerror(status));
		p->up_state = CONN_UP_GONE;
		p->ops->connected(p, status);
		return;
	}
	p->up_state = CONN_UP_CONNECTED;
	p->upstream.last_ms = conn_now(p);
	uv_tcp_nodelay(&p->upstream.tcp, 1);
	p->ops->connected(p, 0);
}

static void conn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *ai)
{
	struct conn_pair *p = req->data;
	int r;

	if (status == UV_ECANCELED || p->closing || p->up_state == CONN_UP_GONE) {
		if (ai != NULL)
			uv_freeaddrinfo(ai);
		conn_release(p);
		return;
	}
	conn_release(p); /* the lookup is over; the handles still hold the pair */
	p->up_state = CONN_UP_CONNECTING;
	if (status < 0) {
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s resolve failed: %s",
		        p->proto, p->upstream_name, uv_strerror(status));
		conn_on_connect(&p->connreq, status);
		return;
	}
	r = uv_tcp_connect(&p->connreq, &p->upstream.tcp, ai->ai_addr, conn_on_connect);
	uv_freeaddrinfo(ai);
	if (r < 0)
		conn_on_connect(&p->connreq, r);
}

int conn_pair_connect(struct conn_pair *p, const char *host, uint16_t port,
                      unsigned timeout_s)
{
	struct addrinfo hints;
	char portstr[8];
	int r;

	snprintf(p->upstream_name, sizeof(p->upstream_name), "%s:%u", host, port);
	p->connect_timeout_ms = (uint64_t)timeout_s * 1000u;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(portstr, sizeof(portstr), "%u", port);
	p->up_state = CONN_UP_RESOLVING;
	p->refs++; /* the pending lookup keeps the pair alive */
	r = uv_getaddrinfo(p->loop, &p->gai, conn_on_resolved, host, portstr, &hints);
	if (r < 0) {
		p->refs--;
		p->up_state = CONN_UP_GONE;
	}
	return r;
}

static void conn_on_write(uv_write_t *req, int status)
{
	struct conn_write_req *w = (struct conn_write_req *)req;
	struct conn_pair *p = w->p;
	struct conn_leg *leg = w->leg;

	leg->wq -= w->len;
	free(w);
	if (p->closing)
		return;
	p->ops->written(p, leg, status);
}

int conn_write(struct conn_pair *p, struct conn_leg *leg, const char *data, size_t len)
{
	struct conn_write_req *w;
	uv_buf_t b;
	int r;

	if (len == 0)
		return 0;
	w = malloc(sizeof(*w) + len);
	if (w == NULL)
		return UV_ENOMEM;
	w->p = p;
	w->leg = leg;
	w->len = len;
	memcpy(w->data, data, len);
	b = uv_buf_init(w->data, (unsigned)len);
	r = uv_write(&w->req, (uv_stream_t *)&leg->tcp, &b, 1, conn_on_write);
	if (r < 0) {
		free(w);
		return r;
	}
	leg->wq += len;
	if (leg == &p->upstream)
		leg->last_ms = conn_now(p); /* the upstream owes us an answer from now */
	return 0;
}

void conn_consume(struct conn_leg *leg, size_t n)
{
	if (n == 0)
		return;
	memmove(leg->buf, leg->buf + n, leg->len - n);
	leg->len -= n;
}

static struct conn_leg *conn_leg_of(struct conn_pair *p, uv_handle_t *h)
{
	return h == (uv_handle_t *)&p->client.tcp ? &p->client : &p->upstream;
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn_leg *leg = conn_leg_of(h->data, h);

	(void)suggested;
	*buf = uv_buf_init(leg->buf + leg->len, (unsigned)(leg->cap - leg->len));
}

static void conn_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	struct conn_pair *p = st->data;
	struct conn_leg *leg = conn_leg_of(p, (uv_handle_t *)st);

	(void)buf;
	if (p->closing || n == 0)
		return;
	if (n > 0) {
		leg->len += (size_t)n;
		leg->last_ms = conn_now(p);
	} else {
		uv_read_stop(st);
		leg->reading = 0;
		if (n == UV_EOF)
			leg->eof = 1;
	}
	p->ops->read(p, leg, n);
}

static void conn_leg_reading(struct conn_leg *leg, int want)
{
	if (want == leg->reading)
		return;
	if (want)
		uv_read_start((uv_stream_t *)&leg->tcp, conn_alloc, conn_on_read);
	else
		uv_read_stop((uv_stream_t *)&leg->tcp);
	leg->reading = want;
}

void conn_update_reading(struct conn_pair *p, int client_ok, int upstream_ok)
{
	if (p->closing)
		return;
	conn_leg_reading(&p->client,
	                 client_ok && !p->client.eof && p->client.len < p->client.cap);
	conn_leg_reading(&p->upstream, upstream_ok && p->up_state == CONN_UP_CONNECTED &&
	                                   !p->upstream.eof &&
	                                   p->upstream.len < p->upstream.cap);
}

void conn_upstream_gone(struct conn_pair *p)
{
	p->up_state = CONN_UP_GONE;
	conn_leg_reading(&p->upstream, 0);
}

void conn_pair_close(struct conn_pair *p)
{
	if (p->closing)
		return;
	p->closing = 1;
	if (p->up_state == CONN_UP_RESOLVING)
		uv_cancel((uv_req_t *)&p->gai);
	uv_close((uv_handle_t *)&p->client.tcp, conn_on_closed);
	uv_close((uv_handle_t *)&p->upstream.tcp, conn_on_closed);
	uv_close((uv_handle_t *)&p->timer, conn_on_closed);
}
