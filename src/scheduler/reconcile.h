/* reconcile: one pass of the service scheduler, level-triggered: from the
 * view (cluster.h) and the records (records.h) alone, whatever happened
 * before, it writes what brings every formation to its counts.
 *
 * A pass
 *  1. marks the jobs of lost hosts crashed ("host lost", desired down),
 *  2. for each (app, release, process type) counts the active jobs
 *     (desired up, not ended) against the formation: stops the extra ones
 *     (not yet up first, then the newest), replaces ended ones after their
 *     backoff (restart.h) or gives up on a crash loop, and places the
 *     missing ones, all placements of the pass in one cluster_place call,
 *  3. completes the scale requests whose counts are met,
 *  4. now and then deletes old ended job records (GC).
 * Every write is compare-and-swap against the view, so a stale pass (a
 * leader that just lost its lease, two schedulers in a handover) can lose
 * races but never undo a newer decision.
 *
 * Threads: a struct reconcile belongs to the thread running the passes. */
#ifndef PIER_SCHEDULER_RECONCILE_H
#define PIER_SCHEDULER_RECONCILE_H

#include <jansson.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"
#include "scheduler/cluster.h"
#include "scheduler/jobgc.h"
#include "scheduler/records.h"
#include "scheduler/restart.h"

struct reconcile_opts {
    struct restart_policy restart;
    /* A job whose host the view has not seen since it was loaded is lost
     * only after this long (a host may be re-registering after a store
     * restart); a host the view saw go is lost at once. */
    int64_t host_grace_ms;
    struct jobgc_opts gc; /* run every gc.every_ms */
};

struct reconcile;

struct reconcile *reconcile_new(const struct reconcile_opts *o);
void reconcile_free(struct reconcile *r);
/* Says the view was (re)loaded now: the host grace starts again. */
void reconcile_reset(struct reconcile *r);

/* Runs one pass. *wake_ms gets how long until a pass is due anyway (a
 * backoff ends), or -1 for none. PIER_ECONFLICT when a write lost a race
 * (pass again once the view has caught up); store errors pass through. */
int reconcile_pass(struct reconcile *r, struct cluster *c, struct records *rec, struct store *s,
                   int64_t *wake_ms, struct pier_err *err);

/* What the last pass saw and could not do, for GET /status (new reference):
 * {"hosts":[...],"formations":[...],"pending":[...],"revision":N}. */
json_t *reconcile_status(struct reconcile *r);

#endif
