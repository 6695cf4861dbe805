#include "host/attach.h"

#include <arpa/inet.h>
#include <string.h>

static void put_u32(struct buf *out, uint32_t v)
{
    uint32_t be = htonl(v);
    buf_append(out, &be, 4);
}

static uint32_t get_u32(const char *p)
{
    uint32_t be;
    memcpy(&be, p, 4);
    return ntohl(be);
}

static uint16_t get_u16(const char *p)
{
    uint16_t be;
    memcpy(&be, p, 2);
    return ntohs(be);
}

void attach_put_data(struct buf *out, uint8_t stream, const void *data, size_t len)
{
    char head[2] = {ATTACH_DATA, (char)stream};
    buf_append(out, head, 2);
    put_u32(out, (uint32_t)len);
    buf_append(out, data, len);
}

void attach_put_exit(struct buf *out, uint32_t status)
{
    buf_putc(out, ATTACH_EXIT);
    put_u32(out, status);
}

void attach_put_error(struct buf *out, const char *msg)
{
    size_t len = strlen(msg);
    if (len > ATTACH_MAX_FRAME)
        len = ATTACH_MAX_FRAME;
    buf_putc(out, ATTACH_ERROR);
    put_u32(out, (uint32_t)len);
    buf_append(out, msg, len);
}

void attach_put_signal(struct buf *out, uint32_t sig)
{
    buf_putc(out, ATTACH_SIGNAL);
    put_u32(out, sig);
}

void attach_put_resize(struct buf *out, uint16_t rows, uint16_t cols)
{
    uint16_t be[2] = {htons(rows), htons(cols)};
    buf_putc(out, ATTACH_RESIZE);
    buf_append(out, be, 4);
}

/* Parses the frame at p (n bytes available). Returns its size, 0 when it is
 * not complete yet, or -1 when it is not a frame. */
static long parse_frame(const char *p, size_t n, struct attach_frame *f)
{
    if (n < 1)
        return 0;
    memset(f, 0, sizeof(*f));
    f->type = (uint8_t)p[0];
    switch (f->type) {
    case ATTACH_DATA:
    case ATTACH_ERROR: {
        size_t head = f->type == ATTACH_DATA ? 6 : 5;
        if (n < head)
            return 0;
        uint32_t len = get_u32(p + head - 4);
        if (len > ATTACH_MAX_FRAME)
            return -1;
        if (n - head < len)
            return 0;
        f->stream = f->type == ATTACH_DATA ? (uint8_t)p[1] : 0;
        f->data = p + head;
        f->len = len;
        return (long)(head + len);
    }
    case ATTACH_SIGNAL:
    case ATTACH_EXIT:
        if (n < 5)
            return 0;
        f->value = get_u32(p + 1);
        return 5;
    case ATTACH_RESIZE:
        if (n < 5)
            return 0;
        f->rows = get_u16(p + 1);
        f->cols = get_u16(p + 3);
        return 5;
    default: return -1;
    }
}

/* Frames already returned stay at the front of in (d->used bytes) until the
 * decoder needs more input: dropping them one frame at a time would move the
 * rest of the buffer once per frame, quadratic in a burst of small frames. */
int attach_next(struct attach_decoder *d, struct attach_frame *f)
{
    if (d->used > d->in.len)
        d->used = d->in.len;
    size_t avail = d->in.len - d->used;
    long r = avail ? parse_frame(d->in.p + d->used, avail, f) : 0;
    if (r > 0) {
        d->used += (size_t)r;
        return 1;
    }
    buf_consume(&d->in, d->used);
    d->used = 0;
    return r < 0 ? -1 : 0;
}

void attach_decoder_free(struct attach_decoder *d)
{
    if (!d)
        return;
    buf_free(&d->in);
    d->used = 0;
}
