"""The router end to end when backends fail: no instance, a refused
instance, a slow one, one that drops the connection, one killed under load,
one that leaves discovery with a request in flight (docs/router.md
"HTTP behaviour": errors the router answers itself, balancing, draining)."""

import json
import socket
import threading
import time

from conftest import free_port
from router_util import deregister, get, register, route_http, wait_status
from test_router_routing import (PROPAGATE_S, Load, failures, renv, status_json,  # noqa: F401
                                 wait_backend, wait_backend_gone, wait_requests, who)


def test_no_instances_503(renv):
    route_http(renv.store, "none.example.com", "svc-none")
    r = renv.router()
    status, headers, body = wait_status(r.http, "none.example.com", 503, timeout=5)
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert 0 < len(body) < 200, body
    # an instance arrives: served; it leaves: 503 again
    a = renv.backend("A")
    iid, _ = register(renv.store, "svc-none", a.addr)
    wait_backend(r.http, "none.example.com", "A")
    deregister(renv.store, "svc-none", iid)
    wait_status(r.http, "none.example.com", 503, timeout=PROPAGATE_S)


def test_refused_instance_is_retried(renv):
    a = renv.backend("A")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    register(renv.store, "svc", dead)
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "retry.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "retry.example.com", 200, timeout=5)
    time.sleep(0.2)  # both instances in the table
    for _ in range(20):
        assert who(get(r.http, "retry.example.com", "/")) == "A"
    st = status_json(r)
    assert st["counters"]["retries"] >= 1, st["counters"]
    # a second router, so the dead one is not already marked down: its very
    # first requests must succeed too
    r2 = renv.router()
    wait_status(r2.http, "retry.example.com", 200, timeout=5)
    for _ in range(10):
        assert who(get(r2.http, "retry.example.com", "/")) == "A"


def test_only_refused_instances_502(renv):
    register(renv.store, "svc-dead", f"127.0.0.1:{free_port()}")
    register(renv.store, "svc-dead", f"127.0.0.1:{free_port()}")
    route_http(renv.store, "dead.example.com", "svc-dead")
    r = renv.router()
    t0 = time.monotonic()
    status, headers, body = wait_status(r.http, "dead.example.com", 502, timeout=5)
    assert time.monotonic() - t0 < 3
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert 0 < len(body) < 200
    # and again, now that both are marked down (they are still all there is)
    t0 = time.monotonic()
    assert get(r.http, "dead.example.com", "/")[0] == 502
    assert time.monotonic() - t0 < 1


def test_backend_timeout_504(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "slow.example.com", "svc")
    r = renv.router("--backend-timeout-ms", "500")
    wait_status(r.http, "slow.example.com", 200, timeout=5)
    t0 = time.monotonic()
    status, headers, body = get(r.http, "slow.example.com", "/slow?ms=3000")
    took = time.monotonic() - t0
    assert status == 504, (status, body)
    assert 0.45 < took < 2.0, took
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert 0 < len(body) < 200
    # a response that starts in time is not cut by the timeout
    assert get(r.http, "slow.example.com", "/slow?ms=200")[0] == 200
    assert get(r.http, "slow.example.com", "/")[0] == 200


def test_backend_drops_connection_502(renv):
    a = renv.backend("A")
    register(renv.store, "svc", a.addr)
    route_http(renv.store, "drop.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "drop.example.com", 200, timeout=5)
    for _ in range(3):
        t0 = time.monotonic()
        status, headers, body = get(r.http, "drop.example.com", "/drop")
        assert status == 502, (status, body)
        assert time.monotonic() - t0 < 2
        assert headers.get("content-type", "").startswith("text/plain"), headers
        # the router is fine afterwards
        assert get(r.http, "drop.example.com", "/")[0] == 200


class Killable:
    """Wraps a router_util.Backend so that kill() also closes the
    connections it has accepted (Backend.stop alone closes only the
    listener: keep-alive connections would go on being served)."""

    def __init__(self, backend):
        self.b = backend
        self.socks = []
        srv = backend.server
        orig = srv.get_request

        def tracking():
            conn = orig()
            self.socks.append(conn[0])
            return conn

        srv.get_request = tracking

    def kill(self):
        self.b.stop()
        for s in list(self.socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_backend_killed_under_load(renv):
    """Two backends under steady keep-alive load; one is killed (listener
    and connections) and then deregistered. Only requests in flight at the
    kill may fail; none started after it settled, none at all once the
    deregistration reached the router."""
    a = renv.backend("A")
    b = Killable(renv.backend("B"))
    register(renv.store, "svc", a.addr)
    ib, _ = register(renv.store, "svc", b.b.addr)
    route_http(renv.store, "kill.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "kill.example.com", 200, timeout=5)
    time.sleep(0.2)
    threads = 4
    load = Load(r.http, "kill.example.com", threads=threads).start()
    time.sleep(1.0)
    b.kill()
    t_kill = time.monotonic()
    deregister(renv.store, "svc", ib)
    t_prop = wait_backend_gone(r, b.b.addr)
    time.sleep(1.0)
    res = load.stop()

    assert len(res) > 200, len(res)
    before = [x for x in res if x[0] < t_kill]
    assert {x[3] for x in before if x[2] == 200} == {"A", "B"}
    bad = failures(res)
    # a request can fail only if it was in flight to B at the kill (one per
    # client thread at most), or sent on a pooled B connection in the
    # instant before the router saw it close
    assert len(bad) <= threads, bad
    assert [x for x in bad if x[0] > t_kill + 0.1] == [], bad
    after = [x for x in res if x[0] > t_prop]
    assert len(after) > 50
    assert failures(after) == []
    assert {x[3] for x in after} == {"A"}
    for x in bad:
        # before the response started the router answers 502; once the head
        # has gone out it can only cut the client connection short
        assert x[2] in (502, 504) or "ConnectionError" in str(x[2]), bad
    print(f"killed under load: {len(res)} requests, {len(bad)} failed: {bad}")


def test_backend_leaving_discovery_drains(renv):
    a, b = renv.backend("A"), renv.backend("B")
    ia, _ = register(renv.store, "svc", a.addr)
    ib, _ = register(renv.store, "svc", b.addr)
    route_http(renv.store, "drain.example.com", "svc")
    r = renv.router()
    wait_status(r.http, "drain.example.com", 200, timeout=5)
    time.sleep(0.2)
    before = [a.requests, b.requests]
    slow = {}

    def run():
        t0 = time.monotonic()
        slow["reply"] = get(r.http, "drain.example.com", "/slow?ms=1500")
        slow["took"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    busy = wait_requests([a, b], before)
    other = b if busy is a else a
    time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    deregister(renv.store, "svc", ia if busy is a else ib)
    wait_backend_gone(r, busy.addr)
    n_busy = busy.requests
    for _ in range(10):
        assert who(get(r.http, "drain.example.com", "/")) == other.name
    t.join(timeout=10)
    assert slow["reply"][0] == 200, slow
    assert who(slow["reply"]) == busy.name
    assert 1.4 < slow["took"] < 3
    assert busy.requests == n_busy
    # after the drain nothing more reaches it
    for _ in range(5):
        assert who(get(r.http, "drain.example.com", "/")) == other.name
    assert busy.requests == n_busy
    st = json.dumps(status_json(r))
    assert busy.addr not in st
