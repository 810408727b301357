/*
 * imap_session.h - the IMAP proxy session (RFC 3501, RFC 9051).
 */
#ifndef MAILMOAT_IMAP_SESSION_H
#define MAILMOAT_IMAP_SESSION_H

#include <uv.h>

#include "policy/config.h"

struct server;

/*
 * Accepts one connection waiting on listener, connects upstream and starts
 * relaying. Returns 0, or -1 when the session could not be created.
 */
int imap_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                        uv_stream_t *listener);

#endif
