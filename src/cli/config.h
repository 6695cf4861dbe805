/* config: the CLI's list of clusters (name, controller URL, key), kept in
 * $PIER_CONFIG, else $XDG_CONFIG_HOME/pier/config.json, else
 * ~/.config/pier/config.json, as
 *   {"default":"prod","clusters":[{"name":"prod","url":"https://...","key":"...",
 *                                  "git_url":"https://git.prod..."}]}
 * ("git_url", where `git push` goes, is optional; so are "ca_cert", the PEM
 * of the cluster's CA, which alone is trusted for its https URLs then, and
 * "tls_pin", the base64 SHA-256 of that CA certificate's DER)
 * Written whole to a temporary file and renamed over the old one, mode 0600
 * (it holds keys), so a crash never leaves half a file. */
#ifndef PIER_CLI_CONFIG_H
#define PIER_CLI_CONFIG_H

#include <jansson.h>
#include <stdbool.h>

#include "lib/buf.h"
#include "lib/err.h"

struct config {
    char *path;   /* where it is read from and written to */
    json_t *root; /* the whole document (owned) */
};

/* Loads the config; a missing file is an empty config. A file that is not
 * valid is PIER_EINVAL with its path and the problem. */
int config_load(struct config *c, struct pier_err *err);
/* Whether n is a good cluster name: 1-63 letters, digits, '-', '_', '.'. */
bool config_name_ok(const char *n);
/* Writes it back atomically. */
int config_save(const struct config *c, struct pier_err *err);
void config_free(struct config *c);

/* The clusters array (borrowed). */
json_t *config_clusters(const struct config *c);
/* The cluster called name (borrowed), or NULL. */
json_t *config_cluster(const struct config *c, const char *name);
/* The default cluster's name (borrowed), or NULL. */
const char *config_default(const struct config *c);

/* Picks the cluster a command talks to: name if given (else $PIER_CLUSTER,
 * else the default). $PIER_CONTROLLER_URL (with $PIER_CONTROLLER_KEY, which
 * goes with it and with nothing else), when set and no name is given,
 * overrides the file. *url and *key are borrowed from c or the
 * environment. A helpful PIER_ENOTFOUND when no cluster is configured. */
int config_pick(const struct config *c, const char *name, const char **url, const char **key,
                struct pier_err *err);

/* The git URL of the cluster config_pick picks for name: $PIER_GIT_URL when
 * set, else the cluster's "git_url"; NULL when there is none (also when
 * the cluster comes from $PIER_CONTROLLER_URL and $PIER_GIT_URL is unset,
 * or no cluster can be picked). Borrowed from c or the environment. */
const char *config_git_url(const struct config *c, const char *name);

/* The name of the cluster config_pick picks for name (borrowed), or NULL
 * when it is $PIER_CONTROLLER_URL's or none can be picked. */
const char *config_pick_name(const struct config *c, const char *name);

/* The CA that https requests to the cluster config_pick picks for name
 * verify against: its "ca_cert", or for $PIER_CONTROLLER_URL the contents
 * of the file $PIER_CONTROLLER_CA names. *pem gets a new string, or NULL
 * when there is none (the system CAs apply). An unreadable
 * $PIER_CONTROLLER_CA file is an error naming it. */
int config_ca(const struct config *c, const char *name, char **pem, struct pier_err *err);

/* Checks that pem holds one or more X.509 certificates in PEM armour and
 * nothing else, all of which parse. *n (optional) gets how many; pin
 * (optional) gets the pin of the first: the base64 SHA-256 of its DER.
 * PIER_EINVAL with the problem otherwise; what names pem in it. */
int config_pem_check(const char *pem, const char *what, size_t *n, struct buf *pin,
                     struct pier_err *err);

/* Appends the pin of a certificate given as DER (base64 SHA-256). */
void config_der_pin(const unsigned char *der, size_t len, struct buf *pin);

/* The file git verifies the cluster's https git server with (http.<url>.
 * sslCAInfo) for the cluster config_pick picks for name: for a cluster of
 * the file, <config dir>/<name>-ca.pem, written (0644) when it is missing
 * or differs from the cluster's CA; for $PIER_CONTROLLER_URL, the file
 * $PIER_CONTROLLER_CA names (made absolute). path gets it; 0 with path
 * empty when the cluster has no CA. */
int config_ca_file(const struct config *c, const char *name, struct buf *path,
                   struct pier_err *err);

#endif
