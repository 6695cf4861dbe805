#include "lib/blobsig.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/hex.h"

/* The longest decimal we read: 18 digits always fit an int64_t. */
#define MAX_DIGITS 18

void blobsig_sign(const char *key, const char *method, const char *path, int64_t expires,
                  int64_t max_bytes, bool once, char out[BLOBSIG_HEX_LEN + 1])
{
    struct buf msg = BUF_INIT;
    buf_printf(&msg, "%s\n%s\n%" PRId64, method, path, expires);
    if (max_bytes > 0)
        buf_printf(&msg, "\n%" PRId64, max_bytes);
    if (once)
        buf_puts(&msg, "\nonce");
    if (!key)
        key = "";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg.p, msg.len, md, &mdlen);
    buf_free(&msg);
    hex_encode(md, BLOBSIG_HEX_LEN / 2, out);
}

/* Reads a plain decimal (digits only, no sign, no spaces). */
static bool parse_decimal(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_DIGITS)
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

bool blobsig_verify(const char *key, const char *method, const char *path,
                    const struct blobsig_query *q, int64_t now, struct blobsig_grant *grant)
{
    int64_t expires, max = 0;
    if (!q->expires || !q->sig || !method || !path)
        return false;
    if (!parse_decimal(q->expires, &expires) || expires < now)
        return false;
    /* max=0 is refused: it would sign the same string as no max at all. */
    if (q->max && (!parse_decimal(q->max, &max) || max == 0))
        return false;
    if (q->once && strcmp(q->once, "1") != 0)
        return false;
    if (strlen(q->sig) != BLOBSIG_HEX_LEN)
        return false;
    char want[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(key, method, path, expires, max, q->once != NULL, want);
    /* Constant time, so the timing of a refusal says nothing about how
     * much of a guessed signature was right. */
    if (CRYPTO_memcmp(want, q->sig, BLOBSIG_HEX_LEN) != 0)
        return false;
    if (grant) {
        grant->max_bytes = max;
        grant->once = q->once != NULL;
    }
    return true;
}

char *blobsig_url(const char *key, const char *base_url, const char *method, const char *path,
                  int64_t now, int64_t ttl, int64_t max_bytes, bool once)
{
    int64_t expires = now + ttl;
    char sig[BLOBSIG_HEX_LEN + 1];
    blobsig_sign(key, method, path, expires, max_bytes, once, sig);
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s%s?expires=%" PRId64, base_url, path, expires);
    if (max_bytes > 0)
        buf_printf(&b, "&max=%" PRId64, max_bytes);
    if (once)
        buf_puts(&b, "&once=1");
    buf_printf(&b, "&sig=%s", sig);
    return buf_detach(&b);
}
