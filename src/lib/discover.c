#include "lib/discover.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/log.h"

/* ---- names, ids, instances ---- */

int discover_check_service(const char *service, struct pier_err *err)
{
    size_t n = strlen(service);
    /* 128: an app name (up to 100, Flynn's limit) with "-web" must fit. */
    if (n == 0 || n > 128)
        return err_set(err, PIER_EINVAL, "service name must be 1 to 128 characters long");
    for (size_t i = 0; i < n; i++) {
        char c = service[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (i > 0 && (c == '-' || c == '_' || c == '.'));
        if (!ok)
            return err_set(err, PIER_EINVAL,
                           "service name \"%s\" may hold only a-z, 0-9, '-', '_' and '.', "
                           "starting with a letter or digit",
                           service);
    }
    return 0;
}

void discover_instance_id(const char *proto, const char *addr, char out[33])
{
    cleanup_buf struct buf in = BUF_INIT;
    buf_printf(&in, "%s-%s", proto, addr);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(in.p, in.len, md, &len, EVP_md5(), NULL);
    for (unsigned i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void discover_instance_clear(struct discover_instance *in)
{
    free(in->id);
    free(in->service);
    free(in->addr);
    free(in->proto);
    json_decref(in->meta);
    memset(in, 0, sizeof(*in));
}

void discover_instance_free(struct discover_instance *in)
{
    if (!in)
        return;
    discover_instance_clear(in);
    free(in);
}

static void instance_copy(struct discover_instance *dst, const struct discover_instance *src)
{
    dst->id = src->id ? xstrdup(src->id) : NULL;
    dst->service = src->service ? xstrdup(src->service) : NULL;
    dst->addr = src->addr ? xstrdup(src->addr) : NULL;
    dst->proto = src->proto ? xstrdup(src->proto) : NULL;
    dst->meta = src->meta ? json_deep_copy(src->meta) : NULL;
    dst->create_revision = src->create_revision;
    dst->mod_revision = src->mod_revision;
}

json_t *discover_instance_json(const struct discover_instance *in)
{
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(in->id ? in->id : ""));
    json_object_set_new(j, "service", json_string(in->service ? in->service : ""));
    json_object_set_new(j, "addr", json_string(in->addr ? in->addr : ""));
    json_object_set_new(j, "proto", json_string(in->proto ? in->proto : ""));
    json_object_set_new(j, "meta", in->meta ? json_deep_copy(in->meta) : json_object());
    json_object_set_new(j, "index", json_integer(in->create_revision));
    return j;
}

int discover_check_instance(const char *addr, const char *proto, const json_t *meta,
                            struct pier_err *err)
{
    if (!addr || !*addr)
        return err_set(err, PIER_EINVAL, "an instance needs an addr (HOST:PORT)");
    if (strlen(addr) > DISCOVER_MAX_ADDR)
        return err_set(err, PIER_EINVAL, "addr is longer than %d bytes", DISCOVER_MAX_ADDR);
    if (proto && (!*proto || strlen(proto) > DISCOVER_MAX_PROTO))
        return err_set(err, PIER_EINVAL, "proto must be 1 to %d bytes long", DISCOVER_MAX_PROTO);
    if (!meta)
        return 0;
    if (!json_is_object(meta))
        return err_set(err, PIER_EINVAL, "instance meta must be an object of strings");
    size_t total = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "instance meta \"%s\" must be a string", k);
        total += strlen(k) + json_string_length(v);
    }
    if (total > DISCOVER_MAX_META)
        return err_set(err, PIER_EINVAL, "instance meta is larger than %d bytes",
                       DISCOVER_MAX_META);
    return 0;
}

/* Reads an instance from a store kv; PIER_EPROTO when it is not one. */
static int instance_from_kv(const struct store_kv *kv, struct discover_instance *out)
{
    memset(out, 0, sizeof(*out));
    cleanup_json json_t *j = NULL;
    if (jsonx_parse_object(kv->value, kv->value_len, &j, NULL) < 0)
        return PIER_EPROTO;
    const char *id = NULL, *service = NULL, *addr = NULL, *proto = NULL;
    if (jsonx_get_str(j, "id", &id, NULL) <= 0 ||
        jsonx_get_str(j, "service", &service, NULL) <= 0 ||
        jsonx_get_str(j, "addr", &addr, NULL) <= 0 || jsonx_get_str(j, "proto", &proto, NULL) <= 0)
        return PIER_EPROTO;
    json_t *meta = json_object_get(j, "meta");
    if (discover_check_instance(addr, proto, meta, NULL) < 0)
        return PIER_EPROTO;
    out->id = xstrdup(id);
    out->service = xstrdup(service);
    out->addr = xstrdup(addr);
    out->proto = xstrdup(proto);
    out->meta = meta ? json_incref(meta) : json_object();
    out->create_revision = kv->create_revision;
    out->mod_revision = kv->mod_revision;
    return 0;
}

static void service_prefix(struct buf *b, const char *service)
{
    buf_printf(b, "%s%s/", DISCOVER_PREFIX, service);
}

void discover_instance_key(struct buf *b, const char *service, const char *id)
{
    service_prefix(b, service);
    buf_puts(b, id);
}

static int cmp_create(const void *a, const void *b)
{
    const struct discover_instance *x = a, *y = b;
    return (x->create_revision > y->create_revision) - (x->create_revision < y->create_revision);
}

int discover_list(struct store *s, const char *service, struct discover_list **out,
                  struct pier_err *err)
{
    int rc = discover_check_service(service, err);
    if (rc < 0)
        return rc;
    cleanup_buf struct buf prefix = BUF_INIT;
    service_prefix(&prefix, service);
    struct store_range *r = NULL;
    rc = store_list(s, prefix.p, NULL, &r, err);
    if (rc < 0)
        return rc;
    struct discover_list *l = xcalloc(1, sizeof(*l));
    l->v = xcalloc(r->n ? r->n : 1, sizeof(*l->v));
    l->revision = r->revision;
    for (size_t i = 0; i < r->n; i++) {
        if (instance_from_kv(&r->kvs[i], &l->v[l->n]) == 0)
            l->n++;
        else
            log_warn("discover", "skipping a malformed instance", "key=%s", r->kvs[i].key);
    }
    store_range_free(r);
    qsort(l->v, l->n, sizeof(*l->v), cmp_create);
    *out = l;
    return 0;
}

void discover_list_free(struct discover_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        discover_instance_clear(&l->v[i]);
    free(l->v);
    free(l);
}

/* ---- registration ---- */

struct discover_reg {
    struct store *s;
    char *service, *addr, *proto, *key;
    char id[33];
    int64_t ttl;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cond;
    json_t *meta;
    int64_t lease;
    struct store_keeper *keeper;
    bool lost, stopping, started;
    pthread_t thread;
};

static char *instance_value(const struct discover_reg *r)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:O}", "id", r->id, "service", r->service, "addr",
                          r->addr, "proto", r->proto, "meta", r->meta);
    struct buf b = BUF_INIT;
    jsonx_dump(&b, j);
    json_decref(j);
    return buf_detach(&b);
}

static void on_lease_lost(int64_t id, const struct pier_err *why, void *ud)
{
    struct discover_reg *r = ud;
    log_warn("discover", "registration lease lost, registering again",
             "service=%s id=%s lease=%lld reason=\"%s\"", r->service, r->id, (long long)id,
             why ? why->msg : "");
    pthread_mutex_lock(&r->mu);
    r->lost = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

/* Grants a lease, writes the instance under it and starts its keeper.
 * Called without r->mu (it talks to the store); takes it to publish. */
static int reg_attach(struct discover_reg *r, struct pier_err *err)
{
    pthread_mutex_lock(&r->mu);
    cleanup_free char *value = instance_value(r);
    pthread_mutex_unlock(&r->mu);
    int64_t lease = 0;
    struct store_keeper *keeper = NULL;
    int rc = store_lease_grant(r->s, r->ttl, &lease, err);
    if (rc < 0)
        return rc;
    rc = store_put(r->s, r->key, value, strlen(value), lease, NULL, err);
    if (rc == 0)
        rc = store_keeper_start(r->s, lease, r->ttl, on_lease_lost, r, &keeper, err);
    if (rc < 0) {
        store_lease_revoke(r->s, lease, NULL);
        return rc;
    }
    pthread_mutex_lock(&r->mu);
    r->lease = lease;
    r->keeper = keeper;
    r->lost = false;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void *reg_thread(void *arg)
{
    struct discover_reg *r = arg;
    long backoff_ms = 100;
    pthread_mutex_lock(&r->mu);
    while (!r->stopping) {
        if (!r->lost) {
            pthread_cond_wait(&r->cond, &r->mu);
            continue;
        }
        struct store_keeper *old = r->keeper;
        r->keeper = NULL;
        pthread_mutex_unlock(&r->mu);
        /* The keeper has called back and ended; joining it is quick. */
        store_keeper_stop(old, false);
        struct pier_err err = {0};
        int rc = reg_attach(r, &err);
        pthread_mutex_lock(&r->mu);
        if (rc == 0) {
            log_info("discover", "registered again", "service=%s id=%s", r->service, r->id);
            backoff_ms = 100;
            continue;
        }
        log_warn("discover", "cannot register, retrying",
                 "service=%s id=%s in_ms=%ld reason=\"%s\"", r->service, r->id, backoff_ms,
                 err.msg);
        /* A wall-clock wait: a clock jump only moves one retry. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += backoff_ms / 1000;
        until.tv_nsec += (backoff_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cond, &r->mu, &until);
        backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int discover_register(struct store *s, const char *service, const char *addr,
                      const struct discover_reg_opts *opts, struct discover_reg **out,
                      struct pier_err *err)
{
    int rc = discover_check_service(service, err);
    if (rc < 0)
        return rc;
    const json_t *meta = opts ? opts->meta : NULL;
    if ((rc = discover_check_instance(addr, opts ? opts->proto : NULL, meta, err)) < 0)
        return rc;
    struct discover_reg *r = xcalloc(1, sizeof(*r));
    r->s = s;
    r->service = xstrdup(service);
    r->addr = xstrdup(addr);
    r->proto = xstrdup(opts && opts->proto ? opts->proto : "tcp");
    r->ttl = opts && opts->ttl_s > 0 ? opts->ttl_s : DISCOVER_DEFAULT_TTL;
    r->meta = meta ? json_deep_copy(meta) : json_object();
    discover_instance_id(r->proto, r->addr, r->id);
    struct buf key = BUF_INIT;
    discover_instance_key(&key, service, r->id);
    r->key = buf_detach(&key);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cond, NULL);
    rc = reg_attach(r, err);
    if (rc == 0 && pthread_create(&r->thread, NULL, reg_thread, r) != 0)
        rc = err_set(err, PIER_EINTERNAL, "cannot start the registration thread of %s", service);
    else if (rc == 0)
        r->started = true;
    if (rc < 0) {
        discover_unregister(r);
        return rc;
    }
    *out = r;
    return 0;
}

const char *discover_reg_id(const struct discover_reg *r)
{
    return r->id;
}

bool discover_reg_held(struct discover_reg *r)
{
    pthread_mutex_lock(&r->mu);
    bool held = !r->lost && r->keeper;
    pthread_mutex_unlock(&r->mu);
    return held;
}

int discover_reg_set_meta(struct discover_reg *r, const json_t *meta, struct pier_err *err)
{
    int rc = discover_check_instance(r->addr, r->proto, meta, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&r->mu);
    json_decref(r->meta);
    r->meta = meta ? json_deep_copy(meta) : json_object();
    cleanup_free char *value = instance_value(r);
    int64_t lease = r->lease;
    pthread_mutex_unlock(&r->mu);
    /* If the lease is being replaced meanwhile, the new registration
     * writes the new meta anyway. */
    return store_put(r->s, r->key, value, strlen(value), lease, NULL, err);
}

static void reg_end(struct discover_reg *r, bool revoke);

void discover_unregister(struct discover_reg *r)
{
    reg_end(r, true);
}

void discover_reg_release(struct discover_reg *r)
{
    reg_end(r, false);
}

static void reg_end(struct discover_reg *r, bool revoke)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->mu);
    if (r->started)
        pthread_join(r->thread, NULL);
    if (r->keeper)
        store_keeper_stop(r->keeper, revoke);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    json_decref(r->meta);
    free(r->service);
    free(r->addr);
    free(r->proto);
    free(r->key);
    free(r);
}

/* ---- watching ---- */

const char *discover_event_kind_name(enum discover_event_kind k)
{
    static const char *names[] = {"up", "update", "down", "leader", "current"};
    return names[k];
}

void discover_event_free(struct discover_event *e)
{
    if (!e)
        return;
    discover_instance_clear(&e->inst);
    free(e);
}

/* The watch keeps the live set it has told its reader about, and a queue of
 * events not yet handed out. Store events (or, after a compaction, a fresh
 * list) change the set; every change queues an event, and a change of the
 * oldest instance queues a LEADER event after the batch. */
struct discover_watch {
    struct store *s;
    char *service;
    char *prefix;
    struct store_watch *sw;
    struct discover_instance *set; /* live instances, unordered */
    size_t n;
    char *leader_id;       /* id of the leader last announced, or NULL */
    int64_t leader_create; /* its create revision (a re-registration is a new leader) */
    struct discover_event **queue;
    size_t qhead, qlen;
};

static void push(struct discover_watch *w, enum discover_event_kind kind,
                 const struct discover_instance *in)
{
    struct discover_event *e = xcalloc(1, sizeof(*e));
    e->kind = kind;
    if (in)
        instance_copy(&e->inst, in);
    if (w->qhead > 0 && w->qhead == w->qlen) {
        w->qhead = w->qlen = 0;
    }
    w->queue = xrealloc(w->queue, (w->qlen + 1) * sizeof(*w->queue));
    w->queue[w->qlen++] = e;
}

static ssize_t find(struct discover_watch *w, const char *id)
{
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->set[i].id, id) == 0)
            return (ssize_t)i;
    return -1;
}

static const struct discover_instance *oldest(struct discover_watch *w)
{
    const struct discover_instance *best = NULL;
    for (size_t i = 0; i < w->n; i++)
        if (!best || w->set[i].create_revision < best->create_revision)
            best = &w->set[i];
    return best;
}

static void check_leader(struct discover_watch *w)
{
    const struct discover_instance *l = oldest(w);
    if (l && w->leader_id && strcmp(l->id, w->leader_id) == 0 &&
        l->create_revision == w->leader_create)
        return;
    if (!l && !w->leader_id)
        return;
    free(w->leader_id);
    w->leader_id = l ? xstrdup(l->id) : NULL;
    w->leader_create = l ? l->create_revision : 0;
    push(w, DISCOVER_LEADER, l);
}

static void set_remove(struct discover_watch *w, size_t i)
{
    push(w, DISCOVER_DOWN, &w->set[i]);
    discover_instance_clear(&w->set[i]);
    w->set[i] = w->set[--w->n];
}

/* Adds or replaces an instance (taking ownership of in). */
static void set_upsert(struct discover_watch *w, struct discover_instance *in)
{
    ssize_t i = find(w, in->id);
    if (i >= 0 && w->set[i].create_revision != in->create_revision) {
        /* Deleted and created again between two looks: say both. */
        set_remove(w, (size_t)i);
        i = -1;
    }
    if (i >= 0) {
        discover_instance_clear(&w->set[i]);
        w->set[i] = *in;
        push(w, DISCOVER_UPDATE, in);
        return;
    }
    w->set = xrealloc(w->set, (w->n + 1) * sizeof(*w->set));
    w->set[w->n++] = *in;
    push(w, DISCOVER_UP, in);
}

/* Lists the service and brings the set in line with it, then (re)opens the
 * store watch just after the listed revision. */
static int resync(struct discover_watch *w, bool initial, struct pier_err *err)
{
    struct discover_list *l = NULL;
    int rc = discover_list(w->s, w->service, &l, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < w->n;) {
        bool still = false;
        for (size_t j = 0; j < l->n && !still; j++)
            still = strcmp(l->v[j].id, w->set[i].id) == 0;
        if (still)
            i++;
        else
            set_remove(w, i);
    }
    for (size_t j = 0; j < l->n; j++) {
        ssize_t i = find(w, l->v[j].id);
        if (i >= 0 && w->set[i].mod_revision == l->v[j].mod_revision)
            continue;
        struct discover_instance in = l->v[j];
        memset(&l->v[j], 0, sizeof(l->v[j])); /* moved into the set */
        set_upsert(w, &in);
    }
    int64_t rev = l->revision;
    discover_list_free(l);
    if (initial)
        push(w, DISCOVER_CURRENT, NULL);
    check_leader(w);
    store_watch_close(w->sw);
    w->sw = NULL;
    struct store_watch_opts wo = {.prefix = true, .start_revision = rev + 1};
    return store_watch_open(w->s, w->prefix, &wo, &w->sw, err);
}

int discover_watch_open(struct store *s, const char *service, struct discover_watch **out,
                        struct pier_err *err)
{
    int rc = discover_check_service(service, err);
    if (rc < 0)
        return rc;
    struct discover_watch *w = xcalloc(1, sizeof(*w));
    w->s = s;
    w->service = xstrdup(service);
    struct buf prefix = BUF_INIT;
    service_prefix(&prefix, service);
    w->prefix = buf_detach(&prefix);
    rc = resync(w, true, err);
    if (rc < 0) {
        discover_watch_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

static void apply(struct discover_watch *w, const struct store_events *evs)
{
    for (size_t i = 0; i < evs->n; i++) {
        const struct store_event *e = &evs->ev[i];
        size_t plen = strlen(w->prefix);
        if (e->kv.key_len <= plen || memcmp(e->kv.key, w->prefix, plen) != 0)
            continue; /* not one of ours: the watch is on this prefix */
        const char *id = e->kv.key + plen;
        if (e->type == STORE_EVENT_DELETE) {
            ssize_t at = find(w, id);
            if (at >= 0)
                set_remove(w, (size_t)at);
            continue;
        }
        struct discover_instance in;
        if (instance_from_kv(&e->kv, &in) < 0 || strcmp(in.id, id) != 0) {
            discover_instance_clear(&in);
            log_warn("discover", "skipping a malformed instance", "key=%s", e->kv.key);
            continue;
        }
        set_upsert(w, &in);
    }
    check_leader(w);
}

int discover_watch_next(struct discover_watch *w, int timeout_ms, struct discover_event **out,
                        struct pier_err *err)
{
    while (w->qhead == w->qlen) {
        if (!w->sw) {
            int rc = resync(w, false, err);
            if (rc < 0)
                return rc;
            continue;
        }
        struct store_events *evs = NULL;
        int rc = store_watch_next(w->sw, timeout_ms, &evs, err);
        if (rc == PIER_ECOMPACTED) {
            /* History we needed is gone: list again and send the difference. */
            store_watch_close(w->sw);
            w->sw = NULL;
            continue;
        }
        if (rc < 0)
            return rc;
        apply(w, evs);
        store_events_free(evs);
    }
    *out = w->queue[w->qhead++];
    return 0;
}

struct discover_instance *discover_watch_leader(struct discover_watch *w)
{
    if (!w->leader_id)
        return NULL;
    ssize_t i = find(w, w->leader_id);
    if (i < 0)
        return NULL;
    struct discover_instance *in = xcalloc(1, sizeof(*in));
    instance_copy(in, &w->set[i]);
    return in;
}

void discover_watch_close(struct discover_watch *w)
{
    if (!w)
        return;
    store_watch_close(w->sw);
    for (size_t i = 0; i < w->n; i++)
        discover_instance_clear(&w->set[i]);
    free(w->set);
    for (size_t i = w->qhead; i < w->qlen; i++)
        discover_event_free(w->queue[i]);
    free(w->queue);
    free(w->leader_id);
    free(w->service);
    free(w->prefix);
    free(w);
}

/* ---- discovery names in URLs ---- */

/* Where the pieces of a URL are: scheme [0, scheme), then "://", the
 * authority [auth, auth_end) holding user info [auth, host) and the host
 * [host, host_end), then ":port" up to auth_end; the rest follows. */
struct url_parts {
    size_t scheme, auth, host, host_end, auth_end;
};

static bool url_split(const char *url, struct url_parts *p)
{
    const char *sep = strstr(url, "://");
    if (!sep || sep == url)
        return false;
    size_t n = (size_t)(sep - url);
    for (size_t i = 0; i < n; i++) {
        char c = url[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool more = (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
        if (!alpha && !(i > 0 && more))
            return false;
    }
    p->scheme = n;
    p->auth = n + 3;
    p->auth_end = p->auth + strcspn(url + p->auth, "/?#");
    p->host = p->auth;
    for (size_t i = p->auth; i < p->auth_end; i++)
        if (url[i] == '@')
            p->host = i + 1;
    p->host_end = p->host;
    while (p->host_end < p->auth_end && url[p->host_end] != ':')
        p->host_end++;
    return true;
}

int discover_url_service(const char *url, char *service, size_t size, struct pier_err *err)
{
    struct url_parts p;
    if (!url_split(url, &p))
        return 0;
    const size_t dn = strlen(DISCOVER_URL_DOMAIN);
    size_t hn = p.host_end - p.host;
    if (hn <= dn || strncasecmp(url + p.host_end - dn, DISCOVER_URL_DOMAIN, dn) != 0)
        return 0;
    size_t sn = hn - dn;
    if (sn >= size || sn > 128)
        return err_set(err, PIER_EINVAL, "URL %.200s: the service name before %s is too long", url,
                       DISCOVER_URL_DOMAIN);
    for (size_t i = p.host_end + 1; i < p.auth_end; i++)
        if (url[i] < '0' || url[i] > '9' || i - p.host_end > 5)
            return err_set(err, PIER_EINVAL, "URL %.200s: the port is not a number", url);
    for (size_t i = 0; i < sn; i++) {
        char c = url[p.host + i];
        service[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    service[sn] = '\0';
    struct pier_err e = {0};
    if (discover_check_service(service, &e) < 0)
        return err_set(err, PIER_EINVAL, "URL %.200s: %s", url, e.msg);
    return 1;
}

char *discover_url_at(const char *url, const struct discover_instance *in)
{
    struct url_parts p = {0}, m;
    url_split(url, &p);
    struct buf b = BUF_INIT;
    const char *meta_url = json_string_value(json_object_get(in->meta, "url"));
    bool use_meta = meta_url && url_split(meta_url, &m) && m.host_end > m.host;
    buf_append(&b, use_meta ? meta_url : url, use_meta ? m.scheme : p.scheme);
    buf_puts(&b, "://");
    buf_append(&b, url + p.auth, p.host - p.auth); /* user info, with its '@' */
    if (use_meta)
        buf_append(&b, meta_url + m.host, m.auth_end - m.host);
    else
        buf_puts(&b, in->addr);
    buf_puts(&b, url + p.auth_end);
    return buf_detach(&b);
}

int discover_resolve_url(struct store *s, const char *url, char **out, struct pier_err *err)
{
    *out = NULL;
    char service[129];
    int rc = discover_url_service(url, service, sizeof(service), err);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        *out = xstrdup(url);
        return 0;
    }
    if (!s)
        return err_set(err, PIER_EINVAL,
                       "URL %.200s names service %s in discovery, and there is no store to "
                       "look it up in",
                       url, service);
    struct discover_list *l = NULL;
    struct pier_err e = {0};
    if ((rc = discover_list(s, service, &l, &e)) < 0)
        return err_set(err, rc, "looking service %s up in discovery: %s", service, e.msg);
    if (l->n == 0) {
        discover_list_free(l);
        return err_set(err, PIER_EUNAVAIL,
                       "no instance of service %s in discovery; is the %s running?", service,
                       service);
    }
    *out = discover_url_at(url, &l->v[0]);
    discover_list_free(l);
    return 0;
}
