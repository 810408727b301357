/*
 * intercept.h - the local CA of TLS interception on transparent listeners
 * (`intercept_ca: {certificate, key}`): leaf certificates minted for the
 * names a verified upstream certificate carries, signed by that CA,
 * short-lived and cached.
 *
 * One EC P-256 key pair is made when the CA is loaded and serves every
 * leaf (what clients check is the CA's signature and the names). A leaf
 * copies the upstream certificate's subjectAltName (DNS names and IP
 * addresses only; its subject CN as a DNS name when the SAN holds neither),
 * so a client that verifies the proxy's leaf accepts exactly the names the
 * real server proved to the proxy. Validity: notBefore an hour ago (clock
 * skew), notAfter INTERCEPT_LIFETIME_S from now but never past the upstream
 * certificate's notAfter.
 *
 * The cache is keyed by the SHA-256 of the upstream certificate's DER, so
 * a server's many connections (and every host behind one wildcard
 * certificate) share one leaf; an entry is reused while more than
 * INTERCEPT_MARGIN_S of its validity remain (so a leaf clamped to an
 * upstream certificate with less left than that is minted per connection)
 * and the clock has not gone back more than a minute since it was minted;
 * least recently used entries go first beyond INTERCEPT_CACHE_MAX.
 *
 * Used from the event loop only (not thread-safe); intercept_ca_load may
 * run on the thread pool (configuration reloads). Reference counted: each
 * listener's TLS settings hold one.
 */
#ifndef MAILMOAT_INTERCEPT_H
#define MAILMOAT_INTERCEPT_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

#define INTERCEPT_LIFETIME_S (24 * 3600)
#define INTERCEPT_MARGIN_S 3600
#define INTERCEPT_CACHE_MAX 1024

struct intercept_ca;

/*
 * Loads the CA certificate (the first in the file) and its private key
 * (RSA, EC, Ed25519 or Ed448; PEM files, the key not encrypted), checks
 * that they match and that the certificate may sign others
 * (basicConstraints CA:TRUE, keyCertSign when keyUsage is present), and
 * makes the leaf key. Returns the CA with one reference, or NULL with the
 * reason in err ("intercept_ca: <file>: ..."; err may be NULL). Its
 * validity period is not checked.
 */
struct intercept_ca *intercept_ca_load(const char *cert_file, const char *key_file,
                                       char *err, size_t errlen);

void intercept_ca_ref(struct intercept_ca *ca);

/* Drops a reference; the last one frees the CA, its key and its cache. */
void intercept_ca_unref(struct intercept_ca **ca);

/*
 * A leaf for the names of upstream (the verified upstream certificate),
 * from the cache or newly minted; *cached_r says which. now is the time
 * in seconds since the epoch. Returns a new reference (X509_free it), or
 * NULL when minting failed (the reason is in the OpenSSL error queue),
 * e.g. for an upstream certificate that names no host.
 */
X509 *intercept_leaf(struct intercept_ca *ca, X509 *upstream, int64_t now, int *cached_r);

/*
 * A leaf for one name, a DNS name or an IP address literal (then an IP
 * SAN), not cached: it carries the proxy's own error message to a client
 * when no verified upstream certificate exists. A trailing dot is dropped.
 * Returns a new reference, or NULL (OpenSSL error queue) when minting
 * failed or name is neither a host name (letters, digits, '-', '_', dots;
 * no wildcard) nor an IPv4 or IPv6 literal.
 */
X509 *intercept_leaf_for_name(struct intercept_ca *ca, const char *name, int64_t now);

/* The private key of every leaf (borrowed). */
EVP_PKEY *intercept_leaf_key(const struct intercept_ca *ca);

/* The CA certificate (borrowed), sent after the leaf. */
X509 *intercept_ca_cert(const struct intercept_ca *ca);

/* Cache figures: leaves served from the cache, leaves minted (both kinds). */
void intercept_stats(const struct intercept_ca *ca, uint64_t *hits_r, uint64_t *minted_r);

#endif
