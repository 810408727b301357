/*
 * imap_session.c - one IMAP client, its upstream connection, and the
 * scanning of every message whose content the client fetches
 * (RFC 3501, RFC 9051).
 *
 * Both directions go through the segmenter (imap_parse.h): lines, and the
 * literals between their segments. Most of the traffic is relayed as it
 * arrives, byte for byte. What is not:
 *
 *   FETCH responses ("* n FETCH (...)") are captured whole, literals into
 *   spools, and queued in order (the output FIFO). A response that carries
 *   the whole message (BODY[], BODY.PEEK[], RFC822, BINARY[]) is scanned
 *   inline from that literal; a response with other content (sections,
 *   partials) needs a verdict the proxy already has (from the cache, after
 *   a pre-scan, below). When its verdict is clean the response goes out as
 *   received; when the message is quarantined every content literal is
 *   cut from the notice (the whole notice, or the same octet range of it;
 *   a section of the notice other than the whole is NIL); without a
 *   verdict content is never sent (NIL, logged). While the FIFO is not
 *   empty every later line waits in it too, so order is kept.
 *
 *   Client FETCHes of sections or partials (Thunderbird's 64 KiB chunks,
 *   iOS's 393216-byte ones) for messages without a cached verdict are held:
 *   once the client's earlier commands are done, the proxy sends its own
 *   "UID FETCH set (UID BODY.PEEK[])" (never sets \Seen) under its own tag,
 *   scans what comes back, caches the verdicts, and only then forwards the
 *   client's command. Unsolicited responses meanwhile go to the client.
 *
 *   Capabilities the proxy cannot mediate (COMPRESS, STARTTLS until TLS
 *   arrives) are removed from CAPABILITY responses and response codes; the
 *   commands are refused locally.
 *
 * Verdicts live in the process-wide cache (vcache.h) keyed by (upstream,
 * user, mailbox, UIDVALIDITY, UID), so every session of a user sees the
 * same substitute. The session tracks the selected mailbox and its
 * UIDVALIDITY, and maps sequence numbers to UIDs from responses that carry
 * both.
 *
 * Ownership: conn.c owns the sockets; the session owns its FIFO of
 * captures (each owning its parts and spools) and its command list. Scan
 * jobs carry the session id and a capture cookie, never pointers.
 */
#include "proxy/imap_session.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "policy/policy.h"
#include "proxy/conn.h"
#include "proxy/imap_fetch.h"
#include "proxy/imap_parse.h"
#include "proxy/log.h"
#include "proxy/msgjob.h"
#include "proxy/server.h"
#include "proxy/spool.h"
#include "proxy/stats.h"
#include "proxy/vcache.h"

#define IM_IN_MAX 65536          /* each side's input buffer */
#define IM_WQ_HIGH (256u * 1024) /* client output queued before sending pauses */
#define IM_CHUNK 32768           /* literal bytes per client write */
#define IM_TAG_MAX 64
#define IM_MBOX_MAX 512
#define IM_CMDS_MAX 256          /* client commands in flight */
#define IM_FIFO_MAX 64           /* responses queued behind a scan */
#define IM_TEXT_MAX (1u << 20)   /* line text of one captured response */
#define IM_SEQMAP_MAX (1u << 20) /* sequence numbers mapped to UIDs */
#define IM_UIDSET_MAX 4000       /* text of the proxy's own UID set */

enum im_cmd_kind {
	IMC_OTHER,
	IMC_SELECT, /* SELECT / EXAMINE */
	IMC_CLOSE,  /* CLOSE / UNSELECT */
	IMC_AUTH,   /* AUTHENTICATE: client lines are SASL responses until done */
	IMC_LOGIN,
	IMC_IDLE, /* IDLE: the client's DONE line ends it */
	IMC_OWN,  /* the proxy's own pre-scan fetch */
	IMC_COUNT
};

struct im_cmd {
	struct im_cmd *next;
	char tag[IM_TAG_MAX];
	enum im_cmd_kind kind;
	char mailbox[IM_MBOX_MAX];
	uint32_t uidvalidity;
};

enum im_part_type { IMP_TEXT, IMP_LITERAL };

struct im_part {
	struct im_part *next;
	enum im_part_type type;
	char *text; /* TEXT: a segment, literal marker included */
	size_t len;
	struct spool *spool; /* LITERAL */
	/* LITERAL: the attribute it is the value of */
	enum imap_item_kind kind; /* IMAP_ITEM_OTHER for nested strings */
	int content;              /* WHOLE or CONTENT: needs a clean verdict */
	int whole;                /* the whole message, no partial */
	int binary;               /* BINARY[...] */
	int rfc822;               /* 1 RFC822, 2 RFC822.TEXT, 3 RFC822.HEADER */
	int partial;              /* with a partial origin (BODY[]<o>) */
	uint64_t origin;
	int has_sect;   /* a [section] was given (BODY[] has an empty one) */
	char sect[128]; /* the section, upper-cased ("" for BODY[]) */
};

/* How one literal goes out. */
struct im_repl {
	int nil;           /* NIL instead of the literal */
	int original;      /* the literal as received */
	struct spool *src; /* else bytes [off, off + len) of src... */
	char *mem;         /* ...or of mem (a filtered header, owned) */
	uint64_t off, len;
};

enum im_cap_state { IMS_RECV, IMS_SCAN, IMS_READY, IMS_SEND, IMS_STATE_COUNT };

/* A captured response line: its text and literals, in order. */
struct im_capture {
	struct im_capture *next;
	uint64_t cookie;
	enum im_cap_state state;
	struct im_part *parts, *tail;
	size_t text_bytes;
	int fetch;    /* a FETCH response (walked) */
	int own;      /* part of the proxy's own pre-scan: never sent */
	int starttls; /* the client's STARTTLS answer: TLS starts once sent */
	int tagged;   /* the tagged answer of a client command */
	struct imap_fetch_walk walk;
	struct im_part *whole; /* the whole-message literal, if any */
	int n_content;
	int n_header; /* header-only literals: from the notice when quarantined */
	/* the literal being received, and the attribute the next one is for */
	struct im_part *lit;
	int next_attr;
	struct imap_item next_item;
	char next_name[IMAP_ITEM_TEXT_MAX];
	/* outcome */
	int verdict; /* 0 none, 1 clean, 2 substitute */
	int abort;
	struct spool *notice; /* verdict 2: the substitute (a reference) */
	/* sending */
	struct im_part *sp;
	uint64_t soff;
	struct im_repl repl; /* of the literal after the text part being sent */
};

enum im_hold {
	IMH_NONE,
	IMH_WAIT_IDLE, /* a held FETCH waits for the client's earlier commands */
	IMH_OWN,       /* ... then for the proxy's own pre-scan */
	IMH_APPEND,    /* an upload is being scanned, then forwarded */
	IMH_STATE_COUNT
};

/*
 * An APPEND (RFC 3501 section 6.3.11; MULTIAPPEND, RFC 3502) taken whole
 * from the client before anything reaches the server: its line segments
 * and message literals, scanned, then forwarded or refused.
 */
struct im_append {
	char tag[IM_TAG_MAX];
	char mailbox[IM_MBOX_MAX];
	struct im_capture cap; /* the command's parts, in order */
	unsigned scans;        /* literals still being scanned */
	int refused;           /* a message was malicious (or could not be scanned) */
	char why[400];         /* for the NO */
	/* forwarding */
	int forwarding;
	struct im_part *fp; /* the next part to send upstream */
	uint64_t foff;
	int wait_cont; /* a synchronizing literal waits for the server's "+" */
};

/*
 * A segmenter that holds its 64 KiB buffer only while a segment is being
 * read: between lines (nothing held) the parser's state is kept in st and
 * the buffer freed (im_seg_trim), so an idle session costs little.
 */
struct im_seg {
	struct imap_seg_parser *p; /* NULL while trimmed */
	unsigned char st[offsetof(struct imap_seg_parser, buf)];
};

/* A partial the client asked for (BODY[sect]<origin.len>). */
struct im_preq {
	char sect[128];
	int binary;
	uint64_t origin, len;
};

#define IM_PREQ_MAX 32

struct imap_session {
	struct session_base base; /* first: server.c sees only this */
	struct conn_pair c;
	int closing;
	int in_run;
	int stop_when_idle;
	int close_after_flush;
	const char *end_reason;
	char reason_buf[96];

	/* the input buffers are conn's, allocated while bytes flow */
	struct im_seg cseg; /* client -> proxy */
	struct im_seg useg; /* upstream -> proxy */

	/* client side */
	struct im_cmd *cmds; /* commands in flight (oldest first) */
	unsigned ncmds;
	struct im_cmd *sasl; /* AUTHENTICATE in progress */
	struct im_cmd *idle; /* IDLE in progress */
	int cline_relay; /* in a client line being relayed (after its first segment) */
	int cline_drop;  /* in a client line answered locally: drop the rest */
	int client_dead; /* the client broke the protocol: read nothing more */
	int withheld;    /* content went out as NIL since the last tagged answer */
	int greeted;     /* the upstream's greeting went by */
	int client_tls_wait;          /* the client's STARTTLS was answered: TLS next */
	int tls_go_up, tls_go_client; /* start TLS on that leg between passes */
	char tls_tag[IM_TAG_MAX];
	int tls_local_tag; /* the queued local line answers the client's STARTTLS */
	int login_lit;     /* the next client literal is LOGIN's user name */
	size_t login_len;
	enum im_hold hold;
	char *held; /* the held command's first segment */
	size_t held_len;
	struct im_append *app; /* an upload being taken, scanned or forwarded */
	int cline_app;         /* the current client line belongs to app */
	char own_tag[IM_TAG_MAX];
	unsigned own_seq;
	unsigned own_scans; /* own pre-scan captures still scanning */

	/* upstream side */
	int uline; /* 0 at a line start; 1 relaying a line; 2 capturing; 3 dropping */
	struct im_capture *cap;              /* the capture being received */
	struct im_capture *fifo, *fifo_tail; /* output order */
	unsigned nfifo;
	uint64_t cookie_seq;
	uint64_t last_out_ms;

	/* partial lengths the client asked for: a response names only the
	   origin (IM_PREQ_MAX of them, allocated with the first partial) */
	struct im_preq *preq;
	unsigned preq_next;

	/* mailbox state */
	char user[128];
	char user_log[200];
	char mailbox[IM_MBOX_MAX];
	uint32_t uidvalidity;
	int selected;
	uint32_t *seq2uid;
	uint32_t nseq;
};

static void im_run(struct imap_session *s);
static void im_close(struct imap_session *s, const char *reason);

/* (Re)starts g's stream, with or without its buffer. */
static void im_seg_init(struct im_seg *g, uint64_t max_literal)
{
	static struct imap_seg_parser scratch; /* the loop's thread only */

	if (g->p != NULL) {
		imap_seg_init(g->p, max_literal);
		return;
	}
	imap_seg_init(&scratch, max_literal);
	memcpy(g->st, &scratch, sizeof(g->st));
}

/* g's parser, its buffer allocated again if it was trimmed; NULL: no memory. */
static struct imap_seg_parser *im_seg_get(struct im_seg *g)
{
	if (g->p == NULL && (g->p = conn_buf_alloc(sizeof(*g->p))) != NULL)
		memcpy(g->p, g->st, sizeof(g->st));
	return g->p;
}

/*
 * Frees g's buffer when it holds nothing but the bytes the last event
 * handed out (no segment in progress); those are dropped as the next feed
 * would drop them. Only between passes: no event is in use then.
 */
static void im_seg_trim(struct im_seg *g)
{
	struct imap_seg_parser *p = g->p;

	if (p == NULL || p->len != p->drop)
		return;
	p->mk_start = p->mk_start >= p->drop ? p->mk_start - p->drop : 0;
	p->len = p->drop = 0;
	memcpy(g->st, p, sizeof(g->st));
	conn_buf_free(g->p, sizeof(*g->p));
	g->p = NULL;
}

static struct imap_session *im_of(struct conn_pair *p)
{
	return (struct imap_session *)((char *)p - offsetof(struct imap_session, c));
}

static const struct config *im_cfg(struct imap_session *s)
{
	return s->base.cfg;
}

static uint64_t im_now(struct imap_session *s)
{
	return conn_now(&s->c);
}

/* ------------------------------------------------------------------ */
/* captures                                                            */

static void im_capture_free(struct im_capture *cp)
{
	while (cp->parts != NULL) {
		struct im_part *pt = cp->parts;

		cp->parts = pt->next;
		free(pt->text);
		spool_unref(&pt->spool);
		free(pt);
	}
	spool_unref(&cp->notice);
	free(cp->repl.mem);
	free(cp);
}

static struct im_part *im_part_add(struct im_capture *cp, enum im_part_type type)
{
	struct im_part *pt = calloc(1, sizeof(*pt));

	if (pt == NULL)
		return NULL;
	pt->type = type;
	if (cp->tail != NULL)
		cp->tail->next = pt;
	else
		cp->parts = pt;
	cp->tail = pt;
	return pt;
}

/* Appends a segment's text to the capture. Returns 0 or -1 (bound, memory). */
static int im_capture_text(struct im_capture *cp, const char *d, size_t len)
{
	struct im_part *pt;

	if (cp->text_bytes + len > IM_TEXT_MAX)
		return -1;
	pt = im_part_add(cp, IMP_TEXT);
	if (pt == NULL || (pt->text = malloc(len)) == NULL)
		return -1;
	memcpy(pt->text, d, len);
	pt->len = len;
	cp->text_bytes += len;
	return 0;
}

static struct im_capture *im_capture_new(struct imap_session *s, int fetch)
{
	struct im_capture *cp = calloc(1, sizeof(*cp));

	if (cp == NULL)
		return NULL;
	cp->cookie = ++s->cookie_seq;
	cp->fetch = fetch;
	if (fetch)
		imap_fetch_walk_init(&cp->walk);
	return cp;
}

static void im_fifo_push(struct imap_session *s, struct im_capture *cp)
{
	if (s->fifo_tail != NULL)
		s->fifo_tail->next = cp;
	else
		s->fifo = cp;
	s->fifo_tail = cp;
	s->nfifo++;
}

static struct im_capture *im_fifo_find(struct imap_session *s, uint64_t cookie)
{
	for (struct im_capture *cp = s->fifo; cp != NULL; cp = cp->next)
		if (cp->cookie == cookie)
			return cp;
	return NULL;
}

/* Queues a line the proxy answers itself, in order with the upstream's. */
static void im_local_line(struct imap_session *s, const char *line)
{
	struct im_capture *cp = im_capture_new(s, 0);

	if (cp == NULL || im_capture_text(cp, line, strlen(line)) < 0) {
		if (cp != NULL)
			im_capture_free(cp);
		im_close(s, "out of memory");
		return;
	}
	cp->state = IMS_READY;
	im_fifo_push(s, cp);
}

/* ------------------------------------------------------------------ */
/* closing                                                             */

static void im_inflight_orphans(struct imap_session *s);

static void im_on_freed(struct conn_pair *p)
{
	struct imap_session *s = im_of(p);

	im_inflight_orphans(s);

	while (s->fifo != NULL) {
		struct im_capture *cp = s->fifo;

		s->fifo = cp->next;
		im_capture_free(cp);
	}
	if (s->cap != NULL && !s->cap->own)
		im_capture_free(s->cap);
	while (s->cmds != NULL) {
		struct im_cmd *cm = s->cmds;

		s->cmds = cm->next;
		free(cm);
	}
	free(s->held);
	free(s->seq2uid);
	conn_buf_free(s->cseg.p, sizeof(*s->cseg.p));
	conn_buf_free(s->useg.p, sizeof(*s->useg.p));
	free(s->preq);
	if (s->app != NULL) {
		struct im_capture *cp = &s->app->cap;

		while (cp->parts != NULL) {
			struct im_part *pt = cp->parts;

			cp->parts = pt->next;
			free(pt->text);
			spool_unref(&pt->spool);
			free(pt);
		}
		free(s->app);
	}
	stats_session_close(STATS_IMAP);
	server_session_remove(s->base.srv, &s->base);
	free(s);
}

/*
 * Ends the session (idempotent): conn.c closes the sockets and frees the
 * session once the last handle is closed. Scan jobs still running find no
 * session by id and drop their result.
 */
static void im_close(struct imap_session *s, const char *reason)
{
	if (s->closing)
		return;
	s->closing = 1;
	log_msg(LOG_LVL_INFO, s->base.sid, "imap close user=%s reason=\"%s\"",
	        s->user_log[0] ? s->user_log : "-", reason);
	conn_pair_close(&s->c);
}

static void im_force_close(struct session_base *sb, const char *reason)
{
	im_close((struct imap_session *)sb, reason);
}

static void im_shutdown(struct session_base *sb)
{
	struct imap_session *s = (struct imap_session *)sb;

	s->stop_when_idle = 1;
	/* RFC 3501 section 7.1.5: BYE before the server closes the connection */
	if (s->nfifo == 0 && !s->uline)
		conn_write_lit(&s->c, &s->c.client,
		               "* BYE mailmoat is shutting down\r\n");
	s->end_reason = "shutdown";
	s->close_after_flush = 1;
	im_run(s);
}

static int im_write(struct imap_session *s, int to_client, const char *d, size_t len)
{
	int r = conn_write(&s->c, to_client ? &s->c.client : &s->c.upstream, d, len);

	if (r < 0)
		im_close(s, uv_strerror(r));
	else if (to_client)
		s->last_out_ms = im_now(s);
	return r;
}

/* ------------------------------------------------------------------ */
/* mailbox state                                                       */

static void im_seqmap_set(struct imap_session *s, uint32_t seq, uint32_t uid)
{
	if (seq == 0 || seq > IM_SEQMAP_MAX)
		return;
	if (seq > s->nseq) {
		uint32_t n = s->nseq != 0 ? s->nseq : 256;
		uint32_t *m;

		while (n < seq)
			n *= 2;
		m = realloc(s->seq2uid, (size_t)n * sizeof(*m) + sizeof(*m));
		if (m == NULL)
			return;
		memset(m + s->nseq + 1, 0, (size_t)(n - s->nseq) * sizeof(*m));
		s->seq2uid = m;
		s->nseq = n;
	}
	s->seq2uid[seq] = uid;
}

static uint32_t im_seqmap_get(struct imap_session *s, uint32_t seq)
{
	return seq != 0 && seq <= s->nseq ? s->seq2uid[seq] : 0;
}

/* RFC 3501 section 7.4.1: EXPUNGE n renumbers every later message. */
static void im_seqmap_expunge(struct imap_session *s, uint32_t seq)
{
	if (seq == 0 || seq > s->nseq)
		return;
	memmove(s->seq2uid + seq, s->seq2uid + seq + 1,
	        (size_t)(s->nseq - seq) * sizeof(uint32_t));
	s->seq2uid[s->nseq] = 0;
}

static void im_seqmap_clear(struct imap_session *s)
{
	if (s->seq2uid != NULL)
		memset(s->seq2uid, 0, ((size_t)s->nseq + 1) * sizeof(uint32_t));
}

/* The cache key of a message of the selected mailbox; 0 when there is none. */
static int im_key(struct imap_session *s, uint32_t uid, struct vcache_key *k)
{
	/*
	 * Security: without a known user name two accounts could share keys
	 * (and one be served the other's notice): no cache then.
	 */
	if (!s->selected || s->uidvalidity == 0 || uid == 0 || s->user[0] == '\0')
		return 0;
	k->upstream = s->c.upstream_name;
	k->user = s->user;
	k->mailbox = s->mailbox;
	k->uidvalidity = s->uidvalidity;
	k->uid = uid;
	return 1;
}

static const struct vcache_entry *im_cached(struct imap_session *s, uint32_t uid)
{
	struct vcache_key k;
	unsigned db = scan_engine_db_version(s->base.srv->engine);

	return im_key(s, uid, &k) ? vcache_get(s->base.srv->vcache, &k, db) : NULL;
}

/* ------------------------------------------------------------------ */
/* capability filtering                                                */

/* STARTTLS is offered to this client: configured, and not done yet. */
static int im_client_tls_offered(struct imap_session *s)
{
	return s->c.tls != NULL &&
	       (s->c.tls->client_mode == CONN_TLS_STARTTLS ||
	        s->c.tls->client_mode == CONN_TLS_REQUIRED) &&
	       !conn_leg_tls(&s->c.client);
}

/* True for a capability the proxy cannot mediate (it would lose the stream). */
static int im_cap_blocked(struct imap_session *s, const char *w, size_t len)
{
	/* with TLS to the upstream ahead, its plaintext LOGINDISABLED is moot */
	if (len == 13 && strncasecmp(w, "LOGINDISABLED", 13) == 0)
		return s->c.tls != NULL && s->c.tls->upstream_mode == CONN_TLS_STARTTLS;
	/*
	 * CATENATE (RFC 4469) uploads parts by URL: nothing to scan before it
	 * lands; URLAUTH (RFC 4467) hands out content by URLFETCH, PREVIEW and
	 * SNIPPET (RFC 8970) as a quoted extract: neither passes through a
	 * FETCH literal the proxy can scan first.
	 */
	return (len >= 9 && strncasecmp(w, "COMPRESS=", 9) == 0) ||
	       (len == 8 && strncasecmp(w, "STARTTLS", 8) == 0) ||
	       (len == 8 && strncasecmp(w, "CATENATE", 8) == 0) ||
	       (len >= 7 && strncasecmp(w, "URLAUTH", 7) == 0) ||
	       (len >= 7 && strncasecmp(w, "PREVIEW", 7) == 0) ||
	       (len >= 8 && strncasecmp(w, "SNIPPET=", 8) == 0);
}

/*
 * Removes blocked capabilities from a line that lists them ("* CAPABILITY
 * ..." or a "[CAPABILITY ...]" response code). Returns the new length (the
 * line shrinks or stays).
 */
static size_t im_filter_caps_list(struct imap_session *s, char *line, size_t len);

static size_t im_filter_caps(struct imap_session *s, char *line, size_t len)
{
	size_t n = im_filter_caps_list(s, line, len);
	const char *add =
	    im_client_tls_offered(s)
	        ? (s->c.tls->client_mode == CONN_TLS_REQUIRED ? " STARTTLS LOGINDISABLED"
	                                                      : " STARTTLS")
	        : NULL;
	char *end;
	size_t alen;

	if (add == NULL)
		return n;
	/* RFC 3501 section 6.2.1: advertised in the list until TLS is up */
	end =
	    memmem(line, n, "[CAPABILITY ", 12) != NULL
	        ? memchr(memmem(line, n, "[CAPABILITY ", 12), ']',
	                 n - (size_t)((char *)memmem(line, n, "[CAPABILITY ", 12) - line))
	        : NULL;
	if (end == NULL) {
		end = line + n;
		while (end > line && (end[-1] == '\r' || end[-1] == '\n'))
			end--;
	}
	alen = strlen(add);
	memmove(end + alen, end, (size_t)(line + n - end));
	memcpy(end, add, alen); /* the line is counted, not NUL-terminated */
	return n + alen;
}

static size_t im_filter_caps_list(struct imap_session *s, char *line, size_t len)
{
	size_t i = 0, o = 0;
	int in_caps = 0;

	while (i < len) {
		size_t start = i, wl;
		int bracket;

		while (i < len && line[i] != ' ' && line[i] != '\r' && line[i] != '\n')
			i++;
		wl = i - start;
		bracket = wl > 0 && line[start + wl - 1] == ']';
		if (in_caps && im_cap_blocked(s, line + start, bracket ? wl - 1 : wl)) {
			/* drop the word and the space before it; keep a closing ']' */
			if (o > 0 && line[o - 1] == ' ')
				o--;
			if (bracket)
				line[o++] = ']';
		} else {
			memmove(line + o, line + start, wl);
			o += wl;
		}
		if (wl == 10 && strncasecmp(line + start, "CAPABILITY", 10) == 0)
			in_caps = 1;
		else if (wl == 11 && strncasecmp(line + start, "[CAPABILITY", 11) == 0)
			in_caps = 1;
		if (bracket)
			in_caps = 0;
		/* copy the separator(s) */
		while (i < len && (line[i] == ' ' || line[i] == '\r' || line[i] == '\n'))
			line[o++] = line[i++];
	}
	return o;
}

/* ------------------------------------------------------------------ */
/* sending                                                             */

/* The requested length of a partial the client asked for, or 0 if unknown. */
static uint64_t im_preq_len(struct imap_session *s, const struct im_part *lit)
{
	for (unsigned i = 0; s->preq != NULL && i < IM_PREQ_MAX; i++)
		if (s->preq[i].len != 0 && s->preq[i].origin == lit->origin &&
		    s->preq[i].binary == lit->binary &&
		    strcmp(s->preq[i].sect, lit->sect) == 0)
			return s->preq[i].len;
	return 0;
}

/* Upper-cases a section into out (bounded). */
static void im_sect_copy(char *out, size_t cap, const char *sect, size_t len)
{
	size_t n = len < cap - 1 ? len : cap - 1;

	for (size_t i = 0; i < n; i++)
		out[i] =
		    (char)(sect[i] >= 'a' && sect[i] <= 'z' ? sect[i] - 32 : sect[i]);
	out[n] = '\0';
}

/*
 * The header lines of hdr (hdrlen bytes, ending in the blank line) whose
 * field names are (exclude: are not, .NOT) in the section's list, then the blank
 * line, as RFC 3501 section 6.4.5 defines HEADER.FIELDS. Returns a malloc'd
 * buffer, or NULL.
 */
static char *im_header_fields(const char *hdr, size_t hdrlen, const char *sect,
                              int exclude, size_t *len_r)
{
	const char *list = strchr(sect, '(');
	char *out = malloc(hdrlen + 3);
	size_t o = 0, i = 0;
	int keep = 0;

	if (out == NULL || list == NULL) {
		free(out);
		return NULL;
	}
	while (i < hdrlen) {
		const char *nl = memchr(hdr + i, '\n', hdrlen - i);
		size_t ll = nl != NULL ? (size_t)(nl - (hdr + i)) + 1 : hdrlen - i;

		if (ll <= 2 && (hdr[i] == '\r' || hdr[i] == '\n'))
			break; /* the blank line */
		if (hdr[i] != ' ' && hdr[i] != '\t') {
			/* a new field: is its name in the list? */
			const char *colon = memchr(hdr + i, ':', ll);
			size_t nlen = colon != NULL ? (size_t)(colon - (hdr + i)) : 0;
			const char *p = list + 1;

			keep = 0;
			while (nlen > 0 && *p != '\0' && *p != ')') {
				while (*p == ' ' || *p == '"')
					p++;
				size_t wl = strcspn(p, " )\"");
				if (wl == nlen && strncasecmp(p, hdr + i, nlen) == 0)
					keep = 1;
				p += wl;
				while (*p == '"')
					p++;
			}
			keep = exclude ? !keep : keep;
		}
		if (keep) {
			memcpy(out + o, hdr + i, ll);
			o += ll;
		}
		i += ll;
	}
	out[o++] = '\r'; /* the blank line; out is counted, not a string */
	out[o++] = '\n';
	*len_r = o;
	return out;
}

/*
 * How a literal goes out. Clean: as received. Quarantined: cut from the
 * notice (the whole of it, its header, its text, filtered header fields;
 * a partial takes the same range of that section; what the notice lacks
 * is NIL). Without a verdict: content is NIL, a header goes as received.
 */
static void im_replacement(struct imap_session *s, struct im_capture *cp,
                           struct im_part *lit, struct im_repl *r)
{
	char hdr[65536];
	uint64_t nsize, base, slen, o, want;
	ssize_t hn;
	size_t hlen = 0;
	const char *sect = lit->sect;

	free(r->mem);
	memset(r, 0, sizeof(*r));
	if (lit->kind == IMAP_ITEM_OTHER || lit->kind == IMAP_ITEM_SIZE ||
	    lit->kind == IMAP_ITEM_STRUCTURE || cp->verdict == 1 ||
	    (cp->verdict == 0 && lit->kind == IMAP_ITEM_HEADER)) {
		r->original = 1;
		return;
	}
	/*
	 * Tagged (3): only the header differs from the original, so the text
	 * and every numbered part go as the server sent them; the whole
	 * message and header sections come from the tagged copy below.
	 */
	if (cp->verdict == 3 && cp->notice != NULL &&
	    (lit->rfc822 == 2 ||
	     (lit->has_sect &&
	      (strcmp(sect, "TEXT") == 0 || (sect[0] >= '1' && sect[0] <= '9'))))) {
		r->original = 1;
		return;
	}
	if ((cp->verdict != 2 && cp->verdict != 3) || cp->notice == NULL) {
		r->nil = 1; /* no verdict: content is never sent */
		s->withheld = 1;
		return;
	}
	nsize = spool_size(cp->notice);
	hn = spool_pread(cp->notice, hdr, sizeof(hdr), 0);
	if (hn > 0) {
		const char *end = memmem(hdr, (size_t)hn, "\r\n\r\n", 4);

		hlen = end != NULL ? (size_t)(end - hdr) + 4 : (size_t)hn;
	}
	r->src = cp->notice;
	if (lit->rfc822 == 2 || (lit->has_sect && strcmp(sect, "TEXT") == 0) ||
	    (lit->has_sect && !lit->binary && strcmp(sect, "1") == 0)) {
		/* the notice is one text/plain part: part 1 is its text */
		base = hlen;
		slen = nsize - hlen;
	} else if (lit->rfc822 == 3 || (lit->has_sect && strcmp(sect, "HEADER") == 0)) {
		base = 0;
		slen = hlen;
	} else if (lit->rfc822 == 1 || lit->kind == IMAP_ITEM_WHOLE ||
	           (lit->has_sect && sect[0] == '\0')) {
		/* the whole message (BINARY[] too: the notice is 7-bit) */
		base = 0;
		slen = nsize;
	} else if (lit->has_sect && strncmp(sect, "HEADER.FIELDS", 13) == 0) {
		size_t ml = 0;

		r->src = NULL;
		r->mem = im_header_fields(
		    hdr, hlen, sect, strncmp(sect, "HEADER.FIELDS.NOT", 17) == 0, &ml);
		if (r->mem == NULL) {
			r->nil = 1;
			return;
		}
		base = 0;
		slen = ml;
	} else {
		r->nil = 1; /* a part the notice does not have */
		return;
	}
	o = lit->partial ? lit->origin : 0;
	if (o > slen)
		o = slen;
	want = lit->partial ? im_preq_len(s, lit) : 0;
	r->off = base + o;
	r->len = slen - o;
	if (want != 0 && want < r->len)
		r->len = want;
}

/* Writes a text part; when a replaced literal follows, its marker changes. */
static int im_send_text(struct imap_session *s, struct im_capture *cp, struct im_part *pt)
{
	struct im_part *lit = pt->next;
	char marker[48];
	size_t keep;

	if (lit == NULL || lit->type != IMP_LITERAL)
		return im_write(s, 1, pt->text, pt->len);
	im_replacement(s, cp, lit, &cp->repl);
	if (cp->repl.original)
		return im_write(s, 1, pt->text, pt->len);
	/* the segment ends in "{n}\r\n" or "~{n}\r\n": cut it and write a new one */
	keep = pt->len;
	while (keep > 0 && pt->text[keep - 1] != '{')
		keep--;
	if (keep == 0) {
		im_close(s, "internal error: no literal marker");
		return -1;
	}
	keep--;
	if (keep > 0 && pt->text[keep - 1] == '~')
		keep--;
	if (im_write(s, 1, pt->text, keep) < 0)
		return -1;
	if (cp->repl.nil)
		return im_write(s, 1, "NIL", 3);
	snprintf(marker, sizeof(marker), "{%llu}\r\n", (unsigned long long)cp->repl.len);
	return im_write(s, 1, marker, strlen(marker));
}

/*
 * The tagged answer (tag: tl octets) of a client command whose FETCH data
 * went out with content withheld as NIL (no verdict: the scan or the
 * quarantine failed): a temporary error instead of the server's OK, so
 * the client keeps nothing and asks again later (RFC 3501 section 7.1,
 * RFC 5530 UNAVAILABLE). Returns 1 when it wrote that NO, 0 when nothing
 * was withheld, -1 on a write error.
 */
static int im_withheld_answer(struct imap_session *s, const char *tag, size_t tl)
{
	char line[IM_TAG_MAX + 100];
	int n;

	if (!s->withheld)
		return 0;
	s->withheld = 0;
	n = snprintf(
	    line, sizeof(line),
	    "%.*s NO [UNAVAILABLE] mailmoat: message held back, try again later\r\n",
	    (int)(tl < IM_TAG_MAX ? tl : IM_TAG_MAX - 1), tag);
	return im_write(s, 1, line, (size_t)n) < 0 ? -1 : 1;
}

static size_t im_tag_len(const char *d, size_t len);

/*
 * Sends as much of a captured response as the client's write queue allows.
 * Returns 1 when it has been sent completely.
 */
static int im_send_capture(struct imap_session *s, struct im_capture *cp)
{
	static char buf[IM_CHUNK];

	if (cp->own)
		return 1; /* the proxy's own pre-scan: never shown to the client */
	if (cp->tagged && cp->state == IMS_READY && cp->parts != NULL &&
	    cp->parts->type == IMP_TEXT) {
		int r = im_withheld_answer(s, cp->parts->text,
		                           im_tag_len(cp->parts->text, cp->parts->len));

		if (r != 0)
			return r > 0;
	}
	if (cp->state == IMS_READY) {
		cp->state = IMS_SEND;
		cp->sp = cp->parts;
		cp->soff = 0;
	}
	while (cp->sp != NULL && s->c.client.wq < IM_WQ_HIGH && !s->closing) {
		struct im_part *pt = cp->sp;
		struct im_repl *r = &cp->repl;
		uint64_t end, want;
		ssize_t n;

		if (pt->type == IMP_TEXT) {
			if (im_send_text(s, cp, pt) < 0)
				return 0;
			cp->sp = pt->next;
			cp->soff = 0;
			if (cp->sp != NULL && !r->original)
				cp->soff = r->off;
			continue;
		}
		if (r->nil) {
			cp->sp = pt->next;
			continue;
		}
		end = r->original ? spool_size(pt->spool) : r->off + r->len;
		if (cp->soff >= end) {
			cp->sp = pt->next;
			cp->soff = 0;
			continue;
		}
		want = end - cp->soff < sizeof(buf) ? end - cp->soff : sizeof(buf);
		if (r->mem != NULL) {
			memcpy(buf, r->mem + cp->soff, (size_t)want);
			n = (ssize_t)want;
		} else {
			n = spool_pread(r->original ? pt->spool : r->src, buf,
			                (size_t)want, cp->soff);
		}
		if (n <= 0) {
			im_close(s, "spool read failed");
			return 0;
		}
		if (im_write(s, 1, buf, (size_t)n) < 0)
			return 0;
		cp->soff += (uint64_t)n;
	}
	return cp->sp == NULL;
}

/* Sends ready responses at the head of the FIFO, in order. Returns progress. */
static int im_flush(struct imap_session *s)
{
	int progress = 0;

	while (s->fifo != NULL && !s->closing && s->uline != 1) {
		struct im_capture *cp = s->fifo;

		if (cp->state != IMS_READY && cp->state != IMS_SEND)
			break;
		if (cp->abort) {
			log_msg(LOG_LVL_WARN, s->base.sid,
			        "imap policy=abort: closing the client connection");
			s->end_reason = "policy abort";
			s->close_after_flush = 1;
			return 1;
		}
		if (!im_send_capture(s, cp))
			break;
		s->fifo = cp->next;
		if (s->fifo == NULL)
			s->fifo_tail = NULL;
		s->nfifo--;
		if (cp->starttls)
			s->tls_go_client = 1;
		im_capture_free(cp);
		progress = 1;
	}
	return progress;
}

/* ------------------------------------------------------------------ */
/* scanning                                                            */

static void im_held_release(struct imap_session *s);
static void im_hold_progress(struct imap_session *s);
static void im_append_end(struct imap_session *s);
static int im_append_pump(struct imap_session *s);

/*
 * Scans in flight, process-wide, by cache key: a session that needs a
 * message another session is scanning right now waits for that verdict
 * instead of scanning (and quarantining) it a second time. Loop thread only.
 */
struct im_waiter {
	struct im_waiter *next;
	uint64_t session_id;
	uint64_t cookie;
};

struct im_inflight {
	struct im_inflight *next;
	char key[IM_MBOX_MAX + 600];
	struct im_waiter *waiters;
	uint64_t owner; /* the id of the session whose scan this is */
	uint32_t uid;
};

static struct im_inflight *im_inflights;

/* The flattened cache key of uid in the selected mailbox, or 0. */
static int im_key_str(struct imap_session *s, uint32_t uid, char *out, size_t cap)
{
	struct vcache_key k;

	if (!im_key(s, uid, &k))
		return 0;
	snprintf(out, cap, "%zu:%s%zu:%s%zu:%s%u:%u", strlen(k.upstream), k.upstream,
	         strlen(k.user), k.user, strlen(k.mailbox), k.mailbox, k.uidvalidity,
	         k.uid);
	return 1;
}

static struct im_inflight *im_inflight_find(const char *key)
{
	for (struct im_inflight *f = im_inflights; f != NULL; f = f->next)
		if (strcmp(f->key, key) == 0)
			return f;
	return NULL;
}

static void im_fetch_resolved(struct imap_session *s, struct im_capture *cp,
                              const struct vcache_entry *e);
static int im_scan(struct imap_session *s, struct im_capture *cp, uint32_t uid);

/*
 * A waiter whose scan by another session brought no usable verdict scans
 * the message itself; when even that cannot start, the capture goes out
 * without a verdict (withheld).
 */
static void im_scan_self(struct imap_session *s, struct im_capture *cp, uint32_t uid)
{
	if (im_scan(s, cp, uid) < 0) {
		cp->verdict = 0;
		cp->state = IMS_READY;
		if (cp->own && s->own_scans > 0)
			s->own_scans--;
	}
}

/*
 * The scan of key finished in some session (its verdict, if final, is in
 * the cache): every session waiting for it goes on, or scans itself when
 * no verdict came of it.
 */
static void im_inflight_done(struct server *srv, const char *key,
                             const struct vcache_key *k, unsigned db_version)
{
	struct im_inflight **pp = &im_inflights, *f;

	while (*pp != NULL && strcmp((*pp)->key, key) != 0)
		pp = &(*pp)->next;
	if ((f = *pp) == NULL)
		return;
	*pp = f->next;
	while (f->waiters != NULL) {
		struct im_waiter *w = f->waiters;
		struct imap_session *s2 =
		    (struct imap_session *)server_session_find(srv, w->session_id);
		struct im_capture *cp =
		    s2 != NULL && !s2->closing ? im_fifo_find(s2, w->cookie) : NULL;

		f->waiters = w->next;
		free(w);
		if (cp == NULL)
			continue;
		const struct vcache_entry *e = vcache_get(srv->vcache, k, db_version);

		if (e != NULL && (e->result == SCAN_CLEAN || e->notice != NULL))
			im_fetch_resolved(s2, cp, e);
		else
			im_scan_self(s2, cp, k->uid);
		im_run(s2);
	}
	free(f);
}

/*
 * Session s is gone with scans it started still in flight: their results
 * are dropped with it (msgjob_after, or im_job_done while closing), so
 * the sessions waiting for them would wait forever. Each waiter scans for
 * itself instead.
 */
static void im_inflight_orphans(struct imap_session *s)
{
	struct im_inflight **pp = &im_inflights, *f;

	while ((f = *pp) != NULL) {
		if (f->owner != s->base.id) {
			pp = &f->next;
			continue;
		}
		*pp = f->next;
		while (f->waiters != NULL) {
			struct im_waiter *w = f->waiters;
			struct imap_session *s2 =
			    (struct imap_session *)server_session_find(s->base.srv,
			                                               w->session_id);
			struct im_capture *cp = s2 != NULL && !s2->closing
			                            ? im_fifo_find(s2, w->cookie)
			                            : NULL;

			f->waiters = w->next;
			free(w);
			if (cp == NULL)
				continue;
			im_scan_self(s2, cp, f->uid);
			im_run(s2);
		}
		free(f);
		pp = &im_inflights; /* im_run may have changed the list */
	}
}

/* A scan job of a captured whole message is back (loop thread). */
static void im_job_done(struct session_base *sb, struct msgjob *job)
{
	struct imap_session *s = (struct imap_session *)sb;
	struct im_capture *cp = im_fifo_find(s, job->tag);
	const struct scan_verdict *v = &job->verdict;
	struct vcache_entry e;
	struct vcache_key k;
	struct spool *nsp = NULL;
	char sig[SCAN_SIG_MAX + SCAN_ERR_MAX];
	const char *what = v->result == SCAN_ERROR ? v->error : v->signature;
	uint32_t uid = (uint32_t)job->tag2;
	int own = (job->tag2 >> 32) != 0;

	if (s->closing) {
		msgjob_free(&job);
		return;
	}
	if (own && s->own_scans > 0)
		s->own_scans--;
	log_escape(sig, sizeof(sig), what, strlen(what));
	if (job->action == POLICY_QUARANTINE && !job->quar_failed) {
		const struct config *cfg = im_cfg(s);

		nsp = spool_new((size_t)cfg->spool_memory_limit, cfg->spool_dir, 0);
		if (nsp == NULL || spool_append(nsp, job->notice, job->notice_len) < 0 ||
		    spool_freeze(nsp) < 0) {
			spool_unref(&nsp);
			job->quar_failed = 1;
			snprintf(job->quar_err, sizeof(job->quar_err),
			         "cannot spool the notice");
		}
	} else if (job->action == POLICY_TAG && job->subst != NULL) {
		nsp = job->subst; /* the tagged copy */
		spool_ref(nsp);
	}
	log_msg(
	    LOG_LVL_INFO, s->base.sid,
	    "imap user=%s mailbox=\"%s\" uid=%u size=%llu verdict=%s signature=\"%s\" "
	    "action=%s id=%s%s scan_ms=%llu",
	    s->user_log[0] ? s->user_log : "-", s->mailbox, uid,
	    (unsigned long long)spool_size(job->spool), scan_result_name(v->result), sig,
	    v->result == SCAN_CLEAN ? "deliver" : policy_action_name(job->action),
	    job->quar_id[0] ? job->quar_id : "-",
	    job->quar_reused ? " stored=existing" : "", (unsigned long long)v->scan_ms);
	if (job->quar_failed)
		log_msg(LOG_LVL_ERROR, s->base.sid, "imap uid=%u quarantine failed: %s",
		        uid, job->quar_err);

	/* remember it for every session: only clean and quarantined are final */
	memset(&e, 0, sizeof(e));
	e.result = v->result;
	snprintf(e.signature, sizeof(e.signature), "%s", what);
	e.db_version = v->db_version;
	e.size = spool_size(job->spool);
	if ((v->result == SCAN_CLEAN || nsp != NULL) && im_key(s, uid, &k)) {
		snprintf(e.quar_id, sizeof(e.quar_id), "%s", job->quar_id);
		e.notice = nsp;
		e.tagged = job->action == POLICY_TAG;
		e.notice_text = job->notice_text;
		e.notice_lines = job->notice_lines;
		vcache_put(s->base.srv->vcache, &k, &e);
	}
	if (im_key(s, uid, &k)) {
		char key[IM_MBOX_MAX + 600];

		im_key_str(s, uid, key, sizeof(key));
		im_inflight_done(s->base.srv, key, &k, v->db_version);
		if (s->closing) {
			spool_unref(&nsp);
			msgjob_free(&job);
			return;
		}
	}
	if (cp != NULL) {
		if (v->result == SCAN_CLEAN) {
			cp->verdict = 1;
		} else if (job->action == POLICY_ABORT) {
			cp->abort = 1;
		} else if (job->action == POLICY_PASS) {
			/* IMAP cannot add a header without changing sizes: deliver as is
			 */
			cp->verdict = 1;
		} else if (nsp != NULL) {
			cp->verdict = job->action == POLICY_TAG ? 3 : 2;
			cp->notice = nsp;
			spool_ref(nsp);
		} else {
			cp->verdict = 0; /* quarantine failed: content withheld (NIL) */
		}
		cp->state = IMS_READY;
	}
	spool_unref(&nsp);
	msgjob_free(&job);
	if (s->hold == IMH_OWN && s->own_scans == 0 && s->own_tag[0] == '\0')
		im_held_release(s);
	im_run(s);
}

/* Submits the scan of a captured whole-message literal. */
static int im_scan(struct imap_session *s, struct im_capture *cp, uint32_t uid)
{
	struct msgjob *job =
	    msgjob_new(s->base.srv, &s->base, cp->whole->spool, im_job_done);

	if (job == NULL)
		return -1;
	/* the cookie finds the capture; tag2 carries the UID and whether it is ours */
	job->tag = cp->cookie;
	job->tag2 = uid | (cp->own ? 1ull << 32 : 0);
	snprintf(job->protocol, sizeof(job->protocol), "imap");
	snprintf(job->user, sizeof(job->user), "%s", s->user);
	snprintf(job->upstream, sizeof(job->upstream), "%s", s->c.upstream_name);
	snprintf(job->message, sizeof(job->message),
	         "mailbox=%.100s uidvalidity=%u uid=%u", s->mailbox, s->uidvalidity, uid);
	job->pad_to = spool_size(cp->whole->spool);
	if (msgjob_submit(job) < 0) {
		msgjob_free(&job);
		return -1;
	}
	return 0;
}

/* Appends to a growing buffer (out of memory: *oom set). */
static void im_buf_put(char **b, size_t *len, size_t *cap, const char *d, size_t n,
                       int *oom)
{
	if (*oom || n == 0)
		return; /* n == 0: *b may still be NULL, not a memcpy argument */
	if (*b == NULL || *len + n > *cap) {
		size_t nc = (*cap + n) * 2;
		char *nb = realloc(*b, nc);

		if (nb == NULL) {
			*oom = 1;
			return;
		}
		*b = nb;
		*cap = nc;
	}
	memcpy(*b + *len, d, n);
	*len += n;
}

/*
 * For a quarantined message, what describes it describes the notice, in
 * every session: RFC822.SIZE, BINARY.SIZE and BODY / BODYSTRUCTURE in the
 * response's first text part (where servers put them) are rewritten.
 * Values that run past a literal are left as they are.
 */
static void im_describe_notice(struct im_capture *cp, const struct vcache_entry *e)
{
	struct im_part *pt = cp->parts;
	uint64_t size, text, lines;
	size_t pos = 0, copied = 0, olen = 0, ocap = 0;
	char *out = NULL, tmp[512];
	int depth = 0, oom = 0, changed = 0;
	struct imap_tok t;

	if (pt == NULL || pt->type != IMP_TEXT)
		return;
	size = spool_size(e->notice);
	text = e->notice_text;
	lines = e->notice_lines;
	while (imap_tok_next(pt->text, pt->len, &pos, &t) != IMAP_TOK_END &&
	       t.type != IMAP_TOK_ERROR) {
		size_t vstart, vend;
		struct imap_tok v;
		int n;

		if (t.type == IMAP_TOK_LPAREN) {
			depth++;
			continue;
		}
		if (t.type == IMAP_TOK_RPAREN) {
			depth--;
			continue;
		}
		if (depth != 1 || t.type != IMAP_TOK_ATOM)
			continue;
		if (imap_tok_is(&t, "RFC822.SIZE") ||
		    (t.len >= 12 && strncasecmp(t.text, "BINARY.SIZE[", 12) == 0)) {
			if (imap_tok_next(pt->text, pt->len, &pos, &v) != IMAP_TOK_NUMBER)
				break;
			vstart = (size_t)(v.text - pt->text);
			vend = vstart + v.len;
			n = snprintf(tmp, sizeof(tmp), "%llu",
			             (unsigned long long)(t.text[0] == 'R' ||
			                                          t.text[0] == 'r' ||
			                                          t.len == 13
			                                      ? size
			                                      : text));
		} else if (imap_tok_is(&t, "BODYSTRUCTURE") || imap_tok_is(&t, "BODY")) {
			int d = 0;

			if (imap_tok_next(pt->text, pt->len, &pos, &v) != IMAP_TOK_LPAREN)
				break;
			vstart = (size_t)(v.text - pt->text);
			d = 1;
			while (d > 0) {
				enum imap_tok_type ty =
				    imap_tok_next(pt->text, pt->len, &pos, &v);

				if (ty == IMAP_TOK_END || ty == IMAP_TOK_ERROR ||
				    ty == IMAP_TOK_LITERAL)
					break;
				d += ty == IMAP_TOK_LPAREN   ? 1
				     : ty == IMAP_TOK_RPAREN ? -1
				                             : 0;
			}
			if (d > 0)
				break; /* the structure goes on past a literal: left alone
				        */
			vend = pos;
			/* RFC 3501 section 7.4.2: one text/plain part, quoted-printable
			 */
			n = snprintf(
			    tmp, sizeof(tmp),
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL "
			    "\"QUOTED-PRINTABLE\" %llu %llu%s)",
			    (unsigned long long)text, (unsigned long long)lines,
			    imap_tok_is(&t, "BODYSTRUCTURE") ? " NIL NIL NIL NIL" : "");
		} else {
			continue;
		}
		im_buf_put(&out, &olen, &ocap, pt->text + copied, vstart - copied, &oom);
		im_buf_put(&out, &olen, &ocap, tmp, (size_t)n, &oom);
		copied = vend;
		changed = 1;
	}
	if (!changed || oom) {
		free(out);
		return;
	}
	im_buf_put(&out, &olen, &ocap, pt->text + copied, pt->len - copied, &oom);
	if (oom) {
		free(out);
		return;
	}
	cp->text_bytes += olen - pt->len;
	free(pt->text);
	pt->text = out;
	pt->len = olen;
}

/*
 * For a tagged message only RFC822.SIZE changes (the header grew); its
 * structure, part sizes and BINARY.SIZE of parts are the original's.
 */
static void im_describe_tagged(struct im_capture *cp, const struct vcache_entry *e)
{
	struct im_part *pt = cp->parts;
	size_t pos = 0;
	struct imap_tok t, v;
	int depth = 0;

	if (pt == NULL || pt->type != IMP_TEXT)
		return;
	while (imap_tok_next(pt->text, pt->len, &pos, &t) != IMAP_TOK_END &&
	       t.type != IMAP_TOK_ERROR) {
		depth += t.type == IMAP_TOK_LPAREN   ? 1
		         : t.type == IMAP_TOK_RPAREN ? -1
		                                     : 0;
		if (depth != 1 || t.type != IMAP_TOK_ATOM ||
		    !imap_tok_is(&t, "RFC822.SIZE"))
			continue;
		if (imap_tok_next(pt->text, pt->len, &pos, &v) != IMAP_TOK_NUMBER)
			return;
		{
			char num[32];
			int n = snprintf(num, sizeof(num), "%llu",
			                 (unsigned long long)spool_size(e->notice));
			size_t vs = (size_t)(v.text - pt->text), ve = vs + v.len;
			size_t nl = pt->len - v.len + (size_t)n;
			char *out = malloc(nl);

			if (n < 0 || out == NULL) {
				free(out);
				return;
			}
			memcpy(out, pt->text, vs);
			memcpy(out + vs, num, (size_t)n);
			memcpy(out + vs + (size_t)n, pt->text + ve, pt->len - ve);
			cp->text_bytes += nl - pt->len;
			free(pt->text);
			pt->text = out;
			pt->len = nl;
		}
		return;
	}
}

/* A capture's message has a final verdict (from the cache). */
static void im_fetch_resolved(struct imap_session *s, struct im_capture *cp,
                              const struct vcache_entry *e)
{
	cp->verdict = e->result == SCAN_CLEAN ? 1 : e->tagged ? 3 : 2;
	if (cp->verdict >= 2) {
		spool_unref(&cp->notice);
		cp->notice = e->notice;
		spool_ref(cp->notice);
	}
	if (cp->state == IMS_SCAN && cp->own && s->own_scans > 0)
		s->own_scans--;
	cp->state = IMS_READY;
	if (s->hold == IMH_OWN && s->own_scans == 0 && s->own_tag[0] == '\0')
		im_held_release(s);
}

/* A FETCH response was captured whole: decide how it goes out. */
static void im_fetch_complete(struct imap_session *s, struct im_capture *cp)
{
	uint32_t uid = cp->walk.have_uid ? cp->walk.uid : im_seqmap_get(s, cp->walk.seq);
	const struct vcache_entry *e;

	if (cp->walk.have_uid && cp->walk.seq != 0)
		im_seqmap_set(s, cp->walk.seq, cp->walk.uid);
	cp->state = IMS_READY;
	e = uid != 0 ? im_cached(s, uid) : NULL;
	if (e != NULL && e->notice != NULL && !e->tagged)
		im_describe_notice(cp, e);
	else if (e != NULL && e->notice != NULL)
		im_describe_tagged(cp, e);
	if (cp->n_content == 0 && cp->n_header == 0 && !cp->walk.inline_content)
		return;
	if (e != NULL && (e->result == SCAN_CLEAN || e->notice != NULL)) {
		im_fetch_resolved(s, cp, e);
	} else if (cp->whole != NULL) {
		char key[IM_MBOX_MAX + 600];
		struct im_inflight *f = NULL;

		if (im_key_str(s, uid, key, sizeof(key))) {
			f = im_inflight_find(key);
			if (f != NULL) {
				/* another session is scanning it: wait for its verdict */
				struct im_waiter *w = calloc(1, sizeof(*w));

				if (w != NULL) {
					w->session_id = s->base.id;
					w->cookie = cp->cookie;
					w->next = f->waiters;
					f->waiters = w;
					if (cp->own)
						s->own_scans++;
					cp->state = IMS_SCAN;
					return;
				}
			} else if ((f = calloc(1, sizeof(*f))) != NULL) {
				snprintf(f->key, sizeof(f->key), "%s", key);
				f->owner = s->base.id;
				f->uid = uid;
				f->next = im_inflights;
				im_inflights = f;
			}
		}
		if (im_scan(s, cp, uid) < 0) {
			cp->verdict = 0;
			return;
		}
		if (cp->own)
			s->own_scans++;
		cp->state = IMS_SCAN;
		return;
	} else if (cp->n_content == 0 && !cp->walk.inline_content) {
		cp->verdict = 0; /* only headers of an unscanned message: as they are */
		return;
	} else {
		cp->verdict = 0;
		log_msg(LOG_LVL_WARN, s->base.sid,
		        "imap uid=%u seq=%u: content without a verdict withheld (NIL)",
		        uid, cp->walk.seq);
	}
	if (cp->walk.inline_content && cp->verdict != 1) {
		/* content as a quoted string cannot be cut out: never send it */
		log_msg(LOG_LVL_ERROR, s->base.sid,
		        "imap uid=%u: unscanned content inline in a FETCH response", uid);
		im_close(s, "unscannable inline content from upstream");
	}
}

/* ------------------------------------------------------------------ */
/* upstream input                                                      */

/* The tag of a line: up to the first space. */
static size_t im_tag_len(const char *d, size_t len)
{
	size_t i = 0;

	while (i < len && d[i] != ' ' && d[i] != '\r' && d[i] != '\n')
		i++;
	return i;
}

static struct im_cmd *im_cmd_find(struct imap_session *s, const char *tag, size_t tl)
{
	for (struct im_cmd *cm = s->cmds; cm != NULL; cm = cm->next)
		if (strlen(cm->tag) == tl && memcmp(cm->tag, tag, tl) == 0)
			return cm;
	return NULL;
}

static void im_cmd_remove(struct imap_session *s, struct im_cmd *cm)
{
	struct im_cmd **pp = &s->cmds;

	while (*pp != cm)
		pp = &(*pp)->next;
	*pp = cm->next;
	s->ncmds--;
	if (s->sasl == cm)
		s->sasl = NULL;
	if (s->idle == cm)
		s->idle = NULL;
	free(cm);
}

/* A tagged response completed a client command: its effect on our state. */
static void im_tagged(struct imap_session *s, struct im_cmd *cm, const char *d,
                      size_t len)
{
	size_t tl = strlen(cm->tag);
	int ok = len >= tl + 3 && strncasecmp(d + tl + 1, "OK", 2) == 0;

	switch (cm->kind) {
	case IMC_SELECT:
		s->selected = ok;
		im_seqmap_clear(s);
		if (ok) {
			snprintf(s->mailbox, sizeof(s->mailbox), "%s", cm->mailbox);
			s->uidvalidity = cm->uidvalidity;
		}
		break;
	case IMC_CLOSE:
		if (ok) {
			s->selected = 0;
			im_seqmap_clear(s);
		}
		break;
	case IMC_LOGIN:
	case IMC_AUTH:
		if (ok)
			server_session_policy(&s->base, s->c.upstream_name, s->user);
		log_msg(LOG_LVL_INFO, s->base.sid,
		        "imap login user=%s method=%s result=%s",
		        s->user_log[0] ? s->user_log : "-",
		        cm->kind == IMC_LOGIN ? "login" : "authenticate",
		        ok ? "ok" : "failed");
		break;
	default:
		break;
	}
	im_cmd_remove(s, cm);
	if (s->hold == IMH_WAIT_IDLE)
		im_hold_progress(s);
}

/* Untagged data that changes what we know: UIDVALIDITY, EXPUNGE, VANISHED. */
static void im_untagged(struct imap_session *s, const char *d, size_t len)
{
	const char *p = memmem(d, len, "[UIDVALIDITY ", 13);

	if (p != NULL) {
		uint32_t v = (uint32_t)strtoul(p + 13, NULL, 10);

		for (struct im_cmd *cm = s->cmds; cm != NULL; cm = cm->next)
			if (cm->kind == IMC_SELECT)
				cm->uidvalidity = v;
		return;
	}
	if (len > 2 && d[2] >= '0' && d[2] <= '9') {
		char *end;
		unsigned long n = strtoul(d + 2, &end, 10);

		if (strncasecmp(end, " EXPUNGE", 8) == 0)
			im_seqmap_expunge(s, (uint32_t)n);
	} else if (len > 10 && strncasecmp(d, "* VANISHED", 10) == 0) {
		im_seqmap_clear(s); /* UIDs gone, positions unknown: map anew */
	}
}

/* The first segment of an upstream line: how the line is handled. */
static void im_line_start(struct imap_session *s, const struct imap_event *ev)
{
	size_t tl = im_tag_len(ev->data, ev->len);
	uint32_t seq;
	int client_tag = 0;

	if (!s->greeted) {
		s->greeted = 1;
		if (s->c.tls != NULL && s->c.tls->upstream_mode == CONN_TLS_STARTTLS &&
		    !conn_leg_tls(&s->c.upstream)) {
			/* RFC 3501 section 6.2.1: STARTTLS before anything else goes up
			 */
			char line[IM_TAG_MAX + 16];

			snprintf(s->tls_tag, sizeof(s->tls_tag), "mm%s.tls", s->base.sid);
			snprintf(line, sizeof(line), "%s STARTTLS\r\n", s->tls_tag);
			im_write(s, 0, line, strlen(line));
		}
	}
	if (s->tls_tag[0] != '\0' && tl == strlen(s->tls_tag) &&
	    memcmp(ev->data, s->tls_tag, tl) == 0) {
		s->tls_tag[0] = '\0';
		s->uline = 3;
		if (ev->len > tl + 3 && strncasecmp(ev->data + tl + 1, "OK", 2) == 0) {
			s->tls_go_up = 1;
		} else {
			/* fail closed: never carry on in plaintext */
			log_msg(
			    LOG_LVL_WARN, s->base.sid,
			    "imap upstream=%s refused STARTTLS: no plaintext fallback",
			    s->c.upstream_name);
			im_local_line(
			    s,
			    "* BYE [UNAVAILABLE] mailmoat: upstream TLS unavailable\r\n");
			s->end_reason = "upstream refused STARTTLS";
			s->close_after_flush = 1;
		}
		return;
	}
	if (tl == 1 && ev->data[0] == '*' &&
	    imap_is_fetch_response(ev->data, ev->len, &seq)) {
		s->cap = im_capture_new(s, 1);
		if (s->cap == NULL) {
			im_close(s, "out of memory");
			return;
		}
		/* with the proxy's own fetch in flight, whole-message answers are its */
		s->cap->own = s->own_tag[0] != '\0';
		s->uline = 2;
		return;
	}
	if (s->own_tag[0] != '\0' && tl == strlen(s->own_tag) &&
	    memcmp(ev->data, s->own_tag, tl) == 0) {
		/* the end of our own fetch: never shown to the client */
		s->own_tag[0] = '\0';
		s->uline = 3;
		if (s->own_scans == 0)
			im_held_release(s);
		return;
	}
	if (tl == 1 && ev->data[0] == '+' && s->app != NULL && s->app->wait_cont) {
		/* the server asks for the literal the proxy is forwarding */
		s->app->wait_cont = 0;
		s->uline = 3;
		return;
	}
	if (s->app != NULL && s->app->forwarding && tl == strlen(s->app->tag) &&
	    memcmp(ev->data, s->app->tag, tl) == 0) {
		/* refused before all of it went up (no "+"): stop sending */
		im_append_end(s);
	}
	if (tl == 1 && ev->data[0] == '*')
		im_untagged(s, ev->data, ev->len);
	else if (!(tl == 1 && ev->data[0] == '+')) {
		struct im_cmd *cm = im_cmd_find(s, ev->data, tl);

		if (cm != NULL) {
			im_tagged(s, cm, ev->data, ev->len);
			client_tag = 1;
		}
	}
	if (s->nfifo > 0) {
		/* something before it still waits for a scan: queue the line too */
		s->cap = im_capture_new(s, 0);
		if (s->cap == NULL) {
			im_close(s, "out of memory");
			return;
		}
		s->cap->tagged = client_tag;
		s->uline = 2;
		return;
	}
	if (client_tag && im_withheld_answer(s, ev->data, tl) != 0) {
		s->uline = 3; /* the server's answer is replaced: drop it */
		return;
	}
	s->uline = 1;
}

/* Text that lists capabilities gets the blocked ones removed. */
static int im_write_line_text(struct imap_session *s, const struct imap_event *ev,
                              int to_fifo)
{
	char tmp[4096];
	const char *d = ev->data;
	size_t len = ev->len;

	if (ev->end == IMAP_SEG_CRLF && len + 64 <= sizeof(tmp) &&
	    (strncasecmp(d, "* CAPABILITY ", 13) == 0 ||
	     memmem(d, len, "[CAPABILITY ", 12))) {
		memcpy(tmp, d, len);
		len = im_filter_caps(s, tmp, len);
		d = tmp;
	}
	if (to_fifo) {
		if (im_capture_text(s->cap, d, len) < 0) {
			im_close(s, "response line too long");
			return -1;
		}
		return 0;
	}
	return im_write(s, 1, d, len);
}

/* Records which attribute a literal is the value of (it NULL: a nested string). */
static void im_part_describe(struct im_part *pt, const struct imap_item *it,
                             const char *name)
{
	pt->kind = it != NULL ? it->kind : IMAP_ITEM_OTHER;
	if (it == NULL)
		return;
	pt->content = it->kind == IMAP_ITEM_WHOLE || it->kind == IMAP_ITEM_CONTENT;
	pt->whole = it->kind == IMAP_ITEM_WHOLE;
	pt->binary = it->binary;
	pt->partial = it->has_partial;
	pt->origin = it->partial_origin;
	pt->has_sect = it->section != NULL;
	if (it->section != NULL)
		im_sect_copy(pt->sect, sizeof(pt->sect), it->section, it->section_len);
	if (strncasecmp(name, "RFC822.TEXT", 11) == 0)
		pt->rfc822 = 2;
	else if (strncasecmp(name, "RFC822.HEADER", 13) == 0)
		pt->rfc822 = 3;
	else if (strncasecmp(name, "RFC822", 6) == 0 &&
	         (name[6] == '\0' || name[6] == ' '))
		pt->rfc822 = 1;
}

/* One segmenter event of a captured line. */
static int im_capture_event(struct imap_session *s, const struct imap_event *ev)
{
	struct im_capture *cp = s->cap;
	const struct config *cfg = im_cfg(s);

	switch (ev->type) {
	case IMAP_EV_SEGMENT:
		if (cp->fetch) {
			struct imap_item it;
			int r;

			if (ev->end == IMAP_SEG_PART) {
				im_close(s, "FETCH response segment too long");
				return -1;
			}
			r = imap_fetch_walk_segment(&cp->walk, ev->data, ev->len, &it);
			if (r < 0) {
				stats_error(STATS_ERR_PROTOCOL);
				log_msg(LOG_LVL_ERROR, s->base.sid,
				        "imap bad FETCH response: %s",
				        cp->walk.why != NULL ? cp->walk.why
				                             : "malformed");
				im_close(s, "malformed FETCH response from upstream");
				return -1;
			}
			cp->next_attr = r == 1;
			if (r == 1) {
				cp->next_item = it;
				snprintf(cp->next_name, sizeof(cp->next_name), "%.*s",
				         (int)cp->walk.item_len, cp->walk.item_text);
			}
			if (im_capture_text(cp, ev->data, ev->len) < 0) {
				im_close(s, "FETCH response too long");
				return -1;
			}
		} else if (im_write_line_text(s, ev, 1) < 0) {
			return -1;
		}
		if (ev->end == IMAP_SEG_LITERAL) {
			struct im_part *pt = im_part_add(cp, IMP_LITERAL);

			if (pt == NULL ||
			    (pt->spool = spool_new(
			         (size_t)cfg->spool_memory_limit, cfg->spool_dir,
			         cfg->spool_max_message_size)) == NULL) {
				im_close(s, "out of memory");
				return -1;
			}
			spool_expect(pt->spool, ev->literal_size);
			im_part_describe(pt, cp->next_attr ? &cp->next_item : NULL,
			                 cp->next_name);
			cp->next_attr = 0;
			if (pt->content)
				cp->n_content++;
			if (pt->kind == IMAP_ITEM_HEADER)
				cp->n_header++;
			if (pt->whole && cp->whole == NULL)
				cp->whole = pt;
			cp->lit = pt;
		}
		if (ev->end == IMAP_SEG_CRLF) {
			s->cap = NULL;
			s->uline = 0;
			/* only whole-message answers are ours; flag updates go to the
			 * client */
			cp->own = cp->own && cp->whole != NULL;
			if (cp->fetch)
				im_fetch_complete(s, cp);
			else
				cp->state = IMS_READY;
			if (cp->own && cp->whole != NULL) {
				/* ours: scanned for the cache, never sent; freed when
				 * done */
				if (cp->state != IMS_SCAN) {
					im_capture_free(cp);
					return 0;
				}
				cp->state = IMS_SCAN;
			}
			im_fifo_push(s, cp);
		}
		return 0;
	case IMAP_EV_LITERAL_DATA: {
		int r = spool_append(cp->lit->spool, ev->data, ev->len);

		if (r < 0 && r != -EFBIG) {
			stats_error(STATS_ERR_SPOOL);
			im_close(s, "spool write failed");
			return -1;
		}
		return 0;
	}
	case IMAP_EV_LITERAL_END:
		if (spool_overflowed(cp->lit->spool) && cp->lit->content) {
			/* too large to scan or keep whole: never sent (NIL) */
			cp->lit->whole = 0;
			if (cp->whole == cp->lit)
				cp->whole = NULL;
		}
		spool_freeze(cp->lit->spool);
		return 0;
	default:
		return 0;
	}
}

/* Whole messages held in the FIFO (each up to spool.memory_limit in memory). */
static unsigned im_fifo_messages(struct imap_session *s)
{
	unsigned n = 0;

	for (struct im_capture *cp = s->fifo; cp != NULL; cp = cp->next)
		n += cp->whole != NULL;
	return n;
}

/*
 * Parses what the upstream sent. Returns 1 on progress. Pauses while the
 * FIFO is full, holds more whole messages than limits.readahead allows
 * (a mailbox sync streams message by message in bounded memory), or the
 * client's write queue is high.
 */
static int im_upstream_input(struct imap_session *s)
{
	size_t pos = 0;
	int progress = 0;

	while (pos < s->c.upstream.len && !s->closing) {
		struct imap_event ev;
		size_t used = 0;
		int r;

		if (s->tls_go_up || s->nfifo >= IM_FIFO_MAX + 1 ||
		    s->c.client.wq >= IM_WQ_HIGH ||
		    im_fifo_messages(s) > im_cfg(s)->readahead)
			break;
		if (im_seg_get(&s->useg) == NULL) {
			im_close(s, "out of memory");
			return 0;
		}
		r = imap_seg_feed(s->useg.p, s->c.upstream.buf + pos,
		                  s->c.upstream.len - pos, &used, &ev);
		pos += used;
		progress = 1;
		if (r == IMAP_ERROR) {
			stats_error(STATS_ERR_PROTOCOL);
			log_msg(LOG_LVL_ERROR, s->base.sid,
			        "imap upstream protocol error: %s",
			        imap_seg_error(s->useg.p));
			im_close(s, "upstream protocol error");
			return 0;
		}
		if (r == IMAP_NEED_MORE)
			break;
		if (ev.type == IMAP_EV_SEGMENT && s->uline == 0) {
			im_line_start(s, &ev);
			if (s->closing)
				return 0;
		}
		switch (s->uline) {
		case 1: /* relayed as it comes */
			if (ev.type == IMAP_EV_SEGMENT) {
				if (im_write_line_text(s, &ev, 0) < 0)
					return 0;
				if (ev.end == IMAP_SEG_CRLF)
					s->uline = 0;
			} else if (ev.type == IMAP_EV_LITERAL_DATA) {
				im_write(s, 1, ev.data, ev.len);
			}
			break;
		case 2:
			if (im_capture_event(s, &ev) < 0)
				return 0;
			break;
		case 3: /* dropped (our own command's completion) */
			if (ev.type == IMAP_EV_SEGMENT && ev.end == IMAP_SEG_CRLF)
				s->uline = 0;
			break;
		default:
			break;
		}
	}
	conn_consume(&s->c.upstream, pos);
	return progress;
}

/* ------------------------------------------------------------------ */
/* client commands                                                     */

/* A token's value as text: atoms as they are, quoted strings unquoted. */
static void im_tok_text(const struct imap_tok *t, char *out, size_t cap)
{
	size_t o = 0;

	if (t->type == IMAP_TOK_QUOTED) {
		for (size_t i = 1; i + 1 < t->len && o + 1 < cap; i++) {
			if (t->text[i] == '\\' && i + 2 < t->len)
				i++;
			out[o++] = t->text[i];
		}
	} else if (t->type == IMAP_TOK_ATOM || t->type == IMAP_TOK_NUMBER) {
		o = t->len < cap - 1 ? t->len : cap - 1;
		memcpy(out, t->text, o);
	}
	out[o] = '\0';
}

static void im_set_user(struct imap_session *s, const char *name, size_t len)
{
	size_t n = len < sizeof(s->user) - 1 ? len : sizeof(s->user) - 1;

	memcpy(s->user, name, n);
	s->user[n] = '\0';
	log_escape_token(s->user_log, sizeof(s->user_log), name, len);
}

/* The authentication identity of a SASL PLAIN response (RFC 4616): never the password. */
static void im_user_from_plain(struct imap_session *s, const char *b64, size_t len)
{
	unsigned char dec[768];
	const unsigned char *authcid, *nul;
	int n;

	while (len > 0 && (b64[len - 1] == '\r' || b64[len - 1] == '\n'))
		len--;
	if (len == 0 || len > 1000)
		return;
	n = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)len);
	if (n > 0 && (authcid = memchr(dec, '\0', (size_t)n)) != NULL) {
		authcid++;
		nul = memchr(authcid, '\0', (size_t)(dec + n - authcid));
		if (nul != NULL)
			im_set_user(s, (const char *)authcid, (size_t)(nul - authcid));
	}
	OPENSSL_cleanse(dec, sizeof(dec));
}

static struct im_cmd *im_cmd_add(struct imap_session *s, const char *tag, size_t tl,
                                 enum im_cmd_kind kind)
{
	struct im_cmd *cm = calloc(1, sizeof(*cm)), **pp = &s->cmds;

	if (cm == NULL) {
		im_close(s, "out of memory");
		return NULL;
	}
	if (tl >= sizeof(cm->tag))
		tl = sizeof(cm->tag) - 1;
	memcpy(cm->tag, tag, tl);
	cm->kind = kind;
	while (*pp != NULL)
		pp = &(*pp)->next;
	*pp = cm;
	s->ncmds++;
	return cm;
}

struct im_uidset {
	struct imap_session *s;
	char text[IM_UIDSET_MAX + 32];
	size_t len;
	int overflow;
	unsigned checked;
	int seq; /* the set holds sequence numbers */
};

/* Collects the messages of a range that have no cached verdict. */
static int im_uncached_range(uint32_t lo, uint32_t hi, void *ctx)
{
	struct im_uidset *u = ctx;

	for (uint64_t n = lo; n <= hi; n++) {
		uint32_t uid = u->seq ? im_seqmap_get(u->s, (uint32_t)n) : (uint32_t)n;
		const struct vcache_entry *e;

		if (++u->checked > 20000 || uid == 0) {
			u->overflow = 1;
			return 1;
		}
		e = im_cached(u->s, uid);
		if (e != NULL && (e->result == SCAN_CLEAN || e->notice != NULL))
			continue;
		if (u->len > IM_UIDSET_MAX) {
			u->overflow = 1;
			return 1;
		}
		u->len += (size_t)snprintf(u->text + u->len, sizeof(u->text) - u->len,
		                           "%s%u", u->len > 0 ? "," : "", uid);
	}
	return 0;
}

/*
 * Remembers the lengths of the partials a FETCH asks for: a response says
 * only "BODY[]<origin>", and a part cut from a notice must be as long as
 * the client asked, not as long as the original's part was.
 */
static void im_preq_record(struct imap_session *s, int uid, const char *args, size_t len)
{
	static struct imap_fetch_cmd fc; /* large; the loop thread only */
	const unsigned n = IM_PREQ_MAX;

	if (imap_fetch_cmd_parse(uid, args, len, &fc) < 0)
		return;
	for (unsigned i = 0; i < fc.n_items; i++) {
		const struct imap_item *it = &fc.items[i];
		char sect[128] = "";
		unsigned slot = n;

		if (!it->has_partial || it->partial_len == 0)
			continue;
		if (s->preq == NULL &&
		    (s->preq = calloc(IM_PREQ_MAX, sizeof(*s->preq))) == NULL)
			return; /* the notice's part is then cut at the original's length
			         */
		if (it->section != NULL)
			im_sect_copy(sect, sizeof(sect), it->section, it->section_len);
		for (unsigned j = 0; j < n && slot == n; j++)
			if (s->preq[j].origin == it->partial_origin &&
			    s->preq[j].binary == it->binary &&
			    strcmp(s->preq[j].sect, sect) == 0)
				slot = j;
		if (slot == n)
			slot = s->preq_next++ % n;
		snprintf(s->preq[slot].sect, sizeof(s->preq[slot].sect), "%s", sect);
		s->preq[slot].binary = it->binary;
		s->preq[slot].origin = it->partial_origin;
		s->preq[slot].len = it->partial_len;
	}
}

/*
 * Does this FETCH need the proxy's own pre-scan? Fills own (the command
 * the proxy sends) when it does. Whole-message fetches are scanned inline
 * and need none.
 */
static int im_fetch_needs_prescan(struct imap_session *s, int uid, const char *args,
                                  size_t len, char *own, size_t owncap)
{
	static struct imap_fetch_cmd fc; /* large; the loop thread only */
	struct im_uidset u;
	int star;

	int full_header = 0;

	if (imap_fetch_cmd_parse(uid, args, len, &fc) < 0)
		return 0;
	/*
	 * A whole header (RFC822.HEADER, BODY[HEADER]) is how download clients
	 * such as fetchmail start a message: it must match the body that
	 * follows, so it waits for the verdict too. HEADER.FIELDS (a mail
	 * list's columns) does not.
	 */
	for (unsigned i = 0; i < fc.n_items; i++)
		if (fc.items[i].kind == IMAP_ITEM_HEADER &&
		    (fc.items[i].section == NULL ||
		     (fc.items[i].section_len == 6 &&
		      strncasecmp(fc.items[i].section, "HEADER", 6) == 0)))
			full_header = 1;
	if (!fc.any_content && !full_header)
		return 0;
	memset(&u, 0, sizeof(u));
	u.s = s;
	u.seq = !uid;
	star = memchr(fc.set, '*', fc.set_len) != NULL;
	if (!star && s->selected && s->uidvalidity != 0)
		imap_seqset_foreach(fc.set, fc.set_len, 0, im_uncached_range, &u);
	else
		u.overflow = 1;
	if (!u.overflow && u.len == 0)
		return 0; /* every message has its verdict */
	if (!u.overflow)
		snprintf(own, owncap, "UID FETCH %s (UID BODY.PEEK[])", u.text);
	else
		snprintf(own, owncap, "%sFETCH %.*s (UID BODY.PEEK[])", uid ? "UID " : "",
		         (int)(fc.set_len < 2000 ? fc.set_len : 2000), fc.set);
	return 1;
}

/* Sends the proxy's own pre-scan fetch, once the client's commands are done. */
static void im_hold_progress(struct imap_session *s)
{
	char own[IM_UIDSET_MAX + 256], line[IM_UIDSET_MAX + 320];
	const char *sp;
	int n;

	if (s->hold != IMH_WAIT_IDLE || s->ncmds > 0)
		return;
	/* the held command is "tag [UID] FETCH args": recompute the set now */
	sp = memchr(s->held, ' ', s->held_len);
	if (sp == NULL) {
		im_held_release(s);
		return;
	}
	{
		size_t rest = s->held_len - (size_t)(sp + 1 - s->held);
		const char *a = sp + 1;
		int uid = rest > 4 && strncasecmp(a, "UID ", 4) == 0;
		const char *f = uid ? a + 4 : a;
		size_t flen = rest - (size_t)(f - a);

		if (flen < 6 ||
		    !im_fetch_needs_prescan(s, uid, f + 6, flen - 6, own, sizeof(own))) {
			im_held_release(s);
			return;
		}
	}
	snprintf(s->own_tag, sizeof(s->own_tag), "mm%s.%u", s->base.sid, ++s->own_seq);
	n = snprintf(line, sizeof(line), "%s %s\r\n", s->own_tag, own);
	s->hold = IMH_OWN;
	log_msg(LOG_LVL_DEBUG, s->base.sid, "imap pre-scan: %s", own);
	im_write(s, 0, line, (size_t)n);
}

/* Forwards the held client command and resumes reading the client. */
static void im_held_release(struct imap_session *s)
{
	size_t tl;

	if (s->hold == IMH_NONE)
		return;
	s->hold = IMH_NONE;
	tl = im_tag_len(s->held, s->held_len);
	if (im_cmd_add(s, s->held, tl, IMC_OTHER) != NULL)
		im_write(s, 0, s->held, s->held_len);
	free(s->held);
	s->held = NULL;
	s->held_len = 0;
}

/* Frees the upload and lets the client's next commands through. */
static void im_append_end(struct imap_session *s)
{
	struct im_capture *cp = &s->app->cap;

	while (cp->parts != NULL) {
		struct im_part *pt = cp->parts;

		cp->parts = pt->next;
		free(pt->text);
		spool_unref(&pt->spool);
		free(pt);
	}
	free(s->app);
	s->app = NULL;
	s->cline_app = 0;
	if (s->hold == IMH_APPEND)
		s->hold = IMH_NONE;
}

/*
 * Sends the upload upstream part by part. A synchronizing literal waits
 * for the server's "+" (RFC 3501 section 7.5), which the client never sees:
 * it was answered by the proxy already. Returns progress.
 */
static int im_append_pump(struct imap_session *s)
{
	struct im_append *a = s->app;
	static char buf[IM_CHUNK];
	int progress = 0;

	if (a == NULL || !a->forwarding)
		return 0;
	while (a->fp != NULL && !a->wait_cont && s->c.upstream.wq < IM_WQ_HIGH &&
	       !s->closing) {
		struct im_part *pt = a->fp;

		progress = 1;
		if (pt->type == IMP_TEXT) {
			if (im_write(s, 0, pt->text, pt->len) < 0)
				return 0;
			a->fp = pt->next;
			a->foff = 0;
			/* "{n}\r\n" (not "{n+}" / "{n-}"): the server must ask first */
			if (pt->len >= 3 && pt->text[pt->len - 3] == '}' &&
			    a->fp != NULL && pt->text[pt->len - 4] != '+' &&
			    pt->text[pt->len - 4] != '-')
				a->wait_cont = 1;
			continue;
		}
		if (a->foff >= spool_size(pt->spool)) {
			a->fp = pt->next;
			a->foff = 0;
			continue;
		}
		ssize_t n = spool_pread(pt->spool, buf, sizeof(buf), a->foff);

		if (n <= 0) {
			im_close(s, "spool read failed");
			return 0;
		}
		if (im_write(s, 0, buf, (size_t)n) < 0)
			return 0;
		a->foff += (uint64_t)n;
	}
	if (a->fp == NULL) {
		/* all of it is upstream: its tagged answer goes to the client */
		im_append_end(s);
		progress = 1;
	}
	return progress;
}

/* Every message of the upload was scanned: refuse it or send it on. */
static void im_append_decide(struct imap_session *s)
{
	struct im_append *a = s->app;
	char line[IM_TAG_MAX + 512];

	if (a->refused) {
		/* RFC 3501 section 6.3.11: NO, and nothing was appended */
		snprintf(line, sizeof(line), "%s NO [mailmoat] message refused: %s\r\n",
		         a->tag, a->why);
		im_local_line(s, line);
		im_append_end(s);
		return;
	}
	if (im_cmd_add(s, a->tag, strlen(a->tag), IMC_OTHER) == NULL)
		return;
	a->forwarding = 1;
	a->fp = a->cap.parts;
	a->foff = 0;
}

/* The scan of one uploaded message is back (loop thread). */
static void im_append_job_done(struct session_base *sb, struct msgjob *job)
{
	struct imap_session *s = (struct imap_session *)sb;
	struct im_append *a = s->app;
	const struct scan_verdict *v = &job->verdict;
	const char *what = v->result == SCAN_ERROR ? v->error : v->signature;
	char sig[SCAN_SIG_MAX + SCAN_ERR_MAX];

	if (s->closing || a == NULL) {
		msgjob_free(&job);
		return;
	}
	log_escape(sig, sizeof(sig), what, strlen(what));
	log_msg(
	    LOG_LVL_INFO, s->base.sid,
	    "imap append user=%s mailbox=\"%s\" size=%llu verdict=%s signature=\"%s\" "
	    "action=%s id=%s scan_ms=%llu",
	    s->user_log[0] ? s->user_log : "-", a->mailbox,
	    (unsigned long long)spool_size(job->spool), scan_result_name(v->result), sig,
	    v->result == SCAN_CLEAN      ? "deliver"
	    : job->action == POLICY_PASS ? "pass"
	    : job->action == POLICY_TAG  ? "pass (tag: an upload is stored as sent)"
	                                 : "refuse",
	    job->quar_id[0] ? job->quar_id : "-", (unsigned long long)v->scan_ms);
	if (v->result != SCAN_CLEAN && job->action != POLICY_PASS &&
	    job->action != POLICY_TAG && !a->refused) {
		a->refused = 1;
		if (v->result == SCAN_INFECTED)
			snprintf(a->why, sizeof(a->why), "virus %.200s found%s%s", sig,
			         job->quar_id[0] ? ", quarantined as " : "",
			         job->quar_id);
		else if (v->result == SCAN_ERROR)
			snprintf(a->why, sizeof(a->why),
			         "it could not be scanned (%.200s)", sig);
		else
			snprintf(a->why, sizeof(a->why), "%s: %.200s%s%s",
			         scan_result_name(v->result), sig,
			         job->quar_id[0] ? ", quarantined as " : "",
			         job->quar_id);
	}
	msgjob_free(&job);
	if (a->scans > 0 && --a->scans == 0)
		im_append_decide(s);
	im_run(s);
}

/* The whole APPEND command is in: scan each message. */
static void im_append_complete(struct imap_session *s)
{
	struct im_append *a = s->app;

	s->hold = IMH_APPEND;
	s->cline_app = 0;
	for (struct im_part *pt = a->cap.parts; pt != NULL; pt = pt->next) {
		struct msgjob *job;

		if (pt->type != IMP_LITERAL)
			continue;
		if (spool_overflowed(pt->spool)) {
			a->refused = 1;
			snprintf(a->why, sizeof(a->why),
			         "larger than spool.max_message_size");
			continue;
		}
		if (!s->base.policy.scan_append) {
			log_msg(LOG_LVL_INFO, s->base.sid,
			        "imap append user=%s mailbox=\"%s\" size=%llu verdict=- "
			        "action=deliver (scan_append: false)",
			        s->user_log[0] ? s->user_log : "-", a->mailbox,
			        (unsigned long long)spool_size(pt->spool));
			continue;
		}
		job = msgjob_new(s->base.srv, &s->base, pt->spool, im_append_job_done);
		if (job == NULL) {
			a->refused = 1;
			snprintf(a->why, sizeof(a->why), "out of memory");
			continue;
		}
		snprintf(job->protocol, sizeof(job->protocol), "imap");
		snprintf(job->user, sizeof(job->user), "%s", s->user);
		snprintf(job->upstream, sizeof(job->upstream), "%s", s->c.upstream_name);
		snprintf(job->message, sizeof(job->message), "append mailbox=%.100s",
		         a->mailbox);
		job->pad_to = 0;
		if (msgjob_submit(job) < 0) {
			msgjob_free(&job);
			a->refused = 1;
			snprintf(a->why, sizeof(a->why), "it could not be scanned");
			continue;
		}
		a->scans++;
	}
	if (a->scans == 0)
		im_append_decide(s);
}

/* One segmenter event of an APPEND command being taken from the client. */
static void im_append_event(struct imap_session *s, const struct imap_event *ev)
{
	struct im_append *a = s->app;
	const struct config *cfg = im_cfg(s);
	struct im_part *pt;

	if (ev->type == IMAP_EV_LITERAL_DATA) {
		int r = spool_append(a->cap.lit->spool, ev->data, ev->len);

		if (r < 0 && r != -EFBIG)
			im_close(s, "spool write failed");
		return;
	}
	if (ev->type == IMAP_EV_LITERAL_END) {
		spool_freeze(a->cap.lit->spool);
		return;
	}
	if (im_capture_text(&a->cap, ev->data, ev->len) < 0) {
		im_close(s, "APPEND command too long");
		return;
	}
	if (ev->end == IMAP_SEG_LITERAL) {
		pt = im_part_add(&a->cap, IMP_LITERAL);
		if (pt == NULL || (pt->spool = spool_new(
		                       (size_t)cfg->spool_memory_limit, cfg->spool_dir,
		                       cfg->spool_max_message_size)) == NULL) {
			im_close(s, "out of memory");
			return;
		}
		spool_expect(pt->spool, ev->literal_size);
		a->cap.lit = pt;
		/* the proxy takes the message itself, so it answers the "+" */
		if (!ev->nonsync)
			im_local_line(s, "+ Ready for literal data\r\n");
	} else if (ev->end == IMAP_SEG_CRLF) {
		im_append_complete(s);
	}
}

/* Starts taking an APPEND: its first segment. */
static void im_append_start(struct imap_session *s, const struct imap_tok *tag,
                            const struct imap_tok *box, const struct imap_event *ev)
{
	s->app = calloc(1, sizeof(*s->app));
	if (s->app == NULL) {
		im_close(s, "out of memory");
		return;
	}
	snprintf(s->app->tag, sizeof(s->app->tag), "%.*s",
	         (int)(tag->len < IM_TAG_MAX - 1 ? tag->len : IM_TAG_MAX - 1), tag->text);
	im_tok_text(box, s->app->mailbox, sizeof(s->app->mailbox));
	s->cline_app = 1;
	im_append_event(s, ev);
}

/*
 * The first segment of a client command line. Returns 1 when the command
 * is held (the segment is kept, reading stops), 0 when it went upstream or
 * was answered locally.
 */
static int im_command(struct imap_session *s, const struct imap_event *ev)
{
	size_t pos = 0, tl;
	struct imap_tok tag, cmd, a1;
	char word[32], own[IM_UIDSET_MAX + 256];
	enum im_cmd_kind kind = IMC_OTHER;
	struct im_cmd *cm;
	int uid = 0;

	if (imap_tok_next(ev->data, ev->len, &pos, &tag) != IMAP_TOK_ATOM &&
	    tag.type != IMAP_TOK_NUMBER) {
		/* not a command line we understand: the server will say BAD */
		im_write(s, 0, ev->data, ev->len);
		return 0;
	}
	tl = tag.len;
	imap_tok_next(ev->data, ev->len, &pos, &cmd);
	if (imap_tok_is(&cmd, "UID")) {
		uid = 1;
		imap_tok_next(ev->data, ev->len, &pos, &cmd);
	}
	im_tok_text(&cmd, word, sizeof(word));

	if (strcasecmp(word, "STARTTLS") == 0 && im_client_tls_offered(s)) {
		char line[IM_TAG_MAX + 48];

		snprintf(line, sizeof(line), "%.*s OK Begin TLS negotiation now\r\n",
		         (int)(tl < IM_TAG_MAX ? tl : IM_TAG_MAX), tag.text);
		im_local_line(s, line);
		s->fifo_tail->starttls = 1;
		s->client_tls_wait = 1;
		return 1; /* nothing more is read in plaintext */
	}
	if ((strcasecmp(word, "LOGIN") == 0 || strcasecmp(word, "AUTHENTICATE") == 0) &&
	    s->c.tls != NULL && s->c.tls->client_mode == CONN_TLS_REQUIRED &&
	    !conn_leg_tls(&s->c.client)) {
		char line[IM_TAG_MAX + 96];

		snprintf(line, sizeof(line),
		         "%.*s NO [PRIVACYREQUIRED] TLS required: use STARTTLS first\r\n",
		         (int)(tl < IM_TAG_MAX ? tl : IM_TAG_MAX), tag.text);
		im_local_line(s, line);
		s->cline_drop = ev->end != IMAP_SEG_CRLF;
		return 0;
	}
	if (strcasecmp(word, "COMPRESS") == 0 || strcasecmp(word, "STARTTLS") == 0 ||
	    strcasecmp(word, "URLFETCH") == 0) {
		char line[IM_TAG_MAX + 96];

		snprintf(line, sizeof(line),
		         "%.*s NO [CANNOT] %s is not available through this proxy\r\n",
		         (int)(tl < IM_TAG_MAX ? tl : IM_TAG_MAX), tag.text, word);
		im_local_line(s, line);
		s->cline_drop = ev->end != IMAP_SEG_CRLF;
		return 0;
	}
	if (strcasecmp(word, "APPEND") == 0 && !uid && ev->end == IMAP_SEG_LITERAL) {
		struct imap_tok box;
		size_t bpos = pos;

		/* uploads are scanned before they reach the server */
		imap_tok_next(ev->data, ev->len, &bpos, &box);
		im_append_start(s, &tag, &box, ev);
		return 0;
	}
	if (strcasecmp(word, "FETCH") == 0 && ev->end == IMAP_SEG_CRLF)
		im_preq_record(s, uid, ev->data + pos, ev->len - pos);
	if (strcasecmp(word, "FETCH") == 0 && ev->end == IMAP_SEG_CRLF &&
	    im_fetch_needs_prescan(s, uid, ev->data + pos, ev->len - pos, own,
	                           sizeof(own))) {
		s->held = malloc(ev->len);
		if (s->held == NULL) {
			im_close(s, "out of memory");
			return 1;
		}
		memcpy(s->held, ev->data, ev->len);
		s->held_len = ev->len;
		s->hold = IMH_WAIT_IDLE;
		im_hold_progress(s);
		return 1;
	}
	if (strcasecmp(word, "SELECT") == 0 || strcasecmp(word, "EXAMINE") == 0)
		kind = IMC_SELECT;
	else if (strcasecmp(word, "CLOSE") == 0 || strcasecmp(word, "UNSELECT") == 0)
		kind = IMC_CLOSE;
	else if (strcasecmp(word, "AUTHENTICATE") == 0)
		kind = IMC_AUTH;
	else if (strcasecmp(word, "LOGIN") == 0)
		kind = IMC_LOGIN;
	else if (strcasecmp(word, "IDLE") == 0)
		kind = IMC_IDLE;
	cm = im_cmd_add(s, tag.text, tl, kind);
	if (cm == NULL)
		return 1;
	imap_tok_next(ev->data, ev->len, &pos, &a1);
	if (kind == IMC_SELECT)
		im_tok_text(&a1, cm->mailbox, sizeof(cm->mailbox));
	else if (kind == IMC_LOGIN &&
	         (a1.type == IMAP_TOK_ATOM || a1.type == IMAP_TOK_QUOTED)) {
		char u[128];

		im_tok_text(&a1, u, sizeof(u));
		im_set_user(s, u, strlen(u));
	} else if (kind == IMC_LOGIN && a1.type == IMAP_TOK_LITERAL) {
		/* LOGIN {5}: the user name is the literal that follows */
		s->user[0] = s->user_log[0] = '\0';
		s->login_lit = 1;
	} else if (kind == IMC_AUTH) {
		struct imap_tok ir;

		s->sasl = cm;
		/* RFC 4959 SASL-IR: "AUTHENTICATE PLAIN <base64>" */
		if (imap_tok_is(&a1, "PLAIN") &&
		    imap_tok_next(ev->data, ev->len, &pos, &ir) == IMAP_TOK_ATOM)
			im_user_from_plain(s, ir.text, ir.len);
	} else if (kind == IMC_IDLE) {
		s->idle = cm;
	}
	im_write(s, 0, ev->data, ev->len);
	return 0;
}

/* Parses buffered client input. Returns progress. */
static int im_client_input(struct imap_session *s)
{
	size_t pos = 0;
	int progress = 0;

	while (pos < s->c.client.len && !s->closing && !s->client_dead &&
	       !s->client_tls_wait && conn_upstream_ready(&s->c) && s->hold == IMH_NONE &&
	       !s->stop_when_idle && s->ncmds < IM_CMDS_MAX) {
		struct imap_event ev;
		size_t used = 0;
		int r;

		if (im_seg_get(&s->cseg) == NULL) {
			im_close(s, "out of memory");
			return 0;
		}
		r = imap_seg_feed(s->cseg.p, s->c.client.buf + pos, s->c.client.len - pos,
		                  &used, &ev);

		pos += used;
		progress = 1;
		if (r == IMAP_ERROR) {
			/* RFC 3501 section 7.1.5: BYE, then the connection closes */
			stats_error(STATS_ERR_PROTOCOL);
			log_msg(LOG_LVL_WARN, s->base.sid,
			        "imap client protocol error: %s",
			        imap_seg_error(s->cseg.p));
			conn_write_lit(&s->c, &s->c.client,
			               "* BYE malformed literal\r\n");
			s->client_dead = 1;
			s->end_reason = "client protocol error";
			s->close_after_flush = 1;
			pos = s->c.client.len; /* nothing more of it is read */
			break;
		}
		if (r == IMAP_NEED_MORE)
			break;
		if (s->cline_app && !ev.first) {
			im_append_event(s, &ev);
			continue;
		}
		if (s->cline_app && ev.type != IMAP_EV_SEGMENT) {
			im_append_event(s, &ev);
			continue;
		}
		if (ev.type == IMAP_EV_LITERAL_DATA) {
			if (s->login_lit && s->login_len + ev.len < sizeof(s->user)) {
				memcpy(s->user + s->login_len, ev.data, ev.len);
				s->login_len += ev.len;
			}
			if (!s->cline_drop)
				im_write(s, 0, ev.data, ev.len);
			continue;
		}
		if (ev.type == IMAP_EV_LITERAL_END && s->login_lit) {
			/* only the name: the password literal that may follow is not kept
			 */
			s->login_lit = 0;
			s->user[s->login_len] = '\0';
			log_escape_token(s->user_log, sizeof(s->user_log), s->user,
			                 s->login_len);
			s->login_len = 0;
			continue;
		}
		if (ev.type != IMAP_EV_SEGMENT)
			continue;
		if (ev.first && !s->cline_relay && !s->cline_drop && s->sasl == NULL &&
		    s->idle == NULL) {
			if (im_command(s, &ev))
				break;
			if (s->cline_app || s->hold != IMH_NONE)
				continue; /* taken by an APPEND */
		} else if (ev.first && s->sasl != NULL) {
			/* RFC 3501 section 6.2.2: a SASL response line; never logged */
			if (s->user[0] == '\0')
				im_user_from_plain(s, ev.data, ev.len);
			im_write(s, 0, ev.data, ev.len);
		} else if (!s->cline_drop) {
			im_write(s, 0, ev.data, ev.len);
		}
		s->cline_relay = ev.end != IMAP_SEG_CRLF && !s->cline_drop;
		if (ev.end == IMAP_SEG_CRLF)
			s->cline_drop = 0;
	}
	conn_consume(&s->c.client, pos);
	return progress;
}

/* ------------------------------------------------------------------ */
/* driving                                                             */

/* Starts TLS where a STARTTLS exchange asked for it, between passes. */
static int im_tls_go(struct imap_session *s)
{
	if (s->tls_go_up) {
		s->tls_go_up = 0;
		if (conn_start_tls(&s->c, &s->c.upstream) < 0)
			im_close(s, "cannot start upstream TLS");
		return 1;
	}
	if (s->tls_go_client && conn_leg_idle(&s->c.client)) {
		/* the OK went out in plaintext; from here on the client speaks TLS */
		s->tls_go_client = 0;
		im_seg_init(&s->cseg, im_cfg(s)->spool_max_message_size);
		s->cline_relay = s->cline_drop = 0;
		if (conn_start_tls(&s->c, &s->c.client) < 0)
			im_close(s, "cannot start client TLS");
		return 1;
	}
	return 0;
}

static void im_run(struct imap_session *s)
{
	if (s->in_run) {
		s->in_run = 2;
		return;
	}
	do {
		s->in_run = 1;
		while (!s->closing) {
			int p = im_upstream_input(s);

			p |= im_append_pump(s);
			p |= im_flush(s);
			p |= im_client_input(s);
			p |= im_tls_go(s);
			if (!p)
				break;
		}
	} while (s->in_run == 2 && !s->closing);
	s->in_run = 0;
	if (s->closing)
		return;
	if (s->c.upstream.eof && s->c.upstream.len == 0 && s->nfifo == 0 &&
	    !s->close_after_flush) {
		/* everything the upstream sent was handled, its BYE included */
		s->end_reason = "upstream closed";
		s->close_after_flush = 1;
	}
	if (s->close_after_flush && conn_leg_idle(&s->c.client)) {
		im_close(s, s->end_reason != NULL ? s->end_reason : "done");
		return;
	}
	conn_update_reading(&s->c, s->hold == IMH_NONE && !s->client_dead, 1);
}

static void im_on_read(struct conn_pair *p, struct conn_leg *leg, ssize_t n)
{
	struct imap_session *s = im_of(p);

	if (n < 0 && leg == &p->client) {
		snprintf(s->reason_buf, sizeof(s->reason_buf), "client: %s",
		         n == UV_EOF ? "closed" : uv_strerror((int)n));
		im_close(s, s->reason_buf);
		return;
	}
	if (n < 0 && n != UV_EOF) {
		conn_upstream_gone(&s->c);
		snprintf(s->reason_buf, sizeof(s->reason_buf), "upstream: %s",
		         uv_strerror((int)n));
		s->end_reason = s->reason_buf;
		s->close_after_flush = 1;
	}
	im_run(s);
}

static void im_on_written(struct conn_pair *p, struct conn_leg *leg, int status)
{
	struct imap_session *s = im_of(p);

	if (status < 0) {
		snprintf(s->reason_buf, sizeof(s->reason_buf), "%s write: %s",
		         leg == &p->client ? "client" : "upstream", uv_strerror(status));
		im_close(s, s->reason_buf);
		return;
	}
	im_run(s);
}

/*
 * Once a second: keep a waiting client patient (an untagged OK is allowed
 * at any time, RFC 3501 section 7.1), and the idle clocks.
 */
static void im_on_tick(struct conn_pair *p)
{
	struct imap_session *s = im_of(p);
	const struct config *cfg = im_cfg(s);
	uint64_t now = im_now(s);
	int waiting =
	    s->hold != IMH_NONE || (s->fifo != NULL && s->fifo->state == IMS_SCAN);

	/* quiet for a second: the segmenters give their buffers back (conn
	   trims the input buffers the same way) */
	if (now - s->c.client.last_ms >= 1000)
		im_seg_trim(&s->cseg);
	if (now - s->c.upstream.last_ms >= 1000)
		im_seg_trim(&s->useg);

	if (waiting && s->base.policy.keepalive != 0 && s->uline != 1 &&
	    (s->fifo == NULL || s->fifo->state != IMS_SEND) &&
	    now - s->last_out_ms >= s->base.policy.keepalive * 1000ull) {
		im_write(s, 1, "* OK mailmoat: scanning, please wait\r\n", 38);
		return;
	}
	if (s->ncmds > 0 && s->c.upstream.len == 0 && s->idle == NULL &&
	    now - s->c.upstream.last_ms > cfg->timeout_upstream_idle * 1000ull &&
	    !waiting) {
		stats_error(STATS_ERR_TIMEOUT);
		conn_write_lit(&s->c, &s->c.client, "* BYE upstream not answering\r\n");
		s->end_reason = "upstream idle time-out";
		s->close_after_flush = 1;
		im_run(s);
		return;
	}
	/* RFC 3501 section 5.4: an autologout timer of at least 30 minutes when idle */
	if (s->ncmds == 0 && s->nfifo == 0 &&
	    now - s->c.client.last_ms > cfg->timeout_client_idle * 1000ull) {
		conn_write_lit(&s->c, &s->c.client, "* BYE idle time-out\r\n");
		s->end_reason = "client idle time-out";
		s->close_after_flush = 1;
		im_run(s);
	}
}

static void im_on_connected(struct conn_pair *p, int status)
{
	struct imap_session *s = im_of(p);

	if (status < 0) {
		conn_write_lit(&s->c, &s->c.client,
		               "* BYE [UNAVAILABLE] mailmoat: upstream unavailable\r\n");
		s->end_reason = "upstream unavailable";
		s->close_after_flush = 1;
	}
	im_run(s);
}

static void im_on_tls_done(struct conn_pair *p, struct conn_leg *leg, int status)
{
	struct imap_session *s = im_of(p);

	if (leg == &p->client) {
		if (status < 0) {
			im_close(s, "client TLS failed");
			return;
		}
		s->client_tls_wait = 0;
	} else if (status < 0) {
		conn_write_lit(&s->c, &s->c.client,
		               "* BYE [UNAVAILABLE] mailmoat: upstream TLS failed\r\n");
		s->end_reason = "upstream TLS failed";
		s->close_after_flush = 1;
	}
	im_run(s);
}

static const struct conn_ops im_conn_ops = {
    .tls_done = im_on_tls_done,
    .connected = im_on_connected,
    .read = im_on_read,
    .written = im_on_written,
    .tick = im_on_tick,
    .freed = im_on_freed,
};

int imap_session_accept(struct server *srv, const struct cfg_listener *lcfg,
                        uv_stream_t *listener)
{
	struct imap_session *s = calloc(1, sizeof(*s));
	int r, cr = 0;

	if (s == NULL) {
		conn_refuse(listener);
		return -1;
	}
	s->base.lcfg = lcfg;
	s->base.force_close = im_force_close;
	s->base.shutdown = im_shutdown;
	server_session_add(srv, &s->base);
	stats_session_open(STATS_IMAP);
	conn_pair_init(&s->c, srv->loop, &im_conn_ops, s->base.sid, "imap", NULL,
	               IM_IN_MAX, NULL, IM_IN_MAX);
	im_seg_init(&s->cseg, srv->cfg->spool_max_message_size);
	im_seg_init(&s->useg, 0);
	s->last_out_ms = uv_now(srv->loop);

	r = conn_pair_open(&s->c, listener, lcfg, srv->cfg->timeout_connect, &cr);
	if (r < 0) {
		log_msg(LOG_LVL_WARN, s->base.sid, "accept failed: %s", uv_strerror(r));
		im_close(s, "accept failed");
		return -1;
	}
	server_session_policy(&s->base, s->c.upstream_name, NULL);
	if (cr < 0) {
		im_on_connected(&s->c, cr);
		return 0;
	}
	conn_update_reading(&s->c, 1, 1);
	return 0;
}
