/* pier host list, pier host jobs HOST: the hosts of the cluster and their
 * jobs.
 *
 * Until the controller exists these read the cluster store directly: host
 * records at /pier/v1/hosts/<id> (written by `pierd host`, see
 * src/host/hostrec.h) and job records at /pier/v1/jobs/<host id>-<uuid>.
 * The store comes from --store URL, else $PIER_STORE. Everything printed
 * from a record is cleaned of control characters first: a record is
 * outside input, and a terminal would obey escape sequences in it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/api.h"
#include "cli/cli.h"
#include "cli/ui.h"
#include "lib/buf.h"
#include "lib/cleanup.h"
#include "lib/clock.h"
#include "lib/jsonx.h"
#include "lib/store.h"

#define HOSTS_PREFIX "/pier/v1/hosts/"
#define JOBS_PREFIX "/pier/v1/jobs/"
#define HOST_ID_MAX 24
#define COMMAND_WIDTH 48
#define STORE_HINT                                                                                 \
    "pass --store URL or set PIER_STORE (a cluster from 'make up' has its store at "               \
    "http://127.0.0.1:7001)"

struct host_args {
    const char *store; /* --store URL, or NULL */
    bool json;         /* --json */
    const char *pos[2];
    int n_pos;
};

/* Reads the options every host subcommand takes, anywhere after its name.
 * Returns 0, or the exit status of a usage error. */
static int parse_args(int argc, char **argv, int max_pos, const char *what, struct host_args *a)
{
    memset(a, 0, sizeof(*a));
    bool opts = true;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (opts && strcmp(s, "--") == 0) {
            opts = false;
        } else if (opts && strcmp(s, "--json") == 0) {
            a->json = true;
        } else if (opts && strcmp(s, "--store") == 0) {
            if (i + 1 >= argc)
                return ui_usage("host", "--store needs a URL");
            a->store = argv[++i];
        } else if (opts && strncmp(s, "--store=", 8) == 0) {
            a->store = s + 8;
        } else if (opts && s[0] == '-' && s[1]) {
            return ui_usage("host", "unknown option \"%s\" for %s", s, what);
        } else if (a->n_pos < max_pos) {
            a->pos[a->n_pos++] = s;
        } else {
            return ui_usage("host", "%s takes %s", what,
                            max_pos == 0 ? "no arguments" : "one HOST");
        }
    }
    return 0;
}

/* Opens the store named by --store or $PIER_STORE. *url is borrowed from
 * the arguments or the environment. Returns 0, or the exit status of the
 * failure it reported. */
static int open_store(const struct host_args *a, struct store **s, const char **url)
{
    const char *env = getenv("PIER_STORE");
    *url = a->store && *a->store ? a->store : (env && *env ? env : NULL);
    if (!*url)
        return ui_fail(STORE_HINT, "no store to read the hosts from");
    struct pier_err err = {0};
    if (store_open(*url, s, &err) < 0)
        return ui_fail("the store's URL looks like http://127.0.0.1:7001", "%s", err.msg);
    store_set_timeout(*s, 5000);
    return 0;
}

static int store_failed(const char *url, const struct pier_err *err)
{
    cleanup_buf struct buf hint = BUF_INIT;
    buf_printf(&hint, "is the store at %s up? check --store or PIER_STORE", url);
    return ui_fail(hint.p, "%s", err->msg);
}

/* --- formatting ------------------------------------------------------- */

/* Appends s with control characters (and DEL) shown as '?', cut to max
 * bytes with "..." (max 0: no limit). */
static void put_clean(struct buf *b, const char *s, size_t max)
{
    size_t n = strlen(s);
    bool cut = max > 3 && n > max;
    buf_append(b, "", 0); /* b->p is a string even when s is empty */
    if (cut)
        n = max - 3;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf_putc(b, ch < 0x20 || ch == 0x7f ? '?' : (char)ch);
    }
    if (cut)
        buf_puts(b, "...");
}

static const char *str_field(const json_t *rec, const char *field)
{
    return json_string_value(json_object_get(rec, field)); /* borrowed */
}

/* An integer field, also as etcd-style decimal string; def when absent or
 * unreadable. */
static int64_t int_field(const json_t *obj, const char *field, int64_t def)
{
    int64_t v = def;
    if (jsonx_get_int64(obj, field, &v, NULL) <= 0)
        return def;
    return v;
}

static void put_bytes(struct buf *b, int64_t n)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    if (n < 0) {
        buf_putc(b, '?');
        return;
    }
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0 || v >= 100 || v == (double)(int64_t)v)
        buf_printf(b, "%.0f %s", v, units[u]);
    else
        buf_printf(b, "%.1f %s", v, units[u]);
}

/* Milli-CPUs as CPUs: 500 -> "0.5", 2000 -> "2". */
static void put_cpus(struct buf *b, int64_t milli)
{
    if (milli < 0)
        buf_putc(b, '?');
    else if (milli % 1000 == 0)
        buf_printf(b, "%" PRId64, milli / 1000);
    else
        buf_printf(b, "%.2g", (double)milli / 1000);
}

/* "12s ago", "5m ago", "3h ago", "2d ago"; "-" when absent, the raw text
 * (cleaned) when unreadable. */
static void put_age(struct buf *b, const char *when)
{
    int64_t us;
    if (when && *when && clock_parse_rfc3339(when, &us) < 0)
        put_clean(b, when, 32);
    else
        api_ago(b, when);
}

/* --- tables ----------------------------------------------------------- */

/* Prints rows (a JSON array of arrays of strings, the first the header)
 * in columns two spaces apart; the last column is not padded. */
static void print_table(json_t *rows)
{
    size_t widths[16] = {0};
    size_t i, j;
    json_t *row, *cell;
    json_array_foreach(rows, i, row)
    {
        json_array_foreach(row, j, cell)
        {
            size_t n = json_string_length(cell);
            if (j < 16 && n > widths[j])
                widths[j] = n;
        }
    }
    json_array_foreach(rows, i, row)
    {
        size_t last = json_array_size(row) - 1;
        json_array_foreach(row, j, cell)
        {
            if (j == last || j >= 16)
                printf("%s\n", json_string_value(cell));
            else
                printf("%-*s  ", (int)widths[j], json_string_value(cell));
        }
    }
}

/* Appends cell text (stolen) to row. */
static void add_cell(json_t *row, struct buf *text)
{
    json_array_append_new(row, json_string(text->p ? text->p : ""));
    buf_reset(text);
}

static void print_json(json_t *arr)
{
    char *s = json_dumps(arr, JSON_INDENT(2));
    printf("%s\n", s ? s : "[]");
    free(s);
}

/* Parses the records of a range into a new JSON array of objects; a value
 * that is not a JSON object is reported on stderr and left out. */
static json_t *parse_records(const struct store_range *r)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < r->n; i++) {
        json_t *rec = NULL;
        struct pier_err err = {0};
        if (jsonx_parse_object(r->kvs[i].value, r->kvs[i].value_len, &rec, &err) < 0) {
            cleanup_buf struct buf key = BUF_INIT;
            put_clean(&key, r->kvs[i].key, 200);
            fprintf(stderr, "pier: skipping %s: not a JSON object (%s)\n", key.p, err.msg);
            continue;
        }
        json_array_append_new(arr, rec); /* stolen */
    }
    return arr;
}

/* --- pier host list --------------------------------------------------- */

static void host_row(json_t *rows, const json_t *h)
{
    json_t *row = json_array();
    cleanup_buf struct buf t = BUF_INIT;
    put_clean(&t, str_field(h, "id") ? str_field(h, "id") : "?", 0);
    add_cell(row, &t);
    put_clean(&t, str_field(h, "addr") ? str_field(h, "addr") : "-", 64);
    add_cell(row, &t);
    buf_printf(&t, "%" PRId64, int_field(h, "jobs", 0));
    add_cell(row, &t);

    json_t *mem = json_object_get(h, "memory"), *cpu = json_object_get(h, "cpu");
    put_bytes(&t, int_field(mem, "allocated", -1));
    buf_putc(&t, '/');
    put_bytes(&t, int_field(mem, "total", -1));
    add_cell(row, &t);
    put_cpus(&t, int_field(cpu, "allocated", -1));
    buf_putc(&t, '/');
    put_cpus(&t, int_field(cpu, "total", -1));
    add_cell(row, &t);

    int64_t free_ports = int_field(json_object_get(h, "ports"), "free", -1);
    if (free_ports < 0)
        buf_putc(&t, '?');
    else
        buf_printf(&t, "%" PRId64, free_ports);
    add_cell(row, &t);

    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(h, "tags"), k, v)
    {
        if (t.len)
            buf_putc(&t, ',');
        put_clean(&t, k, 64);
        buf_putc(&t, '=');
        put_clean(&t, json_is_string(v) ? json_string_value(v) : "?", 64);
    }
    if (!t.len)
        buf_putc(&t, '-');
    add_cell(row, &t);
    put_age(&t, str_field(h, "heartbeat"));
    add_cell(row, &t);
    json_array_append_new(rows, row);
}

static int host_list(int argc, char **argv)
{
    struct host_args a;
    int rc = parse_args(argc, argv, 0, "host list", &a);
    if (rc)
        return rc;
    struct store *s = NULL;
    const char *url;
    if ((rc = open_store(&a, &s, &url)))
        return rc;
    struct store_range *r = NULL;
    struct pier_err err = {0};
    if (store_list(s, HOSTS_PREFIX, NULL, &r, &err) < 0) {
        store_close(s);
        return store_failed(url, &err);
    }
    cleanup_json json_t *hosts = parse_records(r);
    store_range_free(r);
    store_close(s);

    if (a.json) {
        print_json(hosts);
        return 0;
    }
    if (json_array_size(hosts) == 0) {
        fprintf(stderr,
                "no hosts in the store at %s; start one with "
                "'pierd host --store %s --data-dir DIR'\n",
                url, url);
        return 0;
    }
    cleanup_json json_t *rows = json_pack("[[s,s,s,s,s,s,s,s]]", "ID", "ADDR", "JOBS", "MEMORY",
                                          "CPU", "PORTS FREE", "TAGS", "HEARTBEAT");
    size_t i;
    json_t *h;
    json_array_foreach(hosts, i, h) host_row(rows, h);
    print_table(rows);
    return 0;
}

/* --- pier host jobs HOST ---------------------------------------------- */

static bool host_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > HOST_ID_MAX)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            return false;
    return true;
}

static bool ended(const char *state)
{
    return state && (strcmp(state, "down") == 0 || strcmp(state, "crashed") == 0 ||
                     strcmp(state, "failed") == 0);
}

/* allocated_ports: numbers, or objects with "port" (and "proto"). */
static void put_ports(struct buf *b, const json_t *ports)
{
    size_t i, start = b->len;
    json_t *p;
    json_array_foreach(ports, i, p)
    {
        if (b->len > start)
            buf_putc(b, ',');
        const json_t *num = json_is_object(p) ? json_object_get(p, "port") : p;
        const char *proto = json_is_object(p) ? str_field(p, "proto") : NULL;
        if (json_is_integer(num))
            buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(num));
        else if (json_is_string(num))
            put_clean(b, json_string_value(num), 16);
        else
            buf_putc(b, '?');
        if (proto && strcmp(proto, "tcp") != 0) {
            buf_putc(b, '/');
            put_clean(b, proto, 8);
        }
    }
    if (b->len == start)
        buf_putc(b, '-');
}

static void put_state(struct buf *b, const json_t *job)
{
    const char *state = str_field(job, "state");
    const char *desired = str_field(job, "desired_state");
    if (!desired)
        desired = "up";
    put_clean(b, state ? state : "pending", 16);
    if (ended(state)) {
        json_t *exit_status = json_object_get(job, "exit_status");
        if (json_is_integer(exit_status))
            buf_printf(b, " (exit %" JSON_INTEGER_FORMAT ")", json_integer_value(exit_status));
    } else if (strcmp(state ? state : "pending", desired) != 0) {
        buf_puts(b, " -> ");
        put_clean(b, desired, 16);
    }
}

static void job_row(json_t *rows, const json_t *job)
{
    json_t *row = json_array();
    cleanup_buf struct buf t = BUF_INIT;
    put_clean(&t, str_field(job, "id") ? str_field(job, "id") : "?", 0);
    add_cell(row, &t);
    put_state(&t, job);
    add_cell(row, &t);
    put_ports(&t, json_object_get(job, "allocated_ports"));
    add_cell(row, &t);
    put_age(&t, str_field(job, "started_at"));
    add_cell(row, &t);

    cleanup_buf struct buf cmd = BUF_INIT;
    size_t i;
    json_t *arg;
    json_array_foreach(json_object_get(job, "args"), i, arg)
    {
        if (i)
            buf_putc(&cmd, ' ');
        buf_puts(&cmd, json_is_string(arg) ? json_string_value(arg) : "?");
    }
    put_clean(&t, cmd.len ? cmd.p : "-", COMMAND_WIDTH);
    add_cell(row, &t);
    json_array_append_new(rows, row);
}

/* created_at order (RFC 3339 UTC strings sort as times), then id. */
static int by_created(const void *x, const void *y)
{
    const json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    const char *ca = str_field(a, "created_at"), *cb = str_field(b, "created_at");
    int c = strcmp(ca ? ca : "~", cb ? cb : "~");
    if (c)
        return c;
    const char *ia = str_field(a, "id"), *ib = str_field(b, "id");
    return strcmp(ia ? ia : "", ib ? ib : "");
}

static json_t *sorted(json_t *jobs)
{
    size_t n = json_array_size(jobs);
    json_t **v = xcalloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = json_array_get(jobs, i);
    qsort(v, n, sizeof(*v), by_created);
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append(out, v[i]);
    free(v);
    return out;
}

static void print_jobs(json_t *jobs)
{
    cleanup_json json_t *rows =
        json_pack("[[s,s,s,s,s]]", "ID", "STATE", "PORTS", "STARTED", "COMMAND");
    size_t i;
    json_t *job;
    json_array_foreach(jobs, i, job) job_row(rows, job);
    print_table(rows);
    /* What went wrong with a job is too long for a column: it follows the
     * table, one line per job. */
    json_array_foreach(jobs, i, job)
    {
        const char *why = str_field(job, "host_error");
        if (!why || !*why)
            continue;
        cleanup_buf struct buf t = BUF_INIT;
        put_clean(&t, str_field(job, "id") ? str_field(job, "id") : "?", 0);
        buf_puts(&t, ": error: ");
        put_clean(&t, why, 400);
        printf("%s\n", t.p);
    }
}

static int host_jobs(int argc, char **argv)
{
    struct host_args a;
    int rc = parse_args(argc, argv, 1, "host jobs", &a);
    if (rc)
        return rc;
    if (a.n_pos != 1)
        return ui_usage("host", "host jobs needs HOST (an id from 'pier host list')");
    const char *id = a.pos[0];
    if (!host_id_ok(id)) {
        cleanup_buf struct buf shown = BUF_INIT;
        put_clean(&shown, id, 64);
        return ui_usage("host", "host id \"%s\" is not valid: 1 to %d lowercase letters and digits",
                        shown.p, HOST_ID_MAX);
    }
    struct store *s = NULL;
    const char *url;
    if ((rc = open_store(&a, &s, &url)))
        return rc;

    cleanup_buf struct buf key = BUF_INIT, prefix = BUF_INIT;
    buf_printf(&key, "%s%s", HOSTS_PREFIX, id);
    buf_printf(&prefix, "%s%s-", JOBS_PREFIX, id);
    struct store_kv *host = NULL;
    struct store_range *r = NULL;
    struct pier_err err = {0};
    int gr = store_get(s, key.p, &host, &err);
    if ((gr < 0 && gr != PIER_ENOTFOUND) || store_list(s, prefix.p, NULL, &r, &err) < 0) {
        store_kv_free(host);
        store_close(s);
        return store_failed(url, &err);
    }
    bool known = host != NULL;
    store_kv_free(host);
    store_close(s);
    cleanup_json json_t *all = parse_records(r);
    store_range_free(r);
    if (!known && json_array_size(all) == 0)
        return ui_fail("'pier host list' lists the hosts the store knows",
                       "no host \"%s\" in the store at %s (no host record and no jobs)", id, url);
    if (!known)
        fprintf(stderr,
                "pier: host \"%s\" has no record in the store (stopped, or its lease ran out); "
                "its jobs as last written:\n",
                id);

    cleanup_json json_t *jobs = sorted(all);
    if (a.json)
        print_json(jobs);
    else if (json_array_size(jobs) == 0)
        fprintf(stderr, "host \"%s\" has no jobs\n", id);
    else
        print_jobs(jobs);
    return 0;
}

int cli_host(struct cli *c)
{
    if (c->argc == 0)
        return ui_usage("host", "host needs a subcommand: list or jobs");
    if (strcmp(c->argv[0], "list") == 0)
        return host_list(c->argc - 1, c->argv + 1);
    if (strcmp(c->argv[0], "jobs") == 0)
        return host_jobs(c->argc - 1, c->argv + 1);
    return ui_usage("host", "unknown host subcommand \"%s\"", c->argv[0]);
}
