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

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "policy/config.h"

enum conn_tls_mode {
	CONN_TLS_NONE,
	CONN_TLS_IMPLICIT,
	CONN_TLS_STARTTLS,
	CONN_TLS_REQUIRED
};

/* The TLS settings of one listener, made once at start-up. */
struct conn_tls_cfg {
	enum conn_tls_mode client_mode;   /* tls: */
	SSL_CTX *server;                  /* the proxy's certificate towards clients */
	enum conn_tls_mode upstream_mode; /* upstream_tls: */
	SSL_CTX *upstream;                /* verification towards the upstream */
	char name[CFG_HOST_MAX];          /* verified and sent as SNI */
	int verify;                       /* upstream_verify */
	int has_pin;
	unsigned char pin[32]; /* SHA-256 of the upstream's SubjectPublicKeyInfo */
	/*
	 * Transparent listeners with tls: implicit (redirected 993/995). With
	 * intercept_ca: ica mints the client's certificates, server has none
	 * of its own, and the upstream is verified by the client's SNI. Without
	 * it the TLS is not terminated: passthrough, and relay says whether it
	 * is relayed unread (1) or refused (0); both modes are then NONE.
	 */
	struct intercept_ca *ica;
	int passthrough;
	int relay;
};

/*
 * Builds t from a listener's configuration: contexts, TLS 1.2 or later, a
 * modern cipher list, the certificate and key, the CA (or the system
 * store), the pin. Returns 0, or -1 with the reason logged.
 */
int conn_tls_setup(struct conn_tls_cfg *t, const struct cfg_listener *lc);

/* Frees what conn_tls_setup made. */
void conn_tls_cleanup(struct conn_tls_cfg *t);

enum conn_up_state {
	CONN_UP_RESOLVING,
	CONN_UP_CONNECTING,
	CONN_UP_CONNECTED,
	CONN_UP_GONE, /* failed, closed, or given up */
	CONN_UP_STATE_COUNT
};

/*
 * One side: a socket, its input buffer, its write queue. The input buffer
 * is the session's own (fixed), or with own_buf one conn allocates when
 * bytes arrive and frees once it has been empty for a second (an idle
 * session then holds no input buffer): buf is NULL while len is 0.
 */
struct conn_leg {
	uv_tcp_t tcp;
	char *buf; /* input buffer */
	size_t cap;
	size_t len;  /* bytes held in buf */
	int own_buf; /* buf is allocated on demand by conn (see above) */
	int reading;
	int eof;          /* the peer closed its sending side */
	size_t wq;        /* bytes queued for writing, not yet written */
	uint64_t last_ms; /* last byte received (upstream: or last byte sent) */
	/* TLS over memory BIOs: sockets carry ciphertext, buf gets plaintext */
	SSL *ssl;
	BIO *rbio, *wbio;
	int tls_up;     /* handshake done */
	int starttls;   /* TLS began inside the protocol (STLS / STARTTLS) */
	int delivering; /* decrypting into buf (re-entrancy guard) */
	char *cbuf;     /* ciphertext read buffer */
	char *pend;     /* plaintext written before the handshake finished */
	size_t pend_len, pend_cap;
	/* intercepting (client leg): the ClientHello read before any TLS
	   exists, replayed into the SSL once the upstream is verified */
	struct tls_hello *hello;
};

struct conn_pair;
struct intercept_ca;
struct tls_hello;

struct conn_ops {
	/* the upstream connection is up (status 0) or failed (status < 0, logged) */
	void (*connected)(struct conn_pair *p, int status);
	/* n > 0 bytes were appended to leg->buf; n < 0: a libuv error or UV_EOF */
	void (*read)(struct conn_pair *p, struct conn_leg *leg, ssize_t n);
	/* a write on leg completed (status < 0: it failed) */
	void (*written)(struct conn_pair *p, struct conn_leg *leg, int status);
	/* a STARTTLS handshake on leg ended (status < 0: it failed, logged) */
	void (*tls_done)(struct conn_pair *p, struct conn_leg *leg, int status);
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
	const struct conn_tls_cfg *tls; /* the listener's TLS settings, or NULL */
	const char *sid;                /* the session id, for log lines */
	const char *proto;              /* "pop3", "imap": for log lines */
	int refs;                       /* open handles and pending requests */
	int closing;
	enum conn_up_state up_state;
	uint64_t start_ms;
	uint64_t connect_timeout_ms;
	char peer[64];           /* the client's address */
	char upstream_name[300]; /* "host:port" */
	/* interception: the name the client asked for (SNI, "" = none), whether
	   the upstream's TCP connection is up, waiting for that name */
	char sni[256];
	int intercept;
	int hello_done;
	int up_tcp;
};

/*
 * Initialises the pair's handles (the pair then needs conn_pair_close to
 * end) with the session's input buffers for each side: cbuf / ubuf of ccap
 * / ucap bytes, or NULL for a buffer of that capacity that conn allocates
 * on demand and frees when it has been empty and quiet for a second.
 */
void conn_pair_init(struct conn_pair *p, uv_loop_t *loop, const struct conn_ops *ops,
                    const char *sid, const char *proto, char *cbuf, size_t ccap,
                    char *ubuf, size_t ucap);

/*
 * The listener's TLS settings for this pair (before accept/connect): with
 * tls: implicit the client leg starts TLS on accept; with upstream_tls:
 * implicit ops->connected comes once the verified TLS session is up.
 */
void conn_pair_set_tls(struct conn_pair *p, const struct conn_tls_cfg *tls);

/*
 * Accepts the connection waiting on listener and closes it at once: for
 * when no session can be made (out of memory). libuv needs the pending
 * connection taken before it polls the listener again.
 */
void conn_refuse(uv_stream_t *listener);

/*
 * Both legs of a new session: the listener's TLS settings, the accept
 * (returns its error, the session must then close), and the upstream
 * connection (fixed or transparent) started, its first result in
 * *connect_r (< 0: ops->connected will not come; report it yourself).
 * Logs "<proto> connect client=... upstream=...".
 */
int conn_pair_open(struct conn_pair *p, uv_stream_t *listener,
                   const struct cfg_listener *lc, unsigned timeout_s, int *connect_r);

/* Accepts the connection waiting on listener as the client leg. Returns 0 or < 0. */
int conn_pair_accept(struct conn_pair *p, uv_stream_t *listener);

/*
 * Resolves host and connects the upstream leg; ops->connected reports the
 * outcome, UV_ETIMEDOUT after timeout_s seconds. Returns 0 (the callback
 * will come) or < 0 (it will not).
 */
int conn_pair_connect(struct conn_pair *p, const char *host, uint16_t port,
                      unsigned timeout_s);

/*
 * STARTTLS (RFC 2595): begins TLS on leg now, as the server towards the
 * client or as a verifying client towards the upstream, with the
 * listener's settings. Whatever plaintext is still buffered on the leg is
 * discarded (it could be injected, CVE-2011-0411). ops->tls_done reports
 * the outcome. Returns 0 or < 0.
 */
int conn_start_tls(struct conn_pair *p, struct conn_leg *leg);

/*
 * The upstream may be given client commands: connected, and when the
 * listener wants STARTTLS upstream, with that TLS session up (not one
 * client byte goes up before it).
 */
int conn_upstream_ready(const struct conn_pair *p);

/*
 * Writes a string literal (its length counted by the compiler, never by
 * hand).
 */
#define conn_write_lit(p, leg, lit) conn_write((p), (leg), (lit), sizeof(lit) - 1)

/* True when leg carries TLS (up, being negotiated, or about to be: a
   ClientHello being read for interception). */
int conn_leg_tls(const struct conn_leg *leg);

/* The firewall mark of the proxy's own upstream connections ("MM"). */
#define CONN_FWMARK 0x4d4d

/*
 * Transparent mode: connects the upstream leg to the client connection's
 * original destination (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST after a
 * REDIRECT). A connection that was not redirected is refused (it would
 * loop into the proxy). ops->connected reports the outcome when 0 is
 * returned.
 */
int conn_pair_connect_original(struct conn_pair *p, unsigned timeout_s);

/*
 * The client connection's original destination into *dst_r and
 * p->upstream_name. Returns 0, or < 0 (logged) when there is none or the
 * connection was not redirected.
 */
int conn_pair_find_original(struct conn_pair *p, struct sockaddr_storage *dst_r);

/*
 * Nothing of ours waits to reach the peer of leg: no queued write and no
 * plaintext held for a TLS handshake still under way.
 */
int conn_leg_idle(const struct conn_leg *leg);

/* Queues a copy of len bytes on leg. Returns 0 or a libuv error (< 0). */
int conn_write(struct conn_pair *p, struct conn_leg *leg, const char *data, size_t len);

/*
 * A large buffer (an input buffer, a segmenter) that goes back to the
 * system when freed: mapped pages of its own, never heap memory that
 * would stay resident between other sessions' small allocations. NULL
 * when out of memory. Under AddressSanitizer plain malloc, so overflows
 * are caught. conn_buf_free takes the size given to conn_buf_alloc; NULL
 * is ignored.
 */
void *conn_buf_alloc(size_t size);
void conn_buf_free(void *buf, size_t size);

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
