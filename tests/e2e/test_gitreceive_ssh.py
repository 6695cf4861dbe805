"""`pierd gitreceive` over SSH, with the real `git` and OpenSSH clients,
against a real `pierd store` + `pierd controller`.

The user's steps: register an SSH key with the controller (POST /keys, what
`pier keys add` does), create an app, `git push` a branch to
ssh://git@HOST:PORT/APP.git, clone it back. The pre-receive hook accepts
refs other than main/master with "Not deploying ..."; a push to main runs
the build pipeline, which fails here (no host agent runs build jobs), so
main is refused and its ref never moves. Then what must be refused is
refused (unknown keys, shells, other commands, unknown apps), and hostile,
stalled or vanishing clients neither stall the daemon nor leave git
processes behind. Repositories are named by the app's id.
"""

import hashlib
import json

import os
import random
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, store_get
from controller_util import Controller

KEY = "git-ssh-key"
SHELL_MSG = "pier: only git push and git fetch are served here; got: "


class Cluster:
    def __init__(self, start_pierd, pier_store, tmp_path, env=None):
        self.tmp = tmp_path
        self.store = pier_store
        self.start_pierd = start_pierd
        self.ctl = Controller(start_pierd, pier_store, key=KEY)
        self.blob = start_pierd("blobstore", name="blobstore",
                                args=["--dir", tmp_path / "blobs", "--key", KEY])
        self.dir = tmp_path / "git"
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.key = self.make_key("id_user")
        self.gr = None
        self.runs = 0
        self.start(env)

    def start(self, env=None, ssh_host="127.0.0.1", args=()):
        """(Re)starts the receiver on a new SSH port, same DIR."""
        self.runs += 1
        self.port = free_port()
        self.gr = self.start_pierd("gitreceive", name=f"gitreceive-{self.runs}", env=env, args=[
            "--dir", self.dir, "--key", KEY, "--controller", self.ctl.url,
            "--blobstore", self.blob.url, "--ssh", f"{ssh_host}:{self.port}", *args])
        # ready means HTTP answers; SSH may start a moment later
        wait_for(lambda: "ssh listening" in self.gr.stderr_text(), what="the SSH listener")
        return self.gr

    def make_key(self, name):
        path = self.tmp / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(path)], check=True)
        return path

    def register(self, key_path):
        status, body = self.ctl.post("/keys", {"key": Path(f"{key_path}.pub").read_text()})
        assert status == 200, body
        return body["id"]

    def create_app(self, name):
        status, body = self.ctl.post("/apps", {"name": name})
        assert status == 200, body
        return body

    def repo(self, app):
        """The app's bare repository on disk: DIR/repos/<app id>.git."""
        status, body = self.ctl.get(f"/apps/{app}")
        assert status == 200, body
        return self.dir / "repos" / f"{body['id']}.git"

    def ssh_args(self, key=None, extra=()):
        # ssh takes the first value of an option: extra comes first to override
        return ["ssh", *extra, "-i", str(key or self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-p", str(self.port)]

    def env(self, key=None, extra=()):
        return {**os.environ, "HOME": str(self.home), "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com",
                "GIT_SSH_COMMAND": " ".join(self.ssh_args(key, extra))}

    def remote(self, app):
        return f"ssh://git@127.0.0.1:{self.port}/{app}.git"

    def git(self, *args, cwd=None, key=None, env=None, ssh_extra=(), timeout=120):
        return subprocess.run(["git", *map(str, args)], cwd=cwd,
                              env={**self.env(key, ssh_extra), **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def ssh(self, *command, key=None, extra=(), timeout=60, input=None):
        return subprocess.run([*self.ssh_args(key, extra), "git@127.0.0.1", *command],
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None)

    def new_repo(self, name, branch="feature", files=None):
        d = self.tmp / name
        d.mkdir()
        assert self.git("init", "-q", "-b", branch, cwd=d).returncode == 0
        for path, content in (files or {"README": f"{name}\n"}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(d / path, mode) as f:
                f.write(content)
        assert self.git("add", "-A", cwd=d).returncode == 0
        r = self.git("commit", "-q", "-m", f"first of {name}", cwd=d)
        assert r.returncode == 0, r.stderr
        return d

    def head(self, repo):
        return self.git("rev-parse", "HEAD", cwd=repo).stdout.strip()

    def remote_refs(self, app):
        """The app's refs as its bare repository on disk holds them."""
        r = self.git("for-each-ref", "--format=%(refname) %(objectname)", cwd=self.repo(app))
        assert r.returncode == 0, r.stderr
        return dict(line.split() for line in r.stdout.splitlines())

    def log(self):
        return self.gr.stderr_text()


@pytest.fixture
def cluster(start_pierd, pier_store, tmp_path):
    return Cluster(start_pierd, pier_store, tmp_path)


def git_children(repo):
    """PIDs of git processes serving repo (their command line names it)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"git") and str(repo).encode() in cmd:
            pids.append(int(p.name))
    return pids


def read_advertisement(stream):
    """Reads a ref advertisement (pkt-lines up to the flush) off stream."""
    got = b""
    while not got.endswith(b"0000"):
        chunk = stream.read1(65536)
        assert chunk, got
        got += chunk
    return got


def wait_for(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def fingerprint(key_path):
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_path)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_push_a_branch_then_clone_it_back(cluster):
    fp = cluster.register(cluster.key)
    assert fp == fingerprint(f"{cluster.key}.pub")
    cluster.create_app("shop")
    src = cluster.new_repo("src", files={"README": "hello\n", "app.py": "print('hi')\n"})

    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert "remote: -----> Not deploying refs/heads/feature" in r.stderr, r.stderr
    assert cluster.remote_refs("shop") == {"refs/heads/feature": cluster.head(src)}
    # who pushed, in the daemon's log
    assert re.search(rf"ssh git started\" .*fingerprint={re.escape(fp)} app=shop "
                     r"service=receive-pack", cluster.log()), cluster.log()

    # main deploys: with no blobstore the pipeline fails, the push is refused
    main = cluster.new_repo("main-src", branch="main")
    r = cluster.git("push", cluster.remote("shop"), "main", cwd=main)
    assert r.returncode != 0, r.stderr
    assert "pre-receive hook declined" in r.stderr, r.stderr
    assert "refs/heads/main" not in cluster.remote_refs("shop")

    # clone back over SSH: protocol v2 (git's default, GIT_PROTOCOL passed
    # through the env request) and the original protocol
    for version in ("2", "0"):
        dest = cluster.tmp / f"clone-v{version}"
        r = cluster.git("-c", f"protocol.version={version}", "clone", "-q", "-b", "feature",
                        cluster.remote("shop"), dest, env={"GIT_TRACE_PACKET": "1"})
        assert r.returncode == 0, r.stderr
        assert (dest / "app.py").read_text() == "print('hi')\n"
        assert cluster.head(dest) == cluster.head(src)
        assert ("< version 2" in r.stderr) == (version == "2"), r.stderr[-3000:]
    assert "protocol=version=2" in cluster.log()

    # the scp-like form: git-upload-pack 'shop.git' (no leading slash)
    r = cluster.git("ls-remote", "git@127.0.0.1:shop.git")
    assert r.returncode == 0, r.stderr
    assert f"{cluster.head(src)}\trefs/heads/feature" in r.stdout
    # and what other clients send: no quotes, no .git, "git upload-pack"
    for cmd in ("git-upload-pack /shop", "git upload-pack 'shop.git'"):
        p = cluster.ssh(cmd, input="0000")  # a flush: "nothing wanted", as ls-remote says
        assert p.returncode == 0, p.stderr
        assert "refs/heads/feature" in p.stdout


def test_a_second_push_updates_the_branch(cluster):
    cluster.register(cluster.key)
    cluster.create_app("blog")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("blog"), "feature", cwd=src).returncode == 0
    (src / "more").write_text("more\n")
    cluster.git("add", "more", cwd=src)
    cluster.git("commit", "-q", "-m", "more", cwd=src)
    r = cluster.git("push", cluster.remote("blog"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert cluster.remote_refs("blog") == {"refs/heads/feature": cluster.head(src)}


def test_big_push_and_clone_go_through_intact(cluster):
    cluster.register(cluster.key)
    cluster.create_app("big")
    blob = random.Random(6).randbytes(24 * 1024 * 1024)  # incompressible: 24 MB on the wire
    src = cluster.new_repo("src", files={"blob.bin": blob})
    r = cluster.git("push", cluster.remote("big"), "feature", cwd=src, timeout=300)
    assert r.returncode == 0, r.stderr
    dest = cluster.tmp / "clone"
    r = cluster.git("clone", "-q", "-b", "feature", cluster.remote("big"), dest, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (dest / "blob.bin").read_bytes() == blob


def test_an_unknown_key_is_refused(cluster):
    cluster.register(cluster.key)
    cluster.create_app("shop")
    other = cluster.make_key("id_other")
    p = cluster.ssh("git-upload-pack 'shop.git'", key=other)
    assert p.returncode == 255
    assert "Permission denied (publickey)" in p.stderr, p.stderr
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src, key=other)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr, r.stderr
    assert not cluster.repo("shop").exists()  # never got that far
    # a password is never asked for, and "none" gets nothing
    p = subprocess.run(["ssh", "-o", "StrictHostKeyChecking=no", "-o",
                        "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                        "-o", "PubkeyAuthentication=no", "-p", str(cluster.port),
                        "git@127.0.0.1", "git-upload-pack 'shop.git'"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env={**os.environ, "HOME": str(cluster.home)})
    assert p.returncode == 255
    assert "Permission denied (publickey)" in p.stderr, p.stderr
    # a key removed from the controller no longer works
    fp = fingerprint(f"{cluster.key}.pub")
    status, _ = cluster.ctl.delete("/keys/" + fp.replace("/", "_").replace("+", "-"))
    assert status == 200
    p = cluster.ssh("git-upload-pack 'shop.git'")
    assert p.returncode == 255 and "Permission denied" in p.stderr, p.stderr
    # with the controller down no key gets in, and the client is told why
    # (a key the receiver has not just asked about: answers are kept 5 s)
    third = cluster.make_key("id_third")
    cluster.register(third)
    cluster.ctl.daemon.stop()
    p = cluster.ssh("git-upload-pack 'shop.git'", key=third, extra=["-o", "LogLevel=INFO"])
    assert p.returncode == 255 and "Permission denied" in p.stderr, p.stderr
    assert "pier: cannot check SSH keys now" in p.stderr, p.stderr
    assert "ssh key check failed" in cluster.log()


def test_shells_and_other_commands_are_refused(cluster):
    cluster.register(cluster.key)
    cluster.create_app("shop")
    p = cluster.ssh()  # a shell (stdin is no terminal: no pty)
    assert p.returncode == 1, p.stderr
    assert SHELL_MSG + "a shell" in p.stderr
    p = cluster.ssh(extra=["-tt"])  # a shell with a pty
    assert p.returncode == 1
    assert SHELL_MSG + "a shell" in p.stdout + p.stderr
    p = cluster.ssh("ls", "-la")
    assert p.returncode == 1
    assert p.stderr.strip().endswith(SHELL_MSG + "ls -la"), p.stderr
    assert p.stdout == ""
    p = cluster.ssh("sftp", extra=["-s"])
    assert p.returncode == 1
    assert SHELL_MSG + "the subsystem sftp" in p.stderr, p.stderr
    p = cluster.ssh("git-upload-archive 'shop.git'")
    assert p.returncode == 1 and SHELL_MSG in p.stderr
    p = cluster.ssh("git-receive-pack 'shop.git'", extra=["-tt"])
    assert p.returncode == 1 and SHELL_MSG + "a terminal" in p.stdout + p.stderr
    # port forwarding is refused too
    p = cluster.ssh(extra=["-W", "127.0.0.1:22"])
    assert p.returncode == 255
    assert "forwarding failed" in p.stderr, p.stderr
    # a path that names no app, and an app that does not exist
    p = cluster.ssh("git-upload-pack '../../etc/passwd'")
    assert p.returncode == 1
    assert "names no app's repository" in p.stderr, p.stderr
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("nosuch"), "feature", cwd=src)
    assert r.returncode != 0
    assert "app nosuch does not exist: create it with 'pier create nosuch'" in r.stderr, r.stderr
    assert list((cluster.dir / "repos").iterdir()) == []
    # the daemon still serves
    assert cluster.git("ls-remote", cluster.remote("shop")).returncode == 0


def test_the_host_key_is_made_once_and_kept(cluster):
    key = cluster.dir / "ssh_host_ed25519_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    fp = fingerprint(key)
    assert f"fingerprint={fp}" in cluster.log()
    cluster.register(cluster.key)
    cluster.create_app("shop")
    known = cluster.tmp / "known_hosts"
    strict = ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=accept-new"]
    p = cluster.ssh("git-upload-pack 'shop.git'", extra=strict, input="0000")
    assert p.returncode == 0, p.stderr
    assert known.read_text().count("ssh-ed25519") == 1
    cluster.gr.stop()
    cluster.gr.check_sanitizers()
    cluster.start()
    assert f"fingerprint={fp}" in cluster.log()
    port_line = f"[127.0.0.1]:{cluster.port}"
    first = known.read_text().split(None, 1)[1]
    known.write_text(f"{port_line} {first}")  # the same key, now at the new port
    p = cluster.ssh("git-upload-pack 'shop.git'",
                    extra=["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"],
                    input="0000")
    assert p.returncode == 0, p.stderr


def test_hostile_clients_do_not_stop_the_daemon(start_pierd, pier_store, tmp_path):
    cluster = Cluster(start_pierd, pier_store, tmp_path,
                      env={**os.environ, "PIER_SSH_AUTH_TIMEOUT": "3"})
    cluster.register(cluster.key)
    cluster.create_app("shop")
    src = cluster.new_repo("src")

    def connect():
        return socket.create_connection(("127.0.0.1", cluster.port), timeout=10)

    def closed_by_server(s, timeout=15):
        s.settimeout(timeout)
        try:
            while s.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # garbage instead of a version line, and garbage after a good one
    for junk in (os.urandom(4096), b"SSH-2.0-evil\r\n" + os.urandom(65536), b"\0" * 100000):
        s = connect()
        try:
            s.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_by_server(s)
        s.close()

    # 130 connections at once from one address (more than the 128 the
    # daemon lets wait for authentication): half silent, half stopping
    # after the version. That address gets 16 of them, the rest are closed
    # at once.
    socks = []
    for i in range(130):
        s = connect()
        if i % 2:
            s.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        socks.append(s)
    wait_for(lambda: cluster.log().count("too many unauthenticated from one address") >= 100,
             what="the connections over the address's share to be dropped")
    # the daemon serves other addresses meanwhile
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src,
                    ssh_extra=["-b", "127.0.0.2"])
    assert r.returncode == 0, r.stderr
    assert "peer=127.0.0.2:" in cluster.log()
    # each is dropped at the auth timeout (3 s here)
    t0 = time.monotonic()
    for s in socks:
        assert closed_by_server(s, timeout=max(1.0, 20 - (time.monotonic() - t0)))
        s.close()
    assert time.monotonic() - t0 < 20

    # a client that authenticates and never asks for anything is dropped too
    p = subprocess.Popen([*cluster.ssh_args(), "-N", "git@127.0.0.1"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.wait(timeout=20) == 255
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "ssh client too slow" in cluster.log() and "authenticated=yes" in cluster.log()
    assert cluster.git("ls-remote", cluster.remote("shop")).returncode == 0
    assert cluster.gr.running()


def test_a_stalled_session_stalls_nobody_and_dies_with_its_client(cluster):
    cluster.register(cluster.key)
    for app in ("slow", "fast"):
        cluster.create_app(app)
        src = cluster.new_repo(f"src-{app}")
        assert cluster.git("push", cluster.remote(app), "feature", cwd=src).returncode == 0
    repo = cluster.repo("slow")
    # upload-pack advertises its refs and waits for the client's wants forever
    hung = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'slow.git'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert b"refs/heads/feature" in read_advertisement(hung.stdout)
        wait_for(lambda: git_children(repo), what="git-upload-pack for slow.git")
        t0 = time.monotonic()
        r = cluster.git("clone", "-q", "-b", "feature", cluster.remote("fast"),
                        cluster.tmp / "fast-clone")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 < 10
        assert git_children(repo), "the stalled session ended on its own"
    finally:
        hung.kill()  # the client vanishes without a word
        hung.wait()
    wait_for(lambda: not git_children(repo), what="the stalled session's git to be killed")
    wait_for(lambda: "ssh git ended" in cluster.log() and "client=gone" in cluster.log(),
             what="the log line of the ended session")


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_client_that_reads_slowly_is_throttled_not_buffered(cluster):
    cluster.register(cluster.key)
    cluster.create_app("big")
    blob = random.Random(7).randbytes(32 * 1024 * 1024)
    src = cluster.new_repo("src", files={"blob.bin": blob})
    r = cluster.git("push", cluster.remote("big"), "feature", cwd=src, timeout=300)
    assert r.returncode == 0, r.stderr
    # a fetch by hand (protocol v0, no side-band): upload-pack writes the
    # whole pack at once, and this client reads none of it for a while
    want = cluster.head(src)
    p = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'big.git'"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = bytearray(read_advertisement(p.stdout))
        before = rss_kb(cluster.gr.pid)
        p.stdin.write(f"0032want {want}\n".encode() + b"0000" + b"0009done\n")
        p.stdin.close()
        time.sleep(3)
        grown = rss_kb(cluster.gr.pid) - before
        # the pack waits in git's pipe and the client's window, not in the daemon
        assert grown < 12 * 1024, f"the daemon grew by {grown} kB with a stalled reader"
        while chunk := p.stdout.read1(1 << 20):
            got += chunk
        assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert len(got) > len(blob)


def test_stop_ends_running_sessions(cluster):
    cluster.register(cluster.key)
    cluster.create_app("slow")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("slow"), "feature", cwd=src).returncode == 0
    repo = cluster.repo("slow")
    hung = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'slow.git'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert b"refs/heads/feature" in read_advertisement(hung.stdout)
        wait_for(lambda: git_children(repo), what="git-upload-pack")
        t0 = time.monotonic()
        assert cluster.gr.stop() == 0
        assert time.monotonic() - t0 < 15
        assert hung.wait(timeout=15) != 0
    finally:
        if hung.poll() is None:
            hung.kill()
            hung.wait()
    assert not git_children(repo)
    cluster.gr.check_sanitizers()


def test_stop_lets_a_push_under_way_finish(cluster):
    cluster.register(cluster.key)
    cluster.create_app("slow")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("slow"), "feature", cwd=src).returncode == 0
    # the app's repository runs a slow hook of the test's own
    started = cluster.tmp / "hook-started"
    hooks = cluster.tmp / "hooks"
    hooks.mkdir()
    (hooks / "pre-receive").write_text(f"#!/bin/sh\ntouch '{started}'\nsleep 3\necho hook done\n")
    (hooks / "pre-receive").chmod(0o755)
    repo = cluster.repo("slow")
    assert cluster.git("config", "-f", repo / "config", "core.hooksPath", hooks).returncode == 0
    (src / "more").write_text("more\n")
    cluster.git("add", "more", cwd=src)
    cluster.git("commit", "-q", "-m", "more", cwd=src)
    push = subprocess.Popen(["git", "push", cluster.remote("slow"), "feature"], cwd=src,
                            env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(started.exists, what="the hook to start")
        cluster.gr.proc.send_signal(signal.SIGTERM)
        # no new connections meanwhile
        def refused():
            try:
                socket.create_connection(("127.0.0.1", cluster.port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:
                return False  # it was in the backlog as the listener closed: ask again
        wait_for(refused, timeout=5, what="the listener to close")
        _, err = push.communicate(timeout=60)
        assert push.returncode == 0, err
        assert "remote: hook done" in err
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    assert cluster.gr.proc.wait(timeout=30) == 0
    assert cluster.remote_refs("slow") == {"refs/heads/feature": cluster.head(src)}
    assert "ssh stop: waiting for pushes under way" in cluster.log()


def test_an_unknown_key_is_named_to_the_user(cluster):
    cluster.register(cluster.key)
    cluster.create_app("shop")
    other = cluster.make_key("id_other")
    src = cluster.new_repo("src")
    # ssh as users run it (LogLevel INFO) shows the server's message
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src, key=other,
                    ssh_extra=["-o", "LogLevel=INFO"])
    assert r.returncode != 0
    fp = fingerprint(f"{other}.pub")
    assert f"pier: key {fp} is not registered: add it with 'pier keys add'" in r.stderr, r.stderr
    assert "Permission denied (publickey)" in r.stderr, r.stderr


def test_a_connection_may_offer_six_keys(cluster):
    cluster.register(cluster.key)
    cluster.create_app("shop")
    others = [cluster.make_key(f"id_other{i}") for i in range(7)]

    def with_keys(keys):
        extra = [a for k in keys for a in ("-i", str(k))]
        return cluster.ssh("git-upload-pack 'shop.git'", extra=extra, input="0000")

    # five unknown keys, then the registered one: in (a user with several keys)
    p = with_keys([*others[:5], cluster.key])
    assert p.returncode == 0, p.stderr
    # seven unknown keys first: the connection ends before the good one
    p = with_keys([*others, cluster.key])
    assert p.returncode == 255, p.stderr
    assert "ssh too many keys offered" in cluster.log()


def test_key_answers_are_kept_a_few_seconds(cluster):
    fp = cluster.register(cluster.key)
    cluster.create_app("shop")
    p = cluster.ssh("git-upload-pack 'shop.git'", input="0000")
    assert p.returncode == 0, p.stderr
    status, _ = cluster.ctl.delete("/keys/" + fp.replace("/", "_").replace("+", "-"))
    assert status == 200
    removed = time.monotonic()
    # the receiver asked about this key a moment ago: it does not ask again
    p = cluster.ssh("git-upload-pack 'shop.git'", input="0000")
    if time.monotonic() - removed < 4:
        assert p.returncode == 0, p.stderr
    # and takes the removal within 5 s
    wait_for(lambda: cluster.ssh("git-upload-pack 'shop.git'", input="0000").returncode == 255,
             timeout=10, what="the removed key to be refused")
    assert time.monotonic() - removed < 9


def test_a_cancelled_push_gives_the_hook_time_to_clean_up(cluster):
    """The pusher hangs up: git's process group gets SIGTERM, and what runs
    in it (the hook, cancelling its build) has 5 s before SIGKILL, even
    though git-receive-pack itself dies at once."""
    cluster.register(cluster.key)
    cluster.create_app("slow")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("slow"), "feature", cwd=src).returncode == 0
    started, cleaned = cluster.tmp / "hook-started", cluster.tmp / "hook-cleaned"
    hooks = cluster.tmp / "hooks"
    hooks.mkdir()
    # (git-receive-pack dies first: what the hook writes then hits a closed
    # pipe, and a shell that says "Terminated" would die of SIGPIPE; the
    # real hook handles SIGPIPE too)
    (hooks / "pre-receive").write_text(
        "#!/bin/sh\n"
        "trap '' PIPE\n"
        f"trap 'sleep 1; echo cleaned > {cleaned}; exit 1' TERM\n"
        f"touch {started}\n"
        "sleep 60 &\n"
        "wait $!\n")
    (hooks / "pre-receive").chmod(0o755)
    repo = cluster.repo("slow")
    assert cluster.git("config", "-f", repo / "config", "core.hooksPath", hooks).returncode == 0
    (src / "more").write_text("more\n")
    cluster.git("add", "more", cwd=src)
    cluster.git("commit", "-q", "-m", "more", cwd=src)
    push = subprocess.Popen(["git", "push", cluster.remote("slow"), "feature"], cwd=src,
                            env=cluster.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(started.exists, what="the hook to start")
        os.killpg(push.pid, signal.SIGKILL)
        push.wait()
        wait_for(lambda: "client=gone" in cluster.log(), what="the receiver to see the client go")
        wait_for(cleaned.exists, timeout=10, what="the hook's TERM trap to finish")
    finally:
        if push.poll() is None:
            os.killpg(push.pid, signal.SIGKILL)
            push.wait()
    assert cleaned.read_text() == "cleaned\n"
    wait_for(lambda: not git_children(repo), what="git to be gone")
    assert cluster.remote_refs("slow")["refs/heads/feature"] != cluster.head(src)


@pytest.fixture
def stall_cluster(start_pierd, pier_store, tmp_path):
    return Cluster(start_pierd, pier_store, tmp_path,
                   env={**os.environ, "PIER_SSH_STALL_TIMEOUT": "3"})


def test_a_stopped_client_is_taken_for_gone(stall_cluster):
    """A pusher's ssh stopped (Ctrl-Z) answers no keepalive: after the stall
    timeout (3 s here) its git is stopped, and with it the push's lock."""
    cluster = stall_cluster
    cluster.register(cluster.key)
    cluster.create_app("slow")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("slow"), "feature", cwd=src).returncode == 0
    repo = cluster.repo("slow")
    # a live client that says nothing for longer than the timeout stays:
    # it answers the keepalives
    quiet = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'slow.git'"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert b"refs/heads/feature" in read_advertisement(quiet.stdout)
        time.sleep(6)
        assert git_children(repo), "a quiet but live client was cut"
        quiet.stdin.write(b"0000")  # "nothing wanted": it ends well
        quiet.stdin.close()
        assert quiet.wait(timeout=15) == 0, quiet.stderr.read()
    finally:
        if quiet.poll() is None:
            quiet.kill()
            quiet.wait()

    hung = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'slow.git'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert b"refs/heads/feature" in read_advertisement(hung.stdout)
        wait_for(lambda: git_children(repo), what="git-upload-pack for slow.git")
        hung.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        wait_for(lambda: not git_children(repo), timeout=20, what="the stopped client's git "
                 "to be stopped")
        assert time.monotonic() - t0 > 2
        wait_for(lambda: "client=stalled" in cluster.log(), what="the log line")
    finally:
        hung.send_signal(signal.SIGCONT)
        hung.kill()
        hung.wait()


def test_a_client_that_stops_reading_is_taken_for_gone(stall_cluster):
    """A client whose window stays shut for the stall timeout (it answers
    keepalives, but reads nothing) is cut too."""
    cluster = stall_cluster
    cluster.register(cluster.key)
    cluster.create_app("big")
    blob = random.Random(8).randbytes(8 * 1024 * 1024)
    src = cluster.new_repo("src", files={"blob.bin": blob})
    r = cluster.git("push", cluster.remote("big"), "feature", cwd=src, timeout=300)
    assert r.returncode == 0, r.stderr
    repo = cluster.repo("big")
    want = cluster.head(src)
    p = subprocess.Popen([*cluster.ssh_args(), "git@127.0.0.1", "git-upload-pack 'big.git'"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_advertisement(p.stdout)
        p.stdin.write(f"0032want {want}\n".encode() + b"0000" + b"0009done\n")
        p.stdin.flush()
        # nothing more is read from p.stdout
        wait_for(lambda: "client=stalled" in cluster.log(), timeout=30, what="the stall")
        wait_for(lambda: not git_children(repo), what="git to be stopped")
    finally:
        p.kill()
        p.wait()


def test_discovery_names_a_reachable_ssh_address(start_pierd, pier_store, tmp_path):
    cluster = Cluster(start_pierd, pier_store, tmp_path)
    cluster.gr.stop()
    gr = cluster.start(ssh_host="0.0.0.0", args=["--store", pier_store])
    addr = f"127.0.0.1:{gr.port}"
    inst = "/pier/v1/services/gitreceive/" + hashlib.md5(f"http-{addr}".encode()).hexdigest()
    wait_for(lambda: store_get(pier_store, inst) is not None, what="the registration")
    rec = json.loads(store_get(pier_store, inst))
    assert rec["addr"] == addr
    # listening on every address, it is reached where HTTP is
    assert rec["meta"]["ssh"] == f"127.0.0.1:{cluster.port}"
