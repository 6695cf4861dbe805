/* pipeline: what a push to main or master does. The pushed tree goes to
 * the blobstore, a one-off job of the controller builds it into a slug
 * (`/.pier/pierslug build`, docs/build.md), and the slug becomes an
 * artifact, a release and a deployment.
 *
 * hook.c reads the refs, takes the app's locks and calls pipeline_run();
 * everything the pusher sees is printed here, on stdout, line by line, in
 * the buildpack style: "-----> " headlines, 7 spaces for detail, "!      "
 * for what failed and what to do about it.
 *
 * Everything kept per app (the lock, the build cache, sources, slugs, the
 * repository's archive) is named by the app's id, never its name: an app
 * deleted and made again under the same name starts afresh. */
#ifndef PIER_GIT_PIPELINE_H
#define PIER_GIT_PIPELINE_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/httpc.h"
#include "lib/store.h"
#include "lib/uuid.h"

/* Longest app id taken (the controller's are UUIDs). */
#define PIPE_ID_MAX 64

/* The settings git hands the hook (gitrecv_env()), and what hook.c
 * found from them before the push starts. */
struct pipeline {
    const char *app; /* PIER_APP */
    /* PIER_CONTROLLER, else (with PIER_STORE) the discovery service
     * "controller" at the start of the push; no trailing '/'. NULL in a
     * post-receive hook that needs none. */
    const char *controller;
    char *found_controller;       /* owns controller when discovery gave it */
    const char *key;              /* PIER_KEY, the cluster key */
    const char *dir;              /* PIER_GIT_DIR */
    const char *store_url;        /* PIER_STORE, or NULL */
    const char *flag_blobstore;   /* PIER_BLOBSTORE, no trailing '/', or NULL */
    int build_timeout;            /* PIER_BUILD_TIMEOUT seconds */
    char app_id[PIPE_ID_MAX + 1]; /* PIER_APP_ID, else from GET /apps/<app> */
    /* The blobstore used for everything (no trailing '/'): with PIER_STORE
     * the discovery service "blobstore" (so build jobs on any host reach
     * it), else, or when none is registered, PIER_BLOBSTORE. */
    const char *blobstore;
    const char *blobstore_from; /* how it was chosen, for the pusher */
    char *found;                /* owns blobstore */
    /* What the release's artifact records the slug under (no trailing
     * '/'): with the blobstore from discovery and no PIER_BLOBSTORE, its
     * discovery name "http://blobstore.discoverd", which the host agents
     * resolve at each fetch, so the record outlives the blobstore's moves
     * (docs/gitreceive.md); else blobstore, as given. */
    const char *slug_base;
    struct store *store; /* PIER_STORE opened, or NULL */
    struct httpc *h;     /* to the controller and the blobstore */
    struct buf auth;     /* httpc_basic_auth() of the key */
    /* hook.c's lease on the app's lock in the store (NULL: none): a lost
     * lease stops the push before it releases anything. */
    struct store_keeper *lock;
};

/* Builds and deploys commit rev (40 hex digits) of the repository git
 * runs the hook in. Returns 0 when the app now runs it (the push is
 * accepted), 1 when anything failed (printed). The app's running release
 * is then unchanged, unless a deployment had been asked for when the
 * pusher left: that one is seen through. */
int pipeline_run(struct pipeline *p, const char *rev);

/* `tar -c` of the current directory (the bare repository git runs the
 * post-receive hook in) streamed to BLOBSTORE/repos/<app id>.tar with the
 * cluster key, so that the repository outlives its receiver's host. The
 * upload is cut (nothing stored) when tar fails. *size gets the bytes
 * sent. */
int pipeline_archive_repo(struct pipeline *p, size_t *size, struct pier_err *err);

/* Makes SIGTERM, SIGINT, SIGHUP and SIGPIPE (git saying the pusher went
 * away) end a pipeline_run in progress: its build job is stopped and it
 * returns 1. Call once before pipeline_run. */
void pipeline_signals(void);

/* Whether such a signal arrived. */
bool pipeline_stopped(void);

/* ---- between pipeline.c and deploy.c ---- */

#define PIPE_USER_AGENT "User-Agent: pier-gitreceive/" PIER_VERSION

/* One push being built and deployed. */
struct pipe_run {
    struct pipeline *p;
    const char *rev;
    char build_id[UUID_LEN];
    json_t *prev;       /* the app's release the new one is made from, or NULL */
    json_t *result;     /* the build's result */
    json_t *release;    /* the new release */
    bool artifact_made; /* the slug is an artifact's: kept whatever happens */
};

/* A controller call: METHOD path (from "/") with body (NULL: none); *out
 * (may be NULL) gets the JSON answer of a 200. A bare 404 is
 * PIER_ENOTFOUND; other failures say which URL answered what. *status
 * (may be NULL) gets the HTTP status, 0 when there was no answer. */
int pipe_ctl_status(struct pipeline *p, const char *method, const char *path, const json_t *body,
                    json_t **out, long *status, struct pier_err *err);
int pipe_ctl(struct pipe_run *r, const char *method, const char *path, const json_t *body,
             json_t **out, struct pier_err *err);

/* Lines to the pusher: "-----> " headline, 7-space detail, "!      "
 * failure (returns 1). */
void pipe_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pipe_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int pipe_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Step d (deploy.c), once the build succeeded: the artifact and the new
 * release (r->release), made from the app's release as it is now; refused
 * when that is a code release other than r->prev (a newer push, a
 * rollback). 0, or 1 with the failure printed. */
int pipe_release(struct pipe_run *r);

/* Step e (deploy.c): moves the app to r->release and waits until it runs
 * it. 0, or 1 with the failure printed. */
int pipe_deploy(struct pipe_run *r);

#endif
