/*
 * msgjob.h - one message's trip through the thread pool:
 * scan -> policy -> (quarantine + notice).
 *
 * A session fills a job, submits it and forgets it until `done` runs on the
 * loop thread. The job holds references on the spool and the engine and the
 * session's id (never a pointer). msgjob.c looks the session up after the
 * work; when the session has gone it frees the job and that is all.
 */
#ifndef MAILMOAT_MSGJOB_H
#define MAILMOAT_MSGJOB_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "policy/config.h"
#include "policy/quarantine.h"
#include "scanners/scan.h"

struct msgjob;
struct server;
struct session_base;
struct spool;

typedef void (*msgjob_done_cb)(struct session_base *sb, struct msgjob *job);

struct msgjob {
	uv_work_t req;
	struct server *srv;
	uint64_t session_id;
	uint64_t tag;  /* the session's own cookie, e.g. its slot number */
	uint64_t tag2; /* a second cookie of the session's */
	msgjob_done_cb done;

	/* inputs */
	struct spool *spool; /* frozen; a reference held */
	int skip_scan;       /* the verdict below is already known (size limit...) */
	uint64_t pad_to;     /* pad the notice to this many octets */
	char protocol[8];
	char user[128];
	char upstream[300];
	char message[160];        /* "msg=3 uidl=..." for quarantine metadata */
	char session[12];         /* the session's log id, for quarantine metadata */
	struct policy_set policy; /* the session's policy when the job was made */
	const struct config *cfg; /* the session's configuration (a reference) */

	/* outputs */
	struct scan_verdict verdict;
	enum policy_action action;
	char quar_id[QUAR_ID_MAX];
	struct spool *subst; /* tag: the tagged copy served in the original's place */
	char *notice;        /* the substitute message when quarantined (malloc) */
	size_t notice_len;
	uint64_t notice_text;  /* octets of the notice's text (after the blank line) */
	uint64_t notice_lines; /* lines of that text (IMAP BODYSTRUCTURE) */
	int quar_reused;       /* the same message was already in the quarantine */
	int released;    /* an administrator released this message: delivered as is */
	int quar_failed; /* quarantine was due but the original could not be stored */
	char quar_err[256];
	uint64_t total_ms;

	/* private */
	struct scan_engine *engine;
};

/* A zeroed job for srv, session sb, with a reference on spool. */
struct msgjob *msgjob_new(struct server *srv, struct session_base *sb,
                          struct spool *spool, msgjob_done_cb done);

/* Queues the job on the loop's thread pool. Returns 0 or a libuv error. */
int msgjob_submit(struct msgjob *job);

/* Frees a job and what it holds; NULLs the caller's pointer. */
void msgjob_free(struct msgjob **jobp);

#endif
