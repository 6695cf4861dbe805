"""pierslug end to end (issue 6): `pierslug build` runs as a job in a real
container of a real host agent, fetches the source from a real `pierd
blobstore`, runs buildpacks made here by the Heroku buildpack API, and
uploads the slug through a signed URL; then a job of that slug runs under
`pierslug run` and shows the environment it sees.

The agent runs on the host's binds (the test build's pierslug is linked
dynamically, with the sanitizers) and binds its --buildpacks directory,
which this test fills, at /.pier/buildpacks. Jobs are written into the
store as the scheduler writes them (docs/host.md)."""

import hashlib
import hmac
import io
import json
import os
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import SANITIZER_MARKERS, Daemon, free_port, sanitizer_reports
from test_host import JOBS, kv_update, log_msgs, put_job, wait_log, wait_state

KEY = "slug-test-key"
RESULT = "pier-build-result: "
BUILD_MEMORY = 512 << 20


# ---- the blobstore ----

def blob_url(store, path):
    return store.url + path


def signed(store, method, path, ttl=600):
    """A signed URL (lib/blobsig.h): HMAC-SHA256(key, METHOD\\nPATH\\nEXPIRES)."""
    exp = int(time.time()) + ttl
    sig = hmac.new(KEY.encode(), f"{method}\n{path}\n{exp}".encode(), hashlib.sha256).hexdigest()
    return f"{store.url}{path}?expires={exp}&sig={sig}"


def blob_put(store, path, data):
    req = urllib.request.Request(store.url + path, data=data, method="PUT",
                                 headers={"Authorization": "Bearer " + KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def blob_get(store, path):
    """(status, bytes) of GET path."""
    try:
        with urllib.request.urlopen(store.url + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tar_of(files, gz=False, top=None):
    """A tar (bytes) of {name: text or (text, mode)}; directories implied."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as t:
        for name, content in files.items():
            text, mode = content if isinstance(content, tuple) else (content, 0o644)
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo((top + "/" if top else "") + name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_tree(root, files):
    for name, content in files.items():
        text, mode = content if isinstance(content, tuple) else (content, 0o644)
        p = Path(root) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)


# ---- buildpacks made for the test ----

X = 0o755

# Detects an app with hello.txt; compiles with the cache, ENV_DIR, a
# .profile.d and an export file; releases config_vars and default types.
HELLO_BP = {
    "bin/detect": ('#!/bin/sh\n[ -f "$1/hello.txt" ] || exit 1\necho Hello\n', X),
    "bin/compile": ('''#!/bin/bash
set -e
BUILD=$1 CACHE=$2 ENV=$3
echo "-----> Hello: compiling in $(pwd) with $# args as $(id -u)"
echo "       build=$BUILD cache=$CACHE env=$ENV"
echo "       stack=$STACK version=$SOURCE_VERSION"
echo "       secret in env: ${SECRET:-unset}; secret file: $(cat "$ENV/SECRET")"
echo "       control vars: ${SLUG_URL:-none} ${SOURCE_URL:-none} ${PIER_CONFIG_VARS:-none}"
n=1
if [ -f "$CACHE/counter" ]; then n=$(( $(cat "$CACHE/counter") + 1 )); fi
echo "$n" > "$CACHE/counter"
echo "       build number $n"
echo "$n" > "$BUILD/build_number"
mkdir -p "$BUILD/.profile.d" "$BUILD/bin"
echo 'GREETING=${GREETING:-hello from profile.d}' > "$BUILD/.profile.d/10-greeting.sh"
echo 'export FAREWELL=${FAREWELL:-bye from profile.d}' > "$BUILD/.profile.d/20-farewell.sh"
echo 'export PATH=/app/bin:$PATH' > "$BUILD/.profile.d/30-path.sh"
echo 'export ORDER="${ORDER}[profile]"' > "$BUILD/.profile"
printf '#!/bin/sh\\necho mytool ran\\n' > "$BUILD/bin/mytool"
chmod +x "$BUILD/bin/mytool"
echo 'export HELLO_EXPORTED=yes' > "$(dirname "$0")/../export"
echo "pier-build-result: {\\"process_types\\":{\\"evil\\":\\"x\\"}}"
printf 'a last line without a newline'
''', X),
    "bin/release": ('''#!/bin/sh
cat <<'EOF'
---
addons: []
config_vars:
  LANG: en_US.UTF-8
  GREETING: from-release
default_process_types:
  web: echo default web
  worker: echo working
EOF
''', X),
}

NEVER_BP = {
    "bin/detect": ("#!/bin/sh\nexit 1\n", X),
    "bin/compile": ("#!/bin/sh\nexit 0\n", X),
}

FAILING_BP = {
    "bin/detect": ("#!/bin/sh\necho Failing\n", X),
    "bin/compile": ("#!/bin/sh\necho about to fail\necho on stderr >&2\nexit 3\n", X),
}

SLOW_BP = {
    "bin/detect": ("#!/bin/sh\necho Slow\n", X),
    # A child that holds the output open, so the whole group must go.
    "bin/compile": ("#!/bin/sh\necho sleeping\nsleep 300 &\nsleep 300\n", X),
}

# Writes a big incompressible file (BIG_BYTES), for the slug limit.
BIG_BP = {
    "bin/detect": ("#!/bin/sh\necho Big\n", X),
    "bin/compile": ("#!/bin/sh\nhead -c ${BIG_BYTES:-300000} /dev/urandom > \"$1/noise\"\n", X),
}

# Looks for the build's secrets where a buildpack of the same user could:
# pierslug's /proc files (it is PID 1 of the build job and the compile's
# parent) and the environment it passes on.
SNOOP_BP = {
    "bin/detect": ("#!/bin/sh\necho Snoop\n", X),
    "bin/compile": (r'''#!/bin/bash
for f in /proc/1/environ /proc/$PPID/environ; do
    if tr '\0' '\n' < "$f" 2>/dev/null | grep -q -e s3cret -e sig= -e PIER_CONFIG_VARS; then
        echo "secret found in $f"
    else
        echo "no secret in $f"
    fi
done
if cat /proc/1/environ >/dev/null 2>&1; then
    echo "environ of pid 1 readable"
else
    echo "environ of pid 1 closed"
fi
if { echo 'pier-build-result: {"forged":true}' > /proc/1/fd/1; } 2>/dev/null; then
    echo "fd 1 of pid 1 open"
else
    echo "fd 1 of pid 1 closed"
fi
echo "pier vars: $(env | grep -o '^PIER_[A-Z_]*' | sort | tr '\n' ' ')"
echo "env dir: $(ls "$3" | tr '\n' ' ')"
sleep 2 # longer than the PIER_COMPILE_TIMEOUT config var the test sets
echo "compile ran on"
''', X),
}

# Leaves a process behind (in a session of its own) and orphans that end
# while the compile runs: zombies unless pierslug, their reaper, reaps them.
FORKER_BP = {
    "bin/detect": ("#!/bin/sh\necho Forker\n", X),
    "bin/compile": (r'''#!/bin/bash
setsid sleep 1000 &
for i in 1 2 3 4 5; do ( sleep 0.1 & ); done
sleep 1.5
echo "zombies during the compile: $(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)"
''', X),
}

# Counts what is left of the buildpacks before it.
CENSUS_BP = {
    "bin/detect": ("#!/bin/sh\necho Census\n", X),
    "bin/compile": (r'''#!/bin/bash
n=0
for p in /proc/[0-9]*; do
    [[ $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) == "sleep 1000 " ]] && n=$((n + 1))
done
echo "sleeps left: $n"
echo "zombies: $(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)"
''', X),
}

# bin/release names from $1/release.yml.
RELEASER_BP = {
    "bin/detect": ("#!/bin/sh\necho Releaser\n", X),
    "bin/compile": ("#!/bin/sh\nexit 0\n", X),
    "bin/release": ('#!/bin/sh\ncat "$1/release.yml"\n', X),
}

APP = {
    "hello.txt": "hello\n",
    "Procfile": "# processes\nweb: echo web on $PORT\r\n\nclock: echo tick\n",
    ".slugignore": "*.psd\n/private/\n",
    "art.psd": "big art",
    "docs/more.psd": "more art",
    "private/key": "do not ship",
    "lib/private/keep": "shipped: not at the root",
}


@pytest.fixture
def slugenv(pier_store, start_pierd, start_host, tmp_path):
    """A blobstore, and an agent whose /.pier/buildpacks are the test's."""
    bps = tmp_path / "buildpacks"
    for name, files in (("never", NEVER_BP), ("hello", HELLO_BP), ("failing", FAILING_BP),
                        ("slow", SLOW_BP), ("big", BIG_BP), ("snoop", SNOOP_BP),
                        ("forker", FORKER_BP), ("census", CENSUS_BP),
                        ("releaser", RELEASER_BP)):
        write_tree(bps / name, files)
    (bps / "order").write_text("# tried in this order\nnever\nhello\n")
    blobs = start_pierd("blobstore", ["--dir", tmp_path / "blobs", "--key", KEY])
    agent = start_host(pier_store, args=["--buildpacks", str(bps)])
    return agent, blobs, tmp_path


class Build:
    """One `pierslug build` job: its record, log lines and result."""

    def __init__(self, agent, rec, msgs):
        self.rec, self.msgs = rec, msgs
        self.text = "\n".join(msgs)
        results = [m for m in msgs if m.startswith(RESULT)]
        self.result = json.loads(results[-1][len(RESULT):]) if results else None
        reports = sanitizer_reports(self.text)
        assert not reports, f"pierslug reported a sanitizer error:\n{self.text[-6000:]}"


_seq = [0]


def build(env_, app, ok=True, name=None, extra=None, timeout=90):
    """Uploads app (a dict of files) as the source and runs pierslug build."""
    agent, blobs, _ = env_
    _seq[0] += 1
    bid = name or f"b{_seq[0]}"
    blob_put(blobs, f"/sources/app/{bid}.tar", tar_of(app))
    env = {
        "SOURCE_URL": signed(blobs, "GET", f"/sources/app/{bid}.tar"),
        "SLUG_URL": signed(blobs, "PUT", f"/slugs/app/{bid}.tgz"),
        "CACHE_URL": signed(blobs, "GET", "/caches/app.tgz"),
        "CACHE_PUT_URL": signed(blobs, "PUT", "/caches/app.tgz"),
        "SOURCE_VERSION": "0123456789abcdef",
        "STACK": "pier-bookworm",
        "PIER_CONFIG_VARS": "SECRET",
        "SECRET": "s3cret",
    }
    env.update(extra or {})
    env = {k: v for k, v in env.items() if v is not None}
    job = put_job(agent, bid, ["/.pier/pierslug", "build"], env=env, ports=[],
                  resources={"memory": {"limit": BUILD_MEMORY}})
    rec = wait_state(agent, job, ("down", "crashed", "failed"), timeout=timeout)
    b = Build(agent, rec, log_msgs(agent, job))
    if ok:
        assert rec["state"] == "down" and rec.get("exit_status") == 0 and b.result, \
            f"{rec}\n{b.text}"
    else:
        assert rec["state"] == "crashed" and rec.get("exit_status") == 1 and not b.result, \
            f"{rec}\n{b.text}"
    b.id = bid
    b.slug_path = f"/slugs/app/{bid}.tgz"
    return b


def run_slug(env_, b, args, env=None, name=None):
    """Runs a job of b's slug with args after /.pier/pierslug run; its log."""
    agent, blobs, _ = env_
    _seq[0] += 1
    job = put_job(agent, name or f"run{_seq[0]}", ["/.pier/pierslug", "run", *args],
                  env={"DYNO": "web.1", **(env or {})},
                  artifact={"slug": blobs.url + b.slug_path},
                  resources={"memory": {"limit": 128 << 20}})
    rec = wait_state(agent, job, ("down", "crashed"), timeout=30)
    msgs = log_msgs(agent, job)
    return rec, msgs


def slug_names(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        return {m.name[2:] if m.name.startswith("./") else m.name for m in t.getmembers()}


# ---- the tests ----

def test_build_then_run_a_slug(slugenv):
    env_ = slugenv
    agent, blobs, _ = env_
    b = build(env_, APP, extra={"BUILDPACK_URL": "/.pier/buildpacks/hello"})
    t = b.text
    assert "-----> Fetching the source of 0123456789ab" in b.msgs, t
    assert "-----> Deleting 3 files matching .slugignore patterns" in b.msgs, t
    assert "-----> Hello app detected" in b.msgs, t
    # compile: cwd BUILD_DIR, three args, unprivileged, STACK and
    # SOURCE_VERSION set, config vars only as files, no control vars
    assert "-----> Hello: compiling in /app with 3 args as 65534" in b.msgs, t
    assert "       build=/app cache=/tmp/cache env=/tmp/env" in b.msgs, t
    assert "       stack=pier-bookworm version=0123456789abcdef" in b.msgs, t
    assert "       secret in env: unset; secret file: s3cret" in b.msgs, t
    assert "       control vars: none none none" in b.msgs, t
    assert "       build number 1" in b.msgs, t
    # a buildpack cannot forge the result; its unfinished line is ended
    assert ' pier-build-result: {"process_types":{"evil":"x"}}' in b.msgs, t
    assert "a last line without a newline" in b.msgs, t
    assert "       Procfile declares types     -> web, clock" in b.msgs, t
    assert "       Default types for buildpack -> web, worker" in b.msgs, t
    assert b.msgs[-1].startswith(RESULT), t

    r = b.result
    assert r["process_types"] == {"web": "echo web on $PORT", "worker": "echo working",
                                  "clock": "echo tick"}, r
    assert r["config_vars"] == {"LANG": "en_US.UTF-8", "GREETING": "from-release"}, r
    assert r["buildpacks"] == ["/.pier/buildpacks/hello"], r

    # the slug: what the blobstore holds is what the builder hashed
    status, data = blob_get(blobs, b.slug_path)
    assert status == 200
    assert r["slug_size"] == len(data) and r["slug_sha256"] == hashlib.sha256(data).hexdigest()
    names = slug_names(data)
    for want in ("hello.txt", "Procfile", "build_number", ".profile.d/10-greeting.sh",
                 "bin/mytool", "lib/private/keep"):
        assert want in names, names
    for gone in ("art.psd", "docs/more.psd", "private", "private/key"):
        assert gone not in names, names

    # the cache: a second build finds what the first one left
    b2 = build(env_, APP, extra={"BUILDPACK_URL": "/.pier/buildpacks/hello"})
    assert "       build number 2" in b2.msgs, b2.text
    assert "-----> Restored the build cache" in b2.msgs, b2.text

    # the runner: profile.d and .profile sourced, HOME=/app, config vars
    # win over the scripts' defaults, one arg is a command line
    show = ('echo "home=$HOME pwd=$(pwd) dyno=$DYNO port=${PORT:-none}"; '
            'echo "greeting=$GREETING"; echo "farewell=$FAREWELL"; echo "order=$ORDER"; '
            'echo "lang=${LANG:-unset}"; mytool; echo "exported=${HELLO_EXPORTED:-no}"')
    rec, msgs = run_slug(env_, b, [show], env={"FAREWELL": "config var wins"})
    assert rec.get("exit_status") == 0, (rec, msgs)
    port = rec["allocated_ports"][0] if rec.get("allocated_ports") else None
    assert f"home=/app pwd=/app dyno=web.1 port={port}" in msgs, msgs
    assert "greeting=hello from profile.d" in msgs, msgs
    assert "farewell=config var wins" in msgs, msgs
    assert "order=[profile]" in msgs, msgs
    assert "lang=unset" in msgs, msgs     # release config_vars are the receiver's business
    assert "mytool ran" in msgs and "exported=no" in msgs, msgs

    # several args are an argv, as given (no shell)
    rec, msgs = run_slug(env_, b, ["printf", "%s|", "a b", "$HOME"])
    assert rec.get("exit_status") == 0, (rec, msgs)
    assert msgs == ["a b|$HOME|"], msgs
    # the exit status passes through
    rec, msgs = run_slug(env_, b, ["echo out; exit 7"])
    assert rec.get("exit_status") == 7 and "out" in msgs, (rec, msgs)


def test_detection_and_failures(slugenv):
    env_ = slugenv
    agent, blobs, _ = env_
    # no BUILDPACK_URL: the first shipped buildpack (in order) that detects
    b = build(env_, {"hello.txt": "hi\n"}, extra={"PIER_CONFIG_VARS": None, "SECRET": None})
    assert "-----> Hello app detected" in b.msgs, b.text
    assert b.result["buildpacks"] == ["hello"], b.result
    assert b.result["process_types"] == {"web": "echo default web", "worker": "echo working"}

    # nothing detects
    b = build(env_, {"README": "no hello here\n"}, ok=False)
    assert " !     Build failed: no buildpack detected: none of the shipped buildpacks " \
           "(never, hello) applies to this app; set BUILDPACK_URL or add a .buildpacks file" \
           in b.msgs, b.text
    assert blob_get(blobs, b.slug_path)[0] == 404

    # an explicit buildpack that does not apply
    b = build(env_, {"README": "x\n"}, ok=False,
              extra={"BUILDPACK_URL": "/.pier/buildpacks/hello"})
    assert any("app not compatible with buildpack /.pier/buildpacks/hello" in m
               for m in b.msgs), b.text

    # compile exits 3: its output (stdout and stderr) and the reason
    b = build(env_, {"x": "1"}, ok=False, extra={"BUILDPACK_URL": "/.pier/buildpacks/failing"})
    assert "about to fail" in b.msgs and "on stderr" in b.msgs, b.text
    assert " !     Build failed: Failing: compile failed (exit 3)" in b.msgs, b.text
    assert blob_get(blobs, b.slug_path)[0] == 404

    # a Procfile with a syntax error, named by its line
    b = build(env_, {"hello.txt": "hi\n", "Procfile": "web: ok\nnot a process line\n"},
              ok=False)
    assert any(m.startswith(" !     Build failed: Procfile line 2: ") for m in b.msgs), b.text

    # the compile time limit stops the compile and all it started
    t0 = time.monotonic()
    b = build(env_, {"x": "1"}, ok=False, extra={"BUILDPACK_URL": "/.pier/buildpacks/slow",
                                                 "PIER_COMPILE_TIMEOUT": "2"})
    assert time.monotonic() - t0 < 30
    assert " !     Build failed: Slow: compile timed out after 2 s and was stopped" in b.msgs, \
        b.text

    # a build stopped (desired_state down) ends at once, its compile too,
    # though pierslug is the container's PID 1
    blob_put(blobs, "/sources/app/stop.tar", tar_of({"x": "1"}))
    job = put_job(agent, "stop", ["/.pier/pierslug", "build"], ports=[], stop_grace=20,
                  env={"SOURCE_URL": signed(blobs, "GET", "/sources/app/stop.tar"),
                       "SLUG_URL": signed(blobs, "PUT", "/slugs/app/stop.tgz"),
                       "BUILDPACK_URL": "/.pier/buildpacks/slow"})
    wait_log(agent, job, "sleeping", timeout=30)
    t0 = time.monotonic()
    kv_update(agent.store, JOBS + job, lambda r: r.update(desired_state="down"))
    rec = wait_state(agent, job, ("down", "crashed"), timeout=15)
    assert time.monotonic() - t0 < 5, rec
    assert " !     Build stopped" in log_msgs(agent, job)

    # a slug over the limit is never stored, not even cut short
    b = build(env_, {"x": "1"}, ok=False, extra={"BUILDPACK_URL": "/.pier/buildpacks/big",
                                                 "PIER_SLUG_MAX_BYTES": "100000"})
    assert any(m.startswith(" !     Build failed: slug larger than 100 kB compressed")
               for m in b.msgs), b.text
    assert blob_get(blobs, b.slug_path)[0] == 404

    # the source cannot be fetched: the URL is named
    b = build(env_, {"x": "1"}, ok=False,
              extra={"SOURCE_URL": blobs.url + "/missing/app.tar"})
    assert any("the source: fetching " + blobs.url + "/missing/app.tar: not found" in m
               for m in b.msgs), b.text
    # a signed URL past its time: the upload is refused before its body is
    # sent, and the blobstore's reason is shown (not a broken pipe)
    b = build(env_, {"hello.txt": "x"}, ok=False,
              extra={"SLUG_URL": signed(blobs, "PUT", "/slugs/app/late.tgz", ttl=-10),
                     "BUILDPACK_URL": "/.pier/buildpacks/big", "BIG_BYTES": "8000000"})
    assert any(m.startswith(" !     Build failed: the slug: uploading to " + blobs.url +
                            "/slugs/app/late.tgz: ") and "the signed URL expired" in m
               for m in b.msgs), b.text

    # a source that is not a tar: tar's reason, not curl's write error
    blob_put(blobs, "/sources/app/garbage.tar", b"not a tar at all\n" * 1000)
    b = build(env_, {"x": "1"}, ok=False,
              extra={"SOURCE_URL": signed(blobs, "GET", "/sources/app/garbage.tar")})
    assert any("cannot unpack it: tar: " in m for m in b.msgs), b.text
    assert not any("(23)" in m for m in b.msgs), b.text

    # a shorthand that is no URL is refused, naming the forms and the
    # shipped buildpacks; a shipped one's bare name is accepted
    b = build(env_, {"hello.txt": "x"}, ok=False, extra={"BUILDPACK_URL": "heroku/nodejs"})
    assert any(m.startswith(' !     Build failed: buildpack "heroku/nodejs" is not a URL or a '
                            "path: give an http(s), git, ssh or file URL") and
               m.endswith("or the name of a shipped buildpack (never, hello)") for m in b.msgs), \
        b.text
    b = build(env_, {"hello.txt": "x"}, extra={"BUILDPACK_URL": "hello"})
    assert "-----> Hello app detected" in b.msgs and b.result["buildpacks"] == ["hello"], b.text


def test_buildpacks_cannot_reach_the_secrets(slugenv):
    """A buildpack runs as pierslug's user, and pierslug is PID 1 of the
    build job and the compile's parent: its /proc files (environ, fd/) are
    closed to the buildpack, and the secrets are gone from its environment
    block. A variable of the job cannot move pierslug's directories, a
    config var is never one of its settings, and buildpacks get no PIER_
    variable but the two every job has."""
    b = build(slugenv, {"x": "1"}, extra={
        "BUILDPACK_URL": "/.pier/buildpacks/snoop",
        "PIER_SLUG_ROOT": "/tmp/elsewhere",
        "PIER_CONFIG_VARS": "SECRET,PIER_COMPILE_TIMEOUT",
        "PIER_COMPILE_TIMEOUT": "1",
        "PIER_SOMETHING": "x"})
    t = b.text
    assert "no secret in /proc/1/environ" in b.msgs, t
    assert "environ of pid 1 closed" in b.msgs, t
    assert "fd 1 of pid 1 closed" in b.msgs, t
    assert "pier vars: PIER_HOST_ID PIER_JOB_ID " in b.msgs, t
    assert "env dir: PIER_COMPILE_TIMEOUT SECRET " in b.msgs, t
    assert "compile ran on" in b.msgs, t
    assert "forged" not in b.result, b.result


def test_a_long_result_line(slugenv):
    """The result line is written whole, however long (here past 4 KiB,
    with non-ASCII commands)."""
    cmds = {f"p{i:02d}": f"echo {'ünïcødé ✓ ' * 6}{i} && exec sleep {i}"
            for i in range(1, 26)}
    procfile = "".join(f"{k}: {v}\n" for k, v in cmds.items())
    b = build(slugenv, {"hello.txt": "hi", "Procfile": procfile},
              extra={"BUILDPACK_URL": "/.pier/buildpacks/hello"})
    assert 4096 < len(b.msgs[-1]) < 10000, len(b.msgs[-1])
    assert b.result["process_types"] == {"web": "echo default web", "worker": "echo working",
                                         **cmds}, b.result


def test_nothing_a_compile_started_outlives_it(slugenv):
    """A process a compile leaves in a session of its own is killed when
    the compile ends, and orphans are reaped while it runs (pierslug is
    their reaper as the job's PID 1)."""
    b = build(slugenv, {"x": "1"},
              extra={"BUILDPACK_URL": "/.pier/buildpacks/forker,/.pier/buildpacks/census"})
    assert "zombies during the compile: 0" in b.msgs, b.text
    assert "sleeps left: 0" in b.msgs and "zombies: 0" in b.msgs, b.text


def test_release_names_are_checked(slugenv):
    """Process types and config vars from bin/release must be names that
    can be used, or the build fails naming the buildpack."""
    cases = [("default_process_types:\n  'web app': run\n",
              'Releaser: bin/release: default_process_types: "web app" is not a process type'),
             ("config_vars:\n  1BAD: x\n",
              'Releaser: bin/release: config_vars: "1BAD" is not a variable name'),
             ("default_process_types:\n  web: ''\n",
              "Releaser: bin/release: default_process_types: web has no command")]
    for yml, needle in cases:
        b = build(slugenv, {"release.yml": yml}, ok=False,
                  extra={"BUILDPACK_URL": "/.pier/buildpacks/releaser"})
        assert any(m.startswith(" !     Build failed: " + needle) for m in b.msgs), b.text
    b = build(slugenv, {"release.yml": "config_vars:\n  _OK1: x\ndefault_process_types:\n"
                                       "  web-2_b: run\n"},
              extra={"BUILDPACK_URL": "/.pier/buildpacks/releaser"})
    assert b.result["process_types"] == {"web-2_b": "run"}, b.result
    assert b.result["config_vars"] == {"_OK1": "x"}, b.result


def test_every_job_gets_pierslug_and_the_buildpacks_read_only(slugenv, pier_store, start_host):
    agent, _, tmp = slugenv
    script = ("test -x /.pier/pierslug && echo slug; cat /.pier/buildpacks/order | head -2; "
              "touch /.pier/buildpacks/x 2>/dev/null || echo bp-ro; "
              "touch /.pier/pierslug 2>/dev/null || echo slug-ro; /.pier/pierslug; echo rc=$?")
    job = put_job(agent, "binds", ["/bin/sh", "-c", script], ports=[])
    wait_state(agent, job, "down")
    msgs = log_msgs(agent, job)
    for want in ("slug", "# tried in this order", "never", "bp-ro", "slug-ro", "rc=2"):
        assert want in msgs, msgs
    assert any(m.startswith("usage: pierslug build") for m in msgs), msgs
    assert not (tmp / "buildpacks" / "x").exists()

    # a --buildpacks that is not there: a warning, and jobs go without
    other = start_host(pier_store, name="nobp", args=["--buildpacks", str(tmp / "missing")])
    assert "buildpacks directory not found" in other.stderr_text()
    job = put_job(other, "nobp", ["/bin/sh", "-c", "test -e /.pier/buildpacks/order || echo none"],
                  ports=[])
    wait_state(other, job, "down")
    assert "none" in log_msgs(other, job)


@pytest.fixture
def git_daemon(tmp_path):
    """`git daemon` serving tmp_path/git on a free port."""
    root = tmp_path / "git"
    root.mkdir()
    port = free_port()
    d = Daemon("git-daemon", ["git", "daemon", "--reuseaddr", "--export-all",
                              f"--base-path={root}", "--listen=127.0.0.1", f"--port={port}",
                              str(root)], tmp_path / "gitd")

    def ready():
        import socket
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    d.start(ready)
    yield root, f"git://127.0.0.1:{port}"
    d.stop()


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_several_buildpacks_from_urls(slugenv, git_daemon):
    """.buildpacks: a .tgz URL (with a top directory, as code hosts make
    them) and a git URL at a tag; the first one's export reaches the
    second's compile; the last one's release sets the types."""
    env_ = slugenv
    agent, blobs, _ = env_
    first = {
        "bin/detect": ("#!/bin/sh\necho First\n", X),
        "bin/compile": ('#!/bin/sh\necho "export FROM_FIRST=\'first was here\'" > '
                        '"$(dirname "$0")/../export"\necho first compiled\n', X),
        "bin/release": ("#!/bin/sh\necho 'default_process_types: {web: first}'\n", X),
    }
    blob_put(blobs, "/buildpacks/first.tgz", tar_of(first, gz=True, top="first-main"))
    repo = git_daemon[0] / "second.git"
    work = git_daemon[0] / "second-work"
    write_tree(work, {
        "bin/detect": ("#!/bin/sh\necho Second\n", X),
        "bin/compile": ('#!/bin/sh\necho "second sees: $FROM_FIRST"\n', X),
        "bin/release": ("#!/bin/sh\nprintf 'default_process_types:\\n  web: second\\n'\n", X),
    })
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "v1")
    git(work, "tag", "v1")
    (work / "bin" / "compile").write_text("#!/bin/sh\necho not this one\nexit 9\n")
    git(work, "commit", "-q", "-am", "broken")
    git(work.parent, "clone", "-q", "--bare", str(work), str(repo))

    urls = [blobs.url + "/buildpacks/first.tgz", git_daemon[1] + "/second.git#v1"]
    # the app's own .curlrc and .gitconfig do not apply to pierslug's curl
    # and git (they would send both to a port where nothing listens)
    app = {"x": "1", ".buildpacks": "# two\n" + "\n".join(urls) + "\n",
           ".curlrc": "proxy=http://127.0.0.1:9\n",
           ".gitconfig": '[url "http://127.0.0.1:9/"]\n\tinsteadOf = git://\n'}
    b = build(env_, app)
    assert "-----> First app detected" in b.msgs and "first compiled" in b.msgs, b.text
    assert "-----> Second app detected" in b.msgs, b.text
    assert "second sees: first was here" in b.msgs, b.text
    assert "not this one" not in b.text
    assert b.result["buildpacks"] == urls, b.result
    assert b.result["process_types"] == {"web": "second"}, b.result

    # BUILDPACK_URL wins over .buildpacks, comma-separated; a git URL
    # without a ref takes the default branch
    b = build(env_, app, ok=False, extra={"BUILDPACK_URL": git_daemon[1] + "/second.git"})
    assert "not this one" in b.msgs, b.text
    assert " !     Build failed: Second: compile failed (exit 9)" in b.msgs, b.text

    # a git repository by its path in the build container, or a file://
    # URL, at a tag: the repository is another user's (root's; the job runs
    # as 65534), which git refuses unless told it is safe
    git(work.parent, "clone", "-q", "--bare", str(repo), str(env_[2] / "buildpacks" / "second.git"))
    for second in ("/.pier/buildpacks/second.git#v1", "file:///.pier/buildpacks/second.git#v1"):
        b = build(env_, {"x": "1"}, extra={"BUILDPACK_URL": urls[0] + "," + second})
        assert "second sees: first was here" in b.msgs, b.text
        assert b.result["buildpacks"] == [urls[0], second], b.result


def test_leak_check_outside_a_container(slugenv, pier_build):
    """LeakSanitizer cannot stop the world under a container's seccomp
    profile (pierslug turns it off by default in the sanitizer build), so
    the builder's paths, good and bad, run once more on the host with the
    leak check on (PIER_SLUG_ROOT puts its directories under a scratch
    root)."""
    agent, blobs, tmp = slugenv
    root = tmp / "root"
    (root / "app").mkdir(parents=True)
    (root / ".pier").mkdir()
    (root / ".pier" / "buildpacks").symlink_to(tmp / "buildpacks")
    cases = [({}, 0, "-----> Saving the build cache"),
             ({"BUILDPACK_URL": str(tmp / "buildpacks" / "failing")}, 1,
              "compile failed (exit 3)"),
             ({"BUILDPACK_URL": str(tmp / "buildpacks" / "hello")}, 0, "build number 2"),
             ({"PIER_SLUG_MAX_BYTES": "10"}, 1, "slug larger than 10 bytes"),
             ({"SOURCE_URL": blobs.url + "/nothing.tar"}, 1, "not found (404)"),
             # as root (the test), the snoop can read pierslug's /proc files:
             # the secrets' text is gone from its environment block
             ({"BUILDPACK_URL": str(tmp / "buildpacks" / "snoop")}, 0, "no secret in /proc/")]
    blob_put(blobs, "/sources/leaks.tar", tar_of(APP))
    for extra, status, needle in cases:
        env = {
            "PATH": os.environ["PATH"], "PIER_SLUG_ROOT": str(root),
            "SOURCE_URL": signed(blobs, "GET", "/sources/leaks.tar"),
            "SLUG_URL": signed(blobs, "PUT", "/slugs/leaks.tgz"),
            "CACHE_URL": signed(blobs, "GET", "/caches/leaks.tgz"),
            "CACHE_PUT_URL": signed(blobs, "PUT", "/caches/leaks.tgz"),
            "PIER_CONFIG_VARS": "SECRET", "SECRET": "s3cret",
            "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1",
        }
        env.update(extra)
        p = subprocess.run([str(pier_build / "pierslug"), "build"], env=env, capture_output=True,
                           text=True, timeout=120)
        out = p.stdout + p.stderr
        assert not any(m in out for m in SANITIZER_MARKERS), out[-6000:]
        assert p.returncode == status and needle in out, (extra, out[-4000:])
        assert "secret found" not in out, out
        last = p.stdout.splitlines()[-1]
        assert last.startswith(RESULT if status == 0 else " !     Build failed: "), out
