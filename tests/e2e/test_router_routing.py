"""The router end to end: which backend a request reaches (exact, wildcard
and path routes, leaders, routes that come and go under load) and how
requests spread over backends (power of two choices, sticky cookies,
keep-alive to backends), against a real `pierd store` and `pierd router`
(docs/router.md "Routes", "HTTP behaviour").

The helpers at the top (RouterEnv, Conn, Load, status_json, ...) are shared
with test_router_failure.py, test_router_ops.py and test_router_tcp.py."""

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import free_port
from router_util import (Backend, Store, deregister, get, read_response, register,
                         route_delete, route_http, wait_status)

WORKERS = 2
PROPAGATE_S = 2.0  # a route or backend change reaches the workers within this


# ---- shared helpers ----

class RouterEnv:
    """A `pierd store`, the routers started against it and the test's HTTP
    backends (stopped at teardown, before the daemons)."""

    def __init__(self, start_pierd):
        self.start_pierd = start_pierd
        self.store_d = start_pierd("store", name="store")
        self.store_url = self.store_d.url
        self.store = Store(self.store_url)
        self.backends = []
        self.routers = []

    def router(self, *args, workers=WORKERS, port=None, name=None):
        """Starts `pierd router` on a free --http port (r.http); r.url is its
        admin API."""
        port = port or free_port()
        r = self.start_pierd("router", name=name or f"router-{len(self.routers)}",
                             args=["--store", self.store_url, "--http", f"127.0.0.1:{port}",
                                   "--workers", str(workers), *args])
        r.http = port
        self.routers.append(r)
        return r

    def backend(self, name):
        """A router_util.Backend with Nagle off: its handler writes the head
        and the body separately, and with Nagle on each response waits out
        the peer's delayed ACK (40 ms), whoever the peer is."""
        b = Backend(name)
        h = b.server.RequestHandlerClass
        b.server.RequestHandlerClass = type("NoDelay", (h,), {"disable_nagle_algorithm": True})
        self.backends.append(b)
        return b

    def close(self):
        # in parallel: each stop waits out its server's 0.5 s poll
        def stop(b):
            try:
                b.stop()
            except OSError:
                pass

        ts = [threading.Thread(target=stop, args=(b,)) for b in self.backends]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=5)


@pytest.fixture
def renv(start_pierd):
    e = RouterEnv(start_pierd)
    yield e
    e.close()


def who(reply):
    """The name of the backend that answered a reply from get()."""
    status, _, body = reply
    assert status == 200, reply
    return json.loads(body)["backend"]


def wait_backend(port, host, name, path="/", timeout=PROPAGATE_S, headers=None):
    """Polls until host/path is answered by backend name; returns seconds taken."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = get(port, host, path, headers=headers, timeout=2)
            if last[0] == 200 and json.loads(last[2])["backend"] == name:
                return time.monotonic() - t0
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.02)
    raise AssertionError(f"{host}{path} never reached backend {name} in {timeout}s; last: {last!r}")


def status_json(router):
    """GET /status on the router's admin API."""
    with urllib.request.urlopen(router.url + "/status", timeout=5) as r:
        assert r.status == 200
        return json.loads(r.read())


def find_dicts(j, pred):
    """Every dict nested anywhere in j for which pred(d) holds."""
    out = []
    if isinstance(j, dict):
        if pred(j):
            out.append(j)
        for v in j.values():
            out += find_dicts(v, pred)
    elif isinstance(j, list):
        for v in j:
            out += find_dicts(v, pred)
    return out


def backend_entries(status, addr):
    """The backend objects in a /status reply whose address is addr."""
    return find_dicts(status, lambda d: addr in (d.get("addr"), d.get("address")))


def wait_backend_gone(router, addr, timeout=PROPAGATE_S):
    """Polls /status until no route lists addr as a backend; returns when."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if addr not in json.dumps(status_json(router)):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{addr} still in /status after {timeout}s: {status_json(router)}")


class Conn:
    """A client keep-alive connection: request() reuses it, and reconnects
    (counted in .connects) only when the router closed it."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.connects = 0

    def request(self, host, path="/", headers=None, method="GET"):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            self.connects += 1
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            reply = read_response(self.sock, head_only=(method == "HEAD"))
        except OSError:
            self.close()
            raise
        if reply[1].get("connection", "").lower() == "close":
            self.close()
        return reply

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Load:
    """threads client threads, each sending sequential keep-alive requests
    for host/path until stop(). Every request is recorded as (start, end,
    status or the exception's text, backend name or None)."""

    def __init__(self, port, host, path="/", threads=4, pause=0.0):
        self.port, self.host, self.path, self.pause = port, host, path, pause
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.conns = [Conn(port, timeout=10) for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                        for c in self.conns]

    def _run(self, conn):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                status, _, body = conn.request(self.host, self.path)
                name = None
                if status == 200:
                    name = json.loads(body).get("backend")
                rec = (t0, time.monotonic(), status, name)
            except (OSError, ValueError) as e:
                rec = (t0, time.monotonic(), f"{type(e).__name__}: {e}", None)
            with self.lock:
                self.results.append(rec)
            if self.pause:
                time.sleep(self.pause)
        conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=15)
        return self.results


def failures(results):
    return [r for r in results if r[2] != 200]


def wait_requests(backends, before, timeout=5.0):
    """Waits until one of backends has served more than before[i] requests;
    returns that backend."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b, n in zip(backends, before):
            if b.requests > n:
                return b
        time.sleep(0.005)
    raise AssertionError("no backend got the request")


# ---- routing ----

def test_exact_domain_host_with_port_and_case(renv):
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc-a", a.addr)
    register(renv.store, "svc-b", b.addr)
    route_http(renv.store, "a.example.com", "svc-a")
    route_http(renv.store, "b.example.com", "svc-b")
    r = renv.router()
    wait_backend(r.http, "a.example.com", "A")
    wait_backend(r.http, "b.example.com", "B")
    for host, want in (("a.example.com", "A"), ("A.Example.COM", "A"),
                       ("a.example.com:8080", "A"), ("B.EXAMPLE.com:80", "B")):
        assert who(get(r.http, host, "/x")) == want, host
    # the backend sees the request as the client sent it
    body = json.loads(get(r.http, "a.example.com:8080", "/x/y?q=1")[2])
    assert body["path"] == "/x/y?q=1"
    assert body["headers"]["host"] == "a.example.com:8080"


def test_unknown_host_404(renv):
    a = renv.backend("A")
    register(renv.store, "svc-a", a.addr)
    route_http(renv.store, "a.example.com", "svc-a")
    r = renv.router()
    wait_backend(r.http, "a.example.com", "A")
    for host in ("nope.example.org", "example.com", "b.a.example.com", "a.example.co"):
        status, headers, body = get(r.http, host, "/")
        assert status == 404, (host, status, body)
        assert headers.get("content-type", "").startswith("text/plain"), headers
        assert 0 < len(body) < 200, body
    assert a.requests == 1  # only wait_backend's request reached it


def test_wildcards_most_specific_first_exact_wins(renv):
    names = ("W1", "W2", "E", "C")
    bs = {n: renv.backend(n) for n in names}
    for n in names:
        register(renv.store, f"svc-{n.lower()}", bs[n].addr)
    route_http(renv.store, "*.example.com", "svc-w1")
    route_http(renv.store, "*.b.example.com", "svc-w2")
    route_http(renv.store, "x.b.example.com", "svc-e")
    route_http(renv.store, "*.com", "svc-c")
    r = renv.router()
    wait_backend(r.http, "x.b.example.com", "E")
    cases = {
        "x.b.example.com": "E",  # exact beats both wildcards
        "y.b.example.com": "W2",  # *.b.example.com beats *.example.com
        "Z.B.Example.Com:81": "W2",
        "deep.y.b.example.com": "W2",
        "z.example.com": "W1",
        "a.c.example.com": "W1",  # no *.c.example.com: the next one up
        "b.example.com": "W1",  # *.b.example.com does not cover b.example.com itself
        "example.com": "C",
        "other.com": "C",
    }
    for host, want in cases.items():
        assert who(get(r.http, host, "/")) == want, host
    assert get(r.http, "example.org", "/")[0] == 404


def test_path_prefixes(renv):
    names = ("ROOT", "API", "V2", "WILD", "QAPI")
    bs = {n: renv.backend(n) for n in names}
    for n in names:
        register(renv.store, f"svc-{n.lower()}", bs[n].addr)
    route_http(renv.store, "p.example.com", "svc-root", path="/")
    route_http(renv.store, "p.example.com", "svc-api", path="/api/")
    route_http(renv.store, "p.example.com", "svc-v2", path="/api/v2/")
    route_http(renv.store, "*.example.com", "svc-wild", path="/")
    route_http(renv.store, "q.example.com", "svc-qapi", path="/api/")
    route_http(renv.store, "only.example.org", "svc-qapi", path="/api/")
    r = renv.router()
    wait_backend(r.http, "p.example.com", "V2", "/api/v2/x")
    wait_backend(r.http, "q.example.com", "QAPI", "/api/")
    cases = [
        ("p.example.com", "/", "ROOT"),
        ("p.example.com", "/x/y", "ROOT"),
        ("p.example.com", "/apix", "ROOT"),  # not under /api/
        ("p.example.com", "/api", "API"),  # /api/ matches /api
        ("p.example.com", "/api?x=1", "API"),
        ("p.example.com", "/api/", "API"),
        ("p.example.com", "/api/x", "API"),
        ("p.example.com", "/api/v2", "V2"),
        ("p.example.com", "/api/v2/", "V2"),
        ("p.example.com", "/api/v2/deep/er?z=/api/", "V2"),
        ("p.example.com", "/api/v20", "API"),
        ("q.example.com", "/api/x", "QAPI"),
        ("q.example.com", "/api", "QAPI"),
        # not under any route of the exact domain: the wildcard
        ("q.example.com", "/", "WILD"),
        ("q.example.com", "/other", "WILD"),
        ("q.example.com", "/apix", "WILD"),
    ]
    for host, path, want in cases:
        assert who(get(r.http, host, path)) == want, (host, path)
    # no route of the domain covers the path and no wildcard does: 404
    assert who(get(r.http, "only.example.org", "/api/x")) == "QAPI"
    for path in ("/", "/ap", "/apix", "/API/"):
        assert get(r.http, "only.example.org", path)[0] == 404, path


def test_route_added_then_removed(renv):
    a = renv.backend("A")
    register(renv.store, "svc-a", a.addr)
    r = renv.router()
    wait_status(r.http, "new.example.com", 404, timeout=5)
    rid = route_http(renv.store, "new.example.com", "svc-a")
    took = wait_backend(r.http, "new.example.com", "A")
    assert took < PROPAGATE_S
    route_delete(renv.store, rid)
    t0 = time.monotonic()
    wait_status(r.http, "new.example.com", 404, timeout=PROPAGATE_S)
    assert time.monotonic() - t0 < PROPAGATE_S


def test_route_changed_to_another_service(renv):
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc-a", a.addr)
    register(renv.store, "svc-b", b.addr)
    rid = route_http(renv.store, "m.example.com", "svc-a")
    r = renv.router()
    wait_backend(r.http, "m.example.com", "A")
    # a keep-alive client follows the change too (the table swaps between requests)
    c = Conn(r.http)
    assert json.loads(c.request("m.example.com")[2])["backend"] == "A"
    route_http(renv.store, "m.example.com", "svc-b", id=rid)
    wait_backend(r.http, "m.example.com", "B")
    n_a = a.requests
    for _ in range(10):
        assert who(get(r.http, "m.example.com", "/")) == "B"
    deadline = time.monotonic() + PROPAGATE_S
    while json.loads(c.request("m.example.com")[2])["backend"] != "B":
        assert time.monotonic() < deadline, "the keep-alive client still reaches A"
    assert c.connects == 1
    c.close()
    # a route moved to a domain: the old domain is gone
    route_http(renv.store, "n.example.com", "svc-b", id=rid)
    wait_backend(r.http, "n.example.com", "B")
    wait_status(r.http, "m.example.com", 404, timeout=PROPAGATE_S)
    assert a.requests <= n_a + 1


def test_leader_route_oldest_instance(renv):
    a, b, c = renv.backend("A"), renv.backend("B"), renv.backend("C")
    ia, _ = register(renv.store, "svc-l", a.addr)
    register(renv.store, "svc-l", b.addr)
    route_http(renv.store, "l.example.com", "svc-l", leader=True)
    route_http(renv.store, "all.example.com", "svc-l")
    r = renv.router()
    wait_backend(r.http, "l.example.com", "A")
    assert {who(get(r.http, "l.example.com", "/")) for _ in range(20)} == {"A"}
    # the same service without leader spreads over both
    assert {who(get(r.http, "all.example.com", "/")) for _ in range(30)} == {"A", "B"}
    deregister(renv.store, "svc-l", ia)
    wait_backend(r.http, "l.example.com", "B")
    register(renv.store, "svc-l", c.addr)  # newer: queues behind B
    time.sleep(0.3)
    assert {who(get(r.http, "l.example.com", "/")) for _ in range(20)} == {"B"}
    # A comes back: it is now the youngest
    register(renv.store, "svc-l", a.addr)
    time.sleep(0.3)
    assert {who(get(r.http, "l.example.com", "/")) for _ in range(10)} == {"B"}


def _wrk(port, host, seconds, conns=4):
    p = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "3s",
                        "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
                       capture_output=True, text=True, timeout=seconds + 20)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    return int(m.group(1)), out


def test_routes_change_under_load(renv):
    """Route A carries a steady load (wrk, keep-alive) while route B is added
    and removed again and again: A never fails; B answers 200 or 404 only,
    and 404 once removed."""
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc-a", a.addr)
    register(renv.store, "svc-b", b.addr)
    route_http(renv.store, "a.example.com", "svc-a")
    r = renv.router()
    wait_backend(r.http, "a.example.com", "A")

    result = {}
    wrk = threading.Thread(target=lambda: result.update(
        zip(("n", "out"), _wrk(r.http, "a.example.com", 3))), daemon=True)
    b_load = Load(r.http, "b.example.com", threads=1, pause=0.005)
    a_load = Load(r.http, "a.example.com", threads=2)
    wrk.start()
    b_load.start()
    a_load.start()
    time.sleep(0.3)
    rid = None
    for i in range(8):
        rid = route_http(renv.store, "b.example.com", "svc-b", path="/" if i % 2 else "/x/")
        time.sleep(0.12)
        route_http(renv.store, "b.example.com", "svc-b", id=rid)  # an update too
        time.sleep(0.12)
        route_delete(renv.store, rid)
        time.sleep(0.05)
    wait_status(r.http, "b.example.com", 404, timeout=PROPAGATE_S)
    t_gone = time.monotonic()
    time.sleep(0.3)
    b_res = b_load.stop()
    a_res = a_load.stop()
    wrk.join(timeout=30)

    assert "n" in result, "wrk did not finish"
    assert "Non-2xx or 3xx responses" not in result["out"], result["out"]
    assert "Socket errors" not in result["out"], result["out"]
    assert result["n"] > 300, result["out"]
    print(f"under churn: wrk {result['n']} requests, threads {len(a_res)} on A, {len(b_res)} on B")
    assert len(a_res) > 50 and failures(a_res) == [], failures(a_res)[:10]
    assert {res[3] for res in a_res} == {"A"}
    bad_b = [res for res in b_res if res[2] not in (200, 404)]
    assert bad_b == [], bad_b[:10]
    assert any(res[2] == 200 for res in b_res), "route B never served"
    late = [res for res in b_res if res[0] > t_gone and res[2] != 404]
    assert late == [], late
    assert b.requests == sum(1 for res in b_res if res[2] == 200)


# ---- balancing ----

def test_two_backends_share_traffic(renv):
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc", a.addr)
    register(renv.store, "svc", b.addr)
    route_http(renv.store, "bal.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "bal.example.com", 200, timeout=5)
    time.sleep(0.2)  # both instances in the table
    a0, b0 = a.requests, b.requests
    for _ in range(40):
        get(r.http, "bal.example.com", "/")
    da, db = a.requests - a0, b.requests - b0
    assert da + db == 40
    assert da >= 8 and db >= 8, (da, db)
    # sequential requests on one keep-alive connection spread too
    c = Conn(r.http)
    seen = [json.loads(c.request("bal.example.com")[2])["backend"] for _ in range(40)]
    assert seen.count("A") >= 8 and seen.count("B") >= 8, seen
    assert c.connects == 1
    c.close()


def test_p2c_avoids_backend_with_pending_request(renv):
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc", a.addr)
    register(renv.store, "svc", b.addr)
    route_http(renv.store, "p2c.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "p2c.example.com", 200, timeout=5)
    time.sleep(0.2)
    before = [a.requests, b.requests]
    slow = {}
    t = threading.Thread(target=lambda: slow.update(
        reply=get(r.http, "p2c.example.com", "/slow?ms=2000")), daemon=True)
    t.start()
    busy = wait_requests([a, b], before)
    free = b if busy is a else a
    names = [who(get(r.http, "p2c.example.com", "/")) for _ in range(12)]
    assert names == [free.name] * 12, f"{busy.name} has a slow request pending: {names}"
    t.join(timeout=10)
    assert who(slow["reply"]) == busy.name


def _cookie(headers):
    """The _backend=VALUE pair of a Set-Cookie field, or None."""
    sc = headers.get("set-cookie")
    if not sc:
        return None
    pair = sc.split(";")[0].strip()
    return pair if pair.startswith("_backend=") else None


def test_sticky_cookie(renv):
    a, b = renv.backend("A"), renv.backend("B")
    register(renv.store, "svc", a.addr)
    ib, _ = register(renv.store, "svc", b.addr)
    route_http(renv.store, "s.example.com", "svc", sticky=True)
    r = renv.router()
    wait_status(r.http, "s.example.com", 200, timeout=5)
    time.sleep(0.2)
    cookies = {}
    for _ in range(40):
        reply = get(r.http, "s.example.com", "/")
        c = _cookie(reply[1])
        assert c, f"no _backend cookie: {reply[1]}"
        cookies.setdefault(who(reply), c)
        if len(cookies) == 2:
            break
    assert set(cookies) == {"A", "B"}, cookies
    assert cookies["A"] != cookies["B"]
    for name, c in cookies.items():
        for _ in range(8):
            assert who(get(r.http, "s.example.com", "/", headers={"Cookie": c})) == name
        # among other cookies
        assert who(get(r.http, "s.example.com", "/",
                       headers={"Cookie": f"a=1; {c}; z=2"})) == name
    # a tampered cookie is ignored: served, and a new cookie set
    for name, c in cookies.items():
        value = c.split("=", 1)[1]

        def flip(i):  # a character that decodes differently in hex or base64
            return value[:i] + ("x" if value[i].lower() != "x" else "y") + value[i + 1:]

        for bad in (flip(1), flip(len(value) // 2), "garbage", "", value + value):
            reply = get(r.http, "s.example.com", "/", headers={"Cookie": f"_backend={bad}"})
            assert reply[0] == 200, (bad, reply)
            fresh = _cookie(reply[1])
            assert fresh and fresh != f"_backend={bad}", (bad, reply[1])
    # a cookie for a backend that left discovery: served by a live one
    deregister(renv.store, "svc", ib)
    wait_backend_gone(r, b.addr)
    n_b = b.requests
    for _ in range(5):
        reply = get(r.http, "s.example.com", "/", headers={"Cookie": cookies["B"]})
        assert who(reply) == "A"
        assert _cookie(reply[1]) not in (None, cookies["B"])
    assert b.requests == n_b


def test_sticky_cookie_bound_to_service(renv):
    """A cookie signed for one service's backend does not steer another
    service's route, even to the same address."""
    a, b = renv.backend("A"), renv.backend("B")
    for svc in ("svc1", "svc2"):
        register(renv.store, svc, a.addr)
        register(renv.store, svc, b.addr)
    route_http(renv.store, "one.example.com", "svc1", sticky=True)
    route_http(renv.store, "two.example.com", "svc2", sticky=True)
    r = renv.router()
    wait_status(r.http, "one.example.com", 200, timeout=5)
    wait_status(r.http, "two.example.com", 200, timeout=5)
    time.sleep(0.2)
    reply = get(r.http, "one.example.com", "/")
    c1 = _cookie(reply[1])
    assert c1, reply[1]
    assert {who(get(r.http, "one.example.com", "/", headers={"Cookie": c1}))
            for _ in range(5)} == {who(reply)}
    seen = set()
    for _ in range(30):
        reply2 = get(r.http, "two.example.com", "/", headers={"Cookie": c1})
        seen.add(who(reply2))
        assert _cookie(reply2[1]) not in (None, c1), reply2[1]
    assert seen == {"A", "B"}, f"svc1's cookie steered svc2's route: {seen}"


def test_keepalive_reuse_to_backend(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "ka.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "ka.example.com", 200, timeout=5)
    c0 = a.connections
    conns = [Conn(r.http) for _ in range(4)]
    errors = []

    def run(c):
        try:
            for _ in range(50):
                assert c.request("ka.example.com", "/")[0] == 200
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert errors == []
    assert a.requests >= 200
    made = a.connections - c0
    print(f"keep-alive: {a.requests} requests over {made} backend connections")
    assert made <= WORKERS * 2 + 2, f"{made} backend connections for 200 requests"
    assert [c.connects for c in conns] == [1] * 4  # clients kept alive too
    for c in conns:
        c.close()


def test_disable_keep_alives(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "nka.example.com", "svc", disable_keep_alives=True)
    r = renv.router()
    wait_status(r.http, "nka.example.com", 200, timeout=5)
    time.sleep(0.1)
    c0, n0 = a.connections, a.requests
    c = Conn(r.http)
    for _ in range(20):
        assert c.request("nka.example.com", "/")[0] == 200
    time.sleep(0.1)
    assert a.requests - n0 == 20
    assert a.connections - c0 == 20
    assert c.connects == 1  # the client side still keeps alive
    c.close()
