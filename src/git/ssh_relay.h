/* ssh_relay: git as a child of the SSH server, relayed to and from the
 * client's channel (the third stage of a connection, ssh.c). Private to
 * src/git. */
#ifndef PIER_GIT_SSH_RELAY_H
#define PIER_GIT_SSH_RELAY_H

#include <stdbool.h>

#include <libssh/libssh.h>

#include "lib/err.h"

/* SIGTERM to SIGKILL for git's process group (git, the hook, the build
 * client in it) when the client went away or the server stops. */
#define RELAY_KILL_GRACE_MS 5000
/* The longest a client may give no sign of life (no packet, keepalives
 * unanswered) or keep its window shut; PIER_SSH_STALL_TIMEOUT overrides. */
#define RELAY_STALL_S 300
/* Keepalives are sent after this much silence from the client (less when
 * the stall timeout is shorter). */
#define RELAY_KEEPALIVE_MS 15000

/* The connection the relay runs on, borrowed for the call. */
struct relay_io {
    ssh_session session;
    ssh_channel channel;     /* the session channel, its exec request taken */
    ssh_event event;         /* holds the session; the relay adds its pipes */
    bool (*go_on)(void *ud); /* false: the server ends this connection now */
    void *ud;
    int stall_ms; /* RELAY_STALL_S or PIER_SSH_STALL_TIMEOUT, in ms */
};

/* How a relay ended. */
enum relay_end {
    RELAY_EXITED,      /* git exited and all its output reached the client */
    RELAY_CLIENT_GONE, /* the client closed the channel or the connection broke */
    RELAY_STALLED,     /* the client stopped reading or answering for stall_ms */
    RELAY_CUT,         /* go_on() said no: the server stops */
};

/* Runs argv in cwd with env (git SERVICE REPO), in a process group of its
 * own with the signals a fresh process has, and relays: git's stdout and
 * stderr to the channel's, read only while the client's window has room;
 * the client's data to git's stdin, taken off the channel only as fast as
 * git reads it; the client's EOF closes git's stdin. Keepalives go to a
 * silent client. Returns when git exited and its output is out, or the
 * relay ended otherwise (*end), git's group then stopped: SIGTERM, and
 * SIGKILL for what is left after RELAY_KILL_GRACE_MS. *status gets git's
 * wait status. A negative return: git could not be started (nothing ran). */
int relay_git(const struct relay_io *io, char *const argv[], char *const env[], const char *cwd,
              int *status, enum relay_end *end, struct pier_err *err);

#endif
