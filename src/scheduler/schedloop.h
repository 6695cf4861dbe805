/* schedloop: the service scheduler's loop. A thread that, while this process
 * leads (leader.h), keeps a view of the cluster (cluster.h, records.h)
 * current from one watch of KEYS_ROOT and runs reconcile passes
 * (reconcile.h) whenever something changed, a backoff ended, or every few
 * seconds anyway. When leadership goes, the view is dropped; a new leader
 * loads its own, so nothing it decides rests on what an earlier one knew
 * beyond the store. */
#ifndef PIER_SCHEDULER_SCHEDLOOP_H
#define PIER_SCHEDULER_SCHEDLOOP_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/err.h"
#include "lib/leader.h"
#include "lib/store.h"
#include "scheduler/reconcile.h"

struct schedloop_opts {
    struct reconcile_opts reconcile;
    /* For tests: act without being elected (l may then be NULL), so that
     * two schedulers really race. */
    bool always_lead;
};

struct schedloop;

/* Starts the loop's thread. s and l must outlive the scheduler. */
int schedloop_start(struct store *s, struct leader *l, const struct schedloop_opts *o,
                    struct schedloop **out, struct pier_err *err);
/* What it knows (new reference): {"leader":bool, and when leading what the
 * last pass saw: "revision","hosts","formations","pending"}. Thread-safe. */
json_t *schedloop_status(struct schedloop *sc);
/* Stops and joins the thread. NULL allowed. */
void schedloop_stop(struct schedloop *sc);

#endif
