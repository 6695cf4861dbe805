"""The host agent and slugs, end to end with real crun containers: the
slug's SHA-256 checked before it runs, a build job's /tmp on disk, the
/.pier binds on stacks built before they existed (left out, the stack left
alone), and the buildpacks an installed agent finds next to itself."""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import HostAgent
from test_host import log_msgs, put_job, wait_for, wait_state

SMALL = {"memory": {"limit": 64 << 20}}


def make_slug(tmp_path):
    """A slug (.tgz) whose bin/run says hello; returns (path, sha256 hex)."""
    src = tmp_path / "slugsrc"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_text("#!/bin/sh\necho slug says hello\n")
    (src / "bin" / "run").chmod(0o755)
    slug = tmp_path / "slug.tgz"
    with tarfile.open(slug, "w:gz") as t:
        for p in ("bin", "bin/run"):
            t.add(src / p, arcname=p, recursive=False)
    return slug, hashlib.sha256(slug.read_bytes()).hexdigest()


def test_slug_runs_only_with_its_recorded_hash(pier_store, start_host, tmp_path):
    """artifact.slug_sha256 (the hash the build recorded, which the
    scheduler copies from the artifact's meta.sha256) is checked on the
    download before anything is unpacked."""
    slug, sha = make_slug(tmp_path)
    agent = start_host(pier_store)
    for name, given in (("lower", sha), ("upper", sha.upper())):
        ok = put_job(agent, name, ["/app/bin/run"], resources=SMALL,
                     artifact={"slug": slug.as_uri(), "slug_sha256": given})
        rec = wait_state(agent, ok, "down")
        assert rec.get("exit_status") == 0, rec
        assert "slug says hello" in log_msgs(agent, ok)

    # the slug was replaced after its build: the job fails, nothing runs
    other = "0" * 64
    bad = put_job(agent, "changed", ["/app/bin/run"], resources=SMALL,
                  artifact={"slug": slug.as_uri(), "slug_sha256": other})
    rec = wait_state(agent, bad, "failed")
    err = rec.get("host_error", "")
    assert "bad artifact" in err and "SHA-256" in err and sha in err and other in err, rec
    assert "not run" in err, rec
    assert bad not in agent.crun_list()
    assert not (agent.data_dir / "jobs" / bad / "app").exists()

    for name, value, want in (("nothex", "xyz", "64 hex digits"),
                              ("notstring", 12, "artifact.slug_sha256")):
        job_id = put_job(agent, name, ["/app/bin/run"], resources=SMALL,
                         artifact={"slug": slug.as_uri(), "slug_sha256": value})
        rec = wait_state(agent, job_id, "failed")
        assert want in rec.get("host_error", ""), rec


def test_build_job_tmp_is_on_disk(pier_store, start_host):
    """A build job (meta "pier.build") gets a /tmp on the disk, larger than
    the 256 MB tmpfs other jobs get, and it goes when the job ends."""
    agent = start_host(pier_store)
    script = ("echo fs=$(stat -f -c %T /tmp); echo mode=$(stat -c %a /tmp); "
              "fallocate -l 300M /tmp/big && echo wrote-300M; "
              "mkdir -p /tmp/npm-cache && echo cache > /tmp/npm-cache/x && echo done")
    build = put_job(agent, "build", ["/bin/sh", "-c", script], resources=SMALL,
                    meta={"pier.build": "b1"})
    plain = put_job(agent, "plain", ["/bin/sh", "-c", script], resources=SMALL)
    rec = wait_state(agent, build, "down", timeout=60)
    assert rec.get("exit_status") == 0, rec
    msgs = log_msgs(agent, build)
    assert "fs=tmpfs" not in msgs and "mode=1777" in msgs, msgs
    assert "wrote-300M" in msgs and "done" in msgs, msgs
    # the job's tmp/ is removed with its app/ once it ended; its log stays
    job_dir = agent.data_dir / "jobs" / build
    wait_for(lambda: not (job_dir / "tmp").exists(), 10, "the build's tmp/ to go", agent)
    assert not (job_dir / "app").exists()

    wait_state(agent, plain, ("down", "crashed"), timeout=60)
    msgs = log_msgs(agent, plain)
    assert "fs=tmpfs" in msgs and "wrote-300M" not in msgs, msgs
    assert not (agent.data_dir / "jobs" / plain / "tmp").exists()


def make_old_stack(d):
    """A stack root as one built before `pier stack build` made /.pier:
    dash, its libraries, os-release, the other mount points, no /.pier."""
    for sub in ("usr/bin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc", "app", "tmp", "dev",
                "proc", "sys"):
        (d / sub).mkdir(parents=True)
    for f in ("etc/hosts", "etc/resolv.conf"):
        (d / f).write_text("")
    for link, to in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(to, d / link)
    shutil.copy("/usr/bin/dash", d / "usr/bin/sh")
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", d / "usr/lib/x86_64-linux-gnu/libc.so.6")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", d / "usr/lib64/ld-linux-x86-64.so.2")
    (d / "usr/lib/os-release").write_text("ID=old\n")
    os.symlink("../usr/lib/os-release", d / "etc/os-release")
    for p in d.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    return d


def test_old_stack_gets_no_pier_binds_and_is_not_written(pier_store, start_host, tmp_path):
    stack = make_old_stack(tmp_path / "oldstack")
    before = sorted(str(p.relative_to(stack)) for p in stack.rglob("*"))
    agent = start_host(pier_store)
    # the agent's own root for the host binds has the mount points
    host_root = agent.data_dir / "host-root"
    assert (host_root / ".pier" / "buildpacks").is_dir()
    assert (host_root / ".pier" / "pierslug").is_file()

    job_id = put_job(agent, "old", ["/bin/sh", "-c",
                                    "test -e /.pier/pierslug || echo no-pierslug; "
                                    "test -e /.pier/buildpacks || echo no-buildpacks"],
                     resources=SMALL, artifact={"stack": str(stack)})
    rec = wait_state(agent, job_id, "down")
    assert rec.get("exit_status") == 0, rec
    msgs = log_msgs(agent, job_id)
    assert "no-pierslug" in msgs and "no-buildpacks" in msgs, msgs
    # crun made nothing inside the shared stack
    assert sorted(str(p.relative_to(stack)) for p in stack.rglob("*")) == before
    assert not (stack / ".pier").exists()
    log = agent.stderr_text()
    assert "pier stack build" in log and f"stack={stack}" in log, log[-3000:]

    # on the host's binds the same job sees both
    host = put_job(agent, "hostbinds", ["/bin/sh", "-c",
                                        "test -x /.pier/pierslug && echo pierslug; "
                                        "cat /.pier/buildpacks/order"],
                   resources=SMALL, artifact={"stack": "host"})
    wait_state(agent, host, "down")
    msgs = log_msgs(agent, host)
    assert "pierslug" in msgs and "nodejs" in msgs, msgs


def test_installed_agent_finds_installed_buildpacks(pier_build, pier_store, start_host,
                                                    tmp_path):
    """`meson install` puts the buildpacks in DATADIR/pier/buildpacks, with
    their executable bits, and an installed agent binds those; one run from
    the build tree binds the source tree's."""
    dest = tmp_path / "dest"
    r = subprocess.run(["meson", "install", "-C", str(pier_build), "--no-rebuild", "--quiet",
                        "--destdir", str(dest), "--tags", "runtime"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(subprocess.run(["meson", "introspect", str(pier_build), "--buildoptions"],
                                     capture_output=True, text=True, check=True).stdout)
    opt = {o["name"]: o["value"] for o in info}
    prefix = dest / opt["prefix"].lstrip("/")
    bindir, bps = prefix / opt["bindir"], prefix / opt["datadir"] / "pier" / "buildpacks"
    assert (bps / "order").is_file()
    for name in (bps / "order").read_text().split():
        for step in ("detect", "compile", "release"):
            assert os.access(bps / name / "bin" / step, os.X_OK), (name, step)

    installed = HostAgent(bindir, pier_store, tmp_path / "installed-host")
    try:
        installed.start()
        line = next(l for l in installed.stderr_text().splitlines() if "what jobs get" in l)
        assert f"buildpacks={bps.resolve()}" in line, line
        assert f"pierslug={bindir / 'pierslug'}" in line, line
        job_id = put_job(installed, "bp", ["/bin/sh", "-c", "ls /.pier/buildpacks"],
                         resources=SMALL)
        wait_state(installed, job_id, "down")
        assert "order" in log_msgs(installed, job_id)
    finally:
        installed.stop()
        installed.cleanup_jobs()
        installed.check_sanitizers()

    built = start_host(pier_store)
    line = next(l for l in built.stderr_text().splitlines() if "what jobs get" in l)
    source_tree = Path(__file__).resolve().parents[2] / "buildpacks"
    assert f"buildpacks={source_tree}" in line, line
