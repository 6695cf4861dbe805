/* store_int: what store.c shares with store_watch.c and store_lease.c.
 * Private to the store client: nothing outside these three files includes
 * it. The public API and its conventions are in store.h. */
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

/* eps and names never change after open; cur (the endpoint that answered
 * last) and timeout_ms are atomics, so no lock is needed: the pool inside
 * http has its own. */
struct store {
    struct httpc *http;
    char *eps[STORE_MAX_ENDPOINTS];
    char *names[STORE_MAX_ENDPOINTS]; /* "store at <endpoint>", for messages */
    size_t n_eps;
    atomic_size_t cur;
    atomic_long timeout_ms;
};

/* The request headers of every gateway call. */
extern const char *const store_json_headers[];

/* Milliseconds on the monotonic clock. */
int64_t store_now_ms(void);

/* Posts req (borrowed) to path on the current endpoint, moving on to the
 * next one when no connection can be made; timeout_ms 0 means the store's.
 * On success *resp is a new object (a stream's {"result": x} gives x). */
int store_call(struct store *s, const char *path, const json_t *req, long timeout_ms, json_t **resp,
               struct pier_err *err);
/* Parses the first JSON object in p as an answer with HTTP status status
 * from the peer called name: a new object in *out, or the mapped error. */
int store_parse_answer(const char *name, long status, const char *p, size_t len, json_t **out,
                       struct pier_err *err);
/* The length of the first complete JSON object or array at p (leading
 * whitespace included), or 0 while it is incomplete. */
size_t store_json_value_len(const char *p, size_t len);
/* header.revision of an answer, 0 when absent. */
int64_t store_header_revision(const json_t *resp);

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
/* Sets "key" and "range_end" of o for key alone or for every key starting
 * with it ("" as a prefix: every key). */
void store_set_range(json_t *o, const char *key, size_t klen, bool prefix);

#endif
