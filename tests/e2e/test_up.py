"""`make up`'s script end to end: `scripts/up BUILD_DIR` is `pier up
--state-dir $PIER_HOME`, which starts the store and the host agent, runs the
bootstrap (the controller, discoverd, the blobstore, the router, the git
receiver and the scheduler as jobs, recorded as system apps) and prints a
`git push` workflow. The test follows what it prints, literally: the CLI
through the controller's route on the router, a push that builds and
deploys the Node.js sample, the page through the router. Then `scripts/up
--stop` (pier down) stops everything, and `scripts/up` again brings the
same cluster back: the app answers again without a new push.

Everything is stopped at the end, also on failure: pier down, then
whatever the pid files and job directories still name. As root."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster_util import delete_containers
from conftest import free_port_range, sanitizer_reports

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "scripts" / "up"
WAIT = 120


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def until(pred, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last or time.monotonic() >= deadline:
            assert last, f"timed out after {timeout}s waiting for {what}: {last!r}"
            return last
        time.sleep(0.2)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


class Up:
    def __init__(self, build, tmp_path):
        self.build = build
        self.home = tmp_path / "pier-home"
        self.base = free_port_range(1000)[0]
        self.http = self.base + 2
        self.domain = "up-test.localhost"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIER_")}
        self.env.update(PIER_HOME=str(self.home), PIER_PORT_BASE=str(self.base),
                        PIER_DOMAIN=self.domain, PIER_CONFIG=str(tmp_path / "up-config.json"),
                        PIER_KEY="not-the-cluster-key", UBSAN_OPTIONS="print_stacktrace=1")

    def run(self, *args, timeout=300):
        return subprocess.run([str(UP), *map(str, args)], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def processes(self):
        mark = str(self.home).encode()
        out = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                argv = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if mark in argv and alive(int(d.name)):
                out.add(int(d.name))
        return out

    def job_pids(self):
        out = set()
        jobs = self.home / "host" / "jobs"
        for d in (jobs.iterdir() if jobs.is_dir() else []):
            for f in ("shim.pid", "container.pid"):
                try:
                    pid = int((d / f).read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue
                if alive(pid):
                    out.add(pid)
        return out

    def cleanup(self):
        try:
            self.run("--stop", self.build, timeout=120)
        finally:
            for pid in self.processes() | self.job_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                host_id = (self.home / "host" / "host-id").read_text().strip()
            except OSError:
                host_id = None
            if host_id:
                jobs = self.home / "host" / "jobs"
                delete_containers(host_id, [d.name for d in jobs.iterdir()] if jobs.is_dir() else [])


@pytest.fixture
def up(pier_build, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("scripts/up starts the host agent, which runs as root", pytrace=False)
    u = Up(pier_build, tmp_path)
    try:
        yield u
    finally:
        u.cleanup()
        for name in ("store", "host"):
            try:
                text = (u.home / f"{name}.log").read_text(errors="replace")
            except FileNotFoundError:
                continue
            if sanitizer_reports(text):
                pytest.fail(f"{name} reported a sanitizer error:\n{text[-8000:]}", pytrace=False)


class Steps:
    """The commands printed after "Point the CLI", run as a user pastes them
    into bash, with a HOME of their own and none of this process's PIER_,
    GIT_ or SSH_ variables."""

    def __init__(self, text, tmp_path):
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("Point the CLI"))
        self.lines = [ln[2:] for ln in lines[at:] if ln.startswith("  ")]
        self.home = tmp_path / "user-home"
        self.home.mkdir(exist_ok=True)
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = Up Test\n\temail = up-test@example.test\n")
        self.app_dir = self.home / "hello"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PIER_", "GIT_", "SSH_")) and k != "XDG_CONFIG_HOME"}
        self.env.update(HOME=str(self.home), UBSAN_OPTIONS="print_stacktrace=1")

    def line(self, prefix):
        found = [ln for ln in self.lines if ln.startswith(prefix)]
        assert len(found) == 1, (prefix, self.lines)
        return found[0]

    def sh(self, *cmds, cwd=None, timeout=600):
        script = "\n".join([self.line("export PATH="), self.line("export PIER_CONTROLLER_URL="),
                            "set -e", *cmds])
        p = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(cwd or self.home))
        assert not sanitizer_reports(p.stdout + p.stderr), p.stdout + p.stderr
        return p

    def app(self, *cmds, **kw):
        return self.sh(*cmds, cwd=self.app_dir, **kw)


def answers(steps, fetch):
    r = steps.sh(fetch)
    return r.returncode == 0 and "<p>hello from nodejs</p>" in r.stdout


def test_up_runs_the_printed_workflow_and_comes_back_after_down(up, tmp_path):
    p = ok(up.run(up.build))
    assert re.search(r"^store: started, pid \d+, ", p.stdout, re.M), p.stdout
    assert re.search(r"^host: started, pid \d+, ", p.stdout, re.M), p.stdout
    # The API and git over https (the router's https port, base + 3), the
    # cluster's CA named for the CLI (and git, through the remote's config).
    ctl = f"https://controller.{up.domain}:{up.http + 1}"
    git = f"https://git.{up.domain}:{up.http + 1}"
    assert f"  controller  {ctl}   " in p.stdout
    assert f"  git         {git}   " in p.stdout
    assert "stop with 'pier down'" in p.stdout

    steps = Steps(p.stdout, tmp_path)
    assert steps.lines[:2] == [
        f'export PATH="{up.build}:$PATH"',
        f"export PIER_CONTROLLER_URL={ctl} PIER_CONTROLLER_KEY=$(cat {up.home}/key) "
        f"PIER_GIT_URL={git} PIER_CONTROLLER_CA={up.home}/ca/ca.crt"], steps.lines

    # The system apps are there, each healthy.
    r = ok(steps.sh("pier status"))
    for name in ("controller", "discoverd", "blobstore", "router", "gitreceive", "scheduler"):
        assert re.search(rf"^{name} +healthy$", r.stdout, re.M), r.stdout

    copy = steps.line("cp -r ")
    assert copy.startswith(f"cp -r {REPO}/tests/apps/nodejs hello && cd hello && "), copy
    ok(steps.sh(copy))
    r = ok(steps.app(steps.line("pier create hello")))
    assert f"{git}/hello.git" in r.stderr, r.stderr
    r = steps.app(steps.line("git push pier main"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^remote: =====> hello deployed \(release v1 / ", r.stderr, re.M), r.stderr
    fetch = steps.line(f"curl -s http://hello.{up.domain}:{up.http}/")
    until(lambda: answers(steps, fetch), "the app's page through the router")
    r = ok(steps.app(steps.line("pier -a hello ps")))
    assert re.search(r"^\S+ +web +up ", r.stdout, re.M), r.stdout

    # Down: nothing of this cluster runs, nothing answers.
    ok(up.run("--stop", up.build))
    assert up.processes() == set()
    assert up.job_pids() == set()
    assert not answers(steps, fetch)

    # Up again: the same cluster, the app back without a push.
    p2 = ok(up.run(up.build))
    assert re.search(r"^host: started, pid \d+, ", p2.stdout, re.M), p2.stdout
    until(lambda: answers(steps, fetch), "the app's page after pier down and up")
    r = ok(steps.sh("pier apps"))
    assert "hello" in r.stdout

    # Up once more on the running cluster: found, nothing changes.
    p3 = ok(up.run(up.build))
    assert "found the cluster" in p3.stdout and "started" not in p3.stdout.split("\n\n")[0]


def test_missing_build_dir(up, tmp_path):
    missing = tmp_path / "no-build"
    p = up.run(missing)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == f"scripts/up: {missing}/pier is missing; run 'make build' first\n"
    assert not up.home.exists()


@pytest.mark.parametrize("text", ["", "\n", "two words\n", "it's\n"])
def test_a_key_file_that_holds_no_key_is_refused(up, text):
    up.home.mkdir(parents=True)
    (up.home / "key").write_text(text)
    p = up.run(up.build)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout == ""
    assert (f"pier: {up.home}/key holds no key (one line of letters, digits, '.', '_' or '-'); "
            "remove it to make a new one\n") == p.stderr
    assert up.processes() == set()
    assert (up.home / "key").read_text() == text
