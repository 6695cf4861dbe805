/* hostrec: this host's identity and its record in the store.
 *
 * The id is kept in <data dir>/host-id: made once (or given with --id) and
 * the same after every restart. The record lives at /pier/v1/hosts/<id>
 * under a lease of --ttl seconds, so it vanishes within the TTL when the
 * agent dies, and is rewritten when what it says changes and at least
 * every TTL/2 (the heartbeat). When the lease is lost (a long store
 * outage) a new one is granted and the record written again, same id.
 *
 *   {"id","addr" (the agent's API, host:port),"ip" (jobs' address),
 *    "tags":{k:v},"memory":{"total","allocated"},"cpu":{"total","allocated"},
 *    "ports":{"lo","hi","free"},"jobs":N,"version","started_at","heartbeat"}
 * memory in bytes, cpu in milli-CPUs, times RFC 3339 UTC. */
#ifndef PIER_HOST_HOSTREC_H
#define PIER_HOST_HOSTREC_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

#define HOSTREC_PREFIX "/pier/v1/hosts/"
#define HOSTREC_MAX_ID 24

/* A host id: 1-24 of [a-z0-9] (no '-': it separates the host id in job ids). */
bool hostrec_id_ok(const char *id);
/* Reads <data_dir>/host-id, or writes want (when set) or a new random id
 * there. A want that differs from a kept id is refused (PIER_ECONFLICT). */
int hostrec_load_id(const char *data_dir, const char *want, char id[HOSTREC_MAX_ID + 1],
                    struct pier_err *err);

struct hostrec_info {
    const char *id;
    const char *addr;
    const char *ip;
    json_t *tags; /* borrowed object of strings */
    int64_t memory_total;
    int64_t cpu_total;
    int ttl_s;
};
/* Usage the record reports; asked for at each write. */
typedef void (*hostrec_usage_fn)(void *ud, json_t *rec);

struct hostrec;
/* Grants the lease, writes the record and starts the heartbeat thread.
 * A store that cannot be reached yet is not an error: the thread keeps
 * trying, and says so in the log. */
int hostrec_start(struct store *s, const struct hostrec_info *info, hostrec_usage_fn usage,
                  void *ud, struct hostrec **out, struct pier_err *err);
/* Asks for a prompt rewrite (allocations changed). Thread-safe. */
void hostrec_touch(struct hostrec *h);
/* The record as last written (new reference). */
json_t *hostrec_json(struct hostrec *h);
/* Stops the heartbeat and, when remove, revokes the lease (record gone). */
void hostrec_stop(struct hostrec *h, bool remove);

#endif
