/*
 * clamav.c - the libclamav scanner behind scan.h.
 *
 * Owns the compiled engine: loaded once from a database directory, shared
 * read-only by every scan (libclamav scans are thread-safe on a compiled
 * engine), freed when the last reference goes. Limits from the
 * configuration are set on the engine; a scan that hits one is reported as
 * a SCAN_ERROR verdict (through libclamav's "exceeds max" heuristic), never
 * as clean; an encrypted archive it cannot look into is SCAN_ENCRYPTED
 * (its encrypted-archive heuristic) unless a real signature hits
 * elsewhere. Called from start-up (load) and from pool threads (scans).
 */
#include "scanners/scan.h"

#include <clamav.h>
#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "proxy/log.h"
#include "scanners/mime.h"

/* Engine loads so far: each compiled engine gets its own generation. */
static atomic_uint clam_generation;

struct scan_engine {
	atomic_int refs;
	struct cl_engine *cl;
	unsigned sigs;
	unsigned db_version; /* libclamav's database version (the .cvd's) */
	unsigned generation; /* this load: every reload makes a new one */
	struct scan_limits lim;
};

static const char *const scan_result_names[] = {
    "clean",         "infected", "error", "encrypted_archive", "blocked_attachment",
    "denied_sender", "oversize"};
_Static_assert(sizeof(scan_result_names) / sizeof(scan_result_names[0]) ==
                   SCAN_RESULT_COUNT,
               "scan result names");

const char *scan_result_name(enum scan_result r)
{
	return (unsigned)r < SCAN_RESULT_COUNT ? scan_result_names[r] : "?";
}

int scan_global_init(void)
{
	cl_error_t r = cl_init(CL_INIT_DEFAULT);

	if (r != CL_SUCCESS) {
		log_msg(LOG_LVL_ERROR, NULL, "clamav init failed: %s", cl_strerror(r));
		return -1;
	}
	return 0;
}

/* True for the file name extensions cl_load() reads from a directory. */
static int clam_is_db_file(const char *name)
{
	static const char *const exts[] = {
	    ".cvd", ".cld", ".cud", ".ndb",  ".ndu", ".hdb",  ".hdu",  ".hsb", ".hsu",
	    ".mdb", ".mdu", ".msb", ".msu",  ".ldb", ".ldu",  ".idb",  ".cdb", ".cbc",
	    ".pdb", ".gdb", ".wdb", ".fp",   ".sfp", ".ign",  ".ign2", ".ftm", ".cfg",
	    ".crb", ".cat", ".yar", ".yara", ".db",  ".info", ".imp",  ".pwdb"};
	const char *dot = strrchr(name, '.');

	if (dot == NULL || name[0] == '.')
		return 0;
	for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++)
		if (strcmp(dot, exts[i]) == 0)
			return 1;
	return 0;
}

/*
 * Logs the database files of dbdir, one line each. Returns how many there
 * are and, in *test_only_r, whether all of them belong to mailmoat's own
 * test signature set (files named mailmoat-test.*).
 */
static unsigned clam_list_files(const char *dbdir, int *test_only_r)
{
	DIR *d = opendir(dbdir);
	struct dirent *de;
	unsigned n = 0, test = 0;

	*test_only_r = 0;
	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		if (!clam_is_db_file(de->d_name))
			continue;
		n++;
		if (strncmp(de->d_name, "mailmoat-test.", 14) == 0)
			test++;
		log_msg(LOG_LVL_INFO, NULL, "clamav database file=%s/%s", dbdir,
		        de->d_name);
	}
	closedir(d);
	*test_only_r = n > 0 && n == test;
	return n;
}

/*
 * Per-scan context: the first name libclamav reports through its callback,
 * of each kind (a signature, an exceeded limit, an encrypted archive).
 */
struct clam_ctx {
	char name[SCAN_SIG_MAX];
	char limit[SCAN_SIG_MAX];
	char encrypted[SCAN_SIG_MAX];
	/* a rule's stricter limits (NULL: none), and what counts against them */
	const struct scan_overrides *ov;
	uint64_t deadline_ms; /* 0: none */
	uint64_t bytes;
	unsigned files;
};

static uint64_t clam_now_ms(void);

/*
 * Called by libclamav for every file it is about to scan (the message, each
 * part, each archive member): a rule's stricter limits. A file over one is
 * not scanned and the limit noted, which makes the verdict a scan error.
 */
static cl_error_t clam_on_file(int fd, const char *type, const char **ancestors,
                               size_t parent_file_size, const char *file_name,
                               size_t file_size, const char *file_buffer,
                               uint32_t recursion_level, uint32_t layer_attributes,
                               void *context)
{
	struct clam_ctx *c = context;
	const struct scan_overrides *ov = c != NULL ? c->ov : NULL;
	const char *hit = NULL;

	(void)fd;
	(void)type;
	(void)ancestors;
	(void)parent_file_size;
	(void)file_name;
	(void)file_buffer;
	(void)layer_attributes;
	if (ov == NULL)
		return CL_CLEAN;
	c->files++;
	c->bytes += file_size;
	if (ov->max_files != 0 && c->files > ov->max_files)
		hit = "MaxFiles";
	else if (ov->max_recursion != 0 && recursion_level > ov->max_recursion)
		hit = "MaxRecursion";
	else if (ov->max_filesize != 0 && file_size > ov->max_filesize)
		hit = "MaxFileSize";
	else if (ov->max_scansize != 0 && c->bytes > ov->max_scansize)
		hit = "MaxScanSize";
	else if (c->deadline_ms != 0 && clam_now_ms() > c->deadline_ms)
		hit = "MaxScanTime";
	if (hit == NULL)
		return CL_CLEAN;
	if (c->limit[0] == '\0')
		snprintf(c->limit, SCAN_SIG_MAX, "Heuristics.Limits.Exceeded.%s (rule)",
		         hit);
	/*
	 * Not CL_BREAK ("trusted, skip"): libclamav would remember this
	 * content as clean in its engine-wide cache, and a later scan of it
	 * without the rule would find it clean there. CL_VIRUS is never
	 * cached as clean; with no signature name the verdict becomes the
	 * limit's scan error (clam_verdict).
	 */
	return CL_VIRUS;
}

static void clam_ctx_init(struct clam_ctx *c, const struct scan_overrides *ov)
{
	memset(c, 0, sizeof(*c));
	c->ov = ov;
	if (ov != NULL && ov->max_scantime_ms != 0)
		c->deadline_ms = clam_now_ms() + ov->max_scantime_ms;
}

/* Records virname in the slot of its kind, unless that slot is taken. */
static void clam_note(struct clam_ctx *c, const char *virname)
{
	char *slot = c->name;

	if (strncmp(virname, "Heuristics.Limits.Exceeded", 26) == 0 ||
	    strncmp(virname, "Detected.By.Callback", 20) == 0) /* clam_on_file's */
		slot = c->limit;
	else if (strncmp(virname, "Heuristics.Encrypted.", 21) == 0)
		slot = c->encrypted; /* .Zip .RAR .7Zip .EGG (.PDF: documents, off) */
	if (slot[0] == '\0')
		snprintf(slot, SCAN_SIG_MAX, "%s", virname);
}

/*
 * libclamav 1.x returns CL_VIRUS with a NULL name for heuristic alerts
 * (such as an exceeded limit) unless a virus-found callback is set: the
 * callback is where the name reliably arrives.
 */
static void clam_on_virus(int fd, const char *virname, void *context)
{
	struct clam_ctx *c = context;

	if (c != NULL && virname != NULL)
		clam_note(c, virname);
}

static void clam_set_limit(struct cl_engine *cl, enum cl_engine_field f, long long v)
{
	if (v > 0)
		cl_engine_set_num(cl, f, v);
}

int scan_engine_load(const char *dbdir, const struct scan_limits *lim,
                     struct scan_engine **eng_r, char *err, size_t errlen)
{
	struct scan_engine *eng;
	unsigned files;
	int test_only, e;
	cl_error_t r;

	*eng_r = NULL;
	files = clam_list_files(dbdir, &test_only);
	if (files == 0) {
		snprintf(err, errlen, "no ClamAV database files in %s", dbdir);
		return -1;
	}
	eng = calloc(1, sizeof(*eng));
	if (eng == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	atomic_init(&eng->refs, 1);
	eng->lim = *lim;
	if (eng->lim.tmpdir[0] == '\0')
		snprintf(eng->lim.tmpdir, sizeof(eng->lim.tmpdir), "/tmp");
	if (eng->lim.max_files == 0)
		eng->lim.max_files = 10000;
	if (eng->lim.max_recursion == 0)
		eng->lim.max_recursion = 17;
	eng->cl = cl_engine_new();
	if (eng->cl == NULL) {
		free(eng);
		snprintf(err, errlen, "cl_engine_new failed");
		return -1;
	}
	clam_set_limit(eng->cl, CL_ENGINE_MAX_FILESIZE, (long long)lim->max_filesize);
	clam_set_limit(eng->cl, CL_ENGINE_MAX_SCANSIZE, (long long)lim->max_scansize);
	clam_set_limit(eng->cl, CL_ENGINE_MAX_RECURSION, lim->max_recursion);
	clam_set_limit(eng->cl, CL_ENGINE_MAX_FILES, lim->max_files);
	clam_set_limit(eng->cl, CL_ENGINE_MAX_SCANTIME, lim->max_scantime_ms);
	cl_engine_set_str(eng->cl, CL_ENGINE_TMPDIR, eng->lim.tmpdir);
	r = cl_load(dbdir, eng->cl, &eng->sigs, CL_DB_STDOPT);
	if (r == CL_SUCCESS)
		r = cl_engine_compile(eng->cl);
	cl_engine_set_clcb_virus_found(eng->cl, clam_on_virus);
	if (lim->per_scan_limits)
		cl_engine_set_clcb_file_inspection(eng->cl, clam_on_file);
	if (r != CL_SUCCESS) {
		snprintf(err, errlen, "loading %s: %s", dbdir, cl_strerror(r));
		cl_engine_free(eng->cl);
		free(eng);
		return -1;
	}
	eng->db_version = (unsigned)cl_engine_get_num(eng->cl, CL_ENGINE_DB_VERSION, &e);
	eng->generation = (unsigned)atomic_fetch_add(&clam_generation, 1) + 1;
	log_msg(LOG_LVL_INFO, NULL,
	        "clamav engine loaded dir=%s files=%u signatures=%u db_version=%u "
	        "libclamav=%s",
	        dbdir, files, eng->sigs, eng->db_version, cl_retver());
	if (test_only) {
		/* Loud on purpose: a gateway scanning with EICAR only protects nobody. */
		log_msg(
		    LOG_LVL_WARN, NULL,
		    "clamav ONLY THE MAILMOAT TEST SIGNATURE SET IS LOADED (%u "
		    "signatures): "
		    "real malware will NOT be detected; point scanner.clamav.database at "
		    "/var/lib/clamav in production",
		    eng->sigs);
	}
	*eng_r = eng;
	return 0;
}

void scan_engine_ref(struct scan_engine *eng)
{
	atomic_fetch_add(&eng->refs, 1);
}

void scan_engine_unref(struct scan_engine **engp)
{
	struct scan_engine *eng = *engp;

	*engp = NULL;
	if (eng == NULL || atomic_fetch_sub(&eng->refs, 1) != 1)
		return;
	cl_engine_free(eng->cl);
	free(eng);
}

unsigned scan_engine_clamav_version(const struct scan_engine *eng)
{
	return eng->db_version;
}

unsigned scan_engine_db_version(const struct scan_engine *eng)
{
	/* what verdicts are tied to: a reload (new signatures) invalidates them */
	return eng->generation;
}

unsigned scan_engine_signatures(const struct scan_engine *eng)
{
	return eng->sigs;
}

static uint64_t clam_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/*
 * Every parser on (a message's threat hides in its MIME parts and archives),
 * the heuristic that turns a hit limit into an alert, so a limit never
 * silently reads as clean, and the one that flags an encrypted archive.
 * Neither ALLMATCHES nor HEURISTIC_PRECEDENCE: libclamav then holds a
 * heuristic alert back, scans on, and reports a real signature found later
 * instead (checked with 1.4: an encrypted entry before a clear EICAR entry
 * in one zip, or an encrypted zip part before an EICAR part, give EICAR).
 */
static void clam_options(struct cl_scan_options *o)
{
	memset(o, 0, sizeof(*o));
	o->general = CL_SCAN_GENERAL_HEURISTICS;
	o->parse = ~0u;
	o->heuristic =
	    CL_SCAN_HEURISTIC_EXCEEDS_MAX | CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE;
}

/*
 * Turns libclamav's answer into a verdict: a signature makes it INFECTED,
 * else an exceeded limit an ERROR (part of the message went unscanned,
 * whatever the policy for encrypted archives), else an encrypted archive
 * ENCRYPTED.
 */
static void clam_verdict(cl_error_t r, const char *virname, struct clam_ctx *c,
                         struct scan_verdict *v)
{
	if (r == CL_VIRUS && virname != NULL)
		clam_note(c, virname);
	if (r == CL_VIRUS && c->name[0] == '\0' && c->limit[0] != '\0') {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error), "limit exceeded (%.200s)", c->limit);
	} else if (r == CL_VIRUS && c->name[0] == '\0' && c->encrypted[0] != '\0') {
		v->result = SCAN_ENCRYPTED;
		snprintf(v->signature, sizeof(v->signature), "%s", c->encrypted);
		snprintf(v->error, sizeof(v->error), "encrypted archive (%.200s)",
		         c->encrypted);
	} else if (r == CL_VIRUS) {
		v->result = SCAN_INFECTED;
		snprintf(v->signature, sizeof(v->signature), "%s",
		         c->name[0] != '\0' ? c->name : "unknown");
	} else if (r == CL_CLEAN && c->limit[0] != '\0') {
		/* a rule's limit skipped a file (clam_on_file): not all was seen */
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error), "limit exceeded (%.200s)", c->limit);
	} else if (r == CL_CLEAN) {
		v->result = SCAN_CLEAN;
	} else {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error), "%s",
		         r == CL_ETIMEOUT ? "scan time limit exceeded" : cl_strerror(r));
	}
}

static void clam_begin(struct scan_engine *eng, struct scan_verdict *v)
{
	memset(v, 0, sizeof(*v));
	v->db_version = eng->generation;
}

void scan_buffer(struct scan_engine *eng, const void *data, size_t len,
                 struct scan_verdict *v)
{
	scan_buffer_ex(eng, data, len, NULL, v);
}

void scan_buffer_ex(struct scan_engine *eng, const void *data, size_t len,
                    const struct scan_overrides *ov, struct scan_verdict *v)
{
	struct cl_scan_options o;
	const char *virname = NULL;
	unsigned long scanned = 0;
	struct clam_ctx cc;
	uint64_t t0 = clam_now_ms();
	cl_fmap_t *map;
	cl_error_t r;

	clam_begin(eng, v);
	clam_ctx_init(&cc, ov);
	clam_options(&o);
	map = cl_fmap_open_memory(data, len);
	if (map == NULL) {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error), "cannot map message for scanning");
		return;
	}
	r = cl_scanmap_callback(map, "message.eml", &virname, &scanned, eng->cl, &o, &cc);
	clam_verdict(r, virname, &cc, v);
	cl_fmap_close(map);
	v->scan_ms = clam_now_ms() - t0;
}

struct clam_split {
	struct scan_engine *eng;
	const struct scan_overrides *ov;
	struct scan_verdict *v;
	uint64_t deadline_ms;    /* max_scantime for the whole message, 0 = none */
	struct scan_verdict enc; /* the first ENCRYPTED verdict, if any */
};

/*
 * An ENCRYPTED verdict does not end the split scan: a later part may hold a
 * virus. Keeps the first one aside and turns *v back to clean.
 */
static void clam_split_keep_encrypted(struct clam_split *cs)
{
	if (cs->enc.result != SCAN_ENCRYPTED)
		cs->enc = *cs->v;
	cs->v->result = SCAN_CLEAN;
	cs->v->signature[0] = cs->v->error[0] = '\0';
}

/*
 * Scans one decoded MIME part; stops the walk at the first bad verdict
 * other than an encrypted archive.
 */
static int clam_split_part(int fd, const char *name, const char *ctype, void *ctx)
{
	struct clam_split *cs = ctx;
	struct cl_scan_options o;

	/* libclamav's time limit is per call: keep one for the whole message */
	if (cs->deadline_ms != 0 && clam_now_ms() > cs->deadline_ms) {
		cs->v->result = SCAN_ERROR;
		snprintf(cs->v->error, sizeof(cs->v->error), "scan time limit exceeded");
		return 1;
	}
	const char *virname = NULL;
	unsigned long scanned = 0;
	struct clam_ctx cc;
	cl_error_t r;

	clam_ctx_init(&cc, cs->ov);
	clam_options(&o);
	r = cl_scandesc_callback(fd, name != NULL ? name : "part", &virname, &scanned,
	                         cs->eng->cl, &o, &cc);
	clam_verdict(r, virname, &cc, cs->v);
	if (cs->v->result == SCAN_ENCRYPTED)
		clam_split_keep_encrypted(cs);
	return cs->v->result != SCAN_CLEAN;
}

/*
 * A large message in bounded memory: the raw bytes without libclamav's
 * mail parser (signatures on the text as sent), then every MIME part
 * decoded on its own with all the other parsers (archives, documents...).
 */
static void clam_scan_split(struct scan_engine *eng, int fd, uint64_t size,
                            const struct scan_overrides *ov, struct scan_verdict *v)
{
	struct clam_split cs = {eng, ov, v, 0, {.result = SCAN_CLEAN}};
	struct cl_scan_options o;
	const char *virname = NULL;
	unsigned long scanned = 0;
	struct clam_ctx cc;
	enum mime_walk_res wr;
	cl_error_t r;

	if (eng->lim.max_scantime_ms != 0)
		cs.deadline_ms = clam_now_ms() + eng->lim.max_scantime_ms;
	if (ov != NULL && ov->max_scantime_ms != 0 &&
	    (cs.deadline_ms == 0 || clam_now_ms() + ov->max_scantime_ms < cs.deadline_ms))
		cs.deadline_ms = clam_now_ms() + ov->max_scantime_ms;
	clam_ctx_init(&cc, ov);
	clam_options(&o);
	o.parse &= ~(unsigned)CL_SCAN_PARSE_MAIL;
	r = cl_scandesc_callback(fd, "message.eml", &virname, &scanned, eng->cl, &o, &cc);
	clam_verdict(r, virname, &cc, v);
	if (v->result == SCAN_ENCRYPTED)
		clam_split_keep_encrypted(&cs);
	if (v->result != SCAN_CLEAN)
		return;
	wr = mime_walk_fd(fd, size, eng->lim.tmpdir, eng->lim.max_files,
	                  eng->lim.max_recursion, clam_split_part, &cs);
	if (wr == MIME_WALK_DONE && cs.deadline_ms != 0 &&
	    clam_now_ms() > cs.deadline_ms) {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error), "scan time limit exceeded");
	} else if (wr == MIME_WALK_LIMIT) {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error),
		         "MIME structure exceeds max_files or max_recursion");
	} else if (wr == MIME_WALK_IO) {
		v->result = SCAN_ERROR;
		snprintf(v->error, sizeof(v->error),
		         "cannot write temporary file for a MIME part");
	}
	if (v->result == SCAN_CLEAN && cs.enc.result == SCAN_ENCRYPTED) {
		v->result = SCAN_ENCRYPTED;
		memcpy(v->signature, cs.enc.signature, sizeof(v->signature));
		memcpy(v->error, cs.enc.error, sizeof(v->error));
	}
}

void scan_fd(struct scan_engine *eng, int fd, struct scan_verdict *v)
{
	scan_fd_ex(eng, fd, NULL, v);
}

void scan_fd_ex(struct scan_engine *eng, int fd, const struct scan_overrides *ov,
                struct scan_verdict *v)
{
	struct cl_scan_options o;
	const char *virname = NULL;
	unsigned long scanned = 0;
	struct clam_ctx cc;
	uint64_t t0 = clam_now_ms();
	struct stat st;
	cl_error_t r;

	clam_begin(eng, v);
	clam_ctx_init(&cc, ov);
	if (fstat(fd, &st) == 0 && eng->lim.mime_split_above != 0 &&
	    (uint64_t)st.st_size > eng->lim.mime_split_above) {
		clam_scan_split(eng, fd, (uint64_t)st.st_size, ov, v);
	} else {
		clam_options(&o);
		r = cl_scandesc_callback(fd, "message.eml", &virname, &scanned, eng->cl,
		                         &o, &cc);
		clam_verdict(r, virname, &cc, v);
	}
	v->scan_ms = clam_now_ms() - t0;
}
