/* recorder: turns the store's history into Flynn's events
 * (docs/controller.md "Events").
 *
 * Nobody writes an event directly. Every controller runs a recorder, and
 * the one that leads watches everything under KEYS_ROOT with the values
 * before each change, derives the events each revision means (an app put
 * is an "app" event, a job whose state changed a "job" event, ...) and
 * writes them at /pier/v1/events/<id, 20 digits> with consecutive ids.
 *
 * The head (/pier/v1/event-head, {"id","rev"[,"part"]}) says how far the
 * recording got: the last id written and the revision it came from. The
 * events and the new head go in one transaction that compares the head's
 * mod revision with what this recorder last read or wrote. So two
 * controllers that both believe they lead (a stale leader that has not
 * heard yet) derive the same events from the same history, but only one of
 * them can append them: the other's compare fails, it re-reads the head and
 * goes on from there. Nothing is recorded twice and nothing is skipped.
 *
 * A transaction holds at most TXN_EVENTS events (etcd refuses more than
 * 128 ops by default). A revision that means more events than that (an app
 * deletion of many objects, say) is written in parts, and the head then
 * also says how many of that revision's events are written ("part"): the
 * derivation depends on nothing but the revision's changes, so a recorder
 * that resumes there derives the same list and skips what is done.
 *
 * The head is written only with events, except that a head lagging more
 * than HEAD_LAG_MAX revisions behind quiet history (heartbeats, leases)
 * is moved up alone, so a new leader does not replay all of it. When the
 * history to replay has been compacted away, the gap is logged and the
 * recording goes on from the current revision. Old events are deleted in
 * whole blocks of ids by key prefix, keeping about the newest
 * PIER_EVENT_RETENTION (default 100000). */
#include "controller/ctl.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/keys.h"
#include "lib/log.h"

#define TXN_EVENTS 98
#define HEAD_LAG_MAX 1000
#define RETAIN_DEFAULT 100000
#define WATCH_POLL_MS 500
#define ID_DIGITS 20

struct ctl_worker {
    struct ctl *c;
    pthread_t thread;
    atomic_bool stop;
    int64_t retain; /* keep about this many of the newest events */
    int64_t block;  /* ids per deleted block: a power of 10 */
    int block_pow;  /* block = 10^block_pow */
};

/* What the head says, and its key's mod revision (0: no head yet). */
struct head {
    int64_t id, rev, part, mod;
};

/* ---- fields a Flynn client sees of each record ---- */

static const char *const app_fields[] = {
    "id",        "name",       "meta",       "strategy", "release", "deploy_timeout",
    "protected", "created_at", "updated_at", NULL};
static const char *const release_fields[] = {"id",   "app_id",    "artifact",   "artifacts", "env",
                                             "meta", "processes", "created_at", NULL};
static const char *const artifact_fields[] = {
    "id", "type", "uri", "meta", "created_at", "manifest", "hashes", "size", "layer_url_template",
    NULL};
static const char *const route_fields[] = {"type",
                                           "id",
                                           "parent_ref",
                                           "service",
                                           "port",
                                           "leader",
                                           "domain",
                                           "path",
                                           "sticky",
                                           "certificate",
                                           "tls_cert",
                                           "tls_key",
                                           "drain_backends",
                                           "disable_keep_alives",
                                           "created_at",
                                           "updated_at",
                                           NULL};
static const char *const scale_request_fields[] = {
    "id",       "app",        "release",    "state", "old_processes", "new_processes", "old_tags",
    "new_tags", "created_at", "updated_at", NULL};
static const char *const job_fields[] = {
    "id",   "uuid",        "host_id",    "app",      "release",    "type",       "state", "args",
    "meta", "exit_status", "host_error", "restarts", "created_at", "updated_at", NULL};

/* ---- deriving events from one revision's changes ---- */

/* The part of key after prefix, when key is under it and that part is one
 * path segment; NULL otherwise. */
static const char *leaf(const char *key, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(key, prefix, n) != 0 || !key[n] || strchr(key + n, '/'))
        return NULL;
    return key + n;
}

static json_t *parse(const char *value, size_t len)
{
    json_t *j = NULL;
    if (!value || jsonx_parse_object(value, len, &j, NULL) < 0)
        return NULL;
    return j;
}

static json_t *ev_new_value(const struct store_event *e)
{
    return e->type == STORE_EVENT_PUT ? parse(e->kv.value, e->kv.value_len) : NULL;
}

static json_t *ev_prev_value(const struct store_event *e)
{
    return e->prev ? parse(e->prev->value, e->prev->value_len) : NULL;
}

static const char *str(const json_t *obj, const char *field)
{
    return json_string_value(json_object_get(obj, field));
}

/* A copy of rec with only fields (a new reference). */
static json_t *view(const json_t *rec, const char *const *fields)
{
    json_t *v = json_deep_copy(rec);
    ctl_keep_fields(v, fields);
    return v;
}

/* Appends an event without id and time (added when it is written).
 * Steals data. */
static void add(json_t *out, const char *app, const char *type, const char *object_id, json_t *data)
{
    json_t *ev = json_object();
    if (app && *app)
        json_object_set_new(ev, "app", json_string(app));
    json_object_set_new(ev, "object_type", json_string(type));
    json_object_set_new(ev, "object_id", json_string(object_id ? object_id : ""));
    json_object_set_new(ev, "data", data ? data : json_object());
    json_array_append_new(out, ev);
}

/* The apps deleted at this revision: their releases, routes and
 * formations deleted with them make one app_deletion, not events of their
 * own. */
struct revision {
    struct ctl_worker *w;
    const struct store_event *ev;
    size_t n;
    int64_t rev;
    const char **deleted_apps;
    size_t n_deleted;
};

static bool app_deleted(const struct revision *r, const char *app)
{
    for (size_t i = 0; app && i < r->n_deleted; i++) {
        if (strcmp(r->deleted_apps[i], app) == 0)
            return true;
    }
    return false;
}

/* The release record id as of the revision (releases are immutable, so
 * the current one is as good when that revision is compacted). */
static json_t *release_at(struct ctl *c, const char *id, int64_t rev)
{
    if (!id)
        return NULL;
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", KEYS_RELEASES, id);
    struct store_kv *kv = NULL;
    if (store_get_at(c->s, key.p, rev, &kv, NULL) < 0 && store_get(c->s, key.p, &kv, NULL) < 0)
        kv = NULL;
    buf_free(&key);
    json_t *j = kv ? parse(kv->value, kv->value_len) : NULL;
    store_kv_free(kv);
    if (j)
        ctl_keep_fields(j, release_fields);
    return j;
}

/* Whether a and b differ in a field other than release and updated_at. */
static bool app_changed_besides_release(const json_t *a, const json_t *b)
{
    json_t *x = json_deep_copy(a), *y = json_deep_copy(b);
    json_object_del(x, "release");
    json_object_del(x, "updated_at");
    json_object_del(y, "release");
    json_object_del(y, "updated_at");
    bool d = !json_equal(x, y);
    json_decref(x);
    json_decref(y);
    return d;
}

static void derive_app_deletion(const struct revision *r, const char *app, json_t *out)
{
    json_t *routes = json_array(), *releases = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const struct store_event *e = &r->ev[i];
        if (e->type != STORE_EVENT_DELETE)
            continue;
        bool is_route = leaf(e->kv.key, KEYS_ROUTES) != NULL;
        bool is_rel = leaf(e->kv.key, KEYS_RELEASES) != NULL;
        if (!is_route && !is_rel)
            continue;
        json_t *prev = ev_prev_value(e);
        const char *owner = str(prev, is_route ? "app" : "app_id");
        if (owner && strcmp(owner, app) == 0)
            json_array_append_new(is_route ? routes : releases,
                                  view(prev, is_route ? route_fields : release_fields));
        json_decref(prev);
    }
    json_t *data =
        json_pack("{s:{s:s,s:o,s:[],s:o},s:s}", "app_deletion", "app", app, "deleted_routes",
                  routes, "deleted_resources", "deleted_releases", releases, "error", "");
    add(out, app, "app_deletion", app, data);
}

static void derive_app(const struct revision *r, const struct store_event *e, const char *id,
                       json_t *out)
{
    if (e->type == STORE_EVENT_DELETE) {
        derive_app_deletion(r, id, out);
        return;
    }
    cleanup_json json_t *now = ev_new_value(e);
    cleanup_json json_t *prev = ev_prev_value(e);
    if (!now)
        return;
    const char *rel = str(now, "release"), *prev_rel = str(prev, "release");
    bool rel_changed = rel && (!prev_rel || strcmp(rel, prev_rel) != 0);
    if (rel_changed) {
        json_t *data = json_object();
        json_t *rec = release_at(r->w->c, rel, r->rev);
        json_object_set_new(data, "release", rec ? rec : json_pack("{s:s}", "id", rel));
        json_t *old = prev_rel ? release_at(r->w->c, prev_rel, r->rev) : NULL;
        if (old)
            json_object_set_new(data, "prev_release", old);
        add(out, id, "app_release", id, data);
    }
    if (!prev || !rel_changed || app_changed_besides_release(prev, now))
        add(out, id, "app", id, view(now, app_fields));
}

static void derive_release(const struct revision *r, const struct store_event *e, const char *id,
                           json_t *out)
{
    if (e->type == STORE_EVENT_PUT) {
        json_t *now = ev_new_value(e);
        if (now)
            add(out, str(now, "app_id"), "release", id, view(now, release_fields));
        json_decref(now);
        return;
    }
    json_t *prev = ev_prev_value(e);
    const char *app = str(prev, "app_id");
    if (!app_deleted(r, app)) {
        json_t *data =
            json_pack("{s:{s:s,s:s,s:[],s:[]},s:s}", "release_deletion", "app", app ? app : "",
                      "release", id, "remaining_apps", "deleted_files", "error", "");
        add(out, app, "release_deletion", id, data);
    }
    json_decref(prev);
}

/* formations/<app id>/<release id> */
static void derive_formation(const struct revision *r, const struct store_event *e,
                             const char *rest, json_t *out)
{
    const char *slash = strchr(rest, '/');
    if (!slash || !slash[1] || strchr(slash + 1, '/'))
        return;
    char *app = strndup(rest, (size_t)(slash - rest));
    const char *rel = slash + 1;
    if (e->type == STORE_EVENT_DELETE && app_deleted(r, app)) {
        free(app);
        return;
    }
    json_t *now = ev_new_value(e), *prev = ev_prev_value(e);
    json_t *procs = json_object_get(now, "processes");
    json_t *data = json_pack("{s:s,s:s}", "app", app, "release", rel);
    json_object_set_new(data, "processes",
                        json_is_object(procs) ? json_deep_copy(procs) : json_object());
    json_t *pp = json_object_get(prev, "processes");
    if (json_is_object(pp))
        json_object_set(data, "prev_processes", pp);
    json_t *tags = json_object_get(now ? now : prev, "tags");
    json_object_set_new(data, "tags", json_is_object(tags) ? json_deep_copy(tags) : json_object());
    add(out, app, "scale", rel, data);
    json_decref(now);
    json_decref(prev);
    free(app);
}

static void derive_job(const struct store_event *e, const char *id, json_t *out)
{
    if (e->type != STORE_EVENT_PUT)
        return;
    cleanup_json json_t *now = ev_new_value(e);
    cleanup_json json_t *prev = ev_prev_value(e);
    if (!now)
        return;
    const char *st = str(now, "state"), *pst = str(prev, "state");
    st = st ? st : "pending";
    pst = pst ? pst : "pending";
    if (prev && strcmp(st, pst) == 0)
        return;
    json_t *data = view(now, job_fields);
    if (!json_object_get(data, "id"))
        json_object_set_new(data, "id", json_string(id));
    json_object_set_new(data, "state", json_string(st));
    add(out, str(now, "app"), "job", id, data);
}

static void derive_deployment(const struct store_event *e, const char *id, json_t *out)
{
    if (e->type != STORE_EVENT_PUT)
        return;
    cleanup_json json_t *now = ev_new_value(e);
    cleanup_json json_t *prev = ev_prev_value(e);
    if (!now)
        return;
    if (prev && json_equal(json_object_get(now, "status"), json_object_get(prev, "status")) &&
        json_equal(json_object_get(now, "step") ? json_object_get(now, "step") : json_null(),
                   json_object_get(prev, "step") ? json_object_get(prev, "step") : json_null()))
        return;
    const char *status = str(now, "status");
    json_t *data = json_object();
    const char *fields[][2] = {
        {"app", "app"}, {"deployment", "id"}, {"release", "new_release"}, {"status", "status"}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        const char *v = str(now, fields[i][1]);
        if (v)
            json_object_set_new(data, fields[i][0], json_string(v));
    }
    /* A step's job_type and job_state stay in the record after it ends;
     * only the steps of a running deployment report them. */
    if (status && strcmp(status, "running") == 0) {
        if (str(now, "job_type"))
            json_object_set_new(data, "job_type", json_string(str(now, "job_type")));
        if (str(now, "job_state"))
            json_object_set_new(data, "job_state", json_string(str(now, "job_state")));
    }
    const char *error = str(now, "error");
    if (error && *error)
        json_object_set_new(data, "error", json_string(error));
    add(out, str(now, "app"), "deployment", id, data);
}

/* A put of a record shown as fields (scale requests, keys): type; a delete:
 * del_type (NULL: none), with the record before. */
static void derive_plain(const struct revision *r, const struct store_event *e, const char *id,
                         const char *type, const char *del_type, const char *app_field,
                         const char *const *fields, json_t *out)
{
    json_t *rec = e->type == STORE_EVENT_PUT ? ev_new_value(e) : ev_prev_value(e);
    const char *app = app_field ? str(rec, app_field) : NULL;
    if (e->type == STORE_EVENT_PUT && rec)
        add(out, app, type, id, fields ? view(rec, fields) : json_deep_copy(rec));
    else if (e->type == STORE_EVENT_DELETE && del_type && !app_deleted(r, app))
        add(out, app, del_type, id,
            rec ? (fields ? view(rec, fields) : json_deep_copy(rec))
                : json_pack("{s:s}", "id", id));
    json_decref(rec);
}

static void derive_one(const struct revision *r, const struct store_event *e, json_t *out)
{
    const char *k = e->kv.key, *id;
    if ((id = leaf(k, KEYS_APPS)))
        derive_app(r, e, id, out);
    else if ((id = leaf(k, KEYS_ARTIFACTS)) && e->type == STORE_EVENT_PUT)
        derive_plain(r, e, id, "artifact", NULL, NULL, artifact_fields, out);
    else if ((id = leaf(k, KEYS_RELEASES)))
        derive_release(r, e, id, out);
    else if (strncmp(k, KEYS_FORMATIONS, strlen(KEYS_FORMATIONS)) == 0)
        derive_formation(r, e, k + strlen(KEYS_FORMATIONS), out);
    else if ((id = leaf(k, KEYS_SCALE_REQUESTS)))
        derive_plain(r, e, id, "scale_request", NULL, "app", scale_request_fields, out);
    else if ((id = leaf(k, KEYS_JOBS)))
        derive_job(e, id, out);
    else if ((id = leaf(k, KEYS_DEPLOYMENTS)))
        derive_deployment(e, id, out);
    else if ((id = leaf(k, KEYS_ROUTES)))
        derive_plain(r, e, id, "route", "route_deletion", "app", route_fields, out);
    else if ((id = leaf(k, KEYS_KEYS)))
        derive_plain(r, e, id, "key", "key_deletion", NULL, NULL, out);
    /* everything else (events, the head, services, hosts, placements,
     * app names, leaders) means no event */
}

/* The events n changes of one revision mean, in order, into out. Depends
 * only on the changes (see the top: a resumed part needs the same list). */
static void derive(struct ctl_worker *w, const struct store_event *ev, size_t n, int64_t rev,
                   json_t *out)
{
    struct revision r = {.w = w, .ev = ev, .n = n, .rev = rev};
    r.deleted_apps = xcalloc(n ? n : 1, sizeof(*r.deleted_apps));
    for (size_t i = 0; i < n; i++) {
        const char *id = leaf(ev[i].kv.key, KEYS_APPS);
        if (id && ev[i].type == STORE_EVENT_DELETE)
            r.deleted_apps[r.n_deleted++] = id;
    }
    for (size_t i = 0; i < n; i++)
        derive_one(&r, &ev[i], out);
    free(r.deleted_apps);
}

/* ---- the head and writing ---- */

static void event_key(struct buf *b, int64_t id)
{
    buf_printf(b, "%s%0*" PRId64, KEYS_EVENTS, ID_DIGITS, id);
}

static int head_read(struct ctl *c, struct head *h, struct pier_err *err)
{
    memset(h, 0, sizeof(*h));
    json_t *j = NULL;
    int rc = ctl_get(c, KEYS_EVENT_HEAD, &j, &h->mod, err);
    if (rc == PIER_ENOTFOUND) {
        h->mod = 0;
        return store_revision(c->s, &h->rev, err);
    }
    if (rc < 0)
        return rc;
    if (jsonx_get_int64(j, "id", &h->id, err) < 0 || jsonx_get_int64(j, "rev", &h->rev, err) < 0 ||
        jsonx_get_int64(j, "part", &h->part, err) < 0)
        rc = err_wrap(err, PIER_EPROTO, "the event head");
    json_decref(j);
    return rc;
}

static json_t *head_json(int64_t id, int64_t rev, int64_t part)
{
    json_t *j = json_pack("{s:I,s:I}", "id", (json_int_t)id, "rev", (json_int_t)rev);
    if (part > 0)
        json_object_set_new(j, "part", json_integer(part));
    return j;
}

/* Runs t (which compares the head's mod revision with h->mod and puts the
 * new head) and moves h on. PIER_ECONFLICT when someone else moved the
 * head first. */
static int head_commit(struct ctl *c, struct store_txn *t, struct head *h, int64_t id, int64_t rev,
                       int64_t part, struct pier_err *err)
{
    json_t *nh = head_json(id, rev, part);
    ctl_txn_put(t, KEYS_EVENT_HEAD, nh);
    json_decref(nh);
    struct store_txn_result *res = NULL;
    int rc = store_txn_commit(c->s, t, &res, err);
    if (rc < 0)
        return rc;
    if (!res->succeeded) {
        store_txn_result_free(res);
        return err_set(err, PIER_ECONFLICT, "the event head moved: another recorder wrote it");
    }
    *h = (struct head){.id = id, .rev = rev, .part = part, .mod = res->revision};
    store_txn_result_free(res);
    return 0;
}

static struct store_txn *head_txn(const struct head *h)
{
    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, KEYS_EVENT_HEAD, STORE_CMP_MOD, STORE_EQ, h->mod);
    return t;
}

/* Deletes the blocks of ids that lie wholly below newest - retain. */
static void prune(struct ctl_worker *w, int64_t newest)
{
    int64_t limit = newest - w->retain;
    if (limit < w->block)
        return;
    struct store_list_opts lo = {.limit = 1, .keys_only = true};
    struct store_range *r = NULL;
    struct pier_err err = {0};
    if (store_list(w->c->s, KEYS_EVENTS, &lo, &r, &err) < 0 || r->n == 0) {
        store_range_free(r);
        return;
    }
    int64_t oldest = strtoll(r->kvs[0].key + strlen(KEYS_EVENTS), NULL, 10);
    store_range_free(r);
    int64_t first = oldest / w->block, end = limit / w->block; /* blocks [first, end) */
    int deleted = 0;
    while (first < end && !atomic_load(&w->stop)) {
        struct store_txn *t = store_txn_new();
        for (int n = 0; n < 100 && first < end; n++, first++, deleted++) {
            struct buf key = BUF_INIT;
            event_key(&key, first * w->block);
            key.p[key.len - (size_t)w->block_pow] = '\0'; /* the block's prefix */
            store_txn_delete(t, STORE_THEN, key.p, true);
            buf_free(&key);
        }
        struct store_txn_result *res = NULL;
        int rc = store_txn_commit(w->c->s, t, &res, &err);
        store_txn_free(t);
        store_txn_result_free(res);
        if (rc < 0) {
            log_warn("recorder", "cannot delete old events", "reason=\"%s\"", err.msg);
            return;
        }
    }
    if (deleted > 0)
        log_info("recorder", "old events deleted", "below=%" PRId64, end * w->block);
}

/* Writes pending (events of revisions up to rev, each {"ev","rev"}) with
 * the next ids and the new head; part > 0: only the first part events of
 * rev's list are written by now. */
static int flush(struct ctl_worker *w, struct head *h, json_t *pending, int64_t rev, int64_t part,
                 struct pier_err *err)
{
    size_t n = json_array_size(pending);
    if (n == 0)
        return 0;
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    struct store_txn *t = head_txn(h);
    size_t i;
    json_t *p;
    json_array_foreach(pending, i, p)
    {
        int64_t id = h->id + 1 + (int64_t)i;
        /* id first, as Flynn's events read */
        json_t *ev = json_pack("{s:I}", "id", (json_int_t)id);
        json_object_update(ev, json_object_get(p, "ev"));
        json_object_set_new(ev, "created_at", json_string(now));
        json_object_set(ev, "rev", json_object_get(p, "rev"));
        struct buf key = BUF_INIT;
        event_key(&key, id);
        ctl_txn_put(t, key.p, ev);
        buf_free(&key);
        json_decref(ev);
    }
    int64_t old = h->id;
    int rc = head_commit(w->c, t, h, old + (int64_t)n, rev, part, err);
    store_txn_free(t);
    json_array_clear(pending);
    if (rc == 0 && old / w->block != h->id / w->block)
        prune(w, h->id);
    return rc;
}

/* Records one batch of changes (whole revisions, in order). */
static int record(struct ctl_worker *w, struct head *h, const struct store_events *evs,
                  struct pier_err *err)
{
    cleanup_json json_t *pending = json_array();
    int64_t last_rev = 0;
    size_t i = 0;
    int rc = 0;
    while (i < evs->n && rc == 0) {
        int64_t rev = evs->ev[i].kv.mod_revision;
        size_t j = i;
        while (j < evs->n && evs->ev[j].kv.mod_revision == rev)
            j++;
        if (rev < h->rev || (rev == h->rev && h->part == 0)) { /* done before */
            i = j;
            continue;
        }
        cleanup_json json_t *list = json_array();
        derive(w, &evs->ev[i], j - i, rev, list);
        size_t nd = json_array_size(list);
        size_t k = rev == h->rev ? (size_t)h->part : 0;
        for (; k < nd && rc == 0; k++) {
            json_array_append_new(pending, json_pack("{s:O,s:I}", "ev", json_array_get(list, k),
                                                     "rev", (json_int_t)rev));
            last_rev = rev;
            if (json_array_size(pending) == TXN_EVENTS)
                rc = flush(w, h, pending, rev, k + 1 < nd ? (int64_t)k + 1 : 0, err);
        }
        i = j;
    }
    if (rc == 0)
        rc = flush(w, h, pending, last_rev, 0, err);
    return rc;
}

/* Moves a head that lags far behind quiet history up to seen. */
static int catch_up(struct ctl_worker *w, struct head *h, int64_t seen, struct pier_err *err)
{
    if (h->part != 0 || seen - h->rev <= HEAD_LAG_MAX)
        return 0;
    struct store_txn *t = head_txn(h);
    int rc = head_commit(w->c, t, h, h->id, seen, 0, err);
    store_txn_free(t);
    return rc;
}

/* History was compacted before the recording got there: say what is lost
 * and go on from now. */
static int skip_gap(struct ctl_worker *w, struct head *h, struct pier_err *err)
{
    int64_t cur = 0;
    int rc = store_revision(w->c->s, &cur, err);
    if (rc < 0)
        return rc;
    log_warn("recorder", "events lost: the store's history was compacted",
             "from_rev=%" PRId64 " to_rev=%" PRId64 " last_id=%" PRId64, h->rev + (h->part ? 0 : 1),
             cur, h->id);
    struct store_txn *t = head_txn(h);
    rc = head_commit(w->c, t, h, h->id, cur, 0, err);
    store_txn_free(t);
    return rc;
}

/* Records while this controller leads. Returns 0 when it should start
 * over at once (leadership lost, head moved, gap skipped), < 0 after an
 * error worth a pause. */
static int lead(struct ctl_worker *w)
{
    struct pier_err err = {0};
    struct head h;
    int rc = head_read(w->c, &h, &err);
    if (rc < 0) {
        log_warn("recorder", "cannot read the event head", "reason=\"%s\"", err.msg);
        return rc;
    }
    const struct store_watch_opts o = {
        .prefix = true, .start_revision = h.part ? h.rev : h.rev + 1, .prev_kv = true};
    struct store_watch *wt = NULL;
    if ((rc = store_watch_open(w->c->s, KEYS_ROOT, &o, &wt, &err)) < 0) {
        log_warn("recorder", "cannot watch the store", "reason=\"%s\"", err.msg);
        return rc;
    }
    log_info("recorder", "recording", "from_rev=%" PRId64 " last_id=%" PRId64, o.start_revision,
             h.id);
    prune(w, h.id);
    while (!atomic_load(&w->stop) && leader_is(w->c->leader)) {
        struct store_events *evs = NULL;
        rc = store_watch_next(wt, WATCH_POLL_MS, &evs, &err);
        if (rc == 0) {
            rc = record(w, &h, evs, &err);
            store_events_free(evs);
            if (rc == 0)
                rc = catch_up(w, &h, store_watch_revision(wt) - 1, &err);
        } else if (rc == PIER_ETIMEOUT) {
            rc = catch_up(w, &h, store_watch_revision(wt) - 1, &err);
        } else if (rc == PIER_ECOMPACTED) {
            rc = skip_gap(w, &h, &err);
            if (rc == 0)
                break; /* a new watch from the new head */
        } else {
            log_warn("recorder", "store watch", "reason=\"%s\"", err.msg);
            continue; /* the watch reconnects by itself */
        }
        if (rc == PIER_ECONFLICT) {
            log_info("recorder", "another recorder moved the head: reading it again", "%s", "");
            rc = 0;
            break;
        }
        if (rc < 0) {
            log_warn("recorder", "cannot record events", "reason=\"%s\"", err.msg);
            break;
        }
    }
    store_watch_close(wt);
    return rc;
}

static void *rec_thread(void *arg)
{
    struct ctl_worker *w = arg;
    while (!atomic_load(&w->stop)) {
        if (!leader_is(w->c->leader)) {
            leader_wait(w->c->leader, false, WATCH_POLL_MS);
            continue;
        }
        if (lead(w) < 0) {
            for (int i = 0; i < 10 && !atomic_load(&w->stop); i++)
                usleep(100 * 1000);
        }
    }
    return NULL;
}

int ctl_recorder_start(struct ctl *c, struct ctl_worker **out, struct pier_err *err)
{
    struct ctl_worker *w = xcalloc(1, sizeof(*w));
    w->c = c;
    w->retain = RETAIN_DEFAULT;
    const char *env = getenv("PIER_EVENT_RETENTION");
    if (env && *env) {
        char *end = NULL;
        long long v = strtoll(env, &end, 10);
        if (*end || v < 10 || v > 1000000000LL) {
            free(w);
            return err_set(err, PIER_EINVAL,
                           "PIER_EVENT_RETENTION: %s is not a number of events from 10 to 10^9",
                           env);
        }
        w->retain = v;
    }
    /* Blocks of at most a tenth of what is kept. */
    w->block = 1;
    while (w->block * 10 <= w->retain / 10) {
        w->block *= 10;
        w->block_pow++;
    }
    if (pthread_create(&w->thread, NULL, rec_thread, w) != 0) {
        free(w);
        return err_set(err, PIER_EINTERNAL, "recorder: cannot start a thread");
    }
    *out = w;
    return 0;
}

void ctl_worker_stop(struct ctl_worker *w)
{
    if (!w)
        return;
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    free(w);
}
