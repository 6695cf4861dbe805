#!/usr/bin/python3
"""Helpers for bench/router/run (the router benchmark); not a test.

  bench_router.py register STORE SERVICE ADDR
      grants a lease (1 hour) and puts ADDR as a discovery instance of
      SERVICE under it, as src/lib/discover.c does; prints the lease id
  bench_router.py route STORE DOMAIN SERVICE
      writes an http route DOMAIN/ -> SERVICE with its index key in one
      transaction, the records the controller writes (docs/controller.md)
  bench_router.py propagate STORE ROUTER SERVICE COUNT RAW
      route propagation: COUNT times, a new route r<i>.bench.local to
      SERVICE is written and ROUTER (host:port) polled over one keep-alive
      connection until it answers 200 for that host; the times go to RAW,
      the percentiles to stdout as "name value" lines
  bench_router.py report DIR
      the table of the wrk outputs DIR/<suite>.<case>.c<conns>.txt

STORE is the store's URL (http://127.0.0.1:PORT), spoken to through its
etcd v3 JSON gateway."""

import base64
import hashlib
import http.client
import json
import math
import os
import re
import select
import socket
import sys
import time
import urllib.parse
import uuid

LEASE_TTL = 3600


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class Store:
    """One keep-alive connection to the store's JSON gateway."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)

    def check_txn(self):
        """Reads the answer to a transaction sent with conn.request."""
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200 or not json.loads(data).get("succeeded"):
            raise SystemExit(f"bench_router: route txn: {r.status} {data[:200]!r}")

    def call(self, path, body):
        self.conn.request("POST", path, body=json.dumps(body),
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"bench_router: store {path}: {r.status} {data[:200]!r}")
        return json.loads(data)


def register(store_url, service, addr):
    st = Store(store_url)
    lease = st.call("/v3/lease/grant", {"TTL": LEASE_TTL})["ID"]
    iid = hashlib.md5(f"tcp-{addr}".encode()).hexdigest()
    inst = {"id": iid, "service": service, "addr": addr, "proto": "tcp", "meta": {}}
    st.call("/v3/kv/put", {"key": b64(f"/pier/v1/services/{service}/{iid}"),
                           "value": b64(json.dumps(inst)), "lease": lease})
    print(lease)


def route_txn(domain, service):
    """The transaction the controller's POST /apps/:app/routes makes (less
    its compares: the domain is new)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    rid = str(uuid.uuid4())
    rt = {"id": rid, "type": "http", "domain": domain, "path": "/", "service": service,
          "leader": False, "sticky": False, "drain_backends": True,
          "disable_keep_alives": False, "parent_ref": "controller/apps/bench",
          "app": "bench", "created_at": now, "updated_at": now}
    return {"compare": [], "success": [
        {"request_put": {"key": b64(f"/pier/v1/routes/{rid}"), "value": b64(json.dumps(rt))}},
        {"request_put": {"key": b64(f"/pier/v1/route-index/http/{domain}/"),
                         "value": b64(json.dumps({"id": rid}))}},
    ]}


def route(store_url, domain, service):
    st = Store(store_url)
    r = st.call("/v3/kv/txn", route_txn(domain, service))
    if not r.get("succeeded"):
        raise SystemExit(f"bench_router: route txn failed: {r}")


class Client:
    """A minimal HTTP/1.1 keep-alive client on a raw socket: GET / with a
    Host field, the status back, the body (Content-Length or chunked) read
    and dropped. Reconnects when the server closes."""

    def __init__(self, host, port):
        self.addr = (host, port)
        self.sock = None
        self.buf = b""
        self.connects = 0

    def connect(self):
        if self.sock:
            self.sock.close()
        self.sock = socket.create_connection(self.addr, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.connects += 1

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("closed by the server")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        self.buf = self.buf[n:]

    def get(self, host):
        for attempt in (0, 1):
            if self.sock is None:
                self.connect()
            try:
                self.sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                return self._response()
            except (ConnectionError, BrokenPipeError):
                # a keep-alive connection the server closed: once more on a new one
                self.sock.close()
                self.sock = None
                if attempt:
                    raise

    def _response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for ln in lines[1:]:
            name, _, value = ln.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value.endswith(b"chunked"):
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            while True:
                size = int(self._line().split(b";")[0], 16)
                self._take(size + 2 if size else 0)
                if not size:
                    while self._line():  # trailers, then the empty line
                        pass
                    break
        else:
            self._take(length)
        if close:
            self.sock.close()
            self.sock = None
        return status


def pct(v, p):
    """The p-th percentile of sorted v (nearest rank)."""
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, math.ceil(round(p * len(v) / 100.0, 9)) - 1))
    return v[k]


def propagate(store_url, router, service, count, raw):
    host, port = router.rsplit(":", 1)
    st = Store(store_url)
    cl = Client(host, int(port))
    tag = uuid.uuid4().hex[:6]  # new domains on every run, even against the same store
    times, puts, polls = [], [], []
    with open(raw, "w") as out:
        out.write("i domain store_answer_ms first_200_ms polls\n")
        for i in range(1, count + 1):
            domain = f"r{i}-{tag}.bench.local"
            hb = domain.encode()
            if cl.get(hb) != 404:
                raise SystemExit(f"bench_router: {domain} answered before its route was written")
            body = json.dumps(route_txn(domain, service))
            # t0: just before the transaction is sent. The router is polled
            # while the store commits (a watch may bring the route before the
            # store's answer does); the answer is read when it is there.
            t0 = time.perf_counter()
            st.conn.request("POST", "/v3/kv/txn", body=body,
                            headers={"Content-Type": "application/json"})
            tput = None
            n = 0
            deadline = t0 + 10
            while True:
                if tput is None and select.select([st.conn.sock], [], [], 0)[0]:
                    tput = time.perf_counter()
                    st.check_txn()
                n += 1
                s = cl.get(hb)
                t1 = time.perf_counter()
                if s == 200:
                    break
                if s != 404:
                    raise SystemExit(f"bench_router: {domain}: status {s} while waiting for 200")
                if t1 > deadline:
                    raise SystemExit(f"bench_router: {domain}: no 200 within 10 s ({n} polls)")
            if tput is None:
                st.check_txn()
                tput = time.perf_counter()
            times.append((t1 - t0) * 1000)
            puts.append((tput - t0) * 1000)
            polls.append(n)
            out.write(f"{i} {domain} {puts[-1]:.3f} {times[-1]:.3f} {n}\n")
            time.sleep(0.02)  # the routes come one by one, not as one batch
    times_raw, puts_raw = list(times), list(puts)
    times.sort()
    puts.sort()
    print(f"routes {count}")
    print(f"first_200_p50_ms {pct(times, 50):.2f}")
    print(f"first_200_p99_ms {pct(times, 99):.2f}")
    print(f"first_200_max_ms {times[-1]:.2f}")
    print(f"store_answer_p50_ms {pct(puts, 50):.2f}")
    print(f"store_answer_p99_ms {pct(puts, 99):.2f}")
    after = sorted(max(0.0, t - p) for t, p in zip(times_raw, puts_raw))
    print(f"after_store_answer_p50_ms {pct(after, 50):.2f}")
    print(f"after_store_answer_p99_ms {pct(after, 99):.2f}")
    print(f"first_200_before_store_answer {sum(1 for t, p in zip(times_raw, puts_raw) if t < p)}")
    print(f"polls_median {sorted(polls)[len(polls) // 2]}")
    print(f"client_connects {cl.connects}")


# --- report ---------------------------------------------------------------

UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def parse_wrk(text):
    """requests/s, p50 and p99 (ms), non-2xx count, socket errors, or None."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        return None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": float(rps.group(1)), "p50": ms(p50.group(1)), "p99": ms(p99.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": sum(int(x) for x in errs.groups()) if errs else 0}


def report(d):
    """Prints the table; returns how many cases failed (no figures, socket
    errors or non-2xx answers)."""
    files = sorted(f for f in os.listdir(d) if re.fullmatch(r"\w+\.\w+\.c\d+\.txt", f))
    res, cpu = {}, {}
    for f in files:
        suite, case, conns, _ = f.split(".")
        k = (suite, case, int(conns[1:]))
        with open(os.path.join(d, f)) as fh:
            res[k] = parse_wrk(fh.read())
        try:
            with open(os.path.join(d, f[:-4] + ".cpu")) as fh:
                w = fh.read().split()
                cpu[k] = dict(zip(w[0::2], map(float, w[1::2])))
        except (OSError, ValueError):
            pass
    groups = sorted({(s, c) for s, _, c in res}, key=lambda x: (x[0] != "http", x[1]))
    cases = ["direct", "pier", "nginx", "haproxy"]
    bad = 0
    print(f"{'suite':<6} {'conns':>5} {'case':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'proxy cpu s':>11} {'backend cpu s':>13} {'backend conns':>13} {'non2xx':>6} {'errors':>6}")
    for suite, conns in groups:
        for c in cases:
            k = (suite, c, conns)
            if k not in res:
                continue
            r = res[k]
            if r is None:
                bad += 1
                print(f"{suite:<6} {conns:>5} {c:<8} FAILED: no wrk figures")
                continue
            u = cpu.get(k, {})
            pc = "-" if c == "direct" else f"{u.get('proxy_cpu_s', float('nan')):.2f}"
            bc = f"{u.get('backend_cpu_s', float('nan')):.2f}"
            bn = f"{u['backend_conns']:.0f}" if "backend_conns" in u else "-"
            flag = ""
            if r["non2xx"] or r["errors"]:
                bad += 1
                flag = "  FAILED"
            print(f"{suite:<6} {conns:>5} {c:<8} {r['rps']:>9.0f} {r['p50']:>7.2f} {r['p99']:>7.2f}"
                  f" {pc:>11} {bc:>13} {bn:>13} {r['non2xx']:>6} {r['errors']:>6}{flag}")
    lines = []
    for suite, conns in groups:
        p = res.get((suite, "pier", conns))
        for other in ("nginx", "haproxy"):
            o = res.get((suite, other, conns))
            if p and o:
                lines.append(f"{suite:<6} {conns:>5} pier/{other:<8} req/s {p['rps'] / o['rps']:.2f}x"
                             f"   p99 {p['p99'] / o['p99']:.2f}x")
    if lines:
        print()
        print("pier against the others: req/s pier/X (above 1: pier served more),"
              " p99 pier/X (below 1: pier's tail was shorter)")
        print("\n".join(lines))
    return bad


def main():
    a = sys.argv[1:]
    if a[:1] == ["register"] and len(a) == 4:
        register(a[1], a[2], a[3])
    elif a[:1] == ["route"] and len(a) == 4:
        route(a[1], a[2], a[3])
    elif a[:1] == ["propagate"] and len(a) == 6:
        propagate(a[1], a[2], a[3], int(a[4]), a[5])
    elif a[:1] == ["report"] and len(a) == 2:
        sys.exit(1 if report(a[1]) else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
