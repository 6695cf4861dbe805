#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/http1.h"

/* The parsed structs are a few KiB; keep them off the test stacks. */
static struct http1_request req, req2;
static struct http1_response resp, resp2;

#define LIT(s) (s), (sizeof(s) - 1)

static void assert_view(struct str v, const char *want)
{
    size_t n = strlen(want);
    if (v.len != n || (n && memcmp(v.p, want, n) != 0))
        fail_msg("view \"%.*s\" (%zu) != \"%s\"", (int)v.len, v.p ? v.p : "", v.len, want);
}

static int preq(const char *s)
{
    return http1_parse_request(s, strlen(s), &req);
}

static int presp(const char *s)
{
    return http1_parse_response(s, strlen(s), &resp);
}

/* A view's offset from its base, or -1 for an empty NULL view, so views
 * into two copies of a message compare equal when they cover the same
 * bytes. */
static long off(struct str v, const char *base)
{
    return v.p ? (long)(v.p - base) : -1;
}

static void assert_same_view(struct str a, const char *ba, struct str b, const char *bb)
{
    assert_int_equal(a.len, b.len);
    if (a.len)
        assert_int_equal(off(a, ba), off(b, bb));
}

static void assert_same_headers(const struct http1_header *a, size_t na, const char *ba,
                                const struct http1_header *b, size_t nb, const char *bb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_same_view(a[i].name, ba, b[i].name, bb);
        assert_same_view(a[i].value, ba, b[i].value, bb);
    }
}

static void assert_same_request(const struct http1_request *a, const char *ba,
                                const struct http1_request *b, const char *bb)
{
    assert_same_view(a->method, ba, b->method, bb);
    assert_same_view(a->target, ba, b->target, bb);
    assert_same_view(a->path, ba, b->path, bb);
    assert_same_view(a->query, ba, b->query, bb);
    assert_same_view(a->host, ba, b->host, bb);
    assert_same_view(a->upgrade, ba, b->upgrade, bb);
    assert_int_equal(a->minor_version, b->minor_version);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->content_length, b->content_length);
    assert_same_headers(a->headers, a->num_headers, ba, b->headers, b->num_headers, bb);
}

/* Checks the results of parsing every prefix of a message: before the
 * head ends, incomplete; a malformed head may report its error as soon as
 * the error has arrived (and from then on), or, with the last_len hint,
 * not before its end. */
static void check_prefix(size_t k, size_t stop, int want, int r, int rh, bool *failed)
{
    bool ok;
    if (want >= 0)
        ok = k < stop ? r == HTTP1_INCOMPLETE && rh == HTTP1_INCOMPLETE : r == want && rh == want;
    else if (k == stop)
        ok = r == want && rh == want;
    else
        ok = (r == HTTP1_INCOMPLETE && !*failed) || r == want;
    ok = ok && (rh == HTTP1_INCOMPLETE || rh == want);
    if (!ok)
        fail_msg("prefix %zu of %zu: got %d / %d, want %d", k, stop, r, rh, want);
    *failed = r == want && want < 0;
}

/* Feeds s to the request parser one byte at a time, each prefix in an
 * exact-size heap copy so that ASan catches a read past len, with and
 * without the last_len hint; the complete head must parse as it does
 * whole. */
static void feed_request_bytewise(const char *s, size_t len, int want)
{
    assert_int_equal(http1_parse_request(s, len, &req), want);
    size_t stop = want > 0 ? (size_t)want : len;
    bool failed = false;
    for (size_t k = 0; k <= stop; k++) {
        char *copy = xmalloc(k);
        memcpy(copy, s, k);
        int r = http1_parse_request(copy, k, &req2);
        int rh = http1_parse_request_ex(copy, k, k ? k - 1 : 0, 0, &req2);
        check_prefix(k, stop, want, r, rh, &failed);
        if (k == stop && want > 0)
            assert_same_request(&req, s, &req2, copy);
        free(copy);
    }
}

static void feed_response_bytewise(const char *s, size_t len, int want)
{
    assert_int_equal(http1_parse_response(s, len, &resp), want);
    size_t stop = want > 0 ? (size_t)want : len;
    bool failed = false;
    for (size_t k = 0; k <= stop; k++) {
        char *copy = xmalloc(k);
        memcpy(copy, s, k);
        int r = http1_parse_response(copy, k, &resp2);
        int rh = http1_parse_response_ex(copy, k, k ? k - 1 : 0, 0, &resp2);
        check_prefix(k, stop, want, r, rh, &failed);
        if (k == stop && want > 0) {
            assert_int_equal(resp.status, resp2.status);
            assert_same_view(resp.reason, s, resp2.reason, copy);
            assert_int_equal(resp.flags, resp2.flags);
            assert_same_headers(resp.headers, resp.num_headers, s, resp2.headers, resp2.num_headers,
                                copy);
        }
        free(copy);
    }
}

/* ---- requests ---------------------------------------------------------- */

static void test_get(void **state)
{
    (void)state;
    const char *m = "GET /apps/web?limit=10&x=%20 HTTP/1.1\r\n"
                    "Host: web.pier.local:8080\r\n"
                    "User-Agent: curl/7.88.1\r\n"
                    "Accept:*/*\r\n"
                    "X-Empty:\r\n"
                    "X-Spaces: \t padded value \t \r\n"
                    "\r\n";
    assert_int_equal(preq(m), (int)strlen(m));
    assert_view(req.method, "GET");
    assert_ptr_equal(req.method.p, m);
    assert_view(req.target, "/apps/web?limit=10&x=%20");
    assert_view(req.path, "/apps/web");
    assert_view(req.query, "limit=10&x=%20");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.num_headers, 5);
    assert_view(req.headers[0].name, "Host");
    assert_view(req.headers[0].value, "web.pier.local:8080");
    assert_view(req.headers[2].name, "Accept");
    assert_view(req.headers[2].value, "*/*");
    assert_view(req.headers[3].value, "");
    assert_view(req.headers[4].value, "padded value");
    assert_view(req.host, "web.pier.local:8080");
    assert_int_equal(req.flags, HTTP1_F_HOST);
    assert_int_equal(http1_request_framing(&req).body, HTTP1_BODY_NONE);
    assert_true(http1_request_keep_alive(&req));
    assert_false(http1_request_upgrade(&req));
    assert_false(http1_request_expect_continue(&req));
}

static void test_targets(void **state)
{
    (void)state;
    assert_true(preq("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    assert_view(req.target, "*");
    assert_view(req.path, "*");
    assert_int_equal(req.query.len, 0);
    assert_true(preq("CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n") > 0);
    assert_view(req.method, "CONNECT");
    assert_view(req.target, "db.internal:5432");
    assert_true(preq("GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\n\r\n") > 0);
    assert_view(req.path, "http://a.example/x");
    assert_view(req.query, "y");
    assert_true(preq("GET /? HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    assert_view(req.path, "/");
    assert_view(req.query, "");
    /* obs-text in the target is passed on, as nginx does */
    assert_true(preq("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    assert_view(req.path, "/caf\xc3\xa9");
    /* methods are case-sensitive tokens, not a fixed list */
    assert_true(preq("PROPFIND /d HTTP/1.1\r\nHost: a\r\n\r\n") > 0);
    assert_view(req.method, "PROPFIND");
}

static void test_post_content_length(void **state)
{
    (void)state;
    const char *m = "POST /apps HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                    "Content-Length: 13\r\n\r\n{\"name\":\"w\"}";
    int n = preq(m);
    assert_int_equal(n, (int)strlen(m) - 12);
    assert_int_equal(req.flags & HTTP1_F_CONTENT_LENGTH, HTTP1_F_CONTENT_LENGTH);
    assert_int_equal(req.content_length, 13);
    struct http1_framing f = http1_request_framing(&req);
    assert_int_equal(f.body, HTTP1_BODY_LENGTH);
    assert_int_equal(f.length, 13);
    assert_string_equal(m + n, "{\"name\":\"w\"}");

    assert_true(preq("POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n") > 0);
    f = http1_request_framing(&req);
    assert_int_equal(f.body, HTTP1_BODY_LENGTH);
    assert_int_equal(f.length, 0);
    /* repeated identical values are one length */
    assert_true(
        preq("POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 7\r\ncontent-length:7\r\n\r\n") > 0);
    assert_int_equal(req.content_length, 7);
    /* the largest length there is */
    assert_true(preq("PUT / HTTP/1.1\r\nHost: c\r\nContent-Length: 9223372036854775807\r\n\r\n") >
                0);
    assert_int_equal(req.content_length, 9223372036854775807ull);
    assert_true(preq("PUT / HTTP/1.1\r\nHost: c\r\nContent-Length: 000012\r\n\r\n") > 0);
    assert_int_equal(req.content_length, 12);
}

static void test_post_chunked(void **state)
{
    (void)state;
    assert_true(preq("POST /u HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n") > 0);
    assert_int_equal(req.flags & (HTTP1_F_TRANSFER_ENCODING | HTTP1_F_CHUNKED),
                     HTTP1_F_TRANSFER_ENCODING | HTTP1_F_CHUNKED);
    assert_int_equal(http1_request_framing(&req).body, HTTP1_BODY_CHUNKED);
    /* codings before chunked, case, list split over two fields */
    assert_true(preq("POST /u HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: gzip\r\n"
                     "Transfer-Encoding: CHUNKED\r\n\r\n") > 0);
    assert_int_equal(http1_request_framing(&req).body, HTTP1_BODY_CHUNKED);
    assert_true(
        preq("POST /u HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: gzip;q=1 , chunked\r\n\r\n") > 0);
    assert_int_equal(http1_request_framing(&req).body, HTTP1_BODY_CHUNKED);
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *m = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                    "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    "\r\nGET /c HTTP/1.0\r\n\r\n";
    size_t len = strlen(m), at = 0;
    int n = http1_parse_request(m, len, &req);
    assert_int_equal(n, 28);
    assert_view(req.path, "/a");
    at += (size_t)n;
    n = http1_parse_request(m + at, len - at, &req);
    assert_true(n > 0);
    assert_view(req.path, "/b");
    assert_int_equal(http1_request_framing(&req).length, 3);
    at += (size_t)n + 3;
    /* the stray CRLF some clients send after a body is skipped */
    n = http1_parse_request(m + at, len - at, &req);
    assert_int_equal(n, (int)(len - at));
    assert_view(req.path, "/c");
    assert_int_equal(req.minor_version, 0);
    assert_false(http1_request_keep_alive(&req));
    /* but only one empty line */
    assert_int_equal(preq("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), HTTP1_EREQUEST_LINE);
}

static void test_bytewise(void **state)
{
    (void)state;
    static const char get[] =
        "GET /x?y=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
        "Upgrade: websocket\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    feed_request_bytewise(LIT(get), (int)sizeof(get) - 1);
    static const char post[] = "\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
    feed_request_bytewise(LIT(post), (int)sizeof(post) - 5);
    static const char lf[] = "GET / HTTP/1.0\nX: y\n\n";
    feed_request_bytewise(LIT(lf), (int)sizeof(lf) - 1);
    static const char mixed[] = "GET / HTTP/1.1\r\nHost: h\n\r\n";
    feed_request_bytewise(LIT(mixed), (int)sizeof(mixed) - 1);
    /* a bad head gives incomplete, then its error, and nothing else */
    static const char bad[] = "GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n";
    feed_request_bytewise(LIT(bad), HTTP1_EHEADER_SPACE);
}

static void test_empty(void **state)
{
    (void)state;
    struct buf b = BUF_INIT; /* p is NULL until the first read */
    assert_int_equal(http1_parse_request(b.p, b.len, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request_ex(b.p, b.len, 0, 1, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_response(b.p, b.len, &resp), HTTP1_INCOMPLETE);
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t len = 0, rest = 1;
    assert_int_equal(http1_chunked_decode(&c, b.p, &len, &rest), HTTP1_INCOMPLETE);
    assert_int_equal(rest, 0);
    assert_int_equal(http1_chunked_scan(&c, b.p, 0, &rest), HTTP1_INCOMPLETE);
}

static void test_lf_only(void **state)
{
    (void)state;
    const char *m = "GET / HTTP/1.1\nHost: h\nX-A: 1\n\n";
    assert_int_equal(preq(m), (int)strlen(m));
    assert_int_equal(req.num_headers, 2);
    assert_view(req.headers[1].value, "1");
}

struct reject {
    const char *msg;
    size_t len;
    int code;
};
#define REJ(lit, code)                                                                             \
    {                                                                                              \
        lit, sizeof(lit) - 1, code                                                                 \
    }
#define RL "GET / HTTP/1.1\r\nHost: h\r\n"

static void run_rejects(const struct reject *t, size_t n, bool request)
{
    for (size_t i = 0; i < n; i++) {
        int r = request ? http1_parse_request(t[i].msg, t[i].len, &req)
                        : http1_parse_response(t[i].msg, t[i].len, &resp);
        if (r != t[i].code)
            fail_msg("case %zu (%.*s): got %d (%s), want %d (%s)", i, (int)t[i].len, t[i].msg, r,
                     http1_strerror(r), t[i].code, http1_strerror(t[i].code));
    }
}

static void test_request_line_rejects(void **state)
{
    (void)state;
    static const struct reject t[] = {
        REJ("G@T / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EMETHOD),
        REJ("GET\x01 / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EMETHOD),
        REJ("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EMETHOD),
        REJ(" GET / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET /  HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET /\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET / HTTP/1.10\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_ETARGET),
        REJ("GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_ETARGET),
        REJ("GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_ETARGET),
        REJ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", HTTP1_EVERSION),
        REJ("GET / HTTP/1.2\r\nHost: h\r\n\r\n", HTTP1_EVERSION),
        REJ("GET / HTTP/0.9\r\nHost: h\r\n\r\n", HTTP1_EVERSION),
        REJ("GET / http/1.1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET / HTTP/1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET / HTTP/x.1\r\nHost: h\r\n\r\n", HTTP1_EREQUEST_LINE),
        REJ("GET / HTTP/1.1\rHost: h\r\n\r\n", HTTP1_EBARE_CR),
        REJ("\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_EBARE_CR),
    };
    run_rejects(t, sizeof(t) / sizeof(t[0]), true);
}

static void test_header_rejects(void **state)
{
    (void)state;
    static const struct reject t[] = {
        /* obs-fold, and whitespace before the first field */
        REJ(RL "X-A: 1\r\n  continued\r\n\r\n", HTTP1_EOBS_FOLD),
        REJ(RL "X-A: 1\r\n\tcontinued\r\n\r\n", HTTP1_EOBS_FOLD),
        REJ("GET / HTTP/1.1\r\n Host: h\r\n\r\n", HTTP1_EOBS_FOLD),
        /* whitespace between name and colon */
        REJ(RL "Content-Length : 5\r\n\r\n", HTTP1_EHEADER_SPACE),
        REJ(RL "Transfer-Encoding\t: chunked\r\n\r\n", HTTP1_EHEADER_SPACE),
        /* names */
        REJ(RL ": empty\r\n\r\n", HTTP1_EHEADER_NAME),
        REJ(RL "X(A): 1\r\n\r\n", HTTP1_EHEADER_NAME),
        REJ(RL "X/A: 1\r\n\r\n", HTTP1_EHEADER_NAME),
        REJ(RL "X\x80: 1\r\n\r\n", HTTP1_EHEADER_NAME),
        REJ(RL "NoColon\r\n\r\n", HTTP1_EHEADER_NAME),
        REJ(RL "X\0A: 1\r\n\r\n", HTTP1_EHEADER_NAME),
        /* values */
        REJ(RL "X-A: a\0b\r\n\r\n", HTTP1_EHEADER_VALUE),
        REJ(RL "X-A: a\x01b\r\n\r\n", HTTP1_EHEADER_VALUE),
        REJ(RL "X-A: a\x1b[31m\r\n\r\n", HTTP1_EHEADER_VALUE),
        REJ(RL "X-A: a\x7f\r\n\r\n", HTTP1_EHEADER_VALUE),
        REJ(RL "X-A: a\rb\r\n\r\n", HTTP1_EBARE_CR),
        REJ(RL "X-A: ab\r\r\n\r\n", HTTP1_EBARE_CR),
        REJ(RL "X-A: ab\r\n\r\r\n", HTTP1_EBARE_CR),
    };
    run_rejects(t, sizeof(t) / sizeof(t[0]), true);
}

static void test_framing_rejects(void **state)
{
    (void)state;
    static const struct reject t[] = {
        REJ(RL "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP1_EFRAMING),
        REJ(RL "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", HTTP1_EFRAMING),
        REJ(RL "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", HTTP1_ECONTENT_LENGTHS),
        REJ(RL "Content-Length: abc\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: -1\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: +5\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: 0x10\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: 1 2\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: 5, 5\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length:\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: 9223372036854775808\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Content-Length: 99999999999999999999999\r\n\r\n", HTTP1_ECONTENT_LENGTH),
        REJ(RL "Transfer-Encoding: gzip\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked, gzip\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked, chunked\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked;x=1\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked,\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: ,chunked\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: \"chunked\"\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: chunked\"\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding: xchunked\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ(RL "Transfer-Encoding:\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
    };
    run_rejects(t, sizeof(t) / sizeof(t[0]), true);
}

static void test_host(void **state)
{
    (void)state;
    static const struct reject t[] = {
        REJ("GET / HTTP/1.1\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", HTTP1_EHOST),
        REJ("GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", HTTP1_EHOST),
    };
    run_rejects(t, sizeof(t) / sizeof(t[0]), true);

    assert_true(preq("GET / HTTP/1.0\r\n\r\n") > 0);
    assert_int_equal(req.host.len, 0);
    assert_int_equal(req.flags & HTTP1_F_HOST, 0);
    assert_true(preq("GET / HTTP/1.1\r\nHOST: [::1]:8080\r\n\r\n") > 0);
    assert_view(req.host, "[::1]:8080");
    /* an empty Host is allowed (RFC 9112 3.2: no authority in the target) */
    assert_true(preq("GET / HTTP/1.1\r\nHost:\r\n\r\n") > 0);
    assert_int_equal(req.flags & HTTP1_F_HOST, HTTP1_F_HOST);
    assert_int_equal(req.host.len, 0);
}

/* A head of exactly total bytes: "GET / HTTP/1.1\r\nHost: h\r\nX: aaa...\r\n\r\n". */
static char *big_head(size_t total)
{
    const char *pre = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
    size_t pl = strlen(pre);
    assert_true(total > pl + 4);
    char *m = xmalloc(total);
    memcpy(m, pre, pl);
    memset(m + pl, 'a', total - pl - 4);
    memcpy(m + total - 4, "\r\n\r\n", 4);
    return m;
}

static void test_limits(void **state)
{
    (void)state;
    char *m = big_head(70000);
    assert_int_equal(http1_parse_request(m, 70000, &req), HTTP1_ETOO_LARGE);
    assert_int_equal(http1_parse_request(m, 10000, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(m, HTTP1_MAX_HEAD - 1, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request(m, HTTP1_MAX_HEAD, &req), HTTP1_ETOO_LARGE);
    assert_int_equal(http1_parse_request_ex(m, 70000, 0, 70000, &req), 70000);
    assert_int_equal(http1_parse_request_ex(m, 70000, 0, 69999, &req), HTTP1_ETOO_LARGE);
    assert_int_equal(http1_parse_request_ex(m, 69999, 0, 70000, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request_ex(m, 69999, 69998, 69999, &req), HTTP1_ETOO_LARGE);
    assert_int_equal(http1_error_status(HTTP1_ETOO_LARGE), 431);
    free(m);

    /* a head exactly at the cap is fine, and a long body after a short
     * head is not the parser's business */
    m = big_head(HTTP1_MAX_HEAD);
    assert_int_equal(http1_parse_request(m, HTTP1_MAX_HEAD, &req), HTTP1_MAX_HEAD);
    free(m);
    m = xmalloc(200000);
    memset(m, 'b', 200000);
    memcpy(m, "POST / HTTP/1.1\r\nHost: h\r\n\r\n", 28);
    assert_int_equal(http1_parse_request(m, 200000, &req), 28);
    free(m);

    /* HTTP1_MAX_HEADERS fields, Host included, and one more */
    struct buf b = BUF_INIT;
    buf_puts(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < HTTP1_MAX_HEADERS; i++)
        buf_printf(&b, "X-%d: %d\r\n", i, i);
    buf_puts(&b, "\r\n");
    assert_int_equal(http1_parse_request(b.p, b.len, &req), (int)b.len);
    assert_int_equal(req.num_headers, HTTP1_MAX_HEADERS);
    assert_view(req.headers[HTTP1_MAX_HEADERS - 1].value, "99");
    b.len -= 2;
    buf_puts(&b, "X-Last: 1\r\n\r\n");
    assert_int_equal(http1_parse_request(b.p, b.len, &req), HTTP1_ETOO_MANY_HEADERS);
    assert_int_equal(http1_error_status(HTTP1_ETOO_MANY_HEADERS), 431);
    buf_free(&b);
}

static void test_hint(void **state)
{
    (void)state;
    /* The hint's promise: with the end in sight the full parse runs, and
     * before that a malformed head is only reported once it has ended. */
    const char *m = "GET / HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\nX: y\r\n\r\n";
    size_t len = strlen(m);
    assert_int_equal(http1_parse_request_ex(m, 30, 29, 0, &req), HTTP1_INCOMPLETE);
    assert_int_equal(http1_parse_request_ex(m, 30, 0, 0, &req), HTTP1_EHEADER_SPACE);
    assert_int_equal(http1_parse_request_ex(m, len, len - 1, 0, &req), HTTP1_EHEADER_SPACE);
    /* the end split across calls: LF | CR LF and LF CR | LF */
    const char *g = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t gl = strlen(g);
    assert_int_equal(http1_parse_request_ex(g, gl, gl - 2, 0, &req), (int)gl);
    assert_int_equal(http1_parse_request_ex(g, gl, gl - 1, 0, &req), (int)gl);
    assert_int_equal(http1_parse_request_ex(g, gl - 1, gl - 3, 0, &req), HTTP1_INCOMPLETE);
}

/* ---- responses ---------------------------------------------------------- */

static void test_response(void **state)
{
    (void)state;
    const char *m = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    int n = presp(m);
    assert_int_equal(n, (int)strlen(m) - 5);
    assert_int_equal(resp.minor_version, 1);
    assert_int_equal(resp.status, 200);
    assert_view(resp.reason, "OK");
    assert_int_equal(resp.num_headers, 2);
    struct http1_framing f = http1_response_framing(&resp, false);
    assert_int_equal(f.body, HTTP1_BODY_LENGTH);
    assert_int_equal(f.length, 5);
    assert_true(http1_response_keep_alive(&resp, false));
    /* the same head answering HEAD has no body */
    assert_int_equal(http1_response_framing(&resp, true).body, HTTP1_BODY_NONE);
    assert_true(http1_response_keep_alive(&resp, true));

    assert_true(presp("HTTP/1.1 404 Not Found Here\r\nTransfer-Encoding: chunked\r\n\r\n") > 0);
    assert_int_equal(resp.status, 404);
    assert_view(resp.reason, "Not Found Here");
    assert_int_equal(http1_response_framing(&resp, false).body, HTTP1_BODY_CHUNKED);
    assert_true(http1_response_keep_alive(&resp, false));

    /* no reason phrase, with or without the space */
    assert_true(presp("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n") > 0);
    assert_view(resp.reason, "");
    assert_true(presp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n") > 0);
    assert_view(resp.reason, "");
    assert_true(presp("HTTP/1.1 999 Custom\r\n\r\n") > 0);
    assert_int_equal(resp.status, 999);
    assert_true(presp("HTTP/1.1 200 caf\xc3\xa9\tok\r\n\r\n") > 0);
}

static void test_response_bodies(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        bool head_req;
        enum http1_body body;
        bool keep_alive;
    } t[] = {
        {"HTTP/1.1 200 OK\r\n\r\n", false, HTTP1_BODY_UNTIL_CLOSE, false},
        {"HTTP/1.1 200 OK\r\n\r\n", true, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 204 No Content\r\n\r\n", false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", false, HTTP1_BODY_NONE,
         true},
        {"HTTP/1.1 100 Continue\r\n\r\n", false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
         false, HTTP1_BODY_NONE, true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, HTTP1_BODY_UNTIL_CLOSE,
         false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false,
         HTTP1_BODY_UNTIL_CLOSE, false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, HTTP1_BODY_CHUNKED,
         true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", false,
         HTTP1_BODY_LENGTH, false},
        {"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false, HTTP1_BODY_LENGTH, false},
        {"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n", false,
         HTTP1_BODY_LENGTH, true},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", false, HTTP1_BODY_UNTIL_CLOSE, false},
        {"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n", false, HTTP1_BODY_NONE, true},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (presp(t[i].head) != (int)strlen(t[i].head))
            fail_msg("case %zu: does not parse", i);
        struct http1_framing f = http1_response_framing(&resp, t[i].head_req);
        if (f.body != t[i].body ||
            http1_response_keep_alive(&resp, t[i].head_req) != t[i].keep_alive)
            fail_msg("case %zu: body %d keep-alive %d", i, f.body,
                     http1_response_keep_alive(&resp, t[i].head_req));
    }
}

static void test_response_rejects(void **state)
{
    (void)state;
    static const struct reject t[] = {
        REJ("HTTP/1.1 20 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 2000 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 abc OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 099 Low\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1  200 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1\t200 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 200 O\x01K\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 200 OK\rX: y\r\n\r\n", HTTP1_EBARE_CR),
        REJ("HTTP/2.0 200 OK\r\n\r\n", HTTP1_EVERSION),
        REJ("HTTP/1.1200 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("ICY 200 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("\r\nHTTP/1.1 200 OK\r\n\r\n", HTTP1_ESTATUS_LINE),
        REJ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            HTTP1_ECONTENT_LENGTHS),
        REJ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            HTTP1_EFRAMING),
        REJ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP1_ETRANSFER_ENCODING),
        REJ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            HTTP1_ETRANSFER_ENCODING),
        REJ("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", HTTP1_EOBS_FOLD),
        REJ("HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", HTTP1_EHEADER_SPACE),
    };
    run_rejects(t, sizeof(t) / sizeof(t[0]), false);
    /* responses do not need a Host and may repeat it */
    assert_true(presp("HTTP/1.1 200 OK\r\nHost: a\r\nHost: b/c\r\nContent-Length: 0\r\n\r\n") > 0);
}

static void test_response_bytewise(void **state)
{
    (void)state;
    static const char a[] =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n5\r\nhello";
    feed_response_bytewise(LIT(a), (int)sizeof(a) - 9);
    static const char b[] = "HTTP/1.0 304 Not Modified\nETag: \"x\"\n\n";
    feed_response_bytewise(LIT(b), (int)sizeof(b) - 1);
    static const char c[] = "HTTP/1.1 204\r\n\r\n";
    feed_response_bytewise(LIT(c), (int)sizeof(c) - 1);
}

/* ---- derived facts ------------------------------------------------------ */

static void test_keep_alive(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        bool keep;
    } t[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, Close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: te ,\t keep-alive ,\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (preq(t[i].head) <= 0)
            fail_msg("case %zu: does not parse", i);
        if (http1_request_keep_alive(&req) != t[i].keep)
            fail_msg("case %zu: keep-alive %d", i, !t[i].keep);
    }
}

static void test_upgrade(void **state)
{
    (void)state;
    assert_true(preq("GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                     "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n") > 0);
    assert_true(http1_request_upgrade(&req));
    assert_view(req.upgrade, "websocket");
    assert_true(http1_request_keep_alive(&req));

    assert_true(preq("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\n") > 0);
    assert_false(http1_request_upgrade(&req));
    assert_view(req.upgrade, "h2c");
    assert_true(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n") > 0);
    assert_false(http1_request_upgrade(&req));
    assert_true(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade:\r\n\r\n") > 0);
    assert_false(http1_request_upgrade(&req));
    assert_true(preq("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgraded\r\nUpgrade: a\r\n\r\n") >
                0);
    assert_false(http1_request_upgrade(&req));
    /* RFC 9110 7.8: Upgrade in HTTP/1.0 is ignored */
    assert_true(preq("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n") > 0);
    assert_false(http1_request_upgrade(&req));
}

static void test_expect(void **state)
{
    (void)state;
    assert_true(preq("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                     "Content-Length: 9\r\n\r\n") > 0);
    assert_true(http1_request_expect_continue(&req));
    assert_true(preq("PUT / HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n") > 0);
    assert_false(http1_request_expect_continue(&req));
    assert_true(preq("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n") > 0);
    assert_false(http1_request_expect_continue(&req));
}

static void test_header_get(void **state)
{
    (void)state;
    assert_true(preq("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc\r\nx-request-id: def\r\n"
                     "Accept: */*\r\n\r\n") > 0);
    assert_view(http1_header_get(req.headers, req.num_headers, "x-REQUEST-id"), "abc");
    assert_view(http1_header_get(req.headers, req.num_headers, "accept"), "*/*");
    struct str none = http1_header_get(req.headers, req.num_headers, "X-Request");
    assert_null(none.p);
    assert_int_equal(none.len, 0);
    none = http1_header_get(req.headers, req.num_headers, "");
    assert_null(none.p);
    none = http1_header_get(NULL, 0, "Host");
    assert_null(none.p);
}

static void test_token_list(void **state)
{
    (void)state;
    assert_true(http1_token_list_has(STR_LIT("Upgrade"), "upgrade"));
    assert_true(http1_token_list_has(STR_LIT("keep-alive, Upgrade"), "upgrade"));
    assert_true(http1_token_list_has(STR_LIT(" a ,\tb\t, c "), "b"));
    assert_true(http1_token_list_has(STR_LIT(",,c,"), "c"));
    assert_false(http1_token_list_has(STR_LIT("upgraded"), "upgrade"));
    assert_false(http1_token_list_has(STR_LIT("up grade"), "upgrade"));
    assert_false(http1_token_list_has(STR_LIT(""), "upgrade"));
    assert_false(http1_token_list_has(STR_LIT(", ,"), ""));
    assert_false(http1_token_list_has((struct str){NULL, 0}, "x"));
}

static void test_errors(void **state)
{
    (void)state;
    const char *seen[32];
    int n = 0;
    for (int code = HTTP1_ETRAILER; code <= HTTP1_EREQUEST_LINE; code++) {
        const char *s = http1_strerror(code);
        assert_non_null(s);
        assert_string_not_equal(s, "malformed HTTP message");
        for (int i = 0; i < n; i++)
            assert_string_not_equal(s, seen[i]);
        seen[n++] = s;
        int st = http1_error_status(code);
        assert_true(st == 400 || st == 431 || st == 505);
    }
    assert_int_equal(n, 20);
    assert_string_equal(http1_strerror(-1), "malformed HTTP message");
    assert_string_equal(http1_strerror(HTTP1_EOBS_FOLD), "obsolete line folding in header");
    assert_int_equal(http1_error_status(HTTP1_EVERSION), 505);
    assert_int_equal(http1_error_status(HTTP1_EOBS_FOLD), 400);
    assert_int_equal(HTTP1_INCOMPLETE, -EAGAIN);
}

/* ---- chunked ------------------------------------------------------------ */

static const char chunked_body[] = "4;name=value\r\nWiki\r\n"
                                   "5\r\npedia\r\n"
                                   "e ; a=1;b=\"x y\"\r\n in\r\n\r\nchunks.\r\n"
                                   "0\r\n"
                                   "Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
                                   "X-Sum: 1\r\n"
                                   "\r\n"
                                   "GET /next HTTP/1.1\r\n";
static const char chunked_data[] = "Wikipedia in\r\n\r\nchunks.";
static const char chunked_rest[] = "GET /next HTTP/1.1\r\n";

/* Decodes body[0..n) fed in pieces ending at cuts[]; each piece sits in an
 * exact-size heap buffer and is decoded in place. Data and the bytes after
 * the body are appended to data and rest. Returns the last result. */
static int decode_split(const char *body, size_t n, const size_t *cuts, size_t ncuts,
                        struct buf *data, struct buf *rest)
{
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t start = 0;
    int r = HTTP1_INCOMPLETE;
    bool done = false;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        size_t len = end - start, out = len, left;
        char *piece = xmalloc(len);
        memcpy(piece, body + start, len);
        if (done) {
            buf_append(rest, piece, len);
        } else {
            r = http1_chunked_decode(&c, piece, &out, &left);
            buf_append(data, piece, out);
            if (r == 0) {
                done = true;
                buf_append(rest, piece + out, left);
            }
        }
        free(piece);
        start = end;
        if (r != 0 && r != HTTP1_INCOMPLETE)
            return r;
    }
    if (done)
        assert_int_equal(c.total, data->len);
    return r;
}

static void assert_buf(const struct buf *b, const char *want)
{
    size_t n = strlen(want);
    if (b->len != n || (n && memcmp(b->p, want, n) != 0))
        fail_msg("got \"%.*s\" want \"%s\"", (int)b->len, b->p ? b->p : "", want);
}

static void test_chunked_whole(void **state)
{
    (void)state;
    char m[sizeof(chunked_body)];
    memcpy(m, chunked_body, sizeof(m));
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t len = sizeof(m) - 1, rest = 99;
    assert_int_equal(http1_chunked_decode(&c, m, &len, &rest), 0);
    assert_int_equal(len, strlen(chunked_data));
    assert_memory_equal(m, chunked_data, len);
    assert_int_equal(rest, strlen(chunked_rest));
    assert_memory_equal(m + len, chunked_rest, rest);
    assert_int_equal(c.total, strlen(chunked_data));
    /* after the end, everything is the next message's */
    char more[] = "abc";
    len = 3;
    assert_int_equal(http1_chunked_decode(&c, more, &len, &rest), 0);
    assert_int_equal(len, 0);
    assert_int_equal(rest, 3);
    assert_string_equal(more, "abc");

    /* the empty body */
    char e[] = "0\r\n\r\n";
    http1_chunked_init(&c);
    len = 5;
    assert_int_equal(http1_chunked_decode(&c, e, &len, &rest), 0);
    assert_int_equal(len, 0);
    assert_int_equal(rest, 0);
    /* upper-case hex and leading zeros */
    char h[] = "0000A\r\n0123456789\r\n00\r\n\r\n";
    http1_chunked_init(&c);
    len = strlen(h);
    assert_int_equal(http1_chunked_decode(&c, h, &len, &rest), 0);
    assert_int_equal(len, 10);
    assert_memory_equal(h, "0123456789", 10);
}

static void test_chunked_splits(void **state)
{
    (void)state;
    size_t n = sizeof(chunked_body) - 1;
    struct buf data = BUF_INIT, rest = BUF_INIT;
    /* every pair of split points, so every byte boundary is a boundary
     * between calls, and every state sees an empty and a one-byte piece */
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            size_t cuts[2] = {i, j};
            buf_reset(&data);
            buf_reset(&rest);
            int r = decode_split(chunked_body, n, cuts, 2, &data, &rest);
            if (r != 0)
                fail_msg("split %zu,%zu: %d", i, j, r);
            assert_buf(&data, chunked_data);
            assert_buf(&rest, chunked_rest);
        }
    }
    /* one byte at a time */
    size_t cuts[sizeof(chunked_body)];
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    buf_reset(&data);
    buf_reset(&rest);
    assert_int_equal(decode_split(chunked_body, n, cuts, n - 1, &data, &rest), 0);
    assert_buf(&data, chunked_data);
    assert_buf(&rest, chunked_rest);
    buf_free(&data);
    buf_free(&rest);
}

static void test_chunked_scan(void **state)
{
    (void)state;
    size_t n = sizeof(chunked_body) - 1, want = n - strlen(chunked_rest);
    for (size_t i = 0; i <= n; i++) {
        struct http1_chunked c;
        http1_chunked_init(&c);
        size_t rest = 99, body = 0;
        int r = http1_chunked_scan(&c, chunked_body, i, &rest);
        if (i < want) {
            assert_int_equal(r, HTTP1_INCOMPLETE);
            assert_int_equal(rest, 0);
            body = i;
            r = http1_chunked_scan(&c, chunked_body + i, n - i, &rest);
            body += n - i - rest;
        } else {
            body = i - rest;
        }
        assert_int_equal(r, 0);
        assert_int_equal(body, want);
        assert_int_equal(c.total, strlen(chunked_data));
    }
}

static void test_chunked_rejects(void **state)
{
    (void)state;
    static const struct reject t[] = {
        REJ("\r\n", HTTP1_ECHUNK_SIZE),
        REJ("x\r\n", HTTP1_ECHUNK_SIZE),
        REJ(" 5\r\nhello\r\n0\r\n\r\n", HTTP1_ECHUNK_SIZE),
        REJ("-5\r\n", HTTP1_ECHUNK_SIZE),
        REJ("0x5\r\n", HTTP1_ECHUNK_SIZE),
        REJ("5g\r\n", HTTP1_ECHUNK_SIZE),
        REJ("1000000000000000\r\n", HTTP1_ECHUNK_SIZE),
        REJ("0000000000000001\r\n", HTTP1_ECHUNK_SIZE),
        REJ("ffffffffffffffffff\r\n", HTTP1_ECHUNK_SIZE),
        REJ("5\nhello\r\n", HTTP1_ECHUNK_SIZE),
        REJ("5\r\rhello\r\n", HTTP1_ECHUNK),
        REJ("5 x\r\nhello\r\n", HTTP1_ECHUNK),
        REJ("5;a\x01\r\nhello\r\n", HTTP1_ECHUNK),
        REJ("5;a\nb\r\nhello\r\n", HTTP1_ECHUNK),
        REJ("5\r\nhelloX\r\n", HTTP1_ECHUNK),
        REJ("5\r\nhello\n0\r\n\r\n", HTTP1_ECHUNK),
        REJ("5\r\nhello\r\r0\r\n\r\n", HTTP1_ECHUNK),
        REJ("5\r\nhello\r\n\r\n", HTTP1_ECHUNK_SIZE),
        REJ("0\r\n\n", HTTP1_ETRAILER),
        REJ("0\r\n\rx", HTTP1_ETRAILER),
        REJ("0\r\n folded: x\r\n\r\n", HTTP1_ETRAILER),
        REJ("0\r\n: x\r\n\r\n", HTTP1_ETRAILER),
        REJ("0\r\nA B: x\r\n\r\n", HTTP1_ETRAILER),
        REJ("0\r\nA: x\0\r\n\r\n", HTTP1_ETRAILER),
        REJ("0\r\nA: x\n\r\n", HTTP1_ETRAILER),
        REJ("0\r\nA: x\r\r\n", HTTP1_ETRAILER),
        REJ("0\r\nNoColon\r\n\r\n", HTTP1_ETRAILER),
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct http1_chunked c;
        http1_chunked_init(&c);
        char *m = xmalloc(t[i].len);
        memcpy(m, t[i].msg, t[i].len);
        size_t len = t[i].len, rest;
        int r = http1_chunked_decode(&c, m, &len, &rest);
        if (r != t[i].code)
            fail_msg("case %zu: got %d want %d", i, r, t[i].code);
        /* errors stick */
        len = 0;
        assert_int_equal(http1_chunked_decode(&c, m, &len, &rest), t[i].code);
        http1_chunked_init(&c);
        assert_int_equal(http1_chunked_scan(&c, t[i].msg, t[i].len, &rest), t[i].code);
        free(m);
    }
}

static void test_chunked_limits(void **state)
{
    (void)state;
    struct http1_chunked c;
    size_t rest;
    /* the most hex digits there may be, and the size they make */
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, LIT("fffffffffffffff\r\nabc"), &rest),
                     HTTP1_INCOMPLETE);
    assert_int_equal(c.total, 3);
    assert_int_equal(c.remaining, 0xfffffffffffffffull - 3);
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, LIT("000000000000001\r\na\r\n0\r\n\r\n"), &rest), 0);

    /* extensions up to the cap, then one byte more */
    struct buf b = BUF_INIT;
    buf_puts(&b, "1;");
    for (int i = 1; i < HTTP1_CHUNK_EXT_MAX; i++)
        buf_putc(&b, 'e');
    buf_puts(&b, "\r\nx\r\n0\r\n\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, b.p, b.len, &rest), 0);
    buf_reset(&b);
    buf_puts(&b, "1;");
    for (int i = 0; i < HTTP1_CHUNK_EXT_MAX; i++)
        buf_putc(&b, 'e');
    buf_puts(&b, "\r\nx\r\n0\r\n\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, b.p, b.len, &rest), HTTP1_ECHUNK);

    /* trailers up to HTTP1_MAX_TRAILER, and past it */
    buf_reset(&b);
    buf_puts(&b, "0\r\n");
    for (int i = 1; i < HTTP1_MAX_TRAILER / 16; i++)
        buf_puts(&b, "X-Trailer: abc\r\n");
    buf_puts(&b, "\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, b.p, b.len, &rest), 0);
    buf_reset(&b);
    buf_puts(&b, "0\r\n");
    for (int i = 0; i < HTTP1_MAX_TRAILER / 16; i++)
        buf_puts(&b, "X-Trailer: abc\r\n");
    buf_puts(&b, "\r\n");
    http1_chunked_init(&c);
    assert_int_equal(http1_chunked_scan(&c, b.p, b.len, &rest), HTTP1_ETRAILER);
    buf_free(&b);
}

/* A request followed by its chunked body and a pipelined request: the
 * way a server would use the two halves together. */
static void test_request_then_body(void **state)
{
    (void)state;
    char m[] = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t len = sizeof(m) - 1;
    int n = http1_parse_request(m, len, &req);
    assert_true(n > 0);
    assert_int_equal(http1_request_framing(&req).body, HTTP1_BODY_CHUNKED);
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t body = len - (size_t)n, rest;
    assert_int_equal(http1_chunked_decode(&c, m + n, &body, &rest), 0);
    assert_int_equal(body, 3);
    assert_memory_equal(m + n, "abc", 3);
    assert_int_equal(http1_parse_request(m + n + body, rest, &req), (int)rest);
    assert_view(req.path, "/after");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_post_chunked),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_bytewise),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_lf_only),
        cmocka_unit_test(test_request_line_rejects),
        cmocka_unit_test(test_header_rejects),
        cmocka_unit_test(test_framing_rejects),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_hint),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_response_bodies),
        cmocka_unit_test(test_response_rejects),
        cmocka_unit_test(test_response_bytewise),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_header_get),
        cmocka_unit_test(test_token_list),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_chunked_whole),
        cmocka_unit_test(test_chunked_splits),
        cmocka_unit_test(test_chunked_scan),
        cmocka_unit_test(test_chunked_rejects),
        cmocka_unit_test(test_chunked_limits),
        cmocka_unit_test(test_request_then_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
