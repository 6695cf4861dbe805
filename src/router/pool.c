/* pool: a worker's idle keep-alive connections to backends.
 *
 * A hash table (open addressing, linear probing, keyed by the rbackend
 * pointer) maps a backend to its idle connections, most recently used
 * first: the hottest connection is taken next and the others age out.
 * A slot exists only while its backend has idle connections (each holds a
 * reference on the backend, so the key stays valid). Every idle
 * connection is also on one LRU list per worker, oldest first, which the
 * sweep trims after POOL_IDLE_MS. */
#include <stdatomic.h>
#include <stdlib.h>

#include "router/proxy_int.h"

struct pool_slot {
    struct rbackend *be; /* NULL: free */
    struct bconn *head;
    unsigned n;
};

static size_t slot_hash(const struct rbackend *be, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)be;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static struct pool_slot *slot_find(const struct pool *p, const struct rbackend *be)
{
    if (!p->cap)
        return NULL;
    for (size_t i = slot_hash(be, p->cap);; i = (i + 1) & (p->cap - 1)) {
        if (p->v[i].be == be)
            return &p->v[i];
        if (!p->v[i].be)
            return NULL;
    }
}

static struct pool_slot *slot_insert(struct pool *p, struct rbackend *be);

static void grow(struct pool *p)
{
    struct pool_slot *old = p->v;
    size_t ocap = p->cap;
    p->cap = ocap ? ocap * 2 : 16;
    p->v = xcalloc(p->cap, sizeof(*p->v));
    p->used = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].be)
            *slot_insert(p, old[i].be) = old[i];
    free(old);
}

static struct pool_slot *slot_insert(struct pool *p, struct rbackend *be)
{
    if ((p->used + 1) * 2 > p->cap)
        grow(p);
    size_t i = slot_hash(be, p->cap);
    while (p->v[i].be)
        i = (i + 1) & (p->cap - 1);
    p->v[i].be = be;
    p->v[i].head = NULL;
    p->v[i].n = 0;
    p->used++;
    return &p->v[i];
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void slot_delete(struct pool *p, struct pool_slot *s)
{
    size_t i = (size_t)(s - p->v), mask = p->cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!p->v[j].be)
            break;
        size_t k = slot_hash(p->v[j].be, p->cap);
        /* Move j into the hole at i unless its home k lies in (i, j]. */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            p->v[i] = p->v[j];
            i = j;
        }
    }
    p->v[i].be = NULL;
    p->v[i].head = NULL;
    p->v[i].n = 0;
    p->used--;
}

static void unlink_idle(struct pool *p, struct pool_slot *s, struct bconn *b)
{
    if (b->pprev)
        b->pprev->pnext = b->pnext;
    else
        s->head = b->pnext;
    if (b->pnext)
        b->pnext->pprev = b->pprev;
    b->pprev = b->pnext = NULL;
    if (b->iprev)
        b->iprev->inext = b->inext;
    else
        p->lru_head = b->inext;
    if (b->inext)
        b->inext->iprev = b->iprev;
    else
        p->lru_tail = b->iprev;
    b->iprev = b->inext = NULL;
    b->idle = false;
    STAT_SUB(b->hw, idle_backend, 1);
    if (--s->n == 0)
        slot_delete(p, s);
}

struct bconn *pool_take(struct pool *p, struct rbackend *be)
{
    struct pool_slot *s = slot_find(p, be);
    if (!s)
        return NULL;
    struct bconn *b = s->head;
    unlink_idle(p, s, b);
    return b;
}

void pool_put(struct pool *p, struct bconn *b, uint64_t now)
{
    struct pool_slot *s = slot_find(p, b->be);
    if (!s)
        s = slot_insert(p, b->be);
    b->pprev = NULL;
    b->pnext = s->head;
    if (s->head)
        s->head->pprev = b;
    s->head = b;
    s->n++;
    b->iprev = p->lru_tail;
    b->inext = NULL;
    if (p->lru_tail)
        p->lru_tail->inext = b;
    else
        p->lru_head = b;
    p->lru_tail = b;
    b->idle = true;
    b->idle_since = now;
    STAT_ADD(b->hw, idle_backend, 1);
}

void pool_remove(struct pool *p, struct bconn *b)
{
    struct pool_slot *s = slot_find(p, b->be);
    if (s && b->idle)
        unlink_idle(p, s, b);
}

unsigned pool_count(const struct pool *p, const struct rbackend *be)
{
    const struct pool_slot *s = slot_find(p, be);
    return s ? s->n : 0;
}

void pool_expire(struct pool *p, uint64_t now)
{
    while (p->lru_head && now - p->lru_head->idle_since >= POOL_IDLE_MS)
        bconn_close(p->lru_head); /* unlinks it */
}

void pool_close_gone(struct pool *p)
{
    struct bconn *b = p->lru_head;
    while (b) {
        struct bconn *next = b->inext;
        if (atomic_load_explicit(&b->be->gone, memory_order_relaxed))
            bconn_close(b);
        b = next;
    }
}

void pool_close_all(struct pool *p)
{
    while (p->lru_head)
        bconn_close(p->lru_head);
}

void pool_free(struct pool *p)
{
    free(p->v);
    p->v = NULL;
    p->cap = p->used = 0;
}
