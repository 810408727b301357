/*
 * mime.h - stream a message's MIME tree and hand each leaf part, decoded,
 * to a callback as a temporary file.
 *
 * Used where a message is too large to hand to libclamav's own mail parser,
 * which holds the whole message in memory several times over: GMime parses
 * the structure from a seekable stream without loading part contents
 * (persist-stream mode), and each part is decoded straight into an unlinked
 * temporary file. Memory stays bounded by the headers, not the content.
 */
#ifndef MAILMOAT_MIME_H
#define MAILMOAT_MIME_H

#include <stdint.h>

enum mime_walk_res {
	MIME_WALK_DONE = 0,    /* every part was visited */
	MIME_WALK_STOPPED = 1, /* the callback asked to stop */
	MIME_WALK_LIMIT = -1,  /* max_parts or max_depth exceeded */
	MIME_WALK_IO = -2,     /* a temporary file could not be written */
};

/*
 * Called for each leaf part: fd is the decoded content (read from offset
 * 0, closed after the call), name the part's file name or NULL, ctype its
 * "type/subtype". Returns 0 to go on, non-zero to stop the walk.
 */
typedef int (*mime_part_cb)(int fd, const char *name, const char *ctype, void *ctx);

/*
 * Walks the message in fd (bytes 0..size, read with the fd's own offset,
 * so no one else may read it through read(2) meanwhile; pread is fine).
 * Temporary files go to tmpdir. Never fails on malformed mail: GMime
 * recovers, and what it cannot split is one part. Thread-safe once
 * g_mime_init() has run.
 */
enum mime_walk_res mime_walk_fd(int fd, uint64_t size, const char *tmpdir,
                                unsigned max_parts, unsigned max_depth, mime_part_cb cb,
                                void *ctx);

#endif
