/* restart: what the service scheduler does with a job that ended while it
 * was wanted up (desired_state "up", state down, crashed or failed): when
 * its replacement may start, with which restart count, or whether to give
 * up. Pure: no I/O, no clock (the caller passes the time).
 *
 * The rule (docs/controller.md, "Scheduler"):
 *  - a job lost with its host (host_error "host lost") is replaced at once
 *    and its replacement keeps its restart count: the job did nothing wrong;
 *  - otherwise the replacement's count is the ended job's + 1, or 0 when
 *    the ended job had been up for more than RESTART_RESET_MS (a crash
 *    after a long run is not a loop);
 *  - it may start base * 2^k after the ended job's finished_at, k the ended
 *    job's count (0 after a long run), at most cap later;
 *  - a job whose count is already max (and that did not run long) is the
 *    end of a crash loop: no replacement. */
#ifndef PIER_SCHEDULER_RESTART_H
#define PIER_SCHEDULER_RESTART_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define RESTART_MAX 8
#define RESTART_RESET_MS 60000
/* host_error the scheduler writes on the jobs of a host whose record vanished. */
#define RESTART_HOST_LOST "host lost"

struct restart_policy {
    int64_t base_ms; /* the first delay (1000) */
    int64_t cap_ms;  /* the longest delay (60000) */
    int max;         /* restarts in a row before giving up (RESTART_MAX) */
};

struct restart_decision {
    bool give_up;   /* a crash loop: place no replacement */
    bool lost;      /* the job was lost with its host */
    int restarts;   /* the replacement's "restarts" */
    int64_t due_ms; /* wall-clock ms (Unix epoch) from which it may be placed */
};

/* Decides for ended (a job record). now_ms is the wall clock, used when the
 * record has neither finished_at nor created_at. */
void restart_decide(const struct restart_policy *p, const json_t *ended, int64_t now_ms,
                    struct restart_decision *out);

#endif
