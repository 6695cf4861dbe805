/* cleanup: __attribute__((cleanup)) helpers for locals, spelled as crun
 * spells them. A variable declared `cleanup_free char *s = NULL;` is freed
 * when it goes out of scope; set it to NULL to hand ownership away. */
#ifndef PIER_CLEANUP_H
#define PIER_CLEANUP_H

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#include "lib/buf.h"

static inline void cleanup_freep(void *p)
{
    free(*(void **)p);
}
static inline void cleanup_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}
static inline void cleanup_jsonp(json_t **j)
{
    json_decref(*j);
}
static inline void cleanup_bufp(struct buf *b)
{
    buf_free(b);
}

#define cleanup_free __attribute__((cleanup(cleanup_freep)))
#define cleanup_close __attribute__((cleanup(cleanup_closep)))
#define cleanup_json __attribute__((cleanup(cleanup_jsonp)))
#define cleanup_buf __attribute__((cleanup(cleanup_bufp)))

/* Takes the value out of a cleanup variable so it is not freed. */
#define steal_pointer(pp)                                                                          \
    ({                                                                                             \
        __typeof__(*(pp)) _v = *(pp);                                                              \
        *(pp) = NULL;                                                                              \
        _v;                                                                                        \
    })

#endif
