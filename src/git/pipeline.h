/* pipeline: what a push to main or master does. The pushed tree goes to
 * the blobstore, a one-off job of the controller builds it into a slug
 * (`/.pier/pierslug build`, docs/build.md), and the slug becomes an
 * artifact, a release and a deployment.
 *
 * hook.c reads the refs, takes the app's lock and calls pipeline_run();
 * everything the pusher sees is printed here, on stdout, line by line, in
 * the buildpack style: "-----> " headlines, 7 spaces for detail, "!      "
 * for what failed and what to do about it. */
#ifndef PIER_GIT_PIPELINE_H
#define PIER_GIT_PIPELINE_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/httpc.h"
#include "lib/uuid.h"

/* The settings git hands the hook (gitrecv_env()). */
struct pipeline {
    const char *app;        /* PIER_APP */
    const char *controller; /* PIER_CONTROLLER, no trailing '/' */
    const char *key;        /* PIER_KEY, the cluster key */
    const char *blobstore;  /* PIER_BLOBSTORE, no trailing '/' */
    const char *dir;        /* PIER_GIT_DIR */
    int build_timeout;      /* PIER_BUILD_TIMEOUT seconds */
};

/* Builds and deploys commit rev (40 hex digits) of the repository git
 * runs the hook in. Returns 0 when the app now runs it (the push is
 * accepted), 1 when anything failed (the failure has been printed, and the
 * app's running release is unchanged unless this was its first deploy). */
int pipeline_run(const struct pipeline *p, const char *rev);

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
    const struct pipeline *p;
    const char *rev;
    char build_id[UUID_LEN];
    struct httpc *h;  /* to the controller and the blobstore */
    struct buf auth;  /* "Authorization: Basic ..." with the cluster key */
    char *source_url; /* where the source tar is */
    json_t *prev;     /* the app's release before the push, or NULL */
    json_t *result;   /* the build's result */
    json_t *release;  /* the new release */
};

/* A controller call: METHOD path (from "/") with body (NULL: none); *out
 * (may be NULL) gets the JSON answer of a 200. A bare 404 is
 * PIER_ENOTFOUND; other failures say which URL answered what. */
int pipe_ctl(struct pipe_run *r, const char *method, const char *path, const json_t *body,
             json_t **out, struct pier_err *err);

/* Lines to the pusher: "-----> " headline, 7-space detail, "!      "
 * failure (returns 1). */
void pipe_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pipe_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int pipe_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Step e (deploy.c): moves the app to r->release and waits until it runs
 * it. 0, or 1 with the failure printed. */
int pipe_deploy(struct pipe_run *r);

#endif
