/* head: writing message heads for the proxy (proxy_int.h): the output
 * buffer, header field kinds, reason phrases, request ids. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "router/proxy_int.h"

#define REQUEST_ID_MAX 200

/* ---- output heads ------------------------------------------------------ */

/* A head is a few hundred bytes: it is written from a small block rather
 * than a 64 KiB rbuf, so a busy worker's heads come from a free list of
 * their own instead of going through malloc once the rbuf cache runs dry.
 * The block carries what its write callback needs. */
#define OB_SMALL 4096
#define OB_CACHE 512

struct ob_block {
    struct ob_block *next; /* on the free list */
    rstream_write_cb cb;
    void *ud;
    size_t cap;
    uv_buf_t ub;
    char p[];
};

static __thread struct ob_block *ob_free;
static __thread unsigned ob_nfree;

static size_t ob_small_cap(void)
{
    return OB_SMALL - sizeof(struct ob_block);
}

static struct ob_block *block_new(size_t cap)
{
    struct ob_block *b;
    if (cap == ob_small_cap() && ob_free) {
        b = ob_free;
        ob_free = b->next;
        ob_nfree--;
    } else {
        b = xmalloc(sizeof(*b) + cap);
        b->cap = cap;
    }
    return b;
}

static void block_free(struct ob_block *b)
{
    if (b->cap != ob_small_cap() || ob_nfree >= OB_CACHE) {
        free(b);
        return;
    }
    b->next = ob_free;
    ob_free = b;
    ob_nfree++;
}

void ob_thread_cleanup(void)
{
    while (ob_free) {
        struct ob_block *b = ob_free;
        ob_free = b->next;
        free(b);
    }
    ob_nfree = 0;
}

void ob_init(struct ob *o)
{
    o->blk = block_new(ob_small_cap());
    o->p = o->blk->p;
    o->len = 0;
    o->cap = o->blk->cap;
}

void ob_grow(struct ob *o, size_t n)
{
    size_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n;
    struct ob_block *b = block_new(cap);
    memcpy(b->p, o->p, o->len);
    block_free(o->blk);
    o->blk = b;
    o->p = b->p;
    o->cap = cap;
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

static void ob_written(struct rstream *s, int status, void *ud)
{
    struct ob_block *b = ud;
    rstream_write_cb cb = b->cb;
    void *cb_ud = b->ud;
    block_free(b);
    if (cb)
        cb(s, status, cb_ud);
}

int ob_write(struct ob *o, struct rstream *s, rstream_write_cb cb, void *ud)
{
    struct ob_block *b = o->blk;
    o->blk = NULL;
    b->cb = cb;
    b->ud = ud;
    b->ub = uv_buf_init(b->p, (unsigned)o->len);
    int r = rstream_write(s, &b->ub, 1, ob_written, b);
    if (r < 0)
        block_free(b);
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

/* Sorts a field name by length first and its first letter second, so
 * most fields cost no string compare at all. */
#define IS(n, lit) (((n).p[0] | 0x20) == (lit)[0] && NAME_IS(n, lit))
enum field field_kind(struct str n)
{
    switch (n.len) {
    case 2: return IS(n, "te") ? F_HOP : F_OTHER;
    case 4: return IS(n, "host") ? F_HOST : F_OTHER;
    case 7:
        if (IS(n, "upgrade"))
            return F_UPGRADE;
        return IS(n, "trailer") ? F_HOP : F_OTHER;
    case 10:
        if (IS(n, "connection"))
            return F_CONNECTION;
        return IS(n, "keep-alive") ? F_HOP : F_OTHER;
    case 12: return IS(n, "x-request-id") ? F_REQUEST_ID : F_OTHER;
    case 14: return IS(n, "content-length") ? F_CONTENT_LENGTH : F_OTHER;
    case 15:
        if (IS(n, "x-forwarded-for"))
            return F_XFF;
        return IS(n, "x-request-start") ? F_XF_OTHER : F_OTHER;
    case 16:
        if (IS(n, "proxy-connection"))
            return F_HOP;
        return IS(n, "x-forwarded-port") ? F_XF_OTHER : F_OTHER;
    case 17:
        if (IS(n, "transfer-encoding"))
            return F_HOP;
        return IS(n, "x-forwarded-proto") ? F_XF_OTHER : F_OTHER;
    default: return F_OTHER;
    }
}
#undef IS

bool conn_names_get(const struct http1_header *h, size_t n, struct conn_names *out)
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
                !NAME_IS(t, "upgrade") && !NAME_IS(t, "host")) {
                if (out->n == CONN_NAMES_MAX)
                    return false;
                out->v[out->n++] = t;
            }
            p = comma ? comma + 1 : end;
        }
    }
    return true;
}

bool conn_names_has(const struct conn_names *c, struct str name)
{
    for (size_t i = 0; i < c->n; i++)
        if (name_is(name, c->v[i].p, c->v[i].len))
            return true;
    return false;
}

bool target_absolute(struct str t, struct str *authority, struct str *rest)
{
    if (t.len == 0 || t.p[0] == '/')
        return false;
    const char *end = t.p + t.len;
    const char *sep = memchr(t.p, ':', t.len);
    if (!sep || sep == t.p || end - sep < 3 || sep[1] != '/' || sep[2] != '/')
        return false;
    const char *a = sep + 3, *e = a;
    while (e < end && *e != '/' && *e != '?' && *e != '#')
        e++;
    const char *at = NULL;
    for (const char *p = a; p < e; p++)
        if (*p == '@')
            at = p;
    if (at)
        a = at + 1;
    *authority = (struct str){a, (size_t)(e - a)};
    *rest = (struct str){e, (size_t)(end - e)};
    return true;
}

bool method_idempotent(struct str m)
{
    switch (m.len) {
    case 3: return str_eq(m, "GET") || str_eq(m, "PUT");
    case 4: return str_eq(m, "HEAD");
    case 5: return str_eq(m, "TRACE");
    case 6: return str_eq(m, "DELETE");
    case 7: return str_eq(m, "OPTIONS");
    default: return false;
    }
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
