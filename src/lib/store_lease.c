/* store_lease: leases and the lease keeper of the store client (see store.h). */
#include "lib/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/base64.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/store_int.h"

/* --- leases ---------------------------------------------------------- */

static int lease_call(struct store *s, const char *path, int64_t id, long timeout_ms, json_t **resp,
                      struct pier_err *err)
{
    cleanup_json json_t *req = json_object();
    jsonx_set_int64_str(req, "ID", id);
    return store_call(s, path, req, timeout_ms, false, resp, err);
}

int store_lease_grant_decode(const char *name, const json_t *resp, int64_t *id,
                             struct pier_err *err)
{
    const char *e = NULL;
    if (jsonx_get_str(resp, "error", &e, NULL) == 1 && *e)
        return err_set(err, PIER_EUNAVAIL, "%s: lease grant: %s", name, e);
    *id = 0;
    if (jsonx_get_int64(resp, "ID", id, NULL) != 1 || *id == 0)
        return err_set(err, PIER_EPROTO, "%s: lease grant answered no ID", name);
    return 0;
}

int store_lease_grant(struct store *s, int64_t ttl_s, int64_t *id, struct pier_err *err)
{
    cleanup_json json_t *req = json_object();
    jsonx_set_int64_str(req, "TTL", ttl_s);
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/lease/grant", req, 0, false, &resp, err);
    if (r < 0)
        return r;
    return store_lease_grant_decode(s->names[atomic_load(&s->cur) % s->n_eps], resp, id, err);
}

int store_lease_revoke(struct store *s, int64_t id, struct pier_err *err)
{
    cleanup_json json_t *resp = NULL;
    int r = lease_call(s, "/v3/lease/revoke", id, 0, &resp, err);
    if (r == PIER_ENOTFOUND)
        return err_set(err, r, "lease %" PRId64 " not found", id);
    return r;
}

int store_lease_keepalive_decode(const json_t *resp, int64_t id, int64_t *ttl_s,
                                 struct pier_err *err)
{
    int64_t ttl = 0; /* an expired lease answers without a TTL */
    if (jsonx_get_int64(resp, "TTL", &ttl, NULL) < 0)
        return err_set(err, PIER_EPROTO, "lease %" PRId64 ": unreadable keepalive answer", id);
    if (ttl <= 0)
        return err_set(err, PIER_ENOTFOUND, "lease %" PRId64 " has expired", id);
    if (ttl_s)
        *ttl_s = ttl;
    return 0;
}

/* The keeper passes its own timeout, shorter than the lease's TTL. */
static int keepalive(struct store *s, int64_t id, long timeout_ms, int64_t *ttl_s,
                     struct pier_err *err)
{
    cleanup_json json_t *resp = NULL;
    int r = lease_call(s, "/v3/lease/keepalive", id, timeout_ms, &resp, err);
    if (r < 0)
        return r;
    return store_lease_keepalive_decode(resp, id, ttl_s, err);
}

int store_lease_keepalive(struct store *s, int64_t id, int64_t *ttl_s, struct pier_err *err)
{
    return keepalive(s, id, 0, ttl_s, err);
}

int store_lease_info_decode(const char *name, const json_t *resp, int64_t id,
                            struct store_lease_info **out, struct pier_err *err)
{
    *out = NULL;
    struct store_lease_info *li = xcalloc(1, sizeof(*li));
    li->id = id;
    jsonx_get_int64(resp, "TTL", &li->ttl, NULL); /* omitted: 0 s left; gone: -1 */
    jsonx_get_int64(resp, "grantedTTL", &li->granted_ttl, NULL);
    jsonx_get_int64(resp, "granted_ttl", &li->granted_ttl, NULL);
    if (li->ttl < 0) {
        store_lease_info_free(li);
        return err_set(err, PIER_ENOTFOUND, "lease %" PRId64 " not found", id);
    }
    json_t *keys = json_object_get(resp, "keys"); /* borrowed */
    size_t n = json_is_array(keys) ? json_array_size(keys) : 0;
    li->keys = n ? xcalloc(n, sizeof(char *)) : NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *k = json_array_get(keys, i);
        struct buf b = BUF_INIT;
        if (!json_is_string(k) ||
            base64_decode(&b, json_string_value(k), json_string_length(k)) < 0) {
            buf_free(&b);
            store_lease_info_free(li);
            return err_set(err, PIER_EPROTO, "%s: lease key is not base64", name);
        }
        li->keys[li->n_keys++] = buf_detach(&b);
    }
    *out = li;
    return 0;
}

int store_lease_timetolive(struct store *s, int64_t id, bool with_keys,
                           struct store_lease_info **out, struct pier_err *err)
{
    *out = NULL;
    cleanup_json json_t *req = json_object();
    jsonx_set_int64_str(req, "ID", id);
    if (with_keys)
        json_object_set_new(req, "keys", json_true());
    cleanup_json json_t *resp = NULL;
    int r = store_call(s, "/v3/lease/timetolive", req, 0, true, &resp, err);
    if (r < 0)
        return r;
    return store_lease_info_decode(s->names[atomic_load(&s->cur) % s->n_eps], resp, id, out, err);
}

/* --- the lease keeper ------------------------------------------------ */

/* mu guards stop (and the condition variable waits on it); lost is atomic
 * so store_keeper_lost needs no lock. */
struct store_keeper {
    struct store *s;
    int64_t id;
    int64_t ttl_ms;
    store_lease_lost_fn lost_fn;
    void *ud;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* on CLOCK_MONOTONIC (clock_deadline_in) */
    bool stop;
    atomic_bool lost;
};

/* Waits ms or until stopped; returns whether to stop. */
static bool keeper_sleep(struct store_keeper *k, int64_t ms)
{
    struct timespec ts = clock_deadline_in(ms);
    pthread_mutex_lock(&k->mu);
    while (!k->stop && pthread_cond_timedwait(&k->cond, &k->mu, &ts) != ETIMEDOUT)
        ;
    bool stop = k->stop;
    pthread_mutex_unlock(&k->mu);
    return stop;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* The renewal loop, and its one promise (store.h): lost is reported no
 * later than the server could have expired the lease. A renewal sent at
 * time S that succeeds means the server renewed the lease at S or later,
 * so it lives at least until S + TTL: lost_at = S + TTL - margin, the
 * margin covering the report's own delay and scheduling. (Measuring from
 * when the answer *arrived* would be late by the whole round trip, up to a
 * call's timeout.) Every sleep ends by lost_at and every call's timeout by
 * lost_at, so a hung server cannot hold the keeper past it. Renewals go
 * every TTL/3; a failed one is retried sooner (100 ms, doubling up to
 * TTL/3), on the next endpoint if the store moved on. */
static void *keeper_main(void *arg)
{
    struct store_keeper *k = arg;
    int64_t interval = k->ttl_ms / 3 > 50 ? k->ttl_ms / 3 : 50;
    int64_t margin = k->ttl_ms / 10 > 200 ? k->ttl_ms / 10 : 200;
    if (margin > k->ttl_ms / 2)
        margin = k->ttl_ms / 2;
    int64_t lost_at = clock_now_ms() + k->ttl_ms - margin;
    int64_t wait = 0, retry = 100;
    struct pier_err e = {0};
    bool lost = false;
    while (!keeper_sleep(k, min64(wait, lost_at - clock_now_ms()))) {
        int64_t sent = clock_now_ms();
        if (sent >= lost_at) {
            if (e.code == 0)
                err_set(&e, PIER_ETIMEOUT, "no renewal answered in time");
            err_wrap(&e, PIER_ETIMEOUT, "lease %" PRId64 " not renewed within its TTL", k->id);
            lost = true;
            break;
        }
        int64_t ttl_s = 0;
        err_clear(&e);
        int r = keepalive(k->s, k->id, (long)min64(interval, lost_at - sent), &ttl_s, &e);
        if (r == 0) {
            int64_t ttl_ms = ttl_s < k->ttl_ms / 1000 ? ttl_s * 1000 : k->ttl_ms;
            lost_at = sent + ttl_ms - margin;
            wait = interval;
            retry = 100;
            continue;
        }
        if (r == PIER_ENOTFOUND) {
            lost = true;
            break;
        }
        log_warn("store", "lease renewal failed", "lease=%" PRId64 " err=\"%s\"", k->id, e.msg);
        wait = retry;
        retry = retry * 2 < interval ? retry * 2 : interval;
    }
    if (!lost) /* stopped */
        return NULL;
    atomic_store(&k->lost, true);
    log_warn("store", "lease lost", "lease=%" PRId64 " err=\"%s\"", k->id, e.msg);
    if (k->lost_fn)
        k->lost_fn(k->id, &e, k->ud);
    return NULL;
}

int store_keeper_start(struct store *s, int64_t id, int64_t ttl_s, store_lease_lost_fn lost,
                       void *ud, struct store_keeper **out, struct pier_err *err)
{
    if (ttl_s <= 0)
        return err_set(err, PIER_EINVAL, "lease %" PRId64 ": TTL must be positive", id);
    struct store_keeper *k = xcalloc(1, sizeof(*k));
    k->s = s;
    k->id = id;
    k->ttl_ms = ttl_s * 1000;
    k->lost_fn = lost;
    k->ud = ud;
    atomic_init(&k->lost, false);
    pthread_mutex_init(&k->mu, NULL);
    clock_cond_init(&k->cond);
    int r = pthread_create(&k->thread, NULL, keeper_main, k);
    if (r != 0) {
        pthread_cond_destroy(&k->cond);
        pthread_mutex_destroy(&k->mu);
        free(k);
        return err_set(err, -r, "lease %" PRId64 ": cannot start keeper: %s", id, strerror(r));
    }
    *out = k;
    return 0;
}

bool store_keeper_lost(struct store_keeper *k)
{
    return atomic_load(&k->lost);
}

void store_keeper_stop(struct store_keeper *k, bool revoke)
{
    if (!k)
        return;
    pthread_mutex_lock(&k->mu);
    k->stop = true;
    pthread_cond_signal(&k->cond);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    if (revoke && !atomic_load(&k->lost)) {
        struct pier_err e = {0};
        if (store_lease_revoke(k->s, k->id, &e) < 0)
            log_warn("store", "lease revoke failed", "lease=%" PRId64 " err=\"%s\"", k->id, e.msg);
    }
    pthread_cond_destroy(&k->cond);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

void store_lease_info_free(struct store_lease_info *li)
{
    if (!li)
        return;
    for (size_t i = 0; i < li->n_keys; i++)
        free(li->keys[i]);
    free(li->keys);
    free(li);
}
