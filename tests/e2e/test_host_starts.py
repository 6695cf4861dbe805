"""The host agent starts a bounded number of jobs at a time (--max-starting).

A burst of job records is started a few at a time, in the order the
records came; the rest wait, still "pending". A job stopped or deleted
while it waits is never started.

Run: PIER_BUILD_DIR=build-test /usr/bin/python3 -m pytest -q tests/e2e/test_host_starts.py
(as root: the agent starts real crun containers).
"""

import http.server
import json
import tarfile
import threading
import time

from conftest import free_port
from test_host import (JOBS, api_json, b64, fail, job_record, kv_update, store_post,
                       wait_for, wait_state)

SLEEP = ["/bin/sh", "-c", "exec sleep 60"]
SMALL = {"memory": {"limit": 32 << 20}}


def spec(agent, name, **fields):
    job_id = f"{agent.id}-{name}"
    rec = {"id": job_id, "host_id": agent.id, "desired_state": "up", "state": "pending",
           "args": SLEEP, "ports": [], "resources": SMALL}
    rec.update(fields)
    return rec


def put_all(agent, recs):
    """Writes every record in one store transaction: the agent sees them
    all at once, in this order (a scheduler's burst)."""
    out = store_post(agent.store, "/v3/kv/txn", {
        "success": [{"request_put": {"key": b64(JOBS + r["id"]),
                                     "value": b64(json.dumps(r))}} for r in recs]})
    assert out.get("succeeded", True), out


def status(agent):
    return api_json(agent, "GET", "/host/status")


class Sampler(threading.Thread):
    """Polls the agent: how many of its jobs are "starting" at once (one
    consistent snapshot per GET /host/jobs), and its start counters."""

    def __init__(self, agent):
        super().__init__(daemon=True)
        self.agent = agent
        self.stop = threading.Event()
        self.max_starting = 0   # jobs in state "starting" in one snapshot
        self.max_counter = 0    # /host/status jobs.starting
        self.max_queued = 0
        self.samples = 0

    def run(self):
        while not self.stop.is_set():
            jobs = api_json(self.agent, "GET", "/host/jobs")
            n = sum(1 for j in jobs if j.get("state") == "starting")
            st = status(self.agent)["jobs"]
            self.max_starting = max(self.max_starting, n)
            self.max_counter = max(self.max_counter, st["starting"])
            self.max_queued = max(self.max_queued, st["queued"])
            self.samples += 1


def test_a_burst_starts_two_at_a_time_in_order(pier_store, start_host):
    agent = start_host(pier_store, args=["--max-starting", "2"])
    recs = [spec(agent, f"burst{i:02d}") for i in range(12)]
    sampler = Sampler(agent)
    sampler.start()
    try:
        put_all(agent, recs)
        for r in recs:
            wait_state(agent, r["id"], "up", timeout=90)
    finally:
        sampler.stop.set()
        sampler.join(timeout=30)

    assert sampler.samples > 5, sampler.samples
    assert 1 <= sampler.max_starting <= 2, \
        f"{sampler.max_starting} jobs were starting at once with --max-starting 2"
    assert sampler.max_counter <= 2, sampler.max_counter
    assert sampler.max_queued >= 5, \
        f"at most {sampler.max_queued} of 12 jobs were seen waiting: the bound did not hold them"
    st = status(agent)["jobs"]
    assert st["starting"] == 0 and st["queued"] == 0 and st["running"] == 12, st

    # In order: job k begins once jobs 0..k-1 have begun and (with two
    # slots) all but one of them are up, so at least k-1 jobs were up
    # before it.
    ups = [job_record(agent.store, r["id"])["started_at"] for r in recs]
    for k, t in enumerate(ups):
        before = sum(1 for u in ups if u < t)
        assert before >= k - 1, (f"job {k} was up after only {before} others "
                                 f"(order not kept): {ups}")
    log = agent.all_stderr()
    assert "max_starting=2" in log, log[-2000:]


class SlowSlug(http.server.BaseHTTPRequestHandler):
    """Serves one slug, but only once the test lets it (gate): a start
    that fetches it holds its slot until then."""
    gate = None
    body = b""

    def do_GET(self):
        self.gate.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_a_queued_job_stopped_or_deleted_never_starts(pier_store, start_host, tmp_path):
    src = tmp_path / "slug"
    src.mkdir()
    (src / "greeting").write_text("hello")
    slug = tmp_path / "slug.tgz"
    with tarfile.open(slug, "w:gz") as t:
        t.add(src / "greeting", arcname="greeting")
    SlowSlug.gate = threading.Event()
    SlowSlug.body = slug.read_bytes()
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), SlowSlug)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    agent = start_host(pier_store, args=["--max-starting", "1"])
    try:
        blocker = spec(agent, "blocker",
                       artifact={"slug": f"http://127.0.0.1:{port}/slug.tgz"})
        put_all(agent, [blocker])
        wait_for(lambda: (job_record(agent.store, blocker["id"]) or {}).get("state")
                 == "starting", 20, "the blocker to be starting", agent)
        gone, downed, after = (spec(agent, n) for n in ("gone", "downed", "after"))
        put_all(agent, [gone, downed, after])
        wait_for(lambda: status(agent)["jobs"]["queued"] == 3, 20, "three jobs queued", agent)
        time.sleep(0.3)
        for r in (gone, downed, after):
            assert job_record(agent.store, r["id"])["state"] == "pending", \
                job_record(agent.store, r["id"])
        assert status(agent)["jobs"]["starting"] == 1

        # The scheduler's two ways to stop a job: delete it, or desired down.
        store_post(agent.store, "/v3/kv/deleterange", {"key": b64(JOBS + gone["id"])})
        kv_update(agent.store, JOBS + downed["id"], lambda r: r.update(desired_state="down"))
        rec = wait_state(agent, downed["id"], "down", timeout=10)
        assert "started_at" not in rec, rec
        assert "finished_at" in rec, rec
        wait_for(lambda: status(agent)["jobs"]["queued"] == 1, 10, "only 'after' queued", agent)
        assert job_record(agent.store, after["id"])["state"] == "pending"
    finally:
        SlowSlug.gate.set()

    # The slot frees; the one left in the queue starts, the others never.
    wait_state(agent, blocker["id"], "up", timeout=30)
    wait_state(agent, after["id"], "up", timeout=30)
    server.shutdown()
    server.server_close()
    st = status(agent)["jobs"]
    assert st["queued"] == 0 and st["starting"] == 0, st
    names = {d.name for d in agent.job_dirs()}
    for r in (gone, downed):
        assert r["id"] not in names, f"{r['id']} got a job directory: {sorted(names)}"
        assert r["id"] not in agent.crun_list()
    assert job_record(agent.store, gone["id"]) is None
    assert job_record(agent.store, downed["id"])["state"] == "down"
    log = agent.all_stderr()
    for r in (gone, downed):
        if f"job={r['id']} ports" in log:
            fail(f"{r['id']} was started", agent)
        assert f"msg=\"job stopped before its start began\" job={r['id']}" in log, log[-3000:]
