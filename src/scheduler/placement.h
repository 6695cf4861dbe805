/* placement: which host a new job goes to. Pure: no I/O, no clock, no
 * allocation that outlives a call; the scheduler reads the host records and
 * counts the jobs, this module only decides.
 *
 * A host can take a job when it is up, every tag the formation asks for
 * equals the host's tag, and its free memory (total - allocated) is at
 * least the job's memory. Among those, the job goes to the host with the
 * fewest jobs of the same app and process type, then the most free memory,
 * then the lowest id (placement.c says why). */
#ifndef PIER_SCHEDULER_PLACEMENT_H
#define PIER_SCHEDULER_PLACEMENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"

struct placement_host {
    const char *id;           /* borrowed */
    const json_t *tags;       /* borrowed object of strings; NULL = no tags */
    int64_t memory_total;     /* bytes */
    int64_t memory_allocated; /* bytes */
    int same_kind;            /* jobs of the job's app and type already on it */
    bool up;
};

struct placement_job {
    const char *app;    /* borrowed; only named in messages (NULL allowed) */
    const char *type;   /* borrowed; the process type, named in messages */
    int64_t memory;     /* bytes asked for, >= 0 */
    const json_t *tags; /* borrowed object of strings the host must have; NULL = any */
};

/* Picks a host for job: returns its index in hosts (>= 0). PIER_EUNAVAIL
 * when no host can take it, with a message naming why (no host up, no host
 * with the tags, not enough memory free) and what the hosts have, bounded
 * in length however many hosts there are. PIER_EINVAL for a bad job
 * (negative memory, tags not an object). */
int placement_pick(const struct placement_host *hosts, size_t n, const struct placement_job *job,
                   struct pier_err *err);

/* Fills h from a host record (src/host/hostrec.h): id, tags (may be
 * absent), memory.total and memory.allocated. Strings and tags are
 * borrowed from rec and valid while rec lives. A record in the store means
 * its lease is alive, so up is true; same_kind is 0 (the caller counts).
 * PIER_EINVAL naming the field for a record missing fields or with wrong
 * types. */
int placement_host_from_record(const json_t *rec, struct placement_host *h, struct pier_err *err);

#endif
