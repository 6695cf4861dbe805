/* jobspec: a job record from the store, read and checked.
 *
 * A job lives at /pier/v1/jobs/<id> (docs/host.md has the whole record).
 * Its writers (the scheduler, the agent's own API, bootstrap) own the spec
 * fields; the agent owns the observed ones (state, exit_status, host_error,
 * healthy, allocated_ports, started_at, finished_at). This module reads the
 * spec part, strictly: a record the agent cannot run is refused with a
 * reason that names the field ("env: value of FOO is 10485760 bytes, the
 * limit is 131072"), and nothing is started.
 *
 * Field names follow Flynn's new_job and host job (args, env, resources
 * with memory/cpu/max_fd/max_procs limits, tty, tty_columns, tty_lines);
 * what Flynn had no field for is named in docs/host.md. */
#ifndef PIER_HOST_JOBSPEC_H
#define PIER_HOST_JOBSPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/err.h"

/* Limits on what a spec may ask for. Sizes outside are refused. */
#define JOBSPEC_MAX_ID 64          /* a job id is also the container's hostname */
#define JOBSPEC_MAX_ARGS 1024      /* entries in args */
#define JOBSPEC_MAX_ENV 1024       /* entries in env */
#define JOBSPEC_MAX_STRING 131072  /* one arg or one env value (Linux's MAX_ARG_STRLEN) */
#define JOBSPEC_MAX_EXEC (1 << 20) /* args + env together, in bytes */
#define JOBSPEC_MAX_PORTS 16
#define JOBSPEC_MAX_MOUNTS 16
#define JOBSPEC_MAX_TTY 10000        /* columns or lines, as pierd-shim takes them */
#define JOBSPEC_MIN_MEMORY (4 << 20) /* below this nothing starts */

/* Defaults for what a spec leaves out (Flynn's defaults where it had them). */
#define JOBSPEC_DEFAULT_MEMORY (1024LL << 20) /* 1 GiB */
#define JOBSPEC_DEFAULT_CPU 1000              /* milli-CPUs: one core's worth of shares */
#define JOBSPEC_DEFAULT_MAX_FD 10000
#define JOBSPEC_DEFAULT_MAX_PROCS 1024
#define JOBSPEC_DEFAULT_STOP_GRACE_MS 10000

enum jobspec_check_type { JOBSPEC_CHECK_NONE, JOBSPEC_CHECK_TCP, JOBSPEC_CHECK_HTTP };

/* A health check of one port's service. */
struct jobspec_check {
    enum jobspec_check_type type;
    char *path;      /* http: request path, default "/" */
    int status;      /* http: expected status, default 200 (0: any 2xx/3xx) */
    int interval_ms; /* default 1000; 100 ms .. 1 h */
    int timeout_ms;  /* per attempt, default min(interval, 2000) */
    int threshold;   /* consecutive results to change state, default 2; 1 .. 100 */
};

struct jobspec_port {
    int port;      /* 0: the agent picks one from its range */
    char *proto;   /* "tcp" (default) or "udp" */
    char *service; /* service.name: register in discovery under it while up; NULL: none */
    struct jobspec_check check; /* service.check */
};

/* A bind of a host path into the job (Flynn's host.Mount names). Both
 * paths are absolute and normalised (no "." or "..", no "//", no trailing
 * '/'); the target is not "/", not under /proc, /sys or /dev, not /app,
 * /tmp or /.pier or under them, and no target lies inside another. That
 * the location exists is checked when the job starts (bundle_write). */
struct jobspec_mount {
    char *location; /* the host path */
    char *target;   /* where the job sees it */
    bool writeable; /* default false: read-only */
};

/* The spec part of a job record. Strings are owned by the struct. */
struct jobspec {
    char *id;                   /* "<host id>-<uuid>" */
    char *host_id;              /* must be the agent's own id */
    char *app, *release, *type; /* copied through for logs and discovery meta; may be NULL */
    bool desired_up;            /* desired_state: "up" (default) or "down" */
    int stop_grace_ms;          /* stop_grace in seconds (a number; default 10) */

    char **args; /* n_args >= 1, NULL-terminated too */
    size_t n_args;
    char **env; /* "NAME=value" strings, n_env of them, NULL-terminated too */
    size_t n_env;
    char *working_dir; /* absolute; default "/app" */

    char *stack; /* artifact.stack: NULL (the agent's default), "host", or an absolute path */
    char *slug;  /* artifact.slug: http://, https:// or file:// URL of a .tar.gz, or NULL */
    bool pierd;  /* artifact.pierd: the agent's own executable bound read-only at /app/pierd
                    (system apps); never with a slug */

    int64_t memory;    /* bytes; resources.memory.limit */
    int64_t cpu;       /* milli-CPUs; resources.cpu.limit */
    int64_t max_fd;    /* resources.max_fd.limit */
    int64_t max_procs; /* resources.max_procs.limit */

    struct jobspec_mount *mounts; /* "mounts": at most JOBSPEC_MAX_MOUNTS, in order */
    size_t n_mounts;
    char **caps; /* "linux_capabilities": names of Docker's default set ("CAP_NET_RAW"), each
                    once, beyond the three every job has (jobspec_cap_ok); NULL-terminated */
    size_t n_caps;

    struct jobspec_port *ports; /* ports absent: one port picked by the agent; []: none */
    size_t n_ports;

    bool tty;
    int tty_columns, tty_lines; /* default 80 x 24 */
    bool stdin_open;            /* "stdin": keep a stdin pipe for attach (always with tty) */
    bool init;                  /* "init": run the args under tini, not as pid 1 */
    bool disable_log;
};

/* Reads and checks the spec fields of a job record (a JSON object).
 * Returns 0 with *out new (jobspec_free), or PIER_EINVAL with a message
 * naming the field and what is wrong. Never starts or allocates anything
 * outside the struct. */
int jobspec_parse(const json_t *rec, struct jobspec **out, struct pier_err *err);
void jobspec_free(struct jobspec *s);

/* Whether id is a valid job id for host_id: "<host_id>-" followed by 1..
 * characters of [A-Za-z0-9_.-], JOBSPEC_MAX_ID in all. */
bool jobspec_id_ok(const char *id, const char *host_id);

/* Whether name is a capability a job may ask for in linux_capabilities:
 * one of the set Docker keeps by default (CAP_CHOWN, CAP_DAC_OVERRIDE,
 * CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW, CAP_SETGID, CAP_SETUID,
 * CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL,
 * CAP_AUDIT_WRITE). */
bool jobspec_cap_ok(const char *name);

/* Parses a duration: a number of seconds (JSON number) or a string like
 * "250ms", "2s", "1m", "1h". Returns 0 and *ms, or PIER_EINVAL. */
int jobspec_duration_ms(const json_t *v, int64_t *ms, struct pier_err *err);

#endif
