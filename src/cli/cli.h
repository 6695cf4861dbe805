/* cli: what every `pier` command receives, and the command groups. */
#ifndef PIER_CLI_H
#define PIER_CLI_H

struct cli {
    const char *cluster; /* -c/--cluster NAME, or NULL */
    const char *app;     /* -a/--app APP before the command, or NULL */
    int argc;            /* the command's own arguments (after its name) */
    char **argv;
};

/* pier cluster [add|remove|default] ... */
int cli_cluster(struct cli *c);
/* pier status [--json]: the controller, the system apps, the local daemons. */
int cli_status(struct cli *c);
/* pier up [...]: a single-host cluster from a state dir (up.c). */
int cli_up(struct cli *c);
/* pier down [--state-dir DIR]: stops it, as a reboot would (down.c). */
int cli_down(struct cli *c);
/* pier host list|jobs HOST: host and job records, read from the store. */
int cli_host(struct cli *c);
/* pier stack build DIR: a stack root made with debootstrap. */
int cli_stack(struct cli *c);

/* The app workflow, against the cluster's controller (docs/cli.md). */
/* pier create [NAME] */
int cli_create(struct cli *c);
/* pier apps [--json] */
int cli_apps(struct cli *c);
/* pier info */
int cli_info(struct cli *c);
/* pier destroy [-y | --confirm NAME] */
int cli_destroy(struct cli *c);
/* pier scale [TYPE=N | TYPE+N | TYPE-N ...] */
int cli_scale(struct cli *c);
/* pier ps [--all] */
int cli_ps(struct cli *c);
/* pier kill JOB... */
int cli_kill(struct cli *c);
/* pier run [-d] [--] CMD... */
int cli_run(struct cli *c);
/* pier env [set K=V... | unset K...] */
int cli_env(struct cli *c);
/* pier releases */
int cli_releases(struct cli *c);
/* pier rollback [RELEASE] */
int cli_rollback(struct cli *c);
/* pier route [add http|add tcp|update|remove] ... (route.c) */
int cli_route(struct cli *c);
/* pier log [-f] [-n N] [-t TYPE] [-j JOB] */
int cli_log(struct cli *c);
/* pier events [-f] [-n N] */
int cli_events(struct cli *c);

/* git push (git.c, keys.c) */
/* pier git-remote [-a APP] [-r NAME] */
int cli_git_remote(struct cli *c);
/* pier git-credentials get|store|erase: git's credential helper */
int cli_git_credentials(struct cli *c);
/* pier keys [--json], pier keys add [FILE], pier keys remove FINGERPRINT */
int cli_keys(struct cli *c);

#endif
