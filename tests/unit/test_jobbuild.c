#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/err.h"
#include "scheduler/jobbuild.h"

#define GIB 1073741824LL
#define SLUG_SHA "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fail_msg("bad test JSON: %s: %s", e.text, text);
    return j;
}

static json_t *app(void)
{
    return parse("{\"id\":\"a1\",\"name\":\"shop\"}");
}

static const char *env_of(const json_t *job, const char *k)
{
    return json_string_value(json_object_get(json_object_get(job, "env"), k));
}

static json_t *build_ok(const char *release_text, const char *artifacts_text, const char *type,
                        const struct jobbuild_oneoff *oneoff)
{
    cleanup_json json_t *a = app();
    cleanup_json json_t *r = parse(release_text);
    cleanup_json json_t *arts = artifacts_text ? parse(artifacts_text) : NULL;
    json_t *job = NULL;
    struct pier_err err = {0};
    int rc = jobbuild_spec(a, r, arts, type, oneoff, &job, &err);
    if (rc != 0)
        fail_msg("jobbuild_spec: %d %s", rc, err.msg);
    return job;
}

static int build_err(const char *release_text, const char *artifacts_text, const char *type,
                     const struct jobbuild_oneoff *oneoff, struct pier_err *err)
{
    cleanup_json json_t *a = app();
    cleanup_json json_t *r = parse(release_text);
    cleanup_json json_t *arts = artifacts_text ? parse(artifacts_text) : NULL;
    json_t *job = (json_t *)1;
    int rc = jobbuild_spec(a, r, arts, type, oneoff, &job, err);
    assert_null(job);
    return rc;
}

static void test_service_job(void **state)
{
    (void)state;
    cleanup_json json_t *job =
        build_ok("{\"id\":\"r1\",\"env\":{\"A\":\"1\",\"B\":\"rel\"},\"processes\":{\"worker\":{"
                 "\"args\":[\"sleep\",\"1000\"],\"env\":{\"B\":\"type\"}}}}",
                 NULL, "worker", NULL);
    assert_string_equal(json_string_value(json_object_get(job, "app")), "a1");
    assert_string_equal(json_string_value(json_object_get(job, "release")), "r1");
    assert_string_equal(json_string_value(json_object_get(job, "type")), "worker");
    assert_string_equal(json_string_value(json_object_get(job, "desired_state")), "up");
    assert_null(json_object_get(job, "id"));
    assert_null(json_object_get(job, "host_id"));
    assert_null(json_object_get(job, "oneoff"));
    assert_true(json_is_true(json_object_get(job, "init")));
    assert_null(json_object_get(job, "artifact"));
    assert_int_equal(json_integer_value(json_object_get(job, "restarts")), 0);
    assert_non_null(json_string_value(json_object_get(job, "created_at")));
    cleanup_json json_t *args = parse("[\"sleep\",\"1000\"]");
    assert_true(json_equal(json_object_get(job, "args"), args));
    /* env: the release's, overridden by the type's, plus the platform's. */
    assert_string_equal(env_of(job, "A"), "1");
    assert_string_equal(env_of(job, "B"), "type");
    assert_string_equal(env_of(job, "FLYNN_APP_ID"), "a1");
    assert_string_equal(env_of(job, "FLYNN_RELEASE_ID"), "r1");
    assert_string_equal(env_of(job, "FLYNN_PROCESS_TYPE"), "worker");
    assert_string_equal(env_of(job, "APP_NAME"), "shop");
    assert_string_equal(env_of(job, "DYNO"), "worker.1");
    /* A worker declares no ports: it gets none. */
    assert_int_equal(json_array_size(json_object_get(job, "ports")), 0);
    /* Flynn's default resources. */
    assert_int_equal(jobbuild_memory(job), GIB);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(job, "resources"), "max_fd"), "limit")),
                     10000);
    jobbuild_set_index(job, 3);
    assert_string_equal(env_of(job, "DYNO"), "worker.3");
}

static void test_entrypoint_and_cmd(void **state)
{
    (void)state;
    cleanup_json json_t *job =
        build_ok("{\"id\":\"r1\",\"processes\":{\"foo\":{\"entrypoint\":[\"/bin/sh\",\"-c\"],"
                 "\"cmd\":[\"ls -l\"]}}}",
                 NULL, "foo", NULL);
    cleanup_json json_t *args = parse("[\"/bin/sh\",\"-c\",\"ls -l\"]");
    assert_true(json_equal(json_object_get(job, "args"), args));
    /* Flynn's example release: "cmd" alone. */
    cleanup_json json_t *job2 = build_ok(
        "{\"id\":\"r1\",\"processes\":{\"foo\":{\"cmd\":[\"ls\",\"-l\"]}}}", NULL, "foo", NULL);
    cleanup_json json_t *args2 = parse("[\"ls\",\"-l\"]");
    assert_true(json_equal(json_object_get(job2, "args"), args2));
}

static void test_artifacts(void **state)
{
    (void)state;
    const char *arts = "[{\"id\":\"s1\",\"type\":\"flynn\",\"uri\":\"file:///var/lib/stack\"},"
                       "{\"id\":\"g1\",\"type\":\"file\",\"uri\":\"http://blob/slug.tgz\"}]";
    cleanup_json json_t *job = build_ok("{\"id\":\"r1\",\"artifacts\":[\"s1\",\"g1\"],"
                                        "\"processes\":{\"web\":{\"args\":[\"x\"]}}}",
                                        arts, "web", NULL);
    json_t *a = json_object_get(job, "artifact");
    assert_string_equal(json_string_value(json_object_get(a, "stack")), "/var/lib/stack");
    assert_string_equal(json_string_value(json_object_get(a, "slug")), "http://blob/slug.tgz");
    /* The older single "artifact" field. */
    cleanup_json json_t *job2 =
        build_ok("{\"id\":\"r1\",\"artifact\":\"g1\",\"processes\":{\"web\":{\"args\":[\"x\"]}}}",
                 arts, "web", NULL);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(job2, "artifact"), "slug")),
        "http://blob/slug.tgz");

    struct pier_err err = {0};
    assert_int_equal(build_err("{\"id\":\"r1\",\"artifacts\":[\"nope\"],\"processes\":{\"web\":{"
                               "\"args\":[\"x\"]}}}",
                               arts, "web", NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "artifact nope of release r1 not found"));
    assert_int_equal(build_err("{\"id\":\"r1\",\"artifacts\":[\"d1\"],\"processes\":{\"web\":{"
                               "\"args\":[\"x\"]}}}",
                               "[{\"id\":\"d1\",\"type\":\"oci\",\"uri\":\"x\"}]", "web", NULL,
                               &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "unknown type 'oci'"));
    assert_int_equal(build_err("{\"id\":\"r1\",\"artifacts\":[\"d1\"],\"processes\":{\"web\":{"
                               "\"args\":[\"x\"]}}}",
                               "[{\"id\":\"d1\",\"type\":\"flynn\",\"uri\":\"https://x\"}]", "web",
                               NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "file:///DIR"));
}

/* A type's mounts and linux_capabilities are copied as they are; a
 * pier:host flynn artifact runs the job on the host's binds. */
static void test_host_fields(void **state)
{
    (void)state;
    const char *rel = "{\"id\":\"r1\",\"artifacts\":[\"h1\",\"g1\"],\"processes\":{"
                      "\"app\":{\"args\":[\"x\"],\"mounts\":[{\"location\":\"/srv/d\","
                      "\"target\":\"/data\",\"writeable\":true}],"
                      "\"linux_capabilities\":[\"CAP_NET_BIND_SERVICE\"]},"
                      "\"plain\":{\"args\":[\"y\"],\"mounts\":null}}}";
    const char *arts = "[{\"id\":\"h1\",\"type\":\"flynn\",\"uri\":\"pier:host\"},"
                       "{\"id\":\"g1\",\"type\":\"file\",\"uri\":\"file:///s/p.tgz\"}]";
    cleanup_json json_t *job = build_ok(rel, arts, "app", NULL);
    cleanup_json json_t *want_mounts =
        parse("[{\"location\":\"/srv/d\",\"target\":\"/data\",\"writeable\":true}]");
    assert_true(json_equal(json_object_get(job, "mounts"), want_mounts));
    cleanup_json json_t *want_caps = parse("[\"CAP_NET_BIND_SERVICE\"]");
    assert_true(json_equal(json_object_get(job, "linux_capabilities"), want_caps));
    json_t *a = json_object_get(job, "artifact");
    assert_string_equal(json_string_value(json_object_get(a, "stack")), "host");
    assert_string_equal(json_string_value(json_object_get(a, "slug")), "file:///s/p.tgz");
    /* A copy: the release is not shared with the job. */
    json_array_clear(json_object_get(job, "mounts"));
    cleanup_json json_t *again = build_ok(rel, arts, "app", NULL);
    assert_int_equal(json_array_size(json_object_get(again, "mounts")), 1);

    cleanup_json json_t *plain = build_ok(rel, arts, "plain", NULL);
    assert_null(json_object_get(plain, "mounts"));
    assert_null(json_object_get(plain, "linux_capabilities"));

    struct pier_err err = {0};
    assert_int_equal(build_err("{\"id\":\"r1\",\"artifacts\":[\"d1\"],\"processes\":{\"web\":{"
                               "\"args\":[\"x\"]}}}",
                               "[{\"id\":\"d1\",\"type\":\"flynn\",\"uri\":\"pier:other\"}]", "web",
                               NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "pier:host"));
}

/* A pier:pierd file artifact: "pierd": true, no slug and no hash, beside
 * the pier:host stack; other pier: uris of flynn artifacts stay refused. */
static void test_pierd(void **state)
{
    (void)state;
    const char *rel = "{\"id\":\"r1\",\"artifacts\":[\"p1\",\"h1\"],\"processes\":{"
                      "\"app\":{\"args\":[\"/app/pierd\",\"discoverd\"]}}}";
    const char *arts = "[{\"id\":\"p1\",\"type\":\"file\",\"uri\":\"" JOBBUILD_PIERD_URI "\","
                       "\"meta\":{\"sha256\":\"" SLUG_SHA "\",\"slugrunner\":\"true\"}},"
                       "{\"id\":\"h1\",\"type\":\"flynn\",\"uri\":\"pier:host\"}]";
    cleanup_json json_t *job = build_ok(rel, arts, "app", NULL);
    cleanup_json json_t *want = parse("{\"pierd\":true,\"stack\":\"host\"}");
    assert_true(json_equal(json_object_get(job, "artifact"), want));
    /* pierd is no slug: nothing runs it under pierslug. */
    json_t *args = json_object_get(job, "args");
    assert_int_equal(json_array_size(args), 2);
    assert_string_equal(json_string_value(json_array_get(args, 0)), "/app/pierd");

    struct pier_err err = {0};
    assert_int_equal(build_err(rel,
                               "[{\"id\":\"p1\",\"type\":\"flynn\",\"uri\":\"pier:pierd\"},"
                               "{\"id\":\"h1\",\"type\":\"flynn\",\"uri\":\"pier:host\"}]",
                               "app", NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "pier:pierd"));
}

/* A slug pier built (meta.slugrunner "true") runs under pierslug: service
 * and one-off jobs alike; other slugs and pierslug's own commands as they
 * are. */
static void test_slugrunner(void **state)
{
    (void)state;
    const char *arts = "[{\"id\":\"g1\",\"type\":\"file\",\"uri\":\"http://blob/s.tgz\","
                       "\"meta\":{\"slugrunner\":\"true\",\"blobstore\":\"true\","
                       "\"sha256\":\"" SLUG_SHA "\"}},"
                       "{\"id\":\"g2\",\"type\":\"file\",\"uri\":\"http://blob/t.tgz\","
                       "\"meta\":{\"slugrunner\":\"false\",\"sha256\":\"\"}}]";
    const char *rel = "{\"id\":\"r1\",\"artifacts\":[\"g1\"],"
                      "\"processes\":{\"web\":{\"args\":[\"node server.js\"]}}}";
    cleanup_json json_t *job = build_ok(rel, arts, "web", NULL);
    cleanup_json json_t *want = parse("[\"/.pier/pierslug\",\"run\",\"node server.js\"]");
    assert_true(json_equal(json_object_get(job, "args"), want));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(job, "artifact"), "slug")),
        "http://blob/s.tgz");
    /* The hash the build recorded goes to the agent, which checks it. */
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(job, "artifact"), "slug_sha256")),
        SLUG_SHA);

    cleanup_json json_t *args = parse("[\"bash\"]");
    struct jobbuild_oneoff o = {.args = args};
    cleanup_json json_t *run = build_ok(rel, arts, NULL, &o);
    cleanup_json json_t *want_run = parse("[\"/.pier/pierslug\",\"run\",\"bash\"]");
    assert_true(json_equal(json_object_get(run, "args"), want_run));

    cleanup_json json_t *bargs = parse("[\"/.pier/pierslug\",\"build\"]");
    struct jobbuild_oneoff b = {.args = bargs};
    cleanup_json json_t *build = build_ok(rel, arts, NULL, &b);
    assert_true(json_equal(json_object_get(build, "args"), bargs));

    cleanup_json json_t *plain = build_ok("{\"id\":\"r1\",\"artifacts\":[\"g2\"],"
                                          "\"processes\":{\"web\":{\"args\":[\"x\"]}}}",
                                          arts, "web", NULL);
    cleanup_json json_t *want_plain = parse("[\"x\"]");
    assert_true(json_equal(json_object_get(plain, "args"), want_plain));
    /* A slug without a recorded hash ("" says so too): none to check. */
    assert_null(json_object_get(json_object_get(plain, "artifact"), "slug_sha256"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(run, "artifact"), "slug_sha256")),
        SLUG_SHA);
}

static void test_resources(void **state)
{
    (void)state;
    cleanup_json json_t *job = build_ok("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"],"
                                        "\"resources\":{\"memory\":{\"limit\":67108864}}}}}",
                                        NULL, "web", NULL);
    assert_int_equal(jobbuild_memory(job), 64LL << 20);
    /* What the type does not name keeps Flynn's default. */
    assert_non_null(json_object_get(json_object_get(job, "resources"), "max_fd"));
    /* A one-off's resources win. */
    cleanup_json json_t *res = parse("{\"memory\":{\"limit\":33554432}}");
    struct jobbuild_oneoff o = {.resources = res};
    cleanup_json json_t *job2 = build_ok("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"],"
                                         "\"resources\":{\"memory\":{\"limit\":67108864}}}}}",
                                         NULL, "web", &o);
    assert_int_equal(jobbuild_memory(job2), 32LL << 20);
    struct pier_err err = {0};
    assert_int_equal(build_err("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"],"
                               "\"resources\":{\"memory\":{\"limit\":\"lots\"}}}}}",
                               NULL, "web", NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "resources.memory.limit"));
    /* A record without resources counts the agent's default. */
    cleanup_json json_t *bare = parse("{\"args\":[\"x\"]}");
    assert_int_equal(jobbuild_memory(bare), GIB);
}

static void test_ports(void **state)
{
    (void)state;
    /* web without ports: one, registered as <app>-web. */
    cleanup_json json_t *job =
        build_ok("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"]}}}", NULL, "web", NULL);
    json_t *ports = json_object_get(job, "ports");
    assert_int_equal(json_array_size(ports), 1);
    json_t *p0 = json_array_get(ports, 0);
    assert_int_equal(json_integer_value(json_object_get(p0, "port")), 0);
    assert_string_equal(json_string_value(json_object_get(p0, "proto")), "tcp");
    assert_string_equal(json_string_value(json_object_get(json_object_get(p0, "service"), "name")),
                        "shop-web");
    /* Declared ports: the number is not kept, the service and check are. */
    cleanup_json json_t *job2 = build_ok(
        "{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"],\"ports\":[{\"port\":8080,"
        "\"proto\":\"tcp\",\"service\":{\"name\":\"shop-web\",\"create\":true,\"check\":{"
        "\"type\":\"http\",\"path\":\"/ok\",\"interval\":2000000000,\"killDown\":true}}},"
        "{\"port\":9000,\"proto\":\"udp\"}]}}}",
        NULL, "web", NULL);
    ports = json_object_get(job2, "ports");
    assert_int_equal(json_array_size(ports), 2);
    p0 = json_array_get(ports, 0);
    assert_int_equal(json_integer_value(json_object_get(p0, "port")), 0);
    json_t *check = json_object_get(json_object_get(p0, "service"), "check");
    assert_string_equal(json_string_value(json_object_get(check, "type")), "http");
    assert_string_equal(json_string_value(json_object_get(check, "path")), "/ok");
    assert_string_equal(json_string_value(json_object_get(check, "interval")), "2000ms");
    assert_null(json_object_get(check, "killDown"));
    json_t *p1 = json_array_get(ports, 1);
    assert_string_equal(json_string_value(json_object_get(p1, "proto")), "udp");
    assert_null(json_object_get(p1, "service"));
    /* ports: [] means none, even for web. */
    cleanup_json json_t *job3 =
        build_ok("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"],\"ports\":[]}}}", NULL,
                 "web", NULL);
    assert_int_equal(json_array_size(json_object_get(job3, "ports")), 0);
}

static void test_oneoff(void **state)
{
    (void)state;
    cleanup_json json_t *args = parse("[\"sh\",\"-c\",\"exit 3\"]");
    cleanup_json json_t *env = parse("{\"B\":\"oneoff\"}");
    cleanup_json json_t *meta = parse("{\"k\":\"v\"}");
    struct jobbuild_oneoff o = {
        .args = args, .env = env, .meta = meta, .tty = true, .tty_columns = 120, .tty_lines = 40};
    cleanup_json json_t *job = build_ok(
        "{\"id\":\"r1\",\"env\":{\"B\":\"rel\"},\"processes\":{\"web\":{\"args\":[\"x\"]}}}", NULL,
        NULL, &o);
    assert_true(json_equal(json_object_get(job, "args"), args));
    assert_true(json_is_true(json_object_get(job, "oneoff")));
    assert_null(json_object_get(job, "init"));
    assert_true(json_is_true(json_object_get(job, "tty")));
    assert_true(json_is_true(json_object_get(job, "stdin")));
    assert_int_equal(json_integer_value(json_object_get(job, "tty_columns")), 120);
    assert_int_equal(json_integer_value(json_object_get(job, "tty_lines")), 40);
    assert_true(json_equal(json_object_get(job, "meta"), meta));
    assert_null(json_object_get(job, "type"));
    assert_string_equal(env_of(job, "B"), "oneoff");
    assert_null(env_of(job, "FLYNN_PROCESS_TYPE"));
    assert_int_equal(strncmp(env_of(job, "DYNO"), "run.", 4), 0);
    assert_int_equal(json_array_size(json_object_get(job, "ports")), 0);
    /* A one-off of a type takes the type's args when it gives none. */
    struct jobbuild_oneoff plain = {0};
    cleanup_json json_t *job2 =
        build_ok("{\"id\":\"r1\",\"processes\":{\"release\":{\"args\":[\"migrate\"]}}}", NULL,
                 "release", &plain);
    assert_string_equal(json_string_value(json_array_get(json_object_get(job2, "args"), 0)),
                        "migrate");
    assert_true(json_is_true(json_object_get(job2, "oneoff")));
}

static void test_bad_input(void **state)
{
    (void)state;
    struct pier_err err = {0};
    assert_int_equal(build_err("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"]}}}", NULL,
                               "worker", NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "release r1 has no process type 'worker'"));
    assert_int_equal(
        build_err("{\"id\":\"r1\",\"processes\":{\"web\":{}}}", NULL, "web", NULL, &err),
        PIER_EINVAL);
    assert_non_null(strstr(err.msg, "has no args"));
    assert_int_equal(build_err("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[1]}}}", NULL,
                               "web", NULL, &err),
                     PIER_EINVAL);
    assert_int_equal(build_err("{\"id\":\"r1\",\"env\":{\"A\":1},\"processes\":{\"web\":{"
                               "\"args\":[\"x\"]}}}",
                               NULL, "web", NULL, &err),
                     PIER_EINVAL);
    assert_non_null(strstr(err.msg, "A"));
    struct jobbuild_oneoff none = {0};
    assert_int_equal(build_err("{\"id\":\"r1\"}", NULL, NULL, &none, &err), PIER_EINVAL);
    assert_int_equal(build_err("{\"id\":\"r1\"}", NULL, NULL, NULL, &err), PIER_EINVAL);
    /* No ids. */
    cleanup_json json_t *a = parse("{\"name\":\"x\"}");
    cleanup_json json_t *r = parse("{\"id\":\"r1\",\"processes\":{\"web\":{\"args\":[\"x\"]}}}");
    json_t *job = NULL;
    assert_int_equal(jobbuild_spec(a, r, NULL, "web", NULL, &job, &err), PIER_EINVAL);
    assert_null(job);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_job), cmocka_unit_test(test_entrypoint_and_cmd),
        cmocka_unit_test(test_artifacts),   cmocka_unit_test(test_slugrunner),
        cmocka_unit_test(test_resources),   cmocka_unit_test(test_ports),
        cmocka_unit_test(test_oneoff),      cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_host_fields), cmocka_unit_test(test_pierd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
