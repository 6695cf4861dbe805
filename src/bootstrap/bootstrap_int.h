/* What the parts of `pierd bootstrap` share: the run's state, each system
 * app as it is resolved, and the steps each file does (docs/bootstrap.md
 * lists the steps in order).
 *
 *   bootstrap.c  flags, the run in order, the summary
 *   ca.c         the cluster CA and the router's certificate (ca.h)
 *   plan.c       STATE/bootstrap.json (planned ids), the system artifact,
 *                each app from the store or from the plan
 *   jobs.c       the local agent: live jobs, starting one, waiting for up
 *   records.c    the controller's API: app, artifacts, release, formation,
 *                routes; the HTTP helper both use
 *
 * One thread; every wait is bounded by --timeout. */
#ifndef PIER_BOOTSTRAP_INT_H
#define PIER_BOOTSTRAP_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/httpc.h"
#include "lib/store.h"

/* The user the agent runs jobs as (pierd host --uid's default): the mount
 * directories bootstrap makes under STATE are its. */
#define BS_JOB_UID 65534

struct bs {
    /* flags */
    const char *manifest_path, *store_url, *host_url, *data_dir, *key;
    const char *domain; /* --domain, else the DOMAIN var, else NULL */
    int64_t timeout_ms;
    json_t *vars;     /* NAME -> value, the built-ins included */
    json_t *manifest; /* filled in and checked (manifest.h) */
    /* connections */
    struct store *s;
    struct httpc *h;
    struct buf auth; /* "Authorization: Basic ..." (empty without a key) */
    /* the local agent */
    char *host_id, *host_ip;
    /* STATE/bootstrap.json */
    json_t *plan;
    /* the system artifacts as they are (or will be) stored: file, flynn */
    json_t *sys_file, *sys_stack;
    char *controller_url; /* http://IP:PORT once the controller answers */
    struct buf failure;   /* the output of a job that failed, shown after the error */
    int64_t t0;           /* clock_now_ms() at the start */
    int jobs_started, jobs_found, apps_created;
};

/* One app of the manifest, resolved to the records its jobs are built from. */
struct sysapp {
    const json_t *m;   /* the manifest's app (borrowed) */
    const char *name;  /* borrowed from m */
    json_t *app;       /* app record (stored, or as it will be created) */
    json_t *release;   /* release record, likewise */
    json_t *artifacts; /* array of the release's artifact records */
    json_t *processes; /* the counts: the stored formation's, else the manifest's */
    bool in_store;     /* the app record exists */
    bool complete;     /* its records are all made (nothing left to create) */
    bool tags_checked; /* its formation's tags are the manifest's (records_tags) */
    double up_s;       /* seconds its jobs took to be up (0: found up) */
    char addr[128];    /* "IP:PORT" of its first job's first port, or "" */
};

/* ---- plan.c ---- */

/* Reads STATE/bootstrap.json (none yet: an empty plan). */
int plan_load(struct bs *b, struct pier_err *err);
/* Writes it atomically (fsync'd), before any job is started. */
int plan_save(struct bs *b, struct pier_err *err);
/* The two system artifact records (b->sys_file: pier:pierd, the pierd
 * installed on each host; b->sys_stack: pier:host) with the
 * planned ids; records already in the store are taken from there. */
int plan_artifacts(struct bs *b, struct pier_err *err);
/* Resolves a manifest app: the stored app, release and formation when the
 * store has a system app of that name with a release, else records with
 * the planned ids (made and added to the plan when new). */
int plan_app(struct bs *b, struct sysapp *a, struct pier_err *err);
/* Marks the app's records complete in the plan. */
void plan_mark_complete(struct bs *b, const char *name);
/* Makes the mount locations under STATE of the app's process types that
 * are missing (0700, owned by BS_JOB_UID when run as root). */
int plan_mounts(struct bs *b, const struct sysapp *a, struct pier_err *err);
void sysapp_clear(struct sysapp *a);

/* ---- jobs.c ---- */

/* Waits (up to the timeout) for the agent's GET /host/status and its host
 * record in the store; sets b->host_id and b->host_ip. */
int jobs_agent_ready(struct bs *b, struct pier_err *err);
/* For each process type of a with a count > 0: counts its live jobs,
 * starts the missing ones on this host, waits for every one to be up (and
 * healthy when checked). Prints one line per step. */
int jobs_ensure(struct bs *b, struct sysapp *a, struct pier_err *err);

/* ---- records.c ---- */

/* One JSON exchange with the agent or the controller (the cluster key as
 * Basic auth). body may be NULL. *status gets the HTTP status; *out (may
 * be NULL) the parsed answer when it is JSON (else NULL). Network errors
 * are returned with a message naming peer. */
int bs_call(struct bs *b, const char *method, const char *url, const char *peer, const json_t *body,
            long timeout_ms, long *status, json_t **out, struct pier_err *err);
/* Waits (up to the timeout) for GET b->controller_url/.well-known/status. */
int records_controller_ready(struct bs *b, struct pier_err *err);
/* Creates what of a's records the controller does not have yet (app,
 * artifacts, release, the app's release, formation) and puts its routes in
 * place. *created gets whether anything was written. */
int records_ensure(struct bs *b, struct sysapp *a, bool *created, struct pier_err *err);
/* Puts the manifest's tags of a (when it has "tags") on its formation
 * when they differ, keeping the formation's counts. *updated says whether
 * it did. No formation yet: nothing. */
int records_tags(struct bs *b, const struct sysapp *a, bool *updated, struct pier_err *err);

/* A JSON string field of obj, or NULL. */
static inline const char *bs_str(const json_t *obj, const char *field)
{
    return json_string_value(json_object_get(obj, field));
}

#endif
