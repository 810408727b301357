/*
 * vcache.c - the verdict cache (see vcache.h): a chained hash table over a
 * doubly-linked LRU list.
 *
 * The key is flattened into one string "upstream\0user\0mailbox\0" plus the
 * two numbers, compared whole, so distinct users or servers never share an
 * entry however their names look. Buckets are a power of two at least twice
 * the capacity; lookups are O(1) expected, eviction O(1).
 */
#include "proxy/vcache.h"

#include <assert.h>

#include <stdlib.h>
#include <string.h>

#include "proxy/spool.h"

struct vc_node {
	struct vc_node *hnext; /* bucket chain */
	struct vc_node *lru_prev, *lru_next;
	uint64_t hash;
	uint32_t uidvalidity, uid;
	size_t klen;
	char *kstr; /* upstream \0 user \0 mailbox \0 */
	struct vcache_entry e;
};

struct vcache {
	struct vc_node **buckets;
	size_t nbuckets; /* power of two */
	size_t count, max;
	uint64_t notice_bytes, max_notice_bytes; /* octets of the notices held */
	struct vc_node *lru_head;                /* most recent */
	struct vc_node *lru_tail;                /* least recent */
};

struct vcache *vcache_new(size_t max_entries)
{
	struct vcache *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->max = max_entries > 0 ? max_entries : 1;
	c->max_notice_bytes = VCACHE_NOTICE_BYTES;
	c->nbuckets = 16;
	while (c->nbuckets < 2 * c->max)
		c->nbuckets *= 2;
	c->buckets = calloc(c->nbuckets, sizeof(struct vc_node *));
	if (c->buckets == NULL) {
		free(c);
		return NULL;
	}
	return c;
}

static void vc_node_free(struct vc_node *n)
{
	spool_unref(&n->e.notice);
	free(n->kstr);
	free(n);
}

void vcache_free(struct vcache **cp)
{
	struct vcache *c = *cp;

	*cp = NULL;
	if (c == NULL)
		return;
	while (c->lru_head != NULL) {
		struct vc_node *n = c->lru_head;

		c->lru_head = n->lru_next;
		vc_node_free(n);
	}
	free(c->buckets);
	free(c);
}

/* Flattens the key's strings; returns a malloc'd buffer and its length. */
static char *vc_kstr(const struct vcache_key *k, size_t *len_r)
{
	const char *parts[3] = {k->upstream ? k->upstream : "", k->user ? k->user : "",
	                        k->mailbox ? k->mailbox : ""};
	size_t len = 0, o = 0;
	char *s;

	for (int i = 0; i < 3; i++)
		len += strlen(parts[i]) + 1;
	s = malloc(len);
	if (s == NULL)
		return NULL;
	for (int i = 0; i < 3; i++) {
		size_t l = strlen(parts[i]) + 1;

		memcpy(s + o, parts[i], l);
		o += l;
	}
	*len_r = len;
	return s;
}

/* FNV-1a over the flattened strings and the two numbers. */
static uint64_t vc_hash(const char *kstr, size_t klen, uint32_t uidvalidity, uint32_t uid)
{
	uint64_t h = 0xcbf29ce484222325ull;
	const uint32_t nums[2] = {uidvalidity, uid};

	for (size_t i = 0; i < klen; i++)
		h = (h ^ (unsigned char)kstr[i]) * 0x100000001b3ull;
	/* the numbers' bytes, least significant first (any host byte order) */
	for (size_t i = 0; i < 2; i++) {
		for (unsigned shift = 0; shift < 32; shift += 8)
			h = (h ^ ((nums[i] >> shift) & 0xffu)) * 0x100000001b3ull;
	}
	return h;
}

static void vc_lru_unlink(struct vcache *c, struct vc_node *n)
{
	if (n->lru_prev != NULL)
		n->lru_prev->lru_next = n->lru_next;
	else
		c->lru_head = n->lru_next;
	if (n->lru_next != NULL)
		n->lru_next->lru_prev = n->lru_prev;
	else
		c->lru_tail = n->lru_prev;
	n->lru_prev = n->lru_next = NULL;
	/* the list is consistent: n is neither end any more */
	assert(c->lru_head != n && c->lru_tail != n);
}

static void vc_lru_push(struct vcache *c, struct vc_node *n)
{
	n->lru_prev = NULL;
	n->lru_next = c->lru_head;
	if (c->lru_head != NULL)
		c->lru_head->lru_prev = n;
	c->lru_head = n;
	if (c->lru_tail == NULL)
		c->lru_tail = n;
}

/* Unlinks n from its bucket chain and the LRU list and frees it. */
static void vc_remove(struct vcache *c, struct vc_node *n)
{
	struct vc_node **pp = &c->buckets[n->hash & (c->nbuckets - 1)];

	while (*pp != n)
		pp = &(*pp)->hnext;
	*pp = n->hnext;
	vc_lru_unlink(c, n);
	c->count--;
	if (n->e.notice != NULL)
		c->notice_bytes -= spool_size(n->e.notice);
	vc_node_free(n);
}

/*
 * The notices are padded to their original's size and may be held by the
 * cache for a long time: past max_notice_bytes in all, the least recently
 * used entries with a notice go (keep is the one just stored). A message
 * whose entry went is scanned again when fetched; its quarantine entry is
 * found, not stored twice.
 */
static void vc_trim_notices(struct vcache *c, const struct vc_node *keep)
{
	struct vc_node *n = c->lru_tail;

	while (n != NULL && c->notice_bytes > c->max_notice_bytes) {
		struct vc_node *prev = n->lru_prev;

		if (n != keep && n->e.notice != NULL)
			vc_remove(c, n);
		n = prev;
	}
}

void vcache_set_notice_limit(struct vcache *c, uint64_t bytes)
{
	c->max_notice_bytes = bytes;
	vc_trim_notices(c, NULL);
}

uint64_t vcache_notice_bytes(const struct vcache *c)
{
	return c->notice_bytes;
}

static struct vc_node *vc_find(struct vcache *c, const char *kstr, size_t klen,
                               uint64_t h, const struct vcache_key *k)
{
	for (struct vc_node *n = c->buckets[h & (c->nbuckets - 1)]; n != NULL;
	     n = n->hnext)
		if (n->hash == h && n->uid == k->uid &&
		    n->uidvalidity == k->uidvalidity && n->klen == klen &&
		    memcmp(n->kstr, kstr, klen) == 0)
			return n;
	return NULL;
}

const struct vcache_entry *vcache_get(struct vcache *c, const struct vcache_key *k,
                                      unsigned db_version)
{
	size_t klen;
	char *kstr = vc_kstr(k, &klen);
	struct vc_node *n;

	if (kstr == NULL)
		return NULL;
	n = vc_find(c, kstr, klen, vc_hash(kstr, klen, k->uidvalidity, k->uid), k);
	free(kstr);
	if (n == NULL)
		return NULL;
	if (n->e.db_version != db_version) {
		/* new signatures since: the message must be scanned again */
		vc_remove(c, n);
		return NULL;
	}
	vc_lru_unlink(c, n);
	vc_lru_push(c, n);
	return &n->e;
}

int vcache_put(struct vcache *c, const struct vcache_key *k, const struct vcache_entry *e)
{
	size_t klen;
	char *kstr = vc_kstr(k, &klen);
	uint64_t h;
	struct vc_node *n;

	if (kstr == NULL)
		return -1;
	h = vc_hash(kstr, klen, k->uidvalidity, k->uid);
	n = vc_find(c, kstr, klen, h, k);
	if (n != NULL) {
		free(kstr);
		if (n->e.notice != NULL)
			c->notice_bytes -= spool_size(n->e.notice);
		spool_unref(&n->e.notice);
		n->e = *e;
		if (n->e.notice != NULL) {
			spool_ref(n->e.notice);
			c->notice_bytes += spool_size(n->e.notice);
		}
		vc_lru_unlink(c, n);
		vc_lru_push(c, n);
		vc_trim_notices(c, n);
		return 0;
	}
	n = calloc(1, sizeof(*n));
	if (n == NULL) {
		free(kstr);
		return -1;
	}
	if (c->count >= c->max)
		vc_remove(c, c->lru_tail);
	n->hash = h;
	n->uidvalidity = k->uidvalidity;
	n->uid = k->uid;
	n->kstr = kstr;
	n->klen = klen;
	n->e = *e;
	if (n->e.notice != NULL) {
		spool_ref(n->e.notice);
		c->notice_bytes += spool_size(n->e.notice);
	}
	n->hnext = c->buckets[h & (c->nbuckets - 1)];
	c->buckets[h & (c->nbuckets - 1)] = n;
	vc_lru_push(c, n);
	c->count++;
	vc_trim_notices(c, n);
	return 0;
}

size_t vcache_count(const struct vcache *c)
{
	return c->count;
}
