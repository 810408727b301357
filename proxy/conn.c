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

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy/intercept.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/stats.h"
#include "proxy/tls_hello.h"

struct conn_write_req {
	uv_write_t req;
	struct conn_pair *p;
	struct conn_leg *leg;
	size_t len;
	char data[];
};

#define CONN_CBUF 16384
#define CONN_TRIM_MS 1000 /* an empty input buffer quiet this long is freed */

static void conn_on_write(uv_write_t *req, int status);
static void conn_tls_progress(struct conn_pair *p, struct conn_leg *leg);
static int conn_raw_write(struct conn_pair *p, struct conn_leg *leg, const char *data,
                          size_t len);
static void conn_up_fail(struct conn_pair *p, int err);
static void conn_intercept_step(struct conn_pair *p);

#if defined(__SANITIZE_ADDRESS__)
#define CONN_BUF_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CONN_BUF_MALLOC 1
#endif
#endif

void *conn_buf_alloc(size_t size)
{
#ifdef CONN_BUF_MALLOC
	return malloc(size);
#else
	void *b;

	/* MAP_ANONYMOUS takes fd -1 (mmap(2)); cppcheck's posix.cfg wants >= 0 */
	/* cppcheck-suppress invalidFunctionArg */
	b = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b == MAP_FAILED)
		return NULL;
	return b;
#endif
}

void conn_buf_free(void *buf, size_t size)
{
	if (buf == NULL)
		return;
#ifdef CONN_BUF_MALLOC
	(void)size;
	free(buf);
#else
	munmap(buf, size);
#endif
}

/* Makes sure an on-demand input buffer exists. Returns 0 or UV_ENOBUFS. */
static int conn_leg_buf(struct conn_leg *leg)
{
	if (leg->buf == NULL && leg->own_buf)
		leg->buf = conn_buf_alloc(leg->cap);
	return leg->buf != NULL ? 0 : UV_ENOBUFS;
}

/* Frees a leg's on-demand input buffer (a caller's buffer is not the leg's). */
static void conn_leg_buf_drop(struct conn_leg *leg)
{
	if (leg->own_buf && leg->buf != NULL) {
		conn_buf_free(leg->buf, leg->cap);
		leg->buf = NULL;
	}
}

/*
 * Frees what an idle leg does not need: its on-demand input buffer once
 * empty and quiet for CONN_TRIM_MS, and the ciphertext read buffer after
 * the handshake (both come back with the next bytes).
 */
static void conn_leg_trim(struct conn_pair *p, struct conn_leg *leg)
{
	if (leg->delivering || conn_now(p) - leg->last_ms < CONN_TRIM_MS)
		return;
	if (leg->len == 0)
		conn_leg_buf_drop(leg);
	if (leg->cbuf != NULL && leg->tls_up && leg->hello == NULL) {
		free(leg->cbuf);
		leg->cbuf = NULL;
	}
}

/* ------------------------------------------------------------------ */
/* TLS settings                                                        */

static enum conn_tls_mode conn_tls_mode(const char *name)
{
	if (strcmp(name, "implicit") == 0)
		return CONN_TLS_IMPLICIT;
	if (strcmp(name, "starttls") == 0)
		return CONN_TLS_STARTTLS;
	if (strcmp(name, "required") == 0)
		return CONN_TLS_REQUIRED;
	return CONN_TLS_NONE;
}

static void conn_tls_log_errors(const char *what)
{
	unsigned long e;
	char buf[256];

	while ((e = ERR_get_error()) != 0) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_msg(LOG_LVL_ERROR, NULL, "%s: %s", what, buf);
	}
}

/* TLS 1.2 and later; for 1.2 only forward-secret AEAD suites. */
static SSL_CTX *conn_tls_ctx(int server)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL");
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	/* an idle connection keeps no record buffers (about 34 KiB each) */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return ctx;
}

/*
 * A transparent listener with tls: implicit: interception with the local
 * CA (client context without a certificate of its own, the upstream
 * verified per session by the client's SNI), or TLS left untouched.
 */
static int conn_tls_setup_transparent(struct conn_tls_cfg *t,
                                      const struct cfg_listener *lc)
{
	char err[512];

	if (lc->intercept_ca_certificate[0] == '\0') {
		t->passthrough = 1;
		t->relay = strcmp(lc->unscanned_tls, "relay") == 0;
		t->client_mode = t->upstream_mode = CONN_TLS_NONE;
		log_msg(t->relay ? LOG_LVL_WARN : LOG_LVL_INFO, NULL,
		        "listener %s:%u: no intercept_ca: TLS connections are %s",
		        lc->listen_host, lc->listen_port,
		        t->relay ? "RELAYED UNSCANNED (unscanned_tls: relay)"
		                 : "refused (unscanned_tls: refuse)");
		return 0;
	}
	t->ica = intercept_ca_load(lc->intercept_ca_certificate, lc->intercept_ca_key,
	                           err, sizeof(err));
	if (t->ica == NULL) {
		log_msg(LOG_LVL_ERROR, NULL, "listener %s:%u: %s", lc->listen_host,
		        lc->listen_port, err);
		return -1;
	}
	/* leaves of a CA outside its validity fail in every client: say so now */
	if (X509_cmp_current_time(X509_get0_notAfter(intercept_ca_cert(t->ica))) <= 0 ||
	    X509_cmp_current_time(X509_get0_notBefore(intercept_ca_cert(t->ica))) >= 0) {
		log_msg(LOG_LVL_ERROR, NULL,
		        "listener %s:%u: intercept_ca %s is expired or not yet valid",
		        lc->listen_host, lc->listen_port, lc->intercept_ca_certificate);
		return -1;
	}
	t->server = conn_tls_ctx(1);
	log_msg(LOG_LVL_WARN, NULL,
	        "listener %s:%u: TLS INTERCEPTED with the local CA %s: clients "
	        "must trust it; servers are verified by the name each client asks for",
	        lc->listen_host, lc->listen_port, lc->intercept_ca_certificate);
	return t->server == NULL ? -1 : 0;
}

int conn_tls_setup(struct conn_tls_cfg *t, const struct cfg_listener *lc)
{
	memset(t, 0, sizeof(*t));
	t->client_mode = conn_tls_mode(lc->tls);
	t->upstream_mode = conn_tls_mode(lc->upstream_tls);
	if (lc->upstream_port == 0 && t->client_mode == CONN_TLS_IMPLICIT) {
		if (conn_tls_setup_transparent(t, lc) < 0)
			return -1;
		if (t->passthrough)
			return 0;
	} else if (t->client_mode != CONN_TLS_NONE) {
		t->server = conn_tls_ctx(1);
		if (t->server == NULL ||
		    SSL_CTX_use_certificate_chain_file(t->server, lc->certificate) != 1 ||
		    SSL_CTX_use_PrivateKey_file(t->server, lc->key, SSL_FILETYPE_PEM) !=
		        1 ||
		    SSL_CTX_check_private_key(t->server) != 1) {
			conn_tls_log_errors("listener certificate");
			log_msg(LOG_LVL_ERROR, NULL,
			        "listener %s:%u: cannot use certificate %s / key %s",
			        lc->listen_host, lc->listen_port, lc->certificate,
			        lc->key);
			return -1;
		}
	}
	if (t->upstream_mode != CONN_TLS_NONE) {
		t->upstream = conn_tls_ctx(0);
		if (t->upstream == NULL)
			return -1;
		t->verify = strcmp(lc->upstream_verify, "false") != 0;
		snprintf(t->name, sizeof(t->name), "%s",
		         lc->upstream_name[0] != '\0' ? lc->upstream_name
		                                      : lc->upstream_host);
		if (lc->upstream_ca[0] != '\0'
		        ? SSL_CTX_load_verify_locations(t->upstream, lc->upstream_ca,
		                                        NULL) != 1
		        : SSL_CTX_set_default_verify_paths(t->upstream) != 1) {
			conn_tls_log_errors("upstream CA");
			log_msg(LOG_LVL_ERROR, NULL,
			        "listener %s:%u: cannot load upstream CA %s",
			        lc->listen_host, lc->listen_port,
			        lc->upstream_ca[0] ? lc->upstream_ca : "(system store)");
			return -1;
		}
		SSL_CTX_set_verify(t->upstream,
		                   t->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
		if (!t->verify)
			log_msg(LOG_LVL_WARN, NULL,
			        "listener %s:%u: upstream certificate verification is "
			        "DISABLED "
			        "(upstream_verify: false): anyone on the path can read "
			        "this mail",
			        lc->listen_host, lc->listen_port);
		if (lc->upstream_pin[0] != '\0') {
			unsigned char dec[64];
			int n = EVP_DecodeBlock(
			    dec, (const unsigned char *)lc->upstream_pin + 8, 44);

			/* 44 base64 characters ending in one '=' carry 32 octets */
			if (n != 33 || lc->upstream_pin[8 + 43] != '=') {
				log_msg(LOG_LVL_ERROR, NULL,
				        "listener %s:%u: bad upstream_pin",
				        lc->listen_host, lc->listen_port);
				return -1;
			}
			memcpy(t->pin, dec, 32);
			t->has_pin = 1;
		}
	}
	return 0;
}

void conn_tls_cleanup(struct conn_tls_cfg *t)
{
	intercept_ca_unref(&t->ica);
	SSL_CTX_free(t->server);
	SSL_CTX_free(t->upstream);
	t->server = t->upstream = NULL;
}

/* ------------------------------------------------------------------ */
/* TLS on a leg                                                        */

/* Moves what OpenSSL produced for the peer onto the socket. */
static int conn_tls_flush(struct conn_pair *p, struct conn_leg *leg)
{
	char buf[CONN_CBUF];
	int n;

	while ((n = BIO_read(SSL_get_wbio(leg->ssl), buf, sizeof(buf))) > 0)
		if (conn_raw_write(p, leg, buf, (size_t)n) < 0)
			return -1;
	return 0;
}

/*
 * Starts TLS on leg: as the server towards the client, as a client
 * upstream. Intercepting, the client leg gets the minted leaf and the CA
 * after it, and the ClientHello already read is replayed into the SSL.
 * Upstream, the name verified and sent as SNI is the configured one, or
 * when intercepting the one the client asked for ("" without SNI: the
 * chain alone is verified, and the client then checks its own name
 * against the names copied from that certificate).
 */
static int conn_tls_start(struct conn_pair *p, struct conn_leg *leg, SSL_CTX *ctx,
                          int server, X509 *leaf)
{
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());

	leg->ssl = SSL_new(ctx);
	if (leg->ssl == NULL || rb == NULL || wb == NULL) {
		BIO_free(rb);
		BIO_free(wb);
		return UV_ENOMEM;
	}
	SSL_set_bio(leg->ssl, rb, wb); /* the SSL owns both BIOs now */
	if (server) {
		SSL_set_accept_state(leg->ssl);
		if (leaf != NULL &&
		    (SSL_use_certificate(leg->ssl, leaf) != 1 ||
		     SSL_use_PrivateKey(leg->ssl, intercept_leaf_key(p->tls->ica)) != 1 ||
		     SSL_add1_chain_cert(leg->ssl, intercept_ca_cert(p->tls->ica)) != 1))
			return UV_ENOMEM;
		if (leg->hello != NULL) {
			BIO_write(rb, leg->hello->raw, (int)leg->hello->len);
			free(leg->hello);
			leg->hello = NULL;
		}
	} else {
		const struct conn_tls_cfg *t = p->tls;
		const char *name = p->intercept ? p->sni : t->name;
		struct in6_addr a6;
		struct in_addr a4;
		int ip = inet_pton(AF_INET, name, &a4) == 1 ||
		         inet_pton(AF_INET6, name, &a6) == 1;

		SSL_set_connect_state(leg->ssl);
		if (!ip && name[0] != '\0') /* SNI carries names only (RFC 6066 s. 3) */
			SSL_set_tlsext_host_name(leg->ssl, name);
		if (t->verify && name[0] != '\0') {
			if (ip)
				X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(leg->ssl),
				                              name);
			else
				SSL_set1_host(leg->ssl, name);
		}
	}
	conn_tls_progress(p, leg);
	return 0;
}

/* The upstream's public key must hash to the configured pin (RFC 7469 style). */
static int conn_tls_pin_ok(struct conn_leg *leg, const struct conn_tls_cfg *t)
{
	X509 *cert = SSL_get0_peer_certificate(leg->ssl);
	unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int len, ok;

	if (!t->has_pin)
		return 1;
	if (cert == NULL || (len = i2d_PUBKEY(X509_get0_pubkey(cert), &der)) <= 0)
		return 0;
	ok = EVP_Digest(der, (size_t)len, md, &mdlen, EVP_sha256(), NULL) == 1 &&
	     mdlen == 32 && CRYPTO_memcmp(md, t->pin, 32) == 0;
	OPENSSL_free(der);
	return ok;
}

/* A TLS failure on leg: the session hears of it as an error on that leg. */
static void conn_tls_fail(struct conn_pair *p, struct conn_leg *leg, const char *why)
{
	char detail[256] = "";
	unsigned long e = ERR_peek_last_error();
	long vr = leg->ssl != NULL ? SSL_get_verify_result(leg->ssl) : X509_V_OK;

	if (leg == &p->upstream && !leg->starttls && p->up_state == CONN_UP_GONE) {
		ERR_clear_error(); /* reported when it failed */
		return;
	}
	stats_error(leg == &p->upstream ? STATS_ERR_UPSTREAM_TLS : STATS_ERR_CLIENT_TLS);

	if (vr != X509_V_OK)
		snprintf(detail, sizeof(detail), " (certificate verify failed: %s)",
		         X509_verify_cert_error_string(vr));
	else if (e != 0 && ERR_reason_error_string(e) != NULL)
		snprintf(detail, sizeof(detail), " (%s)", ERR_reason_error_string(e));
	ERR_clear_error();
	log_msg(LOG_LVL_WARN, p->sid, "%s %s=%s TLS failed: %s%s", p->proto,
	        leg == &p->upstream ? "upstream" : "client",
	        leg == &p->upstream ? p->upstream_name : p->peer, why, detail);
	if (leg->starttls) {
		if (leg == &p->upstream)
			p->up_state = CONN_UP_GONE;
		p->ops->tls_done(p, leg, UV_EPROTO);
	} else if (leg == &p->upstream) {
		conn_up_fail(p, UV_EPROTO);
	} else {
		p->ops->read(p, leg, UV_EPROTO);
	}
}

/* Decrypts what is buffered into the session's input buffer and hands it on. */
static void conn_tls_deliver(struct conn_pair *p, struct conn_leg *leg)
{
	size_t total = 0;
	int eof = 0, err = 0;

	if (leg->delivering)
		return;
	if (conn_leg_buf(leg) < 0) {
		p->ops->read(p, leg, UV_ENOBUFS);
		return;
	}
	leg->delivering = 1;
	while (leg->len < leg->cap) {
		int r =
		    SSL_read(leg->ssl, leg->buf + leg->len, (int)(leg->cap - leg->len));

		if (r > 0) {
			leg->len += (size_t)r;
			total += (size_t)r;
			continue;
		}
		r = SSL_get_error(leg->ssl, r);
		if (r == SSL_ERROR_ZERO_RETURN)
			eof = 1; /* close_notify */
		else if (r != SSL_ERROR_WANT_READ)
			err = 1;
		break;
	}
	conn_tls_flush(p, leg);
	leg->delivering = 0;
	if (total > 0) {
		leg->last_ms = conn_now(p);
		p->ops->read(p, leg, (ssize_t)total);
	}
	if (p->closing)
		return;
	if (eof) {
		leg->eof = 1;
		p->ops->read(p, leg, UV_EOF);
	} else if (err) {
		conn_tls_fail(p, leg, "record error");
	}
}

/* Drives the handshake, then decryption. */
static void conn_tls_progress(struct conn_pair *p, struct conn_leg *leg)
{
	if (!leg->tls_up) {
		int r = SSL_do_handshake(leg->ssl);

		conn_tls_flush(p, leg);
		if (r != 1) {
			if (SSL_get_error(leg->ssl, r) != SSL_ERROR_WANT_READ)
				conn_tls_fail(p, leg, "handshake");
			return;
		}
		if (leg == &p->upstream && !conn_tls_pin_ok(leg, p->tls)) {
			conn_tls_fail(
			    p, leg,
			    "the certificate's public key does not match upstream_pin");
			return;
		}
		leg->tls_up = 1;
		log_msg(LOG_LVL_INFO, p->sid, "%s %s tls=%s cipher=%s%s", p->proto,
		        leg == &p->upstream ? "upstream" : "client",
		        SSL_get_version(leg->ssl), SSL_get_cipher_name(leg->ssl),
		        leg == &p->upstream && !p->tls->verify ? " verify=off" : "");
		if (leg->pend_len > 0) {
			SSL_write(leg->ssl, leg->pend, (int)leg->pend_len);
			leg->pend_len = 0;
			conn_tls_flush(p, leg);
		}
		if (leg->starttls) {
			p->ops->tls_done(p, leg, 0);
			if (p->closing)
				return;
		} else if (leg == &p->upstream) {
			p->up_state = CONN_UP_CONNECTED;
			p->upstream.last_ms = conn_now(p);
			if (p->intercept)
				conn_intercept_step(p);
			if (p->closing)
				return;
			p->ops->connected(p, 0);
			if (p->closing)
				return;
		}
	}
	conn_tls_deliver(p, leg);
}

static void conn_tls_free(struct conn_leg *leg)
{
	SSL_free(leg->ssl); /* frees both BIOs */
	leg->ssl = NULL;
	free(leg->cbuf);
	free(leg->pend);
	free(leg->hello);
	leg->cbuf = leg->pend = NULL;
	leg->hello = NULL;
}

/* ------------------------------------------------------------------ */
/* Interception (transparent TLS listeners with intercept_ca)          */

/*
 * Answers the client's ClientHello. With the upstream verified: a leaf for
 * the names of its certificate (cached per certificate). With the upstream
 * gone (unreachable, unverifiable): a leaf for the name the client asked
 * for, only so the session's error reaches the client readably; the proxy
 * then closes, nothing is relayed.
 */
static void conn_intercept_client(struct conn_pair *p, int verified)
{
	struct intercept_ca *ica = p->tls->ica;
	uint64_t hits, minted;
	int cached = 0, r = UV_ENOMEM;
	X509 *leaf;

	if (verified) {
		leaf = intercept_leaf(ica, SSL_get0_peer_certificate(p->upstream.ssl),
		                      (int64_t)time(NULL), &cached);
	} else {
		char host[300];
		char *colon;

		/* no SNI: the address the client connected to ("1.2.3.4:995",
		   "[::1]:995") */
		snprintf(host, sizeof(host), "%s",
		         p->sni[0] != '\0'
		             ? p->sni
		             : p->upstream_name + (p->upstream_name[0] == '['));
		colon = strrchr(host, p->upstream_name[0] == '[' ? ']' : ':');
		if (p->sni[0] == '\0' && colon != NULL)
			*colon = '\0';
		leaf = intercept_leaf_for_name(ica, host, (int64_t)time(NULL));
	}
	intercept_stats(ica, &hits, &minted);
	if (verified)
		log_msg(LOG_LVL_INFO, p->sid,
		        "%s intercept server=%s sni=%s cert=%s cache_hits=%llu "
		        "minted=%llu",
		        p->proto, p->upstream_name, p->sni[0] ? p->sni : "-",
		        leaf == NULL ? "failed"
		        : cached     ? "cached"
		                     : "minted",
		        (unsigned long long)hits, (unsigned long long)minted);
	if (leaf != NULL) {
		r = conn_tls_start(p, &p->client, p->tls->server, 1, leaf);
		X509_free(leaf);
	}
	if (r < 0 && !p->closing) {
		conn_tls_log_errors("intercept certificate");
		p->ops->read(p, &p->client, r);
	}
}

/*
 * Moves interception on once the ClientHello is read: the upstream's TLS
 * starts as soon as its TCP connection is up too; the client's TLS once
 * the upstream is verified, or gone.
 */
static void conn_intercept_step(struct conn_pair *p)
{
	struct conn_leg *c = &p->client;

	if (!p->hello_done || c->ssl != NULL)
		return;
	if (p->up_state == CONN_UP_GONE) {
		conn_intercept_client(p, 0);
	} else if (p->up_state == CONN_UP_CONNECTED && p->upstream.tls_up) {
		conn_intercept_client(p, 1);
	} else if (p->up_tcp && p->upstream.ssl == NULL) {
		int r = conn_tls_start(p, &p->upstream, p->tls->upstream, 0, NULL);

		if (r < 0 && !p->closing && p->up_state != CONN_UP_GONE)
			conn_up_fail(p, r);
		else if (!p->closing && p->up_state != CONN_UP_GONE)
			conn_update_reading(p, 0, 0);
	}
}

/* The intercepting client leg's bytes before TLS: the ClientHello. */
static void conn_hello_read(struct conn_pair *p, struct conn_leg *leg, ssize_t n)
{
	enum tls_hello_result r;

	if (n < 0) {
		uv_read_stop((uv_stream_t *)&leg->tcp);
		leg->reading = 0;
		if (n == UV_EOF)
			leg->eof = 1;
		p->ops->read(p, leg, n);
		return;
	}
	leg->last_ms = conn_now(p);
	if (p->hello_done) {
		/* more before our answer: kept for the replay (bounded) */
		if (tls_hello_feed(leg->hello, leg->cbuf, (size_t)n) == TLS_HELLO_OK)
			return;
	} else {
		r = tls_hello_feed(leg->hello, leg->cbuf, (size_t)n);
		if (r == TLS_HELLO_NEED_MORE)
			return;
		if (r == TLS_HELLO_OK) {
			p->hello_done = 1;
			snprintf(p->sni, sizeof(p->sni), "%s", leg->hello->sni);
			if (p->sni[0] == '\0')
				log_msg(
				    LOG_LVL_INFO, p->sid,
				    "%s intercept server=%s: no SNI from the client; "
				    "the server's chain is verified and its names used",
				    p->proto, p->upstream_name);
			conn_intercept_step(p);
			return;
		}
	}
	log_msg(LOG_LVL_WARN, p->sid, "%s client=%s server=%s: %s: %s", p->proto, p->peer,
	        p->upstream_name,
	        p->hello_done ? "TLS input refused" : "no TLS ClientHello",
	        leg->hello->error != NULL ? leg->hello->error : "bad input");
	uv_read_stop((uv_stream_t *)&leg->tcp);
	leg->reading = 0;
	p->ops->read(p, leg, UV_EPROTO);
}

/* The upstream failed before it was of use: the session hears of it. */
static void conn_up_fail(struct conn_pair *p, int err)
{
	if (p->up_state == CONN_UP_GONE)
		return; /* reported once */
	p->up_state = CONN_UP_GONE;
	if (p->upstream.reading) {
		uv_read_stop((uv_stream_t *)&p->upstream.tcp);
		p->upstream.reading = 0;
	}
	if (p->intercept)
		conn_intercept_step(p); /* the error travels over TLS */
	if (!p->closing)
		p->ops->connected(p, err);
}

void conn_pair_set_tls(struct conn_pair *p, const struct conn_tls_cfg *tls)
{
	p->tls = tls;
}

uint64_t conn_now(const struct conn_pair *p)
{
	return uv_now(p->loop);
}

static void conn_release(struct conn_pair *p)
{
	if (--p->refs > 0)
		return;
	conn_tls_free(&p->client);
	conn_tls_free(&p->upstream);
	conn_leg_buf_drop(&p->client);
	conn_leg_buf_drop(&p->upstream);
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
		stats_error(STATS_ERR_UPSTREAM_CONNECT);
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s connect timed out",
		        p->proto, p->upstream_name);
		conn_up_fail(p, UV_ETIMEDOUT);
		return;
	}
	/* a client that never finishes its handshake is not waited for */
	if ((p->client.ssl != NULL || p->client.hello != NULL) && !p->client.tls_up &&
	    p->connect_timeout_ms != 0 &&
	    conn_now(p) - p->client.last_ms > p->connect_timeout_ms) {
		conn_tls_fail(p, &p->client, "handshake timed out");
		return;
	}
	conn_leg_trim(p, &p->client);
	conn_leg_trim(p, &p->upstream);
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
	p->client.own_buf = cbuf == NULL;
	p->upstream.buf = ubuf;
	p->upstream.cap = ucap;
	p->upstream.own_buf = ubuf == NULL;
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
	if (p->tls != NULL && p->tls->ica != NULL) {
		/* the ClientHello first: it names the server to verify */
		p->intercept = 1;
		p->client.hello = malloc(sizeof(*p->client.hello));
		p->client.cbuf = malloc(CONN_CBUF);
		if (p->client.hello == NULL || p->client.cbuf == NULL)
			return UV_ENOMEM;
		tls_hello_init(p->client.hello);
		return 0;
	}
	if (p->tls != NULL && p->tls->client_mode == CONN_TLS_IMPLICIT)
		return conn_tls_start(p, &p->client, p->tls->server, 1, NULL);
	return 0;
}

static void conn_on_connect(uv_connect_t *req, int status)
{
	struct conn_pair *p = req->data;

	if (p->closing || p->up_state == CONN_UP_GONE)
		return;
	if (status < 0) {
		stats_error(STATS_ERR_UPSTREAM_CONNECT);
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s connect failed: %s",
		        p->proto, p->upstream_name, uv_strerror(status));
		conn_up_fail(p, status);
		return;
	}
	uv_tcp_nodelay(&p->upstream.tcp, 1);
	if (p->intercept) {
		/* TLS upstream once the client's SNI is known */
		p->up_tcp = 1;
		conn_intercept_step(p);
		return;
	}
	if (p->tls != NULL && p->tls->upstream_mode == CONN_TLS_IMPLICIT) {
		/* connected for the session once the verified TLS session is up */
		int r = conn_tls_start(p, &p->upstream, p->tls->upstream, 0, NULL);

		if (r < 0) {
			conn_up_fail(p, r);
			return;
		}
		if (!p->closing && p->up_state != CONN_UP_GONE)
			conn_update_reading(p, 0, 0);
		return;
	}
	p->up_state = CONN_UP_CONNECTED;
	p->upstream.last_ms = conn_now(p);
	p->ops->connected(p, 0);
}

/*
 * Connects the upstream leg to sa from a socket of our own, marked so the
 * router's rules never redirect the proxy's traffic back into it (the
 * shipped nftables rules skip CONN_FWMARK). Marking needs CAP_NET_ADMIN;
 * without it the connection goes on unmarked (rules by address still work).
 */
static int conn_connect_addr(struct conn_pair *p, const struct sockaddr *sa)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	unsigned mark = CONN_FWMARK;
	int r;

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
		log_msg(LOG_LVL_DEBUG, p->sid, "upstream socket not marked: %s",
		        strerror(errno));
	r = uv_tcp_open(&p->upstream.tcp, fd);
	if (r < 0) {
		close(fd);
		return r;
	}
	return uv_tcp_connect(&p->connreq, &p->upstream.tcp, sa, conn_on_connect);
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
	r = conn_connect_addr(p, ai->ai_addr);
	uv_freeaddrinfo(ai);
	if (r < 0)
		conn_on_connect(&p->connreq, r);
}

int conn_pair_open(struct conn_pair *p, uv_stream_t *listener,
                   const struct cfg_listener *lc, unsigned timeout_s, int *connect_r)
{
	int r;

	conn_pair_set_tls(p, &((struct lsn *)listener->data)->tls);
	r = conn_pair_accept(p, listener);
	if (r < 0)
		return r;
	*connect_r =
	    lc->upstream_port == 0
	        ? conn_pair_connect_original(p, timeout_s)
	        : conn_pair_connect(p, lc->upstream_host, lc->upstream_port, timeout_s);
	log_msg(LOG_LVL_INFO, p->sid, "%s connect client=%s upstream=%s", p->proto,
	        p->peer, p->upstream_name);
	if (*connect_r < 0)
		log_msg(LOG_LVL_WARN, p->sid, "%s upstream=%s: %s", p->proto,
		        p->upstream_name, uv_strerror(*connect_r));
	return 0;
}

int conn_pair_find_original(struct conn_pair *p, struct sockaddr_storage *dst_r)
{
	struct sockaddr_storage local = {0}; /* filled by getsockname() */
	socklen_t dl = sizeof(*dst_r), ll = sizeof(local);
	uv_os_fd_t fd;
	int r;

	if (uv_fileno((uv_handle_t *)&p->client.tcp, &fd) < 0 ||
	    getsockname(fd, (struct sockaddr *)&local, &ll) < 0)
		return UV_EINVAL;
	/* where the client meant to go, before the router's REDIRECT */
	if (local.ss_family == AF_INET6)
		r = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst_r, &dl);
	else
		r = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst_r, &dl);
	if (r < 0) {
		log_msg(LOG_LVL_WARN, p->sid, "%s no original destination: %s", p->proto,
		        strerror(errno));
		return UV_ENOTCONN;
	}
	lsn_addr_str((struct sockaddr *)dst_r, p->upstream_name,
	             sizeof(p->upstream_name));
	/* not redirected (a client aimed at the proxy itself): never connect to ourselves
	 */
	if (dl == ll && memcmp(dst_r, &local, dl) == 0) {
		log_msg(
		    LOG_LVL_WARN, p->sid,
		    "%s transparent listener reached directly, not through a redirect",
		    p->proto);
		return UV_ELOOP;
	}
	return 0;
}

int conn_pair_connect_original(struct conn_pair *p, unsigned timeout_s)
{
	struct sockaddr_storage dst;
	int r;

	p->connect_timeout_ms = (uint64_t)timeout_s * 1000u;
	p->up_state = CONN_UP_GONE; /* until the connect is under way */
	r = conn_pair_find_original(p, &dst);
	if (r < 0)
		return r;
	p->up_state = CONN_UP_CONNECTING;
	r = conn_connect_addr(p, (struct sockaddr *)&dst);
	if (r < 0)
		p->up_state = CONN_UP_GONE;
	return r;
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
	if (leg->ssl == NULL && leg->hello == NULL)
		return conn_raw_write(p, leg, data, len);
	if (len == 0)
		return 0;
	if (!leg->tls_up) {
		/* before the handshake ends: kept, sent right after it */
		if (leg->pend_len + len > leg->pend_cap) {
			size_t nc = (leg->pend_len + len) * 2;
			char *nb = realloc(leg->pend, nc);

			if (nb == NULL)
				return UV_ENOMEM;
			leg->pend = nb;
			leg->pend_cap = nc;
		}
		memcpy(leg->pend + leg->pend_len, data, len);
		leg->pend_len += len;
		return 0;
	}
	if (SSL_write(leg->ssl, data, (int)len) <= 0)
		return UV_EPROTO;
	if (leg == &p->upstream)
		leg->last_ms = conn_now(p);
	return conn_tls_flush(p, leg);
}

static int conn_raw_write(struct conn_pair *p, struct conn_leg *leg, const char *data,
                          size_t len)
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
	/* no memory: a zero-length buffer, and libuv reports UV_ENOBUFS */
	if (leg->ssl != NULL || leg->hello != NULL) {
		if (leg->cbuf == NULL)
			leg->cbuf = malloc(CONN_CBUF);
		*buf = uv_buf_init(leg->cbuf, leg->cbuf != NULL ? CONN_CBUF : 0);
	} else if (conn_leg_buf(leg) < 0) {
		*buf = uv_buf_init(NULL, 0);
	} else {
		*buf = uv_buf_init(leg->buf + leg->len, (unsigned)(leg->cap - leg->len));
	}
}

static void conn_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	struct conn_pair *p = st->data;
	struct conn_leg *leg = conn_leg_of(p, (uv_handle_t *)st);

	if (p->closing || n == 0)
		return;
	stats_bytes(leg == &p->upstream, n);
	if (leg->hello != NULL && leg->ssl == NULL) {
		conn_hello_read(p, leg, n);
		return;
	}
	if (leg->ssl != NULL) {
		if (n > 0) {
			BIO_write(SSL_get_rbio(leg->ssl), buf->base, (int)n);
			conn_tls_progress(p, leg);
			return;
		}
		uv_read_stop(st);
		leg->reading = 0;
		if (!leg->tls_up) {
			conn_tls_fail(p, leg,
			              n == UV_EOF ? "closed during the handshake"
			                          : uv_strerror((int)n));
			return;
		}
		if (n == UV_EOF)
			leg->eof = 1;
		p->ops->read(p, leg, n);
		return;
	}
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
	struct conn_leg *legs[2] = {&p->client, &p->upstream};
	int ok[2] = {client_ok, upstream_ok && p->up_state == CONN_UP_CONNECTED};

	if (p->closing)
		return;
	for (int i = 0; i < 2; i++) {
		struct conn_leg *leg = legs[i];
		int room = leg->len < leg->cap && !leg->eof;

		if ((leg->ssl != NULL || leg->hello != NULL) && !leg->tls_up &&
		    (leg == &p->client || p->up_state != CONN_UP_GONE)) {
			/* the handshake reads whatever the session wants */
			conn_leg_reading(leg, 1);
			continue;
		}
		conn_leg_reading(leg, ok[i] && room);
		/* plaintext OpenSSL already holds waits for room only */
		if (leg->ssl != NULL && ok[i] && room &&
		    (SSL_pending(leg->ssl) > 0 ||
		     BIO_ctrl_pending(SSL_get_rbio(leg->ssl)) > 0))
			conn_tls_deliver(p, leg);
		if (p->closing)
			return;
	}
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

int conn_start_tls(struct conn_pair *p, struct conn_leg *leg)
{
	int server = leg == &p->client;
	SSL_CTX *ctx = p->tls == NULL ? NULL : server ? p->tls->server : p->tls->upstream;

	if (ctx == NULL || leg->ssl != NULL || p->intercept)
		return UV_EINVAL;
	leg->len = 0; /* plaintext sent after the command is never trusted */
	leg->starttls = 1;
	if (conn_tls_start(p, leg, ctx, server, NULL) < 0)
		return UV_ENOMEM;
	if (!p->closing)
		conn_leg_reading(leg, 1);
	return 0;
}

int conn_leg_idle(const struct conn_leg *leg)
{
	return leg->wq == 0 && leg->pend_len == 0;
}

int conn_upstream_ready(const struct conn_pair *p)
{
	if (p->up_state != CONN_UP_CONNECTED)
		return 0;
	return p->tls == NULL || p->tls->upstream_mode != CONN_TLS_STARTTLS ||
	       (p->upstream.ssl != NULL && p->upstream.tls_up);
}

int conn_leg_tls(const struct conn_leg *leg)
{
	return leg->ssl != NULL || leg->hello != NULL;
}
