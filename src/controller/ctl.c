#include "controller/ctl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/uuid.h"

int ctl_get(struct ctl *c, const char *key, json_t **out, int64_t *mod_rev, struct pier_err *err)
{
    struct store_kv *kv = NULL;
    int rc = store_get(c->s, key, &kv, err);
    if (rc < 0)
        return rc;
    rc = jsonx_parse_object(kv->value, kv->value_len, out, err);
    if (rc < 0)
        rc = err_wrap(err, PIER_EPROTO, "the record at %s", key);
    else if (mod_rev)
        *mod_rev = kv->mod_revision;
    store_kv_free(kv);
    return rc;
}

int ctl_list(struct ctl *c, const char *prefix, json_t **out, struct pier_err *err)
{
    struct store_range *r = NULL;
    int rc = store_list(c->s, prefix, NULL, &r, err);
    if (rc < 0)
        return rc;
    json_t *a = json_array();
    for (size_t i = 0; i < r->n; i++) {
        json_t *j = NULL;
        /* A record that cannot be read is skipped, not fatal to the list. */
        if (jsonx_parse_object(r->kvs[i].value, r->kvs[i].value_len, &j, NULL) == 0)
            json_array_append_new(a, j);
    }
    store_range_free(r);
    *out = a;
    return 0;
}

int ctl_put(struct ctl *c, const char *key, const json_t *j, int64_t mod_rev, struct pier_err *err)
{
    struct buf b = BUF_INIT;
    jsonx_dump(&b, j);
    int rc;
    if (mod_rev < 0)
        rc = store_put(c->s, key, b.p, b.len, 0, NULL, err);
    else if (mod_rev == 0)
        rc = store_create(c->s, key, b.p, b.len, 0, NULL, err);
    else
        rc = store_cas(c->s, key, b.p, b.len, mod_rev, 0, NULL, err);
    buf_free(&b);
    return rc;
}

void ctl_txn_put(struct store_txn *t, const char *key, const json_t *j)
{
    struct buf b = BUF_INIT;
    jsonx_dump(&b, j);
    store_txn_put(t, STORE_THEN, key, b.p, b.len, 0);
    buf_free(&b);
}

int ctl_app_get(struct ctl *c, const char *ref, json_t **app, int64_t *mod_rev,
                struct pier_err *err)
{
    if (!ref || !*ref || strchr(ref, '/'))
        return err_set(err, PIER_ENOTFOUND, "app not found");
    struct buf key = BUF_INIT;
    int rc = PIER_ENOTFOUND;
    if (uuid_ok(ref)) {
        buf_printf(&key, "%s%s", KEYS_APPS, ref);
        rc = ctl_get(c, key.p, app, mod_rev, err);
    }
    if (rc == PIER_ENOTFOUND) {
        /* A name: its index key holds the id. */
        json_t *idx = NULL;
        buf_reset(&key);
        buf_printf(&key, "%s%s", KEYS_APP_NAMES, ref);
        rc = ctl_get(c, key.p, &idx, NULL, err);
        if (rc == 0) {
            const char *id = json_string_value(json_object_get(idx, "id"));
            buf_reset(&key);
            buf_printf(&key, "%s%s", KEYS_APPS, id ? id : "");
            rc = id ? ctl_get(c, key.p, app, mod_rev, err) : PIER_ENOTFOUND;
            json_decref(idx);
        }
    }
    buf_free(&key);
    if (rc == PIER_ENOTFOUND)
        err_set(err, PIER_ENOTFOUND, "app %s not found", ref);
    return rc;
}

const char *ctl_app_id(const json_t *app)
{
    return json_string_value(json_object_get(app, "id"));
}

void ctl_reply_err(struct httpd_req *r, int rc, const struct pier_err *err)
{
    struct pier_err e = {.code = rc};
    if (err && err->msg[0])
        snprintf(e.msg, sizeof(e.msg), "%s", err->msg);
    else
        snprintf(e.msg, sizeof(e.msg), "%s", err_code_name(rc));
    httpd_reply_err(r, &e);
}

void ctl_reply_invalid(struct httpd_req *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    httpd_reply_error(r, 400, "validation_error", 3, "%s", msg);
}

void ctl_set_now(json_t *obj, const char *field)
{
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_object_set_new(obj, field, json_string(now));
}

void ctl_keep_fields(json_t *obj, const char *const *fields)
{
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(obj, tmp, k, v)
    {
        bool keep = false;
        for (const char *const *f = fields; *f && !keep; f++)
            keep = strcmp(*f, k) == 0;
        if (!keep)
            json_object_del(obj, k);
    }
}

/* ---- helpers the resource files share ---- */

static int cmp_newest(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    const char *tx = json_string_value(json_object_get(x, "created_at"));
    const char *ty = json_string_value(json_object_get(y, "created_at"));
    int d = strcmp(ty ? ty : "", tx ? tx : "");
    if (d != 0)
        return d;
    const char *ix = json_string_value(json_object_get(x, "id"));
    const char *iy = json_string_value(json_object_get(y, "id"));
    return strcmp(iy ? iy : "", ix ? ix : "");
}

void ctl_sort_newest(json_t *arr)
{
    size_t n = json_array_size(arr);
    if (n < 2)
        return;
    json_t **v = xcalloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(arr, i));
    qsort(v, n, sizeof(*v), cmp_newest);
    json_array_clear(arr);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, v[i]); /* steals the reference taken above */
    free(v);
}

int ctl_txn_run(struct ctl *c, const struct store_txn *t, bool *ok, struct pier_err *err)
{
    struct store_txn_result *res = NULL;
    int rc = store_txn_commit(c->s, t, &res, err);
    if (rc < 0)
        return rc;
    *ok = res->succeeded;
    store_txn_result_free(res);
    return 0;
}

/* Bound on CAS retries: each lost race means someone else wrote the app in
 * between, which happens a few times at most under real contention. */
#define APP_UPDATE_TRIES 20

int ctl_app_update(struct ctl *c, const char *ref, ctl_app_edit_fn edit, void *ud, json_t **out,
                   struct pier_err *err)
{
    for (int i = 0; i < APP_UPDATE_TRIES; i++) {
        json_t *app = NULL;
        int64_t rev = 0;
        int rc = ctl_app_get(c, ref, &app, &rev, err);
        if (rc < 0)
            return rc;
        rc = edit(app, ud, err);
        if (rc == 0) {
            ctl_set_now(app, "updated_at");
            struct buf key = BUF_INIT;
            buf_printf(&key, "%s%s", KEYS_APPS, ctl_app_id(app) ? ctl_app_id(app) : "");
            rc = ctl_put(c, key.p, app, rev, err);
            buf_free(&key);
        }
        if (rc == PIER_ECONFLICT) {
            json_decref(app);
            continue;
        }
        if (rc == 0 && out)
            *out = app;
        else
            json_decref(app);
        return rc;
    }
    return err_set(err, PIER_ECONFLICT, "app %s: changed by others too often, try again", ref);
}

void ctl_reply_list(struct httpd_req *r, struct ctl *c, const char *prefix,
                    const char *const *fields)
{
    struct pier_err err = {0};
    json_t *all = NULL;
    int rc = ctl_list(c, prefix, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_sort_newest(all);
    size_t i;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        if (fields)
            ctl_keep_fields(rec, fields);
    }
    httpd_reply_json(r, 200, all);
}
