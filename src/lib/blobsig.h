/* blobsig: signed blobstore URLs.
 *
 * A holder of the cluster key lets someone without it write one blob: it
 * hands out "URL?expires=E&sig=S" where S is the lowercase hex of
 * HMAC-SHA256(key, METHOD "\n" PATH "\n" E), PATH the URL's path (from
 * its leading '/', without the query) and E a Unix time in seconds. The
 * blobstore accepts the request when the method and path match, E has not
 * passed and S is right (compared in constant time). */
#ifndef PIER_LIB_BLOBSIG_H
#define PIER_LIB_BLOBSIG_H

#include <stdbool.h>
#include <stdint.h>

#define BLOBSIG_HEX_LEN 64

/* Writes the signature of (method, path, expires) under key into out
 * (BLOBSIG_HEX_LEN hex digits and a NUL). */
void blobsig_sign(const char *key, const char *method, const char *path, int64_t expires,
                  char out[BLOBSIG_HEX_LEN + 1]);

/* Whether sig (as received) signs (method, path, expires_str) under key and
 * expires_str (decimal) is at or after now. NULL expires_str or sig: false. */
bool blobsig_verify(const char *key, const char *method, const char *path, const char *expires_str,
                    const char *sig, int64_t now);

/* A new string "base_url" + path + "?expires=E&sig=S" for a request of
 * method on path, valid for ttl seconds from now. base_url has no trailing
 * '/' and path starts with '/'. Free it with free(). */
char *blobsig_url(const char *key, const char *base_url, const char *method, const char *path,
                  int64_t now, int64_t ttl);

#endif
