/* mvcc_upkeep: keeps the store's files bounded without stalling commits.
 *
 * In WAL mode every commit appends its pages to store.db-wal. A checkpoint
 * copies them back into store.db; once every page of the WAL has been
 * copied and no reader still reads from it, the next commit starts writing
 * at the WAL's beginning again (a "restart"), so the file stops growing.
 * Left to itself, SQLite checkpoints inside the commit that takes the WAL
 * past 1000 pages: every write of that group waits for 4 MiB of copying and
 * an fsync of store.db. And while readers come and go without a pause, that
 * checkpoint never completes, the WAL never restarts and grows without
 * bound (k3s' kine reached 240 GB that way).
 *
 * So the writer's connection has wal_autocheckpoint=0, and a WAL hook that
 * only notes the WAL's length after each commit. This thread, on its own
 * connection, does the rest, every TICK_MS or as soon as the hook says the
 * WAL grew by another CKPT_BYTES:
 *
 * - PASSIVE checkpoints, once CKPT_BYTES were appended and at least every
 *   CKPT_INTERVAL_MS while there are writes. PASSIVE takes no lock that the
 *   writer or the readers need, so the copying and the fsync of store.db
 *   happen beside the commits, never inside them. It copies what no reader
 *   still needs; the rest waits for the next one.
 * - Restarting the WAL. Under a steady stream of commits a checkpoint on
 *   another thread always ends a few commits behind, so the WAL would not
 *   restart by itself. Once it holds RESET_BYTES, this thread first catches
 *   up with PASSIVE checkpoints until only a few commits are left, then
 *   closes the gate (the writer passes it for each group's transaction) so
 *   that no commit starts, and runs a RESTART checkpoint:
 *   it copies that short tail and lets the readers still reading the WAL
 *   finish (new ones read store.db alone meanwhile). The writer's next
 *   commit then starts at the WAL's beginning. This pause, the tail's copy
 *   and an fsync of store.db (0.4-1 ms on the benchmark's machine) plus the
 *   wait for readers, once every RESET_BYTES of WAL, is all a restart
 *   costs the writer. The wait for readers starts at zero ("when the
 *   readers allow") and, while readers are in the way, doubles with each
 *   try, up to READER_WAIT_MAX_MS; the tries come RETRY_MS or twice the
 *   wait apart, so they hold the writer up a third of the time at most;
 *   the next restart starts from half the wait that worked. Past
 *   TRUNCATE_BYTES (a huge transaction, or a stretch when readers held the
 *   WAL), the checkpoint is TRUNCATE instead and the space goes back to
 *   the file system. Below that the file is reused: fdatasync on a file
 *   that grew must also write its new size, on one overwritten it need not.
 * - When restarting has failed for STUCK_MS (a reader, or another process,
 *   keeps an old snapshot: nothing can restart the WAL then), the log says
 *   so, at most once a minute, the tries come once a second (holding the
 *   writer up a few percent of the time), and the log says so again once
 *   the WAL restarts.
 * - Free pages. After a compaction, and every VACUUM_CHECK_MS while there
 *   are writes, when the free list holds more than VACUUM_MIN_PAGES and a
 *   quarter of the file, PRAGMA incremental_vacuum gives the free pages
 *   back, VACUUM_CHUNK pages at a time, each chunk its own transaction
 *   with the gate closed, so the writer never waits for more than one
 *   chunk.
 *
 * The gate, not SQLite's write lock alone, is what keeps the writer out, so
 * that a writer that has to wait is woken as soon as the upkeep is done
 * rather than sleeping in SQLite's busy handler (1, 2, 5, 10... ms at a
 * time), and so that the upkeep gets its turn at the next group's end. The
 * upkeep
 * connection's busy handler waits only as long as the current step allows
 * (u->wait_until_us); PASSIVE checkpoints never call it. */
#include "store/mvcc_int.h"

#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/log.h"

#define TICK_MS 100
#define RETRY_MS 10
#define CKPT_BYTES (4 << 20)
#define CKPT_INTERVAL_MS 1000
#define RESET_BYTES (8 << 20)
#define TRUNCATE_BYTES (16 << 20)
/* A restart waits until the uncopied tail is this short (in frames). */
#define TAIL_FRAMES 64
#define CATCH_UP_TRIES 4
#define READER_WAIT_MAX_MS 32
#define SLOW_RETRY_MS 1000
#define STUCK_MS 3000
#define LOG_EVERY_MS 60000
#define VACUUM_CHECK_MS 1000
#define VACUUM_MIN_PAGES 256
#define VACUUM_CHUNK "256"

struct upkeep {
    struct conn *c; /* the upkeep thread's own connection */
    char *wal_path;
    int64_t frame_bytes; /* a WAL frame: a page and its 24-byte header */
    bool can_vacuum;     /* auto_vacuum=INCREMENTAL (a store made by pier) */
    pthread_t th;
    bool running;

    /* Wakeups, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop, kick;

    /* Written by the WAL hook, on the writer's thread. */
    _Atomic int64_t wal_frames; /* frames in the WAL after the last commit */
    _Atomic uint64_t wal_gen;   /* counts the commits that restarted it */
    _Atomic uint64_t commits;

    /* The upkeep thread's own. */
    int64_t wait_until_us; /* until when the busy handler may wait */
    uint64_t gen_seen, commits_ckpt, commits_vacuum;
    int64_t copied;   /* frames of this WAL generation copied to store.db */
    int64_t reset_at; /* its length when a restart was last arranged; 0: none */
    bool ckpt_due;
    int64_t ckpt_ms, vacuum_ms, next_reset_ms;
    int wait_ms;              /* how long the next restart may wait for readers */
    int64_t failing_since_ms; /* when restarting began to fail; 0: it did not */
    int64_t warn_ms, err_ms;
    bool warned;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* SQLite's busy handler for the upkeep connection: yields at first (the
 * readers it waits for may need this core), then naps. */
static int busy_wait(void *arg, int n)
{
    struct upkeep *u = arg;
    if (now_us() >= u->wait_until_us)
        return 0;
    if (n < 16) {
        sched_yield();
    } else {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

static void wake(struct upkeep *u, bool kick)
{
    pthread_mutex_lock(&u->mu);
    if (kick)
        u->kick = true;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->mu);
}

/* Runs on the writer's thread after each commit, the write lock released. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct upkeep *u = arg;
    (void)db;
    (void)name;
    int64_t prev = atomic_exchange(&u->wal_frames, frames);
    if (frames < prev)
        atomic_fetch_add(&u->wal_gen, 1);
    atomic_fetch_add(&u->commits, 1);
    int64_t step = CKPT_BYTES / u->frame_bytes;
    if (frames / step > prev / step)
        wake(u, false);
    return SQLITE_OK;
}

/* ---- the gate ---- */

void mvcc_gate_enter(struct mvcc *m)
{
    pthread_mutex_lock(&m->gate_mu);
    while (m->gate_upkeep) {
        m->gate_waiting = true;
        pthread_cond_wait(&m->gate_cond, &m->gate_mu);
    }
    m->gate_waiting = false;
    m->gate_writer = true;
    pthread_mutex_unlock(&m->gate_mu);
}

void mvcc_gate_leave(struct mvcc *m)
{
    pthread_mutex_lock(&m->gate_mu);
    m->gate_writer = false;
    m->gate_passes++;
    pthread_cond_broadcast(&m->gate_cond);
    pthread_mutex_unlock(&m->gate_mu);
}

/* The upkeep's claim comes first: once it asks, the writer starts no new
 * group (a plain mutex would let the writer, which takes it again at once,
 * starve the upkeep for hundreds of milliseconds). */
static void gate_close(struct mvcc *m)
{
    pthread_mutex_lock(&m->gate_mu);
    m->gate_upkeep = true;
    while (m->gate_writer)
        pthread_cond_wait(&m->gate_cond, &m->gate_mu);
    pthread_mutex_unlock(&m->gate_mu);
}

static void gate_open(struct mvcc *m)
{
    pthread_mutex_lock(&m->gate_mu);
    m->gate_upkeep = false;
    pthread_cond_broadcast(&m->gate_cond);
    pthread_mutex_unlock(&m->gate_mu);
}

/* Opens the gate and, if the writer was waiting at it, lets it through for
 * one group before the upkeep's next step. */
static void gate_open_let_through(struct mvcc *m)
{
    pthread_mutex_lock(&m->gate_mu);
    bool waiting = m->gate_waiting;
    uint64_t passes = m->gate_passes;
    m->gate_upkeep = false;
    pthread_cond_broadcast(&m->gate_cond);
    while (waiting && m->gate_passes == passes)
        pthread_cond_wait(&m->gate_cond, &m->gate_mu);
    pthread_mutex_unlock(&m->gate_mu);
}

void mvcc_upkeep_kick(struct mvcc *m)
{
    if (m->up)
        wake(m->up, true);
}

static bool stopping(struct upkeep *u)
{
    pthread_mutex_lock(&u->mu);
    bool stop = u->stop;
    pthread_mutex_unlock(&u->mu);
    return stop;
}

static int64_t pragma_int(struct conn *c, const char *sql)
{
    struct pier_err e;
    sqlite3_stmt *st cleanup_stmt = NULL;
    if (conn_stmt(c, sql, &st, &e) < 0)
        return -1;
    return sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
}

static int64_t wal_bytes(struct upkeep *u)
{
    struct stat sb;
    return stat(u->wal_path, &sb) == 0 ? (int64_t)sb.st_size : 0;
}

/* Logs a failure other than SQLITE_BUSY, at most once a minute. */
static void log_failure(struct upkeep *u, const char *what, int rc)
{
    int64_t now = mvcc_now_ms();
    if (u->err_ms && now - u->err_ms < LOG_EVERY_MS)
        return;
    u->err_ms = now;
    log_warn("store", "upkeep failed", "step=\"%s\" error=\"%s (%s)\"", what,
             sqlite3_errmsg(u->c->db), sqlite3_errstr(rc));
}

/* A checkpoint in mode; returns SQLite's result, with *left the frames it
 * could not copy. */
static int checkpoint(struct upkeep *u, int mode, int *left)
{
    int nlog = -1, ncopied = -1;
    int rc = sqlite3_wal_checkpoint_v2(u->c->db, NULL, mode, &nlog, &ncopied);
    *left = nlog - ncopied;
    if (rc == SQLITE_OK || (rc & 0xff) == SQLITE_BUSY) {
        if (ncopied >= 0)
            u->copied = ncopied;
        return rc;
    }
    log_failure(u, mode == SQLITE_CHECKPOINT_PASSIVE ? "checkpoint" : "WAL restart", rc);
    return rc;
}

static void say_stuck(struct upkeep *u, int64_t now, int64_t bytes)
{
    if (!u->failing_since_ms)
        u->failing_since_ms = now;
    if (now - u->failing_since_ms < STUCK_MS || (u->warned && now - u->warn_ms < LOG_EVERY_MS))
        return;
    log_warn("store", "WAL checkpoints are held back",
             "wal_bytes=%" PRId64 " for_ms=%" PRId64
             " cause=\"a reader or another process keeps an old snapshot\"",
             bytes, now - u->failing_since_ms);
    u->warned = true;
    u->warn_ms = now;
}

/* Makes the writer's next commit start at the WAL's beginning (see the top
 * comment): catches up outside the gate, then copies the tail and waits
 * for the WAL's readers under it. */
static void reset_wal(struct mvcc *m, int64_t bytes, int64_t now)
{
    struct upkeep *u = m->up;
    if (now < u->next_reset_ms)
        return;
    int left = 0;
    for (int i = 0; i < CATCH_UP_TRIES; i++)
        if (checkpoint(u, SQLITE_CHECKPOINT_PASSIVE, &left) != SQLITE_OK || left <= TAIL_FRAMES)
            break;
    int mode = bytes > TRUNCATE_BYTES ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_RESTART;
    int wait_ms = u->wait_ms;
    gate_close(m);
    u->wait_until_us = now_us() + wait_ms * 1000;
    int rc = checkpoint(u, mode, &left);
    int64_t frames = atomic_load(&u->wal_frames); /* no commit under the gate */
    u->wait_until_us = 0;
    gate_open(m);
    if (rc == SQLITE_OK) {
        u->reset_at = frames;
        u->copied = frames;
        if (u->warned)
            log_info("store", "WAL checkpoints caught up", "after_ms=%" PRId64,
                     now - u->failing_since_ms);
        u->warned = false;
        u->wait_ms = wait_ms / 2;
        u->failing_since_ms = 0;
        u->next_reset_ms = 0;
        return;
    }
    u->wait_ms = wait_ms ? 2 * wait_ms : 1;
    if (u->wait_ms > READER_WAIT_MAX_MS)
        u->wait_ms = READER_WAIT_MAX_MS;
    say_stuck(u, now, bytes);
    /* Soon, but never holding the writer up more than a third of the time;
     * once a second when it is stuck. */
    int64_t pause = u->warned ? SLOW_RETRY_MS : 2 * wait_ms > RETRY_MS ? 2 * wait_ms : RETRY_MS;
    u->next_reset_ms = now + pause;
}

/* Gives free pages back when the free list is large, a chunk at a time. */
static void vacuum(struct mvcc *m)
{
    struct upkeep *u = m->up;
    if (!u->can_vacuum)
        return;
    int64_t free_pages = pragma_int(u->c, "PRAGMA freelist_count");
    int64_t pages = pragma_int(u->c, "PRAGMA page_count");
    if (free_pages <= VACUUM_MIN_PAGES || free_pages * 4 <= pages)
        return;
    while (free_pages > 0 && !stopping(u)) {
        struct pier_err e;
        gate_close(m);
        int rc = conn_exec(u->c, "PRAGMA incremental_vacuum(" VACUUM_CHUNK ")", &e);
        gate_open_let_through(m);
        if (rc < 0) {
            log_warn("store", "incremental vacuum failed", "error=\"%s\"", e.msg);
            break;
        }
        int64_t left = pragma_int(u->c, "PRAGMA freelist_count");
        if (left < 0 || left >= free_pages)
            break;
        free_pages = left;
    }
    u->ckpt_due = true; /* the vacuum's own commits are in the WAL now */
}

static void tick(struct mvcc *m, bool kicked)
{
    struct upkeep *u = m->up;
    int64_t now = mvcc_now_ms();
    uint64_t gen = atomic_load(&u->wal_gen);
    if (gen != u->gen_seen) { /* a commit restarted the WAL */
        u->gen_seen = gen;
        u->copied = 0;
        u->reset_at = 0;
    }
    int64_t frames = atomic_load(&u->wal_frames);
    uint64_t commits = atomic_load(&u->commits);
    int left;
    if (u->ckpt_due || frames - u->copied >= CKPT_BYTES / u->frame_bytes ||
        (commits != u->commits_ckpt && now - u->ckpt_ms >= CKPT_INTERVAL_MS)) {
        u->ckpt_due = false;
        u->commits_ckpt = commits;
        u->ckpt_ms = now;
        checkpoint(u, SQLITE_CHECKPOINT_PASSIVE, &left);
    }
    int64_t bytes = wal_bytes(u);
    if ((frames * u->frame_bytes >= RESET_BYTES && frames != u->reset_at) || bytes > TRUNCATE_BYTES)
        reset_wal(m, bytes, now);
    if (kicked || (commits != u->commits_vacuum && now - u->vacuum_ms >= VACUUM_CHECK_MS)) {
        u->commits_vacuum = commits;
        u->vacuum_ms = now;
        vacuum(m);
    }
}

static void *upkeep_main(void *arg)
{
    struct mvcc *m = arg;
    struct upkeep *u = m->up;
    pthread_mutex_lock(&u->mu);
    while (!u->stop) {
        if (!u->kick) {
            struct timespec ts;
            int64_t until = mvcc_now_ms() + TICK_MS;
            if (u->failing_since_ms && u->next_reset_ms < until) /* a restart to retry */
                until = u->next_reset_ms;
            ts.tv_sec = until / 1000;
            ts.tv_nsec = (until % 1000) * 1000000;
            pthread_cond_timedwait(&u->cond, &u->mu, &ts);
        }
        if (u->stop)
            break;
        bool kicked = u->kick;
        u->kick = false;
        pthread_mutex_unlock(&u->mu);
        tick(m, kicked);
        conn_trim(u->c);
        pthread_mutex_lock(&u->mu);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

static int open_conn(struct mvcc *m, struct upkeep *u, struct pier_err *err)
{
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/store.db", m->dir) < 0 ||
        asprintf(&u->wal_path, "%s/store.db-wal", m->dir) < 0)
        abort();
    int rc = conn_open(path, false, &u->c, err);
    if (rc == 0)
        rc = conn_script(u->c,
                         "PRAGMA query_only=0;"
                         "PRAGMA synchronous=FULL;"
                         "PRAGMA wal_autocheckpoint=0;",
                         err);
    if (rc < 0)
        return rc;
    sqlite3_busy_handler(u->c->db, busy_wait, u);
    int64_t page = pragma_int(u->c, "PRAGMA page_size");
    if (page <= 0)
        return err_set(err, PIER_EINTERNAL, "store database %s: cannot read its page size", path);
    u->frame_bytes = page + 24;
    u->can_vacuum = pragma_int(u->c, "PRAGMA auto_vacuum") == 2;
    return 0;
}

int mvcc_upkeep_start(struct mvcc *m, struct pier_err *err)
{
    struct upkeep *u = xcalloc(1, sizeof(*u));
    m->up = u;
    pthread_condattr_t attr;
    if (pthread_mutex_init(&u->mu, NULL) != 0 || pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&u->cond, &attr) != 0)
        abort();
    pthread_condattr_destroy(&attr);
    int rc = open_conn(m, u, err);
    if (rc < 0)
        return rc;
    /* A WAL left by a crash is copied now, before the writer runs, and
     * restarted or truncated by the first tick. */
    int nlog = 0, ncopied = 0;
    if (sqlite3_wal_checkpoint_v2(u->c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &ncopied) ==
            SQLITE_OK &&
        nlog > 0)
        atomic_store(&u->wal_frames, nlog);
    u->copied = ncopied > 0 ? ncopied : 0;
    sqlite3_wal_hook(m->wconn->db, wal_hook, u);
    if (pthread_create(&u->th, NULL, upkeep_main, m) != 0)
        return err_set(err, PIER_EINTERNAL, "store: cannot start the upkeep thread");
    u->running = true;
    return 0;
}

void mvcc_upkeep_stop(struct mvcc *m)
{
    struct upkeep *u = m->up;
    if (!u)
        return;
    pthread_mutex_lock(&u->mu);
    u->stop = true;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->mu);
    if (u->running)
        pthread_join(u->th, NULL);
    if (m->wconn)
        sqlite3_wal_hook(m->wconn->db, NULL, NULL);
    conn_close(u->c);
    pthread_mutex_destroy(&u->mu);
    pthread_cond_destroy(&u->cond);
    free(u->wal_path);
    free(u);
    m->up = NULL;
}
