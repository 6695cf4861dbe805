/* pier scale, ps, kill: the process model (CONVENTIONS.md): how many jobs
 * of each process type run, and the jobs themselves.
 *
 * `pier scale web=3` follows Flynn's scale-request flow: subscribe to the
 * app's job and scale_request events, PUT /apps/:a/scale/:release, then
 * print job events of that release as they come until the scheduler marks
 * the scale request complete. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/clock.h"

#define SCALE_WAIT_S 60
#define SCALE_MAX 10000
#define TYPE_MAX 63
#define CMD_WIDTH 48

struct change {
    char type[TYPE_MAX + 1];
    char op; /* '=', '+' or '-' */
    long n;
};

static bool valid_type(const char *s, size_t n)
{
    if (n == 0 || n > TYPE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

static bool parse_count(const char *s, long *out)
{
    if (!*s || !isdigit((unsigned char)*s))
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno || v > SCALE_MAX)
        return false;
    *out = v;
    return true;
}

/* "web=3", "web+2", "web-1" (the last + or - followed by digits, so type
 * names with '-' still work). Returns 0, or the usage error's status. */
static int parse_change(const char *arg, struct change *ch)
{
    const char *eq = strchr(arg, '=');
    const char *op = eq;
    if (!op) {
        for (const char *p = arg + strlen(arg); p > arg; p--)
            if (p[-1] == '+' || p[-1] == '-') {
                op = p - 1;
                break;
            }
    }
    if (!op)
        return ui_usage("scale", "\"%s\" is not TYPE=COUNT, TYPE+N or TYPE-N", arg);
    size_t tlen = (size_t)(op - arg);
    if (!valid_type(arg, tlen))
        return ui_usage("scale",
                        "\"%.*s\" is not a process type name (letters, digits, '_' and '-', "
                        "at most %d)",
                        (int)tlen, arg, TYPE_MAX);
    if (!parse_count(op + 1, &ch->n)) {
        if (*op == '=' && op[1] == '-')
            return ui_usage("scale", "%.*s=%s: a count cannot be negative (=0 stops a type)",
                            (int)tlen, arg, op + 1);
        return ui_usage("scale", "\"%s\": the count must be a whole number from 0 to %d", arg,
                        SCALE_MAX);
    }
    memcpy(ch->type, arg, tlen);
    ch->type[tlen] = '\0';
    ch->op = *op;
    return 0;
}

/* The app's current release (a new reference), or a failure printed. */
static int current_release(struct api *a, json_t **rel)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/release");
    int rc = api_get(a, path.p, rel, &err);
    if (rc == PIER_ENOTFOUND) {
        /* tell a missing app apart from an app with no release */
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
        cleanup_buf struct buf name = BUF_INIT;
        api_put_clean(&name, a->app);
        return ui_fail("deploy it first: git push, or 'pier env set' makes a release",
                       "app \"%s\" has no release yet", name.p);
    }
    if (rc < 0)
        return api_fail(a, &err);
    if (!json_is_string(json_object_get(*rel, "id")))
        return ui_fail(NULL, "the app's release has no id");
    return 0;
}

/* The formation's counts (a new object; empty when there is none). */
static int formation_counts(struct api *a, const char *rel_id, json_t **out)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/formations/");
    api_escape(&path, rel_id);
    cleanup_json json_t *f = NULL;
    int rc = api_get(a, path.p, &f, &err);
    if (rc < 0 && rc != PIER_ENOTFOUND)
        return api_fail(a, &err);
    json_t *p = json_object_get(f, "processes");
    *out = json_is_object(p) ? json_deep_copy(p) : json_object();
    return 0;
}

static void put_counts(struct buf *out, const json_t *release, const json_t *counts)
{
    const char *type;
    json_t *v;
    cleanup_json json_t *all = json_object();
    json_object_foreach(json_object_get(release, "processes"), type, v)
        json_object_set_new(all, type, json_integer(0));
    json_object_foreach((json_t *)counts, type, v) json_object_set(all, type, v);
    bool first = true;
    /* jansson keeps insertion order; print sorted for a stable line */
    cleanup_json json_t *names = json_array();
    json_object_foreach(all, type, v) json_array_append_new(names, json_string(type));
    for (size_t i = 0; i < json_array_size(names); i++)
        for (size_t j = i + 1; j < json_array_size(names); j++)
            if (strcmp(json_string_value(json_array_get(names, i)),
                       json_string_value(json_array_get(names, j))) > 0) {
                json_t *t = json_incref(json_array_get(names, i));
                json_array_set(names, i, json_array_get(names, j));
                json_array_set_new(names, j, t);
            }
    for (size_t i = 0; i < json_array_size(names); i++) {
        const char *t = json_string_value(json_array_get(names, i));
        if (!first)
            buf_putc(out, ' ');
        first = false;
        api_put_clean(out, t);
        buf_printf(out, "=%lld", (long long)json_integer_value(json_object_get(all, t)));
    }
    if (first)
        buf_puts(out, "(no process types)");
}

static int scale_show(struct api *a, bool json)
{
    cleanup_json json_t *rel = NULL, *counts = NULL;
    int rc = current_release(a, &rel);
    if (rc == 0)
        rc = formation_counts(a, json_string_value(json_object_get(rel, "id")), &counts);
    if (rc != 0)
        return rc;
    if (json)
        return api_print_json(counts, false);
    cleanup_buf struct buf line = BUF_INIT;
    put_counts(&line, rel, counts);
    printf("%s\n", line.p);
    return 0;
}

/* Applies the changes to counts. Returns 0, or the failure printed. */
static int apply(const struct change *ch, int n, const json_t *rel, json_t *counts)
{
    json_t *procs = json_object_get(rel, "processes");
    for (int i = 0; i < n; i++) {
        if (!json_object_get(procs, ch[i].type)) {
            cleanup_buf struct buf known = BUF_INIT;
            const char *t;
            json_t *v;
            json_object_foreach(procs, t, v)
            {
                if (known.len)
                    buf_puts(&known, ", ");
                api_put_clean(&known, t);
            }
            return ui_fail(known.len ? NULL : "deploy a release with a Procfile first",
                           "the release has no process type \"%s\"%s%s", ch[i].type,
                           known.len ? "; it has " : "", known.len ? known.p : "");
        }
        long cur = (long)json_integer_value(json_object_get(counts, ch[i].type));
        long v = ch[i].op == '=' ? ch[i].n : ch[i].op == '+' ? cur + ch[i].n : cur - ch[i].n;
        if (v < 0)
            return ui_fail(NULL, "%s-%ld would leave %ld %s processes (it has %ld)", ch[i].type,
                           ch[i].n, v, ch[i].type, cur);
        if (v > SCALE_MAX)
            return ui_fail(NULL, "%s would have %ld processes; at most %d", ch[i].type, v,
                           SCALE_MAX);
        json_object_set_new(counts, ch[i].type, json_integer(v));
    }
    return 0;
}

struct scale_wait {
    const char *rel;
    const char *req_id;
    json_t *want;  /* new counts */
    json_t *state; /* job id -> [type, state] as the events told */
};

/* "web: 2 of 3 up, worker: 0 of 1 up" for the timeout message. */
static void put_progress(struct buf *out, const struct scale_wait *w)
{
    const char *type;
    json_t *v;
    json_object_foreach(w->want, type, v)
    {
        long up = 0;
        const char *id;
        json_t *js;
        json_object_foreach(w->state, id, js)
        {
            if (strcmp(json_string_value(json_array_get(js, 0)), type) == 0 &&
                strcmp(json_string_value(json_array_get(js, 1)), "up") == 0)
                up++;
        }
        if (out->len)
            buf_puts(out, ", ");
        api_put_clean(out, type);
        buf_printf(out, ": %ld of %lld up", up, (long long)json_integer_value(v));
    }
}

/* Handles one event: 1 when the scale request completed, 0 to go on, or
 * the failure printed (as a negative of its status). */
static int scale_event(struct scale_wait *w, const json_t *e)
{
    const char *otype = json_string_value(json_object_get(e, "object_type"));
    json_t *data = json_object_get(e, "data");
    if (!otype || !json_is_object(data))
        return 0;
    if (strcmp(otype, "scale_request") == 0) {
        const char *id = json_string_value(json_object_get(data, "id"));
        const char *state = json_string_value(json_object_get(data, "state"));
        if (!id || strcmp(id, w->req_id) != 0 || !state)
            return 0;
        if (strcmp(state, "complete") == 0)
            return 1;
        if (strcmp(state, "cancelled") == 0)
            return -ui_fail("'pier scale' shows the counts now",
                            "the scale request was cancelled: a newer one for the same release "
                            "came first");
        return 0;
    }
    if (strcmp(otype, "job") != 0)
        return 0;
    const char *rel = json_string_value(json_object_get(data, "release"));
    if (!rel || strcmp(rel, w->rel) != 0)
        return 0;
    const char *id = json_string_value(json_object_get(data, "id"));
    if (!id)
        id = json_string_value(json_object_get(e, "object_id"));
    const char *type = json_string_value(json_object_get(data, "type"));
    const char *state = json_string_value(json_object_get(data, "state"));
    cleanup_buf struct buf line = BUF_INIT;
    api_put_clean(&line, type && *type ? type : "run");
    buf_putc(&line, ' ');
    api_put_clean(&line, id ? id : "?");
    buf_putc(&line, ' ');
    api_put_clean(&line, state ? state : "?");
    printf("%s\n", line.p);
    fflush(stdout);
    if (id)
        json_object_set_new(w->state, id, json_pack("[ss]", type ? type : "", state ? state : ""));
    return 0;
}

static int scale_wait(struct api *a, struct api_events *ev, struct scale_wait *w, int timeout_s)
{
    struct pier_err err = {0};
    int64_t start = clock_now_ms(), deadline = start + timeout_s * 1000LL;
    for (;;) {
        int64_t left = deadline - clock_now_ms();
        cleanup_json json_t *e = NULL;
        int rc = left > 0 ? api_events_next(ev, (int)left, &e, &err) : 0;
        if (rc < 0)
            return api_fail(a, &err);
        if (rc == 0) {
            cleanup_buf struct buf progress = BUF_INIT;
            put_progress(&progress, w);
            return ui_fail("'pier ps' shows the jobs; is a scheduler running ('pierd scheduler')?",
                           "timed out after %d s waiting for the scheduler to complete the "
                           "scale request (%s)",
                           timeout_s, progress.p);
        }
        rc = scale_event(w, e);
        if (rc < 0)
            return -rc;
        if (rc > 0) {
            printf("scale completed in %.1fs\n", (double)(clock_now_ms() - start) / 1000.0);
            return 0;
        }
    }
}

static int scale_do(struct api *a, const struct change *ch, int n, int timeout_s)
{
    cleanup_json json_t *rel = NULL, *counts = NULL;
    int rc = current_release(a, &rel);
    const char *rel_id = json_string_value(json_object_get(rel, "id"));
    if (rc == 0)
        rc = formation_counts(a, rel_id, &counts);
    if (rc != 0)
        return rc;
    cleanup_json json_t *before = json_deep_copy(counts);
    if ((rc = apply(ch, n, rel, counts)) != 0)
        return rc;
    if (json_equal(before, counts)) {
        cleanup_buf struct buf line = BUF_INIT;
        put_counts(&line, rel, counts);
        printf("already at %s; nothing to do\n", line.p);
        return 0;
    }
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    buf_puts(&path, "/events?app_id=");
    api_escape(&path, a->app);
    buf_puts(&path, "&object_types=job,scale_request");
    struct api_events *ev = NULL;
    if (api_events_open(a, path.p, &ev, &err) < 0)
        return api_fail(a, &err);
    /* Flynn's body, exactly: zero values included. */
    cleanup_json json_t *body = json_pack(
        "{s:s,s:s,s:s,s:s,s:O,s:{},s:n,s:n}", "id", "", "app", a->app, "release", rel_id, "state",
        "pending", "new_processes", counts, "new_tags", "created_at", "updated_at");
    buf_reset(&path);
    api_app_path(a, &path, "/scale/");
    api_escape(&path, rel_id);
    cleanup_json json_t *req = NULL;
    if (api_send(a, "PUT", path.p, body, &req, &err) < 0) {
        api_events_close(ev);
        return api_fail(a, &err);
    }
    const char *req_id = json_string_value(json_object_get(req, "id"));
    if (!req_id) {
        api_events_close(ev);
        return ui_fail(NULL, "the controller sent back a scale request without an id");
    }
    json_t *old = json_object_get(req, "old_processes");
    if (!json_is_object(old))
        old = before;
    const char *type;
    json_t *v;
    json_object_foreach(counts, type, v)
    {
        long long was = json_integer_value(json_object_get(old, type));
        if (was != json_integer_value(v)) {
            cleanup_buf struct buf t = BUF_INIT;
            api_put_clean(&t, type);
            printf("scaling %s: %lld=>%lld\n", t.p, was, (long long)json_integer_value(v));
        }
    }
    fflush(stdout);
    cleanup_json json_t *state = json_object();
    struct scale_wait w = {.rel = rel_id, .req_id = req_id, .want = counts, .state = state};
    rc = scale_wait(a, ev, &w, timeout_s);
    api_events_close(ev);
    return rc;
}

int cli_scale(struct cli *c)
{
    const char *app = NULL;
    int timeout_s = SCALE_WAIT_S;
    bool json = false;
    struct change *ch = xcalloc((size_t)c->argc + 1, sizeof(*ch));
    int n = 0, rc = 0;
    for (int i = 0; i < c->argc && rc == 0; i++) {
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0) {
            rc = ui_usage("scale", "-a needs an app name");
        } else if (r > 0) {
            continue;
        } else if (strcmp(c->argv[i], "--timeout") == 0) {
            long t = 0;
            if (i + 1 >= c->argc || !parse_count(c->argv[i + 1], &t) || t < 1)
                rc = ui_usage("scale", "--timeout needs a number of seconds (1 or more)");
            timeout_s = (int)t;
            i++;
        } else if (strcmp(c->argv[i], "--json") == 0) {
            json = true;
        } else if (c->argv[i][0] == '-') {
            rc = ui_usage("scale", "unknown option \"%s\" for scale", c->argv[i]);
        } else {
            rc = parse_change(c->argv[i], &ch[n++]);
        }
    }
    for (int i = 0; i < n && rc == 0; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(ch[i].type, ch[j].type) == 0) {
                rc = ui_usage("scale", "process type \"%s\" is given twice", ch[i].type);
                break;
            }
    if (rc == 0 && json && n > 0)
        rc = ui_usage("scale", "--json shows the counts; it takes no TYPE=N");
    struct api a;
    if (rc == 0)
        rc = api_start(&a, c, app, true);
    else
        memset(&a, 0, sizeof(a));
    if (rc == 0)
        rc = n == 0 ? scale_show(&a, json) : scale_do(&a, ch, n, timeout_s);
    api_close(&a);
    free(ch);
    return rc;
}

/* ---- ps, kill ---- */

static bool live(const char *state)
{
    return state && (strcmp(state, "up") == 0 || strcmp(state, "pending") == 0 ||
                     strcmp(state, "starting") == 0);
}

static void put_cmd(struct buf *out, const json_t *job)
{
    size_t i;
    json_t *arg;
    size_t start = out->len;
    json_array_foreach(json_object_get(job, "args"), i, arg)
    {
        if (i)
            buf_putc(out, ' ');
        api_put_clean(out, json_string_value(arg));
    }
    if (out->len == start)
        buf_putc(out, '-');
    if (out->len - start > CMD_WIDTH) {
        out->len = start + CMD_WIDTH - 3;
        buf_puts(out, "...");
    }
}

static int ps(struct api *a, bool all, bool json)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/jobs");
    cleanup_json json_t *jobs = NULL;
    int rc = api_get(a, path.p, &jobs, &err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
    }
    if (rc < 0)
        return api_fail(a, &err);
    api_sort_by(jobs, "created_at", false);
    size_t shown = 0, i;
    json_t *j;
    if (json) {
        cleanup_json json_t *shown_jobs = json_array();
        json_array_foreach(jobs, i, j)
        {
            if (all || live(json_string_value(json_object_get(j, "state"))))
                json_array_append(shown_jobs, j);
        }
        return api_print_json(shown_jobs, false);
    }
    json_array_foreach(jobs, i, j)
    {
        const char *state = json_string_value(json_object_get(j, "state"));
        if (!all && !live(state))
            continue;
        if (shown++ == 0)
            printf("%-44s %-8s %-12s %-9s %-10s %s\n", "ID", "TYPE", "STATE", "CREATED", "RELEASE",
                   "CMD");
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *type = json_string_value(json_object_get(j, "type"));
        const char *rel = json_string_value(json_object_get(j, "release"));
        cleanup_buf struct buf cid = BUF_INIT, ctype = BUF_INIT, cstate = BUF_INIT,
                               created = BUF_INIT, crel = BUF_INIT, cmd = BUF_INIT;
        api_put_clean(&cid, id ? id : json_string_value(json_object_get(j, "uuid")));
        api_put_clean(&ctype, type && *type ? type : "run");
        api_put_clean(&cstate, state ? state : "?");
        long long status = json_integer_value(json_object_get(j, "exit_status"));
        if (json_object_get(j, "exit_status") && !live(state))
            buf_printf(&cstate, " (%lld)", status);
        api_ago(&created, json_string_value(json_object_get(j, "created_at")));
        api_put_clean(&crel, rel ? rel : "-");
        if (crel.len > 8)
            crel.len = 8, crel.p[8] = '\0';
        put_cmd(&cmd, j);
        printf("%-44s %-8s %-12s %-9s %-10s %s\n", cid.p, ctype.p, cstate.p, created.p, crel.p,
               cmd.p);
    }
    if (shown == 0)
        fprintf(stderr, "no %sjobs; 'pier scale TYPE=N' starts some%s\n", all ? "" : "running ",
                all ? "" : " ('pier ps -a' shows stopped ones too)");
    return 0;
}

int cli_ps(struct cli *c)
{
    const char *app = NULL;
    bool all = false, json = false;
    for (int i = 0; i < c->argc; i++) {
        /* Flynn's `ps -a` means all jobs: -a is the app only when a name
         * follows it. */
        const char *s = c->argv[i];
        if (strcmp(s, "-a") == 0 && (i + 1 >= c->argc || c->argv[i + 1][0] == '-')) {
            all = true;
            continue;
        }
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("ps", "--app needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "--all") == 0)
            all = true;
        else if (strcmp(s, "--json") == 0)
            json = true;
        else
            return ui_usage("ps", "unknown argument \"%s\" for ps", c->argv[i]);
    }
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = ps(&a, all, json);
    api_close(&a);
    return rc;
}

int cli_kill(struct cli *c)
{
    const char *app = NULL;
    cleanup_free const char **ids = xcalloc((size_t)c->argc + 1, sizeof(*ids));
    int n = 0;
    for (int i = 0; i < c->argc; i++) {
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("kill", "-a needs an app name");
        if (r > 0)
            continue;
        if (c->argv[i][0] == '-')
            return ui_usage("kill", "unknown option \"%s\" for kill", c->argv[i]);
        ids[n++] = c->argv[i];
    }
    if (n == 0)
        return ui_usage("kill", "kill needs the id of a job ('pier ps' lists them)");
    struct api a;
    int rc = api_start(&a, c, app, true);
    for (int i = 0; rc == 0 && i < n; i++) {
        struct pier_err err = {0};
        cleanup_buf struct buf path = BUF_INIT, cid = BUF_INIT, capp = BUF_INIT;
        api_app_path(&a, &path, "/jobs/");
        api_escape(&path, ids[i]);
        api_put_clean(&cid, ids[i]);
        api_put_clean(&capp, a.app);
        int r = api_send(&a, "DELETE", path.p, NULL, NULL, &err);
        if (r == PIER_ENOTFOUND)
            rc = ui_fail("'pier ps' lists the app's jobs", "no job \"%s\" in app \"%s\"", cid.p,
                         capp.p);
        else if (r < 0)
            rc = api_fail(&a, &err);
        else
            printf("stopping job %s\n", cid.p);
    }
    api_close(&a);
    return rc;
}
