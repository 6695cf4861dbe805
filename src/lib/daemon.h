/* daemon: what every pierd subcommand shares: the common flags of
 * DESIGN.md ("Common daemon flags") with their environment fallbacks, the
 * --help text, and waiting for SIGTERM/SIGINT. */
#ifndef PIER_DAEMON_H
#define PIER_DAEMON_H

#include "lib/err.h"

struct daemon_flags {
    /* --listen HOST:PORT; without it, in a job (PORT in the environment,
     * as the host agent gives every job) ${EXTERNAL_IP:-127.0.0.1}:$PORT;
     * else daemon_spec.default_listen */
    const char *listen;
    const char *store;     /* --store URL[,URL...] or PIER_STORE */
    const char *data_dir;  /* --data-dir DIR or PIER_DATA_DIR */
    const char *key;       /* --key KEY or PIER_KEY */
    const char *log_level; /* --log-level LEVEL or PIER_LOG_LEVEL */
};

/* A component-specific flag "--name VALUE"; *value is set to the borrowed
 * argv string. */
struct daemon_opt {
    const char *name; /* without the dashes */
    const char *metavar;
    const char *help;
    const char **value;
};

/* The common flags a subcommand uses (daemon_spec.uses). */
enum {
    DAEMON_USES_LISTEN = 1,
    DAEMON_USES_STORE = 2,
    DAEMON_USES_DATA_DIR = 4,
    DAEMON_USES_KEY = 8,
};

struct daemon_spec {
    const char *sub;     /* "store" */
    const char *summary; /* one line for --help */
    const char *default_listen;
    const struct daemon_opt *opts; /* extra flags, ended by {NULL} ; NULL for none */
    unsigned uses;                 /* DAEMON_USES_*: a common flag it does not use is refused
                                      on the command line (and its environment variable, which
                                      may be set for the whole cluster, is ignored) */
};

/* Blocks SIGINT and SIGTERM in the calling thread (call before starting any
 * thread, so that daemon_wait can take them), fills f from defaults, the
 * environment and argv, and sets the log level. The strings in f are
 * borrowed from argv or the environment (the job address: static, for the
 * process's life). Returns 0, 1 when --help was printed (the caller exits
 * 0), or PIER_EINVAL with a message naming the bad flag (or the bad PORT or
 * EXTERNAL_IP variable). */
int daemon_parse(const struct daemon_spec *spec, int argc, char **argv, struct daemon_flags *f,
                 struct pier_err *err);

/* Waits for SIGINT or SIGTERM and returns the signal number. A second one
 * after that kills the process (for a shutdown that hangs). */
int daemon_wait(void);

#endif
