#include "lib/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Atomic int min_level = LOG_INFO;

void log_set_level(enum log_level level)
{
    min_level = level;
}

int log_parse_level(const char *name, enum log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Appends src to line at *n, escaping what would break a logfmt line or
 * forge another one: control characters always, and with quoted also '"'
 * and '\\' (for the quoted msg value). */
static void append_escaped(char *line, size_t cap, int *n, const char *src, bool quoted)
{
    for (const unsigned char *p = (const unsigned char *)src; *p && (size_t)*n < cap - 8; p++) {
        unsigned char c = *p;
        if (c == '\n' || c == '\r' || c == '\t') {
            line[(*n)++] = '\\';
            line[(*n)++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if (c < 0x20 || c == 0x7f) {
            *n += snprintf(line + *n, cap - (size_t)*n, "\\x%02x", c);
        } else if (quoted && (c == '"' || c == '\\')) {
            line[(*n)++] = '\\';
            line[(*n)++] = (char)c;
        } else {
            line[(*n)++] = (char)c;
        }
    }
}

void log_emit(enum log_level level, const char *comp, const char *msg, const char *fields, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if ((int)level < min_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf(line, sizeof(line),
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ level=%s comp=%s msg=\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000, names[level], comp);
    if (n < 0)
        return;
    append_escaped(line, sizeof(line), &n, msg, true);
    line[n++] = '"';
    if (fields && *fields) {
        char formatted[1536];
        va_list ap;
        va_start(ap, fields);
        vsnprintf(formatted, sizeof(formatted), fields, ap);
        va_end(ap);
        line[n++] = ' ';
        append_escaped(line, sizeof(line), &n, formatted, false);
    }
    line[n++] = '\n';
    /* One write per line keeps lines whole when threads log at once. */
    fwrite(line, 1, (size_t)n, stderr);
}
