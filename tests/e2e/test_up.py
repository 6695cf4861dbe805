"""`make up`'s script end to end: `scripts/up BUILD_DIR` makes the cluster
key once ($PIER_HOME/key, 0600), starts the store, discoverd, the host
agent, the scheduler and the controller in the background with their PIDs
and logs under $PIER_HOME, says where they are and how to use them (a CLI
workflow that really deploys and runs an app), leaves running daemons
alone when run again, restarts what died, and `scripts/up --stop` stops
them (controller first, store last), saying so when jobs keep running.

The daemons and jobs outlive the script, so nothing else stops them for us:
every test stops whatever the PID files (and what the script printed) name,
and kills the shims and containers of the jobs it ran, in a finally block,
also when it fails. This process is made their child subreaper and reaps
them, as init would, so a stopped daemon does not linger as a zombie that
`kill -0` still sees. The host agent runs real crun containers: as root."""

import base64
import ctypes
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import CRUN, free_port, free_port_range, http_status, sanitizer_reports

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "scripts" / "up"
PR_SET_CHILD_SUBREAPER = 36
NAMES = ("store", "discoverd", "host", "scheduler", "controller", "router")
STOP_ORDER = ("router", "controller", "scheduler", "host", "discoverd", "store")
# Under load (other tests, benchmarks with many containers) a sanitizer
# build is slow: waits are generous, what they wait for is exact.
WAIT = 60


def alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


class Up:
    """One $PIER_HOME with its own ports, and the daemons started there."""

    def __init__(self, build, home):
        self.build = build
        self.home = home
        self.addrs = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
        self.urls = {name: f"http://{addr}" for name, addr in self.addrs.items()}
        self.store_url = self.urls["store"]
        self.discoverd_url = self.urls["discoverd"]
        self.host_url = self.urls["host"]
        self.scheduler_url = self.urls["scheduler"]
        self.controller_url = self.urls["controller"]
        self.ports = free_port_range()  # the jobs' ports, apart from other tests'
        self.http_port = free_port()  # the router's HTTP listener
        self.domain = "up-test.localhost"
        self.env = dict(os.environ, PIER_HOME=str(home), PIER_HOST_PORTS="%d-%d" % self.ports,
                        PIER_ROUTER_HTTP=f"127.0.0.1:{self.http_port}", PIER_DOMAIN=self.domain,
                        UBSAN_OPTIONS="print_stacktrace=1")
        for name, addr in self.addrs.items():
            self.env[f"PIER_{name.upper()}_LISTEN"] = addr
        # A key in the caller's environment must not reach the daemons.
        self.env["PIER_KEY"] = "not-the-cluster-key"
        self.seen = set()  # every daemon PID ever named, to stop at the end
        self._done = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True)

    def run(self, *args, timeout=180):
        p = subprocess.run([str(UP), *map(str, args)], env=self.env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        self.seen.update(int(x) for x in re.findall(r"\(pid (\d+)\)", p.stdout))
        self.seen.update(self.pids().values())
        self.seen.update(self.job_pids())
        return p

    def pids(self):
        """The PID in each PID file that exists."""
        out = {}
        for name in NAMES:
            try:
                out[name] = int((self.home / f"{name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                pass
        return out

    def pierds(self):
        """The PIDs of pierd processes that listen on this Up's ports."""
        exe = str(self.build / "pierd")
        found = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or not alive(int(d.name)):
                continue
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            argv = [a.decode(errors="replace") for a in argv]
            if argv and argv[0] == exe and any(a in argv for a in self.addrs.values()):
                found.add(int(d.name))
        return found

    def log(self, name):
        try:
            return (self.home / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def key(self):
        """The cluster key file's text, or None."""
        try:
            return (self.home / "key").read_text()
        except FileNotFoundError:
            return None

    def api(self, url, key=None, timeout=10):
        """(status, parsed JSON or None) of GET url, with key as Basic auth."""
        h = {}
        if key is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f":{key}".encode()).decode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=h),
                                        timeout=timeout) as r:
                body = r.read()
                return r.status, json.loads(body) if body.strip() else None
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None, None

    def host_id(self):
        """The id the host agent made at its first start, or None."""
        try:
            return (self.home / "host" / "host-id").read_text().strip() or None
        except FileNotFoundError:
            return None

    def job_dirs(self):
        d = self.home / "host" / "jobs"
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def job_pids(self):
        """{pid: what} of the shims and container inits the job directories
        name that still are what the files say: the shim (its command line)
        and the container's init (its cgroup)."""
        out = {}
        for d in self.job_dirs():
            for name, mark, proc_file in (("shim.pid", "shim", "cmdline"),
                                          ("container.pid", d.name, "cgroup")):
                try:
                    pid = int((d / name).read_text().split()[0])
                    if pid > 1 and mark.encode() in Path(f"/proc/{pid}/{proc_file}").read_bytes():
                        out[pid] = f"{name[:-4]} of {d.name}"
                except (OSError, ValueError, IndexError):
                    pass
        return out

    def cleanup_jobs(self):
        """Kills every shim and container the agent started and deletes them
        from crun, so no job outlives the test."""
        pids = self.job_pids()
        self.seen.update(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            wait_gone(pid, 5)
        host_id = self.host_id()
        if not host_id:
            return
        root = Path("/run/pier") / host_id / "crun"
        for d in self.job_dirs():
            subprocess.run([CRUN, "--root", str(root), "delete", "--force", d.name],
                           capture_output=True, timeout=30)
        # crun's state directory, once it holds nothing
        subprocess.run(["rm", "-rf", "--one-file-system", str(root.parent)], capture_output=True,
                       timeout=30)

    def _reap(self):
        while not self._done.wait(0.02):
            for pid in list(self.seen):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def start_reaping(self):
        self.seen.update(self.pids().values())
        self._reaper.start()

    def cleanup(self):
        """Stops every daemon this test saw, by PID (the scheduler with the
        others, so it replaces no job), then the jobs."""
        self.seen.update(self.pids().values())
        self.seen.update(self.pierds())
        left = sorted(p for p in self.seen if alive(p))
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in left:
            if not wait_gone(pid, 15):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        self.cleanup_jobs()
        self._done.set()
        self._reaper.join()


@pytest.fixture
def up(pier_build, tmp_path):
    if not (pier_build / "pierd").exists():
        pytest.fail(f"{pier_build / 'pierd'} has not been built", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("scripts/up starts the host agent, which runs as root", pytrace=False)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    u = Up(pier_build, tmp_path / "pier-home")
    u.start_reaping()
    try:
        yield u
    finally:
        u.cleanup()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        logs = [(name, u.log(name)) for name in NAMES]
        for d in u.job_dirs():
            try:
                logs.append((f"the shim of {d.name}", (d / "shim.log").read_text(errors="replace")))
            except FileNotFoundError:
                pass
        for who, text in logs:
            if sanitizer_reports(text):
                pytest.fail(f"{who} reported a sanitizer error:\n{text[-8000:]}", pytrace=False)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def started(p, name):
    """The PID `scripts/up` says it started name with, and its URL."""
    m = re.search(rf"^started {name} \(pid (\d+)\) on (\S+)$", p.stdout, re.M)
    assert m, f"no 'started {name}' line in:\n{p.stdout}\n{p.stderr}"
    return int(m.group(1)), m.group(2)


def until(pred, what, timeout=WAIT):
    """Polls pred() until it returns something truthy (returned)."""
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last or time.monotonic() >= deadline:
            assert last, f"timed out after {timeout}s waiting for {what}: {last!r}"
            return last
        time.sleep(0.1)


def stopped_all(pids):
    """What `scripts/up --stop` says when no job runs, in its order."""
    return [f"stopped {name} (pid {pids[name]})" for name in STOP_ORDER]


class Steps:
    """The commands `scripts/up` prints under "Point the CLI" and "Run an
    app", run as a user pastes them into bash: each in a shell whose PATH
    comes from the printed `export PATH=...` line, with a HOME of its own
    (the CLI keeps its config there) and none of the CLI's variables from
    this process's environment."""

    def __init__(self, text, tmp_path):
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Point the CLI"))
        self.lines = [ln[2:] for ln in lines[at:] if ln.startswith("  ")]
        self.home = tmp_path / "user-home"
        self.home.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PIER_") and k != "XDG_CONFIG_HOME"}
        self.env.update(HOME=str(self.home), UBSAN_OPTIONS="print_stacktrace=1")

    def line(self, prefix):
        """The one printed command that starts with prefix."""
        found = [ln for ln in self.lines if ln.startswith(prefix)]
        assert len(found) == 1, (prefix, self.lines)
        return found[0]

    def sh(self, *cmds, home=None, timeout=120):
        env = dict(self.env, HOME=str(home or self.home))
        script = "\n".join([self.line("export PATH="), "set -e", *cmds])
        p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(self.home))
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"{cmds} reported a sanitizer error:\n{p.stderr}"
        return p


def workflow_until_up(up, p, tmp_path):
    """Runs the printed workflow up to `scale web=1` and checks each step;
    returns (Steps, key, release id, the web job's id, its port)."""
    key = up.key().strip()
    ctl = up.controller_url
    steps = Steps(p.stdout, tmp_path)
    assert steps.lines[:3] == [
        f'export PATH="{up.build}:$PATH"',
        f"pier cluster add -d local {ctl} {key}",
        f"export PIER_CONTROLLER_URL={ctl} PIER_CONTROLLER_KEY={key}",
    ], steps.lines

    # The CLI, pointed at the controller, keeps the cluster in its config.
    r = ok(steps.sh(steps.line("pier cluster add")))
    assert r.stdout == 'cluster "local" added (default)\n', r.stdout
    r = ok(steps.sh("pier cluster"))
    assert r.stdout.split() == ["NAME", "URL", "*", "local", ctl], r.stdout

    assert ok(steps.sh(steps.line("pier create hello"))).stdout == "hello\n"

    # The release (made with the API) and its deploy, pasted together as
    # the second needs the first's $release.
    release, deploy = steps.line("release=$(curl "), steps.line("curl -s -u ")
    assert f"-u :{key} {ctl}/releases " in release and f"{ctl}/apps/hello/deploy " in deploy
    r = ok(steps.sh(release, deploy, 'echo "release=$release"'))
    out, _, rel = r.stdout.rpartition("release=")
    rel = rel.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", rel), r.stdout
    dep = json.loads(out)
    assert (dep["new_release"], dep["status"]) == (rel, "complete"), dep
    status, app = up.api(f"{ctl}/apps/hello", key)
    assert status == 200 and app["release"] == rel, (status, app)
    status, body = up.api(f"{ctl}/releases/{rel}", key)
    assert status == 200 and list(body["processes"]) == ["web"], body

    # scale web=1 waits until the scheduler placed it and the agent ran it.
    r = ok(steps.sh(steps.line("pier -a hello scale web=1")))
    assert "scaling web: 0=>1\n" in r.stdout, r.stdout
    [job] = re.findall(r"^web (\S+) up$", r.stdout, re.M)
    assert job.startswith(up.host_id() + "-"), job
    assert re.search(r"^scale completed in \d+\.\ds$", r.stdout, re.M), r.stdout

    # Discovery has its address, and it answers HTTP there.
    status, insts = until(lambda: (lambda r: r if r[0] == 200 and r[1] else None)(
        up.api(f"{up.discoverd_url}/services/hello-web/instances")), "the web job in discovery")
    [inst] = insts
    assert inst["meta"]["job_id"] == job, inst
    host, port = inst["addr"].rsplit(":", 1)
    port = int(port)
    assert host == "127.0.0.1" and up.ports[0] <= port <= up.ports[1], inst

    # The app's default route answers through the router, with the printed
    # command (curl resolves *.localhost to the loopback address itself).
    fetch = steps.line(f"curl -s http://hello.{up.domain}:{up.http_port}/")
    assert fetch.endswith("   # through the router"), fetch
    until(lambda: (lambda r: r.returncode == 0 and "Directory listing" in r.stdout)(
        steps.sh(fetch)), "the web job's HTTP server through the router")
    return steps, key, rel, job, port


def test_up_runs_the_cluster_and_the_printed_workflow_works(up, tmp_path):
    p = ok(up.run(up.build))
    pids = {}
    for name in NAMES:
        pids[name], url = started(p, name)
        assert url == up.urls[name], (name, url)
    assert [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("started ")] == \
        list(NAMES)
    assert up.pids() == pids
    assert up.pierds() == set(pids.values())
    for name in NAMES:
        assert http_status(up.urls[name] + "/.well-known/status") == 200, name
    assert (up.home / "store").is_dir()
    host_id = up.host_id()
    assert re.fullmatch(r"h[0-9a-f]{12}", host_id or ""), host_id

    # The cluster key: 32 random hex digits, this user's only.
    text = up.key()
    assert re.fullmatch(r"[0-9a-f]{32}\n", text or ""), text
    key = text.strip()
    assert stat.S_IMODE((up.home / "key").stat().st_mode) == 0o600
    assert [f.name for f in up.home.iterdir() if f.name.startswith("key")] == ["key"]
    # ... on no daemon's command line (every local user can read those).
    for pid in pids.values():
        assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

    # The agent, the scheduler and the controller ask for it; the
    # caller's PIER_KEY reached none of them.
    for url in (f"{up.host_url}/host/jobs", f"{up.scheduler_url}/status",
                f"{up.controller_url}/apps", f"{up.urls['router']}/status"):
        assert up.api(url)[0] == 401, url
        assert up.api(url, "not-the-cluster-key")[0] == 401, url
        assert up.api(url, key)[0] == 200, url
    assert up.api(f"{up.controller_url}/apps", key)[1] == []
    status, sched = until(lambda: (lambda r: r if r[1] and r[1].get("leader") else None)(
        up.api(f"{up.scheduler_url}/status", key)), "the scheduler to lead")
    assert [h["id"] for h in sched["hosts"]] == [host_id], sched
    assert up.api(f"{up.discoverd_url}/services/hello-web/instances")[0] == 200

    # It says where everything is, and how to use it.
    assert f"store       {up.store_url}   " in p.stdout
    assert f"export PIER_STORE={up.store_url})" in p.stdout
    assert f"discoverd   {up.discoverd_url}   " in p.stdout
    assert f"host        {up.host_url}   (host agent {host_id}; docs/host.md)" in p.stdout
    assert f"scheduler   {up.scheduler_url}   " in p.stdout
    assert f"controller  {up.controller_url}   (the API; docs/controller.md)" in p.stdout
    assert (f"router      http://127.0.0.1:{up.http_port}   (every app at "
            f"http://APP.{up.domain}:{up.http_port}; status at {up.urls['router']}/status; "
            "docs/router.md)") in p.stdout
    assert f"cluster key {key}   (in {up.home}/key)" in p.stdout
    assert f"logs and PIDs in {up.home}; stop with 'make down'" in p.stdout
    assert "'git push' comes later" in p.stdout
    assert p.stderr == ""

    steps, key, rel, job, port = workflow_until_up(up, p, tmp_path)
    assert steps.lines[3:] == [
        "pier create hello",
        steps.line("release=$(curl "),
        steps.line("curl -s -u "),
        "pier -a hello scale web=1",
        f"curl -s http://hello.{up.domain}:{up.http_port}/   # through the router",
        "pier -a hello ps",
        "pier -a hello log",
        "pier -a hello run -- sh -c 'echo hi from $DYNO'",
    ], steps.lines

    # ps, here through the printed environment variables and no config.
    bare = tmp_path / "no-config-home"
    bare.mkdir()
    r = ok(steps.sh(steps.line("export PIER_CONTROLLER_URL="), steps.line("pier -a hello ps"),
                    home=bare))
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [[job, "web", "up"]], r.stdout
    assert rows[0][5] == rel[:8], r.stdout
    assert not (bare / ".config").exists()

    # The log: what the server printed at its start and the request above.
    def log():
        out = ok(steps.sh(steps.line("pier -a hello log"))).stdout
        return out if ("Serving HTTP on" in out and '"GET / HTTP/1.1" 200' in out) else None

    logged = until(log, "the web job's start and request in the app log")
    assert re.search(rf"^\d{{4}}-\d\d-\d\dT[\d:.]+Z app\[web\.{job}\]: Serving HTTP on ", logged,
                     re.M), logged

    # A one-off command: its output, its exit status, gone afterwards.
    r = ok(steps.sh(steps.line("pier -a hello run -- ")))
    assert re.fullmatch(r"hi from run\.\d+\n", r.stdout), r.stdout
    rows = [ln.split() for ln in ok(steps.sh("pier -a hello ps")).stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [[job, "web", "up"]], rows

    # Running it again leaves all six alone, starts nothing, keeps the key
    # and says the same.
    p2 = ok(up.run(up.build))
    for name in NAMES:
        assert f"{name} already running (pid {pids[name]})" in p2.stdout
    assert "started" not in p2.stdout
    assert up.pids() == pids
    assert up.pierds() == set(pids.values())
    assert up.key() == key + "\n"
    assert stat.S_IMODE((up.home / "key").stat().st_mode) == 0o600
    assert p2.stdout.split("\n\n", 1)[1] == p.stdout.split("\n\n", 1)[1]

    # Scaled to zero, the job stops: down, out of discovery, shim and
    # container gone.
    shims = up.job_pids()
    assert sorted(shims.values()) == [f"container of {job}", f"shim of {job}"], shims
    r = ok(steps.sh("pier -a hello scale web=0"))
    assert re.search(rf"^web {job} down$", r.stdout, re.M), r.stdout
    assert all(wait_gone(pid, WAIT) for pid in shims), shims
    until(lambda: up.api(f"{up.discoverd_url}/services/hello-web/instances")[1] == [],
          "the job out of discovery")

    # --stop stops all six, by PID, router first, store last, and
    # forgets them; no job runs, so it says nothing about jobs.
    p3 = ok(up.run("--stop"))
    assert p3.stdout.splitlines() == stopped_all(pids)
    assert all(wait_gone(pid, 1) for pid in pids.values())
    assert up.pids() == {}
    assert up.pierds() == set()
    for name in NAMES:
        assert http_status(up.urls[name] + "/.well-known/status") is None, name
    # All were stopped with SIGTERM and exited cleanly (no sanitizer report:
    # the fixture checks the logs).
    for name in NAMES:
        assert "level=error" not in up.log(name), (name, up.log(name)[-3000:])

    # Stopping again has nothing to do; the key stays for the next start.
    p4 = ok(up.run("--stop"))
    assert p4.stdout == "" and p4.stderr == ""
    assert up.key() == key + "\n"


def test_stop_leaves_jobs_running_and_says_how_to_stop_them(up, tmp_path):
    p = ok(up.run(up.build))
    pids = {name: started(p, name)[0] for name in NAMES}
    key = up.key()
    steps, _, _, job, port = workflow_until_up(up, p, tmp_path)
    jobs = up.job_pids()
    assert len(jobs) == 2, jobs

    # The agent stops, the job does not; the script says so and how to stop it.
    p2 = ok(up.run("--stop"))
    lines = p2.stdout.splitlines()
    assert lines[:4] == stopped_all(pids)[:4], p2.stdout
    assert lines[-2:] == stopped_all(pids)[4:], p2.stdout
    note = "\n".join(lines[4:-2])
    assert note.startswith("  1 job it runs keeps running: jobs belong to their shims"), note
    assert "docs/host.md" in note and "'make up'" in note
    m = re.search(r"\((pier -a APP scale web=0)\)", note)
    assert m, note
    assert "'pier apps'" in note and "'pier -a APP ps'" in note
    assert all(alive(pid) for pid in jobs), jobs
    assert http_status(f"http://127.0.0.1:{port}/", timeout=5) == 200
    assert up.pierds() == set()

    # As it says: up again (the agent takes the job back; the key is the
    # same, so the CLI's config still works), then scale the app to zero.
    p3 = ok(up.run(up.build))
    pids = {name: started(p3, name)[0] for name in NAMES}
    assert up.key() == key
    assert f"(host agent {job.split('-')[0]}; " in p3.stdout
    rows = [ln.split() for ln in ok(steps.sh("pier apps")).stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["hello"], rows
    rows = [ln.split() for ln in ok(steps.sh("pier -a hello ps")).stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [[job, "web", "up"]], rows
    r = ok(steps.sh(m.group(1).replace("APP", "hello")))
    assert re.search(rf"^web {job} down$", r.stdout, re.M), r.stdout
    assert all(wait_gone(pid, WAIT) for pid in jobs), jobs
    p4 = ok(up.run("--stop"))
    assert p4.stdout.splitlines() == stopped_all(pids)


def test_up_restarts_what_died_and_keeps_the_key(up):
    p = ok(up.run(up.build))
    pids = {name: started(p, name)[0] for name in NAMES}
    host_id = up.host_id()
    key = up.key()
    (up.home / "key").chmod(0o644)
    died = ("discoverd", "host", "scheduler", "controller")
    for name in died:
        os.kill(pids[name], signal.SIGTERM)
        assert wait_gone(pids[name])

    p = ok(up.run(up.build))
    assert f"store already running (pid {pids['store']})" in p.stdout
    for name in died:
        new, _ = started(p, name)
        assert new != pids[name]
        pids[name] = new
    assert up.pids() == pids
    assert up.pierds() == set(pids.values())
    for name in NAMES:
        assert http_status(up.urls[name] + "/.well-known/status") == 200, name
    # The agent keeps its id across restarts; the key is the same, and
    # again this user's only.
    assert up.host_id() == host_id
    assert f"(host agent {host_id}; " in p.stdout
    assert up.key() == key
    assert stat.S_IMODE((up.home / "key").stat().st_mode) == 0o600
    assert up.api(f"{up.controller_url}/apps", key.strip())[0] == 200
    ok(up.run("--stop"))
    assert up.pierds() == set()


@pytest.mark.parametrize("text", ["", "\n", "two words\n", "it's\n"])
def test_a_key_file_that_holds_no_key_is_refused(up, text):
    """Not even an empty one is replaced (or taken for no key at all)."""
    up.home.mkdir(parents=True)
    (up.home / "key").write_text(text)
    p = up.run(up.build)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout == ""
    assert p.stderr == (f"scripts/up: {up.home}/key holds no key (one line of letters, digits, "
                        "'.', '_' or '-'); remove it to make a new one\n")
    assert up.pierds() == set()
    assert (up.home / "key").read_text() == text


def test_a_key_of_ones_own_is_kept(up):
    up.home.mkdir(parents=True)
    (up.home / "key").write_text("my-own.key_1")
    p = ok(up.run(up.build))
    assert "cluster key my-own.key_1   " in p.stdout
    assert up.api(f"{up.controller_url}/apps", "my-own.key_1")[0] == 200
    assert up.api(f"{up.controller_url}/apps")[0] == 401
    assert (up.home / "key").read_text() == "my-own.key_1"
    assert stat.S_IMODE((up.home / "key").stat().st_mode) == 0o600
    ok(up.run("--stop"))


def test_missing_build_dir(up, tmp_path):
    missing = tmp_path / "no-build"
    p = up.run(missing)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == f"scripts/up: {missing}/pierd is missing; run 'make build' first\n"
    assert not up.home.exists()
    assert up.pierds() == set()


def test_port_taken_by_something_else_fails_clearly(up):
    """Something that accepts connections but is not pier holds the store's
    port: the store cannot start, the script says so with its log, and
    nothing after it is started."""
    host, port = up.addrs["store"].split(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(16)
        p = up.run(up.build)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"scripts/up: store did not start; the end of {up.home}/store.log says:" in p.stderr
    assert "cannot listen on" in p.stderr
    assert "started" not in p.stdout
    assert up.pierds() == set()
    assert up.pids() == {}


@pytest.mark.parametrize("taken", ["store", "controller"])
def test_port_taken_by_another_http_server_is_not_mistaken_for_pier(up, taken):
    """An HTTP server that answers status holds the store's (or the
    controller's) port: the script says so and starts nothing from there
    on; what it started before runs, and --stop stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    host, port = up.addrs[taken].split(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        p = up.run(up.build)
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
    assert p.returncode == 1, p.stdout
    assert f"something else already answers on http://{up.addrs[taken]}" in p.stderr
    assert f"PIER_{taken.upper()}_LISTEN" in p.stderr
    before = NAMES[:NAMES.index(taken)]
    pids = {name: started(p, name)[0] for name in before}
    assert len(p.stdout.splitlines()) == len(before), p.stdout
    assert up.pids() == pids
    assert up.pierds() == set(pids.values())
    p2 = ok(up.run("--stop"))
    assert p2.stdout.splitlines() == [f"stopped {name} (pid {pids[name]})"
                                      for name in STOP_ORDER if name in pids]
    assert up.pierds() == set()
