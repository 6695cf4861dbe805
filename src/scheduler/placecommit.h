/* placecommit: commits the jobs a placement pass decided, grouped by host,
 * with the transactions of different hosts in flight at once.
 *
 * A placement transaction compares only the create revision and the ledger
 * (/pier/v1/placements/<host id>) of the hosts it places on, and the mod
 * revision of the jobs it replaces (cluster.h). Transactions on disjoint
 * hosts are thus independent, and may commit in any order; those on one
 * host form a chain, each comparing the ledger at the revision the one
 * before it wrote. The ledger compare is what keeps two schedulers from
 * over-committing a host; this module only orders and overlaps the
 * commits.
 *
 * Threads: placecommit_run uses a few threads of its own for the store
 * calls and joins them before it returns; the caller's structs are only
 * read by them, and written by the calling thread once they are joined. */
#ifndef PIER_SCHEDULER_PLACECOMMIT_H
#define PIER_SCHEDULER_PLACECOMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

/* A host that may be placed on. */
struct pc_host {
    const char *id;     /* borrowed */
    int64_t create_rev; /* its record's, compared */
    int64_t ledger_rev; /* its ledger's mod revision, compared (0: none yet);
                         * out: the last one this call wrote */
};

/* One decided placement. The strings are borrowed. */
struct pc_job {
    size_t host;      /* index in hosts */
    const char *id;   /* the new job's id */
    const char *text; /* its record */
    size_t len;
    int64_t memory; /* the host's ledger after this job: memory held */
    size_t jobs;    /* ... and jobs not ended */
    /* The job it replaces (NULL: none): its id, new record (with
     * replaced_by) and the mod revision it is compared on. */
    const char *replaces;
    const char *old_text;
    int64_t old_rev;
    int64_t revision; /* out: of the transaction that committed it; 0: not committed */
};

/* Commits jobs, the jobs of one host in their order, in transactions of at
 * most 100 operations and 100 compares that each touch as few hosts as
 * fit (one host, unless several hosts' jobs fit in one), on up to 8
 * threads. A host's chain stops at its first failed compare; a store error
 * stops every chain from starting another transaction. Returns the first
 * store error (with its message), else PIER_ECONFLICT when a compare
 * failed, else 0; jobs[i].revision says which jobs are in the store. */
int placecommit_run(struct store *s, struct pc_host *hosts, size_t n_hosts, struct pc_job *jobs,
                    size_t n, struct pier_err *err);

#endif
