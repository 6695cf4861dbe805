// fuzz-sources: src/lib/http1.c
/* libFuzzer target for src/lib/http1.c: request and response heads, the
 * chunked decoder, and the promises the header makes about them. Beyond
 * "no crash, no sanitizer report", it checks that parsed views stay inside
 * the head, that feeding a message in pieces (with and without the
 * last_len hint, with a smaller cap) agrees with parsing it whole, and
 * that the chunked decoder gives the same data and the same leftover
 * however its input is split, in place or in scan mode. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/http1.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http1: check failed: %s (line %d)\n", #cond, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static struct http1_request req_a, req_b;
static struct http1_response resp_a, resp_b;

static uint64_t rng;

static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void seed(const uint8_t *d, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 1099511628211ull;
    rng = h | 1;
}

static void check_view(struct str v, const char *base, size_t head)
{
    if (v.len)
        CHECK(v.p >= base && v.p + v.len <= base + head);
}

static void check_headers(const struct http1_header *h, size_t n, const char *base, size_t head)
{
    CHECK(n <= HTTP1_MAX_HEADERS);
    for (size_t i = 0; i < n; i++) {
        check_view(h[i].name, base, head);
        check_view(h[i].value, base, head);
        CHECK(h[i].name.len > 0);
        CHECK(!memchr(h[i].name.p, ':', h[i].name.len));
        for (size_t j = 0; j < h[i].value.len; j++) {
            unsigned char c = (unsigned char)h[i].value.p[j];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h[i].value.len) {
            CHECK(h[i].value.p[0] != ' ' && h[i].value.p[0] != '\t');
            CHECK(h[i].value.p[h[i].value.len - 1] != ' ');
        }
        /* lookup finds the first field of that name */
        char name[64];
        if (h[i].name.len < sizeof(name)) {
            memcpy(name, h[i].name.p, h[i].name.len);
            name[h[i].name.len] = 0;
            struct str v = http1_header_get(h, n, name);
            CHECK(v.p != NULL && v.p <= h[i].value.p);
        }
        (void)http1_token_list_has(h[i].value, "close");
    }
}

static void check_flags(unsigned flags)
{
    if (flags & HTTP1_F_CHUNKED)
        CHECK(flags & HTTP1_F_TRANSFER_ENCODING);
    CHECK(!((flags & HTTP1_F_TRANSFER_ENCODING) && (flags & HTTP1_F_CONTENT_LENGTH)));
}

static void check_request(const struct http1_request *r, const char *base, size_t head)
{
    check_view(r->method, base, head);
    check_view(r->target, base, head);
    check_view(r->path, base, head);
    check_view(r->query, base, head);
    check_view(r->host, base, head);
    check_view(r->upgrade, base, head);
    CHECK(r->method.len > 0 && r->target.len > 0);
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(r->content_length <= INT64_MAX);
    check_flags(r->flags);
    if (r->flags & HTTP1_F_TRANSFER_ENCODING)
        CHECK((r->flags & HTTP1_F_CHUNKED) && r->minor_version == 1);
    if (r->minor_version == 1)
        CHECK(r->flags & HTTP1_F_HOST);
    check_headers(r->headers, r->num_headers, base, head);
    struct http1_framing f = http1_request_framing(r);
    CHECK(f.body != HTTP1_BODY_UNTIL_CLOSE);
    (void)http1_request_keep_alive(r);
    (void)http1_request_upgrade(r);
    (void)http1_request_expect_continue(r);
}

static void check_response(const struct http1_response *r, const char *base, size_t head)
{
    check_view(r->reason, base, head);
    check_view(r->upgrade, base, head);
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(r->status >= 100 && r->status <= 999);
    check_flags(r->flags);
    check_headers(r->headers, r->num_headers, base, head);
    for (int h = 0; h < 2; h++) {
        struct http1_framing f = http1_response_framing(r, h);
        if (f.body == HTTP1_BODY_UNTIL_CLOSE)
            CHECK(!http1_response_keep_alive(r, h));
    }
}

static bool same_view(struct str a, const char *ba, struct str b, const char *bb)
{
    return a.len == b.len && (a.len == 0 || a.p - ba == b.p - bb);
}

static bool same_headers(const struct http1_header *a, size_t na, const char *ba,
                         const struct http1_header *b, size_t nb, const char *bb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!same_view(a[i].name, ba, b[i].name, bb) || !same_view(a[i].value, ba, b[i].value, bb))
            return false;
    return true;
}

static bool same_request(const struct http1_request *a, const char *ba,
                         const struct http1_request *b, const char *bb)
{
    return same_view(a->method, ba, b->method, bb) && same_view(a->target, ba, b->target, bb) &&
           same_view(a->path, ba, b->path, bb) && same_view(a->query, ba, b->query, bb) &&
           same_view(a->host, ba, b->host, bb) && same_view(a->upgrade, ba, b->upgrade, bb) &&
           a->minor_version == b->minor_version && a->flags == b->flags &&
           a->content_length == b->content_length &&
           same_headers(a->headers, a->num_headers, ba, b->headers, b->num_headers, bb);
}

static bool same_response(const struct http1_response *a, const char *ba,
                          const struct http1_response *b, const char *bb)
{
    return a->status == b->status && a->minor_version == b->minor_version &&
           same_view(a->reason, ba, b->reason, bb) && same_view(a->upgrade, ba, b->upgrade, bb) &&
           a->flags == b->flags && a->content_length == b->content_length &&
           same_headers(a->headers, a->num_headers, ba, b->headers, b->num_headers, bb);
}

/* Parse functions behind one shape, so requests and responses share the
 * consistency checks. */
struct kind {
    int (*parse)(const char *buf, size_t len, size_t last_len, size_t max_head, void *out);
    bool (*same)(const void *a, const char *ba, const void *b, const char *bb);
    void *a, *b;
};

static int parse_req(const char *buf, size_t len, size_t last_len, size_t max_head, void *out)
{
    return http1_parse_request_ex(buf, len, last_len, max_head, out);
}
static int parse_resp(const char *buf, size_t len, size_t last_len, size_t max_head, void *out)
{
    return http1_parse_response_ex(buf, len, last_len, max_head, out);
}
static bool same_req(const void *a, const char *ba, const void *b, const char *bb)
{
    return same_request(a, ba, b, bb);
}
static bool same_resp(const void *a, const char *ba, const void *b, const char *bb)
{
    return same_response(a, ba, b, bb);
}

/* The whole-buffer result is `whole` (parsed into k->a); checks a prefix. */
static void check_prefix(const struct kind *k, const char *buf, int whole, size_t pre)
{
    char *copy = malloc(pre ? pre : 1);
    memcpy(copy, buf, pre);
    int r = k->parse(copy, pre, 0, 0, k->b);
    if (whole > 0) {
        if (pre < (size_t)whole)
            CHECK(r == HTTP1_INCOMPLETE);
        else
            CHECK(r == whole && k->same(k->a, buf, k->b, copy));
    } else if (whole == HTTP1_INCOMPLETE) {
        CHECK(r == HTTP1_INCOMPLETE);
    } else if (whole != HTTP1_ETOO_LARGE) {
        CHECK(r == HTTP1_INCOMPLETE || r == whole);
    }
    free(copy);
}

static void check_head(const struct kind *k, const char *buf, size_t len)
{
    int whole = k->parse(buf, len, 0, 0, k->a);
    CHECK(whole == HTTP1_INCOMPLETE || (whole >= -1119 && whole <= -1100) || whole > 0);
    CHECK(http1_strerror(whole) != NULL);
    if (whole > 0)
        CHECK((size_t)whole <= len && whole <= HTTP1_MAX_HEAD);

    /* prefixes without the hint: all of them for small inputs */
    if (len <= 256) {
        for (size_t pre = 0; pre < len; pre++)
            check_prefix(k, buf, whole, pre);
    } else {
        for (int i = 0; i < 16; i++)
            check_prefix(k, buf, whole, next_rand() % len);
        if (whole > 0)
            check_prefix(k, buf, whole, (size_t)whole - 1);
    }

    /* one byte at a time with the hint: incomplete until the head ends */
    int r = HTTP1_INCOMPLETE;
    size_t pre;
    for (pre = 1; pre <= len && r == HTTP1_INCOMPLETE; pre++)
        r = k->parse(buf, pre, pre - 1, 0, k->b);
    if (whole > 0) {
        CHECK(r == whole && pre - 1 == (size_t)whole && k->same(k->a, buf, k->b, buf));
    } else if (whole == HTTP1_INCOMPLETE) {
        CHECK(r == HTTP1_INCOMPLETE);
    } else if (whole != HTTP1_ETOO_LARGE) {
        CHECK(r == whole || r == HTTP1_INCOMPLETE);
    }
    /* random read sizes with the hint */
    size_t last = 0;
    r = HTTP1_INCOMPLETE;
    while (last < len && r == HTTP1_INCOMPLETE) {
        size_t n = last + 1 + next_rand() % 64;
        n = n > len ? len : n;
        r = k->parse(buf, n, last, 0, k->b);
        last = n;
    }
    if (whole > 0)
        CHECK(r == whole && k->same(k->a, buf, k->b, buf));
    else if (whole == HTTP1_INCOMPLETE)
        CHECK(r == HTTP1_INCOMPLETE);

    /* a smaller cap */
    if (len > 0) {
        size_t cap = 1 + next_rand() % len;
        r = k->parse(buf, len, 0, cap, k->b);
        if (whole > 0 && (size_t)whole <= cap)
            CHECK(r == whole);
        else if (whole > 0 || whole == HTTP1_INCOMPLETE)
            CHECK(r == HTTP1_ETOO_LARGE);
        else
            CHECK(r == whole || r == HTTP1_ETOO_LARGE);
    }
    /* parse again: the result is the validation */
    k->parse(buf, len, 0, 0, k->a);
}

/* Decodes src in pieces of random size, each in an exact-size heap copy. */
static int decode_pieces(const char *src, size_t len, char *data, size_t *data_len, char *rest,
                         size_t *rest_len)
{
    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t at = 0, dl = 0, rl = 0;
    int r = HTTP1_INCOMPLETE;
    do {
        size_t n = (next_rand() & 3) == 0 ? 0 : 1 + next_rand() % 24;
        if (n > len - at)
            n = len - at;
        char *piece = malloc(n ? n : 1);
        memcpy(piece, src + at, n);
        if (r == 0) {
            memcpy(rest + rl, piece, n);
            rl += n;
        } else {
            size_t out = n, left;
            r = http1_chunked_decode(&c, piece, &out, &left);
            CHECK(out <= n);
            memcpy(data + dl, piece, out);
            dl += out;
            if (r == 0) {
                CHECK(out + left <= n);
                memcpy(rest + rl, piece + out, left);
                rl += left;
            }
        }
        free(piece);
        at += n;
    } while (at < len && (r == 0 || r == HTTP1_INCOMPLETE));
    if (r == 0 || r == HTTP1_INCOMPLETE)
        CHECK(c.total == dl);
    *data_len = dl;
    *rest_len = rl;
    return r;
}

static void check_chunked(const char *src, size_t len)
{
    char *whole = malloc(len ? len : 1);
    char *data = malloc(len ? len : 1), *rest = malloc(len ? len : 1);
    memcpy(whole, src, len);

    struct http1_chunked c;
    http1_chunked_init(&c);
    size_t out = len, left = 0;
    int r = http1_chunked_decode(&c, whole, &out, &left);
    CHECK(r == 0 || r == HTTP1_INCOMPLETE || (r >= -1119 && r <= -1100));
    CHECK(out <= len);
    if (r == 0) {
        CHECK(out + left <= len);
        CHECK(memcmp(whole + out, src + len - left, left) == 0);
    }

    size_t dl, rl;
    int r2 = decode_pieces(src, len, data, &dl, rest, &rl);
    CHECK(r2 == r);
    if (r == 0 || r == HTTP1_INCOMPLETE) {
        CHECK(dl == out && memcmp(data, whole, out) == 0);
        CHECK(rl == left && memcmp(rest, whole + out, left) == 0);
    }

    size_t srest = 0;
    http1_chunked_init(&c);
    int r3 = http1_chunked_scan(&c, src, len, &srest);
    CHECK(r3 == r);
    if (r == 0)
        CHECK(srest == left);
    if (r == 0 || r == HTTP1_INCOMPLETE)
        CHECK(c.total == out);
    free(whole);
    free(data);
    free(rest);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t size)
{
    const char *buf = (const char *)d;
    seed(d, size);

    static const struct kind req = {parse_req, same_req, &req_a, &req_b};
    static const struct kind resp = {parse_resp, same_resp, &resp_a, &resp_b};
    check_head(&req, buf, size);
    int n = http1_parse_request(buf, size, &req_a);
    if (n > 0) {
        check_request(&req_a, buf, (size_t)n);
        if (http1_request_framing(&req_a).body == HTTP1_BODY_CHUNKED)
            check_chunked(buf + n, size - (size_t)n);
    }
    check_head(&resp, buf, size);
    n = http1_parse_response(buf, size, &resp_a);
    if (n > 0) {
        check_response(&resp_a, buf, (size_t)n);
        if (http1_response_framing(&resp_a, false).body == HTTP1_BODY_CHUNKED)
            check_chunked(buf + n, size - (size_t)n);
    }
    check_chunked(buf, size);
    return 0;
}
