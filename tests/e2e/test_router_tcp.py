"""tcp routes end to end: every worker listens on the route's port and
splices each connection to a live instance of the service (docs/router.md
"Routes": tcp)."""

import os
import socket
import threading
import time

import pytest

from conftest import free_port
from router_util import deregister, register, route_delete, route_tcp
from test_router_routing import PROPAGATE_S, renv, status_json  # noqa: F401


class Echo:
    """A TCP server in threads: on each connection it first sends its name
    and a newline, then echoes every byte; on EOF it half-closes back."""

    def __init__(self, name):
        self.name = name
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.lock = threading.Lock()
        self.socks = []
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            s.settimeout(None)
            s.sendall(self.name.encode() + b"\n")
            while True:
                got = s.recv(65536)
                if not got:
                    s.shutdown(socket.SHUT_WR)
                    return
                s.sendall(got)
        except OSError:
            pass
        finally:
            s.close()

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def echoes():
    made = []

    def make(name):
        e = Echo(name)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def connect(port, timeout=5.0):
    """Connects to the router's tcp port; returns (socket, backend name)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    line = b""
    while not line.endswith(b"\n"):
        got = s.recv(1)
        if not got:
            s.close()
            raise ConnectionError(f"closed before the greeting: {line!r}")
        line += got
    return s, line[:-1].decode()


def wait_tcp(port, timeout=PROPAGATE_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            s, name = connect(port, timeout=1)
            s.close()
            return name
        except OSError as e:
            last = e
            time.sleep(0.02)
    raise AssertionError(f"tcp port {port} never served; last: {last!r}")


def echo_roundtrip(s, data):
    """Sends data (from a thread, so neither side blocks the other) and
    reads it all back."""
    t = threading.Thread(target=s.sendall, args=(data,), daemon=True)
    t.start()
    got = b""
    while len(got) < len(data):
        part = s.recv(65536)
        if not part:
            break
        got += part
    t.join(timeout=10)
    return got


def tcp_router(renv):
    return renv.router("--tcp-ip", "127.0.0.1")


def test_tcp_echo(renv, echoes):
    e = echoes("E")
    register(renv.store, "tsvc", e.addr)
    port = free_port()
    route_tcp(renv.store, port, "tsvc")
    r = tcp_router(renv)
    assert wait_tcp(port, timeout=5) == "E"
    s, name = connect(port)
    assert name == "E"
    data = os.urandom(1 << 20)
    assert echo_roundtrip(s, data) == data
    assert echo_roundtrip(s, b"small") == b"small"
    # a half-close travels through: the backend's EOF comes back
    s.shutdown(socket.SHUT_WR)
    s.settimeout(3)
    assert s.recv(10) == b""
    s.close()
    # several connections at once, each its own stream
    socks = [connect(port)[0] for _ in range(5)]
    for i, c in enumerate(socks):
        c.sendall(b"conn%d" % i)
    for i, c in enumerate(socks):
        want = b"conn%d" % i
        got = b""
        while len(got) < len(want):
            got += c.recv(100)
        assert got == want
        c.close()
    assert status_tcp_counter(r) >= 7


def status_tcp_counter(router):
    return status_json(router)["counters"]["tcp_connections"]


def test_tcp_two_backends(renv, echoes):
    e1, e2 = echoes("E1"), echoes("E2")
    register(renv.store, "tsvc", e1.addr)
    register(renv.store, "tsvc", e2.addr)
    port = free_port()
    route_tcp(renv.store, port, "tsvc")
    tcp_router(renv)
    wait_tcp(port, timeout=5)
    time.sleep(0.2)
    names = []
    for _ in range(30):
        s, name = connect(port)
        names.append(name)
        s.close()
    assert names.count("E1") >= 5 and names.count("E2") >= 5, names


def test_tcp_route_removed(renv, echoes):
    e = echoes("E")
    register(renv.store, "tsvc", e.addr)
    port = free_port()
    rid = route_tcp(renv.store, port, "tsvc")
    tcp_router(renv)
    wait_tcp(port, timeout=5)
    s, _ = connect(port)
    assert echo_roundtrip(s, b"before") == b"before"
    route_delete(renv.store, rid)
    deadline = time.monotonic() + PROPAGATE_S
    while True:
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=1)
            c.close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the removed route's port still accepts"
        time.sleep(0.02)
    # refused for good (every worker closed its listener)
    for _ in range(10):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    # the connection opened before goes on
    assert echo_roundtrip(s, b"after") == b"after"
    s.close()
    # the route comes back on the same port
    route_tcp(renv.store, port, "tsvc", id=rid)
    assert wait_tcp(port) == "E"


def test_tcp_refused_backend_skipped(renv, echoes):
    e = echoes("E")
    register(renv.store, "tsvc", f"127.0.0.1:{free_port()}")  # nothing listens
    register(renv.store, "tsvc", e.addr)
    port = free_port()
    route_tcp(renv.store, port, "tsvc")
    tcp_router(renv)
    time.sleep(0.3)  # first table in: the very first connection counts too
    for _ in range(10):
        s, name = connect(port)
        assert name == "E"
        assert echo_roundtrip(s, b"x") == b"x"
        s.close()


def test_tcp_backend_leaves(renv, echoes):
    """A backend that leaves discovery keeps its open connection; new ones
    go to the other; with none left a new connection is closed at once."""
    e1, e2 = echoes("E1"), echoes("E2")
    i1, _ = register(renv.store, "tsvc", e1.addr)
    i2, _ = register(renv.store, "tsvc", e2.addr)
    port = free_port()
    route_tcp(renv.store, port, "tsvc", leader=True)
    tcp_router(renv)
    assert wait_tcp(port, timeout=5) == "E1"
    s, name = connect(port)
    assert name == "E1"
    deregister(renv.store, "tsvc", i1)
    deadline = time.monotonic() + PROPAGATE_S
    while wait_tcp(port) != "E2":
        assert time.monotonic() < deadline
    assert echo_roundtrip(s, b"still") == b"still"
    s.close()
    deregister(renv.store, "tsvc", i2)
    deadline = time.monotonic() + PROPAGATE_S
    while True:
        try:
            c, _ = connect(port, timeout=1)
            c.close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still connected with no backend"
        time.sleep(0.02)
