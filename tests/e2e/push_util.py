"""A whole single-host pier cluster for `git push` tests and the deploy
benchmark, and a user who pushes to it with the real `git` and `pier`.

PushCluster(build, workdir) starts, on free loopback ports under workdir:
`pierd store`, `pierd discoverd`, a `pierd host` agent (the host's binds
as its stack, `--buildpacks` a directory of its own that holds a copy of
the shipped buildpacks, so a test can add one), `pierd scheduler`,
`pierd controller --domain D`, `pierd router` (plain HTTP on its own
port), `pierd blobstore` and `pierd gitreceive` (smart HTTP and SSH).
stop() stops them by PID, the last started first (the agent's jobs are
killed and deleted from crun), and check_sanitizers() fails the test on a
sanitizer report in any daemon's stderr or any shim's log.

User(cluster, home) is someone with a HOME, an SSH key (registered with
`pier keys add`), and git and pier pointed at the cluster through the
environment; push() runs `git push` and keeps every line git printed on
stderr with the moment it arrived (the `remote:` lines are the hook's and
the build's output, as the pusher sees it)."""

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import HostAgent, Pierd, free_port, http_status, sanitizer_reports
from controller_util import Controller
import router_util

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
BUILDPACKS = REPO / "buildpacks"
KEY = "push-test-key"
DOMAIN = "push.localhost"
SAMPLES = ("procfile", "static", "c", "nodejs")


class _Ctl(Controller):
    """controller_util.Controller over an already started daemon."""

    def __init__(self, daemon, store, key):  # pylint: disable=super-init-not-called
        import base64
        self.key = key
        self.auth = "Basic " + base64.b64encode(f":{key}".encode()).decode()
        self.daemon = daemon
        self.url = daemon.url
        self.store = store


class PushCluster:
    """The daemons of a one-host cluster with a git receiver (see the module
    doc). Attributes: store, ctl (a controller_util-style client), router_port,
    domain, blobstore, git_http (http://127.0.0.1:P), git_ssh
    (ssh://git@127.0.0.1:P), agent, buildpacks (the agent's --buildpacks dir),
    build (the build dir), key."""

    def __init__(self, build, workdir, key=KEY, domain=DOMAIN, router_workers=2,
                 host_args=(), gitreceive_args=()):
        self.build = Path(build)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.domain = domain
        self.daemons = []
        self.agent = None
        for exe in ("pierd", "pier", "pierslug"):
            if not (self.build / exe).exists():
                raise RuntimeError(f"{self.build / exe} has not been built")
        # The agent binds this directory at /.pier/buildpacks: the shipped
        # buildpacks (a copy: the bind cannot follow symlinks out of it), and
        # whatever a test adds. Everyone may read it (jobs run as nobody).
        self.buildpacks = self.workdir / "buildpacks"
        shutil.copytree(BUILDPACKS, self.buildpacks, symlinks=False)
        for p in [self.buildpacks, *self.buildpacks.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o055 if p.is_dir() else p.stat().st_mode | 0o044)
        self.buildpacks.parent.chmod(0o755)
        try:
            self._start(router_workers, list(host_args), list(gitreceive_args))
        except BaseException:
            self.stop()
            raise

    def _pierd(self, sub, args, name=None):
        d = Pierd(self.build, sub, self.workdir / (name or sub), args=args)
        self.daemons.append(d)
        return d.start(timeout=30)

    def _start(self, router_workers, host_args, gitreceive_args):
        self.store = self._pierd("store", []).url
        self._pierd("discoverd", ["--store", self.store])
        self.agent = HostAgent(self.build, self.store, self.workdir / "host",
                               args=["--key", self.key, "--buildpacks", self.buildpacks,
                                     *host_args])
        self.agent.start()
        self._pierd("scheduler", ["--store", self.store])
        ctl = self._pierd("controller", ["--store", self.store, "--key", self.key,
                                         "--domain", self.domain])
        self.ctl = _Ctl(ctl, self.store, self.key)
        self.router_port = free_port()
        self.router = self._pierd("router", ["--store", self.store, "--http",
                                             f"127.0.0.1:{self.router_port}",
                                             "--workers", str(router_workers),
                                             "--access-log", "off"])
        blob = self._pierd("blobstore", ["--dir", self.workdir / "blobs", "--key", self.key,
                                         "--store", self.store])
        self.blobstore = blob.url
        self.ssh_port = free_port()
        git = self._pierd("gitreceive", ["--dir", self.workdir / "git", "--store", self.store,
                                         "--key", self.key, "--controller", self.ctl.url,
                                         "--blobstore", self.blobstore,
                                         "--ssh", f"127.0.0.1:{self.ssh_port}",
                                         *gitreceive_args])
        self.gitreceive = git
        self.git_dir = self.workdir / "git"
        self.git_http = git.url
        self.git_ssh = f"ssh://git@127.0.0.1:{self.ssh_port}"

    # ---- teardown ----

    def stop(self):
        """Stops every daemon by PID, last started first; the agent's jobs are
        killed and deleted from crun after the agent stopped."""
        for d in reversed(self.daemons):
            if d.name == "pierd-discoverd" and self.agent:
                self.agent.stop()  # after the scheduler, which would replace its jobs
            d.stop()
        if self.agent:
            self.agent.stop()
            self.agent.cleanup_jobs()

    def sanitizer_failures(self):
        """(who, text) of every daemon or shim whose output holds a
        sanitizer report."""
        out = []
        for d in self.daemons:
            if sanitizer_reports(d.stderr_text()):
                out.append((f"{d.name} (pid {d.pid})", d.stderr_text()))
        if self.agent:
            if sanitizer_reports(self.agent.all_stderr()):
                out.append((self.agent.name, self.agent.all_stderr()))
            for j in self.agent.job_dirs():
                for f in ("shim.log", "log"):
                    try:
                        text = (j / f).read_text(errors="replace")
                    except FileNotFoundError:
                        continue
                    if sanitizer_reports(text):
                        out.append((f"{f} of job {j.name}", text))
        return out

    # ---- the app, through the controller and the router ----

    def app(self, name):
        st, a = self.ctl.get(f"/apps/{name}")
        assert st == 200, (st, a)
        return a

    def release_id(self, name):
        return self.app(name).get("release")

    def release(self, rid):
        st, r = self.ctl.get(f"/releases/{rid}")
        assert st == 200, (st, r)
        return r

    def set_strategy(self, name, strategy="one-by-one", timeout=None):
        body = {"strategy": strategy}
        if timeout:
            body["deploy_timeout"] = timeout
        st, a = self.ctl.post(f"/apps/{name}", body)
        assert st == 200, (st, a)

    def host(self, app):
        return f"{app}.{self.domain}"

    def get(self, app, path="/", timeout=5.0):
        """(status, body text) of GET path through the router, Host
        <app>.<domain>; (None, error) when the connection failed."""
        try:
            st, _, body = router_util.get(self.router_port, self.host(app), path, timeout=timeout)
            return st, body.decode(errors="replace")
        except OSError as e:
            return None, repr(e)

    def wait_content(self, app, text, timeout=60.0):
        """Polls the app through the router until a 200 answer holds text;
        returns the body."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.get(app)
            if last[0] == 200 and text in last[1]:
                return last[1]
            time.sleep(0.05)
        raise AssertionError(f"{self.host(app)} never answered 200 with {text!r}; last: {last!r}")

    def jobs(self, app):
        st, jobs = self.ctl.get(f"/apps/{app}/jobs")
        assert st == 200, (st, jobs)
        return jobs

    def status_ok(self):
        return all(http_status(d.url + "/.well-known/status") == 200 for d in self.daemons)


class Pushed:
    """What one `git push` did: rc, lines [(seconds since the push started,
    text)], started/ended (time.monotonic()), and the remote's lines."""

    def __init__(self, argv, rc, lines, started, ended):
        self.argv = argv
        self.rc = rc
        self.lines = lines
        self.started = started
        self.ended = ended
        self.elapsed = ended - started

    @property
    def stderr(self):
        return "\n".join(text for _, text in self.lines)

    def remote(self):
        """The hook's lines, without git's 'remote: ' prefix."""
        return [(t, text[len("remote: "):].rstrip()) for t, text in self.lines
                if text.startswith("remote: ")]

    def at(self, pattern):
        """Seconds from the push's start to the first remote line matching
        the regular expression pattern, or None."""
        rx = re.compile(pattern)
        for t, text in self.remote():
            if rx.search(text):
                return t
        return None

    def __repr__(self):
        return f"<push rc={self.rc} {self.elapsed:.1f}s>\n{self.stderr}"


def push_ok(p):
    assert p.rc == 0, f"git push failed ({p.rc}):\n{p.stderr}"
    return p


def push_failed(p):
    assert p.rc != 0, f"git push succeeded, wanted a failure:\n{p.stderr}"
    return p


class User:
    """Someone who pushes: their HOME, an SSH key, git's identity, and the
    CLI pointed at the cluster (PIER_CONTROLLER_URL/KEY, PIER_GIT_URL = the
    HTTP receiver, no config file)."""

    def __init__(self, cluster, home, add_key=True):
        self.c = cluster
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        ssh = self.home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        self.ssh_key = ssh / "id_ed25519"
        if not self.ssh_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "push-test",
                            "-f", str(self.ssh_key)], check=True, capture_output=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PIER_", "GIT_", "SSH_")) and k != "XDG_CONFIG_HOME"}
        self.env.update(
            HOME=str(self.home), PIER_CONFIG=str(self.home / "no-pier-config.json"),
            PIER_CONTROLLER_URL=cluster.ctl.url, PIER_CONTROLLER_KEY=cluster.key,
            PIER_GIT_URL=cluster.git_http, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
            GIT_AUTHOR_NAME="pusher", GIT_AUTHOR_EMAIL="pusher@example.test",
            GIT_COMMITTER_NAME="pusher", GIT_COMMITTER_EMAIL="pusher@example.test",
            UBSAN_OPTIONS="print_stacktrace=1",
            GIT_SSH_COMMAND=(f"ssh -i {self.ssh_key} -o IdentitiesOnly=yes -o BatchMode=yes "
                             "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                             "-o LogLevel=ERROR"))
        if add_key:
            self.pier("keys", "add", f"{self.ssh_key}.pub")

    def run(self, argv, cwd=None, env=None, check=True, timeout=120, input=None):
        e = dict(self.env, **(env or {}))
        p = subprocess.run([str(a) for a in argv], cwd=cwd or self.home, env=e,
                           capture_output=True, text=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL, input=input)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"{argv} reported a sanitizer error:\n{p.stderr}"
        if check:
            assert p.returncode == 0, (f"{' '.join(map(str, argv))}: exit {p.returncode}\n"
                                       f"{p.stdout}\n{p.stderr}")
        return p

    def pier(self, *args, **kw):
        return self.run([self.c.build / "pier", *args], **kw)

    def git(self, repo, *args, **kw):
        return self.run(["git", *args], cwd=repo, **kw)

    # ---- repositories ----

    def repo(self, name, sample=None, files=None):
        """A new git repository HOME/name on branch main with one commit: a
        copy of tests/apps/<sample> and/or files {path: text}."""
        d = self.home / name
        if sample:
            shutil.copytree(APPS / sample, d, ignore=shutil.ignore_patterns(
                "node_modules", "build", "app", "*.o"))
        else:
            d.mkdir()
        for path, text in (files or {}).items():
            f = d / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        self.git(d, "init", "-q", "-b", "main")
        self.commit(d, "first")
        return d

    def commit(self, repo, msg, files=None, remove=()):
        """Writes files {path: text}, removes paths, commits everything;
        returns the new commit's id."""
        for path, text in (files or {}).items():
            f = repo / path
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        for path in remove:
            self.git(repo, "rm", "-q", "-r", path)
        self.git(repo, "add", "-A")
        self.git(repo, "commit", "-q", "--allow-empty", "-m", msg)
        return self.head(repo)

    def head(self, repo):
        return self.git(repo, "rev-parse", "HEAD").stdout.strip()

    def create(self, repo, app, strategy="one-by-one"):
        """`pier create APP` in repo (adds the remote "pier" over HTTP), then
        `pier git-remote -r ssh` with the SSH git URL (the remote "ssh")."""
        out = self.pier("create", app, cwd=repo).stdout
        assert app in out, out
        self.pier("git-remote", "-a", app, "-r", "ssh", cwd=repo,
                  env={"PIER_GIT_URL": self.c.git_ssh})
        if strategy:
            self.c.set_strategy(app, strategy)
        return out

    def remote_head(self, repo, remote="pier", ref="refs/heads/main"):
        """The commit ref points at in the remote repository (ls-remote), or None."""
        p = self.git(repo, "ls-remote", remote, ref, check=False)
        assert p.returncode == 0, p.stderr
        line = p.stdout.split()
        return line[0] if line else None

    # ---- git push ----

    def push(self, repo, remote="pier", refspec="main", args=(), env=None, timeout=600):
        """Runs `git push [args] remote refspec`, reading its stderr as it
        comes; returns a Pushed. A sanitizer report anywhere in it (the hook,
        the builder, the CLI as credential helper) fails the test."""
        argv = ["git", "push", *args, remote, refspec]
        e = dict(self.env, **(env or {}))
        started = time.monotonic()
        p = subprocess.Popen(argv, cwd=repo, env=e, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines = []
        buf = b""

        def read():
            nonlocal buf
            while True:
                chunk = p.stderr.read1(65536)
                if not chunk:
                    break
                now = time.monotonic() - started
                buf += chunk
                while True:
                    cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0),
                              default=-1)
                    if cut < 0:
                        break
                    line, buf = buf[:cut], buf[cut + 1:]
                    if line.strip():
                        lines.append((now, line.decode(errors="replace")))

        t = threading.Thread(target=read, daemon=True)
        t.start()
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        t.join(timeout=10)
        ended = time.monotonic()
        if buf.strip():
            lines.append((ended - started, buf.decode(errors="replace")))
        res = Pushed(argv, rc, lines, started, ended)
        reports = sanitizer_reports(res.stderr)
        assert not reports, f"{argv} reported a sanitizer error:\n{res.stderr}"
        return res


class Hammer(threading.Thread):
    """GETs <app>.<domain> through the router every `every` seconds on a new
    connection each time, keeping (seconds, status, body) for every answer,
    until stop()."""

    def __init__(self, cluster, app, every=0.02):
        super().__init__(daemon=True)
        self.c, self.app, self.every = cluster, app, every
        self.results = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self._halt.is_set():
            st, body = self.c.get(self.app, timeout=5)
            self.results.append((time.monotonic() - self.t0, st, body))
            self._halt.wait(self.every)

    def stop(self):
        self._halt.set()
        self.join(timeout=30)
        return self.results

    def failures(self):
        return [r for r in self.results if r[1] != 200]

    def first(self, text):
        """The moment (time.monotonic()) of the first 200 answer holding text, or None."""
        for t, st, body in self.results:
            if st == 200 and text in body:
                return self.t0 + t
        return None
