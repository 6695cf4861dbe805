/* mvcc: the store engine's core: the database, its connections, and the
 * writer that commits writes in groups. The key-value requests are in
 * mvcc_kv.c, watches in mvcc_watch.c, leases in mvcc_lease.c.
 *
 * Verified against etcd 3.4.23 (its v3 JSON gateway, with curl), and matched
 * here: the response shapes and which default fields are omitted (no "kvs"
 * or "count" when nothing matched, "more" only when true, "succeeded" only
 * when true, "responses" only when non-empty, a kv without "value" when it is
 * empty and without "lease" when 0, a DELETE event's kv with only "key" and
 * "mod_revision", a PUT event without "type"); int64 as decimal strings;
 * which writes bump the revision (a delete or lease revoke matching nothing
 * does not, a txn without changes does not, all changes of a txn share one
 * revision); txn sub-response headers ({"revision"} as each op saw it, "{}"
 * for a nested txn), compares evaluated before any op runs (nested ones too),
 * a compare of VALUE on a missing key always false; etcd's duplicate-key
 * rule for txns (a put twice, or a put inside a delete range, per branch);
 * compaction keeps each key's newest entry at the compacted revision (so a
 * read or watch at exactly that revision works); the error texts
 * ("etcdserver: mvcc: required revision has been compacted", "...is a future
 * revision", "etcdserver: requested lease not found", "etcdserver: key is
 * not provided", "etcdserver: duplicate key given in txn request",
 * "etcdserver: request is too large", "etcdserver: lease already exists",
 * ...); leases (TTL raised to at least 1, an unknown lease's keepalive answers
 * without TTL and its timetolive with TTL -1, revoke and expiry delete the
 * attached keys in one revision); watches (history batched into one
 * response, the compacted case answered with a header without revision,
 * "canceled" and "compact_revision", even etcd's -1 for a negative
 * start_revision on a never-compacted store; progress notifications are a
 * bare header). The header's cluster_id and member_id are random per
 * database, raft_term counts the opens.
 *
 * Storage: SQLite in WAL mode, synchronous=FULL (an acknowledged write
 * survives SIGKILL and power loss), auto_vacuum=INCREMENTAL. Table kv holds
 * the current state, log every change (the history: a row per key per
 * revision, deletes as tombstones), leases the granted leases, meta the
 * revision, the compacted revision and the header ids. A read at an old
 * revision takes, for each key in range, its newest log row at or below it.
 *
 * Group commit: every write is queued to one writer thread, which takes all
 * that is queued, applies each in order inside one transaction (each in a
 * SAVEPOINT so a failing one changes nothing, each change getting the next
 * revision), commits once (one fsync for the group), publishes the events
 * to the watch ring, and wakes the callers. Reads use a pool of read
 * connections and never wait for the writer: WAL gives each read
 * transaction a snapshot, and the snapshot's meta row its revision.
 *
 * Keeping the files bounded: compaction deletes history (auto-compaction
 * runs in the group's transaction when more than auto_compact_revisions
 * revisions are kept). Everything else is off the commit path, on the
 * upkeep thread and its own connection (mvcc_upkeep.c): the writer's
 * connection never checkpoints (wal_autocheckpoint=0; its WAL hook only
 * notes the WAL's length); the upkeep thread checkpoints beside the commits
 * (PASSIVE, every 4 MiB of WAL and every second while there are writes),
 * restarts the WAL past 8 MiB (truncates it past 16 MiB) in a short pause
 * of the writer, which it gets by closing the gate (the writer passes it
 * around each group's transaction), logs when readers keep it from doing
 * so, and gives free pages back with PRAGMA incremental_vacuum, a chunk at
 * a time with the gate closed, once the free list is over a quarter of the
 * file. journal_size_limit is only a backstop. */
#include "store/mvcc_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/log.h"

int64_t mvcc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

json_t *mvcc_header(struct mvcc *m, int64_t rev)
{
    json_t *h = json_object();
    mvcc_header_fill(m, h, rev);
    return h;
}

void mvcc_header_fill(struct mvcc *m, json_t *hdr, int64_t rev)
{
    char s[24];
    snprintf(s, sizeof(s), "%" PRIu64, m->cluster_id);
    json_object_set_new(hdr, "cluster_id", json_string(s));
    snprintf(s, sizeof(s), "%" PRIu64, m->member_id);
    json_object_set_new(hdr, "member_id", json_string(s));
    if (rev)
        jsonx_set_int64_str(hdr, "revision", rev);
    jsonx_set_int64_str(hdr, "raft_term", m->term);
}

int64_t mvcc_revision(struct mvcc *m)
{
    return atomic_load(&m->rev);
}

/* ---- the writer ---- */

void mvcc_submit_all(struct mvcc *m, struct wreq *rs, size_t n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n; i++) {
        rs[i].done = false;
        rs[i].next = i + 1 < n ? &rs[i + 1] : NULL;
        rs[i].rc = 0;
        rs[i].resp = NULL;
        rs[i].rec = NULL;
        err_clear(&rs[i].err);
    }
    pthread_mutex_lock(&m->q_mu);
    if (m->q_stop) {
        pthread_mutex_unlock(&m->q_mu);
        for (size_t i = 0; i < n; i++)
            rs[i].rc = err_set(&rs[i].err, PIER_EUNAVAIL, "the store is closing");
        return;
    }
    /* Linked in one go under q_mu: the writer takes the whole queue at
     * once, so a chain lands in one group. */
    if (m->q_tail)
        m->q_tail->next = &rs[0];
    else
        m->q_head = &rs[0];
    m->q_tail = &rs[n - 1];
    pthread_cond_signal(&m->q_cond);
    for (size_t i = 0; i < n; i++)
        while (!rs[i].done)
            pthread_cond_wait(&m->done_cond, &m->q_mu);
    pthread_mutex_unlock(&m->q_mu);
}

int mvcc_submit(struct mvcc *m, struct wreq *r)
{
    mvcc_submit_all(m, r, 1);
    return r->rc;
}

int mvcc_submit_resp(struct mvcc *m, struct wreq *r, json_t **resp, struct pier_err *err)
{
    int rc = mvcc_submit(m, r);
    if (rc < 0) {
        if (err)
            *err = r->err;
        return rc;
    }
    if (resp)
        *resp = r->resp;
    else
        json_decref(r->resp);
    r->resp = NULL;
    return 0;
}

/* Applies one write inside its savepoint. Returns its result; sets *broken
 * when the savepoint itself failed (the group's transaction is then in an
 * unknown state and must be rolled back). */
static int apply_one(struct mvcc *m, struct wreq *r, int64_t *rev, int64_t *compact, bool *broken)
{
    struct conn *c = m->wconn;
    int rc = conn_exec(c, "SAVEPOINT w", &r->err);
    if (rc < 0) {
        *broken = true;
        return rc;
    }
    struct wctx w = {.m = m, .c = c, .begin_rev = *rev, .compact_rev = *compact};
    rc = r->apply(&w, r->arg, &r->resp, &r->err);
    struct pier_err e;
    if (rc < 0) {
        json_decref(r->resp);
        r->resp = NULL;
        rev_rec_unref(w.rec);
        if (conn_exec(c, "ROLLBACK TO w", &e) < 0 || conn_exec(c, "RELEASE w", &e) < 0)
            *broken = true;
        return rc;
    }
    if (conn_exec(c, "RELEASE w", &e) < 0) {
        *broken = true;
        rev_rec_unref(w.rec);
        return err_set(&r->err, e.code, "%s", e.msg);
    }
    if (w.rec && w.rec->n) {
        *rev += 1;
        r->rec = w.rec;
    } else {
        rev_rec_unref(w.rec);
    }
    *compact = w.compact_rev;
    return 0;
}

/* Keeps at most auto_compact_revisions revisions of history. Compacting
 * an eighth further than needed means it runs once every keep/8 revisions,
 * not after every group. */
static void auto_compact(struct mvcc *m, int64_t rev, int64_t *compact)
{
    int64_t keep = m->opt.auto_compact_revisions;
    int64_t base = *compact < 0 ? 0 : *compact;
    if (keep <= 0 || rev - base <= keep)
        return;
    int64_t to = rev - keep + keep / 8;
    struct pier_err e;
    struct conn *c = m->wconn;
    if (conn_exec(c, "SAVEPOINT ac", &e) < 0)
        goto fail;
    if (mvcc_compact_rows(c, *compact, to, &e) < 0) {
        if (conn_exec(c, "ROLLBACK TO ac", &e) < 0 || conn_exec(c, "RELEASE ac", &e) < 0)
            log_warn("store", "undoing auto-compaction failed", "error=\"%s\"", e.msg);
        goto fail;
    }
    if (conn_exec(c, "RELEASE ac", &e) < 0)
        goto fail;
    *compact = to;
    return;
fail:
    log_warn("store", "auto-compaction failed", "error=\"%s\"", e.msg);
}

static int write_meta(struct conn *c, int64_t rev, int64_t compact, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, "UPDATE meta SET rev = ?1, compact_rev = ?2 WHERE id = 1", &st, err);
    if (rc < 0)
        return rc;
    int s = sqlite3_bind_int64(st, 1, rev);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 2, compact);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    return s == SQLITE_DONE ? 0 : conn_err(c, s, err);
}

static void fail_group(struct wreq *batch, const struct pier_err *e)
{
    for (struct wreq *r = batch; r; r = r->next) {
        if (r->rc < 0)
            continue;
        json_decref(r->resp);
        r->resp = NULL;
        rev_rec_unref(r->rec);
        r->rec = NULL;
        r->rc = err_set(&r->err, e->code, "%s", e->msg);
    }
}

static void run_group(struct mvcc *m, struct wreq *batch)
{
    struct conn *c = m->wconn;
    struct pier_err e;
    int64_t rev0 = atomic_load(&m->rev), rev = rev0;
    int64_t compact0 = m->compact_rev, compact = compact0;
    bool broken = false;
    if (conn_exec(c, "BEGIN IMMEDIATE", &e) < 0) {
        fail_group(batch, &e);
        return;
    }
    size_t n = 0;
    for (struct wreq *r = batch; r && !broken; r = r->next, n++)
        r->rc = apply_one(m, r, &rev, &compact, &broken);
    m->n_groups++;
    m->n_writes += n;
    if (!broken)
        auto_compact(m, rev, &compact);
    int rc = broken ? err_set(&e, PIER_EINTERNAL, "store database: a savepoint failed") : 0;
    if (rc == 0 && (rev != rev0 || compact != compact0))
        rc = write_meta(c, rev, compact, &e);
    if (rc == 0)
        rc = conn_exec(c, "COMMIT", &e);
    if (rc < 0) {
        struct pier_err e2;
        if (conn_exec(c, "ROLLBACK", &e2) < 0)
            log_error("store", "rollback failed", "error=\"%s\"", e2.msg);
        log_error("store", "commit failed", "error=\"%s\"", e.msg);
        fail_group(batch, &e);
        return;
    }
    /* In-memory state (the lease table) first, then the events: a client
     * that sees a lease's keys deleted must not find the lease still there. */
    for (struct wreq *r = batch; r; r = r->next)
        if (r->rc == 0 && r->after)
            r->after(m, r->arg);
    struct rev_rec **recs = xcalloc(n + 1, sizeof(*recs));
    size_t nrec = 0;
    for (struct wreq *r = batch; r; r = r->next) {
        if (r->rec) {
            recs[nrec++] = r->rec;
            r->rec = NULL;
        }
    }
    mvcc_ring_publish(m, recs, nrec, rev, compact);
    free(recs);
    if (compact != compact0)
        mvcc_upkeep_kick(m); /* it freed pages */
}

static void *writer_main(void *arg)
{
    struct mvcc *m = arg;
    pthread_mutex_lock(&m->q_mu);
    for (;;) {
        while (!m->q_head && !m->q_stop)
            pthread_cond_wait(&m->q_cond, &m->q_mu);
        if (!m->q_head)
            break;
        struct wreq *batch = m->q_head;
        m->q_head = m->q_tail = NULL;
        pthread_mutex_unlock(&m->q_mu);
        mvcc_gate_enter(m);
        run_group(m, batch);
        mvcc_gate_leave(m);
        conn_trim(m->wconn);
        pthread_mutex_lock(&m->q_mu);
        for (struct wreq *r = batch, *next; r; r = next) {
            next = r->next; /* r belongs to its caller once done */
            r->done = true;
        }
        pthread_cond_broadcast(&m->done_cond);
    }
    pthread_mutex_unlock(&m->q_mu);
    return NULL;
}

/* ---- open and close ---- */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS meta(id INTEGER PRIMARY KEY CHECK (id = 1),"
    " rev INTEGER NOT NULL, compact_rev INTEGER NOT NULL, cluster_id INTEGER NOT NULL,"
    " member_id INTEGER NOT NULL, term INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS kv(key BLOB PRIMARY KEY, value BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL,"
    " lease INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;"
    "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, rev INTEGER NOT NULL,"
    " key BLOB NOT NULL, value BLOB, create_rev INTEGER NOT NULL, version INTEGER NOT NULL,"
    " lease INTEGER NOT NULL, deleted INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS log_rev ON log(rev);"
    "CREATE INDEX IF NOT EXISTS log_key ON log(key, rev);"
    "CREATE TABLE IF NOT EXISTS leases(id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);"
    "CREATE TEMP TABLE IF NOT EXISTS compact_keep(key BLOB PRIMARY KEY, id INTEGER NOT NULL);"
    "PRAGMA user_version=1;";

/* Creates the tables, or reads the revisions and ids of an existing store;
 * counts this open as a new raft term, as an etcd restart would. */
static int load_meta(struct mvcc *m, struct pier_err *err)
{
    struct conn *c = m->wconn;
    int rc = conn_script(c, "BEGIN IMMEDIATE;", err);
    if (rc < 0)
        return rc;
    rc = conn_script(c, schema, err);
    sqlite3_stmt *st cleanup_stmt = NULL;
    if (rc == 0)
        rc = conn_stmt(c, "SELECT rev, compact_rev, cluster_id, member_id, term FROM meta", &st,
                       err);
    int s = rc == 0 ? sqlite3_step(st) : SQLITE_OK;
    if (s == SQLITE_ROW) {
        atomic_store(&m->rev, sqlite3_column_int64(st, 0));
        m->compact_rev = sqlite3_column_int64(st, 1);
        m->cluster_id = (uint64_t)sqlite3_column_int64(st, 2);
        m->member_id = (uint64_t)sqlite3_column_int64(st, 3);
        m->term = sqlite3_column_int64(st, 4) + 1;
    } else if (s == SQLITE_DONE) {
        /* A new store starts at revision 1, never compacted (-1, as etcd). */
        uint64_t ids[2];
        if (getrandom(ids, sizeof(ids), 0) != sizeof(ids))
            ids[0] = (uint64_t)time(NULL) * 2654435761u, ids[1] = ids[0] ^ 0x9e3779b97f4a7c15u;
        atomic_store(&m->rev, 1);
        m->compact_rev = -1;
        m->cluster_id = ids[0];
        m->member_id = ids[1];
        m->term = 2;
    } else if (rc == 0) {
        rc = conn_err(c, s, err);
    }
    if (st)
        sqlite3_reset(st);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "INSERT OR REPLACE INTO meta VALUES (1, %" PRId64 ", %" PRId64 ", %" PRId64
             ", %" PRId64 ", %" PRId64 ");",
             atomic_load(&m->rev), m->compact_rev, (int64_t)m->cluster_id, (int64_t)m->member_id,
             m->term);
    if (rc == 0)
        rc = conn_script(c, sql, err);
    if (rc == 0)
        rc = conn_script(c, "COMMIT;", err);
    if (rc < 0) {
        struct pier_err e2;
        if (conn_script(c, "ROLLBACK;", &e2) < 0)
            log_warn("store", "rollback failed", "error=\"%s\"", e2.msg);
    }
    return rc;
}

static void cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(cond, &attr) != 0)
        abort();
    pthread_condattr_destroy(&attr);
}

static void sync_init(struct mvcc *m)
{
    if (pthread_mutex_init(&m->q_mu, NULL) != 0 || pthread_mutex_init(&m->pool_mu, NULL) != 0 ||
        pthread_mutex_init(&m->ring_mu, NULL) != 0 || pthread_mutex_init(&m->lease_mu, NULL) != 0 ||
        pthread_mutex_init(&m->gate_mu, NULL) != 0 || pthread_cond_init(&m->q_cond, NULL) != 0 ||
        pthread_cond_init(&m->done_cond, NULL) != 0 ||
        pthread_cond_init(&m->pool_cond, NULL) != 0 || pthread_cond_init(&m->gate_cond, NULL) != 0)
        abort();
    cond_init_monotonic(&m->ring_cond);
    cond_init_monotonic(&m->lease_cond);
}

int mvcc_open(const char *dir, const struct mvcc_options *opt, struct mvcc **out,
              struct pier_err *err)
{
    if (sqlite3_threadsafe() == 0)
        return err_set(err, PIER_EINTERNAL, "store: SQLite was built without thread support");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return err_set(err, -errno, "store directory %s: %s", dir, strerror(errno));
    struct mvcc *m = xcalloc(1, sizeof(*m));
    m->dir = xstrdup(dir);
    if (opt)
        m->opt = *opt;
    if (m->opt.auto_compact_revisions < 0)
        m->opt.auto_compact_revisions = 0;
    if (m->opt.watch_progress_interval_ms <= 0)
        m->opt.watch_progress_interval_ms = 10 * 60 * 1000;
    sync_init(m);
    mvcc_ring_init(m);
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/store.db", dir) < 0)
        abort();
    int rc = conn_open(path, true, &m->wconn, err);
    if (rc == 0)
        rc = load_meta(m, err);
    if (rc == 0)
        rc = mvcc_upkeep_start(m, err);
    if (rc == 0) {
        m->ring_start = atomic_load(&m->rev) + 1;
        rc = mvcc_lease_start(m, m->wconn, err);
    }
    if (rc == 0 && pthread_create(&m->writer, NULL, writer_main, m) != 0)
        rc = err_set(err, PIER_EINTERNAL, "store: cannot start the writer thread");
    if (rc < 0) {
        m->q_stop = true; /* no writer to stop */
        mvcc_close(m);
        return rc;
    }
    log_info("store", "opened", "dir=%s revision=%" PRId64 " compact_revision=%" PRId64, dir,
             atomic_load(&m->rev), m->compact_rev);
    *out = m;
    return 0;
}

void mvcc_close(struct mvcc *m)
{
    if (!m)
        return;
    mvcc_lease_stop(m);
    mvcc_ring_close(m);
    pthread_mutex_lock(&m->q_mu);
    bool running = !m->q_stop;
    m->q_stop = true;
    pthread_cond_signal(&m->q_cond);
    pthread_mutex_unlock(&m->q_mu);
    if (running) {
        pthread_join(m->writer, NULL);
        log_info("store", "closed",
                 "dir=%s revision=%" PRId64 " writes=%" PRIu64 " commits=%" PRIu64, m->dir,
                 atomic_load(&m->rev), m->n_writes, m->n_groups);
    }
    mvcc_upkeep_stop(m);
    while (m->pool_free) {
        struct conn *c = m->pool_free;
        m->pool_free = c->next_free;
        conn_close(c);
    }
    conn_close(m->wconn);
    mvcc_ring_free(m);
    free(m->leases);
    pthread_mutex_destroy(&m->q_mu);
    pthread_mutex_destroy(&m->pool_mu);
    pthread_mutex_destroy(&m->ring_mu);
    pthread_mutex_destroy(&m->lease_mu);
    pthread_mutex_destroy(&m->gate_mu);
    pthread_cond_destroy(&m->q_cond);
    pthread_cond_destroy(&m->done_cond);
    pthread_cond_destroy(&m->pool_cond);
    pthread_cond_destroy(&m->gate_cond);
    pthread_cond_destroy(&m->ring_cond);
    pthread_cond_destroy(&m->lease_cond);
    free(m->dir);
    free(m);
}

int mvcc_grpc_code(int rc, int *http_status)
{
    int code = 13, status = 500;
    switch (rc) {
    case PIER_EINVAL: code = 3, status = 400; break;
    case PIER_ENOTFOUND: code = 5, status = 404; break;
    case PIER_EEXISTS: code = 9, status = 412; break;
    case PIER_ECOMPACTED: code = 11, status = 400; break;
    case PIER_EUNAVAIL: code = 14, status = 503; break;
    default: break;
    }
    if (http_status)
        *http_status = status;
    return code;
}
