/* stream: a byte stream of the router over libuv, plain TCP or TLS (the
 * client side of an https listener), so the proxy and the splice code see
 * plaintext only.
 *
 * Reads arrive in buffers from rbuf_get() that the callback owns: it
 * either frees them (rbuf_put) or passes them to rstream_write_buf(), which
 * frees them once written. That way a body moves from one side to the
 * other without a copy on plain streams.
 *
 * Flow control is the caller's: rstream_read_stop() the source while
 * rstream_queued() of the destination is above RSTREAM_HIGH_WATER, and
 * start it again from the destination's write callback. rstream_queued
 * counts the memory the queued writes hold, not their bytes, so the
 * high water bounds memory even when the pieces are small. A stream
 * belongs to its loop's thread. */
#ifndef PIER_ROUTER_STREAM_H
#define PIER_ROUTER_STREAM_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "router/tls.h"

/* Size of every read buffer. */
#define RBUF_SIZE (64 * 1024)
/* rstream_queued() above which a source should stop reading. */
#define RSTREAM_HIGH_WATER (256 * 1024)

/* A read buffer of RBUF_SIZE bytes from the calling thread's free list. */
char *rbuf_get(void);
/* Returns it (NULL allowed). */
void rbuf_put(char *buf);
/* Frees the calling thread's free list (at worker exit). */
void rbuf_thread_cleanup(void);
/* rbufs the calling thread has taken with rbuf_get and not yet put back:
 * the memory its streams hold in read and write buffers, RBUF_SIZE each
 * (for tests and diagnostics). */
size_t rbuf_outstanding(void);

struct rstream;

enum {
    RSTREAM_EOF = 1,   /* the peer closed cleanly (FIN, or TLS close_notify) */
    RSTREAM_ERROR = 2, /* reset, TLS failure or a failed connect */
};

struct rstream_cbs {
    /* n > 0 plaintext bytes in buf (owned by the callee, see above). */
    void (*on_data)(struct rstream *s, char *buf, size_t n);
    /* The read side ended: RSTREAM_EOF or RSTREAM_ERROR; no more on_data. */
    void (*on_end)(struct rstream *s, int why);
    /* rstream_connect finished: status 0 or a libuv error. */
    void (*on_connect)(struct rstream *s, int status);
};

/* Called once a write's bytes were handed to the kernel (status 0) or
 * failed (a libuv error; the stream is then broken). */
typedef void (*rstream_write_cb)(struct rstream *s, int status, void *ud);

struct rstream {
    uv_tcp_t tcp; /* private */
    void *data;   /* the caller's */
    /* private below */
    const struct rstream_cbs *cbs;
    struct tls_conn *tls;
    size_t queued; /* completions waiting to run */
    size_t held;   /* rstream_queued() */
    unsigned flags;
};

/* Accepts a connection from server into s (stream memory the caller owns
 * until the close callback). ctx non-NULL: the stream is TLS with ctx as
 * its default context, sni and sni_ud as in tls_conn_new. Returns 0 or a
 * libuv error (then s needs no close). Sets TCP_NODELAY. Reading starts
 * with rstream_read_start. */
int rstream_accept(uv_stream_t *server, struct rstream *s, const struct rstream_cbs *cbs,
                   SSL_CTX *ctx, tls_sni_fn sni, void *sni_ud);

/* Starts a plain connection to sa; cbs->on_connect tells how it went
 * (after a failure the stream must still be closed). */
int rstream_connect(uv_loop_t *loop, struct rstream *s, const struct rstream_cbs *cbs,
                    const struct sockaddr *sa);

int rstream_read_start(struct rstream *s);
void rstream_read_stop(struct rstream *s);

/* Writes bufs (borrowed: they must stay valid until cb). cb may be NULL.
 * Returns 0 or a libuv error (then cb is not called). */
int rstream_write(struct rstream *s, const uv_buf_t *bufs, unsigned n, rstream_write_cb cb,
                  void *ud);
/* Writes buf[0..n) and frees buf (an rbuf) once written. */
int rstream_write_buf(struct rstream *s, char *buf, size_t n, rstream_write_cb cb, void *ud);

/* The memory held by writes not yet handed to the kernel: RBUF_SIZE for
 * each rbuf still queued (one from rstream_write_buf, or a TLS stream's
 * ciphertext buffer), however few bytes it carries, plus the bytes of
 * rstream_write's borrowed buffers still queued. 0 once everything written
 * was handed to the kernel; a write's callback sees it without that write.
 * Writes the kernel took at once never count. */
size_t rstream_queued(const struct rstream *s);

/* Ends the write side once queued writes are out (FIN; TLS: close_notify
 * first). Reading goes on. */
void rstream_shutdown(struct rstream *s);

/* Closes at once (queued writes are dropped, their callbacks get
 * UV_ECANCELED) and calls close_cb from the loop when the memory of s may
 * be freed. */
void rstream_close(struct rstream *s, void (*close_cb)(struct rstream *s));

bool rstream_is_tls(const struct rstream *s);
/* The TLS SNI name (borrowed) or NULL. */
const char *rstream_servername(const struct rstream *s);

#endif
