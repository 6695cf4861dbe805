"""Helpers for the router's end-to-end tests: routes and discovery instances
written straight into a real store (the records docs/controller.md and
src/lib/discover.h describe), HTTP backends in threads, and raw HTTP over
sockets (so a test controls every byte)."""

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import free_port


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


class Store:
    """The etcd v3 JSON gateway of a `pierd store` (or etcd)."""

    def __init__(self, url):
        self.url = url

    def call(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value if isinstance(value, (str, bytes))
                                               else json.dumps(value))}
        if lease:
            body["lease"] = lease
        return self.call("/v3/kv/put", body)

    def delete(self, key):
        return self.call("/v3/kv/deleterange", {"key": b64(key)})

    def lease(self, ttl=30):
        return self.call("/v3/lease/grant", {"TTL": ttl})["ID"]

    def revoke(self, lease):
        return self.call("/v3/lease/revoke", {"ID": lease})


def route_http(store, domain, service, path="/", **fields):
    """Writes an http route record as the controller would; returns its id."""
    rid = fields.pop("id", None) or str(uuid.uuid4())
    rec = {"id": rid, "type": "http", "domain": domain.lower(), "path": path,
           "service": service, "sticky": False, "leader": False, "drain_backends": True,
           "disable_keep_alives": False, "parent_ref": "controller/apps/test", "app": "test",
           "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:00Z"}
    rec.update(fields)
    store.put(f"/pier/v1/routes/{rid}", rec)
    return rid


def route_tcp(store, port, service, **fields):
    rid = fields.pop("id", None) or str(uuid.uuid4())
    rec = {"id": rid, "type": "tcp", "port": port, "service": service, "leader": False,
           "drain_backends": True, "parent_ref": "controller/apps/test", "app": "test",
           "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:00Z"}
    rec.update(fields)
    store.put(f"/pier/v1/routes/{rid}", rec)
    return rid


def route_delete(store, rid):
    store.delete(f"/pier/v1/routes/{rid}")


def register(store, service, addr, ttl=30):
    """Registers addr as an instance of service under a lease of its own, as
    discover_register does; returns (instance id, lease)."""
    iid = hashlib.md5(f"tcp-{addr}".encode()).hexdigest()
    lease = store.lease(ttl)
    store.put(f"/pier/v1/services/{service}/{iid}",
              {"id": iid, "service": service, "addr": addr, "proto": "tcp", "meta": {}},
              lease=lease)
    return iid, lease


def deregister(store, service, iid):
    store.delete(f"/pier/v1/services/{service}/{iid}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes: with Nagle on, each
    # response would wait for a delayed ACK (about 40 ms).
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n, "chunked"
                left = size
                while left:
                    got = len(self.rfile.read(min(left, 1 << 16)))
                    if not got:
                        raise ConnectionError("body cut short")
                    left -= got
                n += size
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        n = 0
        while n < length:
            got = len(self.rfile.read(min(length - n, 1 << 16)))
            if not got:
                raise ConnectionError("body cut short")
            n += got
        return n, "length"

    def _reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self):
        srv = self.server.backend
        with srv.lock:
            srv.requests += 1
        path, _, query = self.path.partition("?")
        args = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path == "/slow":
            time.sleep(int(args.get("ms", "1000")) / 1000)
        n, framing = self._body()
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            for i in range(int(args.get("n", "3"))):
                part = f"part{i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/big":
            size = int(args.get("n", "1048576"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            chunk = b"x" * 65536
            while size:
                part = chunk[:min(size, len(chunk))]
                self.wfile.write(part)
                size -= len(part)
            return
        self._reply(200, {"backend": srv.name, "method": self.command, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body_bytes": n, "framing": framing})

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class Backend:
    """An HTTP/1.1 keep-alive server in a thread that answers JSON naming
    itself and echoing what it got. It counts connections accepted (to see
    keep-alive reuse) and requests. Paths: /slow?ms=N, /drop (closes without
    an answer), /chunked?n=N, /big?n=BYTES, anything else echoes."""

    def __init__(self, name="b", port=None):
        self.name = name
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        backend = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                conn = super().get_request()
                with backend.lock:
                    backend.connections += 1
                return conn

        self.server = Server(("127.0.0.1", self.port), _Handler)
        self.server.backend = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def raw(port, data, timeout=10.0, host="127.0.0.1"):
    """Sends data on a new connection and reads until the peer closes (or the
    timeout); returns the bytes read."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                out += got
        except socket.timeout:
            pass
        return out


def read_response(sock, head_only=False):
    """Reads one HTTP/1.1 response from sock (Content-Length, chunked or
    until close); returns (status, headers dict lower-cased, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError(f"closed before a response head: {buf!r}")
        buf += got
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, rest
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            got = sock.recv(65536)
            if not got:
                raise ConnectionError("body cut short")
            rest += got
        return status, headers, rest[:n]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not rest.startswith(b"\r\n") and b"\r\n\r\n" not in rest:
                    rest += sock.recv(65536)
                return status, headers, body
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body += rest[:size]
            rest = rest[size + 2:]
    while True:
        got = sock.recv(65536)
        if not got:
            return status, headers, rest
        rest += got


def get(port, host, path="/", headers=None, method="GET", body=None, timeout=10.0):
    """One request on a new connection; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return read_response(s, head_only=(method == "HEAD"))


def wait_status(port, host, status, path="/", timeout=10.0):
    """Polls until a request for host/path gets status; returns the last reply."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get(port, host, path, timeout=2)
            if last[0] == status:
                return last
        except OSError as e:
            last = e
        time.sleep(0.02)
    raise AssertionError(f"{host}{path} never answered {status}; last: {last!r}")
