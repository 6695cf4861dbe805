/* mvcc_watch: the ring of recent revisions, and the watches reading it.
 *
 * After each group commit the writer appends the group's revisions (their
 * events, with each change's previous value) to the ring, under ring_mu,
 * and broadcasts ring_cond. A watch remembers the next revision it owes its
 * client: when that revision is in the ring, it takes references to the
 * records under the lock and builds its response outside it, so a hundred
 * watches woken by one commit run no SQL and hold the lock only briefly.
 * When the watch is behind the ring (it started from an old revision, or
 * fell behind), it reads the log table on a read connection instead, in
 * batches of whole revisions.
 *
 * A progress notification tells the client it has every event up to the
 * header's revision (a client resumes from there), so it is sent only when
 * the watch has caught up, with the revision it has caught up to, both read
 * under ring_mu: a commit landing just after must not be covered by it.
 *
 * Invariant: the ring holds exactly the revisions ring_start..rev (every
 * revision has at least one event); it forgets the oldest ones past
 * RING_REVS revisions or RING_BYTES bytes, and a revision too large to keep
 * empties it and starts it afresh after that revision. */
#include "store/mvcc_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"

#define RING_REVS 4096
#define RING_BYTES ((size_t)64 << 20)
/* A response stops growing, at a revision's end, past this many events or
 * this many bytes of keys and values (a client caps a message's size; a
 * revision is never split, so one revision's response may be larger). */
#define BATCH_EVENTS 1000
#define BATCH_BYTES ((size_t)4 << 20)
#define BATCH_REVS 1000

struct mvcc_watch {
    struct mvcc *m;
    struct krange kr;
    bool prev_kv, progress, noput, nodelete;
    int64_t next_rev; /* the next revision owed to the client */
    bool ended;
    int64_t last_sent_ms;
};

void mvcc_ring_init(struct mvcc *m)
{
    m->ring_cap = RING_REVS;
    m->ring = xcalloc(m->ring_cap, sizeof(*m->ring));
}

static struct rev_rec *ring_at(struct mvcc *m, size_t i)
{
    return m->ring[(m->ring_head + i) % m->ring_cap];
}

static void ring_drop_front(struct mvcc *m)
{
    struct rev_rec *rec = m->ring[m->ring_head];
    m->ring[m->ring_head] = NULL;
    m->ring_head = (m->ring_head + 1) % m->ring_cap;
    m->ring_count--;
    m->ring_bytes -= rec->bytes;
    m->ring_start++;
    rev_rec_unref(rec);
}

void mvcc_ring_free(struct mvcc *m)
{
    if (!m->ring)
        return;
    while (m->ring_count)
        ring_drop_front(m);
    free(m->ring);
    m->ring = NULL;
}

void mvcc_ring_publish(struct mvcc *m, struct rev_rec **recs, size_t n, int64_t rev,
                       int64_t compact_rev)
{
    pthread_mutex_lock(&m->ring_mu);
    for (size_t i = 0; i < n; i++) {
        struct rev_rec *rec = recs[i];
        if (rec->bytes > RING_BYTES / 4 || rec->rev != m->ring_start + (int64_t)m->ring_count) {
            while (m->ring_count)
                ring_drop_front(m);
            m->ring_start = rec->rev + 1;
            rev_rec_unref(rec);
            continue;
        }
        while (m->ring_count &&
               (m->ring_count == m->ring_cap || m->ring_bytes + rec->bytes > RING_BYTES))
            ring_drop_front(m);
        m->ring[(m->ring_head + m->ring_count) % m->ring_cap] = rec;
        m->ring_count++;
        m->ring_bytes += rec->bytes;
    }
    atomic_store(&m->rev, rev);
    m->compact_rev = compact_rev;
    pthread_cond_broadcast(&m->ring_cond);
    pthread_mutex_unlock(&m->ring_mu);
}

void mvcc_ring_close(struct mvcc *m)
{
    pthread_mutex_lock(&m->ring_mu);
    m->closing = true;
    pthread_cond_broadcast(&m->ring_cond);
    while (m->nwatch > 0)
        pthread_cond_wait(&m->ring_cond, &m->ring_mu);
    pthread_mutex_unlock(&m->ring_mu);
}

/* ---- creating ---- */

static int parse_filters(const json_t *cr, struct mvcc_watch *w, struct pier_err *err)
{
    json_t *arr = NULL; /* borrowed */
    int rc = jsonx_get_array(cr, "filters", &arr, err);
    if (rc <= 0)
        return rc;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        if (strcmp(s, "NOPUT") == 0 || (json_is_integer(v) && json_integer_value(v) == 0))
            w->noput = true;
        else if (strcmp(s, "NODELETE") == 0 || (json_is_integer(v) && json_integer_value(v) == 1))
            w->nodelete = true;
        else
            return err_set(err, PIER_EINVAL,
                           "field \"filters\": element %zu must be NOPUT or NODELETE", i);
    }
    return 0;
}

static int parse_watch(const json_t *cr, struct mvcc_watch *w, int64_t *start, struct pier_err *err)
{
    if (!json_is_object(cr))
        return err_set(err, PIER_EINVAL, "the create_request must be a JSON object");
    size_t budget = MVCC_MAX_REQUEST;
    int64_t watch_id = 0;
    bool fragment = false; /* responses are never fragmented here */
    int rc = mvcc_get_krange(cr, &w->kr, &budget, err);
    if (rc >= 0)
        rc = jsonx_get_int64(cr, "start_revision", start, err);
    if (rc >= 0)
        rc = jsonx_get_int64(cr, "watch_id", &watch_id, err);
    if (rc >= 0)
        rc = jsonx_get_bool(cr, "prev_kv", &w->prev_kv, err);
    if (rc >= 0)
        rc = jsonx_get_bool(cr, "progress_notify", &w->progress, err);
    if (rc >= 0)
        rc = jsonx_get_bool(cr, "fragment", &fragment, err);
    if (rc >= 0)
        rc = parse_filters(cr, w, err);
    return rc < 0 ? rc : 0;
}

int mvcc_watch_create(struct mvcc *m, const json_t *create_request, struct mvcc_watch **out,
                      json_t **created, struct pier_err *err)
{
    struct mvcc_watch *w = xcalloc(1, sizeof(*w));
    w->m = m;
    int64_t start = 0;
    int rc = parse_watch(create_request, w, &start, err);
    if (rc < 0) {
        krange_free(&w->kr);
        free(w);
        return rc;
    }
    pthread_mutex_lock(&m->ring_mu);
    if (m->closing) {
        pthread_mutex_unlock(&m->ring_mu);
        krange_free(&w->kr);
        free(w);
        return err_set(err, PIER_EUNAVAIL, "the store is closing");
    }
    int64_t cur = atomic_load(&m->rev);
    /* As etcd: 0 means from the next revision; any other value (even a
     * negative one) is where the watch starts. */
    w->next_rev = start ? start : cur + 1;
    m->nwatch++;
    pthread_mutex_unlock(&m->ring_mu);
    w->last_sent_ms = mvcc_now_ms();
    *created = json_object();
    json_object_set_new(*created, "header", mvcc_header(m, cur));
    json_object_set_new(*created, "created", json_true());
    *out = w;
    return 0;
}

void mvcc_watch_free(struct mvcc_watch *w)
{
    if (!w)
        return;
    struct mvcc *m = w->m;
    pthread_mutex_lock(&m->ring_mu);
    m->nwatch--;
    pthread_cond_broadcast(&m->ring_cond);
    pthread_mutex_unlock(&m->ring_mu);
    krange_free(&w->kr);
    free(w);
}

/* ---- responses ---- */

static json_t *event_json(bool del, const struct kv *kv, const struct kv *prev)
{
    json_t *o = json_object();
    if (del)
        json_object_set_new(o, "type", json_string("DELETE"));
    json_object_set_new(o, "kv", kv_json(kv, false));
    if (prev)
        json_object_set_new(o, "prev_kv", kv_json(prev, false));
    return o;
}

static bool wants(const struct mvcc_watch *w, bool del, const struct buf *key)
{
    if (del ? w->nodelete : w->noput)
        return false;
    return krange_match(&w->kr, key->p, key->len);
}

/* What an event adds to a batch: its keys and values. */
static size_t event_bytes(const struct kv *kv, const struct kv *prev)
{
    size_t n = kv->key.len + kv->value.len;
    return prev ? n + prev->key.len + prev->value.len : n;
}

static json_t *events_resp(struct mvcc_watch *w, int64_t rev, json_t *events)
{
    json_t *o = json_object();
    json_object_set_new(o, "header", mvcc_header(w->m, rev));
    json_object_set_new(o, "events", events); /* steals events */
    w->last_sent_ms = mvcc_now_ms();
    return o;
}

static json_t *canceled_resp(struct mvcc_watch *w, int64_t compact_rev)
{
    json_t *o = json_object();
    json_object_set_new(o, "header", mvcc_header(w->m, 0));
    json_object_set_new(o, "canceled", json_true());
    jsonx_set_int64_str(o, "compact_revision", compact_rev);
    w->ended = true;
    return o;
}

/* The key's state before revision rev (its newest history row below rev,
 * when that is not a delete), as etcd's watch shows it. */
static int log_prev(struct conn *c, const struct buf *key, int64_t rev, struct kv *prev,
                    bool *found, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c,
                       "SELECT key, value, create_rev, rev, version, lease, deleted FROM log"
                       " WHERE key = ?1 AND rev < ?2 ORDER BY rev DESC, id DESC LIMIT 1",
                       &st, err);
    if (rc < 0)
        return rc;
    int s = bind_bytes(st, 1, key->p, key->len);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 2, rev);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    *found = s == SQLITE_ROW && sqlite3_column_int(st, 6) == 0;
    if (*found)
        kv_load(st, prev);
    return s == SQLITE_ROW || s == SQLITE_DONE ? 0 : conn_err(c, s, err);
}

/* Reads the watch's next revisions from the log table. Returns 1 with
 * *resp, 0 when nothing matched (next_rev then moved on), or an error. */
static int log_read(struct mvcc_watch *w, struct conn *c, int64_t cur, json_t **resp,
                    struct pier_err *err)
{
    cleanup_buf struct buf sql = BUF_INIT;
    buf_printf(&sql,
               "SELECT key, value, create_rev, rev, version, lease, deleted FROM log"
               " WHERE rev >= ?3 AND rev <= ?4 AND %s ORDER BY rev, id",
               krange_sql(&w->kr));
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, sql.p, &st, err);
    if (rc < 0)
        return rc;
    int s = krange_bind(st, &w->kr);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 3, w->next_rev);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 4, cur);
    json_t *events cleanup_json = json_array();
    size_t scanned = 0, bytes = 0;
    int64_t next = cur + 1, last = 0;
    while (s == SQLITE_OK && (s = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t rev = sqlite3_column_int64(st, 3);
        if ((scanned >= BATCH_EVENTS || bytes >= BATCH_BYTES) && rev != last) {
            next = rev;
            break;
        }
        scanned++;
        last = rev;
        s = SQLITE_OK;
        bool del = sqlite3_column_int(st, 6) != 0;
        struct kv kv = {0}, prev = {0};
        kv_load(st, &kv);
        if (!wants(w, del, &kv.key)) {
            kv_free(&kv);
            continue;
        }
        if (del) /* a delete event carries only the key and the revision */
            kv.create_rev = kv.version = kv.lease = 0, buf_reset(&kv.value);
        bool has_prev = false;
        if (w->prev_kv)
            rc = log_prev(c, &kv.key, rev, &prev, &has_prev, err);
        if (rc == 0) {
            json_array_append_new(events, event_json(del, &kv, has_prev ? &prev : NULL));
            bytes += event_bytes(&kv, has_prev ? &prev : NULL);
        }
        kv_free(&kv);
        kv_free(&prev);
        if (rc < 0)
            return rc;
    }
    if (s != SQLITE_OK && s != SQLITE_ROW && s != SQLITE_DONE)
        return conn_err(c, s, err);
    w->next_rev = next;
    if (!json_array_size(events))
        return 0;
    *resp = events_resp(w, cur, steal_pointer(&events));
    return 1;
}

static int history(struct mvcc_watch *w, json_t **resp)
{
    struct pier_err err;
    struct conn *c = NULL;
    int rc = mvcc_conn_get(w->m, &c, &err);
    if (rc < 0)
        return rc;
    int64_t cur = 0, compact = 0;
    rc = mvcc_read_begin(c, &cur, &compact, &err);
    if (rc == 0) {
        if (w->next_rev < compact) {
            *resp = canceled_resp(w, compact);
            rc = 1;
        } else if (w->next_rev <= cur) {
            rc = log_read(w, c, cur, resp, &err);
        }
        mvcc_read_end(c);
    }
    mvcc_conn_put(w->m, c);
    return rc;
}

/* Takes the ring's records from next_rev on (ring_mu held), then builds the
 * response without the lock. Returns 1 with *resp or 0. */
static int from_ring(struct mvcc_watch *w, json_t **resp)
{
    struct mvcc *m = w->m;
    int64_t cur = atomic_load(&m->rev);
    size_t k = (size_t)(cur - w->next_rev + 1);
    if (k > BATCH_REVS)
        k = BATCH_REVS;
    struct rev_rec *recs[BATCH_REVS];
    size_t first = (size_t)(w->next_rev - m->ring_start);
    for (size_t i = 0; i < k; i++) {
        recs[i] = ring_at(m, first + i);
        atomic_fetch_add(&recs[i]->refs, 1);
    }
    pthread_mutex_unlock(&m->ring_mu);
    json_t *events = json_array();
    int64_t last = w->next_rev - 1;
    size_t bytes = 0;
    for (size_t i = 0; i < k && json_array_size(events) < BATCH_EVENTS && bytes < BATCH_BYTES;
         i++) {
        for (size_t j = 0; j < recs[i]->n; j++) {
            const struct event *ev = &recs[i]->ev[j];
            if (!wants(w, ev->del, &ev->kv.key))
                continue;
            const struct kv *prev = w->prev_kv && ev->has_prev ? &ev->prev : NULL;
            json_array_append_new(events, event_json(ev->del, &ev->kv, prev));
            bytes += event_bytes(&ev->kv, prev);
        }
        last = recs[i]->rev;
    }
    for (size_t i = 0; i < k; i++)
        rev_rec_unref(recs[i]);
    w->next_rev = last + 1;
    pthread_mutex_lock(&m->ring_mu);
    if (!json_array_size(events)) {
        json_decref(events);
        return 0;
    }
    *resp = events_resp(w, cur, events);
    return 1;
}

static void deadline_ts(int64_t deadline_ms, struct timespec *ts)
{
    ts->tv_sec = deadline_ms / 1000;
    ts->tv_nsec = (deadline_ms % 1000) * 1000000;
}

int mvcc_watch_next(struct mvcc_watch *w, int timeout_ms, json_t **resp)
{
    if (w->ended)
        return -ECANCELED;
    struct mvcc *m = w->m;
    int64_t deadline = mvcc_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int64_t progress_rev = -1; /* set when a progress notification is due */
    int rc = 0;
    pthread_mutex_lock(&m->ring_mu);
    for (;;) {
        if (m->closing) {
            rc = PIER_EUNAVAIL;
            break;
        }
        if (w->next_rev < m->compact_rev) {
            *resp = canceled_resp(w, m->compact_rev);
            rc = 1;
            break;
        }
        if (w->next_rev <= atomic_load(&m->rev)) {
            if (w->next_rev >= m->ring_start) {
                rc = from_ring(w, resp);
            } else {
                pthread_mutex_unlock(&m->ring_mu);
                rc = history(w, resp);
                pthread_mutex_lock(&m->ring_mu);
            }
            if (rc != 0)
                break;
            continue;
        }
        if (mvcc_now_ms() >= deadline) {
            /* Caught up here (next_rev is past rev), and the lock keeps it
             * so while the revision is read. As etcd: the store's revision,
             * which is next_rev - 1 unless the watch starts in the future. */
            if (w->progress && mvcc_now_ms() - w->last_sent_ms >= m->opt.watch_progress_interval_ms)
                progress_rev = atomic_load(&m->rev);
            break;
        }
        struct timespec ts;
        deadline_ts(deadline, &ts);
        pthread_cond_timedwait(&m->ring_cond, &m->ring_mu, &ts);
    }
    pthread_mutex_unlock(&m->ring_mu);
    if (progress_rev >= 0) {
        *resp = json_object();
        json_object_set_new(*resp, "header", mvcc_header(m, progress_rev));
        w->last_sent_ms = mvcc_now_ms();
    }
    return rc;
}
