"""Regression tests for the router's HTTP proxy, one per review finding
(docs/router.md "HTTP behaviour", "Operations"): a retried request keeps
its own head, SIGTERM and a client's EOF never cut a response still being
written, half-closing clients get every answer they asked for,
absolute-form targets set Host, the keep-alive-race retry only repeats
idempotent requests, transfer codings other than chunked survive, failed
backends show in the log and the counters, Connection may name many
fields, a tunnel learns of an EOF sent before the 101, and X-Forwarded-For
shows IPv4 clients of a dual-stack listener as IPv4."""

import json
import signal
import socket
import threading
import time

import pytest

from conftest import free_port
from router_util import Store, get, register, route_http, wait_status
from test_router_ops import logfmt, read_log
from test_router_protocol import (Conn as PConn, Env, RawBackend, Reader, env,  # noqa: F401
                                  hone, hvals, parse_head, request_bytes, tokens)
from test_router_routing import renv, status_json  # noqa: F401


def wait_until(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def in_status(router, addr):
    return addr in json.dumps(status_json(router))


class ScriptedBackend:
    """A backend on raw sockets that runs script(sock, reader, index) for
    each connection it accepts (index counts from 0), in a thread."""

    def __init__(self, script):
        self.script = script
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.log = []  # (connection index, method, path, fields)
        self.n = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                i = self.n
                self.n += 1
            threading.Thread(target=self._run, args=(c, i), daemon=True).start()

    def _run(self, c, i):
        try:
            self.script(self, c, Reader(c), i)
        except (OSError, ConnectionError):
            pass
        finally:
            c.close()

    def read_request(self, r, i):
        """The next request head on r, logged; None when the peer closed."""
        try:
            head = r.read_until(b"\r\n\r\n")
        except ConnectionError:
            return None
        start, fields = parse_head(head)
        with self.lock:
            self.log.append((i, start[0], start[1], fields))
        return start, fields

    def requests(self):
        with self.lock:
            return list(self.log)

    def stop(self):
        self.ls.close()


# ---- 1. a retried request is sent with its own head ----

def test_retry_after_refused_connect_sends_its_own_head(renv):
    """X's first pick is a backend that refuses; its retry goes out on a
    pooled connection a loop pass later, after Y's head was parsed by the
    same worker. X must get the answer to X's request, not to Y's."""
    a = renv.backend("A")
    r = renv.router(workers=1)
    for trial in range(4):
        svc, host = f"svc{trial}", f"x{trial}.test"
        register(renv.store, svc, a.addr)
        route_http(renv.store, host, svc)
        wait_status(r.http, host, 200)
        # X, Y and W open keep-alive connections whose first requests
        # overlap: three connections to A wait in the pool afterwards
        x, y, w = PConn(r.http), PConn(r.http), PConn(r.http)
        for c in (x, y, w):
            c.send(request_bytes("GET", "/slow?ms=300", host))
        for c in (x, y, w):
            assert c.response()[0] == 200
        # a request held open on A, so A has more open requests than the
        # refusing backend and X's pick goes there
        n = a.requests
        z = PConn(r.http)
        z.send(request_bytes("GET", "/slow?ms=3000", host))
        wait_until(lambda: a.requests > n, what="the held request")
        dead = f"127.0.0.1:{free_port()}"
        register(renv.store, svc, dead)
        wait_until(lambda: in_status(r, dead), what="the refusing backend in /status")
        # both requests reach the worker in one poll: X is parsed and
        # connects, Y is parsed, then X's refusal is handled
        r.proc.send_signal(signal.SIGSTOP)
        try:
            x.send(request_bytes("GET", f"/x-{trial}", host, [("Authorization", "secret-of-X")]))
            y.send(request_bytes("GET", f"/y-{trial}", host, [("Authorization", "secret-of-Y")]))
            time.sleep(0.1)
        finally:
            r.proc.send_signal(signal.SIGCONT)
        for c, who in ((x, "x"), (y, "y")):
            status, _, body = c.response()
            assert status == 200, (trial, who, status, body)
            got = json.loads(body)
            assert got["path"] == f"/{who}-{trial}", (trial, who, got)
            assert got["headers"]["authorization"] == f"secret-of-{who.upper()}", (trial, who, got)
        for c in (x, y, w, z):
            c.close()
    st = status_json(r)
    assert st["counters"]["retries"] >= 4, st


# ---- 2. queued response bytes outlive SIGTERM and a client's EOF ----

def sized_response(req):
    """A body of the size the path asks for (/r/BYTES), head and body in one
    write, so the router reads each response whole."""
    tail = req["path"].rsplit("/", 1)[1]
    n = int(tail) if tail.isdigit() else 2
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + b"r" * n


@pytest.mark.parametrize("how", ["sigterm", "client_eof"])
def test_queued_responses_survive(start_pierd, how):
    """A client pipelines many requests and reads nothing: once the kernel's
    buffers are full the router queues the responses, answers the last one
    and waits for the next request with megabytes still to write. Then
    SIGTERM comes, or the client shuts its write side: every byte must
    still arrive, then the connection closes."""
    e = Env(start_pierd, router_args=["--workers", "1"])
    be = e.add("q.test", "q", RawBackend(respond=sized_response))
    try:
        be.reset()
        count, size = 400, 20000
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(20)
        s.connect(("127.0.0.1", e.port))
        before = status_json(e.router)["counters"]["responses_2xx"]
        s.sendall(b"".join(request_bytes("GET", f"/r/{size}", "q.test") for _ in range(count)))
        wait_until(lambda: status_json(e.router)["counters"]["responses_2xx"] - before >= count,
                   timeout=20, what="every response queued")
        if how == "sigterm":
            e.router.proc.send_signal(signal.SIGTERM)
        else:
            s.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # time to close the connection, had the router a mind to
        rd = Reader(s)
        got = 0
        try:
            while got < count:
                head = rd.read_until(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head[:100]
                assert len(rd.read_exact(size)) == size
                got += 1
        except ConnectionError:
            pass
        assert got == count, f"{count - got} of {count} responses were lost"
        data, closed = rd.read_to_close(5)
        assert data == b"" and closed
        s.close()
        if how == "sigterm":
            e.router.proc.wait(timeout=10)
            assert e.router.proc.returncode == 0, e.router.stderr_tail()
    finally:
        e.close()


def test_sigterm_mid_response_slow_reader(renv):
    """SIGTERM while a slow client is in the middle of a large response:
    it still gets every byte, then the connection closes."""
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "big.test", "svc")
    r = renv.router()
    wait_status(r.http, "big.test", 200)
    n = 50_000_000
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(20)
    s.connect(("127.0.0.1", r.http))
    s.sendall(request_bytes("GET", f"/big?n={n}", "big.test"))
    rd = Reader(s)
    rd.read_until(b"\r\n\r\n")
    got = len(rd.buf)
    signalled = False
    while True:
        chunk = s.recv(256 * 1024)
        if not chunk:
            break
        got += len(chunk)
        if not signalled and got > n // 3:
            r.proc.send_signal(signal.SIGTERM)
            signalled = True
        if got < n // 2:
            time.sleep(0.002)  # slowly through the middle
    s.close()
    assert got == n, f"{n - got} bytes of the response were lost"
    r.proc.wait(timeout=10)
    assert r.proc.returncode == 0, r.stderr_tail()


# ---- 3. half-closing clients ----

def test_pipelined_requests_then_eof_all_answered(env):
    c = PConn(env.port)
    c.send(request_bytes("GET", "/one", "raw.test") + request_bytes("GET", "/two", "raw.test") +
           request_bytes("GET", "/three", "raw.test"))
    c.sock.shutdown(socket.SHUT_WR)
    for path in ("/one", "/two", "/three"):
        status, _, body = c.response()
        assert status == 200, (path, status, body)
        assert json.loads(body)["path"] == path
    assert c.closed_within(5), "the connection stayed open after the last answer"
    assert env.raw.paths() == ["/one", "/two", "/three"]


def test_pipelined_then_incomplete_head_then_eof(env):
    c = PConn(env.port)
    c.send(request_bytes("GET", "/one", "raw.test") + request_bytes("GET", "/two", "raw.test") +
           b"GET /three HTTP/1.1\r\nHost: raw")
    c.sock.shutdown(socket.SHUT_WR)
    for path in ("/one", "/two"):
        status, _, body = c.response()
        assert status == 200 and json.loads(body)["path"] == path, (path, status, body)
    assert c.closed_within(5)
    assert env.raw.paths() == ["/one", "/two"]


@pytest.mark.parametrize("chunked", [False, True])
def test_whole_post_then_eof_while_connecting(start_pierd, chunked):
    """A route without keep-alive to backends: every request waits for a
    new connection, and the client's EOF comes while it does."""
    e = Env(start_pierd)
    raw = e.add("post.test", "post", RawBackend(), disable_keep_alives=True)
    try:
        body = b"x" * 5000
        if chunked:
            data = (b"POST /p HTTP/1.1\r\nHost: post.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"1388\r\n" + body + b"\r\n0\r\n\r\n")
        else:
            data = request_bytes("POST", "/p", "post.test", body=body)
        for _ in range(3):
            raw.reset()
            c = PConn(e.port)
            c.send(data)
            c.sock.shutdown(socket.SHUT_WR)
            status, _, rbody = c.response()
            assert status == 200, (status, rbody)
            got = json.loads(rbody)
            assert got["body_bytes"] == len(body) and got["path"] == "/p", got
            assert c.closed_within(5)
            c.close()
        # a body cut short by the EOF is not sent
        raw.reset()
        c = PConn(e.port)
        c.send(request_bytes("POST", "/cut", "post.test", body=body)[:-10])
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_within(5)
        c.close()
        time.sleep(0.2)
        assert not any(q["complete"] for q in raw.requests), raw.requests
    finally:
        e.close()


# ---- 4. absolute-form targets ----

def test_absolute_form_target_sets_host(env):
    other = RawBackend()
    env.add("other.test", "other", other)
    other.reset()
    env.raw.reset()
    c = PConn(env.port)
    for target, want_host, want_path in (
            ("http://raw.test/p?q=1", "raw.test", "/p?q=1"),
            ("http://RAW.test:8080/x", "RAW.test:8080", "/x"),
            ("http://user@raw.test?z=2", "raw.test", "/?z=2"),
            ("http://raw.test", "raw.test", "/")):
        c.send(f"GET {target} HTTP/1.1\r\nHost: other.test\r\n\r\n".encode())
        status, _, body = c.response()
        assert status == 200, (target, status, body)
        req = env.raw.requests[-1]
        assert req["target"] == want_path, (target, req["target"])
        assert hvals(req["fields"], "host") == [want_host], (target, req["fields"])
    assert other.requests == []
    # a target without a host is refused
    c.send(b"GET http:///p HTTP/1.1\r\nHost: raw.test\r\n\r\n")
    assert c.response()[0] == 400


# ---- 5. the keep-alive-race retry ----

def race_script(be, sock, r, i):
    """Answers the first request on each connection, keep-alive; closes at
    the second without a word (a backend's idle timeout racing it)."""
    first = True
    while True:
        req = be.read_request(r, i)
        if req is None:
            return
        if not first:
            return
        first = False
        body = f"conn {i}".encode()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_race_retry_only_for_idempotent_requests(env):
    be = ScriptedBackend(race_script)
    env.add("race.test", "race", be, wait=False)
    try:
        wait_status(env.port, "race.test", 200)
        c = PConn(env.port)
        # each case: a request that gets a pooled connection, then one that
        # meets the race on it
        for method, extra, want in (("POST", b"Content-Length: 0\r\n", 502),
                                    ("PATCH", b"", 502),
                                    ("GET", b"", 200),
                                    ("DELETE", b"", 200),
                                    ("PUT", b"Content-Length: 0\r\n", 502)):
            c.send(b"GET /warm HTTP/1.1\r\nHost: race.test\r\n\r\n")
            assert c.response()[0] == 200
            before = len([x for x in be.requests() if x[2] == f"/{method}"])
            c.send(f"{method} /{method} HTTP/1.1\r\nHost: race.test\r\n".encode() + extra + b"\r\n")
            status, fields, body = c.response()
            assert status == want, (method, status, body)
            sent = len([x for x in be.requests() if x[2] == f"/{method}"]) - before
            assert sent == (2 if want == 200 else 1), (method, be.requests())
            if want != 200 or "close" in tokens(fields, "connection"):
                c.close()
                c = PConn(env.port)
    finally:
        be.stop()


# ---- 6. transfer codings ----

def test_transfer_codings_before_chunked_kept(env):
    def respond(req):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n")

    gz = env.add("gz.test", "gz", RawBackend(respond=respond))
    gz.reset()
    c = PConn(env.port)
    c.send(b"POST /up HTTP/1.1\r\nHost: gz.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    status, fields, body = c.response()
    assert status == 200
    assert hvals(fields, "transfer-encoding") == ["gzip, chunked"], fields
    assert body == b"hello"
    req = gz.requests[-1]
    assert hvals(req["fields"], "transfer-encoding") == ["gzip, chunked"], req["fields"]
    assert req["body_bytes"] == 3


# ---- 7. failed backends in the log and the counters ----

def test_failed_backend_logged_and_counted(renv, tmp_path):
    a = renv.backend("A")
    dead = f"127.0.0.1:{free_port()}"
    register(renv.store, "slow", a.addr)
    register(renv.store, "dead", dead)
    route_http(renv.store, "slow.test", "slow")
    route_http(renv.store, "dead.test", "dead")
    log = tmp_path / "access.log"
    r = renv.router("--access-log", str(log), "--backend-timeout-ms", "300", workers=1)
    wait_status(r.http, "slow.test", 200)
    assert get(r.http, "slow.test", "/slow?ms=1500")[0] == 504
    assert get(r.http, "dead.test", "/d")[0] == 502
    lines = [logfmt(x) for x in read_log(log, 3)]
    by_path = {x["path"]: x for x in lines}
    assert by_path["/slow"]["status"] == "504" and by_path["/slow"]["backend"] == a.addr, lines
    assert by_path["/d"]["status"] == "502" and by_path["/d"]["backend"] == dead, lines
    st = status_json(r)
    entries = [d for d in find_backends(st) if d.get("addr") == a.addr]
    assert entries and all(d["failures"] >= 1 for d in entries), st


def find_backends(j):
    out = []
    if isinstance(j, dict):
        if "failures" in j:
            out.append(j)
        for v in j.values():
            out += find_backends(v)
    elif isinstance(j, list):
        for v in j:
            out += find_backends(v)
    return out


# ---- 8. many names in Connection ----

def test_connection_names_never_pass(env):
    names = [f"X-Hop-{i}" for i in range(40)]
    headers = [("Connection", ", ".join(names[:20])), ("Connection", ", ".join(names[20:]))]
    headers += [(n, "v") for n in names] + [("X-Keep", "yes")]
    c = PConn(env.port)
    assert c.request("GET", "/many", "raw.test", headers)[0] == 200
    fields = env.raw.requests[-1]["fields"]
    assert not [k for k, _ in fields if k.startswith("x-hop-")], fields
    assert hvals(fields, "x-keep") == ["yes"]
    # more than the router tracks: refused rather than passed on
    many = [f"x-h{i}" for i in range(100)]
    status, _, _ = c.request("GET", "/too-many", "raw.test", [("Connection", ",".join(many))])
    assert status == 400
    assert env.raw.requests[-1]["path"] == "/many"


def test_connection_names_in_a_response(env):
    names = [f"X-Hop-{i}" for i in range(40)]

    def respond(req):
        if req["path"] == "/too-many":
            conn = ",".join(f"x-h{i}" for i in range(100))
        else:
            conn = ", ".join(names)
        return (("HTTP/1.1 200 OK\r\nConnection: %s\r\n" % conn) +
                "".join(f"{n}: v\r\n" for n in names) + "Content-Length: 2\r\n\r\nok").encode()

    env.add("resp.test", "resp", RawBackend(respond=respond))
    status, fields, body = PConn(env.port).request("GET", "/many", "resp.test")
    assert status == 200 and body == b"ok"
    assert not [k for k, _ in fields if k.startswith("x-hop-")], fields
    assert PConn(env.port).request("GET", "/too-many", "resp.test")[0] == 502


# ---- 9. a client's EOF before the 101 ----

def late_101_script(be, sock, r, i):
    """Answers an upgrade after 300 ms, then waits for the tunnel to pass
    on the client's EOF and says whether it came."""
    req = be.read_request(r, i)
    if req is None:
        return
    time.sleep(0.3)
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\n"
                 b"Connection: Upgrade\r\n\r\n")
    sock.settimeout(5)
    got = bytes(r.buf)
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                sock.sendall(b"saw-eof after " + got)
                return
            got += d
    except socket.timeout:
        sock.sendall(b"no-eof")


def test_tunnel_gets_eof_sent_before_101(env):
    be = ScriptedBackend(late_101_script)
    env.add("up.test", "up", be, wait=False)
    try:
        # (a request without Upgrade answered 101 is the backend's fault: 502)
        wait_until(lambda: get(env.port, "up.test", "/", timeout=3)[0] == 502, timeout=10,
                   what="the route")
        c = PConn(env.port)
        c.send(b"GET /ws HTTP/1.1\r\nHost: up.test\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n"
               b"\r\nearly bytes")
        c.sock.shutdown(socket.SHUT_WR)
        status, _, _ = c.head()
        assert status == 101
        rest, closed = c.r.read_to_close(8)
        assert rest == b"saw-eof after early bytes", rest
        assert closed
    finally:
        be.stop()


# ---- 10. X-Forwarded-For on a dual-stack listener ----

def test_xff_ipv4_client_on_dual_stack_listener(start_pierd):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
            s6.bind(("::", 0))
    except OSError:
        pytest.skip("no IPv6")
    store_d = start_pierd("store", name="store")
    store = Store(store_d.url)
    raw = RawBackend()
    register(store, "raw", raw.addr)
    route_http(store, "raw.test", "raw")
    port = free_port()
    start_pierd("router", name="router",
                args=["--store", store_d.url, "--http", f"[::]:{port}", "--workers", "1"])
    try:
        wait_status(port, "raw.test", 200)
        raw.reset()
        c = PConn(port)
        assert c.request("GET", "/", "raw.test")[0] == 200
        assert hone(raw.requests[-1]["fields"], "x-forwarded-for") == "127.0.0.1"
    finally:
        raw.stop()


# ---- 11. counters summed over workers ----

def test_counters_over_workers(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "cnt.test", "svc")
    r = renv.router(workers=2)
    wait_status(r.http, "cnt.test", 200)
    c0 = status_json(r)["counters"]
    for i in range(30):
        assert get(r.http, "cnt.test" if i % 3 else "none.test", f"/{i}")[0] in (200, 404)
    st = status_json(r)
    c1 = st["counters"]
    assert c1["requests"] - c0["requests"] == 30
    assert c1["responses_2xx"] - c0["responses_2xx"] == 20
    assert c1["responses_4xx"] - c0["responses_4xx"] == 10
    conns = st["connections"]
    assert 1 <= conns["idle_backend"] == conns["backend"], conns


# ---- 12. a client leaving an endless streamed response ----

EVENTS_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


def sse_chunk(text):
    data = f"data: {text}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


class EventsBackend(ScriptedBackend):
    """An endless server-sent events stream, chunked like the controller's
    GET /events: one event at once, then a keep-alive comment every
    `every` seconds, forever. closed_at[i] is when connection i's peer
    closed or reset it (time.monotonic)."""

    def __init__(self, every=5.0):
        self.every = every
        self.closed_at = {}
        super().__init__(EventsBackend.serve)

    def serve(self, sock, r, i):
        if self.read_request(r, i) is None:
            return
        sock.sendall(EVENTS_HEAD + sse_chunk("hello"))
        while True:
            # a read wakes as soon as the router closes the connection
            sock.settimeout(self.every)
            try:
                got = sock.recv(4096)
            except socket.timeout:
                sock.sendall(b"%x\r\n: ping\n\r\n" % len(b": ping\n"))
                continue
            except OSError:
                got = b""
            if not got:
                with self.lock:
                    self.closed_at[i] = time.monotonic()
                return

    def closed(self, i):
        with self.lock:
            return self.closed_at.get(i)


def open_events(port, host, timeout=10.0):
    """A client of the stream (retried while the route is not yet known)
    that has its head and first event and has read every byte sent so
    far, so its close() sends a FIN, not a reset."""
    deadline = time.monotonic() + timeout
    while True:
        c = PConn(port)
        c.send(request_bytes("GET", "/events", host, [("Accept", "text/event-stream")]))
        status, fields, _ = c.head()
        if status == 200 or time.monotonic() > deadline:
            break
        c.close()
        time.sleep(0.05)
    assert status == 200 and "chunked" in tokens(fields, "transfer-encoding"), (status, fields)
    assert c.r.read_until(b"\n\n\r\n").endswith(b"data: hello\n\n\r\n")
    c.sock.setblocking(False)
    try:
        while c.sock.recv(65536):
            pass
    except BlockingIOError:
        pass
    return c


def test_client_leaving_a_stream_closes_the_backend(env):
    """The backend is silent between events: nothing written to the client
    would reveal that it left. Its FIN alone must end the stream, and the
    backend connection with it, at once."""
    be = env.add("events.test", "events", EventsBackend(), wait=False)
    c = open_events(env.port, "events.test")
    assert be.n == 1
    time.sleep(0.2)
    c.close()
    t0 = time.monotonic()
    wait_until(lambda: be.closed(0), timeout=5, what="the backend connection to close")
    took = be.closed(0) - t0
    assert took < 1.0, f"the backend connection closed {took:.2f}s after the client left"
    # the router is fine and the next client is served
    assert PConn(env.port).request("GET", "/after", "raw.test")[0] == 200


def test_drain_ends_when_the_last_stream_client_leaves(start_pierd):
    """SIGTERM with one stream open: the router waits for it (up to the
    30 s shutdown timeout), but once its client leaves nothing is left and
    the router exits at once."""
    e = Env(start_pierd, router_args=["--shutdown-timeout-ms", "30000"])
    be = e.add("events.test", "events", EventsBackend(), wait=False)
    try:
        c = open_events(e.port, "events.test")
        e.router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert e.router.running(), "the router dropped a stream in flight"
        c.close()
        t0 = time.monotonic()
        e.router.proc.wait(timeout=40)
        took = time.monotonic() - t0
        assert e.router.proc.returncode == 0, e.router.stderr_tail()
        assert took < 2.0, f"the router exited {took:.2f}s after the last client left"
        assert be.closed(0) is not None
    finally:
        e.close()


def test_drain_timeout_names_the_stream_it_waited_for(start_pierd):
    """A stream whose client stays and whose backend never ends it keeps
    the drain until --shutdown-timeout-ms, no longer; the log says what was
    still open then."""
    e = Env(start_pierd, router_args=["--shutdown-timeout-ms", "1000"])
    e.add("events.test", "events", EventsBackend(), wait=False)
    try:
        c = open_events(e.port, "events.test")
        t0 = time.monotonic()
        e.router.proc.send_signal(signal.SIGTERM)
        e.router.proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert e.router.proc.returncode == 0, e.router.stderr_tail()
        assert 0.9 <= took < 3.0, f"the router exited after {took:.2f}s"
        c.sock.setblocking(True)
        _, closed = c.r.read_to_close(2)
        assert closed
        text = e.router.stderr_text()
        left = [logfmt(x) for x in text.splitlines() if "shutdown timeout passed" in x]
        assert left, e.router.stderr_tail()
        assert left[0].get("streaming") == "1", left[0]
        waiting = [logfmt(x) for x in text.splitlines() if "drain cut" in x]
        assert [x for x in waiting if x.get("host") == "events.test"
                and x.get("path") == "/events"], text[-3000:]
    finally:
        e.close()
