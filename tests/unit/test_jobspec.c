#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/jobspec.h"
#include "lib/buf.h"
#include "lib/cleanup.h"

/* A minimal record with fields merged in from extra (a JSON object text). */
static json_t *record(const char *extra)
{
    json_t *r =
        json_pack("{s:s, s:s, s:[s]}", "id", "h1-abc", "host_id", "h1", "args", "/bin/true");
    if (extra) {
        json_error_t je;
        json_t *x = json_loads(extra, JSON_ALLOW_NUL, &je);
        if (!x) {
            fprintf(stderr, "bad test JSON %s: %s\n", extra, je.text);
            abort();
        }
        json_object_update(r, x);
        json_decref(x);
    }
    return r;
}

/* Parses record(extra) and expects a refusal whose message holds want. */
static void refused(const char *extra, const char *want)
{
    cleanup_json json_t *r = record(extra);
    struct jobspec *s = (struct jobspec *)0x1;
    struct pier_err err = {0};
    int rc = jobspec_parse(r, &s, &err);
    if (rc != PIER_EINVAL || !strstr(err.msg, want)) {
        fprintf(stderr, "record %s: rc %d, message \"%s\", wanted \"%s\"\n", extra, rc, err.msg,
                want);
        fail();
    }
    assert_null(s);
    assert_int_equal(err.code, PIER_EINVAL);
}

static struct jobspec *parsed(const char *extra)
{
    cleanup_json json_t *r = record(extra);
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    if (jobspec_parse(r, &s, &err) != 0) {
        fprintf(stderr, "record %s refused: %s\n", extra, err.msg);
        fail();
    }
    return s;
}

static void test_defaults(void **state)
{
    (void)state;
    struct jobspec *s = parsed(NULL);
    assert_string_equal(s->id, "h1-abc");
    assert_string_equal(s->host_id, "h1");
    assert_null(s->app);
    assert_true(s->desired_up);
    assert_int_equal(s->stop_grace_ms, JOBSPEC_DEFAULT_STOP_GRACE_MS);
    assert_int_equal(s->n_args, 1);
    assert_string_equal(s->args[0], "/bin/true");
    assert_null(s->args[1]);
    assert_int_equal(s->n_env, 0);
    assert_non_null(s->env);
    assert_null(s->env[0]);
    assert_string_equal(s->working_dir, "/app");
    assert_null(s->stack);
    assert_null(s->slug);
    assert_false(s->pierd);
    assert_int_equal(s->memory, JOBSPEC_DEFAULT_MEMORY);
    assert_int_equal(s->cpu, JOBSPEC_DEFAULT_CPU);
    assert_int_equal(s->max_fd, JOBSPEC_DEFAULT_MAX_FD);
    assert_int_equal(s->max_procs, JOBSPEC_DEFAULT_MAX_PROCS);
    /* ports absent: one port the agent picks */
    assert_int_equal(s->n_ports, 1);
    assert_int_equal(s->ports[0].port, 0);
    assert_string_equal(s->ports[0].proto, "tcp");
    assert_null(s->ports[0].service);
    assert_int_equal(s->ports[0].check.type, JOBSPEC_CHECK_NONE);
    assert_false(s->tty);
    assert_int_equal(s->tty_columns, 80);
    assert_int_equal(s->tty_lines, 24);
    assert_false(s->stdin_open);
    assert_false(s->init);
    assert_false(s->disable_log);
    jobspec_free(s);
    jobspec_free(NULL);
}

static void test_full(void **state)
{
    (void)state;
    struct jobspec *s = parsed(
        "{\"app\":\"web-api\",\"release\":\"r1\",\"type\":\"web\",\"meta\":{\"k\":\"v\"},"
        "\"desired_state\":\"down\",\"stop_grace\":2.5,"
        "\"args\":[\"/bin/sh\",\"-c\",\"\"],\"env\":{\"A\":\"1\",\"_b2\":\"x=y\",\"E\":\"\"},"
        "\"working_dir\":\"/srv\",\"artifact\":{\"stack\":\"host\","
        "\"slug\":\"https://blob:8080/s.tgz\",\"other\":1},"
        "\"resources\":{\"memory\":{\"limit\":268435456,\"request\":1},\"cpu\":{\"limit\":500},"
        "\"max_fd\":{\"limit\":100},\"max_procs\":{\"limit\":50},\"disk\":{\"limit\":\"x\"}},"
        "\"ports\":[{\"port\":8080,\"service\":{\"name\":\"web-api-web\",\"check\":{\"type\":"
        "\"http\",\"path\":\"/health?x=1\",\"status\":0,\"interval\":\"250ms\","
        "\"threshold\":5}}},{\"proto\":\"udp\"},{\"port\":8080,\"proto\":\"udp\"},"
        "{\"service\":{\"name\":\"x\",\"check\":{}}}],"
        "\"tty\":true,\"tty_columns\":120,\"tty_lines\":40,\"init\":true,\"disable_log\":true,"
        "\"state\":\"up\",\"exit_status\":\"not a number\",\"allocated_ports\":7,"
        "\"restarts\":{},\"someone_else\":[1,2]}");
    assert_string_equal(s->app, "web-api");
    assert_string_equal(s->release, "r1");
    assert_string_equal(s->type, "web");
    assert_false(s->desired_up);
    assert_int_equal(s->stop_grace_ms, 2500);
    assert_int_equal(s->n_args, 3);
    assert_string_equal(s->args[2], "");
    assert_int_equal(s->n_env, 3);
    assert_string_equal(s->env[0], "A=1");
    assert_string_equal(s->env[1], "_b2=x=y");
    assert_string_equal(s->env[2], "E=");
    assert_null(s->env[3]);
    assert_string_equal(s->working_dir, "/srv");
    assert_string_equal(s->stack, "host");
    assert_string_equal(s->slug, "https://blob:8080/s.tgz");
    assert_int_equal(s->memory, 268435456);
    assert_int_equal(s->cpu, 500);
    assert_int_equal(s->max_fd, 100);
    assert_int_equal(s->max_procs, 50);
    assert_int_equal(s->n_ports, 4);
    struct jobspec_port *p = &s->ports[0];
    assert_int_equal(p->port, 8080);
    assert_string_equal(p->proto, "tcp");
    assert_string_equal(p->service, "web-api-web");
    assert_int_equal(p->check.type, JOBSPEC_CHECK_HTTP);
    assert_string_equal(p->check.path, "/health?x=1");
    assert_int_equal(p->check.status, 0);
    assert_int_equal(p->check.interval_ms, 250);
    assert_int_equal(p->check.timeout_ms, 250);
    assert_int_equal(p->check.threshold, 5);
    assert_int_equal(s->ports[1].port, 0);
    assert_string_equal(s->ports[1].proto, "udp");
    assert_null(s->ports[1].service);
    assert_int_equal(s->ports[2].port, 8080); /* 8080/udp next to 8080/tcp */
    p = &s->ports[3];
    assert_string_equal(p->service, "x");
    assert_int_equal(p->check.type, JOBSPEC_CHECK_TCP);
    assert_null(p->check.path);
    assert_int_equal(p->check.interval_ms, 1000);
    assert_int_equal(p->check.timeout_ms, 1000);
    assert_int_equal(p->check.threshold, 2);
    assert_true(s->tty);
    assert_true(s->stdin_open); /* always with a tty */
    assert_int_equal(s->tty_columns, 120);
    assert_int_equal(s->tty_lines, 40);
    assert_true(s->init);
    assert_true(s->disable_log);
    jobspec_free(s);

    s = parsed("{\"ports\":[],\"artifact\":{\"stack\":\"/var/lib/pier/stacks/s1\","
               "\"slug\":\"file:///var/slugs/a.tgz\"},\"stdin\":true,\"stop_grace\":0,"
               "\"desired_state\":null,\"env\":null,\"resources\":{\"cpu\":{}}}");
    assert_int_equal(s->n_ports, 0);
    assert_string_equal(s->stack, "/var/lib/pier/stacks/s1");
    assert_string_equal(s->slug, "file:///var/slugs/a.tgz");
    assert_true(s->stdin_open);
    assert_false(s->tty);
    assert_int_equal(s->stop_grace_ms, 0);
    assert_true(s->desired_up);
    assert_int_equal(s->cpu, JOBSPEC_DEFAULT_CPU);
    jobspec_free(s);

    s = parsed("{\"ports\":[{\"port\":80,\"service\":{\"name\":\"w\",\"check\":{\"type\":"
               "\"http\",\"interval\":\"1m\",\"timeout\":\"1.5s\"}}}]}");
    assert_string_equal(s->ports[0].check.path, "/");
    assert_int_equal(s->ports[0].check.status, 200);
    assert_int_equal(s->ports[0].check.interval_ms, 60000);
    assert_int_equal(s->ports[0].check.timeout_ms, 1500);
    jobspec_free(s);

    s = parsed("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"interval\":10}}}]}");
    assert_int_equal(s->ports[0].check.interval_ms, 10000);
    assert_int_equal(s->ports[0].check.timeout_ms, 2000);
    jobspec_free(s);
}

static void test_identity_refused(void **state)
{
    (void)state;
    refused("{\"id\":null}", "id: required");
    refused("{\"id\":5}", "id: must be a string, got an integer");
    refused("{\"id\":\"h2-abc\"}", "id: \"h2-abc\" is not a job id of host h1");
    refused("{\"id\":\"h1-\"}", "id:");
    refused("{\"id\":\"h1-a/b\"}", "id:");
    refused("{\"host_id\":null}", "host_id: required");
    refused("{\"host_id\":\"H1\",\"id\":\"H1-a\"}", "host_id: \"H1\" is not a host id");
    refused("{\"host_id\":[]}", "host_id: must be a string, got an array");
    refused("{\"app\":1}", "app: must be a string");
    refused("{\"release\":true}", "release: must be a string, got a boolean");
    refused("{\"type\":{}}", "type: must be a string");
    refused("{\"meta\":[]}", "meta: must be an object");
    refused("{\"meta\":{\"a\":\"b\",\"n\":1}}", "meta.n: must be a string");
    refused("{\"desired_state\":\"running\"}", "desired_state: must be \"up\" or \"down\"");
    refused("{\"desired_state\":1}", "desired_state:");
    refused("{\"stop_grace\":\"10s\"}", "stop_grace: must be a number of seconds");
    refused("{\"stop_grace\":-1}", "stop_grace");
    refused("{\"stop_grace\":3601}", "stop_grace: must be between 0 ms and 3600000 ms");

    /* a NUL inside a string (JSON allows \u0000) */
    cleanup_json json_t *r = record(NULL);
    json_object_set_new(r, "app", json_stringn("a\0b", 3));
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_string_equal(err.msg, "app: must not contain a NUL byte");

    cleanup_json json_t *a = json_array();
    assert_int_equal(jobspec_parse(a, &s, &err), PIER_EINVAL);
    assert_null(s);
    assert_int_equal(jobspec_parse(NULL, &s, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "job record: must be a JSON object"));
}

static void test_exec_refused(void **state)
{
    (void)state;
    refused("{\"args\":null}", "args: required");
    refused("{\"args\":[]}", "args: must not be empty");
    refused("{\"args\":\"/bin/sh\"}", "args: must be an array of strings, got a string");
    refused("{\"args\":[\"a\",1]}", "args[1]: must be a string, got an integer");
    refused("{\"args\":[\"\"]}", "args[0]: must not be empty");
    refused("{\"env\":[]}", "env: must be an object");
    refused("{\"env\":{\"1A\":\"x\"}}", "env: \"1A\" is not a variable name");
    refused("{\"env\":{\"A-B\":\"x\"}}", "env: \"A-B\" is not a variable name");
    refused("{\"env\":{\"\":\"x\"}}", "env: \"\" is not a variable name");
    refused("{\"env\":{\"A\":1}}", "env: value of A must be a string, got an integer");
    refused("{\"env\":{\"A\":null}}", "env: value of A must be a string, got null");
    refused("{\"env\":{\"A\":\"x\\u0000y\"}}", "env: value of A must not contain a NUL byte");
    refused("{\"working_dir\":\"app\"}", "working_dir: \"app\" must be an absolute path");
    refused("{\"working_dir\":7}", "working_dir: must be a string");

    /* A 10 MB value, and 10 MB spread over many values. */
    cleanup_free char *big = xmalloc(10 << 20);
    memset(big, 'x', 10 << 20);
    cleanup_json json_t *r = record(NULL);
    json_object_set_new(r, "env", json_pack("{s:s#}", "FOO", big, (int)(10 << 20)));
    struct jobspec *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_string_equal(err.msg, "env: value of FOO is 10485760 bytes, the limit is 131067");

    json_t *env = json_object();
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof(k), "V%d", i);
        json_object_set_new(env, k, json_stringn(big, 100000));
    }
    json_object_set_new(r, "env", env);
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "args and env: "));
    assert_non_null(strstr(err.msg, "the limit is 1048576"));

    /* The largest value that fits in one argument string is accepted. */
    json_object_set_new(r, "env", json_pack("{s:s#}", "FOO", big, JOBSPEC_MAX_STRING - 5));
    assert_int_equal(jobspec_parse(r, &s, &err), 0);
    assert_int_equal(strlen(s->env[0]), JOBSPEC_MAX_STRING - 1);
    jobspec_free(s);

    env = json_object();
    for (int i = 0; i <= JOBSPEC_MAX_ENV; i++) {
        char k[16];
        snprintf(k, sizeof(k), "V%d", i);
        json_object_set_new(env, k, json_string(""));
    }
    json_object_set_new(r, "env", env);
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_string_equal(err.msg, "env: 1025 variables, the limit is 1024");

    json_object_del(r, "env");
    json_t *args = json_array();
    for (int i = 0; i <= JOBSPEC_MAX_ARGS; i++)
        json_array_append_new(args, json_string("a"));
    json_object_set_new(r, "args", args);
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_string_equal(err.msg, "args: 1025 entries, the limit is 1024");

    json_object_set_new(r, "args", json_pack("[s#]", big, JOBSPEC_MAX_STRING));
    assert_int_equal(jobspec_parse(r, &s, &err), PIER_EINVAL);
    assert_string_equal(err.msg, "args[0]: is 131072 bytes, the limit is 131071");
}

/* artifact.pierd: the host's pierd at /app/pierd, with the host's binds. */
static void test_pierd(void **state)
{
    (void)state;
    struct jobspec *s = parsed("{\"artifact\":{\"pierd\":true,\"stack\":\"host\"}}");
    assert_true(s->pierd);
    assert_null(s->slug);
    assert_string_equal(s->stack, "host");
    jobspec_free(s);
    s = parsed("{\"artifact\":{\"pierd\":false,\"slug\":\"file:///s/a.tgz\"}}");
    assert_false(s->pierd);
    assert_string_equal(s->slug, "file:///s/a.tgz");
    jobspec_free(s);
}

static void test_artifact_resources_refused(void **state)
{
    (void)state;
    refused("{\"artifact\":\"x\"}", "artifact: must be an object, got a string");
    refused("{\"artifact\":{\"stack\":\"debian\"}}", "artifact.stack: must be \"host\" or an");
    refused("{\"artifact\":{\"stack\":\"/a/../b\"}}", "artifact.stack:");
    refused("{\"artifact\":{\"stack\":\"/a/./b\"}}", "artifact.stack:");
    refused("{\"artifact\":{\"stack\":\"/a/..\"}}", "artifact.stack:");
    refused("{\"artifact\":{\"stack\":1}}", "artifact.stack: must be a string");
    refused("{\"artifact\":{\"slug\":\"ftp://x/s.tgz\"}}", "artifact.slug: must be an http://");
    refused("{\"artifact\":{\"slug\":\"file://host/s.tgz\"}}", "artifact.slug:");
    refused("{\"artifact\":{\"slug\":\"http://\"}}", "artifact.slug:");
    refused("{\"artifact\":{\"slug\":\"http://a b\"}}", "artifact.slug: must not contain");
    refused("{\"artifact\":{\"pierd\":\"yes\"}}", "pierd");
    refused("{\"artifact\":{\"pierd\":true,\"slug\":\"file:///s/a.tgz\"}}",
            "pierd (the host's pierd at /app/pierd) and slug exclude each other");
    refused("{\"resources\":[]}", "resources: must be an object");
    refused("{\"resources\":{\"memory\":5}}", "resources.memory: must be an object");
    refused("{\"resources\":{\"memory\":{\"limit\":-1}}}",
            "resources.memory.limit: must be at least 4194304 bytes, got -1");
    refused("{\"resources\":{\"memory\":{\"limit\":0}}}", "resources.memory.limit: must be at");
    refused("{\"resources\":{\"memory\":{\"limit\":4194303}}}", "got 4194303");
    refused("{\"resources\":{\"memory\":{\"limit\":9223372036854775807}}}",
            "resources.memory.limit: must be at most");
    refused("{\"resources\":{\"memory\":{\"limit\":\"1G\"}}}",
            "resources.memory.limit: must be an integer, got a string");
    refused("{\"resources\":{\"memory\":{\"limit\":1e9}}}",
            "resources.memory.limit: must be an integer, got a fractional number");
    refused("{\"resources\":{\"cpu\":{\"limit\":0}}}", "resources.cpu.limit: must be at least 1");
    refused("{\"resources\":{\"cpu\":{\"limit\":256001}}}", "resources.cpu.limit: must be at most");
    refused("{\"resources\":{\"max_fd\":{\"limit\":-5}}}", "resources.max_fd.limit");
    refused("{\"resources\":{\"max_fd\":{\"limit\":1048577}}}", "resources.max_fd.limit");
    refused("{\"resources\":{\"max_procs\":{\"limit\":0}}}", "resources.max_procs.limit");
    refused("{\"resources\":{\"max_procs\":{\"limit\":true}}}", "resources.max_procs.limit");

    struct jobspec *s = parsed("{\"resources\":{\"memory\":{\"limit\":4194304},\"cpu\":{"
                               "\"limit\":1},\"max_fd\":{\"limit\":1},\"max_procs\":{"
                               "\"limit\":1}}}");
    assert_int_equal(s->memory, JOBSPEC_MIN_MEMORY);
    assert_int_equal(s->cpu, 1);
    jobspec_free(s);
}

static void test_mounts_caps(void **state)
{
    (void)state;
    struct jobspec *s = parsed("{\"mounts\":[{\"location\":\"/srv/data\",\"target\":\"/data\","
                               "\"writeable\":true},{\"location\":\"/etc/ssl\",\"target\":"
                               "\"/var/ssl\"}],\"linux_capabilities\":[\"CAP_NET_BIND_SERVICE\","
                               "\"CAP_CHOWN\"]}");
    assert_int_equal(s->n_mounts, 2);
    assert_string_equal(s->mounts[0].location, "/srv/data");
    assert_string_equal(s->mounts[0].target, "/data");
    assert_true(s->mounts[0].writeable);
    assert_string_equal(s->mounts[1].target, "/var/ssl");
    assert_false(s->mounts[1].writeable);
    assert_int_equal(s->n_caps, 2);
    assert_string_equal(s->caps[0], "CAP_NET_BIND_SERVICE");
    assert_string_equal(s->caps[1], "CAP_CHOWN");
    assert_null(s->caps[2]);
    jobspec_free(s);
    s = parsed("{\"mounts\":[],\"linux_capabilities\":[]}");
    assert_int_equal(s->n_mounts, 0);
    assert_int_equal(s->n_caps, 0);
    jobspec_free(s);
    s = parsed("{\"mounts\":null,\"linux_capabilities\":null,"
               "\"mounts2\":[{\"target\":\"/proc\"}]}"); /* null is absent; others ignored */
    assert_int_equal(s->n_mounts, 0);
    jobspec_free(s);

    assert_true(jobspec_cap_ok("CAP_SETPCAP"));
    assert_false(jobspec_cap_ok("CAP_SYS_ADMIN"));
    assert_false(jobspec_cap_ok("cap_chown"));
    assert_false(jobspec_cap_ok(NULL));

    refused("{\"mounts\":{}}", "mounts: must be an array, got an object");
    refused("{\"mounts\":[\"/a:/b\"]}", "mounts[0]: must be an object");
    refused("{\"mounts\":[{\"target\":\"/b\"}]}", "mounts[0].location: required");
    refused("{\"mounts\":[{\"location\":\"/a\"}]}", "mounts[0].target: required");
    refused("{\"mounts\":[{\"location\":\"a\",\"target\":\"/b\"}]}",
            "mounts[0].location: \"a\" must be an absolute path");
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"b\"}]}", "mounts[0].target: \"b\"");
    const char *bad_paths[] = {"/x/../y", "/x/..", "/..", "/x/./y",
                               "/x//y",   "/x/",   "//x", "/x\\ny"};
    for (size_t i = 0; i < sizeof(bad_paths) / sizeof(*bad_paths); i++) {
        char rec[128];
        snprintf(rec, sizeof(rec), "{\"mounts\":[{\"location\":\"/a\",\"target\":\"%s\"}]}",
                 bad_paths[i]);
        refused(rec, "mounts[0].target: ");
        snprintf(rec, sizeof(rec), "{\"mounts\":[{\"location\":\"%s\",\"target\":\"/b\"}]}",
                 bad_paths[i]);
        refused(rec, "mounts[0].location: ");
    }
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/\"}]}",
            "mounts[0].target: must not be /");
    const char *reserved[] = {"/proc",  "/proc/x", "/sys/fs",  "/dev",   "/dev/shm",         "/app",
                              "/app/x", "/tmp",    "/tmp/a/b", "/.pier", "/.pier/buildpacks"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(*reserved); i++) {
        char rec[128];
        snprintf(rec, sizeof(rec), "{\"mounts\":[{\"location\":\"/a\",\"target\":\"%s\"}]}",
                 reserved[i]);
        refused(rec, "is reserved");
    }
    /* A name that only starts like a reserved one is fine. */
    s = parsed("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/procs\"},"
               "{\"location\":\"/a\",\"target\":\"/apps\"},"
               "{\"location\":\"/a\",\"target\":\"/tmpx/y\"}]}");
    assert_int_equal(s->n_mounts, 3);
    jobspec_free(s);
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/b\",\"writeable\":\"yes\"}]}",
            "mounts[0].writeable: must be true or false, got a string");
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/b\",\"device\":\"ext4\"}]}",
            "mounts[0].device: not supported");
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/b\"},"
            "{\"location\":\"/c\",\"target\":\"/b/c\"}]}",
            "mounts[1].target: /b/c overlaps mounts[0].target /b");
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/b/c\"},"
            "{\"location\":\"/c\",\"target\":\"/b\"}]}",
            "mounts[1].target: /b overlaps");
    refused("{\"mounts\":[{\"location\":\"/a\",\"target\":\"/b\"},"
            "{\"location\":\"/c\",\"target\":\"/b\"}]}",
            "overlaps");
    cleanup_buf struct buf many = BUF_INIT;
    buf_puts(&many, "{\"mounts\":[");
    for (int i = 0; i <= JOBSPEC_MAX_MOUNTS; i++)
        buf_printf(&many, "%s{\"location\":\"/a\",\"target\":\"/m%d\"}", i ? "," : "", i);
    buf_puts(&many, "]}");
    refused(many.p, "mounts: 17 entries, the limit is 16");

    refused("{\"linux_capabilities\":\"CAP_CHOWN\"}",
            "linux_capabilities: must be an array of names, got a string");
    refused("{\"linux_capabilities\":[1]}", "linux_capabilities[0]: must be a string");
    refused("{\"linux_capabilities\":[\"CAP_CHOWN\",\"CAP_SYS_ADMIN\"]}",
            "linux_capabilities[1]: \"CAP_SYS_ADMIN\" is not one a job may have");
    refused("{\"linux_capabilities\":[\"NET_BIND_SERVICE\"]}", "is not one a job may have");
    refused("{\"linux_capabilities\":[\"CAP_KILL\",\"CAP_KILL\"]}",
            "linux_capabilities[1]: CAP_KILL is listed twice");
}

static void test_ports_tty_refused(void **state)
{
    (void)state;
    refused("{\"ports\":{}}", "ports: must be an array, got an object");
    refused("{\"ports\":[1]}", "ports[0]: must be an object, got an integer");
    refused("{\"ports\":[{\"port\":-1}]}", "ports[0].port: must be at least 0");
    refused("{\"ports\":[{\"port\":65536}]}", "ports[0].port: must be at most 65535");
    refused("{\"ports\":[{\"port\":\"80\"}]}", "ports[0].port: must be an integer");
    refused("{\"ports\":[{\"proto\":\"sctp\"}]}", "ports[0].proto: must be \"tcp\" or \"udp\"");
    refused("{\"ports\":[{\"proto\":\"tcpx\"}]}", "ports[0].proto:");
    refused("{\"ports\":[{\"port\":80},{\"port\":80,\"proto\":\"tcp\"}]}",
            "ports[1]: port 80/tcp is listed twice");
    refused("{\"ports\":[{},{\"service\":[]}]}", "ports[1].service: must be an object");
    refused("{\"ports\":[{\"service\":{}}]}", "ports[0].service.name: required");
    refused("{\"ports\":[{\"service\":{\"name\":\"Web\"}}]}", "ports[0].service.name: service");
    refused("{\"ports\":[{\"service\":{\"name\":\"-w\"}}]}", "ports[0].service.name:");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":1}}]}",
            "ports[0].service.check: must be an object");
    refused("{\"ports\":[{\"proto\":\"udp\",\"service\":{\"name\":\"w\",\"check\":{}}}]}",
            "ports[0].service.check: checks need proto \"tcp\"");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"type\":\"icmp\"}}}]}",
            "ports[0].service.check.type: must be \"tcp\" or \"http\"");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"path\":\"x\"}}}]}",
            "ports[0].service.check.path: must start with '/'");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"path\":\"/a b\"}}}]}",
            "ports[0].service.check.path:");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"status\":42}}}]}",
            "ports[0].service.check.status: must be 0 (any 2xx or 3xx) or 100 to 599");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"status\":600}}}]}",
            "ports[0].service.check.status: must be at most 599");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"interval\":\"50ms\"}}}]}",
            "ports[0].service.check.interval: must be between 100 ms and 3600000 ms, got 50 ms");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"interval\":\"soon\"}}}]}",
            "ports[0].service.check.interval: \"soon\" is not a duration");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"timeout\":[]}}}]}",
            "ports[0].service.check.timeout: must be a duration");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"threshold\":0}}}]}",
            "ports[0].service.check.threshold: must be at least 1");
    refused("{\"ports\":[{\"service\":{\"name\":\"w\",\"check\":{\"threshold\":101}}}]}",
            "ports[0].service.check.threshold: must be at most 100");
    refused("{\"ports\":[{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}]}",
            "ports: 17 entries, the limit is 16");
    refused("{\"tty\":1}", "tty: must be true or false, got an integer");
    refused("{\"stdin\":\"yes\"}", "stdin: must be true or false");
    refused("{\"init\":[]}", "init: must be true or false");
    refused("{\"disable_log\":0}", "disable_log: must be true or false");
    refused("{\"tty_columns\":0}", "tty_columns: must be at least 1");
    refused("{\"tty_lines\":10001}", "tty_lines: must be at most 10000");
    refused("{\"tty_lines\":2.5}", "tty_lines: must be an integer");
}

static void test_id_ok(void **state)
{
    (void)state;
    assert_true(jobspec_id_ok("h1-a", "h1"));
    assert_true(jobspec_id_ok("h1-A.b_c-9", "h1"));
    assert_true(jobspec_id_ok("h1-..", "h1")); /* one path component, never ".." itself */
    assert_false(jobspec_id_ok("h1-", "h1"));
    assert_false(jobspec_id_ok("h1a", "h1"));
    assert_false(jobspec_id_ok("h2-a", "h1"));
    assert_false(jobspec_id_ok("h1-a b", "h1"));
    assert_false(jobspec_id_ok("h1-a/b", "h1"));
    assert_false(jobspec_id_ok("h1-a", "H1"));
    assert_false(jobspec_id_ok("x-a", "x-"));
    assert_false(jobspec_id_ok("-a", ""));
    assert_false(jobspec_id_ok(NULL, "h1"));
    assert_false(jobspec_id_ok("h1-a", NULL));
    char id[JOBSPEC_MAX_ID + 2];
    memset(id, 'a', sizeof(id));
    memcpy(id, "h1-", 3);
    id[JOBSPEC_MAX_ID] = '\0';
    assert_true(jobspec_id_ok(id, "h1"));
    id[JOBSPEC_MAX_ID] = 'a';
    id[JOBSPEC_MAX_ID + 1] = '\0';
    assert_false(jobspec_id_ok(id, "h1"));
    assert_true(jobspec_id_ok("abcdefghijklmnopqrstuvwx-1", "abcdefghijklmnopqrstuvwx"));
    assert_false(jobspec_id_ok("abcdefghijklmnopqrstuvwxy-1", "abcdefghijklmnopqrstuvwxy"));
}

static void duration_is(const char *text, int64_t want)
{
    cleanup_json json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    assert_non_null(v);
    int64_t ms = -1;
    struct pier_err err = {0};
    if (jobspec_duration_ms(v, &ms, &err) != 0 || ms != want) {
        fprintf(stderr, "duration %s: got %lld (%s), wanted %lld\n", text, (long long)ms, err.msg,
                (long long)want);
        fail();
    }
}

static void duration_bad(const char *text)
{
    cleanup_json json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    assert_non_null(v);
    int64_t ms = -7;
    struct pier_err err = {0};
    if (jobspec_duration_ms(v, &ms, &err) != PIER_EINVAL || ms != -7 || !err.msg[0]) {
        fprintf(stderr, "duration %s: accepted as %lld\n", text, (long long)ms);
        fail();
    }
}

static void test_duration(void **state)
{
    (void)state;
    duration_is("0", 0);
    duration_is("2", 2000);
    duration_is("0.25", 250);
    duration_is("\"0\"", 0);
    duration_is("\"250ms\"", 250);
    duration_is("\"2s\"", 2000);
    duration_is("\"1m\"", 60000);
    duration_is("\"1h\"", 3600000);
    duration_is("\"1.5s\"", 1500);
    duration_is("\"1m30s\"", 90000);
    duration_is("\"1h2m3s4ms\"", 3723004);
    duration_is("\".5s\"", 500);
    duration_is("\"0.0001s\"", 0);
    duration_is("\"1.123456789123h\"", 4044444);
    duration_bad("-1");
    duration_bad("-0.5");
    duration_bad("1e300");
    duration_bad("99999999999999999");
    duration_bad("\"\"");
    duration_bad("\"5\"");
    duration_bad("\"s\"");
    duration_bad("\".s\"");
    duration_bad("\"-1s\"");
    duration_bad("\"1d\"");
    duration_bad("\"1 s\"");
    duration_bad("\"1s \"");
    duration_bad("\"1us\"");
    duration_bad("\"1.5.5s\"");
    duration_bad("\"99999999999999999999h\"");
    duration_bad("\"9999999999h\"");
    duration_bad("\"2s\\u0000\"");
    duration_bad("null");
    duration_bad("true");
    duration_bad("[]");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_identity_refused),
        cmocka_unit_test(test_exec_refused),
        cmocka_unit_test(test_artifact_resources_refused),
        cmocka_unit_test(test_pierd),
        cmocka_unit_test(test_mounts_caps),
        cmocka_unit_test(test_ports_tty_refused),
        cmocka_unit_test(test_id_ok),
        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
