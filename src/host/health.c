/* health: see health.h. */
#include "host/health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/discover.h"
#include "lib/log.h"

#define START_CHECK_MS 100

struct service {
    char *name;
    char addr[64];
    int port;
    struct jobspec_check check;
    char *path;
    int passes, fails;
    bool up;         /* registered */
    bool passed;     /* the check has passed once: the job is past its start */
    int64_t next_ms; /* when to check next */
    struct discover_reg *reg;
};

struct health {
    struct store *store;
    char *job_id;
    json_t *meta;
    struct service *sv;
    size_t n;
    health_change_fn fn;
    void *ud;
    bool has_checks;
    bool healthy;

    pthread_t thread;
    pthread_mutex_t lock; /* guards stop and abandon */
    pthread_cond_t cond;  /* monotonic */
    bool stop, abandon;
    int wakefd; /* an eventfd written on stop: cuts a check short */
};

bool health_has_checks(const struct jobspec *spec)
{
    for (size_t i = 0; i < spec->n_ports; i++)
        if (spec->ports[i].service && spec->ports[i].check.type != JOBSPEC_CHECK_NONE)
            return true;
    return false;
}

/* Waits up to timeout_ms for events on fd; false when it ran out or the
 * health is being stopped (its eventfd became readable). */
static bool wait_fd(int fd, short events, int timeout_ms, int wakefd)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = wakefd, .events = POLLIN}};
    return poll(p, 2, timeout_ms) > 0 && !(p[1].revents & POLLIN) && (p[0].revents & events);
}

/* Connects to ip:port within timeout_ms; the socket or -1. */
static int connect_to(const char *ip, int port, int timeout_ms, int wakefd)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS)
        goto fail;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (!wait_fd(fd, POLLOUT, timeout_ms, wakefd) ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr)
        goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

/* One HTTP check: GET path, read the status line. */
static bool http_ok(int fd, const char *host, const struct jobspec_check *c, int timeout_ms,
                    int wakefd)
{
    struct buf req = BUF_INIT;
    buf_printf(&req, "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: pier-health\r\n\r\n",
               c->path ? c->path : "/", host);
    bool ok = send(fd, req.p, req.len, MSG_NOSIGNAL) == (ssize_t)req.len;
    buf_free(&req);
    if (!ok)
        return false;
    char line[64];
    size_t got = 0;
    int64_t deadline = clock_now_ms() + timeout_ms;
    while (got < sizeof(line) - 1 && !memchr(line, '\n', got)) {
        int left = (int)(deadline - clock_now_ms());
        if (left <= 0 || !wait_fd(fd, POLLIN, left, wakefd))
            return false;
        ssize_t n = recv(fd, line + got, sizeof(line) - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    line[got] = 0;
    int status;
    if (sscanf(line, "HTTP/%*d.%*d %d", &status) != 1)
        return false;
    return c->status ? status == c->status : status >= 200 && status < 400;
}

static bool check_once(const char *ip, struct service *s, int wakefd)
{
    int fd = connect_to(ip, s->port, s->check.timeout_ms, wakefd);
    if (fd < 0)
        return false;
    bool ok = s->check.type == JOBSPEC_CHECK_TCP ||
              http_ok(fd, s->addr, &s->check, s->check.timeout_ms, wakefd);
    close(fd);
    return ok;
}

static void set_up(struct health *h, struct service *s, bool up)
{
    if (up == s->up)
        return;
    if (up) {
        struct pier_err err = {0};
        struct discover_reg_opts o = {.meta = h->meta};
        if (discover_register(h->store, s->name, s->addr, &o, &s->reg, &err) < 0) {
            log_warn("host", "cannot register the job's service, retrying",
                     "job=%s service=%s "
                     "error=\"%s\"",
                     h->job_id, s->name, err.msg);
            return;
        }
        log_info("host", "service registered", "job=%s service=%s addr=%s", h->job_id, s->name,
                 s->addr);
    } else {
        discover_unregister(s->reg);
        s->reg = NULL;
        log_info("host", "service deregistered", "job=%s service=%s addr=%s", h->job_id, s->name,
                 s->addr);
    }
    s->up = up;
}

static bool stopped(struct health *h)
{
    pthread_mutex_lock(&h->lock);
    bool stop = h->stop;
    pthread_mutex_unlock(&h->lock);
    return stop;
}

static void *health_main(void *arg)
{
    struct health *h = arg;
    char ip[64];
    snprintf(ip, sizeof(ip), "%.*s", (int)strcspn(h->sv[0].addr, ":"), h->sv[0].addr);

    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        pthread_mutex_unlock(&h->lock);
        int64_t now = clock_now_ms(), wake = now + 1000;
        bool all = true;
        for (size_t i = 0; i < h->n && !stopped(h); i++) {
            struct service *s = &h->sv[i];
            if (s->check.type == JOBSPEC_CHECK_NONE) {
                set_up(h, s, true); /* retried each round until it worked */
                if (!s->up)
                    wake = now + 500;
                continue;
            }
            if (now >= s->next_ms) {
                bool ok = check_once(ip, s, h->wakefd);
                if (stopped(h))
                    break; /* cut short: not a result */
                if (ok) {
                    s->fails = 0;
                    s->passes++;
                    s->passed = true;
                } else {
                    s->passes = 0;
                    s->fails++;
                }
                if (s->passes >= s->check.threshold)
                    set_up(h, s, true);
                else if (s->fails >= s->check.threshold)
                    set_up(h, s, false);
                /* Until it has passed once, a starting job is checked every
                 * START_CHECK_MS at most, so that it is announced as soon as
                 * it listens rather than up to threshold intervals later. */
                int64_t every = s->check.interval_ms;
                if (!s->passed && every > START_CHECK_MS)
                    every = START_CHECK_MS;
                s->next_ms = clock_now_ms() + every;
            }
            all = all && s->passes >= s->check.threshold;
            if (s->next_ms < wake)
                wake = s->next_ms;
        }
        if (h->has_checks && all != h->healthy) {
            h->healthy = all;
            h->fn(h->ud, h->job_id, all);
        }
        pthread_mutex_lock(&h->lock);
        struct timespec dl = clock_deadline_in(wake - clock_now_ms());
        while (!h->stop && pthread_cond_timedwait(&h->cond, &h->lock, &dl) == 0)
            ;
    }
    bool abandon = h->abandon;
    pthread_mutex_unlock(&h->lock);
    for (size_t i = 0; i < h->n; i++) {
        if (abandon) {
            discover_reg_release(h->sv[i].reg); /* left to its lease */
            h->sv[i].reg = NULL;
        } else {
            set_up(h, &h->sv[i], false);
        }
    }
    return NULL;
}

struct health *health_start(struct store *s, const char *ip, const struct jobspec *spec,
                            const int *ports, health_change_fn fn, void *ud)
{
    size_t n = 0;
    for (size_t i = 0; i < spec->n_ports; i++)
        n += spec->ports[i].service != NULL;
    if (n == 0)
        return NULL;

    struct health *h = xcalloc(1, sizeof(*h));
    h->store = s;
    h->job_id = xstrdup(spec->id);
    h->fn = fn;
    h->ud = ud;
    h->has_checks = health_has_checks(spec);
    h->meta = json_pack("{s:s}", "job_id", spec->id);
    if (spec->app)
        json_object_set_new(h->meta, "app", json_string(spec->app));
    if (spec->release)
        json_object_set_new(h->meta, "release", json_string(spec->release));
    if (spec->type)
        json_object_set_new(h->meta, "type", json_string(spec->type));
    h->sv = xcalloc(n, sizeof(*h->sv));
    for (size_t i = 0; i < spec->n_ports; i++) {
        if (!spec->ports[i].service)
            continue;
        struct service *sv = &h->sv[h->n++];
        sv->name = xstrdup(spec->ports[i].service);
        sv->port = ports[i];
        snprintf(sv->addr, sizeof(sv->addr), "%s:%d", ip, ports[i]);
        sv->check = spec->ports[i].check;
        sv->path = spec->ports[i].check.path ? xstrdup(spec->ports[i].check.path) : NULL;
        sv->check.path = sv->path;
    }
    pthread_mutex_init(&h->lock, NULL);
    clock_cond_init(&h->cond);
    h->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->wakefd < 0)
        abort();
    if (pthread_create(&h->thread, NULL, health_main, h) != 0)
        abort();
    return h;
}

static void end(struct health *h, bool abandon)
{
    if (!h)
        return;
    uint64_t one = 1;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    h->abandon = abandon;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    if (write(h->wakefd, &one, sizeof(one)) < 0)
        abort(); /* an eventfd below its maximum cannot refuse */
    pthread_join(h->thread, NULL);
    close(h->wakefd);
    for (size_t i = 0; i < h->n; i++) {
        free(h->sv[i].name);
        free(h->sv[i].path);
    }
    free(h->sv);
    json_decref(h->meta);
    free(h->job_id);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void health_stop(struct health *h)
{
    end(h, false);
}

void health_abandon(struct health *h)
{
    end(h, true);
}
