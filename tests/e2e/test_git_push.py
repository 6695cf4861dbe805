"""`git push` to a running app, end to end (issue 6's acceptance): a real
one-host cluster (push_util.PushCluster: store, discoverd, host agent,
scheduler, controller with a domain, router, blobstore, gitreceive over
HTTP and SSH), the real `git` client and the real `pier` CLI.

- each sample app in tests/apps (one per shipped buildpack) is pushed over
  SSH and over HTTP (the first push over one, a code change over the other)
  and answers through the router with its own content; the code change is
  served once the push returns, with no failed request to the app during
  the deploy (a request every 20 ms), and `pier rollback` brings the first
  version back, again with no failed request;
- a custom buildpack named by BUILDPACK_URL (a git repository made here,
  cloned by the builder at a tag) detects, compiles with the app's cache (the
  second build finds what the first left there), releases config_vars that
  become defaults of the app's env (never overriding a var set before), and
  its .profile.d script runs before the web process;
- failures (no buildpack detected, a compile that fails, a Procfile with a
  syntax error, an unknown SSH key, a wrong HTTP key) fail the push with the
  reason on git's stderr, leave the branch where it was and the old release
  serving;
- a push to another branch does not deploy; two pushes to one app at once
  never build at the same time and the app runs what its main branch holds;
  pushes to two apps build at the same time.

One cluster serves the whole module (each test makes its own apps); it is
stopped by PID at the end and a sanitizer report from any daemon, shim or
push fails the run. The nodejs sample needs the npm registry.
"""

import os
import re
import subprocess
import threading
import time

import pytest

from push_util import (Hammer, PushCluster, User, push_failed, push_ok)

TIMINGS = []  # (what, seconds) of every push, printed at the end

# sample -> (the name its buildpack's detect prints, the file holding its text)
SAMPLES = {
    "procfile": ("Procfile", "server.js"),
    "static": ("Static", "public/index.html"),
    "c": ("C", "server.c"),
    "nodejs": ("Node.js", "server.js"),
}

CUSTOM_DETECT = """#!/usr/bin/env bash
if [ -f "$1/custom.txt" ]; then echo "Custom Thing"; exit 0; fi
exit 1
"""

CUSTOM_COMPILE = """#!/usr/bin/env bash
set -euo pipefail
build=$1 cache=$2 env=$3
echo "-----> Compiling with the custom buildpack"
echo "       STACK=$STACK SOURCE_VERSION=$SOURCE_VERSION cwd=$PWD"
if [ -f "$cache/stamp" ]; then
    echo "       the cache holds: $(cat "$cache/stamp")"
else
    echo "       the cache is empty"
fi
echo "cached-by-$SOURCE_VERSION" >"$cache/stamp"
if [ -f "$env/KEEP_ME" ]; then
    echo "       ENV_DIR/KEEP_ME=$(cat "$env/KEEP_ME")"
else
    echo "       ENV_DIR/KEEP_ME is missing"
fi
echo "       environment KEEP_ME=${KEEP_ME:-unset}"
if [ -f "$build/sleep.txt" ]; then
    echo "       sleeping $(cat "$build/sleep.txt") s"
    sleep "$(cat "$build/sleep.txt")"
fi
if [ -f "$build/fail.txt" ]; then
    echo "       failing as fail.txt asks"
    exit 3
fi
mkdir -p "$build/.profile.d"
echo 'export PROFILE_VAR="set by .profile.d with HOME=$HOME"' >"$build/.profile.d/custom.sh"
echo "$SOURCE_VERSION" >"$build/compiled.txt"
"""

CUSTOM_RELEASE = """#!/usr/bin/env bash
cat <<'YAML'
---
addons: []
config_vars:
  CUSTOM_DEFAULT: from-release
  KEEP_ME: from-buildpack
default_process_types:
  web: node server.js
YAML
"""

CUSTOM_SERVER = """"use strict";
const fs = require("fs");
const http = require("http");
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`hello from custom VERSION
compiled=${fs.readFileSync("compiled.txt", "utf8").trim()}
PROFILE_VAR=${process.env.PROFILE_VAR}
CUSTOM_DEFAULT=${process.env.CUSTOM_DEFAULT}
KEEP_ME=${process.env.KEEP_ME}
`);
});
server.listen(Number(process.env.PORT), "0.0.0.0");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"""

CUSTOM_URL = "file:///.pier/buildpacks/custom.git#v1"


@pytest.fixture(scope="module")
def cluster(pier_build, tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.fail("git push tests run as root (the host agent starts crun containers)",
                    pytrace=False)
    c = PushCluster(pier_build, tmp_path_factory.mktemp("push-cluster"))
    make_custom_buildpack(c)
    yield c
    c.stop()
    # The time each push took, on the terminal (outside pytest's capture).
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr and capman and TIMINGS:
        with capman.global_and_fixture_disabled():
            tr.write_line("")
            tr.write_line("git push timings (push start to push end):")
            for what, secs in TIMINGS:
                tr.write_line(f"  {secs:6.2f} s  {what}" if secs else f"           {what}")
    bad = c.sanitizer_failures()
    if bad:
        pytest.fail("\n\n".join(f"{who} reported a sanitizer error:\n{text[-6000:]}"
                                for who, text in bad), pytrace=False)


def make_custom_buildpack(c):
    """A bare git repository custom.git in the agent's buildpacks directory
    (the build container sees it at /.pier/buildpacks/custom.git), with the
    custom buildpack at the tag v1 and a broken one on main (so a clone that
    ignored the #v1 would fail)."""
    work = c.workdir / "custom-bp-work"
    work.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="bp", GIT_AUTHOR_EMAIL="bp@example.test",
               GIT_COMMITTER_NAME="bp", GIT_COMMITTER_EMAIL="bp@example.test",
               GIT_CONFIG_NOSYSTEM="1")

    def git(*args, cwd=work):
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    for name, text in (("detect", CUSTOM_DETECT), ("compile", CUSTOM_COMPILE),
                       ("release", CUSTOM_RELEASE)):
        f = work / "bin" / name
        f.parent.mkdir(exist_ok=True)
        f.write_text(text)
        f.chmod(0o755)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "custom buildpack")
    git("tag", "v1")
    (work / "bin" / "detect").write_text("#!/bin/sh\necho 'main is not v1' >&2\nexit 1\n")
    git("commit", "-q", "-am", "broken on main")
    bare = c.buildpacks / "custom.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=c.workdir)
    # Jobs run as uid 65534: git refuses to read a repository someone else
    # owns ("dubious ownership"), so the repository is theirs, as a
    # buildpack repository on a git server would be the server's.
    for p in [bare, *bare.rglob("*")]:
        os.lchown(p, 65534, 65534)


@pytest.fixture
def user(cluster, tmp_path):
    return User(cluster, tmp_path / "home")


def timed(what, p):
    TIMINGS.append((what, p.elapsed))
    return p


def remote_text(p):
    return "\n".join(text for _, text in p.remote())


def deployed(p, app, c):
    """Checks the push says the app is deployed and where."""
    text = remote_text(p)
    assert re.search(rf"^=====> {app} deployed", text, re.M), p
    assert f"http://{app}.{c.domain}" in text, p


def change(repo, rel, old, new):
    f = repo / rel
    text = f.read_text()
    assert old in text, (rel, old)
    f.write_text(text.replace(old, new))


def hammered(c, app, fn, settle=1.0):
    """Runs fn() while a thread GETs the app through the router every 20 ms,
    and for `settle` s after it returns; returns (fn's result, the
    hammer, the moment fn returned)."""
    h = Hammer(c, app)
    h.start()
    time.sleep(0.2)  # a few answers before anything changes
    try:
        out = fn()
        done = time.monotonic()
        time.sleep(settle)
    finally:
        h.stop()
    return out, h, done


def assert_switch(h, done, old, new):
    """Every answer was a 200 from the old or the new version, and from the
    moment the command returned only the new one answered."""
    assert h.results, "no request was made"
    fails = h.failures()
    assert not fails, (f"{len(fails)} of {len(h.results)} requests failed during the deploy: "
                       f"{fails[:5]}")
    for t, st, body in h.results:
        assert old in body or new in body, (t, body)
    after = [body for t, _, body in h.results if h.t0 + t > done + 0.05]
    assert after, "no request after the push returned"
    stale = [b for b in after if new not in b]
    assert not stale, f"{len(stale)} of {len(after)} answers after the push were old: {stale[:2]}"


# ---- each sample app, over SSH and HTTP ----

@pytest.mark.parametrize("sample,first,second", [
    ("procfile", "ssh", "pier"),
    ("static", "pier", "ssh"),
    ("c", "ssh", "pier"),
    ("nodejs", "pier", "ssh"),
])
def test_sample_app_push_change_rollback(cluster, user, sample, first, second):
    c = cluster
    detected, text_file = SAMPLES[sample]
    app = f"{sample}-sample"
    hello = f"hello from {sample}"
    repo = user.repo(app, sample)
    user.create(repo, app)
    rev1 = user.head(repo)

    # The first push builds with the buildpack detection picks and starts web.
    p = timed(f"{sample}: first push over {'http' if first == 'pier' else 'ssh'}",
              push_ok(user.push(repo, first)))
    text = remote_text(p)
    assert f"-----> {detected} app detected" in text, p
    deployed(p, app, c)
    body = c.wait_content(app, hello, timeout=15)
    rel1 = c.release_id(app)
    meta = c.release(rel1)["meta"]
    assert (meta.get("git"), meta.get("rev")) == ("true", rev1), meta
    assert user.remote_head(repo) == rev1
    if sample == "nodejs":
        # escape-html (a dependency) at run time, ms (a devDependency) at build time
        assert "escape-html says &lt;b&gt;pier &amp; npm&lt;/b&gt;" in body, body
        assert "built with ms: 1m" in body, body
        assert "NODE_ENV=production" in body, body

    # A code change over the other transport: served once the push
    # returns, and no request fails meanwhile.
    change(repo, text_file, hello, f"{hello} v2")
    rev2 = user.commit(repo, "v2")
    p, h, done = hammered(c, app, lambda: push_ok(user.push(repo, second)))
    timed(f"{sample}: code change over {'http' if second == 'pier' else 'ssh'} "
          f"({len(h.results)} requests, none failed)", p)
    deployed(p, app, c)
    assert_switch(h, done, hello, f"{hello} v2")
    rel2 = c.release_id(app)
    assert rel2 != rel1
    assert c.release(rel2)["meta"]["rev"] == rev2
    assert user.remote_head(repo) == rev2

    # pier rollback: the first release again, no request failing.
    r, h, done = hammered(c, app, lambda: user.pier("-a", app, "rollback"))
    assert "rolled back to release" in r.stdout, r.stdout
    assert c.release_id(app) == rel1
    fails = h.failures()
    assert not fails, (f"{len(fails)} of {len(h.results)} requests failed in the rollback: "
                       f"{fails[:5]}")
    after = [b for t, _, b in h.results if h.t0 + t > done + 0.05]
    assert after and all(f"{hello} v2" not in b and hello in b for b in after), after[:3]


# ---- a custom buildpack from BUILDPACK_URL ----

def test_custom_buildpack_from_git_url(cluster, user):
    c = cluster
    app = "custom-bp"
    repo = user.repo(app, files={"custom.txt": "yes\n", "server.js": CUSTOM_SERVER})
    user.create(repo, app)
    # Set before the first push (a release with env only): the buildpack,
    # and a var the buildpack's config_vars must not override.
    user.pier("-a", app, "env", "set", f"BUILDPACK_URL={CUSTOM_URL}", "KEEP_ME=from-user")
    rev1 = user.head(repo)

    p = timed("custom buildpack: first push over http", push_ok(user.push(repo)))
    text = remote_text(p)
    assert "-----> Custom Thing app detected" in text, p
    assert "-----> Compiling with the custom buildpack" in text, p
    assert f"STACK=pier-bookworm SOURCE_VERSION={rev1} cwd=/app" in text, p
    assert "the cache is empty" in text, p
    # config vars reach compile as ENV_DIR files, not in its environment
    assert "ENV_DIR/KEEP_ME=from-user" in text, p
    assert "environment KEEP_ME=unset" in text, p
    deployed(p, app, c)
    body = c.wait_content(app, "hello from custom VERSION", timeout=15)
    assert f"compiled={rev1}" in body, body
    assert "PROFILE_VAR=set by .profile.d with HOME=/app" in body, body
    assert "CUSTOM_DEFAULT=from-release" in body, body
    assert "KEEP_ME=from-user" in body, body
    env = c.release(c.release_id(app))["env"]
    assert env.get("CUSTOM_DEFAULT") == "from-release", env
    assert env.get("KEEP_ME") == "from-user", env
    assert env.get("BUILDPACK_URL") == CUSTOM_URL, env

    # The second build finds what the first left in the cache.
    change(repo, "server.js", "custom VERSION", "custom VERSION-2")
    rev2 = user.commit(repo, "v2")
    p = timed("custom buildpack: second push over ssh", push_ok(user.push(repo, "ssh")))
    text = remote_text(p)
    assert f"the cache holds: cached-by-{rev1}" in text, p
    deployed(p, app, c)
    body = c.wait_content(app, "hello from custom VERSION-2", timeout=5)
    assert f"compiled={rev2}" in body, body
    assert "KEEP_ME=from-user" in body and "CUSTOM_DEFAULT=from-release" in body, body


# ---- failures ----

def assert_unchanged(c, user, repo, app, rel, rev, hello):
    assert c.release_id(app) == rel
    assert user.remote_head(repo) == rev
    st, body = c.get(app)
    assert st == 200 and hello in body, (st, body)


def test_failures_leave_the_old_release_serving(cluster, user, tmp_path):
    c = cluster
    app = "fails"
    hello = "hello from procfile"
    repo = user.repo(app, "procfile")
    user.create(repo, app)
    rev = user.head(repo)
    push_ok(user.push(repo, "ssh"))
    c.wait_content(app, hello, timeout=15)
    rel = c.release_id(app)

    def refused(p):
        push_failed(p)
        assert "pre-receive hook declined" in p.stderr, p
        assert_unchanged(c, user, repo, app, rel, rev, hello)
        user.git(repo, "reset", "-q", "--hard", rev)
        return remote_text(p)

    # No buildpack applies.
    user.commit(repo, "no app", files={"README": "nothing to run\n"},
                remove=["Procfile", "server.js"])
    text = refused(timed("failure: no buildpack", user.push(repo)))
    assert re.search(r"(?i)no buildpack", text), text

    # A compile that fails (the C buildpack applies first; make fails).
    user.commit(repo, "broken C", files={"Makefile": "app: bad.c\n\tcc -o app bad.c\n",
                                         "bad.c": "int main(void) { return syntax error; }\n"})
    text = refused(timed("failure: compile", user.push(repo, "ssh")))
    assert "-----> C app detected" in text, text
    assert "syntax error" in text or "error:" in text, text  # the compiler's message
    assert re.search(r"(?i)(compile|make) failed \(exit \d+\)", text), text

    # A Procfile with a syntax error: the message names the line.
    user.commit(repo, "bad Procfile",
                files={"Procfile": "web: node server.js\nthis is not a process type\n"})
    text = refused(timed("failure: Procfile", user.push(repo)))
    assert re.search(r"Procfile line 2\b", text), text

    # A compile that exits non-zero, from a custom buildpack (.buildpacks).
    user.commit(repo, "custom fails", files={".buildpacks": CUSTOM_URL + "\n",
                                             "custom.txt": "x\n", "fail.txt": "x\n"})
    text = refused(timed("failure: custom compile exit 3", user.push(repo, "ssh")))
    assert "failing as fail.txt asks" in text, text
    assert re.search(r"(?i)compile failed \(exit 3\)", text), text

    # An SSH key the controller does not know: refused before anything runs.
    stranger = User(c, tmp_path / "stranger", add_key=False)
    user.commit(repo, "from a stranger", files={"x.txt": "x\n"})
    p = push_failed(stranger.push(repo, "ssh"))
    assert "Permission denied" in p.stderr, p
    assert_unchanged(c, user, repo, app, rel, rev, hello)

    # A wrong cluster key over HTTP: 401, git says authentication failed.
    url = f"http://pier:wrong-key@127.0.0.1:{c.git_http.rsplit(':', 1)[1]}/{app}.git"
    p = push_failed(user.push(repo, url))
    assert "Authentication failed" in p.stderr, p
    # ... also when the credential helper answers with a wrong key
    p = push_failed(user.push(repo, "pier", env={"PIER_CONTROLLER_KEY": "wrong-key"}))
    assert "Authentication failed" in p.stderr, p
    assert_unchanged(c, user, repo, app, rel, rev, hello)

    # And after all that, a good push still deploys.
    change(repo, "server.js", hello, f"{hello} again")
    user.commit(repo, "good")
    push_ok(user.push(repo))
    c.wait_content(app, f"{hello} again", timeout=5)


def test_push_to_another_branch_does_not_deploy(cluster, user):
    c = cluster
    app = "branches"
    hello = "hello from procfile"
    repo = user.repo(app, "procfile")
    user.create(repo, app)
    rev = user.head(repo)
    push_ok(user.push(repo))
    c.wait_content(app, hello, timeout=15)
    rel = c.release_id(app)

    change(repo, "server.js", hello, f"{hello} feature")
    feature = user.commit(repo, "feature")
    p = timed("branch push (no deploy)", push_ok(user.push(repo, "ssh", "main:feature")))
    assert "Not deploying refs/heads/feature: only main or master deploys" in remote_text(p), p
    assert "Building" not in remote_text(p), p
    assert user.remote_head(repo, ref="refs/heads/feature") == feature
    assert_unchanged(c, user, repo, app, rel, rev, hello)


# ---- concurrency ----

def windows(p):
    """(start, end) in time.monotonic() of the push's build and deploy:
    from its 'Building' headline to its last remote line."""
    b = p.at(r"^-----> Building ")
    if b is None:
        return None
    return (p.started + b, p.started + p.remote()[-1][0])


def concurrent(*fns):
    out = [None] * len(fns)

    def run(i, fn):
        out[i] = fn()

    ts = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    return out


def slow_app(user, name, seconds):
    """A repository built by the custom buildpack (named by .buildpacks)
    whose compile sleeps for seconds."""
    return user.repo(name, files={".buildpacks": CUSTOM_URL + "\n", "custom.txt": "x\n",
                                  "sleep.txt": f"{seconds}\n", "server.js": CUSTOM_SERVER})


def test_two_pushes_to_one_app_are_serialised(cluster, user, tmp_path):
    c = cluster
    app = "serial"
    repo = slow_app(user, app, 0)
    user.create(repo, app)
    base = user.head(repo)
    push_ok(user.push(repo))
    c.wait_content(app, "hello from custom VERSION", timeout=15)

    # A second working copy of the same app; two sibling commits of base,
    # each with a 2 s compile, pushed at once (one over HTTP, one over SSH).
    other = tmp_path / "other"
    user.run(["git", "clone", "-q", str(repo), str(other)])
    user.pier("git-remote", "-a", app, "-r", "ssh", cwd=other,
              env={"PIER_GIT_URL": c.git_ssh})
    change(repo, "server.js", "custom VERSION", "custom VERSION-A")
    rev_a = user.commit(repo, "A", files={"sleep.txt": "2\n"})
    change(other, "server.js", "custom VERSION", "custom VERSION-B")
    rev_b = user.commit(other, "B", files={"sleep.txt": "2\n"})
    pa, pb = concurrent(lambda: user.push(repo, "pier"), lambda: user.push(other, "ssh"))
    TIMINGS.append(("same app, two at once: A (http)", pa.elapsed))
    TIMINGS.append(("same app, two at once: B (ssh)", pb.elapsed))

    ok = [p for p in (pa, pb) if p.rc == 0]
    assert ok, f"neither push succeeded:\n{pa}\n{pb}"
    for p in (pa, pb):
        if p.rc != 0:
            # refused: not a fast-forward of what the other one pushed
            assert re.search(r"non-fast-forward|fetch first|failed to update ref|"
                             r"failed to lock|declined", p.stderr), p
    # Never two builds of the app at once.
    wa, wb = windows(pa), windows(pb)
    if wa and wb:
        assert wa[1] <= wb[0] or wb[1] <= wa[0], (f"the builds overlapped: A {wa}, B {wb}\n"
                                                   f"{pa}\n{pb}")
    # Both started at once and each compile takes 2 s: the second hook
    # found the first holding the app's lock.
    waited = [p for p in (pa, pb) if p.at(r"^-----> Waiting for another push to serial to finish")]
    assert waited, f"neither push waited for the other:\n{pa}\n{pb}"
    # What main holds is what runs, and no release was made of a commit that
    # main never held.
    head = user.remote_head(repo)
    assert head in (rev_a, rev_b)
    assert c.release(c.release_id(app))["meta"]["rev"] == head
    st, rels = c.ctl.get(f"/apps/{app}/releases")
    assert st == 200
    revs = {r.get("meta", {}).get("rev") for r in rels} - {None}
    assert revs <= {base} | {rev_a if pa.rc == 0 else None, rev_b if pb.rc == 0 else None}, (
        revs, pa, pb)
    winner = "VERSION-A" if head == rev_a else "VERSION-B"
    c.wait_content(app, f"hello from custom {winner}", timeout=5)
    TIMINGS.append((f"  ({len(ok)} of 2 accepted; the other: "
                    f"{'accepted' if len(ok) == 2 else 'refused'})", 0.0))


def test_pushes_to_two_apps_build_at_once(cluster, user):
    c = cluster
    repos = {}
    for app in ("para-one", "para-two"):
        repos[app] = slow_app(user, app, 3)
        user.create(repos[app], app)
    t0 = time.monotonic()
    pa, pb = concurrent(lambda: user.push(repos["para-one"], "pier"),
                        lambda: user.push(repos["para-two"], "ssh"))
    total = time.monotonic() - t0
    push_ok(pa)
    push_ok(pb)
    wa, wb = windows(pa), windows(pb)
    overlap = min(wa[1], wb[1]) - max(wa[0], wb[0])
    TIMINGS.append(("two apps at once: para-one", pa.elapsed))
    TIMINGS.append(("two apps at once: para-two", pb.elapsed))
    TIMINGS.append((f"  (both in {total:.2f} s; their builds overlapped {overlap:.2f} s)", 0.0))
    # each compile sleeps 3 s: in turn they could not overlap at all
    assert overlap >= 2.0, (overlap, wa, wb, pa, pb)
    for app in repos:
        c.wait_content(app, "hello from custom VERSION", timeout=5)
