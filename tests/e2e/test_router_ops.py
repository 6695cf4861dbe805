"""Operating the router end to end: the access log, GET /status, a graceful
stop on SIGTERM, flag errors, and two routers on one port
(docs/router.md "Operations", "Running it")."""

import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import free_port, sanitizer_reports
from router_util import get, register, route_http, wait_status
from test_router_routing import (Conn, backend_entries, renv, status_json,  # noqa: F401
                                 wait_requests, who)

LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line):
    return {k: (v[1:-1] if v.startswith('"') else v) for k, v in LOGFMT.findall(line)}


def read_log(path, n, timeout=2.0):
    """The first n lines of the access log, waiting up to timeout for them."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        try:
            lines = [x for x in path.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            lines = []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"access log has {len(lines)} lines, want {n}: {lines}")


def test_access_log(renv, tmp_path):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "log.example.com", "svc")
    log = tmp_path / "access.log"
    log.write_text("earlier line\n")  # opened for append: what is there stays
    r = renv.router("--access-log", str(log))
    # no request yet; wait for the route without writing to the log
    deadline = time.monotonic() + 5
    while not backend_entries(status_json(r), a.addr):
        assert time.monotonic() < deadline, status_json(r)
        time.sleep(0.02)
    status, _, body = get(r.http, "log.example.com", "/x", headers={"X-Request-Id": "rid-123"})
    assert status == 200
    status404, _, body404 = get(r.http, "nope.example.com", "/y")
    assert status404 == 404
    lines = read_log(log, 3)
    assert lines[0] == "earlier line"
    assert len(lines) == 3, lines
    # each worker buffers its own lines: the two may come in either order
    recs = {logfmt(x).get("status"): logfmt(x) for x in lines[1:]}
    assert set(recs) == {"200", "404"}, lines
    ok, missing = recs["200"], recs["404"]
    for rec in (ok, missing):
        for field in ("time", "method", "host", "path", "status", "bytes", "duration_ms",
                      "backend", "request_id"):
            assert field in rec, (field, rec)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", rec["time"]), rec
        assert float(rec["duration_ms"]) >= 0
        assert rec["method"] == "GET"
        assert rec["request_id"] not in ("", "-")
    assert ok["host"] == "log.example.com" and ok["path"] == "/x"
    assert ok["status"] == "200"
    assert ok["backend"] == a.addr
    assert ok["request_id"] == "rid-123"
    assert len(body) <= int(ok["bytes"]) < len(body) + 1024, (ok, len(body))
    assert missing["host"] == "nope.example.com" and missing["path"] == "/y"
    assert missing["status"] == "404"
    assert missing["backend"] == "-"
    assert len(body404) <= int(missing["bytes"]) < len(body404) + 1024, missing
    assert missing["request_id"] != ok["request_id"]
    # one line per request, keep-alive requests included
    c = Conn(r.http)
    for i in range(5):
        assert c.request("log.example.com", f"/k{i}")[0] == 200
    c.close()
    lines = read_log(log, 8)
    assert [logfmt(x)["path"] for x in lines[3:8]] == [f"/k{i}" for i in range(5)]


def inflight_of(entry):
    for k in ("inflight", "open_requests", "in_flight", "open"):
        if k in entry:
            return entry[k]
    raise AssertionError(f"no open-request count in {entry}")


def requests_of(entry):
    for k in ("requests", "served"):
        if k in entry:
            return entry[k]
    raise AssertionError(f"no request count in {entry}")


def test_status(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "st.example.com", "svc", path="/app/")
    route_http(renv.store, "st.example.com", "svc", path="/")
    r = renv.router()
    wait_status(r.http, "st.example.com", 200, path="/app/", timeout=5)
    st = status_json(r)
    routes = find_routes(st, "st.example.com")
    assert sorted(x.get("path") for x in routes) == ["/", "/app/"], st
    assert {x.get("service") for x in routes} == {"svc"}, st
    assert backend_entries(st, a.addr), st
    c0 = st["counters"]
    e0 = backend_entries(st, a.addr)[0]
    for _ in range(7):
        assert get(r.http, "st.example.com", "/app/x")[0] == 200
    for _ in range(2):
        assert get(r.http, "nope.example.com", "/")[0] == 404
    st = status_json(r)
    c1 = st["counters"]
    assert c1["requests"] - c0["requests"] == 9, (c0, c1)
    assert c1["responses_2xx"] - c0["responses_2xx"] == 7, (c0, c1)
    assert c1["responses_4xx"] - c0["responses_4xx"] == 2, (c0, c1)
    assert c1["responses_5xx"] == c0["responses_5xx"]
    e1 = backend_entries(st, a.addr)[0]
    assert requests_of(e1) - requests_of(e0) == 7, (e0, e1)
    assert inflight_of(e1) == 0
    # a request in flight shows, with its connections
    idle = Conn(r.http)
    assert idle.request("st.example.com", "/app/")[0] == 200
    done = {}
    n = a.requests
    t = threading.Thread(target=lambda: done.update(
        r=get(r.http, "st.example.com", "/slow?ms=1000")), daemon=True)
    t.start()
    wait_requests([a], [n])
    st = status_json(r)
    assert inflight_of(backend_entries(st, a.addr)[0]) == 1, st
    conns = st["connections"]
    assert conns["client"] >= 2, conns  # the idle keep-alive one and the slow one
    assert conns["backend"] >= 1, conns
    t.join(timeout=5)
    assert done["r"][0] == 200
    idle.close()
    deadline = time.monotonic() + 2
    while True:
        st = status_json(r)
        if st["connections"]["client"] == 0 and inflight_of(backend_entries(st, a.addr)[0]) == 0:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.02)
    assert st["counters"]["requests"] - c0["requests"] == 11


def find_routes(st, domain):
    out = []

    def walk(j):
        if isinstance(j, dict):
            if j.get("domain") == domain:
                out.append(j)
            for v in j.values():
                walk(v)
        elif isinstance(j, list):
            for v in j:
                walk(v)

    walk(st)
    return out


def test_sigterm_drains_in_flight(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "term.example.com", "svc")
    r = renv.router("--shutdown-timeout-ms", "5000")
    wait_status(r.http, "term.example.com", 200, timeout=5)
    idle = Conn(r.http)
    assert idle.request("term.example.com")[0] == 200
    done = {}

    def slow():
        t0 = time.monotonic()
        done["r"] = get(r.http, "term.example.com", "/slow?ms=1500")
        done["took"] = time.monotonic() - t0

    n = a.requests
    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_requests([a], [n])
    t_sig = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    # the idle keep-alive connection is closed
    idle.sock.settimeout(2)
    try:
        assert idle.sock.recv(100) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - t_sig < 1.0
    idle.close()
    # new connections are refused (the listeners closed)
    deadline = time.monotonic() + 0.5
    while True:
        try:
            socket.create_connection(("127.0.0.1", r.http), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            # refused once the listener is closed; reset when the kernel
            # had queued the connect just before (the backlog is dropped)
            break
        assert time.monotonic() < deadline, "still accepting after SIGTERM"
        time.sleep(0.01)
    assert r.running(), "exited before its request finished"
    t.join(timeout=5)
    assert done["r"][0] == 200, done
    assert who(done["r"]) == "A"
    r.proc.wait(timeout=3)
    assert r.proc.returncode == 0, r.stderr_tail()
    assert time.monotonic() - t_sig < 1.5 + 2.0
    assert not sanitizer_reports(r.stderr_text()), r.stderr_tail()


def test_sigterm_shutdown_timeout(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "term.example.com", "svc")
    r = renv.router("--shutdown-timeout-ms", "300")
    wait_status(r.http, "term.example.com", 200, timeout=5)
    done = {}

    def slow():
        try:
            done["r"] = get(r.http, "term.example.com", "/slow?ms=4000")
        except OSError as e:
            done["r"] = e

    n = a.requests
    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_requests([a], [n])
    t_sig = time.monotonic()
    r.proc.send_signal(signal.SIGTERM)
    r.proc.wait(timeout=5)
    took = time.monotonic() - t_sig
    assert r.proc.returncode == 0, r.stderr_tail()
    assert 0.25 < took < 2.0, took
    t.join(timeout=5)
    # the request was cut: the client got no 200
    assert isinstance(done["r"], OSError) or done["r"][0] != 200, done


@pytest.mark.parametrize("flag,value", [
    ("--workers", "0"),
    ("--workers", "many"),
    ("--http", "nonsense"),
    ("--http", "127.0.0.1:99999"),
    ("--backend-timeout-ms", "0"),
    ("--access-log", "/nonexistent-dir/x.log"),
])
def test_flag_errors(renv, pier_build, flag, value):
    """A bad flag value: exit 2 at once, with one short message naming the
    flag and the value."""
    args = {"--http": f"127.0.0.1:{free_port()}", "--workers": "2"}
    args[flag] = value
    argv = [str(pier_build / "pierd"), "router", "--listen", f"127.0.0.1:{free_port()}",
            "--store", renv.store_url]
    for k, v in args.items():
        argv += [k, v]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        pytest.fail(f"pierd router {flag} {value} kept running: {err[-2000:]}")
    assert not sanitizer_reports(err), err
    assert p.returncode == 2, (p.returncode, err)
    assert flag in err and value in err, err
    assert len(err.splitlines()) <= 3, err


def test_two_routers_one_port(renv):
    """Two routers on the same --http port (SO_REUSEPORT): both take
    connections, and when one stops the other goes on serving alone."""
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "two.example.com", "svc")
    port = free_port()
    r1 = renv.router(port=port)
    wait_status(port, "two.example.com", 200, timeout=5)
    r2 = renv.router(port=port)
    deadline = time.monotonic() + 5
    while backend_entries(status_json(r2), a.addr) == []:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    n1, n2 = (status_json(x)["counters"]["requests"] for x in (r1, r2))
    for _ in range(40):
        assert get(port, "two.example.com", "/")[0] == 200
    d1 = status_json(r1)["counters"]["requests"] - n1
    d2 = status_json(r2)["counters"]["requests"] - n2
    assert d1 + d2 == 40
    assert d1 > 0 and d2 > 0, (d1, d2)
    assert r1.stop() == 0
    for _ in range(20):
        assert get(port, "two.example.com", "/")[0] == 200
