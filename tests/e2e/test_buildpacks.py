"""The buildpacks shipped in buildpacks/ (docs/buildpacks.md), run on the
sample apps in tests/apps the way `pierslug build` runs them, and the built
apps started the way `pierslug run` starts them.

For each sample app: a copy in a fresh directory, `bin/detect DIR` of every
buildpack in buildpacks/order (exactly the intended one applies, and it is
the first in the order), `bin/compile DIR CACHE ENVDIR` with cwd DIR, then
`bin/release DIR`; the web process (the Procfile's, else the release's
default) runs as `bash -c` after sourcing .profile.d/*.sh, with HOME=DIR
and PORT a free loopback port; GET / must answer "hello from <app>". Each
app is built and run as root and as user nobody (uid 65534, as jobs run).

The Node.js buildpack needs the npm registry; nothing else leaves the
machine. No pier daemon is involved (PIER_BUILD_DIR is not needed).
"""

import gzip
import http.client
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BUILDPACKS = REPO / "buildpacks"
APPS = REPO / "tests" / "apps"
ORDER = ["nodejs", "c", "static", "procfile"]
NOBODY = 65534
PATH = "/usr/local/bin:/usr/bin:/bin"  # an unprivileged user's: no sbin

# app -> (the buildpack that builds it, the name its detect prints)
SAMPLES = {
    "procfile": ("procfile", "Procfile"),
    "static": ("static", "Static"),
    "c": ("c", "C"),
    "nodejs": ("nodejs", "Node.js"),
}


def parse_release(text):
    """The subset of YAML bin/release writes (src/build/relyaml.h): top-level
    keys with a block mapping, "{}", "[]" or a scalar. Anything else fails."""
    doc, key = {}, None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip() == "---" or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_]+):(?: (.*))?", line)
        if m:
            key, value = m.group(1), (m.group(2) or "").strip()
            doc[key] = {"{}": {}, "[]": [], "": {}}.get(value, value)
            continue
        m = re.fullmatch(r"  ([A-Za-z0-9_-]+): (\S.*)", line)
        assert m and key and isinstance(doc[key], dict), f"release line {n}: {line!r}"
        doc[key][m.group(1)] = m.group(2)
    return doc


def procfile_types(path):
    types = {}
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"([A-Za-z0-9_-]+):\s*(.*\S)", line)
            if m:
                types[m.group(1)] = m.group(2)
    return types


class Build:
    """A build directory for one app (app/, cache/, env/, home/ and a copy of
    the buildpacks, read-only as in the build container), run as root or as
    nobody. Everything lives in a directory under /tmp that nobody can
    reach (pytest's own tmp_path is private to root)."""

    def __init__(self, app=None, as_nobody=False):
        self.as_nobody = as_nobody
        self.root = Path(tempfile.mkdtemp(prefix="pier-bp-"))
        self.root.chmod(0o755)
        self.dir = self.root / "app"
        self.cache = self.root / "cache"
        self.env_dir = self.root / "env"
        self.home = self.root / "home"
        self.buildpacks = self.root / "buildpacks"
        self.tmp = self.root / "tmp"  # TMPDIR: nginx's and npm's files go there
        if app:
            shutil.copytree(APPS / app, self.dir, ignore=shutil.ignore_patterns(
                "node_modules", "build", "app", "*.o"))
        else:
            self.dir.mkdir()
        for d in (self.cache, self.env_dir, self.home, self.tmp):
            d.mkdir()
        shutil.copytree(BUILDPACKS, self.buildpacks)
        self._read_only(self.buildpacks)
        if as_nobody:
            for d in (self.dir, self.cache, self.env_dir, self.home, self.tmp):
                self._chown(d)
        self.procs = []

    @staticmethod
    def _read_only(top):
        for p in [top, *top.rglob("*")]:
            mode = p.stat().st_mode
            p.chmod(mode & ~0o222 | (0o555 if p.is_dir() or mode & 0o100 else 0o444))

    @staticmethod
    def _chown(top):
        for p in [top, *top.rglob("*")]:
            os.lchown(p, NOBODY, NOBODY)

    def argv(self, argv):
        argv = [str(a) for a in argv]
        if self.as_nobody:
            return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                    "--clear-groups", *argv]
        return argv

    def env(self, **extra):
        env = {"PATH": PATH, "HOME": str(self.home), "LANG": "C.UTF-8", "TMPDIR": str(self.tmp),
               "STACK": "pier-bookworm", "SOURCE_VERSION": "0123456789abcdef"}
        env.update(extra)
        return env

    def bp(self, name, script):
        return self.buildpacks / name / "bin" / script

    def run(self, argv, timeout=300, env=None):
        return subprocess.run(self.argv(argv), cwd=self.dir, env=env or self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)

    def detect(self, name):
        return self.run([self.bp(name, "detect"), self.dir], timeout=30)

    def compile(self, name):
        return self.run([self.bp(name, "compile"), self.dir, self.cache, self.env_dir])

    def release(self, name):
        r = self.run([self.bp(name, "release"), self.dir], timeout=30)
        assert r.returncode == 0, r.stderr
        return parse_release(r.stdout)

    def set_config(self, **vars):
        for k, v in vars.items():
            p = self.env_dir / k
            p.write_text(v)
            if self.as_nobody:
                os.lchown(p, NOBODY, NOBODY)

    def start(self, command, env=None, out=None):
        """Starts command as `pierslug run` would (HOME=app, .profile.d/*.sh
        sourced, then `bash -c`) in its own process group, and waits until
        GET / answers. Returns (process, port)."""
        port = free_port()
        script = ('for f in .profile.d/*.sh; do if [ -e "$f" ]; then . "$f"; fi; done; '
                  'if [ -f .profile ]; then . .profile; fi; exec bash -c "$0"')
        run_env = {"PATH": PATH, "HOME": str(self.dir), "PORT": str(port), "DYNO": "web.1",
                   "LANG": "C.UTF-8", "TMPDIR": str(self.tmp), **(env or {})}
        log = open(self.root / f"web-{port}.log", "wb")
        proc = subprocess.Popen(self.argv(["bash", "-c", script, command]), cwd=self.dir,
                                env=run_env, stdin=subprocess.DEVNULL,
                                stdout=out if out is not None else log, stderr=log,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{command!r} exited with {proc.returncode}:\n{self.web_log(port)}")
            if get(port, "/") is not None:
                return proc, port
            time.sleep(0.1)
        pytest.fail(f"{command!r} did not answer on port {port} in 60 s:\n{self.web_log(port)}")

    def web_log(self, port):
        return (self.root / f"web-{port}.log").read_text(errors="replace")

    @staticmethod
    def stop(proc):
        """SIGTERM to the process group (as the runner does), then SIGKILL."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def cleanup(self):
        for proc in self.procs:
            self.stop(proc)
        for p in [self.root, *self.root.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(self.root, ignore_errors=True)


def get(port, path, headers=None):
    """(status, headers dict with lower-case names, body bytes) of GET path on
    127.0.0.1:port, or None when nothing answers."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        result = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        c.close()
        return result
    except OSError:
        return None


@pytest.fixture
def make_build():
    builds = []

    def make(app=None, as_nobody=False):
        b = Build(app, as_nobody)
        builds.append(b)
        return b

    yield make
    for b in builds:
        b.cleanup()


def build_app(b, app):
    """Detects, compiles and releases app in b as the slug builder does;
    returns (buildpack, compile output, release, web command)."""
    expected, name = SAMPLES[app]
    detected = []
    for bp in ORDER:
        r = b.detect(bp)
        assert r.returncode in (0, 1), f"{bp}/bin/detect: {r.returncode} {r.stderr}"
        if r.returncode == 0:
            detected.append(bp)
            if bp == expected:
                assert r.stdout.splitlines()[0] == name
    assert detected == [expected], f"{app}: detected by {detected}"

    r = b.compile(expected)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{expected}/bin/compile failed:\n{out}"
    assert r.stdout.startswith("-----> "), out
    for line in r.stdout.splitlines():
        assert line.startswith("-----> ") or line.startswith("       "), f"style: {line!r}"

    release = b.release(expected)
    assert set(release) >= {"addons", "default_process_types"}, release
    types = dict(release["default_process_types"])
    types.update(procfile_types(b.dir / "Procfile"))
    assert "web" in types, f"{app}: no web process: {release}"
    return expected, out, release, types["web"]


@pytest.mark.parametrize("as_nobody", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("app", list(SAMPLES))
def test_sample_app_builds_and_serves(make_build, app, as_nobody):
    b = make_build(app, as_nobody)
    bp, out, release, web = build_app(b, app)

    if app == "procfile":
        assert release["default_process_types"] == {}
        assert "Procfile declares types -> web" in out
    elif app == "static":
        assert release["default_process_types"] == {"web": "bin/start-nginx"}
        assert os.access(b.dir / "bin" / "start-nginx", os.X_OK)
    elif app == "c":
        assert release["default_process_types"] == {"web": "./app"}
        assert re.search(r"^       gcc ", out, re.M), out
        assert os.access(b.dir / "app", os.X_OK)
    elif app == "nodejs":
        assert release["default_process_types"] == {"web": "npm start"}
        assert re.search(r"^       node v\d+", out, re.M) and "npm ci" in out, out
        assert (b.dir / "node_modules" / "escape-html").is_dir()
        assert not (b.dir / "node_modules" / "ms").exists(), "devDependency not pruned"
        assert (b.dir / "build" / "info.json").exists(), "npm run build did not run"
        assert (b.cache / "npm").is_dir() and any((b.cache / "npm").iterdir())
    if as_nobody:
        owners = {p.lstat().st_uid for p in [b.dir, *b.dir.rglob("*")]}
        assert owners == {NOBODY}, f"files not owned by nobody after compile: {owners}"

    # A pipe created by root, as the platform's: nginx must still log to it.
    proc, port = b.start(web, out=subprocess.PIPE)
    status, headers, body = get(port, "/")
    assert status == 200, body
    assert f"hello from {app}".encode() in body, body
    if app == "nodejs":
        assert b"escape-html says &lt;b&gt;pier &amp; npm&lt;/b&gt;" in body, body
        assert b"built with ms: 1m" in body and b"NODE_ENV=production" in body, body
    if app == "static":
        check_static_serving(port)
    if as_nobody:
        uids = ps_uids(proc.pid)
        assert uids and uids == {NOBODY}, f"web processes run as {uids}"
    assert Build.stop(proc) is not None
    assert get(port, "/") is None, "still answering after SIGTERM to its process group"
    stdout = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    if app == "static":
        assert '"GET / HTTP/1.1" 200' in stdout, f"no access log on stdout:\n{stdout}" \
                                                 f"\n{b.web_log(port)}"


def ps_uids(pgid):
    r = subprocess.run(["ps", "-o", "uid=", "-g", str(pgid)], capture_output=True, text=True)
    return {int(u) for u in r.stdout.split()}


def check_static_serving(port):
    status, headers, body = get(port, "/style.css")
    assert status == 200 and headers["content-type"] == "text/css", headers
    status, headers, body = get(port, "/", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip", headers
    assert b"hello from static" in gzip.decompress(body)
    status, headers, _ = get(port, "/docs")
    assert status == 301 and headers["location"] == "/docs/", headers  # no port in it
    status, _, body = get(port, "/docs/")
    assert status == 200 and b"hello from static docs" in body
    assert get(port, "/missing.html")[0] == 404


def test_order_lists_every_shipped_buildpack():
    assert (BUILDPACKS / "order").read_text().split() == ORDER
    shipped = sorted(p.name for p in BUILDPACKS.iterdir() if p.is_dir())
    assert shipped == sorted(ORDER)
    for bp in ORDER:
        for script in ("detect", "compile", "release"):
            p = BUILDPACKS / bp / "bin" / script
            assert p.stat().st_mode & stat.S_IXOTH, f"{p} is not executable by all"
            text = p.read_text()
            assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, p


def test_detection_edge_cases(make_build):
    b = make_build()
    detects = lambda: [bp for bp in ORDER if b.detect(bp).returncode == 0]  # noqa: E731
    assert detects() == [], "an empty app must match nothing"
    (b.dir / "Makefile").write_text("all:\n\ttrue\n")
    assert detects() == [], "a Makefile without C sources is not a C app"
    (b.dir / "src").mkdir()
    (b.dir / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    assert detects() == ["c"]
    (b.dir / "index.html").write_text("<p>hi</p>\n")
    assert detects() == ["c", "static"]  # c comes first in the order
    (b.dir / "package.json").write_text("{}\n")
    assert detects() == ["nodejs", "c"], "static must not claim a Node.js app"
    (b.dir / "Procfile").write_text("web: true\n")
    assert detects() == ["nodejs", "c", "procfile"]


def test_nodejs_cache_is_reused(make_build):
    first = make_build("nodejs")
    r = first.compile("nodejs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "npm cache: empty (first build)" in r.stdout
    assert (first.cache / "npm" / "_cacache").is_dir()

    # Offline with an empty cache fails: the offline setting is honoured ...
    control = make_build("nodejs")
    control.set_config(NPM_CONFIG_OFFLINE="true")
    r = control.compile("nodejs")
    assert r.returncode != 0, "npm ci worked offline without a cache"
    assert " !     npm ci --include=dev --prefer-offline failed" in r.stderr, r.stderr

    # ... so the second build, offline, got every package from CACHE_DIR.
    second = make_build("nodejs")
    shutil.rmtree(second.cache)
    shutil.copytree(first.cache, second.cache)
    second.set_config(NPM_CONFIG_OFFLINE="true", NODE_ENV="staging", SECRET="s3cret")
    r = second.compile("nodejs")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "npm cache: restored from the previous build" in out, out
    assert "NODE_ENV=staging" in out, "NODE_ENV from ENV_DIR not used at build time"
    assert "s3cret" not in out

    # config vars reach the app at run time through the platform's env
    proc, port = second.start("npm start", env={"NODE_ENV": "staging"})
    assert b"NODE_ENV=staging" in get(port, "/")[2]
    Build.stop(proc)


def test_c_compile_failure_fails_the_build(make_build):
    b = make_build("c")
    src = b.dir / "server.c"
    src.write_text(src.read_text() + "\nint broken(void) { return 1 }\n")
    r = b.compile("c")
    assert r.returncode != 0
    assert re.search(r"^       .*server\.c:\d+:\d+: error: expected .;. before", r.stdout, re.M), r.stdout
    assert " !     make failed (exit 2)" in r.stderr, r.stderr
    assert not (b.dir / "app").exists()
    assert b.release("c")["default_process_types"] == {}, "no ./app, no default web"


def test_c_config_vars_reach_make(make_build):
    b = make_build("c")
    b.set_config(CFLAGS="-O0 -DPIER_MARKER=1 -Werror=this-is-not-a-flag")
    r = b.compile("c")
    assert r.returncode != 0, "CFLAGS from ENV_DIR were not passed to make"
    assert "this-is-not-a-flag" in r.stdout


def test_static_site_at_the_root_hides_platform_files(make_build):
    b = make_build()
    (b.dir / "index.html").write_text("<p>hello from the root site</p>\n")
    (b.dir / "Procfile").write_text("worker: sleep 1000\n")
    (b.dir / ".git").mkdir()
    (b.dir / ".git" / "config").write_text("[core]\n")
    (b.dir / ".env").write_text("SECRET=1\n")
    (b.dir / ".well-known").mkdir()
    (b.dir / ".well-known" / "security.txt").write_text("Contact: mailto:x@example.org\n")
    (b.dir / "bin").mkdir()
    (b.dir / "bin" / "seed.sh").write_text("echo a script of the app's\n")
    (b.dir / "binary.html").write_text("not under bin/\n")
    bp, out, release, web = build_app_root_static(b)
    assert "Site root: the app's root directory (hidden files, Procfile and bin/ are not " \
           "served)" in out
    proc, port = b.start(web)
    assert b"hello from the root site" in get(port, "/")[2]
    # the whole of bin/, however it is spelled, the Procfile and dotfiles
    for hidden in ("/Procfile", "/bin/start-nginx", "/bin/nginx.conf.template",
                   "/bin/seed.sh", "/bin/", "/bin", "//bin/seed.sh", "/%62in/seed.sh",
                   "/x/../bin/seed.sh", "/.git/config", "/.env", "/.well-known/.hidden"):
        assert get(port, hidden)[0] == 404, hidden
    assert get(port, "/.well-known/security.txt")[0] == 200
    assert get(port, "/binary.html")[0] == 200
    Build.stop(proc)


def test_static_site_in_public_serves_its_bin(make_build):
    """With public/ as the site, a public/bin/ is the site's own."""
    b = make_build("static")
    (b.dir / "public" / "bin").mkdir(parents=True, exist_ok=True)
    (b.dir / "public" / "bin" / "tool.txt").write_text("a file of the site\n")
    r = b.compile("static")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Site root: public/ (hidden files are not served)" in r.stdout
    proc, port = b.start("bin/start-nginx")
    assert get(port, "/bin/tool.txt")[2] == b"a file of the site\n"
    assert get(port, "/Procfile")[0] == 404
    Build.stop(proc)


def build_app_root_static(b):
    assert [bp for bp in ORDER if b.detect(bp).returncode == 0] == ["static", "procfile"]
    r = b.compile("static")
    assert r.returncode == 0, r.stdout + r.stderr
    release = b.release("static")
    return "static", r.stdout, release, release["default_process_types"]["web"]


def test_static_keeps_the_apps_own_template(make_build):
    b = make_build("static")
    (b.dir / "bin").mkdir()
    (b.dir / "bin" / "nginx.conf.template").write_text(
        "daemon off; pid \"@TMP@/nginx.pid\"; error_log stderr; @USER@\n"
        "events {}\n"
        "http { access_log off; client_body_temp_path \"@TMP@/body\";"
        " proxy_temp_path \"@TMP@/p\"; fastcgi_temp_path \"@TMP@/f\";"
        " uwsgi_temp_path \"@TMP@/u\"; scgi_temp_path \"@TMP@/s\";\n"
        "  server { listen @PORT@; location / { return 200 \"hello from my template\\n\"; } } }\n")
    r = b.compile("static")
    assert r.returncode == 0 and "Using the app's own bin/nginx.conf.template" in r.stdout
    proc, port = b.start("bin/start-nginx")
    assert get(port, "/")[2] == b"hello from my template\n"
    Build.stop(proc)


def test_scripts_are_shellcheck_clean(make_build):
    b = make_build("static")
    assert b.compile("static").returncode == 0
    scripts = [BUILDPACKS / bp / "bin" / s for bp in ORDER for s in ("detect", "compile", "release")]
    r = subprocess.run(["shellcheck", *map(str, scripts), str(b.dir / "bin" / "start-nginx")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
