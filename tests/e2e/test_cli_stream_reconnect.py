"""`pier scale` keeps waiting for its scale request when the path to the
controller breaks under its event stream, as it does when the router that
carried the stream is stopped by the scale itself or the controller job is
replaced: the CLI reconnects (resuming after the last event it saw) or looks
at the events it missed, and finishes once the request is complete.

A real store and controller; between the CLI and the controller a small TCP
proxy the test can cut, freeze or point at another controller. The test
plays the scheduler: it marks the scale request complete in the store
while the stream is broken, so a CLI that does not resume never hears of
it and times out."""

import base64
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import store_get

KEY = "reconnect-key"


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def store_call(store, path, body):
    req = urllib.request.Request(store + path, method="POST", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def store_prefix(store, prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    kvs = store_call(store, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in kvs.get("kvs") or []}


def api(url, method, path, body=None):
    auth = "Basic " + base64.b64encode(f":{KEY}".encode()).decode()
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": auth,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


class Proxy:
    """127.0.0.1:port -> 127.0.0.1:target. cut() closes every connection,
    freeze() makes the current ones forward nothing more (held open, as a
    draining router would), refuse(True) closes new connections at once."""

    def __init__(self, target):
        self.target = target
        self.lock = threading.Lock()
        self.conns = []  # [client, upstream, frozen]
        self.refusing = False
        self.accepted = 0
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                refusing, target = self.refusing, self.target
            if refusing:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", target), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            conn = [c, u, False]
            with self.lock:
                self.conns.append(conn)
                self.accepted += 1
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(conn, a, b), daemon=True).start()

    def _pump(self, conn, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if conn[2]:
                continue  # frozen: swallowed
            try:
                dst.sendall(data)
            except OSError:
                break
        if not conn[2]:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for c, u, _ in conns:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def freeze(self):
        with self.lock:
            for conn in self.conns:
                conn[2] = True

    def refuse(self, on):
        with self.lock:
            self.refusing = on

    def retarget(self, port):
        with self.lock:
            self.target = port

    def close(self):
        self.ls.close()
        self.cut()


@pytest.fixture
def setup(start_pierd, pier_build, tmp_path):
    store = start_pierd("store", name="store")
    ctl_args = ["--store", store.url, "--key", KEY, "--domain", "reconnect.test"]
    ctl = start_pierd("controller", name="controller", args=ctl_args)
    proxy = Proxy(int(ctl.url.rsplit(":", 1)[1]))
    app = api(ctl.url, "POST", "/apps", {"name": "recon"})
    rel = api(ctl.url, "POST", "/releases",
              {"app_id": app["id"], "processes": {"web": {"args": ["sleep", "1000"]}}})
    api(ctl.url, "PUT", f"/apps/{app['id']}/release", {"id": rel["id"]})
    (tmp_path / "home").mkdir()
    env = dict(os.environ, PIER_CONFIG=str(tmp_path / "no-config.json"),
               HOME=str(tmp_path / "home"),
               PIER_CONTROLLER_URL=f"http://127.0.0.1:{proxy.port}", PIER_CONTROLLER_KEY=KEY)
    for k in ("PIER_CLUSTER", "PIER_APP"):
        env.pop(k, None)
    s = type("S", (), {})()
    s.store, s.ctl, s.proxy, s.env, s.rel = store.url, ctl, proxy, env, rel["id"]
    s.pier = str(pier_build / "pier")
    s.start_pierd, s.ctl_args = start_pierd, ctl_args
    yield s
    proxy.close()


def start_scale(s):
    """Starts `pier scale web=1` and returns it once it waits (its scale
    request is in the store) with the request's key."""
    p = subprocess.Popen([s.pier, "-a", "recon", "scale", "web=1", "--timeout", "40"],
                         env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while True:
        reqs = store_prefix(s.store, "/pier/v1/scale-requests/")
        if reqs:
            break
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the scale request never reached the store"
        time.sleep(0.05)
    assert len(reqs) == 1, reqs
    time.sleep(0.3)  # the CLI is past its PUT, reading the stream
    return p, next(iter(reqs))


def complete(s, key):
    """What the scheduler does once the counts are met."""
    req = json.loads(store_get(s.store, key))
    assert req["state"] == "pending", req
    req["state"] = "complete"
    store_call(s.store, "/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(req))})


def finish(p, started, limit=20):
    out, err = p.communicate(timeout=60)
    took = time.monotonic() - started
    assert p.returncode == 0, f"exit {p.returncode} after {took:.1f}s\n{out}\n{err}"
    assert "scaling web: 0=>1" in out, out
    assert "scale completed in" in out, out
    assert took < limit, f"took {took:.1f}s: the CLI did not notice\n{out}\n{err}"
    assert "AddressSanitizer" not in err and "runtime error" not in err, err
    return out, err


def test_scale_survives_a_cut_stream_while_the_controller_is_unreachable(setup):
    s = setup
    p, key = start_scale(s)
    t0 = time.monotonic()
    s.proxy.refuse(True)
    s.proxy.cut()
    # Completed while the CLI cannot reach the controller: only a resume
    # after the last event it saw (none yet) finds it.
    complete(s, key)
    time.sleep(1.5)
    s.proxy.refuse(False)
    out, err = finish(p, t0)
    assert "reconnecting to the controller..." in err, err


def test_scale_survives_a_stream_that_stops_forwarding(setup):
    s = setup
    p, key = start_scale(s)
    t0 = time.monotonic()
    # A router that drains: the connection stays open, nothing comes.
    s.proxy.freeze()
    complete(s, key)
    finish(p, t0)


def test_scale_survives_the_controller_being_replaced(setup):
    s = setup
    p, key = start_scale(s)
    t0 = time.monotonic()
    new = s.start_pierd("controller", name="controller2", args=s.ctl_args)
    s.proxy.retarget(int(new.url.rsplit(":", 1)[1]))
    s.ctl.stop()
    s.proxy.cut()
    complete(s, key)
    out, err = finish(p, t0)
    assert "reconnecting to the controller..." in err, err
