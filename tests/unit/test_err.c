#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "lib/err.h"

static void test_set_wrap(void **state)
{
    (void)state;
    struct pier_err err = {0};
    assert_int_equal(err_set(&err, PIER_ENOTFOUND, "app '%s' not found", "web"), PIER_ENOTFOUND);
    assert_string_equal(err.msg, "app 'web' not found");
    assert_int_equal(err_wrap(&err, PIER_EINTERNAL, "deploy %d", 3), PIER_ENOTFOUND);
    assert_string_equal(err.msg, "deploy 3: app 'web' not found");
    assert_int_equal(err_set(NULL, -EIO, "ignored"), -EIO);
    assert_int_equal(err_wrap(NULL, -EIO, "ignored"), -EIO);
    /* A long prefix truncates but stays terminated. */
    char longp[400];
    memset(longp, 'p', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    char longm[600];
    memset(longm, 'm', sizeof(longm) - 1);
    longm[sizeof(longm) - 1] = '\0';
    err_set(&err, -EIO, "%s", longm);
    err_wrap(&err, -EIO, "%s", longp);
    assert_true(strlen(err.msg) < sizeof(err.msg));
    err_clear(&err);
    assert_int_equal(err.code, 0);
    assert_string_equal(err.msg, "");
}

static void test_codes(void **state)
{
    (void)state;
    assert_string_equal(err_code_name(PIER_EINVAL), "validation_error");
    assert_string_equal(err_code_name(PIER_ENOTFOUND), "not_found");
    assert_string_equal(err_code_name(PIER_EEXISTS), "object_exists");
    assert_string_equal(err_code_name(PIER_ETOOBIG), "request_body_too_big");
    assert_string_equal(err_code_name(-EIO), "unknown_error");
    assert_int_equal(err_http_status(PIER_EINVAL), 400);
    assert_int_equal(err_http_status(PIER_ENOTFOUND), 404);
    assert_int_equal(err_http_status(PIER_ECONFLICT), 409);
    assert_int_equal(err_http_status(PIER_EUNAVAIL), 503);
    assert_int_equal(err_http_status(PIER_EINTERNAL), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_wrap),
        cmocka_unit_test(test_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
