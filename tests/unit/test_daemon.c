#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "lib/daemon.h"

static const char *tags;
static const struct daemon_opt opts[] = {
    {"tags", "K=V", "host tags", &tags},
    {NULL, NULL, NULL, NULL},
};
static const struct daemon_spec spec = {.sub = "test",
                                        .summary = "a test daemon",
                                        .default_listen = "127.0.0.1:9",
                                        .opts = opts,
                                        .uses = DAEMON_USES_LISTEN | DAEMON_USES_STORE |
                                                DAEMON_USES_DATA_DIR | DAEMON_USES_KEY};
/* A subcommand that keeps no files and needs no store. */
static const struct daemon_spec narrow = {
    .sub = "narrow", .summary = "uses little", .default_listen = NULL, .uses = DAEMON_USES_KEY};

static int parse(int argc, char **argv, struct daemon_flags *f, struct pier_err *err)
{
    tags = NULL;
    return daemon_parse(&spec, argc, argv, f, err);
}

static void test_defaults_and_env(void **state)
{
    (void)state;
    setenv("PIER_STORE", "http://127.0.0.1:1", 1);
    setenv("PIER_DATA_DIR", "/tmp/x", 1);
    unsetenv("PIER_KEY");
    unsetenv("PIER_LOG_LEVEL");
    struct daemon_flags f;
    struct pier_err err = {0};
    assert_int_equal(parse(0, NULL, &f, &err), 0);
    assert_string_equal(f.listen, "127.0.0.1:9");
    assert_string_equal(f.store, "http://127.0.0.1:1");
    assert_string_equal(f.data_dir, "/tmp/x");
    assert_null(f.key);
    /* Flags win over the environment. */
    char *argv[] = {"--store", "http://s:2", "--listen=0.0.0.0:80", "--tags", "zone=a",
                    "--key",   "k",          "--log-level",         "warn"};
    assert_int_equal(parse(9, argv, &f, &err), 0);
    assert_string_equal(f.store, "http://s:2");
    assert_string_equal(f.listen, "0.0.0.0:80");
    assert_string_equal(tags, "zone=a");
    assert_string_equal(f.key, "k");
    unsetenv("PIER_STORE");
    unsetenv("PIER_DATA_DIR");
}

static void test_bad_flags(void **state)
{
    (void)state;
    struct daemon_flags f;
    struct pier_err err = {0};
    char *unknown[] = {"--nope", "x"};
    assert_int_equal(parse(2, unknown, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "--nope"));
    char *missing[] = {"--listen"};
    assert_int_equal(parse(1, missing, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "needs a value"));
    char *stray[] = {"stray"};
    assert_int_equal(parse(1, stray, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "stray"));
    char *level[] = {"--log-level", "loud"};
    assert_int_equal(parse(2, level, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "loud"));
}

static void test_unused_common_flags(void **state)
{
    (void)state;
    struct daemon_flags f;
    struct pier_err err = {0};
    /* The environment is the cluster's: variables a subcommand does not use
     * are ignored, but a flag it does not use is a mistake to point out. */
    setenv("PIER_STORE", "http://127.0.0.1:1", 1);
    setenv("PIER_KEY", "k", 1);
    assert_int_equal(daemon_parse(&narrow, 0, NULL, &f, &err), 0);
    assert_null(f.store);
    assert_null(f.listen);
    assert_string_equal(f.key, "k");
    char *argv[] = {"--data-dir", "/tmp"};
    assert_int_equal(daemon_parse(&narrow, 2, argv, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "pierd narrow does not use --data-dir"));
    unsetenv("PIER_STORE");
    unsetenv("PIER_KEY");
}

static void test_port_from_a_job(void **state)
{
    (void)state;
    struct daemon_flags f;
    struct pier_err err = {0};
    setenv("PORT", "20003", 1);
    unsetenv("EXTERNAL_IP");
    assert_int_equal(parse(0, NULL, &f, &err), 0);
    assert_string_equal(f.listen, "127.0.0.1:20003");
    setenv("EXTERNAL_IP", "10.0.0.7", 1);
    assert_int_equal(parse(0, NULL, &f, &err), 0);
    assert_string_equal(f.listen, "10.0.0.7:20003");
    setenv("EXTERNAL_IP", "fd00::7", 1);
    assert_int_equal(parse(0, NULL, &f, &err), 0);
    assert_string_equal(f.listen, "[fd00::7]:20003");
    /* An explicit --listen wins. */
    char *argv[] = {"--listen", "127.0.0.1:5"};
    assert_int_equal(parse(2, argv, &f, &err), 0);
    assert_string_equal(f.listen, "127.0.0.1:5");
    /* A bad PORT is an error naming it. */
    const char *bad[] = {"0", "65536", "12x", "-1", " 80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("PORT", bad[i], 1);
        assert_int_equal(parse(0, NULL, &f, &err), PIER_EINVAL);
        assert_non_null(strstr(err.msg, "PORT"));
    }
    setenv("PORT", "80", 1);
    setenv("EXTERNAL_IP", "1.2.3.4 evil", 1);
    assert_int_equal(parse(0, NULL, &f, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "EXTERNAL_IP"));
    /* A subcommand without --listen ignores PORT. */
    setenv("PORT", "bad", 1);
    assert_int_equal(daemon_parse(&narrow, 0, NULL, &f, &err), 0);
    assert_null(f.listen);
    unsetenv("PORT");
    unsetenv("EXTERNAL_IP");
}

static void test_help(void **state)
{
    (void)state;
    struct daemon_flags f;
    struct pier_err err = {0};
    char *argv[] = {"--help"};
    assert_int_equal(parse(1, argv, &f, &err), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_env),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_unused_common_flags),
        cmocka_unit_test(test_port_from_a_job),
        cmocka_unit_test(test_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
