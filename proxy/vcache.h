/*
 * vcache.h - the process-wide verdict cache of the IMAP proxy.
 *
 * Keyed by (upstream, user, mailbox, UIDVALIDITY, UID): the identity of a
 * message that never changes (RFC 3501 section 2.3.1.1), shared by every
 * session of the process (Thunderbird opens several connections per
 * account), bounded with least-recently-used eviction. An entry remembers
 * the signature database version it was scanned with; after an update the
 * lookup misses and the message is scanned again. Loop thread only.
 */
#ifndef MAILMOAT_VCACHE_H
#define MAILMOAT_VCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "policy/quarantine.h"
#include "scanners/scan.h"

struct spool;
struct vcache;

struct vcache_key {
	const char *upstream; /* "host:port" */
	const char *user;
	const char *mailbox; /* as the client named it (modified UTF-7 or UTF-8) */
	uint32_t uidvalidity;
	uint32_t uid;
};

struct vcache_entry {
	enum scan_result result;
	char signature[SCAN_SIG_MAX]; /* the threat, or the scan error */
	unsigned db_version;          /* of the engine that scanned it */
	uint64_t size;                /* the original's size in octets */
	char quar_id[QUAR_ID_MAX];    /* quarantined: its id, else "" */
	struct spool *notice;         /* the substitute served in its place, or NULL */
	int tagged;           /* the substitute is the original tagged (policy tag): its
	                         structure and parts are the original's */
	uint64_t notice_text; /* the notice's text octets and lines */
	uint64_t notice_lines;
};

/* A cache of at most max_entries (at least 1). NULL on allocation failure. */
struct vcache *vcache_new(size_t max_entries);

/*
 * Notices are as large as the messages they stand in for: the cache holds
 * at most this many octets of them (VCACHE_NOTICE_BYTES by default),
 * dropping the least recently used entries that have one beyond it.
 */
#define VCACHE_NOTICE_BYTES (64ull << 20)
void vcache_set_notice_limit(struct vcache *c, uint64_t bytes);
uint64_t vcache_notice_bytes(const struct vcache *c);

/* Frees the cache and its references; NULLs *cp. */
void vcache_free(struct vcache **cp);

/*
 * The entry for k scanned with db_version, or NULL (absent, or scanned with
 * another database version: then it is dropped). A hit becomes the most
 * recently used. The pointer is valid until the next put or free.
 */
const struct vcache_entry *vcache_get(struct vcache *c, const struct vcache_key *k,
                                      unsigned db_version);

/*
 * Stores (or replaces) the entry for k, copying *e and taking a reference
 * on e->notice. Evicts the least recently used entry when full. Returns 0,
 * or -1 on allocation failure (the cache is unchanged).
 */
int vcache_put(struct vcache *c, const struct vcache_key *k,
               const struct vcache_entry *e);

/* Entries held. */
size_t vcache_count(const struct vcache *c);

#endif
