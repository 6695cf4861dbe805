"""The Heroku-shaped app workflow of the `pier` CLI, end to end, against a
real `pierd store` + `pierd controller` (and, for the commands that need
jobs, real host agents running crun containers and a `pierd scheduler`).

Each test reads like the user's steps: create an app, set config vars,
scale it, run a one-off command, read its log, destroy it. The CLI finds
the cluster through PIER_CONTROLLER_URL and PIER_CONTROLLER_KEY, so no
config file is needed. Wrong input is refused with a message that says
what was wrong and what to do (exit status 2 for usage, 1 for failures),
and changes nothing on the cluster."""

import base64
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from conftest import free_port, sanitizer_reports

KEY = "cli-apps-key"
TICK = ["sh", "-c", "while true; do echo tick; sleep 1; done"]
# Service jobs ask for 256 MiB; a one-off gets the controller's default
# (1 GiB), so the agent offers 1.5 GiB: room for either, not for a dozen.
JOB_MEMORY = {"memory": {"limit": 256 << 20, "request": 256 << 20}}


class Api:
    """The controller's API, as a test reaches behind the CLI's back."""

    def __init__(self, url):
        self.url = url
        self.auth = "Basic " + base64.b64encode(f":{KEY}".encode()).decode()

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": self.auth,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text) if text else None
            except ValueError:
                return e.code, None

    def get(self, path):
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def release(self, app, processes, env=None):
        """Creates a release of app with these process types and deploys it."""
        status, rel = self.call("POST", "/releases", {"app_id": app, "processes": processes,
                                                      "env": env or {}})
        assert status == 200, rel
        status, dep = self.call("POST", f"/apps/{app}/deploy", {"id": rel["id"]})
        assert status == 200, dep
        deadline = time.monotonic() + 30
        while self.get(f"/apps/{app}").get("release") != rel["id"]:
            assert time.monotonic() < deadline, f"release {rel['id']} was not deployed"
            time.sleep(0.1)
        return rel


@pytest.fixture
def cluster(start_pierd):
    """A store and a controller; .url is the controller's, .api talks to it."""
    store = start_pierd("store", name="store")
    ctl = start_pierd("controller", name="controller",
                      args=["--store", store.url, "--key", KEY, "--domain", "example.test"])
    return SimpleNamespace(store=store.url, url=ctl.url, api=Api(ctl.url))


@pytest.fixture
def jobs(cluster, start_host, start_pierd):
    """The cluster plus a host agent (1.5 GiB for jobs) and a scheduler."""
    agent = start_host(cluster.store, args=["--memory", "1536M"])
    start_pierd("scheduler", name="scheduler",
                args=["--store", cluster.store, "--key", KEY, "--restart-backoff-ms", "200"])
    cluster.agent = agent
    return cluster


@pytest.fixture
def pier(pier_build, tmp_path, cluster):
    """Runs `pier ARGS` against the cluster and returns the CompletedProcess.
    env entries set to None are removed; cwd defaults to a folder outside
    any git repository."""
    exe = pier_build / "pier"
    if not exe.exists():
        pytest.fail(f"{exe} has not been built", pytrace=False)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()

    def environ(env=None):
        e = dict(os.environ, PIER_CONFIG=str(tmp_path / "no-config.json"),
                 HOME=str(tmp_path / "home"), PIER_CONTROLLER_URL=cluster.url,
                 PIER_CONTROLLER_KEY=KEY, GIT_CONFIG_NOSYSTEM="1")
        for k in ("PIER_CLUSTER", "PIER_APP", "XDG_CONFIG_HOME"):
            e.pop(k, None)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def run(*args, env=None, cwd=None, input=None, timeout=90, binary=False):
        p = subprocess.run([str(exe), *args], env=environ(env), capture_output=True,
                           text=not binary, timeout=timeout, cwd=cwd or work,
                           input=input if input is not None else ("" if not binary else b""))
        err = p.stderr if not binary else p.stderr.decode(errors="replace")
        reports = sanitizer_reports(err)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{err}"
        return p

    run.exe = exe
    run.environ = environ
    run.work = work
    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def fails(p, status=1):
    assert p.returncode == status, \
        f"exit {p.returncode}, wanted {status}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def read_lines(proc, until, timeout=20.0):
    """Reads proc's stdout (unbuffered, so select() tells the truth) until
    until(text) holds or the time runs out; returns the text read."""
    text = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while not until(text.decode(errors="replace")) and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk
    return text.decode(errors="replace")


def wait_for(what, fn, timeout=30.0, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(every)


# ---- apps: create, apps, info, destroy ----

def test_create_list_show_and_destroy_apps(pier, cluster):
    assert ok(pier("create", "demo")).stdout == "demo\n"
    generated = ok(pier("create")).stdout.strip()
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", generated), generated

    lines = ok(pier("apps")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "RELEASE"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:]}
    assert set(rows) == {"demo", generated}
    demo_id = cluster.api.get("/apps/demo")["id"]
    assert rows["demo"] == [demo_id, "-"]
    listed = json.loads(ok(pier("apps", "--json")).stdout)
    assert sorted(a["name"] for a in listed) == sorted(["demo", generated])

    info = ok(pier("info", "-a", "demo")).stdout
    assert info.startswith("=== demo\n"), info
    assert re.search(rf"^ID:\s+{demo_id}$", info, re.M), info
    assert re.search(r"^Release:\s+none yet", info, re.M), info
    assert re.search(r"^Routes:\s+http://demo\.example\.test/ -> demo-web$", info, re.M), info

    # The same name twice, and a name the controller refuses: nothing made.
    p = fails(pier("create", "demo"))
    assert 'an app named "demo" already exists' in p.stderr
    p = fails(pier("create", "Not Valid"))
    assert "name must match" in p.stderr, p.stderr
    p = fails(pier("create", "a", "b"), 2)
    assert "at most one NAME" in p.stderr
    assert len(cluster.api.get("/apps")) == 2

    # destroy asks first; without a terminal it needs -y or --confirm.
    p = fails(pier("destroy", "-a", "demo"))
    assert "without a confirmation" in p.stderr and "-y" in p.stderr
    p = fails(pier("destroy", "-a", "demo", "--confirm", "demo2"))
    assert "does not match" in p.stderr
    assert cluster.api.call("GET", "/apps/demo")[0] == 200

    p = ok(pier("destroy", "--confirm", "demo"))
    assert re.fullmatch(r'destroyed app "demo" \(0 releases, 1 routes, 0 resources\)\n',
                        p.stdout), p.stdout
    assert cluster.api.call("GET", "/apps/demo")[0] == 404
    p = fails(pier("info", "-a", "demo"))
    assert 'no app named "demo"' in p.stderr
    ok(pier("destroy", "-a", generated, "-y"))
    assert "no apps yet" in ok(pier("apps")).stderr


# ---- config vars and releases ----

def env_of(cluster, app):
    return cluster.api.get(f"/apps/{app}/release").get("env", {})


def test_env_set_unset_releases_and_rollback(pier, cluster):
    ok(pier("create", "cfg"))
    # No release yet: no vars.
    assert ok(pier("env", "-a", "cfg")).stdout == ""

    p = ok(pier("env", "-a", "cfg", "set", "ZED=last", "FOO=bar", "EQ=a=b", "EMPTY="))
    assert "created release" in p.stderr and "deployed release" in p.stderr, p.stderr
    assert ok(pier("env", "-a", "cfg")).stdout == "EMPTY=\nEQ=a=b\nFOO=bar\nZED=last\n"
    assert env_of(cluster, "cfg") == {"ZED": "last", "FOO": "bar", "EQ": "a=b", "EMPTY": ""}
    first = cluster.api.get("/apps/cfg")["release"]

    ok(pier("env", "-a", "cfg", "unset", "FOO", "EMPTY"))
    assert ok(pier("env", "-a", "cfg")).stdout == "EQ=a=b\nZED=last\n"
    second = cluster.api.get("/apps/cfg")["release"]
    assert second != first

    # Setting what is already set changes nothing: no new release.
    p = ok(pier("env", "-a", "cfg", "set", "ZED=last"))
    assert "nothing to change" in p.stderr
    assert cluster.api.get("/apps/cfg")["release"] == second

    lines = ok(pier("releases", "-a", "cfg")).stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "DESCRIPTION"]
    assert lines[1].startswith(f"* {second} ") and lines[1].endswith("unset FOO, EMPTY"), lines
    assert lines[2].startswith(f"  {first} ") and "set ZED, FOO, EQ, EMPTY" in lines[2], lines
    assert len(lines) == 3

    # rollback: the release before the current one, deployed.
    p = ok(pier("rollback", "-a", "cfg"))
    assert f"rolled back to release {first}" in p.stdout
    assert cluster.api.get("/apps/cfg")["release"] == first
    assert ok(pier("env", "-a", "cfg")).stdout == "EMPTY=\nEQ=a=b\nFOO=bar\nZED=last\n"
    # ... or one named by the start of its id.
    ok(pier("rollback", "-a", "cfg", second[:8]))
    assert cluster.api.get("/apps/cfg")["release"] == second
    p = ok(pier("rollback", "-a", "cfg", second))
    assert "already the current one" in p.stdout
    p = fails(pier("rollback", "-a", "cfg", "ffffffff"))
    assert 'no release "ffffffff"' in p.stderr
    assert len(cluster.api.get("/apps/cfg/releases")) == 2

    # Config vars travel with the whole release: process types stay.
    rel = cluster.api.release("cfg", {"web": {"args": TICK}}, env={"KEEP": "1"})
    ok(pier("env", "-a", "cfg", "set", "MORE=2"))
    now = cluster.api.get("/apps/cfg/release")
    assert now["id"] != rel["id"]
    assert now["env"] == {"KEEP": "1", "MORE": "2"}
    assert now["processes"]["web"]["args"] == TICK


def test_bad_config_vars_are_refused_before_any_request(pier, cluster):
    ok(pier("create", "keys"))
    ok(pier("env", "-a", "keys", "set", "GOOD_1=x"))
    before = cluster.api.get("/apps/keys/releases")
    cases = [
        (["set", "1ABC=x"], "starts with a digit"),
        (["set", "__X=x"], 'starts with "__"'),
        (["set", "BAD-KEY=x"], "letters, digits and '_'"),
        (["set", "PIER_SECRET=x"], "reserved"),
        (["set", "NOEQUALS"], "is not KEY=VALUE"),
        (["set", "=x"], "is empty"),
        (["unset", "A=b"], "keys only"),
        (["set"], "needs KEY=VALUE"),
        (["set", "BIG=" + "x" * 33000], "at most 32768 bytes"),
        (["frob"], "unknown env subcommand"),
    ]
    for args, msg in cases:
        p = fails(pier("env", "-a", "keys", *args), 2)
        assert msg in p.stderr, (args, p.stderr)
        assert "pier help env" in p.stderr
    # Refused before asking anything: the same errors with no cluster at all.
    dead = f"http://127.0.0.1:{free_port()}"
    p = fails(pier("env", "-a", "keys", "set", "PIER_X=1", env={"PIER_CONTROLLER_URL": dead}), 2)
    assert "reserved" in p.stderr and "connection refused" not in p.stderr
    assert cluster.api.get("/apps/keys/releases") == before
    assert env_of(cluster, "keys") == {"GOOD_1": "x"}


# ---- which app, and errors that say what to do ----

def test_the_app_comes_from_the_flag_the_environment_or_the_git_remote(pier, cluster, tmp_path):
    ok(pier("create", "picked"))
    ok(pier("env", "-a", "picked", "set", "WHO=picked"))

    p = fails(pier("env"))
    assert "pier: no app given: use -a APP or run inside a git repo with a 'pier' remote" \
        in p.stderr, p.stderr

    assert ok(pier("env", env={"PIER_APP": "picked"})).stdout == "WHO=picked\n"
    assert ok(pier("-a", "picked", "env")).stdout == "WHO=picked\n"
    assert ok(pier("env", "--app=picked")).stdout == "WHO=picked\n"

    repo = tmp_path / "repo"
    repo.mkdir()
    git_env = pier.environ()
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=git_env)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "pier",
                    "https://git.example.test/picked.git"], check=True, env=git_env)
    assert ok(pier("env", cwd=repo)).stdout == "WHO=picked\n"
    sub = repo / "sub"
    sub.mkdir()
    assert ok(pier("info", cwd=sub)).stdout.startswith("=== picked\n")
    # The flag wins over the remote.
    ok(pier("create", "other"))
    assert ok(pier("env", "-a", "other", cwd=repo)).stdout == ""


def test_errors_name_the_problem_and_the_fix(pier, cluster):
    ok(pier("create", "err"))
    p = fails(pier("apps", env={"PIER_CONTROLLER_KEY": "wrong"}))
    assert "refused the key (401)" in p.stderr, p.stderr
    assert "pier cluster add" in p.stderr

    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["apps"], ["info", "-a", "err"], ["run", "-a", "err", "--", "true"],
                 ["events", "-a", "err", "-f"]):
        p = fails(pier(*args, env={"PIER_CONTROLLER_URL": dead}))
        assert f"the controller at {dead}: connection refused" in p.stderr, (args, p.stderr)
        assert "pier status" in p.stderr

    for args in (["info"], ["env"], ["scale"], ["ps"], ["releases"], ["log"], ["events"],
                 ["run", "true"], ["env", "set", "A=1"], ["destroy", "-y"]):
        p = fails(pier(*args, "-a", "nope") if args[0] != "run" else
                  pier("run", "-a", "nope", "true"))
        assert 'no app named "nope"' in p.stderr, (args, p.stderr)

    p = fails(pier("scale", "-a", "err"))
    assert 'app "err" has no release yet' in p.stderr
    p = fails(pier("run", "-a", "err", "--", "true"))
    assert "has no release" in p.stderr
    p = fails(pier("run", "-a", "err"), 2)
    assert "run needs a command" in p.stderr
    p = fails(pier("kill", "-a", "err"), 2)
    assert "kill needs the id of a job" in p.stderr
    p = fails(pier("log", "-a", "err", "-n", "zero"), 2)
    assert "-n needs a number" in p.stderr


def test_scale_input_is_checked_before_anything_changes(pier, cluster):
    ok(pier("create", "sc"))
    rel = cluster.api.release("sc", {"web": {"args": TICK}, "worker": {"args": TICK}})
    assert ok(pier("scale", "-a", "sc")).stdout == "web=0 worker=0\n"

    dead = f"http://127.0.0.1:{free_port()}"
    for arg, msg in (("web=-1", "cannot be negative"), ("web", "is not TYPE=COUNT"),
                     ("web=x", "must be a whole number"), ("w@b=1", "is not a process type"),
                     ("web=99999999", "must be a whole number")):
        # Refused before any request: the same answer with no controller.
        for url in (cluster.url, dead):
            p = fails(pier("scale", "-a", "sc", arg, env={"PIER_CONTROLLER_URL": url}), 2)
            assert msg in p.stderr, (arg, p.stderr)
    p = fails(pier("scale", "-a", "sc", "web=1", "web=2"), 2)
    assert "given twice" in p.stderr

    p = fails(pier("scale", "-a", "sc", "db=1"))
    assert 'the release has no process type "db"; it has web, worker' in p.stderr, p.stderr
    p = fails(pier("scale", "-a", "sc", "web-1"))
    assert "would leave -1 web processes" in p.stderr
    assert cluster.api.call("GET", f"/apps/sc/formations/{rel['id']}")[0] in (200, 404)
    assert ok(pier("scale", "-a", "sc")).stdout == "web=0 worker=0\n"

    # Without a scheduler the request is made but never completes: the
    # wait says what it waited for.
    p = fails(pier("scale", "-a", "sc", "--timeout", "2", "worker=1"))
    assert "scaling worker: 0=>1" in p.stdout
    assert "timed out after 2 s" in p.stderr and "worker: 0 of 1 up" in p.stderr, p.stderr
    assert "pierd scheduler" in p.stderr
    assert ok(pier("scale", "-a", "sc")).stdout == "web=0 worker=1\n"
    p = ok(pier("scale", "-a", "sc", "worker=1"))
    assert "nothing to do" in p.stdout


def test_events_show_what_happened(pier, cluster):
    ok(pier("create", "ev"))
    ok(pier("env", "-a", "ev", "set", "A=1"))
    rel = cluster.api.get("/apps/ev/release")["id"]
    out = ok(pier("events", "-a", "ev")).stdout
    lines = out.splitlines()
    assert any(re.search(rf"  release +{rel} +created: set A$", ln) for ln in lines), out
    assert any(re.search(r"  deployment +\S+ +complete$", ln) for ln in lines), out
    stamps = [ln.split()[0] for ln in lines]
    assert stamps == sorted(stamps), "events are printed oldest first"
    assert len(ok(pier("events", "-a", "ev", "-n", "1")).stdout.splitlines()) == 1

    # -f prints what happens after it started, too.
    proc = subprocess.Popen([str(pier.exe), "events", "-a", "ev", "-f", "-n", "1"],
                            env=pier.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=0)
    try:
        time.sleep(1)
        ok(pier("env", "-a", "ev", "set", "B=2"))
        new = cluster.api.get("/apps/ev/release")["id"]
        seen = read_lines(proc, lambda t: re.search(r"deployment +\S+ +complete\n(.|\n)*"
                                                    r"deployment +\S+ +complete\n", t))
        assert re.search(rf"  release +{new} +created: set B\n", seen), seen
        assert len(re.findall(r"  deployment +\S+ +complete\n", seen)) == 2, seen
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert not sanitizer_reports(err), err



# ---- --json: every listing prints the controller's objects ----

def as_json(p):
    """The stdout of a --json command, parsed; it is the indented form."""
    ok(p)
    assert p.stdout.startswith(("[\n", "{\n", "[]", "{}")), p.stdout
    return json.loads(p.stdout)


def test_every_listing_prints_the_controllers_objects_with_json(pier, cluster, tmp_path):
    api = cluster.api
    ok(pier("create", "js"))
    # Before any release: nothing, in the listing's shape.
    assert as_json(pier("env", "-a", "js", "--json")) == {}
    assert as_json(pier("releases", "-a", "js", "--json")) == []
    assert as_json(pier("ps", "--app", "js", "--json")) == []
    assert as_json(pier("info", "-a", "js", "--json")) == {
        "app": api.get("/apps/js"), "release": None, "formation": None,
        "routes": api.get("/apps/js/routes")}
    assert as_json(pier("apps", "--json")) == api.get("/apps")

    ok(pier("env", "-a", "js", "set", "ZED=z", "A=1"))
    ok(pier("env", "-a", "js", "set", "B=2"))
    assert as_json(pier("env", "-a", "js", "--json")) == env_of(cluster, "js") == \
        {"ZED": "z", "A": "1", "B": "2"}
    rels = as_json(pier("releases", "-a", "js", "--json"))
    assert sorted(rels, key=lambda r: r["id"]) == \
        sorted(api.get("/apps/js/releases"), key=lambda r: r["id"])
    assert len(rels) == 2 and rels[0]["created_at"] >= rels[1]["created_at"], "newest first"
    assert rels[0]["id"] == api.get("/apps/js")["release"]

    # events: the list oldest first, as /events has them.
    got = as_json(pier("events", "-a", "js", "--json"))
    want = sorted(api.get("/events?app_id=js&count=30"), key=lambda e: e["id"])
    assert got == want and any(e["object_type"] == "release" for e in got), got
    assert len(as_json(pier("events", "-a", "js", "-n", "1", "--json"))) == 1
    # events -f --json: one object a line, what happens after it started too.
    proc = subprocess.Popen([str(pier.exe), "events", "-a", "js", "-f", "-n", "1", "--json"],
                            env=pier.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=0)
    try:
        first = json.loads(read_lines(proc, lambda t: "\n" in t).splitlines()[0])
        assert first == want[-1], first
        ok(pier("env", "-a", "js", "set", "C=3"))
        new = api.get("/apps/js/release")["id"]
        seen = read_lines(proc, lambda t: f'"object_id":"{new}"' in t)
        objs = [json.loads(ln) for ln in seen.splitlines()]
        mine = [e for e in objs if e["object_type"] == "release" and e["object_id"] == new]
        assert len(mine) == 1 and all(e["id"] > first["id"] for e in objs[1:]), seen
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert not sanitizer_reports(err), err

    # scale: the formation's processes, as stored.
    rel = api.release("js", {"web": {"args": TICK}, "worker": {"args": TICK}},
                      env=env_of(cluster, "js"))["id"]
    status, body = api.call("PUT", f"/apps/js/formations/{rel}",
                            {"app": "js", "release": rel, "processes": {"web": 3, "worker": 0}})
    assert status == 200, body
    assert as_json(pier("scale", "-a", "js", "--json")) == \
        api.get(f"/apps/js/formations/{rel}")["processes"] == {"web": 3, "worker": 0}
    assert as_json(pier("info", "-a", "js", "--json")) == {
        "app": api.get("/apps/js"), "release": api.get("/apps/js/release"),
        "formation": api.get(f"/apps/js/formations/{rel}"),
        "routes": api.get("/apps/js/routes")}

    # cluster: the configured clusters, never their keys or CAs.
    cert = tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=ca",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(cert)],
                   check=True, capture_output=True)
    conf = {"PIER_CONFIG": str(tmp_path / "clusters.json")}
    assert as_json(pier("cluster", "--json", env=conf)) == []
    ok(pier("cluster", "add", "plain", "http://127.0.0.1:9", "secret-key-1", env=conf))
    ok(pier("cluster", "add", "-d", "prod", "https://ctl.example:8443", "secret-key-2",
            "--git-url", "https://git.example:8443", "--ca", str(cert), env=conf))
    ok(pier("cluster", "add", "sys", "https://other.example", "secret-key-3", env=conf))
    p = ok(pier("cluster", "list", "--json", env=conf))
    assert "secret-key" not in p.stdout and "BEGIN CERTIFICATE" not in p.stdout, p.stdout
    assert json.loads(p.stdout) == [
        {"name": "plain", "url": "http://127.0.0.1:9", "git_url": None, "default": False,
         "tls": "none"},
        {"name": "prod", "url": "https://ctl.example:8443", "git_url": "https://git.example:8443",
         "default": True, "tls": "pinned"},
        {"name": "sys", "url": "https://other.example", "git_url": None, "default": False,
         "tls": "system"}]
    assert ok(pier("cluster", "--json", env=conf)).stdout == p.stdout

    # --json is named in each command's help; a wrong flag stays an error
    # (and --json does not go with a change).
    for cmd in ("apps", "info", "ps", "scale", "env", "releases", "route", "events", "log",
                "keys", "cluster", "status", "host"):
        assert "--json" in ok(pier("help", cmd)).stdout, cmd
    for args in (["apps", "--jsonx"], ["info", "-a", "js", "--jsn"], ["ps", "--app", "js", "-j"],
                 ["scale", "-a", "js", "--yaml"], ["env", "-a", "js", "--json", "set", "X=1"],
                 ["env", "-a", "js", "set", "X=1", "--json"], ["releases", "-a", "js", "--jsonx"],
                 ["events", "-a", "js", "--jsonx"], ["log", "-a", "js", "--jsonx"],
                 ["scale", "-a", "js", "--json", "web=1"], ["cluster", "list", "--bogus"],
                 ["cluster", "--json", "extra"]):
        p = fails(pier(*args, env=conf), 2)
        assert p.stdout == "" and "see 'pier help" in p.stderr, (args, p.stderr)
    assert "X" not in env_of(cluster, "js")
    assert api.get(f"/apps/js/formations/{rel}")["processes"] == {"web": 3, "worker": 0}

# ---- jobs: run, scale, ps, kill, log ----

def one_offs_ended(api, app):
    """Whether every one-off job of app is over in the store: until then it
    still holds its memory on the host, and a 1 GiB one-off has no room on
    the 1.5 GiB agent of `jobs` (a loaded machine writes the state later)."""
    live = ("pending", "starting", "up", "stopping")
    return all(j.get("state") not in live for j in api.get(f"/apps/{app}/jobs")
               if j.get("type") != "web")


def test_run_passes_exit_status_stdio_and_env(pier, jobs):
    def run(*argv, **kw):
        wait_for("the earlier one-off jobs to end", lambda: one_offs_ended(jobs.api, "runner"))
        return pier("run", "-a", "runner", *argv, **kw)

    ok(pier("create", "runner"))
    jobs.api.release("runner", {"web": {"args": TICK, "resources": JOB_MEMORY}},
                     env={"FROM_RELEASE": "yes"})

    assert run("--", "sh", "-c", "exit 3").returncode == 3
    assert run("sh", "-c", "exit 0").returncode == 0

    p = run("--", "sh", "-c", "cat; echo to-stderr >&2; exit 7", input="line one\nline two\n")
    assert p.returncode == 7, p.stderr
    assert p.stdout == "line one\nline two\n"
    assert "to-stderr" in p.stderr and "to-stderr" not in p.stdout

    # stdin's end reaches the job even when there is no input.
    p = ok(run("--", "sh", "-c", "wc -c"))
    assert p.stdout.strip() == "0"

    # Bytes go through untouched, in both directions.
    blob = os.urandom(300 * 1024)
    p = run("--", "cat", input=blob, binary=True)
    assert p.returncode == 0 and p.stdout == blob, (p.returncode, len(p.stdout))

    p = ok(run("-e", "EXTRA=1", "--", "sh", "-c", 'echo "$FROM_RELEASE $EXTRA $PORT-"'))
    assert p.stdout.startswith("yes 1 "), p.stdout

    # SIGINT to pier reaches the job.
    wait_for("the earlier one-off jobs to end", lambda: one_offs_ended(jobs.api, "runner"))
    proc = subprocess.Popen([str(pier.exe), "run", "-a", "runner", "--", "sh", "-c",
                             'trap "echo got-int; exit 9" INT; echo ready; '
                             'while :; do sleep 0.1; done'],
                            env=pier.environ(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    try:
        seen = read_lines(proc, lambda t: "ready" in t)
        assert "ready" in seen, seen
        proc.send_signal(2)
        seen += read_lines(proc, lambda t: "got-int" in t)
        assert proc.wait(timeout=20) == 9
        assert "got-int" in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    assert not sanitizer_reports(err.decode(errors="replace")), err

    # -d: the job's id, and its output goes to the log.
    p = ok(run("-d", "--", "sh", "-c", "echo detached-$((6*7))"))
    job = p.stdout.strip()
    assert re.fullmatch(rf"{jobs.agent.id}-[0-9a-f-]{{36}}", job), p.stdout
    line = wait_for("the detached job's output in the log",
                    lambda: [ln for ln in ok(pier("log", "-a", "runner", "-j", job)).stdout
                             .splitlines() if "detached-42" in ln])[0]
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z app\[run\.{job}\]: "
                        r"detached-42", line), line
    # ps -a shows the one-off jobs that ended, with their status.
    out = ok(pier("ps", "-a", "-a", "runner")).stdout
    assert re.search(r"^\S+ +run +crashed \(7\) ", out, re.M), out


def spawn_in_pty(pier, argv, rows=30, cols=90):
    """Runs argv under a new pseudo-terminal of rows x cols; returns (pid, fd)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execve(argv[0], argv, pier.environ())
        finally:
            os._exit(127)
    return pid, fd


def read_until(fd, out, want, timeout=20):
    """Reads fd into out (a bytearray) until want is in it."""
    deadline = time.monotonic() + timeout
    while want not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {want!r} within {timeout}s; the terminal shows:\n{bytes(out)!r}",
                        pytrace=False)
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                pytest.fail(f"the terminal closed before {want!r}:\n{bytes(out)!r}",
                            pytrace=False)
            out += chunk


def test_run_is_interactive_under_a_terminal(pier, jobs, tmp_path):
    ok(pier("create", "tty"))
    jobs.api.release("tty", {"web": {"args": TICK, "resources": JOB_MEMORY}})
    # A shell around pier records the terminal's settings before and after,
    # so the test sees that raw mode is undone.
    script = ('stty -g > "$1/before"; "$0" run -a tty sh; rc=$?; '
              'stty -g > "$1/after"; exit $rc')
    pid, fd = spawn_in_pty(pier, ["/bin/sh", "-c", script, str(pier.exe), str(tmp_path)])
    out = bytearray()
    try:
        read_until(fd, out, b"$ ")
        os.write(fd, b"echo hello-$((6*7))\r")
        read_until(fd, out, b"hello-42")
        os.write(fd, b"echo T=$(tty)= S=$(stty size)=\r")
        read_until(fd, out, b"S=30 90=")
        assert re.search(rb"T=/dev/pts/\d+=", out), bytes(out)
        # A resized window reaches the job (SIGWINCH, then a resize frame).
        # pier handles the signal before the keys typed after it, and the
        # frames keep their order, so the shell sees the size first.
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        os.write(fd, b"echo R=$(stty size)=\r")
        read_until(fd, out, b"R=40 100=")
        os.write(fd, b"exit 5\r")
        _, status = os.waitpid(pid, 0)
        pid = None
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        try:
            while True:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                out += chunk
        except OSError:
            pass
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, bytes(out)
    assert not sanitizer_reports(out.decode(errors="replace")), bytes(out)
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()


def job_rows(pier, app, *flags):
    lines = ok(pier("ps", "--app", app, *flags)).stdout.splitlines()
    return [ln.split() for ln in lines[1:]]


def test_scale_ps_kill_and_log(pier, jobs):
    ok(pier("create", "svc"))
    rel = jobs.api.release("svc", {"web": {"args": TICK, "resources": JOB_MEMORY},
                                   "worker": {"args": TICK, "resources": JOB_MEMORY}})
    assert ok(pier("scale", "-a", "svc")).stdout == "web=0 worker=0\n"

    p = ok(pier("scale", "-a", "svc", "web=2", "worker=1"))
    assert "scaling web: 0=>2\n" in p.stdout and "scaling worker: 0=>1\n" in p.stdout, p.stdout
    up = set(re.findall(r"^web (\S+) up$", p.stdout, re.M))
    assert len(up) == 2, p.stdout
    assert re.search(r"^scale completed in \d+\.\ds$", p.stdout, re.M), p.stdout
    assert ok(pier("scale", "-a", "svc")).stdout == "web=2 worker=1\n"

    rows = job_rows(pier, "svc")
    assert sorted(r[1] for r in rows) == ["web", "web", "worker"], rows
    assert all(r[2] == "up" and r[5] == rel["id"][:8] for r in rows), rows
    assert {r[0] for r in rows if r[1] == "web"} == up
    assert all(" ".join(r[6:]) == " ".join(TICK) for r in rows), rows
    # ps --json: the jobs the table shows, as the controller has them.
    def live_jobs():
        return sorted((j for j in jobs.api.get("/apps/svc/jobs")
                       if j["state"] in ("pending", "starting", "up")), key=lambda j: j["id"])
    wait_for("ps --json to match the controller's jobs", lambda: sorted(
        as_json(pier("ps", "--app", "svc", "--json")), key=lambda j: j["id"]) == live_jobs())
    assert {j["id"] for j in as_json(pier("ps", "--app", "svc", "--json"))} == \
        {r[0] for r in rows}

    # Relative counts.
    p = ok(pier("scale", "-a", "svc", "worker+1"))
    assert "scaling worker: 1=>2" in p.stdout
    assert sorted(r[1] for r in job_rows(pier, "svc")) == ["web", "web", "worker", "worker"]

    # The log: the lines of the web jobs, in the contract's format.
    victim = sorted(up)[0]
    line_re = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z app\[(\w+)\.(\S+)\]: tick$")
    web_lines = wait_for("ticks of both web jobs in the log", lambda: (
        lambda ls: ls if {m.group(2) for m in map(line_re.match, ls) if m} == up else None)(
        ok(pier("log", "-a", "svc", "-t", "web")).stdout.splitlines()))
    assert all(line_re.match(ln) and line_re.match(ln).group(1) == "web" for ln in web_lines)
    only = ok(pier("log", "-a", "svc", "-j", victim, "-n", "2")).stdout.splitlines()
    # log --json: Flynn's log message objects, one a line.
    msgs = [json.loads(ln) for ln in
            ok(pier("log", "-a", "svc", "-t", "web", "-n", "4", "--json")).stdout.splitlines()]
    assert 1 <= len(msgs) <= 4, msgs
    for m in msgs:
        assert m["msg"] == "tick" and m["process_type"] == "web" and m["job_id"] in up, m
        assert m["stream"] == "stdout" and m["timestamp"], m
    assert 1 <= len(only) <= 2 and all(victim in ln for ln in only), only

    # log -f keeps printing.
    proc = subprocess.Popen([str(pier.exe), "log", "-a", "svc", "-f", "-j", victim, "-n", "1"],
                            env=pier.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=0)
    try:
        got = read_lines(proc, lambda t: t.count("\n") >= 3, timeout=15).splitlines()
        assert len(got) >= 3 and all(victim in ln for ln in got), got
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert not sanitizer_reports(err), err

    # kill: the job stops and the scheduler puts another in its place.
    assert ok(pier("kill", "-a", "svc", victim)).stdout == f"stopping job {victim}\n"
    wait_for("a replacement web job", lambda: (
        lambda ws: len(ws) == 2 and victim not in ws)(
        [r[0] for r in job_rows(pier, "svc") if r[1] == "web" and r[2] == "up"]))
    p = fails(pier("kill", "-a", "svc", "no-such-job"))
    assert 'no job "no-such-job" in app "svc"' in p.stderr
    assert any(r[0] == victim for r in job_rows(pier, "svc", "--all"))

    # More than the host can hold (1.5 GiB, 256 MiB a job) never completes:
    # the wait ends with what it still waits for.
    p = fails(pier("scale", "-a", "svc", "--timeout", "5", "web=12"))
    assert "scaling web: 2=>12" in p.stdout
    assert re.search(r"timed out after 5 s .*web: \d+ of 12 up", p.stderr), p.stderr

    p = ok(pier("scale", "-a", "svc", "web=0", "worker=0"))
    assert re.search(r"^web \S+ (stopping|down)$", p.stdout, re.M), p.stdout
    wait_for("no running jobs", lambda: job_rows(pier, "svc") == [])
    assert "no running jobs" in ok(pier("ps", "--app", "svc")).stderr


# ---- the wire, as a Flynn controller sees it ----

class FakeFlynn:
    """A loopback stand-in for a Flynn controller that answers `pier scale`
    and records every request, to check the CLI's side of the contract:
    headers, the exact scale body, and an event stream that sends a
    keep-alive, breaks, and must be resumed with Last-Event-Id."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.requests = []
        self.put_done = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status, body=None, ctype="application/json"):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def record(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                owner.requests.append((self.command, self.path, dict(self.headers), body))
                return body

            def sse(self, events, hold):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.flush()
                if hold:
                    owner.put_done.wait(10)
                for e in events:
                    self.wfile.write(b":\n")  # Flynn's keep-alive: no blank line
                    self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
                    self.wfile.flush()
                self.close_connection = True  # the stream ends: pier must resume

            def do_GET(self):
                self.record()
                if self.path == "/apps/demo/release":
                    return self.reply(200, {"id": "r1", "processes": {"web": {}, "db": {}}})
                if self.path == "/apps/demo/formations/r1":
                    return self.reply(200, {"app": "a1", "release": "r1",
                                            "processes": {"web": 1, "db": 1}})
                if self.path == "/events?app_id=demo&object_types=job,scale_request":
                    last = self.headers.get("Last-Event-Id")
                    if last == "0":
                        return self.sse([
                            {"id": 1, "object_type": "job", "data": {
                                "id": "h-j1", "type": "web", "state": "up", "release": "r1"}},
                            {"id": 2, "object_type": "job", "data": {
                                "id": "h-x", "type": "web", "state": "up", "release": "other"}},
                        ], hold=True)
                    if last == "2":
                        return self.sse([{"id": 3, "object_type": "scale_request", "data": {
                            "id": "sr1", "state": "complete"}}], hold=False)
                return self.reply(404)

            def do_PUT(self):
                self.record()
                if self.path == "/apps/demo/scale/r1":
                    self.reply(200, {"id": "sr1", "app": "a1", "release": "r1",
                                     "state": "pending", "old_processes": {"web": 1, "db": 1},
                                     "new_processes": {"web": 3, "db": 1}})
                    owner.put_done.set()
                    return
                self.reply(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_scale_speaks_flynns_wire(pier):
    fake = FakeFlynn()
    try:
        p = ok(pier("scale", "-a", "demo", "web=3", env={"PIER_CONTROLLER_URL": fake.url}))
    finally:
        fake.close()
    assert p.stdout == ("scaling web: 1=>3\nweb h-j1 up\n" +
                        re.search(r"scale completed in \d+\.\ds\n", p.stdout).group(0)), p.stdout
    auth = "Basic " + base64.b64encode(f":{KEY}".encode()).decode()
    for method, path, headers, _ in fake.requests:
        assert headers.get("Authorization") == auth, (method, path, headers)
        assert headers.get("Content-Type") == "application/json", (method, path, headers)
    # (the CLI's looks at the event list, /events?...&count= or &since_id=, aside)
    streams = [h for m, path, h, _ in fake.requests
               if path == "/events?app_id=demo&object_types=job,scale_request"]
    assert [h.get("Accept") for h in streams] == ["text/event-stream"] * 2
    assert [h.get("Last-Event-Id") for h in streams] == ["0", "2"]
    puts = [(path, body) for m, path, _, body in fake.requests if m == "PUT"]
    assert puts == [("/apps/demo/scale/r1", {
        "id": "", "app": "demo", "release": "r1", "state": "pending",
        "new_processes": {"web": 3, "db": 1}, "new_tags": {}, "created_at": None,
        "updated_at": None})], puts
    # The stream was open before the PUT went out.
    order = [(m, path) for m, path, _, _ in fake.requests]
    assert order.index(("GET", "/events?app_id=demo&object_types=job,scale_request")) < \
        order.index(("PUT", "/apps/demo/scale/r1"))
