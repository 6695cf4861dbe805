// fuzz-sources: src/controller/check.c src/scheduler/jobbuild.c src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_scale: formation and scale request bodies (PUT
 * /apps/:app/formations/:release, PUT /apps/:app/scale/:release), fed to
 * check_scale. The input is one JSON object (parsed as the controller
 * parses bodies):
 *   "processes" / "tags": the body's counts and tags, as a formation PUT
 *       sends them (null counts as absent, as the handler reads it);
 *   "protected": the app's flag;
 *   "old": the formation as stored before (its "processes" matter);
 *   "types": the release's process types (default web, worker).
 *
 * Beyond crashes and sanitizer reports it checks what the formation
 * record needs: a refusal is PIER_EINVAL with a message; accepted counts
 * are integers from 0 to CHECK_SCALE_MAX of the release's types, tags are
 * objects of strings of the release's types, and a protected app keeps
 * every type that ran. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_scale: check failed: %s (line %d)\n", #cond, __LINE__);          \
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

static json_t *null_is_absent(json_t *v)
{
    return json_is_null(v) ? NULL : v;
}

static int64_t count(const json_t *procs, const char *type)
{
    json_t *v = json_object_get(procs, type);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

static void check_accepted(const json_t *app, const json_t *rel, const json_t *old,
                           const json_t *procs, const json_t *tags)
{
    const json_t *types = json_object_get(rel, "processes");
    CHECK(!procs || json_is_object(procs));
    CHECK(!tags || json_is_object(tags));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)procs, k, v)
    {
        CHECK(json_is_integer(v));
        CHECK(json_integer_value(v) >= 0 && json_integer_value(v) <= CHECK_SCALE_MAX);
        CHECK(json_object_get(types, k));
    }
    json_object_foreach((json_t *)tags, k, v)
    {
        CHECK(json_object_get(types, k));
        CHECK(json_is_null(v) || json_is_object(v));
        const char *tk;
        json_t *tv;
        json_object_foreach(v, tk, tv) CHECK(json_is_string(tv));
    }
    if (!json_is_true(json_object_get(app, "protected")))
        return;
    json_object_foreach((json_t *)types, k, v)
    {
        CHECK(!(count(json_object_get(old, "processes"), k) > 0 && count(procs, k) == 0));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *in = NULL;
    if (jsonx_parse_object((const char *)data, size, &in, NULL) < 0)
        return 0;
    json_t *app = json_pack("{s:s,s:s,s:O?}", "id", "0b7a0e38-3c1f-4f6e-9f56-2f6f4e1c8a11", "name",
                            "my-app", "protected", json_object_get(in, "protected"));
    json_t *types = json_object_get(in, "types");
    json_t *rel = json_pack("{s:s,s:O?}", "id", "6ba7b810-9dad-41d1-80b4-00c04fd430c8", "processes",
                            json_is_object(types) ? types : NULL);
    if (!json_is_object(types))
        json_object_set_new(rel, "processes", json_pack("{s:{},s:{}}", "web", "worker"));
    json_t *old = json_object_get(in, "old");
    json_t *procs = null_is_absent(json_object_get(in, "processes"));
    json_t *tags = null_is_absent(json_object_get(in, "tags"));
    struct pier_err err = {0};
    int rc = check_scale(app, rel, old, procs, tags, &err);
    if (rc == 0)
        check_accepted(app, rel, old, procs, tags);
    else
        CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0]);
    json_decref(rel);
    json_decref(app);
    json_decref(in);
    return 0;
}
