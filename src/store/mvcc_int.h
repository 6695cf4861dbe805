/* mvcc_int: what the mvcc_*.c files share; not for other modules.
 *
 * mvcc.c opens the store and runs the writer thread (group commit);
 * mvcc_db.c holds the SQLite connections; mvcc_rec.c the kvs, events and
 * history rows; mvcc_parse.c reads requests; mvcc_kv.c applies the
 * key-value requests; mvcc_watch.c keeps the ring of recent events and
 * serves watches; mvcc_lease.c keeps the lease table and its expiry
 * thread; mvcc_upkeep.c checkpoints the WAL and gives free pages back on a
 * thread of its own. */
#ifndef PIER_MVCC_INT_H
#define PIER_MVCC_INT_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "store/mvcc.h"

/* etcd's defaults: --max-request-bytes (1.5 MiB), --max-txn-ops, and the
 * largest lease TTL it grants. */
#define MVCC_MAX_REQUEST (1536 * 1024)
#define MVCC_MAX_TXN_OPS 128
#define MVCC_MAX_TXN_DEPTH 16
#define MVCC_MAX_LEASE_TTL 9000000000LL

/* One SQLite connection and its cache of prepared statements. A connection
 * is used by one thread at a time. The cache grows during a request (so no
 * statement a caller holds is ever finalized under it) and is trimmed back
 * to CONN_CACHE, least recently used first, between requests. */
#define CONN_CACHE 64
struct conn_stmt {
    char *sql;
    sqlite3_stmt *st;
    uint64_t used;
};
struct conn {
    sqlite3 *db;
    struct conn_stmt *cache;
    size_t ncache, cache_cap;
    uint64_t tick;
    struct conn *next_free;
};

/* A statement from the connection's cache, reset and unbound. Borrowed: it
 * stays the connection's until conn_trim; reset it after use (cleanup_stmt
 * does). */
int conn_stmt(struct conn *c, const char *sql, sqlite3_stmt **out, struct pier_err *err);
/* Between requests: finalizes the least used statements past CONN_CACHE. */
void conn_trim(struct conn *c);
/* Opens dir's database for the writer (which sets the database up: WAL,
 * synchronous=FULL, auto_vacuum; no automatic checkpoints) or for
 * reading. */
int conn_open(const char *path, bool writer, struct conn **out, struct pier_err *err);
/* Finalizes the statements and closes. NULL allowed. */
void conn_close(struct conn *c);
/* Runs a script of statements (not cached). */
int conn_script(struct conn *c, const char *sql, struct pier_err *err);
/* Runs a statement that returns no rows. */
int conn_exec(struct conn *c, const char *sql, struct pier_err *err);
/* PIER_EINTERNAL with SQLite's message for rc. */
int conn_err(struct conn *c, int rc, struct pier_err *err);

static inline void stmt_resetp(sqlite3_stmt **st)
{
    if (*st)
        sqlite3_reset(*st);
}
#define cleanup_stmt __attribute__((cleanup(stmt_resetp)))

/* Binds n bytes (a zero-length blob, never NULL, when n is 0). */
int bind_bytes(sqlite3_stmt *st, int idx, const void *p, size_t n);
/* Appends column col's bytes to out. */
void column_bytes(sqlite3_stmt *st, int col, struct buf *out);

/* A read connection from the pool (opened on demand), and giving it back. */
int mvcc_conn_get(struct mvcc *m, struct conn **out, struct pier_err *err);
void mvcc_conn_put(struct mvcc *m, struct conn *c);
/* BEGIN on a read connection, reading the snapshot's revision and
 * compacted revision. End it with mvcc_read_end. */
int mvcc_read_begin(struct conn *c, int64_t *rev, int64_t *compact_rev, struct pier_err *err);
void mvcc_read_end(struct conn *c);

/* A key range as etcd spells it: end empty is the one key, end "\0" is every
 * key >= key, otherwise [key, end). */
enum krange_mode { KR_ONE, KR_FROM, KR_RANGE };
struct krange {
    struct buf key, end;
    enum krange_mode mode;
};
/* Orders byte strings as etcd (and SQLite's BLOB comparison) does. */
int bytes_cmp(const void *a, size_t alen, const void *b, size_t blen);

void krange_set_mode(struct krange *kr);
bool krange_match(const struct krange *kr, const void *key, size_t len);
/* The SQL condition on column `key` for kr, with ?1 the key and ?2 the end. */
const char *krange_sql(const struct krange *kr);
int krange_bind(sqlite3_stmt *st, const struct krange *kr);
void krange_free(struct krange *kr);

/* A key-value as etcd returns it. */
struct kv {
    struct buf key, value;
    int64_t create_rev, mod_rev, version, lease;
};
void kv_free(struct kv *kv);
/* etcd's KeyValue JSON with default fields omitted; a new reference. */
json_t *kv_json(const struct kv *kv, bool keys_only);

/* One change of a revision, and all the changes of one revision. Records are
 * immutable once published to the ring and shared by watchers through refs. */
struct event {
    bool del;
    bool has_prev;
    struct kv kv; /* a delete carries only key and mod_rev */
    struct kv prev;
};
struct rev_rec {
    atomic_int refs;
    int64_t rev;
    size_t bytes;
    size_t n, cap;
    struct event *ev;
};
struct rev_rec *rev_rec_new(int64_t rev);
/* Appends an empty event and returns it (owned by rec). */
struct event *rev_rec_add(struct rev_rec *rec);
void rev_rec_unref(struct rev_rec *rec);

/* What the writer hands to each write while applying it. */
struct wctx {
    struct mvcc *m;
    struct conn *c;
    int64_t begin_rev;   /* the revision before this write */
    int64_t compact_rev; /* updated by a compaction */
    struct rev_rec *rec; /* this write's events; NULL until the first */
    bool in_txn;         /* a txn: it may touch a key twice in its revision */
};
/* The revision this write's changes get. */
static inline int64_t wctx_rev(const struct wctx *w)
{
    return w->begin_rev + 1;
}
/* The revision a read inside this write sees: begin_rev, or begin_rev+1 once
 * something changed. */
static inline int64_t wctx_cur(const struct wctx *w)
{
    return w->begin_rev + (w->rec && w->rec->n ? 1 : 0);
}
/* Records a change at wctx_rev(w): inserts its history row and moves *ev
 * (its buffers included; *ev is left empty) into this write's events. The
 * caller changes the kv table itself. An event's prev is the key's state
 * before the revision (what etcd's watch shows), even when a txn touched the
 * key earlier in the same revision. */
int wctx_record(struct wctx *w, struct event *ev, struct pier_err *err);

/* A write queued for the writer. apply runs on the writer thread inside the
 * group's transaction (and a savepoint of its own), builds *resp, and may
 * fail, which undoes it. after runs once the group is durable. */
struct wreq {
    int (*apply)(struct wctx *w, void *arg, json_t **resp, struct pier_err *err);
    void (*after)(struct mvcc *m, void *arg);
    void *arg;
    json_t *resp;
    int rc;
    struct pier_err err;
    bool done;
    struct rev_rec *rec;
    struct wreq *next;
};
/* Queues r, waits until it is durable (or failed); returns r->rc. */
int mvcc_submit(struct mvcc *m, struct wreq *r);
/* mvcc_submit, then on success moves r->resp to *resp (or drops it when
 * resp is NULL), on failure copies r->err to *err. */
int mvcc_submit_resp(struct mvcc *m, struct wreq *r, json_t **resp, struct pier_err *err);
/* Queues rs[0..n) together, so they are applied in order in one group (one
 * commit), and waits until all are durable or failed; see each rs[i]->rc. */
void mvcc_submit_all(struct mvcc *m, struct wreq *rs, size_t n);

/* The response "header": the full one (cluster_id, member_id, revision,
 * raft_term; revision omitted when 0), or the short {"revision"} etcd puts
 * in txn sub-responses. New references. */
json_t *mvcc_header(struct mvcc *m, int64_t rev);
void mvcc_header_fill(struct mvcc *m, json_t *hdr, int64_t rev);

/* The compaction itself, on the writer's connection: drops history at or
 * below rev except each key's newest entry there (dropped too when it is a
 * delete). */
int mvcc_compact_rows(struct conn *c, int64_t old_rev, int64_t rev, struct pier_err *err);

/* Parsed requests (mvcc_parse.c); enum values are etcd's. */
enum op_kind { OP_RANGE, OP_PUT, OP_DEL, OP_TXN };
enum { SORT_NONE, SORT_ASCEND, SORT_DESCEND };
enum { ST_KEY, ST_VERSION, ST_CREATE, ST_MOD, ST_VALUE };
enum { CR_EQUAL, CR_GREATER, CR_LESS, CR_NOT_EQUAL };
enum { CT_VERSION, CT_CREATE, CT_MOD, CT_VALUE, CT_LEASE };

struct range_req {
    struct krange kr;
    int64_t limit, revision, min_mod, max_mod, min_create, max_create;
    int sort_order, sort_target;
    bool keys_only, count_only;
};
struct put_req {
    struct buf key, value;
    int64_t lease;
    bool prev_kv, ignore_value, ignore_lease;
};
struct del_req {
    struct krange kr;
    bool prev_kv;
};
struct cmp {
    struct krange kr;
    int target, result;
    int64_t num;
    struct buf value;
};
struct txn_req;
/* One request; only the member of its kind is used. */
struct op {
    enum op_kind kind;
    struct range_req range;
    struct put_req put;
    struct del_req del;
    struct txn_req *txn;
};
struct txn_req {
    struct cmp *cmps;
    struct op *succ, *fail;
    size_t ncmp, nsucc, nfail;
    bool ok; /* the compares' verdict, set before any op runs */
};

/* Parses a top-level request body of the given kind into op (zeroed by the
 * caller; free it with op_free even on failure). A txn is also checked for
 * duplicate keys. */
int mvcc_parse_op(enum op_kind kind, const json_t *req, struct op *op, struct pier_err *err);
void op_free(struct op *op);
/* Whether op (a txn: either branch, nested ones too) puts or deletes. */
bool op_writes(const struct op *op);

/* Request parsing shared by the kv, watch and lease requests
 * (mvcc_kv.c). budget is what is left of MVCC_MAX_REQUEST. */
int mvcc_get_enum(const json_t *o, const char *field, const char *const *names, int n, int *out,
                  struct pier_err *err);
int mvcc_get_bytes(const json_t *o, const char *field, struct buf *out, size_t *budget,
                   struct pier_err *err);
/* "key" and "range_end" into kr (the key may be empty: callers check). */
int mvcc_get_krange(const json_t *o, struct krange *kr, size_t *budget, struct pier_err *err);
/* Deletes the kv rows sel returns (full rows: key, value, create_rev,
 * mod_rev, version, lease, in key order) as one change of w, appending
 * their previous values to prev_kvs when it is not NULL. */
int mvcc_delete_selected(struct wctx *w, sqlite3_stmt *sel, json_t *prev_kvs, int64_t *deleted,
                         struct pier_err *err);
/* Loads a full kv row (columns as above, from col 0). */
void kv_load(sqlite3_stmt *st, struct kv *kv);

/* Lease table (mvcc_lease.c). */
struct lease {
    int64_t id, ttl;
    int64_t expiry_ms; /* CLOCK_MONOTONIC */
    bool revoking;
};
/* Whether lease id is granted, as the write connection c sees it. */
int mvcc_lease_row_exists(struct conn *c, int64_t id, bool *exists, struct pier_err *err);
int mvcc_lease_start(struct mvcc *m, struct conn *c, struct pier_err *err);
void mvcc_lease_stop(struct mvcc *m);

/* Watch ring (mvcc_watch.c). */
void mvcc_ring_init(struct mvcc *m);
void mvcc_ring_free(struct mvcc *m);
/* Publishes a committed group: records (in revision order, owned by the
 * ring afterwards), the new revision and compacted revision. */
void mvcc_ring_publish(struct mvcc *m, struct rev_rec **recs, size_t n, int64_t rev,
                       int64_t compact_rev);
/* Wakes the watches and waits until every one is freed. */
void mvcc_ring_close(struct mvcc *m);

int64_t mvcc_now_ms(void);

/* Upkeep (mvcc_upkeep.c): checkpoints the WAL and gives free pages back on
 * its own thread and connection. Start it once the tables exist and before
 * the writer runs; stop it after the writer has stopped (NULL m->up
 * allowed). mvcc_upkeep_kick tells it a compaction freed pages. */
struct upkeep;
int mvcc_upkeep_start(struct mvcc *m, struct pier_err *err);
void mvcc_upkeep_stop(struct mvcc *m);
void mvcc_upkeep_kick(struct mvcc *m);
/* The writer passes the gate around each group's transaction. */
void mvcc_gate_enter(struct mvcc *m);
void mvcc_gate_leave(struct mvcc *m);

struct mvcc {
    char *dir;
    struct mvcc_options opt;
    uint64_t cluster_id, member_id;
    int64_t term;

    /* Writer: the write connection and the queue, under q_mu. */
    struct conn *wconn;
    pthread_t writer;
    pthread_mutex_t q_mu;
    pthread_cond_t q_cond;    /* the writer waits for work */
    pthread_cond_t done_cond; /* callers wait for their write */
    struct wreq *q_head, *q_tail;
    bool q_stop;
    uint64_t n_groups, n_writes; /* the writer's own counters */
    /* The gate, under gate_mu: the writer is inside it for each group's
     * transaction (gate_writer); the upkeep thread closes it (gate_upkeep)
     * for its steps that need SQLite's write lock, and the writer starts no
     * group while it is closed. */
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cond;
    bool gate_writer, gate_upkeep;
    bool gate_waiting;    /* the writer waits for the gate to open */
    uint64_t gate_passes; /* groups that went through */
    struct upkeep *up;

    /* Read pool, under pool_mu. */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cond;
    struct conn *pool_free;
    int pool_open;

    /* Ring of recent revisions, under ring_mu; rev and compact_rev change
     * only under it too (mvcc_revision reads rev without it). */
    pthread_mutex_t ring_mu;
    pthread_cond_t ring_cond;
    struct rev_rec **ring;
    size_t ring_cap, ring_head, ring_count, ring_bytes;
    int64_t ring_start; /* the ring holds every revision from here to rev */
    _Atomic int64_t rev;
    int64_t compact_rev;
    bool closing;
    int nwatch;

    /* Leases, under lease_mu. */
    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cond;
    struct lease *leases; /* sorted by id */
    size_t nlease, lease_cap;
    bool lease_stop;
    bool lease_thread;
    pthread_t lease_th;
};

#endif
