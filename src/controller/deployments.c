/* deployments: POST /apps/:app/deploy, GET /deployments/:id,
 * GET /apps/:app/deployments. The deployment itself is run by the leading
 * controller's deployer (deployer.c), which watches these records. */
#include <stdlib.h>
#include <string.h>

#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/uuid.h"

/* What a Flynn client sees of a deployment record. */
static const char *const deployment_fields[] = {
    "id",        "app",  "old_release",    "new_release", "strategy",    "status",
    "processes", "tags", "deploy_timeout", "created_at",  "finished_at", NULL};

static json_t *public_view(const json_t *rec)
{
    json_t *j = json_deep_copy(rec);
    ctl_keep_fields(j, deployment_fields);
    return j;
}

static bool finished(const json_t *dep)
{
    const char *st = json_string_value(json_object_get(dep, "status"));
    return st && (strcmp(st, "complete") == 0 || strcmp(st, "failed") == 0);
}

/* The app's deployment still in progress, if any (a new reference). */
static int in_progress(struct ctl *c, const char *app_id, json_t **out, struct pier_err *err)
{
    cleanup_json json_t *all = NULL;
    int rc = ctl_list(c, KEYS_DEPLOYMENTS, &all, err);
    if (rc < 0)
        return rc;
    size_t i;
    json_t *d;
    *out = NULL;
    json_array_foreach(all, i, d)
    {
        const char *a = json_string_value(json_object_get(d, "app"));
        if (a && strcmp(a, app_id) == 0 && !finished(d)) {
            *out = json_incref(d);
            break;
        }
    }
    return 0;
}

/* Sets the app's release at once (the old formation runs nothing, so there
 * is nothing to roll): CAS on the app record, retried on conflict. */
static int set_release_now(struct ctl *c, const char *app_ref, const char *release,
                           struct pier_err *err)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        cleanup_json json_t *app = NULL;
        int64_t rev = 0;
        int rc = ctl_app_get(c, app_ref, &app, &rev, err);
        if (rc < 0)
            return rc;
        json_object_set_new(app, "release", json_string(release));
        ctl_set_now(app, "updated_at");
        struct buf key = BUF_INIT;
        buf_printf(&key, "%s%s", KEYS_APPS, ctl_app_id(app));
        rc = ctl_put(c, key.p, app, rev, err);
        buf_free(&key);
        if (rc != PIER_ECONFLICT)
            return rc;
    }
    return err_set(err, PIER_ECONFLICT, "the app kept changing; try again");
}

static bool any_running(const json_t *processes)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)processes, k, v)
    {
        if (json_integer_value(v) > 0)
            return true;
    }
    return false;
}

static void deploy_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    const char *release_id = NULL;
    if (jsonx_get_str(body, "id", &release_id, &err) < 0 || !release_id || !*release_id) {
        ctl_reply_invalid(r, "id: the release to deploy is required");
        return;
    }
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *app_id = ctl_app_id(app);
    cleanup_json json_t *release = NULL;
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, uuid_ok(release_id) ? release_id : "-");
    rc = ctl_get(c, key.p, &release, NULL, &err);
    buf_free(&key);
    if (rc == PIER_ENOTFOUND) {
        ctl_reply_invalid(r, "id: release %s does not exist", release_id);
        return;
    }
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *rel_app = json_string_value(json_object_get(release, "app_id"));
    if (rel_app && *rel_app && strcmp(rel_app, app_id) != 0) {
        ctl_reply_invalid(r, "id: release %s belongs to another app", release_id);
        return;
    }
    cleanup_json json_t *running = NULL;
    if ((rc = in_progress(c, app_id, &running, &err)) < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    if (running) {
        httpd_reply_error(r, 409, "conflict", 9,
                          "deployment %s of this app is still in progress; wait for it "
                          "(pier events) and deploy again",
                          json_string_value(json_object_get(running, "id")));
        return;
    }

    const char *old_release = json_string_value(json_object_get(app, "release"));
    cleanup_json json_t *old_form = NULL;
    if (old_release) {
        buf_printf(&key, "%s%s/%s", KEYS_FORMATIONS, app_id, old_release);
        rc = ctl_get(c, key.p, &old_form, NULL, &err);
        buf_free(&key);
        if (rc < 0 && rc != PIER_ENOTFOUND) {
            ctl_reply_err(r, rc, &err);
            return;
        }
    }
    json_t *processes = old_form ? json_object_get(old_form, "processes") : NULL;
    char id[UUID_LEN];
    uuid_new(id);
    const char *strategy = json_string_value(json_object_get(app, "strategy"));
    json_t *timeout = json_object_get(app, "deploy_timeout");
    json_t *dep = json_pack(
        "{s:s,s:s,s:s,s:s,s:s,s:I}", "id", id, "app", app_id, "new_release", release_id, "strategy",
        strategy ? strategy : "all-at-once", "status", "pending", "deploy_timeout",
        (json_int_t)(json_is_integer(timeout) ? json_integer_value(timeout) : 30));
    if (old_form && json_is_object(json_object_get(old_form, "tags")))
        json_object_set(dep, "tags", json_object_get(old_form, "tags"));
    if (old_release)
        json_object_set_new(dep, "old_release", json_string(old_release));
    json_object_set_new(dep, "processes", processes ? json_deep_copy(processes) : json_object());
    ctl_set_now(dep, "created_at");

    /* Nothing runs (or it is the same release): Flynn sets the release
     * at once and answers a finished deployment (contract §3.9). */
    bool now = !processes || !any_running(processes) ||
               (old_release && strcmp(old_release, release_id) == 0);
    if (now) {
        if ((rc = set_release_now(c, app_id, release_id, &err)) < 0) {
            json_decref(dep);
            ctl_reply_err(r, rc, &err);
            return;
        }
        json_object_set_new(dep, "status", json_string("complete"));
        ctl_set_now(dep, "finished_at");
    }
    buf_printf(&key, "%s%s", KEYS_DEPLOYMENTS, id);
    rc = ctl_put(c, key.p, dep, 0, &err);
    buf_free(&key);
    if (rc < 0) {
        json_decref(dep);
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, public_view(dep));
    json_decref(dep);
}

static void deploy_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    const char *id = httpd_param(r, "id");
    if (!uuid_ok(id)) {
        httpd_reply_not_found(r);
        return;
    }
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_DEPLOYMENTS, id);
    cleanup_json json_t *dep = NULL;
    int rc = ctl_get(c, key.p, &dep, NULL, &err);
    buf_free(&key);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, public_view(dep));
}

static int newest_first(const void *a, const void *b)
{
    const char *ta = json_string_value(json_object_get(*(json_t *const *)a, "created_at"));
    const char *tb = json_string_value(json_object_get(*(json_t *const *)b, "created_at"));
    return strcmp(tb ? tb : "", ta ? ta : "");
}

static void deploy_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    cleanup_json json_t *all = NULL;
    if (rc == 0)
        rc = ctl_list(c, KEYS_DEPLOYMENTS, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    size_t n = 0, i;
    json_t *d;
    json_t **v = xcalloc(json_array_size(all) + 1, sizeof(*v));
    json_array_foreach(all, i, d)
    {
        const char *a = json_string_value(json_object_get(d, "app"));
        if (a && strcmp(a, ctl_app_id(app)) == 0)
            v[n++] = d;
    }
    qsort(v, n, sizeof(*v), newest_first);
    json_t *out = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(out, public_view(v[i]));
    free(v);
    httpd_reply_json(r, 200, out);
}

void ctl_deployments_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "POST", "/apps/:app/deploy", deploy_create, c, false);
    httpd_route(h, "GET", "/apps/:app/deployments", deploy_list, c, false);
    httpd_route(h, "GET", "/deployments/:id", deploy_get, c, false);
}
