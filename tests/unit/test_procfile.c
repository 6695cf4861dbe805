/* procfile: Procfiles as Heroku and foreman read them, and pier's
 * refusals (with the line number) where foreman would skip a line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "build/procfile.h"

/* Parses the literal s (NUL bytes included) and expects success. */
#define OK(s) ok_n(s, sizeof(s) - 1)
/* Parses the literal s and expects a refusal whose message starts with msg. */
#define BAD(s, msg) bad_n(s, sizeof(s) - 1, msg)

static json_t *ok_n(const char *s, size_t n)
{
    json_t *out = (json_t *)1;
    struct pier_err err = {0};
    int rc = procfile_parse(s, n, &out, &err);
    if (rc != 0)
        print_error("unexpected refusal: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_non_null(out);
    assert_true(json_is_object(out));
    return out;
}

static void bad_n(const char *s, size_t n, const char *msg)
{
    json_t *out = (json_t *)1;
    struct pier_err err = {0};
    int rc = procfile_parse(s, n, &out, &err);
    assert_int_equal(rc, PIER_EINVAL);
    assert_int_equal(err.code, PIER_EINVAL);
    assert_null(out);
    if (strncmp(err.msg, msg, strlen(msg)) != 0)
        print_error("message \"%s\" does not start with \"%s\"\n", err.msg, msg);
    assert_true(strncmp(err.msg, msg, strlen(msg)) == 0);
}

static void assert_cmd(json_t *o, const char *type, const char *cmd)
{
    const char *got = json_string_value(json_object_get(o, type));
    if (!got)
        print_error("no type %s\n", type);
    assert_non_null(got);
    assert_string_equal(got, cmd);
}

static void test_simple(void **state)
{
    (void)state;
    json_t *o = OK("web: node server.js\nworker: node worker.js\n");
    assert_int_equal(json_object_size(o), 2);
    assert_cmd(o, "web", "node server.js");
    assert_cmd(o, "worker", "node worker.js");
    /* file order is kept */
    const char *first = json_object_iter_key(json_object_iter(o));
    assert_string_equal(first, "web");
    json_decref(o);
}

static void test_comments_and_blank_lines(void **state)
{
    (void)state;
    json_t *o = OK("# the processes\n"
                   "\n"
                   "   \t \n"
                   "web: bin/web\n"
                   "  # an indented comment\n"
                   "\t# a tabbed one\n"
                   "#worker: bin/worker\n"
                   "\n");
    assert_int_equal(json_object_size(o), 1);
    assert_cmd(o, "web", "bin/web");
    json_decref(o);
}

static void test_empty_files(void **state)
{
    (void)state;
    json_t *o = OK("");
    assert_int_equal(json_object_size(o), 0);
    json_decref(o);
    o = OK("# nothing yet\n\n");
    assert_int_equal(json_object_size(o), 0);
    json_decref(o);
    o = OK("\r\n\n\r\n");
    assert_int_equal(json_object_size(o), 0);
    json_decref(o);
}

static void test_crlf_and_last_line(void **state)
{
    (void)state;
    json_t *o = OK("web: bundle exec puma\r\n# c\r\n\r\nworker: rake jobs:work\r\n");
    assert_cmd(o, "web", "bundle exec puma");
    assert_cmd(o, "worker", "rake jobs:work");
    json_decref(o);
    o = OK("web: a\nworker: b c"); /* no final newline */
    assert_cmd(o, "worker", "b c");
    json_decref(o);
    o = OK("web: a\r"); /* a CRLF file cut after its CR */
    assert_cmd(o, "web", "a");
    json_decref(o);
}

static void test_names(void **state)
{
    (void)state;
    json_t *o = OK("web-api: a\nbg_worker: b\nW3b: c\n-: d\n_: e\n");
    assert_int_equal(json_object_size(o), 5);
    assert_cmd(o, "web-api", "a");
    assert_cmd(o, "bg_worker", "b");
    assert_cmd(o, "W3b", "c");
    assert_cmd(o, "-", "d");
    json_decref(o);
}

static void test_command_shapes(void **state)
{
    (void)state;
    /* ':' and '#' belong to the command; tabs and blanks after the ':'
     * are skipped; trailing blanks dropped; inner ones kept */
    json_t *o = OK("web: bin/start -p $PORT --opt=a:b # not a comment\n"
                   "clock:\t\t ruby clock.rb  \t \n"
                   "tight:echo hi\n"
                   "inner: a \t b\n"
                   "utf8: echo h\xc3\xa9llo \xe2\x9c\x93\n");
    assert_cmd(o, "web", "bin/start -p $PORT --opt=a:b # not a comment");
    assert_cmd(o, "clock", "ruby clock.rb");
    assert_cmd(o, "tight", "echo hi");
    assert_cmd(o, "inner", "a \t b");
    assert_cmd(o, "utf8", "echo h\xc3\xa9llo \xe2\x9c\x93");
    json_decref(o);
}

static void test_type_length(void **state)
{
    (void)state;
    char buf[128];
    memset(buf, 'a', 63);
    strcpy(buf + 63, ": x\n");
    json_t *out = NULL;
    struct pier_err err = {0};
    assert_int_equal(procfile_parse(buf, strlen(buf), &out, &err), 0);
    assert_int_equal(json_object_size(out), 1);
    json_decref(out);

    memset(buf, 'a', 64);
    strcpy(buf + 64, ": x\n");
    out = (json_t *)1;
    assert_int_equal(procfile_parse(buf, strlen(buf), &out, &err), PIER_EINVAL);
    assert_null(out);
    assert_string_equal(err.msg, "Procfile line 1: process type longer than 63 characters");
}

static void test_duplicate(void **state)
{
    (void)state;
    BAD("web: a\n# x\nworker: b\nweb: c\n",
        "Procfile line 4: process type \"web\" given twice (first on line 1)");
}

static void test_malformed_lines(void **state)
{
    (void)state;
    BAD("web: a\n  worker: b\n", "Procfile line 2: blank before the process type");
    BAD("\tweb: a\n", "Procfile line 1: blank before the process type");
    BAD("web: a\nworker\n", "Procfile line 2: no ':'");
    BAD(": a\n", "Procfile line 1: no process type before ':'");
    BAD("web : a\n", "Procfile line 1: process type \"web \" must be A-Z a-z 0-9 _ - only");
    BAD("web.1: a\n", "Procfile line 1: process type \"web.1\" must be");
    BAD("w\xc3\xa9"
        "b: a\n",
        "Procfile line 1: the process type must be");
    BAD("web:\n", "Procfile line 1: no command for process type \"web\"");
    BAD("web:   \t\r\n", "Procfile line 1: no command for process type \"web\"");
    BAD("web: a\n\nworker: b\r\rx\n", "Procfile line 3: control character 0x0d");
    BAD("web: a\x1b[0m\n", "Procfile line 1: control character 0x1b");
}

static void test_nul_byte(void **state)
{
    (void)state;
    BAD("web: a\nworker: b\0c\n", "Procfile line 2: NUL byte");
    BAD("# \0\n", "Procfile line 1: NUL byte");
    BAD("web: a\n\0", "Procfile line 2: NUL byte");
}

static void test_not_utf8(void **state)
{
    (void)state;
    BAD("web: a\nworker: caf\xe9\n", "Procfile line 2: the command is not valid UTF-8");
    BAD("web: \xc0\xaf\n", "Procfile line 1: the command is not valid UTF-8");     /* overlong */
    BAD("web: \xed\xa0\x80\n", "Procfile line 1: the command is not valid UTF-8"); /* surrogate */
    /* a Latin-1 comment is skipped like any comment */
    json_t *o = OK("# caf\xe9\nweb: a\n");
    json_decref(o);
}

static void test_bom(void **state)
{
    (void)state;
    json_t *o = OK("\xef\xbb\xbfweb: a\n");
    assert_cmd(o, "web", "a");
    json_decref(o);
}

static void test_size(void **state)
{
    (void)state;
    size_t n = PROCFILE_MAX_BYTES + 1;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, '\n', n);
    memcpy(big, "web: a\n", 7);
    json_t *out = (json_t *)1;
    struct pier_err err = {0};
    assert_int_equal(procfile_parse(big, n, &out, &err), PIER_ETOOBIG);
    assert_null(out);
    assert_true(strncmp(err.msg, "Procfile: ", 10) == 0);
    /* exactly the limit is fine */
    assert_int_equal(procfile_parse(big, n - 1, &out, &err), 0);
    assert_int_equal(json_object_size(out), 1);
    json_decref(out);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_comments_and_blank_lines),
        cmocka_unit_test(test_empty_files),
        cmocka_unit_test(test_crlf_and_last_line),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_command_shapes),
        cmocka_unit_test(test_type_length),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_malformed_lines),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_not_utf8),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
