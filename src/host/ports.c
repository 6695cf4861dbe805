/* ports: see ports.h. A bitmap over the range, one lock. Picking starts
 * after the last port handed out, so a port just released is not reused at
 * once (a client of the old job may still be connecting to it). */
#include "host/ports.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/buf.h"

struct ports {
    pthread_mutex_t lock; /* guards taken, next, n_taken */
    int lo, hi;
    unsigned char *taken; /* one byte per port in the range */
    int next;             /* where the next pick starts */
    int n_taken;
};

int ports_new(const char *range, struct ports **out, struct pier_err *err)
{
    char *end;
    long lo, hi;

    errno = 0;
    lo = strtol(range, &end, 10);
    if (end == range || *end != '-')
        goto bad;
    const char *p = end + 1;
    hi = strtol(p, &end, 10);
    if (end == p || *end || errno)
        goto bad;
    if (lo < 1024 || hi > 65535 || lo > hi)
        return err_set(err, PIER_EINVAL, "port range \"%s\": needs 1024 <= LO <= HI <= 65535",
                       range);
    struct ports *ps = xcalloc(1, sizeof(*ps));
    pthread_mutex_init(&ps->lock, NULL);
    ps->lo = (int)lo;
    ps->hi = (int)hi;
    ps->next = (int)lo;
    ps->taken = xcalloc((size_t)(hi - lo + 1), 1);
    *out = ps;
    return 0;
bad:
    return err_set(err, PIER_EINVAL, "port range \"%s\": expected LO-HI, e.g. 20000-20999", range);
}

void ports_free(struct ports *p)
{
    if (!p)
        return;
    pthread_mutex_destroy(&p->lock);
    free(p->taken);
    free(p);
}

int ports_lo(const struct ports *p)
{
    return p->lo;
}

int ports_hi(const struct ports *p)
{
    return p->hi;
}

/* Whether nothing on the host has port bound (TCP, any address). */
static bool port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return true;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

int ports_take(struct ports *p, int want, struct pier_err *err)
{
    int rc;

    pthread_mutex_lock(&p->lock);
    if (want) {
        if (want < p->lo || want > p->hi)
            rc = err_set(err, PIER_EINVAL, "port %d is outside this host's range %d-%d", want,
                         p->lo, p->hi);
        else if (p->taken[want - p->lo] || !port_bindable(want))
            rc = err_set(err, PIER_EEXISTS, "port %d is already in use on this host", want);
        else
            rc = want;
    } else {
        int span = p->hi - p->lo + 1;
        rc = err_set(err, PIER_EUNAVAIL, "no free port left in this host's range %d-%d", p->lo,
                     p->hi);
        for (int i = 0; i < span; i++) {
            int port = p->lo + (p->next - p->lo + i) % span;
            if (!p->taken[port - p->lo] && port_bindable(port)) {
                rc = port;
                break;
            }
        }
    }
    if (rc > 0) {
        p->taken[rc - p->lo] = 1;
        p->n_taken++;
        p->next = rc + 1 > p->hi ? p->lo : rc + 1;
        err_clear(err);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void ports_claim(struct ports *p, int port)
{
    pthread_mutex_lock(&p->lock);
    if (port >= p->lo && port <= p->hi && !p->taken[port - p->lo]) {
        p->taken[port - p->lo] = 1;
        p->n_taken++;
    }
    pthread_mutex_unlock(&p->lock);
}

void ports_release(struct ports *p, int port)
{
    pthread_mutex_lock(&p->lock);
    if (port >= p->lo && port <= p->hi && p->taken[port - p->lo]) {
        p->taken[port - p->lo] = 0;
        p->n_taken--;
    }
    pthread_mutex_unlock(&p->lock);
}

int ports_free_count(struct ports *p)
{
    pthread_mutex_lock(&p->lock);
    int n = p->hi - p->lo + 1 - p->n_taken;
    pthread_mutex_unlock(&p->lock);
    return n;
}
