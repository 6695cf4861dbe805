/* tls: the router's TLS engine over memory buffers (tls.h).
 *
 * Every connection's SSL reads and writes through one BIO of our own whose
 * read side is the ciphertext fed in and whose write side is the
 * ciphertext waiting to be taken: plain appends and copies out (BIO_s_mem
 * would move what is left on every write). A buffer that grew past
 * TLS_BUF_KEEP is freed once drained, so an idle keep-alive connection
 * holds little memory (OpenSSL's own record buffers go with
 * SSL_MODE_RELEASE_BUFFERS).
 *
 * Resumption and SNI. OpenSSL looks a session up (ticket or cache) on the
 * SSL's session context, the default one it was made with, before the
 * servername callback runs; the callback then switches the certificate
 * with SSL_set_SSL_CTX, which keeps the session context. What must agree
 * between contexts is the session id context (checked against the
 * session's) and, for a session made under one default context and
 * resumed under another (another listener, a restarted table), the ticket
 * key: so every context gets the same session id context and one ticket
 * key made once per process (never rotated: a restart ends every ticket).
 * The client hello callback is not needed: the servername callback runs
 * before the certificate is chosen.
 *
 * A server frees a session from its cache when an SSL is freed without a
 * shutdown, and most clients just close their socket: tls_conn_free marks
 * a connection that did not fail as shut down, so session ids resume. */
#include "router/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/log.h"

/* TLS 1.2 suites: forward secret AEADs only (TLS 1.3's are all fine). */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
/* TLS 1.3: AES-128 first, faster than AES-256 and strong enough; ChaCha20
 * wins for a client that lists it first (SSL_OP_PRIORITIZE_CHACHA: phones
 * without AES instructions). */
#define TLS13_CIPHERS "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"
/* The same on every context, so that sessions move between them. */
#define TLS_SID_CTX "pier-router"
/* Ticket key: 16 bytes of name, 32 of HMAC key, 32 of AES key. */
#define TLS_TICKET_KEY_LEN 80
/* A drained buffer with more room than this is freed. */
#define TLS_BUF_KEEP (16 * 1024)
/* Largest PEM file read. */
#define TLS_PEM_MAX (1024 * 1024)
/* What one TLS record adds to its plaintext, at most (header, tag, pad). */
#define TLS_RECORD_OVERHEAD 64
#define TLS_RECORD_MAX 16384

struct tls_conn {
    SSL *ssl;
    tls_sni_fn sni;
    void *ud;
    struct buf in; /* ciphertext fed; in.p[in_off..] not yet read by OpenSSL */
    size_t in_off;
    struct buf out; /* ciphertext made; out.p[out_off..] not yet taken */
    size_t out_off;
    struct buf early;  /* plaintext written before the handshake finished */
    bool done;         /* handshake finished */
    bool starved;      /* OpenSSL wants input and none was fed since */
    bool closed;       /* close_notify received */
    bool failed;       /* fatal error: only TLS_ERROR from now on */
    bool close_wanted; /* close_notify asked for before the handshake finished */
    bool close_sent;
    char servername[256];
};

/* --- process-wide state ---- */

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static unsigned char ticket_key[TLS_TICKET_KEY_LEN];
static BIO_METHOD *conn_bio_method;
static bool tls_ready;

static int conn_bio_write(BIO *b, const char *p, int n);
static int conn_bio_read(BIO *b, char *p, int n);
static long conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr);

static void tls_init_once(void)
{
    if (RAND_bytes(ticket_key, sizeof(ticket_key)) != 1)
        return;
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pier-tls-conn");
    if (!m || !BIO_meth_set_write(m, conn_bio_write) || !BIO_meth_set_read(m, conn_bio_read) ||
        !BIO_meth_set_ctrl(m, conn_bio_ctrl)) {
        BIO_meth_free(m);
        return;
    }
    conn_bio_method = m;
    tls_ready = true;
}

/* OpenSSL's reason for the last error (or fallback), in out; clears the
 * thread's error queue, which must not leak into other connections. */
static const char *ssl_reason(char *out, size_t cap, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r)
        snprintf(out, cap, "%s", r);
    else if (e)
        ERR_error_string_n(e, out, cap);
    else
        snprintf(out, cap, "%s", fallback);
    ERR_clear_error();
    return out;
}

/* --- contexts ---- */

static void chain_free(STACK_OF(X509) * chain)
{
    sk_X509_pop_free(chain, X509_free);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char http11[] = "http/1.1";
    for (unsigned int i = 0; i < inlen;) {
        unsigned int len = in[i];
        if (len > inlen - i - 1)
            break;
        if (len == sizeof(http11) - 1 && memcmp(in + i + 1, http11, len) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    /* No protocol we speak (h2 only, say): answer without ALPN and let the
     * client decide, as a server without ALPN would. */
    return SSL_TLSEXT_ERR_NOACK;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    (void)arg;
    struct tls_conn *c = SSL_get_app_data(ssl);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!c || !name)
        return SSL_TLSEXT_ERR_OK;
    snprintf(c->servername, sizeof(c->servername), "%s", name);
    if (!c->sni)
        return SSL_TLSEXT_ERR_OK;
    SSL_CTX *ctx = c->sni(c->ud, c->servername);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl) && !SSL_set_SSL_CTX(ssl, ctx)) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* A server context with the router's settings and no certificate yet. */
static SSL_CTX *ctx_new(struct pier_err *err)
{
    char why[256];
    pthread_once(&tls_once, tls_init_once);
    if (!tls_ready) {
        err_set(err, PIER_EINTERNAL, "tls: setting up: %s",
                ssl_reason(why, sizeof(why), "out of randomness"));
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        err_set(err, PIER_EINTERNAL, "tls: new context: %s",
                ssl_reason(why, sizeof(why), "unknown error"));
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA |
                                 SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* No auto chain: a leaf without intermediates would otherwise be
     * verified against the (empty) store on every handshake. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) ||
        !SSL_CTX_set_ciphersuites(ctx, TLS13_CIPHERS) ||
        !SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) ||
        !SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SID_CTX,
                                        sizeof(TLS_SID_CTX) - 1) ||
        /* One ticket per connection: a client uses one per new connection. */
        !SSL_CTX_set_num_tickets(ctx, 1) ||
        !SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_key, sizeof(ticket_key))) {
        err_set(err, PIER_EINTERNAL, "tls: configuring a context: %s",
                ssl_reason(why, sizeof(why), "unknown error"));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* A context for cert (and chain, its references stolen; may be NULL) and
 * key, which must match. */
static SSL_CTX *ctx_with_cert(X509 *cert, STACK_OF(X509) * chain, EVP_PKEY *key,
                              struct pier_err *err)
{
    char why[256];
    SSL_CTX *ctx = ctx_new(err);
    if (!ctx) {
        chain_free(chain);
        return NULL;
    }
    if (SSL_CTX_use_certificate(ctx, cert) != 1) {
        err_set(err, PIER_EINVAL, "tls certificate: %s",
                ssl_reason(why, sizeof(why), "unusable certificate"));
        goto fail;
    }
    if (chain && SSL_CTX_set0_chain(ctx, chain) != 1) {
        err_set(err, PIER_EINVAL, "tls certificate chain: %s",
                ssl_reason(why, sizeof(why), "unusable chain"));
        goto fail;
    }
    chain = NULL; /* the context's now */
    /* A key of the certificate's type that does not match fails here; one
     * of another type goes into another slot and fails the check below. */
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        err_set(err, PIER_EINVAL, "tls: the private key does not match the certificate (%s)",
                ssl_reason(why, sizeof(why), "mismatch"));
        goto fail;
    }
    return ctx;
fail:
    chain_free(chain);
    SSL_CTX_free(ctx);
    return NULL;
}

/* Refuses to prompt for a passphrase: an encrypted key just fails. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

/* Reads the leaf and then any intermediates of pem into *leaf, *chain
 * (NULL when there are none). */
static int read_cert_chain(const char *pem, X509 **leaf, STACK_OF(X509) * *chain,
                           struct pier_err *err)
{
    char why[256];
    *leaf = NULL;
    *chain = NULL;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    if (!bio)
        return err_set(err, PIER_EINTERNAL, "tls certificate: out of memory");
    *leaf = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
    if (!*leaf) {
        BIO_free(bio);
        return err_set(err, PIER_EINVAL, "tls certificate: no PEM certificate (%s)",
                       ssl_reason(why, sizeof(why), "empty"));
    }
    int rc = 0;
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
        if (!x)
            break;
        if (!*chain)
            *chain = sk_X509_new_null();
        if (!*chain || !sk_X509_push(*chain, x)) {
            X509_free(x);
            rc = err_set(err, PIER_EINTERNAL, "tls certificate: out of memory");
            break;
        }
    }
    /* Reading ends at the end of the text ("no start line"; blocks of
     * other types, a key say, are skipped) or at a broken certificate. */
    unsigned long e = ERR_peek_last_error();
    if (rc == 0 && e &&
        !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
        rc = err_set(err, PIER_EINVAL, "tls certificate chain: %s",
                     ssl_reason(why, sizeof(why), "unreadable"));
    ERR_clear_error();
    BIO_free(bio);
    if (rc < 0) {
        X509_free(*leaf);
        chain_free(*chain);
        *leaf = NULL;
        *chain = NULL;
    }
    return rc;
}

SSL_CTX *tls_ctx_from_pem(const char *cert_pem, const char *key_pem, struct pier_err *err)
{
    char why[256];
    if (!cert_pem || !key_pem) {
        err_set(err, PIER_EINVAL, "tls: %s missing", cert_pem ? "private key" : "certificate");
        return NULL;
    }
    X509 *leaf;
    STACK_OF(X509) * chain;
    if (read_cert_chain(cert_pem, &leaf, &chain, err) < 0)
        return NULL;
    BIO *bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    if (!key) {
        err_set(err, PIER_EINVAL, "tls private key: no unencrypted PEM private key (%s)",
                ssl_reason(why, sizeof(why), "empty"));
        X509_free(leaf);
        chain_free(chain);
        return NULL;
    }
    SSL_CTX *ctx = ctx_with_cert(leaf, chain, key, err);
    X509_free(leaf);
    EVP_PKEY_free(key);
    return ctx;
}

/* The text of a PEM file in *out (the caller frees it). */
static int read_pem_file(const char *what, const char *path, char **out, struct pier_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "re");
    if (!f)
        return err_set(err, -errno, "%s file '%s': %s", what, path, strerror(errno));
    struct buf b = BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > TLS_PEM_MAX) {
            fclose(f);
            buf_free(&b);
            return err_set(err, PIER_EINVAL, "%s file '%s': over %d bytes", what, path,
                           TLS_PEM_MAX);
        }
        buf_append(&b, chunk, n);
    }
    int failed = ferror(f) ? errno : 0;
    fclose(f);
    if (failed) {
        buf_free(&b);
        return err_set(err, -failed, "%s file '%s': %s", what, path, strerror(failed));
    }
    *out = buf_detach(&b);
    return 0;
}

SSL_CTX *tls_ctx_from_files(const char *cert_path, const char *key_path, struct pier_err *err)
{
    char *cert = NULL, *key = NULL;
    SSL_CTX *ctx = NULL;
    if (read_pem_file("certificate", cert_path, &cert, err) == 0 &&
        read_pem_file("private key", key_path, &key, err) == 0) {
        ctx = tls_ctx_from_pem(cert, key, err);
        if (!ctx)
            err_wrap(err, PIER_EINVAL, "%s and %s", cert_path, key_path);
    }
    free(cert);
    if (key) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
    }
    return ctx;
}

/* Adds the extension nid with value (in OpenSSL's config syntax) to x. */
static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* subjectAltName: name as an IP address if it is one, else a DNS name
 * (built directly, so that no character of name is read as syntax). */
static int add_san(X509 *x, const char *name)
{
    unsigned char ip[16];
    int iplen = inet_pton(AF_INET, name, ip) == 1 ? 4 : inet_pton(AF_INET6, name, ip) == 1 ? 16 : 0;
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_OCTET_STRING *v = iplen ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
    int ok = names && gn && v &&
             ASN1_STRING_set(v, iplen ? (const void *)ip : (const void *)name,
                             iplen ? iplen : (int)strlen(name));
    if (ok) {
        GENERAL_NAME_set0_value(gn, iplen ? GEN_IPADD : GEN_DNS, v);
        v = NULL;
        ok = sk_GENERAL_NAME_push(names, gn) > 0;
        if (ok)
            gn = NULL;
    }
    ok = ok && X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) == 1;
    ASN1_STRING_free(v);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return ok ? 0 : -1;
}

/* A self-signed certificate for cn with key. */
static X509 *make_self_signed(const char *cn, EVP_PKEY *key)
{
    X509 *x = X509_new();
    unsigned char serial[8];
    if (!x || RAND_bytes(serial, sizeof(serial)) != 1)
        goto fail;
    uint64_t s = 0;
    for (size_t i = 0; i < sizeof(serial); i++)
        s = s << 8 | serial[i];
    s = (s >> 1) | 1; /* positive, never zero */
    X509_NAME *name = X509_get_subject_name(x);
    /* The CN field holds 64 characters at most; the SAN names it anyway. */
    if (!X509_set_version(x, X509_VERSION_3) ||
        !ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), s) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600) ||
        (strlen(cn) <= 64 && !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                                         (const unsigned char *)cn, -1, -1, 0)) ||
        !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, key) ||
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") < 0 ||
        add_ext(x, NID_ext_key_usage, "serverAuth") < 0 || add_san(x, cn) < 0 ||
        !X509_sign(x, key, EVP_sha256()))
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

SSL_CTX *tls_ctx_self_signed(const char *common_name, struct pier_err *err)
{
    char why[256];
    if (!common_name || !*common_name || strlen(common_name) > 253) {
        err_set(err, PIER_EINVAL, "tls: self-signed certificate: bad name");
        return NULL;
    }
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = key ? make_self_signed(common_name, key) : NULL;
    SSL_CTX *ctx = NULL;
    if (!x)
        err_set(err, PIER_EINTERNAL, "tls: self-signed certificate for '%s': %s", common_name,
                ssl_reason(why, sizeof(why), "unknown error"));
    else
        ctx = ctx_with_cert(x, NULL, key, err);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

void tls_ctx_free(void *ctx)
{
    SSL_CTX_free(ctx);
}

void *tls_ctx_make(const char *cert_pem, const char *key_pem, struct pier_err *err)
{
    return tls_ctx_from_pem(cert_pem, key_pem, err);
}

/* --- the connection's BIO ---- */

/* Empties b after its bytes were all consumed, dropping a large buffer. */
static void buf_drained(struct buf *b)
{
    if (b->cap > TLS_BUF_KEEP)
        buf_free(b);
    else
        buf_reset(b);
}

static int conn_bio_write(BIO *b, const char *p, int n)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return 0;
    buf_append(&c->out, p, (size_t)n);
    return n;
}

static int conn_bio_read(BIO *b, char *p, int n)
{
    struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t avail = c->in.len - c->in_off;
    if (avail == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (n <= 0)
        return 0;
    size_t k = (size_t)n < avail ? (size_t)n : avail;
    memcpy(p, c->in.p + c->in_off, k);
    c->in_off += k;
    if (c->in_off == c->in.len) {
        buf_drained(&c->in);
        c->in_off = 0;
    }
    return (int)k;
}

static long conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct tls_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return (long)(c->in.len - c->in_off);
    case BIO_CTRL_WPENDING: return (long)(c->out.len - c->out_off);
    default: return 0;
    }
}

/* --- connections ---- */

struct tls_conn *tls_conn_new(SSL_CTX *ctx, tls_sni_fn sni, void *ud)
{
    pthread_once(&tls_once, tls_init_once); /* ctx came from here: a no-op */
    struct tls_conn *c = xcalloc(1, sizeof(*c));
    c->sni = sni;
    c->ud = ud;
    c->ssl = SSL_new(ctx);
    BIO *bio = c->ssl && conn_bio_method ? BIO_new(conn_bio_method) : NULL;
    if (!bio) {
        /* Only allocation fails here: abort as xmalloc does. */
        log_error("tls", "out of memory", "what=%s", c->ssl ? "BIO_new" : "SSL_new");
        abort();
    }
    BIO_set_data(bio, c);
    BIO_set_init(bio, 1);
    /* One BIO both ways: the SSL holds two references. */
    BIO_up_ref(bio);
    SSL_set0_rbio(c->ssl, bio);
    SSL_set0_wbio(c->ssl, bio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_accept_state(c->ssl);
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    /* SSL_free drops a session from the server cache unless the connection
     * was shut down: a client that just closed its socket did nothing wrong
     * (a fatal alert already removed the session). */
    if (!c->failed)
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c->ssl);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->early);
    free(c);
}

void tls_conn_feed(struct tls_conn *c, const char *in, size_t n)
{
    /* Nothing is read after an error or close_notify: keep nothing. */
    if (n == 0 || c->failed || c->closed)
        return;
    if (c->in_off > 0) {
        buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    buf_append(&c->in, in, n);
    c->starved = false;
}

/* Logs why OpenSSL failed (debug: clients that cannot speak TLS are
 * common) and clears the thread's error queue. */
static void log_failure(struct tls_conn *c, const char *msg)
{
    char why[256];
    ssl_reason(why, sizeof(why), "unknown error");
    log_debug("tls", msg, "reason=\"%s\" sni=%s", why, c->servername[0] ? c->servername : "-");
}

static int write_all(struct tls_conn *c, const char *p, size_t n)
{
    /* Room for all the records at once instead of growing per record. */
    size_t records = n / TLS_RECORD_MAX + 1;
    buf_grow(&c->out, n + records * TLS_RECORD_OVERHEAD);
    while (n > 0) {
        size_t w = 0;
        if (SSL_write_ex(c->ssl, p, n, &w) != 1) {
            log_failure(c, "tls write failed");
            return TLS_ERROR;
        }
        p += w;
        n -= w;
    }
    return 0;
}

static void send_close_notify(struct tls_conn *c)
{
    c->close_sent = true;
    if (SSL_shutdown(c->ssl) < 0)
        log_failure(c, "tls close_notify failed");
}

/* The handshake just finished: sends what was written before it. */
static int handshake_finished(struct tls_conn *c)
{
    c->done = true;
    int rc = 0;
    if (c->early.len > 0)
        rc = write_all(c, c->early.p, c->early.len);
    buf_free(&c->early);
    if (rc == 0 && c->close_wanted)
        send_close_notify(c);
    return rc;
}

ssize_t tls_conn_read(struct tls_conn *c, char *out, size_t cap)
{
    if (c->failed)
        return TLS_ERROR;
    if (c->closed)
        return TLS_CLOSED;
    if (c->starved)
        return TLS_WANT;
    /* SSL_get_error reads the thread's queue: anything left there by other
     * code would turn a WANT into an error. */
    ERR_clear_error();
    size_t got = 0;
    ssize_t status = TLS_WANT;
    while (got < cap) {
        size_t n = 0;
        int r = SSL_read_ex(c->ssl, out + got, cap - got, &n);
        /* Before any write: SSL_get_error reads the state the read left. */
        int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        if (!c->done && SSL_is_init_finished(c->ssl) && handshake_finished(c) < 0) {
            c->failed = true;
            status = TLS_ERROR;
            break;
        }
        if (r == 1) {
            got += n;
            continue;
        }
        if (e == SSL_ERROR_WANT_READ) {
            c->starved = true;
        } else if (e == SSL_ERROR_ZERO_RETURN) {
            c->closed = true;
            status = TLS_CLOSED;
        } else {
            log_failure(c, c->done ? "tls read failed" : "tls handshake failed");
            c->failed = true;
            status = TLS_ERROR;
        }
        break;
    }
    /* Plaintext first; a close or an error comes out of the next call. */
    return got > 0 ? (ssize_t)got : status;
}

int tls_conn_write(struct tls_conn *c, const char *p, size_t n)
{
    if (c->failed || c->close_sent || c->close_wanted)
        return TLS_ERROR;
    if (n == 0)
        return 0;
    if (!c->done) {
        buf_append(&c->early, p, n);
        return 0;
    }
    ERR_clear_error();
    return write_all(c, p, n);
}

void tls_conn_close_notify(struct tls_conn *c)
{
    if (c->failed || c->close_sent || c->close_wanted)
        return;
    if (!c->done) {
        c->close_wanted = true;
        return;
    }
    ERR_clear_error();
    send_close_notify(c);
}

size_t tls_conn_take(struct tls_conn *c, char *out, size_t cap)
{
    size_t avail = c->out.len - c->out_off;
    size_t n = cap < avail ? cap : avail;
    if (n == 0)
        return 0;
    memcpy(out, c->out.p + c->out_off, n);
    c->out_off += n;
    if (c->out_off == c->out.len) {
        buf_drained(&c->out);
        c->out_off = 0;
    } else if (c->out_off >= TLS_BUF_KEEP && c->out_off >= c->out.len - c->out_off) {
        /* Taken in small pieces while more was written: move the rest
         * down (it is at most as long as what was taken). */
        buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
    return n;
}

size_t tls_conn_pending(const struct tls_conn *c)
{
    return c->out.len - c->out_off;
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
    return c->done;
}

const char *tls_conn_servername(const struct tls_conn *c)
{
    return c->servername[0] ? c->servername : NULL;
}

bool tls_conn_resumed(const struct tls_conn *c)
{
    return SSL_session_reused(c->ssl) == 1;
}
