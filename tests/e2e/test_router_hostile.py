"""`pierd router` against hostile clients (docs/router.md "HTTP behaviour",
src/lib/http1.h "Strictness"): malformed heads get 400 (431, 505 where the
spec says) and a closed connection, never reach a backend, and never stop
the router from serving everyone else; request smuggling shapes are
refused; a slowloris client is cut off at --header-timeout-ms; past
--max-conns new connections are closed until the old ones go."""

import json
import socket
import threading
import time
import urllib.request

import pytest

from router_util import Backend, get
from test_router_protocol import (Conn, Env, RawBackend, echo_json, hvals, parse_head,
                                  request_bytes)

HEADER_TIMEOUT_MS = 2000
MAX_HEADER = 8192


@pytest.fixture
def hostile(start_pierd):
    """A router (--header-timeout-ms 2000, --max-header-bytes 8192) with the
    echo Backend at app.test and a RawBackend at raw.test."""
    e = Env(start_pierd, router_args=["--header-timeout-ms", str(HEADER_TIMEOUT_MS),
                                      "--max-header-bytes", str(MAX_HEADER)])
    e.echo = e.add("app.test", "web", Backend("echo"))
    e.raw = e.add("raw.test", "raw", RawBackend())
    e.raw.reset()
    with e.echo.lock:
        e.echo.requests = 0
    yield e
    e.close()


def exchange(port, data, timeout=5.0, half_close=False):
    """Sends data on a new connection, then reads until the router closes:
    (bytes read, closed, seconds to close). A reset counts as closed."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            got = s.recv(65536)
            if not got:
                return out, True, time.monotonic() - t0
            out += got
    except socket.timeout:
        return out, False, time.monotonic() - t0
    except ConnectionResetError:
        return out, True, time.monotonic() - t0
    finally:
        s.close()


def status_of(reply):
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


def assert_healthy(e):
    """The router is alive and both backends answer through it."""
    assert e.alive(), f"the router died:\n{e.router.stderr_tail()}"
    st, _, body = get(e.port, "app.test", "/health-check", timeout=5)
    assert st == 200 and echo_json(body)["path"] == "/health-check"
    st, _, body = get(e.port, "raw.test", "/health-check", timeout=5)
    assert st == 200 and echo_json(body)["path"] == "/health-check"


def backend_requests(e):
    """Requests both backends saw, the health checks aside."""
    with e.echo.lock:
        n = e.echo.requests
    return n + len([p for p in e.raw.paths() if p != "/health-check"])


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: raw.test\r\n\r\n"

# (id, request bytes, status the router must answer)
BAD_HEADS = [
    ("tls-hello-on-plain-port",
     b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32, 80)) + b"\r\n\r\n", 400),
    ("text-garbage", b"hello there\r\n\r\n", 400),
    ("missing-version", b"GET /\r\nHost: raw.test\r\n\r\n", 400),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: raw.test\r\n\r\n", 400),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: raw.test\r\n\r\n", 400),
    ("lower-case-version", b"GET / http/1.1\r\nHost: raw.test\r\n\r\n", 400),
    ("http2", b"GET / HTTP/2.0\r\nHost: raw.test\r\n\r\n", 505),
    ("http1.2", b"GET / HTTP/1.2\r\nHost: raw.test\r\n\r\n", 505),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (505, 400)),
    ("no-host-1.1", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: raw.test\r\nHost: app.test\r\n\r\n", 400),
    ("bad-host-bytes", b"GET / HTTP/1.1\r\nHost: raw.test/x y\r\n\r\n", 400),
    ("space-in-field-name", b"GET / HTTP/1.1\r\nHost: raw.test\r\nBad Name: x\r\n\r\n", 400),
    ("empty-field-name", b"GET / HTTP/1.1\r\nHost: raw.test\r\n: x\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: raw.test\r\nNoColon\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: raw.test\r\nX-A: a\x00b\r\n\r\n", 400),
    ("nul-in-request-line", b"GET /a\x00b HTTP/1.1\r\nHost: raw.test\r\n\r\n", 400),
    ("ctl-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: raw.test\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: raw.test\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: raw.test\r\nX-A: a\rb\r\n\r\n", 400),
    ("bare-cr-request-line", b"GET / HTTP/1.1\rHost: raw.test\r\n\r\n", 400),
    ("header-over-max",
     b"GET / HTTP/1.1\r\nHost: raw.test\r\nX-Big: " + b"a" * (MAX_HEADER + 2000) + b"\r\n\r\n",
     431),
    ("request-line-over-max", b"GET /" + b"a" * (MAX_HEADER + 2000) + b" HTTP/1.1\r\n\r\n", 431),
    ("fields-over-max",  # 80 fields (under the 100 the parser keeps) of 160 bytes
     b"GET / HTTP/1.1\r\nHost: raw.test\r\n"
     + b"".join(b"X-A%02d: %s\r\n" % (i, b"v" * 150) for i in range(80)) + b"\r\n", 431),
    ("too-many-headers",
     b"GET / HTTP/1.1\r\nHost: raw.test\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
     + b"\r\n", (400, 431)),
    # smuggling shapes: the backend must see nothing, the smuggled request least of all
    ("cl-and-te",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("te-and-cl",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 44\r\n"
     b"\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("te-not-last-chunked",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
     b"0\r\n\r\n" + SMUGGLED, 400),
    ("te-xchunked",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
     400),
    ("te-space-before-colon",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n"
     b"\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("te-chunked-twice",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    ("te-in-http10",
     b"POST / HTTP/1.0\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
     400),
    ("cl-differing",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 5\r\nContent-Length: 49\r\n\r\n"
     b"hello" + SMUGGLED, 400),
    ("cl-plus-sign", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-overflow",
     b"POST / HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
]


def reset_backends(e):
    e.raw.reset()
    with e.echo.lock:
        e.echo.requests = 0


def test_malformed_heads_refused(hostile):
    """Every head in BAD_HEADS, one after the other on one router: the
    status the spec says with a reason in the body, then a close; nothing
    reaches a backend; everyone else is still served. One router for all
    (a router per case costs a second each); failures are listed by case."""
    failures = []
    for case, payload, want in BAD_HEADS:
        want = want if isinstance(want, tuple) else (want,)
        reset_backends(hostile)
        reply, closed, _ = exchange(hostile.port, payload, timeout=3)
        st = status_of(reply)
        body = reply.partition(b"\r\n\r\n")[2]
        problems = []
        if st not in want:
            problems.append(f"expected {want}, got {reply[:200]!r}")
        elif not body.strip():
            problems.append(f"{st} without a body (the parser's reason)")
        if not closed:
            problems.append(f"the connection stayed open after {reply[:40]!r}")
        if backend_requests(hostile):
            problems.append(f"a backend saw {hostile.raw.paths()} / {hostile.echo.requests} (echo)")
        if b"/smuggled" in bytes(hostile.raw.raw):
            problems.append("the smuggled request reached the backend")
        try:
            assert_healthy(hostile)
        except (AssertionError, OSError) as e:
            problems.append(f"not healthy afterwards: {e!r}")
        if problems:
            failures.append(f"{case}: " + "; ".join(problems))
        assert hostile.alive(), f"the router died on {case}:\n{hostile.router.stderr_tail()}"
    assert not failures, "\n".join(failures)


def test_head_just_under_the_limit_passes(hostile):
    big = "b" * (MAX_HEADER - 1500)
    st, _, body = Conn(hostile.port).request("GET", "/big-head", "raw.test", [("X-Big", big)])
    assert st == 200, body[:300]
    assert hvals(hostile.raw.requests[0]["fields"], "x-big") == [big]


def test_identical_content_lengths_accepted_once(hostile):
    st, _, body = Conn(hostile.port).request("POST", "/dup", "raw.test",
                                             [("Content-Length", "5")], body=b"hello")
    assert st == 200
    j = echo_json(body)
    assert (j["framing"], j["body_bytes"]) == ("length", 5)
    assert hvals(hostile.raw.requests[0]["fields"], "content-length") == ["5"], \
        "the router must write one Content-Length of its own"


BAD_CHUNK_SIZES = [b"zz", b"-1", b"1" + b"0" * 19, b"5 5", b"", b"0x5"]


@pytest.mark.parametrize("split", [False, True], ids=["one-send", "body-sent-later"])
def test_invalid_chunk_sizes(hostile, split):
    """A good chunk, then a bad size line: 400 or a close; the backend may
    have had the head and the good chunk, never the bad size line, never a
    complete request, never the smuggled one. split: the body follows the
    head after a pause, so the head has gone to the backend already."""
    for size_line in BAD_CHUNK_SIZES:
        reset_backends(hostile)
        head = request_bytes("POST", "/chunks", "raw.test", [("Transfer-Encoding", "chunked")])
        body = b"5\r\nhello\r\n" + size_line + b"\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n" + SMUGGLED
        if split:
            s = socket.create_connection(("127.0.0.1", hostile.port), timeout=3)
            s.sendall(head + b"5\r\nhello\r\n")
            time.sleep(0.1)
            try:
                s.sendall(body[len(b"5\r\nhello\r\n"):])
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = Conn(sock=s, timeout=3).r
            reply, closed = r.read_to_close(3)
            s.close()
        else:
            reply, closed, _ = exchange(hostile.port, head + body, timeout=3)
        what = f"chunk size {size_line!r}: "
        assert closed, what + "the connection stayed open after a broken chunked body"
        assert status_of(reply) in (None, 400), what + repr(reply[:300])
        time.sleep(0.05)
        raw = bytes(hostile.raw.raw)
        assert b"\r\n" + size_line + b"\r\n" + b"a" * 16 not in raw, \
            what + "the invalid chunk size reached the backend"
        assert not [r for r in hostile.raw.requests if r["complete"]], \
            what + "the backend got a complete request out of a broken body"
        assert "/smuggled" not in hostile.raw.paths()
        assert_healthy(hostile)


def test_body_shorter_than_content_length(hostile):
    for half_close in (True, False):
        reset_backends(hostile)
        body_cut_short(hostile, half_close)


def body_cut_short(hostile, half_close):
    head = request_bytes("POST", "/short", "raw.test", [("Content-Length", "100")])
    # the bytes that come short look like a request of their own
    if half_close:
        reply, closed, took = exchange(hostile.port, head + SMUGGLED[:40], timeout=5,
                                       half_close=True)
        assert closed and took < 3, "the router did not close a client whose body ended early"
        assert status_of(reply) in (None, 400), reply[:300]
    else:
        with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as s:
            s.sendall(head + SMUGGLED[:40])
            time.sleep(0.1)
    time.sleep(0.2)
    # the backend connection that had half a body must not carry the next request
    st, _, body = Conn(hostile.port).request("GET", "/after", "raw.test")
    assert st == 200 and echo_json(body)["path"] == "/after"
    paths = hostile.raw.paths()
    assert set(paths) <= {"/short", "/after"} and paths.count("/after") == 1, paths
    assert not [r for r in hostile.raw.requests if r["path"] == "/short" and r["complete"]]
    assert_healthy(hostile)


def test_slowloris_is_cut_off_while_others_are_served(hostile):
    result = {}

    def slow():
        s = socket.create_connection(("127.0.0.1", hostile.port), timeout=10)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        out = b""
        try:
            for b in b"X-Slow: " + b"a" * 30:
                if time.monotonic() - t0 > 6:
                    result["never_closed"] = True
                    break
                s.sendall(bytes([b]))
                s.settimeout(1.0)
                try:
                    got = s.recv(65536)
                except socket.timeout:
                    continue
                result["took"] = time.monotonic() - t0
                out += got
                if got:  # an answer: read the rest until the close
                    s.settimeout(2.0)
                    while got:
                        got = s.recv(65536)
                        out += got
                break
        except (BrokenPipeError, ConnectionResetError):
            result.setdefault("took", time.monotonic() - t0)
        except socket.timeout:
            result["not_closed_after_answer"] = True
        result["reply"] = out
        s.close()

    t = threading.Thread(target=slow)
    t.start()
    latencies = []
    while t.is_alive():
        t0 = time.monotonic()
        st, _, _ = get(hostile.port, "app.test", "/fast", timeout=5)
        latencies.append(time.monotonic() - t0)
        assert st == 200
        time.sleep(0.05)
    t.join()
    assert not result.get("never_closed"), "a client sending a byte a second was never closed"
    assert not result.get("not_closed_after_answer"), f"answered but not closed: {result!r}"
    assert HEADER_TIMEOUT_MS / 1000 - 0.3 <= result["took"] <= 3.5, result
    assert status_of(result["reply"]) == 408, \
        f"docs/router.md: 408 then close; got {result['reply'][:200]!r}"
    latencies.sort()
    assert len(latencies) >= 10 and latencies[len(latencies) // 2] < 0.2 and latencies[-1] < 1.0, \
        f"others waited meanwhile: median {latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s"
    assert_healthy(hostile)


def test_header_timeout_counts_the_whole_head(hostile):
    """A head sent one line at a time, each line quickly but the whole
    slower than the timeout, is cut off too."""
    s = socket.create_connection(("127.0.0.1", hostile.port), timeout=10)
    t0 = time.monotonic()
    s.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
    closed_at = None
    for i in range(40):
        try:
            s.sendall(b"X-Line-%d: v\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic() - t0
            break
        s.settimeout(0.1)
        try:
            got = s.recv(65536)
            if not got or got.startswith(b"HTTP/1.1 408"):
                closed_at = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed_at = time.monotonic() - t0
            break
    s.close()
    assert closed_at is not None and closed_at <= 3.5, closed_at


def client_conns(e):
    """connections.client of the admin API's GET /status (src/router/router.h)."""
    with urllib.request.urlopen(e.router.url + "/status", timeout=5) as r:
        return json.loads(r.read())["connections"]["client"]


def wait_client_conns(e, n, timeout=5.0):
    """Waits until the router has accepted n client connections (under load
    some may still sit in a listener's backlog)."""
    deadline = time.monotonic() + timeout
    while client_conns(e) != n:
        assert time.monotonic() < deadline, f"the router counts {client_conns(e)} clients, not {n}"
        time.sleep(0.02)


def test_max_conns(start_pierd):
    e = Env(start_pierd, router_args=["--max-conns", "8"])
    try:
        e.add("app.test", "web", Backend("echo"))
        idle = [Conn(e.port) for _ in range(8)]
        wait_client_conns(e, 8)
        # past the limit: closed at accept, no answer
        for _ in range(4):
            reply, closed, took = exchange(e.port, request_bytes("GET", "/", "app.test"),
                                           timeout=3)
            assert closed and not reply, f"connection 9+ was served: {reply[:200]!r}"
        # the ones within the limit work
        for c in idle:
            st, _, _ = c.request("GET", "/in", "app.test")
            assert st == 200
        for c in idle:
            c.close()
        # the router recovers once they went
        deadline = time.monotonic() + 3
        while True:
            try:
                if get(e.port, "app.test", "/again", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "still refusing after the idle clients left"
            time.sleep(0.05)
        # and the limit still holds afterwards (counts went back down, not below zero)
        conns = [Conn(e.port) for _ in range(8)]
        for c in conns:
            assert c.request("GET", "/x", "app.test")[0] == 200
        wait_client_conns(e, 8)
        reply, closed, _ = exchange(e.port, request_bytes("GET", "/", "app.test"), timeout=3)
        assert closed and not reply, "the limit was lost after connections closed"
        for c in conns:
            c.close()
        assert e.alive()
    finally:
        e.close()


def test_pipelined_garbage_after_a_good_request(hostile):
    """A good request then garbage on one connection: the first is answered,
    the garbage gets 400 and the connection closes."""
    reply, closed, _ = exchange(hostile.port, request_bytes("GET", "/good", "raw.test")
                                + b"GARBAGE\x00\r\n\r\n")
    assert closed
    first, _, rest = reply.partition(b"\r\n\r\n")
    assert status_of(reply) == 200, reply[:300]
    assert b"HTTP/1.1 400" in rest, f"no 400 for the garbage: {reply[:600]!r}"
    assert hostile.raw.paths() == ["/good"]
    assert_healthy(hostile)


def test_parse_head_helper_sanity():
    """The test's own parser (a failure here is the test's bug)."""
    start, fields = parse_head(b"HTTP/1.1 200 OK\r\nA: 1\r\nb:2\r\n\r\n")
    assert start == ["HTTP/1.1", "200", "OK"] and fields == [("a", "1"), ("b", "2")]
