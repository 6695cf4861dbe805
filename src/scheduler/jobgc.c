/* jobgc: the GC of jobgc.h. One pass over the jobs collects the ended
 * ones with their kind and end time; sorting them by kind, then newest
 * first, ranks each within its kind. O(jobs log jobs), once a minute. */
#include "scheduler/jobgc.h"

#include "lib/clock.h"

#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/log.h"
#include "scheduler/restart.h"

struct entry {
    size_t kind;
    int64_t t;
    const struct cluster_job *job;
};

static int cmp_entry(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return x->t > y->t ? -1 : x->t < y->t;
}

static const char *str_of(const json_t *obj, const char *field)
{
    const char *s = json_string_value(json_object_get(obj, field));
    return s ? s : "";
}

/* When it ended (or was made), ms; 0 when the record says neither. */
static int64_t ended_at(const json_t *rec)
{
    int64_t us;
    if (clock_parse_rfc3339(str_of(rec, "finished_at"), &us) == 0 ||
        clock_parse_rfc3339(str_of(rec, "created_at"), &us) == 0)
        return us / 1000;
    return 0;
}

/* A crash loop whose formation has not changed since still stops it. */
static bool still_blocking(const struct records *r, const json_t *rec)
{
    if (!json_is_true(json_object_get(rec, "crash_loop")))
        return false;
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s/%s", str_of(rec, "app"), str_of(rec, "release"));
    int64_t rev = 0;
    const json_t *f = records_get(r, RECORDS_FORMATIONS, key.p, &rev);
    buf_free(&key);
    return f && json_integer_value(json_object_get(rec, "formation_rev")) == rev;
}

/* The ended jobs, each with the index of its (app, type): *n of them. */
static struct entry *collect(const struct cluster *c, size_t *n)
{
    size_t total = cluster_job_count(c), m = 0;
    struct entry *es = xcalloc(total ? total : 1, sizeof(*es));
    cleanup_json json_t *kinds = json_object();
    for (size_t i = 0; i < total; i++) {
        const struct cluster_job *j = cluster_job_at(c, i);
        if (!cluster_job_ended(j->rec))
            continue;
        struct buf key = BUF_INIT;
        buf_printf(&key, "%s\x1f%s", str_of(j->rec, "app"), str_of(j->rec, "type"));
        json_t *k = json_object_get(kinds, key.p); /* borrowed */
        if (!k) {
            k = json_integer((json_int_t)json_object_size(kinds));
            json_object_set_new(kinds, key.p, k);
        }
        buf_free(&key);
        es[m++] = (struct entry){(size_t)json_integer_value(k), ended_at(j->rec), j};
    }
    *n = m;
    return es;
}

int jobgc_run(struct cluster *c, const struct records *rec, struct store *s,
              const struct jobgc_opts *o, int64_t now_ms, struct pier_err *err)
{
    size_t m = 0;
    struct entry *es = collect(c, &m);
    qsort(es, m, sizeof(*es), cmp_entry);
    /* Ids are copied: deleting changes the view they point into. */
    cleanup_json json_t *ids = json_array();
    int rank = 0;
    for (size_t i = 0; i < m; i++) {
        rank = i > 0 && es[i].kind == es[i - 1].kind ? rank + 1 : 0;
        if (rank >= o->keep && es[i].t < now_ms - o->age_ms && !still_blocking(rec, es[i].job->rec))
            json_array_append_new(ids, json_string(es[i].job->id));
    }
    free(es);
    size_t nd = json_array_size(ids);
    if (nd == 0)
        return 0;
    const char **idv = xcalloc(nd, sizeof(*idv));
    for (size_t i = 0; i < nd; i++)
        idv[i] = json_string_value(json_array_get(ids, i));
    size_t deleted = 0;
    int rc = cluster_delete_jobs(c, s, idv, nd, &deleted, err);
    free(idv);
    if (deleted > 0)
        log_info("scheduler", "deleted old job records", "count=%zu", deleted);
    return rc;
}
