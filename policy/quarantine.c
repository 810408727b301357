/*
 * quarantine.c - the on-disk quarantine store (layout in quarantine.h).
 *
 * quar_prepare() runs once at start-up on the main thread. quar_store()
 * runs on the libuv thread pool, one call per quarantined message, several
 * at once: it keeps no state between calls and touches no globals.
 *
 * A store goes through these steps, and undoes the ones done on failure:
 *   1. pick an id ("20261129T063338Z-" and 8 random hex digits: sortable by
 *      time, unique by chance and checked by O_EXCL) whose names are free;
 *   2. create ID.eml.tmp and ID.json.tmp with O_EXCL, mode 0600;
 *   3. copy the spool into ID.eml.tmp, hashing it (SHA-256) on the way;
 *   4. write the metadata into ID.json.tmp; fsync both;
 *   5. rename ID.eml.tmp, then ID.json.tmp, into place without replacing
 *      anything, so a tool that sees ID.json can rely on ID.eml;
 *   6. fsync the directory so both names survive a crash.
 * Only after step 6 is the original safe and may a notice replace it
 * (DESIGN.md invariant 1).
 */
#include "policy/quarantine.h"

#include "proxy/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define QUAR_COPY_CHUNK 65536
#define QUAR_ID_TRIES 8
#define QUAR_NAME_MAX (QUAR_ID_MAX + 16) /* "ID.json.tmp" */

/* Formats "what dir/name: strerror(e)" into err (when there is room for it). */
static void quar_err(char *err, size_t errlen, const char *what, const char *dir,
                     const char *name, int e)
{
	char buf[128];

	if (err == NULL || errlen == 0)
		return;
	/* the GNU strerror_r (we build with _GNU_SOURCE): thread-safe */
	snprintf(err, errlen, "quarantine: %s %s%s%s: %s", what, dir,
	         *name != '\0' ? "/" : "", name, strerror_r(e, buf, sizeof(buf)));
}

/* mkdir that is happy when the directory is already there. */
static int quar_mkdir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0700) == 0)
		return chmod(path, 0700) == 0 ? 0 : -errno; /* umask may have cut it */
	if (errno != EEXIST)
		return -errno;
	if (stat(path, &st) != 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/*
 * Creates dir and its missing parents, each mode 0700 (SECURITY: quarantined
 * mail is readable by no one but the proxy's user), like mkdir -p. An
 * existing directory keeps its mode. Returns 0 when dir is a directory we
 * can write to, else -errno.
 */
int quar_prepare(const char *dir)
{
	char path[PATH_MAX];
	size_t len = dir != NULL ? strlen(dir) : 0;
	char *p;
	int r;

	if (len == 0)
		return -EINVAL;
	if (len >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, len + 1);
	for (p = path + 1; *p != '\0'; p++) {
		if (*p != '/' || p[-1] == '/')
			continue;
		*p = '\0';
		r = quar_mkdir(path);
		*p = '/';
		if (r < 0)
			return r;
	}
	r = quar_mkdir(path);
	if (r < 0)
		return r;
	if (access(path, W_OK | X_OK) != 0)
		return -errno;
	return 0;
}

/* A growing buffer for the JSON text; oom sticks once set. */
struct quar_buf {
	char *p;
	size_t len, cap;
	int oom;
};

static void quar_put(struct quar_buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t ncap = b->cap != 0 ? b->cap : 1024;
		char *np;

		while (ncap < b->len + n)
			ncap *= 2;
		np = realloc(b->p, ncap);
		if (np == NULL) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void quar_puts(struct quar_buf *b, const char *s)
{
	quar_put(b, s, strlen(s));
}

size_t quar_utf8_len(const unsigned char *s, const unsigned char *end)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (s >= end)
		return 0;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if ((size_t)(end - s) < n)
		return 0;
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	return n;
}

/*
 * Appends s as a JSON string (RFC 8259 7), or null for NULL. Control
 * characters are escaped, invalid UTF-8 becomes U+FFFD, and U+2028/2029
 * are escaped too so the text is also safe as JavaScript.
 */
static void quar_json_str(struct quar_buf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	if (s == NULL) {
		quar_puts(b, "null");
		return;
	}
	quar_put(b, "\"", 1);
	const unsigned char *end = p + strlen(s);

	while (*p != '\0') {
		size_t n = quar_utf8_len(p, end);
		char esc[8];

		if (n == 0) {
			quar_puts(b, "\xef\xbf\xbd");
			p++;
			continue;
		}
		if (n == 3 && p[0] == 0xe2 && p[1] == 0x80 &&
		    (p[2] == 0xa8 || p[2] == 0xa9)) {
			quar_puts(b, p[2] == 0xa8 ? "\\u2028" : "\\u2029");
		} else if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			quar_put(b, esc, 2);
		} else if (*p == '\n') {
			quar_puts(b, "\\n");
		} else if (*p == '\r') {
			quar_puts(b, "\\r");
		} else if (*p == '\t') {
			quar_puts(b, "\\t");
		} else if (*p < 0x20 || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			quar_puts(b, esc);
		} else {
			quar_put(b, (const char *)p, n);
		}
		p += n;
	}
	quar_put(b, "\"", 1);
}

/* Appends one "key": "value" member (value may be NULL: null). */
static void quar_json_member(struct quar_buf *b, const char *key, const char *val,
                             int last)
{
	quar_puts(b, "  \"");
	quar_puts(b, key);
	quar_puts(b, "\": ");
	quar_json_str(b, val);
	quar_puts(b, last ? "\n" : ",\n");
}

static int quar_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Fills id_r with a new id for time t. Returns 0 or -errno. */
static int quar_new_id(time_t t, char id_r[QUAR_ID_MAX])
{
	unsigned char rnd[4];
	size_t got = 0;
	struct tm tm;
	char stamp[32];

	while (got < sizeof(rnd)) {
		ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	if (gmtime_r(&t, &tm) == NULL)
		return -EOVERFLOW;
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(id_r, QUAR_ID_MAX, "%s-%02x%02x%02x%02x", stamp, rnd[0], rnd[1], rnd[2],
	         rnd[3]);
	return 0;
}

/* Creates a temporary file exclusively, mode 0600 whatever the umask. */
static int quar_open_tmp(int dfd, const char *name)
{
	int fd =
	    openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);

	if (fd < 0)
		return -errno;
	if (fchmod(fd, 0600) != 0) {
		int e = errno;

		close(fd);
		unlinkat(dfd, name, 0);
		return -e;
	}
	return fd;
}

/*
 * Renames without replacing an existing file. Filesystems without
 * RENAME_NOREPLACE get a check then a plain rename: the id's random part
 * already makes a clash unlikely, the check catches a stale leftover.
 */
static int quar_rename(int dfd, const char *from, const char *to)
{
	if (renameat2(dfd, from, dfd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		return -errno;
	if (faccessat(dfd, to, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return -EEXIST;
	return renameat(dfd, from, dfd, to) == 0 ? 0 : -errno;
}

/* Copies the spool into fd. Returns 0 or -errno (-EIO: short). */
static int quar_copy(int fd, const struct spool *sp, uint64_t size)
{
	char *buf = malloc(QUAR_COPY_CHUNK);
	uint64_t off = 0;
	int r = 0;

	if (buf == NULL)
		return -ENOMEM;
	while (off < size) {
		ssize_t n = spool_pread(sp, buf, QUAR_COPY_CHUNK, off);

		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0) {
			r = -EIO; /* the spool is shorter than it says */
			break;
		}
		r = quar_write_all(fd, buf, (size_t)n);
		if (r < 0)
			break;
		off += (uint64_t)n;
	}
	free(buf);
	return r;
}

/* The SHA-256 of the spool's content as lower-case hex. Returns 0 or -errno. */
int quar_sha256(const struct spool *sp, char hex[65])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char *buf = malloc(QUAR_COPY_CHUNK);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	uint64_t off = 0, size = spool_size(sp);
	int r = 0;

	if (ctx == NULL || buf == NULL ||
	    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		r = -ENOMEM;
		goto out;
	}
	while (off < size) {
		ssize_t n = spool_pread(sp, buf, QUAR_COPY_CHUNK, off);

		if (n <= 0) {
			r = n < 0 ? (int)n : -EIO;
			goto out;
		}
		if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
			r = -ENOMEM;
			goto out;
		}
		off += (uint64_t)n;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
		r = -ENOMEM;
		goto out;
	}
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	hex[64] = '\0';
out:
	free(buf);
	EVP_MD_CTX_free(ctx);
	return r;
}

/*
 * Messages stored by this process, by (sha256, user, upstream): a client
 * that leaves mail on the server and fetches the same message again (a new
 * session, a lost UIDL list) gets the same quarantine entry instead of a
 * new copy each time. Bounded ring, most recently stored or found first
 * out last; lost at restart, which costs one copy.
 *
 * Several sessions of one user may fetch the same new message at once
 * (Thunderbird's connections, two devices): the first store of a key is
 * "pending" while it writes, and the others wait for it instead of writing
 * copies of their own (quar_seen_claim).
 */
#define QUAR_SEEN_MAX 512

struct quar_seen {
	char sha[65];
	char user[128];
	char upstream[300];
	char id[QUAR_ID_MAX];
};

struct quar_pending {
	const char *sha;
	const struct quar_meta *m;
	struct quar_pending *next;
};

static struct quar_seen quar_seen[QUAR_SEEN_MAX];
static unsigned quar_seen_next;
static struct quar_pending *quar_pending_list;
static pthread_mutex_t quar_seen_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t quar_seen_cond = PTHREAD_COND_INITIALIZER;

static const char *quar_str(const char *s)
{
	return s != NULL ? s : "";
}

static int quar_seen_match(const struct quar_seen *e, const char *sha,
                           const struct quar_meta *m)
{
	return e->id[0] != '\0' && strcmp(e->sha, sha) == 0 &&
	       strncmp(e->user, quar_str(m->user), sizeof(e->user) - 1) == 0 &&
	       strncmp(e->upstream, quar_str(m->upstream), sizeof(e->upstream) - 1) == 0;
}

static int quar_pending_match(const struct quar_pending *p, const char *sha,
                              const struct quar_meta *m)
{
	return strcmp(p->sha, sha) == 0 &&
	       strcmp(quar_str(p->m->user), quar_str(m->user)) == 0 &&
	       strcmp(quar_str(p->m->upstream), quar_str(m->upstream)) == 0;
}

/* Call with quar_seen_lock held. */
static void quar_seen_add_locked(const char *sha, const struct quar_meta *m,
                                 const char *id)
{
	struct quar_seen *e = &quar_seen[quar_seen_next++ % QUAR_SEEN_MAX];

	snprintf(e->sha, sizeof(e->sha), "%s", sha);
	snprintf(e->user, sizeof(e->user), "%s", quar_str(m->user));
	snprintf(e->upstream, sizeof(e->upstream), "%s", quar_str(m->upstream));
	snprintf(e->id, sizeof(e->id), "%s", id);
}

/*
 * Either finds the id of an identical message stored earlier and still on
 * disk (returns 1, id in id_r; the entry moves to the ring's head), or
 * claims the key for this store (returns 0; the caller must end with
 * quar_seen_done). Waits while another thread stores the same key.
 */
static int quar_seen_claim(int dfd, const char *sha, const struct quar_meta *m,
                           struct quar_pending *claim, char id_r[QUAR_ID_MAX])
{
	const struct quar_pending *p;
	int found = 0, busy;

	pthread_mutex_lock(&quar_seen_lock);
	for (;;) {
		for (unsigned i = 0; i < QUAR_SEEN_MAX && !found; i++) {
			char eml[QUAR_NAME_MAX];

			if (!quar_seen_match(&quar_seen[i], sha, m))
				continue;
			/* the admin may have released or deleted it meanwhile */
			snprintf(eml, sizeof(eml), "%s.eml", quar_seen[i].id);
			if (faccessat(dfd, eml, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
				memcpy(id_r, quar_seen[i].id, QUAR_ID_MAX);
				found = 1;
				/* still fetched: keep it from aging out of the ring */
				if (&quar_seen[(quar_seen_next - 1) % QUAR_SEEN_MAX] !=
				    &quar_seen[i]) {
					quar_seen[i].id[0] = '\0';
					quar_seen_add_locked(sha, m, id_r);
				}
			}
		}
		if (found)
			break;
		busy = 0;
		for (p = quar_pending_list; p != NULL && !busy; p = p->next)
			busy = quar_pending_match(p, sha, m);
		if (!busy)
			break;
		pthread_cond_wait(&quar_seen_cond, &quar_seen_lock);
	}
	if (!found) {
		claim->sha = sha;
		claim->m = m;
		claim->next = quar_pending_list;
		quar_pending_list = claim;
	}
	pthread_mutex_unlock(&quar_seen_lock);
	return found;
}

/* Ends a claim: remembers id (NULL: the store failed) and wakes waiters. */
static void quar_seen_done(struct quar_pending *claim, const char *id)
{
	struct quar_pending **pp;

	pthread_mutex_lock(&quar_seen_lock);
	for (pp = &quar_pending_list; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == claim) {
			*pp = claim->next;
			break;
		}
	}
	if (id != NULL)
		quar_seen_add_locked(claim->sha, claim->m, id);
	pthread_cond_broadcast(&quar_seen_cond);
	pthread_mutex_unlock(&quar_seen_lock);
}

/* Builds the metadata document into b (check b->oom afterwards). */
static void quar_json(struct quar_buf *b, const char *id, time_t t,
                      const struct quar_meta *m, const struct spool *sp, const char *hex)
{
	char num[32], stamp[32];
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm); /* RFC 3339 */
	quar_puts(b, "{\n");
	quar_json_member(b, "id", id, 0);
	quar_json_member(b, "received_at", stamp, 0);
	quar_json_member(b, "protocol", m->protocol, 0);
	quar_json_member(b, "user", m->user, 0);
	quar_json_member(b, "upstream", m->upstream, 0);
	quar_json_member(b, "signature", m->signature, 0);
	quar_json_member(b, "verdict", m->verdict, 0);
	snprintf(num, sizeof(num), "%" PRIu64, spool_size(sp));
	quar_puts(b, "  \"size\": ");
	quar_puts(b, num);
	quar_puts(b, ",\n");
	/* bytes past the size cap were not captured: say so */
	quar_puts(b, spool_overflowed(sp) ? "  \"truncated\": true,\n"
	                                  : "  \"truncated\": false,\n");
	quar_json_member(b, "sha256", hex, 0);
	quar_json_member(b, "from", m->from, 0);
	quar_json_member(b, "subject", m->subject, 0);
	quar_json_member(b, "session", m->session, 0);
	quar_json_member(b, "message", m->message, 1);
	quar_puts(b, "}\n");
}

/*
 * Stores the frozen spool sp and its metadata m in dir (see quarantine.h).
 * Blocking (fsyncs): call from the thread pool. The spool stays the
 * caller's. On success returns 0 with the id in id_r, or 1 when this
 * process already stored the same bytes for the same user and upstream and
 * that entry is still there (id_r is then its id); on failure returns
 * -1 with a reason in err (no message content in it) and leaves neither
 * temporary nor final files behind.
 */
int quar_store(const char *dir, const struct quar_meta *m, const struct spool *sp,
               char id_r[QUAR_ID_MAX], char *err, size_t errlen)
{
	char id[QUAR_ID_MAX] = "", eml[QUAR_NAME_MAX], json[QUAR_NAME_MAX];
	char eml_tmp[QUAR_NAME_MAX], json_tmp[QUAR_NAME_MAX];
	char hex[65];
	struct quar_buf jb = {0};
	struct quar_pending claim;
	int dfd, efd = -1, jfd = -1, tries, r = 0, claimed = 0;
	int have_etmp = 0, have_jtmp = 0, have_eml = 0, have_json = 0;
	const char *stage = "", *fname = "";
	time_t t = time(NULL);

	if (id_r != NULL)
		id_r[0] = '\0';
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		quar_err(err, errlen, "open", dir, "", errno);
		return -1;
	}
	r = quar_sha256(sp, hex);
	if (r < 0) {
		stage = "read the message for";
		goto fail;
	}
	if (quar_seen_claim(dfd, hex, m, &claim, id_r != NULL ? id_r : id)) {
		close(dfd);
		return 1;
	}
	claimed = 1;

	for (tries = 0; tries < QUAR_ID_TRIES; tries++) {
		r = quar_new_id(t, id);
		if (r < 0) {
			stage = "getrandom";
			goto fail;
		}
		snprintf(eml, sizeof(eml), "%s.eml", id);
		snprintf(json, sizeof(json), "%s.json", id);
		snprintf(eml_tmp, sizeof(eml_tmp), "%s.eml.tmp", id);
		snprintf(json_tmp, sizeof(json_tmp), "%s.json.tmp", id);
		if (faccessat(dfd, eml, F_OK, AT_SYMLINK_NOFOLLOW) == 0 ||
		    faccessat(dfd, json, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
			continue;
		efd = quar_open_tmp(dfd, eml_tmp);
		if (efd == -EEXIST)
			continue;
		if (efd < 0) {
			r = efd;
			stage = "create";
			fname = eml_tmp;
			goto fail;
		}
		have_etmp = 1;
		jfd = quar_open_tmp(dfd, json_tmp);
		if (jfd == -EEXIST) {
			close(efd);
			efd = -1;
			unlinkat(dfd, eml_tmp, 0);
			have_etmp = 0;
			continue;
		}
		if (jfd < 0) {
			r = jfd;
			stage = "create";
			fname = json_tmp;
			goto fail;
		}
		have_jtmp = 1;
		break;
	}
	if (tries == QUAR_ID_TRIES) {
		r = -EEXIST;
		stage = "pick an id in";
		goto fail;
	}

	r = quar_copy(efd, sp, spool_size(sp));
	if (r < 0) {
		stage = "write";
		fname = eml_tmp;
		goto fail;
	}
	quar_json(&jb, id, t, m, sp, hex);
	if (jb.oom) {
		r = -ENOMEM;
		stage = "build metadata for";
		goto fail;
	}
	r = quar_write_all(jfd, jb.p, jb.len);
	if (r < 0) {
		stage = "write";
		fname = json_tmp;
		goto fail;
	}
	if (fsync(efd) != 0 || fsync(jfd) != 0) {
		r = -errno;
		stage = "fsync a file in";
		goto fail;
	}
	r = close(efd) != 0 ? -errno : 0;
	efd = -1;
	if (close(jfd) != 0 && r == 0)
		r = -errno;
	jfd = -1;
	if (r < 0) {
		stage = "close a file in";
		goto fail;
	}

	r = quar_rename(dfd, eml_tmp, eml);
	if (r < 0) {
		stage = "rename to";
		fname = eml;
		goto fail;
	}
	have_etmp = 0;
	have_eml = 1;
	r = quar_rename(dfd, json_tmp, json);
	if (r < 0) {
		stage = "rename to";
		fname = json;
		goto fail;
	}
	have_jtmp = 0;
	have_json = 1;
	if (fsync(dfd) != 0) {
		r = -errno;
		stage = "fsync";
		goto fail;
	}
	close(dfd);
	free(jb.p);
	quar_seen_done(&claim, id);
	if (id_r != NULL)
		memcpy(id_r, id, QUAR_ID_MAX);
	return 0;

fail:
	quar_err(err, errlen, stage, dir, fname, -r);
	if (efd >= 0)
		close(efd);
	if (jfd >= 0)
		close(jfd);
	if (have_etmp)
		unlinkat(dfd, eml_tmp, 0);
	if (have_jtmp)
		unlinkat(dfd, json_tmp, 0);
	if (have_json)
		unlinkat(dfd, json, 0);
	if (have_eml)
		unlinkat(dfd, eml, 0);
	if (have_eml || have_json)
		fsync(dfd); /* best effort: the removals too should stick */
	close(dfd);
	free(jb.p);
	if (claimed)
		quar_seen_done(&claim, NULL);
	return -1;
}
