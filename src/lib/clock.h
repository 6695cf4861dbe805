/* clock: time for timeouts and deadlines, on the monotonic clock (which
 * wall-clock steps do not move), in milliseconds. */
#ifndef PIER_CLOCK_H
#define PIER_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC (an arbitrary origin: only differences
 * mean anything). */
int64_t clock_now_ms(void);

/* The absolute CLOCK_MONOTONIC time ms milliseconds from now (ms <= 0: now),
 * for pthread_cond_timedwait. That call reads the deadline on the clock of
 * the condition variable, which is CLOCK_REALTIME unless it was made with a
 * condattr set by pthread_condattr_setclock(&attr, CLOCK_MONOTONIC): only
 * use this deadline with a condition variable made that way. */
struct timespec clock_deadline_in(int64_t ms);

/* Initializes a condition variable that waits on CLOCK_MONOTONIC, the clock
 * clock_deadline_in's deadlines are on. Aborts if the system refuses. */
void clock_cond_init(pthread_cond_t *c);

/* The wall-clock time now as RFC 3339 UTC with microseconds,
 * "2026-11-25T16:54:52.123456Z" (27 characters and the NUL). */
#define CLOCK_RFC3339_LEN 28
void clock_rfc3339(char out[CLOCK_RFC3339_LEN]);

/* Reads an RFC 3339 time ("2026-11-25T16:54:52.123456Z", any number of
 * fraction digits, "Z" or a "+hh:mm"/"-hh:mm" offset; a space stands for
 * "+", as a query string decodes it) into microseconds since the epoch.
 * Fixed-position digits only: no blanks or signs inside. 0 or -1. */
int clock_parse_rfc3339(const char *s, int64_t *us);

#endif
