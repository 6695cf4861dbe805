/* attach: the frames of an attached job's stream, Flynn's flynn-attach/0
 * (FLYNN-CLIENT-CONTRACT.md section 7), spoken after an HTTP upgrade by the
 * agent's attach endpoint (and, through it, by the shim that owns the job's
 * stdio).
 *
 * Server to client:
 *   0x03 <stream:1> <len:u32 BE> <bytes>   output; stream 1 stdout, 2 stderr,
 *                                          3 init log; len 0 closes the stream
 *   0x05 <status:u32 BE>                   exit status; the last frame
 *   0x02 <len:u32 BE> <msg>                error
 * Client to server:
 *   0x03 0x00 <len:u32 BE> <bytes>         stdin; len 0 is stdin EOF
 *   0x04 <signal:u32 BE>                   send a signal
 *   0x06 <rows:u16 BE> <cols:u16 BE>       resize the TTY
 *
 * The decoder is incremental: feed it bytes as they arrive. */
#ifndef PIER_HOST_ATTACH_H
#define PIER_HOST_ATTACH_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

enum {
    ATTACH_ERROR = 0x02,
    ATTACH_DATA = 0x03,
    ATTACH_SIGNAL = 0x04,
    ATTACH_EXIT = 0x05,
    ATTACH_RESIZE = 0x06,
};
enum { ATTACH_STDIN = 0, ATTACH_STDOUT = 1, ATTACH_STDERR = 2, ATTACH_INITLOG = 3 };

/* Largest data or error payload a frame may carry; larger is a protocol error. */
#define ATTACH_MAX_FRAME (1 << 20)

struct attach_frame {
    uint8_t type;
    uint8_t stream;      /* ATTACH_DATA */
    uint32_t value;      /* ATTACH_SIGNAL: signal; ATTACH_EXIT: status */
    uint16_t rows, cols; /* ATTACH_RESIZE */
    const char *data;    /* ATTACH_DATA, ATTACH_ERROR: payload, borrowed from the decoder */
    size_t len;
};

/* Encoders append one frame to out. */
void attach_put_data(struct buf *out, uint8_t stream, const void *data, size_t len);
void attach_put_exit(struct buf *out, uint32_t status);
void attach_put_error(struct buf *out, const char *msg);
void attach_put_signal(struct buf *out, uint32_t sig);
void attach_put_resize(struct buf *out, uint16_t rows, uint16_t cols);

/* Decoder: append received bytes to in, then call attach_next until it
 * returns 0. Returns 1 with *f filled (its data borrowed from in, valid
 * until the next call), 0 when in holds no complete frame yet, or -1 for
 * bytes that are not a frame (an unknown type, a payload over
 * ATTACH_MAX_FRAME): the peer is broken, close the stream. Returned frames
 * stay at the front of in until attach_next returns 0 (then they are
 * dropped), so appending to in between calls is fine. */
struct attach_decoder {
    struct buf in;
    size_t used; /* bytes at the front of in already returned as frames */
};
int attach_next(struct attach_decoder *d, struct attach_frame *f);
void attach_decoder_free(struct attach_decoder *d);

#endif
