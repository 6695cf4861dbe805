#include "build/slugignore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"

/* Deeper trees than this are refused rather than walked with an fd a level. */
#define MAX_DEPTH 256

struct pattern {
    char *glob;
    bool anchored; /* matched against the whole relative path */
    bool dir_only;
};

struct slugignore {
    struct pattern *p;
    size_t n;
};

static void add_line(struct slugignore *si, const char *line, size_t len)
{
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
        len--;
    size_t start = 0;
    while (start < len && (line[start] == ' ' || line[start] == '\t'))
        start++;
    line += start, len -= start;
    if (len == 0 || line[0] == '#' || line[0] == '!')
        return;
    struct pattern pt = {0};
    if (line[len - 1] == '/') {
        pt.dir_only = true;
        len--;
    }
    if (len > 0 && line[0] == '/') {
        pt.anchored = true;
        line++, len--;
    }
    if (len == 0)
        return; /* "/" alone would be the whole build */
    if (memchr(line, '/', len))
        pt.anchored = true;
    pt.glob = xmalloc(len + 1);
    memcpy(pt.glob, line, len);
    pt.glob[len] = '\0';
    si->p = xrealloc(si->p, (si->n + 1) * sizeof(*si->p));
    si->p[si->n++] = pt;
}

struct slugignore *slugignore_parse(const char *text, size_t len)
{
    struct slugignore *si = xcalloc(1, sizeof(*si));
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || text[i] == '\n') {
            add_line(si, text + start, i - start);
            start = i + 1;
        }
    }
    return si;
}

void slugignore_free(struct slugignore *si)
{
    if (!si)
        return;
    for (size_t i = 0; i < si->n; i++)
        free(si->p[i].glob);
    free(si->p);
    free(si);
}

size_t slugignore_count(const struct slugignore *si)
{
    return si->n;
}

/* fnmatch of pat[0..plen) against s[0..slen): '*' and '?' stop at '/'. */
static bool match_part(const char *pat, size_t plen, const char *s, size_t slen)
{
    char pbuf[1024], sbuf[4096];
    if (plen >= sizeof(pbuf) || slen >= sizeof(sbuf))
        return false;
    memcpy(pbuf, pat, plen);
    pbuf[plen] = '\0';
    memcpy(sbuf, s, slen);
    sbuf[slen] = '\0';
    return fnmatch(pbuf, sbuf, FNM_PATHNAME) == 0;
}

/* pat against s, where a double star matches any run of characters, '/'
 * included, and a double star followed by '/' also matches nothing (so a
 * pattern "a/<double star>/b" matches "a/b"). The rest is fnmatch's. */
static bool glob_match(const char *pat, size_t plen, const char *s, size_t slen)
{
    const char *star = NULL;
    for (size_t i = 0; i + 1 < plen; i++)
        if (pat[i] == '*' && pat[i + 1] == '*') {
            star = pat + i;
            break;
        }
    if (!star)
        return match_part(pat, plen, s, slen);
    size_t pre = (size_t)(star - pat);
    const char *rest = star + 2;
    size_t rlen = plen - pre - 2;
    /* "**" followed by '/' may also stand for no directory at all. */
    if (rlen > 0 && rest[0] == '/' && (pre == 0 || pat[pre - 1] == '/')) {
        for (size_t j = 0; j <= slen; j++)
            if (match_part(pat, pre, s, j) && glob_match(rest + 1, rlen - 1, s + j, slen - j))
                return true;
    }
    for (size_t j = 0; j <= slen; j++) {
        if (!match_part(pat, pre, s, j))
            continue;
        for (size_t k = j; k <= slen; k++)
            if (glob_match(rest, rlen, s + k, slen - k))
                return true;
    }
    return false;
}

bool slugignore_match(const struct slugignore *si, const char *path, bool is_dir)
{
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    for (size_t i = 0; i < si->n; i++) {
        const struct pattern *pt = &si->p[i];
        if (pt->dir_only && !is_dir)
            continue;
        const char *s = pt->anchored ? path : name;
        if (glob_match(pt->glob, strlen(pt->glob), s, strlen(s)))
            return true;
    }
    return false;
}

/* Deletes name (in the directory dfd) and, for a directory, all it holds. */
static int remove_tree(int dfd, const char *name, bool is_dir, int depth, struct pier_err *err)
{
    if (!is_dir) {
        if (unlinkat(dfd, name, 0) < 0)
            return err_set(err, -errno, "deleting %s: %s", name, strerror(errno));
        return 0;
    }
    if (depth > MAX_DEPTH)
        return err_set(err, -ELOOP, "deleting %s: deeper than %d levels", name, MAX_DEPTH);
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "deleting %s: %s", name, strerror(errno));
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return err_set(err, -errno, "deleting %s: %s", name, strerror(errno));
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            rc = err_set(err, -errno, "deleting %s/%s: %s", name, e->d_name, strerror(errno));
        else
            rc = remove_tree(fd, e->d_name, S_ISDIR(st.st_mode), depth + 1, err);
    }
    closedir(d);
    if (rc == 0 && unlinkat(dfd, name, AT_REMOVEDIR) < 0)
        rc = err_set(err, -errno, "deleting %s: %s", name, strerror(errno));
    return rc;
}

static int walk(const struct slugignore *si, int fd, struct buf *rel, int depth, size_t *removed,
                struct pier_err *err)
{
    if (depth > MAX_DEPTH) {
        close(fd);
        return err_set(err, -ELOOP, "%s: deeper than %d levels", rel->p, MAX_DEPTH);
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return err_set(err, -errno, "%s: %s", rel->len ? rel->p : ".", strerror(errno));
    }
    size_t base = rel->len;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        rel->len = base;
        if (base)
            buf_putc(rel, '/');
        buf_puts(rel, e->d_name);
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            rc = err_set(err, -errno, "%s: %s", rel->p, strerror(errno));
            break;
        }
        bool is_dir = S_ISDIR(st.st_mode);
        if (slugignore_match(si, rel->p, is_dir)) {
            rc = remove_tree(dirfd(d), e->d_name, is_dir, depth, err);
            (*removed)++;
        } else if (is_dir) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0)
                rc = err_set(err, -errno, "%s: %s", rel->p, strerror(errno));
            else
                rc = walk(si, sub, rel, depth + 1, removed, err);
        }
    }
    rel->len = base;
    if (rel->p)
        rel->p[base] = '\0';
    closedir(d);
    return rc;
}

int slugignore_apply(const struct slugignore *si, const char *root, size_t *removed,
                     struct pier_err *err)
{
    if (si->n == 0)
        return 0;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "%s: %s", root, strerror(errno));
    struct buf rel = BUF_INIT;
    int rc = walk(si, fd, &rel, 0, removed, err);
    buf_free(&rel);
    return rc;
}
