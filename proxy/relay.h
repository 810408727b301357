/*
 * relay.h - transparent TLS connections the proxy does not terminate
 * (a transparent listener with tls: implicit and no intercept_ca): read
 * the ClientHello for the log (which server, which name), then either
 * refuse (a TLS access_denied alert; unscanned_tls: refuse, the default)
 * or relay the bytes both ways unread (unscanned_tls: relay).
 */
#ifndef MAILMOAT_RELAY_H
#define MAILMOAT_RELAY_H

#include <uv.h>

#include "policy/config.h"

struct server;

/* Accepts the connection waiting on listener. Returns 0 or -1 (logged). */
int relay_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                         uv_stream_t *listener);

#endif
