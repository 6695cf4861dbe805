#include "blobstore/blobstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blobstore/blobapi.h"
#include "blobstore/blobfs.h"
#include "lib/buf.h"
#include "lib/daemon.h"
#include "lib/discover.h"
#include "lib/httpd.h"
#include "lib/log.h"

/* How long a stopping blobstore lets running uploads and downloads finish
 * (Heroku's shutdown grace). */
#define DRAIN_MS 30000

/* Registers addr as the discovery service "blobstore" with its URL in
 * meta.url. */
static int announce(struct store *s, const char *addr, struct discover_reg **reg,
                    struct pier_err *err)
{
    struct buf url = BUF_INIT;
    buf_printf(&url, "http://%s", addr);
    json_t *meta = json_pack("{s:s}", "url", url.p);
    const struct discover_reg_opts ro = {.meta = meta};
    int rc = discover_register(s, "blobstore", addr, &ro, reg, err);
    json_decref(meta);
    buf_free(&url);
    return rc;
}

/* What runs between a successful start and the signal: serves until
 * SIGTERM/SIGINT, then leaves discovery, lets requests finish, stops. */
static void serve(struct httpd *h, struct discover_reg *reg)
{
    int sig = daemon_wait();
    log_info("blobstore", "stopping", "signal=%d", sig);
    discover_unregister(reg);
    if (!httpd_drain(h, DRAIN_MS))
        log_warn("blobstore", "requests still running are cut", "after_ms=%d", DRAIN_MS);
}

int blobstore_main(int argc, char **argv)
{
    const char *dir = getenv("PIER_BLOBSTORE_DIR");
    const char *advertise = getenv("PIER_BLOBSTORE_ADVERTISE");
    const struct daemon_opt opts[] = {
        {"dir", "DIR", "where blobs are kept (env PIER_BLOBSTORE_DIR); required", &dir},
        {"advertise", "HOST:PORT",
         "the address registered in discovery (env PIER_BLOBSTORE_ADVERTISE; default the "
         "listen address)",
         &advertise},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "blobstore",
        .summary = "Blobs (slugs, sources, build caches) over HTTP: PUT, GET, HEAD, DELETE of "
                   "/<path>, streamed, stored atomically and checked by SHA-256.",
        .default_listen = "127.0.0.1:1600",
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd blobstore: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!dir || !*dir) {
        fprintf(stderr, "pierd blobstore: needs a directory: --dir DIR (or PIER_BLOBSTORE_DIR)\n");
        return 2;
    }
    struct blobfs *fs = NULL;
    if (blobfs_open(dir, &fs, &err) < 0) {
        fprintf(stderr, "pierd blobstore: %s\n", err.msg);
        return 1;
    }
    struct store *s = NULL;
    if (f.store && *f.store && store_open(f.store, &s, &err) < 0) {
        fprintf(stderr, "pierd blobstore: %s\n", err.msg);
        blobfs_close(fs);
        return 2;
    }
    const struct httpd_options ho = {
        .listen = f.listen, .comp = "blobstore", .key = NULL, .errors = HTTPD_ERRORS_FLYNN};
    struct httpd *h = httpd_new(&ho);
    blobapi_routes(h, fs, f.key);
    struct discover_reg *reg = NULL;
    char *addr = NULL;
    rc = httpd_start(h, &err);
    if (rc == 0) {
        addr = advertise && *advertise ? xstrdup(advertise) : httpd_reach_addr(h);
        if (s)
            rc = announce(s, addr, &reg, &err);
    }
    if (rc < 0) {
        fprintf(stderr, "pierd blobstore: %s\n", err.msg);
    } else {
        log_info("blobstore", "listening", "addr=%s dir=%s store=%s", addr, dir,
                 s ? f.store : "none");
        if (!f.key || !*f.key)
            log_warn("blobstore", "no --key: anyone who reaches it may write and delete", "addr=%s",
                     addr);
        serve(h, reg);
    }
    httpd_free(h);
    store_close(s);
    blobfs_close(fs);
    free(addr);
    return rc < 0 ? 1 : 0;
}
