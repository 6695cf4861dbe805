/* err: the error carried up from where a thing failed to where it is shown.
 *
 * A function that can fail returns int: 0 on success, a negative errno or
 * PIER_E* code on failure, and fills an optional struct pier_err with a
 * message that names the thing and the cause. The message travels unchanged
 * to an HTTP error body or a CLI line. */
#ifndef PIER_ERR_H
#define PIER_ERR_H

#include <stddef.h>

/* Project error codes, below every errno value. */
enum {
    PIER_EINVAL = -1000,     /* bad input: 400 validation_error */
    PIER_ENOTFOUND = -1001,  /* 404 not_found */
    PIER_EEXISTS = -1002,    /* 409 object_exists */
    PIER_ECONFLICT = -1003,  /* 409 conflict: a compare failed */
    PIER_EUNAVAIL = -1004,   /* 503: a peer is not reachable, retry later */
    PIER_ETOOBIG = -1005,    /* 400 request_body_too_big */
    PIER_ECOMPACTED = -1006, /* the revision asked for has been compacted */
    PIER_EPROTO = -1007,     /* a peer answered something we cannot read */
    PIER_EINTERNAL = -1008,  /* a bug or an unexpected failure: 500 */
    PIER_ETIMEOUT = -1009,   /* a wait ran out */
};

struct pier_err {
    int code;      /* the same negative value the function returned */
    char msg[512]; /* human message: names the thing and the cause */
};

/* Fills err (which may be NULL) with code and a printf-style message and
 * returns code, so callers can write `return err_set(err, -ENOENT, ...)`. */
int err_set(struct pier_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with "what: ", keeping its code.
 * Returns err->code (or code when err is NULL). */
int err_wrap(struct pier_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err (NULL allowed). */
void err_clear(struct pier_err *err);

/* A short static name for a code: "not_found", "validation_error", ... in
 * Flynn's vocabulary, used as the "code" field of error JSON. */
const char *err_code_name(int code);

/* The HTTP status Flynn uses for a code (400, 404, 409, 500, 503, ...). */
int err_http_status(int code);

#endif
