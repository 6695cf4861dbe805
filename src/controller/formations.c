/* formations: how many processes of each type an app runs of a release
 * (Flynn's /apps/:app/formations and /formations?active=true), and
 * Flynn's scale requests (PUT /apps/:app/scale/:release).
 *
 * A formation is desired state: the scheduler watches the records and
 * moves jobs to match. Writes are compare-and-swap on the formation's key,
 * so two controllers scaling at once never lose one another's update
 * silently: the loser reads again and reapplies. A scale request is
 * written with its formation in one transaction, which also cancels the
 * earlier pending requests for that formation. */
#include <string.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"

#define WRITE_TRIES 20

static const char *const formation_fields[] = {
    "app", "release", "processes", "tags", "created_at", "updated_at", NULL,
};
static const char *const release_fields[] = {
    "id", "app_id", "artifacts", "env", "meta", "processes", "created_at", NULL,
};
static const char *const artifact_fields[] = {
    "id",         "type", "uri", "meta", "manifest", "hashes", "size", "layer_url_template",
    "created_at", NULL,
};

static void formation_key(struct buf *key, const char *app_id, const char *rel_id)
{
    buf_printf(key, "%s%s/%s", KEYS_FORMATIONS, app_id, rel_id);
}

static int get_by_id(struct ctl *c, const char *prefix, const char *id, json_t **out,
                     struct pier_err *err)
{
    if (!id || !uuid_ok(id))
        return err_set(err, PIER_ENOTFOUND, "%s not found", id ? id : "");
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", prefix, id);
    return ctl_get(c, key.p, out, NULL, err);
}

/* The app and the release a request names. A release that does not exist
 * is bad input for a write (PIER_EINVAL) and not found for a read. */
static int load(struct httpd_req *r, struct ctl *c, bool write, json_t **app, json_t **rel,
                struct pier_err *err)
{
    int rc = ctl_app_get(c, httpd_param(r, "app"), app, NULL, err);
    if (rc < 0)
        return rc;
    const char *rid = httpd_param(r, "release");
    rc = get_by_id(c, KEYS_RELEASES, rid, rel, err);
    if (rc == PIER_ENOTFOUND && write)
        rc = err_set(err, PIER_EINVAL, "release %s not found", rid ? rid : "");
    if (rc < 0) {
        json_decref(*app);
        *app = NULL;
    }
    return rc;
}

/* The formation to write: counts and tags (NULL: empty), created_at kept
 * from old. A new reference. */
static json_t *formation_new(const char *app_id, const char *rid, const json_t *old,
                             const json_t *procs, const json_t *tags)
{
    json_t *f = json_pack("{s:s,s:s}", "app", app_id, "release", rid);
    json_object_set_new(f, "processes",
                        json_is_object(procs) ? json_deep_copy(procs) : json_object());
    json_object_set_new(f, "tags", json_is_object(tags) ? json_deep_copy(tags) : json_object());
    ctl_set_now(f, "updated_at");
    json_t *created = json_object_get(old, "created_at");
    json_object_set(f, "created_at", created ? created : json_object_get(f, "updated_at"));
    return f;
}

static json_t *obj_or_empty(const json_t *v)
{
    return json_is_object(v) ? json_deep_copy(v) : json_object();
}

/* ---- expanded formations ---- */

/* Flynn's expanded formation: app {id,name,meta}, the release, its
 * artifacts, counts, tags, updated_at. NULL when the app or the release is
 * gone. A new reference. */
static json_t *expand(struct ctl *c, const json_t *f)
{
    json_t *app = NULL, *rel = NULL;
    const char *app_id = json_string_value(json_object_get(f, "app"));
    const char *rid = json_string_value(json_object_get(f, "release"));
    if (get_by_id(c, KEYS_APPS, app_id, &app, NULL) < 0)
        return NULL;
    if (get_by_id(c, KEYS_RELEASES, rid, &rel, NULL) < 0) {
        json_decref(app);
        return NULL;
    }
    ctl_keep_fields(rel, release_fields);
    json_t *arts = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(rel, "artifacts"), i, id)
    {
        json_t *a = NULL;
        if (get_by_id(c, KEYS_ARTIFACTS, json_string_value(id), &a, NULL) == 0) {
            ctl_keep_fields(a, artifact_fields);
            json_array_append_new(arts, a);
        }
    }
    json_t *x = json_pack("{s:{s:O,s:O,s:O}}", "app", "id", json_object_get(app, "id"), "name",
                          json_object_get(app, "name"), "meta", json_object_get(app, "meta"));
    json_decref(app);
    json_object_set_new(x, "release", rel);
    json_object_set_new(x, "artifacts", arts);
    json_object_set_new(x, "processes", obj_or_empty(json_object_get(f, "processes")));
    json_object_set_new(x, "tags", obj_or_empty(json_object_get(f, "tags")));
    json_t *up = json_object_get(f, "updated_at");
    if (json_is_string(up))
        json_object_set(x, "updated_at", up);
    return x;
}

static bool want_expand(struct httpd_req *r)
{
    const char *e = httpd_query(r, "expand");
    return e && strcmp(e, "true") == 0;
}

/* ---- handlers ---- */

static void formation_put(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *rel = NULL;
    int rc = load(r, c, true, &app, &rel, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    const char *rid = json_string_value(json_object_get(rel, "id"));
    json_t *procs = json_object_get(body, "processes"), *tags = json_object_get(body, "tags");
    if (json_is_null(procs))
        procs = NULL;
    if (json_is_null(tags))
        tags = NULL;
    cleanup_buf struct buf key = BUF_INIT;
    formation_key(&key, ctl_app_id(app), rid);
    for (int i = 0; i < WRITE_TRIES; i++) {
        cleanup_json json_t *old = NULL;
        int64_t rev = 0;
        rc = ctl_get(c, key.p, &old, &rev, &err);
        if (rc < 0 && rc != PIER_ENOTFOUND) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        if ((rc = check_scale(app, rel, old, procs, tags, &err)) < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        cleanup_json json_t *f = formation_new(ctl_app_id(app), rid, old, procs, tags);
        rc = ctl_put(c, key.p, f, old ? rev : 0, &err);
        if (rc == PIER_EEXISTS || rc == PIER_ECONFLICT)
            continue;
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        log_info("controller", "formation set", "app=%s release=%s", ctl_app_id(app), rid);
        httpd_reply_json(r, 200, json_incref(f));
        return;
    }
    err_set(&err, PIER_ECONFLICT, "formation %s: changed by others too often, try again", rid);
    ctl_reply_err(r, PIER_ECONFLICT, &err);
}

static void formation_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    const char *rid = httpd_param(r, "release");
    if (rc == 0 && !uuid_ok(rid))
        rc = PIER_ENOTFOUND;
    cleanup_json json_t *f = NULL;
    if (rc == 0) {
        cleanup_buf struct buf key = BUF_INIT;
        formation_key(&key, ctl_app_id(app), rid);
        rc = ctl_get(c, key.p, &f, NULL, &err);
    }
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    if (!want_expand(r)) {
        ctl_keep_fields(f, formation_fields);
        httpd_reply_json(r, 200, json_incref(f));
        return;
    }
    json_t *x = expand(c, f);
    if (!x)
        httpd_reply_not_found(r);
    else
        httpd_reply_json(r, 200, x);
}

static void formation_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    json_t *all = NULL;
    if (rc == 0) {
        cleanup_buf struct buf prefix = BUF_INIT;
        buf_printf(&prefix, "%s%s/", KEYS_FORMATIONS, ctl_app_id(app));
        rc = ctl_list(c, prefix.p, &all, &err);
    }
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_sort_newest(all);
    bool ex = want_expand(r);
    json_t *out = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(all, i, f)
    {
        if (ex) {
            json_t *x = expand(c, f);
            if (x)
                json_array_append_new(out, x);
        } else {
            ctl_keep_fields(f, formation_fields);
            json_array_append(out, f);
        }
    }
    json_decref(all);
    httpd_reply_json(r, 200, out);
}

static void formation_delete(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    const char *rid = httpd_param(r, "release");
    if (rc == 0 && !uuid_ok(rid))
        rc = PIER_ENOTFOUND;
    cleanup_buf struct buf key = BUF_INIT;
    if (rc == 0)
        formation_key(&key, ctl_app_id(app), rid);
    for (int i = 0; rc == 0 && i < WRITE_TRIES; i++) {
        cleanup_json json_t *f = NULL;
        int64_t rev = 0;
        rc = ctl_get(c, key.p, &f, &rev, &err);
        if (rc < 0)
            break;
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(f, "processes"), k, v)
        {
            if (json_is_true(json_object_get(app, "protected")) && json_integer_value(v) > 0) {
                rc = err_set(&err, PIER_EINVAL,
                             "app %s is protected: its formation cannot be removed while %s runs",
                             json_string_value(json_object_get(app, "name")), k);
                break;
            }
        }
        if (rc < 0)
            break;
        struct store_txn *t = store_txn_new();
        store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, rev);
        store_txn_delete(t, STORE_THEN, key.p, false);
        bool ok = false;
        rc = ctl_txn_run(c, t, &ok, &err);
        store_txn_free(t);
        if (rc == 0 && ok) {
            log_info("controller", "formation deleted", "app=%s release=%s", ctl_app_id(app), rid);
            ctl_keep_fields(f, formation_fields);
            httpd_reply_json(r, 200, json_incref(f));
            return;
        }
    }
    if (rc == 0)
        rc = err_set(&err, PIER_ECONFLICT, "formation %s: changed by others too often", rid);
    ctl_reply_err(r, rc, &err);
}

static bool any_running(const json_t *f)
{
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(f, "processes"), k, v)
    {
        if (json_integer_value(v) > 0)
            return true;
    }
    return false;
}

/* GET /formations?active=true: every formation with a process to run,
 * expanded. */
static void formations_active(struct httpd_req *r, struct ctl *c)
{
    struct pier_err err = {0};
    json_t *all = NULL;
    int rc = ctl_list(c, KEYS_FORMATIONS, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_sort_newest(all);
    json_t *out = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(all, i, f)
    {
        json_t *x = any_running(f) ? expand(c, f) : NULL;
        if (x)
            json_array_append_new(out, x);
    }
    json_decref(all);
    httpd_reply_json(r, 200, out);
}

static void formations_all(struct httpd_req *r, void *ud)
{
    const char *active = httpd_query(r, "active");
    if (active && strcmp(active, "true") == 0) {
        formations_active(r, ud);
        return;
    }
    ctl_formations_stream(r, ud);
}

/* ---- scale requests ---- */

/* Adds to t the cancellation of every pending request for the formation
 * (app id, release id), each compared on its revision. */
static int txn_cancel_pending(struct ctl *c, struct store_txn *t, const char *app_id,
                              const char *rid, struct pier_err *err)
{
    struct store_range *rg = NULL;
    int rc = store_list(c->s, KEYS_SCALE_REQUESTS, NULL, &rg, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < rg->n; i++) {
        json_t *sr = NULL;
        if (jsonx_parse_object(rg->kvs[i].value, rg->kvs[i].value_len, &sr, NULL) < 0)
            continue;
        const char *a = json_string_value(json_object_get(sr, "app"));
        const char *rl = json_string_value(json_object_get(sr, "release"));
        const char *st = json_string_value(json_object_get(sr, "state"));
        if (a && rl && st && strcmp(a, app_id) == 0 && strcmp(rl, rid) == 0 &&
            strcmp(st, "pending") == 0) {
            json_object_set_new(sr, "state", json_string("cancelled"));
            ctl_set_now(sr, "updated_at");
            store_txn_cmp(t, rg->kvs[i].key, STORE_CMP_MOD, STORE_EQ, rg->kvs[i].mod_revision);
            ctl_txn_put(t, rg->kvs[i].key, sr);
        }
        json_decref(sr);
    }
    store_range_free(rg);
    return 0;
}

/* One attempt at writing the scale request sr and its formation. *ok
 * false: something changed meanwhile. */
static int scale_once(struct ctl *c, const json_t *app, const json_t *rel, const json_t *body,
                      json_t **out, bool *ok, struct pier_err *err)
{
    const char *app_id = ctl_app_id(app);
    const char *rid = json_string_value(json_object_get(rel, "id"));
    cleanup_buf struct buf key = BUF_INIT;
    formation_key(&key, app_id, rid);
    cleanup_json json_t *old = NULL;
    int64_t rev = 0;
    int rc = ctl_get(c, key.p, &old, &rev, err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return rc;
    json_t *procs = json_object_get(body, "new_processes");
    json_t *tags = json_object_get(body, "new_tags");
    if (!procs || json_is_null(procs))
        procs = json_object_get(old, "processes");
    /* Flynn's CLI sends "new_tags": {} with every scale that names no
     * tags; taken as "none", it would strip a formation's tags (the
     * system apps' pier.state pin) on any `scale`. So {} keeps them too;
     * {"web":{}} clears web's. */
    if (!tags || json_is_null(tags) || (json_is_object(tags) && json_object_size(tags) == 0))
        tags = json_object_get(old, "tags");
    if ((rc = check_scale(app, rel, old, procs, tags, err)) < 0)
        return rc;
    cleanup_json json_t *f = formation_new(app_id, rid, old, procs, tags);
    char id[UUID_LEN];
    uuid_new(id);
    cleanup_json json_t *sr =
        json_pack("{s:s,s:s,s:s,s:s}", "id", id, "app", app_id, "release", rid, "state", "pending");
    json_object_set_new(sr, "old_processes", obj_or_empty(json_object_get(old, "processes")));
    json_object_set_new(sr, "new_processes", obj_or_empty(json_object_get(f, "processes")));
    json_object_set_new(sr, "old_tags", obj_or_empty(json_object_get(old, "tags")));
    json_object_set_new(sr, "new_tags", obj_or_empty(json_object_get(f, "tags")));
    json_object_set(sr, "created_at", json_object_get(f, "updated_at"));
    json_object_set(sr, "updated_at", json_object_get(f, "updated_at"));

    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, old ? rev : 0);
    rc = txn_cancel_pending(c, t, app_id, rid, err);
    if (rc == 0) {
        cleanup_buf struct buf skey = BUF_INIT;
        buf_printf(&skey, "%s%s", KEYS_SCALE_REQUESTS, id);
        ctl_txn_put(t, key.p, f);
        ctl_txn_put(t, skey.p, sr);
        rc = ctl_txn_run(c, t, ok, err);
    }
    store_txn_free(t);
    if (rc == 0 && *ok)
        *out = json_incref(sr);
    return rc;
}

static void scale(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *rel = NULL;
    int rc = load(r, c, true, &app, &rel, &err);
    for (int i = 0; rc == 0 && i < WRITE_TRIES; i++) {
        json_t *sr = NULL;
        bool ok = false;
        rc = scale_once(c, app, rel, body, &sr, &ok, &err);
        if (rc == 0 && ok) {
            log_info("controller", "scale requested", "app=%s release=%s id=%s", ctl_app_id(app),
                     json_string_value(json_object_get(rel, "id")),
                     json_string_value(json_object_get(sr, "id")));
            httpd_reply_json(r, 200, sr);
            return;
        }
    }
    if (rc == 0)
        rc = err_set(&err, PIER_ECONFLICT, "formation changed by others too often, try again");
    ctl_reply_err(r, rc, &err);
}

void ctl_formations_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "PUT", "/apps/:app/formations/:release", formation_put, c, false);
    httpd_route(h, "GET", "/apps/:app/formations/:release", formation_get, c, false);
    httpd_route(h, "DELETE", "/apps/:app/formations/:release", formation_delete, c, false);
    httpd_route(h, "GET", "/apps/:app/formations", formation_list, c, false);
    httpd_route(h, "PUT", "/apps/:app/scale/:release", scale, c, false);
    httpd_route(h, "GET", "/formations", formations_all, c, false);
}
