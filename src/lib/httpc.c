#include "lib/httpc.h"

#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "lib/base64.h"
#include "lib/clock.h"

#define POOL_IDLE_MAX 32
#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_MAX_BODY (64u << 20)
/* TCP keepalive: a peer that vanished without a FIN or RST (a partition, a
 * host powered off) is noticed after KEEPIDLE + KEEPCNT * KEEPINTVL seconds
 * of silence, about 20 s, instead of the kernel's two hours. This matters
 * most for idle pooled connections and long streams (watches), which no
 * timeout of their own covers. */
#define KEEPIDLE_S 5L
#define KEEPINTVL_S 5L
#define KEEPCNT 3

/* The pool: idle easy handles, each keeping its own keep-alive connection
 * in its connection cache. mu guards idle and n_idle only; a handle taken
 * out is used by one thread without the lock. */
struct httpc {
    pthread_mutex_t mu;
    CURL *idle[POOL_IDLE_MAX];
    size_t n_idle;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result;

static void global_init(void)
{
    global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct httpc *httpc_new(void)
{
    pthread_once(&global_once, global_init);
    if (global_result != CURLE_OK)
        abort(); /* only fails on out of memory */
    struct httpc *h = xcalloc(1, sizeof(*h));
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

void httpc_free(struct httpc *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_idle; i++)
        curl_easy_cleanup(h->idle[i]);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

static CURL *pool_take(struct httpc *h)
{
    CURL *c = NULL;
    pthread_mutex_lock(&h->mu);
    if (h->n_idle > 0)
        c = h->idle[--h->n_idle];
    pthread_mutex_unlock(&h->mu);
    if (!c) {
        c = curl_easy_init();
        if (!c)
            abort();
    }
    return c;
}

static void pool_give(struct httpc *h, CURL *c)
{
    curl_easy_reset(c); /* drops pointers into the finished call's stack; keeps the connection */
    pthread_mutex_lock(&h->mu);
    if (h->n_idle < POOL_IDLE_MAX) {
        h->idle[h->n_idle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    if (c)
        curl_easy_cleanup(c);
}

bool httpc_not_sent(int code)
{
    return code == -ECONNREFUSED || code == -EHOSTUNREACH || code == -ETIMEDOUT;
}

static const char *peer(const struct httpc_req *req)
{
    return req->name ? req->name : req->url;
}

/* Sets what curl has no option for (before 8.9): how many unanswered
 * keepalive probes mean the connection is dead. */
static int set_sockopts(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    (void)ud;
    if (purpose == CURLSOCKTYPE_IPCXN) {
        int cnt = KEEPCNT;
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)); /* best effort */
    }
    return CURL_SOCKOPT_OK;
}

/* Sets the options every request shares. *hdrs gets the header list, which
 * the caller frees after the transfer. */
static int setup(CURL *c, const struct httpc_req *req, char *errbuf, struct curl_slist **hdrs,
                 struct pier_err *err)
{
    if (!req->url || strncmp(req->url, "http", 4) != 0)
        return err_set(err, PIER_EINVAL, "%s: not an http URL", req->url ? req->url : "(null)");
    curl_easy_reset(c); /* keeps the connection cache */
    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS timeouts */
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, KEEPIDLE_S);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, KEEPINTVL_S);
    curl_easy_setopt(c, CURLOPT_SOCKOPTFUNCTION, set_sockopts);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    errbuf[0] = '\0';
    long cto = req->connect_timeout_ms > 0 ? req->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, cto);
    if (req->ca_pem) {
        struct curl_blob ca = {(void *)req->ca_pem, strlen(req->ca_pem), CURL_BLOB_COPY};
        curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &ca);
    }

    struct curl_slist *l = NULL;
    for (const char *const *hp = req->headers; hp && *hp; hp++)
        l = curl_slist_append(l, *hp);
    l = curl_slist_append(l, "Expect:"); /* no 100-continue round trip */
    *hdrs = l;
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, l);

    const char *method = req->method ? req->method : (req->body ? "POST" : "GET");
    if (req->body || strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body ? req->body : "");
    }
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    return 0;
}

/* Turns a failed transfer into an error naming the peer and the cause. */
static int curl_error(CURL *c, CURLcode rc, const struct httpc_req *req, const char *errbuf,
                      struct pier_err *err)
{
    const char *what = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    long os_errno = 0;
    curl_off_t pretransfer = 0;
    curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
    curl_easy_getinfo(c, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        if (os_errno == ECONNREFUSED)
            return err_set(err, -ECONNREFUSED, "%s: connection refused", peer(req));
        return err_set(err, -EHOSTUNREACH, "%s: cannot connect: %s", peer(req),
                       os_errno ? strerror((int)os_errno) : what);
    case CURLE_COULDNT_RESOLVE_HOST:
        return err_set(err, -EHOSTUNREACH, "%s: cannot resolve host: %s", peer(req), what);
    case CURLE_OPERATION_TIMEDOUT:
        if (pretransfer == 0)
            return err_set(err, -ETIMEDOUT, "%s: connect timed out", peer(req));
        return err_set(err, PIER_ETIMEOUT, "%s: no answer in time (%s)", peer(req), what);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return err_set(err, PIER_EINVAL, "%s: bad URL: %s", peer(req), what);
    case CURLE_GOT_NOTHING:
        return err_set(err, PIER_EUNAVAIL, "%s: connection closed without an answer", peer(req));
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM: return err_set(err, HTTPC_ETLS, "%s: %s", peer(req), what);
    default: return err_set(err, PIER_EUNAVAIL, "%s: %s", peer(req), what);
    }
}

struct sink {
    struct buf *body;
    size_t max;
    bool too_big;
};

static size_t write_body(char *data, size_t size, size_t n, void *ud)
{
    struct sink *s = ud;
    size_t len = size * n;
    if (s->body->len + len > s->max) {
        s->too_big = true;
        return 0; /* aborts the transfer */
    }
    buf_append(s->body, data, len);
    return len;
}

static void keep_headers(CURL *c, const struct httpc_req *req, struct httpc_resp *resp)
{
    size_t n = 0;
    for (const char *const *w = req->want_headers; w && *w; w++)
        n++;
    if (n == 0)
        return;
    resp->headers = xcalloc(n, sizeof(*resp->headers));
    for (const char *const *w = req->want_headers; w && *w; w++) {
        struct curl_header *hv = NULL;
        if (curl_easy_header(c, *w, 0, CURLH_HEADER, -1, &hv) != CURLHE_OK)
            continue;
        struct httpc_header *out = &resp->headers[resp->n_headers++];
        out->name = xstrdup(*w);
        out->value = xstrdup(hv->value);
    }
}

int httpc_do(struct httpc *h, const struct httpc_req *req, struct httpc_resp *resp,
             struct pier_err *err)
{
    memset(resp, 0, sizeof(*resp));
    char errbuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL;
    CURL *c = pool_take(h);
    int r = setup(c, req, errbuf, &hdrs, err);
    if (r < 0)
        goto out;
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                     req->timeout_ms > 0 ? req->timeout_ms : (long)DEFAULT_TIMEOUT_MS);
    struct sink sink = {&resp->body, req->max_body ? req->max_body : DEFAULT_MAX_BODY, false};
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) {
        if (sink.too_big)
            r = err_set(err, PIER_ETOOBIG, "%s: answer larger than %zu bytes", peer(req), sink.max);
        else
            r = curl_error(c, rc, req, errbuf, err);
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    keep_headers(c, req, resp);
out:
    curl_slist_free_all(hdrs);
    pool_give(h, c);
    if (r < 0)
        httpc_resp_release(resp);
    return r;
}

const char *httpc_resp_header(const struct httpc_resp *resp, const char *name)
{
    for (size_t i = 0; i < resp->n_headers; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

void httpc_resp_release(struct httpc_resp *resp)
{
    if (!resp)
        return;
    buf_free(&resp->body);
    for (size_t i = 0; i < resp->n_headers; i++) {
        free(resp->headers[i].name);
        free(resp->headers[i].value);
    }
    free(resp->headers);
    memset(resp, 0, sizeof(*resp));
}

/* --- streaming ------------------------------------------------------- */

/* A stream drives its own easy handle through a private multi handle, so
 * the caller decides how long each poll may wait. delivered is set by the
 * write callback during a poll; done and final remember how the transfer
 * ended, so later polls repeat it. */
struct httpc_stream {
    CURLM *multi;
    CURL *easy;
    struct curl_slist *hdrs;
    struct httpc_req req; /* url and name point at the copies below */
    char *url;
    char *name;
    httpc_data_fn fn;
    void *ud;
    bool delivered;
    bool aborted;
    bool headers_done; /* the wait in open is over */
    bool got_headers;  /* the final response headers arrived */
    bool done;
    long status;
    struct pier_err final;
    char errbuf[CURL_ERROR_SIZE];
};

static size_t stream_write(char *data, size_t size, size_t n, void *ud)
{
    struct httpc_stream *s = ud;
    size_t len = size * n;
    s->delivered = true;
    s->headers_done = true;
    s->got_headers = true;
    if (s->fn(data, len, s->ud) != 0) {
        s->aborted = true;
        return 0;
    }
    return len;
}

static size_t stream_header(char *data, size_t size, size_t n, void *ud)
{
    struct httpc_stream *s = ud;
    size_t len = size * n;
    if ((len == 2 && data[0] == '\r') || (len == 1 && data[0] == '\n')) {
        long code = 0;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200) { /* the end of the final headers, not of a 1xx */
            s->status = code;
            s->headers_done = true;
            s->got_headers = true;
        }
    }
    return len;
}

/* Collects the end of the transfer, if it has ended. */
static void stream_check_done(struct httpc_stream *s)
{
    int left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(s->multi, &left))) {
        if (m->msg != CURLMSG_DONE || m->easy_handle != s->easy)
            continue;
        s->done = true;
        s->headers_done = true;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        CURLcode rc = m->data.result;
        if (rc == CURLE_OK)
            err_clear(&s->final);
        else if (s->aborted)
            err_set(&s->final, -ECANCELED, "%s: stream stopped by its reader", peer(&s->req));
        else
            curl_error(s->easy, rc, &s->req, s->errbuf, &s->final);
    }
}

/* One round: moves the transfer on, waiting at most wait_ms for the socket. */
static void stream_step(struct httpc_stream *s, int wait_ms)
{
    int running = 0;
    curl_multi_perform(s->multi, &running);
    stream_check_done(s);
    if (s->done || s->delivered || wait_ms <= 0)
        return;
    curl_multi_poll(s->multi, NULL, 0, wait_ms, NULL);
    curl_multi_perform(s->multi, &running);
    stream_check_done(s);
}

static int stream_result(struct httpc_stream *s, struct pier_err *err)
{
    if (s->final.code == 0)
        return 0;
    if (err)
        *err = s->final;
    return s->final.code;
}

int httpc_stream_open(struct httpc *h, const struct httpc_req *req, httpc_data_fn fn, void *ud,
                      struct httpc_stream **out, struct pier_err *err)
{
    (void)h; /* a stream's connection is its own; h only ensures curl is initialized */
    struct httpc_stream *s = xcalloc(1, sizeof(*s));
    s->req = *req;
    s->url = xstrdup(req->url ? req->url : "");
    s->name = req->name ? xstrdup(req->name) : NULL;
    s->req.url = s->url;
    s->req.name = s->name;
    s->req.headers = NULL; /* copied into hdrs by setup */
    s->req.want_headers = NULL;
    s->req.ca_pem = NULL; /* curl keeps its own copy */
    s->req.body = NULL;   /* curl copies nothing: keep the caller's body only during open */
    s->fn = fn;
    s->ud = ud;
    s->easy = curl_easy_init();
    s->multi = curl_multi_init();
    if (!s->easy || !s->multi)
        abort();
    int r = setup(s->easy, req, s->errbuf, &s->hdrs, err);
    if (r < 0)
        goto fail;
    if (req->body) /* curl reads POSTFIELDS lazily; give it its own copy */
        curl_easy_setopt(s->easy, CURLOPT_COPYPOSTFIELDS, req->body);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, stream_write);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, stream_header);
    curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, s);
    curl_multi_add_handle(s->multi, s->easy);

    long timeout = req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
    int64_t deadline = clock_now_ms() + timeout;
    while (!s->headers_done && !s->done) {
        int64_t left = deadline - clock_now_ms();
        if (left <= 0) {
            r = err_set(err, PIER_ETIMEOUT, "%s: no answer within %ld ms", peer(req), timeout);
            goto fail;
        }
        s->delivered = false;
        stream_step(s, left > 1000 ? 1000 : (int)left);
    }
    /* Once the headers came, the stream is open even if it already ended
     * (a short body, a cut, fn stopping it): poll reports how it ended. */
    if (s->done && !s->got_headers && (r = stream_result(s, err)) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    httpc_stream_close(s);
    return r;
}

long httpc_stream_status(const struct httpc_stream *s)
{
    return s->status;
}

int httpc_stream_poll(struct httpc_stream *s, int timeout_ms, struct pier_err *err)
{
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : clock_now_ms() + timeout_ms;
    s->delivered = false;
    for (;;) {
        if (s->done)
            return stream_result(s, err);
        int64_t left = deadline == INT64_MAX ? 1000 : deadline - clock_now_ms();
        stream_step(s, left > 1000 ? 1000 : (int)(left < 0 ? 0 : left));
        if (s->done) /* also when bytes came with the end, or fn aborted */
            return stream_result(s, err);
        if (s->delivered)
            return 1;
        if (left <= 0)
            return 1;
    }
}

void httpc_stream_close(struct httpc_stream *s)
{
    if (!s)
        return;
    if (s->multi && s->easy)
        curl_multi_remove_handle(s->multi, s->easy);
    curl_easy_cleanup(s->easy);
    curl_multi_cleanup(s->multi);
    curl_slist_free_all(s->hdrs);
    free(s->url);
    free(s->name);
    free(s);
}

int httpc_stream_run(struct httpc *h, const struct httpc_req *req, httpc_data_fn fn, void *ud,
                     long *status, struct pier_err *err)
{
    struct httpc_stream *s = NULL;
    int r = httpc_stream_open(h, req, fn, ud, &s, err);
    if (r < 0)
        return r;
    if (status)
        *status = s->status;
    while ((r = httpc_stream_poll(s, -1, err)) > 0)
        ;
    if (status)
        *status = s->status;
    httpc_stream_close(s);
    return r;
}

void httpc_basic_auth(struct buf *out, const char *key)
{
    struct buf cred = BUF_INIT;
    buf_printf(&cred, ":%s", key ? key : "");
    buf_puts(out, "Authorization: Basic ");
    base64_encode(out, cred.p, cred.len);
    buf_free(&cred);
}
