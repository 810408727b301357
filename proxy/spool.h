/*
 * spool.h - captured message bytes: in memory up to a bound, then in an
 * unlinked temporary file.
 *
 * A spool belongs to one message transaction. It is filled on the event loop
 * by the session that captures the message, then frozen (spool_freeze) and
 * from then on only read, possibly from several threads at once (the scan
 * job on the thread pool, the session forwarding it). Lifetime is by an
 * atomic reference count: every holder takes a reference and drops it with
 * spool_unref().
 */
#ifndef MAILMOAT_SPOOL_H
#define MAILMOAT_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct spool;

/*
 * Creates an empty spool holding up to mem_limit bytes in memory before it
 * moves everything to an unlinked file in tmpdir; max_size caps the total
 * (0 = no cap). Returns NULL on allocation failure. The caller holds the
 * only reference.
 */
struct spool *spool_new(size_t mem_limit, const char *tmpdir, uint64_t max_size);

/*
 * Appends len bytes. Returns 0; -EFBIG once the total would pass max_size
 * (the bytes are dropped and spool_overflowed() turns true; later appends
 * are dropped too); another negative errno when the spill file cannot be
 * created or written. Only before spool_freeze().
 */
int spool_append(struct spool *sp, const void *data, size_t len);

/*
 * Tells an empty spool how many bytes are coming (an IMAP literal's size, a
 * POP3 LIST size), so that it takes them in one allocation rather than by
 * doubling, or goes to its file at once when they will not fit in memory.
 * Only a hint: more or fewer bytes may follow, and nothing changes when the
 * spool already holds bytes, when size passes max_size, or when the
 * allocation or the file fails (the appends then take their usual path).
 */
void spool_expect(struct spool *sp, uint64_t size);

/*
 * Marks the spool complete and read-only; flushes pending file writes.
 * Returns 0, or the negative errno of any write that failed since creation
 * (such a failure also makes every later spool_append fail): a spool whose
 * freeze failed must not be used as a whole message.
 */
int spool_freeze(struct spool *sp);

/* Bytes appended so far (excluding bytes dropped past max_size). */
uint64_t spool_size(const struct spool *sp);

/* True when bytes were dropped because of max_size. */
int spool_overflowed(const struct spool *sp);

/* The whole content when it is held in memory, else NULL. */
const void *spool_mem(const struct spool *sp);

/* The spill file descriptor, or -1 while the content is in memory. */
int spool_fd(const struct spool *sp);

/*
 * Reads up to len bytes at offset off into buf. Only after spool_freeze()
 * (before it, bytes may still sit in the write buffer). Returns the byte
 * count (0 at the end) or a negative errno. Safe from any thread.
 */
ssize_t spool_pread(const struct spool *sp, void *buf, size_t len, uint64_t off);

/* Takes another reference. */
void spool_ref(struct spool *sp);

/* Drops the caller's reference and NULLs *spp; frees on the last one. */
void spool_unref(struct spool **spp);

#endif
