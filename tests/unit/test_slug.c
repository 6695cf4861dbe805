/* pierslug's pure pieces: SHA-256 (FIPS 180-2 vectors and streaming in odd
 * pieces) and .slugignore matching and deleting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build/sha256.h"
#include "build/slugignore.h"

static void hex_of(const char *data, size_t len, size_t piece, char out[SHA256_HEX_LEN + 1])
{
    struct sha256 s;
    sha256_init(&s);
    for (size_t off = 0; off < len; off += piece)
        sha256_update(&s, data + off, len - off < piece ? len - off : piece);
    sha256_final_hex(&s, out);
}

static void test_sha256_vectors(void **state)
{
    (void)state;
    char hex[SHA256_HEX_LEN + 1];
    hex_of("", 0, 1, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(two, strlen(two), 56, hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* A million 'a's, fed in pieces that straddle block boundaries. */
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    const size_t pieces[] = {1, 63, 64, 65, 1000, n};
    for (size_t i = 0; i < sizeof(pieces) / sizeof(*pieces); i++) {
        hex_of(a, n, pieces[i], hex);
        assert_string_equal(hex,
                            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }
    free(a);
    /* Lengths around the padding boundary (55, 56, 64 bytes). */
    hex_of(a = calloc(1, 64), 55, 55, hex);
    assert_string_equal(hex, "02779466cdec163811d078815c633f21901413081449002f24aa3e80f0b88ef7");
    hex_of(a, 56, 7, hex);
    assert_string_equal(hex, "d4817aa5497628e7c77e6b606107042bbba3130888c5f47a375e6179be789fbb");
    hex_of(a, 64, 64, hex);
    assert_string_equal(hex, "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b");
    free(a);
}

static bool m(const char *text, const char *path, bool dir)
{
    struct slugignore *si = slugignore_parse(text, strlen(text));
    bool r = slugignore_match(si, path, dir);
    slugignore_free(si);
    return r;
}

static void test_slugignore_match(void **state)
{
    (void)state;
    /* Unanchored: the name at any depth. */
    assert_true(m("*.psd\n", "a.psd", false));
    assert_true(m("*.psd\n", "art/deep/a.psd", false));
    assert_false(m("*.psd\n", "a.psd.txt", false));
    assert_true(m("log\n", "log", true));
    assert_true(m("log\n", "sub/log", false));
    assert_true(m("?.txt", "x/a.txt", false));
    assert_false(m("?.txt", "ab.txt", false));
    /* Anchored by a leading or middle slash. */
    assert_true(m("/spec\n", "spec", true));
    assert_false(m("/spec\n", "lib/spec", true));
    assert_true(m("doc/*.md\n", "doc/a.md", false));
    assert_false(m("doc/*.md\n", "doc/x/a.md", false));
    assert_false(m("doc/*.md\n", "x/doc/a.md", false));
    /* Directories only. */
    assert_true(m("tmp/\n", "a/tmp", true));
    assert_false(m("tmp/\n", "a/tmp", false));
    /* Double stars. */
    assert_true(m("**/fixtures\n", "fixtures", true));
    assert_true(m("**/fixtures\n", "a/b/fixtures", true));
    assert_true(m("a/**/b\n", "a/b", false));
    assert_true(m("a/**/b\n", "a/x/y/b", false));
    assert_false(m("a/**/b\n", "c/a/b", false));
    assert_true(m("a/**\n", "a/x/y", false));
    /* Comments, blanks, negations, CRLF, trailing blanks, classes. */
    assert_false(m("# *.c\n\n   \n!keep.c\n", "x.c", false));
    assert_true(m("*.o\r\n", "x.o", false));
    assert_true(m("*.o   \n", "x.o", false));
    assert_true(m("[ab].c\n", "b.c", false));
    assert_false(m("[ab].c\n", "c.c", false));
    struct slugignore *si = slugignore_parse("# only\n/\n", 9);
    assert_int_equal(slugignore_count(si), 0);
    slugignore_free(si);
}

static void touch(const char *root, const char *rel)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    close(fd);
}

static bool exists(const char *root, const char *rel)
{
    char p[4096];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    return lstat(p, &st) == 0;
}

static void test_slugignore_apply(void **state)
{
    (void)state;
    char root[] = "/tmp/test_slug.XXXXXX";
    assert_non_null(mkdtemp(root));
    char p[4096];
    const char *dirs[] = {"spec", "spec/deep", "lib", "lib/spec", "art", NULL};
    for (size_t i = 0; dirs[i]; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, dirs[i]);
        assert_int_equal(mkdir(p, 0755), 0);
    }
    touch(root, "spec/deep/a_spec.rb");
    touch(root, "lib/spec/keep.rb");
    touch(root, "lib/app.rb");
    touch(root, "art/logo.psd");
    touch(root, "top.psd");
    touch(root, "README");
    snprintf(p, sizeof(p), "%s/art/outside", root);
    assert_int_equal(symlink("/etc", p), 0);
    const char *text = "/spec\n*.psd\nart/outside\n";
    struct slugignore *si = slugignore_parse(text, strlen(text));
    size_t removed = 0;
    struct pier_err err = {0};
    assert_int_equal(slugignore_apply(si, root, &removed, &err), 0);
    slugignore_free(si);
    assert_int_equal(removed, 4); /* spec/, art/logo.psd, top.psd, art/outside */
    assert_false(exists(root, "spec"));
    assert_false(exists(root, "top.psd"));
    assert_false(exists(root, "art/logo.psd"));
    assert_false(exists(root, "art/outside"));
    assert_true(exists(root, "lib/spec/keep.rb"));
    assert_true(exists(root, "lib/app.rb"));
    assert_true(exists(root, "README"));
    assert_true(exists("/etc", "passwd")); /* the link went, not what it named */

    /* "*" empties a directory but leaves it. */
    si = slugignore_parse("*", 1);
    removed = 0;
    assert_int_equal(slugignore_apply(si, root, &removed, &err), 0);
    slugignore_free(si);
    assert_int_equal(removed, 3);
    assert_int_equal(rmdir(root), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_slugignore_match),
        cmocka_unit_test(test_slugignore_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
