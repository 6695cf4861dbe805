/* mvcc: the embedded store's engine. An etcd-v3-compatible multi-version
 * key-value store on SQLite (WAL): revisions, versions and create revisions
 * behave as etcd's do; history is kept until compacted, so reads at an old
 * revision and watches from an old revision work; leases expire keys.
 *
 * Requests and responses are the JSON objects of etcd's v3 JSON gateway
 * (int64 fields as decimal strings, keys and values base64, default fields
 * omitted as etcd omits them), so server.c only moves bytes. Each call takes
 * a borrowed request object and, on success, sets *resp to a new reference
 * holding the gateway's "result" shape (with "header").
 *
 * Errors: PIER_EINVAL for bad input (message names the field),
 * PIER_ECOMPACTED for a revision out of range (older than the compacted one,
 * or in the future; also a lease TTL too large: all etcd's OutOfRange),
 * PIER_ENOTFOUND for an unknown lease, PIER_EEXISTS for granting a lease ID
 * in use, PIER_EUNAVAIL once the store is closing, PIER_EINTERNAL for SQLite
 * failures. Where etcd
 * has a message for the error, the message is etcd's, word for word
 * ("etcdserver: mvcc: required revision has been compacted"), so the glue
 * can answer {"error":msg,"code":mvcc_grpc_code(rc),"message":msg}.
 * Nothing is changed when a call fails.
 *
 * Thread-safe: any number of threads may call in at once. Writes are applied
 * by one writer and committed in groups (one fsync for many concurrent
 * writes); a call returns only after its write is durable. A thread of the
 * engine's own checkpoints the WAL and gives free pages back, off the
 * commit path (mvcc_upkeep.c). */
#ifndef PIER_MVCC_H
#define PIER_MVCC_H

#include <jansson.h>
#include <stdint.h>

#include "lib/err.h"

struct mvcc;

struct mvcc_options {
    /* Keep at most this many revisions of history; older ones are compacted
     * automatically, an eighth at a time, so between 7/8 of this and this
     * many are kept (0: never compact by itself). */
    int64_t auto_compact_revisions;
    /* How often a watch that asked for progress_notify gets a bare header
     * when nothing else was sent (0: etcd's default, 10 minutes). */
    int64_t watch_progress_interval_ms;
};

/* Opens or creates the store in dir (created if missing). */
int mvcc_open(const char *dir, const struct mvcc_options *opt, struct mvcc **out,
              struct pier_err *err);
/* Stops the engine's threads and closes the database. NULL allowed. Call it
 * when no other call is under way; watches still open are woken (their
 * mvcc_watch_next returns PIER_EUNAVAIL) and mvcc_close waits until each is
 * freed with mvcc_watch_free. */
void mvcc_close(struct mvcc *m);

/* The current revision. */
int64_t mvcc_revision(struct mvcc *m);

/* /v3/kv/range, /v3/kv/put, /v3/kv/deleterange, /v3/kv/txn, /v3/kv/compaction */
int mvcc_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_put(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_delete_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_txn(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_compact(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);

/* /v3/lease/grant, /v3/lease/revoke, /v3/lease/keepalive, /v3/lease/timetolive.
 * keepalive's *resp is the inner object; the gateway streams it, so the
 * glue wraps it as {"result": ...} (etcd does). An unknown lease is not an
 * error for keepalive (no "TTL" in the answer) nor for timetolive ("TTL":
 * "-1"), as in etcd. */
int mvcc_lease_grant(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_revoke(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_keepalive(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_timetolive(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
/* /v3/lease/leases (the request body carries nothing). */
int mvcc_lease_leases(struct mvcc *m, json_t **resp, struct pier_err *err);

/* The gRPC code etcd's gateway puts in an error body's "code" for an error
 * returned here, and in *http_status (if not NULL) the HTTP status it
 * answers with: PIER_EINVAL 3/400, PIER_ENOTFOUND 5/404, PIER_EEXISTS 9/412,
 * PIER_ECOMPACTED 11/400, PIER_EUNAVAIL 14/503, anything else 13/500. */
int mvcc_grpc_code(int rc, int *http_status);

/* A watch: created from the "create_request" object of /v3/watch. */
struct mvcc_watch;

/* Creates a watch; *created is the first response ({"header","created":true}:
 * each /v3/watch stream has one watch, whose ID is 0 and so omitted), a new
 * reference. A start_revision below the compacted revision still succeeds:
 * the first mvcc_watch_next answers with "compact_revision" and
 * "canceled":true, as etcd does. start_revision 0 means from the next
 * revision. Filters (NOPUT, NODELETE) and prev_kv are honoured. */
int mvcc_watch_create(struct mvcc *m, const json_t *create_request, struct mvcc_watch **out,
                      json_t **created, struct pier_err *err);
/* Waits up to timeout_ms for the next events (history first when the watch
 * started from an old revision, then live). Returns 1 with *resp a new
 * reference ({"header","events":[...]}; all events of one revision are in
 * one response, which may hold several revisions), 0 on timeout (*resp
 * untouched, or set to a progress notification {"header"} when the watch
 * asked for progress_notify and it is due: send it when set), or a negative
 * error (PIER_EUNAVAIL when the store is closing). A canceled response is
 * returned once; later calls return -ECANCELED. One thread at a time per
 * watch. */
int mvcc_watch_next(struct mvcc_watch *w, int timeout_ms, json_t **resp);
/* Ends the watch. NULL allowed. */
void mvcc_watch_free(struct mvcc_watch *w);

#endif
