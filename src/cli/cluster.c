/* pier cluster ..., pier status */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/config.h"
#include "cli/git.h"
#include "cli/ui.h"
#include "lib/cleanup.h"
#include "lib/httpc.h"

static int list(struct config *cfg)
{
    json_t *cl;
    size_t i;
    const char *def = config_default(cfg);
    if (json_array_size(config_clusters(cfg)) == 0) {
        fprintf(stderr, "no clusters yet; add one with 'pier cluster add NAME URL KEY'\n");
        return 0;
    }
    /* The GIT URL column only once some cluster has one. */
    bool git = false;
    json_array_foreach(config_clusters(cfg), i, cl)
    {
        if (json_object_get(cl, "git_url"))
            git = true;
    }
    if (git)
        printf("%-2s%-16s %-32s %s\n", "", "NAME", "URL", "GIT URL");
    else
        printf("%-2s%-16s %s\n", "", "NAME", "URL");
    json_array_foreach(config_clusters(cfg), i, cl)
    {
        const char *name = json_string_value(json_object_get(cl, "name"));
        const char *url = json_string_value(json_object_get(cl, "url"));
        const char *git_url = json_string_value(json_object_get(cl, "git_url"));
        const char *mark = def && name && strcmp(def, name) == 0 ? "*" : "";
        if (git)
            printf("%-2s%-16s %-32s %s\n", mark, name ? name : "?", url ? url : "?",
                   git_url ? git_url : "-");
        else
            printf("%-2s%-16s %s\n", mark, name ? name : "?", url ? url : "?");
    }
    return 0;
}

static bool valid_name(const char *n)
{
    if (!*n || strlen(n) > 63)
        return false;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

static int add(struct config *cfg, int argc, char **argv)
{
    bool make_default = false;
    const char *pos[3], *git_flag = NULL;
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "-d") == 0 || strcmp(s, "--default") == 0) {
            make_default = true;
        } else if (strcmp(s, "--git-url") == 0) {
            if (i + 1 >= argc)
                return ui_usage("cluster", "--git-url needs a URL");
            git_flag = argv[++i];
        } else if (strncmp(s, "--git-url=", 10) == 0) {
            git_flag = s + 10;
        } else if (npos < 3) {
            pos[npos++] = s;
        } else {
            npos++;
        }
    }
    if (npos != 3)
        return ui_usage("cluster", "cluster add needs NAME URL KEY");
    cleanup_free char *git_url = NULL;
    struct pier_err gerr = {0};
    if (git_flag && git_url_check(git_flag, &git_url, &gerr) < 0)
        return ui_usage("cluster", "%s", gerr.msg);
    const char *name = pos[0], *url = pos[1], *key = pos[2];
    if (!valid_name(name))
        return ui_usage("cluster",
                        "cluster name \"%s\" may hold only letters, digits, '-', '_' "
                        "and '.' (at most 63)",
                        name);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return ui_usage("cluster", "URL \"%s\" must start with http:// or https://", url);
    /* "https://c.example/" and "https://c.example" are the same cluster;
     * paths are appended to it, so keep no trailing slash. */
    cleanup_free char *url_copy = xstrdup(url);
    size_t ulen = strlen(url_copy);
    while (ulen > 8 && url_copy[ulen - 1] == '/')
        url_copy[--ulen] = '\0';
    url = url_copy;
    if (config_cluster(cfg, name))
        return ui_fail("remove it first with 'pier cluster remove NAME', or pick another name",
                       "a cluster named \"%s\" already exists", name);
    json_t *cl = json_pack("{s:s,s:s,s:s}", "name", name, "url", url, "key", key);
    if (git_url)
        json_object_set_new(cl, "git_url", json_string(git_url));
    json_array_append_new(config_clusters(cfg), cl);
    if (make_default || !config_default(cfg))
        json_object_set_new(cfg->root, "default", json_string(name));
    struct pier_err err = {0};
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    printf("cluster \"%s\" added%s\n", name,
           strcmp(config_default(cfg), name) == 0 ? " (default)" : "");
    return 0;
}

static int remove_cluster(struct config *cfg, int argc, char **argv)
{
    if (argc != 1)
        return ui_usage("cluster", "cluster remove needs NAME");
    json_t *arr = config_clusters(cfg);
    json_t *cl;
    size_t i;
    json_array_foreach(arr, i, cl)
    {
        const char *n = json_string_value(json_object_get(cl, "name"));
        if (n && strcmp(n, argv[0]) == 0) {
            json_array_remove(arr, i);
            const char *def = config_default(cfg);
            if (def && strcmp(def, argv[0]) == 0)
                json_object_del(cfg->root, "default");
            struct pier_err err = {0};
            if (config_save(cfg, &err) < 0)
                return ui_fail(NULL, "%s", err.msg);
            printf("cluster \"%s\" removed\n", argv[0]);
            return 0;
        }
    }
    return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
}

static int set_default(struct config *cfg, int argc, char **argv)
{
    if (argc == 0) {
        const char *def = config_default(cfg);
        if (!def)
            return ui_fail("set one with 'pier cluster default NAME'", "no default cluster");
        printf("%s\n", def);
        return 0;
    }
    if (argc != 1)
        return ui_usage("cluster", "cluster default takes one NAME");
    if (!config_cluster(cfg, argv[0]))
        return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
    json_object_set_new(cfg->root, "default", json_string(argv[0]));
    struct pier_err err = {0};
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    printf("default cluster is now \"%s\"\n", argv[0]);
    return 0;
}

/* pier cluster git-url NAME [URL | --remove] */
static int set_git_url(struct config *cfg, int argc, char **argv)
{
    if (argc < 1 || argc > 2)
        return ui_usage("cluster", "cluster git-url needs NAME, and URL to set it");
    json_t *cl = config_cluster(cfg, argv[0]);
    if (!cl)
        return ui_fail("'pier cluster' lists the clusters", "no cluster named \"%s\"", argv[0]);
    if (argc == 1) {
        const char *u = json_string_value(json_object_get(cl, "git_url"));
        if (!u)
            return ui_fail("set one with 'pier cluster git-url NAME URL'",
                           "cluster \"%s\" has no git URL", argv[0]);
        printf("%s\n", u);
        return 0;
    }
    cleanup_free char *u = NULL;
    struct pier_err err = {0};
    if (strcmp(argv[1], "--remove") == 0)
        json_object_del(cl, "git_url");
    else if (git_url_check(argv[1], &u, &err) < 0)
        return ui_usage("cluster", "%s", err.msg);
    else
        json_object_set_new(cl, "git_url", json_string(u));
    if (config_save(cfg, &err) < 0)
        return ui_fail(NULL, "%s", err.msg);
    if (u)
        printf("cluster \"%s\" git URL is now %s\n", argv[0], u);
    else
        printf("cluster \"%s\" has no git URL now\n", argv[0]);
    return 0;
}

int cli_cluster(struct cli *c)
{
    struct config cfg;
    struct pier_err err = {0};
    if (config_load(&cfg, &err) < 0) {
        config_free(&cfg);
        return ui_fail(NULL, "%s", err.msg);
    }
    int rc;
    if (c->argc == 0)
        rc = list(&cfg);
    else if (strcmp(c->argv[0], "add") == 0)
        rc = add(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "remove") == 0)
        rc = remove_cluster(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "default") == 0)
        rc = set_default(&cfg, c->argc - 1, c->argv + 1);
    else if (strcmp(c->argv[0], "git-url") == 0)
        rc = set_git_url(&cfg, c->argc - 1, c->argv + 1);
    else
        rc = ui_usage("cluster", "unknown cluster subcommand \"%s\"", c->argv[0]);
    config_free(&cfg);
    return rc;
}

int cli_status(struct cli *c)
{
    if (c->argc != 0)
        return ui_usage("status", "status takes no arguments");
    struct config cfg;
    struct pier_err err = {0};
    const char *url = NULL, *key = NULL;
    if (config_load(&cfg, &err) < 0 || config_pick(&cfg, c->cluster, &url, &key, &err) < 0) {
        config_free(&cfg);
        return ui_fail(NULL, "%s", err.msg);
    }
    cleanup_buf struct buf full = BUF_INIT, auth = BUF_INIT;
    buf_printf(&full, "%s/.well-known/status", url);
    httpc_basic_auth(&auth, key);
    const char *headers[] = {auth.p, NULL};
    struct httpc_req req = {.url = full.p, .name = url, .headers = headers, .timeout_ms = 10000};
    struct httpc *h = httpc_new();
    struct httpc_resp resp = {0};
    int rc = httpc_do(h, &req, &resp, &err);
    httpc_free(h);
    int status = (int)resp.status;
    httpc_resp_release(&resp);
    if (rc < 0)
        rc = ui_fail("is the cluster up? 'make up' starts one on this machine", "%s", err.msg);
    else if (status == 401)
        rc = ui_fail("check the key: 'pier cluster' shows which cluster is used",
                     "%s refused the key (401)", url);
    else if (status != 200)
        rc = ui_fail(NULL, "%s answered %d", url, status);
    else
        printf("%s: healthy\n", url);
    config_free(&cfg); /* url is borrowed from it */
    return rc;
}
