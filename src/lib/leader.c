#include "lib/leader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/log.h"

struct leader {
    struct store *s;
    struct discover_reg *reg;
    struct discover_watch *watch; /* owned by the thread */
    char *service;
    pthread_t thread;
    pthread_mutex_t mu; /* guards what follows */
    pthread_cond_t cond;
    char *leader_id;   /* the leading instance as the watch last said, or NULL */
    char *leader_addr; /* its address */
    bool leading;      /* what leader_is last answered */
    bool stopping;
};

/* Leading needs both: the watch names our instance, and our lease is held
 * (a lost lease may not have reached the watch yet). Called with l->mu. */
static bool compute(struct leader *l)
{
    return l->leader_id && strcmp(l->leader_id, discover_reg_id(l->reg)) == 0 &&
           discover_reg_held(l->reg);
}

static void update(struct leader *l)
{
    bool now = !l->stopping && compute(l);
    if (now != l->leading) {
        l->leading = now;
        log_info("leader", now ? "leading" : "no longer leading", "service=%s", l->service);
        pthread_cond_broadcast(&l->cond);
    }
}

static void *follow(void *arg)
{
    struct leader *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        bool stop = l->stopping;
        update(l); /* a lost lease shows here within the poll interval */
        pthread_mutex_unlock(&l->mu);
        if (stop)
            break;
        struct discover_event *ev = NULL;
        struct pier_err err = {0};
        int rc = discover_watch_next(l->watch, 200, &ev, &err);
        if (rc < 0) {
            if (rc != PIER_ETIMEOUT) {
                log_warn("leader", "cannot follow the leader", "service=%s reason=\"%s\"",
                         l->service, err.msg);
                usleep(200 * 1000);
            }
            continue;
        }
        if (ev->kind == DISCOVER_LEADER) {
            pthread_mutex_lock(&l->mu);
            free(l->leader_id);
            free(l->leader_addr);
            l->leader_id = ev->inst.id ? strdup(ev->inst.id) : NULL;
            l->leader_addr = ev->inst.addr ? strdup(ev->inst.addr) : NULL;
            update(l);
            pthread_mutex_unlock(&l->mu);
        }
        discover_event_free(ev);
    }
    return NULL;
}

int leader_start(struct store *s, const char *service, const char *addr, int64_t ttl_s,
                 struct leader **out, struct pier_err *err)
{
    struct leader *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    l->s = s;
    l->service = strdup(service);
    pthread_mutex_init(&l->mu, NULL);
    clock_cond_init(&l->cond);
    const struct discover_reg_opts ro = {.ttl_s = ttl_s};
    int rc = discover_register(s, service, addr, &ro, &l->reg, err);
    if (rc == 0)
        rc = discover_watch_open(s, service, &l->watch, err);
    if (rc == 0 && pthread_create(&l->thread, NULL, follow, l) != 0)
        rc = err_set(err, PIER_EINTERNAL, "leader: cannot start a thread");
    if (rc < 0) {
        discover_watch_close(l->watch);
        discover_unregister(l->reg);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cond);
        free(l->service);
        free(l);
        return rc;
    }
    *out = l;
    return 0;
}

bool leader_is(struct leader *l)
{
    pthread_mutex_lock(&l->mu);
    update(l);
    bool now = l->leading;
    pthread_mutex_unlock(&l->mu);
    return now;
}

bool leader_wait(struct leader *l, bool was, int timeout_ms)
{
    struct timespec until = clock_deadline_in(timeout_ms);
    pthread_mutex_lock(&l->mu);
    update(l);
    while (l->leading == was && !l->stopping) {
        if (timeout_ms < 0)
            pthread_cond_wait(&l->cond, &l->mu);
        else if (pthread_cond_timedwait(&l->cond, &l->mu, &until) != 0)
            break;
    }
    bool now = l->leading;
    pthread_mutex_unlock(&l->mu);
    return now;
}

char *leader_addr(struct leader *l)
{
    pthread_mutex_lock(&l->mu);
    char *a = l->leader_addr ? strdup(l->leader_addr) : NULL;
    pthread_mutex_unlock(&l->mu);
    return a;
}

void leader_stop(struct leader *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = true;
    l->leading = false;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    discover_watch_close(l->watch);
    discover_unregister(l->reg);
    free(l->leader_id);
    free(l->leader_addr);
    free(l->service);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cond);
    free(l);
}
