#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdlib.h>

#include "lib/buf.h"

static void test_append_printf(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    buf_puts(&b, "abc");
    buf_putc(&b, '-');
    buf_printf(&b, "%d/%s", 42, "x");
    assert_string_equal(b.p, "abc-42/x");
    assert_int_equal(b.len, 8);
    /* A formatted string longer than the internal scratch space. */
    char big[1000];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    buf_printf(&b, "%s!", big);
    assert_int_equal(b.len, 8 + 999 + 1);
    assert_int_equal(b.p[b.len - 1], '!');
    assert_int_equal(b.p[b.len], '\0');
    buf_free(&b);
    buf_free(&b); /* twice is harmless */
}

static void test_consume_reset_detach(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    buf_puts(&b, "hello world");
    buf_consume(&b, 6);
    assert_string_equal(b.p, "world");
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    buf_puts(&b, "again");
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.p, "");
    buf_puts(&b, "mine");
    char *s = buf_detach(&b);
    assert_string_equal(s, "mine");
    assert_null(b.p);
    free(s);
    s = buf_detach(&b); /* an empty buf detaches as "" */
    assert_string_equal(s, "");
    free(s);
}

static void test_str(void **state)
{
    (void)state;
    struct str s = {"Content-Length: 5", 14};
    assert_true(str_eq(s, "Content-Length"));
    assert_true(str_case_eq(s, "content-length"));
    assert_false(str_eq(s, "Content-Lengt"));
    assert_false(str_eq(STR_LIT(""), "x"));
    assert_true(str_eq(STR_LIT(""), ""));
    char *d = str_dup(s);
    assert_string_equal(d, "Content-Length");
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_printf),
        cmocka_unit_test(test_consume_reset_detach),
        cmocka_unit_test(test_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
