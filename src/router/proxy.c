/* proxy: the router's workers (router.h). Each worker is a thread running
 * its own libuv loop with its own SO_REUSEPORT listeners, so the kernel
 * spreads connections over them and they share nothing on the hot path
 * but the routing table (immutable, reference counted) and the backends'
 * open-request counts; each worker counts requests in its own struct
 * rwstats, summed by router_status. The HTTP proxy itself is in http.c.
 *
 * A new table reaches a worker through its mutex and async handle; the
 * worker swaps it in between callbacks, so a request routed with the old
 * table keeps its reference and finishes with it.
 *
 * Shutdown: the listeners close, idle client connections close, the
 * others get their current response (sent with Connection: close), and
 * past cfg.shutdown_timeout_ms whatever is left is closed. Once no client
 * connection or tunnel is left the worker closes its own handles and its
 * loop ends. */
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "router/proxy_int.h"
#include "router/splice.h"

/* Parses "host:port", "[v6]:port" or ":port" (host: a numeric address or
 * "localhost"). */
static int parse_addr(const char *s, struct sockaddr_storage *out)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -1;
    size_t hlen = (size_t)(colon - s);
    if (hlen >= sizeof(host))
        return -1;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return -1;
    memset(out, 0, sizeof(*out));
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host[hlen - 1] = '\0';
        return uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)out) == 0 ? 0 : -1;
    }
    const char *h = hlen == 0 ? "0.0.0.0" : strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    return uv_ip4_addr(h, (int)port, (struct sockaddr_in *)out) == 0 ? 0 : -1;
}

static int sa_port(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

static void set_port(struct sockaddr_storage *sa, int port)
{
    if (sa->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        log_debug("router", "accept failed", "port=%d reason=\"%s\"", l->port, uv_strerror(status));
        return;
    }
    http_accept(l);
}

/* Binds one listener by hand: libuv 1.44 cannot set SO_REUSEPORT. sa's
 * port 0 becomes the port the kernel chose (so later workers share it). */
static int listener_open(struct rworker *w, struct listener *l, const char *addr,
                         struct sockaddr_storage *sa, bool tls, struct pier_err *err)
{
    l->w = w;
    l->tls = tls;
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return err_set(err, -errno, "listen on %s: %s", addr, strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    socklen_t salen =
        sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)sa, salen) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "listen on %s: %s", addr, strerror(e));
    }
    if (sa_port(sa) == 0) {
        struct sockaddr_storage got;
        socklen_t len = sizeof(got);
        if (getsockname(fd, (struct sockaddr *)&got, &len) == 0)
            set_port(sa, sa_port(&got));
    }
    l->port = sa_port(sa);
    snprintf(l->port_str, sizeof(l->port_str), "%d", l->port);
    int r = uv_tcp_init(&w->loop, &l->tcp);
    if (r == 0) {
        l->tcp.data = l;
        l->open = true;
        r = uv_tcp_open(&l->tcp, fd);
        if (r < 0)
            close(fd);
        else
            r = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    } else {
        close(fd);
    }
    if (r < 0)
        return err_set(err, r, "listen on %s: %s", addr, uv_strerror(r));
    return 0;
}

static void close_listeners(struct hworker *hw)
{
    for (size_t i = 0; i < hw->n_listeners; i++)
        if (hw->listeners[i].open) {
            hw->listeners[i].open = false;
            uv_close((uv_handle_t *)&hw->listeners[i].tcp, NULL);
        }
}

/* Everything a worker had is gone: close its own handles, so the loop
 * ends. */
static void teardown(struct hworker *hw)
{
    struct rworker *w = hw->w;
    hw->torn_down = true;
    close_listeners(hw);
    pool_close_all(&hw->pool);
    uv_close((uv_handle_t *)&hw->sweep, NULL);
    /* router_publish sends under the lock and stops once it sees stop. */
    pthread_mutex_lock(&w->mu);
    uv_close((uv_handle_t *)&w->wake, NULL);
    pthread_mutex_unlock(&w->mu);
}

void worker_check_done(struct hworker *hw)
{
    if (hw->w->stopping && !hw->torn_down && hw->nconns == 0 && !hw->w->splices) {
        log_info("router", "drained", "worker=%d after_ms=%llu", hw->w->index,
                 (unsigned long long)(uv_now(&hw->w->loop) - hw->stop_ms));
        teardown(hw);
    }
}

static void begin_stop(struct hworker *hw)
{
    struct rworker *w = hw->w;
    w->stopping = true;
    hw->stop_ms = uv_now(&w->loop);
    close_listeners(hw);
    tcp_stop_listening(w);
    http_stopping(hw);
    /* What the drain waits for (nothing: it ends at once, below). */
    if (hw->conns || w->splices)
        http_drain_log(hw, "draining", false);
    worker_check_done(hw);
}

static void on_sweep(uv_timer_t *t)
{
    struct hworker *hw = t->data;
    struct rworker *w = hw->w;
    uint64_t now = uv_now(&w->loop);
    http_sweep(hw, now);
    alog_flush(&hw->log);
    if (w->stopping && !hw->torn_down) {
        if (now - hw->stop_ms >= (uint64_t)w->router->cfg.shutdown_timeout_ms) {
            http_drain_log(hw, "shutdown timeout passed", true);
            http_close_all(hw);
            rsplice_close_all(w);
        }
        worker_check_done(hw);
    }
}

static void on_wake(uv_async_t *a)
{
    struct rworker *w = a->data;
    struct hworker *hw = w->http;
    pthread_mutex_lock(&w->mu);
    struct rtable *t = w->pending;
    w->pending = NULL;
    bool stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    if (t) {
        struct rtable *old = w->table;
        w->table = t;
        if (old)
            rtable_unref(old);
        pool_close_gone(&hw->pool);
        if (!w->stopping)
            tcp_sync(w);
    }
    if (stop && !w->stopping)
        begin_stop(hw);
}

/* Closes what is left at the end: stream.c's per-thread check handle, and
 * (counted in *arg, unexpected) anything else. */
static void close_any(uv_handle_t *h, void *arg)
{
    int *others = arg;
    if (uv_is_closing(h))
        return;
    if (h->type != UV_CHECK)
        (*others)++;
    uv_close(h, NULL);
}

static void *worker_main(void *arg)
{
    struct rworker *w = arg;
    struct hworker *hw = w->http;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    tcp_free(w);
    int others = 0;
    uv_walk(&w->loop, close_any, &others);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (others)
        log_warn("router", "worker loop had open handles at exit", "worker=%d handles=%d", w->index,
                 others);
    uv_loop_close(&w->loop);
    alog_free(&hw->log);
    rbuf_thread_cleanup();
    ob_thread_cleanup();
    return NULL;
}

/* A worker's loop, wake handle, timer and listeners (not yet running).
 * addrs: the resolved listen addresses, http ones first. */
static int worker_init(struct router *r, struct rworker *w, int index,
                       struct sockaddr_storage *addrs, struct rtable *empty, struct pier_err *err)
{
    const struct rconfig *cfg = &r->cfg;
    w->router = r;
    w->index = index;
    int e = uv_loop_init(&w->loop);
    if (e < 0)
        return err_set(err, e, "event loop: %s", uv_strerror(e));
    pthread_mutex_init(&w->mu, NULL);
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    if (getrandom(&w->rng, sizeof(w->rng), 0) != sizeof(w->rng) || w->rng == 0)
        w->rng = 0x9e3779b9u ^ (uint32_t)(index + 1);
    w->table = empty;
    rtable_ref(empty);
    struct hworker *hw = xcalloc(1, sizeof(*hw));
    hw->w = w;
    w->http = hw;
    alog_init(&hw->log, cfg->access_log_fd);
    uv_timer_init(&w->loop, &hw->sweep);
    hw->sweep.data = hw;
    uv_timer_start(&hw->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    size_t n = cfg->n_http + cfg->n_https;
    hw->listeners = xcalloc(n ? n : 1, sizeof(*hw->listeners));
    for (size_t i = 0; i < n; i++) {
        bool tls = i >= cfg->n_http;
        const char *addr = tls ? cfg->https[i - cfg->n_http] : cfg->http[i];
        hw->n_listeners = i + 1;
        if (listener_open(w, &hw->listeners[i], addr, &addrs[i], tls, err) < 0)
            return err->code;
    }
    return 0;
}

/* Undoes worker_init for a worker whose thread never ran. */
static void worker_destroy(struct rworker *w)
{
    struct hworker *hw = w->http;
    if (hw) {
        close_listeners(hw);
        uv_close((uv_handle_t *)&hw->sweep, NULL);
    }
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    pthread_mutex_destroy(&w->mu);
    if (w->table)
        rtable_unref(w->table);
    if (hw) {
        alog_free(&hw->log);
        pool_free(&hw->pool);
        free(hw->listeners);
        free(hw);
    }
}

static void worker_signal_stop(struct rworker *w)
{
    pthread_mutex_lock(&w->mu);
    if (!w->stop) {
        w->stop = true;
        uv_async_send(&w->wake);
    }
    pthread_mutex_unlock(&w->mu);
}

/* Stops a running worker, waits for its thread and frees what is left. */
static void worker_stop_join(struct rworker *w)
{
    worker_signal_stop(w);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->mu);
    if (w->pending)
        rtable_unref(w->pending);
    if (w->table)
        rtable_unref(w->table);
    struct hworker *hw = w->http;
    pool_free(&hw->pool);
    free(hw->listeners);
    free(hw);
}

int router_start(const struct rconfig *cfg, struct router **out, struct pier_err *err)
{
    *out = NULL;
    struct router *r = xcalloc(1, sizeof(*r));
    r->cfg = *cfg;
    r->n_workers = cfg->workers > 0 ? cfg->workers : 1;
    /* Aligned for struct rwstats (a cache line each). */
    size_t wsize = (size_t)r->n_workers * sizeof(*r->workers);
    r->workers = aligned_alloc(_Alignof(struct rworker), wsize);
    if (!r->workers)
        abort();
    memset(r->workers, 0, wsize);
    size_t n = cfg->n_http + cfg->n_https;
    struct sockaddr_storage *addrs = xcalloc(n ? n : 1, sizeof(*addrs));
    for (size_t i = 0; i < n; i++) {
        const char *a = i < cfg->n_http ? cfg->http[i] : cfg->https[i - cfg->n_http];
        if (parse_addr(a, &addrs[i]) < 0) {
            err_set(err, PIER_EINVAL, "--%s %s: not an address (want host:port)",
                    i < cfg->n_http ? "http" : "https", a);
            free(addrs);
            free(r->workers);
            free(r);
            return PIER_EINVAL;
        }
    }
    if (cfg->n_https && !cfg->default_tls) {
        free(addrs);
        free(r->workers);
        free(r);
        return err_set(err, PIER_EINVAL, "https listeners need a TLS context");
    }
    /* Until the first table arrives every worker routes with an empty one. */
    struct rtable_builder *eb = rtable_builder_new(NULL, NULL);
    struct rtable *empty = rtable_build(eb, 0);
    rtable_builder_free(eb);
    int rc = 0, inited = 0;
    for (int i = 0; i < r->n_workers && rc == 0; i++) {
        rc = worker_init(r, &r->workers[i], i, addrs, empty, err);
        inited = i + 1;
    }
    rtable_unref(empty);
    free(addrs);
    int started = 0;
    for (int i = 0; i < r->n_workers && rc == 0; i++) {
        int e = pthread_create(&r->workers[i].thread, NULL, worker_main, &r->workers[i]);
        if (e != 0)
            rc = err_set(err, -e, "worker thread: %s", strerror(e));
        else
            started = i + 1;
    }
    if (rc < 0) {
        for (int i = 0; i < started; i++)
            worker_stop_join(&r->workers[i]);
        for (int i = started; i < inited; i++)
            worker_destroy(&r->workers[i]);
        free(r->workers);
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void router_publish(struct router *r, struct rtable *t)
{
    for (int i = 0; i < r->n_workers; i++) {
        struct rworker *w = &r->workers[i];
        rtable_ref(t);
        pthread_mutex_lock(&w->mu);
        if (w->stop) {
            pthread_mutex_unlock(&w->mu);
            rtable_unref(t);
            continue;
        }
        struct rtable *old = w->pending;
        w->pending = t;
        uv_async_send(&w->wake);
        pthread_mutex_unlock(&w->mu);
        if (old)
            rtable_unref(old);
    }
    rtable_unref(t);
}

static unsigned long long ld(atomic_ullong *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static json_t *i32(atomic_int *v)
{
    return json_integer(atomic_load_explicit(v, memory_order_relaxed));
}

/* A global counter plus every worker's share of it (off: the field's
 * offset in struct rwstats). */
static json_t *sum(struct router *r, atomic_ullong *global, size_t off)
{
    unsigned long long v = ld(global);
    for (int i = 0; i < r->n_workers; i++)
        v += ld((atomic_ullong *)((char *)&r->workers[i].stats + off));
    return json_integer((json_int_t)v);
}

/* A gauge: the global count (tcp.c's) plus the HTTP workers' own. */
static json_t *gauge(struct router *r, atomic_int *global, size_t off)
{
    long long v = atomic_load_explicit(global, memory_order_relaxed);
    unsigned long long w = 0;
    for (int i = 0; i < r->n_workers; i++)
        w += ld((atomic_ullong *)((char *)&r->workers[i].stats + off));
    v += (long long)w;
    return json_integer(v < 0 ? 0 : (json_int_t)v);
}

#define WOFF(field) offsetof(struct rwstats, field)

json_t *router_status(struct router *r)
{
    struct rstats *s = &r->stats;
    json_t *conns = json_object();
    json_object_set_new(conns, "client", i32(&s->client_conns));
    json_object_set_new(conns, "backend", gauge(r, &s->backend_conns, WOFF(backend_conns)));
    json_object_set_new(conns, "tunnels", i32(&s->tunnels));
    json_object_set_new(conns, "idle_backend", gauge(r, &s->idle_backend, WOFF(idle_backend)));
    json_t *counters = json_object();
    json_object_set_new(counters, "requests", sum(r, &s->requests, WOFF(requests)));
    static const char *const names[5] = {"responses_1xx", "responses_2xx", "responses_3xx",
                                         "responses_4xx", "responses_5xx"};
    for (int i = 0; i < 5; i++)
        json_object_set_new(
            counters, names[i],
            sum(r, &s->responses[i], WOFF(responses) + (size_t)i * sizeof(atomic_ullong)));
    json_object_set_new(counters, "backend_errors",
                        sum(r, &s->backend_errors, WOFF(backend_errors)));
    json_object_set_new(counters, "retries", sum(r, &s->retries, WOFF(retries)));
    json_object_set_new(counters, "tcp_connections",
                        json_integer((json_int_t)ld(&s->tcp_connections)));
    json_object_set_new(counters, "bad_requests", sum(r, &s->bad_requests, WOFF(bad_requests)));
    json_object_set_new(counters, "timeouts", sum(r, &s->timeouts, WOFF(timeouts)));
    json_t *j = json_object();
    json_object_set_new(j, "connections", conns);
    json_object_set_new(j, "counters", counters);
    json_object_set_new(j, "workers", json_integer(r->n_workers));
    return j;
}

void router_drain(struct router *r)
{
    for (int i = 0; i < r->n_workers; i++)
        worker_signal_stop(&r->workers[i]);
}

void router_stop(struct router *r)
{
    if (!r)
        return;
    router_drain(r);
    for (int i = 0; i < r->n_workers; i++)
        worker_stop_join(&r->workers[i]);
    free(r->workers);
    free(r);
}
