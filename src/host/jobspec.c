#include "host/jobspec.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/discover.h"

/* Caps on fields the header leaves open. Every one is far above what a real
 * job asks for and far below what would hurt the agent or the kernel. */
#define MAX_LABEL 255          /* app, release, type */
#define MAX_PATH 4095          /* working_dir, artifact.stack (PATH_MAX less its NUL) */
#define MAX_URL 4096           /* artifact.slug */
#define MAX_CHECK_PATH 1024    /* ports[].service.check.path */
#define MAX_HOST_ID 24         /* as hostrec.h says */
#define MAX_MEMORY (1LL << 44) /* 16 TiB */
#define MAX_CPU 256000         /* milli-CPUs: 256 cores, the most cgroup v1 shares express */
#define MAX_FD (1LL << 20)     /* the kernel's default nr_open */
#define MAX_PROCS (1LL << 22)  /* the kernel's largest pid_max */
#define MAX_STOP_GRACE_MS 3600000
#define MAX_DURATION_MS 10000000000000LL /* ~317 years: only guards the arithmetic */

/* ---- reading single values ---- */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a fractional number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "something else";
}

/* The value at key, or NULL when it is absent or null (both mean "not set"). */
static json_t *field(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key); /* borrowed */
    return v && !json_is_null(v) ? v : NULL;
}

/* Checks that v is a string of at most max bytes without NUL bytes. */
static int check_string(const json_t *v, const char *path, size_t max, struct pier_err *err)
{
    if (!json_is_string(v))
        return err_set(err, PIER_EINVAL, "%s: must be a string, got %s", path, type_name(v));
    size_t len = json_string_length(v);
    if (len > max)
        return err_set(err, PIER_EINVAL, "%s: is %zu bytes, the limit is %zu", path, len, max);
    if (strlen(json_string_value(v)) != len)
        return err_set(err, PIER_EINVAL, "%s: must not contain a NUL byte", path);
    return 0;
}

/* A string field copied into *out (left alone when absent). */
static int get_string(const json_t *obj, const char *key, const char *path, size_t max, char **out,
                      struct pier_err *err)
{
    json_t *v = field(obj, key);
    if (!v)
        return 0;
    int rc = check_string(v, path, max, err);
    if (rc < 0)
        return rc;
    free(*out);
    *out = xstrdup(json_string_value(v));
    return 1;
}

/* An integer field in [min, max] (left alone when absent); unit names what
 * it counts in messages ("" or " bytes"). */
static int get_int(const json_t *obj, const char *key, const char *path, int64_t min, int64_t max,
                   const char *unit, int64_t *out, struct pier_err *err)
{
    json_t *v = field(obj, key);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return err_set(err, PIER_EINVAL, "%s: must be an integer, got %s", path, type_name(v));
    int64_t n = json_integer_value(v);
    if (n < min)
        return err_set(err, PIER_EINVAL, "%s: must be at least %" PRId64 "%s, got %" PRId64, path,
                       min, unit, n);
    if (n > max)
        return err_set(err, PIER_EINVAL, "%s: must be at most %" PRId64 "%s, got %" PRId64, path,
                       max, unit, n);
    *out = n;
    return 1;
}

static int get_int32(const json_t *obj, const char *key, const char *path, int min, int max,
                     int *out, struct pier_err *err)
{
    int64_t n = *out;
    int rc = get_int(obj, key, path, min, max, "", &n, err);
    if (rc > 0)
        *out = (int)n;
    return rc;
}

static int get_bool(const json_t *obj, const char *key, bool *out, struct pier_err *err)
{
    json_t *v = field(obj, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return err_set(err, PIER_EINVAL, "%s: must be true or false, got %s", key, type_name(v));
    *out = json_is_true(v);
    return 1;
}

/* An object field (borrowed into *out; NULL when absent). */
static int get_object(const json_t *obj, const char *key, const char *path, json_t **out,
                      struct pier_err *err)
{
    json_t *v = field(obj, key);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return err_set(err, PIER_EINVAL, "%s: must be an object, got %s", path, type_name(v));
    *out = v;
    return 1;
}

/* A duration field in [min_ms, max_ms] (left alone when absent). */
static int get_duration(const json_t *obj, const char *key, const char *path, int64_t min_ms,
                        int64_t max_ms, int *out, struct pier_err *err)
{
    json_t *v = field(obj, key);
    if (!v)
        return 0;
    int64_t ms = 0;
    int rc = jobspec_duration_ms(v, &ms, err);
    if (rc < 0)
        return err_wrap(err, PIER_EINVAL, "%s", path);
    if (ms < min_ms || ms > max_ms)
        return err_set(err, PIER_EINVAL,
                       "%s: must be between %" PRId64 " ms and %" PRId64 " ms, got %" PRId64 " ms",
                       path, min_ms, max_ms, ms);
    *out = (int)ms;
    return 1;
}

/* ---- durations ---- */

/* One "<digits>[.<digits>]<unit>" term of a duration string at *p, added to
 * *ms. Go's time.ParseDuration spelling, restricted to ms, s, m and h. */
static int duration_term(const char **p, int64_t *ms)
{
    const char *s = *p;
    int64_t whole = 0, frac = 0, scale = 1;
    int digits = 0;
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        if (whole > MAX_DURATION_MS)
            return -1;
        whole = whole * 10 + (*s - '0');
    }
    if (*s == '.') {
        s++;
        for (; *s >= '0' && *s <= '9'; s++, digits++) {
            if (scale < 1000000000) { /* finer digits cannot change whole milliseconds */
                frac = frac * 10 + (*s - '0');
                scale *= 10;
            }
        }
    }
    if (digits == 0)
        return -1;
    int64_t unit;
    if (s[0] == 'm' && s[1] == 's')
        unit = 1, s += 2;
    else if (s[0] == 's')
        unit = 1000, s += 1;
    else if (s[0] == 'm')
        unit = 60000, s += 1;
    else if (s[0] == 'h')
        unit = 3600000, s += 1;
    else
        return -1;
    if (whole > MAX_DURATION_MS / unit)
        return -1;
    *ms += whole * unit + frac * unit / scale;
    if (*ms > MAX_DURATION_MS)
        return -1;
    *p = s;
    return 0;
}

int jobspec_duration_ms(const json_t *v, int64_t *ms, struct pier_err *err)
{
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n < 0 || n > MAX_DURATION_MS / 1000)
            return err_set(err, PIER_EINVAL,
                           "%" JSON_INTEGER_FORMAT " is not a duration in seconds", n);
        *ms = (int64_t)n * 1000;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= 0 && d * 1000 <= (double)MAX_DURATION_MS))
            return err_set(err, PIER_EINVAL, "%g is not a duration in seconds", d);
        *ms = (int64_t)(d * 1000);
        return 0;
    }
    if (!json_is_string(v))
        return err_set(err, PIER_EINVAL,
                       "must be a duration (seconds, or a string like \"2s\"), "
                       "got %s",
                       type_name(v));
    const char *s = json_string_value(v);
    int64_t total = 0;
    if (strcmp(s, "0") != 0 || json_string_length(v) != 1) {
        const char *p = s;
        do {
            if (duration_term(&p, &total) < 0)
                break;
        } while (*p);
        if (*p || p == s || (size_t)(p - s) != json_string_length(v))
            return err_set(err, PIER_EINVAL,
                           "\"%.64s\" is not a duration (like \"250ms\", \"2s\", \"1m\", \"1h\")",
                           s);
    }
    *ms = total;
    return 0;
}

/* ---- ids ---- */

static bool host_id_ok(const char *id, size_t len)
{
    if (len == 0 || len > MAX_HOST_ID)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return false;
    return true;
}

bool jobspec_id_ok(const char *id, const char *host_id)
{
    if (!id || !host_id)
        return false;
    size_t hl = strlen(host_id), n = strlen(id);
    if (!host_id_ok(host_id, hl) || n > JOBSPEC_MAX_ID || n < hl + 2)
        return false;
    if (memcmp(id, host_id, hl) != 0 || id[hl] != '-')
        return false;
    for (size_t i = hl + 1; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* ---- the record, part by part ---- */

static int parse_identity(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    int rc = get_string(rec, "host_id", "host_id", MAX_HOST_ID, &s->host_id, err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return err_set(err, PIER_EINVAL, "host_id: required");
    if (!host_id_ok(s->host_id, strlen(s->host_id)))
        return err_set(err, PIER_EINVAL, "host_id: \"%s\" is not a host id (1 to %d of a-z, 0-9)",
                       s->host_id, MAX_HOST_ID);
    rc = get_string(rec, "id", "id", JOBSPEC_MAX_ID, &s->id, err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return err_set(err, PIER_EINVAL, "id: required");
    if (!jobspec_id_ok(s->id, s->host_id))
        return err_set(err, PIER_EINVAL,
                       "id: \"%s\" is not a job id of host %s (\"%s-\" and then 1 or more of "
                       "A-Z, a-z, 0-9, '_', '.', '-', at most %d in all)",
                       s->id, s->host_id, s->host_id, JOBSPEC_MAX_ID);
    if ((rc = get_string(rec, "app", "app", MAX_LABEL, &s->app, err)) < 0 ||
        (rc = get_string(rec, "release", "release", MAX_LABEL, &s->release, err)) < 0 ||
        (rc = get_string(rec, "type", "type", MAX_LABEL, &s->type, err)) < 0)
        return rc;

    json_t *meta = NULL;
    if ((rc = get_object(rec, "meta", "meta", &meta, err)) < 0)
        return rc;
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "meta.%.64s: must be a string, got %s", k,
                           type_name(v));
    }

    s->desired_up = true;
    json_t *ds = field(rec, "desired_state");
    if (ds) {
        if (!json_is_string(ds) ||
            (strcmp(json_string_value(ds), "up") != 0 && strcmp(json_string_value(ds), "down")))
            return err_set(err, PIER_EINVAL, "desired_state: must be \"up\" or \"down\"");
        s->desired_up = strcmp(json_string_value(ds), "up") == 0;
    }

    s->stop_grace_ms = JOBSPEC_DEFAULT_STOP_GRACE_MS;
    json_t *grace = field(rec, "stop_grace");
    if (grace && !json_is_number(grace))
        return err_set(err, PIER_EINVAL, "stop_grace: must be a number of seconds, got %s",
                       type_name(grace));
    rc =
        get_duration(rec, "stop_grace", "stop_grace", 0, MAX_STOP_GRACE_MS, &s->stop_grace_ms, err);
    return rc < 0 ? rc : 0;
}

static bool env_name_ok(const char *k)
{
    if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
        return false;
    for (k++; *k; k++)
        if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ||
              *k == '_'))
            return false;
    return true;
}

static int parse_args(const json_t *rec, struct jobspec *s, size_t *exec_bytes,
                      struct pier_err *err)
{
    json_t *args = field(rec, "args");
    if (!args)
        return err_set(err, PIER_EINVAL, "args: required (the command to run)");
    if (!json_is_array(args))
        return err_set(err, PIER_EINVAL, "args: must be an array of strings, got %s",
                       type_name(args));
    size_t n = json_array_size(args);
    if (n == 0)
        return err_set(err, PIER_EINVAL, "args: must not be empty");
    if (n > JOBSPEC_MAX_ARGS)
        return err_set(err, PIER_EINVAL, "args: %zu entries, the limit is %d", n, JOBSPEC_MAX_ARGS);
    s->args = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(args, i);
        char path[32];
        snprintf(path, sizeof(path), "args[%zu]", i);
        int rc = check_string(a, path, JOBSPEC_MAX_STRING - 1, err);
        if (rc < 0)
            return rc;
        if (i == 0 && json_string_length(a) == 0)
            return err_set(err, PIER_EINVAL, "args[0]: must not be empty");
        s->args[i] = xstrdup(json_string_value(a));
        s->n_args++;
        *exec_bytes += json_string_length(a) + 1;
    }
    return 0;
}

static int parse_env(const json_t *rec, struct jobspec *s, size_t *exec_bytes, struct pier_err *err)
{
    json_t *env = NULL;
    int rc = get_object(rec, "env", "env", &env, err);
    if (rc < 0)
        return rc;
    size_t n = env ? json_object_size(env) : 0;
    if (n > JOBSPEC_MAX_ENV)
        return err_set(err, PIER_EINVAL, "env: %zu variables, the limit is %d", n, JOBSPEC_MAX_ENV);
    s->env = xcalloc(n + 1, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v)
    {
        if (!env_name_ok(k))
            return err_set(err, PIER_EINVAL,
                           "env: \"%.64s\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*)", k);
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "env: value of %.64s must be a string, got %s", k,
                           type_name(v));
        /* "NAME=value" and its NUL must fit in one argument string. */
        size_t klen = strlen(k), vlen = json_string_length(v);
        size_t limit = klen + 2 < JOBSPEC_MAX_STRING ? JOBSPEC_MAX_STRING - klen - 2 : 0;
        if (vlen > limit)
            return err_set(err, PIER_EINVAL, "env: value of %.64s is %zu bytes, the limit is %zu",
                           k, vlen, limit);
        if (strlen(json_string_value(v)) != vlen)
            return err_set(err, PIER_EINVAL, "env: value of %.64s must not contain a NUL byte", k);
        struct buf e = BUF_INIT;
        buf_printf(&e, "%s=%s", k, json_string_value(v));
        *exec_bytes += e.len + 1;
        s->env[s->n_env++] = buf_detach(&e);
    }
    if (*exec_bytes > JOBSPEC_MAX_EXEC)
        return err_set(err, PIER_EINVAL, "args and env: %zu bytes together, the limit is %d",
                       *exec_bytes, JOBSPEC_MAX_EXEC);
    return 0;
}

static int parse_exec(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    size_t bytes = 0;
    int rc = parse_args(rec, s, &bytes, err);
    if (rc < 0)
        return rc;
    if ((rc = parse_env(rec, s, &bytes, err)) < 0)
        return rc;
    if ((rc = get_string(rec, "working_dir", "working_dir", MAX_PATH, &s->working_dir, err)) < 0)
        return rc;
    if (!s->working_dir)
        s->working_dir = xstrdup("/app");
    else if (s->working_dir[0] != '/')
        return err_set(err, PIER_EINVAL, "working_dir: \"%.64s\" must be an absolute path",
                       s->working_dir);
    return 0;
}

/* Whether an absolute path holds no "." or ".." component: a stack path
 * is named once, plainly. */
static bool plain_abs_path(const char *p)
{
    if (p[0] != '/')
        return false;
    for (const char *c = p; *c; c++) {
        if (c[0] != '/')
            continue;
        if (c[1] == '.' && (c[2] == '/' || c[2] == '\0'))
            return false;
        if (c[1] == '.' && c[2] == '.' && (c[3] == '/' || c[3] == '\0'))
            return false;
    }
    return true;
}

static int parse_artifact(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    json_t *art = NULL;
    int rc = get_object(rec, "artifact", "artifact", &art, err);
    if (rc <= 0)
        return rc;
    if ((rc = get_string(art, "stack", "artifact.stack", MAX_PATH, &s->stack, err)) < 0)
        return rc;
    if (s->stack && strcmp(s->stack, "host") != 0 && !plain_abs_path(s->stack))
        return err_set(err, PIER_EINVAL,
                       "artifact.stack: must be \"host\" or an absolute path without . or .., "
                       "got \"%.64s\"",
                       s->stack);
    if ((rc = get_string(art, "slug", "artifact.slug", MAX_URL, &s->slug, err)) < 0)
        return rc;
    if ((rc = get_bool(art, "pierd", &s->pierd, err)) < 0)
        return rc;
    /* /app is the slug's or the host's pierd, never both: a slug unpacked
     * around the bound binary would shadow or be shadowed by it. */
    if (s->pierd && s->slug)
        return err_set(err, PIER_EINVAL,
                       "artifact: pierd (the host's pierd at /app/pierd) and slug exclude each "
                       "other");
    if (!s->slug)
        return 0;
    const char *u = s->slug;
    size_t skip = strncmp(u, "http://", 7) == 0    ? 7
                  : strncmp(u, "https://", 8) == 0 ? 8
                  : strncmp(u, "file:///", 8) == 0 ? 7
                                                   : 0;
    if (skip == 0 || u[skip] == '\0')
        return err_set(err, PIER_EINVAL,
                       "artifact.slug: must be an http://, https:// or file:/// URL, got \"%.64s\"",
                       u);
    for (const char *c = u; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return err_set(err, PIER_EINVAL,
                           "artifact.slug: must not contain spaces or control characters");
    return 0;
}

/* ---- mounts and capabilities ---- */

/* Whether p is an absolute path written once, plainly: no "." or ".."
 * component, no "//", no trailing '/' (but for "/" itself), no control
 * characters. Such a path means what it says to crun and to a reader. */
static bool normal_abs_path(const char *p)
{
    if (p[0] != '/' || !plain_abs_path(p))
        return false;
    for (const char *c = p; *c; c++) {
        if ((unsigned char)*c < ' ' || *c == 0x7f)
            return false;
        if (c[0] == '/' && (c[1] == '/' || (c[1] == '\0' && c != p)))
            return false;
    }
    return true;
}

/* Whether path is dir or lies under it ("/procx" is not under "/proc"). */
static bool path_under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* Targets a mount may not take: the kernel's file systems, and what the
 * agent itself mounts (the slug, /tmp, pierslug and the buildpacks). */
static const char *const reserved_targets[] = {"/proc", "/sys", "/dev", "/app", "/tmp", "/.pier"};

static int parse_mount_path(const json_t *m, const char *key, const char *at, char **out,
                            struct pier_err *err)
{
    char path[64];
    snprintf(path, sizeof(path), "%s.%s", at, key);
    int rc = get_string(m, key, path, MAX_PATH, out, err);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return err_set(err, PIER_EINVAL, "%s: required (an absolute path)", path);
    if (!normal_abs_path(*out))
        return err_set(err, PIER_EINVAL,
                       "%s: \"%.64s\" must be an absolute path without ., .., // or a trailing /",
                       path, *out);
    return 0;
}

static int parse_mount(const json_t *m, struct jobspec_mount *out, size_t i, struct pier_err *err)
{
    char at[32];
    snprintf(at, sizeof(at), "mounts[%zu]", i);
    if (!json_is_object(m))
        return err_set(err, PIER_EINVAL,
                       "%s: must be an object {location, target, writeable}, got %s", at,
                       type_name(m));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v)
    {
        if (strcmp(k, "location") != 0 && strcmp(k, "target") != 0 && strcmp(k, "writeable") != 0)
            return err_set(
                err, PIER_EINVAL,
                "%s.%.32s: not supported (a mount is a bind: location, target, writeable)", at, k);
    }
    int rc = parse_mount_path(m, "location", at, &out->location, err);
    if (rc == 0)
        rc = parse_mount_path(m, "target", at, &out->target, err);
    if (rc < 0)
        return rc;
    if (strcmp(out->target, "/") == 0)
        return err_set(err, PIER_EINVAL, "%s.target: must not be /", at);
    for (size_t r = 0; r < sizeof(reserved_targets) / sizeof(*reserved_targets); r++)
        if (path_under(out->target, reserved_targets[r]))
            return err_set(
                err, PIER_EINVAL,
                "%s.target: %.64s%s%s is reserved (/proc, /sys, /dev, /app, /tmp and "
                "/.pier are the kernel's or the agent's)",
                at, out->target, strcmp(out->target, reserved_targets[r]) == 0 ? "" : ": under ",
                strcmp(out->target, reserved_targets[r]) == 0 ? "" : reserved_targets[r]);
    json_t *w = field(m, "writeable");
    if (w && !json_is_boolean(w))
        return err_set(err, PIER_EINVAL, "%s.writeable: must be true or false, got %s", at,
                       type_name(w));
    out->writeable = json_is_true(w);
    return 0;
}

static int parse_mounts(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    json_t *mounts = field(rec, "mounts");
    if (!mounts)
        return 0;
    if (!json_is_array(mounts))
        return err_set(err, PIER_EINVAL, "mounts: must be an array, got %s", type_name(mounts));
    size_t n = json_array_size(mounts);
    if (n > JOBSPEC_MAX_MOUNTS)
        return err_set(err, PIER_EINVAL, "mounts: %zu entries, the limit is %d", n,
                       JOBSPEC_MAX_MOUNTS);
    s->mounts = xcalloc(n ? n : 1, sizeof(*s->mounts));
    for (size_t i = 0; i < n; i++) {
        struct jobspec_mount *m = &s->mounts[i];
        s->n_mounts++;
        int rc = parse_mount(json_array_get(mounts, i), m, i, err);
        if (rc < 0)
            return rc;
        /* One inside another would have crun make the inner mount point in
         * whatever the outer one binds: a host directory. */
        for (size_t j = 0; j < i; j++)
            if (path_under(m->target, s->mounts[j].target) ||
                path_under(s->mounts[j].target, m->target))
                return err_set(err, PIER_EINVAL,
                               "mounts[%zu].target: %.64s overlaps mounts[%zu].target %.64s", i,
                               m->target, j, s->mounts[j].target);
    }
    return 0;
}

/* The capabilities Docker keeps for a container by default. A job may ask
 * for these and no others: none of them reaches beyond the container the
 * way CAP_SYS_ADMIN, CAP_NET_ADMIN or CAP_SYS_PTRACE would. */
static const char *const allowed_caps[] = {
    "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
    "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL",    "CAP_AUDIT_WRITE"};

bool jobspec_cap_ok(const char *name)
{
    for (size_t i = 0; name && i < sizeof(allowed_caps) / sizeof(*allowed_caps); i++)
        if (strcmp(name, allowed_caps[i]) == 0)
            return true;
    return false;
}

static int parse_caps(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    json_t *caps = field(rec, "linux_capabilities");
    if (!caps)
        return 0;
    if (!json_is_array(caps))
        return err_set(err, PIER_EINVAL, "linux_capabilities: must be an array of names, got %s",
                       type_name(caps));
    size_t n = json_array_size(caps), max = sizeof(allowed_caps) / sizeof(*allowed_caps);
    if (n > max)
        return err_set(err, PIER_EINVAL, "linux_capabilities: %zu entries, the limit is %zu", n,
                       max);
    s->caps = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(caps, i);
        char path[40];
        snprintf(path, sizeof(path), "linux_capabilities[%zu]", i);
        int rc = check_string(c, path, 64, err);
        if (rc < 0)
            return rc;
        const char *name = json_string_value(c);
        if (!jobspec_cap_ok(name))
            return err_set(err, PIER_EINVAL,
                           "%s: \"%.64s\" is not one a job may have (Docker's default set: "
                           "CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, "
                           "CAP_NET_RAW, CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP, "
                           "CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE)",
                           path, name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->caps[j], name) == 0)
                return err_set(err, PIER_EINVAL, "%s: %s is listed twice", path, name);
        s->caps[s->n_caps++] = xstrdup(name);
    }
    return 0;
}

/* resources.<name>.limit in Flynn's shape; "request" and unknown names are
 * another component's business. */
static int get_limit(const json_t *res, const char *name, int64_t min, int64_t max,
                     const char *unit, int64_t *out, struct pier_err *err)
{
    char path[64];
    snprintf(path, sizeof(path), "resources.%s", name);
    json_t *r = NULL;
    int rc = get_object(res, name, path, &r, err);
    if (rc <= 0)
        return rc;
    snprintf(path, sizeof(path), "resources.%s.limit", name);
    return get_int(r, "limit", path, min, max, unit, out, err);
}

static int parse_resources(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    s->memory = JOBSPEC_DEFAULT_MEMORY;
    s->cpu = JOBSPEC_DEFAULT_CPU;
    s->max_fd = JOBSPEC_DEFAULT_MAX_FD;
    s->max_procs = JOBSPEC_DEFAULT_MAX_PROCS;
    json_t *res = NULL;
    int rc = get_object(rec, "resources", "resources", &res, err);
    if (rc <= 0)
        return rc;
    if ((rc = get_limit(res, "memory", JOBSPEC_MIN_MEMORY, MAX_MEMORY, " bytes", &s->memory, err)) <
            0 ||
        (rc = get_limit(res, "cpu", 1, MAX_CPU, " milli-CPUs", &s->cpu, err)) < 0 ||
        (rc = get_limit(res, "max_fd", 1, MAX_FD, "", &s->max_fd, err)) < 0 ||
        (rc = get_limit(res, "max_procs", 1, MAX_PROCS, "", &s->max_procs, err)) < 0)
        return rc;
    return 0;
}

static int parse_check(const json_t *svc, struct jobspec_port *p, const char *at,
                       struct pier_err *err)
{
    char path[96];
    snprintf(path, sizeof(path), "%s.check", at);
    json_t *c = NULL;
    int rc = get_object(svc, "check", path, &c, err);
    if (rc <= 0)
        return rc;
    if (strcmp(p->proto, "tcp") != 0)
        return err_set(err, PIER_EINVAL, "%s: checks need proto \"tcp\"", path);
    struct jobspec_check *ck = &p->check;
    ck->type = JOBSPEC_CHECK_TCP;
    json_t *t = field(c, "type");
    if (t) {
        const char *ts = json_is_string(t) ? json_string_value(t) : "";
        if (strcmp(ts, "tcp") == 0)
            ck->type = JOBSPEC_CHECK_TCP;
        else if (strcmp(ts, "http") == 0)
            ck->type = JOBSPEC_CHECK_HTTP;
        else
            return err_set(err, PIER_EINVAL, "%s.type: must be \"tcp\" or \"http\"", path);
    }
    char sub[128];
    snprintf(sub, sizeof(sub), "%s.path", path);
    if ((rc = get_string(c, "path", sub, MAX_CHECK_PATH, &ck->path, err)) < 0)
        return rc;
    if (ck->path) {
        bool ok = ck->path[0] == '/';
        for (const char *q = ck->path; *q && ok; q++)
            ok = *q > ' ' && *q < 0x7f;
        if (!ok)
            return err_set(err, PIER_EINVAL,
                           "%s: must start with '/' and hold no spaces or control characters", sub);
    }
    ck->status = 200;
    snprintf(sub, sizeof(sub), "%s.status", path);
    if ((rc = get_int32(c, "status", sub, 0, 599, &ck->status, err)) < 0)
        return rc;
    if (ck->status > 0 && ck->status < 100)
        return err_set(err, PIER_EINVAL, "%s: must be 0 (any 2xx or 3xx) or 100 to 599, got %d",
                       sub, ck->status);
    ck->interval_ms = 1000;
    snprintf(sub, sizeof(sub), "%s.interval", path);
    if ((rc = get_duration(c, "interval", sub, 100, 3600000, &ck->interval_ms, err)) < 0)
        return rc;
    ck->timeout_ms = ck->interval_ms < 2000 ? ck->interval_ms : 2000;
    snprintf(sub, sizeof(sub), "%s.timeout", path);
    if ((rc = get_duration(c, "timeout", sub, 10, 3600000, &ck->timeout_ms, err)) < 0)
        return rc;
    ck->threshold = 2;
    snprintf(sub, sizeof(sub), "%s.threshold", path);
    if ((rc = get_int32(c, "threshold", sub, 1, 100, &ck->threshold, err)) < 0)
        return rc;
    if (ck->type == JOBSPEC_CHECK_HTTP) {
        if (!ck->path)
            ck->path = xstrdup("/");
    } else {
        free(ck->path);
        ck->path = NULL;
    }
    return 0;
}

static int parse_port(const json_t *e, struct jobspec_port *p, size_t i, struct pier_err *err)
{
    char at[32], path[64];
    snprintf(at, sizeof(at), "ports[%zu]", i);
    if (!json_is_object(e))
        return err_set(err, PIER_EINVAL, "%s: must be an object, got %s", at, type_name(e));
    snprintf(path, sizeof(path), "%s.port", at);
    int rc = get_int32(e, "port", path, 0, 65535, &p->port, err);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof(path), "%s.proto", at);
    if ((rc = get_string(e, "proto", path, 16, &p->proto, err)) < 0)
        return rc;
    if (!p->proto)
        p->proto = xstrdup("tcp");
    else if (strcmp(p->proto, "tcp") != 0 && strcmp(p->proto, "udp") != 0)
        return err_set(err, PIER_EINVAL, "%s: must be \"tcp\" or \"udp\"", path);

    snprintf(path, sizeof(path), "%s.service", at);
    json_t *svc = NULL;
    if ((rc = get_object(e, "service", path, &svc, err)) <= 0)
        return rc;
    char name_path[80];
    snprintf(name_path, sizeof(name_path), "%s.name", path);
    if ((rc = get_string(svc, "name", name_path, 100, &p->service, err)) < 0)
        return rc;
    if (rc == 0)
        return err_set(err, PIER_EINVAL, "%s: required", name_path);
    if (discover_check_service(p->service, err) < 0)
        return err_wrap(err, PIER_EINVAL, "%s", name_path);
    return parse_check(svc, p, path, err);
}

static int parse_ports(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    json_t *ports = field(rec, "ports");
    if (!ports) {
        /* Absent: one port, picked by the agent, announced as PORT. */
        s->ports = xcalloc(1, sizeof(*s->ports));
        s->ports[0].proto = xstrdup("tcp");
        s->n_ports = 1;
        return 0;
    }
    if (!json_is_array(ports))
        return err_set(err, PIER_EINVAL, "ports: must be an array, got %s", type_name(ports));
    size_t n = json_array_size(ports);
    if (n > JOBSPEC_MAX_PORTS)
        return err_set(err, PIER_EINVAL, "ports: %zu entries, the limit is %d", n,
                       JOBSPEC_MAX_PORTS);
    s->ports = xcalloc(n ? n : 1, sizeof(*s->ports));
    for (size_t i = 0; i < n; i++) {
        struct jobspec_port *p = &s->ports[i];
        s->n_ports++;
        int rc = parse_port(json_array_get(ports, i), p, i, err);
        if (rc < 0)
            return rc;
        for (size_t j = 0; j < i && p->port; j++)
            if (s->ports[j].port == p->port && strcmp(s->ports[j].proto, p->proto) == 0)
                return err_set(err, PIER_EINVAL, "ports[%zu]: port %d/%s is listed twice", i,
                               p->port, p->proto);
    }
    return 0;
}

static int parse_tty(const json_t *rec, struct jobspec *s, struct pier_err *err)
{
    s->tty_columns = 80;
    s->tty_lines = 24;
    int rc;
    if ((rc = get_bool(rec, "tty", &s->tty, err)) < 0 ||
        (rc = get_bool(rec, "stdin", &s->stdin_open, err)) < 0 ||
        (rc = get_bool(rec, "init", &s->init, err)) < 0 ||
        (rc = get_bool(rec, "disable_log", &s->disable_log, err)) < 0 ||
        (rc = get_int32(rec, "tty_columns", "tty_columns", 1, JOBSPEC_MAX_TTY, &s->tty_columns,
                        err)) < 0 ||
        (rc = get_int32(rec, "tty_lines", "tty_lines", 1, JOBSPEC_MAX_TTY, &s->tty_lines, err)) < 0)
        return rc;
    if (s->tty)
        s->stdin_open = true;
    return 0;
}

int jobspec_parse(const json_t *rec, struct jobspec **out, struct pier_err *err)
{
    *out = NULL;
    if (!json_is_object(rec))
        return err_set(err, PIER_EINVAL, "job record: must be a JSON object, got %s",
                       rec ? type_name(rec) : "nothing");
    struct jobspec *s = xcalloc(1, sizeof(*s));
    int rc = parse_identity(rec, s, err);
    if (rc == 0)
        rc = parse_exec(rec, s, err);
    if (rc == 0)
        rc = parse_artifact(rec, s, err);
    if (rc == 0)
        rc = parse_mounts(rec, s, err);
    if (rc == 0)
        rc = parse_caps(rec, s, err);
    if (rc == 0)
        rc = parse_resources(rec, s, err);
    if (rc == 0)
        rc = parse_ports(rec, s, err);
    if (rc == 0)
        rc = parse_tty(rec, s, err);
    if (rc < 0) {
        jobspec_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void jobspec_free(struct jobspec *s)
{
    if (!s)
        return;
    free(s->id);
    free(s->host_id);
    free(s->app);
    free(s->release);
    free(s->type);
    for (size_t i = 0; i < s->n_args; i++)
        free(s->args[i]);
    free(s->args);
    for (size_t i = 0; i < s->n_env; i++)
        free(s->env[i]);
    free(s->env);
    free(s->working_dir);
    free(s->stack);
    free(s->slug);
    for (size_t i = 0; i < s->n_ports; i++) {
        free(s->ports[i].proto);
        free(s->ports[i].service);
        free(s->ports[i].check.path);
    }
    free(s->ports);
    for (size_t i = 0; i < s->n_mounts; i++) {
        free(s->mounts[i].location);
        free(s->mounts[i].target);
    }
    free(s->mounts);
    for (size_t i = 0; i < s->n_caps; i++)
        free(s->caps[i]);
    free(s->caps);
    free(s);
}
