/* jobbuild: the job record (docs/host.md) for one process of a release.
 *
 * The service scheduler builds each job of a formation with it, and the
 * controller each one-off job (`pier run`), so both agree on what a job of
 * a release is:
 *  - args: the process type's "args" (or Flynn's older "entrypoint" + "cmd"),
 *    or for a one-off the args asked for;
 *  - env: the release's env, then the process type's, then the one-off's,
 *    each overriding the last, plus FLYNN_APP_ID, FLYNN_RELEASE_ID,
 *    FLYNN_PROCESS_TYPE, FLYNN_JOB_ID, APP_NAME and DYNO ("web.3", or
 *    "run.<n>" for a one-off);
 *  - artifact: from the release's artifacts (a "flynn" artifact whose uri
 *    is file:///DIR gives the stack DIR, and one whose uri is "pier:host"
 *    the stack "host", the agent's host binds; a "file" artifact gives the slug
 *    URL, and its meta.sha256, when there is one, as slug_sha256, which
 *    the agent checks the download against; a "file" artifact whose uri
 *    is "pier:pierd" gives "pierd": true and no slug); a "file" artifact with
 *    meta.slugrunner "true" (a slug pier built) also puts
 *    "/.pier/pierslug", "run" before the args, unless they already start
 *    with "/.pier/pierslug";
 *  - resources: the process type's, Flynn's defaults where it has none
 *    (memory 1 GiB, max_fd 10000);
 *  - ports: the process type's, each with its service name and check (the
 *    default service of a "web" type with ports is "<app name>-web", and a
 *    "web" type that declares no ports gets one such port). The port
 *    number asked for is not kept: jobs share the host's network in this
 *    version, so the agent picks a free port of its range (and passes it as
 *    PORT). Other types without ports, and one-off jobs, get none;
 *  - mounts and linux_capabilities: the process type's, copied as they
 *    are (the agent checks them: host paths bound in, and capabilities of
 *    Docker's default set given to the job's unprivileged user);
 *  - labels: app (id), release, type, meta; desired_state "up"; created_at;
 *    restarts 0; and "oneoff": true for a one-off job, which the service
 *    scheduler then never counts, stops or replaces;
 *  - init: true for a service job, so its command runs under tini and a
 *    SIGTERM reaches it (as PID 1 it would ignore one it does not handle).
 * It does not pick a host or an id: the placement does (cluster.h), and
 * sets FLYNN_JOB_ID with them. */
#ifndef PIER_SCHEDULER_JOBBUILD_H
#define PIER_SCHEDULER_JOBBUILD_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/err.h"

/* The uri of a "flynn" artifact that runs jobs on the host's own binds. */
#define JOBBUILD_HOST_STACK_URI "pier:host"
/* The uri of a "file" artifact that is the pierd installed on the host the
 * job runs on (system apps): the agent binds its own executable at
 * /app/pierd and fetches no slug. */
#define JOBBUILD_PIERD_URI "pier:pierd"

struct jobbuild_oneoff {
    const json_t *args; /* array of strings replacing the type's args; NULL: the type's */
    const json_t *env;  /* object of strings added last; NULL: none */
    const json_t *meta; /* object of strings; NULL: none */
    bool tty, stdin_open, disable_log;
    int tty_columns, tty_lines;
    const json_t *resources; /* Flynn's resources object overriding the type's; NULL: none */
};

/* Builds the spec of a job of process type `type` of release (as stored),
 * for app (as stored), given the release's artifacts (an array of artifact
 * records as stored, in the release's order; NULL or [] for none). type may
 * be NULL for a one-off job not tied to a process type (then oneoff->args
 * is required). oneoff is NULL for a service job. On success *out is a new
 * object without "id" and "host_id". PIER_EINVAL naming what is wrong (an
 * unknown type, a type with no args, an artifact of an unknown kind). */
int jobbuild_spec(const json_t *app, const json_t *release, const json_t *artifacts,
                  const char *type, const struct jobbuild_oneoff *oneoff, json_t **out,
                  struct pier_err *err);

/* The memory a job record holds against its host (resources.memory.limit,
 * or the agent's default of 1 GiB). */
long long jobbuild_memory(const json_t *job);

/* Sets the job's DYNO to "<type>.<n>" (the service scheduler numbers a
 * formation's jobs 1..count; jobbuild_spec sets 1). No-op without a type. */
void jobbuild_set_index(json_t *job, int n);

#endif
