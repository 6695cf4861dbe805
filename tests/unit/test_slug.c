/* pierslug's pure pieces: SHA-256 (FIPS 180-2 vectors and streaming in odd
 * pieces), .slugignore matching (in bounded time) and deleting, and the
 * output's handling of a child's lines and of the result line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "build/sha256.h"
#include "build/slug.h"
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
    assert_false(m("# only\n/\n", "x", false));
    assert_false(m("# only\n/\n", "x", true));
    /* Classes as fnmatch has them, and backslash escapes. */
    assert_true(m("[!a].c\n", "b.c", false));
    assert_false(m("[^a].c\n", "a.c", false));
    assert_true(m("v[0-9][[:digit:]]\n", "v42", false));
    assert_false(m("v[0-9][[:digit:]]\n", "v4x", false));
    assert_true(m("[]x]\n", "]", false));
    assert_true(m("[a\n", "[a", false)); /* no ']': a plain '[' */
    assert_true(m("\\*.c\n", "*.c", false));
    assert_false(m("\\*.c\n", "x.c", false));
    assert_false(m("a[/]b\n", "a/b", false)); /* a class never matches '/' */
    assert_true(m("/a**b\n", "a/x/b", false));
    assert_true(m("**\n", "anything", true));
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Patterns that make a backtracking glob take exponential time match in
 * time bounded by the pattern's length times the path's (a backtracking
 * one took 20 s on the first). */
static void test_slugignore_is_linear(void **state)
{
    (void)state;
    char name[151];
    memset(name, 'a', 150);
    name[150] = '\0';
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_false(m("**a**a**a**a**b\n", name, false));
    assert_false(m("*a*a*a*a*a*a*a*a*a*a*b\n", name, false));
    assert_true(m("**a**a**a**a**a\n", name, false));
    /* The longest pattern there may be against a long path. */
    char pat[SLUGIGNORE_MAX_PATTERN_BYTES + 2], path[4001];
    for (size_t i = 0; i + 1 < SLUGIGNORE_MAX_PATTERN_BYTES; i += 2)
        memcpy(pat + i, "*a", 2);
    strcpy(pat + SLUGIGNORE_MAX_PATTERN_BYTES - 2, "/b");
    memset(path, 'a', 4000);
    path[4000] = '\0';
    assert_false(m(pat, path, false));
    assert_true(seconds_since(&t0) < 1.0);
}

static void test_slugignore_limits(void **state)
{
    (void)state;
    struct buf text = BUF_INIT;
    for (int i = 0; i < SLUGIGNORE_MAX_PATTERNS + 2; i++)
        buf_printf(&text, "p%d\n", i);
    for (int i = 0; i < SLUGIGNORE_MAX_PATTERN_BYTES + 1; i++)
        buf_putc(&text, 'x');
    buf_putc(&text, '\n');
    struct slugignore *si = slugignore_parse(text.p, text.len);
    assert_int_equal(slugignore_skipped(si), 3);
    assert_true(slugignore_match(si, "p0", false));
    assert_true(slugignore_match(si, "p999", false));
    assert_false(slugignore_match(si, "p1000", false));
    slugignore_free(si);
    buf_free(&text);
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

/* Runs fn with fd 1 going to a memfd; returns what it wrote. */
static char *stdout_of(void (*fn)(void))
{
    int mem = memfd_create("out", 0);
    assert_true(mem >= 0);
    int saved = dup(1);
    dup2(mem, 1);
    fn();
    dup2(saved, 1);
    close(saved);
    off_t len = lseek(mem, 0, SEEK_END);
    char *text = calloc(1, (size_t)len + 1);
    assert_int_equal(pread(mem, text, (size_t)len, 0), len);
    close(mem);
    return text;
}

static void oc(const char *s)
{
    out_child(s, strlen(s));
}

static void child_lines(void)
{
    /* Pieces as proc.c passes them: a partial line flushed after a pause
     * may be the start of the marker, or not. */
    oc("p");
    oc("rint\n");
    oc("pi");
    oc("er-build-result: {}\nplain\n");
    oc("pier-build-result: {}\n");
    oc("pier");
    out_head("next"); /* ends the unfinished "pier" */
    oc("pier-build-resul");
    oc("");
    oc("x\n");
}

static void test_out_child(void **state)
{
    (void)state;
    char *text = stdout_of(child_lines);
    bool same = strcmp(text, "print\n"
                             " pier-build-result: {}\nplain\n"
                             " pier-build-result: {}\n"
                             "pier\n-----> next\n"
                             "pier-build-resulx\n") == 0;
    if (!same)
        print_message("got:\n%s", text);
    free(text); /* before a failure, which does not return */
    assert_true(same);
}

static char *big_json;

static void result_line(void)
{
    out_child("unfinished", 10);
    out_result(big_json);
}

/* The result line is not cut, whatever its length. */
static void test_out_result(void **state)
{
    (void)state;
    size_t n = 100000;
    big_json = malloc(n + 1);
    memset(big_json, 'x', n);
    big_json[n] = '\0';
    char *text = stdout_of(result_line);
    assert_int_equal(strlen(text), strlen("unfinished\n") + strlen(SLUG_RESULT_MARKER) + n + 1);
    assert_int_equal(strncmp(text, "unfinished\n" SLUG_RESULT_MARKER "xxx", 33), 0);
    assert_int_equal(text[strlen(text) - 1], '\n');
    free(text);
    free(big_json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),    cmocka_unit_test(test_slugignore_match),
        cmocka_unit_test(test_slugignore_apply),  cmocka_unit_test(test_slugignore_is_linear),
        cmocka_unit_test(test_slugignore_limits), cmocka_unit_test(test_out_child),
        cmocka_unit_test(test_out_result),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
