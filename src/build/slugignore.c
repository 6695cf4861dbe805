/* slugignore: .slugignore patterns, matched without backtracking.
 *
 * A pattern is compiled into tokens (a byte, '?', a class, '*', a double
 * star), which are the states of a small automaton: state i means "the
 * tokens before i have matched". A path is read one byte at a time while
 * the set of states that can be reached is kept (as in Thompson's regular
 * expression matching); a star stays in its state on a byte it matches
 * and may be left without one. So a match costs at most the pattern's
 * length times the path's, where a backtracking glob can take exponential
 * time on a pattern like "**a**a**a**b". */
#include "build/slugignore.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"

/* Deeper trees than this are refused rather than walked with an fd a level. */
#define MAX_DEPTH 256

enum tok_kind {
    TOK_BYTE,  /* that byte */
    TOK_ONE,   /* '?': one byte but '/' */
    TOK_CLASS, /* [...]: one byte of the class ('/' never) */
    TOK_STAR,  /* '*': any bytes but '/' */
    TOK_DSTAR, /* a double star: any bytes */
};

struct tok {
    uint8_t kind;
    uint8_t byte;    /* TOK_BYTE */
    bool skip_slash; /* TOK_DSTAR before a '/' (at the start or after a
                        '/'): it and that '/' may also match nothing */
    uint16_t cls;    /* TOK_CLASS: index in pattern.classes */
};

struct pattern {
    struct tok *toks;
    size_t n;
    uint8_t (*classes)[32]; /* bit sets of the byte values */
    size_t n_classes;
    bool anchored; /* matched against the whole relative path */
    bool dir_only;
};

struct slugignore {
    struct pattern *p;
    size_t n;
    size_t skipped;
};

static void set_bit(uint8_t set[32], unsigned char c)
{
    set[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static bool has_bit(const uint8_t set[32], unsigned char c)
{
    return set[c >> 3] & (1u << (c & 7));
}

/* "[:alpha:]" and its kind inside a class: the C locale's ctype. */
static bool add_named(uint8_t set[32], const char *name, size_t len)
{
    static const struct {
        const char *name;
        int (*is)(int);
    } names[] = {{"alnum", isalnum}, {"alpha", isalpha}, {"blank", isblank}, {"cntrl", iscntrl},
                 {"digit", isdigit}, {"graph", isgraph}, {"lower", islower}, {"print", isprint},
                 {"punct", ispunct}, {"space", isspace}, {"upper", isupper}, {"xdigit", isxdigit}};
    for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++)
        if (strlen(names[i].name) == len && memcmp(names[i].name, name, len) == 0) {
            for (int c = 0; c < 128; c++)
                if (names[i].is(c))
                    set_bit(set, (unsigned char)c);
            return true;
        }
    return false;
}

/* The class that starts at s[i] == '[' (fnmatch's syntax: '!' or '^'
 * negates, a ']' first is a member, ranges, [:name:], backslash escapes).
 * Returns the index after its ']', or 0 when it is not a class (then the
 * '[' is a plain byte). */
static size_t parse_class(const char *s, size_t len, size_t i, uint8_t set[32])
{
    size_t j = i + 1;
    bool negate = j < len && (s[j] == '!' || s[j] == '^');
    if (negate)
        j++;
    memset(set, 0, 32);
    for (bool first = true; j < len; first = false) {
        unsigned char lo = (unsigned char)s[j];
        if (lo == ']' && !first) {
            if (negate)
                for (size_t k = 0; k < 32; k++)
                    set[k] = (uint8_t)~set[k];
            set['/' >> 3] &= (uint8_t) ~(1u << ('/' & 7));
            return j + 1;
        }
        if (lo == '[' && j + 1 < len && s[j + 1] == ':') {
            const char *end = NULL;
            for (size_t k = j + 2; k + 1 < len && !end; k++)
                if (s[k] == ':' && s[k + 1] == ']')
                    end = s + k;
            if (end && add_named(set, s + j + 2, (size_t)(end - (s + j + 2)))) {
                j = (size_t)(end - s) + 2;
                continue;
            }
        }
        if (lo == '\\' && j + 1 < len)
            lo = (unsigned char)s[++j];
        j++;
        unsigned char hi = lo;
        if (j + 1 < len && s[j] == '-' && s[j + 1] != ']') {
            j++;
            if (s[j] == '\\' && j + 1 < len)
                j++;
            hi = (unsigned char)s[j++];
        }
        for (unsigned c = lo; c <= hi; c++)
            set_bit(set, (unsigned char)c);
    }
    return 0;
}

static void add_tok(struct pattern *pt, struct tok t)
{
    pt->toks = xrealloc(pt->toks, (pt->n + 1) * sizeof(*pt->toks));
    pt->toks[pt->n++] = t;
}

/* Compiles the glob s[0..len) into pt's tokens. */
static void compile(struct pattern *pt, const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        char c = s[i];
        if (c == '*') {
            size_t run = 1;
            while (i + run < len && s[i + run] == '*')
                run++;
            struct tok t = {.kind = run > 1 ? TOK_DSTAR : TOK_STAR};
            t.skip_slash =
                run > 1 && (i == 0 || s[i - 1] == '/') && i + run < len && s[i + run] == '/';
            add_tok(pt, t);
            i += run;
        } else if (c == '?') {
            add_tok(pt, (struct tok){.kind = TOK_ONE});
            i++;
        } else if (c == '[') {
            uint8_t set[32];
            size_t after = parse_class(s, len, i, set);
            if (after) {
                pt->classes = xrealloc(pt->classes, (pt->n_classes + 1) * sizeof(*pt->classes));
                memcpy(pt->classes[pt->n_classes], set, 32);
                add_tok(pt, (struct tok){.kind = TOK_CLASS, .cls = (uint16_t)pt->n_classes++});
                i = after;
            } else {
                add_tok(pt, (struct tok){.kind = TOK_BYTE, .byte = '['});
                i++;
            }
        } else {
            if (c == '\\' && i + 1 < len)
                c = s[++i];
            add_tok(pt, (struct tok){.kind = TOK_BYTE, .byte = (uint8_t)c});
            i++;
        }
    }
}

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
    if (len > SLUGIGNORE_MAX_PATTERN_BYTES || si->n == SLUGIGNORE_MAX_PATTERNS) {
        si->skipped++;
        return;
    }
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
    compile(&pt, line, len);
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
    for (size_t i = 0; i < si->n; i++) {
        free(si->p[i].toks);
        free(si->p[i].classes);
    }
    free(si->p);
    free(si);
}

size_t slugignore_skipped(const struct slugignore *si)
{
    return si->skipped;
}

/* Adds to states what can be reached without reading a byte: past a star
 * (which may match nothing), and past a double star and its '/'. Those
 * moves go forward only, so one pass in order finds them all. */
static void close_states(const struct pattern *pt, uint8_t *states)
{
    for (size_t i = 0; i < pt->n; i++) {
        if (!states[i])
            continue;
        const struct tok *t = &pt->toks[i];
        if (t->kind == TOK_STAR || t->kind == TOK_DSTAR)
            states[i + 1] = 1;
        if (t->kind == TOK_DSTAR && t->skip_slash)
            states[i + 2] = 1; /* compile put the '/' at i + 1 */
    }
}

static bool pattern_match(const struct pattern *pt, const char *s, size_t slen)
{
    uint8_t a[SLUGIGNORE_MAX_PATTERN_BYTES + 1], b[SLUGIGNORE_MAX_PATTERN_BYTES + 1];
    uint8_t *cur = a, *next = b;
    memset(cur, 0, pt->n + 1);
    cur[0] = 1;
    close_states(pt, cur);
    for (size_t k = 0; k < slen; k++) {
        unsigned char c = (unsigned char)s[k];
        bool any = false;
        memset(next, 0, pt->n + 1);
        for (size_t i = 0; i < pt->n; i++) {
            if (!cur[i])
                continue;
            const struct tok *t = &pt->toks[i];
            switch (t->kind) {
            case TOK_BYTE:
                if (c == t->byte)
                    next[i + 1] = 1, any = true;
                break;
            case TOK_ONE:
                if (c != '/')
                    next[i + 1] = 1, any = true;
                break;
            case TOK_CLASS:
                if (has_bit(pt->classes[t->cls], c))
                    next[i + 1] = 1, any = true;
                break;
            case TOK_STAR:
                if (c != '/')
                    next[i] = 1, any = true;
                break;
            case TOK_DSTAR: next[i] = 1, any = true; break;
            }
        }
        if (!any)
            return false;
        close_states(pt, next);
        uint8_t *tmp = cur;
        cur = next, next = tmp;
    }
    return cur[pt->n];
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
        if (pattern_match(pt, s, strlen(s)))
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
