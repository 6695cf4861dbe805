/* gitreceive: `pierd gitreceive`, the git receiver (docs/gitreceive.md).
 *
 * The daemon serves git over smart HTTP (http.c, through git http-backend)
 * and SSH (ssh.c and ssh_relay.c, libssh), keeps one bare repository per
 * app under DIR/repos (named by the app's id), and leaves the build and
 * deploy to the repositories' pre-receive hook, `pierd gitreceive hook`
 * (hook.c), and their archiving to the post-receive hook, which git runs
 * with the environment gitrecv_env() gives. This header is the contract
 * between those files. */
#ifndef PIER_GIT_GITRECEIVE_H
#define PIER_GIT_GITRECEIVE_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/err.h"

/* The longest a build may run unless PIER_BUILD_TIMEOUT says otherwise,
 * in seconds, and the most it may say. */
#define GITRECV_DEFAULT_BUILD_TIMEOUT 1800
#define GITRECV_MAX_BUILD_TIMEOUT 86400
/* At a stop (SIGTERM), pushes under way may run the build timeout and this
 * many seconds more. */
#define GITRECV_DRAIN_EXTRA_S 60

struct store;

/* The daemon's settings, read-only once it serves. */
struct gitrecv {
    const char *dir; /* DIR: repos/, locks/, tmp/, the SSH host key */
    /* --controller: the controller's URL, no trailing '/'; NULL: the
     * discovery service "controller" (gitrecv_controller) */
    const char *controller;
    const char *key;         /* the cluster key */
    const char *blobstore;   /* --blobstore, no trailing '/', or NULL (discovery only) */
    const char *store;       /* the store's URL (discovery), or NULL */
    struct store *discovery; /* that store, opened, or NULL */
    const char *pierd;       /* absolute path of this pierd (for the hooks) */
    int build_timeout;       /* seconds, PIER_BUILD_TIMEOUT */
};

/* An app as the controller knows it. */
struct gitrecv_app {
    char id[65];    /* its id (a UUID): names its repository, lock and archive */
    char name[101]; /* its name, for messages and PIER_APP */
};

/* The URL (no trailing '/') of the instance of service that leads in
 * discovery in st: its meta.url when it has one, else http://ADDR. 0 with
 * *url new; PIER_EUNAVAIL when none is registered, with the message "the
 * SERVICE is not registered in discovery (service SERVICE); is it running?
 * Try: pier status"; PIER_EINVAL when st is NULL; or the store's error. */
int gitrecv_discover(struct store *st, const char *service, char **url, struct pier_err *err);

/* The blobstore's URL (no trailing '/'): the one discovery in st leads
 * with (gitrecv_discover), else fallback (also when st is NULL or
 * discovery does not answer). *from says which, for messages. Returns a
 * new string, or NULL with err when there is neither (fallback NULL or
 * ""). */
char *gitrecv_blobstore(struct store *st, const char *fallback, const char **from,
                        struct pier_err *err);

/* The controller's URL for the receiver's own questions (apps, SSH keys):
 * g->controller when given, else gitrecv_discover(g->discovery,
 * "controller"), kept for 2 s at most. 0 with *url new, or
 * gitrecv_discover's errors. Thread-safe. */
int gitrecv_controller(const struct gitrecv *g, char **url, struct pier_err *err);
/* Frees what gitrecv_controller keeps (at exit). */
void gitrecv_peers_cleanup(void);

/* Whether name is a valid app name (the controller's rule). An app id (a
 * lower-case UUID) passes too. */
bool gitrecv_app_name_ok(const char *name);

/* Parses a build timeout in seconds (PIER_BUILD_TIMEOUT, --build-timeout):
 * NULL or "" gives GITRECV_DEFAULT_BUILD_TIMEOUT; otherwise a whole number
 * from 1 to GITRECV_MAX_BUILD_TIMEOUT. Returns 0 with *out set, or
 * PIER_EINVAL (*out untouched). */
int gitrecv_parse_timeout(const char *s, int *out);

/* Resolves ref (an app's name or id) in the controller, filling *app
 * (PIER_ENOTFOUND when there is no such app, with the message "app X does
 * not exist: create it with 'pier create X'"; PIER_EUNAVAIL when the
 * controller could not be asked), and makes sure DIR/repos/<app id>.git
 * is a bare repository with the pre-receive and post-receive hooks. A
 * repository that is not there is restored from the blobstore's
 * repos/<app id>.tar when it has one (an app moving to this receiver),
 * else made empty; either way atomically: a half-made one is never used.
 * *path gets a new string, the repository's absolute path. Safe to call
 * from several threads and processes at once. */
int gitrecv_repo_prepare(const struct gitrecv *g, const char *ref, struct gitrecv_app *app,
                         char **path, struct pier_err *err);

/* A new NULL-terminated environment for git-receive-pack, git-upload-pack
 * and git http-backend serving app: this process's environment without
 * its GIT_* variables (a GIT_DIR or GIT_CONFIG_* meant for the daemon must
 * not steer the git it runs), plus PIER_APP (the name), PIER_APP_ID,
 * PIER_CONTROLLER, PIER_KEY, PIER_BLOBSTORE (both empty when not given as
 * flags: the hook looks them up in discovery), PIER_GIT_DIR,
 * PIER_BUILD_TIMEOUT and PIER_STORE (with a store). Free with
 * gitrecv_env_free(). */
char **gitrecv_env(const struct gitrecv *g, const struct gitrecv_app *app);
void gitrecv_env_free(char **env);

/* 0 when the SSH key of this SHA256 fingerprint ("SHA256:...") is one the
 * controller holds, PIER_ENOTFOUND when not, another code when the
 * controller could not be asked. The controller's answers (yes and no,
 * not failures) are kept for a few seconds: a client offering key after
 * key, or connecting again and again, costs it one question per key. */
int gitrecv_key_allowed(const struct gitrecv *g, const char *fingerprint, struct pier_err *err);

/* The SSH server (ssh.c): listens on addr with the host key in key_file
 * (made, ed25519, mode 0600, when missing) and serves in threads of its
 * own until gitrecv_ssh_stop(). */
struct gitrecv_ssh;
int gitrecv_ssh_start(const struct gitrecv *g, const char *addr, const char *key_file,
                      struct gitrecv_ssh **out, struct pier_err *err);
/* The address the server is bound to: its numeric host (an empty string
 * for none) into host, and its port, returned. */
int gitrecv_ssh_local(const struct gitrecv_ssh *s, char *host, size_t size);
/* Refuses new connections, lets pushes under way finish (up to the build
 * timeout and GITRECV_DRAIN_EXTRA_S), cuts the rest, and frees s. NULL
 * allowed. */
void gitrecv_ssh_stop(struct gitrecv_ssh *s);

/* `pierd gitreceive hook [post-receive]`: the repositories' hooks (hook.c). */
int gitrecv_hook_main(int argc, char **argv);

/* `pierd gitreceive`: the daemon's entry (gitreceive.c); "hook" as the
 * first argument runs gitrecv_hook_main instead. */
int gitreceive_main(int argc, char **argv);

#endif
