/* router: the router's workers, one libuv loop per thread (docs/router.md).
 * main.c parses the flags into a struct rconfig, starts the workers,
 * feeds them tables from sync.h and stops them on SIGTERM. */
#ifndef PIER_ROUTER_ROUTER_H
#define PIER_ROUTER_ROUTER_H

#include <jansson.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"
#include "router/table.h"

struct rconfig {
    char **http; /* listen addresses "host:port" for plain HTTP */
    size_t n_http;
    char **https; /* ... for TLS */
    size_t n_https;
    const char *tcp_ip; /* tcp routes listen on this address */
    int workers;
    int connect_timeout_ms, header_timeout_ms, backend_timeout_ms, idle_timeout_ms;
    int shutdown_timeout_ms;
    size_t max_header_bytes;
    int max_conns;     /* client connections, whole router */
    int access_log_fd; /* -1: off */
    uint8_t sticky_key[STICKY_KEY_LEN];
    SSL_CTX *default_tls; /* for https listeners; borrowed, outlives the router */
};

struct router;

/* Binds every listener in every worker (SO_REUSEPORT) and starts the
 * workers. They answer 404 until the first table arrives. Fails (nothing
 * left running) with a message naming the address that could not bind. */
int router_start(const struct rconfig *cfg, struct router **out, struct pier_err *err);

/* Hands table t to every worker (takes the caller's reference). Workers
 * swap to it between requests and open or close tcp route listeners. */
void router_publish(struct router *r, struct rtable *t);

/* Connections and counters as JSON (a new reference): {"connections":
 * {"client","backend","tunnels","idle_backend"}, "counters": {"requests",
 * "responses_1xx".."responses_5xx", "backend_errors", "retries",
 * "tcp_connections", "bad_requests", "timeouts"}, "workers"}. */
json_t *router_status(struct router *r);

/* Starts the graceful stop below and returns at once: from now on no
 * connection is accepted. router_publish may still be called. */
void router_drain(struct router *r);

/* Graceful stop: listeners close, idle connections close, in-flight
 * requests and tunnels get up to cfg.shutdown_timeout_ms, then everything
 * is closed; the threads are joined and r is freed. */
void router_stop(struct router *r);

#endif
