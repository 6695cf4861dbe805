#include "cli/ui.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void say(const char *fmt, va_list ap)
{
    fputs("pier: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int ui_fail(const char *hint, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    if (hint)
        fprintf(stderr, "  hint: %s\n", hint);
    return 1;
}

int ui_usage(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    fprintf(stderr, "  see 'pier help%s%s'\n", cmd && *cmd ? " " : "", cmd ? cmd : "");
    return 2;
}

static int waiting;

void ui_wait_start(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("==> ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("...", stderr);
    fflush(stderr);
    waiting = 1;
}

void ui_wait_tick(void)
{
    if (waiting && isatty(STDERR_FILENO)) {
        fputc('.', stderr);
        fflush(stderr);
    }
}

void ui_wait_end(const char *word)
{
    if (!waiting)
        return;
    fprintf(stderr, " %s\n", word ? word : "done");
    waiting = 0;
}

int ui_flag_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *out = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *out = argv[++*i];
    return 1;
}
