/* ctl: what the controller's files share (internal to src/controller).
 *
 * The controller is stateless: every handler reads and writes the store
 * (keys.h) and nothing else, so any number of controllers can serve at
 * once. Each resource has its file, which adds its routes with its
 * ctl_*_routes function; controller.c wires them and starts the workers
 * that only the leading controller runs (the event recorder, the
 * deployer).
 *
 * Records are stored in the shape the API returns them, so a GET is a read
 * and a copy. Replies follow FLYNN-CLIENT-CONTRACT.md: success is exactly
 * 200, not found is a bare 404, errors are Flynn's JSON. */
#ifndef PIER_CONTROLLER_CTL_H
#define PIER_CONTROLLER_CTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/err.h"
#include "lib/httpd.h"
#include "lib/leader.h"
#include "lib/store.h"

struct ctl {
    struct store *s;
    const char *key;       /* the cluster key (API auth) */
    char *addr;            /* this controller's API address, HOST:PORT */
    struct leader *leader; /* who runs the workers */
    const char *domain;    /* the cluster domain for default routes, or NULL */
    const char *store_url; /* the store endpoints, as given (GET /cluster) */
};

/* ---- route tables, one per resource file ---- */
void ctl_apps_routes(struct httpd *h, struct ctl *c);        /* apps.c */
void ctl_artifacts_routes(struct httpd *h, struct ctl *c);   /* artifacts.c */
void ctl_releases_routes(struct httpd *h, struct ctl *c);    /* releases.c (+ app release) */
void ctl_formations_routes(struct httpd *h, struct ctl *c);  /* formations.c (+ scale) */
void ctl_jobs_routes(struct httpd *h, struct ctl *c);        /* jobs.c */
void ctl_routes_routes(struct httpd *h, struct ctl *c);      /* routes.c (app routes) */
void ctl_keys_routes(struct httpd *h, struct ctl *c);        /* keys.c */
void ctl_events_routes(struct httpd *h, struct ctl *c);      /* events.c */
void ctl_deployments_routes(struct httpd *h, struct ctl *c); /* deployments.c */
void ctl_cluster_routes(struct httpd *h, struct ctl *c);     /* cluster.c (pier's) */

/* ---- jobs (jobs.c, jobattach.c, applog.c) ---- */
/* The app log, GET /apps/:app/log (applog.c); ctl_jobs_routes adds it. */
void ctl_applog_routes(struct httpd *h, struct ctl *c);
/* Stops job id: desired_state "down" in its record, by compare-and-swap
 * (again on a conflict). PIER_ENOTFOUND when there is no such record. */
int ctl_job_stop(struct ctl *c, const char *id, struct pier_err *err);
/* Appends the API address (HOST:PORT) of host_id's agent, from its host
 * record. PIER_EUNAVAIL when the host is not in the cluster. */
int ctl_agent_addr(struct ctl *c, const char *host_id, struct buf *addr, struct pier_err *err);
/* Appends "Authorization: Basic ..." with the cluster key, for an agent. */
void ctl_agent_auth(struct ctl *c, struct buf *header);
/* Answers POST /apps/:app/jobs with 101 and runs the attach session of the
 * one-off job id, placed on host_id (jobattach.c); stops the job when the
 * client leaves before its exit status. */
void ctl_job_attach(struct httpd_req *r, struct ctl *c, const char *id, const char *host_id,
                    bool tty);

/* ---- workers the leader runs (each has its thread; stop joins it) ---- */
struct ctl_worker;
/* The event recorder (recorder.c): turns the store's changes into events. */
int ctl_recorder_start(struct ctl *c, struct ctl_worker **out, struct pier_err *err);
void ctl_worker_stop(struct ctl_worker *w);

/* ---- helpers (ctl.c) ---- */

/* Reads key as a JSON object. *mod_rev (optional) gets its mod revision.
 * PIER_ENOTFOUND when absent; PIER_EPROTO when it is not a JSON object. */
int ctl_get(struct ctl *c, const char *key, json_t **out, int64_t *mod_rev, struct pier_err *err);
/* Reads every record under prefix, in key order, into a new array. */
int ctl_list(struct ctl *c, const char *prefix, json_t **out, struct pier_err *err);
/* Writes j (compact) at key. mod_rev: -1 any, 0 only if absent (else
 * PIER_EEXISTS), > 0 only if unchanged since (else PIER_ECONFLICT). */
int ctl_put(struct ctl *c, const char *key, const json_t *j, int64_t mod_rev, struct pier_err *err);
/* Appends j's compact encoding as a put to a transaction. */
void ctl_txn_put(struct store_txn *t, const char *key, const json_t *j);

/* Finds an app by id or by name (a Flynn client sends either). */
int ctl_app_get(struct ctl *c, const char *ref, json_t **app, int64_t *mod_rev,
                struct pier_err *err);
/* The id of the app ref names (borrowed from *app, which the caller frees). */
const char *ctl_app_id(const json_t *app);

/* Replies with an error for rc/err: not found is a bare 404, the rest
 * Flynn's JSON with err->msg. */
void ctl_reply_err(struct httpd_req *r, int rc, const struct pier_err *err);
/* Replies 400 validation_error with a message (and changes nothing). */
void ctl_reply_invalid(struct httpd_req *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Sets field to the time now, RFC 3339 UTC with microseconds. */
void ctl_set_now(json_t *obj, const char *field);

/* Keeps only the fields a Flynn client may see: removes every key of obj
 * whose name is not in the NULL-terminated list. */
void ctl_keep_fields(json_t *obj, const char *const *fields);

/* ---- helpers the resource files share (ctl.c) ---- */

/* Sorts an array of records newest first: by created_at, then id, both
 * descending (RFC 3339 times of one width sort as strings). */
void ctl_sort_newest(json_t *arr);
/* Replies with every record under prefix, newest first, each cut to fields
 * (NULL-terminated; NULL keeps every field): the plain list endpoints. */
void ctl_reply_list(struct httpd_req *r, struct ctl *c, const char *prefix,
                    const char *const *fields);

/* Runs t: *ok says whether its compares held. */
int ctl_txn_run(struct ctl *c, const struct store_txn *t, bool *ok, struct pier_err *err);

/* Read-modify-write of an app with compare-and-swap, retried when someone
 * else changed it in between: edit changes app in place (a negative
 * return stops and is returned). On success *out (optional) is the new
 * record, which the caller frees. */
typedef int (*ctl_app_edit_fn)(json_t *app, void *ud, struct pier_err *err);
int ctl_app_update(struct ctl *c, const char *ref, ctl_app_edit_fn edit, void *ud, json_t **out,
                   struct pier_err *err);

/* GET /formations without ?active=true: Flynn's stream of formation
 * changes (not formations.c's: the events side implements it). The route
 * is formations.c's, because the router matches paths and not queries; it
 * hands these requests over here. */
void ctl_formations_stream(struct httpd_req *r, struct ctl *c);

/* ---- what apps.c needs of routes.c ---- */

/* Adds to t the creation of the app's default http route,
 * "<app name>.<c->domain>" to "<app name>-web" (nothing when c->domain is
 * unset): the route and its uniqueness index, with a compare that the
 * domain is free. */
void ctl_routes_txn_default(struct ctl *c, struct store_txn *t, const json_t *app);
/* Adds to t the deletes of every route of the app and its index keys;
 * *n (optional) gets how many ops were added. */
int ctl_routes_txn_delete_app(struct ctl *c, struct store_txn *t, const char *app_id, size_t *n,
                              struct pier_err *err);

#endif
