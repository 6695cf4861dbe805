/* jobbuild: a release's process type turned into a job record.
 *
 * Everything here reads records as stored and writes one new object; no
 * I/O. Each part of the record has its function below, in the order the
 * header lists them. */
#include "scheduler/jobbuild.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"

#define GIB (INT64_C(1024) * 1024 * 1024)
/* Flynn's defaults for a process type without resources. */
#define DEFAULT_MEMORY GIB
#define DEFAULT_MAX_FD 10000

/* Appends the strings of arr (an array of strings, or absent) to args. */
static int append_strings(json_t *args, const json_t *arr, const char *what, struct pier_err *err)
{
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return err_set(err, PIER_EINVAL, "%s must be an array of strings", what);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "%s[%zu] is not a string", what, i);
        json_array_append(args, v);
    }
    return 0;
}

/* args: the one-off's, else the type's "args", else "entrypoint" + "cmd". */
static int build_args(const json_t *ptype, const char *type, const char *release_id,
                      const struct jobbuild_oneoff *oneoff, json_t *job, struct pier_err *err)
{
    json_t *args = json_array();
    json_object_set_new(job, "args", args); /* args stays borrowed below */
    int rc;
    if (oneoff && oneoff->args)
        rc = append_strings(args, oneoff->args, "args", err);
    else if (json_object_get(ptype, "args") && json_array_size(json_object_get(ptype, "args")))
        rc = append_strings(args, json_object_get(ptype, "args"), "args", err);
    else {
        rc = append_strings(args, json_object_get(ptype, "entrypoint"), "entrypoint", err);
        if (rc == 0)
            rc = append_strings(args, json_object_get(ptype, "cmd"), "cmd", err);
    }
    if (rc < 0)
        return rc;
    if (json_array_size(args) == 0)
        return err_set(err, PIER_EINVAL, "process type '%s' of release %s has no args",
                       type ? type : "(one-off)", release_id);
    return 0;
}

/* Copies the string values of src (an object of strings, or absent) into env. */
static int merge_env(json_t *env, const json_t *src, const char *what, struct pier_err *err)
{
    if (!src || json_is_null(src))
        return 0;
    if (!json_is_object(src))
        return err_set(err, PIER_EINVAL, "%s must be an object of strings", what);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)src, k, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "%s: value of %s is not a string", what, k);
        json_object_set(env, k, v);
    }
    return 0;
}

/* A one-off's number in DYNO=run.N: random, as Heroku's are. */
static unsigned run_number(void)
{
    unsigned r = 0;
    if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
        r = (unsigned)clock_now_ms();
    return 1000 + r % 9000;
}

static int build_env(const json_t *app, const json_t *release, const json_t *ptype,
                     const char *type, const struct jobbuild_oneoff *oneoff, json_t *job,
                     struct pier_err *err)
{
    json_t *env = json_object();
    json_object_set_new(job, "env", env); /* env stays borrowed below */
    int rc = merge_env(env, json_object_get(release, "env"), "release env", err);
    if (rc == 0 && ptype)
        rc = merge_env(env, json_object_get(ptype, "env"), "process type env", err);
    if (rc == 0 && oneoff)
        rc = merge_env(env, oneoff->env, "env", err);
    if (rc < 0)
        return rc;
    const char *app_id = json_string_value(json_object_get(app, "id"));
    const char *app_name = json_string_value(json_object_get(app, "name"));
    const char *release_id = json_string_value(json_object_get(release, "id"));
    json_object_set_new(env, "FLYNN_APP_ID", json_string(app_id));
    json_object_set_new(env, "FLYNN_RELEASE_ID", json_string(release_id));
    if (type)
        json_object_set_new(env, "FLYNN_PROCESS_TYPE", json_string(type));
    if (app_name)
        json_object_set_new(env, "APP_NAME", json_string(app_name));
    char dyno[96];
    if (oneoff)
        snprintf(dyno, sizeof(dyno), "run.%u", run_number());
    else
        snprintf(dyno, sizeof(dyno), "%s.1", type);
    json_object_set_new(env, "DYNO", json_string(dyno));
    return 0;
}

static const json_t *find_artifact(const json_t *artifacts, const char *id)
{
    size_t i;
    json_t *a;
    json_array_foreach(artifacts, i, a)
    {
        const char *aid = json_string_value(json_object_get(a, "id"));
        if (aid && strcmp(aid, id) == 0)
            return a;
    }
    return NULL;
}

/* The slug runner every job of a slug built by pier starts with
 * (docs/build.md); the agent binds it into every container. */
#define SLUGRUNNER "/.pier/pierslug"

/* One artifact into the job's "artifact" object: a flynn stack or a slug.
 * *slugrunner is set for a slug whose meta says it runs under pierslug. */
static int add_artifact(json_t *out, const json_t *a, const char *id, bool *slugrunner,
                        struct pier_err *err)
{
    const char *kind = json_string_value(json_object_get(a, "type"));
    const char *uri = json_string_value(json_object_get(a, "uri"));
    if (!kind || !uri)
        return err_set(err, PIER_EINVAL, "artifact %s has no type or uri", id);
    if (strcmp(kind, "flynn") == 0) {
        /* pier:host: the host's own binds, whatever the agent's --stack
         * (system apps: pierd needs the host's shared libraries). */
        if (strcmp(uri, JOBBUILD_HOST_STACK_URI) == 0) {
            json_object_set_new(out, "stack", json_string("host"));
            return 0;
        }
        if (strncmp(uri, "file:///", 8) != 0)
            return err_set(err, PIER_EINVAL,
                           "artifact %s: a flynn artifact's uri must be file:///DIR (a stack) "
                           "or " JOBBUILD_HOST_STACK_URI " (the host's binds), not %s",
                           id, uri);
        json_object_set_new(out, "stack", json_string(uri + 7));
        return 0;
    }
    if (strcmp(kind, "file") == 0) {
        /* pier:pierd: the pierd installed on the job's host, which the
         * agent binds at /app/pierd; there is nothing to download. */
        if (strcmp(uri, JOBBUILD_PIERD_URI) == 0) {
            json_object_set_new(out, "pierd", json_true());
            return 0;
        }
        json_object_set_new(out, "slug", json_string(uri));
        const json_t *meta = json_object_get(a, "meta");
        const char *sr = json_string_value(json_object_get(meta, "slugrunner"));
        if (sr && strcmp(sr, "true") == 0)
            *slugrunner = true;
        /* The hash the build recorded: the agent checks the download
         * against it, so a slug replaced in the blobstore never runs. ""
         * says the hash is not known. */
        const char *sha = json_string_value(json_object_get(meta, "sha256"));
        if (sha && *sha)
            json_object_set_new(out, "slug_sha256", json_string(sha));
        return 0;
    }
    /* Flynn's releases name the image their slug runs on (its slugrunner)
     * as a docker artifact. pier pulls no images: its stack plays that
     * part, so the job runs on the host's default stack. */
    if (strcmp(kind, "docker") == 0)
        return 0;
    return err_set(err, PIER_EINVAL, "artifact %s is of unknown type '%s' (file, flynn or docker)",
                   id, kind);
}

static int build_artifact(const json_t *release, const json_t *artifacts, json_t *job,
                          bool *slugrunner, struct pier_err *err)
{
    const char *release_id = json_string_value(json_object_get(release, "id"));
    json_t *ids = json_object_get(release, "artifacts"); /* borrowed */
    cleanup_json json_t *legacy = NULL;
    if (!ids || json_array_size(ids) == 0) {
        const json_t *one = json_object_get(release, "artifact");
        if (!json_is_string(one))
            return 0;
        legacy = json_pack("[O]", one);
        ids = legacy;
    }
    if (!json_is_array(ids))
        return err_set(err, PIER_EINVAL, "release %s: artifacts must be an array of ids",
                       release_id);
    cleanup_json json_t *out = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *id = json_string_value(v);
        if (!id)
            return err_set(err, PIER_EINVAL, "release %s: artifacts[%zu] is not an id", release_id,
                           i);
        const json_t *a = artifacts ? find_artifact(artifacts, id) : NULL;
        if (!a)
            return err_set(err, PIER_EINVAL, "artifact %s of release %s not found", id, release_id);
        int rc = add_artifact(out, a, id, slugrunner, err);
        if (rc < 0)
            return rc;
    }
    if (json_object_size(out) > 0)
        json_object_set(job, "artifact", out);
    return 0;
}

/* A slug's process starts as `/.pier/pierslug run ARGS...`, which sets up
 * the slug's environment first. Args that already start with pierslug
 * (the build job the git receiver runs) are left as they are. */
static void prefix_slugrunner(json_t *job)
{
    json_t *args = json_object_get(job, "args"); /* borrowed */
    const char *first = json_string_value(json_array_get(args, 0));
    if (first && strcmp(first, SLUGRUNNER) == 0)
        return;
    json_array_insert_new(args, 0, json_string("run"));
    json_array_insert_new(args, 0, json_string(SLUGRUNNER));
}

/* Flynn's defaults, then the type's resources, then the one-off's, each
 * replacing whole entries ("memory", "max_fd", ...). */
static int build_resources(const json_t *ptype, const struct jobbuild_oneoff *oneoff, json_t *job,
                           struct pier_err *err)
{
    json_t *res =
        json_pack("{s:{s:I,s:I},s:{s:I,s:I}}", "memory", "request", (json_int_t)DEFAULT_MEMORY,
                  "limit", (json_int_t)DEFAULT_MEMORY, "max_fd", "request",
                  (json_int_t)DEFAULT_MAX_FD, "limit", (json_int_t)DEFAULT_MAX_FD);
    json_object_set_new(job, "resources", res); /* res stays borrowed below */
    const json_t *layers[] = {ptype ? json_object_get(ptype, "resources") : NULL,
                              oneoff ? oneoff->resources : NULL};
    for (size_t l = 0; l < 2; l++) {
        if (!layers[l] || json_is_null(layers[l]))
            continue;
        if (!json_is_object(layers[l]))
            return err_set(err, PIER_EINVAL, "resources must be an object");
        json_object_update(res, (json_t *)layers[l]);
    }
    json_t *mem = json_object_get(res, "memory");
    json_t *limit = json_is_object(mem) ? json_object_get(mem, "limit") : NULL;
    if (!json_is_object(mem) || !json_is_integer(limit) || json_integer_value(limit) <= 0)
        return err_set(err, PIER_EINVAL,
                       "resources.memory.limit must be a positive number of "
                       "bytes");
    return 0;
}

/* A health check in Flynn's shape to the agent's (docs/host.md): the fields
 * the agent knows. Flynn writes durations as nanoseconds; a number over an
 * hour is read as that, a smaller one as seconds. */
static json_t *build_check(const json_t *check)
{
    json_t *out = json_object();
    static const char *const copy[] = {"type", "path", "status", "threshold"};
    for (size_t i = 0; i < sizeof(copy) / sizeof(copy[0]); i++) {
        json_t *v = json_object_get(check, copy[i]);
        if (v)
            json_object_set(out, copy[i], v);
    }
    static const char *const durations[] = {"interval", "timeout"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(check, durations[i]);
        if (json_is_integer(v) && json_integer_value(v) > 3600) {
            char ms[32];
            snprintf(ms, sizeof(ms), "%" PRId64 "ms", (int64_t)json_integer_value(v) / 1000000);
            json_object_set_new(out, durations[i], json_string(ms));
        } else if (v) {
            json_object_set(out, durations[i], v);
        }
    }
    return out;
}

static json_t *build_port(const json_t *p, const char *default_service)
{
    json_t *out = json_object();
    json_object_set_new(out, "port", json_integer(0));
    const char *proto = json_string_value(json_object_get(p, "proto"));
    json_object_set_new(out, "proto", json_string(proto ? proto : "tcp"));
    const json_t *svc = json_object_get(p, "service");
    const char *name = json_is_object(svc) ? json_string_value(json_object_get(svc, "name")) : NULL;
    if (!name)
        name = default_service;
    if (name) {
        json_t *s = json_pack("{s:s}", "name", name);
        const json_t *check = json_is_object(svc) ? json_object_get(svc, "check") : NULL;
        if (json_is_object(check))
            json_object_set_new(s, "check", build_check(check));
        json_object_set_new(out, "service", s);
    }
    return out;
}

static int build_ports(const json_t *app, const json_t *ptype, const char *type, bool oneoff,
                       json_t *job, struct pier_err *err)
{
    json_t *ports = json_array();
    json_object_set_new(job, "ports", ports); /* ports stays borrowed below */
    if (oneoff || !type)
        return 0;
    bool web = strcmp(type, "web") == 0;
    const char *app_name = json_string_value(json_object_get(app, "name"));
    cleanup_free char *web_service = NULL;
    if (web && app_name) {
        struct buf b = BUF_INIT;
        buf_printf(&b, "%s-web", app_name);
        web_service = buf_detach(&b);
    }
    const json_t *want = json_object_get(ptype, "ports");
    if (!want || json_is_null(want)) {
        if (web) {
            json_t *none = json_object();
            json_array_append_new(ports, build_port(none, web_service));
            json_decref(none);
        }
        return 0;
    }
    if (!json_is_array(want))
        return err_set(err, PIER_EINVAL, "process type '%s': ports must be an array", type);
    size_t i;
    json_t *p;
    json_array_foreach(want, i, p)
    {
        if (!json_is_object(p))
            return err_set(err, PIER_EINVAL, "process type '%s': ports[%zu] is not an object", type,
                           i);
        json_array_append_new(ports, build_port(p, i == 0 ? web_service : NULL));
    }
    return 0;
}

/* The process type's host binds and capabilities, as given: the agent
 * checks them (docs/host.md), and the controller refuses a release whose
 * jobs the agent would refuse. */
static void build_host_fields(const json_t *ptype, json_t *job)
{
    static const char *const copy[] = {"mounts", "linux_capabilities"};
    for (size_t i = 0; ptype && i < sizeof(copy) / sizeof(*copy); i++) {
        json_t *v = json_object_get(ptype, copy[i]); /* borrowed */
        if (v && !json_is_null(v))
            json_object_set_new(job, copy[i], json_deep_copy(v));
    }
}

static void build_oneoff_fields(const struct jobbuild_oneoff *o, json_t *job)
{
    json_object_set_new(job, "oneoff", json_true());
    if (o->meta && json_is_object(o->meta))
        json_object_set(job, "meta", (json_t *)o->meta);
    if (o->tty) {
        json_object_set_new(job, "tty", json_true());
        if (o->tty_columns > 0)
            json_object_set_new(job, "tty_columns", json_integer(o->tty_columns));
        if (o->tty_lines > 0)
            json_object_set_new(job, "tty_lines", json_integer(o->tty_lines));
    }
    if (o->stdin_open || o->tty)
        json_object_set_new(job, "stdin", json_true());
    if (o->disable_log)
        json_object_set_new(job, "disable_log", json_true());
}

int jobbuild_spec(const json_t *app, const json_t *release, const json_t *artifacts,
                  const char *type, const struct jobbuild_oneoff *oneoff, json_t **out,
                  struct pier_err *err)
{
    *out = NULL;
    const char *app_id = json_string_value(json_object_get(app, "id"));
    const char *release_id = json_string_value(json_object_get(release, "id"));
    if (!app_id || !release_id)
        return err_set(err, PIER_EINVAL, "%s record has no id", app_id ? "release" : "app");
    if (artifacts && !json_is_array(artifacts))
        return err_set(err, PIER_EINVAL, "artifacts must be an array of records");
    const json_t *ptype = NULL;
    if (type) {
        const json_t *procs = json_object_get(release, "processes");
        ptype = json_is_object(procs) ? json_object_get(procs, type) : NULL;
        if (!json_is_object(ptype))
            return err_set(err, PIER_EINVAL, "release %s has no process type '%s'", release_id,
                           type);
    } else if (!oneoff || !oneoff->args) {
        return err_set(err, PIER_EINVAL, "a job without a process type needs args");
    }

    cleanup_json json_t *job = json_object();
    json_object_set_new(job, "app", json_string(app_id));
    json_object_set_new(job, "release", json_string(release_id));
    if (type)
        json_object_set_new(job, "type", json_string(type));
    json_object_set_new(job, "desired_state", json_string("up"));
    /* A service job runs under tini: as PID 1, a process that does not
     * handle SIGTERM would ignore it and take the whole stop grace. A
     * one-off runs its command as PID 1, so that a command that cannot be
     * started fails at once rather than as tini's exit status 127. */
    if (!oneoff)
        json_object_set_new(job, "init", json_true());
    int rc = build_args(ptype, type, release_id, oneoff, job, err);
    if (rc == 0)
        rc = build_env(app, release, ptype, type, oneoff, job, err);
    bool slugrunner = false;
    if (rc == 0)
        rc = build_artifact(release, artifacts, job, &slugrunner, err);
    if (rc == 0 && slugrunner)
        prefix_slugrunner(job);
    if (rc == 0)
        rc = build_resources(ptype, oneoff, job, err);
    if (rc == 0)
        rc = build_ports(app, ptype, type, oneoff != NULL, job, err);
    if (rc < 0)
        return rc;
    build_host_fields(ptype, job);
    if (oneoff)
        build_oneoff_fields(oneoff, job);
    json_object_set_new(job, "restarts", json_integer(0));
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_object_set_new(job, "created_at", json_string(now));
    *out = steal_pointer(&job);
    return 0;
}

long long jobbuild_memory(const json_t *job)
{
    const json_t *res = json_object_get(job, "resources");
    const json_t *mem = json_is_object(res) ? json_object_get(res, "memory") : NULL;
    const json_t *limit = json_is_object(mem) ? json_object_get(mem, "limit") : NULL;
    if (json_is_integer(limit) && json_integer_value(limit) > 0)
        return (long long)json_integer_value(limit);
    return (long long)DEFAULT_MEMORY;
}

void jobbuild_set_index(json_t *job, int n)
{
    const char *type = json_string_value(json_object_get(job, "type"));
    json_t *env = json_object_get(job, "env"); /* borrowed */
    if (!type || !json_is_object(env))
        return;
    char dyno[96];
    snprintf(dyno, sizeof(dyno), "%s.%d", type, n);
    json_object_set_new(env, "DYNO", json_string(dyno));
}
