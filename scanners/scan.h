/*
 * scan.h - the scanner interface: bytes in, a verdict out.
 *
 * A scanner knows bytes and nothing about sockets or sessions. The engine
 * is compiled once and shared read-only by every scan; holders take a
 * reference (a later reload swaps in a new engine while scans still running
 * on the old one finish on it). scan_buffer/scan_fd block and are meant for
 * the libuv thread pool, never the event loop.
 */
#ifndef MAILMOAT_SCAN_H
#define MAILMOAT_SCAN_H

#include <stddef.h>
#include <stdint.h>

/*
 * SCAN_ENCRYPTED: the only findings were encrypted archives libclamav could
 * not look into (its Heuristics.Encrypted.* alerts); a virus found anywhere
 * else in the message still makes it SCAN_INFECTED.
 */
enum scan_result {
	SCAN_CLEAN,
	SCAN_INFECTED,
	SCAN_ERROR,
	SCAN_ENCRYPTED,
	/* the rules stage before libclamav (proxy/msgjob.c): */
	SCAN_BLOCKED,  /* an attachment rule matched: signature says which */
	SCAN_DENIED,   /* the sender is on sender_deny */
	SCAN_OVERSIZE, /* larger than the policy's max_message_size: not scanned */
	SCAN_RESULT_COUNT
};

/* "clean", "infected", "error", "encrypted_archive" */
const char *scan_result_name(enum scan_result r);

#define SCAN_SIG_MAX 256
#define SCAN_ERR_MAX 256

struct scan_verdict {
	enum scan_result result;
	char signature[SCAN_SIG_MAX]; /* INFECTED, ENCRYPTED: the signature name */
	/*
	 * ERROR: what went wrong (a limit, a time-out...); ENCRYPTED: "encrypted
	 * archive (<signature>)", for readers that show error for anything but
	 * INFECTED.
	 */
	char error[SCAN_ERR_MAX];
	uint64_t scan_ms;    /* wall time of the scan */
	unsigned db_version; /* the engine's generation: changes with every (re)load */
};

/* ClamAV's own limits; 0 keeps libclamav's default for that limit. */
struct scan_limits {
	uint64_t max_filesize;  /* largest file (or embedded file) scanned */
	uint64_t max_scansize;  /* most data scanned per message */
	unsigned max_recursion; /* archive / MIME nesting depth */
	unsigned max_files;     /* files inside archives */
	unsigned max_scantime_ms;
	/*
	 * Messages larger than this are not given to libclamav's mail parser
	 * (which holds a message in memory several times over): the raw bytes
	 * are scanned without it, then each MIME part, decoded into a
	 * temporary file, on its own. 0 = always use libclamav's parser.
	 */
	uint64_t mime_split_above;
	char tmpdir[1024]; /* temporary files of libclamav and the MIME split */
	/*
	 * 1: scans may pass stricter limits (scan_*_ex). libclamav then maps
	 * every file it inspects whole for the callback that checks them, which
	 * costs memory on large messages, so engines without rules that set
	 * limits do without it (overrides are ignored then).
	 */
	int per_scan_limits;
};

struct scan_engine;

/* Once per process, before any engine: initialises libclamav. */
int scan_global_init(void);

/*
 * Loads every database file in dbdir, compiles an engine with the limits,
 * and logs (one line each) which files were loaded and the signature count,
 * with a loud warning when only mailmoat's own test set is present. Returns
 * 0 and a new engine (one reference, the caller's) or -1 with err filled.
 * Blocking: at start-up, or on the thread pool.
 */
int scan_engine_load(const char *dbdir, const struct scan_limits *lim,
                     struct scan_engine **eng_r, char *err, size_t errlen);

void scan_engine_ref(struct scan_engine *eng);
/* Drops a reference, NULLs *engp; frees the engine on the last one. */
void scan_engine_unref(struct scan_engine **engp);

/*
 * The engine's generation: different for every load, so a verdict cached
 * with one is stale once new signatures are in.
 */
unsigned scan_engine_db_version(const struct scan_engine *eng);

/*
 * The databases' own version (CL_ENGINE_DB_VERSION: the daily.cvd
 * version freshclam reports; 0 for plain signature files).
 */
unsigned scan_engine_clamav_version(const struct scan_engine *eng);

/* Number of signatures compiled into the engine. */
unsigned scan_engine_signatures(const struct scan_engine *eng);

/*
 * Scans a whole message held in memory / in a file (read from offset 0).
 * Always fills *v: a libclamav error, a limit hit or a time-out is a
 * SCAN_ERROR verdict, never a failure of the call. Thread-safe.
 */
void scan_buffer(struct scan_engine *eng, const void *data, size_t len,
                 struct scan_verdict *v);
void scan_fd(struct scan_engine *eng, int fd, struct scan_verdict *v);

/*
 * Stricter limits for one scan (a policy rule's): 0 keeps the engine's.
 * A value above the engine's own limit changes nothing (the engine's are
 * the ceiling). Hitting one is a SCAN_ERROR "... limit exceeded (rule)"
 * like the engine's limits; the check runs for every file libclamav opens
 * (the message, its parts, archive members).
 */
struct scan_overrides {
	uint64_t max_filesize;
	uint64_t max_scansize;
	unsigned max_recursion;
	unsigned max_files;
	unsigned max_scantime_ms;
};

void scan_buffer_ex(struct scan_engine *eng, const void *data, size_t len,
                    const struct scan_overrides *ov, struct scan_verdict *v);
void scan_fd_ex(struct scan_engine *eng, int fd, const struct scan_overrides *ov,
                struct scan_verdict *v);

#endif
