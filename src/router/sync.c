/* sync: the router's table kept in step with the store (sync.h).
 *
 * Two threads, one per prefix (routes, discovery), each doing the same:
 * list the prefix (paged, at one revision), load it into the builder, then
 * watch from the listed revision + 1. Every batch of events is applied
 * together with all the events the watch already has (polled with a zero
 * timeout), then one table is built and published: a burst of changes
 * makes one table, and nothing sleeps between an event and its table.
 *
 * The builder, the published table and the publishing itself are under
 * one mutex, so tables go out in the order they were built. A watch that
 * fails keeps retrying on its own (the store client reconnects and resumes
 * from the next revision) while the last table stays in use; a compacted
 * watch lists again. Waits are at most POLL_MS, so a stop is seen fast. */
#include "router/sync.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/keys.h"
#include "lib/log.h"

#define COMP "router"
#define POLL_MS 500      /* the longest wait before a stop is noticed */
#define PAGE 1000        /* keys per list request */
#define BACKOFF_MAX 1000 /* ms between attempts while the store is away */

enum { ROUTES, SERVICES };

struct rsync;

struct syncer {
    struct rsync *y;
    int which; /* ROUTES or SERVICES */
    const char *prefix;
    pthread_t thread;
    bool started;
    bool away; /* the store is unreachable (said once in the log) */
};

struct rsync {
    struct store *s;
    struct rtable_builder *b;
    void (*publish)(void *ud, struct rtable *t);
    void *ud;
    /* mu guards b, listed, rev, latest and ready, and is held while a table
     * is built and published. */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* ready, or stop (CLOCK_MONOTONIC) */
    bool listed[2];
    int64_t rev[2]; /* the revision each prefix has been read to */
    struct rtable *latest;
    bool ready;
    atomic_bool stop;
    struct syncer th[2];
};

static bool stopping(struct rsync *y)
{
    return atomic_load(&y->stop);
}

/* Waits ms, or less when stopping. */
static void nap(struct rsync *y, int ms)
{
    struct timespec ts = clock_deadline_in(ms);
    pthread_mutex_lock(&y->mu);
    if (!stopping(y))
        pthread_cond_timedwait(&y->cond, &y->mu, &ts);
    pthread_mutex_unlock(&y->mu);
}

static void went_away(struct syncer *t, const struct pier_err *err)
{
    if (t->away || stopping(t->y))
        return;
    t->away = true;
    log_warn(COMP, "store unreachable; keeping the last table", "prefix=%s reason=\"%s\"",
             t->prefix, err->msg);
}

static void came_back(struct syncer *t)
{
    if (!t->away)
        return;
    t->away = false;
    log_info(COMP, "store reachable again", "prefix=%s", t->prefix);
}

/* Feeds one kv (a put when value is non-NULL, else a delete) to the
 * builder. Keys are <prefix><id> for routes and <prefix><service>/<id>
 * for instances; others are not ours. */
static void apply_kv(struct rsync *y, int which, const struct store_kv *kv, bool put)
{
    size_t pl = strlen(y->th[which].prefix);
    if (kv->key_len <= pl)
        return;
    const char *rest = kv->key + pl;
    const char *value = put ? (kv->value ? kv->value : "") : NULL;
    if (which == ROUTES) {
        if (!strchr(rest, '/'))
            rtable_builder_route(y->b, rest, value, kv->value_len);
        return;
    }
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || !slash[1])
        return;
    char service[256];
    size_t sl = (size_t)(slash - rest);
    if (sl >= sizeof(service))
        return;
    memcpy(service, rest, sl);
    service[sl] = '\0';
    rtable_builder_instance(y->b, service, slash + 1, value, kv->value_len, kv->create_revision);
}

/* Builds and publishes a table once both prefixes are in. Under mu. */
static void publish_locked(struct rsync *y)
{
    if (!y->listed[ROUTES] || !y->listed[SERVICES])
        return;
    /* Each prefix is read to its own revision; the table says the later. */
    int64_t rev = y->rev[ROUTES] > y->rev[SERVICES] ? y->rev[ROUTES] : y->rev[SERVICES];
    struct rtable *t = rtable_build(y->b, rev);
    struct rtable *old = y->latest;
    rtable_ref(t);
    y->latest = t;
    y->publish(y->ud, t); /* takes the build's reference */
    rtable_unref(old);
    if (!y->ready) {
        y->ready = true;
        pthread_cond_broadcast(&y->cond);
    }
}

static void ranges_free(struct store_range **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_range_free(v[i]);
    free(v);
}

/* Lists the prefix in pages at one revision and loads it into the builder
 * in place of what it had. *rev gets the revision read at. */
static int relist(struct syncer *t, int64_t *rev, struct pier_err *err)
{
    struct rsync *y = t->y;
    struct store_range **pages = NULL;
    size_t n = 0;
    struct store_list_opts o = {.limit = PAGE};
    for (;;) {
        struct store_range *r = NULL;
        int rc = store_list(y->s, t->prefix, &o, &r, err);
        if (rc < 0) {
            ranges_free(pages, n);
            return rc;
        }
        pages = xrealloc(pages, (n + 1) * sizeof(*pages));
        pages[n++] = r;
        if (!r->more || r->n == 0)
            break;
        o.revision = pages[0]->revision;
        o.after = r->kvs[r->n - 1].key;
    }
    *rev = pages[0]->revision;
    size_t keys = 0;
    pthread_mutex_lock(&y->mu);
    if (t->which == ROUTES)
        rtable_builder_clear_routes(y->b);
    else
        rtable_builder_clear_instances(y->b);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < pages[i]->n; k++, keys++)
            apply_kv(y, t->which, &pages[i]->kvs[k], true);
    y->listed[t->which] = true;
    y->rev[t->which] = *rev;
    publish_locked(y);
    pthread_mutex_unlock(&y->mu);
    ranges_free(pages, n);
    log_info(COMP, "store listed", "prefix=%s keys=%zu revision=%" PRId64, t->prefix, keys, *rev);
    return 0;
}

/* Applies a batch of events and publishes the table it makes. */
static void apply_batch(struct syncer *t, struct store_events **evs, size_t n)
{
    struct rsync *y = t->y;
    pthread_mutex_lock(&y->mu);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < evs[i]->n; k++) {
            const struct store_event *e = &evs[i]->ev[k];
            apply_kv(y, t->which, &e->kv, e->type == STORE_EVENT_PUT);
        }
        if (evs[i]->revision > y->rev[t->which])
            y->rev[t->which] = evs[i]->revision;
    }
    publish_locked(y);
    pthread_mutex_unlock(&y->mu);
}

/* Follows the watch until a stop (returns 0), a compaction (1: list again
 * now) or a watch the store refuses for good (-1: list again later). */
static int follow(struct syncer *t, struct store_watch *w)
{
    int ret = 0;
    struct store_events **evs = NULL;
    size_t cap = 0;
    while (!stopping(t->y)) {
        struct pier_err err = {0};
        struct store_events *ev = NULL;
        int rc = store_watch_next(w, POLL_MS, &ev, &err);
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc == PIER_ECOMPACTED || rc == PIER_EINVAL) {
            log_warn(COMP, "watch ended; listing again", "prefix=%s reason=\"%s\"", t->prefix,
                     err.msg);
            ret = rc == PIER_ECOMPACTED ? 1 : -1;
            break;
        }
        if (rc < 0) {
            went_away(t, &err);
            continue; /* the watch reconnects by itself, bounded by POLL_MS */
        }
        came_back(t);
        size_t n = 0;
        do {
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                evs = xrealloc(evs, cap * sizeof(*evs));
            }
            evs[n++] = ev;
        } while (store_watch_next(w, 0, &ev, &err) == 0);
        apply_batch(t, evs, n);
        for (size_t i = 0; i < n; i++)
            store_events_free(evs[i]);
    }
    free(evs);
    return ret;
}

static void *run(void *arg)
{
    struct syncer *t = arg;
    struct rsync *y = t->y;
    int backoff = 0;
    while (!stopping(y)) {
        if (backoff)
            nap(y, backoff);
        if (stopping(y))
            break;
        backoff = backoff ? (backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2) : 50;
        struct pier_err err = {0};
        int64_t rev = 0;
        int rc = relist(t, &rev, &err);
        if (rc == PIER_ECOMPACTED) { /* compacted between two pages */
            backoff = 0;
            continue;
        }
        if (rc < 0) {
            went_away(t, &err);
            continue;
        }
        struct store_watch *w = NULL;
        struct store_watch_opts o = {.prefix = true, .start_revision = rev + 1};
        if (store_watch_open(y->s, t->prefix, &o, &w, &err) < 0) {
            went_away(t, &err);
            continue;
        }
        came_back(t);
        if (follow(t, w) >= 0)
            backoff = 0;
        store_watch_close(w);
    }
    return NULL;
}

int rsync_start(struct store *s, struct rtable_builder *b,
                void (*publish)(void *ud, struct rtable *t), void *ud, struct rsync **out,
                struct pier_err *err)
{
    *out = NULL;
    struct rsync *y = xcalloc(1, sizeof(*y));
    y->s = s;
    y->b = b;
    y->publish = publish;
    y->ud = ud;
    pthread_mutex_init(&y->mu, NULL);
    clock_cond_init(&y->cond);
    atomic_init(&y->stop, false);
    static const char *const prefixes[2] = {KEYS_ROUTES, DISCOVER_PREFIX};
    static const char *const names[2] = {"rsync-routes", "rsync-services"};
    for (int i = 0; i < 2; i++) {
        y->th[i] = (struct syncer){.y = y, .which = i, .prefix = prefixes[i]};
        int rc = pthread_create(&y->th[i].thread, NULL, run, &y->th[i]);
        if (rc != 0) {
            rsync_stop(y);
            return err_set(err, -rc, "router sync: cannot start a thread: %s", strerror(rc));
        }
        y->th[i].started = true;
        pthread_setname_np(y->th[i].thread, names[i]);
    }
    *out = y;
    return 0;
}

int rsync_wait_ready(struct rsync *y, int timeout_ms)
{
    struct timespec ts = clock_deadline_in(timeout_ms);
    pthread_mutex_lock(&y->mu);
    while (!y->ready && !stopping(y))
        if (pthread_cond_timedwait(&y->cond, &y->mu, &ts) != 0)
            break;
    bool ready = y->ready;
    pthread_mutex_unlock(&y->mu);
    return ready ? 0 : PIER_ETIMEOUT;
}

void rsync_republish(struct rsync *y)
{
    pthread_mutex_lock(&y->mu);
    if (y->latest) {
        rtable_ref(y->latest);
        y->publish(y->ud, y->latest);
    }
    pthread_mutex_unlock(&y->mu);
}

struct rtable *rsync_table(struct rsync *y)
{
    pthread_mutex_lock(&y->mu);
    struct rtable *t = y->latest;
    if (t)
        rtable_ref(t);
    pthread_mutex_unlock(&y->mu);
    return t;
}

void rsync_stop(struct rsync *y)
{
    if (!y)
        return;
    pthread_mutex_lock(&y->mu);
    atomic_store(&y->stop, true);
    pthread_cond_broadcast(&y->cond);
    pthread_mutex_unlock(&y->mu);
    for (int i = 0; i < 2; i++)
        if (y->th[i].started)
            pthread_join(y->th[i].thread, NULL);
    rtable_unref(y->latest);
    pthread_cond_destroy(&y->cond);
    pthread_mutex_destroy(&y->mu);
    free(y);
}
