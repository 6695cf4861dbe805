/* splice: a byte tunnel between two streams (splice.h).
 *
 * Side 0 is a, side 1 is b; dir[i] is the direction that reads side i and
 * writes side 1-i. Each read buffer is handed to the other stream as it
 * is (rstream_write_buf), so plain tunnels copy nothing. A direction stops
 * reading while its destination has more than RSTREAM_HIGH_WATER queued
 * (the memory held, not the bytes: see stream.h) and starts again from
 * the destination's write callback once the queue is down to half of it
 * (the gap keeps read_stop/read_start, each an epoll_ctl, from flapping
 * on every write).
 *
 * The tunnel ends in one of three ways:
 *   - both directions saw an EOF and every byte was handed to the kernel:
 *     closing then loses nothing (each side's write end was shut down);
 *   - an error on either side (a reset, a failed write);
 *   - idle_ms with no byte read or written either way.
 * Idle detection does not touch the timer per read: reads and writes only
 * store uv_now() in last_ms, and the timer, when it fires, re-arms itself
 * for what is left of the window since the last activity. */
#include "router/splice.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

struct rsplice {
    struct rworker *w;
    struct rsplice *prev, *next; /* on w->splices while open */
    struct rstream *s[2];        /* a, b */
    uint64_t bytes[2];           /* read from side i and written to the other */
    bool eof[2];                 /* side i's read side ended */
    bool paused[2];              /* side i's reading stopped by flow control */
    bool closing;
    bool draining;    /* both EOFs seen: waiting for the last bytes to leave */
    int open_handles; /* close callbacks still to come: the streams and the timer */
    uv_timer_t timer;
    uint64_t last_ms; /* uv_now() of the last byte moved */
    int idle_ms;
    rsplice_done_fn done;
    void *ud;
};

static void splice_close(struct rsplice *sp);

static int side_of(const struct rsplice *sp, const struct rstream *s)
{
    return s == sp->s[0] ? 0 : 1;
}

static void splice_finish(struct rsplice *sp)
{
    sp->done(sp->ud, sp->bytes[0], sp->bytes[1]);
    free(sp->s[0]);
    free(sp->s[1]);
    free(sp);
}

static void on_stream_closed(struct rstream *s)
{
    struct rsplice *sp = s->data;
    if (--sp->open_handles == 0)
        splice_finish(sp);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct rsplice *sp = h->data;
    if (--sp->open_handles == 0)
        splice_finish(sp);
}

static void splice_unlink(struct rsplice *sp)
{
    struct rworker *w = sp->w;
    if (sp->prev)
        sp->prev->next = sp->next;
    else
        w->splices = sp->next;
    if (sp->next)
        sp->next->prev = sp->prev;
    sp->prev = sp->next = NULL;
    atomic_fetch_sub_explicit(&w->router->stats.tunnels, 1, memory_order_relaxed);
}

/* Closes both streams and the timer; done runs once all three are closed. */
static void splice_close(struct rsplice *sp)
{
    if (sp->closing)
        return;
    sp->closing = true;
    splice_unlink(sp);
    uv_close((uv_handle_t *)&sp->timer, on_timer_closed);
    rstream_close(sp->s[0], on_stream_closed);
    rstream_close(sp->s[1], on_stream_closed);
}

static void on_timer(uv_timer_t *t);

/* Both directions ended: close once nothing is left to hand to the kernel
 * (the write ends were shut down as each EOF came, so the peers get every
 * byte and a FIN). Our own writes call back as they complete, but a TLS
 * close_notify goes out with no callback: while only such bytes are left,
 * the timer looks again every DRAIN_POLL_MS. */
#define DRAIN_POLL_MS 20
static void maybe_finished(struct rsplice *sp)
{
    if (!sp->eof[0] || !sp->eof[1])
        return;
    if (rstream_queued(sp->s[0]) == 0 && rstream_queued(sp->s[1]) == 0) {
        splice_close(sp);
    } else if (!sp->draining) {
        sp->draining = true;
        uv_timer_start(&sp->timer, on_timer, DRAIN_POLL_MS, 0);
    }
}

static void on_written(struct rstream *dst, int status, void *ud)
{
    struct rsplice *sp = ud;
    if (sp->closing)
        return;
    if (status < 0) {
        splice_close(sp);
        return;
    }
    sp->last_ms = uv_now(dst->tcp.loop);
    int src = 1 - side_of(sp, dst);
    if (sp->paused[src] && rstream_queued(dst) <= RSTREAM_HIGH_WATER / 2) {
        sp->paused[src] = false;
        if (!sp->eof[src] && rstream_read_start(sp->s[src]) < 0) {
            splice_close(sp);
            return;
        }
    }
    if (sp->eof[0] && sp->eof[1])
        maybe_finished(sp);
}

/* Sends buf[0..n) (an rbuf, handed over) from side src to the other side
 * and pauses src when the destination's queue is over the high water. */
static int forward(struct rsplice *sp, int src, char *buf, size_t n)
{
    struct rstream *dst = sp->s[1 - src];
    sp->bytes[src] += n;
    int r = rstream_write_buf(dst, buf, n, on_written, sp);
    if (r < 0)
        return r;
    if (!sp->paused[src] && rstream_queued(dst) > RSTREAM_HIGH_WATER) {
        sp->paused[src] = true;
        rstream_read_stop(sp->s[src]);
    }
    return 0;
}

static void on_data(struct rstream *s, char *buf, size_t n)
{
    struct rsplice *sp = s->data;
    if (sp->closing) {
        rbuf_put(buf);
        return;
    }
    sp->last_ms = uv_now(s->tcp.loop);
    if (forward(sp, side_of(sp, s), buf, n) < 0)
        splice_close(sp);
}

static void on_end(struct rstream *s, int why)
{
    struct rsplice *sp = s->data;
    if (sp->closing)
        return;
    if (why != RSTREAM_EOF) {
        splice_close(sp);
        return;
    }
    int i = side_of(sp, s);
    sp->eof[i] = true;
    /* Half-close: the peer of the other side sees the EOF; the other
     * direction keeps flowing until its own EOF. */
    rstream_shutdown(sp->s[1 - i]);
    maybe_finished(sp);
}

/* The idle window (and, once draining, the drain poll). Without an idle
 * window a drain still gives up after DRAIN_MAX_MS of no progress. */
#define DRAIN_MAX_MS 60000
static void on_timer(uv_timer_t *t)
{
    struct rsplice *sp = t->data;
    uint64_t now = uv_now(t->loop);
    uint64_t idle = sp->idle_ms > 0 ? (uint64_t)sp->idle_ms : DRAIN_MAX_MS;
    if (now - sp->last_ms >= idle) {
        log_debug("router", "tunnel idle", "idle_ms=%d", sp->idle_ms);
        splice_close(sp);
        return;
    }
    if (sp->draining) {
        sp->draining = false;
        maybe_finished(sp); /* re-arms the poll while bytes are left */
        return;
    }
    uv_timer_start(t, on_timer, idle - (now - sp->last_ms), 0);
}

static const struct rstream_cbs splice_cbs = {
    .on_data = on_data,
    .on_end = on_end,
};

/* Copies pending bytes read from side src into rbufs bound for the other
 * side. */
static int forward_pending(struct rsplice *sp, int src, const char *p, size_t n)
{
    while (n > 0) {
        size_t k = n < RBUF_SIZE ? n : RBUF_SIZE;
        char *buf = rbuf_get();
        memcpy(buf, p, k);
        int r = forward(sp, src, buf, k);
        if (r < 0)
            return r;
        p += k;
        n -= k;
    }
    return 0;
}

struct rsplice *rsplice_start(struct rworker *w, struct rstream *a, struct rstream *b,
                              const char *a_pending, size_t a_n, const char *b_pending, size_t b_n,
                              int idle_ms, rsplice_done_fn done, void *ud)
{
    struct rsplice *sp = calloc(1, sizeof(*sp));
    if (!sp)
        abort();
    sp->w = w;
    sp->s[0] = a;
    sp->s[1] = b;
    sp->idle_ms = idle_ms;
    sp->done = done;
    sp->ud = ud;
    sp->open_handles = 3;
    sp->last_ms = uv_now(&w->loop);
    a->data = b->data = sp;
    a->cbs = b->cbs = &splice_cbs;

    sp->next = w->splices;
    if (sp->next)
        sp->next->prev = sp;
    w->splices = sp;
    atomic_fetch_add_explicit(&w->router->stats.tunnels, 1, memory_order_relaxed);

    uv_timer_init(&w->loop, &sp->timer);
    sp->timer.data = sp;
    if (idle_ms > 0)
        uv_timer_start(&sp->timer, on_timer, (uint64_t)idle_ms, 0);

    if (forward_pending(sp, 0, a_pending, a_n) < 0 || forward_pending(sp, 1, b_pending, b_n) < 0) {
        splice_close(sp);
        return sp;
    }
    for (int i = 0; i < 2; i++) {
        if (sp->closing || sp->paused[i])
            continue;
        if (rstream_read_start(sp->s[i]) < 0)
            splice_close(sp);
    }
    return sp;
}

size_t rsplice_count(const struct rworker *w)
{
    size_t n = 0;
    for (const struct rsplice *sp = w->splices; sp; sp = sp->next)
        n++;
    return n;
}

void rsplice_close_all(struct rworker *w)
{
    while (w->splices)
        splice_close(w->splices);
}
