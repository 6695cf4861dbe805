/* proxy_int: what the HTTP proxy's files share (proxy.c: the workers and
 * their lifecycle; http.c: client connections; upstream.c: backend
 * connections and responses; head.c: writing heads; pool.c: idle backend
 * connections; accesslog.c). Everything here belongs to one worker's
 * thread. */
#ifndef PIER_ROUTER_PROXY_INT_H
#define PIER_ROUTER_PROXY_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#include "lib/buf.h"
#include "lib/http1.h"
#include "lib/uuid.h"
#include "router/stream.h"
#include "router/worker.h"

/* Idle backend connections kept per backend and worker, and for how long.
 * The cap is high because a connection closed for want of room is one
 * opened again for the next request: under 500 client connections a cap of
 * 64 made every other request connect (bench/router/run). */
#define POOL_MAX_PER_BACKEND 1024
#define POOL_IDLE_MS 30000
/* How often each worker checks its connections' deadlines. */
#define SWEEP_MS 250
/* A connection closing after its response drains the client's input
 * this long at most (so the response is not destroyed by a reset). */
#define LINGER_MS 2000
#define LINGER_STOPPING_MS 500
/* Backends tried per request. */
#define MAX_TRIES 3

struct listener {
    uv_tcp_t tcp;
    struct rworker *w;
    bool tls;
    bool open;
    int port;
    char port_str[8];
};

struct pool_slot;

struct pool {
    struct pool_slot *v; /* open addressing on the backend pointer */
    size_t cap, used;
    struct bconn *lru_head, *lru_tail; /* every idle connection, oldest first */
};

/* A per-worker access log buffer. */
struct alog {
    int fd; /* -1: off */
    bool pipe;
    struct buf b;
    time_t sec; /* the second the cached prefix shows */
    char prefix[24];
};

struct hworker {
    struct rworker *w;
    struct listener *listeners;
    size_t n_listeners;
    uv_timer_t sweep;
    struct cconn *conns; /* client connections not tunnelling */
    int nconns;          /* client connection structs alive (tunnels and closing ones too) */
    struct pool pool;
    struct alog log;
    uint64_t stop_ms;
    bool torn_down;
    struct http1_request req;   /* scratch: parsed heads are used at once */
    struct http1_response resp; /* scratch */
};

/* Where a client connection is. */
enum cstate {
    C_HEAD,    /* reading a request head (or idle between requests) */
    C_CONNECT, /* a request waits for a new backend connection */
    C_PROXY,   /* a request goes to the backend / its response comes back */
    C_LINGER,  /* the last response is out: drain input, then close */
    C_TUNNEL,  /* handed to splice.c after a 101 */
    C_CLOSED,
};

/* A view into a connection's head buffer by offset (it may move). */
struct span {
    uint32_t off, len;
};

struct bconn;

struct cconn {
    struct rstream *s; /* malloc'd: a tunnel takes it */
    struct hworker *hw;
    struct listener *l;
    struct cconn *prev, *next;
    enum cstate state;
    char ip[48];

    /* The head buffer: request heads, body bytes read with them and
     * pipelined requests. hb[0..hused) belongs to the request in flight. */
    char *hb;
    size_t hlen, hcap, hlast, hend, hused;

    uint64_t active;     /* uv_now of the last byte moved either way */
    uint64_t head_start; /* uv_now of the head's first byte (or accept) */
    uint64_t connect_start, req_done_at, linger_at;
    unsigned nreq;
    unsigned paused; /* PAUSE_* reasons the client is not read */
    bool in_process;

    /* The request in flight. */
    bool active_req;
    struct rtable *table;
    const struct rroute *route;
    struct rbackend *be;     /* chosen; its inflight counts this request */
    struct rbackend *cookie; /* the backend a valid sticky cookie named */
    struct rbackend *tried[MAX_TRIES];
    struct rbackend *last_be; /* the backend tried last (the log's), or NULL */
    unsigned ntried;
    struct bconn *b;
    struct span method, host, path, rid;
    char gen_rid[UUID_LEN];
    int minor;
    bool keep_alive, upgrade, head_req, has_cl, retried, close_after, client_eof;
    uint64_t t0_ns;
    struct timespec t0_wall;

    enum http1_body req_body;
    uint64_t req_left;
    struct http1_chunked req_ch;
    bool req_done;

    int status;
    enum http1_body resp_body;
    uint64_t resp_left;
    struct http1_chunked resp_ch;
    bool resp_decode, resp_started, b_paused;
    uint64_t bytes;
};

enum { PAUSE_FLOW = 1, PAUSE_FULL = 2 };

struct bconn {
    struct rstream *s; /* malloc'd: a tunnel takes it */
    struct hworker *hw;
    struct rbackend *be;         /* a reference */
    struct cconn *c;             /* the request using it, NULL when idle */
    struct bconn *pprev, *pnext; /* idle: the backend's list */
    struct bconn *iprev, *inext; /* idle: the worker's LRU list */
    uint64_t idle_since;
    char *hb; /* a response head arriving in pieces */
    size_t hlen, hcap, hlast;
    bool connected, idle, closing, reused, got_bytes, reusable;
};

/* ---- shared helpers ---- */

/* The worker's own counters (worker.h struct rwstats): only its thread
 * writes them, so a plain load and store do (no locked instruction). */
static inline void wstat_add(atomic_ullong *v, unsigned long long n)
{
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

#define STAT_ADD(hw, field, n) wstat_add(&(hw)->w->stats.field, (unsigned long long)(n))
#define STAT_SUB(hw, field, n) wstat_add(&(hw)->w->stats.field, -(unsigned long long)(n))

static inline const struct rconfig *cfg_of(const struct hworker *hw)
{
    return &hw->w->router->cfg;
}

static inline uint64_t now_ms(const struct hworker *hw)
{
    return uv_now(&hw->w->loop);
}

static inline struct str span_str(const struct cconn *c, struct span s)
{
    return (struct str){c->hb + s.off, s.len};
}

static inline struct span span_of(const struct cconn *c, struct str s)
{
    if (!s.p || !s.len)
        return (struct span){0, 0};
    return (struct span){(uint32_t)(s.p - c->hb), (uint32_t)s.len};
}

/* head.c */
/* A head being written, in a block from a per-thread free list (OB_SMALL
 * bytes; a larger head moves to a block of its own on the heap). */
struct ob_block;
struct ob {
    struct ob_block *blk;
    char *p; /* the block's bytes */
    size_t len, cap;
};

void ob_init(struct ob *o);
/* Moves o to a block with room for n more bytes. */
void ob_grow(struct ob *o, size_t n);
static inline void ob_need(struct ob *o, size_t n)
{
    if (o->len + n > o->cap)
        ob_grow(o, n);
}
static inline void ob_put(struct ob *o, const void *p, size_t n)
{
    ob_need(o, n);
    memcpy(o->p + o->len, p, n);
    o->len += n;
}
#define OB_LIT(o, s) ob_put(o, s, sizeof(s) - 1)
void ob_str(struct ob *o, struct str s);
void ob_u64(struct ob *o, uint64_t v);
/* "Name: value\r\n" */
void ob_field(struct ob *o, const struct http1_header *h);
/* Writes o to s and frees it once written; cb(ud) may be NULL. */
int ob_write(struct ob *o, struct rstream *s, rstream_write_cb cb, void *ud);
/* Frees the calling thread's free list of head blocks (at worker exit). */
void ob_thread_cleanup(void);
/* Writes bytes (not an rbuf) to s in rbuf copies. */
int write_copy(struct rstream *s, const char *p, size_t n, rstream_write_cb cb, void *ud);

/* What the proxy does with a header field. */
enum field {
    F_OTHER,
    F_HOP, /* Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding */
    F_CONNECTION,
    F_CONTENT_LENGTH,
    F_HOST,
    F_UPGRADE,
    F_XFF,
    F_XF_OTHER, /* X-Forwarded-Proto, X-Forwarded-Port, X-Request-Start: the router's */
    F_REQUEST_ID,
};
enum field field_kind(struct str name);
static inline bool name_is(struct str n, const char *lit, size_t len)
{
    return n.len == len && strncasecmp(n.p, lit, len) == 0;
}
#define NAME_IS(n, lit) name_is(n, lit, sizeof(lit) - 1)

/* The field names a message's Connection fields list besides close,
 * keep-alive and upgrade (RFC 9110 7.6.1): hop-by-hop fields too. Host
 * is never one (a client listing it would strip it). A message naming
 * more than CONN_NAMES_MAX is refused (400, or 502 for a response), so no
 * named field ever passes. */
#define CONN_NAMES_MAX 64
struct conn_names {
    struct str v[CONN_NAMES_MAX];
    size_t n;
};
/* false: more than CONN_NAMES_MAX names. */
bool conn_names_get(const struct http1_header *h, size_t n, struct conn_names *out);
bool conn_names_has(const struct conn_names *c, struct str name);

/* An absolute-form request target ("http://user@host:port/p?q", RFC 9112
 * 3.2.2): its authority without the userinfo ("host:port", maybe empty)
 * and what follows it ("/p?q", "?q" or ""). false: another form. */
bool target_absolute(struct str t, struct str *authority, struct str *rest);
/* GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 9.2.2). */
bool method_idempotent(struct str m);

/* A client's X-Request-Id worth keeping: 1..200 printable characters. */
bool request_id_ok(struct str v);
const char *reason_of(int status);
void count_response(struct hworker *hw, int status);

/* http.c: the client side. */
void http_accept(struct listener *l);
void http_sweep(struct hworker *hw, uint64_t now);
/* Shutdown began: idle connections close, the others after their response. */
void http_stopping(struct hworker *hw);
/* One log line msg (info; warn when each) counting what the worker's
 * drain still waits for, by what each connection is doing (reading a
 * head, waiting for a backend, streaming a response, writing its queued
 * end, closing) and its tunnels. each: first a "drain cut" line per
 * request in flight (host, path, backend, age), DRAIN_LOG_MAX at most. */
#define DRAIN_LOG_MAX 16
void http_drain_log(struct hworker *hw, const char *msg, bool each);
/* The shutdown timeout passed: closes every connection. */
void http_close_all(struct hworker *hw);
void c_abort(struct cconn *c);
void c_finish(struct cconn *c);
void c_unlink(struct cconn *c);
void c_read_pause(struct cconn *c, unsigned why);
void c_read_resume(struct cconn *c, unsigned why);
/* Appends to the head buffer (the next request's bytes). */
void c_append(struct cconn *c, const char *p, size_t n);
void c_on_written(struct rstream *s, int status, void *ud);
/* Answers the request itself with a text/plain body. */
void local_response(struct cconn *c, int status, const char *body);

/* upstream.c: the backend side. */
/* Sends c's request to be. fresh: on a new connection, not the pool.
 * parsed: hw->req holds c's head, parsed in this very call (else it is
 * parsed again from c->hb before it is written: the scratch may hold
 * another connection's request by now). */
void upstream_dispatch(struct cconn *c, struct rbackend *be, bool fresh, bool parsed);
/* c's connect ran out of time (the sweep). */
void upstream_connect_failed(struct cconn *c, bool timed_out);
/* Client bytes while c's request is in flight. */
void upstream_client_data(struct cconn *c, char *buf, size_t n);
void bconn_close(struct bconn *b);

/* proxy.c */
void worker_check_done(struct hworker *hw);

/* pool.c */
struct bconn *pool_take(struct pool *p, struct rbackend *be);
void pool_put(struct pool *p, struct bconn *b, uint64_t now);
void pool_remove(struct pool *p, struct bconn *b);
unsigned pool_count(const struct pool *p, const struct rbackend *be);
/* Closes idle connections older than POOL_IDLE_MS. */
void pool_expire(struct pool *p, uint64_t now);
/* Closes idle connections to backends that left discovery. */
void pool_close_gone(struct pool *p);
void pool_close_all(struct pool *p);
void pool_free(struct pool *p);

/* accesslog.c */
void alog_init(struct alog *l, int fd);
/* One line for the request c finished (or gave up on). */
void alog_request(struct alog *l, const struct cconn *c, uint64_t now_ns);
void alog_flush(struct alog *l);
void alog_free(struct alog *l);

#endif
