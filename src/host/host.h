/* host: the entry points pierd's subcommand table calls. */
#ifndef PIER_HOST_HOST_H
#define PIER_HOST_HOST_H

/* `pierd host`: the host agent (docs/host.md). */
int host_main(int argc, char **argv);

#endif
