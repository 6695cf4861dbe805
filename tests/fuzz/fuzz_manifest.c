// fuzz-sources: src/bootstrap/manifest.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/fs.c src/lib/log.c src/lib/clock.c src/lib/base64.c
// fuzz-flags: -ljansson
/* fuzz_manifest: bootstrap manifests (docs/bootstrap.md) as a file may
 * hold them, fed to manifest_parse with the variables `pier up` gives.
 * The first byte picks the mode:
 *   even: the rest is the whole manifest;
 *   odd:  the rest is one string handed to manifest_fill.
 *
 * Beyond crashes and sanitizer reports it checks the header's promises: a
 * refusal is PIER_EINVAL with a message and hands nothing out; an accepted
 * manifest has the fields manifest.h lists, with their shapes, unique app
 * names, counts from 0 to 100 of types in processes, and no placeholder
 * left (no value below holds "{{"). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap/manifest.h"
#include "lib/log.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_manifest: check failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static json_t *vars;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    vars = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "DOMAIN", "pier.example", "STORE",
                     "http://127.0.0.1:2379", "KEY", "k", "STATE", "/var/lib/pier", "TLS_DIR",
                     "/var/lib/pier/tls", "HTTP_ADDR", "0.0.0.0:80", "HTTPS_ADDR", "0.0.0.0:443",
                     "SSH_ADDR", "0.0.0.0:2222");
    return 0;
}

/* No string under v holds "{{". */
static void no_placeholder(const json_t *v)
{
    const char *k;
    json_t *e;
    size_t i;
    if (json_is_string(v))
        CHECK(!strstr(json_string_value(v), "{{"));
    else if (json_is_array(v))
        json_array_foreach((json_t *)v, i, e) no_placeholder(e);
    else if (json_is_object(v))
        json_object_foreach((json_t *)v, k, e) no_placeholder(e);
}

static void strmap(const json_t *m)
{
    const char *k;
    json_t *v;
    CHECK(json_is_object(m));
    json_object_foreach((json_t *)m, k, v) CHECK(json_is_string(v));
}

static void check_manifest(const json_t *doc)
{
    const json_t *apps = json_object_get(doc, "apps");
    CHECK(json_is_array(apps) && json_array_size(apps) <= 64);
    CHECK(json_integer_value(json_object_get(doc, "version")) == 1);
    json_t *names = json_object();
    size_t i;
    json_t *a;
    json_array_foreach((json_t *)apps, i, a)
    {
        const char *name = json_string_value(json_object_get(a, "name"));
        CHECK(name && *name && !json_object_get(names, name));
        json_object_set_new(names, name, json_true());
        strmap(json_object_get(a, "env"));
        strmap(json_object_get(a, "meta"));
        const json_t *procs = json_object_get(a, "processes");
        CHECK(json_is_object(procs) && json_object_size(procs) > 0);
        const char *t;
        json_t *pt;
        json_object_foreach((json_t *)procs, t, pt)
        {
            const json_t *args = json_object_get(pt, "args");
            CHECK(json_is_array(args) && json_array_size(args) > 0);
        }
        const json_t *f = json_object_get(a, "formation");
        CHECK(json_is_object(f));
        json_t *n;
        json_object_foreach((json_t *)f, t, n)
        {
            CHECK(json_object_get(procs, t));
            CHECK(json_is_integer(n) && json_integer_value(n) >= 0 && json_integer_value(n) <= 100);
        }
        CHECK(json_is_array(json_object_get(a, "routes")));
    }
    json_decref(names);
    no_placeholder(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct pier_err err = {0};
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if ((data[0] & 1) == 0) {
        json_t *out = (json_t *)0x1;
        int rc = manifest_parse(text, len, vars, &out, &err);
        if (rc < 0) {
            CHECK(rc == PIER_EINVAL && err.msg[0] && out == NULL);
            return 0;
        }
        CHECK(rc == 0 && out);
        check_manifest(out);
        json_decref(out);
        return 0;
    }
    char *s = malloc(len + 1);
    memcpy(s, text, len);
    s[len] = '\0';
    char *out = NULL;
    int rc = manifest_fill(s, vars, &out, &err);
    if (rc < 0)
        CHECK(rc == PIER_EINVAL && err.msg[0] && out == NULL);
    else
        CHECK(out && !strstr(out, "{{"));
    free(out);
    free(s);
    return 0;
}
