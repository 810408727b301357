/*
 * policy.c - turns a scan verdict into the action for one message.
 *
 * Sessions call policy_decide() when a scan job completes (on the event
 * loop) and carry the action out; under "pass" for a bad verdict they put
 * policy_tag_header() in front of the message. Pure functions of the
 * configuration and the verdict: no state, no I/O, safe from any thread.
 */
#include "policy/policy.h"

#include <stdio.h>
#include <string.h>

/*
 * Returns POLICY_PASS for a clean verdict, cfg->on_malicious for an infected
 * one, and cfg->on_scan_error for anything else (a scan error, a time-out,
 * a limit hit, or a result outside the enum: failing closed).
 */
enum policy_action policy_decide(const struct config *cfg, const struct scan_verdict *v)
{
	switch (v->result) {
	case SCAN_CLEAN:
		return POLICY_PASS;
	case SCAN_INFECTED:
		return cfg->on_malicious;
	case SCAN_ERROR:
	case SCAN_RESULT_COUNT:
		break;
	}
	return cfg->on_scan_error;
}

/*
 * Copies src into dst[cap] keeping only printable ASCII other than '"' and
 * '\\' (others become '?'), so the text can sit inside a quoted header
 * parameter (RFC 5322 section 3.2.4 quoted-string) without escaping.
 * Security: signature names and error texts come from the engine and, for
 * errors, partly from the message; nothing of them may break the header.
 */
static void sanitise(char *dst, size_t cap, const char *src)
{
	size_t o = 0;

	for (size_t i = 0; src[i] != '\0' && o + 1 < cap; i++) {
		unsigned char c = (unsigned char)src[i];

		dst[o++] =
		    (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
	}
	dst[o] = '\0';
}

/*
 * Builds "X-Mailmoat-Virus: infected; signature=\"NAME\"\r\n" (or
 * "error; reason=\"...\"", or "clean") into buf[cap], NUL-terminated. The
 * quoted text is sanitised and cut so the line always ends in "\"\r\n";
 * the whole line stays within the RFC 5322 section 2.1.1 limit of 998
 * characters. Returns the length without the NUL, or 0 (buf empty when cap
 * > 0) when not even the fixed part fits.
 */
size_t policy_tag_header(const struct scan_verdict *v, char *buf, size_t cap)
{
	char text[SCAN_SIG_MAX > SCAN_ERR_MAX ? SCAN_SIG_MAX : SCAN_ERR_MAX];
	const char *prefix, *src;
	size_t fixed, room;
	int n;

	if (cap == 0)
		return 0;
	buf[0] = '\0';
	switch (v->result) {
	case SCAN_CLEAN:
		n = snprintf(buf, cap, "X-Mailmoat-Virus: clean\r\n");
		if (n < 0 || (size_t)n >= cap) {
			buf[0] = '\0';
			return 0;
		}
		return (size_t)n;
	case SCAN_INFECTED:
		prefix = "X-Mailmoat-Virus: infected; signature=\"";
		src = v->signature;
		break;
	default:
		prefix = "X-Mailmoat-Virus: error; reason=\"";
		src = v->error;
		break;
	}
	/* the verdict's buffers are fixed arrays: never read past them */
	snprintf(
	    text, sizeof text, "%.*s",
	    (int)strnlen(src, v->result == SCAN_INFECTED ? SCAN_SIG_MAX : SCAN_ERR_MAX),
	    src);
	sanitise(text, sizeof text, text);
	if (text[0] == '\0')
		snprintf(text, sizeof text, "unknown");

	fixed = strlen(prefix) + strlen("\"\r\n");
	if (fixed >= cap)
		return 0;
	room = cap - 1 - fixed;
	if (strlen(text) > room)
		text[room] = '\0';
	n = snprintf(buf, cap, "%s%s\"\r\n", prefix, text);
	if (n < 0 || (size_t)n >= cap) {
		buf[0] = '\0';
		return 0;
	}
	return (size_t)n;
}
