/*
 * spool.c - message capture: memory up to a bound, then an unlinked file.
 *
 * States: FILLING (memory), FILLING (file: the memory part was written out
 * and every later append goes through a small write buffer), FROZEN. The
 * spill file is created with O_TMPFILE (or mkstemp + unlink) so it vanishes
 * with the last descriptor, whatever happens to the process. Writes go to
 * the page cache without fsync: a spool is scratch space, the quarantine
 * store is where durability is paid for.
 */
#include "proxy/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SPOOL_WBUF 65536

struct spool {
	atomic_int refs;
	int fd; /* spill file, -1 while in memory */
	int frozen;
	int overflowed;
	int err; /* a failed spill-file write: sticky, negative errno */
	size_t mem_limit;
	uint64_t max_size;
	uint64_t size; /* bytes accepted */
	char *mem;     /* memory content (size bytes), or the file write buffer */
	size_t mem_cap;
	size_t wbuf_len; /* file mode: bytes pending in mem */
	char tmpdir[512];
};

struct spool *spool_new(size_t mem_limit, const char *tmpdir, uint64_t max_size)
{
	struct spool *sp = calloc(1, sizeof(*sp));

	if (sp == NULL)
		return NULL;
	atomic_init(&sp->refs, 1);
	sp->fd = -1;
	sp->mem_limit = mem_limit;
	sp->max_size = max_size;
	snprintf(sp->tmpdir, sizeof(sp->tmpdir), "%s",
	         tmpdir != NULL && *tmpdir != '\0' ? tmpdir : "/tmp");
	return sp;
}

static int spool_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static int spool_open_file(struct spool *sp)
{
	int fd = open(sp->tmpdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0) {
		/* O_TMPFILE unsupported on this filesystem: classic unlinked temp file */
		char path[600];

		snprintf(path, sizeof(path), "%s/mailmoat-spool-XXXXXX", sp->tmpdir);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd < 0)
			return -errno;
		unlink(path);
	}
	sp->fd = fd;
	return 0;
}

/* Moves the memory content into a new spill file; mem becomes the write buffer. */
static int spool_spill(struct spool *sp)
{
	int r = spool_open_file(sp);

	if (r < 0)
		return r;
	r = spool_write_all(sp->fd, sp->mem, (size_t)sp->size);
	if (r < 0)
		return r;
	if (sp->mem_cap > SPOOL_WBUF) {
		char *nb = realloc(sp->mem, SPOOL_WBUF);

		if (nb != NULL) {
			sp->mem = nb;
			sp->mem_cap = SPOOL_WBUF;
		}
	}
	sp->wbuf_len = 0;
	return 0;
}

static int spool_flush(struct spool *sp)
{
	int r = 0;

	if (sp->fd >= 0 && sp->wbuf_len > 0) {
		r = spool_write_all(sp->fd, sp->mem, sp->wbuf_len);
		sp->wbuf_len = 0;
	}
	return r;
}

/*
 * Records a write failure for good: bytes already counted in size may be
 * missing from the file, so every later append and the freeze fail too and
 * nobody can take the spool for a complete message.
 */
static int spool_fail(struct spool *sp, int r)
{
	sp->err = r;
	return r;
}

int spool_append(struct spool *sp, const void *data, size_t len)
{
	const char *p = data;
	int r;

	if (sp->frozen)
		return -EINVAL;
	if (sp->err < 0)
		return sp->err;
	if (sp->overflowed)
		return -EFBIG;
	if (sp->max_size != 0 && sp->size + len > sp->max_size) {
		sp->overflowed = 1;
		return -EFBIG;
	}
	if (len == 0)
		return 0;
	if (sp->fd < 0 && sp->size + len > sp->mem_limit) {
		r = spool_spill(sp);
		if (r < 0)
			return spool_fail(sp, r);
	}
	if (sp->fd < 0) {
		if (sp->size + len > sp->mem_cap) {
			size_t ncap = sp->mem_cap != 0 ? sp->mem_cap : 4096;
			char *nb;

			while (ncap < sp->size + len)
				ncap *= 2;
			if (ncap > sp->mem_limit && sp->mem_limit >= sp->size + len)
				ncap = sp->mem_limit;
			nb = realloc(sp->mem, ncap);
			if (nb == NULL)
				return -ENOMEM;
			sp->mem = nb;
			sp->mem_cap = ncap;
		}
		memcpy(sp->mem + sp->size, p, len);
		sp->size += len;
		return 0;
	}
	/* file mode: buffer small appends, write big ones straight through */
	if (sp->mem == NULL) {
		sp->mem = malloc(SPOOL_WBUF);
		if (sp->mem == NULL)
			return -ENOMEM;
		sp->mem_cap = SPOOL_WBUF;
	}
	if (sp->wbuf_len + len > sp->mem_cap) {
		r = spool_flush(sp);
		if (r < 0)
			return spool_fail(sp, r);
	}
	if (len >= sp->mem_cap) {
		r = spool_write_all(sp->fd, p, len);
		if (r < 0)
			return spool_fail(sp, r);
	} else {
		memcpy(sp->mem + sp->wbuf_len, p, len);
		sp->wbuf_len += len;
	}
	sp->size += len;
	return 0;
}

void spool_expect(struct spool *sp, uint64_t size)
{
	char *nb;

	if (sp->frozen || sp->err < 0 || sp->fd >= 0 || sp->size != 0 || size == 0 ||
	    (sp->max_size != 0 && size > sp->max_size))
		return;
	if (size > sp->mem_limit) {
		/* nothing to write yet: only creating the file can fail, and the
		 * appends then meet that error on their usual path */
		(void)spool_spill(sp);
		return;
	}
	if (size <= sp->mem_cap)
		return;
	nb = realloc(sp->mem, (size_t)size);
	if (nb != NULL) {
		sp->mem = nb;
		sp->mem_cap = (size_t)size;
	}
}

int spool_freeze(struct spool *sp)
{
	int r = sp->err < 0 ? sp->err : spool_flush(sp);

	if (r < 0)
		sp->err = r;
	sp->frozen = 1;
	if (sp->fd >= 0) {
		free(sp->mem);
		sp->mem = NULL;
		sp->mem_cap = 0;
	}
	return r;
}

uint64_t spool_size(const struct spool *sp)
{
	return sp->size;
}

int spool_overflowed(const struct spool *sp)
{
	return sp->overflowed;
}

const void *spool_mem(const struct spool *sp)
{
	if (sp->fd >= 0)
		return NULL;
	return sp->mem != NULL ? sp->mem : "";
}

int spool_fd(const struct spool *sp)
{
	return sp->fd;
}

ssize_t spool_pread(const struct spool *sp, void *buf, size_t len, uint64_t off)
{
	if (off >= sp->size)
		return 0;
	if (len > sp->size - off)
		len = (size_t)(sp->size - off);
	if (sp->fd < 0) {
		memcpy(buf, sp->mem + off, len);
		return (ssize_t)len;
	}
	for (;;) {
		ssize_t r = pread(sp->fd, buf, len, (off_t)off);

		if (r >= 0)
			return r;
		if (errno != EINTR)
			return -errno;
	}
}

void spool_ref(struct spool *sp)
{
	atomic_fetch_add(&sp->refs, 1);
}

void spool_unref(struct spool **spp)
{
	struct spool *sp = *spp;

	*spp = NULL;
	if (sp == NULL || atomic_fetch_sub(&sp->refs, 1) != 1)
		return;
	if (sp->fd >= 0)
		close(sp->fd);
	free(sp->mem);
	free(sp);
}
