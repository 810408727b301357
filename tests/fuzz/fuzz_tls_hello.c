/*
 * fuzz_tls_hello.c - libFuzzer harness for the ClientHello reader.
 *
 * Input: three control bytes, then the payload.
 *   bytes 0-1  seed for the split points (and the record sizes below)
 *   byte 2     bit 0: wrap: the payload is a ClientHello body; a handshake
 *                     header with its true length is put in front and the
 *                     message framed in handshake records, so mutations
 *                     reach the extensions instead of dying at the framing
 *              bit 1: with wrap, records of random sizes (1 to 64 bytes),
 *                     else one record
 *              bit 2: with wrap, a change_cipher_spec record after it
 *              bit 3: with wrap, records of one byte each (6 raw bytes per
 *                     message byte: bodies over 3.4 KB pass the raw bound)
 *              bit 4: 16 KB of copies of the input are appended, so what
 *                     follows a hello runs into the raw bound
 *   without wrap the payload is what the client sent.
 *
 * The input is fed whole, in random pieces and one byte at a time; the
 * outcomes (state, sni, tls13, legacy_version, error, error_pos, len and
 * the raw bytes) must all be equal, else abort(). Every run also checks
 * the contract: raw is a prefix of the input, an ERROR is sticky, an
 * accepted name is a lower-case DNS name. Each piece lives in an
 * exact-size heap buffer (reused while the size repeats) so AddressSanitizer
 * sees any read past what the parser was given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/tls_hello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_tls_hello: check failed: %s (line %d)\n",  \
			        #cond, __LINE__);                                        \
			abort();                                                         \
		}                                                                        \
	} while (0)

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* An accepted name: 1 to 253 of [a-z0-9._-], no empty label, no trailing dot. */
static void check_name(const char *s)
{
	size_t n = strlen(s), i, label = 0;

	if (n == 0)
		return;
	CHECK(n <= TLS_HELLO_NAME_MAX);
	for (i = 0; i < n; i++) {
		char c = s[i];

		CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
		      c == '_' || c == '.');
		if (c == '.') {
			CHECK(i > label);
			label = i + 1;
		} else {
			CHECK(i - label < 63);
		}
	}
	CHECK(label < n);
}

/*
 * Feeds in cut at the ascending offsets cuts[0..ncuts) into h, checking
 * the contract after every call.
 */
static void run(struct tls_hello *h, const uint8_t *in, size_t n, const size_t *cuts,
                size_t ncuts)
{
	enum tls_hello_result prev = TLS_HELLO_NEED_MORE;
	size_t from = 0, k, piece_len = 0;
	uint8_t *piece = NULL;

	tls_hello_init(h);
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, before = h->len;
		enum tls_hello_result r;

		/* exact size; kept while the size repeats (one byte at a time) */
		if (piece == NULL || plen != piece_len) {
			free(piece);
			piece = malloc(plen != 0 ? plen : 1);
			piece_len = plen;
			CHECK(piece != NULL);
		}
		if (plen > 0)
			memcpy(piece, in + from, plen);
		r = tls_hello_feed(h, piece, plen);
		CHECK(r == h->state && r < TLS_HELLO_RESULT_COUNT);
		CHECK(h->len <= TLS_HELLO_RAW_MAX);
		if (prev == TLS_HELLO_ERROR)
			CHECK(r == TLS_HELLO_ERROR && h->len == before);
		if (prev == TLS_HELLO_OK)
			CHECK(r != TLS_HELLO_NEED_MORE);
		if (r == TLS_HELLO_ERROR) {
			CHECK(h->error != NULL && h->error_pos <= h->len);
			CHECK(h->sni[0] == '\0' && h->tls13 == 0);
		} else {
			CHECK(h->error == NULL && h->len == before + plen);
		}
		prev = r;
		from = to;
	}
	free(piece);
	CHECK(h->len <= n && (h->len == 0 || memcmp(h->raw, in, h->len) == 0));
	CHECK(memchr(h->sni, '\0', sizeof(h->sni)) != NULL);
	if (h->state == TLS_HELLO_OK)
		check_name(h->sni);
}

static void compare(const char *what, const struct tls_hello *a,
                    const struct tls_hello *b)
{
	if (a->state == b->state && strcmp(a->sni, b->sni) == 0 && a->tls13 == b->tls13 &&
	    a->legacy_version == b->legacy_version && a->error == b->error &&
	    a->error_pos == b->error_pos && a->len == b->len &&
	    memcmp(a->raw, b->raw, a->len) == 0)
		return;
	fprintf(
	    stderr,
	    "fuzz_tls_hello: %s differs from fed whole: state %d/%d sni \"%s\"/\"%s\" "
	    "error \"%s\"/\"%s\" at %zu/%zu len %zu/%zu\n",
	    what, a->state, b->state, a->sni, b->sni, a->error ? a->error : "",
	    b->error ? b->error : "", a->error_pos, b->error_pos, a->len, b->len);
	abort();
}

/* Puts a 5-byte handshake record header for a fragment of n bytes at out. */
static size_t put_record_header(uint8_t *out, size_t n, int first)
{
	out[0] = 22;
	out[1] = 3;
	out[2] = first ? 1 : 3;
	out[3] = (uint8_t)(n >> 8);
	out[4] = (uint8_t)n;
	return 5;
}

/*
 * The wrap mode: body as a ClientHello message in handshake records (sizes
 * from the seed when split), optionally followed by a CCS record. Returns
 * a new heap buffer of *n_r bytes.
 */
static uint8_t *wrap(const uint8_t *body, size_t n, unsigned flags, uint64_t *seed,
                     size_t *n_r)
{
	size_t msg_n = 4 + n, off = 0, o = 0;
	uint8_t *msg = malloc(msg_n);
	/* at worst one record per message byte, plus the CCS record */
	uint8_t *out = malloc(msg_n * 6 + 6);

	CHECK(msg != NULL && out != NULL);
	msg[0] = 1;
	msg[1] = (uint8_t)(n >> 16);
	msg[2] = (uint8_t)(n >> 8);
	msg[3] = (uint8_t)n;
	memcpy(msg + 4, body, n);
	while (off < msg_n) {
		size_t f = msg_n - off;

		if (flags & 8) {
			f = 1;
		} else if (flags & 2) {
			size_t want = 1 + (size_t)(rng_next(seed) % 64);

			if (f > want)
				f = want;
		} else if (f > 16384) {
			f = 16384;
		}
		o += put_record_header(out + o, f, off == 0);
		memcpy(out + o, msg + off, f);
		o += f;
		off += f;
	}
	if (flags & 4) {
		memcpy(out + o, "\x14\x03\x03\x00\x01\x01", 6);
		o += 6;
	}
	free(msg);
	*n_r = o;
	return out;
}

/* libFuzzer entry: one input as laid out at the top of this file; 0 or abort(). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tls_hello whole, got;
	uint64_t seed;
	const uint8_t *in;
	uint8_t *wrapped = NULL;
	size_t n, i, ncuts, maxpiece;
	size_t *cuts;

	if (size < 3)
		return 0;
	seed = ((uint64_t)data[0] << 8 | data[1]) * 0x9e3779b97f4a7c15ULL + 1;
	in = data + 3;
	n = size - 3;
	if (data[2] & 1) {
		wrapped = wrap(in, n, data[2], &seed, &n);
		in = wrapped;
	}
	if ((data[2] & 16) && n > 0) {
		size_t total = n + 16384;
		uint8_t *more = malloc(total);

		CHECK(more != NULL);
		for (i = 0; i < total; i += n)
			memcpy(more + i, in, total - i < n ? total - i : n);
		free(wrapped);
		wrapped = more;
		in = wrapped;
		n = total;
	}
	cuts = calloc(n + 1, sizeof(*cuts));
	CHECK(cuts != NULL);

	run(&whole, in, n, NULL, 0);

	maxpiece = 1 + (size_t)(rng_next(&seed) % (data[0] & 1 ? 8 : 600));
	for (ncuts = 0, i = 0;;) {
		i += 1 + (size_t)(rng_next(&seed) % maxpiece);
		if (i >= n)
			break;
		cuts[ncuts++] = i;
	}
	run(&got, in, n, cuts, ncuts);
	compare("fed in pieces", &whole, &got);

	/* byte by byte; for inputs made long by bit 4 only now and then: slow */
	if (n <= 4096 || (data[1] & 7) == 0) {
		for (i = 0; i + 1 < n; i++)
			cuts[i] = i + 1;
		run(&got, in, n, cuts, n > 0 ? n - 1 : 0);
		compare("fed byte by byte", &whole, &got);
	}

	free(cuts);
	free(wrapped);
	return 0;
}
