"""`git push` to a running app end to end (issue 6): the pre-receive hook
(`pierd gitreceive hook`) uploads the source to the blobstore, builds it in
a one-off job with `/.pier/pierslug build`, releases the slug and deploys
it, while the pusher sees the build line by line.

Everything is real: `pierd store`, a host agent (crun containers on the
host's binds, as root), `pierd scheduler`, `pierd controller`, `pierd
blobstore`, `pierd gitreceive` over smart HTTP and the `git` client. The
app is built by a buildpack made here (detect, compile with the cache,
release with config_vars and a .profile.d script) and fetched by the
builder as a .tgz from a small HTTP server of the test, the way
BUILDPACK_URL names one. Its web process is `python3 -m http.server`
serving /app, so what a deploy runs is read back over HTTP from the job's
port.
"""

import http.server
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

from conftest import sanitizer_reports
from controller_util import Controller
from test_host import job_record, kv_range

KEY = "git-hook-key"
DOMAIN = "apps.test"
JOBS = "/pier/v1/jobs/"
ENDED = ("down", "crashed", "failed")

DETECT = """#!/bin/sh
[ -f "$1/hello.txt" ] && echo TestPack && exit 0
exit 1
"""
# Counts builds in the cache (a second build finds what the first left),
# writes the start script and a .profile.d script, fails or hangs on
# request.
COMPILE = """#!/bin/sh
set -e
build=$1 cache=$2 env=$3
echo "-----> Compiling with TestPack"
[ -f "$build/fail" ] && { echo "       compile is told to fail"; exit 3; }
[ -f "$build/slow" ] && { echo "       compile is told to hang"; sleep 600; }
[ -f "$build/pause" ] && { echo "       pausing"; sleep "$(cat "$build/pause")"; }
n=$(cat "$cache/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$cache/count"
echo "       build number $n"
echo "       env dir: $(ls "$env" | tr '\\n' ' ')"
printf 'partial progress' ; sleep 0.2; echo ' done'
cp "$cache/count" "$build/build-count"
mkdir -p "$build/.profile.d"
echo 'export PROFILE_VAR=${PROFILE_VAR:-from-profile}' > "$build/.profile.d/test.sh"
cat > "$build/start.sh" <<'EOF'
#!/bin/sh
echo "$GREETING $FROM_BUILDPACK $PROFILE_VAR" > env.txt
exec python3 -m http.server "$PORT" --bind 127.0.0.1
EOF
chmod +x "$build/start.sh"
"""
# With bigresult in the app, a config var whose JSON is 1.2 MB (backslashes
# double) within bin/release's 1 MiB.
RELEASE = """#!/bin/sh
cat <<'EOF'
---
config_vars:
  FROM_BUILDPACK: buildpack-default
  GREETING: not-this-one
EOF
if [ -f "$1/bigresult" ]; then
    printf '  BIG: x'; head -c 600000 /dev/zero | tr '\\0' '\\\\'; echo
fi
cat <<'EOF'
default_process_types:
  web: ./start.sh
EOF
"""


def buildpack_tgz():
    """The test buildpack as a .tgz (bin/detect, bin/compile, bin/release)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in (("detect", DETECT), ("compile", COMPILE), ("release", RELEASE)):
            data = text.encode()
            info = tarfile.TarInfo(f"bin/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class BuildpackServer:
    """Serves /testpack.tgz on a loopback port (jobs share the host's network)."""

    def __init__(self):
        body = buildpack_tgz()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/testpack.tgz":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/testpack.tgz"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Cluster:
    def __init__(self, start_pierd, start_host, tmp_path, bp_url):
        self.tmp = tmp_path
        self.bp_url = bp_url
        self.store = start_pierd("store", name="store").url
        self.agent = start_host(self.store, name="host", args=["--key", KEY])
        start_pierd("scheduler", name="scheduler", args=["--store", self.store, "--key", KEY])
        self.ctl = Controller(start_pierd, self.store, key=KEY, args=["--domain", DOMAIN])
        self.blob = start_pierd("blobstore", name="blobstore",
                                args=["--dir", tmp_path / "blobs", "--key", KEY])
        self.start_pierd = start_pierd
        self.gr = self.start_receiver("gitreceive")
        self.home = tmp_path / "home"
        self.home.mkdir()

    def start_receiver(self, name, build_timeout=None):
        """A receiver with --store, which its hooks get as PIER_STORE
        (discovery, the push lock in the store)."""
        args = ["--dir", self.tmp / name, "--key", KEY, "--controller", self.ctl.url,
                "--blobstore", self.blob.url, "--ssh", "off", "--store", self.store]
        if build_timeout:
            args += ["--build-timeout", str(build_timeout)]
        return self.start_pierd("gitreceive", name=name, args=args)

    # ---- the app ----

    def create_app(self, name, env=None):
        status, app = self.ctl.post("/apps", {"name": name})
        assert status == 200, app
        if env is not None:
            status, rel = self.ctl.post("/releases", {"app_id": name, "env": env})
            assert status == 200, rel
            status, _ = self.ctl.put(f"/apps/{name}/release", {"id": rel["id"]})
            assert status == 200
        return app

    def release(self, app):
        status, rel = self.ctl.get(f"/apps/{app}/release")
        return rel if status == 200 else None

    def artifacts(self):
        status, arts = self.ctl.get("/artifacts")
        assert status == 200
        return arts

    def jobs(self, app, rel=None, type_=None):
        recs = [json.loads(v) for k, v, _ in kv_range(self.store, JOBS)]
        return [j for j in recs if j.get("app") == app["id"]
                and (rel is None or j.get("release") == rel)
                and (type_ is None or j.get("type") == type_)]

    def web_url(self, app, rel):
        """The URL of the release's web job that is up."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for j in self.jobs(app, rel, "web"):
                if j.get("state") == "up" and j.get("desired_state", "up") == "up":
                    return f"http://127.0.0.1:{j['allocated_ports'][0]}"
            time.sleep(0.1)
        pytest.fail(f"no web job of {rel} is up: {self.jobs(app, rel)}")

    # ---- git ----

    def env(self):
        return {**os.environ, "HOME": str(self.home), "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(self, *args, cwd=None, timeout=300):
        return subprocess.run(["git", *map(str, args)], cwd=cwd, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def repo(self, name, files):
        d = self.tmp / name
        d.mkdir()
        assert self.git("init", "-q", "-b", "main", cwd=d).returncode == 0
        self.commit(d, files)
        return d

    def commit(self, d, files, remove=()):
        for path, content in files.items():
            (d / path).write_text(content)
        for path in remove:
            (d / path).unlink()
        assert self.git("add", "-A", cwd=d).returncode == 0
        r = self.git("commit", "-q", "-m", "change", cwd=d)
        assert r.returncode == 0, r.stderr
        return self.git("rev-parse", "HEAD", cwd=d).stdout.strip()

    def remote(self, app, gr=None):
        host = (gr or self.gr).url.removeprefix("http://")
        return f"http://pier:{KEY}@{host}/{app}.git"

    def push(self, d, app, ref="main", gr=None):
        r = self.git("push", self.remote(app, gr), f"HEAD:refs/heads/{ref}", cwd=d)
        # what the hook printed, without git's "remote: " prefix
        r.remote = "\n".join(line[len("remote: "):] for line in r.stderr.splitlines()
                             if line.startswith("remote: "))
        # the hook is a sanitized pierd too: its reports reach the pusher
        assert not sanitizer_reports(r.stderr), r.stderr
        return r

    def app_id(self, name):
        status, app = self.ctl.get(f"/apps/{name}")
        assert status == 200, app
        return app["id"]

    def blob_get(self, path, auth=True):
        """(status, body) of GET BLOBSTORE/path, with the key or without."""
        req = urllib.request.Request(self.blob.url + path,
                                     headers={"Authorization": f"Bearer {KEY}"} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def repo_dir(self, app, receiver="gitreceive"):
        """The app's bare repository on the receiver's disk (named by its id)."""
        return self.tmp / receiver / "repos" / f"{self.app_id(app)}.git"

    def remote_head(self, app, ref="main", receiver="gitreceive"):
        """The ref in the app's bare repository on disk (None: not there)."""
        repo = self.repo_dir(app, receiver)
        if not repo.is_dir():
            return None
        r = self.git("rev-parse", "--verify", "-q", f"refs/heads/{ref}", cwd=repo)
        return r.stdout.strip() or None


@pytest.fixture
def cluster(start_pierd, start_host, tmp_path):
    bp = BuildpackServer()
    try:
        yield Cluster(start_pierd, start_host, tmp_path, bp.url)
    finally:
        bp.stop()


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def lines_in_order(text, *wanted):
    """Asserts every wanted line is in text, in that order."""
    at = 0
    lines = text.splitlines()
    for w in wanted:
        for i in range(at, len(lines)):
            if w in lines[i]:
                at = i + 1
                break
        else:
            pytest.fail(f"{w!r} not found (in order) in the push output:\n{text}")


# ---- the user's path ----

def test_first_push_runs_then_second_push_deploys(cluster):
    app = cluster.create_app("hello", env={"BUILDPACK_URL": cluster.bp_url,
                                           "GREETING": "from-config"})
    src = cluster.repo("src", {"hello.txt": "version one\n"})
    r = cluster.push(src, "hello")
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, "-----> Receiving push",
                   f"       Blobstore: {cluster.blob.url} (none in discovery: the receiver's --blobstore)",
                   "-----> Uploading source", " KB", "-----> Building hello (build ",
                   "-----> Compiling with TestPack",
                   "build number 1", "partial progress done", "-----> Creating release",
                   "-----> Deploying", "       Scaling web to 1", "       web.1 up",
                   "=====> hello deployed (release v2 / ", f"       http://hello.{DOMAIN}")
    assert "pier-build-result" not in r.stderr
    # The config vars reach the buildpack as files in ENV_DIR.
    assert "GREETING" in next(x for x in r.remote.splitlines() if "env dir:" in x), r.remote
    rel = cluster.release("hello")
    head = cluster.git("rev-parse", "HEAD", cwd=src).stdout.strip()
    assert rel["meta"]["git"] == "true" and rel["meta"]["rev"] == head, rel
    assert rel["processes"]["web"]["args"] == ["./start.sh"], rel
    # The previous env, plus the buildpack's config_vars it did not set.
    assert rel["env"] == {"BUILDPACK_URL": cluster.bp_url, "GREETING": "from-config",
                          "FROM_BUILDPACK": "buildpack-default"}, rel
    status, art = cluster.ctl.get(f"/artifacts/{rel['artifacts'][0]}")
    assert status == 200 and art["type"] == "file", art
    # Blobs are named by the app's id, not its name.
    assert art["uri"].startswith(f"{cluster.blob.url}/slugs/{app['id']}/"), art
    assert art["meta"]["slugrunner"] == "true" and art["meta"]["git_rev"] == head, art
    assert int(art["meta"]["size"]) > 0 and len(art["meta"]["sha256"]) == 64, art
    # The blobstore holds the slug (open: agents fetch it), not the source
    # any more; the build cache is there, but only for the key.
    with urllib.request.urlopen(art["uri"], timeout=10) as resp:
        assert len(resp.read()) == int(art["meta"]["size"])
    assert not list((cluster.tmp / "blobs" / "blobs").rglob("sources/*/*"))
    cache = f"/caches/{app['id']}.tgz"
    assert cluster.blob_get(cache)[0] == 200
    assert cluster.blob_get(cache, auth=False)[0] == 401
    status, form = cluster.ctl.get(f"/apps/hello/formations/{rel['id']}")
    assert status == 200 and form["processes"] == {"web": 1}, form
    url = cluster.web_url(app, rel["id"])
    assert get(url + "/hello.txt") == "version one\n"
    # .profile.d ran before the command, after the config vars were set.
    assert get(url + "/env.txt") == "from-config buildpack-default from-profile\n"
    assert get(url + "/build-count") == "1\n"
    assert cluster.remote_head("hello") == head

    # A second push goes through the deployer and finds the build cache.
    cluster.commit(src, {"hello.txt": "version two\n"})
    r = cluster.push(src, "hello")
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, "-----> Receiving push", "build number 2", "-----> Creating release",
                   "-----> Deploying", "       web.1 up", "=====> hello deployed (release v3 / ")
    rel2 = cluster.release("hello")
    assert rel2["id"] != rel["id"] and rel2["env"] == rel["env"]
    url2 = cluster.web_url(app, rel2["id"])
    assert get(url2 + "/hello.txt") == "version two\n"
    assert get(url2 + "/build-count") == "2\n"
    # The deployer stopped the old release's job.
    deadline = time.monotonic() + 30
    while any(j.get("state") not in ENDED for j in cluster.jobs(app, rel["id"], "web")):
        assert time.monotonic() < deadline, cluster.jobs(app, rel["id"])
        time.sleep(0.2)
    # Only the deployed releases' slugs are kept; the sources are gone.
    assert len(cluster.artifacts()) == 2


def test_failed_build_refuses_the_push(cluster):
    app = cluster.create_app("broken", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "good\n"})
    assert cluster.push(src, "broken").returncode == 0
    good = cluster.release("broken")
    head = cluster.remote_head("broken")
    url = cluster.web_url(app, good["id"])
    arts = cluster.artifacts()

    cluster.commit(src, {"hello.txt": "bad\n", "fail": ""})
    r = cluster.push(src, "broken")
    assert r.returncode != 0, r.stderr
    lines_in_order(r.remote, "-----> Compiling with TestPack", "compile is told to fail",
                   "!      Build failed: the running release is unchanged")
    assert "Creating release" not in r.remote and "Deploying" not in r.remote
    assert "pre-receive hook declined" in r.stderr, r.stderr
    # Nothing changed: the ref, the release, the artifacts; the app answers.
    assert cluster.remote_head("broken") == head
    assert cluster.release("broken")["id"] == good["id"]
    assert cluster.artifacts() == arts
    assert get(url + "/hello.txt") == "good\n"


def test_no_buildpack_detected(cluster):
    cluster.create_app("plain")
    src = cluster.repo("src", {"README": "nothing to build here\n"})
    r = cluster.push(src, "plain")
    assert r.returncode != 0, r.stderr
    assert "no buildpack detected" in r.remote, r.remote
    assert "BUILDPACK_URL" in r.remote
    lines_in_order(r.remote, "!      Build failed: the running release is unchanged")
    assert cluster.release("plain") is None and cluster.artifacts() == []
    assert cluster.remote_head("plain") is None


def test_other_refs_are_not_deployed(cluster):
    cluster.create_app("branches")
    src = cluster.repo("src", {"README": "x\n"})
    r = cluster.push(src, "branches", ref="feature")
    assert r.returncode == 0, r.stderr
    assert "-----> Not deploying refs/heads/feature: only main or master deploys" in r.remote
    assert "Building" not in r.remote
    assert cluster.release("branches") is None


def test_first_deploy_whose_web_crashes(cluster):
    cluster.create_app("crashy", env={"BUILDPACK_URL": cluster.bp_url})
    before = cluster.release("crashy")
    src = cluster.repo("src", {"hello.txt": "x\n", "Procfile": "web: echo bye; exit 4\n"})
    r = cluster.push(src, "crashy")
    assert r.returncode != 0, r.stderr
    lines_in_order(r.remote, "-----> Deploying", "Scaling web to 1", "!      web.1 crashed",
                   "!      See what it printed with 'pier log -a crashy'",
                   "!      Scaled release ", "!      The previous release ")
    assert "deployed" not in r.remote
    # The push was refused, so the app is back where it was: the release
    # it had (config vars only), the new one's web at 0.
    new = next(rel for rel in cluster.ctl.get("/apps/crashy/releases")[1]
               if rel["id"] != before["id"])
    assert cluster.release("crashy")["id"] == before["id"]
    assert cluster.ctl.get(f"/apps/crashy/formations/{new['id']}")[1]["processes"] == {"web": 0}
    assert cluster.remote_head("crashy") is None


def test_failed_deploy_keeps_the_old_release(cluster):
    app = cluster.create_app("steady", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "steady one\n"})
    assert cluster.push(src, "steady").returncode == 0
    good = cluster.release("steady")
    head = cluster.remote_head("steady")
    url = cluster.web_url(app, good["id"])

    cluster.commit(src, {"Procfile": "web: exit 2\n"})
    r = cluster.push(src, "steady")
    assert r.returncode != 0, r.stderr
    lines_in_order(r.remote, "-----> Creating release", "-----> Deploying",
                   "!      Deploy failed: ", "!      The previous release keeps running")
    assert "rolled back" in r.remote, r.remote
    assert cluster.remote_head("steady") == head
    assert cluster.release("steady")["id"] == good["id"]
    assert get(url + "/hello.txt") == "steady one\n"


def test_build_timeout_stops_the_build(cluster):
    gr = cluster.start_receiver("gitreceive-quick", build_timeout=8)
    app = cluster.create_app("slow", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "x\n", "slow": ""})
    started = time.monotonic()
    r = cluster.push(src, "slow", gr=gr)
    assert r.returncode != 0, r.stderr
    assert time.monotonic() - started < 60
    lines_in_order(r.remote, "compile is told to hang",
                   "!      Build timed out after 8 s (PIER_BUILD_TIMEOUT)",
                   "!      Build failed: the running release is unchanged")
    builds = [j for j in cluster.jobs(app) if (j.get("meta") or {}).get("pier.build")]
    assert len(builds) == 1 and builds[0]["desired_state"] == "down", builds
    deadline = time.monotonic() + 30
    while job_record(cluster.store, builds[0]["id"]).get("state") not in ENDED:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert cluster.release("slow")["processes"] == {}


def test_pusher_leaving_stops_the_build(cluster):
    app = cluster.create_app("leaver", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "x\n", "slow": ""})
    p = subprocess.Popen(["git", "push", cluster.remote("leaver"), "HEAD:refs/heads/main"],
                         cwd=src, env=cluster.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    build = None
    while build is None:
        assert time.monotonic() < deadline, "the build job never came up"
        build = next((j for j in cluster.jobs(app) if j.get("state") == "up"), None)
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    deadline = time.monotonic() + 60
    while job_record(cluster.store, build["id"]).get("state") not in ENDED:
        assert time.monotonic() < deadline, job_record(cluster.store, build["id"])
        time.sleep(0.2)
    assert job_record(cluster.store, build["id"])["desired_state"] == "down"


def concurrently(cluster, pushes):
    """Runs `git push -f` of (repo, ref) pairs to app "queued", each 0.5 s
    after the one before; their CompletedProcesses in that order."""
    results = [None] * len(pushes)

    def push(i, d, ref):
        results[i] = cluster.git("push", "-f", cluster.remote("queued"), f"HEAD:refs/heads/{ref}",
                                 cwd=d)

    threads = []
    for i, (d, ref) in enumerate(pushes):
        threads.append(threading.Thread(target=push, args=(i, d, ref)))
        threads[-1].start()
        time.sleep(0.5)
    for t in threads:
        t.join(300)
    return results


def test_pushes_to_one_app_queue(cluster):
    cluster.create_app("queued", env={"BUILDPACK_URL": cluster.bp_url})
    a = cluster.repo("a", {"hello.txt": "a\n"})
    b = cluster.repo("b", {"hello.txt": "b\n"})
    # main and master both deploy: one after the other, both accepted
    ra, rb = concurrently(cluster, [(a, "main"), (b, "master")])
    out = ra.stderr + rb.stderr
    assert ra.returncode == 0 and rb.returncode == 0, out
    assert "-----> Waiting for another push to queued to finish" in rb.stderr, out
    status, rels = cluster.ctl.get("/apps/queued/releases")
    assert status == 200 and len(rels) == 3, rels
    assert rels[0]["meta"]["rev"] == cluster.git("rev-parse", "HEAD", cwd=b).stdout.strip()

    # Two pushes to main from the same start: the one that waited finds
    # main moved and is refused before it builds anything.
    ha = cluster.commit(a, {"hello.txt": "a2\n"})
    cluster.commit(b, {"hello.txt": "b2\n"})
    ra, rb = concurrently(cluster, [(a, "main"), (b, "main")])
    assert ra.returncode == 0, ra.stderr
    assert rb.returncode != 0, rb.stderr
    assert "!      refs/heads/main changed while this push waited" in rb.stderr, rb.stderr
    assert "Building" not in rb.stderr
    assert cluster.remote_head("queued") == ha
    assert cluster.release("queued")["meta"]["rev"] == ha


def build_job_up(cluster, app, timeout=60):
    """Waits for the app's build job to be up; its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for j in cluster.jobs(app):
            if (j.get("meta") or {}).get("pier.build") and j.get("state") == "up":
                return j
        time.sleep(0.2)
    pytest.fail(f"no build job came up: {cluster.jobs(app)}")


def push_while(cluster, src, app, during, gr=None):
    """Pushes main, calls during() once the build job is up, and returns
    (exit status, what the hook printed)."""
    p = subprocess.Popen(["git", "push", cluster.remote(app["name"], gr), "HEAD:refs/heads/main"],
                         cwd=src, env=cluster.env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        build_job_up(cluster, app)
        during()
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert not sanitizer_reports(err), err
    return p.returncode, "\n".join(line[len("remote: "):] for line in err.splitlines()
                                   if line.startswith("remote: "))


def test_recreated_app_starts_afresh(cluster):
    """Everything the hook keeps per app is named by the app's id: an app
    deleted and made again under its name gets no build cache, lock or
    blob of the old one."""
    first = cluster.create_app("reborn", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "one\n"})
    r = cluster.push(src, "reborn")
    assert r.returncode == 0, r.stderr
    assert "build number 1" in r.remote
    status, _ = cluster.ctl.delete("/apps/reborn")
    assert status == 200
    second = cluster.create_app("reborn", env={"BUILDPACK_URL": cluster.bp_url})
    assert second["id"] != first["id"]
    cluster.commit(src, {"hello.txt": "two\n"})
    r = cluster.push(src, "reborn")
    assert r.returncode == 0, r.stderr
    assert "build number 1" in r.remote, r.remote
    locks = cluster.tmp / "gitreceive" / "locks"
    assert (locks / f"{first['id']}.lock").exists() and (locks / f"{second['id']}.lock").exists()
    for app in (first, second):
        assert cluster.blob_get(f"/caches/{app['id']}.tgz")[0] == 200


def tar_ref(data, ref):
    """The commit ref names in a tar of a bare repository (None: none)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = {m.name.removeprefix("./"): m for m in t.getmembers()}
        if ref in names:
            return t.extractfile(names[ref]).read().decode().strip()
        if "packed-refs" in names:
            for line in t.extractfile(names["packed-refs"]).read().decode().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    return None


def test_post_receive_saves_the_repository(cluster):
    """After every push the repository goes to the blobstore as
    repos/<app id>.tar (for the key only); a blobstore that cannot take it
    is a warning, and the push stands."""
    app = cluster.create_app("saved")
    src = cluster.repo("src", {"README": "x\n"})
    r = cluster.push(src, "saved", ref="feature")
    assert r.returncode == 0, r.stderr
    head = cluster.git("rev-parse", "HEAD", cwd=src).stdout.strip()
    path = f"/repos/{app['id']}.tar"
    status, data = cluster.blob_get(path)
    assert status == 200, (status, r.remote)
    assert tar_ref(data, "refs/heads/feature") == head
    assert tar_ref(data, "HEAD") == "ref: refs/heads/main"
    assert cluster.blob_get(path, auth=False)[0] == 401

    # The hook itself, as git runs it: in the repository, the refs on stdin.
    repo = cluster.repo_dir("saved")
    env = {**os.environ, "PIER_APP": "saved", "PIER_APP_ID": app["id"],
           "PIER_CONTROLLER": cluster.ctl.url, "PIER_KEY": KEY, "PIER_BLOBSTORE": cluster.blob.url,
           "PIER_GIT_DIR": str(cluster.tmp / "gitreceive"), "PIER_BUILD_TIMEOUT": "900"}
    hook = [cluster.gr.argv[0], "gitreceive", "hook", "post-receive"]
    refs = f"{'0' * 40} {head} refs/heads/other\n"
    assert cluster.git("update-ref", "refs/heads/other", head, cwd=repo).returncode == 0
    p = subprocess.run(hook, cwd=repo, env=env, input=refs, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout == "", p
    assert not sanitizer_reports(p.stderr), p.stderr
    assert tar_ref(cluster.blob_get(path)[1], "refs/heads/other") == head
    # Without PIER_APP_ID it asks the controller.
    p = subprocess.run(hook, cwd=repo, env={k: v for k, v in env.items() if k != "PIER_APP_ID"},
                       input=refs, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "", p
    # A blobstore that does not answer: a warning, exit 0, the old archive.
    p = subprocess.run(hook, cwd=repo, env={**env, "PIER_BLOBSTORE": "http://127.0.0.1:9"},
                       input=refs, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p
    assert "!      Warning: the repository was not saved to the blobstore: " in p.stdout, p
    assert "127.0.0.1:9" in p.stdout
    assert not sanitizer_reports(p.stderr), p.stderr
    assert cluster.blob_get(path)[0] == 200


def test_blobstore_from_discovery(cluster):
    """With a store, the hook uses the blobstore discovery names (reachable
    from build jobs on any host), not the receiver's --blobstore."""
    found = cluster.start_pierd("blobstore", name="blobstore-2",
                                args=["--dir", cluster.tmp / "blobs2", "--key", KEY,
                                      "--store", cluster.store])
    gr = cluster.start_receiver("gitreceive-disc")
    app = cluster.create_app("found", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "found\n"})
    r = cluster.push(src, "found", gr=gr)
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, "-----> Receiving push",
                   f"       Blobstore: {found.url} (from discovery)", "=====> found deployed")
    rel = cluster.release("found")
    status, art = cluster.ctl.get(f"/artifacts/{rel['artifacts'][0]}")
    assert art["uri"].startswith(f"{found.url}/slugs/{app['id']}/"), art
    assert get(cluster.web_url(app, rel["id"]) + "/hello.txt") == "found\n"
    assert not list((cluster.tmp / "blobs" / "blobs").rglob(f"slugs/{app['id']}/*"))


def test_pushes_through_two_receivers_queue(cluster):
    """Two receivers sharing a store build one app one push at a time: the
    second waits on the app's lock in the store, which is gone after."""
    grs = [cluster.start_receiver(f"gitreceive-{n}") for n in (1, 2)]
    cluster.create_app("shared", env={"BUILDPACK_URL": cluster.bp_url})
    a = cluster.repo("a", {"hello.txt": "a\n", "pause": "3"})
    b = cluster.repo("b", {"hello.txt": "b\n"})
    results = [None, None]

    def push(i, d):
        results[i] = cluster.push(d, "shared", gr=grs[i])

    t = threading.Thread(target=push, args=(0, a))
    t.start()
    build_job_up(cluster, {"id": cluster.app_id("shared")})
    push(1, b)
    t.join(300)
    ra, rb = results
    assert ra.returncode == 0, ra.stderr
    assert rb.returncode == 0, rb.stderr
    ha = cluster.git("rev-parse", "HEAD", cwd=a).stdout.strip()
    lines_in_order(rb.remote, "-----> Waiting for another push to shared to finish",
                   f"       (a push of {ha[:8]} on ", "-----> Receiving push",
                   "=====> shared deployed")
    assert "Waiting" not in ra.remote
    assert kv_range(cluster.store, "/pier/v1/gitreceive/locks/") == []
    status, rels = cluster.ctl.get("/apps/shared/releases")
    assert len(rels) == 3
    assert cluster.release("shared")["meta"]["rev"] == \
        cluster.git("rev-parse", "HEAD", cwd=b).stdout.strip()


def test_release_changed_while_building(cluster):
    """The new release is made from the app's release as it is when the
    build ends: a config var set meanwhile stays; a code release made
    meanwhile (a rollback, another push) is not deployed over."""
    app = cluster.create_app("racy", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "one\n"})
    assert cluster.push(src, "racy").returncode == 0
    one = cluster.release("racy")

    def set_var():
        cur = cluster.release("racy")
        body = {k: cur[k] for k in ("artifacts", "processes", "meta")}
        body.update(app_id="racy", env={**cur["env"], "ADDED": "during-build"})
        status, rel = cluster.ctl.post("/releases", body)
        assert status == 200, rel
        status, dep = cluster.ctl.post("/apps/racy/deploy", {"id": rel["id"]})
        assert status == 200, dep
        deadline = time.monotonic() + 60
        while cluster.ctl.get(f"/deployments/{dep['id']}")[1]["status"] != "complete":
            assert time.monotonic() < deadline, cluster.ctl.get(f"/deployments/{dep['id']}")
            time.sleep(0.2)

    two_rev = cluster.commit(src, {"hello.txt": "two\n", "pause": "12"})
    rc, out = push_while(cluster, src, app, set_var)
    assert rc == 0, out
    lines_in_order(out, "-----> Creating release",
                   "       The app's config changed while this built",
                   "=====> racy deployed (release v4 / ")
    two = cluster.release("racy")
    assert two["meta"]["rev"] == two_rev, two
    assert two["env"]["ADDED"] == "during-build", two
    assert get(cluster.web_url(app, two["id"]) + "/hello.txt") == "two\n"

    cluster.commit(src, {"hello.txt": "three\n"})
    slugs = sorted((cluster.tmp / "blobs" / "blobs" / "slugs").rglob("*.tgz"))

    def roll_back():
        status, _ = cluster.ctl.put("/apps/racy/release", {"id": one["id"]})
        assert status == 200

    rc, out = push_while(cluster, src, app, roll_back)
    assert rc != 0, out
    assert f"!      racy's release changed to {one['id']} while this push built" in out, out
    assert "-----> Deploying" not in out
    assert cluster.release("racy")["id"] == one["id"]
    # nothing was made of the refused build: no artifact, its slug deleted
    assert sorted((cluster.tmp / "blobs" / "blobs" / "slugs").rglob("*.tgz")) == slugs


def test_result_line_too_long(cluster):
    """The hook holds at most 1 MiB of a line that may be the result."""
    cluster.create_app("chatty", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "x\n", "bigresult": ""})
    r = cluster.push(src, "chatty")
    assert r.returncode != 0, r.stderr
    lines_in_order(r.remote, '!      The build printed a line starting with "pier-build-result: " '
                   "longer than 1 MiB", "!      Build failed: the running release is unchanged")
    assert cluster.release("chatty")["processes"] == {}
    assert cluster.artifacts() == []


def test_broken_build_session_stops_the_build(cluster):
    """A controller that restarts under a build breaks its session; the
    hook then stops the build job itself once the controller is back."""
    app = cluster.create_app("orphan", env={"BUILDPACK_URL": cluster.bp_url})
    src = cluster.repo("src", {"hello.txt": "x\n", "slow": ""})
    build = {}

    def restart_controller():
        build.update(build_job_up(cluster, app))
        cluster.ctl.daemon.stop(signal.SIGKILL)
        cluster.ctl.daemon.start()

    rc, out = push_while(cluster, src, app, restart_controller)
    assert rc != 0, out
    assert "!      The build job's session broke: " in out, out
    assert job_record(cluster.store, build["id"])["desired_state"] == "down"
    deadline = time.monotonic() + 30
    while job_record(cluster.store, build["id"]).get("state") not in ENDED:
        assert time.monotonic() < deadline, job_record(cluster.store, build["id"])
        time.sleep(0.2)
