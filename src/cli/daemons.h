/* daemons: what `pier up`, `pier down` and `pier status` share about a
 * cluster's state directory on this machine: where it is, what
 * STATE/cluster.json says (name, domain, ports, host id), and the daemons
 * started from it (`pierd store`, `pierd host`), each known by its pid
 * file STATE/NAME.pid and logging to STATE/NAME.log.
 *
 * A pid file is trusted only while /proc/PID/cmdline is still the pierd
 * it names and carries this state dir's data dir, so a pid reused by an
 * unrelated process is never signalled. */
#ifndef PIER_CLI_DAEMONS_H
#define PIER_CLI_DAEMONS_H

#include <stdbool.h>
#include <sys/types.h>

#include "lib/err.h"

/* What STATE/cluster.json records:
 *   {"version":1,"name","domain","listen_ip","stack"?,"host_id"?,"joined"?,
 *    "store"?:{"urls":"URL,...","external":true},
 *    "ports":{"store","host","http","https","ssh","jobs":"LO-HI"}} */
struct cluster_state {
    char *name;                 /* the CLI config's cluster name ("default") */
    char *domain;               /* apps at APP.DOMAIN */
    char *listen_ip;            /* the address every daemon and the router listen on */
    char *stack;                /* the host agent's --stack, or NULL: the host's binds */
    char *host_id;              /* the agent's id, NULL until its first start */
    int store, host, http, ssh; /* ports */
    int https;                  /* the router's https port; 0 in a cluster.json of before TLS */
    int jobs_lo, jobs_hi;       /* the jobs' port range */
    char *store_urls; /* "URL[,URL...]": a store not started here (`pier up --store`, or the
                       * joined cluster's), so no `pierd store` of this dir; NULL: ours */
    char *joined;     /* the controller URL of `pier up --join`, or NULL (a first host) */
};

/* The state dir: flag if set, else $PIER_HOME, else /var/lib/pier for root,
 * else ~/.local/share/pier. Returns a new string. */
char *state_dir_resolve(const char *flag);

/* Reads STATE/cluster.json into *cs (zeroed first). PIER_ENOTFOUND when it
 * does not exist, PIER_EINVAL naming the file when it cannot be read. */
int cluster_state_load(const char *state, struct cluster_state *cs, struct pier_err *err);
/* Writes it atomically (0600). */
int cluster_state_save(const char *state, const struct cluster_state *cs, struct pier_err *err);
void cluster_state_free(struct cluster_state *cs);

/* One pierd daemon of a state dir. */
struct pierd_daemon {
    const char *name;     /* "store": the subcommand, and STATE/store.pid, .log */
    const char *state;    /* the state dir */
    const char *data_dir; /* its --data-dir, which marks it as this state dir's */
    const char *url;      /* http://IP:PORT, where it answers /.well-known/status */
};

/* The pid of d when its pid file names a live pierd of this state dir,
 * else 0. */
pid_t pierd_daemon_running(const struct pierd_daemon *d);

/* Starts pierd (the executable at pierd) with argv (argv[0] is ignored and
 * replaced) as a daemon: double-forked, its own session, output appended
 * to STATE/NAME.log, stdin /dev/null, env as given (NULL-terminated
 * "K=V"), its pid written atomically to STATE/NAME.pid. Then waits up to
 * timeout_s for d->url/.well-known/status to answer 200, saying on stderr
 * what it waits for. On failure (it ended, or did not answer in time: it is
 * then stopped) the message says so and err names the log; the pid file is
 * removed. */
int pierd_daemon_start(const struct pierd_daemon *d, const char *pierd, char *const *argv,
                       char *const *env, int timeout_s, pid_t *pid, struct pier_err *err);

/* Stops the daemon d if it runs: SIGTERM, then SIGKILL after grace_s.
 * Removes its pid file. Returns 0 when none ran, 1 when it stopped after
 * SIGTERM, 2 when it had to be killed; *pid gets its pid. */
int pierd_daemon_stop(const struct pierd_daemon *d, int grace_s, pid_t *pid);

/* Whether pid is a process that has not ended (a zombie has). */
bool proc_alive(pid_t pid);

/* Whether something answers 200 at url/.well-known/status within
 * timeout_ms. */
bool status_answers(const char *url, long timeout_ms);

#endif
