/* blobapi: the blobstore's HTTP API (docs/blobstore.md): PUT, GET, HEAD
 * and DELETE of /<path> over blobfs, streamed both ways, and GET /status.
 *
 * Auth, when a key is set: GET and HEAD are open; PUT and DELETE need the
 * key (Authorization: Basic with any user, or Bearer) or a signed URL for
 * exactly that method and path (lib/blobsig.h). Credentials that are
 * presented must be right on every request: a wrong key is 401, a bad or
 * expired signature 403, both with Flynn's error JSON. */
#ifndef PIER_BLOBSTORE_BLOBAPI_H
#define PIER_BLOBSTORE_BLOBAPI_H

#include "blobstore/blobfs.h"
#include "lib/httpd.h"

/* Adds the routes to h (before httpd_start). fs is borrowed and must
 * outlive h; key (NULL or "" for no auth) is copied. Uses h's data slot
 * (httpd_set_data) for its own state, freed with h. */
void blobapi_routes(struct httpd *h, struct blobfs *fs, const char *key);

#endif
