/* jobgc: deletes the records of jobs that ended long ago, so the store
 * does not grow with every job ever run. Per (app, process type) the
 * newest `keep` ended records stay whatever their age (`pier ps -a`, the
 * restart chain, a crash loop's reason); beyond them, those that ended
 * more than `age_ms` ago go. A crash loop that still stops its formation
 * stays too. Deletes compare the mod revision the view has, so a record
 * that changed meanwhile is left for the next run. */
#ifndef PIER_SCHEDULER_JOBGC_H
#define PIER_SCHEDULER_JOBGC_H

#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"
#include "scheduler/cluster.h"
#include "scheduler/records.h"

struct jobgc_opts {
    int64_t age_ms;   /* 1 h */
    int keep;         /* 20 */
    int64_t every_ms; /* how often the scheduler runs it: 1 min */
};

/* One run over the view at wall-clock now_ms (ms since the epoch). Store
 * errors pass through. */
int jobgc_run(struct cluster *c, const struct records *rec, struct store *s,
              const struct jobgc_opts *o, int64_t now_ms, struct pier_err *err);

#endif
