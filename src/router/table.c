/* table: the routing table (table.h).
 *
 * A table is built whole from the builder's records and never changes
 * after: workers read it without locks. Its routes sit in one array, http
 * routes grouped by domain with the longest path first, then tcp routes by
 * port. An http lookup hashes the request's host (lower case, no port, no
 * trailing dot) into an open-addressing table of domains (FNV-1a, linear
 * probing) and walks that domain's few routes for the first path that is a
 * prefix of the request's; a miss retries with the wildcards "*.<suffix>"
 * from the most specific. Nothing is allocated on a lookup.
 *
 * Shared across tables (reference counted, since a table lives as long as
 * the last request routed with it): backends, so their counters carry
 * over, and TLS contexts, held by a small struct tls_holder that the
 * builder's cache and every table using it reference. */
#include "router/table.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define COMP "router"
#define HOST_MAX 253  /* the longest DNS name */
#define ADDR_MAX 255  /* DISCOVER_MAX_ADDR */
#define STICKY_MAC 16 /* bytes of the HMAC a cookie carries */

/* ---- small helpers ---- */

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static inline char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* Writes the lookup form of a host or domain into out: lower case, without
 * ":port", a trailing '.' or an IPv6 literal's brackets. Returns its
 * length, or -1 when it is empty or longer than HOST_MAX. *literal tells an
 * IPv6 literal (which has no wildcards). */
static int host_norm(const char *h, size_t n, char out[HOST_MAX + 1], bool *literal)
{
    *literal = false;
    if (n == 0)
        return -1;
    if (h[0] == '[') {
        const char *close = memchr(h, ']', n);
        if (!close)
            return -1;
        h++;
        n = (size_t)(close - h);
        *literal = true;
    } else {
        const char *colon = memchr(h, ':', n);
        if (colon && memchr(colon + 1, ':', n - (size_t)(colon + 1 - h)))
            *literal = true; /* a bare IPv6 address: no port to cut */
        else if (colon)
            n = (size_t)(colon - h);
        if (n > 0 && h[n - 1] == '.')
            n--;
    }
    if (n == 0 || n > HOST_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[i] = lower(h[i]);
    out[n] = '\0';
    return (int)n;
}

/* ---- a string-keyed map for the builder (linear probing) ---- */

struct smap_ent {
    char *key; /* owned; NULL: empty slot */
    uint64_t hash;
    void *val;
};

struct smap {
    struct smap_ent *e;
    size_t cap, n; /* cap: 0 or a power of two */
};

static struct smap_ent *smap_slot(const struct smap *m, const char *key, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask)
        if (!m->e[i].key || (m->e[i].hash == h && strcmp(m->e[i].key, key) == 0))
            return &m->e[i];
}

static void *smap_get(const struct smap *m, const char *key)
{
    if (m->n == 0)
        return NULL;
    struct smap_ent *e = smap_slot(m, key, fnv1a(key, strlen(key)));
    return e->key ? e->val : NULL;
}

static void smap_grow(struct smap *m)
{
    struct smap old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->e = xcalloc(m->cap, sizeof(*m->e));
    for (size_t i = 0; i < old.cap; i++)
        if (old.e[i].key)
            *smap_slot(m, old.e[i].key, old.e[i].hash) = old.e[i];
    free(old.e);
}

/* Sets key to val; returns the value it replaces (NULL when new). */
static void *smap_put(struct smap *m, const char *key, void *val)
{
    if ((m->n + 1) * 4 > m->cap * 3)
        smap_grow(m);
    uint64_t h = fnv1a(key, strlen(key));
    struct smap_ent *e = smap_slot(m, key, h);
    if (e->key) {
        void *old = e->val;
        e->val = val;
        return old;
    }
    *e = (struct smap_ent){xstrdup(key), h, val};
    m->n++;
    return NULL;
}

/* Removes key; returns its value (NULL when absent). Later entries of the
 * probe run shift back so that lookups never need tombstones. */
static void *smap_del(struct smap *m, const char *key)
{
    if (m->n == 0)
        return NULL;
    struct smap_ent *e = smap_slot(m, key, fnv1a(key, strlen(key)));
    if (!e->key)
        return NULL;
    void *val = e->val;
    free(e->key);
    size_t mask = m->cap - 1, i = (size_t)(e - m->e);
    for (size_t j = (i + 1) & mask; m->e[j].key; j = (j + 1) & mask) {
        size_t k = m->e[j].hash & mask; /* where entry j wants to be */
        bool stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
        if (!stays) {
            m->e[i] = m->e[j];
            i = j;
        }
    }
    m->e[i].key = NULL;
    m->n--;
    return val;
}

/* Empties m, calling drop on every value. */
static void smap_clear(struct smap *m, void (*drop)(void *))
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->e[i].key) {
            drop(m->e[i].val);
            free(m->e[i].key);
        }
    free(m->e);
    *m = (struct smap){0};
}

/* ---- backends and TLS holders ---- */

void rbackend_ref(struct rbackend *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void rbackend_unref(struct rbackend *b)
{
    if (!b || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(b->service);
    free(b->id);
    free(b->addr);
    free(b);
}

struct tls_holder {
    atomic_int refs;
    void *ctx; /* NULL when make_tls_ctx failed: kept so that it is not retried */
    void (*free_ctx)(void *ctx);
};

static void holder_unref(struct tls_holder *h)
{
    if (!h || atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (h->ctx && h->free_ctx)
        h->free_ctx(h->ctx);
    free(h);
}

/* ---- the table ---- */

struct rdomain {
    uint64_t hash;
    const char *name;
    size_t len;
    const struct rroute *v; /* n routes, the longest path first */
    const uint32_t *plen;   /* their paths' lengths */
    size_t n;
    void *tls_ctx;
};

struct rtable {
    atomic_int refs;
    int64_t revision;
    struct rroute *routes; /* http by domain and path length (desc), then tcp by port */
    uint32_t *plens;       /* the routes' path lengths */
    size_t n_routes;
    struct rservice *svcs;
    size_t n_svcs;
    struct rbackend **backends; /* every service's v, one after another */
    size_t n_backends;
    struct rdomain *doms;
    size_t n_doms;
    uint32_t *slots; /* index + 1 into doms, 0 for empty; mask + 1 of them */
    size_t mask;
    int *ports; /* n_tcp tcp ports, ascending, with their routes */
    const struct rroute **tcp;
    size_t n_tcp;
    struct tls_holder **holders;
    size_t n_holders;
    char *strs; /* every string of the table */
};

void rtable_ref(struct rtable *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void rtable_unref(struct rtable *t)
{
    if (!t || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < t->n_backends; i++)
        rbackend_unref(t->backends[i]);
    for (size_t i = 0; i < t->n_holders; i++)
        holder_unref(t->holders[i]);
    free(t->routes);
    free(t->plens);
    free(t->svcs);
    free(t->backends);
    free(t->doms);
    free(t->slots);
    free(t->ports);
    free(t->tcp);
    free(t->holders);
    free(t->strs);
    free(t);
}

int64_t rtable_revision(const struct rtable *t)
{
    return t->revision;
}

static const struct rdomain *dom_find(const struct rtable *t, const char *name, size_t len)
{
    if (t->n_doms == 0)
        return NULL;
    uint64_t h = fnv1a(name, len);
    for (size_t i = h & t->mask; t->slots[i]; i = (i + 1) & t->mask) {
        const struct rdomain *d = &t->doms[t->slots[i] - 1];
        if (d->hash == h && d->len == len && memcmp(d->name, name, len) == 0)
            return d;
    }
    return NULL;
}

/* The first (longest) route of d whose path is a prefix of path, where
 * "/api/" also takes "/api". */
static const struct rroute *dom_match(const struct rdomain *d, const char *path, size_t len)
{
    if (!d)
        return NULL;
    for (size_t i = 0; i < d->n; i++) {
        const struct rroute *r = &d->v[i];
        size_t pl = d->plen[i];
        if (len >= pl ? memcmp(path, r->path, pl) == 0
                      : len == pl - 1 && (len == 0 || memcmp(path, r->path, len) == 0))
            return r;
    }
    return NULL;
}

const struct rroute *rtable_match_http(const struct rtable *t, const char *host, size_t host_len,
                                       const char *path, size_t path_len)
{
    /* buf[0] is room for the '*' of the first wildcard; the host is at buf + 1. */
    char buf[HOST_MAX + 2];
    bool literal;
    int n = host_norm(host, host_len, buf + 1, &literal);
    if (n < 0 || t->n_doms == 0)
        return NULL;
    const char *q = path_len ? memchr(path, '?', path_len) : NULL;
    if (q)
        path_len = (size_t)(q - path);
    const struct rroute *r = dom_match(dom_find(t, buf + 1, (size_t)n), path, path_len);
    if (r || literal)
        return r;
    /* For each dot, left to right, "*" + the host from that dot: the '*'
     * overwrites the character before the dot, which no later (shorter)
     * suffix needs. */
    for (int i = 0; i < n; i++) {
        if (buf[1 + i] != '.')
            continue;
        buf[i] = '*';
        if ((r = dom_match(dom_find(t, buf + i, (size_t)(n - i + 1)), path, path_len)))
            return r;
    }
    return NULL;
}

const struct rroute *rtable_match_tcp(const struct rtable *t, int port)
{
    size_t lo = 0, hi = t->n_tcp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->ports[mid] == port)
            return t->tcp[mid];
        if (t->ports[mid] < port)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const int *rtable_tcp_ports(const struct rtable *t, size_t *n)
{
    *n = t->n_tcp;
    return t->ports;
}

void *rtable_tls_ctx(const struct rtable *t, const char *servername)
{
    char buf[HOST_MAX + 2];
    bool literal;
    int n = servername ? host_norm(servername, strlen(servername), buf + 1, &literal) : -1;
    if (n < 0)
        return NULL;
    const struct rdomain *d = dom_find(t, buf + 1, (size_t)n);
    if (d && d->tls_ctx)
        return d->tls_ctx;
    for (int i = 0; i < n && !literal; i++) {
        if (buf[1 + i] != '.')
            continue;
        buf[i] = '*';
        if ((d = dom_find(t, buf + i, (size_t)(n - i + 1))) && d->tls_ctx)
            return d->tls_ctx;
    }
    return NULL;
}

/* ---- picking a backend ---- */

static inline uint32_t xorshift32(uint32_t *s)
{
    uint32_t x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

static bool avoided(const struct rbackend *b, struct rbackend *const *avoid, size_t navoid)
{
    for (size_t i = 0; i < navoid; i++)
        if (avoid[i] == b)
            return true;
    return false;
}

static bool usable(const struct rbackend *b, struct rbackend *const *avoid, size_t navoid,
                   int64_t now_ms, bool down_ok)
{
    if (!down_ok && atomic_load_explicit(&b->down_until_ms, memory_order_relaxed) > now_ms)
        return false;
    return !avoided(b, avoid, navoid);
}

static struct rbackend *lesser(struct rbackend *a, struct rbackend *b)
{
    return atomic_load_explicit(&b->inflight, memory_order_relaxed) <
                   atomic_load_explicit(&a->inflight, memory_order_relaxed)
               ? b
               : a;
}

struct rbackend *rtable_pick(const struct rroute *r, struct rbackend *const *avoid, size_t navoid,
                             int64_t now_ms, uint32_t *rng)
{
    const struct rservice *s = r->svc;
    if (!s || s->n == 0)
        return NULL;
    if (r->leader || s->n == 1)
        return avoided(s->v[0], avoid, navoid) ? NULL : s->v[0];
    /* The common case first: two distinct random backends, both usable. */
    size_t n = s->n, i = xorshift32(rng) % n, j = xorshift32(rng) % (n - 1);
    j += j >= i;
    if (usable(s->v[i], avoid, navoid, now_ms, false) &&
        usable(s->v[j], avoid, navoid, now_ms, false))
        return lesser(s->v[i], s->v[j]);
    /* Else two random ones among the usable (up backends first, down ones
     * as the last resort). */
    for (int down_ok = 0; down_ok < 2; down_ok++) {
        size_t e = 0;
        for (size_t k = 0; k < n; k++)
            e += usable(s->v[k], avoid, navoid, now_ms, down_ok);
        if (e == 0)
            continue;
        size_t a = xorshift32(rng) % e, b = e > 1 ? xorshift32(rng) % (e - 1) : 0;
        b += b >= a;
        struct rbackend *pa = NULL, *pb = NULL;
        for (size_t k = 0, m = 0; k < n; k++) {
            if (!usable(s->v[k], avoid, navoid, now_ms, down_ok))
                continue;
            if (m == a)
                pa = s->v[k];
            if (m == b)
                pb = s->v[k];
            m++;
        }
        return pb ? lesser(pa, pb) : pa;
    }
    return NULL;
}

struct rbackend *rtable_find_backend(const struct rroute *r, const char *addr, size_t len)
{
    const struct rservice *s = r->svc;
    for (size_t i = 0; s && i < s->n; i++)
        if (strlen(s->v[i]->addr) == len && memcmp(s->v[i]->addr, addr, len) == 0)
            return s->v[i];
    return NULL;
}

/* ---- status ---- */

static json_t *backend_json(const struct rbackend *b, bool leader, int64_t now)
{
    return json_pack(
        "{s:s,s:s,s:i,s:I,s:I,s:b,s:b}", "addr", b->addr, "id", b->id, "inflight",
        atomic_load_explicit(&b->inflight, memory_order_relaxed), "requests",
        (json_int_t)atomic_load_explicit(&b->requests, memory_order_relaxed), "failures",
        (json_int_t)atomic_load_explicit(&b->failures, memory_order_relaxed), "down",
        atomic_load_explicit(&b->down_until_ms, memory_order_relaxed) > now, "leader", leader);
}

json_t *rtable_json(const struct rtable *t)
{
    int64_t now = clock_now_ms();
    json_t *routes = json_array();
    for (size_t i = 0; i < t->n_routes; i++) {
        const struct rroute *r = &t->routes[i];
        bool http = r->type == RROUTE_HTTP;
        json_t *bs = json_array();
        for (size_t k = 0; k < r->svc->n; k++)
            json_array_append_new(bs, backend_json(r->svc->v[k], k == 0, now));
        json_array_append_new(
            routes,
            json_pack("{s:s,s:s,s:s?,s:s?,s:o,s:s,s:b,s:b,s:b,s:b,s:b,s:o}", "id", r->id, "type",
                      http ? "http" : "tcp", "domain", http ? r->domain : NULL, "path",
                      http ? r->path : NULL, "port", http ? json_null() : json_integer(r->port),
                      "service", r->service, "sticky", r->sticky, "leader", r->leader,
                      "drain_backends", r->drain_backends, "disable_keep_alives",
                      r->disable_keep_alives, "tls", r->tls_ctx != NULL, "backends", bs));
    }
    return json_pack("{s:I,s:o}", "revision", (json_int_t)t->revision, "routes", routes);
}

/* ---- the builder's records ---- */

struct broute {
    enum rroute_type type;
    char *domain, *path, *service; /* domain and path: http only */
    size_t domain_len, path_len, service_len;
    int port;
    bool sticky, leader, drain_backends, disable_keep_alives;
    char *cert, *key; /* NULL: none */
    uint8_t cert_sum[32];
};

struct binst {
    char *service;
    int64_t create_revision;
    struct rbackend *b; /* one reference, the builder's */
};

/* A service's instances, oldest first (v[0] leads), kept in order as they
 * come and go so that a build only copies them. */
struct bsvc {
    struct binst **v; /* borrowed from insts */
    size_t n, cap;
};

/* The routes in table order, remade only when a route changed. */
struct plan_ent {
    const char *id; /* the routes map's key */
    size_t id_len;
    const struct broute *r;
    size_t svc; /* index into plan_svcs */
};

struct tcache {
    struct tls_holder *h; /* one reference, the cache's */
    uint8_t sum[32];      /* of the cert and key it was made from */
    uint64_t seen;        /* the build that last used it */
};

struct rtable_builder {
    struct smap routes;    /* route id -> struct broute */
    struct smap insts;     /* "service/id" -> struct binst */
    struct smap old_insts; /* after a clear, until the next build: backends to reuse */
    struct smap svcs;      /* service name -> struct bsvc */
    struct smap tls;       /* route id -> struct tcache */
    bool plan_ok;          /* plan matches routes */
    struct plan_ent *plan;
    size_t n_plan;
    const char **plan_svcs; /* the services the routes name (borrowed from them) */
    size_t n_plan_svcs;
    size_t plan_strs; /* bytes of strings a table needs */
    uint64_t builds;
    void *(*make_tls_ctx)(const char *cert, const char *key, struct pier_err *err);
    void (*free_tls_ctx)(void *ctx);
};

static void broute_free(void *p)
{
    struct broute *r = p;
    if (!r)
        return;
    free(r->domain);
    free(r->path);
    free(r->service);
    free(r->cert);
    free(r->key);
    free(r);
}

static void binst_free(void *p)
{
    struct binst *in = p;
    if (!in)
        return;
    rbackend_unref(in->b);
    free(in->service);
    free(in);
}

/* Tells the workers that b left discovery: they close their idle
 * connections to it (its in-flight requests finish). */
static void backend_gone(struct rbackend *b)
{
    atomic_store_explicit(&b->gone, true, memory_order_relaxed);
}

/* After a fresh listing: the backends of instances that did not come back
 * are gone. */
static void old_insts_drop(struct rtable_builder *b)
{
    for (size_t i = 0; i < b->old_insts.cap; i++) {
        if (!b->old_insts.e[i].key)
            continue;
        struct binst *was = b->old_insts.e[i].val;
        struct binst *now = smap_get(&b->insts, b->old_insts.e[i].key);
        if (!now || now->b != was->b)
            backend_gone(was->b);
    }
    smap_clear(&b->old_insts, binst_free);
}

static void bsvc_free(void *p)
{
    struct bsvc *s = p;
    if (s)
        free(s->v);
    free(s);
}

static void tcache_free(void *p)
{
    struct tcache *c = p;
    if (c)
        holder_unref(c->h);
    free(c);
}

static void drop_nothing(void *p)
{
    (void)p;
}

struct rtable_builder *rtable_builder_new(void *(*make_tls_ctx)(const char *cert, const char *key,
                                                                struct pier_err *err),
                                          void (*free_tls_ctx)(void *ctx))
{
    struct rtable_builder *b = xcalloc(1, sizeof(*b));
    b->make_tls_ctx = make_tls_ctx;
    b->free_tls_ctx = free_tls_ctx;
    return b;
}

void rtable_builder_free(struct rtable_builder *b)
{
    if (!b)
        return;
    smap_clear(&b->routes, broute_free);
    smap_clear(&b->svcs, bsvc_free);
    smap_clear(&b->insts, binst_free);
    smap_clear(&b->old_insts, binst_free);
    smap_clear(&b->tls, tcache_free);
    free(b->plan);
    free(b->plan_svcs);
    free(b);
}

/* An optional boolean field: absent or null is false, another type an error. */
static int get_flag(const json_t *j, const char *field, bool *out, struct pier_err *err)
{
    *out = false;
    return jsonx_get_bool(j, field, out, err);
}

/* The certificate of an http route, from "certificate" {cert, key} or the
 * older tls_cert and tls_key. Both halves or none. */
static void route_cert(const json_t *j, struct broute *r)
{
    const json_t *co = json_object_get(j, "certificate");
    const char *cert = json_string_value(json_object_get(co, "cert"));
    const char *key = json_string_value(json_object_get(co, "key"));
    if (!cert || !*cert || !key || !*key) {
        cert = json_string_value(json_object_get(j, "tls_cert"));
        key = json_string_value(json_object_get(j, "tls_key"));
    }
    if (!cert || !*cert || !key || !*key)
        return;
    r->cert = xstrdup(cert);
    r->key = xstrdup(key);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned len = 0;
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(md, cert, strlen(cert) + 1) ||
        !EVP_DigestUpdate(md, key, strlen(key) + 1) || !EVP_DigestFinal_ex(md, r->cert_sum, &len))
        abort();
    EVP_MD_CTX_free(md);
}

static int route_parse(const char *value, size_t len, struct broute **out, struct pier_err *err)
{
    cleanup_json json_t *j = NULL;
    const char *type = NULL, *service = NULL, *domain = NULL, *path = "/";
    int64_t port = 0;
    int rc;
    if ((rc = jsonx_parse_object(value, len, &j, err)) < 0 ||
        (rc = jsonx_get_str(j, "type", &type, err)) < 0 ||
        (rc = jsonx_get_str(j, "service", &service, err)) < 0 ||
        (rc = jsonx_get_str(j, "domain", &domain, err)) < 0 ||
        (rc = jsonx_get_str(j, "path", &path, err)) < 0 ||
        (rc = jsonx_get_int64(j, "port", &port, err)) < 0)
        return rc;
    bool http = type && strcmp(type, "http") == 0;
    if (!http && (!type || strcmp(type, "tcp") != 0))
        return err_set(err, PIER_EINVAL, "type must be \"http\" or \"tcp\"");
    if (!service || !*service)
        return err_set(err, PIER_EINVAL, "no service");
    char dom[HOST_MAX + 1];
    bool literal;
    if (http && (!domain || host_norm(domain, strlen(domain), dom, &literal) < 0))
        return err_set(err, PIER_EINVAL, "an http route needs a domain of 1-%d bytes", HOST_MAX);
    if (http && (!path || path[0] != '/'))
        return err_set(err, PIER_EINVAL, "path must start with /");
    if (!http && (port < 1 || port > 65535))
        return err_set(err, PIER_EINVAL, "a tcp route needs a port in 1-65535");
    struct broute *r = xcalloc(1, sizeof(*r));
    if ((rc = get_flag(j, "sticky", &r->sticky, err)) < 0 ||
        (rc = get_flag(j, "leader", &r->leader, err)) < 0 ||
        (rc = get_flag(j, "drain_backends", &r->drain_backends, err)) < 0 ||
        (rc = get_flag(j, "disable_keep_alives", &r->disable_keep_alives, err)) < 0) {
        free(r);
        return rc;
    }
    r->type = http ? RROUTE_HTTP : RROUTE_TCP;
    r->service = xstrdup(service);
    r->service_len = strlen(service);
    if (http) {
        r->domain = xstrdup(dom);
        r->domain_len = strlen(dom);
        struct buf p = BUF_INIT;
        buf_puts(&p, path);
        if (p.p[p.len - 1] != '/')
            buf_putc(&p, '/');
        r->path_len = p.len;
        r->path = buf_detach(&p);
        route_cert(j, r);
    } else {
        r->port = (int)port;
    }
    *out = r;
    return 0;
}

void rtable_builder_route(struct rtable_builder *b, const char *id, const char *value, size_t len)
{
    struct broute *r = NULL;
    struct pier_err err = {0};
    if (value && route_parse(value, len, &r, &err) < 0)
        log_warn(COMP, "route record ignored", "id=%s reason=\"%s\"", id, err.msg);
    broute_free(r ? smap_put(&b->routes, id, r) : smap_del(&b->routes, id));
    b->plan_ok = false;
}

/* Reads a numeric "ip:port" or "[ip6]:port" (no names: no DNS here). */
static int addr_parse(const char *addr, struct sockaddr_storage *ss, socklen_t *salen)
{
    char host[INET6_ADDRSTRLEN];
    const char *colon, *h = addr;
    size_t hl;
    bool v6 = addr[0] == '[';
    if (v6) {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return -1;
        h = addr + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strchr(addr, ':');
        if (!colon || strchr(colon + 1, ':'))
            return -1;
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= sizeof(host))
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    long port = 0;
    const char *p = colon + 1;
    for (; *p >= '0' && *p <= '9' && port <= 65535; p++)
        port = port * 10 + (*p - '0');
    if (*p || p == colon + 1 || port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *salen = sizeof(*s6);
        return inet_pton(AF_INET6, host, &s6->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    *salen = sizeof(*s4);
    return inet_pton(AF_INET, host, &s4->sin_addr) == 1 ? 0 : -1;
}

/* Orders a service's instances: oldest first, ties by id. */
static int binst_cmp(const struct binst *a, const struct binst *b)
{
    if (a->create_revision != b->create_revision)
        return a->create_revision < b->create_revision ? -1 : 1;
    return strcmp(a->b->id, b->b->id);
}

static void bsvc_add(struct rtable_builder *b, struct binst *in)
{
    struct bsvc *s = smap_get(&b->svcs, in->service);
    if (!s) {
        s = xcalloc(1, sizeof(*s));
        smap_put(&b->svcs, in->service, s);
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    size_t i = s->n++; /* from the back: a new instance is usually the youngest */
    for (; i > 0 && binst_cmp(s->v[i - 1], in) > 0; i--)
        s->v[i] = s->v[i - 1];
    s->v[i] = in;
}

static void bsvc_remove(struct rtable_builder *b, const struct binst *in)
{
    struct bsvc *s = smap_get(&b->svcs, in->service);
    for (size_t i = 0; s && i < s->n; i++) {
        if (s->v[i] != in)
            continue;
        memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(*s->v));
        if (--s->n == 0)
            bsvc_free(smap_del(&b->svcs, in->service));
        return;
    }
}

/* The instance's backend: the one it had before (in insts or, after a
 * clear, old_insts) when its addr is the same, else a new one. */
static struct rbackend *inst_backend(struct rtable_builder *b, const char *key, const char *service,
                                     const char *id, const char *addr,
                                     const struct sockaddr_storage *ss, socklen_t salen)
{
    struct binst *prev = smap_get(&b->insts, key);
    if (!prev)
        prev = smap_get(&b->old_insts, key);
    if (prev && strcmp(prev->b->addr, addr) == 0) {
        rbackend_ref(prev->b);
        return prev->b;
    }
    struct rbackend *be = xcalloc(1, sizeof(*be));
    atomic_init(&be->refs, 1);
    be->service = xstrdup(service);
    be->id = xstrdup(id);
    be->addr = xstrdup(addr);
    be->sa = *ss;
    be->salen = salen;
    atomic_init(&be->inflight, 0);
    atomic_init(&be->down_until_ms, 0);
    atomic_init(&be->requests, 0);
    atomic_init(&be->failures, 0);
    return be;
}

void rtable_builder_instance(struct rtable_builder *b, const char *service, const char *id,
                             const char *value, size_t len, int64_t create_revision)
{
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s/%s", service, id);
    struct binst *in = NULL;
    if (value) {
        cleanup_json json_t *j = NULL;
        struct pier_err err = {0};
        const char *addr = NULL;
        struct sockaddr_storage ss;
        socklen_t salen = 0;
        if (jsonx_parse_object(value, len, &j, &err) < 0 ||
            jsonx_get_str(j, "addr", &addr, &err) < 0)
            log_warn(COMP, "instance record ignored", "service=%s id=%s reason=\"%s\"", service, id,
                     err.msg);
        else if (!addr || strlen(addr) > ADDR_MAX || addr_parse(addr, &ss, &salen) < 0)
            log_warn(COMP, "instance record ignored", "service=%s id=%s reason=\"%s\"", service, id,
                     "addr is not a numeric ip:port");
        else {
            in = xcalloc(1, sizeof(*in));
            in->service = xstrdup(service);
            in->create_revision = create_revision;
            in->b = inst_backend(b, key.p, service, id, addr, &ss, salen);
        }
    }
    struct binst *old = in ? smap_put(&b->insts, key.p, in) : smap_del(&b->insts, key.p);
    if (old && (!in || in->b != old->b))
        backend_gone(old->b);
    if (old)
        bsvc_remove(b, old);
    if (in)
        bsvc_add(b, in);
    binst_free(old);
}

void rtable_builder_clear_routes(struct rtable_builder *b)
{
    smap_clear(&b->routes, broute_free);
    b->plan_ok = false;
}

void rtable_builder_clear_instances(struct rtable_builder *b)
{
    /* The records go, but their backends wait in old_insts for the listing
     * that follows, so an instance still there keeps its counters. */
    smap_clear(&b->svcs, bsvc_free);
    smap_clear(&b->old_insts, binst_free);
    b->old_insts = b->insts;
    b->insts = (struct smap){0};
}

/* ---- building ---- */

static int plan_cmp(const void *pa, const void *pb)
{
    const struct plan_ent *a = pa, *b = pb;
    if (a->r->type != b->r->type)
        return a->r->type == RROUTE_HTTP ? -1 : 1;
    int c;
    if (a->r->type == RROUTE_HTTP) {
        if ((c = strcmp(a->r->domain, b->r->domain)))
            return c;
        if (a->r->path_len != b->r->path_len)
            return a->r->path_len > b->r->path_len ? -1 : 1;
        if ((c = strcmp(a->r->path, b->r->path)))
            return c;
    } else if (a->r->port != b->r->port) {
        return a->r->port < b->r->port ? -1 : 1;
    }
    return strcmp(a->id, b->id);
}

/* Sorts the routes in table order and numbers the services they name. */
static void plan_make(struct rtable_builder *b)
{
    free(b->plan);
    free(b->plan_svcs);
    b->plan = xcalloc(b->routes.n + 1, sizeof(*b->plan));
    b->plan_svcs = xcalloc(b->routes.n + 1, sizeof(*b->plan_svcs));
    b->n_plan = b->n_plan_svcs = 0;
    for (size_t i = 0; i < b->routes.cap; i++)
        if (b->routes.e[i].key)
            b->plan[b->n_plan++] = (struct plan_ent){b->routes.e[i].key, strlen(b->routes.e[i].key),
                                                     b->routes.e[i].val, 0};
    qsort(b->plan, b->n_plan, sizeof(*b->plan), plan_cmp);
    struct smap names = {0}; /* service name -> index + 1 */
    size_t size = 1;
    for (size_t i = 0; i < b->n_plan; i++) {
        struct plan_ent *e = &b->plan[i];
        uintptr_t k = (uintptr_t)smap_get(&names, e->r->service);
        if (!k) {
            b->plan_svcs[b->n_plan_svcs++] = e->r->service;
            k = b->n_plan_svcs;
            smap_put(&names, e->r->service, (void *)k);
            size += e->r->service_len + 1;
        }
        e->svc = k - 1;
        size += e->id_len + e->r->domain_len + e->r->path_len + 3;
    }
    smap_clear(&names, drop_nothing); /* the values are indexes, not pointers */
    b->plan_strs = size;
    b->plan_ok = true;
}

/* A bump allocator over one block sized beforehand. */
struct strs {
    char *p;
    size_t used;
};

static char *strs_dup(struct strs *s, const char *v, size_t n)
{
    char *out = s->p + s->used;
    if (n)
        memcpy(out, v, n);
    out[n] = '\0';
    s->used += n + 1;
    return out;
}

/* The table's TLS holder for route id (a new reference), from the cache
 * when its certificate is unchanged; NULL without a certificate. */
static struct tls_holder *route_tls(struct rtable_builder *b, const char *id,
                                    const struct broute *r)
{
    if (!r->cert || !b->make_tls_ctx)
        return NULL;
    struct tcache *c = smap_get(&b->tls, id);
    if (!c || memcmp(c->sum, r->cert_sum, sizeof(c->sum)) != 0) {
        struct tls_holder *h = xcalloc(1, sizeof(*h));
        atomic_init(&h->refs, 1);
        h->free_ctx = b->free_tls_ctx;
        struct pier_err err = {0};
        h->ctx = b->make_tls_ctx(r->cert, r->key, &err);
        if (!h->ctx)
            log_warn(COMP, "route certificate unusable; serving the default one",
                     "id=%s domain=%s reason=\"%s\"", id, r->domain, err.msg);
        if (!c) {
            c = xcalloc(1, sizeof(*c));
            smap_put(&b->tls, id, c);
        }
        holder_unref(c->h);
        c->h = h;
        memcpy(c->sum, r->cert_sum, sizeof(c->sum));
    }
    c->seen = b->builds;
    atomic_fetch_add_explicit(&c->h->refs, 1, memory_order_relaxed);
    return c->h;
}

/* Drops cached contexts of routes gone or changed to no certificate. */
static void tls_prune(struct rtable_builder *b)
{
    char **gone = xcalloc(b->tls.n + 1, sizeof(*gone));
    size_t n = 0;
    for (size_t i = 0; i < b->tls.cap; i++)
        if (b->tls.e[i].key && ((struct tcache *)b->tls.e[i].val)->seen != b->builds)
            gone[n++] = xstrdup(b->tls.e[i].key);
    for (size_t i = 0; i < n; i++) {
        tcache_free(smap_del(&b->tls, gone[i]));
        free(gone[i]);
    }
    free(gone);
}

/* The services the routes name, each with its instances oldest first. */
static void build_services(struct rtable_builder *b, struct rtable *t, struct strs *strs)
{
    const struct bsvc **found = xcalloc(b->n_plan_svcs + 1, sizeof(*found));
    size_t n = 0;
    for (size_t i = 0; i < b->n_plan_svcs; i++)
        if ((found[i] = smap_get(&b->svcs, b->plan_svcs[i])))
            n += found[i]->n;
    t->svcs = xcalloc(b->n_plan_svcs + 1, sizeof(*t->svcs));
    t->n_svcs = b->n_plan_svcs;
    t->backends = xcalloc(n + 1, sizeof(*t->backends));
    t->n_backends = n;
    size_t off = 0;
    for (size_t i = 0; i < t->n_svcs; i++) {
        struct rservice *s = &t->svcs[i];
        s->name = strs_dup(strs, b->plan_svcs[i], strlen(b->plan_svcs[i]));
        s->v = t->backends + off; /* never NULL, even when empty */
        for (size_t k = 0; found[i] && k < found[i]->n; k++) {
            s->v[s->n++] = found[i]->v[k]->b;
            rbackend_ref(found[i]->v[k]->b);
        }
        off += s->n;
    }
    free(found);
}

/* The domain index over the http routes (contiguous, grouped by domain). */
static void build_domains(struct rtable *t)
{
    size_t nd = 0;
    for (size_t i = 0; i < t->n_routes && t->routes[i].type == RROUTE_HTTP; i++)
        nd += i == 0 || strcmp(t->routes[i].domain, t->routes[i - 1].domain) != 0;
    t->doms = xcalloc(nd + 1, sizeof(*t->doms));
    size_t cap = 16;
    while (cap < nd * 2)
        cap *= 2;
    t->slots = xcalloc(cap, sizeof(*t->slots));
    t->mask = cap - 1;
    for (size_t i = 0; i < t->n_routes && t->routes[i].type == RROUTE_HTTP; i++) {
        const struct rroute *r = &t->routes[i];
        bool first = i == 0 || strcmp(r->domain, t->routes[i - 1].domain) != 0;
        struct rdomain *d = &t->doms[first ? t->n_doms++ : t->n_doms - 1];
        if (first) {
            *d = (struct rdomain){
                .name = r->domain, .len = strlen(r->domain), .v = r, .plen = &t->plens[i]};
            d->hash = fnv1a(d->name, d->len);
            size_t s = d->hash & t->mask;
            while (t->slots[s])
                s = (s + 1) & t->mask;
            t->slots[s] = (uint32_t)t->n_doms;
        }
        d->n++;
        /* The certificate for the domain is that of its shortest path that
         * has one ("/" when it does): paths come longest first. */
        if (r->tls_ctx)
            d->tls_ctx = r->tls_ctx;
    }
}

static void build_tcp(struct rtable *t)
{
    t->ports = xcalloc(t->n_routes + 1, sizeof(*t->ports));
    t->tcp = xcalloc(t->n_routes + 1, sizeof(*t->tcp));
    for (size_t i = 0; i < t->n_routes; i++) {
        const struct rroute *r = &t->routes[i];
        if (r->type != RROUTE_TCP || (t->n_tcp > 0 && t->ports[t->n_tcp - 1] == r->port))
            continue; /* two routes on one port: the first id has it */
        t->ports[t->n_tcp] = r->port;
        t->tcp[t->n_tcp++] = r;
    }
}

struct rtable *rtable_build(struct rtable_builder *b, int64_t revision)
{
    b->builds++;
    old_insts_drop(b);
    if (!b->plan_ok)
        plan_make(b);
    struct rtable *t = xcalloc(1, sizeof(*t));
    atomic_init(&t->refs, 1);
    t->revision = revision;
    struct strs strs = {xmalloc(b->plan_strs), 0};
    t->strs = strs.p;
    build_services(b, t, &strs);
    size_t n = b->n_plan;
    t->routes = xcalloc(n + 1, sizeof(*t->routes));
    t->plens = xcalloc(n + 1, sizeof(*t->plens));
    t->holders = xcalloc(n + 1, sizeof(*t->holders));
    for (size_t i = 0; i < n; i++) {
        const struct plan_ent *e = &b->plan[i];
        const struct broute *br = e->r;
        struct rroute *r = &t->routes[t->n_routes++];
        r->id = strs_dup(&strs, e->id, e->id_len);
        r->type = br->type;
        r->domain = strs_dup(&strs, br->domain, br->domain_len);
        r->path = strs_dup(&strs, br->path, br->path_len);
        t->plens[i] = (uint32_t)br->path_len;
        r->port = br->port;
        r->svc = &t->svcs[e->svc];
        r->service = r->svc->name;
        r->sticky = br->sticky;
        r->leader = br->leader;
        r->drain_backends = br->drain_backends;
        r->disable_keep_alives = br->disable_keep_alives;
        struct tls_holder *h = route_tls(b, e->id, br);
        if (h) {
            t->holders[t->n_holders++] = h;
            r->tls_ctx = h->ctx;
        }
    }
    build_domains(t);
    build_tcp(t);
    tls_prune(b);
    smap_clear(&b->old_insts, binst_free);
    return t;
}

/* ---- sticky sessions ---- */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Writes the unpadded base64url of in[0..n) at out; returns its length. */
static size_t b64url_encode(char *out, const uint8_t *in, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        for (size_t k = 0; k < chars; k++)
            out[o++] = b64url[(v >> (18 - 6 * k)) & 63];
    }
    return o;
}

static int b64url_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '-' ? 62 : c == '_' ? 63 : -1;
}

/* Decodes unpadded base64url into out (cap bytes); the length or -1. Bits
 * left over in the last character must be zero (one encoding per value). */
static int b64url_decode(uint8_t *out, size_t cap, const char *in, size_t n)
{
    if (n % 4 == 1 || (n / 4) * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (acc & ((1u << bits) - 1)) ? -1 : (int)o;
}

static void sticky_mac(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *addr,
                       size_t addr_len, uint8_t mac[EVP_MAX_MD_SIZE])
{
    char stack[512];
    size_t sl = strlen(service), n = sl + 1 + addr_len;
    char *msg = n <= sizeof(stack) ? stack : xmalloc(n);
    memcpy(msg, service, sl);
    msg[sl] = '\n';
    memcpy(msg + sl + 1, addr, addr_len);
    unsigned len = 0;
    if (!HMAC(EVP_sha256(), key, STICKY_KEY_LEN, (const uint8_t *)msg, n, mac, &len))
        abort();
    if (msg != stack)
        free(msg);
}

void sticky_value(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *addr,
                  char out[STICKY_VALUE_MAX])
{
    size_t n = strlen(addr);
    out[0] = '\0';
    if (n > ADDR_MAX)
        return;
    uint8_t mac[EVP_MAX_MD_SIZE];
    sticky_mac(key, service, addr, n, mac);
    size_t o = b64url_encode(out, (const uint8_t *)addr, n);
    out[o++] = '.';
    o += b64url_encode(out + o, mac, STICKY_MAC);
    out[o] = '\0';
}

/* Checks one cookie value: "<b64url addr>.<b64url mac>". */
static bool sticky_one(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *v,
                       size_t n, char *addr_out, size_t addr_cap)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    const char *dot = memchr(v, '.', n);
    if (!dot)
        return false;
    uint8_t addr[ADDR_MAX], mac[STICKY_MAC], want[EVP_MAX_MD_SIZE];
    int al = b64url_decode(addr, sizeof(addr), v, (size_t)(dot - v));
    if (al <= 0 || (size_t)al >= addr_cap ||
        b64url_decode(mac, sizeof(mac), dot + 1, n - (size_t)(dot + 1 - v)) != STICKY_MAC)
        return false;
    for (int i = 0; i < al; i++)
        if (addr[i] <= ' ' || addr[i] >= 0x7f)
            return false;
    sticky_mac(key, service, (const char *)addr, (size_t)al, want);
    if (CRYPTO_memcmp(mac, want, STICKY_MAC) != 0)
        return false;
    memcpy(addr_out, addr, (size_t)al);
    addr_out[al] = '\0';
    return true;
}

bool sticky_check(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *cookie,
                  size_t cookie_len, char *addr_out, size_t addr_cap)
{
    static const char name[] = STICKY_COOKIE;
    const size_t nl = sizeof(name) - 1;
    const char *p = cookie, *end = cookie + cookie_len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *e = semi ? semi : end;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const char *ve = e;
        while (ve > p && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if ((size_t)(ve - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=' &&
            sticky_one(key, service, p + nl + 1, (size_t)(ve - p - nl - 1), addr_out, addr_cap))
            return true;
        p = e + 1;
    }
    return false;
}
