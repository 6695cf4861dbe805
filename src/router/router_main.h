/* pierd router: the subcommand's entry (docs/router.md). */
#ifndef PIER_ROUTER_MAIN_H
#define PIER_ROUTER_MAIN_H

/* Returns the process exit status. */
int router_main(int argc, char **argv);

#endif
