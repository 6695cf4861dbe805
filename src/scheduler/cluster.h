/* cluster: the schedulers' shared view of the hosts and their jobs, and
 * the Omega-style placement commit.
 *
 * A placement is one store transaction that
 *   - compares each chosen host's record create revision (the host is still
 *     there, and is the same incarnation the view knows),
 *   - compares each chosen host's ledger (/pier/v1/placements/<host id>)
 *     mod revision with the one the view has seen,
 *   - puts the new job records and the ledgers again.
 * Every placement on a host rewrites its ledger in the same transaction
 * as the job, so two schedulers (or a scheduler and a controller placing a
 * one-off job) racing for one host cannot both commit: the loser's compare
 * fails, and it retries once its view has caught up. The view computes a
 * host's allocated memory from the job records on it that are not ended
 * (desired up, or still running), so a stale view errs on the side of
 * counting too much, never too little. The agent's heartbeat rewrites the
 * host record but not its create revision, so it never conflicts.
 *
 * What the view's owner writes through this module (placements, job
 * updates, deletes) is applied to the view at once, at the revision of the
 * write, so the next decision sees it before the watch brings it back; an
 * event older than what the view holds for a key is then ignored.
 *
 * Threads: a struct cluster belongs to one thread. */
#ifndef PIER_SCHEDULER_CLUSTER_H
#define PIER_SCHEDULER_CLUSTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

struct cluster;

/* Reads hosts, ledgers and jobs at one revision. *out is new. */
int cluster_load(struct store *s, struct cluster **out, struct pier_err *err);
/* Applies changes from a watch of KEYS_ROOT (events of other keys are
 * ignored) that started at cluster_revision + 1. */
void cluster_apply(struct cluster *c, const struct store_events *ev);
/* The store revision the view is current to. */
int64_t cluster_revision(const struct cluster *c);
void cluster_free(struct cluster *c);

/* ---- reading the view ----
 * Structs and records below are borrowed: valid until the next call that
 * changes c (cluster_apply, cluster_place, cluster_update_jobs,
 * cluster_delete_jobs). */

struct cluster_host {
    const char *id;
    const json_t *rec; /* the host record (hostrec.h) */
    int64_t create_revision;
};
size_t cluster_host_count(const struct cluster *c);
const struct cluster_host *cluster_host_at(const struct cluster *c, size_t i);

enum cluster_host_state {
    CLUSTER_HOST_UP,      /* its record is in the view */
    CLUSTER_HOST_GONE,    /* the view saw its record deleted (its lease expired) */
    CLUSTER_HOST_UNKNOWN, /* not seen since the view was loaded */
};
enum cluster_host_state cluster_host_state(const struct cluster *c, const char *id);

struct cluster_job {
    const char *id;
    const char *host_id; /* the record's host_id, else the id's prefix */
    const json_t *rec;
    int64_t mod_revision;
};
size_t cluster_job_count(const struct cluster *c);
const struct cluster_job *cluster_job_at(const struct cluster *c, size_t i);
/* NULL when the view has no such job. */
const struct cluster_job *cluster_job_find(const struct cluster *c, const char *id);

/* Whether a job record has ended: state down, crashed or failed (nothing
 * runs, and a job id never runs again). */
bool cluster_job_ended(const json_t *job);
/* Whether it counts for its formation: desired up and not ended. */
bool cluster_job_active(const json_t *job);

/* Per host (index as cluster_host_at): the memory held by its jobs that
 * have not ended (jobbuild_memory) and how many they are. Arrays of
 * cluster_host_count() entries; one pass over the jobs. */
void cluster_usage(const struct cluster *c, int64_t *memory, size_t *jobs);

/* ---- placing ---- */

/* One job to place: its record without id and host_id (a copy is taken
 * when placed), and the host tags it needs (NULL: any host). */
struct cluster_want {
    json_t *job;
    const json_t *tags;
    /* A job this one replaces (NULL: none): in the same transaction its
     * record gets "replaced_by" = the new id, compared on the mod revision
     * the view has, so an ended job is replaced at most once however many
     * schedulers try. */
    const char *replaces;
    /* out: */
    bool placed;         /* committed */
    char id[128];        /* "<host id>-<uuid>" once placed */
    struct pier_err why; /* why it was not placed (no host fits, ...) */
};

/* Places as many of wants as fit, spreading each app's process type over
 * hosts first and then preferring the host with most free memory
 * (placement.h). All wants are decided first; then each host's jobs are
 * committed in transactions of at most 100 operations, one after another,
 * and different hosts' concurrently (placecommit.h). A placed want's job
 * gets "id", "host_id", "uuid" and env FLYNN_JOB_ID (so does a decided one
 * whose transaction did not commit, with placed false and why empty). A
 * want no host can take is left with placed false and why set. A compare
 * that fails (another scheduler won a host) is PIER_ECONFLICT after what
 * was committed (that host's later transactions are not tried; other
 * hosts' are): refresh the view from the watch and call again with the
 * rest. Store errors pass through (no transaction is started after one).
 * *committed (optional) counts the jobs placed. Wants already placed are
 * skipped. */
int cluster_place(struct cluster *c, struct store *s, struct cluster_want *wants, size_t n,
                  size_t *committed, struct pier_err *err);

/* For the controller's one-off jobs (the ephemeral scheduler): loads a
 * view, places job (tags NULL for any host) and commits, retrying on
 * conflicts for a few seconds. On success job has "id" and "host_id" set
 * and is in the store. PIER_EUNAVAIL with the reason when no host can take
 * it. */
int cluster_place_once(struct store *s, json_t *job, const json_t *tags, struct pier_err *err);

/* ---- changing jobs ---- */

/* A job record to write back: compared on the mod revision the view has. */
struct cluster_update {
    const char *id;
    const json_t *rec; /* the whole new record (borrowed) */
    bool done;         /* out: written */
};

/* Writes the records in transactions of at most 100 compares; a batch
 * whose compare fails is tried one by one, so only the records that
 * changed meanwhile are left undone (done false: look again once the view
 * has caught up). A job the view does not have is left undone. Store
 * errors pass through. *written (optional) counts the records written. */
int cluster_update_jobs(struct cluster *c, struct store *s, struct cluster_update *u, size_t n,
                        size_t *written, struct pier_err *err);

/* Deletes job records that have not changed since the view read them, in
 * transactions of at most 100; a batch with a changed record is skipped.
 * *deleted (optional) counts the records deleted. */
int cluster_delete_jobs(struct cluster *c, struct store *s, const char *const *ids, size_t n,
                        size_t *deleted, struct pier_err *err);

#endif
