/* discover: service discovery over the store (DESIGN.md, Layer 0).
 *
 * An instance of a service lives at /pier/v1/services/<service>/<id> as
 * JSON {"id","service","addr","proto","meta":{string:string}} under a lease:
 * when its process dies the lease runs out and the key goes, with a delete
 * event every watcher sees. The id is, as in Flynn, the MD5 (hex) of
 * "<proto>-<addr>", so the same process registering again keeps its id.
 *
 * The leader of a service is its live instance with the lowest create
 * revision: the one registered longest ago. When it goes, the next oldest
 * leads; a returning instance registers anew and queues at the back. No
 * extra keys or elections are needed, and every reader agrees because they
 * read the same revisions.
 *
 * Errors: PIER_EINVAL for a bad service name or instance field (the message
 * names it); otherwise the store's errors (store.h) pass through unchanged.
 * Threads: a registration is safe to use from any thread; a watch belongs
 * to one thread at a time. */
#ifndef PIER_DISCOVER_H
#define PIER_DISCOVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"
#include "lib/store.h"

#define DISCOVER_PREFIX "/pier/v1/services/"
#define DISCOVER_DEFAULT_TTL 10

struct discover_instance {
    char *id;
    char *service;
    char *addr;
    char *proto;
    json_t *meta;            /* object of strings; owned reference */
    int64_t create_revision; /* when it registered: orders leadership */
    int64_t mod_revision;    /* when it last changed */
};

struct discover_list {
    struct discover_instance *v; /* sorted by create_revision: v[0] leads */
    size_t n;
    int64_t revision; /* the store revision the list was read at */
};

/* Checks a service name: 1-128 of [a-z0-9-_.], starting with a letter or
 * digit. Returns 0 or PIER_EINVAL with a message. */
int discover_check_service(const char *service, struct pier_err *err);
/* Largest addr, proto and meta (keys plus values) an instance may have. */
#define DISCOVER_MAX_ADDR 255
#define DISCOVER_MAX_PROTO 32
#define DISCOVER_MAX_META 16384

/* Checks an instance's fields: addr required, sizes within the limits
 * above, meta (NULL allowed) an object of strings. PIER_EINVAL with a
 * message naming the field. */
int discover_check_instance(const char *addr, const char *proto, const json_t *meta,
                            struct pier_err *err);
/* Appends the store key of an instance: /pier/v1/services/<service>/<id>. */
void discover_instance_key(struct buf *b, const char *service, const char *id);
/* Frees what an instance holds (not the struct) and zeroes it. */
void discover_instance_clear(struct discover_instance *in);
/* Writes the instance id for proto and addr (33 bytes with the NUL). */
void discover_instance_id(const char *proto, const char *addr, char out[33]);

/* The instance as JSON (a new reference), as the HTTP API shows it. */
json_t *discover_instance_json(const struct discover_instance *in);

/* Lists the live instances of service. *out is new (discover_list_free). */
int discover_list(struct store *s, const char *service, struct discover_list **out,
                  struct pier_err *err);
void discover_list_free(struct discover_list *l);

/* --- registration ---- */

struct discover_reg;

struct discover_reg_opts {
    const char *proto;  /* default "tcp" */
    const json_t *meta; /* object of strings, borrowed (copied); NULL for none */
    int64_t ttl_s;      /* lease TTL; default DISCOVER_DEFAULT_TTL */
};

/* Registers addr as an instance of service and keeps it registered from a
 * background thread: heartbeats renew the lease every TTL/3, and if the
 * lease is lost anyway (a long network cut, a store restart that lost it)
 * the instance registers again, retrying with backoff. opts may be NULL. */
int discover_register(struct store *s, const char *service, const char *addr,
                      const struct discover_reg_opts *opts, struct discover_reg **out,
                      struct pier_err *err);
/* The registered instance's id (borrowed). */
const char *discover_reg_id(const struct discover_reg *r);
/* Whether the registration's lease is held right now (false from the moment
 * it is lost until it has been registered again). Thread-safe. */
bool discover_reg_held(struct discover_reg *r);
/* Replaces the instance's metadata (borrowed, copied). */
int discover_reg_set_meta(struct discover_reg *r, const json_t *meta, struct pier_err *err);
/* Deregisters (revoking the lease, so watchers see it go at once) and
 * frees r. It talks to the store, so it may take up to the store's request
 * timeout when the store is away. NULL allowed. */
void discover_unregister(struct discover_reg *r);
/* Stops keeping the instance registered without deregistering it: it
 * stays until its lease runs out, so that a successor (the same process
 * restarted, registering the same addr) takes it over with no gap. Frees r.
 * NULL allowed. */
void discover_reg_release(struct discover_reg *r);

/* --- watching ---- */

enum discover_event_kind {
    DISCOVER_UP,      /* an instance appeared */
    DISCOVER_UPDATE,  /* its metadata changed */
    DISCOVER_DOWN,    /* it went away (deregistered or its lease expired) */
    DISCOVER_LEADER,  /* the leader changed; instance is the new leader (id NULL: none) */
    DISCOVER_CURRENT, /* every instance that existed at the start has been sent */
};

struct discover_event {
    enum discover_event_kind kind;
    struct discover_instance inst; /* owned by the event */
};

/* Kind name as the HTTP API writes it: "up", "update", "down", "leader",
 * "current". */
const char *discover_event_kind_name(enum discover_event_kind k);

struct discover_watch;

/* Watches service: first an UP event for every live instance, then
 * CURRENT, then LEADER (if there is one), then changes as they happen.
 * Survives dropped store connections and compaction (it lists again and
 * sends the difference). */
int discover_watch_open(struct store *s, const char *service, struct discover_watch **out,
                        struct pier_err *err);
/* Waits up to timeout_ms (-1: forever) for the next event. Returns 0 with
 * *out new (discover_event_free), PIER_ETIMEOUT, or a store error while the
 * store cannot be reached (calling again keeps trying). */
int discover_watch_next(struct discover_watch *w, int timeout_ms, struct discover_event **out,
                        struct pier_err *err);
/* The current leader as the watch knows it (a new copy), or NULL. */
struct discover_instance *discover_watch_leader(struct discover_watch *w);
void discover_watch_close(struct discover_watch *w);

void discover_event_free(struct discover_event *e);
void discover_instance_free(struct discover_instance *in); /* frees a heap instance */

/* --- discovery names in URLs ---- */

/* A URL may name a service instead of an address, as Flynn's artifacts
 * do: http://blobstore.discoverd/slugs/x.tgz. Whoever fetches it resolves
 * the name at that moment, so a record outlives the service's moves (a
 * job restarted on another port). The host is "<service>.discoverd" (any
 * case; a port after it is ignored). */
#define DISCOVER_URL_DOMAIN ".discoverd"

/* Whether url's host is "<service>.discoverd": 1 with the service (lower
 * case) in service (size bytes, at least 129), 0 for any other URL
 * (another host, no "scheme://"), or PIER_EINVAL with a message when the
 * name is not a service name or the port is not a number. */
int discover_url_service(const char *url, char *service, size_t size, struct pier_err *err);

/* url with its scheme://host[:port] replaced by where in is reached: the
 * scheme://host:port of its meta.url when it has one (any path there is
 * dropped), else url's own scheme with in->addr. User info, path, query
 * and fragment are kept. Returns a new string (free). url must be one for
 * which discover_url_service returned 1. */
char *discover_url_at(const char *url, const struct discover_instance *in);

/* Resolves url now: one naming "<service>.discoverd" is rewritten
 * (discover_url_at) to the service's leader, its oldest live instance
 * (v[0] of discover_list); any other URL comes back unchanged. *out is a
 * new string (free) either way. Errors: PIER_EUNAVAIL "no instance of
 * service X in discovery; is the X running?", PIER_EINVAL for a bad name,
 * PIER_EINVAL when s is NULL and the URL needs it, else the store's. */
int discover_resolve_url(struct store *s, const char *url, char **out, struct pier_err *err);

#endif
