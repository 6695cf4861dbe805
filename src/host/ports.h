/* ports: the agent's range of host ports for jobs (--ports LO-HI).
 * A port is handed out only if it is free in the range and nothing on the
 * host has it bound right now (a bind probe), and returns when its job ends.
 * Thread-safe (one lock). */
#ifndef PIER_HOST_PORTS_H
#define PIER_HOST_PORTS_H

#include <stdbool.h>

#include "lib/err.h"

struct ports;

/* Parses "LO-HI" (1024 <= LO <= HI <= 65535). PIER_EINVAL with a message. */
int ports_new(const char *range, struct ports **out, struct pier_err *err);
void ports_free(struct ports *p);
int ports_lo(const struct ports *p);
int ports_hi(const struct ports *p);
/* Takes a port: want 0 picks one, otherwise that port (PIER_EINVAL when
 * outside the range, PIER_EEXISTS when taken). PIER_EUNAVAIL when none is
 * left. Returns the port (> 0) or the error. */
int ports_take(struct ports *p, int want, struct pier_err *err);
/* Marks a port taken without probing (re-adopting a running job). */
void ports_claim(struct ports *p, int port);
void ports_release(struct ports *p, int port);
/* Ports still free. */
int ports_free_count(struct ports *p);

#endif
