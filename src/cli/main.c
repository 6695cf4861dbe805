/* pier: the user's whole workflow, one command group a file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/ui.h"

struct command {
    const char *name;
    int (*run)(struct cli *c);
    const char *summary;
    const char *usage;
};

static int cmd_version(struct cli *c);
static int cmd_help(struct cli *c);

static const struct command commands[] = {
    {"cluster", cli_cluster, "list, add and remove clusters this CLI talks to",
     "usage: pier cluster                       list clusters (* marks the default)\n"
     "       pier cluster add [-d] NAME URL KEY  add a cluster (-d: make it the default)\n"
     "       pier cluster remove NAME            forget a cluster\n"
     "       pier cluster default [NAME]         show or set the default cluster\n"},
    {"status", cli_status, "check that the cluster's controller answers",
     "usage: pier [-c CLUSTER] status\n"},
    {"host", cli_host, "list the cluster's hosts and the jobs on one of them",
     "usage: pier host list [--json] [--store URL]        hosts, their resources and heartbeat\n"
     "       pier host jobs HOST [--json] [--store URL]   the jobs on one host\n"
     "\n"
     "These read the cluster store directly: --store URL, or PIER_STORE\n"
     "(a cluster from 'make up' has it at http://127.0.0.1:7001).\n"},
    {"stack", cli_stack, "build the root file system jobs run on",
     "usage: pier stack build DIR [--suite SUITE] [--mirror URL] [--packages P1,P2,...]\n"
     "\n"
     "Makes a minimal Debian (debootstrap --variant=minbase, default suite bookworm,\n"
     "mirror from /etc/apt or http://deb.debian.org/debian) in DIR, installs the\n"
     "packages in it, and marks it finished in DIR/etc/pier-stack. Needs root and\n"
     "the debootstrap package. Use the result with 'pierd host --stack DIR ...'.\n"},
    {"version", cmd_version, "print the version", "usage: pier version\n"},
    {"help", cmd_help, "show help for a command", "usage: pier help [COMMAND]\n"},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
    fprintf(out, "usage: pier [-c CLUSTER] COMMAND [ARGS]\n\n"
                 "pier deploys apps with git push to a cluster you own.\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\noptions:\n"
                 "  -c, --cluster NAME   use this cluster instead of the default\n"
                 "                       (env PIER_CLUSTER; PIER_CONTROLLER_URL and\n"
                 "                       PIER_CONTROLLER_KEY, together, override the\n"
                 "                       config file)\n"
                 "\n'pier help COMMAND' tells more about a command.\n");
}

static const struct command *find(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int cmd_version(struct cli *c)
{
    (void)c;
    printf("pier %s\n", PIER_VERSION);
    return 0;
}

static int cmd_help(struct cli *c)
{
    if (c->argc == 0) {
        usage(stdout);
        return 0;
    }
    const struct command *cmd = find(c->argv[0]);
    if (!cmd)
        return ui_usage("", "unknown command \"%s\"", c->argv[0]);
    printf("%s\n%s", cmd->summary, cmd->usage);
    return 0;
}

int main(int argc, char **argv)
{
    struct cli c = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--version") == 0)
            return cmd_version(&c);
        if (strcmp(a, "-c") == 0 || strcmp(a, "--cluster") == 0) {
            if (i + 1 >= argc)
                return ui_usage("", "%s needs a cluster name", a);
            c.cluster = argv[++i];
            continue;
        }
        if (strncmp(a, "--cluster=", 10) == 0) {
            c.cluster = a + 10;
            continue;
        }
        return ui_usage("", "unknown option \"%s\"", a);
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const struct command *cmd = find(argv[i]);
    if (!cmd)
        return ui_usage("", "unknown command \"%s\"", argv[i]);
    c.argc = argc - i - 1;
    c.argv = argv + i + 1;
    if (c.argc > 0 && (strcmp(c.argv[0], "--help") == 0 || strcmp(c.argv[0], "-h") == 0)) {
        printf("%s\n%s", cmd->summary, cmd->usage);
        return 0;
    }
    return cmd->run(&c);
}
