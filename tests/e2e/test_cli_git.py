"""The `pier` CLI's side of `git push`, end to end, against a real
`pierd store` + `pierd controller` and the real `git`:

- `pier create` in a git repository adds the remote `pier` =
  `<git_url>/<app>.git` and, for an http git URL, makes `pier
  git-credentials` the repository's credential helper for it, so git gets
  the cluster key without asking anyone;
- it leaves a `pier` remote pointing elsewhere alone (with the command that
  fixes it), adds nothing with --no-remote, and outside a repository or
  without a git URL says how to do it later;
- `pier git-credentials get` answers git's credential protocol for the
  cluster's git URL and for nothing else;
- `pier keys add/list/remove` round-trips real ssh-keygen keys, and refuses
  files that are not public keys with a message naming the file.

The CLI finds the cluster through PIER_CONTROLLER_URL/KEY and PIER_GIT_URL,
or, where the test says so, through a config file of its own."""

import base64
import json
import os
import pty
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from conftest import free_port, sanitizer_reports
from controller_util import Controller

KEY = "cli-git-key"


@pytest.fixture
def cluster(start_pierd):
    store = start_pierd("store", name="store")
    ctl = Controller(start_pierd, store.url, key=KEY, name="controller")
    # Nothing listens there: only the URL's shape matters to the CLI.
    return SimpleNamespace(ctl=ctl, url=ctl.url,
                           git_url=f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def pier(pier_build, tmp_path, cluster):
    """Runs `pier ARGS` (cwd: a folder outside any repository unless given)
    against the cluster; env entries set to None are removed."""
    exe = pier_build / "pier"
    if not exe.exists():
        pytest.fail(f"{exe} has not been built", pytrace=False)
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()

    def environ(env=None):
        e = dict(os.environ, PIER_CONFIG=str(tmp_path / "no-config.json"), HOME=str(home),
                 PIER_CONTROLLER_URL=cluster.url, PIER_CONTROLLER_KEY=KEY,
                 PIER_GIT_URL=cluster.git_url, GIT_CONFIG_NOSYSTEM="1",
                 GIT_TERMINAL_PROMPT="0", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.test",
                 GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test")
        for k in ("PIER_CLUSTER", "PIER_APP", "XDG_CONFIG_HOME", "SSH_AUTH_SOCK",
                  "GIT_ASKPASS", "SSH_ASKPASS"):
            e.pop(k, None)
        for k, v in (env or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def run(*args, env=None, cwd=None, input=""):
        p = subprocess.run([str(exe), *args], env=environ(env), capture_output=True, text=True,
                           timeout=60, cwd=cwd or work, input=input)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{p.stderr}"
        return p

    def git(*args, cwd, env=None, check=True):
        p = subprocess.run(["git", *args], env=environ(env), capture_output=True, text=True,
                           timeout=60, cwd=cwd)
        assert not sanitizer_reports(p.stderr), p.stderr
        if check:
            assert p.returncode == 0, f"git {' '.join(args)}: {p.returncode}\n{p.stderr}"
        return p

    def repo(name):
        d = tmp_path / name
        d.mkdir()
        git("init", "-q", "-b", "main", cwd=d)
        return d

    run.exe = exe
    run.environ = environ
    run.home = home
    run.work = work
    run.git = git
    run.repo = repo
    run.config = tmp_path / "no-config.json"
    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def fails(p, status=1):
    assert p.returncode == status, \
        f"exit {p.returncode}, wanted {status}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def config_get(pier, repo, key):
    p = pier.git("config", "--get-all", key, cwd=repo, check=False)
    return p.stdout.splitlines()


def cred(pier, text, op="get", env=None, args=()):
    return ok(pier(*args, "git-credentials", op, input=text, env=env)).stdout


class AuthServer:
    """A loopback HTTP server standing in for the git receiver: 401 with
    WWW-Authenticate: Basic until a request carries credentials, then an
    empty dumb-HTTP ref list. Remembers every Authorization header."""

    def __init__(self):
        self.auth = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                a = self.headers.get("Authorization")
                owner.auth.append((self.path, a))
                if not a:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="pier"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# ---- pier create: the git remote ----

def test_create_adds_the_remote_and_the_credential_helper(pier, cluster):
    repo = pier.repo("app")
    p = ok(pier("create", "myapp", cwd=repo))
    url = f"{cluster.git_url}/myapp.git"
    # stdout stays the name alone (APP=$(pier create)); the rest is stderr.
    assert p.stdout == "myapp\n"
    assert f"Added git remote pier: {url}\n" in p.stderr, p.stderr
    assert cluster.ctl.get("/apps/myapp")[0] == 200

    assert config_get(pier, repo, "remote.pier.url") == [url]
    helper = f"!'{pier.exe}' git-credentials"
    assert config_get(pier, repo, f"credential.{cluster.git_url}.helper") == [helper]
    assert config_get(pier, repo, f"credential.{cluster.git_url}.username") == ["pier"]

    # The app is inferred from the new remote's URL.
    assert ok(pier("info", cwd=repo)).stdout.startswith("=== myapp\n")

    # git itself, through the helper line, gets the key without a prompt
    # (GIT_TERMINAL_PROMPT=0 would make it fail otherwise).
    host = cluster.git_url.split("://")[1]
    p = subprocess.run(["git", "credential", "fill"], cwd=repo, env=dict(
        os.environ, HOME=str(pier.home), PIER_CONFIG=str(pier.config),
        PIER_CONTROLLER_URL=cluster.url, PIER_CONTROLLER_KEY=KEY, PIER_GIT_URL=cluster.git_url,
        GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0"),
        input=f"protocol=http\nhost={host}\npath=myapp.git\n\n", capture_output=True, text=True,
        timeout=30)
    assert p.returncode == 0, p.stderr
    assert "username=pier\n" in p.stdout and f"password={KEY}\n" in p.stdout, p.stdout

    # Running create's remote step again (pier git-remote) changes nothing.
    p = ok(pier("git-remote", cwd=repo))
    assert f"Git remote pier already points at {url}" in p.stderr
    assert config_get(pier, repo, f"credential.{cluster.git_url}.helper") == [helper]


def test_on_a_terminal_create_says_created(pier, cluster):
    repo = pier.repo("app")
    master, slave = pty.openpty()
    try:
        p = subprocess.run([str(pier.exe), "create", "tty-app", "--remote=prod"], cwd=repo,
                           env=pier.environ(), stdin=subprocess.DEVNULL, stdout=slave,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0, p.stderr
    assert not sanitizer_reports(p.stderr), p.stderr
    assert out.decode().replace("\r\n", "\n") == "Created tty-app\n"
    assert f"Added git remote prod: {cluster.git_url}/tty-app.git" in p.stderr


def test_git_talks_to_the_receiver_with_the_cluster_key(pier):
    """A real git fetch over HTTP: the server's 401 makes git ask the helper,
    and the next request carries pier:KEY."""
    server = AuthServer()
    try:
        repo = pier.repo("app")
        ok(pier("create", "fetched", cwd=repo, env={"PIER_GIT_URL": server.url}))
        p = pier.git("ls-remote", "pier", cwd=repo, env={"PIER_GIT_URL": server.url},
                     check=False)
        assert p.returncode == 0, p.stderr
        want = "Basic " + base64.b64encode(f"pier:{KEY}".encode()).decode()
        assert server.auth[0] == ("/fetched.git/info/refs?service=git-upload-pack", None)
        assert any(a == want for _, a in server.auth[1:]), server.auth
    finally:
        server.close()


def test_an_existing_remote_elsewhere_is_left_alone(pier, cluster):
    repo = pier.repo("app")
    pier.git("remote", "add", "pier", "https://elsewhere.example/old.git", cwd=repo)
    p = ok(pier("create", "second", cwd=repo))
    assert p.stdout == "second\n"
    url = f"{cluster.git_url}/second.git"
    assert "git remote pier already points at https://elsewhere.example/old.git" in p.stderr
    assert f"git remote set-url pier {url}" in p.stderr, p.stderr
    assert config_get(pier, repo, "remote.pier.url") == ["https://elsewhere.example/old.git"]
    assert cluster.ctl.get("/apps/second")[0] == 200

    # --remote NAME adds another one instead; --no-remote adds none.
    p = ok(pier("create", "third", "--remote", "staging", cwd=repo))
    assert f"Added git remote staging: {cluster.git_url}/third.git" in p.stderr
    assert config_get(pier, repo, "remote.staging.url") == [f"{cluster.git_url}/third.git"]
    p = ok(pier("create", "fourth", "--no-remote", cwd=repo))
    assert p.stdout == "fourth\n" and p.stderr == ""
    assert pier.git("remote", cwd=repo).stdout.split() == ["pier", "staging"]

    # A remote name git would not take is refused before anything is made.
    p = fails(pier("create", "fifth", "-r", "bad name", cwd=repo), 2)
    assert 'remote name "bad name"' in p.stderr
    assert cluster.ctl.get("/apps/fifth")[0] == 404


def test_outside_a_repository_it_says_how_to_add_the_remote_later(pier, cluster):
    p = ok(pier("create", "later"))
    assert p.stdout == "later\n"
    assert "not inside a git repository, so no git remote was added" in p.stderr
    url = f"{cluster.git_url}/later.git"
    assert "pier git-remote -a later" in p.stderr and f"git remote add pier {url}" in p.stderr

    repo = pier.repo("app")
    p = ok(pier("git-remote", "-a", "later", cwd=repo))
    assert f"Added git remote pier: {url}" in p.stderr
    assert config_get(pier, repo, "remote.pier.url") == [url]
    # An app that does not exist gets no remote.
    p = fails(pier("git-remote", "-a", "nope", "-r", "x", cwd=repo))
    assert 'no app named "nope"' in p.stderr
    assert config_get(pier, repo, "remote.x.url") == []


def test_without_a_git_url_it_says_how_to_configure_one(pier, cluster):
    repo = pier.repo("app")
    p = ok(pier("create", "nourl", cwd=repo, env={"PIER_GIT_URL": None}))
    assert p.stdout == "nourl\n"
    assert "no git URL is configured for this cluster" in p.stderr
    assert "PIER_GIT_URL" in p.stderr
    assert config_get(pier, repo, "remote.pier.url") == []

    # From a config file, the hint names the cluster's own command.
    env = {"PIER_CONTROLLER_URL": None, "PIER_CONTROLLER_KEY": None, "PIER_GIT_URL": None}
    ok(pier("cluster", "add", "prod", cluster.url, KEY, env=env))
    p = ok(pier("create", "nourl2", cwd=repo, env=env))
    assert "pier cluster git-url prod GIT_URL" in p.stderr, p.stderr
    assert config_get(pier, repo, "remote.pier.url") == []


def test_ssh_git_url_and_the_app_inferred_from_it(pier, cluster):
    repo = pier.repo("app")
    ssh = "ssh://git@127.0.0.1:2222"
    p = ok(pier("create", "viassh", cwd=repo, env={"PIER_GIT_URL": ssh + "/"}))
    assert f"Added git remote pier: {ssh}/viassh.git" in p.stderr
    assert config_get(pier, repo, "remote.pier.url") == [f"{ssh}/viassh.git"]
    # No credential helper for ssh: keys do that.
    assert pier.git("config", "--get-regexp", "^credential", cwd=repo, check=False).stdout == ""
    assert ok(pier("info", cwd=repo)).stdout.startswith("=== viassh\n")


def test_cluster_config_holds_the_git_url(pier, cluster):
    env = {"PIER_CONTROLLER_URL": None, "PIER_CONTROLLER_KEY": None, "PIER_GIT_URL": None}
    ok(pier("cluster", "add", "prod", cluster.url, KEY, "--git-url", cluster.git_url + "/",
            env=env))
    other = "https://git.other.example:8443/repos"
    ok(pier("cluster", "add", "other", "http://127.0.0.1:1", "other-key",
            f"--git-url={other}", env=env))
    saved = json.loads(pier.config.read_text())
    assert saved["clusters"][0] == {"name": "prod", "url": cluster.url, "key": KEY,
                                    "git_url": cluster.git_url}
    lines = ok(pier("cluster", env=env)).stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL", "GIT", "URL"]
    assert lines[1].split() == ["*", "prod", cluster.url, cluster.git_url]
    assert lines[2].split() == ["other", "http://127.0.0.1:1", other]
    assert ok(pier("cluster", "git-url", "prod", env=env)).stdout == cluster.git_url + "\n"

    # create reads it from the file; so does the helper, for every cluster.
    repo = pier.repo("app")
    p = ok(pier("create", "fromfile", cwd=repo, env=env))
    assert f"Added git remote pier: {cluster.git_url}/fromfile.git" in p.stderr
    host = cluster.git_url.split("://")[1]
    assert cred(pier, f"protocol=http\nhost={host}\n\n", env=env) == \
        f"username=pier\npassword={KEY}\n"
    assert cred(pier, "protocol=https\nhost=git.other.example:8443\npath=repos/a.git\n\n",
                env=env) == "username=pier\npassword=other-key\n"
    assert cred(pier, "protocol=https\nhost=git.other.example:8443\npath=elsewhere/a.git\n\n",
                env=env) == ""
    # -c names the one cluster to answer for.
    assert cred(pier, "protocol=https\nhost=git.other.example:8443\n\n", env=env,
                args=("-c", "prod")) == ""

    # Changing and removing it; a bad one is refused and changes nothing.
    ok(pier("cluster", "git-url", "prod", "ssh://git@127.0.0.1:2222", env=env))
    assert json.loads(pier.config.read_text())["clusters"][0]["git_url"] == \
        "ssh://git@127.0.0.1:2222"
    before = pier.config.read_text()
    p = fails(pier("cluster", "git-url", "prod", "ftp://x", env=env), 2)
    assert 'git URL "ftp://x" must start with http://, https:// or ssh://' in p.stderr
    p = fails(pier("cluster", "add", "x", "http://127.0.0.1:1", "k", "--git-url", "http://",
                   env=env), 2)
    assert 'git URL "http://" has no host' in p.stderr
    assert pier.config.read_text() == before
    ok(pier("cluster", "git-url", "prod", "--remove", env=env))
    assert "git_url" not in json.loads(pier.config.read_text())["clusters"][0]
    fails(pier("cluster", "git-url", "prod", env=env))


# ---- pier git-credentials ----

def test_git_credentials_answers_only_for_the_git_url(pier, cluster):
    host = cluster.git_url.split("://")[1]
    assert cred(pier, f"protocol=http\nhost={host}\n\n") == f"username=pier\npassword={KEY}\n"
    # git sends more than protocol and host; the rest does not matter.
    assert cred(pier, f"capability[]=authtype\nprotocol=http\nhost={host}\nusername=pier\n"
                      f"path=x.git\nwwwauth[]=Basic realm=\"pier\"\n\n") == \
        f"username=pier\npassword={KEY}\n"
    # Another host, port or protocol: nothing, and exit 0 (git asks on).
    assert cred(pier, "protocol=http\nhost=example.com\n\n") == ""
    assert cred(pier, f"protocol=http\nhost={host}1\n\n") == ""
    assert cred(pier, f"protocol=https\nhost={host}\n\n") == ""
    assert cred(pier, "host=127.0.0.1\n\n") == ""
    # The default port is the same host.
    env = {"PIER_GIT_URL": "https://git.example.test:443"}
    assert cred(pier, "protocol=https\nhost=GIT.example.test\n\n", env=env) == \
        f"username=pier\npassword={KEY}\n"
    # store and erase keep nothing; unknown operations are ignored.
    assert cred(pier, f"protocol=http\nhost={host}\nusername=pier\npassword=x\n\n",
                op="store") == ""
    assert cred(pier, f"protocol=http\nhost={host}\n\n", op="erase") == ""
    assert cred(pier, f"protocol=http\nhost={host}\n\n", op="frob") == ""
    fails(pier("git-credentials"), 2)
    # An ssh git URL has no password to give.
    assert cred(pier, "protocol=ssh\nhost=127.0.0.1:2222\n\n",
                env={"PIER_GIT_URL": "ssh://git@127.0.0.1:2222"}) == ""


# ---- pier keys ----

def keygen(path, type_="ed25519", comment="me@laptop"):
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", type_, "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=60)
    fp = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"],
                        check=True, capture_output=True, text=True).stdout.split()[1]
    return fp


def test_keys_add_list_remove(pier, cluster):
    p = ok(pier("keys"))
    assert p.stdout == "" and "no SSH keys yet" in p.stderr

    # The default file is ~/.ssh/id_ed25519.pub.
    fp = keygen(pier.home / ".ssh" / "id_ed25519")
    p = ok(pier("keys", "add"))
    assert p.stdout == f"Added key {fp} (me@laptop) from {pier.home}/.ssh/id_ed25519.pub\n"
    status, rec = cluster.ctl.get("/keys/" + fp.replace("/", "_").replace("+", "-"))
    assert status == 200 and rec["comment"] == "me@laptop"

    # The same key again: refused, naming it.
    p = fails(pier("keys", "add"))
    assert "key already added" in p.stderr and fp in p.stderr, p.stderr

    # Another, by path.
    fp2 = keygen(pier.work / "deploy", "ecdsa", "ci")
    ok(pier("keys", "add", str(pier.work / "deploy.pub")))

    lines = ok(pier("keys")).stdout.splitlines()
    assert lines[0].split() == ["FINGERPRINT", "COMMENT", "CREATED"]
    assert [ln.split()[:2] for ln in lines[1:]] == [[fp, "me@laptop"], [fp2, "ci"]]
    assert re.search(r"\d+s ago$", lines[1]), lines[1]
    listed = json.loads(ok(pier("keys", "--json")).stdout)
    assert [k["id"] for k in listed] == [fp, fp2]

    # Removed with or without SHA256: ('/' and '+' in it are fine).
    assert ok(pier("keys", "remove", fp)).stdout == f"Removed key {fp} (me@laptop)\n"
    assert ok(pier("keys", "remove", fp2[len("SHA256:"):])).stdout == f"Removed key {fp2} (ci)\n"
    assert cluster.ctl.get("/keys")[1] == []
    p = fails(pier("keys", "remove", fp))
    assert f"no key {fp} on this cluster" in p.stderr
    p = fails(pier("keys", "remove", "SHA256:not a fingerprint!"), 2)
    assert "is not a key fingerprint" in p.stderr


def test_keys_add_falls_back_to_other_default_files(pier, cluster):
    p = fails(pier("keys", "add"))
    assert f"no SSH public key found: looked for {pier.home}/.ssh/id_ed25519.pub" in p.stderr
    assert "ssh-keygen -t ed25519" in p.stderr
    fp = keygen(pier.home / ".ssh" / "id_ecdsa", "ecdsa")
    assert fp in ok(pier("keys", "add")).stdout
    fp_rsa = keygen(pier.home / ".ssh" / "id_rsa", "rsa")
    assert fp_rsa in ok(pier("keys", "add")).stdout   # id_rsa.pub comes before id_ecdsa.pub


def test_keys_add_refuses_what_is_not_a_public_key(pier, cluster):
    missing = pier.work / "nope.pub"
    p = fails(pier("keys", "add", str(missing)))
    assert f"cannot read the key file {missing}: No such file or directory" in p.stderr
    assert "ssh-keygen -t ed25519" in p.stderr

    keygen(pier.work / "k")
    p = fails(pier("keys", "add", str(pier.work / "k")))
    assert f"{pier.work / 'k'} is a private key" in p.stderr and ".pub" in p.stderr

    junk = pier.work / "junk.pub"
    junk.write_text("hello world\n")
    p = fails(pier("keys", "add", str(junk)))
    assert f'{junk} is not an SSH public key (it starts with "hello"' in p.stderr
    assert "ssh-keygen -t ed25519" in p.stderr
    empty = pier.work / "empty.pub"
    empty.write_text("# nothing\n\n")
    assert "is not an SSH public key" in fails(pier("keys", "add", str(empty))).stderr
    two = pier.work / "two.pub"
    keygen(pier.work / "a")
    keygen(pier.work / "b")
    two.write_text((pier.work / "a.pub").read_text() + (pier.work / "b.pub").read_text())
    assert f"{two} holds 2 keys" in fails(pier("keys", "add", str(two))).stderr

    # A key type the CLI knows but a blob the controller refuses: its words.
    bad = pier.work / "bad.pub"
    bad.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x\n")
    p = fails(pier("keys", "add", str(bad)))
    assert p.stderr.startswith("pier: "), p.stderr
    assert cluster.ctl.get("/keys")[1] == []

    fails(pier("keys", "frob"), 2)
    fails(pier("keys", "add", "a", "b"), 2)
    fails(pier("keys", "remove"), 2)
    fails(pier("keys", "--yaml"), 2)
