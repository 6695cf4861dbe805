/* tcp: the tcp routes of one worker (worker.h, docs/router.md "Routes").
 *
 * Every worker listens on each tcp route's port with its own SO_REUSEPORT
 * socket, so the kernel spreads connections over the workers. A connection
 * is routed by its listener's port in the worker's current table, connects
 * to a backend (trying up to three, a failed one skipped for
 * RBACKEND_DOWN_MS by everyone) and then becomes a splice (splice.h).
 * The client is not read before the splice starts: what it sends while
 * the backend connects waits in the kernel.
 *
 * The wanted ports are kept sorted, like rtable_tcp_ports gives them, so a
 * sync is one merge of the old list with the table's, done only when the
 * ports changed. A port whose bind failed stays in the list without a
 * listener and is tried again at every sync; its failure is logged once
 * per cause, not at every sync.
 *
 * SO_REUSEPORT lets routers on one host share a tcp route's port (on
 * purpose), but it would also let a tcp route join the kernel group of
 * the router's own http/https listeners and take a share of their
 * connections: a route whose port (and address) overlaps one of those is
 * never listened on, with one warning.
 *
 * Shutdown: connections still connecting to a backend are kept on a list
 * and ended at once when the listeners close (tcp_stop_listening), so no
 * retry runs after stop and the worker's loop ends without waiting out
 * connect timeouts. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "router/splice.h"
#include "router/stream.h"
#include "router/worker.h"

#define TCP_BACKLOG 1024
#define TCP_MAX_TRIES 3

struct tcp_listener {
    uv_tcp_t h;
    struct rworker *w;
    int port;
};

/* tcp_port.err of a port the router's own http/https listeners use. */
#define TCP_ERR_OWN 1

struct tcp_port {
    int port;
    struct tcp_listener *l; /* NULL while binding fails */
    int err;                /* the last bind failure (a libuv error), TCP_ERR_OWN, 0 if none */
};

/* An address and port, IPv4 ones as such (v4-mapped IPv6 too). */
struct net_addr {
    int family;
    unsigned char a[16];
    int port;
};

struct tcp_conn;

struct tcp_state {
    struct tcp_port *v; /* sorted by port */
    size_t n;
    struct net_addr *own; /* the http and https listeners' addresses */
    size_t n_own;
    struct net_addr ip;          /* tcp routes listen on this (port 0) */
    struct tcp_conn *connecting; /* connections before their tunnel */
};

/* One client connection, from accept until its tunnel ended. */
struct tcp_conn {
    struct rworker *w;
    struct tcp_conn *prev, *next; /* on connecting until the tunnel starts */
    int port;
    int holds; /* the timer's close callback and, once spliced, the tunnel */
    struct rstream *client;
    struct rstream *backend; /* the attempt in progress, or the connected one */
    struct rtable *table;    /* a reference while connecting (keeps route valid) */
    const struct rroute *route;
    struct rbackend *tried[TCP_MAX_TRIES];
    size_t ntried;
    struct rbackend *be; /* the backend of the attempt in progress / the tunnel */
    uv_timer_t timer;    /* the connect timeout */
    uint64_t start_ms;
};

static void free_stream(struct rstream *s)
{
    free(s);
}

static void free_listener(uv_handle_t *h)
{
    free(h->data);
}

/* Streams of a connection before the splice: the client is not read, and
 * the backend only reports its connect. */
static void idle_data(struct rstream *s, char *buf, size_t n)
{
    (void)s;
    (void)n;
    rbuf_put(buf);
}

static void idle_end(struct rstream *s, int why)
{
    (void)s;
    (void)why;
}

static void on_backend_connect(struct rstream *s, int status);

static const struct rstream_cbs client_cbs = {.on_data = idle_data, .on_end = idle_end};
static const struct rstream_cbs backend_cbs = {
    .on_data = idle_data, .on_end = idle_end, .on_connect = on_backend_connect};

static void client_gone(struct rworker *w, struct rstream *client)
{
    atomic_fetch_sub_explicit(&w->router->stats.client_conns, 1, memory_order_relaxed);
    rstream_close(client, free_stream);
}

static void conn_release(struct tcp_conn *c)
{
    if (--c->holds == 0)
        free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    conn_release(h->data);
}

static void conn_unlink(struct tcp_conn *c)
{
    struct tcp_state *st = c->w->tcp;
    if (c->prev)
        c->prev->next = c->next;
    else
        st->connecting = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Gives up on the client (no backend took it, or shutdown began). */
static void conn_fail(struct tcp_conn *c)
{
    conn_unlink(c);
    client_gone(c->w, c->client);
    c->client = NULL;
    rtable_unref(c->table);
    c->table = NULL;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

/* The attempt in progress failed (err, a libuv error): the backend is
 * skipped for a while by every worker. */
static void attempt_failed(struct tcp_conn *c, int err)
{
    struct rworker *w = c->w;
    struct rbackend *be = c->be;
    atomic_fetch_sub_explicit(&be->inflight, 1, memory_order_relaxed);
    atomic_store_explicit(&be->down_until_ms, (long long)(uv_now(&w->loop) + RBACKEND_DOWN_MS),
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&be->failures, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->router->stats.retries, 1, memory_order_relaxed);
    log_debug("router", "tcp backend failed", "port=%d backend=%s reason=\"%s\"", c->port, be->addr,
              uv_strerror(err));
    /* A connect callback the close may still cause (UV_ECANCELED) must
     * not find the connection. */
    c->backend->data = NULL;
    rstream_close(c->backend, free_stream);
    c->backend = NULL;
    c->be = NULL;
}

static void on_connect_timeout(uv_timer_t *t);

/* Starts a connect to the next backend, or gives up after TCP_MAX_TRIES
 * or when none is left. */
static void conn_try(struct tcp_conn *c)
{
    struct rworker *w = c->w;
    if (w->stopping) {
        conn_fail(c);
        return;
    }
    while (c->ntried < TCP_MAX_TRIES) {
        struct rbackend *be =
            rtable_pick(c->route, c->tried, c->ntried, (int64_t)uv_now(&w->loop), &w->rng);
        if (!be)
            break;
        c->tried[c->ntried++] = be;
        struct rstream *s = malloc(sizeof(*s));
        if (!s)
            abort();
        s->data = c;
        c->backend = s;
        c->be = be;
        atomic_fetch_add_explicit(&be->inflight, 1, memory_order_relaxed);
        int r = rstream_connect(&w->loop, s, &backend_cbs, (const struct sockaddr *)&be->sa);
        if (r < 0) {
            attempt_failed(c, r);
            continue;
        }
        uv_timer_start(&c->timer, on_connect_timeout, (uint64_t)w->router->cfg.connect_timeout_ms,
                       0);
        return;
    }
    atomic_fetch_add_explicit(&w->router->stats.backend_errors, 1, memory_order_relaxed);
    log_debug("router", "tcp connection refused", "port=%d service=%s reason=\"%s\"", c->port,
              c->route->service, c->ntried ? "no backend connected" : "no backend");
    conn_fail(c);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct tcp_conn *c = t->data;
    attempt_failed(c, UV_ETIMEDOUT);
    conn_try(c);
}

static void on_tunnel_done(void *ud, uint64_t up, uint64_t down)
{
    struct tcp_conn *c = ud;
    struct rworker *w = c->w;
    log_debug("router", "tcp connection",
              "port=%d backend=%s bytes_up=%llu bytes_down=%llu "
              "duration_ms=%llu",
              c->port, c->be->addr, (unsigned long long)up, (unsigned long long)down,
              (unsigned long long)(uv_now(&w->loop) - c->start_ms));
    atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
    rbackend_unref(c->be);
    atomic_fetch_sub_explicit(&w->router->stats.client_conns, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->router->stats.backend_conns, 1, memory_order_relaxed);
    conn_release(c);
}

static void on_backend_connect(struct rstream *s, int status)
{
    struct tcp_conn *c = s->data;
    if (!c)
        return; /* an abandoned attempt */
    struct rworker *w = c->w;
    uv_timer_stop(&c->timer);
    if (status < 0) {
        attempt_failed(c, status);
        conn_try(c);
        return;
    }
    if (w->stopping) {
        /* No tunnel may start once shutdown began: it could outlive the
         * forced close of the open ones. */
        atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
        rstream_close(s, free_stream);
        c->backend = NULL;
        conn_fail(c);
        return;
    }
    struct rbackend *be = c->be;
    atomic_fetch_add_explicit(&be->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->router->stats.tcp_connections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->router->stats.backend_conns, 1, memory_order_relaxed);
    /* The tunnel keeps the backend, not the whole table, alive. */
    rbackend_ref(be);
    rtable_unref(c->table);
    c->table = NULL;
    c->route = NULL;
    conn_unlink(c);
    c->holds++;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    rsplice_start(w, c->client, s, NULL, 0, NULL, 0, w->router->cfg.idle_timeout_ms, on_tunnel_done,
                  c);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct tcp_listener *l = server->data;
    struct rworker *w = l->w;
    if (status < 0) {
        log_debug("router", "tcp accept failed", "port=%d reason=\"%s\"", l->port,
                  uv_strerror(status));
        return;
    }
    struct rstream *cs = malloc(sizeof(*cs));
    if (!cs)
        abort();
    if (rstream_accept(server, cs, &client_cbs, NULL, NULL, NULL) < 0) {
        free(cs);
        return;
    }
    struct rstats *st = &w->router->stats;
    int max = w->router->cfg.max_conns;
    int prev = atomic_fetch_add_explicit(&st->client_conns, 1, memory_order_relaxed);
    const struct rroute *route = NULL;
    if (!w->stopping && (max <= 0 || prev < max) && w->table)
        route = rtable_match_tcp(w->table, l->port);
    if (!route) {
        client_gone(w, cs);
        return;
    }
    struct tcp_conn *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->w = w;
    c->port = l->port;
    c->holds = 1;
    c->client = cs;
    cs->data = c;
    rtable_ref(w->table);
    c->table = w->table;
    c->route = route;
    c->start_ms = uv_now(&w->loop);
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    struct tcp_state *ts = w->tcp;
    c->next = ts->connecting;
    if (c->next)
        c->next->prev = c;
    ts->connecting = c;
    conn_try(c);
}

/* Parses a numeric address ("" and "0.0.0.0" are the IPv4 wildcard,
 * "localhost" is 127.0.0.1, brackets allowed around IPv6). */
static int addr_parse(const char *host, size_t len, struct net_addr *out)
{
    char h[INET6_ADDRSTRLEN + 2];
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    if (len >= sizeof(h))
        return -1;
    memcpy(h, host, len);
    h[len] = '\0';
    memset(out, 0, sizeof(*out));
    if (len == 0 || strcmp(h, "localhost") == 0) {
        out->family = AF_INET;
        if (len)
            inet_pton(AF_INET, "127.0.0.1", out->a);
        return 0;
    }
    if (inet_pton(AF_INET, h, out->a) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, h, out->a) != 1)
        return -1;
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    out->family = AF_INET6;
    if (memcmp(out->a, mapped, sizeof(mapped)) == 0) {
        memmove(out->a, out->a + 12, 4);
        memset(out->a + 4, 0, 12);
        out->family = AF_INET;
    }
    return 0;
}

static bool addr_any(const struct net_addr *x)
{
    static const unsigned char zero[16];
    return memcmp(x->a, zero, x->family == AF_INET ? 4 : 16) == 0;
}

/* Whether listeners on x and y would share connections: the same port and
 * address, or a wildcard covering the other (an IPv6 wildcard covers IPv4
 * too, dual-stack being Linux's default). */
static bool addr_overlap(const struct net_addr *x, const struct net_addr *y)
{
    if (x->port != y->port)
        return false;
    if (x->family != y->family)
        return (x->family == AF_INET6 && addr_any(x)) || (y->family == AF_INET6 && addr_any(y));
    return addr_any(x) || addr_any(y) || memcmp(x->a, y->a, 16) == 0;
}

/* Notes the router's own listen addresses ("host:port", as proxy.c reads
 * them) and the tcp routes' address, once per worker. */
static void own_init(struct rworker *w, struct tcp_state *st)
{
    const struct rconfig *cfg = &w->router->cfg;
    const char *ip = cfg->tcp_ip ? cfg->tcp_ip : "0.0.0.0";
    if (addr_parse(ip, strlen(ip), &st->ip) < 0)
        st->ip.family = 0; /* tcp_listen fails on it anyway */
    size_t n = cfg->n_http + cfg->n_https;
    st->own = calloc(n ? n : 1, sizeof(*st->own));
    if (!st->own)
        abort();
    for (size_t i = 0; i < n; i++) {
        const char *a = i < cfg->n_http ? cfg->http[i] : cfg->https[i - cfg->n_http];
        const char *colon = strrchr(a, ':');
        struct net_addr *o = &st->own[st->n_own];
        if (!colon || addr_parse(a, (size_t)(colon - a), o) < 0)
            continue;
        o->port = atoi(colon + 1);
        st->n_own++;
    }
}

static bool port_is_own(const struct tcp_state *st, int port)
{
    if (!st->ip.family)
        return false;
    struct net_addr at = st->ip;
    at.port = port;
    for (size_t i = 0; i < st->n_own; i++)
        if (addr_overlap(&at, &st->own[i]))
            return true;
    return false;
}

/* A listener on tcp_ip:port, or a libuv error. */
static int tcp_listen(struct rworker *w, int port, struct tcp_listener **out)
{
    const char *ip = w->router->cfg.tcp_ip ? w->router->cfg.tcp_ip : "0.0.0.0";
    struct sockaddr_storage ss;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) != 0)
        return UV_EINVAL;
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, TCP_BACKLOG) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct tcp_listener *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    l->w = w;
    l->port = port;
    l->h.data = l;
    int r = uv_tcp_init(&w->loop, &l->h);
    if (r < 0) {
        close(fd);
        free(l);
        return r;
    }
    r = uv_tcp_open(&l->h, fd);
    if (r < 0)
        close(fd); /* not the handle's yet */
    else
        r = uv_listen((uv_stream_t *)&l->h, TCP_BACKLOG, on_connection);
    if (r < 0) {
        uv_close((uv_handle_t *)&l->h, free_listener);
        return r;
    }
    *out = l;
    return 0;
}

/* Binds port p if it has no listener yet; logs a failure once per cause. */
static void port_bind(struct rworker *w, struct tcp_port *p)
{
    if (p->l || p->err == TCP_ERR_OWN)
        return;
    if (port_is_own(w->tcp, p->port)) {
        p->err = TCP_ERR_OWN;
        if (w->index == 0)
            log_warn("router", "tcp route not listened on: the router serves http there",
                     "port=%d ip=%s", p->port,
                     w->router->cfg.tcp_ip ? w->router->cfg.tcp_ip : "0.0.0.0");
        return;
    }
    int r = tcp_listen(w, p->port, &p->l);
    if (r == 0) {
        if (p->err)
            log_info("router", "tcp route listening", "port=%d worker=%d", p->port, w->index);
        p->err = 0;
        return;
    }
    p->l = NULL;
    if (r != p->err)
        log_warn("router", "tcp route cannot listen", "port=%d ip=%s worker=%d reason=\"%s\"",
                 p->port, w->router->cfg.tcp_ip ? w->router->cfg.tcp_ip : "0.0.0.0", w->index,
                 uv_strerror(r));
    p->err = r;
}

static void port_close(struct tcp_port *p)
{
    if (p->l)
        uv_close((uv_handle_t *)&p->l->h, free_listener);
    p->l = NULL;
}

/* Whether ports (sorted, maybe with repeats) are the ports of st->v. */
static bool ports_same(const struct tcp_state *st, const int *ports, size_t n)
{
    size_t i = 0;
    for (size_t j = 0; j < n; j++) {
        if (j > 0 && ports[j] == ports[j - 1])
            continue;
        if (i == st->n || st->v[i].port != ports[j])
            return false;
        i++;
    }
    return i == st->n;
}

void tcp_sync(struct rworker *w)
{
    if (w->stopping || !w->table)
        return;
    struct tcp_state *st = w->tcp;
    if (!st) {
        st = calloc(1, sizeof(*st));
        if (!st)
            abort();
        w->tcp = st;
        own_init(w, st);
    }
    size_t n;
    const int *ports = rtable_tcp_ports(w->table, &n);
    if (ports_same(st, ports, n)) {
        for (size_t i = 0; i < st->n; i++)
            port_bind(w, &st->v[i]); /* no-op unless an earlier bind failed */
        return;
    }
    struct tcp_port *v = n ? calloc(n, sizeof(*v)) : NULL;
    if (n && !v)
        abort();
    /* Merge the old list (sorted) with the table's ports (sorted). */
    size_t i = 0, j = 0, m = 0;
    while (i < st->n || j < n) {
        if (j > 0 && j < n && ports[j] == ports[j - 1]) {
            j++; /* one listener per port */
        } else if (j == n || (i < st->n && st->v[i].port < ports[j])) {
            port_close(&st->v[i++]); /* gone from the table */
        } else if (i == st->n || ports[j] < st->v[i].port) {
            v[m] = (struct tcp_port){.port = ports[j++]};
            port_bind(w, &v[m++]);
        } else {
            v[m] = st->v[i++];
            j++;
            port_bind(w, &v[m++]); /* no-op unless an earlier bind failed */
        }
    }
    free(st->v);
    st->v = v;
    st->n = m;
}

/* Ends a connection still connecting (shutdown began): the client is
 * closed, the backend not blamed. */
static void conn_abort(struct tcp_conn *c)
{
    if (c->backend) {
        atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
        c->backend->data = NULL; /* its connect callback finds nothing */
        rstream_close(c->backend, free_stream);
        c->backend = NULL;
        c->be = NULL;
    }
    uv_timer_stop(&c->timer);
    conn_fail(c);
}

void tcp_stop_listening(struct rworker *w)
{
    struct tcp_state *st = w->tcp;
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        port_close(&st->v[i]);
    free(st->v);
    st->v = NULL;
    st->n = 0;
    while (st->connecting)
        conn_abort(st->connecting);
}

void tcp_free(struct rworker *w)
{
    struct tcp_state *st = w->tcp;
    if (!st)
        return;
    free(st->v);
    free(st->own);
    free(st);
    w->tcp = NULL;
}
