#include "lib/store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/store_int.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_WATCH_SILENCE_MS 30000
#define MIN_ATTEMPT_MS 50 /* the shortest timeout an attempt is given */

const char *const store_json_headers[] = {"Content-Type: application/json", NULL};

/* --- opening --------------------------------------------------------- */

int store_open(const char *endpoints, struct store **out, struct pier_err *err)
{
    if (!endpoints || !*endpoints)
        return err_set(err, PIER_EINVAL, "store: no endpoint given");
    struct store *s = xcalloc(1, sizeof(*s));
    cleanup_free char *list = xstrdup(endpoints);
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        ep += strspn(ep, " ");
        size_t len = strcspn(ep, " ");
        while (len > 0 && ep[len - 1] == '/')
            len--;
        if (len == 0)
            continue;
        if (strncmp(ep, "http://", 7) != 0 || s->n_eps == STORE_MAX_ENDPOINTS) {
            int r = err_set(err, PIER_EINVAL, "store endpoint \"%.*s\": %s", (int)len, ep,
                            s->n_eps == STORE_MAX_ENDPOINTS ? "too many endpoints" : "not http://");
            store_close(s);
            return r;
        }
        s->eps[s->n_eps] = str_dup((struct str){ep, len});
        struct buf name = BUF_INIT;
        buf_printf(&name, "store at %s", s->eps[s->n_eps]);
        s->names[s->n_eps++] = buf_detach(&name);
    }
    if (s->n_eps == 0) {
        store_close(s);
        return err_set(err, PIER_EINVAL, "store: no endpoint in \"%s\"", endpoints);
    }
    s->http = httpc_new();
    atomic_init(&s->cur, 0);
    atomic_init(&s->timeout_ms, DEFAULT_TIMEOUT_MS);
    atomic_init(&s->watch_silence_ms, DEFAULT_WATCH_SILENCE_MS);
    *out = s;
    return 0;
}

int store_open_env(struct store **out, struct pier_err *err)
{
    const char *env = getenv("PIER_STORE");
    if (!env || !*env)
        return err_set(err, PIER_EINVAL, "PIER_STORE is not set (the store's URL)");
    return store_open(env, out, err);
}

void store_close(struct store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_eps; i++) {
        free(s->eps[i]);
        free(s->names[i]);
    }
    httpc_free(s->http);
    free(s);
}

const char *store_endpoint(struct store *s)
{
    return s->eps[atomic_load(&s->cur) % s->n_eps];
}

void store_set_timeout(struct store *s, long timeout_ms)
{
    atomic_store(&s->timeout_ms, timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);
}

void store_set_watch_silence(struct store *s, long silence_ms)
{
    atomic_store(&s->watch_silence_ms, silence_ms > 0 ? silence_ms : DEFAULT_WATCH_SILENCE_MS);
}

/* --- the exchange ---------------------------------------------------- */

static int code_from_name(const char *name)
{
    static const struct {
        const char *name;
        int code;
    } names[] = {
        {"not_found", PIER_ENOTFOUND},
        {"validation_error", PIER_EINVAL},
        {"precondition_failed", PIER_ECOMPACTED},
        {"conflict", PIER_ECONFLICT},
        {"object_exists", PIER_EEXISTS},
        {"service_unavailable", PIER_EUNAVAIL},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(names[i].name, name) == 0)
            return names[i].code;
    return 0;
}

/* An error answer, as the gateway writes it ({"error": msg, "code": grpc
 * code, "message": msg}, or in a stream {"error": {"grpc_code", "message"}})
 * or in Flynn's shape ({"code": "not_found", "message": ...}). */
static int answer_error(const char *name, long status, const json_t *j, struct pier_err *err)
{
    const char *msg = NULL, *cname = NULL;
    int64_t grpc = -1;
    json_t *e = json_object_get(j, "error"); /* borrowed */
    if (json_is_object(e)) {
        jsonx_get_str(e, "message", &msg, NULL);
        jsonx_get_int64(e, "grpc_code", &grpc, NULL);
    } else if (json_is_string(e)) {
        msg = json_string_value(e);
    }
    if (!msg)
        jsonx_get_str(j, "message", &msg, NULL);
    if (json_is_string(json_object_get(j, "code")))
        cname = json_string_value(json_object_get(j, "code"));
    else if (grpc < 0)
        jsonx_get_int64(j, "code", &grpc, NULL);

    int code = cname ? code_from_name(cname) : 0;
    if (msg && strstr(msg, "compacted"))
        code = PIER_ECOMPACTED;
    if (code == 0) {
        switch (grpc) {
        case 5: code = PIER_ENOTFOUND; break; /* NOT_FOUND */
        case 3:
        case 11: code = PIER_EINVAL; break;   /* INVALID_ARGUMENT, OUT_OF_RANGE */
        case 4: code = PIER_ETIMEOUT; break;  /* DEADLINE_EXCEEDED */
        case 14: code = PIER_EUNAVAIL; break; /* UNAVAILABLE */
        case 9: code = PIER_ECONFLICT; break; /* FAILED_PRECONDITION */
        default:
            code = status == 404   ? PIER_ENOTFOUND
                   : status == 412 ? PIER_ECOMPACTED
                   : status == 400 ? PIER_EINVAL
                   : status == 503 ? PIER_EUNAVAIL
                                   : PIER_EINTERNAL;
        }
    }
    return err_set(err, code, "%s: %s", name, msg ? msg : "error without a message");
}

/* Strings are skipped with their escapes, so braces inside values do not
 * count; the state (depth, in a string, after a backslash) survives between
 * calls, so a message that arrives in many pieces is scanned once. */
size_t store_json_scan(struct store_json_scan *sc, const char *p, size_t len)
{
    size_t i = sc->pos;
    for (; i < len && !sc->started; i++) {
        char c = p[i];
        if (c == '{' || c == '[') {
            sc->started = true;
            sc->depth = 1;
        } else if (c != ' ' && c != '\n' && c != '\r' && c != '\t') {
            sc->pos = len;
            return len; /* not JSON: hand it all over, to be refused by the parser */
        }
    }
    for (; i < len; i++) {
        char c = p[i];
        if (sc->in_str) {
            if (sc->esc)
                sc->esc = false;
            else if (c == '\\')
                sc->esc = true;
            else if (c == '"')
                sc->in_str = false;
        } else if (c == '"') {
            sc->in_str = true;
        } else if (c == '{' || c == '[') {
            sc->depth++;
        } else if ((c == '}' || c == ']') && --sc->depth <= 0) {
            sc->pos = i + 1;
            return i + 1;
        }
    }
    sc->pos = len;
    return 0;
}

size_t store_json_value_len(const char *p, size_t len)
{
    struct store_json_scan sc = STORE_JSON_SCAN_INIT;
    return store_json_scan(&sc, p, len);
}

/* Parses one answer (a stream answer is {"result": ...}: unwrapped) into a
 * new object, or maps an error answer. */
int store_parse_answer(const char *name, long status, const char *p, size_t len, json_t **out,
                       struct pier_err *err)
{
    size_t n = store_json_value_len(p, len);
    json_t *j = NULL;
    struct pier_err perr = {0};
    if (n == 0 || jsonx_parse_object(p, n, &j, &perr) < 0) {
        if (status != 200)
            return err_set(err, status == 404 ? PIER_ENOTFOUND : PIER_EUNAVAIL,
                           "%s: HTTP status %ld", name, status);
        return err_set(err, PIER_EPROTO, "%s: unreadable answer: %s", name,
                       n == 0 ? "not a JSON object" : perr.msg);
    }
    if (status != 200 || json_object_get(j, "error")) {
        int r = answer_error(name, status, j, err);
        json_decref(j);
        return r;
    }
    json_t *res = json_object_get(j, "result"); /* borrowed */
    if (json_is_object(res)) {
        json_incref(res);
        json_decref(j);
        j = res;
    }
    *out = j;
    return 0;
}

/* Failover. An endpoint that cannot be connected to is skipped, as before.
 * One that accepts connections but cannot serve (an etcd member cut off
 * from its quorum times out or answers "no leader") would otherwise keep
 * every request: cur moves past it, so the next request goes elsewhere even
 * when this one, a write, cannot be retried. cur only moves forward from
 * the endpoint that failed (compare-and-swap), so threads failing at once
 * on one endpoint move it by one, not by one each. */
int store_failover(struct store *s, bool idempotent, int64_t deadline, store_try_fn try, void *ud,
                   struct pier_err *err)
{
    long timeout = atomic_load(&s->timeout_ms);
    size_t first = atomic_load(&s->cur) % s->n_eps;
    int r = err_set(err, PIER_EUNAVAIL, "store: no endpoint tried");
    for (size_t i = 0; i < s->n_eps; i++) {
        size_t at = (first + i) % s->n_eps;
        long t = timeout;
        if (deadline != INT64_MAX) {
            int64_t left = deadline - clock_now_ms();
            if (left <= 0 && i > 0)
                break;
            if (left < t)
                t = left < MIN_ATTEMPT_MS ? MIN_ATTEMPT_MS : (long)left;
        }
        r = try(s, at, t < 1000 ? t : 1000, t, ud, err);
        if (r < 0 && httpc_not_sent(r))
            continue;
        if (r == PIER_ETIMEOUT || r == PIER_EUNAVAIL) {
            size_t expect = at;
            if (s->n_eps > 1 &&
                atomic_compare_exchange_strong(&s->cur, &expect, (at + 1) % s->n_eps))
                log_info("store", "endpoint unhealthy, moving on", "endpoint=%s next=%s err=\"%s\"",
                         s->eps[at], s->eps[(at + 1) % s->n_eps], err ? err->msg : "");
            if (idempotent)
                continue;
            return r;
        }
        if (atomic_load(&s->cur) != at)
            atomic_store(&s->cur, at);
        return r;
    }
    return r;
}

struct call {
    const char *path;
    const struct buf *body;
    json_t **resp;
};

static int call_try(struct store *s, size_t at, long connect_timeout_ms, long timeout_ms, void *ud,
                    struct pier_err *err)
{
    struct call *c = ud;
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s%s", s->eps[at], c->path);
    struct httpc_req hr = {
        .url = url.p,
        .name = s->names[at],
        .headers = store_json_headers,
        .body = c->body->p,
        .body_len = c->body->len,
        .connect_timeout_ms = connect_timeout_ms,
        .timeout_ms = timeout_ms,
        .max_body = STORE_MAX_ANSWER,
    };
    struct httpc_resp hresp;
    int r = httpc_do(s->http, &hr, &hresp, err);
    if (r < 0)
        return r;
    r = store_parse_answer(s->names[at], hresp.status, hresp.body.p, hresp.body.len, c->resp, err);
    httpc_resp_release(&hresp);
    return r;
}

int store_call(struct store *s, const char *path, const json_t *req, long timeout_ms,
               bool idempotent, json_t **resp, struct pier_err *err)
{
    cleanup_buf struct buf body = BUF_INIT;
    jsonx_dump(&body, req);
    struct call c = {path, &body, resp};
    int64_t deadline = timeout_ms > 0 ? clock_now_ms() + timeout_ms : INT64_MAX;
    return store_failover(s, idempotent, deadline, call_try, &c, err);
}

bool store_revision_ok(int64_t n)
{
    return n >= 0 && n < INT64_MAX;
}

int store_header_revision(const json_t *resp, int64_t *rev, struct pier_err *err)
{
    *rev = 0;
    json_t *h = json_object_get(resp, "header"); /* borrowed */
    if (!h)
        return 0;
    if (!json_is_object(h) || jsonx_get_int64(h, "revision", rev, NULL) < 0 ||
        !store_revision_ok(*rev)) {
        *rev = 0;
        return err_set(err, PIER_EPROTO, "store: unreadable answer: bad header revision");
    }
    return 0;
}

/* --- decoding -------------------------------------------------------- */

int store_kv_decode(const json_t *o, struct store_kv *kv, struct pier_err *err)
{
    struct buf k = BUF_INIT, v = BUF_INIT;
    struct pier_err e = {0};
    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(o) || jsonx_get_b64(o, "key", &k, &e) < 0 ||
        jsonx_get_b64(o, "value", &v, &e) < 0 ||
        jsonx_get_int64(o, "create_revision", &kv->create_revision, &e) < 0 ||
        jsonx_get_int64(o, "mod_revision", &kv->mod_revision, &e) < 0 ||
        jsonx_get_int64(o, "version", &kv->version, &e) < 0 ||
        jsonx_get_int64(o, "lease", &kv->lease, &e) < 0 ||
        !store_revision_ok(kv->create_revision) || !store_revision_ok(kv->mod_revision) ||
        !store_revision_ok(kv->version)) {
        buf_free(&k);
        buf_free(&v);
        return err_set(err, PIER_EPROTO, "store: unreadable key-value: %s",
                       e.code              ? e.msg
                       : json_is_object(o) ? "revision or version out of range"
                                           : "not an object");
    }
    kv->key_len = k.len;
    kv->key = buf_detach(&k);
    kv->value_len = v.len;
    kv->value = buf_detach(&v);
    return 0;
}

void store_kv_release(struct store_kv *kv)
{
    free(kv->key);
    free(kv->value);
}

struct store_kv *store_kv_move(struct store_kv *from)
{
    struct store_kv *kv = xmalloc(sizeof(*kv));
    *kv = *from;
    memset(from, 0, sizeof(*from));
    return kv;
}

/* Fills r from a range answer (kvs, count and more may be absent). */
int store_range_decode(const json_t *o, struct store_range *r, struct pier_err *err)
{
    memset(r, 0, sizeof(*r));
    int e = store_header_revision(o, &r->revision, err);
    if (e < 0)
        return e;
    jsonx_get_int64(o, "count", &r->count, NULL);
    jsonx_get_bool(o, "more", &r->more, NULL);
    json_t *kvs = json_object_get(o, "kvs"); /* borrowed */
    size_t n = json_is_array(kvs) ? json_array_size(kvs) : 0;
    r->kvs = n ? xcalloc(n, sizeof(*r->kvs)) : NULL;
    for (; r->n < n; r->n++) {
        e = store_kv_decode(json_array_get(kvs, r->n), &r->kvs[r->n], err);
        if (e < 0)
            return e; /* r holds what was read; the caller frees it */
    }
    return 0;
}

void store_range_release(struct store_range *r)
{
    for (size_t i = 0; i < r->n; i++)
        store_kv_release(&r->kvs[i]);
    free(r->kvs);
}

/* --- reads ----------------------------------------------------------- */

/* Sets "key" and "range_end" for key alone, or for every key starting with
 * key. The range end of a prefix is the prefix with its last byte below
 * 0xff incremented (and what follows dropped); "\0" means "to the end". */
void store_set_range(json_t *o, const char *key, size_t klen, bool prefix)
{
    if (klen == 0) { /* "" as a prefix: everything */
        jsonx_set_b64(o, "key", "", 1);
        jsonx_set_b64(o, "range_end", "", 1);
        return;
    }
    jsonx_set_b64(o, "key", key, klen);
    if (!prefix)
        return;
    cleanup_free char *end = xmalloc(klen);
    memcpy(end, key, klen);
    size_t n = klen;
    while (n > 0 && (unsigned char)end[n - 1] == 0xff)
        n--;
    if (n == 0) {
        jsonx_set_b64(o, "range_end", "", 1);
        return;
    }
    end[n - 1]++;
    jsonx_set_b64(o, "range_end", end, n);
}

static int range(struct store *s, json_t *req, struct store_range *out, struct pier_err *err)
{
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/kv/range", req, 0, true, &resp, err);
    if (r < 0)
        return r;
    r = store_range_decode(resp, out, err);
    if (r < 0)
        store_range_release(out);
    return r;
}

int store_get_at(struct store *s, const char *key, int64_t revision, struct store_kv **out,
                 struct pier_err *err)
{
    *out = NULL;
    cleanup_json json_t *req = json_object();
    store_set_range(req, key, strlen(key), false);
    if (revision > 0)
        jsonx_set_int64_str(req, "revision", revision);
    struct store_range rr;
    int r = range(s, req, &rr, err);
    if (r < 0)
        return r;
    if (rr.n == 0)
        r = err_set(err, PIER_ENOTFOUND, "key %s not found", key);
    else
        *out = store_kv_move(&rr.kvs[0]);
    store_range_release(&rr);
    return r;
}

int store_get(struct store *s, const char *key, struct store_kv **out, struct pier_err *err)
{
    return store_get_at(s, key, 0, out, err);
}

int store_list(struct store *s, const char *prefix, const struct store_list_opts *opts,
               struct store_range **out, struct pier_err *err)
{
    static const struct store_list_opts none = {0};
    if (!opts)
        opts = &none;
    *out = NULL;
    cleanup_json json_t *req = json_object();
    size_t plen = strlen(prefix);
    store_set_range(req, prefix, plen, true);
    if (opts->after) { /* the smallest key after "after" is after + "\0" */
        size_t alen = strlen(opts->after);
        jsonx_set_b64(req, "key", opts->after, alen + 1);
    }
    if (opts->limit > 0)
        jsonx_set_int64_str(req, "limit", opts->limit);
    if (opts->revision > 0)
        jsonx_set_int64_str(req, "revision", opts->revision);
    if (opts->keys_only)
        json_object_set_new(req, "keys_only", json_true());
    if (opts->count_only)
        json_object_set_new(req, "count_only", json_true());
    struct store_range *rr = xcalloc(1, sizeof(*rr));
    int r = range(s, req, rr, err);
    if (r < 0) {
        free(rr);
        return r;
    }
    *out = rr;
    return 0;
}

int store_revision(struct store *s, int64_t *revision, struct pier_err *err)
{
    cleanup_json json_t *req = json_object();
    jsonx_set_b64(req, "key", "", 1);
    json_object_set_new(req, "count_only", json_true());
    struct store_range rr;
    int r = range(s, req, &rr, err);
    if (r < 0)
        return r;
    *revision = rr.revision;
    store_range_release(&rr);
    return 0;
}

/* --- writes ---------------------------------------------------------- */

static json_t *put_req(const char *key, const void *value, size_t len, int64_t lease)
{
    json_t *req = json_object();
    jsonx_set_b64(req, "key", key, strlen(key));
    jsonx_set_b64(req, "value", value, len);
    if (lease)
        jsonx_set_int64_str(req, "lease", lease);
    return req;
}

int store_put_prev(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
                   int64_t *revision, struct store_kv **prev, struct pier_err *err)
{
    if (prev)
        *prev = NULL;
    cleanup_json json_t *req = put_req(key, value, len, lease);
    if (prev)
        json_object_set_new(req, "prev_kv", json_true());
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/kv/put", req, 0, false, &resp, err);
    if (r < 0)
        return r;
    return store_put_decode(resp, revision, prev, err);
}

int store_put_decode(const json_t *resp, int64_t *revision, struct store_kv **prev,
                     struct pier_err *err)
{
    int64_t rev = 0;
    int r = store_header_revision(resp, &rev, err);
    if (r < 0)
        return r;
    if (revision)
        *revision = rev;
    json_t *pkv = json_object_get(resp, "prev_kv"); /* borrowed */
    if (prev && pkv) {
        struct store_kv kv;
        if ((r = store_kv_decode(pkv, &kv, err)) < 0)
            return r;
        *prev = store_kv_move(&kv);
    }
    return 0;
}

int store_put(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
              int64_t *revision, struct pier_err *err)
{
    return store_put_prev(s, key, value, len, lease, revision, NULL, err);
}

static int delete_range(struct store *s, const char *key, bool prefix, int64_t *deleted,
                        int64_t *revision, struct pier_err *err)
{
    cleanup_json json_t *req = json_object();
    store_set_range(req, key, strlen(key), prefix);
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/kv/deleterange", req, 0, false, &resp, err);
    if (r < 0)
        return r;
    return store_delete_decode(resp, deleted, revision, err);
}

int store_delete_decode(const json_t *resp, int64_t *deleted, int64_t *revision,
                        struct pier_err *err)
{
    int64_t rev = 0, n = 0;
    int r = store_header_revision(resp, &rev, err);
    if (r < 0)
        return r;
    if (jsonx_get_int64(resp, "deleted", &n, NULL) < 0 || n < 0)
        return err_set(err, PIER_EPROTO, "store: unreadable answer: bad \"deleted\"");
    if (deleted)
        *deleted = n;
    if (revision)
        *revision = rev;
    return 0;
}

int store_delete(struct store *s, const char *key, int64_t *deleted, int64_t *revision,
                 struct pier_err *err)
{
    return delete_range(s, key, false, deleted, revision, err);
}

int store_delete_prefix(struct store *s, const char *prefix, int64_t *deleted, int64_t *revision,
                        struct pier_err *err)
{
    if (!*prefix)
        return err_set(err, PIER_EINVAL, "store: refusing to delete every key (empty prefix)");
    return delete_range(s, prefix, true, deleted, revision, err);
}

/* A one-compare transaction: put if key's target equals n. */
static int put_if(struct store *s, const char *key, enum store_cmp_target target, int64_t n,
                  const void *value, size_t len, int64_t lease, int64_t *revision, bool *succeeded,
                  struct pier_err *err)
{
    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, key, target, STORE_EQ, n);
    store_txn_put(t, STORE_THEN, key, value, len, lease);
    struct store_txn_result *res = NULL;
    int r = store_txn_commit(s, t, &res, err);
    store_txn_free(t);
    if (r < 0)
        return r;
    *succeeded = res->succeeded;
    if (revision)
        *revision = res->revision;
    store_txn_result_free(res);
    return 0;
}

int store_create(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
                 int64_t *revision, struct pier_err *err)
{
    bool ok = false;
    int r = put_if(s, key, STORE_CMP_CREATE, 0, value, len, lease, revision, &ok, err);
    if (r == 0 && !ok)
        return err_set(err, PIER_EEXISTS, "key %s already exists", key);
    return r;
}

int store_cas(struct store *s, const char *key, const void *value, size_t len, int64_t mod_revision,
              int64_t lease, int64_t *revision, struct pier_err *err)
{
    bool ok = false;
    int r = put_if(s, key, STORE_CMP_MOD, mod_revision, value, len, lease, revision, &ok, err);
    if (r == 0 && !ok)
        return err_set(err, PIER_ECONFLICT, "key %s changed since revision %" PRId64, key,
                       mod_revision);
    return r;
}

/* --- transactions ---------------------------------------------------- */

/* The request is built as it goes: three JSON arrays in the gateway's
 * shape, sent as they are by store_txn_commit. */
struct store_txn {
    json_t *compare;
    json_t *then;
    json_t *otherwise;
};

struct store_txn *store_txn_new(void)
{
    struct store_txn *t = xcalloc(1, sizeof(*t));
    t->compare = json_array();
    t->then = json_array();
    t->otherwise = json_array();
    return t;
}

void store_txn_free(struct store_txn *t)
{
    if (!t)
        return;
    json_decref(t->compare);
    json_decref(t->then);
    json_decref(t->otherwise);
    free(t);
}

static json_t *cmp_new(const char *key, const char *target, enum store_cmp_op op)
{
    static const char *const results[] = {"EQUAL", "NOT_EQUAL", "LESS", "GREATER"};
    json_t *c = json_object();
    jsonx_set_b64(c, "key", key, strlen(key));
    json_object_set_new(c, "target", json_string(target));
    json_object_set_new(c, "result", json_string(results[op]));
    return c;
}

void store_txn_cmp_value(struct store_txn *t, const char *key, enum store_cmp_op op,
                         const void *value, size_t len)
{
    json_t *c = cmp_new(key, "VALUE", op);
    jsonx_set_b64(c, "value", value, len);
    json_array_append_new(t->compare, c); /* steals c */
}

void store_txn_cmp(struct store_txn *t, const char *key, enum store_cmp_target target,
                   enum store_cmp_op op, int64_t n)
{
    static const char *const targets[] = {"VALUE", "VERSION", "CREATE", "MOD", "LEASE"};
    static const char *const fields[] = {"value", "version", "create_revision", "mod_revision",
                                         "lease"};
    if (target == STORE_CMP_VALUE)
        abort(); /* a programming error: values go through store_txn_cmp_value */
    json_t *c = cmp_new(key, targets[target], op);
    jsonx_set_int64_str(c, fields[target], n);
    json_array_append_new(t->compare, c);
}

static void add_op(struct store_txn *t, enum store_branch b, const char *kind, json_t *req)
{
    json_t *op = json_object();
    json_object_set_new(op, kind, req); /* steals req */
    json_array_append_new(b == STORE_THEN ? t->then : t->otherwise, op);
}

void store_txn_put(struct store_txn *t, enum store_branch b, const char *key, const void *value,
                   size_t len, int64_t lease)
{
    add_op(t, b, "request_put", put_req(key, value, len, lease));
}

void store_txn_delete(struct store_txn *t, enum store_branch b, const char *key, bool prefix)
{
    json_t *req = json_object();
    store_set_range(req, key, strlen(key), prefix);
    add_op(t, b, "request_delete_range", req);
}

void store_txn_get(struct store_txn *t, enum store_branch b, const char *key, bool prefix)
{
    json_t *req = json_object();
    store_set_range(req, key, strlen(key), prefix);
    add_op(t, b, "request_range", req);
}

int store_txn_commit(struct store *s, const struct store_txn *t, struct store_txn_result **out,
                     struct pier_err *err)
{
    *out = NULL;
    cleanup_json json_t *req = json_object();
    json_object_set(req, "compare", t->compare); /* borrowed: set, not set_new */
    json_object_set(req, "success", t->then);
    json_object_set(req, "failure", t->otherwise);
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/kv/txn", req, 0, false, &resp, err);
    if (r < 0)
        return r;
    return store_txn_decode(resp, out, err);
}

int store_txn_decode(const json_t *resp, struct store_txn_result **out, struct pier_err *err)
{
    *out = NULL;
    struct store_txn_result *res = xcalloc(1, sizeof(*res));
    int r = store_header_revision(resp, &res->revision, err);
    if (r < 0) {
        free(res);
        return r;
    }
    jsonx_get_bool(resp, "succeeded", &res->succeeded, NULL);
    json_t *resps = json_object_get(resp, "responses"); /* borrowed */
    size_t n = json_is_array(resps) ? json_array_size(resps) : 0;
    res->gets = n ? xcalloc(n, sizeof(*res->gets)) : NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *rr = json_object_get(json_array_get(resps, i), "response_range");
        if (!rr)
            continue;
        r = store_range_decode(rr, &res->gets[res->n_gets++], err);
        if (r < 0) {
            store_txn_result_free(res);
            return r;
        }
    }
    *out = res;
    return 0;
}

/* --- compaction ------------------------------------------------------ */

int store_compact(struct store *s, int64_t revision, struct pier_err *err)
{
    cleanup_json json_t *req = json_object();
    jsonx_set_int64_str(req, "revision", revision);
    json_object_set_new(req, "physical", json_true());
    cleanup_json json_t *resp = NULL;
    return store_call(s, "/v3/kv/compaction", req, 0, false, &resp, err);
}

/* --- results --------------------------------------------------------- */

void store_kv_free(struct store_kv *kv)
{
    if (!kv)
        return;
    store_kv_release(kv);
    free(kv);
}

void store_range_free(struct store_range *r)
{
    if (!r)
        return;
    store_range_release(r);
    free(r);
}

void store_txn_result_free(struct store_txn_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_gets; i++)
        store_range_release(&r->gets[i]);
    free(r->gets);
    free(r);
}
