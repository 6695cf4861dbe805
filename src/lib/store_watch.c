/* store_watch: watches of the store client (see store.h). */
#include "lib/store.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/store_int.h"

/* --- watches --------------------------------------------------------- */

/* The watch resume. A watch is one /v3/watch stream at a time. Invariant:
 * next_rev is the revision right after the last one received, and every
 * event received is either delivered or queued in q. etcd (and pierd
 * store) put all events of one revision in one message, so after a message
 * every revision below next_rev has been fully seen. When the stream ends
 * or breaks, a new one is created with start_revision = next_rev: nothing is
 * missed, and events below that revision (should a server repeat any) are
 * dropped, so nothing is repeated. Progress notifications (no events) move
 * next_rev up to their header revision, which keeps a quiet watch from
 * resuming at a revision that has since been compacted. A start_revision of
 * 0 ("from now") is pinned to the created message's header revision + 1
 * before store_watch_open returns.
 *
 * A connection can also die without a word (a partitioned server, a host
 * gone): TCP keepalive (httpc) notices within about 20 s, and the watch
 * itself drops a connection on which nothing at all, not even a progress
 * notification, arrived for silence_ms. Revisions come from the server and
 * are checked (0 <= rev < INT64_MAX) before any arithmetic. */
struct store_watch {
    struct store *s;
    char *key;
    bool prefix;
    bool prev_kv;
    int64_t next_rev;
    struct httpc_stream *stream; /* NULL while disconnected */
    size_t ep;                   /* the endpoint of stream */
    bool created;
    struct buf in;               /* received bytes; in.p + in_off: not parsed yet */
    size_t in_off;               /* bytes of in already parsed (dropped after a parse) */
    struct store_json_scan scan; /* how far the message at in_off has been scanned */
    struct store_event *q;       /* received events not delivered yet */
    size_t qn, qcap;
    struct pier_err dead; /* code != 0: the watch cannot go on */
    struct pier_err down; /* why the last connection attempt failed */
    int64_t retry_at;
    int backoff_ms;
    int64_t silence_ms;
    int64_t last_rx_ms; /* when the connection was made or last brought bytes */
};

static int watch_on_data(const char *data, size_t len, void *ud)
{
    struct store_watch *w = ud;
    if (w->in.len - w->in_off + len > STORE_MAX_ANSWER)
        return -1;
    buf_append(&w->in, data, len);
    w->last_rx_ms = clock_now_ms();
    return 0;
}

static int event_decode(const json_t *o, struct store_event *ev, struct pier_err *err)
{
    const char *type = "PUT";
    memset(ev, 0, sizeof(*ev));
    jsonx_get_str(o, "type", &type, NULL);
    ev->type = strcmp(type, "DELETE") == 0 ? STORE_EVENT_DELETE : STORE_EVENT_PUT;
    int r = store_kv_decode(json_object_get(o, "kv"), &ev->kv, err);
    if (r < 0)
        return r;
    json_t *p = json_object_get(o, "prev_kv"); /* borrowed */
    if (p) {
        struct store_kv kv;
        if ((r = store_kv_decode(p, &kv, err)) < 0) {
            store_kv_release(&ev->kv);
            return r;
        }
        ev->prev = store_kv_move(&kv);
    }
    return 0;
}

static void event_release(struct store_event *ev)
{
    store_kv_release(&ev->kv);
    store_kv_free(ev->prev);
}

/* Queues the events of one message (those not seen before). */
static int watch_events(struct store_watch *w, const json_t *evs, int64_t *last,
                        struct pier_err *err)
{
    size_t n = json_is_array(evs) ? json_array_size(evs) : 0;
    for (size_t i = 0; i < n; i++) {
        struct store_event ev;
        int r = event_decode(json_array_get(evs, i), &ev, err);
        if (r < 0)
            return r;
        if (ev.kv.mod_revision < w->next_rev) { /* seen before a reconnect */
            event_release(&ev);
            continue;
        }
        if (w->qn == w->qcap) {
            w->qcap = w->qcap ? 2 * w->qcap : 16;
            w->q = xrealloc(w->q, w->qcap * sizeof(*w->q));
        }
        w->q[w->qn++] = ev;
        if (ev.kv.mod_revision > *last)
            *last = ev.kv.mod_revision;
    }
    return 0;
}

/* Takes in one watch message. Returns 0, or an error that ends this
 * connection (the watch itself is dead when w->dead is set). */
static int watch_message(struct store_watch *w, const json_t *m, struct pier_err *err)
{
    int64_t hrev = 0, compact = 0;
    bool created = false, canceled = false;
    int r = store_header_revision(m, &hrev, err);
    if (r < 0)
        return r;
    jsonx_get_bool(m, "created", &created, NULL);
    jsonx_get_bool(m, "canceled", &canceled, NULL);
    jsonx_get_int64(m, "compact_revision", &compact, NULL);
    if (canceled && compact > 0)
        return err_set(&w->dead, PIER_ECOMPACTED,
                       "watch on %s: revision %" PRId64 " is compacted (history starts at %" PRId64
                       ")",
                       w->key, w->next_rev, compact);
    if (canceled) {
        const char *why = "no reason given";
        jsonx_get_str(m, "cancel_reason", &why, NULL);
        return err_set(err, PIER_EUNAVAIL, "%s: watch canceled: %s", w->s->names[w->ep], why);
    }
    if (created) {
        w->created = true;
        if (w->next_rev == 0)
            w->next_rev = hrev + 1; /* hrev < INT64_MAX: checked */
    }
    int64_t last = 0;
    if ((r = watch_events(w, json_object_get(m, "events"), &last, err)) < 0)
        return r;
    if (last)
        w->next_rev = last + 1;                  /* a checked mod_revision */
    else if (!created && hrev + 1 > w->next_rev) /* a progress notification */
        w->next_rev = hrev + 1;
    return 0;
}

/* Parses every complete message in w->in. Each byte is scanned once: the
 * scan of a message that is not complete yet goes on where it stopped, and
 * parsed messages are dropped from the buffer once, after the loop. */
static int watch_parse(struct store_watch *w, struct pier_err *err)
{
    size_t n;
    int r = 0;
    while (r == 0 && w->dead.code == 0 &&
           (n = store_json_scan(&w->scan, w->in.p + w->in_off, w->in.len - w->in_off)) > 0) {
        json_t *m = NULL;
        struct pier_err e = {0};
        r = store_parse_answer(w->s->names[w->ep], 200, w->in.p + w->in_off, n, &m, &e);
        w->in_off += n;
        w->scan = STORE_JSON_SCAN_INIT;
        if (r == PIER_ECOMPACTED || r == PIER_EINVAL) { /* retrying cannot help */
            w->dead = e;
            break;
        }
        if (r < 0 && err)
            *err = e;
        if (r == 0)
            r = watch_message(w, m, err);
        json_decref(m);
    }
    buf_consume(&w->in, w->in_off);
    w->in_off = 0;
    return w->dead.code ? w->dead.code : r;
}

static void watch_reset_input(struct store_watch *w)
{
    buf_reset(&w->in);
    w->in_off = 0;
    w->scan = STORE_JSON_SCAN_INIT;
}

static void watch_disconnect(struct store_watch *w)
{
    httpc_stream_close(w->stream);
    w->stream = NULL;
    watch_reset_input(w);
}

struct watch_try {
    struct store_watch *w;
    const struct buf *body;
};

/* One attempt of watch_connect on endpoint at. */
static int watch_try(struct store *s, size_t at, long connect_timeout_ms, long timeout_ms, void *ud,
                     struct pier_err *err)
{
    struct watch_try *t = ud;
    struct store_watch *w = t->w;
    cleanup_buf struct buf url = BUF_INIT;
    buf_printf(&url, "%s/v3/watch", s->eps[at]);
    struct httpc_req hr = {
        .url = url.p,
        .name = s->names[at],
        .headers = store_json_headers,
        .body = t->body->p,
        .body_len = t->body->len,
        .connect_timeout_ms = connect_timeout_ms,
        .timeout_ms = timeout_ms,
    };
    watch_reset_input(w);
    w->ep = at;
    int r = httpc_stream_open(s->http, &hr, watch_on_data, w, &w->stream, err);
    if (r < 0)
        return r;
    w->last_rx_ms = clock_now_ms();
    long status = httpc_stream_status(w->stream);
    if (status != 200) { /* an error answer (a 503 from a member without a leader) */
        int64_t until = clock_now_ms() + timeout_ms;
        struct pier_err ignored = {0};
        while (clock_now_ms() < until && httpc_stream_poll(w->stream, 100, &ignored) > 0)
            ; /* the whole (short) error body */
        json_t *m = NULL;
        r = store_parse_answer(s->names[at], status, w->in.p, w->in.len, &m, err);
        json_decref(m);
        if (r == 0)
            r = err_set(err, PIER_EPROTO, "%s: watch answered HTTP status %ld", s->names[at],
                        status);
        if (r == PIER_ECOMPACTED || r == PIER_EINVAL)
            w->dead = *err;
        watch_disconnect(w);
        return r;
    }
    /* the first messages may have come with the headers */
    if ((r = watch_parse(w, err)) < 0)
        watch_disconnect(w);
    return r;
}

/* Opens a stream from w->next_rev on the first endpoint that answers, trying
 * no longer than deadline (INT64_MAX: the store's timeout per endpoint). */
static int watch_connect(struct store_watch *w, int64_t deadline, struct pier_err *err)
{
    cleanup_json json_t *cr = json_object();
    store_set_range(cr, w->key, strlen(w->key), w->prefix);
    if (w->next_rev > 0)
        jsonx_set_int64_str(cr, "start_revision", w->next_rev);
    if (w->prev_kv)
        json_object_set_new(cr, "prev_kv", json_true());
    json_object_set_new(cr, "progress_notify", json_true());
    cleanup_json json_t *req = json_object();
    json_object_set(req, "create_request", cr); /* borrowed */
    cleanup_buf struct buf body = BUF_INIT;
    jsonx_dump(&body, req);
    struct watch_try t = {w, &body};
    return store_failover(w->s, true, deadline, watch_try, &t, err);
}

struct store_watch *store_watch_new(struct store *s, const char *key,
                                    const struct store_watch_opts *opts)
{
    static const struct store_watch_opts none = {0};
    if (!opts)
        opts = &none;
    struct store_watch *w = xcalloc(1, sizeof(*w));
    w->s = s;
    w->key = xstrdup(key);
    w->prefix = opts->prefix;
    w->prev_kv = opts->prev_kv;
    w->next_rev = opts->start_revision > 0 && store_revision_ok(opts->start_revision)
                      ? opts->start_revision
                      : 0;
    w->silence_ms = atomic_load(&s->watch_silence_ms);
    return w;
}

int store_watch_feed(struct store_watch *w, const char *data, size_t len, struct pier_err *err)
{
    if (watch_on_data(data, len, w) < 0)
        return err_set(err, PIER_ETOOBIG, "watch on %s: backlog too large", w->key);
    return watch_parse(w, err);
}

size_t store_watch_queued(const struct store_watch *w)
{
    return w->qn;
}

int store_watch_open(struct store *s, const char *key, const struct store_watch_opts *opts,
                     struct store_watch **out, struct pier_err *err)
{
    *out = NULL;
    struct store_watch *w = store_watch_new(s, key, opts);
    int64_t deadline = clock_now_ms() + atomic_load(&s->timeout_ms);
    int r = watch_connect(w, INT64_MAX, err);
    while (r == 0 && !w->created && w->dead.code == 0) {
        int64_t left = deadline - clock_now_ms();
        if (left <= 0) {
            r = err_set(err, PIER_ETIMEOUT, "%s: watch not created in time", s->names[w->ep]);
            break;
        }
        r = httpc_stream_poll(w->stream, (int)left, err);
        if (r == 0)
            r = err_set(err, PIER_EUNAVAIL, "%s: watch stream ended", s->names[w->ep]);
        if (r > 0)
            r = watch_parse(w, err);
    }
    if (r < 0 && w->dead.code == 0) {
        store_watch_close(w);
        return r;
    }
    *out = w; /* a dead watch reports why from store_watch_next */
    return 0;
}

static int deliver(struct store_watch *w, struct store_events **out)
{
    struct store_events *e = xmalloc(sizeof(*e));
    e->ev = w->q;
    e->n = w->qn;
    e->revision = w->q[w->qn - 1].kv.mod_revision;
    w->q = NULL;
    w->qn = w->qcap = 0;
    *out = e;
    return 0;
}

/* Sleeps until the next reconnect attempt is due (or the deadline). */
static void watch_backoff_wait(struct store_watch *w, int64_t deadline)
{
    int64_t until = w->retry_at < deadline ? w->retry_at : deadline;
    int64_t left = until - clock_now_ms();
    if (left > 0) {
        struct timespec ts = {left / 1000, (left % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
}

/* After a failure the next attempt is due in backoff_ms, which then grows
 * (0, 50, 100, ... 1000 ms); it goes back to 0 once events flow again. */
static void watch_schedule_retry(struct store_watch *w)
{
    w->retry_at = clock_now_ms() + w->backoff_ms;
    w->backoff_ms = w->backoff_ms == 0 ? 50 : w->backoff_ms * 2 > 1000 ? 1000 : w->backoff_ms * 2;
}

/* Connects again when the retry is due, waiting for it up to deadline; each
 * attempt is bounded by the deadline too. Returns 0 when connected, or the
 * last connection error. */
static int watch_reconnect(struct store_watch *w, int64_t deadline)
{
    for (;;) {
        int64_t now = clock_now_ms();
        if (now < w->retry_at && now < deadline) {
            watch_backoff_wait(w, deadline);
            continue;
        }
        if (now < w->retry_at)
            break;
        if (watch_connect(w, deadline, &w->down) == 0) {
            log_debug("store", "watch reconnected", "key=%s from=%" PRId64, w->key, w->next_rev);
            return 0;
        }
        if (w->dead.code) /* the server answered, and it is final (compacted) */
            return w->dead.code;
        watch_schedule_retry(w);
        if (clock_now_ms() >= deadline)
            break;
    }
    return w->down.code ? w->down.code : PIER_EUNAVAIL;
}

/* How long the next poll may wait: until the deadline (in rounds of at most
 * 1 s when there is none) and no later than the end of the silence window. */
static int watch_poll_ms(const struct store_watch *w, int64_t deadline)
{
    int64_t now = clock_now_ms();
    int64_t left = deadline == INT64_MAX ? 1000 : deadline - now;
    int64_t quiet = w->last_rx_ms + w->silence_ms - now;
    if (quiet < left)
        left = quiet;
    return left < 0 ? 0 : (int)left;
}

int store_watch_next(struct store_watch *w, int timeout_ms, struct store_events **out,
                     struct pier_err *err)
{
    *out = NULL;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : clock_now_ms() + timeout_ms;
    for (;;) {
        if (w->qn > 0)
            return deliver(w, out);
        if (w->dead.code) {
            if (err)
                *err = w->dead;
            return w->dead.code;
        }
        if (!w->stream) {
            int r = watch_reconnect(w, deadline);
            if (r < 0 && w->dead.code == 0) {
                if (err)
                    *err = w->down;
                return r;
            }
            continue; /* a dead watch reports from the top of the loop */
        }
        int r = httpc_stream_poll(w->stream, watch_poll_ms(w, deadline), &w->down);
        if (r > 0 && (r = watch_parse(w, &w->down)) == 0) {
            if (w->qn > 0) {
                w->backoff_ms = 0;
                continue;
            }
            if (clock_now_ms() - w->last_rx_ms < w->silence_ms) {
                if (clock_now_ms() >= deadline)
                    return err_set(err, PIER_ETIMEOUT, "watch on %s: no event", w->key);
                continue;
            }
            r = err_set(&w->down, PIER_ETIMEOUT,
                        "%s: watch connection silent for %" PRId64 " ms (no progress)",
                        w->s->names[w->ep], w->silence_ms);
        }
        if (r == 0) /* the server ended the stream */
            err_set(&w->down, PIER_EUNAVAIL, "%s: watch stream ended", w->s->names[w->ep]);
        if (w->dead.code)
            continue;
        log_debug("store", "watch connection lost", "key=%s err=\"%s\"", w->key, w->down.msg);
        watch_disconnect(w);
        watch_schedule_retry(w);
    }
}

int64_t store_watch_revision(const struct store_watch *w)
{
    return w->qn > 0 ? w->q[0].kv.mod_revision : w->next_rev;
}

void store_watch_drop_connection(struct store_watch *w)
{
    watch_disconnect(w);
}

void store_watch_close(struct store_watch *w)
{
    if (!w)
        return;
    watch_disconnect(w);
    for (size_t i = 0; i < w->qn; i++)
        event_release(&w->q[i]);
    free(w->q);
    buf_free(&w->in);
    free(w->key);
    free(w);
}

/* --- results ---------------------------------------------------------- */

void store_events_free(struct store_events *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        event_release(&e->ev[i]);
    free(e->ev);
    free(e);
}
