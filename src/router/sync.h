/* sync: the router's control thread(s). Lists /pier/v1/routes/ and
 * /pier/v1/services/ from the store, builds a table, hands it on, then
 * follows both prefixes by watch and hands on a new table after every
 * batch of changes (a change reaches the workers within milliseconds).
 * A lost store connection keeps the last table in use while it
 * reconnects; a compacted watch lists again. */
#ifndef PIER_ROUTER_SYNC_H
#define PIER_ROUTER_SYNC_H

#include "lib/err.h"
#include "lib/store.h"
#include "router/table.h"

struct rsync;

/* publish gets each new table with one reference it owns. It is called from
 * the sync threads. s and b are borrowed and must outlive the sync. */
int rsync_start(struct store *s, struct rtable_builder *b,
                void (*publish)(void *ud, struct rtable *t), void *ud, struct rsync **out,
                struct pier_err *err);

/* Waits up to timeout_ms for the first table to be published: 0, or
 * PIER_ETIMEOUT. */
int rsync_wait_ready(struct rsync *y, int timeout_ms);

/* Hands the latest table to publish again (nothing before the first), in
 * order with the sync threads' own calls. */
void rsync_republish(struct rsync *y);

/* The latest table (a new reference) or NULL before the first. */
struct rtable *rsync_table(struct rsync *y);

void rsync_stop(struct rsync *y);

#endif
