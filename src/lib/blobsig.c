#include "lib/blobsig.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

/* The longest decimal expiry we read: 18 digits always fit an int64_t. */
#define MAX_EXPIRES_DIGITS 18

void blobsig_sign(const char *key, const char *method, const char *path, int64_t expires,
                  char out[BLOBSIG_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    struct buf msg = BUF_INIT;
    buf_printf(&msg, "%s\n%s\n%" PRId64, method, path, expires);
    if (!key)
        key = "";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg.p, msg.len, md, &mdlen);
    buf_free(&msg);
    for (unsigned int i = 0; i < mdlen && 2 * i + 1 < BLOBSIG_HEX_LEN; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[BLOBSIG_HEX_LEN] = '\0';
}

/* Reads a plain decimal (digits only, no sign, no spaces). */
static bool parse_expires(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_EXPIRES_DIGITS)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool blobsig_verify(const char *key, const char *method, const char *path, const char *expires_str,
                    const char *sig, int64_t now)
{
    int64_t expires;
    if (!expires_str || !sig || !method || !path)
        return false;
    if (!parse_expires(expires_str, &expires) || expires < now)
        return false;
    if (strlen(sig) != BLOBSIG_HEX_LEN)
        return false;
    char want[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(key, method, path, expires, want);
    /* Constant time, so the timing of a refusal says nothing about how
     * much of a guessed signature was right. */
    return CRYPTO_memcmp(want, sig, BLOBSIG_HEX_LEN) == 0;
}

char *blobsig_url(const char *key, const char *base_url, const char *method, const char *path,
                  int64_t now, int64_t ttl)
{
    int64_t expires = now + ttl;
    char sig[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(key, method, path, expires, sig);
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s%s?expires=%" PRId64 "&sig=%s", base_url, path, expires, sig);
    return buf_detach(&b);
}
