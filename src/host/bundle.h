/* bundle: the OCI bundle crun runs for one job (DESIGN.md section 4).
 *
 * The agent writes, in the job's directory:
 *   bundle/config.json   the OCI runtime config
 *   bundle/hosts         the container's /etc/hosts (localhost + the job id)
 *   bundle/resolv.conf   a copy of the host's, so lookups do not stall
 *   app/                 the job's /app, owned by the job's user
 *   tmp/                 a build job's /tmp (bundle_opts.build_tmp)
 *
 * The container gets its own pid, mount, ipc and uts namespaces (the host's
 * network, in this first version), hostname = job id, a read-only root, a
 * 256 MB tmpfs /tmp (a build job's is tmp/ on disk instead), /app bound
 * read-write (and, for artifact.pierd, the agent's own executable bound
 * read-only at /app/pierd over an empty file app/pierd), pierslug and the shipped buildpacks bound
 * read-only at
 * /.pier/pierslug and /.pier/buildpacks, cgroup limits under
 * cgroupsPath "/pier/<job id>" (memory with swap at the same value, so a job
 * cannot swap past its limit; cpu shares from milli-CPUs; pids), an
 * RLIMIT_NOFILE of max_fd, no new privileges, a reduced capability set, a
 * seccomp profile that refuses the system calls a job has no business with
 * (mounts, modules, kexec, bpf, keyrings, ptrace of others, clock setting,
 * ...), and the app running as an unprivileged user. The spec's mounts
 * (host paths bound in) and linux_capabilities (added to the kept set, and
 * made ambient) come on top.
 *
 * The root: a stack directory (made by `pier stack build`), or, for the
 * "host" stack, read-only binds of the host's /usr, /bin, /sbin, /lib,
 * /lib64 and /etc onto an empty directory the agent keeps
 * (bundle_host_root). */
#ifndef PIER_HOST_BUNDLE_H
#define PIER_HOST_BUNDLE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "host/jobspec.h"
#include "lib/err.h"

/* What the agent decided for this job, beyond its spec. */
struct bundle_opts {
    const char *job_dir;   /* the job's directory (exists) */
    const char *root;      /* the stack directory, or NULL for the host binds */
    const char *host_root; /* the empty directory used as root for the host binds */
    const int *ports;      /* the allocated ports, one per spec port */
    uid_t uid;             /* the job's user (default 65534) */
    gid_t gid;
    const char *init_path;  /* host path of tini-static, bound at /dev/init when spec->init */
    const char *host_id;    /* for PIER_HOST_ID */
    const char *host_ip;    /* for EXTERNAL_IP (the host record's ip); NULL: not set */
    const char *pierslug;   /* host path bound read-only at /.pier/pierslug; NULL: left out */
    const char *buildpacks; /* host dir bound read-only at /.pier/buildpacks; NULL: left out */
    const char *pierd;      /* host path of the agent's pierd, bound read-only at /app/pierd
                               when spec->pierd (required then) */
    bool build_tmp;         /* a build job: /tmp is job_dir/tmp on disk (made here, mode
                               1777), not a 256 MB tmpfs that would count against memory */
};

/* Writes bundle/, hosts, resolv.conf and app/ for spec into opts->job_dir.
 * The environment is the spec's plus PORT (the first port), PORT_0..n,
 * PIER_JOB_ID, PIER_HOST_ID, EXTERNAL_IP, HOME=/app and a PATH when the
 * spec sets none. The spec's mounts become binds (rbind, nosuid, nodev,
 * read-only unless writeable) of each location, which must exist; with the
 * host binds their mount points are made in opts->host_root (a target
 * under one of the host's bound directories must exist there already),
 * while on a stack each target must already exist, as a directory when the
 * location is one and a file otherwise: nothing is ever written into a
 * stack that jobs share. The spec's capabilities join the three every job
 * has in the bounding, effective and permitted sets, and the inheritable
 * and ambient ones, so that a job running as an unprivileged user holds
 * them. Returns 0 or a negative error with a message (an unwritable
 * directory, a stack that is not a directory, a mount's location or target
 * missing, named as "mounts[N].location ..."). Writing twice replaces the
 * files. */
int bundle_write(const struct jobspec *spec, const struct bundle_opts *opts, struct pier_err *err);

/* Makes dir an empty root with the mount points the host binds need (usr,
 * bin, sbin, lib, lib64, etc, app, tmp, dev, proc, sys, .pier,
 * .pier/buildpacks, and the file .pier/pierslug), so that crun never makes
 * one inside it. Idempotent. */
int bundle_host_root(const char *dir, struct pier_err *err);

/* Checks that dir looks like a stack root (a directory holding bin/sh and
 * etc/os-release). PIER_ENOTFOUND with a message otherwise. */
int bundle_check_stack(const char *dir, struct pier_err *err);

/* The /.pier mount points a stack has (bundle_stack_points). */
#define BUNDLE_HAS_PIERSLUG 1u   /* the file .pier/pierslug */
#define BUNDLE_HAS_BUILDPACKS 2u /* the directory .pier/buildpacks */

/* Which BUNDLE_HAS_* mount points the stack root dir has, looked up as the
 * container sees them (symlinks resolve inside dir). `pier stack build`
 * makes them; a stack built before it did lacks them, and its jobs are
 * started without those binds: crun would otherwise make the mount points
 * inside the stack every job shares. */
unsigned bundle_stack_points(const char *dir);

/* Downloads the slug at url (http://, https:// or file://; at most
 * max_bytes) and unpacks it (a gzipped tar) into app_dir, as uid/gid so that
 * a crafted archive cannot write outside what that user may. sha256 (NULL:
 * not checked) is the SHA-256 (64 hex digits, either case) the download
 * must have; it is hashed as it is written, and a mismatch is PIER_EINVAL
 * with nothing unpacked. PIER_EINVAL for a bad URL, hash or archive,
 * PIER_EUNAVAIL when it cannot be fetched; the message names the URL and
 * the cause. */
int bundle_fetch_slug(const char *url, const char *app_dir, uid_t uid, gid_t gid, int64_t max_bytes,
                      const char *sha256, struct pier_err *err);

#endif
