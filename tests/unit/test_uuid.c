/* uuid: the format, no repeats, and no ids shared by a forked child with
 * its parent (uuid_new reads randomness ahead per thread). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/uuid.h"

static void test_format_and_no_repeats(void **state)
{
    (void)state;
    char prev[UUID_LEN] = "", id[UUID_LEN];
    for (int i = 0; i < 1000; i++) { /* past one 4 KiB refill */
        uuid_new(id);
        assert_true(uuid_ok(id));
        assert_int_equal(id[14], '4');
        assert_true(strchr("89ab", id[19]) != NULL);
        assert_string_not_equal(id, prev);
        memcpy(prev, id, sizeof(id));
    }
}

static void test_fork_child_differs(void **state)
{
    (void)state;
    char first[UUID_LEN], parent[UUID_LEN], child[UUID_LEN];
    uuid_new(first); /* fills this thread's buffer */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        uuid_new(child);
        _exit(write(fds[1], child, sizeof(child)) == (ssize_t)sizeof(child) ? 0 : 1);
    }
    uuid_new(parent);
    assert_int_equal(read(fds[0], child, sizeof(child)), (ssize_t)sizeof(child));
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_string_not_equal(parent, child);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_and_no_repeats),
        cmocka_unit_test(test_fork_child_differs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
