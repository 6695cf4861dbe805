"""Discovery end to end: processes register under leases, watchers see
them come and go, the leader moves, and discoverd serves the same over
HTTP with server-sent events. Runs against pierd store and against etcd."""

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from pathlib import Path

from conftest import sanitizer_reports

TTL = 2


class Proc:
    """A test tool process whose stdout lines arrive on a queue. Its stderr
    goes to a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, argv, env, workdir):
        self.stderr_path = workdir / f"{Path(str(argv[0])).name}-{len(list(workdir.iterdir()))}.stderr"
        with open(self.stderr_path, "w") as err:
            self.p = subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.PIPE,
                                      stderr=err, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout):
        return self.lines.get(timeout=timeout)

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        err = self.stderr_path.read_text(errors="replace")
        assert not sanitizer_reports(err), err
        return self.p.returncode


def wait_event(watcher, pred, timeout, what):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            ev = json.loads(watcher.next_line(max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            break
        seen.append(ev)
        if pred(ev):
            return ev, time.monotonic()
    pytest.fail(f"no {what} within {timeout}s; saw {seen}", pytrace=False)


@pytest.mark.parametrize("server", ["pier", "etcd"])
def test_three_instances_one_dies_leader_moves(server, pier_build, request, tmp_path):
    url = request.getfixturevalue("pier_store" if server == "pier" else "etcd")
    tool = pier_build / "tests" / "tools" / "discover_tool"
    env = dict(os.environ, PIER_STORE=url)
    procs = []
    try:
        watcher = Proc([tool, "watch", "web"], env, tmp_path)
        procs.append(watcher)
        ev, _ = wait_event(watcher, lambda e: e["kind"] == "current", 10, "current")
        ids = []
        for port in (9001, 9002, 9003):
            p = Proc([tool, "register", "web", f"127.0.0.1:{port}", TTL], env, tmp_path)
            procs.append(p)
            line = p.next_line(10)
            assert line.startswith("registered "), line
            ids.append(line.split()[1])
            wait_event(watcher, lambda e: e["kind"] == "up" and e["id"] == ids[-1], 10, "up")
            if len(ids) == 1:
                # The first one registered leads, and the later ones do not change that.
                ev, _ = wait_event(watcher, lambda e: e["kind"] == "leader", 10, "leader")
                assert ev["id"] == ids[0]

        # SIGKILL: no deregistration; the lease must run out.
        killed_at = time.monotonic()
        procs[1].p.send_signal(signal.SIGKILL)
        procs[1].p.wait()
        ev, seen_at = wait_event(watcher, lambda e: e["kind"] == "down", TTL + 5, "down")
        assert ev["id"] == ids[0]
        # Within the TTL, plus slack for the store's expiry check (100 ms),
        # delivery, and a sanitized build on a loaded machine.
        assert seen_at - killed_at <= TTL + 2.5, seen_at - killed_at
        ev, _ = wait_event(watcher, lambda e: e["kind"] == "leader", 5, "new leader")
        assert ev["id"] == ids[1]

        # A clean stop deregisters at once.
        stopped_at = time.monotonic()
        assert procs[2].stop() == 0
        ev, seen_at = wait_event(watcher, lambda e: e["kind"] == "down", 5, "down")
        assert ev["id"] == ids[1] and seen_at - stopped_at < TTL, "must not wait for expiry"
        ev, _ = wait_event(watcher, lambda e: e["kind"] == "leader", 5, "leader")
        assert ev["id"] == ids[2]
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.stop()


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class SSE:
    """Follows a server-sent event stream from its own socket, so close() can
    end it at once; events arrive on a queue. HTTP/1.0, so the body comes
    unchunked until the server closes."""

    def __init__(self, url, headers=None):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {u.path} HTTP/1.0\r\nHost: {u.netloc}\r\n"
                          f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline().decode()
        assert " 200 " in status, status
        head = {}
        for line in iter(self.file.readline, b"\r\n"):
            k, _, v = line.decode().partition(":")
            head[k.strip().lower()] = v.strip()
        assert head["content-type"] == "text/event-stream", head
        self.sock.settimeout(None)
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for raw in self.file:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    self.events.put(json.loads(line[6:]))
        except (OSError, ValueError):
            pass  # closed by close() from the test's thread

    def next(self, timeout=5):
        return self.events.get(timeout=timeout)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def discoverd(start_pierd, pier_store):
    return start_pierd("discoverd", args=["--store", pier_store]).url


def test_discoverd_register_list_follow(discoverd):
    base = discoverd + "/services/api"
    assert http("GET", base + "/leader")[0] == 404  # no instances: a bare 404
    stream = SSE(base + "/instances")
    leader_stream = SSE(base + "/leader")
    try:
        ev = stream.next()
        assert ev == {"service": "api", "kind": "current", "instance": None}
        status, _, body = http("PUT", base + "/instances/a",
                               {"addr": "127.0.0.1:7101", "meta": {"v": "1"}, "ttl": 5})
        assert status == 200, body
        inst = json.loads(body)
        assert inst["addr"] == "127.0.0.1:7101" and inst["meta"] == {"v": "1"}
        ev = stream.next()
        assert ev["kind"] == "up" and ev["instance"]["id"] == "a" and ev["service"] == "api"
        assert stream.next()["kind"] == "leader"
        assert leader_stream.next()["instance"]["id"] == "a"

        assert http("PUT", base + "/instances/b", {"addr": "127.0.0.1:7102"})[0] == 200
        assert stream.next()["instance"]["id"] == "b"
        # A heartbeat with the same body changes nothing a watcher sees...
        assert http("PUT", base + "/instances/a",
                     {"addr": "127.0.0.1:7101", "meta": {"v": "1"}, "ttl": 5})[0] == 200
        # ...a changed body is an update.
        assert http("PUT", base + "/instances/a",
                     {"addr": "127.0.0.1:7101", "meta": {"v": "2"}, "ttl": 5})[0] == 200
        ev = stream.next()
        assert ev["kind"] == "update" and ev["instance"]["meta"] == {"v": "2"}

        status, _, body = http("GET", base + "/instances")
        assert [i["id"] for i in json.loads(body)] == ["a", "b"]
        status, _, body = http("GET", base + "/leader")
        assert json.loads(body)["id"] == "a"
        status, _, body = http("GET", discoverd + "/services")
        assert json.loads(body) == ["api"]

        assert http("DELETE", base + "/instances/a")[0] == 200
        ev = stream.next()
        assert ev["kind"] == "down" and ev["instance"]["id"] == "a"
        assert leader_stream.next()["instance"]["id"] == "b"
        assert http("DELETE", base + "/instances/a")[0] == 404
    finally:
        stream.close()
        leader_stream.close()


def test_discoverd_heartbeat_expiry(discoverd):
    base = discoverd + "/services/short"
    stream = SSE(base + "/instances")
    try:
        assert stream.next()["kind"] == "current"
        assert http("PUT", base + "/instances/x", {"addr": "127.0.0.1:1", "ttl": 1})[0] == 200
        assert stream.next()["kind"] == "up"
        stream.next()  # leader
        start = time.monotonic()
        ev = stream.next(timeout=5)
        assert ev["kind"] == "down" and time.monotonic() - start < 4
        assert json.loads(http("GET", base + "/instances")[2]) == []
    finally:
        stream.close()


BAD = [
    ("PUT", "/services/web/instances/a", {"proto": "tcp"}, "addr"),
    ("PUT", "/services/web/instances/a", {"addr": 5}, "addr"),
    ("PUT", "/services/web/instances/a", {"addr": "h:1", "ttl": 0}, "ttl"),
    ("PUT", "/services/web/instances/a", {"addr": "h:1", "meta": {"n": 1}}, "meta"),
    ("PUT", "/services/Bad!/instances/a", {"addr": "h:1"}, "service name"),
    ("PUT", "/services/web/instances/a%21b", {"addr": "h:1"}, "instance id"),
    ("PUT", "/services/web/instances/a%00b", {"addr": "h:1"}, "instance id"),
    ("PUT", "/services/web/instances/.hidden", {"addr": "h:1"}, "instance id"),
    ("PUT", "/services/web/instances/a", {"addr": "h" * 300}, "addr"),
    ("PUT", "/services/web/instances/a", {"addr": "h:1", "meta": {"k": "v" * 20000}}, "meta"),
]


@pytest.mark.parametrize("method,path,body,word", BAD, ids=[b[3] + str(i) for i, b in enumerate(BAD)])
def test_discoverd_bad_input(discoverd, method, path, body, word):
    status, headers, text = http(method, discoverd + path, body)
    assert status == 400, text
    err = json.loads(text)
    assert err["code"] == "validation_error" and word in err["message"], err
    assert json.loads(http("GET", discoverd + "/services")[2]) == []


def test_discoverd_malformed_and_unknown(discoverd):
    req = urllib.request.Request(discoverd + "/services/web/instances/a", data=b"{nope",
                                 method="PUT")
    try:
        urllib.request.urlopen(req, timeout=5)
        assert False
    except urllib.error.HTTPError as e:
        assert e.code == 400 and json.loads(e.read())["code"] == "syntax_error"
    status, headers, body = http("GET", discoverd + "/nothing/here")
    assert status == 404 and body == b"" and "json" not in (headers["Content-Type"] or "")


def test_discoverd_key(start_pierd, pier_store):
    url = start_pierd("discoverd", args=["--store", pier_store, "--key", "k3y"]).url
    assert http("GET", url + "/services")[0] == 401
    assert http("GET", url + "/.well-known/status")[0] == 200
    auth = {"Authorization": "Basic OmszeQ=="}  # ":k3y"
    assert http("GET", url + "/services", headers=auth)[0] == 200


def test_discoverd_ttl_change_takes_effect(discoverd):
    """A heartbeat with another TTL registers anew under that TTL."""
    base = discoverd + "/services/ttl"
    assert http("PUT", base + "/instances/x", {"addr": "127.0.0.1:1", "ttl": 1})[0] == 200
    assert http("PUT", base + "/instances/x", {"addr": "127.0.0.1:1", "ttl": 60})[0] == 200
    time.sleep(2.5)  # past the first TTL: the instance must still be there
    assert [i["id"] for i in json.loads(http("GET", base + "/instances")[2])] == ["x"]


def test_discoverd_delete_leaves_a_shared_lease_alone(discoverd, pier_store):
    """DELETE removes the instance only: other keys under its lease (a host
    record, say) must live on."""
    import base64

    def gw(path, body):
        req = urllib.request.Request(pier_store + path, data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def b64(s):
        return base64.b64encode(s.encode()).decode()

    lease = gw("/v3/lease/grant", {"TTL": 60})["ID"]
    value = {"id": "h1", "service": "shared", "addr": "127.0.0.1:2", "proto": "tcp", "meta": {}}
    gw("/v3/kv/put", {"key": b64("/pier/v1/services/shared/h1"),
                      "value": b64(json.dumps(value)), "lease": lease})
    gw("/v3/kv/put", {"key": b64("/pier/v1/hosts/h1"), "value": b64("{}"), "lease": lease})
    assert http("DELETE", discoverd + "/services/shared/instances/h1")[0] == 200
    assert json.loads(http("GET", discoverd + "/services/shared/instances")[2]) == []
    host = gw("/v3/kv/range", {"key": b64("/pier/v1/hosts/h1")})
    assert host.get("kvs"), "the host record under the same lease was deleted"
