/* reconcile: one pass of the service scheduler (reconcile.h).
 *
 * A pass reads, then writes. The reading half walks the jobs once and
 * threads each one onto its group, (app, release, process type), as an
 * active job or an ended one still to be replaced; the groups of
 * formations without jobs are added from the formations. Each group is
 * then decided on its own: stop extras, replace ended jobs whose backoff
 * is over, give up on a crash loop, place what is still missing. All of
 * that is collected (with copies of what it needs, since every write
 * changes the view under it) and written in the second half: one batch of
 * job updates, one cluster_place call for every placement of the pass.
 * So a pass is O(jobs) plus the sorting of the groups that stop jobs, and
 * placing 1000 jobs is a handful of transactions.
 *
 * An ended job is handled exactly once: its replacement is placed in the
 * same transaction that writes "replaced_by" on it (cluster.h), and the end
 * of a crash loop gets "crash_loop": true. Either mark takes it out of
 * every later pass, of this scheduler or of the next leader. A crash loop
 * stops the group for as long as its formation record is unchanged: the
 * job keeps the formation's mod revision in "formation_rev". */
#include "scheduler/reconcile.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "scheduler/jobbuild.h"
#include "scheduler/jobgc.h"

#define COMP "scheduler"

struct reconcile {
    struct reconcile_opts o;
    int64_t loaded_ms;  /* monotonic: when the view was loaded */
    int64_t last_gc_ms; /* monotonic */
    json_t *said;       /* group key -> the last placement problem logged */
    json_t *status;     /* what the last pass saw */
};

/* A job threaded onto its group's list. */
struct entry {
    const struct cluster_job *job;
    ssize_t next;
};

struct group {
    char *key; /* "app\x1frelease\x1ftype" */
    char *app, *release, *type;
    const json_t *formation; /* borrowed from records; NULL: none */
    int64_t formation_rev;
    int want;
    size_t active, up, running; /* desired up & not ended; of those up; not ended */
    ssize_t active_head, cand_head;
    bool blocked; /* a crash loop stops it until the formation changes */
};

struct pass {
    struct reconcile *r;
    struct cluster *c;
    struct records *rec;
    struct store *s;
    int64_t now; /* wall clock, ms */
    struct entry *ents;
    struct group *groups;
    size_t n_groups, cap_groups;
    json_t *index; /* group key -> index */
    json_t *keep;  /* owns the ids and records the writes borrow */
    struct cluster_update *ups;
    size_t n_ups, cap_ups;
    struct cluster_want *wants;
    size_t *want_group; /* the group of each want */
    size_t n_wants, cap_wants;
    json_t *pending; /* status: what waits, and why */
    int64_t wake;    /* ms until a backoff ends, or INT64_MAX */
};

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void now_rfc3339(json_t *obj, const char *field)
{
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_object_set_new(obj, field, json_string(now));
}

static const char *str_of(const json_t *obj, const char *field)
{
    return json_string_value(json_object_get(obj, field));
}

/* A copy kept alive for the pass; returns the borrowed string. */
static const char *keep_str(struct pass *p, const char *s)
{
    json_t *v = json_string(s);
    json_array_append_new(p->keep, v);
    return json_string_value(v);
}

/* Queues the new record of a job (steals rec). */
static void add_update(struct pass *p, const char *id, json_t *rec)
{
    if (p->n_ups == p->cap_ups) {
        p->cap_ups = p->cap_ups ? 2 * p->cap_ups : 32;
        p->ups = xrealloc(p->ups, p->cap_ups * sizeof(*p->ups));
    }
    json_array_append_new(p->keep, rec);
    p->ups[p->n_ups++] = (struct cluster_update){.id = keep_str(p, id), .rec = rec};
}

static struct cluster_want *add_want(struct pass *p, const struct group *g, json_t *job,
                                     const json_t *tags)
{
    if (p->n_wants == p->cap_wants) {
        p->cap_wants = p->cap_wants ? 2 * p->cap_wants : 32;
        p->wants = xrealloc(p->wants, p->cap_wants * sizeof(*p->wants));
        p->want_group = xrealloc(p->want_group, p->cap_wants * sizeof(*p->want_group));
    }
    p->want_group[p->n_wants] = (size_t)(g - p->groups);
    struct cluster_want *w = &p->wants[p->n_wants++];
    *w = (struct cluster_want){.job = job, .tags = tags};
    return w;
}

static void add_pending(struct pass *p, const struct group *g, int count, const char *reason,
                        int64_t wait_ms)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:i,s:s}", "app", g->app, "release", g->release, "type",
                          g->type, "count", count, "reason", reason);
    if (wait_ms >= 0)
        json_object_set_new(j, "wait_ms", json_integer((json_int_t)wait_ms));
    json_array_append_new(p->pending, j);
}

/* Logs a group's placement problem when it differs from the last one said. */
static void say_once(struct pass *p, const struct group *g, const char *msg)
{
    const char *was = str_of(p->r->said, g->key);
    if (was && strcmp(was, msg) == 0)
        return;
    json_object_set_new(p->r->said, g->key, json_string(msg));
    log_warn(COMP, "cannot place", "app=%s release=%s type=%s reason=\"%s\"", g->app, g->release,
             g->type, msg);
}

/* ---- 1. lost hosts ---- */

/* Jobs on hosts whose record is gone: crashed, "host lost", desired down
 * (so an agent that comes back stops them). Only a job that was wanted up
 * gets exactly RESTART_HOST_LOST, the mark of one to replace at once. */
static int mark_lost(struct pass *p, struct pier_err *err)
{
    struct cluster *c = p->c;
    int64_t age = clock_now_ms() - p->r->loaded_ms;
    cleanup_json json_t *hosts = json_object(); /* host id -> jobs marked */
    for (size_t i = 0; i < cluster_job_count(c); i++) {
        const struct cluster_job *j = cluster_job_at(c, i);
        if (cluster_job_ended(j->rec))
            continue;
        enum cluster_host_state st = cluster_host_state(c, j->host_id);
        if (st == CLUSTER_HOST_UP)
            continue;
        if (st == CLUSTER_HOST_UNKNOWN && age < p->r->o.host_grace_ms) {
            if (p->r->o.host_grace_ms - age < p->wake)
                p->wake = p->r->o.host_grace_ms - age;
            continue;
        }
        json_t *rec = json_deep_copy(j->rec);
        bool wanted = cluster_job_active(j->rec);
        json_object_set_new(rec, "state", json_string("crashed"));
        json_object_set_new(rec, "host_error",
                            json_string(wanted ? RESTART_HOST_LOST : "host lost while stopping"));
        json_object_set_new(rec, "desired_state", json_string("down"));
        now_rfc3339(rec, "finished_at");
        add_update(p, j->id, rec);
        json_t *n = json_object_get(hosts, j->host_id);
        json_object_set_new(hosts, j->host_id, json_integer(n ? json_integer_value(n) + 1 : 1));
    }
    size_t n_ups = p->n_ups;
    if (n_ups == 0)
        return 0;
    size_t written = 0;
    int rc = cluster_update_jobs(c, p->s, p->ups, n_ups, &written, err);
    const char *host;
    json_t *n;
    json_object_foreach(hosts, host, n)
    {
        log_warn(COMP, "host lost: its jobs are crashed and will be replaced", "host=%s jobs=%d",
                 host, (int)json_integer_value(n));
    }
    p->n_ups = 0;
    if (rc == 0 && written < n_ups)
        rc = err_set(err, PIER_ECONFLICT, "jobs of a lost host changed meanwhile");
    return rc;
}

/* ---- 2. groups ---- */

static struct group *group_get(struct pass *p, const char *app, const char *release,
                               const char *type)
{
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s\x1f%s\x1f%s", app, release, type);
    json_t *v = json_object_get(p->index, key.p); /* borrowed */
    if (v) {
        buf_free(&key);
        return &p->groups[json_integer_value(v)];
    }
    if (p->n_groups == p->cap_groups) {
        p->cap_groups = p->cap_groups ? 2 * p->cap_groups : 16;
        p->groups = xrealloc(p->groups, p->cap_groups * sizeof(*p->groups));
    }
    struct group *g = &p->groups[p->n_groups];
    *g = (struct group){.app = xstrdup(app),
                        .release = xstrdup(release),
                        .type = xstrdup(type),
                        .active_head = -1,
                        .cand_head = -1};
    json_object_set_new(p->index, key.p, json_integer((json_int_t)p->n_groups++));
    g->key = buf_detach(&key);
    struct buf fkey = BUF_INIT;
    buf_printf(&fkey, "%s/%s", app, release);
    g->formation = records_get(p->rec, RECORDS_FORMATIONS, fkey.p, &g->formation_rev);
    buf_free(&fkey);
    const json_t *procs = json_object_get(g->formation, "processes");
    json_int_t n = json_integer_value(json_object_get(procs, type));
    g->want = n > 0 ? (n > 100000 ? 100000 : (int)n) : 0;
    return g;
}

/* An ended job still to be replaced: not handled yet, and wanted up (or
 * lost with its host while wanted up). */
static bool is_candidate(const json_t *job)
{
    if (json_object_get(job, "replaced_by") || json_is_true(json_object_get(job, "crash_loop")))
        return false;
    const char *want = str_of(job, "desired_state");
    const char *why = str_of(job, "host_error");
    return !want || strcmp(want, "up") == 0 || (why && strcmp(why, RESTART_HOST_LOST) == 0);
}

static void build_groups(struct pass *p)
{
    size_t n = cluster_job_count(p->c);
    p->ents = xcalloc(n ? n : 1, sizeof(*p->ents));
    for (size_t i = 0; i < n; i++) {
        const struct cluster_job *j = cluster_job_at(p->c, i);
        const json_t *rec = j->rec;
        const char *app = str_of(rec, "app"), *release = str_of(rec, "release"),
                   *type = str_of(rec, "type");
        if (!app || !release || !type || json_is_true(json_object_get(rec, "oneoff")))
            continue;
        struct group *g = group_get(p, app, release, type);
        p->ents[i] = (struct entry){.job = j, .next = -1};
        bool ended = cluster_job_ended(rec);
        if (!ended)
            g->running++;
        if (cluster_job_active(rec)) {
            g->active++;
            const char *st = str_of(rec, "state");
            if (st && strcmp(st, "up") == 0)
                g->up++;
            p->ents[i].next = g->active_head;
            g->active_head = (ssize_t)i;
        } else if (ended && is_candidate(rec)) {
            p->ents[i].next = g->cand_head;
            g->cand_head = (ssize_t)i;
        }
        if (ended && json_is_true(json_object_get(rec, "crash_loop")) && g->formation &&
            json_integer_value(json_object_get(rec, "formation_rev")) == g->formation_rev)
            g->blocked = true;
    }
    /* Formations with no jobs yet. */
    const char *fid;
    json_t *f;
    json_object_foreach((json_t *)records_all(p->rec, RECORDS_FORMATIONS), fid, f)
    {
        const char *app = str_of(f, "app"), *release = str_of(f, "release");
        const json_t *procs = json_object_get(f, "processes");
        if (!app || !release || !json_is_object(procs))
            continue;
        const char *type;
        json_t *cnt;
        json_object_foreach((json_t *)procs, type, cnt)
        {
            if (json_integer_value(cnt) > 0)
                group_get(p, app, release, type);
        }
    }
}

/* The jobs of a list, in an array (the caller frees it). */
static const struct cluster_job **list_jobs(struct pass *p, ssize_t head, size_t *n)
{
    size_t count = 0;
    for (ssize_t i = head; i >= 0; i = p->ents[i].next)
        count++;
    const struct cluster_job **out = xcalloc(count ? count : 1, sizeof(*out));
    count = 0;
    for (ssize_t i = head; i >= 0; i = p->ents[i].next)
        out[count++] = p->ents[i].job;
    *n = count;
    return out;
}

static int job_is_up(const struct cluster_job *j)
{
    const char *st = str_of(j->rec, "state");
    return st && strcmp(st, "up") == 0;
}

static int strcmp_null(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "");
}

/* Stop order: jobs not up yet first, then the newest. */
static int cmp_stop(const void *a, const void *b)
{
    const struct cluster_job *x = *(const struct cluster_job *const *)a;
    const struct cluster_job *y = *(const struct cluster_job *const *)b;
    if (job_is_up(x) != job_is_up(y))
        return job_is_up(x) - job_is_up(y);
    int c = strcmp_null(str_of(y->rec, "created_at"), str_of(x->rec, "created_at"));
    return c ? c : strcmp(y->id, x->id);
}

/* Replacement order: what ended first. */
static int cmp_ended(const void *a, const void *b)
{
    const struct cluster_job *x = *(const struct cluster_job *const *)a;
    const struct cluster_job *y = *(const struct cluster_job *const *)b;
    int c = strcmp_null(str_of(x->rec, "finished_at"), str_of(y->rec, "finished_at"));
    return c ? c : strcmp(x->id, y->id);
}

static void stop_extra(struct pass *p, struct group *g)
{
    size_t n = 0;
    const struct cluster_job **act = list_jobs(p, g->active_head, &n);
    qsort(act, n, sizeof(*act), cmp_stop);
    size_t extra = n - (size_t)g->want;
    for (size_t i = 0; i < extra; i++) {
        json_t *rec = json_deep_copy(act[i]->rec);
        json_object_set_new(rec, "desired_state", json_string("down"));
        add_update(p, act[i]->id, rec);
    }
    log_info(COMP, "stopping jobs", "app=%s release=%s type=%s count=%zu want=%d", g->app,
             g->release, g->type, extra, g->want);
    free(act);
}

/* The n of a job's DYNO "<type>.<n>", or 0. */
static int dyno_index(const json_t *job, const char *type)
{
    const char *d = str_of(json_object_get(job, "env"), "DYNO");
    size_t tl = strlen(type);
    if (!d || strncmp(d, type, tl) != 0 || d[tl] != '.')
        return 0;
    long n = strtol(d + tl + 1, NULL, 10);
    return n > 0 && n < 1000000 ? (int)n : 0;
}

/* The lowest DYNO number free in used[0..n) (used[i] for number i + 1),
 * preferring want when it is free; marks it used. *cursor (start 0) is
 * where the search for a free one goes on, so a group's numbers are handed
 * out in one walk however many are asked for. */
static int take_index(bool *used, size_t n, int want, size_t *cursor)
{
    if (want > 0 && (size_t)want <= n && !used[want - 1]) {
        used[want - 1] = true;
        return want;
    }
    while (*cursor < n && used[*cursor])
        (*cursor)++;
    if (*cursor == n)
        return (int)n + 1;
    used[*cursor] = true;
    return (int)++*cursor;
}

/* The job record of the group's process type, or NULL with the reason said. */
static json_t *group_spec(struct pass *p, struct group *g)
{
    const json_t *app = records_get(p->rec, RECORDS_APPS, g->app, NULL);
    const json_t *release = records_get(p->rec, RECORDS_RELEASES, g->release, NULL);
    struct pier_err err = {0};
    if (!app || !release) {
        err_set(&err, PIER_ENOTFOUND, "%s %s not found", app ? "release" : "app",
                app ? g->release : g->app);
    } else {
        cleanup_json json_t *arts = json_array();
        const json_t *ids = json_object_get(release, "artifacts");
        size_t i;
        json_t *id;
        json_array_foreach(ids, i, id)
        {
            const json_t *a = records_get(p->rec, RECORDS_ARTIFACTS, json_string_value(id), NULL);
            if (a && json_string_value(id))
                json_array_append(arts, (json_t *)a);
        }
        const char *one = str_of(release, "artifact");
        const json_t *a1 = one ? records_get(p->rec, RECORDS_ARTIFACTS, one, NULL) : NULL;
        if (a1)
            json_array_append(arts, (json_t *)a1);
        json_t *spec = NULL;
        if (jobbuild_spec(app, release, arts, g->type, NULL, &spec, &err) == 0)
            return spec;
    }
    say_once(p, g, err.msg);
    add_pending(p, g, g->want - (int)g->active, err.msg, -1);
    return NULL;
}

static void give_up(struct pass *p, struct group *g, const struct cluster_job *j, int restarts)
{
    json_t *rec = json_deep_copy(j->rec);
    const char *was = str_of(j->rec, "host_error");
    json_int_t status = json_integer_value(json_object_get(j->rec, "exit_status"));
    struct buf msg = BUF_INIT;
    buf_printf(&msg, "crash loop: %d restarts in a row, not restarted until the formation changes",
               restarts);
    if (was && *was)
        buf_printf(&msg, " (last: %s)", was);
    else
        buf_printf(&msg, " (last exit status %" JSON_INTEGER_FORMAT ")", status);
    json_object_set_new(rec, "crash_loop", json_true());
    json_object_set_new(rec, "host_error", json_string(msg.p));
    json_object_set_new(rec, "formation_rev", json_integer((json_int_t)g->formation_rev));
    log_warn(COMP, "giving up: crash loop", "app=%s release=%s type=%s job=%s restarts=%d", g->app,
             g->release, g->type, j->id, restarts);
    buf_free(&msg);
    add_update(p, j->id, rec);
    g->blocked = true;
}

/* Replaces ended jobs whose backoff is over and places the rest of what is
 * missing. */
static void fill(struct pass *p, struct group *g)
{
    int missing = g->want - (int)g->active;
    size_t n_act = 0, n_cand = 0;
    const struct cluster_job **act = list_jobs(p, g->active_head, &n_act);
    const struct cluster_job **cand = list_jobs(p, g->cand_head, &n_cand);
    qsort(cand, n_cand, sizeof(*cand), cmp_ended);
    size_t n_idx = (size_t)g->want + n_act + 1;
    bool *used = xcalloc(n_idx, sizeof(*used));
    size_t cursor = 0;
    for (size_t i = 0; i < n_act; i++) {
        int d = dyno_index(act[i]->rec, g->type);
        if (d > 0 && (size_t)d <= n_idx)
            used[d - 1] = true;
    }
    json_t *spec = group_spec(p, g);
    const json_t *tags = json_object_get(json_object_get(g->formation, "tags"), g->type);
    for (size_t i = 0; spec && i < n_cand && missing > 0 && !g->blocked; i++) {
        struct restart_decision d;
        restart_decide(&p->r->o.restart, cand[i]->rec, p->now, &d);
        if (d.give_up) {
            give_up(p, g, cand[i], d.restarts);
            break;
        }
        missing--;
        if (d.due_ms > p->now) {
            if (d.due_ms - p->now < p->wake)
                p->wake = d.due_ms - p->now;
            add_pending(p, g, 1, "restart backoff", d.due_ms - p->now);
            continue;
        }
        json_t *job = json_deep_copy(spec);
        json_object_set_new(job, "restarts", json_integer(d.restarts));
        jobbuild_set_index(job,
                           take_index(used, n_idx, dyno_index(cand[i]->rec, g->type), &cursor));
        struct cluster_want *w = add_want(p, g, job, json_is_object(tags) ? tags : NULL);
        w->replaces = keep_str(p, cand[i]->id);
    }
    for (; spec && missing > 0 && !g->blocked; missing--) {
        json_t *job = json_deep_copy(spec);
        jobbuild_set_index(job, take_index(used, n_idx, 0, &cursor));
        add_want(p, g, job, json_is_object(tags) ? tags : NULL);
    }
    if (g->blocked)
        add_pending(p, g, g->want - (int)g->active,
                    "crash loop: waiting for the formation to change", -1);
    json_decref(spec);
    free(used);
    free(act);
    free(cand);
}

static void decide(struct pass *p)
{
    for (size_t i = 0; i < p->n_groups; i++) {
        struct group *g = &p->groups[i];
        if ((int)g->active > g->want)
            stop_extra(p, g);
        else if ((int)g->active < g->want)
            fill(p, g);
    }
}

/* ---- writing ---- */

/* What the placement did, in the log and the status. */
static void report_placed(struct pass *p, size_t placed)
{
    size_t unplaced = 0;
    for (size_t i = 0; i < p->n_wants; i++) {
        struct cluster_want *w = &p->wants[i];
        struct group *g = &p->groups[p->want_group[i]];
        if (w->placed) {
            json_object_del(p->r->said, g->key);
            if (w->replaces)
                log_info(COMP, "replaced job", "app=%s release=%s type=%s job=%s by=%s restarts=%d",
                         g->app, g->release, g->type, w->replaces, w->id,
                         (int)json_integer_value(json_object_get(w->job, "restarts")));
        } else if (w->why.msg[0] && w->why.code != PIER_ECONFLICT) {
            unplaced++;
            say_once(p, g, w->why.msg);
            add_pending(p, g, 1, w->why.msg, -1);
        }
    }
    if (placed > 0)
        log_info(COMP, "placed jobs", "count=%zu asked=%zu unplaced=%zu", placed, p->n_wants,
                 unplaced);
}

static int write_all(struct pass *p, struct pier_err *err)
{
    bool conflict = false;
    if (p->n_ups > 0) {
        size_t written = 0;
        int rc = cluster_update_jobs(p->c, p->s, p->ups, p->n_ups, &written, err);
        if (rc < 0)
            return rc;
        conflict = written < p->n_ups;
    }
    if (p->n_wants > 0) {
        size_t placed = 0;
        int rc = cluster_place(p->c, p->s, p->wants, p->n_wants, &placed, err);
        report_placed(p, placed);
        if (rc == PIER_ECONFLICT)
            conflict = true;
        else if (rc < 0)
            return rc;
    }
    if (conflict)
        return err_set(err, PIER_ECONFLICT, "a job or host changed meanwhile");
    return 0;
}

/* ---- 3. scale requests ---- */

static const struct group *group_find(struct pass *p, const char *app, const char *release,
                                      const char *type)
{
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s\x1f%s\x1f%s", app, release, type);
    json_t *v = json_object_get(p->index, key.p); /* borrowed */
    buf_free(&key);
    return v ? &p->groups[json_integer_value(v)] : NULL;
}

/* Met: each type of new_processes has exactly its count of jobs running,
 * all wanted and up, and every other type of the release runs none. */
static bool scale_met(struct pass *p, const json_t *req)
{
    const char *app = str_of(req, "app"), *release = str_of(req, "release");
    const json_t *procs = json_object_get(req, "new_processes");
    if (!app || !release)
        return false;
    const char *type;
    json_t *cnt;
    json_object_foreach((json_t *)procs, type, cnt)
    {
        json_int_t n = json_integer_value(cnt);
        const struct group *g = group_find(p, app, release, type);
        size_t running = g ? g->running : 0, up = g ? g->up : 0, active = g ? g->active : 0;
        if (n < 0)
            n = 0;
        if (running != (size_t)n || up != (size_t)n || active != (size_t)n)
            return false;
    }
    for (size_t i = 0; i < p->n_groups; i++) {
        const struct group *g = &p->groups[i];
        if (strcmp(g->app, app) == 0 && strcmp(g->release, release) == 0 && g->running > 0 &&
            !json_object_get(procs, g->type))
            return false;
    }
    return true;
}

/* Writes state "complete" on one request; 1 when written, 0 when it
 * changed meanwhile (or is gone). */
static int complete_request(struct pass *p, const char *id, const json_t *req, json_t *done,
                            struct pier_err *err)
{
    int64_t mod = 0;
    records_get(p->rec, RECORDS_SCALE_REQUESTS, id, &mod);
    cleanup_json json_t *rec = json_deep_copy(req);
    json_object_set_new(rec, "state", json_string("complete"));
    now_rfc3339(rec, "updated_at");
    cleanup_free char *text = json_dumps(rec, JSON_COMPACT);
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_SCALE_REQUESTS, id);
    int64_t rev = 0;
    int rc = store_cas(p->s, key.p, text, strlen(text), mod, 0, &rev, err);
    if (rc == PIER_ECONFLICT || rc == PIER_ENOTFOUND)
        return 0;
    if (rc < 0)
        return rc;
    log_info(COMP, "scale request complete", "id=%s app=%s release=%s", id, str_of(req, "app"),
             str_of(req, "release"));
    json_array_append_new(done, json_pack("[s,O,I]", id, rec, (json_int_t)rev));
    return 1;
}

static int scale_requests(struct pass *p, struct pier_err *err)
{
    const char *id;
    json_t *req;
    cleanup_json json_t *done = json_array(); /* [id, rec, rev] written */
    json_object_foreach((json_t *)records_all(p->rec, RECORDS_SCALE_REQUESTS), id, req)
    {
        const char *st = str_of(req, "state");
        if (!st || strcmp(st, "pending") != 0 || !scale_met(p, req))
            continue;
        int rc = complete_request(p, id, req, done, err);
        if (rc < 0)
            return rc;
    }
    /* Taken in after the walk: records_put changes the object walked. */
    size_t i;
    json_t *d;
    json_array_foreach(done, i, d)
    {
        records_put(p->rec, RECORDS_SCALE_REQUESTS, json_string_value(json_array_get(d, 0)),
                    json_incref(json_array_get(d, 1)), json_integer_value(json_array_get(d, 2)));
    }
    return 0;
}

/* ---- status and the pass ---- */

static json_t *status_of(struct pass *p)
{
    struct cluster *c = p->c;
    size_t nh = cluster_host_count(c);
    int64_t *mem = xcalloc(nh ? nh : 1, sizeof(*mem));
    size_t *jobs = xcalloc(nh ? nh : 1, sizeof(*jobs));
    cluster_usage(c, mem, jobs);
    json_t *hosts = json_array();
    for (size_t h = 0; h < nh; h++) {
        const struct cluster_host *host = cluster_host_at(c, h);
        json_t *total = json_object_get(json_object_get(host->rec, "memory"), "total");
        json_array_append_new(hosts, json_pack("{s:s,s:O,s:I,s:I}", "id", host->id, "memory_total",
                                               total ? total : json_null(), "memory_allocated",
                                               (json_int_t)mem[h], "jobs", (json_int_t)jobs[h]));
    }
    free(mem);
    free(jobs);
    json_t *forms = json_array();
    for (size_t i = 0; i < p->n_groups; i++) {
        const struct group *g = &p->groups[i];
        if (!g->formation && g->running == 0)
            continue;
        json_array_append_new(forms, json_pack("{s:s,s:s,s:s,s:i,s:I,s:I,s:I,s:b}", "app", g->app,
                                               "release", g->release, "type", g->type, "want",
                                               g->want, "active", (json_int_t)g->active, "up",
                                               (json_int_t)g->up, "running", (json_int_t)g->running,
                                               "crash_loop", g->blocked));
    }
    return json_pack("{s:I,s:o,s:o,s:O}", "revision", (json_int_t)cluster_revision(c), "hosts",
                     hosts, "formations", forms, "pending", p->pending);
}

int reconcile_pass(struct reconcile *r, struct cluster *c, struct records *rec, struct store *s,
                   int64_t *wake_ms, struct pier_err *err)
{
    struct pass p = {.r = r,
                     .c = c,
                     .rec = rec,
                     .s = s,
                     .now = wall_ms(),
                     .index = json_object(),
                     .keep = json_array(),
                     .pending = json_array(),
                     .wake = INT64_MAX};
    int rc = mark_lost(&p, err);
    if (rc == 0) {
        build_groups(&p);
        decide(&p);
        rc = write_all(&p, err);
        /* The counts were read before the writes, which only ever make
         * a request less complete: judging by them is safe. */
        int rc2 = rc == 0 || rc == PIER_ECONFLICT ? scale_requests(&p, err) : 0;
        if (rc == 0)
            rc = rc2;
    }
    int64_t mono = clock_now_ms();
    if (rc == 0 && mono - r->last_gc_ms >= r->o.gc.every_ms) {
        r->last_gc_ms = mono;
        rc = jobgc_run(c, rec, s, &r->o.gc, p.now, err);
    }
    json_decref(r->status);
    r->status = status_of(&p);
    for (size_t i = 0; i < p.n_wants; i++)
        json_decref(p.wants[i].job);
    for (size_t i = 0; i < p.n_groups; i++) {
        free(p.groups[i].key);
        free(p.groups[i].app);
        free(p.groups[i].release);
        free(p.groups[i].type);
    }
    free(p.groups);
    free(p.wants);
    free(p.want_group);
    free(p.ups);
    free(p.ents);
    json_decref(p.index);
    json_decref(p.keep);
    json_decref(p.pending);
    *wake_ms = p.wake == INT64_MAX ? -1 : p.wake;
    return rc;
}

struct reconcile *reconcile_new(const struct reconcile_opts *o)
{
    struct reconcile *r = xcalloc(1, sizeof(*r));
    r->o = *o;
    r->said = json_object();
    r->loaded_ms = clock_now_ms();
    r->last_gc_ms = clock_now_ms();
    return r;
}

void reconcile_reset(struct reconcile *r)
{
    r->loaded_ms = clock_now_ms();
    json_object_clear(r->said);
}

json_t *reconcile_status(struct reconcile *r)
{
    return r->status ? json_deep_copy(r->status) : json_object();
}

void reconcile_free(struct reconcile *r)
{
    if (!r)
        return;
    json_decref(r->said);
    json_decref(r->status);
    free(r);
}
