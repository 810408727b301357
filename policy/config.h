/*
 * config.h - the YAML configuration (a contract: admins' files and scripts
 * rely on the key names).
 *
 * config_load() reads the file with libyaml, checks every key and value,
 * and reports each problem as "FILE:LINE: reason". Unknown keys are errors.
 * Everything not given keeps the embedded default (config_defaults).
 */
#ifndef MAILMOAT_CONFIG_H
#define MAILMOAT_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define CFG_PATH_MAX 1024
#define CFG_HOST_MAX 256
#define CFG_TEXT_MAX 512

enum cfg_protocol { CFG_PROTO_POP3, CFG_PROTO_IMAP, CFG_PROTO_COUNT };

/*
 * What happens to a message: see policy.h. Names: "pass", "quarantine",
 * "abort", "tag". Ordered by strength where it matters (policy.c).
 */
enum policy_action {
	POLICY_PASS,
	POLICY_QUARANTINE,
	POLICY_ABORT,
	POLICY_TAG,
	POLICY_ACTION_COUNT
};

/*
 * The conditions a policy gives an action to (policy.<on_...> and rules):
 * malicious, scan_error, oversize, encrypted_archive, blocked_attachment,
 * denied_sender.
 */
enum policy_kind {
	PK_MALICIOUS,
	PK_SCAN_ERROR,
	PK_OVERSIZE,
	PK_ENCRYPTED_ARCHIVE,
	PK_BLOCKED_ATTACHMENT,
	PK_DENIED_SENDER,
	PK_COUNT
};

const char *policy_kind_name(enum policy_kind k);

/* A list of short strings from a YAML sequence (owned by the config). */
struct notice_template;

struct cfg_list {
	char **items;
	unsigned n;
};

/*
 * Everything a rule may set: the policy for one session. The global
 * values (policy:, scanner.clamav limits, spool.max_message_size,
 * timeouts.keepalive) fill config.policy; each matching rule overrides the
 * fields it sets (set: PS_* bits). Lists are borrowed from the config.
 */
enum policy_set_bit {
	PS_ACTION0 = 1u << 0, /* PS_ACTION0 << kind: on_<kind> */
	PS_MAX_MESSAGE_SIZE = 1u << 8,
	PS_MAX_FILESIZE = 1u << 9,
	PS_MAX_SCANSIZE = 1u << 10,
	PS_MAX_RECURSION = 1u << 11,
	PS_MAX_FILES = 1u << 12,
	PS_MAX_SCANTIME = 1u << 13,
	PS_BLOCKED_EXT = 1u << 14,
	PS_BLOCKED_MIME = 1u << 15,
	PS_DOUBLE_EXT = 1u << 16,
	PS_SENDER_ALLOW = 1u << 17,
	PS_SENDER_DENY = 1u << 18,
	PS_SCAN_APPEND = 1u << 19,
	PS_KEEPALIVE = 1u << 20,
	PS_NOTICE_TEMPLATE = 1u << 21,
	PS_TAG_PREFIX = 1u << 22,
	PS_ADMIN_CONTACT = 1u << 23,
	PS_SCAN = 1u << 24,
};

struct policy_set {
	enum policy_action action[PK_COUNT];
	uint64_t max_message_size;
	uint64_t max_filesize, max_scansize;
	unsigned max_recursion, max_files, max_scantime_ms;
	struct cfg_list blocked_extensions; /* lower case, without the dot */
	struct cfg_list blocked_mime_types; /* lower case type/subtype */
	int double_extensions;              /* report invoice.pdf.exe as such */
	struct cfg_list sender_allow;       /* addresses or @domains, lower case */
	struct cfg_list sender_deny;
	int scan_append; /* IMAP APPEND scanned before it reaches the server */
	int scan; /* downloaded messages content-checked (attachment rules, libclamav) */
	unsigned keepalive;
	char notice_template[CFG_PATH_MAX]; /* a shipped name (ja, en, ja+en) or a path */
	struct notice_template *tmpl;       /* notice_template loaded (the config's) */
	char tag_prefix[64];                /* Subject prefix of tag */
	char admin_contact[CFG_TEXT_MAX];
	uint32_t set; /* rules: which fields this rule sets */
};

/* A rule: policy fields for the sessions its match selects. */
struct cfg_rule {
	char name[64];                      /* name: for logs and --check-config */
	char m_listener_host[CFG_HOST_MAX]; /* match.listener: the listen address */
	uint16_t m_listener_port;
	char m_upstream_host[CFG_HOST_MAX]; /* match.upstream: HOST or HOST:PORT */
	uint16_t m_upstream_port;           /* 0: any port */
	char m_user[CFG_HOST_MAX];          /* match.user: the login name */
	char m_domain[CFG_HOST_MAX];        /* match.domain: the login's domain */
	struct policy_set ps;
	int line;
};

const char *cfg_protocol_name(enum cfg_protocol p);
const char *policy_action_name(enum policy_action a);

struct cfg_listener {
	enum cfg_protocol protocol;     /* protocol: pop3 | imap */
	char listen_host[CFG_HOST_MAX]; /* listen: HOST:PORT ([v6]:PORT) */
	uint16_t listen_port;
	char upstream_host[CFG_HOST_MAX]; /* upstream: HOST:PORT, or "transparent" (port
	                                     0) */
	uint16_t upstream_port;
	/* TLS (issue 4): on the client side and towards the upstream */
	char tls[16];                     /* tls: none | implicit | starttls | required */
	char certificate[CFG_PATH_MAX];   /* certificate: PEM chain (tls != none) */
	char key[CFG_PATH_MAX];           /* key: PEM private key */
	char upstream_tls[16];            /* upstream_tls: none | implicit | starttls */
	char upstream_ca[CFG_PATH_MAX];   /* upstream_ca: CA file ("" = system store) */
	char upstream_name[CFG_HOST_MAX]; /* upstream_name: verified, sent as SNI ("" =
	                                     host) */
	char upstream_pin[128]; /* upstream_pin: sha256//BASE64 of the SPKI ("" = none) */
	char upstream_verify[8]; /* upstream_verify: true | false (default true) */
	/* transparent TLS listeners: intercept with a local CA, or not */
	char intercept_ca_certificate[CFG_PATH_MAX]; /* intercept_ca.certificate */
	char intercept_ca_key[CFG_PATH_MAX];         /* intercept_ca.key */
	char unscanned_tls[8]; /* unscanned_tls: refuse | relay (default refuse),
	                          without intercept_ca */
	int line;              /* where it was defined, for messages */
};

struct config {
	struct cfg_listener *listeners;
	unsigned n_listeners;

	/* scanner.clamav */
	char clamav_database[CFG_PATH_MAX]; /* database: directory (default
	                                       /var/lib/clamav) */
	uint64_t clamav_max_filesize;       /* max_filesize (default 100M) */
	uint64_t clamav_max_scansize;       /* max_scansize (default 400M) */
	unsigned clamav_max_recursion;      /* max_recursion (default 17) */
	unsigned clamav_max_files;          /* max_files (default 10000) */
	unsigned
	    clamav_max_scantime_ms; /* max_scantime, seconds in YAML (default 120 s) */
	uint64_t clamav_mime_split_above; /* mime_split_above: larger messages are scanned
	                                     part by part (default 8M, 0 = never) */

	/* quarantine */
	char
	    quarantine_dir[CFG_PATH_MAX]; /* dir (default /var/lib/mailmoat/quarantine) */
	unsigned quarantine_retention_days;  /* retention_days: entries older are purged
	                                        automatically (default 30, 0 = keep) */
	char quarantine_index[CFG_PATH_MAX]; /* index: the listing index ("" =
	                                        DIR/.index.sqlite) */
	/* quarantine.release: how `mailmoat quarantine release ID` delivers */
	char release_method[8];                   /* method: imap | smtp (default imap) */
	char release_imap_url[CFG_PATH_MAX];      /* imap_url: imaps://host[:port] */
	char release_imap_user[CFG_HOST_MAX];     /* imap_user: login, %u = the entry's
	                                             user ("%u*admin": a Dovecot master
	                                             user) */
	char release_password_file[CFG_PATH_MAX]; /* password_file: IMAP/SMTP
	                                             password, first line */
	char release_mailbox[CFG_HOST_MAX];       /* mailbox (default INBOX) */
	char release_smtp_url[CFG_PATH_MAX];      /* smtp_url: smtp[s]://relay[:port] */
	char release_smtp_from[CFG_HOST_MAX];     /* smtp_from: envelope sender */
	char release_smtp_domain[CFG_HOST_MAX];   /* smtp_domain: for users without '@' */
	char release_ca[CFG_PATH_MAX];            /* ca: CA file ("" = system store) */

	/* control: the local socket of `mailmoat status` and the admin commands */
	char control_socket[CFG_PATH_MAX]; /* socket (default
	                                      /run/mailmoat/control.sock, "" = none) */
	/* metrics: Prometheus/OpenMetrics over HTTP */
	char metrics_listen_host[CFG_HOST_MAX]; /* listen: HOST:PORT ("" = off) */
	uint16_t metrics_listen_port;

	/* policy */
	enum policy_action on_malicious;  /* default quarantine */
	enum policy_action on_scan_error; /* default quarantine */

	/* notice */
	char admin_contact[CFG_TEXT_MAX]; /* admin_contact (default "your mail
	                                     administrator") */
	/* notice.admin_copy: a report of each detection to an administrator */
	char copy_to[CFG_HOST_MAX];              /* to: address ("" = off) */
	char copy_smtp_url[CFG_PATH_MAX];        /* smtp_url: smtp[s]://relay[:port] */
	char copy_from[CFG_HOST_MAX];            /* from: envelope and From: address */
	char copy_user[CFG_HOST_MAX];            /* user: SMTP AUTH login ("" = none) */
	char copy_password_file[CFG_PATH_MAX];   /* password_file: its first line */
	char copy_ca[CFG_PATH_MAX];              /* ca: CA file ("" = system store) */
	char notice_templates_dir[CFG_PATH_MAX]; /* templates_dir: NAME.txt files
	                                            overriding the built-in ja, en,
	                                            ja+en ("" = built-ins only) */

	/* spool */
	uint64_t
	    spool_memory_limit; /* memory_limit (default 4M; 0..1G, 0 = always a file) */
	uint64_t spool_max_message_size; /* max_message_size (default 512M) */
	char spool_dir[CFG_PATH_MAX];    /* dir (default $TMPDIR or /tmp) */

	/* timeouts, seconds */
	unsigned timeout_client_idle;    /* client_idle (default 600) */
	unsigned timeout_upstream_idle;  /* upstream_idle (default 600) */
	unsigned timeout_connect;        /* connect (default 15) */
	unsigned timeout_shutdown_grace; /* shutdown_grace (default 10) */
	unsigned timeout_keepalive;      /* keepalive: progress notes to a waiting client
	                                    (default 10; 0 = none) */

	/*
	 * The effective global policy (policy: plus the global limits above),
	 * and the rules in file order.
	 */
	struct policy_set policy;
	struct cfg_rule *rules; /* rules: */
	unsigned n_rules;

	/* limits */
	unsigned max_sessions; /* limits.max_sessions (default 500) */
	unsigned
	    readahead; /* limits.readahead: captured messages held at once (default 2) */
	unsigned prefetch; /* limits.prefetch: POP3 messages fetched and scanned before
	                     the client asks (default 2, 0 = off) */

	/* process */
	char run_as[CFG_HOST_MAX]; /* user: drop privileges to it after binding */
	char log_level[16];        /* log_level: error|warn|info|debug (default info) */
	char log_target[8];        /* log_target: auto|stderr|syslog (default auto) */

	/* references (config_ref): the server, each session, each scan job */
	int refs;
};

/*
 * Ranges config_load enforces: clamav sizes 1..4G-1 (libclamav's cap),
 * max_recursion 1..1000, max_files >= 1, timeouts and max_scantime
 * 1..86400 s (shutdown_grace and keepalive may be 0), max_sessions
 * 1..1000000, readahead 1..1000, max_message_size >= 1. A listen host is a
 * numeric address stored without brackets ("::1"); run_as "" means stay.
 */

/* Fills cfg with the embedded defaults and no listeners. */
void config_defaults(struct config *cfg);

/*
 * Loads and validates path. On success returns 0 and a new config in
 * *cfg_r (the caller owns it: config_free). Otherwise writes one
 * "PATH:LINE: reason" line per problem to errs and returns -1.
 */
int config_load(const char *path, struct config **cfg_r, FILE *errs);

/* Frees a config and NULLs the caller's pointer. */
void config_free(struct config **cfgp);

/*
 * Reference counting for a loaded config (config_load gives one): the
 * server holds one, and so does every session and scan job made under it,
 * so a reload swaps in a new config while they finish with theirs. Loop
 * thread only. config_unref frees on the last one and NULLs *cfgp.
 */
const struct config *config_ref(const struct config *cfg);
void config_unref(const struct config **cfgp);

/*
 * Parses a size: a number with an optional K, M or G suffix (powers of
 * 1024). Returns 0 or -1 on syntax error or overflow.
 */
int config_parse_size(const char *s, uint64_t *size_r);

#endif
