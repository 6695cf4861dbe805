"""Deployments end to end: pierd store, two host agents running real crun
containers, a scheduler and a controller (whose leader runs the deployer).

A new release is rolled out with the app's strategy; a release whose
processes crash at start, or that is not up within deploy_timeout, is
rolled back and the old jobs are never stopped.
"""

import json
import threading
import time

import pytest

from conftest import store_get
from controller_util import Controller

SLEEP = ["sh", "-c", "exec sleep 1000"]
CRASH = ["sh", "-c", "echo crashing; exit 1"]


def jobs_of(store, app_id):
    """The app's job records, read straight from the store."""
    import base64
    import urllib.request
    body = json.dumps({"key": base64.b64encode(b"/pier/v1/jobs/").decode(),
                       "range_end": base64.b64encode(b"/pier/v1/jobs0").decode()}).encode()
    req = urllib.request.Request(store + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        kvs = json.loads(resp.read()).get("kvs", [])
    out = []
    for kv in kvs:
        rec = json.loads(base64.b64decode(kv["value"]))
        if rec.get("app") == app_id:
            out.append(rec)
    return out


def up_jobs(store, app_id, release=None):
    return [j for j in jobs_of(store, app_id)
            if j.get("state") == "up" and j.get("desired_state", "up") == "up"
            and (release is None or j.get("release") == release)]


def wait(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def cluster(start_pierd, start_host):
    store = start_pierd("store", name="store").url
    start_host(store, name="host-a")
    start_host(store, name="host-b")
    start_pierd("scheduler", args=["--store", store], name="scheduler")
    return Controller(start_pierd, store)


def new_app(ctl, strategy="all-at-once", timeout=30):
    st, app = ctl.post("/apps", {"strategy": strategy, "deploy_timeout": timeout})
    assert st == 200, app
    return app


def new_release(ctl, app, args, env=None, memory=64 << 20):
    st, rel = ctl.post("/releases", {
        "app_id": app["id"], "env": env or {},
        "processes": {"web": {"args": args,
                              "resources": {"memory": {"limit": memory}}}}})
    assert st == 200, rel
    return rel


def start_release(ctl, app, rel, n):
    """Deploys rel to a fresh app (finishes at once) and scales web to n."""
    st, dep = ctl.post(f"/apps/{app['id']}/deploy", {"id": rel["id"]})
    assert st == 200 and dep["status"] == "complete", dep
    st, f = ctl.put(f"/apps/{app['id']}/formations/{rel['id']}",
                    {"app": app["id"], "release": rel["id"], "processes": {"web": n}})
    assert st == 200, f
    wait(lambda: len(up_jobs(ctl.store, app["id"], rel["id"])) == n, 60, f"{n} web jobs up")


def deploy(ctl, app, rel):
    st, dep = ctl.post(f"/apps/{app['id']}/deploy", {"id": rel["id"]})
    assert st == 200, dep
    return dep


def wait_finished(ctl, dep, timeout=90):
    def done():
        st, d = ctl.get(f"/deployments/{dep['id']}")
        return d if st == 200 and d["status"] in ("complete", "failed") else None
    return wait(done, timeout, f"deployment {dep['id']} to finish")


class Sampler(threading.Thread):
    """Counts the app's up web jobs every 20 ms while a deploy runs."""

    def __init__(self, store, app_id):
        super().__init__(daemon=True)
        self.store, self.app_id = store, app_id
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append(len(up_jobs(self.store, self.app_id)))
            except OSError:
                pass
            time.sleep(0.02)


def test_one_by_one_keeps_n_minus_one_up(cluster):
    ctl = cluster
    app = new_app(ctl, strategy="one-by-one")
    old = new_release(ctl, app, SLEEP, env={"V": "1"})
    start_release(ctl, app, old, 3)
    new = new_release(ctl, app, SLEEP, env={"V": "2"})

    s = Sampler(ctl.store, app["id"])
    s.start()
    dep = deploy(ctl, app, new)
    assert dep["status"] in ("pending", "running") and dep["old_release"] == old["id"]
    d = wait_finished(ctl, dep)
    s.stop.set()
    s.join()
    assert d["status"] == "complete", d
    assert len(s.samples) >= 5, s.samples
    assert min(s.samples) >= 2, f"fewer than N-1 web jobs up during the deploy: {s.samples}"

    st, a = ctl.get(f"/apps/{app['id']}")
    assert a["release"] == new["id"]
    wait(lambda: len(up_jobs(ctl.store, app["id"], new["id"])) == 3, 30, "3 new jobs up")
    wait(lambda: not [j for j in jobs_of(ctl.store, app["id"])
                      if j["release"] == old["id"] and j.get("state") not in
                      ("down", "crashed", "failed")], 30, "old jobs down")
    for j in up_jobs(ctl.store, app["id"], new["id"]):
        assert j["env"]["V"] == "2"


def test_crashing_release_is_rolled_back_without_touching_old_jobs(cluster):
    ctl = cluster
    app = new_app(ctl)
    old = new_release(ctl, app, SLEEP)
    start_release(ctl, app, old, 2)
    before = {j["id"] for j in up_jobs(ctl.store, app["id"], old["id"])}
    bad = new_release(ctl, app, CRASH)

    dep = deploy(ctl, app, bad)
    d = wait_finished(ctl, dep)
    assert d["status"] == "failed", d

    # The deployment says why, in its events.
    st, events = ctl.get(f"/events?app_id={app['id']}&object_types=deployment"
                         f"&object_id={dep['id']}")
    assert st == 200
    failed = [e for e in events if e["data"].get("status") == "failed"]
    assert failed and "rolled back" in failed[0]["data"].get("error", ""), events

    # The old jobs were never stopped, and the app kept its release.
    st, a = ctl.get(f"/apps/{app['id']}")
    assert a["release"] == old["id"]
    for j in jobs_of(ctl.store, app["id"]):
        if j["id"] in before:
            assert j.get("desired_state", "up") == "up" and j["state"] == "up", j
    assert {j["id"] for j in up_jobs(ctl.store, app["id"], old["id"])} == before
    # And nothing of the bad release is left wanting to run.
    wait(lambda: not [j for j in jobs_of(ctl.store, app["id"]) if j["release"] == bad["id"]
                      and j.get("desired_state", "up") == "up"
                      and j.get("state") not in ("down", "crashed", "failed")],
         30, "the bad release's jobs to stop")


def test_timeout_rolls_back(cluster):
    ctl = cluster
    app = new_app(ctl, timeout=4)
    old = new_release(ctl, app, SLEEP)
    start_release(ctl, app, old, 1)
    # Up never comes: its health check asks a port nobody listens on.
    st, never = ctl.post("/releases", {
        "app_id": app["id"],
        "processes": {"web": {"args": SLEEP, "resources": {"memory": {"limit": 64 << 20}},
                              "ports": [{"port": 0, "proto": "tcp", "service": {
                                  "name": f"{app['name']}-web", "create": True,
                                  "check": {"type": "tcp", "interval": "1s"}}}]}}})
    assert st == 200, never
    d = wait_finished(ctl, deploy(ctl, app, never), timeout=60)
    assert d["status"] == "failed", d
    st, a = ctl.get(f"/apps/{app['id']}")
    assert a["release"] == old["id"]
    assert len(up_jobs(ctl.store, app["id"], old["id"])) == 1


def test_all_at_once_and_events(cluster):
    ctl = cluster
    app = new_app(ctl)
    old = new_release(ctl, app, SLEEP)
    start_release(ctl, app, old, 2)
    new = new_release(ctl, app, SLEEP, env={"X": "y"})
    d = wait_finished(ctl, deploy(ctl, app, new))
    assert d["status"] == "complete", d
    assert d.get("finished_at")

    def statuses():
        st, events = ctl.get(f"/events?app_id={app['name']}&object_types=deployment")
        assert st == 200
        return [e["data"]["status"] for e in reversed(events) if e["object_id"] == d["id"]]
    # the recorder makes the events from the store's changes: the last one
    # may come a little after the deployment's record says it is complete
    wait(lambda: statuses()[-1:] == ["complete"], 10, "the deployment's complete event")
    got = statuses()
    assert got[0] == "pending" and got[-1] == "complete", got
    st, deps = ctl.get(f"/apps/{app['id']}/deployments")
    assert deps[0]["id"] == d["id"]


def store_put(store, key, value):
    import base64
    import urllib.request
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(json.dumps(value).encode()).decode()}).encode()
    req = urllib.request.Request(store + "/v3/kv/put", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def test_one_by_one_resumed_by_new_leader_keeps_its_progress(start_pierd):
    """A one-by-one deployment that an earlier leader had brought to its last
    step (new formation web=2, old web=0) is picked up where the formations
    say it was: the new release is not scaled back down to 1, nor the old
    one up again (no hosts run anything here: it ends by its timeout, and
    only the formation writes are looked at)."""
    store = start_pierd("store", name="store").url
    ctl = Controller(start_pierd, store)
    app = new_app(ctl, strategy="one-by-one", timeout=3)
    old = new_release(ctl, app, SLEEP)
    new = new_release(ctl, app, SLEEP)
    st, _ = ctl.put(f"/apps/{app['id']}/release", {"id": old["id"]})
    assert st == 200
    for rel, n in ((old, 0), (new, 2)):
        st, _ = ctl.put(f"/apps/{app['id']}/formations/{rel['id']}", {"processes": {"web": n}})
        assert st == 200
    # The recorder is recording before the deployer acts: its events are seen.
    wait(lambda: len(ctl.get(f"/events?app_id={app['id']}&object_types=scale")[1] or []) >= 2,
         20, "the formations' events")
    dep_id = "0b9a1c52-5d3e-4f7a-9c1e-2f4b6a8d0e11"
    store_put(store, f"/pier/v1/deployments/{dep_id}", {
        "id": dep_id, "app": app["id"], "old_release": old["id"], "new_release": new["id"],
        "strategy": "one-by-one", "status": "running", "processes": {"web": 2},
        "deploy_timeout": 3, "step": 3,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())})
    d = wait_finished(ctl, {"id": dep_id}, timeout=30)
    assert d["status"] == "failed", d  # nothing came up: timed out, rolled back
    st, events = ctl.get(f"/events?app_id={app['id']}&object_types=scale")
    assert st == 200
    counts = [(e["object_id"], e["data"]["processes"].get("web")) for e in reversed(events)]
    assert (new["id"], 1) not in counts and (old["id"], 1) not in counts, counts
    assert counts[-2:] == [(new["id"], 0), (old["id"], 2)], counts  # the rollback


def test_two_deployments_of_one_app_at_once_run_one_after_the_other(start_pierd):
    """Two deployments of one app made at the same moment (two controllers,
    each seeing none in progress, both write theirs): the deployer runs one,
    and the other, finding the app's release moved, fails instead of
    deploying from the wrong release. (The old formation runs nothing, so
    no hosts are needed.)"""
    store = start_pierd("store", name="store").url
    ctl = Controller(start_pierd, store)
    app = new_app(ctl)
    old = new_release(ctl, app, SLEEP)
    b = new_release(ctl, app, SLEEP)
    c = new_release(ctl, app, SLEEP)
    st, _ = ctl.put(f"/apps/{app['id']}/release", {"id": old["id"]})
    assert st == 200
    st, _ = ctl.put(f"/apps/{app['id']}/formations/{old['id']}", {"processes": {"web": 0}})
    assert st == 200
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    ids = ["1b9a1c52-5d3e-4f7a-9c1e-2f4b6a8d0e11", "2b9a1c52-5d3e-4f7a-9c1e-2f4b6a8d0e11"]
    for dep_id, rel, us in zip(ids, (b, c), ("000001", "000002")):
        store_put(store, f"/pier/v1/deployments/{dep_id}", {
            "id": dep_id, "app": app["id"], "old_release": old["id"], "new_release": rel["id"],
            "strategy": "all-at-once", "status": "pending", "processes": {"web": 0},
            "deploy_timeout": 10, "created_at": f"{now}.{us}Z"})
    first, second = (wait_finished(ctl, {"id": i}, timeout=30) for i in ids)
    assert first["status"] == "complete", first
    assert second["status"] == "failed", second
    st, a = ctl.get(f"/apps/{app['id']}")
    assert a["release"] == b["id"]
