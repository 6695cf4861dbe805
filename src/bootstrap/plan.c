/* plan: what a bootstrap is going to run, decided before anything starts.
 *
 * The ids of what it creates (each app, its release, the two system
 * artifacts) are chosen once and kept in STATE/bootstrap.json, written
 * before the first job starts: the jobs carry the app and release ids as
 * labels, so a bootstrap killed between starting a job and creating the
 * app's records must create them, on its next run, with the ids its jobs
 * already have. Otherwise the scheduler would not count those jobs as the
 * formation's and would start others.
 *
 *   {"version":1,"artifacts":{"pierd":ID,"stack":ID},
 *    "apps":{"controller":{"app":ID,"release":ID,"complete":true},...}}
 *
 * An app the store already has (a system app with a current release) is
 * taken as it is: its release and formation, whatever the manifest says
 * now, as a deploy may have changed them since. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bootstrap/bootstrap_int.h"
#include "controller/check.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/uuid.h"
#include "scheduler/jobbuild.h"

#define PLAN_FILE "bootstrap.json"
#define PLAN_MAX_BYTES (256 * 1024)

/* ---- the plan file ---- */

static void plan_path(const struct bs *b, struct buf *out)
{
    buf_printf(out, "%s/%s", b->data_dir, PLAN_FILE);
}

int plan_load(struct bs *b, struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT, text = BUF_INIT;
    plan_path(b, &path);
    cleanup_close int fd = open(path.p, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT)
        return err_set(err, -errno, "%s: %s", path.p, strerror(errno));
    json_t *plan = NULL;
    if (fd >= 0) {
        int rc = fs_read_fd(fd, &text, PLAN_MAX_BYTES);
        if (rc < 0)
            return err_set(err, rc, "%s: %s", path.p, rc == -EFBIG ? "too large" : strerror(-rc));
        if (jsonx_parse_object(text.p ? text.p : "", text.len, &plan, err) < 0)
            return err_wrap(err, PIER_EINVAL,
                            "%s (the ids of an earlier bootstrap; move it away to plan anew)",
                            path.p);
    } else {
        plan = json_pack("{s:i}", "version", 1);
    }
    static const char *const parts[] = {"artifacts", "apps"};
    for (size_t i = 0; i < 2; i++)
        if (!json_is_object(json_object_get(plan, parts[i])))
            json_object_set_new(plan, parts[i], json_object());
    json_decref(b->plan);
    b->plan = plan;
    return 0;
}

int plan_save(struct bs *b, struct pier_err *err)
{
    cleanup_buf struct buf path = BUF_INIT;
    plan_path(b, &path);
    cleanup_free char *text = json_dumps(b->plan, JSON_INDENT(2) | JSON_SORT_KEYS);
    size_t n = strlen(text);
    cleanup_buf struct buf out = BUF_INIT;
    buf_append(&out, text, n);
    buf_putc(&out, '\n');
    return fs_write_atomic(path.p, out.p, out.len, 0600, true, err);
}

/* The planned id at plan[section][name][field] (field NULL: plan[section]
 * [name] itself is the id), made and kept when there is none. */
static const char *planned_id(struct bs *b, const char *section, const char *name,
                              const char *field)
{
    json_t *sec = json_object_get(b->plan, section); /* borrowed */
    json_t *holder = sec;
    const char *key = name;
    if (field) {
        holder = json_object_get(sec, name);
        if (!json_is_object(holder)) {
            holder = json_object();
            json_object_set_new(sec, name, holder);
        }
        key = field;
    }
    const char *id = bs_str(holder, key);
    if (!id || !uuid_ok(id)) {
        char fresh[UUID_LEN];
        uuid_new(fresh);
        json_object_set_new(holder, key, json_string(fresh));
        id = bs_str(holder, key);
    }
    return id;
}

static void plan_set(struct bs *b, const char *name, const char *field, json_t *v)
{
    json_t *apps = json_object_get(b->plan, "apps");
    json_t *e = json_object_get(apps, name);
    if (!json_is_object(e)) {
        e = json_object();
        json_object_set_new(apps, name, e);
    }
    json_object_set_new(e, field, v);
}

void plan_mark_complete(struct bs *b, const char *name)
{
    plan_set(b, name, "complete", json_true());
}

/* ---- the system artifacts ---- */

/* The record of artifact id from the store into *out, or PIER_ENOTFOUND. */
static int store_record(struct bs *b, const char *prefix, const char *id, json_t **out,
                        struct pier_err *err)
{
    cleanup_buf struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", prefix, id);
    struct store_kv *kv = NULL;
    int rc = store_get(b->s, key.p, &kv, err);
    if (rc == 0) {
        rc = jsonx_parse_object(kv->value, kv->value_len, out, err);
        if (rc < 0)
            err_wrap(err, rc, "%s", key.p);
    }
    store_kv_free(kv);
    return rc;
}

int plan_artifacts(struct bs *b, struct pier_err *err)
{
    /* Planned as "pierd": a cluster bootstrapped before has its tarball
     * artifact under "file", which its system apps' releases keep until
     * they are redeployed; apps created from now on get the host's pierd. */
    const char *file_id = planned_id(b, "artifacts", "pierd", NULL);
    const char *stack_id = planned_id(b, "artifacts", "stack", NULL);
    json_decref(b->sys_file);
    json_decref(b->sys_stack);
    b->sys_file = b->sys_stack = NULL;
    int rc = store_record(b, KEYS_ARTIFACTS, file_id, &b->sys_file, err);
    if (rc == PIER_ENOTFOUND)
        b->sys_file = json_pack("{s:s,s:s,s:s,s:{}}", "id", file_id, "type", "file", "uri",
                                JOBBUILD_PIERD_URI, "meta");
    else if (rc < 0)
        return rc;
    rc = store_record(b, KEYS_ARTIFACTS, stack_id, &b->sys_stack, err);
    if (rc == PIER_ENOTFOUND)
        b->sys_stack = json_pack("{s:s,s:s,s:s,s:{}}", "id", stack_id, "type", "flynn", "uri",
                                 JOBBUILD_HOST_STACK_URI, "meta");
    else if (rc < 0)
        return rc;
    return 0;
}

/* ---- the apps ---- */

void sysapp_clear(struct sysapp *a)
{
    json_decref(a->app);
    json_decref(a->release);
    json_decref(a->artifacts);
    json_decref(a->processes);
    a->app = a->release = a->artifacts = a->processes = NULL;
}

/* The artifact records of release, in its order. */
static int release_artifacts(struct bs *b, const json_t *release, json_t **out,
                             struct pier_err *err)
{
    cleanup_json json_t *arts = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(release, "artifacts"), i, v)
    {
        const char *id = json_string_value(v);
        if (!id)
            continue;
        if (strcmp(id, bs_str(b->sys_file, "id")) == 0) {
            json_array_append(arts, b->sys_file);
        } else if (strcmp(id, bs_str(b->sys_stack, "id")) == 0) {
            json_array_append(arts, b->sys_stack);
        } else {
            json_t *a = NULL;
            int rc = store_record(b, KEYS_ARTIFACTS, id, &a, err);
            if (rc < 0)
                return err_wrap(err, rc, "artifact %s of release %s", id, bs_str(release, "id"));
            json_array_append_new(arts, a);
        }
    }
    *out = steal_pointer(&arts);
    return 0;
}

/* The env of a system release: the manifest's, and in a sanitizer build
 * ASAN_OPTIONS turning LeakSanitizer off (it needs ptrace, which a job's
 * seccomp profile refuses, and would fail every exit). */
static json_t *release_env(const json_t *m)
{
    json_t *env = json_deep_copy(json_object_get(m, "env"));
#if defined(__SANITIZE_ADDRESS__)
#define BS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BS_ASAN 1
#endif
#endif
#ifdef BS_ASAN
    if (!json_object_get(env, "ASAN_OPTIONS"))
        json_object_set_new(env, "ASAN_OPTIONS", json_string("detect_leaks=0"));
#endif
    return env;
}

/* The release the manifest describes, with id rid, as the controller will
 * store it (check_release: Flynn's default resources filled in, and
 * refused here, before anything starts, when its jobs could not run). */
static int manifest_release(struct bs *b, struct sysapp *a, const char *app_id, const char *rid,
                            struct pier_err *err)
{
    cleanup_json json_t *body =
        json_pack("{s:o,s:O,s:[s,s],s:{}}", "env", release_env(a->m), "processes",
                  json_object_get(a->m, "processes"), "artifacts", bs_str(b->sys_file, "id"),
                  bs_str(b->sys_stack, "id"), "meta");
    json_t *rel = NULL;
    int rc = check_release(body, &rel, err);
    if (rc < 0)
        return err_wrap(err, rc, "app %s: its release", a->name);
    json_object_set_new(rel, "id", json_string(rid));
    json_object_set_new(rel, "app_id", json_string(app_id));
    a->release = rel;
    return 0;
}

/* The app as the store has it, when it is there: *app NULL when not. */
static int stored_app(struct bs *b, const char *name, json_t **app, struct pier_err *err)
{
    *app = NULL;
    json_t *idx = NULL;
    int rc = store_record(b, KEYS_APP_NAMES, name, &idx, err);
    if (rc == PIER_ENOTFOUND)
        return 0;
    if (rc < 0)
        return rc;
    const char *id = bs_str(idx, "id");
    rc = id ? store_record(b, KEYS_APPS, id, app, err) : PIER_ENOTFOUND;
    json_decref(idx);
    if (rc == PIER_ENOTFOUND)
        return 0;
    if (rc < 0)
        return rc;
    const char *sys = bs_str(json_object_get(*app, "meta"), "flynn-system-app");
    if (!sys || strcmp(sys, "true") != 0) {
        json_decref(*app);
        *app = NULL;
        return err_set(err, PIER_EEXISTS,
                       "the cluster has an app named %s that is not a system app (no meta "
                       "flynn-system-app); rename or delete it, the bootstrap will not take it "
                       "over",
                       name);
    }
    return 0;
}

/* a from the store: the app's release, its artifacts, its formation. */
static int resolve_stored(struct bs *b, struct sysapp *a, struct pier_err *err)
{
    const char *app_id = bs_str(a->app, "id"), *rid = bs_str(a->app, "release");
    int rc = store_record(b, KEYS_RELEASES, rid, &a->release, err);
    if (rc < 0)
        return err_wrap(err, rc, "app %s: its release %s", a->name, rid);
    if ((rc = release_artifacts(b, a->release, &a->artifacts, err)) < 0)
        return rc;
    cleanup_buf struct buf fid = BUF_INIT;
    buf_printf(&fid, "%s/%s", app_id, rid);
    json_t *f = NULL;
    rc = store_record(b, KEYS_FORMATIONS, fid.p, &f, err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return rc;
    json_t *entry = json_object_get(json_object_get(b->plan, "apps"), a->name);
    bool planned = json_is_object(entry);
    /* No plan (a cluster bootstrapped elsewhere, or the file lost): an app
     * with its formation is complete. */
    a->complete = f && (!planned || json_is_true(json_object_get(entry, "complete")));
    a->processes =
        json_deep_copy(f ? json_object_get(f, "processes") : json_object_get(a->m, "formation"));
    json_decref(f);
    if (!planned || !bs_str(entry, "app")) {
        plan_set(b, a->name, "app", json_string(app_id));
        plan_set(b, a->name, "release", json_string(rid));
    }
    return 0;
}

int plan_app(struct bs *b, struct sysapp *a, struct pier_err *err)
{
    a->name = bs_str(a->m, "name");
    int rc = stored_app(b, a->name, &a->app, err);
    if (rc < 0)
        return rc;
    a->in_store = a->app != NULL;
    if (a->app && bs_str(a->app, "release"))
        return resolve_stored(b, a, err);
    /* An app record without a release: an earlier bootstrap stopped
     * between creating them. Its id wins over the plan's. */
    if (a->app)
        plan_set(b, a->name, "app", json_string(bs_str(a->app, "id")));
    const char *app_id = planned_id(b, "apps", a->name, "app");
    const char *rid = planned_id(b, "apps", a->name, "release");
    if (!a->app) {
        json_t *meta = json_deep_copy(json_object_get(a->m, "meta"));
        json_object_set_new(meta, "flynn-system-app", json_string("true"));
        a->app = json_pack("{s:s,s:s,s:o,s:b}", "id", app_id, "name", a->name, "meta", meta,
                           "protected", 1);
    }
    rc = store_record(b, KEYS_RELEASES, rid, &a->release, err);
    if (rc == PIER_ENOTFOUND)
        rc = manifest_release(b, a, app_id, rid, err);
    if (rc < 0)
        return rc;
    if ((rc = release_artifacts(b, a->release, &a->artifacts, err)) < 0)
        return rc;
    a->processes = json_deep_copy(json_object_get(a->m, "formation"));
    a->complete = false;
    return 0;
}

/* mkdir -p of path, each new directory 0700 and the job user's. */
static int make_dirs(const char *path, struct pier_err *err)
{
    cleanup_free char *p = xstrdup(path);
    for (char *s = p + 1;; s++) {
        bool last = *s == '\0';
        if (*s != '/' && !last)
            continue;
        *s = '\0';
        if (mkdir(p, 0700) == 0) {
            if (geteuid() == 0 && chown(p, BS_JOB_UID, BS_JOB_UID) < 0)
                return err_set(err, -errno, "%s: chown: %s", p, strerror(errno));
        } else if (errno != EEXIST) {
            return err_set(err, -errno, "%s: %s", p, strerror(errno));
        }
        if (last)
            return 0;
        *s = '/';
    }
}

int plan_mounts(struct bs *b, const struct sysapp *a, struct pier_err *err)
{
    size_t dl = strlen(b->data_dir);
    const char *type;
    json_t *pt;
    json_object_foreach(json_object_get(a->release, "processes"), type, pt)
    {
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(pt, "mounts"), i, m)
        {
            const char *loc = bs_str(m, "location");
            if (!loc || strncmp(loc, b->data_dir, dl) != 0 || loc[dl] != '/')
                continue;
            struct stat st;
            if (stat(loc, &st) == 0)
                continue;
            int rc = make_dirs(loc, err);
            if (rc < 0)
                return err_wrap(err, rc, "app %s: mount %s", a->name, loc);
        }
    }
    return 0;
}
