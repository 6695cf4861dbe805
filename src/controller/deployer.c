/* deployer: runs the deployments the API records (deployments.c), on the
 * leading controller only.
 *
 * A deployment moves an app from old_release to new_release by changing
 * formations, and nothing else: the service scheduler starts and stops the
 * jobs. Each step waits until the jobs it asked for are healthy (where the
 * process type has a check) or up for SETTLE_MS (where not), or gone:
 *   all-at-once: the new formation gets every count; once all its jobs are
 *                up, the old formation goes to zero;
 *   one-by-one:  per type, one new job up, then one old job down, repeated.
 * A new job that crashes or fails, or a deadline of deploy_timeout seconds
 * from the start, rolls the deployment back: the new formation goes to
 * zero and the old one gets its counts back (all-at-once never touched
 * it), the app keeps its release, and the record says failed with why.
 * Success sets the app's release.
 *
 * The steps are level-triggered from the formations in the store, so a
 * deployment interrupted by a leader change is picked up by the next
 * leader where the formations say it was. Each step is written to the
 * deployment record (job_type, job_state, status, error), from which the
 * event recorder makes the deployment events a client follows. */
#include "controller/deployer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

#define MAX_ACTIVE 64
/* A new job without a check counts as up once it has stayed up this long,
 * so that a process that starts and then exits at once is a crash, not a
 * success. A job with a check counts once it is healthy: its check passed
 * `threshold` times in a row, which says more than any wait. */
#define SETTLE_MS 2000

struct ctl_deployer {
    struct ctl *c;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    struct run *runs[MAX_ACTIVE]; /* deployments being run by this process */
};

struct run {
    struct ctl_deployer *d;
    char id[64];
    pthread_t thread;
    atomic_bool done;
};

/* ---- the app's jobs, as a watch keeps them ---- */

struct job {
    char *id, *release, *type;
    bool up, checked, ended, active, crashed;
    int64_t up_since_ms; /* when it was first seen up (and healthy), 0 if not up */
};

struct jobs {
    struct ctl *c;
    char *app;
    struct job *v;
    size_t n, cap;
    struct store_watch *w;
};

static bool job_has_check(const json_t *rec)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(rec, "ports"), i, p)
    {
        if (json_object_get(json_object_get(p, "service"), "check"))
            return true;
    }
    return false;
}

static void job_clear(struct job *j)
{
    free(j->id);
    free(j->release);
    free(j->type);
    memset(j, 0, sizeof(*j));
}

static void jobs_set(struct jobs *js, const char *key, const char *value, size_t len)
{
    const char *id = key + strlen(KEYS_JOBS);
    size_t i;
    for (i = 0; i < js->n && strcmp(js->v[i].id, id) != 0; i++)
        ;
    json_t *rec = NULL;
    const char *app = NULL;
    if (value && jsonx_parse_object(value, len, &rec, NULL) == 0)
        app = json_string_value(json_object_get(rec, "app"));
    if (!rec || !app || strcmp(app, js->app) != 0) {
        if (i < js->n) { /* deleted, or no longer the app's */
            job_clear(&js->v[i]);
            js->v[i] = js->v[--js->n];
        }
        json_decref(rec);
        return;
    }
    if (i == js->n) {
        if (js->n == js->cap) {
            js->cap = js->cap ? js->cap * 2 : 16;
            js->v = xrealloc(js->v, js->cap * sizeof(*js->v));
        }
        memset(&js->v[js->n++], 0, sizeof(struct job));
        js->v[i].id = xstrdup(id);
    }
    struct job *j = &js->v[i];
    free(j->release);
    free(j->type);
    const char *rel = json_string_value(json_object_get(rec, "release"));
    const char *type = json_string_value(json_object_get(rec, "type"));
    const char *state = json_string_value(json_object_get(rec, "state"));
    const char *desired = json_string_value(json_object_get(rec, "desired_state"));
    j->release = xstrdup(rel ? rel : "");
    j->type = xstrdup(type ? type : "");
    state = state ? state : "pending";
    j->ended =
        strcmp(state, "down") == 0 || strcmp(state, "crashed") == 0 || strcmp(state, "failed") == 0;
    j->crashed = strcmp(state, "crashed") == 0 || strcmp(state, "failed") == 0;
    j->active = !j->ended && !(desired && strcmp(desired, "down") == 0);
    j->checked = job_has_check(rec);
    j->up = strcmp(state, "up") == 0 && j->active &&
            (!j->checked || json_is_true(json_object_get(rec, "healthy")));
    if (!j->up)
        j->up_since_ms = 0;
    else if (!j->up_since_ms)
        j->up_since_ms = clock_now_ms();
    json_decref(rec);
}

static int jobs_open(struct ctl *c, const char *app, struct jobs *js, struct pier_err *err)
{
    memset(js, 0, sizeof(*js));
    js->c = c;
    js->app = xstrdup(app);
    struct store_range *r = NULL;
    int rc = store_list(c->s, KEYS_JOBS, NULL, &r, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < r->n; i++)
        jobs_set(js, r->kvs[i].key, r->kvs[i].value, r->kvs[i].value_len);
    const struct store_watch_opts o = {.prefix = true, .start_revision = r->revision + 1};
    store_range_free(r);
    return store_watch_open(c->s, KEYS_JOBS, &o, &js->w, err);
}

static void jobs_close(struct jobs *js)
{
    store_watch_close(js->w);
    for (size_t i = 0; i < js->n; i++)
        job_clear(&js->v[i]);
    free(js->v);
    free(js->app);
}

/* The watch died (its history was compacted while it reconnected): reads
 * the jobs again and watches from there, keeping when each job that is
 * still up was first seen up. */
static void jobs_reload(struct jobs *js)
{
    struct jobs fresh;
    if (jobs_open(js->c, js->app, &fresh, NULL) < 0) {
        jobs_close(&fresh);
        return; /* the store away: the next poll tries again */
    }
    for (size_t i = 0; i < fresh.n; i++) {
        for (size_t k = 0; k < js->n; k++) {
            if (strcmp(fresh.v[i].id, js->v[k].id) == 0 && fresh.v[i].up && js->v[k].up)
                fresh.v[i].up_since_ms = js->v[k].up_since_ms;
        }
    }
    jobs_close(js);
    *js = fresh;
}

/* Takes in what changed within timeout_ms. */
static void jobs_poll(struct jobs *js, int timeout_ms)
{
    struct store_events *ev = NULL;
    int rc = store_watch_next(js->w, timeout_ms, &ev, NULL);
    if (rc == PIER_ECOMPACTED) {
        /* A dead watch answers at once: without this the waits would spin
         * and never see a job change again. */
        jobs_reload(js);
        return;
    }
    if (rc < 0)
        return; /* a timeout, or the store away: the next poll retries */
    for (size_t i = 0; i < ev->n; i++) {
        const struct store_event *e = &ev->ev[i];
        jobs_set(js, e->kv.key, e->type == STORE_EVENT_PUT ? e->kv.value : NULL, e->kv.value_len);
    }
    store_events_free(ev);
}

struct count {
    int up, active, crashed;
    const char *crashed_id;
};

static struct count jobs_count(const struct jobs *js, const char *release, const char *type)
{
    struct count n = {0};
    for (size_t i = 0; i < js->n; i++) {
        const struct job *j = &js->v[i];
        if (strcmp(j->release, release) != 0 || (type && strcmp(j->type, type) != 0))
            continue;
        n.up += j->up && (j->checked || clock_now_ms() - j->up_since_ms >= SETTLE_MS);
        n.active += j->active;
        if (j->crashed && !n.crashed++)
            n.crashed_id = j->id;
    }
    return n;
}

/* ---- records ---- */

struct dep {
    struct ctl *c;
    json_t *rec; /* the deployment as last written */
    int64_t rev;
    char key[160];
    const char *app, *old_rel, *new_rel, *strategy;
    json_t *processes; /* borrowed from rec: the counts to reach */
    json_t *tags;      /* borrowed: the old formation's tags, or NULL */
    int64_t deadline_ms;
    int crashes_before; /* crashed jobs of the new release before it began */
};

/* Writes fields into the deployment record (CAS, re-read on conflict). */
static int dep_update(struct dep *d, json_t *fields)
{
    struct pier_err err = {0};
    int rc = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        json_object_update(d->rec, fields);
        rc = ctl_put(d->c, d->key, d->rec, d->rev, &err);
        if (rc == 0) {
            json_t *fresh = NULL;
            ctl_get(d->c, d->key, &fresh, &d->rev, NULL);
            if (fresh) {
                json_decref(d->rec);
                d->rec = fresh;
            }
            break;
        }
        if (rc != PIER_ECONFLICT)
            break;
        json_t *fresh = NULL;
        if (ctl_get(d->c, d->key, &fresh, &d->rev, &err) < 0)
            break;
        json_decref(d->rec);
        d->rec = fresh;
    }
    json_decref(fields);
    if (rc < 0)
        log_warn("deployer", "cannot update the deployment", "id=%s reason=\"%s\"",
                 d->key + strlen(KEYS_DEPLOYMENTS), err.msg);
    return rc;
}

static void step(struct dep *d, const char *type, const char *state)
{
    dep_update(d, json_pack("{s:s,s:s,s:I}", "job_type", type, "job_state", state, "step",
                            (json_int_t)json_integer_value(json_object_get(d->rec, "step")) + 1));
}

/* Sets formation <app>/<release> type counts (other types kept), with
 * tags. counts NULL means: every type of the release's formation to the
 * values in all. */
static int formation_set(struct dep *d, const char *release, const char *type, int64_t n,
                         const json_t *all)
{
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s/%s", KEYS_FORMATIONS, d->app, release);
    struct pier_err err = {0};
    int rc = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        json_t *f = NULL;
        int64_t rev = 0;
        rc = ctl_get(d->c, key.p, &f, &rev, &err);
        if (rc == PIER_ENOTFOUND) {
            f = json_pack("{s:s,s:s,s:{}}", "app", d->app, "release", release, "processes");
            if (d->tags)
                json_object_set(f, "tags", d->tags);
            ctl_set_now(f, "created_at");
            rev = 0;
        } else if (rc < 0) {
            break;
        }
        json_t *procs = json_object_get(f, "processes");
        if (!json_is_object(procs)) {
            procs = json_object();
            json_object_set_new(f, "processes", procs);
        }
        if (all)
            json_object_update(procs, (json_t *)all);
        else
            json_object_set_new(procs, type, json_integer(n));
        ctl_set_now(f, "updated_at");
        rc = ctl_put(d->c, key.p, f, rev, &err);
        json_decref(f);
        if (rc != PIER_ECONFLICT && rc != PIER_EEXISTS)
            break;
    }
    buf_free(&key);
    if (rc < 0)
        log_warn("deployer", "cannot write a formation", "app=%s release=%s reason=\"%s\"", d->app,
                 release, err.msg);
    return rc;
}

/* The count of type in formation <app>/<release> as stored (0 when there
 * is none, or it cannot be read). */
static int formation_count(struct dep *d, const char *release, const char *type)
{
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s/%s", KEYS_FORMATIONS, d->app, release);
    json_t *f = NULL;
    int n = 0;
    if (ctl_get(d->c, key.p, &f, NULL, NULL) == 0) {
        json_int_t v = json_integer_value(json_object_get(json_object_get(f, "processes"), type));
        n = v > 0 && v < INT32_MAX ? (int)v : 0;
    }
    json_decref(f);
    buf_free(&key);
    return n;
}

/* Zero counts for every type in processes. */
static json_t *zeros(const json_t *processes)
{
    json_t *z = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)processes, k, v)
    {
        json_object_set_new(z, k, json_integer(0));
    }
    return z;
}

enum { WAIT_OK = 0, WAIT_CRASH = -1, WAIT_TIMEOUT = -2, WAIT_STOP = -3 };

/* Waits until cond holds for the jobs, failing on a new crash of the new
 * release, the deadline, or the end of leadership. */
static int wait_for(struct dep *d, struct jobs *js,
                    bool (*cond)(struct dep *, struct jobs *, const void *), const void *arg,
                    struct ctl_deployer *owner, char *why, size_t why_len)
{
    for (;;) {
        struct count nc = jobs_count(js, d->new_rel, NULL);
        if (nc.crashed > d->crashes_before) {
            snprintf(why, why_len, "job %s of the new release crashed at start",
                     nc.crashed_id ? nc.crashed_id : "?");
            return WAIT_CRASH;
        }
        if (cond(d, js, arg))
            return WAIT_OK;
        if (clock_now_ms() > d->deadline_ms) {
            snprintf(why, why_len, "timed out after %lld s",
                     (long long)json_integer_value(json_object_get(d->rec, "deploy_timeout")));
            return WAIT_TIMEOUT;
        }
        if (atomic_load(&owner->stop) || !leader_is(d->c->leader))
            return WAIT_STOP;
        jobs_poll(js, 250);
    }
}

struct want {
    const char *release, *type;
    int n;
};

static bool up_at_least(struct dep *d, struct jobs *js, const void *arg)
{
    (void)d;
    const struct want *w = arg;
    return jobs_count(js, w->release, w->type).up >= w->n;
}

static bool active_at_most(struct dep *d, struct jobs *js, const void *arg)
{
    (void)d;
    const struct want *w = arg;
    return jobs_count(js, w->release, w->type).active <= w->n;
}

static int run_all_at_once(struct dep *d, struct jobs *js, struct ctl_deployer *o, char *why,
                           size_t wl)
{
    if (formation_set(d, d->new_rel, NULL, 0, d->processes) < 0) {
        snprintf(why, wl, "cannot write the new formation");
        return WAIT_CRASH;
    }
    const char *type;
    json_t *v;
    json_object_foreach(d->processes, type, v)
    {
        struct want w = {d->new_rel, type, (int)json_integer_value(v)};
        int rc = wait_for(d, js, up_at_least, &w, o, why, wl);
        if (rc < 0)
            return rc;
        step(d, type, "up");
    }
    if (d->old_rel) {
        json_t *z = zeros(d->processes);
        formation_set(d, d->old_rel, NULL, 0, z);
        json_decref(z);
        json_object_foreach(d->processes, type, v)
        {
            struct want w = {d->old_rel, type, 0};
            int rc = wait_for(d, js, active_at_most, &w, o, why, wl);
            if (rc == WAIT_STOP)
                return rc;
            /* The new release serves; old jobs slow to stop do not undo it. */
            step(d, type, "down");
        }
    }
    return WAIT_OK;
}

static int run_one_by_one(struct dep *d, struct jobs *js, struct ctl_deployer *o, char *why,
                          size_t wl)
{
    const char *type;
    json_t *v;
    json_object_foreach(d->processes, type, v)
    {
        int n = (int)json_integer_value(v);
        /* Level-triggered: start from what the formations already say (a
         * deployment resumed by a new leader must not scale the new
         * release back down to 1 and the old one up again). */
        int from = formation_count(d, d->new_rel, type);
        from = from > n ? n : from;
        for (int i = from > 1 ? from : 1; i <= n; i++) {
            struct want up = {d->new_rel, type, i};
            if (formation_set(d, d->new_rel, type, i, NULL) < 0) {
                snprintf(why, wl, "cannot write the new formation");
                return WAIT_CRASH;
            }
            int rc = wait_for(d, js, up_at_least, &up, o, why, wl);
            if (rc < 0)
                return rc;
            step(d, type, "up");
            if (d->old_rel) {
                struct want down = {d->old_rel, type, n - i};
                formation_set(d, d->old_rel, type, n - i, NULL);
                if ((rc = wait_for(d, js, active_at_most, &down, o, why, wl)) < 0)
                    return rc;
                step(d, type, "down");
            }
        }
    }
    return WAIT_OK;
}

static int set_app_release(struct dep *d)
{
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_APPS, d->app);
    struct pier_err err = {0};
    int rc = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        json_t *app = NULL;
        int64_t rev = 0;
        if ((rc = ctl_get(d->c, key.p, &app, &rev, &err)) < 0)
            break;
        json_object_set_new(app, "release", json_string(d->new_rel));
        ctl_set_now(app, "updated_at");
        rc = ctl_put(d->c, key.p, app, rev, &err);
        json_decref(app);
        if (rc != PIER_ECONFLICT)
            break;
    }
    buf_free(&key);
    return rc;
}

static void finish(struct dep *d, const char *status, const char *error)
{
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    dep_update(d, json_pack("{s:s,s:s,s:s,s:I}", "status", status, "error", error ? error : "",
                            "finished_at", now, "step",
                            (json_int_t)json_integer_value(json_object_get(d->rec, "step")) + 1));
    log_info("deployer", "deployment finished", "id=%s app=%s status=%s error=\"%s\"",
             d->key + strlen(KEYS_DEPLOYMENTS), d->app ? d->app : "-", status, error ? error : "");
}

/* Whether the app's release is no longer the deployment's old_release:
 * another deployment of the app (made at the same moment, each controller
 * seeing none in progress) or a PUT of the app's release came first.
 * Running it anyway would deploy from the wrong release. */
static bool release_moved(struct ctl *c, const json_t *rec, char *why, size_t len)
{
    const char *app = json_string_value(json_object_get(rec, "app"));
    const char *old = json_string_value(json_object_get(rec, "old_release"));
    if (!app)
        return false; /* an incomplete record: failed below */
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_APPS, app);
    json_t *a = NULL;
    int rc = ctl_get(c, key.p, &a, NULL, NULL);
    buf_free(&key);
    if (rc == PIER_ENOTFOUND) {
        snprintf(why, len, "the app was deleted");
        return true;
    }
    if (rc < 0)
        return false;
    const char *cur = json_string_value(json_object_get(a, "release"));
    bool moved = strcmp(cur ? cur : "", old ? old : "") != 0;
    if (moved)
        snprintf(why, len,
                 "the app's release changed (to %s) after this deployment was asked for: "
                 "another deployment came first; deploy again",
                 cur ? cur : "none");
    json_decref(a);
    return moved;
}

static void run_deployment(struct ctl_deployer *o, const char *id)
{
    struct dep d = {.c = o->c};
    snprintf(d.key, sizeof(d.key), "%s%s", KEYS_DEPLOYMENTS, id);
    struct pier_err err = {0};
    if (ctl_get(o->c, d.key, &d.rec, &d.rev, &err) < 0)
        return;
    const char *status = json_string_value(json_object_get(d.rec, "status"));
    if (!status || (strcmp(status, "pending") != 0 && strcmp(status, "running") != 0)) {
        json_decref(d.rec);
        return;
    }
    char moved[320];
    if (strcmp(status, "pending") == 0 && release_moved(o->c, d.rec, moved, sizeof(moved))) {
        cleanup_json json_t *rec0 = json_deep_copy(d.rec);
        d.app = json_string_value(json_object_get(rec0, "app"));
        finish(&d, "failed", moved);
        json_decref(d.rec);
        return;
    }
    if (strcmp(status, "pending") == 0) {
        char now[CLOCK_RFC3339_LEN];
        clock_rfc3339(now);
        dep_update(&d, json_pack("{s:s,s:s,s:I}", "status", "running", "started_at", now, "step",
                                 (json_int_t)1));
    }
    /* Copies: d.rec is replaced by every update. */
    cleanup_json json_t *rec = json_deep_copy(d.rec);
    d.app = json_string_value(json_object_get(rec, "app"));
    d.old_rel = json_string_value(json_object_get(rec, "old_release"));
    d.new_rel = json_string_value(json_object_get(rec, "new_release"));
    d.strategy = json_string_value(json_object_get(rec, "strategy"));
    d.processes = json_object_get(rec, "processes");
    d.tags = json_object_get(rec, "tags");
    if (!d.app || !d.new_rel || !json_is_object(d.processes)) {
        finish(&d, "failed", "the deployment record is incomplete");
        json_decref(d.rec);
        return;
    }
    /* The deadline counts from when the first leader started it. */
    int64_t timeout_s = json_integer_value(json_object_get(rec, "deploy_timeout"));
    if (timeout_s <= 0)
        timeout_s = 30;
    if (timeout_s > INT32_MAX) /* Flynn's limit; the API refuses more */
        timeout_s = INT32_MAX;
    const char *started = json_string_value(json_object_get(rec, "started_at"));
    int64_t elapsed_ms = 0, started_us;
    if (clock_parse_rfc3339(started, &started_us) == 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        elapsed_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - started_us / 1000;
    }
    d.deadline_ms = clock_now_ms() + timeout_s * 1000 - (elapsed_ms > 0 ? elapsed_ms : 0);

    struct jobs js;
    if (jobs_open(o->c, d.app, &js, &err) < 0) {
        log_warn("deployer", "cannot follow the app's jobs", "id=%s reason=\"%s\"", id, err.msg);
        jobs_close(&js);
        json_decref(d.rec);
        return; /* still running: retried on the next pass */
    }
    d.crashes_before = jobs_count(&js, d.new_rel, NULL).crashed;
    log_info("deployer", "deploying", "id=%s app=%s old=%s new=%s strategy=%s", id, d.app,
             d.old_rel ? d.old_rel : "-", d.new_rel, d.strategy ? d.strategy : "all-at-once");
    char why[256] = "";
    int rc = d.strategy && strcmp(d.strategy, "one-by-one") == 0
                 ? run_one_by_one(&d, &js, o, why, sizeof(why))
                 : run_all_at_once(&d, &js, o, why, sizeof(why));
    if (rc == WAIT_OK) {
        if (set_app_release(&d) < 0)
            finish(&d, "failed", "cannot set the app's release");
        else
            finish(&d, "complete", NULL);
    } else if (rc != WAIT_STOP) {
        /* Roll back: the new formation to zero, the old one as it was. */
        json_t *z = zeros(d.processes);
        formation_set(&d, d.new_rel, NULL, 0, z);
        json_decref(z);
        if (d.old_rel)
            formation_set(&d, d.old_rel, NULL, 0, d.processes);
        char msg[320];
        snprintf(msg, sizeof(msg), "%s; rolled back to the previous release", why);
        finish(&d, "failed", msg);
    }
    jobs_close(&js);
    json_decref(d.rec);
}

static void *run_thread(void *arg)
{
    struct run *r = arg;
    run_deployment(r->d, r->id);
    atomic_store(&r->done, true);
    return NULL;
}

/* Joins finished runs; with all, waits for every run. */
static void reap(struct ctl_deployer *d, bool all)
{
    pthread_mutex_lock(&d->mu);
    for (int i = 0; i < MAX_ACTIVE; i++) {
        struct run *r = d->runs[i];
        if (r && (all || atomic_load(&r->done))) {
            pthread_join(r->thread, NULL);
            free(r);
            d->runs[i] = NULL;
        }
    }
    pthread_mutex_unlock(&d->mu);
}

static void start_run(struct ctl_deployer *d, const char *id)
{
    pthread_mutex_lock(&d->mu);
    int free_slot = -1;
    for (int i = 0; i < MAX_ACTIVE; i++) {
        if (d->runs[i] && strcmp(d->runs[i]->id, id) == 0) {
            pthread_mutex_unlock(&d->mu);
            return;
        }
        if (!d->runs[i] && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0) {
        struct run *r = xcalloc(1, sizeof(*r));
        r->d = d;
        snprintf(r->id, sizeof(r->id), "%s", id);
        if (pthread_create(&r->thread, NULL, run_thread, r) == 0)
            d->runs[free_slot] = r;
        else
            free(r);
    }
    pthread_mutex_unlock(&d->mu);
}

/* Whether deployment a goes before b (of the same app): a running one
 * first, then the oldest. */
static bool runs_before(const json_t *a, const json_t *b)
{
    bool ra = strcmp(json_string_value(json_object_get(a, "status")), "running") == 0;
    bool rb = strcmp(json_string_value(json_object_get(b, "status")), "running") == 0;
    if (ra != rb)
        return ra;
    const char *ta = json_string_value(json_object_get(a, "created_at"));
    const char *tb = json_string_value(json_object_get(b, "created_at"));
    int c = strcmp(ta ? ta : "", tb ? tb : "");
    if (c != 0)
        return c < 0;
    return strcmp(json_string_value(json_object_get(a, "id")),
                  json_string_value(json_object_get(b, "id"))) < 0;
}

static void *main_thread(void *arg)
{
    struct ctl_deployer *d = arg;
    while (!atomic_load(&d->stop)) {
        reap(d, false);
        if (!leader_is(d->c->leader)) {
            leader_wait(d->c->leader, false, 500);
            continue;
        }
        json_t *all = NULL;
        if (ctl_list(d->c, KEYS_DEPLOYMENTS, &all, NULL) == 0) {
            /* One deployment of an app at a time: two made at once (each
             * controller seeing none in progress) would fight over the
             * formations. The one running goes on, else the oldest starts;
             * the next one then finds the app's release moved and fails. */
            cleanup_json json_t *pick = json_object(); /* app -> its deployment to run */
            size_t i;
            json_t *dep;
            json_array_foreach(all, i, dep)
            {
                const char *st = json_string_value(json_object_get(dep, "status"));
                const char *id = json_string_value(json_object_get(dep, "id"));
                const char *app = json_string_value(json_object_get(dep, "app"));
                if (!id || !st || (strcmp(st, "pending") != 0 && strcmp(st, "running") != 0))
                    continue;
                json_t *cur = json_object_get(pick, app ? app : id);
                if (!cur || runs_before(dep, cur))
                    json_object_set(pick, app ? app : id, dep);
            }
            const char *app;
            json_object_foreach(pick, app, dep)
            {
                start_run(d, json_string_value(json_object_get(dep, "id")));
            }
            json_decref(all);
        }
        for (int i = 0; i < 5 && !atomic_load(&d->stop); i++)
            usleep(100 * 1000);
    }
    reap(d, true);
    return NULL;
}

int ctl_deployer_start(struct ctl *c, struct ctl_deployer **out, struct pier_err *err)
{
    struct ctl_deployer *d = xcalloc(1, sizeof(*d));
    d->c = c;
    pthread_mutex_init(&d->mu, NULL);
    if (pthread_create(&d->thread, NULL, main_thread, d) != 0) {
        pthread_mutex_destroy(&d->mu);
        free(d);
        return err_set(err, PIER_EINTERNAL, "deployer: cannot start a thread");
    }
    *out = d;
    return 0;
}

void ctl_deployer_stop(struct ctl_deployer *d)
{
    if (!d)
        return;
    atomic_store(&d->stop, true);
    pthread_join(d->thread, NULL);
    pthread_mutex_destroy(&d->mu);
    free(d);
}
