/* httpc against real local servers: an httpd on 127.0.0.1:0 for the normal
 * cases, and tiny raw-socket servers on threads for peers that misbehave
 * (never answer, answer half, answer too much) or whose connections we
 * need to count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/cleanup.h"
#include "lib/httpc.h"
#include "lib/httpd.h"
#include "lib/jsonx.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the httpd side -------------------------------------------------- */

static atomic_int streams_done;

/* Answers what it got: method, X-Test, Content-Type, query q and body. */
static void echo(struct httpd_req *r, void *ud)
{
    (void)ud;
    struct str body = httpd_body(r);
    json_t *j = json_pack("{s:s,s:s?,s:s?,s:s?,s:s#}", "method", httpd_method(r), "hdr",
                          httpd_header(r, "x-test"), "ctype", httpd_header(r, "content-type"), "q",
                          httpd_query(r, "q"), "body", body.p ? body.p : "", (int)body.len);
    httpd_reply_json(r, 200, j);
}

/* Answers the request body byte for byte. */
static void raw_echo(struct httpd_req *r, void *ud)
{
    (void)ud;
    struct str body = httpd_body(r);
    httpd_reply(r, 200, "application/octet-stream", body.p, body.len);
}

/* Answers /size/:n with n bytes of 'x'. */
static void sized(struct httpd_req *r, void *ud)
{
    (void)ud;
    size_t n = strtoul(httpd_param(r, "n"), NULL, 10);
    cleanup_free char *p = xmalloc(n + 1);
    memset(p, 'x', n);
    httpd_reply(r, 200, "text/plain", p, n);
}

/* Answers /status/:code with that status and a small body. */
static void status(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply(r, atoi(httpd_param(r, "code")), "text/plain", "said so", 7);
}

/* Answers /slow/:ms after sleeping that long. */
static void slow(struct httpd_req *r, void *ud)
{
    (void)ud;
    usleep((useconds_t)atoi(httpd_param(r, "ms")) * 1000);
    httpd_reply(r, 200, "text/plain", "late", 4);
}

/* A stream of "n\n" for n = 0..count-1, then the end; count 0 = forever. */
struct counter {
    int n, count;
};

static int count_next(void *ud, struct buf *out, int timeout_ms)
{
    (void)timeout_ms;
    struct counter *c = ud;
    if (c->count && c->n >= c->count)
        return 0;
    if (!c->count)
        usleep(10 * 1000);
    buf_printf(out, "%d\n", c->n++);
    return 1;
}

static void count_done(void *ud)
{
    free(ud);
    atomic_fetch_add(&streams_done, 1);
}

static void stream(struct httpd_req *r, void *ud)
{
    (void)ud;
    struct counter *c = xcalloc(1, sizeof(*c));
    c->count = atoi(httpd_param(r, "n"));
    httpd_reply_stream(r, 200, "text/plain", count_next, count_done, c);
}

struct fixture {
    struct httpd *d;
    struct httpc *c;
    char base[64];
};

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    struct httpd_options o = {.listen = "127.0.0.1:0", .comp = "test-httpc"};
    f->d = httpd_new(&o);
    httpd_route(f->d, "*", "/echo", echo, NULL, false);
    httpd_route(f->d, "*", "/raw", raw_echo, NULL, false);
    httpd_route(f->d, "GET", "/size/:n", sized, NULL, false);
    httpd_route(f->d, "GET", "/status/:code", status, NULL, false);
    httpd_route(f->d, "GET", "/slow/:ms", slow, NULL, false);
    httpd_route(f->d, "GET", "/stream/:n", stream, NULL, false);
    struct pier_err err = {0};
    if (httpd_start(f->d, &err) < 0) {
        fprintf(stderr, "httpd_start: %s\n", err.msg);
        return -1;
    }
    snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", httpd_port(f->d));
    f->c = httpc_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    httpc_free(f->c);
    httpd_free(f->d);
    free(f);
    return 0;
}

/* ---- the raw side ---------------------------------------------------- */

enum raw_mode {
    RAW_SILENT,     /* reads the request, never answers */
    RAW_HALF,       /* answers headers and part of the body, then closes */
    RAW_HANGUP,     /* reads the request and closes */
    RAW_BIG,        /* answers a RAW_BIG_LEN body */
    RAW_HOLD,       /* answers chunked headers, then nothing */
    RAW_KEEPALIVE,  /* answers every request on the connection */
    RAW_CLOSE_EACH, /* answers one request per connection, then closes unannounced */
};

#define RAW_BIG_LEN (256 * 1024)
#define RAW_HALF_BODY "only part"

/* One thread serving one connection at a time. */
struct raw {
    enum raw_mode mode;
    int lfd;
    pthread_t th;
    atomic_bool stop;
    atomic_int accepts;
    atomic_int requests;
    char url[64];
};

/* Waits until fd is readable (1) or the server stops (0). */
static int raw_wait(struct raw *s, int fd)
{
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20) > 0)
            return 1;
    }
    return 0;
}

/* Reads one request head into in; -1 when the peer closed or we stop. */
static int raw_read_request(struct raw *s, int fd, struct buf *in)
{
    for (;;) {
        char *end = in->p ? strstr(in->p, "\r\n\r\n") : NULL;
        if (end) {
            buf_consume(in, (size_t)(end + 4 - in->p));
            return 0;
        }
        if (!raw_wait(s, fd))
            return -1;
        char tmp[4096];
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n <= 0)
            return -1;
        buf_append(in, tmp, (size_t)n);
    }
}

static int raw_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int raw_sendf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int raw_sendf(int fd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return raw_send(fd, msg, (size_t)n);
}

/* Waits for the peer to close (or the server to stop), dropping input. */
static void raw_drain(struct raw *s, int fd)
{
    char tmp[4096];
    while (raw_wait(s, fd) && recv(fd, tmp, sizeof(tmp), 0) > 0)
        ;
}

static void raw_serve(struct raw *s, int fd, int conn)
{
    cleanup_buf struct buf in = BUF_INIT;
    while (raw_read_request(s, fd, &in) == 0) {
        atomic_fetch_add(&s->requests, 1);
        switch (s->mode) {
        case RAW_SILENT: raw_drain(s, fd); return;
        case RAW_HALF:
            raw_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n%s", RAW_HALF_BODY);
            return;
        case RAW_HANGUP: return;
        case RAW_BIG: {
            if (raw_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", RAW_BIG_LEN) < 0)
                return;
            char chunk[8192];
            memset(chunk, 'b', sizeof(chunk));
            for (size_t sent = 0; sent < RAW_BIG_LEN; sent += sizeof(chunk))
                if (raw_send(fd, chunk, sizeof(chunk)) < 0)
                    return;
            break;
        }
        case RAW_HOLD:
            raw_sendf(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            raw_drain(s, fd);
            return;
        case RAW_KEEPALIVE:
        case RAW_CLOSE_EACH: {
            char body[16];
            int n = snprintf(body, sizeof(body), "%d", conn);
            raw_sendf(fd, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Conn: %d\r\n\r\n%s", n, conn,
                      body);
            if (s->mode == RAW_CLOSE_EACH)
                return;
            break;
        }
        }
    }
}

static void *raw_main(void *ud)
{
    struct raw *s = ud;
    while (raw_wait(s, s->lfd)) {
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        int conn = atomic_fetch_add(&s->accepts, 1) + 1;
        raw_serve(s, fd, conn);
        close(fd);
    }
    return NULL;
}

/* A socket bound to a free loopback port; listening when listen_too. */
static int bound_socket(bool listen_too, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    if (listen_too)
        assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

static struct raw *raw_start(enum raw_mode mode)
{
    struct raw *s = xcalloc(1, sizeof(*s));
    s->mode = mode;
    int port = 0;
    s->lfd = bound_socket(true, &port);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d/x", port);
    assert_int_equal(pthread_create(&s->th, NULL, raw_main, s), 0);
    return s;
}

static void raw_stop(struct raw *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->lfd);
    free(s);
}

static int collect(const char *data, size_t len, void *ud)
{
    buf_append(ud, data, len);
    return 0;
}

static void assert_resp_empty(const struct httpc_resp *resp)
{
    assert_int_equal(resp->status, 0);
    assert_null(resp->body.p);
    assert_int_equal(resp->body.len, 0);
    assert_null(resp->headers);
    assert_int_equal(resp->n_headers, 0);
}

/* ---- plain requests -------------------------------------------------- */

static json_t *json_of(const struct httpc_resp *resp)
{
    json_t *j = NULL;
    assert_int_equal(jsonx_parse(resp->body.p, resp->body.len, &j, NULL), 0);
    return j;
}

static const char *jstr(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

static void test_methods_bodies_headers(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/echo?q=a%%20b", f->base);
    const char *hdrs[] = {"X-Test: yes", "Content-Type: text/plain", NULL};
    const char *methods[] = {"POST", "PUT", "DELETE", "PATCH"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        char body[64];
        snprintf(body, sizeof(body), "hello %s", methods[i]);
        struct httpc_req req = {.method = methods[i],
                                .url = url,
                                .headers = hdrs,
                                .body = body,
                                .body_len = strlen(body)};
        struct httpc_resp resp = {0};
        struct pier_err err = {0};
        assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
        assert_int_equal(resp.status, 200);
        cleanup_json json_t *j = json_of(&resp);
        assert_string_equal(jstr(j, "method"), methods[i]);
        assert_string_equal(jstr(j, "body"), body);
        assert_string_equal(jstr(j, "hdr"), "yes");
        assert_string_equal(jstr(j, "ctype"), "text/plain");
        assert_string_equal(jstr(j, "q"), "a b");
        httpc_resp_release(&resp);
        assert_null(resp.body.p);
    }

    /* GET with headers, no body. */
    struct httpc_req get = {.method = "GET", .url = url, .headers = hdrs};
    struct httpc_resp resp = {0};
    assert_int_equal(httpc_do(f->c, &get, &resp, NULL), 0);
    cleanup_json json_t *g = json_of(&resp);
    assert_string_equal(jstr(g, "method"), "GET");
    assert_string_equal(jstr(g, "body"), "");
    assert_string_equal(jstr(g, "hdr"), "yes");
    httpc_resp_release(&resp);

    /* No method: GET without a body, POST with one. */
    struct httpc_req dflt = {.url = url};
    assert_int_equal(httpc_do(f->c, &dflt, &resp, NULL), 0);
    cleanup_json json_t *d1 = json_of(&resp);
    assert_string_equal(jstr(d1, "method"), "GET");
    assert_null(jstr(d1, "hdr"));
    httpc_resp_release(&resp);
    dflt.body = "{}";
    dflt.body_len = 2;
    assert_int_equal(httpc_do(f->c, &dflt, &resp, NULL), 0);
    cleanup_json json_t *d2 = json_of(&resp);
    assert_string_equal(jstr(d2, "method"), "POST");
    assert_string_equal(jstr(d2, "body"), "{}");
    httpc_resp_release(&resp);

    /* POST without a body sends an empty one. */
    struct httpc_req empty = {.method = "POST", .url = url};
    assert_int_equal(httpc_do(f->c, &empty, &resp, NULL), 0);
    cleanup_json json_t *e = json_of(&resp);
    assert_string_equal(jstr(e, "method"), "POST");
    assert_string_equal(jstr(e, "body"), "");
    httpc_resp_release(&resp);

    /* HEAD: a status, no body. */
    struct httpc_req head = {.method = "HEAD", .url = url};
    assert_int_equal(httpc_do(f->c, &head, &resp, NULL), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, 0);
    httpc_resp_release(&resp);
}

static void test_binary_body(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/raw", f->base);
    /* Bytes with NULs, body_len counts them all, and a body larger than
     * one socket write. */
    size_t n = 200 * 1024;
    cleanup_free unsigned char *body = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (unsigned char)(i * 7);
    struct httpc_req req = {.method = "PUT", .url = url, .body = body, .body_len = n};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body.len, n);
    assert_memory_equal(resp.body.p, body, n);
    assert_int_equal(resp.body.p[n], '\0');
    httpc_resp_release(&resp);

    /* body_len shorter than the buffer: only body_len bytes go. */
    req.body_len = 3;
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
    assert_int_equal(resp.body.len, 3);
    assert_memory_equal(resp.body.p, body, 3);
    httpc_resp_release(&resp);
}

static void test_http_status_is_not_an_error(void **state)
{
    struct fixture *f = *state;
    const long codes[] = {201, 404, 409, 500, 503};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        char url[128];
        snprintf(url, sizeof(url), "%s/status/%ld", f->base, codes[i]);
        struct httpc_req req = {.url = url};
        struct httpc_resp resp = {0};
        struct pier_err err = {0};
        assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
        assert_int_equal(err.code, 0);
        assert_int_equal(resp.status, codes[i]);
        assert_string_equal(resp.body.p, "said so");
        httpc_resp_release(&resp);
    }
    /* An unknown path: the bare 404. */
    char url[128];
    snprintf(url, sizeof(url), "%s/nowhere", f->base);
    struct httpc_req req = {.url = url};
    struct httpc_resp resp = {0};
    assert_int_equal(httpc_do(f->c, &req, &resp, NULL), 0);
    assert_int_equal(resp.status, 404);
    assert_int_equal(resp.body.len, 0);
    httpc_resp_release(&resp);
}

static void test_want_headers(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/echo", f->base);
    const char *want[] = {"content-type", "X-Absent", NULL};
    struct httpc_req req = {.url = url, .want_headers = want};
    struct httpc_resp resp = {0};
    assert_int_equal(httpc_do(f->c, &req, &resp, NULL), 0);
    assert_int_equal(resp.n_headers, 1);
    assert_string_equal(resp.headers[0].name, "content-type"); /* as asked */
    assert_string_equal(resp.headers[0].value, "application/json");
    assert_string_equal(httpc_resp_header(&resp, "Content-Type"), "application/json");
    assert_string_equal(httpc_resp_header(&resp, "CONTENT-TYPE"), "application/json");
    assert_null(httpc_resp_header(&resp, "X-Absent"));
    assert_null(httpc_resp_header(&resp, "Content-Length")); /* present, but not asked */
    httpc_resp_release(&resp);
    assert_null(resp.headers);
    assert_int_equal(resp.n_headers, 0);

    /* Nothing asked, nothing kept. */
    req.want_headers = NULL;
    assert_int_equal(httpc_do(f->c, &req, &resp, NULL), 0);
    assert_int_equal(resp.n_headers, 0);
    assert_null(httpc_resp_header(&resp, "Content-Type"));
    httpc_resp_release(&resp);

    /* A header the raw server adds, asked in another case. */
    struct raw *s = raw_start(RAW_KEEPALIVE);
    const char *want_conn[] = {"x-conn", NULL};
    struct httpc_req rreq = {.url = s->url, .want_headers = want_conn};
    assert_int_equal(httpc_do(f->c, &rreq, &resp, NULL), 0);
    assert_string_equal(httpc_resp_header(&resp, "X-Conn"), "1");
    httpc_resp_release(&resp);
    raw_stop(s);
}

static void test_max_body(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/size/5000", f->base);
    struct httpc_req req = {.url = url, .name = "sizer", .max_body = 5000};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    /* Exactly max_body is fine. */
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
    assert_int_equal(resp.body.len, 5000);
    httpc_resp_release(&resp);
    /* One byte more is not. */
    req.max_body = 4999;
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), PIER_ETOOBIG);
    assert_int_equal(err.code, PIER_ETOOBIG);
    assert_non_null(strstr(err.msg, "sizer"));
    assert_resp_empty(&resp);
    assert_false(httpc_not_sent(PIER_ETOOBIG));
    /* The pool still works afterwards. */
    req.max_body = 0;
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
    assert_int_equal(resp.body.len, 5000);
    httpc_resp_release(&resp);
}

/* ---- failures -------------------------------------------------------- */

static void test_connection_refused(void **state)
{
    struct fixture *f = *state;
    /* Bound but not listening: connecting is refused, and nobody else can
     * take the port meanwhile. */
    int port = 0;
    cleanup_close int fd = bound_socket(false, &port);
    char url[64], name[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v3/kv/range", port);
    snprintf(name, sizeof(name), "store at 127.0.0.1:%d", port);

    struct httpc_req req = {.url = url, .name = name, .body = "{}", .body_len = 2};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int r = httpc_do(f->c, &req, &resp, &err);
    assert_int_equal(r, -ECONNREFUSED);
    assert_int_equal(err.code, -ECONNREFUSED);
    assert_non_null(strstr(err.msg, name));
    assert_non_null(strstr(err.msg, "refused"));
    assert_true(httpc_not_sent(r));
    assert_resp_empty(&resp);

    /* Without a name the URL names the peer. */
    req.name = NULL;
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), -ECONNREFUSED);
    assert_non_null(strstr(err.msg, url));

    /* Streams too. */
    struct httpc_stream *s = NULL;
    req.name = name;
    assert_int_equal(httpc_stream_open(f->c, &req, collect, NULL, &s, &err), -ECONNREFUSED);
    assert_null(s);
    assert_non_null(strstr(err.msg, name));
    long st = -1;
    assert_int_equal(httpc_stream_run(f->c, &req, collect, NULL, &st, &err), -ECONNREFUSED);
}

static void test_not_sent(void **state)
{
    (void)state;
    assert_true(httpc_not_sent(-ECONNREFUSED));
    assert_true(httpc_not_sent(-EHOSTUNREACH));
    assert_true(httpc_not_sent(-ETIMEDOUT));
    assert_false(httpc_not_sent(0));
    assert_false(httpc_not_sent(PIER_ETIMEOUT));
    assert_false(httpc_not_sent(PIER_EUNAVAIL));
    assert_false(httpc_not_sent(PIER_ETOOBIG));
    assert_false(httpc_not_sent(PIER_EINVAL));
    assert_false(httpc_not_sent(-ECANCELED));
}

static void test_bad_requests(void **state)
{
    struct fixture *f = *state;
    const char *bad[] = {"ftp://127.0.0.1/x", "127.0.0.1:80/x", "httpx://127.0.0.1/x",
                         "http://[::1/x", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct httpc_req req = {.url = bad[i]};
        struct httpc_resp resp = {0};
        struct pier_err err = {0};
        assert_int_equal(httpc_do(f->c, &req, &resp, &err), PIER_EINVAL);
        assert_int_equal(err.code, PIER_EINVAL);
        assert_resp_empty(&resp);
        struct httpc_stream *s = NULL;
        assert_int_equal(httpc_stream_open(f->c, &req, collect, NULL, &s, &err), PIER_EINVAL);
        assert_null(s);
    }
    struct httpc_req none = {.url = NULL};
    struct httpc_resp resp = {0};
    assert_int_equal(httpc_do(f->c, &none, &resp, NULL), PIER_EINVAL);
    struct httpc_stream *s = NULL;
    assert_int_equal(httpc_stream_open(f->c, &none, collect, NULL, &s, NULL), PIER_EINVAL);
    assert_null(s);

    /* NULL is fine for the releasers. */
    httpc_free(NULL);
    httpc_resp_release(NULL);
    httpc_stream_close(NULL);
}

static void test_no_answer_times_out(void **state)
{
    struct fixture *f = *state;
    struct raw *s = raw_start(RAW_SILENT);
    struct httpc_req req = {.url = s->url, .name = "mute peer", .timeout_ms = 300};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int64_t t0 = now_ms();
    int r = httpc_do(f->c, &req, &resp, &err);
    int64_t took = now_ms() - t0;
    assert_int_equal(r, PIER_ETIMEOUT);
    assert_int_equal(err.code, PIER_ETIMEOUT);
    assert_non_null(strstr(err.msg, "mute peer"));
    assert_false(httpc_not_sent(r));
    assert_resp_empty(&resp);
    assert_true(took >= 250);
    assert_true(took < 3000);
    assert_int_equal(atomic_load(&s->requests), 1); /* it was sent */

    /* A stream waits for the headers only timeout_ms too. */
    struct httpc_stream *st = NULL;
    t0 = now_ms();
    r = httpc_stream_open(f->c, &req, collect, NULL, &st, &err);
    took = now_ms() - t0;
    assert_int_equal(r, PIER_ETIMEOUT);
    assert_null(st);
    assert_non_null(strstr(err.msg, "mute peer"));
    assert_true(took >= 250);
    assert_true(took < 3000);
    raw_stop(s);
}

static void test_broken_answer(void **state)
{
    struct fixture *f = *state;
    struct raw *s = raw_start(RAW_HALF);
    struct httpc_req req = {.url = s->url, .name = "flaky peer", .timeout_ms = 5000};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int r = httpc_do(f->c, &req, &resp, &err);
    assert_int_equal(r, PIER_EUNAVAIL);
    assert_int_equal(err.code, PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "flaky peer"));
    assert_false(httpc_not_sent(r));
    assert_resp_empty(&resp);
    raw_stop(s);

    /* Closed without a word. */
    s = raw_start(RAW_HANGUP);
    req.url = s->url;
    r = httpc_do(f->c, &req, &resp, &err);
    assert_int_equal(r, PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "flaky peer"));
    assert_resp_empty(&resp);
    raw_stop(s);
}

static void test_too_big_answer(void **state)
{
    struct fixture *f = *state;
    struct raw *s = raw_start(RAW_BIG);
    struct httpc_req req = {.url = s->url, .name = "chatty peer", .max_body = 4096};
    struct httpc_resp resp = {0};
    struct pier_err err = {0};
    int r = httpc_do(f->c, &req, &resp, &err);
    assert_int_equal(r, PIER_ETOOBIG);
    assert_int_equal(err.code, PIER_ETOOBIG);
    assert_non_null(strstr(err.msg, "chatty peer"));
    assert_non_null(strstr(err.msg, "4096"));
    assert_resp_empty(&resp);

    /* With room for it, the same answer comes whole. */
    req.max_body = RAW_BIG_LEN;
    assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
    assert_int_equal(resp.body.len, RAW_BIG_LEN);
    assert_int_equal(resp.body.p[RAW_BIG_LEN - 1], 'b');
    httpc_resp_release(&resp);
    raw_stop(s);
}

/* ---- connections ----------------------------------------------------- */

static void test_keepalive_reuse(void **state)
{
    struct fixture *f = *state;
    struct raw *s = raw_start(RAW_KEEPALIVE);
    struct httpc_req req = {.url = s->url};
    for (int i = 0; i < 5; i++) {
        struct httpc_resp resp = {0};
        struct pier_err err = {0};
        assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
        assert_string_equal(resp.body.p, "1"); /* all on the first connection */
        httpc_resp_release(&resp);
    }
    assert_int_equal(atomic_load(&s->requests), 5);
    assert_int_equal(atomic_load(&s->accepts), 1);
    raw_stop(s);
}

static void test_stale_connection_replaced(void **state)
{
    struct fixture *f = *state;
    /* The server drops each connection after one answer, unannounced: the
     * pooled connection is dead by the next request, which must still
     * work on a new one. */
    struct raw *s = raw_start(RAW_CLOSE_EACH);
    struct httpc_req req = {.url = s->url};
    for (int i = 1; i <= 3; i++) {
        struct httpc_resp resp = {0};
        struct pier_err err = {0};
        assert_int_equal(httpc_do(f->c, &req, &resp, &err), 0);
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        assert_string_equal(resp.body.p, want);
        httpc_resp_release(&resp);
    }
    assert_int_equal(atomic_load(&s->accepts), 3);
    raw_stop(s);
}

#define N_THREADS 8
#define N_PER_THREAD 10

struct worker {
    struct fixture *f;
    const char *path;
    int id;
    atomic_int *failures;
    pthread_barrier_t *go;
};

static void *echo_worker(void *ud)
{
    struct worker *w = ud;
    pthread_barrier_wait(w->go);
    for (int i = 0; i < N_PER_THREAD; i++) {
        char url[128], body[64];
        snprintf(url, sizeof(url), "%s/echo?q=%d-%d", w->f->base, w->id, i);
        snprintf(body, sizeof(body), "body %d-%d", w->id, i);
        struct httpc_req req = {
            .method = "PUT", .url = url, .body = body, .body_len = strlen(body)};
        struct httpc_resp resp = {0};
        json_t *j = NULL;
        char want_q[32];
        snprintf(want_q, sizeof(want_q), "%d-%d", w->id, i);
        if (httpc_do(w->f->c, &req, &resp, NULL) != 0 || resp.status != 200 ||
            jsonx_parse(resp.body.p, resp.body.len, &j, NULL) != 0 ||
            strcmp(jstr(j, "q") ? jstr(j, "q") : "", want_q) != 0 ||
            strcmp(jstr(j, "body") ? jstr(j, "body") : "", body) != 0)
            atomic_fetch_add(w->failures, 1);
        json_decref(j);
        httpc_resp_release(&resp);
    }
    return NULL;
}

static void *slow_worker(void *ud)
{
    struct worker *w = ud;
    pthread_barrier_wait(w->go);
    char url[128];
    snprintf(url, sizeof(url), "%s/slow/400", w->f->base);
    struct httpc_req req = {.url = url};
    struct httpc_resp resp = {0};
    if (httpc_do(w->f->c, &req, &resp, NULL) != 0 || resp.status != 200 ||
        strcmp(resp.body.p ? resp.body.p : "", "late") != 0)
        atomic_fetch_add(w->failures, 1);
    httpc_resp_release(&resp);
    return NULL;
}

static void run_workers(struct fixture *f, int n, void *(*fn)(void *), atomic_int *failures)
{
    pthread_t th[N_THREADS];
    struct worker w[N_THREADS];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        w[i] = (struct worker){.f = f, .id = i, .failures = failures, .go = &go};
        assert_int_equal(pthread_create(&th[i], NULL, fn, &w[i]), 0);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
}

static void test_concurrent_threads(void **state)
{
    struct fixture *f = *state;
    atomic_int failures = 0;
    run_workers(f, N_THREADS, echo_worker, &failures);
    assert_int_equal(atomic_load(&failures), 0);

    /* Concurrent requests run on separate connections, not one after the
     * other: four 400 ms answers take well under 4 x 400 ms. */
    int64_t t0 = now_ms();
    run_workers(f, 4, slow_worker, &failures);
    int64_t took = now_ms() - t0;
    assert_int_equal(atomic_load(&failures), 0);
    assert_true(took >= 400);
    assert_true(took < 1200);

    /* And the pool is still good for sequential use. */
    char url[128];
    snprintf(url, sizeof(url), "%s/status/204", f->base);
    struct httpc_req req = {.url = url};
    struct httpc_resp resp = {0};
    assert_int_equal(httpc_do(f->c, &req, &resp, NULL), 0);
    assert_int_equal(resp.status, 204);
    httpc_resp_release(&resp);
}

static void test_concurrent_pools(void **state)
{
    struct fixture *f = *state;
    /* Several pools at once, each freed with connections still pooled. */
    struct httpc *pools[3];
    for (int i = 0; i < 3; i++) {
        pools[i] = httpc_new();
        char url[128];
        snprintf(url, sizeof(url), "%s/status/200", f->base);
        struct httpc_req req = {.url = url};
        struct httpc_resp resp = {0};
        assert_int_equal(httpc_do(pools[i], &req, &resp, NULL), 0);
        assert_int_equal(resp.status, 200);
        httpc_resp_release(&resp);
    }
    for (int i = 0; i < 3; i++)
        httpc_free(pools[i]);
}

/* ---- streams --------------------------------------------------------- */

static void test_stream_to_the_end(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/stream/5", f->base);
    struct httpc_req req = {.url = url};
    cleanup_buf struct buf got = BUF_INIT;
    struct httpc_stream *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(httpc_stream_open(f->c, &req, collect, &got, &s, &err), 0);
    assert_non_null(s);
    assert_int_equal(httpc_stream_status(s), 200);
    int r, rounds = 0;
    while ((r = httpc_stream_poll(s, 2000, &err)) == 1)
        assert_true(++rounds < 100);
    assert_int_equal(r, 0);
    assert_string_equal(got.p, "0\n1\n2\n3\n4\n");
    /* Once ended, poll keeps saying so. */
    assert_int_equal(httpc_stream_poll(s, 0, &err), 0);
    assert_int_equal(httpc_stream_poll(s, -1, &err), 0);
    httpc_stream_close(s);
}

static void test_stream_poll_timing(void **state)
{
    struct fixture *f = *state;
    struct raw *srv = raw_start(RAW_HOLD);
    struct httpc_req req = {.url = srv->url};
    cleanup_buf struct buf got = BUF_INIT;
    struct httpc_stream *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(httpc_stream_open(f->c, &req, collect, &got, &s, &err), 0);
    assert_int_equal(httpc_stream_status(s), 200);
    /* Nothing comes: 0 returns at once, a timeout after about that long,
     * and the stream is still open. */
    int64_t t0 = now_ms();
    assert_int_equal(httpc_stream_poll(s, 0, &err), 1);
    assert_true(now_ms() - t0 < 100);
    t0 = now_ms();
    assert_int_equal(httpc_stream_poll(s, 200, &err), 1);
    int64_t took = now_ms() - t0;
    assert_true(took >= 150);
    assert_true(took < 1500);
    /* Longer than one internal wait round. */
    t0 = now_ms();
    assert_int_equal(httpc_stream_poll(s, 1200, &err), 1);
    took = now_ms() - t0;
    assert_true(took >= 1100);
    assert_true(took < 3000);
    assert_int_equal(got.len, 0);
    httpc_stream_close(s);
    raw_stop(srv);
}

/* The keepalive timer of the client's socket to port, as /proc/net/tcp
 * shows it: *timer 2 means keepalive, *when its expiry in 1/100 s. */
static bool client_keepalive_timer(int port, int *timer, long *when)
{
    FILE *fp = fopen("/proc/net/tcp", "r");
    if (!fp)
        return false;
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof(line), fp)) {
        unsigned rport = 0, st = 0;
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x %*x:%*x %x:%lx", &rport, &st, (unsigned *)timer,
                   when) == 4 &&
            (int)rport == port && st == 1 /* established */)
            found = true;
    }
    fclose(fp);
    return found;
}

/* A connection that goes quiet is probed after seconds, not the kernel's
 * two hours, so a peer that vanished (a partition) is noticed. */
static void test_tcp_keepalive(void **state)
{
    struct fixture *f = *state;
    struct raw *srv = raw_start(RAW_HOLD);
    struct httpc_req req = {.url = srv->url};
    cleanup_buf struct buf got = BUF_INIT;
    struct httpc_stream *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(httpc_stream_open(f->c, &req, collect, &got, &s, &err), 0);
    int port = atoi(strrchr(srv->url, ':') + 1);
    int timer = 0;
    long when = 0;
    if (!client_keepalive_timer(port, &timer, &when)) {
        httpc_stream_close(s);
        raw_stop(srv);
        skip(); /* no /proc/net/tcp here */
    }
    assert_int_equal(timer, 2); /* the keepalive timer runs */
    if (when > 6 * 100)
        fail_msg("first keepalive probe due in %ld.%02ld s", when / 100, when % 100);
    httpc_stream_close(s);
    raw_stop(srv);
}

struct stopper {
    struct buf got;
    size_t stop_at;
    int calls_after_stop;
    bool stopped;
};

static int stop_after(const char *data, size_t len, void *ud)
{
    struct stopper *st = ud;
    if (st->stopped)
        st->calls_after_stop++;
    buf_append(&st->got, data, len);
    if (st->got.len >= st->stop_at) {
        st->stopped = true;
        return 1;
    }
    return 0;
}

static void test_stream_abort(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/stream/0", f->base); /* endless */
    struct httpc_req req = {.url = url, .name = "watcher"};
    struct stopper st = {.stop_at = 6};
    struct httpc_stream *s = NULL;
    struct pier_err err = {0};
    int before = atomic_load(&streams_done);
    assert_int_equal(httpc_stream_open(f->c, &req, stop_after, &st, &s, &err), 0);
    int r, rounds = 0;
    while ((r = httpc_stream_poll(s, 2000, &err)) == 1) {
        /* 1 means still open: not after the callback asked to stop. */
        assert_false(st.stopped);
        assert_true(++rounds < 100);
    }
    assert_int_equal(r, -ECANCELED);
    assert_int_equal(err.code, -ECANCELED);
    assert_non_null(strstr(err.msg, "watcher"));
    assert_true(st.stopped);
    assert_int_equal(st.calls_after_stop, 0);
    /* The same result again, without calling back. */
    assert_int_equal(httpc_stream_poll(s, 100, &err), -ECANCELED);
    assert_int_equal(st.calls_after_stop, 0);
    httpc_stream_close(s);
    buf_free(&st.got);
    /* The server sees the hang-up and ends its endless stream. */
    for (int i = 0; i < 200 && atomic_load(&streams_done) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&streams_done), before + 1);
}

static void test_stream_close_while_open(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/stream/0", f->base);
    struct httpc_req req = {.url = url};
    cleanup_buf struct buf got = BUF_INIT;
    struct httpc_stream *s = NULL;
    int before = atomic_load(&streams_done);
    assert_int_equal(httpc_stream_open(f->c, &req, collect, &got, &s, NULL), 0);
    while (got.len < 4)
        assert_int_equal(httpc_stream_poll(s, 2000, NULL), 1);
    httpc_stream_close(s); /* still running: aborted */
    for (int i = 0; i < 200 && atomic_load(&streams_done) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&streams_done), before + 1);
}

static void test_stream_run(void **state)
{
    struct fixture *f = *state;
    char url[128];
    struct pier_err err = {0};
    long status = 0;

    /* To the end. */
    snprintf(url, sizeof(url), "%s/stream/3", f->base);
    struct httpc_req req = {.url = url};
    cleanup_buf struct buf got = BUF_INIT;
    assert_int_equal(httpc_stream_run(f->c, &req, collect, &got, &status, &err), 0);
    assert_int_equal(status, 200);
    assert_string_equal(got.p, "0\n1\n2\n");
    /* status is optional */
    buf_reset(&got);
    assert_int_equal(httpc_stream_run(f->c, &req, collect, &got, NULL, &err), 0);
    assert_string_equal(got.p, "0\n1\n2\n");

    /* Stopped by the reader. */
    snprintf(url, sizeof(url), "%s/stream/0", f->base);
    struct stopper st = {.stop_at = 10};
    status = 0;
    assert_int_equal(httpc_stream_run(f->c, &req, stop_after, &st, &status, &err), -ECANCELED);
    assert_int_equal(status, 200);
    assert_true(st.stopped);
    buf_free(&st.got);

    /* An HTTP error status is a status. */
    snprintf(url, sizeof(url), "%s/status/409", f->base);
    buf_reset(&got);
    assert_int_equal(httpc_stream_run(f->c, &req, collect, &got, &status, &err), 0);
    assert_int_equal(status, 409);
    assert_string_equal(got.p, "said so");

    /* A body goes out (and the caller's buffer is not needed after). */
    snprintf(url, sizeof(url), "%s/raw", f->base);
    char body[] = "streamed body";
    struct httpc_req post = {.method = "PUT", .url = url, .body = body, .body_len = strlen(body)};
    buf_reset(&got);
    assert_int_equal(httpc_stream_run(f->c, &post, collect, &got, &status, &err), 0);
    assert_int_equal(status, 200);
    assert_string_equal(got.p, "streamed body");
}

static void test_stream_misbehaving_peers(void **state)
{
    struct fixture *f = *state;
    struct pier_err err = {0};
    long status = 0;
    cleanup_buf struct buf got = BUF_INIT;

    /* Cut in the middle of the body: what came is delivered, then the error. */
    struct raw *s = raw_start(RAW_HALF);
    struct httpc_req req = {.url = s->url, .name = "flaky peer"};
    assert_int_equal(httpc_stream_run(f->c, &req, collect, &got, &status, &err), PIER_EUNAVAIL);
    assert_int_equal(err.code, PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "flaky peer"));
    assert_int_equal(status, 200);
    assert_string_equal(got.p, RAW_HALF_BODY);
    raw_stop(s);

    /* max_body does not apply to streams. */
    s = raw_start(RAW_BIG);
    struct httpc_req big = {.url = s->url, .max_body = 16};
    buf_reset(&got);
    assert_int_equal(httpc_stream_run(f->c, &big, collect, &got, &status, &err), 0);
    assert_int_equal(got.len, RAW_BIG_LEN);
    raw_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_methods_bodies_headers),
        cmocka_unit_test(test_binary_body),
        cmocka_unit_test(test_http_status_is_not_an_error),
        cmocka_unit_test(test_want_headers),
        cmocka_unit_test(test_max_body),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_not_sent),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_no_answer_times_out),
        cmocka_unit_test(test_broken_answer),
        cmocka_unit_test(test_too_big_answer),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_stale_connection_replaced),
        cmocka_unit_test(test_concurrent_threads),
        cmocka_unit_test(test_concurrent_pools),
        cmocka_unit_test(test_stream_to_the_end),
        cmocka_unit_test(test_stream_poll_timing),
        cmocka_unit_test(test_tcp_keepalive),
        cmocka_unit_test(test_stream_abort),
        cmocka_unit_test(test_stream_close_while_open),
        cmocka_unit_test(test_stream_run),
        cmocka_unit_test(test_stream_misbehaving_peers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
