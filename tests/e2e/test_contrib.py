"""contrib/: the systemd units are valid for systemd (systemd-analyze
verify, with the unit's /usr/bin/pier pointed at the build), and say what
they run: pier up at start and reload, pier down at stop."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "contrib" / "systemd").glob("pier*"))


def test_units_are_there():
    names = {u.name for u in UNITS}
    assert {"pier.service", "pier-watch.service", "pier-watch.timer"} <= names, names


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit, pier_build, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian package systemd; scripts/deps)")
    for u in UNITS:  # a unit's Requisite= and After= name the others
        text = u.read_text().replace("/usr/bin/pier ", f"{pier_build / 'pier'} ")
        text = text.replace("/usr/bin/systemctl", shutil.which("systemctl") or "/bin/systemctl")
        (tmp_path / u.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)],
                       capture_output=True, text=True, timeout=60)
    # verify also reports on units it loads from the system; only this
    # unit's own lines count.
    mine = [l for l in (r.stdout + r.stderr).splitlines() if unit.name in l]
    assert not mine, "\n".join(mine)


def test_pier_service_runs_up_and_down():
    text = (REPO / "contrib" / "systemd" / "pier.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)
    reload_ = re.search(r"^ExecReload=(.*)$", text, re.M).group(1)
    stop = re.search(r"^ExecStop=(.*)$", text, re.M).group(1)
    assert start.startswith("/usr/bin/pier up --state-dir") and reload_ == start, (start, reload_)
    assert stop.startswith("/usr/bin/pier down --state-dir"), stop
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text


def complete(pier_build, *words):
    """What contrib/bash-completion/pier offers for the words typed so far
    (the last one being completed), with the build's pier on PATH."""
    script = REPO / "contrib" / "bash-completion" / "pier"
    arr = " ".join(f"'{w}'" for w in ("pier", *words))
    r = subprocess.run(
        ["bash", "-c", f'source "{script}"; COMP_WORDS=({arr}); COMP_CWORD={len(words)}; _pier; '
                       'printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=60,
        env={"PATH": f"{pier_build}:/usr/bin:/bin", "HOME": "/nonexistent",
             "PIER_CONFIG": "/nonexistent/config.json"})
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_bash_completion_follows_pier_help(pier_build):
    help_ = subprocess.run([pier_build / "pier", "help"], capture_output=True, text=True).stdout
    commands = set(re.findall(r"^  ([a-z][a-z-]+) ", help_, re.M))
    assert {"up", "down", "status", "scale", "route", "cluster"} <= commands, commands
    assert commands <= complete(pier_build, "")
    assert complete(pier_build, "sc") == {"scale"}
    assert {"--join", "--store", "--port-base", "--state-dir"} <= complete(pier_build, "up", "--")
    assert {"add", "remove", "update"} <= complete(pier_build, "route", "")
    assert complete(pier_build, "help", "ro") == {"rollback", "route"}
