/* httpc: the HTTP/1.1 client every outbound request in pier goes through,
 * over libcurl.
 *
 * A struct httpc is a pool of keep-alive connections. All calls on one
 * struct httpc are thread-safe: each request borrows an idle connection (or
 * opens one) and gives it back afterwards, so concurrent requests from
 * several threads run on separate connections and sequential ones reuse
 * them. A struct httpc_stream belongs to one thread at a time. Every
 * connection uses TCP keepalive probes after 5 s of quiet (5 s apart, 3
 * unanswered: dead), so a peer that vanished without closing is noticed in
 * about 20 s even on an idle stream.
 *
 * Errors name the peer and the cause ("store at http://127.0.0.1:7001:
 * connection refused"); the peer is req->name, or the URL when it is NULL:
 *   -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT  no connection could be made:
 *                  the request was never sent (httpc_not_sent says so)
 *   PIER_ETIMEOUT  the request was sent but the answer did not come in time
 *   PIER_EUNAVAIL  the connection broke during the exchange
 *   PIER_ETOOBIG   the answer was larger than req->max_body
 *   PIER_EINVAL    a bad request (URL, method)
 *   -ECANCELED     a stream callback asked to stop
 *   HTTPC_ETLS     https: the server's certificate did not verify (against
 *                  req->ca_pem or the system CAs), or the TLS handshake failed
 * An HTTP error status is not an error here: callers read resp->status. */
#ifndef PIER_HTTPC_H
#define PIER_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/buf.h"
#include "lib/err.h"

struct httpc;

/* The server's certificate did not verify, or TLS could not be set up. */
#define HTTPC_ETLS (-1100)

struct httpc_req {
    const char *method;              /* NULL: GET, or POST when there is a body */
    const char *url;                 /* http://host:port/path?query */
    const char *name;                /* what to call the peer in errors (NULL: the URL) */
    const char *const *headers;      /* NULL-terminated "Name: value" lines, or NULL */
    const void *body;                /* request body (borrowed), or NULL */
    size_t body_len;                 /* its length */
    long connect_timeout_ms;         /* 0: 2000 */
    long timeout_ms;                 /* whole exchange; 0: 30000. Streams: see below */
    const char *const *want_headers; /* NULL-terminated response header names to keep */
    size_t max_body;                 /* largest answer accepted; 0: 64 MiB */
    const char *ca_pem;              /* https: trust only these PEM certificates (a cluster's
                                        CA) instead of the system's; NULL: the system's */
};

struct httpc_header {
    char *name; /* as asked in want_headers */
    char *value;
};

struct httpc_resp {
    long status;                  /* 200, 404, ... */
    struct buf body;              /* the whole body (empty buf when none) */
    struct httpc_header *headers; /* the wanted headers that were present */
    size_t n_headers;
};

/* A new, empty connection pool for httpc_free. Also initializes libcurl
 * (once per process). */
struct httpc *httpc_new(void);
/* Closes every pooled connection. No request may be running. NULL allowed. */
void httpc_free(struct httpc *h);

/* Sends req and waits for the whole answer. On success (any HTTP status)
 * fills *resp, which the caller releases with httpc_resp_release. On failure
 * *resp is left empty. */
int httpc_do(struct httpc *h, const struct httpc_req *req, struct httpc_resp *resp,
             struct pier_err *err);
/* The value of a kept response header (case-insensitive name), borrowed from
 * resp, or NULL. */
const char *httpc_resp_header(const struct httpc_resp *resp, const char *name);
/* Frees what resp holds (not resp itself) and empties it. NULL allowed. */
void httpc_resp_release(struct httpc_resp *resp);

/* Whether an error code from this module means the request never reached
 * the server, so trying another server cannot apply it twice. */
bool httpc_not_sent(int code);

/* --- streaming ------------------------------------------------------- */

/* Receives body bytes as they arrive. Returns 0 to go on, anything else to
 * abort the stream (which then reports -ECANCELED). */
typedef int (*httpc_data_fn)(const char *data, size_t len, void *ud);

/* A request whose body is consumed as it arrives (watches, server-sent
 * events). For streams, req->timeout_ms bounds only the wait for the
 * response headers; the body may last forever. max_body does not apply. */
struct httpc_stream;

/* Sends req and waits until the response headers have arrived (fn may
 * already have been called with the first body bytes). On success *out is
 * new, for httpc_stream_close. Its connection is its own, not pooled. */
int httpc_stream_open(struct httpc *h, const struct httpc_req *req, httpc_data_fn fn, void *ud,
                      struct httpc_stream **out, struct pier_err *err);
/* The response status of an open stream. */
long httpc_stream_status(const struct httpc_stream *s);
/* Moves the stream on for up to timeout_ms (0: only what is already there;
 * -1: no limit), calling fn with body bytes. Returns as soon as some bytes
 * were delivered: 1 when the stream is still open, 0 when the server ended
 * the body, or a negative error (also once it has ended: poll then keeps
 * returning the same result). */
int httpc_stream_poll(struct httpc_stream *s, int timeout_ms, struct pier_err *err);
/* Aborts the stream if it is still running and frees it. NULL allowed. */
void httpc_stream_close(struct httpc_stream *s);

/* Blocking convenience: opens req and delivers the whole body to fn until
 * the server ends it (returns 0), fn aborts (-ECANCELED) or the connection
 * fails. *status (optional) gets the response status. */
int httpc_stream_run(struct httpc *h, const struct httpc_req *req, httpc_data_fn fn, void *ud,
                     long *status, struct pier_err *err);

/* Appends "Authorization: Basic " and the base64 of ":KEY": how pier's
 * daemons take the cluster key (any user name). */
void httpc_basic_auth(struct buf *out, const char *key);

#endif
