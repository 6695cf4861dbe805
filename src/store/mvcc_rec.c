/* mvcc_rec: the shapes the engine moves (key ranges, kvs, events, the
 * records of one revision's events), recording a change in the history,
 * and the compaction of that history. */
#include "store/mvcc_int.h"

#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"

void krange_set_mode(struct krange *kr)
{
    if (kr->end.len == 0)
        kr->mode = KR_ONE;
    else if (kr->end.len == 1 && kr->end.p[0] == '\0')
        kr->mode = KR_FROM;
    else
        kr->mode = KR_RANGE;
}

int bytes_cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

bool krange_match(const struct krange *kr, const void *key, size_t len)
{
    int c = bytes_cmp(key, len, kr->key.p, kr->key.len);
    switch (kr->mode) {
    case KR_ONE: return c == 0;
    case KR_FROM: return c >= 0;
    case KR_RANGE: return c >= 0 && bytes_cmp(key, len, kr->end.p, kr->end.len) < 0;
    }
    return false;
}

const char *krange_sql(const struct krange *kr)
{
    switch (kr->mode) {
    case KR_ONE: return "key = ?1";
    case KR_FROM: return "key >= ?1";
    case KR_RANGE: return "key >= ?1 AND key < ?2";
    }
    return "0";
}

int krange_bind(sqlite3_stmt *st, const struct krange *kr)
{
    int rc = bind_bytes(st, 1, kr->key.p, kr->key.len);
    if (rc == SQLITE_OK && kr->mode == KR_RANGE)
        rc = bind_bytes(st, 2, kr->end.p, kr->end.len);
    return rc;
}

void krange_free(struct krange *kr)
{
    buf_free(&kr->key);
    buf_free(&kr->end);
}

void kv_free(struct kv *kv)
{
    buf_free(&kv->key);
    buf_free(&kv->value);
}

json_t *kv_json(const struct kv *kv, bool keys_only)
{
    json_t *o = json_object();
    jsonx_set_b64(o, "key", kv->key.p, kv->key.len);
    if (kv->create_rev)
        jsonx_set_int64_str(o, "create_revision", kv->create_rev);
    if (kv->mod_rev)
        jsonx_set_int64_str(o, "mod_revision", kv->mod_rev);
    if (kv->version)
        jsonx_set_int64_str(o, "version", kv->version);
    if (!keys_only && kv->value.len)
        jsonx_set_b64(o, "value", kv->value.p, kv->value.len);
    if (kv->lease)
        jsonx_set_int64_str(o, "lease", kv->lease);
    return o;
}

struct rev_rec *rev_rec_new(int64_t rev)
{
    struct rev_rec *rec = xcalloc(1, sizeof(*rec));
    atomic_init(&rec->refs, 1);
    rec->rev = rev;
    return rec;
}

struct event *rev_rec_add(struct rev_rec *rec)
{
    if (rec->n == rec->cap) {
        rec->cap = rec->cap ? rec->cap * 2 : 4;
        rec->ev = xrealloc(rec->ev, rec->cap * sizeof(*rec->ev));
    }
    struct event *ev = &rec->ev[rec->n++];
    memset(ev, 0, sizeof(*ev));
    return ev;
}

void rev_rec_unref(struct rev_rec *rec)
{
    if (!rec || atomic_fetch_sub(&rec->refs, 1) != 1)
        return;
    for (size_t i = 0; i < rec->n; i++) {
        kv_free(&rec->ev[i].kv);
        kv_free(&rec->ev[i].prev);
    }
    free(rec->ev);
    free(rec);
}

/* The key's newest history row before the write's revision, as its prev. */
static int prev_before(struct wctx *w, struct event *ev, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(w->c,
                       "SELECT key, value, create_rev, rev, version, lease, deleted FROM log"
                       " WHERE key = ?1 AND rev < ?2 ORDER BY rev DESC, id DESC LIMIT 1",
                       &st, err);
    if (rc < 0)
        return rc;
    int s = bind_bytes(st, 1, ev->kv.key.p, ev->kv.key.len);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 2, wctx_rev(w));
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        return conn_err(w->c, s, err);
    kv_free(&ev->prev);
    memset(&ev->prev, 0, sizeof(ev->prev));
    ev->has_prev = s == SQLITE_ROW && sqlite3_column_int(st, 6) == 0;
    if (ev->has_prev)
        kv_load(st, &ev->prev);
    return 0;
}

int wctx_record(struct wctx *w, struct event *ev, struct pier_err *err)
{
    /* Only a txn can meet a key it already changed in this revision (a put
     * after a delete of a range ending in "\0"): then, or when the key
     * seems new, the state before the revision is in the log. */
    if (w->in_txn && (!ev->has_prev || ev->prev.mod_rev == wctx_rev(w))) {
        int rc = prev_before(w, ev, err);
        if (rc < 0)
            return rc;
    }
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(w->c,
                       "INSERT INTO log(rev, key, value, create_rev, version, lease, deleted)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                       &st, err);
    if (rc < 0)
        return rc;
    const struct kv *kv = &ev->kv;
    int s = sqlite3_bind_int64(st, 1, wctx_rev(w));
    if (s == SQLITE_OK)
        s = bind_bytes(st, 2, kv->key.p, kv->key.len);
    if (s == SQLITE_OK)
        s = ev->del ? sqlite3_bind_null(st, 3) : bind_bytes(st, 3, kv->value.p, kv->value.len);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 4, kv->create_rev);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 5, kv->version);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int64(st, 6, kv->lease);
    if (s == SQLITE_OK)
        s = sqlite3_bind_int(st, 7, ev->del);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    if (s != SQLITE_DONE)
        return conn_err(w->c, s, err);
    if (!w->rec)
        w->rec = rev_rec_new(wctx_rev(w));
    struct event *dst = rev_rec_add(w->rec);
    *dst = *ev;
    memset(ev, 0, sizeof(*ev));
    w->rec->bytes += sizeof(*dst) + dst->kv.key.len + dst->kv.value.len + dst->prev.key.len +
                     dst->prev.value.len;
    return 0;
}

/* ---- compaction ---- */

int mvcc_compact_rows(struct conn *c, int64_t old_rev, int64_t rev, struct pier_err *err)
{
    /* Only keys changed since the last compaction can have more than one
     * row at or below rev: the last compaction left one row per key. So
     * the newest row of each key in (old_rev, rev] is the one to keep, every
     * older row of those keys goes, and a kept tombstone goes too. */
    static const char *const steps[] = {
        "DELETE FROM temp.compact_keep",
        "INSERT INTO temp.compact_keep SELECT key, max(id) FROM log"
        " WHERE rev > ?1 AND rev <= ?2 GROUP BY key",
        /* CROSS JOIN keeps the planner walking the few kept keys, not the
         * whole log below rev. */
        "DELETE FROM log WHERE id IN (SELECT o.id FROM temp.compact_keep k"
        " CROSS JOIN log o ON o.key = k.key AND o.rev <= ?2 AND o.id < k.id)",
        "DELETE FROM log WHERE id IN (SELECT l.id FROM temp.compact_keep k"
        " JOIN log l ON l.id = k.id WHERE l.deleted = 1)",
        "DELETE FROM temp.compact_keep",
    };
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        sqlite3_stmt *st cleanup_stmt = NULL;
        int rc = conn_stmt(c, steps[i], &st, err);
        if (rc < 0)
            return rc;
        int np = sqlite3_bind_parameter_count(st);
        int s = SQLITE_OK;
        if (np >= 1)
            s = sqlite3_bind_int64(st, 1, old_rev < 0 ? 0 : old_rev);
        if (s == SQLITE_OK && np >= 2)
            s = sqlite3_bind_int64(st, 2, rev);
        if (s == SQLITE_OK)
            s = sqlite3_step(st);
        if (s != SQLITE_DONE)
            return conn_err(c, s, err);
    }
    return 0;
}
