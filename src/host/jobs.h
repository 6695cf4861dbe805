/* jobs: the agent's jobs, made to match the store (level-triggered).
 *
 * The agent lists and then watches /pier/v1/jobs/<host id>- (a job id
 * starts with its host's id, so that prefix is exactly this host's jobs).
 * For every record it compares what should run with what runs, and acts:
 * it starts a job that should be up and is not, stops one whose
 * desired_state is "down" or whose record was deleted, and writes what it
 * observed back into the record with compare-and-swap:
 *   pending -> starting -> up -> stopping -> down
 *   ... -> crashed (exited non-zero or was OOM-killed; exit_status)
 *   ... -> failed  (never started: host_error says why)
 * A job that ended is never restarted here: that is the scheduler's call.
 *
 * Running jobs belong to their shims (shim.h), not to the agent: on start
 * the agent re-adopts every job directory whose shim still runs, and
 * reports the ones that ended while it was away from their exit.json.
 *
 * Threads: one watch thread, one monitor thread (pidfds of the shims), a
 * worker thread per start or stop in progress; the table has one lock.
 * At most cfg.max_starting starts are in progress at once; the other jobs
 * to start wait in a queue, in the order they came, still "pending". */
#ifndef PIER_HOST_JOBS_H
#define PIER_HOST_JOBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/store.h"

struct ports;
struct hostrec;

struct jobs_config {
    const char *host_id;
    const char *host_ip;  /* the address jobs are reached at (discovery, allocated_ports) */
    const char *data_dir; /* jobs live in <data_dir>/jobs/<id> */
    const char *shim;     /* path of the pierd-shim binary */
    const char *crun;     /* crun binary ("crun") */
    const char *crun_root;
    const char *stack;      /* default stack directory; NULL: the host binds */
    const char *init_path;  /* tini-static on the host, or NULL */
    const char *pierslug;   /* bound at /.pier/pierslug in every job, or NULL */
    const char *buildpacks; /* bound at /.pier/buildpacks in every job, or NULL */
    const char *pierd;      /* the agent's own executable, bound at /app/pierd in the jobs
                               with artifact.pierd; NULL: such jobs fail */
    uid_t uid;
    gid_t gid;
    int64_t memory_total; /* bytes jobs may use in all */
    size_t log_max_bytes;
    int log_max_files;
    int keep_ended;   /* directories of ended jobs kept (oldest removed first) */
    int max_starting; /* starts in progress at once (until up or failed); 0: no bound */
};

struct jobs;

/* A new job table. Nothing runs until jobs_start. s and ports must outlive it;
 * hr (may be NULL) is told about allocations. */
struct jobs *jobs_new(const struct jobs_config *cfg, struct store *s, struct ports *ports,
                      struct hostrec *hr);
/* Tells the table where the host record is (to ask for rewrites when
 * usage changes); the record is made after the table, since it asks
 * jobs_usage. */
void jobs_set_hostrec(struct jobs *j, struct hostrec *hr);
/* Re-adopts what runs, then lists and watches the store. Returns once the
 * first list has been acted on. */
int jobs_start(struct jobs *j, struct pier_err *err);
/* Stops watching and waits for workers (running jobs keep running). NULL ok. */
void jobs_free(struct jobs *j);

/* --- for the HTTP API --- */
/* All jobs the agent knows (running and kept), as the records it last saw
 * with what it observes merged in. A new reference. */
json_t *jobs_list(struct jobs *j);
/* One job, or PIER_ENOTFOUND. *out is a new reference. */
int jobs_get(struct jobs *j, const char *id, json_t **out, struct pier_err *err);
/* Writes a new job record for this host into the store (used before a
 * scheduler exists). spec is a job record without observed fields; an id
 * is made when it has none ("<host id>-<uuid>"), host_id is filled in.
 * The spec is checked first (PIER_EINVAL, nothing written). *out gets the
 * record as written (new reference). PIER_EEXISTS for a taken id. */
int jobs_add(struct jobs *j, json_t *spec, json_t **out, struct pier_err *err);
/* Sets desired_state "down" with stop_grace = grace_ms in the store
 * record; the agent then stops the job: SIGTERM, SIGKILL after the grace.
 * grace_ms < 0: the record's own stop_grace. */
int jobs_stop(struct jobs *j, const char *id, int grace_ms, struct pier_err *err);
/* Sends a signal to a running job's init. PIER_ENOTFOUND, or PIER_ECONFLICT
 * when it is not running. */
int jobs_signal(struct jobs *j, const char *id, int sig, struct pier_err *err);
/* Appends the job's directory to path; PIER_ENOTFOUND for an unknown job
 * (the logs of ended jobs stay there while the directory is kept). */
int jobs_dir(struct jobs *j, const char *id, struct buf *path, struct pier_err *err);
/* Connects to a running job's shim for attach (shim_attach). PIER_ECONFLICT
 * when the job is not a TTY or stdin job, or has ended. */
int jobs_attach(struct jobs *j, const char *id, struct pier_err *err);
/* Counts for the host record and status: running jobs and memory they hold. */
void jobs_usage(struct jobs *j, int *running, int64_t *memory, int64_t *cpu);
/* Starts in progress, and jobs queued waiting for a start slot. */
void jobs_starts(struct jobs *j, int *starting, int *queued);

#endif
