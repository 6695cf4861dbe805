/* http: the router's HTTP/1.x proxy (docs/router.md "HTTP behaviour"),
 * its client side; upstream.c is the backend side.
 *
 * One struct cconn per client connection, reused by each request on it;
 * one struct bconn per backend connection, kept in the worker's pool
 * between requests. A request goes through these steps:
 *
 *   head     bytes gather in c->hb until http1 parses a whole head;
 *   route    the table picks the route and a backend (or answers 404/503);
 *   connect  an idle pooled connection, or a new one (failures move on to
 *            another backend, up to MAX_TRIES);
 *   send     the router writes its own head (hop-by-hop fields out, the
 *            X-Forwarded-* fields in, its own framing) with the first body
 *            bytes in the same write; the rest of the body streams;
 *   respond  the response head is parsed and rewritten the same way, the
 *            body streams back (verbatim, or dechunked for HTTP/1.0);
 *   finish   the access log line, the backend connection back to the pool
 *            (or closed), and the next pipelined head if there is one.
 *
 * Bodies move as the rbufs they were read into; each direction stops
 * reading while its destination holds more than RSTREAM_HIGH_WATER and
 * starts again from the destination's write callback.
 *
 * No timer per connection: c->active and a few deadlines' starting times
 * are plain fields, and the worker's sweep (every SWEEP_MS) compares them
 * with uv_now.
 *
 * Lifetimes: a cconn is freed in its stream's close callback, a bconn in
 * its own; every write callback's ud is the object owning the stream it
 * writes to, so the callbacks a close cancels still find it. A tunnel
 * (101) hands both streams to splice.c and keeps the two structs until
 * the tunnel is done. */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "router/proxy_int.h"
#include "router/splice.h"
#include "router/table.h"

static void c_process(struct cconn *c);
static void c_close(struct cconn *c);
static void c_on_data(struct rstream *s, char *buf, size_t n);
static void c_on_end(struct rstream *s, int why);

static const struct rstream_cbs client_cbs = {.on_data = c_on_data, .on_end = c_on_end};

/* ---- client connections ------------------------------------------------ */

void c_read_pause(struct cconn *c, unsigned why)
{
    if (!c->paused)
        rstream_read_stop(c->s);
    c->paused |= why;
}

void c_read_resume(struct cconn *c, unsigned why)
{
    if (!(c->paused & why))
        return;
    c->paused &= ~why;
    if (!c->paused && rstream_read_start(c->s) < 0)
        c_abort(c);
}

void c_append(struct cconn *c, const char *p, size_t n)
{
    if (c->hlen + n > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 4096;
        while (cap < c->hlen + n)
            cap *= 2;
        c->hb = xrealloc(c->hb, cap);
        c->hcap = cap;
    }
    memcpy(c->hb + c->hlen, p, n);
    c->hlen += n;
}

static SSL_CTX *sni_ctx(void *ud, const char *servername)
{
    struct rworker *w = ud;
    return w->table ? rtable_tls_ctx(w->table, servername) : NULL;
}

static void free_stream(struct rstream *s)
{
    free(s);
}

void http_accept(struct listener *l)
{
    struct rworker *w = l->w;
    struct hworker *hw = w->http;
    const struct rconfig *cfg = cfg_of(hw);
    struct rstream *s = xmalloc(sizeof(*s));
    s->data = NULL;
    SSL_CTX *ctx = l->tls ? cfg->default_tls : NULL;
    if (rstream_accept((uv_stream_t *)&l->tcp, s, &client_cbs, ctx, ctx ? sni_ctx : NULL, w) < 0) {
        free(s);
        return;
    }
    struct rstats *gs = &w->router->stats;
    int prev = atomic_fetch_add_explicit(&gs->client_conns, 1, memory_order_relaxed);
    if (w->stopping || (cfg->max_conns > 0 && prev >= cfg->max_conns)) {
        atomic_fetch_sub_explicit(&gs->client_conns, 1, memory_order_relaxed);
        rstream_close(s, free_stream);
        return;
    }
    struct cconn *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->hw = hw;
    c->l = l;
    s->data = c;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->ip, sizeof(c->ip));
        else if (ss.ss_family == AF_INET6) {
            /* A v4 client on a dual-stack listener: its address as IPv4. */
            const struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
            if (IN6_IS_ADDR_V4MAPPED(a6))
                inet_ntop(AF_INET, &a6->s6_addr[12], c->ip, sizeof(c->ip));
            else
                inet_ntop(AF_INET6, a6, c->ip, sizeof(c->ip));
        }
    }
    if (!c->ip[0])
        strcpy(c->ip, "unknown");
    c->state = C_HEAD;
    c->active = c->head_start = now_ms(hw);
    c->next = hw->conns;
    if (c->next)
        c->next->prev = c;
    hw->conns = c;
    hw->nconns++;
    if (rstream_read_start(s) < 0)
        c_close(c);
}

static void c_closed(struct rstream *s)
{
    struct cconn *c = s->data;
    struct hworker *hw = c->hw;
    free(s);
    free(c->hb);
    free(c);
    hw->nconns--;
    worker_check_done(hw);
}

void c_unlink(struct cconn *c)
{
    struct hworker *hw = c->hw;
    if (c->prev)
        c->prev->next = c->next;
    else if (hw->conns == c)
        hw->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Ends the request in flight: the log line, the backend's open count,
 * the table reference. */
static void req_release(struct cconn *c)
{
    if (!c->active_req)
        return;
    struct hworker *hw = c->hw;
    c->active_req = false;
    if (!c->status)
        c->status = 499; /* the client left first, as nginx logs it */
    alog_request(&hw->log, c, uv_hrtime());
    if (c->be)
        atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
    c->be = NULL;
    c->cookie = NULL;
    c->route = NULL;
    if (c->table)
        rtable_unref(c->table);
    c->table = NULL;
}

static void c_close(struct cconn *c)
{
    if (c->state == C_CLOSED || c->state == C_TUNNEL)
        return;
    if (c->b) {
        c->b->c = NULL;
        bconn_close(c->b);
        c->b = NULL;
    }
    req_release(c);
    c->state = C_CLOSED;
    c_unlink(c);
    rstream_close(c->s, c_closed);
    /* The socket is closed now (only the memory waits for the callback):
     * a connection accepted next may take its place under --max-conns. */
    atomic_fetch_sub_explicit(&c->hw->w->router->stats.client_conns, 1, memory_order_relaxed);
}

/* Gives up on the connection in the middle of a request. */
void c_abort(struct cconn *c)
{
    c_close(c);
}

/* The response is out and the connection closes: stop writing, drain
 * what the client still sends for a while, then close. */
static void c_linger(struct cconn *c)
{
    c->state = C_LINGER;
    c->active = c->linger_at = now_ms(c->hw);
    if (c->client_eof && rstream_queued(c->s) == 0) {
        c_close(c);
        return;
    }
    rstream_shutdown(c->s);
    if (c->paused) {
        c->paused = 0;
        if (rstream_read_start(c->s) < 0)
            c_close(c);
    }
}

void c_on_written(struct rstream *s, int status, void *ud)
{
    (void)s;
    struct cconn *c = ud;
    if (c->state == C_CLOSED || c->state == C_TUNNEL)
        return;
    if (status < 0) {
        c_abort(c);
        return;
    }
    c->active = now_ms(c->hw);
    if (c->state == C_LINGER) {
        if (c->client_eof && rstream_queued(c->s) == 0)
            c_close(c);
        return;
    }
    if (c->b_paused && c->b && rstream_queued(c->s) <= RSTREAM_HIGH_WATER / 2) {
        c->b_paused = false;
        if (rstream_read_start(c->b->s) < 0)
            c_abort(c);
    }
}

/* Answers the request (or the bytes that failed to parse) itself. */
void local_response(struct cconn *c, int status, const char *body)
{
    struct hworker *hw = c->hw;
    if (c->b) {
        c->b->c = NULL;
        bconn_close(c->b);
        c->b = NULL;
    }
    bool read_all = c->req_body == HTTP1_BODY_NONE || c->req_done;
    bool close = !c->keep_alive || !read_all || hw->w->stopping || status == 400 || status == 408 ||
                 status == 431 || status == 505 || (c->client_eof && c->hlen == c->hused);
    size_t blen = strlen(body);
    struct ob o;
    ob_init(&o);
    OB_LIT(&o, "HTTP/1.");
    ob_put(&o, c->minor == 0 ? "0 " : "1 ", 2);
    ob_u64(&o, (uint64_t)status);
    ob_put(&o, " ", 1);
    ob_str(&o, str_from(reason_of(status)));
    OB_LIT(&o, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    ob_u64(&o, blen);
    if (close)
        OB_LIT(&o, "\r\nConnection: close");
    else if (c->minor == 0)
        OB_LIT(&o, "\r\nConnection: keep-alive");
    OB_LIT(&o, "\r\n\r\n");
    if (!c->head_req)
        ob_put(&o, body, blen);
    c->status = status;
    c->bytes = c->head_req ? 0 : blen;
    c->resp_started = true;
    count_response(hw, status);
    /* The router answered itself: the backend's open count ends here (the
     * log still names the backend tried last, c->last_be). */
    if (c->be)
        atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
    c->be = NULL;
    c->close_after |= close;
    if (ob_write(&o, c->s, c_on_written, c) < 0) {
        c_abort(c);
        return;
    }
    c_finish(c);
}

/* A request's bytes that never became a request (parse error, timeout). */
static void bad_head(struct cconn *c, int status, const char *body)
{
    c->active_req = true;
    c->t0_ns = uv_hrtime();
    clock_gettime(CLOCK_REALTIME, &c->t0_wall);
    c->method = c->host = c->path = c->rid = (struct span){0, 0};
    c->gen_rid[0] = '\0';
    c->be = c->last_be = NULL;
    c->status = 0;
    c->bytes = 0;
    c->keep_alive = c->head_req = false;
    c->minor = 1;
    c->req_body = HTTP1_BODY_NONE;
    local_response(c, status, body);
}

/* Whether the rest of the request's body is in c->hb already (a request
 * whose client has shut its write side can still be answered). */
static bool body_buffered(const struct cconn *c)
{
    size_t have = c->hlen - c->hused;
    switch (c->req_body) {
    case HTTP1_BODY_LENGTH: return have >= c->req_left;
    case HTTP1_BODY_CHUNKED: {
        struct http1_chunked ch = c->req_ch;
        size_t rest = 0;
        return http1_chunked_scan(&ch, c->hb + c->hused, have, &rest) == 0;
    }
    default: return true;
    }
}

/* The request is over (response queued, or given up): log it, release the
 * backend, then go on with the next request or close. A connection that
 * closes lingers until its queued bytes are written. */
void c_finish(struct cconn *c)
{
    struct hworker *hw = c->hw;
    req_release(c);
    c->nreq++;
    if (c->close_after || hw->w->stopping) {
        c_linger(c);
        return;
    }
    /* The pipelined rest moves to the front. */
    size_t rest = c->hlen - c->hused;
    if (rest)
        memmove(c->hb, c->hb + c->hused, rest);
    c->hlen = rest;
    c->hused = c->hend = c->hlast = 0;
    if (c->hcap > 16384 && rest <= 4096) {
        c->hb = xrealloc(c->hb, 4096);
        c->hcap = 4096;
    }
    c->state = C_HEAD;
    c->active = c->head_start = now_ms(hw);
    c->b_paused = false;
    if (c->client_eof) {
        /* The client sent all it will: the complete requests it sent are
         * answered in order (c_process closes after the last one). */
        c->paused = 0;
        if (!c->in_process) {
            if (rest)
                c_process(c);
            else
                c_linger(c);
        }
        return;
    }
    c_read_resume(c, PAUSE_FULL | PAUSE_FLOW);
    if (c->state == C_HEAD && rest)
        c_process(c);
}

/* Absolute-form targets ("http://host/path") carry the host themselves
 * (and the backend gets it as Host, upstream.c). false: such a target
 * with an empty host. */
static bool route_input(const struct http1_request *q, struct str *host, struct str *path)
{
    *host = q->host;
    *path = q->path;
    struct str auth, rest;
    if (!target_absolute(q->path, &auth, &rest))
        return true;
    *host = auth;
    *path = rest.len ? rest : STR_LIT("/");
    return auth.len > 0;
}

/* The request head c->hb[0..hend) is parsed into hw->req: route it. */
static void c_request(struct cconn *c, size_t hend)
{
    struct hworker *hw = c->hw;
    struct rworker *w = hw->w;
    const struct http1_request *q = &hw->req;
    c->hend = c->hused = hend;
    c->active_req = true;
    c->t0_ns = uv_hrtime();
    clock_gettime(CLOCK_REALTIME, &c->t0_wall);
    STAT_ADD(hw, requests, 1);
    c->method = span_of(c, q->method);
    c->path = span_of(c, q->path);
    c->minor = q->minor_version;
    c->head_req = str_eq(q->method, "HEAD");
    c->keep_alive = http1_request_keep_alive(q) && !w->stopping;
    c->upgrade = http1_request_upgrade(q);
    c->has_cl = q->flags & HTTP1_F_CONTENT_LENGTH;
    struct http1_framing f = http1_request_framing(q);
    c->req_body = f.body;
    c->req_left = f.length;
    if (f.body == HTTP1_BODY_LENGTH && f.length == 0)
        c->req_body = HTTP1_BODY_NONE;
    if (c->req_body == HTTP1_BODY_CHUNKED)
        http1_chunked_init(&c->req_ch);
    c->req_done = c->req_body == HTTP1_BODY_NONE;
    c->status = 0;
    c->bytes = 0;
    c->resp_started = c->retried = c->close_after = c->b_paused = false;
    c->ntried = 0;
    c->last_be = NULL;
    c->gen_rid[0] = '\0';
    struct str rid = http1_header_get(q->headers, q->num_headers, "X-Request-Id");
    if (request_id_ok(rid)) {
        c->rid = span_of(c, rid);
    } else {
        c->rid = (struct span){0, 0};
        uuid_new(c->gen_rid);
    }

    struct str host, path;
    bool host_ok = route_input(q, &host, &path);
    c->host = span_of(c, host);
    if (c->client_eof && !body_buffered(c)) {
        c_close(c); /* it can never be whole */
        return;
    }
    struct conn_names cn;
    if (!host_ok || !conn_names_get(q->headers, q->num_headers, &cn)) {
        STAT_ADD(hw, bad_requests, 1);
        local_response(
            c, 400, host_ok ? "too many Connection options\n" : "no host in the request target\n");
        return;
    }
    const struct rroute *route =
        w->table ? rtable_match_http(w->table, host.p, host.len, path.p, path.len) : NULL;
    if (!route) {
        local_response(c, 404, "no route for this host and path\n");
        return;
    }
    c->table = w->table;
    rtable_ref(c->table);
    c->route = route;
    c->cookie = NULL;
    struct rbackend *be = NULL;
    if (route->sticky) {
        char addr[STICKY_VALUE_MAX];
        for (size_t i = 0; i < q->num_headers && !c->cookie; i++) {
            const struct http1_header *h = &q->headers[i];
            if (NAME_IS(h->name, "cookie") &&
                sticky_check(cfg_of(hw)->sticky_key, route->service, h->value.p, h->value.len, addr,
                             sizeof(addr)))
                c->cookie = rtable_find_backend(route, addr, strlen(addr));
        }
        if (c->cookie &&
            atomic_load_explicit(&c->cookie->down_until_ms, memory_order_relaxed) <=
                (long long)now_ms(hw) &&
            !atomic_load_explicit(&c->cookie->gone, memory_order_relaxed))
            be = c->cookie;
    }
    if (!be)
        be = rtable_pick(route, NULL, 0, (int64_t)now_ms(hw), &w->rng);
    if (!be) {
        local_response(c, 503, "no backend available for this route\n");
        return;
    }
    upstream_dispatch(c, be, false, true);
}

/* ---- client input ------------------------------------------------------ */

/* Parses and runs the requests whose heads are in c->hb, one after the
 * other while they are answered at once (pipelined 404s and the like). */
static void c_process(struct cconn *c)
{
    if (c->in_process)
        return;
    struct hworker *hw = c->hw;
    size_t max = cfg_of(hw)->max_header_bytes;
    c->in_process = true;
    while (c->state == C_HEAD && c->hlen > 0) {
        int r = http1_parse_request_ex(c->hb, c->hlen, c->hlast, max, &hw->req);
        if (r == HTTP1_INCOMPLETE) {
            c->hlast = c->hlen;
            break;
        }
        c->hlast = 0;
        if (r < 0) {
            STAT_ADD(hw, bad_requests, 1);
            c->hused = c->hlen;
            bad_head(c, http1_error_status(r), http1_strerror(r));
            break;
        }
        c_request(c, (size_t)r);
    }
    c->in_process = false;
    /* After an EOF, nothing more will complete what is left. */
    if (c->client_eof && c->state == C_HEAD)
        c_linger(c);
}

static void c_on_data(struct rstream *s, char *buf, size_t n)
{
    struct cconn *c = s->data;
    c->active = now_ms(c->hw);
    switch (c->state) {
    case C_HEAD:
        if (c->hlen == 0 && c->nreq > 0)
            c->head_start = c->active; /* a first request's clock runs from accept */
        c_append(c, buf, n);
        rbuf_put(buf);
        c_process(c);
        break;
    case C_CONNECT:
    case C_PROXY: upstream_client_data(c, buf, n); break;
    default: rbuf_put(buf); break;
    }
}

/* The client's read side ended. A FIN cannot say whether the client shut
 * only its write side (printf ... | nc, waiting for its answers) or closed
 * the socket and left (a browser tab, a killed curl): on the wire both
 * are the same, and a client that left is only revealed by the reset its
 * kernel sends back to the next bytes written to it, which a quiet
 * stream (server-sent events between two events, a long download
 * stalled at the backend) may not write for minutes. So what the EOF
 * means depends on when it comes:
 *
 *   - before the response to the request in flight has begun (or between
 *     requests), it is a half-close: every request the client sent in
 *     full is answered, in order, with the bytes already queued for it;
 *     then the connection closes;
 *   - while a response streams from the backend, the client has left:
 *     the response and its backend connection close at once (as nginx
 *     and Go's server treat it), so an endless stream neither holds a
 *     backend connection nor keeps a drain alive. A response already
 *     read whole from its backend is only being written, and still goes
 *     out (C_LINGER or C_HEAD with bytes queued).
 *
 * A reset, or an EOF in the middle of a request body, always aborts. */
static void c_on_end(struct rstream *s, int why)
{
    struct cconn *c = s->data;
    if (why != RSTREAM_EOF) {
        c_close(c);
        return;
    }
    c->client_eof = true;
    switch (c->state) {
    case C_HEAD: c_linger(c); break; /* only an incomplete head is left */
    case C_LINGER:
        if (rstream_queued(c->s) == 0)
            c_close(c);
        break;
    case C_CONNECT:
    case C_PROXY:
        if (c->resp_started) {
            log_debug("router", "client left during the response", "backend=%s bytes=%llu",
                      c->last_be ? c->last_be->addr : "-", (unsigned long long)c->bytes);
            c_abort(c);
        } else if (!c->req_done && (c->state == C_PROXY || !body_buffered(c))) {
            c_close(c);
        }
        break;
    default: break;
    }
}

/* ---- deadlines and shutdown ------------------------------------------- */

static void sweep_one(struct cconn *c, uint64_t now)
{
    const struct rconfig *cfg = cfg_of(c->hw);
    switch (c->state) {
    case C_HEAD:
        if (c->hlen > 0) {
            if (now - c->head_start >= (uint64_t)cfg->header_timeout_ms) {
                STAT_ADD(c->hw, timeouts, 1);
                c->hused = c->hlen;
                bad_head(c, 408, "the request head did not arrive in time\n");
            }
        } else if (c->nreq == 0) {
            if (now - c->head_start >= (uint64_t)cfg->header_timeout_ms)
                c_close(c);
        } else if (now - c->active >= (uint64_t)cfg->idle_timeout_ms) {
            c_close(c);
        }
        break;
    case C_CONNECT:
        if (now - c->connect_start >= (uint64_t)cfg->connect_timeout_ms)
            upstream_connect_failed(c, true);
        break;
    case C_PROXY:
        if (!c->resp_started && c->req_done) {
            if (now - c->req_done_at >= (uint64_t)cfg->backend_timeout_ms) {
                if (c->be)
                    atomic_fetch_add_explicit(&c->be->failures, 1, memory_order_relaxed);
                STAT_ADD(c->hw, backend_errors, 1);
                STAT_ADD(c->hw, timeouts, 1);
                local_response(c, 504, "the backend did not answer in time\n");
            }
        } else if (now - c->active >= (uint64_t)cfg->idle_timeout_ms) {
            STAT_ADD(c->hw, timeouts, 1);
            c_abort(c);
        }
        break;
    case C_LINGER: {
        /* While the response is still going out, the idle rule; once it
         * is all out, a short fixed time to drain the client's input,
         * however much it keeps sending. */
        if (rstream_queued(c->s) > 0) {
            c->linger_at = now;
            if (now - c->active >= (uint64_t)cfg->idle_timeout_ms)
                c_close(c);
            break;
        }
        uint64_t linger = c->hw->w->stopping ? LINGER_STOPPING_MS : LINGER_MS;
        if (linger > (uint64_t)cfg->idle_timeout_ms)
            linger = (uint64_t)cfg->idle_timeout_ms;
        if (now - c->linger_at >= linger)
            c_close(c);
        break;
    }
    default: break;
    }
}

void http_sweep(struct hworker *hw, uint64_t now)
{
    /* Acting on a connection may unlink it (a close) but never another. */
    for (struct cconn *c = hw->conns, *next; c; c = next) {
        next = c->next;
        sweep_one(c, now);
    }
    pool_expire(&hw->pool, now);
}

void http_stopping(struct hworker *hw)
{
    for (struct cconn *c = hw->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == C_HEAD && c->hlen == 0) {
            /* Idle, but maybe still writing its last response. */
            if (rstream_queued(c->s) > 0)
                c_linger(c);
            else
                c_close(c);
        } else {
            c->close_after = true;
        }
    }
    pool_close_all(&hw->pool);
}

/* What a connection is doing, in the drain log's words. */
enum dstate { D_IDLE, D_READING, D_WAITING, D_STREAMING, D_WRITING, D_CLOSING, D_N };
static const char *const dstate_names[D_N] = {"idle",      "reading", "waiting",
                                              "streaming", "writing", "closing"};

static enum dstate drain_state(const struct cconn *c)
{
    switch (c->state) {
    case C_HEAD: return c->hlen ? D_READING : D_IDLE;
    case C_PROXY: return c->resp_started ? D_STREAMING : D_WAITING;
    case C_LINGER: return rstream_queued(c->s) ? D_WRITING : D_CLOSING;
    default: return D_WAITING; /* C_CONNECT */
    }
}

/* A "drain cut" line for the request in flight on c. */
static void drain_log_one(const struct cconn *c, enum dstate st)
{
    /* host and path point into c->hb, and last_be is held by c->table,
     * while the request is in flight; a finished one shows "-". */
    bool req = c->active_req;
    struct str host = req && c->host.len ? span_str(c, c->host) : STR_LIT("-");
    struct str path = req && c->path.len ? span_str(c, c->path) : STR_LIT("-");
    int hl = host.len > 200 ? 200 : (int)host.len, pl = path.len > 200 ? 200 : (int)path.len;
    uint64_t age = req ? (uv_hrtime() - c->t0_ns) / 1000000 : 0;
    log_warn("router", "drain cut", "worker=%d state=%s host=%.*s path=%.*s backend=%s age_ms=%llu",
             c->hw->w->index, dstate_names[st], hl, host.p, pl, path.p,
             req && c->last_be ? c->last_be->addr : "-", (unsigned long long)age);
}

void http_drain_log(struct hworker *hw, const char *msg, bool each)
{
    unsigned n[D_N] = {0}, listed = 0;
    for (struct cconn *c = hw->conns; c; c = c->next) {
        enum dstate st = drain_state(c);
        n[st]++;
        if (each && st != D_IDLE && ++listed <= DRAIN_LOG_MAX)
            drain_log_one(c, st);
    }
    if (listed > DRAIN_LOG_MAX)
        log_warn("router", "drain cut", "worker=%d more=%u", hw->w->index, listed - DRAIN_LOG_MAX);
    log_emit(each ? LOG_WARN : LOG_INFO, "router", msg,
             "worker=%d after_ms=%llu reading=%u waiting=%u streaming=%u writing=%u closing=%u "
             "tunnels=%zu",
             hw->w->index, (unsigned long long)(now_ms(hw) - hw->stop_ms), n[D_READING],
             n[D_WAITING], n[D_STREAMING], n[D_WRITING], n[D_CLOSING], rsplice_count(hw->w));
}

void http_close_all(struct hworker *hw)
{
    while (hw->conns)
        c_close(hw->conns);
    pool_close_all(&hw->pool);
}
