/* up: what `pier up` (up.c) shares with its join of an existing cluster
 * (join.c). Internal to the CLI. */
#ifndef PIER_CLI_UP_H
#define PIER_CLI_UP_H

#include <stdbool.h>

#include "cli/daemons.h"
#include "lib/buf.h"

/* The host tag of a first host, "pier.state=<cluster name>": the system
 * apps that keep data in its state dir (blobstore, gitreceive, router) are
 * pinned to it by the manifest's formation tags. */
#define STATE_TAG "pier.state"

struct up_flags {
    const char *state, *name, *domain, *port_base, *listen_ip, *stack;
    const char *join, *key, *ca, *store; /* --join URL --key KEY [--ca FILE]; --store URLS */
    bool no_config;
};

/* What `pier up` works with, once resolved. */
struct up {
    char *state;   /* absolute */
    char *bin_dir; /* the directory of the pier executable */
    char *pierd;   /* the pierd executable */
    char key[256]; /* the cluster key */
    struct cluster_state cs;
    struct buf store_url; /* the endpoints every daemon gets (PIER_STORE) */
    char host_url[128], ctl_url[300], git_url[300];
    struct buf store_dir, host_dir;
    /* The host agent's --tags ("pier.state=NAME" on a first host: the
     * system apps with state are pinned to it), "" for none (a joined
     * host). */
    char host_tags[128];
};

/* The cluster the flags describe (defaults for what they leave out). */
int up_cluster_from_flags(const struct up_flags *f, struct cluster_state *cs);
/* Whether k is a key `pier up` takes (letters, digits, '.', '_', '-'). */
bool up_key_ok(const char *k);
/* Reads the key file at path into u->key: 0 (found), 1 (no file), or -1
 * after saying what is wrong. */
int up_read_key(struct up *u, const char *path);
/* This process's environment without PIER_KEY, plus PIER_KEY=key (kept in
 * keyvar); free the array, not its strings. */
char **up_env_with_key(const char *key, struct buf *keyvar);
/* Starts `pierd host` of u unless it runs (with --tags u->host_tags when
 * set); *all_running false when it was started. An agent running without
 * those tags (started before they existed) is restarted with them: its
 * jobs keep running (docs/host.md). */
int up_start_host(struct up *u, char **env, bool *all_running);
/* Reads the agent's id and records it in cluster.json. */
int up_record_host_id(struct up *u);

/* `pier up --join URL --key KEY` (and `pier up` again in a state dir made
 * by it: f->join NULL, u->cs loaded). u->state, bin_dir and pierd are set;
 * have_state says whether u->cs holds the dir's cluster.json. */
int up_join(struct up *u, const struct up_flags *f, bool have_state);

#endif
