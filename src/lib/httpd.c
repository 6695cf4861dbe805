#include "lib/httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define MAX_PARAMS 8
#define DEFAULT_MAX_BODY (1536 * 1024)
/* The most of an oversize body we read (and drop) before hanging up. */
#define DISCARD_LIMIT (64 * 1024 * 1024)
/* How long a stream's next() may block before we look at the client and
 * the server's state again. */
#define STREAM_POLL_MS 250
/* How long httpd_free waits for upgraded connections to end once their
 * sockets are shut down. */
#define UPGRADE_STOP_MS 5000

struct route {
    char *method;
    char **segs; /* pattern split on '/', without empty segments */
    size_t nsegs;
    bool star; /* last segment was "*" */
    httpd_handler fn;
    void *ud;
    bool public;
    bool upload; /* httpd_route_upload: the handler runs before the body is read */
};

struct upgrade;

struct httpd {
    struct httpd_options opt; /* its strings are borrowed: use the copies below */
    char *listen, *comp, *key;
    struct route *routes;
    size_t nroutes;
    struct MHD_Daemon *d;
    int port;
    atomic_bool stopping;
    /* lock guards the upgrades: the list of those whose fn runs (so
     * httpd_free can shut their sockets down) and the count of upgraded
     * connections libmicrohttpd has not yet cleaned up (so it waits for
     * their threads before stopping the daemon). cond signals both. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct upgrade *running;
    int upgraded;
    /* Also under lock: the requests between their first callback and
     * on_completed, which httpd_drain waits for. */
    int inflight;
    atomic_bool draining;
    int quiesced_fd; /* the listening socket once httpd_drain took it from libmicrohttpd */
    void *data;
    void (*data_free)(void *data);
};

struct httpd_req {
    struct httpd *h;
    struct MHD_Connection *c;
    char *method, *path;
    bool http11;
    struct upgrade *upgrade; /* set by httpd_reply_upgrade; freed with the request */
    struct buf body;
    bool too_big;
    bool replied;
    bool closes;     /* the reply went out with "Connection: close" (a drain) */
    size_t received; /* body bytes seen, kept or not */
    size_t nparams;
    const char *pnames[MAX_PARAMS];
    char *pvalues[MAX_PARAMS];
    char **hdrs; /* httpd_add_header: name, value, name, value... */
    size_t nhdrs;
    /* Upload routes (httpd_route_upload). While the handler runs before the
     * body, replies are kept in deferred and queued later (see queue()). */
    bool upload;
    bool in_headers;
    struct MHD_Response *deferred;
    int deferred_status;
    const struct httpd_body_ops *body_ops;
    void *body_ctx;
};

struct upgrade {
    struct httpd *h;
    httpd_upgrade_fn fn;
    void (*done)(void *ud);
    void *ud;
    int fd;
    struct upgrade *next; /* in h->running while fn runs */
};

/* Per connection (libmicrohttpd's socket context): whether it was upgraded. */
struct conn {
    bool upgraded;
};

struct stream {
    struct httpd *h;
    struct MHD_Connection *c;
    httpd_stream_next next;
    httpd_stream_done done;
    void *ud;
    struct buf pending;
    bool ended;
    bool sized; /* httpd_reply_stream_sized: exactly size bytes */
    uint64_t size;
    bool endless; /* httpd_reply_stream_endless: a drain ends it */
};

/* ---- routing ---- */

static char **split_path(const char *path, size_t *n)
{
    char **segs = NULL;
    *n = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        segs = xrealloc(segs, (*n + 1) * sizeof(*segs));
        segs[(*n)++] = str_dup((struct str){p, len});
        p += len;
    }
    return segs;
}

static void free_segs(char **segs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(segs[i]);
    free(segs);
}

struct httpd *httpd_new(const struct httpd_options *opt)
{
    struct httpd *h = xcalloc(1, sizeof(*h));
    h->opt = *opt;
    h->listen = xstrdup(opt->listen ? opt->listen : "127.0.0.1:0");
    h->comp = xstrdup(opt->comp ? opt->comp : "httpd");
    h->key = opt->key && *opt->key ? xstrdup(opt->key) : NULL;
    if (!h->opt.max_body)
        h->opt.max_body = DEFAULT_MAX_BODY;
    h->quiesced_fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    clock_cond_init(&h->cond);
    return h;
}

void httpd_route(struct httpd *h, const char *method, const char *pattern, httpd_handler fn,
                 void *ud, bool public)
{
    h->routes = xrealloc(h->routes, (h->nroutes + 1) * sizeof(*h->routes));
    struct route *rt = &h->routes[h->nroutes++];
    memset(rt, 0, sizeof(*rt));
    rt->method = xstrdup(method);
    rt->segs = split_path(pattern, &rt->nsegs);
    if (rt->nsegs && strcmp(rt->segs[rt->nsegs - 1], "*") == 0)
        rt->star = true;
    rt->fn = fn;
    rt->ud = ud;
    rt->public = public;
}

void httpd_route_upload(struct httpd *h, const char *method, const char *pattern, httpd_handler fn,
                        void *ud, bool public)
{
    httpd_route(h, method, pattern, fn, ud, public);
    h->routes[h->nroutes - 1].upload = true;
}

static void clear_params(struct httpd_req *r)
{
    for (size_t i = 0; i < r->nparams; i++)
        free(r->pvalues[i]);
    r->nparams = 0;
}

/* Matches the request's path segments against rt, filling r's params on
 * success. */
static bool route_match(const struct route *rt, char **segs, size_t n, struct httpd_req *r)
{
    bool ok = rt->star ? n >= rt->nsegs - 1 : n == rt->nsegs;
    size_t fixed = rt->star ? rt->nsegs - 1 : rt->nsegs;
    clear_params(r);
    for (size_t i = 0; ok && i < fixed; i++) {
        const char *ps = rt->segs[i];
        if (ps[0] == ':') {
            if (r->nparams < MAX_PARAMS) {
                r->pnames[r->nparams] = ps + 1;
                r->pvalues[r->nparams++] = xstrdup(segs[i]);
            }
        } else if (strcmp(ps, segs[i]) != 0) {
            ok = false;
        }
    }
    if (ok && rt->star && r->nparams < MAX_PARAMS) {
        struct buf rest = BUF_INIT;
        for (size_t i = fixed; i < n; i++) {
            if (i > fixed)
                buf_putc(&rest, '/');
            buf_puts(&rest, segs[i]);
        }
        r->pnames[r->nparams] = "*";
        r->pvalues[r->nparams++] = buf_detach(&rest);
    }
    if (!ok)
        clear_params(r);
    return ok;
}

/* ---- accessors ---- */

const char *httpd_method(const struct httpd_req *r)
{
    return r->method;
}
const char *httpd_path(const struct httpd_req *r)
{
    return r->path;
}

const char *httpd_param(const struct httpd_req *r, const char *name)
{
    for (size_t i = 0; i < r->nparams; i++)
        if (strcmp(r->pnames[i], name) == 0)
            return r->pvalues[i];
    return NULL;
}

const char *httpd_query(const struct httpd_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, name);
}

const char *httpd_header(const struct httpd_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
}

bool httpd_header_has(const struct httpd_req *r, const char *name, const char *token)
{
    const char *list = httpd_header(r, name);
    size_t n = strlen(token);
    for (const char *p = list; p && *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == n && strncasecmp(p, token, n) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

struct str httpd_body(const struct httpd_req *r)
{
    return (struct str){r->body.p ? r->body.p : "", r->body.len};
}

int httpd_body_json(struct httpd_req *r, json_t **out)
{
    struct pier_err err = {0};
    int rc = jsonx_parse_object(r->body.p ? r->body.p : "", r->body.len, out, &err);
    if (rc < 0)
        httpd_reply_error(r, 400, "syntax_error", 3, "%s", err.msg);
    return rc;
}

/* ---- replies ---- */

void httpd_add_header(struct httpd_req *r, const char *name, const char *value)
{
    r->hdrs = xrealloc(r->hdrs, (r->nhdrs + 2) * sizeof(*r->hdrs));
    r->hdrs[r->nhdrs++] = xstrdup(name);
    r->hdrs[r->nhdrs++] = xstrdup(value);
}

static void queue(struct httpd_req *r, int status, struct MHD_Response *resp)
{
    if (r->replied) {
        log_error(r->h->comp, "handler replied twice", "path=%s", r->path);
        MHD_destroy_response(resp);
        return;
    }
    r->replied = true;
    for (size_t i = 0; i + 1 < r->nhdrs; i += 2)
        MHD_add_response_header(resp, r->hdrs[i], r->hdrs[i + 1]);
    if (atomic_load(&r->h->draining)) {
        MHD_add_response_header(resp, "Connection", "close");
        r->closes = true;
    }
    if (r->in_headers) {
        /* An upload route's handler answered before the body: the reply
         * waits until the body has been read (on_request). */
        r->deferred = resp;
        r->deferred_status = status;
        return;
    }
    if (MHD_queue_response(r->c, (unsigned)status, resp) != MHD_YES)
        log_warn(r->h->comp, "cannot queue a response", "status=%d path=%s", status, r->path);
    MHD_destroy_response(resp);
}

void httpd_reply(struct httpd_req *r, int status, const char *content_type, const void *body,
                 size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (content_type)
        MHD_add_response_header(resp, "Content-Type", content_type);
    queue(r, status, resp);
}

void httpd_reply_json(struct httpd_req *r, int status, json_t *j)
{
    cleanup_buf struct buf b = BUF_INIT;
    jsonx_dump(&b, j);
    json_decref(j);
    httpd_reply(r, status, "application/json", b.p, b.len);
}

void httpd_reply_not_found(struct httpd_req *r)
{
    httpd_reply(r, 404, NULL, "", 0);
}

static void reply_error_msg(struct httpd_req *r, int status, const char *code, int grpc_code,
                            const char *msg)
{
    json_t *j = json_object();
    if (r->h->opt.errors == HTTPD_ERRORS_ETCD) {
        json_object_set_new(j, "error", json_string(msg));
        json_object_set_new(j, "message", json_string(msg));
        json_object_set_new(j, "code", json_integer(grpc_code));
    } else {
        json_object_set_new(j, "code", json_string(code));
        json_object_set_new(j, "message", json_string(msg));
        if (status == 503 || status == 429)
            json_object_set_new(j, "retry", json_true());
    }
    httpd_reply_json(r, status, j);
}

void httpd_reply_error(struct httpd_req *r, int status, const char *code, int grpc_code,
                       const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_error_msg(r, status, code, grpc_code, msg);
}

void httpd_reply_err(struct httpd_req *r, const struct pier_err *e)
{
    int status = err_http_status(e->code);
    if (status == 404 && r->h->opt.errors == HTTPD_ERRORS_FLYNN) {
        httpd_reply_not_found(r);
        return;
    }
    /* gRPC's Unknown: servers in etcd's style map their own errors. */
    reply_error_msg(r, status, err_code_name(e->code), 2, e->msg);
}

/* ---- streams ---- */

static bool peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return true;
    /* Only POLLRDHUP is asked for: pending input (a pipelined request) must
     * not wake us, only the peer shutting its side or an error. */
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *s = cls;
    while (s->pending.len == 0) {
        if (s->ended && s->sized && pos < s->size)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* short: the client must see it cut */
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (atomic_load(&s->h->stopping) || peer_gone(s->c))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        /* A drain ends an endless stream: one last next() that does not
         * wait gathers what is ready, then the stream ends as if next()
         * had ended it (the last chunk goes out: a clean end). */
        bool last = s->endless && atomic_load(&s->h->draining);
        int rc = s->next(s->ud, &s->pending, last ? 0 : STREAM_POLL_MS);
        if (rc < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (rc == 0 || last)
            s->ended = true;
    }
    size_t n = s->pending.len < max ? s->pending.len : max;
    if (s->sized && n > s->size - pos)
        n = (size_t)(s->size - pos); /* next() gave more than it promised */
    memcpy(out, s->pending.p, n);
    buf_consume(&s->pending, n);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    struct stream *s = cls;
    if (s->done)
        s->done(s->ud);
    buf_free(&s->pending);
    free(s);
}

static void reply_stream(struct httpd_req *r, int status, const char *content_type, bool sized,
                         uint64_t size, bool endless, httpd_stream_next next,
                         httpd_stream_done done, void *ud)
{
    struct stream *s = xcalloc(1, sizeof(*s));
    s->endless = endless;
    s->h = r->h;
    s->c = r->c;
    s->next = next;
    s->done = done;
    s->ud = ud;
    s->sized = sized;
    s->size = size;
    struct MHD_Response *resp = MHD_create_response_from_callback(sized ? size : MHD_SIZE_UNKNOWN,
                                                                  sized ? 64 * 1024 : 16 * 1024,
                                                                  stream_read, s, stream_free);
    if (!resp) {
        stream_free(s);
        httpd_reply_error(r, 500, "unknown_error", 13, "cannot create a stream");
        return;
    }
    if (content_type)
        MHD_add_response_header(resp, "Content-Type", content_type);
    if (!sized)
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    queue(r, status, resp);
}

void httpd_reply_stream(struct httpd_req *r, int status, const char *content_type,
                        httpd_stream_next next, httpd_stream_done done, void *ud)
{
    reply_stream(r, status, content_type, false, 0, false, next, done, ud);
}

void httpd_reply_stream_endless(struct httpd_req *r, int status, const char *content_type,
                                httpd_stream_next next, httpd_stream_done done, void *ud)
{
    reply_stream(r, status, content_type, false, 0, true, next, done, ud);
}

void httpd_reply_stream_sized(struct httpd_req *r, int status, const char *content_type,
                              uint64_t size, httpd_stream_next next, httpd_stream_done done,
                              void *ud)
{
    reply_stream(r, status, content_type, true, size, false, next, done, ud);
}

/* ---- upgrades ----
 *
 * libmicrohttpd calls on_upgrade on the connection's own thread once the
 * 101 has gone out, and since every connection has its own thread, fn may
 * block there for as long as the new protocol lasts. The daemon must not be
 * stopped while such a thread still runs (libmicrohttpd does not join it and
 * would free the connection under it), so httpd_free shuts the sockets of
 * running upgrades down, which ends any fn that reads or writes them, and
 * waits until libmicrohttpd reports each upgraded connection closed: that
 * report comes after it joined the connection's thread. */

static void on_upgrade(void *cls, struct MHD_Connection *c, void *con_cls, const char *extra,
                       size_t extra_len, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    (void)con_cls;
    struct upgrade *u = cls;
    struct httpd *h = u->h;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn *cn = ci ? ci->socket_context : NULL;
    pthread_mutex_lock(&h->lock);
    bool run = !atomic_load(&h->stopping);
    if (cn) {
        cn->upgraded = true;
        h->upgraded++;
    }
    if (run) {
        u->fd = sock;
        u->next = h->running;
        h->running = u;
    }
    pthread_mutex_unlock(&h->lock);
    if (run) {
        /* libmicrohttpd's sockets are non-blocking; fn is promised a
         * plain blocking one. */
        int fl = fcntl(sock, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK))
            fcntl(sock, F_SETFL, fl & ~O_NONBLOCK);
        u->fn(u->ud, sock, extra, extra_len);
        pthread_mutex_lock(&h->lock);
        for (struct upgrade **p = &h->running; *p; p = &(*p)->next) {
            if (*p == u) {
                *p = u->next;
                break;
            }
        }
        pthread_mutex_unlock(&h->lock);
    }
    /* The request (and u with it) is freed after this returns, by
     * on_completed; done() is called there. */
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)c;
    struct httpd *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = xcalloc(1, sizeof(struct conn));
        return;
    }
    struct conn *cn = *socket_context;
    if (cn && cn->upgraded) {
        pthread_mutex_lock(&h->lock);
        h->upgraded--;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
    }
    free(cn);
    *socket_context = NULL;
}

static void upgrade_free(struct upgrade *u)
{
    if (u && u->done)
        u->done(u->ud);
    free(u);
}

void httpd_reply_upgrade(struct httpd_req *r, const char *protocol, httpd_upgrade_fn fn,
                         void (*done)(void *ud), void *ud)
{
    struct upgrade *u = xcalloc(1, sizeof(*u));
    u->h = r->h;
    u->fn = fn;
    u->done = done;
    u->ud = ud;
    u->fd = -1;
    if (!r->http11) {
        upgrade_free(u);
        httpd_reply_error(r, 400, "validation_error", 3, "an upgrade to %s needs HTTP/1.1",
                          protocol);
        return;
    }
    if (r->replied) {
        log_error(r->h->comp, "handler replied twice", "path=%s", r->path);
        upgrade_free(u);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgrade, u);
    if (!resp || MHD_add_response_header(resp, "Upgrade", protocol) != MHD_YES ||
        MHD_queue_response(r->c, MHD_HTTP_SWITCHING_PROTOCOLS, resp) != MHD_YES) {
        if (resp)
            MHD_destroy_response(resp);
        upgrade_free(u);
        log_warn(r->h->comp, "cannot queue an upgrade", "protocol=%s path=%s", protocol, r->path);
        httpd_reply_error(r, 500, "unknown_error", 13, "cannot switch to %s", protocol);
        return;
    }
    MHD_destroy_response(resp);
    r->replied = true;
    r->upgrade = u;
}

/* Ends the upgraded connections of a server that is stopping. Returns false
 * when one did not end in time (its fn ignores its socket). */
static bool upgrades_stop(struct httpd *h)
{
    pthread_mutex_lock(&h->lock);
    for (struct upgrade *u = h->running; u; u = u->next)
        shutdown(u->fd, SHUT_RDWR);
    struct timespec deadline = clock_deadline_in(UPGRADE_STOP_MS);
    int rc = 0;
    while (h->upgraded > 0 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->cond, &h->lock, &deadline);
    bool ok = h->upgraded == 0;
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* ---- dispatch ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool httpd_key_ok(const struct httpd_req *r, const char *key)
{
    const char *auth = httpd_header(r, "Authorization");
    if (!auth)
        return false;
    size_t klen = strlen(key);
    if (strncasecmp(auth, "Bearer ", 7) == 0)
        return strlen(auth + 7) == klen && CRYPTO_memcmp(auth + 7, key, klen) == 0;
    if (strncasecmp(auth, "Basic ", 6) != 0)
        return false;
    cleanup_buf struct buf dec = BUF_INIT;
    if (base64_decode(&dec, auth + 6, strlen(auth + 6)) < 0 || !dec.p)
        return false;
    const char *colon = memchr(dec.p, ':', dec.len);
    if (!colon)
        return false;
    size_t plen = dec.len - (size_t)(colon + 1 - dec.p);
    /* Constant time, so the answer's timing says nothing about the key. */
    return plen == klen && CRYPTO_memcmp(colon + 1, key, klen) == 0;
}

static bool authorized(struct httpd_req *r)
{
    return !r->h->key || httpd_key_ok(r, r->h->key);
}

static void status_handler(struct httpd_req *r, void *ud)
{
    (void)ud;
    json_t *j = json_pack("{s:{s:s,s:s}}", "data", "status", "healthy", "version", PIER_VERSION);
    httpd_reply_json(r, 200, j);
}

/* Runs the request's route: with headers true when the headers are in,
 * which only an upload route acts on (any other request waits for its
 * body), and with headers false once the body has been read. */
static void dispatch(struct httpd_req *r, bool headers)
{
    struct httpd *h = r->h;
    if (!headers && r->too_big) {
        httpd_reply_error(r, 400, "request_body_too_big", 3,
                          "request body is larger than the limit of %zu bytes", h->opt.max_body);
        return;
    }
    bool path_matched = false;
    size_t nsegs;
    char **segs = split_path(r->path, &nsegs);
    bool done = false;
    for (size_t i = 0; i < h->nroutes && !done; i++) {
        struct route *rt = &h->routes[i];
        if (!route_match(rt, segs, nsegs, r))
            continue;
        path_matched = true;
        if (strcmp(rt->method, "*") != 0 && strcmp(rt->method, r->method) != 0)
            continue;
        if (headers && !rt->upload) {
            clear_params(r);
            break;
        }
        r->upload = rt->upload;
        r->in_headers = headers;
        /* Public routes answer without credentials, but credentials that
         * are presented must be right: a client with a wrong key then
         * learns it from its first request, health checks included. */
        done = true;
        if ((!rt->public || httpd_header(r, "Authorization")) && !authorized(r)) {
            httpd_reply(r, 401, NULL, "", 0);
            break;
        }
        rt->fn(r, rt->ud);
        if (!r->replied && !r->body_ops) {
            log_error(h->comp, "handler did not reply", "method=%s path=%s", r->method, r->path);
            httpd_reply_error(r, 500, "unknown_error", 13, "internal error");
        }
        r->in_headers = false;
    }
    free_segs(segs, nsegs);
    if (done || headers)
        return;
    if (path_matched) {
        httpd_reply_error(r, 405, "method_not_allowed", 12, "method %s is not allowed on %s",
                          r->method, r->path);
    } else if (h->opt.errors == HTTPD_ERRORS_FLYNN) {
        httpd_reply_not_found(r);
    } else {
        httpd_reply_error(r, 404, "not_found", 5, "no such path: %s %s", r->method, r->path);
    }
}

void httpd_body_stream(struct httpd_req *r, const struct httpd_body_ops *ops, void *ctx)
{
    if (!r->upload || r->replied || r->body_ops) {
        log_error(r->h->comp, "httpd_body_stream outside an upload handler", "path=%s", r->path);
        if (ops->done)
            ops->done(ctx);
        return;
    }
    r->body_ops = ops;
    r->body_ctx = ctx;
}

static void flush_deferred(struct httpd_req *r)
{
    struct MHD_Response *resp = r->deferred;
    if (!resp)
        return;
    r->deferred = NULL;
    if (MHD_queue_response(r->c, (unsigned)r->deferred_status, resp) != MHD_YES)
        log_warn(r->h->comp, "cannot queue a response", "status=%d path=%s", r->deferred_status,
                 r->path);
    MHD_destroy_response(resp);
}

/* The body of an upload route's request: to the handler's ops, or dropped
 * when it refused the request. */
static enum MHD_Result upload_data(struct httpd_req *r, const char *p, size_t n)
{
    if (r->body_ops && !r->replied)
        return r->body_ops->data(r->body_ctx, p, n) < 0 ? MHD_NO : MHD_YES;
    r->received += n;
    return r->received > DISCARD_LIMIT ? MHD_NO : MHD_YES;
}

static void upload_end(struct httpd_req *r)
{
    if (r->body_ops && !r->replied) {
        r->body_ops->end(r, r->body_ctx);
        if (!r->replied) {
            log_error(r->h->comp, "upload handler did not reply", "method=%s path=%s", r->method,
                      r->path);
            httpd_reply_error(r, 500, "unknown_error", 13, "internal error");
        }
    }
    flush_deferred(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct httpd *h = cls;
    struct httpd_req *r = *con_cls;
    if (!r) {
        r = xcalloc(1, sizeof(*r));
        r->h = h;
        r->c = c;
        r->http11 = strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
        r->method = xstrdup(method);
        r->path = xstrdup(url);
        *con_cls = r;
        pthread_mutex_lock(&h->lock);
        h->inflight++;
        pthread_mutex_unlock(&h->lock);
        dispatch(r, true);
        /* A client waiting for "100 Continue" gets the refusal instead and
         * never sends the body. */
        if (r->deferred && httpd_header_has(r, "Expect", "100-continue"))
            flush_deferred(r);
        return MHD_YES;
    }
    if (r->upload) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (n)
            return upload_data(r, upload, n);
        upload_end(r);
        return MHD_YES;
    }
    if (*upload_size) {
        /* An oversize body is read and thrown away, and the error is sent
         * after it: a client still sending when we answer and close would
         * see a broken pipe instead of our message. Past a bound we stop
         * reading and drop the connection. */
        if (!r->too_big && r->body.len + *upload_size > h->opt.max_body) {
            r->too_big = true;
            buf_free(&r->body);
        }
        if (!r->too_big)
            buf_append(&r->body, upload, *upload_size);
        r->received += *upload_size;
        *upload_size = 0;
        return r->received > DISCARD_LIMIT ? MHD_NO : MHD_YES;
    }
    if (!r->replied)
        dispatch(r, false);
    return MHD_YES;
}

/* A reply whose headers went out before a drain began (a stream that
 * ended in it) promised keep-alive. Its client would send its next request,
 * a reconnect, on this connection to a server on its way out: half-closing
 * it instead (after the reply, already in the socket) sends it elsewhere.
 * Only the write side: a close with unread input could reset the
 * connection and lose the reply's end. */
static void end_keepalive(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        shutdown(ci->connect_fd, SHUT_WR);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct httpd *h = cls;
    struct httpd_req *r = *con_cls;
    if (!r)
        return;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !r->closes && !r->upgrade &&
        atomic_load(&h->draining))
        end_keepalive(c);
    if (r->deferred)
        MHD_destroy_response(r->deferred);
    if (r->body_ops && r->body_ops->done)
        r->body_ops->done(r->body_ctx);
    for (size_t i = 0; i < r->nhdrs; i++)
        free(r->hdrs[i]);
    free(r->hdrs);
    clear_params(r);
    upgrade_free(r->upgrade);
    free(r->method);
    free(r->path);
    buf_free(&r->body);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&h->lock);
    h->inflight--;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

/* Decodes %XX in paths and query strings, except %00: a NUL would cut the
 * C string short and make "a%00b" name "a". Left as it is, it fails any
 * name check instead. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    char *out = s;
    for (char *p = s; *p; p++) {
        int hi, lo;
        if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0 && (hi | lo) != 0) {
            *out++ = (char)(hi << 4 | lo);
            p += 2;
        } else {
            *out++ = *p;
        }
    }
    *out = '\0';
    return (size_t)(out - s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct httpd *h = cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '"')
            *p = '\'';
    /* It says this (in one of two wordings) each time a stream ends
     * because its client left or the server stops (stream_read ends it
     * "with error" to close the connection): an everyday event, not a
     * warning. */
    if (strstr(msg, "application error generating response") ||
        strstr(msg, "application reported error generating data"))
        log_debug(h->comp, "libmicrohttpd", "detail=\"%s\"", msg);
    else
        log_warn(h->comp, "libmicrohttpd", "detail=\"%s\"", msg);
}

/* Splits "HOST:PORT", "[V6]:PORT" or ":PORT" and resolves it. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, struct pier_err *err)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1])
        return err_set(err, PIER_EINVAL, "listen address \"%s\" must be HOST:PORT", listen);
    char host[256];
    const char *hs = listen, *he = colon;
    if (*hs == '[' && he > hs && he[-1] == ']') {
        hs++;
        he--;
    }
    if ((size_t)(he - hs) >= sizeof(host))
        return err_set(err, PIER_EINVAL, "listen address \"%s\" is too long", listen);
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return err_set(err, PIER_EINVAL, "listen address \"%s\": bad port", listen);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0)
        return err_set(err, PIER_EINVAL, "listen address \"%s\": %s", listen, gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

int httpd_start(struct httpd *h, struct pier_err *err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int rc = parse_listen(h->listen, &ss, err);
    if (rc < 0)
        return rc;
    /* Route the status check first so no component pattern can shadow it. */
    h->routes = xrealloc(h->routes, (h->nroutes + 1) * sizeof(*h->routes));
    memmove(h->routes + 1, h->routes, h->nroutes * sizeof(*h->routes));
    h->nroutes++;
    struct route *st = &h->routes[0];
    memset(st, 0, sizeof(*st));
    st->method = xstrdup("GET");
    st->segs = split_path("/.well-known/status", &st->nsegs);
    st->fn = status_handler;
    st->public = true;

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC | MHD_ALLOW_UPGRADE;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The logger comes first, so that what is said about the options
     * after it reaches it. */
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_UNESCAPE_CALLBACK, unescape, h,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_END);
    if (!h->d)
        return err_set(err, PIER_EUNAVAIL, "cannot listen on %s: %s (is the port in use?)",
                       h->listen, strerror(errno ? errno : EADDRINUSE));
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : 0;
    return 0;
}

int httpd_port(const struct httpd *h)
{
    return h->port;
}

char *httpd_reach_addr(const struct httpd *h)
{
    const char *colon = strrchr(h->listen, ':');
    size_t hlen = colon ? (size_t)(colon - h->listen) : 0;
    struct buf b = BUF_INIT;
    if (hlen == 0 || (hlen == 7 && strncmp(h->listen, "0.0.0.0", 7) == 0))
        buf_printf(&b, "127.0.0.1:%d", httpd_port(h));
    else
        buf_printf(&b, "%.*s:%d", (int)hlen, h->listen, httpd_port(h));
    return buf_detach(&b);
}

void httpd_set_data(struct httpd *h, void *data, void (*free_fn)(void *data))
{
    h->data = data;
    h->data_free = free_fn;
}

void *httpd_data(const struct httpd *h)
{
    return h->data;
}

bool httpd_drain(struct httpd *h, int timeout_ms)
{
    if (!h->d)
        return true;
    atomic_store(&h->draining, true);
    if (h->quiesced_fd < 0) {
        /* libmicrohttpd stops polling the listening socket; shutting it
         * down also refuses the clients the kernel would still queue. It is
         * closed only after MHD_stop_daemon, as libmicrohttpd asks. */
        MHD_socket fd = MHD_quiesce_daemon(h->d);
        if (fd != MHD_INVALID_SOCKET) {
            shutdown(fd, SHUT_RDWR);
            h->quiesced_fd = fd;
        }
    }
    pthread_mutex_lock(&h->lock);
    struct timespec deadline = clock_deadline_in(timeout_ms);
    int rc = 0;
    while (h->inflight > 0 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->cond, &h->lock, &deadline);
    bool ok = h->inflight == 0;
    pthread_mutex_unlock(&h->lock);
    return ok;
}

void httpd_free(struct httpd *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    atomic_store(&h->stopping, true);
    pthread_mutex_unlock(&h->lock);
    if (h->d && !upgrades_stop(h)) {
        /* Freeing now would pull the server from under a thread that still
         * runs: leave it allocated (the process is usually exiting). */
        log_error(h->comp, "upgraded connections did not end, server left running", "wait_ms=%d",
                  UPGRADE_STOP_MS);
        return;
    }
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->quiesced_fd >= 0)
        close(h->quiesced_fd);
    for (size_t i = 0; i < h->nroutes; i++) {
        free(h->routes[i].method);
        free_segs(h->routes[i].segs, h->routes[i].nsegs);
    }
    free(h->routes);
    free(h->listen);
    free(h->comp);
    free(h->key);
    if (h->data_free)
        h->data_free(h->data);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void httpd_remote_addr(const struct httpd_req *r, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (len)
        out[0] = '\0';
    if (!ci || !ci->client_addr || !len)
        return;
    socklen_t alen = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                            : sizeof(struct sockaddr_in);
    if (getnameinfo(ci->client_addr, alen, out, len, NULL, 0, NI_NUMERICHOST) != 0)
        out[0] = '\0';
}
