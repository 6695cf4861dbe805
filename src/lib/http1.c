#include "lib/http1.h"

#include <limits.h>
#include <string.h>

/* Byte classes. T: tchar (methods, field names, codings). V: allowed in a
 * field value, reason phrase or chunk extension (HTAB, SP, VCHAR,
 * obs-text). G: allowed in a request target (VCHAR, obs-text). H: allowed
 * in a Host value (RFC 3986 unreserved, sub-delims, ':', '[', ']', '%'). */
enum { T = 1, V = 2, G = 4, H = 8 };

// clang-format off
static const unsigned char cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0,
    0, V, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,
    V, T|V|G|H, V|G, T|V|G, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    V|G|H, V|G|H, T|V|G|H, T|V|G|H, V|G|H, T|V|G|H, T|V|G|H, V|G,
    T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, V|G|H, V|G|H, V|G, V|G|H, V|G, V|G,
    V|G, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, V|G|H, V|G, V|G|H, T|V|G, T|V|G|H,
    T|V|G, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H, T|V|G|H,
    T|V|G|H, T|V|G|H, T|V|G|H, V|G, T|V|G, V|G, T|V|G|H, 0,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
    V|G, V|G, V|G, V|G, V|G, V|G, V|G, V|G,
};
// clang-format on

static inline bool is(char c, unsigned cl)
{
    return cls[(unsigned char)c] & cl;
}

static inline bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline unsigned char lower(unsigned char c)
{
    return (unsigned char)(c - 'A') < 26 ? c + ('a' - 'A') : c;
}

/* Whether s equals the lower-case literal lit, ignoring case in s. */
static bool eq_lower(struct str s, const char *lit, size_t lit_len)
{
    if (s.len != lit_len)
        return false;
    for (size_t i = 0; i < lit_len; i++)
        if (lower((unsigned char)s.p[i]) != (unsigned char)lit[i])
            return false;
    return true;
}
#define EQ_LIT(s, lit) eq_lower((s), (lit), sizeof(lit) - 1)

static struct str trim(const char *p, size_t len)
{
    while (len && is_ows(*p))
        p++, len--;
    while (len && is_ows(p[len - 1]))
        len--;
    return (struct str){p, len};
}

/* Comma-separated list walking: the element starting at *off, trimmed
 * (possibly empty), then *off moves past its comma. False at the end. */
static bool list_next(struct str list, size_t *off, struct str *el)
{
    size_t i = *off;
    if (i > list.len)
        return false;
    const char *comma = i < list.len ? memchr(list.p + i, ',', list.len - i) : NULL;
    size_t e = comma ? (size_t)(comma - list.p) : list.len;
    *el = trim(list.p + i, e - i);
    *off = e + 1;
    return true;
}

/* ---- heads ----------------------------------------------------------- */

/* What the field lines say about framing and the connection; collected
 * while parsing, copied into the request or response at the end. */
struct facts {
    bool request;
    bool chunked_seen;
    int hosts;
    unsigned flags;
    uint64_t content_length;
    struct str host, upgrade;
};

#define NEED(p, end)                                                                               \
    do {                                                                                           \
        if ((p) == (end))                                                                          \
            return HTTP1_INCOMPLETE;                                                               \
    } while (0)

/* *pp is at a CR or LF ending a line: steps past CRLF or a bare LF. */
static int eol(const char **pp, const char *end)
{
    const char *p = *pp;
    if (*p == '\n') {
        *pp = p + 1;
        return 0;
    }
    if (p + 1 == end)
        return HTTP1_INCOMPLETE;
    if (p[1] != '\n')
        return HTTP1_EBARE_CR;
    *pp = p + 2;
    return 0;
}

static inline bool is_eol(char c)
{
    return c == '\r' || c == '\n';
}

/* "HTTP/1.0" or "HTTP/1.1"; bad_syntax is the code for anything that does
 * not have the shape HTTP/d.d. */
static int parse_version(const char **pp, const char *end, int *minor, int bad_syntax)
{
    static const char lit[] = "HTTP/";
    const char *p = *pp;
    for (int i = 0; i < 5; i++, p++) {
        NEED(p, end);
        if (*p != lit[i])
            return bad_syntax;
    }
    char d[3];
    for (int i = 0; i < 3; i++, p++) {
        NEED(p, end);
        d[i] = *p;
    }
    if ((unsigned)(d[0] - '0') > 9 || d[1] != '.' || (unsigned)(d[2] - '0') > 9)
        return bad_syntax;
    if (d[0] != '1' || d[2] > '1')
        return HTTP1_EVERSION;
    *minor = d[2] - '0';
    *pp = p;
    return 0;
}

/* 1*DIGIT, at most INT64_MAX. */
static int parse_length(struct str v, uint64_t *out)
{
    uint64_t n = 0;
    if (v.len == 0)
        return HTTP1_ECONTENT_LENGTH;
    for (size_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)((unsigned char)v.p[i] - '0');
        if (d > 9 || n > ((uint64_t)INT64_MAX - d) / 10)
            return HTTP1_ECONTENT_LENGTH;
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

/* Transfer-Encoding: a list of codings, each a token with optional
 * ";params". Fields may repeat; they concatenate as one list. chunked may
 * come once, without parameters; whether it came last is the CHUNKED flag. */
static int note_transfer_encoding(struct facts *f, struct str v)
{
    size_t off = 0;
    struct str el;
    f->flags |= HTTP1_F_TRANSFER_ENCODING;
    while (list_next(v, &off, &el)) {
        size_t n = 0;
        while (n < el.len && is(el.p[n], T))
            n++;
        struct str rest = trim(el.p + n, el.len - n);
        if (n == 0 || (rest.len && rest.p[0] != ';'))
            return HTTP1_ETRANSFER_ENCODING;
        if (!EQ_LIT(((struct str){el.p, n}), "chunked")) {
            f->flags &= ~(unsigned)HTTP1_F_CHUNKED;
            continue;
        }
        if (f->chunked_seen || rest.len)
            return HTTP1_ETRANSFER_ENCODING;
        f->chunked_seen = true;
        f->flags |= HTTP1_F_CHUNKED;
    }
    return 0;
}

static int note_content_length(struct facts *f, struct str v)
{
    uint64_t n;
    int r = parse_length(v, &n);
    if (r < 0)
        return r;
    if ((f->flags & HTTP1_F_CONTENT_LENGTH) && n != f->content_length)
        return HTTP1_ECONTENT_LENGTHS;
    f->flags |= HTTP1_F_CONTENT_LENGTH;
    f->content_length = n;
    return 0;
}

static void note_connection(struct facts *f, struct str v)
{
    size_t off = 0;
    struct str el;
    while (list_next(v, &off, &el)) {
        if (EQ_LIT(el, "close"))
            f->flags |= HTTP1_F_CONN_CLOSE;
        else if (EQ_LIT(el, "keep-alive"))
            f->flags |= HTTP1_F_CONN_KEEP_ALIVE;
        else if (EQ_LIT(el, "upgrade"))
            f->flags |= HTTP1_F_CONN_UPGRADE;
    }
}

static int note_host(struct facts *f, struct str v)
{
    if (++f->hosts > 1)
        return HTTP1_EHOST;
    for (size_t i = 0; i < v.len; i++)
        if (!is(v.p[i], H))
            return HTTP1_EHOST;
    f->flags |= HTTP1_F_HOST;
    f->host = v;
    return 0;
}

/* Looks at one field line for the few names that matter to framing and
 * the connection. Dispatching on length first keeps other fields cheap. */
static int note_field(struct facts *f, const struct http1_header *h)
{
    switch (h->name.len) {
    case 4:
        if (f->request && EQ_LIT(h->name, "host"))
            return note_host(f, h->value);
        break;
    case 6:
        if (f->request && EQ_LIT(h->name, "expect") && EQ_LIT(h->value, "100-continue"))
            f->flags |= HTTP1_F_EXPECT_CONTINUE;
        break;
    case 7:
        if (EQ_LIT(h->name, "upgrade") && h->value.len && !(f->flags & HTTP1_F_UPGRADE)) {
            f->flags |= HTTP1_F_UPGRADE;
            f->upgrade = h->value;
        }
        break;
    case 10:
        if (EQ_LIT(h->name, "connection"))
            note_connection(f, h->value);
        break;
    case 14:
        if (EQ_LIT(h->name, "content-length"))
            return note_content_length(f, h->value);
        break;
    case 17:
        if (EQ_LIT(h->name, "transfer-encoding"))
            return note_transfer_encoding(f, h->value);
        break;
    }
    return 0;
}

/* The end of a run of field-value bytes (HTAB, SP, VCHAR, obs-text).
 * Values are most of a head's bytes, so whole words are checked at once
 * while they hold no byte below 0x20 and no DEL (HTAB takes the slow
 * path): x - 0x20.. borrows into a byte's top bit only for bytes < 0x20
 * whose top bit was clear, and y = x ^ 0x7f.. has a zero byte exactly
 * where x has DEL. */
static const char *scan_value(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    for (;;) {
        while (end - p >= 8) {
            uint64_t x, y;
            memcpy(&x, p, 8);
            y = x ^ (ones * 0x7f);
            if ((((x - ones * 0x20) & ~x) | ((y - ones) & ~y)) & highs)
                break;
            p += 8;
        }
        const char *stop = end - p > 8 ? p + 8 : end;
        while (p < stop && is(*p, V))
            p++;
        if (p < stop || p == end)
            return p;
    }
}

/* Field lines up to and including the empty line that ends the head. */
static int parse_fields(const char **pp, const char *end, struct http1_header *hdrs, size_t *num,
                        struct facts *f)
{
    const char *p = *pp;
    size_t n = 0;
    int r;
    for (;;) {
        NEED(p, end);
        if (is_eol(*p)) {
            if ((r = eol(&p, end)) < 0)
                return r;
            break;
        }
        const char *name = p;
        while (p < end && is(*p, T))
            p++;
        NEED(p, end);
        if (p == name || *p != ':') {
            if (p == name && is_ows(*p))
                return HTTP1_EOBS_FOLD;
            return is_ows(*p) ? HTTP1_EHEADER_SPACE : HTTP1_EHEADER_NAME;
        }
        struct str nm = {name, (size_t)(p - name)};
        p++;
        while (p < end && is_ows(*p))
            p++;
        const char *val = p;
        p = scan_value(p, end);
        NEED(p, end);
        const char *vend = p;
        if (!is_eol(*p))
            return HTTP1_EHEADER_VALUE;
        if ((r = eol(&p, end)) < 0)
            return r;
        while (vend > val && is_ows(vend[-1]))
            vend--;
        if (n == HTTP1_MAX_HEADERS)
            return HTTP1_ETOO_MANY_HEADERS;
        hdrs[n] = (struct http1_header){nm, {val, (size_t)(vend - val)}};
        if ((r = note_field(f, &hdrs[n])) < 0)
            return r;
        n++;
    }
    *num = n;
    *pp = p;
    return 0;
}

/* A token, then exactly one SP. */
static int parse_method(const char **pp, const char *end, struct str *out)
{
    const char *p = *pp, *m = p;
    while (p < end && is(*p, T))
        p++;
    NEED(p, end);
    if (p == m || *p != ' ')
        return *p == ' ' || is_eol(*p) ? HTTP1_EREQUEST_LINE : HTTP1_EMETHOD;
    *out = (struct str){m, (size_t)(p - m)};
    *pp = p + 1;
    return 0;
}

static int parse_target(const char **pp, const char *end, struct http1_request *req)
{
    const char *p = *pp, *t = p;
    while (p < end && is(*p, G))
        p++;
    NEED(p, end);
    if (p == t || *p != ' ')
        return *p == ' ' || is_eol(*p) ? HTTP1_EREQUEST_LINE : HTTP1_ETARGET;
    req->target = (struct str){t, (size_t)(p - t)};
    const char *q = memchr(t, '?', req->target.len);
    if (q) {
        req->path = (struct str){t, (size_t)(q - t)};
        req->query = (struct str){q + 1, (size_t)(p - q - 1)};
    } else {
        req->path = req->target;
        req->query = (struct str){p, 0};
    }
    *pp = p + 1;
    return 0;
}

static int parse_request(const char *buf, const char *end, struct http1_request *req)
{
    struct facts f = {.request = true};
    const char *p = buf;
    int r;

    /* One empty line before the request line is tolerated (RFC 9112 2.2). */
    NEED(p, end);
    if (is_eol(*p) && (r = eol(&p, end)) < 0)
        return r;
    if ((r = parse_method(&p, end, &req->method)) < 0 || (r = parse_target(&p, end, req)) < 0 ||
        (r = parse_version(&p, end, &req->minor_version, HTTP1_EREQUEST_LINE)) < 0)
        return r;
    NEED(p, end);
    if (!is_eol(*p))
        return HTTP1_EREQUEST_LINE;
    if ((r = eol(&p, end)) < 0 ||
        (r = parse_fields(&p, end, req->headers, &req->num_headers, &f)) < 0)
        return r;

    if (f.flags & HTTP1_F_TRANSFER_ENCODING) {
        if (f.flags & HTTP1_F_CONTENT_LENGTH)
            return HTTP1_EFRAMING;
        if (req->minor_version == 0 || !(f.flags & HTTP1_F_CHUNKED))
            return HTTP1_ETRANSFER_ENCODING;
    }
    if (f.hosts == 0 && req->minor_version == 1)
        return HTTP1_EHOST;
    req->flags = f.flags;
    req->content_length = f.flags & HTTP1_F_CONTENT_LENGTH ? f.content_length : 0;
    req->host = f.hosts ? f.host : (struct str){NULL, 0};
    req->upgrade = f.flags & HTTP1_F_UPGRADE ? f.upgrade : (struct str){NULL, 0};
    return (int)(p - buf);
}

static int parse_response(const char *buf, const char *end, struct http1_response *resp)
{
    struct facts f = {.request = false};
    const char *p = buf;
    int r;

    if ((r = parse_version(&p, end, &resp->minor_version, HTTP1_ESTATUS_LINE)) < 0)
        return r;
    NEED(p, end);
    if (*p++ != ' ')
        return HTTP1_ESTATUS_LINE;
    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        NEED(p, end);
        if ((unsigned)(*p - '0') > 9)
            return HTTP1_ESTATUS_LINE;
        status = status * 10 + (*p - '0');
    }
    if (status < 100)
        return HTTP1_ESTATUS_LINE;
    resp->status = status;
    NEED(p, end);
    const char *reason = p;
    if (*p == ' ') {
        reason = ++p;
        while (p < end && is(*p, V))
            p++;
        NEED(p, end);
    }
    if (!is_eol(*p))
        return HTTP1_ESTATUS_LINE;
    resp->reason = (struct str){reason, (size_t)(p - reason)};
    if ((r = eol(&p, end)) < 0 ||
        (r = parse_fields(&p, end, resp->headers, &resp->num_headers, &f)) < 0)
        return r;

    if (f.flags & HTTP1_F_TRANSFER_ENCODING) {
        if (f.flags & HTTP1_F_CONTENT_LENGTH)
            return HTTP1_EFRAMING;
        if (resp->minor_version == 0)
            return HTTP1_ETRANSFER_ENCODING;
    }
    resp->flags = f.flags;
    resp->content_length = f.flags & HTTP1_F_CONTENT_LENGTH ? f.content_length : 0;
    resp->upgrade = f.flags & HTTP1_F_UPGRADE ? f.upgrade : (struct str){NULL, 0};
    return (int)(p - buf);
}

/* Whether a head can have ended in buf[0..len), given that none had ended
 * in buf[0..last_len). A head ends at the first LF, past the optional
 * leading empty line, followed by LF or CRLF; such an end that finishes at
 * or after last_len starts at or after last_len - 2. memchr makes this the
 * cheap check on a head still arriving. */
static bool head_may_end(const char *buf, size_t len, size_t last_len, bool request)
{
    size_t start = 0;
    if (request && len >= 1 && buf[0] == '\n')
        start = 1;
    else if (request && len >= 2 && buf[0] == '\r' && buf[1] == '\n')
        start = 2;
    size_t i = last_len > 2 ? last_len - 2 : 0;
    if (i < start)
        i = start;
    while (i < len) {
        const char *lf = memchr(buf + i, '\n', len - i);
        if (!lf)
            return false;
        i = (size_t)(lf - buf) + 1;
        if (i < len && (buf[i] == '\n' || (buf[i] == '\r' && i + 1 < len && buf[i + 1] == '\n')))
            return true;
    }
    return false;
}

static size_t head_cap(size_t max_head)
{
    if (max_head == 0)
        return HTTP1_MAX_HEAD;
    return max_head > INT_MAX ? INT_MAX : max_head;
}

int http1_parse_request_ex(const char *buf, size_t len, size_t last_len, size_t max_head,
                           struct http1_request *req)
{
    size_t cap = head_cap(max_head);
    size_t n = len < cap ? len : cap;
    int r = HTTP1_INCOMPLETE;
    if (len == 0) /* buf may be NULL, as in an empty struct buf */
        return r;
    if (last_len == 0 || last_len >= n || head_may_end(buf, n, last_len, true))
        r = parse_request(buf, buf + n, req);
    return r == HTTP1_INCOMPLETE && len >= cap ? HTTP1_ETOO_LARGE : r;
}

int http1_parse_request(const char *buf, size_t len, struct http1_request *req)
{
    return http1_parse_request_ex(buf, len, 0, 0, req);
}

int http1_parse_response_ex(const char *buf, size_t len, size_t last_len, size_t max_head,
                            struct http1_response *resp)
{
    size_t cap = head_cap(max_head);
    size_t n = len < cap ? len : cap;
    int r = HTTP1_INCOMPLETE;
    if (len == 0) /* buf may be NULL, as in an empty struct buf */
        return r;
    if (last_len == 0 || last_len >= n || head_may_end(buf, n, last_len, false))
        r = parse_response(buf, buf + n, resp);
    return r == HTTP1_INCOMPLETE && len >= cap ? HTTP1_ETOO_LARGE : r;
}

int http1_parse_response(const char *buf, size_t len, struct http1_response *resp)
{
    return http1_parse_response_ex(buf, len, 0, 0, resp);
}

/* ---- derived facts --------------------------------------------------- */

struct http1_framing http1_request_framing(const struct http1_request *req)
{
    if (req->flags & HTTP1_F_CHUNKED)
        return (struct http1_framing){HTTP1_BODY_CHUNKED, 0};
    if (req->flags & HTTP1_F_CONTENT_LENGTH)
        return (struct http1_framing){HTTP1_BODY_LENGTH, req->content_length};
    return (struct http1_framing){HTTP1_BODY_NONE, 0};
}

struct http1_framing http1_response_framing(const struct http1_response *resp,
                                            bool request_was_head)
{
    int s = resp->status;
    if (request_was_head || s < 200 || s == 204 || s == 304)
        return (struct http1_framing){HTTP1_BODY_NONE, 0};
    if (resp->flags & HTTP1_F_TRANSFER_ENCODING) {
        enum http1_body b =
            resp->flags & HTTP1_F_CHUNKED ? HTTP1_BODY_CHUNKED : HTTP1_BODY_UNTIL_CLOSE;
        return (struct http1_framing){b, 0};
    }
    if (resp->flags & HTTP1_F_CONTENT_LENGTH)
        return (struct http1_framing){HTTP1_BODY_LENGTH, resp->content_length};
    return (struct http1_framing){HTTP1_BODY_UNTIL_CLOSE, 0};
}

static bool keep_alive(unsigned flags, int minor)
{
    if (flags & HTTP1_F_CONN_CLOSE)
        return false;
    return minor >= 1 || (flags & HTTP1_F_CONN_KEEP_ALIVE);
}

bool http1_request_keep_alive(const struct http1_request *req)
{
    return keep_alive(req->flags, req->minor_version);
}

bool http1_response_keep_alive(const struct http1_response *resp, bool request_was_head)
{
    if (http1_response_framing(resp, request_was_head).body == HTTP1_BODY_UNTIL_CLOSE)
        return false;
    return keep_alive(resp->flags, resp->minor_version);
}

bool http1_request_upgrade(const struct http1_request *req)
{
    unsigned both = HTTP1_F_CONN_UPGRADE | HTTP1_F_UPGRADE;
    return req->minor_version == 1 && (req->flags & both) == both;
}

bool http1_request_expect_continue(const struct http1_request *req)
{
    return req->minor_version == 1 && (req->flags & HTTP1_F_EXPECT_CONTINUE);
}

static bool case_eq(struct str s, const char *z)
{
    size_t n = strlen(z);
    if (s.len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lower((unsigned char)z[i]))
            return false;
    return true;
}

struct str http1_header_get(const struct http1_header *headers, size_t num_headers,
                            const char *name)
{
    for (size_t i = 0; i < num_headers; i++)
        if (case_eq(headers[i].name, name))
            return headers[i].value;
    return (struct str){NULL, 0};
}

bool http1_token_list_has(struct str list, const char *token)
{
    size_t off = 0;
    struct str el;
    if (!list.p)
        return false;
    while (list_next(list, &off, &el))
        if (el.len && case_eq(el, token))
            return true;
    return false;
}

const char *http1_strerror(int code)
{
    switch (code) {
    case HTTP1_INCOMPLETE: return "message incomplete";
    case HTTP1_EREQUEST_LINE: return "malformed request line";
    case HTTP1_EMETHOD: return "invalid character in method";
    case HTTP1_ETARGET: return "invalid character in request target";
    case HTTP1_EVERSION: return "HTTP version not supported";
    case HTTP1_ESTATUS_LINE: return "malformed status line";
    case HTTP1_EHEADER_NAME: return "invalid header field name";
    case HTTP1_EHEADER_SPACE: return "whitespace between header field name and colon";
    case HTTP1_EHEADER_VALUE: return "invalid character in header field value";
    case HTTP1_EOBS_FOLD: return "obsolete line folding in header";
    case HTTP1_EBARE_CR: return "CR not followed by LF";
    case HTTP1_ETOO_LARGE: return "message head too large";
    case HTTP1_ETOO_MANY_HEADERS: return "too many header fields";
    case HTTP1_ECONTENT_LENGTH: return "invalid Content-Length";
    case HTTP1_ECONTENT_LENGTHS: return "conflicting Content-Length values";
    case HTTP1_EFRAMING: return "both Content-Length and Transfer-Encoding";
    case HTTP1_ETRANSFER_ENCODING: return "invalid or unsupported Transfer-Encoding";
    case HTTP1_EHOST: return "missing, repeated or invalid Host";
    case HTTP1_ECHUNK_SIZE: return "invalid chunk size";
    case HTTP1_ECHUNK: return "malformed chunked encoding";
    case HTTP1_ETRAILER: return "invalid trailer section";
    default: return "malformed HTTP message";
    }
}

int http1_error_status(int code)
{
    switch (code) {
    case HTTP1_ETOO_LARGE:
    case HTTP1_ETOO_MANY_HEADERS: return 431;
    case HTTP1_EVERSION: return 505;
    default: return 400;
    }
}

/* ---- chunked bodies ---------------------------------------------------
 *
 * chunked-body = *chunk last-chunk trailer-section CRLF, where a chunk is
 * hex-size [extensions] CRLF data CRLF. The decoder is a state machine fed
 * one byte at a time except in DATA, where it takes whole runs, so a body
 * split anywhere decodes the same. Data moves towards the start of the
 * buffer (never past the read position), which makes in-place decoding
 * safe. Every loop is bounded: sizes by HTTP1_CHUNK_SIZE_DIGITS, extension
 * bytes by HTTP1_CHUNK_EXT_MAX, trailer bytes by HTTP1_MAX_TRAILER. */

enum chunk_state {
    CH_SIZE_FIRST, /* expecting the first hex digit */
    CH_SIZE,       /* more hex digits */
    CH_SIZE_WS,    /* whitespace after the size: only ';' may follow */
    CH_EXT,        /* inside extensions, until CR */
    CH_SIZE_LF,    /* CR seen after the size line */
    CH_DATA,
    CH_DATA_CR, /* data done: expecting CR */
    CH_DATA_LF,
    CH_TRAILER_START, /* start of a trailer line or of the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF, /* final CR seen */
    CH_DONE,
    CH_ERROR,
};

void http1_chunked_init(struct http1_chunked *c)
{
    *c = (struct http1_chunked){.state = CH_SIZE_FIRST};
}

static int hexval(unsigned char ch)
{
    if ((unsigned)(ch - '0') < 10)
        return ch - '0';
    ch = lower(ch);
    return (unsigned)(ch - 'a') < 6 ? ch - 'a' + 10 : -1;
}

/* One byte of the trailer section: field lines, then CRLF. */
static int trailer_step(struct http1_chunked *c, unsigned char ch)
{
    if (++c->count > HTTP1_MAX_TRAILER)
        return HTTP1_ETRAILER;
    switch (c->state) {
    case CH_TRAILER_START:
        if (ch == '\r')
            c->state = CH_END_LF;
        else if (is((char)ch, T))
            c->state = CH_TRAILER_NAME;
        else
            return HTTP1_ETRAILER;
        return 0;
    case CH_TRAILER_NAME:
        if (ch == ':')
            c->state = CH_TRAILER_VALUE;
        else if (!is((char)ch, T))
            return HTTP1_ETRAILER;
        return 0;
    case CH_TRAILER_VALUE:
        if (ch == '\r')
            c->state = CH_TRAILER_LF;
        else if (!is((char)ch, V))
            return HTTP1_ETRAILER;
        return 0;
    case CH_TRAILER_LF:
        if (ch != '\n')
            return HTTP1_ETRAILER;
        c->state = CH_TRAILER_START;
        return 0;
    case CH_END_LF:
        if (ch != '\n')
            return HTTP1_ETRAILER;
        c->state = CH_DONE;
        return 0;
    default: return HTTP1_ECHUNK;
    }
}

/* One framing byte (not in DATA); returns 0 or an error code. */
static int chunk_step(struct http1_chunked *c, unsigned char ch)
{
    int h;
    switch (c->state) {
    case CH_SIZE_FIRST:
    case CH_SIZE:
        if ((h = hexval(ch)) >= 0) {
            if (++c->count > HTTP1_CHUNK_SIZE_DIGITS)
                return HTTP1_ECHUNK_SIZE;
            c->remaining = (c->remaining << 4) | (uint64_t)h;
            c->state = CH_SIZE;
            return 0;
        }
        if (c->state == CH_SIZE_FIRST)
            return HTTP1_ECHUNK_SIZE;
        if (ch == '\r') {
            c->state = CH_SIZE_LF;
            return 0;
        }
        if (ch != ';' && !is_ows((char)ch))
            return HTTP1_ECHUNK_SIZE;
        c->count = 0;
        c->state = CH_SIZE_WS;
        __attribute__((fallthrough));
    case CH_SIZE_WS: /* counts towards the extension cap with CH_EXT */
        if (++c->count > HTTP1_CHUNK_EXT_MAX)
            return HTTP1_ECHUNK;
        if (ch == ';')
            c->state = CH_EXT;
        else if (!is_ows((char)ch))
            return HTTP1_ECHUNK;
        return 0;
    case CH_EXT:
        if (ch == '\r')
            c->state = CH_SIZE_LF;
        else if (!is((char)ch, V) || ++c->count > HTTP1_CHUNK_EXT_MAX)
            return HTTP1_ECHUNK;
        return 0;
    case CH_SIZE_LF:
        if (ch != '\n')
            return HTTP1_ECHUNK;
        c->count = 0;
        c->state = c->remaining ? CH_DATA : CH_TRAILER_START;
        return 0;
    case CH_DATA_CR:
        if (ch != '\r')
            return HTTP1_ECHUNK;
        c->state = CH_DATA_LF;
        return 0;
    case CH_DATA_LF:
        if (ch != '\n')
            return HTTP1_ECHUNK;
        c->state = CH_SIZE_FIRST;
        return 0;
    default: return trailer_step(c, ch);
    }
}

/* Runs the decoder over src[0..len). Data bytes go to dst (which may be
 * src itself) when dst is not NULL; *out counts them. *used is how much of
 * src was consumed: all of it unless the body ended. */
static int chunk_run(struct http1_chunked *c, const char *src, size_t len, char *dst, size_t *out,
                     size_t *used)
{
    size_t i = 0, o = 0;
    int r = 0;
    while (i < len && c->state != CH_DONE && c->state != CH_ERROR) {
        if (c->state == CH_DATA) {
            size_t n = len - i;
            if (n > c->remaining)
                n = (size_t)c->remaining;
            if (dst && dst + o != src + i)
                memmove(dst + o, src + i, n);
            o += n;
            i += n;
            c->remaining -= n;
            c->total += n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        if ((r = chunk_step(c, (unsigned char)src[i++])) < 0) {
            c->state = CH_ERROR;
            c->count = (unsigned)-r;
        }
    }
    *out = o;
    *used = i;
    if (c->state == CH_ERROR)
        return -(int)c->count;
    return c->state == CH_DONE ? 0 : HTTP1_INCOMPLETE;
}

int http1_chunked_decode(struct http1_chunked *c, char *buf, size_t *len, size_t *rest)
{
    size_t in = *len, out, used;
    int r = chunk_run(c, buf, in, buf, &out, &used);
    *len = out;
    *rest = 0;
    if (r < 0)
        return r;
    *rest = in - used;
    if (*rest && out != used)
        memmove(buf + out, buf + used, *rest);
    return 0;
}

int http1_chunked_scan(struct http1_chunked *c, const char *buf, size_t len, size_t *rest)
{
    size_t out, used;
    int r = chunk_run(c, buf, len, NULL, &out, &used);
    *rest = r < 0 ? 0 : len - used;
    return r;
}
