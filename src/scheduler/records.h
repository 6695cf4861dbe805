/* records: the records the service scheduler reads besides hosts and jobs
 * (cluster.h): apps, releases, artifacts, formations and scale requests,
 * loaded at the view's revision and kept current from the same watch.
 *
 * Ids are the keys below each prefix: "<app id>/<release id>" for a
 * formation. Records are borrowed: valid until the next records_apply or
 * records_put. Threads: one thread owns a struct records. */
#ifndef PIER_SCHEDULER_RECORDS_H
#define PIER_SCHEDULER_RECORDS_H

#include <jansson.h>
#include <stdint.h>

#include "lib/err.h"
#include "lib/store.h"

enum records_kind {
    RECORDS_APPS,
    RECORDS_RELEASES,
    RECORDS_ARTIFACTS,
    RECORDS_FORMATIONS,
    RECORDS_SCALE_REQUESTS,
    RECORDS_KINDS,
};

struct records;

/* Reads every kind at revision (> 0). *out is new. */
int records_load(struct store *s, int64_t revision, struct records **out, struct pier_err *err);
/* Applies watch events of KEYS_ROOT; events of other keys are ignored, and
 * so is an event older than what is held for its key. */
void records_apply(struct records *r, const struct store_events *ev);
void records_free(struct records *r);

/* The record of kind with id, or NULL; *mod_revision (optional) gets its mod
 * revision. */
const json_t *records_get(const struct records *r, enum records_kind k, const char *id,
                          int64_t *mod_revision);
/* Every record of kind, as an object id -> record. */
const json_t *records_all(const struct records *r, enum records_kind k);
/* Takes in what the owner wrote itself (steals rec), at the write's revision. */
void records_put(struct records *r, enum records_kind k, const char *id, json_t *rec,
                 int64_t mod_revision);

#endif
