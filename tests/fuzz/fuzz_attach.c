// fuzz-sources: src/host/attach.c src/lib/buf.c
/* libFuzzer target for src/host/attach.c: the flynn-attach/0 frame decoder.
 * Beyond "no crash, no sanitizer report", it checks that every frame
 * returned re-encodes to exactly the bytes it was decoded from, that
 * payloads stay within ATTACH_MAX_FRAME and inside the input, and that
 * feeding the input in random pieces gives the same frames and the same
 * verdict as feeding it whole. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/attach.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_attach: check failed: %s (line %d)\n", #cond, __LINE__);         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t rng;

static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* The frame as the encoders write it. */
static void encode(const struct attach_frame *f, struct buf *out)
{
    switch (f->type) {
    case ATTACH_DATA: attach_put_data(out, f->stream, f->data, f->len); break;
    case ATTACH_EXIT: attach_put_exit(out, f->value); break;
    case ATTACH_SIGNAL: attach_put_signal(out, f->value); break;
    case ATTACH_RESIZE: attach_put_resize(out, f->rows, f->cols); break;
    case ATTACH_ERROR: {
        /* attach_put_error takes a C string; the payload may hold NULs */
        uint8_t head[5] = {ATTACH_ERROR, (uint8_t)(f->len >> 24), (uint8_t)(f->len >> 16),
                           (uint8_t)(f->len >> 8), (uint8_t)f->len};
        buf_append(out, head, 5);
        buf_append(out, f->data, f->len);
        break;
    }
    default: CHECK(!"unknown frame type returned");
    }
}

/* Decodes input fed in pieces (whole when pieces is false): the frames,
 * re-encoded, go to frames; returns the last verdict (0 or -1). */
static int decode(const uint8_t *d, size_t n, bool pieces, struct buf *frames)
{
    struct attach_decoder dec = {BUF_INIT, 0};
    size_t at = 0;
    int r = 0;
    while (at < n && r >= 0) {
        size_t take = pieces ? 1 + next_rand() % 16 : n;
        if (take > n - at)
            take = n - at;
        buf_append(&dec.in, d + at, take);
        at += take;
        struct attach_frame f;
        while ((r = attach_next(&dec, &f)) == 1) {
            CHECK(f.len <= ATTACH_MAX_FRAME);
            if (f.len)
                CHECK(f.data >= dec.in.p && f.data + f.len <= dec.in.p + dec.in.len);
            CHECK(dec.used <= dec.in.len);
            size_t before = frames->len;
            encode(&f, frames);
            CHECK(frames->len - before <= dec.used);
            CHECK(memcmp(frames->p + before, dec.in.p + dec.used - (frames->len - before),
                         frames->len - before) == 0);
        }
        CHECK(r == 0 || r == -1);
    }
    attach_decoder_free(&dec);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t size)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; i++)
        h = (h ^ d[i]) * 1099511628211ull;
    rng = h | 1;

    struct buf whole = BUF_INIT, split = BUF_INIT;
    int r1 = decode(d, size, false, &whole);
    int r2 = decode(d, size, true, &split);
    CHECK(r1 == r2);
    CHECK(whole.len == split.len);
    if (whole.len)
        CHECK(memcmp(whole.p, split.p, whole.len) == 0);
    /* the frames are a prefix of the input */
    CHECK(whole.len <= size);
    if (whole.len)
        CHECK(memcmp(whole.p, d, whole.len) == 0);
    buf_free(&whole);
    buf_free(&split);
    return 0;
}
