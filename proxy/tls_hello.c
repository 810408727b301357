/*
 * tls_hello.c - reads the client's first TLS flight up to the end of its
 * ClientHello, for the transparent TLS listeners (conn.c feeds it every
 * byte the client sends before the proxy answers, then replays raw into
 * OpenSSL).
 *
 * Pure and bounded: no I/O, no allocation, everything lives in the caller's
 * struct tls_hello. States (h->state):
 *   NEED_MORE  reading records. Between records (rec_end == 0) the bytes of
 *              the next 5-byte record header are checked one at a time as
 *              they arrive (so a plaintext client fails at its first byte);
 *              inside a record (rec_end != 0) its handshake bytes are
 *              appended to msg, each exactly once, up to the end of the
 *              handshake message its 4-byte header announces.
 *   OK         the ClientHello message is complete and was walked once;
 *              later bytes (the rest of its record, early data ...) are
 *              only appended to raw.
 *   ERROR      sticky; error and error_pos say what and where.
 * Every check happens at a fixed stream offset and in stream order, so the
 * outcome (and len, which stops at the byte where an error was found) is
 * the same however the input is split. Work per byte is constant: record
 * headers are parsed once, fragments copied once, the message walked once.
 * Only an error inside the message walks the record headers again, once,
 * to turn a message offset into a raw offset.
 */
#include "proxy/tls_hello.h"

#include <assert.h>
#include <string.h>

/* RFC 8446 section 5.1 */
#define TLS_REC_HDR 5
#define TLS_REC_MAX 16384 /* 2^14: a plaintext fragment */
#define TLS_CT_FIRST 20   /* change_cipher_spec */
#define TLS_CT_HANDSHAKE 22
#define TLS_CT_LAST 24 /* heartbeat (RFC 6520) */
/* RFC 8446 section 4 */
#define TLS_HS_HDR 4
#define TLS_HS_CLIENT_HELLO 1
/* extension types: RFC 6066 section 3, RFC 8446 section 4.2 */
#define TLS_EXT_SERVER_NAME 0
#define TLS_EXT_SUPPORTED_VERSIONS 43
#define TLS_SNI_HOST_NAME 0
#define TLS_VERSION_13 0x0304

_Static_assert(TLS_HELLO_RAW_MAX >= TLS_REC_HDR + TLS_HELLO_MSG_MAX + TLS_HS_HDR,
               "raw must hold a ClientHello of the largest size in one record");

void tls_hello_init(struct tls_hello *h)
{
	memset(h, 0, sizeof(*h));
	h->state = TLS_HELLO_NEED_MORE;
}

/*
 * Fails the hello: why at raw offset pos, found at raw offset found (raw
 * keeps the bytes up to and including it). Results are cleared: they are
 * only meaningful after OK.
 */
static enum tls_hello_result hello_fail(struct tls_hello *h, const char *why, size_t pos,
                                        size_t found)
{
	h->state = TLS_HELLO_ERROR;
	h->error = why;
	h->error_pos = pos;
	if (found < h->len)
		h->len = found + 1;
	h->sni[0] = '\0';
	h->tls13 = 0;
	h->legacy_version = 0;
	return TLS_HELLO_ERROR;
}

/*
 * The raw offset of byte off of the reassembled handshake message (its
 * last byte for an offset past the end: a field missing at the end):
 * walks the records from the start of raw, which all passed the header
 * checks and carry nothing but message bytes. Used once, on an error.
 */
static size_t hello_msg_raw_pos(const struct tls_hello *h, size_t off)
{
	size_t rec = 0;

	if (off >= h->msg_len)
		off = h->msg_len - 1;
	for (;;) {
		size_t rlen = (size_t)h->raw[rec + 3] << 8 | h->raw[rec + 4];

		if (off < rlen)
			return rec + TLS_REC_HDR + off;
		off -= rlen;
		rec += TLS_REC_HDR + rlen;
	}
}

/*
 * Checks byte i (0..4) of the record header at h->rec_pos; the bytes
 * before it were checked already. Returns NULL or the reason it is bad.
 */
static const char *hello_rec_byte(const struct tls_hello *h, size_t i)
{
	const unsigned char *r = h->raw + h->rec_pos;
	size_t rlen;

	switch (i) {
	case 0:
		if (r[0] == TLS_CT_HANDSHAKE)
			return NULL;
		if (h->rec_pos != 0)
			return "a record of another type before the ClientHello is "
			       "complete";
		/* SSLv2 compatible hellos start with a 2-byte length, high bit set */
		if (r[0] & 0x80)
			return "SSLv2 hello not supported";
		if (r[0] >= TLS_CT_FIRST && r[0] <= TLS_CT_LAST)
			return "first TLS record is not a handshake record";
		return "not TLS (a plaintext client on a TLS port?)";
	case 1:
		/* legacy_record_version: 0x0303, 0x0301 in an initial ClientHello */
		return r[1] == 3 ? NULL : "record version is not 3.x";
	case 2:
		return r[2] <= 4 ? NULL : "record version above TLS 1.3";
	case 3:
		return NULL; /* the length is checked once both bytes are in */
	default:
		rlen = (size_t)r[3] << 8 | r[4];
		/* RFC 8446 section 5.1: no zero-length handshake fragments */
		if (rlen == 0)
			return "empty handshake record";
		if (rlen > TLS_REC_MAX)
			return "record longer than 2^14";
		return NULL;
	}
}

/* A bounds-checked reader over the handshake message (offsets into msg). */
struct hello_rd {
	const unsigned char *p;
	size_t pos, end;
};

static int rd_has(const struct hello_rd *r, size_t n)
{
	return r->end - r->pos >= n;
}

static unsigned rd_u8(struct hello_rd *r)
{
	return r->p[r->pos++];
}

static unsigned rd_u16(struct hello_rd *r)
{
	unsigned v = (unsigned)r->p[r->pos] << 8 | r->p[r->pos + 1];

	r->pos += 2;
	return v;
}

/* The walk failed: why at message offset off. */
struct hello_err {
	const char *why;
	size_t off;
};

static int walk_fail(struct hello_err *e, const char *why, size_t off)
{
	e->why = why;
	e->off = off;
	return -1;
}

/* True when c may appear in a host name (RFC 1123 section 2.1, plus '_'). */
static int sni_char_ok(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

/*
 * True when the label s[0..n) reads as a number: decimal digits, or 0x and
 * hex digits. inet_aton() and getaddrinfo() take "127.1", "2130706433" and
 * "0x7f.1" for IPv4 addresses, while no top-level domain is numeric (RFC
 * 3696 section 2), so a name whose last label is a number is an address.
 */
static int sni_label_numeric(const unsigned char *s, size_t n)
{
	size_t i = 0;
	int hex = 0;

	if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		hex = 1;
		i = 2;
	}
	for (; i < n; i++) {
		unsigned char c = s[i];

		if (c >= '0' && c <= '9')
			continue;
		if (hex && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
			continue;
		return 0;
	}
	return 1;
}

/*
 * Checks the host_name at msg offset off, n bytes, and stores it in lower
 * case without one trailing dot. Security: the name picks the upstream and
 * the certificate names the proxy accepts, and lands in the log, so only
 * plausible DNS names pass; RFC 6066 section 3 forbids address literals.
 */
static int hello_sni(struct tls_hello *h, size_t off, size_t n, struct hello_err *e)
{
	const unsigned char *s = h->msg + off;
	size_t i, label = 0, last = 0;

	if (n > 0 && s[n - 1] == '.')
		n--; /* the root label of an absolute name */
	if (n == 0)
		return walk_fail(e, "empty server name", off);
	if (n > TLS_HELLO_NAME_MAX)
		return walk_fail(e, "server name longer than 253", off);
	if (memchr(s, ':', n) != NULL)
		return walk_fail(e, "server name is an IPv6 address literal", off);
	for (i = 0; i < n; i++) {
		if (!sni_char_ok(s[i]))
			return walk_fail(
			    e,
			    "server name has a character other than letters, "
			    "digits, '-', '.', '_'",
			    off + i);
		if (s[i] == '.') {
			if (i == label)
				return walk_fail(e, "server name has an empty label",
				                 off + i);
			label = i + 1;
			last = label;
		} else if (i - label >= 63) {
			/* RFC 1035 section 2.3.4 */
			return walk_fail(e, "server name has a label longer than 63",
			                 off + i);
		}
	}
	if (label == n)
		return walk_fail(e, "server name has an empty label", off + n);
	if (sni_label_numeric(s + last, n - last))
		return walk_fail(e, "server name is an IPv4 address literal", off);
	for (i = 0; i < n; i++)
		h->sni[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
	h->sni[n] = '\0';
	return 0;
}

/* RFC 6066 section 3: the server_name extension's data, r over exactly it. */
static int hello_ext_sni(struct tls_hello *h, struct hello_rd *r, struct hello_err *e)
{
	size_t start = r->pos, list;
	int have = 0;

	if (!rd_has(r, 2))
		return walk_fail(e, "server_name extension too short", start);
	list = rd_u16(r);
	if (list != r->end - r->pos)
		return walk_fail(
		    e, "server_name list length does not match its extension", start);
	if (list == 0)
		return walk_fail(e, "empty server_name list", start);
	while (r->pos < r->end) {
		size_t at = r->pos, n;
		unsigned type;

		if (!rd_has(r, 3))
			return walk_fail(e, "server_name entry truncated", at);
		type = rd_u8(r);
		n = rd_u16(r);
		if (!rd_has(r, n))
			return walk_fail(e, "server_name entry longer than its list",
			                 at + 1);
		if (type == TLS_SNI_HOST_NAME) {
			/*
			 * Security: RFC 6066 allows one name per type; with two the
			 * proxy and the server could act on different ones.
			 */
			if (have)
				return walk_fail(e, "server_name lists two host names",
				                 at);
			if (hello_sni(h, r->pos, n, e) < 0)
				return -1;
			have = 1;
		}
		r->pos += n;
	}
	return 0;
}

/* RFC 8446 section 4.2.1: ProtocolVersion versions<2..254> in a ClientHello. */
static int hello_ext_versions(struct tls_hello *h, struct hello_rd *r,
                              struct hello_err *e)
{
	size_t start = r->pos, n;

	if (!rd_has(r, 1))
		return walk_fail(e, "supported_versions extension too short", start);
	n = rd_u8(r);
	if (n != r->end - r->pos)
		return walk_fail(
		    e, "supported_versions list length does not match its extension",
		    start);
	if (n < 2 || n % 2 != 0)
		return walk_fail(e, "supported_versions list has a bad length", start);
	while (r->pos < r->end)
		if (rd_u16(r) == TLS_VERSION_13)
			h->tls13 = 1;
	return 0;
}

/*
 * Walks the extensions block, r over exactly its contents. A type twice is
 * refused (RFC 8446 section 4.2): servers would disagree on which counts.
 */
static int hello_exts(struct tls_hello *h, struct hello_rd *r, struct hello_err *e)
{
	unsigned char seen[65536 / 8];

	memset(seen, 0, sizeof(seen));
	while (r->pos < r->end) {
		size_t at = r->pos, n;
		unsigned type;
		struct hello_rd sub;

		if (!rd_has(r, 4))
			return walk_fail(e, "extension header truncated", at);
		type = rd_u16(r);
		n = rd_u16(r);
		if (!rd_has(r, n))
			return walk_fail(e, "extension longer than the extensions block",
			                 at + 2);
		if (seen[type / 8] & (1u << (type % 8)))
			return walk_fail(e, "duplicate extension", at);
		seen[type / 8] |= (unsigned char)(1u << (type % 8));
		sub = (struct hello_rd){r->p, r->pos, r->pos + n};
		if (type == TLS_EXT_SERVER_NAME && hello_ext_sni(h, &sub, e) < 0)
			return -1;
		if (type == TLS_EXT_SUPPORTED_VERSIONS &&
		    hello_ext_versions(h, &sub, e) < 0)
			return -1;
		r->pos += n;
	}
	return 0;
}

/*
 * Walks the complete ClientHello in msg (RFC 8446 section 4.1.2, RFC 5246
 * section 7.4.1.2): fills the results, or returns -1 with e set.
 */
static int hello_walk(struct tls_hello *h, size_t body_len, struct hello_err *e)
{
	struct hello_rd r = {h->msg, TLS_HS_HDR, TLS_HS_HDR + body_len};
	size_t at, n;

	if (!rd_has(&r, 2 + 32))
		return walk_fail(e, "ClientHello truncated in its version or random",
		                 r.pos);
	h->legacy_version = (uint16_t)rd_u16(&r);
	if (h->legacy_version >> 8 != 3)
		return walk_fail(e, "ClientHello version is not 3.x", TLS_HS_HDR);
	r.pos += 32; /* random */

	at = r.pos;
	if (!rd_has(&r, 1))
		return walk_fail(e, "ClientHello truncated at the session id", at);
	n = rd_u8(&r);
	if (n > 32)
		return walk_fail(e, "session id longer than 32", at);
	if (!rd_has(&r, n))
		return walk_fail(e, "ClientHello truncated in the session id", at);
	r.pos += n;

	at = r.pos;
	if (!rd_has(&r, 2))
		return walk_fail(e, "ClientHello truncated at the cipher suites", at);
	n = rd_u16(&r);
	if (n < 2 || n % 2 != 0)
		return walk_fail(e, "cipher suites list has a bad length", at);
	if (!rd_has(&r, n))
		return walk_fail(e, "ClientHello truncated in the cipher suites", at);
	r.pos += n;

	at = r.pos;
	if (!rd_has(&r, 1))
		return walk_fail(e, "ClientHello truncated at the compression methods",
		                 at);
	n = rd_u8(&r);
	if (n < 1)
		return walk_fail(e, "empty compression methods list", at);
	if (!rd_has(&r, n))
		return walk_fail(e, "ClientHello truncated in the compression methods",
		                 at);
	r.pos += n;

	/* RFC 5246 section 7.4.1.2: a hello may end here, without extensions */
	if (r.pos == r.end)
		return 0;
	at = r.pos;
	if (!rd_has(&r, 2))
		return walk_fail(e, "ClientHello truncated at the extensions", at);
	n = rd_u16(&r);
	if (!rd_has(&r, n))
		return walk_fail(e, "extensions block longer than the ClientHello", at);
	if (n != r.end - r.pos)
		return walk_fail(e, "bytes after the extensions block", r.pos + n);
	return hello_exts(h, &r, e);
}

/* The last byte of the message, at raw offset found, is in: walk it. */
static enum tls_hello_result hello_done(struct tls_hello *h, size_t found)
{
	size_t body_len = h->msg_len - TLS_HS_HDR;
	struct hello_err e;

	if (hello_walk(h, body_len, &e) < 0)
		return hello_fail(h, e.why, hello_msg_raw_pos(h, e.off), found);
	h->state = TLS_HELLO_OK;
	return TLS_HELLO_OK;
}

/* The length field of the handshake header in msg (complete). */
static size_t hello_body_len(const struct tls_hello *h)
{
	return (size_t)h->msg[1] << 16 | (size_t)h->msg[2] << 8 | h->msg[3];
}

/*
 * Appends the current record's bytes raw[h->parsed ..), at most to the
 * record's end and to the end of the handshake message (only its header
 * while the header is incomplete), to msg. Checks the handshake header as
 * its bytes come in; walks the message once its last byte is in.
 */
static enum tls_hello_result hello_fragment(struct tls_hello *h)
{
	size_t end = h->rec_end < h->len ? h->rec_end : h->len;
	size_t total = TLS_HS_HDR + (h->msg_len < TLS_HS_HDR ? 0 : hello_body_len(h));
	size_t n = end - h->parsed;

	assert(h->parsed < end && h->msg_len < total);
	if (n > total - h->msg_len)
		n = total - h->msg_len;
	/* RFC 8446 section 4.1.2: the client's first message is a ClientHello */
	if (h->msg_len == 0 && h->raw[h->parsed] != TLS_HS_CLIENT_HELLO)
		return hello_fail(h, "handshake message is not a ClientHello", h->parsed,
		                  h->parsed);
	memcpy(h->msg + h->msg_len, h->raw + h->parsed, n);
	h->msg_len += n;
	h->parsed += n;
	if (h->parsed == h->rec_end) {
		h->rec_pos = h->rec_end;
		h->rec_end = 0;
	}
	if (h->msg_len < TLS_HS_HDR)
		return TLS_HELLO_NEED_MORE;
	/* the header has just completed when msg_len is 4: checked once */
	if (h->msg_len == TLS_HS_HDR && hello_body_len(h) > TLS_HELLO_MSG_MAX)
		return hello_fail(h, "ClientHello too large", hello_msg_raw_pos(h, 1),
		                  h->parsed - 1);
	if (h->msg_len == TLS_HS_HDR + hello_body_len(h))
		return hello_done(h, h->parsed - 1);
	return TLS_HELLO_NEED_MORE;
}

/* Parses raw[h->parsed .. h->len) as far as it goes. */
static enum tls_hello_result hello_parse(struct tls_hello *h)
{
	while (h->parsed < h->len) {
		enum tls_hello_result r;

		if (h->rec_end == 0) {
			size_t i = h->parsed - h->rec_pos;
			const char *why = hello_rec_byte(h, i);

			if (why != NULL)
				return hello_fail(h, why, h->rec_pos + (i == 4 ? 3 : i),
				                  h->parsed);
			h->parsed++;
			if (i == TLS_REC_HDR - 1)
				h->rec_end =
				    h->parsed + ((size_t)h->raw[h->rec_pos + 3] << 8 |
				                 h->raw[h->rec_pos + 4]);
			continue;
		}
		r = hello_fragment(h);
		if (r != TLS_HELLO_NEED_MORE)
			return r;
	}
	return TLS_HELLO_NEED_MORE;
}

enum tls_hello_result tls_hello_feed(struct tls_hello *h, const void *data, size_t len)
{
	size_t room = TLS_HELLO_RAW_MAX - h->len;
	size_t n = len < room ? len : room;
	enum tls_hello_result r;

	if (h->state == TLS_HELLO_ERROR)
		return TLS_HELLO_ERROR;
	if (n > 0)
		memcpy(h->raw + h->len, data, n);
	h->len += n;
	if (h->state == TLS_HELLO_NEED_MORE) {
		r = hello_parse(h);
		if (r == TLS_HELLO_ERROR)
			return r;
	}
	if (n < len)
		return hello_fail(h,
		                  h->state == TLS_HELLO_OK
		                      ? "too much data before the handshake"
		                      : "ClientHello records longer than the raw bound",
		                  TLS_HELLO_RAW_MAX, TLS_HELLO_RAW_MAX);
	return h->state;
}
