/* deploy: steps d and e of a push, the new release made and put to work.
 *
 * The release is made from the app's release as it is once the build is
 * done (a config var set meanwhile stays), unless a code release came
 * meanwhile, which this older build must not replace.
 *
 * An app's first release with code (its release before had no process
 * types, or it had none) is set at once and its web type scaled to 1; the
 * push then waits until that job is up (and stays up for 2 s, as the
 * deployer counts it, so a process that exits at once is a failure); when
 * it is not, the push is refused and the app put back as it was. A later
 * release goes through the controller's deployer with the app's strategy
 * (POST /apps/:app/deploy): the push follows the deployment's events until
 * it is complete or failed, printing what its jobs do, and, once it asked
 * for it, to its end even when the pusher left. The event stream is opened
 * before the deploy is asked for, so no event of it can be missed; a
 * stream that breaks is resumed from the last event seen, and the
 * deployment record is read as well every few seconds, so a lost stream
 * only makes the push slower. */
#include <errno.h>
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

/* ---- the artifact and the release ---- */

/* The process types of the new release: each command of the build's
 * result, with the settings (resources, ports, service, check, env, ...)
 * the previous release gave a type of that name. */
static json_t *release_processes(struct pipe_run *r)
{
    json_t *procs = json_object();
    const json_t *prev = json_object_get(r->prev, "processes");
    const char *type;
    json_t *cmd;
    json_object_foreach(json_object_get(r->result, "process_types"), type, cmd)
    {
        if (!json_is_string(cmd))
            continue;
        const json_t *old = json_object_get(prev, type);
        json_t *p = json_is_object(old) ? json_deep_copy(old) : json_object();
        /* A new web type gets a TCP check, as Flynn's receiver gave it:
         * discovery (and so the router) then sees a job only once it
         * listens, and the deployer moves on as soon as it does. */
        if (!old && strcmp(type, "web") == 0)
            json_object_set_new(p, "ports",
                                json_pack("[{s:i,s:s,s:{s:{s:s,s:s,s:i}}}]", "port", 0, "proto",
                                          "tcp", "service", "check", "type", "tcp", "interval",
                                          "500ms", "threshold", 2));
        json_object_del(p, "cmd");
        json_object_del(p, "entrypoint");
        json_object_set_new(p, "args", json_pack("[O]", cmd));
        json_object_set_new(procs, type, p);
    }
    return procs;
}

/* The previous release's env plus the buildpack's config_vars for names it
 * does not set (Heroku's rule: they are defaults). */
static json_t *release_env(struct pipe_run *r)
{
    const json_t *prev = json_object_get(r->prev, "env");
    json_t *env = json_is_object(prev) ? json_deep_copy(prev) : json_object();
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(r->result, "config_vars"), k, v)
    {
        if (json_object_get(env, k))
            continue;
        if (json_is_string(v)) {
            json_object_set(env, k, v);
        } else if (json_is_number(v) || json_is_boolean(v)) {
            cleanup_buf struct buf s = BUF_INIT;
            jsonx_dump(&s, v);
            json_object_set_new(env, k, json_string(s.p));
        }
    }
    return env;
}

/* An app's release's artifacts, [] when it has none. */
static json_t *artifacts_of(const json_t *rel)
{
    json_t *a = json_object_get(rel, "artifacts");
    return json_is_array(a) ? json_incref(a) : json_array();
}

/* Reads the app's release again now that the build is done: the new
 * release is made from this copy, so a config var set (or a process
 * type's settings changed) while the build ran is kept. A release with
 * other artifacts than the one the push started from (another push, on
 * another receiver, or a rollback) came after this push began: deploying
 * this build over it would undo it, so the push is refused instead. */
static int reread_release(struct pipe_run *r)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *cur = NULL;
    buf_printf(&path, "/apps/%s/release", r->p->app);
    int rc = pipe_ctl(r, "GET", path.p, NULL, &cur, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return pipe_fail("Cannot read the app's release: %s", err.msg);
    const char *was = json_string_value(json_object_get(r->prev, "id"));
    const char *now = json_string_value(json_object_get(cur, "id"));
    if (!now || (was && strcmp(was, now) == 0))
        return 0;
    cleanup_json json_t *a = artifacts_of(r->prev), *b = artifacts_of(cur);
    if (!json_equal(a, b)) {
        pipe_fail("%s's release changed to %s while this push built (another push, or a "
                  "rollback): this older build is not deployed over it",
                  r->p->app, now);
        return pipe_fail("Fetch, merge or rebase, and push again");
    }
    pipe_detail("The app's config changed while this built: the release keeps the change");
    json_decref(r->prev);
    r->prev = json_incref(cur);
    return 0;
}

static int make_release(struct pipe_run *r, struct pier_err *err)
{
    const json_t *res = r->result;
    cleanup_buf struct buf uri = BUF_INIT, size = BUF_INIT;
    buf_printf(&uri, "%s/slugs/%s/%s.tgz", r->p->slug_base, r->p->app_id, r->build_id);
    json_t *sz = json_object_get(res, "slug_size");
    buf_printf(&size, "%lld", json_is_integer(sz) ? (long long)json_integer_value(sz) : 0LL);
    const char *sha = json_string_value(json_object_get(res, "slug_sha256"));
    cleanup_json json_t *art_body = json_pack(
        "{s:s,s:s,s:{s:s,s:s,s:s,s:s,s:s}}", "type", "file", "uri", uri.p, "meta", "blobstore",
        "true", "slugrunner", "true", "sha256", sha ? sha : "", "size", size.p, "git_rev", r->rev);
    cleanup_json json_t *art = NULL;
    int rc = pipe_ctl(r, "POST", "/artifacts", art_body, &art, err);
    const char *art_id = json_string_value(json_object_get(art, "id"));
    if (rc == 0 && !art_id)
        rc = err_set(err, PIER_EPROTO, "the controller made an artifact without an id");
    if (rc < 0)
        return rc;
    /* From here the artifact points at the slug: it stays, whatever comes. */
    r->artifact_made = true;
    cleanup_json json_t *rel_body =
        json_pack("{s:s,s:[s],s:o,s:{s:s,s:s,s:s},s:o}", "app_id", r->p->app, "artifacts", art_id,
                  "env", release_env(r), "meta", "git", "true", "rev", r->rev, "build", r->build_id,
                  "processes", release_processes(r));
    rc = pipe_ctl(r, "POST", "/releases", rel_body, &r->release, err);
    if (rc == 0 && !json_is_string(json_object_get(r->release, "id")))
        rc = err_set(err, PIER_EPROTO, "the controller made a release without an id");
    return rc;
}

int pipe_release(struct pipe_run *r)
{
    if (pipeline_stopped())
        return pipe_fail("The push was cancelled: nothing was released");
    pipe_say("Creating release");
    if (reread_release(r) != 0)
        return 1;
    if (r->p->lock && store_keeper_lost(r->p->lock))
        return pipe_fail("The app's push lock in the store was lost (the store did not answer "
                         "in time): nothing was released; push again");
    struct pier_err err = {0};
    if (make_release(r, &err) < 0) {
        pipe_fail("Cannot create the release: %s", err.msg);
        return pipe_fail("The running release is unchanged");
    }
    return 0;
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

/* The release's number as `pier releases` lists them (newest first): N
 * when it is the Nth from the bottom, counting every release of the app,
 * config changes too; 0 when the list cannot be read. */
static size_t release_number(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *rels = NULL;
    buf_printf(&path, "/apps/%s/releases", r->p->app);
    const char *mine = str(r->release, "created_at");
    if (!mine || pipe_ctl(r, "GET", path.p, NULL, &rels, NULL) < 0)
        return 0;
    size_t n = 1, i;
    json_t *rel;
    json_array_foreach(rels, i, rel)
    {
        const char *at = str(rel, "created_at"), *id = str(rel, "id");
        if (at && id && strcmp(id, release_id(r)) != 0 && strcmp(at, mine) <= 0)
            n++;
    }
    return n;
}

/* "=====> APP deployed (release vN / ID)" and the app's URL. */
static void deployed(struct pipe_run *r)
{
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *routes = NULL;
    size_t version = release_number(r);
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
            rc = pipe_fail("The push was cancelled while web started");
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

/* PUTs the new release's formation with each type at n, web at web_n. */
static int scale(struct pipe_run *r, int web_n, struct pier_err *err)
{
    const json_t *types = json_object_get(r->release, "processes");
    cleanup_json json_t *counts = json_object();
    const char *t;
    json_t *v;
    json_object_foreach((json_t *)types, t, v)
        json_object_set_new(counts, t, json_integer(strcmp(t, "web") == 0 ? web_n : 0));
    cleanup_json json_t *form = json_pack("{s:O}", "processes", counts);
    cleanup_buf struct buf path = BUF_INIT;
    buf_printf(&path, "/apps/%s/formations/%s", r->p->app, release_id(r));
    return pipe_ctl(r, "PUT", path.p, form, NULL, err);
}

/* A first deploy that failed (or was cancelled) after the release was
 * set: the push is refused, so the app goes back to what it ran before,
 * its new formation to nothing and its previous release (if it had one)
 * back in place. Said as it is done. */
static void undo_first(struct pipe_run *r)
{
    struct pier_err err = {0};
    if (scale(r, 0, &err) < 0)
        pipe_fail("Cannot scale release %s back to 0: %s", release_id(r), err.msg);
    else
        pipe_fail("Scaled release %s back to 0", release_id(r));
    const char *prev = str(r->prev, "id");
    if (!prev) {
        pipe_fail("%s had no release before: release %s stays set, with nothing running", r->p->app,
                  release_id(r));
        return;
    }
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *set = json_pack("{s:s}", "id", prev);
    buf_printf(&path, "/apps/%s/release", r->p->app);
    if (pipe_ctl(r, "PUT", path.p, set, NULL, &err) < 0)
        pipe_fail("Cannot put the previous release %s back: %s", prev, err.msg);
    else
        pipe_fail("The previous release %s is the app's release again", prev);
}

static int first_deploy(struct pipe_run *r)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    cleanup_json json_t *set = json_pack("{s:s}", "id", release_id(r));
    buf_printf(&path, "/apps/%s/release", r->p->app);
    if (pipeline_stopped())
        return pipe_fail("The push was cancelled: release %s was made, not deployed",
                         release_id(r));
    if (pipe_ctl(r, "PUT", path.p, set, NULL, &err) < 0)
        return pipe_fail("Cannot set the app's release: %s", err.msg);
    /* web gets one job; other types none until scaled */
    bool web = json_object_get(json_object_get(r->release, "processes"), "web") != NULL;
    int rc = 0;
    if (scale(r, 1, &err) < 0)
        rc = pipe_fail("Cannot scale the app: %s", err.msg);
    else if (!web)
        pipe_detail("No web process type: nothing was started ('pier scale TYPE=N' starts one)");
    else {
        pipe_detail("Scaling web to 1");
        rc = wait_web(r);
    }
    if (rc != 0)
        undo_first(r);
    return rc;
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
    const char *headers[] = {e->r->p->auth.p, "Accept: text/event-stream", last.p, PIPE_USER_AGENT,
                             NULL};
    struct httpc_req req = {.url = url.p, .name = name.p, .headers = headers, .timeout_ms = 30000};
    int rc = httpc_stream_open(e->r->p->h, &req, collect, &e->in, &e->s, err);
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

/* Reads events (and now and then the record) until the deployment ends:
 * 1 complete, -1 failed (why set), -2 no end seen by the deadline. */
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
        /* A push cancelled now (the pusher gone, SIGTERM) still follows
         * the deployment it asked for to its end: what it prints may go
         * nowhere, but its exit status is the truth. */
        int64_t now = clock_now_ms();
        if (now > deadline) {
            state = -2;
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
    if (pipeline_stopped()) {
        pipe_fail("The push was cancelled: release %s was made, not deployed", release_id(r));
        return pipe_fail("The previous release keeps running");
    }
    struct pier_err err = {0};
    struct events e = {.r = r};
    if (events_open(&e, &err) < 0) /* followed by reading the record instead */
        pipe_detail("(cannot follow the deployment's events: %s)", err.msg);
    cleanup_buf struct buf path = BUF_INIT, why = BUF_INIT;
    cleanup_json json_t *body = json_pack("{s:s}", "id", release_id(r));
    cleanup_json json_t *dep = NULL;
    buf_printf(&path, "/apps/%s/deploy", r->p->app);
    long status = 0;
    int rc = pipe_ctl_status(r->p, "POST", path.p, body, &dep, &status, &err);
    /* Whether the previous release surely keeps running: the deploy was
     * refused, or the deployer failed it (and so rolled it back). */
    bool kept = false;
    int state = 0;
    if (rc < 0) {
        buf_printf(&why, "%s", err.msg);
        kept = (status >= 400 && status < 500) || rc == -ECONNREFUSED;
        state = -1;
    } else if (!str(dep, "id")) {
        buf_puts(&why, "the controller answered a deployment without an id");
        state = -1;
    } else {
        state = deployment_state(dep, &why);
        if (state == 0)
            state = follow(&e, dep, &why);
        kept = state == -1;
    }
    httpc_stream_close(e.s);
    buf_free(&e.in);
    if (state > 0)
        return 0;
    if (state == -2) {
        pipe_fail("Deploy: the deployer did not say how it ended in time");
        return pipe_fail("'pier ps -a %s' and 'pier events -a %s' show what runs", r->p->app,
                         r->p->app);
    }
    pipe_fail("Deploy failed: %s", why.p);
    if (kept)
        return pipe_fail("The previous release keeps running ('pier log -a %s' shows why)",
                         r->p->app);
    return pipe_fail("The deployment may have started: 'pier ps -a %s' and 'pier events -a %s' "
                     "show what runs",
                     r->p->app, r->p->app);
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
