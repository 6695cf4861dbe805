/* subproc: child programs started clean, process groups stopped gently
 * (subproc.h). */
#include "lib/subproc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/clock.h"

extern char **environ;

/* How often subproc_stop_group looks whether the group is gone. */
#define STOP_POLL_MS 20

static void add_fd(posix_spawn_file_actions_t *fa, int fd, int target)
{
    if (fd == SUBPROC_INHERIT)
        return;
    if (fd == SUBPROC_DEVNULL)
        posix_spawn_file_actions_addopen(fa, target, "/dev/null", target ? O_WRONLY : O_RDONLY, 0);
    else
        posix_spawn_file_actions_adddup2(fa, fd, target);
}

int subproc_start(const struct subproc *s, pid_t *pid, struct pier_err *err)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    add_fd(&fa, s->in, 0);
    add_fd(&fa, s->out, 1);
    add_fd(&fa, s->err, 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    if (s->cwd)
        posix_spawn_file_actions_addchdir_np(&fa, s->cwd);
    posix_spawnattr_init(&at);
    /* Every signal back to its default (an ignored one would stay ignored
     * across exec) and none blocked. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (s->new_pgroup) {
        posix_spawnattr_setpgroup(&at, 0);
        flags |= POSIX_SPAWN_SETPGROUP;
    }
    posix_spawnattr_setflags(&at, flags);
    int rc = posix_spawnp(pid, s->argv[0], &fa, &at, s->argv, s->env ? s->env : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0)
        return err_set(err, -rc, "cannot run %s: %s", s->argv[0], strerror(rc));
    return 0;
}

int subproc_wait(pid_t pid)
{
    int st = 0;
    for (;;) {
        if (waitpid(pid, &st, 0) == pid)
            return st;
        if (errno != EINTR)
            return -1;
    }
}

/* Whether /proc/<name>/stat is a live (not zombie) member of group pgid. */
static bool live_member(const char *name, pid_t pgid)
{
    char path[64], text[512];
    snprintf(path, sizeof(path), "/proc/%s/stat", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return false;
    text[n] = '\0';
    /* "pid (comm) S ppid pgrp ...": comm may hold anything, up to the last ')' */
    char *end = strrchr(text, ')');
    char state = 0;
    long ppid = 0, pgrp = 0;
    if (!end || sscanf(end + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3)
        return false;
    return pgrp == pgid && state != 'Z' && state != 'X';
}

/* Whether anything of group pgid still runs. A member that exited but was
 * not reaped yet (a zombie) does not count: one whose parent died waits
 * for PID 1 to reap it, and some PID 1s (in containers) never do, which
 * would keep kill(-pgid, 0) finding it forever. */
static bool group_alive(pid_t pgid)
{
    if (kill(-pgid, 0) < 0 && errno == ESRCH)
        return false;
    DIR *d = opendir("/proc");
    if (!d)
        return true;
    bool alive = false;
    for (struct dirent *e; !alive && (e = readdir(d));)
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9')
            alive = live_member(e->d_name, pgid);
    closedir(d);
    return alive;
}

bool subproc_stop_group(pid_t pgid, pid_t leader, int grace_ms, int *status)
{
    /* The leader is reaped as soon as it exits (group_alive would see a
     * zombie of ours as gone, but reaping it is ours to do). */
    kill(-pgid, SIGTERM);
    bool ended = false;
    for (int64_t end = clock_now_ms() + grace_ms;;) {
        int st = 0;
        if (leader > 0 && waitpid(leader, &st, WNOHANG) == leader) {
            leader = 0;
            if (status)
                *status = st;
        }
        if (!group_alive(pgid)) {
            ended = true;
            break;
        }
        if (clock_now_ms() >= end)
            break;
        poll(NULL, 0, STOP_POLL_MS);
    }
    if (!ended)
        kill(-pgid, SIGKILL);
    if (leader > 0) {
        int st = subproc_wait(leader);
        if (status && st >= 0)
            *status = st;
    }
    return ended;
}
