/*
 * pop3_session.c - one POP3 client, its upstream connection, and the
 * ordered queue of responses between them (RFC 1939, RFC 2449, RFC 5034).
 *
 * Every client command becomes a slot in a FIFO, in the order the client
 * sent it, and is forwarded upstream at once (pipelining, RFC 2449 section
 * 6.6). Upstream responses arrive in the same order and are matched to the
 * slots:
 *
 *   pass-through slots (greeting, single-line answers, LIST/UIDL listings)
 *     are relayed byte for byte, but only while they are at the head of the
 *     queue: otherwise upstream parsing pauses, so order is kept without
 *     buffering them;
 *   capture slots (RETR, TOP, CAPA) are captured whole into a spool even
 *     when not at the head (read-ahead, up to limits.readahead messages),
 *     scanned on the thread pool, and sent when they reach the head: the
 *     original (re-dot-stuffed: byte-identical for a server that stuffs as
 *     RFC 1939 requires), the notice in its place, an -ERR, or a closed
 *     connection (policy "abort").
 *
 * Prefetch (limits.prefetch, latency hiding): once the client RETRs message
 * k, the proxy sends its own RETR for the next messages (k+1...) that the
 * client has neither retrieved nor deleted, when the server announced
 * PIPELINING, so they are received and scanned while the client still
 * reads k. Such a slot is "spec": it sits in the queue for the order of
 * upstream answers but sends nothing to the client; once its verdict is
 * in, it is handed to the client's RETR of that message (a slot waiting
 * for it) or kept until the client asks, and dropped when the client moves
 * past it. Nothing is ever deleted ahead of the client.
 *
 * Slot states: WAIT (upstream response not started) -> RECV -> SCAN ->
 * READY -> SEND -> freed. Nothing half-received is ever sent as complete:
 * a message is only sent after its terminator arrived.
 *
 * Ownership: the session owns both TCP handles and its timer (handle->data
 * points back); closing marks the session, closes every handle, and the
 * last close callback frees it. Scan jobs know only the session id.
 * Memory per session is bounded by its two input buffers (allocated only
 * while bytes are held), one captured
 * message per read-ahead slot (spilling to a temp file past the spool
 * memory limit), and the client write high-water mark.
 */
#include "proxy/pop3_session.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <strings.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/msgjob.h"
#include "proxy/pop3_parse.h"
#include "proxy/server.h"
#include "proxy/spool.h"
#include "proxy/stats.h"

#define P3_CIN_MAX 16384         /* client input buffer */
#define P3_UIN_MAX 65536         /* upstream input buffer */
#define P3_SLOTS_MAX 64          /* commands in flight before client reads pause */
#define P3_WQ_HIGH (256u * 1024) /* client output queued before sending pauses */
#define P3_CHUNK 32768           /* spool bytes stuffed per client write */
#define P3_CAPA_MAX 16384        /* a CAPA listing longer than this is an error */
#define P3_MSG_MAX (1u << 20)    /* message numbers remembered per session */

enum p3_kind {
	P3K_GREETING, /* the server's greeting */
	P3K_SINGLE,   /* a single-line answer relayed as is */
	P3K_MULTI,    /* a multi-line listing relayed as is (LIST, UIDL, AUTH) */
	P3K_AUTH,     /* AUTH mech: "+ " continues the SASL exchange */
	P3K_SASL,     /* a client SASL response line */
	P3K_QUIT,
	P3K_CAPA,   /* captured and filtered */
	P3K_RETR,   /* captured and scanned */
	P3K_TOP,    /* captured (as RETR when unscanned) and scanned */
	P3K_LOCAL,  /* answered by the proxy, never sent upstream */
	P3K_PROBE,  /* the proxy's own "UIDL n": recorded, never relayed */
	P3K_UPSTLS, /* the proxy's own STLS to the upstream (upstream_tls: starttls) */
	P3K_COUNT
};

enum p3_state { P3S_WAIT, P3S_RECV, P3S_SCAN, P3S_READY, P3S_SEND, P3S_COUNT };

enum p3_out {
	P3O_NONE,  /* nothing (the proxy's own command) */
	P3O_LINE,  /* out_status only */
	P3O_SPOOL, /* out_status, then out_spool dot-stuffed, then the terminator */
	P3O_ABORT, /* close the client connection here */
};

/* What the session remembers of a message number (RFC 1939: stable per session). */
struct p3_msg {
	uint64_t list_size;   /* from STAT-less LIST answers, 0 = unknown */
	char uidl[72];        /* RFC 1939: at most 70 characters */
	int known;            /* 0 unknown, 1 clean, 2 quarantined */
	int uidl_asked;       /* the proxy sent its own UIDL n */
	struct spool *notice; /* known == 2: the substitute served */
	char quar_id[QUAR_ID_MAX];
	int retrieved;        /* the client sent RETR for it */
	int deleted;          /* the client sent DELE for it (until RSET) */
	struct p3_slot *spec; /* a prefetch of it: queued, or kept (retired) */
};

struct p3_slot {
	struct p3_slot *next;
	uint64_t seq;
	enum p3_kind kind;
	enum p3_state state;
	unsigned long msgno; /* RETR / TOP / LIST n / UIDL n argument, 0 if none */
	unsigned long top_lines;
	int listing;            /* P3K_MULTI: 1 LIST, 2 UIDL, 0 other */
	int upstream_retr;      /* a TOP that was sent upstream as RETR */
	int discard;            /* known quarantined: the captured copy is not needed */
	int close_after;        /* close the client once this slot is sent */
	int starttls;           /* the client's STLS: TLS starts once this is sent */
	const char *login;      /* PASS / APOP: log the outcome under this method */
	int stat;               /* STAT: "+OK n size" tells the message count */
	int internal;           /* the proxy's own CAPA: recorded, never relayed */
	int spec;               /* a prefetch: never sent to the client itself */
	int retired;            /* spec, out of the queue, kept in msgs[].spec */
	struct p3_slot *waiter; /* spec: the client's RETR waiting for it */
	int claim;              /* a client RETR served from a prefetch */

	/* capture */
	struct spool *spool;
	char status[POP3_STATUS_MAX];
	size_t status_len;
	int crlf_term;

	/* output */
	enum p3_out out;
	struct spool *out_spool;
	char out_status[POP3_STATUS_MAX + 64];
	size_t out_status_len;
	char tag[320]; /* "pass" despite a bad verdict: header put in front */
	size_t tag_len;
	int limit_top; /* serve only the header and top_lines body lines */
	int out_crlf;

	/* send progress */
	uint64_t off;
	struct pop3_stuffer st;
	int tag_sent;
	int top_at_line_start, top_in_header, top_done;
	unsigned long top_left;

	/* listing line assembly (LIST / UIDL multi-line) */
	char lbuf[160];
	size_t llen;
};

struct pop3_session {
	struct session_base base; /* first: server.c sees only this */
	struct conn_pair c;       /* both legs, connecting, closing */
	int closing;
	int stop_when_idle;    /* shutdown asked: end once the queue is empty */
	int close_after_flush; /* close once queued client output is written */
	int in_run;            /* re-entrancy guard of p3_run */
	int sasl;              /* the next client line is a SASL response */
	int sasl_plain;        /* AUTH PLAIN without an initial response: the next
	                          SASL line carries the authentication identity */
	int authed;
	int quit;            /* the client's QUIT was answered */
	int client_tls_wait; /* client STLS answered: nothing more read until TLS */
	int tls_go_up, tls_go_client; /* start TLS on that leg between passes */
	const char *end_reason;       /* why close_after_flush was set, for the log */
	char reason_buf[80];

	struct pop3_cmd_parser cp;
	struct pop3_resp_parser rp;

	struct p3_slot *head, *tail;
	struct p3_slot *ucur; /* first slot whose upstream answer is not complete */
	unsigned nslots;
	uint64_t slot_seq;

	struct p3_msg *msgs; /* indexed by message number */
	unsigned long nmsgs;
	unsigned long maxmsg; /* message count (STAT, listings), 0 = unknown */
	int pipelining;       /* upstream CAPA: 1 PIPELINING, -1 not, 0 unknown */
	int capa_probed;      /* the proxy sent its own CAPA */
	int quit_sent;        /* the client's QUIT went upstream: nothing after it */
	unsigned nspec;       /* prefetches alive (queued or kept) */
	struct p3_slot *kept; /* prefetches with an answer the client has not asked for */
	unsigned long last_retr; /* the client's latest RETR */

	char user[128];     /* the login name as sent (for quarantine metadata) */
	char user_log[200]; /* the same, escaped for unquoted use in log lines */
};

static void p3_run(struct pop3_session *s);
static int p3_client_tls_offered(struct pop3_session *s);
static void p3_close(struct pop3_session *s, const char *reason);

static uint64_t p3_now(struct pop3_session *s)
{
	return conn_now(&s->c);
}

/* The session that embeds conn pair p. */
static struct pop3_session *p3_of(struct conn_pair *p)
{
	return (struct pop3_session *)((char *)p - offsetof(struct pop3_session, c));
}

static const struct config *p3_cfg(struct pop3_session *s)
{
	return s->base.cfg;
}

/* ------------------------------------------------------------------ */
/* closing                                                             */

static void p3_free_slot(struct p3_slot *sl)
{
	spool_unref(&sl->spool);
	spool_unref(&sl->out_spool);
	free(sl);
}

/* conn.c closed everything: free the session (loop thread, nothing pending). */
static void p3_on_freed(struct conn_pair *p)
{
	struct pop3_session *s = p3_of(p);

	while (s->kept != NULL) {
		struct p3_slot *sl = s->kept;

		s->kept = sl->next;
		p3_free_slot(sl);
	}
	while (s->head != NULL) {
		struct p3_slot *sl = s->head;

		s->head = sl->next;
		p3_free_slot(sl);
	}
	for (unsigned long i = 0; i < s->nmsgs; i++)
		spool_unref(&s->msgs[i].notice);
	free(s->msgs);
	stats_session_close(STATS_POP3);
	server_session_remove(s->base.srv, &s->base);
	free(s);
}

/*
 * Ends the session: every handle is closed, the session is freed once the
 * last one is (p3_on_freed). Scan jobs still running find no session by id
 * and drop their result. Idempotent.
 */
static void p3_close(struct pop3_session *s, const char *reason)
{
	if (s->closing)
		return;
	s->closing = 1;
	log_msg(LOG_LVL_INFO, s->base.sid, "pop3 close user=%s reason=\"%s\" pending=%u",
	        s->user_log[0] ? s->user_log : "-", reason, s->nslots);
	conn_pair_close(&s->c);
}

static void p3_force_close(struct session_base *sb, const char *reason)
{
	p3_close((struct pop3_session *)sb, reason);
}

static void p3_shutdown(struct session_base *sb)
{
	struct pop3_session *s = (struct pop3_session *)sb;

	s->stop_when_idle = 1;
	if (s->nslots == 0 && conn_leg_idle(&s->c.client))
		p3_close(s, "shutdown");
}

/* ------------------------------------------------------------------ */
/* writing                                                             */

static void p3_on_written(struct conn_pair *p, struct conn_leg *leg, int status)
{
	struct pop3_session *s = p3_of(p);

	if (status < 0) {
		snprintf(s->reason_buf, sizeof(s->reason_buf), "%s write: %s",
		         leg == &p->client ? "client" : "upstream", uv_strerror(status));
		p3_close(s, s->reason_buf);
		return;
	}
	p3_run(s);
}

/* Queues a copy of len bytes on the client or upstream socket. */
static int p3_write(struct pop3_session *s, int to_client, const char *data, size_t len)
{
	int r = conn_write(&s->c, to_client ? &s->c.client : &s->c.upstream, data, len);

	if (r < 0)
		p3_close(s, uv_strerror(r));
	return r;
}

/* ------------------------------------------------------------------ */
/* message table                                                       */

/* The entry of message number n, created on demand; NULL when out of range. */
static struct p3_msg *p3_msg(struct pop3_session *s, unsigned long n)
{
	if (n == 0 || n > P3_MSG_MAX)
		return NULL;
	if (n >= s->nmsgs) {
		unsigned long nn = s->nmsgs != 0 ? s->nmsgs : 64;
		struct p3_msg *m;

		while (nn <= n)
			nn *= 2;
		m = realloc(s->msgs, nn * sizeof(*m));
		if (m == NULL)
			return NULL;
		memset(m + s->nmsgs, 0, (nn - s->nmsgs) * sizeof(*m));
		s->msgs = m;
		s->nmsgs = nn;
	}
	return &s->msgs[n];
}

/* Records "n size" (LIST) or "n uid" (UIDL) from a listing or single answer. */
static void p3_record_listing(struct pop3_session *s, int listing, const char *line,
                              size_t len)
{
	char tmp[160];
	char *end;
	unsigned long n;
	struct p3_msg *m;

	if (len >= sizeof(tmp))
		return;
	memcpy(tmp, line, len);
	tmp[len] = '\0';
	n = strtoul(tmp, &end, 10);
	if (end == tmp || *end != ' ' || (m = p3_msg(s, n)) == NULL)
		return;
	if (n > s->maxmsg)
		s->maxmsg = n;
	while (*end == ' ')
		end++;
	if (listing == 1) {
		m->list_size = strtoull(end, NULL, 10);
	} else {
		/* RFC 1939: 0x21..0x7e; escaped since it is logged unquoted */
		log_escape_token(m->uidl, sizeof(m->uidl), end, strcspn(end, " \r\n"));
	}
}

/* Feeds unstuffed listing bytes to the line assembler of a LIST / UIDL slot. */
static void p3_listing_data(struct pop3_session *s, struct p3_slot *sl, const char *d,
                            size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (d[i] == '\n') {
			if (sl->llen < sizeof(sl->lbuf))
				p3_record_listing(s, sl->listing, sl->lbuf, sl->llen);
			sl->llen = 0;
		} else if (sl->llen < sizeof(sl->lbuf)) {
			sl->lbuf[sl->llen++] = d[i];
		}
	}
}

/* ------------------------------------------------------------------ */
/* slots                                                               */

static struct p3_slot *p3_slot_add(struct pop3_session *s, enum p3_kind kind)
{
	struct p3_slot *sl = calloc(1, sizeof(*sl));

	if (sl == NULL) {
		p3_close(s, "out of memory");
		return NULL;
	}
	sl->kind = kind;
	sl->seq = ++s->slot_seq;
	if (s->tail != NULL)
		s->tail->next = sl;
	else
		s->head = sl;
	s->tail = sl;
	if (s->ucur == NULL && kind != P3K_LOCAL)
		s->ucur = sl;
	s->nslots++;
	return sl;
}

/* Takes sl out of the queue (not freed). */
static void p3_slot_unlink(struct pop3_session *s, struct p3_slot *sl)
{
	struct p3_slot *prev = NULL;

	for (struct p3_slot *x = s->head; x != NULL && x != sl; x = x->next)
		prev = x;
	if (prev != NULL)
		prev->next = sl->next;
	else
		s->head = sl->next;
	if (s->tail == sl)
		s->tail = prev;
	if (s->ucur == sl)
		s->ucur = NULL;
	sl->next = NULL;
	s->nslots--;
}

static void p3_slot_remove(struct pop3_session *s, struct p3_slot *sl)
{
	p3_slot_unlink(s, sl);
	p3_free_slot(sl);
}

/* The first slot whose answer the client sees (prefetches send nothing). */
static struct p3_slot *p3_first_visible(struct pop3_session *s)
{
	struct p3_slot *sl = s->head;

	while (sl != NULL && sl->spec)
		sl = sl->next;
	return sl;
}

/* Moves the upstream cursor to the next slot that expects an upstream answer. */
static void p3_ucur_advance(struct pop3_session *s)
{
	struct p3_slot *sl = s->ucur != NULL ? s->ucur->next : NULL;

	while (sl != NULL && sl->kind == P3K_LOCAL)
		sl = sl->next;
	s->ucur = sl;
}

static int p3_is_capture(enum p3_kind k)
{
	return k == P3K_RETR || k == P3K_TOP || k == P3K_CAPA;
}

/* Answers relayed byte for byte as they arrive (so only at the head). */
static int p3_is_relayed(enum p3_kind k)
{
	return !p3_is_capture(k) && k != P3K_PROBE && k != P3K_UPSTLS;
}

/* Captured messages held (being received, scanned, or waiting to be sent). */
static unsigned p3_held(struct pop3_session *s)
{
	unsigned n = 0;

	for (struct p3_slot *sl = s->head; sl != NULL && sl != s->ucur; sl = sl->next)
		if ((sl->kind == P3K_RETR || sl->kind == P3K_TOP) && !sl->spec &&
		    sl->state >= P3S_SCAN)
			n++;
	return n;
}

static void p3_set_line(struct p3_slot *sl, const char *line)
{
	sl->out = P3O_LINE;
	sl->out_status_len = strlen(line);
	memcpy(sl->out_status, line, sl->out_status_len);
	sl->state = P3S_READY;
}

/* ------------------------------------------------------------------ */
/* capture results                                                     */

/* Serves the original as captured (re-stuffed), optionally tagged. */
static void p3_serve_original(struct p3_slot *sl)
{
	sl->out = P3O_SPOOL;
	sl->out_spool = sl->spool;
	spool_ref(sl->out_spool);
	sl->out_crlf = sl->crlf_term;
	if (sl->kind == P3K_TOP && sl->upstream_retr) {
		sl->limit_top = 1;
		sl->out_status_len =
		    (size_t)snprintf(sl->out_status, sizeof(sl->out_status), "+OK\r\n");
	} else {
		memcpy(sl->out_status, sl->status, sl->status_len);
		sl->out_status_len = sl->status_len;
	}
	sl->state = P3S_READY;
}

/* Serves the notice that stands in for a quarantined message. */
static void p3_serve_notice(struct p3_slot *sl, struct spool *notice)
{
	sl->out = P3O_SPOOL;
	sl->out_spool = notice;
	spool_ref(notice);
	sl->out_crlf = 1;
	if (sl->kind == P3K_TOP) {
		sl->limit_top = 1;
		sl->out_status_len =
		    (size_t)snprintf(sl->out_status, sizeof(sl->out_status), "+OK\r\n");
	} else {
		sl->out_status_len = (size_t)snprintf(
		    sl->out_status, sizeof(sl->out_status), "+OK %llu octets\r\n",
		    (unsigned long long)spool_size(notice));
	}
	sl->state = P3S_READY;
}

static struct p3_slot *p3_slot_by_seq(struct pop3_session *s, uint64_t seq)
{
	for (struct p3_slot *sl = s->head; sl != NULL; sl = sl->next)
		if (sl->seq == seq)
			return sl;
	return NULL;
}

/* The scan job of a captured message is back (on the loop thread). */
static void p3_job_done(struct session_base *sb, struct msgjob *job)
{
	struct pop3_session *s = (struct pop3_session *)sb;
	struct p3_slot *sl = p3_slot_by_seq(s, job->tag);
	const struct scan_verdict *v = &job->verdict;
	struct p3_msg *m;
	char sig[SCAN_SIG_MAX + SCAN_ERR_MAX];

	if (s->closing || sl == NULL) {
		msgjob_free(&job);
		return;
	}
	m = p3_msg(s, sl->msgno);
	log_escape(sig, sizeof(sig), v->result == SCAN_ERROR ? v->error : v->signature,
	           strlen(v->result == SCAN_ERROR ? v->error : v->signature));
	log_msg(LOG_LVL_INFO, s->base.sid,
	        "pop3 user=%s msg=%lu uidl=%s size=%llu verdict=%s signature=\"%s\" "
	        "action=%s id=%s%s%s scan_ms=%llu",
	        s->user_log[0] ? s->user_log : "-", sl->msgno,
	        m != NULL && m->uidl[0] ? m->uidl : "-",
	        (unsigned long long)spool_size(sl->spool), scan_result_name(v->result),
	        sig,
	        v->result == SCAN_CLEAN ? "deliver" : policy_action_name(job->action),
	        job->quar_id[0] ? job->quar_id : "-",
	        job->quar_reused ? " stored=existing" : "", sl->spec ? " prefetch=1" : "",
	        (unsigned long long)v->scan_ms);

	switch (job->action) {
	case POLICY_PASS:
		/* the historical X-Mailmoat-Virus line marks a virus or a failed
		   scan let through; the rules' findings pass as they are */
		if ((v->result == SCAN_INFECTED || v->result == SCAN_ERROR) &&
		    !job->released)
			sl->tag_len = policy_tag_header(v, sl->tag, sizeof(sl->tag));
		else if (m != NULL)
			m->known = 1;
		p3_serve_original(sl);
		break;
	case POLICY_ABORT:
		sl->out = P3O_ABORT;
		sl->state = P3S_READY;
		break;
	case POLICY_TAG:
		if (job->subst == NULL) {
			log_msg(LOG_LVL_ERROR, s->base.sid,
			        "pop3 msg=%lu tag failed: %s; message held back",
			        sl->msgno, job->quar_err);
			p3_set_line(sl,
			            "-ERR [SYS/TEMP] mailmoat: message held back\r\n");
			break;
		}
		/* the tagged copy stands in for the original from now on */
		p3_serve_notice(sl, job->subst);
		if (m != NULL) {
			spool_unref(&m->notice);
			m->notice = job->subst;
			spool_ref(m->notice);
			m->known = 2;
		}
		break;
	case POLICY_QUARANTINE: {
		struct spool *nsp = NULL;

		if (!job->quar_failed) {
			const struct config *cfg = p3_cfg(s);

			nsp =
			    spool_new((size_t)cfg->spool_memory_limit, cfg->spool_dir, 0);
			if (nsp == NULL ||
			    spool_append(nsp, job->notice, job->notice_len) < 0 ||
			    spool_freeze(nsp) < 0) {
				spool_unref(&nsp);
				snprintf(job->quar_err, sizeof(job->quar_err),
				         "cannot spool the notice");
			}
		}
		if (nsp == NULL) {
			/* The original could not be kept: never substitute then (no
			 * loss). */
			log_msg(LOG_LVL_ERROR, s->base.sid,
			        "pop3 msg=%lu quarantine failed: %s; message held back",
			        sl->msgno, job->quar_err);
			p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: message held back, "
			                "quarantine unavailable\r\n");
			break;
		}
		p3_serve_notice(sl, nsp);
		if (m != NULL) {
			spool_unref(&m->notice);
			m->notice = nsp;
			m->known = 2;
			snprintf(m->quar_id, sizeof(m->quar_id), "%s", job->quar_id);
		} else {
			spool_unref(&nsp);
		}
		break;
	}
	default:
		p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: internal error\r\n");
		break;
	}
	/* the original is no longer needed once the notice stands in */
	if (sl->out_spool != sl->spool)
		spool_unref(&sl->spool);
	msgjob_free(&job);
	p3_run(s);
}

/* A capture slot received its whole answer: decide what happens next. */
static void p3_capture_complete(struct pop3_session *s, struct p3_slot *sl)
{
	struct p3_msg *m = p3_msg(s, sl->msgno);
	const struct config *cfg = p3_cfg(s);
	struct msgjob *job;

	if (spool_freeze(sl->spool) < 0) {
		p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: spool write failed\r\n");
		return;
	}
	if (sl->kind == P3K_CAPA) {
		/*
		 * Drop what the proxy cannot mediate: STLS would hand the byte
		 * stream to a TLS session we cannot read (RFC 2595 section 4).
		 */
		struct spool *f = spool_new(P3_CAPA_MAX * 2, NULL, 0);
		char buf[P3_CAPA_MAX];
		ssize_t n = spool_pread(sl->spool, buf, sizeof(buf), 0);
		size_t i = 0;

		if (f == NULL || n < 0) {
			spool_unref(&f);
			p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: out of memory\r\n");
			return;
		}
		s->pipelining = -1;
		while (i < (size_t)n) {
			char *nl = memchr(buf + i, '\n', (size_t)n - i);
			size_t ll =
			    nl != NULL ? (size_t)(nl - (buf + i)) + 1 : (size_t)n - i;

			/* RFC 2449 section 6.6 */
			if (ll >= 10 && strncasecmp(buf + i, "PIPELINING", 10) == 0 &&
			    (ll == 10 || buf[i + 10] == '\r' || buf[i + 10] == '\n' ||
			     buf[i + 10] == ' '))
				s->pipelining = 1;
			if (!(ll >= 4 && strncasecmp(buf + i, "STLS", 4) == 0 &&
			      (ll == 4 || buf[i + 4] == '\r' || buf[i + 4] == '\n' ||
			       buf[i + 4] == ' ')))
				spool_append(f, buf + i, ll);
			i += ll;
		}
		if (p3_client_tls_offered(s))
			spool_append(f, "STLS\r\n", 6);
		spool_freeze(f);
		spool_unref(&sl->spool);
		sl->spool = f;
		if (sl->internal) {
			spool_unref(&sl->spool);
			sl->out = P3O_NONE;
			sl->state = P3S_READY;
			return;
		}
		p3_serve_original(sl);
		return;
	}
	if (m != NULL && m->known == 2 && m->notice != NULL) {
		log_msg(LOG_LVL_INFO, s->base.sid,
		        "pop3 user=%s msg=%lu uidl=%s verdict=known action=notice id=%s",
		        s->user_log[0] ? s->user_log : "-", sl->msgno,
		        m->uidl[0] ? m->uidl : "-", m->quar_id);
		spool_unref(&sl->spool);
		p3_serve_notice(sl, m->notice);
		return;
	}
	if (m != NULL && m->known == 1) {
		p3_serve_original(sl);
		return;
	}
	if (spool_overflowed(sl->spool)) {
		/*
		 * Only part of it was kept: it can be neither scanned nor
		 * quarantined whole, so it is never delivered nor replaced (the
		 * client would delete the original). It stays on the server.
		 */
		log_msg(
		    LOG_LVL_WARN, s->base.sid,
		    "pop3 user=%s msg=%lu uidl=%s verdict=error signature=\"larger than "
		    "spool.max_message_size (%llu)\" action=%s",
		    s->user_log[0] ? s->user_log : "-", sl->msgno,
		    m != NULL && m->uidl[0] ? m->uidl : "-",
		    (unsigned long long)cfg->spool_max_message_size,
		    s->base.policy.action[PK_OVERSIZE] == POLICY_ABORT ? "abort"
		                                                       : "refuse");
		spool_unref(&sl->spool);
		if (s->base.policy.action[PK_OVERSIZE] == POLICY_ABORT) {
			sl->out = P3O_ABORT;
			sl->state = P3S_READY;
		} else {
			p3_set_line(
			    sl, "-ERR [SYS/PERM] mailmoat: message too large to scan, "
			        "left on the server\r\n");
		}
		return;
	}
	job = msgjob_new(s->base.srv, &s->base, sl->spool, p3_job_done);
	if (job == NULL) {
		p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: out of memory\r\n");
		return;
	}
	job->tag = sl->seq;
	snprintf(job->protocol, sizeof(job->protocol), "pop3");
	snprintf(job->user, sizeof(job->user), "%s", s->user);
	snprintf(job->upstream, sizeof(job->upstream), "%s", s->c.upstream_name);
	snprintf(job->message, sizeof(job->message), "msg=%lu uidl=%s", sl->msgno,
	         m != NULL && m->uidl[0] ? m->uidl : "-");
	/* Pad to what LIST told the client, so size-trusting clients keep working. */
	job->pad_to =
	    m != NULL && m->list_size != 0 ? m->list_size : spool_size(sl->spool);
	if (msgjob_submit(job) < 0) {
		msgjob_free(&job);
		p3_set_line(sl, "-ERR [SYS/TEMP] mailmoat: cannot scan\r\n");
		return;
	}
	sl->state = P3S_SCAN;
}

/* ------------------------------------------------------------------ */
/* upstream answers                                                    */

/*
 * The upstream connection ended or broke. Answers already complete are
 * still delivered; the first incomplete one becomes an -ERR and the client
 * connection is closed after it. A multi-line listing that was half relayed
 * cannot be completed honestly, so the client is closed at once.
 */
static void p3_upstream_failed(struct pop3_session *s, const char *why)
{
	struct p3_slot *sl = s->ucur;
	int told = 0;

	if (s->c.up_state == CONN_UP_GONE)
		return;
	conn_upstream_gone(&s->c);
	/* after QUIT the upstream closing is the normal end */
	log_msg(s->close_after_flush && s->ucur == NULL ? LOG_LVL_DEBUG : LOG_LVL_WARN,
	        s->base.sid, "pop3 upstream=%s lost: %s pending=%u", s->c.upstream_name,
	        why, s->nslots);
	if (sl != NULL && sl == p3_first_visible(s) && sl->state == P3S_RECV &&
	    !p3_is_capture(sl->kind)) {
		p3_close(s, "upstream lost mid-response");
		return;
	}
	/*
	 * No answer from here on will come: every one the client waits for
	 * becomes the error (a prefetch's goes to the client's RETR waiting on
	 * it), and the client is closed after the first; the proxy's own
	 * commands and prefetches nobody asked for yet are dropped.
	 */
	for (; sl != NULL; sl = sl->next) {
		struct p3_slot *target = sl;

		if (sl->kind == P3K_LOCAL)
			continue;
		spool_unref(&sl->spool);
		if (sl->kind == P3K_PROBE || sl->internal || sl->spec) {
			sl->out = P3O_NONE;
			sl->state = P3S_READY;
			target = sl->waiter;
			sl->waiter = NULL;
			if (target == NULL)
				continue;
		}
		p3_set_line(target,
		            "-ERR [SYS/TEMP] mailmoat: upstream connection lost\r\n");
		target->close_after = 1;
		told = 1;
	}
	if (!told)
		s->close_after_flush = 1; /* answers queued or being written go first */
	s->ucur = NULL;
}

/* Starts the answer of slot sl: tells the parser what to expect. */
static void p3_answer_begin(struct pop3_session *s, struct p3_slot *sl)
{
	int multi = sl->kind == P3K_MULTI || p3_is_capture(sl->kind);

	pop3_resp_expect(&s->rp, multi);
	sl->state = P3S_RECV;
	if (p3_is_capture(sl->kind)) {
		const struct config *cfg = p3_cfg(s);

		sl->spool = spool_new((size_t)cfg->spool_memory_limit, cfg->spool_dir,
		                      sl->kind == P3K_CAPA ? P3_CAPA_MAX
		                                           : cfg->spool_max_message_size);
		/* a whole message whose LIST size the session saw: one allocation */
		if (sl->spool != NULL && sl->msgno != 0 && sl->msgno < s->nmsgs &&
		    (sl->kind == P3K_RETR || sl->upstream_retr))
			spool_expect(sl->spool, s->msgs[sl->msgno].list_size);
	}
}

/* Handles a complete single-line answer of a pass-through slot. */
static void p3_passthrough_status(struct pop3_session *s, struct p3_slot *sl,
                                  const struct pop3_resp_event *ev)
{
	if (sl->kind == P3K_GREETING && ev->status == POP3_ST_OK && s->c.tls != NULL &&
	    s->c.tls->upstream_mode == CONN_TLS_STARTTLS &&
	    !conn_leg_tls(&s->c.upstream)) {
		/* RFC 2595 section 4: STLS before anything else goes upstream */
		if (p3_slot_add(s, P3K_UPSTLS) != NULL) {
			p3_write(s, 0, "STLS\r\n", 6);
		}
		return;
	}
	if (sl->kind == P3K_AUTH || sl->kind == P3K_SASL) {
		s->sasl = ev->status == POP3_ST_CONT;
		if (!s->sasl)
			s->sasl_plain = 0;
		if (ev->status == POP3_ST_OK) {
			s->authed = 1;
			server_session_policy(&s->base, s->c.upstream_name, s->user);
		}
		if (ev->status != POP3_ST_CONT)
			log_msg(LOG_LVL_INFO, s->base.sid,
			        "pop3 login user=%s method=sasl result=%s",
			        s->user_log[0] ? s->user_log : "-",
			        ev->status == POP3_ST_OK ? "ok" : "failed");
	} else if (sl->login != NULL) {
		if (ev->status == POP3_ST_OK) {
			s->authed = 1;
			server_session_policy(&s->base, s->c.upstream_name, s->user);
		}
		log_msg(LOG_LVL_INFO, s->base.sid,
		        "pop3 login user=%s method=%s result=%s",
		        s->user_log[0] ? s->user_log : "-", sl->login,
		        ev->status == POP3_ST_OK ? "ok" : "failed");
	} else if (sl->listing != 0 && ev->status == POP3_ST_OK && !ev->multiline &&
	           ev->len > 4) {
		/* "+OK n size" / "+OK n uid" answers to LIST n / UIDL n */
		p3_record_listing(s, sl->listing, ev->data + 4, ev->len - 4);
	} else if (sl->stat && ev->status == POP3_ST_OK && ev->len > 4) {
		/* "+OK nn mm" (RFC 1939 section 5) */
		char *end;
		unsigned long n = strtoul(ev->data + 4, &end, 10);

		if (end != ev->data + 4 && *end == ' ')
			s->maxmsg = n;
	}
	if (s->authed && !s->capa_probed && s->pipelining == 0 && !s->quit_sent &&
	    p3_cfg(s)->prefetch > 0 && ev->status == POP3_ST_OK) {
		/* Prefetching pipelines: learn whether the server allows it. */
		struct p3_slot *probe = p3_slot_add(s, P3K_CAPA);

		s->capa_probed = 1;
		if (probe != NULL) {
			probe->internal = 1;
			p3_write(s, 0, "CAPA\r\n", 6);
		}
	}
}

/*
 * Parses what the upstream sent, slot by slot. Returns 1 when it made
 * progress. Pauses (returns 0 with bytes left) when the answer at the
 * cursor must wait: a pass-through answer that is not at the head, a
 * capture beyond the read-ahead window, or a full client write queue.
 */
static int p3_upstream_input(struct pop3_session *s)
{
	size_t pos = 0;
	int progress = 0;

	while (pos < s->c.upstream.len && s->ucur != NULL && !s->closing &&
	       !s->tls_go_up) {
		struct p3_slot *sl = s->ucur;
		struct pop3_resp_event ev;
		size_t used = 0;
		int r;

		if (p3_is_relayed(sl->kind)) {
			if (sl != p3_first_visible(s) || s->c.client.wq >= P3_WQ_HIGH)
				break;
		} else if (sl->state == P3S_WAIT && !sl->spec && sl != s->head &&
		           p3_held(s) >= p3_cfg(s)->readahead) {
			break;
		}
		if (sl->state == P3S_WAIT) {
			p3_answer_begin(s, sl);
			if (p3_is_capture(sl->kind) && sl->spool == NULL) {
				p3_close(s, "out of memory");
				return 0;
			}
		}
		r = pop3_resp_feed(&s->rp, s->c.upstream.buf + pos,
		                   s->c.upstream.len - pos, &used, &ev);
		if (r == POP3_ERROR) {
			char why[128];

			stats_error(STATS_ERR_PROTOCOL);
			snprintf(why, sizeof(why), "protocol error: %s",
			         pop3_resp_error(&s->rp));
			s->c.upstream.len = 0;
			p3_upstream_failed(s, why);
			return 1;
		}
		if (p3_is_relayed(sl->kind))
			p3_write(s, 1, s->c.upstream.buf + pos,
			         used); /* relayed byte for byte */
		pos += used;
		progress = 1;
		if (r == POP3_NEED_MORE)
			break;
		switch (ev.type) {
		case POP3_EV_STATUS:
			if (p3_is_capture(sl->kind)) {
				memcpy(sl->status, ev.data, ev.len);
				sl->status_len = ev.len;
				if (!ev.multiline) {
					/* -ERR: relay the line itself */
					spool_unref(&sl->spool);
					memcpy(sl->out_status, ev.data, ev.len);
					sl->out_status_len = ev.len;
					sl->out = sl->internal ? P3O_NONE : P3O_LINE;
					if (sl->internal)
						s->pipelining = -1;
					sl->state = P3S_READY;
					p3_ucur_advance(s);
				}
			} else if (sl->kind == P3K_UPSTLS) {
				sl->out = P3O_NONE;
				sl->state = P3S_READY;
				p3_ucur_advance(s);
				if (ev.status != POP3_ST_OK) {
					/* fail closed: never carry on in plaintext */
					log_msg(LOG_LVL_WARN, s->base.sid,
					        "pop3 upstream=%s refused STLS: no "
					        "plaintext fallback",
					        s->c.upstream_name);
					p3_set_line(
					    sl, "-ERR [SYS/TEMP] mailmoat: upstream TLS "
					        "unavailable\r\n");
					sl->close_after = 1;
				} else {
					s->tls_go_up = 1; /* the next bytes are TLS */
					break;
				}
			} else if (sl->kind == P3K_PROBE) {
				if (ev.status == POP3_ST_OK && ev.len > 4)
					p3_record_listing(s, 2, ev.data + 4, ev.len - 4);
				sl->out = P3O_NONE;
				sl->state = P3S_READY;
				p3_ucur_advance(s);
			} else {
				p3_passthrough_status(s, sl, &ev);
				if (sl->kind == P3K_QUIT)
					s->close_after_flush = s->quit = 1;
				if (!ev.multiline) {
					p3_ucur_advance(s);
					p3_slot_remove(s, sl);
				}
			}
			break;
		case POP3_EV_DATA:
			if (p3_is_capture(sl->kind)) {
				int ar = spool_append(sl->spool, ev.data, ev.len);

				if (ar < 0 && ar != -EFBIG) {
					stats_error(STATS_ERR_SPOOL);
					log_msg(LOG_LVL_ERROR, s->base.sid,
					        "spool write failed: %s", strerror(-ar));
					p3_close(s, "spool write failed");
					return 0;
				}
			} else if (sl->listing != 0) {
				p3_listing_data(s, sl, ev.data, ev.len);
			}
			break;
		case POP3_EV_END:
			if (p3_is_capture(sl->kind)) {
				sl->crlf_term = ev.crlf_term;
				p3_ucur_advance(s);
				p3_capture_complete(s, sl);
			} else {
				p3_ucur_advance(s);
				p3_slot_remove(s, sl);
			}
			break;
		default:
			break;
		}
	}
	if (pos > 0) {
		memmove(s->c.upstream.buf, s->c.upstream.buf + pos,
		        s->c.upstream.len - pos);
		s->c.upstream.len -= pos;
	}
	if (s->ucur == NULL && s->c.upstream.len > 0 && !s->tls_go_up &&
	    s->c.up_state == CONN_UP_CONNECTED) {
		/* RFC 1939 has no unsolicited responses */
		s->c.upstream.len = 0;
		p3_upstream_failed(s, "unsolicited data from upstream");
		progress = 1;
	} else if (s->c.upstream.eof && s->c.up_state == CONN_UP_CONNECTED &&
	           s->c.upstream.len == 0) {
		p3_upstream_failed(s, "connection closed");
		progress = 1;
	}
	return progress;
}

/* ------------------------------------------------------------------ */
/* sending captured answers                                            */

/*
 * TOP from a whole message (RFC 1939 section 7): the header, the blank
 * line, then top_lines lines of the body. Returns how many of the len bytes
 * belong to the output and sets top_done when the limit is reached.
 */
static size_t p3_top_take(struct p3_slot *sl, const char *d, size_t len)
{
	size_t i = 0;

	while (i < len && !sl->top_done) {
		if (sl->top_in_header) {
			char c = d[i++];

			if (c == '\n') {
				if (sl->top_at_line_start) {
					sl->top_in_header = 0;
					if (sl->top_left == 0)
						sl->top_done = 1;
				}
				sl->top_at_line_start = 1;
			} else if (c != '\r' || !sl->top_at_line_start) {
				sl->top_at_line_start = 0;
			}
		} else {
			const char *nl = memchr(d + i, '\n', len - i);

			if (nl == NULL)
				return len;
			i = (size_t)(nl - d) + 1;
			if (--sl->top_left == 0)
				sl->top_done = 1;
		}
	}
	return i;
}

/*
 * Sends as much of the head slot's answer as the write queue allows.
 * Returns 1 when the slot has been sent completely.
 */
static int p3_send_slot(struct pop3_session *s, struct p3_slot *sl)
{
	static char in[P3_CHUNK];
	static char out[2 * P3_CHUNK + 8];

	if (sl->state == P3S_READY) {
		sl->state = P3S_SEND;
		if (sl->out == P3O_ABORT || sl->out == P3O_NONE)
			return 1;
		if (p3_write(s, 1, sl->out_status, sl->out_status_len) < 0)
			return 0;
		if (sl->out == P3O_LINE)
			return 1;
		pop3_stuff_init(&sl->st);
		sl->top_in_header = 1;
		sl->top_at_line_start = 1;
		sl->top_left = sl->top_lines;
	}
	while (s->c.client.wq < P3_WQ_HIGH && !s->closing) {
		ssize_t n;
		size_t take, o;

		if (sl->tag_len > 0 && !sl->tag_sent) {
			o = pop3_stuff(&sl->st, sl->tag, sl->tag_len, out);
			sl->tag_sent = 1;
			if (p3_write(s, 1, out, o) < 0)
				return 0;
			continue;
		}
		n = sl->top_done ? 0
		                 : spool_pread(sl->out_spool, in, sizeof(in), sl->off);
		if (n < 0) {
			log_msg(LOG_LVL_ERROR, s->base.sid, "spool read failed: %s",
			        strerror((int)-n));
			p3_close(s, "spool read failed");
			return 0;
		}
		if (n == 0) {
			o = pop3_stuff_finish(&sl->st, sl->out_crlf, out);
			p3_write(s, 1, out, o);
			return 1;
		}
		take = sl->limit_top ? p3_top_take(sl, in, (size_t)n) : (size_t)n;
		o = pop3_stuff(&sl->st, in, take, out);
		sl->off += take;
		if (p3_write(s, 1, out, o) < 0)
			return 0;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* prefetch                                                            */

/* Moves a finished prefetch's answer into the client's slot dst. */
static void p3_move_output(struct p3_slot *dst, struct p3_slot *src)
{
	dst->out = src->out;
	dst->out_spool = src->out_spool;
	src->out_spool = NULL;
	memcpy(dst->out_status, src->out_status, src->out_status_len);
	dst->out_status_len = src->out_status_len;
	memcpy(dst->tag, src->tag, src->tag_len);
	dst->tag_len = src->tag_len;
	dst->out_crlf = src->out_crlf;
	dst->close_after |= src->close_after;
	dst->state = P3S_READY;
}

/* Frees a prefetch that is out of the queue. */
static void p3_spec_free(struct pop3_session *s, struct p3_slot *sl)
{
	struct p3_msg *m = p3_msg(s, sl->msgno);

	if (m != NULL && m->spec == sl)
		m->spec = NULL;
	if (sl->retired) {
		struct p3_slot **pp = &s->kept;

		while (*pp != NULL && *pp != sl)
			pp = &(*pp)->next;
		if (*pp == sl)
			*pp = sl->next;
	}
	s->nspec--;
	p3_free_slot(sl);
}

/*
 * A prefetch has its answer: out of the queue, to the client's RETR waiting
 * for it, or kept until the client asks. Errors are not kept: the client's
 * own RETR then asks the server again.
 */
static void p3_spec_retire(struct pop3_session *s, struct p3_slot *sl)
{
	p3_slot_unlink(s, sl);
	if (sl->waiter != NULL) {
		p3_move_output(sl->waiter, sl);
		p3_spec_free(s, sl);
	} else if ((sl->out == P3O_SPOOL || sl->out == P3O_ABORT) &&
	           sl->msgno > s->last_retr) {
		sl->retired = 1;
		sl->next = s->kept;
		s->kept = sl;
	} else {
		p3_spec_free(s, sl);
	}
}

/* Drops kept prefetches the client has moved past (or deleted). */
static void p3_spec_prune(struct pop3_session *s)
{
	struct p3_slot *sl = s->kept, *next;

	for (; sl != NULL; sl = next) {
		struct p3_msg *m = p3_msg(s, sl->msgno);

		next = sl->next;
		if (sl->msgno <= s->last_retr || m == NULL || m->deleted)
			p3_spec_free(s, sl);
	}
}

/*
 * Learns message n's UIDL (RFC 1939 section 7) for the log and the
 * quarantine, with one pipelined command of our own, once. Returns -1 when
 * the session is closing (out of memory).
 */
static int p3_probe_uidl(struct pop3_session *s, struct p3_msg *m, unsigned long n)
{
	char line[40];
	int ll;

	if (m->uidl[0] != '\0' || m->uidl_asked)
		return 0;
	if (p3_slot_add(s, P3K_PROBE) == NULL)
		return -1;
	m->uidl_asked = 1;
	ll = snprintf(line, sizeof(line), "UIDL %lu\r\n", n);
	p3_write(s, 0, line, (size_t)ll);
	return 0;
}

/*
 * After the client's RETR of message k: fetch the next messages it has
 * not retrieved or deleted, up to limits.prefetch of them, when the
 * server pipelines (RFC 2449 section 6.6) and the message count is known.
 */
static void p3_prefetch(struct pop3_session *s, unsigned long k)
{
	const struct config *cfg = p3_cfg(s);

	if (cfg->prefetch == 0 || !s->authed || s->pipelining != 1 || s->closing ||
	    s->quit_sent || s->c.up_state != CONN_UP_CONNECTED || s->close_after_flush)
		return;
	for (unsigned long j = k + 1;
	     j <= k + cfg->prefetch && j <= s->maxmsg && s->nspec < cfg->prefetch; j++) {
		struct p3_msg *m = p3_msg(s, j);
		struct p3_slot *sl;
		char line[40];
		int ll;

		if (m == NULL || m->spec != NULL || m->retrieved || m->deleted ||
		    m->known != 0 || m->list_size > cfg->spool_max_message_size)
			continue;
		if (p3_probe_uidl(s, m, j) < 0)
			return;
		sl = p3_slot_add(s, P3K_RETR);
		if (sl == NULL)
			return;
		sl->spec = 1;
		sl->msgno = j;
		m->spec = sl;
		s->nspec++;
		ll = snprintf(line, sizeof(line), "RETR %lu\r\n", j);
		if (p3_write(s, 0, line, (size_t)ll) < 0)
			return;
	}
}

/* Sends ready answers at the head of the queue, in order. Returns progress. */
static int p3_flush(struct pop3_session *s)
{
	int progress = 0;

	while (s->head != NULL && !s->closing && !s->close_after_flush) {
		struct p3_slot *sl = s->head, *next;

		/* prefetches with an answer leave the queue wherever they are */
		for (; sl != NULL; sl = next) {
			next = sl->next;
			if (sl->spec && sl->state == P3S_READY) {
				p3_spec_retire(s, sl);
				progress = 1;
			}
		}
		sl = p3_first_visible(s);
		if (sl == NULL)
			break;
		if (sl->state != P3S_READY && sl->state != P3S_SEND)
			break;
		if (sl->out == P3O_ABORT) {
			log_msg(
			    LOG_LVL_WARN, s->base.sid,
			    "pop3 msg=%lu policy=abort: closing the client connection",
			    sl->msgno);
			s->end_reason = "policy abort";
			s->close_after_flush = 1;
			progress = 1;
			break;
		}
		if (!p3_send_slot(s, sl))
			break;
		progress = 1;
		if (sl->starttls)
			s->tls_go_client = 1;
		if (sl->close_after || sl->kind == P3K_QUIT)
			s->close_after_flush = 1;
		p3_slot_remove(s, sl);
	}
	return progress;
}

/* ------------------------------------------------------------------ */
/* client commands                                                     */

/* Keeps the login name for logs and quarantine metadata (never the secret). */
static void p3_set_user(struct pop3_session *s, const char *name, size_t len)
{
	size_t n = len < sizeof(s->user) - 1 ? len : sizeof(s->user) - 1;

	memcpy(s->user, name, n);
	s->user[n] = '\0';
	log_escape_token(s->user_log, sizeof(s->user_log), name, len);
}

/* The authentication identity of an AUTH PLAIN initial response (RFC 4616). */
static void p3_user_from_plain(struct pop3_session *s, const char *b64, size_t len)
{
	unsigned char dec[512];
	int n;
	const unsigned char *authcid, *end;

	if (len == 0 || len > 680 || (len == 1 && b64[0] == '='))
		return;
	n = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)len);
	if (n <= 0)
		return;
	/* message = [authzid] NUL authcid NUL passwd: keep authcid only */
	end = dec + n;
	authcid = memchr(dec, '\0', (size_t)n);
	if (authcid == NULL)
		return;
	authcid++;
	const unsigned char *nul = memchr(authcid, '\0', (size_t)(end - authcid));
	if (nul != NULL)
		p3_set_user(s, (const char *)authcid, (size_t)(nul - authcid));
	OPENSSL_cleanse(dec, sizeof(dec));
}

/* True when the upstream answer of the newest slot decides how to read on. */
static int p3_client_held(struct pop3_session *s)
{
	return s->tail != NULL &&
	       (s->tail->kind == P3K_AUTH || s->tail->kind == P3K_SASL);
}

/* True when a command line holds a CR or NUL before its line ending. */
static int p3_line_unsafe(const struct pop3_cmd *cmd)
{
	size_t n = cmd->line_len;

	if (n > 0 && cmd->line[n - 1] == '\n')
		n--;
	if (n > 0 && cmd->line[n - 1] == '\r')
		n--;
	return memchr(cmd->line, '\r', n) != NULL || memchr(cmd->line, '\0', n) != NULL;
}

/*
 * Parses arguments that must be decimal numbers (RFC 1939 msg and n):
 * returns how many (at most 2) when the whole argument string is exactly
 * that, else -1. No sign, no leading junk, at most 9 digits each: anything
 * else is left for the server to refuse, and is never rewritten.
 */
static int p3_numeric_args(const char *a, size_t len, unsigned long out[2])
{
	int n = 0;
	size_t i = 0;

	while (i < len) {
		unsigned long v = 0;
		size_t digits = 0;

		if (n == 2)
			return -1;
		while (i < len && a[i] >= '0' && a[i] <= '9') {
			if (++digits > 9)
				return -1;
			v = v * 10 + (unsigned long)(a[i++] - '0');
		}
		if (digits == 0)
			return -1;
		out[n++] = v;
		if (i < len && (a[i] != ' ' || ++i == len))
			return -1;
	}
	return n;
}

/* STLS is offered to this client: configured, and not done yet. */
static int p3_client_tls_offered(struct pop3_session *s)
{
	return s->c.tls != NULL &&
	       (s->c.tls->client_mode == CONN_TLS_STARTTLS ||
	        s->c.tls->client_mode == CONN_TLS_REQUIRED) &&
	       !conn_leg_tls(&s->c.client);
}

/* One client line: make its slot and forward it upstream. */
static void p3_command(struct pop3_session *s, const struct pop3_cmd *cmd)
{
	const char *v = cmd->verb;
	struct p3_slot *sl;
	enum p3_kind kind = P3K_SINGLE;
	unsigned long num[2] = {0, 0};
	int nargs = p3_numeric_args(cmd->args, cmd->args_len, num);
	unsigned long n1 = num[0], n2 = num[1];
	int listing = 0, to_retr = 0;
	const char *login = NULL;

	if (!s->sasl && s->c.tls != NULL && s->c.tls->client_mode == CONN_TLS_REQUIRED &&
	    !conn_leg_tls(&s->c.client) &&
	    (strcmp(v, "USER") == 0 || strcmp(v, "PASS") == 0 || strcmp(v, "APOP") == 0 ||
	     strcmp(v, "AUTH") == 0)) {
		/* tls: required: no credentials in plaintext (RFC 3206 [AUTH]) */
		struct p3_slot *ls = p3_slot_add(s, P3K_LOCAL);

		if (ls != NULL)
			p3_set_line(ls, "-ERR [AUTH] TLS required: use STLS first\r\n");
		return;
	}
	if (s->sasl) {
		/* RFC 5034 section 4: a SASL response line; never logged */
		s->sasl = 0;
		kind = P3K_SASL;
		if (s->sasl_plain) {
			size_t n = cmd->line_len;

			while (n > 0 &&
			       (cmd->line[n - 1] == '\n' || cmd->line[n - 1] == '\r'))
				n--;
			s->sasl_plain = 0;
			p3_user_from_plain(s, cmd->line, n);
		}
	} else if (strcmp(v, "RETR") == 0) {
		kind = P3K_RETR;
	} else if (strcmp(v, "TOP") == 0) {
		struct p3_msg *m = nargs == 2 ? p3_msg(s, n1) : NULL;

		kind = P3K_TOP;
		/* RFC 1939 allows TOP before RETR: scan the whole message first */
		to_retr = nargs == 2 && n1 > 0 && (m == NULL || m->known == 0);
	} else if (strcmp(v, "LIST") == 0 || strcmp(v, "UIDL") == 0) {
		listing = v[0] == 'L' ? 1 : 2;
		kind = cmd->args_len == 0 ? P3K_MULTI : P3K_SINGLE;
	} else if (strcmp(v, "CAPA") == 0) {
		kind = P3K_CAPA;
	} else if (strcmp(v, "AUTH") == 0) {
		/* bare AUTH lists mechanisms (RFC 1734 usage) */
		kind = cmd->args_len == 0 ? P3K_MULTI : P3K_AUTH;
		const char *sp = memchr(cmd->args, ' ', cmd->args_len);
		if (sp != NULL && cmd->args_len >= 5 &&
		    strncasecmp(cmd->args, "PLAIN", 5) == 0)
			p3_user_from_plain(s, sp + 1,
			                   cmd->args_len - (size_t)(sp + 1 - cmd->args));
		/* RFC 5034: the response may come after an empty "+ " instead */
		s->sasl_plain =
		    cmd->args_len == 5 && strncasecmp(cmd->args, "PLAIN", 5) == 0;
	} else if (strcmp(v, "QUIT") == 0) {
		kind = P3K_QUIT;
		s->quit_sent = 1;
	} else if (strcmp(v, "STLS") == 0) {
		kind = P3K_LOCAL;
	} else if (strcmp(v, "USER") == 0) {
		p3_set_user(s, cmd->args, cmd->args_len);
	} else if (strcmp(v, "PASS") == 0) {
		login = "pass";
	} else if (strcmp(v, "APOP") == 0) {
		const char *sp = memchr(cmd->args, ' ', cmd->args_len);

		login = "apop";
		p3_set_user(s, cmd->args,
		            sp != NULL ? (size_t)(sp - cmd->args) : cmd->args_len);
	}

	if (kind == P3K_RETR && s->authed && nargs == 1) {
		struct p3_msg *m = p3_msg(s, n1);

		if (m != NULL) {
			m->retrieved = 1;
			s->last_retr = n1;
		}
		if (m != NULL && m->spec != NULL) {
			/* fetched ahead: served from the prefetch, nothing sent */
			struct p3_slot *spec = m->spec;

			sl = p3_slot_add(s, P3K_LOCAL);
			if (sl == NULL)
				return;
			sl->msgno = n1;
			sl->claim = 1;
			log_msg(LOG_LVL_DEBUG, s->base.sid,
			        "pop3 msg=%lu served from prefetch (%s)", n1,
			        spec->retired ? "ready" : "in progress");
			if (spec->retired) {
				p3_move_output(sl, spec);
				p3_spec_free(s, spec);
			} else {
				spec->waiter = sl;
			}
			p3_spec_prune(s);
			p3_prefetch(s, n1);
			return;
		}
		p3_spec_prune(s);
	}
	if (s->authed && nargs == 1 && strcmp(v, "DELE") == 0) {
		struct p3_msg *m = p3_msg(s, n1);

		if (m != NULL) {
			m->deleted = 1;
			p3_spec_prune(s);
		}
	} else if (s->authed && strcmp(v, "RSET") == 0) {
		for (unsigned long i = 0; i < s->nmsgs; i++)
			s->msgs[i].deleted = 0;
	}
	if ((kind == P3K_RETR || kind == P3K_TOP) && s->authed && nargs >= 1) {
		struct p3_msg *m = p3_msg(s, n1);

		if (m != NULL && p3_probe_uidl(s, m, n1) < 0)
			return;
	}
	sl = p3_slot_add(s, kind);
	if (sl == NULL)
		return;
	sl->listing = listing;
	sl->login = login;
	sl->stat = strcmp(v, "STAT") == 0 && cmd->args_len == 0;
	if (kind == P3K_RETR || kind == P3K_TOP)
		sl->msgno = nargs == 1 || (kind == P3K_TOP && nargs == 2) ? n1 : 0;
	if (kind == P3K_TOP) {
		sl->top_lines = n2;
		sl->upstream_retr = to_retr;
	}
	if (kind == P3K_LOCAL) {
		if (p3_client_tls_offered(s)) {
			/* RFC 2595 section 4: TLS begins right after this answer */
			p3_set_line(sl, "+OK Begin TLS negotiation\r\n");
			sl->starttls = 1;
			s->client_tls_wait = 1;
		} else {
			p3_set_line(sl, "-ERR STLS is not available\r\n");
		}
		return;
	}
	if (to_retr) {
		char line[40];
		int ll = snprintf(line, sizeof(line), "RETR %lu\r\n", n1);

		p3_write(s, 0, line, (size_t)ll);
	} else if (p3_write(s, 0, cmd->line, cmd->line_len) == 0 && kind == P3K_RETR &&
	           s->authed && nargs == 1) {
		p3_prefetch(s, n1);
	}
}

/* Parses buffered client input into commands while the queue has room. */
static int p3_client_input(struct pop3_session *s)
{
	size_t pos = 0;
	int progress = 0;

	while (pos < s->c.client.len && !s->closing && !s->client_tls_wait &&
	       conn_upstream_ready(&s->c) && !s->stop_when_idle &&
	       s->nslots < P3_SLOTS_MAX && !p3_client_held(s)) {
		struct pop3_cmd cmd;
		size_t used = 0;
		int r = pop3_cmd_feed(&s->cp, s->c.client.buf + pos,
		                      s->c.client.len - pos, &used, &cmd);

		pos += used;
		progress = 1;
		if (r == POP3_NEED_MORE)
			break;
		if (r == POP3_ERROR) {
			struct p3_slot *sl = p3_slot_add(s, P3K_LOCAL);

			stats_error(STATS_ERR_PROTOCOL);
			if (sl != NULL)
				p3_set_line(sl, "-ERR line too long\r\n");
			continue;
		}
		if (p3_line_unsafe(&cmd)) {
			/* never forward: a server splitting lines at CR would read
			 * a command the proxy did not see */
			struct p3_slot *sl = p3_slot_add(s, P3K_LOCAL);

			stats_error(STATS_ERR_PROTOCOL);
			if (sl != NULL)
				p3_set_line(sl, "-ERR bare CR or NUL in command\r\n");
			continue;
		}
		p3_command(s, &cmd);
	}
	if (pos > 0) {
		memmove(s->c.client.buf, s->c.client.buf + pos, s->c.client.len - pos);
		s->c.client.len -= pos;
	}
	return progress;
}

/* ------------------------------------------------------------------ */
/* reading                                                             */

static void p3_on_read(struct conn_pair *p, struct conn_leg *leg, ssize_t n)
{
	struct pop3_session *s = p3_of(p);

	if (leg == &p->client && n < 0) {
		snprintf(s->reason_buf, sizeof(s->reason_buf), "client: %s",
		         n == UV_EOF ? "closed" : uv_strerror((int)n));
		p3_close(s, s->reason_buf);
		return;
	}
	/* an upstream EOF: answers already buffered are parsed and delivered first */
	if (n < 0 && n != UV_EOF)
		p3_upstream_failed(s, uv_strerror((int)n));
	p3_run(s);
}

/*
 * Starts TLS where a STLS exchange asked for it, between passes (never
 * inside a parse of that leg's buffer). Returns progress.
 */
static int p3_tls_go(struct pop3_session *s)
{
	int r;

	if (s->tls_go_up) {
		s->tls_go_up = 0;
		r = conn_start_tls(&s->c, &s->c.upstream);
		if (r < 0)
			p3_upstream_failed(s, "cannot start TLS");
		return 1;
	}
	if (s->tls_go_client && conn_leg_idle(&s->c.client)) {
		/* "+OK" went out in plaintext; from here on the client speaks TLS */
		s->tls_go_client = 0;
		pop3_cmd_init(&s->cp);
		if (conn_start_tls(&s->c, &s->c.client) < 0)
			p3_close(s, "cannot start TLS");
		return 1;
	}
	return 0;
}

/*
 * The session's driver: parses input on both sides and sends what is ready
 * until nothing moves, then adjusts reading. Re-entrant calls (from write
 * callbacks run inside) only mark that another pass is needed.
 */
static void p3_run(struct pop3_session *s)
{
	if (s->in_run) {
		s->in_run = 2;
		return;
	}
	do {
		s->in_run = 1;
		while (!s->closing) {
			int p = p3_upstream_input(s);

			p |= p3_flush(s);
			p |= p3_client_input(s);
			p |= p3_tls_go(s);
			if (!p)
				break;
		}
	} while (s->in_run == 2 && !s->closing);
	s->in_run = 0;
	if (s->closing)
		return;
	if (s->close_after_flush && conn_leg_idle(&s->c.client)) {
		p3_close(s, s->quit                         ? "quit"
		            : s->end_reason != NULL         ? s->end_reason
		            : s->c.up_state == CONN_UP_GONE ? "upstream closed"
		                                            : "done");
		return;
	}
	if (s->stop_when_idle && s->nslots == 0 && conn_leg_idle(&s->c.client)) {
		p3_close(s, "shutdown");
		return;
	}
	conn_update_reading(&s->c, 1, 1);
}

/* ------------------------------------------------------------------ */
/* timers and connecting                                               */

/* Once a second: the idle clocks (RFC 1939 section 3 autologout, upstream). */
static void p3_on_tick(struct conn_pair *p)
{
	struct pop3_session *s = p3_of(p);
	const struct config *cfg = p3_cfg(s);
	uint64_t now = p3_now(s);

	/*
	 * Waiting on the upstream for an answer (nothing buffered to parse)
	 * counts against the upstream; the clock runs from its last byte or
	 * our last command, whichever came later.
	 */
	if (s->c.up_state == CONN_UP_CONNECTED && s->ucur != NULL &&
	    s->c.upstream.len == 0 &&
	    now - s->c.upstream.last_ms > cfg->timeout_upstream_idle * 1000ull) {
		stats_error(STATS_ERR_TIMEOUT);
		p3_upstream_failed(s, "upstream idle time-out");
		p3_run(s);
		return;
	}
	/* the autologout timer runs only while nothing is pending */
	if (s->nslots == 0 &&
	    now - s->c.client.last_ms > cfg->timeout_client_idle * 1000ull)
		p3_close(s, "client idle time-out");
}

static void p3_on_connected(struct conn_pair *p, int status)
{
	struct pop3_session *s = p3_of(p);

	if (status < 0) {
		conn_write_lit(&s->c, &s->c.client,
		               "-ERR [SYS/TEMP] mailmoat: upstream unavailable\r\n");
		s->end_reason = "upstream unavailable";
		s->close_after_flush = 1;
	}
	p3_run(s);
}

static void p3_on_tls_done(struct conn_pair *p, struct conn_leg *leg, int status)
{
	struct pop3_session *s = p3_of(p);

	if (leg == &p->client) {
		if (status < 0) {
			p3_close(s, "client TLS failed");
			return;
		}
		s->client_tls_wait = 0;
	} else if (status < 0) {
		/* fail closed, with a word to the client */
		conn_write_lit(&s->c, &s->c.client,
		               "-ERR [SYS/TEMP] mailmoat: upstream TLS failed\r\n");
		s->end_reason = "upstream TLS failed";
		s->close_after_flush = 1;
	}
	p3_run(s);
}

static const struct conn_ops p3_conn_ops = {
    .tls_done = p3_on_tls_done,
    .connected = p3_on_connected,
    .read = p3_on_read,
    .written = p3_on_written,
    .tick = p3_on_tick,
    .freed = p3_on_freed,
};

int pop3_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                        uv_stream_t *listener)
{
	struct pop3_session *s = calloc(1, sizeof(*s));
	int r, cr = 0;

	if (s == NULL) {
		conn_refuse(listener);
		return -1;
	}
	s->base.lcfg = lcfg;
	s->base.force_close = p3_force_close;
	s->base.shutdown = p3_shutdown;
	server_session_add(srv, &s->base);
	stats_session_open(STATS_POP3);
	/* input buffers allocated by conn while bytes are held (idle: none) */
	conn_pair_init(&s->c, srv->loop, &p3_conn_ops, s->base.sid, "pop3", NULL,
	               P3_CIN_MAX, NULL, P3_UIN_MAX);
	pop3_cmd_init(&s->cp);
	pop3_resp_init(&s->rp, 0); /* the spool bounds message size, not the parser */

	r = conn_pair_open(&s->c, listener, lcfg, srv->cfg->timeout_connect, &cr);
	if (r < 0) {
		log_msg(LOG_LVL_WARN, s->base.sid, "accept failed: %s", uv_strerror(r));
		p3_close(s, "accept failed");
		return -1;
	}
	server_session_policy(&s->base, s->c.upstream_name, NULL);
	if (p3_slot_add(s, P3K_GREETING) == NULL)
		return -1;
	if (cr < 0) {
		p3_on_connected(&s->c, cr);
		return 0;
	}
	conn_update_reading(&s->c, 1, 1);
	return 0;
}
