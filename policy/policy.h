/*
 * policy.h - a verdict becomes an action.
 *
 * Policy knows neither sessions nor ClamAV internals: it takes the
 * configuration and a scan verdict and says what the session must do with
 * that one message. The session then carries the action out.
 */
#ifndef MAILMOAT_POLICY_H
#define MAILMOAT_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "policy/config.h"
#include "scanners/scan.h"

/*
 * Where a session stands, for choosing its rules: the listener it came
 * in on, the upstream it talks to ("host:port", "[v6]:port"; for
 * transparent listeners the original destination), and the login once
 * known (NULL or "" before).
 */
struct policy_scope {
	const char *listen_host;
	uint16_t listen_port;
	const char *upstream;
	const char *user;
};

/*
 * Rank of a rule: the sum of user 8, domain 4, upstream 2, listener 1 for
 * each match key it has. A higher rank is more specific.
 */
unsigned policy_rule_rank(const struct cfg_rule *r);

/*
 * True when every match key of r holds for sc: listener = the listen
 * address and port; upstream = the host (no case) and, when the rule
 * gives one, the port; user = the login (no case); domain = the part of
 * the login after its last '@' (no case). A rule with user or domain
 * never matches before the login is known.
 */
int policy_rule_matches(const struct cfg_rule *r, const struct policy_scope *sc);

/*
 * The effective policy for sc: cfg->policy, then every matching rule from
 * the least specific to the most specific (equal ranks in file order), each
 * overriding only the fields it sets; so the most specific rule wins.
 * *out borrows cfg's lists: it lives as long as cfg. The rules applied, in
 * order, go to applied[0..cap) with their number in *n_applied_r (both may
 * be NULL/0).
 */
void policy_resolve(const struct config *cfg, const struct policy_scope *sc,
                    struct policy_set *out, const struct cfg_rule **applied, unsigned cap,
                    unsigned *n_applied_r);

/* The kind a verdict stands for (clean has none: PK_COUNT). */
enum policy_kind policy_kind_of(const struct scan_verdict *v);

/*
 * The action for one message: POLICY_PASS for a clean one, otherwise the
 * policy's action for the verdict's kind (a result outside the known
 * kinds: on_scan_error, failing closed).
 */
enum policy_action policy_decide(const struct policy_set *ps,
                                 const struct scan_verdict *v);

/*
 * True when addr (an addr-spec, any case) is on list l: an entry
 * "local@domain" matches that address, an entry "@domain" every address
 * of that domain and of its subdomains.
 */
int policy_sender_listed(const struct cfg_list *l, const char *addr);

/* abort 3 > quarantine 2 > tag 1 > pass 0: the stronger of two findings wins. */
int policy_action_strength(enum policy_action a);

/*
 * Writes the effective policy for sc in YAML form (what --check-config
 * --user prints), naming the rules that shaped it.
 */
void policy_print(FILE *out, const struct config *cfg, const struct policy_scope *sc);

/*
 * Builds the header line added in front of a message delivered under
 * "pass" despite a bad verdict, e.g.
 * "X-Mailmoat-Virus: infected; signature=\"Eicar-Test-Signature\"\r\n".
 * Writes at most cap bytes (NUL-terminated) into buf; returns the length
 * without the NUL. The signature is sanitised to printable ASCII.
 */
size_t policy_tag_header(const struct scan_verdict *v, char *buf, size_t cap);

/*
 * The verdict's detail (signature, reason or error) sanitised for a quoted
 * header parameter, cut to cap - 1 octets.
 */
void policy_tag_value(const struct scan_verdict *v, char *buf, size_t cap);

#endif
