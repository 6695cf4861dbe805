/* ca: the cluster CA and the router's certificate (ca.h), with OpenSSL 3.
 *
 * The CA is made only when STATE/ca/ca.crt is missing (its key is written
 * first, so a crash between the two leaves a key no certificate names,
 * replaced on the next run). A ca.crt that is there is the cluster's: it
 * is never replaced, and a missing or mismatched key is an error to fix by
 * hand, since clients pin it. */
#include "bootstrap/ca.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"

#define CA_DAYS 3650
#define SERVER_DAYS 730
#define RENEW_DAYS 30
#define DOMAIN_MAX 253
#define PEM_MAX (64 * 1024)

/* The last OpenSSL error, for messages. */
static const char *ossl_reason(void)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown error";
}

/* Whether domain is a DNS name of labels [A-Za-z0-9-], not starting or
 * ending with a dash. */
static bool domain_ok(const char *d)
{
    size_t n = strlen(d), label = 0;
    if (n == 0 || n > DOMAIN_MAX)
        return false;
    for (size_t i = 0; i <= n; i++) {
        char c = d[i];
        if (c == '.' || c == '\0') {
            if (label == 0 || d[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  (c == '-' && label > 0);
        if (!ok || ++label > 63)
            return false;
    }
    return true;
}

/* ---- files ---- */

/* Reads path (at most PEM_MAX bytes) into out. -ENOENT when absent. */
static int read_small(const char *path, struct buf *out, struct pier_err *err)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return -ENOENT;
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    }
    int rc = fs_read_fd(fd, out, PEM_MAX);
    if (rc < 0)
        return err_set(err, rc == -EFBIG ? PIER_EINVAL : rc, "%s: %s", path,
                       rc == -EFBIG ? "too large" : strerror(-rc));
    buf_puts(out, "");
    return 0;
}

/* Writes path atomically (temporary file, fsync, rename) with mode and,
 * when uid is not -1, that owner (set after the rename: until then the
 * file is root's, mode as given, which only narrows who reads it). */
static int write_owned(const char *path, const void *data, size_t len, mode_t mode, uid_t uid,
                       struct pier_err *err)
{
    int rc = fs_write_atomic(path, data, len, mode, true, err);
    if (rc == 0 && uid != (uid_t)-1 && lchown(path, uid, uid) < 0)
        rc = err_set(err, -errno, "%s: %s", path, strerror(errno));
    return rc;
}

/* Makes directory path when missing and sets its mode and owner (uid -1:
 * left as it is). */
static int make_dir(const char *path, mode_t mode, uid_t uid, struct pier_err *err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (lstat(path, &st) < 0)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return err_set(err, PIER_EINVAL, "%s: not a directory", path);
    if (uid != (uid_t)-1 && (st.st_uid != uid || st.st_gid != uid) && chown(path, uid, uid) < 0)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    if ((st.st_mode & 07777) != mode && chmod(path, mode) < 0)
        return err_set(err, -errno, "%s: %s", path, strerror(errno));
    return 0;
}

/* ---- PEM ---- */

static X509 *cert_from_pem(const struct buf *pem)
{
    BIO *bio = BIO_new_mem_buf(pem->p, (int)pem->len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return x;
}

static EVP_PKEY *key_from_pem(const struct buf *pem)
{
    BIO *bio = BIO_new_mem_buf(pem->p, (int)pem->len);
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return k;
}

/* Appends the PEM of x (or of key k when x is NULL) to out. */
static int to_pem(X509 *x, EVP_PKEY *k, struct buf *out)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int ok = bio && (x ? PEM_write_bio_X509(bio, x)
                       : PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL));
    char *p = NULL;
    long n = ok ? BIO_get_mem_data(bio, &p) : 0;
    if (ok && n > 0)
        buf_append(out, p, (size_t)n);
    BIO_free(bio);
    return ok && n > 0 ? 0 : -1;
}

/* ---- certificates ---- */

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    int ok = e && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* A new certificate for key with subject CN cn, valid for days, signed by
 * issuer_key (issuer NULL: self-signed). exts: NID, value pairs ending
 * with 0. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, long days, X509 *issuer, EVP_PKEY *issuer_key,
                       const int *nids, const char *const *values)
{
    X509 *x = X509_new();
    BIGNUM *serial = BN_new();
    bool ok = x && serial && X509_set_version(x, X509_VERSION_3) &&
              BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) &&
              BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, NULL) &&
              X509_set_pubkey(x, key);
    X509_NAME *name = ok ? X509_get_subject_name(x) : NULL;
    ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                          -1, 0);
    ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    for (size_t i = 0; ok && nids[i]; i++)
        ok = add_ext(x, issuer ? issuer : x, nids[i], values[i]) == 0;
    ok = ok && X509_sign(x, issuer_key, EVP_sha256()) > 0;
    BN_free(serial);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* "YYYY-MM-DD" of a time. */
static void day_of(const ASN1_TIME *t, char out[16])
{
    struct tm tm = {0};
    if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(out, 16, "%Y-%m-%d", &tm) == 0)
        snprintf(out, 16, "?");
}

/* Why the server certificate x (with key) must be made again, or NULL. */
static const char *server_stale(X509 *x, EVP_PKEY *key, X509 *ca, const char *domain)
{
    if (!x || !key)
        return "none yet";
    if (X509_check_private_key(x, key) != 1) {
        ERR_clear_error();
        return "its key does not match";
    }
    EVP_PKEY *ca_pub = X509_get0_pubkey(ca);
    if (!ca_pub || X509_verify(x, ca_pub) != 1) {
        ERR_clear_error();
        return "not signed by the cluster CA";
    }
    time_t soon = time(NULL) + (time_t)RENEW_DAYS * 86400;
    if (X509_cmp_time(X509_get0_notAfter(x), &soon) <= 0)
        return "expires within 30 days";
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = names ? sk_GENERAL_NAME_num(names) : 0;
    bool plain = false, wild = false, other = false;
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS) {
            other = true;
            continue;
        }
        const char *s = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
        size_t len = (size_t)ASN1_STRING_length(g->d.dNSName);
        if (len == strlen(domain) && strncasecmp(s, domain, len) == 0)
            plain = true;
        else if (len == strlen(domain) + 2 && strncmp(s, "*.", 2) == 0 &&
                 strncasecmp(s + 2, domain, len - 2) == 0)
            wild = true;
        else
            other = true;
    }
    GENERAL_NAMES_free(names);
    if (!plain || !wild || other)
        return "its names are not the domain's";
    return NULL;
}

/* ---- the two steps ---- */

struct paths {
    struct buf ca_dir, ca_crt, ca_key, tls_dir, srv_crt, srv_key, tls_ca;
};

static void paths_free(struct paths *p)
{
    buf_free(&p->ca_dir);
    buf_free(&p->ca_crt);
    buf_free(&p->ca_key);
    buf_free(&p->tls_dir);
    buf_free(&p->srv_crt);
    buf_free(&p->srv_key);
    buf_free(&p->tls_ca);
}

/* Loads or makes the CA: *ca, *ca_key and its PEM in ca_pem. */
static int ensure_ca(const struct paths *p, const char *domain, uid_t root, X509 **ca,
                     EVP_PKEY **ca_key, struct buf *ca_pem, struct pier_err *err)
{
    int rc = make_dir(p->ca_dir.p, 0700, root, err);
    if (rc < 0)
        return rc;
    cleanup_buf struct buf key_pem = BUF_INIT;
    rc = read_small(p->ca_crt.p, ca_pem, err);
    if (rc == 0) {
        if (!(*ca = cert_from_pem(ca_pem)))
            return err_set(err, PIER_EINVAL, "%s: not a PEM certificate (%s)", p->ca_crt.p,
                           ossl_reason());
        rc = read_small(p->ca_key.p, &key_pem, err);
        if (rc == -ENOENT)
            return err_set(err, PIER_EINVAL,
                           "%s is there but not its key %s: the CA cannot sign (restore the key, "
                           "or remove %s to make a new CA that clients must then trust again)",
                           p->ca_crt.p, p->ca_key.p, p->ca_dir.p);
        if (rc < 0)
            return rc;
        if (!(*ca_key = key_from_pem(&key_pem)) || X509_check_private_key(*ca, *ca_key) != 1)
            return err_set(err, PIER_EINVAL, "%s: not the key of %s (%s)", p->ca_key.p, p->ca_crt.p,
                           ossl_reason());
        if (chmod(p->ca_key.p, 0600) < 0)
            return err_set(err, -errno, "%s: %s", p->ca_key.p, strerror(errno));
        return 0;
    }
    if (rc != -ENOENT)
        return rc;
    /* A new CA: the key first (a crash before the certificate is written
     * leaves a key nothing names, replaced next time). */
    char cn[65];
    snprintf(cn, sizeof(cn), "pier CA %s", domain);
    static const int nids[] = {NID_basic_constraints, NID_key_usage, NID_subject_key_identifier, 0};
    static const char *const values[] = {"critical,CA:TRUE", "critical,keyCertSign,cRLSign",
                                         "hash"};
    if (!(*ca_key = EVP_EC_gen("P-256")))
        return err_set(err, PIER_EINVAL, "making the CA key: %s", ossl_reason());
    if (!(*ca = make_cert(*ca_key, cn, CA_DAYS, NULL, *ca_key, nids, values)))
        return err_set(err, PIER_EINVAL, "making the CA certificate: %s", ossl_reason());
    if (to_pem(NULL, *ca_key, &key_pem) < 0 || to_pem(*ca, NULL, ca_pem) < 0)
        return err_set(err, PIER_EINVAL, "encoding the CA: %s", ossl_reason());
    rc = write_owned(p->ca_key.p, key_pem.p, key_pem.len, 0600, root, err);
    if (rc == 0)
        rc = write_owned(p->ca_crt.p, ca_pem->p, ca_pem->len, 0644, root, err);
    if (rc < 0)
        return rc;
    char until[16];
    day_of(X509_get0_notAfter(*ca), until);
    printf("tls: made the cluster CA %s (%s, valid until %s)\n", p->ca_crt.p, cn, until);
    return 0;
}

/* Checks or makes the server certificate and the CA copy in tls/. */
static int ensure_server(const struct paths *p, const char *domain, uid_t job, X509 *ca,
                         EVP_PKEY *ca_key, const struct buf *ca_pem, struct pier_err *err)
{
    int rc = make_dir(p->tls_dir.p, 0755, job, err);
    cleanup_buf struct buf crt_pem = BUF_INIT;
    cleanup_buf struct buf key_pem = BUF_INIT;
    cleanup_buf struct buf old_ca = BUF_INIT;
    if (rc == 0 && (rc = read_small(p->tls_ca.p, &old_ca, err)) == -ENOENT)
        rc = 0;
    if (rc == 0 && (old_ca.len != ca_pem->len || memcmp(old_ca.p, ca_pem->p, ca_pem->len) != 0))
        rc = write_owned(p->tls_ca.p, ca_pem->p, ca_pem->len, 0644, job, err);
    if (rc < 0)
        return rc;
    X509 *x = NULL;
    EVP_PKEY *key = NULL;
    int r1 = read_small(p->srv_crt.p, &crt_pem, err);
    int r2 = read_small(p->srv_key.p, &key_pem, err);
    if ((r1 < 0 && r1 != -ENOENT) || (r2 < 0 && r2 != -ENOENT))
        return r1 < 0 && r1 != -ENOENT ? r1 : r2;
    if (r1 == 0)
        x = cert_from_pem(&crt_pem);
    if (r2 == 0)
        key = key_from_pem(&key_pem);
    ERR_clear_error();
    const char *why = server_stale(x, key, ca, domain);
    char until[16];
    if (!why) {
        day_of(X509_get0_notAfter(x), until);
        printf("tls: certificate for %s and *.%s valid until %s (%s)\n", domain, domain, until,
               p->srv_crt.p);
        /* The key stays the job user's, readable by it only. */
        /* By descriptor, never through a symlink: tls/ is the job user's,
         * and a job could have swapped the key for a link to any file. */
        int kfd = open(p->srv_key.p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (kfd < 0)
            rc = err_set(err, -errno, "%s: %s", p->srv_key.p, strerror(errno));
        if (rc == 0 && job != (uid_t)-1 && fchown(kfd, job, job) < 0)
            rc = err_set(err, -errno, "%s: %s", p->srv_key.p, strerror(errno));
        if (rc == 0 && fchmod(kfd, 0600) < 0)
            rc = err_set(err, -errno, "%s: %s", p->srv_key.p, strerror(errno));
        if (kfd >= 0)
            close(kfd);
        X509_free(x);
        EVP_PKEY_free(key);
        return rc;
    }
    X509_free(x);
    EVP_PKEY_free(key);
    x = NULL;
    buf_reset(&crt_pem);
    buf_reset(&key_pem);
    char cn[65], san[2 * DOMAIN_MAX + 32];
    snprintf(cn, sizeof(cn), "%s", strlen(domain) < sizeof(cn) ? domain : "pier router");
    snprintf(san, sizeof(san), "DNS:%s,DNS:*.%s", domain, domain);
    const int nids[] = {NID_basic_constraints,
                        NID_key_usage,
                        NID_ext_key_usage,
                        NID_subject_alt_name,
                        NID_subject_key_identifier,
                        NID_authority_key_identifier,
                        0};
    const char *const values[] = {
        "critical,CA:FALSE", "critical,digitalSignature", "serverAuth", san, "hash",
        "keyid:always"};
    key = EVP_EC_gen("P-256");
    if (key)
        x = make_cert(key, cn, SERVER_DAYS, ca, ca_key, nids, values);
    if (!x || to_pem(x, NULL, &crt_pem) < 0 || to_pem(NULL, key, &key_pem) < 0) {
        rc = err_set(err, PIER_EINVAL, "making the server certificate: %s", ossl_reason());
        X509_free(x);
        EVP_PKEY_free(key);
        return rc;
    }
    buf_append(&crt_pem, ca_pem->p, ca_pem->len);
    day_of(X509_get0_notAfter(x), until);
    X509_free(x);
    EVP_PKEY_free(key);
    /* The key first: a router reading between the two renames gets the old
     * certificate with the new key and fails once; the next reload is
     * whole. */
    rc = write_owned(p->srv_key.p, key_pem.p, key_pem.len, 0600, job, err);
    if (rc == 0)
        rc = write_owned(p->srv_crt.p, crt_pem.p, crt_pem.len, 0644, job, err);
    if (rc < 0)
        return rc;
    printf("tls: certificate for %s and *.%s valid until %s, made (%s) in %s\n", domain, domain,
           until, why, p->srv_crt.p);
    return 0;
}

int ca_ensure(const char *state, const char *domain, unsigned job_uid, char **ca_pem,
              struct pier_err *err)
{
    *ca_pem = NULL;
    if (!domain_ok(domain))
        return err_set(err, PIER_EINVAL,
                       "domain \"%.80s\": want a DNS name (labels of a-z, 0-9 and inner dashes)",
                       domain);
    bool root = geteuid() == 0;
    struct paths p = {0};
    buf_printf(&p.ca_dir, "%s/ca", state);
    buf_printf(&p.ca_crt, "%s/ca/ca.crt", state);
    buf_printf(&p.ca_key, "%s/ca/ca.key", state);
    buf_printf(&p.tls_dir, "%s/tls", state);
    buf_printf(&p.srv_crt, "%s/tls/server.crt", state);
    buf_printf(&p.srv_key, "%s/tls/server.key", state);
    buf_printf(&p.tls_ca, "%s/tls/ca.crt", state);
    X509 *ca = NULL;
    EVP_PKEY *ca_key = NULL;
    struct buf pem = BUF_INIT;
    int rc = ensure_ca(&p, domain, root ? 0 : (uid_t)-1, &ca, &ca_key, &pem, err);
    if (rc == 0)
        rc = ensure_server(&p, domain, root ? (uid_t)job_uid : (uid_t)-1, ca, ca_key, &pem, err);
    fflush(stdout);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    paths_free(&p);
    if (rc < 0) {
        buf_free(&pem);
        return rc;
    }
    *ca_pem = buf_detach(&pem);
    return 0;
}
