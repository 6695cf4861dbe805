/* Tests for the store engine, driven through its JSON requests as the
 * gateway glue drives it, in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/jsonx.h"
#include "store/mvcc.h"

typedef int (*mvcc_fn)(struct mvcc *, const json_t *, json_t **, struct pier_err *);

struct fixture {
    char dir[64];
    struct mvcc *m;
};

/* ---- helpers ---- */

/* base64 of s, from a small per-thread pool of buffers (enough for one
 * call). */
static const char *B(const char *s)
{
    static _Thread_local char pool[16][256];
    static _Thread_local int next;
    char *out = pool[next++ % 16];
    struct buf b = BUF_INIT;
    base64_encode(&b, s, strlen(s));
    snprintf(out, 256, "%s", b.p ? b.p : "");
    buf_free(&b);
    return out;
}

static json_t *J(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *J(const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j)
        fail_msg("bad test JSON %s: %s", text, je.text);
    return j;
}

/* The main thread's last response, freed by the next one (or teardown). */
static json_t *last;

/* Watches still open when a test fails are freed by teardown, so that
 * mvcc_close (which waits for them) returns and the failure is reported. */
static struct mvcc_watch *open_watches[64];

static json_t *keep(json_t *resp)
{
    json_decref(last);
    return last = resp;
}

/* Calls fn with req (consumed); asserts success; returns a new reference. */
static json_t *call(struct mvcc *m, mvcc_fn fn, json_t *req)
{
    json_t *resp = NULL;
    struct pier_err err = {0};
    int rc = fn(m, req, &resp, &err);
    if (rc != 0)
        fail_msg("request failed (%d): %s", rc, err.msg);
    json_decref(req);
    return resp;
}

/* call() from the main thread; the response is borrowed until the next. */
static json_t *ok(struct mvcc *m, mvcc_fn fn, json_t *req)
{
    return keep(call(m, fn, req));
}

/* Calls fn; asserts it fails with code and a message containing want. */
static void fails(struct mvcc *m, mvcc_fn fn, json_t *req, int code, const char *want)
{
    json_t *resp = NULL;
    struct pier_err err = {0};
    int rc = fn(m, req, &resp, &err);
    json_decref(req);
    if (rc != code || !strstr(err.msg, want))
        fail_msg("want %d \"%s\", got %d \"%s\"", code, want, rc, err.msg);
    assert_null(resp);
}

/* A value by dotted path ("kvs.0.key"); NULL when absent. Borrowed. */
static json_t *at(json_t *j, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *save = NULL;
    for (char *p = strtok_r(buf, ".", &save); p && j; p = strtok_r(NULL, ".", &save)) {
        if (json_is_array(j))
            j = json_array_get(j, strtoul(p, NULL, 10));
        else
            j = json_object_get(j, p);
    }
    return j;
}

static const char *S(json_t *j, const char *path)
{
    json_t *v = at(j, path);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* An int64 field (written as a string); 0 when absent. */
static int64_t I(json_t *j, const char *path)
{
    const char *s = S(j, path);
    return s ? strtoll(s, NULL, 10) : 0;
}

static size_t N(json_t *j, const char *path)
{
    json_t *v = at(j, path);
    return json_is_array(v) ? json_array_size(v) : 0;
}

static int64_t put(struct mvcc *m, const char *k, const char *v)
{
    json_t *r = call(m, mvcc_put, J("{\"key\":\"%s\",\"value\":\"%s\"}", B(k), B(v)));
    int64_t rev = I(r, "header.revision");
    json_decref(r);
    return rev;
}

static json_t *get(struct mvcc *m, const char *k)
{
    return ok(m, mvcc_range, J("{\"key\":\"%s\"}", B(k)));
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static struct mvcc *open_store(const char *dir, int64_t auto_compact)
{
    struct mvcc_options opt = {.auto_compact_revisions = auto_compact,
                               .watch_progress_interval_ms = 300};
    struct mvcc *m = NULL;
    struct pier_err err = {0};
    if (mvcc_open(dir, &opt, &m, &err) != 0)
        fail_msg("open: %s", err.msg);
    return m;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/test_mvcc.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->m = open_store(f->dir, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    json_decref(last);
    last = NULL;
    for (size_t i = 0; i < 64; i++) {
        mvcc_watch_free(open_watches[i]);
        open_watches[i] = NULL;
    }
    mvcc_close(f->m);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- key-value ---- */

static void test_put_range(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    assert_int_equal(mvcc_revision(m), 1);
    json_t *r = get(m, "foo");
    assert_int_equal(I(r, "header.revision"), 1);
    assert_non_null(S(r, "header.cluster_id"));
    assert_non_null(S(r, "header.member_id"));
    assert_non_null(S(r, "header.raft_term"));
    assert_null(at(r, "kvs")); /* etcd omits empty fields */
    assert_null(at(r, "count"));

    assert_int_equal(put(m, "foo", "bar"), 2);
    r = ok(m, mvcc_put,
           J("{\"key\":\"%s\",\"value\":\"%s\",\"prev_kv\":true}", B("foo"), B("baz")));
    assert_int_equal(I(r, "header.revision"), 3);
    assert_string_equal(S(r, "prev_kv.value"), B("bar"));
    assert_int_equal(I(r, "prev_kv.version"), 1);

    r = get(m, "foo");
    assert_int_equal(N(r, "kvs"), 1);
    assert_string_equal(S(r, "kvs.0.key"), B("foo"));
    assert_string_equal(S(r, "kvs.0.value"), B("baz"));
    assert_int_equal(I(r, "kvs.0.create_revision"), 2);
    assert_int_equal(I(r, "kvs.0.mod_revision"), 3);
    assert_int_equal(I(r, "kvs.0.version"), 2);
    assert_null(at(r, "kvs.0.lease"));
    assert_int_equal(I(r, "count"), 1);
    assert_null(at(r, "more"));

    /* An empty value is omitted; keys_only and count_only. */
    put(m, "empty", "");
    r = get(m, "empty");
    assert_null(at(r, "kvs.0.value"));
    assert_int_equal(I(r, "kvs.0.version"), 1);
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"keys_only\":true}", B("foo")));
    assert_null(at(r, "kvs.0.value"));
    assert_int_equal(I(r, "kvs.0.mod_revision"), 3);
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"count_only\":true}", B("foo")));
    assert_null(at(r, "kvs"));
    assert_int_equal(I(r, "count"), 1);
    assert_int_equal(mvcc_revision(m), 4);
}

static void test_prefix_limit_sort(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "a", "1");
    put(m, "ab", "2");
    put(m, "abc", "3");
    put(m, "b", "4");
    put(m, "ab", "5"); /* ab: mod 6 */
    json_t *r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("a"), B("b")));
    assert_int_equal(N(r, "kvs"), 3);
    assert_string_equal(S(r, "kvs.2.key"), B("abc"));
    assert_int_equal(I(r, "count"), 3);

    r = ok(m, mvcc_range,
           J("{\"key\":\"%s\",\"range_end\":\"%s\",\"limit\":\"2\"}", B("a"), B("b")));
    assert_int_equal(N(r, "kvs"), 2);
    assert_true(json_is_true(at(r, "more")));
    assert_int_equal(I(r, "count"), 3);

    r = ok(m, mvcc_range,
           J("{\"key\":\"%s\",\"range_end\":\"%s\",\"limit\":1,\"sort_order\":\"DESCEND\"}", B("a"),
             B("b")));
    assert_string_equal(S(r, "kvs.0.key"), B("abc"));
    assert_true(json_is_true(at(r, "more")));

    /* Sorting by another target ascends by default. */
    r = ok(m, mvcc_range, J("{\"key\":\"AA==\",\"range_end\":\"AA==\",\"sort_target\":\"MOD\"}"));
    assert_int_equal(N(r, "kvs"), 4);
    assert_string_equal(S(r, "kvs.3.key"), B("ab"));
    r = ok(m, mvcc_range,
           J("{\"key\":\"AA==\",\"range_end\":\"AA==\",\"sort_target\":\"VERSION\","
             "\"sort_order\":2,\"limit\":1}"));
    assert_string_equal(S(r, "kvs.0.key"), B("ab"));

    /* range_end "\0": every key from key on. */
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"range_end\":\"AA==\"}", B("ab")));
    assert_int_equal(N(r, "kvs"), 3);
    assert_string_equal(S(r, "kvs.2.key"), B("b"));

    /* An end at or before the key matches nothing. */
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("b"), B("a")));
    assert_null(at(r, "kvs"));
    assert_null(at(r, "count"));

    /* Revision filters, and count ignoring them. */
    r = ok(m, mvcc_range,
           J("{\"key\":\"AA==\",\"range_end\":\"AA==\",\"min_mod_revision\":\"5\"}"));
    assert_int_equal(N(r, "kvs"), 2);
    assert_int_equal(I(r, "count"), 4);
}

static void test_history(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "k", "v1"); /* 2 */
    put(m, "k", "v2"); /* 3 */
    json_t *r = ok(m, mvcc_delete_range, J("{\"key\":\"%s\"}", B("k")));
    assert_int_equal(I(r, "header.revision"), 4);
    put(m, "k", "v3");    /* 5 */
    put(m, "other", "x"); /* 6 */

    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":2}", B("k")));
    assert_string_equal(S(r, "kvs.0.value"), B("v1"));
    assert_int_equal(I(r, "header.revision"), 6);
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":\"3\"}", B("k")));
    assert_string_equal(S(r, "kvs.0.value"), B("v2"));
    assert_int_equal(I(r, "kvs.0.version"), 2);
    assert_int_equal(I(r, "kvs.0.create_revision"), 2);
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":4}", B("k")));
    assert_null(at(r, "kvs"));
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":5}", B("k")));
    assert_int_equal(I(r, "kvs.0.version"), 1);
    assert_int_equal(I(r, "kvs.0.create_revision"), 5);
    r = ok(m, mvcc_range, J("{\"key\":\"AA==\",\"range_end\":\"AA==\",\"revision\":5}"));
    assert_int_equal(N(r, "kvs"), 1);
    assert_int_equal(I(r, "count"), 1);
    fails(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":7}", B("k")), PIER_ECOMPACTED,
          "etcdserver: mvcc: required revision is a future revision");
}

static void test_delete(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "d/1", "a");
    put(m, "d/2", "b");
    put(m, "e", "c"); /* 4 */
    json_t *r = ok(m, mvcc_delete_range, J("{\"key\":\"%s\"}", B("nothing")));
    assert_int_equal(I(r, "header.revision"), 4); /* no bump */
    assert_null(at(r, "deleted"));
    r = ok(m, mvcc_delete_range,
           J("{\"key\":\"%s\",\"range_end\":\"%s\",\"prev_kv\":true}", B("d/"), B("d0")));
    assert_int_equal(I(r, "header.revision"), 5);
    assert_int_equal(I(r, "deleted"), 2);
    assert_int_equal(N(r, "prev_kvs"), 2);
    assert_string_equal(S(r, "prev_kvs.1.value"), B("b"));
    r = ok(m, mvcc_range, J("{\"key\":\"AA==\",\"range_end\":\"AA==\"}"));
    assert_int_equal(I(r, "count"), 1);
    /* Put after delete starts a new life. */
    put(m, "d/1", "again");
    r = get(m, "d/1");
    assert_int_equal(I(r, "kvs.0.version"), 1);
    assert_int_equal(I(r, "kvs.0.create_revision"), 6);
}

/* ---- txn ---- */

static void test_txn(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "x", "1"); /* 2 */

    /* Success: two puts and a range that sees them, one revision. */
    json_t *r =
        ok(m, mvcc_txn,
           J("{\"compare\":[{\"key\":\"%s\",\"target\":\"VALUE\",\"result\":\"EQUAL\","
             "\"value\":\"%s\"}],\"success\":[{\"request_range\":{\"key\":\"%s\"}},"
             "{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\",\"prev_kv\":true}},"
             "{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}},"
             "{\"request_range\":{\"key\":\"%s\",\"range_end\":\"%s\"}}],"
             "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
             B("x"), B("1"), B("x"), B("x"), B("2"), B("y"), B("3"), B("x"), B("z"), B("x")));
    assert_true(json_is_true(at(r, "succeeded")));
    assert_int_equal(I(r, "header.revision"), 3);
    assert_int_equal(N(r, "responses"), 4);
    assert_int_equal(I(r, "responses.0.response_range.header.revision"), 2);
    assert_null(at(r, "responses.0.response_range.header.cluster_id"));
    assert_int_equal(I(r, "responses.1.response_put.header.revision"), 3);
    assert_string_equal(S(r, "responses.1.response_put.prev_kv.value"), B("1"));
    assert_int_equal(I(r, "responses.3.response_range.count"), 2);
    assert_int_equal(I(r, "responses.3.response_range.kvs.1.mod_revision"), 3);
    assert_int_equal(mvcc_revision(m), 3);

    /* Failure branch; "succeeded" omitted; no write, no bump. */
    r = ok(m, mvcc_txn,
           J("{\"compare\":[{\"key\":\"%s\",\"target\":\"VERSION\",\"result\":\"GREATER\","
             "\"version\":\"5\"}],\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
             B("x"), B("x")));
    assert_null(at(r, "succeeded"));
    assert_string_equal(S(r, "responses.0.response_range.kvs.0.value"), B("2"));
    assert_int_equal(I(r, "header.revision"), 3);

    /* Compares on a missing key: VALUE always fails, others see zero. */
    r = ok(m, mvcc_txn,
           J("{\"compare\":[{\"key\":\"%s\",\"target\":\"VALUE\",\"result\":\"NOT_EQUAL\","
             "\"value\":\"\"}]}",
             B("missing")));
    assert_null(at(r, "succeeded"));
    r = ok(m, mvcc_txn,
           J("{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
             "\"create_revision\":\"0\"},{\"key\":\"%s\",\"target\":\"MOD\",\"result\":\"LESS\","
             "\"mod_revision\":3},{\"key\":\"%s\",\"range_end\":\"%s\",\"target\":\"VERSION\","
             "\"result\":\"EQUAL\",\"version\":1}],"
             "\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}",
             B("missing"), B("y"), B("x"), B("z"), B("missing")));
    assert_null(at(r, "succeeded")); /* x has version 2 */

    /* A txn whose only delete matches nothing does not bump the revision. */
    r = ok(m, mvcc_txn,
           J("{\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}", B("nope")));
    assert_true(json_is_true(at(r, "succeeded")));
    assert_int_equal(I(r, "header.revision"), 3);

    /* Nested txn: its compare sees the state before the outer txn. */
    r = ok(m, mvcc_txn,
           J("{\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}},"
             "{\"request_txn\":{\"compare\":[{\"key\":\"%s\",\"target\":\"VERSION\","
             "\"result\":\"EQUAL\",\"version\":\"0\"}],\"success\":[{\"request_put\":"
             "{\"key\":\"%s\",\"value\":\"%s\"}}]}}]}",
             B("n1"), B("a"), B("n1"), B("n2"), B("b")));
    assert_int_equal(I(r, "header.revision"), 4);
    assert_non_null(at(r, "responses.1.response_txn.header"));
    assert_null(at(r, "responses.1.response_txn.header.revision"));
    assert_true(json_is_true(at(r, "responses.1.response_txn.succeeded")));
    r = get(m, "n2");
    assert_int_equal(I(r, "kvs.0.mod_revision"), 4);

    /* etcd's duplicate-key rule. */
    fails(m, mvcc_txn,
          J("{\"success\":[{\"request_put\":{\"key\":\"%s\"}},{\"request_put\":{\"key\":\"%s\"}}]}",
            B("d"), B("d")),
          PIER_EINVAL, "etcdserver: duplicate key given in txn request");
    fails(m, mvcc_txn,
          J("{\"success\":[{\"request_delete_range\":{\"key\":\"%s\",\"range_end\":\"%s\"}},"
            "{\"request_put\":{\"key\":\"%s\"}}]}",
            B("a"), B("c"), B("b")),
          PIER_EINVAL, "duplicate key");
    r = ok(m, mvcc_txn,
           J("{\"success\":[{\"request_put\":{\"key\":\"%s\"}}],"
             "\"failure\":[{\"request_put\":{\"key\":\"%s\"}}]}",
             B("d"), B("d")));
    /* A failing op undoes the whole txn. */
    int64_t rev = mvcc_revision(m);
    fails(m, mvcc_txn,
          J("{\"success\":[{\"request_put\":{\"key\":\"%s\"}},{\"request_put\":{\"key\":\"%s\","
            "\"lease\":\"777\"}}]}",
            B("t1"), B("t2")),
          PIER_ENOTFOUND, "etcdserver: requested lease not found");
    assert_int_equal(mvcc_revision(m), rev);
    r = get(m, "t1");
    assert_null(at(r, "kvs"));
}

/* ---- compaction ---- */

static void test_compaction(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "a", "1"); /* 2 */
    put(m, "a", "2"); /* 3 */
    put(m, "b", "1"); /* 4 */
    json_t *r = ok(m, mvcc_delete_range, J("{\"key\":\"%s\"}", B("b")));
    /* 5 */
    put(m, "a", "3"); /* 6 */
    fails(m, mvcc_compact, J("{\"revision\":\"7\"}"), PIER_ECOMPACTED,
          "etcdserver: mvcc: required revision is a future revision");
    r = ok(m, mvcc_compact, J("{\"revision\":\"5\"}"));
    assert_int_equal(I(r, "header.revision"), 6);
    fails(m, mvcc_compact, J("{\"revision\":\"5\"}"), PIER_ECOMPACTED,
          "etcdserver: mvcc: required revision has been compacted");
    fails(m, mvcc_compact, J("{\"revision\":4}"), PIER_ECOMPACTED, "has been compacted");
    fails(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":4}", B("a")), PIER_ECOMPACTED,
          "etcdserver: mvcc: required revision has been compacted");
    /* At exactly the compacted revision, each key's state is still there. */
    r = ok(m, mvcc_range, J("{\"key\":\"AA==\",\"range_end\":\"AA==\",\"revision\":5}"));
    assert_int_equal(N(r, "kvs"), 1);
    assert_string_equal(S(r, "kvs.0.value"), B("2"));
    r = ok(m, mvcc_range, J("{\"key\":\"%s\"}", B("a")));
    assert_int_equal(I(r, "kvs.0.version"), 3);
    r = ok(m, mvcc_compact, J("{\"revision\":6}"));
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"revision\":6}", B("a")));
    assert_string_equal(S(r, "kvs.0.value"), B("3"));
}

static void test_auto_compaction(void **state)
{
    struct fixture *f = *state;
    mvcc_close(f->m);
    f->m = open_store(f->dir, 10);
    for (int i = 0; i < 30; i++)
        put(f->m, "k", "v"); /* up to 31 */
    /* Between 7/8 of 10 and 10 revisions are kept: 22..31 at least. */
    fails(f->m, mvcc_range, J("{\"key\":\"%s\",\"revision\":20}", B("k")), PIER_ECOMPACTED,
          "compacted");
    json_t *r = ok(f->m, mvcc_range, J("{\"key\":\"%s\",\"revision\":22}", B("k")));
    assert_int_equal(I(r, "kvs.0.version"), 21);
    /* The history is gone from the file, not just hidden. */
    char path[128];
    snprintf(path, sizeof(path), "%s/store.db", f->dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM log", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_true(sqlite3_column_int(st, 0) <= 11);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* ---- watches ---- */

static json_t *next(struct mvcc_watch *w, int timeout_ms)
{
    json_t *resp = NULL;
    int rc = mvcc_watch_next(w, timeout_ms, &resp);
    if (rc != 1)
        fail_msg("watch_next returned %d", rc);
    return keep(resp);
}

static void unwatch(struct mvcc_watch *w)
{
    for (size_t i = 0; i < 64; i++)
        if (open_watches[i] == w)
            open_watches[i] = NULL;
    mvcc_watch_free(w);
}

static struct mvcc_watch *watch(struct mvcc *m, json_t *cr, int64_t *created_rev)
{
    struct mvcc_watch *w = NULL;
    json_t *created = NULL;
    struct pier_err err = {0};
    if (mvcc_watch_create(m, cr, &w, &created, &err) != 0)
        fail_msg("watch: %s", err.msg);
    assert_true(json_is_true(at(created, "created")));
    if (created_rev)
        *created_rev = I(created, "header.revision");
    json_decref(created);
    json_decref(cr);
    for (size_t i = 0; i < 64; i++) {
        if (!open_watches[i]) {
            open_watches[i] = w;
            break;
        }
    }
    return w;
}

static void test_watch_history(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "w/a", "1"); /* 2 */
    put(m, "w/a", "2"); /* 3 */
    put(m, "x", "0");   /* 4 */
    json_t *r = ok(m, mvcc_delete_range, J("{\"key\":\"%s\"}", B("w/a")));
    /* 5 */

    int64_t crev = 0;
    struct mvcc_watch *w =
        watch(m,
              J("{\"key\":\"%s\",\"range_end\":\"%s\",\"start_revision\":\"2\",\"prev_kv\":true}",
                B("w/"), B("w0")),
              &crev);
    assert_int_equal(crev, 5);
    r = next(w, 1000);
    assert_int_equal(N(r, "events"), 3);
    assert_null(at(r, "events.0.type"));
    assert_null(at(r, "events.0.prev_kv"));
    assert_int_equal(I(r, "events.1.kv.version"), 2);
    assert_string_equal(S(r, "events.1.prev_kv.value"), B("1"));
    assert_string_equal(S(r, "events.2.type"), "DELETE");
    assert_int_equal(I(r, "events.2.kv.mod_revision"), 5);
    assert_null(at(r, "events.2.kv.create_revision"));
    assert_string_equal(S(r, "events.2.prev_kv.value"), B("2"));
    json_t *none = NULL;
    assert_int_equal(mvcc_watch_next(w, 50, &none), 0);
    assert_null(none);
    unwatch(w);

    /* Filters, and the compacted case. */
    w = watch(m, J("{\"key\":\"%s\",\"start_revision\":1,\"filters\":[\"NOPUT\"]}", B("w/a")),
              NULL);
    r = next(w, 1000);
    assert_int_equal(N(r, "events"), 1);
    assert_string_equal(S(r, "events.0.type"), "DELETE");
    unwatch(w);
    r = ok(m, mvcc_compact, J("{\"revision\":4}"));
    w = watch(m, J("{\"key\":\"%s\",\"start_revision\":3}", B("w/a")), NULL);
    r = next(w, 1000);
    assert_true(json_is_true(at(r, "canceled")));
    assert_int_equal(I(r, "compact_revision"), 4);
    assert_null(at(r, "header.revision"));
    assert_int_equal(mvcc_watch_next(w, 10, &none), -ECANCELED);
    unwatch(w);
    w = watch(m, J("{\"key\":\"%s\",\"start_revision\":4}", B("x")), NULL);
    r = next(w, 1000);
    assert_int_equal(I(r, "events.0.kv.mod_revision"), 4);
    unwatch(w);
}

#define WATCHERS 12
#define LIVE_PUTS 40

struct live {
    struct mvcc *m;
    struct mvcc_watch *w;
    int got;
    int64_t last_rev;
    bool in_order;
};

static void *watcher_main(void *arg)
{
    struct live *l = arg;
    l->in_order = true;
    while (l->got < LIVE_PUTS) {
        json_t *r = NULL;
        int rc = mvcc_watch_next(l->w, 5000, &r);
        if (rc != 1)
            break;
        for (size_t i = 0; i < N(r, "events"); i++) {
            char p[64];
            snprintf(p, sizeof(p), "events.%zu.kv.mod_revision", i);
            if (I(r, p) <= l->last_rev)
                l->in_order = false;
            l->last_rev = I(r, p);
            l->got++;
        }
        json_decref(r);
    }
    return NULL;
}

static void test_watch_live(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    struct live ls[WATCHERS];
    pthread_t th[WATCHERS];
    for (int i = 0; i < WATCHERS; i++) {
        ls[i] = (struct live){.m = m};
        ls[i].w =
            watch(m, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("live/"), B("live0")), NULL);
        assert_int_equal(pthread_create(&th[i], NULL, watcher_main, &ls[i]), 0);
    }
    for (int i = 0; i < LIVE_PUTS; i++) {
        put(m, "other", "noise");
        put(m, "live/k", "v");
    }
    for (int i = 0; i < WATCHERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ls[i].got, LIVE_PUTS);
        assert_true(ls[i].in_order);
        unwatch(ls[i].w);
    }

    /* progress_notify: a bare header once the interval passes (300 ms). */
    struct mvcc_watch *w = watch(m, J("{\"key\":\"%s\",\"progress_notify\":true}", B("p")), NULL);
    json_t *r = NULL;
    int rc = mvcc_watch_next(w, 0, &r);
    assert_int_equal(rc, 0);
    assert_null(r);
    usleep(400 * 1000);
    rc = mvcc_watch_next(w, 0, &r);
    assert_int_equal(rc, 0);
    assert_non_null(r);
    assert_int_equal(I(r, "header.revision"), mvcc_revision(m));
    assert_null(at(r, "events"));
    json_decref(r);
    unwatch(w);
}

/* ---- leases ---- */

static void test_lease_expiry(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    json_t *r = ok(m, mvcc_lease_grant, J("{\"TTL\":1}"));
    int64_t id = I(r, "ID");
    assert_true(id > 0);
    assert_int_equal(I(r, "TTL"), 1);
    r = ok(m, mvcc_put,
           J("{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%" PRId64 "\"}", B("l/1"), B("v"), id));
    r = ok(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":%" PRId64 "}", B("l/2"), id));
    r = get(m, "l/1");
    assert_int_equal(I(r, "kvs.0.lease"), id);
    fails(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":\"424242\"}", B("l/3")), PIER_ENOTFOUND,
          "etcdserver: requested lease not found");
    r = ok(m, mvcc_lease_timetolive, J("{\"ID\":\"%" PRId64 "\",\"keys\":true}", id));
    assert_int_equal(I(r, "grantedTTL"), 1);
    assert_int_equal(N(r, "keys"), 2);
    assert_string_equal(S(r, "keys.0"), B("l/1"));

    int64_t rev = mvcc_revision(m);
    struct mvcc_watch *w =
        watch(m, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("l/"), B("l0")), NULL);
    r = next(w, 4000); /* expiry within about a second */
    assert_int_equal(N(r, "events"), 2);
    assert_string_equal(S(r, "events.0.type"), "DELETE");
    assert_int_equal(I(r, "events.0.kv.mod_revision"), rev + 1);
    assert_int_equal(I(r, "events.1.kv.mod_revision"), rev + 1);
    unwatch(w);
    assert_int_equal(mvcc_revision(m), rev + 1);
    r = get(m, "l/1");
    assert_null(at(r, "kvs"));
    r = ok(m, mvcc_lease_timetolive, J("{\"ID\":\"%" PRId64 "\"}", id));
    assert_int_equal(I(r, "TTL"), -1);
}

static void test_lease_revoke(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    json_t *r = ok(m, mvcc_lease_grant, J("{\"TTL\":\"30\",\"ID\":\"1000\"}"));
    assert_int_equal(I(r, "ID"), 1000);
    assert_int_equal(I(r, "TTL"), 30);
    fails(m, mvcc_lease_grant, J("{\"TTL\":30,\"ID\":1000}"), PIER_EEXISTS,
          "etcdserver: lease already exists");
    r = ok(m, mvcc_lease_keepalive, J("{\"ID\":\"1000\"}"));
    assert_int_equal(I(r, "TTL"), 30);
    r = ok(m, mvcc_lease_keepalive, J("{\"ID\":\"1001\"}"));
    assert_int_equal(I(r, "ID"), 1001);
    assert_null(at(r, "TTL"));
    r = ok(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":\"1000\"}", B("r/1")));
    r = ok(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":\"1000\"}", B("r/2")));
    int64_t rev = mvcc_revision(m);
    r = ok(m, mvcc_lease_revoke, J("{\"ID\":\"1000\"}"));
    assert_int_equal(I(r, "header.revision"), rev + 1);
    r = ok(m, mvcc_range, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("r/"), B("r0")));
    assert_null(at(r, "kvs"));
    fails(m, mvcc_lease_revoke, J("{\"ID\":\"1000\"}"), PIER_ENOTFOUND,
          "etcdserver: requested lease not found");
    /* A lease without keys: revoking it does not bump the revision. */
    r = ok(m, mvcc_lease_grant, J("{\"TTL\":60,\"ID\":7}"));
    r = ok(m, mvcc_lease_revoke, J("{\"ID\":7}"));
    assert_int_equal(I(r, "header.revision"), rev + 1);
    r = NULL;
    struct pier_err err = {0};
    assert_int_equal(mvcc_lease_leases(m, &r, &err), 0);
    assert_null(at(r, "leases"));
    json_decref(r);
    fails(m, mvcc_lease_grant, J("{\"TTL\":9000000001}"), PIER_ECOMPACTED, "too large lease TTL");
}

/* ---- restart and concurrency ---- */

static void test_restart(void **state)
{
    struct fixture *f = *state;
    put(f->m, "p", "1");
    put(f->m, "p", "2"); /* 3 */
    json_t *r = ok(f->m, mvcc_lease_grant, J("{\"TTL\":100,\"ID\":5}"));
    r = ok(f->m, mvcc_put, J("{\"key\":\"%s\",\"lease\":5}", B("leased")));
    /* 4 */
    r = get(f->m, "p");
    char cluster[32], term[32];
    snprintf(cluster, sizeof(cluster), "%s", S(r, "header.cluster_id"));
    snprintf(term, sizeof(term), "%s", S(r, "header.raft_term"));
    mvcc_close(f->m);

    f->m = open_store(f->dir, 0);
    assert_int_equal(mvcc_revision(f->m), 4);
    r = get(f->m, "p");
    assert_string_equal(S(r, "kvs.0.value"), B("2"));
    assert_int_equal(I(r, "kvs.0.version"), 2);
    assert_string_equal(S(r, "header.cluster_id"), cluster);
    assert_int_equal(I(r, "header.raft_term"), strtoll(term, NULL, 10) + 1);
    r = ok(f->m, mvcc_range, J("{\"key\":\"%s\",\"revision\":2}", B("p")));
    assert_string_equal(S(r, "kvs.0.value"), B("1"));
    r = ok(f->m, mvcc_lease_timetolive, J("{\"ID\":5,\"keys\":true}"));
    assert_int_equal(I(r, "grantedTTL"), 100);
    assert_true(I(r, "TTL") >= 98); /* a fresh full TTL */
    assert_int_equal(N(r, "keys"), 1);
    assert_int_equal(put(f->m, "p", "3"), 5);
}

#define WRITERS 8
#define PUTS_EACH 40

struct writer {
    struct mvcc *m;
    int n;
    int64_t revs[PUTS_EACH];
};

static void *writer_main(void *arg)
{
    struct writer *wr = arg;
    for (int i = 0; i < PUTS_EACH; i++) {
        char k[32];
        snprintf(k, sizeof(k), "c/%d/%d", wr->n, i);
        wr->revs[i] = put(wr->m, k, "v");
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_concurrent_puts(void **state)
{
    struct fixture *f = *state;
    struct writer ws[WRITERS];
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        ws[i] = (struct writer){.m = f->m, .n = i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &ws[i]), 0);
    }
    int64_t all[WRITERS * PUTS_EACH];
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        memcpy(&all[i * PUTS_EACH], ws[i].revs, sizeof(ws[i].revs));
    }
    qsort(all, WRITERS * PUTS_EACH, sizeof(all[0]), cmp_i64);
    for (int i = 0; i < WRITERS * PUTS_EACH; i++)
        assert_int_equal(all[i], i + 2); /* distinct, no gaps */
    mvcc_close(f->m);
    f->m = open_store(f->dir, 0);
    assert_int_equal(mvcc_revision(f->m), 1 + WRITERS * PUTS_EACH);
    json_t *r =
        ok(f->m, mvcc_range,
           J("{\"key\":\"%s\",\"range_end\":\"%s\",\"count_only\":true}", B("c/"), B("c0")));
    assert_int_equal(I(r, "count"), WRITERS * PUTS_EACH);
}

/* A watch that falls behind the ring (4096 revisions) reads the log, then
 * the ring again, without a gap. */
static void test_watch_behind_ring(void **state)
{
    struct fixture *f = *state;
    struct mvcc_watch *w =
        watch(f->m, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("c/"), B("c0")), NULL);
    struct writer ws[WRITERS];
    pthread_t th[WRITERS];
    for (int round = 0; round < 14; round++) {
        for (int i = 0; i < WRITERS; i++) {
            ws[i] = (struct writer){.m = f->m, .n = i};
            assert_int_equal(pthread_create(&th[i], NULL, writer_main, &ws[i]), 0);
        }
        for (int i = 0; i < WRITERS; i++)
            pthread_join(th[i], NULL);
    }
    int64_t want = 2, total = 14 * WRITERS * PUTS_EACH;
    while (want <= 1 + total) {
        json_t *r = next(w, 1000);
        for (size_t i = 0; i < N(r, "events"); i++) {
            char p[64];
            snprintf(p, sizeof(p), "events.%zu.kv.mod_revision", i);
            assert_int_equal(I(r, p), want++);
        }
    }
    unwatch(w);
}

/* A write acknowledged is on disk: a child puts and reports each ack, the
 * test kills it with SIGKILL mid-stream, and every acked key is there. */
static void test_kill9(void **state)
{
    struct fixture *f = *state;
    mvcc_close(f->m);
    f->m = NULL;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct mvcc *m = open_store(f->dir, 0);
        for (int i = 0;; i++) {
            char k[32];
            snprintf(k, sizeof(k), "kill/%06d", i);
            put(m, k, "v");
            if (write(fds[1], &i, sizeof(i)) != sizeof(i))
                _exit(1);
        }
    }
    close(fds[1]);
    int acked = -1, i;
    while (acked < 100 && read(fds[0], &i, sizeof(i)) == sizeof(i))
        acked = i;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(fds[0]);
    f->m = open_store(f->dir, 0);
    assert_true(mvcc_revision(f->m) >= acked + 2);
    for (i = 0; i <= acked; i++) {
        char k[32];
        snprintf(k, sizeof(k), "kill/%06d", i);
        json_t *r = get(f->m, k);
        assert_int_equal(I(r, "kvs.0.mod_revision"), i + 2);
    }
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    put(m, "keep", "1");
    fails(m, mvcc_put, J("{\"value\":\"%s\"}", B("v")), PIER_EINVAL,
          "etcdserver: key is not provided");
    fails(m, mvcc_put, J("{\"key\":\"Zm9v!\"}"), PIER_EINVAL, "\"key\" is not valid base64");
    fails(m, mvcc_put, J("{\"key\":5}"), PIER_EINVAL, "\"key\" must be a string");
    fails(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":\"x\"}", B("k")), PIER_EINVAL, "\"lease\"");
    fails(m, mvcc_put, J("{\"key\":\"%s\",\"prev_kv\":\"yes\"}", B("k")), PIER_EINVAL,
          "\"prev_kv\"");
    fails(m, mvcc_put, J("[1]"), PIER_EINVAL, "object");
    fails(m, mvcc_put, J("{\"key\":\"%s\",\"ignore_value\":true}", B("nokey")), PIER_EINVAL,
          "etcdserver: key not found");
    fails(m, mvcc_range, J("{\"key\":\"%s\",\"sort_order\":\"BAD\"}", B("k")), PIER_EINVAL,
          "field \"sort_order\": unknown value \"BAD\"");
    fails(m, mvcc_range, J("{}"), PIER_EINVAL, "key is not provided");
    fails(m, mvcc_txn, J("{\"compare\":[{\"key\":\"%s\",\"target\":\"BAD\"}]}", B("k")),
          PIER_EINVAL, "compare[0]: field \"target\": unknown value");
    fails(m, mvcc_txn, J("{\"success\":[{\"request_put\":{\"key\":\"%%%%\"}}]}"), PIER_EINVAL,
          "success[0]: request_put: field \"key\" is not valid base64");
    fails(m, mvcc_txn, J("{\"success\":[{}]}"), PIER_EINVAL, "success[0]");
    fails(m, mvcc_lease_grant, J("{\"TTL\":\"soon\"}"), PIER_EINVAL, "\"TTL\"");
    struct mvcc_watch *w = NULL;
    json_t *created = NULL;
    struct pier_err err = {0};
    json_t *cr = J("{\"key\":\"%s\",\"filters\":[\"BAD\"]}", B("k"));
    assert_int_equal(mvcc_watch_create(m, cr, &w, &created, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "filters"));
    json_decref(cr);

    /* Too large: a value past etcd's 1.5 MiB request limit. */
    size_t big = 1600 * 1024;
    char *raw = malloc(big + 1);
    memset(raw, 'x', big);
    raw[big] = '\0';
    struct buf b64 = BUF_INIT;
    base64_encode(&b64, raw, big);
    json_t *req = json_object();
    json_object_set_new(req, "key", json_string(B("big")));
    json_object_set_new(req, "value", json_string(b64.p));
    fails(m, mvcc_put, req, PIER_EINVAL, "etcdserver: request is too large");
    buf_free(&b64);
    free(raw);

    /* Nothing changed. */
    assert_int_equal(mvcc_revision(m), 2);
    json_t *r = ok(m, mvcc_range, J("{\"key\":\"AA==\",\"range_end\":\"AA==\"}"));
    assert_int_equal(I(r, "count"), 1);
}

/* ---- reviewed regressions ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* {"request_put":{"key":k}}, a new reference. */
static json_t *put_op(const char *k)
{
    json_t *p = json_object();
    json_object_set_new(p, "key", json_string(B(k)));
    json_t *op = json_object();
    json_object_set_new(op, "request_put", p);
    return op;
}

/* {"request_delete_range":{"key":k,"range_end":end}}, a new reference. */
static json_t *del_op(const char *k, const char *end)
{
    json_t *d = json_object();
    json_object_set_new(d, "key", json_string(B(k)));
    if (end) /* "" stands for "\0" */
        json_object_set_new(d, "range_end", json_string(*end ? B(end) : "AA=="));
    json_t *op = json_object();
    json_object_set_new(op, "request_delete_range", d);
    return op;
}

/* {"request_txn":{branch:ops}}, stealing ops. */
static json_t *txn_op(const char *branch, json_t *ops)
{
    json_t *t = json_object();
    json_object_set_new(t, branch, ops);
    json_t *op = json_object();
    json_object_set_new(op, "request_txn", t);
    return op;
}

/* etcd's duplicate-key rule across nested txns, each case checked against
 * etcd 3.4.23: a txn's puts meet the deletes of the txns before it, not of
 * those after; then and else may put the same key; a level's own put meets
 * every nested put. Then a big nested txn: past the tree's op cap it is
 * refused at once (it took 14 s of CPU to check, quadratically), and one
 * at the cap is checked quickly, its duplicate found at the very end. */
static void test_txn_nested_dups(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    const char *dup = "etcdserver: duplicate key given in txn request";
    json_t *ops = json_array();
    json_array_append_new(ops, txn_op("success", json_pack("[o]", put_op("a"))));
    json_array_append_new(ops, txn_op("success", json_pack("[o]", del_op("a", NULL))));
    ok(m, mvcc_txn, json_pack("{s:o}", "success", ops));
    ops = json_array();
    json_array_append_new(ops, txn_op("success", json_pack("[o]", del_op("a", "b"))));
    json_array_append_new(ops, txn_op("success", json_pack("[o]", put_op("a"))));
    fails(m, mvcc_txn, json_pack("{s:o}", "success", ops), PIER_EINVAL, dup);
    json_t *t = json_pack("{s:{s:[o],s:[o]}}", "request_txn", "success", put_op("a"), "failure",
                          put_op("a"));
    ok(m, mvcc_txn, json_pack("{s:[o]}", "success", t));
    t = json_pack("{s:{s:[o]}}", "request_txn", "failure", put_op("a"));
    fails(m, mvcc_txn, json_pack("{s:[o,o]}", "success", t, put_op("a")), PIER_EINVAL, dup);
    /* A delete ending in "\0" never conflicts (etcd's interval tree). */
    ok(m, mvcc_txn, json_pack("{s:[o,o]}", "success", del_op("a", ""), put_op("a")));

    /* 128 nested txns of 3 x 128 puts: 49k puts, as the reviewer's. */
    char k[32];
    ops = json_array();
    for (int i = 0; i < 128; i++) {
        json_t *kids = json_array();
        for (int j = 0; j < 3; j++) {
            json_t *puts = json_array();
            for (int p = 0; p < 128; p++) {
                snprintf(k, sizeof(k), "big/%d/%d/%d", i, j, p);
                json_array_append_new(puts, put_op(k));
            }
            json_array_append_new(kids, txn_op("success", puts));
        }
        json_array_append_new(ops, txn_op("success", kids));
    }
    int64_t t0 = now_ms();
    fails(m, mvcc_txn, json_pack("{s:o}", "success", ops), PIER_EINVAL,
          "etcdserver: too many operations in txn request");
    assert_true(now_ms() - t0 < 1000);

    /* 31 nested txns of 127 puts and a delete each (4000 ops in all), in
     * else branches that do not run, the last put a duplicate. */
    ops = json_array();
    for (int i = 0; i < 31; i++) {
        json_t *kids = json_array();
        snprintf(k, sizeof(k), "del/%d", i);
        json_array_append_new(kids, del_op(k, NULL));
        for (int p = 0; p < 127; p++) {
            snprintf(k, sizeof(k), "big/%d/%d", i, p);
            json_array_append_new(kids, put_op(i == 30 && p == 126 ? "big/0/0" : k));
        }
        json_array_append_new(ops, txn_op("failure", kids));
    }
    json_t *req = json_pack("{s:o}", "success", ops);
    int64_t rev = mvcc_revision(m);
    t0 = now_ms();
    fails(m, mvcc_txn, json_deep_copy(req), PIER_EINVAL, dup);
    json_t *last_kids = json_object_get(
        json_object_get(json_array_get(json_object_get(req, "success"), 30), "request_txn"),
        "failure");
    json_array_remove(last_kids, json_array_size(last_kids) - 1);
    json_t *r = ok(m, mvcc_txn, req);
    assert_true(json_is_true(at(r, "succeeded")));
    assert_int_equal(N(r, "responses"), 31);
    assert_true(now_ms() - t0 < 1000);
    assert_int_equal(mvcc_revision(m), rev); /* the else branches did not run */
}

/* A watch's response stops growing at a revision's end once it holds a few
 * MB, from the ring and from the log alike: ten revisions of 1 MiB values
 * are not one 13 MB message. */
static void check_big_batches(struct mvcc *m, int64_t first)
{
    struct mvcc_watch *w =
        watch(m,
              J("{\"key\":\"%s\",\"range_end\":\"%s\",\"start_revision\":\"%" PRId64 "\"}",
                B("bv/"), B("bv0"), first),
              NULL);
    int64_t want = first;
    int responses = 0;
    while (want < first + 10) {
        json_t *r = next(w, 2000);
        responses++;
        assert_true(N(r, "events") >= 1 && N(r, "events") <= 5);
        for (size_t i = 0; i < N(r, "events"); i++) {
            char p[64];
            snprintf(p, sizeof(p), "events.%zu.kv.mod_revision", i);
            assert_int_equal(I(r, p), want++);
        }
    }
    assert_true(responses >= 2);
    unwatch(w);
}

static void test_watch_batch_bytes(void **state)
{
    struct fixture *f = *state;
    size_t big = 1024 * 1024;
    char *raw = malloc(big);
    memset(raw, 'v', big);
    struct buf b64 = BUF_INIT;
    base64_encode(&b64, raw, big);
    free(raw);
    int64_t first = mvcc_revision(f->m) + 1;
    for (int i = 0; i < 10; i++) {
        char k[32];
        snprintf(k, sizeof(k), "bv/%d", i);
        json_t *req = json_pack("{s:s,s:s}", "key", B(k), "value", b64.p);
        json_decref(call(f->m, mvcc_put, req));
    }
    buf_free(&b64);
    check_big_batches(f->m, first); /* from the ring */
    mvcc_close(f->m);
    f->m = open_store(f->dir, 0);
    check_big_batches(f->m, first); /* from the log: a new store's ring is empty */
}

/* A progress notification's revision is one the watch has sent all events
 * up to: with every revision a put of the watched key, it never passes the
 * newest event received, however the commits fall around it. */
struct churn {
    struct mvcc *m;
    atomic_bool stop;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    while (!atomic_load(&c->stop))
        put(c->m, "pg", "v");
    return NULL;
}

static void test_watch_progress_caught_up(void **state)
{
    struct fixture *f = *state;
    mvcc_close(f->m);
    struct mvcc_options opt = {.watch_progress_interval_ms = 1};
    struct pier_err err = {0};
    f->m = NULL;
    if (mvcc_open(f->dir, &opt, &f->m, &err) != 0)
        fail_msg("open: %s", err.msg);
    int64_t seen = 0;
    struct mvcc_watch *w =
        watch(f->m, J("{\"key\":\"%s\",\"progress_notify\":true}", B("pg")), &seen);
    struct churn c = {.m = f->m};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, churn_main, &c), 0);
    int progress = 0;
    int64_t bad = 0;
    for (int64_t end = now_ms() + 1500; now_ms() < end && !bad;) {
        json_t *r = NULL;
        int rc = mvcc_watch_next(w, 0, &r);
        if (rc == 1) {
            seen = I(r, "header.revision");
            for (size_t i = 0; i < N(r, "events"); i++) {
                char p[64];
                snprintf(p, sizeof(p), "events.%zu.kv.mod_revision", i);
                assert_int_equal(I(r, p), seen - (int64_t)N(r, "events") + 1 + (int64_t)i);
            }
        } else if (rc == 0 && r) {
            progress++;
            if (I(r, "header.revision") != seen)
                bad = I(r, "header.revision");
        }
        json_decref(r);
    }
    atomic_store(&c.stop, true);
    pthread_join(th, NULL);
    unwatch(w);
    if (bad)
        fail_msg("progress at %" PRId64 " with events sent up to %" PRId64, bad, seen);
    assert_true(progress > 0);
}

/* Leases due together expire together: 50 leases of TTL 1 are gone within
 * about 1.5 s, one revision each, consecutive (one group commit). */
static void test_lease_expiry_group(void **state)
{
    struct mvcc *m = ((struct fixture *)*state)->m;
    struct mvcc_watch *w =
        watch(m, J("{\"key\":\"%s\",\"range_end\":\"%s\"}", B("eg/"), B("eg0")), NULL);
    for (int i = 0; i < 50; i++) {
        json_t *r = ok(m, mvcc_lease_grant, J("{\"TTL\":1}"));
        char k[32];
        snprintf(k, sizeof(k), "eg/%02d", i);
        ok(m, mvcc_put, J("{\"key\":\"%s\",\"lease\":\"%" PRId64 "\"}", B(k), I(r, "ID")));
    }
    int64_t rev = mvcc_revision(m), t0 = now_ms();
    int64_t revs[50];
    int got = 0;
    while (got < 50) {
        json_t *r = next(w, 3000);
        for (size_t i = 0; i < N(r, "events"); i++) {
            char p[64];
            snprintf(p, sizeof(p), "events.%zu.type", i);
            if (!S(r, p) || strcmp(S(r, p), "DELETE") != 0)
                continue;
            snprintf(p, sizeof(p), "events.%zu.kv.mod_revision", i);
            assert_true(got < 50);
            revs[got++] = I(r, p);
        }
    }
    assert_true(now_ms() - t0 < 1500);
    for (int i = 0; i < 50; i++)
        assert_int_equal(revs[i], rev + 1 + i);
    assert_int_equal(mvcc_revision(m), rev + 50);
    unwatch(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_limit_sort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_history, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_puts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_behind_ring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_txn_nested_dups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_batch_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_progress_caught_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_expiry_group, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
