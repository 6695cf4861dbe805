/* blobapi: the blobstore's HTTP API (docs/blobstore.md): PUT, GET, HEAD
 * and DELETE of /<path> over blobfs, streamed both ways, and GET /status.
 *
 * Auth, when a key is set: GET and HEAD are open; PUT and DELETE need the
 * key (Authorization: Basic with any user, or Bearer) or a signed URL for
 * exactly that method and path (lib/blobsig.h). Credentials that are
 * presented must be right on every request: a wrong key is 401, a bad or
 * expired signature 403, both with Flynn's error JSON.
 *
 * A PUT stores at most max_size bytes, or the signed URL's max when that is
 * smaller: a larger Content-Length is 413 before the body, a body that
 * grows past it 413 (nothing stored, the connection closed). A signed URL
 * with once=1 may not replace a blob (409). */
#ifndef PIER_BLOBSTORE_BLOBAPI_H
#define PIER_BLOBSTORE_BLOBAPI_H

#include <stdint.h>

#include "blobstore/blobfs.h"
#include "lib/httpd.h"

/* Adds the routes to h (before httpd_start). fs is borrowed and must
 * outlive h; key (NULL or "" for no auth) is copied; max_size is the
 * largest blob a PUT may store. Uses h's data slot (httpd_set_data) for its
 * own state, freed with h. */
void blobapi_routes(struct httpd *h, struct blobfs *fs, const char *key, uint64_t max_size);

#endif
