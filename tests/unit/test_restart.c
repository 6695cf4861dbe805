#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/clock.h"
#include "scheduler/restart.h"

/* 2026-11-25T16:00:00Z in ms. */
#define T0 1795622400000LL

static const struct restart_policy policy = {.base_ms = 1000, .cap_ms = 60000, .max = 8};

static json_t *ended(int restarts, const char *started, const char *finished, const char *why)
{
    json_t *j = json_pack("{s:s,s:i}", "state", "crashed", "restarts", restarts);
    if (started)
        json_object_set_new(j, "started_at", json_string(started));
    if (finished)
        json_object_set_new(j, "finished_at", json_string(finished));
    if (why)
        json_object_set_new(j, "host_error", json_string(why));
    return j;
}

static void test_parse_time(void **state)
{
    (void)state;
    int64_t us = 0;
    assert_int_equal(clock_parse_rfc3339("2026-11-25T16:00:00Z", &us), 0);
    assert_int_equal(us, T0 * 1000);
    assert_int_equal(clock_parse_rfc3339("2026-11-25T16:00:01.123456Z", &us), 0);
    assert_int_equal(us, (T0 + 1000) * 1000 + 123456);
    assert_int_equal(clock_parse_rfc3339("2026-11-25T17:00:00+01:00", &us), 0);
    assert_int_equal(us, T0 * 1000);
    assert_int_equal(clock_parse_rfc3339("2026-11-25T16:00:00 00:00", &us), 0);
    assert_int_equal(us, T0 * 1000);
    assert_int_equal(clock_parse_rfc3339("1970-01-01T00:00:00Z", &us), 0);
    assert_int_equal(us, 0);
    const char *bad[] = {"",
                         "2026-11-25",
                         "2026-11-25 16:00:00Z",
                         "2026-13-25T16:00:00Z",
                         "2026-11-25T16:00:00",
                         "2026-11-25T16:00:00.Z",
                         "2026-11-25T16:00:00Zjunk",
                         "2026-11-25T16:0a:00Z",
                         "-026-11-25T16:00:00Z",
                         "2026-11-25T 6:00:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(clock_parse_rfc3339(bad[i], &us), -1);
    assert_int_equal(clock_parse_rfc3339(NULL, &us), -1);
}

static void test_backoff_doubles_to_cap(void **state)
{
    (void)state;
    int64_t expect[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000};
    for (int k = 0; k < 8; k++) {
        cleanup_json json_t *j =
            ended(k, "2026-11-25T15:59:59Z", "2026-11-25T16:00:00Z", "exit status 1");
        struct restart_decision d;
        restart_decide(&policy, j, T0, &d);
        assert_false(d.give_up);
        assert_false(d.lost);
        assert_int_equal(d.restarts, k + 1);
        assert_int_equal(d.due_ms, T0 + expect[k]);
    }
}

static void test_gives_up_after_max(void **state)
{
    (void)state;
    cleanup_json json_t *j = ended(8, "2026-11-25T15:59:59Z", "2026-11-25T16:00:00Z", NULL);
    struct restart_decision d;
    restart_decide(&policy, j, T0, &d);
    assert_true(d.give_up);
    /* A smaller limit. */
    struct restart_policy p2 = {.base_ms = 50, .cap_ms = 3000, .max = 2};
    cleanup_json json_t *j2 = ended(2, NULL, "2026-11-25T16:00:00Z", NULL);
    restart_decide(&p2, j2, T0, &d);
    assert_true(d.give_up);
    cleanup_json json_t *j3 = ended(1, NULL, "2026-11-25T16:00:00Z", NULL);
    restart_decide(&p2, j3, T0, &d);
    assert_false(d.give_up);
    assert_int_equal(d.due_ms, T0 + 100);
}

static void test_long_run_resets(void **state)
{
    (void)state;
    /* Up for 61 s before crashing: the chain starts again. */
    cleanup_json json_t *j = ended(8, "2026-11-25T15:58:59Z", "2026-11-25T16:00:00Z", NULL);
    struct restart_decision d;
    restart_decide(&policy, j, T0, &d);
    assert_false(d.give_up);
    assert_int_equal(d.restarts, 0);
    assert_int_equal(d.due_ms, T0 + 1000);
    /* Up for exactly 60 s: still a loop. */
    cleanup_json json_t *j2 = ended(3, "2026-11-25T15:59:00Z", "2026-11-25T16:00:00Z", NULL);
    restart_decide(&policy, j2, T0, &d);
    assert_int_equal(d.restarts, 4);
}

static void test_host_lost_at_once(void **state)
{
    (void)state;
    cleanup_json json_t *j =
        ended(5, "2026-11-25T15:59:59Z", "2026-11-25T16:00:00Z", RESTART_HOST_LOST);
    struct restart_decision d;
    restart_decide(&policy, j, T0 + 5000, &d);
    assert_true(d.lost);
    assert_false(d.give_up);
    assert_int_equal(d.restarts, 5);
    assert_true(d.due_ms <= T0 + 5000);
    /* Even at the limit: a lost host is not the job's fault. */
    cleanup_json json_t *j2 = ended(8, NULL, "2026-11-25T16:00:00Z", RESTART_HOST_LOST);
    restart_decide(&policy, j2, T0, &d);
    assert_false(d.give_up);
}

static void test_missing_times(void **state)
{
    (void)state;
    /* No finished_at: created_at, else now. */
    cleanup_json json_t *j =
        json_pack("{s:s,s:s}", "state", "failed", "created_at", "2026-11-25T16:00:00Z");
    struct restart_decision d;
    restart_decide(&policy, j, T0 + 99999, &d);
    assert_int_equal(d.due_ms, T0 + 1000);
    assert_int_equal(d.restarts, 1);
    cleanup_json json_t *j2 = json_pack("{s:s,s:i}", "state", "failed", "restarts", -4);
    restart_decide(&policy, j2, T0, &d);
    assert_int_equal(d.due_ms, T0 + 1000);
    assert_int_equal(d.restarts, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_time),         cmocka_unit_test(test_backoff_doubles_to_cap),
        cmocka_unit_test(test_gives_up_after_max), cmocka_unit_test(test_long_run_resets),
        cmocka_unit_test(test_host_lost_at_once),  cmocka_unit_test(test_missing_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
