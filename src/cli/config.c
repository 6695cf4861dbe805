#include "cli/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/fs.h"
#include "lib/jsonx.h"

static char *config_path(void)
{
    const char *p = getenv("PIER_CONFIG");
    if (p && *p)
        return xstrdup(p);
    struct buf b = BUF_INIT;
    const char *xdg = getenv("XDG_CONFIG_HOME");
    if (xdg && *xdg)
        buf_printf(&b, "%s/pier/config.json", xdg);
    else
        buf_printf(&b, "%s/.config/pier/config.json", getenv("HOME") ? getenv("HOME") : ".");
    return buf_detach(&b);
}

int config_load(struct config *c, struct pier_err *err)
{
    memset(c, 0, sizeof(*c));
    c->path = config_path();
    FILE *f = fopen(c->path, "r");
    if (!f) {
        if (errno != ENOENT)
            return err_set(err, -errno, "cannot read %s: %s", c->path, strerror(errno));
        c->root = json_pack("{s:[]}", "clusters");
        return 0;
    }
    json_error_t je;
    c->root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!c->root || !json_is_object(c->root) ||
        !json_is_array(json_object_get(c->root, "clusters")))
        return err_set(err, PIER_EINVAL, "%s is not a valid pier config (%s); fix or remove it",
                       c->path, c->root ? "needs a \"clusters\" array" : je.text);
    return 0;
}

static int mkdirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = mkdir(path, 0700);
        *p = '/';
        if (rc < 0 && errno != EEXIST)
            return -errno;
    }
    return 0;
}

int config_save(const struct config *c, struct pier_err *err)
{
    cleanup_free char *dir = xstrdup(c->path);
    int rc = mkdirs(dir);
    if (rc < 0)
        return err_set(err, rc, "cannot create the folder of %s: %s", c->path, strerror(-rc));
    cleanup_buf struct buf text = BUF_INIT;
    jsonx_dump(&text, c->root);
    buf_putc(&text, '\n');
    return fs_write_atomic(c->path, text.p, text.len, 0600, true, err);
}

void config_free(struct config *c)
{
    free(c->path);
    json_decref(c->root);
    memset(c, 0, sizeof(*c));
}

json_t *config_clusters(const struct config *c)
{
    return json_object_get(c->root, "clusters");
}

json_t *config_cluster(const struct config *c, const char *name)
{
    size_t i;
    json_t *cl;
    json_array_foreach(config_clusters(c), i, cl)
    {
        const char *n = json_string_value(json_object_get(cl, "name"));
        if (n && strcmp(n, name) == 0)
            return cl;
    }
    return NULL;
}

const char *config_default(const struct config *c)
{
    return json_string_value(json_object_get(c->root, "default"));
}

/* The cluster name picks from the file (*cl), or *cl = NULL when
 * $PIER_CONTROLLER_URL stands in for the file. */
static int pick(const struct config *c, const char *name, json_t **cl, struct pier_err *err)
{
    const char *env_url = getenv("PIER_CONTROLLER_URL");
    *cl = NULL;
    if (env_url && *env_url && !name)
        return 0;
    if (!name)
        name = getenv("PIER_CLUSTER");
    if (!name || !*name)
        name = config_default(c);
    if (!name) {
        if (json_array_size(config_clusters(c)) == 0)
            return err_set(err, PIER_ENOTFOUND,
                           "no cluster is configured; add one with 'pier cluster add NAME URL "
                           "KEY'");
        return err_set(err, PIER_ENOTFOUND,
                       "no default cluster; pick one with 'pier cluster default NAME' or -c NAME");
    }
    *cl = config_cluster(c, name);
    if (!*cl)
        return err_set(err, PIER_ENOTFOUND,
                       "no cluster named \"%s\" in %s; 'pier cluster' lists them", name, c->path);
    return 0;
}

int config_pick(const struct config *c, const char *name, const char **url, const char **key,
                struct pier_err *err)
{
    json_t *cl;
    int rc = pick(c, name, &cl, err);
    if (rc < 0)
        return rc;
    if (!cl) {
        const char *env_key = getenv("PIER_CONTROLLER_KEY");
        *url = getenv("PIER_CONTROLLER_URL");
        *key = env_key ? env_key : "";
        return 0;
    }
    *url = json_string_value(json_object_get(cl, "url"));
    *key = json_string_value(json_object_get(cl, "key"));
    if (!*url)
        return err_set(err, PIER_EINVAL, "cluster \"%s\" in %s has no url",
                       json_string_value(json_object_get(cl, "name")), c->path);
    if (!*key)
        *key = "";
    /* PIER_CONTROLLER_KEY belongs to PIER_CONTROLLER_URL only: applied to
     * a cluster from the file, it could send one cluster's key to another. */
    return 0;
}

const char *config_git_url(const struct config *c, const char *name)
{
    const char *env = getenv("PIER_GIT_URL");
    if (env && *env)
        return env;
    json_t *cl;
    if (pick(c, name, &cl, NULL) < 0 || !cl)
        return NULL;
    const char *u = json_string_value(json_object_get(cl, "git_url"));
    return u && *u ? u : NULL;
}

bool config_name_ok(const char *n)
{
    if (!*n || strlen(n) > 63)
        return false;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

const char *config_pick_name(const struct config *c, const char *name)
{
    json_t *cl;
    if (pick(c, name, &cl, NULL) < 0 || !cl)
        return NULL;
    return json_string_value(json_object_get(cl, "name"));
}

#define CA_FILE_MAX (1 << 20)

int config_ca(const struct config *c, const char *name, char **pem, struct pier_err *err)
{
    *pem = NULL;
    json_t *cl;
    if (pick(c, name, &cl, NULL) < 0)
        return 0; /* config_pick reports it */
    if (cl) {
        const char *ca = json_string_value(json_object_get(cl, "ca_cert"));
        if (ca && *ca)
            *pem = xstrdup(ca);
        return 0;
    }
    const char *path = getenv("PIER_CONTROLLER_CA");
    if (!path || !*path)
        return 0;
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "cannot read PIER_CONTROLLER_CA %s: %s", path, strerror(errno));
    cleanup_buf struct buf b = BUF_INIT;
    int rc = fs_read_fd(fd, &b, CA_FILE_MAX);
    if (rc < 0)
        return err_set(err, rc, "cannot read PIER_CONTROLLER_CA %s: %s", path,
                       rc == -EFBIG ? "too big for a CA certificate" : strerror(-rc));
    *pem = buf_detach(&b);
    return 0;
}

void config_der_pin(const unsigned char *der, size_t len, struct buf *pin)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(der, len, md, &n, EVP_sha256(), NULL);
    base64_encode(pin, md, n);
}

int config_pem_check(const char *pem, const char *what, size_t *n, struct buf *pin,
                     struct pier_err *err)
{
    if (strstr(pem, "PRIVATE KEY-----"))
        return err_set(err, PIER_EINVAL,
                       "%s holds a private key: give the CA's certificate (ca.crt), which is "
                       "public, never a key",
                       what);
    BIO *bio = BIO_new_mem_buf(pem, (int)strlen(pem));
    if (!bio)
        abort();
    size_t count = 0;
    int rc = 0;
    ERR_clear_error();
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!x) {
            unsigned long e = ERR_peek_last_error();
            /* The end of the input: no further "-----BEGIN". */
            if (count > 0 && ERR_GET_LIB(e) == ERR_LIB_PEM &&
                ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
                break;
            char why[256];
            ERR_error_string_n(e, why, sizeof(why));
            rc = err_set(err, PIER_EINVAL, "%s: %s", what,
                         count == 0 && ERR_GET_REASON(e) == PEM_R_NO_START_LINE
                             ? "no PEM certificate in it (-----BEGIN CERTIFICATE-----)"
                             : why);
            break;
        }
        if (count == 0 && pin) {
            unsigned char *der = NULL;
            int len = i2d_X509(x, &der);
            if (len > 0)
                config_der_pin(der, (size_t)len, pin);
            OPENSSL_free(der);
        }
        X509_free(x);
        count++;
    }
    ERR_clear_error();
    BIO_free(bio);
    if (n)
        *n = count;
    return rc;
}

/* The directory of the config file, without the trailing '/'. */
static void config_dir(const struct config *c, struct buf *out)
{
    const char *slash = strrchr(c->path, '/');
    if (!slash)
        buf_puts(out, ".");
    else if (slash == c->path)
        buf_puts(out, "/");
    else
        buf_append(out, c->path, (size_t)(slash - c->path));
}

int config_ca_file(const struct config *c, const char *name, struct buf *path, struct pier_err *err)
{
    buf_reset(path);
    json_t *cl;
    if (pick(c, name, &cl, NULL) < 0)
        return 0;
    if (!cl) {
        const char *env = getenv("PIER_CONTROLLER_CA");
        if (!env || !*env)
            return 0;
        if (env[0] != '/') {
            char cwd[4096];
            if (!getcwd(cwd, sizeof(cwd)))
                return err_set(err, -errno, "cannot tell the current directory: %s",
                               strerror(errno));
            buf_printf(path, "%s/", cwd);
        }
        buf_puts(path, env);
        return 0;
    }
    const char *ca = json_string_value(json_object_get(cl, "ca_cert"));
    const char *cname = json_string_value(json_object_get(cl, "name"));
    if (!ca || !*ca || !cname)
        return 0;
    cleanup_buf struct buf dir = BUF_INIT;
    config_dir(c, &dir);
    buf_printf(path, "%s/%s-ca.pem", dir.p, cname);
    /* Rewritten only when it differs: git may be reading it. */
    FILE *f = fopen(path->p, "re");
    if (f) {
        cleanup_buf struct buf old = BUF_INIT;
        int rc = fs_read_fd(fileno(f), &old, CA_FILE_MAX);
        fclose(f);
        if (rc == 0 && old.len == strlen(ca) && memcmp(old.p, ca, old.len) == 0)
            return 0;
    }
    cleanup_free char *d = xstrdup(path->p);
    int rc = mkdirs(d);
    if (rc < 0)
        return err_set(err, rc, "cannot create the folder of %s: %s", path->p, strerror(-rc));
    return fs_write_atomic(path->p, ca, strlen(ca), 0644, false, err);
}
