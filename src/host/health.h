/* health: a running job's services in discovery, gated by health checks.
 *
 * For each port of a job that names a service, an instance "<ip>:<port>"
 * is registered in discovery (discover.h) with the job's id, app, release
 * and type as metadata. A port without a check is registered at once; one
 * with a check only after `threshold` checks in a row pass, and it is
 * deregistered after `threshold` in a row fail (and registered again when
 * they pass again). One thread per job does the checks and the
 * registrations, so a slow store or a hung check never holds the agent. */
#ifndef PIER_HOST_HEALTH_H
#define PIER_HOST_HEALTH_H

#include <stdbool.h>

#include "host/jobspec.h"
#include "lib/store.h"

struct health;
/* Called from the health thread when the job's health changes (every
 * checked port passing -> healthy). */
typedef void (*health_change_fn)(void *ud, const char *job_id, bool healthy);

/* Starts the services of spec on ports (one per spec port). NULL when the
 * job names no service. spec and ports are copied. */
struct health *health_start(struct store *s, const char *ip, const struct jobspec *spec,
                            const int *ports, health_change_fn fn, void *ud);
/* Whether the job has at least one check (so "healthy" means something). */
bool health_has_checks(const struct jobspec *spec);
/* Deregisters every instance at once and stops the thread. A check in
 * progress is cut short. NULL allowed. */
void health_stop(struct health *h);
/* Stops the thread but leaves the instances registered until their leases
 * run out: for an agent going away while its jobs run on, so that the next
 * agent re-registers them with no gap. NULL allowed. */
void health_abandon(struct health *h);

#endif
