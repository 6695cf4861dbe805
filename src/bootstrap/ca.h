/* ca: the cluster CA and the router's certificate (docs/bootstrap.md
 * "TLS"), made by `pierd bootstrap` before the apps are planned.
 *
 *   STATE/ca/ca.crt, ca.key   the CA: EC P-256, CN "pier CA <domain>", 10
 *                             years; made once, never replaced (the
 *                             directory 0700 and the key 0600, root's)
 *   STATE/tls/server.crt      the router's certificate for DOMAIN and
 *                             *.DOMAIN (2 years, serverAuth), the CA
 *                             appended as its chain
 *   STATE/tls/server.key      its key, 0600, owned by the job user
 *   STATE/tls/ca.crt          a copy of the CA certificate
 *
 * The server certificate is made again when it is missing, within 30 days
 * of its expiry, not signed by the CA, or its names are not the domain's.
 * Every file is written through a temporary file and a rename. */
#ifndef PIER_BOOTSTRAP_CA_H
#define PIER_BOOTSTRAP_CA_H

#include "lib/err.h"

/* Brings STATE/ca and STATE/tls (state: an absolute directory) to the
 * above for domain, printing one progress line for the CA when it is made
 * and one for the certificate. The files under tls/ are given to job_uid
 * when run as root. *ca_pem gets the CA certificate in PEM (free()).
 * PIER_EINVAL for a bad domain or a CA that cannot be used (a ca.crt
 * without its key, a key that does not match); -errno for files. */
int ca_ensure(const char *state, const char *domain, unsigned job_uid, char **ca_pem,
              struct pier_err *err);

#endif
