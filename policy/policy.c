/*
 * policy.c - turns a scan verdict into the action for one message.
 *
 * Sessions call policy_decide() when a scan job completes (on the event
 * loop) and carry the action out; under "pass" for a bad verdict they put
 * policy_tag_header() in front of the message. Pure functions of the
 * configuration and the verdict: no state, no I/O, safe from any thread.
 */
#include "policy/policy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

unsigned policy_rule_rank(const struct cfg_rule *r)
{
	return (r->m_user[0] ? 8u : 0u) + (r->m_domain[0] ? 4u : 0u) +
	       (r->m_upstream_host[0] ? 2u : 0u) + (r->m_listener_port ? 1u : 0u);
}

/* Splits "host:port" / "[v6]:port" into host (no brackets) and port. */
static void split_hostport(const char *s, char *host, size_t cap, unsigned *port_r)
{
	const char *colon = strrchr(s, ':');
	size_t hl;

	*port_r = 0;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');

		hl = end != NULL ? (size_t)(end - s - 1) : strlen(s) - 1;
		snprintf(host, cap, "%.*s", (int)hl, s + 1);
		if (end != NULL && end[1] == ':')
			*port_r = (unsigned)strtoul(end + 2, NULL, 10);
		return;
	}
	if (colon != NULL && strchr(s, ':') != colon) {
		/* "::1:110" (conn.c's form for a v6 upstream): the last colon
		   separates the port when what is before it is an address */
		struct in6_addr a6;
		char h[64];

		if ((size_t)(colon - s) < sizeof(h)) {
			snprintf(h, sizeof(h), "%.*s", (int)(colon - s), s);
			if (inet_pton(AF_INET6, h, &a6) == 1) {
				snprintf(host, cap, "%s", h);
				*port_r = (unsigned)strtoul(colon + 1, NULL, 10);
				return;
			}
		}
	} else if (colon != NULL) {
		snprintf(host, cap, "%.*s", (int)(colon - s), s);
		*port_r = (unsigned)strtoul(colon + 1, NULL, 10);
		return;
	}
	snprintf(host, cap, "%s", s);
}

int policy_rule_matches(const struct cfg_rule *r, const struct policy_scope *sc)
{
	const char *user = sc->user != NULL ? sc->user : "";

	if (r->m_listener_port != 0 &&
	    (r->m_listener_port != sc->listen_port || sc->listen_host == NULL ||
	     strcmp(r->m_listener_host, sc->listen_host) != 0))
		return 0;
	if (r->m_upstream_host[0] != '\0') {
		char host[CFG_HOST_MAX];
		unsigned port;

		if (sc->upstream == NULL)
			return 0;
		split_hostport(sc->upstream, host, sizeof(host), &port);
		if (strcasecmp(host, r->m_upstream_host) != 0 ||
		    (r->m_upstream_port != 0 && r->m_upstream_port != port))
			return 0;
	}
	if (r->m_user[0] != '\0' && strcasecmp(r->m_user, user) != 0)
		return 0;
	if (r->m_domain[0] != '\0') {
		const char *at = strrchr(user, '@');

		if (at == NULL || strcasecmp(at + 1, r->m_domain) != 0)
			return 0;
	}
	return 1;
}

/* Copies the fields rule set r->ps.set names from r into out. */
static void policy_overlay(struct policy_set *out, const struct policy_set *r)
{
	uint32_t m = r->set;

	for (int k = 0; k < PK_COUNT; k++)
		if (m & (PS_ACTION0 << k))
			out->action[k] = r->action[k];
#define OVERLAY(bit, field)                                                              \
	if (m & (bit))                                                                   \
	out->field = r->field
	OVERLAY(PS_MAX_MESSAGE_SIZE, max_message_size);
	OVERLAY(PS_MAX_FILESIZE, max_filesize);
	OVERLAY(PS_MAX_SCANSIZE, max_scansize);
	OVERLAY(PS_MAX_RECURSION, max_recursion);
	OVERLAY(PS_MAX_FILES, max_files);
	OVERLAY(PS_MAX_SCANTIME, max_scantime_ms);
	OVERLAY(PS_BLOCKED_EXT, blocked_extensions);
	OVERLAY(PS_BLOCKED_MIME, blocked_mime_types);
	OVERLAY(PS_DOUBLE_EXT, double_extensions);
	OVERLAY(PS_SENDER_ALLOW, sender_allow);
	OVERLAY(PS_SENDER_DENY, sender_deny);
	OVERLAY(PS_SCAN_APPEND, scan_append);
	OVERLAY(PS_SCAN, scan);
	OVERLAY(PS_KEEPALIVE, keepalive);
#undef OVERLAY
	if (m & PS_NOTICE_TEMPLATE)
		memcpy(out->notice_template, r->notice_template,
		       sizeof(out->notice_template));
	if (m & PS_TAG_PREFIX)
		memcpy(out->tag_prefix, r->tag_prefix, sizeof(out->tag_prefix));
	if (m & PS_ADMIN_CONTACT)
		memcpy(out->admin_contact, r->admin_contact, sizeof(out->admin_contact));
}

void policy_resolve(const struct config *cfg, const struct policy_scope *sc,
                    struct policy_set *out, const struct cfg_rule **applied, unsigned cap,
                    unsigned *n_applied_r)
{
	unsigned n = 0;

	*out = cfg->policy;
	out->set = 0;
	/* ranks 0..15: a pass per rank keeps equal ranks in file order */
	for (unsigned rank = 1; rank < 16; rank++) {
		for (unsigned i = 0; i < cfg->n_rules; i++) {
			const struct cfg_rule *r = &cfg->rules[i];

			if (policy_rule_rank(r) != rank || !policy_rule_matches(r, sc))
				continue;
			policy_overlay(out, &r->ps);
			if (applied != NULL && n < cap)
				applied[n] = r;
			n++;
		}
	}
	if (n_applied_r != NULL)
		*n_applied_r = n;
}

enum policy_kind policy_kind_of(const struct scan_verdict *v)
{
	switch (v->result) {
	case SCAN_CLEAN:
		return PK_COUNT;
	case SCAN_INFECTED:
		return PK_MALICIOUS;
	case SCAN_ENCRYPTED:
		return PK_ENCRYPTED_ARCHIVE;
	case SCAN_BLOCKED:
		return PK_BLOCKED_ATTACHMENT;
	case SCAN_DENIED:
		return PK_DENIED_SENDER;
	case SCAN_OVERSIZE:
		return PK_OVERSIZE;
	case SCAN_ERROR:
	case SCAN_RESULT_COUNT:
		break;
	}
	return PK_SCAN_ERROR; /* anything else fails closed as an error */
}

enum policy_action policy_decide(const struct policy_set *ps,
                                 const struct scan_verdict *v)
{
	enum policy_kind k = policy_kind_of(v);

	return k == PK_COUNT ? POLICY_PASS : ps->action[k];
}

int policy_sender_listed(const struct cfg_list *l, const char *addr)
{
	const char *at = addr != NULL ? strrchr(addr, '@') : NULL;
	size_t dlen;

	if (at == NULL || at == addr || at[1] == '\0')
		return 0;
	dlen = strlen(at + 1);
	for (unsigned i = 0; i < l->n; i++) {
		const char *e = l->items[i];

		if (e[0] != '@') {
			if (strcasecmp(e, addr) == 0)
				return 1;
			continue;
		}
		/* "@example.jp": example.jp itself or any name ending in .example.jp */
		size_t elen = strlen(e + 1);

		if (strcasecmp(e + 1, at + 1) == 0 ||
		    (dlen > elen && at[1 + dlen - elen - 1] == '.' &&
		     strcasecmp(at + 1 + dlen - elen, e + 1) == 0))
			return 1;
	}
	return 0;
}

int policy_action_strength(enum policy_action a)
{
	switch (a) {
	case POLICY_PASS:
		return 0;
	case POLICY_TAG:
		return 1;
	case POLICY_QUARANTINE:
		return 2;
	case POLICY_ABORT:
		return 3;
	case POLICY_ACTION_COUNT:
		break;
	}
	return 2;
}

static void print_list(FILE *out, const char *key, const struct cfg_list *l)
{
	fprintf(out, "  %s: [", key);
	for (unsigned i = 0; i < l->n; i++)
		fprintf(out, "%s%s", i ? ", " : "", l->items[i]);
	fprintf(out, "]\n");
}

void policy_print(FILE *out, const struct config *cfg, const struct policy_scope *sc)
{
	const struct cfg_rule *applied[64];
	struct policy_set ps;
	unsigned n;

	policy_resolve(cfg, sc, &ps, applied, 64, &n);
	fprintf(out, "# effective policy for user=%s listener=%s:%u upstream=%s\n",
	        sc->user && sc->user[0] ? sc->user : "-",
	        sc->listen_host ? sc->listen_host : "-", sc->listen_port,
	        sc->upstream ? sc->upstream : "-");
	if (n == 0)
		fprintf(out, "# rules applied: none (policy: alone)\n");
	for (unsigned i = 0; i < n && i < 64; i++)
		fprintf(out, "# rule applied: %s (line %d, rank %u)\n", applied[i]->name,
		        applied[i]->line, policy_rule_rank(applied[i]));
	fprintf(out, "policy:\n");
	for (int k = 0; k < PK_COUNT; k++)
		fprintf(out, "  on_%s: %s\n", policy_kind_name((enum policy_kind)k),
		        policy_action_name(ps.action[k]));
	fprintf(out, "  max_message_size: %llu\n",
	        (unsigned long long)ps.max_message_size);
	fprintf(out,
	        "  scanner: {max_filesize: %llu, max_scansize: %llu, max_recursion: "
	        "%u, max_files: %u, max_scantime: %u}\n",
	        (unsigned long long)ps.max_filesize, (unsigned long long)ps.max_scansize,
	        ps.max_recursion, ps.max_files, ps.max_scantime_ms / 1000);
	print_list(out, "blocked_extensions", &ps.blocked_extensions);
	print_list(out, "blocked_mime_types", &ps.blocked_mime_types);
	fprintf(out, "  double_extensions: %s\n",
	        ps.double_extensions ? "true" : "false");
	print_list(out, "sender_allow", &ps.sender_allow);
	print_list(out, "sender_deny", &ps.sender_deny);
	fprintf(out, "  scan: %s\n", ps.scan ? "true" : "false");
	fprintf(out, "  scan_append: %s\n", ps.scan_append ? "true" : "false");
	fprintf(out, "  keepalive: %u\n", ps.keepalive);
	fprintf(out, "  notice_template: %s\n", ps.notice_template);
	fprintf(out, "  tag_prefix: \"%s\"\n", ps.tag_prefix);
	fprintf(out, "  admin_contact: \"%s\"\n", ps.admin_contact);
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
		    (char)((c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? c : '?');
	}
	dst[o] = '\0';
}

void policy_tag_value(const struct scan_verdict *v, char *buf, size_t cap)
{
	const char *src = v->result == SCAN_ERROR ? v->error : v->signature;

	if (cap == 0)
		return;
	snprintf(buf, cap, "%.*s", (int)strnlen(src, SCAN_SIG_MAX), src);
	sanitise(buf, cap, buf);
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
