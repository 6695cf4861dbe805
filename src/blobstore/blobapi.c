#include "blobstore/blobapi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/blobsig.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/log.h"

/* The piece of a blob read per stream step. */
#define READ_CHUNK (64 * 1024)
/* After a write failed (a full disk), the rest of the body is read and
 * dropped so the client gets the error, up to this much; past it the
 * connection is cut. */
#define DROP_LIMIT (64 * 1024 * 1024)

struct blobapi {
    struct blobfs *fs;
    char *key;         /* NULL: no auth */
    uint64_t max_size; /* the largest blob a PUT may store */
};

static void api_free(void *p)
{
    struct blobapi *api = p;
    free(api->key);
    free(api);
}

/* ---- requests ---- */

/* The request's blob path (httpd_path without its leading '/'), checked;
 * on a bad one replies 400 and returns NULL. Borrowed from r. */
static const char *blob_path(struct httpd_req *r, bool writing)
{
    const char *path = httpd_path(r);
    path += path[0] == '/';
    struct pier_err err = {0};
    if (blobfs_check_path(path, &err) < 0) {
        httpd_reply_err(r, &err);
        return NULL;
    }
    if (writing && (strcmp(path, "status") == 0 || strcmp(path, ".well-known/status") == 0)) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "blob path \"%s\" is reserved for the status check", path);
        return NULL;
    }
    return path;
}

/* Replies with a blobfs error: its own status for bad input, a conflict
 * or a missing blob, 500 for anything the system refused. */
static void reply_fs_err(struct httpd_req *r, const struct pier_err *err)
{
    if (err->code == PIER_EINVAL || err->code == PIER_ECONFLICT || err->code == PIER_ENOTFOUND)
        httpd_reply_err(r, err);
    else
        httpd_reply_error(r, 500, "unknown_error", 13, "%s", err->msg);
}

/* ---- auth ---- */

/* Whether r's signed URL (?expires=&sig=, with max= and once= when it has
 * them) is good for r's method and path at now; a HEAD may use a GET
 * signature. grant (NULL allowed) gets what the URL allows. */
static bool signature_ok(const char *key, const struct httpd_req *r, int64_t now,
                         struct blobsig_grant *grant)
{
    const struct blobsig_query q = {.expires = httpd_query(r, "expires"),
                                    .sig = httpd_query(r, "sig"),
                                    .max = httpd_query(r, "max"),
                                    .once = httpd_query(r, "once")};
    const char *method = httpd_method(r), *path = httpd_path(r);
    return blobsig_verify(key, method, path, &q, now, grant) ||
           (strcmp(method, "HEAD") == 0 && blobsig_verify(key, "GET", path, &q, now, grant));
}

static void reply_unauthorized(struct httpd_req *r, const char *msg)
{
    httpd_add_header(r, "WWW-Authenticate", "Basic realm=\"pier\"");
    httpd_reply_error(r, 401, "unauthorized", 16, "%s", msg);
}

/* Blobs under these prefixes are an app's code (the pushed sources, the
 * build caches, the git repositories): reading them needs credentials
 * too. Slugs stay open: host agents fetch them without the key. */
static bool private_blob(const char *path)
{
    static const char *const prefixes[] = {"/caches/", "/sources/", "/repos/", NULL};
    for (const char *const *p = prefixes; *p; p++)
        if (strncmp(path, *p, strlen(*p)) == 0)
            return true;
    return false;
}

/* Whether the request may go on; if not, it has been answered (401 or
 * 403). writing: PUT or DELETE, which need credentials, as do reads of
 * private blobs (private_blob). */
static bool authorized(struct httpd_req *r, struct blobapi *api, bool writing)
{
    if (!api->key)
        return true;
    const char *auth = httpd_header(r, "Authorization");
    if (auth) {
        if (httpd_key_ok(r, api->key))
            return true;
        reply_unauthorized(r, "wrong cluster key in the Authorization header");
        return false;
    }
    const char *sig = httpd_query(r, "sig"), *exp = httpd_query(r, "expires");
    if (sig || exp) {
        const char *method = httpd_method(r), *path = httpd_path(r);
        int64_t now = (int64_t)time(NULL);
        if (signature_ok(api->key, r, now, NULL))
            return true;
        char *end = NULL;
        long long e = exp ? strtoll(exp, &end, 10) : 0;
        if (exp && *exp && end && !*end && e < now)
            httpd_reply_error(r, 403, "forbidden", 7, "the signed URL expired at %lld (now %lld)",
                              e, (long long)now);
        else
            httpd_reply_error(r, 403, "forbidden", 7, "the URL's signature is not valid for %s %s",
                              method, path);
        return false;
    }
    if (!writing && !private_blob(httpd_path(r)))
        return true;
    cleanup_buf struct buf msg = BUF_INIT;
    buf_printf(&msg,
               "%s %s needs the cluster key (Authorization: Basic or Bearer) or a signed URL "
               "(?expires=...&sig=...)",
               httpd_method(r), httpd_path(r));
    reply_unauthorized(r, msg.p);
    return false;
}

/* ---- PUT: streamed to a temporary file ---- */

struct put {
    struct blobfs_writer *w; /* NULL once an upload over the limit dropped it */
    char *path;
    char expect[BLOBFS_SHA_HEX + 1]; /* X-Content-SHA256, "" when none */
    struct pier_err err;
    bool failed;  /* a write failed: err says why, the rest is dropped */
    bool too_big; /* the body passed limit: nothing is kept, the rest is dropped */
    bool ended;   /* the whole body came */
    bool by_url;  /* the limit is the signed URL's, not the blobstore's */
    uint64_t limit;
    uint64_t received; /* bytes of the body taken in (written) */
    uint64_t dropped;
    int64_t start_ms;
};

/* 413, and the connection closed after it: a client that sends a body too
 * large for its limit does not get to send the next request on it. */
static void reply_too_big(struct httpd_req *r, uint64_t limit, bool by_url)
{
    httpd_add_header(r, "Connection", "close");
    httpd_reply_error(r, 413, "request_body_too_big", 8,
                      "the blob is larger than the limit of %llu bytes (%s): nothing stored",
                      (unsigned long long)limit,
                      by_url ? "the signed URL's max" : "the blobstore's --max-size");
}

static int put_data(void *ctx, const char *p, size_t n)
{
    struct put *u = ctx;
    if (!u->failed && !u->too_big && n > u->limit - u->received) {
        /* Nothing more goes to disk, and what went already is removed at
         * once rather than when the client is done. */
        u->too_big = true;
        log_warn("blobstore", "upload over its limit, nothing stored", "path=%s limit=%llu",
                 u->path, (unsigned long long)u->limit);
        blobfs_write_abort(u->w);
        u->w = NULL;
    }
    if (u->failed || u->too_big) {
        u->dropped += n;
        return u->dropped > DROP_LIMIT ? -1 : 0;
    }
    if (blobfs_write(u->w, p, n, &u->err) < 0) {
        log_error("blobstore", "upload failed", "path=%s reason=\"%s\"", u->path, u->err.msg);
        u->failed = true;
    }
    u->received += n;
    return 0;
}

static void put_end(struct httpd_req *r, void *ctx)
{
    struct put *u = ctx;
    u->ended = true;
    if (u->too_big) {
        reply_too_big(r, u->limit, u->by_url);
        return;
    }
    if (u->failed) {
        reply_fs_err(r, &u->err);
        return;
    }
    char sha[BLOBFS_SHA_HEX + 1];
    if (blobfs_write_commit(u->w, u->expect[0] ? u->expect : NULL, sha, &u->err) < 0) {
        log_warn("blobstore", "upload refused", "path=%s reason=\"%s\"", u->path, u->err.msg);
        reply_fs_err(r, &u->err);
        return;
    }
    uint64_t size = blobfs_written(u->w);
    log_info("blobstore", "stored", "path=%s size=%llu sha256=%s ms=%lld", u->path,
             (unsigned long long)size, sha, (long long)(clock_now_ms() - u->start_ms));
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "/%s", u->path);
    json_t *j = json_pack("{s:s,s:I,s:s}", "path", p.p, "size", (json_int_t)size, "sha256", sha);
    httpd_reply_json(r, 200, j);
}

static void put_done(void *ctx)
{
    struct put *u = ctx;
    if (!u->ended)
        log_warn("blobstore", "upload cut short, nothing stored", "path=%s received=%llu", u->path,
                 (unsigned long long)(u->received + u->dropped));
    blobfs_write_abort(u->w);
    free(u->path);
    free(u);
}

static const struct httpd_body_ops put_ops = {put_data, put_end, put_done};

/* What a PUT's signed URL allows beyond its path: a byte limit and "no
 * replacing". Nothing for one with the key in its Authorization header. */
static struct blobsig_grant put_grant(const struct httpd_req *r, const struct blobapi *api)
{
    struct blobsig_grant g = {0};
    /* authorized() has checked the URL, expiry included: checking again
     * "as of time 0" reads its options without racing that expiry. */
    if (api->key && !httpd_header(r, "Authorization") && httpd_query(r, "sig"))
        signature_ok(api->key, r, 0, &g);
    return g;
}

/* The request's Content-Length, or false when it has none (chunked). */
static bool content_length(const struct httpd_req *r, uint64_t *out)
{
    const char *cl = httpd_header(r, "Content-Length");
    if (!cl || !*cl || strspn(cl, "0123456789") != strlen(cl) || strlen(cl) > 19)
        return false;
    *out = strtoull(cl, NULL, 10);
    return true;
}

static void put_blob(struct httpd_req *r, void *ud)
{
    struct blobapi *api = ud;
    const char *path = blob_path(r, true);
    if (!path || !authorized(r, api, true))
        return;
    const char *expect = httpd_header(r, "X-Content-SHA256");
    if (expect && !blobfs_sha_ok(expect)) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "X-Content-SHA256 must be 64 hex digits, not \"%.80s\"", expect);
        return;
    }
    struct blobsig_grant g = put_grant(r, api);
    bool by_url = g.max_bytes > 0 && (uint64_t)g.max_bytes < api->max_size;
    uint64_t limit = by_url ? (uint64_t)g.max_bytes : api->max_size, declared;
    if (content_length(r, &declared) && declared > limit) {
        /* Refused before the body: at once for a client that waits for
         * "100 Continue" (curl -T does). */
        reply_too_big(r, limit, by_url);
        return;
    }
    struct pier_err err = {0};
    struct blobfs_writer *w = NULL;
    if (blobfs_write_begin(api->fs, path, g.once ? BLOBFS_NO_REPLACE : 0, &w, &err) < 0) {
        reply_fs_err(r, &err);
        return;
    }
    struct put *u = xcalloc(1, sizeof(*u));
    u->w = w;
    u->path = xstrdup(path);
    if (expect)
        snprintf(u->expect, sizeof(u->expect), "%s", expect);
    u->limit = limit;
    u->by_url = by_url;
    u->start_ms = clock_now_ms();
    httpd_body_stream(r, &put_ops, u);
}

/* ---- GET and HEAD: streamed, checked on the way ---- */

struct get {
    struct blobapi *api;
    struct blobfs_reader *rd;
};

/* Logs a corrupt blob and moves it aside. */
static void corrupt(struct blobapi *api, struct blobfs_reader *rd, const char *path,
                    const struct pier_err *why)
{
    log_error("blobstore", "corrupt blob, not served whole", "path=%s reason=\"%s\"", path,
              why->msg);
    struct pier_err err = {0};
    char *moved = NULL;
    if (blobfs_quarantine(api->fs, rd, &moved, &err) < 0)
        log_error("blobstore", "cannot move a corrupt blob aside", "path=%s reason=\"%s\"", path,
                  err.msg);
    else if (moved)
        log_error("blobstore", "corrupt blob moved aside", "path=%s to=%s", path, moved);
    else
        log_warn("blobstore", "corrupt blob already replaced or deleted, left alone", "path=%s",
                 path);
    free(moved);
}

static int get_next(void *ud, struct buf *out, int timeout_ms)
{
    (void)timeout_ms;
    struct get *g = ud;
    struct pier_err err = {0};
    int n = blobfs_read_next(g->rd, out, READ_CHUNK, &err);
    if (n > 0)
        return 1;
    if (n == 0)
        return 0;
    if (n == PIER_EPROTO)
        corrupt(g->api, g->rd, blobfs_read_path(g->rd), &err);
    else
        log_error("blobstore", "read failed, connection cut", "reason=\"%s\"", err.msg);
    return -1;
}

static void get_done(void *ud)
{
    struct get *g = ud;
    blobfs_read_close(g->rd);
    free(g);
}

static void get_blob(struct httpd_req *r, void *ud)
{
    struct blobapi *api = ud;
    const char *path = blob_path(r, false);
    if (!path || !authorized(r, api, false))
        return;
    struct pier_err err = {0};
    struct blobfs_reader *rd = NULL;
    if (blobfs_read_open(api->fs, path, &rd, &err) < 0) {
        reply_fs_err(r, &err);
        return;
    }
    const char *sha = blobfs_read_sha(rd);
    uint64_t size = blobfs_read_size(rd);
    if (size == 0 && strcmp(httpd_method(r), "GET") == 0) {
        /* No last byte to hold back: check before answering. */
        struct buf none = BUF_INIT;
        int rc = blobfs_read_next(rd, &none, READ_CHUNK, &err);
        buf_free(&none);
        if (rc < 0) {
            if (rc == PIER_EPROTO)
                corrupt(api, rd, path, &err);
            blobfs_read_close(rd);
            httpd_reply_error(r, 500, "unknown_error", 13, "%s", err.msg);
            return;
        }
    }
    if (sha) {
        char etag[BLOBFS_SHA_HEX + 3];
        snprintf(etag, sizeof(etag), "\"%s\"", sha);
        httpd_add_header(r, "ETag", etag);
        httpd_add_header(r, "X-Content-SHA256", sha);
    }
    struct get *g = xcalloc(1, sizeof(*g));
    g->api = api;
    g->rd = rd;
    log_debug("blobstore", "serving", "method=%s path=%s size=%llu", httpd_method(r), path,
              (unsigned long long)size);
    httpd_reply_stream_sized(r, 200, "application/octet-stream", size, get_next, get_done, g);
}

/* ---- DELETE ---- */

static void delete_blob(struct httpd_req *r, void *ud)
{
    struct blobapi *api = ud;
    const char *path = blob_path(r, true);
    if (!path || !authorized(r, api, true))
        return;
    struct pier_err err = {0};
    if (blobfs_delete(api->fs, path, &err) < 0) {
        reply_fs_err(r, &err);
        return;
    }
    log_info("blobstore", "deleted", "path=%s", path);
    cleanup_buf struct buf p = BUF_INIT;
    buf_printf(&p, "/%s", path);
    httpd_reply_json(r, 200, json_pack("{s:s}", "path", p.p));
}

static void status(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

void blobapi_routes(struct httpd *h, struct blobfs *fs, const char *key, uint64_t max_size)
{
    struct blobapi *api = xcalloc(1, sizeof(*api));
    api->fs = fs;
    api->key = key && *key ? xstrdup(key) : NULL;
    api->max_size = max_size;
    httpd_set_data(h, api, api_free);
    httpd_route(h, "GET", "/status", status, api, true);
    httpd_route(h, "GET", "/*", get_blob, api, true);
    httpd_route(h, "HEAD", "/*", get_blob, api, true);
    httpd_route(h, "DELETE", "/*", delete_blob, api, true);
    httpd_route_upload(h, "PUT", "/*", put_blob, api, true);
}
