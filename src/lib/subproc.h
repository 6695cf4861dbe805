/* subproc: starting a child program as a fresh process would start, and
 * stopping a process group with a grace period.
 *
 * Daemons block or ignore signals (SIGTERM blocked for daemon_wait, SIGPIPE
 * ignored), and both would be inherited through exec: subproc_start gives the
 * child an empty signal mask and every signal's default action, so a git
 * or a hook under it can be stopped with SIGTERM and dies of a broken pipe
 * as programs expect. */
#ifndef PIER_SUBPROC_H
#define PIER_SUBPROC_H

#include <stdbool.h>
#include <sys/types.h>

#include "lib/err.h"

/* For subproc.in, .out, .err: the child gets /dev/null there, or keeps the
 * caller's own descriptor. Any other value is a descriptor dup'ed there. */
#define SUBPROC_DEVNULL (-1)
#define SUBPROC_INHERIT (-2)

struct subproc {
    char *const *argv; /* argv[0] is looked up in PATH */
    char *const *env;  /* NULL: this process's environment */
    const char *cwd;   /* NULL: this process's */
    int in, out, err;  /* all three must be set: a descriptor or SPAWN_* */
    bool new_pgroup;   /* a process group of its own (its id = the pid) */
};

/* Starts s->argv; *pid gets its pid. Descriptors other than 0, 1, 2 are
 * closed in the child. Returns 0, or -errno with a message naming the
 * program. */
int subproc_start(const struct subproc *s, pid_t *pid, struct pier_err *err);

/* Waits for pid to exit (EINTR retried) and returns its wait status, or
 * -1 when pid is no child. */
int subproc_wait(pid_t pid);

/* Stops process group pgid, led by leader (a child of ours, or 0 when
 * already reaped): SIGTERM to the group, then waits until nothing of the
 * group is left (the leader reaped on the way) or grace_ms passed, then
 * SIGKILL to what remains and reaps the leader. *status (may be NULL)
 * gets the leader's wait status when it was reaped here. Returns whether
 * the group ended within the grace. */
bool subproc_stop_group(pid_t pgid, pid_t leader, int grace_ms, int *status);

#endif
