/* store_int: what store.c shares with store_watch.c and store_lease.c.
 * Private to the store client: nothing outside these three files includes
 * it, except the fuzz target of the answer parsers
 * (tests/fuzz/fuzz_store_answer.c). The public API and its conventions are
 * in store.h. */
#ifndef PIER_STORE_INT_H
#define PIER_STORE_INT_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

#define STORE_MAX_ENDPOINTS 16
#define STORE_MAX_ANSWER (256u << 20) /* largest answer or watch backlog accepted */

/* eps and names never change after open; cur (the endpoint the next
 * request goes to, < n_eps), timeout_ms and watch_silence_ms are atomics,
 * so no lock is needed: the pool inside http has its own. */
struct store {
    struct httpc *http;
    char *eps[STORE_MAX_ENDPOINTS];
    char *names[STORE_MAX_ENDPOINTS]; /* "store at <endpoint>", for messages */
    size_t n_eps;
    atomic_size_t cur;
    atomic_long timeout_ms;
    atomic_long watch_silence_ms;
};

/* The request headers of every gateway call. */
extern const char *const store_json_headers[];

/* One attempt on endpoint at, with timeout_ms for the whole attempt (and
 * connect_timeout_ms for the connection); returns 0 or an error. */
typedef int (*store_try_fn)(struct store *s, size_t at, long connect_timeout_ms, long timeout_ms,
                            void *ud, struct pier_err *err);

/* The endpoint failover of every request and watch. Calls try on the
 * current endpoint and goes on to the next ones:
 *  - when no connection could be made (httpc_not_sent): nothing was sent;
 *  - when the endpoint was reached but is unhealthy (PIER_ETIMEOUT: no
 *    answer in time; PIER_EUNAVAIL: a 503, "no leader", a broken
 *    connection), cur moves past it for the next request, and only when
 *    idempotent is the same request tried on the next endpoint (a write may
 *    have been applied: it is not repeated).
 * Any other result is the endpoint's answer: it becomes the current one.
 * Each attempt gets min(the store's timeout, what is left until deadline
 * (clock_now_ms; INT64_MAX: none)), at least 50 ms; no attempt starts after
 * the deadline but the first. Returns try's last result. */
int store_failover(struct store *s, bool idempotent, int64_t deadline, store_try_fn try, void *ud,
                   struct pier_err *err);

/* Posts req (borrowed) to path through store_failover (idempotent: a read,
 * tried on the next endpoint when one is unhealthy); timeout_ms bounds the
 * whole call, 0 means the store's timeout per attempt. On success *resp is
 * a new object (a stream's {"result": x} gives x). */
int store_call(struct store *s, const char *path, const json_t *req, long timeout_ms,
               bool idempotent, json_t **resp, struct pier_err *err);
/* Parses the first JSON object in p as an answer with HTTP status status
 * from the peer called name: a new object in *out, or the mapped error. */
int store_parse_answer(const char *name, long status, const char *p, size_t len, json_t **out,
                       struct pier_err *err);

/* Finding where one JSON object or array ends in a stream of bytes that
 * arrives piece by piece, without scanning a byte twice: the scan state is
 * kept between calls. Start from {0} (STORE_JSON_SCAN_INIT); call
 * store_json_scan with the same bytes as before plus what came since; once
 * it returns n > 0, the first n bytes are one value, and the scan must be
 * reset before it looks at the bytes after them. */
struct store_json_scan {
    size_t pos;   /* bytes of p looked at so far */
    int depth;    /* open braces and brackets */
    bool started; /* the first '{' or '[' has been seen */
    bool in_str;  /* inside a string */
    bool esc;     /* right after a backslash inside a string */
};
#define STORE_JSON_SCAN_INIT ((struct store_json_scan){0})
/* The length of the first complete JSON object or array at p (leading
 * whitespace included), or 0 while it is incomplete. When p does not start
 * with one (after whitespace), all of p (to be refused by the parser). */
size_t store_json_scan(struct store_json_scan *sc, const char *p, size_t len);
/* store_json_scan of p from a fresh state. */
size_t store_json_value_len(const char *p, size_t len);

/* header.revision of an answer into *rev (0 when absent). PIER_EPROTO when
 * it is not a revision (negative, INT64_MAX or more, not an integer). */
int store_header_revision(const json_t *resp, int64_t *rev, struct pier_err *err);
/* Whether n can be a revision from a server: 0 <= n < INT64_MAX (so n + 1
 * never overflows). */
bool store_revision_ok(int64_t n);

/* Decodes a gateway kv object into *kv (which then owns its bytes). */
int store_kv_decode(const json_t *o, struct store_kv *kv, struct pier_err *err);
/* Frees what kv holds, not kv. */
void store_kv_release(struct store_kv *kv);
/* Moves *from into a new heap kv (for store_kv_free) and empties *from. */
struct store_kv *store_kv_move(struct store_kv *from);
/* Decodes a range answer into *r; on failure r holds what was read. */
int store_range_decode(const json_t *o, struct store_range *r, struct pier_err *err);
/* Frees what r holds, not r. */
void store_range_release(struct store_range *r);
/* The decoders of the other answers (resp as store_call gives it), each
 * PIER_EPROTO on what cannot be read. put: *revision (optional) and, when
 * prev is not NULL, *prev (a new kv, or NULL without prev_kv). */
int store_put_decode(const json_t *resp, int64_t *revision, struct store_kv **prev,
                     struct pier_err *err);
/* txn: *out new, for store_txn_result_free. */
int store_txn_decode(const json_t *resp, struct store_txn_result **out, struct pier_err *err);
/* deleterange: *deleted and *revision optional. */
int store_delete_decode(const json_t *resp, int64_t *deleted, int64_t *revision,
                        struct pier_err *err);
/* lease grant: *id; keepalive: *ttl_s (PIER_ENOTFOUND when it expired);
 * timetolive: *out new (PIER_ENOTFOUND when unknown). name names the
 * server in messages. */
int store_lease_grant_decode(const char *name, const json_t *resp, int64_t *id,
                             struct pier_err *err);
int store_lease_keepalive_decode(const json_t *resp, int64_t id, int64_t *ttl_s,
                                 struct pier_err *err);
int store_lease_info_decode(const char *name, const json_t *resp, int64_t id,
                            struct store_lease_info **out, struct pier_err *err);

/* A watch that is not connected (for the fuzz target): store_watch_feed
 * hands it bytes as the stream would, parsing every complete message;
 * returns 0 or the error that would end the connection (or the watch).
 * Free with store_watch_close. */
struct store_watch *store_watch_new(struct store *s, const char *key,
                                    const struct store_watch_opts *opts);
int store_watch_feed(struct store_watch *w, const char *data, size_t len, struct pier_err *err);
/* How many received events wait to be delivered. */
size_t store_watch_queued(const struct store_watch *w);

/* Sets "key" and "range_end" of o for key alone or for every key starting
 * with it ("" as a prefix: every key). */
void store_set_range(json_t *o, const char *key, size_t klen, bool prefix);

#endif
