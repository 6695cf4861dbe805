#include "lib/base64.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64_encode(struct buf *out, const void *data, size_t len)
{
    const unsigned char *s = data;
    buf_grow(out, (len + 2) / 3 * 4);
    char *o = out->p + out->len;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < len ? (unsigned)s[i + 1] << 8 : 0);
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    out->len = (size_t)(o - out->p);
    out->p[out->len] = '\0';
}

static int val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int base64_decode(struct buf *out, const char *in, size_t len)
{
    if (len % 4 != 0)
        return -1;
    buf_grow(out, len / 4 * 3);
    for (size_t i = 0; i < len; i += 4) {
        int a = val((unsigned char)in[i]), b = val((unsigned char)in[i + 1]);
        int c = val((unsigned char)in[i + 2]), d = val((unsigned char)in[i + 3]);
        bool last = i + 4 == len;
        if (a < 0 || b < 0)
            return -1;
        if (c < 0 || d < 0) {
            /* Padding is only allowed at the very end: "xx==" or "xxx=". */
            if (!last || in[i + 3] != '=' || (c < 0 && in[i + 2] != '='))
                return -1;
            if (c < 0) {
                if (b & 15)
                    return -1;
                buf_putc(out, (char)(a << 2 | b >> 4));
            } else {
                if (c & 3)
                    return -1;
                buf_putc(out, (char)(a << 2 | b >> 4));
                buf_putc(out, (char)((b & 15) << 4 | c >> 2));
            }
            break;
        }
        char three[3] = {(char)(a << 2 | b >> 4), (char)((b & 15) << 4 | c >> 2),
                         (char)((c & 3) << 6 | d)};
        buf_append(out, three, 3);
    }
    return 0;
}
