#include "blobstore/blobstore.h"

#include <stdint.h>
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
/* The largest blob by default: slugs are at most 500 MB compressed, build
 * caches a bit more; a full disk is what the limit is against. */
#define DEFAULT_MAX_SIZE (2ULL << 30)

/* "2G", "512M", "64K", "1000" (bytes; K, M, G, T are powers of 1024, an
 * optional B after them). 0 on success, else -1. */
static int parse_size(const char *s, uint64_t *out)
{
    size_t digits = strspn(s, "0123456789");
    if (digits == 0 || digits > 15)
        return -1;
    uint64_t v = strtoull(s, NULL, 10);
    const char *unit = s + digits;
    int shift = 0;
    const char *units = "KMGT";
    const char *u = *unit ? strchr(units, *unit & ~0x20) : NULL;
    if (u) {
        shift = 10 * (int)(u - units + 1);
        unit++;
    }
    if ((*unit == 'B' || *unit == 'b') && shift)
        unit++;
    if (*unit || v == 0 || v > (UINT64_MAX >> 1 >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

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
    const char *max_size_flag = getenv("PIER_BLOBSTORE_MAX_SIZE");
    const struct daemon_opt opts[] = {
        {"dir", "DIR", "where blobs are kept (env PIER_BLOBSTORE_DIR); required", &dir},
        {"advertise", "HOST:PORT",
         "the address registered in discovery (env PIER_BLOBSTORE_ADVERTISE; default the "
         "listen address)",
         &advertise},
        {"max-size", "SIZE",
         "the largest blob a PUT may store, as 2G or 512M (env PIER_BLOBSTORE_MAX_SIZE; "
         "default 2G)",
         &max_size_flag},
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
    uint64_t max_size = DEFAULT_MAX_SIZE;
    if (max_size_flag && *max_size_flag && parse_size(max_size_flag, &max_size) < 0) {
        fprintf(stderr, "pierd blobstore: --max-size: \"%s\" is not a size (such as 2G or 512M)\n",
                max_size_flag);
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
    blobapi_routes(h, fs, f.key, max_size);
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
        log_info("blobstore", "listening", "addr=%s dir=%s store=%s max_size=%llu", addr, dir,
                 s ? f.store : "none", (unsigned long long)max_size);
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
