/* jobs_int: what jobs.c (the table, the store side) and jobs_run.c (the
 * host side: starting, stopping, adopting, exits) share. Not for others. */
#ifndef PIER_HOST_JOBS_INT_H
#define PIER_HOST_JOBS_INT_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "host/health.h"
#include "host/hostrec.h"
#include "host/jobs.h"
#include "host/jobspec.h"
#include "host/ports.h"

#define JOBS_PREFIX "/pier/v1/jobs/"

/* Where the agent is with a job, on this host. */
enum job_local {
    JOB_NEW,      /* known from the store only */
    JOB_QUEUED,   /* to be started, waiting for a start slot (still "pending") */
    JOB_STARTING, /* a worker prepares and starts it */
    JOB_RUNNING,  /* its shim runs */
    JOB_STOPPING, /* asked to stop; waiting for the shim to report the end */
    JOB_ENDED,    /* done here; the final state is (being) reported */
};

struct job {
    char *id;
    json_t *rec;         /* the record last seen in the store; NULL when never seen */
    int64_t rec_rev;     /* its mod_revision */
    int64_t written_rev; /* the revision of the agent's last write to it */
    json_t *written;     /* the record as that write left it */
    bool deleted;        /* the record is gone from the store */
    enum job_local local;
    bool busy;            /* a worker thread owns the next step */
    json_t *observed;     /* the fields the agent reports (state, exit_status, ...) */
    uint64_t report_seq;  /* bumped at each change of observed */
    bool writing;         /* a reporter is writing observed to the store */
    struct jobspec *spec; /* while starting or running */
    int *ports;           /* allocated, spec->n_ports of them */
    size_t n_ports;
    int64_t memory, cpu; /* held while starting or running */
    pid_t shim_pid;
    bool own_child; /* the shim is our child, to reap */
    int pidfd;      /* in the monitor's epoll; -1 none */
    struct health *health;
    int stop_grace_ms;
    json_t *exit; /* an exit.json found at adoption, reported once the record is seen */
    struct job *q_prev, *q_next; /* in the start queue while JOB_QUEUED */
};

struct jobs {
    struct jobs_config cfg;
    struct store *store;
    struct ports *ports;
    struct hostrec *hostrec;
    char *prefix; /* JOBS_PREFIX "<host id>-" */

    pthread_mutex_t lock; /* guards the table, every struct job, and the counters */
    pthread_cond_t idle;  /* signalled when a worker or reporter finishes */
    struct job **v;
    size_t n, cap;
    int workers; /* running worker and reporter threads */
    int64_t memory_used, cpu_used;
    bool stopping;
    int64_t list_rev; /* the revision of the first list */
    /* Bounded starts (jobs.c): jobs waiting for a start slot, oldest first,
     * and the starts in progress (at most cfg.max_starting unless 0). */
    struct job *q_head, *q_tail;
    int queued, starting;

    pthread_t watch_thread, monitor_thread;
    bool threads_started;
    int epfd, wakefd; /* the monitor's epoll and its eventfd */
};

/* jobs.c */
struct job *jobs_find(struct jobs *t, const char *id);
/* A new entry in the table for id (not there yet). Lock held. */
struct job *jobs_add_entry(struct jobs *t, const char *id);
/* Sets observed fields (steals obs, an object) and queues a store write. */
void jobs_observe(struct jobs *t, struct job *j, json_t *obs);
/* Acts on the difference between j's record and what runs. Lock held. */
void jobs_reconcile(struct jobs *t, struct job *j);
/* Runs fn(t, j) on a new thread with j->busy set. Lock held. */
void jobs_spawn_worker(struct jobs *t, struct job *j, void *(*fn)(void *));
void jobs_job_dir(struct jobs *t, const char *id, struct buf *out);
/* Begins queued starts while there are free start slots. Lock held. */
void jobs_dispatch(struct jobs *t);

/* jobs_run.c */
void *jobs_start_worker(void *arg);
void *jobs_stop_worker(void *arg);
/* Re-adopts the jobs in the data dir (before the store is listed). */
int jobs_adopt(struct jobs *t, struct pier_err *err);
int jobs_monitor_init(struct jobs *t, struct pier_err *err);
void *jobs_monitor_main(void *arg);
/* The observed fields for a job that ended with exit (exit.json's
 * contents, NULL when there is none). Lock held. */
json_t *jobs_exit_observed(struct jobs *t, struct job *j, const json_t *exit);

/* The worker argument. */
struct jobs_work {
    struct jobs *t;
    struct job *j;
};

#endif
