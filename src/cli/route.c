/* pier route, route add, route update, route remove: the app's router
 * routes, through the controller's /apps/:app/routes (contract section 4,
 * `flynn route`: the same subcommands, flags and ids "http/<id>").
 *
 * Everything that can be checked without the cluster (flags, ports, the
 * TLS files) is checked before the first request, so wrong input changes
 * nothing. An update reads the route, changes the fields the flags name
 * and sends the whole route back, as Flynn's client does. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/uuid.h"

/* A PEM certificate chain or key larger than this is not one. */
#define PEM_MAX (1024 * 1024)

enum sub { SUB_LIST, SUB_ADD_HTTP, SUB_ADD_TCP, SUB_UPDATE, SUB_REMOVE };

/* Which subcommands take an option (bit 1 << enum sub). */
#define W_LIST (1 << SUB_LIST)
#define W_HTTP (1 << SUB_ADD_HTTP)
#define W_TCP (1 << SUB_ADD_TCP)
#define W_UPD (1 << SUB_UPDATE)

enum opt_id {
    O_SERVICE,
    O_PATH,
    O_PORT,
    O_CERT,
    O_KEY,
    O_STICKY,
    O_NO_STICKY,
    O_LEADER,
    O_NO_LEADER,
    O_DRAIN,
    O_NO_DRAIN,
    O_NO_KEEPALIVE,
    O_KEEPALIVE,
    O_NO_TLS,
    O_JSON,
    O_COUNT,
};

struct opt {
    const char *name; /* the long form, without "--" */
    char letter;      /* Flynn's short form, or 0 */
    bool value;       /* takes a value */
    int where;        /* W_* */
};

static const struct opt opts[O_COUNT] = {
    [O_SERVICE] = {"service", 's', true, W_HTTP | W_TCP | W_UPD},
    [O_PATH] = {"path", 0, true, W_HTTP},
    [O_PORT] = {"port", 'p', true, W_TCP},
    [O_CERT] = {"tls-cert", 'c', true, W_HTTP | W_UPD},
    [O_KEY] = {"tls-key", 'k', true, W_HTTP | W_UPD},
    [O_STICKY] = {"sticky", 0, false, W_HTTP | W_UPD},
    [O_NO_STICKY] = {"no-sticky", 0, false, W_UPD},
    [O_LEADER] = {"leader", 0, false, W_HTTP | W_TCP | W_UPD},
    [O_NO_LEADER] = {"no-leader", 0, false, W_UPD},
    [O_DRAIN] = {"drain-backends", 0, false, W_UPD},
    [O_NO_DRAIN] = {"no-drain-backends", 0, false, W_HTTP | W_TCP | W_UPD},
    [O_NO_KEEPALIVE] = {"disable-keep-alives", 0, false, W_HTTP | W_TCP | W_UPD},
    [O_KEEPALIVE] = {"enable-keep-alives", 0, false, W_UPD},
    [O_NO_TLS] = {"no-tls", 0, false, W_UPD},
    [O_JSON] = {"json", 0, false, W_LIST},
};

/* The flags that only an http route has (checked against an updated
 * route's type once it is known). */
static const int http_only[] = {O_STICKY, O_NO_STICKY, O_CERT, O_KEY, O_NO_TLS};

struct args {
    const char *app;
    enum sub sub;
    const char *name;  /* "route add http", ... for messages */
    bool set[O_COUNT]; /* which options were given */
    const char *val[O_COUNT];
    const char *pos; /* DOMAIN[/PATH] or ID */
    long port;
    struct buf domain, path; /* add http: the target as the controller stores it */
    struct buf cert, key;    /* the TLS files' contents */
};

static void args_clear(struct args *g)
{
    buf_free(&g->domain);
    buf_free(&g->path);
    buf_free(&g->cert);
    buf_free(&g->key);
}

/* ---- reading the command line ---- */

/* The option argv[*i] names (advancing *i past a separate value), or a
 * usage error's status. */
static int read_opt(struct args *g, int argc, char **argv, int *i)
{
    const char *s = argv[*i];
    const char *inline_val = NULL;
    int id = -1;
    for (int k = 0; k < O_COUNT && id < 0; k++) {
        size_t n = strlen(opts[k].name);
        if (s[1] == '-' && strncmp(s + 2, opts[k].name, n) == 0 &&
            (s[2 + n] == '\0' || (s[2 + n] == '=' && opts[k].value))) {
            id = k;
            inline_val = s[2 + n] == '=' ? s + 3 + n : NULL;
        } else if (s[1] != '-' && opts[k].letter && s[1] == opts[k].letter) {
            id = k;
            inline_val = s[2] ? s + 2 : NULL;
        }
    }
    if (id < 0)
        return ui_usage("route", "unknown option \"%s\" for route", s);
    if (g->set[id] && opts[id].value)
        return ui_usage("route", "--%s given twice", opts[id].name);
    g->set[id] = true;
    if (opts[id].value) {
        if (!inline_val && *i + 1 >= argc)
            return ui_usage("route", "%s needs a value", s);
        g->val[id] = inline_val ? inline_val : argv[++*i];
    }
    return 0;
}

/* Picks the subcommand from the words in order: [list] | add http|tcp |
 * update | remove, then at most one more word (the domain or id). */
static int read_words(struct args *g, char **words, int n)
{
    int w = 0;
    g->sub = SUB_LIST;
    g->name = "route";
    if (n > 0 && strcmp(words[0], "list") == 0) {
        w = 1;
    } else if (n > 0 && strcmp(words[0], "add") == 0) {
        if (n < 2)
            return ui_usage("route", "route add needs a type: http or tcp");
        if (strcmp(words[1], "http") == 0)
            g->sub = SUB_ADD_HTTP, g->name = "route add http";
        else if (strcmp(words[1], "tcp") == 0)
            g->sub = SUB_ADD_TCP, g->name = "route add tcp";
        else
            return ui_usage("route", "unknown route type \"%s\" (http, tcp)", words[1]);
        w = 2;
    } else if (n > 0 && strcmp(words[0], "update") == 0) {
        g->sub = SUB_UPDATE, g->name = "route update", w = 1;
    } else if (n > 0 && strcmp(words[0], "remove") == 0) {
        g->sub = SUB_REMOVE, g->name = "route remove", w = 1;
    } else if (n > 0) {
        return ui_usage("route", "unknown route subcommand \"%s\" (list, add, update, remove)",
                        words[0]);
    }
    bool wants = g->sub == SUB_ADD_HTTP || g->sub == SUB_UPDATE || g->sub == SUB_REMOVE;
    if (wants && w < n)
        g->pos = words[w++];
    if (wants && !g->pos)
        return ui_usage("route", "%s needs %s", g->name,
                        g->sub == SUB_ADD_HTTP ? "a DOMAIN" : "the route's ID (see 'pier route')");
    if (w < n)
        return ui_usage("route", "unexpected argument \"%s\" for %s", words[w], g->name);
    return 0;
}

static int parse_port(struct args *g)
{
    const char *s = g->val[O_PORT];
    char *end = NULL;
    errno = 0;
    long v = s && isdigit((unsigned char)*s) ? strtol(s, &end, 10) : -1;
    if (v < 0 || *end || errno || v > 65535)
        return ui_usage("route", "--port needs a port number from 0 to 65535, not \"%s\"", s);
    g->port = v;
    return 0;
}

/* DOMAIN[/PATH] and --path into the domain (lower case) and path (ending
 * in '/') the controller will store, for messages. */
static int http_target(struct args *g)
{
    const char *d = g->pos, *slash = strchr(d, '/');
    if (strstr(d, "://"))
        return ui_usage("route",
                        "give the domain without a scheme (\"%s\" has one); --tls-cert and "
                        "--tls-key make a route https",
                        d);
    if (slash && g->set[O_PATH])
        return ui_usage("route", "give the path once: in DOMAIN/PATH or with --path");
    size_t dn = slash ? (size_t)(slash - d) : strlen(d);
    if (dn == 0)
        return ui_usage("route", "route add http needs a DOMAIN (\"%s\" has none)", d);
    for (size_t i = 0; i < dn; i++)
        buf_putc(&g->domain, (char)tolower((unsigned char)d[i]));
    const char *p = slash ? slash : g->set[O_PATH] ? g->val[O_PATH] : "/";
    if (p[0] != '/')
        return ui_usage("route", "--path must start with /, not \"%s\"", p);
    buf_puts(&g->path, p);
    if (g->path.p[g->path.len - 1] != '/')
        buf_putc(&g->path, '/');
    return 0;
}

/* Reads a TLS file ("-": stdin) into out. Returns 0 or the failure. */
static int read_pem(const char *what, const char *file, struct buf *out)
{
    bool in = strcmp(file, "-") == 0;
    FILE *f = in ? stdin : fopen(file, "r");
    if (!f)
        return ui_fail(NULL, "cannot read the TLS %s file \"%s\": %s", what, file, strerror(errno));
    char chunk[16384];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && out->len <= PEM_MAX)
        buf_append(out, chunk, n);
    int bad = ferror(f) ? errno : 0;
    if (!in)
        fclose(f);
    if (bad)
        return ui_fail(NULL, "cannot read the TLS %s file \"%s\": %s", what, file, strerror(bad));
    if (out->len > PEM_MAX)
        return ui_fail(NULL, "the TLS %s file \"%s\" is larger than %d KiB: not PEM", what, file,
                       PEM_MAX / 1024);
    if (out->len == 0 || memchr(out->p, '\0', out->len))
        return ui_fail("give a PEM file (-----BEGIN ...)", "the TLS %s file \"%s\" is %s", what,
                       file, out->len ? "not text" : "empty");
    return 0;
}

static int check_pairs(const struct args *g)
{
    static const int pairs[][2] = {{O_STICKY, O_NO_STICKY}, {O_LEADER, O_NO_LEADER},
                                   {O_DRAIN, O_NO_DRAIN},   {O_KEEPALIVE, O_NO_KEEPALIVE},
                                   {O_NO_TLS, O_CERT},      {O_NO_TLS, O_KEY}};
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        if (g->set[pairs[i][0]] && g->set[pairs[i][1]])
            return ui_usage("route", "give --%s or --%s, not both", opts[pairs[i][0]].name,
                            opts[pairs[i][1]].name);
    if (g->set[O_CERT] != g->set[O_KEY])
        return ui_usage("route", "--tls-cert and --tls-key go together: a certificate needs "
                                 "its key");
    if (g->set[O_CERT] && strcmp(g->val[O_CERT], "-") == 0 && strcmp(g->val[O_KEY], "-") == 0)
        return ui_usage("route", "only one of --tls-cert and --tls-key can be read from stdin");
    if (g->set[O_SERVICE] && !*g->val[O_SERVICE])
        return ui_usage("route", "--service needs a service name");
    return 0;
}

/* What the options mean for the subcommand, checked before any request. */
static int check_args(struct args *g)
{
    for (int k = 0; k < O_COUNT; k++) {
        if (!g->set[k] || (opts[k].where & (1 << g->sub)))
            continue;
        if (g->sub == SUB_UPDATE && (k == O_PORT || k == O_PATH))
            return ui_usage("route",
                            "a route's %s cannot change: remove the route and add "
                            "another",
                            opts[k].name);
        return ui_usage("route", "--%s does not apply to %s", opts[k].name, g->name);
    }
    int rc = check_pairs(g);
    if (rc == 0 && g->set[O_PORT])
        rc = parse_port(g);
    if (rc == 0 && g->sub == SUB_ADD_HTTP)
        rc = http_target(g);
    if (rc == 0 && g->sub == SUB_UPDATE) {
        bool any = false;
        for (int k = 0; k < O_COUNT; k++)
            any = any || g->set[k];
        if (!any)
            return ui_usage("route", "route update needs something to change: --service, "
                                     "--[no-]sticky, --[no-]leader, --tls-cert/--tls-key or "
                                     "--no-tls");
    }
    if (rc == 0 && g->set[O_CERT])
        rc = read_pem("certificate", g->val[O_CERT], &g->cert);
    if (rc == 0 && g->set[O_KEY])
        rc = read_pem("key", g->val[O_KEY], &g->key);
    return rc;
}

static int parse(struct cli *c, struct args *g)
{
    cleanup_free char **words = xcalloc((size_t)c->argc + 1, sizeof(*words));
    int n = 0;
    for (int i = 0; i < c->argc; i++) {
        const char *s = c->argv[i];
        int r = api_opt_app(c->argc, c->argv, &i, &g->app);
        if (r < 0)
            return ui_usage("route", "-a needs an app name");
        if (r > 0)
            continue;
        if (strcmp(s, "--") == 0) { /* the rest are words, even "-x" */
            while (++i < c->argc)
                words[n++] = c->argv[i];
            break;
        }
        if (s[0] == '-' && s[1]) {
            int rc = read_opt(g, c->argc, c->argv, &i);
            if (rc != 0)
                return rc;
            continue;
        }
        words[n++] = c->argv[i];
    }
    int rc = read_words(g, words, n);
    return rc != 0 ? rc : check_args(g);
}

/* ---- talking to the controller ---- */

/* Appends "type/id" (cleaned). */
static void put_id(struct buf *out, const json_t *rt)
{
    const char *type = json_string_value(json_object_get(rt, "type"));
    api_put_clean(out, type ? type : "?");
    buf_putc(out, '/');
    api_put_clean(out, json_string_value(json_object_get(rt, "id")));
}

/* A bare 404 for the app's routes: the app is missing, or (when the app
 * is there) what says so about the route. */
static int not_found(struct api *a, const char *what)
{
    struct pier_err err = {0};
    cleanup_json json_t *app = NULL;
    if (api_app_get(a, &app, &err) < 0)
        return api_fail(a, &err);
    cleanup_buf struct buf w = BUF_INIT, name = BUF_INIT;
    api_put_clean(&w, what);
    api_put_clean(&name, a->app);
    return ui_fail("'pier route' lists them", "app \"%s\" has no route \"%s\"", name.p, w.p);
}

/* The app's routes, oldest first (a new reference). */
static int list_routes(struct api *a, json_t **out)
{
    struct pier_err err = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/routes");
    int rc = api_get(a, path.p, out, &err);
    if (rc == PIER_ENOTFOUND) {
        cleanup_json json_t *app = NULL;
        if (api_app_get(a, &app, &err) < 0)
            return api_fail(a, &err);
    }
    if (rc < 0)
        return api_fail(a, &err);
    if (!json_is_array(*out))
        return ui_fail(NULL, "the controller's list of routes is not a list");
    return 0;
}

/* Appends "http:domain/path", "https:..." or "tcp:port" (cleaned). */
static void put_target(struct buf *out, const json_t *rt)
{
    const char *type = json_string_value(json_object_get(rt, "type"));
    if (type && strcmp(type, "tcp") == 0) {
        buf_printf(out, "tcp:%lld", (long long)json_integer_value(json_object_get(rt, "port")));
        return;
    }
    json_t *co = json_object_get(rt, "certificate");
    const char *legacy = json_string_value(json_object_get(rt, "tls_cert"));
    bool tls = (co && !json_is_null(co)) || (legacy && *legacy);
    const char *path = json_string_value(json_object_get(rt, "path"));
    buf_puts(out, tls ? "https:" : "http:");
    api_put_clean(out, json_string_value(json_object_get(rt, "domain")));
    api_put_clean(out, path && *path ? path : "/");
}

static const char *yes_no(const json_t *rt, const char *field)
{
    return json_is_true(json_object_get(rt, field)) ? "true" : "false";
}

static int route_list(struct api *a, bool json)
{
    cleanup_json json_t *routes = NULL;
    int rc = list_routes(a, &routes);
    if (rc != 0)
        return rc;
    if (json)
        return api_print_json(routes, false);
    size_t n = json_array_size(routes);
    if (n == 0) {
        fprintf(stderr, "no routes yet: 'pier route add http DOMAIN' adds one\n");
        return 0;
    }
    struct buf *cells = xcalloc(n * 3, sizeof(*cells));
    int w[3] = {(int)strlen("ROUTE"), (int)strlen("SERVICE"), (int)strlen("ID")};
    for (size_t i = 0; i < n; i++) {
        const json_t *rt = json_array_get(routes, i);
        put_target(&cells[i * 3], rt);
        api_put_clean(&cells[i * 3 + 1], json_string_value(json_object_get(rt, "service")));
        put_id(&cells[i * 3 + 2], rt);
        for (int k = 0; k < 3; k++)
            if ((int)cells[i * 3 + k].len > w[k])
                w[k] = (int)cells[i * 3 + k].len;
    }
    printf("%-*s  %-*s  %-*s  %-6s  %s\n", w[0], "ROUTE", w[1], "SERVICE", w[2], "ID", "STICKY",
           "LEADER");
    for (size_t i = 0; i < n; i++) {
        const json_t *rt = json_array_get(routes, i);
        const char *c[3];
        for (int k = 0; k < 3; k++)
            c[k] = cells[i * 3 + k].p ? cells[i * 3 + k].p : "";
        printf("%-*s  %-*s  %-*s  %-6s  %s\n", w[0], c[0], w[1], c[1], w[2], c[2],
               yes_no(rt, "sticky"), yes_no(rt, "leader"));
    }
    for (size_t i = 0; i < n * 3; i++)
        buf_free(&cells[i]);
    free(cells);
    return 0;
}

/* Sets field when one of the pair of flags was given. */
static void set_flag(json_t *body, const struct args *g, int on, int off, const char *field)
{
    if (g->set[on] || g->set[off])
        json_object_set_new(body, field, json_boolean(g->set[on]));
}

static void set_cert(json_t *body, const struct args *g)
{
    json_object_set_new(body, "certificate",
                        json_pack("{s:s,s:s}", "cert", g->cert.p, "key", g->key.p));
    json_object_set_new(body, "tls_cert", json_string(g->cert.p));
    json_object_set_new(body, "tls_key", json_string(g->key.p));
}

/* The request body of route add. */
static json_t *add_body(const struct args *g)
{
    bool http = g->sub == SUB_ADD_HTTP;
    json_t *body = json_pack("{s:s,s:b,s:b,s:b}", "type", http ? "http" : "tcp", "leader",
                             g->set[O_LEADER], "drain_backends", !g->set[O_NO_DRAIN],
                             "disable_keep_alives", g->set[O_NO_KEEPALIVE]);
    if (g->set[O_SERVICE])
        json_object_set_new(body, "service", json_string(g->val[O_SERVICE]));
    if (!http && g->set[O_PORT])
        json_object_set_new(body, "port", json_integer(g->port));
    if (http) {
        json_object_set_new(body, "domain", json_string(g->domain.p));
        json_object_set_new(body, "path", json_string(g->path.p));
        json_object_set_new(body, "sticky", json_boolean(g->set[O_STICKY]));
        if (g->set[O_CERT])
            set_cert(body, g);
    }
    return body;
}

/* A 409 on route add: the target is another route's. Says whose when it
 * is this app's own. */
static int add_conflict(struct api *a, const struct args *g, const struct pier_err *err)
{
    bool http = g->sub == SUB_ADD_HTTP;
    if (!http && !g->set[O_PORT])
        return api_fail(a, err); /* no free port left: the controller says so */
    cleanup_json json_t *routes = NULL;
    cleanup_buf struct buf mine = BUF_INIT, hint = BUF_INIT;
    struct pier_err e2 = {0};
    cleanup_buf struct buf path = BUF_INIT;
    api_app_path(a, &path, "/routes");
    size_t i;
    json_t *rt;
    if (api_get(a, path.p, &routes, &e2) == 0)
        json_array_foreach(routes, i, rt)
        {
            const char *t = json_string_value(json_object_get(rt, "type"));
            const char *d = json_string_value(json_object_get(rt, "domain"));
            const char *p = json_string_value(json_object_get(rt, "path"));
            bool same = http ? t && strcmp(t, "http") == 0 && d && strcmp(d, g->domain.p) == 0 &&
                                   p && strcmp(p, g->path.p) == 0
                             : t && strcmp(t, "tcp") == 0 &&
                                   json_integer_value(json_object_get(rt, "port")) == g->port;
            if (same && !mine.len)
                put_id(&mine, rt);
        }
    if (mine.len)
        buf_printf(&hint, "it is this app's own route %s ('pier route remove %s')", mine.p, mine.p);
    if (!http)
        return ui_fail(hint.len ? hint.p : NULL,
                       "tcp port %ld is taken by another route (409 conflict); pick another "
                       "port, or remove the other route",
                       g->port);
    cleanup_buf struct buf target = BUF_INIT;
    api_put_clean(&target, g->domain.p);
    api_put_clean(&target, g->path.p);
    return ui_fail(hint.len ? hint.p : NULL,
                   "http route \"%s\" is taken by another route (409 conflict); pick another "
                   "domain or path, or remove the other route",
                   target.p);
}

/* The hint for what the controller refused in a route body. */
static const char *refused_hint(const struct args *g, const struct pier_err *err)
{
    if (g->set[O_CERT] && strstr(err->msg, "certificate"))
        return "--tls-cert takes a PEM certificate (its chain may follow), --tls-key the PEM "
               "private key that goes with it";
    return NULL;
}

static int route_add(struct api *a, const struct args *g)
{
    cleanup_json json_t *body = add_body(g), *rt = NULL;
    cleanup_buf struct buf path = BUF_INIT, id = BUF_INIT;
    struct pier_err err = {0};
    api_app_path(a, &path, "/routes");
    int rc = api_send(a, "POST", path.p, body, &rt, &err);
    if (rc == PIER_ECONFLICT)
        return add_conflict(a, g, &err);
    if (rc == PIER_ENOTFOUND) { /* a bare 404: the app is gone */
        cleanup_json json_t *app = NULL;
        struct pier_err e2 = {0};
        return api_fail(a, api_app_get(a, &app, &e2) < 0 ? &e2 : &err);
    }
    if (rc == PIER_EINVAL)
        return ui_fail(refused_hint(g, &err), "%s", err.msg);
    if (rc < 0)
        return api_fail(a, &err);
    if (!json_is_string(json_object_get(rt, "id")))
        return ui_fail(NULL, "the controller made the route but sent back no id");
    put_id(&id, rt);
    if (g->sub == SUB_ADD_TCP)
        printf("%s listening on port %lld\n", id.p,
               (long long)json_integer_value(json_object_get(rt, "port")));
    else
        printf("%s\n", id.p);
    return 0;
}

/* ---- update, remove: which route ---- */

struct target {
    char type[8];
    char id[UUID_LEN];
};

/* ID as "http/<id>", "tcp/<id>" or a bare id, each whole or the start of
 * one: a full typed id is taken as it is, anything else is looked up in
 * the app's list. */
static int resolve(struct api *a, const char *arg, struct target *t)
{
    const char *id = arg, *type = NULL;
    if (strncmp(arg, "http/", 5) == 0)
        type = "http", id = arg + 5;
    else if (strncmp(arg, "tcp/", 4) == 0)
        type = "tcp", id = arg + 4;
    if (type && uuid_ok(id)) {
        snprintf(t->type, sizeof(t->type), "%s", type);
        snprintf(t->id, sizeof(t->id), "%s", id);
        return 0;
    }
    cleanup_json json_t *routes = NULL;
    int rc = list_routes(a, &routes);
    if (rc != 0)
        return rc;
    size_t i, n = 0;
    json_t *rt;
    json_array_foreach(routes, i, rt)
    {
        const char *rid = json_string_value(json_object_get(rt, "id"));
        const char *rtype = json_string_value(json_object_get(rt, "type"));
        if (!rid || !rtype || strlen(rtype) >= sizeof(t->type) || strlen(rid) >= sizeof(t->id) ||
            (type && strcmp(type, rtype) != 0) || !*id || strncmp(rid, id, strlen(id)) != 0)
            continue;
        bool exact = strcmp(rid, id) == 0;
        if (n == 0 || exact) {
            snprintf(t->type, sizeof(t->type), "%s", rtype);
            snprintf(t->id, sizeof(t->id), "%s", rid);
        }
        n = exact ? 1 : n + 1;
        if (exact)
            break;
    }
    cleanup_buf struct buf clean = BUF_INIT, name = BUF_INIT;
    api_put_clean(&clean, arg);
    api_put_clean(&name, a->app);
    if (n > 1)
        return ui_fail("'pier route' lists them", "\"%s\" matches %zu routes; give more of the id",
                       clean.p, n);
    if (n == 0)
        return ui_fail("'pier route' lists them; an ID looks like http/<id> or tcp/<id>",
                       "app \"%s\" has no route \"%s\"", name.p, clean.p);
    return 0;
}

static void target_path(const struct api *a, const struct target *t, struct buf *path)
{
    api_app_path(a, path, "/routes/");
    api_escape(path, t->type);
    buf_putc(path, '/');
    api_escape(path, t->id);
}

/* Applies the update's flags to rt (the whole route, changed in place). */
static int apply_update(const struct args *g, json_t *rt, const char *type)
{
    if (strcmp(type, "http") != 0)
        for (size_t i = 0; i < sizeof(http_only) / sizeof(http_only[0]); i++)
            if (g->set[http_only[i]])
                return ui_usage("route", "--%s does not apply to a %s route",
                                opts[http_only[i]].name, type);
    if (g->set[O_SERVICE])
        json_object_set_new(rt, "service", json_string(g->val[O_SERVICE]));
    set_flag(rt, g, O_STICKY, O_NO_STICKY, "sticky");
    set_flag(rt, g, O_LEADER, O_NO_LEADER, "leader");
    set_flag(rt, g, O_DRAIN, O_NO_DRAIN, "drain_backends");
    set_flag(rt, g, O_NO_KEEPALIVE, O_KEEPALIVE, "disable_keep_alives");
    if (g->set[O_CERT])
        set_cert(rt, g);
    if (g->set[O_NO_TLS]) {
        json_object_set_new(rt, "certificate", json_null());
        json_object_del(rt, "tls_cert");
        json_object_del(rt, "tls_key");
    }
    return 0;
}

static int route_update(struct api *a, const struct args *g)
{
    struct target t;
    int rc = resolve(a, g->pos, &t);
    if (rc != 0)
        return rc;
    cleanup_buf struct buf path = BUF_INIT, id = BUF_INIT;
    target_path(a, &t, &path);
    buf_printf(&id, "%s/%s", t.type, t.id);
    struct pier_err err = {0};
    cleanup_json json_t *rt = NULL, *out = NULL;
    rc = api_get(a, path.p, &rt, &err);
    if (rc == PIER_ENOTFOUND)
        return not_found(a, id.p);
    if (rc < 0)
        return api_fail(a, &err);
    if ((rc = apply_update(g, rt, t.type)) != 0)
        return rc;
    rc = api_send(a, "PUT", path.p, rt, &out, &err);
    if (rc == PIER_ENOTFOUND)
        return not_found(a, id.p);
    if (rc == PIER_EINVAL)
        return ui_fail(refused_hint(g, &err), "%s", err.msg);
    if (rc < 0)
        return api_fail(a, &err);
    printf("updated %s\n", id.p);
    return 0;
}

static int route_remove(struct api *a, const struct args *g)
{
    struct target t;
    int rc = resolve(a, g->pos, &t);
    if (rc != 0)
        return rc;
    cleanup_buf struct buf path = BUF_INIT, id = BUF_INIT;
    target_path(a, &t, &path);
    buf_printf(&id, "%s/%s", t.type, t.id);
    struct pier_err err = {0};
    rc = api_send(a, "DELETE", path.p, NULL, NULL, &err);
    if (rc == PIER_ENOTFOUND)
        return not_found(a, id.p);
    if (rc < 0)
        return api_fail(a, &err);
    printf("removed route %s\n", id.p);
    return 0;
}

int cli_route(struct cli *c)
{
    struct args g = {0};
    int rc = parse(c, &g);
    if (rc == 0) {
        struct api a;
        rc = api_start(&a, c, g.app, true);
        if (rc == 0) {
            switch (g.sub) {
            case SUB_LIST: rc = route_list(&a, g.set[O_JSON]); break;
            case SUB_ADD_HTTP:
            case SUB_ADD_TCP: rc = route_add(&a, &g); break;
            case SUB_UPDATE: rc = route_update(&a, &g); break;
            case SUB_REMOVE: rc = route_remove(&a, &g); break;
            }
        }
        api_close(&a);
    }
    args_clear(&g);
    return rc;
}
