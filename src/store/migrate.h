/* migrate: `pierd store-migrate`, which moves a cluster's state from one
 * store to another: from the embedded `pierd store` to etcd when one host is
 * no longer enough, or back.
 *
 * It reads every key under a prefix from the source at one revision (a
 * consistent snapshot, paged), refuses a destination that already holds keys
 * there unless forced, writes in transactions small enough for etcd, then
 * re-reads the destination and compares it with the snapshot, and re-reads
 * the source to make sure nobody wrote to it meanwhile. Keys under a lease
 * belong to live processes (discovery instances, host records) and are not
 * copied: their owners register again against the new store. Revisions are
 * not carried over: the destination counts its own. */
#ifndef PIER_STORE_MIGRATE_H
#define PIER_STORE_MIGRATE_H

#include <stdbool.h>
#include <stdio.h>

#include "lib/err.h"

struct store_migrate_opts {
    const char *from;   /* the source's endpoints: comma-separated http:// URLs */
    const char *to;     /* the destination's endpoints */
    const char *prefix; /* the keys to move (NULL: "/pier/") */
    bool dry_run;       /* read both stores and report the plan; write nothing */
    bool force;         /* write into a destination that has keys under prefix, making its
                           keys there a copy of the source's (overwrite, delete extra ones) */
    FILE *out;          /* progress, plan and summary lines (NULL: stdout) */
};

/* Checks the options without contacting anything: both stores given, valid
 * endpoint lists, not the same endpoint on both sides, a non-empty prefix.
 * Returns 0 or PIER_EINVAL with a message naming the flag. */
int store_migrate_check(const struct store_migrate_opts *o, struct pier_err *err);

/* Runs a migration (checking the options first). Returns 0 once the
 * destination has been written and verified (with dry_run: once the plan has
 * been printed). Nothing is written before both stores have been read.
 * Errors:
 *   PIER_EINVAL     bad options (store_migrate_check)
 *   PIER_EEXISTS    the destination has keys under prefix and force is unset
 *   PIER_ECONFLICT  a store changed during the migration, or verification
 *                   found differences (listed on out)
 *   others          from the store client: unreachable, refused a write ...
 * A failure while writing says in err how many keys were copied and that
 * running again with force finishes the job. */
int store_migrate_run(const struct store_migrate_opts *o, struct pier_err *err);

/* The subcommand's entry: parses flags and runs. Returns the exit status:
 * 0 done, 1 failed, 2 bad usage. */
int store_migrate_main(int argc, char **argv);

#endif
