/* accesslog: one logfmt line per request (docs/router.md "Operations"),
 * buffered per worker and written when the buffer passes 32 KiB, on the
 * worker's sweep and at exit. Into a pipe the buffer goes in pieces of at
 * most PIPE_BUF bytes cut at line ends, so the lines of several workers
 * never interleave; a file opened for append takes each write whole. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "router/proxy_int.h"

#define ALOG_FLUSH_AT (32 * 1024)
#define ALOG_PATH_MAX 1024
#define ALOG_FIELD_MAX 256

void alog_init(struct alog *l, int fd)
{
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    struct stat st;
    l->pipe = fd >= 0 && fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
    l->sec = -1;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* a log that cannot be written is dropped */
        }
        p += w;
        n -= (size_t)w;
    }
}

void alog_flush(struct alog *l)
{
    if (l->fd < 0 || l->b.len == 0)
        return;
    const char *p = l->b.p;
    size_t n = l->b.len;
    if (!l->pipe) {
        write_all(l->fd, p, n);
    } else {
        while (n > 0) {
            size_t k = n;
            if (k > PIPE_BUF) {
                k = PIPE_BUF;
                while (k > 0 && p[k - 1] != '\n')
                    k--;
                if (k == 0)
                    k = PIPE_BUF; /* a line longer than PIPE_BUF */
            }
            write_all(l->fd, p, k);
            p += k;
            n -= k;
        }
    }
    buf_reset(&l->b);
}

void alog_free(struct alog *l)
{
    alog_flush(l);
    buf_free(&l->b);
}

static void put_u64(struct buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf_append(b, tmp + i, sizeof(tmp) - i);
}

/* A logfmt value: bare when it can be, else quoted with \" \\ and \xNN
 * escapes; at most max bytes of it. */
static void put_value(struct buf *b, const char *p, size_t n, size_t max)
{
    if (n > max)
        n = max;
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char ch = (unsigned char)p[i];
        quote = ch <= ' ' || ch == '"' || ch == '=' || ch == '\\' || ch == 0x7f;
    }
    if (!quote) {
        buf_append(b, p, n);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    buf_grow(b, n * 4 + 2);
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < ' ' || ch == 0x7f) {
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[ch >> 4];
            *o++ = hex[ch & 15];
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

static void put_span(struct buf *b, const struct cconn *c, struct span s, size_t max)
{
    if (!c->hb || s.len == 0) {
        buf_putc(b, '-');
        return;
    }
    put_value(b, c->hb + s.off, s.len, max);
}

/* "2026-11-25T12:00:00.123456Z" with the part up to the seconds cached. */
static void put_time(struct alog *l, const struct timespec *ts)
{
    if (ts->tv_sec != l->sec) {
        struct tm tm;
        gmtime_r(&ts->tv_sec, &tm);
        strftime(l->prefix, sizeof(l->prefix), "%Y-%m-%dT%H:%M:%S", &tm);
        l->sec = ts->tv_sec;
    }
    buf_puts(&l->b, l->prefix);
    char frac[9];
    long us = ts->tv_nsec / 1000;
    frac[0] = '.';
    for (int i = 6; i >= 1; i--) {
        frac[i] = (char)('0' + us % 10);
        us /= 10;
    }
    frac[7] = 'Z';
    buf_append(&l->b, frac, 8);
}

void alog_request(struct alog *l, const struct cconn *c, uint64_t now_ns)
{
    if (l->fd < 0)
        return;
    struct buf *b = &l->b;
    buf_puts(b, "time=");
    put_time(l, &c->t0_wall);
    buf_puts(b, " method=");
    put_span(b, c, c->method, ALOG_FIELD_MAX);
    buf_puts(b, " host=");
    put_span(b, c, c->host, ALOG_FIELD_MAX);
    buf_puts(b, " path=");
    put_span(b, c, c->path, ALOG_PATH_MAX);
    buf_puts(b, " status=");
    put_u64(b, (uint64_t)c->status);
    buf_puts(b, " bytes=");
    put_u64(b, c->bytes);
    uint64_t us = now_ns > c->t0_ns ? (now_ns - c->t0_ns) / 1000 : 0;
    buf_puts(b, " duration_ms=");
    put_u64(b, us / 1000);
    char frac[4] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10),
                    (char)('0' + us % 10)};
    buf_append(b, frac, 4);
    /* The backend tried last, also when it failed (502, 504). */
    buf_puts(b, " backend=");
    if (c->last_be)
        put_value(b, c->last_be->addr, strlen(c->last_be->addr), ALOG_FIELD_MAX);
    else
        buf_putc(b, '-');
    buf_puts(b, " request_id=");
    if (c->rid.len)
        put_span(b, c, c->rid, ALOG_FIELD_MAX);
    else if (c->gen_rid[0])
        buf_puts(b, c->gen_rid);
    else
        buf_putc(b, '-');
    buf_putc(b, '\n');
    if (b->len >= ALOG_FLUSH_AT)
        alog_flush(l);
}
