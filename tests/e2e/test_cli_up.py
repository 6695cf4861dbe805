"""`pier up`, `pier down` and `pier status` on a state dir of their own:
the state dir and the key made with the right modes, STATE/cluster.json
kept and a disagreeing flag refused, the store and the host agent run as
daemons with pid files and logs (the key in their environment, never on
their command line), a second `pier up` leaves them alone, and `pier down`
stops them and kills the host's jobs without changing their records, so the
next `pier up` finds them lost.

These runs use a manifest with no apps (PIER_MANIFEST), so they test what
`pier up` itself does; test_up.py runs the whole bootstrap. Everything a
test starts is stopped at the end, also on failure: `pier down`, then
whatever the pid files and the job directories still name. As root: the
host agent runs containers."""

import base64
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cluster_util import delete_containers
from conftest import free_port, free_port_range, http_status, sanitizer_reports, store_get


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_gone(pid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


class Cluster:
    def __init__(self, build, tmp_path):
        self.build = build
        self.state = tmp_path / "state"
        self.config = tmp_path / "config.json"
        self.base = free_port_range(1000)[0]
        self.manifest = tmp_path / "manifest.json"
        self.manifest.write_text('{"version":1,"apps":[]}\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
        self.env.update(PIER_CONFIG=str(self.config), PIER_MANIFEST=str(self.manifest),
                        PIER_KEY="not-the-cluster-key", UBSAN_OPTIONS="print_stacktrace=1")

    def pier(self, *args, timeout=180):
        p = subprocess.run([str(self.build / "pier"), *map(str, args)], env=self.env,
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        assert not sanitizer_reports(p.stderr), p.stderr
        return p

    def up(self, *args):
        return self.pier("up", "--state-dir", self.state, *args)

    def down(self):
        return self.pier("down", "--state-dir", self.state)

    def pids(self):
        out = {}
        for name in ("store", "host"):
            try:
                out[name] = int((self.state / f"{name}.pid").read_text())
            except (OSError, ValueError):
                pass
        return out

    def processes(self):
        """Every process whose command line names this state dir (daemons, shims)."""
        mark = str(self.state).encode()
        found = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and any(mark in a for a in cmdline(int(d.name))) \
                    and alive(int(d.name)):
                found.add(int(d.name))
        return found

    def host_id(self):
        try:
            return (self.state / "host" / "host-id").read_text().strip()
        except OSError:
            return None

    def job_pids(self):
        """The shims and container inits of this host's job directories."""
        out = set()
        jobs = self.state / "host" / "jobs"
        for d in (jobs.iterdir() if jobs.is_dir() else []):
            for f in ("shim.pid", "container.pid"):
                try:
                    pid = int((d / f).read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
                if alive(pid):
                    out.add(pid)
        return out

    def cleanup(self):
        try:
            self.down()
        finally:
            left = (set(self.pids().values()) | self.processes() | self.job_pids())
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            host_id = self.host_id()
            if host_id:
                jobs = self.state / "host" / "jobs"
                delete_containers(host_id, [d.name for d in jobs.iterdir()] if jobs.is_dir() else [])


@pytest.fixture
def cluster(pier_build, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("pier up starts the host agent, which runs as root", pytrace=False)
    c = Cluster(pier_build, tmp_path)
    try:
        yield c
    finally:
        c.cleanup()
        for name in ("store", "host"):
            try:
                text = (c.state / f"{name}.log").read_text(errors="replace")
            except FileNotFoundError:
                continue
            if sanitizer_reports(text):
                pytest.fail(f"{name} reported a sanitizer error:\n{text[-8000:]}", pytrace=False)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def test_up_makes_the_state_dir_and_runs_the_daemons(cluster):
    b = cluster.base
    p = ok(cluster.up("--port-base", b))
    m = {name: re.search(rf"^{name}: started, pid (\d+), (\S+)$", p.stdout, re.M)
         for name in ("store", "host")}
    assert all(m.values()), p.stdout + p.stderr
    pids = {name: int(x.group(1)) for name, x in m.items()}
    assert m["store"].group(2) == f"http://127.0.0.1:{b}"
    assert m["host"].group(2) == f"http://127.0.0.1:{b + 1}"
    assert cluster.pids() == pids
    # What it waited for, on stderr.
    assert f"store: waiting for http://127.0.0.1:{b}/.well-known/status" in p.stderr

    st = cluster.state
    assert stat.S_IMODE(st.stat().st_mode) == 0o700
    key = (st / "key").read_text()
    assert re.fullmatch(r"[0-9a-f]{32}\n", key), key
    key = key.strip()
    assert stat.S_IMODE((st / "key").stat().st_mode) == 0o600
    assert [f.name for f in st.iterdir() if f.name.startswith("key")] == ["key"]
    host_id = cluster.host_id()
    assert re.fullmatch(r"h[0-9a-f]{12}", host_id or ""), host_id
    cj = json.loads((st / "cluster.json").read_text())
    assert cj["name"] == "default" and cj["domain"] == "pier.localhost"
    assert cj["listen_ip"] == "127.0.0.1" and cj["host_id"] == host_id
    assert cj["ports"] == {"store": b, "host": b + 1, "http": b + 2, "https": b + 3,
                           "ssh": b + 4, "jobs": f"{b + 100}-{b + 999}"}

    # Both are pierd of this state dir, with the key in their environment
    # (not the caller's) and not on their command line; they log there.
    for name, pid in pids.items():
        argv = cmdline(pid)
        assert os.path.basename(argv[0]) == b"pierd" and argv[1] == name.encode(), argv
        assert str(st / name).encode() in argv
        assert key.encode() not in b" ".join(argv)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"PIER_KEY={key}".encode() in environ
        assert b"PIER_KEY=not-the-cluster-key" not in environ
        assert (st / f"{name}.log").stat().st_size > 0
    assert http_status(f"http://127.0.0.1:{b}/.well-known/status") == 200
    assert http_status(f"http://127.0.0.1:{b + 1}/.well-known/status") == 200
    assert http_status(f"http://127.0.0.1:{b + 1}/host/jobs") == 401  # the key guards it

    # The CLI config has the cluster, as the default, through the router's
    # https port with the cluster's CA (the bootstrap made it) and its pin.
    cfg = json.loads(cluster.config.read_text())
    assert cfg["default"] == "default"
    ca = (st / "ca" / "ca.crt").read_text()
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=ca.encode(),
                         capture_output=True, check=True).stdout
    pin = base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert cfg["clusters"] == [{"name": "default", "url": f"https://controller.pier.localhost:{b + 3}",
                                "key": key, "git_url": f"https://git.pier.localhost:{b + 3}",
                                "ca_cert": ca, "tls_pin": pin}]
    assert f"TLS pin     {pin}" in p.stdout
    assert stat.S_IMODE(cluster.config.stat().st_mode) == 0o600
    assert "\nPoint the CLI at the cluster" in p.stdout
    assert f"curl -s http://hello.pier.localhost:{b + 2}/" in p.stdout

    # Again: found, left alone, the same key, the config untouched.
    before = cluster.config.read_text()
    p2 = ok(cluster.up())
    for name, pid in pids.items():
        assert re.search(rf"^{name}: running, pid {pid}, ", p2.stdout, re.M), p2.stdout
    assert f'found the cluster "default" running in {st}' in p2.stdout
    assert "started" not in p2.stdout
    assert cluster.pids() == pids and all(alive(x) for x in pids.values())
    assert (st / "key").read_text().strip() == key
    assert cluster.config.read_text() == before
    assert "is up to date" in p2.stdout

    # A flag that disagrees with cluster.json is refused, naming both.
    for args, words in ((["--domain", "other.localhost"], ["--domain other.localhost",
                                                           "domain pier.localhost"]),
                        (["--port-base", b + 1000], [f"--port-base {b + 1000}",
                                                     f"store {b}, host {b + 1}"]),
                        (["--name", "other"], ["--name other", "name default"])):
        r = cluster.up(*args)
        assert r.returncode == 1, r.stdout + r.stderr
        for w in words + [str(st / "cluster.json")]:
            assert w in r.stderr, r.stderr
        assert "hint:" in r.stderr
        assert r.stdout == ""
    assert cluster.pids() == pids
    assert json.loads((st / "cluster.json").read_text()) == cj

    # Down: both stopped by SIGTERM, nothing of the state dir left running.
    p3 = ok(cluster.down())
    assert p3.stdout.splitlines() == [f"stopped host (pid {pids['host']})",
                                      f"stopped store (pid {pids['store']})"], p3.stdout
    assert all(wait_gone(x, 5) for x in pids.values())
    assert cluster.pids() == {}
    assert cluster.processes() == set()
    for name in ("store", "host"):
        assert "level=error" not in (st / f"{name}.log").read_text()
    # Again: nothing to do. The key and cluster.json stay.
    p4 = ok(cluster.down())
    assert p4.stdout == "" and p4.stderr == ""
    assert (st / "key").read_text().strip() == key


def test_down_kills_the_jobs_and_leaves_their_records(cluster, pier_build, tmp_path):
    b = cluster.base
    ok(cluster.up("--port-base", b, "--no-config"))
    assert not cluster.config.exists()
    key = (cluster.state / "key").read_text().strip()
    host_id = cluster.host_id()
    job = f"{host_id}-{uuid.uuid4()}"
    body = json.dumps({"args": ["/bin/sleep", "1000"], "ports": []})
    r = subprocess.run(["curl", "-fsS", "-X", "PUT", "-H", "@-", "--data", body,
                        f"http://127.0.0.1:{b + 1}/host/jobs/{job}"],
                       input=f"Authorization: Bearer {key}\n", capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    store = f"http://127.0.0.1:{b}"
    deadline = time.monotonic() + 60
    rec = None
    while time.monotonic() < deadline:
        raw = store_get(store, f"/pier/v1/jobs/{job}")
        rec = json.loads(raw) if raw else None
        if rec and rec.get("state") == "up":
            break
        time.sleep(0.1)
    assert rec and rec["state"] == "up", rec
    raw_before = store_get(store, f"/pier/v1/jobs/{job}")
    procs = cluster.job_pids()
    assert len(procs) == 2, procs  # the shim and the container's init

    p = ok(cluster.down())
    lines = p.stdout.splitlines()
    assert lines[0].startswith("stopped host (pid "), p.stdout
    assert lines[1].startswith(f"stopped the jobs of host {host_id}: 1 shims, "), p.stdout
    assert "'pier up' starts them again" in lines[1]
    assert lines[2].startswith("stopped store (pid "), p.stdout
    assert all(wait_gone(x, 5) for x in procs), procs
    assert cluster.processes() == set()
    # No exit was recorded (a reboot records none) ...
    assert not (cluster.state / "host" / "jobs" / job / "exit.json").exists()
    # ... and the record is as it was: a store on the same data says so.
    port = free_port()
    s = subprocess.Popen([str(pier_build / "pierd"), "store", "--listen", f"127.0.0.1:{port}",
                          "--data-dir", str(cluster.state / "store")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{port}/.well-known/status") != 200:
            assert time.monotonic() < deadline and s.poll() is None
            time.sleep(0.1)
        assert store_get(f"http://127.0.0.1:{port}", f"/pier/v1/jobs/{job}") == raw_before
    finally:
        s.terminate()
        s.wait(15)

    # Up again: the agent finds the job lost and says so in its record.
    ok(cluster.up())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rec = json.loads(store_get(store, f"/pier/v1/jobs/{job}"))
        if rec.get("state") == "crashed":
            break
        time.sleep(0.1)
    assert rec["state"] == "crashed", rec


@pytest.mark.parametrize("args, words", [
    (["--bogus"], 'unknown flag "--bogus"'),
    (["--port-base"], "--port-base needs a value"),
    (["--port-base", "x"], '--port-base "x" must be a number'),
    (["--port-base", "65000"], '--port-base "65000" must be a number from 1 to 64536'),
    (["--listen-ip", "nope"], '--listen-ip "nope" is not an IPv4 address'),
    (["--domain", "Bad_Domain"], '--domain "Bad_Domain" is not a domain name'),
    (["--name", "a/b"], '--name "a/b" may hold only'),
    (["--stack", "/nonexistent/stack"], '--stack "/nonexistent/stack" is not a directory'),
    (["--store", "etcd:2379"], '--store "etcd:2379" is not a list of http:// URLs'),
    (["--store", "http://a:1,"], '--store "http://a:1," is not a list'),
    (["--key", "k"], "--key goes with --join URL"),
    (["--ca", "/etc/ssl/x.pem"], "--ca goes with --join URL"),
    (["--join", "http://controller.x.localhost"], "--join needs the cluster key"),
    (["--join", "ftp://x", "--key", "k"], '--join "ftp://x": want the controller\'s URL'),
    (["--join", "http://x.localhost", "--key", "a b"], "--key: one word"),
    (["--join", "http://controller.example.com", "--key", "k"],
     "--join http://controller.example.com: the key would cross the network in the clear"),
    (["--join", "http://x", "--key", "k", "--store", "http://e:1"], "--join takes the cluster's"),
])
def test_bad_flags_are_refused_naming_the_flag(cluster, args, words):
    if "needs the cluster key" in words:  # PIER_KEY would give it
        cluster.env.pop("PIER_KEY", None)
    p = cluster.up(*args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"pier: {words}" in p.stderr, p.stderr
    assert "see 'pier help up'" in p.stderr
    assert p.stdout == ""
    assert not cluster.state.exists()


def test_down_bad_flag_and_missing_state_dir(cluster):
    p = cluster.pier("down", "--now")
    assert p.returncode == 2 and 'unknown flag "--now"' in p.stderr
    p = cluster.down()
    assert p.returncode == 1
    assert f"no state dir at {cluster.state}" in p.stderr


def test_up_adds_https_to_an_older_cluster_json(cluster):
    """A cluster.json written before TLS (no https port) gets one, by the
    --port-base rule (N+3), and the run goes on; `pier down` as usual."""
    b = cluster.base
    ok(cluster.up("--port-base", b, "--no-config"))
    ok(cluster.down())
    path = cluster.state / "cluster.json"
    cj = json.loads(path.read_text())
    del cj["ports"]["https"]
    path.write_text(json.dumps(cj))
    p = ok(cluster.up("--port-base", b, "--no-config"))
    assert json.loads(path.read_text())["ports"]["https"] == b + 3, p.stdout
    assert f"https://controller.pier.localhost:{b + 3}" in p.stdout
    ok(cluster.down())
