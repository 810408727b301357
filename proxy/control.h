/*
 * control.h - the local control socket and the `mailmoat status` command.
 *
 * The daemon listens on a Unix stream socket (control.socket, default
 * /run/mailmoat/control.sock, mode 0660, owned by the daemon's user): a
 * client sends one request line, gets one response, and the daemon closes
 * the connection. Requests:
 *
 *   status        the human-readable summary (stats_render_text)
 *   status json   the same figures as one JSON object
 *
 * An unknown or malformed request gets "error: REASON\n". Anyone who can
 * connect (the socket's owner and group, and root) may ask: it reveals
 * counters, never mail or credentials.
 */
#ifndef MAILMOAT_CONTROL_H
#define MAILMOAT_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct server;

/* ---------------- the request line reader (pure, resumable) ---------------- */

/* A request line is at most this many bytes, its LF (and CR) included. */
#define CTL_LINE_MAX 256

enum ctl_res { CTL_NEED_MORE = 0, CTL_OK = 1, CTL_ERROR = -1 };

struct ctl_line_reader {
	char line[CTL_LINE_MAX]; /* the line read so far; NUL-terminated after CTL_OK */
	size_t len;
	int cr;            /* the last byte was a CR (only LF may follow) */
	const char *error; /* static text, set on CTL_ERROR */
	uint64_t pos; /* bytes consumed since init; on ERROR: the bad byte's offset */
};

void ctl_line_init(struct ctl_line_reader *r);

/*
 * Feeds bytes. CTL_OK: a line ended (LF or CRLF), r->line holds it without
 * its ending, *consumed_r bytes were used (the LF included; what follows
 * is not consumed). CTL_NEED_MORE: every byte was used. CTL_ERROR: a
 * control character (a CR not followed by LF, NUL, ...) or a line longer
 * than CTL_LINE_MAX; *consumed_r counts the bytes up to the bad one,
 * included. Start again with ctl_line_init after OK or ERROR.
 */
int ctl_line_feed(struct ctl_line_reader *r, const char *buf, size_t len,
                  size_t *consumed_r);

/* ---------------- one-request endpoints (control socket, metrics) ---------------- */

/*
 * The plumbing both local endpoints share: a listening stream (Unix or
 * TCP) that serves at most max_conns connections at once -- the next ones
 * wait un-accepted in the kernel's backlog, as listener.c does with
 * sessions -- each of which reads one request, sends one answer, shuts its
 * side down and lingers until the client closes (so request bytes never
 * read do not turn the close into a reset that destroys the answer in
 * flight). Every phase has a deadline. Loop thread only.
 *
 * Lifetimes: a connection counts its two handles, a pending shutdown and
 * each ctl_conn_hold in refs, and is freed at zero; a listener counts its
 * handle and its connections, so it may be closed while work held by a
 * connection is still on the thread pool.
 */
#define CTL_WRITE_TIMEOUT_MS 10000 /* to work out the answer, then to send it */
#define CTL_LINGER_MS 2000         /* for the client to close after the answer */

struct ctl_conn;
struct ctl_listener;

struct ctl_conn_ops {
	const char *name;    /* for log lines: "control", "metrics" */
	size_t size;         /* per connection: a struct that begins with a ctl_conn */
	uint64_t timeout_ms; /* from accept to the end of the request */
	/* the connection was accepted (the struct is zeroed): set it up */
	void (*init)(struct ctl_conn *c);
	/* request bytes (n > 0), while the request is being read */
	void (*data)(struct ctl_conn *c, const char *buf, size_t n);
	/* the request did not come in time (reading has stopped); NULL: close */
	void (*timeout)(struct ctl_conn *c);
	/* the connection is being freed: release what the outer struct holds */
	void (*release)(struct ctl_conn *c);
};

union ctl_stream {
	uv_handle_t handle;
	uv_stream_t stream;
	uv_pipe_t pipe;
	uv_tcp_t tcp;
};

struct ctl_conn {
	union ctl_stream h;
	uv_timer_t timer;
	uv_write_t wreq;
	uv_shutdown_t sreq;
	struct ctl_listener *l;
	struct ctl_conn *next, *prev;
	int refs;
	int closing;
	int reading; /* the request is still being read */
	char in[1024];
};

struct ctl_listener {
	union ctl_stream h; /* initialised by ctl_listener_new; the caller binds it */
	struct server *srv;
	const struct ctl_conn_ops *ops;
	unsigned max_conns;
	struct ctl_conn *conns;
	unsigned n_conns;
	int refs;
	int pending; /* a connection waits to be accepted (cap reached) */
	int closed;
};

/*
 * A listener for ops with its handle initialised (a TCP one when tcp,
 * else a Unix one), to be bound by the caller, then ctl_listen. NULL when
 * out of memory. End it with ctl_listener_close, whatever happened.
 */
struct ctl_listener *ctl_listener_new(struct server *srv, const struct ctl_conn_ops *ops,
                                      unsigned max_conns, int tcp);

/* Starts accepting. Returns 0 or a libuv error. */
int ctl_listen(struct ctl_listener *l, int backlog);

/* Closes the listener and every connection of it; frees it when all are gone. */
void ctl_listener_close(struct ctl_listener *l);

/* The request is whole: reading stops, the answer's deadline starts. */
void ctl_conn_stop_reading(struct ctl_conn *c);

/*
 * Writes the answer (the buffers stay the caller's until the connection's
 * release), then shuts down and lingers. Reading stops if it had not.
 */
void ctl_conn_send(struct ctl_conn *c, const uv_buf_t *bufs, unsigned n);

/* Closes now (idempotent). */
void ctl_conn_close(struct ctl_conn *c);

/* Keeps c allocated across asynchronous work (c->closing may become set). */
void ctl_conn_hold(struct ctl_conn *c);
void ctl_conn_unhold(struct ctl_conn *c);

/* ---------------- the daemon side ---------------- */

/*
 * Creates the control socket named by the configuration (before the
 * privileges are dropped: the socket is then given to the `user:`). It is
 * optional: when it cannot be made (its directory is missing, the path is
 * too long, another live daemon answers on it, a file that is not a
 * socket is in the way) a warning says why and the daemon runs without it.
 * A stale socket of an earlier run is replaced. Returns 0.
 */
int control_start(struct server *srv);

/* Closes the socket and every control connection; removes the socket file. */
void control_stop(struct server *srv);

/* ---------------- the client side ---------------- */

/*
 * `mailmoat status --config FILE [--json]`: asks the daemon of FILE over
 * its control socket and prints the answer. Returns the exit code: 0, 1
 * when the daemon cannot be reached or answers an error, 2 on bad usage.
 */
int control_status_main(int argc, char **argv);

#endif
