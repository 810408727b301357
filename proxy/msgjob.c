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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/notice.h"
#include "policy/policy.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/spool.h"

struct msgjob *msgjob_new(struct server *srv, struct session_base *sb,
                          struct spool *spool, msgjob_done_cb done)
{
	struct msgjob *job = calloc(1, sizeof(*job));

	if (job == NULL)
		return NULL;
	job->srv = srv;
	job->session_id = sb->id;
	snprintf(job->session, sizeof(job->session), "%s", sb->sid);
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
	int r;

	memset(&h, 0, sizeof(h));
	if (notice_read_headers(job->spool, &h) < 0) {
		job->quar_failed = 1;
		snprintf(job->quar_err, sizeof(job->quar_err),
		         "cannot read message headers");
		return;
	}
	what = job->verdict.result == SCAN_INFECTED ? job->verdict.signature
	                                            : job->verdict.error;
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
	if (r < 0) {
		job->quar_failed = 1;
		notice_headers_free(&h);
		return;
	}
	job->quar_reused = r == 1;
	memset(&ni, 0, sizeof(ni));
	ni.verdict = m.verdict;
	ni.signature = what;
	ni.quarantine_id = job->quar_id;
	ni.admin_contact = cfg->admin_contact;
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

static void msgjob_work(uv_work_t *req)
{
	struct msgjob *job = req->data;
	const struct config *cfg = job->srv->cfg;
	uint64_t t0 = msgjob_now_ms();

	if (!job->skip_scan) {
		const void *mem = spool_mem(job->spool);

		if (mem != NULL)
			scan_buffer(job->engine, mem, (size_t)spool_size(job->spool),
			            &job->verdict);
		else
			scan_fd(job->engine, spool_fd(job->spool), &job->verdict);
	}
	job->action = policy_decide(cfg, &job->verdict);
	if (job->action == POLICY_QUARANTINE)
		msgjob_quarantine(job, cfg);
	job->total_ms = msgjob_now_ms() - t0;
}

static void msgjob_after(uv_work_t *req, int status)
{
	struct msgjob *job = req->data;
	struct session_base *sb = server_session_find(job->srv, job->session_id);

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
