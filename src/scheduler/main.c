/* scheduler_main: flags, the status API, the election and the loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/daemon.h"
#include "lib/httpd.h"
#include "lib/leader.h"
#include "lib/log.h"
#include "scheduler/schedloop.h"
#include "scheduler/scheduler.h"

#define DEFAULT_TTL_S 10

/* What the handlers reach: the scheduler is started after the server
 * (the election needs the bound address), so it is set later, atomically. */
struct api {
    struct schedloop *sc;
};

static void get_status(struct httpd_req *r, void *ud)
{
    struct api *a = ud;
    struct schedloop *sc = __atomic_load_n(&a->sc, __ATOMIC_ACQUIRE);
    httpd_reply_json(r, 200, sc ? schedloop_status(sc) : json_pack("{s:b}", "leader", false));
}

/* A whole number in [lo, hi], or -1. */
static long long number(const char *s, long long lo, long long hi)
{
    char *end = NULL;
    long long v = s ? strtoll(s, &end, 10) : -1;
    return s && *s && end && !*end && v >= lo && v <= hi ? v : -1;
}

struct flags {
    const char *ttl, *backoff, *always_lead;
};

static int parse(int argc, char **argv, struct daemon_flags *f, struct flags *x,
                 struct schedloop_opts *o, long long *ttl)
{
    const struct daemon_opt opts[] = {
        {"ttl", "S", "leader lease: another scheduler takes over within S seconds (default 10)",
         &x->ttl},
        {"restart-backoff-ms", "MS",
         "first restart delay of a crashed job (default 1000; doubles, up to 60x); for tests",
         &x->backoff},
        {"always-lead", "yes", "act without being elected (for tests: schedulers race for real)",
         &x->always_lead},
        {NULL, NULL, NULL, NULL},
    };
    const struct daemon_spec spec = {
        .sub = "scheduler",
        .summary = "The service scheduler: keeps every formation at its counts, replaces "
                   "crashed jobs with backoff, moves jobs off lost hosts.",
        .default_listen = "127.0.0.1:1300",
        .opts = opts,
        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE | DAEMON_USES_KEY,
    };
    struct pier_err err = {0};
    int rc = daemon_parse(&spec, argc, argv, f, &err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "pierd scheduler: %s\n", err.msg);
        return rc < 0 ? 2 : 0;
    }
    if (!f->store) {
        fprintf(stderr, "pierd scheduler: needs the store: --store URL (or PIER_STORE)\n");
        return 2;
    }
    *ttl = x->ttl ? number(x->ttl, 1, 3600) : DEFAULT_TTL_S;
    long long backoff = x->backoff ? number(x->backoff, 1, 60000) : 1000;
    if (*ttl < 0 || backoff < 0 ||
        (x->always_lead && strcmp(x->always_lead, "yes") != 0 &&
         strcmp(x->always_lead, "true") != 0)) {
        fprintf(stderr, "pierd scheduler: --ttl takes 1-3600 seconds, --restart-backoff-ms "
                        "1-60000, --always-lead yes\n");
        return 2;
    }
    *o = (struct schedloop_opts){
        .reconcile = {.restart = {.base_ms = backoff,
                                  .cap_ms = backoff * 60 < 60000 ? backoff * 60 : 60000,
                                  .max = RESTART_MAX},
                      .host_grace_ms = 2 * *ttl * 1000,
                      .gc = {.age_ms = 3600 * 1000, .keep = 20, .every_ms = 60 * 1000}},
        .always_lead = x->always_lead != NULL,
    };
    return -1;
}

int scheduler_main(int argc, char **argv)
{
    struct daemon_flags f;
    struct flags x = {0};
    struct schedloop_opts o;
    long long ttl = 0;
    int rc = parse(argc, argv, &f, &x, &o, &ttl);
    if (rc >= 0)
        return rc;
    struct pier_err err = {0};
    struct store *s = NULL;
    if (store_open(f.store, &s, &err) < 0) {
        fprintf(stderr, "pierd scheduler: %s\n", err.msg);
        return 2;
    }
    struct schedloop *sc = NULL;
    struct leader *l = NULL;
    const struct httpd_options ho = {
        .listen = f.listen, .comp = "scheduler", .key = f.key, .errors = HTTPD_ERRORS_FLYNN};
    struct httpd *h = httpd_new(&ho);
    struct api api = {0};
    httpd_route(h, "GET", "/status", get_status, &api, false);
    rc = httpd_start(h, &err);
    char *addr = rc == 0 ? httpd_reach_addr(h) : NULL;
    if (rc == 0 && !o.always_lead)
        rc = leader_start(s, "scheduler", addr, ttl, &l, &err);
    if (rc == 0)
        rc = schedloop_start(s, l, &o, &sc, &err);
    if (rc == 0)
        __atomic_store_n(&api.sc, sc, __ATOMIC_RELEASE);
    if (rc < 0) {
        fprintf(stderr, "pierd scheduler: %s\n", err.msg);
        httpd_free(h);
        leader_stop(l);
        store_close(s);
        free(addr);
        return 1;
    }
    log_info("scheduler", "listening", "addr=%s store=%s ttl=%lld", addr, f.store, ttl);
    int sig = daemon_wait();
    log_info("scheduler", "stopping", "signal=%d", sig);
    httpd_free(h);
    schedloop_stop(sc);
    leader_stop(l);
    store_close(s);
    free(addr);
    return 0;
}
