/* pier create, apps, info, destroy: the apps of a cluster. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/git.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/clock.h"

#define DELETE_WAIT_MS 60000

/* remote: the git remote to add (NULL: none). */
static int create(struct api *a, const struct cli *c, const char *name, const char *remote)
{
    /* Flynn's body: a name when given, and "meta": null either way. */
    cleanup_json json_t *body = json_pack("{s:n}", "meta");
    if (name)
        json_object_set_new(body, "name", json_string(name));
    cleanup_json json_t *app = NULL;
    struct pier_err err = {0};
    if (api_send(a, "POST", "/apps", body, &app, &err) < 0) {
        if (err.code == PIER_EEXISTS)
            return ui_fail("pick another name, or see it with 'pier info -a NAME'",
                           "an app named \"%s\" already exists", name ? name : "?");
        return api_fail(a, &err);
    }
    const char *got = json_string_value(json_object_get(app, "name"));
    if (!got)
        return ui_fail(NULL, "the controller created an app but sent no name back");
    cleanup_buf struct buf clean = BUF_INIT;
    api_put_clean(&clean, got);
    /* Only the name when piped, so scripts can write APP=$(pier create). */
    if (isatty(STDOUT_FILENO))
        printf("Created %s\n", clean.p);
    else
        printf("%s\n", clean.p);
    fflush(stdout);
    return remote ? git_remote_setup(&a->cfg, c->cluster, remote, clean.p) : 0;
}

int cli_create(struct cli *c)
{
    const char *name = NULL, *remote = "pier";
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        bool joined = strncmp(s, "--remote=", 9) == 0;
        if (joined || strcmp(s, "-r") == 0 || strcmp(s, "--remote") == 0) {
            if (!joined && i + 1 >= c->argc)
                return ui_usage("create", "%s needs a remote name", s);
            remote = joined ? s + 9 : c->argv[++i];
            if (!git_remote_name_ok(remote))
                return ui_usage("create",
                                "remote name \"%s\" may hold only letters, digits, '.', '_' "
                                "and '-'",
                                remote);
            continue;
        }
        if (strcmp(s, "--no-remote") == 0) {
            remote = NULL;
            continue;
        }
        if (s[0] == '-' && s[1])
            return ui_usage("create", "unknown option \"%s\" for create", s);
        if (name)
            return ui_usage("create", "create takes at most one NAME");
        name = s;
    }
    struct api a;
    int rc = api_start(&a, c, NULL, false);
    if (rc == 0)
        rc = create(&a, c, name, remote);
    api_close(&a);
    return rc;
}

static int apps_list(struct api *a, bool json)
{
    cleanup_json json_t *apps = NULL;
    struct pier_err err = {0};
    if (api_get(a, "/apps", &apps, &err) < 0)
        return api_fail(a, &err);
    if (!json_is_array(apps))
        return ui_fail(NULL, "GET /apps: the controller sent something other than a list");
    api_sort_by(apps, "name", false);
    if (json)
        return api_print_json(apps, false);
    if (json_array_size(apps) == 0) {
        fprintf(stderr, "no apps yet; make one with 'pier create NAME'\n");
        return 0;
    }
    printf("%-24s %-36s %s\n", "NAME", "ID", "RELEASE");
    size_t i;
    json_t *app;
    json_array_foreach(apps, i, app)
    {
        cleanup_buf struct buf name = BUF_INIT, id = BUF_INIT, rel = BUF_INIT;
        api_put_clean(&name, json_string_value(json_object_get(app, "name")));
        api_put_clean(&id, json_string_value(json_object_get(app, "id")));
        const char *r = json_string_value(json_object_get(app, "release"));
        api_put_clean(&rel, r && *r ? r : "-");
        printf("%-24s %-36s %s\n", name.p, id.p, rel.p);
    }
    return 0;
}

int cli_apps(struct cli *c)
{
    bool json = false;
    for (int i = 0; i < c->argc; i++) {
        if (strcmp(c->argv[i], "--json") == 0)
            json = true;
        else
            return ui_usage("apps", "apps takes only --json, not \"%s\"", c->argv[i]);
    }
    struct api a;
    int rc = api_start(&a, c, NULL, false);
    if (rc == 0)
        rc = apps_list(&a, json);
    api_close(&a);
    return rc;
}

/* "web=1 worker=0": the counts of the release's process types. */
static void put_formation(struct buf *out, const json_t *release, const json_t *formation)
{
    json_t *procs = json_object_get(release, "processes");
    json_t *counts = json_object_get(formation, "processes");
    cleanup_json json_t *types = json_array();
    const char *type;
    json_t *v;
    json_object_foreach(procs, type, v) json_array_append_new(types, json_string(type));
    json_object_foreach(counts, type, v)
    {
        if (!json_object_get(procs, type))
            json_array_append_new(types, json_string(type));
    }
    size_t n = json_array_size(types);
    /* sorted by name: an insertion sort of a handful of types */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(json_string_value(json_array_get(types, j - 1)),
                                           json_string_value(json_array_get(types, j))) > 0;
             j--) {
            json_t *t = json_incref(json_array_get(types, j));
            json_array_set(types, j, json_array_get(types, j - 1));
            json_array_set_new(types, j - 1, t);
        }
    if (n == 0) {
        buf_puts(out, "none (the release has no process types)");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *t = json_string_value(json_array_get(types, i));
        if (i)
            buf_putc(out, ' ');
        api_put_clean(out, t);
        buf_printf(out, "=%lld", (long long)json_integer_value(json_object_get(counts, t)));
    }
}

static void put_route(struct buf *out, const json_t *r)
{
    const char *type = json_string_value(json_object_get(r, "type"));
    const char *domain = json_string_value(json_object_get(r, "domain"));
    const char *path = json_string_value(json_object_get(r, "path"));
    const char *service = json_string_value(json_object_get(r, "service"));
    bool tls = json_object_get(r, "certificate") || json_object_get(r, "tls_cert");
    if (type && strcmp(type, "tcp") == 0) {
        buf_printf(out, "tcp :%lld", (long long)json_integer_value(json_object_get(r, "port")));
    } else {
        buf_puts(out, tls ? "https://" : "http://");
        api_put_clean(out, domain);
        api_put_clean(out, path && *path ? path : "/");
    }
    buf_puts(out, " -> ");
    api_put_clean(out, service ? service : "?");
}

/* --json: {"app", "release", "formation", "routes"}, each as the controller
 * sent it (null, or [] for routes, when there is none). */
static int info_json(const json_t *app, const json_t *rel, const json_t *form, const json_t *routes)
{
    cleanup_json json_t *none = json_array();
    cleanup_json json_t *out =
        json_pack("{s:O, s:O?, s:O?, s:O}", "app", app, "release", rel, "formation", form, "routes",
                  json_is_array(routes) ? routes : none);
    return api_print_json(out, false);
}

static int info(struct api *a, bool json)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL, *rel = NULL, *form = NULL, *routes = NULL;
    if (api_app_get(a, &app, &err) < 0)
        return api_fail(a, &err);
    cleanup_buf struct buf path = BUF_INIT, line = BUF_INIT;
    api_app_path(a, &path, "/release");
    int rc = api_get(a, path.p, &rel, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return api_fail(a, &err);
    const char *rel_id = json_string_value(json_object_get(rel, "id"));
    if (rel_id) {
        buf_reset(&path);
        api_app_path(a, &path, "/formations/");
        api_escape(&path, rel_id);
        rc = api_get(a, path.p, &form, &err);
        if (rc < 0 && rc != PIER_ENOTFOUND)
            return api_fail(a, &err);
    }
    buf_reset(&path);
    api_app_path(a, &path, "/routes");
    rc = api_get(a, path.p, &routes, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return api_fail(a, &err);
    if (json)
        return info_json(app, rel, form, routes);

    api_put_clean(&line, json_string_value(json_object_get(app, "name")));
    printf("=== %s\n", line.p);
    buf_reset(&line);
    api_put_clean(&line, json_string_value(json_object_get(app, "id")));
    printf("%-11s %s\n", "ID:", line.p);
    buf_reset(&line);
    const char *strategy = json_string_value(json_object_get(app, "strategy"));
    api_put_clean(&line, strategy ? strategy : "all-at-once");
    long long timeout = json_integer_value(json_object_get(app, "deploy_timeout"));
    if (timeout > 0)
        buf_printf(&line, " (deploy timeout %llds)", timeout);
    printf("%-11s %s\n", "Strategy:", line.p);
    buf_reset(&line);
    api_ago(&line, json_string_value(json_object_get(app, "created_at")));
    printf("%-11s %s\n", "Created:", line.p);
    buf_reset(&line);
    if (rel_id) {
        api_put_clean(&line, rel_id);
        buf_puts(&line, " (");
        api_ago(&line, json_string_value(json_object_get(rel, "created_at")));
        buf_puts(&line, ")");
        printf("%-11s %s\n", "Release:", line.p);
        buf_reset(&line);
        put_formation(&line, rel, form);
        printf("%-11s %s\n", "Processes:", line.p);
    } else {
        printf("%-11s %s\n", "Release:", "none yet (git push, or 'pier env set' makes one)");
    }
    size_t i;
    json_t *r;
    if (json_array_size(routes) == 0)
        printf("%-11s %s\n", "Routes:", "none");
    json_array_foreach(routes, i, r)
    {
        buf_reset(&line);
        put_route(&line, r);
        printf("%-11s %s\n", i == 0 ? "Routes:" : "", line.p);
    }
    return 0;
}

int cli_info(struct cli *c)
{
    const char *app = NULL;
    bool json = false;
    for (int i = 0; i < c->argc; i++) {
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("info", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(c->argv[i], "--json") == 0)
            json = true;
        else
            return ui_usage("info", "info takes only -a APP and --json, not \"%s\"", c->argv[i]);
    }
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = info(&a, json);
    api_close(&a);
    return rc;
}

/* Asks for the app's name on the terminal. Returns 0 when it was typed. */
static int confirm(const char *name)
{
    if (!isatty(STDIN_FILENO))
        return ui_fail("pass -y, or --confirm NAME to say which app you mean",
                       "refusing to destroy app \"%s\" without a confirmation", name);
    fprintf(stderr,
            "This destroys app \"%s\": its releases, formations, jobs and routes.\n"
            "Type the app's name to confirm: ",
            name);
    fflush(stderr);
    char line[256];
    if (!fgets(line, sizeof(line), stdin))
        return ui_fail(NULL, "no confirmation given; nothing was destroyed");
    line[strcspn(line, "\r\n")] = '\0';
    if (strcmp(line, name) != 0)
        return ui_fail(NULL, "\"%s\" is not \"%s\"; nothing was destroyed", line, name);
    return 0;
}

/* Waits for the app_deletion event the DELETE causes and prints it. */
static int deletion_wait(struct api *a, struct api_events *ev, const char *name)
{
    struct pier_err err = {0};
    int64_t deadline = clock_now_ms() + DELETE_WAIT_MS;
    for (;;) {
        int64_t left = deadline - clock_now_ms();
        cleanup_json json_t *e = NULL;
        int rc = left > 0 ? api_events_next(ev, (int)left, &e, &err) : 0;
        if (rc < 0)
            return api_fail(a, &err);
        if (rc == 0)
            return ui_fail("'pier apps' shows whether it is gone",
                           "the controller accepted the delete of \"%s\" but sent no "
                           "app_deletion event within %d s",
                           name, DELETE_WAIT_MS / 1000);
        const char *type = json_string_value(json_object_get(e, "object_type"));
        if (!type || strcmp(type, "app_deletion") != 0)
            continue;
        json_t *data = json_object_get(e, "data");
        const char *failed = json_string_value(json_object_get(data, "error"));
        if (failed && *failed) {
            cleanup_buf struct buf m = BUF_INIT;
            api_put_clean(&m, failed);
            return ui_fail(NULL, "deleting app \"%s\" failed: %s", name, m.p);
        }
        json_t *del = json_object_get(data, "app_deletion");
        printf("destroyed app \"%s\" (%zu releases, %zu routes, %zu resources)\n", name,
               json_array_size(json_object_get(del, "deleted_releases")),
               json_array_size(json_object_get(del, "deleted_routes")),
               json_array_size(json_object_get(del, "deleted_resources")));
        return 0;
    }
}

static int destroy(struct api *a, bool yes, const char *confirm_name)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    if (api_app_get(a, &app, &err) < 0)
        return api_fail(a, &err);
    cleanup_buf struct buf name = BUF_INIT, path = BUF_INIT;
    api_put_clean(&name, json_string_value(json_object_get(app, "name")));
    if (confirm_name && strcmp(confirm_name, name.p) != 0)
        return ui_fail(NULL, "--confirm %s does not match the app \"%s\"; nothing was destroyed",
                       confirm_name, name.p);
    if (!yes && !confirm_name && confirm(name.p) != 0)
        return 1;
    /* Subscribe first: the event the DELETE causes must not be missed. */
    buf_puts(&path, "/events?app_id=");
    api_escape(&path, a->app);
    buf_puts(&path, "&object_types=app_deletion");
    struct api_events *ev = NULL;
    if (api_events_open(a, path.p, &ev, &err) < 0)
        return api_fail(a, &err);
    buf_reset(&path);
    api_app_path(a, &path, "");
    int rc;
    if (api_send(a, "DELETE", path.p, NULL, NULL, &err) < 0)
        rc = api_fail(a, &err);
    else
        rc = deletion_wait(a, ev, name.p);
    api_events_close(ev);
    return rc;
}

int cli_destroy(struct cli *c)
{
    const char *app = NULL, *confirm_name = NULL;
    bool yes = false;
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("destroy", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "-y") == 0 || strcmp(s, "--yes") == 0) {
            yes = true;
        } else if (strcmp(s, "--confirm") == 0) {
            if (i + 1 >= c->argc)
                return ui_usage("destroy", "--confirm needs the app's name");
            confirm_name = c->argv[++i];
        } else if (strncmp(s, "--confirm=", 10) == 0) {
            confirm_name = s + 10;
        } else {
            return ui_usage("destroy", "unknown argument \"%s\" for destroy", s);
        }
    }
    struct api a;
    int rc = api_start(&a, c, app ? app : confirm_name, true);
    if (rc == 0)
        rc = destroy(&a, yes, confirm_name);
    api_close(&a);
    return rc;
}
