/* releases: an app's artifacts plus its configuration (Flynn's /releases),
 * and the app's current release (/apps/:app/release).
 *
 * Releases are immutable: a new configuration is a new release. A created
 * release gets Flynn's default resources for each process type, so what
 * is stored is what the scheduler and the host agent apply. */
#include <string.h>

#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"

#define PROC_NAME_MAX 63
#define ENV_KEY_MAX 255
#define MEMORY_DEFAULT 1073741824LL /* 1 GiB, as Flynn */
#define MAX_FD_DEFAULT 10000LL

static const char *const release_fields[] = {
    "id", "app_id", "artifacts", "env", "meta", "processes", "created_at", NULL,
};

static bool proc_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > PROC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* An environment variable name: not empty, no '=', no spaces or control
 * characters (execve and the env dir of a build could not carry it). */
static bool env_key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ENV_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch == '=' || ch == 0x7f)
            return false;
    }
    return true;
}

static int check_env(const json_t *env, const char *field, struct pier_err *err)
{
    int rc = ctl_check_strmap(env, field, true, err);
    if (rc < 0 || !env || json_is_null(env))
        return rc;
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)env, k, v)
    {
        if (!env_key_ok(k))
            return err_set(err, PIER_EINVAL, "%s: \"%s\" is not a valid variable name", field, k);
    }
    return 0;
}

static int check_str_array(const json_t *a, const char *field, struct pier_err *err)
{
    if (!a || json_is_null(a))
        return 0;
    if (!json_is_array(a))
        return err_set(err, PIER_EINVAL, "%s must be an array of strings", field);
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "%s must be an array of strings", field);
    }
    return 0;
}

/* A resource limit: {"request": n|null, "limit": n|null}. A request left
 * out takes the limit, as Flynn does. */
static int fix_resource(json_t *spec, const char *field, struct pier_err *err)
{
    if (!json_is_object(spec))
        return err_set(err, PIER_EINVAL, "%s must be an object {request, limit}", field);
    json_t *req = json_object_get(spec, "request"), *lim = json_object_get(spec, "limit");
    if ((req && !json_is_null(req) && !json_is_integer(req)) ||
        (lim && !json_is_null(lim) && !json_is_integer(lim)))
        return err_set(err, PIER_EINVAL, "%s: request and limit must be integers", field);
    if ((!req || json_is_null(req)) && lim && json_is_integer(lim))
        json_object_set(spec, "request", lim);
    return 0;
}

static void set_default(json_t *res, const char *type, long long v)
{
    if (!json_object_get(res, type))
        json_object_set_new(
            res, type, json_pack("{s:I,s:I}", "request", (json_int_t)v, "limit", (json_int_t)v));
}

/* Checks process type pt (changed in place) and fills its resources. */
static int fix_process(const char *name, json_t *pt, struct pier_err *err)
{
    char f[128];
    if (!proc_name_ok(name))
        return err_set(err, PIER_EINVAL,
                       "process type \"%.63s\" must be 1 to 63 of A-Z a-z 0-9 _ -", name);
    if (!json_is_object(pt))
        return err_set(err, PIER_EINVAL, "processes.%s must be an object", name);
    static const char *const arrays[] = {"args", "cmd", "entrypoint"};
    int rc = 0;
    for (size_t i = 0; i < sizeof(arrays) / sizeof(*arrays) && rc == 0; i++) {
        snprintf(f, sizeof(f), "processes.%s.%s", name, arrays[i]);
        rc = check_str_array(json_object_get(pt, arrays[i]), f, err);
    }
    snprintf(f, sizeof(f), "processes.%s.env", name);
    if (rc == 0)
        rc = check_env(json_object_get(pt, "env"), f, err);
    json_t *ports = json_object_get(pt, "ports");
    if (rc == 0 && ports && !json_is_null(ports) && !json_is_array(ports))
        rc = err_set(err, PIER_EINVAL, "processes.%s.ports must be an array", name);
    size_t i;
    json_t *p;
    json_array_foreach(ports, i, p)
    {
        json_t *port = json_object_get(p, "port"), *proto = json_object_get(p, "proto");
        if (rc == 0 && (!json_is_object(p) || (port && !json_is_integer(port)) ||
                        (proto && !json_is_string(proto))))
            rc =
                err_set(err, PIER_EINVAL, "processes.%s.ports[%zu] must be {port, proto}", name, i);
    }
    if (rc < 0)
        return rc;
    json_t *res = json_object_get(pt, "resources");
    if (!res || json_is_null(res)) {
        res = json_object();
        json_object_set_new(pt, "resources", res);
    } else if (!json_is_object(res)) {
        return err_set(err, PIER_EINVAL, "processes.%s.resources must be an object", name);
    }
    const char *k;
    json_t *spec;
    json_object_foreach(res, k, spec)
    {
        snprintf(f, sizeof(f), "processes.%s.resources.%s", name, k);
        if ((rc = fix_resource(spec, f, err)) < 0)
            return rc;
    }
    set_default(res, "max_fd", MAX_FD_DEFAULT);
    set_default(res, "memory", MEMORY_DEFAULT);
    return 0;
}

/* The artifact ids of a creation body: "artifacts", or the legacy
 * "artifact"; each must exist. A new reference in *out. */
static int release_artifacts(struct ctl *c, const json_t *body, json_t **out, struct pier_err *err)
{
    json_t *arts = json_object_get(body, "artifacts");
    const char *legacy = NULL;
    int rc = jsonx_get_str(body, "artifact", &legacy, err);
    if (rc < 0)
        return rc;
    if (arts && !json_is_null(arts) && !json_is_array(arts))
        return err_set(err, PIER_EINVAL, "artifacts must be an array of artifact ids");
    json_t *ids = json_array();
    if (json_array_size(arts) > 0)
        json_array_extend(ids, arts);
    else if (legacy && *legacy)
        json_array_append_new(ids, json_string(legacy));
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *id = json_string_value(v);
        json_t *a = NULL;
        cleanup_buf struct buf key = BUF_INIT;
        if (id && uuid_ok(id)) {
            buf_printf(&key, "%s%s", KEYS_ARTIFACTS, id);
            rc = ctl_get(c, key.p, &a, NULL, err);
            json_decref(a);
        }
        if (!id || !uuid_ok(id) || rc == PIER_ENOTFOUND)
            rc = err_set(err, PIER_EINVAL, "artifact %s not found", id ? id : "(not a string)");
        if (rc < 0) {
            json_decref(ids);
            return rc;
        }
    }
    *out = ids;
    return 0;
}

/* Checks a creation body and builds the release (a new reference). */
static int release_from(struct ctl *c, const json_t *body, json_t **out, struct pier_err *err)
{
    json_t *env = json_object_get(body, "env"), *meta = json_object_get(body, "meta");
    json_t *procs = json_object_get(body, "processes");
    const char *app_ref = NULL;
    int rc;
    if ((rc = jsonx_get_str(body, "app_id", &app_ref, err)) < 0 ||
        (rc = check_env(env, "env", err)) < 0 ||
        (rc = ctl_check_strmap(meta, "meta", true, err)) < 0)
        return rc;
    if (procs && !json_is_null(procs) && !json_is_object(procs))
        return err_set(err, PIER_EINVAL, "processes must be an object of process types");
    char id[UUID_LEN];
    uuid_new(id);
    cleanup_json json_t *rel = json_pack("{s:s}", "id", id);
    if (app_ref && *app_ref) {
        json_t *app = NULL;
        rc = ctl_app_get(c, app_ref, &app, NULL, err);
        if (rc == PIER_ENOTFOUND)
            return err_set(err, PIER_EINVAL, "app_id: app %s not found", app_ref);
        if (rc < 0)
            return rc;
        json_object_set_new(rel, "app_id", json_string(ctl_app_id(app)));
        json_decref(app);
    }
    json_t *arts = NULL;
    if ((rc = release_artifacts(c, body, &arts, err)) < 0)
        return rc;
    json_object_set_new(rel, "artifacts", arts);
    json_object_set_new(rel, "env",
                        env && json_is_object(env) ? json_deep_copy(env) : json_object());
    json_object_set_new(rel, "meta",
                        meta && json_is_object(meta) ? json_deep_copy(meta) : json_object());
    json_t *ps = procs && json_is_object(procs) ? json_deep_copy(procs) : json_object();
    json_object_set_new(rel, "processes", ps);
    const char *k;
    json_t *pt;
    json_object_foreach(ps, k, pt)
    {
        if ((rc = fix_process(k, pt, err)) < 0)
            return rc;
    }
    ctl_set_now(rel, "created_at");
    *out = json_incref(rel);
    return 0;
}

static void release_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    cleanup_json json_t *rel = NULL;
    int rc = release_from(c, body, &rel, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *id = json_string_value(json_object_get(rel, "id"));
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, id);
    rc = ctl_put(c, key.p, rel, 0, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    log_info("controller", "release created", "id=%s", id);
    httpd_reply_json(r, 200, json_incref(rel));
}

/* Every release, or only app_id's (when not NULL), newest first. */
static int releases_list(struct ctl *c, const char *app_id, json_t **out, struct pier_err *err)
{
    json_t *all = NULL;
    int rc = ctl_list(c, KEYS_RELEASES, &all, err);
    if (rc < 0)
        return rc;
    json_t *res = json_array();
    size_t i;
    json_t *rel;
    json_array_foreach(all, i, rel)
    {
        const char *a = json_string_value(json_object_get(rel, "app_id"));
        if (app_id && (!a || strcmp(a, app_id) != 0))
            continue;
        ctl_keep_fields(rel, release_fields);
        json_array_append(res, rel);
    }
    json_decref(all);
    ctl_sort_newest(res);
    *out = res;
    return 0;
}

static void release_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    json_t *list = NULL;
    int rc = releases_list(c, NULL, &list, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, list);
}

/* Reads release id; PIER_ENOTFOUND also for what cannot be an id. */
static int release_get_id(struct ctl *c, const char *id, json_t **out, struct pier_err *err)
{
    if (!id || !uuid_ok(id))
        return err_set(err, PIER_ENOTFOUND, "release %s not found", id ? id : "");
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, id);
    int rc = ctl_get(c, key.p, out, NULL, err);
    if (rc == PIER_ENOTFOUND)
        err_set(err, rc, "release %s not found", id);
    if (rc == 0)
        ctl_keep_fields(*out, release_fields);
    return rc;
}

static void release_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    json_t *rel = NULL;
    int rc = release_get_id(c, httpd_param(r, "id"), &rel, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, rel);
}

static void app_release_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    json_t *list = NULL;
    if (rc == 0)
        rc = releases_list(c, ctl_app_id(app), &list, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, list);
}

static void app_release_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    json_t *rel = NULL;
    if (rc == 0) {
        const char *id = json_string_value(json_object_get(app, "release"));
        rc = id && *id ? release_get_id(c, id, &rel, &err) : PIER_ENOTFOUND;
    }
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, rel);
}

static int edit_release(json_t *app, void *ud, struct pier_err *err)
{
    (void)err;
    json_object_set_new(app, "release", json_string(ud));
    return 0;
}

static void app_release_set(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    const char *id = NULL;
    int rc = jsonx_get_str(body, "id", &id, &err);
    if (rc <= 0 || !*id) {
        ctl_reply_invalid(r, "id (the release id) is required");
        return;
    }
    cleanup_json json_t *rel = NULL;
    rc = release_get_id(c, id, &rel, &err);
    if (rc == PIER_ENOTFOUND) {
        ctl_reply_invalid(r, "release %s not found", id);
        return;
    }
    json_t *app = NULL;
    if (rc == 0)
        rc = ctl_app_update(c, httpd_param(r, "app"), edit_release, (void *)id, &app, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    log_info("controller", "app release set", "app=%s release=%s", ctl_app_id(app), id);
    json_decref(app);
    httpd_reply_json(r, 200, json_incref(rel));
}

void ctl_releases_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "POST", "/releases", release_create, c, false);
    httpd_route(h, "GET", "/releases", release_list, c, false);
    httpd_route(h, "GET", "/releases/:id", release_get, c, false);
    httpd_route(h, "GET", "/apps/:app/releases", app_release_list, c, false);
    httpd_route(h, "GET", "/apps/:app/release", app_release_get, c, false);
    httpd_route(h, "PUT", "/apps/:app/release", app_release_set, c, false);
}
