/* http: git's smart HTTP protocol for `pierd gitreceive` (docs/gitreceive.md),
 * served by running `git http-backend` as a CGI program per request.
 * Private to src/git: gitreceive.c starts and stops it. */
#ifndef PIER_GIT_HTTP_H
#define PIER_GIT_HTTP_H

#include <stdbool.h>

#include "git/gitreceive.h"
#include "lib/err.h"

struct gitrecv_http;

/* Listens on addr ("HOST:PORT") and serves in threads of its own. g is
 * borrowed and must outlive the server. PIER_EINVAL / PIER_EUNAVAIL for an
 * address that cannot be used (the message names it). */
int gitrecv_http_start(const struct gitrecv *g, const char *addr, struct gitrecv_http **out,
                       struct pier_err *err);
/* The address it is reached at, HOST:PORT (borrowed). */
const char *gitrecv_http_addr(const struct gitrecv_http *s);
/* Stops taking connections and waits up to timeout_ms for the requests in
 * progress (pushes and fetches) to end. Returns whether they all did. */
bool gitrecv_http_drain(struct gitrecv_http *s, int timeout_ms);
/* Stops serving (cutting what still runs, its git processes killed) and
 * frees s. NULL allowed. */
void gitrecv_http_stop(struct gitrecv_http *s);

#endif
