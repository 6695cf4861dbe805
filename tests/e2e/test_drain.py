"""A graceful stop (SIGTERM -> httpd_drain) ends the endless streams at once
and still lets finite requests finish.

An endless stream (server-sent events, a log follow) only ends when its
client leaves, so a drain that waited for it would always run to its
timeout (10 s for the controller). The drain ends those cleanly (the
client sees the normal end of the response and reconnects with its resume
point elsewhere) while a request still in progress, here a body the client
is still sending, gets its reply, with "Connection: close".
"""

import hashlib
import json
import os
import re
import signal
import socket
import time

from controller_util import Controller


class Raw:
    """One HTTP/1.1 exchange on a raw socket, the chunked body decoded here,
    so the end of a response can be told apart from a cut connection."""

    def __init__(self, port, method, path, headers=None, body=b"", send_body=True, rcvbuf=0):
        self.sock = socket.socket()
        self.sock.settimeout(10)
        if rcvbuf:  # a slow reader: the server cannot send far ahead
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        h = {"Host": f"127.0.0.1:{port}"}
        h.update(headers or {})
        if body or method in ("POST", "PUT"):
            h["Content-Length"] = str(len(body))
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
        self.sock.sendall((req + "\r\n").encode() + (body if send_body else b""))
        self.raw = b""
        self.status = None
        self.headers = {}
        self.body = b""
        self.ended = False  # the whole response is in (last chunk or Content-Length)
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _parse(self):
        if self.status is None:
            if b"\r\n\r\n" not in self.raw:
                return
            head, self.raw = self.raw.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        if "content-length" in self.headers:
            n = int(self.headers["content-length"])
            if len(self.raw) >= n:
                self.body, self.raw, self.ended = self.raw[:n], self.raw[n:], True
            return
        while not self.ended:
            m = re.match(rb"([0-9a-fA-F]+)\r\n", self.raw)
            if not m:
                return
            n = int(m.group(1), 16)
            if len(self.raw) < m.end() + n + 2:
                return
            self.body += self.raw[m.end():m.end() + n]
            self.raw = self.raw[m.end() + n + 2:]
            self.ended = n == 0

    def read(self, until, timeout):
        """Reads until until(self) holds or timeout seconds pass; returns
        whether it holds."""
        deadline = time.monotonic() + timeout
        while not until(self):
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                return until(self)
            self.sock.settimeout(min(left, 0.2))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.eof = True
            self.raw += data
            self._parse()
        return True

    def close(self):
        self.sock.close()


def test_sigterm_ends_endless_streams_and_finishes_the_rest(start_pierd):
    store = start_pierd("store", name="store").url
    ctl = Controller(start_pierd, store, name="ctl")
    st, app = ctl.post("/apps", {"name": "drainapp"})
    assert st == 200, (st, app)
    port = ctl.daemon.port
    auth = {"Authorization": ctl.auth}

    events = Raw(port, "GET", "/events", {**auth, "Accept": "text/event-stream"})
    follow = Raw(port, "GET", f"/apps/{app['id']}/log?follow=true", auth)
    for s in (events, follow):
        assert s.read(lambda s: s.status is not None, 10), s.raw
        assert s.status == 200 and not s.ended
    # an idle keep-alive connection: its request is over
    idle = Raw(port, "GET", "/ping")
    assert idle.read(lambda s: s.ended, 10) and idle.status == 200
    # a request in progress: its body is still coming
    body = json.dumps({"name": "drainapp-late"}).encode()
    slow = Raw(port, "POST", "/apps", {**auth, "Content-Type": "application/json"}, body,
               send_body=False)
    slow.send(body[:5])
    time.sleep(0.3)

    t0 = time.monotonic()
    ctl.daemon.proc.send_signal(signal.SIGTERM)
    # the endless ones end at once, cleanly: the last chunk, not a cut
    for s in (events, follow):
        assert s.read(lambda s: s.ended, 1.5), f"stream not ended: {s.raw!r} eof={s.eof}"
        assert time.monotonic() - t0 < 1.5
    # the finite one still gets its answer, and the connection closes after it
    time.sleep(0.3)
    slow.send(body[5:])
    assert slow.read(lambda s: s.ended, 5), slow.raw
    assert slow.status == 200, slow.body
    assert json.loads(slow.body)["name"] == "drainapp-late"
    assert slow.headers.get("connection", "").lower() == "close"
    # and the process is gone soon after, not at the drain's timeout
    rc = ctl.daemon.proc.wait(timeout=10)
    took = time.monotonic() - t0
    assert rc == 0, ctl.daemon.stderr_tail()
    assert took < 2.5, f"the controller took {took:.1f}s to stop"
    # a stream that ended in the drain does not keep its connection either
    for s in (events, follow, idle):
        assert s.read(lambda s: s.eof, 2), f"connection still open: {s.raw!r}"
        s.close()
    slow.close()
    assert "requests still running" not in ctl.daemon.stderr_text()


def test_discoverd_sigterm_ends_event_streams_cleanly(start_pierd):
    store = start_pierd("store", name="store").url
    d = start_pierd("discoverd", args=["--store", store], name="discoverd")
    stream = Raw(d.port, "GET", "/services/api/instances", {"Accept": "text/event-stream"})
    assert stream.read(lambda s: b'"kind":"current"' in s.body, 10), stream.raw
    assert stream.status == 200
    body = json.dumps({"addr": "127.0.0.1:7101", "ttl": 5}).encode()
    slow = Raw(d.port, "PUT", "/services/api/instances/a", {"Content-Type": "application/json"},
               body, send_body=False)
    slow.send(body[:3])
    time.sleep(0.3)

    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert stream.read(lambda s: s.ended, 1.5), f"stream not ended: {stream.raw!r} eof={stream.eof}"
    time.sleep(0.3)
    slow.send(body[3:])
    assert slow.read(lambda s: s.ended, 5), slow.raw
    assert slow.status == 200, slow.body
    assert slow.headers.get("connection", "").lower() == "close"
    rc = d.proc.wait(timeout=10)
    assert rc == 0, d.stderr_tail()
    assert time.monotonic() - t0 < 2.5
    stream.close()
    slow.close()


def test_a_download_in_progress_finishes_in_the_drain(start_pierd, tmp_path):
    key = "drain-key"
    b = start_pierd("blobstore", args=["--dir", tmp_path / "blobs", "--key", key],
                    name="blobstore")
    data = os.urandom(16 * 1024 * 1024)
    put = Raw(b.port, "PUT", "/big", {"Authorization": f"Bearer {key}"}, data)
    assert put.read(lambda s: s.ended, 30) and put.status == 200, put.body
    put.close()
    # a finite stream (a sized one), still being sent when the drain begins
    get = Raw(b.port, "GET", "/big", {"Authorization": f"Bearer {key}"}, rcvbuf=4096)
    assert get.read(lambda s: s.status is not None, 10) and get.status == 200
    b.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert b.proc.poll() is None, "the blobstore did not wait for the download"
    assert get.read(lambda s: s.ended, 30), f"download cut at {len(get.raw)} bytes"
    assert hashlib.sha256(get.body).digest() == hashlib.sha256(data).digest()
    assert b.proc.wait(timeout=10) == 0, b.stderr_tail()
    get.close()
