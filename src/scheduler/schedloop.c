/* schedloop: the loop of sched.h.
 *
 * Timing: a pass runs when the view changed (at most every MIN_GAP_MS, so
 * a burst of agent writes is taken in by one pass), when a backoff ends,
 * and every IDLE_PASS_MS anyway (a host that was too full may have room
 * now without an event that says so to this view, such as a GC). A pass
 * that lost a race runs again after MIN_GAP_MS, by which time the watch
 * has usually brought what won. */
#include "scheduler/schedloop.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/keys.h"
#include "lib/log.h"

#define COMP "scheduler"
#define MIN_GAP_MS 50
#define IDLE_PASS_MS 5000
/* The longest wait between looks at leadership and the stop flag. */
#define POLL_MS 250

struct schedloop {
    struct store *s;
    struct leader *l;
    struct schedloop_opts o;
    pthread_t thread;
    pthread_mutex_t mu; /* guards status and stopping */
    json_t *status;
    bool stopping;
    /* owned by the thread: */
    struct cluster *c;
    struct records *rec;
    struct store_watch *w;
    struct reconcile *r;
};

static bool stopping(struct schedloop *sc)
{
    pthread_mutex_lock(&sc->mu);
    bool s = sc->stopping;
    pthread_mutex_unlock(&sc->mu);
    return s;
}

static bool leading(struct schedloop *sc)
{
    return sc->o.always_lead || leader_is(sc->l);
}

static void set_status(struct schedloop *sc, json_t *status)
{
    pthread_mutex_lock(&sc->mu);
    json_decref(sc->status);
    sc->status = status;
    pthread_mutex_unlock(&sc->mu);
}

static void drop_view(struct schedloop *sc)
{
    store_watch_close(sc->w);
    records_free(sc->rec);
    cluster_free(sc->c);
    sc->w = NULL;
    sc->rec = NULL;
    sc->c = NULL;
    set_status(sc, NULL);
}

static int load_view(struct schedloop *sc, struct pier_err *err)
{
    int rc = cluster_load(sc->s, &sc->c, err);
    if (rc == 0)
        rc = records_load(sc->s, cluster_revision(sc->c), &sc->rec, err);
    if (rc == 0) {
        const struct store_watch_opts wo = {.prefix = true,
                                            .start_revision = cluster_revision(sc->c) + 1};
        rc = store_watch_open(sc->s, KEYS_ROOT, &wo, &sc->w, err);
    }
    if (rc < 0) {
        drop_view(sc);
        return rc;
    }
    reconcile_reset(sc->r);
    log_info(COMP, "leading: view loaded", "revision=%lld hosts=%zu jobs=%zu",
             (long long)cluster_revision(sc->c), cluster_host_count(sc->c),
             cluster_job_count(sc->c));
    return 0;
}

/* Sleeps up to ms, in slices, while not stopping. */
static void nap(struct schedloop *sc, int ms)
{
    for (int left = ms; left > 0 && !stopping(sc); left -= POLL_MS)
        usleep((useconds_t)(left < POLL_MS ? left : POLL_MS) * 1000);
}

/* One pass; returns the monotonic time one is due again (-1: none). */
static int64_t pass(struct schedloop *sc, bool *again)
{
    struct pier_err err = {0};
    int64_t wake = -1;
    int rc = reconcile_pass(sc->r, sc->c, sc->rec, sc->s, &wake, &err);
    *again = rc < 0;
    if (rc < 0 && rc != PIER_ECONFLICT)
        log_warn(COMP, "pass failed; trying again", "reason=\"%s\"", err.msg);
    else if (rc == PIER_ECONFLICT)
        log_debug(COMP, "pass lost a race; trying again", "reason=\"%s\"", err.msg);
    set_status(sc, reconcile_status(sc->r));
    return wake >= 0 ? clock_now_ms() + wake : -1;
}

static int64_t min_time(int64_t a, int64_t b)
{
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* Takes in whatever the watch has, waiting up to timeout_ms for the first.
 * Returns whether something came; a compacted watch drops the view. */
static bool take_events(struct schedloop *sc, int timeout_ms, int64_t *warned)
{
    bool got = false;
    for (int i = 0; i < 1000; i++) {
        struct store_events *ev = NULL;
        struct pier_err err = {0};
        int rc = store_watch_next(sc->w, got ? 0 : timeout_ms, &ev, &err);
        if (rc == 0) {
            cluster_apply(sc->c, ev);
            records_apply(sc->rec, ev);
            store_events_free(ev);
            got = true;
            continue;
        }
        if (rc == PIER_ECOMPACTED) {
            log_warn(COMP, "watch compacted; loading the view again", "reason=\"%s\"", err.msg);
            drop_view(sc);
        } else if (rc != PIER_ETIMEOUT && clock_now_ms() - *warned > 10000) {
            log_warn(COMP, "waiting for the store", "reason=\"%s\"", err.msg);
            *warned = clock_now_ms();
        }
        break;
    }
    return got;
}

static void *run(void *arg)
{
    struct schedloop *sc = arg;
    bool dirty = false, again = false;
    int64_t due = -1, last = 0, warned = 0;
    while (!stopping(sc)) {
        if (!leading(sc)) {
            if (sc->c) {
                log_info(COMP, "no longer leading: view dropped", "%s", "");
                drop_view(sc);
            }
            if (sc->l)
                leader_wait(sc->l, false, POLL_MS);
            continue;
        }
        if (!sc->c) {
            struct pier_err err = {0};
            if (load_view(sc, &err) < 0) {
                if (clock_now_ms() - warned > 10000) {
                    log_warn(COMP, "cannot load the view; retrying", "reason=\"%s\"", err.msg);
                    warned = clock_now_ms();
                }
                nap(sc, 500);
                continue;
            }
            dirty = true;
            last = 0;
        }
        int64_t now = clock_now_ms();
        int64_t next = last + IDLE_PASS_MS;
        if (dirty || again)
            next = last + MIN_GAP_MS;
        next = min_time(next, due);
        if (now >= next) {
            due = pass(sc, &again);
            last = clock_now_ms();
            dirty = false;
            continue;
        }
        int64_t wait = next - now;
        if (take_events(sc, (int)(wait < POLL_MS ? wait : POLL_MS), &warned))
            dirty = true;
    }
    drop_view(sc);
    return NULL;
}

int schedloop_start(struct store *s, struct leader *l, const struct schedloop_opts *o,
                    struct schedloop **out, struct pier_err *err)
{
    if (!l && !o->always_lead)
        return err_set(err, PIER_EINVAL, "scheduler: needs a leader election");
    struct schedloop *sc = xcalloc(1, sizeof(*sc));
    sc->s = s;
    sc->l = l;
    sc->o = *o;
    sc->r = reconcile_new(&o->reconcile);
    pthread_mutex_init(&sc->mu, NULL);
    if (pthread_create(&sc->thread, NULL, run, sc) != 0) {
        reconcile_free(sc->r);
        pthread_mutex_destroy(&sc->mu);
        free(sc);
        return err_set(err, PIER_EINTERNAL, "scheduler: cannot start a thread");
    }
    *out = sc;
    return 0;
}

json_t *schedloop_status(struct schedloop *sc)
{
    bool lead = leading(sc);
    pthread_mutex_lock(&sc->mu);
    json_t *st = sc->status && lead ? json_deep_copy(sc->status) : json_object();
    pthread_mutex_unlock(&sc->mu);
    json_object_set_new(st, "leader", json_boolean(lead));
    if (sc->l) {
        char *addr = leader_addr(sc->l);
        json_object_set_new(st, "leader_addr", addr ? json_string(addr) : json_null());
        free(addr);
    }
    return st;
}

void schedloop_stop(struct schedloop *sc)
{
    if (!sc)
        return;
    pthread_mutex_lock(&sc->mu);
    sc->stopping = true;
    pthread_mutex_unlock(&sc->mu);
    pthread_join(sc->thread, NULL);
    reconcile_free(sc->r);
    json_decref(sc->status);
    pthread_mutex_destroy(&sc->mu);
    free(sc);
}
