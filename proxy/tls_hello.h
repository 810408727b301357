/*
 * tls_hello.h - reads a TLS ClientHello off the wire before any TLS
 * library sees it, for transparent TLS listeners: the server name the
 * client asked for (SNI, RFC 6066) decides whom the proxy connects to and
 * verifies, and what the log says about relayed or refused traffic.
 *
 * A pure, resumable parser (no I/O): bytes are fed as they arrive, split
 * anywhere, and kept (raw, len) so the caller can replay them into OpenSSL
 * or forward them untouched. The result is the same however the input is
 * split. Records (RFC 8446 section 5.1) are checked and their handshake
 * fragments reassembled; the ClientHello (section 4.1.2, also TLS 1.2's) is
 * walked to its extensions. Everything is bounded: at most TLS_HELLO_RAW_MAX
 * raw bytes, a handshake message of at most TLS_HELLO_MSG_MAX.
 */
#ifndef MAILMOAT_TLS_HELLO_H
#define MAILMOAT_TLS_HELLO_H

#include <stddef.h>
#include <stdint.h>

#define TLS_HELLO_RAW_MAX 20480 /* raw record bytes kept */
#define TLS_HELLO_MSG_MAX 16384 /* the ClientHello handshake message */
#define TLS_HELLO_NAME_MAX 253  /* a DNS name without its trailing dot */

enum tls_hello_result {
	TLS_HELLO_NEED_MORE, /* feed more bytes */
	TLS_HELLO_OK,        /* a whole ClientHello was read */
	TLS_HELLO_ERROR,     /* not a TLS ClientHello, or over a bound: see error */
	TLS_HELLO_RESULT_COUNT
};

struct tls_hello {
	/* every byte fed so far, the ClientHello's records and anything after
	   (on ERROR: up to the byte where the problem was found) */
	unsigned char raw[TLS_HELLO_RAW_MAX];
	size_t len;
	/* results, valid after TLS_HELLO_OK */
	char sni[TLS_HELLO_NAME_MAX + 1]; /* host_name, lower case, no trailing
	                                     dot; "" when the client sent none */
	uint16_t legacy_version;          /* client_version field (0x0303 ...) */
	int tls13;                        /* supported_versions offers 0x0304 */
	/* on TLS_HELLO_ERROR: a static reason and the raw offset it refers to */
	const char *error;
	size_t error_pos;
	/* parser state (private) */
	enum tls_hello_result state;
	size_t rec_pos; /* raw offset of the current (or next) record header */
	size_t rec_end; /* raw offset past the current record, 0 in a header */
	size_t parsed;  /* raw bytes looked at; the rest of raw is after the hello */
	unsigned char msg[TLS_HELLO_MSG_MAX + 4];
	size_t msg_len; /* handshake bytes reassembled so far */
};

/* Starts a new ClientHello. */
void tls_hello_init(struct tls_hello *h);

/*
 * Appends len bytes and parses as far as they go. Returns NEED_MORE, OK
 * (stays OK: later calls only append to raw while the bound allows, else
 * ERROR) or ERROR (stays ERROR; later calls change nothing). OK comes as
 * soon as the ClientHello message is complete; the rest of its record and
 * whatever follows are kept in raw unparsed. On ERROR raw ends at the byte
 * where the problem was found (len says so), whatever the feed sizes were.
 * A server_name extension with a name that is not a plausible DNS host
 * name (empty, longer than 253 without one trailing dot, an empty label or
 * one over 63, characters outside letters, digits, '-', '.', '_', two
 * host names, or an IP address literal, which RFC 6066 forbids: a name
 * with ':' or whose last label is a number, as "127.1" or "0x7f.1") is an
 * ERROR, not a silently dropped name. The caller owns h; nothing points
 * into data after the call.
 */
enum tls_hello_result tls_hello_feed(struct tls_hello *h, const void *data, size_t len);

#endif
