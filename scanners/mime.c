/*
 * mime.c - the bounded MIME walker behind mime.h.
 *
 * Recursion follows multiparts and message/rfc822 parts, counting depth
 * and leaf parts against the caller's limits. Each leaf is decoded by
 * GMime's data wrapper (base64, quoted-printable, uuencode) into an
 * O_TMPFILE file, so nothing decoded ever sits in memory whole.
 */
#include "scanners/mime.h"

#include "scanners/attach.h"

#include <fcntl.h>
#include <gmime/gmime.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct mime_walk {
	const char *tmpdir;
	unsigned parts, max_parts, max_depth;
	mime_part_cb cb;
	void *ctx;
};

/* An unlinked read-write temporary file in dir, or -1. */
static int mime_tmpfile(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd < 0) {
		char path[1100];

		snprintf(path, sizeof(path), "%s/mailmoat-part-XXXXXX", dir);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
	}
	return fd;
}

/* Decodes one leaf part into a temporary file and hands it to the callback. */
static enum mime_walk_res mime_leaf(struct mime_walk *w, GMimePart *part)
{
	GMimeDataWrapper *content = g_mime_part_get_content(part);
	GMimeContentType *ct = g_mime_object_get_content_type((GMimeObject *)part);
	GMimeStream *out;
	char *ctype;
	int fd, stop;

	if (++w->parts > w->max_parts)
		return MIME_WALK_LIMIT;
	if (content == NULL)
		return MIME_WALK_DONE;
	fd = mime_tmpfile(w->tmpdir);
	if (fd < 0)
		return MIME_WALK_IO;
	out = g_mime_stream_fs_new(fd);
	g_mime_stream_fs_set_owner((GMimeStreamFs *)out, FALSE);
	if (g_mime_data_wrapper_write_to_stream(content, out) < 0 ||
	    g_mime_stream_flush(out) < 0) {
		g_object_unref(out);
		close(fd);
		return MIME_WALK_IO;
	}
	g_object_unref(out);
	if (lseek(fd, 0, SEEK_SET) < 0) {
		close(fd);
		return MIME_WALK_IO;
	}
	ctype = ct != NULL ? g_mime_content_type_get_mime_type(ct) : NULL;
	stop = w->cb(fd, g_mime_part_get_filename(part),
	             ctype != NULL ? ctype : "text/plain", w->ctx);
	g_free(ctype);
	close(fd);
	return stop ? MIME_WALK_STOPPED : MIME_WALK_DONE;
}

static enum mime_walk_res mime_walk_object(struct mime_walk *w, GMimeObject *obj,
                                           unsigned depth)
{
	if (obj == NULL)
		return MIME_WALK_DONE;
	if (depth > w->max_depth)
		return MIME_WALK_LIMIT;
	if (GMIME_IS_MULTIPART(obj)) {
		GMimeMultipart *mp = (GMimeMultipart *)obj;
		int n = g_mime_multipart_get_count(mp);

		for (int i = 0; i < n; i++) {
			enum mime_walk_res r = mime_walk_object(
			    w, g_mime_multipart_get_part(mp, i), depth + 1);

			if (r != MIME_WALK_DONE)
				return r;
		}
		return MIME_WALK_DONE;
	}
	if (GMIME_IS_MESSAGE_PART(obj)) {
		GMimeMessage *m =
		    g_mime_message_part_get_message((GMimeMessagePart *)obj);

		return m != NULL ? mime_walk_object(w, g_mime_message_get_mime_part(m),
		                                    depth + 1)
		                 : MIME_WALK_DONE;
	}
	if (GMIME_IS_PART(obj))
		return mime_leaf(w, (GMimePart *)obj);
	return MIME_WALK_DONE;
}

enum mime_walk_res mime_walk_fd(int fd, uint64_t size, const char *tmpdir,
                                unsigned max_parts, unsigned max_depth, mime_part_cb cb,
                                void *ctx)
{
	struct mime_walk w = {tmpdir, 0, max_parts, max_depth, cb, ctx};
	struct attach_rules none = {.max_depth = max_depth, .max_parts = max_parts};
	struct attach_finding f;
	GMimeStream *in;
	GMimeParser *parser;
	GMimeMessage *msg;
	enum mime_walk_res r = MIME_WALK_DONE;

	/*
	 * GMime builds the whole tree before the walk can count it (about
	 * 2 KiB a part: 845,000 tiny parts took 1.9 GB), so count the parts
	 * first with the streaming reader, in bounded memory.
	 */
	if (max_parts != 0 && attach_check_fd(fd, &none, &f) == ATTACH_ERROR &&
	    f.parts > max_parts)
		return MIME_WALK_LIMIT;
	in = g_mime_stream_fs_new_with_bounds(fd, 0, (gint64)size);
	g_mime_stream_fs_set_owner((GMimeStreamFs *)in, FALSE);
	parser = g_mime_parser_new_with_stream(in);
	/* part contents stay in the file: only offsets are kept */
	g_mime_parser_set_persist_stream(parser, TRUE);
	g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
	msg = g_mime_parser_construct_message(parser, NULL);
	if (msg != NULL) {
		r = mime_walk_object(&w, g_mime_message_get_mime_part(msg), 0);
		g_object_unref(msg);
	}
	g_object_unref(parser);
	g_object_unref(in);
	return r;
}
