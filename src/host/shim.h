/* shim: the small process that owns one job's container (like conmon).
 *
 * The agent starts `pierd-shim` per job (a binary of its own, linked with
 * libc and jansson only: it starts in about 1 ms, where pierd, which loads
 * libcurl, OpenSSL, libmicrohttpd and SQLite, takes about 6 ms, and that
 * was half of what the agent added to a container's start); the shim starts the container with
 * `crun run --detach`, becomes its parent (it is a child subreaper), owns
 * its stdio (pipes, or the TTY's master from crun's console socket), writes
 * the job's log (joblog.h), serves attach and control requests on a unix
 * socket, and when the container ends records how it ended and removes it
 * from crun. The agent can die or be upgraded meanwhile: the shim runs in
 * its own session and does not notice.
 *
 * Files in the job directory:
 *   shim.pid       "<pid> <start time>\n" (start time: field 22 of
 *                  /proc/<pid>/stat), written before the container starts
 *   shim.sock      the control socket (removed when the shim exits)
 *   container.pid  the container's init, as crun wrote it
 *   crun.log       crun's own messages
 *   shim.log       the shim's own log lines (its stderr, when shim_spawn
 *                  started it)
 *   exit.json      written (atomically) when the container has ended:
 *                  {"status":N,"signal":S,"oom":bool,"finished_at":"RFC3339"}
 *                  status is the exit code, or 128+S when killed by signal S
 *                  (signal 0 when it exited); oom is true when the memory
 *                  cgroup's OOM killer fired. A container that never started
 *                  gets {"status":-1,"error":"..."}.
 *
 * Control socket: a client connects and sends one line:
 *   "signal N\n"        sends signal N to the container's init; "ok\n"
 *   "stop MS\n"         SIGTERM to every process of the container, SIGKILL
 *                       to all after MS milliseconds unless it has ended; "ok\n"
 *   "attach\n"          the connection then carries attach frames (attach.h):
 *                       output and the exit status one way, stdin, signals
 *                       and resizes the other. Output nobody was attached to
 *                       (up to 64 KiB) is sent to the next client first.
 * A bad line gets "error <message>\n" and the connection is closed (after
 * "attach\n", a refusal is an error frame). Once the container's init has
 * exited the socket is closed and removed, so a client finds nothing there.
 *
 * SIGTERM or SIGINT to the shim itself stops the container as "stop 10000"
 * would (a host going down); the shim still records the exit. */
#ifndef PIER_HOST_SHIM_H
#define PIER_HOST_SHIM_H

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "lib/err.h"

/* `pierd-shim --dir JOBDIR --id JOBID [--crun PATH] [--crun-root DIR]
 *  [--tty COLSxROWS] [--stdin] [--log-max-bytes N] [--log-max-files N]
 *  [--no-log]`. Expects fd 3 to be the start pipe: it writes "started <pid>\n"
 * or "failed <reason>\n" there once, then closes it. */
int shim_main(int argc, char **argv);

/* --- the agent's side --- */
struct shim_spawn_opts {
    const char *shim; /* path of the pierd-shim binary */
    const char *job_dir;
    const char *job_id;
    const char *crun;      /* crun binary; NULL: "crun" on PATH */
    const char *crun_root; /* crun --root; NULL: crun's default */
    bool tty;
    int tty_columns, tty_lines;
    bool stdin_open;
    bool no_log;
    bool init;            /* the container's init is tini (spec "init"): see pierd-shim --init */
    size_t log_max_bytes; /* 0: default */
    int log_max_files;    /* 0: default */
    int timeout_ms;       /* how long to wait for "started" (0: 30 s) */
};
/* Starts a shim in its own session and waits for it to report. On success
 * *shim_pid is the shim (a child of the caller, to be reaped by it) and
 * *container_pid the container's init. On failure the message is the
 * shim's reason (crun's own error, when crun said one). */
int shim_spawn(const struct shim_spawn_opts *o, pid_t *shim_pid, pid_t *container_pid,
               struct pier_err *err);
/* Sends "signal N" or "stop MS" to the shim of job_dir. PIER_ENOTFOUND when
 * no shim answers there (the job has ended). */
int shim_signal(const char *job_dir, int sig, struct pier_err *err);
int shim_stop(const char *job_dir, int grace_ms, struct pier_err *err);
/* Connects to the shim of job_dir and asks to attach. Returns the connected
 * socket (the caller relays attach frames and closes it) or a negative
 * error (PIER_ENOTFOUND: the job has ended). */
int shim_attach(const char *job_dir, struct pier_err *err);
/* Reads <job_dir>/shim.pid and checks that the process still runs and is
 * the same one (start time). Returns its pid, or 0 when it is gone. */
pid_t shim_alive(const char *job_dir);

/* --- shared by shim.c, shim_conn.c and shim_client.c --- */
/* Fills *sa and *len with the unix socket address of <job_dir>/<name>. A
 * path too long for sun_path (108 bytes) goes through /proc/self/fd/N, N
 * being *dirfd, a descriptor of job_dir opened here that the caller closes
 * after its bind or connect (-1 when none was needed). */
int shim_sock_addr(const char *job_dir, const char *name, struct sockaddr_un *sa, socklen_t *len,
                   int *dirfd);
/* The start time (field 22 of /proc/<pid>/stat) of a running process, or 0
 * when pid is gone or a zombie. */
unsigned long long shim_proc_start(pid_t pid);

#endif
