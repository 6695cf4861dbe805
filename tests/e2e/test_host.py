"""The host agent end to end (issue 3): `pierd host` runs the jobs the store
assigns to its host in real crun containers, as root.

Each test starts a `pierd store` and one or more agents (conftest's
start_host: own data dir, id, port range and API port); jobs are written
into the store the way the scheduler does (etcd v3 JSON gateway) or through
the agent's HTTP API. The store record is what the agent reports to the
rest of the cluster, so observed fields (state, exit_status, oom,
host_error, healthy, allocated_ports) are read from there. Every wait is a
poll with a deadline; the fixture kills whatever jobs a test leaves."""

import base64
from http import client as httpclient
import json
import queue
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import http_status

JOBS = "/pier/v1/jobs/"
HOSTS = "/pier/v1/hosts/"
SERVICES = "/pier/v1/services/"
TERMINAL = ("down", "crashed", "failed")


# ---- the store (etcd v3 JSON gateway of pierd store) ----

def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def store_post(store, path, body):
    req = urllib.request.Request(store + path, method="POST", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def kv_put(store, key, value):
    """Writes key = value (a dict as JSON, or raw str/bytes)."""
    raw = json.dumps(value) if isinstance(value, dict) else value
    store_post(store, "/v3/kv/put", {"key": b64(key), "value": b64(raw)})


def kv_range(store, prefix):
    """[(key, value bytes, mod_revision)] of every key under prefix."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    out = store_post(store, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
             int(kv.get("mod_revision", 0))) for kv in out.get("kvs") or []]


def kv_get(store, key):
    """(value bytes, mod_revision) of key, or (None, 0)."""
    out = store_post(store, "/v3/kv/range", {"key": b64(key)})
    kvs = out.get("kvs") or []
    if not kvs:
        return None, 0
    return base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])


def kv_update(store, key, change):
    """Read-modify-write of a JSON record with compare-and-swap (as a
    scheduler must, since the agent writes observed fields meanwhile)."""
    for _ in range(50):
        raw, rev = kv_get(store, key)
        assert raw is not None, f"{key} is not in the store"
        rec = json.loads(raw)
        change(rec)
        out = store_post(store, "/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(rev)}],
            "success": [{"request_put": {"key": b64(key), "value": b64(json.dumps(rec))}}],
        })
        if out.get("succeeded"):
            return rec
    pytest.fail(f"could not update {key}: always a conflict")


def job_record(store, job_id):
    raw, _ = kv_get(store, JOBS + job_id)
    return json.loads(raw) if raw is not None else None


# ---- the agent's API ----

def http(method, url, body=None, headers=None, timeout=10, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def api_json(agent, method, path, body=None, ok=(200, 201), **kw):
    status, _, out = http(method, agent.url + path, body, **kw)
    assert status in ok, (f"{method} {path}: {status} {out[:2000]!r}\n"
                          f"agent stderr:\n{agent.stderr_tail()}")
    return json.loads(out) if out else None


def get_job(agent, job_id):
    status, _, out = http("GET", f"{agent.url}/host/jobs/{job_id}")
    return json.loads(out) if status == 200 else None


def stop_job(agent, job_id, grace):
    status, _, out = http("DELETE", f"{agent.url}/host/jobs/{job_id}?grace={grace}")
    assert status in (200, 202, 204), f"DELETE {job_id}: {status} {out!r}"


def fail(msg, agent=None):
    extra = f"\n--- agent stderr (tail) ---\n{agent.stderr_tail(80)}" if agent else ""
    pytest.fail(msg + extra, pytrace=False)


def wait_for(pred, timeout, what, agent=None, interval=0.05):
    """Polls pred() until it returns something truthy (returned); fails with
    the last value seen after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            fail(f"timed out after {timeout}s waiting for {what}", agent)
        time.sleep(interval)


def wait_state(agent, job_id, want, timeout=20):
    """Waits for the job's record in the store to reach a state in want;
    fails at once when it ends in another terminal state."""
    want = (want,) if isinstance(want, str) else tuple(want)
    deadline = time.monotonic() + timeout
    rec = None
    while time.monotonic() < deadline:
        rec = job_record(agent.store, job_id)
        state = rec and rec.get("state")
        if state in want:
            return rec
        if state in TERMINAL and state not in want:
            fail(f"job {job_id} ended {state}, wanted {want}: {json.dumps(rec)}", agent)
        time.sleep(0.05)
    fail(f"job {job_id} not {want} after {timeout}s; record: {json.dumps(rec)}", agent)


def put_job(agent, name, args, **fields):
    """Writes a job record for agent's host into the store (the scheduler's
    way); returns its id."""
    job_id = f"{agent.id}-{name}"
    rec = {"id": job_id, "host_id": agent.id, "desired_state": "up", "args": args}
    rec.update(fields)
    kv_put(agent.store, JOBS + job_id, rec)
    return job_id


def post_job(agent, spec):
    """Adds a job through the agent's API; returns the record it answered."""
    rec = api_json(agent, "POST", "/host/jobs", spec)
    assert rec["id"].startswith(agent.id + "-"), rec
    assert rec.get("host_id") == agent.id, rec
    return rec


def get_url(url, timeout=2.0):
    """(status, body) of GET url, or (None, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return None, b""


def serving(port, path="/"):
    return get_url(f"http://127.0.0.1:{port}{path}")[0] is not None


def log_text(agent, job_id, **query):
    q = urllib.parse.urlencode(query)
    status, _, out = http("GET", f"{agent.url}/host/jobs/{job_id}/log" + (f"?{q}" if q else ""))
    assert status == 200, f"log of {job_id}: {status} {out!r}"
    return out.decode(errors="replace")


def log_msgs(agent, job_id, **query):
    """The messages of the job's plain log lines ("TIMESTAMP STREAM MSG")."""
    out = []
    for line in log_text(agent, job_id, **query).splitlines():
        parts = line.split(" ", 2)
        assert len(parts) >= 2 and parts[1] in ("stdout", "stderr"), f"bad log line {line!r}"
        out.append(parts[2] if len(parts) == 3 else "")
    return out


def wait_log(agent, job_id, needle, timeout=10):
    def seen():
        # 404: the agent has not seen the job's record yet (a busy machine)
        status, _, _ = http("GET", f"{agent.url}/host/jobs/{job_id}")
        return status == 200 and any(needle in m for m in log_msgs(agent, job_id))
    return wait_for(seen, timeout, f"{needle!r} in the log of {job_id}", agent)


class LogFollower:
    """GET .../log?follow=true on its own socket; lines arrive on a queue."""

    def __init__(self, agent, job_id, **query):
        q = urllib.parse.urlencode(dict(query, follow="true"))
        self.conn = httpclient.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        self.conn.request("GET", f"/host/jobs/{job_id}/log?{q}")
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, (self.resp.status, self.resp.read())
        self.sock.settimeout(None)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                self.lines.put(line.decode(errors="replace").rstrip("\n"))
        except (OSError, ValueError, httpclient.HTTPException):
            pass
        self.lines.put(None)

    def wait_line(self, needle, timeout):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the log stream ended before {needle!r}; saw {seen}")
            seen.append(line)
            if needle in line:
                return line
        pytest.fail(f"no {needle!r} on the followed log within {timeout}s; saw {seen}")

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def pids_cgroup(job_id, name):
    """A file of the job's pids cgroup (v1, cgroupsPath /pier/<job id>), or None."""
    try:
        return Path(f"/sys/fs/cgroup/pids/pier/{job_id}/{name}").read_text().strip()
    except OSError:
        return None


# ---- 1. namespaces, user, read-only root, PORT, logs ----

def test_job_runs_in_its_own_namespaces_and_logs(pier_store, start_host):
    agent = start_host(pier_store)
    rec = post_job(agent, {
        "args": ["/bin/sh", "-c",
                 "echo pid=$$; echo host=$(hostname); echo uid=$(id -u); "
                 "touch /x 2>&1 || echo rootfs=ro; echo port=$PORT; "
                 "exec python3 -u -m http.server $PORT"],
        "resources": {"memory": {"limit": 256 << 20}},
    })
    job_id = rec["id"]
    assert rec.get("state") == "pending", rec
    up = wait_state(agent, job_id, "up")
    ports = up.get("allocated_ports")
    assert isinstance(ports, list) and len(ports) == 1, up
    port = ports[0]
    assert agent.ports[0] <= port <= agent.ports[1], (port, agent.ports)
    assert up.get("started_at"), up

    # It serves on $PORT, on the host's network.
    wait_for(lambda: get_url(f"http://127.0.0.1:{port}/")[0] == 200, 10,
             f"the job's HTTP server on 127.0.0.1:{port}", agent)
    wait_log(agent, job_id, "Serving HTTP")
    msgs = log_msgs(agent, job_id)
    assert "pid=1" in msgs, msgs                      # its own pid namespace; exec kept pid 1
    assert f"host={job_id}" in msgs, msgs             # its own uts namespace
    uid = [m for m in msgs if m.startswith("uid=")]
    assert uid and uid[0] != "uid=0", msgs            # not root
    assert "rootfs=ro" in msgs, msgs                  # / is read-only
    assert any("Read-only file system" in m for m in msgs), msgs
    assert f"port={port}" in msgs, msgs

    # The agent's view matches the store's.
    got = get_job(agent, job_id)
    assert got and got["state"] == "up" and got.get("allocated_ports") == [port], got
    listed = api_json(agent, "GET", "/host/jobs")
    assert job_id in [j["id"] for j in listed], listed

    # lines=N: the last N lines.
    get_url(f"http://127.0.0.1:{port}/req-a")
    get_url(f"http://127.0.0.1:{port}/req-b")
    wait_log(agent, job_id, "/req-b")
    everything = log_text(agent, job_id).splitlines()
    last2 = log_text(agent, job_id, lines=2).splitlines()
    assert len(last2) == 2 and last2 == everything[-2:], (last2, everything[-4:])
    assert "/req-b" in last2[-1], last2
    # Lines look like "TIMESTAMP STREAM MSG".
    ts, stream, _ = everything[0].split(" ", 2)
    assert ts[:2] == "20" and ts.endswith("Z") and "T" in ts, everything[0]
    assert stream in ("stdout", "stderr")
    # stream= picks one: http.server logs requests to stderr.
    out_only = log_msgs(agent, job_id, stream="stdout")
    assert "pid=1" in out_only and not any("/req-b" in m for m in out_only), out_only
    err_only = log_msgs(agent, job_id, stream="stderr")
    assert any("/req-b" in m for m in err_only) and "pid=1" not in err_only, err_only
    # format=json: one JSON object per line.
    js = [json.loads(line) for line in log_text(agent, job_id, format="json").splitlines()]
    assert any("pid=1" in json.dumps(o) for o in js), js[:5]

    # follow=true: new lines arrive as they are written.
    f = LogFollower(agent, job_id, lines=0)
    try:
        for n in range(3):
            started = time.monotonic()
            get_url(f"http://127.0.0.1:{port}/follow-{n}")
            f.wait_line(f"/follow-{n}", 5)
            assert time.monotonic() - started < 3
    finally:
        f.close()

    # An unknown job is a bare 404.
    status, _, body = http("GET", f"{agent.url}/host/jobs/{agent.id}-nope")
    assert status == 404 and body == b"", (status, body)
    status, _, body = http("GET", f"{agent.url}/host/jobs/{agent.id}-nope/log")
    assert status == 404, (status, body)

    # Python as pid 1 ignores SIGTERM: the stop takes the grace, then SIGKILL.
    stop_job(agent, job_id, "500ms")
    down = wait_state(agent, job_id, "down", timeout=10)
    assert down.get("finished_at"), down
    wait_for(lambda: not serving(port), 5, "the server to be gone", agent)


# ---- 2. limits ----

def test_memory_limit_kills_and_reports_oom(pier_store, start_host):
    agent = start_host(pier_store)
    job_id = put_job(agent, "oom", [
        "python3", "-u", "-c",
        "print('allocating', flush=True)\n"
        "x = b'\\x01' * (200 << 20)\n"
        "print('survived', len(x), flush=True)"],
        resources={"memory": {"limit": 32 << 20}})
    rec = wait_state(agent, job_id, "crashed", timeout=20)
    assert rec.get("oom") is True, rec
    assert "out of memory" in (rec.get("host_error") or ""), rec
    assert rec.get("exit_status") not in (None, 0), rec
    assert rec.get("finished_at"), rec
    msgs = log_msgs(agent, job_id)
    assert "allocating" in msgs and not any(m.startswith("survived") for m in msgs), msgs
    assert job_id not in agent.crun_list()


FORK_COUNT = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
        n += 1
except OSError as e:
    print(f"fork failed after {n}: {e.strerror}", flush=True)
time.sleep(3600)
"""


def test_max_procs_stops_a_fork_bomb_and_the_host_stays_healthy(pier_store, start_host):
    agent = start_host(pier_store)
    limit = 50
    res = {"memory": {"limit": 256 << 20}, "max_procs": {"limit": limit}}

    # Counting: forks stop at the limit (the parent counts as one).
    counter = put_job(agent, "forks", ["python3", "-u", "-c", FORK_COUNT], resources=res)
    wait_state(agent, counter, "up")
    wait_log(agent, counter, "fork failed after")
    line = [m for m in log_msgs(agent, counter) if m.startswith("fork failed after")][0]
    n = int(line.split()[3].rstrip(":"))
    assert limit - 5 <= n < limit, line
    if Path("/sys/fs/cgroup/pids").is_dir():
        assert pids_cgroup(counter, "pids.max") == str(limit)

    # A real fork bomb.
    # Its PID 1 becomes sleep at once, so the job lives on however the bomb
    # fares (a shell that ran "f; sleep" could itself fail to fork sleep
    # and end the job, and with it its cgroup, before the checks read it).
    bomb = put_job(agent, "bomb", ["/bin/sh", "-c", "(f() { f | f & }; f) & exec sleep 3600"],
                   resources=res)
    wait_state(agent, bomb, "up")
    if Path("/sys/fs/cgroup/pids").is_dir():  # cgroup v1 (this machine kind)
        assert pids_cgroup(bomb, "pids.max") == str(limit)
        # It hits its limit (forks refused: pids.events counts them), and
        # never had more processes than that.
        wait_for(lambda: int((pids_cgroup(bomb, "pids.events") or "max 0").split()[-1]) > 0,
                 10, "a fork refused at the limit (pids.events)", agent)
        for _ in range(10):
            assert int(pids_cgroup(bomb, "pids.current") or 0) <= limit
            time.sleep(0.05)
        peak = pids_cgroup(bomb, "pids.peak")
        assert peak is None or int(peak) <= limit, peak

    # The host stays healthy: the agent answers at once and a new job runs.
    started = time.monotonic()
    assert http_status(agent.url + "/host/status", timeout=3) == 200
    assert time.monotonic() - started < 2
    ok = put_job(agent, "after-bomb", ["/bin/sh", "-c", "echo still-fine"],
                 resources={"memory": {"limit": 64 << 20}})
    rec = wait_state(agent, ok, "down", timeout=15)
    assert rec.get("exit_status") == 0, rec
    assert "still-fine" in log_msgs(agent, ok)

    # Stop both; nothing of them is left.
    stop_job(agent, bomb, "500ms")
    stop_job(agent, counter, "500ms")
    for j in (bomb, counter):
        rec = wait_state(agent, j, TERMINAL, timeout=15)
        assert rec["state"] == "down", rec
        wait_for(lambda: j not in agent.crun_list(), 10, f"{j} gone from crun", agent)
    assert pids_cgroup(bomb, "pids.current") in (None, "0")


# ---- 3. stop with grace ----

def test_stop_with_grace(pier_store, start_host):
    agent = start_host(pier_store)
    mem = {"memory": {"limit": 64 << 20}}
    trapper = put_job(agent, "trap", ["/bin/sh", "-c",
                                      'trap "echo got TERM; sleep 1; echo bye; exit 0" TERM; '
                                      'echo ready; while true; do sleep 0.1; done'],
                      resources=mem, stop_grace=5)
    ignorer = post_job(agent, {"args": ["/bin/sh", "-c",
                                        'trap "" TERM; echo ready; '
                                        'while true; do sleep 0.1; done'],
                               "resources": mem})["id"]
    for j in (trapper, ignorer):
        wait_state(agent, j, "up")
        wait_log(agent, j, "ready")

    # The scheduler's way: desired_state "down" in the record (grace 5 s).
    t0 = time.monotonic()
    kv_update(agent.store, JOBS + trapper,
              lambda r: r.update(desired_state="down", stop_grace=5))
    rec = wait_state(agent, trapper, TERMINAL, timeout=10)
    took = time.monotonic() - t0
    assert rec["state"] == "down", rec
    assert rec.get("exit_status") == 0, rec
    assert 0.9 <= took < 4.5, f"the trap sleeps 1 s; it took {took:.2f}s (grace 5 s)"
    msgs = log_msgs(agent, trapper)
    assert "got TERM" in msgs and "bye" in msgs, msgs

    # The API's way: one that ignores SIGTERM is killed after the grace.
    t0 = time.monotonic()
    stop_job(agent, ignorer, "2s")
    mid = get_job(agent, ignorer)
    assert mid and mid.get("state") in ("up", "stopping"), mid
    rec = wait_state(agent, ignorer, TERMINAL, timeout=10)
    took = time.monotonic() - t0
    assert 1.9 <= took < 5.0, f"grace 2 s; it took {took:.2f}s"
    assert rec["state"] == "down", rec
    assert rec.get("signal") == 9 or rec.get("exit_status") == 137, rec
    for j in (trapper, ignorer):
        assert j not in agent.crun_list()


# ---- 4. the agent dies and comes back ----

def test_jobs_outlive_the_agent_and_are_readopted(pier_store, start_host):
    agent = start_host(pier_store)
    mem = {"memory": {"limit": 256 << 20}}
    a = put_job(agent, "web-a", ["/bin/sh", "-c", "exec python3 -u -m http.server $PORT"],
                resources=mem)
    b = post_job(agent, {"args": ["/bin/sh", "-c", "exec python3 -u -m http.server $PORT"],
                         "resources": mem})["id"]
    c = put_job(agent, "web-c", ["/bin/sh", "-c",
                                 "python3 -u -m http.server $PORT & "
                                 "while [ ! -e /app/quit ]; do sleep 0.1; done; "
                                 "echo quitting; exit 7"], resources=mem)
    port = {}
    for j in (a, b, c):
        port[j] = wait_state(agent, j, "up")["allocated_ports"][0]
    for j in (a, b, c):
        wait_for(lambda: get_url(f"http://127.0.0.1:{port[j]}/")[0] == 200, 10,
                 f"{j} serving", agent)

    agent.kill()
    time.sleep(0.2)
    for j in (a, b, c):
        status, _ = get_url(f"http://127.0.0.1:{port[j]}/while-agent-down")
        assert status == 404, f"{j} stopped serving when the agent died ({status})"

    # c exits (status 7) while the agent is down.
    job_c_dir = agent.data_dir / "jobs" / c
    assert (job_c_dir / "app").is_dir(), list(job_c_dir.iterdir())
    (job_c_dir / "app" / "quit").write_text("")
    wait_for(lambda: not serving(port[c]), 10, f"{c} to exit")
    wait_for(lambda: (job_c_dir / "exit.json").exists(), 10, "its shim to record the exit")
    exit_rec = json.loads((job_c_dir / "exit.json").read_text())
    assert exit_rec.get("status") == 7, exit_rec

    agent.start()
    listed = {j["id"]: j for j in api_json(agent, "GET", "/host/jobs")}
    for j in (a, b):
        assert j in listed and listed[j]["state"] == "up", listed.get(j)
        assert serving(port[j])
    rec = wait_state(agent, c, "crashed", timeout=10)
    assert rec.get("exit_status") == 7, rec
    assert rec.get("finished_at"), rec
    assert "quitting" in log_msgs(agent, c)
    assert c not in agent.crun_list(), "an ended job was started again"
    # The others' records still say up (nothing was restarted or lost).
    time.sleep(0.5)
    for j in (a, b):
        r = job_record(agent.store, j)
        assert r["state"] == "up" and r["allocated_ports"] == [port[j]], r

    # Their logs kept going: the request made while the agent was down is
    # there, and new lines appear after the restart.
    for j in (a, b):
        wait_log(agent, j, "/while-agent-down")
        get_url(f"http://127.0.0.1:{port[j]}/after-restart")
        wait_log(agent, j, "/after-restart")
    f = LogFollower(agent, a, lines=0)
    try:
        get_url(f"http://127.0.0.1:{port[a]}/followed-after-restart")
        f.wait_line("/followed-after-restart", 5)
    finally:
        f.close()

    # A re-adopted job can be stopped like any other.
    stop_job(agent, a, "500ms")
    assert wait_state(agent, a, TERMINAL, timeout=10)["state"] == "down"
    wait_for(lambda: not serving(port[a]), 5, f"{a} gone", agent)
    # Its port went back to the range and b still runs.
    assert serving(port[b])
    assert get_job(agent, b)["state"] == "up"


# ---- 5. TTY attach ----

class Attach:
    """POST /host/jobs/:id/attach upgraded to flynn-attach/0; frames both ways."""

    def __init__(self, agent, job_id):
        self.sock = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
        self.sock.sendall(
            f"POST /host/jobs/{job_id}/attach HTTP/1.1\r\nHost: 127.0.0.1:{agent.port}\r\n"
            "Upgrade: flynn-attach/0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"
            .encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed before the response: {buf!r}"
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0]
        assert status.split(b" ")[1:2] == [b"101"], f"attach answered {head!r}"
        self.out = b""
        self.exit = None
        self.errors = []

    def send_stdin(self, data):
        self.sock.sendall(b"\x03\x00" + struct.pack(">I", len(data)) + data)

    def resize(self, rows, cols):
        self.sock.sendall(b"\x06" + struct.pack(">HH", rows, cols))

    def _frames(self):
        while True:
            b = self.buf
            if not b:
                return
            t = b[0]
            if t == 0x03:
                if len(b) < 6:
                    return
                n = struct.unpack(">I", b[2:6])[0]
                if len(b) < 6 + n:
                    return
                self.out += b[6:6 + n]
                self.buf = b[6 + n:]
            elif t == 0x05:
                if len(b) < 5:
                    return
                self.exit = struct.unpack(">I", b[1:5])[0]
                self.buf = b[5:]
            elif t == 0x02:
                if len(b) < 5:
                    return
                n = struct.unpack(">I", b[1:5])[0]
                if len(b) < 5 + n:
                    return
                self.errors.append(b[5:5 + n].decode(errors="replace"))
                self.buf = b[5 + n:]
            else:
                pytest.fail(f"unknown attach frame type {t:#x}: {b[:32]!r}")

    def read_until(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} within {timeout}s; output so far: {self.out[-2000:]!r}, "
                            f"exit {self.exit}, errors {self.errors}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                if pred():
                    return
                pytest.fail(f"attach stream closed before {what}; output: {self.out[-2000:]!r}, "
                            f"exit {self.exit}, errors {self.errors}")
            self.buf += chunk
            self._frames()

    def close(self):
        self.sock.close()


def test_tty_attach(pier_store, start_host):
    agent = start_host(pier_store)
    job_id = post_job(agent, {"args": ["/bin/sh"], "tty": True, "tty_columns": 80,
                              "tty_lines": 24,
                              "resources": {"memory": {"limit": 64 << 20}}})["id"]
    wait_state(agent, job_id, "up")
    att = Attach(agent, job_id)
    try:
        att.send_stdin(b"echo hi-$((1+2))\n")
        att.read_until(lambda: b"hi-3" in att.out, 10, "hi-3")
        att.send_stdin(b"echo S=$(stty size)=\n")
        att.read_until(lambda: b"S=24 80=" in att.out, 10, "the initial size 24 80")
        att.resize(40, 100)
        att.send_stdin(b"echo R=$(stty size)=\n")
        att.read_until(lambda: b"R=40 100=" in att.out, 10, "the new size 40 100")
        att.send_stdin(b"exit 5\n")
        att.read_until(lambda: att.exit is not None, 10, "the exit frame")
        assert att.exit == 5, att.exit
        assert not att.errors, att.errors
    finally:
        att.close()
    rec = wait_state(agent, job_id, TERMINAL, timeout=10)
    assert rec.get("exit_status") == 5, rec
    assert rec["state"] == "crashed", rec

    # A job without a TTY or stdin cannot be attached to.
    plain = post_job(agent, {"args": ["/bin/sh", "-c", "sleep 30"],
                             "resources": {"memory": {"limit": 64 << 20}}})["id"]
    wait_state(agent, plain, "up")
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    try:
        s.sendall(f"POST /host/jobs/{plain}/attach HTTP/1.1\r\nHost: x\r\n"
                  "Upgrade: flynn-attach/0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"
                  .encode())
        head = s.recv(4096)
        assert not head.startswith(b"HTTP/1.1 101"), head
    finally:
        s.close()
    stop_job(agent, plain, "200ms")
    wait_state(agent, plain, TERMINAL, timeout=10)


# ---- 6. bad job specs ----

def test_bad_specs_are_refused_with_a_reason(pier_store, start_host):
    agent = start_host(pier_store)
    lo, hi = agent.ports
    mem = {"memory": {"limit": 64 << 20}}
    sh = ["/bin/sh", "-c", "echo should-not-run; sleep 30"]
    bad = {
        "noargs": ({"resources": mem}, "args"),
        "nostack": ({"args": sh, "artifact": {"stack": "/nonexistent"}, "resources": mem},
                    "stack"),
        "negmem": ({"args": sh, "resources": {"memory": {"limit": -1}}}, "memory"),
        "lowport": ({"args": sh, "resources": mem, "ports": [{"port": lo - 1, "proto": "tcp"}]},
                    "port"),
        "highport": ({"args": sh, "resources": mem,
                      "ports": [{"port": hi + 1, "proto": "tcp"}]}, "port"),
        # The store takes at most 1.5 MiB a request, so 1 MiB is as big as a
        # record can be there; it is far over the 128 KiB a value may have.
        "bigenv": ({"args": sh, "resources": mem, "env": {"BIG": "x" * (1 << 20)}}, "env"),
    }
    for name, (fields, _) in bad.items():
        job_id = f"{agent.id}-{name}"
        rec = {"id": job_id, "host_id": agent.id, "desired_state": "up", **fields}
        kv_put(agent.store, JOBS + job_id, rec)
    kv_put(agent.store, JOBS + f"{agent.id}-garbage", "{not json at all")
    kv_put(agent.store, JOBS + f"{agent.id}-array", "[1, 2, 3]")

    for name, (_, field) in bad.items():
        job_id = f"{agent.id}-{name}"
        rec = wait_state(agent, job_id, "failed", timeout=15)
        err = rec.get("host_error") or ""
        assert field in err, f"{name}: host_error {err!r} does not name {field!r}"
        assert not rec.get("started_at"), rec
    # Nothing ran: no container, no shim, nothing in any log.
    running = agent.crun_list()
    for name in bad:
        job_id = f"{agent.id}-{name}"
        assert job_id not in running, running
        d = agent.data_dir / "jobs" / job_id
        assert not (d / "shim.pid").exists() and not (d / "container.pid").exists(), \
            list(d.iterdir())
        assert not (d / "log").exists() or "should-not-run" not in (d / "log").read_text()

    # The agent is still fine and runs a good job.
    assert http_status(agent.url + "/host/status") == 200
    good = put_job(agent, "good", ["/bin/sh", "-c", "echo fine"], resources=mem)
    assert wait_state(agent, good, "down").get("exit_status") == 0
    assert "fine" in log_msgs(agent, good)

    # The API refuses the same with 400 and a reason, and writes nothing.
    for spec, field in [
        ({"resources": mem}, "args"),
        ({"args": []}, "args"),
        ({"args": sh, "resources": {"memory": {"limit": -1}}}, "memory"),
        ({"args": sh, "env": {"BIG": "x" * (200 << 10)}}, "env"),
    ]:
        status, _, body = http("POST", agent.url + "/host/jobs", spec)
        assert status == 400, (field, status, body[:500])
        msg = json.loads(body)
        assert field in msg.get("message", ""), msg
    status, _, body = http("POST", agent.url + "/host/jobs", raw=b"{not json")
    assert status == 400, (status, body)
    # 10 MB: over the body limit, still a 400 with a reason.
    status, _, body = http("POST", agent.url + "/host/jobs",
                           {"args": sh, "env": {"BIG": "x" * (10 << 20)}}, timeout=30)
    assert status == 400 and json.loads(body).get("message"), (status, body[:500])
    assert http_status(agent.url + "/host/status") == 200
    names = {k[len(JOBS):] for k, _, _ in kv_range(agent.store, JOBS)}
    assert names == {f"{agent.id}-{n}" for n in [*bad, "garbage", "array", "good"]}, names


# ---- 7. the host record's lease ----

def test_host_record_lease(pier_store, start_host):
    agent = start_host(pier_store, ttl=2)
    rec = json.loads(agent.record())
    assert rec["id"] == agent.id, rec
    assert rec.get("addr") == f"127.0.0.1:{agent.port}", rec
    assert rec.get("ports", {}).get("lo") == agent.ports[0], rec
    assert rec.get("ports", {}).get("hi") == agent.ports[1], rec
    status = api_json(agent, "GET", "/host/status")
    assert status.get("id") == agent.id and status.get("host", {}).get("id") == agent.id, status
    assert status.get("jobs", {}).get("running") == 0, status

    # It stays while the agent runs (the heartbeat renews the lease).
    time.sleep(3)
    assert agent.record() is not None, "the record expired while the agent ran"

    killed = time.monotonic()
    agent.kill()
    wait_for(lambda: agent.record() is None, 2 + 3, "the host record to expire")
    gone = time.monotonic() - killed
    assert gone <= 2 + 2, f"the record went {gone:.2f}s after the kill (TTL 2 s)"

    # Restarted without --id: the id kept in the data dir is used.
    i = agent.argv.index("--id")
    del agent.argv[i:i + 2]
    agent.start()
    rec = json.loads(agent.record())
    assert rec["id"] == agent.id, rec
    assert (agent.data_dir / "host-id").read_text().strip() == agent.id
    hosts = [k for k, _, _ in kv_range(agent.store, HOSTS)]
    assert hosts == [HOSTS + agent.id], hosts


# ---- 8. discovery ----

def test_service_registered_when_healthy_and_gone_when_stopped(pier_store, start_host):
    agent = start_host(pier_store)
    svc = f"web-{agent.id}"
    job_id = put_job(agent, "svc", ["/bin/sh", "-c",
                                    "sleep 2; exec python3 -u -m http.server $PORT"],
                     resources={"memory": {"limit": 256 << 20}},
                     ports=[{"port": 0, "proto": "tcp",
                             "service": {"name": svc,
                                         "check": {"type": "http", "path": "/",
                                                   "interval": "250ms", "threshold": 2}}}])
    rec = wait_state(agent, job_id, "up")
    port = rec["allocated_ports"][0]
    up_at = time.monotonic()
    # Up but not serving yet: not in discovery.
    while time.monotonic() - up_at < 1.0:
        assert kv_range(agent.store, SERVICES + svc + "/") == [], "registered before healthy"
        time.sleep(0.1)
    insts = wait_for(lambda: kv_range(agent.store, SERVICES + svc + "/"), 10,
                     f"an instance of {svc}", agent)
    assert len(insts) == 1, insts
    inst = json.loads(insts[0][1])
    assert inst.get("addr") == f"127.0.0.1:{port}", inst
    assert serving(port)
    wait_for(lambda: job_record(agent.store, job_id).get("healthy") is True, 5,
             "healthy: true on the record", agent)

    # Deregistered the moment it is stopped: well before the grace (3 s)
    # that python, as pid 1 ignoring SIGTERM, takes to be killed.
    t0 = time.monotonic()
    stop_job(agent, job_id, "3s")
    wait_for(lambda: kv_range(agent.store, SERVICES + svc + "/") == [], 3,
             "the instance to go", agent)
    assert time.monotonic() - t0 < 1.5
    rec = wait_state(agent, job_id, TERMINAL, timeout=10)
    assert rec["state"] == "down", rec
    assert kv_range(agent.store, SERVICES + svc + "/") == []


# ---- 9. agents side by side ----

def test_two_agents_side_by_side(pier_store, start_host):
    a = start_host(pier_store, name="host-a", tags={"zone": "a"})
    b = start_host(pier_store, name="host-b", tags={"zone": "b"})
    assert a.id != b.id and a.port != b.port and a.data_dir != b.data_dir
    assert json.loads(a.record()).get("tags") == {"zone": "a"}
    assert json.loads(b.record()).get("tags") == {"zone": "b"}
    mem = {"memory": {"limit": 256 << 20}}
    run = ["/bin/sh", "-c", "echo on-$(hostname); exec python3 -u -m http.server $PORT"]
    ja = put_job(a, "one", run, resources=mem)
    jb = post_job(b, {"args": run, "resources": mem})["id"]
    jb2 = put_job(b, "two", run, resources=mem)
    pa = wait_state(a, ja, "up")["allocated_ports"][0]
    pb = wait_state(b, jb, "up")["allocated_ports"][0]
    pb2 = wait_state(b, jb2, "up")["allocated_ports"][0]
    assert a.ports[0] <= pa <= a.ports[1], (pa, a.ports)
    assert b.ports[0] <= pb <= b.ports[1] and b.ports[0] <= pb2 <= b.ports[1], (pb, pb2)
    for p in (pa, pb, pb2):
        wait_for(lambda: serving(p), 10, f"a server on {p}")
    # Each runs only its own.
    assert [j["id"] for j in api_json(a, "GET", "/host/jobs")] == [ja]
    assert sorted(j["id"] for j in api_json(b, "GET", "/host/jobs")) == sorted([jb, jb2])
    assert [d.name for d in a.job_dirs()] == [ja]
    assert sorted(d.name for d in b.job_dirs()) == sorted([jb, jb2])
    assert a.crun_list() == [ja]
    assert sorted(b.crun_list()) == sorted([jb, jb2])
    assert get_job(a, jb) is None and get_job(b, ja) is None
    wait_log(a, ja, f"on-{ja}")
    wait_log(b, jb, f"on-{jb}")
    wait_for(lambda: json.loads(a.record()).get("jobs") == 1, 5, "jobs: 1 on host A's record", a)
    wait_for(lambda: json.loads(b.record()).get("jobs") == 2, 5, "jobs: 2 on host B's record", b)


# ---- artifacts: a built stack, a slug, and the host's memory ----

def test_jobs_run_on_a_built_stack(pier_store, start_host, built_stack):
    """A stack from `pier stack build` is a job's root: named in the job's
    artifact, or the agent's default with --stack. It stays read-only and
    the job runs unprivileged, as on the host's binds."""
    agent = start_host(pier_store, args=["--stack", str(built_stack)])
    script = ("cat /etc/debian_version; echo uid=$(id -u); touch /x 2>/dev/null || echo ro; "
              "test -x /usr/bin/python3 && echo host-python || echo no-python; "
              "test -e /etc/ssl/certs/ca-certificates.crt && echo certs")
    by_default = put_job(agent, "stackdefault", ["/bin/sh", "-c", script],
                         resources={"memory": {"limit": 64 << 20}})
    named = put_job(agent, "stacknamed", ["/bin/sh", "-c", script],
                    artifact={"stack": str(built_stack)},
                    resources={"memory": {"limit": 64 << 20}})
    host = put_job(agent, "stackhost", ["/bin/sh", "-c", script],
                   artifact={"stack": "host"}, resources={"memory": {"limit": 64 << 20}})
    for job_id in (by_default, named):
        rec = wait_state(agent, job_id, "down")
        assert rec.get("exit_status") == 0, rec
        msgs = log_msgs(agent, job_id)
        assert any(m.startswith("12.") for m in msgs), msgs   # Debian 12's stack
        assert "uid=65534" in msgs and "ro" in msgs, msgs
        # The stack has no Python (minbase), so this is not the host's root.
        assert "no-python" in msgs and "certs" in msgs, msgs
    wait_state(agent, host, "down")
    assert "host-python" in log_msgs(agent, host)
    # The stack was not written to by running jobs on it.
    assert not (built_stack / "x").exists()


def test_slug_is_unpacked_at_app(pier_store, start_host, tmp_path):
    import tarfile
    src = tmp_path / "slug"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_text("#!/bin/sh\necho slug says $(cat /app/greeting)\n"
                                     "touch /app/written && echo app-writable\n")
    (src / "bin" / "run").chmod(0o755)
    (src / "greeting").write_text("hello")
    slug = tmp_path / "slug.tgz"
    with tarfile.open(slug, "w:gz") as t:
        for p in ("bin", "bin/run", "greeting"):
            t.add(src / p, arcname=p, recursive=False)
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"this is not a gzipped tar")

    agent = start_host(pier_store)
    ok = put_job(agent, "slug", ["/app/bin/run"], artifact={"slug": slug.as_uri()},
                 resources={"memory": {"limit": 64 << 20}})
    rec = wait_state(agent, ok, "down")
    assert rec.get("exit_status") == 0, rec
    msgs = log_msgs(agent, ok)
    assert "slug says hello" in msgs and "app-writable" in msgs, msgs

    for name, url in (("badslug", bad.as_uri()),
                      ("noslug", (tmp_path / "missing.tgz").as_uri())):
        job_id = put_job(agent, name, ["/app/bin/run"], artifact={"slug": url},
                         resources={"memory": {"limit": 64 << 20}})
        rec = wait_state(agent, job_id, "failed")
        assert "bad artifact" in rec.get("host_error", ""), rec
        assert url in rec["host_error"] or "missing.tgz" in rec["host_error"], rec
        assert job_id not in agent.crun_list()


def test_memory_is_never_overcommitted(pier_store, start_host):
    agent = start_host(pier_store, args=["--memory", "100M"])
    sleep = ["/bin/sh", "-c", "exec sleep 60"]
    big = put_job(agent, "big", sleep, resources={"memory": {"limit": 200 << 20}})
    rec = wait_state(agent, big, "failed")
    assert "not enough memory" in rec.get("host_error", ""), rec

    first = put_job(agent, "first", sleep, resources={"memory": {"limit": 64 << 20}})
    wait_state(agent, first, "up")
    second = put_job(agent, "second", sleep, resources={"memory": {"limit": 64 << 20}})
    rec = wait_state(agent, second, "failed")
    assert "36 MiB" in rec.get("host_error", ""), rec   # 100 - 64 left
    def allocated():
        raw = agent.record()
        return raw and json.loads(raw)["memory"]["allocated"] == 64 << 20
    wait_for(allocated, 10, "the host record's allocated memory", agent)

    # Memory comes back when the job ends.
    stop_job(agent, first, "0s")
    wait_state(agent, first, "down")
    third = put_job(agent, "third", sleep, resources={"memory": {"limit": 90 << 20}})
    wait_state(agent, third, "up")
    stop_job(agent, third, "0s")
    wait_state(agent, third, "down")


def test_a_killed_shim_takes_its_container_with_it(pier_store, start_host):
    """A shim killed outright leaves no exit.json and its container's init
    re-parented elsewhere, still holding its port: the agent reports the job
    crashed (lost) and has crun kill and remove the container."""
    import os
    import signal
    agent = start_host(pier_store)
    job_id = put_job(agent, "orphan2", ["/bin/sh", "-c", "exec python3 -m http.server $PORT"],
                     resources={"memory": {"limit": 128 << 20}})
    rec = wait_state(agent, job_id, "up")
    port = rec["allocated_ports"][0]
    wait_for(lambda: serving(port), 10, "the job serving", agent)
    shim = int((agent.data_dir / "jobs" / job_id / "shim.pid").read_text().split()[0])
    os.kill(shim, signal.SIGKILL)
    rec = wait_state(agent, job_id, "crashed")
    assert "lost" in rec.get("host_error", ""), rec
    wait_for(lambda: not serving(port), 10, "the orphaned container gone", agent)
    assert job_id not in agent.crun_list()
    assert "removed a container its shim had left running" in agent.stderr_text()


def test_api_asks_for_the_cluster_key(pier_store, start_host):
    agent = start_host(pier_store, args=["--key", "s3cret"])
    good = {"Authorization": "Basic " + base64.b64encode(b":s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b":wrong").decode()}
    assert http("GET", agent.url + "/host/jobs")[0] == 401
    assert http("GET", agent.url + "/host/jobs", headers=bad)[0] == 401
    assert http("POST", agent.url + "/host/jobs", {"args": ["/bin/true"]})[0] == 401
    assert http("GET", agent.url + "/.well-known/status")[0] == 200
    status, _, out = http("GET", agent.url + "/host/jobs", headers=good)
    assert status == 200 and json.loads(out) == [], out
    status, _, out = http("POST", agent.url + "/host/jobs",
                          {"args": ["/bin/true"], "ports": []}, headers=good)
    assert status == 200, out
    job_id = json.loads(out)["id"]
    wait_for(lambda: (job_record(agent.store, job_id) or {}).get("state") == "down", 10,
             "the job run through the keyed API", agent)
    # Nothing was added by the refused requests.
    assert [k for k, _, _ in kv_range(agent.store, JOBS + agent.id + "-")] == [JOBS + job_id]


def test_agent_starts_before_its_store(start_pierd, start_host):
    """A host that boots before its store: the agent comes up anyway, keeps
    trying, and once the store answers registers the host and runs the
    jobs waiting there."""
    store = start_pierd("store", name="late-store")
    url = store.url
    store.stop()
    agent = start_host(url, wait_record=False)
    time.sleep(1.0)
    assert http_status(agent.url + "/.well-known/status") == 200
    assert agent.running()
    assert "cannot register the host in the store yet" in agent.stderr_text()

    store.start()
    wait_for(lambda: agent.record() is not None, 15, "the host record once the store is up",
             agent)
    job_id = put_job(agent, "late", ["/bin/sh", "-c", "echo late-ok"], ports=[],
                     resources={"memory": {"limit": 32 << 20}})
    wait_state(agent, job_id, "down")
    assert "late-ok" in log_msgs(agent, job_id)


def test_a_start_cut_short_is_started_again(pier_store, start_host):
    """An agent that dies in the middle of a start (its job directory made,
    no shim yet) leaves a record saying "starting": the next agent clears
    the half-made directory and starts the job, rather than calling a job
    that never ran lost."""
    agent = start_host(pier_store)
    agent.kill()
    job_id = f"{agent.id}-cutshort"
    rec = {"id": job_id, "host_id": agent.id, "desired_state": "up", "state": "starting",
           "args": ["/bin/sh", "-c", "echo ran-once"], "ports": [],
           "resources": {"memory": {"limit": 32 << 20}}}
    kv_put(agent.store, JOBS + job_id, rec)
    d = agent.data_dir / "jobs" / job_id
    (d / "bundle").mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({"record": rec, "ports": [], "memory": 32 << 20,
                                            "cpu": 1000}))
    agent.start()
    rec = wait_state(agent, job_id, "down")
    assert rec.get("exit_status") == 0 and "host_error" not in rec, rec
    assert log_msgs(agent, job_id) == ["ran-once"]
    assert "removing a start that never got to run" in agent.stderr_text()
