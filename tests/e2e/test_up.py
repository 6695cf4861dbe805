"""`make up`'s script end to end: `scripts/up BUILD_DIR` starts the store and
discoverd in the background with their PIDs and logs under $PIER_HOME, says
where they are and how to try them, leaves running daemons alone when run
again, restarts what died, and `scripts/up --stop` stops both.

The daemons outlive the script, so nothing else stops them for us: every
test stops whatever the PID files (and what the script printed) name, in a
finally block, also when it fails. This process is made their child
subreaper and reaps them, as init would, so a stopped daemon does not linger
as a zombie that `kill -0` still sees."""

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, http_status, sanitizer_reports

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "scripts" / "up"
PR_SET_CHILD_SUBREAPER = 36
NAMES = ("store", "discoverd")


def alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


class Up:
    """One $PIER_HOME with its own ports, and the daemons started there."""

    def __init__(self, build, home):
        self.build = build
        self.home = home
        self.store_addr = f"127.0.0.1:{free_port()}"
        self.discoverd_addr = f"127.0.0.1:{free_port()}"
        self.store_url = f"http://{self.store_addr}"
        self.discoverd_url = f"http://{self.discoverd_addr}"
        self.env = dict(os.environ, PIER_HOME=str(home), PIER_STORE_LISTEN=self.store_addr,
                        PIER_DISCOVERD_LISTEN=self.discoverd_addr,
                        UBSAN_OPTIONS="print_stacktrace=1")
        self.seen = set()  # every daemon PID ever named, to stop at the end
        self._done = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True)

    def run(self, *args, timeout=30):
        p = subprocess.run([str(UP), *map(str, args)], env=self.env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        self.seen.update(int(x) for x in re.findall(r"\(pid (\d+)\)", p.stdout))
        self.seen.update(self.pids().values())
        return p

    def pids(self):
        """The PID in each PID file that exists."""
        out = {}
        for name in NAMES:
            try:
                out[name] = int((self.home / f"{name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                pass
        return out

    def pierds(self):
        """The PIDs of pierd processes that listen on this Up's ports."""
        exe = str(self.build / "pierd")
        found = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or not alive(int(d.name)):
                continue
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            argv = [a.decode(errors="replace") for a in argv]
            if argv and argv[0] == exe and (self.store_addr in argv or
                                            self.discoverd_addr in argv):
                found.add(int(d.name))
        return found

    def log(self, name):
        try:
            return (self.home / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _reap(self):
        while not self._done.wait(0.02):
            for pid in list(self.seen):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def start_reaping(self):
        self.seen.update(self.pids().values())
        self._reaper.start()

    def cleanup(self):
        """Stops every daemon this test saw, by PID."""
        self.seen.update(self.pids().values())
        self.seen.update(self.pierds())
        left = sorted(p for p in self.seen if alive(p))
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in left:
            if not wait_gone(pid):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        self._done.set()
        self._reaper.join()


@pytest.fixture
def up(pier_build, tmp_path):
    if not (pier_build / "pierd").exists():
        pytest.fail(f"{pier_build / 'pierd'} has not been built", pytrace=False)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    u = Up(pier_build, tmp_path / "pier-home")
    u.start_reaping()
    try:
        yield u
    finally:
        u.cleanup()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for name in NAMES:
            reports = sanitizer_reports(u.log(name))
            if reports:
                pytest.fail(f"{name} reported a sanitizer error:\n{u.log(name)[-8000:]}",
                            pytrace=False)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def started(p, name):
    """The PID `scripts/up` says it started name with."""
    m = re.search(rf"^started {name} \(pid (\d+)\) on (\S+)$", p.stdout, re.M)
    assert m, f"no 'started {name}' line in:\n{p.stdout}\n{p.stderr}"
    return int(m.group(1)), m.group(2)


def shell(cmd, timeout=10):
    """Runs one line the script printed, as the user would paste it."""
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)


def test_up_try_it_again_and_stop(up):
    p = ok(up.run(up.build))
    store_pid, store_url = started(p, "store")
    disc_pid, disc_url = started(p, "discoverd")
    assert (store_url, disc_url) == (up.store_url, up.discoverd_url)
    assert up.pids() == {"store": store_pid, "discoverd": disc_pid}
    assert up.pierds() == {store_pid, disc_pid}
    assert http_status(up.store_url + "/.well-known/status") == 200
    assert http_status(up.discoverd_url + "/.well-known/status") == 200
    assert (up.home / "store").is_dir()

    # The next steps name both URLs and where the logs are.
    assert f"store      {up.store_url}" in p.stdout
    assert f"export PIER_STORE={up.store_url}" in p.stdout
    assert f"discoverd  {up.discoverd_url}" in p.stdout
    assert f"logs and PIDs in {up.home}" in p.stdout
    assert p.stderr == ""

    # The curl lines it prints work as pasted: register, list, watch.
    curls = [ln.strip() for ln in p.stdout.splitlines() if ln.strip().startswith("curl ")]
    assert len(curls) == 3, p.stdout
    put, get, watch = curls
    assert "-X PUT" in put and f"{up.discoverd_url}/services/web/instances/one" in put
    r = shell(put)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["addr"] == "127.0.0.1:8080", r.stdout
    r = shell(get)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(i["id"], i["addr"]) for i in listed] == [("one", "127.0.0.1:8080")], r.stdout

    # The watch streams events; its first data line holds the instance.
    w = subprocess.Popen(["bash", "-c", f"exec {watch}"], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        for line in w.stdout:
            if line.startswith("data:"):
                break
        assert '"one"' in line and "127.0.0.1:8080" in line, line
    finally:
        w.kill()
        w.wait()

    # Running it again leaves both alone and starts nothing.
    p2 = ok(up.run(up.build))
    assert f"store already running (pid {store_pid})" in p2.stdout
    assert f"discoverd already running (pid {disc_pid})" in p2.stdout
    assert "started" not in p2.stdout
    assert up.pids() == {"store": store_pid, "discoverd": disc_pid}
    assert up.pierds() == {store_pid, disc_pid}
    assert json.loads(shell(get).stdout)[0]["id"] == "one"

    # --stop stops both, by PID, and forgets them.
    p3 = ok(up.run("--stop"))
    assert p3.stdout.splitlines() == [f"stopped discoverd (pid {disc_pid})",
                                      f"stopped store (pid {store_pid})"]
    assert wait_gone(store_pid, 1) and wait_gone(disc_pid, 1)
    assert up.pids() == {}
    assert up.pierds() == set()
    assert http_status(up.store_url + "/.well-known/status") is None
    assert http_status(up.discoverd_url + "/.well-known/status") is None
    # Both were stopped with SIGTERM and exited cleanly (no sanitizer report:
    # the fixture checks the logs).
    assert "level=error" not in up.log("store") + up.log("discoverd")

    # Stopping again has nothing to do.
    p4 = ok(up.run("--stop"))
    assert p4.stdout == "" and p4.stderr == ""


def test_up_restarts_what_died(up):
    p = ok(up.run(up.build))
    store_pid, _ = started(p, "store")
    disc_pid, _ = started(p, "discoverd")
    os.kill(disc_pid, signal.SIGTERM)
    assert wait_gone(disc_pid)

    p = ok(up.run(up.build))
    assert f"store already running (pid {store_pid})" in p.stdout
    new_pid, _ = started(p, "discoverd")
    assert new_pid != disc_pid
    assert up.pids() == {"store": store_pid, "discoverd": new_pid}
    assert up.pierds() == {store_pid, new_pid}
    assert http_status(up.discoverd_url + "/.well-known/status") == 200
    ok(up.run("--stop"))
    assert up.pierds() == set()


def test_missing_build_dir(up, tmp_path):
    missing = tmp_path / "no-build"
    p = up.run(missing)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == f"scripts/up: {missing}/pierd is missing; run 'make build' first\n"
    assert not up.home.exists()
    assert up.pierds() == set()


def test_port_taken_by_something_else_fails_clearly(up):
    """Something that accepts connections but is not pier holds the store's
    port: the store cannot start, the script says so with its log, and
    discoverd is not started."""
    host, port = up.store_addr.split(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(16)
        p = up.run(up.build, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"scripts/up: store did not start; the end of {up.home}/store.log says:" in p.stderr
    assert "cannot listen on" in p.stderr
    assert "started" not in p.stdout
    assert up.pierds() == set()
    assert "discoverd" not in up.pids()


def test_port_taken_by_another_http_server_is_not_mistaken_for_the_store(up):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    host, port = up.store_addr.split(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        p = up.run(up.build)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
    assert p.returncode == 1, p.stdout
    assert f"something else already answers on http://{up.store_addr}" in p.stderr
    assert "PIER_STORE_LISTEN" in p.stderr
    assert "started" not in p.stdout
