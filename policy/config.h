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

/* What happens to a message: see policy.h. Names: "pass", "quarantine", "abort". */
enum policy_action { POLICY_PASS, POLICY_QUARANTINE, POLICY_ABORT, POLICY_ACTION_COUNT };

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

	/* policy */
	enum policy_action on_malicious;  /* default quarantine */
	enum policy_action on_scan_error; /* default quarantine */

	/* notice */
	char admin_contact[CFG_TEXT_MAX]; /* admin_contact (default "your mail
	                                     administrator") */

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

	/* limits */
	unsigned max_sessions; /* limits.max_sessions (default 500) */
	unsigned
	    readahead; /* limits.readahead: captured messages held at once (default 2) */

	/* process */
	char run_as[CFG_HOST_MAX]; /* user: drop privileges to it after binding */
	char log_level[16];        /* log_level: error|warn|info|debug (default info) */
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
 * Parses a size: a number with an optional K, M or G suffix (powers of
 * 1024). Returns 0 or -1 on syntax error or overflow.
 */
int config_parse_size(const char *s, uint64_t *size_r);

#endif
