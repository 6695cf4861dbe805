/* api: the CLI's client of the controller, speaking exactly what a Flynn
 * client sends (FLYNN-CLIENT-CONTRACT.md section 3), so `pier` works
 * against pier's controller and a real Flynn one alike.
 *
 * Every request carries Basic auth with an empty user and the cluster key
 * as the password, and Content-Type: application/json. Success is exactly
 * 200. Errors come back as a negative code with a message ready for the
 * terminal:
 *   PIER_ENOTFOUND  a bare 404 (many commands treat it as a normal case)
 *   API_EAUTH       401: the key is wrong
 *   PIER_E*         Flynn's error JSON, mapped from its "code"; the
 *                   message is the server's "message"
 *   -ECONNREFUSED.. no controller answered (httpc's codes)
 *   HTTPC_ETLS      https: the certificate did not verify (against the
 *                   cluster's "ca_cert" when it has one, else the system's)
 * api_fail() prints such an error with the hint that fits it.
 *
 * Two kinds of exchange: JSON calls (api_get, api_send) and streams read
 * as they come (server-sent events: api_events_*; the log's concatenated
 * JSON: api_lines). The attach upgrade of `pier run` is lib/attachc.h. */
#ifndef PIER_CLI_API_H
#define PIER_CLI_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cli/cli.h"
#include "cli/config.h"
#include "lib/buf.h"
#include "lib/err.h"
#include "lib/httpc.h"

/* 401 from the controller: the key is not the cluster's. */
#define API_EAUTH (-1300)

/* One command's connection to the controller. Fields are read-only for
 * callers. */
struct api {
    struct config cfg;
    const char *url;     /* the controller URL as configured (borrowed from cfg or env) */
    const char *key;     /* the cluster key (borrowed likewise) */
    char *base;          /* url without trailing slashes: paths are appended to it */
    struct buf auth;     /* "Authorization: Basic ..." */
    struct httpc *h;     /* keep-alive pool */
    const char *app;     /* the app a command works on, after api_app(); borrowed */
    char *app_owned;     /* when the app came from the git remote */
    bool connected_ok;   /* some request got an answer (for hints) */
    const char *cluster; /* its name in the config (borrowed), NULL for $PIER_CONTROLLER_URL */
    char *ca_pem;        /* the CA https requests trust (config_ca), or NULL: the system's */
};

/* Loads the config and picks the cluster (name: -c, or NULL). On failure
 * the caller still calls api_close. */
int api_open(struct api *a, const char *cluster, struct pier_err *err);
void api_close(struct api *a);

/* api_open with c's cluster, then (need_app) api_app with app_flag, else
 * the global -a APP (c->app), in one go for a command: returns 0, or the
 * exit status of the failure it printed. The caller calls api_close either
 * way. */
int api_start(struct api *a, const struct cli *c, const char *app_flag, bool need_app);

/* Prints err as "pier: MESSAGE" with the hint its code calls for (a wrong
 * key, a controller that does not answer, ...). Returns 1. */
int api_fail(const struct api *a, const struct pier_err *err);

/* Appends to hint what fixes HTTPC_ETLS (the controller's certificate did
 * not verify) for a's cluster: giving it its CA (`pier cluster add ...
 * --ca FILE` or --tls-pin, PIER_CONTROLLER_CA). api_fail uses it. */
void api_tls_hint(const struct api *a, struct buf *hint);

/* Picks the app: flag (-a APP) if set, else $PIER_APP, else the last path
 * segment (without .git) of the git remote named "pier" in the current
 * directory. Sets a->app; a clear error naming -a APP when there is none. */
int api_app(struct api *a, const char *flag, struct pier_err *err);

/* Reads "-a APP", "-aAPP", "--app APP", "--app=APP" at argv[*i]: returns 1
 * and advances *i past the value when it was one, 0 when argv[*i] is
 * something else, -1 when the value is missing. */
int api_opt_app(int argc, char **argv, int *i, const char **app);

/* GET path (starting with "/"); *out gets the decoded JSON (new reference).
 * Retries while the server says "retry": true (every 100 ms, up to 10 s). */
int api_get(struct api *a, const char *path, json_t **out, struct pier_err *err);
/* method (POST, PUT, DELETE) with body (NULL: none) at path. *out (may be
 * NULL) gets the decoded answer, or NULL when the answer was not JSON. */
int api_send(struct api *a, const char *method, const char *path, const json_t *body, json_t **out,
             struct pier_err *err);

/* GET /apps/<a->app>: *out gets the app (new reference). Not found says
 * "no app named ... on this cluster". */
int api_app_get(struct api *a, json_t **out, struct pier_err *err);
/* Appends "/apps/<a->app>" (escaped) and then suffix to out. */
void api_app_path(const struct api *a, struct buf *out, const char *suffix);

/* Appends s to out %-encoded for a query value or a path segment. */
void api_escape(struct buf *out, const char *s);

/* --- server-sent events (contract 3.6) ------------------------------- */

struct api_events;
/* Opens GET path with Accept: text/event-stream and waits until the
 * response headers arrived (so a request sent afterwards cannot miss its
 * events). A non-200 answer is an error as for api_get. */
int api_events_open(struct api *a, const char *path, struct api_events **out, struct pier_err *err);
/* The next event (the JSON of one data: block, new reference), waiting up
 * to timeout_ms (-1: no limit). Returns 1 with *ev set, 0 when the time ran
 * out, or a negative error (an "event: error" block, a block that is not
 * JSON, a stream that could not be opened again for 30 s).
 * Robust against the path to the controller going away (a router or the
 * controller stopped, a proxy that stops forwarding): when the stream ends,
 * breaks or sends nothing for 45 s (the controller's keep-alive comes every
 * 30 s), it is opened again with Last-Event-Id (the newest event handed
 * out, or the newest matching one when it opened), saying "reconnecting to
 * the controller..." on stderr; and after a reconnect or a quiet while
 * (2 s, backing off to 16 s) the events after that id are read with a
 * plain GET of the same filter (since_id). No event is handed out twice,
 * none is skipped, so a caller waiting for one event needs nothing more. */
int api_events_next(struct api_events *e, int timeout_ms, json_t **ev, struct pier_err *err);
void api_events_close(struct api_events *e);

/* --- line-delimited JSON (contract 3.8, the log) ------------------------ */

/* Called with each JSON object of the answer, in order; return 0 to go on,
 * anything else to stop (api_lines then returns 0). The object is
 * borrowed for the call. */
typedef int (*api_line_fn)(json_t *obj, void *ud);
/* GET path (no Accept header) and hands every object to fn as it arrives,
 * until the server ends the answer. */
int api_lines(struct api *a, const char *path, api_line_fn fn, void *ud, struct pier_err *err);

/* --- small things the commands share ----------------------------------- */

/* Appends s with control characters replaced by '?': what the controller
 * says is outside input, and a terminal obeys escape sequences. */
void api_put_clean(struct buf *out, const char *s);
/* "5s ago", "3m ago", "2h ago", "4d ago" for an RFC 3339 time; "-" when it
 * cannot be read. */
void api_ago(struct buf *out, const char *rfc3339);
/* Sorts an array of objects by a string field (ascending, or descending
 * when desc); missing fields sort first. */
void api_sort_by(json_t *arr, const char *field, bool desc);
/* The --json output of every listing: v as the controller sent it (or as
 * the command built it from what it sent), indented by 2, then a newline;
 * one_line: compact on one line (a stream, one value a line). Flushes.
 * Returns 0, or 1 after saying so when stdout could not be written. */
int api_print_json(const json_t *v, bool one_line);

#endif
