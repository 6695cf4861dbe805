#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/httpc.h"
#include "lib/httpd.h"
#include "lib/jsonx.h"

struct fixture {
    struct httpd *flynn, *etcd;
    struct httpc *c;
    char flynn_url[64], etcd_url[64];
};

static atomic_int streams_done;

static void echo(struct httpd_req *r, void *ud)
{
    (void)ud;
    json_t *j = json_pack("{s:s,s:s?,s:s?,s:s?,s:s?}", "method", httpd_method(r), "id",
                          httpd_param(r, "id"), "rest", httpd_param(r, "*"), "q",
                          httpd_query(r, "q"), "hdr", httpd_header(r, "x-test"));
    httpd_reply_json(r, 200, j);
}

static void body_json(struct httpd_req *r, void *ud)
{
    (void)ud;
    json_t *j = NULL;
    if (httpd_body_json(r, &j) < 0)
        return;
    httpd_reply_json(r, 200, j);
}

static void fail_conflict(struct httpd_req *r, void *ud)
{
    (void)ud;
    struct pier_err e = {0};
    err_set(&e, PIER_ECONFLICT, "app \"x\" changed meanwhile");
    httpd_reply_err(r, &e);
}

static void fail_missing(struct httpd_req *r, void *ud)
{
    (void)ud;
    struct pier_err e = {0};
    err_set(&e, PIER_ENOTFOUND, "app \"x\" not found");
    httpd_reply_err(r, &e);
}

static void no_reply(struct httpd_req *r, void *ud)
{
    (void)r;
    (void)ud;
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
        usleep(20 * 1000);
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

/* An upgrade that writes "<body>|" and then echoes what it reads until EOF. */
static atomic_int upgrades_done, upgrades_ran;

struct echo_up {
    char *body;
};

static bool write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

static void echo_up_run(void *ud, int fd, const char *extra, size_t extra_len)
{
    struct echo_up *e = ud;
    atomic_fetch_add(&upgrades_ran, 1);
    if (!write_all(fd, e->body, strlen(e->body)) || !write_all(fd, "|", 1) ||
        !write_all(fd, extra, extra_len))
        return;
    char b[4096];
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        if (!write_all(fd, b, (size_t)n))
            return;
}

static void echo_up_done(void *ud)
{
    struct echo_up *e = ud;
    free(e->body);
    free(e);
    atomic_fetch_add(&upgrades_done, 1);
}

static void upgrade(struct httpd_req *r, void *ud)
{
    (void)ud;
    const char *up = httpd_header(r, "Upgrade");
    if (!up || strcmp(up, "echo/0") != 0) {
        httpd_reply_error(r, 400, "validation_error", 3, "needs Upgrade: echo/0");
        return;
    }
    struct echo_up *e = xcalloc(1, sizeof(*e));
    e->body = str_dup(httpd_body(r));
    httpd_reply_upgrade(r, "echo/0", echo_up_run, echo_up_done, e);
}

static void add_routes(struct httpd *h)
{
    httpd_route(h, "POST", "/upgrade", upgrade, NULL, false);
    httpd_route(h, "GET", "/apps/:id", echo, NULL, false);
    httpd_route(h, "GET", "/files/*", echo, NULL, false);
    httpd_route(h, "POST", "/json", body_json, NULL, false);
    httpd_route(h, "GET", "/conflict", fail_conflict, NULL, false);
    httpd_route(h, "GET", "/missing", fail_missing, NULL, false);
    httpd_route(h, "GET", "/silent", no_reply, NULL, false);
    httpd_route(h, "GET", "/stream/:n", stream, NULL, false);
    httpd_route(h, "GET", "/open", echo, NULL, true);
}

static int setup(void **state)
{
    struct fixture *f = xcalloc(1, sizeof(*f));
    struct httpd_options fo = {.listen = "127.0.0.1:0",
                               .comp = "test",
                               .max_body = 1024,
                               .key = "s3cret",
                               .errors = HTTPD_ERRORS_FLYNN};
    struct httpd_options eo = {
        .listen = "127.0.0.1:0", .comp = "test", .max_body = 1024, .errors = HTTPD_ERRORS_ETCD};
    f->flynn = httpd_new(&fo);
    f->etcd = httpd_new(&eo);
    add_routes(f->flynn);
    add_routes(f->etcd);
    struct pier_err err = {0};
    assert_int_equal(httpd_start(f->flynn, &err), 0);
    assert_int_equal(httpd_start(f->etcd, &err), 0);
    snprintf(f->flynn_url, sizeof(f->flynn_url), "http://127.0.0.1:%d", httpd_port(f->flynn));
    snprintf(f->etcd_url, sizeof(f->etcd_url), "http://127.0.0.1:%d", httpd_port(f->etcd));
    f->c = httpc_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    httpc_free(f->c);
    httpd_free(f->flynn);
    httpd_free(f->etcd);
    free(f);
    return 0;
}

static const char *AUTH[] = {"Authorization: Basic OnMzY3JldA==", "X-Test: yes", NULL};

/* Does one request; returns the status and leaves the body in resp. */
static long call(struct fixture *f, const char *base, const char *method, const char *path,
                 const char *body, const char *const *headers, struct httpc_resp *resp)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", base, path);
    struct httpc_req req = {.method = method,
                            .url = url,
                            .headers = headers,
                            .body = body,
                            .body_len = body ? strlen(body) : 0,
                            .want_headers = (const char *[]){"Content-Type", NULL}};
    struct pier_err err = {0};
    assert_int_equal(httpc_do(f->c, &req, resp, &err), 0);
    return resp->status;
}

static json_t *body_of(struct httpc_resp *resp)
{
    json_t *j = NULL;
    assert_int_equal(jsonx_parse(resp->body.p, resp->body.len, &j, NULL), 0);
    return j;
}

static void test_routing(void **state)
{
    struct fixture *f = *state;
    struct httpc_resp resp = {0};
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/web-1?q=a%20b", NULL, AUTH, &resp), 200);
    cleanup_json json_t *j = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "web-1");
    assert_string_equal(json_string_value(json_object_get(j, "q")), "a b");
    assert_string_equal(json_string_value(json_object_get(j, "hdr")), "yes");
    httpc_resp_release(&resp);

    assert_int_equal(call(f, f->flynn_url, "GET", "/files/a/b/c", NULL, AUTH, &resp), 200);
    cleanup_json json_t *k = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(k, "rest")), "a/b/c");
    httpc_resp_release(&resp);

    /* %00 is never decoded: a NUL would cut the name short. */
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/a%00b%41", NULL, AUTH, &resp), 200);
    cleanup_json json_t *z = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(z, "id")), "a%00bA");
    httpc_resp_release(&resp);

    /* Too many segments for /apps/:id */
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/a/b", NULL, AUTH, &resp), 404);
    httpc_resp_release(&resp);
    /* Known path, wrong method */
    assert_int_equal(call(f, f->flynn_url, "DELETE", "/apps/a", NULL, AUTH, &resp), 405);
    httpc_resp_release(&resp);
}

static void test_status_and_auth(void **state)
{
    struct fixture *f = *state;
    struct httpc_resp resp = {0};
    assert_int_equal(call(f, f->flynn_url, "GET", "/.well-known/status", NULL, NULL, &resp), 200);
    httpc_resp_release(&resp);
    /* No key: a bare 401. */
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/x", NULL, NULL, &resp), 401);
    assert_int_equal(resp.body.len, 0);
    httpc_resp_release(&resp);
    const char *wrong[] = {"Authorization: Basic Ondyb25n", NULL}; /* ":wrong" */
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/x", NULL, wrong, &resp), 401);
    httpc_resp_release(&resp);
    const char *bearer[] = {"Authorization: Bearer s3cret", NULL};
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/x", NULL, bearer, &resp), 200);
    httpc_resp_release(&resp);
    const char *garbage[] = {"Authorization: Basic !!!", NULL};
    assert_int_equal(call(f, f->flynn_url, "GET", "/apps/x", NULL, garbage, &resp), 401);
    httpc_resp_release(&resp);
    /* A public route needs no key, but a wrong key presented is refused. */
    assert_int_equal(call(f, f->flynn_url, "GET", "/open", NULL, NULL, &resp), 200);
    httpc_resp_release(&resp);
    assert_int_equal(call(f, f->flynn_url, "GET", "/open", NULL, wrong, &resp), 401);
    httpc_resp_release(&resp);
    assert_int_equal(call(f, f->flynn_url, "GET", "/.well-known/status", NULL, wrong, &resp), 401);
    httpc_resp_release(&resp);
    assert_int_equal(call(f, f->flynn_url, "GET", "/.well-known/status", NULL, AUTH, &resp), 200);
    httpc_resp_release(&resp);
}

static void test_errors_flynn(void **state)
{
    struct fixture *f = *state;
    struct httpc_resp resp = {0};
    /* Not found: bare, no JSON content type (a Flynn client relies on it). */
    assert_int_equal(call(f, f->flynn_url, "GET", "/nowhere", NULL, AUTH, &resp), 404);
    assert_int_equal(resp.body.len, 0);
    assert_null(httpc_resp_header(&resp, "Content-Type"));
    httpc_resp_release(&resp);
    assert_int_equal(call(f, f->flynn_url, "GET", "/missing", NULL, AUTH, &resp), 404);
    assert_int_equal(resp.body.len, 0);
    httpc_resp_release(&resp);

    assert_int_equal(call(f, f->flynn_url, "GET", "/conflict", NULL, AUTH, &resp), 409);
    cleanup_json json_t *j = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "conflict");
    assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "changed"));
    assert_string_equal(httpc_resp_header(&resp, "Content-Type"), "application/json");
    httpc_resp_release(&resp);

    assert_int_equal(call(f, f->flynn_url, "POST", "/json", "{\"a\":", AUTH, &resp), 400);
    cleanup_json json_t *k = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(k, "code")), "syntax_error");
    httpc_resp_release(&resp);

    assert_int_equal(call(f, f->flynn_url, "GET", "/silent", NULL, AUTH, &resp), 500);
    httpc_resp_release(&resp);
}

static void test_errors_etcd(void **state)
{
    struct fixture *f = *state;
    struct httpc_resp resp = {0};
    assert_int_equal(call(f, f->etcd_url, "GET", "/nowhere", NULL, NULL, &resp), 404);
    cleanup_json json_t *j = body_of(&resp);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 5);
    assert_non_null(json_string_value(json_object_get(j, "error")));
    httpc_resp_release(&resp);
    /* httpd_reply_err keeps Flynn's status; the gRPC code is Unknown, since
     * an etcd-style server maps its own errors (the store does, from mvcc). */
    assert_int_equal(call(f, f->etcd_url, "GET", "/conflict", NULL, NULL, &resp), 409);
    cleanup_json json_t *k = body_of(&resp);
    assert_int_equal(json_integer_value(json_object_get(k, "code")), 2);
    httpc_resp_release(&resp);
}

static void test_body_limit(void **state)
{
    struct fixture *f = *state;
    struct httpc_resp resp = {0};
    char big[2048];
    memset(big, ' ', sizeof(big) - 3);
    big[0] = '{';
    big[sizeof(big) - 3] = '}';
    big[sizeof(big) - 2] = '\0';
    assert_int_equal(call(f, f->flynn_url, "POST", "/json", big, AUTH, &resp), 400);
    cleanup_json json_t *j = body_of(&resp);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "request_body_too_big");
    httpc_resp_release(&resp);
    /* Within the limit it goes through. */
    assert_int_equal(call(f, f->flynn_url, "POST", "/json", "{\"ok\":true}", AUTH, &resp), 200);
    httpc_resp_release(&resp);
}

static int collect(const char *data, size_t len, void *ud)
{
    buf_append(ud, data, len);
    return 0;
}

static void test_stream(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/stream/5", f->flynn_url);
    struct httpc_req req = {.url = url, .headers = AUTH};
    cleanup_buf struct buf got = BUF_INIT;
    long status = 0;
    struct pier_err err = {0};
    int before = atomic_load(&streams_done);
    assert_int_equal(httpc_stream_run(f->c, &req, collect, &got, &status, &err), 0);
    assert_int_equal(status, 200);
    assert_string_equal(got.p, "0\n1\n2\n3\n4\n");
    for (int i = 0; i < 100 && atomic_load(&streams_done) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&streams_done), before + 1);
}

static void test_stream_client_gone(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof(url), "%s/stream/0", f->flynn_url);
    struct httpc_req req = {.url = url, .headers = AUTH};
    cleanup_buf struct buf got = BUF_INIT;
    struct httpc_stream *s = NULL;
    struct pier_err err = {0};
    int before = atomic_load(&streams_done);
    assert_int_equal(httpc_stream_open(f->c, &req, collect, &got, &s, &err), 0);
    while (got.len < 6)
        assert_true(httpc_stream_poll(s, 1000, &err) >= 0);
    httpc_stream_close(s);
    /* The server notices the hang-up and frees the endless stream. */
    for (int i = 0; i < 300 && atomic_load(&streams_done) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&streams_done), before + 1);
}

/* A raw connection to port that sends req; returns the socket with the
 * response head (up to the blank line) in head and any bytes after it in
 * rest. */
static int raw_request(int port, const char *req, struct buf *head, struct buf *rest)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_true(write_all(fd, req, strlen(req)));
    char b[1024];
    while (!strstr(head->p ? head->p : "", "\r\n\r\n")) {
        ssize_t n = read(fd, b, sizeof(b));
        assert_true(n > 0);
        buf_append(head, b, (size_t)n);
    }
    const char *end = strstr(head->p, "\r\n\r\n") + 4;
    buf_append(rest, end, (size_t)(head->p + head->len - end));
    head->len = (size_t)(end - head->p);
    head->p[head->len] = '\0';
    return fd;
}

/* Reads from fd into got until it holds want bytes (or EOF / timeout). */
static void read_until(int fd, struct buf *got, size_t want)
{
    char b[1024];
    while (got->len < want) {
        ssize_t n = read(fd, b, sizeof(b));
        if (n <= 0)
            break;
        buf_append(got, b, (size_t)n);
    }
}

static const char UPGRADE_REQ[] = "POST /upgrade HTTP/1.1\r\n"
                                  "Host: x\r\n"
                                  "Authorization: Basic OnMzY3JldA==\r\n"
                                  "Upgrade: echo/0\r\n"
                                  "Connection: upgrade\r\n"
                                  "Content-Type: application/json\r\n"
                                  "Content-Length: 10\r\n"
                                  "\r\n"
                                  "{\"a\":\"hi\"}";

static void test_upgrade_echo(void **state)
{
    struct fixture *f = *state;
    int before = atomic_load(&upgrades_done);
    cleanup_buf struct buf head = BUF_INIT;
    cleanup_buf struct buf got = BUF_INIT;
    /* Bytes sent right behind the request reach fn as "extra" (or on the
     * socket): either way they come first. */
    char req[512];
    snprintf(req, sizeof(req), "%searly;", UPGRADE_REQ);
    int fd = raw_request(httpd_port(f->flynn), req, &head, &got);
    assert_non_null(strstr(head.p, "HTTP/1.1 101 "));
    assert_non_null(strcasestr(head.p, "\r\nUpgrade: echo/0\r\n"));
    assert_non_null(strcasestr(head.p, "\r\nConnection: upgrade\r\n"));
    const char *want1 = "{\"a\":\"hi\"}|early;";
    read_until(fd, &got, strlen(want1));
    assert_string_equal(got.p, want1);
    /* Bytes round-trip both ways, in several writes. */
    for (int i = 0; i < 3; i++) {
        char msg[32];
        snprintf(msg, sizeof(msg), "ping %d;", i);
        assert_true(write_all(fd, msg, strlen(msg)));
        buf_reset(&got);
        read_until(fd, &got, strlen(msg));
        assert_string_equal(got.p, msg);
    }
    /* Our half-close ends fn, and the server closes the connection. */
    shutdown(fd, SHUT_WR);
    char b[16];
    assert_int_equal(read(fd, b, sizeof(b)), 0);
    close(fd);
    for (int i = 0; i < 300 && atomic_load(&upgrades_done) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&upgrades_done), before + 1);

    /* The server still answers plain requests afterwards. */
    struct httpc_resp resp = {0};
    assert_int_equal(call(f, f->flynn_url, "GET", "/open", NULL, NULL, &resp), 200);
    httpc_resp_release(&resp);
}

static void test_upgrade_refused(void **state)
{
    struct fixture *f = *state;
    int before = atomic_load(&upgrades_done);
    cleanup_buf struct buf head = BUF_INIT;
    cleanup_buf struct buf rest = BUF_INIT;
    /* HTTP/1.0 cannot switch protocols: a 400, and done() still runs. */
    const char *req10 = "POST /upgrade HTTP/1.0\r\n"
                        "Authorization: Basic OnMzY3JldA==\r\n"
                        "Upgrade: echo/0\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n";
    int fd = raw_request(httpd_port(f->flynn), req10, &head, &rest);
    assert_non_null(strstr(head.p, " 400 "));
    close(fd);
    assert_int_equal(atomic_load(&upgrades_done), before + 1);
    /* Without the key: a 401 before the handler. */
    buf_reset(&head);
    buf_reset(&rest);
    const char *noauth = "POST /upgrade HTTP/1.1\r\nHost: x\r\n"
                         "Upgrade: echo/0\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n";
    fd = raw_request(httpd_port(f->flynn), noauth, &head, &rest);
    assert_non_null(strstr(head.p, " 401 "));
    close(fd);
}

/* httpd_free while an upgraded connection is open: fn's socket is shut
 * down, fn returns, done runs, and the free is prompt. */
static void test_upgrade_free(void **state)
{
    (void)state;
    struct httpd_options o = {.listen = "127.0.0.1:0", .comp = "test", .key = "s3cret"};
    struct httpd *h = httpd_new(&o);
    add_routes(h);
    struct pier_err err = {0};
    assert_int_equal(httpd_start(h, &err), 0);
    int ran = atomic_load(&upgrades_ran), before = atomic_load(&upgrades_done);
    cleanup_buf struct buf head = BUF_INIT;
    cleanup_buf struct buf got = BUF_INIT;
    int fd = raw_request(httpd_port(h), UPGRADE_REQ, &head, &got);
    assert_non_null(strstr(head.p, " 101 "));
    read_until(fd, &got, 12);
    assert_int_equal(atomic_load(&upgrades_ran), ran + 1);
    int64_t t0 = clock_now_ms();
    httpd_free(h);
    assert_true(clock_now_ms() - t0 < 2000);
    assert_int_equal(atomic_load(&upgrades_done), before + 1);
    char b[64];
    while (read(fd, b, sizeof(b)) > 0)
        ;
    close(fd);
}

static void test_listen_errors(void **state)
{
    (void)state;
    const char *bad[] = {"nope", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:x1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct httpd_options o = {.listen = bad[i]};
        struct httpd *h = httpd_new(&o);
        struct pier_err err = {0};
        assert_true(httpd_start(h, &err) < 0);
        assert_non_null(strstr(err.msg, bad[i]));
        httpd_free(h);
    }
}

/* ---- httpd_drain: endless streams end, finite ones finish ---- */

/* Never ends: "hello\n" at first, then nothing (a quiet event stream); a
 * last call that may not wait (timeout 0, the drain's) adds "bye\n". */
static int endless_next(void *ud, struct buf *out, int timeout_ms)
{
    bool *started = ud;
    if (!*started) {
        *started = true;
        buf_puts(out, "hello\n");
    } else if (timeout_ms == 0) {
        buf_puts(out, "bye\n");
    } else {
        usleep((useconds_t)timeout_ms * 1000);
    }
    return 1;
}

static void endless(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_stream_endless(r, 200, "text/plain", endless_next, free, xcalloc(1, sizeof(bool)));
}

/* Eight lines, 100 ms apart: a finite stream still going when the drain
 * begins. */
static int slow_next(void *ud, struct buf *out, int timeout_ms)
{
    (void)timeout_ms;
    int *n = ud;
    if (*n == 8)
        return 0;
    if (*n)
        usleep(100 * 1000);
    buf_printf(out, "%d\n", (*n)++);
    return 1;
}

static void slow(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_stream(r, 200, "text/plain", slow_next, free, xcalloc(1, sizeof(int)));
}

/* Reads fd to EOF (or its 5 s timeout) into got; whether EOF came. */
static bool read_to_eof(int fd, struct buf *got)
{
    char b[1024];
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        buf_append(got, b, (size_t)n);
    return n == 0;
}

static void test_drain_streams(void **state)
{
    (void)state;
    struct httpd_options o = {.listen = "127.0.0.1:0", .comp = "test"};
    struct httpd *h = httpd_new(&o);
    httpd_route(h, "GET", "/endless", endless, NULL, false);
    httpd_route(h, "GET", "/slow", slow, NULL, false);
    struct pier_err err = {0};
    assert_int_equal(httpd_start(h, &err), 0);
    int port = httpd_port(h);
    cleanup_buf struct buf eh = BUF_INIT;
    cleanup_buf struct buf eb = BUF_INIT;
    cleanup_buf struct buf sh = BUF_INIT;
    cleanup_buf struct buf sb = BUF_INIT;
    cleanup_buf struct buf ih = BUF_INIT;
    cleanup_buf struct buf ib = BUF_INIT;
    int efd = raw_request(port, "GET /endless HTTP/1.1\r\nHost: x\r\n\r\n", &eh, &eb);
    int sfd = raw_request(port, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", &sh, &sb);
    /* An idle keep-alive connection: its request is over. */
    int ifd = raw_request(port, "GET /.well-known/status HTTP/1.1\r\nHost: x\r\n\r\n", &ih, &ib);
    assert_null(strstr(ih.p, "onnection: close"));
    read_until(efd, &eb, 6);
    assert_non_null(strstr(eb.p, "hello"));
    /* The status request is done server side too (a reply still going out
     * when the drain begins closes its connection after it). */
    usleep(200 * 1000);

    int64_t t0 = clock_now_ms();
    assert_true(httpd_drain(h, 5000));
    int64_t took = clock_now_ms() - t0;
    /* Held by the finite stream only (its ~700 ms), not to the timeout. */
    assert_true(took < 2500);
    /* The endless stream ended cleanly, with what was ready, and its
     * connection closed; the finite one is whole. */
    assert_true(read_to_eof(efd, &eb));
    assert_non_null(strstr(eb.p, "bye\n"));
    assert_true(eb.len >= 5 && memcmp(eb.p + eb.len - 5, "0\r\n\r\n", 5) == 0);
    assert_true(read_to_eof(sfd, &sb));
    assert_non_null(strstr(sb.p, "7\n"));
    assert_true(sb.len >= 5 && memcmp(sb.p + sb.len - 5, "0\r\n\r\n", 5) == 0);
    /* A request on a kept connection during the drain is answered, with
     * Connection: close. */
    const char again[] = "GET /.well-known/status HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_true(write_all(ifd, again, strlen(again)));
    buf_reset(&ib);
    assert_true(read_to_eof(ifd, &ib));
    assert_non_null(strstr(ib.p, " 200 "));
    assert_non_null(strstr(ib.p, "Connection: close"));
    close(efd);
    close(sfd);
    close(ifd);
    httpd_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_status_and_auth),
        cmocka_unit_test(test_errors_flynn),
        cmocka_unit_test(test_errors_etcd),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_stream_client_gone),
        cmocka_unit_test(test_upgrade_echo),
        cmocka_unit_test(test_upgrade_refused),
        cmocka_unit_test(test_upgrade_free),
        cmocka_unit_test(test_listen_errors),
        cmocka_unit_test(test_drain_streams),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
