/* pierd router: flags into a struct rconfig, the sync threads feeding the
 * workers tables, the admin API, and a graceful stop on SIGTERM
 * (docs/router.md). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/log.h"
#include "lib/store.h"
#include "router/router.h"
#include "router/router_main.h"
#include "router/sync.h"
#include "router/table.h"
#include "router/tls.h"

struct admin {
    struct router *router;
    struct rsync *sync;
};

/* GET /status: the table's routes and backends, the workers' counters. */
static void status_get(struct httpd_req *req, void *ud)
{
    struct admin *a = ud;
    json_t *j = router_status(a->router);
    struct rtable *t = rsync_table(a->sync);
    if (t) {
        json_t *tj = rtable_json(t);
        json_object_update(j, tj);
        json_decref(tj);
        rtable_unref(t);
    }
    httpd_reply_json(req, 200, j);
}

/* The sync's tables go to the router once it runs (the sync keeps the
 * latest, which rsync_republish hands on then). */
static _Atomic(struct router *) running;

static void publish(void *ud, struct rtable *t)
{
    (void)ud;
    struct router *r = atomic_load(&running);
    if (r)
        router_publish(r, t);
    else
        rtable_unref(t);
}

/* Raises the open-file limit to its hard limit: every client and backend
 * connection is a descriptor, and running out would fail connects to
 * healthy backends. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_warn("router", "cannot raise the open-file limit", "error=\"%s\"", strerror(errno));
    }
}

/* Parses an integer flag value in [min, max]. */
static int int_flag(const char *name, const char *v, long min, long max, int *out,
                    struct pier_err *err)
{
    if (!v)
        return 0;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < min || n > max)
        return err_set(err, PIER_EINVAL, "--%s: \"%s\" is not a whole number in %ld-%ld", name, v,
                       min, max);
    *out = (int)n;
    return 0;
}

/* Splits a comma-separated list of addresses ("off" or "": none). */
static char **addr_list(const char *v, size_t *n)
{
    *n = 0;
    if (!v || !*v || strcmp(v, "off") == 0)
        return NULL;
    char *copy = xstrdup(v);
    char **out = NULL;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        out = xrealloc(out, (*n + 1) * sizeof(*out));
        out[(*n)++] = xstrdup(tok);
    }
    free(copy);
    return out;
}

static void addr_list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The sticky-cookie key: derived from the cluster key, so that every router
 * of a cluster accepts every other's cookies; random without one. */
static void sticky_key(const char *cluster_key, uint8_t out[STICKY_KEY_LEN])
{
    if (cluster_key && *cluster_key) {
        static const char label[] = "pier router sticky cookie v1";
        unsigned len = STICKY_KEY_LEN;
        HMAC(EVP_sha256(), cluster_key, (int)strlen(cluster_key), (const uint8_t *)label,
             sizeof(label) - 1, out, &len);
        return;
    }
    if (RAND_bytes(out, STICKY_KEY_LEN) != 1)
        abort();
}

static int access_log_open(const char *v, struct pier_err *err)
{
    if (!v || strcmp(v, "-") == 0)
        return dup(STDOUT_FILENO);
    if (strcmp(v, "off") == 0)
        return -1;
    int fd = open(v, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(err, PIER_EINVAL, "--access-log %s: %s", v, strerror(errno));
    return fd;
}

int router_main(int argc, char **argv)
{
    const char *http = "0.0.0.0:80", *https = NULL, *tls_cert = NULL, *tls_key = NULL;
    const char *tcp_ip = "0.0.0.0", *workers = NULL, *access_log = NULL;
    const char *connect_to = NULL, *header_to = NULL, *backend_to = NULL, *idle_to = NULL;
    const char *shutdown_to = NULL, *max_header = NULL, *max_conns = NULL;
    const struct daemon_opt opts[] = {
        {"http", "ADDR[,ADDR]", "plain HTTP listeners, or off (default 0.0.0.0:80)", &http},
        {"https", "ADDR[,ADDR]", "TLS listeners (default off)", &https},
        {"tls-cert", "FILE", "the default certificate (PEM) for --https", &tls_cert},
        {"tls-key", "FILE", "its private key (PEM)", &tls_key},
        {"tcp-ip", "IP", "where tcp routes' ports listen (default 0.0.0.0)", &tcp_ip},
        {"workers", "N", "event loops, one thread each (default: the number of cores)", &workers},
        {"connect-timeout-ms", "MS", "connecting to a backend (default 5000)", &connect_to},
        {"header-timeout-ms", "MS", "a request head must arrive within (default 10000)",
         &header_to},
        {"backend-timeout-ms", "MS", "request sent to first response byte (default 30000)",
         &backend_to},
        {"idle-timeout-ms", "MS", "no bytes moving on a connection (default 55000)", &idle_to},
        {"shutdown-timeout-ms", "MS", "SIGTERM waits this long for in-flight requests (30000)",
         &shutdown_to},
        {"max-header-bytes", "N", "largest request head (default 32768)", &max_header},
        {"max-conns", "N", "client connections open at once (default 20000)", &max_conns},
        {"access-log", "PATH", "- (stdout, the default), off, or a file to append to", &access_log},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "router",
        .summary = "The HTTP(S) and TCP router: routes from the store, backends from discovery.",
        .default_listen = "127.0.0.1:1400",
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd router: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f.store) {
        fprintf(stderr, "pierd router: needs the store: --store URL (or PIER_STORE)\n");
        return 2;
    }

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    struct rconfig cfg = {
        .tcp_ip = tcp_ip,
        .workers = cores > 0 ? (int)(cores < 64 ? cores : 64) : 1,
        .connect_timeout_ms = 5000,
        .header_timeout_ms = 10000,
        .backend_timeout_ms = 30000,
        .idle_timeout_ms = 55000,
        .shutdown_timeout_ms = 30000,
        .max_header_bytes = 32768,
        .max_conns = 20000,
    };
    int max_header_bytes = (int)cfg.max_header_bytes;
    if (int_flag("workers", workers, 1, 64, &cfg.workers, &err) < 0 ||
        int_flag("connect-timeout-ms", connect_to, 1, INT_MAX, &cfg.connect_timeout_ms, &err) < 0 ||
        int_flag("header-timeout-ms", header_to, 1, INT_MAX, &cfg.header_timeout_ms, &err) < 0 ||
        int_flag("backend-timeout-ms", backend_to, 1, INT_MAX, &cfg.backend_timeout_ms, &err) < 0 ||
        int_flag("idle-timeout-ms", idle_to, 1, INT_MAX, &cfg.idle_timeout_ms, &err) < 0 ||
        int_flag("shutdown-timeout-ms", shutdown_to, 0, INT_MAX, &cfg.shutdown_timeout_ms, &err) <
            0 ||
        int_flag("max-header-bytes", max_header, 1024, 1024 * 1024, &max_header_bytes, &err) < 0 ||
        int_flag("max-conns", max_conns, 1, 10000000, &cfg.max_conns, &err) < 0) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        return 2;
    }
    cfg.max_header_bytes = (size_t)max_header_bytes;
    if (!tls_cert != !tls_key) {
        fprintf(stderr, "pierd router: --tls-cert and --tls-key go together\n");
        return 2;
    }
    cfg.http = addr_list(http, &cfg.n_http);
    cfg.https = addr_list(https, &cfg.n_https);
    sticky_key(f.key, cfg.sticky_key);

    int status = 1;
    SSL_CTX *tls = NULL;
    struct store *s = NULL;
    struct rtable_builder *b = NULL;
    struct router *router = NULL;
    struct rsync *sync = NULL;
    struct httpd *h = NULL;
    cfg.access_log_fd = access_log_open(access_log, &err);
    if (cfg.access_log_fd < -1) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if (cfg.n_https) {
        if (tls_cert)
            tls = tls_ctx_from_files(tls_cert, tls_key, &err);
        else {
            log_warn("router", "no --tls-cert: serving https with a self-signed certificate",
                     "https=%s", https);
            tls = tls_ctx_self_signed("localhost", &err);
        }
        if (!tls) {
            fprintf(stderr, "pierd router: %s\n", err.msg);
            status = 2;
            goto out;
        }
        cfg.default_tls = tls;
    }
    if (store_open(f.store, &s, &err) < 0) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        status = 2;
        goto out;
    }
    /* The routes first, so that the router never answers 404 for want of
     * having read them. */
    b = rtable_builder_new(tls_ctx_make, tls_ctx_free);
    if (rsync_start(s, b, publish, NULL, &sync, &err) < 0) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        goto out;
    }
    if (rsync_wait_ready(sync, 10000) < 0)
        log_warn("router", "no routes read from the store yet; answering 404 until then",
                 "store=%s", f.store);
    raise_nofile();
    rc = router_start(&cfg, &router, &err);
    if (rc < 0) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        status = rc == PIER_EINVAL ? 2 : 1; /* a bad address, or one that cannot be bound */
        goto out;
    }
    atomic_store(&running, router);
    rsync_republish(sync);
    struct admin admin = {.router = router, .sync = sync};
    const struct httpd_options ho = {
        .listen = f.listen, .comp = "router", .key = f.key, .errors = HTTPD_ERRORS_FLYNN};
    h = httpd_new(&ho);
    httpd_route(h, "GET", "/status", status_get, &admin, false);
    if (httpd_start(h, &err) < 0) {
        fprintf(stderr, "pierd router: %s\n", err.msg);
        goto out;
    }
    log_info("router", "listening", "http=%s https=%s admin=%s admin_port=%d workers=%d",
             cfg.n_http ? http : "off", cfg.n_https ? https : "off", f.listen, httpd_port(h),
             cfg.workers);
    int sig = daemon_wait();
    log_info("router", "stopping", "signal=%d shutdown_timeout_ms=%d", sig,
             cfg.shutdown_timeout_ms);
    status = 0;
out:
    /* Stop accepting first; then the admin API and the sync (which call
     * into the router) go, while the workers finish their requests. */
    if (router)
        router_drain(router);
    httpd_free(h);
    if (sync)
        rsync_stop(sync);
    if (router)
        router_stop(router);
    if (b)
        rtable_builder_free(b);
    if (s)
        store_close(s);
    if (tls)
        SSL_CTX_free(tls);
    if (cfg.access_log_fd >= 0)
        close(cfg.access_log_fd);
    addr_list_free(cfg.http, cfg.n_http);
    addr_list_free(cfg.https, cfg.n_https);
    return status;
}
