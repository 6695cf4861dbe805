/* The client's behaviour with servers that misbehave: a fake store on a
 * loopback port that answers what each test scripts (stalls, 503s, silent
 * watch streams, huge or malformed answers), next to the real server under
 * test (see conformance.h). These check the client, not the server, so they
 * do the same against both. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conformance.h"
#include "lib/buf.h"
#include "lib/store.h"

/* --- the fake store -------------------------------------------------- */

struct fake;
/* Serves one request (n: its number, from 1, over all connections) on fd;
 * returns whether to keep the connection for the next request. */
typedef bool (*fake_fn)(struct fake *f, int fd, const char *path, int n);

#define FAKE_MAX_CONNS 64

/* One accept thread, and one thread per connection (a watch stream holds
 * its connection while other requests come on new ones). */
struct fake {
    fake_fn fn;
    int lfd;
    pthread_t th;
    atomic_bool stop;
    atomic_int requests;
    atomic_int watches;       /* /v3/watch requests */
    atomic_llong first_ok_ms; /* for the keeper test: when the answered renewal came */
    pthread_mutex_t mu;       /* guards conns and n_conns */
    pthread_t conns[FAKE_MAX_CONNS];
    int n_conns;
    char url[64];
};

struct fake_conn {
    struct fake *f;
    int fd;
};

/* Waits until fd is readable (true) or the fake stops (false). */
static bool fake_wait(struct fake *f, int fd)
{
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20) > 0)
            return true;
    }
    return false;
}

/* Holds the connection without answering until the peer hangs up or the
 * fake stops. */
static void fake_hold(struct fake *f, int fd)
{
    char tmp[4096];
    while (fake_wait(f, fd) && recv(fd, tmp, sizeof(tmp), 0) > 0)
        ;
}

static void fake_send(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static void fake_reply(int fd, int status, const char *body)
{
    char head[256];
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                 status, strlen(body));
    fake_send(fd, head, (size_t)n);
    fake_send(fd, body, strlen(body));
}

/* The headers of a chunked stream, then its chunks. */
static void fake_stream_start(int fd)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    fake_send(fd, head, sizeof(head) - 1);
}

static void fake_chunk(int fd, const char *data, size_t len)
{
    char size[32];
    int n = snprintf(size, sizeof(size), "%zx\r\n", len);
    fake_send(fd, size, (size_t)n);
    fake_send(fd, data, len);
    fake_send(fd, "\r\n", 2);
}

static void fake_chunk_str(int fd, const char *s)
{
    fake_chunk(fd, s, strlen(s));
}

/* Reads one request (head and Content-Length body); its path into path. */
static bool fake_read_request(struct fake *f, int fd, struct buf *in, char *path, size_t size)
{
    for (;;) {
        char *end = in->p ? strstr(in->p, "\r\n\r\n") : NULL;
        if (end) {
            size_t head = (size_t)(end + 4 - in->p);
            const char *cl = strcasestr(in->p, "content-length:");
            size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
            if (in->len >= head + body) {
                sscanf(in->p, "%*s %255s", path);
                path[size - 1] = '\0';
                buf_consume(in, head + body);
                return true;
            }
        }
        if (!fake_wait(f, fd))
            return false;
        char tmp[8192];
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n <= 0)
            return false;
        buf_append(in, tmp, (size_t)n);
    }
}

static void *fake_conn_main(void *arg)
{
    struct fake_conn *c = arg;
    struct buf in = BUF_INIT;
    char path[256];
    while (fake_read_request(c->f, c->fd, &in, path, sizeof(path))) {
        int n = atomic_fetch_add(&c->f->requests, 1) + 1;
        if (strcmp(path, "/v3/watch") == 0)
            atomic_fetch_add(&c->f->watches, 1);
        if (!c->f->fn(c->f, c->fd, path, n))
            break;
    }
    buf_free(&in);
    close(c->fd);
    free(c);
    return NULL;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    while (fake_wait(f, f->lfd)) {
        int fd = accept(f->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        struct fake_conn *c = calloc(1, sizeof(*c));
        c->f = f;
        c->fd = fd;
        pthread_mutex_lock(&f->mu);
        if (f->n_conns == FAKE_MAX_CONNS ||
            pthread_create(&f->conns[f->n_conns], NULL, fake_conn_main, c) != 0) {
            close(fd);
            free(c);
        } else {
            f->n_conns++;
        }
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

static struct fake *fake_start(fake_fn fn)
{
    struct fake *f = calloc(1, sizeof(*f));
    f->fn = fn;
    pthread_mutex_init(&f->mu, NULL);
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 16), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &len), 0);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
    return f;
}

static void fake_stop(struct fake *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->th, NULL);
    for (int i = 0; i < f->n_conns; i++)
        pthread_join(f->conns[i], NULL);
    close(f->lfd);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* A store client for "<first>,<second>" (second may be NULL). */
static struct store *open_two(const char *first, const char *second)
{
    char list[512];
    snprintf(list, sizeof(list), "%s%s%s", first, second ? "," : "", second ? second : "");
    struct store *s = NULL;
    struct pier_err err = {0};
    assert_int_equal(store_open(list, &s, &err), 0);
    return s;
}

/* --- failover -------------------------------------------------------- */

static bool stall_all(struct fake *f, int fd, const char *path, int n)
{
    (void)path;
    (void)n;
    fake_hold(f, fd);
    return false;
}

static bool no_leader(struct fake *f, int fd, const char *path, int n)
{
    (void)f;
    (void)path;
    (void)n;
    fake_reply(fd, 503,
               "{\"error\":\"etcdserver: no leader\",\"code\":14,\"message\":\"etcdserver: no "
               "leader\"}");
    return true;
}

/* An endpoint that accepts connections but never answers (an etcd member
 * without quorum): reads move on at once, writes fail once and the next
 * request goes elsewhere. */
void test_client_failover_on_timeout(void **state)
{
    (void)state;
    struct pier_err err = {0};
    const char *real = getenv("PIER_STORE");
    K(a, "fo/a");
    put(a, "v");
    struct fake *f = fake_start(stall_all);

    struct store *s = open_two(f->url, real);
    store_set_timeout(s, 300);
    struct store_kv *kv = NULL;
    int64_t t0 = now_ms();
    if (store_get(s, a, &kv, &err) < 0)
        fail_msg("a read was not retried on the next endpoint: %s", err.msg);
    assert_value(kv, "v");
    store_kv_free(kv);
    assert_true(now_ms() - t0 < 2000);
    assert_string_equal(store_endpoint(s), real);
    store_close(s);

    s = open_two(f->url, real);
    store_set_timeout(s, 300);
    int before = atomic_load(&f->requests);
    assert_int_equal(store_put(s, a, "w", 1, 0, NULL, &err), PIER_ETIMEOUT);
    assert_int_equal(atomic_load(&f->requests), before + 1); /* sent once, not repeated */
    assert_string_equal(store_endpoint(s), real);            /* but the next one goes on */
    assert_int_equal(store_put(s, a, "w", 1, 0, NULL, &err), 0);
    store_close(s);
    fake_stop(f);
}

void test_client_failover_no_leader(void **state)
{
    (void)state;
    struct pier_err err = {0};
    const char *real = getenv("PIER_STORE");
    K(a, "fo2/a");
    put(a, "v");
    struct fake *f = fake_start(no_leader);
    struct store *s = open_two(f->url, real);
    struct store_range *r = NULL;
    if (store_list(s, a, NULL, &r, &err) < 0)
        fail_msg("a 503 \"no leader\" did not move the read on: %s", err.msg);
    assert_int_equal(r->n, 1);
    store_range_free(r);
    assert_string_equal(store_endpoint(s), real);
    store_close(s);

    /* a write to it fails as unavailable, and the next request moves on */
    s = open_two(f->url, real);
    assert_int_equal(store_put(s, a, "w", 1, 0, NULL, &err), PIER_EUNAVAIL);
    assert_non_null(strstr(err.msg, "no leader"));
    assert_string_equal(store_endpoint(s), real);
    store_close(s);
    fake_stop(f);
}

/* --- watches --------------------------------------------------------- */

#define CREATED "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}"
#define EVENT5                                                                                     \
    "{\"result\":{\"header\":{\"revision\":\"5\"},\"events\":[{\"kv\":{\"key\":\"L2E=\","          \
    "\"create_revision\":\"5\",\"mod_revision\":\"5\",\"version\":\"1\",\"value\":\"dg==\"}}]}}"

/* The first watch connection goes silent after "created"; later ones send
 * an event, then go silent. */
static bool watch_goes_silent(struct fake *f, int fd, const char *path, int n)
{
    (void)n;
    if (strcmp(path, "/v3/watch") != 0)
        return false;
    fake_stream_start(fd);
    fake_chunk_str(fd, CREATED);
    if (atomic_load(&f->watches) > 1)
        fake_chunk_str(fd, EVENT5);
    fake_hold(f, fd);
    return false;
}

/* A connection on which nothing arrives (a half-open one, to a partitioned
 * server) is given up after the silence window, and the watch resumes. */
void test_client_watch_silence(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct fake *f = fake_start(watch_goes_silent);
    struct store *s = open_two(f->url, NULL);
    store_set_watch_silence(s, 300);
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(s, "/a", NULL, &w, &err), 0);
    assert_int_equal(store_watch_revision(w), 5);
    struct store_events *evs = NULL;
    int64_t t0 = now_ms();
    int r = store_watch_next(w, 3000, &evs, &err);
    if (r < 0)
        fail_msg("a silent watch connection was not replaced: %s", err.msg);
    assert_true(now_ms() - t0 < 2000);
    assert_int_equal(evs->n, 1);
    assert_int_equal(evs->ev[0].kv.mod_revision, 5);
    assert_string_equal(evs->ev[0].kv.value, "v");
    store_events_free(evs);
    assert_int_equal(atomic_load(&f->watches), 2);
    store_watch_close(w);
    store_close(s);
    fake_stop(f);
}

/* The first watch connection works; later ones are never answered. */
static bool watch_then_stall(struct fake *f, int fd, const char *path, int n)
{
    (void)n;
    if (strcmp(path, "/v3/watch") == 0 && atomic_load(&f->watches) == 1) {
        fake_stream_start(fd);
        fake_chunk_str(fd, CREATED);
    }
    fake_hold(f, fd);
    return false;
}

/* store_watch_next(w, 250) returns after about 250 ms even when the
 * reconnect it needs hangs (and the store's own timeout is 5 s). */
void test_client_watch_next_deadline(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct fake *f = fake_start(watch_then_stall);
    struct store *s = open_two(f->url, NULL);
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(s, "/a", NULL, &w, &err), 0);
    store_watch_drop_connection(w);
    struct store_events *evs = NULL;
    int64_t t0 = now_ms();
    int r = store_watch_next(w, 250, &evs, &err);
    int64_t took = now_ms() - t0;
    assert_true(r < 0);
    assert_null(evs);
    if (took > 1000)
        fail_msg("store_watch_next(250 ms) took %" PRId64 " ms (%s)", took, err.msg);
    store_watch_close(w);
    store_close(s);
    fake_stop(f);
}

#define BIG_VALUE (8u << 20)

/* One event whose value is 8 MiB, in the 16 KiB pieces a socket gives. */
static bool watch_big(struct fake *f, int fd, const char *path, int n)
{
    (void)n;
    if (strcmp(path, "/v3/watch") != 0)
        return false;
    fake_stream_start(fd);
    fake_chunk_str(fd, CREATED);
    struct buf m = BUF_INIT;
    buf_puts(&m, "{\"result\":{\"header\":{\"revision\":\"5\"},\"events\":[{\"kv\":{\"key\":"
                 "\"L2E=\",\"create_revision\":\"5\",\"mod_revision\":\"5\",\"version\":\"1\","
                 "\"value\":\"");
    for (size_t i = 0; i < BIG_VALUE / 3; i++)
        buf_puts(&m, "e3t9"); /* "{{}" in base64: braces inside a string */
    buf_puts(&m, "\"}}]}}");
    for (size_t off = 0; off < m.len; off += 16384)
        fake_chunk(fd, m.p + off, m.len - off < 16384 ? m.len - off : 16384);
    buf_free(&m);
    fake_hold(f, fd);
    return false;
}

/* A big message arriving in many pieces is scanned once, not once per
 * piece (which took tens of seconds for this one). */
void test_client_watch_big_message(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct fake *f = fake_start(watch_big);
    struct store *s = open_two(f->url, NULL);
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(s, "/a", NULL, &w, &err), 0);
    struct store_events *evs = NULL;
    int64_t t0 = now_ms();
    assert_int_equal(store_watch_next(w, 20000, &evs, &err), 0);
    int64_t took = now_ms() - t0;
    assert_int_equal(evs->n, 1);
    assert_int_equal(evs->ev[0].kv.value_len, BIG_VALUE / 3 * 3);
    assert_memory_equal(evs->ev[0].kv.value, "{{}{{}", 6);
    store_events_free(evs);
    if (took > 4000)
        fail_msg("an 11 MB watch message took %" PRId64 " ms to read", took);
    store_watch_close(w);
    store_close(s);
    fake_stop(f);
}

/* --- answers that cannot be trusted ---------------------------------- */

static bool bad_revisions(struct fake *f, int fd, const char *path, int n)
{
    (void)n;
    if (strcmp(path, "/v3/watch") == 0) {
        fake_stream_start(fd);
        fake_chunk_str(fd, "{\"result\":{\"header\":{\"revision\":\"9223372036854775807\"},"
                           "\"created\":true}}");
        fake_hold(f, fd);
        return false;
    }
    if (strcmp(path, "/v3/kv/range") == 0) {
        fake_reply(fd, 200,
                   "{\"header\":{\"revision\":\"7\"},\"kvs\":[{\"key\":\"L2E=\","
                   "\"create_revision\":\"5\",\"mod_revision\":\"-5\",\"version\":\"1\"}],"
                   "\"count\":\"1\"}");
        return true;
    }
    fake_reply(fd, 200, "{\"header\":{\"revision\":\"-1\"}}"); /* put */
    return true;
}

void test_client_bad_revisions(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct fake *f = fake_start(bad_revisions);
    struct store *s = open_two(f->url, NULL);
    struct store_watch *w = NULL;
    assert_int_equal(store_watch_open(s, "/a", NULL, &w, &err), PIER_EPROTO);
    assert_null(w);
    struct store_kv *kv = NULL;
    assert_int_equal(store_get(s, "/a", &kv, &err), PIER_EPROTO);
    assert_null(kv);
    int64_t rev = 0;
    assert_int_equal(store_put(s, "/a", "v", 1, 0, &rev, &err), PIER_EPROTO);
    store_close(s);
    fake_stop(f);
}

/* --- the lease keeper ------------------------------------------------ */

/* The first renewal is answered at once; every later one hangs. */
static bool renew_once(struct fake *f, int fd, const char *path, int n)
{
    (void)n;
    if (strcmp(path, "/v3/lease/keepalive") != 0)
        return false;
    long long none = 0;
    if (atomic_compare_exchange_strong(&f->first_ok_ms, &none, (long long)now_ms())) {
        fake_reply(fd, 200, "{\"result\":{\"ID\":\"7\",\"TTL\":\"1\"}}");
        return true;
    }
    fake_hold(f, fd);
    return false;
}

static atomic_llong lost_at_ms;

static void note_lost(int64_t id, const struct pier_err *why, void *ud)
{
    (void)id;
    (void)why;
    (void)ud;
    atomic_store(&lost_at_ms, (long long)now_ms());
}

/* The server renewed the lease when the answered renewal reached it, so it
 * may expire it 1 s (the TTL) later: the keeper must say lost by then, not
 * a TTL after the answer came back plus a hung call's timeout. */
void test_client_keeper_loss_in_time(void **state)
{
    (void)state;
    struct pier_err err = {0};
    struct fake *f = fake_start(renew_once);
    struct store *s = open_two(f->url, NULL);
    atomic_store(&lost_at_ms, 0);
    struct store_keeper *k = NULL;
    assert_int_equal(store_keeper_start(s, 7, 1, note_lost, NULL, &k, &err), 0);
    int64_t deadline = now_ms() + 4000;
    while (atomic_load(&lost_at_ms) == 0 && now_ms() < deadline)
        sleep_ms(5);
    assert_true(store_keeper_lost(k));
    int64_t ok = atomic_load(&f->first_ok_ms), lost = atomic_load(&lost_at_ms);
    assert_true(ok > 0);
    if (lost - ok > 1000 || lost - ok < 500)
        fail_msg("lost reported %" PRId64 " ms after the last renewal reached the server (TTL "
                 "1000 ms, margin 200 ms)",
                 lost - ok);
    store_keeper_stop(k, false);
    store_close(s);
    fake_stop(f);
}
