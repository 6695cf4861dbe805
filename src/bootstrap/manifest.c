/* manifest: reading, filling in and checking the bootstrap manifest
 * (manifest.h). Placeholders are filled first, in every string of the
 * document, so an unknown one is found wherever it is; the shape is
 * checked after, field by field, each message saying where. */
#include "bootstrap/manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/jsonx.h"
#include "lib/keys.h"

#define MAX_APPS 64
#define MAX_COUNT 100
#define PLACEHOLDER_MAX 64

/* ---- placeholders ---- */

static bool name_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* The names in vars, comma-separated, for messages. */
static void known_names(const json_t *vars, struct buf *out)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)vars, k, v)
    {
        buf_printf(out, "%s%s", out->len ? ", " : "", k);
    }
    if (!out->len)
        buf_puts(out, "none");
}

int manifest_fill(const char *s, const json_t *vars, char **out, struct pier_err *err)
{
    struct buf b = BUF_INIT;
    buf_puts(&b, "");
    for (const char *p = s; *p;) {
        const char *open = strstr(p, "{{");
        if (!open) {
            buf_puts(&b, p);
            break;
        }
        buf_append(&b, p, (size_t)(open - p));
        const char *name = open + 2, *end = name;
        while (name_char(*end) && end - name <= PLACEHOLDER_MAX)
            end++;
        if (end == name || end - name > PLACEHOLDER_MAX || strncmp(end, "}}", 2) != 0) {
            buf_free(&b);
            return err_set(err, PIER_EINVAL,
                           "\"%.40s\": a placeholder is {{NAME}}, NAME of A-Z a-z 0-9 _", open);
        }
        char key[PLACEHOLDER_MAX + 2];
        snprintf(key, sizeof(key), "%.*s", (int)(end - name), name);
        const char *val = json_string_value(json_object_get(vars, key));
        if (!val) {
            cleanup_buf struct buf known = BUF_INIT;
            known_names(vars, &known);
            buf_free(&b);
            return err_set(err, PIER_EINVAL,
                           "unknown placeholder {{%s}} (known: %s; give it with --var %s=VALUE)",
                           key, known.p, key);
        }
        buf_puts(&b, val);
        p = end + 2;
    }
    *out = buf_detach(&b);
    return 0;
}

/* Fills every string under v in place; *where names the spot for errors. */
static int fill_tree(json_t *v, const json_t *vars, struct buf *where, struct pier_err *err)
{
    size_t mark = where->len;
    int rc = 0;
    if (json_is_string(v)) {
        char *s = NULL;
        rc = manifest_fill(json_string_value(v), vars, &s, err);
        if (rc < 0)
            return err_wrap(err, rc, "%s", where->len ? where->p : "(top)");
        json_string_set(v, s);
        free(s);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            buf_printf(where, "[%zu]", i);
            rc = fill_tree(e, vars, where, err);
            where->len = mark;
            where->p[mark] = '\0';
            if (rc < 0)
                return rc;
        }
    } else if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e)
        {
            buf_printf(where, "%s%s", mark ? "." : "", k);
            rc = fill_tree(e, vars, where, err);
            where->len = mark;
            if (where->p)
                where->p[mark] = '\0';
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

/* ---- shape ---- */

/* Refuses a key of obj that is not in allowed (NULL-terminated). */
static int only_fields(const json_t *obj, const char *const *allowed, const char *where,
                       struct pier_err *err)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok) {
            cleanup_buf struct buf list = BUF_INIT;
            for (const char *const *a = allowed; *a; a++)
                buf_printf(&list, "%s%s", list.len ? ", " : "", *a);
            return err_set(err, PIER_EINVAL, "%s%s%s: unknown field (known: %s)", where,
                           *where ? "." : "", k, list.p);
        }
    }
    return 0;
}

/* An object of strings (absent: an empty one is set). */
static int strmap(json_t *obj, const char *field, const char *where, struct pier_err *err)
{
    json_t *m = json_object_get(obj, field);
    if (!m) {
        json_object_set_new(obj, field, json_object());
        return 0;
    }
    if (!json_is_object(m))
        return err_set(err, PIER_EINVAL, "%s.%s must be an object of strings", where, field);
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v)
    {
        if (!json_is_string(v))
            return err_set(err, PIER_EINVAL, "%s.%s.%s must be a string", where, field, k);
    }
    return 0;
}

static const char *const proc_fields[] = {
    "args", "cmd",  "entrypoint", "env", "ports", "resources", "mounts", "linux_capabilities",
    "omni", "data", "volumes",    NULL,
};
static const char *const port_fields[] = {"port", "proto", "service", NULL};
static const char *const service_fields[] = {"name", "create", "check", NULL};
static const char *const mount_fields[] = {"location", "target", "writeable", NULL};

/* Each element of field (an array, when present) must be an object with
 * only the allowed fields. */
static int object_list(const json_t *pt, const char *field, const char *const *allowed,
                       const char *where, struct pier_err *err)
{
    json_t *a = json_object_get(pt, field);
    if (!a)
        return 0;
    if (!json_is_array(a))
        return err_set(err, PIER_EINVAL, "%s.%s must be an array", where, field);
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e)
    {
        char w[256];
        snprintf(w, sizeof(w), "%s.%s[%zu]", where, field, i);
        if (!json_is_object(e))
            return err_set(err, PIER_EINVAL, "%s must be an object", w);
        int rc = only_fields(e, allowed, w, err);
        json_t *svc = json_object_get(e, "service");
        if (rc == 0 && svc && allowed == port_fields) {
            char ws[300];
            snprintf(ws, sizeof(ws), "%s.service", w);
            rc = json_is_object(svc) ? only_fields(svc, service_fields, ws, err)
                                     : err_set(err, PIER_EINVAL, "%s must be an object", ws);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int check_process(const char *type, json_t *pt, const char *where, struct pier_err *err)
{
    char w[256];
    snprintf(w, sizeof(w), "%s.processes.%s", where, type);
    if (!json_is_object(pt))
        return err_set(err, PIER_EINVAL, "%s must be an object", w);
    int rc = only_fields(pt, proc_fields, w, err);
    json_t *args = json_object_get(pt, "args");
    if (rc == 0 && (!json_is_array(args) || json_array_size(args) == 0))
        rc = err_set(err, PIER_EINVAL, "%s.args must be a non-empty array of strings", w);
    size_t i;
    json_t *a;
    json_array_foreach(args, i, a)
    {
        if (rc == 0 && !json_is_string(a))
            rc = err_set(err, PIER_EINVAL, "%s.args[%zu] must be a string", w, i);
    }
    if (rc == 0)
        rc = object_list(pt, "ports", port_fields, w, err);
    if (rc == 0)
        rc = object_list(pt, "mounts", mount_fields, w, err);
    return rc;
}

static int check_formation(json_t *app, const char *where, struct pier_err *err)
{
    json_t *f = json_object_get(app, "formation");
    const json_t *procs = json_object_get(app, "processes");
    if (!f) {
        json_object_set_new(app, "formation", json_object());
        return 0;
    }
    if (!json_is_object(f))
        return err_set(err, PIER_EINVAL, "%s.formation must be an object {type: count}", where);
    const char *k;
    json_t *v;
    json_object_foreach(f, k, v)
    {
        if (!json_object_get(procs, k))
            return err_set(err, PIER_EINVAL, "%s.formation.%s: no such process type", where, k);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_COUNT)
            return err_set(err, PIER_EINVAL, "%s.formation.%s must be a count from 0 to %d", where,
                           k, MAX_COUNT);
    }
    return 0;
}

static const char *const route_fields[] = {
    "type",    "domain",         "path",
    "service", "port",           "leader",
    "sticky",  "drain_backends", "disable_keep_alives",
    NULL,
};

static int check_routes(json_t *app, const char *where, struct pier_err *err)
{
    json_t *r = json_object_get(app, "routes");
    if (!r) {
        json_object_set_new(app, "routes", json_array());
        return 0;
    }
    if (!json_is_array(r))
        return err_set(err, PIER_EINVAL, "%s.routes must be an array", where);
    size_t i;
    json_t *e;
    json_array_foreach(r, i, e)
    {
        char w[256];
        snprintf(w, sizeof(w), "%s.routes[%zu]", where, i);
        if (!json_is_object(e))
            return err_set(err, PIER_EINVAL, "%s must be an object", w);
        int rc = only_fields(e, route_fields, w, err);
        if (rc < 0)
            return rc;
        const char *type = json_string_value(json_object_get(e, "type"));
        const char *domain = json_string_value(json_object_get(e, "domain"));
        const char *service = json_string_value(json_object_get(e, "service"));
        if (!type || (strcmp(type, "http") != 0 && strcmp(type, "tcp") != 0))
            return err_set(err, PIER_EINVAL, "%s.type must be \"http\" or \"tcp\"", w);
        if (strcmp(type, "http") == 0 && (!domain || !*domain))
            return err_set(err, PIER_EINVAL, "%s.domain is required for an http route", w);
        if (!service || !*service)
            return err_set(err, PIER_EINVAL, "%s.service is required", w);
    }
    return 0;
}

/* tags, when present: {type: {key: value}}, each type one of processes. */
static int check_tags(json_t *app, const char *where, struct pier_err *err)
{
    json_t *t = json_object_get(app, "tags");
    const json_t *procs = json_object_get(app, "processes");
    if (!t)
        return 0;
    if (!json_is_object(t))
        return err_set(err, PIER_EINVAL, "%s.tags must be an object {type: {key: value}}", where);
    const char *type;
    json_t *kv;
    json_object_foreach(t, type, kv)
    {
        if (!json_object_get(procs, type))
            return err_set(err, PIER_EINVAL, "%s.tags.%s: no such process type", where, type);
        if (!json_is_object(kv))
            return err_set(err, PIER_EINVAL, "%s.tags.%s must be an object {key: value}", where,
                           type);
        const char *k;
        json_t *v;
        json_object_foreach(kv, k, v)
        {
            if (!*k || !json_is_string(v))
                return err_set(err, PIER_EINVAL, "%s.tags.%s.%s must be a string", where, type, k);
        }
    }
    return 0;
}

static const char *const app_fields[] = {
    "name", "meta", "env", "processes", "formation", "tags", "routes", NULL,
};

static int check_app(json_t *app, size_t i, json_t *names, struct pier_err *err)
{
    char where[160];
    const char *name = json_string_value(json_object_get(app, "name"));
    if (!json_is_object(app))
        return err_set(err, PIER_EINVAL, "apps[%zu] must be an object", i);
    if (!name || !keys_app_name_ok(name))
        return err_set(err, PIER_EINVAL,
                       "apps[%zu].name must be an app name (a-z, 0-9 and inner dashes)", i);
    snprintf(where, sizeof(where), "apps[%zu] (%s)", i, name);
    if (json_object_get(names, name))
        return err_set(err, PIER_EINVAL, "%s: the name %s is used twice", where, name);
    json_object_set_new(names, name, json_true());
    int rc = only_fields(app, app_fields, where, err);
    if (rc == 0)
        rc = strmap(app, "meta", where, err);
    if (rc == 0)
        rc = strmap(app, "env", where, err);
    if (rc < 0)
        return rc;
    json_t *procs = json_object_get(app, "processes");
    if (!json_is_object(procs) || json_object_size(procs) == 0)
        return err_set(err, PIER_EINVAL, "%s.processes must be an object of process types", where);
    const char *type;
    json_t *pt;
    json_object_foreach(procs, type, pt)
    {
        if ((rc = check_process(type, pt, where, err)) < 0)
            return rc;
    }
    if ((rc = check_formation(app, where, err)) < 0 || (rc = check_tags(app, where, err)) < 0)
        return rc;
    return check_routes(app, where, err);
}

static int check_doc(json_t *doc, struct pier_err *err)
{
    static const char *const top[] = {"version", "apps", NULL};
    int rc = only_fields(doc, top, "", err);
    if (rc < 0)
        return rc;
    json_t *v = json_object_get(doc, "version");
    if (!json_is_integer(v) || json_integer_value(v) != 1)
        return err_set(err, PIER_EINVAL, "version must be 1");
    json_t *apps = json_object_get(doc, "apps");
    if (!json_is_array(apps) || json_array_size(apps) > MAX_APPS)
        return err_set(err, PIER_EINVAL, "apps must be an array of at most %d apps", MAX_APPS);
    cleanup_json json_t *names = json_object();
    size_t i;
    json_t *app;
    json_array_foreach(apps, i, app)
    {
        if ((rc = check_app(app, i, names, err)) < 0)
            return rc;
    }
    return 0;
}

static int read_file(const char *path, struct buf *out, struct pier_err *err)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "%s", strerror(errno));
    int rc = fs_read_fd(fd, out, MANIFEST_MAX_BYTES);
    if (rc == -EFBIG)
        return err_set(err, PIER_EINVAL, "larger than %d bytes", MANIFEST_MAX_BYTES);
    if (rc < 0)
        return err_set(err, rc, "%s", strerror(-rc));
    return 0;
}

int manifest_parse(const char *text, size_t len, const json_t *vars, json_t **out,
                   struct pier_err *err)
{
    *out = NULL;
    if (len > MANIFEST_MAX_BYTES)
        return err_set(err, PIER_EINVAL, "larger than %d bytes", MANIFEST_MAX_BYTES);
    cleanup_json json_t *doc = NULL;
    int rc = jsonx_parse_object(text ? text : "", len, &doc, err);
    if (rc == 0) {
        cleanup_buf struct buf where = BUF_INIT;
        rc = fill_tree(doc, vars, &where, err);
    }
    if (rc == 0)
        rc = check_doc(doc, err);
    if (rc < 0)
        return rc;
    *out = steal_pointer(&doc);
    return 0;
}

int manifest_load(const char *path, const json_t *vars, json_t **out, struct pier_err *err)
{
    *out = NULL;
    cleanup_buf struct buf text = BUF_INIT;
    int rc = read_file(path, &text, err);
    if (rc == 0)
        rc = manifest_parse(text.p, text.len, vars, out, err);
    if (rc < 0)
        return err_wrap(err, rc, "manifest %s", path);
    return 0;
}
