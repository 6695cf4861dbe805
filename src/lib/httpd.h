/* httpd: the HTTP API server layer every pierd daemon uses, over
 * libmicrohttpd (one thread per connection, so handlers may block).
 *
 * A server has a routing table of method + path pattern -> handler.
 * Patterns are split on '/'; a segment ":name" captures one path segment
 * (read with httpd_param), a final segment "*" captures the rest. Routes are
 * tried in the order they were added; add them all before httpd_start.
 *
 * Errors go out in one of two shapes, chosen per server:
 *  - Flynn's: {"code":"not_found","message":...,"detail":null,"retry":false},
 *    and "not found" as a bare 404 with no body (a Flynn client relies on it);
 *  - etcd's JSON gateway's: {"error":...,"code":<grpc code>,"message":...}.
 *
 * A handler answers exactly once with one of the httpd_reply_* calls; a
 * handler that returns without answering gets a 500. A handler may instead
 * switch the connection to another protocol (httpd_reply_upgrade). */
#ifndef PIER_HTTPD_H
#define PIER_HTTPD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

struct httpd;
struct httpd_req;

typedef void (*httpd_handler)(struct httpd_req *req, void *ud);

enum httpd_error_style { HTTPD_ERRORS_FLYNN, HTTPD_ERRORS_ETCD };

struct httpd_options {
    const char *listen; /* "HOST:PORT", "[V6]:PORT" or ":PORT"; port 0 picks a free one */
    const char *comp;   /* component name for logs, e.g. "store" */
    size_t max_body;    /* larger request bodies are refused; 0 means 1.5 MiB */
    const char *key;    /* when set, requests need Basic (any user) or Bearer auth with it */
    enum httpd_error_style errors;
};

/* A new server, not yet listening. Never NULL. */
struct httpd *httpd_new(const struct httpd_options *opt);
/* Adds a route (before httpd_start). method "*" matches any method.
 * public: answered without an Authorization header even when a key is set
 * (a header that is present must still carry the right key). */
void httpd_route(struct httpd *h, const char *method, const char *pattern, httpd_handler fn,
                 void *ud, bool public);
/* Binds and starts serving. Every server also answers GET /.well-known/status.
 * PIER_EINVAL for a listen address that cannot be parsed or resolved,
 * PIER_EUNAVAIL when it cannot be bound (in use, not ours); the message
 * names the address. */
int httpd_start(struct httpd *h, struct pier_err *err);
/* The bound port (useful after listening on port 0). */
int httpd_port(const struct httpd *h);
/* The address other processes reach the server at, HOST:PORT: the listen
 * host (a wildcard one as 127.0.0.1) with the bound port. A new string,
 * free() it. After httpd_start. */
char *httpd_reach_addr(const struct httpd *h);
/* Attaches what the handlers share, for those who hold only the server:
 * httpd_data returns it, and httpd_free calls free_fn(data) (NULL: nothing)
 * once no handler runs any more. */
void httpd_set_data(struct httpd *h, void *data, void (*free_fn)(void *data));
void *httpd_data(const struct httpd *h);
/* Stops taking new connections and waits up to timeout_ms for the
 * requests in progress to end (finite streams and bodies still being read
 * included; idle keep-alive connections do not count). Endless streams
 * (httpd_reply_stream_endless) are ended at once, cleanly, within about
 * 250 ms. Replies sent from then on close their connection, and so does
 * the end of a reply begun before. Returns true when none is left; either
 * way, call httpd_free next. For a graceful stop on SIGTERM. */
bool httpd_drain(struct httpd *h, int timeout_ms);
/* Stops serving: waits for running handlers; open streams end within
 * about 250 ms; upgraded connections get their sockets shut down and are
 * waited for up to 5 s (an upgrade fn that ignores its socket past that
 * leaves the server allocated, with an error logged, rather than freed
 * under it). Frees h. NULL allowed. */
void httpd_free(struct httpd *h);

/* Request accessors. Returned strings are borrowed until the reply. */
const char *httpd_method(const struct httpd_req *r);
const char *httpd_path(const struct httpd_req *r);
/* A ":name" capture of the route pattern, or "*" for the rest; NULL if none. */
const char *httpd_param(const struct httpd_req *r, const char *name);
/* A query-string argument, or NULL. */
const char *httpd_query(const struct httpd_req *r, const char *name);
/* A request header (case-insensitive), or NULL. */
const char *httpd_header(const struct httpd_req *r, const char *name);
/* Whether header name lists token (case-insensitive, comma-separated, as
 * "Upgrade: foo, flynn-attach/0" or "Connection: keep-alive, Upgrade"). */
bool httpd_header_has(const struct httpd_req *r, const char *name, const char *token);
/* Whether the request's Authorization header carries key: "Basic" with any
 * user and key as the password, or "Bearer <key>". Compared in constant
 * time. False without such a header; key must not be NULL. (The server's
 * own --key check uses it; so may a handler that checks a key of its own.) */
bool httpd_key_ok(const struct httpd_req *r, const char *key);
/* Writes the client's address as text ("127.0.0.1", "::1") into out, or ""
 * when it is not known. */
void httpd_remote_addr(const struct httpd_req *r, char *out, size_t len);
/* The whole request body (possibly empty), NUL-terminated. */
struct str httpd_body(const struct httpd_req *r);
/* Parses the body as a JSON object; on failure replies 400 itself and
 * returns a negative error, so the handler just returns. */
int httpd_body_json(struct httpd_req *r, json_t **out);

/* Adds a header to the reply this request is about to get (from any
 * httpd_reply_* call after it). name and value are copied. */
void httpd_add_header(struct httpd_req *r, const char *name, const char *value);

/* Replies with bytes (copied). */
void httpd_reply(struct httpd_req *r, int status, const char *content_type, const void *body,
                 size_t len);
/* Replies with JSON; steals the reference to j. */
void httpd_reply_json(struct httpd_req *r, int status, json_t *j);
/* Replies with an error in the server's style. code is Flynn's code name
 * ("validation_error", ...); for the etcd style, grpc_code is used. */
void httpd_reply_error(struct httpd_req *r, int status, const char *code, int grpc_code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Replies with a pier_err, mapping its code to Flynn's status and code
 * name; a not-found in Flynn style becomes a bare 404. (An etcd-style server
 * maps its own errors to gRPC codes and calls httpd_reply_error.) */
void httpd_reply_err(struct httpd_req *r, const struct pier_err *e);
/* A bare 404: no body, no JSON content type. */
void httpd_reply_not_found(struct httpd_req *r);

/* Streams a chunked response. next() is called again and again on the
 * connection's own thread; it may block up to timeout_ms and appends what it
 * has to out. It returns 1 while the stream goes on (out may be empty), 0 to
 * end the stream cleanly, or a negative value to cut it. The stream also
 * ends when the client hangs up or the server stops. done() is called once
 * at the end (NULL allowed) to free ud, also when the stream could not be
 * started. The status line and headers go out
 * at once, before next() is first called (server-sent events need that). */
typedef int (*httpd_stream_next)(void *ud, struct buf *out, int timeout_ms);
typedef void (*httpd_stream_done)(void *ud);
void httpd_reply_stream(struct httpd_req *r, int status, const char *content_type,
                        httpd_stream_next next, httpd_stream_done done, void *ud);

/* Like httpd_reply_stream, for a stream that ends only when its client
 * leaves (server-sent events, a log follow of a running job), whose clients
 * reconnect and resume where they were: httpd_drain does not wait for it
 * but ends it at once, cleanly (what next() has ready, from one last call
 * with timeout_ms 0, goes out, then the chunked end), and the client
 * reconnects elsewhere. Finite streams (a download, a log that ends) use
 * httpd_reply_stream, which a drain lets finish. */
void httpd_reply_stream_endless(struct httpd_req *r, int status, const char *content_type,
                                httpd_stream_next next, httpd_stream_done done, void *ud);

/* Like httpd_reply_stream, for a body of a known size: the reply carries
 * "Content-Length: size" rather than chunked encoding and no Cache-Control,
 * and next() must produce exactly size bytes in all (what it adds past that
 * is dropped). A stream cut before its end (next() returning a negative
 * value, or 0 too early) closes the connection before the last byte, which
 * the client sees as a short body. For a HEAD request only the headers go
 * out and next() is never called. */
void httpd_reply_stream_sized(struct httpd_req *r, int status, const char *content_type,
                              uint64_t size, httpd_stream_next next, httpd_stream_done done,
                              void *ud);

/* Streamed request bodies. A route added with httpd_route_upload runs its
 * handler as soon as the request's headers are in (after the auth check),
 * before any of the body is read; its body is neither kept nor held to
 * max_body. The handler either
 *  - calls httpd_body_stream: ops->data(ctx, ...) then gets each piece of
 *    the body as it arrives, on the connection's thread (a negative return
 *    closes the connection); ops->end(r, ctx) runs once the whole body is
 *    in and replies; ops->done(ctx) runs once, last, in every case (also
 *    when the client left mid-body or data() cut it), to free ctx;
 *  - or replies at once (a refusal; not with httpd_reply_upgrade): that
 *    reply goes out after the body has been read and dropped (past 64 MiB
 *    the connection is closed instead), or at once, with the body never
 *    read, when the client sent "Expect: 100-continue". */
struct httpd_body_ops {
    int (*data)(void *ctx, const char *p, size_t len);
    void (*end)(struct httpd_req *r, void *ctx);
    void (*done)(void *ctx);
};
void httpd_route_upload(struct httpd *h, const char *method, const char *pattern, httpd_handler fn,
                        void *ud, bool public);
/* Takes the body of an upload route's request as described above; ops is
 * borrowed and must outlive the request (a static table). */
void httpd_body_stream(struct httpd_req *r, const struct httpd_body_ops *ops, void *ctx);

/* Switches the connection to another protocol (an HTTP upgrade, such as
 * Flynn's attach): answers "101 Switching Protocols" with "Upgrade:
 * <protocol>" and "Connection: Upgrade", then calls fn on the connection's
 * own thread with the raw socket in blocking mode. extra holds bytes the
 * client sent after the request that were already read: treat them as the
 * first bytes read from fd. fn may read, write and shutdown() fd but must
 * not close it; the connection is closed when fn returns. The request body
 * was read before the handler ran, as for any request. done(ud) is called
 * once at the end (NULL allowed), also when the switch did not happen
 * (the client left first). The handler checks what the request asks for
 * (its Upgrade header); a request that is not HTTP/1.1 gets a 400 here.
 * When the server stops, fn's socket is shut down: reads see EOF and
 * writes fail, and fn is expected to return then. */
typedef void (*httpd_upgrade_fn)(void *ud, int fd, const char *extra, size_t extra_len);
void httpd_reply_upgrade(struct httpd_req *r, const char *protocol, httpd_upgrade_fn fn,
                         void (*done)(void *ud), void *ud);

#endif
