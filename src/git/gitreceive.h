/* gitreceive: `pierd gitreceive`, the git receiver (docs/gitreceive.md).
 *
 * The daemon serves git over smart HTTP (http.c, through git http-backend)
 * and SSH (ssh.c, libssh), keeps one bare repository per app under
 * DIR/repos, and leaves the build and deploy to the repositories'
 * pre-receive hook, `pierd gitreceive hook` (hook.c), which git runs with
 * the environment gitrecv_env() gives. This header is the contract between
 * those files. */
#ifndef PIER_GIT_GITRECEIVE_H
#define PIER_GIT_GITRECEIVE_H

#include <stdbool.h>

#include "lib/err.h"

/* The daemon's settings, read-only once it serves. */
struct gitrecv {
    const char *dir;        /* DIR: repos/, locks/, tmp/, the SSH host key */
    const char *controller; /* the controller's URL, no trailing '/' */
    const char *key;        /* the cluster key */
    const char *blobstore;  /* the blobstore's URL, no trailing '/' */
    const char *pierd;      /* absolute path of this pierd (for the hook) */
    int build_timeout;      /* seconds, PIER_BUILD_TIMEOUT */
};

/* Whether name is a valid app name (the controller's rule). */
bool gitrecv_app_name_ok(const char *name);

/* Makes sure app exists in the controller (PIER_ENOTFOUND when it does not,
 * with the message "app X does not exist: create it with 'pier create X'")
 * and that DIR/repos/<app>.git is a bare repository with the pre-receive
 * hook (made atomically: a half-made one is never used). *path gets a new
 * string, the repository's absolute path. Safe to call from several
 * threads and processes at once. */
int gitrecv_repo_prepare(const struct gitrecv *g, const char *app, char **path,
                         struct pier_err *err);

/* A new NULL-terminated environment for git-receive-pack, git-upload-pack
 * and git http-backend serving app: this process's environment plus
 * PIER_APP, PIER_CONTROLLER, PIER_KEY, PIER_BLOBSTORE, PIER_GIT_DIR and
 * PIER_BUILD_TIMEOUT. Free with gitrecv_env_free(). */
char **gitrecv_env(const struct gitrecv *g, const char *app);
void gitrecv_env_free(char **env);

/* 0 when the SSH key of this SHA256 fingerprint ("SHA256:...") is one the
 * controller holds, PIER_ENOTFOUND when not, another code when the
 * controller could not be asked. */
int gitrecv_key_allowed(const struct gitrecv *g, const char *fingerprint, struct pier_err *err);

/* The SSH server (ssh.c): listens on addr with the host key in key_file
 * (made, ed25519, mode 0600, when missing) and serves in threads of its
 * own until gitrecv_ssh_stop(). */
struct gitrecv_ssh;
int gitrecv_ssh_start(const struct gitrecv *g, const char *addr, const char *key_file,
                      struct gitrecv_ssh **out, struct pier_err *err);
void gitrecv_ssh_stop(struct gitrecv_ssh *s);

/* `pierd gitreceive hook`: the pre-receive hook (hook.c). */
int gitrecv_hook_main(int argc, char **argv);

/* `pierd gitreceive`: the daemon's entry (gitreceive.c); "hook" as the
 * first argument runs gitrecv_hook_main instead. */
int gitreceive_main(int argc, char **argv);

#endif
