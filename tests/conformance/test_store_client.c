/* The store client's conformance suite: run against a live server named by
 * PIER_STORE (pierd store or etcd), it checks that the server and the client
 * agree on etcd v3 semantics. Every run works under its own key prefix, so
 * runs and tests do not see each other's keys. Compaction is store-wide, so
 * its test runs last. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conformance.h"
#include "lib/log.h"
#include "lib/store.h"

struct store *st;
char run_prefix[128];

/* The key "<run prefix><name>" in a caller's buffer. */
const char *key_of(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s%s", run_prefix, name);
    return out;
}
int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int64_t put(const char *key, const char *value)
{
    struct pier_err err = {0};
    int64_t rev = 0;
    int r = store_put(st, key, value, strlen(value), 0, &rev, &err);
    if (r < 0)
        fail_msg("put %s: %s", key, err.msg);
    return rev;
}

void assert_value(const struct store_kv *kv, const char *value)
{
    assert_non_null(kv);
    assert_int_equal(kv->value_len, strlen(value));
    assert_memory_equal(kv->value, value, kv->value_len);
}

/* Collects events until want have come or timeout_ms passed. */
size_t collect(struct store_watch *w, struct store_event *out, size_t want, int timeout_ms)
{
    size_t n = 0;
    int64_t deadline = now_ms() + timeout_ms;
    while (n < want) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            break;
        struct store_events *evs = NULL;
        struct pier_err err = {0};
        int r = store_watch_next(w, (int)left, &evs, &err);
        if (r == PIER_ETIMEOUT)
            break;
        if (r < 0)
            fail_msg("watch: %s", err.msg);
        for (size_t i = 0; i < evs->n; i++) {
            if (n < want) {
                out[n] = evs->ev[i];
                out[n].prev = NULL; /* not kept: the copies below outlive evs */
                out[n].kv.key = strdup(evs->ev[i].kv.key);
                out[n].kv.value = strdup(evs->ev[i].kv.value);
            }
            n++;
        }
        store_events_free(evs);
    }
    return n;
}

void release(struct store_event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ev[i].kv.key);
        free(ev[i].kv.value);
    }
}

void assert_no_event(struct store_watch *w, int ms)
{
    struct store_events *evs = NULL;
    struct pier_err err = {0};
    int r = store_watch_next(w, ms, &evs, &err);
    if (r == 0)
        fail_msg("unexpected event on %s at revision %" PRId64, evs->ev[0].kv.key,
                 evs->ev[0].kv.mod_revision);
    assert_int_equal(r, PIER_ETIMEOUT);
}

/* --- revisions and reads -------------------------------------------- */

static void test_revisions(void **state)
{
    (void)state;
    K(a, "rev/a");
    struct pier_err err = {0};
    int64_t r1 = put(a, "one");
    assert_true(r1 > 0);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    assert_value(kv, "one");
    assert_int_equal(kv->key_len, strlen(a));
    assert_string_equal(kv->key, a);
    assert_int_equal(kv->create_revision, r1);
    assert_int_equal(kv->mod_revision, r1);
    assert_int_equal(kv->version, 1);
    assert_int_equal(kv->lease, 0);
    store_kv_free(kv);

    struct store_kv *prev = NULL;
    int64_t r2 = 0;
    assert_int_equal(store_put_prev(st, a, "two", 3, 0, &r2, &prev, &err), 0);
    assert_true(r2 > r1);
    assert_value(prev, "one");
    assert_int_equal(prev->mod_revision, r1);
    store_kv_free(prev);
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    assert_value(kv, "two");
    assert_int_equal(kv->create_revision, r1);
    assert_int_equal(kv->mod_revision, r2);
    assert_int_equal(kv->version, 2);
    store_kv_free(kv);

    K(b, "rev/b");
    prev = (struct store_kv *)1;
    assert_int_equal(store_put_prev(st, b, "", 0, 0, NULL, &prev, &err), 0);
    assert_null(prev); /* a new key has no previous value */
    assert_int_equal(store_get(st, b, &kv, &err), 0);
    assert_value(kv, "");
    store_kv_free(kv);

    int64_t now = 0;
    assert_int_equal(store_revision(st, &now, &err), 0);
    assert_true(now > r2);
}

static void test_get_missing(void **state)
{
    (void)state;
    K(m, "missing/none");
    struct pier_err err = {0};
    struct store_kv *kv = (struct store_kv *)1;
    assert_int_equal(store_get(st, m, &kv, &err), PIER_ENOTFOUND);
    assert_null(kv);
    assert_non_null(strstr(err.msg, m));
    struct store_range *r = NULL;
    assert_int_equal(store_list(st, m, NULL, &r, &err), 0);
    assert_int_equal(r->n, 0);
    assert_int_equal(r->count, 0);
    assert_false(r->more);
    assert_true(r->revision > 0);
    store_range_free(r);
}

static void test_binary_values(void **state)
{
    (void)state;
    K(bin, "bin/v");
    static const char v[] = {'a', 0, (char)0xff, '\n', '"', '\\', 0};
    struct pier_err err = {0};
    assert_int_equal(store_put(st, bin, v, sizeof(v), 0, NULL, &err), 0);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, bin, &kv, &err), 0);
    assert_int_equal(kv->value_len, sizeof(v));
    assert_memory_equal(kv->value, v, sizeof(v));
    store_kv_free(kv);
}

static void test_list_prefix(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(p, "list/");
    const char *names[] = {"list/c/d", "list/a", "list/c", "list/b", "list0", "lis"};
    for (size_t i = 0; i < 6; i++) {
        K(k, names[i]);
        put(k, names[i]);
    }
    struct store_range *r = NULL;
    assert_int_equal(store_list(st, p, NULL, &r, &err), 0);
    assert_int_equal(r->n, 4);
    assert_int_equal(r->count, 4);
    assert_false(r->more);
    const char *sorted[] = {"list/a", "list/b", "list/c", "list/c/d"};
    for (size_t i = 0; i < 4; i++) {
        K(k, sorted[i]);
        assert_string_equal(r->kvs[i].key, k);
        assert_value(&r->kvs[i], sorted[i]);
    }
    store_range_free(r);

    struct store_list_opts lim = {.limit = 2};
    assert_int_equal(store_list(st, p, &lim, &r, &err), 0);
    assert_int_equal(r->n, 2);
    assert_int_equal(r->count, 4);
    assert_true(r->more);
    K(after, "list/b");
    assert_string_equal(r->kvs[1].key, after);
    store_range_free(r);

    struct store_list_opts page = {.limit = 2, .after = after};
    assert_int_equal(store_list(st, p, &page, &r, &err), 0);
    assert_int_equal(r->n, 2);
    K(c, "list/c");
    assert_string_equal(r->kvs[0].key, c);
    assert_false(r->more);
    store_range_free(r);

    struct store_list_opts keys = {.keys_only = true};
    assert_int_equal(store_list(st, p, &keys, &r, &err), 0);
    assert_int_equal(r->n, 4);
    assert_int_equal(r->kvs[0].value_len, 0);
    assert_true(r->kvs[0].mod_revision > 0);
    store_range_free(r);

    struct store_list_opts count = {.count_only = true};
    assert_int_equal(store_list(st, p, &count, &r, &err), 0);
    assert_int_equal(r->n, 0);
    assert_int_equal(r->count, 4);
    store_range_free(r);

    /* the whole run's keys, through the run prefix */
    assert_int_equal(store_list(st, run_prefix, &count, &r, &err), 0);
    assert_true(r->count >= 6);
    store_range_free(r);
}

static void test_delete(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "del/a");
    K(b, "del/sub/b");
    K(c, "del/sub/c");
    K(sub, "del/sub/");
    put(a, "1");
    put(b, "2");
    int64_t rc = put(c, "3");
    int64_t n = -1, rev = 0;
    assert_int_equal(store_delete(st, a, &n, &rev, &err), 0);
    assert_int_equal(n, 1);
    assert_true(rev > rc);
    assert_int_equal(store_delete(st, a, &n, NULL, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_delete_prefix(st, sub, &n, NULL, &err), 0);
    assert_int_equal(n, 2);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, b, &kv, &err), PIER_ENOTFOUND);
    assert_int_equal(store_delete_prefix(st, "", &n, NULL, &err), PIER_EINVAL);
}

/* --- transactions ---------------------------------------------------- */

static void test_txn_succeeds(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "txn/a");
    K(b, "txn/b");
    K(pre, "txn/");
    struct store_txn *t = store_txn_new();
    store_txn_cmp(t, a, STORE_CMP_VERSION, STORE_EQ, 0);
    store_txn_cmp(t, a, STORE_CMP_CREATE, STORE_EQ, 0);
    store_txn_put(t, STORE_THEN, a, "x", 1, 0);
    store_txn_put(t, STORE_THEN, b, "y", 1, 0);
    store_txn_get(t, STORE_THEN, pre, true);
    store_txn_get(t, STORE_ELSE, a, false);
    struct store_txn_result *res = NULL;
    assert_int_equal(store_txn_commit(st, t, &res, &err), 0);
    assert_true(res->succeeded);
    assert_int_equal(res->n_gets, 1);
    assert_int_equal(res->gets[0].n, 2);
    assert_value(&res->gets[0].kvs[0], "x");
    assert_int_equal(res->gets[0].kvs[0].mod_revision, res->revision);
    assert_int_equal(res->gets[0].kvs[1].mod_revision, res->revision); /* one revision */
    int64_t rev = res->revision;
    store_txn_result_free(res);

    /* the same txn again: a exists now, so the ELSE branch runs */
    assert_int_equal(store_txn_commit(st, t, &res, &err), 0);
    assert_false(res->succeeded);
    assert_int_equal(res->revision, rev);
    assert_int_equal(res->n_gets, 1);
    assert_int_equal(res->gets[0].n, 1);
    assert_value(&res->gets[0].kvs[0], "x");
    store_txn_result_free(res);
    store_txn_free(t);

    /* compares of every kind that hold */
    t = store_txn_new();
    store_txn_cmp_value(t, a, STORE_EQ, "x", 1);
    store_txn_cmp_value(t, a, STORE_NE, "z", 1);
    store_txn_cmp_value(t, a, STORE_LT, "y", 1);
    store_txn_cmp_value(t, a, STORE_GT, "w", 1);
    store_txn_cmp(t, a, STORE_CMP_VERSION, STORE_GT, 0);
    store_txn_cmp(t, a, STORE_CMP_VERSION, STORE_LT, 2);
    store_txn_cmp(t, a, STORE_CMP_MOD, STORE_EQ, rev);
    store_txn_cmp(t, a, STORE_CMP_CREATE, STORE_NE, 0);
    store_txn_cmp(t, a, STORE_CMP_LEASE, STORE_EQ, 0);
    store_txn_delete(t, STORE_THEN, b, false);
    assert_int_equal(store_txn_commit(st, t, &res, &err), 0);
    assert_true(res->succeeded);
    assert_true(res->revision > rev);
    store_txn_result_free(res);
    store_txn_free(t);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, b, &kv, &err), PIER_ENOTFOUND);
}

/* Each compare fails alone: the ELSE branch runs and nothing changes. */
static void test_txn_fails(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "txnf/a");
    K(c, "txnf/c");
    int64_t ra = put(a, "v");
    struct {
        enum store_cmp_target target;
        enum store_cmp_op op;
        int64_t n;
        const char *value;
    } cases[] = {
        {STORE_CMP_VALUE, STORE_EQ, 0, "w"}, {STORE_CMP_VALUE, STORE_NE, 0, "v"},
        {STORE_CMP_VALUE, STORE_LT, 0, "a"}, {STORE_CMP_VALUE, STORE_GT, 0, "z"},
        {STORE_CMP_VERSION, STORE_EQ, 0, 0}, {STORE_CMP_VERSION, STORE_GT, 1, 0},
        {STORE_CMP_MOD, STORE_LT, ra, 0},    {STORE_CMP_MOD, STORE_NE, ra, 0},
        {STORE_CMP_CREATE, STORE_GT, ra, 0}, {STORE_CMP_LEASE, STORE_NE, 0, 0},
    };
    int64_t before = 0, after = 0;
    assert_int_equal(store_revision(st, &before, &err), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct store_txn *t = store_txn_new();
        if (cases[i].target == STORE_CMP_VALUE)
            store_txn_cmp_value(t, a, cases[i].op, cases[i].value, 1);
        else
            store_txn_cmp(t, a, cases[i].target, cases[i].op, cases[i].n);
        store_txn_put(t, STORE_THEN, a, "changed", 7, 0);
        store_txn_put(t, STORE_THEN, c, "created", 7, 0);
        store_txn_get(t, STORE_ELSE, a, false);
        struct store_txn_result *res = NULL;
        assert_int_equal(store_txn_commit(st, t, &res, &err), 0);
        if (res->succeeded)
            fail_msg("compare %zu held but should not have", i);
        assert_int_equal(res->n_gets, 1);
        assert_value(&res->gets[0].kvs[0], "v");
        store_txn_result_free(res);
        store_txn_free(t);
    }
    assert_int_equal(store_revision(st, &after, &err), 0);
    assert_int_equal(after, before); /* failed txns write nothing */
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, c, &kv, &err), PIER_ENOTFOUND);
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    assert_int_equal(kv->mod_revision, ra);
    store_kv_free(kv);
}

static void test_create_and_cas(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "cas/a");
    int64_t r1 = 0, r2 = 0;
    assert_int_equal(store_create(st, a, "1", 1, 0, &r1, &err), 0);
    assert_int_equal(store_create(st, a, "2", 1, 0, NULL, &err), PIER_EEXISTS);
    assert_non_null(strstr(err.msg, a));
    assert_int_equal(store_cas(st, a, "3", 1, r1, 0, &r2, &err), 0);
    assert_true(r2 > r1);
    assert_int_equal(store_cas(st, a, "4", 1, r1, 0, NULL, &err), PIER_ECONFLICT);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(st, a, &kv, &err), 0);
    assert_value(kv, "3");
    store_kv_free(kv);
    K(b, "cas/b");
    assert_int_equal(store_cas(st, b, "new", 3, 0, 0, NULL, &err), 0); /* 0: only if absent */
}

/* --- history --------------------------------------------------------- */

static void test_history(void **state)
{
    (void)state;
    struct pier_err err = {0};
    K(a, "hist/a");
    K(p, "hist/");
    int64_t r1 = put(a, "v1");
    int64_t r2 = put(a, "v2");
    int64_t r3 = 0;
    assert_int_equal(store_delete(st, a, NULL, &r3, &err), 0);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get_at(st, a, r1, &kv, &err), 0);
    assert_value(kv, "v1");
    assert_int_equal(kv->version, 1);
    store_kv_free(kv);
    assert_int_equal(store_get_at(st, a, r2, &kv, &err), 0);
    assert_value(kv, "v2");
    assert_int_equal(kv->version, 2);
    store_kv_free(kv);
    assert_int_equal(store_get_at(st, a, r3, &kv, &err), PIER_ENOTFOUND);
    assert_int_equal(store_get_at(st, a, r1 - 1, &kv, &err), PIER_ENOTFOUND);
    struct store_range *r = NULL;
    struct store_list_opts at = {.revision = r2};
    assert_int_equal(store_list(st, p, &at, &r, &err), 0);
    assert_int_equal(r->n, 1);
    assert_value(&r->kvs[0], "v2");
    store_range_free(r);
    /* a revision that does not exist yet */
    assert_int_equal(store_get_at(st, a, r3 + 1000000, &kv, &err), PIER_EINVAL);
}

/* --- the client itself ----------------------------------------------- */

static void test_endpoints(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct store *bad = NULL;
    assert_int_equal(store_open("http://127.0.0.1:1", &bad, &err), 0);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(bad, "/x", &kv, &err), -ECONNREFUSED);
    assert_string_equal(err.msg, "store at http://127.0.0.1:1: connection refused");
    store_close(bad);

    /* a dead endpoint first: requests and watches move on to the live one */
    char list[512];
    snprintf(list, sizeof(list), "http://127.0.0.1:1,%s", getenv("PIER_STORE"));
    struct store *two = NULL;
    assert_int_equal(store_open(list, &two, &err), 0);
    K(a, "ep/a");
    assert_int_equal(store_put(two, a, "v", 1, 0, NULL, &err), 0);
    assert_string_not_equal(store_endpoint(two), "http://127.0.0.1:1");
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(two, a, NULL, &w, &err), 0);
    store_watch_close(w);
    store_close(two);

    assert_int_equal(store_open("", &bad, &err), PIER_EINVAL);
    assert_int_equal(store_open("ftp://x", &bad, &err), PIER_EINVAL);
}

#define THREADS 4
#define PER_THREAD 50

static void *hammer(void *arg)
{
    long t = (long)arg;
    char name[64], value[32];
    for (int i = 0; i < PER_THREAD; i++) {
        snprintf(name, sizeof(name), "conc/%ld/%d", t, i);
        snprintf(value, sizeof(value), "%ld-%d", t, i);
        K(k, name);
        struct pier_err err = {0};
        struct store_kv *kv = NULL;
        if (store_put(st, k, value, strlen(value), 0, NULL, &err) < 0 ||
            store_get(st, k, &kv, &err) < 0 || strcmp(kv->value, value) != 0) {
            store_kv_free(kv);
            return (void *)1;
        }
        store_kv_free(kv);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, hammer, (void *)t), 0);
    for (int t = 0; t < THREADS; t++) {
        void *res = NULL;
        pthread_join(th[t], &res);
        assert_null(res);
    }
    struct pier_err err = {0};
    struct store_range *r = NULL;
    K(p, "conc/");
    struct store_list_opts count = {.count_only = true};
    assert_int_equal(store_list(st, p, &count, &r, &err), 0);
    assert_int_equal(r->count, THREADS * PER_THREAD);
    store_range_free(r);
}

static int setup(void **state)
{
    (void)state;
    struct pier_err err = {0};
    enum log_level level;
    const char *lv = getenv("PIER_LOG_LEVEL");
    if (lv && log_parse_level(lv, &level) == 0)
        log_set_level(level);
    if (store_open_env(&st, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(run_prefix, sizeof(run_prefix), "/pier-conformance/%ld-%ld-%d/", (long)ts.tv_sec,
             ts.tv_nsec, (int)getpid());
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    struct pier_err err = {0};
    if (store_delete_prefix(st, run_prefix, NULL, NULL, &err) < 0)
        fprintf(stderr, "cleanup: %s\n", err.msg);
    store_close(st);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_revisions),
        cmocka_unit_test(test_get_missing),
        cmocka_unit_test(test_binary_values),
        cmocka_unit_test(test_list_prefix),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_txn_succeeds),
        cmocka_unit_test(test_txn_fails),
        cmocka_unit_test(test_create_and_cas),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_watch_replay),
        cmocka_unit_test(test_watch_key_prev_kv),
        cmocka_unit_test(test_watch_resume),
        cmocka_unit_test(test_watch_timeout),
        cmocka_unit_test(test_lease_expiry),
        cmocka_unit_test(test_lease_revoke),
        cmocka_unit_test(test_lease_keeper),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_client_failover_on_timeout),
        cmocka_unit_test(test_client_failover_no_leader),
        cmocka_unit_test(test_client_watch_silence),
        cmocka_unit_test(test_client_watch_next_deadline),
        cmocka_unit_test(test_client_watch_big_message),
        cmocka_unit_test(test_client_bad_revisions),
        cmocka_unit_test(test_client_keeper_loss_in_time),
        cmocka_unit_test(test_compaction),
    };
    const char *filter = getenv("PIER_TEST_FILTER"); /* e.g. "test_watch_*" */
    if (filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests_name("store client conformance", tests, setup, teardown);
}
