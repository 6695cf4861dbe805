#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "host/ports.h"

/* A port range that nothing else on the machine is likely to use. */
static int bind_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void test_parse(void **state)
{
    (void)state;
    struct ports *p = NULL;
    struct pier_err err = {0};
    assert_int_equal(ports_new("41000-41009", &p, &err), 0);
    assert_int_equal(ports_lo(p), 41000);
    assert_int_equal(ports_hi(p), 41009);
    assert_int_equal(ports_free_count(p), 10);
    ports_free(p);
    const char *bad[] = {"",      "41000",       "41000-", "-41000",       "41009-41000",
                         "80-90", "41000-70000", "a-b",    "41000-41009x", NULL};
    for (int i = 0; bad[i]; i++) {
        assert_int_equal(ports_new(bad[i], &p, &err), PIER_EINVAL);
        assert_non_null(strstr(err.msg, "port range"));
    }
}

static void test_take_release(void **state)
{
    (void)state;
    struct ports *p = NULL;
    struct pier_err err = {0};
    assert_int_equal(ports_new("41010-41012", &p, &err), 0);
    int a = ports_take(p, 0, &err), b = ports_take(p, 0, &err), c = ports_take(p, 0, &err);
    assert_true(a >= 41010 && b >= 41010 && c >= 41010);
    assert_true(a != b && b != c && a != c);
    assert_int_equal(ports_free_count(p), 0);
    assert_int_equal(ports_take(p, 0, &err), PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "no free port"));
    ports_release(p, b);
    assert_int_equal(ports_take(p, 0, &err), b);
    /* A fixed port: inside the range and free, or refused with a reason. */
    assert_int_equal(ports_take(p, 42000, &err), PIER_EINVAL);
    assert_non_null(strstr(err.msg, "outside"));
    assert_int_equal(ports_take(p, a, &err), PIER_EEXISTS);
    ports_release(p, a);
    assert_int_equal(ports_take(p, a, &err), a);
    ports_release(p, 12); /* not in the range: ignored */
    ports_free(p);
}

static void test_busy_port_skipped(void **state)
{
    (void)state;
    struct ports *p = NULL;
    struct pier_err err = {0};
    int fd = bind_port(41020);
    assert_int_equal(ports_new("41020-41021", &p, &err), 0);
    assert_int_equal(ports_take(p, 0, &err), 41021);
    assert_int_equal(ports_take(p, 41020, &err), PIER_EEXISTS);
    close(fd);
    assert_int_equal(ports_take(p, 0, &err), 41020);
    ports_free(p);
}

static void test_claim(void **state)
{
    (void)state;
    struct ports *p = NULL;
    struct pier_err err = {0};
    assert_int_equal(ports_new("41030-41031", &p, &err), 0);
    ports_claim(p, 41030);
    ports_claim(p, 41030); /* twice counts once */
    assert_int_equal(ports_free_count(p), 1);
    assert_int_equal(ports_take(p, 0, &err), 41031);
    ports_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_take_release),
        cmocka_unit_test(test_busy_port_skipped),
        cmocka_unit_test(test_claim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
