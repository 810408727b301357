/*
 * test_intercept.c - the local interception CA: what it refuses to load,
 * the shape of a minted leaf, that a client trusting only the local CA
 * accepts exactly the names of the upstream certificate, validity clamped
 * to the upstream's, the cache (hits, expiry, clock going back, LRU
 * eviction), leaves for one name, and how long minting takes.
 *
 * The test PKI is made at run time with the openssl command line in a
 * temporary directory: local CAs (EC P-256, RSA-2048, Ed25519, Ed448), a
 * public CA and upstream leaves it signed. Certificates needed in bulk or
 * with an exact validity are made in-process.
 */
#include <check.h>
#include <ftw.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy/intercept.h"

static char dir[256];

/* dir/file in one of a few rotating buffers (several may be in use at once). */
static const char *pki(const char *file)
{
	static char bufs[8][512];
	static unsigned n;
	char *b = bufs[n++ % 8];

	snprintf(b, sizeof(bufs[0]), "%s/%s", dir, file);
	return b;
}

/* Runs an openssl command in dir; its output goes to dir/openssl.log. */
static int run(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int n;

	n = snprintf(cmd, sizeof(cmd), "cd '%s' && openssl ", dir);
	va_start(ap, fmt);
	n += vsnprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, ap);
	va_end(ap);
	snprintf(cmd + n, sizeof(cmd) - (size_t)n, " >>openssl.log 2>&1");
	return system(cmd);
}

static const char pki_cnf[] =
    "[req]\n"
    "distinguished_name = dn\n"
    "prompt = no\n"
    "[dn]\n"
    "CN = unused\n"
    "[v3_ca]\n"
    "basicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid:always\n"
    "[v3_ca_badku]\n"
    "basicConstraints = critical,CA:TRUE\n"
    "keyUsage = critical,digitalSignature\n"
    "subjectKeyIdentifier = hash\n"
    "[leaf_san]\n"
    "basicConstraints = CA:FALSE\n"
    "keyUsage = critical,digitalSignature\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid\n"
    "subjectAltName = DNS:mail.example.test,email:postmaster@example.test,"
    "DNS:*.example.test,URI:https://example.test/,IP:10.77.2.2\n"
    "[leaf_nosan]\n"
    "basicConstraints = CA:FALSE\n"
    "extendedKeyUsage = serverAuth\n"
    "subjectKeyIdentifier = hash\n"
    "authorityKeyIdentifier = keyid\n";

/* Makes the test PKI in dir; 0 or -1. */
static int make_pki(void)
{
	FILE *f = fopen(pki("pki.cnf"), "w");
	static const struct {
		const char *name, *newkey, *ext, *cn;
	} cas[] = {
	    {"ca_ec", "ec -pkeyopt ec_paramgen_curve:P-256", "v3_ca",
	     "mailmoat test CA EC"},
	    {"ca_rsa", "rsa:2048", "v3_ca", "mailmoat test CA RSA"},
	    {"ca_ed", "ed25519", "v3_ca", "mailmoat test CA Ed25519"},
	    {"ca_ed448", "ed448", "v3_ca", "mailmoat test CA Ed448"},
	    {"pub", "ec -pkeyopt ec_paramgen_curve:P-256", "v3_ca", "Public Test Root"},
	    {"ca_badku", "ec -pkeyopt ec_paramgen_curve:P-256", "v3_ca_badku",
	     "not a signing CA"},
	};
	static const struct {
		const char *name, *cn, *ext;
	} leaves[] = {
	    {"up_san", "mail.example.test", "leaf_san"},
	    {"up_cn", "legacy.example.test", "leaf_nosan"},
	};

	if (f == NULL)
		return -1;
	fputs(pki_cnf, f);
	fclose(f);
	for (size_t i = 0; i < sizeof(cas) / sizeof(cas[0]); i++)
		if (run("req -x509 -config pki.cnf -extensions %s -newkey %s -nodes "
		        "-keyout %s.key -out %s.crt -subj '/CN=%s' -days 30",
		        cas[i].ext, cas[i].newkey, cas[i].name, cas[i].name,
		        cas[i].cn) != 0)
			return -1;
	for (size_t i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++)
		if (run("req -new -config pki.cnf -newkey ec -pkeyopt "
		        "ec_paramgen_curve:P-256 -nodes -keyout %s.key -out %s.csr "
		        "-subj '/O=Example/CN=%s'",
		        leaves[i].name, leaves[i].name, leaves[i].cn) != 0 ||
		    run("x509 -req -in %s.csr -CA pub.crt -CAkey pub.key -set_serial %zu "
		        "-days 2 -extfile pki.cnf -extensions %s -out %s.crt",
		        leaves[i].name, 1001 + i, leaves[i].ext, leaves[i].name) != 0)
			return -1;
	if (run("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "
	        "other.key") != 0 ||
	    run("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-128-cbc "
	        "-pass pass:secret -out encrypted.key") != 0)
		return -1;
	f = fopen(pki("garbage.crt"), "w");
	if (f == NULL)
		return -1;
	fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all\n", f);
	fclose(f);
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* ---- helpers ---- */

static X509 *read_cert(const char *file)
{
	FILE *f = fopen(file, "r");
	X509 *x;

	ck_assert_msg(f != NULL, "cannot open %s", file);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	ck_assert_msg(x != NULL, "cannot read %s", file);
	return x;
}

static EVP_PKEY *read_key(const char *file)
{
	FILE *f = fopen(file, "r");
	EVP_PKEY *k;

	ck_assert_msg(f != NULL, "cannot open %s", file);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	ck_assert_msg(k != NULL, "cannot read %s", file);
	return k;
}

static struct intercept_ca *load_ca(const char *name)
{
	char crt[64], key[64], err[512] = "";
	struct intercept_ca *ca;

	snprintf(crt, sizeof(crt), "%s.crt", name);
	snprintf(key, sizeof(key), "%s.key", name);
	ca = intercept_ca_load(pki(crt), pki(key), err, sizeof(err));
	ck_assert_msg(ca != NULL, "loading %s: %s", name, err);
	return ca;
}

/*
 * An in-process certificate: subject CN=cn (or O=no name when cn is NULL),
 * subjectAltName san in openssl.cnf syntax (or none), valid [nb, na],
 * signed by issuer/ikey, or self-signed when issuer is NULL.
 */
static X509 *make_cert(const char *cn, const char *san, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *ikey, int64_t nb, int64_t na)
{
	static long serial = 5000;
	X509 *x = X509_new();
	X509_NAME *nm = X509_get_subject_name(x);
	X509V3_CTX v3;

	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(X509_set_version(x, X509_VERSION_3), 1);
	ck_assert_int_eq(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++), 1);
	if (cn != NULL)
		ck_assert_int_eq(
		    X509_NAME_add_entry_by_NID(nm, NID_commonName, MBSTRING_ASC,
		                               (const unsigned char *)cn, -1, -1, 0),
		    1);
	else
		ck_assert_int_eq(X509_NAME_add_entry_by_NID(
		                     nm, NID_organizationName, MBSTRING_ASC,
		                     (const unsigned char *)"no name", -1, -1, 0),
		                 1);
	ck_assert_int_eq(
	    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : nm),
	    1);
	ck_assert_ptr_nonnull(ASN1_TIME_set(X509_getm_notBefore(x), (time_t)nb));
	ck_assert_ptr_nonnull(ASN1_TIME_set(X509_getm_notAfter(x), (time_t)na));
	ck_assert_int_eq(X509_set_pubkey(x, key), 1);
	if (san != NULL) {
		X509_EXTENSION *ext;

		X509V3_set_ctx(&v3, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
		ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
		ck_assert_ptr_nonnull(ext);
		ck_assert_int_eq(X509_add_ext(x, ext, -1), 1);
		X509_EXTENSION_free(ext);
	}
	ck_assert_int_gt(X509_sign(x, ikey != NULL ? ikey : key, EVP_sha256()), 0);
	return x;
}

/*
 * Verifies leaf as a TLS server certificate for host or ip against a store
 * holding only the local CA, RFC 5280 strict. Returns X509_V_OK or the
 * verification error.
 */
static int verify(struct intercept_ca *ca, X509 *leaf, const char *host, const char *ip)
{
	X509_STORE *st = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	X509_VERIFY_PARAM *vp;
	int rc;

	ck_assert_ptr_nonnull(st);
	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(X509_STORE_add_cert(st, intercept_ca_cert(ca)), 1);
	ck_assert_int_eq(X509_STORE_CTX_init(ctx, st, leaf, NULL), 1);
	vp = X509_STORE_CTX_get0_param(ctx);
	ck_assert_int_eq(X509_VERIFY_PARAM_set_purpose(vp, X509_PURPOSE_SSL_SERVER), 1);
	X509_VERIFY_PARAM_set_flags(vp, X509_V_FLAG_X509_STRICT);
	if (host != NULL)
		ck_assert_int_eq(X509_VERIFY_PARAM_set1_host(vp, host, 0), 1);
	if (ip != NULL)
		ck_assert_int_eq(X509_VERIFY_PARAM_set1_ip_asc(vp, ip), 1);
	rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
	if (rc == X509_V_OK)
		ck_assert_int_eq(X509_STORE_CTX_get_error(ctx), X509_V_OK);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(st);
	return rc;
}

/* Seconds since the epoch of an ASN1_TIME. */
static int64_t secs(const ASN1_TIME *t)
{
	ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
	int d, s;

	ck_assert_ptr_nonnull(epoch);
	ck_assert_int_eq(ASN1_TIME_diff(&d, &s, epoch, t), 1);
	ASN1_TIME_free(epoch);
	return (int64_t)d * 86400 + s;
}

/* The SAN of x as "DNS:a,IP:1.2.3.4,..." (DNS and IP only, others "OTHER"). */
static void san_text(X509 *x, char *buf, size_t size)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	size_t o = 0;

	buf[0] = '\0';
	for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
		int type;
		ASN1_STRING *v =
		    GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(gens, i), &type);
		const unsigned char *p = ASN1_STRING_get0_data(v);
		const char *sep = i > 0 ? "," : "";

		if (type == GEN_DNS)
			o += (size_t)snprintf(buf + o, size - o, "%sDNS:%.*s", sep,
			                      ASN1_STRING_length(v), (const char *)p);
		else if (type == GEN_IPADD && ASN1_STRING_length(v) == 4)
			o += (size_t)snprintf(buf + o, size - o, "%sIP:%u.%u.%u.%u", sep,
			                      p[0], p[1], p[2], p[3]);
		else if (type == GEN_IPADD)
			o += (size_t)snprintf(buf + o, size - o, "%sIP6:%d", sep,
			                      ASN1_STRING_length(v));
		else
			o += (size_t)snprintf(buf + o, size - o, "%sOTHER", sep);
		ck_assert_uint_lt(o, size);
	}
	GENERAL_NAMES_free(gens);
}

static void subject_field(X509 *x, int nid, char *buf, int size)
{
	buf[0] = '\0';
	X509_NAME_get_text_by_NID(X509_get_subject_name(x), nid, buf, size);
}

static int same_serial(X509 *a, X509 *b)
{
	return ASN1_INTEGER_cmp(X509_get0_serialNumber(a), X509_get0_serialNumber(b)) ==
	       0;
}

/* ---- loading ---- */

START_TEST(test_load_errors)
{
	static const struct {
		const char *crt, *key, *want_path, *want;
	} cases[] = {
	    {"up_san.crt", "up_san.key", "up_san.crt",
	     "not a CA certificate (basicConstraints CA:TRUE missing)"},
	    {"v1.crt", "v1.key", "v1.crt",
	     "not a CA certificate (basicConstraints CA:TRUE missing)"},
	    {"ca_badku.crt", "ca_badku.key", "ca_badku.crt",
	     "not a CA certificate (keyUsage lacks keyCertSign)"},
	    {"ca_ec.crt", "other.key", "other.key", "key does not match the certificate"},
	    {"ca_ec.crt", "ca_rsa.key", "ca_rsa.key",
	     "key does not match the certificate"},
	    {"nope.crt", "ca_ec.key", "nope.crt", "cannot read the certificate"},
	    {"garbage.crt", "ca_ec.key", "garbage.crt", "cannot read the certificate"},
	    {"ca_ec.crt", "nope.key", "nope.key", "cannot read the private key"},
	    {"ca_ec.crt", "encrypted.key", "encrypted.key",
	     "cannot read the private key"},
	    {"ca_ec.crt", "ca_ec.crt", "ca_ec.crt", "cannot read the private key"},
	};
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *v1 = make_cert("v1 root", NULL, k, NULL, NULL, time(NULL) - 60,
	                     time(NULL) + 86400);
	FILE *f;

	/* a v1 self-signed root: X509_check_ca() says 3, which is not enough */
	ck_assert_int_eq(X509_set_version(v1, X509_VERSION_1), 1);
	ck_assert_int_gt(X509_sign(v1, k, EVP_sha256()), 0);
	ck_assert_int_eq(X509_check_ca(v1), 3);
	f = fopen(pki("v1.crt"), "w");
	ck_assert_int_eq(PEM_write_X509(f, v1), 1);
	fclose(f);
	f = fopen(pki("v1.key"), "w");
	ck_assert_int_eq(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	X509_free(v1);
	EVP_PKEY_free(k);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[512] = "", want[600];

		ck_assert_ptr_null(intercept_ca_load(pki(cases[i].crt), pki(cases[i].key),
		                                     err, sizeof(err)));
		snprintf(want, sizeof(want), "intercept_ca: %s: %s",
		         pki(cases[i].want_path), cases[i].want);
		ck_assert_msg(strncmp(err, want, strlen(want)) == 0,
		              "case %zu: got \"%s\"", i, err);
		fprintf(stderr, "test_intercept: refused: %s\n", err);
		/* nothing left behind in this thread's error queue */
		ck_assert_uint_eq(ERR_peek_error(), 0);
	}
	/* a short buffer is truncated, not overrun; no buffer at all is fine */
	char small[12];
	memset(small, 'x', sizeof(small));
	ck_assert_ptr_null(intercept_ca_load(pki("up_san.crt"), pki("up_san.key"), small,
	                                     sizeof(small)));
	ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
	ck_assert_ptr_null(intercept_ca_load(pki("nope.crt"), pki("nope.key"), NULL, 0));
}
END_TEST

START_TEST(test_refcount)
{
	struct intercept_ca *ca = load_ca("ca_ec"), *other = ca;
	X509 *up = read_cert(pki("up_san.crt"));
	X509 *leaf;
	int cached = -1;

	intercept_ca_ref(other);
	intercept_ca_unref(&other);
	ck_assert_ptr_null(other);
	leaf = intercept_leaf(ca, up, time(NULL), &cached);
	ck_assert_ptr_nonnull(leaf);
	intercept_ca_unref(&ca);
	ck_assert_ptr_null(ca);
	intercept_ca_unref(&ca); /* NULL: nothing */
	/* the caller's leaf outlives the CA and its cache */
	char cn[80];
	subject_field(leaf, NID_commonName, cn, sizeof(cn));
	ck_assert_str_eq(cn, "mail.example.test");
	X509_free(leaf);
	X509_free(up);
}
END_TEST

/* ---- the shape of a leaf, and what a client accepts ---- */

static const struct {
	const char *name;
	int sig_nid;
} ca_kinds[] = {
    {"ca_ec", NID_ecdsa_with_SHA256},
    {"ca_rsa", NID_sha256WithRSAEncryption},
    {"ca_ed", NID_ED25519},
    {"ca_ed448", NID_ED448},
};

START_TEST(test_leaf_shape_and_names)
{
	struct intercept_ca *ca = load_ca(ca_kinds[_i].name);
	X509 *cacert = intercept_ca_cert(ca);
	X509 *up = read_cert(pki("up_san.crt"));
	int64_t now = time(NULL);
	int cached = -1, idx;
	X509 *leaf = intercept_leaf(ca, up, now, &cached);
	EVP_PKEY *lk = intercept_leaf_key(ca);
	char buf[512];
	BIGNUM *serial;

	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_eq(cached, 0);

	/* a client trusting only the local CA: the upstream's names, no more */
	ck_assert_int_eq(verify(ca, leaf, "mail.example.test", NULL), X509_V_OK);
	ck_assert_int_eq(verify(ca, leaf, "x.example.test", NULL), X509_V_OK);
	ck_assert_int_eq(verify(ca, leaf, "imap.example.test", NULL), X509_V_OK);
	ck_assert_int_eq(verify(ca, leaf, NULL, "10.77.2.2"), X509_V_OK);
	ck_assert_int_eq(verify(ca, leaf, "other.test", NULL),
	                 X509_V_ERR_HOSTNAME_MISMATCH);
	ck_assert_int_eq(verify(ca, leaf, "a.b.example.test", NULL),
	                 X509_V_ERR_HOSTNAME_MISMATCH);
	ck_assert_int_eq(verify(ca, leaf, "example.test", NULL),
	                 X509_V_ERR_HOSTNAME_MISMATCH);
	ck_assert_int_eq(verify(ca, leaf, NULL, "10.77.2.3"),
	                 X509_V_ERR_IP_ADDRESS_MISMATCH);

	/* SAN: DNS and IP entries copied in order; email and URI dropped */
	san_text(up, buf, sizeof(buf));
	ck_assert_str_eq(buf, "DNS:mail.example.test,OTHER,DNS:*.example.test,OTHER,"
	                      "IP:10.77.2.2");
	san_text(leaf, buf, sizeof(buf));
	ck_assert_str_eq(buf, "DNS:mail.example.test,DNS:*.example.test,IP:10.77.2.2");

	/* names */
	ck_assert_int_eq(X509_get_version(leaf), X509_VERSION_3);
	ck_assert_int_eq(
	    X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(cacert)), 0);
	subject_field(leaf, NID_commonName, buf, sizeof(buf));
	ck_assert_str_eq(buf, "mail.example.test");
	subject_field(leaf, NID_organizationName, buf, sizeof(buf));
	ck_assert_str_eq(buf, "mailmoat interception");
	ck_assert_int_eq(X509_NAME_entry_count(X509_get_subject_name(leaf)), 2);

	/* serial: positive, nonzero, at most 127 bits */
	serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
	ck_assert_ptr_nonnull(serial);
	ck_assert(!BN_is_negative(serial));
	ck_assert(!BN_is_zero(serial));
	ck_assert_int_le(BN_num_bits(serial), 127);
	BN_free(serial);

	/* extensions: exactly these six, criticality as RFC 5280 wants */
	ck_assert_int_eq(X509_get_ext_count(leaf), 6);
	ck_assert(X509_get_extension_flags(leaf) & EXFLAG_BCONS);
	ck_assert(!(X509_get_extension_flags(leaf) & EXFLAG_CA));
	ck_assert_int_eq(X509_check_ca(leaf), 0);
	ck_assert_uint_eq(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
	ck_assert_uint_eq(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
	static const struct {
		int nid, critical;
	} exts[] = {{NID_basic_constraints, 1},
	            {NID_key_usage, 1},
	            {NID_ext_key_usage, 0},
	            {NID_subject_key_identifier, 0},
	            {NID_authority_key_identifier, 0},
	            {NID_subject_alt_name, 0}};
	for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
		idx = X509_get_ext_by_NID(leaf, exts[i].nid, -1);
		ck_assert_int_ge(idx, 0);
		ck_assert_int_eq(X509_EXTENSION_get_critical(X509_get_ext(leaf, idx)),
		                 exts[i].critical);
		ck_assert_int_eq(X509_get_ext_by_NID(leaf, exts[i].nid, idx), -1);
	}
	ck_assert_ptr_nonnull(X509_get0_subject_key_id(leaf));
	ck_assert_ptr_nonnull(X509_get0_subject_key_id(cacert));
	ck_assert_int_eq(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
	                                       X509_get0_subject_key_id(cacert)),
	                 0);

	/* key: the one EC P-256 leaf key; signature: the CA's */
	ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(leaf), lk), 1);
	ck_assert_int_eq(X509_check_private_key(leaf, lk), 1);
	ck_assert(EVP_PKEY_is_a(lk, "EC"));
	ck_assert_int_eq(EVP_PKEY_get_utf8_string_param(lk, OSSL_PKEY_PARAM_GROUP_NAME,
	                                                buf, sizeof(buf), NULL),
	                 1);
	ck_assert_str_eq(buf, "prime256v1");
	ck_assert_int_eq(X509_verify(leaf, X509_get0_pubkey(cacert)), 1);
	ck_assert_int_eq(X509_get_signature_nid(leaf), ca_kinds[_i].sig_nid);

	/* validity: an hour back, INTERCEPT_LIFETIME_S ahead */
	ck_assert_int_eq(secs(X509_get0_notBefore(leaf)), now - 3600);
	ck_assert_int_eq(secs(X509_get0_notAfter(leaf)), now + INTERCEPT_LIFETIME_S);

	X509_free(leaf);
	X509_free(up);
	intercept_ca_unref(&ca);
}
END_TEST

START_TEST(test_cn_only_upstream)
{
	struct intercept_ca *ca = load_ca("ca_ec");
	X509 *up = read_cert(pki("up_cn.crt"));
	X509 *leaf;
	int cached = -1;
	char buf[256];

	ck_assert_int_lt(X509_get_ext_by_NID(up, NID_subject_alt_name, -1), 0);
	leaf = intercept_leaf(ca, up, time(NULL), &cached);
	ck_assert_ptr_nonnull(leaf);
	san_text(leaf, buf, sizeof(buf));
	ck_assert_str_eq(buf, "DNS:legacy.example.test");
	subject_field(leaf, NID_commonName, buf, sizeof(buf));
	ck_assert_str_eq(buf, "legacy.example.test");
	ck_assert_int_eq(verify(ca, leaf, "legacy.example.test", NULL), X509_V_OK);
	ck_assert_int_eq(verify(ca, leaf, "mail.example.test", NULL),
	                 X509_V_ERR_HOSTNAME_MISMATCH);
	X509_free(leaf);
	X509_free(up);
	intercept_ca_unref(&ca);
}
END_TEST

/* Upstream certificates made in-process: which names the leaf gets. */
START_TEST(test_names_chosen)
{
	static const struct {
		const char *cn, *san;           /* of the upstream */
		const char *leaf_san, *leaf_cn; /* NULL leaf_san: refused */
	} cases[] = {
	    /* SAN without DNS or IP names: the CN */
	    {"legacy2.example.test", "email:a@example.test", "DNS:legacy2.example.test",
	     "legacy2.example.test"},
	    /* IP names only: the CN names the leaf (OpenSSL still checks it) */
	    {"box.example.test", "IP:10.1.2.3,IP:::1", "IP:10.1.2.3,IP6:16",
	     "box.example.test"},
	    /* IP names only, no CN: the first address */
	    {NULL, "IP:10.1.2.3,IP:::1", "IP:10.1.2.3,IP6:16", "10.1.2.3"},
	    {NULL, "IP:::1", "IP6:16", "0:0:0:0:0:0:0:1"},
	    /* the CN holds only a name that fits 64 bytes */
	    {NULL,
	     "DNS:a-very-long-label-of-sixty-three-characters-for-the-cn-test-xx."
	     "example.test,DNS:short.example.test",
	     "DNS:a-very-long-label-of-sixty-three-characters-for-the-cn-test-xx."
	     "example.test,DNS:short.example.test",
	     "short.example.test"},
	    {NULL,
	     "DNS:a-very-long-label-of-sixty-three-characters-for-the-cn-test-xx."
	     "example.test",
	     "DNS:a-very-long-label-of-sixty-three-characters-for-the-cn-test-xx."
	     "example.test",
	     ""},
	    /* no host name at all: refused */
	    {NULL, NULL, NULL, NULL},
	    {NULL, "email:a@example.test,URI:https://example.test/", NULL, NULL},
	    {"My Mail Server", NULL, NULL, NULL},
	};
	struct intercept_ca *ca = load_ca("ca_ec");
	EVP_PKEY *k = EVP_EC_gen("P-256");
	int64_t now = time(NULL);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		X509 *up = make_cert(cases[i].cn, cases[i].san, k, NULL, NULL, now - 60,
		                     now + 30 * 86400);
		int cached = -1;
		X509 *leaf = intercept_leaf(ca, up, now, &cached);
		char buf[512];

		if (cases[i].leaf_san == NULL) {
			ck_assert_msg(leaf == NULL, "case %zu minted", i);
			ck_assert_uint_ne(ERR_peek_error(), 0);
			ERR_clear_error();
			X509_free(up);
			continue;
		}
		ck_assert_msg(leaf != NULL, "case %zu refused", i);
		san_text(leaf, buf, sizeof(buf));
		ck_assert_str_eq(buf, cases[i].leaf_san);
		subject_field(leaf, NID_commonName, buf, sizeof(buf));
		ck_assert_str_eq(buf, cases[i].leaf_cn);
		ck_assert_int_eq(
		    verify(ca, leaf, NULL,
		           strncmp(cases[i].leaf_san, "IP:", 3) == 0 ? "10.1.2.3" : NULL),
		    X509_V_OK);
		X509_free(leaf);
		X509_free(up);
	}
	EVP_PKEY_free(k);
	intercept_ca_unref(&ca);
}
END_TEST

/* ---- validity ---- */

START_TEST(test_validity_clamped)
{
	struct intercept_ca *ca = load_ca("ca_ec");
	X509 *up2d = read_cert(pki("up_san.crt"));
	X509 *pubcrt = read_cert(pki("pub.crt"));
	EVP_PKEY *pubkey = read_key(pki("pub.key"));
	EVP_PKEY *k = EVP_EC_gen("P-256");
	int64_t now = time(NULL), up_na = secs(X509_get0_notAfter(up2d));
	int cached = -1;
	X509 *leaf, *up1h, *gone;

	/* two days left upstream: the full lifetime */
	ck_assert_int_gt(up_na, now + 47 * 3600);
	leaf = intercept_leaf(ca, up2d, now, &cached);
	ck_assert_int_eq(secs(X509_get0_notAfter(leaf)), now + INTERCEPT_LIFETIME_S);
	X509_free(leaf);

	/* the same certificate half an hour before it expires: clamped */
	leaf = intercept_leaf(ca, up2d, up_na - 1800, &cached);
	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_eq(cached, 0);
	ck_assert_int_eq(secs(X509_get0_notBefore(leaf)), up_na - 1800 - 3600);
	ck_assert_int_eq(
	    ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(up2d)), 0);
	X509_free(leaf);

	/* an upstream certificate good for one more hour, signed by the public CA */
	up1h = make_cert("short.example.test", "DNS:short.example.test", k, pubcrt,
	                 pubkey, now - 86400, now + 3600);
	leaf = intercept_leaf(ca, up1h, now, &cached);
	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_eq(cached, 0);
	ck_assert_int_eq(secs(X509_get0_notAfter(leaf)), now + 3600);
	ck_assert_int_eq(
	    ASN1_TIME_compare(X509_get0_notAfter(leaf), X509_get0_notAfter(up1h)), 0);
	ck_assert_int_eq(verify(ca, leaf, "short.example.test", NULL), X509_V_OK);
	X509_free(leaf);
	/* less than INTERCEPT_MARGIN_S left from the start: never reused */
	leaf = intercept_leaf(ca, up1h, now, &cached);
	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_eq(cached, 0);
	X509_free(leaf);

	/* already expired upstream: still a leaf (no crash), notAfter its own */
	gone = make_cert("gone.example.test", "DNS:gone.example.test", k, pubcrt, pubkey,
	                 now - 86400, now - 7200);
	leaf = intercept_leaf(ca, gone, now, &cached);
	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_eq(secs(X509_get0_notBefore(leaf)), now - 3600);
	ck_assert_int_eq(secs(X509_get0_notAfter(leaf)), now - 7200);
	ck_assert_int_eq(verify(ca, leaf, "gone.example.test", NULL),
	                 X509_V_ERR_CERT_HAS_EXPIRED);
	X509_free(leaf);

	X509_free(gone);
	X509_free(up1h);
	X509_free(up2d);
	X509_free(pubcrt);
	EVP_PKEY_free(pubkey);
	EVP_PKEY_free(k);
	intercept_ca_unref(&ca);
}
END_TEST

/* ---- the cache ---- */

START_TEST(test_cache_hits_and_expiry)
{
	struct intercept_ca *ca = load_ca("ca_ec");
	X509 *up = read_cert(pki("up_san.crt"));
	X509 *up_again = read_cert(pki("up_san.crt")); /* same DER, other object */
	X509 *up_cn = read_cert(pki("up_cn.crt"));
	int64_t now = time(NULL);
	int64_t renew = now + INTERCEPT_LIFETIME_S - INTERCEPT_MARGIN_S;
	uint64_t hits = 9, minted = 9;
	int cached = -1;
	X509 *l1, *l2, *l3, *l4;

	intercept_stats(ca, &hits, &minted);
	ck_assert_uint_eq(hits, 0);
	ck_assert_uint_eq(minted, 0);
	l1 = intercept_leaf(ca, up, now, &cached);
	ck_assert_int_eq(cached, 0);
	l2 = intercept_leaf(ca, up, now + 10, &cached);
	ck_assert_int_eq(cached, 1);
	ck_assert_ptr_eq(l1, l2);
	X509_free(l2);
	l2 = intercept_leaf(ca, up_again, now, &cached);
	ck_assert_int_eq(cached, 1);
	ck_assert_ptr_eq(l1, l2);
	X509_free(l2);
	/* another upstream certificate: another leaf */
	l2 = intercept_leaf(ca, up_cn, now, &cached);
	ck_assert_int_eq(cached, 0);
	ck_assert(!same_serial(l1, l2));
	X509_free(l2);
	intercept_stats(ca, &hits, &minted);
	ck_assert_uint_eq(hits, 2);
	ck_assert_uint_eq(minted, 2);

	/* reused until only INTERCEPT_MARGIN_S of validity is left */
	l2 = intercept_leaf(ca, up, renew - 1, &cached);
	ck_assert_int_eq(cached, 1);
	ck_assert_ptr_eq(l1, l2);
	X509_free(l2);
	l3 = intercept_leaf(ca, up, renew, &cached);
	ck_assert_int_eq(cached, 0);
	ck_assert_ptr_ne(l1, l3);
	ck_assert(!same_serial(l1, l3));
	ck_assert_int_eq(secs(X509_get0_notBefore(l3)), renew - 3600);
	/* the old leaf is still ours to use (ASan: no use after free) */
	ck_assert_int_eq(secs(X509_get0_notAfter(l1)), now + INTERCEPT_LIFETIME_S);
	ck_assert_int_eq(verify(ca, l1, "mail.example.test", NULL), X509_V_OK);
	/* the re-minted leaf replaced the entry */
	l4 = intercept_leaf(ca, up, renew + 60, &cached);
	ck_assert_int_eq(cached, 1);
	ck_assert_ptr_eq(l3, l4);
	X509_free(l4);
	intercept_stats(ca, &hits, &minted);
	ck_assert_uint_eq(hits, 4);
	ck_assert_uint_eq(minted, 3);

	X509_free(l1);
	X509_free(l3);
	X509_free(up);
	X509_free(up_again);
	X509_free(up_cn);
	intercept_ca_unref(&ca);
}
END_TEST

START_TEST(test_cache_clock_back)
{
	struct intercept_ca *ca = load_ca("ca_ec");
	X509 *up = read_cert(pki("up_san.crt"));
	int64_t now = time(NULL);
	int cached = -1;
	X509 *l1 = intercept_leaf(ca, up, now, &cached), *l2;

	ck_assert_int_eq(cached, 0);
	/* a minute back: the hour of backdating covers it */
	l2 = intercept_leaf(ca, up, now - 60, &cached);
	ck_assert_int_eq(cached, 1);
	ck_assert_ptr_eq(l1, l2);
	X509_free(l2);
	/* further: minted again, valid from the new now */
	l2 = intercept_leaf(ca, up, now - 61, &cached);
	ck_assert_int_eq(cached, 0);
	ck_assert(!same_serial(l1, l2));
	ck_assert_int_eq(secs(X509_get0_notBefore(l2)), now - 61 - 3600);
	X509_free(l2);
	l2 = intercept_leaf(ca, up, now - 61, &cached);
	ck_assert_int_eq(cached, 1);
	X509_free(l2);
	X509_free(l1);
	X509_free(up);
	intercept_ca_unref(&ca);
}
END_TEST

START_TEST(test_cache_lru_eviction)
{
	enum { N = INTERCEPT_CACHE_MAX + 1 };
	struct intercept_ca *ca = load_ca("ca_ec");
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 **up = calloc(N, sizeof(*up));
	int64_t now = time(NULL);
	uint64_t hits, minted;
	int cached;
	X509 *leaf;

	ck_assert_ptr_nonnull(up);
	for (int i = 0; i < N; i++) {
		char cn[64];

		snprintf(cn, sizeof(cn), "h%d.example.test", i);
		up[i] = make_cert(cn, NULL, k, NULL, NULL, now - 60, now + 30 * 86400);
	}
#define GET(i, want_cached)                                                              \
	do {                                                                             \
		leaf = intercept_leaf(ca, up[i], now, &cached);                          \
		ck_assert_ptr_nonnull(leaf);                                             \
		ck_assert_msg(cached == (want_cached), "upstream %d: cached %d",         \
		              (int)(i), cached);                                         \
		X509_free(leaf);                                                         \
	} while (0)
	/* fill the cache, all misses */
	for (int i = 0; i < INTERCEPT_CACHE_MAX; i++)
		GET(i, 0);
	/* touch the first: the second is now the least recently used */
	GET(0, 1);
	/* one more than fits: the second goes */
	GET(INTERCEPT_CACHE_MAX, 0);
	GET(1, 0);                   /* minted again (and evicts the third) */
	GET(INTERCEPT_CACHE_MAX, 1); /* the most recent stays */
	GET(0, 1);
	GET(3, 1);
	GET(2, 0);
	intercept_stats(ca, &hits, &minted);
	ck_assert_uint_eq(hits, 4);
	ck_assert_uint_eq(minted, INTERCEPT_CACHE_MAX + 3);
#undef GET
	for (int i = 0; i < N; i++)
		X509_free(up[i]);
	free(up);
	EVP_PKEY_free(k);
	intercept_ca_unref(&ca);
}
END_TEST

/* ---- a leaf for one name ---- */

START_TEST(test_leaf_for_name)
{
	static const struct {
		const char *name, *san, *cn, *host, *ip;
	} cases[] = {
	    {"mail.example.test", "DNS:mail.example.test", "mail.example.test",
	     "mail.example.test", NULL},
	    {"mail.example.test.", "DNS:mail.example.test", "mail.example.test",
	     "mail.example.test", NULL},
	    {"10.77.2.2", "IP:10.77.2.2", "10.77.2.2", NULL, "10.77.2.2"},
	    {"::1", "IP6:16", "::1", NULL, "::1"},
	    {"2001:db8::25", "IP6:16", "2001:db8::25", NULL, "2001:db8::25"},
	    /* looks like an address, is a name */
	    {"1.2.3.4.example.test", "DNS:1.2.3.4.example.test", "1.2.3.4.example.test",
	     "1.2.3.4.example.test", NULL},
	};
	struct intercept_ca *ca = load_ca("ca_rsa");
	int64_t now = time(NULL);
	uint64_t hits, minted;
	char buf[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		X509 *leaf = intercept_leaf_for_name(ca, cases[i].name, now);
		X509 *again = intercept_leaf_for_name(ca, cases[i].name, now);

		ck_assert_msg(leaf != NULL, "%s refused", cases[i].name);
		san_text(leaf, buf, sizeof(buf));
		ck_assert_str_eq(buf, cases[i].san);
		subject_field(leaf, NID_commonName, buf, sizeof(buf));
		ck_assert_str_eq(buf, cases[i].cn);
		ck_assert_int_eq(verify(ca, leaf, cases[i].host, cases[i].ip), X509_V_OK);
		ck_assert_int_eq(verify(ca, leaf, "other.test", NULL),
		                 X509_V_ERR_HOSTNAME_MISMATCH);
		ck_assert_int_eq(secs(X509_get0_notBefore(leaf)), now - 3600);
		ck_assert_int_eq(secs(X509_get0_notAfter(leaf)),
		                 now + INTERCEPT_LIFETIME_S);
		ck_assert_int_eq(
		    EVP_PKEY_eq(X509_get0_pubkey(leaf), intercept_leaf_key(ca)), 1);
		ck_assert_int_eq(X509_get_ext_count(leaf), 6);
		/* not cached */
		ck_assert_ptr_nonnull(again);
		ck_assert(!same_serial(leaf, again));
		X509_free(again);
		X509_free(leaf);
	}
	intercept_stats(ca, &hits, &minted);
	ck_assert_uint_eq(hits, 0);
	ck_assert_uint_eq(minted, 2 * sizeof(cases) / sizeof(cases[0]));
	intercept_ca_unref(&ca);
}
END_TEST

START_TEST(test_leaf_for_name_refused)
{
	static const char *const bad[] = {
	    "",          ".",         "..",       "*.example.test", "a b.test",
	    "a..b.test", ".a.test",   "01.2.3.4", "1.2.3.4 x",      "1.2.3",
	    "1.2.3.4.5", "host:name", "::1::2",   "[::1]",          "ex\xc3\xa4mple.test",
	    "a/b.test",  "a\tb.test", "a@b.test",
	};
	struct intercept_ca *ca = load_ca("ca_ec");
	char longname[300];
	uint64_t minted;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(intercept_leaf_for_name(ca, bad[i], time(NULL)) == NULL,
		              "\"%s\" minted", bad[i]);
		ck_assert_uint_ne(ERR_peek_error(), 0);
		ERR_clear_error();
	}
	/* 254 bytes: one too many */
	memset(longname, 'a', sizeof(longname));
	for (int i = 63; i < 254; i += 64)
		longname[i] = '.';
	longname[254] = '\0';
	ck_assert_ptr_null(intercept_leaf_for_name(ca, longname, time(NULL)));
	ERR_clear_error();
	/* 253: fine, but too long for the CN, which is left out */
	longname[253] = '\0';
	X509 *leaf = intercept_leaf_for_name(ca, longname, time(NULL));
	ck_assert_ptr_nonnull(leaf);
	ck_assert_int_lt(
	    X509_NAME_get_index_by_NID(X509_get_subject_name(leaf), NID_commonName, -1),
	    0);
	ck_assert_int_eq(verify(ca, leaf, longname, NULL), X509_V_OK);
	X509_free(leaf);
	intercept_stats(ca, NULL, &minted);
	ck_assert_uint_eq(minted, 1);
	intercept_ca_unref(&ca);
}
END_TEST

/* ---- in a real handshake ---- */

/*
 * A TLS 1.3 and a TLS 1.2 handshake over a BIO pair: the server presents
 * the minted leaf, its key and the local CA; the client trusts only the
 * local CA and checks the host name.
 */
static int handshake(struct intercept_ca *ca, X509 *leaf, const char *host, int version)
{
	SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	SSL *srv, *cli;
	BIO *sb, *cb;
	int rc = -1;

	ck_assert_ptr_nonnull(sctx);
	ck_assert_ptr_nonnull(cctx);
	SSL_CTX_set_min_proto_version(sctx, version);
	SSL_CTX_set_max_proto_version(sctx, version);
	ck_assert_int_eq(SSL_CTX_use_certificate(sctx, leaf), 1);
	ck_assert_int_eq(SSL_CTX_use_PrivateKey(sctx, intercept_leaf_key(ca)), 1);
	ck_assert_int_eq(SSL_CTX_check_private_key(sctx), 1);
	ck_assert_int_eq(SSL_CTX_add1_chain_cert(sctx, intercept_ca_cert(ca)), 1);
	ck_assert_int_eq(
	    X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), intercept_ca_cert(ca)), 1);
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
	srv = SSL_new(sctx);
	cli = SSL_new(cctx);
	ck_assert_int_eq(SSL_set1_host(cli, host), 1);
	ck_assert_int_eq(SSL_set_tlsext_host_name(cli, host), 1);
	ck_assert_int_eq(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	SSL_set_bio(srv, sb, sb);
	SSL_set_bio(cli, cb, cb);
	SSL_set_accept_state(srv);
	SSL_set_connect_state(cli);
	for (int i = 0; i < 20; i++) {
		int c = SSL_do_handshake(cli), s = SSL_do_handshake(srv);

		if (c == 1 && s == 1) {
			rc = X509_V_OK;
			break;
		}
		if ((c <= 0 && SSL_get_error(cli, c) != SSL_ERROR_WANT_READ) ||
		    (s <= 0 && SSL_get_error(srv, s) != SSL_ERROR_WANT_READ)) {
			rc = (int)SSL_get_verify_result(cli);
			if (rc == X509_V_OK)
				rc = -1;
			break;
		}
	}
	ERR_clear_error();
	SSL_free(cli);
	SSL_free(srv);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	return rc;
}

START_TEST(test_tls_handshake)
{
	struct intercept_ca *ca = load_ca(ca_kinds[_i].name);
	X509 *up = read_cert(pki("up_san.crt"));
	int cached;
	X509 *leaf = intercept_leaf(ca, up, time(NULL), &cached);
	X509 *named = intercept_leaf_for_name(ca, "10.77.2.9", time(NULL));

	ck_assert_ptr_nonnull(leaf);
	ck_assert_ptr_nonnull(named);
	ck_assert_int_eq(handshake(ca, leaf, "mail.example.test", TLS1_3_VERSION),
	                 X509_V_OK);
	ck_assert_int_eq(handshake(ca, leaf, "pop.example.test", TLS1_2_VERSION),
	                 X509_V_OK);
	ck_assert_int_eq(handshake(ca, leaf, "other.test", TLS1_3_VERSION),
	                 X509_V_ERR_HOSTNAME_MISMATCH);
	ck_assert_int_eq(handshake(ca, named, "10.77.2.9", TLS1_3_VERSION), X509_V_OK);
	X509_free(named);
	X509_free(leaf);
	X509_free(up);
	intercept_ca_unref(&ca);
}
END_TEST

/* ---- cost ---- */

static double mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Prints how long minting takes per leaf; figures only, no assertion. */
START_TEST(test_mint_timing)
{
	enum { N = 200 };
	static const char *const kinds[] = {"ca_ec", "ca_rsa", "ca_ed"};
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *up[N];
	int64_t now = time(NULL);

	for (int i = 0; i < N; i++) {
		char cn[64], san[160];

		snprintf(cn, sizeof(cn), "t%d.example.test", i);
		snprintf(san, sizeof(san),
		         "DNS:t%d.example.test,DNS:*.t%d.example.test,IP:10.9.%d.%d", i,
		         i, i / 256, i % 256);
		up[i] = make_cert(cn, san, k, NULL, NULL, now - 60, now + 30 * 86400);
	}
	for (size_t c = 0; c < sizeof(kinds) / sizeof(kinds[0]); c++) {
		struct intercept_ca *ca = load_ca(kinds[c]);
		double t0, t1, t2;
		int cached;

		t0 = mono_ms();
		for (int i = 0; i < N; i++) {
			X509 *leaf = intercept_leaf(ca, up[i], now, &cached);

			ck_assert_ptr_nonnull(leaf);
			ck_assert_int_eq(cached, 0);
			X509_free(leaf);
		}
		t1 = mono_ms();
		for (int i = 0; i < N; i++) {
			X509 *leaf = intercept_leaf(ca, up[i], now, &cached);

			ck_assert_int_eq(cached, 1);
			X509_free(leaf);
		}
		t2 = mono_ms();
		fprintf(stderr,
		        "test_intercept: %-6s CA: minted %d leaves in %.1f ms (%.1f "
		        "us/leaf); "
		        "%d cache hits in %.2f ms (%.2f us/hit)\n",
		        kinds[c], N, t1 - t0, (t1 - t0) * 1e3 / N, N, t2 - t1,
		        (t2 - t1) * 1e3 / N);
		intercept_ca_unref(&ca);
	}
	for (int i = 0; i < N; i++)
		X509_free(up[i]);
	EVP_PKEY_free(k);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("intercept");
	TCase *tl = tcase_create("load"), *tm = tcase_create("mint"),
	      *tc = tcase_create("cache"), *tt = tcase_create("timing");
	const char *base = getenv("TMPDIR");
	SRunner *sr;
	int failed;

	snprintf(dir, sizeof(dir), "%s/mm-test-intercept-XXXXXX",
	         base && *base && strlen(base) < 200 ? base : "/tmp");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	if (make_pki() < 0) {
		char cmd[400];

		fprintf(stderr,
		        "test_intercept: cannot make the test PKI; openssl said:\n");
		snprintf(cmd, sizeof(cmd), "cat '%s/openssl.log' >&2", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "(no log)\n");
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
		return 1;
	}

	tcase_add_test(tl, test_load_errors);
	tcase_add_test(tl, test_refcount);
	suite_add_tcase(s, tl);

	tcase_add_loop_test(tm, test_leaf_shape_and_names, 0,
	                    sizeof(ca_kinds) / sizeof(ca_kinds[0]));
	tcase_add_test(tm, test_cn_only_upstream);
	tcase_add_test(tm, test_names_chosen);
	tcase_add_test(tm, test_validity_clamped);
	tcase_add_test(tm, test_leaf_for_name);
	tcase_add_test(tm, test_leaf_for_name_refused);
	tcase_add_loop_test(tm, test_tls_handshake, 0,
	                    sizeof(ca_kinds) / sizeof(ca_kinds[0]));
	suite_add_tcase(s, tm);

	tcase_add_test(tc, test_cache_hits_and_expiry);
	tcase_add_test(tc, test_cache_clock_back);
	tcase_add_test(tc, test_cache_lru_eviction);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);

	tcase_add_test(tt, test_mint_timing);
	tcase_set_timeout(tt, 120);
	suite_add_tcase(s, tt);

	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return failed == 0 ? 0 : 1;
}
