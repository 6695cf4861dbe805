#include "discoverd/discoverd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/daemon.h"
#include "lib/discover.h"
#include "lib/httpd.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define MAX_TTL 300
/* Flynn's keep-alive: a comment line with no blank line after it, which
 * Flynn's SSE reader skips (a "\n\n"-terminated comment breaks it). */
#define SSE_KEEPALIVE ":\n"
#define SSE_KEEPALIVE_MS 30000
/* At SIGTERM, how long requests in progress may run on (they are short:
 * the endless event streams do not wait). */
#define DRAIN_MS 5000

struct discoverd {
    struct store *s;
};

static bool wants_events(struct httpd_req *r)
{
    const char *accept = httpd_header(r, "Accept");
    return accept && strstr(accept, "text/event-stream");
}

static int check_instance_id(const char *id, struct pier_err *err)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return err_set(err, PIER_EINVAL, "instance id must be 1 to 64 characters long");
    if (id[0] == '.')
        return err_set(err, PIER_EINVAL, "instance id \"%s\" must not start with '.'", id);
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return err_set(err, PIER_EINVAL,
                           "instance id \"%s\" may hold only letters, digits, '-', '_' and '.'",
                           id);
    }
    return 0;
}

/* ---- GET /services ---- */

static void services_list(struct httpd_req *r, void *ud)
{
    struct discoverd *d = ud;
    struct pier_err err = {0};
    struct store_range *rg = NULL;
    struct store_list_opts lo = {.keys_only = true};
    if (store_list(d->s, DISCOVER_PREFIX, &lo, &rg, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    json_t *names = json_array();
    size_t plen = strlen(DISCOVER_PREFIX);
    const char *last = NULL;
    size_t last_len = 0;
    for (size_t i = 0; i < rg->n; i++) {
        if (rg->kvs[i].key_len <= plen)
            continue;
        const char *name = rg->kvs[i].key + plen;
        const char *slash = strchr(name, '/');
        size_t len = slash ? (size_t)(slash - name) : strlen(name);
        if (last && len == last_len && memcmp(last, name, len) == 0)
            continue; /* keys are sorted, so one service's instances are adjacent */
        json_array_append_new(names, json_stringn(name, len));
        last = name;
        last_len = len;
    }
    store_range_free(rg);
    httpd_reply_json(r, 200, names);
}

/* ---- event streams ---- */

struct event_stream {
    struct discover_watch *w;
    char *service;
    bool leader_only;
    int64_t last_write_ms; /* when something last went out */
    int64_t warned_ms;     /* when we last logged that the store is away */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static json_t *event_json(const struct discover_event *e, const char *service)
{
    json_t *j = json_object();
    json_object_set_new(j, "service", json_string(service));
    json_object_set_new(j, "kind", json_string(discover_event_kind_name(e->kind)));
    json_object_set_new(j, "instance", e->inst.id ? discover_instance_json(&e->inst) : json_null());
    return j;
}

static int stream_next(void *ud, struct buf *out, int timeout_ms)
{
    struct event_stream *es = ud;
    struct discover_event *e = NULL;
    struct pier_err err = {0};
    int rc = discover_watch_next(es->w, timeout_ms, &e, &err);
    int64_t now = now_ms();
    if (rc == 0 && (!es->leader_only || e->kind == DISCOVER_LEADER)) {
        json_t *j = event_json(e, es->service);
        buf_puts(out, "data: ");
        jsonx_dump(out, j);
        buf_puts(out, "\n\n");
        json_decref(j);
        es->last_write_ms = now;
    }
    discover_event_free(e);
    if (rc < 0 && rc != PIER_ETIMEOUT && now - es->warned_ms >= SSE_KEEPALIVE_MS) {
        /* The watch keeps trying; say so once in a while, not per poll. */
        log_warn("discoverd", "event stream waiting for the store", "service=%s reason=\"%s\"",
                 es->service, err.msg);
        es->warned_ms = now;
    }
    if (now - es->last_write_ms >= SSE_KEEPALIVE_MS) {
        buf_puts(out, SSE_KEEPALIVE);
        es->last_write_ms = now;
    }
    return 1;
}

static void stream_done(void *ud)
{
    struct event_stream *es = ud;
    discover_watch_close(es->w);
    free(es->service);
    free(es);
}

static void start_stream(struct httpd_req *r, struct discoverd *d, const char *service,
                         bool leader_only)
{
    struct pier_err err = {0};
    struct event_stream *es = xcalloc(1, sizeof(*es));
    es->leader_only = leader_only;
    es->last_write_ms = now_ms();
    if (discover_watch_open(d->s, service, &es->w, &err) < 0) {
        free(es);
        httpd_reply_err(r, &err);
        return;
    }
    es->service = xstrdup(service);
    /* Endless: a drain ends it; the client reconnects and is sent the
     * current instances again. */
    httpd_reply_stream_endless(r, 200, "text/event-stream", stream_next, stream_done, es);
}

/* ---- GET /services/:service/instances and /leader ---- */

/* The start both GETs share: checks the service name and, when the client
 * asks for events, starts the stream. Returns the current list for a plain
 * GET, or NULL when the request has already been answered. */
static struct discover_list *service_get(struct httpd_req *r, struct discoverd *d, bool leader_only)
{
    const char *service = httpd_param(r, "service");
    struct pier_err err = {0};
    if (discover_check_service(service, &err) < 0) {
        httpd_reply_err(r, &err);
        return NULL;
    }
    if (wants_events(r)) {
        start_stream(r, d, service, leader_only);
        return NULL;
    }
    struct discover_list *l = NULL;
    if (discover_list(d->s, service, &l, &err) < 0) {
        httpd_reply_err(r, &err);
        return NULL;
    }
    return l;
}

static void instances_list(struct httpd_req *r, void *ud)
{
    struct discover_list *l = service_get(r, ud, false);
    if (!l)
        return;
    json_t *arr = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(arr, discover_instance_json(&l->v[i]));
    discover_list_free(l);
    httpd_reply_json(r, 200, arr);
}

static void leader_get(struct httpd_req *r, void *ud)
{
    struct discover_list *l = service_get(r, ud, true);
    if (!l)
        return;
    if (l->n == 0)
        httpd_reply_not_found(r);
    else
        httpd_reply_json(r, 200, discover_instance_json(&l->v[0]));
    discover_list_free(l);
}

/* ---- PUT /services/:service/instances/:id ---- */

struct reg_req {
    const char *addr, *proto;
    const json_t *meta;
    int64_t ttl;
};

static int parse_reg(const json_t *body, struct reg_req *q, struct pier_err *err)
{
    int rc;
    q->proto = "tcp";
    q->ttl = DISCOVER_DEFAULT_TTL;
    json_t *meta = NULL;
    if ((rc = jsonx_get_str(body, "addr", &q->addr, err)) < 0)
        return rc;
    if (rc == 0 || !*q->addr)
        return err_set(err, PIER_EINVAL, "field \"addr\" is required (HOST:PORT)");
    if ((rc = jsonx_get_str(body, "proto", &q->proto, err)) < 0)
        return rc;
    if ((rc = jsonx_get_obj(body, "meta", &meta, err)) < 0)
        return rc;
    q->meta = meta;
    if ((rc = discover_check_instance(q->addr, q->proto, meta, err)) < 0)
        return rc;
    if ((rc = jsonx_get_int64(body, "ttl", &q->ttl, err)) < 0)
        return rc;
    if (q->ttl < 1 || q->ttl > MAX_TTL)
        return err_set(err, PIER_EINVAL, "field \"ttl\" must be between 1 and %d seconds", MAX_TTL);
    return 0;
}

/* Registers, or renews, an instance without keeping any state here: the
 * lease is read back from the stored key, so any discoverd (or this one
 * after a restart) can take the next heartbeat. The stored value carries the
 * TTL asked for, so a heartbeat with another TTL (or other fields) is a new
 * registration under a fresh lease. Writes are compare-and-swap on the key's
 * mod revision: two racing heartbeats cannot undo each other, and the loser
 * looks again. A lease the key had before is left to run out (it may hold
 * other keys of its owner). */
static int register_instance(struct store *s, const char *service, const char *id,
                             const struct reg_req *q, struct discover_instance *out,
                             struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    discover_instance_key(&key, service, id);
    json_t *meta = q->meta ? json_deep_copy(q->meta) : json_object();
    json_t *v = json_pack("{s:s,s:s,s:s,s:s,s:o,s:I}", "id", id, "service", service, "addr",
                          q->addr, "proto", q->proto, "meta", meta, "ttl", (json_int_t)q->ttl);
    cleanup_buf struct buf value = BUF_INIT;
    jsonx_dump(&value, v);
    json_decref(v);

    int rc = PIER_ECONFLICT;
    for (int attempt = 0; attempt < 5 && rc == PIER_ECONFLICT; attempt++) {
        struct store_kv *cur = NULL;
        rc = store_get(s, key.p, &cur, err);
        if (rc < 0 && rc != PIER_ENOTFOUND)
            return rc;
        int64_t mod = cur ? cur->mod_revision : 0;
        int64_t lease = cur ? cur->lease : 0;
        bool same =
            cur && cur->value_len == value.len && memcmp(cur->value, value.p, value.len) == 0;
        store_kv_free(cur);
        if (same && lease) {
            rc = store_lease_keepalive(s, lease, NULL, err);
            if (rc != PIER_ENOTFOUND)
                break; /* renewed, or the store is away */
        }
        int64_t fresh = 0;
        if ((rc = store_lease_grant(s, q->ttl, &fresh, err)) < 0)
            return rc;
        rc = store_cas(s, key.p, value.p, value.len, mod, fresh, NULL, err);
        if (rc < 0)
            store_lease_revoke(s, fresh, NULL);
    }
    if (rc == PIER_ECONFLICT)
        return err_set(err, PIER_ECONFLICT,
                       "instance %s of %s kept changing while registering it; try again", id,
                       service);
    if (rc < 0)
        return rc;
    struct store_kv *kv = NULL;
    if ((rc = store_get(s, key.p, &kv, err)) < 0)
        return rc;
    memset(out, 0, sizeof(*out));
    out->id = xstrdup(id);
    out->service = xstrdup(service);
    out->addr = xstrdup(q->addr);
    out->proto = xstrdup(q->proto);
    out->meta = q->meta ? json_deep_copy(q->meta) : json_object();
    out->create_revision = kv->create_revision;
    out->mod_revision = kv->mod_revision;
    store_kv_free(kv);
    return 0;
}

/* Reads and checks the :service and :id of an instance path; answers the
 * request itself and returns false when one is bad. */
static bool instance_params(struct httpd_req *r, const char **service, const char **id)
{
    struct pier_err err = {0};
    *service = httpd_param(r, "service");
    *id = httpd_param(r, "id");
    if (discover_check_service(*service, &err) < 0 || check_instance_id(*id, &err) < 0) {
        httpd_reply_err(r, &err);
        return false;
    }
    return true;
}

static void instance_put(struct httpd_req *r, void *ud)
{
    struct discoverd *d = ud;
    const char *service, *id;
    struct pier_err err = {0};
    if (!instance_params(r, &service, &id))
        return;
    cleanup_json json_t *body = NULL;
    if (httpd_body_json(r, &body) < 0)
        return;
    struct reg_req q;
    if (parse_reg(body, &q, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    struct discover_instance in;
    if (register_instance(d->s, service, id, &q, &in, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    httpd_reply_json(r, 200, discover_instance_json(&in));
    discover_instance_clear(&in);
}

/* ---- DELETE /services/:service/instances/:id ---- */

static void instance_delete(struct httpd_req *r, void *ud)
{
    struct discoverd *d = ud;
    const char *service, *id;
    struct pier_err err = {0};
    if (!instance_params(r, &service, &id))
        return;
    cleanup_buf struct buf key = BUF_INIT;
    discover_instance_key(&key, service, id);
    struct store_kv *cur = NULL;
    if (store_get(d->s, key.p, &cur, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    int64_t lease = cur->lease;
    store_kv_free(cur);
    /* Watchers must see it go at once. Deleting the key does that; the lease
     * is revoked too when it holds nothing else (a lease shared with other
     * keys of the same owner, such as a host's, must live on). */
    struct store_lease_info *li = NULL;
    if (lease && store_lease_timetolive(d->s, lease, true, &li, NULL) == 0 && li->n_keys == 1 &&
        strcmp(li->keys[0], key.p) == 0)
        store_lease_revoke(d->s, lease, NULL);
    store_lease_info_free(li);
    if (store_delete(d->s, key.p, NULL, NULL, &err) < 0) {
        httpd_reply_err(r, &err);
        return;
    }
    httpd_reply_json(r, 200, json_object());
}

int discoverd_main(int argc, char **argv)
{
    const struct daemon_spec spec = {
        .sub = "discoverd",
        .summary = "Service discovery over HTTP: register, list and follow service instances.",
        .default_listen = "127.0.0.1:1111",
        .opts = NULL,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd discoverd: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f.store) {
        fprintf(stderr, "pierd discoverd: needs the store: --store URL (or PIER_STORE)\n");
        return 2;
    }
    struct discoverd d = {0};
    if (store_open(f.store, &d.s, &err) < 0) {
        fprintf(stderr, "pierd discoverd: %s\n", err.msg);
        return 2;
    }
    const struct httpd_options ho = {
        .listen = f.listen, .comp = "discoverd", .key = f.key, .errors = HTTPD_ERRORS_FLYNN};
    struct httpd *h = httpd_new(&ho);
    httpd_route(h, "GET", "/services", services_list, &d, false);
    httpd_route(h, "GET", "/services/:service/instances", instances_list, &d, false);
    httpd_route(h, "GET", "/services/:service/leader", leader_get, &d, false);
    httpd_route(h, "PUT", "/services/:service/instances/:id", instance_put, &d, false);
    httpd_route(h, "DELETE", "/services/:service/instances/:id", instance_delete, &d, false);
    if (httpd_start(h, &err) < 0) {
        fprintf(stderr, "pierd discoverd: %s\n", err.msg);
        httpd_free(h);
        store_close(d.s);
        return 1;
    }
    log_info("discoverd", "listening", "addr=%s port=%d store=%s", f.listen, httpd_port(h),
             f.store);
    int sig = daemon_wait();
    log_info("discoverd", "stopping", "signal=%d drain_ms=%d", sig, DRAIN_MS);
    /* Requests in progress finish; the event streams end cleanly at once
     * (their clients reconnect to another instance). */
    if (!httpd_drain(h, DRAIN_MS))
        log_warn("discoverd", "requests still running at the drain timeout, cut", "after_ms=%d",
                 DRAIN_MS);
    httpd_free(h);
    store_close(d.s);
    return 0;
}
