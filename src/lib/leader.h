/* leader: one process of several leads, by discovery's rule (discover.h):
 * each registers as an instance of a service, and the live instance
 * registered longest ago leads. When the leader dies its lease runs out
 * and the next oldest takes over within the TTL; a leader that loses its
 * lease (cut off from the store) stops leading at once, before the store
 * can have let anyone else lead, and queues at the back when it is back.
 *
 * The schedulers and the controllers use it: whatever must be done by one
 * process at a time (placing jobs, recording events, running deployments)
 * runs while leader_is() says so, and its store writes still use
 * compare-and-swap, so even a stale leader can never undo a newer one. */
#ifndef PIER_LEADER_H
#define PIER_LEADER_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

struct leader;

/* Registers addr (this process's API address, which must be unique among
 * the candidates) as an instance of service with a lease of ttl_s seconds,
 * and follows who leads from a background thread. On success *out is new,
 * for leader_stop. */
int leader_start(struct store *s, const char *service, const char *addr, int64_t ttl_s,
                 struct leader **out, struct pier_err *err);

/* Whether this process leads now. Thread-safe. */
bool leader_is(struct leader *l);

/* Waits up to timeout_ms (-1: forever) for this process's leadership to
 * differ from was, and returns it (equal to was on a timeout). */
bool leader_wait(struct leader *l, bool was, int timeout_ms);

/* The address of the current leader (a new string, free()), or NULL when
 * none is known. */
char *leader_addr(struct leader *l);

/* Stops following and deregisters, so that the next candidate takes over at
 * once rather than after the TTL. NULL allowed. */
void leader_stop(struct leader *l);

#endif
