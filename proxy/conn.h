/*
 * conn.h - the two TCP legs of a proxy session and everything about them
 * that does not depend on the protocol: accepting the client, resolving and
 * connecting the upstream with a time-out, reading into the session's own
 * input buffers (paused while a buffer is full), queued writes with their
 * byte counts, a one-second tick, and the close sequence that frees the
 * session only after the last handle and request are gone.
 *
 * A session embeds a struct conn_pair and gives it a table of callbacks;
 * the callbacks receive the pair, and the session finds itself with
 * container_of-style arithmetic. TLS (memory BIOs) will live here too, so
 * sessions keep seeing plaintext bytes.
 */
#ifndef MAILMOAT_CONN_H
#define MAILMOAT_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum conn_up_state {
	CONN_UP_RESOLVING,
	CONN_UP_CONNECTING,
	CONN_UP_CONNECTED,
	CONN_UP_GONE, /* failed, closed, or given up */
	CONN_UP_STATE_COUNT
};

/* One side: a socket, the session's input buffer for it, its write queue. */
struct conn_leg {
	uv_tcp_t tcp;
	char *buf; /* input buffer (the session's memory) */
	size_t cap;
	size_t len; /* bytes held in buf */
	int reading;
	int eof;          /* the peer closed its sending side */
	size_t wq;        /* bytes queued for writing, not yet written */
	uint64_t last_ms; /* last byte received (upstream: or last byte sent) */
};

struct conn_pair;

struct conn_ops {
	/* the upstream connection is up (status 0) or failed (status < 0, logged) */
	void (*connected)(struct conn_pair *p, int status);
	/* n > 0 bytes were appended to leg->buf; n < 0: a libuv error or UV_EOF */
	void (*read)(struct conn_pair *p, struct conn_leg *leg, ssize_t n);
	/* a write on leg completed (status < 0: it failed) */
	void (*written)(struct conn_pair *p, struct conn_leg *leg, int status);
	/* once a second while open */
	void (*tick)(struct conn_pair *p);
	/* every handle and request is closed: the session may be freed now */
	void (*freed)(struct conn_pair *p);
};

struct conn_pair {
	struct conn_leg client;
	struct conn_leg upstream;
	uv_timer_t timer;
	uv_getaddrinfo_t gai;
	uv_connect_t connreq;
	uv_loop_t *loop;
	const struct conn_ops *ops;
	const char *sid;   /* the session id, for log lines */
	const char *proto; /* "pop3", "imap": for log lines */
	int refs;          /* open handles and pending requests */
	int closing;
	enum conn_up_state up_state;
	uint64_t start_ms;
	uint64_t connect_timeout_ms;
	char peer[64];           /* the client's address */
	char upstream_name[300]; /* "host:port" */
};

/*
 * Initialises the pair's handles (the pair then needs conn_pair_close to
 * end) with the session's input buffers for each side.
 */
void conn_pair_init(struct conn_pair *p, uv_loop_t *loop, const struct conn_ops *ops,
                    const char *sid, const char *proto, char *cbuf, size_t ccap,
                    char *ubuf, size_t ucap);

/*
 * Accepts the connection waiting on listener and closes it at once: for
 * when no session can be made (out of memory). libuv needs the pending
 * connection taken before it polls the listener again.
 */
void conn_refuse(uv_stream_t *listener);

/* Accepts the connection waiting on listener as the client leg. Returns 0 or < 0. */
int conn_pair_accept(struct conn_pair *p, uv_stream_t *listener);

/*
 * Resolves host and connects the upstream leg; ops->connected reports the
 * outcome, UV_ETIMEDOUT after timeout_s seconds. Returns 0 (the callback
 * will come) or < 0 (it will not).
 */
int conn_pair_connect(struct conn_pair *p, const char *host, uint16_t port,
                      unsigned timeout_s);

/* Queues a copy of len bytes on leg. Returns 0 or a libuv error (< 0). */
int conn_write(struct conn_pair *p, struct conn_leg *leg, const char *data, size_t len);

/* Drops the first n bytes of leg's input buffer. */
void conn_consume(struct conn_leg *leg, size_t n);

/*
 * Reads each leg while the session allows it (client_ok / upstream_ok) and
 * its buffer has room; the upstream only once connected and not at EOF.
 */
void conn_update_reading(struct conn_pair *p, int client_ok, int upstream_ok);

/* Stops reading the upstream for good (it failed or is being dropped). */
void conn_upstream_gone(struct conn_pair *p);

/* Closes everything; ops->freed runs after the last close. Idempotent. */
void conn_pair_close(struct conn_pair *p);

/* The loop's idea of now, in milliseconds. */
uint64_t conn_now(const struct conn_pair *p);

#endif
