/* buf: the one growable byte buffer (owning), and str: a borrowed view.
 *
 * struct buf always keeps a NUL after its bytes, so p can be handed to
 * functions that want a C string. Running out of memory aborts. */
#ifndef PIER_BUF_H
#define PIER_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct buf {
    char *p; /* NULL until the first append; then NUL-terminated */
    size_t len;
    size_t cap;
};

/* A borrowed view into someone else's bytes; not NUL-terminated. */
struct str {
    const char *p;
    size_t len;
};

#define BUF_INIT                                                                                   \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }
#define STR_LIT(s) ((struct str){(s), sizeof(s) - 1})

static inline struct str str_from(const char *s)
{
    return (struct str){s, s ? strlen(s) : 0};
}
static inline struct str buf_str(const struct buf *b)
{
    return (struct str){b->p, b->len};
}
bool str_eq(struct str a, const char *s);
bool str_case_eq(struct str a, const char *s);
/* A new NUL-terminated copy of s; the caller frees it. */
char *str_dup(struct str s);

/* Makes room for n more bytes (the NUL excluded). */
void buf_grow(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *data, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empties b, keeping its memory. */
void buf_reset(struct buf *b);
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);
/* Hands the bytes to the caller (who frees them) and empties b. Never NULL. */
char *buf_detach(struct buf *b);
void buf_free(struct buf *b);

/* Allocation that aborts on exhaustion. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#endif
