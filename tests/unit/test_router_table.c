/* The router's routing table (router/table.h) and its sync from a real
 * `pierd store` (router/sync.h; the build's pierd, or $PIER_BUILD_DIR's). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "lib/store.h"
#include "router/sync.h"
#include "router/table.h"

/* ---- a fake TLS context maker that counts ---- */

static int tls_calls, tls_made, tls_freed;

static void *fake_make(const char *cert, const char *key, struct pier_err *err)
{
    (void)key;
    tls_calls++;
    if (strcmp(cert, "bad") == 0) {
        err_set(err, PIER_EINVAL, "not a certificate");
        return NULL;
    }
    tls_made++;
    return xstrdup(cert); /* the "context" names its certificate */
}

static void fake_free(void *ctx)
{
    tls_freed++;
    free(ctx);
}

/* ---- helpers ---- */

static void put_route(struct rtable_builder *b, const char *id, const char *json)
{
    rtable_builder_route(b, id, json, strlen(json));
}

static void http_route(struct rtable_builder *b, const char *id, const char *domain,
                       const char *path, const char *service)
{
    struct buf j = BUF_INIT;
    buf_printf(&j, "{\"type\":\"http\",\"domain\":\"%s\",\"path\":\"%s\",\"service\":\"%s\"}",
               domain, path, service);
    put_route(b, id, j.p);
    buf_free(&j);
}

static void instance(struct rtable_builder *b, const char *service, const char *id,
                     const char *addr, int64_t crev)
{
    struct buf j = BUF_INIT;
    buf_printf(&j, "{\"id\":\"%s\",\"service\":\"%s\",\"addr\":\"%s\",\"proto\":\"tcp\"}", id,
               service, addr);
    rtable_builder_instance(b, service, id, j.p, j.len, crev);
    buf_free(&j);
}

static const char *match(const struct rtable *t, const char *host, const char *path)
{
    const struct rroute *r = rtable_match_http(t, host, strlen(host), path, strlen(path));
    return r ? r->id : NULL;
}

#define assert_match(t, host, path, id)                                                            \
    do {                                                                                           \
        const char *got_ = match(t, host, path);                                                   \
        if ((id) == NULL)                                                                          \
            assert_null(got_);                                                                     \
        else {                                                                                     \
            assert_non_null(got_);                                                                 \
            assert_string_equal(got_, (const char *)(id));                                         \
        }                                                                                          \
    } while (0)

static const struct rroute *route_by_id(const struct rtable *t, const char *host, const char *path)
{
    return rtable_match_http(t, host, strlen(host), path, strlen(path));
}

/* ---- matching ---- */

static void test_match_precedence(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    http_route(b, "root", "example.com", "/", "a");
    http_route(b, "api", "example.com", "/api/", "b");
    http_route(b, "apiv2", "example.com", "/api/v2", "b"); /* stored without its '/' */
    http_route(b, "wild", "*.example.com", "/", "c");
    http_route(b, "wildb", "*.b.example.com", "/x/", "d");
    http_route(b, "com", "*.com", "/", "e");
    http_route(b, "only", "api.example.com", "/v2/", "f");
    http_route(b, "upper", "Upper.Example.ORG.", "/p", "g");
    http_route(b, "v6", "[::1]", "/", "h");
    struct rtable *t = rtable_build(b, 7);
    assert_int_equal(rtable_revision(t), 7);

    assert_match(t, "example.com", "/", "root");
    assert_match(t, "example.com", "", "root");
    assert_string_equal(rtable_match_http(t, "example.com", 11, NULL, 0)->id, "root");
    assert_null(rtable_match_http(t, NULL, 0, "/", 1));
    assert_match(t, "example.com", "/api", "api");
    assert_match(t, "example.com", "/api/", "api");
    assert_match(t, "example.com", "/api/x", "api");
    assert_match(t, "example.com", "/api/v2", "apiv2");
    assert_match(t, "example.com", "/api/v2/y", "apiv2");
    assert_match(t, "example.com", "/api/v22", "api");
    assert_match(t, "example.com", "/apix", "root");
    assert_match(t, "example.com", "/ap", "root");
    assert_match(t, "example.com", "/api?x=1", "api");
    /* case, port, trailing dot */
    assert_match(t, "EXAMPLE.Com:8080", "/api", "api");
    assert_match(t, "example.com.", "/", "root");
    assert_match(t, "example.com.:80", "/api/", "api");
    /* wildcards, most specific first; never the bare domain */
    assert_match(t, "a.example.com", "/", "wild");
    assert_match(t, "q.b.example.com", "/x/1", "wildb");
    assert_match(t, "q.b.example.com", "/x", "wildb");
    assert_match(t, "q.b.example.com", "/y", "wild");
    assert_match(t, "b.example.com", "/x/", "wild");
    assert_match(t, "deep.a.b.example.com", "/x/", "wildb");
    assert_match(t, "foo.com", "/", "com");
    assert_match(t, "com", "/", NULL);
    assert_match(t, "example.net", "/", NULL);
    /* an exact domain without a matching path falls to the wildcards */
    assert_match(t, "api.example.com", "/v2/a", "only");
    assert_match(t, "api.example.com", "/", "wild");
    /* the route's domain is normalized as the host is */
    assert_match(t, "upper.example.org", "/p", "upper");
    assert_match(t, "upper.example.org", "/q", NULL);
    /* IPv6 literals, with and without a port */
    assert_match(t, "[::1]:8080", "/", "v6");
    assert_match(t, "[::1]", "/a", "v6");
    assert_match(t, "[::1", "/", NULL);
    /* empty and too long hosts */
    assert_match(t, "", "/", NULL);
    assert_match(t, ":80", "/", NULL);
    char host[300];
    memset(host, 'a', sizeof(host));
    memcpy(host + 300 - 12, ".example.com", 12);
    const struct rroute *r = rtable_match_http(t, host + 300 - 253, 253, "/", 1);
    assert_non_null(r);
    assert_string_equal(r->id, "wild");
    assert_null(rtable_match_http(t, host + 300 - 254, 254, "/", 1));
    assert_null(rtable_match_http(t, host, sizeof(host), "/", 1));

    /* fields come through */
    r = route_by_id(t, "example.com", "/api/v2");
    assert_string_equal(r->path, "/api/v2/");
    assert_string_equal(r->domain, "example.com");
    assert_string_equal(r->service, "b");
    assert_int_equal(r->type, RROUTE_HTTP);
    assert_non_null(r->svc);
    assert_int_equal(r->svc->n, 0);
    assert_null(rtable_pick(r, NULL, 0, 0, &(uint32_t){1}));
    rtable_unref(t);
    rtable_builder_free(b);
}

static void test_tcp(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    put_route(b, "t1", "{\"type\":\"tcp\",\"port\":3001,\"service\":\"db\"}");
    put_route(b, "t2", "{\"type\":\"tcp\",\"port\":3000,\"service\":\"db\",\"leader\":true}");
    put_route(b, "t3", "{\"type\":\"tcp\",\"port\":\"3005\",\"service\":\"x\"}");
    put_route(b, "t4", "{\"type\":\"tcp\",\"service\":\"x\"}");                /* no port */
    put_route(b, "t5", "{\"type\":\"tcp\",\"port\":70000,\"service\":\"x\"}"); /* bad port */
    put_route(b, "t0", "{\"type\":\"tcp\",\"port\":3001,\"service\":\"y\"}");  /* same port */
    http_route(b, "h", "example.com", "/", "web");
    instance(b, "db", "i1", "10.0.0.1:5432", 5);
    struct rtable *t = rtable_build(b, 1);
    size_t n = 0;
    const int *ports = rtable_tcp_ports(t, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ports[0], 3000);
    assert_int_equal(ports[1], 3001);
    assert_int_equal(ports[2], 3005);
    assert_string_equal(rtable_match_tcp(t, 3000)->id, "t2");
    assert_string_equal(rtable_match_tcp(t, 3001)->id, "t0"); /* the first id keeps it */
    assert_string_equal(rtable_match_tcp(t, 3005)->id, "t3");
    assert_null(rtable_match_tcp(t, 80));
    assert_null(rtable_match_tcp(t, 3002));
    const struct rroute *r = rtable_match_tcp(t, 3000);
    assert_true(r->leader);
    assert_int_equal(r->type, RROUTE_TCP);
    assert_int_equal(r->port, 3000);
    assert_int_equal(r->svc->n, 1);
    assert_string_equal(r->svc->v[0]->addr, "10.0.0.1:5432");
    rtable_unref(t);

    /* the port goes with its route */
    rtable_builder_route(b, "t2", NULL, 0);
    t = rtable_build(b, 2);
    ports = rtable_tcp_ports(t, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ports[0], 3001);
    assert_null(rtable_match_tcp(t, 3000));
    rtable_unref(t);
    rtable_builder_free(b);
}

/* ---- backends ---- */

static void test_leader(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    put_route(b, "l", "{\"type\":\"http\",\"domain\":\"l.com\",\"service\":\"s\",\"leader\":true}");
    instance(b, "s", "c", "10.0.0.3:80", 30);
    instance(b, "s", "a", "10.0.0.1:80", 10);
    instance(b, "s", "b", "10.0.0.2:80", 20);
    instance(b, "other", "z", "10.0.0.9:80", 1);
    struct rtable *t = rtable_build(b, 1);
    const struct rroute *r = route_by_id(t, "l.com", "/");
    assert_non_null(r);
    assert_int_equal(r->svc->n, 3);
    assert_string_equal(r->svc->v[0]->id, "a");
    assert_string_equal(r->svc->v[1]->id, "b");
    assert_string_equal(r->svc->v[2]->id, "c");
    uint32_t rng = 42;
    for (int i = 0; i < 50; i++)
        assert_ptr_equal(rtable_pick(r, NULL, 0, 0, &rng), r->svc->v[0]);
    /* the leader down is still the leader; tried already, nothing */
    atomic_store(&r->svc->v[0]->down_until_ms, 1000);
    assert_ptr_equal(rtable_pick(r, NULL, 0, 0, &rng), r->svc->v[0]);
    struct rbackend *avoid[] = {r->svc->v[0]};
    assert_null(rtable_pick(r, avoid, 1, 0, &rng));
    assert_ptr_equal(rtable_find_backend(r, "10.0.0.2:80", 11), r->svc->v[1]);
    assert_null(rtable_find_backend(r, "10.0.0.2:8", 10));
    assert_null(rtable_find_backend(r, "10.0.0.9:80", 11));
    rtable_unref(t);

    /* the leader leaves: the next oldest leads */
    rtable_builder_instance(b, "s", "a", NULL, 0, 0);
    t = rtable_build(b, 2);
    r = route_by_id(t, "l.com", "/");
    assert_int_equal(r->svc->n, 2);
    assert_string_equal(rtable_pick(r, NULL, 0, 0, &rng)->id, "b");
    rtable_unref(t);
    rtable_builder_free(b);
}

static void test_p2c(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    http_route(b, "r", "p.com", "/", "s");
    instance(b, "s", "a", "10.0.0.1:80", 1);
    instance(b, "s", "b", "10.0.0.2:80", 2);
    instance(b, "s", "c", "10.0.0.3:80", 3);
    instance(b, "s", "d", "10.0.0.4:80", 4);
    struct rtable *t = rtable_build(b, 1);
    const struct rroute *r = route_by_id(t, "p.com", "/");
    struct rbackend *const *v = r->svc->v;
    assert_int_equal(r->svc->n, 4);
    uint32_t rng = 0; /* a zero state is seeded */
    int count[4] = {0};
    for (int i = 0; i < 4000; i++) {
        struct rbackend *p = rtable_pick(r, NULL, 0, 0, &rng);
        assert_non_null(p);
        count[p == v[0] ? 0 : p == v[1] ? 1 : p == v[2] ? 2 : 3]++;
    }
    for (int i = 0; i < 4; i++)
        assert_true(count[i] > 500); /* all idle: spread evenly */

    /* the busiest is never the lesser of two */
    atomic_store(&v[2]->inflight, 10);
    atomic_store(&v[0]->inflight, 3);
    memset(count, 0, sizeof(count));
    for (int i = 0; i < 4000; i++) {
        struct rbackend *p = rtable_pick(r, NULL, 0, 0, &rng);
        assert_ptr_not_equal(p, v[2]);
        count[p == v[0] ? 0 : p == v[1] ? 1 : 3]++;
    }
    assert_true(count[0] > 100);      /* picked when paired with the busiest */
    assert_true(count[1] > count[0]); /* the idle ones more often */

    /* avoided ones never; down ones only when nothing else is left */
    struct rbackend *avoid[] = {v[1], v[3]};
    for (int i = 0; i < 200; i++) {
        struct rbackend *p = rtable_pick(r, avoid, 2, 0, &rng);
        assert_true(p == v[0] || p == v[2]);
        assert_ptr_equal(p, v[0]); /* the lesser of the two left */
    }
    atomic_store(&v[0]->down_until_ms, 5000);
    for (int i = 0; i < 200; i++)
        assert_ptr_equal(rtable_pick(r, avoid, 2, 4999, &rng), v[2]);
    for (int i = 0; i < 200; i++) /* no longer down at 5000 */
        assert_ptr_equal(rtable_pick(r, avoid, 2, 5000, &rng), v[0]);
    atomic_store(&v[2]->down_until_ms, 5000);
    for (int i = 0; i < 200; i++) { /* both left are down: the lesser of them */
        struct rbackend *p = rtable_pick(r, avoid, 2, 10, &rng);
        assert_ptr_equal(p, v[0]);
    }
    for (int i = 0; i < 200; i++) { /* up ones win over down ones */
        struct rbackend *p = rtable_pick(r, NULL, 0, 10, &rng);
        assert_true(p == v[1] || p == v[3]);
    }
    struct rbackend *all[] = {v[0], v[1], v[2], v[3]};
    assert_null(rtable_pick(r, all, 4, 10, &rng));
    struct rbackend *three[] = {v[0], v[1], v[3]};
    assert_ptr_equal(rtable_pick(r, three, 3, 10, &rng), v[2]);
    rtable_unref(t);
    rtable_builder_free(b);
}

static void test_backend_reuse(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    http_route(b, "r", "reuse.com", "/", "s");
    instance(b, "s", "a", "10.0.0.1:80", 1);
    instance(b, "s", "b", "[fd00::1]:8080", 2);
    struct rtable *t1 = rtable_build(b, 1);
    const struct rroute *r1 = route_by_id(t1, "reuse.com", "/");
    struct rbackend *a = r1->svc->v[0], *v6 = r1->svc->v[1];
    assert_int_equal(v6->sa.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&v6->sa)->sin6_port), 8080);
    assert_int_equal(a->sa.ss_family, AF_INET);
    assert_int_equal(a->salen, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(((struct sockaddr_in *)&a->sa)->sin_port), 80);
    atomic_fetch_add(&a->inflight, 2);
    atomic_fetch_add(&a->requests, 9);

    /* the same instance written again (new metadata): the same backend */
    const char *again = "{\"id\":\"a\",\"addr\":\"10.0.0.1:80\",\"meta\":{\"k\":\"v\"}}";
    rtable_builder_instance(b, "s", "a", again, strlen(again), 1);
    struct rtable *t2 = rtable_build(b, 2);
    const struct rroute *r2 = route_by_id(t2, "reuse.com", "/");
    assert_ptr_equal(r2->svc->v[0], a);
    assert_int_equal(atomic_load(&r2->svc->v[0]->inflight), 2);

    /* a relist keeps it too */
    rtable_builder_clear_instances(b);
    instance(b, "s", "b", "[fd00::1]:8080", 2);
    instance(b, "s", "a", "10.0.0.1:80", 1);
    struct rtable *t3 = rtable_build(b, 3);
    const struct rroute *r3 = route_by_id(t3, "reuse.com", "/");
    assert_ptr_equal(r3->svc->v[0], a);
    assert_ptr_equal(r3->svc->v[1], v6);
    assert_int_equal(atomic_load(&a->requests), 9);

    /* another addr under the same id: a new backend */
    instance(b, "s", "a", "10.0.0.1:81", 1);
    struct rtable *t4 = rtable_build(b, 4);
    const struct rroute *r4 = route_by_id(t4, "reuse.com", "/");
    assert_ptr_not_equal(r4->svc->v[0], a);
    assert_string_equal(r4->svc->v[0]->addr, "10.0.0.1:81");
    assert_int_equal(atomic_load(&r4->svc->v[0]->inflight), 0);

    /* the old tables stay whole while referenced */
    rtable_unref(t2);
    rtable_unref(t3);
    assert_string_equal(a->addr, "10.0.0.1:80");
    assert_string_equal(r1->svc->v[0]->addr, "10.0.0.1:80");
    atomic_fetch_sub(&a->inflight, 2);
    rtable_unref(t1);

    /* instance and route removal */
    rtable_builder_instance(b, "s", "b", NULL, 0, 0);
    struct rtable *t5 = rtable_build(b, 5);
    assert_int_equal(route_by_id(t5, "reuse.com", "/")->svc->n, 1);
    rtable_builder_route(b, "r", NULL, 0);
    struct rtable *t6 = rtable_build(b, 6);
    assert_null(route_by_id(t6, "reuse.com", "/"));
    assert_int_equal(route_by_id(t4, "reuse.com", "/")->svc->n, 2);
    rtable_unref(t4);
    rtable_unref(t5);
    rtable_unref(t6);
    rtable_builder_free(b);
}

static void test_malformed(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    static const char *const bad[] = {
        "",
        "not json",
        "[1]",
        "{\"type\":\"udp\",\"domain\":\"x.com\",\"service\":\"s\"}",
        "{\"domain\":\"x.com\",\"service\":\"s\"}",
        "{\"type\":7,\"domain\":\"x.com\",\"service\":\"s\"}",
        "{\"type\":\"http\",\"service\":\"s\"}",
        "{\"type\":\"http\",\"domain\":\"\",\"service\":\"s\"}",
        "{\"type\":\"http\",\"domain\":\"x.com\"}",
        "{\"type\":\"http\",\"domain\":\"x.com\",\"service\":\"s\",\"path\":\"nope\"}",
        "{\"type\":\"http\",\"domain\":\"x.com\",\"service\":\"s\",\"path\":3}",
        "{\"type\":\"http\",\"domain\":\"x.com\",\"service\":\"s\",\"sticky\":\"yes\"}",
        "{\"type\":\"tcp\",\"service\":\"s\"}",
        "{\"type\":\"tcp\",\"service\":\"s\",\"port\":0}",
        "{\"type\":\"tcp\",\"service\":\"s\",\"port\":true}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        http_route(b, "x", "x.com", "/", "s"); /* a good one, then a bad update */
        put_route(b, "x", bad[i]);
        struct rtable *t = rtable_build(b, 1);
        assert_match(t, "x.com", "/", NULL);
        size_t n = 1;
        rtable_tcp_ports(t, &n);
        assert_int_equal(n, 0);
        rtable_unref(t);
    }
    /* a missing path is "/"; unknown and Flynn's ignored fields are fine */
    put_route(b, "y",
              "{\"type\":\"http\",\"domain\":\"y.com\",\"service\":\"s\",\"parent_ref\":\"p\","
              "\"app\":\"a\",\"created_at\":\"2026-01-01T00:00:00Z\",\"sticky\":null}");
    static const char *const addrs[] = {
        "example.com:80", "1.2.3.4",  "1.2.3.4:99999", "1.2.3.4:0",  "::1:80", "[::1]80",
        "[::1]",          "1.2.3:80", "1.2.3.4:80x",   "[zz::1]:80", ":80",    "1.2.3.4:",
    };
    for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++)
        instance(b, "s", addrs[i], addrs[i], (int64_t)i + 1);
    rtable_builder_instance(b, "s", "j", "{\"addr\":5}", 10, 50);
    rtable_builder_instance(b, "s", "k", "nope", 4, 51);
    instance(b, "s", "ok", "[::1]:80", 60);
    struct rtable *t = rtable_build(b, 1);
    const struct rroute *r = route_by_id(t, "y.com", "/anything");
    assert_non_null(r);
    assert_string_equal(r->path, "/");
    assert_false(r->sticky);
    assert_int_equal(r->svc->n, 1);
    assert_string_equal(r->svc->v[0]->addr, "[::1]:80");
    rtable_unref(t);
    rtable_builder_free(b);
}

static void test_json(void **state)
{
    (void)state;
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    put_route(b, "h",
              "{\"type\":\"http\",\"domain\":\"j.com\",\"path\":\"/a\",\"service\":\"s\","
              "\"sticky\":true,\"drain_backends\":true,\"disable_keep_alives\":true}");
    put_route(b, "t", "{\"type\":\"tcp\",\"port\":4000,\"service\":\"s\"}");
    instance(b, "s", "i1", "10.0.0.1:80", 1);
    instance(b, "s", "i2", "10.0.0.2:80", 2);
    struct rtable *t = rtable_build(b, 99);
    const struct rroute *r = route_by_id(t, "j.com", "/a");
    atomic_store(&r->svc->v[1]->down_until_ms, clock_now_ms() + 60000);
    atomic_store(&r->svc->v[1]->requests, 12);
    json_t *j = rtable_json(t);
    assert_int_equal(json_integer_value(json_object_get(j, "revision")), 99);
    json_t *routes = json_object_get(j, "routes");
    assert_int_equal(json_array_size(routes), 2);
    json_t *h = json_array_get(routes, 0), *tc = json_array_get(routes, 1);
    assert_string_equal(json_string_value(json_object_get(h, "id")), "h");
    assert_string_equal(json_string_value(json_object_get(h, "type")), "http");
    assert_string_equal(json_string_value(json_object_get(h, "path")), "/a/");
    assert_true(json_is_true(json_object_get(h, "sticky")));
    assert_true(json_is_true(json_object_get(h, "drain_backends")));
    assert_true(json_is_true(json_object_get(h, "disable_keep_alives")));
    assert_true(json_is_false(json_object_get(h, "tls")));
    json_t *bs = json_object_get(h, "backends");
    assert_int_equal(json_array_size(bs), 2);
    json_t *b0 = json_array_get(bs, 0), *b1 = json_array_get(bs, 1);
    assert_string_equal(json_string_value(json_object_get(b0, "addr")), "10.0.0.1:80");
    assert_true(json_is_true(json_object_get(b0, "leader")));
    assert_true(json_is_false(json_object_get(b0, "down")));
    assert_true(json_is_true(json_object_get(b1, "down")));
    assert_int_equal(json_integer_value(json_object_get(b1, "requests")), 12);
    assert_int_equal(json_integer_value(json_object_get(tc, "port")), 4000);
    assert_true(json_is_null(json_object_get(tc, "domain")));
    json_decref(j);
    rtable_unref(t);
    rtable_builder_free(b);
}

/* ---- sticky sessions ---- */

static void test_sticky(void **state)
{
    (void)state;
    uint8_t key[STICKY_KEY_LEN], other[STICKY_KEY_LEN];
    memset(key, 7, sizeof(key));
    memset(other, 8, sizeof(other));
    char v[STICKY_VALUE_MAX], addr[256];
    sticky_value(key, "web", "10.0.0.1:8080", v);
    assert_null(strchr(v, '='));
    assert_non_null(strchr(v, '.'));

    struct buf c = BUF_INIT;
    buf_printf(&c, "a=b; " STICKY_COOKIE "=%s; c=d", v);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    assert_string_equal(addr, "10.0.0.1:8080");
    /* another service or key: no */
    assert_false(sticky_check(key, "api", c.p, c.len, addr, sizeof(addr)));
    assert_false(sticky_check(other, "web", c.p, c.len, addr, sizeof(addr)));
    /* the address must fit */
    assert_false(sticky_check(key, "web", c.p, c.len, addr, 13));
    assert_true(sticky_check(key, "web", c.p, c.len, addr, 14));
    /* alone, quoted, with blanks */
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=\"%s\"", v);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    buf_reset(&c);
    buf_printf(&c, " \t" STICKY_COOKIE "=%s ;", v);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    /* a bad one first, a good one after */
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=junk; " STICKY_COOKIE "=%s", v);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    /* a longer name is another cookie */
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "x=%s", v);
    assert_false(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));

    /* tampered: each character of the value changed in turn */
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++) {
        char t[STICKY_VALUE_MAX];
        memcpy(t, v, n + 1);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        buf_reset(&c);
        buf_printf(&c, STICKY_COOKIE "=%s", t);
        assert_false(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    }
    /* another address signed for the same service checks, and names it */
    char v2[STICKY_VALUE_MAX];
    sticky_value(key, "web", "[fd00::1]:80", v2);
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=%s", v2);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    assert_string_equal(addr, "[fd00::1]:80");
    /* its address with the first one's signature: no */
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=%.*s%s", (int)(strchr(v2, '.') - v2), v2, strchr(v, '.'));
    assert_false(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));

    static const char *const garbage[] = {
        "",
        ";;;",
        STICKY_COOKIE,
        STICKY_COOKIE "=",
        STICKY_COOKIE "=.",
        STICKY_COOKIE "=abc",
        STICKY_COOKIE "=abc.def",
        STICKY_COOKIE "=\"",
        STICKY_COOKIE "=MTAuMC4wLjE6ODA4MA.AAAAAAAAAAAAAAAAAAAAAA",
        STICKY_COOKIE "=MTAuMC4wLjE6ODA4MA==.AAAAAAAAAAAAAAAAAAAAAA",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        assert_false(sticky_check(key, "web", garbage[i], strlen(garbage[i]), addr, sizeof(addr)));
    /* an unprintable address is refused even when signed */
    sticky_value(key, "web", "a b", v);
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=%s", v);
    assert_false(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    /* the longest address fits the value */
    char longaddr[256];
    memset(longaddr, '1', 255);
    longaddr[255] = '\0';
    sticky_value(key, "web", longaddr, v);
    assert_true(strlen(v) < STICKY_VALUE_MAX);
    buf_reset(&c);
    buf_printf(&c, STICKY_COOKIE "=%s", v);
    assert_true(sticky_check(key, "web", c.p, c.len, addr, sizeof(addr)));
    assert_string_equal(addr, longaddr);
    buf_free(&c);
}

/* ---- TLS contexts ---- */

static void cert_route(struct rtable_builder *b, const char *id, const char *domain,
                       const char *path, const char *cert)
{
    struct buf j = BUF_INIT;
    buf_printf(&j,
               "{\"type\":\"http\",\"domain\":\"%s\",\"path\":\"%s\",\"service\":\"s\","
               "\"certificate\":{\"cert\":\"%s\",\"key\":\"k\"}}",
               domain, path, cert);
    put_route(b, id, j.p);
    buf_free(&j);
}

static void test_tls_cache(void **state)
{
    (void)state;
    tls_calls = tls_made = tls_freed = 0;
    struct rtable_builder *b = rtable_builder_new(fake_make, fake_free);
    cert_route(b, "api", "t.com", "/api/", "C-api");
    cert_route(b, "root", "t.com", "/", "C-root");
    cert_route(b, "wild", "*.t.com", "/", "C-wild");
    put_route(b, "legacy",
              "{\"type\":\"http\",\"domain\":\"old.org\",\"service\":\"s\",\"tls_cert\":\"C-old\","
              "\"tls_key\":\"k\"}");
    put_route(b, "half",
              "{\"type\":\"http\",\"domain\":\"half.org\",\"service\":\"s\","
              "\"certificate\":{\"cert\":\"C-half\"}}");
    http_route(b, "plain", "plain.t.com", "/", "s");
    struct rtable *t1 = rtable_build(b, 1);
    assert_int_equal(tls_made, 4);
    assert_string_equal(rtable_tls_ctx(t1, "t.com"), "C-root"); /* "/" preferred */
    assert_string_equal(rtable_tls_ctx(t1, "T.COM."), "C-root");
    assert_string_equal(rtable_tls_ctx(t1, "a.t.com"), "C-wild");
    assert_string_equal(rtable_tls_ctx(t1, "x.y.t.com"), "C-wild");
    assert_string_equal(rtable_tls_ctx(t1, "plain.t.com"), "C-wild"); /* no cert of its own */
    assert_string_equal(rtable_tls_ctx(t1, "old.org"), "C-old");
    assert_null(rtable_tls_ctx(t1, "half.org"));
    assert_null(rtable_tls_ctx(t1, "other.org"));
    assert_null(rtable_tls_ctx(t1, ""));
    assert_null(rtable_tls_ctx(t1, NULL));
    assert_string_equal(route_by_id(t1, "t.com", "/api")->tls_ctx, "C-api");

    /* unchanged routes reuse their contexts, even after a relist */
    rtable_builder_clear_routes(b);
    cert_route(b, "api", "t.com", "/api/", "C-api");
    cert_route(b, "root", "t.com", "/", "C-root");
    cert_route(b, "wild", "*.t.com", "/", "C-wild");
    put_route(b, "legacy",
              "{\"type\":\"http\",\"domain\":\"old.org\",\"service\":\"s\",\"tls_cert\":\"C-old\","
              "\"tls_key\":\"k\"}");
    struct rtable *t2 = rtable_build(b, 2);
    assert_int_equal(tls_made, 4);
    assert_ptr_equal(rtable_tls_ctx(t2, "t.com"), rtable_tls_ctx(t1, "t.com"));

    /* a changed certificate: a new context; the old one lives while t1 does */
    cert_route(b, "root", "t.com", "/", "C-root2");
    rtable_builder_route(b, "legacy", NULL, 0);
    struct rtable *t3 = rtable_build(b, 3);
    assert_int_equal(tls_made, 5);
    assert_string_equal(rtable_tls_ctx(t3, "t.com"), "C-root2");
    assert_null(rtable_tls_ctx(t3, "old.org"));
    assert_int_equal(tls_freed, 0);
    assert_string_equal(rtable_tls_ctx(t1, "t.com"), "C-root");
    rtable_unref(t1);
    assert_int_equal(tls_freed, 0); /* t2 still has them */
    rtable_unref(t2);
    assert_int_equal(tls_freed, 2); /* C-root and C-old */

    /* a certificate that does not load: the default one, and not retried */
    cert_route(b, "bad", "bad.org", "/", "bad");
    struct rtable *t4 = rtable_build(b, 4);
    assert_int_equal(tls_calls, 6);
    struct rtable *t5 = rtable_build(b, 5);
    assert_int_equal(tls_calls, 6);
    assert_int_equal(tls_made, 5);
    assert_null(rtable_tls_ctx(t5, "bad.org"));
    assert_non_null(route_by_id(t5, "bad.org", "/"));
    json_t *j = rtable_json(t5);
    assert_int_equal(json_array_size(json_object_get(j, "routes")), 4);
    json_decref(j);
    rtable_unref(t3);
    rtable_unref(t4);
    assert_int_equal(tls_freed, 2);
    rtable_builder_free(b); /* t5 holds on */
    assert_int_equal(tls_freed, 2);
    rtable_unref(t5);
    assert_int_equal(tls_freed, tls_made);
}

/* ---- sync against a real store ---- */

struct pub {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rtable *t;
    int n;
};

static void on_publish(void *ud, struct rtable *t)
{
    struct pub *p = ud;
    pthread_mutex_lock(&p->mu);
    struct rtable *old = p->t;
    p->t = t;
    p->n++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    rtable_unref(old);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Waits up to ms for a published table where host/path routes to a route
 * whose service has want backends (want < 0: no route at all). */
static bool wait_route(struct pub *p, const char *host, int want, int ms)
{
    struct timespec dl = clock_deadline_in(ms);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        const struct rroute *r = p->t ? route_by_id(p->t, host, "/") : NULL;
        if (want < 0 ? !r : r && (int)r->svc->n == want)
            break;
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) != 0) {
            pthread_mutex_unlock(&p->mu);
            return false;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return true;
}

static const char *pierd_path(void)
{
    static char path[PATH_MAX + 16];
    const char *d = getenv("PIER_BUILD_DIR");
    if (d) {
        snprintf(path, sizeof(path), "%s/pierd", d);
        if (access(path, X_OK) == 0)
            return path;
    }
    char exe[PATH_MAX - 16];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    for (int i = 0; i < 3; i++) { /* BUILD/tests/unit/test_router_table */
        char *slash = strrchr(exe, '/');
        if (!slash)
            return NULL;
        *slash = '\0';
    }
    snprintf(path, sizeof(path), "%s/pierd", exe);
    return access(path, X_OK) == 0 ? path : NULL;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t store_pid; /* the running store, for the teardown after a failure */

static pid_t store_start(const char *pierd, int port, const char *dir, struct store *s)
{
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(pierd, "pierd", "store", "--listen", listen, "--data-dir", dir, (char *)NULL);
        _exit(127);
    }
    store_pid = pid;
    for (int i = 0; i < 300; i++) {
        int64_t rev;
        if (store_revision(s, &rev, NULL) == 0)
            return pid;
        usleep(50000);
    }
    fail_msg("pierd store did not start");
    return -1;
}

static void store_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    store_pid = 0;
}

static int sync_teardown(void **state)
{
    (void)state;
    if (store_pid > 0) {
        kill(store_pid, SIGKILL);
        waitpid(store_pid, NULL, 0);
        store_pid = 0;
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void put_store_route(struct store *s, const char *id, const char *domain)
{
    struct buf key = BUF_INIT, val = BUF_INIT;
    buf_printf(&key, "/pier/v1/routes/%s", id);
    buf_printf(&val, "{\"type\":\"http\",\"domain\":\"%s\",\"service\":\"svc\"}", domain);
    assert_int_equal(store_put(s, key.p, val.p, val.len, 0, NULL, NULL), 0);
    buf_free(&key);
    buf_free(&val);
}

static void test_sync(void **state)
{
    (void)state;
    const char *pierd = pierd_path();
    if (!pierd)
        fail_msg("no pierd binary next to the test build nor in $PIER_BUILD_DIR");
    char dir[] = "/tmp/test_router_table.XXXXXX";
    assert_non_null(mkdtemp(dir));
    int port = free_port();
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    struct store *s = NULL;
    assert_int_equal(store_open(url, &s, NULL), 0);
    store_set_timeout(s, 2000);
    pid_t pid = store_start(pierd, port, dir, s);

    /* something there before the router starts */
    put_store_route(s, "first", "first.com");
    const char *inst = "{\"id\":\"i1\",\"service\":\"svc\",\"addr\":\"127.0.0.1:5001\"}";
    assert_int_equal(store_put(s, "/pier/v1/services/svc/i1", inst, strlen(inst), 0, NULL, NULL),
                     0);

    struct pub p = {.t = NULL};
    pthread_mutex_init(&p.mu, NULL);
    clock_cond_init(&p.cv);
    struct rtable_builder *b = rtable_builder_new(NULL, NULL);
    struct rsync *y = NULL;
    assert_int_equal(rsync_start(s, b, on_publish, &p, &y, NULL), 0);
    assert_int_equal(rsync_wait_ready(y, 10000), 0);
    struct rtable *t = rsync_table(y);
    assert_non_null(t);
    assert_true(rtable_revision(t) > 0);
    assert_int_equal(route_by_id(t, "first.com", "/")->svc->n, 1);
    rtable_unref(t);

    /* from the store's write to a published table that routes it */
    enum { N = 100 };
    int64_t lat[N], after[N]; /* from before the put, from its answer */
    for (int i = 0; i < N; i++) {
        char id[32], domain[64];
        snprintf(id, sizeof(id), "lat-%d", i);
        snprintf(domain, sizeof(domain), "lat%d.example.com", i);
        int64_t t0 = now_us();
        put_store_route(s, id, domain);
        int64_t t1 = now_us();
        assert_true(wait_route(&p, domain, 1, 5000));
        lat[i] = now_us() - t0;
        after[i] = now_us() - t1;
    }
    qsort(lat, N, sizeof(lat[0]), cmp_i64);
    qsort(after, N, sizeof(after[0]), cmp_i64);
    print_message("route put sent -> table published: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                  lat[N / 2] / 1000.0, lat[N * 99 / 100 - 1] / 1000.0, lat[N - 1] / 1000.0);
    print_message("route put answered -> table published: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
                  after[N / 2] / 1000.0, after[N * 99 / 100 - 1] / 1000.0, after[N - 1] / 1000.0);
    /* The store sends the watch event and the put's answer once the write
     * is committed: from the answer is the router's part (the event may
     * even win); from the send adds the store's commit (an fsync). */
    assert_true(after[N * 99 / 100 - 1] < 50000);

    /* instances come and go */
    const char *inst2 = "{\"id\":\"i2\",\"service\":\"svc\",\"addr\":\"127.0.0.1:5002\"}";
    assert_int_equal(store_put(s, "/pier/v1/services/svc/i2", inst2, strlen(inst2), 0, NULL, NULL),
                     0);
    assert_true(wait_route(&p, "first.com", 2, 5000));
    assert_int_equal(store_delete(s, "/pier/v1/services/svc/i1", NULL, NULL, NULL), 0);
    assert_true(wait_route(&p, "first.com", 1, 5000));
    t = rsync_table(y);
    assert_string_equal(route_by_id(t, "first.com", "/")->svc->v[0]->id, "i2");
    rtable_unref(t);
    assert_int_equal(store_delete(s, "/pier/v1/routes/lat-0", NULL, NULL, NULL), 0);
    assert_true(wait_route(&p, "lat0.example.com", -1, 5000));

    /* the store goes away: the last table stays; it comes back: changes flow */
    store_stop(pid);
    usleep(300000);
    t = rsync_table(y);
    assert_non_null(route_by_id(t, "lat5.example.com", "/"));
    rtable_unref(t);
    pid = store_start(pierd, port, dir, s);
    put_store_route(s, "after", "after.com");
    assert_true(wait_route(&p, "after.com", 1, 10000));

    /* a stop is prompt, also while the store is away */
    store_stop(pid);
    usleep(100000);
    int64_t t0 = now_us();
    rsync_stop(y);
    int64_t stop_ms = (now_us() - t0) / 1000;
    print_message("rsync_stop took %lld ms with the store away\n", (long long)stop_ms);
    assert_true(stop_ms < 1500);

    rtable_unref(p.t);
    rtable_builder_free(b);
    store_close(s);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_precedence),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_leader),
        cmocka_unit_test(test_p2c),
        cmocka_unit_test(test_backend_reuse),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_sticky),
        cmocka_unit_test(test_tls_cache),
        cmocka_unit_test_teardown(test_sync, sync_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
