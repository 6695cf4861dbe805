/* apps: create, list, read, update and delete apps (Flynn's /apps).
 *
 * An app's name is unique through its index key, /pier/v1/app-names/<name>,
 * created in the same transaction as the app: two controllers creating the
 * same name at once see one of them win the compare. Deleting an app
 * removes, in one transaction, the app, its name, its formations, its
 * releases and its routes, so the event recorder sees the whole deletion
 * at one revision. */
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

#define DEFAULT_DEPLOY_TIMEOUT 30
/* Flynn's deploy_timeout is an int32; a larger one would overflow the
 * deployer's deadline arithmetic (seconds * 1000). */
#define DEPLOY_TIMEOUT_MAX 2147483647LL
/* Random names are tried this many times before giving up. */
#define NAME_TRIES 8
/* etcd refuses a transaction with more than 128 operations in a branch;
 * a deletion keeps a margin below that. */
#define TXN_MAX_OPS 120
#define DELETE_TRIES 10

static const char *const app_fields[] = {
    "id",        "name",           "meta",       "strategy",   "release",
    "protected", "deploy_timeout", "created_at", "updated_at", NULL,
};

/* The app as a Flynn client sees it (a new reference). */
static json_t *app_public(const json_t *app)
{
    json_t *j = json_deep_copy(app);
    ctl_keep_fields(j, app_fields);
    return j;
}

static bool strategy_ok(const char *s)
{
    return strcmp(s, "all-at-once") == 0 || strcmp(s, "one-by-one") == 0;
}

/* Applies the fields a client may set (meta, strategy, deploy_timeout,
 * protected) from body to app, checking each. "meta": null is ignored. */
static int apply_fields(json_t *app, const json_t *body, struct pier_err *err)
{
    json_t *meta = json_object_get(body, "meta");
    int rc = check_strmap(meta, "meta", err);
    if (rc < 0)
        return rc;
    const char *strategy = NULL;
    rc = jsonx_get_str(body, "strategy", &strategy, err);
    if (rc < 0)
        return rc;
    if (strategy && !strategy_ok(strategy))
        return err_set(err, PIER_EINVAL, "strategy must be all-at-once or one-by-one, not \"%s\"",
                       strategy);
    json_t *to = json_object_get(body, "deploy_timeout");
    if (to && (!json_is_integer(to) || json_integer_value(to) <= 0 ||
               json_integer_value(to) > DEPLOY_TIMEOUT_MAX))
        return err_set(err, PIER_EINVAL,
                       "deploy_timeout must be a whole number of seconds from 1 to %lld",
                       DEPLOY_TIMEOUT_MAX);
    json_t *prot = json_object_get(body, "protected");
    if (prot && !json_is_boolean(prot))
        return err_set(err, PIER_EINVAL, "protected must be true or false");

    if (meta && !json_is_null(meta))
        json_object_set_new(app, "meta", json_deep_copy(meta));
    if (strategy)
        json_object_set_new(app, "strategy", json_string(strategy));
    if (to)
        json_object_set_new(app, "deploy_timeout", json_integer(json_integer_value(to)));
    if (prot)
        json_object_set(app, "protected", prot);
    return 0;
}

static void random_name(char *out, size_t size)
{
    char id[UUID_LEN];
    uuid_new(id);
    snprintf(out, size, "app-%.6s", id);
}

/* Creates the app with its name index (and default route) in one
 * transaction. *ok false: the name (or the route's domain) was taken. */
static int create_txn(struct ctl *c, const json_t *app, bool *ok, struct pier_err *err)
{
    const char *id = ctl_app_id(app);
    const char *name = json_string_value(json_object_get(app, "name"));
    cleanup_buf struct buf akey = BUF_INIT, nkey = BUF_INIT;
    buf_printf(&akey, "%s%s", KEYS_APPS, id);
    buf_printf(&nkey, "%s%s", KEYS_APP_NAMES, name);
    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, akey.p, STORE_CMP_VERSION, STORE_EQ, 0);
    store_txn_cmp(t, nkey.p, STORE_CMP_VERSION, STORE_EQ, 0);
    ctl_txn_put(t, akey.p, app);
    cleanup_json json_t *idx = json_pack("{s:s}", "id", id);
    ctl_txn_put(t, nkey.p, idx);
    ctl_routes_txn_default(c, t, app);
    int rc = ctl_txn_run(c, t, ok, err);
    store_txn_free(t);
    return rc;
}

/* Whether the store has prefix+name (an app's name index or its id). */
static bool taken(struct ctl *c, const char *prefix, const char *name)
{
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", prefix, name);
    json_t *v = NULL;
    if (ctl_get(c, key.p, &v, NULL, NULL) < 0)
        return false;
    json_decref(v);
    return true;
}

static void app_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    const char *name = NULL;
    if (jsonx_get_str(body, "name", &name, &err) < 0) {
        ctl_reply_err(r, PIER_EINVAL, &err);
        return;
    }
    if (name && *name && !keys_app_name_ok(name)) {
        ctl_reply_invalid(r, "name must match the pattern ^[a-z\\d]+(-[a-z\\d]+)*$ and be 1 to "
                             "100 characters long");
        return;
    }
    /* As in Flynn, a UUID the client chose is kept (a bootstrap names its
     * apps before their controller runs); anything else is ignored. */
    const char *want_id = json_string_value(json_object_get(body, "id"));
    bool chosen = want_id && uuid_ok(want_id);
    char id[UUID_LEN];
    if (chosen)
        snprintf(id, sizeof(id), "%s", want_id);
    else
        uuid_new(id);
    cleanup_json json_t *app =
        json_pack("{s:s,s:s,s:{},s:s,s:i,s:b}", "id", id, "name", "", "meta", "strategy",
                  "all-at-once", "deploy_timeout", DEFAULT_DEPLOY_TIMEOUT, "protected", 0);
    if (apply_fields(app, body, &err) < 0) {
        ctl_reply_err(r, PIER_EINVAL, &err);
        return;
    }
    ctl_set_now(app, "created_at");
    json_object_set(app, "updated_at", json_object_get(app, "created_at"));

    bool given = name && *name;
    for (int i = 0; i < (given ? 1 : NAME_TRIES); i++) {
        char gen[16];
        if (!given)
            random_name(gen, sizeof(gen));
        const char *n = given ? name : gen;
        json_object_set_new(app, "name", json_string(n));
        bool ok = false;
        int rc = create_txn(c, app, &ok, &err);
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        if (ok) {
            log_info("controller", "app created", "id=%s name=%s", id, n);
            httpd_reply_json(r, 200, app_public(app));
            return;
        }
        if (chosen && taken(c, KEYS_APPS, id)) {
            err_set(&err, PIER_EEXISTS, "app %s already exists", id);
            ctl_reply_err(r, PIER_EEXISTS, &err);
            return;
        }
        if (given && !taken(c, KEYS_APP_NAMES, n)) {
            err_set(&err, PIER_ECONFLICT, "the default route of app %s is taken: %s.%s", n, n,
                    c->domain ? c->domain : "");
            ctl_reply_err(r, PIER_ECONFLICT, &err);
            return;
        }
    }
    err_set(&err, PIER_EEXISTS, "app %s already exists", given ? name : "name");
    ctl_reply_err(r, PIER_EEXISTS, &err);
}

static void app_list(struct httpd_req *r, void *ud)
{
    ctl_reply_list(r, ud, KEYS_APPS, app_fields);
}

static void app_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    json_t *app = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_keep_fields(app, app_fields);
    httpd_reply_json(r, 200, app);
}

/* POST /apps/:app: meta, strategy, deploy_timeout, protected; the name
 * cannot change. */
static int edit_update(json_t *app, void *ud, struct pier_err *err)
{
    const json_t *body = ud;
    const char *name = NULL;
    int rc = jsonx_get_str(body, "name", &name, err);
    if (rc < 0)
        return rc;
    const char *cur = json_string_value(json_object_get(app, "name"));
    if (name && *name && (!cur || strcmp(name, cur) != 0))
        return err_set(err, PIER_EINVAL, "name cannot be changed (app %s)", cur ? cur : "");
    return apply_fields(app, body, err);
}

/* POST /apps/:app/meta: the whole app is sent, its meta replaces ours. */
static int edit_meta(json_t *app, void *ud, struct pier_err *err)
{
    const json_t *body = ud;
    json_t *meta = json_object_get(body, "meta");
    int rc = check_strmap(meta, "meta", err);
    if (rc < 0)
        return rc;
    json_object_set_new(app, "meta",
                        meta && !json_is_null(meta) ? json_deep_copy(meta) : json_object());
    return 0;
}

static void app_edit(struct httpd_req *r, ctl_app_edit_fn fn, struct ctl *c)
{
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    json_t *app = NULL;
    int rc = ctl_app_update(c, httpd_param(r, "app"), fn, body, &app, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_keep_fields(app, app_fields);
    httpd_reply_json(r, 200, app);
}

static void app_update(struct httpd_req *r, void *ud)
{
    app_edit(r, edit_update, ud);
}

static void app_meta(struct httpd_req *r, void *ud)
{
    app_edit(r, edit_meta, ud);
}

/* The ids of the releases of app id, oldest first (so a deletion too big
 * for one transaction removes the oldest ones ahead). */
static int app_releases(struct ctl *c, const char *id, json_t **out, struct pier_err *err)
{
    json_t *all = NULL;
    int rc = ctl_list(c, KEYS_RELEASES, &all, err);
    if (rc < 0)
        return rc;
    ctl_sort_newest(all);
    json_t *ids = json_array();
    for (size_t i = json_array_size(all); i-- > 0;) {
        const json_t *rel = json_array_get(all, i);
        const char *app = json_string_value(json_object_get(rel, "app_id"));
        const char *rid = json_string_value(json_object_get(rel, "id"));
        if (app && rid && strcmp(app, id) == 0)
            json_array_append_new(ids, json_string(rid));
    }
    json_decref(all);
    *out = ids;
    return 0;
}

static void txn_delete_release(struct store_txn *t, const char *rid)
{
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, rid);
    store_txn_delete(t, STORE_THEN, key.p, false);
}

/* One attempt at deleting the app read at revision rev. *ok false: it
 * changed meanwhile. */
static int delete_once(struct ctl *c, const json_t *app, int64_t rev, bool *ok,
                       struct pier_err *err)
{
    const char *id = ctl_app_id(app);
    const char *name = json_string_value(json_object_get(app, "name"));
    cleanup_json json_t *rels = NULL;
    int rc = app_releases(c, id, &rels, err);
    if (rc < 0)
        return rc;
    cleanup_buf struct buf akey = BUF_INIT, nkey = BUF_INIT, fkey = BUF_INIT;
    buf_printf(&akey, "%s%s", KEYS_APPS, id);
    buf_printf(&nkey, "%s%s", KEYS_APP_NAMES, name ? name : "");
    buf_printf(&fkey, "%s%s/", KEYS_FORMATIONS, id);
    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, akey.p, STORE_CMP_MOD, STORE_EQ, rev);
    store_txn_delete(t, STORE_THEN, akey.p, false);
    if (name)
        store_txn_delete(t, STORE_THEN, nkey.p, false);
    store_txn_delete(t, STORE_THEN, fkey.p, true);
    size_t nroutes = 0;
    rc = ctl_routes_txn_delete_app(c, t, id, &nroutes, err);
    if (rc < 0) {
        store_txn_free(t);
        return rc;
    }
    size_t nrel = json_array_size(rels);
    size_t room = TXN_MAX_OPS > 3 + nroutes ? TXN_MAX_OPS - 3 - nroutes : 0;
    /* The oldest releases that do not fit go first, in transactions of
     * their own (immutable records nobody else deletes). */
    size_t first = nrel > room ? nrel - room : 0;
    for (size_t i = first; i < nrel; i++)
        txn_delete_release(t, json_string_value(json_array_get(rels, i)));
    for (size_t done = 0; done < first && rc == 0;) {
        struct store_txn *pre = store_txn_new();
        size_t end = done + TXN_MAX_OPS < first ? done + TXN_MAX_OPS : first;
        for (; done < end; done++)
            txn_delete_release(pre, json_string_value(json_array_get(rels, done)));
        bool pre_ok = false;
        rc = ctl_txn_run(c, pre, &pre_ok, err);
        store_txn_free(pre);
    }
    if (rc == 0)
        rc = ctl_txn_run(c, t, ok, err);
    store_txn_free(t);
    return rc;
}

static void app_delete(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    const char *ref = httpd_param(r, "app");
    for (int i = 0; i < DELETE_TRIES; i++) {
        cleanup_json json_t *app = NULL;
        int64_t rev = 0;
        int rc = ctl_app_get(c, ref, &app, &rev, &err);
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        const char *name = json_string_value(json_object_get(app, "name"));
        if (json_is_true(json_object_get(app, "protected"))) {
            ctl_reply_invalid(r, "app %s is protected: it cannot be deleted", name ? name : "");
            return;
        }
        bool ok = false;
        rc = delete_once(c, app, rev, &ok, &err);
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return;
        }
        if (ok) {
            log_info("controller", "app deleted", "id=%s name=%s", ctl_app_id(app),
                     name ? name : "");
            httpd_reply_json(
                r, 200, json_pack("{s:s,s:s}", "id", ctl_app_id(app), "name", name ? name : ""));
            return;
        }
    }
    err_set(&err, PIER_ECONFLICT, "app %s: changed by others too often, try again", ref);
    ctl_reply_err(r, PIER_ECONFLICT, &err);
}

void ctl_apps_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "POST", "/apps", app_create, c, false);
    httpd_route(h, "GET", "/apps", app_list, c, false);
    httpd_route(h, "GET", "/apps/:app", app_get, c, false);
    httpd_route(h, "POST", "/apps/:app", app_update, c, false);
    httpd_route(h, "POST", "/apps/:app/meta", app_meta, c, false);
    httpd_route(h, "DELETE", "/apps/:app", app_delete, c, false);
}
