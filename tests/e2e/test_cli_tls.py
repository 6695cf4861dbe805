"""The CLI verifying an https cluster against the cluster's own CA
(docs/cli.md "TLS"): `pier cluster add --ca FILE` and `--tls-pin PIN`
(the pin's certificate read from the chain the server presents), a wrong
CA or pin refused with what to do, a cluster without a CA of its own on a
server the system does not trust failing with the fix, PIER_CONTROLLER_CA
for PIER_CONTROLLER_URL, and `pier create` pointing git's
the git remote at pier::<git url>/<app>.git so that git verifies the git
server with the CA through git-remote-pier, also when GIT_SSL_CAINFO (which
git lets win over http.<git url>/.sslCAInfo) names another bundle.

A real CA and server certificate made with the openssl command; a real
`pierd controller` behind a TLS-terminating proxy (python's ssl) for
controller.test.localhost; a git repository served over https (git's
dumb http protocol, static files) for git.test.localhost. curl and git
resolve *.localhost to loopback themselves."""

import base64
import functools
import hashlib
import json
import os
import socket
import socketserver
import ssl
import stat
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import sanitizer_reports
from controller_util import KEY, Controller


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(d, name):
    """A CA as `pierd bootstrap` makes one: EC P-256, CA:TRUE. (crt, key)."""
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2",
            "-subj", f"/CN=pier CA {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return crt, key


def make_server_cert(d, ca_crt, ca_key, sans):
    """A server certificate signed by the CA; its file holds the chain
    (the certificate, then the CA) as the router serves it. (chain, key)."""
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.crt", d / "ext.cnf"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={sans[0]}")
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) +
                   "\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))
    chain = d / "chain.crt"
    chain.write_text(crt.read_text() + ca_crt.read_text())
    return chain, key


def pin_of(pem):
    """Flynn's pin: base64 of the SHA-256 of the certificate's DER."""
    return base64.b64encode(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest()).decode()


class TlsProxy:
    """Terminates TLS on a loopback port and pipes the bytes to backend
    (host, port)."""

    def __init__(self, chain, key, backend):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain), str(key))

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    tls = ctx.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # a client that did not trust us
                try:
                    up = socket.create_connection(backend, timeout=30)
                except OSError:
                    tls.close()
                    return

                def pump(src, dst):
                    try:
                        while True:
                            b = src.recv(65536)
                            if not b:
                                break
                            dst.sendall(b)
                    except OSError:
                        pass
                    for s in (src, dst):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass

                t = threading.Thread(target=pump, args=(up, tls), daemon=True)
                t.start()
                pump(tls, up)
                t.join(30)
                up.close()
                tls.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class HttpsFiles:
    """Serves the files under root over https (git's dumb http protocol);
    with auth (user, password), only to requests with that basic auth."""

    def __init__(self, root, chain, key, auth=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain), str(key))
        want = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None
        self.denied = 0

        files = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send_head(self):
                if want and self.headers.get("Authorization") != want:
                    files.denied += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="pier"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return super().send_head()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(Handler, directory=str(root)))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls(start_pierd, pier_store, tmp_path):
    """A controller at https://controller.test.localhost:PORT with a
    certificate of the cluster CA; another CA that signs nothing of it."""
    d = tmp_path / "pki"
    d.mkdir()
    ca_crt, ca_key = make_ca(d, "cluster")
    other_crt, _ = make_ca(d, "other")
    chain, key = make_server_cert(d, ca_crt, ca_key, ["test.localhost", "*.test.localhost"])
    ctl = Controller(start_pierd, pier_store)
    host, port = ctl.url.split("//")[1].split(":")
    proxy = TlsProxy(chain, key, (host, int(port)))
    env = type("Tls", (), {})()
    env.ca, env.other, env.chain, env.key = ca_crt, other_crt, chain, key
    env.ca_pem = ca_crt.read_text()
    env.url = f"https://controller.test.localhost:{proxy.port}"
    env.ctl = ctl
    yield env
    proxy.close()


@pytest.fixture
def pier(pier_build, tmp_path):
    exe = pier_build / "pier"
    config = tmp_path / "cfg" / "config.json"

    def run(*args, env=None, cwd=None):
        e = dict(os.environ, PIER_CONFIG=str(config), HOME=str(tmp_path / "home"),
                 GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
        for k in ("PIER_CLUSTER", "PIER_CONTROLLER_URL", "PIER_CONTROLLER_KEY",
                  "PIER_CONTROLLER_CA", "PIER_GIT_URL", "XDG_CONFIG_HOME", "PIER_APP",
                  "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY"):
            e.pop(k, None)
        e.update(env or {})
        p = subprocess.run([str(exe), *args], env=e, capture_output=True, text=True,
                           timeout=60, cwd=cwd or tmp_path)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{p.stderr}"
        return p

    run.config = config
    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def fails(p, code=1):
    assert p.returncode == code, \
        f"exit {p.returncode}, want {code}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def saved(pier):
    return json.loads(pier.config.read_text()) if pier.config.exists() else None


def test_ca_file(tls, pier):
    ok(pier("cluster", "add", "c1", tls.url, KEY, "--ca", str(tls.ca)))
    cl = saved(pier)["clusters"][0]
    assert cl["ca_cert"] == tls.ca_pem
    assert cl["tls_pin"] == pin_of(tls.ca_pem)
    # The API verifies against it: a real answer from the controller.
    assert ok(pier("apps")).returncode == 0
    ok(pier("create", "tlsapp"))
    assert "tlsapp" in ok(pier("apps")).stdout
    lines = ok(pier("cluster", "list")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "URL", "TLS"]
    assert lines[1].split() == ["*", "c1", tls.url, "pinned"]
    assert ok(pier("cluster")).stdout == ok(pier("cluster", "list")).stdout


def test_bad_ca_files_refused(tls, pier, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for f, want in ((junk, "no PEM certificate"), (broken, str(broken)),
                    (tls.key, "private key"), (tmp_path / "missing.pem", "No such file")):
        p = fails(pier("cluster", "add", "c1", tls.url, KEY, "--ca", str(f)), 2)
        assert want in p.stderr
        assert saved(pier) is None, "a refused add must not write the config"
    p = fails(pier("cluster", "add", "c1", tls.url, KEY, "--ca", str(tls.ca), "--tls-pin", "x"), 2)
    assert "not both" in p.stderr


def test_wrong_ca(tls, pier):
    ok(pier("cluster", "add", "c1", tls.url, KEY, "--ca", str(tls.other)))
    p = fails(pier("apps"))
    assert "certificate" in p.stderr
    assert 'the CA stored for cluster "c1"' in p.stderr
    assert f"pier cluster add c1 {tls.url} KEY --ca FILE" in p.stderr
    assert "ca/ca.crt" in p.stderr
    # status says it too, with the same hint.
    p = fails(pier("status"))
    assert "pier cluster add c1" in p.stderr


def test_no_ca_untrusted_server(tls, pier):
    ok(pier("cluster", "add", "plain", tls.url, KEY))
    assert "ca_cert" not in saved(pier)["clusters"][0]
    p = fails(pier("apps"))
    assert "certificate" in p.stderr
    assert 'cluster "plain" has no CA of its own' in p.stderr
    assert f"pier cluster add plain {tls.url} KEY --ca FILE" in p.stderr


def test_tls_pin(tls, pier):
    ca_pin, server_pin = pin_of(tls.ca_pem), pin_of(tls.chain.read_text())
    # A pin of nothing in the chain: refused, naming what was found.
    wrong = pin_of(tls.other.read_text())
    p = fails(pier("cluster", "add", "c1", tls.url, KEY, "--tls-pin", wrong))
    assert f"has the pin {wrong}" in p.stderr
    assert ca_pin in p.stderr and server_pin in p.stderr
    assert saved(pier) is None
    # The CA's pin: the CA is read from the chain and kept.
    p = ok(pier("cluster", "add", "c1", tls.url, KEY, "--tls-pin", ca_pin))
    assert ca_pin in p.stdout
    cl = saved(pier)["clusters"][0]
    assert ssl.PEM_cert_to_DER_cert(cl["ca_cert"]) == ssl.PEM_cert_to_DER_cert(tls.ca_pem)
    assert cl["tls_pin"] == ca_pin
    ok(pier("apps"))
    # -p is Flynn's spelling; http URLs cannot be pinned.
    fails(pier("cluster", "add", "c2", "http://127.0.0.1:1", KEY, "-p", ca_pin), 2)


def test_env_cluster_ca(tls, pier):
    env = {"PIER_CONTROLLER_URL": tls.url, "PIER_CONTROLLER_KEY": KEY}
    p = fails(pier("apps", env=env))
    assert "PIER_CONTROLLER_CA" in p.stderr
    ok(pier("apps", env=dict(env, PIER_CONTROLLER_CA=str(tls.ca))))
    p = fails(pier("apps", env=dict(env, PIER_CONTROLLER_CA=str(tls.other))))
    assert "PIER_CONTROLLER_CA" in p.stderr


def git(*args, cwd, check=True, env=None):
    e = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
             HOME=str(Path(cwd).parent / "home"))
    for k in ("GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY"):
        e.pop(k, None)  # each overrides the repository's http.*.sslCAInfo
    e.update(env or {})
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                       env=e)
    # git-remote-pier (the CLI) writes to git's stderr
    assert not sanitizer_reports(p.stderr), p.stderr
    if check:
        assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p


def test_git_verifies_with_the_cluster_ca(tls, pier, pier_build, tmp_path):
    # The app's repository on the "git server": a bare repo with one
    # commit, served as static files over https, to the cluster key only
    # (so git asks `pier git-credentials`).
    served = tmp_path / "served"
    served.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    git("init", "-q", "-b", "main", cwd=src)
    (src / "README").write_text("hi\n")
    git("add", "README", cwd=src)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one", cwd=src)
    head = git("rev-parse", "HEAD", cwd=src).stdout.strip()
    git("clone", "-q", "--bare", str(src), str(served / "gitapp.git"), cwd=tmp_path)
    git("update-server-info", cwd=served / "gitapp.git")
    files = HttpsFiles(served, tls.chain, tls.key, auth=("pier", KEY))
    open_files = HttpsFiles(served, tls.chain, tls.key)
    # git finds git-remote-pier on PATH, next to pier; it and the
    # credential helper read the CLI's config.
    path = {"PATH": f"{pier_build}:{os.environ['PATH']}", "PIER_CONFIG": str(pier.config)}
    assert (pier_build / "git-remote-pier").resolve() == (pier_build / "pier").resolve()
    try:
        git_url = f"https://git.test.localhost:{files.port}"
        ok(pier("cluster", "add", "c1", tls.url, KEY, "--git-url", git_url, "--ca", str(tls.ca)))
        work = tmp_path / "work"
        work.mkdir()
        git("init", "-q", "-b", "main", cwd=work)
        p = ok(pier("create", "gitapp", cwd=work, env=path))
        remote = f"pier::{git_url}/gitapp.git"
        assert f"Added git remote pier: {remote}\n" in p.stderr, p.stderr
        assert "not on PATH" not in p.stderr, p.stderr
        assert git("remote", "get-url", "pier", cwd=work).stdout.strip() == remote
        ca_file = pier.config.parent / "c1-ca.pem"
        assert ca_file.read_text() == tls.ca_pem
        assert stat.S_IMODE(ca_file.stat().st_mode) == 0o644
        # For a plain https remote of the user's own, the config too.
        key = f"http.{git_url}/.sslcainfo"
        assert git("config", "--get", key, cwd=work).stdout.strip() == str(ca_file)
        # git verifies the server with it, through the helper, and gets the
        # password from pier: the ref comes back.
        out = git("ls-remote", "pier", cwd=work, env=path).stdout
        assert f"{head}\trefs/heads/main" in out
        assert files.denied > 0  # asked for credentials, and got them
        # The plain URL with an unrelated GIT_SSL_CAINFO in the environment
        # (as a corporate proxy's bundle): it wins over the config, so git
        # does not trust the server.
        other = dict(path, GIT_SSL_CAINFO=str(tls.other), GIT_SSL_CAPATH=str(tmp_path / "none"))
        p = git("ls-remote", f"{git_url}/gitapp.git", cwd=work, env=other, check=False)
        assert p.returncode != 0 and "certificate" in p.stderr.lower(), p.stderr
        # Through the helper it verifies all the same, without the config,
        # and a stale CA file is written again.
        git("config", "--unset", key, cwd=work)
        ca_file.write_text("stale\n")
        out = git("ls-remote", "pier", cwd=work, env=other).stdout
        assert f"{head}\trefs/heads/main" in out
        assert ca_file.read_text() == tls.ca_pem
        # Without git-remote-pier on PATH git cannot use the remote.
        p = git("ls-remote", "pier", cwd=work, check=False)
        assert p.returncode != 0 and "remote-pier" in p.stderr, p.stderr
        # A remote an earlier pier made (plain https): `pier git-remote`
        # rewrites it.
        git("remote", "set-url", "pier", f"{git_url}/gitapp.git", cwd=work)
        p = ok(pier("git-remote", "-a", "gitapp", cwd=work, env=path))
        assert f"Updated git remote pier: {remote}\n" in p.stderr, p.stderr
        assert git("remote", "get-url", "pier", cwd=work).stdout.strip() == remote
        assert git("config", "--get", key, cwd=work).stdout.strip() == str(ca_file)
        p = ok(pier("git-remote", "-a", "gitapp", cwd=work, env=path))
        assert f"Git remote pier already points at {remote}" in p.stderr, p.stderr
        # The app is still the remote's.
        assert "gitapp" in ok(pier("info", cwd=work)).stdout
        # A URL of no cluster through the helper: a warning, and git's own
        # helper with the environment as it is.
        stray = f"pier::https://other.test.localhost:{open_files.port}/gitapp.git"
        p = git("ls-remote", stray, cwd=work, env=dict(path, GIT_SSL_CAINFO=str(tls.ca)))
        assert f"{head}\trefs/heads/main" in p.stdout
        assert "under no cluster's git URL" in p.stderr, p.stderr
        p = git("ls-remote", stray, cwd=work, env=other, check=False)
        assert p.returncode != 0 and "certificate" in p.stderr.lower(), p.stderr
    finally:
        files.close()
        open_files.close()
