/* deploy: step e of a push, the new release put to work.
 *
 * An app's first release with code (its release before had no process
 * types, or it had none) is set at once and its web type scaled to 1; the
 * push then waits until that job is up (and stays up for 2 s, as the
 * deployer counts it, so a process that exits at once is a failure). A
 * later release goes through the controller's deployer with the app's
 * strategy (POST /apps/:app/deploy): the push follows the deployment's
 * events until it is complete or failed, printing what its jobs do. The
 * event stream is opened before the deploy is asked for, so no event of it
 * can be missed; a stream that breaks is resumed from the last event seen,
 * and the deployment record is read as well every few seconds, so a lost
 * stream only makes the push slower. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "git/pipeline.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"

#define FIRST_UP_WAIT_MS 120000
#define STAY_UP_MS 2000
#define POLL_MS 300
#define RECHECK_MS 5000
/* Beyond the app's deploy_timeout, how long the push waits for the
 * deployer to say how it ended. */
#define DEPLOY_SLACK_MS 60000

static const char *str(const json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

static const char *release_id(const struct pipe_run *r)
{
    return str(r->release, "id");
}

/* ---- what the jobs do ---- */

/* The jobs of the new release seen so far: their names ("web.1", numbered
 * in the order they appear) and last state printed. */
struct seen {
    json_t *names;  /* job id -> name */
    json_t *states; /* job id -> state */
    json_t *counts; /* type -> jobs named */
};

static void seen_init(struct seen *s)
{
    s->names = json_object();
    s->states = json_object();
    s->counts = json_object();
}

static void seen_free(struct seen *s)
{
    json_decref(s->names);
    json_decref(s->states);
    json_decref(s->counts);
}

/* Prints "       web.1 up" when job (a Job, or a job event's data) of the
 * new release changed state; returns its name (borrowed from s). */
static const char *job_seen(struct seen *s, const json_t *job)
{
    const char *id = str(job, "id"), *type = str(job, "type"), *state = str(job, "state");
    if (!id || !type || !state)
        return NULL;
    if (!json_object_get(s->names, id)) {
        json_int_t n = json_integer_value(json_object_get(s->counts, type)) + 1;
        json_object_set_new(s->counts, type, json_integer(n));
        char name[96];
        snprintf(name, sizeof(name), "%s.%lld", type, (long long)n);
        json_object_set_new(s->names, id, json_string(name));
    }
    const char *name = str(s->names, id);
    const char *was = str(s->states, id);
    if (!was || strcmp(was, state) != 0) {
        json_object_set_new(s->states, id, json_string(state));
        pipe_detail("%s %s", name, state);
    }
    return name;
}

/* Why a job ended, from its record. */
static void job_why(const json_t *job, struct buf *why)
{
    const char *err = str(job, "host_error");
    const json_t *st = json_object_get(job, "exit_status");
    if (err && *err)
        buf_puts(why, err);
    else if (json_is_integer(st))
        buf_printf(why, "it exited with status %lld", (long long)json_integer_value(st));
    else
        buf_puts(why, "it stopped");
}

/* ---- the end ---- */

/* "=====> APP deployed (release vN / ID)" and the app's URL. */
static void deployed(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *rels = NULL, *routes = NULL;
    buf_printf(&path, "/apps/%s/releases", r->p->app);
    size_t version = 0;
    if (pipe_ctl(r, "GET", path.p, NULL, &rels, NULL) == 0)
        version = json_array_size(rels);
    if (version)
        printf("=====> %s deployed (release v%zu / %s)\n", r->p->app, version, release_id(r));
    else
        printf("=====> %s deployed (release %s)\n", r->p->app, release_id(r));
    buf_reset(&path);
    buf_printf(&path, "/apps/%s/routes", r->p->app);
    if (pipe_ctl(r, "GET", path.p, NULL, &routes, NULL) == 0) {
        size_t i;
        json_t *rt;
        json_array_foreach(routes, i, rt)
        {
            const char *type = str(rt, "type"), *domain = str(rt, "domain"), *p = str(rt, "path");
            if (!type || strcmp(type, "http") != 0 || !domain)
                continue;
            printf("       http://%s%s\n", domain, p && strcmp(p, "/") != 0 ? p : "");
            break;
        }
    }
    fflush(stdout);
}

/* ---- the first release ---- */

/* Waits until the release's web job is up for STAY_UP_MS. */
static int wait_web(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/jobs", r->p->app);
    struct seen s;
    seen_init(&s);
    int64_t deadline = clock_now_ms() + FIRST_UP_WAIT_MS, up_since = 0;
    int rc = -1;
    while (rc < 0) {
        if (pipeline_stopped()) {
            rc = pipe_fail("The push was cancelled while web started (the release is set)");
            break;
        }
        if (clock_now_ms() > deadline) {
            pipe_fail("The web process did not come up within %d s", FIRST_UP_WAIT_MS / 1000);
            rc = pipe_fail("See what it printed with 'pier log -a %s'", r->p->app);
            break;
        }
        cleanup_json json_t *jobs = NULL;
        struct pier_err err = {0};
        if (pipe_ctl(r, "GET", path.p, NULL, &jobs, &err) < 0) {
            rc = pipe_fail("Cannot follow the app's jobs: %s", err.msg);
            break;
        }
        bool up = false;
        size_t i;
        json_t *j;
        json_array_foreach(jobs, i, j)
        {
            const char *rel = str(j, "release"), *type = str(j, "type"), *st = str(j, "state");
            if (!rel || strcmp(rel, release_id(r)) != 0 || !type || strcmp(type, "web") != 0 || !st)
                continue;
            const char *name = job_seen(&s, j);
            if (strcmp(st, "up") == 0) {
                up = true;
            } else if (strcmp(st, "crashed") == 0 || strcmp(st, "failed") == 0 ||
                       strcmp(st, "down") == 0) {
                cleanup_buf struct buf why = BUF_INIT;
                job_why(j, &why);
                pipe_fail("%s %s: %s", name ? name : "web", st, why.p);
                rc = pipe_fail("See what it printed with 'pier log -a %s'", r->p->app);
                break;
            }
        }
        if (rc >= 0)
            break;
        int64_t now = clock_now_ms();
        if (!up)
            up_since = 0;
        else if (!up_since)
            up_since = now;
        else if (now - up_since >= STAY_UP_MS)
            rc = 0;
        if (rc < 0)
            usleep(POLL_MS * 1000);
    }
    seen_free(&s);
    return rc;
}

static int first_deploy(struct pipe_run *r)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *set = json_pack("{s:s}", "id", release_id(r));
    buf_printf(&path, "/apps/%s/release", r->p->app);
    if (pipe_ctl(r, "PUT", path.p, set, NULL, &err) < 0)
        return pipe_fail("Cannot set the app's release: %s", err.msg);
    /* web gets one job; other types none until scaled */
    const json_t *types = json_object_get(r->release, "processes");
    bool web = json_object_get(types, "web") != NULL;
    cleanup_json json_t *counts = json_object();
    const char *t;
    json_t *v;
    json_object_foreach((json_t *)types, t, v)
        json_object_set_new(counts, t, json_integer(strcmp(t, "web") == 0 ? 1 : 0));
    cleanup_json json_t *form = json_pack("{s:O}", "processes", counts);
    buf_reset(&path);
    buf_printf(&path, "/apps/%s/formations/%s", r->p->app, release_id(r));
    if (pipe_ctl(r, "PUT", path.p, form, NULL, &err) < 0)
        return pipe_fail("Cannot scale the app: %s", err.msg);
    if (!web) {
        pipe_detail("No web process type: nothing was started ('pier scale TYPE=N' starts one)");
        return 0;
    }
    pipe_detail("Scaling web to 1");
    return wait_web(r);
}

/* ---- later releases: the deployer ---- */

struct events {
    struct pipe_run *r;
    struct httpc_stream *s;
    struct buf in;
    long long last_id;
};

static int collect(const char *data, size_t len, void *ud)
{
    buf_append(ud, data, len);
    return 0;
}

static int events_open(struct events *e, struct pier_err *err)
{
    httpc_stream_close(e->s);
    e->s = NULL;
    buf_reset(&e->in);
    cleanup_buf struct buf url = BUF_INIT, last = BUF_INIT, name = BUF_INIT;
    buf_printf(&url, "%s/events?app_id=%s&object_types=deployment,job", e->r->p->controller,
               e->r->p->app);
    buf_printf(&last, "Last-Event-Id: %lld", e->last_id);
    buf_printf(&name, "the controller's events at %s", url.p);
    const char *headers[] = {e->r->auth.p, "Accept: text/event-stream", last.p, PIPE_USER_AGENT,
                             NULL};
    struct httpc_req req = {.url = url.p, .name = name.p, .headers = headers, .timeout_ms = 30000};
    int rc = httpc_stream_open(e->r->h, &req, collect, &e->in, &e->s, err);
    if (rc == 0 && httpc_stream_status(e->s) != 200)
        rc = err_set(err, PIER_EPROTO, "%s answered %ld", name.p, httpc_stream_status(e->s));
    return rc;
}

/* The next event that arrived (new reference), or NULL. */
static json_t *events_next(struct events *e)
{
    for (;;) {
        char *end = e->in.p ? strstr(e->in.p, "\n\n") : NULL;
        if (!end)
            return NULL;
        size_t n = (size_t)(end - e->in.p) + 2;
        json_t *ev = NULL;
        for (char *line = e->in.p; line < end;) {
            char *nl = memchr(line, '\n', (size_t)(end + 1 - line));
            if (strncmp(line, "data: ", 6) == 0 && !ev)
                jsonx_parse(line + 6, (size_t)(nl - line - 6), &ev, NULL);
            line = nl + 1;
        }
        buf_consume(&e->in, n);
        if (ev) {
            json_t *id = json_object_get(ev, "id");
            if (json_is_integer(id))
                e->last_id = (long long)json_integer_value(id);
            return ev;
        }
    }
}

/* 1 complete, -1 failed (why set), 0 still running. */
static int deployment_state(const json_t *dep, struct buf *why)
{
    const char *st = str(dep, "status");
    if (st && strcmp(st, "complete") == 0)
        return 1;
    if (st && strcmp(st, "failed") == 0) {
        const char *e = str(dep, "error");
        buf_puts(why, e && *e ? e : "the deployer gave no reason");
        return -1;
    }
    return 0;
}

/* Reads events (and now and then the record) until the deployment ends. */
static int follow(struct events *e, const json_t *dep, struct buf *why)
{
    struct pipe_run *r = e->r;
    const char *dep_id = str(dep, "id");
    json_t *t = json_object_get(dep, "deploy_timeout");
    int64_t deadline = clock_now_ms() + DEPLOY_SLACK_MS +
                       (json_is_integer(t) ? (int64_t)json_integer_value(t) * 1000 : 30000);
    int64_t recheck = clock_now_ms() + RECHECK_MS;
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/deployments/%s", dep_id);
    struct seen s;
    seen_init(&s);
    int state = 0;
    while (state == 0) {
        json_t *ev;
        while (state == 0 && (ev = events_next(e)) != NULL) {
            const char *type = str(ev, "object_type"), *oid = str(ev, "object_id");
            const json_t *data = json_object_get(ev, "data");
            if (type && strcmp(type, "deployment") == 0 && oid && strcmp(oid, dep_id) == 0)
                state = deployment_state(data, why);
            else if (type && strcmp(type, "job") == 0 && str(data, "release") &&
                     strcmp(str(data, "release"), release_id(r)) == 0)
                job_seen(&s, data);
            json_decref(ev);
        }
        if (state != 0)
            break;
        if (pipeline_stopped()) {
            buf_puts(why, "the push was cancelled (the deployment goes on)");
            state = -1;
            break;
        }
        int64_t now = clock_now_ms();
        if (now > deadline) {
            buf_puts(why, "the deployer did not finish in time");
            state = -1;
            break;
        }
        struct pier_err err = {0};
        int prc = e->s ? httpc_stream_poll(e->s, 1000, &err) : 0;
        if (prc <= 0) { /* ended or broke: again from the last event */
            if (!e->s || events_open(e, &err) < 0) {
                httpc_stream_close(e->s);
                e->s = NULL;
                usleep(500 * 1000);
            }
            recheck = now;
        }
        if (now >= recheck) {
            cleanup_json json_t *cur = NULL;
            if (pipe_ctl(r, "GET", path.p, NULL, &cur, NULL) == 0)
                state = deployment_state(cur, why);
            recheck = now + RECHECK_MS;
        }
    }
    seen_free(&s);
    return state;
}

static int deploy(struct pipe_run *r)
{
    struct pier_err err = {0};
    struct events e = {.r = r};
    if (events_open(&e, &err) < 0) /* followed by reading the record instead */
        pipe_detail("(cannot follow the deployment's events: %s)", err.msg);
    cleanup_buf struct buf path = BUF_INIT, why = BUF_INIT;
    cleanup_json json_t *body = json_pack("{s:s}", "id", release_id(r));
    cleanup_json json_t *dep = NULL;
    buf_printf(&path, "/apps/%s/deploy", r->p->app);
    int rc = pipe_ctl(r, "POST", path.p, body, &dep, &err);
    int state = 0;
    if (rc < 0) {
        buf_printf(&why, "%s", err.msg);
        state = -1;
    } else if (!str(dep, "id")) {
        buf_puts(&why, "the controller answered a deployment without an id");
        state = -1;
    } else {
        state = deployment_state(dep, &why);
        if (state == 0)
            state = follow(&e, dep, &why);
    }
    httpc_stream_close(e.s);
    buf_free(&e.in);
    if (state > 0)
        return 0;
    pipe_fail("Deploy failed: %s", why.p);
    return pipe_fail("The previous release keeps running ('pier log -a %s' shows why)", r->p->app);
}

int pipe_deploy(struct pipe_run *r)
{
    pipe_say("Deploying");
    /* An app whose release has no process types (none yet, or only config
     * vars set before the first push) never ran code: its first deploy. */
    bool first = json_object_size(json_object_get(r->prev, "processes")) == 0;
    int rc = first ? first_deploy(r) : deploy(r);
    if (rc == 0)
        deployed(r);
    return rc;
}
