/*
 * log.h - one key=value line per event on stderr.
 *
 * Every line starts with a UTC timestamp, the level and the session id
 * ("-" for process-wide events). Text that came from the network must go
 * through log_escape() first: it is escaped and truncated so a hostile peer
 * cannot forge log lines. Passwords and AUTH payloads are never passed here.
 */
#ifndef MAILMOAT_LOG_H
#define MAILMOAT_LOG_H

#include <stddef.h>

enum log_level {
	LOG_LVL_ERROR,
	LOG_LVL_WARN,
	LOG_LVL_INFO,
	LOG_LVL_DEBUG,
	LOG_LVL_COUNT
};

/*
 * Where lines go: LOG_TO_STDERR as they are; LOG_TO_JOURNAL on stderr
 * with a "<N>" priority prefix journald reads (stderr connected to the
 * journal: $JOURNAL_STREAM); LOG_TO_SYSLOG through syslog(3), facility
 * mail, without our own timestamp.
 */
enum log_target { LOG_TO_STDERR, LOG_TO_JOURNAL, LOG_TO_SYSLOG };

/*
 * Chooses the target from the configuration's log_target: "stderr",
 * "syslog", or "auto": the journal when $JOURNAL_STREAM names our stderr
 * (systemd), syslog when stderr is closed or /dev/null (started in the
 * background by another init), else stderr (in the foreground, or a file).
 */
void log_set_target(const char *name);

/* Sets the most verbose level that is printed (default LOG_LVL_INFO). */
void log_set_level(enum log_level level);

/* Parses "error", "warn", "info", "debug"; returns 0 and sets *level_r, or -1. */
int log_level_parse(const char *name, enum log_level *level_r);

/* Prints one line: "<time> <level> <sid> <fmt...>". sid may be NULL. */
void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Copies network text into dst (size dstlen, always NUL-terminated) with
 * control characters, quotes, backslashes and bytes >= 0x7f escaped as \xHH,
 * truncated to fit with a trailing "..." when cut. Returns dst.
 */
char *log_escape(char *dst, size_t dstlen, const char *src, size_t srclen);

/*
 * Like log_escape, and also escapes space and '=' (as \x20, \x3d): for
 * values printed unquoted (user=, uidl=) so network text can never forge
 * another key.
 */
char *log_escape_token(char *dst, size_t dstlen, const char *src, size_t srclen);

#endif
