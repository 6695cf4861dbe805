"""`pier up` bootstraps a cluster whose platform runs as its own apps.

One cluster for the module (`pier up --state-dir TMP --port-base N --name
t1 --domain t1.localhost`, the CLI's config in PIER_CONFIG): the store and
the host agent are daemons, the controller, discoverd, the blobstore, the
router, the git receiver and the scheduler are jobs of that agent and
protected system apps of their own controller. The tests run in order on
it, as a user would: look at it, run `pier up` again, scale the router,
deploy a new controller release under load, deploy an app, then kill every
process of the cluster with SIGKILL and `pier up` again, then `pier down`
and `pier up`. Each time the same cluster comes back, with its apps, jobs
and routes. At the end everything of the cluster is stopped by PID and by
the jobs' cgroups, and a sanitizer report in any daemon's or job's log
fails the module. Runs as root (the host agent runs crun containers).
"""

import json
import os
import re
import threading
import time

import pytest

from cluster_util import (BOOT_MSG, LIVE, SYSTEM_APPS, PierUp, Pred, apps_running,
                          check_https_config, check_status, deploy_user_app, formation, ok,
                          serves, show, until, up_jobs, user_app_answers as answers)


USER_APP = "hello-boot"
TEST_VAR = "BOOTSTRAP_TEST_VAR"


def user_app_answers(c):
    return answers(c, USER_APP)


@pytest.fixture(scope="module")
def cluster(pier_build, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("pier up starts a host agent, which runs as root", pytrace=False)
    for exe in ("pier", "pierd"):
        if not (pier_build / exe).exists():
            pytest.fail(f"{pier_build / exe} has not been built", pytrace=False)
    c = PierUp(pier_build, tmp_path_factory.mktemp("bootstrap"))
    c.timings = {}
    c.user_app = None
    try:
        c.first_up = c.up()
        c.timings["first pier up"] = c.first_up.elapsed
        yield c
    finally:
        c.cleanup()
        print("\ntimings:", json.dumps({k: round(v, 1) for k, v in c.timings.items()}))
        found = c.sanitizer_findings()
        if found:
            pytest.fail("sanitizer reports:\n" + "\n\n".join(f"== {who}\n{text}"
                                                             for who, text in found),
                        pytrace=False)


# ---- what runs ----

def ps_up(c, app):
    """The ids of the jobs `pier -a APP ps` lists as up."""
    p = ok(c, c.pier("-a", app, "ps"))
    rows = [ln.split() for ln in p.stdout.splitlines()[1:] if ln.strip()]
    return sorted(r[0] for r in rows if len(r) > 2 and r[2] == "up")


def all_job_ids(c):
    return sorted(k.rsplit("/", 1)[1] for k in c.store_range("/pier/v1/jobs/"))


# ---- 1. pier up ----

def test_up_starts_the_system_apps_as_jobs(cluster):
    c = cluster
    p = ok(c, c.first_up)
    assert (c.state / "key").stat().st_mode & 0o777 == 0o600
    assert (c.state / "cluster.json").is_file()

    # The system apps, protected, in the CLI's list (the table and --json).
    p = ok(c, c.pier("apps", "--json"))
    apps = {a["name"]: a for a in json.loads(p.stdout)}
    for name in SYSTEM_APPS:
        assert name in apps, f"{name} not in pier apps --json: {sorted(apps)}"
        assert (apps[name].get("meta") or {}).get("flynn-system-app") == "true", apps[name]
        assert apps[name].get("protected") is True, apps[name]
        assert apps[name].get("release"), f"{name} has no release: {apps[name]}"
    p = ok(c, c.pier("apps"))
    listed = {ln.split()[0] for ln in p.stdout.splitlines()[1:] if ln.strip()}
    assert set(SYSTEM_APPS) <= listed, p.stdout

    # Each runs its formation's jobs, each serving; `pier ps` agrees.
    running = until(lambda: apps_running(c, SYSTEM_APPS), "the system apps' jobs", 60)
    for name in SYSTEM_APPS:
        assert ps_up(c, name) == running[name], (name, running[name])

    # A protected app cannot be scaled to zero nor deleted.
    _, rel, procs = formation(c, "scheduler")
    st, e = c.ctl("PUT", f"/apps/scheduler/formations/{rel}",
                  {"processes": {t: 0 for t in procs}})
    assert st == 400, (st, e)
    st, e = c.ctl("DELETE", "/apps/scheduler")
    assert st == 400, (st, e)

    check_status(c)

    # The controller at its route, as curl (and a user) reaches it.
    st, body = c.curl(f"http://controller.{c.domain}:{c.http_port}/apps", "-u", f":{c.key()}")
    assert st == 200, (st, body)
    assert set(SYSTEM_APPS) <= {a["name"] for a in json.loads(body)}
    c.system_jobs = running

    # The CLI talks to it over https, pinning the cluster's CA: the config
    # has it, and every command above went through it.
    check_https_config(c)
    assert f"https://controller.{c.domain}:{c.https_port}" in c.first_up.stdout, show(c.first_up)
    assert "TLS pin" in c.first_up.stdout, show(c.first_up)


def test_git_receiver_is_routed_and_finds_its_peers(cluster):
    """The manifest's git route serves, and what the git receiver looks up
    in discovery at each push (docs/gitreceive.md) is there."""
    c = cluster
    st, body = c.curl(f"http://git.{c.domain}:{c.http_port}/.well-known/status")
    assert st == 200, f"git.{c.domain} through the router: {st} {body[:300]!r}"
    services = {k.split("/")[4] for k in c.store_range("/pier/v1/services/")}
    for name in ("controller", "blobstore"):
        assert name in services, \
            f"no instance of service {name!r} in discovery (the git receiver looks it up " \
            f"at each push); services: {sorted(services)}"


def test_up_again_finds_the_running_cluster(cluster):
    c = cluster
    before_jobs = all_job_ids(c)
    pids = (c.pid_file("store"), c.pid_file("host"))
    p = ok(c, c.up())
    c.timings["pier up on a running cluster"] = p.elapsed
    assert re.search(r"\bfound\b", p.stdout + p.stderr, re.I), show(p)
    assert all_job_ids(c) == before_jobs
    assert (c.pid_file("store"), c.pid_file("host")) == pids
    assert apps_running(c, SYSTEM_APPS) == c.system_jobs


# ---- 2. the router scales like any app ----

def router_counts(c, jobs):
    out = {}
    for j in jobs:
        ports = j.get("allocated_ports") or []
        assert ports, f"router job {j['id']} has no port, so no admin API of its own: {j}"
        port = ports[0]["port"] if isinstance(ports[0], dict) else ports[0]
        st, s = c.http("GET", None, "/status", port=port, timeout=5)
        assert st == 200, (j["id"], st, s)
        out[j["id"]] = s["counters"]["requests"]
    return out


def test_router_scales_to_two_and_both_serve(cluster):
    c = cluster
    a, rel, procs = formation(c, "router")
    assert list(procs) and all(n == 1 for n in procs.values()), procs
    (rtype,) = procs
    p = ok(c, c.pier("-a", "router", "scale", f"{rtype}=2", timeout=120))
    def two_up():
        js = up_jobs(c, a["id"], rel, rtype)
        return js if len(js) == 2 and all(serves(c, j) for j in js) else \
            Pred([(j["id"], j.get("allocated_ports"), serves(c, j)) for j in js])
    jobs = until(two_up, "two router jobs up", 60)
    assert len(ps_up(c, "router")) == 2

    # New connections spread over both routers' sockets: each one serves.
    start = router_counts(c, jobs)
    statuses = []
    for _ in range(200):
        st, _ = c.http("GET", f"controller.{c.domain}", "/.well-known/status", auth=False)
        statuses.append(st)
        now = router_counts(c, jobs)
        if all(now[j] > start[j] for j in now):
            break
    assert set(statuses) == {200}, statuses
    assert all(now[j] > start[j] for j in now), (start, now)

    ok(c, c.pier("-a", "router", "scale", f"{rtype}=1", timeout=120))
    until(lambda: len(up_jobs(c, a["id"], rel, rtype)) == 1, "one router job left", 60)
    for _ in range(20):
        st, _ = c.ctl("GET", "/apps")
        assert st == 200


# ---- 3. a new controller release, deployed under load ----

class Poller(threading.Thread):
    """GET /apps through the router every 50 ms; keeps (t, status or error)."""

    def __init__(self, c):
        super().__init__(daemon=True)
        self.c = c
        self.results = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                st, body = self.c.ctl("GET", "/apps", timeout=10)
                self.results.append((t, st if st == 200 else f"{st} {str(body)[:200]}"))
            except OSError as e:
                self.results.append((t, f"{type(e).__name__}: {e}"))
            time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))


def test_controller_redeploys_without_a_failed_request(cluster):
    c = cluster
    a, old_rel, procs = formation(c, "controller")
    st, rel = c.ctl("GET", "/apps/controller/release")
    assert st == 200 and rel["id"] == old_rel, (st, rel)
    old_jobs = {j["id"] for j in up_jobs(c, a["id"])}
    assert old_jobs
    env = dict(rel.get("env") or {})
    env[TEST_VAR] = "v2"
    st, new = c.ctl("POST", "/releases", {"app_id": a["id"], "artifacts": rel["artifacts"],
                                           "env": env, "processes": rel["processes"],
                                           "meta": rel.get("meta") or {}})
    assert st == 200, (st, new)

    poller = Poller(c)
    poller.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        st, dep = c.ctl("POST", "/apps/controller/deploy", {"id": new["id"]})
        assert st == 200, (st, dep)

        def finished():
            st, d = c.try_ctl("GET", f"/deployments/{dep['id']}")
            if st == 200 and d.get("status") in ("complete", "failed"):
                return d
            return Pred(f"{st} {d}")
        d = until(finished, "the controller's deployment to finish", 120, every=0.3)
        c.timings["controller deploy"] = time.monotonic() - t0
        assert d["status"] == "complete", d
        new_jobs = until(lambda: (lambda js: js if len(js) == sum(procs.values()) else None)(
            up_jobs(c, a["id"], new["id"])), "the new controller jobs up", 30)
        until(lambda: not ({j["id"] for j in up_jobs(c, a["id"])} & old_jobs)
              and not {j["id"] for j in c.agent_jobs()
                       if j["id"] in old_jobs and j.get("state") in LIVE},
              "the old controller jobs gone", 60)
        time.sleep(1.0)
    finally:
        poller.stop.set()
        poller.join()

    bad = [(round(t - poller.results[0][0], 2), r) for t, r in poller.results if r != 200]
    assert len(poller.results) > 20, poller.results
    assert not bad, f"{len(bad)} of {len(poller.results)} requests failed during the deploy " \
                    f"(s since the poll began, answer): {bad[:20]}"

    st, app = c.ctl("GET", "/apps/controller")
    assert app["release"] == new["id"], app
    # The old controller drained: it released its leadership at once
    # (so the new job's deployer took over) and exited 0, not killed by a
    # signal (143: SIGTERM's default action, 137: SIGKILL after the grace).
    for jid in old_jobs:
        st, job = c.agent(f"/host/jobs/{jid}")
        log = (c.state / "host" / "jobs" / jid / "log").read_text(errors="replace")
        assert job.get("state") == "down" and job.get("exit_status") == 0 \
            and "leadership released" in log, \
            f"the old controller job {jid} did not stop cleanly: " \
            f"{ {k: job.get(k) for k in ('state', 'exit_status', 'signal', 'finished_at')} }\n" \
            f"its log ends:\n" + "\n".join(log.splitlines()[-8:])
    for j in new_jobs:
        st, job = c.agent(f"/host/jobs/{j['id']}")
        assert st == 200 and (job.get("env") or {}).get(TEST_VAR) == "v2", (st, job)
    st, r = c.ctl("GET", f"/releases/{new['id']}")
    assert st == 200 and r["env"].get(TEST_VAR) == "v2", r
    assert sorted(ps_up(c, "controller")) == sorted(j["id"] for j in new_jobs)
    c.controller_release = new["id"]


# ---- 4. a user app, through the router ----

def test_user_app_is_served_through_the_router(cluster):
    c = cluster
    rel = deploy_user_app(c, USER_APP)  # the smoke test_up_etcd.py and test_join.py share
    a, r, procs = formation(c, USER_APP)
    assert r == rel and procs == {"web": 1}, (r, procs)
    # through the router's https port too, verified against the cluster's CA
    st, body = c.curl(c.https_url(USER_APP) + "/")
    assert st == 200 and BOOT_MSG in body, (st, body)
    c.user_app = {"release": r, "processes": procs,
                  "jobs": apps_running(c, [USER_APP])[USER_APP]}


# ---- 5, 6. the same cluster comes back ----

def comes_back(c, p, what):
    """After `pier up` p: the system apps run again (their formations
    unchanged and met), `pier status` is 0, the controller keeps the
    release deployed in test 3, and the user app answers at its route."""
    t0 = time.monotonic() - p.elapsed  # when pier up began
    ok(c, p)
    running = until(lambda: apps_running(c, SYSTEM_APPS), f"the system apps after {what}",
                    max(5.0, 60 - (time.monotonic() - t0)))
    c.timings[f"system apps running after {what} (incl. pier up)"] = time.monotonic() - t0
    check_status(c)
    if getattr(c, "controller_release", None):
        _, rel, _ = formation(c, "controller")
        assert rel == c.controller_release, (rel, c.controller_release)
        for jid in running["controller"]:
            st, job = c.agent(f"/host/jobs/{jid}")
            assert (job.get("env") or {}).get(TEST_VAR) == "v2", job
    if c.user_app:
        until(lambda: user_app_answers(c), f"{USER_APP} through the router after {what}",
              max(5.0, 60 - (time.monotonic() - t0)))
        _, rel, procs = formation(c, USER_APP)
        assert (rel, procs) == (c.user_app["release"], c.user_app["processes"])
        until(lambda: apps_running(c, [USER_APP]), f"{USER_APP}'s jobs after {what}", 30)
        c.timings[f"user app back after {what} (incl. pier up)"] = time.monotonic() - t0
    return running


def test_sigkill_of_every_process_then_up(cluster):
    c = cluster
    store_pid, host_pid = c.pid_file("store"), c.pid_file("host")
    killed = c.kill_everything()
    assert store_pid in killed and host_pid in killed, (store_pid, host_pid, killed)
    shims = [p for p, argv in killed.items() if "--dir" in argv]
    assert len(shims) >= len(SYSTEM_APPS), killed
    assert not c.live_processes()
    p = c.pier("status", timeout=60)
    assert p.returncode != 0, "pier status with every process killed:\n" + show(p)
    p = c.up()
    c.timings["pier up after SIGKILL"] = p.elapsed
    comes_back(c, p, "SIGKILL")


def test_down_then_up(cluster):
    c = cluster
    p = ok(c, c.down())
    c.timings["pier down"] = p.elapsed
    until(lambda: not c.live_processes() or Pred(c.live_processes()),
          "every process of the cluster to stop after pier down", 15)
    p = c.pier("status", timeout=60)
    assert p.returncode != 0, "pier status after pier down:\n" + show(p)
    p = c.up()
    c.timings["pier up after pier down"] = p.elapsed
    comes_back(c, p, "pier down")
