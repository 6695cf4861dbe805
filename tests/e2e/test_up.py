"""`make up`'s script end to end: `scripts/up BUILD_DIR` starts the store,
discoverd and the host agent in the background with their PIDs and logs
under $PIER_HOME, says where they are and how to try them (a job included),
leaves running daemons alone when run again, restarts what died, and
`scripts/up --stop` stops all three, saying so when jobs keep running.

The daemons and jobs outlive the script, so nothing else stops them for us:
every test stops whatever the PID files (and what the script printed) name,
and kills the shims and containers of the jobs it ran, in a finally block,
also when it fails. This process is made their child subreaper and reaps
them, as init would, so a stopped daemon does not linger as a zombie that
`kill -0` still sees. The host agent runs real crun containers: as root."""

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import CRUN, free_port, free_port_range, http_status, sanitizer_reports

REPO = Path(__file__).resolve().parents[2]
UP = REPO / "scripts" / "up"
PR_SET_CHILD_SUBREAPER = 36
NAMES = ("store", "discoverd", "host")


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
        self.store_addr = f"127.0.0.1:{free_port()}"
        self.discoverd_addr = f"127.0.0.1:{free_port()}"
        self.host_addr = f"127.0.0.1:{free_port()}"
        self.store_url = f"http://{self.store_addr}"
        self.discoverd_url = f"http://{self.discoverd_addr}"
        self.host_url = f"http://{self.host_addr}"
        self.ports = free_port_range()  # the jobs' ports, apart from other tests'
        self.env = dict(os.environ, PIER_HOME=str(home), PIER_STORE_LISTEN=self.store_addr,
                        PIER_DISCOVERD_LISTEN=self.discoverd_addr,
                        PIER_HOST_LISTEN=self.host_addr,
                        PIER_HOST_PORTS="%d-%d" % self.ports,
                        UBSAN_OPTIONS="print_stacktrace=1")
        self.seen = set()  # every daemon PID ever named, to stop at the end
        self._done = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True)

    def run(self, *args, timeout=30):
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
            if argv and argv[0] == exe and (self.store_addr in argv or
                                            self.discoverd_addr in argv or
                                            self.host_addr in argv):
                found.add(int(d.name))
        return found

    def log(self, name):
        try:
            return (self.home / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

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

    def job(self, job_id):
        """The job as the agent's API answers it, or None."""
        try:
            with urllib.request.urlopen(f"{self.host_url}/host/jobs/{job_id}", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_job(self, job_id, state, timeout=20):
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job and job.get("state") == state:
                return job
            time.sleep(0.05)
        pytest.fail(f"job {job_id} not {state} after {timeout}s: {job}\n{self.log('host')[-4000:]}",
                    pytrace=False)

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
        """Stops every daemon this test saw, by PID, then the jobs."""
        self.seen.update(self.pids().values())
        self.seen.update(self.pierds())
        left = sorted(p for p in self.seen if alive(p))
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in left:
            if not wait_gone(pid):
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
    """The PID `scripts/up` says it started name with."""
    m = re.search(rf"^started {name} \(pid (\d+)\) on (\S+)$", p.stdout, re.M)
    assert m, f"no 'started {name}' line in:\n{p.stdout}\n{p.stderr}"
    return int(m.group(1)), m.group(2)


def shell(cmd, timeout=10):
    """Runs one line the script printed, as the user would paste it."""
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)


def until(pred, what, timeout=20):
    """Polls pred() until it returns something truthy (returned)."""
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last or time.monotonic() >= deadline:
            assert last, f"timed out after {timeout}s waiting for {what}: {last!r}"
            return last
        time.sleep(0.05)


def curl_lines(p):
    return [ln.strip() for ln in p.stdout.splitlines() if ln.strip().startswith("curl ")]


def stopped_all(pids):
    """What `scripts/up --stop` says when no job runs: host, discoverd, store."""
    return [f"stopped {name} (pid {pids[name]})" for name in ("host", "discoverd", "store")]


def test_up_try_it_again_and_stop(up):
    p = ok(up.run(up.build))
    store_pid, store_url = started(p, "store")
    disc_pid, disc_url = started(p, "discoverd")
    host_pid, host_url = started(p, "host")
    assert (store_url, disc_url, host_url) == (up.store_url, up.discoverd_url, up.host_url)
    pids = {"store": store_pid, "discoverd": disc_pid, "host": host_pid}
    assert up.pids() == pids
    assert up.pierds() == {store_pid, disc_pid, host_pid}
    assert http_status(up.store_url + "/.well-known/status") == 200
    assert http_status(up.discoverd_url + "/.well-known/status") == 200
    assert http_status(up.host_url + "/.well-known/status") == 200
    assert (up.home / "store").is_dir()
    host_id = up.host_id()
    assert re.fullmatch(r"h[0-9a-f]{12}", host_id or ""), host_id

    # The next steps name the three URLs and where the logs are.
    assert f"store      {up.store_url}" in p.stdout
    assert f"export PIER_STORE={up.store_url}" in p.stdout
    assert f"discoverd  {up.discoverd_url}" in p.stdout
    assert f"host       {up.host_url}   (host agent {host_id}; see docs/host.md)" in p.stdout
    assert f"logs and PIDs in {up.home}" in p.stdout
    assert "The controller and router" in p.stdout
    assert p.stderr == ""

    # The curl lines it prints work as pasted: register, list, watch; then
    # run a job, find it in discovery, read its log, stop it.
    curls = curl_lines(p)
    assert len(curls) == 7, p.stdout
    put, get, watch, run, hello, log, delete = curls
    assert "-X PUT" in put and f"{up.discoverd_url}/services/web/instances/one" in put
    r = shell(put)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["addr"] == "127.0.0.1:8080", r.stdout
    r = shell(get)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [(i["id"], i["addr"]) for i in listed] == [("one", "127.0.0.1:8080")], r.stdout

    # The watch streams events; its first data line holds the instance.
    w = subprocess.Popen(["bash", "-c", f"exec {watch}"], stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        for line in w.stdout:
            if line.startswith("data:"):
                break
        assert '"one"' in line and "127.0.0.1:8080" in line, line
    finally:
        w.kill()
        w.wait()

    # The job: a web server in a container on a port of the agent's range,
    # listed in discovery as 'hello'; its log holds its output.
    job_id = f"{host_id}-hello"
    assert f"-X PUT {up.host_url}/host/jobs/{job_id} " in run, run
    r = shell(run)
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert (added["id"], added["host_id"], added["state"]) == (job_id, host_id, "pending"), added
    [port] = up.wait_job(job_id, "up")["allocated_ports"]
    assert up.ports[0] <= port <= up.ports[1]

    def instances():
        r = shell(hello)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []

    found = until(instances, "the job in discovery")
    assert [(i["addr"], i["meta"]["job_id"]) for i in found] == [(f"127.0.0.1:{port}", job_id)]
    # (listed once it is up, without a check: the server may still be starting)
    until(lambda: http_status(f"http://127.0.0.1:{port}/") == 200, "the job's web server")

    def job_log():
        out = shell(log).stdout
        return out if (f" stdout hello from {job_id}\n" in out
                       and '"GET / HTTP/1.1" 200' in out) else None

    text = until(job_log, "the job's output and request in its log")
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z stdout hello from ", text), text
    shims = up.job_pids()
    assert sorted(shims.values()) == [f"container of {job_id}", f"shim of {job_id}"], shims

    # Running it again leaves all three alone and starts nothing; the job
    # example takes a new id, as this one is taken.
    p2 = ok(up.run(up.build))
    assert f"store already running (pid {store_pid})" in p2.stdout
    assert f"discoverd already running (pid {disc_pid})" in p2.stdout
    assert f"host already running (pid {host_pid})" in p2.stdout
    assert "started" not in p2.stdout
    assert up.pids() == pids
    assert up.pierds() == {store_pid, disc_pid, host_pid}
    assert json.loads(shell(get).stdout)[0]["id"] == "one"
    assert f"/host/jobs/{host_id}-hello2 " in p2.stdout, p2.stdout
    assert f"/host/jobs/{job_id} " not in p2.stdout

    # DELETE stops the job: down, out of discovery, shim and container gone.
    assert delete == f"curl -s -X DELETE {up.host_url}/host/jobs/{job_id}"
    r = shell(delete)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == job_id, r.stdout
    up.wait_job(job_id, "down")
    until(lambda: instances() == [], "the job out of discovery")
    assert all(wait_gone(pid) for pid in shims), shims

    # --stop stops all three, by PID, the agent first, and forgets them; no
    # job runs, so it says nothing about jobs.
    p3 = ok(up.run("--stop"))
    assert p3.stdout.splitlines() == stopped_all(pids)
    assert all(wait_gone(pid, 1) for pid in pids.values())
    assert up.pids() == {}
    assert up.pierds() == set()
    assert http_status(up.store_url + "/.well-known/status") is None
    assert http_status(up.discoverd_url + "/.well-known/status") is None
    assert http_status(up.host_url + "/.well-known/status") is None
    # All were stopped with SIGTERM and exited cleanly (no sanitizer report:
    # the fixture checks the logs).
    assert "level=error" not in up.log("store") + up.log("discoverd") + up.log("host")

    # Stopping again has nothing to do.
    p4 = ok(up.run("--stop"))
    assert p4.stdout == "" and p4.stderr == ""


def test_stop_leaves_jobs_running_and_says_how_to_stop_them(up):
    p = ok(up.run(up.build))
    host_pid, _ = started(p, "host")
    pids = up.pids()
    job_id = f"{up.host_id()}-hello"
    run = curl_lines(p)[3]
    r = shell(run)
    assert r.returncode == 0, r.stderr
    [port] = up.wait_job(job_id, "up")["allocated_ports"]
    until(lambda: http_status(f"http://127.0.0.1:{port}/") == 200, "the job's web server")
    jobs = up.job_pids()
    assert len(jobs) == 2, jobs

    # The agent stops, the job does not; the script says so and how to stop it.
    p2 = ok(up.run("--stop"))
    lines = p2.stdout.splitlines()
    assert lines[0] == f"stopped host (pid {host_pid})", p2.stdout
    assert lines[-2:] == stopped_all(pids)[1:], p2.stdout
    note = "\n".join(lines[1:-2])
    assert note.startswith("  1 job it runs keeps running: jobs belong to their shims"), note
    assert "docs/host.md" in note and "make up" in note
    assert f"curl -s {up.host_url}/host/jobs " in note
    m = re.search(r"curl -s -X DELETE \S+/host/jobs/ID$", note)
    assert m, note
    assert all(alive(pid) for pid in jobs), jobs
    assert http_status(f"http://127.0.0.1:{port}/") == 200
    assert up.pierds() == set()

    # As it says: up again (the agent takes the job back), DELETE stops it.
    p3 = ok(up.run(up.build))
    pids = {name: started(p3, name)[0] for name in NAMES}
    assert f"(host agent {job_id.split('-')[0]}; " in p3.stdout
    up.wait_job(job_id, "up")
    r = shell(m.group(0).replace("/ID", "/" + job_id))
    assert r.returncode == 0, r.stderr
    up.wait_job(job_id, "down")
    assert all(wait_gone(pid) for pid in jobs), jobs
    p4 = ok(up.run("--stop"))
    assert p4.stdout.splitlines() == stopped_all(pids)


def test_up_restarts_what_died(up):
    p = ok(up.run(up.build))
    store_pid, _ = started(p, "store")
    disc_pid, _ = started(p, "discoverd")
    host_pid, _ = started(p, "host")
    host_id = up.host_id()
    for pid in (disc_pid, host_pid):
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)

    p = ok(up.run(up.build))
    assert f"store already running (pid {store_pid})" in p.stdout
    new_disc, _ = started(p, "discoverd")
    new_host, _ = started(p, "host")
    assert new_disc != disc_pid and new_host != host_pid
    assert up.pids() == {"store": store_pid, "discoverd": new_disc, "host": new_host}
    assert up.pierds() == {store_pid, new_disc, new_host}
    assert http_status(up.discoverd_url + "/.well-known/status") == 200
    assert http_status(up.host_url + "/.well-known/status") == 200
    # The agent keeps its id across restarts.
    assert up.host_id() == host_id
    assert f"(host agent {host_id}; " in p.stdout
    ok(up.run("--stop"))
    assert up.pierds() == set()


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
    discoverd is not started."""
    host, port = up.store_addr.split(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(16)
        p = up.run(up.build, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"scripts/up: store did not start; the end of {up.home}/store.log says:" in p.stderr
    assert "cannot listen on" in p.stderr
    assert "started" not in p.stdout
    assert up.pierds() == set()
    assert "discoverd" not in up.pids() and "host" not in up.pids()


def test_port_taken_by_another_http_server_is_not_mistaken_for_the_store(up):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    host, port = up.store_addr.split(":")
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
    assert f"something else already answers on http://{up.store_addr}" in p.stderr
    assert "PIER_STORE_LISTEN" in p.stderr
    assert "started" not in p.stdout
