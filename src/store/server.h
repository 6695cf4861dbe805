/* server: `pierd store`, the embedded cluster store: etcd's v3 JSON gateway
 * (the subset pier's store client uses) over HTTP, on the mvcc engine. */
#ifndef PIER_STORE_SERVER_H
#define PIER_STORE_SERVER_H

/* The subcommand's entry: parses flags, serves until SIGTERM/SIGINT.
 * Returns the process exit status. */
int store_server_main(int argc, char **argv);

#endif
