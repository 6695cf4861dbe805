#include "lib/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(struct pier_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int err_wrap(struct pier_err *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    /* Truncation is fine: the message is for people, and stays terminated. */
    size_t plen = strnlen(prefix, sizeof(prefix) - 1);
    size_t olen = strnlen(err->msg, sizeof(err->msg) - 1);
    if (plen + 2 + olen >= sizeof(err->msg))
        olen = sizeof(err->msg) - 1 - plen - 2;
    memmove(err->msg + plen + 2, err->msg, olen);
    memcpy(err->msg, prefix, plen);
    memcpy(err->msg + plen, ": ", 2);
    err->msg[plen + 2 + olen] = '\0';
    if (err->code == 0)
        err->code = code;
    return err->code;
}

void err_clear(struct pier_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *err_code_name(int code)
{
    switch (code) {
    case PIER_EINVAL:
    case -EINVAL: return "validation_error";
    case PIER_ENOTFOUND:
    case -ENOENT: return "not_found";
    case PIER_EEXISTS:
    case -EEXIST: return "object_exists";
    case PIER_ECONFLICT: return "conflict";
    case PIER_EUNAVAIL:
    case -ECONNREFUSED: return "service_unavailable";
    case PIER_ETOOBIG: return "request_body_too_big";
    case PIER_ECOMPACTED: return "precondition_failed";
    case PIER_ETIMEOUT:
    case -ETIMEDOUT: return "service_unavailable";
    default: return "unknown_error";
    }
}

int err_http_status(int code)
{
    switch (code) {
    case PIER_EINVAL:
    case PIER_ETOOBIG:
    case -EINVAL: return 400;
    case PIER_ENOTFOUND:
    case -ENOENT: return 404;
    case PIER_EEXISTS:
    case -EEXIST:
    case PIER_ECONFLICT: return 409;
    case PIER_ECOMPACTED: return 412;
    case PIER_EUNAVAIL:
    case -ECONNREFUSED:
    case PIER_ETIMEOUT:
    case -ETIMEDOUT: return 503;
    default: return 500;
    }
}
