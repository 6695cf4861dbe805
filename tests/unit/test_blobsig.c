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

/* A URL without max and once, as received. */
static bool verify(const char *key, const char *method, const char *path, const char *expires,
                   const char *sig, int64_t now)
{
    const struct blobsig_query q = {.expires = expires, .sig = sig};
    return blobsig_verify(key, method, path, &q, now, NULL);
}

static void test_sign_vector(void **state)
{
    (void)state;
    char sig[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(KEY, "PUT", PATH, EXP, 0, false, sig);
    assert_string_equal(sig, SIG);
    /* An empty key still signs (a NULL one is the empty key). */
    blobsig_sign(NULL, "GET", "/a", 0, 0, false, sig);
    assert_string_equal(sig, "0971f1d3fba9420e74caaf234fda61fe8f43f8aa1b77730f20a60424508ad948");
}

static void test_verify_good(void **state)
{
    (void)state;
    assert_true(verify(KEY, "PUT", PATH, "1700000000", SIG, EXP - 100));
    /* "at or after now": the very second it expires is still good. */
    assert_true(verify(KEY, "PUT", PATH, "1700000000", SIG, EXP));
}

static void test_verify_refuses(void **state)
{
    (void)state;
    int64_t now = EXP - 100;
    assert_false(verify(KEY, "PUT", PATH, "1700000000", SIG, EXP + 1)); /* expired */
    assert_false(verify(KEY, "GET", PATH, "1700000000", SIG, now));     /* method */
    assert_false(verify(KEY, "PUT", "/slugs/app/b2.tgz", "1700000000", SIG, now));
    assert_false(verify("other", "PUT", PATH, "1700000000", SIG, now)); /* key */
    assert_false(verify(KEY, "PUT", PATH, "1700000001", SIG, now));     /* expiry */
    assert_false(verify(KEY, "PUT", PATH, NULL, SIG, now));
    assert_false(verify(KEY, "PUT", PATH, "1700000000", NULL, now));
    /* Malformed expiries: signs, spaces, junk, too long, empty. */
    assert_false(verify(KEY, "PUT", PATH, "+1700000000", SIG, now));
    assert_false(verify(KEY, "PUT", PATH, " 1700000000", SIG, now));
    assert_false(verify(KEY, "PUT", PATH, "1700000000x", SIG, now));
    assert_false(verify(KEY, "PUT", PATH, "1234567890123456789", SIG, now));
    assert_false(verify(KEY, "PUT", PATH, "", SIG, now));
    /* Wrong lengths and case: the signature is exactly 64 lowercase digits. */
    assert_false(verify(KEY, "PUT", PATH, "1700000000", "d4237937", now));
    assert_false(verify(KEY, "PUT", PATH, "1700000000", SIG "0", now));
    char upper[] = SIG;
    upper[0] = 'D';
    assert_false(verify(KEY, "PUT", PATH, "1700000000", upper, now));
    assert_false(verify(KEY, "PUT", PATH, "1700000000", "", now));
}

static void test_url(void **state)
{
    (void)state;
    char *u = blobsig_url(KEY, "http://127.0.0.1:1600", "PUT", PATH, EXP - 60, 60, 0, false);
    assert_non_null(u);
    assert_string_equal(u, "http://127.0.0.1:1600" PATH "?expires=1700000000&sig=" SIG);
    free(u);
}

static void test_url_roundtrip(void **state)
{
    (void)state;
    char *u = blobsig_url("k", "http://b", "DELETE", "/x/y", 1000, 5, 0, false);
    const char *e = strstr(u, "expires=");
    const char *s = strstr(u, "&sig=");
    assert_non_null(e);
    assert_non_null(s);
    char exp[32];
    size_t n = (size_t)(s - (e + 8));
    memcpy(exp, e + 8, n);
    exp[n] = '\0';
    assert_string_equal(exp, "1005");
    assert_true(verify("k", "DELETE", "/x/y", exp, s + 5, 1005));
    assert_false(verify("k", "DELETE", "/x/y", exp, s + 5, 1006));
    free(u);
}

/* HMAC-SHA256("secret", "PUT\n/slugs/app/b1.tgz\n1700000000\n524288000\nonce") and the
 * forms with only one of them, from Python's hmac. */
#define SIG_MAX_ONCE "63259e891f7121e9f8c7d6c17474d685f75420c332bd9b469a770025d9b207a9"
#define SIG_MAX "84f0a09986e72fe30d4b64ca07d05a424954efaca19eb015aba427dd1d3ad82d"
#define SIG_ONCE "4dfd701e7cc5d27e5a2b9b031c2973f1fd029137ab527290481a62a98ddaf027"
#define MAX 524288000

static void test_sign_opts_vectors(void **state)
{
    (void)state;
    char sig[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(KEY, "PUT", PATH, EXP, MAX, true, sig);
    assert_string_equal(sig, SIG_MAX_ONCE);
    blobsig_sign(KEY, "PUT", PATH, EXP, MAX, false, sig);
    assert_string_equal(sig, SIG_MAX);
    blobsig_sign(KEY, "PUT", PATH, EXP, 0, true, sig);
    assert_string_equal(sig, SIG_ONCE);
    /* Neither: the short form, so URLs signed before stay good. */
    blobsig_sign(KEY, "PUT", PATH, EXP, 0, false, sig);
    assert_string_equal(sig, SIG);
}

static void test_verify_query(void **state)
{
    (void)state;
    int64_t now = EXP - 100;
    struct blobsig_grant g = {.max_bytes = -1};
    struct blobsig_query q = {
        .expires = "1700000000", .sig = SIG_MAX_ONCE, .max = "524288000", .once = "1"};
    assert_true(blobsig_verify(KEY, "PUT", PATH, &q, now, &g));
    assert_int_equal(g.max_bytes, MAX);
    assert_true(g.once);
    assert_true(blobsig_verify(KEY, "PUT", PATH, &q, now, NULL));
    /* Dropping or changing either option breaks the signature. */
    struct blobsig_query bad = q;
    bad.once = NULL;
    assert_false(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    bad = q;
    bad.max = NULL;
    assert_false(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    bad = q;
    bad.max = "524288001";
    assert_false(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    bad = q;
    bad.max = "0524288000"; /* the number is signed, not its spelling */
    assert_true(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    /* Malformed options are never valid. */
    const char *bad_max[] = {"", "-1", "+5", "5x", "0", "1234567890123456789"};
    for (size_t i = 0; i < sizeof(bad_max) / sizeof(*bad_max); i++) {
        bad = q;
        bad.max = bad_max[i];
        assert_false(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    }
    const char *bad_once[] = {"", "0", "true", "11"};
    for (size_t i = 0; i < sizeof(bad_once) / sizeof(*bad_once); i++) {
        bad = q;
        bad.once = bad_once[i];
        assert_false(blobsig_verify(KEY, "PUT", PATH, &bad, now, &g));
    }
    /* Expiry, method, path, key as for the short form. */
    assert_false(blobsig_verify(KEY, "PUT", PATH, &q, EXP + 1, &g));
    assert_false(blobsig_verify(KEY, "GET", PATH, &q, now, &g));
    assert_false(blobsig_verify(KEY, "PUT", "/slugs/app/b2.tgz", &q, now, &g));
    assert_false(blobsig_verify("other", "PUT", PATH, &q, now, &g));
    /* One option alone. */
    struct blobsig_query only_max = {.expires = "1700000000", .sig = SIG_MAX, .max = "524288000"};
    assert_true(blobsig_verify(KEY, "PUT", PATH, &only_max, now, &g));
    assert_int_equal(g.max_bytes, MAX);
    assert_false(g.once);
    struct blobsig_query only_once = {.expires = "1700000000", .sig = SIG_ONCE, .once = "1"};
    assert_true(blobsig_verify(KEY, "PUT", PATH, &only_once, now, &g));
    assert_int_equal(g.max_bytes, 0);
    assert_true(g.once);
    /* The short form through the query call; blobsig_verify knows no options. */
    struct blobsig_query plain = {.expires = "1700000000", .sig = SIG};
    assert_true(blobsig_verify(KEY, "PUT", PATH, &plain, now, &g));
    assert_int_equal(g.max_bytes, 0);
    assert_false(g.once);
    assert_false(verify(KEY, "PUT", PATH, "1700000000", SIG_MAX_ONCE, now));
}

static void test_url_opts(void **state)
{
    (void)state;
    char *u = blobsig_url(KEY, "http://b:1600", "PUT", PATH, EXP - 60, 60, MAX, true);
    assert_string_equal(u, "http://b:1600" PATH
                           "?expires=1700000000&max=524288000&once=1&sig=" SIG_MAX_ONCE);
    free(u);
    u = blobsig_url(KEY, "http://b:1600", "PUT", PATH, EXP - 60, 60, 0, true);
    assert_string_equal(u, "http://b:1600" PATH "?expires=1700000000&once=1&sig=" SIG_ONCE);
    free(u);
    u = blobsig_url(KEY, "http://b:1600", "PUT", PATH, EXP - 60, 60, MAX, false);
    assert_string_equal(u, "http://b:1600" PATH "?expires=1700000000&max=524288000&sig=" SIG_MAX);
    free(u);
    /* Neither: what blobsig_url makes. */
    u = blobsig_url(KEY, "http://127.0.0.1:1600", "PUT", PATH, EXP - 60, 60, 0, false);
    assert_string_equal(u, "http://127.0.0.1:1600" PATH "?expires=1700000000&sig=" SIG);
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_vector),    cmocka_unit_test(test_verify_good),
        cmocka_unit_test(test_verify_refuses), cmocka_unit_test(test_url),
        cmocka_unit_test(test_url_roundtrip),  cmocka_unit_test(test_sign_opts_vectors),
        cmocka_unit_test(test_verify_query),   cmocka_unit_test(test_url_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
