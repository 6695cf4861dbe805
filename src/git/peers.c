/* peers: where the receiver and its hooks find the controller and the
 * blobstore (gitreceive.h). A flag names one for good; without it, a
 * receiver with a store looks them up in discovery, so that one started
 * as a job follows the controller and the blobstore wherever they are
 * (re)deployed. The receiver keeps the controller's address for a couple
 * of seconds at most (a client offering key after key costs one look-up);
 * each hook looks both up afresh at the start of its push. */
#include "git/gitreceive.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/discover.h"

/* How long the receiver keeps the controller's address from discovery. */
#define CONTROLLER_CACHE_MS 2000

int gitrecv_discover(struct store *st, const char *service, char **url, struct pier_err *err)
{
    *url = NULL;
    if (!st)
        return err_set(err, PIER_EINVAL,
                       "the %s is not known: the receiver has neither its URL nor a store "
                       "(--store) to find it in",
                       service);
    struct discover_list *l = NULL;
    struct pier_err e = {0};
    int rc = discover_list(st, service, &l, &e);
    if (rc < 0)
        return err_set(err, rc, "cannot look the %s up in discovery: %s", service, e.msg);
    if (l->n == 0) {
        discover_list_free(l);
        return err_set(err, PIER_EUNAVAIL,
                       "the %s is not registered in discovery (service %s); is it running? "
                       "Try: pier status",
                       service, service);
    }
    const char *meta_url = json_string_value(json_object_get(l->v[0].meta, "url"));
    struct buf b = BUF_INIT;
    if (meta_url && *meta_url)
        buf_puts(&b, meta_url);
    else
        buf_printf(&b, "http://%s", l->v[0].addr);
    while (b.len > 0 && b.p[b.len - 1] == '/')
        b.p[--b.len] = '\0';
    discover_list_free(l);
    *url = buf_detach(&b);
    return 0;
}

char *gitrecv_blobstore(struct store *st, const char *fallback, const char **from,
                        struct pier_err *err)
{
    if (fallback && !*fallback)
        fallback = NULL;
    *from = "the receiver's --blobstore";
    char *url = NULL;
    struct pier_err e = {0};
    int rc = st ? gitrecv_discover(st, "blobstore", &url, &e) : PIER_EINVAL;
    if (rc == 0) {
        *from = "from discovery";
        return url;
    }
    if (fallback) {
        if (rc == PIER_EUNAVAIL)
            *from = "none in discovery: the receiver's --blobstore";
        return xstrdup(fallback);
    }
    if (!st)
        err_set(err, PIER_EINVAL, "the blobstore is not known: no --blobstore and no --store");
    else
        err_set(err, e.code, "%s", e.msg);
    return NULL;
}

/* The controller's address from discovery, shared by every connection
 * (cache_lock). */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static char *cached_url;
static int64_t cached_at_ms;

int gitrecv_controller(const struct gitrecv *g, char **url, struct pier_err *err)
{
    if (g->controller) {
        *url = xstrdup(g->controller);
        return 0;
    }
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&cache_lock);
    char *hit = cached_url && now - cached_at_ms < CONTROLLER_CACHE_MS ? xstrdup(cached_url) : NULL;
    pthread_mutex_unlock(&cache_lock);
    if (hit) {
        *url = hit;
        return 0;
    }
    int rc = gitrecv_discover(g->discovery, "controller", url, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&cache_lock);
    free(cached_url);
    cached_url = xstrdup(*url);
    cached_at_ms = now;
    pthread_mutex_unlock(&cache_lock);
    return 0;
}

void gitrecv_peers_cleanup(void)
{
    pthread_mutex_lock(&cache_lock);
    free(cached_url);
    cached_url = NULL;
    pthread_mutex_unlock(&cache_lock);
}
