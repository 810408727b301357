/*
 * admin.h - `mailmoat quarantine ...`, the administrator's commands on the
 * quarantine (a contract: scripts rely on them; synopsis in admin.c).
 */
#ifndef MAILMOAT_ADMIN_H
#define MAILMOAT_ADMIN_H

#include <stddef.h>

/*
 * Runs one quarantine subcommand. argv[0] is "quarantine", argv[1] the
 * subcommand, then its arguments. Writes results to stdout and a one-line
 * reason per error to stderr. Returns the process exit code: 0 ok, 1
 * error, 2 usage. Called by main() only, before any thread exists.
 */
int admin_main(int argc, char **argv);

/*
 * Reads the first line of a password file into pw[pwlen] (without its line
 * end). Returns 0, or -errno (-ENODATA: the line is empty). The caller
 * wipes pw after use; the password is never logged.
 */
int admin_read_password(const char *path, char *pw, size_t pwlen);

#endif
