/* jobs: the table of this host's jobs and its store side (see jobs.h).
 *
 * The record in the store is the truth about what should run; the table
 * is what the agent knows and does. jobs_reconcile compares the two for one
 * job and starts the next step; a step that blocks (starting a container,
 * asking a shim to stop) runs on a worker thread with the job marked busy,
 * and reconciles again when it is done, so a change that came meanwhile is
 * never lost. What the agent observes goes back into the record through a
 * reporter: a read-modify-write with compare-and-swap that touches only the
 * observed fields, retried on conflict, one at a time per job and always
 * with the newest observation, so writers of the spec (the scheduler, the
 * API) and the agent never overwrite each other. */
#include "host/jobs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/bundle.h"
#include "host/jobs_int.h"
#include "host/shim.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/log.h"

/* The fields only the agent writes. */
static const char *const observed_fields[] = {
    "state",   "exit_status",     "signal",     "oom",         "host_error",
    "healthy", "allocated_ports", "started_at", "finished_at", NULL,
};

void jobs_job_dir(struct jobs *t, const char *id, struct buf *out)
{
    buf_printf(out, "%s/jobs/%s", t->cfg.data_dir, id);
}

struct job *jobs_find(struct jobs *t, const char *id)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i]->id, id) == 0)
            return t->v[i];
    return NULL;
}

struct job *jobs_add_entry(struct jobs *t, const char *id)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->id = xstrdup(id);
    j->observed = json_object();
    j->pidfd = -1;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->v = xrealloc(t->v, t->cap * sizeof(*t->v));
    }
    t->v[t->n++] = j;
    return j;
}

static void job_free(struct job *j)
{
    json_decref(j->rec);
    json_decref(j->observed);
    json_decref(j->exit);
    json_decref(j->written);
    jobspec_free(j->spec);
    free(j->ports);
    free(j->id);
    free(j);
}

/* Drops j from the table when nothing refers to it any more. Lock held. */
static void job_forget_maybe(struct jobs *t, struct job *j)
{
    if (!j->deleted || j->local != JOB_ENDED || j->busy || j->writing)
        return;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i] == j) {
            t->v[i] = t->v[--t->n];
            break;
        }
    job_free(j);
}

static const char *rec_state(const json_t *rec)
{
    const char *s = rec ? json_string_value(json_object_get(rec, "state")) : NULL;
    return s ? s : "pending";
}

static bool terminal(const char *state)
{
    return strcmp(state, "down") == 0 || strcmp(state, "crashed") == 0 ||
           strcmp(state, "failed") == 0;
}

static bool desired_up(const struct job *j)
{
    if (!j->rec || j->deleted)
        return false;
    const char *d = json_string_value(json_object_get(j->rec, "desired_state"));
    return !d || strcmp(d, "down") != 0;
}

/* --- reporting observed state ------------------------------------------ */

/* Changes the record of job id in the store by read-modify-write with
 * compare-and-swap, retried on conflict: change(rec, ud) edits the parsed
 * record. When the caller knows the record exactly as it is at revision
 * base_rev (base, borrowed), the first try skips the read. *rev and
 * *written (optional) get the write's revision and the record written (a
 * new reference). PIER_ENOTFOUND for a missing record, PIER_EINVAL for one
 * that is not a JSON object. Lock not held. */
static int rec_update(struct jobs *t, const char *id, void (*change)(json_t *rec, void *ud),
                      void *ud, const json_t *base, int64_t base_rev, int64_t *rev,
                      json_t **written, struct pier_err *err)
{
    struct buf key = BUF_INIT;
    int rc = 0;

    buf_printf(&key, "%s%s", JOBS_PREFIX, id);
    for (int attempt = 0; attempt < 20; attempt++) {
        json_t *rec = NULL;
        int64_t mod;
        if (attempt == 0 && base) {
            rec = json_deep_copy(base);
            mod = base_rev;
        } else {
            struct store_kv *kv = NULL;
            if ((rc = store_get(t->store, key.p, &kv, err)) < 0)
                break;
            rc = jsonx_parse_object(kv->value, kv->value_len, &rec, err);
            mod = kv->mod_revision;
            store_kv_free(kv);
            if (rc < 0)
                break;
        }
        change(rec, ud);
        char now[CLOCK_RFC3339_LEN];
        clock_rfc3339(now);
        json_object_set_new(rec, "updated_at", json_string(now));
        struct buf val = BUF_INIT;
        jsonx_dump(&val, rec);
        rc = store_cas(t->store, key.p, val.p, val.len, mod, 0, rev, err);
        buf_free(&val);
        if (rc == 0 && written)
            *written = json_incref(rec);
        json_decref(rec);
        if (rc != PIER_ECONFLICT)
            break;
    }
    buf_free(&key);
    return rc;
}

static void merge_observed(json_t *rec, void *obs)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obs, k, v) json_object_set(rec, k, v);
}

static void *reporter_main(void *arg)
{
    struct jobs_work *w = arg;
    struct jobs *t = w->t;
    struct job *j = w->j;
    free(w);

    pthread_mutex_lock(&t->lock);
    for (int failures = 0;;) {
        uint64_t seq = j->report_seq;
        json_t *obs = json_deep_copy(j->observed);
        char *id = xstrdup(j->id);
        /* The newest record the agent knows whole: as seen, or as written. */
        int64_t base_rev = j->rec_rev >= j->written_rev ? j->rec_rev : j->written_rev;
        json_t *base = j->rec_rev >= j->written_rev ? j->rec : j->written;
        /* (base_rev 0 would mean "create if absent": never guess that.) */
        base = base && base_rev > 0 && !j->deleted ? json_deep_copy(base) : NULL;
        pthread_mutex_unlock(&t->lock);

        struct pier_err err = {0};
        int64_t rev = 0;
        json_t *written = NULL;
        int rc = rec_update(t, id, merge_observed, obs, base, base_rev, &rev, &written, &err);
        json_decref(base);
        if (rc == PIER_ENOTFOUND || rc == PIER_EINVAL)
            rc = 0; /* deleted, or not a record: nobody to tell, nothing to repair */
        if (rc < 0) {
            log_warn("host", "cannot record the job's state in the store, retrying",
                     "job=%s state=%s error=\"%s\"", id,
                     json_string_value(json_object_get(obs, "state")), err.msg);
            usleep(failures < 10 ? 200000 * (1 << (failures / 3)) : 2000000);
            failures++;
        }
        free(id);
        json_decref(obs);
        pthread_mutex_lock(&t->lock);
        if (rev > j->written_rev) {
            j->written_rev = rev;
            json_decref(j->written);
            j->written = written;
        } else {
            json_decref(written);
        }
        if ((rc == 0 && seq == j->report_seq) || (t->stopping && rc < 0))
            break;
    }
    j->writing = false;
    t->workers--;
    job_forget_maybe(t, j);
    pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void start_thread(struct jobs *t, struct job *j, void *(*fn)(void *))
{
    struct jobs_work *w = xmalloc(sizeof(*w));
    pthread_t th;
    pthread_attr_t at;

    w->t = t;
    w->j = j;
    t->workers++;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, fn, w) != 0)
        abort();
    pthread_attr_destroy(&at);
}

void jobs_observe(struct jobs *t, struct job *j, json_t *obs)
{
    const char *k;
    json_t *v;
    json_object_foreach(obs, k, v)
    {
        if (json_is_null(v))
            json_object_del(j->observed, k);
        else
            json_object_set(j->observed, k, v);
    }
    json_decref(obs);
    j->report_seq++;
    if (!j->writing) {
        j->writing = true;
        start_thread(t, j, reporter_main);
    }
    if (t->hostrec)
        hostrec_touch(t->hostrec);
}

void jobs_spawn_worker(struct jobs *t, struct job *j, void *(*fn)(void *))
{
    j->busy = true;
    start_thread(t, j, fn);
}

/* --- reconciling ------------------------------------------------------- */

static void fail_job(struct jobs *t, struct job *j, const char *why)
{
    log_warn("host", "job refused", "job=%s reason=\"%s\"", j->id, why);
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    jobs_observe(
        t, j,
        json_pack("{s:s, s:s, s:s}", "state", "failed", "host_error", why, "finished_at", now));
    j->local = JOB_ENDED;
}

/* Parses j's record into *spec and checks it names this job and host; a
 * record that does not fails the job (and *spec stays NULL). Lock held. */
static bool check_spec(struct jobs *t, struct job *j, struct jobspec **spec)
{
    struct pier_err err = {0};
    *spec = NULL;
    if (jobspec_parse(j->rec, spec, &err) < 0) {
        fail_job(t, j, err.msg);
        return false;
    }
    if (strcmp((*spec)->id, j->id) != 0 || strcmp((*spec)->host_id, t->cfg.host_id) != 0 ||
        !jobspec_id_ok(j->id, t->cfg.host_id)) {
        struct buf why = BUF_INIT;
        buf_printf(&why, "job %s names id \"%s\" and host \"%s\"; this is host %s", j->id,
                   (*spec)->id, (*spec)->host_id, t->cfg.host_id);
        fail_job(t, j, why.p);
        buf_free(&why);
        jobspec_free(*spec);
        *spec = NULL;
        return false;
    }
    return true;
}

/* --- bounded starts ---------------------------------------------------- *
 *
 * A burst of new records (a scale to hundreds of jobs) would otherwise
 * start every job at once: a shim, crun and a bundle per job, hundreds of
 * runnable processes, and the store and scheduler sharing the machine wait
 * for a core while the first jobs take no less time to come up. So at most
 * cfg.max_starting starts are in progress at a time. A start holds its slot
 * from the moment a worker is given it until the job is up or failed; the
 * other jobs wait in a FIFO queue (JOB_QUEUED, their record still
 * "pending"), and a queued job asked to stop leaves the queue as "down"
 * without starting. Stops are never queued. */

static void queue_push(struct jobs *t, struct job *j)
{
    j->q_next = NULL;
    j->q_prev = t->q_tail;
    if (t->q_tail)
        t->q_tail->q_next = j;
    else
        t->q_head = j;
    t->q_tail = j;
    t->queued++;
}

static void queue_remove(struct jobs *t, struct job *j)
{
    if (j->q_prev)
        j->q_prev->q_next = j->q_next;
    else
        t->q_head = j->q_next;
    if (j->q_next)
        j->q_next->q_prev = j->q_prev;
    else
        t->q_tail = j->q_prev;
    j->q_prev = j->q_next = NULL;
    t->queued--;
}

void jobs_dispatch(struct jobs *t)
{
    while (t->q_head && !t->stopping &&
           (t->cfg.max_starting <= 0 || t->starting < t->cfg.max_starting)) {
        struct job *j = t->q_head;
        queue_remove(t, j);
        /* The record may have changed while the job waited: start what it
         * says now. */
        struct jobspec *spec = NULL;
        if (!check_spec(t, j, &spec))
            continue;
        jobspec_free(j->spec);
        j->spec = spec;
        j->stop_grace_ms = spec->stop_grace_ms;
        j->local = JOB_STARTING;
        t->starting++;
        jobs_spawn_worker(t, j, jobs_start_worker);
    }
}

/* A record seen for the first time (or again after a restart) with no local
 * trace of the job. */
static void reconcile_new(struct jobs *t, struct job *j)
{
    const char *state = rec_state(j->rec);

    if (terminal(state)) {
        j->local = JOB_ENDED;
        return;
    }
    if (!desired_up(j)) {
        char now[CLOCK_RFC3339_LEN];
        clock_rfc3339(now);
        jobs_observe(t, j, json_pack("{s:s, s:s}", "state", "down", "finished_at", now));
        j->local = JOB_ENDED;
        return;
    }
    if (strcmp(state, "up") == 0 || strcmp(state, "stopping") == 0) {
        /* It ran here once, and neither a shim nor its directory is left. */
        char now[CLOCK_RFC3339_LEN];
        clock_rfc3339(now);
        jobs_observe(t, j,
                     json_pack("{s:s, s:s, s:s}", "state", "crashed", "host_error",
                               "lost: no trace of the job on this host when the agent started "
                               "(its directory is gone)",
                               "finished_at", now));
        j->local = JOB_ENDED;
        return;
    }
    /* pending, or starting before a restart of the agent: start it, once a
     * start slot is free. A spec it cannot run fails now, not in turn. */
    struct jobspec *spec = NULL;
    if (!check_spec(t, j, &spec))
        return;
    jobspec_free(spec);
    j->local = JOB_QUEUED;
    queue_push(t, j);
    jobs_dispatch(t);
}

void jobs_reconcile(struct jobs *t, struct job *j)
{
    if (j->busy || t->stopping)
        return;
    switch (j->local) {
    case JOB_NEW:
        if (j->rec && !j->deleted)
            reconcile_new(t, j);
        else
            j->local = JOB_ENDED;
        break;
    case JOB_QUEUED:
        if (!desired_up(j)) {
            queue_remove(t, j);
            j->local = JOB_ENDED;
            log_info("host", "job stopped before its start began", "job=%s", j->id);
            if (j->rec && !j->deleted) {
                char now[CLOCK_RFC3339_LEN];
                clock_rfc3339(now);
                jobs_observe(t, j, json_pack("{s:s, s:s}", "state", "down", "finished_at", now));
            }
        }
        break;
    case JOB_STARTING: break;
    case JOB_RUNNING:
        if (!desired_up(j)) {
            if (j->rec && !j->deleted) {
                json_t *g = json_object_get(j->rec, "stop_grace");
                if (json_is_number(g) && json_number_value(g) >= 0 && json_number_value(g) <= 3600)
                    j->stop_grace_ms = (int)(json_number_value(g) * 1000);
            }
            j->local = JOB_STOPPING;
            jobs_observe(t, j, json_pack("{s:s}", "state", "stopping"));
            jobs_spawn_worker(t, j, jobs_stop_worker);
        }
        break;
    case JOB_STOPPING: break;
    case JOB_ENDED:
        if (j->exit && j->rec && !j->deleted && !terminal(rec_state(j->rec))) {
            /* It ended while the agent was away: say how, now that the
             * record is known. */
            jobs_observe(t, j, jobs_exit_observed(t, j, j->exit));
        }
        if (j->exit && j->rec) {
            json_decref(j->exit);
            j->exit = NULL;
        }
        break;
    }
    /* Level-triggered reporting: a record whose state is not what the agent
     * observes (someone overwrote it, or the agent restarted) is told again. */
    const char *mine = json_string_value(json_object_get(j->observed, "state"));
    if (mine && j->rec && !j->deleted && !j->writing && j->rec_rev > j->written_rev &&
        strcmp(mine, rec_state(j->rec)) != 0)
        jobs_observe(t, j, json_object());
    job_forget_maybe(t, j);
}

/* --- the store watch --------------------------------------------------- */

/* A record as seen in the store (NULL value: deleted). Lock held. */
static void on_record(struct jobs *t, const char *key, const char *value, size_t len, int64_t rev)
{
    const char *id = key + strlen(JOBS_PREFIX);
    struct job *j = jobs_find(t, id);

    if (!value) {
        if (j) {
            j->deleted = true;
            jobs_reconcile(t, j);
        }
        return;
    }
    json_t *rec = NULL;
    struct pier_err err = {0};
    if (jsonx_parse_object(value, len, &rec, &err) < 0) {
        log_warn("host", "job record is not a JSON object, ignored", "key=%s error=\"%s\"", key,
                 err.msg);
        return;
    }
    if (!j)
        j = jobs_add_entry(t, id);
    json_decref(j->rec);
    j->rec = rec;
    j->rec_rev = rev;
    j->deleted = false;
    jobs_reconcile(t, j);
}

/* Lists this host's records and acts on each. *rev gets the list's revision. */
static int list_all(struct jobs *t, int64_t *rev, struct pier_err *err)
{
    struct store_range *r = NULL;
    int rc = store_list(t->store, t->prefix, NULL, &r, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->n; i++) {
        /* Jobs the table knows but the list lacks were deleted meanwhile. */
        struct job *j = t->v[i];
        bool seen = false;
        for (size_t k = 0; k < r->n && !seen; k++)
            seen = strcmp(r->kvs[k].key + strlen(JOBS_PREFIX), j->id) == 0;
        if (!seen)
            j->deleted = true;
    }
    for (size_t k = 0; k < r->n; k++)
        on_record(t, r->kvs[k].key, r->kvs[k].value, r->kvs[k].value_len, r->kvs[k].mod_revision);
    for (size_t i = t->n; i-- > 0;)
        if (t->v[i]->deleted)
            jobs_reconcile(t, t->v[i]);
    pthread_mutex_unlock(&t->lock);
    *rev = r->revision;
    store_range_free(r);
    return 0;
}

static void *watch_main(void *arg)
{
    struct jobs *t = arg;
    struct store_watch *w = NULL;
    int64_t rev = 0;
    bool listed = t->list_rev >= 0; /* jobs_start listed before starting this thread */

    for (;;) {
        pthread_mutex_lock(&t->lock);
        bool stop = t->stopping;
        pthread_mutex_unlock(&t->lock);
        if (stop)
            break;
        struct pier_err err = {0};
        if (!w) {
            if (!listed && list_all(t, &rev, &err) < 0) {
                log_warn("host", "cannot list jobs, retrying", "error=\"%s\"", err.msg);
                usleep(500000);
                continue;
            }
            if (listed)
                rev = t->list_rev;
            listed = false;
            struct store_watch_opts o = {.prefix = true, .start_revision = rev + 1};
            if (store_watch_open(t->store, t->prefix, &o, &w, &err) < 0) {
                log_warn("host", "cannot watch jobs, retrying", "error=\"%s\"", err.msg);
                usleep(500000);
                continue;
            }
        }
        struct store_events *ev = NULL;
        int rc = store_watch_next(w, 500, &ev, &err);
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc == PIER_ECOMPACTED || rc == PIER_EINVAL) {
            /* The watch is dead (its history is gone, or the server
             * refuses it): list again and watch from there. */
            store_watch_close(w);
            w = NULL;
            continue;
        }
        if (rc < 0) {
            usleep(100000);
            continue;
        }
        pthread_mutex_lock(&t->lock);
        for (size_t i = 0; i < ev->n; i++) {
            struct store_event *e = &ev->ev[i];
            on_record(t, e->kv.key, e->type == STORE_EVENT_PUT ? e->kv.value : NULL,
                      e->kv.value_len, e->kv.mod_revision);
        }
        pthread_mutex_unlock(&t->lock);
        store_events_free(ev);
    }
    store_watch_close(w);
    return NULL;
}

/* --- life cycle -------------------------------------------------------- */

struct jobs *jobs_new(const struct jobs_config *cfg, struct store *s, struct ports *ports,
                      struct hostrec *hr)
{
    struct jobs *t = xcalloc(1, sizeof(*t));

    t->cfg = *cfg;
    t->store = s;
    t->ports = ports;
    t->hostrec = hr;
    t->epfd = t->wakefd = -1;
    struct buf p = BUF_INIT;
    buf_printf(&p, "%s%s-", JOBS_PREFIX, cfg->host_id);
    t->prefix = buf_detach(&p);
    pthread_mutex_init(&t->lock, NULL);
    clock_cond_init(&t->idle);
    return t;
}

void jobs_set_hostrec(struct jobs *t, struct hostrec *hr)
{
    pthread_mutex_lock(&t->lock);
    t->hostrec = hr;
    pthread_mutex_unlock(&t->lock);
}

int jobs_start(struct jobs *t, struct pier_err *err)
{
    struct buf root = BUF_INIT;
    buf_printf(&root, "%s/host-root", t->cfg.data_dir);
    int rc = bundle_host_root(root.p, err);
    buf_free(&root);
    if (rc == 0)
        rc = jobs_monitor_init(t, err);
    if (rc == 0)
        rc = jobs_adopt(t, err);
    if (rc < 0)
        return rc;
    /* Running jobs need no store; when it cannot be reached yet (a host
     * booting before its store), the watch thread lists once it can. */
    struct pier_err lerr = {0};
    if (list_all(t, &t->list_rev, &lerr) < 0) {
        log_warn("host", "cannot list this host's jobs yet, retrying in the background",
                 "error=\"%s\"", lerr.msg);
        t->list_rev = -1;
    }
    if (pthread_create(&t->monitor_thread, NULL, jobs_monitor_main, t) != 0 ||
        pthread_create(&t->watch_thread, NULL, watch_main, t) != 0)
        abort();
    t->threads_started = true;
    return 0;
}

void jobs_free(struct jobs *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_mutex_unlock(&t->lock);
    if (t->threads_started) {
        uint64_t one = 1;
        if (write(t->wakefd, &one, sizeof(one)) < 0)
            log_warn("host", "cannot wake the monitor", "error=\"%s\"", strerror(errno));
        pthread_join(t->watch_thread, NULL);
        pthread_join(t->monitor_thread, NULL);
    }
    /* Health threads first (they may call back into the table until they
     * are joined), then the workers they or others started. Running jobs
     * stay with their shims; only the agent's side goes. */
    for (size_t i = 0;; i++) {
        pthread_mutex_lock(&t->lock);
        struct health *h = NULL;
        if (i < t->n) {
            h = t->v[i]->health;
            t->v[i]->health = NULL;
        }
        size_t n = t->n;
        pthread_mutex_unlock(&t->lock);
        if (i >= n)
            break;
        health_abandon(h);
    }
    pthread_mutex_lock(&t->lock);
    while (t->workers > 0)
        pthread_cond_wait(&t->idle, &t->lock);
    pthread_mutex_unlock(&t->lock);
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i]->pidfd >= 0)
            close(t->v[i]->pidfd);
        job_free(t->v[i]);
    }
    free(t->v);
    if (t->epfd >= 0)
        close(t->epfd);
    if (t->wakefd >= 0)
        close(t->wakefd);
    free(t->prefix);
    pthread_cond_destroy(&t->idle);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* --- the API's side ---------------------------------------------------- */

/* The record with what the agent observes merged in. Lock held. */
static json_t *job_json(const struct job *j)
{
    json_t *out = j->rec ? json_deep_copy(j->rec) : json_pack("{s:s}", "id", j->id);
    const char *k;
    json_t *v;
    json_object_foreach(j->observed, k, v) json_object_set(out, k, v);
    if (j->deleted)
        json_object_set_new(out, "deleted", json_true());
    return out;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "id")),
                  json_string_value(json_object_get(*(json_t *const *)b, "id")));
}

json_t *jobs_list(struct jobs *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->n;
    json_t **v = xcalloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = job_json(t->v[i]);
    pthread_mutex_unlock(&t->lock);
    qsort(v, n, sizeof(*v), cmp_id);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, v[i]);
    free(v);
    return arr;
}

int jobs_get(struct jobs *t, const char *id, json_t **out, struct pier_err *err)
{
    pthread_mutex_lock(&t->lock);
    struct job *j = jobs_find(t, id);
    if (j)
        *out = job_json(j);
    pthread_mutex_unlock(&t->lock);
    return j ? 0 : err_set(err, PIER_ENOTFOUND, "job %s not found on this host", id);
}

static void new_job_id(const char *host_id, struct buf *out)
{
    unsigned char r[16];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, r, sizeof(r)) != (ssize_t)sizeof(r))
        abort();
    close(fd);
    r[6] = (r[6] & 0x0f) | 0x40; /* a version 4 UUID */
    r[8] = (r[8] & 0x3f) | 0x80;
    buf_printf(out, "%s-", host_id);
    for (int i = 0; i < 16; i++)
        buf_printf(out, "%02x%s", r[i], i == 3 || i == 5 || i == 7 || i == 9 ? "-" : "");
}

int jobs_add(struct jobs *t, json_t *spec, json_t **out, struct pier_err *err)
{
    cleanup_json json_t *rec = json_deep_copy(spec);
    struct buf id = BUF_INIT;
    const char *given = json_string_value(json_object_get(rec, "id"));
    int rc;

    if (json_object_get(rec, "id") && !given)
        return err_set(err, PIER_EINVAL, "id: must be a string");
    if (given)
        buf_puts(&id, given);
    else
        new_job_id(t->cfg.host_id, &id);
    if (!jobspec_id_ok(id.p, t->cfg.host_id)) {
        rc = err_set(err, PIER_EINVAL,
                     "id \"%s\": a job id on this host is \"%s-\" and then letters, digits, "
                     "'.', '_' or '-' (%d characters in all at most)",
                     id.p, t->cfg.host_id, JOBSPEC_MAX_ID);
        goto out;
    }
    const char *host = json_string_value(json_object_get(rec, "host_id"));
    if (json_object_get(rec, "host_id") && (!host || strcmp(host, t->cfg.host_id) != 0)) {
        rc = err_set(err, PIER_EINVAL, "host_id: this is host %s", t->cfg.host_id);
        goto out;
    }
    for (const char *const *f = observed_fields; *f; f++)
        json_object_del(rec, *f);
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_object_set_new(rec, "id", json_string(id.p));
    json_object_set_new(rec, "host_id", json_string(t->cfg.host_id));
    json_object_set_new(rec, "state", json_string("pending"));
    json_object_set_new(rec, "created_at", json_string(now));
    json_object_set_new(rec, "updated_at", json_string(now));
    struct jobspec *js = NULL;
    rc = jobspec_parse(rec, &js, err);
    jobspec_free(js);
    if (rc < 0)
        goto out;
    struct buf key = BUF_INIT, val = BUF_INIT;
    buf_printf(&key, "%s%s", JOBS_PREFIX, id.p);
    jsonx_dump(&val, rec);
    rc = store_create(t->store, key.p, val.p, val.len, 0, NULL, err);
    if (rc == PIER_EEXISTS)
        err_set(err, rc, "job %s already exists", id.p);
    buf_free(&key);
    buf_free(&val);
    if (rc == 0)
        *out = steal_pointer(&rec);
out:
    buf_free(&id);
    return rc;
}

static void set_down(json_t *rec, void *ud)
{
    int grace_ms = *(int *)ud;
    json_object_set_new(rec, "desired_state", json_string("down"));
    if (grace_ms >= 0)
        json_object_set_new(rec, "stop_grace", json_real(grace_ms / 1000.0));
}

int jobs_stop(struct jobs *t, const char *id, int grace_ms, struct pier_err *err)
{
    if (!jobspec_id_ok(id, t->cfg.host_id))
        return err_set(err, PIER_ENOTFOUND, "job %s not found on this host", id);
    int rc = rec_update(t, id, set_down, &grace_ms, NULL, 0, NULL, NULL, err);
    if (rc == PIER_ENOTFOUND)
        err_set(err, rc, "job %s not found on this host", id);
    return rc;
}

/* Appends the directory of a job whose shim can be talked to: running (or
 * stopping, for signals), and with a TTY or stdin to attach to. */
static int live_dir(struct jobs *t, const char *id, bool attach, struct buf *dir,
                    struct pier_err *err)
{
    pthread_mutex_lock(&t->lock);
    struct job *j = jobs_find(t, id);
    int rc = 0;
    if (!j)
        rc = err_set(err, PIER_ENOTFOUND, "job %s not found on this host", id);
    else if (j->local != JOB_RUNNING && (attach || j->local != JOB_STOPPING))
        rc = err_set(err, PIER_ECONFLICT, "job %s is not running (%s)", id,
                     json_string_value(json_object_get(j->observed, "state"))
                         ? json_string_value(json_object_get(j->observed, "state"))
                         : rec_state(j->rec));
    else if (attach && (!j->spec || (!j->spec->tty && !j->spec->stdin_open)))
        rc = err_set(err, PIER_ECONFLICT,
                     "job %s has no TTY and no stdin to attach to (start it with \"tty\": true "
                     "or \"stdin\": true)",
                     id);
    else
        jobs_job_dir(t, id, dir);
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int jobs_signal(struct jobs *t, const char *id, int sig, struct pier_err *err)
{
    struct buf dir = BUF_INIT;
    int rc = live_dir(t, id, false, &dir, err);
    if (rc == 0)
        rc = shim_signal(dir.p, sig, err);
    buf_free(&dir);
    return rc;
}

int jobs_dir(struct jobs *t, const char *id, struct buf *path, struct pier_err *err)
{
    pthread_mutex_lock(&t->lock);
    struct job *j = jobs_find(t, id);
    pthread_mutex_unlock(&t->lock);
    if (!j && !jobspec_id_ok(id, t->cfg.host_id))
        return err_set(err, PIER_ENOTFOUND, "job %s not found on this host", id);
    size_t mark = path->len;
    jobs_job_dir(t, id, path);
    if (!j && access(path->p, F_OK) < 0) {
        path->len = mark;
        path->p[mark] = 0;
        return err_set(err, PIER_ENOTFOUND, "job %s not found on this host", id);
    }
    return 0;
}

int jobs_attach(struct jobs *t, const char *id, struct pier_err *err)
{
    struct buf dir = BUF_INIT;
    int rc = live_dir(t, id, true, &dir, err);
    if (rc == 0)
        rc = shim_attach(dir.p, err);
    buf_free(&dir);
    return rc;
}

void jobs_starts(struct jobs *t, int *starting, int *queued)
{
    pthread_mutex_lock(&t->lock);
    *starting = t->starting;
    *queued = t->queued;
    pthread_mutex_unlock(&t->lock);
}

void jobs_usage(struct jobs *t, int *running, int64_t *memory, int64_t *cpu)
{
    pthread_mutex_lock(&t->lock);
    int n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += t->v[i]->local == JOB_STARTING || t->v[i]->local == JOB_RUNNING ||
             t->v[i]->local == JOB_STOPPING;
    *running = n;
    *memory = t->memory_used;
    *cpu = t->cpu_used;
    pthread_mutex_unlock(&t->lock);
}
