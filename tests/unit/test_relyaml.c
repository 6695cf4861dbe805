/* relyaml: what real buildpacks' bin/release print (heroku-buildpack-nodejs,
 * -static, -ruby through Ruby's YAML writer, hand-written `cat <<EOF` ones)
 * and the YAML this reader refuses, with the line number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "build/relyaml.h"

#define OK(s) ok_n(s, sizeof(s) - 1)
#define BAD(s, msg) bad_n(s, sizeof(s) - 1, msg)

static json_t *ok_n(const char *s, size_t n)
{
    json_t *out = (json_t *)1;
    struct pier_err err = {0};
    int rc = relyaml_parse(s, n, &out, &err);
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
    int rc = relyaml_parse(s, n, &out, &err);
    if (rc == 0)
        print_error("accepted: %s\n", json_dumps(out, JSON_COMPACT));
    assert_int_equal(rc, PIER_EINVAL);
    assert_int_equal(err.code, PIER_EINVAL);
    assert_null(out);
    if (strncmp(err.msg, msg, strlen(msg)) != 0)
        print_error("message \"%s\" does not start with \"%s\"\n", err.msg, msg);
    assert_true(strncmp(err.msg, msg, strlen(msg)) == 0);
}

/* Expects the document s to read as the JSON text json. */
#define SAME(s, json) same_n(s, sizeof(s) - 1, json)
static void same_n(const char *s, size_t n, const char *json)
{
    json_t *out = ok_n(s, n);
    json_t *want = json_loads(json, JSON_DECODE_ANY, NULL);
    assert_non_null(want);
    if (!json_equal(out, want)) {
        char *got = json_dumps(out, JSON_COMPACT | JSON_ENCODE_ANY);
        print_error("got %s, want %s\n", got, json);
        free(got);
    }
    assert_true(json_equal(out, want));
    json_decref(want);
    json_decref(out);
}

static void test_nodejs(void **state)
{
    (void)state;
    SAME("---\ndefault_process_types:\n  web: npm start\n",
         "{\"default_process_types\":{\"web\":\"npm start\"}}");
    SAME("--- {}\n", "{}");
    SAME("--- {}", "{}");
    SAME("---\naddons: []\n", "{\"addons\":[]}");
    SAME("---\n", "{}");
    SAME("", "{}");
    SAME("\n# nothing\n", "{}");
}

static void test_static(void **state)
{
    (void)state;
    SAME("---\n"
         "config_vars:\n"
         "  PATH: \"/app/bin:/app/vendor/nginx/sbin:/usr/local/bin:/usr/bin:/bin\"\n"
         "  NGINX_CONF: '/app/config/nginx.conf'\n"
         "default_process_types:\n"
         "  web: bin/boot\n",
         "{\"config_vars\":{\"PATH\":\"/app/bin:/app/vendor/nginx/sbin:/usr/local/bin:/usr/bin:/"
         "bin\",\"NGINX_CONF\":\"/app/config/nginx.conf\"},"
         "\"default_process_types\":{\"web\":\"bin/boot\"}}");
}

static void test_ruby_writer(void **state)
{
    (void)state;
    /* Ruby's to_yaml puts a sequence at its key's column */
    SAME("---\n"
         "addons:\n"
         "- heroku-postgresql\n"
         "- heroku-redis:hobby-dev\n"
         "config_vars:\n"
         "  LANG: en_US.UTF-8\n"
         "  RAILS_ENV: production\n"
         "  WEB_CONCURRENCY: 2\n"
         "  RACK_ENV: 'true'\n"
         "default_process_types:\n"
         "  rake: bundle exec rake\n"
         "  web: bin/rails server -p ${PORT:-5000} -e $RAILS_ENV\n",
         "{\"addons\":[\"heroku-postgresql\",\"heroku-redis:hobby-dev\"],"
         "\"config_vars\":{\"LANG\":\"en_US.UTF-8\",\"RAILS_ENV\":\"production\","
         "\"WEB_CONCURRENCY\":\"2\",\"RACK_ENV\":\"true\"},"
         "\"default_process_types\":{\"rake\":\"bundle exec rake\","
         "\"web\":\"bin/rails server -p ${PORT:-5000} -e $RAILS_ENV\"}}");
}

static void test_heredoc_buildpacks(void **state)
{
    (void)state;
    /* cat <<EOF: nothing after config_vars, ':' and '#' in values, comments */
    SAME("---\n"
         "addons: []\n"
         "config_vars:\n"
         "default_process_types:\n"
         "  web: bin/start -p $PORT --opt=a:b\n"
         "  worker: \"bin/worker --color=#fff\"   # the worker\n"
         "  clock: 'ruby clock.rb # not a comment'\n"
         "  color: bin/x --c=#fff\n"
         "  colon: sh -c 'echo a: b'\n",
         "{\"addons\":[],\"config_vars\":null,\"default_process_types\":{"
         "\"web\":\"bin/start -p $PORT --opt=a:b\",\"worker\":\"bin/worker --color=#fff\","
         "\"clock\":\"ruby clock.rb # not a comment\",\"color\":\"bin/x --c=#fff\","
         "\"colon\":\"sh -c 'echo a: b'\"}}");
    /* indented sequence, comments everywhere, CRLF, no final newline */
    SAME("--- # release\r\n"
         "# addons\r\n"
         "addons:\r\n"
         "    - heroku-postgresql   \r\n"
         "\r\n"
         "    # a comment inside\r\n"
         "    - 'papertrail'\r\n"
         "default_process_types:\r\n"
         "  web:   node index.js",
         "{\"addons\":[\"heroku-postgresql\",\"papertrail\"],"
         "\"default_process_types\":{\"web\":\"node index.js\"}}");
}

static void test_flow(void **state)
{
    (void)state;
    SAME("addons: [ heroku-postgresql, 'a b' , \"c\", ]\n"
         "config_vars: {}\n"
         "default_process_types: {web: npm start, worker: 'node w.js'} # comment\n",
         "{\"addons\":[\"heroku-postgresql\",\"a b\",\"c\"],\"config_vars\":{},"
         "\"default_process_types\":{\"web\":\"npm start\",\"worker\":\"node w.js\"}}");
    SAME("--- {web: x, 'w': \"y\"}\n", "{\"web\":\"x\",\"w\":\"y\"}");
    SAME("{}\n# a flow document on its own line\n", "{}");
}

static void test_scalars(void **state)
{
    (void)state;
    SAME("a: ~\nb: null\nc:\nd: \"~\"\ne: plain text  \nf: 5000\ng: ''\nh: 'it''s'\n"
         "i: \"tab\\there \\\"q\\\" back\\\\slash \\/ \\u00e9 \\ud83d\\ude00\\n\"\n"
         "\"quoted key\": x\n'single': y\n",
         "{\"a\":null,\"b\":null,\"c\":null,\"d\":\"~\",\"e\":\"plain text\",\"f\":\"5000\","
         "\"g\":\"\",\"h\":\"it's\",\"i\":\"tab\\there \\\"q\\\" back\\\\slash / \\u00e9 "
         "\\ud83d\\ude00\\n\",\"quoted key\":\"x\",\"single\":\"y\"}");
    SAME("...\n", "{}");
    SAME("---\nweb: x\n...\n# after\n", "{\"web\":\"x\"}");
    SAME("\xef\xbb\xbf---\na: b\n", "{\"a\":\"b\"}");
}

static void test_unknown_keys_kept(void **state)
{
    (void)state;
    SAME("---\nbuildpack_version: 1.2\nnotes:\n  - one\n  - two\n",
         "{\"buildpack_version\":\"1.2\",\"notes\":[\"one\",\"two\"]}");
}

static void test_refused_structure(void **state)
{
    (void)state;
    BAD("---\nconfig_vars:\n\tPATH: /bin\n", "bin/release output line 3: a tab in the indentation");
    BAD("a: &x b\n", "bin/release output line 1: anchors");
    BAD("a: *x\n", "bin/release output line 1: aliases");
    BAD("a: !!str b\n", "bin/release output line 1: tags");
    BAD("a: |\n  x\n", "bin/release output line 1: block scalars");
    BAD("a: >\n  x\n", "bin/release output line 1: block scalars");
    BAD("a: x\n  continued\n", "bin/release output line 2: an indented line under no key");
    BAD("a:\n  b:\n    c: d\n", "bin/release output line 2: a null value in a collection");
    BAD("a:\n  b: x\n    c: d\n", "bin/release output line 3: a deeper indentation");
    BAD("a:\n    b: x\n  c: d\n", "bin/release output line 3: the indentation does not match");
    BAD("a:\n  - x\n- y\n", "bin/release output line 3: the indentation does not match");
    BAD("a:\n- x\n  - y\n", "bin/release output line 3: a deeper indentation");
    BAD("a:\n  - x\n  b: y\n", "bin/release output line 3: a \"KEY: VALUE\" line in a sequence");
    BAD("a:\n  b: y\n  - x\n", "bin/release output line 3: a sequence item in a mapping");
    BAD("a:\n  - b: c\n", "bin/release output line 2: a mapping in a sequence");
    BAD("a:\n  - \"b\": c\n", "bin/release output line 2: a mapping in a sequence");
    BAD("a:\n  - [x]\n", "bin/release output line 2: nested collections");
    BAD("a:\n  -\n", "bin/release output line 2: a null value in a collection");
    BAD("a:\n  - - x\n", "bin/release output line 2: a sequence here is a nested collection");
    BAD("--- {a: {}}\n", "bin/release output line 1: nested collections");
    BAD("a: [[x]]\n", "bin/release output line 1: nested collections");
    BAD("a: [x: y]\n", "bin/release output line 1: a mapping in a flow sequence");
    BAD("a: {x}\n", "bin/release output line 1: a flow mapping entry without");
    BAD("a: {x: }\n", "bin/release output line 1: a null value in a collection");
    BAD("a: [x, ~]\n", "bin/release output line 1: a null value in a collection");
    BAD("a: [x,,y]\n", "bin/release output line 1: an empty entry");
    BAD("a: [x\n  , y]\n", "bin/release output line 1: a flow collection is not closed");
    BAD("a: [x] y\n", "bin/release output line 1: unexpected text after a flow collection");
    BAD("a: 'x\n  y'\n", "bin/release output line 1: a quoted scalar is not closed");
    BAD("a: \"x\" y\n", "bin/release output line 1: unexpected text after a quoted scalar");
    BAD("- x\n", "bin/release output line 1: a sequence item under no key");
    BAD("just text\n", "bin/release output line 1: expected \"KEY: VALUE\"");
    BAD("? a\n: b\n", "bin/release output line 1: complex keys");
    BAD("a: b\na: c\n", "bin/release output line 2: key \"a\" given twice");
    BAD("a:\n  x: 1\n  x: 2\n", "bin/release output line 3: key \"x\" given twice");
    BAD("a: {x: 1, x: 2}\n", "bin/release output line 1: key \"x\" given twice");
    BAD("'': x\n", "bin/release output line 1: an empty key");
    BAD("---\na: b\n---\nc: d\n", "bin/release output line 3: a second document");
    BAD("--- {}\na: b\n", "bin/release output line 2: content after the end of the document");
    BAD("--- [a]\n", "bin/release output line 1: the document is not a mapping");
    BAD("--- text\n", "bin/release output line 1: the document is not a mapping");
    BAD("%YAML 1.1\n---\n", "bin/release output line 1: a scalar cannot start with '%'");
}

static void test_refused_bytes(void **state)
{
    (void)state;
    BAD("a: b\nc: d\0e\n", "bin/release output line 2: control character 0x00");
    BAD("a: b\x1b\n", "bin/release output line 1: control character 0x1b");
    BAD("a: b\rc: d\n", "bin/release output line 1: control character 0x0d");
    BAD("a: caf\xe9\n", "bin/release output line 1: not valid UTF-8");
    BAD("a: \"\\0\"\n", "bin/release output line 1: a NUL character");
    BAD("a: \"\\u0000\"\n", "bin/release output line 1: a NUL character");
    BAD("a: \"\\ud800\"\n", "bin/release output line 1: a high surrogate");
    BAD("a: \"\\udc00\"\n", "bin/release output line 1: a lone low surrogate");
    BAD("a: \"\\u12\"\n", "bin/release output line 1: \\u needs 4 hex digits");
    BAD("a: \"\\x41\"\n", "bin/release output line 1: unknown escape \\x");
    BAD("a: \"x\\\n", "bin/release output line 1: a backslash ends the line");
}

static void test_size(void **state)
{
    (void)state;
    size_t n = RELYAML_MAX_BYTES + 1;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, '\n', n);
    memcpy(big, "a: b\n", 5);
    json_t *out = (json_t *)1;
    struct pier_err err = {0};
    assert_int_equal(relyaml_parse(big, n, &out, &err), PIER_ETOOBIG);
    assert_null(out);
    assert_true(strncmp(err.msg, "bin/release output: ", 20) == 0);
    assert_int_equal(relyaml_parse(big, n - 1, &out, &err), 0);
    assert_int_equal(json_object_size(out), 1);
    json_decref(out);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nodejs),
        cmocka_unit_test(test_static),
        cmocka_unit_test(test_ruby_writer),
        cmocka_unit_test(test_heredoc_buildpacks),
        cmocka_unit_test(test_flow),
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_unknown_keys_kept),
        cmocka_unit_test(test_refused_structure),
        cmocka_unit_test(test_refused_bytes),
        cmocka_unit_test(test_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
