/* out: pierslug's output, written to fd 1 with write(2) as it is made (no
 * stdio buffer between a buildpack's line and the pusher). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "build/slug.h"

static bool at_line_start = true;

static void write_all(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(1, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nobody listens any more: nothing to do about it */
        p += n, len -= (size_t)n;
    }
}

void out_end_line(void)
{
    if (!at_line_start)
        write_all("\n", 1);
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
    out_end_line();
    write_all(line, len);
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

void out_line(const char *fmt, ...)
{
    SAY("");
}

void out_child(const char *data, size_t len)
{
    if (len == 0)
        return;
    if (at_line_start) {
        size_t mlen = strlen(SLUG_RESULT_MARKER);
        size_t n = len < mlen ? len : mlen;
        if (memcmp(data, SLUG_RESULT_MARKER, n) == 0)
            write_all(" ", 1);
    }
    write_all(data, len);
    at_line_start = data[len - 1] == '\n';
}
