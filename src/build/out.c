/* out: pierslug's output, written to fd 1 with write(2) as it is made (no
 * stdio buffer between a buildpack's line and the pusher). A write that
 * fails means nobody listens any more: there is nothing to do about it. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "build/slug.h"

#define MARKER_LEN (sizeof(SLUG_RESULT_MARKER) - 1)

/* Whether the output is at the start of a line (all a child wrote of the
 * current line, if anything, is in held). */
static bool at_line_start = true;
/* The start of a child's line that may still become SLUG_RESULT_MARKER:
 * shown once the line tells (with a space first when it does). */
static char held[MARKER_LEN];
static size_t held_len;

static void put(const void *p, size_t len)
{
    (void)fs_write_all(1, p, len);
}

/* Ends a line a child left unfinished, before a line of pierslug's own. */
static void end_line(void)
{
    if (held_len) {
        put(held, held_len);
        held_len = 0;
        at_line_start = false;
    }
    if (!at_line_start)
        put("\n", 1);
    at_line_start = true;
}

static void say(const char *prefix, const char *fmt, va_list ap)
{
    char line[4096];
    size_t plen = strlen(prefix);
    memcpy(line, prefix, plen);
    int n = vsnprintf(line + plen, sizeof(line) - plen - 1, fmt, ap);
    size_t len = plen + (n < 0 ? 0 : (size_t)n);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    end_line();
    put(line, len);
}

#define SAY(prefix)                                                                                \
    do {                                                                                           \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        say(prefix, fmt, ap);                                                                      \
        va_end(ap);                                                                                \
    } while (0)

void out_head(const char *fmt, ...)
{
    SAY("-----> ");
}

void out_detail(const char *fmt, ...)
{
    SAY("       ");
}

void out_error(const char *fmt, ...)
{
    SAY(" !     ");
}

void out_result(const char *json)
{
    end_line();
    put(SLUG_RESULT_MARKER, MARKER_LEN);
    put(json, strlen(json));
    put("\n", 1);
}

/* p[0..n): a piece of one line, its end when ends. */
static void child_piece(const char *p, size_t n, bool ends)
{
    if (!at_line_start) {
        put(p, n);
        at_line_start = ends;
        return;
    }
    size_t cmp = n < MARKER_LEN - held_len ? n : MARKER_LEN - held_len;
    bool may_be_marker = memcmp(p, SLUG_RESULT_MARKER + held_len, cmp) == 0;
    if (may_be_marker && held_len + n < MARKER_LEN && !ends) {
        memcpy(held + held_len, p, n);
        held_len += n;
        return;
    }
    if (may_be_marker && held_len + n >= MARKER_LEN)
        put(" ", 1);
    put(held, held_len);
    held_len = 0;
    put(p, n);
    at_line_start = ends;
}

void out_child(const char *data, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl ? (size_t)(nl - data) + 1 : len;
        child_piece(data, n, nl != NULL);
        data += n, len -= n;
    }
}
