/* The conformance tests of watches, leases and compaction (see conformance.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conformance.h"
#include "lib/store.h"

/* --- watches --------------------------------------------------------- */

void test_watch_replay(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "wr/a");
    K(b, "wr/b");
    K(p, "wr/");
    int64_t r1 = put(a, "1");
    put(b, "2");
    put(a, "3");
    int64_t r4 = 0;
    assert_int_equal(store_delete(st, b, NULL, &r4, &err), 0);
    struct store_watch *w = NULL;
    struct store_watch_opts o = {.prefix = true, .start_revision = r1};
    assert_int_equal(store_watch_open(st, p, &o, &w, &err), 0);
    struct store_event ev[8];
    assert_int_equal(collect(w, ev, 4, 5000), 4);
    assert_string_equal(ev[0].kv.key, a);
    assert_int_equal(ev[0].type, STORE_EVENT_PUT);
    assert_int_equal(ev[0].kv.mod_revision, r1);
    assert_string_equal(ev[0].kv.value, "1");
    assert_string_equal(ev[1].kv.value, "2");
    assert_int_equal(ev[2].kv.version, 2);
    assert_int_equal(ev[3].type, STORE_EVENT_DELETE);
    assert_string_equal(ev[3].kv.key, b);
    assert_int_equal(ev[3].kv.mod_revision, r4);
    for (int i = 1; i < 4; i++)
        assert_true(ev[i].kv.mod_revision > ev[i - 1].kv.mod_revision);
    release(ev, 4);
    assert_int_equal(store_watch_revision(w), r4 + 1);
    /* then live events; nothing outside the prefix */
    K(out, "wr0");
    put(out, "x");
    int64_t r5 = put(a, "5");
    assert_int_equal(collect(w, ev, 1, 5000), 1);
    assert_int_equal(ev[0].kv.mod_revision, r5);
    release(ev, 1);
    assert_no_event(w, 200);
    store_watch_close(w);
}

void test_watch_key_prev_kv(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "wp/a");
    K(a2, "wp/ab"); /* shares a's bytes as a prefix: a key watch must not see it */
    put(a, "0");
    struct store_watch *w = NULL;
    struct store_watch_opts o = {.prev_kv = true};
    assert_int_equal(store_watch_open(st, a, &o, &w, &err), 0);
    assert_no_event(w, 100); /* "from now": the earlier put is not replayed */
    put(a2, "other");
    put(a, "1");
    put(a, "2");
    assert_int_equal(store_delete(st, a, NULL, NULL, &err), 0);
    size_t n = 0;
    const char *prev[] = {"0", "1", "2"};
    int64_t deadline = now_ms() + 5000;
    while (n < 3 && now_ms() < deadline) {
        struct store_events *evs = NULL;
        int r = store_watch_next(w, 1000, &evs, &err);
        if (r == PIER_ETIMEOUT)
            continue;
        assert_int_equal(r, 0);
        for (size_t i = 0; i < evs->n; i++, n++) {
            assert_string_equal(evs->ev[i].kv.key, a);
            assert_non_null(evs->ev[i].prev);
            assert_string_equal(evs->ev[i].prev->value, prev[n]);
            assert_int_equal(evs->ev[i].type, n == 2 ? STORE_EVENT_DELETE : STORE_EVENT_PUT);
        }
        store_events_free(evs);
    }
    assert_int_equal(n, 3);
    store_watch_close(w);
}

/* Events written while the watch's connection is down all arrive, once. */
void test_watch_resume(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(p, "wres/");
    char name[64];
    struct store_watch *w = NULL;
    struct store_watch_opts o = {.prefix = true};
    assert_int_equal(store_watch_open(st, p, &o, &w, &err), 0);
    int64_t revs[40];
    size_t nrev = 0;
    for (int round = 0; round < 4; round++) {
        /* a write the watch has seen, one it may hold unread, then a drop */
        snprintf(name, sizeof(name), "wres/%d-seen", round);
        K(k0, name);
        revs[nrev++] = put(k0, "seen");
        struct store_event ev[16];
        assert_int_equal(collect(w, ev, 1, 5000), 1);
        assert_int_equal(ev[0].kv.mod_revision, revs[nrev - 1]);
        release(ev, 1);
        snprintf(name, sizeof(name), "wres/%d-inflight", round);
        K(k1, name);
        revs[nrev++] = put(k1, "inflight");
        if (round % 2)
            sleep_ms(50); /* let it reach the client's socket */
        store_watch_drop_connection(w);
        for (int i = 0; i < 5; i++) {
            snprintf(name, sizeof(name), "wres/%d-down-%d", round, i);
            K(k2, name);
            revs[nrev++] = put(k2, "down");
        }
        assert_int_equal(collect(w, ev, 6, 5000), 6);
        for (size_t i = 0; i < 6; i++)
            assert_int_equal(ev[i].kv.mod_revision, revs[nrev - 6 + i]);
        release(ev, 6);
        assert_no_event(w, 150);
    }
    store_watch_close(w);
}

void test_watch_timeout(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "wt/a");
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(st, a, NULL, &w, &err), 0);
    int64_t t0 = now_ms();
    struct store_events *evs = (struct store_events *)1;
    assert_int_equal(store_watch_next(w, 200, &evs, &err), PIER_ETIMEOUT);
    assert_null(evs);
    int64_t took = now_ms() - t0;
    assert_true(took >= 190 && took < 1500);
    assert_int_equal(store_watch_next(w, 0, &evs, &err), PIER_ETIMEOUT);
    store_watch_close(w);
}

/* --- leases ---------------------------------------------------------- */

void test_lease_expiry(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "lease/exp");
    int64_t id = 0;
    int64_t tg = now_ms();
    assert_int_equal(store_lease_grant(st, 1, &id, &err), 0);
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(st, a, NULL, &w, &err), 0);
    int64_t t0 = now_ms();
    if (store_put(st, a, "x", 1, id, NULL, &err) < 0)
        fail_msg("put with lease: %s (%" PRId64 " ms after the grant)", err.msg, now_ms() - tg);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    assert_int_equal(kv->lease, id);
    store_kv_free(kv);
    struct store_lease_info *li = NULL;
    assert_int_equal(store_lease_timetolive(st, id, true, &li, &err), 0);
    assert_int_equal(li->granted_ttl, 1);
    assert_true(li->ttl >= 0 && li->ttl <= 1);
    assert_int_equal(li->n_keys, 1);
    assert_string_equal(li->keys[0], a);
    store_lease_info_free(li);

    struct store_event ev[4];
    assert_int_equal(collect(w, ev, 2, 4000), 2);
    int64_t took = now_ms() - t0;
    assert_int_equal(ev[0].type, STORE_EVENT_PUT);
    assert_int_equal(ev[1].type, STORE_EVENT_DELETE);
    release(ev, 2);
    if (took > 3000) /* TTL 1 s; etcd checks expiry every 500 ms */
        fail_msg("the lease's key was deleted %" PRId64 " ms after the put", took);
    assert_int_equal(store_get(st, a, &kv, &err), PIER_ENOTFOUND);
    assert_int_equal(store_lease_timetolive(st, id, false, &li, &err), PIER_ENOTFOUND);
    assert_int_equal(store_lease_keepalive(st, id, NULL, &err), PIER_ENOTFOUND);
    assert_int_equal(store_put(st, a, "y", 1, id, NULL, &err), PIER_ENOTFOUND);
    store_watch_close(w);
}

void test_lease_revoke(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "lrev/a");
    K(b, "lrev/b");
    K(p, "lrev/");
    int64_t id = 0, ttl = 0;
    assert_int_equal(store_lease_grant(st, 30, &id, &err), 0);
    assert_int_equal(store_lease_keepalive(st, id, &ttl, &err), 0);
    assert_int_equal(ttl, 30);
    assert_int_equal(store_put(st, a, "1", 1, id, NULL, &err), 0);
    assert_int_equal(store_put(st, b, "2", 1, id, NULL, &err), 0);
    struct store_watch *w = NULL;
    struct store_watch_opts o = {.prefix = true};
    assert_int_equal(store_watch_open(st, p, &o, &w, &err), 0);
    assert_int_equal(store_lease_revoke(st, id, &err), 0);
    struct store_event ev[4];
    assert_int_equal(collect(w, ev, 2, 3000), 2);
    assert_int_equal(ev[0].type, STORE_EVENT_DELETE);
    assert_int_equal(ev[1].type, STORE_EVENT_DELETE);
    assert_int_equal(ev[0].kv.mod_revision, ev[1].kv.mod_revision); /* one revision */
    release(ev, 2);
    struct store_range *r = NULL;
    assert_int_equal(store_list(st, p, NULL, &r, &err), 0);
    assert_int_equal(r->n, 0);
    store_range_free(r);
    assert_int_equal(store_lease_revoke(st, id, &err), PIER_ENOTFOUND);
    store_watch_close(w);
}

struct lost {
    pthread_mutex_t mu;
    int calls;
    int code;
};

static void on_lost(int64_t id, const struct pier_err *why, void *ud)
{
    (void)id;
    struct lost *l = ud;
    pthread_mutex_lock(&l->mu);
    l->calls++;
    l->code = why->code;
    pthread_mutex_unlock(&l->mu);
}

void test_lease_keeper(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "keep/a");
    int64_t id = 0;
    assert_int_equal(store_lease_grant(st, 1, &id, &err), 0);
    assert_int_equal(store_put(st, a, "alive", 5, id, NULL, &err), 0);
    struct lost lost = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
    struct store_keeper *k = NULL;
    assert_int_equal(store_keeper_start(st, id, 1, on_lost, &lost, &k, &err), 0);
    sleep_ms(2500); /* more than two TTLs */
    assert_false(store_keeper_lost(k));
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    store_kv_free(kv);
    store_keeper_stop(k, true);
    assert_int_equal(store_get(st, a, &kv, &err), PIER_ENOTFOUND);
    assert_int_equal(lost.calls, 0);

    /* a lease revoked behind the keeper's back is reported lost, once */
    assert_int_equal(store_lease_grant(st, 1, &id, &err), 0);
    assert_int_equal(store_keeper_start(st, id, 1, on_lost, &lost, &k, &err), 0);
    assert_int_equal(store_lease_revoke(st, id, &err), 0);
    int64_t deadline = now_ms() + 3000;
    while (!store_keeper_lost(k) && now_ms() < deadline)
        sleep_ms(20);
    assert_true(store_keeper_lost(k));
    sleep_ms(600);
    pthread_mutex_lock(&lost.mu);
    assert_int_equal(lost.calls, 1);
    assert_int_equal(lost.code, PIER_ENOTFOUND);
    pthread_mutex_unlock(&lost.mu);
    store_keeper_stop(k, true);
}

/* --- compaction (store-wide: last) ------------------------------------ */

void test_compaction(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "comp/a");
    int64_t r1 = put(a, "1");
    int64_t r2 = put(a, "2");
    int64_t r3 = put(a, "3");
    assert_int_equal(store_compact(st, r2, &err), 0);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get_at(st, a, r1, &kv, &err), PIER_ECOMPACTED);
    assert_null(kv);
    struct store_range *r = NULL;
    struct store_list_opts at = {.revision = r1};
    assert_int_equal(store_list(st, a, &at, &r, &err), PIER_ECOMPACTED);
    assert_int_equal(store_get_at(st, a, r2, &kv, &err), 0); /* r2 itself is kept */
    assert_value(kv, "2");
    store_kv_free(kv);
    assert_int_equal(store_compact(st, r1, &err), PIER_ECOMPACTED);

    /* a watch from a compacted revision fails, and stays failed */
    struct store_watch *w = NULL;
    struct store_watch_opts o = {.start_revision = r1};
    assert_int_equal(store_watch_open(st, a, &o, &w, &err), 0);
    struct store_events *evs = NULL;
    assert_int_equal(store_watch_next(w, 3000, &evs, &err), PIER_ECOMPACTED);
    assert_non_null(strstr(err.msg, "compacted"));
    assert_int_equal(store_watch_next(w, 0, &evs, &err), PIER_ECOMPACTED);
    store_watch_close(w);

    /* from r2 it replays r2 and r3 */
    o.start_revision = r2;
    assert_int_equal(store_watch_open(st, a, &o, &w, &err), 0);
    struct store_event ev[4];
    assert_int_equal(collect(w, ev, 2, 3000), 2);
    assert_int_equal(ev[0].kv.mod_revision, r2);
    assert_int_equal(ev[1].kv.mod_revision, r3);
    release(ev, 2);

    /* a watch resuming at a revision compacted while it was down fails */
    store_watch_drop_connection(w);
    int64_t r4 = put(a, "4");
    int64_t r5 = put(a, "5");
    assert_int_equal(store_compact(st, r5, &err), 0);
    assert_true(r4 < r5);
    int code = store_watch_next(w, 3000, &evs, &err);
    if (code != PIER_ECOMPACTED)
        fail_msg("resuming at compacted revision %" PRId64 ": got %d (%s)", r4, code, err.msg);
    store_watch_close(w);
}
