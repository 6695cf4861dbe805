/* mvcc_parse: reading the gateway's JSON requests strictly into struct op,
 * and etcd's request checks that need no data (sizes, op counts, duplicate
 * keys in a txn). Messages name the field and where it is
 * ("success[1].request_put: field \"key\" is not valid base64"); etcd's own
 * checks answer with etcd's own text. */
#include "store/mvcc_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"

#define E_NOKEY "etcdserver: key is not provided"
#define E_TOOBIG "etcdserver: request is too large"

static const char *const sort_orders[] = {"NONE", "ASCEND", "DESCEND"};
static const char *const sort_targets[] = {"KEY", "VERSION", "CREATE", "MOD", "VALUE"};
static const char *const cmp_results[] = {"EQUAL", "GREATER", "LESS", "NOT_EQUAL"};
static const char *const cmp_targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
static const char *const op_names[] = {"request_range", "request_put", "request_delete_range",
                                       "request_txn"};

int mvcc_get_enum(const json_t *o, const char *field, const char *const *names, int n, int *out,
                  struct pier_err *err)
{
    json_t *v = json_object_get(o, field); /* borrowed */
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        for (int i = 0; i < n; i++) {
            if (strcmp(json_string_value(v), names[i]) == 0) {
                *out = i;
                return 1;
            }
        }
        return err_set(err, PIER_EINVAL, "field \"%s\": unknown value \"%s\"", field,
                       json_string_value(v));
    }
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < n) {
        *out = (int)json_integer_value(v);
        return 1;
    }
    return err_set(err, PIER_EINVAL, "field \"%s\" must be one of %s..%s (a name or its number)",
                   field, names[0], names[n - 1]);
}

int mvcc_get_bytes(const json_t *o, const char *field, struct buf *out, size_t *budget,
                   struct pier_err *err)
{
    size_t before = out->len;
    int r = jsonx_get_b64(o, field, out, err);
    if (r < 0)
        return r;
    if (out->len - before > *budget)
        return err_set(err, PIER_EINVAL, E_TOOBIG);
    *budget -= out->len - before;
    return r;
}

int mvcc_get_krange(const json_t *o, struct krange *kr, size_t *budget, struct pier_err *err)
{
    int rc = mvcc_get_bytes(o, "key", &kr->key, budget, err);
    if (rc >= 0)
        rc = mvcc_get_bytes(o, "range_end", &kr->end, budget, err);
    krange_set_mode(kr);
    return rc < 0 ? rc : 0;
}

/* Prefixes where a parse error happened, except for etcd's own messages,
 * which travel as etcd writes them. */
static int wrap_path(struct pier_err *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int wrap_path(struct pier_err *err, int rc, const char *fmt, ...)
{
    if (!err || strncmp(err->msg, "etcdserver:", 11) == 0)
        return rc;
    char where[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, sizeof(where), fmt, ap);
    va_end(ap);
    return err_wrap(err, rc, "%s", where);
}

static int get_i64s(const json_t *o, const char *const *names, int64_t *const *outs, size_t n,
                    struct pier_err *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = jsonx_get_int64(o, names[i], outs[i], err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int get_bools(const json_t *o, const char *const *names, bool *const *outs, size_t n,
                     struct pier_err *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = jsonx_get_bool(o, names[i], outs[i], err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_range(const json_t *o, struct range_req *r, size_t *budget, struct pier_err *err)
{
    static const char *const ints[] = {"limit",
                                       "revision",
                                       "min_mod_revision",
                                       "max_mod_revision",
                                       "min_create_revision",
                                       "max_create_revision"};
    int64_t *const iout[] = {&r->limit,   &r->revision,   &r->min_mod,
                             &r->max_mod, &r->min_create, &r->max_create};
    static const char *const bools[] = {"keys_only", "count_only", "serializable"};
    bool serializable = false;
    bool *const bout[] = {&r->keys_only, &r->count_only, &serializable};
    int rc = mvcc_get_krange(o, &r->kr, budget, err);
    if (rc == 0)
        rc = get_i64s(o, ints, iout, 6, err);
    if (rc == 0)
        rc = get_bools(o, bools, bout, 3, err);
    if (rc >= 0)
        rc = mvcc_get_enum(o, "sort_order", sort_orders, 3, &r->sort_order, err);
    if (rc >= 0)
        rc = mvcc_get_enum(o, "sort_target", sort_targets, 5, &r->sort_target, err);
    if (rc < 0)
        return rc;
    return r->kr.key.len ? 0 : err_set(err, PIER_EINVAL, E_NOKEY);
}

static int parse_put(const json_t *o, struct put_req *p, size_t *budget, struct pier_err *err)
{
    static const char *const bools[] = {"prev_kv", "ignore_value", "ignore_lease"};
    bool *const bout[] = {&p->prev_kv, &p->ignore_value, &p->ignore_lease};
    int rc = mvcc_get_bytes(o, "key", &p->key, budget, err);
    if (rc >= 0)
        rc = mvcc_get_bytes(o, "value", &p->value, budget, err);
    if (rc >= 0)
        rc = jsonx_get_int64(o, "lease", &p->lease, err);
    if (rc >= 0)
        rc = get_bools(o, bools, bout, 3, err);
    if (rc < 0)
        return rc;
    if (!p->key.len)
        return err_set(err, PIER_EINVAL, E_NOKEY);
    if (p->ignore_value && p->value.len)
        return err_set(err, PIER_EINVAL, "etcdserver: value is provided");
    if (p->ignore_lease && p->lease)
        return err_set(err, PIER_EINVAL, "etcdserver: lease is provided");
    return 0;
}

static int parse_del(const json_t *o, struct del_req *d, size_t *budget, struct pier_err *err)
{
    int rc = mvcc_get_krange(o, &d->kr, budget, err);
    if (rc == 0)
        rc = jsonx_get_bool(o, "prev_kv", &d->prev_kv, err);
    if (rc < 0)
        return rc;
    return d->kr.key.len ? 0 : err_set(err, PIER_EINVAL, E_NOKEY);
}

static int parse_cmp(const json_t *o, struct cmp *c, size_t *budget, struct pier_err *err)
{
    static const char *const fields[] = {"version", "create_revision", "mod_revision", NULL,
                                         "lease"};
    if (!json_is_object(o))
        return err_set(err, PIER_EINVAL, "must be an object");
    int rc = mvcc_get_krange(o, &c->kr, budget, err);
    if (rc >= 0)
        rc = mvcc_get_enum(o, "target", cmp_targets, 5, &c->target, err);
    if (rc >= 0)
        rc = mvcc_get_enum(o, "result", cmp_results, 4, &c->result, err);
    if (rc >= 0)
        rc = c->target == CT_VALUE ? mvcc_get_bytes(o, "value", &c->value, budget, err)
                                   : jsonx_get_int64(o, fields[c->target], &c->num, err);
    if (rc < 0)
        return rc;
    return c->kr.key.len ? 0 : err_set(err, PIER_EINVAL, E_NOKEY);
}

static void txn_free(struct txn_req *t);

void op_free(struct op *op)
{
    krange_free(&op->range.kr);
    buf_free(&op->put.key);
    buf_free(&op->put.value);
    krange_free(&op->del.kr);
    txn_free(op->txn);
}

static void txn_free(struct txn_req *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->ncmp; i++) {
        krange_free(&t->cmps[i].kr);
        buf_free(&t->cmps[i].value);
    }
    for (size_t i = 0; i < t->nsucc; i++)
        op_free(&t->succ[i]);
    for (size_t i = 0; i < t->nfail; i++)
        op_free(&t->fail[i]);
    free(t->cmps);
    free(t->succ);
    free(t->fail);
    free(t);
}

static int parse_txn(const json_t *o, struct txn_req **out, int depth, size_t *budget,
                     struct pier_err *err);

static int parse_op(const json_t *o, struct op *op, int depth, size_t *budget, struct pier_err *err)
{
    json_t *body = NULL; /* borrowed */
    int found = 0;
    for (int k = 0; k < 4; k++) {
        json_t *v = NULL;
        int rc = jsonx_get_obj(o, op_names[k], &v, err);
        if (rc < 0)
            return rc;
        if (rc > 0) {
            if (found++)
                return err_set(err, PIER_EINVAL, "more than one request in one op");
            body = v;
            op->kind = (enum op_kind)k;
        }
    }
    if (!body)
        return err_set(err, PIER_EINVAL,
                       "the op has none of request_range, request_put, request_delete_range, "
                       "request_txn");
    int rc;
    switch (op->kind) {
    case OP_RANGE: rc = parse_range(body, &op->range, budget, err); break;
    case OP_PUT: rc = parse_put(body, &op->put, budget, err); break;
    case OP_DEL: rc = parse_del(body, &op->del, budget, err); break;
    default: rc = parse_txn(body, &op->txn, depth + 1, budget, err); break;
    }
    return rc < 0 ? wrap_path(err, rc, "%s", op_names[op->kind]) : 0;
}

static int parse_ops(const json_t *o, const char *field, struct op **out, size_t *n, int depth,
                     size_t *budget, struct pier_err *err)
{
    json_t *arr = NULL; /* borrowed */
    int rc = jsonx_get_array(o, field, &arr, err);
    if (rc <= 0)
        return rc;
    if (json_array_size(arr) > MVCC_MAX_TXN_OPS)
        return err_set(err, PIER_EINVAL, "etcdserver: too many operations in txn request");
    *out = xcalloc(json_array_size(arr), sizeof(**out));
    for (size_t i = 0; i < json_array_size(arr); i++) {
        (*n)++;
        json_t *el = json_array_get(arr, i);
        rc = json_is_object(el) ? parse_op(el, &(*out)[i], depth, budget, err)
                                : err_set(err, PIER_EINVAL, "must be an object");
        if (rc < 0)
            return wrap_path(err, rc, "%s[%zu]", field, i);
    }
    return 0;
}

static int parse_txn(const json_t *o, struct txn_req **out, int depth, size_t *budget,
                     struct pier_err *err)
{
    if (depth > MVCC_MAX_TXN_DEPTH)
        return err_set(err, PIER_EINVAL, "txns nested more than %d deep", MVCC_MAX_TXN_DEPTH);
    struct txn_req *t = *out = xcalloc(1, sizeof(*t));
    json_t *arr = NULL; /* borrowed */
    int rc = jsonx_get_array(o, "compare", &arr, err);
    if (rc > 0 && json_array_size(arr) > MVCC_MAX_TXN_OPS)
        return err_set(err, PIER_EINVAL, "etcdserver: too many operations in txn request");
    if (rc > 0) {
        t->cmps = xcalloc(json_array_size(arr), sizeof(*t->cmps));
        for (size_t i = 0; i < json_array_size(arr); i++) {
            t->ncmp++;
            rc = parse_cmp(json_array_get(arr, i), &t->cmps[i], budget, err);
            if (rc < 0)
                return wrap_path(err, rc, "compare[%zu]", i);
        }
    }
    if (rc >= 0)
        rc = parse_ops(o, "success", &t->succ, &t->nsucc, depth, budget, err);
    if (rc >= 0)
        rc = parse_ops(o, "failure", &t->fail, &t->nfail, depth, budget, err);
    return rc < 0 ? rc : 0;
}

/* ---- etcd's duplicate-key rule ---- */

struct keyset {
    const struct buf **v;
    size_t n, cap;
};
struct ivset {
    const struct krange **v;
    size_t n, cap;
};

static bool keyset_has(const struct keyset *s, const struct buf *k)
{
    for (size_t i = 0; i < s->n; i++)
        if (bytes_cmp(s->v[i]->p, s->v[i]->len, k->p, k->len) == 0)
            return true;
    return false;
}

static void keyset_add(struct keyset *s, const struct buf *k)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = k;
}

static void ivset_add(struct ivset *s, const struct krange *kr)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = kr;
}

/* etcd keeps deletes in an interval tree where a range_end of "\0" makes an
 * interval that never intersects a key, so such deletes never conflict. */
static bool ivset_hits(const struct ivset *s, const struct buf *k)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i]->mode != KR_FROM && krange_match(s->v[i], k->p, k->len))
            return true;
    return false;
}

/* etcd's checkIntervals: within one branch, no key is put twice, and no put
 * falls in a deleted range (nested txns' then and else may put the same). */
static int check_ops(const struct op *ops, size_t n, struct keyset *puts, struct ivset *dels)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == OP_DEL)
            ivset_add(dels, &ops[i].del.kr);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].kind != OP_TXN)
            continue;
        const struct txn_req *t = ops[i].txn;
        struct keyset pt = {0}, pe = {0};
        struct ivset dt = {0}, de = {0};
        rc = check_ops(t->succ, t->nsucc, &pt, &dt);
        if (rc == 0)
            rc = check_ops(t->fail, t->nfail, &pe, &de);
        for (size_t k = 0; k < pt.n && rc == 0; k++) {
            if (keyset_has(puts, pt.v[k]) || ivset_hits(dels, pt.v[k]))
                rc = -1;
            keyset_add(puts, pt.v[k]);
        }
        for (size_t k = 0; k < pe.n && rc == 0; k++) {
            bool dup = keyset_has(puts, pe.v[k]);
            if ((dup && !keyset_has(&pt, pe.v[k])) || ivset_hits(dels, pe.v[k]))
                rc = -1;
            if (!dup)
                keyset_add(puts, pe.v[k]);
        }
        for (size_t k = 0; k < dt.n; k++)
            ivset_add(dels, dt.v[k]);
        for (size_t k = 0; k < de.n; k++)
            ivset_add(dels, de.v[k]);
        free(pt.v), free(pe.v), free(dt.v), free(de.v);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].kind != OP_PUT)
            continue;
        if (keyset_has(puts, &ops[i].put.key) || ivset_hits(dels, &ops[i].put.key))
            rc = -1;
        keyset_add(puts, &ops[i].put.key);
    }
    return rc;
}

static int check_dups(const struct txn_req *t, struct pier_err *err)
{
    int rc = 0;
    for (int branch = 0; branch < 2 && rc == 0; branch++) {
        struct keyset puts = {0};
        struct ivset dels = {0};
        rc = branch ? check_ops(t->fail, t->nfail, &puts, &dels)
                    : check_ops(t->succ, t->nsucc, &puts, &dels);
        free(puts.v);
        free(dels.v);
    }
    return rc < 0 ? err_set(err, PIER_EINVAL, "etcdserver: duplicate key given in txn request") : 0;
}

static bool ops_write(const struct op *ops, size_t n);
bool op_writes(const struct op *op)
{
    if (op->kind == OP_TXN)
        return ops_write(op->txn->succ, op->txn->nsucc) || ops_write(op->txn->fail, op->txn->nfail);
    return op->kind == OP_PUT || op->kind == OP_DEL;
}
static bool ops_write(const struct op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (op_writes(&ops[i]))
            return true;
    return false;
}

int mvcc_parse_op(enum op_kind kind, const json_t *req, struct op *op, struct pier_err *err)
{
    if (!json_is_object(req))
        return err_set(err, PIER_EINVAL, "the request must be a JSON object");
    size_t budget = MVCC_MAX_REQUEST;
    op->kind = kind;
    switch (kind) {
    case OP_RANGE: return parse_range(req, &op->range, &budget, err);
    case OP_PUT: return parse_put(req, &op->put, &budget, err);
    case OP_DEL: return parse_del(req, &op->del, &budget, err);
    case OP_TXN: break;
    }
    int rc = parse_txn(req, &op->txn, 0, &budget, err);
    return rc < 0 ? rc : check_dups(op->txn, err);
}
