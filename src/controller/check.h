/* check: the controller's checks of outside input, apart from the HTTP
 * handlers that call them, so that tests/fuzz can feed them anything.
 *
 * Every function here is pure: it reads what a client sent (a parsed JSON
 * body, a query argument, a key line) and what the caller read from the
 * store, and touches neither the store nor the network. A refusal is
 * PIER_EINVAL with a message naming the field, which the handler sends as
 * Flynn's validation_error unchanged. What needs the store (does the app,
 * the release, the artifact exist) stays in the handler. check.c has
 * them, but for check_route's in check_route.c. */
#ifndef PIER_CONTROLLER_CHECK_H
#define PIER_CONTROLLER_CHECK_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/err.h"
#include "scheduler/jobbuild.h"

#define CHECK_KEY_LINE_MAX 16384 /* one SSH public key line */
#define CHECK_SCALE_MAX 100000   /* processes of one type (what the scheduler runs at most) */

/* v absent, null, or an object of strings (meta, env); field names it in
 * the message. */
int check_strmap(const json_t *v, const char *field, struct pier_err *err);

/* ---- keys (keys.c) ---- */

/* Reads an OpenSSH public key line "TYPE BASE64 [COMMENT]" (NULL or empty
 * is refused). *out is a new record {id, key, comment}: id the OpenSSH
 * fingerprint "SHA256:<unpadded base64>", key "TYPE BASE64". */
int check_ssh_key(const char *line, json_t **out, struct pier_err *err);

/* ---- releases (releases.c) ---- */

/* Checks a release creation body and builds the release from it (a new
 * reference in *out): "artifacts" (ids, or the legacy "artifact"), "env",
 * "meta", and "processes" with Flynn's default resources filled in; and
 * "app_id" as the client wrote it (an id or a name) when one was given.
 * The caller resolves app_id, checks that the artifacts exist, and sets
 * "id" and "created_at". A process type with a command is also built into
 * a job (jobbuild.h) and refused when the host agent would refuse that
 * job (check_job_runnable). */
int check_release(const json_t *body, json_t **out, struct pier_err *err);

/* ---- formations (formations.c) ---- */

/* Checks new counts procs ({type: count}) and tags ({type: {key: value}}),
 * either NULL, against release rel (as stored): every type must be one of
 * the release's, every count 0 to CHECK_SCALE_MAX; and for an app (as
 * stored) that is protected, no type running under old (the formation as
 * stored, or NULL) may go to zero. */
int check_scale(const json_t *app, const json_t *rel, const json_t *old, const json_t *procs,
                const json_t *tags, struct pier_err *err);

/* ---- routes (routes.c) ---- */

/* Builds a route from a request body (a new reference in *out): a new one
 * of app (as stored) when old is NULL, with a new id, or old with the
 * body's changes (its type, domain and path, or port cannot change). An
 * http route's domain is lower-cased and its path ends in '/'; a
 * certificate must be PEM with its matching private key. A tcp route
 * sent without a port keeps port 0: the caller picks a free one. */
int check_route(const json_t *body, const json_t *app, const json_t *old, json_t **out,
                struct pier_err *err);

/* ---- one-off jobs (jobs.c) ---- */

/* What a NewJob body asks for, read by check_newjob. */
struct check_newjob {
    const char *release;           /* the release id (borrowed from the body) */
    bool release_env;              /* give the job the release's env */
    bool log_hidden;               /* attached and disable_log: the record says "log_hidden" */
    json_t *args;                  /* the command, a new reference (check_newjob_clear) */
    struct jobbuild_oneoff oneoff; /* for jobbuild_spec; borrows from the body and args */
};

/* Reads a NewJob body for a job attached (attach) or not: the release id,
 * the command ("args", else "entrypoint" + "cmd"), env, meta, resources,
 * tty, tty_columns, tty_lines, disable_log, release_env, and the types of
 * "artifacts" and "artifact". On success the caller clears *out. */
int check_newjob(const json_t *body, bool attach, struct check_newjob *out, struct pier_err *err);
void check_newjob_clear(struct check_newjob *nj);

/* Whether the host agent would run job (a record from jobbuild_spec, not
 * yet placed): PIER_EINVAL with the agent's reason when it would refuse it
 * (host/jobspec.h). */
int check_job_runnable(const json_t *job, struct pier_err *err);

/* ---- events (events.c) ---- */

/* An event id or count: a decimal int64 >= 0, 1 to 18 digits and nothing
 * else. */
bool check_event_id(const char *s, int64_t *out);

/* The object types of a comma-separated list (empty items left out): a
 * new array of strings, empty for NULL or "". */
json_t *check_event_types(const char *list);

#endif
