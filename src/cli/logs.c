/* pier log, pier events: what the app's jobs printed, and what happened to
 * the app (contract 3.8 for the log, 3.6 for the event stream). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/cleanup.h"

#define EVENTS_DEFAULT 30
#define COUNT_MAX 100000

static bool parse_n(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 1 || v > COUNT_MAX)
        return false;
    *out = v;
    return true;
}

/* "2015-12-16T02:20:56.663589985Z" as "2015-12-16T02:20:56.663589Z":
 * always six digits of fraction, the zone as sent. */
static void put_timestamp(struct buf *out, const char *ts)
{
    if (!ts || strlen(ts) < 19) {
        api_put_clean(out, ts ? ts : "-");
        return;
    }
    cleanup_buf struct buf t = BUF_INIT;
    api_put_clean(&t, ts);
    buf_append(out, t.p, 19);
    const char *p = t.p + 19;
    int digits = 0;
    buf_putc(out, '.');
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++)
            if (digits < 6) {
                buf_putc(out, *p);
                digits++;
            }
    for (; digits < 6; digits++)
        buf_putc(out, '0');
    buf_puts(out, *p ? p : "Z");
}

/* ud of print_line: --json (the message object as sent, one a line), and
 * what stopped the output (1: stdout could not be written). */
struct line_out {
    bool json;
    int rc;
};

static int print_line(json_t *m, void *ud)
{
    struct line_out *out = ud;
    const char *stream = json_string_value(json_object_get(m, "stream"));
    if (stream && strcmp(stream, "stdout") != 0 && strcmp(stream, "stderr") != 0 &&
        strcmp(stream, "init") != 0)
        return 0;
    if (out->json)
        return out->rc = api_print_json(m, true);
    const char *source = json_string_value(json_object_get(m, "source"));
    const char *type = json_string_value(json_object_get(m, "process_type"));
    const char *job = json_string_value(json_object_get(m, "job_id"));
    const char *msg = json_string_value(json_object_get(m, "msg"));
    cleanup_buf struct buf line = BUF_INIT;
    put_timestamp(&line, json_string_value(json_object_get(m, "timestamp")));
    buf_putc(&line, ' ');
    api_put_clean(&line, source && *source ? source : "app");
    buf_putc(&line, '[');
    api_put_clean(&line, type && *type ? type : "run");
    if (job && *job) {
        buf_putc(&line, '.');
        api_put_clean(&line, job);
    }
    buf_puts(&line, "]: ");
    /* The message is the app's own output, printed as it wrote it. */
    buf_puts(&line, msg ? msg : "");
    buf_putc(&line, '\n');
    fwrite(line.p, 1, line.len, stdout);
    fflush(stdout);
    return 0;
}

/* What 'pier log' was asked for. */
struct log_opts {
    bool follow, init, json;
    long lines;       /* 0: all */
    const char *type; /* NULL: any */
    const char *job;  /* NULL: any */
};

static int show_log(struct api *a, const struct log_opts *o)
{
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/log?");
    if (o->follow)
        buf_puts(&path, "follow=true&");
    if (o->job) {
        buf_puts(&path, "job_id=");
        api_escape(&path, o->job);
        buf_putc(&path, '&');
    }
    if (o->lines > 0)
        buf_printf(&path, "lines=%ld&", o->lines);
    if (o->type) {
        buf_puts(&path, "process_type=");
        api_escape(&path, o->type);
        buf_putc(&path, '&');
    }
    buf_puts(&path, o->init ? "stream_types=stdout,stderr,init" : "stream_types=stdout,stderr");
    struct pier_err err = {0};
    struct line_out out = {.json = o->json};
    int rc = api_lines(a, path.p, print_line, &out, &err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
    }
    return rc < 0 ? api_fail(a, &err) : out.rc;
}

int cli_log(struct cli *c)
{
    const char *app = NULL;
    struct log_opts o = {0};
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("log", "-a needs an app name");
        if (r > 0)
            continue;
        bool has_value = i + 1 < c->argc;
        if (strcmp(s, "-f") == 0 || strcmp(s, "--follow") == 0) {
            o.follow = true;
        } else if (strcmp(s, "-i") == 0 || strcmp(s, "--init") == 0) {
            o.init = true;
        } else if (strcmp(s, "--json") == 0) {
            o.json = true;
        } else if (strcmp(s, "-n") == 0 || strcmp(s, "--lines") == 0) {
            if (!has_value || !parse_n(c->argv[++i], &o.lines))
                return ui_usage("log", "-n needs a number of lines from 1 to %d", COUNT_MAX);
        } else if (strcmp(s, "-t") == 0 || strcmp(s, "--type") == 0) {
            if (!has_value)
                return ui_usage("log", "-t needs a process type");
            o.type = c->argv[++i];
        } else if (strcmp(s, "-j") == 0 || strcmp(s, "--job") == 0) {
            if (!has_value)
                return ui_usage("log", "-j needs a job id");
            o.job = c->argv[++i];
        } else {
            return ui_usage("log", "unknown argument \"%s\" for log", s);
        }
    }
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = show_log(&a, &o);
    api_close(&a);
    return rc;
}

/* ---- events ---- */

/* " web=2 worker=1" for an object of counts. */
static void put_counts(struct buf *out, const json_t *counts)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)counts, key, v)
    {
        buf_putc(out, ' ');
        api_put_clean(out, key);
        buf_printf(out, "=%lld", (long long)json_integer_value(v));
    }
}

/* One line on what an event says, by its object type (Flynn's shapes). */
static void put_summary(struct buf *out, const char *otype, const json_t *d)
{
    const char *s;
#define FIELD(obj, name) json_string_value(json_object_get((obj), (name)))
    if (strcmp(otype, "job") == 0) {
        s = FIELD(d, "type");
        api_put_clean(out, s && *s ? s : "run");
        buf_putc(out, ' ');
        api_put_clean(out, FIELD(d, "state"));
        if (json_is_integer(json_object_get(d, "exit_status")))
            buf_printf(out, " (exit %lld)",
                       (long long)json_integer_value(json_object_get(d, "exit_status")));
    } else if (strcmp(otype, "scale_request") == 0) {
        api_put_clean(out, FIELD(d, "state"));
        put_counts(out, json_object_get(d, "new_processes"));
    } else if (strcmp(otype, "scale") == 0) {
        buf_puts(out, "formation");
        put_counts(out, json_object_get(d, "processes"));
    } else if (strcmp(otype, "deployment") == 0) {
        api_put_clean(out, FIELD(d, "status"));
        if (FIELD(d, "job_type") && FIELD(d, "job_state")) {
            buf_putc(out, ' ');
            api_put_clean(out, FIELD(d, "job_type"));
            buf_putc(out, ' ');
            api_put_clean(out, FIELD(d, "job_state"));
        }
        if ((s = FIELD(d, "error")) && *s) {
            buf_puts(out, ": ");
            api_put_clean(out, s);
        }
    } else if (strcmp(otype, "release") == 0) {
        buf_puts(out, "created");
        if ((s = FIELD(json_object_get(d, "meta"), "description"))) {
            buf_puts(out, ": ");
            api_put_clean(out, s);
        }
    } else if (strcmp(otype, "app_release") == 0) {
        buf_puts(out, "release ");
        api_put_clean(out, FIELD(json_object_get(d, "release"), "id"));
    } else if (strcmp(otype, "app") == 0) {
        buf_puts(out, "app ");
        api_put_clean(out, FIELD(d, "name"));
    } else if (strcmp(otype, "route") == 0) {
        api_put_clean(out, FIELD(d, "type"));
        buf_putc(out, ' ');
        api_put_clean(out, FIELD(d, "domain"));
    } else if (strcmp(otype, "app_deletion") == 0) {
        buf_puts(out, "deleted");
    } else {
        cleanup_buf struct buf text = BUF_INIT;
        char *dump = json_dumps(d, JSON_COMPACT);
        api_put_clean(&text, dump ? dump : "");
        free(dump);
        if (text.len > 100)
            text.len = 97, buf_puts(&text, "...");
        buf_append(out, text.p, text.len);
    }
#undef FIELD
}

static void print_event(const json_t *e)
{
    const char *otype = json_string_value(json_object_get(e, "object_type"));
    cleanup_buf struct buf line = BUF_INIT, t = BUF_INIT, id = BUF_INIT;
    api_put_clean(&line, json_string_value(json_object_get(e, "created_at")));
    api_put_clean(&t, otype ? otype : "?");
    api_put_clean(&id, json_string_value(json_object_get(e, "object_id")));
    buf_printf(&line, "  %-14s %-36s ", t.p, id.len ? id.p : "-");
    put_summary(&line, otype ? otype : "", json_object_get(e, "data"));
    printf("%s\n", line.p);
    fflush(stdout);
}

/* One event of a listing or a follow: a line of text, or of JSON. */
static int emit_event(const json_t *e, bool json)
{
    if (json)
        return api_print_json(e, true);
    print_event(e);
    return 0;
}

/* json: the list as one array, and with follow each event after it as one
 * line of JSON. */
static int show_events(struct api *a, bool follow, long n, bool json)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    /* before the first goto: fail frees them */
    cleanup_json json_t *list = NULL, *ordered = json_array();
    buf_puts(&path, "/events?app_id=");
    api_escape(&path, a->app);
    struct api_events *ev = NULL;
    /* Following: subscribe before listing, so nothing falls in between. */
    if (follow && api_events_open(a, path.p, &ev, &err) < 0)
        goto fail;
    buf_printf(&path, "&count=%ld", n);
    if (api_get(a, path.p, &list, &err) < 0)
        goto fail;
    long long last = 0;
    /* oldest first, by id */
    for (size_t k = json_array_size(list); k-- > 0;) {
        json_t *best = NULL;
        size_t i, bi = 0;
        json_t *e;
        json_array_foreach(list, i, e)
        {
            if (!best || json_integer_value(json_object_get(e, "id")) <
                             json_integer_value(json_object_get(best, "id")))
                best = e, bi = i;
        }
        last = json_integer_value(json_object_get(best, "id"));
        json_array_append(ordered, best);
        json_array_remove(list, bi);
    }
    size_t i;
    json_t *e;
    if (json && !follow)
        return api_print_json(ordered, false);
    json_array_foreach(ordered, i, e)
    {
        if (emit_event(e, json) != 0)
            goto out;
    }
    while (ev) {
        cleanup_json json_t *next = NULL;
        int rc = api_events_next(ev, -1, &next, &err);
        if (rc < 0)
            goto fail;
        if (rc == 0 || json_integer_value(json_object_get(next, "id")) <= last)
            continue;
        if (emit_event(next, json) != 0)
            goto out;
    }
    return 0;
out:
    api_events_close(ev);
    return 1;
fail:
    api_events_close(ev);
    if (err.code == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
    }
    return api_fail(a, &err);
}

int cli_events(struct cli *c)
{
    const char *app = NULL;
    bool follow = false, json = false;
    long n = EVENTS_DEFAULT;
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &app);
        if (r < 0)
            return ui_usage("events", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "-f") == 0 || strcmp(s, "--follow") == 0) {
            follow = true;
        } else if (strcmp(s, "--json") == 0) {
            json = true;
        } else if (strcmp(s, "-n") == 0) {
            if (i + 1 >= c->argc || !parse_n(c->argv[++i], &n))
                return ui_usage("events", "-n needs a number of events from 1 to %d", COUNT_MAX);
        } else {
            return ui_usage("events", "unknown argument \"%s\" for events", s);
        }
    }
    struct api a;
    int rc = api_start(&a, c, app, true);
    if (rc == 0)
        rc = show_events(&a, follow, n, json);
    api_close(&a);
    return rc;
}
