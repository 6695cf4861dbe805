/* pier env, env set, env unset, releases, rollback: config vars and
 * releases. Every change is a new release, deployed at once (contract 3.9:
 * POST /apps/:id/deploy, then the deployment's events until it completes
 * or fails). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/clock.h"

#define ENV_MAX_BYTES (32 * 1024)
/* How long past the app's deploy_timeout to wait for the deployer before
 * saying it seems stuck (Flynn's client waits forever). */
#define DEPLOY_GRACE_S 60

/* Checks a key against CONVENTIONS.md. NULL when fine, else why not. */
static const char *bad_key(const char *k, size_t n)
{
    if (n == 0)
        return "is empty";
    if (isdigit((unsigned char)k[0]))
        return "starts with a digit";
    if (n >= 2 && k[0] == '_' && k[1] == '_')
        return "starts with \"__\"";
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)k[i]) && k[i] != '_')
            return "may hold only letters, digits and '_'";
    if (n >= 5 && strncmp(k, "PIER_", 5) == 0)
        return "is reserved: PIER_* vars belong to the platform";
    return NULL;
}

static void put_sorted_env(const json_t *env)
{
    cleanup_json json_t *keys = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)env, k, v) json_array_append_new(keys, json_pack("{ss}", "k", k));
    api_sort_by(keys, "k", false);
    size_t i;
    json_t *e;
    json_array_foreach(keys, i, e)
    {
        const char *key = json_string_value(json_object_get(e, "k"));
        const char *val = json_string_value(json_object_get(env, key));
        cleanup_buf struct buf line = BUF_INIT;
        api_put_clean(&line, key);
        buf_putc(&line, '=');
        api_put_clean(&line, val ? val : "");
        printf("%s\n", line.p);
    }
}

/* Waits for a deployment to finish (contract 3.9). */
static int deploy_wait(struct api *a, const json_t *dep, const char *short_id)
{
    const char *dep_id = json_string_value(json_object_get(dep, "id"));
    const char *dep_app = json_string_value(json_object_get(dep, "app"));
    if (!dep_id || !dep_app)
        return ui_fail(NULL, "the controller sent back a deployment without an id or app");
    cleanup_buf struct buf path = BUF_INIT;
    buf_puts(&path, "/events?app_id=");
    api_escape(&path, dep_app);
    buf_puts(&path, "&object_id=");
    api_escape(&path, dep_id);
    buf_puts(&path, "&object_types=deployment&past=true");
    struct pier_err err = {0};
    struct api_events *ev = NULL;
    if (api_events_open(a, path.p, &ev, &err) < 0)
        return api_fail(a, &err);
    long long timeout = json_integer_value(json_object_get(dep, "deploy_timeout"));
    int wait_s = (int)(timeout > 0 && timeout < 86400 ? timeout : 30) + DEPLOY_GRACE_S;
    int64_t deadline = clock_now_ms() + wait_s * 1000LL;
    ui_wait_start("deploying release %s", short_id);
    int rc = 0;
    for (;;) {
        int64_t left = deadline - clock_now_ms();
        cleanup_json json_t *e = NULL;
        int r = left > 0 ? api_events_next(ev, (int)(left > 1000 ? 1000 : left), &e, &err) : 0;
        if (r < 0) {
            ui_wait_end("failed");
            rc = api_fail(a, &err);
            break;
        }
        if (r == 0) {
            if (clock_now_ms() < deadline) {
                ui_wait_tick();
                continue;
            }
            ui_wait_end("still running");
            rc = ui_fail("'pier events' shows how far it got; is a controller leading "
                         "(it runs the deployer)?",
                         "the deployment of release %s has not finished after %d s", short_id,
                         wait_s);
            break;
        }
        json_t *data = json_object_get(e, "data");
        const char *status = json_string_value(json_object_get(data, "status"));
        if (status && strcmp(status, "complete") == 0) {
            ui_wait_end("done");
            break;
        }
        if (status && strcmp(status, "failed") == 0) {
            ui_wait_end("failed");
            cleanup_buf struct buf why = BUF_INIT;
            api_put_clean(&why, json_string_value(json_object_get(data, "error")));
            rc = ui_fail("the previous release keeps running; 'pier log' and 'pier events' "
                         "tell more",
                         "the deployment of release %s failed: %s", short_id,
                         why.len ? why.p : "no reason given");
            break;
        }
        ui_wait_tick();
    }
    api_events_close(ev);
    return rc;
}

/* Deploys release rel_id to the app (app_ref: its id or name). */
static int deploy(struct api *a, const char *app_ref, const char *rel_id)
{
    char short_id[9];
    snprintf(short_id, sizeof(short_id), "%s", rel_id);
    cleanup_buf struct buf path = BUF_INIT;
    buf_puts(&path, "/apps/");
    api_escape(&path, app_ref);
    buf_puts(&path, "/deploy");
    cleanup_json json_t *body = json_pack("{ss}", "id", rel_id);
    cleanup_json json_t *dep = NULL;
    struct pier_err err = {0};
    if (api_send(a, "POST", path.p, body, &dep, &err) < 0)
        return api_fail(a, &err);
    json_t *fin = json_object_get(dep, "finished_at");
    if (fin && !json_is_null(fin)) {
        const char *status = json_string_value(json_object_get(dep, "status"));
        if (status && strcmp(status, "failed") == 0) {
            cleanup_buf struct buf why = BUF_INIT;
            api_put_clean(&why, json_string_value(json_object_get(dep, "error")));
            return ui_fail(NULL, "the deployment of release %s failed: %s", short_id,
                           why.len ? why.p : "no reason given");
        }
        fprintf(stderr, "==> deployed release %s\n", short_id);
        return 0;
    }
    return deploy_wait(a, dep, short_id);
}

/* Validates env set/unset arguments before any request. */
static int check_args(bool set, int argc, char **argv)
{
    if (argc == 0)
        return ui_usage("env", set ? "env set needs KEY=VALUE" : "env unset needs KEY");
    size_t total = 0;
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (set && !eq)
            return ui_usage("env", "\"%s\" is not KEY=VALUE", argv[i]);
        if (!set && eq)
            return ui_usage("env", "env unset takes keys only, not \"%s\"", argv[i]);
        size_t klen = set ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        const char *why = bad_key(argv[i], klen);
        if (why) {
            cleanup_buf struct buf k = BUF_INIT;
            buf_append(&k, argv[i], klen);
            cleanup_buf struct buf clean = BUF_INIT;
            api_put_clean(&clean, k.p ? k.p : "");
            return ui_usage("env", "config var name \"%s\" %s", clean.p, why);
        }
        total += strlen(argv[i]);
    }
    if (total > ENV_MAX_BYTES)
        return ui_usage("env", "config vars may take at most %d bytes per app", ENV_MAX_BYTES);
    return 0;
}

/* Applies set/unset to env; returns whether anything changed. */
static bool edit_env(json_t *env, bool set, int argc, char **argv, struct buf *desc)
{
    bool changed = false;
    buf_puts(desc, set ? "set " : "unset ");
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        cleanup_buf struct buf k = BUF_INIT;
        buf_append(&k, argv[i], set ? (size_t)(eq - argv[i]) : strlen(argv[i]));
        if (i)
            buf_puts(desc, ", ");
        buf_puts(desc, k.p);
        json_t *old = json_object_get(env, k.p);
        if (set) {
            if (!old || strcmp(json_string_value(old) ? json_string_value(old) : "", eq + 1)) {
                json_object_set_new(env, k.p, json_string(eq + 1));
                changed = true;
            }
        } else if (old) {
            json_object_del(env, k.p);
            changed = true;
        }
    }
    return changed;
}

static int env_change(struct api *a, bool set, int argc, char **argv)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *old = NULL, *created = NULL;
    if (api_app_get(a, &app, &err) < 0)
        return api_fail(a, &err);
    const char *app_id = json_string_value(json_object_get(app, "id"));
    if (!app_id)
        return ui_fail(NULL, "the controller sent an app without an id");
    cleanup_buf struct buf path = BUF_INIT, desc = BUF_INIT;
    buf_puts(&path, "/apps/");
    api_escape(&path, app_id);
    buf_puts(&path, "/release");
    int rc = api_get(a, path.p, &old, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return api_fail(a, &err);
    /* The whole previous release, minus what the server fills in. */
    json_t *rel = json_is_object(old) ? json_deep_copy(old) : json_object();
    cleanup_json json_t *release = rel;
    json_object_del(rel, "id");
    json_object_del(rel, "created_at");
    json_object_set_new(rel, "app_id", json_string(app_id));
    json_t *env = json_object_get(rel, "env");
    if (!json_is_object(env)) {
        env = json_object();
        json_object_set_new(rel, "env", env);
    }
    if (!edit_env(env, set, argc, argv, &desc)) {
        fprintf(stderr, "nothing to change: the app's config vars already say so\n");
        return 0;
    }
    json_t *meta = json_object_get(rel, "meta");
    if (!json_is_object(meta)) {
        meta = json_object();
        json_object_set_new(rel, "meta", meta);
    }
    json_object_set_new(meta, "description", json_string(desc.p));
    if (api_send(a, "POST", "/releases", rel, &created, &err) < 0)
        return api_fail(a, &err);
    const char *rel_id = json_string_value(json_object_get(created, "id"));
    if (!rel_id)
        return ui_fail(NULL, "the controller created a release but sent no id back");
    cleanup_buf struct buf cid = BUF_INIT;
    api_put_clean(&cid, rel_id);
    fprintf(stderr, "==> created release %s (%s)\n", cid.p, desc.p);
    return deploy(a, app_id, rel_id);
}

static int env_show(struct api *a, bool json)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/release");
    cleanup_json json_t *rel = NULL, *app = NULL;
    int rc = api_get(a, path.p, &rel, &err);
    if (rc == PIER_ENOTFOUND) { /* no release yet: no vars, unless there is no app */
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
        if (json) {
            cleanup_json json_t *none = json_object();
            return api_print_json(none, false);
        }
        return 0;
    }
    if (rc < 0)
        return api_fail(a, &err);
    json_t *env = json_object_get(rel, "env"); /* borrowed */
    if (json) {
        cleanup_json json_t *none = json_object();
        return api_print_json(json_is_object(env) ? env : none, false);
    }
    put_sorted_env(env);
    return 0;
}

int cli_env(struct cli *c)
{
    const char *app = NULL;
    int sub = 0; /* 0 show, 1 set, 2 unset */
    bool json = false;
    cleanup_free char **rest = xcalloc((size_t)c->argc + 1, sizeof(*rest));
    int n = 0;
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("env", "-a needs an app name");
        if (r > 0)
            continue;
        if (sub == 0 && strcmp(s, "--json") == 0)
            json = true;
        else if (sub == 0 && n == 0 && strcmp(s, "set") == 0)
            sub = 1;
        else if (sub == 0 && n == 0 && strcmp(s, "unset") == 0)
            sub = 2;
        else if (sub == 0)
            return ui_usage("env", "unknown env subcommand \"%s\" (set, unset)", s);
        else if (s[0] == '-' && strcmp(s, "-") != 0)
            return ui_usage("env", "unknown option \"%s\" for env", s);
        else
            rest[n++] = c->argv[i];
    }
    if (json && sub)
        return ui_usage("env", "--json shows the vars; it does not go with %s",
                        sub == 1 ? "set" : "unset");
    int rc = sub ? check_args(sub == 1, n, rest) : 0;
    if (rc != 0)
        return rc;
    struct api a;
    rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = sub ? env_change(&a, sub == 1, n, rest) : env_show(&a, json);
    api_close(&a);
    return rc;
}

/* ---- releases, rollback ---- */

/* The app's releases, newest first (a new reference). */
static int list_releases(struct api *a, json_t **out)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/releases");
    int rc = api_get(a, path.p, out, &err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
    }
    if (rc < 0)
        return api_fail(a, &err);
    if (!json_is_array(*out))
        return ui_fail(NULL, "the controller's list of releases is not a list");
    api_sort_by(*out, "created_at", true);
    return 0;
}

/* The current release's id (new string), or NULL when there is none. */
static int current_release_id(struct api *a, char **out)
{
    *out = NULL;
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/release");
    cleanup_json json_t *rel = NULL;
    int rc = api_get(a, path.p, &rel, &err);
    if (rc == PIER_ENOTFOUND)
        return 0;
    if (rc < 0)
        return api_fail(a, &err);
    const char *id = json_string_value(json_object_get(rel, "id"));
    *out = id ? xstrdup(id) : NULL;
    return 0;
}

static void put_description(struct buf *out, const json_t *rel)
{
    json_t *meta = json_object_get(rel, "meta");
    const char *d = json_string_value(json_object_get(meta, "description"));
    const char *rev = json_string_value(json_object_get(meta, "rev"));
    if (d)
        api_put_clean(out, d);
    else if (rev)
        buf_printf(out, "deploy %.7s", rev);
}

static int releases(struct api *a, bool json)
{
    cleanup_json json_t *list = NULL;
    cleanup_free char *current = NULL;
    int rc = list_releases(a, &list);
    if (rc == 0)
        rc = current_release_id(a, &current);
    if (rc != 0)
        return rc;
    if (json)
        return api_print_json(list, false);
    if (json_array_size(list) == 0) {
        fprintf(stderr, "no releases yet: git push, or 'pier env set' makes one\n");
        return 0;
    }
    printf("  %-36s %-9s %s\n", "ID", "CREATED", "DESCRIPTION");
    size_t i;
    json_t *r;
    json_array_foreach(list, i, r)
    {
        const char *id = json_string_value(json_object_get(r, "id"));
        cleanup_buf struct buf cid = BUF_INIT, ago = BUF_INIT, desc = BUF_INIT;
        api_put_clean(&cid, id);
        api_ago(&ago, json_string_value(json_object_get(r, "created_at")));
        put_description(&desc, r);
        bool cur = current && id && strcmp(current, id) == 0;
        printf("%s %-36s %-9s %s\n", cur ? "*" : " ", cid.p, ago.p, desc.p ? desc.p : "");
    }
    return 0;
}

/* -a APP, and (pos) one positional argument, and (json) --json. */
static int simple_args(struct cli *c, const char *cmd, const char **app, const char **pos,
                       bool *json)
{
    for (int i = 0; i < c->argc; i++) {
        int r = api_opt_app(c->argc, c->argv, &i, app);
        if (r < 0)
            return ui_usage(cmd, "-a needs an app name");
        if (r > 0)
            continue;
        if (json && strcmp(c->argv[i], "--json") == 0) {
            *json = true;
            continue;
        }
        if (c->argv[i][0] == '-' || !pos || *pos)
            return ui_usage(cmd, "unexpected argument \"%s\" for %s", c->argv[i], cmd);
        *pos = c->argv[i];
    }
    return 0;
}

int cli_releases(struct cli *c)
{
    const char *app = NULL;
    bool json = false;
    int rc = simple_args(c, "releases", &app, NULL, &json);
    if (rc != 0)
        return rc;
    struct api a;
    rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = releases(&a, json);
    api_close(&a);
    return rc;
}

/* The release to roll back to: want (an id or its start), else the one
 * before current. Borrowed from list. */
static int pick_target(const json_t *list, const char *current, const char *want, const char **out)
{
    size_t i, n = 0;
    json_t *r;
    *out = NULL;
    if (want) {
        json_array_foreach(list, i, r)
        {
            const char *id = json_string_value(json_object_get(r, "id"));
            if (id && strncmp(id, want, strlen(want)) == 0) {
                *out = id;
                n++;
            }
        }
        if (n == 1 || (n > 1 && *out && strcmp(*out, want) == 0))
            return 0;
        if (n > 1)
            return ui_fail("'pier releases' lists them",
                           "\"%s\" matches %zu releases; give more of the id", want, n);
        return ui_fail("'pier releases' lists them", "the app has no release \"%s\"", want);
    }
    if (!current)
        return ui_fail("deploy one first: git push, or 'pier env set'",
                       "the app has no current release to roll back from");
    json_array_foreach(list, i, r)
    {
        const char *id = json_string_value(json_object_get(r, "id"));
        if (id && strcmp(id, current) == 0) {
            *out = json_string_value(json_object_get(json_array_get(list, i + 1), "id"));
            if (!*out)
                return ui_fail(NULL, "there is no release before the current one");
            return 0;
        }
    }
    return ui_fail(NULL, "the current release is not in the app's list of releases");
}

static int rollback(struct api *a, const char *want)
{
    cleanup_json json_t *list = NULL;
    cleanup_free char *current = NULL;
    int rc = current_release_id(a, &current);
    if (rc == 0)
        rc = list_releases(a, &list);
    const char *target = NULL;
    if (rc == 0)
        rc = pick_target(list, current, want, &target);
    if (rc != 0)
        return rc;
    cleanup_buf struct buf cid = BUF_INIT;
    api_put_clean(&cid, target);
    if (current && strcmp(current, target) == 0) {
        printf("release %s is already the current one\n", cid.p);
        return 0;
    }
    rc = deploy(a, a->app, target);
    if (rc == 0)
        printf("rolled back to release %s\n", cid.p);
    return rc;
}

int cli_rollback(struct cli *c)
{
    const char *app = NULL, *want = NULL;
    int rc = simple_args(c, "rollback", &app, &want, NULL);
    if (rc != 0)
        return rc;
    struct api a;
    rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = rollback(&a, want);
    api_close(&a);
    return rc;
}
