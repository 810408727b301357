/*
 * relay.c - transparent TLS the proxy does not terminate (see relay.h).
 *
 * The session is a plain conn_pair (no TLS of ours). The client's first
 * bytes go through the ClientHello parser only to name the server in the
 * log; in relay mode they are forwarded as they are, in refuse mode
 * dropped and answered with an access_denied alert. Relaying is bounded:
 * a leg is read only while the other leg's write queue is under
 * RELAY_HIGH, so a slow side holds the fast one back instead of our
 * memory.
 */
#include "proxy/relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/stats.h"
#include "proxy/tls_hello.h"

#define RELAY_BUF 16384
#define RELAY_HIGH (256 * 1024)

struct relay_session {
	struct session_base base; /* first: the registry's view */
	struct conn_pair c;
	struct tls_hello *hello; /* until the ClientHello is read */
	int relay;               /* unscanned_tls: relay (1) or refuse (0) */
	int refused;             /* the alert is queued: close once it is out */
	int closing;
	int stop_when_idle;
	uint64_t up_bytes, down_bytes;
	const char *proto;
	char reason[96];
};

/* TLS alert record: fatal (2), access_denied (49) (RFC 8446 section 6). */
static const char rl_alert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31};

static struct relay_session *rl_of(struct conn_pair *p)
{
	return (struct relay_session *)((char *)p - offsetof(struct relay_session, c));
}

static void rl_close(struct relay_session *s, const char *reason)
{
	if (s->closing)
		return;
	s->closing = 1;
	log_msg(LOG_LVL_INFO, s->base.sid,
	        "%s tls close server=%s up_bytes=%llu down_bytes=%llu reason=\"%s\"",
	        s->proto, s->c.upstream_name, (unsigned long long)s->up_bytes,
	        (unsigned long long)s->down_bytes, reason);
	conn_pair_close(&s->c);
}

static void rl_on_freed(struct conn_pair *p)
{
	struct relay_session *s = rl_of(p);

	free(s->hello);
	stats_session_close(STATS_RELAY);
	server_session_remove(s->base.srv, &s->base);
	free(s);
}

static void rl_force_close(struct session_base *sb, const char *reason)
{
	rl_close((struct relay_session *)sb, reason);
}

/* Copies what one leg read to the other, while the other's queue has room. */
static void rl_move(struct relay_session *s, struct conn_leg *from, struct conn_leg *to,
                    uint64_t *count)
{
	if (from->len == 0 || to->wq >= RELAY_HIGH)
		return;
	if (conn_write(&s->c, to, from->buf, from->len) < 0) {
		rl_close(s, "out of memory");
		return;
	}
	*count += from->len;
	conn_consume(from, from->len);
}

/* Moves bytes, closes when a side is done, decides which legs to read. */
static void rl_pump(struct relay_session *s)
{
	struct conn_pair *p = &s->c;
	int idle = conn_leg_idle(&p->client) && conn_leg_idle(&p->upstream);

	if (s->closing)
		return;
	if (!s->relay) {
		if (s->refused && idle)
			rl_close(s, "refused: no intercept_ca (unscanned_tls: refuse)");
		else if (p->client.eof)
			rl_close(s, "client closed");
		else
			conn_update_reading(p, s->hello != NULL, 0);
		return;
	}
	if (p->up_state == CONN_UP_CONNECTED)
		rl_move(s, &p->client, &p->upstream, &s->up_bytes);
	rl_move(s, &p->upstream, &p->client, &s->down_bytes);
	if (s->closing)
		return;
	idle = conn_leg_idle(&p->client) && conn_leg_idle(&p->upstream);
	if (p->client.eof && p->client.len == 0 && idle) {
		rl_close(s, "client closed");
		return;
	}
	if (p->upstream.eof && p->upstream.len == 0 && idle) {
		rl_close(s, "server closed");
		return;
	}
	if (s->stop_when_idle && idle && p->client.len == 0 && p->upstream.len == 0 &&
	    conn_now(p) - p->client.last_ms > 1000 &&
	    conn_now(p) - p->upstream.last_ms > 1000) {
		rl_close(s, "shutdown");
		return;
	}
	conn_update_reading(p, p->upstream.wq < RELAY_HIGH, p->client.wq < RELAY_HIGH);
}

static void rl_shutdown(struct session_base *sb)
{
	struct relay_session *s = (struct relay_session *)sb;

	s->stop_when_idle = 1;
	if (!s->relay)
		rl_close(s, "shutdown");
	else
		rl_pump(s);
}

/* The ClientHello, for the log line that says which server this was. */
static void rl_hello(struct relay_session *s, const char *data, size_t n)
{
	enum tls_hello_result r = tls_hello_feed(s->hello, data, n);
	const char *action = s->relay ? "relayed-unscanned" : "refused";
	char sni[TLS_HELLO_NAME_MAX * 4 + 1];

	if (r == TLS_HELLO_NEED_MORE)
		return;
	if (r == TLS_HELLO_OK) {
		log_escape_token(sni, sizeof(sni), s->hello->sni, strlen(s->hello->sni));
		log_msg(s->relay ? LOG_LVL_WARN : LOG_LVL_INFO, s->base.sid,
		        "%s tls server=%s sni=%s client=%s action=%s", s->proto,
		        s->c.upstream_name, sni[0] ? sni : "-", s->c.peer, action);
		if (!s->relay) {
			if (conn_write(&s->c, &s->c.client, rl_alert, sizeof(rl_alert)) <
			    0)
				rl_close(s, "out of memory");
			s->refused = 1;
		}
	} else {
		log_msg(LOG_LVL_WARN, s->base.sid,
		        "%s tls server=%s client=%s: no TLS ClientHello (%s) action=%s",
		        s->proto, s->c.upstream_name, s->c.peer,
		        s->hello->error ? s->hello->error : "bad input", action);
		if (!s->relay)
			rl_close(s, "refused: not TLS");
	}
	free(s->hello);
	s->hello = NULL;
}

static void rl_on_read(struct conn_pair *p, struct conn_leg *leg, ssize_t n)
{
	struct relay_session *s = rl_of(p);

	if (n < 0 && n != UV_EOF) {
		snprintf(s->reason, sizeof(s->reason), "%s read: %s",
		         leg == &p->client ? "client" : "server", uv_strerror((int)n));
		rl_close(s, s->reason);
		return;
	}
	if (n > 0 && leg == &p->client && s->hello != NULL) {
		rl_hello(s, leg->buf + leg->len - (size_t)n, (size_t)n);
		if (!s->relay)
			conn_consume(leg, leg->len); /* nothing goes anywhere */
	}
	rl_pump(s);
}

static void rl_on_written(struct conn_pair *p, struct conn_leg *leg, int status)
{
	struct relay_session *s = rl_of(p);

	if (status < 0) {
		snprintf(s->reason, sizeof(s->reason), "%s write: %s",
		         leg == &p->client ? "client" : "server", uv_strerror(status));
		rl_close(s, s->reason);
		return;
	}
	rl_pump(s);
}

static void rl_on_connected(struct conn_pair *p, int status)
{
	struct relay_session *s = rl_of(p);

	if (status < 0) {
		rl_close(s, "server unreachable");
		return;
	}
	rl_pump(s);
}

static void rl_on_tick(struct conn_pair *p)
{
	struct relay_session *s = rl_of(p);
	uint64_t now = conn_now(p), last = p->client.last_ms;
	uint64_t idle_ms = (uint64_t)s->base.cfg->timeout_client_idle * 1000u;

	if (p->upstream.last_ms > last)
		last = p->upstream.last_ms;
	if (s->hello != NULL && now - p->client.last_ms > p->connect_timeout_ms)
		rl_close(s, "no ClientHello in time");
	else if (now - last > idle_ms)
		rl_close(s, "idle time-out");
	else if (s->stop_when_idle)
		rl_pump(s);
}

static void rl_on_tls_done(struct conn_pair *p, struct conn_leg *leg, int status)
{
	(void)leg;
	(void)status;
	rl_close(rl_of(p), "unexpected TLS event"); /* relays never start TLS */
}

static const struct conn_ops rl_conn_ops = {
    .connected = rl_on_connected,
    .read = rl_on_read,
    .written = rl_on_written,
    .tls_done = rl_on_tls_done,
    .tick = rl_on_tick,
    .freed = rl_on_freed,
};

int relay_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                         uv_stream_t *listener)
{
	struct relay_session *s = calloc(1, sizeof(*s));
	const struct lsn *l = listener->data;
	struct sockaddr_storage dst;
	int r;

	if (s == NULL) {
		conn_refuse(listener);
		return -1;
	}
	s->base.lcfg = lcfg;
	s->base.force_close = rl_force_close;
	s->base.shutdown = rl_shutdown;
	s->proto = cfg_protocol_name(lcfg->protocol);
	s->relay = l->tls.relay;
	server_session_add(srv, &s->base);
	stats_session_open(STATS_RELAY);
	conn_pair_init(&s->c, srv->loop, &rl_conn_ops, s->base.sid, s->proto, NULL,
	               RELAY_BUF, NULL, RELAY_BUF);
	s->c.up_state = CONN_UP_GONE; /* until a connect is under way */
	s->c.connect_timeout_ms = (uint64_t)srv->cfg->timeout_connect * 1000u;
	r = conn_pair_accept(&s->c, listener);
	if (r < 0) {
		log_msg(LOG_LVL_WARN, s->base.sid, "accept failed: %s", uv_strerror(r));
		rl_close(s, "accept failed");
		return -1;
	}
	s->hello = malloc(sizeof(*s->hello));
	if (s->hello == NULL) {
		rl_close(s, "out of memory");
		return -1;
	}
	tls_hello_init(s->hello);
	r = s->relay ? conn_pair_connect_original(&s->c, srv->cfg->timeout_connect)
	             : conn_pair_find_original(&s->c, &dst);
	log_msg(LOG_LVL_INFO, s->base.sid, "%s tls connect client=%s server=%s", s->proto,
	        s->c.peer, s->c.upstream_name);
	if (r < 0) {
		rl_close(s, "no original destination");
		return 0;
	}
	rl_pump(s);
	return 0;
}
