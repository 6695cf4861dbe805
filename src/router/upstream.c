/* upstream: the proxy's backend side (proxy_int.h): backend connections
 * from the pool or new (with retries on other backends), the request head
 * the router writes, the request body streaming to the backend, the
 * response head rewritten for the client and its body streaming back,
 * interim responses and the 101 that turns both connections into a
 * tunnel (splice.h).
 *
 * A backend connection belongs to at most one request (b->c); between
 * requests it waits in the worker's pool (pool.c), still read, so a
 * backend closing it is noticed. Its write callbacks get the bconn as
 * ud, which lives until the stream's close callback. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "router/proxy_int.h"
#include "router/splice.h"
#include "router/table.h"

static void send_request(struct cconn *c, bool reparse);
static void backend_broke(struct cconn *c, const char *why);
static void b_on_data(struct rstream *s, char *buf, size_t n);
static void b_on_end(struct rstream *s, int why);
static void b_on_connect(struct rstream *s, int status);

static const struct rstream_cbs backend_cbs = {
    .on_data = b_on_data, .on_end = b_on_end, .on_connect = b_on_connect};

/* Sends the request to be: on an idle pooled connection at once, else on
 * a new one once it connects. fresh: never from the pool. */
void upstream_dispatch(struct cconn *c, struct rbackend *be, bool fresh, bool parsed)
{
    struct hworker *hw = c->hw;
    c->be = c->last_be = be;
    atomic_fetch_add_explicit(&be->inflight, 1, memory_order_relaxed);
    struct bconn *b = NULL;
    if (!fresh && !c->route->disable_keep_alives)
        b = pool_take(&hw->pool, be);
    if (b) {
        b->c = c;
        b->reused = true;
        b->got_bytes = false;
        c->b = b;
        c->state = C_PROXY;
        send_request(c, !parsed);
        return;
    }
    b = xcalloc(1, sizeof(*b));
    b->hw = hw;
    b->be = be;
    rbackend_ref(be);
    b->c = c;
    b->s = xmalloc(sizeof(*b->s));
    b->s->data = b;
    STAT_ADD(hw, backend_conns, 1);
    c->b = b;
    c->state = C_CONNECT;
    c->connect_start = now_ms(hw);
    int r = rstream_connect(&hw->w->loop, b->s, &backend_cbs, (const struct sockaddr *)&be->sa);
    /* Reading starts with the connect, so libuv registers the socket for
     * both directions at once (an epoll_ctl fewer per connection); no
     * byte is read before b_on_connect. */
    if (r == 0)
        r = rstream_read_start(b->s);
    if (r < 0)
        b_on_connect(b->s, r);
}

/* The connection to c->be failed (refused, unreachable, or timed out):
 * every worker skips that backend for a while; the next one is tried. */
void upstream_connect_failed(struct cconn *c, bool timed_out)
{
    struct hworker *hw = c->hw;
    struct rbackend *be = c->be;
    if (c->b) {
        c->b->c = NULL;
        bconn_close(c->b);
        c->b = NULL;
    }
    atomic_store_explicit(&be->down_until_ms, (long long)(now_ms(hw) + RBACKEND_DOWN_MS),
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&be->failures, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&be->inflight, 1, memory_order_relaxed);
    STAT_ADD(hw, retries, 1);
    c->be = NULL;
    if (c->ntried < MAX_TRIES)
        c->tried[c->ntried++] = be;
    log_debug("router", "backend connect failed", "backend=%s reason=%s", be->addr,
              timed_out ? "timeout" : "refused");
    if (c->ntried < MAX_TRIES) {
        struct rbackend *next =
            rtable_pick(c->route, c->tried, c->ntried, (int64_t)now_ms(hw), &hw->w->rng);
        if (next) {
            upstream_dispatch(c, next, false, false);
            return;
        }
    }
    STAT_ADD(hw, backend_errors, 1);
    if (timed_out) {
        STAT_ADD(hw, timeouts, 1);
        local_response(c, 504, "no backend connection within the connect timeout\n");
    } else {
        local_response(c, 502, "the backend refused the connection\n");
    }
}

static void b_on_connect(struct rstream *s, int status)
{
    struct bconn *b = s->data;
    struct cconn *c = b->c;
    if (b->closing)
        return;
    if (!c) {
        bconn_close(b);
        return;
    }
    if (status < 0) {
        upstream_connect_failed(c, status == UV_ETIMEDOUT);
        return;
    }
    b->connected = true;
    if (rstream_read_start(s) < 0) {
        upstream_connect_failed(c, false);
        return;
    }
    c->state = C_PROXY;
    send_request(c, true);
}

/* ---- the request to the backend ---------------------------------------- */

static void b_on_written(struct rstream *s, int status, void *ud);

static void req_body_sent(struct cconn *c)
{
    c->req_done = true;
    c->req_done_at = now_ms(c->hw);
}

/* How many of the n body bytes at p belong to the request; sets req_done
 * when its end is among them. -1: malformed chunked framing. */
static ssize_t req_body_take(struct cconn *c, const char *p, size_t n)
{
    switch (c->req_body) {
    case HTTP1_BODY_LENGTH: {
        size_t k = n < c->req_left ? n : (size_t)c->req_left;
        c->req_left -= k;
        if (c->req_left == 0)
            req_body_sent(c);
        return (ssize_t)k;
    }
    case HTTP1_BODY_CHUNKED: {
        size_t rest = 0;
        int r = http1_chunked_scan(&c->req_ch, p, n, &rest);
        if (r < 0 && r != HTTP1_INCOMPLETE)
            return -1;
        if (r == 0)
            req_body_sent(c);
        return (ssize_t)(n - rest);
    }
    default: return 0;
    }
}

/* "Transfer-Encoding: " and the codings of every such field, chunked
 * last (the parser saw to it), joined as one list. */
static void write_te(struct ob *o, const struct http1_header *h, size_t n)
{
    OB_LIT(o, "Transfer-Encoding: ");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name.len != 17 || !NAME_IS(h[i].name, "transfer-encoding") || !h[i].value.len)
            continue;
        if (!first)
            OB_LIT(o, ", ");
        ob_str(o, h[i].value);
        first = false;
    }
}

static void build_request_head(struct cconn *c, const struct http1_request *q, struct ob *o)
{
    struct hworker *hw = c->hw;
    ob_str(o, q->method);
    ob_put(o, " ", 1);
    /* An absolute-form target ("http://h/p?q") goes in origin form
     * ("/p?q"), as backends expect from a proxy in front of them, and its
     * host replaces the Host field (RFC 9112 3.2.2). */
    struct str auth, rest;
    bool absolute = target_absolute(q->target, &auth, &rest);
    if (!absolute) {
        ob_str(o, q->target);
    } else {
        if (!rest.len || rest.p[0] != '/')
            ob_put(o, "/", 1);
        ob_str(o, rest);
    }
    OB_LIT(o, " HTTP/1.1\r\n");
    if (absolute) {
        OB_LIT(o, "Host: ");
        ob_str(o, auth);
        OB_LIT(o, "\r\n");
    }
    bool xff = false;
    struct conn_names cn;
    conn_names_get(q->headers, q->num_headers, &cn); /* c_request checked the count */
    for (size_t i = 0; i < q->num_headers; i++) {
        const struct http1_header *h = &q->headers[i];
        switch (field_kind(h->name)) {
        case F_OTHER:
            if (!cn.n || !conn_names_has(&cn, h->name))
                ob_field(o, h);
            break;
        case F_HOST:
            if (!absolute)
                ob_field(o, h);
            break;
        case F_XFF: xff = true; break;
        default: break;
        }
    }
    OB_LIT(o, "X-Forwarded-For: ");
    if (xff)
        for (size_t i = 0; i < q->num_headers; i++)
            if (field_kind(q->headers[i].name) == F_XFF && q->headers[i].value.len) {
                ob_str(o, q->headers[i].value);
                OB_LIT(o, ", ");
            }
    ob_str(o, str_from(c->ip));
    if (c->l->tls)
        OB_LIT(o, "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: ");
    else
        OB_LIT(o, "\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: ");
    ob_str(o, str_from(c->l->port_str));
    OB_LIT(o, "\r\nX-Request-Start: ");
    ob_u64(o, (uint64_t)c->t0_wall.tv_sec * 1000 + (uint64_t)c->t0_wall.tv_nsec / 1000000);
    OB_LIT(o, "\r\nX-Request-Id: ");
    if (c->rid.len)
        ob_str(o, span_str(c, c->rid));
    else
        ob_str(o, str_from(c->gen_rid));
    if (q->flags & HTTP1_F_CHUNKED) {
        OB_LIT(o, "\r\n");
        write_te(o, q->headers, q->num_headers);
    } else if (c->has_cl) {
        OB_LIT(o, "\r\nContent-Length: ");
        ob_u64(o, q->content_length);
    }
    if (c->upgrade) {
        OB_LIT(o, "\r\nConnection: upgrade\r\nUpgrade: ");
        ob_str(o, q->upgrade);
    } else if (c->route->disable_keep_alives || hw->w->stopping) {
        OB_LIT(o, "\r\nConnection: close");
    }
    OB_LIT(o, "\r\n\r\n");
}

/* Writes the request head with the body bytes already read. reparse: the
 * worker's scratch request no longer holds this head (after a connect). */
static void send_request(struct cconn *c, bool reparse)
{
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    if (reparse && http1_parse_request_ex(c->hb, c->hend, 0, cfg_of(hw)->max_header_bytes,
                                          &hw->req) != (int)c->hend) {
        local_response(c, 400, "malformed request\n"); /* cannot happen: it parsed before */
        return;
    }
    /* Body bytes read with the head (or while connecting). Only the first
     * attempt sends any: a retry is for requests without a body. */
    const char *body = c->hb + c->hused;
    ssize_t k = req_body_take(c, body, c->hlen - c->hused);
    if (k < 0) {
        STAT_ADD(hw, bad_requests, 1);
        local_response(c, 400, "malformed chunked request body\n");
        return;
    }
    c->hused += (size_t)k;
    /* Set before writing, so a failed write of a bodyless request on a
     * pooled connection can still be retried. */
    if (c->req_body == HTTP1_BODY_NONE)
        req_body_sent(c);
    struct ob o;
    ob_init(&o);
    build_request_head(c, &hw->req, &o);
    bool inline_body = (size_t)k <= o.cap - o.len;
    if (inline_body)
        ob_put(&o, body, (size_t)k);
    atomic_fetch_add_explicit(&c->be->requests, 1, memory_order_relaxed);
    int r = ob_write(&o, b->s, b_on_written, b);
    if (r == 0 && !inline_body)
        r = write_copy(b->s, body, (size_t)k, b_on_written, b);
    if (r < 0) {
        backend_broke(c, "write failed");
        return;
    }
    if (!c->req_done) {
        /* The rest of the body comes from the socket. */
        c_read_resume(c, PAUSE_FULL);
        return;
    }
    /* The rest of c->hb is the next request: stop reading once a head's
     * worth has piled up. */
    if (c->hlen - c->hused > cfg_of(hw)->max_header_bytes)
        c_read_pause(c, PAUSE_FULL);
}

static void b_on_written(struct rstream *s, int status, void *ud)
{
    (void)s;
    struct bconn *b = ud;
    struct cconn *c = b->c;
    if (b->closing || !c || c->state == C_TUNNEL || c->state == C_CLOSED)
        return;
    if (status < 0) {
        backend_broke(c, "write failed");
        return;
    }
    c->active = now_ms(c->hw);
    if ((c->paused & PAUSE_FLOW) && rstream_queued(b->s) <= RSTREAM_HIGH_WATER / 2)
        c_read_resume(c, PAUSE_FLOW);
}

/* Client bytes while a request is in flight: its body, or the next
 * request (kept in c->hb). */
void upstream_client_data(struct cconn *c, char *buf, size_t n)
{
    struct hworker *hw = c->hw;
    if (c->req_done || !c->b || !c->b->connected) {
        c_append(c, buf, n);
        rbuf_put(buf);
        if (c->hlen - c->hused > cfg_of(hw)->max_header_bytes)
            c_read_pause(c, PAUSE_FULL);
        return;
    }
    ssize_t k = req_body_take(c, buf, n);
    if (k < 0) {
        rbuf_put(buf);
        if (!c->resp_started) {
            STAT_ADD(hw, bad_requests, 1);
            local_response(c, 400, "malformed chunked request body\n");
        } else {
            c_abort(c);
        }
        return;
    }
    if ((size_t)k < n) {
        /* The body ended inside this read: the rest is the next request. */
        c_append(c, buf + k, n - (size_t)k);
        c->hused = c->hlen - (n - (size_t)k);
    }
    struct bconn *b = c->b;
    if (k == 0) {
        rbuf_put(buf);
    } else if (rstream_write_buf(b->s, buf, (size_t)k, b_on_written, b) < 0) {
        backend_broke(c, "write failed");
        return;
    }
    if (!c->req_done && rstream_queued(b->s) > RSTREAM_HIGH_WATER)
        c_read_pause(c, PAUSE_FLOW);
}

/* ---- the response ------------------------------------------------------ */

/* Passes the body bytes p[0..*n) through the response framing: *n becomes
 * the bytes to send (decoded in place for HTTP/1.0 clients), *extra those
 * after the body's end. 1: the body ended, 0: it goes on, -1: malformed. */
static int resp_filter(struct cconn *c, char *p, size_t *n, size_t *extra)
{
    size_t in = *n;
    *extra = 0;
    switch (c->resp_body) {
    case HTTP1_BODY_NONE:
        *extra = in;
        *n = 0;
        return 1;
    case HTTP1_BODY_LENGTH: {
        size_t k = in < c->resp_left ? in : (size_t)c->resp_left;
        c->resp_left -= k;
        *n = k;
        *extra = in - k;
        return c->resp_left == 0;
    }
    case HTTP1_BODY_CHUNKED: {
        size_t rest = 0;
        int r;
        if (c->resp_decode) {
            size_t len = in;
            r = http1_chunked_decode(&c->resp_ch, p, &len, &rest);
            *n = len;
        } else {
            r = http1_chunked_scan(&c->resp_ch, p, in, &rest);
            *n = in - rest;
        }
        if (r < 0 && r != HTTP1_INCOMPLETE)
            return -1;
        *extra = rest;
        return r == 0;
    }
    case HTTP1_BODY_UNTIL_CLOSE:
    default: return 0;
    }
}

/* The backend failed the request (reset, early EOF, malformed response). */
static void backend_broke(struct cconn *c, const char *why)
{
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    /* Only a request that can safely go twice: an idempotent method
     * without a body (RFC 9110 9.2.2, 9112 9.3.1). */
    bool retry = b && b->reused && !b->got_bytes && !c->retried && !c->resp_started &&
                 c->req_body == HTTP1_BODY_NONE && !c->has_cl && c->req_done && c->be &&
                 method_idempotent(span_str(c, c->method));
    if (b) {
        b->c = NULL;
        bconn_close(b);
        c->b = NULL;
    }
    if (retry) {
        /* The keep-alive race: the backend closed the idle connection as
         * the request went out. Once more on a new connection. */
        c->retried = true;
        STAT_ADD(hw, retries, 1);
        struct rbackend *be = c->be;
        atomic_fetch_sub_explicit(&be->inflight, 1, memory_order_relaxed);
        upstream_dispatch(c, be, true, false);
        return;
    }
    if (c->be)
        atomic_fetch_add_explicit(&c->be->failures, 1, memory_order_relaxed);
    STAT_ADD(hw, backend_errors, 1);
    log_debug("router", "backend failed", "backend=%s reason=\"%s\"", c->be ? c->be->addr : "-",
              why);
    if (!c->resp_started)
        local_response(c, 502,
                       "the backend closed the connection or sent a malformed "
                       "response\n");
    else
        c_abort(c); /* a truncated response: only closing can tell */
}

/* The backend's part of the request is over (its response was read
 * whole): its open count drops before the last bytes go to the client,
 * so a request that client sends next already sees it. */
static void be_release(struct cconn *c)
{
    if (c->be)
        atomic_fetch_sub_explicit(&c->be->inflight, 1, memory_order_relaxed);
    c->be = NULL;
}

/* The response is queued whole: the backend connection goes back to the
 * pool (or closes), then the request finishes. extra: the backend sent
 * bytes past the response. */
static void resp_done(struct cconn *c, bool extra)
{
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    c->b = NULL;
    b->c = NULL;
    bool reuse = b->reusable && !extra && c->req_done && !hw->w->stopping &&
                 !atomic_load_explicit(&b->be->gone, memory_order_relaxed) &&
                 pool_count(&hw->pool, b->be) < POOL_MAX_PER_BACKEND;
    if (c->b_paused) {
        c->b_paused = false;
        if (reuse && rstream_read_start(b->s) < 0)
            reuse = false;
    }
    if (reuse)
        pool_put(&hw->pool, b, now_ms(hw));
    else
        bconn_close(b);
    if (!c->req_done)
        c->close_after = true; /* an early response: the body cannot be skipped reliably */
    c_finish(c);
}

/* Writes the backend's fields minus the hop-by-hop ones (cn: the names
 * its Connection fields list). */
static void copy_response_fields(struct ob *o, const struct http1_response *r,
                                 const struct conn_names *cn, bool keep_cl, bool keep_upgrade)
{
    for (size_t i = 0; i < r->num_headers; i++) {
        const struct http1_header *h = &r->headers[i];
        if (cn->n && conn_names_has(cn, h->name))
            continue;
        switch (field_kind(h->name)) {
        case F_HOP:
        case F_CONNECTION: break;
        case F_CONTENT_LENGTH:
            if (keep_cl)
                ob_field(o, h);
            break;
        case F_UPGRADE:
            if (keep_upgrade)
                ob_field(o, h);
            break;
        default: ob_field(o, h); break;
        }
    }
}

static void status_line(struct ob *o, int minor, const struct http1_response *r)
{
    OB_LIT(o, "HTTP/1.");
    ob_put(o, minor == 0 ? "0 " : "1 ", 2);
    ob_u64(o, (uint64_t)r->status);
    ob_put(o, " ", 1);
    ob_str(o, r->reason);
    OB_LIT(o, "\r\n");
}

/* A final response head r with body bytes body[0..bn). */
static void resp_start(struct cconn *c, const struct http1_response *r, const struct conn_names *cn,
                       char *body, size_t bn)
{
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    struct http1_framing f = http1_response_framing(r, c->head_req);
    c->resp_body = f.body;
    c->resp_left = f.length;
    c->resp_decode = f.body == HTTP1_BODY_CHUNKED && c->minor == 0;
    if (f.body == HTTP1_BODY_CHUNKED)
        http1_chunked_init(&c->resp_ch);
    b->reusable = http1_response_keep_alive(r, c->head_req) && !c->route->disable_keep_alives;

    size_t k = bn, extra = 0;
    int end = resp_filter(c, body, &k, &extra);
    if (end < 0) {
        backend_broke(c, "malformed chunked response");
        return;
    }
    c->status = r->status;
    c->resp_started = true;
    count_response(hw, r->status);
    /* The client shut its write side and sent nothing after this one. */
    bool last = c->client_eof && c->hlen == c->hused;
    bool close = c->close_after || !c->keep_alive || f.body == HTTP1_BODY_UNTIL_CLOSE ||
                 c->resp_decode || !c->req_done || hw->w->stopping || last;
    c->close_after = close;

    struct ob o;
    ob_init(&o);
    status_line(&o, c->minor, r);
    copy_response_fields(&o, r, cn, f.body == HTTP1_BODY_NONE, false);
    if (f.body == HTTP1_BODY_LENGTH) {
        OB_LIT(&o, "Content-Length: ");
        ob_u64(&o, f.length);
        OB_LIT(&o, "\r\n");
    } else if ((f.body == HTTP1_BODY_CHUNKED && !c->resp_decode) ||
               (f.body == HTTP1_BODY_UNTIL_CLOSE && (r->flags & HTTP1_F_TRANSFER_ENCODING) &&
                c->minor == 1)) {
        /* The codings as the backend applied them (gzip, chunked). */
        write_te(&o, r->headers, r->num_headers);
        OB_LIT(&o, "\r\n");
    }
    if (c->route->sticky && c->cookie != c->be && c->be) {
        char v[STICKY_VALUE_MAX];
        sticky_value(cfg_of(hw)->sticky_key, c->route->service, c->be->addr, v);
        OB_LIT(&o, "Set-Cookie: " STICKY_COOKIE "=");
        ob_str(&o, str_from(v));
        if (c->l->tls)
            OB_LIT(&o, "; Path=/; HttpOnly; Secure\r\n");
        else
            OB_LIT(&o, "; Path=/; HttpOnly\r\n");
    }
    if (close)
        OB_LIT(&o, "Connection: close\r\n");
    else if (c->minor == 0)
        OB_LIT(&o, "Connection: keep-alive\r\n");
    OB_LIT(&o, "\r\n");
    bool inline_body = k <= o.cap - o.len;
    if (inline_body)
        ob_put(&o, body, k);
    c->bytes += k;
    if (end)
        be_release(c);
    int rc = ob_write(&o, c->s, c_on_written, c);
    if (rc == 0 && !inline_body)
        rc = write_copy(c->s, body, k, c_on_written, c);
    if (rc < 0) {
        c_abort(c);
        return;
    }
    if (end)
        resp_done(c, extra > 0);
}

/* Forwards a 1xx interim response (100 Continue) to an HTTP/1.1 client. */
static int resp_interim(struct cconn *c, const struct http1_response *r,
                        const struct conn_names *cn)
{
    if (c->minor == 0)
        return 0;
    struct ob o;
    ob_init(&o);
    status_line(&o, 1, r);
    copy_response_fields(&o, r, cn, false, false);
    OB_LIT(&o, "\r\n");
    return ob_write(&o, c->s, c_on_written, c);
}

static void tunnel_done(void *ud, uint64_t up, uint64_t down)
{
    (void)up;
    struct cconn *c = ud;
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    c->bytes = down;
    c->active_req = false;
    alog_request(&hw->log, c, uv_hrtime());
    atomic_fetch_sub_explicit(&b->be->inflight, 1, memory_order_relaxed);
    rbackend_unref(b->be);
    free(b->hb);
    free(b);
    free(c->hb);
    free(c);
    STAT_SUB(hw, backend_conns, 1);
    atomic_fetch_sub_explicit(&hw->w->router->stats.client_conns, 1, memory_order_relaxed);
    hw->nconns--;
    worker_check_done(hw);
}

/* A 101 to an upgrade request: the 101 goes to the client and both
 * streams become a tunnel. rest[0..rn): backend bytes after the 101. */
static void resp_upgrade(struct cconn *c, const struct http1_response *r,
                         const struct conn_names *cn, const char *rest, size_t rn)
{
    struct hworker *hw = c->hw;
    struct bconn *b = c->b;
    struct ob o;
    ob_init(&o);
    status_line(&o, 1, r);
    copy_response_fields(&o, r, cn, false, true);
    OB_LIT(&o, "Connection: upgrade\r\n\r\n");
    if (ob_write(&o, c->s, NULL, NULL) < 0) {
        c_abort(c);
        return;
    }
    c->status = r->status;
    c->resp_started = true;
    count_response(hw, r->status);
    /* The tunnel keeps the backend (b->be holds a reference) but not the
     * table, which may be replaced many times while it lasts. */
    c->route = NULL;
    rtable_unref(c->table);
    c->table = NULL;
    c->state = C_TUNNEL;
    c_unlink(c);
    struct rstream *cs = c->s, *bs = b->s;
    c->s = NULL;
    b->s = NULL;
    b->c = c;
    bool eof = c->client_eof;
    rsplice_start(hw->w, cs, bs, c->hb + c->hused, c->hlen - c->hused, rest, rn,
                  cfg_of(hw)->idle_timeout_ms, tunnel_done, c);
    /* The client's EOF came before the 101, and its stream will not tell
     * again: the tunnel gets it as if it had read it (the backend's write
     * side is shut down once the bytes before it are out). */
    if (eof)
        cs->cbs->on_end(cs, RSTREAM_EOF);
}

static void b_append(struct bconn *b, const char *p, size_t n)
{
    if (b->hlen + n > b->hcap) {
        size_t cap = b->hcap ? b->hcap : 4096;
        while (cap < b->hlen + n)
            cap *= 2;
        b->hb = xrealloc(b->hb, cap);
        b->hcap = cap;
    }
    memmove(b->hb + b->hlen, p, n);
    b->hlen += n;
}

/* Backend bytes while waiting for a response head. */
static void resp_head_data(struct cconn *c, struct bconn *b, char *buf, size_t n)
{
    struct hworker *hw = c->hw;
    char *p = buf;
    size_t len = n, last = 0;
    if (b->hlen) {
        last = b->hlast;
        b_append(b, buf, n);
        rbuf_put(buf);
        buf = NULL;
        p = b->hb;
        len = b->hlen;
    }
    for (;;) {
        int r = http1_parse_response_ex(p, len, last, 0, &hw->resp);
        if (r == HTTP1_INCOMPLETE) {
            if (p != b->hb) {
                b->hlen = 0;
                b_append(b, p, len);
            }
            b->hlast = b->hlen;
            rbuf_put(buf);
            return;
        }
        b->hlen = b->hlast = 0;
        if (r < 0) {
            rbuf_put(buf);
            backend_broke(c, http1_strerror(r));
            return;
        }
        const struct http1_response *resp = &hw->resp;
        struct conn_names cn;
        if (!conn_names_get(resp->headers, resp->num_headers, &cn)) {
            rbuf_put(buf);
            backend_broke(c, "too many Connection options");
            return;
        }
        if (resp->status == 101) {
            if (!c->upgrade) {
                rbuf_put(buf);
                backend_broke(c, "101 to a request without Upgrade");
                return;
            }
            resp_upgrade(c, resp, &cn, p + r, len - (size_t)r);
            rbuf_put(buf);
            return;
        }
        if (resp->status < 200) {
            if (resp_interim(c, resp, &cn) < 0) {
                rbuf_put(buf);
                c_abort(c);
                return;
            }
            p += r;
            len -= (size_t)r;
            last = 0;
            if (len == 0) {
                rbuf_put(buf);
                return;
            }
            continue;
        }
        resp_start(c, resp, &cn, p + r, len - (size_t)r);
        rbuf_put(buf);
        return;
    }
}

/* Backend bytes of a response body (buf is an rbuf). */
static void resp_body_data(struct cconn *c, struct bconn *b, char *buf, size_t n)
{
    size_t k = n, extra = 0;
    int end = resp_filter(c, buf, &k, &extra);
    if (end < 0) {
        rbuf_put(buf);
        backend_broke(c, "malformed chunked response");
        return;
    }
    if (end)
        be_release(c);
    if (k == 0) {
        rbuf_put(buf);
    } else {
        c->bytes += k;
        if (rstream_write_buf(c->s, buf, k, c_on_written, c) < 0) {
            c_abort(c);
            return;
        }
    }
    if (end) {
        resp_done(c, extra > 0);
        return;
    }
    if (!c->b_paused && rstream_queued(c->s) > RSTREAM_HIGH_WATER) {
        c->b_paused = true;
        rstream_read_stop(b->s);
    }
}

static void b_on_data(struct rstream *s, char *buf, size_t n)
{
    struct bconn *b = s->data;
    struct cconn *c = b->c;
    if (b->closing || !c) {
        /* An idle connection has nothing to say: close it. */
        rbuf_put(buf);
        bconn_close(b);
        return;
    }
    b->got_bytes = true;
    c->active = now_ms(c->hw);
    if (!c->resp_started)
        resp_head_data(c, b, buf, n);
    else
        resp_body_data(c, b, buf, n);
}

static void b_on_end(struct rstream *s, int why)
{
    struct bconn *b = s->data;
    struct cconn *c = b->c;
    if (b->closing)
        return;
    if (!c) {
        bconn_close(b);
        return;
    }
    if (c->resp_started && c->resp_body == HTTP1_BODY_UNTIL_CLOSE && why == RSTREAM_EOF) {
        b->reusable = false;
        resp_done(c, false);
        return;
    }
    backend_broke(c, why == RSTREAM_EOF ? "connection closed" : "connection reset");
}

static void b_closed(struct rstream *s)
{
    struct bconn *b = s->data;
    struct hworker *hw = b->hw;
    rbackend_unref(b->be);
    free(b->hb);
    free(b);
    free(s);
    STAT_SUB(hw, backend_conns, 1);
}

void bconn_close(struct bconn *b)
{
    if (b->closing)
        return;
    b->closing = true;
    if (b->idle)
        pool_remove(&b->hw->pool, b);
    b->c = NULL;
    rstream_close(b->s, b_closed);
}
