/* events: Flynn's events API over the events the recorder writes
 * (recorder.c, docs/controller.md "Events"), and Flynn's formations
 * stream.
 *
 * GET /events lists newest first; with "Accept: text/event-stream" the same
 * URL is a stream of server-sent events. A stream first lists what it
 * replays (past=true, or the events after Last-Event-Id) at one store
 * revision R, then watches the events from R + 1: whatever is recorded
 * after the listing arrives, nothing falls between, and nothing comes
 * twice. The response headers go out as soon as the watch exists, so a
 * client that subscribes and then acts (flynn delete, scale) sees the
 * events its action causes.
 *
 * Framing is what Flynn's client reads (FLYNN-CLIENT-CONTRACT.md §3.6):
 * "id: N\ndata: <compact JSON>\n\n" per event, and a keep-alive of ":\n"
 * with no blank line after it (a blank-line-terminated comment would be
 * decoded as an empty event and break the client).
 *
 * Listing reads blocks of SCAN_BLOCK ids by key prefix (ids are zero
 * padded), from the newest down, all at one revision. */
#include "controller/ctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "controller/check.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

#define ID_DIGITS 20
#define SCAN_POW 3 /* a scan reads 10^SCAN_POW ids at a time */
#define SCAN_BLOCK 1000
#define KEEPALIVE_MS 30000
#define SSE_TYPE "text/event-stream; charset=utf-8"
/* Flynn's zero time: the formations stream's "the past is done" mark. */
#define ZERO_TIME "0001-01-01T00:00:00Z"

static const char *const app_fields[] = {
    "id",        "name",       "meta",       "strategy", "release", "deploy_timeout",
    "protected", "created_at", "updated_at", NULL};
static const char *const release_fields[] = {"id",   "app_id",    "artifact",   "artifacts", "env",
                                             "meta", "processes", "created_at", NULL};
static const char *const artifact_fields[] = {
    "id", "type", "uri", "meta", "created_at", "manifest", "hashes", "size", "layer_url_template",
    NULL};

/* ---- parsing the request ---- */

static bool wants_sse(struct httpd_req *r)
{
    const char *a = httpd_header(r, "Accept");
    return a && strstr(a, "text/event-stream");
}

struct filter {
    char *app;     /* app id, or NULL for every app */
    json_t *types; /* object types (strings); empty: every type */
    char *object_id;
};

static void filter_clear(struct filter *f)
{
    free(f->app);
    json_decref(f->types);
    free(f->object_id);
    memset(f, 0, sizeof(*f));
}

static bool filter_match(const struct filter *f, const json_t *ev)
{
    const char *app = json_string_value(json_object_get(ev, "app"));
    if (f->app && (!app || strcmp(app, f->app) != 0))
        return false;
    const char *oid = json_string_value(json_object_get(ev, "object_id"));
    if (f->object_id && (!oid || strcmp(oid, f->object_id) != 0))
        return false;
    if (json_array_size(f->types) == 0)
        return true;
    const char *type = json_string_value(json_object_get(ev, "object_type"));
    size_t i;
    json_t *t;
    json_array_foreach(f->types, i, t)
    {
        if (type && strcmp(type, json_string_value(t)) == 0)
            return true;
    }
    return false;
}

/* Reads app_id (an id or a name), object_types and object_id. Replies
 * itself and returns < 0 when they cannot be used (an unknown app is a
 * bare 404, as in Flynn). */
static int filter_parse(struct httpd_req *r, struct ctl *c, struct filter *f)
{
    memset(f, 0, sizeof(*f));
    f->types = json_array();
    const char *ref = httpd_query(r, "app_id");
    if (ref && *ref) {
        struct pier_err err = {0};
        json_t *app = NULL;
        int rc = ctl_app_get(c, ref, &app, NULL, &err);
        if (rc < 0) {
            ctl_reply_err(r, rc, &err);
            return rc;
        }
        f->app = xstrdup(ctl_app_id(app) ? ctl_app_id(app) : "");
        json_decref(app);
    }
    json_decref(f->types);
    f->types = check_event_types(httpd_query(r, "object_types"));
    const char *oid = httpd_query(r, "object_id");
    if (oid && *oid)
        f->object_id = xstrdup(oid);
    return 0;
}

/* A query argument that must be an id when given (0 when absent). */
static int query_id(struct httpd_req *r, const char *name, int64_t *out)
{
    const char *v = httpd_query(r, name);
    *out = 0;
    if (!v || !*v)
        return 0;
    if (!check_event_id(v, out)) {
        ctl_reply_invalid(r, "%s must be a non-negative integer", name);
        return PIER_EINVAL;
    }
    return 0;
}

/* ---- reading the stored events ---- */

static void event_key(struct buf *b, int64_t id)
{
    buf_printf(b, "%s%0*" PRId64, KEYS_EVENTS, ID_DIGITS, id);
}

/* The event at kv as the API shows it (without the recorder's rev); NULL
 * when it cannot be read. */
static json_t *event_of(const char *value, size_t len)
{
    json_t *ev = NULL;
    if (jsonx_parse_object(value, len, &ev, NULL) < 0)
        return NULL;
    json_object_del(ev, "rev");
    return ev;
}

/* Appends to out (newest first) the events matching f with since < id <
 * before (before 0: no bound), at most count (0: all), as of revision
 * *rev (0: now; set to the revision read). */
static int scan(struct ctl *c, const struct filter *f, int64_t since, int64_t before, int64_t count,
                json_t *out, int64_t *rev, struct pier_err *err)
{
    struct store_list_opts first = {.limit = 1, .keys_only = true, .revision = *rev};
    struct store_range *r = NULL;
    int rc = store_list(c->s, KEYS_EVENTS, &first, &r, err);
    if (rc < 0)
        return rc;
    *rev = r->revision;
    int64_t oldest = r->n ? strtoll(r->kvs[0].key + strlen(KEYS_EVENTS), NULL, 10) : 0;
    store_range_free(r);
    if (oldest == 0)
        return 0;
    struct store_kv *head = NULL;
    if ((rc = store_get_at(c->s, KEYS_EVENT_HEAD, *rev, &head, err)) < 0)
        return rc == PIER_ENOTFOUND ? 0 : rc;
    json_t *hj = NULL;
    int64_t newest = 0;
    if (jsonx_parse_object(head->value, head->value_len, &hj, NULL) == 0)
        newest = json_integer_value(json_object_get(hj, "id"));
    json_decref(hj);
    store_kv_free(head);
    int64_t hi = before > 0 && before - 1 < newest ? before - 1 : newest;
    int64_t lo = since + 1 > oldest ? since + 1 : oldest;
    for (int64_t b = hi / SCAN_BLOCK; hi >= lo && b >= lo / SCAN_BLOCK; b--) {
        struct buf prefix = BUF_INIT;
        event_key(&prefix, b * SCAN_BLOCK);
        prefix.p[prefix.len - SCAN_POW] = '\0';
        const struct store_list_opts o = {.revision = *rev};
        rc = store_list(c->s, prefix.p, &o, &r, err);
        buf_free(&prefix);
        if (rc < 0)
            return rc;
        for (size_t i = r->n; i-- > 0;) {
            int64_t id = strtoll(r->kvs[i].key + strlen(KEYS_EVENTS), NULL, 10);
            if (id < lo || id > hi)
                continue;
            json_t *ev = event_of(r->kvs[i].value, r->kvs[i].value_len);
            if (ev && filter_match(f, ev))
                json_array_append(out, ev);
            json_decref(ev);
            if (count > 0 && (int64_t)json_array_size(out) >= count)
                break;
        }
        store_range_free(r);
        if (count > 0 && (int64_t)json_array_size(out) >= count)
            break;
    }
    return 0;
}

static void events_get_one(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    int64_t id = 0;
    if (!check_event_id(httpd_param(r, "id"), &id) || id == 0) {
        httpd_reply_not_found(r);
        return;
    }
    struct buf key = BUF_INIT;
    event_key(&key, id);
    struct store_kv *kv = NULL;
    struct pier_err err = {0};
    int rc = store_get(c->s, key.p, &kv, &err);
    buf_free(&key);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    json_t *ev = event_of(kv->value, kv->value_len);
    store_kv_free(kv);
    if (!ev) {
        err_set(&err, PIER_EINTERNAL, "event %" PRId64 " cannot be read", id);
        ctl_reply_err(r, PIER_EINTERNAL, &err);
        return;
    }
    httpd_reply_json(r, 200, ev);
}

/* ---- streams ---- */

enum stream_kind { STREAM_EVENTS, STREAM_FORMATIONS };

struct stream {
    enum stream_kind kind;
    struct ctl *c;
    struct filter f;
    struct buf replay; /* the framed past, sent first */
    struct store_watch *w;
    int64_t last_id; /* the newest event id sent */
    int64_t keepalive_at;
};

static void sse_data(struct buf *out, const json_t *j)
{
    buf_puts(out, "data: ");
    jsonx_dump(out, j);
    buf_puts(out, "\n\n");
}

static void sse_event(struct buf *out, const json_t *ev)
{
    buf_printf(out, "id: %" PRId64 "\n", (int64_t)json_integer_value(json_object_get(ev, "id")));
    sse_data(out, ev);
}

static json_t *expand_formation(struct ctl *c, const char *app_id, const char *rel_id,
                                const json_t *f);

static void live_event(struct stream *s, const struct store_event *e, struct buf *out)
{
    if (e->type != STORE_EVENT_PUT)
        return;
    json_t *ev = event_of(e->kv.value, e->kv.value_len);
    int64_t id = json_integer_value(json_object_get(ev, "id"));
    if (ev && id > s->last_id && filter_match(&s->f, ev)) {
        sse_event(out, ev);
        s->last_id = id;
    }
    json_decref(ev);
}

/* formations/<app id>/<release id>: the formation expanded; a deleted one
 * with no processes. */
static void live_formation(struct stream *s, const struct store_event *e, struct buf *out)
{
    const char *rest = e->kv.key + strlen(KEYS_FORMATIONS);
    const char *slash = strchr(rest, '/');
    if (!slash || !slash[1] || strchr(slash + 1, '/'))
        return;
    char *app = strndup(rest, (size_t)(slash - rest));
    json_t *f = NULL;
    if (e->type == STORE_EVENT_PUT &&
        jsonx_parse_object(e->kv.value, e->kv.value_len, &f, NULL) < 0)
        f = NULL;
    if (e->type == STORE_EVENT_DELETE) {
        f = json_pack("{s:{}}", "processes");
        ctl_set_now(f, "updated_at");
    }
    json_t *x = f ? expand_formation(s->c, app, slash + 1, f) : NULL;
    if (x)
        sse_data(out, x);
    json_decref(x);
    json_decref(f);
    free(app);
}

static int stream_next(void *ud, struct buf *out, int timeout_ms)
{
    struct stream *s = ud;
    if (s->replay.len > 0) {
        buf_append(out, s->replay.p, s->replay.len);
        buf_free(&s->replay);
        return 1;
    }
    struct store_events *evs = NULL;
    struct pier_err err = {0};
    int rc = store_watch_next(s->w, timeout_ms, &evs, &err);
    if (rc == 0) {
        for (size_t i = 0; i < evs->n; i++) {
            if (s->kind == STREAM_EVENTS)
                live_event(s, &evs->ev[i], out);
            else
                live_formation(s, &evs->ev[i], out);
        }
        store_events_free(evs);
        return 1;
    }
    if (rc == PIER_ECOMPACTED) {
        /* The client reconnects with Last-Event-Id and gets the rest. */
        log_warn("controller", "event stream cut: history compacted", "reason=\"%s\"", err.msg);
        return -1;
    }
    if (clock_now_ms() >= s->keepalive_at) {
        buf_puts(out, ":\n"); /* Flynn's keep-alive: no blank line */
        s->keepalive_at = clock_now_ms() + KEEPALIVE_MS;
    }
    return 1;
}

static void stream_done(void *ud)
{
    struct stream *s = ud;
    store_watch_close(s->w);
    filter_clear(&s->f);
    buf_free(&s->replay);
    free(s);
}

/* Watches prefix from rev + 1 and starts the stream (the headers go out
 * at once). Takes s. */
static void stream_start(struct httpd_req *r, struct stream *s, const char *prefix, int64_t rev)
{
    const struct store_watch_opts o = {.prefix = true, .start_revision = rev + 1};
    struct pier_err err = {0};
    int rc = store_watch_open(s->c->s, prefix, &o, &s->w, &err);
    if (rc < 0) {
        stream_done(s);
        ctl_reply_err(r, rc, &err);
        return;
    }
    s->keepalive_at = clock_now_ms() + KEEPALIVE_MS;
    /* Endless: a drain ends it and the client resumes with Last-Event-Id. */
    httpd_reply_stream_endless(r, 200, SSE_TYPE, stream_next, stream_done, s);
}

static void events_stream(struct httpd_req *r, struct ctl *c, struct filter *f, int64_t count)
{
    int64_t last = 0;
    const char *h = httpd_header(r, "Last-Event-Id");
    if (h && *h && !check_event_id(h, &last)) {
        ctl_reply_invalid(r, "Last-Event-Id is invalid");
        filter_clear(f);
        return;
    }
    const char *past = httpd_query(r, "past");
    struct stream *s = xcalloc(1, sizeof(*s));
    s->kind = STREAM_EVENTS;
    s->c = c;
    s->f = *f;
    memset(f, 0, sizeof(*f));
    int64_t rev = 0;
    struct pier_err err = {0};
    int rc = 0;
    if ((past && strcmp(past, "true") == 0) || last > 0) {
        cleanup_json json_t *list = json_array();
        rc = scan(c, &s->f, last, 0, count, list, &rev, &err);
        for (size_t i = json_array_size(list); rc == 0 && i-- > 0;) /* oldest first */
            sse_event(&s->replay, json_array_get(list, i));
        if (json_array_size(list) > 0)
            s->last_id = json_integer_value(json_object_get(json_array_get(list, 0), "id"));
    } else {
        rc = store_revision(c->s, &rev, &err);
    }
    if (rc < 0) {
        stream_done(s);
        ctl_reply_err(r, rc, &err);
        return;
    }
    stream_start(r, s, KEYS_EVENTS, rev);
}

static void events_get(struct httpd_req *r, void *ud)
{
    struct ctl *c = ud;
    struct filter f;
    int64_t count = 0, before = 0, since = 0;
    if (query_id(r, "count", &count) < 0 || query_id(r, "before_id", &before) < 0 ||
        query_id(r, "since_id", &since) < 0)
        return;
    if (filter_parse(r, c, &f) < 0) {
        filter_clear(&f);
        return;
    }
    if (wants_sse(r)) {
        events_stream(r, c, &f, count);
        return;
    }
    json_t *out = json_array();
    int64_t rev = 0;
    struct pier_err err = {0};
    int rc = scan(c, &f, since, before, count, out, &rev, &err);
    filter_clear(&f);
    if (rc < 0) {
        json_decref(out);
        ctl_reply_err(r, rc, &err);
        return;
    }
    httpd_reply_json(r, 200, out);
}

/* ---- the formations stream ---- */

static json_t *get_rec(struct ctl *c, const char *prefix, const char *id, const char *const *fields)
{
    if (!id || !*id || strchr(id, '/'))
        return NULL;
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", prefix, id);
    json_t *j = NULL;
    if (ctl_get(c, key.p, &j, NULL, NULL) < 0)
        j = NULL;
    buf_free(&key);
    if (j)
        ctl_keep_fields(j, fields);
    return j;
}

/* Flynn's expanded formation of formation f (app_id/rel_id): the app, the
 * release and its artifacts in full, counts, tags, updated_at. A gone app
 * or release is shown by its id alone. */
static json_t *expand_formation(struct ctl *c, const char *app_id, const char *rel_id,
                                const json_t *f)
{
    json_t *app = get_rec(c, KEYS_APPS, app_id, app_fields);
    json_t *rel = get_rec(c, KEYS_RELEASES, rel_id, release_fields);
    json_t *x = json_object();
    json_object_set_new(x, "app", app ? app : json_pack("{s:s}", "id", app_id));
    json_t *arts = json_array();
    size_t i;
    json_t *id;
    json_array_foreach(json_object_get(rel, "artifacts"), i, id)
    {
        json_t *a = get_rec(c, KEYS_ARTIFACTS, json_string_value(id), artifact_fields);
        if (a)
            json_array_append_new(arts, a);
    }
    json_object_set_new(x, "release", rel ? rel : json_pack("{s:s}", "id", rel_id));
    json_object_set_new(x, "artifacts", arts);
    json_t *p = json_object_get(f, "processes"), *t = json_object_get(f, "tags");
    json_object_set_new(x, "processes", json_is_object(p) ? json_deep_copy(p) : json_object());
    json_object_set_new(x, "tags", json_is_object(t) ? json_deep_copy(t) : json_object());
    json_t *up = json_object_get(f, "updated_at");
    if (json_is_string(up))
        json_object_set(x, "updated_at", up);
    return x;
}

void ctl_formations_stream(struct httpd_req *r, struct ctl *c)
{
    if (!wants_sse(r)) {
        ctl_reply_invalid(r, "must either request a stream or only active formations");
        return;
    }
    const char *since_s = httpd_query(r, "since");
    int64_t since = INT64_MIN;
    if (since_s && *since_s && clock_parse_rfc3339(since_s, &since) < 0) {
        ctl_reply_invalid(r, "since must be an RFC 3339 time");
        return;
    }
    struct store_range *all = NULL;
    struct pier_err err = {0};
    int rc = store_list(c->s, KEYS_FORMATIONS, NULL, &all, &err);
    if (rc < 0) {
        ctl_reply_err(r, rc, &err);
        return;
    }
    struct stream *s = xcalloc(1, sizeof(*s));
    s->kind = STREAM_FORMATIONS;
    s->c = c;
    for (size_t i = 0; i < all->n; i++) {
        const char *rest = all->kvs[i].key + strlen(KEYS_FORMATIONS);
        const char *slash = strchr(rest, '/');
        json_t *f = NULL;
        int64_t at = 0;
        if (!slash || jsonx_parse_object(all->kvs[i].value, all->kvs[i].value_len, &f, NULL) < 0)
            continue;
        const char *up = json_string_value(json_object_get(f, "updated_at"));
        if (since == INT64_MIN || (up && clock_parse_rfc3339(up, &at) == 0 && at >= since)) {
            char *app = strndup(rest, (size_t)(slash - rest));
            json_t *x = expand_formation(c, app, slash + 1, f);
            sse_data(&s->replay, x);
            json_decref(x);
            free(app);
        }
        json_decref(f);
    }
    json_t *mark = json_pack("{s:s}", "updated_at", ZERO_TIME);
    sse_data(&s->replay, mark);
    json_decref(mark);
    int64_t rev = all->revision;
    store_range_free(all);
    stream_start(r, s, KEYS_FORMATIONS, rev);
}

void ctl_events_routes(struct httpd *h, struct ctl *c)
{
    httpd_route(h, "GET", "/events", events_get, c, false);
    httpd_route(h, "GET", "/events/:id", events_get_one, c, false);
}
