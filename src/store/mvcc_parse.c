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
#define E_TOOMANY "etcdserver: too many operations in txn request"
/* etcd caps each txn's compares and each branch at --max-txn-ops
 * (MVCC_MAX_TXN_OPS) but not a tree of nested txns, which its 1.5 MiB
 * request limit lets hold ~50000 ops. Here the whole tree's compares and
 * ops together are capped too, with etcd's message: nothing real nests
 * that much, and a bound keeps a request's checks and apply short. */
#define MAX_TREE_OPS 4096

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

/* ops_left: what is left of MAX_TREE_OPS for the request's txn tree. */
static int parse_txn(const json_t *o, struct txn_req **out, int depth, size_t *budget,
                     size_t *ops_left, struct pier_err *err);

static int parse_op(const json_t *o, struct op *op, int depth, size_t *budget, size_t *ops_left,
                    struct pier_err *err)
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
    default: rc = parse_txn(body, &op->txn, depth + 1, budget, ops_left, err); break;
    }
    return rc < 0 ? wrap_path(err, rc, "%s", op_names[op->kind]) : 0;
}

static int parse_ops(const json_t *o, const char *field, struct op **out, size_t *n, int depth,
                     size_t *budget, size_t *ops_left, struct pier_err *err)
{
    json_t *arr = NULL; /* borrowed */
    int rc = jsonx_get_array(o, field, &arr, err);
    if (rc <= 0)
        return rc;
    if (json_array_size(arr) > MVCC_MAX_TXN_OPS || json_array_size(arr) > *ops_left)
        return err_set(err, PIER_EINVAL, E_TOOMANY);
    *ops_left -= json_array_size(arr);
    *out = xcalloc(json_array_size(arr), sizeof(**out));
    for (size_t i = 0; i < json_array_size(arr); i++) {
        (*n)++;
        json_t *el = json_array_get(arr, i);
        rc = json_is_object(el) ? parse_op(el, &(*out)[i], depth, budget, ops_left, err)
                                : err_set(err, PIER_EINVAL, "must be an object");
        if (rc < 0)
            return wrap_path(err, rc, "%s[%zu]", field, i);
    }
    return 0;
}

static int parse_txn(const json_t *o, struct txn_req **out, int depth, size_t *budget,
                     size_t *ops_left, struct pier_err *err)
{
    if (depth > MVCC_MAX_TXN_DEPTH)
        return err_set(err, PIER_EINVAL, "txns nested more than %d deep", MVCC_MAX_TXN_DEPTH);
    struct txn_req *t = *out = xcalloc(1, sizeof(*t));
    json_t *arr = NULL; /* borrowed */
    int rc = jsonx_get_array(o, "compare", &arr, err);
    if (rc > 0 && (json_array_size(arr) > MVCC_MAX_TXN_OPS || json_array_size(arr) > *ops_left))
        return err_set(err, PIER_EINVAL, E_TOOMANY);
    if (rc > 0) {
        *ops_left -= json_array_size(arr);
        t->cmps = xcalloc(json_array_size(arr), sizeof(*t->cmps));
        for (size_t i = 0; i < json_array_size(arr); i++) {
            t->ncmp++;
            rc = parse_cmp(json_array_get(arr, i), &t->cmps[i], budget, err);
            if (rc < 0)
                return wrap_path(err, rc, "compare[%zu]", i);
        }
    }
    if (rc >= 0)
        rc = parse_ops(o, "success", &t->succ, &t->nsucc, depth, budget, ops_left, err);
    if (rc >= 0)
        rc = parse_ops(o, "failure", &t->fail, &t->nfail, depth, budget, ops_left, err);
    return rc < 0 ? rc : 0;
}

/* ---- etcd's duplicate-key rule ----
 *
 * etcd's checkIntervals, level by level from the leaves: a level's deletes
 * go in first; then each nested txn in order: its puts (then and else) must
 * not be among the puts collected so far (then and else may share a key:
 * only one runs) nor in a delete seen so far (this level's, and those of
 * the nested txns before it), and its deletes join the level's; last, the
 * level's own puts must be new and outside every delete. A delete whose
 * range_end is "\0" never conflicts (etcd's interval tree never finds a key
 * in it).
 *
 * Done naively that is quadratic in the keys, and a nested txn repeats it
 * at every level. Here each level sorts instead: the puts by key, tagged
 * with who put them (a nested txn, or one of the level's own puts), so a
 * duplicate is two equal neighbours with different owners; and the
 * put-inside-a-delete check is one sweep over the keys in order, keeping
 * the deletes that cover the current key in a heap by their arrival
 * ("time"): a key put at time t conflicts when the earliest delete covering
 * it came before t. O(n log n) per level. */

struct put_ent {
    const struct buf *key;
    size_t owner;
};
struct del_ent {
    const struct krange *kr;
    size_t time;
};
/* What a branch hands its parent: its puts (sorted, distinct) and deletes. */
struct branch_sets {
    struct put_ent *puts;
    size_t nputs, puts_cap;
    struct del_ent *dels;
    size_t ndels, dels_cap;
};

static void puts_add(struct branch_sets *b, const struct buf *key, size_t owner)
{
    if (b->nputs == b->puts_cap) {
        b->puts_cap = b->puts_cap ? b->puts_cap * 2 : 8;
        b->puts = xrealloc(b->puts, b->puts_cap * sizeof(*b->puts));
    }
    b->puts[b->nputs++] = (struct put_ent){key, owner};
}

static void dels_add(struct branch_sets *b, const struct krange *kr, size_t time)
{
    if (kr->mode == KR_FROM) /* never conflicts */
        return;
    if (b->ndels == b->dels_cap) {
        b->dels_cap = b->dels_cap ? b->dels_cap * 2 : 8;
        b->dels = xrealloc(b->dels, b->dels_cap * sizeof(*b->dels));
    }
    b->dels[b->ndels++] = (struct del_ent){kr, time};
}

static void branch_free(struct branch_sets *b)
{
    free(b->puts);
    free(b->dels);
}

static int put_ent_cmp(const void *a, const void *b)
{
    const struct put_ent *x = a, *y = b;
    int c = bytes_cmp(x->key->p, x->key->len, y->key->p, y->key->len);
    return c ? c : x->owner < y->owner ? -1 : x->owner > y->owner;
}

static int del_ent_cmp(const void *a, const void *b)
{
    const struct del_ent *x = a, *y = b;
    return bytes_cmp(x->kr->key.p, x->kr->key.len, y->kr->key.p, y->kr->key.len);
}

/* A min-heap of deletes by time. */
struct del_heap {
    const struct del_ent **v;
    size_t n;
};

static void heap_push(struct del_heap *h, const struct del_ent *d)
{
    size_t i = h->n++;
    while (i && h->v[(i - 1) / 2]->time > d->time) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = d;
}

static void heap_pop(struct del_heap *h)
{
    const struct del_ent *d = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->v[c + 1]->time < h->v[c]->time)
            c++;
        if (h->v[c]->time >= d->time)
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = d;
}

/* Whether any put (time: its owner) falls in a delete that came before it.
 * puts and dels are sorted by key. */
static bool puts_hit_dels(const struct put_ent *puts, size_t np, const struct del_ent *dels,
                          size_t nd)
{
    struct del_heap h = {.v = xcalloc(nd ? nd : 1, sizeof(*h.v))};
    size_t next = 0;
    bool hit = false;
    for (size_t i = 0; i < np && !hit; i++) {
        const struct buf *k = puts[i].key;
        while (next < nd &&
               bytes_cmp(dels[next].kr->key.p, dels[next].kr->key.len, k->p, k->len) <= 0)
            heap_push(&h, &dels[next++]);
        /* Keys only grow: a delete that ends before this key is done with. */
        while (h.n && !krange_match(h.v[0]->kr, k->p, k->len))
            heap_pop(&h);
        hit = h.n && h.v[0]->time < puts[i].owner;
    }
    free(h.v);
    return hit;
}

static int check_ops(const struct op *ops, size_t n, struct branch_sets *out);

/* Adds nested txn t's puts and deletes to the level's, as owner/time. */
static int check_nested(const struct txn_req *t, size_t owner, struct branch_sets *lvl)
{
    struct branch_sets then = {0}, els = {0};
    int rc = check_ops(t->succ, t->nsucc, &then);
    if (rc == 0)
        rc = check_ops(t->fail, t->nfail, &els);
    for (size_t k = 0; k < then.nputs; k++)
        puts_add(lvl, then.puts[k].key, owner);
    for (size_t k = 0; k < els.nputs; k++)
        puts_add(lvl, els.puts[k].key, owner);
    for (size_t k = 0; k < then.ndels; k++)
        dels_add(lvl, then.dels[k].kr, owner);
    for (size_t k = 0; k < els.ndels; k++)
        dels_add(lvl, els.dels[k].kr, owner);
    branch_free(&then);
    branch_free(&els);
    return rc;
}

/* One branch (ops[0..n)): fails when it breaks the rule, else fills out with
 * its puts, distinct and sorted, and its deletes. Owners: nested txn i is
 * i + 1 (its deletes too); the level's deletes are 0; the level's own puts
 * come after every nested txn. */
static int check_ops(const struct op *ops, size_t n, struct branch_sets *out)
{
    struct branch_sets lvl = {0};
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == OP_DEL)
            dels_add(&lvl, &ops[i].del.kr, 0);
    for (size_t i = 0; i < n && rc == 0; i++)
        if (ops[i].kind == OP_TXN)
            rc = check_nested(ops[i].txn, i + 1, &lvl);
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == OP_PUT)
            puts_add(&lvl, &ops[i].put.key, n + 1 + i);
    if (rc == 0) {
        if (lvl.nputs > 1) /* qsort wants a non-NULL array */
            qsort(lvl.puts, lvl.nputs, sizeof(*lvl.puts), put_ent_cmp);
        if (lvl.ndels > 1)
            qsort(lvl.dels, lvl.ndels, sizeof(*lvl.dels), del_ent_cmp);
        if (puts_hit_dels(lvl.puts, lvl.nputs, lvl.dels, lvl.ndels))
            rc = -1;
    }
    /* Equal keys are neighbours; only a nested txn's then and else (one
     * owner) may share one. */
    size_t w = 0;
    for (size_t i = 0; i < lvl.nputs && rc == 0; i++) {
        const struct put_ent *p = &lvl.puts[i];
        if (w && bytes_cmp(lvl.puts[w - 1].key->p, lvl.puts[w - 1].key->len, p->key->p,
                           p->key->len) == 0) {
            if (lvl.puts[w - 1].owner != p->owner)
                rc = -1;
            continue;
        }
        lvl.puts[w++] = *p;
    }
    lvl.nputs = w;
    if (rc < 0) {
        branch_free(&lvl);
        return rc;
    }
    *out = lvl;
    return 0;
}

static int check_dups(const struct txn_req *t, struct pier_err *err)
{
    int rc = 0;
    for (int branch = 0; branch < 2 && rc == 0; branch++) {
        struct branch_sets b = {0};
        rc = branch ? check_ops(t->fail, t->nfail, &b) : check_ops(t->succ, t->nsucc, &b);
        branch_free(&b);
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
    size_t ops_left = MAX_TREE_OPS;
    int rc = parse_txn(req, &op->txn, 0, &budget, &ops_left, err);
    return rc < 0 ? rc : check_dups(op->txn, err);
}
