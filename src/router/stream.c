/* stream: plain and TLS byte streams over libuv (stream.h).
 *
 * Plain streams are a thin layer over uv_tcp_t: libuv reads into rbufs and
 * the callee owns them; writes go straight to uv_write (which tries the
 * socket at once and queues only what the kernel did not take).
 *
 * TLS streams read ciphertext into an rbuf, feed it to the engine and
 * decrypt into rbufs handed to on_data; whatever ciphertext the engine
 * made (handshake records, alerts, encrypted writes) is moved into rbufs
 * and written after every read and write. A plaintext write completes when
 * the ciphertext written after it does (writes complete in order). When a
 * reader stops reading in on_data, plaintext the engine still holds is
 * delivered after the next rstream_read_start from an idle callback, never
 * from inside rstream_read_start itself.
 *
 * Writes first try the socket directly (uv_try_write): a write the kernel
 * takes whole never enters libuv's write queue, whose drain costs an
 * epoll_ctl per write in libuv 1.44. Its callback is still called later,
 * from a per-thread check handle that runs right after the loop's poll
 * phase, never from inside rstream_write. Only what the kernel did not
 * take is queued with uv_write. s->queued counts a stream's completions
 * waiting there; a close hands them to the close path (UV_ECANCELED), so
 * no callback runs after close_cb.
 *
 * Flow control counts memory, not bytes (s->held, rstream_queued): a write
 * left in libuv's queue holds its whole rbuf however few bytes it carries,
 * so a peer that sends many small pieces to a reader that does not read
 * pins at most RSTREAM_HIGH_WATER / RBUF_SIZE rbufs per stream before its
 * source is paused, not one rbuf per piece up to RSTREAM_HIGH_WATER bytes.
 * Writes the kernel takes at once are never counted, so the fast path does
 * no extra work.
 *
 * Memory: rbufs and write requests come from small per-thread free lists,
 * so a steady stream of requests allocates nothing. The TLS state (the idle
 * handle, the deferred writes) lives in a block hung on tcp.data; a plain
 * stream uses tcp.data only while it closes. */
#include "router/stream.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

/* How many free rbufs (64 KiB each) and write requests a thread keeps. */
#define RBUF_CACHE 64
#define WREQ_CACHE 1024

enum {
    RS_READING = 1u << 0,
    RS_ENDED = 1u << 1, /* on_end was called */
    RS_CLOSING = 1u << 2,
    RS_SHUT = 1u << 3,
};

/* A write, connect, shutdown or close in progress. */
struct wreq {
    union {
        uv_write_t w;
        uv_connect_t c;
        uv_shutdown_t sd;
    } u;
    struct rstream *s;
    rstream_write_cb cb;
    void *ud;
    char *owned;        /* an rbuf freed when the write is done */
    size_t held;        /* its share of s->held while in libuv's queue */
    struct wreq *chain; /* TLS: plaintext writes completing with this one */
    struct wreq *next;  /* in a chain, or on the free list */
    void (*close_cb)(struct rstream *s);
};

/* A TLS stream's state besides the engine (s->tls). */
struct rstls {
    uv_idle_t idle;                        /* delivers plaintext held back */
    struct wreq *deferred, **deferred_end; /* writes no ciphertext carried yet */
    struct wreq *taken;                    /* completions a close took off doneq */
    bool more;                             /* the engine may hold plaintext */
    int closes;                            /* close callbacks still to come */
    void (*close_cb)(struct rstream *s);
};

/* Completions of writes the kernel took at once, run by check. One loop
 * per thread (a worker); a stream on another loop of the same thread
 * always goes through uv_write. */
struct doneq {
    uv_check_t check;
    uv_loop_t *loop;
    struct wreq *head, **tail;
};

static __thread struct doneq doneq;
static __thread char *rbuf_free;
static __thread unsigned rbuf_nfree;
static __thread size_t rbuf_out;
static __thread struct wreq *wreq_free;
static __thread unsigned wreq_nfree;

char *rbuf_get(void)
{
    rbuf_out++;
    char *b = rbuf_free;
    if (!b)
        return xmalloc(RBUF_SIZE);
    memcpy(&rbuf_free, b, sizeof(char *));
    rbuf_nfree--;
    return b;
}

void rbuf_put(char *buf)
{
    if (!buf)
        return;
    rbuf_out--;
    if (rbuf_nfree >= RBUF_CACHE) {
        free(buf);
        return;
    }
    memcpy(buf, &rbuf_free, sizeof(char *));
    rbuf_free = buf;
    rbuf_nfree++;
}

size_t rbuf_outstanding(void)
{
    return rbuf_out;
}

void rbuf_thread_cleanup(void)
{
    while (rbuf_free) {
        char *b = rbuf_free;
        memcpy(&rbuf_free, b, sizeof(char *));
        free(b);
    }
    rbuf_nfree = 0;
    while (wreq_free) {
        struct wreq *r = wreq_free;
        wreq_free = r->next;
        free(r);
    }
    wreq_nfree = 0;
    /* The loop is gone (its handles were closed by walking them). */
    doneq.loop = NULL;
    doneq.head = NULL;
}

static struct wreq *wreq_get(struct rstream *s)
{
    struct wreq *r = wreq_free;
    if (r) {
        wreq_free = r->next;
        wreq_nfree--;
    } else {
        r = xmalloc(sizeof(*r));
    }
    r->s = s;
    r->cb = NULL;
    r->ud = NULL;
    r->owned = NULL;
    r->held = 0;
    r->chain = NULL;
    r->next = NULL;
    r->close_cb = NULL;
    return r;
}

static void wreq_put(struct wreq *r)
{
    if (wreq_nfree >= WREQ_CACHE) {
        free(r);
        return;
    }
    r->next = wreq_free;
    wreq_free = r;
    wreq_nfree++;
}

static struct wreq *wreq_of(void *req)
{
    return (struct wreq *)req; /* the union is the first member */
}

static struct rstls *tls_of(const struct rstream *s)
{
    return s->tcp.data;
}

static void stream_init(struct rstream *s, const struct rstream_cbs *cbs)
{
    s->cbs = cbs;
    s->tls = NULL;
    s->queued = 0;
    s->held = 0;
    s->flags = 0;
}

/* ---- reading ---------------------------------------------------------- */

static void read_ended(struct rstream *s, int why)
{
    s->flags |= RS_ENDED;
    if (s->flags & RS_READING) {
        s->flags &= ~RS_READING;
        uv_read_stop((uv_stream_t *)&s->tcp);
    }
    s->cbs->on_end(s, why);
}

static int tls_flush(struct rstream *s, struct wreq *user);

/* Decrypts what the engine has while the reader reads. spare: an rbuf to
 * use first (or NULL). */
static void tls_pump(struct rstream *s, char *spare)
{
    struct rstls *x = tls_of(s);
    x->more = false;
    for (;;) {
        if (s->flags & (RS_CLOSING | RS_ENDED))
            break;
        if (!(s->flags & RS_READING)) {
            x->more = true;
            break;
        }
        char *out = spare ? spare : rbuf_get();
        spare = NULL;
        ssize_t r = tls_conn_read(s->tls, out, RBUF_SIZE);
        /* Handshake records and alerts go out before anything on_data
         * writes. */
        tls_flush(s, NULL);
        if (r > 0) {
            s->cbs->on_data(s, out, (size_t)r);
            continue;
        }
        rbuf_put(out);
        if (r != TLS_WANT && !(s->flags & RS_CLOSING))
            read_ended(s, r == TLS_CLOSED ? RSTREAM_EOF : RSTREAM_ERROR);
        break;
    }
    rbuf_put(spare);
}

static void on_idle(uv_idle_t *h)
{
    struct rstream *s = h->data;
    uv_idle_stop(h);
    if (s->flags & RS_READING)
        tls_pump(s, NULL);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = rbuf_get();
    buf->len = RBUF_SIZE;
}

static void on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf)
{
    struct rstream *s = (struct rstream *)h; /* tcp is the first member */
    if (n > 0) {
        if (s->flags & RS_CLOSING) {
            rbuf_put(buf->base);
        } else if (s->tls) {
            tls_conn_feed(s->tls, buf->base, (size_t)n);
            tls_pump(s, buf->base);
        } else {
            s->cbs->on_data(s, buf->base, (size_t)n);
        }
        return;
    }
    rbuf_put(buf->base);
    if (n == 0 || (s->flags & (RS_CLOSING | RS_ENDED)))
        return;
    /* Plaintext the engine held back goes first. */
    if (s->tls && tls_of(s)->more) {
        uv_idle_stop(&tls_of(s)->idle);
        tls_pump(s, NULL);
        if (s->flags & (RS_CLOSING | RS_ENDED))
            return;
    }
    read_ended(s, n == UV_EOF ? RSTREAM_EOF : RSTREAM_ERROR);
}

int rstream_read_start(struct rstream *s)
{
    if (s->flags & RS_CLOSING)
        return UV_EINVAL;
    if (s->flags & (RS_READING | RS_ENDED))
        return 0;
    int r = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (r < 0)
        return r;
    s->flags |= RS_READING;
    if (s->tls && tls_of(s)->more)
        uv_idle_start(&tls_of(s)->idle, on_idle);
    return 0;
}

void rstream_read_stop(struct rstream *s)
{
    if (!(s->flags & RS_READING))
        return;
    s->flags &= ~RS_READING;
    uv_read_stop((uv_stream_t *)&s->tcp);
    if (s->tls)
        uv_idle_stop(&tls_of(s)->idle);
}

/* ---- writing ---------------------------------------------------------- */

/* Runs r's callback (and its chain) and frees it. */
static void complete(struct wreq *r, int status)
{
    struct rstream *s = r->s;
    while (r) {
        struct wreq *chain = r->chain;
        rstream_write_cb cb = r->cb;
        void *ud = r->ud;
        rbuf_put(r->owned);
        wreq_put(r);
        if (cb)
            cb(s, status, ud);
        r = chain;
    }
}

/* Completes a list linked by next. */
static void complete_list(struct wreq *r, int status)
{
    while (r) {
        struct wreq *next = r->next;
        complete(r, status);
        r = next;
    }
}

static void on_written(uv_write_t *req, int status)
{
    struct wreq *r = wreq_of(req);
    r->s->held -= r->held; /* before the callback, which looks at it */
    complete(r, status);
}

static void on_check(uv_check_t *h)
{
    /* Callbacks may write again: run until nothing is left. */
    while (doneq.head) {
        struct wreq *r = doneq.head;
        doneq.head = r->next;
        if (!doneq.head)
            doneq.tail = &doneq.head;
        r->next = NULL;
        r->s->queued--;
        complete(r, 0);
    }
    uv_check_stop(h);
}

static bool doneq_usable(uv_loop_t *loop)
{
    if (doneq.loop == loop)
        return true;
    if (doneq.loop)
        return false;
    uv_check_init(loop, &doneq.check);
    uv_unref((uv_handle_t *)&doneq.check); /* never keeps a loop alive */
    doneq.loop = loop;
    doneq.head = NULL;
    doneq.tail = &doneq.head;
    return true;
}

/* Takes s's completions off the queue (its close is starting). */
static struct wreq *doneq_take(struct rstream *s)
{
    struct wreq *out = NULL, **out_end = &out;
    struct wreq **pp = &doneq.head;
    doneq.tail = &doneq.head;
    while (*pp) {
        struct wreq *r = *pp;
        if (r->s == s) {
            *pp = r->next;
            r->next = NULL;
            *out_end = r;
            out_end = &r->next;
        } else {
            pp = &r->next;
            doneq.tail = &r->next;
        }
    }
    s->queued = 0;
    return out;
}

/* Writes bufs for r (its callback, owned buffer and chain): straight to the
 * socket if the kernel takes them all, else the rest through uv_write.
 * Returns 0 or a libuv error (then r was not completed: the caller frees
 * it). */
static int raw_write(struct rstream *s, const uv_buf_t *bufs, unsigned n, struct wreq *r)
{
    uv_buf_t rest[8];
    if (n <= 8 && doneq_usable(s->tcp.loop)) {
        int w = uv_try_write((uv_stream_t *)&s->tcp, bufs, n);
        if (w < 0 && w != UV_EAGAIN)
            return w;
        size_t done = w > 0 ? (size_t)w : 0;
        unsigned k = 0;
        for (unsigned i = 0; i < n; i++) {
            if (done >= bufs[i].len) {
                done -= bufs[i].len;
                continue;
            }
            rest[k].base = bufs[i].base + done;
            rest[k].len = bufs[i].len - done;
            done = 0;
            k++;
        }
        if (k == 0) {
            r->next = NULL;
            *doneq.tail = r;
            doneq.tail = &r->next;
            s->queued++;
            if (!uv_is_active((uv_handle_t *)&doneq.check))
                uv_check_start(&doneq.check, on_check);
            return 0;
        }
        bufs = rest;
        n = k;
    }
    /* What stays in memory until the write is done (rstream_queued). */
    size_t held = 0;
    if (r->owned)
        held = RBUF_SIZE;
    else
        for (unsigned i = 0; i < n; i++)
            held += bufs[i].len;
    int e = uv_write(&r->u.w, (uv_stream_t *)&s->tcp, bufs, n, on_written);
    if (e == 0) {
        r->held = held;
        s->held += held;
    }
    return e;
}

/* Writes the ciphertext the engine has. user (may be NULL): a plaintext
 * write whose callback runs when the ciphertext carrying it is written
 * (the last piece written now, or with none now the next one). Writes
 * waiting that way are x->deferred, linked by chain. */
static int tls_flush(struct rstream *s, struct wreq *user)
{
    struct rstls *x = tls_of(s);
    if (user) {
        *x->deferred_end = user;
        x->deferred_end = &user->chain;
    }
    while (!(s->flags & RS_CLOSING) && tls_conn_pending(s->tls) > 0) {
        char *b = rbuf_get();
        size_t n = tls_conn_take(s->tls, b, RBUF_SIZE);
        if (n == 0) {
            rbuf_put(b);
            break;
        }
        struct wreq *r = wreq_get(s);
        r->owned = b;
        if (tls_conn_pending(s->tls) == 0) {
            r->chain = x->deferred;
            x->deferred = NULL;
            x->deferred_end = &x->deferred;
        }
        uv_buf_t ub = uv_buf_init(b, (unsigned)n);
        int e = raw_write(s, &ub, 1, r);
        if (e == 0)
            continue;
        /* The stream is broken. The waiting writes go back to wait for the
         * close (which cancels them), except user: its caller gets e. */
        struct wreq *chain = r->chain;
        rbuf_put(b);
        wreq_put(r);
        if (chain) {
            x->deferred = chain;
            struct wreq *last = chain;
            while (last->chain)
                last = last->chain;
            x->deferred_end = &last->chain;
        }
        if (user) {
            struct wreq **pp = &x->deferred;
            while (*pp && *pp != user)
                pp = &(*pp)->chain;
            if (*pp) {
                *pp = user->chain;
                if (x->deferred_end == &user->chain)
                    x->deferred_end = pp;
                wreq_put(user);
            }
        }
        return e;
    }
    return 0;
}

static int tls_write(struct rstream *s, const uv_buf_t *bufs, unsigned n, rstream_write_cb cb,
                     void *ud)
{
    for (unsigned i = 0; i < n; i++)
        if (tls_conn_write(s->tls, bufs[i].base, bufs[i].len) < 0)
            return UV_EPROTO;
    struct wreq *u = wreq_get(s);
    u->cb = cb;
    u->ud = ud;
    return tls_flush(s, u);
}

int rstream_write(struct rstream *s, const uv_buf_t *bufs, unsigned n, rstream_write_cb cb,
                  void *ud)
{
    if (s->flags & (RS_CLOSING | RS_SHUT))
        return UV_EPIPE;
    if (s->tls)
        return tls_write(s, bufs, n, cb, ud);
    struct wreq *r = wreq_get(s);
    r->cb = cb;
    r->ud = ud;
    int e = raw_write(s, bufs, n, r);
    if (e < 0)
        wreq_put(r);
    return e;
}

int rstream_write_buf(struct rstream *s, char *buf, size_t n, rstream_write_cb cb, void *ud)
{
    uv_buf_t ub = uv_buf_init(buf, (unsigned)n);
    if (s->flags & (RS_CLOSING | RS_SHUT)) {
        rbuf_put(buf);
        return UV_EPIPE;
    }
    if (s->tls) {
        int e = tls_write(s, &ub, 1, cb, ud);
        rbuf_put(buf);
        return e;
    }
    struct wreq *r = wreq_get(s);
    r->cb = cb;
    r->ud = ud;
    r->owned = buf;
    int e = raw_write(s, &ub, 1, r);
    if (e < 0) {
        rbuf_put(buf);
        wreq_put(r);
    }
    return e;
}

size_t rstream_queued(const struct rstream *s)
{
    return s->held;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    wreq_put(wreq_of(req));
}

void rstream_shutdown(struct rstream *s)
{
    if (s->flags & (RS_CLOSING | RS_SHUT))
        return;
    s->flags |= RS_SHUT;
    if (s->tls) {
        tls_conn_close_notify(s->tls);
        tls_flush(s, NULL);
    }
    struct wreq *r = wreq_get(s);
    if (uv_shutdown(&r->u.sd, (uv_stream_t *)&s->tcp, on_shutdown) < 0)
        wreq_put(r);
}

/* ---- connecting, accepting, closing ---------------------------------- */

static void on_connected(uv_connect_t *req, int status)
{
    struct wreq *r = wreq_of(req);
    struct rstream *s = r->s;
    wreq_put(r);
    if (s->flags & RS_CLOSING)
        return;
    if (s->cbs->on_connect)
        s->cbs->on_connect(s, status);
}

int rstream_connect(uv_loop_t *loop, struct rstream *s, const struct rstream_cbs *cbs,
                    const struct sockaddr *sa)
{
    stream_init(s, cbs);
    int e = uv_tcp_init(loop, &s->tcp);
    if (e < 0)
        return e;
    s->tcp.data = NULL;
    uv_tcp_nodelay(&s->tcp, 1); /* applied once the socket exists */
    struct wreq *r = wreq_get(s);
    e = uv_tcp_connect(&r->u.c, &s->tcp, sa, on_connected);
    if (e < 0)
        wreq_put(r);
    return e;
}

int rstream_accept(uv_stream_t *server, struct rstream *s, const struct rstream_cbs *cbs,
                   SSL_CTX *ctx, tls_sni_fn sni, void *sni_ud)
{
    stream_init(s, cbs);
    int e = uv_tcp_init(server->loop, &s->tcp);
    if (e < 0)
        return e;
    s->tcp.data = NULL;
    /* uv_accept cannot fail on a fresh handle after a connection callback
     * with status 0 (the fd is already accepted); the handle is registered
     * now and could not be released without a close. */
    if (uv_accept(server, (uv_stream_t *)&s->tcp) < 0)
        abort();
    uv_tcp_nodelay(&s->tcp, 1);
    if (ctx) {
        struct rstls *x = xcalloc(1, sizeof(*x));
        x->deferred_end = &x->deferred;
        uv_idle_init(server->loop, &x->idle);
        x->idle.data = s;
        s->tcp.data = x;
        s->tls = tls_conn_new(ctx, sni, sni_ud);
    }
    return 0;
}

static void plain_closed(uv_handle_t *h)
{
    struct rstream *s = (struct rstream *)h;
    struct wreq *r = h->data;
    void (*cb)(struct rstream *) = r->close_cb;
    struct wreq *taken = r->chain;
    r->chain = NULL;
    wreq_put(r);
    complete_list(taken, UV_ECANCELED);
    if (cb)
        cb(s);
}

static void tls_close_step(struct rstream *s)
{
    struct rstls *x = tls_of(s);
    if (--x->closes > 0)
        return;
    struct wreq *d = x->deferred;
    x->deferred = NULL;
    if (d)
        complete(d, UV_ECANCELED);
    complete_list(x->taken, UV_ECANCELED);
    x->taken = NULL;
    void (*cb)(struct rstream *) = x->close_cb;
    tls_conn_free(s->tls);
    s->tls = NULL;
    free(x);
    s->tcp.data = NULL;
    if (cb)
        cb(s);
}

static void tls_idle_closed(uv_handle_t *h)
{
    tls_close_step(h->data);
}

static void tls_tcp_closed(uv_handle_t *h)
{
    tls_close_step((struct rstream *)h);
}

void rstream_close(struct rstream *s, void (*close_cb)(struct rstream *s))
{
    if (s->flags & RS_CLOSING)
        return;
    s->flags |= RS_CLOSING;
    s->flags &= ~RS_READING;
    struct wreq *taken = s->queued ? doneq_take(s) : NULL;
    if (s->tls) {
        struct rstls *x = tls_of(s);
        x->taken = taken;
        x->close_cb = close_cb;
        x->closes = 2;
        /* tcp.data stays x until both are closed; the idle handle's data
         * is the stream. */
        uv_close((uv_handle_t *)&x->idle, tls_idle_closed);
        uv_close((uv_handle_t *)&s->tcp, tls_tcp_closed);
        return;
    }
    struct wreq *r = wreq_get(s);
    r->close_cb = close_cb;
    r->chain = taken;
    s->tcp.data = r;
    uv_close((uv_handle_t *)&s->tcp, plain_closed);
}

bool rstream_is_tls(const struct rstream *s)
{
    return s->tls != NULL;
}

const char *rstream_servername(const struct rstream *s)
{
    return s->tls ? tls_conn_servername(s->tls) : NULL;
}
