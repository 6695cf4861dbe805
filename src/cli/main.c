/* pier: the user's whole workflow, one command group a file. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/git.h"
#include "cli/ui.h"

#define APP_HELP                                                                                   \
    "\nThe app is -a APP, else $PIER_APP, else the one the git remote 'pier'\n"                    \
    "of the current directory points at.\n"

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
     "usage: pier cluster [list] [--json]       list clusters (* marks the default)\n"
     "       pier cluster add [-d] NAME URL KEY [--git-url GIT_URL] [--ca FILE | --tls-pin PIN]\n"
     "                                           add a cluster (-d: make it the default)\n"
     "       pier cluster remove NAME            forget a cluster\n"
     "       pier cluster default [NAME]         show or set the default cluster\n"
     "       pier cluster git-url NAME [GIT_URL | --remove]\n"
     "                                           show, set or remove where git push goes\n"
     "\n"
     "GIT_URL is the cluster's git receiver, http(s)://HOST:PORT or\n"
     "ssh://git@HOST:PORT; PIER_GIT_URL overrides it. Apps are pushed to\n"
     "GIT_URL/APP.git.\n"
     "\n"
     "TLS: an https cluster is verified with the system's CAs, unless it has a CA\n"
     "of its own: --ca FILE (the cluster's CA certificate, STATE/ca/ca.crt on the\n"
     "host that ran 'pier up'), or --tls-pin PIN (the base64 SHA-256 of that\n"
     "certificate, which 'pier up' prints: the CLI reads the chain URL presents\n"
     "and keeps the certificate with that pin). Then that CA alone is trusted, for\n"
     "the API and for git (http.GIT_URL/.sslCAInfo, set by 'pier create').\n"
     "PIER_CONTROLLER_CA names the CA file for PIER_CONTROLLER_URL.\n"
     "\n"
     "--json lists them as JSON: name, url, git_url, default, and tls (pinned,\n"
     "system or none); never the key or the CA.\n"},
    {"up", cli_up, "start a single-host cluster on this machine (or find it running)",
     "usage: pier up [--state-dir DIR] [--name NAME] [--domain DOMAIN] [--port-base N]\n"
     "               [--listen-ip IP] [--stack DIR] [--store URL[,URL]] [--no-config]\n"
     "       pier up --join URL [--key KEY] [--ca FILE] [--state-dir DIR] [--port-base N]\n"
     "               [--listen-ip IP] [--stack DIR]\n"
     "\n"
     "Starts 'pierd store' and 'pierd host' as daemons of the state dir (pid files and\n"
     "logs there), then 'pierd bootstrap', which runs the controller, discoverd, the\n"
     "blobstore, the router, the git receiver and the scheduler as jobs and records\n"
     "them as system apps. Then adds the cluster NAME to the CLI config (unless\n"
     "--no-config) and prints what to do next. Run again, it finds what runs and\n"
     "changes nothing; after 'pier down' it brings the same cluster back.\n"
     "\n"
     "  --state-dir DIR   default $PIER_HOME, else /var/lib/pier (root) or\n"
     "                    ~/.local/share/pier; DIR/cluster.json keeps the settings\n"
     "                    below, DIR/key the cluster key (made once, 0600)\n"
     "  --name NAME       the cluster's name in the CLI config (default \"default\")\n"
     "  --domain DOMAIN   apps at APP.DOMAIN (default pier.localhost, or\n"
     "                    NAME.localhost with --name)\n"
     "  --port-base N     store N, host agent N+1, router http N+2, https N+3, git ssh\n"
     "                    N+4, jobs N+100..N+999 (default 7001, 1113, 80, 443, 2222,\n"
     "                    20000-20999)\n"
     "  --listen-ip IP    where everything listens (default 127.0.0.1)\n"
     "  --stack DIR       the jobs' root file system ('pier stack build DIR')\n"
     "  --no-config       leave the CLI config alone\n"
     "  --store URL,...   an external store (etcd 3.4): no 'pierd store' is started\n"
     "  --join URL        one more host of the cluster whose controller is at URL:\n"
     "                    only 'pierd host', against the store the controller names\n"
     "  --key KEY         with --join: the cluster key\n"
     "  --ca FILE         with --join: the cluster's CA (STATE/ca/ca.crt on its first\n"
     "                    host); default the system's CAs\n"
     "\n"
     "The CLI config gets https://controller.DOMAIN with the cluster's CA pinned.\n"
     "A flag that disagrees with DIR/cluster.json is refused. pierd is the one next to\n"
     "pier, else $PIER_PIERD; the manifest $PIER_MANIFEST, else\n"
     "<dir of pier>/../bootstrap/manifest.json, else\n"
     "/usr/share/pier/bootstrap/manifest.json. The host agent needs root.\n"},
    {"down", cli_down, "stop the cluster 'pier up' started, as a reboot would",
     "usage: pier down [--state-dir DIR]\n"
     "\n"
     "Stops the host agent and the store of the state dir (SIGTERM, SIGKILL after\n"
     "10 s) and kills every job of its host, leaving every record in the store as\n"
     "it is: 'pier up' brings the same cluster back, apps, jobs and routes.\n"},
    {"status", cli_status, "check the cluster: controller, system apps, local daemons",
     "usage: pier [-c CLUSTER] status [--json] [--state-dir DIR]\n"
     "\n"
     "Asks the cluster's controller how it is, then shows each system app with its\n"
     "jobs; when the state dir of 'pier up' on this machine holds that cluster, its\n"
     "store and host agent first. Exits 1 naming what is unhealthy.\n"},
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
    {"create", cli_create, "create an app",
     "usage: pier create [NAME] [-r REMOTE | --remote REMOTE | --no-remote]\n"
     "\n"
     "Creates an app (the controller picks a name when none is given) and\n"
     "prints its name. Inside a git repository it adds the git remote REMOTE\n"
     "(default pier) for 'git push pier main', pointing at the cluster's git\n"
     "URL ('pier help cluster'); --no-remote leaves the repository alone.\n"},
    {"apps", cli_apps, "list the apps", "usage: pier apps [--json]\n"},
    {"info", cli_info, "show an app: release, processes, routes",
     "usage: pier info [-a APP] [--json]\n"
     "\n"
     "--json prints {\"app\", \"release\", \"formation\", \"routes\"} as the controller\n"
     "sends them.\n" APP_HELP},
    {"destroy", cli_destroy, "delete an app and everything under it",
     "usage: pier destroy [-a APP] [-y | --confirm NAME]\n"
     "\n"
     "Asks for the app's name unless -y or --confirm NAME is given.\n" APP_HELP},
    {"scale", cli_scale, "show or change how many processes of each type run",
     "usage: pier scale [-a APP] [--json]              show the counts\n"
     "       pier scale [-a APP] [--timeout S] TYPE=N|TYPE+N|TYPE-N...\n"
     "\n"
     "Changes the counts of the app's current release and waits (60 s, or\n"
     "--timeout S) until the scheduler has the jobs up; =0 stops a type.\n"
     "--json shows the formation's processes object.\n" APP_HELP},
    {"ps", cli_ps, "list the app's jobs",
     "usage: pier ps [--app APP] [-a | --all] [--json]\n"
     "\n"
     "Shows running and pending jobs; -a/--all shows stopped ones too. Here\n"
     "-a is the app only when a name follows it.\n"},
    {"kill", cli_kill, "stop a job (the scheduler replaces service jobs)",
     "usage: pier kill [-a APP] JOB...\n" APP_HELP},
    {"run", cli_run, "run a one-off command in the app's environment",
     "usage: pier run [-a APP] [-d] [-e K=V]... [--] CMD [ARGS...]\n"
     "\n"
     "Runs CMD in a new job of the app's current release, attached: output\n"
     "streams back, stdin is forwarded, and pier exits with CMD's status. A\n"
     "terminal gets an interactive TTY. -d runs it detached (output goes to\n"
     "'pier log') and prints the job's id. Options end at the first word of\n"
     "CMD (or at --).\n" APP_HELP},
    {"env", cli_env, "show or change the app's config vars",
     "usage: pier env [-a APP] [--json]         KEY=VALUE lines (--json: an object)\n"
     "       pier env [-a APP] set K=V...       set vars (a new release, deployed)\n"
     "       pier env [-a APP] unset K...       remove vars (a new release, deployed)\n"
     "\n"
     "Keys are letters, digits and '_', not starting with a digit or '__';\n"
     "PIER_* is the platform's.\n" APP_HELP},
    {"releases", cli_releases, "list the app's releases, newest first",
     "usage: pier releases [-a APP] [--json]\n" APP_HELP},
    {"rollback", cli_rollback, "deploy an earlier release again",
     "usage: pier rollback [-a APP] [RELEASE]\n"
     "\n"
     "Deploys RELEASE (an id, or the start of one), by default the release\n"
     "before the current one.\n" APP_HELP},
    {"route", cli_route, "list, add, change and remove the app's routes",
     "usage: pier route [list] [-a APP] [--json]      list the app's routes\n"
     "       pier route add http [-a APP] DOMAIN[/PATH] [--path P] [-s SERVICE]\n"
     "                       [--sticky] [--leader] [--no-drain-backends]\n"
     "                       [--disable-keep-alives] [-c CERT_FILE -k KEY_FILE]\n"
     "       pier route add tcp [-a APP] [-p PORT] [-s SERVICE] [--leader]\n"
     "                       [--no-drain-backends] [--disable-keep-alives]\n"
     "       pier route update [-a APP] ID [-s SERVICE] [--sticky|--no-sticky]\n"
     "                       [--leader|--no-leader] [--drain-backends|--no-drain-backends]\n"
     "                       [--disable-keep-alives|--enable-keep-alives]\n"
     "                       [-c CERT_FILE -k KEY_FILE | --no-tls]\n"
     "       pier route remove [-a APP] ID\n"
     "\n"
     "  -s, --service S        the discovery service to send traffic to (default\n"
     "                         APP-web)\n"
     "  -p, --port N           tcp: the router port (default: a free one from\n"
     "                         3000 to 3500)\n"
     "  --path P               http: only paths under P (also DOMAIN/P); DOMAIN\n"
     "                         may be a wildcard, *.example.com\n"
     "  -c, --tls-cert FILE    http: PEM certificate (chain) for https; - is stdin\n"
     "  -k, --tls-key FILE     http: its PEM private key; - is stdin\n"
     "  --sticky               http: a client keeps its backend (a cookie)\n"
     "  --leader               only the service's leader gets the traffic\n"
     "  --no-drain-backends    do not wait for requests in flight when a backend goes\n"
     "  --disable-keep-alives  a new backend connection for every request\n"
     "  --no-tls               update: remove the route's certificate\n"
     "\n"
     "ID is http/<id> or tcp/<id> as 'pier route' shows it, or the start of the\n"
     "id. 'route add http' prints the new route's ID; 'route add tcp' its ID and\n"
     "port.\n" APP_HELP},
    {"log", cli_log, "show the app's log",
     "usage: pier log [-a APP] [-f] [-n N] [-t TYPE] [-j JOB] [-i] [--json]\n"
     "\n"
     "  -f        follow: keep printing new lines\n"
     "  -i        include the platform's lines about starting each job\n"
     "  -n N      the last N lines (default: all the controller keeps)\n"
     "  -t TYPE   only lines of this process type\n"
     "  -j JOB    only lines of this job\n"
     "  --json    each line as the controller's log message object, one a line\n" APP_HELP},
    {"events", cli_events, "show the app's events (jobs, releases, deployments)",
     "usage: pier events [-a APP] [-f] [-n N] [--json]\n"
     "\n"
     "  -f        follow: keep printing events as they happen\n"
     "  -n N      the last N events (default 30)\n"
     "  --json    the events as a JSON array; with -f one event object a line\n" APP_HELP},
    {"keys", cli_keys, "list, add and remove the SSH keys that may git push",
     "usage: pier keys [--json]                  list the keys\n"
     "       pier keys add [FILE]                add a public key (default\n"
     "                                           ~/.ssh/id_ed25519.pub, id_rsa.pub\n"
     "                                           or id_ecdsa.pub)\n"
     "       pier keys remove FINGERPRINT        remove a key (SHA256:... as listed)\n"
     "\n"
     "Keys belong to the cluster, not to an app; they are for git push over\n"
     "SSH (over HTTP, git uses the cluster key: 'pier help git-remote').\n"},
    {"git-remote", cli_git_remote, "add the app's git remote to the current repository",
     "usage: pier git-remote [-a APP] [-r REMOTE | --remote REMOTE]\n"
     "\n"
     "Does what 'pier create' does in a git repository: adds the remote REMOTE\n"
     "(default pier) pointing at GIT_URL/APP.git, and for an http(s) git URL\n"
     "makes 'pier git-credentials' git's credential helper for it there, so\n"
     "git push authenticates with the cluster key. A remote of that name\n"
     "pointing elsewhere is left alone.\n" APP_HELP},
    {"git-credentials", cli_git_credentials, "git's credential helper for the cluster's git URL",
     "usage: pier git-credentials get|store|erase\n"
     "\n"
     "git runs this (see 'pier help git-remote'): for 'get' it reads git's\n"
     "key=value lines on stdin and, when they name a cluster's git URL,\n"
     "answers username=pier and password=<the cluster key>.\n"},
    {"version", cmd_version, "print the version", "usage: pier version\n"},
    {"help", cmd_help, "show help for a command", "usage: pier help [COMMAND]\n"},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
    fprintf(out, "usage: pier [-c CLUSTER] COMMAND [ARGS]\n\n"
                 "pier deploys apps with git push to a cluster you own.\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-15s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\noptions:\n"
                 "  -a, --app APP        the app a command works on (also after the\n"
                 "                       command; env PIER_APP)\n"
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
    /* git runs this binary as git-remote-pier for pier::https:// remotes. */
    const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
    if (argc > 0 && strcmp(base ? base + 1 : argv[0], "git-remote-pier") == 0)
        return git_remote_helper(argc, argv);
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
        if (strcmp(a, "-a") == 0 || strcmp(a, "--app") == 0) {
            if (i + 1 >= argc)
                return ui_usage("", "%s needs an app name", a);
            c.app = argv[++i];
            continue;
        }
        if (strncmp(a, "--app=", 6) == 0) {
            c.app = a + 6;
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
