"""Daemons started as jobs (issue 7, part B): a daemon given PORT (and
EXTERNAL_IP) by the host agent listens there without --listen; a git
receiver started with --store but without --controller and --blobstore
finds both in discovery at each push, and refuses a push, changing nothing,
when the controller is not registered; a controller stopped with SIGTERM
hands its leadership over at once while the requests it serves finish.

The push tests are real: store, host agent (crun, the host's binds),
scheduler, controller, blobstore, receiver and git (test_git_hook.Cluster).
"""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import Daemon, free_port, http_status, sanitizer_reports
from controller_util import Controller
from test_controller_events import SSE, make_app
from test_git_hook import DOMAIN, KEY, cluster, get, lines_in_order  # noqa: F401 (cluster: the fixture)
from test_host import kv_range

NOT_REGISTERED = ("the controller is not registered in discovery (service controller); "
                  "is it running? Try: pier status")
ZEROS = "0" * 40


def pierd_daemon(pier_build, tmp_path, name, args, env):
    """A pierd subcommand started with exactly args (no --listen added)."""
    return Daemon(name, [pier_build / "pierd", *args], tmp_path / name,
                  env={**os.environ, **env})


def services(store, service):
    """The instances of service in the store, as JSON."""
    return [json.loads(v) for _, v, _ in kv_range(store, f"/pier/v1/services/{service}/")]


# ---- PORT from the host agent ----

def test_a_daemon_in_a_job_listens_on_its_port(pier_build, pier_store, tmp_path):
    port = free_port()
    d = pierd_daemon(pier_build, tmp_path, "discoverd-job", ["discoverd", "--store", pier_store],
                     {"PORT": str(port), "EXTERNAL_IP": "127.0.0.1"})
    try:
        d.start(lambda: http_status(f"http://127.0.0.1:{port}/.well-known/status") == 200)
        assert f"addr=127.0.0.1:{port}" in d.stderr_text()
    finally:
        assert d.stop() == 0
        d.check_sanitizers()

    # an explicit --listen wins over PORT
    port2 = free_port()
    d = pierd_daemon(pier_build, tmp_path, "discoverd-flag",
                     ["discoverd", "--store", pier_store, "--listen", f"127.0.0.1:{port2}"],
                     {"PORT": str(port)})
    try:
        d.start(lambda: http_status(f"http://127.0.0.1:{port2}/.well-known/status") == 200)
        assert http_status(f"http://127.0.0.1:{port}/.well-known/status") is None
    finally:
        assert d.stop() == 0
        d.check_sanitizers()

    # a bad PORT is an error naming it
    r = subprocess.run([pier_build / "pierd", "discoverd", "--store", pier_store],
                       env={**os.environ, "PORT": "70000"}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert 'PORT "70000" in the environment is not a port' in r.stderr, r.stderr
    assert not sanitizer_reports(r.stderr)


def test_a_receiver_in_a_job_serves_http_on_its_port(pier_build, pier_store, tmp_path):
    """gitreceive's --http defaults to --listen, which defaults to PORT."""
    port = free_port()
    d = pierd_daemon(pier_build, tmp_path, "gitreceive-job",
                     ["gitreceive", "--dir", tmp_path / "git", "--key", KEY, "--ssh", "off",
                      "--store", pier_store], {"PORT": str(port)})
    try:
        d.start(lambda: http_status(f"http://127.0.0.1:{port}/.well-known/status") == 200)
        # It registers right after it serves: wait for that, then compare.
        deadline = time.monotonic() + 10
        while not services(pier_store, "gitreceive") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s["addr"] for s in services(pier_store, "gitreceive")] == [f"127.0.0.1:{port}"]
    finally:
        assert d.stop() == 0
        d.check_sanitizers()


def test_a_receiver_without_a_store_needs_the_controller(pier_build, tmp_path):
    r = subprocess.run([pier_build / "pierd", "gitreceive", "--dir", tmp_path / "git",
                        "--key", KEY, "--blobstore", "http://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if not k.startswith("PIER_")})
    assert r.returncode == 2
    assert "needs --controller URL (or --store URL" in r.stderr, r.stderr


# ---- the controller's SIGTERM ----

def test_sigterm_hands_the_controller_leadership_over_at_once(start_pierd, pier_store):
    a = Controller(start_pierd, pier_store, key=KEY, name="controller-a")
    b = Controller(start_pierd, pier_store, key=KEY, name="controller-b")
    deadline = time.monotonic() + 10  # each registers once it serves
    while sorted(s["addr"] for s in services(pier_store, "controller")) != \
            sorted([a.url[7:], b.url[7:]]):
        assert time.monotonic() < deadline, services(pier_store, "controller")
        time.sleep(0.05)
    stream = SSE(a, "/events?object_types=app")  # in progress when A is told to stop
    assert stream.status == 200
    t0 = time.monotonic()
    a.daemon.proc.send_signal(signal.SIGTERM)
    # A's lease is revoked: B leads well within the TTL (10 s) ...
    while [s["addr"] for s in services(pier_store, "controller")] != [b.url[7:]]:
        assert time.monotonic() - t0 < 3, services(pier_store, "controller")
        time.sleep(0.05)
    # ... and A's endless stream ends cleanly at once (its client resumes
    # elsewhere: docs/controller.md), so A drains and exits 0 within a
    # second or two, not after its 10 s drain limit.
    ended = False
    while not ended:
        assert time.monotonic() - t0 < 3, f"A's stream still open: {stream.raw[-200:]!r}"
        try:
            stream._recv(0.5)
        except socket.timeout:
            continue
        except (EOFError, ConnectionResetError):
            ended = True
        ended = ended or stream.raw.endswith(b"0\r\n\r\n")
    stream.close()
    assert a.daemon.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5
    # B, the leader now, records events.
    app = make_app(b, "after-a")
    assert app["id"]
    assert "leadership released" in a.daemon.stderr_text()


# ---- the receiver without --controller and --blobstore ----

def test_the_hook_refuses_a_push_when_the_controller_is_not_registered(pier_build, pier_store,
                                                                       tmp_path):
    env = {**os.environ, "PIER_APP": "ghost", "PIER_KEY": KEY, "PIER_GIT_DIR": str(tmp_path),
           "PIER_STORE": pier_store, "PIER_CONTROLLER": "", "PIER_BLOBSTORE": ""}
    r = subprocess.run([pier_build / "pierd", "gitreceive", "hook"], env=env, cwd=tmp_path,
                       input=f"{ZEROS} {'1' * 40} refs/heads/main\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert NOT_REGISTERED in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert not sanitizer_reports(r.stderr)


def test_the_hook_refuses_a_push_when_the_blobstore_is_not_registered(start_pierd, pier_build,
                                                                      pier_store, tmp_path):
    ctl = Controller(start_pierd, pier_store, key=KEY)
    make_app(ctl, "noblob")
    env = {**os.environ, "PIER_APP": "noblob", "PIER_KEY": KEY, "PIER_GIT_DIR": str(tmp_path),
           "PIER_STORE": pier_store, "PIER_CONTROLLER": "", "PIER_BLOBSTORE": ""}
    r = subprocess.run([pier_build / "pierd", "gitreceive", "hook"], env=env, cwd=tmp_path,
                       input=f"{ZEROS} {'1' * 40} refs/heads/main\n", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert ("the blobstore is not registered in discovery (service blobstore); is it running? "
            "Try: pier status") in r.stdout, (r.stdout, r.stderr)
    assert not sanitizer_reports(r.stderr)


def git(*args, cwd, home):
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_push_is_refused_when_no_controller_is_registered(start_pierd, pier_store, tmp_path):
    gr = start_pierd("gitreceive", name="gitreceive",
                     args=["--dir", tmp_path / "git", "--key", KEY, "--ssh", "off",
                           "--store", pier_store])
    src = tmp_path / "src"
    src.mkdir()
    assert git("init", "-q", "-b", "main", cwd=src, home=tmp_path).returncode == 0
    (src / "hello.txt").write_text("hi\n")
    git("add", "-A", cwd=src, home=tmp_path)
    assert git("commit", "-qm", "one", cwd=src, home=tmp_path).returncode == 0
    host = gr.url.removeprefix("http://")
    r = git("push", f"http://pier:{KEY}@{host}/shop.git", "HEAD:refs/heads/main", cwd=src,
            home=tmp_path)
    assert r.returncode != 0
    assert f"remote: {NOT_REGISTERED}" in r.stderr, r.stderr
    # nothing changed: no repository was made
    assert list((tmp_path / "git" / "repos").iterdir()) == []



def test_a_push_finds_the_controller_and_the_blobstore_in_discovery(cluster):
    c = cluster
    blob = c.start_pierd("blobstore", name="blobstore-found",
                         args=["--dir", c.tmp / "blobs-found", "--key", KEY, "--store", c.store])
    gr = c.start_pierd("gitreceive", name="gitreceive-found",
                       args=["--dir", c.tmp / "gitreceive-found", "--key", KEY, "--ssh", "off",
                             "--store", c.store])
    app = c.create_app("found", env={"BUILDPACK_URL": c.bp_url})
    src = c.repo("src", {"hello.txt": "one\n"})
    r = c.push(src, "found", gr=gr)
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, "-----> Receiving push",
                   f"       Blobstore: {blob.url} (from discovery)",
                   f"       Controller: {c.ctl.url} (from discovery)", "=====> found deployed")
    rel = c.release("found")
    assert get(c.web_url(app, rel["id"]) + "/hello.txt") == "one\n"
    # the post-receive hook archived the repository to that blobstore
    deadline = time.monotonic() + 20
    while not list((c.tmp / "blobs-found").rglob(f"*{app['id']}*")):
        assert time.monotonic() < deadline, "no archive in the discovered blobstore"
        time.sleep(0.2)

    # The controller is redeployed elsewhere: the next push finds the new
    # one (which took the deployer over at once) and no stale address.
    old = c.ctl
    c.ctl = Controller(c.start_pierd, c.store, key=KEY, name="controller-2",
                       args=["--domain", DOMAIN])
    assert old.daemon.stop() == 0
    time.sleep(2.5)  # longer than the receiver keeps an address
    c.commit(src, {"hello.txt": "two\n"})
    r = c.push(src, "found", gr=gr)
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, f"       Controller: {c.ctl.url} (from discovery)",
                   "=====> found deployed")
    rel = c.release("found")
    assert get(c.web_url(app, rel["id"]) + "/hello.txt") == "two\n"

    # No controller at all: refused, nothing changes.
    repo = c.repo_dir("found", receiver="gitreceive-found")
    head = c.git("rev-parse", "refs/heads/main", cwd=repo).stdout.strip()
    c.ctl.daemon.stop()
    time.sleep(2.5)
    c.commit(src, {"hello.txt": "three\n"})
    r = c.push(src, "found", gr=gr)
    assert r.returncode != 0
    assert NOT_REGISTERED in r.stderr, r.stderr
    assert c.git("rev-parse", "refs/heads/main", cwd=repo).stdout.strip() == head
