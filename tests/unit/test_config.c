/*
 * test_config.c - Check suite for policy/config.c and policy/policy.c.
 *
 * Each case writes a YAML file into a private temporary directory, loads it
 * with config_load() and checks either the values or the exact
 * "PATH:LINE: reason" lines written to the error stream. Error cases are a
 * table {yaml, line, phrase}; the tests for several problems at once check
 * that every one of them is reported, not just the first.
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy/config.h"
#include "policy/policy.h"

static char tmpdir[256];

/* The outcome of loading one text: the config or the error lines. */
struct loaded {
	int rc;
	struct config *cfg;
	char path[320];
	char *errs;
	size_t errs_len;
};

/* Writes yaml to a fresh file in tmpdir, loads it, removes the file. */
static void load_text(const char *yaml, struct loaded *out)
{
	static unsigned seq;
	FILE *f, *errs;

	memset(out, 0, sizeof(*out));
	snprintf(out->path, sizeof out->path, "%s/cfg-%u-%u.yaml", tmpdir,
	         (unsigned)getpid(), seq++);
	f = fopen(out->path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_ne(fputs(yaml, f), EOF);
	ck_assert_int_eq(fclose(f), 0);

	errs = open_memstream(&out->errs, &out->errs_len);
	ck_assert_ptr_nonnull(errs);
	out->rc = config_load(out->path, &out->cfg, errs);
	fclose(errs);
	unlink(out->path);
}

static void loaded_free(struct loaded *l)
{
	config_free(&l->cfg);
	free(l->errs);
	l->errs = NULL;
}

/* Number of lines on the error stream. */
static unsigned count_errors(const struct loaded *l)
{
	unsigned n = 0;

	for (size_t i = 0; i < l->errs_len; i++)
		n += l->errs[i] == '\n';
	return n;
}

/* True when one error line reads "PATH:LINE: ..." and contains phrase. */
static bool has_error(const struct loaded *l, int line, const char *phrase)
{
	char prefix[400];
	const char *p = l->errs;

	snprintf(prefix, sizeof prefix, "%s:%d: ", l->path, line);
	while (p != NULL && *p != '\0') {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);

		if (strncmp(p, prefix, strlen(prefix)) == 0) {
			char *one = strndup(p, len);
			bool hit = strstr(one, phrase) != NULL;

			free(one);
			if (hit)
				return true;
		}
		p = eol ? eol + 1 : NULL;
	}
	return false;
}

#define ASSERT_ERROR(l, line, phrase)                                                    \
	ck_assert_msg(has_error((l), (line), (phrase)),                                  \
	              "expected line %d error containing \"%s\", got:\n%s", (line),      \
	              (phrase), (l)->errs)

static const char full_example[] =
    "listeners:\n"
    "  - protocol: pop3            # pop3 | imap\n"
    "    listen: 127.0.0.1:11110   # HOST:PORT, [v6addr]:PORT\n"
    "    upstream: 127.0.0.1:21110 # HOST:PORT (hostnames allowed)\n"
    "scanner:\n"
    "  clamav:\n"
    "    database: /var/lib/clamav\n"
    "    max_filesize: 100M        # sizes: number with optional K/M/G suffix\n"
    "    max_scansize: 400M\n"
    "    max_recursion: 17\n"
    "    max_files: 10000\n"
    "    max_scantime: 120         # seconds\n"
    "quarantine:\n"
    "  dir: /var/lib/mailmoat/quarantine\n"
    "policy:\n"
    "  on_malicious: quarantine    # quarantine | abort | pass\n"
    "  on_scan_error: quarantine   # same choices\n"
    "notice:\n"
    "  admin_contact: \"postmaster@example.jp\"\n"
    "spool:\n"
    "  memory_limit: 4M\n"
    "  max_message_size: 512M\n"
    "  dir: /var/tmp\n"
    "timeouts:\n"
    "  client_idle: 600\n"
    "  upstream_idle: 600\n"
    "  connect: 15\n"
    "  shutdown_grace: 10\n"
    "  keepalive: 10\n"
    "limits:\n"
    "  max_sessions: 500\n"
    "  readahead: 2\n"
    "  prefetch: 3\n"
    "user: mailmoat                # optional\n"
    "log_level: info               # error | warn | info | debug\n";

static const char minimal[] = "listeners:\n"
                              "  - protocol: imap\n"
                              "    listen: 127.0.0.1:10143\n"
                              "    upstream: mail.example.jp:143\n";

START_TEST(full_example_loads)
{
	struct loaded l;
	const struct config *c;

	load_text(full_example, &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_uint_eq(l.errs_len, 0);
	c = l.cfg;
	ck_assert_ptr_nonnull(c);
	ck_assert_uint_eq(c->n_listeners, 1);
	ck_assert_int_eq(c->listeners[0].protocol, CFG_PROTO_POP3);
	ck_assert_str_eq(c->listeners[0].listen_host, "127.0.0.1");
	ck_assert_uint_eq(c->listeners[0].listen_port, 11110);
	ck_assert_str_eq(c->listeners[0].upstream_host, "127.0.0.1");
	ck_assert_uint_eq(c->listeners[0].upstream_port, 21110);
	ck_assert_int_eq(c->listeners[0].line, 2);
	ck_assert_str_eq(c->clamav_database, "/var/lib/clamav");
	ck_assert_uint_eq(c->clamav_max_filesize, 100ULL * 1024 * 1024);
	ck_assert_uint_eq(c->clamav_max_scansize, 400ULL * 1024 * 1024);
	ck_assert_uint_eq(c->clamav_max_recursion, 17);
	ck_assert_uint_eq(c->clamav_max_files, 10000);
	ck_assert_uint_eq(c->clamav_max_scantime_ms, 120000);
	ck_assert_str_eq(c->quarantine_dir, "/var/lib/mailmoat/quarantine");
	ck_assert_int_eq(c->on_malicious, POLICY_QUARANTINE);
	ck_assert_int_eq(c->on_scan_error, POLICY_QUARANTINE);
	ck_assert_str_eq(c->admin_contact, "postmaster@example.jp");
	ck_assert_uint_eq(c->spool_memory_limit, 4ULL * 1024 * 1024);
	ck_assert_uint_eq(c->spool_max_message_size, 512ULL * 1024 * 1024);
	ck_assert_str_eq(c->spool_dir, "/var/tmp");
	ck_assert_uint_eq(c->timeout_client_idle, 600);
	ck_assert_uint_eq(c->timeout_upstream_idle, 600);
	ck_assert_uint_eq(c->timeout_connect, 15);
	ck_assert_uint_eq(c->timeout_shutdown_grace, 10);
	ck_assert_uint_eq(c->timeout_keepalive, 10);
	ck_assert_uint_eq(c->max_sessions, 500);
	ck_assert_uint_eq(c->readahead, 2);
	ck_assert_uint_eq(c->prefetch, 3);
	ck_assert_str_eq(c->run_as, "mailmoat");
	ck_assert_str_eq(c->log_level, "info");
	loaded_free(&l);
	ck_assert_ptr_null(l.cfg);
}
END_TEST

START_TEST(non_default_values)
{
	struct loaded l;
	const struct config *c;

	load_text("listeners:\n"
	          "  - protocol: imap\n"
	          "    listen: '[::1]:10143'\n"
	          "    upstream: '[2001:db8::1]:993'\n"
	          "  - protocol: pop3\n"
	          "    listen: 0.0.0.0:110\n"
	          "    upstream: pop.example.jp:110\n"
	          "policy: {on_malicious: abort, on_scan_error: pass}\n"
	          "quarantine: {dir: var/quarantine}\n"
	          "spool: {memory_limit: 0, max_message_size: 2G, dir: ./spool}\n"
	          "scanner: {clamav: {max_filesize: 512k, max_scantime: 3}}\n"
	          "timeouts: {keepalive: 0}\n"
	          "log_level: debug\n",
	          &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	c = l.cfg;
	ck_assert_uint_eq(c->n_listeners, 2);
	ck_assert_int_eq(c->listeners[0].protocol, CFG_PROTO_IMAP);
	ck_assert_str_eq(c->listeners[0].listen_host, "::1");
	ck_assert_uint_eq(c->listeners[0].listen_port, 10143);
	ck_assert_str_eq(c->listeners[0].upstream_host, "2001:db8::1");
	ck_assert_uint_eq(c->listeners[0].upstream_port, 993);
	ck_assert_int_eq(c->listeners[1].line, 5);
	ck_assert_str_eq(c->listeners[1].upstream_host, "pop.example.jp");
	ck_assert_int_eq(c->on_malicious, POLICY_ABORT);
	ck_assert_int_eq(c->on_scan_error, POLICY_PASS);
	ck_assert_str_eq(c->quarantine_dir, "var/quarantine");
	ck_assert_uint_eq(c->spool_memory_limit, 0);
	ck_assert_uint_eq(c->spool_max_message_size, 2ULL << 30);
	ck_assert_str_eq(c->spool_dir, "./spool");
	ck_assert_uint_eq(c->clamav_max_filesize, 512 * 1024);
	ck_assert_uint_eq(c->clamav_max_scansize, 400ULL << 20);
	ck_assert_uint_eq(c->clamav_max_scantime_ms, 3000);
	ck_assert_uint_eq(c->timeout_keepalive, 0);
	ck_assert_str_eq(c->log_level, "debug");
	loaded_free(&l);
}
END_TEST

START_TEST(minimal_gets_defaults)
{
	struct loaded l;
	const struct config *c;

	ck_assert_int_eq(setenv("TMPDIR", "/srv/tmp", 1), 0);
	load_text(minimal, &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	c = l.cfg;
	ck_assert_uint_eq(c->n_listeners, 1);
	ck_assert_int_eq(c->listeners[0].protocol, CFG_PROTO_IMAP);
	ck_assert_str_eq(c->listeners[0].upstream_host, "mail.example.jp");
	ck_assert_uint_eq(c->listeners[0].upstream_port, 143);
	ck_assert_str_eq(c->clamav_database, "/var/lib/clamav");
	ck_assert_uint_eq(c->clamav_max_filesize, 100ULL << 20);
	ck_assert_uint_eq(c->clamav_max_scansize, 400ULL << 20);
	ck_assert_uint_eq(c->clamav_max_recursion, 17);
	ck_assert_uint_eq(c->clamav_max_files, 10000);
	ck_assert_uint_eq(c->clamav_max_scantime_ms, 120000);
	ck_assert_str_eq(c->quarantine_dir, "/var/lib/mailmoat/quarantine");
	ck_assert_int_eq(c->on_malicious, POLICY_QUARANTINE);
	ck_assert_int_eq(c->on_scan_error, POLICY_QUARANTINE);
	ck_assert_str_eq(c->admin_contact, "your mail administrator");
	ck_assert_uint_eq(c->spool_memory_limit, 4ULL << 20);
	ck_assert_uint_eq(c->spool_max_message_size, 512ULL << 20);
	ck_assert_str_eq(c->spool_dir, "/srv/tmp");
	ck_assert_uint_eq(c->timeout_client_idle, 600);
	ck_assert_uint_eq(c->timeout_upstream_idle, 600);
	ck_assert_uint_eq(c->timeout_connect, 15);
	ck_assert_uint_eq(c->timeout_shutdown_grace, 10);
	ck_assert_uint_eq(c->timeout_keepalive, 10);
	ck_assert_uint_eq(c->max_sessions, 500);
	ck_assert_uint_eq(c->readahead, 2);
	ck_assert_uint_eq(c->prefetch, 2);
	ck_assert_str_eq(c->run_as, "");
	ck_assert_str_eq(c->log_level, "info");
	loaded_free(&l);

	ck_assert_int_eq(unsetenv("TMPDIR"), 0);
	load_text(minimal, &l);
	ck_assert_int_eq(l.rc, 0);
	ck_assert_str_eq(l.cfg->spool_dir, "/tmp");
	loaded_free(&l);
}
END_TEST

START_TEST(empty_sections_keep_defaults)
{
	struct loaded l;

	load_text("listeners:\n"
	          "  - {protocol: pop3, listen: '127.0.0.1:110', upstream: 'h:110'}\n"
	          "notice:\n"
	          "timeouts:\n"
	          "user:\n",
	          &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_str_eq(l.cfg->admin_contact, "your mail administrator");
	ck_assert_uint_eq(l.cfg->timeout_connect, 15);
	ck_assert_str_eq(l.cfg->run_as, "");
	loaded_free(&l);
}
END_TEST

/* ---- one problem per file: {yaml, line, phrase} ---- */

#define L1                                                                               \
	"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:110', upstream: 'h:110'}\n"

static const struct err_case {
	const char *yaml;
	int line;
	const char *phrase;
} err_cases[] = {
    /* unknown keys at every level */
    {L1 "bogus: 1\n", 3, "unknown top-level key 'bogus'"},
    {"listeners:\n  - protocol: pop3\n    listen: 127.0.0.1:110\n    upstream: h:1\n"
     "    ssl: on\n",
     5, "unknown key 'ssl' in 'listeners[0]'"},
    {"listeners:\n  - protocol: pop3\n    listen: 127.0.0.1:110\n    upstream: h:1\n"
     "    tls: on\n",
     5, "unknown value 'on' (allowed: none, implicit, starttls, required)"},
    {"listeners:\n  - protocol: pop3\n    listen: 127.0.0.1:110\n    upstream: h:1\n"
     "    tls: implicit\n",
     2, "tls: implicit needs 'certificate' and 'key'"},
    {"listeners:\n  - protocol: pop3\n    listen: 127.0.0.1:110\n    upstream: h:1\n"
     "    upstream_tls: implicit\n    upstream_pin: sha256//abc\n",
     2, "upstream_pin must be sha256//"},
    /* rules */
    {L1 "rules:\n  - on_malicious: pass\n", 4, "missing key 'match' in 'rules[0]'"},
    {L1 "rules:\n  - match: {}\n    on_malicious: pass\n", 4,
     "match needs at least one of listener, upstream, user, domain"},
    {L1 "rules:\n  - match: {user: a, shoe: b}\n", 4,
     "unknown key 'shoe' in 'rules[0].match'"},
    {L1 "rules:\n  - match: {user: a}\n    on_malicious: delete\n", 5,
     "unknown value 'delete' (allowed: pass, quarantine, abort, tag)"},
    {L1 "rules:\n  - match: {domain: 'exa mple'}\n", 4, "is not a domain name"},
    {L1 "rules:\n  - match: {upstream: 'h:99999'}\n", 4, "match.upstream 'h:99999'"},
    {L1 "rules:\n  - match: {listener: 'h:110'}\n", 4, "rules[0].match.listener: bad"},
    {L1 "rules: {a: 1}\n", 3, "'rules' must be a sequence"},
    {L1 "policy:\n  blocked_extensions: exe\n", 4, "must be a list"},
    {L1 "policy:\n  blocked_extensions: [e/x]\n", 4, "'e/x': an extension is"},
    {L1 "policy:\n  blocked_mime_types: [application]\n", 4, "a MIME type is"},
    {L1 "policy:\n  sender_deny: [nobody]\n", 4, "a sender is an address"},
    {L1 "policy:\n  scan_append: yes\n", 4, "unknown value 'yes' (allowed: true, false)"},
    {L1 "rules:\n  - match: {user: a}\n    scanner: {max_scantime: 0}\n", 5,
     "rules[0].scanner.max_scantime: 0 is out of range"},
/* transparent TLS: interception or not */
#define LT                                                                               \
	"listeners:\n  - protocol: pop3\n    listen: 0.0.0.0:10995\n"                    \
	"    upstream: transparent\n    tls: implicit\n"
    {LT "    intercept_ca: {certificate: /ca.pem}\n", 6,
     "missing key 'key' in 'listeners[0].intercept_ca'"},
    {LT "    intercept_ca: {certificate: /ca.pem, key: /k, pin: x}\n", 6,
     "unknown key 'pin' in 'listeners[0].intercept_ca'"},
    {LT "    intercept_ca: /ca.pem\n", 6,
     "'listeners[0].intercept_ca' must be a mapping"},
    {LT "    intercept_ca: {certificate: /c, key: /k}\n    unscanned_tls: relay\n", 2,
     "unscanned_tls is for listeners without intercept_ca"},
    {LT "    unscanned_tls: scan\n", 6, "unknown value 'scan' (allowed: refuse, relay)"},
    {LT "    upstream_tls: none\n", 2, "needs upstream_tls: implicit"},
    {LT "    upstream_name: pop.example.jp\n", 2,
     "'upstream_name' does not apply to a transparent TLS listener"},
    {LT "    certificate: /c\n    key: /k\n", 2,
     "'certificate' does not apply to a transparent TLS listener (its TLS is relayed"},
    {"listeners:\n  - protocol: pop3\n    listen: 0.0.0.0:10995\n    upstream: h:995\n"
     "    intercept_ca: {certificate: /c, key: /k}\n",
     2, "intercept_ca needs upstream: transparent and tls: implicit"},
    {"listeners:\n  - protocol: pop3\n    listen: 0.0.0.0:10110\n"
     "    upstream: transparent\n    unscanned_tls: relay\n",
     2, "unscanned_tls applies to upstream: transparent with tls: implicit only"},
    {L1 "scanner:\n  clamav:\n    max_filesize: 1M\n    heuristics: yes\n", 6,
     "unknown key 'heuristics' in 'scanner.clamav'"},
    {L1 "scanner:\n  clamd: {}\n", 4, "unknown key 'clamd' in 'scanner'"},
    {L1 "policy:\n  on_virus: pass\n", 4, "unknown key 'on_virus' in 'policy'"},
    /* wrong YAML types */
    {L1 "scanner: clamav\n", 3, "'scanner' must be a mapping, found a scalar"},
    {L1 "policy: [pass]\n", 3, "'policy' must be a mapping, found a sequence"},
    {"listeners:\n  protocol: pop3\n", 2, "'listeners' must be a sequence"},
    {"listeners: []\n", 1, "'listeners' is empty"},
    {"listeners:\n", 1, "'listeners' must be a sequence"},
    {"listeners:\n  - pop3\n", 2, "'listeners[0]' must be a mapping"},
    {L1 "limits:\n  max_sessions: {a: 1}\n", 4,
     "limits.max_sessions: expected a single value, found a mapping"},
    {L1 "quarantine:\n  dir: [a, b]\n", 4, "quarantine.dir: expected a single value"},
    {L1 "quarantine:\n  dir:\n", 4, "quarantine.dir: missing value"},
    {L1 "quarantine:\n  dir: ''\n", 4, "quarantine.dir: must not be empty"},
    {L1 "notice:\n  admin_contact: \"a\\r\\nBcc: x\"\n", 4, "control characters"},
    {"- a\n- b\n", 1, "top level must be a mapping"},
    {"just text\n", 1, "top level must be a mapping"},
    {L1 "[a]: 1\n", 3, "a key in 'the top level' is a sequence"},
    /* missing keys */
    {"scanner: {}\n", 1, "missing top-level key 'listeners'"},
    {"listeners:\n  - protocol: pop3\n    listen: 127.0.0.1:110\n", 2,
     "missing key 'upstream' in 'listeners[0]'"},
    /* ports and addresses */
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:0', upstream: 'h:1'}\n", 2,
     "port must be a number from 1 to 65535"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:65536', upstream: 'h:1'}\n", 2,
     "port must be a number from 1 to 65535"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:18446744073709551727', "
     "upstream: 'h:1'}\n",
     2, "port must be a number from 1 to 65535"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:pop3', upstream: 'h:1'}\n", 2,
     "port must be"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:-1', upstream: 'h:1'}\n", 2,
     "port must be"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1:', upstream: 'h:1'}\n", 2,
     "port must be"},
    {"listeners:\n  - {protocol: pop3, listen: '127.0.0.1', upstream: 'h:1'}\n", 2,
     "expected HOST:PORT"},
    {"listeners:\n  - {protocol: pop3, listen: '::1:110', upstream: 'h:1'}\n", 2,
     "must be in brackets"},
    {"listeners:\n  - {protocol: pop3, listen: '[::1:110', upstream: 'h:1'}\n", 2,
     "missing ']'"},
    {"listeners:\n  - {protocol: pop3, listen: '[::g]:110', upstream: 'h:1'}\n", 2,
     "not a valid IPv6 address"},
    {"listeners:\n  - {protocol: pop3, listen: 'localhost:110', upstream: 'h:1'}\n", 2,
     "not a numeric IP address"},
    {"listeners:\n  - {protocol: pop3, listen: ':110', upstream: 'h:1'}\n", 2,
     "host is empty"},
    {"listeners:\n  - {protocol: pop3, listen: '1.2.3.4:1', upstream: '999.1.1.1:1'}\n",
     2, "not a valid IPv4 address"},
    {"listeners:\n  - {protocol: pop3, listen: '1.2.3.4:1', upstream: 'a b:1'}\n", 2,
     "not a valid host name"},
    {"listeners:\n"
     "  - {protocol: pop3, listen: '127.0.0.1:110', upstream: 'h:1'}\n"
     "  - {protocol: imap, listen: '127.0.0.1:143', upstream: 'h:2'}\n"
     "  - {protocol: imap, listen: '127.0.0.1:110', upstream: 'h:3'}\n",
     4, "duplicate listen address 127.0.0.1:110 (first at line 2)"},
    {"listeners:\n"
     "  - {protocol: imap, listen: '[::1]:143', upstream: 'h:2'}\n"
     "  - {protocol: imap, listen: '[0:0::1]:143', upstream: 'h:3'}\n",
     3, "duplicate listen address [0:0::1]:143"},
    /* sizes and numbers */
    {L1 "spool:\n  memory_limit: 1.5M\n", 4, "spool.memory_limit: invalid size '1.5M'"},
    {L1 "spool:\n  max_message_size: -1\n", 4, "invalid size '-1'"},
    {L1 "spool:\n  max_message_size: 1X\n", 4, "invalid size '1X'"},
    {L1 "spool:\n  max_message_size: 17179869184G\n", 4, "invalid size"},
    {L1 "spool:\n  max_message_size: 0\n", 4, "out of range"},
    {L1 "spool:\n  memory_limit: 2G\n", 4,
     "spool.memory_limit: 2147483648 is out of range"},
    {L1 "scanner:\n  clamav:\n    max_filesize: 4G\n", 5, "out of range"},
    {L1 "scanner:\n  clamav:\n    max_files: 4294967296\n", 5, "out of range"},
    {L1 "scanner:\n  clamav:\n    max_recursion: 99999999999999999999999\n", 5,
     "'99999999999999999999999' is too large"},
    {L1 "scanner:\n  clamav:\n    max_recursion: 4294967296\n", 5,
     "4294967296 is out of range (1 to 1000)"},
    {L1 "timeouts:\n  connect: 0\n", 4, "timeouts.connect: 0 is out of range (1 to"},
    {L1 "timeouts:\n  connect: 1e3\n", 4, "'1e3' is not a whole number"},
    {L1 "timeouts:\n  connect: +5\n", 4, "not a whole number"},
    {L1 "timeouts:\n  client_idle: 100000\n", 4, "out of range"},
    {L1 "limits:\n  readahead: 0\n", 4, "out of range"},
    /* enums */
    {L1 "policy:\n  on_malicious: drop\n", 4,
     "policy.on_malicious: unknown value 'drop' (allowed: pass, quarantine, abort, tag)"},
    {L1 "policy:\n  on_scan_error: Pass\n", 4, "unknown value 'Pass'"},
    {"listeners:\n  - {protocol: smtp, listen: '127.0.0.1:25', upstream: 'h:25'}\n", 2,
     "listeners[0].protocol: unknown value 'smtp' (allowed: pop3, imap)"},
    {L1 "log_level: verbose\n", 3, "allowed: error, warn, info, debug"},
    /* duplicate keys */
    {L1 "policy:\n  on_malicious: pass\n  on_malicious: abort\n", 5,
     "duplicate key 'on_malicious' in 'policy' (first at line 4)"},
    {L1 "user: a\nuser: b\n", 4, "duplicate key 'user'"},
    {"listeners:\n  - protocol: pop3\n    protocol: imap\n    listen: 127.0.0.1:1\n"
     "    upstream: h:1\n",
     3, "duplicate key 'protocol' in 'listeners[0]'"},
    {L1 L1, 3, "duplicate key 'listeners'"},
    /* syntax, empty, extra documents */
    {"listeners:\n  - protocol: pop3\n   listen: x\n", 3,
     "YAML syntax error: did not find expected '-' indicator"},
    {"listeners: [\n", 2, "YAML syntax error"},
    {"a: 'unterminated\n", 2, "YAML syntax error"},
    {"x: &a [1]\ny: *b\n", 2, "found undefined alias"},
    {"listeners: \xff\xfe\n", 1, "YAML syntax error"},
    {L1 "user: \"\\0x\"\n", 3, "user: control characters are not allowed"},
    {"", 1, "empty"},
    {"# only a comment\n\n", 1, "empty"},
    {L1 "---\nfoo: 1\n", 4, "more than one YAML document"},
};

START_TEST(error_case)
{
	const struct err_case *ec = &err_cases[_i];
	struct loaded l;

	load_text(ec->yaml, &l);
	ck_assert_msg(l.rc == -1, "case %d loaded:\n%s", _i, ec->yaml);
	ck_assert_ptr_null(l.cfg);
	ck_assert_msg(has_error(&l, ec->line, ec->phrase),
	              "case %d: expected line %d error containing \"%s\", got:\n%s", _i,
	              ec->line, ec->phrase, l.errs);
	loaded_free(&l);
}
END_TEST

START_TEST(all_errors_reported)
{
	struct loaded l;

	load_text("listeners:\n"              /* 1 */
	          "  - protocol: pop4\n"      /* 2 */
	          "    listen: 127.0.0.1:0\n" /* 3 */
	          "    upstream: h:110\n"     /* 4 */
	          "    color: blue\n"         /* 5 */
	          "scanner:\n"                /* 6 */
	          "  clamav:\n"               /* 7 */
	          "    max_filesize: 1X\n"    /* 8 */
	          "    oops: 1\n"             /* 9 */
	          "policy:\n"                 /* 10 */
	          "  on_malicious: drop\n"    /* 11 */
	          "  on_malicious: pass\n"    /* 12 */
	          "timeouts:\n"               /* 13 */
	          "  connect: -3\n"           /* 14 */
	          "whatever: 1\n",            /* 15 */
	          &l);
	ck_assert_int_eq(l.rc, -1);
	ck_assert_ptr_null(l.cfg);
	ASSERT_ERROR(&l, 2, "unknown value 'pop4'");
	ASSERT_ERROR(&l, 3, "port must be");
	ASSERT_ERROR(&l, 5, "unknown key 'color' in 'listeners[0]'");
	ASSERT_ERROR(&l, 8, "invalid size '1X'");
	ASSERT_ERROR(&l, 9, "unknown key 'oops' in 'scanner.clamav'");
	ASSERT_ERROR(&l, 11, "unknown value 'drop'");
	ASSERT_ERROR(&l, 12, "duplicate key 'on_malicious'");
	ASSERT_ERROR(&l, 14, "timeouts.connect");
	ASSERT_ERROR(&l, 15, "unknown top-level key 'whatever'");
	ck_assert_uint_eq(count_errors(&l), 9);
	loaded_free(&l);
}
END_TEST

START_TEST(errors_in_several_listeners)
{
	struct loaded l;

	load_text("listeners:\n"
	          "  - {protocol: pop3, listen: '127.0.0.1:110', upstream: 'h:110'}\n"
	          "  - {protocol: imap, listen: '127.0.0.1:143'}\n"
	          "  - {protocol: imap, listen: '127.0.0.1:110', upstream: 'h:1'}\n"
	          "  - 7\n",
	          &l);
	ck_assert_int_eq(l.rc, -1);
	ASSERT_ERROR(&l, 3, "missing key 'upstream' in 'listeners[1]'");
	ASSERT_ERROR(&l, 4, "duplicate listen address");
	ASSERT_ERROR(&l, 5, "'listeners[3]' must be a mapping");
	ck_assert_uint_eq(count_errors(&l), 3);
	loaded_free(&l);
}
END_TEST

/* Transparent TLS listeners: defaults filled in, interception read. */
START_TEST(transparent_tls)
{
	struct loaded l;

	load_text("listeners:\n"
	          "  - protocol: imap\n    listen: 0.0.0.0:10993\n"
	          "    upstream: transparent\n    tls: implicit\n"
	          "    intercept_ca:\n      certificate: /etc/mailmoat/ca.pem\n"
	          "      key: /etc/mailmoat/ca.key\n"
	          "  - protocol: pop3\n    listen: 0.0.0.0:10995\n"
	          "    upstream: transparent\n    tls: implicit\n"
	          "    unscanned_tls: relay\n"
	          "  - protocol: pop3\n    listen: 0.0.0.0:10996\n"
	          "    upstream: transparent\n    tls: implicit\n",
	          &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_str_eq(l.cfg->listeners[0].intercept_ca_certificate,
	                 "/etc/mailmoat/ca.pem");
	ck_assert_str_eq(l.cfg->listeners[0].intercept_ca_key, "/etc/mailmoat/ca.key");
	ck_assert_str_eq(l.cfg->listeners[0].upstream_tls, "implicit");
	ck_assert_str_eq(l.cfg->listeners[0].unscanned_tls, "");
	ck_assert_str_eq(l.cfg->listeners[1].unscanned_tls, "relay");
	ck_assert_str_eq(l.cfg->listeners[1].intercept_ca_certificate, "");
	ck_assert_str_eq(l.cfg->listeners[2].unscanned_tls, "refuse");
	ck_assert_str_eq(l.cfg->listeners[2].upstream_tls, "implicit");
	loaded_free(&l);
}
END_TEST

START_TEST(too_long_string)
{
	char yaml[2048];
	struct loaded l;

	snprintf(yaml, sizeof yaml, L1 "notice:\n  admin_contact: %0*d\n", CFG_TEXT_MAX,
	         7);
	load_text(yaml, &l);
	ck_assert_int_eq(l.rc, -1);
	ASSERT_ERROR(&l, 4, "notice.admin_contact: too long (at most 511 bytes)");
	loaded_free(&l);

	/* one byte less fits, UTF-8 text included */
	snprintf(yaml, sizeof yaml, L1 "notice:\n  admin_contact: \"\u00e9%0*d\"\n",
	         CFG_TEXT_MAX - 3, 7);
	load_text(yaml, &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_uint_eq(strlen(l.cfg->admin_contact), CFG_TEXT_MAX - 1);
	ck_assert_int_eq(memcmp(l.cfg->admin_contact, "\xc3\xa9", 2), 0);
	loaded_free(&l);
}
END_TEST

START_TEST(missing_file)
{
	struct config *cfg = (struct config *)&cfg;
	char *buf = NULL, path[300];
	size_t len = 0;
	FILE *errs = open_memstream(&buf, &len);

	snprintf(path, sizeof path, "%s/does-not-exist.yaml", tmpdir);
	ck_assert_int_eq(config_load(path, &cfg, errs), -1);
	fclose(errs);
	ck_assert_ptr_null(cfg);
	ck_assert_ptr_nonnull(strstr(buf, path));
	ck_assert_ptr_nonnull(strstr(buf, "cannot open"));
	free(buf);
	ck_assert_int_eq(config_load(path, &cfg, NULL), -1);
}
END_TEST

START_TEST(names)
{
	ck_assert_str_eq(cfg_protocol_name(CFG_PROTO_POP3), "pop3");
	ck_assert_str_eq(cfg_protocol_name(CFG_PROTO_IMAP), "imap");
	ck_assert_str_eq(policy_action_name(POLICY_PASS), "pass");
	ck_assert_str_eq(policy_action_name(POLICY_QUARANTINE), "quarantine");
	ck_assert_str_eq(policy_action_name(POLICY_ABORT), "abort");
	ck_assert_str_eq(policy_action_name(POLICY_ACTION_COUNT), "?");
	ck_assert_str_eq(cfg_protocol_name(CFG_PROTO_COUNT), "?");
}
END_TEST

/* ---- config_parse_size ---- */

static const struct size_case {
	const char *text;
	int rc;
	uint64_t value;
} size_cases[] = {
    {"0", 0, 0},
    {"1", 0, 1},
    {"1K", 0, 1024},
    {"1k", 0, 1024},
    {"4M", 0, 4ULL << 20},
    {"1G", 0, 1ULL << 30},
    {"17179869183G", 0, 17179869183ULL << 30},
    {"17179869184G", -1, 0},
    {"18446744073709551615", 0, UINT64_MAX},
    {"18446744073709551616", -1, 0},
    {"", -1, 0},
    {"K", -1, 0},
    {"-1", -1, 0},
    {"+1", -1, 0},
    {" 1", -1, 0},
    {"1 ", -1, 0},
    {"1X", -1, 0},
    {"1KB", -1, 0},
    {"1.5M", -1, 0},
    {"0x10", -1, 0},
};

START_TEST(parse_size)
{
	const struct size_case *sc = &size_cases[_i];
	uint64_t v = 12345;

	ck_assert_msg(config_parse_size(sc->text, &v) == sc->rc, "'%s'", sc->text);
	if (sc->rc == 0)
		ck_assert_uint_eq(v, sc->value);
	else
		ck_assert_uint_eq(v, 12345); /* untouched on error */
}
END_TEST

/* ---- policy ---- */

START_TEST(decide)
{
	struct config cfg;
	struct scan_verdict v = {.result = SCAN_CLEAN};
	struct policy_set *ps = &cfg.policy;

	config_defaults(&cfg);
	ps->action[PK_MALICIOUS] = POLICY_ABORT;
	ps->action[PK_SCAN_ERROR] = POLICY_PASS;
	ck_assert_int_eq(policy_decide(ps, &v), POLICY_PASS);
	v.result = SCAN_INFECTED;
	ck_assert_int_eq(policy_decide(ps, &v), POLICY_ABORT);
	v.result = SCAN_ERROR;
	ck_assert_int_eq(policy_decide(ps, &v), POLICY_PASS);
	ps->action[PK_SCAN_ERROR] = POLICY_QUARANTINE;
	ck_assert_int_eq(policy_decide(ps, &v), POLICY_QUARANTINE);
	v.result = SCAN_RESULT_COUNT; /* out of range: treated as an error */
	ck_assert_int_eq(policy_decide(ps, &v), POLICY_QUARANTINE);
	/* strength: abort > quarantine > tag > pass */
	ck_assert_int_gt(policy_action_strength(POLICY_ABORT),
	                 policy_action_strength(POLICY_QUARANTINE));
	ck_assert_int_gt(policy_action_strength(POLICY_QUARANTINE),
	                 policy_action_strength(POLICY_TAG));
	ck_assert_int_gt(policy_action_strength(POLICY_TAG),
	                 policy_action_strength(POLICY_PASS));
}
END_TEST

/* ---- rules: scope precedence ---- */

static const char rules_yaml[] =
    "listeners:\n"
    "  - {protocol: pop3, listen: '0.0.0.0:110', upstream: 'pop.example.jp:110'}\n"
    "  - {protocol: imap, listen: '127.0.0.1:143', upstream: 'imap.example.jp:143'}\n"
    "policy:\n"
    "  on_malicious: quarantine\n"
    "  blocked_extensions: [exe, .SCR]\n"
    "  sender_deny: ['@Spam.example']\n"
    "timeouts: {keepalive: 7}\n"
    "rules:\n"
    "  - name: taro\n" /* rank 8 */
    "    match: {user: Taro@Example.JP}\n"
    "    on_blocked_attachment: pass\n"
    "    keepalive: 3\n"
    "  - name: example.jp\n" /* rank 4 */
    "    match: {domain: '@example.jp'}\n"
    "    on_blocked_attachment: tag\n"
    "    on_oversize: abort\n"
    "    blocked_extensions: [js]\n"
    "  - name: upstream\n" /* rank 2 */
    "    match: {upstream: POP.example.jp}\n"
    "    on_blocked_attachment: abort\n"
    "    on_encrypted_archive: pass\n"
    "    max_message_size: 10M\n"
    "    scanner: {max_scantime: 5}\n"
    "  - name: listener-imap\n" /* rank 1 */
    "    match: {listener: '127.0.0.1:143'}\n"
    "    scan_append: false\n"
    "    scan: false\n"
    "  - name: upstream-port\n" /* rank 2, another port */
    "    match: {upstream: 'pop.example.jp:995'}\n"
    "    on_malicious: pass\n"
    "  - name: later-upstream\n" /* rank 2, later in the file */
    "    match: {upstream: 'pop.example.jp:110'}\n"
    "    on_encrypted_archive: tag\n";

START_TEST(rules_precedence)
{
	struct loaded l;
	struct policy_set ps;
	const struct cfg_rule *ap[8];
	unsigned n;

	load_text(rules_yaml, &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_uint_eq(l.cfg->n_rules, 6);
	/* lists and match keys normalised */
	ck_assert_str_eq(l.cfg->policy.blocked_extensions.items[1], "scr");
	ck_assert_str_eq(l.cfg->policy.sender_deny.items[0], "@spam.example");
	ck_assert_str_eq(l.cfg->rules[0].m_user, "taro@example.jp");
	ck_assert_str_eq(l.cfg->rules[1].m_domain, "example.jp");
	ck_assert_str_eq(l.cfg->rules[2].m_upstream_host, "pop.example.jp");
	ck_assert_uint_eq(l.cfg->rules[4].m_upstream_port, 995);

	/* before the login: listener and upstream rules only */
	struct policy_scope sc = {"0.0.0.0", 110, "pop.example.jp:110", NULL};
	policy_resolve(l.cfg, &sc, &ps, ap, 8, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(ap[0]->name, "upstream");
	ck_assert_str_eq(ap[1]->name, "later-upstream");
	ck_assert_int_eq(ps.action[PK_BLOCKED_ATTACHMENT], POLICY_ABORT);
	ck_assert_int_eq(ps.action[PK_ENCRYPTED_ARCHIVE], POLICY_TAG); /* later wins */
	ck_assert_int_eq(ps.action[PK_MALICIOUS], POLICY_QUARANTINE);  /* :995 no match */
	ck_assert_uint_eq(ps.max_message_size, 10u << 20);
	ck_assert_uint_eq(ps.max_scantime_ms, 5000);
	ck_assert_uint_eq(ps.keepalive, 7);
	ck_assert_uint_eq(ps.blocked_extensions.n, 2);

	/* a user of the domain: domain beats upstream, the rest stays */
	sc.user = "hanako@EXAMPLE.jp";
	policy_resolve(l.cfg, &sc, &ps, ap, 8, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(ap[2]->name, "example.jp");
	ck_assert_int_eq(ps.action[PK_BLOCKED_ATTACHMENT], POLICY_TAG);
	ck_assert_int_eq(ps.action[PK_OVERSIZE], POLICY_ABORT);
	ck_assert_uint_eq(ps.blocked_extensions.n, 1);
	ck_assert_str_eq(ps.blocked_extensions.items[0], "js");
	ck_assert_uint_eq(ps.max_message_size, 10u << 20);

	/* the user rule beats the domain rule */
	sc.user = "taro@example.jp";
	policy_resolve(l.cfg, &sc, &ps, ap, 8, &n);
	ck_assert_uint_eq(n, 4);
	ck_assert_str_eq(ap[3]->name, "taro");
	ck_assert_int_eq(ps.action[PK_BLOCKED_ATTACHMENT], POLICY_PASS);
	ck_assert_int_eq(ps.action[PK_OVERSIZE], POLICY_ABORT); /* from the domain */
	ck_assert_uint_eq(ps.keepalive, 3);

	/* a login without a domain matches no domain rule */
	sc.user = "taro";
	policy_resolve(l.cfg, &sc, &ps, NULL, 0, &n);
	ck_assert_uint_eq(n, 2);
	/* the other listener: its own rule only */
	struct policy_scope si = {"127.0.0.1", 143, "imap.example.jp:143",
	                          "jiro@other.jp"};
	policy_resolve(l.cfg, &si, &ps, ap, 8, &n);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(ap[0]->name, "listener-imap");
	ck_assert_int_eq(ps.scan_append, 0);
	ck_assert_int_eq(ps.scan, 0);
	ck_assert_int_eq(ps.action[PK_BLOCKED_ATTACHMENT], POLICY_QUARANTINE);
	loaded_free(&l);
}
END_TEST

START_TEST(sender_lists)
{
	char *items[] = {"boss@example.jp", "@partner.example", "@Spam.Example"};
	struct cfg_list l = {items, 3};

	ck_assert(policy_sender_listed(&l, "boss@example.jp"));
	ck_assert(policy_sender_listed(&l, "BOSS@Example.JP"));
	ck_assert(!policy_sender_listed(&l, "boss2@example.jp"));
	ck_assert(!policy_sender_listed(&l, "xboss@example.jp"));
	ck_assert(policy_sender_listed(&l, "anyone@partner.example"));
	ck_assert(policy_sender_listed(&l, "a@mail.partner.example"));
	ck_assert(!policy_sender_listed(&l, "a@evilpartner.example"));
	ck_assert(!policy_sender_listed(&l, "a@partner.example.evil"));
	ck_assert(policy_sender_listed(&l, "x@spam.example"));
	ck_assert(!policy_sender_listed(&l, "partner.example"));
	ck_assert(!policy_sender_listed(&l, "@partner.example"));
	ck_assert(!policy_sender_listed(&l, NULL));
	ck_assert(!policy_sender_listed(&l, "a@"));
}
END_TEST

/* Defaults fail closed and the shipped blocked lists are in place. */
START_TEST(policy_defaults)
{
	struct loaded l;

	load_text(L1, &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	for (int k = 0; k < PK_COUNT; k++)
		ck_assert_msg(l.cfg->policy.action[k] == POLICY_QUARANTINE, "%s: %s",
		              policy_kind_name((enum policy_kind)k),
		              policy_action_name(l.cfg->policy.action[k]));
	ck_assert_uint_ge(l.cfg->policy.blocked_extensions.n, 20);
	ck_assert_uint_ge(l.cfg->policy.blocked_mime_types.n, 3);
	ck_assert_int_eq(l.cfg->policy.scan_append, 1);
	ck_assert_int_eq(l.cfg->policy.scan, 1);
	ck_assert_int_eq(l.cfg->policy.double_extensions, 1);
	ck_assert_str_eq(l.cfg->policy.notice_template, "ja+en");
	ck_assert_uint_eq(l.cfg->policy.max_message_size, 512u << 20);
	ck_assert_uint_eq(l.cfg->n_rules, 0);
	loaded_free(&l);
	/* an empty list is a choice, not "the default" */
	load_text(L1 "policy: {blocked_extensions: []}\n", &l);
	ck_assert_msg(l.rc == 0, "errors:\n%s", l.errs);
	ck_assert_uint_eq(l.cfg->policy.blocked_extensions.n, 0);
	loaded_free(&l);
}
END_TEST

START_TEST(tag_header)
{
	struct scan_verdict v = {.result = SCAN_INFECTED};
	char buf[512];
	size_t n;

	strcpy(v.signature, "Eicar-Test-Signature.UNOFFICIAL");
	n = policy_tag_header(&v, buf, sizeof buf);
	ck_assert_str_eq(buf, "X-Mailmoat-Virus: infected; "
	                      "signature=\"Eicar-Test-Signature.UNOFFICIAL\"\r\n");
	ck_assert_uint_eq(n, strlen(buf));

	strcpy(v.signature, "Bad\"Sig\\\r\nX-Evil: 1\x80");
	n = policy_tag_header(&v, buf, sizeof buf);
	ck_assert_str_eq(
	    buf, "X-Mailmoat-Virus: infected; signature=\"Bad?Sig???X-Evil: 1?\"\r\n");

	v.result = SCAN_ERROR;
	strcpy(v.error, "scan time limit");
	policy_tag_header(&v, buf, sizeof buf);
	ck_assert_str_eq(buf, "X-Mailmoat-Virus: error; reason=\"scan time limit\"\r\n");

	v.error[0] = '\0';
	policy_tag_header(&v, buf, sizeof buf);
	ck_assert_str_eq(buf, "X-Mailmoat-Virus: error; reason=\"unknown\"\r\n");

	v.result = SCAN_CLEAN;
	policy_tag_header(&v, buf, sizeof buf);
	ck_assert_str_eq(buf, "X-Mailmoat-Virus: clean\r\n");
}
END_TEST

START_TEST(tag_header_truncates)
{
	static const char head[] = "X-Mailmoat-Virus: infected; signature=\"";
	struct scan_verdict v = {.result = SCAN_INFECTED};
	char buf[64];
	size_t n;

	/* a signature filling the whole array, without a NUL */
	memset(v.signature, 'A', sizeof v.signature);
	n = policy_tag_header(&v, buf, sizeof buf);
	ck_assert_uint_eq(n, sizeof buf - 1);
	ck_assert_uint_eq(strlen(buf), n);
	ck_assert_int_eq(strncmp(buf, head, strlen(head)), 0);
	ck_assert_str_eq(buf + n - 3, "\"\r\n");

	/* exactly the fixed part plus one character */
	n = policy_tag_header(&v, buf, strlen(head) + 3 + 2);
	ck_assert_uint_eq(n, strlen(head) + 4);
	ck_assert_str_eq(buf + strlen(head), "A\"\r\n");

	/* not even the fixed part fits */
	n = policy_tag_header(&v, buf, 10);
	ck_assert_uint_eq(n, 0);
	ck_assert_str_eq(buf, "");
	ck_assert_uint_eq(policy_tag_header(&v, buf, 0), 0);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("load");
	TCase *te = tcase_create("errors");
	TCase *tp = tcase_create("policy");

	tcase_add_test(tc, full_example_loads);
	tcase_add_test(tc, non_default_values);
	tcase_add_test(tc, minimal_gets_defaults);
	tcase_add_test(tc, empty_sections_keep_defaults);
	tcase_add_test(tc, transparent_tls);
	tcase_add_test(tc, too_long_string);
	tcase_add_test(tc, missing_file);
	tcase_add_test(tc, names);
	tcase_add_loop_test(tc, parse_size, 0, sizeof size_cases / sizeof size_cases[0]);
	suite_add_tcase(s, tc);

	tcase_add_loop_test(te, error_case, 0, sizeof err_cases / sizeof err_cases[0]);
	tcase_add_test(te, all_errors_reported);
	tcase_add_test(te, errors_in_several_listeners);
	suite_add_tcase(s, te);

	tcase_add_test(tp, decide);
	tcase_add_test(tp, rules_precedence);
	tcase_add_test(tp, policy_defaults);
	tcase_add_test(tp, sender_lists);
	tcase_add_test(tp, tag_header);
	tcase_add_test(tp, tag_header_truncates);
	suite_add_tcase(s, tp);
	return s;
}

int main(void)
{
	SRunner *sr;
	const char *base = getenv("TMPDIR");
	int failed;

	snprintf(tmpdir, sizeof tmpdir, "%s/mm-test-config-XXXXXX",
	         base && *base && strlen(base) < 200 ? base : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	sr = srunner_create(config_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	rmdir(tmpdir);
	return failed == 0 ? 0 : 1;
}
