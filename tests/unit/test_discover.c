#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The service a URL names, if any. */
static int url_service(const char *url, char out[129])
{
    struct pier_err err = {0};
    int rc = discover_url_service(url, out, 129, &err);
    if (rc < 0)
        assert_true(err.msg[0] != '\0');
    return rc;
}

static void test_url_service(void **state)
{
    (void)state;
    char s[129];
    assert_int_equal(url_service("http://blobstore.discoverd/slugs/x.tgz", s), 1);
    assert_string_equal(s, "blobstore");
    assert_int_equal(url_service("https://Blob-Store.DiscoverD:1600/a?b=c", s), 1);
    assert_string_equal(s, "blob-store");
    assert_int_equal(url_service("http://key@controller.discoverd", s), 1);
    assert_string_equal(s, "controller");
    assert_int_equal(url_service("http://app.web.discoverd/", s), 1);
    assert_string_equal(s, "app.web");
    /* Not a discovery name: left alone. */
    assert_int_equal(url_service("http://127.0.0.1:1600/slugs/x.tgz", s), 0);
    assert_int_equal(url_service("http://discoverd/x", s), 0);
    assert_int_equal(url_service("http://.discoverd/x", s), 0);
    assert_int_equal(url_service("http://blobstore.discoverd.example.com/x", s), 0);
    assert_int_equal(url_service("http://example.com/blobstore.discoverd", s), 0);
    assert_int_equal(url_service("file:///var/slug.tgz", s), 0);
    assert_int_equal(url_service("blobstore.discoverd/x", s), 0);
    assert_int_equal(url_service("", s), 0);
    assert_int_equal(url_service("http://[::1]:80/x", s), 0);
    /* A discovery name that is not a service name, or a bad port. */
    assert_int_equal(url_service("http://-blob.discoverd/x", s), PIER_EINVAL);
    assert_int_equal(url_service("http://blobstore.discoverd:http/x", s), PIER_EINVAL);
    assert_int_equal(url_service("http://blobstore.discoverd:1234567/x", s), PIER_EINVAL);
    char big[300];
    snprintf(big, sizeof(big), "http://%0200d.discoverd/x", 0);
    assert_int_equal(url_service(big, s), PIER_EINVAL);
}

static void test_url_at(void **state)
{
    (void)state;
    struct discover_instance in = {.addr = "127.0.0.1:20005", .meta = NULL};
    cleanup_free char *a = discover_url_at("http://blobstore.discoverd/slugs/x.tgz", &in);
    assert_string_equal(a, "http://127.0.0.1:20005/slugs/x.tgz");
    /* The port in the name is ignored; query, fragment and user info stay. */
    cleanup_free char *b = discover_url_at("http://u:p@blobstore.discoverd:80/a?x=1#f", &in);
    assert_string_equal(b, "http://u:p@127.0.0.1:20005/a?x=1#f");
    cleanup_free char *c = discover_url_at("http://blobstore.discoverd", &in);
    assert_string_equal(c, "http://127.0.0.1:20005");
    /* meta.url wins: its scheme, host and port, not its path. */
    in.meta = json_pack("{s:s}", "url", "https://10.0.0.1:443/base");
    cleanup_free char *d = discover_url_at("http://blobstore.discoverd/slugs/x.tgz", &in);
    assert_string_equal(d, "https://10.0.0.1:443/slugs/x.tgz");
    json_decref(in.meta);
    /* A meta.url that is no URL is passed over for addr. */
    in.meta = json_pack("{s:s}", "url", "nonsense");
    cleanup_free char *e = discover_url_at("http://blobstore.discoverd/y", &in);
    assert_string_equal(e, "http://127.0.0.1:20005/y");
    json_decref(in.meta);
}

static void test_resolve_url_without_store(void **state)
{
    (void)state;
    struct pier_err err = {0};
    char *out = NULL;
    /* Other URLs come back unchanged, no store needed. */
    assert_int_equal(discover_resolve_url(NULL, "http://127.0.0.1:1/x", &out, &err), 0);
    assert_string_equal(out, "http://127.0.0.1:1/x");
    free(out);
    assert_int_equal(discover_resolve_url(NULL, "http://blobstore.discoverd/x", &out, &err),
                     PIER_EINVAL);
    assert_null(out);
    assert_non_null(strstr(err.msg, "blobstore"));
    assert_int_equal(discover_resolve_url(NULL, "http://Bad_.discoverd:x/", &out, &err),
                     PIER_EINVAL);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_service_names), cmocka_unit_test(test_instance_id),
        cmocka_unit_test(test_instance_json), cmocka_unit_test(test_url_service),
        cmocka_unit_test(test_url_at),        cmocka_unit_test(test_resolve_url_without_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
