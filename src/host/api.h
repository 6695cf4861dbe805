/* api: the host agent's HTTP API (docs/host.md), over httpd.h.
 *
 *   GET    /host/status                     the host record and counts
 *   GET    /host/jobs                       every job the agent knows
 *   GET    /host/jobs/:id                   one job (bare 404 if unknown)
 *   POST   /host/jobs                       add a job (id made), written to the store
 *   PUT    /host/jobs/:id                   add a job with this id
 *   DELETE /host/jobs/:id[?grace=DUR]       stop: SIGTERM, SIGKILL after the grace
 *   PUT    /host/jobs/:id/signal/:signal    send a signal (number or name)
 *   GET    /host/jobs/:id/log               lines=N, follow=true, stream=stdout|stderr,
 *                                           format=json (Flynn's log message shape)
 *   POST   /host/jobs/:id/attach            Upgrade: flynn-attach/0, then frames (attach.h)
 */
#ifndef PIER_HOST_API_H
#define PIER_HOST_API_H

#include "host/hostrec.h"
#include "host/jobs.h"
#include "lib/err.h"
#include "lib/httpd.h"

struct host_api_opts {
    const char *listen; /* HOST:PORT */
    const char *key;    /* cluster key; NULL: no auth */
    const char *host_id;
};

/* Starts serving (Flynn's error shapes; auth with o->key when set). jobs
 * and hr must outlive the server: httpd_free it first, which also frees
 * what the API keeps. hr may be NULL and set later. */
int host_api_start(const struct host_api_opts *o, struct jobs *jobs, struct hostrec *hr,
                   struct httpd **out, struct pier_err *err);
/* Sets the host record GET /host/status shows (it is started after the
 * API, as it names the API's port). Thread-safe; NULL api allowed. */
void host_api_set_hostrec(struct httpd *api, struct hostrec *hr);

#endif
