"""The service scheduler end to end (issue 4): `pierd scheduler` keeps
formations at their counts on real host agents running real crun
containers, as root.

Each test starts a `pierd store`, host agents (conftest's start_host, each
with its own id, port range and --memory) and one or two schedulers. Apps,
releases and formations are written into the store directly, in the shapes
of docs/controller.md, the way the controller writes them; everything is
then read back from the store, which is what the rest of the cluster sees.
Every wait is a poll with a deadline."""

import base64
import json
import os
import signal
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import http_status

APPS = "/pier/v1/apps/"
RELEASES = "/pier/v1/releases/"
FORMATIONS = "/pier/v1/formations/"
JOBS = "/pier/v1/jobs/"
SCALE = "/pier/v1/scale-requests/"
ENDED = ("down", "crashed", "failed")
MIB = 1 << 20
JOB_MEMORY = 64 * MIB
# PID 1 of a container ignores SIGTERM unless it handles it: exit at once.
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
CRASHER = ["/bin/sh", "-c", "exit 1"]


# ---- the store ----

def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def store_post(store, path, body):
    req = urllib.request.Request(store + path, method="POST", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def kv_put(store, key, value):
    store_post(store, "/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(value))})


def kv_get(store, key):
    kvs = store_post(store, "/v3/kv/range", {"key": b64(key)}).get("kvs") or []
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def kv_list(store, prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    out = store_post(store, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return [json.loads(base64.b64decode(kv["value"])) for kv in out.get("kvs") or []]


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


# ---- apps, releases, formations as the controller writes them ----

def make_app(store, processes, memory=JOB_MEMORY):
    """An app and its release whose process types run the given args."""
    app_id, release_id = str(uuid.uuid4()), str(uuid.uuid4())
    name = "app" + app_id[:8]
    kv_put(store, APPS + app_id, {"id": app_id, "name": name, "meta": {},
                                  "strategy": "all-at-once", "deploy_timeout": 30,
                                  "release": release_id, "created_at": now(),
                                  "updated_at": now()})
    procs = {t: {"args": args, "env": {"TYPE": t},
                 "resources": {"memory": {"limit": memory}, "max_fd": {"limit": 1024}}}
             for t, args in processes.items()}
    kv_put(store, RELEASES + release_id, {"id": release_id, "app_id": app_id, "artifacts": [],
                                          "env": {"APP": name}, "meta": {}, "processes": procs,
                                          "created_at": now()})
    return app_id, release_id


def scale(store, app_id, release_id, counts, tags=None):
    key = f"{FORMATIONS}{app_id}/{release_id}"
    rec = kv_get(store, key) or {"app": app_id, "release": release_id, "created_at": now()}
    rec.update({"processes": counts, "tags": tags or {}, "updated_at": now()})
    kv_put(store, key, rec)


def jobs_of(store, app_id, type_=None):
    return [j for j in kv_list(store, JOBS)
            if j.get("app") == app_id and (type_ is None or j.get("type") == type_)]


def active(jobs):
    return [j for j in jobs if j.get("desired_state", "up") == "up" and j.get("state") not in ENDED]


def up(jobs):
    return [j for j in active(jobs) if j.get("state") == "up"]


def per_host(jobs):
    out = {}
    for j in jobs:
        out[j["host_id"]] = out.get(j["host_id"], 0) + 1
    return out


def wait_for(pred, timeout, what, daemons=()):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {d.name} (tail) ---\n{d.stderr_tail(40)}" for d in daemons)
            pytest.fail(f"timed out after {timeout}s waiting for {what}{logs}", pytrace=False)
        time.sleep(0.1)


def check_not_overcommitted(store):
    """Every host's non-ended jobs fit in its memory.total (from the store)."""
    hosts = {h["id"]: h for h in kv_list(store, "/pier/v1/hosts/")}
    held = {}
    for j in kv_list(store, JOBS):
        if j.get("state") in ENDED:
            continue
        held[j["host_id"]] = held.get(j["host_id"], 0) + j["resources"]["memory"]["limit"]
    for host_id, mem in held.items():
        if host_id in hosts:
            total = hosts[host_id]["memory"]["total"]
            assert mem <= total, f"host {host_id} over-committed: {mem} > {total}"
    return held


# ---- daemons ----

def start_hosts(start_host, store, n, memory="1G", ttl=None):
    return [start_host(store, name=f"host{i}", ttl=ttl, args=["--memory", memory])
            for i in range(n)]


def start_scheduler(start_pierd, store, *args, name=None, ttl=3, backoff_ms=None):
    argv = ["--store", store, "--ttl", str(ttl), *args]
    if backoff_ms:
        argv += ["--restart-backoff-ms", str(backoff_ms)]
    return start_pierd("scheduler", args=argv, name=name)


def status(sched):
    with urllib.request.urlopen(sched.url + "/status", timeout=5) as r:
        return json.loads(r.read())


# ---- the tests ----

def test_spread_scale_down_and_scale_request(pier_store, start_host, start_pierd):
    """web=6 on three hosts is 2/2/2 and all come up; scaling to 2 stops 4
    (the newest), and the scale request completes once the counts are met."""
    store = pier_store
    hosts = start_hosts(start_host, store, 3)
    sched = start_scheduler(start_pierd, store)
    app, rel = make_app(store, {"web": SLEEPER})
    scale(store, app, rel, {"web": 6})
    jobs = wait_for(lambda: (lambda js: js if len(up(js)) == 6 else None)(jobs_of(store, app)),
                    60, "six web jobs up", [sched, *hosts])
    assert sorted(per_host(jobs).values()) == [2, 2, 2], per_host(jobs)
    assert len(jobs) == 6
    j = jobs[0]
    assert j["id"].startswith(j["host_id"] + "-") and j["id"].endswith(j["uuid"])
    assert j["env"]["FLYNN_JOB_ID"] == j["id"] and j["env"]["APP"].startswith("app")
    assert j["env"]["TYPE"] == "web" and j["restarts"] == 0
    assert sorted(x["env"]["DYNO"] for x in jobs) == [f"web.{i}" for i in range(1, 7)]
    st = status(sched)
    assert st["leader"] is True and len(st["hosts"]) == 3, st
    ledgers = kv_list(store, "/pier/v1/placements/")
    assert sorted(x["host"] for x in ledgers) == sorted(h.id for h in hosts)
    assert sum(x["memory"] for x in ledgers) == 6 * JOB_MEMORY

    req_id = str(uuid.uuid4())
    kv_put(store, SCALE + req_id, {"id": req_id, "app": app, "release": rel, "state": "pending",
                                   "old_processes": {"web": 6}, "new_processes": {"web": 2},
                                   "created_at": now(), "updated_at": now()})
    scale(store, app, rel, {"web": 2})
    wait_for(lambda: kv_get(store, SCALE + req_id)["state"] == "complete", 30,
             "the scale request to complete", [sched])
    jobs = jobs_of(store, app)
    assert len(up(jobs)) == 2 and len(active(jobs)) == 2
    stopped = [j for j in jobs if j.get("desired_state") == "down"]
    assert len(stopped) == 4 and all(j["state"] == "down" for j in stopped), stopped
    # The newest went first: the two kept are the oldest.
    kept = sorted(j["created_at"] for j in up(jobs))
    assert kept[-1] <= min(j["created_at"] for j in stopped)
    check_not_overcommitted(store)

    # An app deletion removes its formations: its jobs stop.
    store_post(store, "/v3/kv/deleterange", {"key": b64(f"{FORMATIONS}{app}/{rel}")})
    wait_for(lambda: not active(jobs_of(store, app)), 20, "the jobs to stop", [sched])


def test_lost_host_jobs_replaced(pier_store, start_host, start_pierd):
    """SIGKILL an agent: once its lease expires its jobs are crashed "host
    lost" (desired down), and replaced on the other two within TTL + 5 s."""
    store = pier_store
    ttl = 3
    hosts = start_hosts(start_host, store, 3, ttl=ttl)
    sched = start_scheduler(start_pierd, store)
    app, rel = make_app(store, {"web": SLEEPER})
    scale(store, app, rel, {"web": 6})
    wait_for(lambda: len(up(jobs_of(store, app))) == 6, 60, "six web jobs up", [sched, *hosts])
    victim = hosts[1]
    lost_ids = {j["id"] for j in jobs_of(store, app) if j["host_id"] == victim.id}
    assert len(lost_ids) == 2
    victim.kill()
    killed_at = time.monotonic()

    def replaced():
        js = jobs_of(store, app)
        live = up(js)
        if len(live) == 6 and all(j["host_id"] != victim.id for j in live):
            return js
        return None
    jobs = wait_for(replaced, ttl + 5 + 5, "the lost jobs replaced", [sched])
    took = time.monotonic() - killed_at
    assert took <= ttl + 5, f"replaced and up {took:.1f}s after the agent died"
    for j in jobs:
        if j["id"] in lost_ids:
            assert j["state"] == "crashed" and j["host_error"] == "host lost", j
            assert j["desired_state"] == "down" and j.get("replaced_by"), j
    by = {j["replaced_by"] for j in jobs if j["id"] in lost_ids}
    new = [j for j in jobs if j["id"] in by]
    # Replaced at once, and a lost host is no crash: the count stays.
    assert len(new) == 2 and all(j["restarts"] == 0 for j in new), new
    assert sorted(per_host(up(jobs)).values()) == [3, 3]
    check_not_overcommitted(store)


def container_pid(agent, job_id):
    return int((Path(agent.data_dir) / "jobs" / job_id / "container.pid").read_text().split()[0])


def test_restart_backoff_and_crash_loop(pier_store, start_host, start_pierd):
    """A killed job is replaced with restarts=1; a process that always exits
    is restarted with growing delays and, after 8 restarts in a row, given up
    on loudly until its formation changes."""
    store = pier_store
    hosts = start_hosts(start_host, store, 1)
    sched = start_scheduler(start_pierd, store, backoff_ms=50)
    app, rel = make_app(store, {"worker": SLEEPER, "crasher": CRASHER})
    scale(store, app, rel, {"worker": 1, "crasher": 1})

    first = wait_for(lambda: up(jobs_of(store, app, "worker")), 60, "the worker up",
                     [sched, *hosts])[0]
    os.kill(container_pid(hosts[0], first["id"]), signal.SIGKILL)
    second = wait_for(lambda: [j for j in up(jobs_of(store, app, "worker"))
                               if j["id"] != first["id"]], 30, "the worker replaced", [sched])[0]
    assert second["restarts"] == 1, second
    old = kv_get(store, JOBS + first["id"])
    assert old["state"] == "crashed" and old["replaced_by"] == second["id"], old
    assert second["env"]["DYNO"] == "worker.1"

    def looped():
        js = jobs_of(store, app, "crasher")
        return js if any(j.get("crash_loop") for j in js) else None
    jobs = wait_for(looped, 90, "the crash loop to be given up on", [sched])
    jobs.sort(key=lambda j: j["restarts"])
    assert [j["restarts"] for j in jobs] == list(range(9)), [j["restarts"] for j in jobs]
    last = jobs[-1]
    assert last["crash_loop"] is True and "crash loop" in last["host_error"], last
    assert all(j.get("replaced_by") for j in jobs[:-1])
    # The delays grow: each replacement waited longer after the crash before.
    gaps = [parse_time(b["created_at"]) - parse_time(a["finished_at"])
            for a, b in zip(jobs, jobs[1:])]
    assert gaps[-1] > gaps[0] and gaps[-1] >= 1.0, gaps
    assert "giving up" in sched.stderr_text()
    # No more tries while the formation stays as it is...
    time.sleep(2)
    assert len(jobs_of(store, app, "crasher")) == 9
    assert status(sched)["pending"], status(sched)
    # ...and a new one once it changes.
    scale(store, app, rel, {"worker": 1, "crasher": 1})
    wait_for(lambda: len(jobs_of(store, app, "crasher")) > 9, 20, "a new try", [sched])
    fresh = [j for j in jobs_of(store, app, "crasher") if j["id"] not in {x["id"] for x in jobs}]
    # The first new try starts the count again (it may have crashed and been
    # replaced already, so look at the oldest).
    fresh.sort(key=lambda j: j["created_at"])
    assert fresh[0]["restarts"] == 0, fresh
    scale(store, app, rel, {"worker": 0, "crasher": 0})


def test_two_schedulers_never_overcommit(pier_store, start_host, start_pierd):
    """Two schedulers acting at once (no election: --always-lead) on hosts
    too small for everything asked: no host's memory is ever over-committed.
    Each round scales two apps up while both schedulers are stopped
    (SIGSTOP), so both wake on the same change with the same view and race
    for the same hosts; the loser's compare fails and it re-reads. Checked from the store, sampled during
    the rounds and after, and by the agents: none ever refused a job for
    memory."""
    store = pier_store
    hosts = start_hosts(start_host, store, 2, memory="256M")  # 4 jobs of 64 MiB each
    scheds = [start_scheduler(start_pierd, store, "--always-lead", "yes", "--log-level", "debug",
                              name=f"sched{i}") for i in range(2)]
    apps = [make_app(store, {"web": SLEEPER}) for _ in range(2)]
    samples = 0

    def sample(pred):
        nonlocal samples
        check_not_overcommitted(store)
        samples += 1
        return pred()

    def all_jobs():
        return [j for app, _ in apps for j in jobs_of(store, app)]
    for _ in range(4):
        # Both see the change at the same moment, from the same view.
        for s in scheds:
            s.proc.send_signal(signal.SIGSTOP)
        for app, rel in apps:
            scale(store, app, rel, {"web": 6})  # 12 asked, 8 fit
        time.sleep(0.2)
        for s in scheds:
            s.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: sample(lambda: len(up(all_jobs())) == 8), 30, "both hosts full",
                 [*scheds, *hosts])
        until = time.monotonic() + 0.5
        while time.monotonic() < until:  # settled: nothing more is placed
            sample(lambda: None)
            time.sleep(0.02)
        assert len(active(all_jobs())) == 8
        for s in scheds:  # both tried, and say what they could not place
            assert any("no host has" in p["reason"] for p in status(s)["pending"]), status(s)
        for app, rel in apps:
            scale(store, app, rel, {"web": 0})
        wait_for(lambda: sample(lambda: all(j.get("state") in ENDED for j in all_jobs())), 30,
                 "every job stopped", [*scheds, *hosts])
    assert samples > 40
    refused = [j for j in all_jobs() if "memory" in (j.get("host_error") or "")]
    assert not refused, refused
    assert all(j["state"] == "down" for j in all_jobs())
    check_not_overcommitted(store)
    # The race was run: each round one of them lost a placement.
    races = sum(s.stderr_text().count("lost a race") for s in scheds)
    assert races >= 4, races


def test_leader_handover(pier_store, start_host, start_pierd):
    """Two schedulers, one leads; kill -9 it and the other takes over within
    the TTL and keeps reconciling."""
    store = pier_store
    hosts = start_hosts(start_host, store, 2)
    a = start_scheduler(start_pierd, store, name="scheda")
    b = start_scheduler(start_pierd, store, name="schedb")
    wait_for(lambda: [s for s in (a, b) if status(s)["leader"]], 10, "a leader", [a, b])
    leader, other = (a, b) if status(a)["leader"] else (b, a)
    assert status(other)["leader"] is False
    app, rel = make_app(store, {"web": SLEEPER})
    scale(store, app, rel, {"web": 2})
    wait_for(lambda: len(up(jobs_of(store, app))) == 2, 60, "two web jobs up",
             [leader, *hosts])
    leader.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: status(other)["leader"], 3 + 2, "the other to lead", [other])
    assert time.monotonic() - killed <= 3 + 1
    scale(store, app, rel, {"web": 4})
    wait_for(lambda: len(up(jobs_of(store, app))) == 4, 30, "four web jobs up", [other])
    assert http_status(other.url + "/.well-known/status") == 200


def test_big_pass_commits_per_host_chains(pier_store, start_pierd):
    """A pass of 600 jobs on 5 hosts: each host gets 120, committed in two
    transactions of that host alone (100 operations at most), the hosts'
    transactions side by side and each host's second comparing the ledger
    its first wrote. Nothing conflicts (no race is lost and retried), and
    every ledger ends at the host's 120 jobs and their memory. The hosts
    are records without agents, so the 600 jobs are only placed."""
    store = pier_store
    ids = [f"pc{uuid.uuid4().hex[:8]}h{i}" for i in range(5)]
    for i, host_id in enumerate(ids):
        kv_put(store, "/pier/v1/hosts/" + host_id, {
            "id": host_id, "addr": f"127.0.0.1:{1 + i}", "ip": "127.0.0.1", "tags": {},
            "memory": {"total": 4096 * MIB, "allocated": 0},
            "cpu": {"total": 2000, "allocated": 0}, "ports": {"lo": 1, "hi": 2, "free": 1},
            "jobs": 0, "version": "test", "started_at": now(), "heartbeat": now()})
    sched = start_scheduler(start_pierd, store, "--log-level", "debug")
    app, rel = make_app(store, {"worker": SLEEPER}, memory=16 * MIB)
    scale(store, app, rel, {"worker": 600})
    wait_for(lambda: len(jobs_of(store, app)) == 600, 30, "600 job records", [sched])
    time.sleep(0.5)  # settled: nothing more is placed
    jobs = jobs_of(store, app)
    assert len(jobs) == 600
    assert per_host(jobs) == {h: 120 for h in ids}
    for host_id in ids:
        assert kv_get(store, "/pier/v1/placements/" + host_id) == {
            "host": host_id, "jobs": 120, "memory": 120 * 16 * MIB}
    # The transactions, by the jobs' create revisions: two per host, one host each.
    out = store_post(store, "/v3/kv/range", {"key": b64(JOBS), "range_end": b64(JOBS[:-1] + "0")})
    txns = {}
    for kv in out["kvs"]:
        job = json.loads(base64.b64decode(kv["value"]))
        txns.setdefault(int(kv["create_revision"]), set()).add(job["host_id"])
    assert len(txns) == 10, sorted((rev, len(h)) for rev, h in txns.items())
    assert all(len(hosts) == 1 for hosts in txns.values())
    assert "lost a race" not in sched.stderr_text()
    assert 'msg="placed jobs" count=600 ' in sched.stderr_text()  # in one pass
