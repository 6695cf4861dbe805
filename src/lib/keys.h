/* keys: the cluster's key space (DESIGN.md section 2), in one place.
 *
 * Every record is a JSON document. A prefix ends in '/', so a prefix list
 * never matches a longer sibling ("/pier/v1/apps/" is not "/pier/v1/apps-x").
 * Ids are UUIDs (uuid.h) unless said otherwise. */
#ifndef PIER_KEYS_H
#define PIER_KEYS_H

#include <stdbool.h>
#include <string.h>

#define KEYS_ROOT "/pier/v1/"
#define KEYS_APPS "/pier/v1/apps/"                     /* <app id>: app */
#define KEYS_APP_NAMES "/pier/v1/app-names/"           /* <app name>: {"id"}: names are unique */
#define KEYS_ARTIFACTS "/pier/v1/artifacts/"           /* <id>: artifact (immutable) */
#define KEYS_RELEASES "/pier/v1/releases/"             /* <id>: release (immutable) */
#define KEYS_FORMATIONS "/pier/v1/formations/"         /* <app id>/<release id>: counts */
#define KEYS_JOBS "/pier/v1/jobs/"                     /* <host id>-<uuid>: docs/host.md */
#define KEYS_HOSTS "/pier/v1/hosts/"                   /* <host id>: host record, under its lease */
#define KEYS_PLACEMENTS "/pier/v1/placements/"         /* <host id>: the schedulers' ledger */
#define KEYS_ROUTES "/pier/v1/routes/"                 /* <route id>: router route */
#define KEYS_KEYS "/pier/v1/keys/"                     /* <fingerprint>: SSH / API keys */
#define KEYS_DEPLOYMENTS "/pier/v1/deployments/"       /* <id>: deployment and its progress */
#define KEYS_SCALE_REQUESTS "/pier/v1/scale-requests/" /* <id>: scale request */
#define KEYS_EVENTS "/pier/v1/events/"                 /* <id, 20 digits>: event */
#define KEYS_EVENT_HEAD "/pier/v1/event-head"          /* {"id","rev"}: the last event recorded */
#define KEYS_CLUSTER "/pier/v1/cluster" /* {"domain","ca_cert"}: from the bootstrap */
#define KEYS_GITRECEIVE_LOCKS "/pier/v1/gitreceive/locks/" /* <app id>: a push under way */

#define KEYS_APP_NAME_MAX 100

/* Whether s is an app name: Flynn's rule ^[a-z\d]+(-[a-z\d]+)*$, 1 to
 * KEYS_APP_NAME_MAX characters (an app id, a lower-case UUID, passes too). */
static inline bool keys_app_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > KEYS_APP_NAME_MAX || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        if (!alnum && !(ch == '-' && s[i + 1] != '-'))
            return false;
    }
    return true;
}

#endif
