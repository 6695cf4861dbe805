/* head: writing message heads for the proxy (proxy_int.h): the output
 * buffer, header field kinds, reason phrases, request ids. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "router/proxy_int.h"

#define REQUEST_ID_MAX 200

/* ---- output heads ------------------------------------------------------ */

void ob_init(struct ob *o)
{
    o->p = rbuf_get();
    o->len = 0;
    o->cap = RBUF_SIZE;
    o->heap = false;
}

void ob_need(struct ob *o, size_t n)
{
    if (o->len + n <= o->cap)
        return;
    size_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n;
    if (o->heap) {
        o->p = xrealloc(o->p, cap);
    } else {
        char *p = xmalloc(cap);
        memcpy(p, o->p, o->len);
        rbuf_put(o->p);
        o->p = p;
        o->heap = true;
    }
    o->cap = cap;
}

void ob_put(struct ob *o, const void *p, size_t n)
{
    ob_need(o, n);
    memcpy(o->p + o->len, p, n);
    o->len += n;
}

void ob_str(struct ob *o, struct str s)
{
    ob_put(o, s.p, s.len);
}

void ob_u64(struct ob *o, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ob_put(o, tmp + i, sizeof(tmp) - i);
}

void ob_field(struct ob *o, const struct http1_header *h)
{
    ob_need(o, h->name.len + h->value.len + 4);
    char *p = o->p + o->len;
    memcpy(p, h->name.p, h->name.len);
    p += h->name.len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, h->value.p, h->value.len);
    p += h->value.len;
    *p++ = '\r';
    *p++ = '\n';
    o->len = (size_t)(p - o->p);
}

/* Writes o to s and frees it; cb(ud) runs for the last piece. A head past
 * RBUF_SIZE (rare: huge fields) goes in rbuf-sized pieces. */
int ob_write(struct ob *o, struct rstream *s, rstream_write_cb cb, void *ud)
{
    if (!o->heap)
        return rstream_write_buf(s, o->p, o->len, cb, ud);
    int r = 0;
    for (size_t off = 0; off < o->len && r == 0;) {
        size_t k = o->len - off < RBUF_SIZE ? o->len - off : RBUF_SIZE;
        char *b = rbuf_get();
        memcpy(b, o->p + off, k);
        off += k;
        r = rstream_write_buf(s, b, k, off == o->len ? cb : NULL, ud);
    }
    free(o->p);
    return r;
}

/* Writes bytes (not an rbuf) to s in rbuf copies. */
int write_copy(struct rstream *s, const char *p, size_t n, rstream_write_cb cb, void *ud)
{
    int r = 0;
    while (n > 0 && r == 0) {
        size_t k = n < RBUF_SIZE ? n : RBUF_SIZE;
        char *b = rbuf_get();
        memcpy(b, p, k);
        p += k;
        n -= k;
        r = rstream_write_buf(s, b, k, n == 0 ? cb : NULL, ud);
    }
    return r;
}

/* ---- header fields ------------------------------------------------------ */

/* Sorts a field name by length first, so most fields cost one compare. */
enum field field_kind(struct str n)
{
    switch (n.len) {
    case 2: return NAME_IS(n, "te") ? F_HOP : F_OTHER;
    case 7:
        if (NAME_IS(n, "upgrade"))
            return F_UPGRADE;
        return NAME_IS(n, "trailer") ? F_HOP : F_OTHER;
    case 10:
        if (NAME_IS(n, "connection"))
            return F_CONNECTION;
        return NAME_IS(n, "keep-alive") ? F_HOP : F_OTHER;
    case 12: return NAME_IS(n, "x-request-id") ? F_REQUEST_ID : F_OTHER;
    case 14: return NAME_IS(n, "content-length") ? F_CONTENT_LENGTH : F_OTHER;
    case 15:
        if (NAME_IS(n, "x-forwarded-for"))
            return F_XFF;
        return NAME_IS(n, "x-request-start") ? F_XF_OTHER : F_OTHER;
    case 16:
        if (NAME_IS(n, "proxy-connection"))
            return F_HOP;
        return NAME_IS(n, "x-forwarded-port") ? F_XF_OTHER : F_OTHER;
    case 17:
        if (NAME_IS(n, "transfer-encoding"))
            return F_HOP;
        return NAME_IS(n, "x-forwarded-proto") ? F_XF_OTHER : F_OTHER;
    default: return F_OTHER;
    }
}

void conn_names_get(const struct http1_header *h, size_t n, struct conn_names *out)
{
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name.len != 10 || field_kind(h[i].name) != F_CONNECTION)
            continue;
        const char *p = h[i].value.p, *end = p + h[i].value.len;
        while (p < end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end;
            const char *a = p, *b = e;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                b--;
            struct str t = {a, (size_t)(b - a)};
            if (t.len && !NAME_IS(t, "close") && !NAME_IS(t, "keep-alive") &&
                !NAME_IS(t, "upgrade") && !NAME_IS(t, "host") && out->n < CONN_NAMES_MAX)
                out->v[out->n++] = t;
            p = comma ? comma + 1 : end;
        }
    }
}

bool conn_names_has(const struct conn_names *c, struct str name)
{
    for (size_t i = 0; i < c->n; i++)
        if (name_is(name, c->v[i].p, c->v[i].len))
            return true;
    return false;
}

bool request_id_ok(struct str v)
{
    if (v.len == 0 || v.len > REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < v.len; i++)
        if ((unsigned char)v.p[i] < 0x20 || (unsigned char)v.p[i] > 0x7e)
            return false;
    return true;
}

/* A version 4 UUID like uuid_new's, from randomness read 4 KiB at a
 * time: one getrandom per 256 requests rather than one each. */
void request_id_new(struct hworker *hw, char out[40])
{
    if (hw->rnd_pos == 0 || hw->rnd_pos + 16 > sizeof(hw->rnd)) {
        size_t got = 0;
        while (got < sizeof(hw->rnd)) {
            ssize_t n = getrandom(hw->rnd + got, sizeof(hw->rnd) - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                abort();
            got += (size_t)n;
        }
        hw->rnd_pos = 0;
    }
    uint8_t *b = hw->rnd + hw->rnd_pos;
    hw->rnd_pos += 16;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

const char *reason_of(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

void count_response(struct hworker *hw, int status)
{
    int cls = status / 100 - 1;
    if (cls >= 0 && cls < 5)
        STAT_ADD(hw, responses[cls], 1);
}
