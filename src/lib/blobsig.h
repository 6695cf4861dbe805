/* blobsig: signed blobstore URLs.
 *
 * A holder of the cluster key lets someone without it write one blob: it
 * hands out "URL?expires=E&sig=S" where S is the lowercase hex of
 * HMAC-SHA256(key, METHOD "\n" PATH "\n" E), PATH the URL's path (from
 * its leading '/', without the query) and E a Unix time in seconds. The
 * blobstore accepts the request when the method and path match, E has not
 * passed and S is right (compared in constant time).
 *
 * A URL may also carry, covered by the signature, a byte limit
 * ("&max=N": the body may be at most N bytes) and "&once=1" (the PUT may
 * not replace a blob that already exists). Either makes the signed string
 * longer: METHOD "\n" PATH "\n" E, then "\n" N when max is there, then
 * "\nonce" when once is; a URL without them signs the short form above.
 * Dropping or changing either parameter breaks the signature. */
#ifndef PIER_LIB_BLOBSIG_H
#define PIER_LIB_BLOBSIG_H

#include <stdbool.h>
#include <stdint.h>

#define BLOBSIG_HEX_LEN 64

/* Writes the signature of (method, path, expires) under key into out
 * (BLOBSIG_HEX_LEN hex digits and a NUL); max_bytes > 0 also signs that
 * byte limit (0: none), once signs "may not replace". */
void blobsig_sign(const char *key, const char *method, const char *path, int64_t expires,
                  int64_t max_bytes, bool once, char out[BLOBSIG_HEX_LEN + 1]);

/* A signed URL's query parameters as received; NULL for one that is absent. */
struct blobsig_query {
    const char *expires, *sig;
    const char *max;  /* "N": plain decimal digits */
    const char *once; /* "1" */
};

/* What a valid signed URL allows beyond its method and path. */
struct blobsig_grant {
    int64_t max_bytes; /* 0: no limit of its own */
    bool once;         /* may not replace an existing blob */
};

/* Whether q signs (method, path) under key and its expires (decimal) is
 * at or after now, max and once included; NULL expires or sig: false. A
 * max that is not plain digits or a once other than "1" is never valid.
 * On true, grant (NULL allowed) gets what the URL allows. */
bool blobsig_verify(const char *key, const char *method, const char *path,
                    const struct blobsig_query *q, int64_t now, struct blobsig_grant *grant);

/* A new string base_url + path + "?expires=E[&max=N][&once=1]&sig=S" for
 * a request of method on path, valid for ttl seconds from now (base_url
 * has no trailing '/', path starts with '/'). max_bytes > 0 limits the
 * body to that many bytes (0: no limit of its own; the blobstore's
 * --max-size applies either way); once makes a PUT refuse (409) to replace
 * a blob that exists. Free it with free(). */
char *blobsig_url(const char *key, const char *base_url, const char *method, const char *path,
                  int64_t now, int64_t ttl, int64_t max_bytes, bool once);

#endif
