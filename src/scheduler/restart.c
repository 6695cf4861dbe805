/* restart: the backoff and crash-loop rule of restart.h.
 *
 * The count travels on the job records themselves ("restarts" on each
 * replacement), so a scheduler that restarts, or a new leader, picks the
 * chain up where it was: nothing about a crash loop lives in memory. */
#include "scheduler/restart.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int restart_parse_time(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec;
    if (!s || strlen(s) < 20 || digits(s, 4, &y) < 0 || s[4] != '-' || digits(s + 5, 2, &mo) < 0 ||
        s[7] != '-' || digits(s + 8, 2, &d) < 0 || (s[10] != 'T' && s[10] != 't') ||
        digits(s + 11, 2, &h) < 0 || s[13] != ':' || digits(s + 14, 2, &mi) < 0 || s[16] != ':' ||
        digits(s + 17, 2, &sec) < 0)
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    const char *p = s + 19;
    int64_t frac_ms = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        int64_t scale = 100;
        while (isdigit((unsigned char)*p)) {
            if (n < 3)
                frac_ms += (*p - '0') * scale;
            scale /= 10;
            n++;
            p++;
        }
        if (n == 0)
            return -1;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) < 0 || p[3] != ':' || digits(p + 4, 2, &om) < 0)
            return -1;
        offset_s = (oh * 3600 + om * 60) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -1;
    }
    if (*p)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - offset_s) * 1000 + frac_ms;
    return 0;
}

/* The time field of job as ms, or -1. */
static int64_t job_time(const json_t *job, const char *field)
{
    int64_t ms;
    return restart_parse_time(json_string_value(json_object_get(job, field)), &ms) == 0 ? ms : -1;
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
