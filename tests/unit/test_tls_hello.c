/*
 * test_tls_hello.c - Check suite for proxy/tls_hello.c.
 *
 * Inputs are real ClientHellos, captured on loopback from openssl s_client
 * (OpenSSL 3.0; TLS 1.3 and -tls1_2, with -servername mail.example.test
 * and with -noservername) and from Python's ssl module (TLS 1.3 with
 * server_hostname "Mail.Example.TEST", TLS 1.2 without SNI), and hellos
 * made by the small builder below, then broken one field at a time.
 *
 * Every case is fed whole, one byte at a time, split in two at every point
 * (strided for big inputs) and in random pieces; every run must reach the
 * same outcome (state, server name, tls13, legacy_version, error and its
 * offset, the raw bytes kept), and that outcome must be the expected one.
 * Each piece is copied into its own heap buffer of exactly its size, so
 * AddressSanitizer catches a parser that reads past what it was given.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/tls_hello.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Split inputs at every point only up to this size; larger ones are strided. */
#define SPLIT_ALL_MAX 4096
#define RANDOM_SPLITS 30

/*
 * ck_assert records a mark point (a write to Check's pipe) on every passing
 * check; the per-call checks below run millions of times, so they only call
 * into Check when they fail.
 */
#define REQUIRE(cond, ...)                                                               \
	do {                                                                             \
		if (!(cond))                                                             \
			ck_abort_msg(__VA_ARGS__);                                       \
	} while (0)

/* ---------------- captured ClientHellos ---------------- */

static const char ossl_tls13_sni_hex[] =
    "160301013e0100013a0303e54edfb1f4a5a24d2c7f53e890a783279d661266a324bdb427"
    "45ee3bc63a74df20e72ab8983786a04a430be85d09e13ca76e383d98253ae615f685bbff"
    "a5f71974003e130213031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006b"
    "c023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000b3"
    "0000001600140000116d61696c2e6578616d706c652e74657374000b000403000102000a"
    "00160014001d0017001e0019001801000101010201030104002300000016000000170000"
    "000d002a0028040305030603080708080809080a080b0804080508060401050106010303"
    "03010302040205020602002b0009080304030303020301002d0002010100330026002400"
    "1d00204abda8265a1298c923724dab4d4ed04d7294ed6c932c9fbbd3db9564584a6e0d";

static const char ossl_tls12_sni_hex[] =
    "16030100d1010000cd0303f48118425044e6466775b5724dfe2b33e12a3a0d1c5e2193ba"
    "8f4c60c879131f000038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023"
    "c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff0100006c0000"
    "001600140000116d61696c2e6578616d706c652e74657374000b000403000102000a000c"
    "000a001d0017001e00190018002300000016000000170000000d002a0028040305030603"
    "080708080809080a080b080408050806040105010601030303010302040205020602";

static const char ossl_tls13_nosni_hex[] =
    "1603010124010001200303585315ef6a54241406ec54747467cdd1101d71149df0cc7f8e"
    "ca574d858539fc20c4b185adcbef2757346bd5f13731ceac1bb33903971d8afc79338db0"
    "50e3a62b003e130213031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006b"
    "c023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000099"
    "000b000403000102000a00160014001d0017001e00190018010001010102010301040023"
    "00000016000000170000000d002a0028040305030603080708080809080a080b08040805"
    "0806040105010601030303010302040205020602002b0009080304030303020301002d00"
    "020101003300260024001d0020d058995c71e1628727e540d462dcbb576c72203dedae58"
    "dfa107b03cd8b42b2b";

static const char ossl_tls12_nosni_hex[] =
    "16030100b7010000b30303687bec58c1ac310c674c8731965916a14190517c75166d4e20"
    "a2b54f3811a95a000038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023"
    "c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000052000b"
    "000403000102000a000c000a001d0017001e00190018002300000016000000170000000d"
    "002a0028040305030603080708080809080a080b08040805080604010501060103030301"
    "0302040205020602";

static const char py_tls13_sni_hex[] =
    "1603010200010001fc0303d41c49c54b83493afb5cca6f6fc1b2f1f53974924f41fa4b1a"
    "bb373691f78ff120be592de401e47b3db5dfad47125e12193c91786fc4b1ae3fe1c8352a"
    "eadfa0740024130213031301c02cc030c02bc02fcca9cca8c024c028c023c027009f009e"
    "006b006700ff0100018f0000001600140000114d61696c2e4578616d706c652e54455354"
    "000b000403000102000a00160014001d0017001e00190018010001010102010301040023"
    "00000016000000170000000d002a0028040305030603080708080809080a080b08040805"
    "0806040105010601030303010302040205020602002b00050403040303002d0002010100"
    "3300260024001d0020b4fef0e41853246993275643a7f3e3d7a99aa4e561c76968321082"
    "a39032d61d001500dc000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000";

static const char py_tls12_nosni_hex[] =
    "160301009d010000990303136858c5db231a92857d26087024b3f3c4d71e7a79fdbde466"
    "167a372212c65400001ec02cc030c02bc02fcca9cca8c024c028c023c027009f009e006b"
    "006700ff01000052000b000403000102000a000c000a001d0017001e0019001800230000"
    "0016000000170000000d002a0028040305030603080708080809080a080b080408050806"
    "040105010601030303010302040205020602";

struct capture {
	const char *name;
	const char *hex;
	const char *sni;
	int tls13;
};

static const struct capture captures[] = {
    {"openssl TLS 1.3 with SNI", ossl_tls13_sni_hex, "mail.example.test", 1},
    {"openssl TLS 1.2 with SNI", ossl_tls12_sni_hex, "mail.example.test", 0},
    {"openssl TLS 1.3 without SNI", ossl_tls13_nosni_hex, "", 1},
    {"openssl TLS 1.2 without SNI", ossl_tls12_nosni_hex, "", 0},
    {"python TLS 1.3, upper-case SNI", py_tls13_sni_hex, "mail.example.test", 1},
    {"python TLS 1.2 without SNI", py_tls12_nosni_hex, "", 0},
};

/* ---------------- a growable byte buffer and the hello builder ---------------- */

struct buf {
	unsigned char *p;
	size_t n, cap;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		size_t ncap = b->cap != 0 ? b->cap : 256;

		while (ncap < b->n + n)
			ncap *= 2;
		b->p = realloc(b->p, ncap);
		REQUIRE(b->p != NULL, "out of memory");
		b->cap = ncap;
	}
	if (n > 0)
		memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void put8(struct buf *b, unsigned v)
{
	unsigned char c = (unsigned char)v;

	buf_put(b, &c, 1);
}

static void put16(struct buf *b, unsigned v)
{
	put8(b, v >> 8);
	put8(b, v);
}

static void put24(struct buf *b, size_t v)
{
	put8(b, (unsigned)(v >> 16));
	put16(b, (unsigned)(v & 0xffff));
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Appends the bytes a hex string spells. */
static void buf_hex(struct buf *b, const char *hex)
{
	size_t i, n = strlen(hex);

	REQUIRE(n % 2 == 0, "odd hex string");
	for (i = 0; i < n; i += 2) {
		unsigned v;

		REQUIRE(sscanf(hex + i, "%2x", &v) == 1, "bad hex at %zu", i);
		put8(b, v);
	}
}

/* The offset of the first occurrence of needle in b (which must hold it). */
static size_t buf_find(const struct buf *b, const void *needle, size_t n)
{
	size_t i;

	for (i = 0; i + n <= b->n; i++)
		if (memcmp(b->p + i, needle, n) == 0)
			return i;
	ck_abort_msg("needle not found");
	return 0;
}

/*
 * Offsets in a hello from build_hello (one record, builder body): the
 * record header at 0, the handshake header at 5, the body at 9.
 */
enum {
	AT_HS = 5,
	AT_VERSION = 9,
	AT_SID_LEN = 43,
	AT_CS_LEN = 76,
	AT_COMP_LEN = 82,
	AT_EXTS_LEN = 84,
	AT_EXTS = 86,             /* the first extension */
	AT_SNI_NAME = AT_EXTS + 9 /* its name, when it is ext_sni */
};

/*
 * A ClientHello body (RFC 8446 section 4.1.2): version, a fixed random, a
 * 32-byte session id, two cipher suites, null compression, then the
 * extensions block exts, or none at all when exts is NULL.
 */
static void build_body(struct buf *b, unsigned version, const struct buf *exts)
{
	unsigned char random[32], sid[32];
	size_t i;

	for (i = 0; i < 32; i++) {
		random[i] = (unsigned char)(0xa0 + i);
		sid[i] = (unsigned char)(0x40 + i);
	}
	put16(b, version);
	buf_put(b, random, sizeof(random));
	put8(b, sizeof(sid));
	buf_put(b, sid, sizeof(sid));
	put16(b, 4);
	put16(b, 0x1301);
	put16(b, 0xc02f);
	put8(b, 1);
	put8(b, 0);
	if (exts != NULL) {
		put16(b, (unsigned)exts->n);
		buf_put(b, exts->p, exts->n);
	}
}

/* A handshake message: type, 24-bit length, body. */
static void build_msg(struct buf *m, unsigned type, const unsigned char *body, size_t n)
{
	put8(m, type);
	put24(m, n);
	buf_put(m, body, n);
}

/*
 * Frames msg in handshake records, the first with version 0x0301 and the
 * others 0x0303 as clients do. frags lists fragment sizes, 0-terminated;
 * the last record takes what is left (one record for frags NULL).
 */
static void build_records(struct buf *out, const unsigned char *msg, size_t n,
                          const size_t *frags)
{
	size_t off = 0, k = 0;

	while (off < n) {
		size_t f = frags != NULL && frags[k] != 0 ? frags[k++] : n - off;

		if (f > n - off)
			f = n - off;
		put8(out, 22);
		put16(out, off == 0 ? 0x0301 : 0x0303);
		put16(out, (unsigned)f);
		buf_put(out, msg + off, f);
		off += f;
	}
}

/* A whole ClientHello with the extensions exts (NULL: none), framed by frags. */
static void build_hello(struct buf *out, const struct buf *exts, const size_t *frags)
{
	struct buf body = {0}, msg = {0};

	build_body(&body, 0x0303, exts);
	build_msg(&msg, 1, body.p, body.n);
	build_records(out, msg.p, msg.n, frags);
	buf_free(&body);
	buf_free(&msg);
}

static void ext_add(struct buf *e, unsigned type, const void *data, size_t n)
{
	put16(e, type);
	put16(e, (unsigned)n);
	buf_put(e, data, n);
}

/* server_name (RFC 6066 section 3) with one host_name entry of n bytes. */
static void ext_sni(struct buf *e, const void *name, size_t n)
{
	struct buf d = {0};

	put16(&d, (unsigned)n + 3);
	put8(&d, 0);
	put16(&d, (unsigned)n);
	buf_put(&d, name, n);
	ext_add(e, 0, d.p, d.n);
	buf_free(&d);
}

/* Two everyday extensions: supported_groups and extended_master_secret. */
static void ext_common(struct buf *e)
{
	ext_add(e, 10, "\x00\x04\x00\x1d\x00\x17", 6);
	ext_add(e, 23, NULL, 0);
}

/*
 * A hello whose handshake message is msg_size bytes, filled up with a
 * padding extension (RFC 7685), framed by frags.
 */
static void build_padded(struct buf *out, size_t msg_size, const size_t *frags)
{
	/* 4 header + 75 fixed body + 2 extensions length + 4 padding header */
	size_t fixed = 4 + 75 + 2 + 4;
	struct buf exts = {0};
	unsigned char *pad;

	REQUIRE(msg_size >= fixed, "message too small to pad");
	pad = calloc(1, msg_size - fixed + 1);
	REQUIRE(pad != NULL, "out of memory");
	ext_add(&exts, 21, pad, msg_size - fixed);
	build_hello(out, &exts, frags);
	free(pad);
	buf_free(&exts);
}

/* ---------------- runs ---------------- */

/* What a run ends with; runs of one input must all end alike. */
struct outcome {
	enum tls_hello_result state;
	char sni[TLS_HELLO_NAME_MAX + 1];
	int tls13;
	unsigned legacy_version;
	const char *error;
	size_t error_pos;
	size_t len;
};

/* What a case expects. */
struct expect {
	enum tls_hello_result state;
	const char *sni; /* OK: the name, "" for none */
	int tls13;
	unsigned legacy_version; /* OK: 0 stands for 0x0303 */
	const char *error;       /* ERROR: a part of the reason */
	size_t error_pos;
	size_t len; /* raw bytes kept; 0 stands for the whole input */
};

#define X_OK(name, v13) .state = TLS_HELLO_OK, .sni = name, .tls13 = v13
#define X_ERR(why, pos) .state = TLS_HELLO_ERROR, .error = why, .error_pos = pos

/*
 * Feeds in cut at the ascending offsets cuts[0..ncuts) and records the
 * outcome. Checks the contract on every call: the result is h->state,
 * ERROR is sticky and changes nothing, OK never goes back, bytes are kept
 * unless ERROR, error set exactly on ERROR and pointing inside raw; at the
 * end raw holds the first len input bytes.
 */
static void run(const char *name, const unsigned char *in, size_t n, const size_t *cuts,
                size_t ncuts, struct outcome *o)
{
	struct tls_hello *h = malloc(sizeof(*h));
	enum tls_hello_result prev = TLS_HELLO_NEED_MORE;
	size_t from = 0, k;

	REQUIRE(h != NULL, "out of memory");
	tls_hello_init(h);
	REQUIRE(h->state == TLS_HELLO_NEED_MORE && h->len == 0 && h->sni[0] == '\0' &&
	            h->error == NULL,
	        "%s: init", name);
	for (k = 0; k <= ncuts; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		size_t plen = to - from, before = h->len;
		unsigned char *piece = malloc(plen != 0 ? plen : 1);
		enum tls_hello_result r;

		REQUIRE(piece != NULL, "out of memory");
		if (plen > 0)
			memcpy(piece, in + from, plen);
		r = tls_hello_feed(h, piece, plen);
		free(piece);
		REQUIRE(r == h->state, "%s: result %d, state %d", name, r, h->state);
		REQUIRE(h->len <= TLS_HELLO_RAW_MAX, "%s: len over the bound", name);
		if (prev == TLS_HELLO_ERROR)
			REQUIRE(r == TLS_HELLO_ERROR && h->len == before,
			        "%s: ERROR not sticky", name);
		if (prev == TLS_HELLO_OK)
			REQUIRE(r != TLS_HELLO_NEED_MORE, "%s: OK went back", name);
		if (r == TLS_HELLO_ERROR) {
			REQUIRE(h->error != NULL && h->error[0] != '\0',
			        "%s: ERROR without a reason", name);
			REQUIRE(h->error_pos <= h->len && h->len <= before + plen,
			        "%s: error_pos %zu, len %zu", name, h->error_pos, h->len);
			REQUIRE(h->sni[0] == '\0' && h->tls13 == 0,
			        "%s: results left on ERROR", name);
		} else {
			REQUIRE(h->error == NULL, "%s: error set without ERROR", name);
			REQUIRE(h->len == before + plen, "%s: bytes not kept", name);
		}
		prev = r;
		from = to;
	}
	REQUIRE(h->len <= n && (h->len == 0 || memcmp(h->raw, in, h->len) == 0),
	        "%s: raw is not the input", name);
	REQUIRE(memchr(h->sni, '\0', sizeof(h->sni)) != NULL, "%s: sni unterminated",
	        name);
	memset(o, 0, sizeof(*o));
	o->state = h->state;
	memcpy(o->sni, h->sni, sizeof(o->sni));
	o->tls13 = h->tls13;
	o->legacy_version = h->legacy_version;
	o->error = h->error;
	o->error_pos = h->error_pos;
	o->len = h->len;
	free(h);
}

static void outcome_dump(const char *what, const struct outcome *o)
{
	fprintf(stderr,
	        "  %s: state %d sni \"%s\" tls13 %d version %04x error \"%s\" at %zu len "
	        "%zu\n",
	        what, o->state, o->sni, o->tls13, o->legacy_version,
	        o->error != NULL ? o->error : "", o->error_pos, o->len);
}

static int outcome_eq(const struct outcome *a, const struct outcome *b)
{
	return a->state == b->state && strcmp(a->sni, b->sni) == 0 &&
	       a->tls13 == b->tls13 && a->legacy_version == b->legacy_version &&
	       a->error == b->error && a->error_pos == b->error_pos && a->len == b->len;
}

static void outcome_compare(const char *name, const struct outcome *want,
                            const struct outcome *got, const char *mode, size_t at)
{
	if (outcome_eq(want, got))
		return;
	fprintf(stderr, "%s: fed %s (%zu) differs from fed whole\n", name, mode, at);
	outcome_dump("whole", want);
	outcome_dump(mode, got);
	ck_abort_msg("%s: outcome differs fed %s (%zu)", name, mode, at);
}

/* xorshift64: deterministic random splits */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/*
 * Runs in fed whole, checks the outcome against x, then fed one byte at a
 * time, split in two at every point and in random pieces against the
 * outcome fed whole.
 */
static void check_case(const char *name, const unsigned char *in, size_t n,
                       const struct expect *x)
{
	struct outcome whole, got;
	size_t *cuts = calloc(n + 1, sizeof(*cuts));
	size_t i, s, stride;
	uint64_t seed = 0x9e3779b97f4a7c15ULL ^ n;

	ck_assert_ptr_nonnull(cuts);
	run(name, in, n, NULL, 0, &whole);
	if (whole.state != x->state ||
	    (x->state == TLS_HELLO_OK &&
	     (strcmp(whole.sni, x->sni) != 0 || whole.tls13 != x->tls13 ||
	      whole.legacy_version !=
	          (x->legacy_version != 0 ? x->legacy_version : 0x0303))) ||
	    (x->state == TLS_HELLO_ERROR && (strstr(whole.error, x->error) == NULL ||
	                                     whole.error_pos != x->error_pos)) ||
	    whole.len != (x->len != 0 ? x->len : n)) {
		outcome_dump("got", &whole);
		fprintf(
		    stderr,
		    "  want: state %d sni \"%s\" tls13 %d error \"%s\" at %zu len %zu\n",
		    x->state, x->sni != NULL ? x->sni : "", x->tls13,
		    x->error != NULL ? x->error : "", x->error_pos,
		    x->len != 0 ? x->len : n);
		ck_abort_msg("%s: unexpected outcome", name);
	}

	for (i = 0; i + 1 < n; i++)
		cuts[i] = i + 1;
	run(name, in, n, cuts, n > 0 ? n - 1 : 0, &got);
	outcome_compare(name, &whole, &got, "byte by byte", 0);

	stride = n <= SPLIT_ALL_MAX ? 1 : 97;
	for (s = 0; s <= n; s += (s < 64 || s + 64 > n) ? 1 : stride) {
		cuts[0] = s;
		run(name, in, n, cuts, 1, &got);
		outcome_compare(name, &whole, &got, "split at", s);
	}

	for (i = 0; i < RANDOM_SPLITS && n > 1; i++) {
		size_t k = 0, at = 0;

		while (at < n) {
			at += 1 + rng_next(&seed) % (i % 2 ? 7 : 300);
			if (at < n)
				cuts[k++] = at;
		}
		run(name, in, n, cuts, k, &got);
		outcome_compare(name, &whole, &got, "random pieces", i);
	}
	free(cuts);
}

static void check_buf(const char *name, const struct buf *b, const struct expect *x)
{
	check_case(name, b->p, b->n, x);
}

/* ---------------- captured hellos ---------------- */

START_TEST(test_captured)
{
	const struct capture *c = &captures[_i];
	struct buf in = {0}, more = {0}, frag = {0};
	struct expect x = {X_OK(c->sni, c->tls13)};
	size_t msg_n, frags[3];

	buf_hex(&in, c->hex);
	check_buf(c->name, &in, &x);

	/* what follows the hello (a compatibility CCS, early data) is kept */
	buf_put(&more, in.p, in.n);
	buf_hex(&more, "140303000101"
	               "1703030005"
	               "0102030405");
	check_buf(c->name, &more, &x);

	/* the same message in two and in three records */
	msg_n = in.n - 5;
	frags[0] = msg_n / 2;
	frags[1] = 0;
	build_records(&frag, in.p + 5, msg_n, frags);
	check_buf(c->name, &frag, &x);
	frag.n = 0;
	frags[0] = 3; /* the handshake header spans two records */
	frags[1] = msg_n / 3;
	frags[2] = 0;
	build_records(&frag, in.p + 5, msg_n, frags);
	ck_assert_uint_eq(frag.n, in.n + 10);
	check_buf(c->name, &frag, &x);

	buf_free(&in);
	buf_free(&more);
	buf_free(&frag);
}
END_TEST

START_TEST(test_captured_details)
{
	struct buf in = {0};
	size_t at;
	struct expect x = {X_OK("mail.example.test", 1)};
	struct tls_hello *h = malloc(sizeof(*h));

	ck_assert_ptr_nonnull(h);
	/* python sent the name as given: "Mail.Example.TEST", stored lower case */
	buf_hex(&in, py_tls13_sni_hex);
	at = buf_find(&in, "Mail.Example.TEST", 17);
	tls_hello_init(h);
	ck_assert_int_eq(tls_hello_feed(h, in.p, in.n), TLS_HELLO_OK);
	ck_assert_str_eq(h->sni, "mail.example.test");
	ck_assert_int_eq(h->tls13, 1);
	ck_assert_uint_eq(h->legacy_version, 0x0303);
	ck_assert_uint_eq(h->len, in.n);
	ck_assert_ptr_null(h->error);
	/* later bytes are appended, the results stay */
	ck_assert_int_eq(tls_hello_feed(h, "\x14\x03\x03\x00\x01\x01", 6), TLS_HELLO_OK);
	ck_assert_uint_eq(h->len, in.n + 6);
	ck_assert_int_eq(memcmp(h->raw + in.n, "\x14\x03\x03\x00\x01\x01", 6), 0);
	ck_assert_str_eq(h->sni, "mail.example.test");
	ck_assert_int_eq(tls_hello_feed(h, NULL, 0), TLS_HELLO_OK);
	ck_assert_uint_eq(h->len, in.n + 6);
	check_buf("python hello", &in, &x);

	/* a bad byte in a real name: refused at that byte */
	in.p[at + 4] = '!';
	x = (struct expect){X_ERR("character", at + 4)};
	check_buf("python hello, '!' in the name", &in, &x);
	/* ... and in the third record of three: the offset is still in raw */
	{
		struct buf frag = {0};
		size_t frags[3] = {3, 40, 0};

		build_records(&frag, in.p + 5, in.n - 5, frags);
		x.error_pos = buf_find(&frag, "Mail!Example", 12) + 4;
		ck_assert_uint_eq(x.error_pos, at + 4 + 10);
		check_buf("python hello in 3 records, '!' in the name", &frag, &x);
		buf_free(&frag);
	}
	in.p[at + 4] = '.';

	/* the last byte missing: still waiting */
	x = (struct expect){.state = TLS_HELLO_NEED_MORE};
	check_case("python hello less its last byte", in.p, in.n - 1, &x);
	free(h);
	buf_free(&in);
}
END_TEST

/* ---------------- hand-built hellos that pass ---------------- */

START_TEST(test_built_ok)
{
	struct buf exts = {0}, in = {0};
	size_t frags[4];
	struct expect x = {X_OK("mail.example.test", 0)};

	ext_sni(&exts, "mail.example.test", 17);
	ext_common(&exts);
	build_hello(&in, &exts, NULL);
	check_buf("builder hello", &in, &x);

	/* fragmented: 2 records, then 4 with the handshake header split */
	in.n = 0;
	frags[0] = 40;
	frags[1] = 0;
	build_hello(&in, &exts, frags);
	check_buf("two records", &in, &x);
	in.n = 0;
	frags[0] = 1;
	frags[1] = 1;
	frags[2] = 50;
	frags[3] = 0;
	build_hello(&in, &exts, frags);
	check_buf("four records, header split", &in, &x);

	/* the hello, then another handshake message in the same record */
	{
		struct buf body = {0}, msg = {0};

		build_body(&body, 0x0303, &exts);
		build_msg(&msg, 1, body.p, body.n);
		build_msg(&msg, 20, (const unsigned char *)"finished", 8);
		in.n = 0;
		build_records(&in, msg.p, msg.n, NULL);
		check_buf("another message after the hello in its record", &in, &x);
		buf_free(&body);
		buf_free(&msg);
	}

	/* no server_name */
	exts.n = 0;
	ext_common(&exts);
	in.n = 0;
	build_hello(&in, &exts, NULL);
	x.sni = "";
	check_buf("no SNI", &in, &x);

	/* an empty extensions block */
	exts.n = 0;
	in.n = 0;
	build_hello(&in, &exts, NULL);
	check_buf("empty extensions block", &in, &x);

	/* no extensions at all: an old TLS 1.0 hello */
	{
		struct buf body = {0}, msg = {0};

		build_body(&body, 0x0301, NULL);
		build_msg(&msg, 1, body.p, body.n);
		in.n = 0;
		build_records(&in, msg.p, msg.n, NULL);
		x.legacy_version = 0x0301;
		check_buf("TLS 1.0 hello without extensions", &in, &x);
		x.legacy_version = 0;
		buf_free(&body);
		buf_free(&msg);
	}

	/* record versions 3.0 to 3.4 pass */
	exts.n = 0;
	ext_common(&exts);
	in.n = 0;
	build_hello(&in, &exts, NULL);
	in.p[2] = 0;
	check_buf("record version 3.0", &in, &x);
	in.p[2] = 4;
	check_buf("record version 3.4", &in, &x);

	buf_free(&exts);
	buf_free(&in);
}
END_TEST

START_TEST(test_supported_versions)
{
	static const struct {
		const char *name, *hex;
		int tls13;
		const char *error;
	} cases[] = {
	    {"1.3 only", "020304", 1, NULL},
	    {"1.3 and 1.2", "0403040303", 1, NULL},
	    {"GREASE, 1.3, 1.2", "063a3a03040303", 1, NULL},
	    {"1.2 only", "020303", 0, NULL},
	    {"GREASE and 1.2", "040a0a0303", 0, NULL},
	    {"odd list", "03030403", 0, "bad length"},
	    {"empty list", "00", 0, "bad length"},
	    {"list longer than the extension", "040304", 0, "does not match"},
	    {"list shorter than the extension", "0203040303", 0, "does not match"},
	    {"no list at all", "", 0, "too short"},
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf exts = {0}, data = {0}, in = {0};
		struct expect x = {X_OK("mail.example.test", cases[i].tls13)};

		buf_hex(&data, cases[i].hex);
		ext_sni(&exts, "mail.example.test", 17);
		ext_add(&exts, 43, data.p, data.n);
		ext_common(&exts);
		build_hello(&in, &exts, NULL);
		if (cases[i].error != NULL)
			x = (struct expect){X_ERR(cases[i].error, AT_EXTS + 26 + 4)};
		check_buf(cases[i].name, &in, &x);
		buf_free(&exts);
		buf_free(&data);
		buf_free(&in);
	}
}
END_TEST

START_TEST(test_big_hellos)
{
	struct buf in = {0};
	size_t frags[2] = {16384, 0};
	struct expect x = {X_OK("", 0)};

	/* a 16384-byte message fills one record exactly */
	build_padded(&in, 16384, NULL);
	ck_assert_uint_eq(in.n, 5 + 16384);
	check_buf("16384-byte hello in one record", &in, &x);

	/* the largest message, 16388 bytes with its header, in two records */
	in.n = 0;
	build_padded(&in, TLS_HELLO_MSG_MAX + 4, frags);
	ck_assert_uint_eq(in.n, 5 + 16384 + 5 + 4);
	check_buf("largest hello in two records", &in, &x);

	/* ... which does not fit one record */
	in.n = 0;
	build_padded(&in, TLS_HELLO_MSG_MAX + 4, NULL);
	x = (struct expect){X_ERR("longer than 2^14", 3), .len = 5};
	check_buf("largest hello in one record", &in, &x);

	/* one more byte is too large, found at the length's last byte */
	in.n = 0;
	build_padded(&in, TLS_HELLO_MSG_MAX + 5, frags);
	x = (struct expect){X_ERR("ClientHello too large", 6), .len = 9};
	check_buf("hello one byte too large", &in, &x);
	buf_free(&in);
}
END_TEST

/* ---------------- server names ---------------- */

struct name_case {
	const char *name;
	size_t len;      /* of name; 0 stands for strlen */
	const char *sni; /* stored when accepted, NULL when refused */
	const char *error;
	size_t at; /* offset of the error from the name's first byte */
};

#define NAME_OK(n, s)                                                                    \
	{                                                                                \
		n, 0, s, NULL, 0                                                         \
	}
#define NAME_BAD(n, why, off)                                                            \
	{                                                                                \
		n, 0, NULL, why, off                                                     \
	}

/* clang-format off */
static const struct name_case name_cases[] = {
	NAME_OK("mail.example.test", "mail.example.test"),
	NAME_OK("MAIL.Example.TeSt", "mail.example.test"),
	NAME_OK("mail.example.test.", "mail.example.test"),
	NAME_OK("a", "a"),
	NAME_OK("localhost", "localhost"),
	NAME_OK("xn--bcher-kva.example", "xn--bcher-kva.example"),
	NAME_OK("_dmarc.Example.COM", "_dmarc.example.com"),
	NAME_OK("my-host_1.example", "my-host_1.example"),
	NAME_OK("1.2.3.example", "1.2.3.example"),
	NAME_OK("1.2.3.4a", "1.2.3.4a"),
	NAME_OK("host.0x1g", "host.0x1g"),
	NAME_OK("0x7f.example", "0x7f.example"),
	NAME_OK("-.-", "-.-"),
	{"", 1, NULL, "character", 0}, /* one NUL byte */
	NAME_BAD("", "empty server name", 0),
	NAME_BAD(".", "empty server name", 0),
	NAME_BAD("..", "empty label", 0),
	NAME_BAD(".example", "empty label", 0),
	NAME_BAD("a..b", "empty label", 2),
	NAME_BAD("a.b..", "empty label", 4),
	NAME_BAD("1.2.3.4", "IPv4", 0),
	NAME_BAD("1.2.3.4.", "IPv4", 0),
	NAME_BAD("127.1", "IPv4", 0),
	NAME_BAD("2130706433", "IPv4", 0),
	NAME_BAD("0x7f.1", "IPv4", 0),
	NAME_BAD("10.0.0.0x1", "IPv4", 0),
	NAME_BAD("example.0X1F", "IPv4", 0),
	NAME_BAD("::1", "IPv6", 0),
	NAME_BAD("[::1]", "IPv6", 0),
	NAME_BAD("fe80::1%eth0", "IPv6", 0),
	NAME_BAD("::ffff:1.2.3.4", "IPv6", 0),
	NAME_BAD("a b", "character", 1),
	{"a\0b", 3, NULL, "character", 1},
	NAME_BAD("a/b", "character", 1),
	NAME_BAD("*.example.com", "character", 0),
	NAME_BAD("ex\xc3\xa4mple.de", "character", 2),
	NAME_BAD("mail.example.test\r\nX-Injected", "character", 17),
	NAME_BAD("host%", "character", 4),
	NAME_BAD("a,b", "character", 1),
	NAME_BAD("mail.example.test..", "empty label", 18),
};
/* clang-format on */

/* A hello with the server_name name[0..n) first, then two others. */
static void build_sni_hello(struct buf *in, const char *name, size_t n)
{
	struct buf exts = {0};

	ext_sni(&exts, name, n);
	ext_common(&exts);
	build_hello(in, &exts, NULL);
	buf_free(&exts);
}

static void check_name(const char *label, const char *name, size_t n, const char *sni,
                       const char *error, size_t at)
{
	struct buf in = {0};
	struct expect x = {X_OK(sni, 0)};

	build_sni_hello(&in, name, n);
	if (sni == NULL)
		x = (struct expect){X_ERR(error, AT_SNI_NAME + at)};
	check_buf(label, &in, &x);
	buf_free(&in);
}

START_TEST(test_names)
{
	const struct name_case *c = &name_cases[_i];

	check_name(c->name, c->name, c->len != 0 ? c->len : strlen(c->name), c->sni,
	           c->error, c->at);
}
END_TEST

START_TEST(test_name_lengths)
{
	char name[400], want[400];
	size_t i;

	/* 253 = 3 labels of 63, one of 61, and 3 dots */
	memset(name, 'a', sizeof(name));
	name[63] = name[127] = name[191] = '.';
	memcpy(want, name, 253);
	want[253] = '\0';
	check_name("253-character name", name, 253, want, NULL, 0);
	name[253] = '.';
	check_name("253 characters and the root dot", name, 254, want, NULL, 0);
	name[253] = 'a';
	check_name("254-character name", name, 254, NULL, "longer than 253", 0);
	name[254] = '.';
	check_name("254 characters and the root dot", name, 255, NULL, "longer than 253",
	           0);

	/* labels of 63 and 64 */
	memset(name, 'B', sizeof(name));
	for (i = 0; i < 63; i++)
		want[i] = 'b';
	memcpy(want + 63, ".test", 6);
	memcpy(name + 63, ".test", 5);
	check_name("63-character label", name, 68, want, NULL, 0);
	name[63] = 'B';
	memcpy(name + 64, ".test", 5);
	check_name("64-character label", name, 69, NULL, "label longer than 63", 63);
	name[0] = 'x';
	name[1] = '.';
	memset(name + 2, 'c', 64);
	check_name("64-character last label", name, 66, NULL, "label longer than 63", 65);

	/* a name longer than any bound at all */
	check_name("400-byte name", name, sizeof(name), NULL, "longer than 253", 0);
}
END_TEST

START_TEST(test_name_list)
{
	static const struct {
		const char *name, *hex; /* the server_name extension's data */
		const char *sni, *error;
		size_t at; /* error offset from the extension data */
	} cases[] = {
	    {"host_name after another type",
	     "000d"
	     "01000474657374"
	     "000003612e62",
	     "a.b", NULL, 0},
	    {"another type after host_name",
	     "000d"
	     "000003612e62"
	     "01000474657374",
	     "a.b", NULL, 0},
	    {"no host_name entry",
	     "0007"
	     "01000474657374",
	     "", NULL, 0},
	    {"two host names",
	     "000c"
	     "000003612e62"
	     "000003632e64",
	     NULL, "two host names", 8},
	    {"list longer than the extension",
	     "0007"
	     "000003612e62",
	     NULL, "does not match", 0},
	    {"list shorter than the extension",
	     "0005"
	     "000003612e62",
	     NULL, "does not match", 0},
	    {"empty list", "0000", NULL, "empty server_name list", 0},
	    {"one byte", "00", NULL, "too short", 0},
	    {"no data", "", NULL, "too short", 0},
	    {"entry header cut",
	     "0002"
	     "0000",
	     NULL, "entry truncated", 2},
	    {"entry longer than the list",
	     "0006"
	     "000010612e62",
	     NULL, "entry longer than its list", 3},
	    {"empty host_name",
	     "0003"
	     "000000",
	     NULL, "empty server name", 5},
	};
	size_t i;

	for (i = 0; i < ARRAY_LEN(cases); i++) {
		struct buf exts = {0}, data = {0}, in = {0};
		struct expect x = {X_OK(cases[i].sni, 0)};

		buf_hex(&data, cases[i].hex);
		ext_common(&exts);
		ext_add(&exts, 0, data.p, data.n);
		ext_add(&exts, 22, NULL, 0);
		build_hello(&in, &exts, NULL);
		if (cases[i].error != NULL)
			x = (struct expect){
			    X_ERR(cases[i].error, AT_EXTS + 14 + 4 + cases[i].at)};
		check_buf(cases[i].name, &in, &x);
		buf_free(&exts);
		buf_free(&data);
		buf_free(&in);
	}
}
END_TEST

/* ---------------- broken hellos ---------------- */

START_TEST(test_bad_body)
{
	struct buf exts = {0}, in = {0}, body = {0}, msg = {0};
	struct expect x;
	size_t n;

	ext_sni(&exts, "a.example", 9);
	ext_common(&exts);
	build_body(&body, 0x0303, &exts);
	build_hello(&in, &exts, NULL);
	n = in.n;

	/* one field at a time; the checks run in field order */
	in.p[AT_VERSION] = 2;
	x = (struct expect){X_ERR("version is not 3.x", AT_VERSION)};
	check_buf("legacy_version 2.3", &in, &x);
	in.p[AT_VERSION] = 3;
	in.p[AT_SID_LEN] = 33;
	x = (struct expect){X_ERR("session id longer than 32", AT_SID_LEN)};
	check_buf("session id of 33", &in, &x);
	in.p[AT_SID_LEN] = 32;
	in.p[AT_CS_LEN + 1] = 3;
	x = (struct expect){X_ERR("cipher suites list has a bad length", AT_CS_LEN)};
	check_buf("odd cipher suites length", &in, &x);
	in.p[AT_CS_LEN + 1] = 0;
	check_buf("empty cipher suites", &in, &x);
	in.p[AT_CS_LEN + 1] = 4;
	in.p[AT_COMP_LEN] = 0;
	x = (struct expect){X_ERR("empty compression methods", AT_COMP_LEN)};
	check_buf("no compression method", &in, &x);
	in.p[AT_COMP_LEN] = 1;
	in.p[AT_EXTS_LEN + 1]++;
	x = (struct expect){X_ERR("extensions block longer", AT_EXTS_LEN)};
	check_buf("extensions block one too long", &in, &x);
	in.p[AT_EXTS_LEN + 1] -= 2;
	x = (struct expect){X_ERR("bytes after the extensions block", n - 1)};
	check_buf("extensions block one too short", &in, &x);
	in.p[AT_EXTS_LEN + 1]++;
	in.p[AT_EXTS + 3] = 0x20;
	x = (struct expect){
	    X_ERR("extension longer than the extensions block", AT_EXTS + 2)};
	check_buf("extension length overflow", &in, &x);
	in.p[AT_EXTS + 3] = 14;
	in.p[AT_EXTS + 2] = 0xff;
	check_buf("extension length 0xff0e", &in, &x);
	in.p[AT_EXTS + 2] = 0;
	x = (struct expect){X_OK("a.example", 0)};
	check_buf("restored", &in, &x);

	/* the body cut short, at each field, the message length matching */
	{
		static const struct {
			size_t body_len, at;
			const char *error;
		} cuts[] = {
		    {0, 8, "version or random"},
		    {1, 9, "version or random"},
		    {20, 9, "version or random"},
		    {34, 42, "at the session id"},
		    {40, 43, "in the session id"},
		    {67, 75, "at the cipher suites"},
		    {68, 76, "at the cipher suites"},
		    {70, 76, "in the cipher suites"},
		    {73, 81, "at the compression"},
		    {74, 82, "in the compression"},
		    {76, 84, "at the extensions"},
		    {78, AT_EXTS_LEN, "extensions block longer"},
		};
		size_t i;

		for (i = 0; i < ARRAY_LEN(cuts); i++) {
			msg.n = 0;
			in.n = 0;
			build_msg(&msg, 1, body.p, cuts[i].body_len);
			build_records(&in, msg.p, msg.n, NULL);
			x = (struct expect){X_ERR(cuts[i].error, cuts[i].at)};
			check_buf(cuts[i].error, &in, &x);
		}
		/* cut right after the compression methods: a hello without extensions */
		msg.n = 0;
		in.n = 0;
		build_msg(&msg, 1, body.p, 75);
		build_records(&in, msg.p, msg.n, NULL);
		x = (struct expect){X_OK("", 0)};
		check_buf("cut after compression", &in, &x);
	}

	/* an extension header cut inside the block */
	exts.n = 0;
	ext_common(&exts);
	put8(&exts, 0);
	put16(&exts, 0x17);
	in.n = 0;
	build_hello(&in, &exts, NULL);
	x = (struct expect){X_ERR("extension header truncated", AT_EXTS + 14)};
	check_buf("extension header cut", &in, &x);

	buf_free(&exts);
	buf_free(&in);
	buf_free(&body);
	buf_free(&msg);
}
END_TEST

START_TEST(test_duplicates)
{
	struct buf exts = {0}, in = {0};
	struct expect x;

	ext_common(&exts);
	ext_add(&exts, 23, NULL, 0);
	build_hello(&in, &exts, NULL);
	x = (struct expect){X_ERR("duplicate extension", AT_EXTS + 14)};
	check_buf("extended_master_secret twice", &in, &x);
	/* found at the message's last byte: raw ends there, whatever followed */
	x.len = in.n;
	buf_hex(&in, "140303000101");
	check_buf("extended_master_secret twice, then a CCS", &in, &x);

	/* two server_name extensions: the second name is never looked at */
	exts.n = 0;
	in.n = 0;
	ext_sni(&exts, "a.example", 9);
	ext_sni(&exts, "b.example", 9);
	build_hello(&in, &exts, NULL);
	x = (struct expect){X_ERR("duplicate extension", AT_EXTS + 18)};
	check_buf("server_name twice", &in, &x);

	/* two GREASE extensions of different values are fine */
	exts.n = 0;
	in.n = 0;
	ext_add(&exts, 0x1a1a, NULL, 0);
	ext_sni(&exts, "a.example", 9);
	ext_add(&exts, 0xeaea, "\x00", 1);
	build_hello(&in, &exts, NULL);
	x = (struct expect){X_OK("a.example", 0)};
	check_buf("two GREASE extensions", &in, &x);
	buf_free(&exts);
	buf_free(&in);
}
END_TEST

/* Record-level and handshake-header inputs, as hex. */
struct raw_case {
	const char *name;
	const char *hex;
	struct expect x;
};

/* clang-format off */
static const struct raw_case raw_cases[] = {
	{"nothing", "", {.state = TLS_HELLO_NEED_MORE}},
	{"record header only", "1603010040", {.state = TLS_HELLO_NEED_MORE}},
	{"handshake header cut", "160301004001", {.state = TLS_HELLO_NEED_MORE}},
	{"record length 0", "1603010000", {X_ERR("empty handshake record", 3), .len = 5}},
	{"record length 0, then more", "160301000001", {X_ERR("empty", 3), .len = 5}},
	{"record length 16385", "1603014001", {X_ERR("longer than 2^14", 3), .len = 5}},
	{"record length 65535", "160301ffff01", {X_ERR("longer than 2^14", 3), .len = 5}},
	{"record version 2.0", "1602000004", {X_ERR("version is not 3.x", 1), .len = 2}},
	{"record version 3.5", "1603050004", {X_ERR("above TLS 1.3", 2), .len = 3}},
	{"application data first", "170303000401000000",
	 {X_ERR("not a handshake record", 0), .len = 1}},
	{"alert first", "15030300020228", {X_ERR("not a handshake record", 0), .len = 1}},
	{"change_cipher_spec first", "140303000101",
	 {X_ERR("not a handshake record", 0), .len = 1}},
	{"content type 0", "0003030001", {X_ERR("not TLS", 0), .len = 1}},
	{"server_hello", "16030300040200004603", {X_ERR("not a ClientHello", 5), .len = 6}},
	{"hello_request", "160303000400000000", {X_ERR("not a ClientHello", 5), .len = 6}},
	{"server_hello in the second record", "160301000102",
	 {X_ERR("not a ClientHello", 5), .len = 6}},
	{"handshake length 16385", "1603010004010040010000",
	 {X_ERR("ClientHello too large", 6), .len = 9}},
	{"handshake length 2^24-1", "160301000401ffffff",
	 {X_ERR("ClientHello too large", 6), .len = 9}},
	{"handshake length across records", "16030100020100" "16030300024001",
	 {X_ERR("ClientHello too large", 6), .len = 14}},
	{"handshake length 16384 waits", "1603010004010040001603030001",
	 {.state = TLS_HELLO_NEED_MORE}},
	{"empty ClientHello", "160301000401000000",
	 {X_ERR("truncated in its version or random", 8)}},
	{"alert in the middle", "16030100020100" "15030300020228",
	 {X_ERR("another type before the ClientHello", 7), .len = 8}},
	{"CCS in the middle", "16030100020100" "140303000101",
	 {X_ERR("another type before the ClientHello", 7), .len = 8}},
	{"empty record in the middle", "16030100020100" "1603030000",
	 {X_ERR("empty handshake record", 10), .len = 12}},
	{"bad version in the middle", "16030100020100" "1604",
	 {X_ERR("version is not 3.x", 8), .len = 9}},
	/* plaintext clients on a TLS port */
	{"POP3 USER", "5553455220666f6f0d0a", {X_ERR("not TLS (a plaintext client", 0), .len = 1}},
	{"IMAP LOGIN", "6131204c4f47494e207520700d0a", {X_ERR("not TLS", 0), .len = 1}},
	{"HTTP", "474554202f20485454502f312e310d0a", {X_ERR("not TLS", 0), .len = 1}},
	{"CRLF", "0d0a", {X_ERR("not TLS", 0), .len = 1}},
	/* SSLv2-compatible CLIENT-HELLO (RFC 5246 appendix E.2) */
	{"SSLv2 hello", "802e0103010015000000100700c00500800300800100800600400400800200800102030405060708090a0b0c0d0e0f10",
	 {X_ERR("SSLv2 hello not supported", 0), .len = 1}},
	{"NUL byte first", "00", {X_ERR("not TLS", 0), .len = 1}},
};
/* clang-format on */

START_TEST(test_raw_cases)
{
	const struct raw_case *c = &raw_cases[_i];
	struct buf in = {0};

	buf_hex(&in, c->hex);
	check_case(c->name, in.p, in.n, &c->x);
	buf_free(&in);
}
END_TEST

/* ---------------- bounds on raw ---------------- */

START_TEST(test_raw_bound)
{
	size_t *frags = calloc(900, sizeof(*frags));
	struct buf in = {0};
	struct expect x = {X_OK("", 0)};
	size_t i;

	ck_assert_ptr_nonnull(frags);
	/* 819 one-byte records and the rest: 820 headers + 16380 = 20480 exactly */
	for (i = 0; i < 819; i++)
		frags[i] = 1;
	build_padded(&in, 16380, frags);
	ck_assert_uint_eq(in.n, TLS_HELLO_RAW_MAX);
	check_buf("hello filling raw exactly", &in, &x);

	/* one byte after it does not fit */
	put8(&in, 0x14);
	x = (struct expect){
	    X_ERR("too much data before the handshake", TLS_HELLO_RAW_MAX),
	    .len = TLS_HELLO_RAW_MAX};
	check_buf("one byte past raw after OK", &in, &x);

	/* one more record: the hello does not fit */
	frags[819] = 1;
	in.n = 0;
	build_padded(&in, 16380, frags);
	ck_assert_uint_eq(in.n, TLS_HELLO_RAW_MAX + 5);
	x = (struct expect){X_ERR("raw bound", TLS_HELLO_RAW_MAX),
	                    .len = TLS_HELLO_RAW_MAX};
	check_buf("hello past raw", &in, &x);

	/* a small hello, then more than raw holds */
	for (i = 0; i < 900; i++)
		frags[i] = 0;
	in.n = 0;
	build_padded(&in, 200, NULL);
	for (i = 0; i < TLS_HELLO_RAW_MAX; i++)
		put8(&in, 0x17);
	x = (struct expect){
	    X_ERR("too much data before the handshake", TLS_HELLO_RAW_MAX),
	    .len = TLS_HELLO_RAW_MAX};
	check_buf("small hello and 20480 bytes more", &in, &x);

	/* an error inside raw comes before the bound */
	in.n = 0;
	for (i = 0; i < 5000; i++)
		buf_hex(&in, "160301000102");
	x = (struct expect){X_ERR("not a ClientHello", 5), .len = 6};
	check_buf("many records, bad first message", &in, &x);
	free(frags);
	buf_free(&in);
}
END_TEST

/* An error is sticky, and a new init starts over. */
START_TEST(test_sticky)
{
	struct tls_hello *h = malloc(sizeof(*h));
	struct buf in = {0};

	ck_assert_ptr_nonnull(h);
	buf_hex(&in, ossl_tls12_sni_hex);
	tls_hello_init(h);
	ck_assert_int_eq(tls_hello_feed(h, "USER", 4), TLS_HELLO_ERROR);
	ck_assert_str_eq(h->error, "not TLS (a plaintext client on a TLS port?)");
	ck_assert_uint_eq(h->error_pos, 0);
	ck_assert_uint_eq(h->len, 1);
	ck_assert_int_eq(tls_hello_feed(h, in.p, in.n), TLS_HELLO_ERROR);
	ck_assert_uint_eq(h->len, 1);
	tls_hello_init(h);
	ck_assert_int_eq(tls_hello_feed(h, in.p, 7), TLS_HELLO_NEED_MORE);
	ck_assert_int_eq(tls_hello_feed(h, NULL, 0), TLS_HELLO_NEED_MORE);
	ck_assert_int_eq(tls_hello_feed(h, in.p + 7, in.n - 7), TLS_HELLO_OK);
	ck_assert_str_eq(h->sni, "mail.example.test");
	ck_assert_int_eq(h->tls13, 0);
	ck_assert_uint_eq(h->legacy_version, 0x0303);
	free(h);
	buf_free(&in);
}
END_TEST

static Suite *tls_hello_suite(void)
{
	Suite *s = suite_create("tls_hello");
	TCase *tc;

	tc = tcase_create("captured");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_captured, 0, (int)ARRAY_LEN(captures));
	tcase_add_test(tc, test_captured_details);
	suite_add_tcase(s, tc);

	tc = tcase_create("built");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_built_ok);
	tcase_add_test(tc, test_supported_versions);
	tcase_add_test(tc, test_big_hellos);
	suite_add_tcase(s, tc);

	tc = tcase_create("names");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_names, 0, (int)ARRAY_LEN(name_cases));
	tcase_add_test(tc, test_name_lengths);
	tcase_add_test(tc, test_name_list);
	suite_add_tcase(s, tc);

	tc = tcase_create("broken");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_bad_body);
	tcase_add_test(tc, test_duplicates);
	tcase_add_loop_test(tc, test_raw_cases, 0, (int)ARRAY_LEN(raw_cases));
	suite_add_tcase(s, tc);

	tc = tcase_create("bounds");
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_raw_bound);
	tcase_add_test(tc, test_sticky);
	suite_add_tcase(s, tc);
	return s;
}

/* Runs the suite; non-zero exit when a test failed. */
int main(void)
{
	SRunner *sr = srunner_create(tls_hello_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
