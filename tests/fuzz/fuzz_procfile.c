// fuzz-sources: src/build/procfile.c src/lib/err.c
// fuzz-flags: -ljansson
/* fuzz_procfile: Procfiles, as the slug builder reads them from /app after
 * the build, fed to procfile_parse.
 *
 * Beyond crashes and sanitizer reports it checks what the release's
 * processes need: a refusal is PIER_EINVAL (PIER_ETOOBIG over the size
 * limit) with a message "Procfile line N: ..." naming a line of the input
 * (or "Procfile: ...") that is printable UTF-8, and hands nothing out; an
 * accepted file gives types of 1 to 63 of [A-Za-z0-9_-], each the start of
 * one of the input's lines, and commands that are non-empty UTF-8 without
 * NUL, control characters but tab, or surrounding blanks. Writing the
 * result back as "TYPE: COMMAND" lines and parsing it again gives the same
 * object, in the same order. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build/procfile.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_procfile: check failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static size_t count_lines(const char *d, size_t n)
{
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += d[i] == '\n';
    return lines;
}

static void check_refusal(int rc, const json_t *out, const struct pier_err *err, const char *d,
                          size_t n)
{
    CHECK(out == NULL);
    CHECK(err->code == rc);
    CHECK(rc == PIER_EINVAL || rc == PIER_ETOOBIG);
    CHECK((rc == PIER_ETOOBIG) == (n > PROCFILE_MAX_BYTES));
    json_t *msg = json_string(err->msg); /* UTF-8, so it can go into error JSON */
    CHECK(msg != NULL);
    json_decref(msg);
    for (const char *m = err->msg; *m; m++)
        CHECK((unsigned char)*m >= 0x20 && *m != 0x7f);
    if (rc == PIER_ETOOBIG) {
        CHECK(strncmp(err->msg, "Procfile: ", 10) == 0);
        return;
    }
    unsigned long line = 0;
    int used = 0;
    CHECK(sscanf(err->msg, "Procfile line %lu: %n", &line, &used) == 1 && used > 0);
    CHECK(line >= 1 && line <= count_lines(d, n));
    CHECK(err->msg[used] != '\0');
}

/* Whether type starts one of the lines of d (after an optional BOM). */
static int starts_a_line(const char *type, const char *d, size_t n)
{
    size_t tl = strlen(type);
    const char *p = d, *end = d + n;
    if (n >= 3 && memcmp(d, "\xef\xbb\xbf", 3) == 0)
        p += 3;
    while (p < end) {
        if ((size_t)(end - p) > tl && memcmp(p, type, tl) == 0 && p[tl] == ':')
            return 1;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl ? nl + 1 : end;
    }
    return 0;
}

static void check_accepted(json_t *out, const char *d, size_t n)
{
    CHECK(json_is_object(out));
    CHECK(json_object_size(out) <= count_lines(d, n));
    const char *type;
    json_t *cmd;
    size_t back_len = 0;
    json_object_foreach(out, type, cmd)
    {
        size_t tl = strlen(type);
        CHECK(tl >= 1 && tl <= PROCFILE_MAX_TYPE);
        CHECK(strspn(type, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
              tl);
        CHECK(starts_a_line(type, d, n));
        CHECK(json_is_string(cmd));
        const char *c = json_string_value(cmd);
        size_t cl = json_string_length(cmd);
        CHECK(cl > 0 && strlen(c) == cl);
        CHECK(c[0] != ' ' && c[0] != '\t');
        CHECK(c[cl - 1] != ' ' && c[cl - 1] != '\t' && c[cl - 1] != '\r');
        for (size_t i = 0; i < cl; i++)
            CHECK(((unsigned char)c[i] >= 0x20 && c[i] != 0x7f) || c[i] == '\t');
        back_len += tl + 2 + cl + 1;
    }

    /* Written back and read again: the same object, in the same order. */
    char *back = malloc(back_len + 1), *w = back;
    CHECK(back != NULL);
    json_object_foreach(out, type, cmd)
    {
        w += sprintf(w, "%s: %s\n", type, json_string_value(cmd));
    }
    json_t *again = NULL;
    struct pier_err err = {0};
    if (back_len <= PROCFILE_MAX_BYTES) {
        CHECK(procfile_parse(back, back_len, &again, &err) == 0);
        CHECK(json_equal(out, again));
        void *i = json_object_iter(out), *j = json_object_iter(again);
        for (; i && j; i = json_object_iter_next(out, i), j = json_object_iter_next(again, j))
            CHECK(strcmp(json_object_iter_key(i), json_object_iter_key(j)) == 0);
        json_decref(again);
    }
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    json_t *out = (json_t *)&size; /* must be set to NULL on a refusal */
    struct pier_err err = {0};
    int rc = procfile_parse(d, size, &out, &err);
    if (rc == 0) {
        CHECK(out != NULL);
        check_accepted(out, d, size);
        json_decref(out);
    } else {
        check_refusal(rc, out, &err, d, size);
    }
    return 0;
}
