#include "store/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "lib/cleanup.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "store/mvcc.h"

/* Answers an engine error as etcd's gateway does. */
static void reply_mvcc_err(struct httpd_req *r, const struct pier_err *err)
{
    int status = 500;
    int grpc = mvcc_grpc_code(err->code, &status);
    httpd_reply_error(r, status, err_code_name(err->code), grpc, "%s", err->msg);
}

typedef int (*mvcc_call)(struct mvcc *m, const json_t *req, json_t **resp, struct pier_err *err);

struct unary {
    struct mvcc *m;
    mvcc_call call;
    bool wrap_result; /* streaming endpoints of the gateway wrap in {"result":...} */
};

static void unary_handler(struct httpd_req *r, void *ud)
{
    struct unary *u = ud;
    cleanup_json json_t *req = NULL;
    if (httpd_body_json(r, &req) < 0)
        return;
    struct pier_err err = {0};
    json_t *resp = NULL;
    if (u->call(u->m, req, &resp, &err) < 0) {
        reply_mvcc_err(r, &err);
        return;
    }
    if (u->wrap_result)
        resp = json_pack("{s:o}", "result", resp); /* steals resp */
    httpd_reply_json(r, 200, resp);
}

struct watch_stream {
    struct mvcc_watch *w;
    json_t *created; /* sent first, then NULL */
};

static void write_result(struct buf *out, json_t *resp)
{
    json_t *wrapped = json_pack("{s:o}", "result", resp); /* steals resp */
    jsonx_dump(out, wrapped);
    buf_putc(out, '\n');
    json_decref(wrapped);
}

static int watch_next(void *ud, struct buf *out, int timeout_ms)
{
    struct watch_stream *ws = ud;
    if (ws->created) {
        write_result(out, ws->created);
        ws->created = NULL;
        return 1;
    }
    json_t *resp = NULL;
    int rc = mvcc_watch_next(ws->w, timeout_ms, &resp);
    if (resp)
        write_result(out, resp);
    if (rc == -ECANCELED)
        return 0;
    return rc < 0 ? rc : 1;
}

static void watch_done(void *ud)
{
    struct watch_stream *ws = ud;
    json_decref(ws->created);
    mvcc_watch_free(ws->w);
    free(ws);
}

static void watch_handler(struct httpd_req *r, void *ud)
{
    struct mvcc *m = ud;
    cleanup_json json_t *req = NULL;
    if (httpd_body_json(r, &req) < 0)
        return;
    json_t *create = json_object_get(req, "create_request"); /* borrowed */
    if (!json_is_object(create)) {
        httpd_reply_error(r, 400, "validation_error", 3,
                          "a watch request needs a \"create_request\" object (cancel and "
                          "progress requests are not supported over HTTP)");
        return;
    }
    struct pier_err err = {0};
    struct watch_stream *ws = xcalloc(1, sizeof(*ws));
    if (mvcc_watch_create(m, create, &ws->w, &ws->created, &err) < 0) {
        free(ws);
        reply_mvcc_err(r, &err);
        return;
    }
    httpd_reply_stream(r, 200, "application/json", watch_next, watch_done, ws);
}

static void leases_handler(struct httpd_req *r, void *ud)
{
    struct pier_err err = {0};
    json_t *resp = NULL;
    if (mvcc_lease_leases(ud, &resp, &err) < 0) {
        reply_mvcc_err(r, &err);
        return;
    }
    httpd_reply_json(r, 200, resp);
}

static void health_handler(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply_json(r, 200, json_pack("{s:s}", "health", "true"));
}

static void version_handler(struct httpd_req *r, void *ud)
{
    (void)ud;
    /* etcd tools ask for this; we speak the 3.4 gateway subset. */
    httpd_reply_json(r, 200,
                     json_pack("{s:s,s:s,s:s}", "etcdserver", "3.4.0", "etcdcluster", "3.4.0",
                               "pierstore", PIER_VERSION));
}

int store_server_main(int argc, char **argv)
{
    const char *history = NULL;
    const struct daemon_opt opts[] = {
        {"history", "REVISIONS",
         "keep this many revisions of history, compact older ones (default 100000; 0 keeps all)",
         &history},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "store",
        .summary = "The embedded cluster store: etcd's v3 JSON gateway on SQLite.",
        .default_listen = "127.0.0.1:7001",
        .opts = opts,
        /* No --key: the store has no authentication yet; keep its port on
         * loopback or a private network. No --store: it is the store. */
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_DATA_DIR,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd store: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f.data_dir) {
        fprintf(stderr, "pierd store: needs a data directory: --data-dir DIR (or PIER_DATA_DIR)\n");
        return 2;
    }
    /* Progress every 5 s on watches that ask for it: a client that hears
     * nothing for a few intervals knows its connection is dead even when
     * no FIN ever came (a host that vanished, a cut cable). */
    struct mvcc_options mo = {.auto_compact_revisions = 100000, .watch_progress_interval_ms = 5000};
    if (history) {
        char *end;
        long long n = strtoll(history, &end, 10);
        if (*end || n < 0) {
            fprintf(stderr, "pierd store: --history must be a number of revisions, not \"%s\"\n",
                    history);
            return 2;
        }
        mo.auto_compact_revisions = n;
    }

    struct mvcc *m = NULL;
    if (mvcc_open(f.data_dir, &mo, &m, &err) < 0) {
        fprintf(stderr, "pierd store: %s\n", err.msg);
        return 1;
    }
    struct unary calls[] = {
        {m, mvcc_range, false},
        {m, mvcc_put, false},
        {m, mvcc_delete_range, false},
        {m, mvcc_txn, false},
        {m, mvcc_compact, false},
        {m, mvcc_lease_grant, false},
        {m, mvcc_lease_revoke, false},
        {m, mvcc_lease_keepalive, true},
        {m, mvcc_lease_timetolive, false},
    };
    const char *paths[] = {
        "/v3/kv/range",     "/v3/kv/put",          "/v3/kv/deleterange",
        "/v3/kv/txn",       "/v3/kv/compaction",   "/v3/lease/grant",
        "/v3/lease/revoke", "/v3/lease/keepalive", "/v3/lease/timetolive",
    };
    const struct httpd_options ho = {.listen = f.listen,
                                     .comp = "store",
                                     .max_body = 2 * 1024 * 1024,
                                     .errors = HTTPD_ERRORS_ETCD};
    struct httpd *h = httpd_new(&ho);
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        httpd_route(h, "POST", paths[i], unary_handler, &calls[i], true);
    /* etcd 3.4 also answers the older lease paths under /v3/kv. */
    httpd_route(h, "POST", "/v3/kv/lease/revoke", unary_handler, &calls[6], true);
    httpd_route(h, "POST", "/v3/kv/lease/timetolive", unary_handler, &calls[8], true);
    httpd_route(h, "POST", "/v3/lease/leases", leases_handler, m, true);
    httpd_route(h, "POST", "/v3/kv/lease/leases", leases_handler, m, true);
    httpd_route(h, "POST", "/v3/watch", watch_handler, m, true);
    httpd_route(h, "GET", "/health", health_handler, NULL, true);
    httpd_route(h, "GET", "/version", version_handler, NULL, true);
    if (httpd_start(h, &err) < 0) {
        fprintf(stderr, "pierd store: %s\n", err.msg);
        httpd_free(h);
        mvcc_close(m);
        return 1;
    }
    log_info("store", "listening", "addr=%s port=%d data_dir=%s revision=%lld", f.listen,
             httpd_port(h), f.data_dir, (long long)mvcc_revision(m));
    int sig = daemon_wait();
    log_info("store", "stopping", "signal=%d", sig);
    httpd_free(h);
    mvcc_close(m);
    return 0;
}
