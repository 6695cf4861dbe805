#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "lib/blobsig.h"

#define KEY "secret"
#define PATH "/slugs/app/b1.tgz"
#define EXP 1700000000
/* HMAC-SHA256("secret", "PUT\n/slugs/app/b1.tgz\n1700000000"), from Python's hmac. */
#define SIG "d423793750d11a61fbbe5da592b4effc3328198ef634f83f8c79c918de14d47e"

static void test_sign_vector(void **state)
{
    (void)state;
    char sig[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(KEY, "PUT", PATH, EXP, sig);
    assert_string_equal(sig, SIG);
    /* An empty key still signs (a NULL one is the empty key). */
    blobsig_sign(NULL, "GET", "/a", 0, sig);
    assert_string_equal(sig, "0971f1d3fba9420e74caaf234fda61fe8f43f8aa1b77730f20a60424508ad948");
}

static void test_verify_good(void **state)
{
    (void)state;
    assert_true(blobsig_verify(KEY, "PUT", PATH, "1700000000", SIG, EXP - 100));
    /* "at or after now": the very second it expires is still good. */
    assert_true(blobsig_verify(KEY, "PUT", PATH, "1700000000", SIG, EXP));
}

static void test_verify_refuses(void **state)
{
    (void)state;
    int64_t now = EXP - 100;
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", SIG, EXP + 1)); /* expired */
    assert_false(blobsig_verify(KEY, "GET", PATH, "1700000000", SIG, now));     /* method */
    assert_false(blobsig_verify(KEY, "PUT", "/slugs/app/b2.tgz", "1700000000", SIG, now));
    assert_false(blobsig_verify("other", "PUT", PATH, "1700000000", SIG, now)); /* key */
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000001", SIG, now));     /* expiry */
    assert_false(blobsig_verify(KEY, "PUT", PATH, NULL, SIG, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", NULL, now));
    /* Malformed expiries: signs, spaces, junk, too long, empty. */
    assert_false(blobsig_verify(KEY, "PUT", PATH, "+1700000000", SIG, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, " 1700000000", SIG, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000x", SIG, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1234567890123456789", SIG, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "", SIG, now));
    /* Wrong lengths and case: the signature is exactly 64 lowercase digits. */
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", "d4237937", now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", SIG "0", now));
    char upper[] = SIG;
    upper[0] = 'D';
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", upper, now));
    assert_false(blobsig_verify(KEY, "PUT", PATH, "1700000000", "", now));
}

static void test_url(void **state)
{
    (void)state;
    char *u = blobsig_url(KEY, "http://127.0.0.1:1600", "PUT", PATH, EXP - 60, 60);
    assert_non_null(u);
    assert_string_equal(u, "http://127.0.0.1:1600" PATH "?expires=1700000000&sig=" SIG);
    free(u);
}

static void test_url_roundtrip(void **state)
{
    (void)state;
    char *u = blobsig_url("k", "http://b", "DELETE", "/x/y", 1000, 5);
    const char *e = strstr(u, "expires=");
    const char *s = strstr(u, "&sig=");
    assert_non_null(e);
    assert_non_null(s);
    char exp[32];
    size_t n = (size_t)(s - (e + 8));
    memcpy(exp, e + 8, n);
    exp[n] = '\0';
    assert_string_equal(exp, "1005");
    assert_true(blobsig_verify("k", "DELETE", "/x/y", exp, s + 5, 1005));
    assert_false(blobsig_verify("k", "DELETE", "/x/y", exp, s + 5, 1006));
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_vector),    cmocka_unit_test(test_verify_good),
        cmocka_unit_test(test_verify_refuses), cmocka_unit_test(test_url),
        cmocka_unit_test(test_url_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
