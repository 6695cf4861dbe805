/* check, routes part: a route body read into the route record
 * (check.h). Apart from check.c for the certificate checks' OpenSSL. */
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>

#include "controller/check.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/uuid.h"

static void set_now(json_t *obj, const char *field)
{
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_object_set_new(obj, field, json_string(now));
}

#define DOMAIN_MAX 253

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

/* The domain and path of an http route: the body's, else old's (an update
 * may leave them out); they cannot change. */
static int apply_http_target(json_t *rt, const json_t *body, const json_t *old,
                             struct pier_err *err)
{
    cleanup_buf struct buf d = BUF_INIT, p = BUF_INIT;
    cleanup_json json_t *target = json_pack("{s:O?,s:O?}", "domain", json_object_get(old, "domain"),
                                            "path", json_object_get(old, "path"));
    json_t *bd = json_object_get(body, "domain"), *bp = json_object_get(body, "path");
    if (bd && !json_is_null(bd))
        json_object_set(target, "domain", bd);
    if (bp && !json_is_null(bp))
        json_object_set(target, "path", bp);
    int rc = http_target(target, &d, &p, err);
    if (rc < 0)
        return rc;
    if (old && (!str_eq(buf_str(&d), json_string_value(json_object_get(old, "domain"))) ||
                !str_eq(buf_str(&p), json_string_value(json_object_get(old, "path")))))
        return err_set(err, PIER_EINVAL, "a route's domain and path cannot change");
    json_object_set_new(rt, "domain", json_string(d.p));
    json_object_set_new(rt, "path", json_string(p.p));
    return 0;
}

/* The fields a new route gets once: its id, type and owner. */
static void route_identity(json_t *rt, const json_t *app, const char *type)
{
    const char *app_id = json_string_value(json_object_get(app, "id"));
    char id[UUID_LEN];
    uuid_new(id);
    cleanup_buf struct buf parent = BUF_INIT;
    buf_printf(&parent, "controller/apps/%s", app_id ? app_id : "");
    json_object_set_new(rt, "type", json_string(type));
    json_object_set_new(rt, "id", json_string(id));
    json_object_set_new(rt, "parent_ref", json_string(parent.p));
    json_object_set_new(rt, "app", json_string(app_id ? app_id : ""));
}

int check_route(const json_t *body, const json_t *app, const json_t *old, json_t **out,
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
        if ((rc = apply_http_target(rt, body, old, err)) < 0)
            return rc;
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
    if (!old)
        route_identity(rt, app, type);
    set_now(rt, "updated_at");
    if (!old)
        json_object_set(rt, "created_at", json_object_get(rt, "updated_at"));
    *out = json_incref(rt);
    return 0;
}
