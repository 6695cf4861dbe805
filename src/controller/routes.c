/* routes: an app's router routes (Flynn's /apps/:app/routes), stored at
 * /pier/v1/routes/<id> for the router to watch.
 *
 * An http route's domain and path, and a tcp route's port, are unique in
 * the cluster. Each route holds an index key naming it,
 * /pier/v1/route-index/http/<domain><path> or .../tcp/<port>, created and
 * deleted in the same transaction as the route: creating a taken one fails
 * its compare, whichever controller tries. Those fields never change after
 * creation, so an update leaves the index alone. */
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

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
#define DOMAIN_MAX 253

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

/* Whether cert and key are PEM, and key is the private key of cert. */
static bool cert_pair_ok(const char *cert, const char *key)
{
    BIO *b = BIO_new_mem_buf(cert, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    b = BIO_new_mem_buf(key, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    bool ok = x && k && X509_check_private_key(x, k) == 1;
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

/* The TLS certificate of an http route, from "certificate" {cert, key} or
 * the legacy tls_cert and tls_key; stored in both forms, so either reader
 * finds it. A certificate sent empty (or null) removes it. */
static int apply_cert(json_t *rt, const json_t *body, struct pier_err *err)
{
    const char *cert = NULL, *key = NULL;
    json_t *co = json_object_get(body, "certificate");
    int rc;
    if ((rc = jsonx_get_str(body, "tls_cert", &cert, err)) < 0 ||
        (rc = jsonx_get_str(body, "tls_key", &key, err)) < 0)
        return rc;
    if ((!cert || !*cert) && json_is_object(co)) {
        if ((rc = jsonx_get_str(co, "cert", &cert, err)) < 0 ||
            (rc = jsonx_get_str(co, "key", &key, err)) < 0)
            return err_wrap(err, rc, "certificate");
    } else if (co && !json_is_null(co) && !json_is_object(co)) {
        return err_set(err, PIER_EINVAL, "certificate must be an object {cert, key}");
    }
    bool has_cert = cert && *cert, has_key = key && *key;
    bool touched = json_object_get(body, "tls_cert") || json_object_get(body, "tls_key") || co;
    if (!touched)
        return 0;
    if (has_cert != has_key)
        return err_set(err, PIER_EINVAL, "a certificate needs both its cert and its key");
    if (!has_cert) {
        json_object_del(rt, "certificate");
        json_object_del(rt, "tls_cert");
        json_object_del(rt, "tls_key");
        return 0;
    }
    if (!cert_pair_ok(cert, key))
        return err_set(err, PIER_EINVAL,
                       "the certificate and key must be PEM, and the key the certificate's");
    json_object_set_new(rt, "certificate", json_pack("{s:s,s:s}", "cert", cert, "key", key));
    json_object_set_new(rt, "tls_cert", json_string(cert));
    json_object_set_new(rt, "tls_key", json_string(key));
    return 0;
}

static int apply_bool(json_t *rt, const json_t *body, const char *field, bool dflt,
                      struct pier_err *err)
{
    bool v = dflt;
    json_t *cur = json_object_get(rt, field);
    if (json_is_boolean(cur))
        v = json_is_true(cur);
    json_t *x = json_object_get(body, field);
    if (x && !json_is_null(x)) {
        if (!json_is_boolean(x))
            return err_set(err, PIER_EINVAL, "%s must be true or false", field);
        v = json_is_true(x);
    }
    json_object_set_new(rt, field, json_boolean(v));
    return 0;
}

static bool domain_ok(const char *d)
{
    size_t n = strlen(d);
    if (n == 0 || n > DOMAIN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)d[i] <= ' ' || d[i] == 0x7f)
            return false;
    return true;
}

/* The http route's domain (lower case) and path (starting and ending with
 * '/', "/" by default) from body. */
static int http_target(const json_t *body, struct buf *domain, struct buf *path,
                       struct pier_err *err)
{
    const char *d = NULL, *p = NULL;
    int rc;
    if ((rc = jsonx_get_str(body, "domain", &d, err)) < 0 ||
        (rc = jsonx_get_str(body, "path", &p, err)) < 0)
        return rc;
    if (!d || !domain_ok(d))
        return err_set(err, PIER_EINVAL, "an http route needs a domain (no spaces)");
    for (const char *s = d; *s; s++)
        buf_putc(domain, (char)tolower((unsigned char)*s));
    if (!p || !*p)
        p = "/";
    if (p[0] != '/' || strpbrk(p, " \t\r\n?#"))
        return err_set(err, PIER_EINVAL, "path must start with / (and hold no spaces, ? or #)");
    buf_puts(path, p);
    if (path->p[path->len - 1] != '/')
        buf_putc(path, '/');
    return 0;
}

static int get_port(const json_t *body, int64_t *port, struct pier_err *err)
{
    json_t *v = json_object_get(body, "port");
    *port = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 65535)
        return err_set(err, PIER_EINVAL, "port must be 0 to 65535");
    *port = json_integer_value(v);
    return 0;
}

/* Builds the route from a request body: a new one (old NULL) for app, or
 * old with body's changes (the type, the domain and path or the port
 * cannot change). A new reference in *out. */
static int route_from(const json_t *body, const json_t *app, const json_t *old, json_t **out,
                      struct pier_err *err)
{
    const char *type = NULL, *svc = NULL;
    int rc = jsonx_get_str(body, "type", &type, err);
    if (rc < 0)
        return rc;
    const char *old_type = json_string_value(json_object_get(old, "type"));
    if (old && (!type || !*type))
        type = old_type;
    if (!type || (strcmp(type, "http") != 0 && strcmp(type, "tcp") != 0))
        return err_set(err, PIER_EINVAL, "type must be http or tcp");
    if (old && strcmp(type, old_type) != 0)
        return err_set(err, PIER_EINVAL, "a route's type cannot change");
    bool http = strcmp(type, "http") == 0;
    if ((rc = jsonx_get_str(body, "service", &svc, err)) < 0)
        return rc;
    cleanup_json json_t *rt = old ? json_deep_copy(old) : json_object();
    int64_t port = 0;
    if ((rc = get_port(body, &port, err)) < 0)
        return rc;
    if (http) {
        cleanup_buf struct buf d = BUF_INIT, p = BUF_INIT;
        /* An update may leave the domain and path out: they stay. */
        cleanup_json json_t *target =
            json_pack("{s:O?,s:O?}", "domain", json_object_get(old, "domain"), "path",
                      json_object_get(old, "path"));
        json_t *bd = json_object_get(body, "domain"), *bp = json_object_get(body, "path");
        if (bd && !json_is_null(bd))
            json_object_set(target, "domain", bd);
        if (bp && !json_is_null(bp))
            json_object_set(target, "path", bp);
        if ((rc = http_target(target, &d, &p, err)) < 0)
            return rc;
        if (old && (!str_eq(buf_str(&d), json_string_value(json_object_get(old, "domain"))) ||
                    !str_eq(buf_str(&p), json_string_value(json_object_get(old, "path")))))
            return err_set(err, PIER_EINVAL, "a route's domain and path cannot change");
        json_object_set_new(rt, "domain", json_string(d.p));
        json_object_set_new(rt, "path", json_string(p.p));
        if (port)
            json_object_set_new(rt, "port", json_integer(port));
        if ((rc = apply_bool(rt, body, "sticky", false, err)) < 0 ||
            (rc = apply_cert(rt, body, err)) < 0)
            return rc;
    } else {
        int64_t cur = json_integer_value(json_object_get(old, "port"));
        if (old && port && port != cur)
            return err_set(err, PIER_EINVAL, "a tcp route's port cannot change");
        json_object_set_new(rt, "port", json_integer(old ? cur : port));
        const char *d = NULL;
        if ((rc = jsonx_get_str(body, "domain", &d, err)) < 0)
            return rc;
        if (d && *d)
            return err_set(err, PIER_EINVAL, "a tcp route has no domain");
    }
    if ((rc = apply_bool(rt, body, "leader", false, err)) < 0 ||
        (rc = apply_bool(rt, body, "drain_backends", true, err)) < 0 ||
        (rc = apply_bool(rt, body, "disable_keep_alives", false, err)) < 0)
        return rc;
    if (svc && *svc) {
        json_object_set_new(rt, "service", json_string(svc));
    } else if (!old) {
        cleanup_buf struct buf s = BUF_INIT;
        buf_printf(&s, "%s-web", json_string_value(json_object_get(app, "name")));
        json_object_set_new(rt, "service", json_string(s.p));
    }
    if (!old) {
        char id[UUID_LEN];
        uuid_new(id);
        cleanup_buf struct buf parent = BUF_INIT;
        buf_printf(&parent, "controller/apps/%s", ctl_app_id(app));
        json_object_set_new(rt, "type", json_string(type));
        json_object_set_new(rt, "id", json_string(id));
        json_object_set_new(rt, "parent_ref", json_string(parent.p));
        json_object_set_new(rt, "app", json_string(ctl_app_id(app)));
        ctl_set_now(rt, "created_at");
    }
    ctl_set_now(rt, "updated_at");
    if (!old)
        json_object_set(rt, "created_at", json_object_get(rt, "updated_at"));
    *out = json_incref(rt);
    return 0;
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
    if (route_from(body, app, NULL, &rt, NULL) == 0) {
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
        rc = route_from(body, app, NULL, &rt, &err);
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
            rc = route_from(body, app, old, &rt, &err);
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
