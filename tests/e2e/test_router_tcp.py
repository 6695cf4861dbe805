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


def tcp_router(renv, *args):
    return renv.router("--tcp-ip", "127.0.0.1", *args)


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


# ---- memory, the router's own ports, shutdown ----

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def piece(i):
    return b"%099d\n" % i  # 100 bytes


class Flood:
    """A backend that, on each connection, waits for one byte and then
    writes `count` pieces of 100 bytes, one send each (Nagle off), paced
    (a short busy wait between sends) so the router reads them one or two
    at a time rather than coalesced."""

    def __init__(self, count):
        self.count = count
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.sent = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not s.recv(1):
                return
            clock = time.perf_counter
            for i in range(self.count):
                s.sendall(piece(i))
                self.sent = i + 1
                t = clock()
                while clock() - t < 15e-6:
                    pass
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()

    def stop(self):
        self.lsock.close()


def connect_when_routed(port, timeout=PROPAGATE_S + 3):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=2)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"tcp port {port} never listened"
            time.sleep(0.02)


def test_tcp_small_writes_bounded_memory(renv):
    """A backend writing 100-byte pieces to a client that does not read:
    the router holds a bounded amount of memory for the connection (not one
    64 KiB buffer per piece), and the client later gets every byte."""
    count = 200_000
    f = Flood(count)
    try:
        register(renv.store, "flood", f.addr)
        port = free_port()
        route_tcp(renv.store, port, "flood")
        r = tcp_router(renv)
        s = connect_when_routed(port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        time.sleep(0.3)
        base = rss_kib(r.pid)
        s.sendall(b"g")
        peak = base
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            peak = max(peak, rss_kib(r.pid))
            time.sleep(0.05)
        assert f.sent < count, "the router never pushed back"
        growth_mib = (peak - base) / 1024
        assert growth_mib < 8, f"router RSS grew {growth_mib:.1f} MiB for one stalled client"
        want = b"".join(piece(i) for i in range(count))
        got = bytearray()
        s.settimeout(30)
        while True:
            part = s.recv(1 << 20)
            if not part:
                break
            got += part
        assert len(got) == len(want)
        assert bytes(got) == want
        s.close()
    finally:
        f.stop()


def http_reply_start(port):
    """Sends a request on a new connection to port; returns the first bytes
    of whatever comes back."""
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        c.sendall(b"GET / HTTP/1.1\r\nHost: nothing.test\r\nConnection: close\r\n\r\n")
        got = b""
        while len(got) < 9:
            part = c.recv(100)
            if not part:
                break
            got += part
        return got
    finally:
        c.close()


def test_tcp_route_on_router_http_port(renv, echoes):
    """A tcp route on the router's own http port takes none of its HTTP
    connections (SO_REUSEPORT would have put both in one group); the route
    is not listened on and a warning names its port, once."""
    e = echoes("E")
    register(renv.store, "tsvc", e.addr)
    http_port, other = free_port(), free_port()
    route_tcp(renv.store, http_port, "tsvc")
    route_tcp(renv.store, other, "tsvc")
    r = renv.router("--tcp-ip", "127.0.0.1", port=http_port)
    assert wait_tcp(other, timeout=5) == "E"  # the table with both routes is in
    time.sleep(0.2)
    bad = []
    for _ in range(200):
        got = http_reply_start(http_port)
        if not got.startswith(b"HTTP/1.1 "):
            bad.append(got)
    assert not bad, f"{len(bad)} of 200 HTTP connections were not answered by HTTP: {bad[:3]}"
    # many at once too, so every member of the port's group gets some
    socks = [socket.create_connection(("127.0.0.1", http_port), timeout=5) for _ in range(50)]
    for c in socks:
        c.sendall(b"GET / HTTP/1.1\r\nHost: nothing.test\r\nConnection: close\r\n\r\n")
    for c in socks:
        got = c.recv(9)
        assert got.startswith(b"HTTP/1.1 "), got
        c.close()
    warned = [ln for ln in r.stderr_text().splitlines()
              if "tcp route not listened on" in ln and f"port={http_port}" in ln]
    assert len(warned) == 1, warned
    # the other route works as ever
    s, name = connect(other)
    assert name == "E" and echo_roundtrip(s, b"ok") == b"ok"
    s.close()


def blackhole():
    """A listener whose accept queue is full (backlog 0, never accepted):
    further SYNs are dropped, so connecting to it hangs. Returns (listener,
    filler sockets, address)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    addr = ls.getsockname()
    fillers = []
    for _ in range(16):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(0.3)
        fillers.append(c)
        try:
            c.connect(addr)
        except (socket.timeout, BlockingIOError):
            return ls, fillers, "%s:%d" % addr
    raise AssertionError("the backlog never filled")


def test_tcp_stop_while_connecting(renv):
    """SIGTERM while a tcp connection waits for a backend that does not
    answer: the connection ends at once, the router exits without waiting
    out the connect timeout (nor retrying)."""
    ls, fillers, addr = blackhole()
    try:
        register(renv.store, "slow", addr)
        port = free_port()
        route_tcp(renv.store, port, "slow")
        r = tcp_router(renv, "--connect-timeout-ms", "10000")
        s = connect_when_routed(port)
        time.sleep(0.5)  # the router is connecting to the backend
        t0 = time.monotonic()
        rc = r.stop()
        took = time.monotonic() - t0
        assert rc == 0, r.stderr_tail()
        assert took < 3, f"the router took {took:.1f} s to stop"
        s.settimeout(2)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    finally:
        for c in fillers:
            c.close()
        ls.close()
