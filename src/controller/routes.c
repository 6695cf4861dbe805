/* routes: an app's router routes (Flynn's /apps/:app/routes), stored at
 * /pier/v1/routes/<id> for the router to watch.
 *
 * An http route's domain and path, and a tcp route's port, are unique in
 * the cluster. Each route holds an index key naming it,
 * /pier/v1/route-index/http/<domain><path> or .../tcp/<port>, created and
 * deleted in the same transaction as the route: creating a taken one fails
 * its compare, whichever controller tries. Those fields never change after
 * creation, so an update leaves the index alone. */
#include <string.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"
#include "lib/uuid.h"

#define ROUTE_INDEX "/pier/v1/route-index/"
/* tcp routes sent with port 0 get one from here, as Flynn's router does. */
#define TCP_PORT_LO 3000
#define TCP_PORT_HI 3500
#define WRITE_TRIES 20

static const char *const route_fields[] = {
    "type",
    "id",
    "parent_ref",
    "service",
    "port",
    "leader",
    "domain",
    "certificate",
    "tls_cert",
    "tls_key",
    "sticky",
    "path",
    "drain_backends",
    "disable_keep_alives",
    "created_at",
    "updated_at",
    NULL,
};

static json_t *route_public(const json_t *rt)
{
    json_t *j = json_deep_copy(rt);
    ctl_keep_fields(j, route_fields);
    return j;
}

/* The index key of a route (it must have its type and its domain and path
 * or port set). */
static void index_key(struct buf *key, const json_t *rt)
{
    const char *type = json_string_value(json_object_get(rt, "type"));
    if (type && strcmp(type, "tcp") == 0) {
        buf_printf(key, "%stcp/%lld", ROUTE_INDEX,
                   (long long)json_integer_value(json_object_get(rt, "port")));
    } else {
        const char *d = json_string_value(json_object_get(rt, "domain"));
        const char *p = json_string_value(json_object_get(rt, "path"));
        buf_printf(key, "%shttp/%s%s", ROUTE_INDEX, d ? d : "", p ? p : "/");
    }
}

static void route_key(struct buf *key, const char *id)
{
    buf_printf(key, "%s%s", KEYS_ROUTES, id);
}

/* Whether rt belongs to app id (and, when type is set, is of that type). */
static bool route_of(const json_t *rt, const char *app_id, const char *type)
{
    const char *a = json_string_value(json_object_get(rt, "app"));
    const char *t = json_string_value(json_object_get(rt, "type"));
    return a && strcmp(a, app_id) == 0 && (!type || (t && strcmp(t, type) == 0));
}

/* A free port for a tcp route, from the index (*port 0: none left). */
static int free_tcp_port(struct ctl *c, int64_t *port, struct pier_err *err)
{
    static const size_t n = TCP_PORT_HI - TCP_PORT_LO + 1;
    bool used[TCP_PORT_HI - TCP_PORT_LO + 1] = {false};
    cleanup_buf struct buf prefix = BUF_INIT;
    buf_printf(&prefix, "%stcp/", ROUTE_INDEX);
    const struct store_list_opts opts = {.keys_only = true};
    struct store_range *rg = NULL;
    int rc = store_list(c->s, prefix.p, &opts, &rg, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < rg->n; i++) {
        long p = strtol(rg->kvs[i].key + prefix.len, NULL, 10);
        if (p >= TCP_PORT_LO && p <= TCP_PORT_HI)
            used[p - TCP_PORT_LO] = true;
    }
    store_range_free(rg);
    *port = 0;
    for (size_t i = 0; i < n && !*port; i++)
        if (!used[i])
            *port = TCP_PORT_LO + (int64_t)i;
    return 0;
}

/* Adds to t the creation of rt with its index key, compared absent. */
static void txn_create(struct store_txn *t, const json_t *rt)
{
    cleanup_buf struct buf rkey = BUF_INIT, ikey = BUF_INIT;
    route_key(&rkey, json_string_value(json_object_get(rt, "id")));
    index_key(&ikey, rt);
    store_txn_cmp(t, rkey.p, STORE_CMP_VERSION, STORE_EQ, 0);
    store_txn_cmp(t, ikey.p, STORE_CMP_VERSION, STORE_EQ, 0);
    ctl_txn_put(t, rkey.p, rt);
    cleanup_json json_t *idx = json_pack("{s:O}", "id", json_object_get(rt, "id"));
    ctl_txn_put(t, ikey.p, idx);
}

static void txn_delete(struct store_txn *t, const json_t *rt)
{
    cleanup_buf struct buf rkey = BUF_INIT, ikey = BUF_INIT;
    route_key(&rkey, json_string_value(json_object_get(rt, "id")));
    index_key(&ikey, rt);
    store_txn_delete(t, STORE_THEN, rkey.p, false);
    store_txn_delete(t, STORE_THEN, ikey.p, false);
}

void ctl_routes_txn_default(struct ctl *c, struct store_txn *t, const json_t *app)
{
    if (!c->domain || !*c->domain)
        return;
    const char *name = json_string_value(json_object_get(app, "name"));
    cleanup_buf struct buf domain = BUF_INIT;
    buf_printf(&domain, "%s.%s", name, c->domain);
    cleanup_json json_t *body = json_pack("{s:s,s:s}", "type", "http", "domain", domain.p);
    json_t *rt = NULL;
    if (check_route(body, app, NULL, &rt, NULL) == 0) {
        txn_create(t, rt);
        json_decref(rt);
    }
}

int ctl_routes_txn_delete_app(struct ctl *c, struct store_txn *t, const char *app_id, size_t *n,
                              struct pier_err *err)
{
    json_t *all = NULL;
    int rc = ctl_list(c, KEYS_ROUTES, &all, err);
    if (rc < 0)
        return rc;
    size_t ops = 0, i;
    json_t *rt;
    json_array_foreach(all, i, rt)
    {
        if (route_of(rt, app_id, NULL)) {
            txn_delete(t, rt);
            ops += 2;
        }
    }
    json_decref(all);
    if (n)
        *n = ops;
    return 0;
}

/* ---- handlers ---- */

static void route_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *rt = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc == 0)
        rc = check_route(body, app, NULL, &rt, &err);
    bool tcp = rc == 0 && strcmp(json_string_value(json_object_get(rt, "type")), "tcp") == 0;
    bool pick = tcp && json_integer_value(json_object_get(rt, "port")) == 0;
    for (int i = 0; rc == 0 && i < WRITE_TRIES; i++) {
        if (pick) {
            int64_t port = 0;
            if ((rc = free_tcp_port(c, &port, &err)) < 0)
                break;
            if (!port) {
                rc = err_set(&err, PIER_ECONFLICT, "no free tcp port left in %d-%d", TCP_PORT_LO,
                             TCP_PORT_HI);
                break;
            }
            json_object_set_new(rt, "port", json_integer(port));
        }
        struct store_txn *t = store_txn_new();
        txn_create(t, rt);
        bool ok = false;
        rc = ctl_txn_run(c, t, &ok, &err);
        store_txn_free(t);
        if (rc == 0 && ok) {
            log_info("controller", "route created", "app=%s id=%s", ctl_app_id(app),
                     json_string_value(json_object_get(rt, "id")));
            httpd_reply_json(r, 200, route_public(rt));
            return;
        }
        if (rc == 0 && !pick) {
            if (tcp)
                rc = err_set(&err, PIER_ECONFLICT, "tcp port %lld is already routed",
                             (long long)json_integer_value(json_object_get(rt, "port")));
            else
                rc = err_set(&err, PIER_ECONFLICT, "%s%s is already routed",
                             json_string_value(json_object_get(rt, "domain")),
                             json_string_value(json_object_get(rt, "path")));
        }
    }
    if (rc == 0)
        rc = err_set(&err, PIER_ECONFLICT, "no free tcp port found, try again");
    ctl_reply_err(r, rc, &err);
}

static void route_list(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    json_t *all = NULL;
    int rc = ctl_app_get(c, httpd_param(r, "app"), &app, NULL, &err);
    if (rc == 0)
        rc = ctl_list(c, KEYS_ROUTES, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    /* Oldest first: the default route, made with the app, leads (a Flynn
     * client shows the first http route's domain as the app's). */
    ctl_sort_newest(all);
    json_t *out = json_array();
    for (size_t i = json_array_size(all); i-- > 0;) {
        const json_t *rt = json_array_get(all, i);
        if (route_of(rt, ctl_app_id(app), NULL))
            json_array_append_new(out, route_public(rt));
    }
    json_decref(all);
    httpd_reply_json(r, 200, out);
}

/* The route a request names, of its app and type. */
static int route_load(struct httpd_req *r, struct ctl *c, json_t **app, json_t **rt, int64_t *rev,
                      struct pier_err *err)
{
    int rc = ctl_app_get(c, httpd_param(r, "app"), app, NULL, err);
    if (rc < 0)
        return rc;
    const char *id = httpd_param(r, "id");
    if (!uuid_ok(id))
        return err_set(err, PIER_ENOTFOUND, "route %s not found", id);
    cleanup_buf struct buf key = BUF_INIT;
    route_key(&key, id);
    rc = ctl_get(c, key.p, rt, rev, err);
    if (rc == 0 && !route_of(*rt, ctl_app_id(*app), httpd_param(r, "type"))) {
        json_decref(*rt);
        *rt = NULL;
        rc = err_set(err, PIER_ENOTFOUND, "route %s not found", id);
    }
    return rc;
}

static void route_get(struct httpd_req *r, void *ud)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *rt = NULL;
    int rc = route_load(r, ud, &app, &rt, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, route_public(rt));
}

static void route_update(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    int rc = 0;
    for (int i = 0; rc == 0 && i < WRITE_TRIES; i++) {
        cleanup_json json_t *app = NULL, *old = NULL, *rt = NULL;
        int64_t rev = 0;
        rc = route_load(r, c, &app, &old, &rev, &err);
        if (rc == 0)
            rc = check_route(body, app, old, &rt, &err);
        if (rc < 0)
            break;
        cleanup_buf struct buf key = BUF_INIT;
        route_key(&key, json_string_value(json_object_get(rt, "id")));
        rc = ctl_put(c, key.p, rt, rev, &err);
        if (rc == PIER_ECONFLICT) {
            rc = 0;
            continue;
        }
        if (rc == 0) {
            log_info("controller", "route updated", "id=%s",
                     json_string_value(json_object_get(rt, "id")));
            httpd_reply_json(r, 200, route_public(rt));
            return;
        }
    }
    if (rc == 0)
        rc = err_set(&err, PIER_ECONFLICT, "route changed by others too often, try again");
    ctl_reply_err(r, rc, &err);
}

static void route_delete(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    int rc = 0;
    for (int i = 0; rc == 0 && i < WRITE_TRIES; i++) {
        cleanup_json json_t *app = NULL, *rt = NULL;
        int64_t rev = 0;
        rc = route_load(r, c, &app, &rt, &rev, &err);
        if (rc < 0)
            break;
        cleanup_buf struct buf key = BUF_INIT;
        route_key(&key, json_string_value(json_object_get(rt, "id")));
        struct store_txn *t = store_txn_new();
        store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, rev);
        txn_delete(t, rt);
        bool ok = false;
        rc = ctl_txn_run(c, t, &ok, &err);
        store_txn_free(t);
        if (rc == 0 && ok) {
            log_info("controller", "route deleted", "id=%s",
                     json_string_value(json_object_get(rt, "id")));
            httpd_reply_json(r, 200, route_public(rt));
            return;
        }
    }
    if (rc == 0)
        rc = err_set(&err, PIER_ECONFLICT, "route changed by others too often, try again");
    ctl_reply_err(r, rc, &err);
}

void ctl_routes_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "POST", "/apps/:app/routes", route_create, c, false);
    httpd_route(h, "GET", "/apps/:app/routes", route_list, c, false);
    httpd_route(h, "GET", "/apps/:app/routes/:type/:id", route_get, c, false);
    httpd_route(h, "PUT", "/apps/:app/routes/:type/:id", route_update, c, false);
    httpd_route(h, "DELETE", "/apps/:app/routes/:type/:id", route_delete, c, false);
}
