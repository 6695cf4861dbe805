"""Fixtures for pier's end-to-end tests.

Every test starts the servers it needs on free loopback ports under its own
temporary directory and stops them by PID at the end, also on failure.
Daemons built with the sanitizers are stopped with SIGTERM so LeakSanitizer
reports, and a sanitizer report on their stderr fails the test.

Run with `/usr/bin/python3 -m pytest tests/e2e` and PIER_BUILD_DIR set to
the meson build directory (the one holding `pierd` and `pier`).
"""

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",  # UndefinedBehaviorSanitizer
)

_handed_out = set()

# Ports the tests pick. free_port() hands out odd ports of the kernel's
# ephemeral range, as bind(0) does (the kernel keeps the even ones for the
# local ends of outgoing connections); free_port_range() hands out blocks
# of HOST_PORTS, for a host agent's jobs or a `pier up` cluster (below the
# ephemeral range, above cluster_util's and `make up`'s 10000-20999). Under
# pytest-xdist each worker takes a slice of its own of both, so two workers never hand out
# the same port, even one that a test holds unbound for a while; within a
# slice the walk starts at a random place, so separate runs rarely meet.
HOST_PORTS = (21000, 32000)


def _ephemeral_ports():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
        return lo, hi + 1
    except (OSError, ValueError):
        return 32768, 61000


FREE_PORTS = _ephemeral_ports()


def xdist_worker():
    """INDEX, COUNT of this pytest-xdist worker; 0, 1 outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not name.startswith("gw") or not name[2:].isdigit() or count < 1:
        return 0, 1
    return int(name[2:]) % count, count


def _bindable(port, reuse=False):
    """Whether nothing holds port on loopback or the wildcard address: a
    listener, or (unless reuse: a server sets SO_REUSEADDR, as pierd and
    most do) a connection lingering in TIME_WAIT."""
    for addr in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


_free = {}  # the walk of this worker's odd ports: "ports", "next"


def free_port():
    """A loopback TCP port nothing listens on, not handed out before in this
    run (until all of this worker's ports were) nor by another worker."""
    if not _free:
        import random
        index, count = xdist_worker()
        odd = range(FREE_PORTS[0] | 1, FREE_PORTS[1], 2)
        size = len(odd) // count
        _free["ports"] = odd[index * size:(index + 1) * size]
        _free["next"] = random.randrange(size)
    ports = _free["ports"]
    for _ in range(len(ports)):
        port = ports[_free["next"] % len(ports)]
        _free["next"] += 1
        if _free["next"] % len(ports) == 0:
            _handed_out.clear()  # once round: ports are handed out again
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")


# The files that take longest (serial seconds, measured with --durations),
# longest first. Under pytest-xdist with --dist loadfile a file is a unit of
# work handed to the next free worker in collection order, so these go
# first: a long file started last would run on alone at the end.
SLOW_FILES = (
    "test_git_hook.py",  # 103 s
    "test_up.py",  # whole `pier up` clusters
    "test_cli_up.py",
    "test_git_push.py",  # 71 s
    "test_controller_events.py",  # 68 s
    "test_gitreceive_ssh.py",  # 57 s
    "test_host.py",  # 37 s
    "test_controller_jobs.py",  # 31 s
    "test_scheduler.py",  # 31 s
    "test_gitreceive_http.py",  # 29 s
    "test_deploy.py",  # 29 s
    "test_cli_apps.py",  # 26 s
)


def pytest_collection_modifyitems(items):
    """Under pytest-xdist, the SLOW_FILES first (each file's tests stay
    together and in their order); run alone, the files' own order."""
    if xdist_worker()[1] == 1:
        return
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


def sanitizer_reports(text):
    """The lines of text that start a sanitizer report."""
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


def http_status(url, timeout=1.0):
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return None


class Daemon:
    """A server process started for a test.

    Its stdout and stderr go to files in its directory (a pipe could fill up
    and block it). start() waits until ready() says so; stop() sends SIGTERM
    to its PID, waits, and kills it if it does not exit in time.
    """

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.stdout_path = self.workdir / f"{name}.stdout"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.proc = None
        self.returncode = None

    def start(self, ready, timeout=15.0):
        """Starts the process and waits until ready() is true."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while "
                                   f"starting:\n{self.stderr_tail()}")
            if ready():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.stderr_tail()}")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stops the process by PID; returns its exit status. Safe to call twice."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines=60):
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def check_sanitizers(self):
        """Fails the test when the daemon's stderr holds a sanitizer report."""
        text = self.stderr_text()
        if sanitizer_reports(text):
            pytest.fail(f"{self.name} (pid {self.pid}) reported a sanitizer error:\n{text[-8000:]}",
                        pytrace=False)


class Pierd(Daemon):
    """`pierd SUBCOMMAND --listen 127.0.0.1:PORT [--data-dir DIR] [args]`, ready
    when GET /.well-known/status answers 200."""

    KEEPS_FILES = {"store"}

    def __init__(self, build_dir, subcommand, workdir, args=(), env=None, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(workdir) / "data"
        # Only subcommands that keep files take --data-dir (others refuse it).
        files = ["--data-dir", self.data_dir] if subcommand in self.KEEPS_FILES else []
        argv = [Path(build_dir) / "pierd", subcommand, "--listen", f"127.0.0.1:{self.port}",
                *files, *args]
        super().__init__(f"pierd-{subcommand}", argv, workdir, env)

    def start(self, timeout=15.0):
        return super().start(lambda: http_status(self.url + "/.well-known/status") == 200,
                             timeout)


def start_etcd(workdir, name="etcd"):
    """An etcd 3.4 member on free ports, tuned to elect itself fast."""
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    d = Daemon(name, [
        "/usr/bin/etcd", "--name", name, "--data-dir", Path(workdir) / "data",
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"{name}=http://127.0.0.1:{peer}",
        "--heartbeat-interval=10", "--election-timeout=100",
        # as docs/store.md asks: quiet watches hear from etcd every 5 s, so
        # the client's silence window (30 s) tells a dead connection apart
        "--experimental-watch-progress-notify-interval=5s",
    ], workdir)
    d.url = url
    return d.start(lambda: http_status(url + "/health") == 200)


@pytest.fixture(scope="session")
def pier_build():
    """The meson build directory ($PIER_BUILD_DIR)."""
    d = os.environ.get("PIER_BUILD_DIR")
    if not d:
        pytest.fail("PIER_BUILD_DIR is not set (the meson build directory)", pytrace=False)
    return Path(d).resolve()


@pytest.fixture(name="free_port")
def free_port_fixture():
    """The free_port function, for tests that pick their own ports."""
    return free_port


@pytest.fixture
def start_pierd(pier_build, tmp_path):
    """A factory: start_pierd("store", args=[...]) starts a pierd subcommand
    and returns its Pierd. All are stopped at teardown (last started first),
    and a sanitizer report from any of them fails the test."""
    started = []

    def start(subcommand, args=(), env=None, name=None):
        exe = pier_build / "pierd"
        if not exe.exists():
            pytest.fail(f"{exe} has not been built", pytrace=False)
        workdir = tmp_path / (name or f"{subcommand}-{len(started)}")
        d = Pierd(pier_build, subcommand, workdir, args=args, env=env)
        started.append(d)
        return d.start()

    yield start
    for d in reversed(started):
        d.stop()
    for d in started:
        d.check_sanitizers()


@pytest.fixture
def etcd(tmp_path):
    """The URL of a fresh single-member etcd."""
    d = start_etcd(tmp_path / "etcd")
    try:
        yield d.url
    finally:
        d.stop()


@pytest.fixture
def pier_store(start_pierd):
    """The URL of a fresh `pierd store`."""
    return start_pierd("store", name="store").url


# ---- host agents (`pierd host`) ----

CRUN = "/usr/bin/crun"
_host_seq = [0]
_port_blocks = set()


def new_host_id():
    """A host id no other agent in this run (or, most likely, any earlier
    run) used: crun's state is keyed by it under /run/pier/<id>."""
    _host_seq[0] += 1
    return f"t{_host_seq[0]}{os.urandom(3).hex()}"


def free_port_range(n=20):
    """LO, HI of n ports nothing binds now: a block aligned to n in this
    worker's slice of HOST_PORTS (a slice by address, so blocks of any size
    from two workers never overlap), not handed out before in this run
    (until all of the slice's blocks of that size were). Waits up to 30 s
    for one to be free. A port in TIME_WAIT counts as free: the ports of
    earlier tests' jobs linger so for a minute, and a block of 1000 (a
    `pier up` cluster's) would seldom be found otherwise."""
    import random
    index, count = xdist_worker()
    size = (HOST_PORTS[1] - HOST_PORTS[0]) // count
    start = HOST_PORTS[0] + index * size
    first, end = -(-start // n), (start + size) // n  # the blocks wholly inside
    blocks = list(range(first, end))
    if not blocks:
        raise RuntimeError(f"no block of {n} ports in {start}-{start + size - 1}")
    random.shuffle(blocks)
    deadline = time.monotonic() + 30  # what held a block may be going away
    while True:
        for again in (False, True):
            if again:  # all handed out once: hand them out again
                _port_blocks.difference_update((b, n) for b in blocks)
            for block in blocks:
                lo = block * n
                if (block, n) not in _port_blocks and \
                        all(_bindable(p, reuse=True) for p in range(lo, lo + n)):
                    _port_blocks.add((block, n))
                    return lo, lo + n - 1
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    raise RuntimeError(f"no free range of {n} ports in {start}-{start + size - 1}")


def store_get(store, key):
    """The value (bytes) of key in the store (etcd v3 JSON gateway), or None."""
    import base64
    import json
    req = urllib.request.Request(store + "/v3/kv/range", method="POST",
                                 data=json.dumps({"key": base64.b64encode(key.encode()).decode()})
                                 .encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def _pid_file(path):
    """The pid in the first field of a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class HostAgent(Daemon):
    """`pierd host` with its own data dir, id, port range and API port.

    Each start() logs to a new pair of files (host.N.stderr), so a restart
    keeps what the earlier run said; check_sanitizers reads all of them,
    and the shims' logs (DATA/jobs/*/shim.log) too. Ready when its status
    answers 200 and its record is in the store."""

    def __init__(self, build_dir, store, workdir, host_id=None, ttl=None, tags=None,
                 ports=None, args=(), env=None):
        self.store = store
        self.id = host_id or new_host_id()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(workdir) / "data"
        self.ports = ports or free_port_range()
        self.ttl = ttl
        self.crun_root = Path("/run/pier") / self.id / "crun"
        argv = [Path(build_dir) / "pierd", "host", "--store", store, "--data-dir", self.data_dir,
                "--listen", f"127.0.0.1:{self.port}", "--id", self.id,
                "--ports", f"{self.ports[0]}-{self.ports[1]}"]
        if tags:
            argv += ["--tags", ",".join(f"{k}={v}" for k, v in tags.items())]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        super().__init__(f"host-{self.id}", [*argv, *args], workdir, env)
        self.runs = 0
        self.stderr_paths = []

    def record(self):
        """The host record in the store (bytes), or None."""
        try:
            return store_get(self.store, "/pier/v1/hosts/" + self.id)
        except OSError:
            return None

    def start(self, timeout=30.0, wait_record=True):
        """Starts the agent; ready when its API answers and (wait_record)
        its host record is in the store."""
        self.runs += 1
        self.stdout_path = self.workdir / f"host.{self.runs}.stdout"
        self.stderr_path = self.workdir / f"host.{self.runs}.stderr"
        self.stderr_paths.append(self.stderr_path)
        return super().start(lambda: http_status(self.url + "/.well-known/status") == 200
                             and (not wait_record or self.record() is not None), timeout)

    def kill(self):
        """SIGKILL, as a crash would; jobs keep running."""
        return self.stop(signal.SIGKILL)

    def job_dirs(self):
        d = self.data_dir / "jobs"
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def crun_list(self):
        """The ids of the containers crun knows under this agent's root."""
        if not self.crun_root.is_dir():
            return []
        p = subprocess.run([CRUN, "--root", str(self.crun_root), "list"], capture_output=True,
                           text=True, timeout=30)
        return [line.split()[0] for line in p.stdout.splitlines()[1:] if line.strip()]

    def all_stderr(self):
        out = []
        for p in self.stderr_paths:
            try:
                out.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def stderr_text(self):
        return self.all_stderr()

    def cleanup_jobs(self):
        """Kills every shim and container this agent started, and deletes
        them from crun, so nothing outlives the test."""
        ids = set()
        for d in self.job_dirs():
            ids.add(d.name)
            # Only processes that are still what the files say: the shim
            # (its command line) and the container's init (its cgroup).
            for name, mark, proc_file in (("shim.pid", "shim", "cmdline"),
                                          ("container.pid", d.name, "cgroup")):
                pid = _pid_file(d / name)
                if not pid or pid <= 1:
                    continue
                try:
                    if mark.encode() in Path(f"/proc/{pid}/{proc_file}").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass
        ids.update(self.crun_list())
        for job_id in sorted(ids):
            subprocess.run([CRUN, "--root", str(self.crun_root), "delete", "--force", job_id],
                           capture_output=True, timeout=30)
        # crun's state directory, once it holds nothing
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.crun_root.parent)],
                       capture_output=True, timeout=30)

    def check_sanitizers(self):
        texts = [(f"{self.name} (pid {self.pid})", self.all_stderr())]
        for d in self.job_dirs():
            try:
                texts.append((f"the shim of {d.name}", (d / "shim.log").read_text(errors="replace")))
            except FileNotFoundError:
                pass
        for who, text in texts:
            if sanitizer_reports(text):
                pytest.fail(f"{who} reported a sanitizer error:\n{text[-8000:]}", pytrace=False)


@pytest.fixture
def start_host(start_pierd, pier_build, tmp_path):
    """A factory: start_host(store, ttl=2, tags={...}, host_id=..., args=[...])
    starts a `pierd host` agent (as root: it runs real crun containers) and
    returns its HostAgent (.url, .id, .data_dir, .ports, .kill(), .start()
    again to restart it with the same data dir and id). At teardown every
    agent is stopped (SIGTERM, so sanitizers report), then every shim and
    container it started is killed and deleted from crun; a sanitizer report
    from an agent or a shim fails the test. Torn down before the store."""
    if os.geteuid() != 0:
        pytest.fail("the host agent's tests run as root (they start crun containers)",
                    pytrace=False)
    agents = []

    def start(store, name=None, wait_record=True, **kw):
        exe = pier_build / "pierd"
        if not exe.exists():
            pytest.fail(f"{exe} has not been built", pytrace=False)
        workdir = tmp_path / (name or f"host-{len(agents)}")
        a = HostAgent(pier_build, store, workdir, **kw)
        agents.append(a)
        return a.start(wait_record=wait_record)

    yield start
    for a in reversed(agents):
        a.stop()
    for a in agents:
        a.cleanup_jobs()
    for a in agents:
        a.check_sanitizers()


# ---- a stack root made by `pier stack build` ----

STACK_CACHE = Path(os.environ.get("PIER_TEST_STACK", "/var/cache/pier-test/stack-bookworm"))
STACK_PACKAGES = "ca-certificates"


@contextlib.contextmanager
def stack_lock():
    """Holds an exclusive lock on STACK_CACHE (a file beside it) while the
    block runs: pytest-xdist workers, and separate runs on one machine,
    build or check the shared stack one at a time."""
    STACK_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{STACK_CACHE}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def built_stack(pier_build):
    """A real stack root, built with `pier stack build` once per machine
    (about 30 s from Debian's archive) and reused by later runs: the build
    is idempotent once its marker is written. A folder left half-built by
    an interrupted run is removed first. Built under stack_lock(), so two
    workers that want it at once build it once."""
    marker = STACK_CACHE / "etc" / "pier-stack"
    with stack_lock():
        if STACK_CACHE.exists() and not marker.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(STACK_CACHE)], check=True)
        p = subprocess.run([str(pier_build / "pier"), "stack", "build", str(STACK_CACHE),
                            "--packages", STACK_PACKAGES],
                           capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and marker.exists(), p.stderr[-3000:]
    return STACK_CACHE
