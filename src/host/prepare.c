/* prepare: see prepare.h. */
#include "host/prepare.h"

#include <errno.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include "lib/buf.h"
#include "lib/log.h"

/* The controllers the cgroup2 tree at path has, or NULL. */
static char *v2_controllers(const char *path)
{
    struct buf p = BUF_INIT;
    char line[512] = "";
    buf_printf(&p, "%s/cgroup.controllers", path);
    FILE *f = fopen(p.p, "re");
    buf_free(&p);
    if (!f)
        return NULL;
    if (!fgets(line, sizeof(line), f))
        line[0] = 0;
    fclose(f);
    line[strcspn(line, "\n")] = 0;
    return xstrdup(line);
}

int prepare_cgroups(struct pier_err *err)
{
    struct statfs fs;
    if (statfs("/sys/fs/cgroup", &fs) < 0)
        return err_set(err, PIER_EUNAVAIL, "/sys/fs/cgroup: %s: mount the cgroup file systems",
                       strerror(errno));
    if (fs.f_type == CGROUP2_SUPER_MAGIC) {
        log_info("host", "cgroups: unified cgroup v2 hierarchy, nothing to prepare", "path=%s",
                 "/sys/fs/cgroup");
        return 0;
    }
    if (statfs("/sys/fs/cgroup/memory", &fs) < 0 || fs.f_type != CGROUP_SUPER_MAGIC)
        return err_set(err, PIER_EUNAVAIL,
                       "cgroups: no cgroup v1 memory controller at /sys/fs/cgroup/memory and no "
                       "cgroup v2 at /sys/fs/cgroup: containers cannot get memory limits here");
    char *ctl = v2_controllers("/sys/fs/cgroup/unified");
    if (!ctl || !*ctl) {
        log_info("host", "cgroups: v1 controllers, cgroup2 tree holds none: crun can run",
                 "unified=%s", ctl ? "empty" : "absent");
        free(ctl);
        return 0;
    }
    log_info("host", "cgroups: hybrid layout; crun refuses it while cgroup2 holds controllers",
             "cgroup2_controllers=\"%s\"", ctl);
    /* Each controller still in cgroup2 moves to a v1 hierarchy of its own. */
    char *save = NULL;
    int rc = 0;
    for (char *c = strtok_r(ctl, " ", &save); c; c = strtok_r(NULL, " ", &save)) {
        struct buf dir = BUF_INIT;
        buf_printf(&dir, "/sys/fs/cgroup/%s", c);
        if (mkdir(dir.p, 0755) < 0 && errno != EEXIST) {
            rc = err_set(err, PIER_EUNAVAIL, "cgroups: creating %s: %s", dir.p, strerror(errno));
        } else if (mount("cgroup", dir.p, "cgroup", 0, c) < 0 && errno != EBUSY) {
            rc = err_set(err, PIER_EUNAVAIL,
                         "cgroups: mounting the %s controller at %s: %s (run as root, or do it "
                         "by hand: mkdir -p %s && mount -t cgroup -o %s cgroup %s)",
                         c, dir.p, strerror(errno), dir.p, c, dir.p);
        } else {
            log_info("host", "cgroups: moved a controller from cgroup2 to cgroup v1",
                     "controller=%s path=%s", c, dir.p);
        }
        buf_free(&dir);
        if (rc < 0)
            break;
    }
    free(ctl);
    return rc;
}

int prepare_crun(const char *crun, struct pier_err *err)
{
    struct buf cmd = BUF_INIT;
    char line[256] = "";
    buf_printf(&cmd, "'%s' --version 2>&1", crun);
    FILE *p = strchr(crun, '\'') ? NULL : popen(cmd.p, "re");
    buf_free(&cmd);
    if (!p)
        return err_set(err, PIER_EUNAVAIL, "cannot run crun (%s)", crun);
    if (!fgets(line, sizeof(line), p))
        line[0] = 0;
    int st = pclose(p);
    line[strcspn(line, "\n")] = 0;
    if (st != 0 || strncmp(line, "crun version", 12) != 0)
        return err_set(err, PIER_EUNAVAIL,
                       "crun (%s) does not run: %s; install Debian's crun package "
                       "(apt-get install crun) or pass --crun PATH",
                       crun, *line ? line : "no output");
    log_info("host", "crun found", "path=%s version=\"%s\"", crun, line + 13);
    return 0;
}

long long prepare_memory_total(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[256];
    long long kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}
