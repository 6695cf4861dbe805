/* base64: standard alphabet with padding, as etcd's JSON gateway uses for
 * keys and values. */
#ifndef PIER_BASE64_H
#define PIER_BASE64_H

#include <stddef.h>

#include "lib/buf.h"

/* Appends the encoding of data to out. */
void base64_encode(struct buf *out, const void *data, size_t len);
/* Appends the decoding of in to out. Returns 0, or -1 when in is not valid
 * padded base64 (out then holds a partial result the caller discards).
 * Whitespace is not accepted. */
int base64_decode(struct buf *out, const char *in, size_t len);

#endif
