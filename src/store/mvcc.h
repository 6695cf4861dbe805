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
 * PIER_ECOMPACTED for a revision older than the compacted one,
 * PIER_ENOTFOUND for an unknown lease, PIER_EINTERNAL for SQLite failures.
 * Nothing is changed when a call fails.
 *
 * Thread-safe: any number of threads may call in at once. Writes are applied
 * by one writer and committed in groups (one fsync for many concurrent
 * writes); a call returns only after its write is durable. */
#ifndef PIER_MVCC_H
#define PIER_MVCC_H

#include <jansson.h>
#include <stdint.h>

#include "lib/err.h"

struct mvcc;

struct mvcc_options {
    /* Keep at most this many revisions of history; older ones are compacted
     * automatically (0: never compact by itself). */
    int64_t auto_compact_revisions;
};

/* Opens or creates the store in dir (created if missing). */
int mvcc_open(const char *dir, const struct mvcc_options *opt, struct mvcc **out,
              struct pier_err *err);
/* Stops the engine's threads and closes the database. NULL allowed. */
void mvcc_close(struct mvcc *m);

/* The current revision. */
int64_t mvcc_revision(struct mvcc *m);

/* /v3/kv/range, /v3/kv/put, /v3/kv/deleterange, /v3/kv/txn, /v3/kv/compaction */
int mvcc_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_put(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_delete_range(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_txn(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_compact(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);

/* /v3/lease/grant, /v3/lease/revoke, /v3/lease/keepalive, /v3/lease/timetolive */
int mvcc_lease_grant(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_revoke(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_keepalive(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);
int mvcc_lease_timetolive(struct mvcc *m, const json_t *req, json_t **resp,
                          struct pier_err *err);

/* A watch: created from the "create_request" object of /v3/watch. */
struct mvcc_watch;

/* Creates a watch; *created is the first response ({"header","created":true,
 * "watch_id"...}), a new reference. A start_revision at or below the
 * compacted revision still succeeds: the first mvcc_watch_next answers with
 * "compact_revision" and "canceled":true, as etcd does. */
int mvcc_watch_create(struct mvcc *m, const json_t *create_request, struct mvcc_watch **out,
                      json_t **created, struct pier_err *err);
/* Waits up to timeout_ms for the next events (history first when the watch
 * started from an old revision, then live). Returns 1 with *resp a new
 * reference ({"header","events":[...]}; all events of one revision are in
 * one response), 0 on timeout (*resp untouched, or a progress notification
 * when the watch asked for progress_notify and it is due), or a negative
 * error. A canceled response is returned once; later calls return -ECANCELED. */
int mvcc_watch_next(struct mvcc_watch *w, int timeout_ms, json_t **resp);
/* Ends the watch. NULL allowed. */
void mvcc_watch_free(struct mvcc_watch *w);

#endif
