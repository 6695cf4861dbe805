"""`pierd router`: the HTTP/1.x protocol as clients and backends see it
(docs/router.md "HTTP behaviour"): the fields the router adds and the
hop-by-hop ones it drops, keep-alive and pipelining, HTTP/1.0, HEAD,
chunked and Content-Length bodies both ways, 100-continue, streaming of
large bodies in bounded memory, and WebSocket tunnels.

The helpers here (a raw-socket backend, a buffered client connection,
WebSocket frames, an RSS sampler) are shared with test_router_hostile.py
and test_router_tls.py."""

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time

import pytest

from conftest import free_port
from router_util import Backend, Store, register, route_http, wait_status

MiB = 1 << 20
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---- a buffered reader over a socket (client and backend sides) ----

class Reader:
    """A socket with a read buffer: exact reads, lines, heads."""

    def __init__(self, sock, log=None):
        self.sock = sock
        self.buf = bytearray()
        self.log = log  # a callable given every chunk read, or None

    def fill(self):
        got = self.sock.recv(256 * 1024)
        if not got:
            raise ConnectionError("peer closed")
        if self.log:
            self.log(got)
        self.buf += got

    def read_until(self, sep):
        """Bytes up to and including sep."""
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def skip(self, n, scratch):
        """Consumes n bytes without keeping them; returns n. scratch: a
        reusable memoryview the reads go into (never past n)."""
        left = n
        take = min(left, len(self.buf))
        del self.buf[:take]
        left -= take
        while left:
            got = self.sock.recv_into(scratch[:min(left, len(scratch))])
            if not got:
                raise ConnectionError(f"peer closed with {left} bytes of {n} to go")
            if self.log:
                self.log(scratch[:got])
            left -= got
        return n

    def read_to_close(self, timeout=5.0):
        """Everything until the peer closes; (bytes, closed) where closed is
        False when the timeout passed first."""
        self.sock.settimeout(timeout)
        out = bytes(self.buf)
        self.buf.clear()
        try:
            while True:
                got = self.sock.recv(65536)
                if not got:
                    return out, True
                out += got
        except socket.timeout:
            return out, False
        except ConnectionResetError:
            return out, True


def parse_head(head):
    """(start line fields, [(lower name, value)]) of a raw head."""
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    fields = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        fields.append((k.strip().lower(), v.strip()))
    return lines[0].split(" ", 2), fields


def hvals(fields, name):
    """Every value of the field name in a field list."""
    return [v for k, v in fields if k == name]


def hone(fields, name):
    v = hvals(fields, name)
    assert len(v) == 1, f"expected one {name} field, got {v!r} in {fields!r}"
    return v[0]


def tokens(fields, name):
    """The comma-separated tokens of every field name, lower case."""
    return {t.strip().lower() for v in hvals(fields, name) for t in v.split(",") if t.strip()}


def request_bytes(method, path, host, headers=(), body=None, version="HTTP/1.1"):
    lines = [f"{method} {path} {version}", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Conn:
    """A client connection (plain or an already-wrapped TLS socket) that
    reads responses one at a time, keeping bytes that follow one for the
    next (pipelining)."""

    def __init__(self, port=None, timeout=10.0, sock=None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.r = Reader(self.sock)

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, host, headers=(), body=None, version="HTTP/1.1"):
        self.send(request_bytes(method, path, host, headers, body, version))
        return self.response(head_only=(method == "HEAD"))

    def head(self):
        """(status, fields, raw head) of the next response head."""
        raw = self.r.read_until(b"\r\n\r\n")
        start, fields = parse_head(raw)
        return int(start[1]), fields, raw

    def response(self, head_only=False):
        """(status, fields, body) of the next final response (1xx skipped
        only if the caller reads them with head() first)."""
        status, fields, raw = self.head()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, fields, b""
        te = tokens(fields, "transfer-encoding")
        if "chunked" in te:
            return status, fields, self.read_chunked()
        if hvals(fields, "content-length"):
            return status, fields, self.r.read_exact(int(hone(fields, "content-length")))
        body, _ = self.r.read_to_close()
        return status, fields, body

    def read_chunked(self):
        body = bytearray()
        while True:
            line = self.r.read_until(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while self.r.read_until(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += self.r.read_exact(size)
            assert self.r.read_exact(2) == b"\r\n", "chunk data not followed by CRLF"

    def closed_within(self, timeout):
        """True when the peer closes (FIN or reset) within timeout with no
        further bytes; fails if it sends bytes."""
        data, closed = self.r.read_to_close(timeout)
        assert not data, f"unexpected bytes after the response: {data[:300]!r}"
        return closed

    def close(self):
        self.sock.close()


# ---- WebSocket frames ----

def ws_mask(payload, key):
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_frame(payload, opcode=2, mask=True):
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        hdr = bytes([b0, m | n])
    elif n < 65536:
        hdr = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        return hdr + key + ws_mask(payload, key)
    return hdr + payload


def ws_read(reader):
    """(opcode, payload, was_masked) of the next frame."""
    b0, b1 = reader.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(reader.read_exact(2), "big")
    elif n == 127:
        n = int.from_bytes(reader.read_exact(8), "big")
    masked = bool(b1 & 0x80)
    key = reader.read_exact(4) if masked else None
    payload = reader.read_exact(n)
    if masked:
        payload = ws_mask(payload, key)
    return b0 & 0x0F, payload, masked


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_upgrade_request(host, path="/ws", key=None):
    key = key or base64.b64encode(os.urandom(16)).decode()
    return key, request_bytes("GET", path, host, [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13")])


def ws_session(conn, host):
    """Runs the WebSocket checks on conn (plain or TLS): the upgrade with a
    frame in the same send, a greeting from the server, several echoes both
    ways, one over 64 KiB, and the close handshake."""
    key, head = ws_upgrade_request(host)
    first = b"first frame, sent with the upgrade request"
    conn.send(head + ws_frame(first))
    status, fields, _ = conn.head()
    assert status == 101, f"upgrade answered {status}: {fields!r}"
    assert hone(fields, "sec-websocket-accept") == ws_accept(key)
    assert "upgrade" in tokens(fields, "connection"), fields
    assert tokens(fields, "upgrade") == {"websocket"}, fields
    op, payload, masked = ws_read(conn.r)
    assert (op, payload, masked) == (1, b"hello from the backend", False)
    op, payload, masked = ws_read(conn.r)
    assert (op, payload, masked) == (2, first, False), "the frame sent with the upgrade was lost"
    msgs = [b"a", b"x" * 125, b"y" * 126, os.urandom(65535), os.urandom(70000),
            os.urandom(300 * 1024), "snow \u2603".encode()]
    for m in msgs:
        conn.send(ws_frame(m, opcode=1 if m.startswith(b"snow") else 2))
        op, payload, masked = ws_read(conn.r)
        assert not masked and len(payload) == len(m) and payload == m, \
            f"echo of {len(m)} bytes came back as {len(payload)} bytes"
    # several frames in one send, echoed in order
    burst = [os.urandom(i * 1000 + 1) for i in range(5)]
    conn.send(b"".join(ws_frame(m) for m in burst))
    for m in burst:
        assert ws_read(conn.r)[1] == m
    conn.send(ws_frame(b"\x03\xe8bye", opcode=8))
    op, payload, _ = ws_read(conn.r)
    assert op == 8 and payload[:2] == b"\x03\xe8"
    assert conn.closed_within(5), "the tunnel stayed open after the backend closed"


# ---- a backend on raw sockets ----

def echo_response(req):
    """The default RawBackend answer: JSON with what it got."""
    body = json.dumps({"method": req["method"], "path": req["path"], "fields": req["fields"],
                       "body_bytes": req["body_bytes"], "framing": req["framing"]}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


class RawBackend:
    """An HTTP/1.1 keep-alive backend on raw sockets, one thread per
    connection. It records every request head it parsed (method, path,
    fields as sent, raw head, framing, body byte count) and the first MiB
    of all bytes it read; bodies are counted and discarded through one
    reusable buffer, so it takes a GiB quickly. Requests asking for a
    WebSocket get the handshake, a text greeting, and an echo of every
    data frame, unmasked. respond(req) makes the answer's bytes."""

    RAW_CAP = MiB

    def __init__(self, respond=echo_response, pause_after=None, pause_s=0.0):
        self.respond = respond
        self.pause_after, self.pause_s = pause_after, pause_s
        self.lock = threading.Lock()
        self.requests = []
        self.connections = 0
        self.raw = bytearray()
        self.errors = []
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.raw.clear()
            self.connections = 0

    def paths(self):
        with self.lock:
            return [r["path"] for r in self.requests]

    def _log(self, chunk):
        with self.lock:
            if len(self.raw) < self.RAW_CAP:
                self.raw += bytes(chunk[:self.RAW_CAP - len(self.raw)])

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        r = Reader(c, log=self._log)
        scratch = memoryview(bytearray(MiB))
        try:
            while True:
                try:
                    head = r.read_until(b"\r\n\r\n")
                except ConnectionError:
                    return
                start, fields = parse_head(head)
                req = {"method": start[0], "target": start[1], "path": start[1].split("?")[0],
                       "version": start[2], "fields": fields, "head": head,
                       "framing": "none", "body_bytes": 0, "complete": False}
                with self.lock:
                    self.requests.append(req)
                if "websocket" in tokens(fields, "upgrade"):
                    self._websocket(c, r, req)
                    return
                if "chunked" in tokens(fields, "transfer-encoding"):
                    req["framing"] = "chunked"
                    req["body_bytes"] = self._chunked(r, scratch)
                elif hvals(fields, "content-length"):
                    req["framing"] = "length"
                    n = int(hvals(fields, "content-length")[0])
                    req["body_bytes"] = self._counted(r, n, scratch)
                req["complete"] = True
                c.sendall(self.respond(req))
                if "close" in tokens(fields, "connection"):
                    return
        except (ConnectionError, OSError, ValueError) as e:
            self.errors.append(repr(e))
        finally:
            c.close()

    def _counted(self, r, n, scratch):
        if self.pause_after is not None and n > self.pause_after:
            r.skip(self.pause_after, scratch)
            time.sleep(self.pause_s)
            return self.pause_after + r.skip(n - self.pause_after, scratch)
        return r.skip(n, scratch)

    def _chunked(self, r, scratch):
        total, paused = 0, False
        while True:
            line = r.read_until(b"\r\n")
            size = int(line[:-2].split(b";")[0], 16)
            if size == 0:
                while r.read_until(b"\r\n") != b"\r\n":
                    pass
                return total
            r.skip(size, scratch)
            total += size
            if self.pause_after is not None and not paused and total >= self.pause_after:
                paused = True
                time.sleep(self.pause_s)
            if r.read_exact(2) != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")

    def _websocket(self, c, r, req):
        key = hvals(req["fields"], "sec-websocket-key")
        if not key or "upgrade" not in tokens(req["fields"], "connection"):
            c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                   % ws_accept(key[0])).encode())
        c.sendall(ws_frame(b"hello from the backend", opcode=1, mask=False))
        while True:
            op, payload, masked = ws_read(r)
            if not masked:
                self.errors.append("a client frame arrived unmasked")
            if op == 8:
                c.sendall(ws_frame(payload[:2], opcode=8, mask=False))
                return
            c.sendall(ws_frame(payload, opcode=op, mask=False))

    def stop(self):
        self.stopped = True
        self.ls.close()


# ---- the router's memory ----

def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Samples a process's VmRSS every 100 ms in a thread; .peak, .samples."""

    def __init__(self, pid, every=0.1):
        self.pid, self.every = pid, every
        self.peak = 0
        self.samples = []
        self.done = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.done.is_set():
            v = rss_bytes(self.pid)
            self.samples.append(v)
            self.peak = max(self.peak, v)
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.t.join()
        return self.peak


# ---- a router with backends ----

class Env:
    """A store, a router on a free port, and backends behind routes."""

    def __init__(self, start_pierd, router_args=(), https=False, tls_args=()):
        self.store_d = start_pierd("store", name="store")
        self.store = Store(self.store_d.url)
        self.port = free_port()
        self.https_port = free_port() if https else None
        args = ["--store", self.store_d.url, "--http", f"127.0.0.1:{self.port}",
                "--workers", "2", *router_args]
        if https:
            args += ["--https", f"127.0.0.1:{self.https_port}", *tls_args]
        self.router = start_pierd("router", args=args, name="router")
        self.backends = []

    def add(self, domain, service, backend, wait=True, **route_fields):
        register(self.store, service, backend.addr)
        route_http(self.store, domain, service, **route_fields)
        self.backends.append(backend)
        if wait:
            wait_status(self.port, domain, 200)
        return backend

    def alive(self):
        return self.router.running()

    def close(self):
        for b in self.backends:
            b.stop()


@pytest.fixture
def env(start_pierd):
    """The router with the echo Backend (router_util) at app.test and a
    RawBackend at raw.test."""
    e = Env(start_pierd)
    e.echo = e.add("app.test", "web", Backend("echo"))
    e.raw = e.add("raw.test", "raw", RawBackend())
    e.raw.reset()
    yield e
    e.close()
    assert e.alive(), "the router died during the test"


def echo_json(body):
    return json.loads(body)


# ---- added fields ----

def test_forwarded_fields_added(env):
    c = Conn(env.port)
    t0 = time.time() * 1000
    st, _, _ = c.request("GET", "/one", "raw.test", [("X-Forwarded-For", "203.0.113.7"),
                                                   ("X-Request-Id", "client-id-42")])
    t1 = time.time() * 1000
    assert st == 200
    st, _, _ = c.request("GET", "/two", "raw.test")
    st, _, _ = c.request("GET", "/three", "raw.test")
    assert st == 200
    one, two, three = env.raw.requests
    f = one["fields"]
    assert re.fullmatch(r"203\.0\.113\.7, ?127\.0\.0\.1", hone(f, "x-forwarded-for")), f
    assert hone(f, "x-forwarded-proto") == "http"
    assert hone(f, "x-forwarded-port") == str(env.port)
    start = hone(f, "x-request-start")
    assert start.isdigit(), f"X-Request-Start {start!r} is not milliseconds"
    assert t0 - 1000 <= int(start) <= t1 + 1000, (t0, start, t1)
    assert hone(f, "x-request-id") == "client-id-42", "a sent X-Request-Id was not kept"
    # no X-Forwarded-For sent: just the client; no X-Request-Id sent: a new UUID each time
    assert hone(two["fields"], "x-forwarded-for") == "127.0.0.1"
    id2, id3 = hone(two["fields"], "x-request-id"), hone(three["fields"], "x-request-id")
    assert UUID_RE.match(id2) and UUID_RE.match(id3), (id2, id3)
    assert id2 != id3, "two requests got the same X-Request-Id"
    assert int(hone(three["fields"], "x-request-start")) >= int(start)


def test_forwarded_proto_and_port_replace_what_a_client_sent(env):
    """A plain-HTTP client claiming https must not make the backend believe it."""
    st, _, _ = Conn(env.port).request("GET", "/", "raw.test", [("X-Forwarded-Proto", "https"),
                                                               ("X-Forwarded-Port", "443")])
    assert st == 200
    f = env.raw.requests[0]["fields"]
    assert hvals(f, "x-forwarded-proto") == ["http"], f
    assert hvals(f, "x-forwarded-port") == [str(env.port)], f


def test_hop_by_hop_fields_dropped(env):
    def respond(req):
        body = b"ok"
        return (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Resp-Hop\r\nX-Resp-Hop: 1\r\n"
                b"Keep-Alive: timeout=3, max=7\r\nX-Resp-Keep: yes\r\nContent-Length: 2\r\n\r\n"
                + body)
    env.raw.respond = respond
    c = Conn(env.port)
    st, rf, body = c.request("GET", "/", "raw.test", [
        ("Connection", "keep-alive, X-Custom-Hop"), ("X-Custom-Hop", "secret"),
        ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
        ("X-Keep", "yes")])
    assert (st, body) == (200, b"ok")
    f = env.raw.requests[0]["fields"]
    names = {k for k, _ in f}
    problems = [f"request: {hop} reached the backend" for hop in
                ("x-custom-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade")
                if hop in names]
    if "x-custom-hop" in tokens(f, "connection"):
        problems.append("request: Connection still lists x-custom-hop")
    assert hvals(f, "x-keep") == ["yes"]
    # the same on the way back
    rnames = {k for k, _ in rf}
    if "x-resp-hop" in rnames:
        problems.append("response: X-Resp-Hop (listed in Connection) reached the client")
    if "timeout=3, max=7" in hvals(rf, "keep-alive"):
        problems.append("response: the backend's Keep-Alive reached the client")
    if "x-resp-hop" in tokens(rf, "connection"):
        problems.append("response: Connection still lists x-resp-hop")
    assert hvals(rf, "x-resp-keep") == ["yes"]
    assert not problems, f"{problems}\nbackend got {f!r}\nclient got {rf!r}"
    # and the connection still works
    assert c.request("GET", "/again", "raw.test")[0] == 200


# ---- connection handling ----

def test_keep_alive_and_pipelining(env):
    c = Conn(env.port)
    for i in range(5):
        st, f, body = c.request("GET", f"/seq{i}", "app.test")
        assert st == 200 and echo_json(body)["path"] == f"/seq{i}"
    # two requests in one send: two responses, in order
    c.send(request_bytes("GET", "/p1", "app.test") + request_bytes("GET", "/p2", "app.test"))
    assert echo_json(c.response()[2])["path"] == "/p1"
    assert echo_json(c.response()[2])["path"] == "/p2"
    # a body, then the next request right after it in the same send
    c.send(request_bytes("POST", "/p3", "app.test", body=b"hello")
           + request_bytes("GET", "/p4", "app.test")
           + request_bytes("POST", "/p5", "app.test", body=b"x" * 100000))
    r3, r4, r5 = (echo_json(c.response()[2]) for _ in range(3))
    assert (r3["path"], r3["body_bytes"]) == ("/p3", 5)
    assert (r4["path"], r4["body_bytes"]) == ("/p4", 0)
    assert (r5["path"], r5["body_bytes"]) == ("/p5", 100000)
    c.close()


def test_connection_close_from_client(env):
    c = Conn(env.port)
    st, f, _ = c.request("GET", "/", "app.test", [("Connection", "close")])
    assert st == 200
    assert c.closed_within(3), "Connection: close but the router kept the connection open"


def test_http10_client(env):
    c = Conn(env.port)
    st, f, body = c.request("GET", "/ten", "app.test", version="HTTP/1.0")
    assert st == 200 and echo_json(body)["path"] == "/ten"
    assert c.closed_within(3), "an HTTP/1.0 request without keep-alive left the connection open"
    c = Conn(env.port)
    for i in range(3):
        st, f, body = c.request("GET", f"/ka{i}", "app.test", [("Connection", "keep-alive")],
                                version="HTTP/1.0")
        assert st == 200 and echo_json(body)["path"] == f"/ka{i}"
        assert "keep-alive" in tokens(f, "connection"), \
            f"an HTTP/1.0 keep-alive answer must say Connection: keep-alive: {f!r}"
        assert hvals(f, "content-length"), "a keep-alive answer needs a length"
    c.close()


def test_http10_client_never_gets_chunked(env):
    """RFC 9112 7.1: chunked is not for HTTP/1.0 recipients; the body runs
    until close instead."""
    c = Conn(env.port)
    c.send(request_bytes("GET", "/chunked?n=4", "app.test", version="HTTP/1.0"))
    st, f, _ = c.head()
    assert st == 200
    assert "chunked" not in tokens(f, "transfer-encoding"), f"chunked sent to HTTP/1.0: {f!r}"
    body, closed = c.r.read_to_close(5)
    assert closed
    if hvals(f, "content-length"):
        body = body[:int(hone(f, "content-length"))]
    assert body == b"part0\npart1\npart2\npart3\n"


def test_head_has_no_body(env):
    c = Conn(env.port)
    st, f, _ = c.request("HEAD", "/h", "app.test")
    assert st == 200 and int(hone(f, "content-length")) > 0
    # had a body followed, the next response would not parse
    st, f, body = c.request("GET", "/after-head", "app.test")
    assert st == 200 and echo_json(body)["path"] == "/after-head"
    # HEAD of a chunked resource too (router_util's Backend sends a body on
    # HEAD /chunked, so a raw one answers this)
    def respond(req):
        if req["method"] == "HEAD":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return echo_response(req)
    env.raw.respond = respond
    c = Conn(env.port)
    for i in range(2):
        st, f, _ = c.request("HEAD", "/chunked", "raw.test")
        assert st == 200, f
        st, f, body = c.request("GET", f"/after-head{i}", "raw.test")
        assert st == 200 and echo_json(body)["path"] == f"/after-head{i}"
    # nothing but the heads came
    assert c.closed_within(0.3) is False


# ---- bodies ----

def chunked_body(parts):
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_chunked_request_body(env):
    parts = [b"a" * 1, b"b" * 10, os.urandom(70000), b"c" * 4096, os.urandom(300000)]
    n = sum(map(len, parts))
    c = Conn(env.port)
    for host in ("app.test", "raw.test"):
        c.send(request_bytes("POST", "/up", host, [("Transfer-Encoding", "chunked")])
               + chunked_body(parts))
        st, f, body = c.response()
        assert st == 200
        j = echo_json(body)
        assert (j["framing"], j["body_bytes"]) == ("chunked", n), j
    # chunk extensions and a trailer are accepted; the byte count stays right
    c.send(request_bytes("POST", "/ext", "app.test", [("Transfer-Encoding", "chunked")])
           + b"5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
    j = echo_json(c.response()[2])
    assert (j["framing"], j["body_bytes"]) == ("chunked", 5), j


def test_chunked_request_sent_slowly(env):
    """Chunks that arrive in pieces, split inside the size lines."""
    c = Conn(env.port)
    data = request_bytes("POST", "/slow", "raw.test", [("Transfer-Encoding", "chunked")]) \
        + chunked_body([b"x" * 100, b"y" * 20000, b"z"])
    for i in range(0, len(data), 997):
        c.send(data[i:i + 997])
        time.sleep(0.002)
    j = echo_json(c.response()[2])
    assert (j["framing"], j["body_bytes"]) == ("chunked", 20101), j


def test_chunked_response(env):
    c = Conn(env.port)
    c.send(request_bytes("GET", "/chunked?n=7", "app.test"))
    st, f, raw = c.head()
    assert st == 200 and "chunked" in tokens(f, "transfer-encoding"), f
    assert not hvals(f, "content-length")
    assert c.read_chunked() == b"".join(b"part%d\n" % i for i in range(7))
    # the connection goes on after the last chunk
    st, _, body = c.request("GET", "/next", "app.test")
    assert st == 200 and echo_json(body)["path"] == "/next"


def test_content_length_both_ways(env):
    c = Conn(env.port)
    payload = os.urandom(123457)
    st, f, body = c.request("POST", "/cl", "app.test", body=payload)
    j = echo_json(body)
    assert (st, j["framing"], j["body_bytes"]) == (200, "length", len(payload))
    assert int(hone(f, "content-length")) == len(body)
    st, f, body = c.request("GET", "/big?n=3000001", "app.test")
    assert st == 200 and hone(f, "content-length") == "3000001" and body == b"x" * 3000001
    # an empty body with Content-Length: 0
    st, f, body = c.request("POST", "/empty", "app.test", body=b"")
    assert echo_json(body)["body_bytes"] == 0


def test_expect_100_continue(env):
    c = Conn(env.port)
    payload = b"q" * 50000
    c.send(request_bytes("PUT", "/expect", "app.test", [("Expect", "100-continue"),
                                                        ("Content-Length", str(len(payload)))]))
    st, f, _ = c.head()
    assert st == 100, f"expected 100 Continue before sending the body, got {st}"
    c.send(payload)
    st, f, body = c.response()
    j = echo_json(body)
    assert (st, j["method"], j["body_bytes"]) == (200, "PUT", len(payload))
    assert j["headers"].get("expect", "").lower() == "100-continue", "Expect was not passed on"
    # the connection goes on
    assert c.request("GET", "/after", "app.test")[0] == 200


# ---- streaming in bounded memory ----

RSS_LIMIT = 64 * MiB


def test_upload_1gib_streams(start_pierd):
    """1 GiB up with Content-Length; the backend stops reading for a second
    at 256 MiB, so a router without flow control would buffer it."""
    e = Env(start_pierd)
    try:
        e.add("up.test", "up", RawBackend(pause_after=256 * MiB, pause_s=1.0))
        total = 1 << 30
        rss0 = rss_bytes(e.router.pid)
        sampler = RssSampler(e.router.pid)
        t0 = time.monotonic()
        c = Conn(e.port, timeout=60)
        c.send(request_bytes("POST", "/upload", "up.test",
                             [("Content-Length", str(total))]))
        block = memoryview(os.urandom(MiB))
        for _ in range(total // MiB):
            c.sock.sendall(block)
        st, f, body = c.response()
        took = time.monotonic() - t0
        peak = sampler.stop()
        assert st == 200, body[:300]
        j = echo_json(body)
        assert (j["framing"], j["body_bytes"]) == ("length", total), j
        assert peak < RSS_LIMIT, \
            f"router RSS peaked at {peak / MiB:.1f} MiB (was {rss0 / MiB:.1f} MiB before)"
        assert took < 30, f"1 GiB took {took:.1f} s"
        print(f"1 GiB up in {took:.1f} s, router RSS {rss0 / MiB:.1f} -> peak {peak / MiB:.1f} MiB")
    finally:
        e.close()


def test_upload_chunked_streams(env):
    """256 MiB chunked, the backend pausing for a second at 64 MiB."""
    env.add("upc.test", "upc", RawBackend(pause_after=64 * MiB, pause_s=1.0))
    total = 256 * MiB
    sampler = RssSampler(env.router.pid)
    c = Conn(env.port, timeout=60)
    c.send(request_bytes("POST", "/upload", "upc.test", [("Transfer-Encoding", "chunked")]))
    block = os.urandom(MiB)
    framed = memoryview(b"%x\r\n" % len(block) + block + b"\r\n")
    for _ in range(total // MiB):
        c.sock.sendall(framed)
    c.send(b"0\r\n\r\n")
    st, f, body = c.response()
    peak = sampler.stop()
    j = echo_json(body)
    assert (st, j["framing"], j["body_bytes"]) == (200, "chunked", total), j
    assert peak < RSS_LIMIT, f"router RSS peaked at {peak / MiB:.1f} MiB"


def test_download_200mb_streams(env):
    """200 MB down while the client stops reading for 1.5 s: the router must
    stop reading from the backend rather than buffer the rest."""
    n = 200 * 1000 * 1000
    c = Conn(env.port, timeout=60)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sampler = RssSampler(env.router.pid)
    c.send(request_bytes("GET", f"/big?n={n}", "app.test"))
    st, f, _ = c.head()
    assert st == 200 and hone(f, "content-length") == str(n)
    got = c.r.skip(10 * MiB, memoryview(bytearray(MiB)))
    time.sleep(1.5)
    mid_peak = sampler.peak
    got += c.r.skip(n - got, memoryview(bytearray(MiB)))
    peak = sampler.stop()
    assert got == n
    assert mid_peak < RSS_LIMIT and peak < RSS_LIMIT, \
        f"router RSS peaked at {peak / MiB:.1f} MiB ({mid_peak / MiB:.1f} while the client paused)"
    # nothing extra after the body, and the connection goes on
    st, _, body = c.request("GET", "/after", "app.test")
    assert st == 200 and echo_json(body)["path"] == "/after"


# ---- WebSocket ----

def test_websocket_echo(env):
    c = Conn(env.port)
    ws_session(c, "raw.test")
    req = env.raw.requests[-1]
    assert req["path"] == "/ws"
    assert "websocket" in tokens(req["fields"], "upgrade"), "Upgrade not passed when upgrading"
    assert "upgrade" in tokens(req["fields"], "connection")
    assert not env.raw.errors, env.raw.errors
    # other requests are unaffected
    assert Conn(env.port).request("GET", "/", "raw.test")[0] == 200
