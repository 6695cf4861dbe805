"""`pierd-shim` end to end, before any agent: each test writes a bundle by
hand, starts a shim the way the agent does (its own session, fd 3 the start
pipe) in a job directory too long for a unix socket path, and checks what
the shim promises in src/host/shim.h: the start report, the job log, the
exit record (status, signal, OOM), stop and signal on the control socket,
attach to a TTY and to a stdin pipe, and that the shim outlives whoever
started it. Needs root, crun and cgroup v1 (RECIPES.md)."""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import sanitizer_reports

CRUN = "/usr/bin/crun"
HOST_DIRS = ["usr", "bin", "lib", "lib64", "etc", "sbin"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (stdout|stderr) (.*)$")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CRUN) and os.geteuid() == 0 and os.path.isdir("/sys/fs/cgroup/memory")),
    reason="needs root, crun and the cgroup v1 memory controller")


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Job:
    """A job directory with a hand-written bundle, and its shim."""

    def __init__(self, pierd, base, args, terminal=False, memory=64 << 20):
        self.pierd = pierd
        # a 64-character id, as the agent's: the socket path is then far
        # longer than the 108 bytes a sockaddr_un holds
        self.id = ("t" + uuid.uuid4().hex + uuid.uuid4().hex)[:64]
        self.crun_root = base / "crun"
        self.dir = base / "host-with-a-long-name" / "jobs" / self.id
        self.dir.mkdir(parents=True)
        self.crun_root.mkdir(exist_ok=True)
        assert len(str(self.dir / "shim.sock")) > 108
        root = base / "rootfs"
        for m in HOST_DIRS + ["tmp", "proc", "dev", "sys", "app"]:
            (root / m).mkdir(parents=True, exist_ok=True)
        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
        ] + [{"destination": "/" + m, "type": "bind", "source": "/" + m,
              "options": ["rbind", "ro"]} for m in HOST_DIRS]
        config = {
            "ociVersion": "1.0.0",
            "process": {"terminal": terminal, "user": {"uid": 65534, "gid": 65534},
                        "args": args, "env": ["PATH=/usr/bin:/bin", "TERM=xterm", "HOME=/tmp"],
                        "cwd": "/tmp", "noNewPrivileges": True},
            "root": {"path": str(root), "readonly": True},
            "hostname": "job",
            "mounts": mounts,
            "linux": {"namespaces": [{"type": t} for t in ["pid", "ipc", "uts", "mount"]],
                      "cgroupsPath": "/pier/" + self.id,
                      "resources": {"memory": {"limit": memory, "swap": memory},
                                    "pids": {"limit": 64}}},
        }
        (self.dir / "bundle").mkdir()
        (self.dir / "bundle" / "config.json").write_text(json.dumps(config, indent=1))
        (self.dir / "app").mkdir()
        self.proc = None
        self.shim_pid = None

    def argv(self, extra=()):
        return [str(self.pierd), "--dir", str(self.dir), "--id", self.id,
                "--crun", CRUN, "--crun-root", str(self.crun_root), *extra]

    def start(self, extra=(), expect="started"):
        """Starts the shim in its own session with the start pipe on fd 3,
        and returns its report line."""
        r, w = os.pipe()
        stderr = open(self.dir / "shim.log", "ab")
        # the shell puts the pipe on fd 3 and closes the original, as the
        # agent's posix_spawn does
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$@" 3>&{w} {w}>&-', "sh", *self.argv(extra)],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True)
        os.close(w)
        stderr.close()
        self.shim_pid = self.proc.pid
        line = read_line(r, 15)
        os.close(r)
        assert line.startswith(expect), f"shim said {line!r}\n{self.shim_log()}"
        return line

    def shim_log(self):
        p = self.dir / "shim.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_exit(self, timeout=10):
        """Waits for the shim to end; returns exit.json."""
        self.proc.wait(timeout=timeout)
        assert self.proc.returncode == 0, self.shim_log()
        return json.loads((self.dir / "exit.json").read_text())

    def log_lines(self):
        """[(stream, message)] of the job log."""
        out = []
        for line in (self.dir / "log").read_text().splitlines():
            m = LOG_LINE.match(line)
            assert m, f"bad log line {line!r}"
            out.append((m.group(1), m.group(2)))
        return out

    def connect(self):
        """A socket connected to shim.sock (through /proc, the path being long)."""
        fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY)
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(f"/proc/self/fd/{fd}/shim.sock")
            return s
        finally:
            os.close(fd)

    def command(self, line):
        with self.connect() as s:
            s.sendall(line.encode())
            return s.makefile().readline()

    def crun_list(self):
        out = subprocess.run([CRUN, "--root", str(self.crun_root), "list", "-q"],
                             capture_output=True, text=True).stdout
        return out.split()

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        elif not self.proc and self.shim_pid and alive(self.shim_pid):
            os.kill(self.shim_pid, signal.SIGKILL)
        subprocess.run([CRUN, "--root", str(self.crun_root), "delete", "--force", self.id],
                       capture_output=True)
        reports = sanitizer_reports(self.shim_log())
        assert not reports, f"the shim reported a sanitizer error:\n{self.shim_log()[-6000:]}"


def read_line(fd, timeout):
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        import select
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no start report after {timeout}s (got {data!r})")
        chunk = os.read(fd, 512)
        if not chunk:
            break
        data += chunk
    return data.decode()


@pytest.fixture
def job(pier_build, tmp_path):
    """A factory: job(args, terminal=False, memory=...) makes a Job; all are
    cleaned up at teardown (shim killed, container deleted) and a sanitizer
    report in a shim's log fails the test."""
    made = []

    def make(args, **kw):
        j = Job(pier_build / "pierd-shim", tmp_path, args, **kw)
        made.append(j)
        return j

    yield make
    for j in made:
        j.cleanup()


# ---- attach frames (src/host/attach.h) ----

def frame_stdin(data):
    return struct.pack(">BBI", 3, 0, len(data)) + data


class Frames:
    """Reads attach frames from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("attach stream closed")
            self.buf += chunk

    def next(self):
        self._need(1)
        t = self.buf[0]
        if t == 3:
            self._need(6)
            stream, n = struct.unpack(">BI", self.buf[1:6])
            self._need(6 + n)
            data, self.buf = self.buf[6:6 + n], self.buf[6 + n:]
            return ("data", stream, data)
        if t in (4, 5):
            self._need(5)
            (v,) = struct.unpack(">I", self.buf[1:5])
            self.buf = self.buf[5:]
            return ("exit" if t == 5 else "signal", v, b"")
        if t == 2:
            self._need(5)
            (n,) = struct.unpack(">I", self.buf[1:5])
            self._need(5 + n)
            msg, self.buf = self.buf[5:5 + n], self.buf[5 + n:]
            return ("error", 0, msg)
        raise AssertionError(f"unknown frame type {t}")

    def read_until(self, needle, timeout=5):
        """Output (all streams) until needle appears; returns it."""
        out = b""
        deadline = time.monotonic() + timeout
        while needle not in out:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            kind, _, data = self.next()
            assert kind == "data", f"got {kind} while waiting for {needle!r} in {out!r}"
            out += data
        return out

    def read_exit(self, timeout=5):
        """Frames until the exit frame: (output, closed streams, status)."""
        out, closed = b"", []
        self.sock.settimeout(timeout)
        while True:
            kind, v, data = self.next()
            if kind == "exit":
                return out, closed, v
            assert kind == "data", (kind, data)
            if data:
                out += data
            else:
                closed.append(v)


# ---- the tests ----

def test_exit_status_and_log(job):
    j = job(["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"])
    line = j.start()
    pid = int(line.split()[1])
    assert pid > 0
    shim_pid, start = (j.dir / "shim.pid").read_text().split()
    assert int(shim_pid) == j.shim_pid and int(start) > 0
    ex = j.wait_exit()
    assert ex["status"] == 3 and ex["signal"] == 0 and ex["oom"] is False
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$", ex["finished_at"])
    lines = j.log_lines()
    assert ("stdout", "out") in lines and ("stderr", "err") in lines
    assert ("stdout", "partial") in lines  # the unended line, written at the end
    assert (j.dir / "container.pid").read_text().strip() == str(pid)
    assert not (j.dir / "shim.sock").exists()
    assert j.id not in j.crun_list()
    assert not os.path.exists(f"/sys/fs/cgroup/memory/pier/{j.id}")


def test_oom(job):
    # tail keeps the whole "line" of /dev/zero in memory: far past 32 MiB
    j = job(["tail", "/dev/zero"], memory=32 << 20)
    j.start()
    ex = j.wait_exit(timeout=20)
    assert ex["oom"] is True
    assert ex["signal"] == signal.SIGKILL and ex["status"] == 128 + signal.SIGKILL


def test_stop_with_grace(job):
    # pid 1 without a handler ignores SIGTERM: the SIGKILL after the grace ends it
    a = job(["sleep", "60"])
    a.start()
    t0 = time.monotonic()
    assert a.command("stop 300\n") == "ok\n"
    ex = a.wait_exit()
    took = time.monotonic() - t0
    assert 0.25 < took < 5, took
    assert ex["status"] == 137 and ex["signal"] == 9 and ex["oom"] is False

    # with a handler it ends on SIGTERM, well before the grace
    b = job(["sh", "-c", 'trap "echo bye; exit 7" TERM; while :; do sleep 0.05; done'])
    b.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert b.command("stop 10000\n") == "ok\n"
    ex = b.wait_exit()
    assert time.monotonic() - t0 < 5
    assert ex["status"] == 7 and ex["signal"] == 0
    assert ("stdout", "bye") in b.log_lines()


def test_signal_and_bad_clients(job):
    j = job(["sh", "-c", 'trap "echo got usr1; exit 4" USR1; while :; do sleep 0.05; done'])
    j.start()
    # clients that are wrong in every way leave the shim running
    assert j.command("hello\n") == "error unknown command\n"
    assert j.command("signal 99\n") == "error bad signal number\n"
    assert j.command("stop -5\n").startswith("error")
    with j.connect() as s:
        s.sendall(b"x" * 4000)
        assert s.makefile().readline() == "error line too long\n"
    with j.connect() as s:
        s.sendall(b"sig")  # and goes away mid-line
    with j.connect() as s:
        s.sendall(b"attach\n\x09garbage")  # not a frame: dropped
        s.settimeout(5)
        assert s.recv(100) == b""
    with j.connect() as s:
        s.sendall(b"attach\n" + struct.pack(">BBI", 3, 0, 1 << 30))  # oversize
        s.shutdown(socket.SHUT_WR)
    idle = j.connect()  # says nothing at all
    assert alive(j.shim_pid)
    time.sleep(0.2)
    assert j.command(f"signal {signal.SIGUSR1}\n") == "ok\n"
    ex = j.wait_exit()
    idle.close()
    assert ex["status"] == 4
    assert ("stdout", "got usr1") in j.log_lines()
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        j.connect()


def test_attach_tty(job):
    j = job(["sh"], terminal=True)
    j.start(["--tty", "100x30"])
    with j.connect() as s:
        s.sendall(b"attach\n")
        f = Frames(s)
        s.sendall(frame_stdin(b"echo h''i\n"))
        f.read_until(b"hi\r\n")
        s.sendall(frame_stdin(b"stty size\n"))
        f.read_until(b"30 100")
        s.sendall(struct.pack(">BHH", 6, 40, 120))  # resize: rows, cols
        s.sendall(frame_stdin(b"stty size\n"))
        f.read_until(b"40 120")
        s.sendall(frame_stdin(b"exit 5\n"))
        _, closed, status = f.read_exit()
        assert status == 5 and 1 in closed
    ex = j.wait_exit()
    assert ex["status"] == 5
    # TTY output is logged as stdout, without the carriage returns (a line
    # may start with the prompt)
    lines = j.log_lines()
    assert any(m == "hi" or m.endswith("$ hi") for _, m in lines), lines
    assert all(st == "stdout" and "\r" not in m for st, m in lines), lines


def test_attach_stdin_and_backlog(job):
    j = job(["sh", "-c", "echo early; echo early-err >&2; cat; echo after"])
    j.start(["--stdin"])
    wait_for(lambda: (j.dir / "log").exists() and "early-err" in (j.dir / "log").read_text(),
             5, "the early lines")
    with j.connect() as s:
        s.sendall(b"attach\n")
        f = Frames(s)
        # what was written before anybody attached comes first
        got = f.read_until(b"early-err\n")
        assert b"early\n" in got
        s.sendall(frame_stdin(b"abc\n"))
        f.read_until(b"abc\n")
        s.sendall(struct.pack(">BBI", 3, 0, 0))  # stdin EOF: cat ends
        out, closed, status = f.read_exit()
        assert b"after" in out and status == 0 and sorted(closed) == [1, 2]
    assert j.wait_exit()["status"] == 0


def test_failed_start(job):
    j = job(["/nonexistent/app"])
    line = j.start(expect="failed")
    assert "nonexistent" in line
    j.proc.wait(timeout=10)
    assert j.proc.returncode != 0
    ex = json.loads((j.dir / "exit.json").read_text())
    assert ex["status"] == -1 and "nonexistent" in ex["error"]
    # crun's stderr is the container's: its words are in the job log too
    assert any(st == "stderr" and "nonexistent" in m for st, m in j.log_lines())
    assert j.id not in j.crun_list()
    assert not (j.dir / "shim.sock").exists()


def test_outlives_its_parent(job, tmp_path):
    j = job(["sh", "-c", "while :; do sleep 0.05; done"])
    # a parent that starts the shim as the agent does, says the pid, and is killed
    script = (
        "import os, subprocess, sys\n"
        "r, w = os.pipe()\n"
        "p = subprocess.Popen(['/bin/bash', '-c', f'exec \"$@\" 3>&{w} {w}>&-', 'sh', *sys.argv[1:]],"
        " pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,"
        " stderr=open(sys.argv[3] + '/shim.log', 'ab'), start_new_session=True)\n"
        "os.close(w)\n"
        "print(p.pid, os.read(r, 100).decode().strip(), flush=True)\n"
        "import time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, *j.argv()],
                              stdout=subprocess.PIPE, text=True)
    try:
        shim_pid, word, _ = parent.stdout.readline().split()
        assert word == "started"
        shim_pid = j.shim_pid = int(shim_pid)
        parent.kill()
        parent.wait()
        time.sleep(0.3)
        assert alive(shim_pid)
        assert j.id in j.crun_list()
        assert j.command("stop 100\n") == "ok\n"
        wait_for(lambda: (j.dir / "exit.json").exists(), 10, "exit.json")
        wait_for(lambda: not alive(shim_pid), 10, "the shim to end")
        assert json.loads((j.dir / "exit.json").read_text())["signal"] == 9
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_slow_client_and_rotation(job):
    # 10 MB of output while a client attached and never reads: the shim
    # drops that client instead of waiting for it, and the log rotates
    j = job(["sh", "-c", "sleep 0.3; head -c 10000000 /dev/zero | tr '\\0' x | fold -w 99"])
    j.start(["--log-max-bytes", "1000000", "--log-max-files", "2"])
    slow = j.connect()
    slow.sendall(b"attach\n")
    t0 = time.monotonic()
    ex = j.wait_exit(timeout=30)
    assert ex["status"] == 0 and time.monotonic() - t0 < 20
    assert sorted(p.name for p in j.dir.glob("log*")) == ["log", "log.1"]
    assert (j.dir / "log.1").stat().st_size <= 1000000
    lines = j.log_lines()
    assert lines and all(m == "x" * 99 for _, m in lines[:-1])
    # it got some output, then the shim hung up on it: no exit frame
    slow.settimeout(5)
    got = b""
    while chunk := slow.recv(1 << 20):
        got += chunk
    assert 0 < len(got) < 4 << 20
    assert b"\x05\x00\x00\x00\x00" != got[-5:]
    slow.close()
