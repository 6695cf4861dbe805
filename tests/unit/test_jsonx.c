#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "lib/cleanup.h"
#include "lib/jsonx.h"

static void test_parse(void **state)
{
    (void)state;
    struct pier_err err = {0};
    json_t *j = NULL;
    assert_int_equal(jsonx_parse_object("{\"a\":1}", 7, &j, &err), 0);
    json_decref(j);
    j = NULL;
    assert_int_equal(jsonx_parse_object("[1]", 3, &j, &err), PIER_EINVAL);
    assert_null(j);
    assert_int_equal(jsonx_parse("{\"a\":1,\"a\":2}", 13, &j, &err), PIER_EINVAL);
    assert_int_equal(jsonx_parse("{\"a\":1} x", 9, &j, &err), PIER_EINVAL);
    assert_int_equal(jsonx_parse("{\"a\":", 5, &j, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "malformed JSON"));
}

static void test_getters(void **state)
{
    (void)state;
    struct pier_err err = {0};
    const char *text = "{\"n\":5,\"s\":\"12\",\"bad\":\"1x\",\"str\":\"hi\",\"b\":true,"
                       "\"o\":{},\"a\":[],\"k\":\"Zm9v\",\"kb\":\"Zm9\"}";
    cleanup_json json_t *j = NULL;
    assert_int_equal(jsonx_parse_object(text, strlen(text), &j, &err), 0);
    int64_t n = -1;
    assert_int_equal(jsonx_get_int64(j, "n", &n, &err), 1);
    assert_int_equal(n, 5);
    assert_int_equal(jsonx_get_int64(j, "s", &n, &err), 1);
    assert_int_equal(n, 12);
    assert_int_equal(jsonx_get_int64(j, "missing", &n, &err), 0);
    assert_int_equal(n, 12);
    assert_int_equal(jsonx_get_int64(j, "bad", &n, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "\"bad\""));
    assert_int_equal(jsonx_get_int64(j, "o", &n, &err), PIER_EINVAL);
    const char *s = NULL;
    assert_int_equal(jsonx_get_str(j, "str", &s, &err), 1);
    assert_string_equal(s, "hi");
    assert_int_equal(jsonx_get_str(j, "n", &s, &err), PIER_EINVAL);
    bool b = false;
    assert_int_equal(jsonx_get_bool(j, "b", &b, &err), 1);
    assert_true(b);
    assert_int_equal(jsonx_get_bool(j, "s", &b, &err), PIER_EINVAL);
    json_t *o = NULL;
    assert_int_equal(jsonx_get_obj(j, "o", &o, &err), 1);
    assert_int_equal(jsonx_get_obj(j, "a", &o, &err), PIER_EINVAL);
    assert_int_equal(jsonx_get_array(j, "a", &o, &err), 1);
    cleanup_buf struct buf kb = BUF_INIT;
    assert_int_equal(jsonx_get_b64(j, "k", &kb, &err), 1);
    assert_string_equal(kb.p, "foo");
    assert_int_equal(jsonx_get_b64(j, "kb", &kb, &err), PIER_EINVAL);
}

static void test_dump(void **state)
{
    (void)state;
    cleanup_json json_t *j = json_object();
    jsonx_set_int64_str(j, "rev", 9007199254740993LL);
    jsonx_set_b64(j, "key", "foo", 3);
    cleanup_buf struct buf b = BUF_INIT;
    jsonx_dump(&b, j);
    assert_string_equal(b.p, "{\"rev\":\"9007199254740993\",\"key\":\"Zm9v\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_dump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
