// fuzz-sources: src/controller/check.c src/scheduler/jobbuild.c src/host/jobspec.c
// fuzz-sources: src/lib/discover.c src/lib/store.c src/lib/store_watch.c src/lib/store_lease.c
// fuzz-sources: src/lib/httpc.c src/lib/clock.c src/lib/jsonx.c src/lib/buf.c src/lib/err.c
// fuzz-sources: src/lib/log.c src/lib/base64.c src/lib/uuid.c
// fuzz-flags: -ljansson -lcurl -lcrypto -lpthread
/* fuzz_release: POST /releases bodies, parsed as the controller parses
 * them (jsonx_parse_object), fed to check_release.
 *
 * Beyond crashes and sanitizer reports it checks what the store record
 * needs: a refusal is PIER_EINVAL with a message and hands nothing out; an
 * accepted release has artifacts (ids), env and meta (objects of strings,
 * env names the agent can set), processes (each with resources holding
 * memory and max_fd), and no other field but app_id. And it checks what
 * the scheduler will do with it: every process type with a command builds
 * into a job (jobbuild_spec) that the host agent accepts (jobspec_parse),
 * so no release is taken whose jobs can never start. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "host/jobspec.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/uuid.h"
#include "scheduler/jobbuild.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_release: check failed: %s (line %d)\n", #cond, __LINE__);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define APP_ID "0b7a0e38-3c1f-4f6e-9f56-2f6f4e1c8a11"
#define REL_ID "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
#define HOST_ID "h1"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

static bool strmap(const json_t *v)
{
    if (!json_is_object(v))
        return false;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x)
    {
        if (!json_is_string(x))
            return false;
    }
    return true;
}

/* The agent's rule for a variable name (jobspec.c). */
static bool env_name_ok(const char *k)
{
    if (!*k || (*k >= '0' && *k <= '9'))
        return false;
    for (const char *c = k; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '_'))
            return false;
    return true;
}

static bool has_command(const json_t *pt)
{
    return json_array_size(json_object_get(pt, "args")) > 0 ||
           json_array_size(json_object_get(pt, "entrypoint")) > 0 ||
           json_array_size(json_object_get(pt, "cmd")) > 0;
}

static void check_resources(const json_t *res)
{
    CHECK(json_is_object(res));
    CHECK(json_is_object(json_object_get(res, "memory")));
    CHECK(json_is_object(json_object_get(res, "max_fd")));
    const char *k;
    json_t *spec;
    json_object_foreach((json_t *)res, k, spec)
    {
        CHECK(json_is_object(spec));
        json_t *req = json_object_get(spec, "request"), *lim = json_object_get(spec, "limit");
        CHECK(!req || json_is_null(req) || json_is_integer(req));
        CHECK(!lim || json_is_null(lim) || json_is_integer(lim));
        CHECK(!json_is_integer(lim) || json_is_integer(req));
    }
}

/* Builds the job of type as the scheduler will and hands it to the agent's
 * parser, as the agent will. */
static void check_job(const json_t *rel, const char *type)
{
    json_t *app = json_pack("{s:s,s:s}", "id", APP_ID, "name", "my-app");
    json_t *r = json_deep_copy(rel);
    json_object_set_new(r, "id", json_string(REL_ID));
    json_t *arts = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(rel, "artifacts"), i, id)
    {
        json_array_append_new(arts, json_pack("{s:O,s:s,s:s}", "id", id, "type", "file", "uri",
                                              "https://blobs.example/slug.tgz"));
    }
    json_t *job = NULL;
    struct pier_err err = {0};
    int rc = jobbuild_spec(app, r, arts, type, NULL, &job, &err);
    if (rc != 0)
        fprintf(stderr, "fuzz_release: type %s: jobbuild_spec: %s\n", type, err.msg);
    CHECK(rc == 0);
    json_object_set_new(job, "host_id", json_string(HOST_ID));
    json_object_set_new(job, "id", json_string(HOST_ID "-" REL_ID));
    struct jobspec *s = NULL;
    rc = jobspec_parse(job, &s, &err);
    if (rc != 0)
        fprintf(stderr, "fuzz_release: type %s: the agent refuses the job: %s\n", type, err.msg);
    CHECK(rc == 0);
    jobspec_free(s);
    json_decref(job);
    json_decref(arts);
    json_decref(r);
    json_decref(app);
}

static void check_rel(const json_t *rel)
{
    CHECK(json_is_object(rel));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)rel, k, v)
    {
        CHECK(strcmp(k, "artifacts") == 0 || strcmp(k, "env") == 0 || strcmp(k, "meta") == 0 ||
              strcmp(k, "processes") == 0 || strcmp(k, "app_id") == 0);
    }
    const json_t *app_id = json_object_get(rel, "app_id");
    CHECK(!app_id || (json_is_string(app_id) && json_string_length(app_id) > 0));
    const json_t *arts = json_object_get(rel, "artifacts");
    CHECK(json_is_array(arts));
    size_t i;
    json_array_foreach(arts, i, v) CHECK(json_is_string(v) && uuid_ok(json_string_value(v)));
    CHECK(strmap(json_object_get(rel, "meta")));
    const json_t *env = json_object_get(rel, "env");
    CHECK(strmap(env));
    json_object_foreach((json_t *)env, k, v) CHECK(env_name_ok(k));
    const json_t *procs = json_object_get(rel, "processes");
    CHECK(json_is_object(procs));
    json_object_foreach((json_t *)procs, k, v)
    {
        CHECK(strlen(k) >= 1 && strlen(k) <= 63);
        CHECK(json_is_object(v));
        check_resources(json_object_get(v, "resources"));
        const char *ek;
        json_t *ev;
        if (json_is_object(json_object_get(v, "env")))
            json_object_foreach(json_object_get(v, "env"), ek, ev) CHECK(env_name_ok(ek));
        if (has_command(v))
            check_job(rel, k);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = NULL;
    if (jsonx_parse_object((const char *)data, size, &body, NULL) < 0)
        return 0;
    json_t *rel = (json_t *)&size; /* must stay untouched on a refusal */
    struct pier_err err = {0};
    int rc = check_release(body, &rel, &err);
    if (rc == 0) {
        check_rel(rel);
        json_decref(rel);
    } else {
        CHECK(rc == PIER_EINVAL && err.code == rc && err.msg[0] && rel == (json_t *)&size);
    }
    json_decref(body);
    return 0;
}
