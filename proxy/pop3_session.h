/*
 * pop3_session.h - the POP3 proxy session (RFC 1939, 2449, 5034).
 */
#ifndef MAILMOAT_POP3_SESSION_H
#define MAILMOAT_POP3_SESSION_H

#include <uv.h>

#include "policy/config.h"

struct server;

/*
 * Accepts one connection waiting on listener (the caller knows one is
 * there), connects upstream and starts relaying. Returns 0, or -1 when the
 * session could not be created (the connection is then refused).
 */
int pop3_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                        uv_stream_t *listener);

#endif
