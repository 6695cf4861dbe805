/* Tests that the store's files stay bounded under load (mvcc_upkeep.c and
 * auto-compaction): k3s' kine let its SQLite WAL grow to 240 GB, its
 * compaction fail with "database is locked" and never vacuumed. Several
 * writers put a sustained stream while a watch and readers run; a sampler
 * watches store.db-wal's size and the history table's rows throughout.
 *
 * The bounds are loose multiples of the upkeep's thresholds (a restart of
 * the WAL past 8 MiB, TRUNCATE past 16 MiB): with the upkeep's checkpoints
 * off, this load takes the WAL past 100 MiB. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "store/mvcc.h"

#define WRITERS 4
#define PUTS 30000
#define KEYS 256
#define VALUE_BYTES 1024
#define READERS 2
#define KEEP 1000

#define MIB (1 << 20)
#define WAL_BOUND (32 * MIB)
/* Compaction keeps 7/8 of KEEP to KEEP revisions, plus each key's newest
 * entry at the compacted revision. */
#define LOG_ROWS_BOUND (KEEP + KEYS + 64)
#define DB_BOUND (12 * MIB)
/* After everything is deleted and compacted. */
#define FREE_PAGES_BOUND 256
#define EMPTY_DB_BOUND (2 * MIB)

struct load {
    char dir[64];
    char wal[96];
    struct mvcc *m;
    struct buf value; /* base64 of the VALUE_BYTES value */
    int puts;         /* how many puts the writers make in all */
    int put_pause_ms; /* each writer's pause between puts */
    atomic_int next_put;
    atomic_bool stop;     /* readers, watcher, sampler */
    atomic_bool stop_put; /* writers, when they run until told */
    atomic_llong wal_max, rows_max;
    atomic_long events, reads, rewatches, errors;
    char first_error[640];
    pthread_mutex_t err_mu;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Threads other than the main one cannot fail a cmocka test: they count
 * errors, and the main thread asserts there were none. */
static void note_error(struct load *l, const char *what, const char *msg)
{
    if (atomic_fetch_add(&l->errors, 1) == 0) {
        pthread_mutex_lock(&l->err_mu);
        snprintf(l->first_error, sizeof(l->first_error), "%s: %s", what, msg);
        pthread_mutex_unlock(&l->err_mu);
    }
}

static void b64(struct buf *out, const char *s, size_t n)
{
    *out = (struct buf)BUF_INIT;
    base64_encode(out, s, n);
}

static void key_b64(int i, struct buf *out)
{
    char k[32];
    int n = snprintf(k, sizeof(k), "k/%03d", i % KEYS);
    b64(out, k, (size_t)n);
}

static int64_t wal_size(const struct load *l)
{
    struct stat sb;
    return stat(l->wal, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

static int64_t file_size(const struct load *l, const char *name)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", l->dir, name);
    struct stat sb;
    return stat(path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

/* One integer from a read-only connection of the test's own; -1 on error. */
static int64_t query_int(const struct load *l, const char *sql)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/store.db", l->dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void raise_max(atomic_llong *max, int64_t v)
{
    int64_t cur = atomic_load(max);
    while (v > cur && !atomic_compare_exchange_weak(max, &cur, v))
        ;
}

static int put_one(struct load *l, int i)
{
    struct buf k;
    key_b64(i * 7919, &k); /* spread consecutive puts over the keys */
    json_t *req = json_pack("{s:s,s:s}", "key", k.p, "value", l->value.p);
    json_t *resp = NULL;
    struct pier_err err = {0};
    int rc = mvcc_put(l->m, req, &resp, &err);
    if (rc != 0)
        note_error(l, "put", err.msg);
    json_decref(req);
    json_decref(resp);
    buf_free(&k);
    return rc;
}

/* Puts until l->puts were made in all, or until stop_put. */
static void *writer_main(void *arg)
{
    struct load *l = arg;
    for (;;) {
        int i = atomic_fetch_add(&l->next_put, 1);
        if (atomic_load(&l->stop_put) || i >= l->puts)
            break;
        if (put_one(l, i) != 0)
            break;
        if (l->put_pause_ms)
            nap_ms(l->put_pause_ms);
    }
    return NULL;
}

/* Range reads of 5 keys with their values, 1 ms apart. */
static void *reader_main(void *arg)
{
    struct load *l = arg;
    struct buf from, to;
    b64(&from, "k/", 2);
    b64(&to, "k0", 2);
    while (!atomic_load(&l->stop)) {
        json_t *req = json_pack("{s:s,s:s,s:s}", "key", from.p, "range_end", to.p, "limit", "5");
        json_t *resp = NULL;
        struct pier_err err = {0};
        if (mvcc_range(l->m, req, &resp, &err) != 0)
            note_error(l, "range", err.msg);
        else
            atomic_fetch_add(&l->reads, 1);
        json_decref(req);
        json_decref(resp);
        nap_ms(1);
    }
    buf_free(&from);
    buf_free(&to);
    return NULL;
}

static struct mvcc_watch *watch_prefix(struct load *l)
{
    struct buf from, to;
    b64(&from, "k/", 2);
    b64(&to, "k0", 2);
    json_t *cr = json_pack("{s:s,s:s}", "key", from.p, "range_end", to.p);
    struct mvcc_watch *w = NULL;
    json_t *created = NULL;
    struct pier_err err = {0};
    if (mvcc_watch_create(l->m, cr, &w, &created, &err) != 0)
        note_error(l, "watch", err.msg);
    json_decref(cr);
    json_decref(created);
    buf_free(&from);
    buf_free(&to);
    return w;
}

/* Follows every change under k/. A watch that falls behind the compaction
 * is canceled (as etcd's is); it watches again from now, as a client would. */
static void *watcher_main(void *arg)
{
    struct load *l = arg;
    struct mvcc_watch *w = watch_prefix(l);
    while (w && !atomic_load(&l->stop)) {
        json_t *resp = NULL;
        int rc = mvcc_watch_next(w, 100, &resp);
        if (rc == 1 && json_is_true(json_object_get(resp, "canceled"))) {
            mvcc_watch_free(w);
            w = watch_prefix(l);
            atomic_fetch_add(&l->rewatches, 1);
        } else if (rc == 1) {
            atomic_fetch_add(&l->events, (long)json_array_size(json_object_get(resp, "events")));
        } else if (rc < 0) {
            note_error(l, "watch_next", "failed");
            break;
        }
        json_decref(resp);
    }
    mvcc_watch_free(w);
    return NULL;
}

/* The WAL's size every 5 ms, the history's rows every 100 ms. */
static void *sampler_main(void *arg)
{
    struct load *l = arg;
    for (int n = 0; !atomic_load(&l->stop); n++) {
        raise_max(&l->wal_max, wal_size(l));
        if (n % 20 == 0)
            raise_max(&l->rows_max, query_int(l, "SELECT count(*) FROM log"));
        nap_ms(5);
    }
    return NULL;
}

static int setup(void **state)
{
    struct load *l = calloc(1, sizeof(*l));
    snprintf(l->dir, sizeof(l->dir), "/tmp/test_mvcc_upkeep.XXXXXX");
    if (!mkdtemp(l->dir))
        return -1;
    snprintf(l->wal, sizeof(l->wal), "%s/store.db-wal", l->dir);
    l->puts = PUTS;
    pthread_mutex_init(&l->err_mu, NULL);
    char *v = malloc(VALUE_BYTES);
    for (int i = 0; i < VALUE_BYTES; i++)
        v[i] = (char)('a' + i % 26);
    b64(&l->value, v, VALUE_BYTES);
    free(v);
    struct mvcc_options opt = {.auto_compact_revisions = KEEP};
    struct pier_err err = {0};
    if (mvcc_open(l->dir, &opt, &l->m, &err) != 0) {
        fprintf(stderr, "open: %s\n", err.msg);
        return -1;
    }
    *state = l;
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    struct load *l = *state;
    mvcc_close(l->m);
    nftw(l->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    buf_free(&l->value);
    pthread_mutex_destroy(&l->err_mu);
    free(l);
    return 0;
}

static void assert_no_errors(struct load *l)
{
    if (atomic_load(&l->errors))
        fail_msg("%ld errors, the first: %s", atomic_load(&l->errors), l->first_error);
}

/* Waits up to ms for query to answer at most max; returns the last answer. */
static int64_t wait_query_at_most(struct load *l, const char *query, int64_t max, int ms)
{
    int64_t v = query_int(l, query);
    for (int64_t until = now_ms() + ms; (v < 0 || v > max) && now_ms() < until;) {
        nap_ms(50);
        v = query_int(l, query);
    }
    return v;
}

/* Deletes every key and compacts everything away: the upkeep gives the
 * freed pages back to the file system. */
static void check_pages_reclaimed(struct load *l)
{
    struct buf from, to;
    b64(&from, "k/", 2);
    b64(&to, "k0", 2);
    json_t *req = json_pack("{s:s,s:s}", "key", from.p, "range_end", to.p);
    json_t *resp = NULL;
    struct pier_err err = {0};
    assert_int_equal(mvcc_delete_range(l->m, req, &resp, &err), 0);
    json_decref(req);
    json_decref(resp);
    char rev[32];
    snprintf(rev, sizeof(rev), "%" PRId64, mvcc_revision(l->m));
    req = json_pack("{s:s}", "revision", rev);
    assert_int_equal(mvcc_compact(l->m, req, &resp, &err), 0);
    json_decref(req);
    json_decref(resp);
    buf_free(&from);
    buf_free(&to);
    int64_t free_pages = wait_query_at_most(l, "PRAGMA freelist_count", FREE_PAGES_BOUND, 5000);
    int64_t pages = query_int(l, "PRAGMA page_count");
    print_message("after deleting and compacting everything: %" PRId64 " pages, %" PRId64 " free\n",
                  pages, free_pages);
    assert_in_range(free_pages, 0, FREE_PAGES_BOUND);
    assert_in_range(pages * query_int(l, "PRAGMA page_size"), 0, EMPTY_DB_BOUND);
}

static void test_sustained_load(void **state)
{
    struct load *l = *state;
    pthread_t writers[WRITERS], readers[READERS], watcher, sampler;
    int64_t t0 = now_ms();
    assert_int_equal(pthread_create(&sampler, NULL, sampler_main, l), 0);
    assert_int_equal(pthread_create(&watcher, NULL, watcher_main, l), 0);
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, reader_main, l), 0);
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_create(&writers[i], NULL, writer_main, l), 0);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(writers[i], NULL);
    int64_t t1 = now_ms();
    nap_ms(300); /* the watch catches up */
    atomic_store(&l->stop, true);
    for (int i = 0; i < READERS; i++)
        pthread_join(readers[i], NULL);
    pthread_join(watcher, NULL);
    pthread_join(sampler, NULL);
    assert_no_errors(l);
    int64_t rows = query_int(l, "SELECT count(*) FROM log");
    raise_max(&l->rows_max, rows);
    print_message("%d puts in %.1f s; %ld reads, %ld watch events (%ld rewatches); largest WAL "
                  "%.1f MiB, most history rows %lld; store.db %.1f MiB\n",
                  PUTS, (double)(t1 - t0) / 1000, atomic_load(&l->reads), atomic_load(&l->events),
                  atomic_load(&l->rewatches), (double)atomic_load(&l->wal_max) / MIB,
                  (long long)atomic_load(&l->rows_max), (double)file_size(l, "store.db") / MIB);
    assert_true(atomic_load(&l->reads) > 0);
    assert_true(atomic_load(&l->events) > 0);
    assert_in_range(atomic_load(&l->wal_max), 1, WAL_BOUND);
    assert_in_range(atomic_load(&l->rows_max), KEEP * 7 / 8, LOG_ROWS_BOUND);
    assert_in_range(file_size(l, "store.db"), 1, DB_BOUND);
    check_pages_reclaimed(l);
    assert_in_range(wal_size(l), 0, WAL_BOUND);
}

/* ---- a reader that never ends ---- */

/* The engine's log lines, captured from stderr into a file. */
struct capture {
    char path[96];
    int saved;
};

static void capture_start(struct capture *c, const struct load *l)
{
    snprintf(c->path, sizeof(c->path), "%s/log", l->dir);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    c->saved = dup(2);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(fd, 2), 2);
    close(fd);
}

static void capture_stop(struct capture *c)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
}

static bool captured(const struct capture *c, const char *want)
{
    FILE *f = fopen(c->path, "r");
    char line[1024];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f))
        found = strstr(line, want) != NULL;
    if (f)
        fclose(f);
    return found;
}

static bool wait_captured(const struct capture *c, const char *want, int ms)
{
    for (int64_t until = now_ms() + ms; now_ms() < until; nap_ms(50))
        if (captured(c, want))
            return true;
    return captured(c, want);
}

/* Prints the captured lines about the WAL, for the test's log. */
static void show_captured(const struct capture *c)
{
    FILE *f = fopen(c->path, "r");
    char line[1024];
    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, "WAL"))
            print_message("%s", line);
    if (f)
        fclose(f);
}

#define HELD_BACK "msg=\"WAL checkpoints are held back\""
#define CAUGHT_UP "msg=\"WAL checkpoints caught up\""

/* A read transaction that stays open (another process, or a stuck client
 * of the database) keeps the WAL from restarting: nothing can change that,
 * but the log must say so, and once the reader is gone the WAL must shrink
 * back at once. */
static void test_reader_holds_wal(void **state)
{
    struct load *l = *state;
    l->puts = INT32_MAX;
    l->put_pause_ms = 2; /* enough WAL, not hundreds of MiB */
    struct capture cap;
    capture_start(&cap, l);
    pthread_t writers[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&writers[i], NULL, writer_main, l), 0);
    nap_ms(200); /* some WAL for the reader to hold on to */
    char path[128];
    snprintf(path, sizeof(path), "%s/store.db", l->dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM kv", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    sqlite3_finalize(st);
    bool held_back = wait_captured(&cap, HELD_BACK, 10000);
    int64_t held = wal_size(l);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    bool caught_up = wait_captured(&cap, CAUGHT_UP, 5000);
    int64_t after = wal_size(l);
    atomic_store(&l->stop_put, true);
    for (int i = 0; i < 2; i++)
        pthread_join(writers[i], NULL);
    capture_stop(&cap);
    show_captured(&cap);
    print_message("WAL %.1f MiB while the reader held it, %.1f MiB once it was gone\n",
                  (double)held / MIB, (double)after / MIB);
    assert_no_errors(l);
    assert_true(held_back);
    assert_true(caught_up);
    assert_true(held > 8 * MIB); /* it did hold the WAL */
    assert_in_range(after, 0, 16 * MIB);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sustained_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_holds_wal, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
