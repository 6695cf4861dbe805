/* mvcc_kv: applying the key-value requests (range, put, delete range, txn,
 * compact) on a connection: the writer's for anything that writes, a read
 * connection otherwise (a txn without puts or deletes is a read).
 *
 * A txn runs as etcd 3.4 runs it: all compares, the nested txns' too, are
 * evaluated against the state before the txn; then the chosen branch's ops
 * run in order, a range seeing the txn's earlier writes; every change gets
 * the same revision; each sub-response's header carries the revision as
 * that op saw it (the old one until something changed). */
#include "store/mvcc_int.h"

#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"

#define E_COMPACTED "etcdserver: mvcc: required revision has been compacted"
#define E_FUTURE "etcdserver: mvcc: required revision is a future revision"

static const char *const resp_names[] = {"response_range", "response_put", "response_delete_range",
                                         "response_txn"};

/* Where an op runs: the writer's transaction (w set) or a read snapshot. */
struct xctx {
    struct mvcc *m;
    struct conn *c;
    struct wctx *w;
    int64_t rev, compact_rev; /* of the read snapshot */
};
static int64_t x_cur(const struct xctx *x)
{
    return x->w ? wctx_cur(x->w) : x->rev;
}
static int64_t x_compact(const struct xctx *x)
{
    return x->w ? x->w->compact_rev : x->compact_rev;
}

#define KV_COLS "key, value, create_rev, mod_rev, version, lease"

void kv_load(sqlite3_stmt *st, struct kv *kv)
{
    column_bytes(st, 0, &kv->key);
    column_bytes(st, 1, &kv->value);
    kv->create_rev = sqlite3_column_int64(st, 2);
    kv->mod_rev = sqlite3_column_int64(st, 3);
    kv->version = sqlite3_column_int64(st, 4);
    kv->lease = sqlite3_column_int64(st, 5);
}

/* Binds v to ?idx when the statement has that parameter. */
static int bind_i64(sqlite3_stmt *st, int idx, int64_t v)
{
    return idx <= sqlite3_bind_parameter_count(st) ? sqlite3_bind_int64(st, idx, v) : SQLITE_OK;
}

/* ---- range ---- */

/* Parameters: ?1 ?2 the key range, ?3 the revision of a historical read,
 * ?4..?7 the revision filters, ?9 the row limit. A historical read takes
 * each key's newest log row at or below ?3, unless it is a tombstone. */
#define HIST_SRC                                                                                   \
    "(SELECT l.key AS key, l.value AS value, l.create_rev AS create_rev, l.rev AS mod_rev,"        \
    " l.version AS version, l.lease AS lease FROM log l JOIN (SELECT max(id) AS id FROM log"       \
    " WHERE %s AND rev <= ?3 GROUP BY key) h ON l.id = h.id WHERE l.deleted = 0)"

static void range_sql(struct buf *sql, const struct range_req *r, bool hist, bool count)
{
    const char *kc = krange_sql(&r->kr);
    buf_puts(sql, count ? "SELECT count(*) FROM " : "SELECT " KV_COLS " FROM ");
    if (hist) {
        buf_printf(sql, HIST_SRC " WHERE 1", kc);
    } else {
        buf_printf(sql, "kv WHERE %s", kc);
    }
    if (count)
        return;
    if (r->min_mod)
        buf_puts(sql, " AND mod_rev >= ?4");
    if (r->max_mod)
        buf_puts(sql, " AND mod_rev <= ?5");
    if (r->min_create)
        buf_puts(sql, " AND create_rev >= ?6");
    if (r->max_create)
        buf_puts(sql, " AND create_rev <= ?7");
    static const char *const cols[] = {"key", "version", "create_rev", "mod_rev", "value"};
    int order = r->sort_order;
    if (r->sort_target != ST_KEY && order == SORT_NONE)
        order = SORT_ASCEND; /* as etcd: another target means sorting */
    const char *dir = order == SORT_DESCEND ? "DESC" : "ASC";
    if (r->sort_target == ST_KEY)
        buf_printf(sql, " ORDER BY key %s", dir);
    else
        buf_printf(sql, " ORDER BY %s %s, key ASC", cols[r->sort_target], dir);
    buf_puts(sql, " LIMIT ?9");
}

static int range_stmt(struct xctx *x, const struct range_req *r, int64_t rev, bool count,
                      sqlite3_stmt **st, struct pier_err *err)
{
    cleanup_buf struct buf sql = BUF_INIT;
    range_sql(&sql, r, rev != x_cur(x), count);
    int rc = conn_stmt(x->c, sql.p, st, err);
    if (rc < 0)
        return rc;
    int s = krange_bind(*st, &r->kr);
    if (s == SQLITE_OK)
        s = bind_i64(*st, 3, rev);
    int64_t vals[] = {r->min_mod, r->max_mod, r->min_create, r->max_create};
    for (int i = 0; i < 4 && s == SQLITE_OK; i++)
        s = bind_i64(*st, 4 + i, vals[i]);
    if (s == SQLITE_OK)
        /* One more than the limit tells whether there is "more"; a limit
         * of INT64_MAX is no limit (and +1 would overflow). */
        s = bind_i64(*st, 9, r->limit > 0 && r->limit < INT64_MAX ? r->limit + 1 : -1);
    return s == SQLITE_OK ? 0 : conn_err(x->c, s, err);
}

static int range_exec(struct xctx *x, const struct range_req *r, json_t *resp, struct pier_err *err)
{
    int64_t cur = x_cur(x);
    if (r->revision > cur)
        return err_set(err, PIER_ECOMPACTED, E_FUTURE);
    int64_t rev = r->revision > 0 ? r->revision : cur;
    if (rev < x_compact(x))
        return err_set(err, PIER_ECOMPACTED, E_COMPACTED);
    bool filtered = r->min_mod || r->max_mod || r->min_create || r->max_create;
    json_t *kvs cleanup_json = json_array();
    int64_t count = 0;
    bool more = false;
    int rc, s = SQLITE_DONE;
    if (!r->count_only) {
        sqlite3_stmt *st cleanup_stmt = NULL;
        if ((rc = range_stmt(x, r, rev, false, &st, err)) < 0)
            return rc;
        while ((s = sqlite3_step(st)) == SQLITE_ROW) {
            if (r->limit > 0 && (int64_t)json_array_size(kvs) == r->limit) {
                more = true;
                break;
            }
            struct kv kv = {0};
            kv_load(st, &kv);
            json_array_append_new(kvs, kv_json(&kv, r->keys_only));
            kv_free(&kv);
        }
        if (s != SQLITE_ROW && s != SQLITE_DONE)
            return conn_err(x->c, s, err);
        count = (int64_t)json_array_size(kvs);
    }
    if (r->count_only || more || filtered) {
        /* etcd counts every key in the range, filters and limit aside. */
        sqlite3_stmt *st cleanup_stmt = NULL;
        if ((rc = range_stmt(x, r, rev, true, &st, err)) < 0)
            return rc;
        if ((s = sqlite3_step(st)) != SQLITE_ROW)
            return conn_err(x->c, s, err);
        count = sqlite3_column_int64(st, 0);
    }
    if (json_array_size(kvs))
        json_object_set(resp, "kvs", kvs);
    if (more)
        json_object_set_new(resp, "more", json_true());
    if (count)
        jsonx_set_int64_str(resp, "count", count);
    return 0;
}

/* ---- put and delete ---- */

static int kv_get(struct conn *c, const struct buf *key, struct kv *kv, bool *found,
                  struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, "SELECT " KV_COLS " FROM kv WHERE key = ?1", &st, err);
    if (rc < 0)
        return rc;
    int s = bind_bytes(st, 1, key->p, key->len);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    *found = s == SQLITE_ROW;
    if (*found)
        kv_load(st, kv);
    return s == SQLITE_ROW || s == SQLITE_DONE ? 0 : conn_err(c, s, err);
}

static int kv_store(struct conn *c, const struct kv *kv, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = conn_stmt(c, "INSERT OR REPLACE INTO kv(" KV_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                       &st, err);
    if (rc < 0)
        return rc;
    int s = bind_bytes(st, 1, kv->key.p, kv->key.len);
    if (s == SQLITE_OK)
        s = bind_bytes(st, 2, kv->value.p, kv->value.len);
    int64_t vals[] = {kv->create_rev, kv->mod_rev, kv->version, kv->lease};
    for (int i = 0; i < 4 && s == SQLITE_OK; i++)
        s = sqlite3_bind_int64(st, 3 + i, vals[i]);
    if (s == SQLITE_OK)
        s = sqlite3_step(st);
    return s == SQLITE_DONE ? 0 : conn_err(c, s, err);
}

static int put_exec(struct xctx *x, const struct put_req *p, json_t *resp, struct pier_err *err)
{
    struct wctx *w = x->w;
    struct event ev = {0};
    int rc = kv_get(x->c, &p->key, &ev.prev, &ev.has_prev, err);
    if (rc == 0 && (p->ignore_value || p->ignore_lease) && !ev.has_prev)
        rc = err_set(err, PIER_EINVAL, "etcdserver: key not found");
    int64_t lease = p->ignore_lease ? ev.prev.lease : p->lease;
    if (rc == 0 && lease && !p->ignore_lease) {
        bool exists = false;
        rc = mvcc_lease_row_exists(x->c, lease, &exists, err);
        if (rc == 0 && !exists)
            rc = err_set(err, PIER_ENOTFOUND, "etcdserver: requested lease not found");
    }
    if (rc == 0) {
        struct kv *kv = &ev.kv;
        buf_append(&kv->key, p->key.p, p->key.len);
        if (p->ignore_value)
            buf_append(&kv->value, ev.prev.value.p, ev.prev.value.len);
        else
            buf_append(&kv->value, p->value.p, p->value.len);
        kv->mod_rev = wctx_rev(w);
        kv->create_rev = ev.has_prev ? ev.prev.create_rev : kv->mod_rev;
        kv->version = ev.has_prev ? ev.prev.version + 1 : 1;
        kv->lease = lease;
        rc = kv_store(x->c, kv, err);
    }
    if (rc == 0 && p->prev_kv && ev.has_prev)
        json_object_set_new(resp, "prev_kv", kv_json(&ev.prev, false));
    if (rc == 0)
        rc = wctx_record(w, &ev, err);
    kv_free(&ev.kv); /* emptied when recorded */
    kv_free(&ev.prev);
    return rc;
}

int mvcc_delete_selected(struct wctx *w, sqlite3_stmt *sel, json_t *prev_kvs, int64_t *deleted,
                         struct pier_err *err)
{
    /* Read every row first: deleting from a table while a statement walks
     * it is not defined. */
    struct kv *rows = NULL;
    size_t n = 0, cap = 0, i = 0;
    int s;
    while ((s = sqlite3_step(sel)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            rows = xrealloc(rows, cap * sizeof(*rows));
        }
        memset(&rows[n], 0, sizeof(*rows));
        kv_load(sel, &rows[n++]);
    }
    sqlite3_reset(sel);
    int rc = s == SQLITE_DONE ? 0 : conn_err(w->c, s, err);
    for (; i < n && rc == 0; i++) {
        sqlite3_stmt *st cleanup_stmt = NULL;
        rc = conn_stmt(w->c, "DELETE FROM kv WHERE key = ?1", &st, err);
        if (rc < 0)
            break;
        s = bind_bytes(st, 1, rows[i].key.p, rows[i].key.len);
        if (s == SQLITE_OK)
            s = sqlite3_step(st);
        if (s != SQLITE_DONE) {
            rc = conn_err(w->c, s, err);
            break;
        }
        if (prev_kvs)
            json_array_append_new(prev_kvs, kv_json(&rows[i], false));
        struct event ev = {.del = true, .has_prev = true, .prev = rows[i]};
        memset(&rows[i], 0, sizeof(rows[i]));
        buf_append(&ev.kv.key, ev.prev.key.p, ev.prev.key.len);
        ev.kv.mod_rev = wctx_rev(w);
        rc = wctx_record(w, &ev, err);
        kv_free(&ev.kv);
        kv_free(&ev.prev);
    }
    for (size_t k = 0; k < n; k++)
        kv_free(&rows[k]);
    free(rows);
    *deleted = (int64_t)n;
    return rc;
}

/* Prepares the select of the current keys in kr, in key order, bound and
 * ready to step (deletes and txn compares read the same rows). */
static int select_current(struct xctx *x, const struct krange *kr, sqlite3_stmt **st,
                          struct pier_err *err)
{
    cleanup_buf struct buf sql = BUF_INIT;
    buf_printf(&sql, "SELECT " KV_COLS " FROM kv WHERE %s ORDER BY key", krange_sql(kr));
    int rc = conn_stmt(x->c, sql.p, st, err);
    if (rc < 0)
        return rc;
    int s = krange_bind(*st, kr);
    return s == SQLITE_OK ? 0 : conn_err(x->c, s, err);
}

static int del_exec(struct xctx *x, const struct del_req *d, json_t *resp, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = select_current(x, &d->kr, &st, err);
    if (rc < 0)
        return rc;
    json_t *prevs cleanup_json = d->prev_kv ? json_array() : NULL;
    int64_t n = 0;
    rc = mvcc_delete_selected(x->w, st, prevs, &n, err);
    if (rc < 0)
        return rc;
    if (n)
        jsonx_set_int64_str(resp, "deleted", n);
    if (prevs && json_array_size(prevs))
        json_object_set(resp, "prev_kvs", prevs);
    return 0;
}

/* ---- txn ---- */

static int i64_cmp(int64_t a, int64_t b)
{
    return a < b ? -1 : a > b;
}

static bool cmp_kv(const struct cmp *c, const struct kv *kv)
{
    int r = 0;
    switch (c->target) {
    case CT_VALUE: r = bytes_cmp(kv->value.p, kv->value.len, c->value.p, c->value.len); break;
    case CT_VERSION: r = i64_cmp(kv->version, c->num); break;
    case CT_CREATE: r = i64_cmp(kv->create_rev, c->num); break;
    case CT_MOD: r = i64_cmp(kv->mod_rev, c->num); break;
    case CT_LEASE: r = i64_cmp(kv->lease, c->num); break;
    }
    switch (c->result) {
    case CR_EQUAL: return r == 0;
    case CR_GREATER: return r > 0;
    case CR_LESS: return r < 0;
    case CR_NOT_EQUAL: return r != 0;
    }
    return false;
}

/* Every key in the compare's range must pass. With no key there, a VALUE
 * compare fails (etcd cannot tell a missing value from an empty one), any
 * other compares against zero. */
static int cmp_eval(struct xctx *x, const struct cmp *c, bool *ok, struct pier_err *err)
{
    sqlite3_stmt *st cleanup_stmt = NULL;
    int rc = select_current(x, &c->kr, &st, err);
    if (rc < 0)
        return rc;
    int s = SQLITE_OK;
    bool any = false;
    *ok = true;
    while (s == SQLITE_OK && *ok && (s = sqlite3_step(st)) == SQLITE_ROW) {
        struct kv kv = {0};
        kv_load(st, &kv);
        any = true;
        *ok = cmp_kv(c, &kv);
        kv_free(&kv);
        s = SQLITE_OK;
    }
    if (s != SQLITE_OK && s != SQLITE_DONE)
        return conn_err(x->c, s, err);
    if (!any) {
        struct kv zero = {0};
        *ok = c->target != CT_VALUE && cmp_kv(c, &zero);
    }
    return 0;
}

static int eval_path(struct xctx *x, struct txn_req *t, struct pier_err *err)
{
    t->ok = true;
    for (size_t i = 0; i < t->ncmp && t->ok; i++) {
        int rc = cmp_eval(x, &t->cmps[i], &t->ok, err);
        if (rc < 0)
            return rc;
    }
    struct op *ops = t->ok ? t->succ : t->fail;
    size_t n = t->ok ? t->nsucc : t->nfail;
    for (size_t i = 0; i < n; i++) {
        int rc = ops[i].kind == OP_TXN ? eval_path(x, ops[i].txn, err) : 0;
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int op_exec(struct xctx *x, struct op *op, json_t *resp, struct pier_err *err);

static int txn_exec(struct xctx *x, struct txn_req *t, json_t *resp, struct pier_err *err)
{
    if (t->ok)
        json_object_set_new(resp, "succeeded", json_true());
    struct op *ops = t->ok ? t->succ : t->fail;
    size_t n = t->ok ? t->nsucc : t->nfail;
    json_t *arr cleanup_json = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *sub = json_object(), *hdr = json_object(), *wrap = json_object();
        json_object_set_new(sub, "header", hdr);                 /* hdr stays borrowed */
        json_object_set_new(wrap, resp_names[ops[i].kind], sub); /* sub too */
        json_array_append_new(arr, wrap);
        int rc = op_exec(x, &ops[i], sub, err);
        if (rc < 0)
            return rc;
        if (ops[i].kind != OP_TXN) /* a nested txn's header stays {} */
            jsonx_set_int64_str(hdr, "revision", x_cur(x));
    }
    if (json_array_size(arr))
        json_object_set(resp, "responses", arr);
    return 0;
}

static int op_exec(struct xctx *x, struct op *op, json_t *resp, struct pier_err *err)
{
    switch (op->kind) {
    case OP_RANGE: return range_exec(x, &op->range, resp, err);
    case OP_PUT: return put_exec(x, &op->put, resp, err);
    case OP_DEL: return del_exec(x, &op->del, resp, err);
    case OP_TXN: return txn_exec(x, op->txn, resp, err);
    }
    return err_set(err, PIER_EINTERNAL, "unknown op");
}

/* ---- the requests ---- */

static int top_exec(struct xctx *x, struct op *op, json_t **resp, struct pier_err *err)
{
    int rc = op->kind == OP_TXN ? eval_path(x, op->txn, err) : 0;
    if (rc < 0)
        return rc;
    json_t *o = json_object(), *hdr = json_object();
    json_object_set_new(o, "header", hdr); /* hdr stays borrowed */
    rc = op_exec(x, op, o, err);
    if (rc < 0) {
        json_decref(o);
        return rc;
    }
    mvcc_header_fill(x->m, hdr, x_cur(x));
    *resp = o;
    return 0;
}

static int op_apply(struct wctx *w, void *arg, json_t **resp, struct pier_err *err)
{
    struct xctx x = {.m = w->m, .c = w->c, .w = w};
    w->in_txn = ((struct op *)arg)->kind == OP_TXN;
    return top_exec(&x, arg, resp, err);
}

static int run_op(struct mvcc *m, struct op *op, json_t **resp, struct pier_err *err)
{
    if (op_writes(op)) {
        struct wreq r = {.apply = op_apply, .arg = op};
        return mvcc_submit_resp(m, &r, resp, err);
    }
    struct conn *c = NULL;
    int rc = mvcc_conn_get(m, &c, err);
    if (rc < 0)
        return rc;
    struct xctx x = {.m = m, .c = c};
    rc = mvcc_read_begin(c, &x.rev, &x.compact_rev, err);
    if (rc == 0) {
        rc = top_exec(&x, op, resp, err);
        mvcc_read_end(c);
    }
    mvcc_conn_put(m, c);
    return rc;
}

static int do_request(struct mvcc *m, enum op_kind kind, const json_t *req, json_t **resp,
                      struct pier_err *err)
{
    struct op op = {0};
    int rc = mvcc_parse_op(kind, req, &op, err);
    if (rc == 0)
        rc = run_op(m, &op, resp, err);
    op_free(&op);
    return rc;
}

int mvcc_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    return do_request(m, OP_RANGE, req, resp, err);
}

int mvcc_put(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    return do_request(m, OP_PUT, req, resp, err);
}

int mvcc_delete_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    return do_request(m, OP_DEL, req, resp, err);
}

int mvcc_txn(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    return do_request(m, OP_TXN, req, resp, err);
}

static int compact_apply(struct wctx *w, void *arg, json_t **resp, struct pier_err *err)
{
    int64_t rev = *(const int64_t *)arg;
    if (rev <= w->compact_rev)
        return err_set(err, PIER_ECOMPACTED, E_COMPACTED);
    if (rev > w->begin_rev)
        return err_set(err, PIER_ECOMPACTED, E_FUTURE);
    int rc = mvcc_compact_rows(w->c, w->compact_rev, rev, err);
    if (rc < 0)
        return rc;
    w->compact_rev = rev;
    *resp = json_object();
    json_object_set_new(*resp, "header", mvcc_header(w->m, w->begin_rev));
    return 0;
}

int mvcc_compact(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    int64_t rev = 0;
    bool physical = false; /* every compaction here is physical */
    int rc = jsonx_get_int64(req, "revision", &rev, err);
    if (rc >= 0)
        rc = jsonx_get_bool(req, "physical", &physical, err);
    if (rc < 0)
        return rc;
    struct wreq r = {.apply = compact_apply, .arg = &rev};
    return mvcc_submit_resp(m, &r, resp, err);
}
