/* placement: the scheduler's choice of host for a new job.
 *
 * The rule, in order:
 *
 *  1. Filter. A host can take the job only if it is up, has every tag the
 *     formation asks for with the same value (a formation without tags
 *     takes any host, a host without tags matches only such formations),
 *     and has free memory (total - allocated) >= the job's memory. Memory
 *     is never over-committed: a job that fits exactly is fine, one byte
 *     more is not.
 *
 *  2. Spread. Among those, prefer the hosts running the fewest jobs of the
 *     same app and process type. Losing a host should cost a process type
 *     as few of its jobs as possible, so availability comes before
 *     packing: scale web=6 on three hosts gives 2/2/2 even when one host
 *     is much bigger.
 *
 *  3. Free memory. Among equally spread hosts, the one with the most free
 *     memory, so load evens out and big jobs still find room later.
 *
 *  4. Lowest id. The rest is a tie; breaking it by host id makes the
 *     choice a function of the records alone, so two schedulers that read
 *     the same state pick the same host. Their writes then race on the
 *     host record's revision (a compare-and-swap in the store): one wins,
 *     the other re-reads the record, now with the memory allocated, and
 *     picks again. Picking the same host is what makes that compare catch
 *     every double placement.
 *
 * When no host can take the job, the message says at which step the hosts
 * ran out (none up, none with the tags, none with the memory) and what the
 * closest hosts have, so an operator knows whether to add a host, tag one
 * or shrink the job. It is bounded: a few hosts are named, the rest
 * counted. */
#include "scheduler/placement.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lib/jsonx.h"

#define MIB (INT64_C(1024) * 1024)
/* Hosts named in a message before the rest are only counted. */
#define MSG_MAX_HOSTS 6
/* Tag values longer than this are cut in messages. */
#define MSG_MAX_VALUE 32

/* A bounded message under construction: appends past the end are dropped. */
struct msg {
    char p[sizeof(((struct pier_err *)0)->msg)];
    size_t len;
};

__attribute__((format(printf, 2, 3))) static void msg_printf(struct msg *m, const char *fmt, ...)
{
    if (m->len >= sizeof(m->p) - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->p + m->len, sizeof(m->p) - m->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        m->len += (size_t)n < sizeof(m->p) - m->len ? (size_t)n : sizeof(m->p) - 1 - m->len;
}

/* "512 MiB" when whole mebibytes, else the exact bytes. */
static void msg_memory(struct msg *m, int64_t v)
{
    if (v % MIB == 0)
        msg_printf(m, "%" PRId64 " MiB", v / MIB);
    else
        msg_printf(m, "%" PRId64 " bytes", v);
}

/* "zone=a,disk=ssd", or "none" for a host without tags. */
static void msg_tags(struct msg *m, const json_t *tags)
{
    if (!tags || json_object_size(tags) == 0) {
        msg_printf(m, "none");
        return;
    }
    const char *k;
    json_t *v;
    const char *sep = "";
    json_object_foreach((json_t *)tags, k, v)
    {
        const char *s = json_is_string(v) ? json_string_value(v) : "?";
        if (strlen(s) > MSG_MAX_VALUE)
            msg_printf(m, "%s%s=%.*s...", sep, k, MSG_MAX_VALUE, s);
        else
            msg_printf(m, "%s%s=%s", sep, k, s);
        sep = ",";
    }
}

static int64_t host_free(const struct placement_host *h)
{
    return h->memory_total - h->memory_allocated;
}

static bool tags_match(const struct placement_host *h, const json_t *want)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)want, k, v)
    {
        json_t *have = h->tags ? json_object_get(h->tags, k) : NULL; /* borrowed */
        if (!have || !json_equal(have, v))
            return false;
    }
    return true;
}

static bool can_take(const struct placement_host *h, const struct placement_job *job)
{
    return h->up && (!job->tags || tags_match(h, job->tags)) && host_free(h) >= job->memory;
}

/* True when a is a better place than b (both can take the job). */
static bool better(const struct placement_host *a, const struct placement_host *b)
{
    if (a->same_kind != b->same_kind)
        return a->same_kind < b->same_kind;
    if (host_free(a) != host_free(b))
        return host_free(a) > host_free(b);
    return strcmp(a->id, b->id) < 0;
}

static void msg_what(struct msg *m, const struct placement_job *job)
{
    if (job->app)
        msg_printf(m, "%s/", job->app);
    msg_printf(m, "%s", job->type ? job->type : "job");
}

/* No host up (or none at all). */
static int fail_none_up(size_t n, const struct placement_job *job, struct pier_err *err)
{
    struct msg m = {.len = 0};
    msg_printf(&m, "no host is up to run ");
    msg_what(&m, job);
    if (n == 0)
        msg_printf(&m, " (no host is registered; start a host agent)");
    else
        msg_printf(&m, " (%zu known, all down)", n);
    return err_set(err, PIER_EUNAVAIL, "%s", m.p);
}

/* Hosts are up, none has the tags: list what the up hosts have. */
static int fail_tags(const struct placement_host *hosts, size_t n, const struct placement_job *job,
                     struct pier_err *err)
{
    struct msg m = {.len = 0};
    msg_printf(&m, "no host has tags ");
    msg_tags(&m, job->tags);
    msg_printf(&m, " for ");
    msg_what(&m, job);
    msg_printf(&m, " (hosts: ");
    size_t named = 0, up = 0;
    for (size_t i = 0; i < n; i++) {
        if (!hosts[i].up)
            continue;
        up++;
        if (named == MSG_MAX_HOSTS)
            continue;
        msg_printf(&m, "%s%s ", named ? ", " : "", hosts[i].id);
        msg_tags(&m, hosts[i].tags);
        named++;
    }
    if (up > named)
        msg_printf(&m, ", and %zu more", up - named);
    msg_printf(&m, ")");
    return err_set(err, PIER_EUNAVAIL, "%s", m.p);
}

/* Hosts with the tags are up, none has the memory: name the roomiest. */
static int fail_memory(const struct placement_host *hosts, size_t n,
                       const struct placement_job *job, struct pier_err *err)
{
    const struct placement_host *most = NULL;
    size_t fitting = 0;
    for (size_t i = 0; i < n; i++) {
        const struct placement_host *h = &hosts[i];
        if (!h->up || (job->tags && !tags_match(h, job->tags)))
            continue;
        fitting++;
        if (!most || host_free(h) > host_free(most) ||
            (host_free(h) == host_free(most) && strcmp(h->id, most->id) < 0))
            most = h;
    }
    struct msg m = {.len = 0};
    msg_printf(&m, "no host ");
    if (job->tags && json_object_size(job->tags) > 0) {
        msg_printf(&m, "with tags ");
        msg_tags(&m, job->tags);
        msg_printf(&m, " ");
    }
    msg_printf(&m, "has ");
    msg_memory(&m, job->memory);
    msg_printf(&m, " free for ");
    msg_what(&m, job);
    msg_printf(&m, " (most free: %s with ", most ? most->id : "?");
    msg_memory(&m, most ? host_free(most) : 0);
    msg_printf(&m, " of ");
    msg_memory(&m, most ? most->memory_total : 0);
    msg_printf(&m, "; %zu host%s checked)", fitting, fitting == 1 ? "" : "s");
    return err_set(err, PIER_EUNAVAIL, "%s", m.p);
}

int placement_pick(const struct placement_host *hosts, size_t n, const struct placement_job *job,
                   struct pier_err *err)
{
    if (job->memory < 0)
        return err_set(err, PIER_EINVAL, "job memory %" PRId64 " is negative", job->memory);
    if (job->tags && !json_is_object(job->tags))
        return err_set(err, PIER_EINVAL, "job tags must be an object of strings");

    const struct placement_host *best = NULL;
    size_t best_i = 0, up = 0, tagged = 0;
    for (size_t i = 0; i < n; i++) {
        const struct placement_host *h = &hosts[i];
        up += h->up;
        tagged += h->up && (!job->tags || tags_match(h, job->tags));
        if (!can_take(h, job))
            continue;
        if (!best || better(h, best)) {
            best = h;
            best_i = i;
        }
    }
    if (best)
        return (int)best_i;
    if (up == 0)
        return fail_none_up(n, job, err);
    if (tagged == 0)
        return fail_tags(hosts, n, job, err);
    return fail_memory(hosts, n, job, err);
}

/* Tags are optional; present, they must be an object of strings. */
static int tags_from_record(const json_t *rec, const json_t **out, struct pier_err *err)
{
    json_t *tags = NULL; /* borrowed */
    int rc = jsonx_get_obj(rec, "tags", &tags, err);
    if (rc < 0)
        return err_wrap(err, PIER_EINVAL, "host record");
    const char *k;
    json_t *v;
    json_object_foreach(tags, k, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "host record: tag '%s' is not a string", k);
    }
    *out = tags;
    return 0;
}

int placement_host_from_record(const json_t *rec, struct placement_host *h, struct pier_err *err)
{
    *h = (struct placement_host){.up = true};
    if (!json_is_object(rec))
        return err_set(err, PIER_EINVAL, "host record is not an object");
    const char *id = NULL;
    if (jsonx_get_str(rec, "id", &id, err) <= 0 || !*id)
        return err_set(err, PIER_EINVAL, "host record: missing field 'id'");
    json_t *mem = NULL; /* borrowed */
    if (jsonx_get_obj(rec, "memory", &mem, err) <= 0)
        return err_set(err, PIER_EINVAL, "host record %s: missing field 'memory'", id);
    int64_t total = 0, allocated = 0;
    if (jsonx_get_int64(mem, "total", &total, err) <= 0 || total < 0)
        return err_set(err, PIER_EINVAL, "host record %s: bad or missing 'memory.total'", id);
    if (jsonx_get_int64(mem, "allocated", &allocated, err) <= 0 || allocated < 0)
        return err_set(err, PIER_EINVAL, "host record %s: bad or missing 'memory.allocated'", id);
    const json_t *tags = NULL;
    if (tags_from_record(rec, &tags, err) < 0)
        return PIER_EINVAL;
    h->id = id;
    h->tags = tags;
    h->memory_total = total;
    h->memory_allocated = allocated;
    return 0;
}
