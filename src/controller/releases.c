/* releases: an app's artifacts plus its configuration (Flynn's /releases),
 * and the app's current release (/apps/:app/release).
 *
 * Releases are immutable: a new configuration is a new release. A created
 * release gets Flynn's default resources for each process type, so what
 * is stored is what the scheduler and the host agent apply; the rest of a
 * process type (mounts, linux_capabilities, ...) is kept as given, once
 * the job it makes is one the host agent would run (check_release). */
#include <stdio.h>
#include <string.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"

static const char *const release_fields[] = {
    "id", "app_id", "artifacts", "env", "meta", "processes", "created_at", NULL,
};

/* Checks a creation body and builds the release (a new reference): the
 * checks of check.h, then what needs the store: the app named, and that
 * each artifact exists. */
static int release_from(struct ctl *c, const json_t *body, json_t **out, struct pier_err *err)
{
    cleanup_json json_t *rel = NULL;
    int rc = check_release(body, &rel, err);
    if (rc < 0)
        return rc;
    const char *app_ref = json_string_value(json_object_get(rel, "app_id"));
    if (app_ref) {
        json_t *app = NULL;
        rc = ctl_app_get(c, app_ref, &app, NULL, err);
        if (rc == PIER_ENOTFOUND)
            return err_set(err, PIER_EINVAL, "app_id: app %s not found", app_ref);
        if (rc < 0)
            return rc;
        json_object_set_new(rel, "app_id", json_string(ctl_app_id(app)));
        json_decref(app);
    }
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(rel, "artifacts"), i, v)
    {
        const char *id = json_string_value(v);
        json_t *a = NULL;
        cleanup_buf struct buf key = BUF_INIT;
        buf_printf(&key, "%s%s", KEYS_ARTIFACTS, id);
        rc = ctl_get(c, key.p, &a, NULL, err);
        json_decref(a);
        if (rc == PIER_ENOTFOUND)
            return err_set(err, PIER_EINVAL, "artifact %s not found", id);
        if (rc < 0)
            return rc;
    }
    /* A UUID the client chose, as Flynn allows (a bootstrap names its
     * releases before the controller runs); else a new one. Anything else
     * in "id" is ignored, as a read-only field a client echoes back. */
    const char *given = json_string_value(json_object_get(body, "id"));
    char id[UUID_LEN];
    if (given && uuid_ok(given))
        snprintf(id, sizeof(id), "%s", given);
    else
        uuid_new(id);
    json_object_set_new(rel, "id", json_string(id));
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
    if (rc == PIER_EEXISTS)
        err_set(&err, rc, "release %s already exists", id);
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
