/* shim_int: what shim.c (start-up, crun, the exit, the loop) and
 * shim_conn.c (the control socket and its clients) share. Private to
 * `pierd-shim`: nothing else includes it. What the shim promises is in
 * shim.h. */
#ifndef PIER_HOST_SHIM_INT_H
#define PIER_HOST_SHIM_INT_H

#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "host/joblog.h"
#include "lib/buf.h"
#include "lib/clock.h"

#define OUT_CHUNK (16 << 10) /* read from the container, or a client, at once */
#define MAX_CONNS 32         /* control connections at once */

struct shim_opts {
    const char *dir, *id, *crun, *crun_root;
    bool tty, stdin_open, no_log;
    bool init; /* --init: the container's init is tini, which passes signals on */
    unsigned short cols, rows;
    size_t log_max_bytes;
    int log_max_files;
};

struct shim_output {
    int fd; /* -1 once at EOF */
    enum joblog_stream stream;
};

/* One control connection; shim_conn.c's alone. */
struct shim_conn;

struct shim {
    struct shim_opts o;
    char *dir; /* absolute */
    int dirfd, sigfd, start_fd, listen_fd;
    struct shim_output outs[3]; /* crun's stdout pipe, stderr pipe, the TTY master */
    int master;                 /* the TTY master (also outs[2].fd and in_fd) */
    int in_fd;                  /* where stdin frames go: stdin pipe or master */
    struct buf in_q;
    bool in_eof; /* close the stdin pipe once in_q is written */
    struct joblog_writer *log;
    struct buf backlog; /* frames nobody was attached to, for the next attacher */
    struct shim_conn *conns[MAX_CONNS];
    char cgroup[PATH_MAX]; /* linux.cgroupsPath */
    pid_t init;
    bool exited;
    int wstatus;
    char finished_at[CLOCK_RFC3339_LEN];
    bool crun_ran;
    bool term; /* SIGTERM seen */
    int64_t kill_at, drain_until;
};

/* --- shim.c --- */
/* SIGTERM to every process of the container, SIGKILL to all after grace_ms
 * (unless an earlier kill is already due). Nothing once the init exited. */
void shim_begin_stop(struct shim *s, int grace_ms);

/* --- shim_conn.c --- */
/* Creates shim.sock (mode 0600) and listens on it: s->listen_fd, which is
 * left for shim_conn_unlisten to close on failure. Returns 0 or -errno. */
int shim_conn_listen(struct shim *s);
/* Closes the listener and removes shim.sock; nothing when already done. */
void shim_conn_unlisten(struct shim *s);
/* Accepts every pending connection (refusing those past MAX_CONNS). */
void shim_conn_accept(struct shim *s);
/* Adds a pollfd for each client at p[n], with its slot in who[n]; returns
 * the new n. Clients are not read while the stdin queue is full. */
int shim_conn_poll_add(struct shim *s, struct pollfd *p, int *who, int n);
/* Acts on what poll reported in p for the client in slot i (nothing when
 * that slot no longer holds p->fd). */
void shim_conn_ready(struct shim *s, int i, const struct pollfd *p);
/* Drops the clients whose command line is overdue at now; returns the
 * earliest deadline still pending, 0 when none. */
int64_t shim_conn_expire(struct shim *s, int64_t now);
/* Container output: to the log and to attached clients, or to the replay
 * backlog when nobody is attached. */
void shim_conn_deliver(struct shim *s, enum joblog_stream stream, const char *data, size_t n);
/* Writes what it can of s->in_q to the container's stdin without blocking;
 * closes the stdin pipe once it is written and the client ended its input. */
void shim_write_stdin(struct shim *s);
/* Sends attached clients the end of output and the exit status, and waits
 * up to a second for them to take it. */
void shim_conn_send_exit(struct shim *s, int status);
/* Closes every client connection. */
void shim_conn_close_all(struct shim *s);

#endif
