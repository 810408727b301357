/*
 * config.c - loads and validates the YAML configuration (see config.h).
 *
 * The file is read whole with libyaml's document API (yaml_parser_load), so
 * every node carries its line. The document is then walked against static
 * field tables, one per mapping ("command tables" in the OpenSMTPD sense):
 * {key, kind, where the value goes, range}. Every key is looked up in its
 * table; an unknown key, a duplicate key, a value of the wrong YAML type or
 * out of range is reported as "PATH:LINE: reason" and the walk goes on, so
 * an admin sees every problem in one run. config_load() fails if any was
 * found and never hands back a half-checked configuration.
 *
 * Called once at start-up (and by "mailmoat -t" style checks) from the main
 * thread; nothing here is used on the event loop.
 *
 * Aliases in the YAML are resolved by libyaml to shared nodes; the walk
 * only descends along the fixed schema (at most three levels), so a hostile
 * file cannot make it recurse or expand without bound.
 */
#include "policy/config.h"
#include "policy/notice.h"
#include "scanners/attach.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

static const char *const protocol_names[] = {
    [CFG_PROTO_POP3] = "pop3",
    [CFG_PROTO_IMAP] = "imap",
};
_Static_assert(sizeof protocol_names / sizeof protocol_names[0] == CFG_PROTO_COUNT,
               "protocol_names must name every enum cfg_protocol member");

static const char *const action_names[] = {
    [POLICY_PASS] = "pass",
    [POLICY_QUARANTINE] = "quarantine",
    [POLICY_ABORT] = "abort",
    [POLICY_TAG] = "tag",
};
_Static_assert(sizeof action_names / sizeof action_names[0] == POLICY_ACTION_COUNT,
               "action_names must name every enum policy_action member");

static const char *const kind_names[] = {
    [PK_MALICIOUS] = "malicious",
    [PK_SCAN_ERROR] = "scan_error",
    [PK_OVERSIZE] = "oversize",
    [PK_ENCRYPTED_ARCHIVE] = "encrypted_archive",
    [PK_BLOCKED_ATTACHMENT] = "blocked_attachment",
    [PK_DENIED_SENDER] = "denied_sender",
};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == PK_COUNT,
               "kind_names must name every enum policy_kind member");

/* The levels proxy/log.c knows; kept here so policy does not depend on proxy. */
static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
static const char *const tls_names[] = {"none", "implicit", "starttls", "required"};
static const char *const bool_names[] = {"true", "false"};
static const char *const unscanned_names[] = {"refuse", "relay"};
static const char *const log_target_names[] = {"auto", "stderr", "syslog"};
#define N_LOG_LEVELS (sizeof log_level_names / sizeof log_level_names[0])

/*
 * Returns the configuration name of a protocol ("pop3", "imap"), or "?" for
 * a value outside the enum.
 */
const char *cfg_protocol_name(enum cfg_protocol p)
{
	if ((unsigned)p >= CFG_PROTO_COUNT)
		return "?";
	return protocol_names[p];
}

/* "malicious", "scan_error", ...; "?" outside the enum. */
const char *policy_kind_name(enum policy_kind k)
{
	if ((unsigned)k >= PK_COUNT)
		return "?";
	return kind_names[k];
}

/*
 * Returns the configuration name of an action ("pass", "quarantine",
 * "abort", "tag"), or "?" for a value outside the enum.
 */
const char *policy_action_name(enum policy_action a)
{
	if ((unsigned)a >= POLICY_ACTION_COUNT)
		return "?";
	return action_names[a];
}

/* ---- defaults ---- */

/* Copies src into dst[cap]; returns -1 (dst untouched) if it does not fit. */
static int copy_str(char *dst, size_t cap, const char *src, size_t len)
{
	if (len >= cap)
		return -1;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return 0;
}

#define SET_STR(dst, lit) copy_str((dst), sizeof(dst), (lit), strlen(lit))

/*
 * Fills cfg with the embedded defaults (the values documented in config.h)
 * and no listeners. The spool directory is $TMPDIR when it is set, non-empty
 * and fits, otherwise /tmp. cfg is overwritten whole; nothing is allocated.
 */
void config_defaults(struct config *cfg)
{
	const char *tmp = getenv("TMPDIR");

	memset(cfg, 0, sizeof(*cfg));
	SET_STR(cfg->clamav_database, "/var/lib/clamav");
	cfg->clamav_max_filesize = 100ULL << 20;
	cfg->clamav_max_scansize = 400ULL << 20;
	cfg->clamav_max_recursion = 17;
	cfg->clamav_max_files = 10000;
	cfg->clamav_max_scantime_ms = 120 * 1000;
	cfg->clamav_mime_split_above = 8ULL << 20;

	SET_STR(cfg->quarantine_dir, "/var/lib/mailmoat/quarantine");
	cfg->quarantine_retention_days = 30;
	SET_STR(cfg->release_method, "imap");
	SET_STR(cfg->release_mailbox, "INBOX");
	SET_STR(cfg->control_socket, "/run/mailmoat/control.sock");

	cfg->on_malicious = POLICY_QUARANTINE;
	cfg->on_scan_error = POLICY_QUARANTINE;
	/* failing closed: every condition quarantines unless told otherwise */
	for (int k = 0; k < PK_COUNT; k++)
		cfg->policy.action[k] = POLICY_QUARANTINE;
	cfg->policy.double_extensions = 1;
	cfg->policy.scan_append = 1;
	cfg->policy.scan = 1;
	SET_STR(cfg->policy.notice_template, "ja+en");
	SET_STR(cfg->policy.tag_prefix, "[mailmoat]");

	SET_STR(cfg->admin_contact, "your mail administrator");

	cfg->spool_memory_limit = 4ULL << 20;
	cfg->spool_max_message_size = 512ULL << 20;
	if (tmp == NULL || *tmp == '\0' || SET_STR(cfg->spool_dir, tmp) < 0)
		SET_STR(cfg->spool_dir, "/tmp");

	cfg->timeout_client_idle = 600;
	cfg->timeout_upstream_idle = 600;
	cfg->timeout_connect = 15;
	cfg->timeout_shutdown_grace = 10;
	cfg->timeout_keepalive = 10;

	cfg->max_sessions = 500;
	cfg->readahead = 2;
	cfg->prefetch = 2;

	SET_STR(cfg->log_level, "info");
	SET_STR(cfg->log_target, "auto");
}

/* ---- numbers and sizes ---- */

/*
 * Parses a plain unsigned decimal (digits only: no sign, space, base prefix
 * or exponent) of exactly len bytes. Returns 0, or -1 on syntax error or
 * overflow of uint64_t.
 */
static int parse_u64(const char *s, size_t len, uint64_t *v_r)
{
	uint64_t v = 0;

	if (len == 0)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return -1;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*v_r = v;
	return 0;
}

/*
 * Parses a size: decimal digits with an optional K, M or G suffix (either
 * case; powers of 1024). Empty strings, signs, fractions, unknown suffixes
 * and results that overflow uint64_t are rejected. Returns 0 and sets
 * *size_r, or -1 leaving it untouched.
 */
int config_parse_size(const char *s, uint64_t *size_r)
{
	size_t len = strlen(s);
	unsigned shift = 0;
	uint64_t v;

	if (len > 0) {
		switch (s[len - 1]) {
		case 'K':
		case 'k':
			shift = 10;
			break;
		case 'M':
		case 'm':
			shift = 20;
			break;
		case 'G':
		case 'g':
			shift = 30;
			break;
		}
		if (shift != 0)
			len--;
	}
	if (parse_u64(s, len, &v) < 0)
		return -1;
	if (v > (UINT64_MAX >> shift))
		return -1;
	*size_r = v << shift;
	return 0;
}

/* ---- the load context and error reporting ---- */

struct load_ctx {
	const char *path;
	FILE *errs;
	yaml_document_t *doc;
	struct config *cfg;
	unsigned n_errors;
};

static int node_line(const yaml_node_t *n)
{
	return (int)n->start_mark.line + 1;
}

/* Writes one "PATH:LINE: reason" line and counts it. */
static void report(struct load_ctx *ctx, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report(struct load_ctx *ctx, int line, const char *fmt, ...)
{
	va_list ap;

	ctx->n_errors++;
	if (ctx->errs == NULL)
		return;
	fprintf(ctx->errs, "%s:%d: ", ctx->path, line);
	va_start(ap, fmt);
	vfprintf(ctx->errs, fmt, ap);
	va_end(ap);
	fputc('\n', ctx->errs);
}

/*
 * Makes file text safe to echo in a message: non-printable bytes become
 * '?', and long text is cut with "...". Returns buf.
 */
static const char *shown(char *buf, size_t cap, const char *s, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (o + 4 >= cap) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		buf[o++] = (char)((c >= 0x20 && c < 0x7f) ? c : '?');
	}
	buf[o] = '\0';
	return buf;
}

static const char *node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_SCALAR_NODE:
		return "a scalar";
	case YAML_SEQUENCE_NODE:
		return "a sequence";
	case YAML_MAPPING_NODE:
		return "a mapping";
	default:
		return "nothing";
	}
}

/* A plain empty, "~" or "null" scalar: a key given without a value. */
static bool is_null(const yaml_node_t *n)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
	const char *v;

	if (n->type != YAML_SCALAR_NODE ||
	    n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	v = (const char *)n->data.scalar.value;
	for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
		if (strlen(nulls[i]) == n->data.scalar.length && strcmp(v, nulls[i]) == 0)
			return true;
	return false;
}

/* Looks text up in a name table; returns its index or -1. */
static int lookup_name(const char *const *names, size_t n, const char *text, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(names[i]) == len && memcmp(names[i], text, len) == 0)
			return (int)i;
	return -1;
}

/* Formats "a, b, c" from a name table into buf. */
static const char *list_names(char *buf, size_t cap, const char *const *names, size_t n)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && o < cap; i++) {
		int w = snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", names[i]);

		if (w < 0)
			break;
		o += (size_t)w;
	}
	return buf;
}

/* ---- HOST:PORT ---- */

static bool is_dotted_digits(const char *s)
{
	for (; *s; s++)
		if (!(*s == '.' || (*s >= '0' && *s <= '9')))
			return false;
	return true;
}

/* A DNS name: letters, digits, '-', '_' and '.', no empty label. */
static bool is_hostname(const char *s)
{
	size_t label = 0;

	for (; *s; s++) {
		char c = *s;

		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '_' || (c == '-' && label > 0)))
			return false;
		if (++label > 63)
			return false;
	}
	return true;
}

/*
 * Splits "HOST:PORT" or "[V6ADDR]:PORT" (s of len bytes) into host (brackets
 * removed) and port. A listen address must be a numeric IPv4 or IPv6
 * address (it is bound as such); an upstream may also be a host name.
 * Returns 0, or -1 with *why set to a static reason.
 */
static int parse_hostport(const char *s, size_t len, bool numeric_only, char *host,
                          size_t hostcap, uint16_t *port_r, const char **why)
{
	const char *colon, *h;
	size_t hlen;
	bool bracketed = false;
	uint64_t port;
	unsigned char bin[16];

	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);

		if (close == NULL) {
			*why = "missing ']' after the IPv6 address";
			return -1;
		}
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
		if (colon >= s + len || *colon != ':') {
			*why = "expected [ADDRESS]:PORT";
			return -1;
		}
		bracketed = true;
	} else {
		colon = memchr(s, ':', len);
		if (colon == NULL) {
			*why = "expected HOST:PORT";
			return -1;
		}
		if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) != NULL) {
			*why = "an IPv6 address must be in brackets: [ADDRESS]:PORT";
			return -1;
		}
		h = s;
		hlen = (size_t)(colon - s);
	}
	if (parse_u64(colon + 1, len - (size_t)(colon + 1 - s), &port) < 0 || port < 1 ||
	    port > 65535) {
		*why = "the port must be a number from 1 to 65535";
		return -1;
	}
	if (hlen == 0) {
		*why = "the host is empty";
		return -1;
	}
	if (copy_str(host, hostcap, h, hlen) < 0) {
		*why = "the host is too long";
		return -1;
	}
	if (bracketed) {
		if (inet_pton(AF_INET6, host, bin) != 1) {
			*why = "not a valid IPv6 address";
			return -1;
		}
	} else if (inet_pton(AF_INET, host, bin) != 1) {
		if (numeric_only) {
			*why = "not a numeric IP address (listen takes an address, not a "
			       "name)";
			return -1;
		}
		if (is_dotted_digits(host)) {
			*why = "not a valid IPv4 address";
			return -1;
		}
		if (!is_hostname(host)) {
			*why = "not a valid host name";
			return -1;
		}
	}
	*port_r = (uint16_t)port;
	return 0;
}

/* ---- field tables ---- */

enum field_kind {
	FK_SECTION,     /* a nested mapping: sub */
	FK_LISTENERS,   /* the listeners sequence */
	FK_STRING,      /* char[len], non-empty */
	FK_OPT_STRING,  /* char[len], may be empty or null */
	FK_NAME,        /* char[len], one of names */
	FK_UINT,        /* unsigned, min..max, stored times scale */
	FK_SIZE,        /* uint64_t size (K/M/G), min..max */
	FK_ACTION,      /* enum policy_action */
	FK_PROTOCOL,    /* enum cfg_protocol */
	FK_LISTEN_ADDR, /* host char[len] at off, uint16_t port at off2: numeric */
	FK_HOST_PORT,   /* same, host names allowed */
	FK_LIST,        /* struct cfg_list from a sequence of scalars: list_kind */
	FK_BOOL,        /* int: true | false */
	FK_RULES,       /* the rules sequence */
};

/* What the items of an FK_LIST must look like. */
enum list_kind {
	LK_EXTENSION, /* a file name extension: "exe" (a leading dot dropped) */
	LK_MIME_TYPE, /* type/subtype */
	LK_SENDER,    /* local@domain or @domain */
};

struct field {
	const char *key;
	enum field_kind kind;
	bool required;
	size_t off;  /* offset of the value in the struct being filled */
	size_t len;  /* size of a char[] value */
	size_t off2; /* FK_LISTEN_ADDR, FK_HOST_PORT: offset of the port */
	uint64_t min, max;
	unsigned scale;
	const struct field *sub;  /* FK_SECTION */
	const char *const *names; /* FK_NAME */
	size_t n_names;
	enum list_kind list_kind; /* FK_LIST */
	uint32_t setbit;          /* when given: OR'ed into the uint32_t at set_off */
	size_t set_off;
};

/* Most fields one mapping may have; tables are checked against it below. */
#define FIELDS_MAX 32

#define MEMBER_SIZE(type, m) sizeof(((type *)0)->m)
#define F_STR(k, m)                                                                      \
	{                                                                                \
		.key = (k), .kind = FK_STRING, .off = offsetof(struct config, m),        \
		.len = MEMBER_SIZE(struct config, m)                                     \
	}
#define F_UINT(k, m, lo, hi, sc)                                                         \
	{                                                                                \
		.key = (k), .kind = FK_UINT, .off = offsetof(struct config, m),          \
		.min = (lo), .max = (hi), .scale = (sc)                                  \
	}
#define F_SIZE(k, m, lo, hi)                                                             \
	{                                                                                \
		.key = (k), .kind = FK_SIZE, .off = offsetof(struct config, m),          \
		.min = (lo), .max = (hi)                                                 \
	}
#define F_ACTION(k, m)                                                                   \
	{                                                                                \
		.key = (k), .kind = FK_ACTION, .off = offsetof(struct config, m)         \
	}
#define F_SECTION(k, t)                                                                  \
	{                                                                                \
		.key = (k), .kind = FK_SECTION, .sub = (t)                               \
	}
#define N_FIELDS(t) (sizeof(t) / sizeof((t)[0]) - 1)
#define L_OPT(k, m)                                                                      \
	{                                                                                \
		.key = (k), .kind = FK_OPT_STRING,                                       \
		.off = offsetof(struct cfg_listener, m),                                 \
		.len = MEMBER_SIZE(struct cfg_listener, m)                               \
	}
#define L_NAME(k, m, n, c)                                                               \
	{                                                                                \
		.key = (k), .kind = FK_NAME, .off = offsetof(struct cfg_listener, m),    \
		.len = MEMBER_SIZE(struct cfg_listener, m), .names = (n), .n_names = (c) \
	}

/*
 * Ranges. libclamav clamps its size limits at 4 GiB, so larger values are
 * refused rather than silently cut; the spool's in-memory part is a size_t
 * and stays at most 1 GiB. Timeouts go into libuv timers in milliseconds.
 */
#define MAX_CLAM_SIZE ((4ULL << 30) - 1)
#define MAX_TIMEOUT 86400u
_Static_assert(UINT_MAX >= MAX_TIMEOUT * 1000ULL, "max_scantime in ms must fit unsigned");
_Static_assert(UINT_MAX >= UINT32_MAX, "max_files must fit unsigned");

/* intercept_ca: inside a listener, filling the listener's own fields */
static const struct field intercept_ca_fields[] = {
    {.key = "certificate",
     .kind = FK_STRING,
     .required = true,
     .off = offsetof(struct cfg_listener, intercept_ca_certificate),
     .len = MEMBER_SIZE(struct cfg_listener, intercept_ca_certificate)},
    {.key = "key",
     .kind = FK_STRING,
     .required = true,
     .off = offsetof(struct cfg_listener, intercept_ca_key),
     .len = MEMBER_SIZE(struct cfg_listener, intercept_ca_key)},
    {.key = NULL},
};

static const struct field listener_fields[] = {
    {.key = "protocol",
     .kind = FK_PROTOCOL,
     .required = true,
     .off = offsetof(struct cfg_listener, protocol)},
    {.key = "listen",
     .kind = FK_LISTEN_ADDR,
     .required = true,
     .off = offsetof(struct cfg_listener, listen_host),
     .len = MEMBER_SIZE(struct cfg_listener, listen_host),
     .off2 = offsetof(struct cfg_listener, listen_port)},
    {.key = "upstream",
     .kind = FK_HOST_PORT,
     .required = true,
     .off = offsetof(struct cfg_listener, upstream_host),
     .len = MEMBER_SIZE(struct cfg_listener, upstream_host),
     .off2 = offsetof(struct cfg_listener, upstream_port)},
    L_NAME("tls", tls, tls_names, 4),
    L_OPT("certificate", certificate),
    L_OPT("key", key),
    L_NAME("upstream_tls", upstream_tls, tls_names, 3),
    L_OPT("upstream_ca", upstream_ca),
    L_OPT("upstream_name", upstream_name),
    L_OPT("upstream_pin", upstream_pin),
    L_NAME("upstream_verify", upstream_verify, bool_names, 2),
    {.key = "intercept_ca", .kind = FK_SECTION, .sub = intercept_ca_fields},
    L_NAME("unscanned_tls", unscanned_tls, unscanned_names, 2),
    {.key = NULL},
};

static const struct field clamav_fields[] = {
    F_STR("database", clamav_database),
    F_SIZE("max_filesize", clamav_max_filesize, 1, MAX_CLAM_SIZE),
    F_SIZE("max_scansize", clamav_max_scansize, 1, MAX_CLAM_SIZE),
    F_UINT("max_recursion", clamav_max_recursion, 1, 1000, 1),
    F_UINT("max_files", clamav_max_files, 1, UINT32_MAX, 1),
    F_UINT("max_scantime", clamav_max_scantime_ms, 1, MAX_TIMEOUT, 1000),
    F_SIZE("mime_split_above", clamav_mime_split_above, 0, UINT64_MAX),
    {.key = NULL},
};

static const struct field scanner_fields[] = {
    F_SECTION("clamav", clamav_fields),
    {.key = NULL},
};

static const char *const release_names[] = {"imap", "smtp"};

#define F_OPT(k, m)                                                                      \
	{                                                                                \
		.key = (k), .kind = FK_OPT_STRING, .off = offsetof(struct config, m),    \
		.len = MEMBER_SIZE(struct config, m)                                     \
	}

static const struct field release_fields[] = {
    {.key = "method",
     .kind = FK_NAME,
     .off = offsetof(struct config, release_method),
     .len = MEMBER_SIZE(struct config, release_method),
     .names = release_names,
     .n_names = 2},
    F_OPT("imap_url", release_imap_url),
    F_OPT("imap_user", release_imap_user),
    F_OPT("password_file", release_password_file),
    F_STR("mailbox", release_mailbox),
    F_OPT("smtp_url", release_smtp_url),
    F_OPT("smtp_from", release_smtp_from),
    F_OPT("smtp_domain", release_smtp_domain),
    F_OPT("ca", release_ca),
    {.key = NULL},
};

static const struct field quarantine_fields[] = {
    F_STR("dir", quarantine_dir),
    /* 0: kept until an admin deletes them */
    F_UINT("retention_days", quarantine_retention_days, 0, 36500, 1),
    {.key = "index",
     .kind = FK_OPT_STRING,
     .off = offsetof(struct config, quarantine_index),
     .len = MEMBER_SIZE(struct config, quarantine_index)},
    F_SECTION("release", release_fields),
    {.key = NULL},
};

static const struct field control_fields[] = {
    {.key = "socket",
     .kind = FK_OPT_STRING,
     .off = offsetof(struct config, control_socket),
     .len = MEMBER_SIZE(struct config, control_socket)},
    {.key = NULL},
};

static const struct field metrics_fields[] = {
    {.key = "listen",
     .kind = FK_LISTEN_ADDR,
     .off = offsetof(struct config, metrics_listen_host),
     .len = MEMBER_SIZE(struct config, metrics_listen_host),
     .off2 = offsetof(struct config, metrics_listen_port)},
    {.key = NULL},
};

/*
 * Policy fields, for policy: (T = struct config, P = policy) and for each
 * rule (T = struct cfg_rule, P = ps). Every one records that it was set.
 * NOLINTBEGIN(bugprone-macro-parentheses): P and m name members, in
 * offsetof()'s member designator, where parentheses are not allowed.
 */
#define P_SET(T, P, bit) .setbit = (bit), .set_off = offsetof(T, P.set)
#define P_ACTION(k, T, P, pk)                                                            \
	{                                                                                \
		.key = (k), .kind = FK_ACTION, .off = offsetof(T, P.action[pk]),         \
		P_SET(T, P, PS_ACTION0 << (pk))                                          \
	}
#define P_LIST(k, T, P, m, lk, bit)                                                      \
	{                                                                                \
		.key = (k), .kind = FK_LIST, .off = offsetof(T, P.m), .list_kind = (lk), \
		P_SET(T, P, bit)                                                         \
	}
#define P_BOOL(k, T, P, m, bit)                                                          \
	{                                                                                \
		.key = (k), .kind = FK_BOOL, .off = offsetof(T, P.m), P_SET(T, P, bit)   \
	}
#define P_STR(k, T, P, m, bit)                                                           \
	{                                                                                \
		.key = (k), .kind = FK_STRING, .off = offsetof(T, P.m),                  \
		.len = MEMBER_SIZE(T, P.m), P_SET(T, P, bit)                             \
	}
#define P_SIZE(k, T, P, m, lo, hi, bit)                                                  \
	{                                                                                \
		.key = (k), .kind = FK_SIZE, .off = offsetof(T, P.m), .min = (lo),       \
		.max = (hi), P_SET(T, P, bit)                                            \
	}
#define P_UINT(k, T, P, m, lo, hi, sc, bit)                                              \
	{                                                                                \
		.key = (k), .kind = FK_UINT, .off = offsetof(T, P.m), .min = (lo),       \
		.max = (hi), .scale = (sc), P_SET(T, P, bit)                             \
	}
/* NOLINTEND(bugprone-macro-parentheses) */
/* the fields policy: and a rule share */
#define POLICY_COMMON(T, P)                                                              \
	P_ACTION("on_oversize", T, P, PK_OVERSIZE),                                      \
	    P_ACTION("on_encrypted_archive", T, P, PK_ENCRYPTED_ARCHIVE),                \
	    P_ACTION("on_blocked_attachment", T, P, PK_BLOCKED_ATTACHMENT),              \
	    P_ACTION("on_denied_sender", T, P, PK_DENIED_SENDER),                        \
	    P_LIST("blocked_extensions", T, P, blocked_extensions, LK_EXTENSION,         \
	           PS_BLOCKED_EXT),                                                      \
	    P_LIST("blocked_mime_types", T, P, blocked_mime_types, LK_MIME_TYPE,         \
	           PS_BLOCKED_MIME),                                                     \
	    P_BOOL("double_extensions", T, P, double_extensions, PS_DOUBLE_EXT),         \
	    P_LIST("sender_allow", T, P, sender_allow, LK_SENDER, PS_SENDER_ALLOW),      \
	    P_LIST("sender_deny", T, P, sender_deny, LK_SENDER, PS_SENDER_DENY),         \
	    P_BOOL("scan_append", T, P, scan_append, PS_SCAN_APPEND),                    \
	    P_BOOL("scan", T, P, scan, PS_SCAN),                                         \
	    P_STR("tag_prefix", T, P, tag_prefix, PS_TAG_PREFIX)

static const struct field policy_fields[] = {
    F_ACTION("on_malicious", on_malicious),
    F_ACTION("on_scan_error", on_scan_error),
    POLICY_COMMON(struct config, policy),
    {.key = NULL},
};

static const struct field rule_match_fields[] = {
    {.key = "listener",
     .kind = FK_LISTEN_ADDR,
     .off = offsetof(struct cfg_rule, m_listener_host),
     .len = MEMBER_SIZE(struct cfg_rule, m_listener_host),
     .off2 = offsetof(struct cfg_rule, m_listener_port)},
    {.key = "upstream",
     .kind = FK_STRING,
     .off = offsetof(struct cfg_rule, m_upstream_host),
     .len = MEMBER_SIZE(struct cfg_rule, m_upstream_host)},
    {.key = "user",
     .kind = FK_STRING,
     .off = offsetof(struct cfg_rule, m_user),
     .len = MEMBER_SIZE(struct cfg_rule, m_user)},
    {.key = "domain",
     .kind = FK_STRING,
     .off = offsetof(struct cfg_rule, m_domain),
     .len = MEMBER_SIZE(struct cfg_rule, m_domain)},
    {.key = NULL},
};

static const struct field rule_scanner_fields[] = {
    P_SIZE("max_filesize", struct cfg_rule, ps, max_filesize, 1, MAX_CLAM_SIZE,
           PS_MAX_FILESIZE),
    P_SIZE("max_scansize", struct cfg_rule, ps, max_scansize, 1, MAX_CLAM_SIZE,
           PS_MAX_SCANSIZE),
    P_UINT("max_recursion", struct cfg_rule, ps, max_recursion, 1, 1000, 1,
           PS_MAX_RECURSION),
    P_UINT("max_files", struct cfg_rule, ps, max_files, 1, UINT32_MAX, 1, PS_MAX_FILES),
    P_UINT("max_scantime", struct cfg_rule, ps, max_scantime_ms, 1, MAX_TIMEOUT, 1000,
           PS_MAX_SCANTIME),
    {.key = NULL},
};

static const struct field rule_fields[] = {
    {.key = "name",
     .kind = FK_OPT_STRING,
     .off = offsetof(struct cfg_rule, name),
     .len = MEMBER_SIZE(struct cfg_rule, name)},
    {.key = "match", .kind = FK_SECTION, .required = true, .sub = rule_match_fields},
    P_ACTION("on_malicious", struct cfg_rule, ps, PK_MALICIOUS),
    P_ACTION("on_scan_error", struct cfg_rule, ps, PK_SCAN_ERROR),
    POLICY_COMMON(struct cfg_rule, ps),
    P_SIZE("max_message_size", struct cfg_rule, ps, max_message_size, 1, UINT64_MAX,
           PS_MAX_MESSAGE_SIZE),
    {.key = "scanner", .kind = FK_SECTION, .sub = rule_scanner_fields},
    P_UINT("keepalive", struct cfg_rule, ps, keepalive, 0, MAX_TIMEOUT, 1, PS_KEEPALIVE),
    P_STR("notice_template", struct cfg_rule, ps, notice_template, PS_NOTICE_TEMPLATE),
    P_STR("admin_contact", struct cfg_rule, ps, admin_contact, PS_ADMIN_CONTACT),
    {.key = NULL},
};

static const struct field admin_copy_fields[] = {
    F_STR("to", copy_to),
    F_STR("smtp_url", copy_smtp_url),
    F_OPT("from", copy_from),
    F_OPT("user", copy_user),
    F_OPT("password_file", copy_password_file),
    F_OPT("ca", copy_ca),
    {.key = NULL},
};

static const struct field notice_fields[] = {
    F_STR("admin_contact", admin_contact),
    P_STR("template", struct config, policy, notice_template, PS_NOTICE_TEMPLATE),
    F_SECTION("admin_copy", admin_copy_fields),
    {.key = "templates_dir",
     .kind = FK_OPT_STRING,
     .off = offsetof(struct config, notice_templates_dir),
     .len = MEMBER_SIZE(struct config, notice_templates_dir)},
    {.key = NULL},
};

static const struct field spool_fields[] = {
    /* 0: every message goes straight to the spill file */
    F_SIZE("memory_limit", spool_memory_limit, 0, 1ULL << 30),
    F_SIZE("max_message_size", spool_max_message_size, 1, UINT64_MAX),
    F_STR("dir", spool_dir),
    {.key = NULL},
};

static const struct field timeout_fields[] = {
    F_UINT("client_idle", timeout_client_idle, 1, MAX_TIMEOUT, 1),
    F_UINT("upstream_idle", timeout_upstream_idle, 1, MAX_TIMEOUT, 1),
    F_UINT("connect", timeout_connect, 1, MAX_TIMEOUT, 1),
    F_UINT("shutdown_grace", timeout_shutdown_grace, 0, MAX_TIMEOUT, 1),
    /* 0: no progress notes */
    F_UINT("keepalive", timeout_keepalive, 0, MAX_TIMEOUT, 1),
    {.key = NULL},
};

static const struct field limit_fields[] = {
    F_UINT("max_sessions", max_sessions, 1, 1000000, 1),
    F_UINT("readahead", readahead, 1, 1000, 1),
    F_UINT("prefetch", prefetch, 0, 64, 1),
    {.key = NULL},
};

static const struct field top_fields[] = {
    {.key = "listeners", .kind = FK_LISTENERS, .required = true},
    F_SECTION("scanner", scanner_fields),
    F_SECTION("quarantine", quarantine_fields),
    F_SECTION("policy", policy_fields),
    F_SECTION("notice", notice_fields),
    F_SECTION("spool", spool_fields),
    F_SECTION("timeouts", timeout_fields),
    F_SECTION("limits", limit_fields),
    F_SECTION("control", control_fields),
    {.key = "rules", .kind = FK_RULES},
    F_SECTION("metrics", metrics_fields),
    {.key = "user",
     .kind = FK_OPT_STRING,
     .off = offsetof(struct config, run_as),
     .len = MEMBER_SIZE(struct config, run_as)},
    {.key = "log_target",
     .kind = FK_NAME,
     .off = offsetof(struct config, log_target),
     .len = MEMBER_SIZE(struct config, log_target),
     .names = log_target_names,
     .n_names = 3},
    {.key = "log_level",
     .kind = FK_NAME,
     .off = offsetof(struct config, log_level),
     .len = MEMBER_SIZE(struct config, log_level),
     .names = log_level_names,
     .n_names = N_LOG_LEVELS},
    {.key = NULL},
};

_Static_assert(N_FIELDS(top_fields) <= FIELDS_MAX, "top_fields too long");
_Static_assert(N_FIELDS(clamav_fields) <= FIELDS_MAX, "clamav_fields too long");
_Static_assert(N_FIELDS(listener_fields) <= FIELDS_MAX, "listener_fields too long");
_Static_assert(N_FIELDS(timeout_fields) <= FIELDS_MAX, "timeout_fields too long");
_Static_assert(N_FIELDS(rule_fields) <= FIELDS_MAX, "rule_fields too long");
_Static_assert(N_FIELDS(policy_fields) <= FIELDS_MAX, "policy_fields too long");

/* ---- the walk ---- */

static void walk_mapping(struct load_ctx *ctx, const yaml_node_t *map,
                         const struct field *table, void *base, const char *section);

/*
 * Checks that n is a scalar and not null; returns its text or NULL after
 * reporting why not.
 */
static const char *want_scalar(struct load_ctx *ctx, const yaml_node_t *n,
                               const char *name, size_t *len_r)
{
	if (n->type != YAML_SCALAR_NODE) {
		report(ctx, node_line(n), "%s: expected a single value, found %s", name,
		       node_kind(n));
		return NULL;
	}
	if (is_null(n)) {
		report(ctx, node_line(n), "%s: missing value", name);
		return NULL;
	}
	*len_r = n->data.scalar.length;
	return (const char *)n->data.scalar.value;
}

/*
 * Stores a string value. Security: control characters (CR and LF above
 * all) are refused in every string, since some of them end up in notice
 * messages and log lines.
 */
static void set_string(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                       char *dst, const char *name)
{
	const char *v;
	size_t len;

	if (f->kind == FK_OPT_STRING && is_null(n)) {
		dst[0] = '\0';
		return;
	}
	v = want_scalar(ctx, n, name, &len);
	if (v == NULL)
		return;
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
			report(ctx, node_line(n),
			       "%s: control characters are not allowed", name);
			return;
		}
	}
	if (len == 0 && f->kind != FK_OPT_STRING) {
		report(ctx, node_line(n), "%s: must not be empty", name);
		return;
	}
	if (copy_str(dst, f->len, v, len) < 0)
		report(ctx, node_line(n), "%s: too long (at most %zu bytes)", name,
		       f->len - 1);
}

static void set_named(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                      void *dst, const char *name)
{
	const char *const *names = f->names;
	size_t n_names = f->n_names;
	char allowed[128], sbuf[64];
	const char *v;
	size_t len;
	int idx;

	if (f->kind == FK_ACTION) {
		names = action_names;
		n_names = POLICY_ACTION_COUNT;
	} else if (f->kind == FK_PROTOCOL) {
		names = protocol_names;
		n_names = CFG_PROTO_COUNT;
	}
	v = want_scalar(ctx, n, name, &len);
	if (v == NULL)
		return;
	idx = lookup_name(names, n_names, v, len);
	if (idx < 0) {
		report(ctx, node_line(n), "%s: unknown value '%s' (allowed: %s)", name,
		       shown(sbuf, sizeof sbuf, v, len),
		       list_names(allowed, sizeof allowed, names, n_names));
		return;
	}
	if (f->kind == FK_ACTION)
		*(enum policy_action *)dst = (enum policy_action)idx;
	else if (f->kind == FK_PROTOCOL)
		*(enum cfg_protocol *)dst = (enum cfg_protocol)idx;
	else
		copy_str(dst, f->len, names[idx], strlen(names[idx]));
}

static void set_number(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                       void *dst, const char *name)
{
	char buf[64], sbuf[64];
	const char *v;
	size_t len;
	uint64_t x;

	v = want_scalar(ctx, n, name, &len);
	if (v == NULL)
		return;
	if (f->kind == FK_SIZE) {
		/* config_parse_size wants a C string; a size never needs 63 bytes */
		bool ok = len < sizeof buf && memchr(v, '\0', len) == NULL;

		if (ok) {
			memcpy(buf, v, len);
			buf[len] = '\0';
			ok = config_parse_size(buf, &x) == 0;
		}
		if (!ok) {
			report(ctx, node_line(n),
			       "%s: invalid size '%s' (a whole number with an optional "
			       "K, M or "
			       "G suffix)",
			       name, shown(sbuf, sizeof sbuf, v, len));
			return;
		}
	} else if (parse_u64(v, len, &x) < 0) {
		bool digits = len > 0 && strspn(v, "0123456789") == len;

		report(ctx, node_line(n), "%s: '%s' is %s", name,
		       shown(sbuf, sizeof sbuf, v, len),
		       digits ? "too large" : "not a whole number");
		return;
	}
	if (x < f->min || x > f->max) {
		report(ctx, node_line(n), "%s: %llu is out of range (%llu to %llu)", name,
		       (unsigned long long)x, (unsigned long long)f->min,
		       (unsigned long long)f->max);
		return;
	}
	if (f->kind == FK_SIZE) {
		*(uint64_t *)dst = x;
	} else {
		/* every table range keeps max * scale within unsigned (86400 * 1000) */
		*(unsigned *)dst = (unsigned)(x * (f->scale ? f->scale : 1));
	}
}

static void set_address(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                        void *base, const char *name)
{
	char sbuf[80];
	const char *v, *why = NULL;
	size_t len;
	uint16_t port;

	v = want_scalar(ctx, n, name, &len);
	if (v == NULL)
		return;
	if (f->kind == FK_HOST_PORT && len == 11 && memcmp(v, "transparent", 11) == 0) {
		/* the original destination of each redirected connection */
		snprintf((char *)base + f->off, f->len, "transparent");
		*(uint16_t *)((char *)base + f->off2) = 0;
		return;
	}
	if (memchr(v, '\0', len) != NULL ||
	    parse_hostport(v, len, f->kind == FK_LISTEN_ADDR, (char *)base + f->off,
	                   f->len, &port, &why) < 0) {
		((char *)base + f->off)[0] = '\0';
		report(ctx, node_line(n), "%s: bad address '%s': %s", name,
		       shown(sbuf, sizeof sbuf, v, len), why ? why : "embedded NUL");
		return;
	}
	*(uint16_t *)((char *)base + f->off2) = port;
}

static void load_listeners(struct load_ctx *ctx, const yaml_node_t *seq);
static void load_rules(struct load_ctx *ctx, const yaml_node_t *seq);

#define LIST_MAX_ITEMS 256
#define LIST_ITEM_MAX 128

static void list_free(struct cfg_list *l)
{
	for (unsigned i = 0; i < l->n; i++)
		free(l->items[i]);
	free(l->items);
	l->items = NULL;
	l->n = 0;
}

static int list_set(struct cfg_list *l, const char *const *items, size_t n)
{
	list_free(l);
	l->items = calloc(n ? n : 1, sizeof(*l->items));
	if (l->items == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		l->items[i] = strdup(items[i]);
		if (l->items[i] == NULL)
			return -1;
		l->n++;
	}
	return 0;
}

static bool token_char(char c)
{
	return isalnum((unsigned char)c) || strchr("!#$&^_.+-", c) != NULL;
}

/*
 * Normalises one list item in place (lower case; an extension loses a
 * leading dot) and checks its shape. Returns NULL or why it is refused.
 */
static const char *list_item_check(enum list_kind k, char *v)
{
	char *at, *slash;

	for (char *p = v; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	switch (k) {
	case LK_EXTENSION:
		if (v[0] == '.')
			memmove(v, v + 1, strlen(v));
		if (v[0] == '\0' || strlen(v) > 32 || v[strlen(v) - 1] == '.' ||
		    strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != strlen(v))
			return "an extension is letters, digits, '-', '_' or inner dots "
			       "(\"exe\", \".exe\", \"tar.gz\")";
		return NULL;
	case LK_MIME_TYPE:
		slash = strchr(v, '/');
		if (slash == NULL || slash == v || slash[1] == '\0' ||
		    strchr(slash + 1, '/') != NULL)
			return "a MIME type is type/subtype "
			       "(\"application/x-msdownload\")";
		for (char *p = v; *p; p++)
			if (p != slash && !token_char(*p) && !(*p == '*' && p[1] == '\0'))
				return "a MIME type is type/subtype "
				       "(\"application/x-msdownload\")";
		return NULL;
	case LK_SENDER:
		at = strrchr(v, '@');
		if (at == NULL || !is_hostname(at + 1))
			return "a sender is an address (taro@example.jp) or a domain "
			       "(@example.jp)";
		for (char *p = v; p < at; p++)
			if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '@')
				return "a sender is an address (taro@example.jp) or a "
				       "domain "
				       "(@example.jp)";
		return NULL;
	}
	return "unknown list";
}

static void set_list(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                     struct cfg_list *dst, const char *name)
{
	const yaml_node_item_t *it;
	size_t count;
	char sbuf[64];

	list_free(dst);
	if (is_null(n))
		return; /* an empty list */
	if (n->type != YAML_SEQUENCE_NODE) {
		report(ctx, node_line(n),
		       "%s: must be a list ([a, b] or '- a' lines), found %s", name,
		       node_kind(n));
		return;
	}
	count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	if (count > LIST_MAX_ITEMS) {
		report(ctx, node_line(n), "%s: too many items (at most %d)", name,
		       LIST_MAX_ITEMS);
		return;
	}
	dst->items = calloc(count ? count : 1, sizeof(*dst->items));
	if (dst->items == NULL) {
		report(ctx, node_line(n), "out of memory");
		return;
	}
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
		const yaml_node_t *item = yaml_document_get_node(ctx->doc, *it);
		char buf[LIST_ITEM_MAX];
		const char *v, *why;
		size_t len;

		if (item == NULL || (v = want_scalar(ctx, item, name, &len)) == NULL)
			continue;
		if (len == 0 || len >= sizeof(buf) || memchr(v, '\0', len) != NULL) {
			report(ctx, node_line(item), "%s: '%s': empty or too long", name,
			       shown(sbuf, sizeof sbuf, v, len));
			continue;
		}
		memcpy(buf, v, len);
		buf[len] = '\0';
		why = list_item_check(f->list_kind, buf);
		if (why != NULL) {
			report(ctx, node_line(item), "%s: '%s': %s", name,
			       shown(sbuf, sizeof sbuf, v, len), why);
			continue;
		}
		dst->items[dst->n] = strdup(buf);
		if (dst->items[dst->n] == NULL) {
			report(ctx, node_line(item), "out of memory");
			return;
		}
		dst->n++;
	}
}

static void set_bool(struct load_ctx *ctx, const yaml_node_t *n, int *dst,
                     const char *name)
{
	char sbuf[64];
	const char *v;
	size_t len;
	int idx;

	v = want_scalar(ctx, n, name, &len);
	if (v == NULL)
		return;
	idx = lookup_name(bool_names, 2, v, len);
	if (idx < 0) {
		report(ctx, node_line(n), "%s: unknown value '%s' (allowed: true, false)",
		       name, shown(sbuf, sizeof sbuf, v, len));
		return;
	}
	*dst = idx == 0;
}

/* Stores one value according to its field. */
static void apply_field(struct load_ctx *ctx, const struct field *f, const yaml_node_t *n,
                        void *base, const char *name)
{
	void *dst = (char *)base + f->off;

	switch (f->kind) {
	case FK_SECTION:
		if (is_null(n))
			return; /* an empty section keeps every default */
		if (n->type != YAML_MAPPING_NODE) {
			report(ctx, node_line(n), "'%s' must be a mapping, found %s",
			       name, node_kind(n));
			return;
		}
		walk_mapping(ctx, n, f->sub, base, name);
		return;
	case FK_LISTENERS:
		load_listeners(ctx, n);
		return;
	case FK_STRING:
	case FK_OPT_STRING:
		set_string(ctx, f, n, dst, name);
		break;
	case FK_NAME:
	case FK_ACTION:
	case FK_PROTOCOL:
		set_named(ctx, f, n, dst, name);
		break;
	case FK_UINT:
	case FK_SIZE:
		set_number(ctx, f, n, dst, name);
		break;
	case FK_LISTEN_ADDR:
	case FK_HOST_PORT:
		set_address(ctx, f, n, base, name);
		break;
	case FK_LIST:
		set_list(ctx, f, n, dst, name);
		break;
	case FK_BOOL:
		set_bool(ctx, n, dst, name);
		break;
	case FK_RULES:
		load_rules(ctx, n);
		return;
	}
	if (f->setbit != 0)
		*(uint32_t *)((char *)base + f->set_off) |= f->setbit;
}

/*
 * Walks one mapping against its table. section is the dotted path used in
 * messages ("" at the top level). Unknown and duplicate keys are reported
 * at the key's line; a missing required key at the mapping's line.
 */
static void walk_mapping(struct load_ctx *ctx, const yaml_node_t *map,
                         const struct field *table, void *base, const char *section)
{
	int seen[FIELDS_MAX] = {0};
	const yaml_node_pair_t *p;
	char name[128], sbuf[64];
	size_t nf;

	for (nf = 0; table[nf].key != NULL; nf++)
		;
	for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
		const yaml_node_t *k = yaml_document_get_node(ctx->doc, p->key);
		const yaml_node_t *v = yaml_document_get_node(ctx->doc, p->value);
		const char *key;
		size_t klen;
		int idx;

		if (k == NULL || v == NULL)
			continue;
		if (k->type != YAML_SCALAR_NODE) {
			report(ctx, node_line(k), "a key in '%s' is %s, not a name",
			       *section ? section : "the top level", node_kind(k));
			continue;
		}
		key = (const char *)k->data.scalar.value;
		klen = k->data.scalar.length;
		idx = -1;
		for (size_t i = 0; i < nf; i++) {
			if (strlen(table[i].key) == klen &&
			    memcmp(table[i].key, key, klen) == 0) {
				idx = (int)i;
				break;
			}
		}
		if (idx < 0) {
			if (*section)
				report(ctx, node_line(k), "unknown key '%s' in '%s'",
				       shown(sbuf, sizeof sbuf, key, klen), section);
			else
				report(ctx, node_line(k), "unknown top-level key '%s'",
				       shown(sbuf, sizeof sbuf, key, klen));
			continue;
		}
		if (seen[idx]) {
			report(ctx, node_line(k),
			       "duplicate key '%s' in '%s' (first at line %d)",
			       table[idx].key, *section ? section : "the top level",
			       seen[idx]);
			continue;
		}
		seen[idx] = node_line(k);
		snprintf(name, sizeof name, "%s%s%s", section, *section ? "." : "",
		         table[idx].key);
		apply_field(ctx, &table[idx], v, base, name);
	}
	for (size_t i = 0; i < nf; i++) {
		if (!table[i].required || seen[i])
			continue;
		if (*section)
			report(ctx, node_line(map), "missing key '%s' in '%s'",
			       table[i].key, section);
		else
			report(ctx, node_line(map), "missing top-level key '%s'",
			       table[i].key);
	}
}

/* Parses a numeric listen host into family and address bytes, for comparing. */
static int listen_key(const struct cfg_listener *l, unsigned char bin[16])
{
	memset(bin, 0, 16);
	if (inet_pton(AF_INET, l->listen_host, bin) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, l->listen_host, bin) == 1)
		return AF_INET6;
	return -1;
}

/*
 * Loads the listeners sequence into cfg->listeners (allocated here, even
 * when some items are bad, so config_free has one path). Two listeners on
 * the same address and port are an error at the second one.
 */
/*
 * A transparent listener with tls: implicit (redirected 993/995): TLS from
 * the first byte towards a server the client chose. With intercept_ca the
 * proxy answers with leaves of its own CA and verifies the server by the
 * client's SNI, so the fixed-upstream keys (certificate, key,
 * upstream_name, upstream_pin) have no meaning; without it the traffic is
 * refused or relayed unread (unscanned_tls). The upstream side is TLS.
 */
static void check_transparent_tls(struct load_ctx *ctx, struct cfg_listener *l,
                                  const char *name)
{
	static const char *const fixed[] = {"certificate", "key", "upstream_name",
	                                    "upstream_pin"};
	const char *val[] = {l->certificate, l->key, l->upstream_name, l->upstream_pin};
	int icpt = l->intercept_ca_certificate[0] != '\0';

	if (l->upstream_tls[0] == '\0')
		snprintf(l->upstream_tls, sizeof(l->upstream_tls), "implicit");
	if (strcmp(l->upstream_tls, "implicit") != 0)
		report(ctx, l->line,
		       "%s: a transparent listener with tls: implicit needs "
		       "upstream_tls: implicit",
		       name);
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (val[i][0] != '\0')
			report(ctx, l->line,
			       "%s: '%s' does not apply to a transparent TLS listener "
			       "(%s)",
			       name, fixed[i],
			       icpt ? "intercept_ca makes the certificates; the server "
			              "is verified by the name the client asks for"
			            : "its TLS is relayed or refused, not terminated");
	if (icpt && l->unscanned_tls[0] != '\0')
		report(ctx, l->line,
		       "%s: unscanned_tls is for listeners without intercept_ca", name);
	if (!icpt && l->unscanned_tls[0] == '\0')
		snprintf(l->unscanned_tls, sizeof(l->unscanned_tls), "refuse");
}

/*
 * TLS keys that only make sense together: a TLS listener needs its
 * certificate and key; a pin is "sha256//" and 44 base64 characters. The
 * defaults (none, verification on) are filled in here.
 */
static void check_listener_tls(struct load_ctx *ctx, struct cfg_listener *l,
                               const char *name)
{
	if (l->tls[0] == '\0')
		snprintf(l->tls, sizeof(l->tls), "none");
	if (l->upstream_verify[0] == '\0')
		snprintf(l->upstream_verify, sizeof(l->upstream_verify), "true");
	if (l->upstream_host[0] != '\0' && l->upstream_port == 0 &&
	    strcmp(l->tls, "implicit") == 0) {
		check_transparent_tls(ctx, l, name);
		return;
	}
	if (l->upstream_tls[0] == '\0')
		snprintf(l->upstream_tls, sizeof(l->upstream_tls), "none");
	if (l->intercept_ca_certificate[0] != '\0')
		report(ctx, l->line,
		       "%s: intercept_ca needs upstream: transparent and tls: implicit",
		       name);
	if (l->unscanned_tls[0] != '\0')
		report(ctx, l->line,
		       "%s: unscanned_tls applies to upstream: transparent with tls: "
		       "implicit only",
		       name);
	if (strcmp(l->tls, "none") != 0 &&
	    (l->certificate[0] == '\0' || l->key[0] == '\0'))
		report(ctx, l->line, "%s: tls: %s needs 'certificate' and 'key'", name,
		       l->tls);
	if (l->upstream_pin[0] != '\0' && (strncmp(l->upstream_pin, "sha256//", 8) != 0 ||
	                                   strlen(l->upstream_pin) != 8 + 44))
		report(ctx, l->line,
		       "%s: upstream_pin must be sha256// and the base64 SHA-256 of the "
		       "upstream's public key (44 characters)",
		       name);
	if (l->upstream_pin[0] != '\0' && strcmp(l->upstream_tls, "none") == 0)
		report(ctx, l->line, "%s: upstream_pin needs upstream_tls", name);
}

static void load_listeners(struct load_ctx *ctx, const yaml_node_t *seq)
{
	struct config *cfg = ctx->cfg;
	const yaml_node_item_t *it;
	size_t n;

	if (seq->type != YAML_SEQUENCE_NODE || is_null(seq)) {
		report(ctx, node_line(seq),
		       "'listeners' must be a sequence of listeners, found %s",
		       is_null(seq) ? "nothing" : node_kind(seq));
		return;
	}
	n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	if (n == 0) {
		report(ctx, node_line(seq),
		       "'listeners' is empty: at least one is required");
		return;
	}
	if (n > UINT_MAX) {
		report(ctx, node_line(seq), "'listeners': too many");
		return;
	}
	cfg->listeners = calloc(n, sizeof(*cfg->listeners));
	if (cfg->listeners == NULL) {
		report(ctx, node_line(seq), "out of memory");
		return;
	}
	cfg->n_listeners = (unsigned)n;
	it = seq->data.sequence.items.start;
	for (size_t i = 0; i < n; i++, it++) {
		const yaml_node_t *item = yaml_document_get_node(ctx->doc, *it);
		struct cfg_listener *l = &cfg->listeners[i];
		char name[48];

		snprintf(name, sizeof name, "listeners[%zu]", i);
		if (item == NULL)
			continue;
		l->line = node_line(item);
		if (item->type != YAML_MAPPING_NODE) {
			report(ctx, node_line(item),
			       "'%s' must be a mapping (protocol, listen, upstream), "
			       "found %s",
			       name, node_kind(item));
			continue;
		}
		walk_mapping(ctx, item, listener_fields, l, name);
		check_listener_tls(ctx, l, name);
	}
	for (size_t i = 1; i < n; i++) {
		unsigned char a[16], b[16];
		int fa;

		if (cfg->listeners[i].listen_port == 0)
			continue; /* missing or already reported */
		fa = listen_key(&cfg->listeners[i], a);
		for (size_t j = 0; j < i; j++) {
			if (cfg->listeners[j].listen_port !=
			        cfg->listeners[i].listen_port ||
			    listen_key(&cfg->listeners[j], b) != fa ||
			    memcmp(a, b, 16) != 0)
				continue;
			report(ctx, cfg->listeners[i].line,
			       "listeners[%zu]: duplicate listen address %s%s%s:%u "
			       "(first at "
			       "line %d)",
			       i, fa == AF_INET6 ? "[" : "",
			       cfg->listeners[i].listen_host, fa == AF_INET6 ? "]" : "",
			       cfg->listeners[i].listen_port, cfg->listeners[j].line);
			break;
		}
	}
}

/*
 * Loads the rules sequence into cfg->rules (allocated here). A rule must
 * match on something (policy: is the rule for everyone); match.upstream
 * is HOST or HOST:PORT ([v6] or [v6]:PORT); user and domain compare
 * without case.
 */
static void load_rules(struct load_ctx *ctx, const yaml_node_t *seq)
{
	struct config *cfg = ctx->cfg;
	const yaml_node_item_t *it;
	size_t n;

	if (is_null(seq))
		return;
	if (seq->type != YAML_SEQUENCE_NODE) {
		report(ctx, node_line(seq),
		       "'rules' must be a sequence of rules, found %s", node_kind(seq));
		return;
	}
	n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
	if (n == 0)
		return;
	if (n > 10000) {
		report(ctx, node_line(seq), "'rules': too many (at most 10000)");
		return;
	}
	cfg->rules = calloc(n, sizeof(*cfg->rules));
	if (cfg->rules == NULL) {
		report(ctx, node_line(seq), "out of memory");
		return;
	}
	cfg->n_rules = (unsigned)n;
	it = seq->data.sequence.items.start;
	for (size_t i = 0; i < n; i++, it++) {
		const yaml_node_t *item = yaml_document_get_node(ctx->doc, *it);
		struct cfg_rule *r = &cfg->rules[i];
		char name[48];

		snprintf(name, sizeof name, "rules[%zu]", i);
		if (item == NULL)
			continue;
		r->line = node_line(item);
		if (item->type != YAML_MAPPING_NODE) {
			report(
			    ctx, node_line(item),
			    "'%s' must be a mapping (match and what it sets), found %s",
			    name, node_kind(item));
			continue;
		}
		walk_mapping(ctx, item, rule_fields, r, name);
		if (r->name[0] == '\0')
			snprintf(r->name, sizeof(r->name), "rules[%zu]", i);
		for (char *p = r->m_user; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		for (char *p = r->m_domain; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		if (r->m_domain[0] == '@')
			memmove(r->m_domain, r->m_domain + 1, strlen(r->m_domain));
		if (r->m_domain[0] != '\0' && !is_hostname(r->m_domain))
			report(ctx, r->line, "%s: match.domain '%s' is not a domain name",
			       name, r->m_domain);
		if (r->m_upstream_host[0] != '\0') {
			char host[CFG_HOST_MAX];
			const char *why = NULL;
			uint16_t port = 0;
			size_t len = strlen(r->m_upstream_host);
			int has_port = r->m_upstream_host[len - 1] != ']' &&
			               strchr(r->m_upstream_host, ':') != NULL &&
			               (r->m_upstream_host[0] == '[' ||
			                strchr(r->m_upstream_host, ':') ==
			                    strrchr(r->m_upstream_host, ':'));

			if (has_port) {
				if (parse_hostport(r->m_upstream_host, len, false, host,
				                   sizeof(host), &port, &why) < 0) {
					report(ctx, r->line,
					       "%s: match.upstream '%s': %s", name,
					       r->m_upstream_host, why);
					continue;
				}
			} else {
				snprintf(host, sizeof(host), "%s", r->m_upstream_host);
				if (host[0] == '[') {
					memmove(host, host + 1, strlen(host));
					host[strlen(host) - 1] = '\0';
				}
			}
			for (char *p = host; *p; p++)
				*p = (char)tolower((unsigned char)*p);
			snprintf(r->m_upstream_host, sizeof(r->m_upstream_host), "%s",
			         host);
			r->m_upstream_port = port;
		}
		if (r->m_listener_port == 0 && r->m_upstream_host[0] == '\0' &&
		    r->m_user[0] == '\0' && r->m_domain[0] == '\0')
			report(
			    ctx, r->line,
			    "%s: match needs at least one of listener, upstream, user, "
			    "domain (the policy for everyone is 'policy:')",
			    name);
	}
}

static struct notice_template *load_template(struct load_ctx *ctx, const char *dir,
                                             const char *name, int line, const char *what)
{
	char err[512];
	struct notice_template *t = notice_template_open(dir, name, err, sizeof(err));

	if (t == NULL)
		report(ctx, line, "%s: %s", what, err);
	return t;
}

/*
 * Builds cfg->policy, the effective global policy: the policy: section's
 * own fields, the actions of on_malicious/on_scan_error, and the global
 * limits kept in their historical sections (scanner.clamav, spool,
 * timeouts, notice). Lists not given get the shipped defaults.
 */
static void finish_policy(struct load_ctx *ctx)
{
	struct config *cfg = ctx->cfg;
	struct policy_set *p = &cfg->policy;

	p->action[PK_MALICIOUS] = cfg->on_malicious;
	p->action[PK_SCAN_ERROR] = cfg->on_scan_error;
	p->max_message_size = cfg->spool_max_message_size;
	p->max_filesize = cfg->clamav_max_filesize;
	p->max_scansize = cfg->clamav_max_scansize;
	p->max_recursion = cfg->clamav_max_recursion;
	p->max_files = cfg->clamav_max_files;
	p->max_scantime_ms = cfg->clamav_max_scantime_ms;
	p->keepalive = cfg->timeout_keepalive;
	snprintf(p->admin_contact, sizeof(p->admin_contact), "%s", cfg->admin_contact);
	/* not given: the scanner's shipped lists (scanners/attach.c says why) */
	if (!(p->set & PS_BLOCKED_EXT) &&
	    list_set(&p->blocked_extensions, attach_default_extensions,
	             attach_n_default_extensions) < 0)
		report(ctx, 1, "out of memory");
	if (!(p->set & PS_BLOCKED_MIME) &&
	    list_set(&p->blocked_mime_types, attach_default_mime_types,
	             attach_n_default_mime_types) < 0)
		report(ctx, 1, "out of memory");
	p->set = 0;
	if ((cfg->copy_to[0] != '\0') != (cfg->copy_smtp_url[0] != '\0'))
		report(ctx, 1, "notice.admin_copy needs both 'to' and 'smtp_url'");
	if (cfg->copy_to[0] != '\0' &&
	    (strchr(cfg->copy_to, '@') == NULL || strpbrk(cfg->copy_to, " <>\"") != NULL))
		report(ctx, 1, "notice.admin_copy.to: '%s' is not a mail address",
		       cfg->copy_to);
	/* the notice templates, loaded now: a bad one is a configuration error */
	p->tmpl = load_template(ctx, cfg->notice_templates_dir, p->notice_template, 1,
	                        "notice.template");
	for (unsigned i = 0; i < cfg->n_rules; i++) {
		struct cfg_rule *r = &cfg->rules[i];

		if (r->ps.set & PS_NOTICE_TEMPLATE)
			r->ps.tmpl =
			    load_template(ctx, cfg->notice_templates_dir,
			                  r->ps.notice_template, r->line, r->name);
	}
}

/* Reports a libyaml parser failure with its line. */
static void report_yaml_error(struct load_ctx *ctx, const yaml_parser_t *parser)
{
	int line;

	if (parser->error == YAML_MEMORY_ERROR) {
		report(ctx, (int)parser->mark.line + 1, "out of memory reading the file");
		return;
	}
	if (parser->error == YAML_READER_ERROR)
		line = (int)parser->mark.line + 1;
	else
		line = (int)parser->problem_mark.line + 1;
	if (parser->context != NULL)
		report(ctx, line, "YAML syntax error: %s (%s started at line %d)",
		       parser->problem ? parser->problem : "unknown problem",
		       parser->context, (int)parser->context_mark.line + 1);
	else
		report(ctx, line, "YAML syntax error: %s",
		       parser->problem ? parser->problem : "unknown problem");
}

/*
 * Loads and validates path (see config.h). Every problem found is written
 * to errs (may be NULL) as "PATH:LINE: reason"; a file that cannot be
 * opened gives "PATH: reason". Returns 0 with a new config in *cfg_r that
 * the caller frees with config_free, or -1 with *cfg_r set to NULL.
 */
int config_load(const char *path, struct config **cfg_r, FILE *errs)
{
	struct load_ctx ctx = {.path = path, .errs = errs};
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	const yaml_node_t *root;
	FILE *f;

	*cfg_r = NULL;
	f = fopen(path, "rb");
	if (f == NULL) {
		if (errs != NULL)
			fprintf(errs, "%s: cannot open: %s\n", path, strerror(errno));
		return -1;
	}
	ctx.cfg = malloc(sizeof(*ctx.cfg));
	if (ctx.cfg == NULL || !yaml_parser_initialize(&parser)) {
		if (errs != NULL)
			fprintf(errs, "%s: out of memory\n", path);
		free(ctx.cfg);
		fclose(f);
		return -1;
	}
	config_defaults(ctx.cfg);
	yaml_parser_set_input_file(&parser, f);

	if (!yaml_parser_load(&parser, &doc)) {
		report_yaml_error(&ctx, &parser);
		goto out_parser;
	}
	ctx.doc = &doc;
	root = yaml_document_get_root_node(&doc);
	if (root == NULL) {
		report(&ctx, 1, "the file is empty: at least 'listeners' is required");
	} else if (root->type != YAML_MAPPING_NODE) {
		report(&ctx, node_line(root),
		       "the top level must be a mapping of sections, found %s",
		       node_kind(root));
	} else {
		walk_mapping(&ctx, root, top_fields, ctx.cfg, "");
		finish_policy(&ctx);
	}
	/* a second document ("---") would be silently ignored: refuse it */
	if (root != NULL) {
		if (!yaml_parser_load(&parser, &extra)) {
			report_yaml_error(&ctx, &parser);
		} else {
			const yaml_node_t *r2 = yaml_document_get_root_node(&extra);

			if (r2 != NULL)
				report(
				    &ctx, node_line(r2),
				    "more than one YAML document: only one is allowed");
			yaml_document_delete(&extra);
		}
	}
	yaml_document_delete(&doc);
out_parser:
	yaml_parser_delete(&parser);
	fclose(f);
	if (ctx.n_errors > 0) {
		config_free(&ctx.cfg);
		return -1;
	}
	ctx.cfg->refs = 1;
	*cfg_r = ctx.cfg;
	return 0;
}

const struct config *config_ref(const struct config *cfg)
{
	((struct config *)cfg)->refs++; /* the count is not part of the value */
	return cfg;
}

void config_unref(const struct config **cfgp)
{
	struct config *cfg = (struct config *)*cfgp;

	*cfgp = NULL;
	if (cfg != NULL && --cfg->refs <= 0)
		config_free(&cfg);
}

static void policy_set_free(struct policy_set *ps)
{
	notice_template_free(&ps->tmpl);
	list_free(&ps->blocked_extensions);
	list_free(&ps->blocked_mime_types);
	list_free(&ps->sender_allow);
	list_free(&ps->sender_deny);
}

/* Frees cfg and its listeners; NULLs *cfgp. Accepts NULL and *cfgp == NULL. */
void config_free(struct config **cfgp)
{
	if (cfgp == NULL || *cfgp == NULL)
		return;
	policy_set_free(&(*cfgp)->policy);
	for (unsigned i = 0; i < (*cfgp)->n_rules; i++)
		policy_set_free(&(*cfgp)->rules[i].ps);
	free((*cfgp)->rules);
	free((*cfgp)->listeners);
	free(*cfgp);
	*cfgp = NULL;
}
