// fuzz-sources: src/controller/check.c src/scheduler/jobbuild.c src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_events_query: the query arguments of GET /events (count,
 * before_id, since_id, the Last-Event-Id header, object_types) and of the
 * formations stream (since). The input is split at its first two
 * newlines: an id for check_event_id, a list for check_event_types, a
 * time for clock_parse_rfc3339 (each a C string, so it ends at a NUL as a query
 * argument would).
 *
 * Beyond crashes and sanitizer reports it checks: an accepted id is 1 to
 * 18 digits and their value; the types are the non-empty items between
 * commas, in order; an accepted time has RFC 3339's shape with every field
 * in its range, and printing the instant again in UTC reads back the same
 * instant. */
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controller/check.h"
#include "lib/clock.h"
#include "lib/log.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_events_query: check failed: %s (line %d)\n", #cond, __LINE__);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static void fuzz_id(const char *s)
{
    int64_t v = -1;
    if (!check_event_id(s, &v)) {
        CHECK(v == -1);
        return;
    }
    size_t n = strlen(s);
    CHECK(n >= 1 && n <= 18);
    int64_t want = 0;
    for (const char *c = s; *c; c++) {
        CHECK(isdigit((unsigned char)*c));
        want = want * 10 + (*c - '0');
    }
    CHECK(v == want && v >= 0);
}

static void fuzz_types(const char *s)
{
    json_t *t = check_event_types(s);
    CHECK(json_is_array(t));
    size_t i = 0;
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, ",");
        if (n > 0) {
            const json_t *v = json_array_get(t, i++);
            CHECK(json_is_string(v) && json_string_length(v) == n &&
                  memcmp(json_string_value(v), p, n) == 0);
        }
        p += n + (p[n] == ',');
    }
    CHECK(json_array_size(t) == i);
    json_decref(t);
}

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* RFC 3339's date-time, with a space for '+' (form encoding). */
static bool rfc3339_shape(const char *s)
{
    if (strlen(s) < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2) || s[13] != ':' ||
        !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
        return false;
    int mo = num(s + 5, 2), d = num(s + 8, 2), h = num(s + 11, 2), mi = num(s + 14, 2),
        sec = num(s + 17, 2);
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        size_t n = strspn(p + 1, "0123456789");
        if (n == 0)
            return false;
        p += 1 + n;
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if (*p != '+' && *p != '-' && *p != ' ')
        return false;
    return strlen(p) == 6 && digits(p + 1, 2) && p[3] == ':' && digits(p + 4, 2) &&
           num(p + 1, 2) <= 23 && num(p + 4, 2) <= 59;
}

static void fuzz_time(const char *s)
{
    int64_t us = 0;
    if (clock_parse_rfc3339(s, &us) < 0)
        return;
    if (!rfc3339_shape(s))
        fprintf(stderr, "fuzz_events_query: took \"%s\"\n", s);
    CHECK(rfc3339_shape(s));
    /* Printed again in UTC, the instant reads back the same. */
    time_t t = (time_t)(us / 1000000 - (us % 1000000 < 0));
    int64_t frac = us - (int64_t)t * 1000000;
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
        return;
    char again[64];
    snprintf(again, sizeof(again), "%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
    int64_t us2 = 0;
    CHECK(clock_parse_rfc3339(again, &us2) == 0 && us2 == us);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    memcpy(in, data, size);
    in[size] = '\0';
    char *types = strchr(in, '\n');
    if (types)
        *types++ = '\0';
    char *time = types ? strchr(types, '\n') : NULL;
    if (time)
        *time++ = '\0';
    fuzz_id(in);
    fuzz_types(types ? types : "");
    fuzz_time(time ? time : in);
    free(in);
    return 0;
}
