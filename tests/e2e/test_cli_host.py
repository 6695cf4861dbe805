"""`pier host` and `pier stack` end to end, as an operator types them.

Hosts and jobs are written into a real `pierd store` the way `pierd host`
writes them (the etcd v3 JSON gateway), and `pier host list` / `pier host
jobs HOST` must show them. `pier stack build` makes a real Debian stack with
debootstrap from Debian's archive into a cache folder kept across runs
(first build about 30 s); its refusals are checked without any network."""

import base64
import json
import os
import re
import subprocess
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import STACK_CACHE, STACK_PACKAGES, free_port, sanitizer_reports, stack_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pier(pier_build, tmp_path):
    """Runs `pier ARGS` with its config in tmp_path and no store in the
    environment unless env gives one; returns the CompletedProcess.
    `prefix` runs it under another command (unshare ...)."""
    exe = pier_build / "pier"
    if not exe.exists():
        pytest.fail(f"{exe} has not been built", pytrace=False)

    def run(*args, env=None, timeout=30, prefix=(), user=None, cwd=None):
        e = dict(os.environ, PIER_CONFIG=str(tmp_path / "pier" / "config.json"),
                 HOME=str(tmp_path / "home"))
        for k in ("PIER_STORE", "PIER_CLUSTER", "PIER_CONTROLLER_URL", "PIER_CONTROLLER_KEY"):
            e.pop(k, None)
        e.update(env or {})
        p = subprocess.run([*prefix, str(exe), *args], env=e, capture_output=True, text=True,
                           timeout=timeout, cwd=cwd or tmp_path, user=user)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{p.stderr}"
        return p

    run.exe = exe
    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def put(store, key, value):
    """Writes key = value (a dict as JSON, or raw bytes/str) into the store."""
    raw = json.dumps(value) if isinstance(value, dict) else value
    req = urllib.request.Request(store + "/v3/kv/put", method="POST",
                                 data=json.dumps({"key": b64(key), "value": b64(raw)}).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def ago(seconds):
    """An RFC 3339 UTC time `seconds` ago, as the agent writes them."""
    t = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def host_record(hid, **over):
    rec = {"id": hid, "addr": f"10.0.0.{len(hid)}:1113", "ip": f"10.0.0.{len(hid)}",
           "tags": {}, "memory": {"total": 2 << 30, "allocated": 512 << 20},
           "cpu": {"total": 2000, "allocated": 500},
           "ports": {"lo": 20000, "hi": 20999, "free": 998}, "jobs": 2,
           "version": "0.1.0", "started_at": ago(3600), "heartbeat": ago(3)}
    rec.update(over)
    return rec


def job_record(hid, uuid, **over):
    rec = {"id": f"{hid}-{uuid}", "host_id": hid, "app": "web-api", "release": "r1",
           "type": "web", "desired_state": "up", "state": "up", "args": ["/bin/sh", "-c", "x"],
           "created_at": ago(600)}
    rec.update(over)
    return rec


def table(text):
    """A printed table as a list of rows of cells (columns are two or more
    spaces apart; a cell may hold single spaces)."""
    return [re.split(r" {2,}", line.rstrip()) for line in text.splitlines()]


# ---- help ----

def test_help_lists_host_and_stack(pier):
    p = ok(pier("help"))
    assert re.search(r"^  host +\S", p.stdout, re.M), p.stdout
    assert re.search(r"^  stack +\S", p.stdout, re.M), p.stdout
    h = ok(pier("help", "host")).stdout
    assert "pier host list [--json] [--store URL]" in h
    assert "pier host jobs HOST [--json] [--store URL]" in h
    assert "PIER_STORE" in h
    s = ok(pier("stack", "--help")).stdout
    assert "pier stack build DIR [--suite SUITE] [--mirror URL] [--packages P1,P2,...]" in s
    assert "pierd host --stack DIR" in s


# ---- where the store is ----

@pytest.mark.parametrize("args", [["host", "list"], ["host", "list", "--json"],
                                  ["host", "jobs", "h1"]])
def test_no_store_says_how_to_give_one(pier, args):
    p = pier(*args)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.splitlines()[0] == "pier: no store to read the hosts from"
    assert "pass --store URL or set PIER_STORE" in p.stderr


def test_store_down_names_it(pier):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["host", "list", "--store", url], ["host", "jobs", "h1", f"--store={url}"]):
        p = pier(*args)
        assert p.returncode == 1, p.stderr
        assert p.stdout == ""
        assert "connection refused" in p.stderr, p.stderr
        assert f"hint: is the store at {url} up? check --store or PIER_STORE" in p.stderr


def test_bad_store_url(pier):
    p = pier("host", "list", "--store", "127.0.0.1:7001")
    assert p.returncode == 1
    assert "127.0.0.1:7001" in p.stderr and "http://127.0.0.1:7001" in p.stderr, p.stderr


# ---- pier host list ----

def test_no_hosts_says_how_to_start_one(pier, pier_store):
    p = ok(pier("host", "list", env={"PIER_STORE": pier_store}))
    assert p.stdout == ""
    assert p.stderr == (f"no hosts in the store at {pier_store}; start one with "
                        f"'pierd host --store {pier_store} --data-dir DIR'\n")
    p = ok(pier("host", "list", "--json", env={"PIER_STORE": pier_store}))
    assert json.loads(p.stdout) == []


def test_host_list_table_and_json(pier, pier_store):
    h1 = host_record("h1", tags={"zone": "a", "disk": "ssd"}, heartbeat=ago(3))
    h2 = host_record("web2", memory={"total": 8 << 30, "allocated": 0},
                     cpu={"total": 4000, "allocated": 1500}, jobs=0,
                     ports={"lo": 30000, "hi": 30009, "free": 10}, heartbeat=ago(400))
    put(pier_store, "/pier/v1/hosts/web2", h2)
    put(pier_store, "/pier/v1/hosts/h1", h1)

    # --store wins over PIER_STORE, which is used when there is no flag.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    for args, env in ((["host", "list"], {"PIER_STORE": pier_store}),
                      (["host", "list", "--store", pier_store], {"PIER_STORE": elsewhere}),
                      ([f"--cluster=x", "host", "list", f"--store={pier_store}"], {})):
        p = ok(pier(*args, env=env))
        assert p.stderr == ""
        rows = table(p.stdout)
        assert rows[0] == ["ID", "ADDR", "JOBS", "MEMORY", "CPU", "PORTS FREE", "TAGS",
                           "HEARTBEAT"]
        assert rows[1][:7] == ["h1", "10.0.0.2:1113", "2", "512 MiB/2 GiB", "0.5/2", "998",
                               "zone=a,disk=ssd"]
        assert re.fullmatch(r"[345]s ago", rows[1][7]), rows[1]
        assert rows[2] == ["web2", "10.0.0.4:1113", "0", "0 B/8 GiB", "1.5/4", "10", "-",
                           "6m ago"]
        assert len(rows) == 3

    p = ok(pier("host", "list", "--json", env={"PIER_STORE": pier_store}))
    assert json.loads(p.stdout) == [h1, h2]


def test_host_list_survives_odd_records(pier, pier_store):
    """A record that is not JSON is skipped with a warning; missing fields
    show as '?' or '-', and control characters never reach the terminal."""
    put(pier_store, "/pier/v1/hosts/bad", "{not json")
    put(pier_store, "/pier/v1/hosts/bare", {"id": "bare"})
    put(pier_store, "/pier/v1/hosts/evil",
        host_record("evil", tags={"x": "\x1b[31mred\x1b[0m"}, addr="a\nb"))
    p = ok(pier("host", "list", "--store", pier_store))
    assert "pier: skipping /pier/v1/hosts/bad: not a JSON object" in p.stderr
    assert "\x1b" not in p.stdout
    rows = table(p.stdout)
    assert [r[0] for r in rows[1:]] == ["bare", "evil"]
    assert rows[1] == ["bare", "-", "0", "?/?", "?/?", "?", "-", "-"]
    assert rows[2][1] == "a?b" and rows[2][6] == "x=?[31mred?[0m"
    assert [h["id"] for h in json.loads(ok(pier("host", "list", "--json", "--store",
                                                pier_store)).stdout)] == ["bare", "evil"]


# ---- pier host jobs HOST ----

def test_host_jobs_table_and_json(pier, pier_store):
    put(pier_store, "/pier/v1/hosts/h1", host_record("h1"))
    jobs = [
        job_record("h1", "aaaa", created_at=ago(500), started_at=ago(30),
                   allocated_ports=[{"port": 20001, "proto": "tcp"},
                                    {"port": 20002, "proto": "udp"}],
                   args=["/app/bin/server", "--port", "20001"]),
        job_record("h1", "bbbb", created_at=ago(400), started_at=ago(300), desired_state="down",
                   allocated_ports=[20003], args=["python3", "-m", "http.server", "x" * 80]),
        job_record("h1", "cccc", created_at=ago(300), started_at=ago(200), state="crashed",
                   exit_status=2, finished_at=ago(100)),
        job_record("h1", "dddd", created_at=ago(200), state="failed",
                   host_error="stack /nope: no such directory"),
        job_record("h1", "eeee", created_at=ago(100), state="pending"),
    ]
    # stored in another order than created: the listing sorts by created_at
    for j in reversed(jobs):
        put(pier_store, f"/pier/v1/jobs/{j['id']}", j)
    # a job of host "h10" is not one of h1's
    put(pier_store, "/pier/v1/jobs/h10-ffff", job_record("h10", "ffff", created_at=ago(700)))

    p = ok(pier("host", "jobs", "h1", "--store", pier_store))
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    rows = table("\n".join(lines[:6]))
    assert rows[0] == ["ID", "STATE", "PORTS", "STARTED", "COMMAND"]
    assert rows[1][:3] == ["h1-aaaa", "up", "20001,20002/udp"]
    assert re.fullmatch(r"3[0-2]s ago", rows[1][3]), rows[1]
    assert rows[1][4] == "/app/bin/server --port 20001"
    assert rows[2][:4] == ["h1-bbbb", "up -> down", "20003", "5m ago"]
    assert rows[2][4].startswith("python3 -m http.server xxx") and rows[2][4].endswith("...")
    assert len(rows[2][4]) == 48
    assert rows[3][:4] == ["h1-cccc", "crashed (exit 2)", "-", "3m ago"]
    assert rows[4][:4] == ["h1-dddd", "failed", "-", "-"]
    assert rows[5][:4] == ["h1-eeee", "pending -> up", "-", "-"]
    assert lines[6:] == ["h1-dddd: error: stack /nope: no such directory"]

    p = ok(pier("host", "jobs", "--json", "h1", env={"PIER_STORE": pier_store}))
    assert json.loads(p.stdout) == jobs


def test_host_with_no_jobs(pier, pier_store):
    put(pier_store, "/pier/v1/hosts/idle", host_record("idle", jobs=0))
    p = ok(pier("host", "jobs", "idle", "--store", pier_store))
    assert p.stdout == ""
    assert p.stderr == 'host "idle" has no jobs\n'
    assert json.loads(ok(pier("host", "jobs", "idle", "--json", "--store",
                              pier_store)).stdout) == []


def test_jobs_of_a_host_without_record(pier, pier_store):
    """A host whose lease ran out still has job records: they are shown, with
    a note that the host itself is gone."""
    put(pier_store, "/pier/v1/jobs/gone-1234", job_record("gone", "1234", state="down",
                                                          exit_status=0))
    p = ok(pier("host", "jobs", "gone", "--store", pier_store))
    assert 'host "gone" has no record in the store' in p.stderr
    rows = table(p.stdout)
    assert rows[1][:2] == ["gone-1234", "down (exit 0)"]


def test_unknown_host(pier, pier_store):
    put(pier_store, "/pier/v1/hosts/h1", host_record("h1"))
    put(pier_store, "/pier/v1/jobs/h10-1", job_record("h10", "1"))
    for args in (["host", "jobs", "h"], ["host", "jobs", "h2", "--json"]):
        p = pier(*args, "--store", pier_store)
        assert p.returncode == 1
        assert p.stdout == ""
        assert f'pier: no host "{args[2]}" in the store at {pier_store}' in p.stderr
        assert "hint: 'pier host list' lists the hosts" in p.stderr


USAGE_ERRORS = [
    (["host"], "host needs a subcommand: list or jobs"),
    (["host", "frob"], 'unknown host subcommand "frob"'),
    (["host", "list", "extra"], "host list takes no arguments"),
    (["host", "list", "--bogus"], 'unknown option "--bogus" for host list'),
    (["host", "list", "--store"], "--store needs a URL"),
    (["host", "jobs"], "host jobs needs HOST"),
    (["host", "jobs", "a", "b"], "host jobs takes one HOST"),
    (["host", "jobs", "H1"], 'host id "H1" is not valid: 1 to 24 lowercase letters and digits'),
    (["host", "jobs", "a-b"], 'host id "a-b" is not valid'),
    (["host", "jobs", "a/b"], 'host id "a/b" is not valid'),
    (["host", "jobs", "--", ""], 'host id "" is not valid'),
    (["host", "jobs", "x" * 25], "is not valid"),
    (["host", "jobs", "a\x1bb"], 'host id "a?b" is not valid'),
    (["stack"], "stack needs a subcommand: build"),
    (["stack", "frob"], 'unknown stack subcommand "frob"'),
    (["stack", "build"], "stack build needs DIR"),
    (["stack", "build", "a", "b"], "stack build takes one DIR"),
    (["stack", "build", "d", "--bogus"], 'unknown option "--bogus" for stack build'),
    (["stack", "build", "d", "--suite"], "--suite needs a value"),
    (["stack", "build", "d", "--suite", "Book worm"], 'suite "Book worm" is not valid'),
    (["stack", "build", "d", "--suite=../x"], 'suite "../x" is not valid'),
    (["stack", "build", "d", "--mirror", "deb.debian.org"], "must be an http://, https://"),
    (["stack", "build", "d", "--mirror", "http://x y"], "must be an http://, https://"),
    (["stack", "build", "d", "--packages", "git,Bad"], 'package name "Bad" is not valid'),
    (["stack", "build", "d", "--packages", "git;rm"], 'package name "git;rm" is not valid'),
    (["stack", "build", "d", "--packages=-y"], 'package name "-y" is not valid'),
]


@pytest.mark.parametrize("args,message", USAGE_ERRORS,
                         ids=[" ".join(a)[:40] for a, _ in USAGE_ERRORS])
def test_usage_errors_exit_2(pier, tmp_path, args, message):
    p = pier(*args, env={"PIER_STORE": f"http://127.0.0.1:{free_port()}"})
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    first = p.stderr.splitlines()[0]
    assert first.startswith("pier: ") and message in first, p.stderr
    assert re.search(r"see 'pier help (host|stack)'$", p.stderr.splitlines()[-1]), p.stderr
    assert not (tmp_path / "d").exists()


# ---- pier stack build: refusals (no network) ----

def test_stack_refuses_a_folder_in_use(pier, tmp_path):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    p = pier("stack", "build", str(d))
    assert p.returncode == 1
    assert p.stderr.splitlines()[0] == \
        f"pier: {d} is not empty and not a finished stack (no {d}/etc/pier-stack)"
    assert f"remove it with 'rm -rf {d}'" in p.stderr
    assert sorted(x.name for x in d.iterdir()) == ["keep.txt"]

    f = tmp_path / "file"
    f.write_text("x")
    p = pier("stack", "build", "file")  # relative to the working folder
    assert p.returncode == 1
    assert f"pier: {f} is not a folder" in p.stderr


def test_stack_refuses_a_broken_marker(pier, tmp_path):
    d = tmp_path / "s"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "pier-stack").write_text("suite=bookworm\n")
    p = pier("stack", "build", str(d) + "/")
    assert p.returncode == 1
    assert f"pier: {d}/etc/pier-stack is not a pier stack marker" in p.stderr
    assert f"rm -rf {d}'" in p.stderr


def test_stack_already_built_and_what_it_holds(pier, tmp_path):
    d = tmp_path / "s"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "pier-stack").write_text(json.dumps(
        {"suite": "bookworm", "mirror": "http://deb.debian.org/debian",
         "packages": ["git", "ca-certificates"], "built_at": "2025-05-20T10:00:00Z",
         "pier_version": "0.1.0"}))
    for extra in ([], ["--suite", "bookworm"], ["--packages", "git"],
                  ["--packages=ca-certificates,git"]):
        p = ok(pier("stack", "build", str(d), *extra))
        assert p.stdout.splitlines() == [
            f"{d} is already built (bookworm, built 2025-05-20T10:00:00Z, packages "
            "git,ca-certificates)",
            "run jobs on it with:",
            f"  pierd host --stack {d} --store URL --data-dir DIR"]
    p = pier("stack", "build", str(d), "--suite", "trixie")
    assert p.returncode == 1
    assert f"pier: {d} is already a bookworm stack, not trixie" in p.stderr
    p = pier("stack", "build", str(d), "--packages", "git,nodejs,npm")
    assert p.returncode == 1
    assert f"pier: {d} is already a stack, built without nodejs,npm" in p.stderr
    assert "build it in another folder, or remove this one first" in p.stderr


def test_stack_needs_root(pier, tmp_path):
    # nobody may reach the binary but not tmp_path: the folder is elsewhere
    p = pier("stack", "build", f"/tmp/pier-test-nonroot-{os.getpid()}", user=65534, cwd="/")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        "pier: stack build must run as root (debootstrap and chroot need it)",
        "  hint: run it as root, e.g. 'sudo pier stack build DIR'"]
    assert not Path(f"/tmp/pier-test-nonroot-{os.getpid()}").exists()


def test_stack_needs_debootstrap(pier, tmp_path):
    """With /usr/sbin (and so /sbin) hidden under an empty tmpfs in a mount
    namespace of its own, debootstrap is nowhere."""
    d = tmp_path / "s"
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs none /usr/sbin && exec "$@"', "sh"]
    p = pier("stack", "build", str(d), prefix=hide, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        'pier: debootstrap is not installed (Debian package "debootstrap")',
        "  hint: install it with 'apt-get install debootstrap'"]
    assert not d.exists()


def sources_ns(tmp_path, files):
    """A command prefix that runs pier with /etc/apt replaced by a folder
    holding files (name -> text), in a mount namespace of its own."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind {apt} /etc/apt && exec "$@"', "sh"]


@pytest.mark.parametrize("files,mirror", [
    ({"sources.list": "# a comment\n"
                      "deb http://apt.example/debian-security bookworm-security main\n"
                      "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm "
                      "main\n"},
     "http://mirror.example/debian"),
    ({"sources.list.d/debian.sources":
      "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
      "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
      "Types: deb\n# a comment\nURIs: http://sec.example/debian-security\n"
      "Suites: bookworm-security\n\n"
      "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
      "Components: main\n"},
     "http://mirror.example/debian"),
    ({"sources.list": "deb https://packages.example/apt cloud-sdk-bookworm main\n"},
     "http://deb.debian.org/debian"),
    ({}, "http://deb.debian.org/debian"),
])
def test_stack_mirror_comes_from_apt(pier, tmp_path, files, mirror):
    """The mirror is the host's Debian archive; mirror.example does not
    resolve, so debootstrap fails at once, and the half-built folder it
    leaves is then refused."""
    d = tmp_path / "s"
    env = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    p = pier("stack", "build", str(d), prefix=sources_ns(tmp_path, files), env=env)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == f"==> building a bookworm stack in {d} from {mirror} " \
                       "(debootstrap, about 200 MB)"
    assert any(ln.startswith("    debootstrap: E: ") for ln in lines), p.stderr
    assert "pier: debootstrap failed (exit 1)" in p.stderr
    assert f"remove the half-built {d} with 'rm -rf {d}'" in p.stderr
    assert not (d / "etc" / "pier-stack").exists()
    p = pier("stack", "build", str(d))
    assert p.returncode == 1
    assert "is not empty and not a finished stack" in p.stderr


def test_stack_explicit_mirror_and_suite(pier, tmp_path):
    d = tmp_path / "s"
    p = pier("stack", "build", str(d), "--suite", "trixie", "--mirror",
             f"file://{tmp_path}/nothing/debian")
    assert p.returncode == 1
    assert p.stderr.splitlines()[0] == \
        f"==> building a trixie stack in {d} from file://{tmp_path}/nothing/debian " \
        "(debootstrap, about 200 MB)"
    assert "pier: debootstrap failed (exit 1)" in p.stderr


# ---- pier stack build: a real stack ----

def test_stack_build_real(pier):
    """Builds the stack once per machine (reused afterwards: the marker says
    it is finished), then checks what is in it and that building again is
    a no-op. Under stack_lock(): another pytest-xdist worker's built_stack
    fixture builds the same folder."""
    with stack_lock():
        stack_build_real(pier)


def stack_build_real(pier):
    d = STACK_CACHE
    marker = d / "etc" / "pier-stack"
    if d.exists() and not marker.exists():
        # a build of ours cut short: start over (never cross into a mount)
        subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=True)
    if not marker.exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        p = ok(pier("stack", "build", str(d), "--packages", STACK_PACKAGES, timeout=900))
        err = p.stderr.splitlines()
        assert err[0].startswith(f"==> building a bookworm stack in {d} from http")
        assert any(ln.startswith("    debootstrap: I: Base system installed successfully")
                   for ln in err), p.stderr
        assert "==> installing 1 package in the stack" in err
        assert any(ln.startswith("    apt: ") and "ca-certificates" in ln for ln in err)
        out = p.stdout.splitlines()
        assert re.fullmatch(rf"stack ready: {d} \(bookworm, \d+ MB\)", out[0]), p.stdout
        assert out[1:] == ["run jobs on it with:",
                           f"  pierd host --stack {d} --store URL --data-dir DIR"]
        assert (d / "etc/ssl/certs/ca-certificates.crt").exists()
        assert json.loads(marker.read_text())["packages"] == [STACK_PACKAGES]

    m = json.loads(marker.read_text())
    assert m["suite"] == "bookworm"
    assert m["mirror"].startswith("http")
    version = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text()).group(1)
    assert m["pier_version"] == version
    assert datetime.strptime(m["built_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert (d / "app").is_dir() and not any((d / "app").iterdir())
    assert (d / "bin" / "sh").exists() and (d / "usr" / "bin" / "apt-get").exists()
    # nothing was left mounted in it, and no policy-rc.d left behind
    assert not os.path.ismount(d / "proc") and not any((d / "proc").iterdir())
    assert not (d / "usr" / "sbin" / "policy-rc.d").exists()
    with open("/proc/self/mountinfo") as f:
        assert str(d) not in f.read()
    # the stack runs programs
    r = subprocess.run(["chroot", str(d), "/bin/sh", "-c", "echo ok; cat /etc/debian_version"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("ok\n12."), r

    p = ok(pier("stack", "build", str(d)))
    assert p.stdout.splitlines()[0].startswith(f"{d} is already built (bookworm, built ")
    assert f"pierd host --stack {d}" in p.stdout
    assert p.stderr == ""
