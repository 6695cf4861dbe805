"""`pierd bootstrap` on its own: the manifest it refuses before anything
starts, and a whole run against a real store and host agent (no `pier up`):
the six system apps come up as jobs of the agent and are recorded as
protected system apps in their own controller; run again, it finds them
and starts nothing; the scheduler (started last) counts the bootstrap's
jobs as its formations' and starts no others. Runs as root (the agent runs
crun containers)."""

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "bootstrap" / "manifest.json"
SYSTEM_APPS = ["controller", "discoverd", "blobstore", "router", "gitreceive", "scheduler"]
KEY = "bootstrap-test-key"
DOMAIN = "boot.localhost"
LIVE = ("pending", "starting", "up")
STATEFUL = ("blobstore", "router", "gitreceive")


def bootstrap(pier_build, manifest, store, host_url, state, vars_=None, key=KEY, extra=(),
              timeout=180):
    argv = [str(pier_build / "pierd"), "bootstrap", "--manifest", str(manifest),
            "--store", store, "--host-url", host_url, "--data-dir", str(state),
            "--timeout", "60", *extra]
    for k, v in (vars_ or {}).items():
        argv += ["--var", f"{k}={v}"]
    env = dict(os.environ)
    env.pop("PIER_KEY", None)
    if key is not None:
        env["PIER_KEY"] = key
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def show(p):
    return f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def assert_clean(p):
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in p.stderr, show(p)


def api(url, method="GET", body=None, key=KEY, host=None, timeout=10):
    """(status, parsed JSON or None) of a request with the cluster key."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(f":{key}".encode()).decode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text) if text else None
        except ValueError:
            return e.code, None


# ---- the manifest, refused before anything starts ----

def write(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def app(**kw):
    a = {"name": "one", "processes": {"app": {"args": ["/app/pierd", "scheduler"]}},
         "formation": {"app": 1}}
    a.update(kw)
    return a


BAD_MANIFESTS = [
    ("unknown-placeholder", {"version": 1, "apps": [app(env={"X": "{{NOPE}}"})]},
     ["{{NOPE}}", "apps[0].env.X", "--var NOPE="]),
    ("bad-json", '{"version": 1, "apps": [', ["malformed JSON"]),
    ("unknown-field", {"version": 1, "apps": [app(procesess={})]},
     ["apps[0] (one).procesess: unknown field"]),
    ("unknown-process-field",
     {"version": 1, "apps": [app(processes={"app": {"args": ["x"], "mountz": []}})]},
     ["processes.app.mountz: unknown field"]),
    ("unknown-top-field", {"version": 1, "apps": [app()], "extra": 1}, ["extra: unknown field"]),
    ("formation-of-no-type", {"version": 1, "apps": [app(formation={"web": 1})]},
     ["formation.web: no such process type"]),
    ("tags-of-no-type", {"version": 1, "apps": [app(tags={"web": {"k": "v"}})]},
     ["apps[0] (one).tags.web: no such process type"]),
    ("tag-not-a-string", {"version": 1, "apps": [app(tags={"app": {"k": 1}})]},
     ["apps[0] (one).tags.app.k must be a string"]),
    ("bad-version", {"version": 2, "apps": [app()]}, ["version must be 1"]),
    ("bad-placeholder", {"version": 1, "apps": [app(env={"X": "{{a b}}"})]},
     ["a placeholder is {{NAME}}"]),
    ("duplicate-name", {"version": 1, "apps": [app(), app()]}, ["the name one is used twice"]),
]


@pytest.mark.parametrize("name,doc,says", BAD_MANIFESTS, ids=[m[0] for m in BAD_MANIFESTS])
def test_bad_manifest_is_refused_naming_the_problem(pier_build, tmp_path, free_port, name, doc,
                                                    says):
    m = write(tmp_path / "m.json", doc)
    state = tmp_path / "state"
    # Nothing listens at the store or the agent: a refusal comes before them.
    dead = f"http://127.0.0.1:{free_port()}"
    p = bootstrap(pier_build, m, dead, dead, state, {"DOMAIN": DOMAIN}, timeout=30)
    assert p.returncode == 1, show(p)
    for s in says:
        assert s in p.stderr, show(p)
    assert str(m) in p.stderr, show(p)
    assert p.stdout == "", show(p)
    assert not (state / "bootstrap.json").exists()
    assert_clean(p)


def test_flags_and_key_are_checked(pier_build, tmp_path, free_port):
    dead = f"http://127.0.0.1:{free_port()}"
    p = bootstrap(pier_build, MANIFEST, dead, dead, tmp_path / "s", {"STATE": "/x"})
    assert p.returncode == 2 and "STATE is the data dir" in p.stderr, show(p)
    p = bootstrap(pier_build, MANIFEST, dead, dead, tmp_path / "s", key=None)
    assert p.returncode == 2 and "PIER_KEY" in p.stderr, show(p)
    p = bootstrap(pier_build, MANIFEST, dead, dead, tmp_path / "s", extra=["--timeout", "0"])
    assert p.returncode == 2 and "--timeout" in p.stderr, show(p)
    # The shipped manifest needs its four variables: the first missing one is named.
    p = bootstrap(pier_build, MANIFEST, dead, dead, tmp_path / "s")
    assert p.returncode == 1 and "unknown placeholder {{STORE}}" in p.stderr, show(p)


# ---- a whole run ----

def agent_jobs(host):
    status, jobs = api(host.url + "/host/jobs")
    assert status == 200
    return jobs


def live_jobs(host):
    return [j for j in agent_jobs(host)
            if j.get("state") in LIVE and j.get("desired_state", "up") == "up"]


def controller_url(host):
    for j in live_jobs(host):
        if j.get("env", {}).get("APP_NAME") == "controller" and j.get("state") == "up":
            port = j["allocated_ports"][0]
            port = port["port"] if isinstance(port, dict) else port
            return f"http://127.0.0.1:{port}"
    pytest.fail("no controller job is up")


def until(fn, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_bootstrap_runs_the_system_apps_and_a_rerun_finds_them(pier_build, start_pierd,
                                                               start_host, tmp_path, free_port):
    store = start_pierd("store", name="store").url
    host = start_host(store)
    state = tmp_path / "state"
    http_port, https_port, ssh_port = free_port(), free_port(), free_port()
    vars_ = {"DOMAIN": DOMAIN, "STORE": store, "HTTP_ADDR": f"127.0.0.1:{http_port}",
             "HTTPS_ADDR": f"127.0.0.1:{https_port}", "SSH_ADDR": f"127.0.0.1:{ssh_port}",
             "CLUSTER": "b1"}

    # A release the controller would refuse is refused before any job starts.
    bad = json.loads(MANIFEST.read_text())
    bad["apps"][2]["processes"]["app"]["mounts"][0]["target"] = "/proc/x"
    p = bootstrap(pier_build, write(tmp_path / "bad.json", bad), store, host.url, state, vars_)
    assert p.returncode == 1, show(p)
    assert "planning" in p.stderr and "blobstore" in p.stderr and "/proc" in p.stderr, show(p)
    assert agent_jobs(host) == []

    p = bootstrap(pier_build, MANIFEST, store, host.url, state, vars_)
    assert p.returncode == 0, show(p)
    assert_clean(p)
    for name in SYSTEM_APPS:
        assert f"{name}: starting job {host.id}-" in p.stdout, show(p)
        assert f"{name}: recorded as a system app" in p.stdout, show(p)
    assert "6 system apps running (6 jobs started, 0 found" in p.stdout, show(p)
    first = sorted(j["id"] for j in live_jobs(host))
    assert len(first) == 6, agent_jobs(host)

    # The planned ids are kept, each app complete.
    plan = json.loads((state / "bootstrap.json").read_text())
    assert sorted(plan["apps"]) == sorted(SYSTEM_APPS)
    assert all(plan["apps"][a]["complete"] for a in SYSTEM_APPS)
    # The system artifact: the pierd installed on each host, no tarball.
    assert not (state / "system").exists()
    assert "pierd" in plan["artifacts"] and "file" not in plan["artifacts"], plan

    ctl = controller_url(host)
    status, apps = api(ctl + "/apps")
    assert status == 200
    by_name = {a["name"]: a for a in apps}
    assert sorted(by_name) == sorted(SYSTEM_APPS)
    for name, a in by_name.items():
        assert a["meta"].get("flynn-system-app") == "true", a
        assert a["protected"] is True, a
        assert a["id"] == plan["apps"][name]["app"]
        assert a["release"] == plan["apps"][name]["release"]
        status, jobs = api(f"{ctl}/apps/{name}/jobs")
        assert status == 200
        assert [j["state"] for j in jobs if j["state"] == "up"] == ["up"], (name, jobs)
        status, rel = api(f"{ctl}/apps/{name}/release")
        assert status == 200 and rel["id"] == a["release"]
        status, arts = api(f"{ctl}/artifacts/{rel['artifacts'][0]}")
        assert status == 200 and arts["type"] == "file" and arts["uri"] == "pier:pierd", arts
        assert arts["id"] == plan["artifacts"]["pierd"], (arts, plan)
        status, stack = api(f"{ctl}/artifacts/{rel['artifacts'][1]}")
        assert status == 200 and stack["uri"] == "pier:host", stack
        status, f = api(f"{ctl}/apps/{name}/formations/{a['release']}")
        assert status == 200 and sum(f["processes"].values()) == 1, f
        # the apps with state in STATE are pinned to a host tagged pier.state=CLUSTER
        want = {"app": {"pier.state": "b1"}} if name in STATEFUL else {}
        assert f.get("tags", {}) == want, (name, f)
    # Protected: neither deleted nor scaled to zero.
    status, _ = api(f"{ctl}/apps/router", method="DELETE")
    assert status == 400
    # The routes: the manifest's, the controller's default ones removed.
    routes = {}
    for name in SYSTEM_APPS:
        status, rs = api(f"{ctl}/apps/{name}/routes")
        assert status == 200
        routes[name] = sorted((r["domain"], r["service"]) for r in rs)
    assert routes["controller"] == [(f"controller.{DOMAIN}", "controller-web")]
    assert routes["gitreceive"] == [(f"git.{DOMAIN}", "gitreceive")]
    assert all(routes[n] == [] for n in ("discoverd", "blobstore", "router", "scheduler")), routes

    # The router (a job) sends controller.DOMAIN to the controller (a job).
    def through_router():
        status, body = api(f"http://127.0.0.1:{http_port}/apps", host=f"controller.{DOMAIN}")
        return status == 200 and sorted(a["name"] for a in body) == sorted(SYSTEM_APPS)
    until(through_router, what="the controller through the router")

    # A cluster of before the tags: the router's formation without them
    # gets them back, its counts kept.
    rid = by_name["router"]["release"]
    status, _ = api(f"{ctl}/apps/router/formations/{rid}", method="PUT",
                    body={"processes": {"app": 1}, "tags": {}})
    assert status == 200

    # Run again: everything is found, nothing started or created.
    p = bootstrap(pier_build, MANIFEST, store, host.url, state, vars_)
    assert p.returncode == 0, show(p)
    assert_clean(p)
    assert "router: its formation's tags updated" in p.stdout, show(p)
    assert "blobstore: its formation's tags" not in p.stdout, show(p)
    status, f = api(f"{ctl}/apps/router/formations/{rid}")
    assert f["tags"] == {"app": {"pier.state": "b1"}} and f["processes"] == {"app": 1}, f
    for name in SYSTEM_APPS:
        assert f"{name}: found, 1 " in p.stdout, show(p)
    assert "starting job" not in p.stdout and "recorded as" not in p.stdout, show(p)
    assert "found the 6 system apps running (6 jobs)" in p.stdout, show(p)

    # The scheduler counts the bootstrap's jobs as its formations': a few
    # seconds on, the same six jobs run and nothing else was started.
    time.sleep(4)
    assert sorted(j["id"] for j in live_jobs(host)) == first, agent_jobs(host)
    assert len(agent_jobs(host)) == 6, agent_jobs(host)
