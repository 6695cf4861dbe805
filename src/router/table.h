/* table: the router's routing table, an immutable snapshot shared by all
 * workers (docs/router.md "Routes").
 *
 * The control thread (sync.h) keeps the route records and the discovery
 * instances it has read in a struct rtable_builder and makes a new
 * struct rtable from them after every change. Workers swap to the new
 * table between requests; a request keeps a reference on the table it was
 * routed with, so a route or backend it uses stays valid until it ends.
 *
 * Backends are shared by successive tables: the builder gives an instance
 * that stays in discovery the same struct rbackend in the next table, so
 * its open-request count (the balancing input, updated by every worker
 * with atomics) carries over. */
#ifndef PIER_ROUTER_TABLE_H
#define PIER_ROUTER_TABLE_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/err.h"

/* How long a backend that refused or timed out a connection is skipped. */
#define RBACKEND_DOWN_MS 5000

struct rbackend {
    atomic_int refs;
    char *service;
    char *id;                   /* discovery instance id */
    char *addr;                 /* "ip:port" or "[ip6]:port", as registered */
    struct sockaddr_storage sa; /* addr resolved (numeric only) */
    socklen_t salen;
    atomic_int inflight;        /* open requests and tunnels, all workers */
    atomic_llong down_until_ms; /* CLOCK_MONOTONIC ms (uv_now) before which it is skipped */
    atomic_ullong requests;     /* requests (and tcp connections) sent to it */
    atomic_ullong failures;     /* connects refused or timed out, responses broken */
    atomic_bool gone;           /* set by the builder once the instance left discovery:
                                   workers close their idle connections to it */
};

void rbackend_ref(struct rbackend *b);
void rbackend_unref(struct rbackend *b);

struct rservice {
    char *name;
    struct rbackend **v; /* live instances, oldest first: v[0] is the leader */
    size_t n;
};

enum rroute_type { RROUTE_HTTP, RROUTE_TCP };

struct rroute {
    char *id;
    enum rroute_type type;
    char *domain; /* http: lower case; "*.example.com" for a wildcard */
    char *path;   /* http: starts and ends with '/' */
    int port;     /* tcp: the listening port */
    char *service;
    bool sticky, leader, drain_backends, disable_keep_alives;
    void *tls_ctx;              /* SSL_CTX * for the route's certificate, or NULL */
    const struct rservice *svc; /* in the same table; never NULL (n may be 0) */
};

struct rtable;

void rtable_ref(struct rtable *t);
void rtable_unref(struct rtable *t);

/* The store revision the table reflects (0 before the first read). */
int64_t rtable_revision(const struct rtable *t);

/* The http route for a request: host as sent in the Host field (any case,
 * with or without ":port"), path the request target's path. NULL: 404. */
const struct rroute *rtable_match_http(const struct rtable *t, const char *host, size_t host_len,
                                       const char *path, size_t path_len);

/* The tcp route listening on port, or NULL. */
const struct rroute *rtable_match_tcp(const struct rtable *t, int port);

/* The tcp routes' ports, ascending (borrowed; valid with the table). */
const int *rtable_tcp_ports(const struct rtable *t, size_t *n);

/* The SSL_CTX * for a TLS client's SNI name: the certificate of a route of
 * that exact domain, else of the most specific wildcard covering it, else
 * NULL (use the default certificate). */
void *rtable_tls_ctx(const struct rtable *t, const char *servername);

/* Picks a backend for route r by power of two choices on inflight: the
 * leader alone for leader routes; backends in avoid[0..navoid) (already
 * tried for this request) never; backends down until after now_ms only
 * when nothing else is left. *rng is the caller's xorshift state. NULL
 * when no backend is left. The result is borrowed from the table. */
struct rbackend *rtable_pick(const struct rroute *r, struct rbackend *const *avoid, size_t navoid,
                             int64_t now_ms, uint32_t *rng);

/* The backend of r's service whose addr is addr[0..len), or NULL. */
struct rbackend *rtable_find_backend(const struct rroute *r, const char *addr, size_t len);

/* Every route and backend as JSON for the admin status (a new reference). */
json_t *rtable_json(const struct rtable *t);

/* --- building ---- */

struct rtable_builder;

/* make_tls_ctx turns a route's PEM certificate and key into an SSL_CTX *
 * (NULL on failure, with a message in err); NULL disables certificates.
 * The builder frees contexts with free_tls_ctx and reuses a context while
 * its route's certificate is unchanged. */
struct rtable_builder *rtable_builder_new(void *(*make_tls_ctx)(const char *cert, const char *key,
                                                                struct pier_err *err),
                                          void (*free_tls_ctx)(void *ctx));
void rtable_builder_free(struct rtable_builder *b);

/* Sets (value non-NULL: the record's JSON) or removes (value NULL) the
 * route stored under key /pier/v1/routes/<id>. A record that does not parse
 * as a route is logged (warn) and treated as absent. */
void rtable_builder_route(struct rtable_builder *b, const char *id, const char *value, size_t len);

/* Sets or removes (value NULL) the discovery instance stored under
 * /pier/v1/services/<service>/<id>, created at create_revision (which
 * orders leadership). An instance whose addr is not a numeric ip:port is
 * logged and ignored. */
void rtable_builder_instance(struct rtable_builder *b, const char *service, const char *id,
                             const char *value, size_t len, int64_t create_revision);

/* Forgets every route (or instance) before a fresh listing. */
void rtable_builder_clear_routes(struct rtable_builder *b);
void rtable_builder_clear_instances(struct rtable_builder *b);

/* A new table (one reference, the caller's) from the current records. */
struct rtable *rtable_build(struct rtable_builder *b, int64_t revision);

/* --- sticky sessions ---- */

#define STICKY_COOKIE "_backend"
#define STICKY_KEY_LEN 32

/* Writes the cookie value naming addr, signed with key, into out (NUL
 * terminated; at most STICKY_VALUE_MAX bytes with the NUL). */
#define STICKY_VALUE_MAX 384
void sticky_value(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *addr,
                  char out[STICKY_VALUE_MAX]);

/* Finds the _backend cookie in a Cookie field value and checks its
 * signature for service. On success copies the addr it names into
 * addr_out (NUL terminated) and returns true. Any malformed input: false. */
bool sticky_check(const uint8_t key[STICKY_KEY_LEN], const char *service, const char *cookie,
                  size_t cookie_len, char *addr_out, size_t addr_cap);

#endif
