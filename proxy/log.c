/*
 * log.c - key=value log lines on stderr (see log.h).
 *
 * Owns the process-wide level. Called from the event loop and, for a few
 * start-up and engine messages, from pool threads: each line is built in a
 * local buffer and written with one write(2), so lines never interleave.
 */
#include "proxy/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static enum log_level log_level_cur = LOG_LVL_INFO;
static enum log_target log_target_cur = LOG_TO_STDERR;

/* syslog priorities of our levels (also journald's "<N>" prefixes) */
static const int log_prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
_Static_assert(sizeof(log_prio) / sizeof(log_prio[0]) == LOG_LVL_COUNT, "log prio");

/* $JOURNAL_STREAM is "DEVICE:INODE" of the stream systemd gave us. */
static int log_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	char *end;
	struct stat st;

	if (js == NULL || js[0] < '0' || js[0] > '9')
		return 0;
	errno = 0;
	dev = strtoull(js, &end, 10);
	if (errno != 0 || *end != ':' || end[1] < '0' || end[1] > '9')
		return 0;
	ino = strtoull(end + 1, &end, 10);
	if (errno != 0 || *end != '\0' || fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

/*
 * Started in the background by an init system that closes stderr or points
 * it at /dev/null: lines written there would be lost.
 */
static int log_stderr_discarded(void)
{
	struct stat st, null;

	if (fstat(STDERR_FILENO, &st) < 0)
		return 1;
	return S_ISCHR(st.st_mode) && stat("/dev/null", &null) == 0 &&
	       st.st_rdev == null.st_rdev;
}

void log_set_target(const char *name)
{
	enum log_target t = LOG_TO_STDERR;

	if (strcmp(name, "syslog") == 0)
		t = LOG_TO_SYSLOG;
	else if (strcmp(name, "auto") == 0)
		t = log_stderr_is_journal()  ? LOG_TO_JOURNAL
		    : log_stderr_discarded() ? LOG_TO_SYSLOG
		                             : LOG_TO_STDERR;
	if (t == LOG_TO_SYSLOG && log_target_cur != LOG_TO_SYSLOG)
		openlog("mailmoat", LOG_PID | LOG_NDELAY, LOG_MAIL);
	log_target_cur = t;
}

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
_Static_assert(sizeof(log_level_names) / sizeof(log_level_names[0]) == LOG_LVL_COUNT,
               "log level names");

void log_set_level(enum log_level level)
{
	log_level_cur = level;
}

int log_level_parse(const char *name, enum log_level *level_r)
{
	for (int i = 0; i < LOG_LVL_COUNT; i++) {
		if (strcmp(name, log_level_names[i]) == 0) {
			*level_r = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	va_list ap;
	int r;

	if (level > log_level_cur)
		return;
	n = 0;
	if (log_target_cur == LOG_TO_JOURNAL) {
		line[n++] = '<';
		line[n++] = (char)('0' + log_prio[level]);
		line[n++] = '>';
	}
	if (log_target_cur == LOG_TO_STDERR) {
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		r = snprintf(line + n, sizeof(line) - n, ".%03ldZ ",
		             ts.tv_nsec / 1000000L);
		if (r > 0)
			n += (size_t)r;
	}
	r = snprintf(line + n, sizeof(line) - n, "%s %s ", log_level_names[level],
	             sid != NULL ? sid : "-");
	if (r > 0)
		n += (size_t)r;
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	va_end(ap);
	if (r < 0)
		r = 0;
	n += (size_t)r;
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2; /* truncated: keep the newline */
	if (log_target_cur == LOG_TO_SYSLOG) {
		line[n] = '\0';
		syslog(log_prio[level], "%s", line);
		return;
	}
	line[n++] = '\n';
	/* One write per line keeps lines whole across threads. */
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

static char *log_escape_set(char *dst, size_t dstlen, const char *src, size_t srclen,
                            int token)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (dstlen == 0)
		return dst;
	for (size_t i = 0; i < srclen; i++) {
		unsigned char c = (unsigned char)src[i];
		char esc[4];
		size_t elen;

		if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\' ||
		    (token && (c == ' ' || c == '='))) {
			esc[0] = '\\';
			esc[1] = 'x';
			esc[2] = hex[c >> 4];
			esc[3] = hex[c & 15];
			elen = 4;
		} else {
			esc[0] = (char)c;
			elen = 1;
		}
		/* keep room for "..." and the NUL */
		if (o + elen + 4 > dstlen) {
			if (dstlen >= 4) {
				memcpy(dst + (o + 4 > dstlen ? dstlen - 4 : o), "...", 3);
				o = (o + 4 > dstlen ? dstlen - 4 : o) + 3;
			}
			break;
		}
		memcpy(dst + o, esc, elen);
		o += elen;
	}
	dst[o < dstlen ? o : dstlen - 1] = '\0';
	return dst;
}

char *log_escape(char *dst, size_t dstlen, const char *src, size_t srclen)
{
	return log_escape_set(dst, dstlen, src, srclen, 0);
}

char *log_escape_token(char *dst, size_t dstlen, const char *src, size_t srclen)
{
	return log_escape_set(dst, dstlen, src, srclen, 1);
}
