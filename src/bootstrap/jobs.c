/* jobs: a system app's jobs, found or started on the local agent.
 *
 * A live job of (app, release, type) is a record under /pier/v1/jobs/
 * with those labels, not a one-off, wanted up, and pending, starting or
 * up: what the scheduler counts as the formation's (reconcile.c). For a
 * job of this host the agent is asked rather than the record, which after
 * a SIGKILL of everything still says "up" until the agent has seen that
 * its shim is gone. What is missing is started with the agent's API,
 * each job built by jobbuild_spec and given its id as a placement gives
 * it (cluster.c), so the scheduler, when it starts, finds the formation
 * met and starts nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap/bootstrap_int.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/uuid.h"
#include "scheduler/jobbuild.h"

#define POLL_MS 100
/* A job without a health check counts as up once it stayed up this long,
 * so a daemon that exits on a bad flag is not taken for a success. */
#define SETTLE_MS 1000
/* How long a job of this host the agent does not know yet (it is still
 * reading the store after its own start) is waited for. */
#define UNKNOWN_MS 5000
#define LOG_LINES 20
#define MAX_WAIT 128

static double secs(int64_t ms)
{
    return (double)ms / 1000.0;
}

/* ---- the agent ---- */

/* GET /host/jobs/:id: 0 with *out, or PIER_ENOTFOUND. */
static int agent_job(struct bs *b, const char *id, json_t **out, struct pier_err *err)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/host/jobs/%s", b->host_url, id);
    long status = 0;
    int rc = bs_call(b, "GET", url.p, "the host agent", NULL, 0, &status, out, err);
    if (rc < 0)
        return rc;
    if (status == 200 && json_is_object(*out))
        return 0;
    json_decref(*out);
    *out = NULL;
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND, "job %s not found on the host agent", id);
    return err_set(err, PIER_EPROTO, "the host agent answers %ld to GET /host/jobs/%s", status, id);
}

int jobs_agent_ready(struct bs *b, struct pier_err *err)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/host/status", b->host_url);
    int64_t start = clock_now_ms(), deadline = start + b->timeout_ms;
    for (;;) {
        long status = 0;
        cleanup_json json_t *st = NULL;
        int rc = bs_call(b, "GET", url.p, "the host agent", NULL, 2000, &status, &st, err);
        const char *id = bs_str(st, "id");
        if (rc == 0 && status == 401)
            return err_set(err, PIER_EINVAL,
                           "the host agent at %s refuses the cluster key (PIER_KEY)", b->host_url);
        if (rc == 0 && status == 200 && id) {
            cleanup_buf struct buf key = BUF_INIT;
            buf_printf(&key, "%s%s", KEYS_HOSTS, id);
            struct store_kv *kv = NULL;
            json_t *rec = NULL;
            rc = store_get(b->s, key.p, &kv, err);
            if (rc == 0 && jsonx_parse_object(kv->value, kv->value_len, &rec, NULL) == 0 &&
                bs_str(rec, "ip")) {
                b->host_id = xstrdup(id);
                b->host_ip = xstrdup(bs_str(rec, "ip"));
                printf("host: agent %s at %s, jobs reached at %s (%.1f s)\n", id, b->host_url,
                       b->host_ip, secs(clock_now_ms() - start));
                fflush(stdout);
            }
            json_decref(rec);
            store_kv_free(kv);
            if (b->host_id)
                return 0;
            if (rc == 0 || rc == PIER_ENOTFOUND)
                err_set(err, PIER_ETIMEOUT, "its host record %s is not in the store at %s", key.p,
                        b->store_url);
        } else if (rc == 0) {
            err_set(err, PIER_EPROTO, "GET /host/status answers %ld", status);
        }
        if (clock_now_ms() >= deadline)
            return err_wrap(err, PIER_ETIMEOUT, "the host agent at %s not ready after %lld s",
                            b->host_url, (long long)(b->timeout_ms / 1000));
        usleep(200 * 1000);
    }
}

/* ---- live jobs ---- */

static bool str_is(const char *s, const char *want)
{
    return s && strcmp(s, want) == 0;
}

static bool is_live(const json_t *job)
{
    const char *want = bs_str(job, "desired_state"), *st = bs_str(job, "state");
    if (want && strcmp(want, "up") != 0)
        return false;
    return !st || str_is(st, "pending") || str_is(st, "starting") || str_is(st, "up");
}

/* The host part of a job's id (before the first '-'), or its host_id. */
static void job_host(const json_t *job, const char *id, char *out, size_t n)
{
    const char *h = bs_str(job, "host_id");
    const char *dash = strchr(id, '-');
    if (h)
        snprintf(out, n, "%s", h);
    else
        snprintf(out, n, "%.*s", dash ? (int)(dash - id) : 0, id);
}

/* The record of a job of this host as the agent sees it; rec (the store's)
 * when the agent does not know it after UNKNOWN_MS. *out is new. */
static int local_view(struct bs *b, const char *id, const json_t *rec, json_t **out,
                      struct pier_err *err)
{
    int64_t until = clock_now_ms() + UNKNOWN_MS;
    for (;;) {
        int rc = agent_job(b, id, out, err);
        if (rc != PIER_ENOTFOUND)
            return rc;
        if (clock_now_ms() >= until) {
            *out = json_deep_copy(rec);
            return 0;
        }
        usleep(200 * 1000);
    }
}

/* The live jobs of (app, release, type), as the agent (local) or the store
 * sees them, into *out (a new array). */
static int live_jobs(struct bs *b, const struct sysapp *a, const char *type, json_t **out,
                     struct pier_err *err)
{
    struct store_range *r = NULL;
    int rc = store_list(b->s, KEYS_JOBS, NULL, &r, err);
    if (rc < 0)
        return err_wrap(err, rc, "listing the jobs");
    const char *app_id = bs_str(a->app, "id"), *rid = bs_str(a->release, "id");
    json_t *live = json_array();
    for (size_t i = 0; i < r->n && rc == 0; i++) {
        cleanup_json json_t *rec = NULL;
        if (jsonx_parse_object(r->kvs[i].value, r->kvs[i].value_len, &rec, NULL) < 0)
            continue;
        const char *id = r->kvs[i].key + strlen(KEYS_JOBS);
        if (!str_is(bs_str(rec, "app"), app_id) || !str_is(bs_str(rec, "release"), rid) ||
            !str_is(bs_str(rec, "type"), type) || json_is_true(json_object_get(rec, "oneoff")) ||
            !is_live(rec))
            continue;
        char host[128];
        job_host(rec, id, host, sizeof(host));
        json_t *view = NULL;
        if (strcmp(host, b->host_id) == 0)
            rc = local_view(b, id, rec, &view, err);
        else
            view = json_incref(rec);
        if (rc == 0 && is_live(view)) {
            json_object_set_new(view, "id", json_string(id));
            json_array_append(live, view);
        }
        json_decref(view);
    }
    store_range_free(r);
    if (rc < 0) {
        json_decref(live);
        return rc;
    }
    *out = live;
    return 0;
}

/* ---- starting ---- */

/* The n of DYNO "<type>.<n>", or 0. */
static int dyno_of(const json_t *job, const char *type)
{
    const char *d = bs_str(json_object_get(job, "env"), "DYNO");
    size_t tl = strlen(type);
    if (!d || strncmp(d, type, tl) != 0 || d[tl] != '.')
        return 0;
    return atoi(d + tl + 1);
}

/* The lowest DYNO number no job of live has, the new ones included. */
static int free_index(const json_t *live, const char *type)
{
    for (int n = 1;; n++) {
        bool used = false;
        size_t i;
        json_t *j;
        json_array_foreach(live, i, j)
        {
            used = used || dyno_of(j, type) == n;
        }
        if (!used)
            return n;
    }
}

/* Builds a job of type and has the agent start it; its record is added
 * to live. */
static int start_job(struct bs *b, const struct sysapp *a, const char *type, json_t *live,
                     struct pier_err *err)
{
    json_t *spec = NULL;
    int rc = jobbuild_spec(a->app, a->release, a->artifacts, type, NULL, &spec, err);
    if (rc < 0)
        return err_wrap(err, rc, "building its %s job", type);
    jobbuild_set_index(spec, free_index(live, type));
    /* As a placement does (cluster.h): id, host_id, uuid, FLYNN_JOB_ID. */
    char uuid[UUID_LEN], id[128];
    uuid_new(uuid);
    snprintf(id, sizeof(id), "%s-%s", b->host_id, uuid);
    json_object_set_new(spec, "id", json_string(id));
    json_object_set_new(spec, "host_id", json_string(b->host_id));
    json_object_set_new(spec, "uuid", json_string(uuid));
    json_object_set_new(json_object_get(spec, "env"), "FLYNN_JOB_ID", json_string(id));
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/host/jobs/%s", b->host_url, id);
    long status = 0;
    cleanup_json json_t *ans = NULL;
    rc = bs_call(b, "PUT", url.p, "the host agent", spec, 0, &status, &ans, err);
    if (rc == 0 && status != 200)
        rc = err_set(err, PIER_EINVAL, "the host agent refuses job %s: %ld %s", id, status,
                     bs_str(ans, "message") ? bs_str(ans, "message") : "");
    if (rc < 0) {
        json_decref(spec);
        return err_wrap(err, rc, "starting its %s job", type);
    }
    printf("%s: starting job %s (%s)\n", a->name, id, type);
    fflush(stdout);
    b->jobs_started++;
    json_array_append_new(live, spec);
    return 0;
}

/* ---- waiting ---- */

struct wait {
    const char *id; /* borrowed from the live array */
    bool local, checked, up;
    int64_t up_since; /* ms; 0: not seen up */
};

static bool has_check(const json_t *job)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(job, "ports"), i, p)
    {
        if (json_is_object(json_object_get(json_object_get(p, "service"), "check")))
            return true;
    }
    return false;
}

/* The last lines of a job's log, indented, into b->failure. */
static void log_tail(struct bs *b, const char *id)
{
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/host/jobs/%s/log?lines=%d", b->host_url, id, LOG_LINES);
    const char *headers[] = {b->auth.len ? b->auth.p : NULL, NULL};
    struct httpc_req req = {.url = url.p,
                            .name = "the host agent",
                            .headers = headers,
                            .timeout_ms = 5000,
                            .max_body = 64 * 1024};
    struct httpc_resp resp = {0};
    if (httpc_do(b->h, &req, &resp, NULL) < 0)
        return;
    if (resp.status == 200 && resp.body.len) {
        struct buf *out = &b->failure;
        buf_reset(out);
        buf_printf(out, "the last %d lines of job %s's output:\n", LOG_LINES, id);
        for (const char *p = resp.body.p; *p;) {
            const char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) : strlen(p);
            buf_printf(out, "  %.*s\n", (int)n, p);
            p += n + (nl ? 1 : 0);
        }
    }
    httpc_resp_release(&resp);
}

/* The job's current record: from the agent for one of this host, else
 * from the store. */
static int job_now(struct bs *b, const struct wait *w, json_t **out, struct pier_err *err)
{
    if (w->local)
        return agent_job(b, w->id, out, err);
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_JOBS, w->id);
    struct store_kv *kv = NULL;
    int rc = store_get(b->s, key.p, &kv, err);
    if (rc == 0)
        rc = jsonx_parse_object(kv->value, kv->value_len, out, err);
    store_kv_free(kv);
    return rc;
}

/* "IP:PORT" of a job's first allocated port, into out (unchanged when it
 * has none). */
static void job_addr(struct bs *b, const json_t *job, bool local, char *out, size_t n)
{
    json_t *p = json_array_get(json_object_get(job, "allocated_ports"), 0);
    if (!json_is_integer(p))
        p = json_object_get(json_array_get(json_object_get(job, "allocated_ports"), 0), "port");
    if (!json_is_integer(p))
        return;
    const char *ip = b->host_ip;
    json_t *host = NULL;
    if (!local) {
        char hid[128];
        job_host(job, bs_str(job, "id") ? bs_str(job, "id") : "", hid, sizeof(hid));
        cleanup_buf struct buf key = BUF_INIT;
        buf_printf(&key, "%s%s", KEYS_HOSTS, hid);
        struct store_kv *kv = NULL;
        if (store_get(b->s, key.p, &kv, NULL) == 0)
            jsonx_parse_object(kv->value, kv->value_len, &host, NULL);
        store_kv_free(kv);
        ip = bs_str(host, "ip") ? bs_str(host, "ip") : ip;
    }
    snprintf(out, n, "%s:%lld", ip, (long long)json_integer_value(p));
    json_decref(host);
}

/* How long ago the job started (its started_at), 0 when unknown: a job
 * found running for a while needs no settling. */
static int64_t running_ms(const json_t *job)
{
    const char *sa = bs_str(job, "started_at");
    int64_t us = 0;
    if (!sa || clock_parse_rfc3339(sa, &us) < 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t age = ((int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - us) / 1000;
    return age > 0 ? age : 0;
}

/* One look at w: 1 when it counts as up, 0 not yet, < 0 when it ended. */
static int look(struct bs *b, struct wait *w, char *addr, size_t n, struct pier_err *err)
{
    cleanup_json json_t *job = NULL;
    int rc = job_now(b, w, &job, err);
    if (rc == PIER_ENOTFOUND && !w->local)
        return err_set(err, PIER_ENOTFOUND, "job %s is gone", w->id);
    if (rc < 0)
        return rc == PIER_ENOTFOUND ? 0 : rc;
    const char *st = bs_str(job, "state");
    if (!str_is(bs_str(job, "desired_state"), "up") && bs_str(job, "desired_state"))
        return err_set(err, PIER_ECONFLICT, "job %s was stopped (desired_state %s)", w->id,
                       bs_str(job, "desired_state"));
    if (str_is(st, "failed") || str_is(st, "crashed") || str_is(st, "down")) {
        const char *why = bs_str(job, "host_error");
        struct buf msg = BUF_INIT;
        buf_printf(&msg, "job %s %s", w->id, st);
        if (why && *why)
            buf_printf(&msg, ": %s", why);
        else if (json_object_get(job, "exit_status"))
            buf_printf(&msg, " with exit status %lld",
                       (long long)json_integer_value(json_object_get(job, "exit_status")));
        if (w->local)
            log_tail(b, w->id);
        err_set(err, PIER_EUNAVAIL, "%s", msg.p);
        buf_free(&msg);
        return PIER_EUNAVAIL;
    }
    if (!str_is(st, "up")) {
        w->up_since = 0;
        return 0;
    }
    int64_t now = clock_now_ms();
    if (!w->up_since)
        w->up_since = now - running_ms(job);
    if (!addr[0])
        job_addr(b, job, w->local, addr, n);
    if (w->checked)
        return json_is_true(json_object_get(job, "healthy")) ? 1 : 0;
    return now - w->up_since >= SETTLE_MS ? 1 : 0;
}

/* Waits until every job of live is up (and healthy when checked). */
static int wait_up(struct bs *b, struct sysapp *a, const char *type, const json_t *live,
                   struct pier_err *err)
{
    size_t n = json_array_size(live);
    struct wait w[MAX_WAIT];
    if (n > MAX_WAIT)
        n = MAX_WAIT;
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(live, i);
        char host[128];
        w[i] = (struct wait){.id = bs_str(j, "id"), .checked = has_check(j)};
        job_host(j, w[i].id, host, sizeof(host));
        w[i].local = strcmp(host, b->host_id) == 0;
    }
    int64_t deadline = clock_now_ms() + b->timeout_ms;
    for (;;) {
        size_t up = 0;
        for (size_t i = 0; i < n; i++) {
            if (w[i].up) {
                up++;
                continue;
            }
            int rc = look(b, &w[i], a->addr, sizeof(a->addr), err);
            if (rc < 0)
                return rc;
            w[i].up = rc == 1;
            up += w[i].up;
        }
        if (up == n)
            return 0;
        if (clock_now_ms() >= deadline)
            return err_set(err, PIER_ETIMEOUT,
                           "%zu of %zu %s job%s up after %lld s (each job's log: "
                           "GET /host/jobs/ID/log on the host agent)",
                           up, n, type, n == 1 ? "" : "s", (long long)(b->timeout_ms / 1000));
        usleep(POLL_MS * 1000);
    }
}

/* Brings one process type to its count: found jobs, then new ones. */
static int ensure_type(struct bs *b, struct sysapp *a, const char *type, size_t want,
                       struct pier_err *err)
{
    cleanup_json json_t *live = NULL;
    int rc = live_jobs(b, a, type, &live, err);
    if (rc < 0)
        return rc;
    size_t found = json_array_size(live);
    for (size_t i = found; i < want; i++)
        if ((rc = start_job(b, a, type, live, err)) < 0)
            return rc;
    int64_t start = clock_now_ms();
    if ((rc = wait_up(b, a, type, live, err)) < 0)
        return rc;
    b->jobs_found += (int)(found < want ? found : want);
    if (found >= want) {
        printf("%s: found, %zu %s job%s up\n", a->name, found, type, found == 1 ? "" : "s");
    } else {
        a->up_s = secs(clock_now_ms() - start);
        printf("%s: up%s%s (%.1f s)\n", a->name, a->addr[0] ? " at " : "", a->addr, a->up_s);
    }
    fflush(stdout);
    return 0;
}

/* A job stopped on purpose while waited for (a scheduler already running
 * placed one too, and stopped the extra): the type is counted again. */
#define RECOUNTS 3

int jobs_ensure(struct bs *b, struct sysapp *a, struct pier_err *err)
{
    const char *type;
    json_t *cnt;
    json_object_foreach(a->processes, type, cnt)
    {
        json_int_t want = json_integer_value(cnt);
        if (want <= 0)
            continue;
        int rc;
        for (int i = 0;; i++) {
            rc = ensure_type(b, a, type, want > MAX_WAIT ? MAX_WAIT : (size_t)want, err);
            if (rc != PIER_ECONFLICT || i + 1 == RECOUNTS)
                break;
            printf("%s: %s; counting its jobs again\n", a->name, err->msg);
            fflush(stdout);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}
