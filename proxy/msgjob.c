/*
 * msgjob.c - runs scan, policy and quarantine for one message on the libuv
 * thread pool, then hands the result back to its session on the loop.
 *
 * work_cb touches only the job, the frozen spool, the read-only engine and
 * the read-only configuration. after_work_cb runs on the loop thread: it
 * finds the session by id and calls its done callback, or frees the job when
 * the session has gone (the client left mid-scan: the result is dropped,
 * nothing leaks).
 */
#include "proxy/msgjob.h"

#include <ctype.h>
#include <gmime/gmime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "policy/qindex.h"
#include "scanners/attach.h"

#include "policy/notice.h"
#include "policy/policy.h"
#include "proxy/log.h"
#include "proxy/outbox.h"
#include "proxy/server.h"
#include "proxy/spool.h"
#include "proxy/stats.h"

struct msgjob *msgjob_new(struct server *srv, struct session_base *sb,
                          struct spool *spool, msgjob_done_cb done)
{
	struct msgjob *job = calloc(1, sizeof(*job));

	if (job == NULL)
		return NULL;
	job->srv = srv;
	job->session_id = sb->id;
	snprintf(job->session, sizeof(job->session), "%s", sb->sid);
	job->policy = sb->policy;
	job->cfg = config_ref(sb->cfg);
	job->done = done;
	spool_ref(spool);
	job->spool = spool;
	job->req.data = job;
	return job;
}

void msgjob_free(struct msgjob **jobp)
{
	struct msgjob *job = *jobp;

	*jobp = NULL;
	if (job == NULL)
		return;
	spool_unref(&job->spool);
	spool_unref(&job->subst);
	config_unref(&job->cfg);
	scan_engine_unref(&job->engine);
	free(job->notice);
	free(job);
}

static uint64_t msgjob_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/*
 * Stores the original and builds its substitute. The notice is built only
 * after quar_store() returned, i.e. after both files and the directory were
 * fsynced: invariant 1, no message is lost.
 */
static void msgjob_quarantine(struct msgjob *job, const struct config *cfg)
{
	struct msg_headers h;
	struct quar_meta m;
	struct notice_info ni;
	const char *what;
	char ierr[256];
	int r;

	memset(&h, 0, sizeof(h));
	if (notice_read_headers(job->spool, &h) < 0) {
		job->quar_failed = 1;
		snprintf(job->quar_err, sizeof(job->quar_err),
		         "cannot read message headers");
		return;
	}
	what = job->verdict.result == SCAN_ERROR ? job->verdict.error
	                                         : job->verdict.signature;
	memset(&m, 0, sizeof(m));
	m.protocol = job->protocol;
	m.user = job->user;
	m.upstream = job->upstream;
	m.signature = what;
	m.verdict = scan_result_name(job->verdict.result);
	m.from = h.from_utf8;
	m.subject = h.subject_utf8;
	m.message = job->message;
	m.session = job->session;
	r = quar_store(cfg->quarantine_dir, &m, job->spool, job->quar_id, job->quar_err,
	               sizeof(job->quar_err));
	if (r >= 0 && job->srv->qix != NULL &&
	    qindex_add(job->srv->qix, job->quar_id, ierr, sizeof(ierr)) < 0)
		log_msg(LOG_LVL_WARN, job->session, "quarantine index: %s (id=%s)", ierr,
		        job->quar_id);
	if (r < 0) {
		job->quar_failed = 1;
		notice_headers_free(&h);
		return;
	}
	job->quar_reused = r == 1;
	outbox_quarantined(job, &h); /* notice.admin_copy (not when reused) */
	memset(&ni, 0, sizeof(ni));
	ni.verdict = m.verdict;
	ni.signature = what;
	ni.reason = what;
	ni.quarantine_id = job->quar_id;
	ni.admin_contact = job->policy.admin_contact;
	ni.tmpl = job->policy.tmpl;
	ni.pad_to = job->pad_to;
	if (notice_build(&h, &ni, &job->notice, &job->notice_len) == 0) {
		/* what IMAP's BODYSTRUCTURE says of it, counted once, here on the pool */
		const char *end = memmem(job->notice, job->notice_len, "\r\n\r\n", 4);
		size_t body =
		    end != NULL ? (size_t)(end - job->notice) + 4 : job->notice_len;

		job->notice_text = job->notice_len - body;
		for (size_t i = body; i < job->notice_len; i++)
			job->notice_lines += job->notice[i] == '\n';
	} else {
		job->quar_failed = 1;
		snprintf(job->quar_err, sizeof(job->quar_err),
		         "stored as %s but the notice could not be built", job->quar_id);
	}
	notice_headers_free(&h);
}

/* The first address of a From header value (lower case), "" when none. */
static void msgjob_sender(const char *from, char *addr, size_t cap)
{
	InternetAddressList *l;

	addr[0] = '\0';
	if (from == NULL)
		return;
	l = internet_address_list_parse(NULL, from);
	if (l == NULL)
		return;
	for (int i = 0; i < internet_address_list_length(l); i++) {
		InternetAddress *a = internet_address_list_get_address(l, i);

		if (INTERNET_ADDRESS_IS_MAILBOX(a)) {
			const char *s = internet_address_mailbox_get_addr(
			    (InternetAddressMailbox *)a);

			snprintf(addr, cap, "%s", s != NULL ? s : "");
			for (char *p = addr; *p; p++)
				*p = (char)tolower((unsigned char)*p);
			break;
		}
	}
	g_object_unref(l);
}

/* A verdict of the rules stage: result, and the reason in both text fields. */
static void msgjob_rule_verdict(struct scan_verdict *v, enum scan_result r,
                                const char *fmt, ...)
{
	va_list ap;

	memset(v, 0, sizeof(*v));
	v->result = r;
	va_start(ap, fmt);
	vsnprintf(v->signature, sizeof(v->signature), fmt, ap);
	va_end(ap);
	snprintf(v->error, sizeof(v->error), "%s", v->signature);
}

/* The policy's attachment rules in the scanner's terms. */
static void msgjob_attach_rules(const struct policy_set *ps, struct attach_rules *r)
{
	attach_rules_default(r);
	r->extensions = (const char *const *)ps->blocked_extensions.items;
	r->n_extensions = ps->blocked_extensions.n;
	r->mime_types = (const char *const *)ps->blocked_mime_types.items;
	r->n_mime_types = ps->blocked_mime_types.n;
	r->double_extensions = ps->double_extensions;
}

/*
 * A rule's scanner limits stricter than the configuration's global ones
 * (which the engine was built with): they apply to this scan only.
 */
static void msgjob_overrides(const struct msgjob *job, struct scan_overrides *ov)
{
	const struct policy_set *ps = &job->policy;
	const struct config *cfg = job->cfg;

	memset(ov, 0, sizeof(*ov));
	if (ps->max_filesize < cfg->clamav_max_filesize)
		ov->max_filesize = ps->max_filesize;
	if (ps->max_scansize < cfg->clamav_max_scansize)
		ov->max_scansize = ps->max_scansize;
	if (ps->max_recursion < cfg->clamav_max_recursion)
		ov->max_recursion = ps->max_recursion;
	if (ps->max_files < cfg->clamav_max_files)
		ov->max_files = ps->max_files;
	if (ps->max_scantime_ms < cfg->clamav_max_scantime_ms)
		ov->max_scantime_ms = ps->max_scantime_ms;
}

/* NULL when nothing is stricter: the scan runs as before. */
static const struct scan_overrides *ov_ptr(const struct scan_overrides *ov)
{
	return ov->max_filesize || ov->max_scansize || ov->max_recursion ||
	               ov->max_files || ov->max_scantime_ms
	           ? ov
	           : NULL;
}

/*
 * The rules stage (size, sender, attachments), then libclamav; of all the
 * findings the one whose action is strongest becomes the verdict (a virus
 * first among equals). A sender on sender_allow is exempt from the
 * attachment and encrypted-archive rules, never from virus scanning.
 */
static void msgjob_scan(struct msgjob *job)
{
	const struct policy_set *ps = &job->policy;
	uint64_t size = spool_size(job->spool);
	const void *mem = spool_mem(job->spool);
	struct scan_verdict rule, clam;
	struct scan_overrides ov;
	struct msg_headers h;
	char sender[320];
	int allowed = 0;

	memset(&rule, 0, sizeof(rule));
	if (size > ps->max_message_size) {
		msgjob_rule_verdict(&job->verdict, SCAN_OVERSIZE,
		                    "message of %llu octets over max_message_size %llu",
		                    (unsigned long long)size,
		                    (unsigned long long)ps->max_message_size);
		return;
	}
	memset(&h, 0, sizeof(h));
	sender[0] = '\0';
	/* the header is parsed only when a sender list needs the From address */
	if ((ps->sender_deny.n > 0 || ps->sender_allow.n > 0) &&
	    notice_read_headers(job->spool, &h) == 0)
		msgjob_sender(h.from, sender, sizeof(sender));
	notice_headers_free(&h);
	if (sender[0] != '\0' && policy_sender_listed(&ps->sender_deny, sender))
		msgjob_rule_verdict(&rule, SCAN_DENIED, "sender %s on sender_deny",
		                    sender);
	else if (sender[0] != '\0' && policy_sender_listed(&ps->sender_allow, sender))
		allowed = 1;
	if (!ps->scan) {
		/* scan: false - the size limit and the sender lists only */
		job->verdict = rule;
		return;
	}
	if (rule.result == SCAN_CLEAN && !allowed) {
		struct attach_rules ar;
		struct attach_finding f;
		enum attach_res a;

		msgjob_attach_rules(ps, &ar);
		a = mem != NULL ? attach_check_buffer(mem, (size_t)size, &ar, &f)
		                : attach_check_fd(spool_fd(job->spool), &ar, &f);
		if (a == ATTACH_BLOCKED)
			msgjob_rule_verdict(&rule, SCAN_BLOCKED, "%s (part %s, %s)",
			                    f.filename[0] ? f.filename : f.mime_type,
			                    f.part, f.reason);
		else if (a == ATTACH_ERROR)
			msgjob_rule_verdict(&rule, SCAN_ERROR, "attachment rules: %s",
			                    f.reason);
	}
	msgjob_overrides(job, &ov);
	if (mem != NULL)
		scan_buffer_ex(job->engine, mem, (size_t)size, ov_ptr(&ov), &clam);
	else
		scan_fd_ex(job->engine, spool_fd(job->spool), ov_ptr(&ov), &clam);
	if (allowed && clam.result == SCAN_ENCRYPTED)
		clam.result = SCAN_CLEAN; /* a trusted sender's encrypted archive */
	rule.scan_ms = clam.scan_ms;
	rule.db_version = clam.db_version;
	if (rule.result != SCAN_CLEAN &&
	    (clam.result == SCAN_CLEAN ||
	     policy_action_strength(policy_decide(ps, &rule)) >
	         policy_action_strength(policy_decide(ps, &clam))))
		job->verdict = rule;
	else
		job->verdict = clam;
}

/*
 * tag: a copy of the message with "X-Mailmoat-Verdict: KIND; detail=..."
 * first and the Subject prefixed (a Subject is added when there is none),
 * the body untouched. Built into a spool on the pool; on failure the
 * message is held back like a failed quarantine (never delivered untagged).
 */
static void msgjob_tag(struct msgjob *job)
{
	const struct config *cfg = job->cfg;
	enum { HDR_MAX = 256 * 1024 };
	char *hdr = malloc(HDR_MAX), line[1100];
	ssize_t n = spool_pread(job->spool, hdr != NULL ? hdr : line,
	                        hdr != NULL ? HDR_MAX : 0, 0);
	size_t end = 0, body, i;
	int subject = 0, ok = hdr != NULL && n >= 0;
	struct spool *sp = NULL;
	uint64_t off, size = spool_size(job->spool);
	char detail[200];

	if (ok) {
		/* the header ends at the first empty line (CRLF or LF) */
		for (end = 0; end < (size_t)n; end++)
			if (hdr[end] == '\n' && (end + 1 < (size_t)n) &&
			    (hdr[end + 1] == '\n' ||
			     (hdr[end + 1] == '\r' && end + 2 < (size_t)n &&
			      hdr[end + 2] == '\n')))
				break;
		ok = end < (size_t)n;
	}
	if (ok) {
		body = end + 1; /* header lines end at end (inclusive) */
		policy_tag_value(&job->verdict, detail, sizeof(detail));
		sp = spool_new((size_t)cfg->spool_memory_limit, cfg->spool_dir, 0);
		snprintf(line, sizeof(line), "X-Mailmoat-Verdict: %s; detail=\"%s\"\r\n",
		         policy_kind_name(policy_kind_of(&job->verdict)), detail);
		ok = sp != NULL && spool_append(sp, line, strlen(line)) == 0;
		for (i = 0; ok && i < body;) {
			size_t e = i;

			while (e < body && hdr[e] != '\n')
				e++;
			e = e < body ? e + 1 : body;
			if (!subject && e - i >= 8 &&
			    strncasecmp(hdr + i, "Subject:", 8) == 0) {
				size_t sk = i + 8;

				while (sk < e && (hdr[sk] == ' ' || hdr[sk] == '\t'))
					sk++;
				subject = 1;
				snprintf(line, sizeof(line), "Subject: %s ",
				         job->policy.tag_prefix);
				ok = spool_append(sp, line, strlen(line)) == 0 &&
				     spool_append(sp, hdr + sk, e - sk) == 0;
			} else {
				ok = spool_append(sp, hdr + i, e - i) == 0;
			}
			i = e;
		}
		if (ok && !subject) {
			snprintf(line, sizeof(line), "Subject: %s\r\n",
			         job->policy.tag_prefix);
			ok = spool_append(sp, line, strlen(line)) == 0;
		}
		/* the rest, from the spool, in pieces */
		for (off = body; ok && off < size;) {
			ssize_t r = spool_pread(job->spool, hdr, HDR_MAX, off);

			if (r <= 0) {
				ok = 0;
				break;
			}
			ok = spool_append(sp, hdr, (size_t)r) == 0;
			off += (uint64_t)r;
		}
		ok = ok && spool_freeze(sp) == 0;
	}
	free(hdr);
	if (!ok) {
		spool_unref(&sp);
		job->quar_failed = 1;
		snprintf(job->quar_err, sizeof(job->quar_err),
		         "the tagged copy could not be made");
		return;
	}
	job->subst = sp;
}

/*
 * An administrator released this very message before (`mailmoat
 * quarantine release`: its SHA-256 is in the index): it is delivered, not
 * quarantined again. Any doubt (no index, a read error) quarantines.
 */
static int msgjob_released(struct msgjob *job)
{
	char hex[65];

	if (job->srv->qix == NULL || quar_sha256(job->spool, hex) < 0 ||
	    qindex_released(job->srv->qix, hex) != 1)
		return 0;
	log_msg(LOG_LVL_INFO, job->session,
	        "released before: delivered, not quarantined again sha256=%s verdict=%s",
	        hex, scan_result_name(job->verdict.result));
	return 1;
}

static void msgjob_work(uv_work_t *req)
{
	struct msgjob *job = req->data;
	const struct config *cfg = job->cfg;
	uint64_t t0 = msgjob_now_ms();

	if (!job->skip_scan)
		msgjob_scan(job);
	job->action = policy_decide(&job->policy, &job->verdict);
	if (job->action == POLICY_QUARANTINE && msgjob_released(job)) {
		job->action = POLICY_PASS;
		job->released = 1;
	}
	if (job->action == POLICY_QUARANTINE)
		msgjob_quarantine(job, cfg);
	else if (job->action == POLICY_TAG)
		msgjob_tag(job);
	/* done with the engine: when this was the last hold on a replaced one,
	   freeing it (a second or more for a full database) happens here on
	   the pool, never on the loop */
	scan_engine_unref(&job->engine);
	job->total_ms = msgjob_now_ms() - t0;
}

static void msgjob_after(uv_work_t *req, int status)
{
	struct msgjob *job = req->data;
	struct session_base *sb = server_session_find(job->srv, job->session_id);

	stats_msgjob(job, status);
	if (sb == NULL || status == UV_ECANCELED) {
		/* The session has gone: the result is dropped with the job. */
		log_msg(LOG_LVL_DEBUG, NULL, "scan result dropped session=%llu",
		        (unsigned long long)job->session_id);
		msgjob_free(&job);
		return;
	}
	job->done(sb, job);
}

int msgjob_submit(struct msgjob *job)
{
	job->engine = job->srv->engine;
	scan_engine_ref(job->engine);
	return uv_queue_work(job->srv->loop, &job->req, msgjob_work, msgjob_after);
}
