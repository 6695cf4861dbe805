// fuzz-sources: src/build/relyaml.c src/lib/err.c
// fuzz-flags: -ljansson
/* fuzz_relyaml: what a buildpack's bin/release prints, fed to
 * relyaml_parse.
 *
 * Beyond crashes and sanitizer reports it checks what the slug builder
 * relies on: a refusal is PIER_EINVAL (PIER_ETOOBIG over the size limit)
 * with a message "bin/release output line N: ..." naming a line of the
 * input (or "bin/release output: ...") that is printable UTF-8, and hands
 * nothing out; an accepted document is an object whose values are null, a
 * string, an array of strings or an object of strings, with non-empty keys
 * and no NUL in any string. Writing the result back as YAML (every scalar double-quoted, the
 * collections as blocks) and parsing it again gives the same object. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build/relyaml.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_relyaml: check failed: %s (line %d)\n", #cond, __LINE__);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A growing output, enough for the write-back. */
struct out {
    char *p;
    size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
        CHECK(o->p != NULL);
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* s double-quoted, with escapes for what may not stand raw on a line. */
static void quote(struct out *o, const char *s)
{
    puts_(o, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(o, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            puts_(o, esc);
        } else {
            put(o, (const char *)&c, 1);
        }
    }
    puts_(o, "\"");
}

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
    CHECK((rc == PIER_ETOOBIG) == (n > RELYAML_MAX_BYTES));
    json_t *msg = json_string(err->msg);
    CHECK(msg != NULL);
    json_decref(msg);
    for (const char *m = err->msg; *m; m++)
        CHECK((unsigned char)*m >= 0x20 && *m != 0x7f);
    if (rc == PIER_ETOOBIG) {
        CHECK(strncmp(err->msg, "bin/release output: ", 20) == 0);
        return;
    }
    unsigned long line = 0;
    int used = 0;
    CHECK(sscanf(err->msg, "bin/release output line %lu: %n", &line, &used) == 1 && used > 0);
    CHECK(line >= 1 && line <= count_lines(d, n));
    CHECK(err->msg[used] != '\0');
}

static void check_string(const json_t *s)
{
    CHECK(json_is_string(s));
    CHECK(strlen(json_string_value(s)) == json_string_length(s));
}

static void check_accepted(json_t *doc)
{
    CHECK(json_is_object(doc));
    struct out o = {0};
    puts_(&o, "---\n");
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        CHECK(k[0] != '\0');
        quote(&o, k);
        puts_(&o, ":");
        if (json_is_null(v)) {
            puts_(&o, "\n");
        } else if (json_is_string(v)) {
            check_string(v);
            puts_(&o, " ");
            quote(&o, json_string_value(v));
            puts_(&o, "\n");
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            puts_(&o, json_array_size(v) ? "\n" : " []\n");
            json_array_foreach(v, i, e)
            {
                check_string(e);
                puts_(&o, "  - ");
                quote(&o, json_string_value(e));
                puts_(&o, "\n");
            }
        } else {
            CHECK(json_is_object(v));
            const char *k2;
            json_t *e;
            puts_(&o, json_object_size(v) ? "\n" : " {}\n");
            json_object_foreach(v, k2, e)
            {
                CHECK(k2[0] != '\0');
                check_string(e);
                puts_(&o, "    ");
                quote(&o, k2);
                puts_(&o, ": ");
                quote(&o, json_string_value(e));
                puts_(&o, "\n");
            }
        }
    }
    if (o.len <= RELYAML_MAX_BYTES) {
        json_t *again = NULL;
        struct pier_err err = {0};
        int rc = relyaml_parse(o.p, o.len, &again, &err);
        if (rc != 0)
            fprintf(stderr, "write-back refused: %s\n%s", err.msg, o.p);
        CHECK(rc == 0);
        CHECK(json_equal(doc, again));
        json_decref(again);
    }
    free(o.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    json_t *out = (json_t *)&size; /* must be set to NULL on a refusal */
    struct pier_err err = {0};
    int rc = relyaml_parse(d, size, &out, &err);
    if (rc == 0) {
        CHECK(out != NULL);
        check_accepted(out);
        json_decref(out);
    } else {
        check_refusal(rc, out, &err, d, size);
    }
    return 0;
}
