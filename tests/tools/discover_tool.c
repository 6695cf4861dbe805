/* discover_tool: drives the discovery library for end-to-end tests.
 *
 *   discover_tool register SERVICE ADDR TTL   registers, prints "registered
 *                                             <id>", stays until SIGTERM
 *                                             or SIGINT (then deregisters)
 *   discover_tool watch SERVICE               prints one JSON line per event
 *                                             ({"kind","id","addr"}) until
 *                                             SIGTERM
 * The store is $PIER_STORE. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/discover.h"

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int do_register(struct store *s, const char *service, const char *addr, long ttl)
{
    struct discover_reg_opts o = {.ttl_s = ttl};
    struct discover_reg *r = NULL;
    struct pier_err err = {0};
    if (discover_register(s, service, addr, &o, &r, &err) < 0) {
        fprintf(stderr, "discover_tool: %s\n", err.msg);
        return 1;
    }
    printf("registered %s\n", discover_reg_id(r));
    fflush(stdout);
    /* SIGTERM is blocked in every thread (main blocked it before the
     * library started any), so sigwait here is sure to take it. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig;
    sigwait(&set, &sig);
    discover_unregister(r);
    return 0;
}

static int do_watch(struct store *s, const char *service)
{
    struct discover_watch *w = NULL;
    struct pier_err err = {0};
    if (discover_watch_open(s, service, &w, &err) < 0) {
        fprintf(stderr, "discover_tool: %s\n", err.msg);
        return 1;
    }
    while (!stop) {
        struct discover_event *e = NULL;
        int rc = discover_watch_next(w, 200, &e, &err);
        if (rc == PIER_ETIMEOUT)
            continue;
        if (rc < 0) {
            fprintf(stderr, "discover_tool: %s\n", err.msg);
            continue;
        }
        printf("{\"kind\":\"%s\",\"id\":\"%s\",\"addr\":\"%s\"}\n",
               discover_event_kind_name(e->kind), e->inst.id ? e->inst.id : "",
               e->inst.addr ? e->inst.addr : "");
        fflush(stdout);
        discover_event_free(e);
    }
    discover_watch_close(w);
    return 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct store *s = NULL;
    struct pier_err err = {0};
    if (store_open_env(&s, &err) < 0) {
        fprintf(stderr, "discover_tool: %s\n", err.msg);
        return 2;
    }
    int rc = 2;
    if (argc == 5 && strcmp(argv[1], "register") == 0) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        rc = do_register(s, argv[2], argv[3], atol(argv[4]));
    } else if (argc == 3 && strcmp(argv[1], "watch") == 0)
        rc = do_watch(s, argv[2]);
    else
        fprintf(stderr, "usage: discover_tool register SERVICE ADDR TTL | watch SERVICE\n");
    store_close(s);
    return rc;
}
