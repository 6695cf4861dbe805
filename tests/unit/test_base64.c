#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "lib/base64.h"

static void roundtrip(const char *plain, const char *enc)
{
    struct buf b = BUF_INIT;
    base64_encode(&b, plain, strlen(plain));
    assert_string_equal(b.p, enc);
    buf_reset(&b);
    assert_int_equal(base64_decode(&b, enc, strlen(enc)), 0);
    assert_int_equal(b.len, strlen(plain));
    assert_memory_equal(b.p, plain, b.len);
    buf_free(&b);
}

static void test_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10 test vectors */
    roundtrip("f", "Zg==");
    roundtrip("fo", "Zm8=");
    roundtrip("foo", "Zm9v");
    roundtrip("foob", "Zm9vYg==");
    roundtrip("fooba", "Zm9vYmE=");
    roundtrip("foobar", "Zm9vYmFy");
}

static void test_empty(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    base64_encode(&b, "", 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(base64_decode(&b, "", 0), 0);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_binary(void **state)
{
    (void)state;
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    struct buf e = BUF_INIT, d = BUF_INIT;
    base64_encode(&e, all, sizeof(all));
    assert_int_equal(base64_decode(&d, e.p, e.len), 0);
    assert_int_equal(d.len, sizeof(all));
    assert_memory_equal(d.p, all, sizeof(all));
    buf_free(&e);
    buf_free(&d);
}

static void test_bad(void **state)
{
    (void)state;
    const char *bad[] = {"Zg=",  "Z===",  "Zg==Zg==", "Zm9v!", "Zm9*",
                         "Zh==", "Zm9=x", "=AAA",     "Zm 9",  "Zm8"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct buf b = BUF_INIT;
        assert_int_equal(base64_decode(&b, bad[i], strlen(bad[i])), -1);
        buf_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
