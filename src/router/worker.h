/* worker: what the router's modules share about one worker (one thread,
 * one libuv loop). proxy.c owns the struct and the HTTP side; tcp.c and
 * splice.c keep their own state behind the pointers below. Everything
 * here is touched by the worker's thread only, unless marked. */
#ifndef PIER_ROUTER_WORKER_H
#define PIER_ROUTER_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "router/router.h"
#include "router/table.h"

/* Counters shared by all workers (relaxed atomics): the connection gauges
 * (client_conns enforces --max-conns, so it stays exact and global) and
 * what tcp.c and splice.c count. router_status adds struct rwstats of
 * every worker to them. */
struct rstats {
    atomic_ullong requests, responses[5]; /* responses[0] is 1xx .. [4] 5xx */
    atomic_ullong backend_errors, retries, tcp_connections, bad_requests, timeouts;
    atomic_int client_conns, backend_conns, tunnels, idle_backend;
};

/* One worker's share of the HTTP proxy's counters, counted per request:
 * written by the worker's thread only (a relaxed load and store, no locked
 * add), read by router_status from any thread. Cache-line aligned, so no
 * two workers write the same line. The gauges go up and down in the same
 * worker; wrapping arithmetic makes their sum right. */
struct rwstats {
    _Alignas(64) atomic_ullong requests;
    atomic_ullong responses[5];
    atomic_ullong backend_errors, retries, bad_requests, timeouts;
    atomic_ullong backend_conns, idle_backend; /* gauges */
};

struct router {
    struct rconfig cfg;
    struct rstats stats;
    struct rworker *workers;
    int n_workers;
};

struct rsplice;

struct rworker {
    struct router *router;
    int index;
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wake;    /* a new table, or stop */
    pthread_mutex_t mu; /* guards pending and stop (any thread) */
    struct rtable *pending;
    bool stop;
    struct rtable *table;    /* the current table (a reference); never NULL once running */
    uint32_t rng;            /* xorshift state for rtable_pick */
    bool stopping;           /* shutdown started: no new connections */
    void *http;              /* proxy.c */
    void *tcp;               /* tcp.c */
    struct rsplice *splices; /* splice.c: the open tunnels, a list */
    struct rwstats stats;    /* this worker's counters (proxy.c allocates workers aligned) */
};

/* tcp.c: after each table swap, listens on ports new to the table and
 * closes listeners of ports it no longer has (their connections go on). */
void tcp_sync(struct rworker *w);
/* tcp.c: closes every listener (shutdown). */
void tcp_stop_listening(struct rworker *w);
/* tcp.c: frees its state once the loop has ended. */
void tcp_free(struct rworker *w);

#endif
