/* sha256: SHA-256 (FIPS 180-4), incrementally, so that pierslug can hash a
 * slug while it streams through without holding it. pierslug links libc
 * and jansson only, hence this small one of its own. */
#ifndef PIER_BUILD_SHA256_H
#define PIER_BUILD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_HEX_LEN 64

struct sha256 {
    uint32_t h[8];
    uint64_t bytes; /* message length so far */
    uint8_t block[64];
    size_t fill; /* bytes waiting in block */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
/* Finishes the hash and writes it as SHA256_HEX_LEN lowercase hex digits
 * and a NUL. s must be initialised again before another use. */
void sha256_final_hex(struct sha256 *s, char out[SHA256_HEX_LEN + 1]);

#endif
