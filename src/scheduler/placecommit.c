/* placecommit: the placement transactions of a pass, grouped and
 * committed concurrently.
 *
 * Grouping. Each host's jobs are cut into as few transactions as the
 * limits allow, of even size (200 jobs: 100 and 100, not 98 and 2, so no
 * transaction of a round waits on a large one); they form the host's
 * chain. The jobs of hosts that fit in one transaction are packed
 * together, a chain of one each pack, so that a pass of a few jobs on each
 * of many hosts stays a few transactions rather than one a host.
 *
 * Committing. The chains, longest first, are taken by up to COMMIT_THREADS
 * threads (the calling one included): a chain's transactions run in order,
 * the ledger compare of each after the first on the revision of the one
 * before (the ledger was put in it, so its mod revision is the
 * transaction's). With 1,000 jobs on 5 hosts that is 3 rounds of 5
 * transactions in flight instead of 12 in a row: under load, where a
 * round trip to the store is 50-400 ms, the round trips are the time. */
#include "scheduler/placecommit.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/keys.h"

/* etcd refuses more than 128 operations (--max-txn-ops) per branch and
 * 1.5 MiB per request: stay well under both (as cluster.c does). */
#define TXN_MAX_OPS 100
#define TXN_MAX_BYTES (512 * 1024)
/* Transactions in flight at once, at most. */
#define COMMIT_THREADS 8

/* A host in a transaction: its compares and its ledger after the txn. */
struct txn_host {
    size_t host; /* index in hosts */
    char *ledger;
};

enum txn_state { TXN_SKIPPED, TXN_DONE, TXN_CONFLICT, TXN_FAILED };

struct ptxn {
    size_t *jobs; /* indexes in jobs, each host's in order */
    size_t n_jobs;
    struct txn_host *hosts; /* in host index order */
    size_t n_hosts;
    /* out: */
    enum txn_state state;
    int64_t revision;
    int rc;
    struct pier_err err;
};

/* Transactions first .. first + n - 1, committed in order. */
struct chain {
    size_t first, n;
};

/* One call's work. The threads read all but next and stop, and write only
 * their own transactions' outcome and their chain's hosts' ledger_rev. */
struct run {
    struct store *s;
    struct pc_host *hosts;
    size_t n_hosts;
    struct pc_job *jobs;
    size_t n;
    struct ptxn *txns;
    size_t n_txns;
    struct chain *chains;
    size_t n_chains;
    _Atomic size_t next; /* the next chain to take */
    _Atomic bool stop;   /* a store error: start nothing more */
};

/* ---- grouping ---- */

/* What a transaction's operations add up to (etcd counts the compares and
 * the operations of the branch that runs each against its limit). */
struct txn_size {
    size_t ops, cmps, bytes;
};

/* A host: its ledger put and two compares. */
static const struct txn_size HOST_SIZE = {1, 2, 0};

/* A job: its "key is new" compare and put; a replaced job: a compare and
 * a put. Only the jobs' records count towards the bytes. */
static struct txn_size job_size(const struct pc_job *j)
{
    size_t r = j->replaces ? 1 : 0;
    return (struct txn_size){1 + r, 1 + r, j->len};
}

static bool fits(struct txn_size a, struct txn_size b)
{
    return a.ops + b.ops <= TXN_MAX_OPS && a.cmps + b.cmps <= TXN_MAX_OPS &&
           a.bytes + b.bytes <= TXN_MAX_BYTES;
}

static void size_add(struct txn_size *a, struct txn_size b)
{
    a->ops += b.ops;
    a->cmps += b.cmps;
    a->bytes += b.bytes;
}

/* How many of one host's jobs list[0..n) go in its next transaction, at
 * most max and at least one however large, with *used what they take. */
static size_t host_take(const struct run *r, const size_t *list, size_t n, size_t max,
                        struct txn_size *used)
{
    *used = HOST_SIZE;
    size_t k = 0;
    for (; k < n && k < max; k++) {
        struct txn_size s = job_size(&r->jobs[list[k]]);
        if (k > 0 && !fits(*used, s))
            break;
        size_add(used, s);
    }
    return k;
}

static struct ptxn *txn_new(struct run *r)
{
    struct ptxn *t = &r->txns[r->n_txns++];
    *t = (struct ptxn){.state = TXN_SKIPPED};
    return t;
}

/* Adds host h's jobs list[0..n) to t, with the host's ledger after them. */
static void txn_add_host(struct run *r, struct ptxn *t, size_t h, const size_t *list, size_t n)
{
    t->jobs = xrealloc(t->jobs, (t->n_jobs + n) * sizeof(*t->jobs));
    memcpy(t->jobs + t->n_jobs, list, n * sizeof(*list));
    t->n_jobs += n;
    const struct pc_job *last = &r->jobs[list[n - 1]];
    json_t *ledger = json_pack("{s:s,s:I,s:I}", "host", r->hosts[h].id, "jobs",
                               (json_int_t)last->jobs, "memory", (json_int_t)last->memory);
    t->hosts = xrealloc(t->hosts, (t->n_hosts + 1) * sizeof(*t->hosts));
    t->hosts[t->n_hosts++] = (struct txn_host){h, json_dumps(ledger, JSON_COMPACT)};
    json_decref(ledger);
}

/* Cuts one host's jobs into a chain of even transactions. */
static void group_host(struct run *r, size_t h, const size_t *list, size_t n)
{
    struct txn_size used;
    size_t parts = 0;
    for (size_t at = 0; at < n; parts++)
        at += host_take(r, list + at, n - at, n, &used);
    size_t even = (n + parts - 1) / parts;
    struct chain ch = {.first = r->n_txns};
    for (size_t at = 0; at < n; ch.n++) {
        size_t k = host_take(r, list + at, n - at, even, &used);
        txn_add_host(r, txn_new(r), h, list + at, k);
        at += k;
    }
    r->chains[r->n_chains++] = ch;
}

static int chain_longer(const void *a, const void *b)
{
    const struct chain *x = a, *y = b;
    return x->n < y->n ? 1 : x->n > y->n ? -1 : x->first < y->first ? -1 : 1;
}

/* Fills r->txns and r->chains. */
static void group(struct run *r)
{
    size_t nh = r->n_hosts;
    size_t *start = xcalloc(nh + 1, sizeof(*start));
    for (size_t i = 0; i < r->n; i++)
        start[r->jobs[i].host + 1]++;
    for (size_t h = 0; h < nh; h++)
        start[h + 1] += start[h];
    /* by_host[start[h] .. start[h + 1]): host h's jobs, in order */
    size_t *by_host = xcalloc(r->n, sizeof(*by_host));
    size_t *fill = xcalloc(nh, sizeof(*fill));
    for (size_t i = 0; i < r->n; i++) {
        size_t h = r->jobs[i].host;
        by_host[start[h] + fill[h]++] = i;
    }
    /* Every transaction has a job at least. */
    r->txns = xcalloc(r->n, sizeof(*r->txns));
    r->chains = xcalloc(r->n, sizeof(*r->chains));
    struct ptxn *pack = NULL;
    struct txn_size packed = {0};
    for (size_t h = 0; h < nh; h++) {
        const size_t *list = by_host + start[h];
        size_t n = start[h + 1] - start[h];
        struct txn_size used;
        if (n == 0)
            continue;
        if (host_take(r, list, n, n, &used) < n) {
            group_host(r, h, list, n);
            continue;
        }
        if (!pack || !fits(packed, used)) {
            r->chains[r->n_chains++] = (struct chain){.first = r->n_txns, .n = 1};
            pack = txn_new(r);
            packed = (struct txn_size){0};
        }
        txn_add_host(r, pack, h, list, n);
        size_add(&packed, used);
    }
    qsort(r->chains, r->n_chains, sizeof(*r->chains), chain_longer);
    free(start);
    free(by_host);
    free(fill);
}

/* ---- committing ---- */

/* Builds t as one transaction (its jobs, its hosts' compares and ledgers,
 * the replaced jobs) and commits it. */
static void txn_run(struct run *r, struct ptxn *t)
{
    struct store_txn *txn = store_txn_new();
    cleanup_buf struct buf key = BUF_INIT;
    for (size_t i = 0; i < t->n_jobs; i++) {
        const struct pc_job *j = &r->jobs[t->jobs[i]];
        buf_reset(&key);
        buf_printf(&key, "%s%s", KEYS_JOBS, j->id);
        /* The uuid is new; the compare makes "new" certain. */
        store_txn_cmp(txn, key.p, STORE_CMP_CREATE, STORE_EQ, 0);
        store_txn_put(txn, STORE_THEN, key.p, j->text, j->len, 0);
    }
    for (size_t i = 0; i < t->n_hosts; i++) {
        const struct pc_host *h = &r->hosts[t->hosts[i].host];
        buf_reset(&key);
        buf_printf(&key, "%s%s", KEYS_HOSTS, h->id);
        store_txn_cmp(txn, key.p, STORE_CMP_CREATE, STORE_EQ, h->create_rev);
        buf_reset(&key);
        buf_printf(&key, "%s%s", KEYS_PLACEMENTS, h->id);
        store_txn_cmp(txn, key.p, STORE_CMP_MOD, STORE_EQ, h->ledger_rev);
        store_txn_put(txn, STORE_THEN, key.p, t->hosts[i].ledger, strlen(t->hosts[i].ledger), 0);
    }
    for (size_t i = 0; i < t->n_jobs; i++) {
        const struct pc_job *j = &r->jobs[t->jobs[i]];
        if (!j->replaces)
            continue;
        buf_reset(&key);
        buf_printf(&key, "%s%s", KEYS_JOBS, j->replaces);
        store_txn_cmp(txn, key.p, STORE_CMP_MOD, STORE_EQ, j->old_rev);
        store_txn_put(txn, STORE_THEN, key.p, j->old_text, strlen(j->old_text), 0);
    }
    struct store_txn_result *res = NULL;
    t->rc = store_txn_commit(r->s, txn, &res, &t->err);
    if (t->rc < 0) {
        t->state = TXN_FAILED;
    } else if (!res->succeeded) {
        t->state = TXN_CONFLICT;
    } else {
        t->state = TXN_DONE;
        t->revision = res->revision;
    }
    store_txn_result_free(res);
    store_txn_free(txn);
}

/* Commits a chain in order; stops at the first transaction that does not
 * commit (the next would compare a ledger revision never written). Only
 * this thread touches the chain's hosts meanwhile. */
static void chain_run(struct run *r, const struct chain *ch)
{
    for (size_t k = 0; k < ch->n && !atomic_load(&r->stop); k++) {
        struct ptxn *t = &r->txns[ch->first + k];
        txn_run(r, t);
        if (t->state == TXN_FAILED)
            atomic_store(&r->stop, true);
        if (t->state != TXN_DONE)
            return;
        for (size_t i = 0; i < t->n_hosts; i++)
            r->hosts[t->hosts[i].host].ledger_rev = t->revision;
        for (size_t i = 0; i < t->n_jobs; i++)
            r->jobs[t->jobs[i]].revision = t->revision;
    }
}

static void *worker(void *arg)
{
    struct run *r = arg;
    for (size_t i; (i = atomic_fetch_add(&r->next, 1)) < r->n_chains;)
        chain_run(r, &r->chains[i]);
    return NULL;
}

int placecommit_run(struct store *s, struct pc_host *hosts, size_t n_hosts, struct pc_job *jobs,
                    size_t n, struct pier_err *err)
{
    if (n == 0)
        return 0;
    struct run r = {.s = s, .hosts = hosts, .n_hosts = n_hosts, .jobs = jobs, .n = n};
    for (size_t i = 0; i < n; i++)
        jobs[i].revision = 0;
    group(&r);
    pthread_t tids[COMMIT_THREADS - 1];
    size_t n_threads = 0;
    for (; n_threads + 1 < COMMIT_THREADS && n_threads + 1 < r.n_chains; n_threads++)
        if (pthread_create(&tids[n_threads], NULL, worker, &r) != 0)
            break; /* fewer threads: the others take the rest */
    worker(&r);
    for (size_t i = 0; i < n_threads; i++)
        pthread_join(tids[i], NULL);
    int rc = 0;
    bool conflict = false;
    for (size_t i = 0; i < r.n_txns; i++) {
        struct ptxn *t = &r.txns[i];
        conflict |= t->state == TXN_CONFLICT;
        if (t->state == TXN_FAILED && rc == 0) {
            rc = t->rc;
            if (err)
                *err = t->err;
        }
        for (size_t h = 0; h < t->n_hosts; h++)
            free(t->hosts[h].ledger);
        free(t->hosts);
        free(t->jobs);
    }
    free(r.txns);
    free(r.chains);
    if (rc == 0 && conflict)
        rc = err_set(err, PIER_ECONFLICT,
                     "another placement or a job change came first; retry with a fresh view");
    return rc;
}
