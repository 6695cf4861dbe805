/* hex: bytes as lowercase hexadecimal, the way pier writes SHA-256 hashes
 * (blob and slug hashes) and signatures (signed blobstore URLs). */
#ifndef PIER_LIB_HEX_H
#define PIER_LIB_HEX_H

#include <stdbool.h>
#include <stddef.h>

/* Writes the 2 * n lowercase hex digits of the n bytes at p, and a NUL,
 * into out (2 * n + 1 bytes). */
void hex_encode(const void *p, size_t n, char *out);

/* Whether s is exactly len hex digits, of either case. NULL: false. */
bool hex_ok(const char *s, size_t len);

#endif
