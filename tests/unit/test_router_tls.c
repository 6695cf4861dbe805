/* The router's TLS engine against an in-process OpenSSL client: both sides
 * over memory BIOs, the bytes pumped between them in odd-sized pieces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "router/tls.h"

/* --- certificates made here ---- */

static long next_serial = 1;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(ext);
    assert_true(X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
}

/* A certificate for cn with key, signed by issuer (NULL: self-signed). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, bool ca)
{
    X509 *x = X509_new();
    assert_non_null(x);
    assert_true(X509_set_version(x, X509_VERSION_3));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), next_serial++));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_true(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                           (const unsigned char *)cn, -1, -1, 0));
    assert_true(X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x)));
    assert_true(X509_set_pubkey(x, key));
    X509 *signer = issuer ? issuer : x;
    if (ca) {
        add_ext(x, signer, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        char san[300];
        snprintf(san, sizeof(san), "DNS:%s", cn);
        add_ext(x, signer, NID_basic_constraints, "CA:FALSE");
        add_ext(x, signer, NID_subject_alt_name, san);
    }
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void pem_cert(struct buf *b, X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio_X509(bio, x));
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    buf_append(b, p, (size_t)n);
    BIO_free(bio);
}

static void pem_key(struct buf *b, EVP_PKEY *key, const char *passphrase)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio_PrivateKey(bio, key, passphrase ? EVP_aes_128_cbc() : NULL,
                                         (const unsigned char *)passphrase,
                                         passphrase ? (int)strlen(passphrase) : 0, NULL, NULL));
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    buf_append(b, p, (size_t)n);
    BIO_free(bio);
}

/* --- a client over memory BIOs and the pump ---- */

struct peer {
    SSL *cl;
    BIO *in;  /* ciphertext for the client */
    BIO *out; /* ciphertext from the client */
    struct tls_conn *srv;
    struct buf got; /* plaintext the server read */
    ssize_t end;    /* TLS_CLOSED or TLS_ERROR once tls_conn_read said so */
};

/* Odd piece sizes, so that records and handshake messages are cut
 * anywhere. */
static const size_t pieces[] = {1, 5, 17, 100, 1500, 4093, 16411, 65537, 2, 333};
static size_t piece_i;

static size_t piece(void)
{
    piece_i = (piece_i + 1) % (sizeof(pieces) / sizeof(pieces[0]));
    return pieces[piece_i];
}

static SSL_CTX *client_ctx(int min, int max)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_true(SSL_CTX_set_min_proto_version(ctx, min));
    assert_true(SSL_CTX_set_max_proto_version(ctx, max));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
}

static void peer_init(struct peer *p, SSL_CTX *cctx, SSL_CTX *sctx, tls_sni_fn sni, void *ud,
                      const char *servername, SSL_SESSION *sess)
{
    memset(p, 0, sizeof(*p));
    p->cl = SSL_new(cctx);
    assert_non_null(p->cl);
    p->in = BIO_new(BIO_s_mem());
    p->out = BIO_new(BIO_s_mem());
    SSL_set_bio(p->cl, p->in, p->out);
    SSL_set_connect_state(p->cl);
    if (servername)
        assert_true(SSL_set_tlsext_host_name(p->cl, servername));
    if (sess)
        assert_true(SSL_set_session(p->cl, sess));
    p->srv = tls_conn_new(sctx, sni, ud);
    assert_non_null(p->srv);
}

static void peer_free(struct peer *p)
{
    /* Else OpenSSL marks the client's session not resumable. */
    SSL_set_shutdown(p->cl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(p->cl);
    tls_conn_free(p->srv);
    buf_free(&p->got);
}

/* Moves ciphertext both ways and lets the server read; whether any byte
 * moved. */
static bool pump(struct peer *p)
{
    static char tmp[70000];
    bool moved = false;
    int n;
    while ((n = BIO_read(p->out, tmp, (int)piece())) > 0) {
        tls_conn_feed(p->srv, tmp, (size_t)n);
        moved = true;
    }
    for (;;) {
        ssize_t r = tls_conn_read(p->srv, tmp, piece());
        if (r > 0) {
            buf_append(&p->got, tmp, (size_t)r);
            continue;
        }
        assert_true(r == TLS_WANT || r == TLS_CLOSED || r == TLS_ERROR);
        if (r != TLS_WANT)
            p->end = r;
        break;
    }
    /* OpenSSL's error queue is per thread: the engine leaves it empty. */
    assert_int_equal(ERR_peek_error(), 0);
    size_t k;
    while ((k = tls_conn_take(p->srv, tmp, piece())) > 0) {
        assert_int_equal(BIO_write(p->in, tmp, (int)k), (int)k);
        moved = true;
    }
    assert_int_equal(tls_conn_pending(p->srv), 0);
    return moved;
}

/* The client's handshake: 0, or -1 when it failed. */
static int handshake(struct peer *p)
{
    for (int i = 0; i < 1000; i++) {
        int r = SSL_do_handshake(p->cl);
        if (r == 1) {
            pump(p); /* the client's last flight */
            return 0;
        }
        if (SSL_get_error(p->cl, r) != SSL_ERROR_WANT_READ || !pump(p)) {
            ERR_clear_error();
            return -1;
        }
    }
    return -1;
}

static void handshake_ok(struct peer *p)
{
    assert_int_equal(handshake(p), 0);
    assert_true(tls_conn_handshake_done(p->srv));
    assert_int_equal(p->end, 0);
}

/* Reads until the client has want bytes in b, or the server closed (then
 * returns SSL_ERROR_ZERO_RETURN). */
static int client_read(struct peer *p, struct buf *b, size_t want)
{
    static char tmp[70000];
    while (b->len < want) {
        size_t n = 0;
        if (SSL_read_ex(p->cl, tmp, piece(), &n) == 1) {
            buf_append(b, tmp, n);
            continue;
        }
        int e = SSL_get_error(p->cl, 0);
        if (e == SSL_ERROR_ZERO_RETURN)
            return e;
        assert_int_equal(e, SSL_ERROR_WANT_READ);
        assert_true(pump(p));
    }
    return 0;
}

/* Lets the client take the session tickets the server sent and returns
 * its session (a new reference). */
static SSL_SESSION *client_session(struct peer *p)
{
    pump(p);
    char c;
    size_t n;
    assert_int_equal(SSL_read_ex(p->cl, &c, 1, &n), 0);
    assert_int_equal(SSL_get_error(p->cl, 0), SSL_ERROR_WANT_READ);
    SSL_SESSION *s = SSL_get1_session(p->cl);
    assert_non_null(s);
    assert_true(SSL_SESSION_is_resumable(s));
    return s;
}

static void peer_cn(struct peer *p, char *out, size_t cap)
{
    X509 *x = SSL_get1_peer_certificate(p->cl);
    assert_non_null(x);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)cap) >
                0);
    X509_free(x);
}

/* --- tests ---- */

static SSL_CTX *ctx_a, *ctx_b;

static SSL_CTX *sni_b(void *ud, const char *name)
{
    (void)ud;
    return strcmp(name, "b.test") == 0 ? ctx_b : NULL;
}

static int setup(void **state)
{
    (void)state;
    struct pier_err err;
    if (getenv("TEST_DEBUG"))
        log_set_level(LOG_DEBUG);
    ctx_a = tls_ctx_self_signed("a.test", &err);
    ctx_b = tls_ctx_self_signed("b.test", &err);
    return ctx_a && ctx_b ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tls_ctx_free(ctx_a);
    tls_ctx_free(ctx_b);
    return 0;
}

static void fill(struct buf *b, size_t n, unsigned seed)
{
    buf_grow(b, n);
    for (size_t i = 0; i < n; i++)
        b->p[i] = (char)((i * 31 + seed + i / 4099) & 0xff);
    b->len = n;
}

static void test_echo_large(void **state)
{
    (void)state;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    assert_int_equal(SSL_CTX_set_alpn_protos(cctx, alpn, sizeof(alpn) - 1), 0);
    struct peer p;
    peer_init(&p, cctx, ctx_a, NULL, NULL, NULL, NULL);
    /* Written before the handshake: kept and sent after it. */
    assert_int_equal(tls_conn_write(p.srv, "early ", 6), 0);
    assert_int_equal(tls_conn_write(p.srv, "bird", 4), 0);
    assert_false(tls_conn_handshake_done(p.srv));
    handshake_ok(&p);
    assert_int_equal(SSL_version(p.cl), TLS1_3_VERSION);
    /* The server's preference, though the client lists AES-256 first. */
    assert_string_equal(SSL_get_cipher_name(p.cl), "TLS_AES_128_GCM_SHA256");
    const unsigned char *proto;
    unsigned int plen;
    SSL_get0_alpn_selected(p.cl, &proto, &plen);
    assert_int_equal(plen, 8);
    assert_memory_equal(proto, "http/1.1", 8);
    assert_null(tls_conn_servername(p.srv));
    assert_false(tls_conn_resumed(p.srv));
    struct buf rx = BUF_INIT;
    assert_int_equal(client_read(&p, &rx, 10), 0);
    assert_int_equal(rx.len, 10);
    assert_memory_equal(rx.p, "early bird", 10);
    buf_reset(&rx);

    /* 1 MiB client to server, written in odd pieces. */
    const size_t big = 1 << 20;
    struct buf up = BUF_INIT, down = BUF_INIT;
    fill(&up, big, 7);
    for (size_t off = 0; off < big;) {
        size_t n = piece() * 3;
        if (n > big - off)
            n = big - off;
        size_t w;
        assert_int_equal(SSL_write_ex(p.cl, up.p + off, n, &w), 1);
        off += w;
        if (off % 5 == 0)
            pump(&p);
    }
    while (p.got.len < big)
        assert_true(pump(&p));
    assert_int_equal(p.got.len, big);
    assert_memory_equal(p.got.p, up.p, big);

    /* 1 MiB back, some taken while more is written. */
    fill(&down, big, 11);
    for (size_t off = 0; off < big;) {
        size_t n = piece() * 3 + 1;
        if (n > big - off)
            n = big - off;
        assert_int_equal(tls_conn_write(p.srv, down.p + off, n), 0);
        off += n;
        if (off % 3 == 0) {
            char tmp[777];
            size_t k = tls_conn_take(p.srv, tmp, sizeof(tmp));
            BIO_write(p.in, tmp, (int)k);
        }
    }
    assert_true(tls_conn_pending(p.srv) > 0);
    assert_int_equal(client_read(&p, &rx, big), 0);
    assert_int_equal(rx.len, big);
    assert_memory_equal(rx.p, down.p, big);

    buf_free(&up);
    buf_free(&down);
    buf_free(&rx);
    peer_free(&p);
    SSL_CTX_free(cctx);
}

static void test_tls12_and_alpn(void **state)
{
    (void)state;
    /* TLS 1.2 with an ECDHE AEAD suite; a client offering only h2 gets no
     * ALPN, and one offering none is fine. */
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    static const unsigned char h2[] = "\x02h2";
    assert_int_equal(SSL_CTX_set_alpn_protos(cctx, h2, sizeof(h2) - 1), 0);
    struct peer p;
    peer_init(&p, cctx, ctx_a, NULL, NULL, "a.test", NULL);
    handshake_ok(&p);
    assert_int_equal(SSL_version(p.cl), TLS1_2_VERSION);
    const char *cipher = SSL_get_cipher_name(p.cl);
    assert_non_null(strstr(cipher, "ECDHE"));
    const unsigned char *proto;
    unsigned int plen;
    SSL_get0_alpn_selected(p.cl, &proto, &plen);
    assert_int_equal(plen, 0);
    assert_int_equal(SSL_write(p.cl, "ping", 4), 4);
    pump(&p);
    assert_int_equal(p.got.len, 4);
    peer_free(&p);
    SSL_CTX_free(cctx);

    cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    peer_init(&p, cctx, ctx_a, NULL, NULL, NULL, NULL);
    handshake_ok(&p);
    SSL_get0_alpn_selected(p.cl, &proto, &plen);
    assert_int_equal(plen, 0);
    peer_free(&p);
    SSL_CTX_free(cctx);
}

static void test_sni(void **state)
{
    (void)state;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    char cn[128];
    const char *names[] = {"b.test", "c.test", NULL};
    const char *want[] = {"b.test", "a.test", "a.test"};
    for (int i = 0; i < 3; i++) {
        struct peer p;
        peer_init(&p, cctx, ctx_a, sni_b, NULL, names[i], NULL);
        handshake_ok(&p);
        peer_cn(&p, cn, sizeof(cn));
        assert_string_equal(cn, want[i]);
        if (names[i])
            assert_string_equal(tls_conn_servername(p.srv), names[i]);
        else
            assert_null(tls_conn_servername(p.srv));
        /* Data flows after a switch too. */
        assert_int_equal(tls_conn_write(p.srv, "hi", 2), 0);
        struct buf rx = BUF_INIT;
        assert_int_equal(client_read(&p, &rx, 2), 0);
        assert_memory_equal(rx.p, "hi", 2);
        buf_free(&rx);
        peer_free(&p);
    }
    /* Without an sni function the name is still recorded. */
    struct peer p;
    peer_init(&p, cctx, ctx_a, NULL, NULL, "b.test", NULL);
    handshake_ok(&p);
    peer_cn(&p, cn, sizeof(cn));
    assert_string_equal(cn, "a.test");
    assert_string_equal(tls_conn_servername(p.srv), "b.test");
    peer_free(&p);
    SSL_CTX_free(cctx);
}

/* A full handshake on first_ctx, then one with its session on second_ctx:
 * resumed, with the certificate SNI chose. */
static void resume_case(SSL_CTX *cctx, SSL_CTX *first_ctx, SSL_CTX *second_ctx, const char *sni,
                        const char *want_cn)
{
    struct peer p;
    char cn[128];
    peer_init(&p, cctx, first_ctx, sni_b, NULL, sni, NULL);
    handshake_ok(&p);
    assert_false(tls_conn_resumed(p.srv));
    peer_cn(&p, cn, sizeof(cn));
    assert_string_equal(cn, want_cn);
    SSL_SESSION *sess = client_session(&p);
    /* Closed without close_notify, as most clients do: the session stays. */
    peer_free(&p);

    peer_init(&p, cctx, second_ctx, sni_b, NULL, sni, sess);
    handshake_ok(&p);
    assert_true(SSL_session_reused(p.cl));
    assert_true(tls_conn_resumed(p.srv));
    if (sni)
        assert_string_equal(tls_conn_servername(p.srv), sni);
    assert_int_equal(SSL_write(p.cl, "again", 5), 5);
    pump(&p);
    assert_int_equal(p.got.len, 5);
    peer_free(&p);
    SSL_SESSION_free(sess);
}

static void test_resumption(void **state)
{
    (void)state;
    struct pier_err err;
    /* Another default context (another listener): the same ticket key. */
    SSL_CTX *other = tls_ctx_self_signed("other.test", &err);
    assert_non_null(other);

    /* TLS 1.3 tickets. */
    SSL_CTX *c13 = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION);
    resume_case(c13, ctx_a, ctx_a, NULL, "a.test");
    resume_case(c13, ctx_a, ctx_a, "b.test", "b.test");
    resume_case(c13, ctx_a, other, "b.test", "b.test");
    resume_case(c13, ctx_a, other, NULL, "a.test");
    SSL_CTX_free(c13);

    /* TLS 1.2 tickets. */
    SSL_CTX *c12 = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    resume_case(c12, ctx_a, ctx_a, NULL, "a.test");
    resume_case(c12, ctx_a, ctx_a, "b.test", "b.test");
    resume_case(c12, ctx_a, other, "b.test", "b.test");
    SSL_CTX_free(c12);

    /* TLS 1.2 session ids: the server's cache. */
    SSL_CTX *cid = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    SSL_CTX_set_options(cid, SSL_OP_NO_TICKET);
    resume_case(cid, ctx_a, ctx_a, NULL, "a.test");
    resume_case(cid, ctx_a, ctx_a, "b.test", "b.test");
    SSL_CTX_free(cid);

    tls_ctx_free(other);
}

static void test_refused_clients(void **state)
{
    (void)state;
    /* TLS 1.1 only (the client must lower its security level to even try). */
    SSL_CTX *c11 = client_ctx(TLS1_1_VERSION, TLS1_1_VERSION);
    SSL_CTX_set_security_level(c11, 0);
    assert_true(SSL_CTX_set_cipher_list(c11, "DEFAULT:@SECLEVEL=0"));
    struct peer p;
    peer_init(&p, c11, ctx_a, NULL, NULL, "a.test", NULL);
    assert_int_equal(handshake(&p), -1);
    assert_int_equal(p.end, TLS_ERROR);
    assert_false(tls_conn_handshake_done(p.srv));
    assert_int_equal(tls_conn_read(p.srv, (char[8]){0}, 8), TLS_ERROR);
    assert_int_equal(tls_conn_write(p.srv, "x", 1), TLS_ERROR);
    peer_free(&p);
    SSL_CTX_free(c11);

    /* TLS 1.2 without forward secrecy. */
    SSL_CTX *crsa = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION);
    assert_true(SSL_CTX_set_cipher_list(crsa, "AES128-GCM-SHA256:AES256-SHA"));
    peer_init(&p, crsa, ctx_a, NULL, NULL, NULL, NULL);
    assert_int_equal(handshake(&p), -1);
    assert_int_equal(p.end, TLS_ERROR);
    peer_free(&p);
    SSL_CTX_free(crsa);
}

static void test_close_notify(void **state)
{
    (void)state;
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    char out[64];

    /* The client's data then its close_notify, in one piece. */
    struct peer p;
    peer_init(&p, cctx, ctx_a, NULL, NULL, NULL, NULL);
    handshake_ok(&p);
    assert_int_equal(SSL_write(p.cl, "bye", 3), 3);
    SSL_shutdown(p.cl);
    char tmp[4096];
    int n = BIO_read(p.out, tmp, sizeof(tmp));
    assert_true(n > 0);
    tls_conn_feed(p.srv, tmp, (size_t)n);
    assert_int_equal(tls_conn_read(p.srv, out, sizeof(out)), 3);
    assert_memory_equal(out, "bye", 3);
    assert_int_equal(tls_conn_read(p.srv, out, sizeof(out)), TLS_CLOSED);
    assert_int_equal(tls_conn_read(p.srv, out, sizeof(out)), TLS_CLOSED);
    /* The server may still answer, then close. */
    assert_int_equal(tls_conn_write(p.srv, "ok", 2), 0);
    tls_conn_close_notify(p.srv);
    assert_int_equal(tls_conn_write(p.srv, "late", 4), TLS_ERROR);
    pump(&p);
    struct buf rx = BUF_INIT;
    assert_int_equal(client_read(&p, &rx, 100), SSL_ERROR_ZERO_RETURN);
    assert_int_equal(rx.len, 2);
    assert_memory_equal(rx.p, "ok", 2);
    buf_free(&rx);
    peer_free(&p);
    ERR_clear_error();

    /* Written and closed before the handshake: both go out after it. */
    peer_init(&p, cctx, ctx_a, NULL, NULL, NULL, NULL);
    assert_int_equal(tls_conn_write(p.srv, "early", 5), 0);
    tls_conn_close_notify(p.srv);
    assert_int_equal(tls_conn_pending(p.srv), 0);
    handshake_ok(&p);
    assert_int_equal(client_read(&p, &rx, 100), SSL_ERROR_ZERO_RETURN);
    assert_int_equal(rx.len, 5);
    assert_memory_equal(rx.p, "early", 5);
    buf_free(&rx);
    peer_free(&p);
    ERR_clear_error();
    SSL_CTX_free(cctx);
}

static void test_garbage(void **state)
{
    (void)state;
    char out[256];
    /* Plain HTTP on the TLS port. */
    struct tls_conn *c = tls_conn_new(ctx_a, NULL, NULL);
    assert_int_equal(tls_conn_read(c, out, sizeof(out)), TLS_WANT);
    const char *req = "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    tls_conn_feed(c, req, strlen(req));
    assert_int_equal(tls_conn_read(c, out, sizeof(out)), TLS_ERROR);
    assert_int_equal(ERR_peek_error(), 0);
    assert_int_equal(tls_conn_read(c, out, sizeof(out)), TLS_ERROR);
    tls_conn_free(c);

    /* Garbage after a good handshake. */
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    struct peer p;
    peer_init(&p, cctx, ctx_a, NULL, NULL, NULL, NULL);
    handshake_ok(&p);
    char junk[300];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(i * 7 + 23);
    junk[0] = 23; /* application data */
    junk[1] = 3;
    junk[2] = 3;
    junk[3] = 0;
    junk[4] = 100;
    tls_conn_feed(p.srv, junk, sizeof(junk));
    assert_int_equal(tls_conn_read(p.srv, out, sizeof(out)), TLS_ERROR);
    assert_int_equal(ERR_peek_error(), 0);
    peer_free(&p);
    SSL_CTX_free(cctx);
}

static void test_chain_and_verify(void **state)
{
    (void)state;
    EVP_PKEY *root_key = EVP_EC_gen("P-256"), *inter_key = EVP_EC_gen("P-256"),
             *leaf_key = EVP_EC_gen("P-256");
    X509 *root = make_cert("Test Root", root_key, NULL, NULL, true);
    X509 *inter = make_cert("Test Intermediate", inter_key, root, root_key, true);
    X509 *leaf = make_cert("leaf.test", leaf_key, inter, inter_key, false);
    struct buf cert = BUF_INIT, key = BUF_INIT;
    pem_cert(&cert, leaf);
    pem_cert(&cert, inter);
    pem_key(&key, leaf_key, NULL);
    struct pier_err err;
    SSL_CTX *ctx = tls_ctx_make(cert.p, key.p, &err);
    assert_non_null(ctx);

    /* A client trusting the root alone verifies leaf.test: the
     * intermediate was sent. */
    SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_3_VERSION);
    assert_true(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), root));
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
    struct peer p;
    peer_init(&p, cctx, ctx, NULL, NULL, "leaf.test", NULL);
    assert_true(SSL_set1_host(p.cl, "leaf.test"));
    handshake_ok(&p);
    assert_int_equal(SSL_get_verify_result(p.cl), X509_V_OK);
    assert_int_equal(sk_X509_num(SSL_get_peer_cert_chain(p.cl)), 2);
    peer_free(&p);

    /* The self-signed certificate names its host in subjectAltName. */
    assert_true(X509_STORE_add_cert(SSL_CTX_get_cert_store(cctx), SSL_CTX_get0_certificate(ctx_b)));
    peer_init(&p, cctx, ctx_b, NULL, NULL, "b.test", NULL);
    assert_true(SSL_set1_host(p.cl, "b.test"));
    handshake_ok(&p);
    assert_int_equal(SSL_get_verify_result(p.cl), X509_V_OK);
    peer_free(&p);
    SSL_CTX_free(cctx);
    tls_ctx_free(ctx);

    /* An IP address as the name of a self-signed certificate. */
    ctx = tls_ctx_self_signed("127.0.0.1", &err);
    assert_non_null(ctx);
    assert_int_equal(X509_check_ip_asc(SSL_CTX_get0_certificate(ctx), "127.0.0.1", 0), 1);
    tls_ctx_free(ctx);

    buf_free(&cert);
    buf_free(&key);
    X509_free(root);
    X509_free(inter);
    X509_free(leaf);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(inter_key);
    EVP_PKEY_free(leaf_key);
}

static void test_bad_pem(void **state)
{
    (void)state;
    EVP_PKEY *k1 = EVP_EC_gen("P-256"), *k2 = EVP_EC_gen("P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    X509 *x = make_cert("k.test", k1, NULL, NULL, false);
    struct buf cert = BUF_INIT, good = BUF_INIT, other = BUF_INIT, edkey = BUF_INIT,
               locked = BUF_INIT;
    pem_cert(&cert, x);
    pem_key(&good, k1, NULL);
    pem_key(&other, k2, NULL);
    pem_key(&edkey, ed, NULL);
    pem_key(&locked, k1, "secret");
    struct pier_err err;

    SSL_CTX *ctx = tls_ctx_from_pem(cert.p, good.p, &err);
    assert_non_null(ctx);
    tls_ctx_free(ctx);
    /* A key after the certificate in one file is fine too. */
    struct buf both = BUF_INIT;
    buf_append(&both, cert.p, cert.len);
    buf_append(&both, good.p, good.len);
    ctx = tls_ctx_from_pem(both.p, good.p, &err);
    assert_non_null(ctx);
    tls_ctx_free(ctx);
    buf_free(&both);

    err_clear(&err);
    assert_null(tls_ctx_from_pem(cert.p, other.p, &err));
    assert_non_null(strstr(err.msg, "does not match"));
    assert_int_equal(err.code, PIER_EINVAL);
    err_clear(&err);
    assert_null(tls_ctx_from_pem(cert.p, edkey.p, &err));
    assert_non_null(strstr(err.msg, "does not match"));
    err_clear(&err);
    assert_null(tls_ctx_from_pem(cert.p, locked.p, &err));
    assert_non_null(strstr(err.msg, "private key"));
    err_clear(&err);
    assert_null(tls_ctx_from_pem("not a certificate", good.p, &err));
    assert_non_null(strstr(err.msg, "certificate"));
    err_clear(&err);
    assert_null(tls_ctx_from_pem(cert.p, "", &err));
    assert_non_null(strstr(err.msg, "private key"));
    /* A broken certificate after a good one. */
    struct buf broken = BUF_INIT;
    buf_append(&broken, cert.p, cert.len);
    buf_puts(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    err_clear(&err);
    assert_null(tls_ctx_from_pem(broken.p, good.p, &err));
    assert_non_null(strstr(err.msg, "chain"));
    buf_free(&broken);
    assert_int_equal(ERR_peek_error(), 0);

    /* Files. */
    char dir[] = "/tmp/test_router_tls.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cpath[64], kpath[64], missing[64];
    snprintf(cpath, sizeof(cpath), "%s/cert.pem", dir);
    snprintf(kpath, sizeof(kpath), "%s/key.pem", dir);
    snprintf(missing, sizeof(missing), "%s/nope.pem", dir);
    FILE *f = fopen(cpath, "w");
    fwrite(cert.p, 1, cert.len, f);
    fclose(f);
    f = fopen(kpath, "w");
    fwrite(other.p, 1, other.len, f);
    fclose(f);
    err_clear(&err);
    assert_null(tls_ctx_from_files(cpath, missing, &err));
    assert_non_null(strstr(err.msg, missing));
    assert_non_null(strstr(err.msg, "No such file"));
    err_clear(&err);
    assert_null(tls_ctx_from_files(missing, kpath, &err));
    assert_non_null(strstr(err.msg, missing));
    err_clear(&err);
    assert_null(tls_ctx_from_files(cpath, kpath, &err));
    assert_non_null(strstr(err.msg, "does not match"));
    assert_non_null(strstr(err.msg, kpath));
    f = fopen(kpath, "w");
    fwrite(good.p, 1, good.len, f);
    fclose(f);
    ctx = tls_ctx_from_files(cpath, kpath, &err);
    assert_non_null(ctx);
    tls_ctx_free(ctx);
    unlink(cpath);
    unlink(kpath);
    rmdir(dir);

    buf_free(&cert);
    buf_free(&good);
    buf_free(&other);
    buf_free(&edkey);
    buf_free(&locked);
    X509_free(x);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(ed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_large),
        cmocka_unit_test(test_tls12_and_alpn),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_resumption),
        cmocka_unit_test(test_refused_clients),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_chain_and_verify),
        cmocka_unit_test(test_bad_pem),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
