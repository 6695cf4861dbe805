/* pierd: every pier daemon in one binary, chosen by its first argument. */
#include <stdio.h>
#include <string.h>

#include "blobstore/blobstore.h"
#include "bootstrap/bootstrap.h"
#include "controller/controller.h"
#include "discoverd/discoverd.h"
#include "git/gitreceive.h"
#include "host/host.h"
#include "router/router_main.h"
#include "scheduler/scheduler.h"
#include "store/migrate.h"
#include "store/server.h"

struct subcommand {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
};

static const struct subcommand subcommands[] = {
    {"store", store_server_main, "the embedded cluster store (etcd v3 JSON gateway on SQLite)"},
    {"discoverd", discoverd_main, "service discovery over HTTP, with server-sent events"},
    {"host", host_main, "the host agent: runs this host's jobs in crun containers"},
    {"scheduler", scheduler_main,
     "the service scheduler: keeps formations at their counts, replaces crashed jobs"},
    {"controller", controller_main,
     "the cluster API (Flynn-compatible): apps, releases, formations, jobs, deploys"},
    {"router", router_main,
     "the HTTP(S) and TCP router: routes from the store, backends from discovery"},
    {"blobstore", blobstore_main, "slugs, sources and build caches over HTTP, checked by SHA-256"},
    {"gitreceive", gitreceive_main,
     "the git receiver: git push over SSH and HTTP builds and deploys the app"},
    {"bootstrap", bootstrap_main,
     "starts the system apps of a manifest as jobs and records them in their controller"},
    {"store-migrate", store_migrate_main,
     "move the cluster's state to another store (pierd store <-> etcd)"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: pierd SUBCOMMAND [flags]\n\nsubcommands:\n");
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        fprintf(out, "  %-14s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(out, "\n'pierd SUBCOMMAND --help' lists its flags.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("pierd %s\n", PIER_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].main(argc - 2, argv + 2);
    fprintf(stderr, "pierd: unknown subcommand \"%s\"\n\n", argv[1]);
    usage(stderr);
    return 2;
}
