/* mvcc_lease: leases. The leases table holds each lease's ID and granted
 * TTL; the expiry times live only in memory (m->leases, sorted by ID, under
 * lease_mu), so a keepalive writes nothing, and after a restart every lease
 * starts with its full TTL again, as etcd's leases do when a new leader
 * takes over: a restart must not expire everything at once.
 *
 * The expiry thread looks every EXPIRY_TICK_MS for leases past their time
 * and revokes them through the writer, like revoke requests: each lease's
 * attached keys are deleted in a revision of its own, emitting DELETE
 * events, and all the leases due at one tick are queued together, so they
 * are committed as one group (one fsync, not one per lease). Which keys are
 * attached is the kv table's lease column (indexed). */
#include "store/mvcc_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "lib/base64.h"
#include "lib/cleanup.h"
#include "lib/jsonx.h"
#include "lib/log.h"

#define EXPIRY_TICK_MS 100
/* At most this many leases expire per tick: etcd's revoke rate (1000 a
 * second), and one group commit each tick. */
#define EXPIRY_BATCH 100
#define E_NOLEASE "etcdserver: requested lease not found"

struct lease_arg {
    int64_t id, ttl;
    bool expire; /* from the expiry thread: an unknown lease is no error */
};

/* ---- the in-memory table (lease_mu held) ---- */

static size_t lease_pos(struct mvcc *m, int64_t id, bool *found)
{
    size_t lo = 0, hi = m->nlease;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->leases[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < m->nlease && m->leases[lo].id == id;
    return lo;
}

static void lease_insert(struct mvcc *m, int64_t id, int64_t ttl, int64_t now)
{
    bool found;
    size_t i = lease_pos(m, id, &found);
    if (!found) {
        if (m->nlease == m->lease_cap) {
            m->lease_cap = m->lease_cap ? m->lease_cap * 2 : 16;
            m->leases = xrealloc(m->leases, m->lease_cap * sizeof(*m->leases));
        }
        memmove(&m->leases[i + 1], &m->leases[i], (m->nlease - i) * sizeof(*m->leases));
        m->nlease++;
    }
    m->leases[i] = (struct lease){.id = id, .ttl = ttl, .expiry_ms = now + ttl * 1000};
}

static void lease_remove(struct mvcc *m, int64_t id)
{
    bool found;
    size_t i = lease_pos(m, id, &found);
    if (!found)
        return;
    memmove(&m->leases[i], &m->leases[i + 1], (m->nlease - i - 1) * sizeof(*m->leases));
    m->nlease--;
}

/* ---- grant and revoke, applied by the writer ---- */

int mvcc_lease_row_exists(struct conn *c, int64_t id, bool *exists, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, "SELECT 1 FROM leases WHERE id = ?1", &st, err);
    if (rc < 0)
        return rc;
    int s = sqlite3_bind_int64(st, 1, id);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    *exists = s == SQLITE_ROW;
    return s == SQLITE_ROW || s == SQLITE_DONE ? 0 : conn_err(c, s, err);
}

static int64_t random_id(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != sizeof(v))
        v = (uint64_t)mvcc_now_ms() * 6364136223846793005u + 1442695040888963407u;
    return (int64_t)(v & INT64_MAX);
}

static int grant_apply(struct wctx *w, void *arg, json_t **resp, struct pier_err *err)
{
    struct lease_arg *a = arg;
    bool exists = false;
    int rc = 0;
    if (a->id == 0) {
        do {
            a->id = random_id();
            rc = a->id ? mvcc_lease_row_exists(w->c, a->id, &exists, err) : 0;
        } while (rc == 0 && (a->id == 0 || exists));
    } else {
        rc = mvcc_lease_row_exists(w->c, a->id, &exists, err);
        if (rc == 0 && exists)
            rc = err_set(err, PIER_EEXISTS, "etcdserver: lease already exists");
    }
    if (rc < 0)
        return rc;
    sqlite3_stmt *st cleanup_stmt = NULL;
    rc = conn_stmt(w->c, "INSERT INTO leases(id, ttl) VALUES (?1, ?2)", &st, err);
    if (rc < 0)
        return rc;
    int s = sqlite3_bind_int64(st, 1, a->id);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 2, a->ttl);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s != SQLITE_DONE)
        return conn_err(w->c, s, err);
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(w->m, w->begin_rev));
    jsonx_set_int64_str(*resp, "ID", a->id);
    jsonx_set_int64_str(*resp, "TTL", a->ttl);
    return 0;
}

static void grant_after(struct mvcc *m, void *arg)
{
    const struct lease_arg *a = arg;
    pthread_mutex_lock(&m->lease_mu);
    lease_insert(m, a->id, a->ttl, mvcc_now_ms());
    pthread_mutex_unlock(&m->lease_mu);
}

static int revoke_apply(struct wctx *w, void *arg, json_t **resp, struct pier_err *err)
{
    const struct lease_arg *a = arg;
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(w->c, "DELETE FROM leases WHERE id = ?1", &st, err);
    if (rc < 0)
        return rc;
    int s = sqlite3_bind_int64(st, 1, a->id);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s != SQLITE_DONE)
        return conn_err(w->c, s, err);
    if (sqlite3_changes(w->c->db) == 0 && !a->expire)
        return err_set(err, PIER_ENOTFOUND, E_NOLEASE);
    sqlite3_stmt *sel cleanup_stmt = NULL;
    rc = conn_stmt(w->c,
                   "SELECT key, value, create_rev, mod_rev, version, lease FROM kv"
                   " WHERE lease = ?1 AND lease != 0 ORDER BY key",
                   &sel, err);
    if (rc < 0)
        return rc;
    if ((s = sqlite3_bind_int64(sel, 1, a->id)) != SQLITE_OK)
        return conn_err(w->c, s, err);
    int64_t n = 0;
    rc = mvcc_delete_selected(w, sel, NULL, &n, err);
    if (rc < 0)
        return rc;
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(w->m, wctx_cur(w)));
    return 0;
}

static void revoke_after(struct mvcc *m, void *arg)
{
    const struct lease_arg *a = arg;
    pthread_mutex_lock(&m->lease_mu);
    lease_remove(m, a->id);
    pthread_mutex_unlock(&m->lease_mu);
}

/* ---- the requests ---- */

int mvcc_lease_grant(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    struct lease_arg a = {0};
    int rc = jsonx_get_int64(req, "TTL", &a.ttl, err);
    if (rc >= 0)
        rc = jsonx_get_int64(req, "ID", &a.id, err);
    if (rc < 0)
        return rc;
    if (a.ttl > MVCC_MAX_LEASE_TTL) /* etcd's OutOfRange, as a revision out of range */
        return err_set(err, PIER_ECOMPACTED, "etcdserver: too large lease TTL");
    if (a.ttl < 1)
        a.ttl = 1; /* etcd raises a TTL to its minimum */
    struct wreq r = {.apply = grant_apply, .after = grant_after, .arg = &a};
    return mvcc_submit_resp(m, &r, resp, err);
}

int mvcc_lease_revoke(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    struct lease_arg a = {0};
    int rc = jsonx_get_int64(req, "ID", &a.id, err);
    if (rc < 0)
        return rc;
    struct wreq r = {.apply = revoke_apply, .after = revoke_after, .arg = &a};
    return mvcc_submit_resp(m, &r, resp, err);
}

int mvcc_lease_keepalive(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    int64_t id = 0, ttl = 0;
    int rc = jsonx_get_int64(req, "ID", &id, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&m->lease_mu);
    bool found;
    size_t i = lease_pos(m, id, &found);
    if (found && !m->leases[i].revoking) {
        ttl = m->leases[i].ttl;
        m->leases[i].expiry_ms = mvcc_now_ms() + ttl * 1000;
    }
    pthread_mutex_unlock(&m->lease_mu);
    /* An unknown lease is no error here: etcd answers without a TTL. */
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(m, mvcc_revision(m)));
    if (id)
        jsonx_set_int64_str(*resp, "ID", id);
    if (ttl)
        jsonx_set_int64_str(*resp, "TTL", ttl);
    return 0;
}

static int lease_keys(struct mvcc *m, int64_t id, json_t *keys, int64_t *rev, struct pier_err *err)
{
    struct conn *c = NULL;
    int rc = mvcc_conn_get(m, &c, err);
    if (rc < 0)
        return rc;
    int64_t compact;
    rc = mvcc_read_begin(c, rev, &compact, err);
    if (rc == 0) {
        sqlite3_stmt *st cleanup_stmt = NULL;
        rc = conn_stmt(c, "SELECT key FROM kv WHERE lease = ?1 AND lease != 0 ORDER BY key", &st,
                       err);
        int s = rc == 0 ? sqlite3_bind_int64(st, 1, id) : SQLITE_OK;
        while (rc == 0 && s == SQLITE_OK && (s = sqlite3_step(st)) == SQLITE_ROW) {
            cleanup_buf struct buf b64 = BUF_INIT;
            base64_encode(&b64, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
            json_array_append_new(keys, json_stringn(b64.p ? b64.p : "", b64.len));
            s = SQLITE_OK;
        }
        if (rc == 0 && s != SQLITE_OK && s != SQLITE_DONE)
            rc = conn_err(c, s, err);
        if (st)
            sqlite3_reset(st);
        mvcc_read_end(c);
    }
    mvcc_conn_put(m, c);
    return rc;
}

int mvcc_lease_timetolive(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    int64_t id = 0, ttl = 0, left = 0;
    bool want_keys = false;
    int rc = jsonx_get_int64(req, "ID", &id, err);
    if (rc >= 0)
        rc = jsonx_get_bool(req, "keys", &want_keys, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&m->lease_mu);
    bool found;
    size_t i = lease_pos(m, id, &found);
    if (found) {
        ttl = m->leases[i].ttl;
        left = (m->leases[i].expiry_ms - mvcc_now_ms()) / 1000; /* truncated, as etcd */
    }
    pthread_mutex_unlock(&m->lease_mu);
    json_t *keys cleanup_json = json_array();
    int64_t rev = mvcc_revision(m);
    if (found && want_keys && (rc = lease_keys(m, id, keys, &rev, err)) < 0)
        return rc;
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(m, rev));
    if (id)
        jsonx_set_int64_str(*resp, "ID", id);
    if (!found) {
        jsonx_set_int64_str(*resp, "TTL", -1);
        return 0;
    }
    if (left > 0)
        jsonx_set_int64_str(*resp, "TTL", left);
    jsonx_set_int64_str(*resp, "grantedTTL", ttl);
    if (json_array_size(keys))
        json_object_set(*resp, "keys", keys);
    return 0;
}

int mvcc_lease_leases(struct mvcc *m, json_t **resp, struct pier_err *err)
{
    (void)err;
    json_t *arr cleanup_json = json_array();
    pthread_mutex_lock(&m->lease_mu);
    for (size_t i = 0; i < m->nlease; i++) {
        json_t *l = json_object();
        jsonx_set_int64_str(l, "ID", m->leases[i].id);
        json_array_append_new(arr, l);
    }
    pthread_mutex_unlock(&m->lease_mu);
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(m, mvcc_revision(m)));
    if (json_array_size(arr))
        json_object_set(*resp, "leases", arr);
    return 0;
}

/* ---- expiry ---- */

/* Revokes the due leases ids[0..n) as one group: each lease its own write
 * (and revision, when it had keys), as etcd's revokes are, but one commit
 * for them all. */
static void expire(struct mvcc *m, const int64_t *ids, size_t n)
{
    struct lease_arg *args = xcalloc(n, sizeof(*args));
    struct wreq *rs = xcalloc(n, sizeof(*rs));
    for (size_t i = 0; i < n; i++) {
        args[i] = (struct lease_arg){.id = ids[i], .expire = true};
        rs[i] = (struct wreq){.apply = revoke_apply, .after = revoke_after, .arg = &args[i]};
    }
    mvcc_submit_all(m, rs, n);
    for (size_t i = 0; i < n; i++) {
        json_decref(rs[i].resp);
        if (rs[i].rc == 0) {
            log_debug("store", "lease expired", "id=%" PRId64, ids[i]);
            continue;
        }
        log_warn("store", "expiring a lease failed", "id=%" PRId64 " error=\"%s\"", ids[i],
                 rs[i].err.msg);
        pthread_mutex_lock(&m->lease_mu);
        bool found;
        size_t k = lease_pos(m, ids[i], &found);
        if (found)
            m->leases[k].revoking = false; /* try again at the next tick */
        pthread_mutex_unlock(&m->lease_mu);
    }
    free(rs);
    free(args);
}

static void *expiry_main(void *arg)
{
    struct mvcc *m = arg;
    pthread_mutex_lock(&m->lease_mu);
    while (!m->lease_stop) {
        struct timespec ts;
        int64_t until = mvcc_now_ms() + EXPIRY_TICK_MS;
        ts.tv_sec = until / 1000;
        ts.tv_nsec = (until % 1000) * 1000000;
        pthread_cond_timedwait(&m->lease_cond, &m->lease_mu, &ts);
        if (m->lease_stop)
            break;
        int64_t ids[EXPIRY_BATCH];
        size_t n = 0;
        int64_t now = mvcc_now_ms();
        for (size_t i = 0; i < m->nlease && n < EXPIRY_BATCH; i++) {
            if (!m->leases[i].revoking && m->leases[i].expiry_ms <= now) {
                m->leases[i].revoking = true;
                ids[n++] = m->leases[i].id;
            }
        }
        pthread_mutex_unlock(&m->lease_mu);
        if (n)
            expire(m, ids, n);
        pthread_mutex_lock(&m->lease_mu);
    }
    pthread_mutex_unlock(&m->lease_mu);
    return NULL;
}

int mvcc_lease_start(struct mvcc *m, struct conn *c, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, "SELECT id, ttl FROM leases ORDER BY id", &st, err);
    if (rc < 0)
        return rc;
    int64_t now = mvcc_now_ms();
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW)
        lease_insert(m, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1), now);
    if (s != SQLITE_DONE)
        return conn_err(c, s, err);
    if (pthread_create(&m->lease_th, NULL, expiry_main, m) != 0)
        return err_set(err, PIER_EINTERNAL, "store: cannot start the lease expiry thread");
    m->lease_thread = true;
    return 0;
}

void mvcc_lease_stop(struct mvcc *m)
{
    pthread_mutex_lock(&m->lease_mu);
    m->lease_stop = true;
    pthread_cond_signal(&m->lease_cond);
    pthread_mutex_unlock(&m->lease_mu);
    if (m->lease_thread)
        pthread_join(m->lease_th, NULL);
    m->lease_thread = false;
}
