#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "lib/cleanup.h"
#include "lib/discover.h"

/* What needs no store: names, ids and the JSON shape. Registration, lists,
 * watches and leaders run against real stores in tests/e2e/test_discovery.py. */

static void test_service_names(void **state)
{
    (void)state;
    struct pier_err err = {0};
    assert_int_equal(discover_check_service("web", &err), 0);
    assert_int_equal(discover_check_service("app-1.web_2", &err), 0);
    assert_int_equal(discover_check_service("", &err), PIER_EINVAL);
    assert_int_equal(discover_check_service("-web", &err), PIER_EINVAL);
    assert_int_equal(discover_check_service("Web", &err), PIER_EINVAL);
    assert_int_equal(discover_check_service("a/b", &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "a/b"));
    char longname[130];
    memset(longname, 'a', 128);
    longname[128] = '\0';
    assert_int_equal(discover_check_service(longname, &err), 0);
    longname[128] = 'a';
    longname[129] = '\0';
    assert_int_equal(discover_check_service(longname, &err), PIER_EINVAL);
}

static void test_instance_id(void **state)
{
    (void)state;
    char id[33];
    /* Flynn's instance id: MD5 of "<proto>-<addr>". */
    discover_instance_id("tcp", "127.0.0.1:8080", id);
    assert_string_equal(id, "fcec7f0b882563c82ac3edc89d9ee7be");
    char other[33];
    discover_instance_id("http", "127.0.0.1:8080", other);
    assert_string_not_equal(id, other);
}

static void test_instance_json(void **state)
{
    (void)state;
    struct discover_instance in = {.id = "abc",
                                   .service = "web",
                                   .addr = "127.0.0.1:1",
                                   .proto = "tcp",
                                   .meta = json_pack("{s:s}", "v", "1"),
                                   .create_revision = 7};
    cleanup_json json_t *j = discover_instance_json(&in);
    assert_string_equal(json_string_value(json_object_get(j, "addr")), "127.0.0.1:1");
    assert_int_equal(json_integer_value(json_object_get(j, "index")), 7);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "meta"), "v")), "1");
    json_decref(in.meta);
    assert_string_equal(discover_event_kind_name(DISCOVER_DOWN), "down");
    assert_string_equal(discover_event_kind_name(DISCOVER_CURRENT), "current");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_names),
        cmocka_unit_test(test_instance_id),
        cmocka_unit_test(test_instance_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
