/* mvcc_db: the engine's SQLite connections: opening them with the right
 * pragmas, each one's cache of prepared statements, and the pool of read
 * connections (opened on demand, up to POOL_MAX) that reads use so they
 * never wait for the writer. */
#include "store/mvcc_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/log.h"

#define POOL_MAX 8

int conn_err(struct conn *c, int rc, struct pier_err *err)
{
    return err_set(err, PIER_EINTERNAL, "store database: %s (%s)",
                   c && c->db ? sqlite3_errmsg(c->db) : "cannot open", sqlite3_errstr(rc));
}

int conn_stmt(struct conn *c, const char *sql, sqlite3_stmt **out, struct pier_err *err)
{
    for (size_t i = 0; i < c->ncache; i++) {
        if (strcmp(c->cache[i].sql, sql) == 0) {
            sqlite3_reset(c->cache[i].st);
            sqlite3_clear_bindings(c->cache[i].st);
            c->cache[i].used = ++c->tick;
            *out = c->cache[i].st;
            return 0;
        }
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
    if (rc != SQLITE_OK)
        return conn_err(c, rc, err);
    if (c->ncache == c->cache_cap) {
        c->cache_cap = c->cache_cap ? c->cache_cap * 2 : CONN_CACHE;
        c->cache = xrealloc(c->cache, c->cache_cap * sizeof(*c->cache));
    }
    c->cache[c->ncache++] = (struct conn_stmt){xstrdup(sql), st, ++c->tick};
    *out = st;
    return 0;
}

void conn_trim(struct conn *c)
{
    while (c->ncache > CONN_CACHE) {
        size_t old = 0;
        for (size_t i = 1; i < c->ncache; i++)
            if (c->cache[i].used < c->cache[old].used)
                old = i;
        sqlite3_finalize(c->cache[old].st);
        free(c->cache[old].sql);
        c->cache[old] = c->cache[--c->ncache];
    }
}

int conn_exec(struct conn *c, const char *sql, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, sql, &st, err);
    if (rc < 0)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    return rc == SQLITE_DONE ? 0 : conn_err(c, rc, err);
}

int conn_script(struct conn *c, const char *sql, struct pier_err *err)
{
    char *msg = NULL;
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        err_set(err, PIER_EINTERNAL, "store database: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return PIER_EINTERNAL;
    }
    return 0;
}

void conn_close(struct conn *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->ncache; i++) {
        sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
    }
    free(c->cache);
    if (sqlite3_close(c->db) != SQLITE_OK)
        log_warn("store", "closing the database failed", "error=\"%s\"", sqlite3_errmsg(c->db));
    free(c);
}

int conn_open(const char *path, bool writer, struct conn **out, struct pier_err *err)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    int rc = sqlite3_open_v2(
        path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        err_set(err, PIER_EINTERNAL, "store database %s: %s", path, sqlite3_errstr(rc));
        conn_close(c);
        return PIER_EINTERNAL;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, 10000);
    /* auto_vacuum must be set before the first table exists. */
    const char *pragmas = writer ? "PRAGMA auto_vacuum=INCREMENTAL;"
                                   "PRAGMA journal_mode=WAL;"
                                   "PRAGMA synchronous=FULL;"
                                   "PRAGMA wal_autocheckpoint=0;"
                                   "PRAGMA journal_size_limit=67108864;"
                                   "PRAGMA temp_store=MEMORY;"
                                   "PRAGMA cache_size=-16384;"
                                 : "PRAGMA query_only=1;"
                                   "PRAGMA temp_store=MEMORY;"
                                   "PRAGMA cache_size=-8192;";
    rc = conn_script(c, pragmas, err);
    if (rc < 0) {
        err_wrap(err, rc, "store database %s", path);
        conn_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int bind_bytes(sqlite3_stmt *st, int idx, const void *p, size_t n)
{
    return sqlite3_bind_blob64(st, idx, n ? p : "", n, SQLITE_STATIC);
}

void column_bytes(sqlite3_stmt *st, int col, struct buf *out)
{
    const void *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (p && n > 0)
        buf_append(out, p, (size_t)n);
}

int mvcc_conn_get(struct mvcc *m, struct conn **out, struct pier_err *err)
{
    pthread_mutex_lock(&m->pool_mu);
    for (;;) {
        if (m->pool_free) {
            *out = m->pool_free;
            m->pool_free = (*out)->next_free;
            pthread_mutex_unlock(&m->pool_mu);
            return 0;
        }
        if (m->pool_open < POOL_MAX)
            break;
        pthread_cond_wait(&m->pool_cond, &m->pool_mu);
    }
    m->pool_open++;
    pthread_mutex_unlock(&m->pool_mu);
    cleanup_free char *path = NULL;
    if (asprintf(&path, "%s/store.db", m->dir) < 0)
        abort();
    int rc = conn_open(path, false, out, err);
    if (rc < 0) {
        pthread_mutex_lock(&m->pool_mu);
        m->pool_open--;
        pthread_cond_signal(&m->pool_cond);
        pthread_mutex_unlock(&m->pool_mu);
    }
    return rc;
}

void mvcc_conn_put(struct mvcc *m, struct conn *c)
{
    conn_trim(c);
    pthread_mutex_lock(&m->pool_mu);
    c->next_free = m->pool_free;
    m->pool_free = c;
    pthread_cond_signal(&m->pool_cond);
    pthread_mutex_unlock(&m->pool_mu);
}

int mvcc_read_begin(struct conn *c, int64_t *rev, int64_t *compact_rev, struct pier_err *err)
{
    int rc = conn_exec(c, "BEGIN", err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st cleanup_stmt = NULL;
    rc = conn_stmt(c, "SELECT rev, compact_rev FROM meta WHERE id = 1", &st, err);
    if (rc == 0) {
        int s = sqlite3_step(st);
        if (s == SQLITE_ROW) {
            *rev = sqlite3_column_int64(st, 0);
            *compact_rev = sqlite3_column_int64(st, 1);
            return 0;
        }
        rc = conn_err(c, s, err);
    }
    mvcc_read_end(c);
    return rc;
}

void mvcc_read_end(struct conn *c)
{
    struct pier_err e;
    if (conn_exec(c, "COMMIT", &e) < 0 && conn_exec(c, "ROLLBACK", &e) < 0)
        log_warn("store", "ending a read failed", "error=\"%s\"", e.msg);
}
