/*
 * intercept.c - the local CA of TLS interception (see intercept.h): loads
 * the CA, mints short-lived leaf certificates that copy the names of a
 * verified upstream certificate, and keeps them in a small cache.
 *
 * What every leaf shares is computed once at load: the EC P-256 leaf key,
 * the constant extensions (basicConstraints, keyUsage, extendedKeyUsage,
 * subjectKeyIdentifier of the leaf key, authorityKeyIdentifier of the CA)
 * and the signing digest. Minting then costs one CA signature and one
 * decoding of the leaf (see ic_set_spki).
 *
 * The cache is a chained hash table over a doubly-linked LRU list, as in
 * vcache.c. The key is the SHA-256 of the upstream certificate's DER, whose
 * first eight bytes pick the bucket (upstream certificates are signed by a
 * public CA, so nobody grinds them for collisions). An entry outlives its
 * usefulness in two ways, both handled by minting again in place: less than
 * INTERCEPT_MARGIN_S of its validity is left, or the clock went back more
 * than a minute since it was minted (its notBefore could be in the future).
 *
 * intercept_ca_load runs on the loop or on a worker thread (configuration
 * reloads) and touches nothing global; everything else is called from the
 * event loop only.
 */
#include "proxy/intercept.h"

#include <assert.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(INTERCEPT_CACHE_MAX > 0, "the cache holds at least one leaf");
_Static_assert(INTERCEPT_LIFETIME_S > INTERCEPT_MARGIN_S, "a leaf must be reusable");

#define IC_KEY_LEN 32      /* SHA-256 */
#define IC_BACKDATE_S 3600 /* notBefore = now - this: client clock skew */
#define IC_CLOCK_BACK_S 60 /* an entry minted further in the future is re-minted */
#define IC_SERIAL_LEN 16   /* 128 bits, top bit cleared (RFC 5280 4.1.2.2) */
#define IC_CN_MAX 64       /* ub-common-name (RFC 5280 appendix A.1) */
#define IC_DNS_MAX 253     /* a DNS name without its trailing dot */

enum ic_ext { IC_EXT_BC, IC_EXT_KU, IC_EXT_EKU, IC_EXT_SKID, IC_EXT_AKID, IC_EXT_COUNT };

struct ic_entry {
	struct ic_entry *hnext; /* bucket chain */
	struct ic_entry *lru_prev, *lru_next;
	unsigned char key[IC_KEY_LEN];
	X509 *leaf;
	int64_t not_after; /* the leaf's notAfter, seconds since the epoch */
	int64_t minted;    /* the `now` it was minted at */
};

struct intercept_ca {
	int refs; /* loop thread only */
	X509 *cert;
	EVP_PKEY *key;
	EVP_PKEY *leaf_key;
	X509_PUBKEY *leaf_spki; /* its SubjectPublicKeyInfo, encoded once */
	const EVP_MD *md;       /* NULL for Ed25519 / Ed448: the algorithm fixes it */
	X509_EXTENSION *ext[IC_EXT_COUNT];
	struct ic_entry **buckets;
	size_t nbuckets; /* power of two */
	size_t count;
	struct ic_entry *lru_head; /* most recent */
	struct ic_entry *lru_tail; /* least recent */
	uint64_t hits, minted;
};

/* ---- loading ---- */

/*
 * Writes "intercept_ca: path: what[: OpenSSL's reason]" to err and clears
 * this thread's OpenSSL error queue, which may be a worker's.
 */
static void ic_err(char *err, size_t errlen, const char *path, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;

	if (err != NULL && errlen > 0)
		snprintf(err, errlen, "intercept_ca: %s: %s%s%s", path, what,
		         reason != NULL ? ": " : "", reason != NULL ? reason : "");
	ERR_clear_error();
}

/*
 * Passphrase callback that has none. Security/operations: without it
 * OpenSSL would prompt on the terminal, and a daemon reloading its
 * configuration must fail instead. Encrypted CA keys are not supported.
 */
static int ic_no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static X509 *ic_read_cert(const char *file)
{
	BIO *b = BIO_new_file(file, "r");
	X509 *x;

	if (b == NULL)
		return NULL;
	x = PEM_read_bio_X509(b, NULL, ic_no_passphrase, NULL);
	BIO_free(b);
	return x;
}

static EVP_PKEY *ic_read_key(const char *file)
{
	BIO *b = BIO_new_file(file, "r");
	EVP_PKEY *k;

	if (b == NULL)
		return NULL;
	k = PEM_read_bio_PrivateKey(b, NULL, ic_no_passphrase, NULL);
	BIO_free(b);
	return k;
}

/* The digest X509_sign wants for key k: none for the EdDSA algorithms. */
static const EVP_MD *ic_sign_md(EVP_PKEY *k)
{
	if (EVP_PKEY_is_a(k, "ED25519") || EVP_PKEY_is_a(k, "ED448"))
		return NULL;
	return EVP_sha256();
}

/*
 * A key identifier per RFC 5280 4.2.1.2 method (1): the SHA-1 of the
 * subjectPublicKey bits. Returns a new octet string or NULL.
 */
static ASN1_OCTET_STRING *ic_key_id(const X509_PUBKEY *xpk)
{
	const unsigned char *bits;
	int nbits;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;
	ASN1_OCTET_STRING *id;

	if (X509_PUBKEY_get0_param(NULL, &bits, &nbits, NULL, xpk) != 1 ||
	    EVP_Digest(bits, (size_t)nbits, md, &mdlen, EVP_sha1(), NULL) != 1)
		return NULL;
	id = ASN1_OCTET_STRING_new();
	if (id != NULL && ASN1_OCTET_STRING_set(id, md, (int)mdlen) != 1) {
		ASN1_OCTET_STRING_free(id);
		return NULL;
	}
	return id;
}

/*
 * The extensions every leaf carries. The authorityKeyIdentifier is the
 * CA's own subjectKeyIdentifier, or computed from its key when it has none
 * (OpenSSL's "keyid:always" refuses such a CA); chain builders match on it.
 */
static int ic_make_exts(struct intercept_ca *ca)
{
	X509V3_CTX v3;
	const ASN1_OCTET_STRING *ca_skid = X509_get0_subject_key_id(ca->cert);
	ASN1_OCTET_STRING *skid = ic_key_id(ca->leaf_spki);
	AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
	int ok = 0;

	if (skid == NULL || akid == NULL)
		goto out;
	akid->keyid = ca_skid != NULL ? ASN1_OCTET_STRING_dup(ca_skid)
	                              : ic_key_id(X509_get_X509_PUBKEY(ca->cert));
	if (akid->keyid == NULL)
		goto out;
	X509V3_set_ctx(&v3, ca->cert, NULL, NULL, NULL, 0);
	ca->ext[IC_EXT_BC] =
	    X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:FALSE");
	/* ECDSA signs the handshake; an EC key cannot encipher keys */
	ca->ext[IC_EXT_KU] =
	    X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,digitalSignature");
	ca->ext[IC_EXT_EKU] =
	    X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "serverAuth");
	ca->ext[IC_EXT_SKID] = X509V3_EXT_i2d(NID_subject_key_identifier, 0, skid);
	ca->ext[IC_EXT_AKID] = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid);
	ok = 1;
	for (int i = 0; i < IC_EXT_COUNT; i++)
		if (ca->ext[i] == NULL)
			ok = 0;
out:
	ASN1_OCTET_STRING_free(skid);
	AUTHORITY_KEYID_free(akid);
	return ok ? 0 : -1;
}

static void ic_free(struct intercept_ca *ca)
{
	while (ca->lru_head != NULL) {
		struct ic_entry *e = ca->lru_head;

		ca->lru_head = e->lru_next;
		X509_free(e->leaf);
		free(e);
	}
	free(ca->buckets);
	for (int i = 0; i < IC_EXT_COUNT; i++)
		X509_EXTENSION_free(ca->ext[i]);
	X509_PUBKEY_free(ca->leaf_spki);
	EVP_PKEY_free(ca->leaf_key);
	EVP_PKEY_free(ca->key);
	X509_free(ca->cert);
	free(ca);
}

struct intercept_ca *intercept_ca_load(const char *cert_file, const char *key_file,
                                       char *err, size_t errlen)
{
	struct intercept_ca *ca = calloc(1, sizeof(*ca));

	ERR_clear_error();
	if (ca == NULL) {
		ic_err(err, errlen, cert_file, "out of memory");
		return NULL;
	}
	ca->refs = 1;
	ca->cert = ic_read_cert(cert_file);
	if (ca->cert == NULL) {
		ic_err(err, errlen, cert_file, "cannot read the certificate (PEM)");
		goto fail;
	}
	ca->key = ic_read_key(key_file);
	if (ca->key == NULL) {
		ic_err(err, errlen, key_file,
		       "cannot read the private key (PEM, not encrypted)");
		goto fail;
	}
	if (X509_check_private_key(ca->cert, ca->key) != 1) {
		ic_err(err, errlen, key_file, "key does not match the certificate");
		goto fail;
	}
	/*
	 * Security: only a real CA certificate. X509_check_ca() also accepts
	 * v1 self-signed roots and keyUsage-only certificates (results 3 to
	 * 5); clients need basicConstraints CA:TRUE (RFC 5280 4.2.1.9) and,
	 * when keyUsage is present, keyCertSign (4.2.1.3), so only result 1
	 * passes.
	 */
	if ((X509_get_extension_flags(ca->cert) & EXFLAG_CA) == 0) {
		ic_err(err, errlen, cert_file,
		       "not a CA certificate (basicConstraints CA:TRUE missing)");
		goto fail;
	}
	if (X509_check_ca(ca->cert) != 1) {
		ic_err(err, errlen, cert_file,
		       "not a CA certificate (keyUsage lacks keyCertSign)");
		goto fail;
	}
	ca->md = ic_sign_md(ca->key);
	ca->leaf_key = EVP_EC_gen("P-256");
	if (ca->leaf_key == NULL || X509_PUBKEY_set(&ca->leaf_spki, ca->leaf_key) != 1) {
		ic_err(err, errlen, cert_file, "cannot make the leaf key");
		goto fail;
	}
	if (ic_make_exts(ca) < 0) {
		ic_err(err, errlen, cert_file, "cannot make the leaf extensions");
		goto fail;
	}
	ca->nbuckets = 16;
	while (ca->nbuckets < 2 * (size_t)INTERCEPT_CACHE_MAX)
		ca->nbuckets *= 2;
	ca->buckets = calloc(ca->nbuckets, sizeof(struct ic_entry *));
	if (ca->buckets == NULL) {
		ic_err(err, errlen, cert_file, "out of memory");
		goto fail;
	}
	return ca;
fail:
	ic_free(ca);
	return NULL;
}

void intercept_ca_ref(struct intercept_ca *ca)
{
	assert(ca->refs > 0);
	ca->refs++;
}

void intercept_ca_unref(struct intercept_ca **cap)
{
	struct intercept_ca *ca = *cap;

	*cap = NULL;
	if (ca == NULL)
		return;
	assert(ca->refs > 0);
	if (--ca->refs == 0)
		ic_free(ca);
}

EVP_PKEY *intercept_leaf_key(const struct intercept_ca *ca)
{
	return ca->leaf_key;
}

X509 *intercept_ca_cert(const struct intercept_ca *ca)
{
	return ca->cert;
}

void intercept_stats(const struct intercept_ca *ca, uint64_t *hits_r, uint64_t *minted_r)
{
	if (hits_r != NULL)
		*hits_r = ca->hits;
	if (minted_r != NULL)
		*minted_r = ca->minted;
}

/* ---- minting ---- */

/* Printable ASCII without spaces, 1..max bytes: fit for a CN or a dNSName. */
static int ic_name_ok(const unsigned char *s, int len, int max)
{
	if (len < 1 || len > max)
		return 0;
	for (int i = 0; i < len; i++)
		if (s[i] <= 0x20 || s[i] >= 0x7f)
			return 0;
	return 1;
}

/* The text of an IP SAN (4 or 16 bytes) in buf; 0, or -1 for other lengths. */
static int ic_ip_text(const ASN1_OCTET_STRING *ip, char *buf, size_t size)
{
	const unsigned char *p = ASN1_STRING_get0_data(ip);
	size_t o = 0;

	if (ASN1_STRING_length(ip) == 4) {
		snprintf(buf, size, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
		return 0;
	}
	if (ASN1_STRING_length(ip) != 16)
		return -1;
	/* RFC 4291 2.2 form 1, uncompressed: it only names the leaf */
	for (int i = 0; i < 16 && o < size; i += 2)
		o += (size_t)snprintf(buf + o, size - o, i == 0 ? "%x" : ":%x",
		                      (unsigned)(p[i] << 8 | p[i + 1]));
	return 0;
}

/*
 * The upstream subject's most specific (last) CN as UTF-8 in buf, if it is
 * fit for a DNS name; its length, or -1.
 */
static int ic_upstream_cn(X509 *up, char *buf, size_t size)
{
	const X509_NAME *nm = X509_get_subject_name(up);
	int idx = -1, i, len;
	unsigned char *utf8 = NULL;

	while ((i = X509_NAME_get_index_by_NID(nm, NID_commonName, idx)) >= 0)
		idx = i;
	if (idx < 0)
		return -1;
	len = ASN1_STRING_to_UTF8(&utf8,
	                          X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, idx)));
	if (len < 0)
		return -1;
	if (!ic_name_ok(utf8, len, IC_DNS_MAX) || (size_t)len >= size) {
		OPENSSL_free(utf8);
		return -1;
	}
	memcpy(buf, utf8, (size_t)len);
	buf[len] = '\0';
	OPENSSL_free(utf8);
	return len;
}

/* A fresh serial: 128 random bits, positive (top bit clear) and nonzero. */
static int ic_serial(X509 *x)
{
	unsigned char r[IC_SERIAL_LEN];
	BIGNUM *bn;
	int ok;

	do {
		if (RAND_bytes(r, sizeof(r)) != 1)
			return -1;
		r[0] &= 0x7f;
		bn = BN_bin2bn(r, sizeof(r), NULL);
		if (bn == NULL)
			return -1;
		if (!BN_is_zero(bn))
			break;
		BN_free(bn);
	} while (1);
	ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok ? 0 : -1;
}

/*
 * Sets the leaf key as x's public key. Performance: X509_set_pubkey()
 * encodes and decodes the key through OpenSSL 3.0's provider
 * encoder/decoder framework on every call, about 90% of the cost of a
 * leaf, so the SubjectPublicKeyInfo made at load is copied field by field
 * instead and ic_mint() decodes it once at the end.
 */
static int ic_set_spki(const struct intercept_ca *ca, X509 *x)
{
	ASN1_OBJECT *alg;
	const ASN1_OBJECT *alg0;
	X509_ALGOR *palg;
	const void *param0;
	void *param = NULL;
	int ptype, nbits;
	const unsigned char *bits;
	unsigned char *enc;

	if (X509_PUBKEY_get0_param(NULL, &bits, &nbits, &palg, ca->leaf_spki) != 1)
		return -1;
	X509_ALGOR_get0(&alg0, &ptype, &param0, palg);
	/* an EC key's parameters are its named curve (RFC 5480 2.1.1) */
	if (ptype != V_ASN1_OBJECT)
		return -1;
	alg = OBJ_dup(alg0);
	param = OBJ_dup(param0);
	enc = OPENSSL_memdup(bits, (size_t)nbits);
	if (alg == NULL || param == NULL || enc == NULL ||
	    X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), alg, ptype, param, enc,
	                           nbits) != 1) {
		ASN1_OBJECT_free(alg);
		ASN1_OBJECT_free(param);
		OPENSSL_free(enc);
		return -1;
	}
	return 0;
}

/*
 * Mints a leaf with subjectAltName san and subject CN cn (may be NULL),
 * valid from now - IC_BACKDATE_S for INTERCEPT_LIFETIME_S, but never past
 * limit when given (the upstream notAfter). Stores the notAfter in
 * *not_after_r. Returns a new certificate or NULL (OpenSSL error queue).
 */
static X509 *ic_mint(struct intercept_ca *ca, GENERAL_NAMES *san, const char *cn,
                     int64_t now, const ASN1_TIME *limit, int64_t *not_after_r)
{
	X509 *x = X509_new();
	X509_NAME *subj = X509_NAME_new();
	int64_t not_after = now + INTERCEPT_LIFETIME_S;
	X509 *done = NULL;

	if (x == NULL || subj == NULL || X509_set_version(x, X509_VERSION_3) != 1 ||
	    ic_serial(x) < 0 ||
	    X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
	    X509_NAME_add_entry_by_NID(subj, NID_organizationName, MBSTRING_ASC,
	                               (const unsigned char *)"mailmoat interception", -1,
	                               -1, 0) != 1)
		goto out;
	if (cn != NULL &&
	    X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_ASC,
	                               (const unsigned char *)cn, -1, -1, 0) != 1)
		goto out;
	if (X509_set_subject_name(x, subj) != 1 ||
	    ASN1_TIME_adj(X509_getm_notBefore(x), (time_t)now, 0, -IC_BACKDATE_S) == NULL)
		goto out;
	if (limit != NULL) {
		int days, secs;
		int64_t limit_s;

		if (ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), limit) != 1)
			goto out;
		limit_s = now - IC_BACKDATE_S + (int64_t)days * 86400 + secs;
		/*
		 * An upstream certificate that already expired (it expired
		 * between its verification and now, or the clock moved) gives
		 * a leaf whose notAfter precedes its notBefore: clients refuse
		 * it as they would the real one, and the cache re-mints it
		 * every time.
		 */
		if (limit_s < not_after)
			not_after = limit_s;
		else
			limit = NULL;
	}
	if (limit != NULL ? X509_set1_notAfter(x, limit) != 1
	                  : ASN1_TIME_adj(X509_getm_notAfter(x), (time_t)now, 0,
	                                  INTERCEPT_LIFETIME_S) == NULL)
		goto out;
	if (ic_set_spki(ca, x) < 0)
		goto out;
	for (int i = 0; i < IC_EXT_COUNT; i++)
		if (X509_add_ext(x, ca->ext[i], -1) != 1)
			goto out;
	/* non-critical: the subject is not empty (RFC 5280 4.2.1.6) */
	if (X509_add1_ext_i2d(x, NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) != 1 ||
	    X509_sign(x, ca->key, ca->md) <= 0)
		goto out;
	/*
	 * Decoded afresh from its DER: the copy carries the public key as an
	 * EVP_PKEY (X509_get0_pubkey(), which SSL_use_certificate() needs)
	 * and no cached hash or extension data from before signing.
	 */
	done = X509_dup(x);
	if (done == NULL)
		goto out;
	*not_after_r = not_after;
out:
	X509_NAME_free(subj);
	X509_free(x);
	return done;
}

/*
 * Mints a leaf for the names of upstream: its DNS and IP subjectAltNames,
 * nothing else (an email or URI name means nothing to a TLS client), or
 * its subject CN as one DNS name when there are none.
 */
static X509 *ic_mint_upstream(struct intercept_ca *ca, X509 *up, int64_t now,
                              int64_t *not_after_r)
{
	int crit = -1;
	GENERAL_NAMES *src = X509_get_ext_d2i(up, NID_subject_alt_name, &crit, NULL);
	GENERAL_NAMES *san = sk_GENERAL_NAME_new_null();
	char cn[IC_DNS_MAX + 1], ip_cn[48];
	const char *leaf_cn = NULL;
	X509 *x = NULL;

	ip_cn[0] = '\0';
	if (san == NULL)
		goto out;
	if (crit == -2) { /* several subjectAltName extensions: malformed */
		ERR_raise_data(ERR_LIB_X509V3, ERR_R_PASSED_INVALID_ARGUMENT,
		               "intercept: several subjectAltName extensions");
		goto out;
	}
	for (int i = 0; i < sk_GENERAL_NAME_num(src); i++) {
		GENERAL_NAME *g = sk_GENERAL_NAME_value(src, i), *copy;
		int type;
		ASN1_STRING *v = GENERAL_NAME_get0_value(g, &type);

		if (type == GEN_DNS) {
			if (ASN1_STRING_length(v) < 1)
				continue;
			if (leaf_cn == NULL &&
			    ic_name_ok(ASN1_STRING_get0_data(v), ASN1_STRING_length(v),
			               IC_CN_MAX)) {
				memcpy(cn, ASN1_STRING_get0_data(v),
				       (size_t)ASN1_STRING_length(v));
				cn[ASN1_STRING_length(v)] = '\0';
				leaf_cn = cn;
			}
		} else if (type == GEN_IPADD) {
			char text[sizeof(ip_cn)];

			if (ic_ip_text(v, text, sizeof(text)) < 0)
				continue;
			if (ip_cn[0] == '\0')
				memcpy(ip_cn, text, sizeof(text));
		} else {
			continue;
		}
		copy = GENERAL_NAME_dup(g);
		if (copy == NULL || sk_GENERAL_NAME_push(san, copy) <= 0) {
			GENERAL_NAME_free(copy);
			goto out;
		}
	}
	if (sk_GENERAL_NAME_num(san) == 0) {
		/* legacy: the subject CN is the name (RFC 6125 6.4.4) */
		int len = ic_upstream_cn(up, cn, sizeof(cn));
		GENERAL_NAME *g;
		ASN1_IA5STRING *s;

		if (len < 0) {
			ERR_raise_data(
			    ERR_LIB_X509V3, ERR_R_PASSED_INVALID_ARGUMENT,
			    "intercept: the upstream certificate names no host");
			goto out;
		}
		g = GENERAL_NAME_new();
		s = ASN1_IA5STRING_new();
		if (g == NULL || s == NULL || ASN1_STRING_set(s, cn, len) != 1) {
			GENERAL_NAME_free(g);
			ASN1_IA5STRING_free(s);
			goto out;
		}
		GENERAL_NAME_set0_value(g, GEN_DNS, s);
		if (sk_GENERAL_NAME_push(san, g) <= 0) {
			GENERAL_NAME_free(g);
			goto out;
		}
		leaf_cn = len <= IC_CN_MAX ? cn : NULL;
	} else if (leaf_cn == NULL) {
		if (ic_upstream_cn(up, cn, IC_CN_MAX + 1) >= 0)
			leaf_cn = cn;
		else if (ip_cn[0] != '\0')
			leaf_cn = ip_cn;
	}
	x = ic_mint(ca, san, leaf_cn, now, X509_get0_notAfter(up), not_after_r);
out:
	GENERAL_NAMES_free(src);
	GENERAL_NAMES_free(san);
	return x;
}

/* ---- the cache ---- */

static size_t ic_bucket(const struct intercept_ca *ca, const unsigned char *key)
{
	uint64_t h;

	memcpy(&h, key, sizeof(h));
	return (size_t)(h & (ca->nbuckets - 1));
}

static void ic_lru_unlink(struct intercept_ca *ca, struct ic_entry *e)
{
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	else
		ca->lru_head = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else
		ca->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void ic_lru_push(struct intercept_ca *ca, struct ic_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = ca->lru_head;
	if (ca->lru_head != NULL)
		ca->lru_head->lru_prev = e;
	ca->lru_head = e;
	if (ca->lru_tail == NULL)
		ca->lru_tail = e;
}

static struct ic_entry *ic_find(struct intercept_ca *ca, const unsigned char *key)
{
	for (struct ic_entry *e = ca->buckets[ic_bucket(ca, key)]; e != NULL;
	     e = e->hnext)
		if (memcmp(e->key, key, IC_KEY_LEN) == 0)
			return e;
	return NULL;
}

/* Unlinks e from its bucket chain and the LRU list and frees it. */
static void ic_remove(struct intercept_ca *ca, struct ic_entry *e)
{
	struct ic_entry **pp = &ca->buckets[ic_bucket(ca, e->key)];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	ic_lru_unlink(ca, e);
	ca->count--;
	X509_free(e->leaf);
	free(e);
}

/* Whether a cached leaf may still be handed out at now. */
static int ic_fresh(const struct ic_entry *e, int64_t now)
{
	return now + INTERCEPT_MARGIN_S < e->not_after &&
	       now >= e->minted - IC_CLOCK_BACK_S;
}

X509 *intercept_leaf(struct intercept_ca *ca, X509 *upstream, int64_t now, int *cached_r)
{
	unsigned char key[EVP_MAX_MD_SIZE];
	unsigned int klen = 0;
	struct ic_entry *e;
	int64_t not_after;
	X509 *leaf;

	if (cached_r != NULL)
		*cached_r = 0;
	if (X509_digest(upstream, EVP_sha256(), key, &klen) != 1 || klen != IC_KEY_LEN)
		return NULL;
	e = ic_find(ca, key);
	if (e != NULL && ic_fresh(e, now)) {
		ca->hits++;
		ic_lru_unlink(ca, e);
		ic_lru_push(ca, e);
		if (cached_r != NULL)
			*cached_r = 1;
		X509_up_ref(e->leaf);
		return e->leaf;
	}
	leaf = ic_mint_upstream(ca, upstream, now, &not_after);
	if (leaf == NULL)
		return NULL;
	ca->minted++;
	if (e != NULL) {
		/* stale: replaced in place (holders keep their own reference) */
		X509_free(e->leaf);
		ic_lru_unlink(ca, e);
	} else {
		e = calloc(1, sizeof(*e));
		if (e == NULL)
			return leaf; /* served, just not cached */
		if (ca->count >= INTERCEPT_CACHE_MAX)
			ic_remove(ca, ca->lru_tail);
		memcpy(e->key, key, IC_KEY_LEN);
		e->hnext = ca->buckets[ic_bucket(ca, key)];
		ca->buckets[ic_bucket(ca, key)] = e;
		ca->count++;
	}
	e->leaf = leaf;
	e->not_after = not_after;
	e->minted = now;
	ic_lru_push(ca, e);
	X509_up_ref(leaf);
	return leaf;
}

/*
 * Whether name is an IP address literal, stored in *ip_r. Security:
 * a2i_IPADDRESS() reads "1.2.3.4 x" and "01.2.3.4" as 1.2.3.4, so an IPv4
 * literal must be exactly the dotted quad it parses to, and an IPv6 one
 * holds only hex digits, colons and dots.
 */
static int ic_ip_literal(const char *name, ASN1_OCTET_STRING **ip_r)
{
	char text[48];

	*ip_r = NULL;
	if (strchr(name, ':') != NULL) {
		if (strspn(name, "0123456789abcdefABCDEF:.") != strlen(name))
			return 0;
	} else if (strspn(name, "0123456789.") != strlen(name)) {
		return 0;
	}
	*ip_r = a2i_IPADDRESS(name);
	if (*ip_r == NULL)
		return 0;
	if (strchr(name, ':') == NULL &&
	    (ic_ip_text(*ip_r, text, sizeof(text)) < 0 || strcmp(text, name) != 0)) {
		ASN1_OCTET_STRING_free(*ip_r);
		*ip_r = NULL;
		return 0;
	}
	return 1;
}

/*
 * Whether name (len bytes, no trailing dot) may be a dNSName. Security:
 * the name comes from the client (SNI), so only a plain host name passes;
 * never a wildcard, which would make a leaf good for every host of a
 * domain, nor a malformed address such as "01.2.3.4".
 */
static int ic_host_ok(const char *name, size_t len)
{
	static const char allowed[] = "abcdefghijklmnopqrstuvwxyz"
	                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
	size_t i;

	if (len < 1 || len > IC_DNS_MAX || name[0] == '.')
		return 0;
	for (i = 0; i < len; i++)
		if (strchr(allowed, name[i]) == NULL ||
		    (name[i] == '.' && i + 1 < len && name[i + 1] == '.'))
			return 0;
	for (i = 0; i < len; i++)
		if (name[i] != '.' && (name[i] < '0' || name[i] > '9'))
			return 1;
	return 0; /* digits and dots only: not an address, not a name */
}

X509 *intercept_leaf_for_name(struct intercept_ca *ca, const char *name, int64_t now)
{
	GENERAL_NAMES *san = sk_GENERAL_NAME_new_null();
	GENERAL_NAME *g = GENERAL_NAME_new();
	ASN1_OCTET_STRING *ip = NULL;
	char host[IC_DNS_MAX + 1];
	size_t len = strlen(name);
	int64_t not_after;
	X509 *x = NULL;

	if (san == NULL || g == NULL)
		goto out;
	if (ic_ip_literal(name, &ip)) {
		GENERAL_NAME_set0_value(g, GEN_IPADD, ip);
		snprintf(host, sizeof(host), "%s", name);
	} else {
		ASN1_IA5STRING *s;

		/* X509_check_host() drops the reference's trailing dot too */
		if (len > 1 && name[len - 1] == '.')
			len--;
		if (!ic_host_ok(name, len)) {
			ERR_raise_data(ERR_LIB_X509V3, ERR_R_PASSED_INVALID_ARGUMENT,
			               "intercept: not a host name or IP address");
			goto out;
		}
		memcpy(host, name, len);
		host[len] = '\0';
		s = ASN1_IA5STRING_new();
		if (s == NULL || ASN1_STRING_set(s, host, (int)len) != 1) {
			ASN1_IA5STRING_free(s);
			goto out;
		}
		GENERAL_NAME_set0_value(g, GEN_DNS, s);
	}
	if (sk_GENERAL_NAME_push(san, g) <= 0)
		goto out;
	g = NULL;
	x = ic_mint(ca, san, strlen(host) <= IC_CN_MAX ? host : NULL, now, NULL,
	            &not_after);
	if (x != NULL)
		ca->minted++;
out:
	GENERAL_NAME_free(g);
	GENERAL_NAMES_free(san);
	return x;
}
