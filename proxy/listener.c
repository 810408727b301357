/*
 * listener.c - listening sockets: bind, accept, the session cap.
 *
 * At the session cap a connection is left un-accepted: libuv then stops
 * polling that listening socket until uv_accept() is called (lsn_resume,
 * when a session ends), so the kernel's backlog holds the clients instead
 * of our memory. EMFILE is handled by libuv's reserve-descriptor trick.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "proxy/log.h"
#include "proxy/imap_session.h"
#include "proxy/pop3_session.h"
#include "proxy/relay.h"
#include "proxy/server.h"

void lsn_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(s4->sin_port));
	} else {
		snprintf(buf, len, "?");
	}
}

/* Accepts one waiting connection into a new session of the listener's protocol. */
static void lsn_accept_one(struct lsn *l)
{
	l->pending = 0;
	if (l->tls.passthrough)
		relay_session_accept(l->srv, l->lcfg, (uv_stream_t *)&l->tcp);
	else if (l->lcfg->protocol == CFG_PROTO_IMAP)
		imap_session_accept(l->srv, l->lcfg, (uv_stream_t *)&l->tcp);
	else
		pop3_session_accept(l->srv, l->lcfg, (uv_stream_t *)&l->tcp);
}

static void lsn_on_connection(uv_stream_t *server, int status)
{
	struct lsn *l = server->data;

	if (status < 0) {
		log_msg(LOG_LVL_WARN, NULL, "accept failed listen=%s:%u error=%s",
		        l->lcfg->listen_host, l->lcfg->listen_port, uv_strerror(status));
		return;
	}
	if (l->srv->stopping)
		return;
	if (l->srv->n_sessions >= l->srv->cfg->max_sessions) {
		if (!l->pending)
			log_msg(LOG_LVL_WARN, NULL,
			        "session cap reached max_sessions=%u: not accepting",
			        l->srv->cfg->max_sessions);
		l->pending = 1;
		return;
	}
	lsn_accept_one(l);
}

void lsn_resume(struct lsn *l)
{
	if (l->pending && !l->closed && !l->srv->stopping &&
	    l->srv->n_sessions < l->srv->cfg->max_sessions)
		lsn_accept_one(l);
}

int lsn_open(struct lsn *l, struct server *srv, const struct cfg_listener *lcfg)
{
	struct sockaddr_storage ss;
	int r;

	memset(l, 0, sizeof(*l));
	l->srv = srv;
	l->lcfg = lcfg;
	if (uv_ip4_addr(lcfg->listen_host, lcfg->listen_port,
	                (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(lcfg->listen_host, lcfg->listen_port,
	                (struct sockaddr_in6 *)&ss) != 0) {
		log_msg(LOG_LVL_ERROR, NULL, "listen address is not an IP address: %s",
		        lcfg->listen_host);
		return -1;
	}
	uv_tcp_init(srv->loop, &l->tcp);
	l->tcp.data = l;
	r = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&l->tcp, 128, lsn_on_connection);
	if (r != 0) {
		log_msg(LOG_LVL_ERROR, NULL, "cannot listen on %s:%u: %s",
		        lcfg->listen_host, lcfg->listen_port, uv_strerror(r));
		uv_close((uv_handle_t *)&l->tcp, NULL);
		l->closed = 1;
		return -1;
	}
	if (lcfg->upstream_port == 0)
		log_msg(LOG_LVL_INFO, NULL,
		        "listening protocol=%s listen=%s:%u upstream=transparent tls=%s "
		        "upstream_tls=%s",
		        cfg_protocol_name(lcfg->protocol), lcfg->listen_host,
		        lcfg->listen_port, lcfg->tls, lcfg->upstream_tls);
	else
		log_msg(LOG_LVL_INFO, NULL,
		        "listening protocol=%s listen=%s:%u upstream=%s:%u tls=%s "
		        "upstream_tls=%s",
		        cfg_protocol_name(lcfg->protocol), lcfg->listen_host,
		        lcfg->listen_port, lcfg->upstream_host, lcfg->upstream_port,
		        lcfg->tls, lcfg->upstream_tls);
	return 0;
}

void lsn_close(struct lsn *l)
{
	if (l->closed)
		return;
	l->closed = 1;
	uv_close((uv_handle_t *)&l->tcp, NULL);
}
