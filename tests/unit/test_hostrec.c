#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/hostrec.h"

/* The host id: its rules and its keeping in the data dir. The record under
 * its lease is tested against a real store in tests/e2e/test_host.py. */

static void test_id_rules(void **state)
{
    (void)state;
    assert_true(hostrec_id_ok("h1"));
    assert_true(hostrec_id_ok("abcdefghijklmnopqrstuvwx"));
    assert_false(hostrec_id_ok("abcdefghijklmnopqrstuvwxy")); /* 25 */
    assert_false(hostrec_id_ok(""));
    assert_false(hostrec_id_ok("h-1"));
    assert_false(hostrec_id_ok("H1"));
    assert_false(hostrec_id_ok("h 1"));
}

static void test_id_kept(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_hostrec.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char id[HOSTREC_MAX_ID + 1], again[HOSTREC_MAX_ID + 1];
    struct pier_err err = {0};

    assert_int_equal(hostrec_load_id(dir, NULL, id, &err), 0);
    assert_true(hostrec_id_ok(id));
    assert_int_equal(hostrec_load_id(dir, NULL, again, &err), 0);
    assert_string_equal(id, again);
    /* Asking for the id it has is fine; another one is refused. */
    assert_int_equal(hostrec_load_id(dir, id, again, &err), 0);
    assert_int_equal(hostrec_load_id(dir, "other", again, &err), PIER_ECONFLICT);
    assert_non_null(strstr(err.msg, id));
    assert_int_equal(hostrec_load_id(dir, "Bad-Id", again, &err), PIER_EINVAL);

    char path[256];
    snprintf(path, sizeof(path), "%s/host-id", dir);
    FILE *f = fopen(path, "w");
    fputs("not an id!\n", f);
    fclose(f);
    assert_int_equal(hostrec_load_id(dir, NULL, again, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "host-id"));
    unlink(path);

    assert_int_equal(hostrec_load_id(dir, "chosen1", id, &err), 0);
    assert_string_equal(id, "chosen1");
    assert_int_equal(hostrec_load_id(dir, NULL, again, &err), 0);
    assert_string_equal(again, "chosen1");
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_rules),
        cmocka_unit_test(test_id_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
