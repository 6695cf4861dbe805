/* The router's byte tunnel (src/router/splice.h) between two plain
 * loopback streams in one libuv loop:
 *
 *   peer a (uv_tcp) --- stream a (accepted) ==splice== stream b (connected) --- peer b
 *
 * The peers are plain libuv handles of the test; the worker is a zeroed
 * struct rworker with a loop and a router for the counters only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "router/splice.h"
#include "router/stream.h"
#include "router/worker.h"

/* Byte k of every test stream: a direction's bytes, pending ones included,
 * form one sequence the receiver checks. */
static inline unsigned char pat(uint64_t k, unsigned seed)
{
    return (unsigned char)((k % 251) ^ seed);
}

struct pair;

struct peer {
    uv_tcp_t h;
    struct pair *p;
    unsigned seed; /* of the bytes this peer receives */
    uint64_t received;
    uint64_t bad; /* bytes that did not match the pattern */
    bool ended;   /* EOF or error read */
    int err;      /* the read error, 0 for a clean EOF */
    bool reading;
    char *sendbuf;
    size_t send_len;
    uint64_t sent_total; /* bytes given to peer_send so far */
    bool sent;
    bool shut_after_send;
    uv_write_t wr;
    uv_shutdown_t sh;
    char rbuf[64 * 1024];
};

struct pair {
    struct peer pa, pb;
    struct rstream *a, *b;
    bool a_ok, b_ok, pa_ok, pb_ok;
    int done_calls;
    uint64_t up, down;
    size_t max_queued_a, max_queued_b;
    uv_connect_t conn;
};

struct fx {
    struct router router;
    struct rworker w;
    uv_tcp_t la, lb;
    struct sockaddr_storage la_addr, lb_addr;
    uv_timer_t tick;
    uv_check_t check;
    SSL_CTX *tls; /* non-NULL: stream a is TLS */
    struct pair *setting_up;
    struct pair *watched[4];
    size_t n_watched;
};

static struct fx *g;

static void null_data(struct rstream *s, char *buf, size_t n)
{
    (void)s;
    (void)n;
    rbuf_put(buf);
}

static void null_end(struct rstream *s, int why)
{
    (void)s;
    (void)why;
}

static void on_b_connect(struct rstream *s, int status)
{
    struct pair *p = s->data;
    assert_int_equal(status, 0);
    p->b_ok = true;
}

static const struct rstream_cbs null_cbs = {null_data, null_end, on_b_connect};

static void peer_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct peer *pe = h->data;
    *buf = uv_buf_init(pe->rbuf, sizeof(pe->rbuf));
}

static void peer_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf)
{
    struct peer *pe = h->data;
    if (n < 0) {
        pe->ended = true;
        pe->err = n == UV_EOF ? 0 : (int)n;
        uv_read_stop(h);
        return;
    }
    for (ssize_t i = 0; i < n; i++)
        if ((unsigned char)buf->base[i] != pat(pe->received + (uint64_t)i, pe->seed))
            pe->bad++;
    pe->received += (uint64_t)n;
}

static void peer_read_start(struct peer *pe)
{
    pe->reading = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&pe->h, peer_alloc, peer_read), 0);
}

static void peer_shut_cb(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

static void peer_shutdown(struct peer *pe)
{
    assert_int_equal(uv_shutdown(&pe->sh, (uv_stream_t *)&pe->h, peer_shut_cb), 0);
}

static void peer_written(uv_write_t *req, int status)
{
    struct peer *pe = req->data;
    (void)status;
    pe->sent = true;
    free(pe->sendbuf);
    pe->sendbuf = NULL;
    if (status == 0 && pe->shut_after_send)
        peer_shutdown(pe);
}

/* Sends the pattern bytes [off, off + len) of the other peer's seed. */
static void peer_send(struct peer *pe, unsigned seed, uint64_t off, size_t len, bool shut)
{
    pe->sendbuf = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        pe->sendbuf[i] = (char)pat(off + i, seed);
    pe->send_len = len;
    pe->sent_total += len;
    pe->sent = false;
    pe->shut_after_send = shut;
    pe->wr.data = pe;
    uv_buf_t b = uv_buf_init(pe->sendbuf, (unsigned)len);
    assert_int_equal(uv_write(&pe->wr, (uv_stream_t *)&pe->h, &b, 1, peer_written), 0);
}

static void on_la(uv_stream_t *server, int status)
{
    assert_int_equal(status, 0);
    struct pair *p = g->setting_up;
    p->a = malloc(sizeof(*p->a));
    assert_int_equal(rstream_accept(server, p->a, &null_cbs, g->tls, NULL, NULL), 0);
    p->a->data = p;
    p->a_ok = true;
}

static void on_lb(uv_stream_t *server, int status)
{
    assert_int_equal(status, 0);
    struct pair *p = g->setting_up;
    uv_tcp_init(&g->w.loop, &p->pb.h);
    assert_int_equal(uv_accept(server, (uv_stream_t *)&p->pb.h), 0);
    p->pb_ok = true;
}

static void on_pa_connect(uv_connect_t *req, int status)
{
    struct pair *p = req->data;
    assert_int_equal(status, 0);
    p->pa_ok = true;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Samples the streams' queues once per loop iteration (after the reads). */
static void on_check(uv_check_t *c)
{
    (void)c;
    for (size_t i = 0; i < g->n_watched; i++) {
        struct pair *p = g->watched[i];
        if (p->done_calls || !p->a)
            continue;
        size_t qa = rstream_queued(p->a), qb = rstream_queued(p->b);
        if (qa > p->max_queued_a)
            p->max_queued_a = qa;
        if (qb > p->max_queued_b)
            p->max_queued_b = qb;
    }
}

static void listen_on(uv_tcp_t *l, struct sockaddr_storage *addr, uv_connection_cb cb)
{
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_tcp_init(&g->w.loop, l), 0);
    assert_int_equal(uv_tcp_bind(l, (struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)l, 16, cb), 0);
    int len = sizeof(*addr);
    assert_int_equal(uv_tcp_getsockname(l, (struct sockaddr *)addr, &len), 0);
}

static int setup(void **state)
{
    g = calloc(1, sizeof(*g));
    g->router.cfg.idle_timeout_ms = 55000;
    g->w.router = &g->router;
    assert_int_equal(uv_loop_init(&g->w.loop), 0);
    listen_on(&g->la, &g->la_addr, on_la);
    listen_on(&g->lb, &g->lb_addr, on_lb);
    uv_timer_init(&g->w.loop, &g->tick);
    uv_timer_start(&g->tick, on_tick, 5, 5);
    uv_check_init(&g->w.loop, &g->check);
    uv_check_start(&g->check, on_check);
    *state = g;
    return 0;
}

static void close_if_open(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int teardown(void **state)
{
    (void)state;
    rsplice_close_all(&g->w); /* a failed test may leave one open */
    uv_walk(&g->w.loop, close_if_open, NULL);
    while (uv_run(&g->w.loop, UV_RUN_DEFAULT) != 0)
        ;
    assert_int_equal(uv_loop_close(&g->w.loop), 0);
    for (size_t i = 0; i < g->n_watched; i++) {
        free(g->watched[i]->pa.sendbuf);
        free(g->watched[i]->pb.sendbuf);
        free(g->watched[i]);
    }
    if (g->tls)
        SSL_CTX_free(g->tls);
    free(g);
    g = NULL;
    rbuf_thread_cleanup();
    return 0;
}

/* Runs the loop until cond holds (checked at least every 5 ms, the tick)
 * or timeout_ms pass; gives whether it holds. */
#define RUN_UNTIL(cond, timeout_ms)                                                                \
    ({                                                                                             \
        uint64_t end_ = uv_now(&g->w.loop) + (timeout_ms);                                         \
        while (!(cond) && uv_now(&g->w.loop) < end_)                                               \
            uv_run(&g->w.loop, UV_RUN_ONCE);                                                       \
        (bool)(cond);                                                                              \
    })

/* A connected pair: peer a to stream a, stream b to peer b. */
static struct pair *pair_new(void)
{
    struct pair *p = calloc(1, sizeof(*p));
    p->pa.p = p->pb.p = p;
    p->pa.h.data = &p->pa;
    p->pa.seed = 0x5a; /* peer a receives what b sends */
    p->pb.seed = 0x33;
    g->setting_up = p;
    g->watched[g->n_watched++] = p;
    if (g->tls) {
        p->pa_ok = true; /* peer a is a thread of the test */
    } else {
        uv_tcp_init(&g->w.loop, &p->pa.h);
        p->pa.h.data = &p->pa;
        p->conn.data = p;
        assert_int_equal(
            uv_tcp_connect(&p->conn, &p->pa.h, (struct sockaddr *)&g->la_addr, on_pa_connect), 0);
    }
    p->b = malloc(sizeof(*p->b));
    p->b->data = p;
    assert_int_equal(rstream_connect(&g->w.loop, p->b, &null_cbs, (struct sockaddr *)&g->lb_addr),
                     0);
    assert_true(RUN_UNTIL(p->a_ok && p->b_ok && p->pa_ok && p->pb_ok, 5000));
    p->pb.h.data = &p->pb;
    g->setting_up = NULL;
    return p;
}

static void on_done(void *ud, uint64_t up, uint64_t down)
{
    struct pair *p = ud;
    p->done_calls++;
    p->up = up;
    p->down = down;
    p->a = p->b = NULL; /* freed by the splice */
}

static void start(struct pair *p, const char *ap, size_t an, const char *bp, size_t bn, int idle)
{
    rsplice_start(&g->w, p->a, p->b, ap, an, bp, bn, idle, on_done, p);
}

static int tunnels(void)
{
    return atomic_load(&g->router.stats.tunnels);
}

/* Several MiB both ways while each receiver holds off reading at first:
 * the queues stay bounded (flow control), every byte arrives in order. */
static void test_bytes_both_ways(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    /* Small kernel buffers, so a stalled receiver shows in the queues. */
    int small = 32 * 1024;
    uv_recv_buffer_size((uv_handle_t *)&p->pa.h, &small);
    uv_recv_buffer_size((uv_handle_t *)&p->pb.h, &small);
    uv_send_buffer_size((uv_handle_t *)&p->a->tcp, &small);
    uv_send_buffer_size((uv_handle_t *)&p->b->tcp, &small);
    start(p, NULL, 0, NULL, 0, 10000);
    assert_int_equal(tunnels(), 1);
    assert_ptr_not_equal(g->w.splices, NULL);

    size_t up = 8u << 20, down = 5u << 20;
    peer_send(&p->pa, p->pb.seed, 0, up, true);
    peer_send(&p->pb, p->pa.seed, 0, down, true);
    /* Nobody reads for a while: the tunnel must stop reading too. */
    RUN_UNTIL(false, 300);
    assert_int_equal(p->done_calls, 0);
    assert_true(p->max_queued_b > 0);
    assert_true(p->max_queued_a > 0);
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended && p->pb.ended, 30000));

    assert_int_equal(p->done_calls, 1);
    assert_int_equal(p->up, up);
    assert_int_equal(p->down, down);
    assert_int_equal(p->pb.received, up);
    assert_int_equal(p->pa.received, down);
    assert_int_equal(p->pa.bad + p->pb.bad, 0);
    assert_int_equal(p->pa.err, 0);
    assert_int_equal(p->pb.err, 0);
    assert_true(p->max_queued_a <= RSTREAM_HIGH_WATER + RBUF_SIZE);
    assert_true(p->max_queued_b <= RSTREAM_HIGH_WATER + RBUF_SIZE);
    assert_int_equal(tunnels(), 0);
    assert_null(g->w.splices);
    RUN_UNTIL(false, 50);
    assert_int_equal(p->done_calls, 1);
}

/* Bytes read before the tunnel (over one rbuf of them) go first. */
static void test_pending_first(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    size_t an = RBUF_SIZE + 1000, bn = 7;
    char *ap = malloc(an), bp[7];
    for (size_t i = 0; i < an; i++)
        ap[i] = (char)pat(i, p->pb.seed);
    for (size_t i = 0; i < bn; i++)
        bp[i] = (char)pat(i, p->pa.seed);
    start(p, ap, an, bp, bn, 10000);
    free(ap); /* copied */
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    peer_send(&p->pa, p->pb.seed, an, 100000, true);
    peer_send(&p->pb, p->pa.seed, bn, 3000, true);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended && p->pb.ended, 10000));
    assert_int_equal(p->pb.received, an + 100000);
    assert_int_equal(p->pa.received, bn + 3000);
    assert_int_equal(p->pa.bad + p->pb.bad, 0);
    assert_int_equal(p->up, an + 100000);
    assert_int_equal(p->down, bn + 3000);
}

/* An EOF from a reaches peer b, and b's bytes still flow to a until b's
 * own EOF ends the tunnel. */
static void test_half_close(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    start(p, NULL, 0, NULL, 0, 10000);
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    peer_send(&p->pa, p->pb.seed, 0, 1000, true);
    assert_true(RUN_UNTIL(p->pb.ended, 5000));
    assert_int_equal(p->pb.err, 0);
    assert_int_equal(p->pb.received, 1000);
    assert_int_equal(p->done_calls, 0);

    peer_send(&p->pb, p->pa.seed, 0, 200000, false);
    assert_true(RUN_UNTIL(p->pa.received == 200000, 5000));
    RUN_UNTIL(false, 50);
    assert_int_equal(p->done_calls, 0);
    assert_false(p->pa.ended);
    assert_int_equal(tunnels(), 1);

    peer_shutdown(&p->pb);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended, 5000));
    assert_int_equal(p->pa.err, 0);
    assert_int_equal(p->pa.bad + p->pb.bad, 0);
    assert_int_equal(p->up, 1000);
    assert_int_equal(p->down, 200000);
    assert_int_equal(tunnels(), 0);
}

static void on_trickle(uv_timer_t *t)
{
    struct peer *pe = t->data;
    if (pe->sendbuf) /* the previous byte is still going */
        return;
    peer_send(pe, pe->p->pb.seed, pe->sent_total, 1, false);
}

/* Bytes moving keep the tunnel open; idle_ms without any close it. */
static void test_idle_timeout(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    start(p, NULL, 0, NULL, 0, 200);
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    uv_timer_t trickle;
    uv_timer_init(&g->w.loop, &trickle);
    trickle.data = &p->pa;
    uv_timer_start(&trickle, on_trickle, 60, 60);
    RUN_UNTIL(false, 700);
    assert_int_equal(p->done_calls, 0);
    assert_true(p->pb.received >= 5);
    uv_timer_stop(&trickle);
    uv_close((uv_handle_t *)&trickle, NULL);
    uint64_t quiet = uv_now(&g->w.loop);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended && p->pb.ended, 3000));
    uint64_t took = uv_now(&g->w.loop) - quiet;
    assert_true(took >= 150 && took < 1500);
    assert_int_equal(p->up, p->pb.received);
    assert_int_equal(p->down, 0);
    assert_int_equal(p->pb.bad, 0);
    assert_int_equal(tunnels(), 0);
}

static void test_close_all(void **state)
{
    (void)state;
    struct pair *p = pair_new(), *q = pair_new();
    start(p, NULL, 0, NULL, 0, 0);
    start(q, "x", 1, NULL, 0, 0);
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    peer_read_start(&q->pa);
    peer_read_start(&q->pb);
    assert_true(RUN_UNTIL(q->pb.received == 1, 5000));
    assert_int_equal(tunnels(), 2);
    rsplice_close_all(&g->w);
    assert_null(g->w.splices);
    assert_true(RUN_UNTIL(p->done_calls && q->done_calls && p->pa.ended && p->pb.ended &&
                              q->pa.ended && q->pb.ended,
                          5000));
    assert_int_equal(p->done_calls, 1);
    assert_int_equal(q->done_calls, 1);
    assert_int_equal(q->up, 1);
    assert_int_equal(tunnels(), 0);
    rsplice_close_all(&g->w); /* nothing left: harmless */
}

/* A reset on one side closes the other. */
static void test_error_closes_both(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    start(p, NULL, 0, NULL, 0, 10000);
    peer_read_start(&p->pa);
    peer_read_start(&p->pb);
    peer_send(&p->pa, p->pb.seed, 0, 10, false);
    assert_true(RUN_UNTIL(p->pb.received == 10, 5000));
    uv_read_stop((uv_stream_t *)&p->pb.h);
    assert_int_equal(uv_tcp_close_reset(&p->pb.h, NULL), 0);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended, 5000));
    assert_int_equal(p->done_calls, 1);
    assert_int_equal(p->up, 10);
    assert_int_equal(tunnels(), 0);
}

/* A writer that sends 100-byte pieces, one per loop iteration, so the
 * tunnel reads them one by one (each read in an rbuf of its own). */
struct trickler {
    uv_idle_t idle;
    struct peer *pe;
    unsigned seed;
    uint64_t total, off;
    uint64_t progress_ms; /* uv_now() of the last byte the kernel took */
    size_t max_out;       /* most rbufs outstanding seen */
    bool gave_up;         /* too many: stopped early (the test fails) */
};

#define PIECE 100

static void on_trickler(uv_idle_t *h)
{
    struct trickler *t = h->data;
    size_t out = rbuf_outstanding();
    if (out > t->max_out)
        t->max_out = out;
    if (out > 64) { /* unbounded: stop before it takes the machine's memory */
        t->gave_up = true;
        uv_idle_stop(h);
        return;
    }
    if (t->off == t->total) {
        uv_idle_stop(h);
        return;
    }
    char b[PIECE];
    size_t len = t->total - t->off < PIECE ? (size_t)(t->total - t->off) : PIECE;
    for (size_t i = 0; i < len; i++)
        b[i] = (char)pat(t->off + i, t->seed);
    uv_buf_t ub = uv_buf_init(b, (unsigned)len);
    int w = uv_try_write((uv_stream_t *)&t->pe->h, &ub, 1);
    if (w > 0) {
        t->off += (uint64_t)w;
        t->progress_ms = uv_now(h->loop);
    }
}

/* A receiver that does not read, fed by a sender of many small pieces:
 * what the tunnel holds stays bounded in memory (not only in bytes), and
 * every byte arrives once the receiver reads. */
static void test_small_pieces_bounded(void **state)
{
    (void)state;
    struct pair *p = pair_new();
    int small = 32 * 1024;
    uv_recv_buffer_size((uv_handle_t *)&p->pa.h, &small);
    uv_send_buffer_size((uv_handle_t *)&p->a->tcp, &small);
    uv_recv_buffer_size((uv_handle_t *)&p->b->tcp, &small);
    uv_send_buffer_size((uv_handle_t *)&p->pb.h, &small);
    start(p, NULL, 0, NULL, 0, 10000);
    size_t base = rbuf_outstanding();
    /* Static: a failed assertion leaves the handle to teardown's walk. */
    static struct trickler t;
    t = (struct trickler){.pe = &p->pb, .seed = p->pa.seed, .total = 1u << 20};
    t.progress_ms = uv_now(&g->w.loop);
    uv_idle_init(&g->w.loop, &t.idle);
    t.idle.data = &t;
    uv_idle_start(&t.idle, on_trickler);
    /* Until the writer is stuck: the kernel buffers and the tunnel are full. */
    assert_true(RUN_UNTIL(t.gave_up || uv_now(&g->w.loop) - t.progress_ms >= 300, 20000));
    assert_false(t.gave_up);
    assert_true(t.off < t.total); /* the tunnel did push back */
    assert_true(t.max_out - base <= RSTREAM_HIGH_WATER / RBUF_SIZE + 4);
    assert_true(rstream_queued(p->a) > 0);
    assert_true(p->max_queued_a <= RSTREAM_HIGH_WATER + RBUF_SIZE);

    peer_read_start(&p->pa);
    assert_true(RUN_UNTIL(p->pa.received == t.total || t.gave_up, 60000));
    assert_false(t.gave_up);
    assert_int_equal(p->pa.bad, 0);
    assert_true(t.max_out - base <= RSTREAM_HIGH_WATER / RBUF_SIZE + 4);
    uv_close((uv_handle_t *)&t.idle, NULL);
    peer_read_start(&p->pb);
    peer_shutdown(&p->pa);
    peer_shutdown(&p->pb);
    assert_true(RUN_UNTIL(p->done_calls && p->pa.ended && p->pb.ended, 5000));
    assert_int_equal(p->down, t.total);
    assert_int_equal(rbuf_outstanding(), base);
}

/* A blocking TLS client in a thread, as peer a of a TLS stream a. */
struct tls_client {
    struct sockaddr_storage addr;
    int fd; /* connected before the thread starts */
    size_t up;
    unsigned up_seed, down_seed;
    uint64_t got, bad;
    bool close_notify; /* the tunnel's close_notify arrived after the bytes */
    atomic_bool finished;
};

static void *tls_client_run(void *arg)
{
    struct tls_client *c = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, c->fd);
    if (SSL_connect(ssl) == 1) {
        char *b = malloc(c->up);
        for (size_t i = 0; i < c->up; i++)
            b[i] = (char)pat(i, c->up_seed);
        size_t off = 0;
        while (off < c->up) {
            int n = SSL_write(ssl, b + off, (int)(c->up - off));
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        free(b);
        SSL_shutdown(ssl); /* our close_notify: the tunnel's EOF from a */
        char rb[16384];
        for (;;) {
            int n = SSL_read(ssl, rb, sizeof(rb));
            if (n <= 0) {
                c->close_notify = SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN;
                break;
            }
            for (int i = 0; i < n; i++)
                if ((unsigned char)rb[i] != pat(c->got + (uint64_t)i, c->down_seed))
                    c->bad++;
            c->got += (uint64_t)n;
        }
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(c->fd);
    ERR_clear_error();
    OPENSSL_thread_stop();
    atomic_store(&c->finished, true);
    return NULL;
}

/* TLS on side a: the client's close_notify ends a's direction, the
 * backend's bytes then reach the client, and the tunnel's own close_notify
 * follows them before the connection closes. */
static void test_tls_side(void **state)
{
    (void)state;
    struct pier_err err = {0};
    g->tls = tls_ctx_self_signed("localhost", &err);
    assert_non_null(g->tls);
    struct tls_client c = {.up = 300000, .up_seed = 0x33, .down_seed = 0x5a};
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c.fd >= 0);
    /* The kernel completes the connect before anyone accepts. */
    assert_int_equal(connect(c.fd, (struct sockaddr *)&g->la_addr, sizeof(struct sockaddr_in)), 0);
    struct pair *p = pair_new();
    assert_true(rstream_is_tls(p->a));
    start(p, NULL, 0, NULL, 0, 10000);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, tls_client_run, &c), 0);
    peer_read_start(&p->pb);
    assert_true(RUN_UNTIL(p->pb.ended, 10000));
    assert_int_equal(p->pb.received, c.up);
    assert_int_equal(p->pb.bad, 0);
    size_t down = 2u << 20;
    peer_send(&p->pb, p->pa.seed, 0, down, true);
    assert_true(RUN_UNTIL(p->done_calls && atomic_load(&c.finished), 10000));
    pthread_join(th, NULL);
    assert_int_equal(c.got, down);
    assert_int_equal(c.bad, 0);
    assert_true(c.close_notify);
    assert_int_equal(p->up, c.up);
    assert_int_equal(p->down, down);
    assert_int_equal(tunnels(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bytes_both_ways, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pending_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_closes_both, setup, teardown),
        cmocka_unit_test_setup_teardown(test_small_pieces_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_side, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
