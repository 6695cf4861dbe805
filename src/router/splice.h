/* splice: a byte tunnel between two streams, for WebSocket (and other
 * Upgrade) connections after the backend's 101 and for tcp routes.
 * Bytes move both ways with flow control (a side is read only as fast as
 * the other takes it); an EOF on one side becomes a shutdown of the other
 * side's write; the tunnel ends when both directions have ended, either
 * side fails, or idle_ms pass with no byte moving either way. */
#ifndef PIER_ROUTER_SPLICE_H
#define PIER_ROUTER_SPLICE_H

#include <stddef.h>
#include <stdint.h>

#include "router/stream.h"
#include "router/worker.h"

struct rsplice;

/* Called once when the tunnel has ended and both streams are closed:
 * bytes moved from a to b (up) and from b to a (down). */
typedef void (*rsplice_done_fn)(void *ud, uint64_t up, uint64_t down);

/* Joins a and b (both malloc'd, connected, owned by the splice from now on:
 * their callbacks and data are replaced, and they are closed and freed at
 * the end). a_pending[0..a_n) are bytes already read from a that go to b
 * first; b_pending likewise to a (copied). The tunnel is kept on
 * w->splices and counted in w->router->stats.tunnels while open. */
struct rsplice *rsplice_start(struct rworker *w, struct rstream *a, struct rstream *b,
                              const char *a_pending, size_t a_n, const char *b_pending, size_t b_n,
                              int idle_ms, rsplice_done_fn done, void *ud);

/* How many tunnels of w are open. */
size_t rsplice_count(const struct rworker *w);

/* Ends every open tunnel of w at once (a forced shutdown). */
void rsplice_close_all(struct rworker *w);

#endif
