/* check: the controller's input checks (check.h), in the order of the
 * header; the routes part is in check_route.c. The handlers' files say
 * what they do with the result. */
#include "controller/check.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host/jobspec.h"
#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/uuid.h"

/* Stand-ins for what a job gets only when it is placed, to check a job
 * before then: the longest host id, and ids of the usual length, so that
 * sizes err on the safe side. */
#define STANDIN_UUID "00000000-0000-4000-8000-000000000000"
#define STANDIN_HOST "h00000000000000000000000"
#define STANDIN_JOB STANDIN_HOST "-" STANDIN_UUID

/* A field of obj, NULL when absent or null (a Go client sends null for an
 * empty map or slice). */
static json_t *opt(const json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    return json_is_null(v) ? NULL : v;
}

int check_strmap(const json_t *v, const char *field, struct pier_err *err)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return err_set(err, PIER_EINVAL, "%s must be an object of strings", field);
    const char *k;
    const json_t *x;
    json_object_foreach((json_t *)v, k, x)
    {
        if (!json_is_string(x))
            return err_set(err, PIER_EINVAL, "%s.%s must be a string", field, k);
    }
    return 0;
}

/* ---- keys ----
 *
 * A key is named by its fingerprint as OpenSSH prints it: "SHA256:" and
 * the unpadded base64 of the SHA-256 of the key blob. */

#define FP_PREFIX "SHA256:"

/* The key types OpenSSH writes, with how many length-prefixed fields
 * their wire form has (the type name first). */
static const struct {
    const char *name;
    size_t fields;
} key_types[] = {
    {"ssh-ed25519", 2},
    {"ssh-rsa", 3},
    {"ssh-dss", 5},
    {"ecdsa-sha2-nistp256", 3},
    {"ecdsa-sha2-nistp384", 3},
    {"ecdsa-sha2-nistp521", 3},
    {"sk-ssh-ed25519@openssh.com", 3},
    {"sk-ecdsa-sha2-nistp256@openssh.com", 4},
};

/* How many fields a key of type has; 0 for a type we do not know. */
static size_t type_fields(struct str t)
{
    for (size_t i = 0; i < sizeof(key_types) / sizeof(*key_types); i++)
        if (str_eq(t, key_types[i].name))
            return key_types[i].fields;
    return 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Whether blob is the wire form of a public key of type: as many
 * length-prefixed fields as the type has, filling it exactly, the first
 * naming the type (an ed25519 key's second field is its 32 bytes). */
static bool blob_ok(const struct buf *blob, struct str type)
{
    const unsigned char *p = (const unsigned char *)blob->p;
    size_t left = blob->len, nfields = 0;
    while (left > 0) {
        if (left < 4)
            return false;
        uint32_t n = be32(p);
        if (n > left - 4)
            return false;
        if (nfields == 0 && (n != type.len || memcmp(p + 4, type.p, n) != 0))
            return false;
        if (nfields == 1 && str_eq(type, "ssh-ed25519") && n != 32)
            return false;
        p += 4 + n;
        left -= 4 + n;
        nfields++;
    }
    return nfields == type_fields(type);
}

int check_ssh_key(const char *line, json_t **out, struct pier_err *err)
{
    if (!line || !*line || strlen(line) > CHECK_KEY_LINE_MAX)
        return err_set(err, PIER_EINVAL, "key is required: an OpenSSH public key line");
    const char *ws = " \t\r\n";
    const char *s = line + strspn(line, ws);
    struct str type = {s, strcspn(s, ws)};
    s = type.p + type.len;
    s += strspn(s, ws);
    struct str b64 = {s, strcspn(s, ws)};
    s = b64.p + b64.len;
    s += strspn(s, ws);
    size_t clen = strlen(s);
    while (clen > 0 && strchr(ws, s[clen - 1]))
        clen--;
    if (type.len == 0 || type_fields(type) == 0)
        return err_set(err, PIER_EINVAL,
                       "key must be an OpenSSH public key line of a known type (ssh-ed25519, "
                       "ssh-rsa, ecdsa-sha2-*, ...)");
    cleanup_buf struct buf blob = BUF_INIT;
    if (b64.len == 0 || base64_decode(&blob, b64.p, b64.len) < 0 || !blob_ok(&blob, type))
        return err_set(err, PIER_EINVAL, "key: the base64 part is not a valid %.*s key",
                       (int)type.len, type.p);
    for (size_t i = 0; i < clen; i++)
        if ((unsigned char)s[i] < ' ' && s[i] != '\t')
            return err_set(err, PIER_EINVAL, "key: the comment holds control characters");

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(blob.p, blob.len, md, &mdlen, EVP_sha256(), NULL) != 1)
        return err_set(err, PIER_EINTERNAL, "cannot hash the key");
    cleanup_buf struct buf fp = BUF_INIT, canon = BUF_INIT;
    buf_puts(&fp, FP_PREFIX);
    base64_encode(&fp, md, mdlen);
    while (fp.len > 0 && fp.p[fp.len - 1] == '=')
        fp.p[--fp.len] = '\0';
    buf_printf(&canon, "%.*s %.*s", (int)type.len, type.p, (int)b64.len, b64.p);
    json_t *k = json_pack("{s:s,s:s,s:s%}", "id", fp.p, "key", canon.p, "comment", s, clen);
    if (!k)
        return err_set(err, PIER_EINVAL, "key: the comment is not valid UTF-8");
    *out = k;
    return 0;
}

/* ---- releases ---- */

#define PROC_NAME_MAX 63
#define ENV_KEY_MAX 255
#define MEMORY_DEFAULT 1073741824LL /* 1 GiB, as Flynn */
#define MAX_FD_DEFAULT 10000LL

static bool proc_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > PROC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* An environment variable name as the host agent sets them: letters,
 * digits and '_', not starting with a digit (CONVENTIONS.md). */
static bool env_key_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ENV_KEY_MAX || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_'))
            return false;
    }
    return true;
}

static int check_env(const json_t *env, const char *field, struct pier_err *err)
{
    int rc = check_strmap(env, field, err);
    if (rc < 0 || !env || json_is_null(env))
        return rc;
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)env, k, v)
    {
        if (!env_key_ok(k))
            return err_set(err, PIER_EINVAL, "%s: \"%s\" is not a valid variable name", field, k);
    }
    return 0;
}

static int check_str_array(const json_t *a, const char *field, struct pier_err *err)
{
    if (!a || json_is_null(a))
        return 0;
    if (!json_is_array(a))
        return err_set(err, PIER_EINVAL, "%s must be an array of strings", field);
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "%s must be an array of strings", field);
    }
    return 0;
}

/* A resource limit: {"request": n|null, "limit": n|null}. A request left
 * out takes the limit, as Flynn does. */
static int fix_resource(json_t *spec, const char *field, struct pier_err *err)
{
    if (!json_is_object(spec))
        return err_set(err, PIER_EINVAL, "%s must be an object {request, limit}", field);
    json_t *req = json_object_get(spec, "request"), *lim = json_object_get(spec, "limit");
    if ((req && !json_is_null(req) && !json_is_integer(req)) ||
        (lim && !json_is_null(lim) && !json_is_integer(lim)))
        return err_set(err, PIER_EINVAL, "%s: request and limit must be integers", field);
    if ((!req || json_is_null(req)) && lim && json_is_integer(lim))
        json_object_set(spec, "request", lim);
    return 0;
}

static void set_default(json_t *res, const char *type, long long v)
{
    if (!json_object_get(res, type))
        json_object_set_new(
            res, type, json_pack("{s:I,s:I}", "request", (json_int_t)v, "limit", (json_int_t)v));
}

/* Checks process type pt (changed in place) and fills its resources. */
static int fix_process(const char *name, json_t *pt, struct pier_err *err)
{
    char f[128];
    if (!proc_name_ok(name))
        return err_set(err, PIER_EINVAL,
                       "process type \"%.63s\" must be 1 to 63 of A-Z a-z 0-9 _ -", name);
    if (!json_is_object(pt))
        return err_set(err, PIER_EINVAL, "processes.%s must be an object", name);
    static const char *const arrays[] = {"args", "cmd", "entrypoint"};
    int rc = 0;
    for (size_t i = 0; i < sizeof(arrays) / sizeof(*arrays) && rc == 0; i++) {
        snprintf(f, sizeof(f), "processes.%s.%s", name, arrays[i]);
        rc = check_str_array(json_object_get(pt, arrays[i]), f, err);
    }
    snprintf(f, sizeof(f), "processes.%s.env", name);
    if (rc == 0)
        rc = check_env(json_object_get(pt, "env"), f, err);
    json_t *ports = json_object_get(pt, "ports");
    if (rc == 0 && ports && !json_is_null(ports) && !json_is_array(ports))
        rc = err_set(err, PIER_EINVAL, "processes.%s.ports must be an array", name);
    size_t i;
    json_t *p;
    json_array_foreach(ports, i, p)
    {
        json_t *port = json_object_get(p, "port"), *proto = json_object_get(p, "proto");
        if (rc == 0 && (!json_is_object(p) || (port && !json_is_integer(port)) ||
                        (proto && !json_is_string(proto))))
            rc =
                err_set(err, PIER_EINVAL, "processes.%s.ports[%zu] must be {port, proto}", name, i);
    }
    if (rc < 0)
        return rc;
    json_t *res = json_object_get(pt, "resources");
    if (!res || json_is_null(res)) {
        res = json_object();
        json_object_set_new(pt, "resources", res);
    } else if (!json_is_object(res)) {
        return err_set(err, PIER_EINVAL, "processes.%s.resources must be an object", name);
    }
    const char *k;
    json_t *spec;
    json_object_foreach(res, k, spec)
    {
        snprintf(f, sizeof(f), "processes.%s.resources.%s", name, k);
        if ((rc = fix_resource(spec, f, err)) < 0)
            return rc;
    }
    set_default(res, "max_fd", MAX_FD_DEFAULT);
    set_default(res, "memory", MEMORY_DEFAULT);
    return 0;
}

/* The artifact ids of a creation body: "artifacts", or the legacy
 * "artifact"; each must be an id (the caller checks that it exists). A
 * new array in *out. */
static int release_artifacts(const json_t *body, json_t **out, struct pier_err *err)
{
    json_t *arts = json_object_get(body, "artifacts");
    const char *legacy = NULL;
    int rc = jsonx_get_str(body, "artifact", &legacy, err);
    if (rc < 0)
        return rc;
    if (arts && !json_is_null(arts) && !json_is_array(arts))
        return err_set(err, PIER_EINVAL, "artifacts must be an array of artifact ids");
    cleanup_json json_t *ids = json_array();
    if (json_array_size(arts) > 0)
        json_array_extend(ids, arts);
    else if (legacy && *legacy)
        json_array_append_new(ids, json_string(legacy));
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *id = json_string_value(v);
        if (!id || !uuid_ok(id))
            return err_set(err, PIER_EINVAL, "artifact %s not found", id ? id : "(not a string)");
    }
    *out = json_incref(ids);
    return 0;
}

/* Whether the jobs of process type (checked and filled in) of rel, the
 * release being built, can start: built as the scheduler builds them,
 * the host agent would take them. A type without a command is left
 * alone (Flynn allows it; the scheduler reports it if it is scaled). */
static int check_process_jobs(const json_t *rel, const char *type, struct pier_err *err)
{
    const json_t *pt = json_object_get(json_object_get(rel, "processes"), type);
    if (!json_array_size(json_object_get(pt, "args")) &&
        !json_array_size(json_object_get(pt, "entrypoint")) &&
        !json_array_size(json_object_get(pt, "cmd")))
        return 0;
    /* The artifacts are the caller's to check: the job is built without. */
    cleanup_json json_t *app = json_pack("{s:s,s:s}", "id", STANDIN_UUID, "name", "app");
    cleanup_json json_t *r =
        json_pack("{s:s,s:O,s:O}", "id", STANDIN_UUID, "env", json_object_get(rel, "env"),
                  "processes", json_object_get(rel, "processes"));
    cleanup_json json_t *job = NULL;
    int rc = jobbuild_spec(app, r, NULL, type, NULL, &job, err);
    if (rc == 0)
        rc = check_job_runnable(job, err);
    if (rc < 0)
        return err_wrap(err, PIER_EINVAL, "processes.%s: its jobs could not start", type);
    return 0;
}

int check_release(const json_t *body, json_t **out, struct pier_err *err)
{
    json_t *env = json_object_get(body, "env"), *meta = json_object_get(body, "meta");
    json_t *procs = json_object_get(body, "processes");
    const char *app_ref = NULL;
    int rc;
    if ((rc = jsonx_get_str(body, "app_id", &app_ref, err)) < 0 ||
        (rc = check_env(env, "env", err)) < 0 || (rc = check_strmap(meta, "meta", err)) < 0)
        return rc;
    if (procs && !json_is_null(procs) && !json_is_object(procs))
        return err_set(err, PIER_EINVAL, "processes must be an object of process types");
    cleanup_json json_t *rel = json_object();
    if (app_ref && *app_ref)
        json_object_set_new(rel, "app_id", json_string(app_ref));
    json_t *arts = NULL;
    if ((rc = release_artifacts(body, &arts, err)) < 0)
        return rc;
    json_object_set_new(rel, "artifacts", arts);
    json_object_set_new(rel, "env", json_is_object(env) ? json_deep_copy(env) : json_object());
    json_object_set_new(rel, "meta", json_is_object(meta) ? json_deep_copy(meta) : json_object());
    json_t *ps = json_is_object(procs) ? json_deep_copy(procs) : json_object();
    json_object_set_new(rel, "processes", ps);
    const char *k;
    json_t *pt;
    json_object_foreach(ps, k, pt)
    {
        if ((rc = fix_process(k, pt, err)) < 0 || (rc = check_process_jobs(rel, k, err)) < 0)
            return rc;
    }
    *out = json_incref(rel);
    return 0;
}

/* ---- formations ---- */

static int64_t count_of(const json_t *procs, const char *type)
{
    json_t *v = json_object_get(procs, type);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

int check_scale(const json_t *app, const json_t *rel, const json_t *old, const json_t *procs,
                const json_t *tags, struct pier_err *err)
{
    const json_t *types = json_object_get(rel, "processes");
    const char *rid = json_string_value(json_object_get(rel, "id"));
    if (procs && !json_is_object(procs))
        return err_set(err, PIER_EINVAL, "processes must be an object of counts");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)procs, k, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > CHECK_SCALE_MAX)
            return err_set(err, PIER_EINVAL, "processes.%s must be a count from 0 to %d", k,
                           CHECK_SCALE_MAX);
        if (!json_object_get(types, k))
            return err_set(err, PIER_EINVAL, "release %s has no process type %s", rid, k);
    }
    if (tags && !json_is_object(tags))
        return err_set(err, PIER_EINVAL, "tags must be an object {type: {key: value}}");
    json_object_foreach((json_t *)tags, k, v)
    {
        char f[128];
        snprintf(f, sizeof(f), "tags.%s", k);
        int rc = check_strmap(v, f, err);
        if (rc < 0)
            return rc;
        if (!json_object_get(types, k))
            return err_set(err, PIER_EINVAL, "release %s has no process type %s", rid, k);
    }
    if (!json_is_true(json_object_get(app, "protected")))
        return 0;
    const json_t *old_procs = json_object_get(old, "processes");
    json_object_foreach((json_t *)types, k, v)
    {
        if (count_of(old_procs, k) > 0 && count_of(procs, k) == 0)
            return err_set(err, PIER_EINVAL, "app %s is protected: %s cannot be scaled to zero",
                           json_string_value(json_object_get(app, "name")), k);
    }
    return 0;
}

/* ---- one-off jobs ---- */

static int check_strings(const json_t *v, const char *name, struct pier_err *err)
{
    if (!json_is_array(v))
        return err_set(err, PIER_EINVAL, "%s: must be an array of strings", name);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        if (!json_is_string(s))
            return err_set(err, PIER_EINVAL, "%s[%zu]: must be a string", name, i);
    }
    return 0;
}

static int check_string_map(const json_t *v, const char *name, struct pier_err *err)
{
    if (!json_is_object(v))
        return err_set(err, PIER_EINVAL, "%s: must be an object of strings", name);
    const char *k;
    json_t *s;
    json_object_foreach((json_t *)v, k, s)
    {
        if (!json_is_string(s))
            return err_set(err, PIER_EINVAL, "%s.%s: must be a string", name, k);
    }
    return 0;
}

/* The command: "args", else Flynn's older "entrypoint" + "cmd". New. */
static int newjob_args(const json_t *body, json_t **out, struct pier_err *err)
{
    const char *names[] = {"args", "entrypoint", "cmd"};
    for (int i = 0; i < 3; i++) {
        const json_t *v = opt(body, names[i]);
        if (v && check_strings(v, names[i], err) < 0)
            return PIER_EINVAL;
    }
    const json_t *args = opt(body, "args");
    json_t *a = json_array();
    if (args && json_array_size(args)) {
        json_array_extend(a, (json_t *)args);
    } else {
        if (opt(body, "entrypoint"))
            json_array_extend(a, opt(body, "entrypoint"));
        if (opt(body, "cmd"))
            json_array_extend(a, opt(body, "cmd"));
    }
    if (!json_array_size(a) || !*json_string_value(json_array_get(a, 0))) {
        json_decref(a);
        return err_set(err, PIER_EINVAL, "args: a one-off job needs a command (\"args\")");
    }
    *out = a;
    return 0;
}

static int get_int_in(const json_t *body, const char *name, int lo, int hi, int *out,
                      struct pier_err *err)
{
    const json_t *v = opt(body, name);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return err_set(err, PIER_EINVAL, "%s: must be an integer from %d to %d", name, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_flag(const json_t *body, const char *name, bool *out, struct pier_err *err)
{
    const json_t *v = opt(body, name);
    if (v && !json_is_boolean(v))
        return err_set(err, PIER_EINVAL, "%s: must be true or false", name);
    *out = json_is_true(v);
    return 0;
}

int check_newjob(const json_t *body, bool attach, struct check_newjob *out, struct pier_err *err)
{
    memset(out, 0, sizeof(*out));
    const json_t *relv = opt(body, "release");
    const char *rel_id = json_string_value(relv);
    if (!relv)
        return err_set(err, PIER_EINVAL, "release: required (the release to run)");
    if (!rel_id || !uuid_ok(rel_id))
        return err_set(err, PIER_EINVAL, "release: must be a release id");
    bool tty = false, disable_log = false, release_env = false;
    int cols = 0, lines = 0;
    const json_t *env = opt(body, "env"), *meta = opt(body, "meta");
    const json_t *res = opt(body, "resources");
    if ((env && check_string_map(env, "env", err) < 0) ||
        (meta && check_string_map(meta, "meta", err) < 0))
        return PIER_EINVAL;
    if (res && !json_is_object(res))
        return err_set(err, PIER_EINVAL, "resources: must be an object");
    if (get_flag(body, "tty", &tty, err) < 0 ||
        get_flag(body, "disable_log", &disable_log, err) < 0 ||
        get_flag(body, "release_env", &release_env, err) < 0 ||
        get_int_in(body, "tty_columns", 0, 10000, &cols, err) < 0 ||
        get_int_in(body, "tty_lines", 0, 10000, &lines, err) < 0)
        return PIER_EINVAL;
    const json_t *ids = opt(body, "artifacts");
    if (ids && check_strings(ids, "artifacts", err) < 0)
        return PIER_EINVAL;
    if (opt(body, "artifact") && !json_is_string(opt(body, "artifact")))
        return err_set(err, PIER_EINVAL, "artifact: must be an artifact id");
    json_t *args = NULL;
    if (newjob_args(body, &args, err) < 0)
        return PIER_EINVAL;
    *out = (struct check_newjob){
        .release = rel_id,
        .release_env = release_env,
        .log_hidden = attach && disable_log,
        .args = args,
        .oneoff =
            {
                .args = args,
                .env = env,
                .meta = meta,
                .tty = tty,
                .stdin_open = attach,
                /* An attached job keeps its log: it is the output of a job
                 * that ends before the attach reaches it. */
                .disable_log = disable_log && !attach,
                .tty_columns = cols,
                .tty_lines = lines,
                .resources = res,
            },
    };
    return 0;
}

void check_newjob_clear(struct check_newjob *nj)
{
    json_decref(nj->args);
    memset(nj, 0, sizeof(*nj));
}

int check_job_runnable(const json_t *job, struct pier_err *err)
{
    cleanup_json json_t *j = json_deep_copy(job);
    if (!json_is_object(j))
        return err_set(err, PIER_EINVAL, "the job is not an object");
    json_object_set_new(j, "host_id", json_string(STANDIN_HOST));
    json_object_set_new(j, "id", json_string(STANDIN_JOB));
    struct jobspec *s = NULL;
    int rc = jobspec_parse(j, &s, err);
    jobspec_free(s);
    return rc;
}

/* ---- events ---- */

bool check_event_id(const char *s, int64_t *out)
{
    if (!s || !*s || strlen(s) > 18)
        return false;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
    }
    *out = strtoll(s, NULL, 10);
    return true;
}

json_t *check_event_types(const char *list)
{
    json_t *types = json_array();
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        /* Not checked as UTF-8: a type that is not matches no event,
         * where a NULL left out of the list would have matched them all. */
        if (n > 0)
            json_array_append_new(types, json_stringn_nocheck(p, n));
        p += n + (p[n] == ',');
    }
    return types;
}
