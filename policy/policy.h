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

#include "policy/config.h"
#include "scanners/scan.h"

/*
 * The action for one message: POLICY_PASS for a clean one, otherwise
 * on_malicious (infected) or on_scan_error (scan error, time-out, limit).
 */
enum policy_action policy_decide(const struct config *cfg, const struct scan_verdict *v);

/*
 * Builds the header line added in front of a message delivered under
 * "pass" despite a bad verdict, e.g.
 * "X-Mailmoat-Virus: infected; signature=\"Eicar-Test-Signature\"\r\n".
 * Writes at most cap bytes (NUL-terminated) into buf; returns the length
 * without the NUL. The signature is sanitised to printable ASCII.
 */
size_t policy_tag_header(const struct scan_verdict *v, char *buf, size_t cap);

#endif
