#include "lib/uuid.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Random bytes are read 4 KiB at a time per thread (the router makes one
 * id per request: a syscall each was measurable). A forked child starts
 * with an empty buffer, so parent and child never hand out the same ids. */
static _Thread_local uint8_t rnd[4096];
static _Thread_local size_t rnd_pos = sizeof(rnd);
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void rnd_forget(void)
{
    rnd_pos = sizeof(rnd);
}

static void rnd_atfork(void)
{
    pthread_atfork(NULL, NULL, rnd_forget);
}

void uuid_new(char out[UUID_LEN])
{
    pthread_once(&atfork_once, rnd_atfork);
    if (rnd_pos + 16 > sizeof(rnd)) {
        size_t got = 0;
        while (got < sizeof(rnd)) {
            ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                abort();
            got += (size_t)n;
        }
        rnd_pos = 0;
    }
    uint8_t *b = rnd + rnd_pos;
    rnd_pos += 16;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* the RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
    memset(b, 0, 16); /* used once */
}

bool uuid_ok(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}
