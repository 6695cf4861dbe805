"""`pierd gitreceive` over smart HTTP, with the real `git` client, against a
real `pierd store` + `pierd controller`.

The user's steps: create an app in the controller, `git push` a branch to
http://user:KEY@HOST/APP.git, clone it back. The pre-receive hook here is
the real one (`pierd gitreceive hook`): it accepts refs other than
main/master with "Not deploying ..."; main/master go to the build, which
fails at once here (no host agent runs build jobs), so these tests push
other branches. Tests that need a slow hook
point the app's repository at one of their own with core.hooksPath.
Repositories are named by the app's id (DIR/repos/<id>.git).
"""

import base64
import gzip
import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from controller_util import Controller

KEY = "git-http-key"


class Cluster:
    def __init__(self, start_pierd, pier_store, tmp_path, env=None):
        self.tmp = tmp_path
        self.ctl = Controller(start_pierd, pier_store, key=KEY)
        self.blob = start_pierd("blobstore", name="blobstore",
                                args=["--dir", tmp_path / "blobs", "--key", KEY])
        self.dir = tmp_path / "git"
        self.gr = start_pierd("gitreceive", name="gitreceive", env=env, args=[
            "--dir", self.dir, "--key", KEY, "--controller", self.ctl.url,
            "--blobstore", self.blob.url, "--ssh", "off", "--store", pier_store])
        self.url = self.gr.url
        self.home = tmp_path / "home"
        self.home.mkdir()

    def create_app(self, name):
        status, body = self.ctl.post("/apps", {"name": name})
        assert status == 200, body
        return body

    def app_id(self, name):
        status, body = self.ctl.get(f"/apps/{name}")
        assert status == 200, body
        return body["id"]

    def repo(self, app):
        """The app's bare repository on disk: DIR/repos/<app id>.git."""
        return self.dir / "repos" / f"{self.app_id(app)}.git"

    def remote(self, app, key=KEY):
        host = self.url.removeprefix("http://")
        return f"http://pier:{key}@{host}/{app}.git"

    def env(self):
        return {**os.environ, "HOME": str(self.home), "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(self, *args, cwd=None, timeout=120):
        return subprocess.run(["git", *map(str, args)], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def popen_git(self, *args, cwd=None):
        return subprocess.Popen(["git", *map(str, args)], cwd=cwd, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def new_repo(self, name, branch="feature", files=None):
        d = self.tmp / name
        d.mkdir()
        assert self.git("init", "-q", "-b", branch, cwd=d).returncode == 0
        for path, content in (files or {"README": f"{name}\n"}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(d / path, mode) as f:
                f.write(content)
        assert self.git("add", "-A", cwd=d).returncode == 0
        r = self.git("commit", "-q", "-m", f"first of {name}", cwd=d)
        assert r.returncode == 0, r.stderr
        return d

    def head(self, repo):
        return self.git("rev-parse", "HEAD", cwd=repo).stdout.strip()

    def remote_refs(self, app):
        """The app's refs as its bare repository on disk holds them."""
        r = self.git("for-each-ref", "--format=%(refname) %(objectname)", cwd=self.repo(app))
        assert r.returncode == 0, r.stderr
        return dict(line.split() for line in r.stdout.splitlines())

    def hooks_dir(self, app, script):
        """Makes the app's repository run script as its pre-receive hook."""
        hooks = self.tmp / f"hooks-{app}"
        hooks.mkdir()
        hook = hooks / "pre-receive"
        hook.write_text("#!/bin/sh\n" + script)
        hook.chmod(0o755)
        repo = self.repo(app)
        assert self.git("config", "-f", repo / "config", "core.hooksPath", hooks).returncode == 0
        return hooks


@pytest.fixture
def cluster(start_pierd, pier_store, tmp_path):
    return Cluster(start_pierd, pier_store, tmp_path)


def http(method, url, auth=None, data=None, headers=None):
    h = dict(headers or {})
    if auth is not None:
        h["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_push_a_branch_then_clone_it_back(cluster):
    cluster.create_app("shop")
    src = cluster.new_repo("src", files={"README": "hello\n", "app.py": "print('hi')\n"})
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert "remote: -----> Not deploying refs/heads/feature: only main or master deploys" \
        in r.stderr
    assert "[new branch]      feature -> feature" in r.stderr
    head = cluster.head(src)
    assert cluster.remote_refs("shop") == {"refs/heads/feature": head}

    # a second commit goes on top (a fast-forward)
    (src / "README").write_text("hello again\n")
    cluster.git("commit", "-qam", "second", cwd=src)
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    head = cluster.head(src)

    # git-upload-pack: a clone gets exactly what was pushed
    out = cluster.tmp / "clone"
    r = cluster.git("clone", "-q", "-b", "feature", cluster.remote("shop"), out)
    assert r.returncode == 0, r.stderr
    assert cluster.head(out) == head
    assert (out / "README").read_text() == "hello again\n"
    assert (out / "app.py").read_text() == "print('hi')\n"
    r = cluster.git("ls-remote", cluster.remote("shop"))
    assert r.returncode == 0 and f"{head}\trefs/heads/feature" in r.stdout

    # a gzip'd fetch request (git sends large ones so) is inflated by
    # http-backend; the answer is streamed (chunked), not sized up front
    want = f"want {head}\n"
    req = f"{len(want) + 4:04x}{want}0000" + "0009done\n"
    status, headers, body = http(
        "POST", cluster.url + "/shop.git/git-upload-pack", auth=f"x:{KEY}",
        data=gzip.compress(req.encode()),
        headers={"Content-Type": "application/x-git-upload-pack-request",
                 "Content-Encoding": "gzip"})
    assert status == 200, body
    assert headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert headers.get("Transfer-Encoding") == "chunked"
    assert body.startswith(b"0008NAK\n") and b"PACK" in body

    # the repository holds the hooks that hand pushes to pierd
    pierd = os.path.realpath(cluster.gr.argv[0])
    for name, mode in (("pre-receive", ""), ("post-receive", " post-receive")):
        hook = cluster.repo("shop") / "hooks" / name
        assert os.access(hook, os.X_OK)
        assert hook.read_text() == f"#!/bin/sh\nexec '{pierd}' gitreceive hook{mode}\n"
    assert list((cluster.dir / "tmp").iterdir()) == []
    # the reflog names who pushed from where (REMOTE_USER, REMOTE_ADDR)
    reflog = (cluster.repo("shop") / "logs" / "refs" / "heads" / "feature")
    assert "pier <pier@http.127.0.0.1>" in reflog.read_text()


def test_push_to_main_is_refused_by_the_hook_and_changes_no_ref(cluster):
    cluster.create_app("web")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("web"), "feature", cwd=src).returncode == 0
    before = cluster.remote_refs("web")
    r = cluster.git("push", cluster.remote("web"), "feature:main", cwd=src)
    assert r.returncode != 0
    assert "pre-receive hook declined" in r.stderr, r.stderr
    assert cluster.remote_refs("web") == before
    r = cluster.git("push", cluster.remote("web"), "feature:master", cwd=src)
    assert r.returncode != 0
    assert cluster.remote_refs("web") == before


def test_wrong_or_missing_key_gets_401_with_a_challenge(cluster):
    cluster.create_app("locked")
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("locked", key="not-the-key"), "feature", cwd=src)
    assert r.returncode != 0
    assert "Authentication failed" in r.stderr, r.stderr
    # nothing was made for a request without the key
    assert list((cluster.dir / "repos").iterdir()) == []

    url = cluster.url + "/locked.git/info/refs?service=git-receive-pack"
    for auth in (None, "pier:wrong", "pier:"):
        status, headers, body = http("GET", url, auth=auth)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="pier"'
        assert json.loads(body)["code"] == "unauthorized"
    status, headers, body = http("POST", cluster.url + "/locked.git/git-receive-pack",
                                 auth="x:wrong", data=b"0000",
                                 headers={"Content-Type":
                                          "application/x-git-receive-pack-request"})
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    # any user name will do, the key is the password
    status, headers, body = http("GET", url, auth=f"anyone:{KEY}")
    assert status == 200
    assert headers["Content-Type"] == "application/x-git-receive-pack-advertisement"


def test_unknown_app_and_bad_names(cluster):
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("nosuchapp"), "feature", cwd=src)
    assert r.returncode != 0
    assert "remote: app nosuchapp does not exist: create it with 'pier create nosuchapp'" \
        in r.stderr, r.stderr
    assert list((cluster.dir / "repos").iterdir()) == []

    status, headers, body = http("GET", cluster.url + "/nosuchapp.git/info/refs"
                                 "?service=git-upload-pack", auth=f"x:{KEY}")
    assert status == 404 and headers["Content-Type"].startswith("text/plain")
    assert b"app nosuchapp does not exist" in body

    for bad in ("Shop", "a_b", "-x", "x--y", "..", "a" * 101):
        status, _, body = http("GET", f"{cluster.url}/{bad}.git/info/refs"
                               "?service=git-upload-pack", auth=f"x:{KEY}")
        assert status == 400, bad
        assert json.loads(body)["code"] == "validation_error"
    assert list((cluster.dir / "repos").iterdir()) == []

    # a name without ".git" names the same repository
    cluster.create_app("plain")
    r = cluster.git("push", cluster.remote("plain").removesuffix(".git"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert cluster.repo("plain").is_dir()


def test_concurrent_first_pushes_make_one_repository(cluster):
    cluster.create_app("racy")
    repos = [cluster.new_repo(f"src{i}", branch=f"b{i}") for i in range(4)]
    results = [None] * len(repos)

    def push(i):
        results[i] = cluster.git("push", cluster.remote("racy"), f"b{i}", cwd=repos[i])

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(repos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "Not deploying" in r.stderr
    assert [p.name for p in (cluster.dir / "repos").iterdir()] == [cluster.repo("racy").name]
    assert list((cluster.dir / "tmp").iterdir()) == []
    refs = cluster.remote_refs("racy")
    assert refs == {f"refs/heads/b{i}": cluster.head(repos[i]) for i in range(len(repos))}


def test_status_needs_no_key(cluster):
    status, headers, body = http("GET", cluster.url + "/status")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, _ = http("GET", cluster.url + "/.well-known/status")
    assert status == 200


def test_large_push_and_fetch(cluster):
    """A pack larger than 64 MiB goes in (the body is spooled to disk, not
    held in memory) and comes back out whole."""
    cluster.create_app("big")
    blob = os.urandom(70 << 20)
    src = cluster.new_repo("src", files={"blob.bin": blob, "README": "big\n"})
    r = cluster.git("push", cluster.remote("big"), "feature", cwd=src, timeout=300)
    assert r.returncode == 0, r.stderr
    out = cluster.tmp / "clone"
    r = cluster.git("clone", "-q", "-b", "feature", cluster.remote("big"), out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "blob.bin").read_bytes() == blob
    assert list((cluster.dir / "tmp").iterdir()) == []


def read_lines(proc, lines):
    """Collects (time, line) of proc's stderr as they come."""
    for line in proc.stderr:
        lines.append((time.monotonic(), line.rstrip("\n")))


def test_hook_output_reaches_the_pusher_as_it_is_printed(cluster):
    cluster.create_app("live")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("live"), "feature", cwd=src).returncode == 0
    cluster.hooks_dir("live", "cat >/dev/null\necho first line\nsleep 3\necho second line\n")
    (src / "README").write_text("more\n")
    cluster.git("commit", "-qam", "more", cwd=src)
    proc = cluster.popen_git("push", cluster.remote("live"), "feature", cwd=src)
    lines = []
    reader = threading.Thread(target=read_lines, args=(proc, lines))
    reader.start()
    proc.wait(timeout=60)
    end = time.monotonic()
    reader.join()
    text = "\n".join(line for _, line in lines)
    assert proc.returncode == 0, text
    first = [t for t, line in lines if "remote: first line" in line]
    second = [t for t, line in lines if "remote: second line" in line]
    assert first and second, text
    # the first line was shown while the hook still ran
    assert second[0] - first[0] > 2.0, text
    assert end - first[0] > 2.0, text


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_pusher_going_away_kills_the_hook(cluster):
    cluster.create_app("gone")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("gone"), "feature", cwd=src).returncode == 0
    pidfile = cluster.tmp / "hook.pid"
    cluster.hooks_dir("gone", f"cat >/dev/null\necho $$ > {pidfile}\necho building\n"
                      f"sleep 60\ntouch {cluster.tmp}/hook.finished\n")
    (src / "README").write_text("more\n")
    cluster.git("commit", "-qam", "more", cwd=src)
    proc = cluster.popen_git("push", cluster.remote("gone"), "feature", cwd=src)
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the hook never started"
        time.sleep(0.05)
    hook_pid = int(pidfile.read_text())
    assert pid_alive(hook_pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while pid_alive(hook_pid):
        assert time.monotonic() < deadline, "the hook outlived its pusher"
        time.sleep(0.1)
    assert not (cluster.tmp / "hook.finished").exists()
    assert cluster.remote_refs("gone")["refs/heads/feature"] != cluster.head(src)
    deadline = time.monotonic() + 5
    while "client gone, git killed" not in cluster.gr.stderr_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_sigterm_lets_a_running_push_finish(cluster):
    cluster.create_app("calm")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("calm"), "feature", cwd=src).returncode == 0
    cluster.hooks_dir("calm", "cat >/dev/null\necho started\nsleep 3\necho finished\n")
    (src / "README").write_text("more\n")
    cluster.git("commit", "-qam", "more", cwd=src)
    proc = cluster.popen_git("push", cluster.remote("calm"), "feature", cwd=src)
    lines = []
    reader = threading.Thread(target=read_lines, args=(proc, lines))
    reader.start()
    deadline = time.monotonic() + 30
    while not any("remote: started" in line for _, line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    cluster.gr.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # no new connections while it drains
    with pytest.raises(urllib.error.URLError) as e:
        urllib.request.urlopen(cluster.url + "/status", timeout=5)
    assert isinstance(e.value.reason, ConnectionRefusedError)
    proc.wait(timeout=60)
    reader.join()
    text = "\n".join(line for _, line in lines)
    assert proc.returncode == 0, text
    assert "remote: finished" in text
    assert cluster.gr.proc.wait(timeout=30) == 0
    assert cluster.remote_refs("calm")["refs/heads/feature"] == cluster.head(src)


def test_a_changed_hook_is_put_back_and_a_missing_controller_is_named(cluster):
    cluster.create_app("fixme")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("fixme"), "feature", cwd=src).returncode == 0
    hook = cluster.repo("fixme") / "hooks" / "pre-receive"
    good = hook.read_text()
    hook.write_text("#!/bin/sh\nexec /old/place/pierd gitreceive hook\n")
    (src / "README").write_text("more\n")
    cluster.git("commit", "-qam", "more", cwd=src)
    r = cluster.git("push", cluster.remote("fixme"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert hook.read_text() == good and os.access(hook, os.X_OK)

    cluster.ctl.daemon.stop()
    r = cluster.git("push", cluster.remote("fixme"), "feature:other", cwd=src)
    assert r.returncode != 0
    assert f"remote: controller at {cluster.ctl.url}" in r.stderr, r.stderr
    status, headers, body = http("GET", cluster.url + "/fixme.git/info/refs"
                                 "?service=git-upload-pack", auth=f"x:{KEY}")
    assert status == 503 and cluster.ctl.url.encode() in body


def test_repositories_are_named_by_the_apps_id(cluster):
    """A push by name and one by id reach one repository (and one lock); an
    app deleted and made again under its name starts with no history."""
    first = cluster.create_app("shop")
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (cluster.dir / "repos").iterdir()] == [f"{first['id']}.git"]
    # by id: the same repository, the same refs
    r = cluster.git("ls-remote", cluster.remote(first["id"]))
    assert r.returncode == 0, r.stderr
    assert f"{cluster.head(src)}\trefs/heads/feature" in r.stdout
    # the hook learns both the name and the id, whichever the URL used
    cluster.hooks_dir("shop", 'cat >/dev/null\necho "app=$PIER_APP id=$PIER_APP_ID"\n')
    r = cluster.git("push", cluster.remote(first["id"]), "feature:other", cwd=src)
    assert r.returncode == 0, r.stderr
    assert f"remote: app=shop id={first['id']}" in r.stderr, r.stderr
    assert set(cluster.remote_refs("shop")) == {"refs/heads/feature", "refs/heads/other"}
    assert len(list((cluster.dir / "repos").iterdir())) == 1

    # shop deleted and made again: another app, whose history starts anew
    status, body = cluster.ctl.delete("/apps/shop")
    assert status == 200, body
    second = cluster.create_app("shop")
    assert second["id"] != first["id"]
    fresh = cluster.new_repo("fresh", files={"NEW": "unrelated history\n"})
    r = cluster.git("push", cluster.remote("shop"), "feature", cwd=fresh)
    assert r.returncode == 0, r.stderr  # not refused as a non-fast-forward
    assert "[new branch]      feature -> feature" in r.stderr, r.stderr
    assert cluster.remote_refs("shop") == {"refs/heads/feature": cluster.head(fresh)}
    # the old app's id names nothing any more
    r = cluster.git("ls-remote", cluster.remote(first["id"]))
    assert r.returncode != 0
    assert f"app {first['id']} does not exist" in r.stderr, r.stderr


def blob_get(cluster, path):
    req = urllib.request.Request(f"{cluster.blob.url}/{path}",
                                 headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def blob_put(cluster, path, data):
    req = urllib.request.Request(f"{cluster.blob.url}/{path}", data=data, method="PUT",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.status == 200


def repo_tar(repo):
    """A tar of the repository's files, as the post-receive hook archives it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for p in sorted(repo.iterdir()):
            tar.add(p, arcname=p.name)
    return out.getvalue()


def test_a_lost_repository_is_restored_from_the_blobstore(start_pierd, pier_store, tmp_path):
    """The receiver lost its disk (or the app's pushes now land on another
    receiver): the repository comes back from the blobstore, so the next
    push continues the app's history."""
    cluster = Cluster(start_pierd, pier_store, tmp_path)
    app = cluster.create_app("kept")
    src = cluster.new_repo("src")
    assert cluster.git("push", cluster.remote("kept"), "feature", cwd=src).returncode == 0
    assert cluster.git("push", cluster.remote("kept"), "feature:side", cwd=src).returncode == 0
    repo = cluster.repo("kept")
    path = f"repos/{app['id']}.tar"
    # the post-receive hook archives the repository after every push; if
    # it has not, the test stores the archive itself (what it would hold)
    if blob_get(cluster, path) is None:
        blob_put(cluster, path, repo_tar(repo))
    before = cluster.remote_refs("kept")

    subprocess.run(["rm", "-rf", str(repo)], check=True)
    (src / "README").write_text("second\n")
    cluster.git("commit", "-qam", "second", cwd=src)
    r = cluster.git("push", cluster.remote("kept"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    # a fast-forward of the branch the receiver had, not a new branch
    assert "[new branch]" not in r.stderr, r.stderr
    assert " feature -> feature" in r.stderr, r.stderr
    refs = cluster.remote_refs("kept")
    assert refs["refs/heads/feature"] == cluster.head(src)
    assert refs["refs/heads/side"] == before["refs/heads/side"]
    assert "repository restored" in cluster.gr.stderr_text()
    # with its hooks, naming this pierd
    pierd = os.path.realpath(cluster.gr.argv[0])
    assert (repo / "hooks" / "pre-receive").read_text() == \
        f"#!/bin/sh\nexec '{pierd}' gitreceive hook\n"
    assert (repo / "hooks" / "post-receive").read_text() == \
        f"#!/bin/sh\nexec '{pierd}' gitreceive hook post-receive\n"
    assert list((cluster.dir / "tmp").iterdir()) == []

    # an app the blobstore has nothing of gets a new repository; with the
    # blobstore down, a missing repository is not made up (a new one would
    # fork the app's history): the push is refused and names the blobstore
    cluster.create_app("other")
    cluster.blob.stop()
    r = cluster.git("push", cluster.remote("other"), "feature", cwd=src)
    assert r.returncode != 0
    assert f"remote: blobstore at {cluster.blob.url}" in r.stderr, r.stderr
    assert not cluster.repo("other").exists()
    # the repositories it has are served all the same
    r = cluster.git("ls-remote", cluster.remote("kept"))
    assert r.returncode == 0, r.stderr


def test_the_daemons_git_variables_do_not_reach_git(start_pierd, pier_store, tmp_path):
    """A GIT_DIR (or GIT_CONFIG_*) in the daemon's environment is not the
    repository's: git runs without them."""
    env = {**os.environ, "GIT_DIR": "/nonexistent", "GIT_WORK_TREE": "/nonexistent",
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "receive.denyCurrentBranch",
           "GIT_CONFIG_VALUE_0": "nonsense"}
    cluster = Cluster(start_pierd, pier_store, tmp_path, env=env)
    cluster.create_app("clean")
    src = cluster.new_repo("src")
    r = cluster.git("push", cluster.remote("clean"), "feature", cwd=src)
    assert r.returncode == 0, r.stderr
    assert cluster.remote_refs("clean") == {"refs/heads/feature": cluster.head(src)}
    out = cluster.tmp / "clone"
    r = cluster.git("clone", "-q", "-b", "feature", cluster.remote("clean"), out)
    assert r.returncode == 0, r.stderr
    assert cluster.head(out) == cluster.head(src)
