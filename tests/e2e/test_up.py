"""`make up`'s script end to end: `scripts/up BUILD_DIR` makes the cluster
key once ($PIER_HOME/key, 0600), starts the store, discoverd, the host
agent, the scheduler, the controller, the router, the blobstore and the git
receiver in the background with their PIDs and logs under $PIER_HOME, says
where they are and how to use them (a `git push` workflow that really
builds, deploys and runs an app, over HTTP and over SSH), leaves running
daemons alone when run again, restarts what died, and `scripts/up --stop`
stops them (the git receiver first, the store last), saying so when jobs
keep running.

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
NAMES = ("store", "discoverd", "host", "scheduler", "controller", "router", "blobstore",
         "gitreceive")
STOP_ORDER = ("gitreceive", "blobstore", "router", "controller", "scheduler", "host", "discoverd",
              "store")
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
        self.ssh_addr = f"127.0.0.1:{free_port()}"  # the git receiver's SSH listener
        self.domain = "up-test.localhost"
        self.env = dict(os.environ, PIER_HOME=str(home), PIER_HOST_PORTS="%d-%d" % self.ports,
                        PIER_ROUTER_HTTP=f"127.0.0.1:{self.http_port}", PIER_DOMAIN=self.domain,
                        PIER_GITRECEIVE_SSH=self.ssh_addr, UBSAN_OPTIONS="print_stacktrace=1")
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
        status, _, body = self.request(url, key, timeout=timeout)
        return status, json.loads(body) if status == 200 and body.strip() else None

    @staticmethod
    def request(url, key=None, method="GET", data=None, timeout=10):
        """(status, headers, body) of a request, with key as Basic auth;
        (None, None, None) when nothing answers."""
        h = {}
        if key is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f":{key}".encode()).decode()
        req = urllib.request.Request(url, headers=h, method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()
        except OSError:
            return None, None, None

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
        # The shims, and the jobs (the build job runs pierslug, which is
        # sanitized too, and the web jobs run it as their entry).
        for d in u.job_dirs():
            for f, who in (("shim.log", "the shim of"), ("log", "the job")):
                try:
                    logs.append((f"{who} {d.name}", (d / f).read_text(errors="replace")))
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
    """The commands `scripts/up` prints under "Point the CLI" and after it,
    run as a user pastes them into bash: each in a shell whose PATH comes
    from the printed `export PATH=...` line, with a HOME of its own (the CLI
    keeps its config there) and none of the CLI's, git's or ssh's variables
    from this process's environment. The user has what any git user has: a
    name and email in ~/.gitconfig, and an SSH key; their ssh accepts a new
    host's key (as answering "yes" at the first connection) and reads only
    the files under HOME."""

    def __init__(self, text, tmp_path):
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Point the CLI"))
        self.lines = [ln[2:] for ln in lines[at:] if ln.startswith("  ")]
        self.home = tmp_path / "user-home"
        self.app_dir = self.home / "hello"  # where the printed `cd hello` leads
        ssh = self.home / ".ssh"
        if not ssh.exists():
            ssh.mkdir(mode=0o700, parents=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "up-test",
                            "-f", str(ssh / "id_ed25519")], check=True, capture_output=True)
            (ssh / "config").write_text(
                f"IdentityFile {ssh}/id_ed25519\nIdentitiesOnly yes\n"
                f"UserKnownHostsFile {ssh}/known_hosts\nStrictHostKeyChecking accept-new\n"
                "BatchMode yes\n")
            (self.home / ".gitconfig").write_text(
                "[user]\n\tname = Up Test\n\temail = up-test@example.test\n")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PIER_", "GIT_", "SSH_")) and k != "XDG_CONFIG_HOME"}
        # ssh finds ~ in the password database, not in HOME: this user's
        # ssh is pointed at their files under HOME.
        self.env.update(HOME=str(self.home), UBSAN_OPTIONS="print_stacktrace=1",
                        GIT_SSH_COMMAND=f"ssh -F {ssh}/config")

    def line(self, prefix):
        """The one printed command that starts with prefix."""
        found = [ln for ln in self.lines if ln.startswith(prefix)]
        assert len(found) == 1, (prefix, self.lines)
        return found[0]

    def sh(self, *cmds, home=None, cwd=None, timeout=300):
        """Runs cmds in one bash, in HOME (or cwd)."""
        env = dict(self.env, HOME=str(home or self.home))
        script = "\n".join([self.line("export PATH="), "set -e", *cmds])
        p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(cwd or self.home))
        reports = sanitizer_reports(p.stdout + p.stderr)
        assert not reports, f"{cmds} reported a sanitizer error:\n{p.stdout}\n{p.stderr}"
        return p

    def app(self, *cmds, **kw):
        """Runs cmds in the app's repository, where the workflow left the user."""
        return self.sh(*cmds, cwd=self.app_dir, **kw)


def pushed(r, up, version):
    """Checks what `git push` printed (on stderr, as git does): the Node.js
    buildpack built the app, and release vVERSION of hello was deployed at
    its default route; returns the release's id."""
    out = r.stderr
    assert r.returncode == 0, f"git push failed ({r.returncode}):\n{r.stdout}\n{out}"
    assert re.search(r"^remote: -----> Node\.js app detected\s*$", out, re.M), out
    assert re.search(r"^remote: \s+npm ci ", out, re.M), out
    m = re.search(rf"^remote: =====> hello deployed \(release v{version} / ([0-9a-f-]{{36}})\)\s*$",
                  out, re.M)
    assert m, out
    assert re.search(rf"^remote:        http://hello\.{re.escape(up.domain)}\s*$", out, re.M), out
    assert re.search(r"^ [*+ ] .*main -> main$", out, re.M), out
    return m.group(1)


def web_jobs(steps, rel=None):
    """The ids of the app's web jobs that `pier ps` lists as up (of release
    rel when given), and every row it lists."""
    rows = [ln.split() for ln in ok(steps.sh("pier -a hello ps")).stdout.splitlines()[1:]]
    jobs = [row[0] for row in rows
            if row[1:3] == ["web", "up"] and (rel is None or row[5] == rel[:8])]
    return jobs, rows


def answers(steps, fetch):
    """Whether the printed curl through the router gets the sample's page."""
    r = steps.sh(fetch)
    return r.returncode == 0 and "<p>hello from nodejs</p>" in r.stdout and \
        "escape-html says &lt;b&gt;pier &amp; npm&lt;/b&gt;" in r.stdout


def workflow_until_up(up, p, tmp_path):
    """Runs the printed workflow up to `git push` and the curl through the
    router and checks each step; returns (Steps, key, release id, the web
    job's id, its port)."""
    key = up.key().strip()
    ctl = up.controller_url
    git = up.urls["gitreceive"]
    steps = Steps(p.stdout, tmp_path)
    assert steps.lines[:3] == [
        f'export PATH="{up.build}:$PATH"',
        f"pier cluster add -d local {ctl} {key} --git-url {git}",
        f"export PIER_CONTROLLER_URL={ctl} PIER_CONTROLLER_KEY={key} PIER_GIT_URL={git}",
    ], steps.lines

    # The CLI, pointed at the controller and the git receiver, keeps the
    # cluster in its config.
    r = ok(steps.sh(steps.line("pier cluster add")))
    assert r.stdout == 'cluster "local" added (default)\n', r.stdout
    r = ok(steps.sh("pier cluster"))
    assert r.stdout.split() == ["NAME", "URL", "GIT", "URL", "*", "local", ctl, git], r.stdout

    # A copy of the sample in a new repository, and the app with its remote.
    copy = steps.line("cp -r ")
    assert copy.startswith(f"cp -r {REPO}/tests/apps/nodejs hello && cd hello && "), copy
    ok(steps.sh(copy))
    assert (steps.app_dir / "package.json").is_file()
    assert ok(steps.app("git log --format=%s")).stdout == "init\n"
    r = ok(steps.app(steps.line("pier create hello")))
    assert r.stdout == "hello\n", r.stdout
    assert f"Added git remote pier: {git}/hello.git" in r.stderr, r.stderr
    assert ok(steps.app("git remote get-url pier")).stdout == f"{git}/hello.git\n"

    # The push builds it (over HTTP: the credential helper `pier create` set
    # gives git the key) and deploys it, with web scaled to 1.
    r = steps.app(steps.line("git push pier main"))
    rel = pushed(r, up, 1)
    status, app = up.api(f"{ctl}/apps/hello", key)
    assert status == 200 and app["release"] == rel, (status, app)
    status, body = up.api(f"{ctl}/releases/{rel}", key)
    assert status == 200 and body["processes"]["web"]["args"] == ["npm start"], body
    [job], _ = web_jobs(steps, rel)
    assert job.startswith(up.host_id() + "-"), job

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
    until(lambda: answers(steps, fetch), "the app's page through the router")
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
    # The blobstore: anyone reads, only the key writes.
    blob = f"{up.urls['blobstore']}/up-test/x.txt"
    for k in (None, "not-the-cluster-key"):
        assert up.request(blob, k, "PUT", b"x")[0] == 401, k
    assert up.request(blob)[0] == 404
    assert up.request(blob, key, "PUT", b"hi\n")[0] == 200
    assert up.request(blob)[::2] == (200, b"hi\n")
    assert up.request(blob, key, "DELETE")[0] == 200
    # The git receiver: git over HTTP with the key (no app yet: 404), and
    # its SSH port speaks SSH.
    refs = f"{up.urls['gitreceive']}/hello.git/info/refs?service=git-receive-pack"
    for k in (None, "not-the-cluster-key"):
        status, headers, _ = up.request(refs, k)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="pier"', (k, status)
    assert up.request(refs, key)[0] == 404
    host, port = up.ssh_addr.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(10)
        assert s.recv(256).startswith(b"SSH-2.0-")
    # Both register in discovery.
    for svc in ("blobstore", "gitreceive"):
        status, insts = until(lambda: (lambda r: r if r[0] == 200 and r[1] else None)(
            up.api(f"{up.discoverd_url}/services/{svc}/instances")), f"{svc} in discovery")
        assert [i["addr"] for i in insts] == [up.addrs[svc]], insts

    # It says where everything is, and how to use it.
    fp = subprocess.run(["ssh-keygen", "-lf", str(up.home / "git" / "ssh_host_ed25519_key")],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"store       {up.store_url}   " in p.stdout
    assert f"export PIER_STORE={up.store_url})" in p.stdout
    assert f"discoverd   {up.discoverd_url}   " in p.stdout
    assert f"host        {up.host_url}   (host agent {host_id}; docs/host.md)" in p.stdout
    assert f"scheduler   {up.scheduler_url}   " in p.stdout
    assert f"controller  {up.controller_url}   (the API; docs/controller.md)" in p.stdout
    assert (f"router      http://127.0.0.1:{up.http_port}   (every app at "
            f"http://APP.{up.domain}:{up.http_port}; status at {up.urls['router']}/status; "
            "docs/router.md)") in p.stdout
    assert (f"\n  blobstore   {up.urls['blobstore']}   (sources, slugs, build caches; "
            "docs/blobstore.md)\n") in p.stdout
    assert (f"\n  gitreceive  {up.urls['gitreceive']}   (git push over HTTP; docs/gitreceive.md)\n"
            f"              ssh://git@{up.ssh_addr}   (git push over SSH; host key {fp})\n"
            ) in p.stdout
    assert f"cluster key {key}   (in {up.home}/key)" in p.stdout
    assert f"logs and PIDs in {up.home}; stop with 'make down'" in p.stdout
    assert "comes later" not in p.stdout
    assert p.stderr == ""

    steps, key, rel, job, port = workflow_until_up(up, p, tmp_path)
    assert steps.lines[3:] == [
        steps.line("cp -r "),
        "pier create hello   # adds the git remote pier",
        "git push pier main   # builds, deploys, scales web to 1",
        f"curl -s http://hello.{up.domain}:{up.http_port}/   # through the router",
        "pier -a hello ps",
        "pier -a hello log",
        "pier -a hello scale web=2",
        "pier -a hello run -- sh -c 'echo hi from $DYNO'",
        "pier keys add",
        f"git remote set-url pier ssh://git@{up.ssh_addr}/hello.git",
        "git commit -q --allow-empty -m again && git push pier main",
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

    # The log: the build's output (its one-off job is the app's) and the
    # web process's start, on the port the agent gave it.
    def log():
        out = ok(steps.app(steps.line("pier -a hello log"))).stdout
        return out if f"listening on 0.0.0.0:{port}" in out else None

    logged = until(log, "the web job's start in the app log")
    assert re.search(rf"^\d{{4}}-\d\d-\d\dT[\d:.]+Z app\[web\.{job}\]: listening on 0\.0\.0\.0:"
                     rf"{port}$", logged, re.M), logged
    assert re.search(r"app\[run\.\S+\]: -----> Node\.js app detected$", logged, re.M), logged

    # Scaled to two, both up, and the page still answers.
    r = ok(steps.app(steps.line("pier -a hello scale web=2")))
    assert "scaling web: 1=>2\n" in r.stdout, r.stdout
    [job2] = re.findall(r"^web (\S+) up$", r.stdout, re.M)
    assert job2 != job
    assert sorted(web_jobs(steps, rel)[0]) == sorted([job, job2])
    assert answers(steps, steps.line("curl -s "))

    # A one-off command: its output, its exit status, gone afterwards.
    r = ok(steps.app(steps.line("pier -a hello run -- ")))
    assert re.fullmatch(r"hi from run\.\d+\n", r.stdout), r.stdout
    jobs, rows = web_jobs(steps)
    assert sorted(jobs) == sorted([job, job2]) and len(rows) == 2, rows

    # Over SSH: the user's key registered, the remote switched, a new
    # commit pushed; it is built and deployed as release v2 on both jobs.
    r = ok(steps.app(steps.line("pier keys add")))
    ours = subprocess.run(["ssh-keygen", "-lf", str(steps.home / ".ssh" / "id_ed25519.pub")],
                          capture_output=True, text=True, check=True).stdout.split()[1]
    assert ours in r.stdout + r.stderr, r
    ok(steps.app(steps.line("git remote set-url pier ssh://")))
    r = steps.app(steps.line("git commit -q --allow-empty -m again && git push pier main"))
    rel2 = pushed(r, up, 2)
    assert rel2 != rel
    assert f"\nTo ssh://{up.ssh_addr}/hello.git\n" in r.stderr, r.stderr  # (git hides the user)
    assert re.search(r"^remote:        npm cache: restored from the previous build", r.stderr,
                     re.M), r.stderr
    assert re.search(rf'msg="ssh git started" .*fingerprint={re.escape(ours)} app=hello '
                     "service=receive-pack", up.log("gitreceive")), up.log("gitreceive")[-3000:]
    # ssh took the host key printed above.
    known = subprocess.run(["ssh-keygen", "-lf", str(steps.home / ".ssh" / "known_hosts")],
                           capture_output=True, text=True, check=True).stdout.split()
    assert known[1] == fp, known
    assert up.api(f"{up.controller_url}/apps/hello", key)[1]["release"] == rel2
    new = until(lambda: (lambda j: j if len(j) == 2 else None)(web_jobs(steps, rel2)[0]),
                "two web jobs of the second release")
    assert not set(new) & {job, job2}, new
    assert answers(steps, steps.line("curl -s "))

    # Running it again leaves all eight alone, starts nothing, keeps the key
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

    # Scaled to zero, the jobs stop: down, out of discovery, shims and
    # containers gone (the build and run jobs' went when they ended).
    shims = until(lambda: (lambda s: s if len(s) == 4 else None)(up.job_pids()),
                  "only the two web jobs' shims and containers")
    assert sorted(shims.values()) == sorted(f"{what} of {j}" for j in new
                                            for what in ("container", "shim")), shims
    r = ok(steps.sh("pier -a hello scale web=0"))
    for j in new:
        assert re.search(rf"^web {j} down$", r.stdout, re.M), r.stdout
    assert all(wait_gone(pid, WAIT) for pid in shims), shims
    until(lambda: up.api(f"{up.discoverd_url}/services/hello-web/instances")[1] == [],
          "the jobs out of discovery")

    # --stop stops all eight, by PID, the git receiver first, the store
    # last, and forgets them; no job runs, so it says nothing about jobs.
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
    # The web job's shim and container (the build job's went when it ended).
    jobs = until(lambda: (lambda s: s if len(s) == 2 else None)(up.job_pids()),
                 "only the web job's shim and container")
    assert sorted(jobs.values()) == [f"container of {job}", f"shim of {job}"], jobs

    # The agent stops, the job does not; the script says so and how to stop it.
    p2 = ok(up.run("--stop"))
    lines = p2.stdout.splitlines()
    at = STOP_ORDER.index("host") + 1
    assert lines[:at] == stopped_all(pids)[:at], p2.stdout
    assert lines[at - len(STOP_ORDER):] == stopped_all(pids)[at:], p2.stdout
    note = "\n".join(lines[at:at - len(STOP_ORDER)])
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
