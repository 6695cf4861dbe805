/* cli: what every `pier` command receives, and the command groups. */
#ifndef PIER_CLI_H
#define PIER_CLI_H

struct cli {
    const char *cluster; /* -c/--cluster NAME, or NULL */
    int argc;            /* the command's own arguments (after its name) */
    char **argv;
};

/* pier cluster [add|remove|default] ... */
int cli_cluster(struct cli *c);
/* pier status: asks the cluster's controller how it is. */
int cli_status(struct cli *c);
/* pier host list|jobs HOST: host and job records, read from the store. */
int cli_host(struct cli *c);
/* pier stack build DIR: a stack root made with debootstrap. */
int cli_stack(struct cli *c);

#endif
