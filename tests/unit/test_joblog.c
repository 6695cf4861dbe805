#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "host/joblog.h"
#include "lib/err.h"

static char *make_dir(void)
{
    char tmpl[] = "/tmp/test_joblog.XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static void remove_dir(char *dir)
{
    char path[512];
    for (int i = 0; i < 20; i++) {
        if (i == 0)
            snprintf(path, sizeof(path), "%s/log", dir);
        else
            snprintf(path, sizeof(path), "%s/log.%d", dir, i);
        unlink(path);
    }
    rmdir(dir);
    free(dir);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The whole content of dir/name ("" when missing); the caller frees it. */
static char *read_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    struct buf b = BUF_INIT;
    buf_puts(&b, "");
    FILE *f = fopen(path, "r");
    if (f) {
        char tmp[4096];
        size_t n;
        while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
            buf_append(&b, tmp, n);
        fclose(f);
    }
    return buf_detach(&b);
}

/* Splits stored text into parsed lines; returns how many (at most max). */
static int parse_all(const char *text, struct joblog_line *lines, int max)
{
    int n = 0;
    const char *p = text;
    while (*p && n < max) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        assert_int_equal(joblog_parse_line((struct str){p, (size_t)(nl - p)}, &lines[n]), 0);
        n++;
        p = nl + 1;
    }
    return n;
}

static void test_lines_and_streams(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 0, 0, &w, NULL), 0);
    joblog_write(w, JOBLOG_STDOUT, "hello\nwor", 9);
    joblog_write(w, JOBLOG_STDERR, "oops\n", 5);
    joblog_write(w, JOBLOG_STDOUT, "ld\n\n", 4);
    joblog_writer_close(w);

    char *text = read_file(dir, "log");
    struct joblog_line l[8];
    assert_int_equal(parse_all(text, l, 8), 4);
    assert_true(str_eq(l[0].stream, "stdout") && str_eq(l[0].msg, "hello"));
    assert_true(str_eq(l[1].stream, "stderr") && str_eq(l[1].msg, "oops"));
    assert_true(str_eq(l[2].stream, "stdout") && str_eq(l[2].msg, "world"));
    assert_true(str_eq(l[3].msg, ""));
    assert_int_equal(l[0].ts.len, 27);
    assert_int_equal(l[0].ts.p[10], 'T');
    assert_int_equal(l[0].ts.p[26], 'Z');
    /* the timestamp is now, in UTC */
    char year[16];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(year, sizeof(year), "%04d-", tm.tm_year + 1900);
    assert_memory_equal(l[0].ts.p, year, 5);
    free(text);

    /* reopening appends */
    assert_int_equal(joblog_writer_open(dir, 0, 0, &w, NULL), 0);
    joblog_write(w, JOBLOG_STDOUT, "again\n", 6);
    joblog_writer_close(w);
    text = read_file(dir, "log");
    assert_int_equal(parse_all(text, l, 8), 5);
    assert_true(str_eq(l[4].msg, "again"));
    free(text);
    joblog_writer_close(NULL);
    remove_dir(dir);
}

static void test_partial_flush(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 0, 0, &w, NULL), 0);
    assert_int_equal(joblog_flush_due_ms(w), -1);
    joblog_write(w, JOBLOG_STDOUT, "prompt> ", 8);
    joblog_flush(w, false);
    char *text = read_file(dir, "log");
    assert_string_equal(text, "");
    free(text);
    int due = joblog_flush_due_ms(w);
    assert_true(due > 0 && due <= JOBLOG_FLUSH_MS);
    sleep_ms(JOBLOG_FLUSH_MS + 20);
    assert_int_equal(joblog_flush_due_ms(w), 0);
    joblog_flush(w, false);
    assert_int_equal(joblog_flush_due_ms(w), -1);
    text = read_file(dir, "log");
    struct joblog_line l[4];
    assert_int_equal(parse_all(text, l, 4), 1);
    assert_true(str_eq(l[0].msg, "prompt> "));
    free(text);

    /* a forced flush, and close, write what is pending */
    joblog_write(w, JOBLOG_STDERR, "half", 4);
    joblog_flush(w, true);
    joblog_write(w, JOBLOG_STDOUT, "tail", 4);
    joblog_writer_close(w);
    text = read_file(dir, "log");
    assert_int_equal(parse_all(text, l, 4), 3);
    assert_true(str_eq(l[1].stream, "stderr") && str_eq(l[1].msg, "half"));
    assert_true(str_eq(l[2].msg, "tail"));
    free(text);
    remove_dir(dir);
}

static void test_long_line_split(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 0, 0, &w, NULL), 0);
    char *big = malloc(25001);
    memset(big, 'a', 25000);
    big[25000] = '\n';
    /* in pieces, to split across writes too */
    joblog_write(w, JOBLOG_STDOUT, big, 7000);
    joblog_write(w, JOBLOG_STDOUT, big + 7000, 18001);
    /* exactly JOBLOG_MAX_LINE bytes and a newline: one line */
    memset(big, 'b', JOBLOG_MAX_LINE);
    big[JOBLOG_MAX_LINE] = '\n';
    joblog_write(w, JOBLOG_STDOUT, big, JOBLOG_MAX_LINE + 1);
    joblog_writer_close(w);
    char *text = read_file(dir, "log");
    struct joblog_line l[8];
    assert_int_equal(parse_all(text, l, 8), 4);
    assert_int_equal(l[0].msg.len, JOBLOG_MAX_LINE);
    assert_int_equal(l[1].msg.len, JOBLOG_MAX_LINE);
    assert_int_equal(l[2].msg.len, 5000);
    assert_int_equal(l[3].msg.len, JOBLOG_MAX_LINE);
    assert_int_equal(l[3].msg.p[0], 'b');
    free(text);
    free(big);
    remove_dir(dir);
}

static void test_carriage_returns(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 0, 0, &w, NULL), 0);
    joblog_write(w, JOBLOG_STDOUT, "a\r\nb\r\r\nc\rd\n", 11);
    joblog_write(w, JOBLOG_STDOUT, "e\r", 2); /* the \n comes later */
    joblog_write(w, JOBLOG_STDOUT, "\n", 1);
    joblog_writer_close(w);
    char *text = read_file(dir, "log");
    struct joblog_line l[8];
    assert_int_equal(parse_all(text, l, 8), 4);
    assert_true(str_eq(l[0].msg, "a"));
    assert_true(str_eq(l[1].msg, "b"));
    assert_true(str_eq(l[2].msg, "c\rd"));
    assert_true(str_eq(l[3].msg, "e"));
    free(text);
    remove_dir(dir);
}

static bool file_exists(const char *dir, const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static off_t file_size(const char *dir, const char *name)
{
    char path[512];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Writes lines "line N" (N from first), stderr for every third. */
static void write_numbered(struct joblog_writer *w, int first, int count)
{
    for (int i = first; i < first + count; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "line %d\n", i);
        joblog_write(w, i % 3 == 0 ? JOBLOG_STDERR : JOBLOG_STDOUT, line, (size_t)n);
    }
}

/* Reads everything r has now into parsed numbers; returns how many. */
static int read_numbers(struct joblog_reader *r, int *nums, int max)
{
    struct buf out = BUF_INIT;
    int rc;
    while ((rc = joblog_reader_next(r, &out, 300)) == 1)
        ;
    assert_int_equal(rc, 0);
    int n = 0;
    const char *p = out.p ? out.p : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        struct joblog_line l;
        assert_int_equal(joblog_parse_line((struct str){p, (size_t)(nl - p)}, &l), 0);
        assert_true(l.msg.len > 5 && memcmp(l.msg.p, "line ", 5) == 0);
        assert_true(n < max);
        nums[n++] = atoi(l.msg.p + 5);
        p = nl + 1;
    }
    buf_free(&out);
    return n;
}

static void test_rotation(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 1000, 3, &w, NULL), 0);
    write_numbered(w, 0, 200);
    joblog_writer_close(w);
    assert_true(file_exists(dir, "log"));
    assert_true(file_exists(dir, "log.1"));
    assert_true(file_exists(dir, "log.2"));
    assert_false(file_exists(dir, "log.3"));
    assert_true(file_size(dir, "log.1") <= 1000 && file_size(dir, "log.1") > 900);
    assert_true(file_size(dir, "log.2") <= 1000);

    /* all that is kept: the last lines, in order, without a gap */
    struct joblog_query all = {-1, 0};
    struct joblog_reader *r;
    assert_int_equal(joblog_reader_open(dir, &all, &r, NULL), 0);
    int nums[400];
    int n = read_numbers(r, nums, 400);
    joblog_reader_close(r);
    assert_true(n > 40 && n < 80);
    for (int i = 0; i < n; i++)
        assert_int_equal(nums[i], 200 - n + i);

    /* a single file: the log is started again */
    assert_int_equal(joblog_writer_open(dir, 1000, 1, &w, NULL), 0);
    write_numbered(w, 200, 50);
    joblog_writer_close(w);
    assert_true(file_size(dir, "log") <= 1000);
    remove_dir(dir);
}

static void test_tail(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 1000, 3, &w, NULL), 0);
    write_numbered(w, 0, 100);
    joblog_writer_close(w);
    int nums[400];
    struct joblog_reader *r;

    /* the last 30 lines span the three files */
    struct joblog_query q = {30, 0};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 400), 30);
    for (int i = 0; i < 30; i++)
        assert_int_equal(nums[i], 70 + i);
    joblog_reader_close(r);

    /* the last 3 from the newest file only */
    q = (struct joblog_query){3, 0};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 400), 3);
    assert_int_equal(nums[0], 97);
    joblog_reader_close(r);

    /* more than there are: all of them */
    q = (struct joblog_query){100000, 0};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    int all = read_numbers(r, nums, 400);
    assert_true(all > 40 && all < 100);
    assert_int_equal(nums[all - 1], 99);
    joblog_reader_close(r);

    /* the last 5 of stderr (every third line) */
    q = (struct joblog_query){5, 1 << JOBLOG_STDERR};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 400), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(nums[i], 87 + 3 * i);
    joblog_reader_close(r);

    /* none: only what comes later */
    q = (struct joblog_query){0, 0};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 400), 0);
    assert_int_equal(joblog_writer_open(dir, 1000, 3, &w, NULL), 0);
    write_numbered(w, 100, 2);
    assert_int_equal(read_numbers(r, nums, 400), 2);
    assert_int_equal(nums[0], 100);
    joblog_writer_close(w);
    joblog_reader_close(r);
    remove_dir(dir);
}

static void test_follow(void **state)
{
    (void)state;
    char *dir = make_dir();
    struct joblog_reader *r;
    struct joblog_query q = {10, 0};
    /* before the log exists */
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    int nums[2000];
    assert_int_equal(read_numbers(r, nums, 2000), 0);
    assert_int_equal(joblog_reader_wait(r, 50), PIER_ETIMEOUT);

    struct joblog_writer *w;
    assert_int_equal(joblog_writer_open(dir, 2000, 10, &w, NULL), 0);
    write_numbered(w, 0, 5);
    assert_int_equal(joblog_reader_wait(r, 1000), 0);
    int n = read_numbers(r, nums, 2000);
    assert_int_equal(n, 5);

    /* a step at a time across rotations */
    int next = 5, seen = 5;
    for (int round = 0; round < 30; round++) {
        write_numbered(w, next, 17);
        next += 17;
        n = read_numbers(r, nums, 2000);
        for (int i = 0; i < n; i++)
            assert_int_equal(nums[i], seen + i);
        seen += n;
    }
    assert_int_equal(seen, next);

    /* behind by several rotations (all files still kept) */
    write_numbered(w, next, 300);
    next += 300;
    n = read_numbers(r, nums, 2000);
    assert_int_equal(n, 300);
    for (int i = 0; i < n; i++)
        assert_int_equal(nums[i], seen + i);
    joblog_writer_close(w);
    joblog_reader_close(r);
    remove_dir(dir);
}

static void test_malformed(void **state)
{
    (void)state;
    struct joblog_line l;
    const char *bad[] = {
        "",
        "hello",
        "2026-11-25T16:54:52.123456Z stdout",
        "2026-11-25T16:54:52.123456Z stdin hello",
        "2026-11-25T16:54:52.123456Z stdoutx hello",
        "2026-11-25T16:54:52.12345Z stdout hello",
        "2026-11-25 16:54:52.123456Z stdout hello",
        "2026-11-25T16:54:52.123456X stdout hello",
        "2026-1a-25T16:54:52.123456Z stdout hello",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(joblog_parse_line(str_from(bad[i]), &l), -1);
    assert_int_equal(joblog_parse_line(str_from("2026-11-25T16:54:52.123456Z stderr "), &l), 0);
    assert_int_equal(l.msg.len, 0);
    assert_int_equal(joblog_parse_line(str_from("2026-11-25T16:54:52.123456Z stdout a b  c"), &l),
                     0);
    assert_true(str_eq(l.msg, "a b  c"));
    assert_true(str_eq(l.ts, "2026-11-25T16:54:52.123456Z"));

    /* a reader skips lines that are not log lines */
    char *dir = make_dir();
    char path[512];
    snprintf(path, sizeof(path), "%s/log", dir);
    FILE *f = fopen(path, "w");
    fputs("2026-11-25T16:54:52.123456Z stdout line 1\n"
          "garbage\n"
          "\n"
          "2026-11-25T16:54:52.123456Z stderr line 2\n"
          "2026-11-25T16:54:52.123456Z stdout line 3\n"
          "2026-11-25T16:54:52.123456Z stdout cut off with",
          f);
    fclose(f);
    int nums[10];
    struct joblog_reader *r;
    struct joblog_query q = {2, 0};
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 10), 2);
    assert_int_equal(nums[0], 2);
    joblog_reader_close(r);
    q.lines = -1;
    assert_int_equal(joblog_reader_open(dir, &q, &r, NULL), 0);
    assert_int_equal(read_numbers(r, nums, 10), 3);
    joblog_reader_close(r);
    remove_dir(dir);

    struct pier_err err;
    assert_int_equal(joblog_reader_open("/nonexistent/pier-job", &q, &r, &err), PIER_ENOTFOUND);
    assert_null(r);
    struct joblog_writer *w;
    assert_true(joblog_writer_open("/nonexistent/pier-job", 0, 0, &w, &err) < 0);
    assert_null(w);
    assert_non_null(strstr(err.msg, "/nonexistent/pier-job"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_and_streams),
        cmocka_unit_test(test_partial_flush),
        cmocka_unit_test(test_long_line_split),
        cmocka_unit_test(test_carriage_returns),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_tail),
        cmocka_unit_test(test_follow),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
