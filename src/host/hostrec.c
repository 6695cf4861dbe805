/* hostrec: see hostrec.h.
 *
 * One thread owns the record: it writes it under the current lease every
 * TTL/2 (the heartbeat) or sooner when touched, and when the keeper says
 * the lease is lost it grants a new one and writes the record again, so a
 * store outage longer than the TTL costs the record only until the store
 * answers again. */
#include "host/hostrec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/fs.h"
#include "lib/jsonx.h"
#include "lib/log.h"

bool hostrec_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > HOSTREC_MAX_ID)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return false;
    return true;
}

static int write_id_file(const char *path, const char *id, struct pier_err *err)
{
    char text[HOSTREC_MAX_ID + 2];
    int n = snprintf(text, sizeof(text), "%s\n", id);
    return fs_write_atomic(path, text, (size_t)n, 0644, true, err);
}

int hostrec_load_id(const char *data_dir, const char *want, char id[HOSTREC_MAX_ID + 1],
                    struct pier_err *err)
{
    struct buf path = BUF_INIT;
    char kept[64] = "";
    int rc = 0;

    if (want && !hostrec_id_ok(want))
        return err_set(err, PIER_EINVAL,
                       "host id \"%s\": use 1-%d lowercase letters and digits (no '-')", want,
                       HOSTREC_MAX_ID);
    buf_printf(&path, "%s/host-id", data_dir);
    FILE *f = fopen(path.p, "re");
    if (f) {
        if (!fgets(kept, sizeof(kept), f))
            kept[0] = 0;
        fclose(f);
        kept[strcspn(kept, "\r\n")] = 0;
        if (!hostrec_id_ok(kept)) {
            rc = err_set(err, PIER_EINVAL,
                         "%s holds \"%s\", which is not a host id: fix or remove the file", path.p,
                         kept);
            goto out;
        }
        if (want && strcmp(want, kept) != 0) {
            rc = err_set(err, PIER_ECONFLICT,
                         "this data dir belongs to host \"%s\", not \"%s\" (%s): drop --id or "
                         "use another --data-dir",
                         kept, want, path.p);
            goto out;
        }
        memcpy(id, kept, strlen(kept) + 1); /* hostrec_id_ok: at most HOSTREC_MAX_ID */
        goto out;
    }
    if (errno != ENOENT) {
        rc = err_set(err, -errno, "reading %s: %s", path.p, strerror(errno));
        goto out;
    }
    if (want) {
        memcpy(id, want, strlen(want) + 1); /* checked above */
    } else {
        unsigned char rnd[6];
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd)) {
            rc = err_set(err, PIER_EINTERNAL, "reading /dev/urandom: %s", strerror(errno));
            if (fd >= 0)
                close(fd);
            goto out;
        }
        close(fd);
        snprintf(id, HOSTREC_MAX_ID + 1, "h%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
                 rnd[3], rnd[4], rnd[5]);
    }
    rc = write_id_file(path.p, id, err);
out:
    buf_free(&path);
    return rc;
}

struct hostrec {
    struct store *store;
    char *id, *addr, *ip, *key;
    json_t *tags;
    int64_t memory_total, cpu_total;
    int ttl_s;
    char started_at[CLOCK_RFC3339_LEN];
    hostrec_usage_fn usage;
    void *ud;

    pthread_t thread;
    bool started;         /* the thread runs */
    bool failing;         /* the first registration did not get through */
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t cond;  /* on the monotonic clock */
    bool stop, touched;
    int64_t lease;
    struct store_keeper *keeper;
    json_t *last; /* the record as last written */
};

static json_t *build_record(struct hostrec *h)
{
    char now[CLOCK_RFC3339_LEN];
    clock_rfc3339(now);
    json_t *rec = json_pack("{s:s, s:s, s:s, s:O, s:{s:I, s:I}, s:{s:I, s:I}, s:s, s:s, s:s}", "id",
                            h->id, "addr", h->addr, "ip", h->ip, "tags", h->tags, "memory", "total",
                            (json_int_t)h->memory_total, "allocated", (json_int_t)0, "cpu", "total",
                            (json_int_t)h->cpu_total, "allocated", (json_int_t)0, "version",
                            PIER_VERSION, "started_at", h->started_at, "heartbeat", now);
    if (h->usage)
        h->usage(h->ud, rec);
    return rec;
}

/* Grants a lease and starts its keeper; the caller holds no lock. */
static int new_lease(struct hostrec *h, struct pier_err *err)
{
    int64_t lease;
    struct store_keeper *k;
    int rc = store_lease_grant(h->store, h->ttl_s, &lease, err);
    if (rc < 0)
        return rc;
    rc = store_keeper_start(h->store, lease, h->ttl_s, NULL, NULL, &k, err);
    if (rc < 0) {
        store_lease_revoke(h->store, lease, NULL);
        return rc;
    }
    pthread_mutex_lock(&h->lock);
    struct store_keeper *old = h->keeper;
    h->keeper = k;
    h->lease = lease;
    pthread_mutex_unlock(&h->lock);
    store_keeper_stop(old, false);
    return 0;
}

static int write_record(struct hostrec *h, struct pier_err *err)
{
    json_t *rec = build_record(h);
    struct buf val = BUF_INIT;
    jsonx_dump(&val, rec);
    pthread_mutex_lock(&h->lock);
    int64_t lease = h->lease;
    pthread_mutex_unlock(&h->lock);
    int rc = store_put(h->store, h->key, val.p, val.len, lease, NULL, err);
    buf_free(&val);
    if (rc < 0) {
        json_decref(rec);
        return rc;
    }
    pthread_mutex_lock(&h->lock);
    json_decref(h->last);
    h->last = rec;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

static void *heartbeat_main(void *arg)
{
    struct hostrec *h = arg;
    int64_t period = (int64_t)h->ttl_s * 1000 / 2;
    int64_t retry = 500;
    bool failing = h->failing;

    pthread_mutex_lock(&h->lock);
    while (!h->stop) {
        struct timespec dl = clock_deadline_in(failing ? retry : period);
        while (!h->stop && !h->touched && pthread_cond_timedwait(&h->cond, &h->lock, &dl) == 0)
            ;
        if (h->stop)
            break;
        h->touched = false;
        bool lost = !h->keeper || store_keeper_lost(h->keeper);
        pthread_mutex_unlock(&h->lock);

        struct pier_err err = {0};
        int rc = 0;
        if (lost) {
            if (h->keeper)
                log_warn("host", "host lease lost, registering again", "id=%s", h->id);
            rc = new_lease(h, &err);
        }
        if (rc == 0)
            rc = write_record(h, &err);
        if (rc < 0 && !failing)
            log_warn("host", "cannot write the host record, retrying", "id=%s error=\"%s\"", h->id,
                     err.msg);
        else if (rc == 0 && failing)
            log_info("host", "host record written again", "id=%s", h->id);
        failing = rc < 0;
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

int hostrec_start(struct store *s, const struct hostrec_info *info, hostrec_usage_fn usage,
                  void *ud, struct hostrec **out, struct pier_err *err)
{
    struct hostrec *h = xcalloc(1, sizeof(*h));

    h->store = s;
    h->id = xstrdup(info->id);
    h->addr = xstrdup(info->addr);
    h->ip = xstrdup(info->ip);
    h->tags = info->tags ? json_incref(info->tags) : json_object();
    h->memory_total = info->memory_total;
    h->cpu_total = info->cpu_total;
    h->ttl_s = info->ttl_s > 0 ? info->ttl_s : 10;
    h->usage = usage;
    h->ud = ud;
    clock_rfc3339(h->started_at);
    struct buf key = BUF_INIT;
    buf_printf(&key, "%s%s", HOSTREC_PREFIX, h->id);
    h->key = buf_detach(&key);
    pthread_mutex_init(&h->lock, NULL);
    clock_cond_init(&h->cond);

    /* A store that cannot be reached yet is waited for by the thread. */
    struct pier_err first = {0};
    int rc = new_lease(h, &first);
    if (rc == 0)
        rc = write_record(h, &first);
    if (rc < 0) {
        log_warn("host", "cannot register the host in the store yet, retrying",
                 "id=%s error=\"%s\"", h->id, first.msg);
        h->failing = true;
    }
    (void)err;
    if (pthread_create(&h->thread, NULL, heartbeat_main, h) != 0)
        abort();
    h->started = true;
    *out = h;
    return 0;
}

void hostrec_touch(struct hostrec *h)
{
    pthread_mutex_lock(&h->lock);
    h->touched = true;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

json_t *hostrec_json(struct hostrec *h)
{
    pthread_mutex_lock(&h->lock);
    json_t *j = h->last ? json_deep_copy(h->last) : json_object();
    pthread_mutex_unlock(&h->lock);
    return j;
}

void hostrec_stop(struct hostrec *h, bool remove)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_cond_signal(&h->cond);
    pthread_mutex_unlock(&h->lock);
    if (h->started)
        pthread_join(h->thread, NULL);
    store_keeper_stop(h->keeper, remove);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->lock);
    json_decref(h->last);
    json_decref(h->tags);
    free(h->id);
    free(h->addr);
    free(h->ip);
    free(h->key);
    free(h);
}
