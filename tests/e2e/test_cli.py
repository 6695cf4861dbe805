"""The `pier` CLI end to end, as a user types it: read the help, add and
remove clusters in a config file of one's own, and ask a real cluster (a
`pierd discoverd` with a key) whether it is up. Wrong input is refused with a
message that says what to do, exit status 2 for usage and 1 for failures,
and it leaves the config file exactly as it was."""

import base64
import json
import os
import re
import stat
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port, http_status, sanitizer_reports

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pier(pier_build, tmp_path):
    """A function that runs `pier ARGS` with its config in tmp_path and
    returns the CompletedProcess; env entries set to None are removed."""
    exe = pier_build / "pier"
    if not exe.exists():
        pytest.fail(f"{exe} has not been built", pytrace=False)
    config = tmp_path / "pier" / "config.json"

    def run(*args, env=None):
        e = dict(os.environ, PIER_CONFIG=str(config), HOME=str(tmp_path / "home"))
        for k in ("PIER_CLUSTER", "PIER_CONTROLLER_URL", "PIER_CONTROLLER_KEY",
                  "XDG_CONFIG_HOME"):
            e.pop(k, None)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        p = subprocess.run([str(exe), *args], env=e, capture_output=True, text=True,
                           timeout=30, cwd=tmp_path)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{p.stderr}"
        return p

    run.config = config
    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def clusters(pier):
    """The config file as the CLI wrote it."""
    return json.loads(pier.config.read_text())


class FakeController:
    """A loopback HTTP server that answers every GET with `status` and
    remembers the path and Authorization header of each request."""

    def __init__(self, status=200):
        self.status = status
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Authorization")))
                body = b'{"status":"ok"}' if owner.status == 200 else b'{"error":"no"}'
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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


@pytest.fixture
def fake_controller():
    f = FakeController()
    yield f
    f.close()


def basic(key):
    return "Basic " + base64.b64encode(f":{key}".encode()).decode()


# ---- help and version ----

def test_help_lists_every_command(pier):
    for args in (["--help"], ["-h"], ["help"]):
        p = ok(pier(*args))
        assert p.stdout.startswith("usage: pier [-c CLUSTER] COMMAND [ARGS]\n"), p.stdout
        for cmd in ("cluster", "status", "version", "help"):
            assert re.search(rf"^  {cmd} +\S", p.stdout, re.M), f"{cmd} missing:\n{p.stdout}"
        assert "PIER_CONTROLLER_URL" in p.stdout
        assert p.stderr == ""


def test_help_for_one_command(pier):
    p = ok(pier("help", "cluster"))
    assert p.stdout.splitlines()[0] == "list, add and remove clusters this CLI talks to"
    for line in ("pier cluster add [-d] NAME URL KEY", "pier cluster remove NAME",
                 "pier cluster default [NAME]"):
        assert line in p.stdout
    # `pier cluster --help` is the same text, and touches no config file.
    assert ok(pier("cluster", "--help")).stdout == p.stdout
    assert ok(pier("status", "-h")).stdout == ok(pier("help", "status")).stdout
    assert not pier.config.exists()


def test_version(pier):
    m = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text())
    assert m, "meson.build has no project version"
    assert ok(pier("version")).stdout == f"pier {m.group(1)}\n"
    assert ok(pier("--version")).stdout == f"pier {m.group(1)}\n"


def test_no_command_prints_usage_to_stderr(pier):
    p = pier()
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith("usage: pier ")


# ---- clusters ----

def test_add_list_default_remove(pier):
    p = ok(pier("cluster"))
    assert p.stdout == ""
    assert "no clusters yet; add one with 'pier cluster add NAME URL KEY'" in p.stderr
    assert not pier.config.exists(), "listing must not create the config"

    # The first cluster becomes the default; the file holds keys, so 0600.
    assert ok(pier("cluster", "add", "prod", "https://prod.example:8443", "k1")).stdout == \
        'cluster "prod" added (default)\n'
    assert stat.S_IMODE(pier.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(pier.config.parent.stat().st_mode) == 0o700
    assert clusters(pier) == {
        "default": "prod",
        "clusters": [{"name": "prod", "url": "https://prod.example:8443", "key": "k1"}]}

    # A later one is not the default unless -d says so.
    assert ok(pier("cluster", "add", "stage", "http://127.0.0.1:1", "k2")).stdout == \
        'cluster "stage" added\n'
    assert clusters(pier)["default"] == "prod"
    assert ok(pier("cluster", "add", "-d", "dev.local", "http://127.0.0.1:2", "k3")).stdout == \
        'cluster "dev.local" added (default)\n'
    assert ok(pier("cluster", "add", "--default", "qa_1", "http://127.0.0.1:3", "k4")).stdout == \
        'cluster "qa_1" added (default)\n'
    assert [c["name"] for c in clusters(pier)["clusters"]] == ["prod", "stage", "dev.local",
                                                               "qa_1"]
    assert stat.S_IMODE(pier.config.stat().st_mode) == 0o600

    lines = ok(pier("cluster")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL"]
    rows = {ln[2:].split()[0]: (ln[:2].strip(), ln[2:].split()[1]) for ln in lines[1:]}
    assert rows == {"prod": ("", "https://prod.example:8443"), "stage": ("", "http://127.0.0.1:1"),
                    "dev.local": ("", "http://127.0.0.1:2"), "qa_1": ("*", "http://127.0.0.1:3")}

    assert ok(pier("cluster", "default")).stdout == "qa_1\n"
    assert ok(pier("cluster", "default", "stage")).stdout == 'default cluster is now "stage"\n'
    assert ok(pier("cluster", "default")).stdout == "stage\n"
    assert clusters(pier)["default"] == "stage"

    # Removing another cluster keeps the default; removing the default clears it.
    assert ok(pier("cluster", "remove", "prod")).stdout == 'cluster "prod" removed\n'
    assert clusters(pier)["default"] == "stage"
    assert ok(pier("cluster", "remove", "stage")).stdout == 'cluster "stage" removed\n'
    assert "default" not in clusters(pier)
    assert [c["name"] for c in clusters(pier)["clusters"]] == ["dev.local", "qa_1"]
    p = pier("cluster", "default")
    assert p.returncode == 1
    assert "pier: no default cluster" in p.stderr
    assert "pier cluster default NAME" in p.stderr
    assert "*" not in ok(pier("cluster")).stdout

    # With clusters but no default, status says how to pick one.
    p = pier("status")
    assert p.returncode == 1
    assert "no default cluster; pick one with 'pier cluster default NAME' or -c NAME" in p.stderr

    # The next added cluster becomes the default again.
    assert ok(pier("cluster", "add", "x", "http://127.0.0.1:4", "k")).stdout == \
        'cluster "x" added (default)\n'
    for name in ("dev.local", "qa_1", "x"):
        ok(pier("cluster", "remove", name))
    assert clusters(pier) == {"clusters": []}
    assert "no clusters yet" in ok(pier("cluster")).stderr


def test_config_location_falls_back_to_xdg_then_home(pier, tmp_path):
    xdg = tmp_path / "xdg"
    ok(pier("cluster", "add", "a", "http://127.0.0.1:1", "k",
            env={"PIER_CONFIG": None, "XDG_CONFIG_HOME": str(xdg)}))
    assert json.loads((xdg / "pier" / "config.json").read_text())["default"] == "a"
    ok(pier("cluster", "add", "b", "http://127.0.0.1:1", "k", env={"PIER_CONFIG": None}))
    home_cfg = tmp_path / "home" / ".config" / "pier" / "config.json"
    assert json.loads(home_cfg.read_text())["default"] == "b"
    assert stat.S_IMODE(home_cfg.stat().st_mode) == 0o600
    assert not pier.config.exists()


USAGE_ERRORS = [
    (["nosuch"], "unknown command \"nosuch\""),
    (["--bogus", "status"], "unknown option \"--bogus\""),
    (["-c"], "-c needs a cluster name"),
    (["help", "nosuch"], "unknown command \"nosuch\""),
    (["status", "now"], "status takes no arguments"),
    (["cluster", "frob"], "unknown cluster subcommand \"frob\""),
    (["cluster", "add", "a", "http://127.0.0.1:1"], "cluster add needs NAME URL KEY"),
    (["cluster", "add", "a", "http://127.0.0.1:1", "k", "x"], "cluster add needs NAME URL KEY"),
    (["cluster", "add", "-d"], "cluster add needs NAME URL KEY"),
    (["cluster", "add", "has space", "http://x", "k"], "cluster name \"has space\" may hold only"),
    (["cluster", "add", "a/b", "http://x", "k"], "cluster name \"a/b\" may hold only"),
    (["cluster", "add", "", "http://x", "k"], "cluster name \"\" may hold only"),
    (["cluster", "add", "n" * 64, "http://x", "k"], "(at most 63)"),
    (["cluster", "add", "a", "ftp://x", "k"], "URL \"ftp://x\" must start with http:// or https://"),
    (["cluster", "add", "a", "127.0.0.1:1111", "k"], "URL \"127.0.0.1:1111\" must start with"),
    # A bad name is refused even when it is also a duplicate of nothing valid.
    (["cluster", "add", "prod", "prod.example", "k"], "must start with http:// or https://"),
    (["cluster", "remove"], "cluster remove needs NAME"),
    (["cluster", "remove", "prod", "other"], "cluster remove needs NAME"),
    (["cluster", "default", "prod", "other"], "cluster default takes one NAME"),
]


@pytest.mark.parametrize("args,message", USAGE_ERRORS,
                         ids=[" ".join(a)[:40] or "empty" for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2_and_change_nothing(pier, args, message):
    ok(pier("cluster", "add", "prod", "http://127.0.0.1:1", "k"))
    before = pier.config.read_bytes()
    p = pier(*args)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    first = p.stderr.splitlines()[0]
    assert first.startswith("pier: ") and message in first, p.stderr
    assert re.search(r"see 'pier help( \w+)?'$", p.stderr.splitlines()[-1]), p.stderr
    assert pier.config.read_bytes() == before
    assert sorted(x.name for x in pier.config.parent.iterdir()) == ["config.json"]


def test_failures_exit_1_and_change_nothing(pier):
    ok(pier("cluster", "add", "prod", "http://127.0.0.1:1", "k"))
    ok(pier("cluster", "add", "stage", "http://127.0.0.1:2", "k"))
    before = pier.config.read_bytes()
    cases = [
        (["cluster", "add", "prod", "http://other:1", "k2"],
         'pier: a cluster named "prod" already exists',
         "remove it first with 'pier cluster remove NAME'"),
        (["cluster", "add", "-d", "stage", "http://other:1", "k2"],
         'pier: a cluster named "stage" already exists', "pick another name"),
        (["cluster", "remove", "nope"], 'pier: no cluster named "nope"', "'pier cluster' lists"),
        (["cluster", "default", "nope"], 'pier: no cluster named "nope"', "'pier cluster' lists"),
        (["-c", "nope", "status"], f'no cluster named "nope" in {pier.config}', "lists them"),
    ]
    for args, message, hint in cases:
        p = pier(*args)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stdout == ""
        assert message in p.stderr and hint in p.stderr, (args, p.stderr)
        assert pier.config.read_bytes() == before, args
    assert sorted(x.name for x in pier.config.parent.iterdir()) == ["config.json"]


@pytest.mark.parametrize("text,problem", [
    ("{not json", None),
    ("", None),
    ('{"clusters": {}}', 'needs a "clusters" array'),
    ('["prod"]', 'needs a "clusters" array'),
    ('{"clusters": [], "clusters": []}', "duplicate"),
])
def test_corrupt_config_names_the_file(pier, text, problem):
    pier.config.parent.mkdir(parents=True)
    pier.config.write_text(text)
    for args in (["cluster"], ["cluster", "add", "a", "http://127.0.0.1:1", "k"],
                 ["cluster", "remove", "a"], ["status"]):
        p = pier(*args)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stdout == ""
        assert f"pier: {pier.config} is not a valid pier config (" in p.stderr, p.stderr
        assert "fix or remove it" in p.stderr
        if problem:
            assert problem in p.stderr, p.stderr
        assert pier.config.read_text() == text


def test_unreadable_config_path(pier, tmp_path):
    """A config path whose folder is a file cannot be written; the message
    names the path and nothing is left behind."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cfg = blocker / "config.json"
    p = pier("cluster", "add", "a", "http://127.0.0.1:1", "k", env={"PIER_CONFIG": str(cfg)})
    assert p.returncode == 1
    assert str(cfg) in p.stderr, p.stderr
    assert blocker.read_text() == ""


# ---- status ----

def test_status_without_a_cluster_says_how_to_add_one(pier):
    p = pier("status")
    assert p.returncode == 1
    assert p.stdout == ""
    assert "pier: no cluster is configured; add one with 'pier cluster add NAME URL KEY'" in \
        p.stderr
    assert not pier.config.exists()


def test_status_when_nothing_listens(pier):
    url = f"http://127.0.0.1:{free_port()}"
    ok(pier("cluster", "add", "down", url, "k"))
    p = pier("status")
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith(f"pier: {url}: "), p.stderr
    assert "refused" in p.stderr
    assert "  hint: is the cluster up? 'pier up' starts one on this machine" in p.stderr


def test_status_against_discoverd(pier, start_pierd, pier_store):
    d = start_pierd("discoverd", args=["--store", pier_store, "--key", "k"])
    # The key is what guards discoverd's API: the right one is let in.
    instances = d.url + "/services/web/instances"
    assert http_status(instances) == 401
    req = urllib.request.Request(instances, headers={"Authorization": basic("k")})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200

    ok(pier("cluster", "add", "local", d.url, "k"))
    p = ok(pier("status"))
    assert p.stdout == f"{d.url}: healthy\n"
    assert p.stderr == ""
    # Chosen by name, by $PIER_CLUSTER, or by the URL in the environment.
    ok(pier("cluster", "add", "down", f"http://127.0.0.1:{free_port()}", "k"))
    assert ok(pier("-c", "local", "status")).stdout == f"{d.url}: healthy\n"
    assert ok(pier("--cluster=local", "status")).stdout == f"{d.url}: healthy\n"
    assert pier("-c", "down", "status").returncode == 1
    assert pier("status", env={"PIER_CLUSTER": "down"}).returncode == 1
    assert ok(pier("status", env={"PIER_CLUSTER": "local"})).stdout == f"{d.url}: healthy\n"

    # Once discoverd stops, status says so.
    d.stop()
    p = pier("-c", "local", "status")
    assert p.returncode == 1
    assert p.stderr.startswith(f"pier: {d.url}: "), p.stderr


def test_status_with_a_wrong_key_says_so(pier, start_pierd, pier_store):
    """The status route is public, but a key that is presented must be
    right, so status tells a wrong key from a healthy cluster."""
    d = start_pierd("discoverd", args=["--store", pier_store, "--key", "k"])
    ok(pier("cluster", "add", "local", d.url, "not-the-key"))
    p = pier("status")
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        f"pier: {d.url} refused the key (401)",
        "  hint: check the key: 'pier cluster' shows which cluster is used"]
    # An empty key is a wrong key too; the right one from the environment works.
    ok(pier("cluster", "add", "nokey", d.url, ""))
    assert "refused the key (401)" in pier("-c", "nokey", "status").stderr
    env = {"PIER_CONTROLLER_URL": d.url, "PIER_CONTROLLER_KEY": "k"}
    assert ok(pier("status", env=env)).stdout == f"{d.url}: healthy\n"
    assert json.loads(pier.config.read_text())["clusters"][0]["key"] == "not-the-key"


def test_status_sends_the_key_and_reports_refusal(pier, fake_controller):
    f = fake_controller
    ok(pier("cluster", "add", "fake", f.url, "s3cret"))
    p = ok(pier("status"))
    assert p.stdout == f"{f.url}: healthy\n"
    # (then GET /apps, for the system apps: every request with the key)
    assert f.requests[0] == ("/.well-known/status", basic("s3cret"))
    assert all(auth == basic("s3cret") for _, auth in f.requests), f.requests

    f.status = 401
    p = pier("status")
    assert p.returncode == 1
    assert p.stdout == ""
    assert f"pier: {f.url} refused the key (401)" in p.stderr
    assert "hint: check the key" in p.stderr

    f.status = 503
    p = pier("status")
    assert p.returncode == 1
    assert p.stdout == ""
    assert f"pier: {f.url} answered 503" in p.stderr


def test_environment_overrides_the_config(pier, fake_controller):
    f = fake_controller
    down = f"http://127.0.0.1:{free_port()}"
    ok(pier("cluster", "add", "down", down, "file-key"))

    # PIER_CONTROLLER_URL replaces the default cluster, with the env key.
    p = ok(pier("status", env={"PIER_CONTROLLER_URL": f.url, "PIER_CONTROLLER_KEY": "env-key"}))
    assert p.stdout == f"{f.url}: healthy\n"
    assert f.requests[-1][1] == basic("env-key")
    # ... with an empty key when none is given.
    ok(pier("status", env={"PIER_CONTROLLER_URL": f.url}))
    assert f.requests[-1][1] == basic("")
    # ... and needs no config file at all.
    ok(pier("status", env={"PIER_CONTROLLER_URL": f.url,
                           "PIER_CONFIG": str(pier.config) + ".absent"}))

    # PIER_CONTROLLER_KEY goes with PIER_CONTROLLER_URL only: it never
    # replaces the key of a cluster from the file (it could be another's).
    ok(pier("cluster", "add", "fake", f.url, "file-key"))
    ok(pier("-c", "fake", "status"))
    assert f.requests[-1][1] == basic("file-key")
    ok(pier("-c", "fake", "status", env={"PIER_CONTROLLER_KEY": "env-key"}))
    assert f.requests[-1][1] == basic("file-key")

    # An explicit -c wins over PIER_CONTROLLER_URL.
    p = pier("-c", "down", "status", env={"PIER_CONTROLLER_URL": f.url})
    assert p.returncode == 1
    assert p.stderr.startswith(f"pier: {down}: "), p.stderr
