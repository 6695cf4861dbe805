// fuzz-sources: src/router/table.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c src/lib/log.c
// fuzz-sources: src/lib/clock.c src/lib/base64.c
// fuzz-flags: -ljansson -lcrypto -lpthread
/* fuzz_sticky: the router's outside input that the routing table reads.
 * The first byte picks what the rest is:
 *   0  a Cookie field value for sticky_check; a cookie that checks must
 *      name a printable address that signs back to the same value
 *   1  a Host value and a path (the second byte sets the host's length) for
 *      rtable_match_http on a small fixed table, and an SNI name for
 *      rtable_tls_ctx; a match must be a route of that table whose path
 *      is a prefix of the request's (or its '/'-less form)
 *   2  a route record for the builder, then a table built, matched and
 *      dumped as JSON
 *   3  a discovery instance record for the builder, the same way
 *   4  an address to sign: sticky_value then sticky_check must round-trip
 * Beyond crashes and sanitizer reports it checks those properties. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "router/table.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_sticky: check failed: %s (line %d)\n", #cond, __LINE__);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint8_t key[STICKY_KEY_LEN];
static struct rtable_builder *fixed_b;
static struct rtable *fixed;

static void *fake_ctx(const char *cert, const char *k, struct pier_err *err)
{
    (void)k;
    (void)err;
    return strdup(cert);
}

static void route(struct rtable_builder *b, const char *id, const char *json)
{
    rtable_builder_route(b, id, json, strlen(json));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    memset(key, 0x2a, sizeof(key));
    fixed_b = rtable_builder_new(fake_ctx, free);
    route(fixed_b, "a", "{\"type\":\"http\",\"domain\":\"example.com\",\"service\":\"web\"}");
    route(fixed_b, "b",
          "{\"type\":\"http\",\"domain\":\"example.com\",\"path\":\"/api\","
          "\"service\":\"api\",\"tls_cert\":\"C\",\"tls_key\":\"K\"}");
    route(fixed_b, "c", "{\"type\":\"http\",\"domain\":\"*.example.com\",\"service\":\"w\"}");
    route(fixed_b, "d", "{\"type\":\"http\",\"domain\":\"[::1]\",\"service\":\"v6\"}");
    route(fixed_b, "e", "{\"type\":\"tcp\",\"port\":3000,\"service\":\"db\"}");
    const char *in = "{\"addr\":\"127.0.0.1:8080\"}";
    rtable_builder_instance(fixed_b, "web", "i1", in, strlen(in), 1);
    fixed = rtable_build(fixed_b, 1);
    return 0;
}

static void fuzz_cookie(const uint8_t *p, size_t n)
{
    char addr[256];
    if (!sticky_check(key, "web", (const char *)p, n, addr, sizeof(addr)))
        return;
    size_t al = strlen(addr);
    CHECK(al > 0 && al <= 255);
    for (size_t i = 0; i < al; i++)
        CHECK(addr[i] > ' ' && addr[i] < 0x7f);
    char v[STICKY_VALUE_MAX];
    sticky_value(key, "web", addr, v);
    CHECK(memmem(p, n, v, strlen(v))); /* the one value that names addr */
    CHECK(!sticky_check(key, "api", (const char *)p, n, addr, sizeof(addr)));
}

static void fuzz_match(const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    const char *host = (const char *)p + 1;
    size_t hl = p[0] % n; /* at most n - 1 */
    const char *path = host + hl;
    size_t pl = n - 1 - hl;
    const struct rroute *r = rtable_match_http(fixed, host, hl, path, pl);
    if (r) {
        CHECK(r->type == RROUTE_HTTP && r->svc);
        const char *q = memchr(path, '?', pl);
        size_t len = q ? (size_t)(q - path) : pl, rl = strlen(r->path);
        CHECK((len >= rl && memcmp(path, r->path, rl) == 0) ||
              (len == rl - 1 && memcmp(path, r->path, len) == 0));
        uint32_t rng = (uint32_t)n;
        struct rbackend *be = rtable_pick(r, NULL, 0, 0, &rng);
        CHECK(!be || strcmp(be->service, r->service) == 0);
    }
    char name[300];
    size_t nl = hl < sizeof(name) - 1 ? hl : sizeof(name) - 1;
    memcpy(name, host, nl);
    name[nl] = '\0';
    const char *ctx = rtable_tls_ctx(fixed, name);
    CHECK(!ctx || strcmp(ctx, "C") == 0);
}

static void fuzz_build(const uint8_t *p, size_t n, bool instance)
{
    struct rtable_builder *b = rtable_builder_new(fake_ctx, free);
    route(b, "base", "{\"type\":\"http\",\"domain\":\"example.com\",\"service\":\"s\"}");
    if (instance)
        rtable_builder_instance(b, "s", "x", (const char *)p, n, 5);
    else
        rtable_builder_route(b, "x", (const char *)p, n);
    struct rtable *t = rtable_build(b, 2);
    const struct rroute *r = rtable_match_http(t, "example.com", 11, "/", 1);
    CHECK(r);
    if (instance && r->svc->n) {
        CHECK(r->svc->n == 1);
        uint32_t rng = 1;
        CHECK(rtable_pick(r, NULL, 0, 0, &rng) == r->svc->v[0]);
    }
    json_t *j = rtable_json(t);
    CHECK(json_array_size(json_object_get(j, "routes")) >= 1);
    json_decref(j);
    size_t np = 0;
    const int *ports = rtable_tcp_ports(t, &np);
    for (size_t i = 0; i < np; i++)
        CHECK(ports[i] >= 1 && ports[i] <= 65535 && rtable_match_tcp(t, ports[i]));
    rtable_builder_free(b);
    rtable_unref(t);
}

static void fuzz_sign(const uint8_t *p, size_t n)
{
    char addr[256], got[256], v[STICKY_VALUE_MAX], cookie[STICKY_VALUE_MAX + 16];
    size_t al = n < 255 ? n : 255;
    for (size_t i = 0; i < al; i++)
        addr[i] = (char)(0x21 + p[i] % 94); /* printable, no blank */
    addr[al] = '\0';
    sticky_value(key, "svc", addr, v);
    if (al == 0)
        return;
    snprintf(cookie, sizeof(cookie), "x=y; _backend=%s", v);
    CHECK(sticky_check(key, "svc", cookie, strlen(cookie), got, sizeof(got)));
    CHECK(strcmp(got, addr) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 4096)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] % 5) {
    case 0: fuzz_cookie(p, n); break;
    case 1: fuzz_match(p, n); break;
    case 2: fuzz_build(p, n, false); break;
    case 3: fuzz_build(p, n, true); break;
    default: fuzz_sign(p, n); break;
    }
    return 0;
}
