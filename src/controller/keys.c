/* keys: the SSH public keys allowed to push (GET/POST /keys,
 * GET/DELETE /keys/:id).
 *
 * A key is named by its fingerprint as OpenSSH prints it, "SHA256:" and
 * the unpadded base64 of the SHA-256 of the key blob. That base64 may hold
 * '/' and '+', which do not sit well in a URL path or a store key, so the
 * record lives at /pier/v1/keys/<fingerprint with '/' -> '_', '+' -> '-'>
 * and /keys/:id takes either spelling. */
#include <string.h>

#include "controller/check.h"
#include "controller/ctl.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

#define FP_PREFIX "SHA256:"

/* The store key of a fingerprint in either spelling ("SHA256:" optional). */
static void key_path(struct buf *key, const char *id)
{
    buf_puts(key, KEYS_KEYS);
    if (strncmp(id, FP_PREFIX, strlen(FP_PREFIX)) != 0)
        buf_puts(key, FP_PREFIX);
    for (const char *s = id; *s; s++)
        buf_putc(key, *s == '/' ? '_' : *s == '+' ? '-' : *s);
}

static void key_create(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct pier_err err = {0};
    const char *line = NULL;
    int rc = jsonx_get_str(body, "key", &line, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    cleanup_json json_t *k = NULL;
    if ((rc = check_ssh_key(line, &k, &err)) < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_set_now(k, "created_at");
    const char *id = json_string_value(json_object_get(k, "id"));
    cleanup_buf struct buf key = BUF_INIT;
    key_path(&key, id);
    rc = ctl_put(c, key.p, k, 0, &err);
    if (rc == PIER_EEXISTS)
        err_set(&err, rc, "key %s already exists", id);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    log_info("controller", "key added", "id=%s", id);
    httpd_reply_json(r, 200, json_incref(k));
}

static void key_list(struct httpd_req *r, void *ud)
{
    ctl_reply_list(r, ud, KEYS_KEYS, NULL);
}

static void key_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_buf struct buf key = BUF_INIT;
    key_path(&key, httpd_param(r, "id"));
    json_t *k = NULL;
    int rc = ctl_get(c, key.p, &k, NULL, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, k);
}

static void key_delete(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct pier_err err = {0};
    cleanup_buf struct buf key = BUF_INIT;
    key_path(&key, httpd_param(r, "id"));
    cleanup_json json_t *k = NULL;
    int64_t rev = 0;
    int rc = ctl_get(c, key.p, &k, &rev, &err);
    if (rc == 0) {
        struct store_txn *t = store_txn_new();
        store_txn_cmp(t, key.p, STORE_CMP_MOD, STORE_EQ, rev);
        store_txn_delete(t, STORE_THEN, key.p, false);
        bool ok = false;
        rc = ctl_txn_run(c, t, &ok, &err);
        store_txn_free(t);
        /* Lost a race: someone else deleted it (keys are never rewritten). */
        if (rc == 0 && !ok)
            rc = PIER_ENOTFOUND;
    }
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    log_info("controller", "key deleted", "id=%s", json_string_value(json_object_get(k, "id")));
    httpd_reply_json(r, 200, json_incref(k));
}

void ctl_keys_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "GET", "/keys", key_list, c, false);
    httpd_route(h, "POST", "/keys", key_create, c, false);
    httpd_route(h, "GET", "/keys/:id", key_get, c, false);
    httpd_route(h, "DELETE", "/keys/:id", key_delete, c, false);
}
