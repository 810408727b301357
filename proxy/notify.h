/*
 * notify.h - the systemd readiness protocol (sd_notify(3)), spoken
 * directly over $NOTIFY_SOCKET: one datagram per state change. Without
 * that variable (started outside systemd) every call does nothing.
 */
#ifndef MAILMOAT_NOTIFY_H
#define MAILMOAT_NOTIFY_H

#include <stdint.h>

/* Sends msg ("READY=1\nSTATUS=...") to the service manager. Returns 0 or -1. */
int notify_send(const char *msg);

/*
 * The watchdog interval systemd asked for ($WATCHDOG_USEC, for this
 * process per $WATCHDOG_PID), in milliseconds; 0 when there is none.
 */
uint64_t notify_watchdog_ms(void);

#endif
