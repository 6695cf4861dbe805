/* subproc: a child starts with its signals as a fresh process has them
 * whatever the parent blocks or ignores, gets the descriptors, directory
 * and process group asked for; a process group is stopped with a grace
 * that what traps SIGTERM gets, and SIGKILL for what ignores it. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/clock.h"
#include "lib/subproc.h"

/* Runs sh -c script with stdout to a pipe; returns what it printed. */
static void run_sh(const char *script, const char *cwd, bool pgroup, char *out, size_t size,
                   pid_t *pid_out)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    const struct subproc sp = {.argv = argv,
                               .cwd = cwd,
                               .in = SUBPROC_DEVNULL,
                               .out = fds[1],
                               .err = SUBPROC_INHERIT,
                               .new_pgroup = pgroup};
    pid_t pid;
    assert_int_equal(subproc_start(&sp, &pid, NULL), 0);
    close(fds[1]);
    size_t n = 0;
    ssize_t k;
    while (n + 1 < size && (k = read(fds[0], out + n, size - 1 - n)) > 0)
        n += (size_t)k;
    out[n] = '\0';
    close(fds[0]);
    if (pid_out)
        *pid_out = pid;
    int st = subproc_wait(pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_signals_fds_cwd_pgroup(void **state)
{
    (void)state;
    /* What a daemon does: SIGPIPE ignored, SIGTERM blocked. */
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, &old);
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigaction(SIGPIPE, &ign, &old_pipe);

    char out[512];
    /* /proc/self/status: SigBlk and SigIgn are hex masks; SIGPIPE is bit 12 */
    run_sh("grep -E '^Sig(Blk|Ign)' /proc/self/status; pwd; cut -d' ' -f5 /proc/$$/stat; echo $$",
           "/tmp", true, out, sizeof(out), NULL);
    assert_non_null(strstr(out, "SigBlk:\t0000000000000000\n"));
    char ign_line[64];
    assert_int_equal(sscanf(strstr(out, "SigIgn:"), "SigIgn:\t%63s", ign_line), 1);
    unsigned long long ign_mask = strtoull(ign_line, NULL, 16);
    assert_false(ign_mask & (1ULL << (SIGPIPE - 1)));
    assert_non_null(strstr(out, "\n/tmp\n"));
    /* the shell's process group, then its pid: the same number */
    long pgid = 0, pid = 0;
    char *after_cwd = strstr(out, "/tmp\n") + 5;
    assert_int_equal(sscanf(after_cwd, "%ld %ld", &pgid, &pid), 2);
    assert_int_equal(pgid, pid);

    /* stdin from /dev/null, nothing but 0, 1, 2 open */
    run_sh("cat; ls /proc/self/fd | wc -l", NULL, false, out, sizeof(out), NULL);
    assert_int_equal(atoi(out), 4); /* 0, 1, 2 and ls's own directory */

    sigaction(SIGPIPE, &old_pipe, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void test_missing_program(void **state)
{
    (void)state;
    char *argv[] = {"no-such-program-here", NULL};
    const struct subproc sp = {
        .argv = argv, .in = SUBPROC_DEVNULL, .out = SUBPROC_DEVNULL, .err = SUBPROC_DEVNULL};
    pid_t pid;
    struct pier_err err = {0};
    assert_true(subproc_start(&sp, &pid, &err) < 0);
    assert_non_null(strstr(err.msg, "no-such-program-here"));
}

/* Starts script in a group of its own and waits until it printed a line. */
static pid_t start_group(const char *script)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    const struct subproc sp = {.argv = argv,
                               .in = SUBPROC_DEVNULL,
                               .out = fds[1],
                               .err = SUBPROC_INHERIT,
                               .new_pgroup = true};
    pid_t pid;
    assert_int_equal(subproc_start(&sp, &pid, NULL), 0);
    close(fds[1]);
    char c;
    assert_int_equal(read(fds[0], &c, 1), 1);
    close(fds[0]);
    return pid;
}

static void test_stop_group_grace(void **state)
{
    (void)state;
    char done[] = "/tmp/test_subproc_XXXXXX";
    int fd = mkstemp(done);
    assert_true(fd >= 0);
    close(fd);
    unlink(done);
    /* The leader dies of SIGTERM at once; a child of it traps SIGTERM and
     * needs 300 ms to clean up: it gets them. (Its loop of short sleeps:
     * a background `sleep 30` caught between fork and exec when SIGTERM
     * comes would miss it and outlive the test.) */
    char script[512];
    snprintf(script, sizeof(script),
             "sh -c 'trap \"sleep 0.3; touch %s; exit 0\" TERM; echo ready; "
             "while :; do sleep 0.05; done' & read x </dev/null; sleep 30",
             done);
    pid_t pid = start_group(script);
    int st = 0;
    int64_t t0 = clock_now_ms();
    assert_true(subproc_stop_group(pid, pid, 5000, &st));
    int64_t took = clock_now_ms() - t0;
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    assert_int_equal(access(done, F_OK), 0);
    assert_true(took >= 250 && took < 4000);
    unlink(done);

    /* What ignores SIGTERM is killed once the grace is over. */
    pid = start_group("trap '' TERM; sleep 30 & echo ready; wait");
    t0 = clock_now_ms();
    assert_false(subproc_stop_group(pid, pid, 300, &st));
    took = clock_now_ms() - t0;
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_true(took >= 300 && took < 3000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signals_fds_cwd_pgroup),
        cmocka_unit_test(test_missing_program),
        cmocka_unit_test(test_stop_group_grace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
