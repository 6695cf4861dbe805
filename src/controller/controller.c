#include "controller/controller.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/ctl.h"
#include "controller/deployer.h"
#include "lib/buf.h"
#include "lib/daemon.h"
#include "lib/log.h"

/* At SIGTERM, how long requests in progress (streams included) may run on. */
#define DRAIN_MS 10000

struct drain {
    struct httpd *h;
    bool ok;
};

static void *drain_thread(void *arg)
{
    struct drain *d = arg;
    d->ok = httpd_drain(d->h, DRAIN_MS);
    return NULL;
}

static void ping(struct httpd_req *r, void *ud)
{
    (void)ud;
    httpd_reply(r, 200, "text/plain", "", 0);
}

int controller_main(int argc, char **argv)
{
    const char *domain = NULL;
    const struct daemon_opt opts[] = {
        {"domain", "DOMAIN", "the cluster domain: apps get <app>.DOMAIN routes", &domain},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "controller",
        .summary = "The cluster's API (Flynn-compatible): apps, releases, formations, jobs, "
                   "deployments, events, routes.",
        .default_listen = "127.0.0.1:1200",
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct daemon_flags f;
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, &f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd controller: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f.store) {
        fprintf(stderr, "pierd controller: needs the store: --store URL (or PIER_STORE)\n");
        return 2;
    }
    if (!f.key || !*f.key) {
        fprintf(stderr, "pierd controller: needs the cluster key: --key KEY (or PIER_KEY)\n");
        return 2;
    }
    struct ctl c = {.key = f.key, .domain = domain, .store_url = f.store};
    if (store_open(f.store, &c.s, &err) < 0) {
        fprintf(stderr, "pierd controller: %s\n", err.msg);
        return 2;
    }
    const struct httpd_options ho = {
        .listen = f.listen, .comp = "controller", .key = f.key, .errors = HTTPD_ERRORS_FLYNN};
    struct httpd *h = httpd_new(&ho);
    httpd_route(h, "GET", "/ping", ping, &c, true);
    ctl_apps_routes(h, &c);
    ctl_artifacts_routes(h, &c);
    ctl_releases_routes(h, &c);
    ctl_formations_routes(h, &c);
    ctl_jobs_routes(h, &c);
    ctl_routes_routes(h, &c);
    ctl_keys_routes(h, &c);
    ctl_events_routes(h, &c);
    ctl_deployments_routes(h, &c);
    ctl_cluster_routes(h, &c);
    if (httpd_start(h, &err) < 0) {
        fprintf(stderr, "pierd controller: %s\n", err.msg);
        httpd_free(h);
        store_close(c.s);
        return 1;
    }
    c.addr = httpd_reach_addr(h);
    struct ctl_worker *recorder = NULL;
    struct ctl_deployer *deployer = NULL;
    rc = leader_start(c.s, "controller", c.addr, 10, &c.leader, &err);
    if (rc == 0)
        rc = ctl_recorder_start(&c, &recorder, &err);
    if (rc == 0)
        rc = ctl_deployer_start(&c, &deployer, &err);
    if (rc < 0) {
        fprintf(stderr, "pierd controller: %s\n", err.msg);
        ctl_worker_stop(recorder);
        leader_stop(c.leader);
        httpd_free(h);
        store_close(c.s);
        free(c.addr);
        return 1;
    }
    log_info("controller", "listening", "addr=%s store=%s", c.addr, f.store);
    int sig = daemon_wait();
    log_info("controller", "stopping", "signal=%d drain_ms=%d", sig, DRAIN_MS);
    /* The server stops taking connections and lets the requests in
     * progress finish (a thread: streams may hold it up to DRAIN_MS) while
     * the deployer and the recorder put their work down and the
     * leadership goes: leader_stop revokes the lease, so the next
     * controller (the new job of a deploy of the controller itself) leads
     * at once, not a TTL later. No handler uses the leadership. */
    struct drain d = {.h = h};
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, drain_thread, &d) == 0;
    ctl_deployer_stop(deployer);
    ctl_worker_stop(recorder);
    leader_stop(c.leader);
    c.leader = NULL;
    log_info("controller", "leadership released", "addr=%s", c.addr);
    if (threaded)
        pthread_join(t, NULL);
    else
        drain_thread(&d);
    if (!d.ok)
        log_warn("controller", "requests still running at the drain timeout, cut", "after_ms=%d",
                 DRAIN_MS);
    httpd_free(h);
    store_close(c.s);
    free(c.addr);
    log_info("controller", "stopped", "signal=%d", sig);
    return 0;
}
