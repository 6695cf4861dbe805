/* jobs: Flynn's jobs API over the job records (docs/host.md), and the
 * ephemeral scheduler's one-off jobs.
 *
 * GET lists and reads the records of an app's jobs in Flynn's Job shape;
 * DELETE (Flynn's `kill`) and a PUT asking for "down" set desired_state
 * "down" by compare-and-swap: the agent stops the job, and the service
 * scheduler replaces it when its formation still wants it.
 *
 * POST builds a one-off job from Flynn's NewJob (jobbuild.h), marks it
 * "oneoff" (the service scheduler never restarts it) and places it once
 * (cluster.h). The release may be another app's (FLYNN-CLIENT-CONTRACT.md
 * pitfall 5), or none (pier's extension, for the git receiver's builds):
 * the job then runs on the host's default stack with only its own env.
 * Without an Upgrade header the answer is the Job at once; with "Upgrade:
 * flynn-attach/0" the connection becomes the job's attach session
 * (jobattach.c). An attached job always keeps its log on the agent (the
 * session answers from it when the job ended before the attach reached
 * it); when the client asked for "disable_log" the record says
 * "log_hidden" and the app log (applog.c) leaves the job out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/cleanup.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"
#include "scheduler/cluster.h"
#include "scheduler/jobbuild.h"

/* The fields of Flynn's Job (schema controller/job.json). */
static const char *const JOB_FIELDS[] = {
    "id",     "uuid",       "host_id",    "app",         "release",    "type",
    "state",  "args",       "meta",       "exit_status", "host_error", "restarts",
    "run_at", "created_at", "updated_at", "volumes",     "cmd",        NULL,
};

/* ---- records and the Job shape ---- */

static const char *str_field(const json_t *j, const char *name)
{
    return json_string_value(json_object_get(j, name));
}

/* The Job a Flynn client sees of a record (a new object). */
static json_t *job_view(const json_t *rec)
{
    json_t *j = json_deep_copy(rec);
    const char *id = str_field(j, "id");
    const char *dash = id ? strchr(id, '-') : NULL;
    if (!str_field(j, "uuid") && dash && uuid_ok(dash + 1))
        json_object_set_new(j, "uuid", json_string(dash + 1));
    if (!str_field(j, "state"))
        json_object_set_new(j, "state", json_string("pending"));
    const char *upd = str_field(j, "finished_at");
    if (!upd)
        upd = str_field(j, "started_at");
    if (!upd)
        upd = str_field(j, "created_at");
    if (upd)
        json_object_set_new(j, "updated_at", json_string(upd));
    if (!json_is_integer(json_object_get(j, "exit_status")))
        json_object_del(j, "exit_status");
    if (!json_is_object(json_object_get(j, "meta")))
        json_object_del(j, "meta");
    ctl_keep_fields(j, JOB_FIELDS);
    return j;
}

static void job_key(struct buf *key, const char *id)
{
    buf_reset(key);
    buf_printf(key, "%s%s", KEYS_JOBS, id);
}

/* Reads the record of job id of app (by id). PIER_ENOTFOUND when absent or
 * another app's. */
static int app_job_get(struct ctl *c, const char *app_id, const char *id, json_t **out,
                       struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    job_key(&key, id);
    json_t *rec = NULL;
    int rc = ctl_get(c, key.p, &rec, NULL, err);
    if (rc < 0)
        return rc;
    const char *app = str_field(rec, "app");
    if (!app || strcmp(app, app_id) != 0) {
        json_decref(rec);
        return err_set(err, PIER_ENOTFOUND, "job %s not found", id);
    }
    *out = rec;
    return 0;
}

/* Sets desired_state "down" (compare-and-swap, again on a conflict: the
 * agent writes observed fields meanwhile). */
int ctl_job_stop(struct ctl *c, const char *id, struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    job_key(&key, id);
    for (int attempt = 0; attempt < 50; attempt++) {
        json_t *rec = NULL;
        int64_t rev = 0;
        int rc = ctl_get(c, key.p, &rec, &rev, err);
        if (rc < 0)
            return rc;
        const char *want = str_field(rec, "desired_state");
        if (want && strcmp(want, "down") == 0) {
            json_decref(rec);
            return 0;
        }
        json_object_set_new(rec, "desired_state", json_string("down"));
        rc = ctl_put(c, key.p, rec, rev, err);
        json_decref(rec);
        if (rc != PIER_ECONFLICT)
            return rc;
    }
    return err_set(err, PIER_ECONFLICT, "job %s: its record kept changing, try again", id);
}

/* ---- agents ---- */

int ctl_agent_addr(struct ctl *c, const char *host_id, struct buf *addr, struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_HOSTS, host_id ? host_id : "");
    json_t *host = NULL;
    int rc = host_id ? ctl_get(c, key.p, &host, NULL, err) : PIER_ENOTFOUND;
    if (rc == PIER_ENOTFOUND)
        return err_set(err, PIER_EUNAVAIL, "host %s is not in the cluster (its agent is gone)",
                       host_id ? host_id : "(none)");
    if (rc < 0)
        return rc;
    const char *a = str_field(host, "addr");
    bool ok = a && *a;
    if (ok)
        buf_puts(addr, a);
    json_decref(host);
    return ok ? 0 : err_set(err, PIER_EUNAVAIL, "host %s has no address", host_id);
}

void ctl_agent_auth(struct ctl *c, struct buf *header)
{
    httpc_basic_auth(header, c->key);
}

/* ---- list, get, stop, update ---- */

/* Newest first, as Flynn lists them (the CLI sorts again for `ps`). */
static int by_created(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    const char *cx = str_field(x, "created_at"), *cy = str_field(y, "created_at");
    int d = strcmp(cy ? cy : "", cx ? cx : "");
    if (d)
        return d;
    const char *ix = str_field(x, "id"), *iy = str_field(y, "id");
    return strcmp(ix ? ix : "", iy ? iy : "");
}

static void jobs_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    cleanup_json json_t *all = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc == 0)
        rc = ctl_list(c, KEYS_JOBS, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *app_id = ctl_app_id(app);
    size_t n = 0;
    json_t **v = xcalloc(json_array_size(all) + 1, sizeof(*v));
    size_t i;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        const char *a = str_field(rec, "app");
        if (a && app_id && strcmp(a, app_id) == 0)
            v[n++] = job_view(rec);
    }
    qsort(v, n, sizeof(*v), by_created);
    json_t *out = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(out, v[i]);
    free(v);
    httpd_reply_json(r, 200, out);
}

/* Resolves the app and the job of the path; replies and returns < 0 when
 * either is not there. */
static int path_job(struct httpd_req *r, struct ctl *c, json_t **rec)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc == 0)
        rc = app_job_get(c, ctl_app_id(app), httpd_param(r, "id"), rec, &err);
    if (rc < 0)
        ctl_reply_err(r, rc, &err);
    return rc;
}

static void job_get(struct httpd_req *r, void *ud)
{
    json_t *rec = NULL;
    if (path_job(r, ud, &rec) < 0)
        return;
    httpd_reply_json(r, 200, job_view(rec));
    json_decref(rec);
}

static void job_delete(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *rec = NULL;
    if (path_job(r, c, &rec) < 0)
        return;
    struct pier_err err = {0};
    int rc = ctl_job_stop(c, str_field(rec, "id"), &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    log_info("controller", "job stopped", "job=%s", str_field(rec, "id"));
    httpd_reply(r, 200, "text/plain; charset=utf-8", "", 0);
}

/* Flynn's job_update: the agent reports a job's state, so the only change
 * a client may ask for is "down" (stopping it); the same state it has, or
 * none, changes nothing. */
static void job_put(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *rec = NULL;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0 || path_job(r, c, &rec) < 0)
        return;
    const char *id = str_field(rec, "id");
    const json_t *bid = json_object_get(body, "id");
    if (bid && !json_is_null(bid) && (!json_is_string(bid) || strcmp(json_string_value(bid), id))) {
        ctl_reply_invalid(r, "id: does not match the job in the path (%s)", id);
        return;
    }
    const json_t *st = json_object_get(body, "state");
    const char *want = json_string_value(st);
    const char *now = str_field(rec, "state");
    if (st && !json_is_null(st) && !want) {
        ctl_reply_invalid(r, "state: must be a string");
        return;
    }
    struct pier_err err = {0};
    if (want && (strcmp(want, "down") == 0 || strcmp(want, "stopping") == 0)) {
        int rc = ctl_job_stop(c, id, &err);
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
    } else if (want && !(now && strcmp(want, now) == 0)) {
        ctl_reply_invalid(r,
                          "state: a job's state is reported by its host; the only change a "
                          "client can ask for is \"down\" (stop it), not \"%s\"",
                          want);
        return;
    }
    /* Answers the record as it is now (it belongs to the path's app). */
    cleanup_buf struct buf key = BUF_INIT;
    job_key(&key, id);
    json_t *cur = NULL;
    int rc = ctl_get(c, key.p, &cur, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, job_view(cur));
    json_decref(cur);
}

/* ---- one-off jobs: Flynn's NewJob ---- */

/* A field of the body, NULL when absent or null (a Go client sends null for
 * an empty map or slice). */
static json_t *opt(const json_t *body, const char *name)
{
    json_t *v = json_object_get(body, name);
    return json_is_null(v) ? NULL : v;
}

static int check_strings(const json_t *v, const char *name, struct pier_err *err)
{
    if (!json_is_array(v))
        return err_set(err, PIER_EINVAL, "%s: must be an array of strings", name);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) if (!json_is_string(s)) return err_set(
        err, PIER_EINVAL, "%s[%zu]: must be a string", name, i);
    return 0;
}

/* The artifact records the job runs with: the body's "artifacts" (or
 * "artifact"), else the release's (or its older "artifact"). They are
 * written into rel (the caller's copy), which jobbuild reads the ids from.
 * New array. */
static int newjob_artifacts(struct ctl *c, const json_t *body, json_t *rel, json_t **out,
                            struct pier_err *err)
{
    const json_t *ids = opt(body, "artifacts");
    cleanup_json json_t *one = NULL;
    if (ids && check_strings(ids, "artifacts", err) < 0)
        return PIER_EINVAL;
    if ((!ids || !json_array_size(ids)) && opt(body, "artifact")) {
        if (!json_is_string(opt(body, "artifact")))
            return err_set(err, PIER_EINVAL, "artifact: must be an artifact id");
        one = json_pack("[O]", opt(body, "artifact"));
        ids = one;
    }
    if (!ids || !json_array_size(ids))
        ids = json_object_get(rel, "artifacts");
    if (!json_array_size(ids) && json_is_string(json_object_get(rel, "artifact"))) {
        one = json_pack("[O]", json_object_get(rel, "artifact"));
        ids = one;
    }
    json_t *arts = json_array();
    size_t i;
    json_t *id;
    cleanup_buf struct buf key = BUF_INIT;
    json_array_foreach(ids, i, id)
    {
        const char *s = json_string_value(id);
        json_t *a = NULL;
        int rc = s && uuid_ok(s) ? 0 : PIER_ENOTFOUND;
        if (rc == 0) {
            buf_reset(&key);
            buf_printf(&key, "%s%s", KEYS_ARTIFACTS, s);
            rc = ctl_get(c, key.p, &a, NULL, err);
        }
        if (rc < 0) {
            json_decref(arts);
            if (rc == PIER_ENOTFOUND)
                return err_set(err, PIER_EINVAL, "artifact %s not found", s ? s : "(not a string)");
            return rc;
        }
        json_array_append_new(arts, a);
    }
    json_object_set(rel, "artifacts", (json_t *)ids);
    json_object_del(rel, "artifact");
    *out = arts;
    return 0;
}

/* Whether a NewJob body names no release (absent, null or ""): pier's
 * extension, a job on the host's default stack (the git receiver's build
 * of an app that has no release yet). */
static bool newjob_releaseless(const json_t *body)
{
    const json_t *v = opt(body, "release");
    return !v || (json_is_string(v) && !*json_string_value(v));
}

/* The release a job runs: the stored one, or for a release-less job an
 * empty stand-in (no env, no processes, no artifacts) that jobbuild_spec
 * reads like any other; its id is dropped from the job afterwards. */
static int newjob_release(struct ctl *c, const struct check_newjob *nj, bool releaseless,
                          json_t **out, struct pier_err *err)
{
    if (releaseless) {
        if (nj->release_env)
            return err_set(err, PIER_EINVAL,
                           "release_env: a job without a release has no release env to add");
        *out = json_pack("{s:s,s:{},s:{},s:[]}", "id", "", "env", "processes", "artifacts");
        return 0;
    }
    /* The release may be another app's (`pg psql` runs the postgres app's
     * release in the user's app). */
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, nj->release);
    int rc = ctl_get(c, key.p, out, NULL, err);
    if (rc == PIER_ENOTFOUND)
        rc = err_set(err, PIER_EINVAL, "release %s not found", nj->release);
    return rc;
}

/* Builds the record of a one-off job of app from the NewJob body (not yet
 * placed: no id, no host). PIER_EINVAL naming the field for bad input. */
static int newjob_spec(struct ctl *c, const json_t *app, const json_t *body, bool attach,
                       json_t **out, struct pier_err *err)
{
    /* check_newjob wants a release id: a release-less body is read with a
     * stand-in one (nj borrows from the copy, which outlives it). */
    bool releaseless = newjob_releaseless(body);
    cleanup_json json_t *copy = NULL;
    if (releaseless) {
        char standin[UUID_LEN];
        uuid_new(standin);
        copy = json_deep_copy(body);
        json_object_set_new(copy, "release", json_string(standin));
        body = copy;
    }
    struct check_newjob nj;
    int rc = check_newjob(body, attach, &nj, err);
    if (rc < 0)
        return rc;
    cleanup_json json_t *rel = NULL;
    cleanup_json json_t *arts = NULL;
    json_t *spec = NULL;
    rc = newjob_release(c, &nj, releaseless, &rel, err);
    if (rc == 0)
        rc = newjob_artifacts(c, body, rel, &arts, err);
    /* Flynn gives a one-off the release's env only when asked. */
    if (rc == 0 && !nj.release_env)
        json_object_del(rel, "env");
    if (rc == 0)
        rc = jobbuild_spec(app, rel, arts, NULL, &nj.oneoff, &spec, err);
    if (rc == 0 && releaseless) {
        json_object_del(spec, "release");
        json_object_del(json_object_get(spec, "env"), "FLYNN_RELEASE_ID");
    }
    if (rc == 0 && (rc = check_job_runnable(spec, err)) < 0)
        json_decref(spec);
    if (rc == 0) {
        json_object_set_new(spec, "oneoff", json_true());
        if (nj.log_hidden)
            json_object_set_new(spec, "log_hidden", json_true());
        if (!json_object_get(spec, "ports"))
            json_object_set_new(spec, "ports", json_array());
        *out = spec;
    }
    check_newjob_clear(&nj);
    return rc;
}

/* POST /apps/:app/jobs: a one-off job, detached (the Job at once) or
 * attached (Upgrade: flynn-attach/0). */
static void jobs_run(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    const char *upgrade = httpd_header(r, "Upgrade");
    if (upgrade && !httpd_header_has(r, "Upgrade", "flynn-attach/0")) {
        ctl_reply_invalid(r, "Upgrade: only flynn-attach/0 is spoken here, not \"%s\"", upgrade);
        return;
    }
    bool attach = upgrade != NULL;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    cleanup_json json_t *body = NULL;
    cleanup_json json_t *job = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    if (httpd_body_json(r, &body) < 0)
        return;
    rc = newjob_spec(c, app, body, attach, &job, &err);
    if (rc == 0)
        rc = cluster_place_once(c->s, job, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *id = str_field(job, "id"), *host = str_field(job, "host_id");
    log_info("controller", "one-off job placed", "job=%s app=%s attach=%s", id, ctl_app_id(app),
             attach ? "yes" : "no");
    if (!attach) {
        json_t *view = job_view(job);
        if (opt(body, "cmd"))
            json_object_set(view, "cmd", opt(body, "cmd"));
        httpd_reply_json(r, 200, view);
        return;
    }
    ctl_job_attach(r, c, id ? id : "", host ? host : "", json_is_true(json_object_get(job, "tty")));
}

void ctl_jobs_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "GET", "/apps/:app/jobs", jobs_list, c, false);
    httpd_route(h, "POST", "/apps/:app/jobs", jobs_run, c, false);
    httpd_route(h, "GET", "/apps/:app/jobs/:id", job_get, c, false);
    httpd_route(h, "PUT", "/apps/:app/jobs/:id", job_put, c, false);
    httpd_route(h, "DELETE", "/apps/:app/jobs/:id", job_delete, c, false);
    ctl_applog_routes(h, c);
}
