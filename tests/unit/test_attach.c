#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host/attach.h"

/* One of each frame, in both directions. */
static void put_all(struct buf *b)
{
    attach_put_data(b, ATTACH_STDOUT, "hello", 5);
    attach_put_data(b, ATTACH_STDERR, "", 0);
    attach_put_exit(b, 137);
    attach_put_error(b, "no such job");
    attach_put_signal(b, 15);
    attach_put_resize(b, 24, 80);
    attach_put_data(b, ATTACH_STDIN, "ls\n", 3);
}

static void check_all(struct attach_decoder *d)
{
    struct attach_frame f;
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_DATA);
    assert_int_equal(f.stream, ATTACH_STDOUT);
    assert_int_equal(f.len, 5);
    assert_memory_equal(f.data, "hello", 5);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_DATA);
    assert_int_equal(f.stream, ATTACH_STDERR);
    assert_int_equal(f.len, 0);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_EXIT);
    assert_int_equal(f.value, 137);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_ERROR);
    assert_int_equal(f.len, 11);
    assert_memory_equal(f.data, "no such job", 11);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_SIGNAL);
    assert_int_equal(f.value, 15);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_RESIZE);
    assert_int_equal(f.rows, 24);
    assert_int_equal(f.cols, 80);
    assert_int_equal(attach_next(d, &f), 1);
    assert_int_equal(f.type, ATTACH_DATA);
    assert_int_equal(f.stream, ATTACH_STDIN);
    assert_memory_equal(f.data, "ls\n", 3);
    assert_int_equal(attach_next(d, &f), 0);
}

static void test_round_trip(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    put_all(&b);
    /* the wire format, byte for byte, for the first frames */
    static const char head[] = "\x03\x01\x00\x00\x00\x05hello\x03\x02\x00\x00\x00\x00"
                               "\x05\x00\x00\x00\x89";
    assert_memory_equal(b.p, head, sizeof(head) - 1);

    struct attach_decoder d = {BUF_INIT, 0};
    buf_append(&d.in, b.p, b.len);
    check_all(&d);
    assert_int_equal(d.in.len, 0); /* consumed once it needed more */
    attach_decoder_free(&d);
    attach_decoder_free(&d); /* twice is harmless */
    buf_free(&b);
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    struct buf b = BUF_INIT;
    put_all(&b);
    struct attach_decoder d = {BUF_INIT, 0};
    struct attach_frame f;
    int frames = 0;
    for (size_t i = 0; i < b.len; i++) {
        buf_append(&d.in, b.p + i, 1);
        int r;
        while ((r = attach_next(&d, &f)) == 1)
            frames++;
        assert_int_equal(r, 0);
    }
    assert_int_equal(frames, 7);
    /* and again, in one piece after appending between calls */
    buf_append(&d.in, b.p, 11);
    assert_int_equal(attach_next(&d, &f), 1);
    buf_append(&d.in, b.p + 11, b.len - 11);
    assert_int_equal(f.type, ATTACH_DATA);
    assert_int_equal(attach_next(&d, &f), 1);
    assert_int_equal(f.len, 0);
    attach_decoder_free(&d);
    buf_free(&b);
}

static void test_empty_decoder(void **state)
{
    (void)state;
    struct attach_decoder d = {BUF_INIT, 0};
    struct attach_frame f;
    assert_int_equal(attach_next(&d, &f), 0);
    attach_decoder_free(&d);
}

static void test_bad_type(void **state)
{
    (void)state;
    static const uint8_t bad[] = {0x00, 0x01, 0x07, 0xff, 'e'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        struct attach_decoder d = {BUF_INIT, 0};
        struct attach_frame f;
        attach_put_exit(&d.in, 0);
        buf_append(&d.in, &bad[i], 1);
        assert_int_equal(attach_next(&d, &f), 1);
        assert_int_equal(attach_next(&d, &f), -1);
        attach_decoder_free(&d);
    }
}

static void test_oversize(void **state)
{
    (void)state;
    struct attach_decoder d = {BUF_INIT, 0};
    struct attach_frame f;
    /* data: the length is checked as soon as the head is there */
    buf_append(&d.in, "\x03\x00\x00\x10\x00\x01", 6);
    assert_int_equal(attach_next(&d, &f), -1);
    attach_decoder_free(&d);
    buf_append(&d.in, "\x02\xff\xff\xff\xff", 5);
    assert_int_equal(attach_next(&d, &f), -1);
    attach_decoder_free(&d);

    /* exactly the largest payload is a frame */
    char *big = calloc(1, ATTACH_MAX_FRAME);
    attach_put_data(&d.in, ATTACH_STDIN, big, ATTACH_MAX_FRAME);
    assert_int_equal(attach_next(&d, &f), 1);
    assert_int_equal(f.len, ATTACH_MAX_FRAME);
    assert_int_equal(attach_next(&d, &f), 0);
    attach_decoder_free(&d);
    free(big);

    /* an error message is cut to the largest payload */
    struct buf b = BUF_INIT;
    char *msg = malloc(ATTACH_MAX_FRAME + 10);
    memset(msg, 'x', ATTACH_MAX_FRAME + 9);
    msg[ATTACH_MAX_FRAME + 9] = '\0';
    attach_put_error(&b, msg);
    assert_int_equal(b.len, 5 + ATTACH_MAX_FRAME);
    free(msg);
    buf_free(&b);
}

static void test_many_small_frames(void **state)
{
    (void)state;
    struct attach_decoder d = {BUF_INIT, 0};
    for (int i = 0; i < 100000; i++)
        attach_put_signal(&d.in, (uint32_t)i);
    struct attach_frame f;
    for (int i = 0; i < 100000; i++) {
        assert_int_equal(attach_next(&d, &f), 1);
        assert_int_equal(f.value, (uint32_t)i);
    }
    assert_int_equal(attach_next(&d, &f), 0);
    attach_decoder_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_empty_decoder), cmocka_unit_test(test_bad_type),
        cmocka_unit_test(test_oversize),      cmocka_unit_test(test_many_small_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
