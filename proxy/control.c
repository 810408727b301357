/*
 * control.c - the control socket (see control.h): its request line reader,
 * the one-request endpoint plumbing it shares with the metrics endpoint,
 * the daemon's control socket, and the `mailmoat status` client.
 *
 * An endpoint connection lives through: reading the request (bounded, a
 * deadline from accept) -> working out the answer (here stats_collect
 * counts the quarantine on the thread pool; CTL_WRITE_TIMEOUT_MS) ->
 * writing it (CTL_WRITE_TIMEOUT_MS) -> our side shut down, lingering
 * (CTL_LINGER_MS) until the client closes -> closed. Everything but the
 * client runs on the loop thread.
 */
#include "proxy/control.h"

#include <errno.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "policy/config.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/stats.h"

#define CTL_MAX_CONNS 16
#define CTL_TIMEOUT_MS 10000
#define CTL_RESPONSE_MAX (1u << 20) /* what the client accepts */

/* ---------------- the request line reader ---------------- */

void ctl_line_init(struct ctl_line_reader *r)
{
	memset(r, 0, sizeof(*r));
}

int ctl_line_feed(struct ctl_line_reader *r, const char *buf, size_t len,
                  size_t *consumed_r)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];
		const char *bad = NULL;

		if (c == '\n') {
			r->line[r->len] = '\0';
			r->cr = 0;
			r->pos += i + 1;
			*consumed_r = i + 1;
			return CTL_OK;
		}
		/* Security: a bare CR or any other control byte ends the talk. */
		if (r->cr)
			bad = "CR not followed by LF";
		else if ((c < 0x20 && c != '\r') || c == 0x7f)
			bad = "control character";
		else if (c != '\r' && r->len + 2 >= CTL_LINE_MAX)
			bad = "line too long"; /* the line, its CR and LF fit */
		if (bad != NULL) {
			r->error = bad;
			r->pos += i;
			*consumed_r = i + 1;
			return CTL_ERROR;
		}
		if (c == '\r')
			r->cr = 1;
		else
			r->line[r->len++] = (char)c;
	}
	r->pos += len;
	*consumed_r = len;
	return CTL_NEED_MORE;
}

/* ---------------- one-request endpoints ---------------- */

static void ctl_listener_unref(struct ctl_listener *l)
{
	if (--l->refs == 0)
		free(l);
}

static void ctl_accept(struct ctl_listener *l);

void ctl_conn_hold(struct ctl_conn *c)
{
	c->refs++;
}

void ctl_conn_unhold(struct ctl_conn *c)
{
	struct ctl_listener *l = c->l;

	if (--c->refs > 0)
		return;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		l->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	l->n_conns--;
	l->ops->release(c);
	free(c);
	if (l->pending && !l->closed)
		ctl_accept(l);
	ctl_listener_unref(l);
}

static void ctl_on_closed(uv_handle_t *h)
{
	ctl_conn_unhold(h->data);
}

void ctl_conn_close(struct ctl_conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	c->reading = 0;
	uv_close(&c->h.handle, ctl_on_closed);
	uv_close((uv_handle_t *)&c->timer, ctl_on_closed);
}

static void ctl_on_timer(uv_timer_t *t)
{
	struct ctl_conn *c = t->data;

	if (c->reading && c->l->ops->timeout != NULL) {
		ctl_conn_stop_reading(c);
		c->l->ops->timeout(c);
		return;
	}
	ctl_conn_close(c);
}

static void ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct ctl_conn *c = h->data;

	(void)suggested;
	*buf = uv_buf_init(c->in, sizeof(c->in));
}

/* The request's bytes while reading; after the answer, dropped until EOF. */
static void ctl_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	struct ctl_conn *c = st->data;

	if (c->closing || n == 0)
		return;
	if (n < 0) {
		ctl_conn_close(c); /* the client is gone, or done lingering */
		return;
	}
	if (c->reading)
		c->l->ops->data(c, buf->base, (size_t)n);
}

void ctl_conn_stop_reading(struct ctl_conn *c)
{
	if (!c->reading)
		return;
	c->reading = 0;
	uv_read_stop(&c->h.stream);
	uv_timer_start(&c->timer, ctl_on_timer, CTL_WRITE_TIMEOUT_MS, 0);
}

static void ctl_on_shutdown(uv_shutdown_t *req, int status)
{
	struct ctl_conn *c = req->data;

	if (!c->closing) {
		if (status < 0 || uv_read_start(&c->h.stream, ctl_alloc, ctl_on_read) < 0)
			ctl_conn_close(c);
		else
			uv_timer_start(&c->timer, ctl_on_timer, CTL_LINGER_MS, 0);
	}
	ctl_conn_unhold(c);
}

static void ctl_on_written(uv_write_t *req, int status)
{
	struct ctl_conn *c = req->data;

	if (c->closing)
		return;
	c->sreq.data = c;
	if (status < 0 || uv_shutdown(&c->sreq, &c->h.stream, ctl_on_shutdown) < 0) {
		ctl_conn_close(c);
		return;
	}
	ctl_conn_hold(c);
}

void ctl_conn_send(struct ctl_conn *c, const uv_buf_t *bufs, unsigned n)
{
	if (c->closing)
		return;
	ctl_conn_stop_reading(c);
	uv_timer_start(&c->timer, ctl_on_timer, CTL_WRITE_TIMEOUT_MS, 0);
	c->wreq.data = c;
	if (uv_write(&c->wreq, &c->h.stream, bufs, n, ctl_on_written) < 0)
		ctl_conn_close(c);
}

/* Accepts one waiting connection. */
static void ctl_accept(struct ctl_listener *l)
{
	struct ctl_conn *c = calloc(1, l->ops->size);
	uv_loop_t *loop = l->srv->loop;

	l->pending = 0;
	if (c == NULL) {
		/* left in the backlog; tried again when a connection ends */
		log_msg(LOG_LVL_WARN, NULL, "%s: out of memory, a connection waits",
		        l->ops->name);
		l->pending = 1;
		return;
	}
	c->l = l;
	if (l->h.handle.type == UV_TCP)
		uv_tcp_init(loop, &c->h.tcp);
	else
		uv_pipe_init(loop, &c->h.pipe, 0);
	uv_timer_init(loop, &c->timer);
	c->h.handle.data = c->timer.data = c;
	c->refs = 2;
	c->reading = 1;
	c->next = l->conns;
	if (l->conns != NULL)
		l->conns->prev = c;
	l->conns = c;
	l->n_conns++;
	l->refs++;
	l->ops->init(c);
	if (uv_accept(&l->h.stream, &c->h.stream) < 0) {
		ctl_conn_close(c);
		return;
	}
	uv_timer_start(&c->timer, ctl_on_timer, l->ops->timeout_ms, 0);
	uv_read_start(&c->h.stream, ctl_alloc, ctl_on_read);
}

static void ctl_on_connection(uv_stream_t *st, int status)
{
	struct ctl_listener *l = st->data;

	if (status < 0) {
		log_msg(LOG_LVL_WARN, NULL, "%s accept failed: %s", l->ops->name,
		        uv_strerror(status));
		return;
	}
	if (l->closed)
		return;
	if (l->n_conns >= l->max_conns) {
		l->pending = 1;
		return;
	}
	ctl_accept(l);
}

struct ctl_listener *ctl_listener_new(struct server *srv, const struct ctl_conn_ops *ops,
                                      unsigned max_conns, int tcp)
{
	struct ctl_listener *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	l->srv = srv;
	l->ops = ops;
	l->max_conns = max_conns;
	l->refs = 1;
	if (tcp)
		uv_tcp_init(srv->loop, &l->h.tcp);
	else
		uv_pipe_init(srv->loop, &l->h.pipe, 0);
	l->h.handle.data = l;
	return l;
}

int ctl_listen(struct ctl_listener *l, int backlog)
{
	return uv_listen(&l->h.stream, backlog, ctl_on_connection);
}

static void ctl_on_listener_closed(uv_handle_t *h)
{
	ctl_listener_unref(h->data);
}

void ctl_listener_close(struct ctl_listener *l)
{
	if (l == NULL || l->closed)
		return;
	l->closed = 1;
	for (struct ctl_conn *c = l->conns; c != NULL; c = c->next)
		ctl_conn_close(c);
	/* a bound Unix socket's file goes with it (libuv unlinks it) */
	uv_close(&l->h.handle, ctl_on_listener_closed);
}

/* ---------------- the control socket ---------------- */

struct ctl_req {
	struct ctl_conn c; /* first */
	struct ctl_line_reader rd;
	struct stats_buf out;
	uv_buf_t b;
	int json;
};

/* Sends what is in r->out. */
static void ctl_send(struct ctl_req *r)
{
	if (r->out.oom || r->out.len == 0) {
		ctl_conn_close(&r->c);
		return;
	}
	r->b = uv_buf_init(r->out.data, (unsigned)r->out.len);
	ctl_conn_send(&r->c, &r->b, 1);
}

static void ctl_reply_error(struct ctl_req *r, const char *why)
{
	stats_buf_printf(&r->out, "error: %s\n", why);
	ctl_send(r);
}

static void ctl_on_stats(void *arg, const struct stats_snap *snap)
{
	struct ctl_req *r = arg;

	if (!r->c.closing) {
		if (r->json)
			stats_render_json(snap, &r->out);
		else
			stats_render_text(snap, &r->out);
		ctl_send(r);
	}
	ctl_conn_unhold(&r->c);
}

static void ctl_cmd_status(struct ctl_req *r, const char *args)
{
	int e;

	if (strcmp(args, "json") == 0) {
		r->json = 1;
	} else if (args[0] != '\0') {
		ctl_reply_error(r, "usage: status [json]");
		return;
	}
	ctl_conn_hold(&r->c);
	e = stats_collect(r->c.l->srv, ctl_on_stats, r);
	if (e < 0) {
		/* reply before dropping the hold: r stays valid while it is used */
		ctl_reply_error(r, uv_strerror(e));
		ctl_conn_unhold(&r->c);
	}
}

/* The requests, by their first word. */
static const struct ctl_cmd {
	const char *verb;
	void (*run)(struct ctl_req *r, const char *args);
} ctl_cmds[] = {
    {"status", ctl_cmd_status},
};

static void ctl_dispatch(struct ctl_req *r)
{
	char *line = r->rd.line;
	char *sp = strchr(line, ' ');
	const char *args = "";
	char esc[64];

	if (sp != NULL) {
		*sp = '\0';
		args = sp + 1;
	}
	log_msg(LOG_LVL_DEBUG, NULL, "control request=%s",
	        log_escape_token(esc, sizeof(esc), line, strlen(line)));
	for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++) {
		if (strcmp(line, ctl_cmds[i].verb) == 0) {
			ctl_cmds[i].run(r, args);
			return;
		}
	}
	ctl_reply_error(r, "unknown request");
}

static void ctl_req_init(struct ctl_conn *c)
{
	ctl_line_init(&((struct ctl_req *)c)->rd);
}

static void ctl_req_data(struct ctl_conn *c, const char *buf, size_t n)
{
	struct ctl_req *r = (struct ctl_req *)c;
	size_t used = 0;
	int res = ctl_line_feed(&r->rd, buf, n, &used);

	if (res == CTL_NEED_MORE)
		return;
	/* one request per connection: whatever follows it is not read */
	ctl_conn_stop_reading(c);
	if (res == CTL_ERROR)
		ctl_reply_error(r, r->rd.error);
	else
		ctl_dispatch(r);
}

static void ctl_req_release(struct ctl_conn *c)
{
	stats_buf_free(&((struct ctl_req *)c)->out);
}

static const struct ctl_conn_ops ctl_req_ops = {
    .name = "control",
    .size = sizeof(struct ctl_req),
    .timeout_ms = CTL_TIMEOUT_MS,
    .init = ctl_req_init,
    .data = ctl_req_data,
    .timeout = NULL, /* a client that says nothing is simply closed */
    .release = ctl_req_release,
};

/*
 * True when something accepts connections on the socket at path: a
 * non-blocking connect either succeeds, or is refused when the socket is
 * stale (its daemon is gone); EAGAIN means a full backlog, i.e. alive.
 */
static int ctl_socket_alive(const char *path)
{
	struct sockaddr_un sa;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int alive;

	if (fd < 0)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	alive = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN;
	close(fd);
	return alive;
}

/* The socket belongs to the user the daemon will become. */
static void ctl_chown(const char *path, const struct config *cfg)
{
	struct passwd *pw;

	if (cfg->run_as[0] == '\0' || geteuid() != 0)
		return;
	pw = getpwnam(cfg->run_as);
	if (pw == NULL) /* server.c reports it and stops */
		return;
	if (chown(path, pw->pw_uid, pw->pw_gid) < 0)
		log_msg(LOG_LVL_WARN, NULL, "cannot chown control socket %s: %s", path,
		        strerror(errno));
}

int control_start(struct server *srv)
{
	const char *path = srv->cfg->control_socket;
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct ctl_listener *l;
	struct stat sb;
	int r;

	if (path[0] == '\0')
		return 0;
	if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		log_msg(LOG_LVL_WARN, NULL,
		        "control socket disabled: path longer than %zu bytes: %s",
		        sizeof(((struct sockaddr_un *)0)->sun_path) - 1, path);
		return 0;
	}
	/* libuv reports a missing directory as "permission denied": say it here */
	snprintf(dir, sizeof(dir), "%s", path);
	if (stat(dirname(dir), &sb) < 0) {
		log_msg(LOG_LVL_WARN, NULL, "control socket disabled: directory %s: %s",
		        dir, strerror(errno));
		return 0;
	}
	if (lstat(path, &sb) == 0) {
		/* Security: only ever remove a socket, and only a dead one. */
		if (!S_ISSOCK(sb.st_mode)) {
			log_msg(LOG_LVL_WARN, NULL,
			        "control socket disabled: %s exists and is not a socket",
			        path);
			return 0;
		}
		if (ctl_socket_alive(path)) {
			log_msg(LOG_LVL_WARN, NULL,
			        "control socket disabled: another process answers on %s",
			        path);
			return 0;
		}
		unlink(path);
	}
	l = ctl_listener_new(srv, &ctl_req_ops, CTL_MAX_CONNS, 0);
	if (l == NULL)
		return 0;
	r = uv_pipe_bind(&l->h.pipe, path);
	if (r == 0)
		r = ctl_listen(l, CTL_MAX_CONNS);
	/* Security: the owner and its group may ask, no one else */
	if (r == 0 && chmod(path, 0660) < 0)
		r = -errno;
	if (r != 0) {
		log_msg(LOG_LVL_WARN, NULL, "control socket disabled: %s: %s", path,
		        uv_strerror(r));
		ctl_listener_close(l);
		return 0;
	}
	ctl_chown(path, srv->cfg);
	srv->control = l;
	log_msg(LOG_LVL_INFO, NULL, "control socket=%s", path);
	return 0;
}

void control_stop(struct server *srv)
{
	ctl_listener_close(srv->control);
	srv->control = NULL;
}

/* ---------------- the client side ---------------- */

static int ctl_usage(void)
{
	fprintf(stderr, "usage: mailmoat status --config FILE [--json]\n");
	return 2;
}

/* Sends the request to the socket at path and copies the answer to stdout. */
static int ctl_ask(const char *path, const char *request)
{
	struct sockaddr_un sa;
	struct timeval tv = {.tv_sec = 30};
	char *resp = NULL;
	size_t len = 0;
	int fd, rc = 1;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "mailmoat: control socket path too long: %s\n", path);
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("mailmoat: socket");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr,
		        "mailmoat: cannot reach the daemon at %s: %s (is it running?)\n",
		        path, strerror(errno));
		close(fd);
		return 1;
	}
	if (send(fd, request, strlen(request), MSG_NOSIGNAL) !=
	    (ssize_t)strlen(request)) {
		fprintf(stderr, "mailmoat: cannot send to %s: %s\n", path,
		        strerror(errno));
		close(fd);
		return 1;
	}
	resp = malloc(CTL_RESPONSE_MAX);
	while (resp != NULL && len < CTL_RESPONSE_MAX) {
		ssize_t n = recv(fd, resp + len, CTL_RESPONSE_MAX - len, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "mailmoat: reading from %s: %s\n", path,
			        strerror(errno));
			len = 0;
			break;
		}
		if (n == 0) {
			rc = 0;
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	if (rc == 0 && len == 0) {
		fprintf(stderr, "mailmoat: the daemon closed %s without an answer\n",
		        path);
		rc = 1;
	} else if (rc == 0 && len >= 7 && memcmp(resp, "error: ", 7) == 0) {
		fprintf(stderr, "mailmoat: %.*s", (int)len, resp);
		rc = 1;
	} else if (rc == 0) {
		fwrite(resp, 1, len, stdout);
	}
	free(resp);
	return rc;
}

int control_status_main(int argc, char **argv)
{
	const char *path = NULL;
	struct config *cfg = NULL;
	int json = 0, rc;

	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			path = argv[++i];
		else if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else
			return ctl_usage();
	}
	if (path == NULL)
		return ctl_usage();
	if (config_load(path, &cfg, stderr) < 0)
		return 1;
	if (cfg->control_socket[0] == '\0') {
		fprintf(stderr, "mailmoat: %s: control.socket is off\n", path);
		config_free(&cfg);
		return 1;
	}
	rc = ctl_ask(cfg->control_socket, json ? "status json\n" : "status\n");
	config_free(&cfg);
	return rc;
}
