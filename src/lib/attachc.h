/* attachc: the client side of the controller's attach session
 * (FLYNN-CLIENT-CONTRACT.md section 3.7, docs/controller.md "The attach
 * session"), shared by `pier run` and the git receiver's build job.
 *
 * attachc_open() POSTs a NewJob to /apps/:app/jobs with Upgrade:
 * flynn-attach/0 on a connection of its own and waits for the 101; then
 * the connection carries attach frames (src/host/attach.h) both ways:
 * attachc_send() what the job gets (stdin, signals, resizes) and
 * attachc_recv() what it prints, until its exit status frame. */
#ifndef PIER_LIB_ATTACHC_H
#define PIER_LIB_ATTACHC_H

#include <stddef.h>
#include <sys/types.h>

#include "lib/buf.h"
#include "lib/err.h"

struct attachc_req {
    const char *base;           /* the controller's URL (a path prefix allowed), no trailing '/' */
    const char *path;           /* "/apps/APP/jobs", escaped */
    const char *const *headers; /* NULL-terminated extra lines ("Authorization: ...",
                                   "User-Agent: ..."), or NULL */
    const char *body;           /* the NewJob JSON (borrowed) */
    size_t body_len;
    int wait_ms;        /* how long the 101 may take (the job is placed first); 0: 120000 */
    int eauth;          /* the code a 401 returns (0: -EACCES) */
    const char *ca_pem; /* https: trust only these PEM certificates (the cluster's CA); NULL:
                           the system's */
};

struct attachc;

/* Connects, sends req and waits for the answer. 0 with *out (new, for
 * attachc_close) when it was 101. A refusal is an error: Flynn's error JSON
 * gives its message and the code its "code" maps to (validation_error:
 * PIER_EINVAL, not_found: PIER_ENOTFOUND, conflict: PIER_ECONFLICT,
 * service_unavailable: PIER_EUNAVAIL, ...); a bare 404 is PIER_ENOTFOUND,
 * 401 req->eauth, another status PIER_EPROTO. No connection: -ECONNREFUSED
 * or -EHOSTUNREACH; no answer in time: PIER_ETIMEOUT; a certificate that
 * does not verify: HTTPC_ETLS (lib/httpc.h). Messages name the
 * controller's URL. */
int attachc_open(const struct attachc_req *req, struct attachc **out, struct pier_err *err);

/* The socket to poll() for input. Call attachc_recv first: bytes may
 * already be waiting in the client's buffers. */
int attachc_fd(const struct attachc *c);

/* Appends whatever arrived to in without blocking. Returns the number of
 * bytes appended (0: nothing now), -EPIPE when the controller closed the
 * connection, or another negative error. */
ssize_t attachc_recv(struct attachc *c, struct buf *in, struct pier_err *err);

/* Sends all of p (waits while the socket is full, 30 s at most). */
int attachc_send(struct attachc *c, const void *p, size_t n, struct pier_err *err);

/* Closes the connection (the controller then stops a job still running)
 * and frees c. NULL allowed. */
void attachc_close(struct attachc *c);

#endif
