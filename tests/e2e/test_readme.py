"""README.md's quickstart, run as it is written, so the README cannot
drift from what pier does.

The block under the `<!-- quickstart -->` marker is run with bash, one
line after the other (`set -e`: the first line that fails fails the test),
from a directory that stands for the repository's root: it has `build`
(the build under test) and `tests` (the repository's). Before it, what
`make up` does after building: `scripts/up build` with a fresh PIER_HOME
and CLI config. It uses `make up`'s own ports (router 80 and 443, store
7001, host agent 1113, git SSH 2222, jobs 20000-20999), which no other
test takes. Everything is stopped at the end, also on failure. As root."""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from cluster_util import PierUp

REPO = Path(__file__).resolve().parents[2]
HELLO = Path("/tmp/hello")  # the quickstart's own path
PORTS = (80, 443, 7001, 1113, 2222)


def listening(port):
    """Whether something listens on the port (a connection in TIME_WAIT
    from an earlier run does not count: the daemons bind with
    SO_REUSEADDR)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def quickstart():
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- quickstart[^>]*-->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m, "README.md has no <!-- quickstart --> block"
    lines = [l for l in m.group(1).splitlines() if l.strip()]
    assert len(lines) >= 10, lines
    return lines


def test_quickstart_names_what_the_issue_asks():
    cmds = " ".join(quickstart())
    for what in ("pier create", "git push pier main", "scale web=", " log", "env set",
                 "rollback", "route add", " run "):
        assert what in cmds, f"the quickstart has no '{what}'"


@pytest.fixture
def cluster(pier_build, tmp_path):
    busy = [p for p in PORTS if listening(p)]
    assert not busy, f"ports {busy} are taken: the quickstart runs `make up` on its own ports " \
                     "(stop the cluster that holds them: make down)"
    root = tmp_path / "repo"
    root.mkdir()
    (root / "build").symlink_to(pier_build)
    (root / "tests").symlink_to(REPO / "tests")
    c = PierUp(pier_build, tmp_path, name="default", domain="pier.localhost")
    c.state = tmp_path / "pier-home"
    c.env.update(PIER_HOME=str(c.state), GIT_AUTHOR_NAME="pier test",
                 GIT_AUTHOR_EMAIL="test@pier.localhost", GIT_COMMITTER_NAME="pier test",
                 GIT_COMMITTER_EMAIL="test@pier.localhost")
    c.repo = root
    shutil.rmtree(HELLO, ignore_errors=True)
    try:
        yield c
    finally:
        c.cleanup()
        shutil.rmtree(HELLO, ignore_errors=True)


def test_readme_quickstart_runs_as_written(cluster):
    c = cluster
    up = subprocess.run([str(REPO / "scripts" / "up"), str(c.build)], env=c.env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, f"scripts/up: {up.stdout}\n{up.stderr}"

    script = "set -euo pipefail\n"
    for line in quickstart():
        # each line is echoed first, so a failure shows where it was
        script += f"echo '+++ {line.replace(chr(39), '')}'\n{line}\necho\n"
    p = subprocess.run(["bash", "-c", script], env=c.env, cwd=c.repo, capture_output=True,
                       text=True, timeout=600)
    out = p.stdout + p.stderr
    c.outputs.append(("quickstart", out))
    assert p.returncode == 0, f"the quickstart failed (exit {p.returncode}):\n{out[-6000:]}"

    # What each step says it does, in what it printed.
    steps = re.split(r"^\+\+\+ ", p.stdout, flags=re.M)[1:]
    by_line = {s.split("\n", 1)[0].strip(): s.split("\n", 1)[1] for s in steps}

    def said(prefix):
        for line, said_ in by_line.items():
            if line.startswith(prefix):
                return said_
        raise AssertionError(f"no output of a line starting with {prefix!r}: {list(by_line)}")

    curls = [said_ for line, said_ in by_line.items() if line.startswith("curl")]
    assert len(curls) == 3, list(by_line)
    assert "hello from nodejs" in curls[0], curls[0]
    assert "NODE_ENV=staging" in curls[1], curls[1]
    assert "hello from nodejs" in curls[2] and "NODE_ENV=staging" not in curls[2], curls[2]
    assert re.search(r"\bv\d+\.\d+", said("pier -a hello run")), said("pier -a hello run")
    ps = said("pier -a hello ps")
    assert len(re.findall(r"\bweb\b.*\bup\b", ps)) == 2, ps
    assert not c.sanitizer_findings(), c.sanitizer_findings()
