/* http1: the project's incremental HTTP/1.x parser, shared by the router
 * (the hot path) and pier's own servers and clients.
 *
 * Heads. The caller accumulates bytes in its own buffer and calls
 * http1_parse_request() (or _response) after every read. The result is the
 * head's length when the head is complete, HTTP1_INCOMPLETE when more bytes
 * are needed, or a negative HTTP1_E* code when the head is malformed. Every
 * parsed field is a struct str view into the caller's buffer: valid while
 * the buffer is, never NUL-terminated. The parse path allocates nothing and
 * rescans from the start; pass last_len to the _ex variants to make
 * repeated calls on a slowly growing head cost only the new bytes.
 *
 * Strictness, chosen so the router and a backend cannot disagree on where
 * a message ends (request smuggling):
 * - rejected: obs-fold, whitespace between a field name and its colon, a
 *   non-token byte in a method or field name, a bare CR, NUL or any other
 *   control byte (HTAB aside) in a field value, HTTP versions other than
 *   1.0 and 1.1, Content-Length together with Transfer-Encoding, differing
 *   Content-Length values, a Content-Length that is not 1*DIGIT or does not
 *   fit in int64_t, chunked applied twice or with parameters, a request
 *   Transfer-Encoding whose last coding is not chunked, Transfer-Encoding in
 *   an HTTP/1.0 message, a request with two Host fields, an HTTP/1.1 request
 *   without one, and a Host value with bytes no URI authority may hold.
 * - accepted: a bare LF wherever the head has a line end (as nginx does;
 *   the router writes its own heads, so this leniency does not travel), one
 *   empty line before a request line (clients that add CRLF after a body),
 *   bytes >= 0x80 in the target, reason and field values, a status line
 *   without a reason phrase, repeated identical Content-Length fields.
 * - chunked framing is strict: every line end inside a chunked body is
 *   CRLF, chunk sizes have at most HTTP1_CHUNK_SIZE_DIGITS hex digits.
 *
 * A proxy should still write its own framing headers (Content-Length or
 * Transfer-Encoding: chunked) rather than forward the client's verbatim. */
#ifndef PIER_HTTP1_H
#define PIER_HTTP1_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Header fields kept per message; one more is HTTP1_ETOO_MANY_HEADERS. */
#define HTTP1_MAX_HEADERS 100
/* Default cap on a head (start line through the empty line), in bytes. */
#define HTTP1_MAX_HEAD (64 * 1024)
/* Cap on the hex digits of one chunk size, leading zeros included: sizes
 * stay below 2^60, so no arithmetic on them can overflow. */
#define HTTP1_CHUNK_SIZE_DIGITS 15
/* Cap on the extensions of one chunk-size line, in bytes. */
#define HTTP1_CHUNK_EXT_MAX 4096
/* Cap on the trailer section after the last chunk, in bytes. */
#define HTTP1_MAX_TRAILER (16 * 1024)

/* Results. HTTP1_INCOMPLETE is not an error: feed more bytes. The E codes
 * sit in their own range, below errno values and PIER_E* codes. */
enum {
    HTTP1_INCOMPLETE = -EAGAIN,
    HTTP1_EREQUEST_LINE = -1100,      /* malformed request line */
    HTTP1_EMETHOD = -1101,            /* method is not a token */
    HTTP1_ETARGET = -1102,            /* control byte in the request target */
    HTTP1_EVERSION = -1103,           /* HTTP version other than 1.0 / 1.1 (505) */
    HTTP1_ESTATUS_LINE = -1104,       /* malformed status line */
    HTTP1_EHEADER_NAME = -1105,       /* field name empty, not a token, or no colon */
    HTTP1_EHEADER_SPACE = -1106,      /* whitespace between field name and colon */
    HTTP1_EHEADER_VALUE = -1107,      /* NUL or control byte in a field value */
    HTTP1_EOBS_FOLD = -1108,          /* a field line starts with whitespace */
    HTTP1_EBARE_CR = -1109,           /* CR not followed by LF */
    HTTP1_ETOO_LARGE = -1110,         /* head longer than the cap (431) */
    HTTP1_ETOO_MANY_HEADERS = -1111,  /* more than HTTP1_MAX_HEADERS (431) */
    HTTP1_ECONTENT_LENGTH = -1112,    /* Content-Length not a number / too big */
    HTTP1_ECONTENT_LENGTHS = -1113,   /* Content-Length fields that differ */
    HTTP1_EFRAMING = -1114,           /* both Content-Length and Transfer-Encoding */
    HTTP1_ETRANSFER_ENCODING = -1115, /* bad or unusable Transfer-Encoding */
    HTTP1_EHOST = -1116,              /* missing, repeated or invalid Host */
    HTTP1_ECHUNK_SIZE = -1117,        /* chunk size not hex or too long */
    HTTP1_ECHUNK = -1118,             /* chunked framing: CRLF, extensions */
    HTTP1_ETRAILER = -1119,           /* invalid or too large trailer section */
};

/* Facts the parser derives from the header fields while it reads them. */
enum {
    HTTP1_F_CONTENT_LENGTH = 1u << 0,    /* content_length is set */
    HTTP1_F_TRANSFER_ENCODING = 1u << 1, /* a Transfer-Encoding field is present */
    HTTP1_F_CHUNKED = 1u << 2,           /* ... and its last coding is chunked */
    HTTP1_F_CONN_CLOSE = 1u << 3,        /* Connection lists "close" */
    HTTP1_F_CONN_KEEP_ALIVE = 1u << 4,   /* Connection lists "keep-alive" */
    HTTP1_F_CONN_UPGRADE = 1u << 5,      /* Connection lists "upgrade" */
    HTTP1_F_UPGRADE = 1u << 6,           /* a non-empty Upgrade field is present */
    HTTP1_F_EXPECT_CONTINUE = 1u << 7,   /* Expect: 100-continue */
    HTTP1_F_HOST = 1u << 8,              /* a Host field is present */
};

struct http1_header {
    struct str name;  /* as sent; compare case-insensitively */
    struct str value; /* without leading and trailing whitespace */
};

/* A parsed request (about 3.4 KiB, the header array inline: keep one per
 * connection rather than on a small stack). */
struct http1_request {
    struct str method;       /* case-sensitive token: "GET" */
    struct str target;       /* request-target as sent: "/p?q", "*", "host:443", "http://h/p" */
    struct str path;         /* target up to the first '?' */
    struct str query;        /* after the first '?'; len 0 when there is none */
    int minor_version;       /* 0 or 1 */
    unsigned flags;          /* HTTP1_F_* */
    uint64_t content_length; /* when HTTP1_F_CONTENT_LENGTH; <= INT64_MAX */
    struct str host;         /* the Host value; len 0 when absent or empty */
    struct str upgrade;      /* the first Upgrade value: "websocket" */
    size_t num_headers;
    struct http1_header headers[HTTP1_MAX_HEADERS];
};

struct http1_response {
    int minor_version; /* 0 or 1 */
    int status;        /* 100..999 */
    struct str reason; /* may be empty */
    unsigned flags;    /* HTTP1_F_*; Host and Expect are not looked at */
    uint64_t content_length;
    struct str upgrade;
    size_t num_headers;
    struct http1_header headers[HTTP1_MAX_HEADERS];
};

/* How a message's body is delimited. */
enum http1_body {
    HTTP1_BODY_NONE,        /* no body follows the head */
    HTTP1_BODY_LENGTH,      /* exactly length bytes (length may be 0) */
    HTTP1_BODY_CHUNKED,     /* chunked: decode with struct http1_chunked */
    HTTP1_BODY_UNTIL_CLOSE, /* responses only: everything until the peer closes */
};

struct http1_framing {
    enum http1_body body;
    uint64_t length; /* for HTTP1_BODY_LENGTH */
};

/* Parses a request head at the start of buf[0..len). Returns the head's
 * length (> 0; the body or the next pipelined request starts there),
 * HTTP1_INCOMPLETE when the head has not ended yet, or an HTTP1_E* code.
 * HTTP1_ETOO_LARGE when no head ends within HTTP1_MAX_HEAD bytes. req's
 * views borrow buf; on anything but success req's contents are undefined.
 * Feeding a head one byte at a time gives HTTP1_INCOMPLETE until its last
 * byte and then the same result as parsing it whole. */
int http1_parse_request(const char *buf, size_t len, struct http1_request *req);

/* http1_parse_request() with two knobs. last_len: 0, or the len of the
 * previous call on the same buffer, which returned HTTP1_INCOMPLETE; the
 * head is then only fully parsed once its end has arrived, so a head
 * trickling in costs O(new bytes) per call (errors in it are reported when
 * it ends rather than as soon as they arrive). max_head: cap on the head in
 * bytes; 0 means HTTP1_MAX_HEAD. */
int http1_parse_request_ex(const char *buf, size_t len, size_t last_len, size_t max_head,
                           struct http1_request *req);

/* Parses a response head; results as http1_parse_request(). */
int http1_parse_response(const char *buf, size_t len, struct http1_response *resp);

/* http1_parse_response() with the knobs of http1_parse_request_ex(). */
int http1_parse_response_ex(const char *buf, size_t len, size_t last_len, size_t max_head,
                            struct http1_response *resp);

/* The framing of a parsed request's body: chunked, Content-Length or none.
 * Cannot fail: the parser rejected every ambiguous combination. */
struct http1_framing http1_request_framing(const struct http1_request *req);

/* The framing of a parsed response's body. request_was_head: the request
 * it answers was HEAD. Responses to HEAD and 1xx, 204 and 304 responses
 * have no body whatever their headers say; a Transfer-Encoding not ending
 * in chunked, or no length at all, means the body runs until close. */
struct http1_framing http1_response_framing(const struct http1_response *resp,
                                            bool request_was_head);

/* Whether the client's connection stays open after this request:
 * HTTP/1.1 unless Connection lists close; HTTP/1.0 only if it lists
 * keep-alive (and not close). */
bool http1_request_keep_alive(const struct http1_request *req);

/* Whether the server's connection stays open after this response: the
 * rules of http1_request_keep_alive(), and never when the body runs until
 * close. request_was_head as for http1_response_framing(). */
bool http1_response_keep_alive(const struct http1_response *resp, bool request_was_head);

/* Whether the request asks to switch protocols: HTTP/1.1, Connection lists
 * upgrade and an Upgrade field names the protocol (in req->upgrade). */
bool http1_request_upgrade(const struct http1_request *req);

/* Whether the client waits for "100 Continue" before sending the body
 * (Expect: 100-continue on HTTP/1.1; HTTP/1.0 expectations are ignored). */
bool http1_request_expect_continue(const struct http1_request *req);

/* The value of the first field named name (case-insensitive), or
 * {NULL, 0} when there is none. The view borrows the parsed buffer. */
struct str http1_header_get(const struct http1_header *headers, size_t num_headers,
                            const char *name);

/* Whether the comma-separated list (a Connection or Upgrade value) holds
 * token, compared case-insensitively; whitespace around elements is
 * ignored. */
bool http1_token_list_has(struct str list, const char *token);

/* A short static reason for an HTTP1_E* code, fit for a 400 page: "obsolete
 * line folding in header". Unknown codes get "malformed HTTP message". */
const char *http1_strerror(int code);

/* The status to answer a client whose request failed to parse with code:
 * 431 for the size caps, 505 for HTTP1_EVERSION, 400 otherwise. (A proxy
 * whose backend sent a malformed response answers 502 instead.) */
int http1_error_status(int code);

/* Incremental chunked-body decoder: a byte-level state machine, so the
 * body may arrive split anywhere. Chunk extensions are checked and
 * skipped; trailer fields are checked and dropped. */
struct http1_chunked {
    int state;          /* private */
    unsigned count;     /* private: digits, extension or trailer bytes */
    uint64_t remaining; /* private: data bytes left in the current chunk */
    uint64_t total;     /* data bytes decoded so far */
};

/* Readies c for a new body. */
void http1_chunked_init(struct http1_chunked *c);

/* Decodes buf[0..*len) in place: on return buf[0..*len) holds the data
 * bytes it carried. Returns HTTP1_INCOMPLETE when the body goes on (all the
 * input was body), 0 when the body ended: then the *rest bytes that
 * followed it (the next pipelined message) have been moved to buf + *len.
 * A negative HTTP1_E* code on malformed framing; the error sticks. Once
 * the body has ended, all input is rest. */
int http1_chunked_decode(struct http1_chunked *c, char *buf, size_t *len, size_t *rest);

/* Like http1_chunked_decode() but leaves buf untouched, for passing a
 * chunked body through verbatim: returns HTTP1_INCOMPLETE (all len bytes
 * are body) or 0 with *rest = the bytes at the end of buf after the body. */
int http1_chunked_scan(struct http1_chunked *c, const char *buf, size_t len, size_t *rest);

#endif
