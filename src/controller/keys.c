/* keys: the SSH public keys allowed to push (GET/POST /keys,
 * GET/DELETE /keys/:id).
 *
 * A key is named by its fingerprint as OpenSSH prints it, "SHA256:" and
 * the unpadded base64 of the SHA-256 of the key blob. That base64 may hold
 * '/' and '+', which do not sit well in a URL path or a store key, so the
 * record lives at /pier/v1/keys/<fingerprint with '/' -> '_', '+' -> '-'>
 * and /keys/:id takes either spelling. */
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "controller/ctl.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

#define KEY_LINE_MAX 16384
#define FP_PREFIX "SHA256:"

/* The key types OpenSSH writes, with how many length-prefixed fields
 * their wire form has (the type name first). */
static const struct {
    const char *name;
    size_t fields;
} key_types[] = {
    {"ssh-ed25519", 2},
    {"ssh-rsa", 3},
    {"ssh-dss", 5},
    {"ecdsa-sha2-nistp256", 3},
    {"ecdsa-sha2-nistp384", 3},
    {"ecdsa-sha2-nistp521", 3},
    {"sk-ssh-ed25519@openssh.com", 3},
    {"sk-ecdsa-sha2-nistp256@openssh.com", 4},
};

/* How many fields a key of type has; 0 for a type we do not know. */
static size_t type_fields(struct str t)
{
    for (size_t i = 0; i < sizeof(key_types) / sizeof(*key_types); i++)
        if (str_eq(t, key_types[i].name))
            return key_types[i].fields;
    return 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Whether blob is the wire form of a public key of type: as many
 * length-prefixed fields as the type has, filling it exactly, the first
 * naming the type (an ed25519 key's second field is its 32 bytes). */
static bool blob_ok(const struct buf *blob, struct str type)
{
    const unsigned char *p = (const unsigned char *)blob->p;
    size_t left = blob->len, nfields = 0;
    while (left > 0) {
        if (left < 4)
            return false;
        uint32_t n = be32(p);
        if (n > left - 4)
            return false;
        if (nfields == 0 && (n != type.len || memcmp(p + 4, type.p, n) != 0))
            return false;
        if (nfields == 1 && str_eq(type, "ssh-ed25519") && n != 32)
            return false;
        p += 4 + n;
        left -= 4 + n;
        nfields++;
    }
    return nfields == type_fields(type);
}

/* Parses an OpenSSH public key line "TYPE BASE64 [COMMENT]" into a new
 * record {id, key, comment} (a new reference in *out). */
static int parse_key(const char *line, json_t **out, struct pier_err *err)
{
    const char *ws = " \t\r\n";
    const char *s = line + strspn(line, ws);
    struct str type = {s, strcspn(s, ws)};
    s = type.p + type.len;
    s += strspn(s, ws);
    struct str b64 = {s, strcspn(s, ws)};
    s = b64.p + b64.len;
    s += strspn(s, ws);
    size_t clen = strlen(s);
    while (clen > 0 && strchr(ws, s[clen - 1]))
        clen--;
    if (type.len == 0 || type_fields(type) == 0)
        return err_set(err, PIER_EINVAL,
                       "key must be an OpenSSH public key line of a known type (ssh-ed25519, "
                       "ssh-rsa, ecdsa-sha2-*, ...)");
    cleanup_buf struct buf blob = BUF_INIT;
    if (b64.len == 0 || base64_decode(&blob, b64.p, b64.len) < 0 || !blob_ok(&blob, type))
        return err_set(err, PIER_EINVAL, "key: the base64 part is not a valid %.*s key",
                       (int)type.len, type.p);
    for (size_t i = 0; i < clen; i++)
        if ((unsigned char)s[i] < ' ' && s[i] != '\t')
            return err_set(err, PIER_EINVAL, "key: the comment holds control characters");

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(blob.p, blob.len, md, &mdlen, EVP_sha256(), NULL) != 1)
        return err_set(err, PIER_EINTERNAL, "cannot hash the key");
    cleanup_buf struct buf fp = BUF_INIT, canon = BUF_INIT;
    buf_puts(&fp, FP_PREFIX);
    base64_encode(&fp, md, mdlen);
    while (fp.len > 0 && fp.p[fp.len - 1] == '=')
        fp.p[--fp.len] = '\0';
    buf_printf(&canon, "%.*s %.*s", (int)type.len, type.p, (int)b64.len, b64.p);
    json_t *k = json_pack("{s:s,s:s,s:s%}", "id", fp.p, "key", canon.p, "comment", s, clen);
    if (!k)
        return err_set(err, PIER_EINVAL, "key: the comment is not valid UTF-8");
    *out = k;
    return 0;
}

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
    if (!line || !*line || strlen(line) > KEY_LINE_MAX) {
        ctl_reply_invalid(r, "key is required: an OpenSSH public key line");
        return;
    }
    cleanup_json json_t *k = NULL;
    if ((rc = parse_key(line, &k, &err)) < 0) {
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
    struct ctl *c = ud;
    struct pier_err err = {0};
    json_t *all = NULL;
    int rc = ctl_list(c, KEYS_KEYS, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    ctl_sort_newest(all);
    httpd_reply_json(r, 200, all);
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
