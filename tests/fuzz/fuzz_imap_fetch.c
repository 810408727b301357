/*
 * fuzz_imap_fetch.c - libFuzzer harness for the IMAP FETCH analysis
 * (imap_fetch.h): client FETCH arguments, sequence sets, attribute names,
 * and the response walker fed the segments the real segmenter makes of
 * the input. Invariants checked: no crash, no read past the input (the
 * input is copied to an exact-size heap buffer), ranges reported low to
 * high within 1..2^32-1, and a walker error that sticks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/imap_fetch.h"
#include "proxy/imap_parse.h"

static int fz_range(uint32_t lo, uint32_t hi, void *ctx)
{
	unsigned *n = ctx;

	if (lo == 0 || lo > hi)
		abort();
	return ++*n > 100000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct imap_fetch_cmd fc;
	static struct imap_seg_parser sp;
	struct imap_fetch_walk w;
	struct imap_item it;
	char *buf;
	size_t pos = 0;
	unsigned n = 0;
	int started = 0;

	if (size == 0 || size > 65536)
		return 0;
	buf = malloc(size);
	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);

	/* the command side */
	if (imap_fetch_cmd_parse(buf[0] & 1, buf + 1, size - 1, &fc) == 0) {
		if (fc.n_items > IMAP_FETCH_ITEMS_MAX || fc.set == NULL)
			abort();
		if (fc.set < buf || fc.set + fc.set_len > buf + size)
			abort();
		imap_seqset_foreach(fc.set, fc.set_len, 1000, fz_range, &n);
	}
	imap_seqset_foreach(buf, size, 4294967295u, fz_range, &n);
	imap_item_parse(buf, size, &it);

	/* the response side: segments as the proxy would see them */
	imap_seg_init(&sp, 1 << 20);
	imap_fetch_walk_init(&w);
	while (pos < size) {
		struct imap_event ev;
		size_t used = 0;
		int r = imap_seg_feed(&sp, buf + pos, size - pos, &used, &ev);
		uint32_t seq;

		pos += used;
		if (r != IMAP_OK)
			break;
		if (ev.type != IMAP_EV_SEGMENT || ev.end == IMAP_SEG_PART)
			continue;
		if (ev.first) {
			imap_fetch_walk_init(&w);
			started = imap_is_fetch_response(ev.data, ev.len, &seq);
		}
		if (started) {
			int wr = imap_fetch_walk_segment(&w, ev.data, ev.len, &it);

			if (wr < 0 && !w.error)
				abort();
			if (w.error &&
			    imap_fetch_walk_segment(&w, ev.data, ev.len, &it) != -1)
				abort(); /* an error sticks */
		}
	}
	free(buf);
	return 0;
}
