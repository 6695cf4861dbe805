/* discoverd: `pierd discoverd`, service discovery over HTTP for programs in
 * any language: register and heartbeat instances, list them, follow them and
 * their leader as server-sent events. All state is in the store (instances
 * live under leases), so any number of discoverd processes can serve the
 * same cluster and one can restart without losing anything. The API is
 * described in docs/discovery.md. */
#ifndef PIER_DISCOVERD_H
#define PIER_DISCOVERD_H

/* The subcommand's entry. Returns the process exit status. */
int discoverd_main(int argc, char **argv);

#endif
