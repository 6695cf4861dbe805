/* attachc: the attach session's client. libcurl only makes the connection
 * (CONNECT_ONLY: it speaks no upgrades); the request is written and the
 * answer's head parsed here (http1.h), and after a 101 the bytes that came
 * with the head are handed out before anything read later. */
#include "lib/attachc.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/http1.h"
#include "lib/httpc.h"
#include "lib/jsonx.h"

#define DEFAULT_WAIT_MS 120000
#define SEND_STUCK_MS 30000
#define ERROR_BODY_MAX (64 * 1024)
#define ERROR_BODY_WAIT_MS 10000

struct attachc {
    CURL *curl;
    int fd;
    struct buf pending; /* bytes that came with the 101 head */
};

int attachc_fd(const struct attachc *c)
{
    return c->fd;
}

void attachc_close(struct attachc *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    buf_free(&c->pending);
    free(c);
}

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do
        r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    return r;
}

int attachc_send(struct attachc *c, const void *p, size_t n, struct pier_err *err)
{
    const char *s = p;
    while (n > 0) {
        size_t sent = 0;
        CURLcode rc = curl_easy_send(c->curl, s, n, &sent);
        if (rc == CURLE_AGAIN) {
            if (wait_fd(c->fd, POLLOUT, SEND_STUCK_MS) == 0)
                return err_set(err, PIER_ETIMEOUT, "the job's connection is stuck (%d s)",
                               SEND_STUCK_MS / 1000);
            continue;
        }
        if (rc != CURLE_OK)
            return err_set(err, PIER_EUNAVAIL, "the job's connection broke: %s",
                           curl_easy_strerror(rc));
        s += sent;
        n -= sent;
    }
    return 0;
}

ssize_t attachc_recv(struct attachc *c, struct buf *in, struct pier_err *err)
{
    if (c->pending.len > 0) {
        size_t n = c->pending.len;
        buf_append(in, c->pending.p, n);
        buf_reset(&c->pending);
        return (ssize_t)n;
    }
    char tmp[16384];
    size_t got = 0;
    CURLcode rc = curl_easy_recv(c->curl, tmp, sizeof(tmp), &got);
    if (rc == CURLE_AGAIN)
        return 0;
    if (rc != CURLE_OK)
        return err_set(err, PIER_EUNAVAIL, "the job's connection broke: %s",
                       curl_easy_strerror(rc));
    if (got == 0)
        return -EPIPE;
    buf_append(in, tmp, got);
    return (ssize_t)got;
}

/* "POST /prefix/path HTTP/1.1", its headers and the body. */
static int request_text(const struct attachc_req *req, struct buf *out, struct pier_err *err)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *prefix = NULL;
    int rc = 0;
    if (curl_url_set(u, CURLUPART_URL, req->base, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        rc = err_set(err, PIER_EINVAL, "controller URL \"%s\" cannot be read", req->base);
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    curl_url_get(u, CURLUPART_PATH, &prefix, 0);
    size_t plen = prefix ? strlen(prefix) : 0;
    while (plen > 0 && prefix[plen - 1] == '/')
        plen--;
    buf_printf(out, "POST %.*s%s HTTP/1.1\r\n", (int)plen, prefix ? prefix : "", req->path);
    buf_printf(out, "Host: %s%s%s\r\n", host, port ? ":" : "", port ? port : "");
    for (const char *const *h = req->headers; h && *h; h++)
        buf_printf(out, "%s\r\n", *h);
    buf_puts(out, "Content-Type: application/json\r\nAccept: application/json\r\n"
                  "Upgrade: flynn-attach/0\r\nConnection: upgrade\r\n");
    buf_printf(out, "Content-Length: %zu\r\n\r\n", req->body_len);
    buf_append(out, req->body, req->body_len);
out:
    curl_free(host);
    curl_free(port);
    curl_free(prefix);
    curl_url_cleanup(u);
    return rc;
}

static int code_from_flynn(const char *code)
{
    static const struct {
        const char *name;
        int code;
    } map[] = {
        {"not_found", PIER_ENOTFOUND},          {"object_not_found", PIER_ENOTFOUND},
        {"object_exists", PIER_EEXISTS},        {"conflict", PIER_ECONFLICT},
        {"validation_error", PIER_EINVAL},      {"syntax_error", PIER_EINVAL},
        {"request_body_too_big", PIER_ETOOBIG}, {"precondition_failed", PIER_ECONFLICT},
        {"service_unavailable", PIER_EUNAVAIL}, {"ratelimited", PIER_EUNAVAIL},
    };
    for (size_t i = 0; code && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].name, code) == 0)
            return map[i].code;
    return PIER_EINTERNAL;
}

/* The error a refusal (status, body) means. */
static int refusal_error(const struct attachc_req *req, long status, const struct buf *body,
                         struct pier_err *err)
{
    cleanup_json json_t *j = NULL;
    if (body->len > 0 && jsonx_parse_object(body->p, body->len, &j, NULL) == 0 &&
        json_is_string(json_object_get(j, "code"))) {
        const char *code = json_string_value(json_object_get(j, "code"));
        const char *msg = json_string_value(json_object_get(j, "message"));
        cleanup_buf struct buf m = BUF_INIT;
        /* what the controller says goes to a terminal: no control bytes */
        for (const unsigned char *p = (const unsigned char *)(msg && *msg ? msg : code); *p; p++)
            buf_putc(&m, *p < 0x20 || *p == 0x7f ? '?' : (char)*p);
        return err_set(err, code_from_flynn(code), "%s", m.p);
    }
    if (status == 404)
        return err_set(err, PIER_ENOTFOUND, "POST %s: not found", req->path);
    if (status == 401)
        return err_set(err, req->eauth ? req->eauth : -EACCES,
                       "the controller at %s refused the key (401)", req->base);
    return err_set(err, PIER_EPROTO, "the controller at %s answered POST %s with status %ld",
                   req->base, req->path, status);
}

/* Whether the body of a refusal has fully arrived in in. */
static bool refusal_complete(const struct http1_framing *fr, const struct buf *in)
{
    switch (fr->body) {
    case HTTP1_BODY_NONE: return true;
    case HTTP1_BODY_LENGTH: return in->len >= fr->length;
    case HTTP1_BODY_CHUNKED: {
        struct http1_chunked ch;
        http1_chunked_init(&ch);
        size_t rest = 0;
        return in->len > 0 && http1_chunked_scan(&ch, in->p, in->len, &rest) == 0;
    }
    default: return false; /* until the server closes */
    }
}

/* Reads the body of a refusal (bounded in size and time) and turns it into
 * the error. in holds what came after the head. */
static int read_refusal(const struct attachc_req *req, struct attachc *c,
                        const struct http1_response *resp, struct buf *in, struct pier_err *err)
{
    struct http1_framing fr = http1_response_framing(resp, false);
    int64_t deadline = clock_now_ms() + ERROR_BODY_WAIT_MS;
    while (!refusal_complete(&fr, in) && in->len < ERROR_BODY_MAX && clock_now_ms() < deadline) {
        ssize_t n = attachc_recv(c, in, NULL);
        if (n < 0)
            break;
        if (n == 0)
            wait_fd(c->fd, POLLIN, 1000);
    }
    if (fr.body == HTTP1_BODY_LENGTH && in->len > fr.length)
        in->len = (size_t)fr.length;
    if (fr.body == HTTP1_BODY_CHUNKED && in->len > 0) {
        struct http1_chunked ch;
        http1_chunked_init(&ch);
        size_t len = in->len, rest = 0;
        int dr = http1_chunked_decode(&ch, in->p, &len, &rest);
        in->len = dr == 0 || dr == HTTP1_INCOMPLETE ? len : 0;
    }
    return refusal_error(req, resp->status, in, err);
}

/* Reads until the response head is complete; keeps what follows a 101. */
static int read_answer(const struct attachc_req *req, struct attachc *c, struct pier_err *err)
{
    cleanup_buf struct buf in = BUF_INIT;
    cleanup_free struct http1_response *resp = xmalloc(sizeof(*resp));
    int wait_ms = req->wait_ms > 0 ? req->wait_ms : DEFAULT_WAIT_MS;
    int64_t deadline = clock_now_ms() + wait_ms;
    int head;
    for (;;) {
        head = http1_parse_response(in.p ? in.p : "", in.len, resp);
        if (head != HTTP1_INCOMPLETE)
            break;
        ssize_t n = attachc_recv(c, &in, err);
        if (n == -EPIPE)
            return err_set(err, PIER_EUNAVAIL,
                           "the controller at %s closed the connection of POST %s without an "
                           "answer",
                           req->base, req->path);
        if (n < 0)
            return (int)n;
        if (n > 0)
            continue;
        int64_t left = deadline - clock_now_ms();
        if (left <= 0)
            return err_set(err, PIER_ETIMEOUT,
                           "the controller at %s did not start the job within %d s", req->base,
                           wait_ms / 1000);
        wait_fd(c->fd, POLLIN, (int)(left > 1000 ? 1000 : left));
    }
    if (head < 0)
        return err_set(err, PIER_EPROTO,
                       "the controller at %s answered POST %s with a broken head: %s", req->base,
                       req->path, http1_strerror(head));
    if (resp->status == 101) {
        buf_append(&c->pending, in.p + head, in.len - (size_t)head);
        return 0;
    }
    buf_consume(&in, (size_t)head);
    return read_refusal(req, c, resp, &in, err);
}

static int connect_error(const struct attachc_req *req, CURL *curl, CURLcode cc,
                         struct pier_err *err)
{
    long os_errno = 0;
    curl_easy_getinfo(curl, CURLINFO_OS_ERRNO, &os_errno);
    if (cc == CURLE_COULDNT_CONNECT && os_errno == ECONNREFUSED)
        return err_set(err, -ECONNREFUSED, "the controller at %s: connection refused", req->base);
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
        cc == CURLE_OPERATION_TIMEDOUT)
        return err_set(err, -EHOSTUNREACH, "the controller at %s: cannot connect: %s", req->base,
                       curl_easy_strerror(cc));
    if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CONNECT_ERROR)
        return err_set(err, HTTPC_ETLS, "the controller at %s: %s", req->base,
                       curl_easy_strerror(cc));
    return err_set(err, PIER_EUNAVAIL, "the controller at %s: %s", req->base,
                   curl_easy_strerror(cc));
}

int attachc_open(const struct attachc_req *req, struct attachc **out, struct pier_err *err)
{
    *out = NULL;
    cleanup_buf struct buf text = BUF_INIT;
    int rc = request_text(req, &text, err);
    if (rc < 0)
        return rc;
    struct attachc *c = xcalloc(1, sizeof(*c));
    c->fd = -1;
    c->curl = curl_easy_init();
    if (!c->curl)
        abort();
    curl_easy_setopt(c->curl, CURLOPT_URL, req->base);
    curl_easy_setopt(c->curl, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_TCP_NODELAY, 1L);
    /* a controller that vanished without closing is noticed */
    curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPINTVL, 5L);
    if (req->ca_pem) {
        struct curl_blob ca = {(void *)req->ca_pem, strlen(req->ca_pem), CURL_BLOB_COPY};
        curl_easy_setopt(c->curl, CURLOPT_CAINFO_BLOB, &ca);
    }
    CURLcode cc = curl_easy_perform(c->curl);
    if (cc != CURLE_OK) {
        rc = connect_error(req, c->curl, cc, err);
        goto fail;
    }
    curl_socket_t fd = CURL_SOCKET_BAD;
    curl_easy_getinfo(c->curl, CURLINFO_ACTIVESOCKET, &fd);
    c->fd = (int)fd;
    rc = attachc_send(c, text.p, text.len, err);
    if (rc == 0)
        rc = read_answer(req, c, err);
    if (rc < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    attachc_close(c);
    return rc;
}
