/* store: the cluster store client. Every component keeps its state here.
 *
 * Speaks the etcd v3 JSON gateway (/v3/kv/range, put, deleterange, txn,
 * compaction, /v3/watch, /v3/lease/grant|keepalive|revoke|timetolive) over
 * HTTP/1.1 with keep-alive, so the same client works against `pierd store`
 * and a real etcd 3.4. Keys are usually C strings; values are bytes.
 *
 * Endpoints: "http://127.0.0.1:7001[,http://127.0.0.1:7002...]". Requests
 * go to the current endpoint. One whose connection cannot be made moves on
 * to the next endpoint, which then stays the current one. When an endpoint
 * was reached but cannot serve (no answer within the timeout, a 503 or
 * "no leader", as from an etcd member cut off from its quorum), the next
 * request goes to the next endpoint; reads (get, list, revision, lease
 * time-to-live) and watches are also retried there at once. Writes (put,
 * delete, txn, create, cas, compact, lease grant/keepalive/revoke) that
 * reached a server are never retried elsewhere, since they may have been
 * applied: the caller gets PIER_ETIMEOUT or PIER_EUNAVAIL and decides.
 *
 * Errors (negative returns, message in struct pier_err):
 *   PIER_ENOTFOUND   the key or lease does not exist
 *   PIER_ECOMPACTED  the revision asked for has been compacted away
 *   PIER_EEXISTS, PIER_ECONFLICT  from the create/CAS helpers
 *   PIER_EINVAL      the server refused the request (e.g. a future revision)
 *   -ECONNREFUSED, -ETIMEDOUT, PIER_EUNAVAIL, PIER_ETIMEOUT  no server answered
 *   PIER_EPROTO      the server answered something we cannot read
 *
 * Threads: a struct store may be used from any number of threads at once
 * (concurrent requests use separate pooled connections). A struct
 * store_watch belongs to one thread at a time. Result structs belong to the
 * caller and are freed with their _free function, which accepts NULL. */
#ifndef PIER_STORE_H
#define PIER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"

struct store;

/* One key-value pair as the store keeps it. key and value are owned by the
 * struct that holds this one, and are NUL-terminated (the NUL is not counted
 * in the lengths), so text values can be used as C strings. */
struct store_kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_revision; /* revision that created the key (0 for a delete event) */
    int64_t mod_revision;    /* revision of its last change */
    int64_t version;         /* number of puts since it was created (1 after create) */
    int64_t lease;           /* the lease it is attached to, 0 for none */
};

/* The answer to a range read. */
struct store_range {
    struct store_kv *kvs; /* n entries, sorted by key */
    size_t n;
    int64_t count;    /* number of keys in the range (may exceed n with a limit) */
    bool more;        /* a limit cut the answer short */
    int64_t revision; /* the store's revision the read was served at */
};

/* --- opening --------------------------------------------------------- */

/* Opens a client for a comma-separated list of http:// endpoints. Nothing is
 * contacted yet. On success *out is a new handle for store_close. */
int store_open(const char *endpoints, struct store **out, struct pier_err *err);
/* Like store_open with $PIER_STORE; PIER_EINVAL when it is unset or empty. */
int store_open_env(struct store **out, struct pier_err *err);
/* Closes connections and frees the handle. Watches and keepers made from it
 * must be closed first. NULL allowed. */
void store_close(struct store *s);
/* The endpoint requests currently go to (borrowed, valid until the next
 * call on s from any thread; for messages). */
const char *store_endpoint(struct store *s);

/* Per-request timeout in milliseconds (default 5000; connect timeout is
 * min(1000, this)), per endpoint tried. Watches use it to connect and wait
 * for the server's first answer, never longer than their own timeout. */
void store_set_timeout(struct store *s, long timeout_ms);

/* How long a watch's connection may stay completely silent (no event, no
 * progress notification) before it counts as dead (a half-open connection
 * to a partitioned server) and is made again; <= 0: the default, 30000.
 * Watches ask for progress notifications, which `pierd store` sends every
 * 5 s of quiet; etcd only every 10 minutes unless started with
 * --experimental-watch-progress-notify-interval=5s (docs/store.md). Keep
 * this about three progress intervals: shorter, and quiet watches reconnect
 * for nothing. Applies to watches opened afterwards. */
void store_set_watch_silence(struct store *s, long silence_ms);

/* --- reads ----------------------------------------------------------- */

/* Reads one key at the current revision. On success *out is a new kv for
 * store_kv_free. PIER_ENOTFOUND (and *out NULL) when the key is absent. */
int store_get(struct store *s, const char *key, struct store_kv **out, struct pier_err *err);
/* Like store_get as of revision (0: the current one). PIER_ECOMPACTED when
 * that revision is compacted; PIER_EINVAL when it is in the future. */
int store_get_at(struct store *s, const char *key, int64_t revision, struct store_kv **out,
                 struct pier_err *err);

struct store_list_opts {
    int64_t limit;     /* at most this many kvs (0: all) */
    int64_t revision;  /* read as of this revision (0: current) */
    const char *after; /* start strictly after this key (for paging; NULL: at the prefix) */
    bool keys_only;    /* leave values empty */
    bool count_only;   /* only count (kvs empty) */
};

/* Lists the keys starting with prefix ("" lists everything), sorted by key.
 * opts may be NULL. On success *out is a new range for store_range_free;
 * an empty answer is not an error (n 0). */
int store_list(struct store *s, const char *prefix, const struct store_list_opts *opts,
               struct store_range **out, struct pier_err *err);

/* The store's current revision. */
int store_revision(struct store *s, int64_t *revision, struct pier_err *err);

/* --- writes ---------------------------------------------------------- */

/* Sets key to value (len bytes), attached to lease (0: none). *revision
 * (optional) gets the revision of the write. */
int store_put(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
              int64_t *revision, struct pier_err *err);
/* Like store_put, and *prev gets a new kv holding the value it replaced, or
 * NULL when the key was new. */
int store_put_prev(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
                   int64_t *revision, struct store_kv **prev, struct pier_err *err);
/* Deletes key. *deleted (optional) gets 0 or 1 (deleting a missing key is
 * not an error); *revision (optional) the store's revision after it. */
int store_delete(struct store *s, const char *key, int64_t *deleted, int64_t *revision,
                 struct pier_err *err);
/* Deletes every key starting with prefix (never "": refused with
 * PIER_EINVAL, to keep a typo from wiping the store). */
int store_delete_prefix(struct store *s, const char *prefix, int64_t *deleted, int64_t *revision,
                        struct pier_err *err);

/* Creates key only if it does not exist: PIER_EEXISTS otherwise. */
int store_create(struct store *s, const char *key, const void *value, size_t len, int64_t lease,
                 int64_t *revision, struct pier_err *err);
/* Replaces key only if its mod_revision is still mod_revision (0: only if
 * the key is absent): PIER_ECONFLICT otherwise. */
int store_cas(struct store *s, const char *key, const void *value, size_t len, int64_t mod_revision,
              int64_t lease, int64_t *revision, struct pier_err *err);

/* --- transactions ---------------------------------------------------- */

/* A transaction: if every compare holds, the THEN ops run, else the ELSE
 * ops; atomically, at one revision. Built with the calls below (which copy
 * their arguments), run with store_txn_commit, freed with store_txn_free. */
struct store_txn;

enum store_cmp_target {
    STORE_CMP_VALUE,
    STORE_CMP_VERSION, /* a missing key has version 0 */
    STORE_CMP_CREATE,  /* create_revision; 0 for a missing key */
    STORE_CMP_MOD,     /* mod_revision; 0 for a missing key */
    STORE_CMP_LEASE,
};
enum store_cmp_op { STORE_EQ, STORE_NE, STORE_LT, STORE_GT };
enum store_branch { STORE_THEN, STORE_ELSE };

struct store_txn *store_txn_new(void);
void store_txn_free(struct store_txn *t);
/* Compares key's value with value (len bytes) byte-wise. */
void store_txn_cmp_value(struct store_txn *t, const char *key, enum store_cmp_op op,
                         const void *value, size_t len);
/* Compares key's version, create or mod revision, or lease with n. */
void store_txn_cmp(struct store_txn *t, const char *key, enum store_cmp_target target,
                   enum store_cmp_op op, int64_t n);
void store_txn_put(struct store_txn *t, enum store_branch b, const char *key, const void *value,
                   size_t len, int64_t lease);
/* prefix: the op covers every key starting with key. */
void store_txn_delete(struct store_txn *t, enum store_branch b, const char *key, bool prefix);
void store_txn_get(struct store_txn *t, enum store_branch b, const char *key, bool prefix);

struct store_txn_result {
    bool succeeded;           /* the compares held (THEN ran) */
    int64_t revision;         /* the store's revision after the txn */
    struct store_range *gets; /* the answers of the gets of the branch that ran, in order */
    size_t n_gets;
};

/* Runs t. A failed compare is not an error: *out->succeeded says which
 * branch ran. On success *out is new, for store_txn_result_free. */
int store_txn_commit(struct store *s, const struct store_txn *t, struct store_txn_result **out,
                     struct pier_err *err);

/* --- compaction ------------------------------------------------------ */

/* Discards history before revision. PIER_ECOMPACTED when it already is. */
int store_compact(struct store *s, int64_t revision, struct pier_err *err);

/* --- watches --------------------------------------------------------- */

/* A watch delivers every change to a key or prefix in revision order, each
 * exactly once, also across dropped connections (it resumes from the last
 * delivered revision + 1 on the next endpoint that answers). */
struct store_watch;

struct store_watch_opts {
    bool prefix;            /* watch every key starting with key */
    int64_t start_revision; /* replay history from here (0: only changes from now on) */
    bool prev_kv;           /* events carry the value before the change */
};

enum store_event_type { STORE_EVENT_PUT, STORE_EVENT_DELETE };

struct store_event {
    enum store_event_type type;
    struct store_kv kv;    /* a DELETE has key and mod_revision (the delete's revision) only */
    struct store_kv *prev; /* the value before, when prev_kv was asked and there was one */
};

struct store_events {
    struct store_event *ev;
    size_t n;
    int64_t revision; /* the revision of the last event */
};

/* Starts a watch on key (or on a prefix) and waits until the server has
 * accepted it: events from changes made after this returns are never lost.
 * opts may be NULL. On success *out is new, for store_watch_close. */
int store_watch_open(struct store *s, const char *key, const struct store_watch_opts *opts,
                     struct store_watch **out, struct pier_err *err);
/* Waits up to timeout_ms (-1: forever) for events. Returns 0 with *out new
 * (n >= 1, for store_events_free); PIER_ETIMEOUT when none came;
 * PIER_ECOMPACTED when the revision to deliver next was compacted (the watch
 * is then dead: list again and open a new one from the listed revision + 1);
 * or, while the connection is down and cannot be made again within the
 * timeout, the connection error. Reconnecting is bounded by timeout_ms too
 * (each attempt gets what is left, at least 50 ms), so the call returns
 * within about timeout_ms. A connection silent for longer than the store's
 * watch silence (store_set_watch_silence) is dropped and made again.
 * Other than after PIER_ECOMPACTED, the watch stays usable: calling again
 * keeps trying. */
int store_watch_next(struct store_watch *w, int timeout_ms, struct store_events **out,
                     struct pier_err *err);
/* The revision the watch will deliver from next (last delivered + 1). */
int64_t store_watch_revision(const struct store_watch *w);
/* For tests: drops the watch's connection as a network failure would; the
 * next store_watch_next reconnects and resumes. */
void store_watch_drop_connection(struct store_watch *w);
/* Cancels the watch. NULL allowed. */
void store_watch_close(struct store_watch *w);

/* --- leases ---------------------------------------------------------- */

/* Grants a lease of ttl_s seconds; *id gets its id. */
int store_lease_grant(struct store *s, int64_t ttl_s, int64_t *id, struct pier_err *err);
/* Revokes a lease, deleting its keys. PIER_ENOTFOUND when it is unknown
 * (already expired or revoked). */
int store_lease_revoke(struct store *s, int64_t id, struct pier_err *err);
/* Renews a lease once; *ttl_s (optional) gets its new TTL. PIER_ENOTFOUND
 * when it has expired. */
int store_lease_keepalive(struct store *s, int64_t id, int64_t *ttl_s, struct pier_err *err);

struct store_lease_info {
    int64_t id;
    int64_t ttl;         /* seconds left */
    int64_t granted_ttl; /* seconds it was granted for */
    char **keys;         /* with_keys: the keys attached (owned, NUL-terminated) */
    size_t n_keys;
};

/* Asks how long a lease has left (and with_keys, which keys it holds). On
 * success *out is new, for store_lease_info_free. PIER_ENOTFOUND when the
 * lease is unknown or expired. */
int store_lease_timetolive(struct store *s, int64_t id, bool with_keys,
                           struct store_lease_info **out, struct pier_err *err);

/* A keeper keeps a lease alive from a background thread: it renews at once,
 * then every TTL/3, retrying sooner when a renewal fails. When the lease is
 * lost it calls lost once from its thread, with the reason, and stops
 * renewing. Lost means: the store said the lease expired, or no renewal has
 * succeeded by S + TTL - margin, where S is the time the last successful
 * renewal was *sent* (the keeper's start before the first one) and margin
 * is max(TTL/10, 200 ms) (TTL/2 for TTLs under 400 ms). The server cannot
 * expire the lease before S + TTL, because it renewed it at or after S; so
 * lost is reported no later than the server could have expired the lease,
 * and a holder that stops acting as the lease holder on lost never
 * overlaps with the next one (provided clocks run at the same rate, and the
 * keeper is started right after the grant or the last renewal). Each
 * renewal's timeout ends at that deadline, so a hung server cannot delay
 * the report. */
struct store_keeper;
typedef void (*store_lease_lost_fn)(int64_t id, const struct pier_err *why, void *ud);

/* Starts keeping lease id (granted for ttl_s seconds) alive. lost may be
 * NULL (poll store_keeper_lost instead). s must outlive the keeper. */
int store_keeper_start(struct store *s, int64_t id, int64_t ttl_s, store_lease_lost_fn lost,
                       void *ud, struct store_keeper **out, struct pier_err *err);
/* Whether the lease has been lost. Thread-safe. */
bool store_keeper_lost(struct store_keeper *k);
/* Stops the keeper (joining its thread; do not call from lost) and, when
 * revoke is true, revokes the lease. NULL allowed. */
void store_keeper_stop(struct store_keeper *k, bool revoke);

/* --- results --------------------------------------------------------- */

void store_kv_free(struct store_kv *kv);
void store_range_free(struct store_range *r);
void store_txn_result_free(struct store_txn_result *r);
void store_events_free(struct store_events *e);
void store_lease_info_free(struct store_lease_info *li);

#endif
