/* restart: the backoff and crash-loop rule of restart.h.
 *
 * The count travels on the job records themselves ("restarts" on each
 * replacement), so a scheduler that restarts, or a new leader, picks the
 * chain up where it was: nothing about a crash loop lives in memory. */
#include "scheduler/restart.h"

#include <string.h>

#include "lib/clock.h"

/* The time field of job as ms, or -1. */
static int64_t job_time(const json_t *job, const char *field)
{
    int64_t us;
    return clock_parse_rfc3339(json_string_value(json_object_get(job, field)), &us) == 0 ? us / 1000
                                                                                         : -1;
}

void restart_decide(const struct restart_policy *p, const json_t *ended, int64_t now_ms,
                    struct restart_decision *out)
{
    *out = (struct restart_decision){0};
    json_int_t prev = json_integer_value(json_object_get(ended, "restarts"));
    if (prev < 0)
        prev = 0;
    if (prev > 1000000)
        prev = 1000000;
    int64_t finished = job_time(ended, "finished_at");
    if (finished < 0)
        finished = job_time(ended, "created_at");
    if (finished < 0)
        finished = now_ms;

    const char *why = json_string_value(json_object_get(ended, "host_error"));
    if (why && strcmp(why, RESTART_HOST_LOST) == 0) {
        out->lost = true;
        out->restarts = (int)prev;
        out->due_ms = finished;
        return;
    }
    int64_t started = job_time(ended, "started_at");
    bool long_run = started >= 0 && finished - started > RESTART_RESET_MS;
    int k = long_run ? 0 : (int)prev;
    if (!long_run && k >= p->max) {
        out->give_up = true;
        out->restarts = k;
        return;
    }
    out->restarts = long_run ? 0 : k + 1;
    int64_t delay = p->base_ms;
    for (int i = 0; i < k && delay < p->cap_ms; i++)
        delay *= 2;
    if (delay > p->cap_ms)
        delay = p->cap_ms;
    out->due_ms = finished + delay;
}
