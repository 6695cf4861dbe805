"""`pierd bootstrap` and TLS (docs/bootstrap.md "TLS"): the cluster CA in
STATE/ca and the router's certificate in STATE/tls, made once with the
modes and owners the docs give; the router serves https with it (and a
client trusting another CA refuses it); a rerun keeps both; a new domain
gets a new certificate from the same CA; the controller's GET /cluster
answers the domain, the CA and the store. Runs as root (the agent runs
crun containers)."""

import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "bootstrap" / "manifest.json"
KEY = "tls-test-key"
DOMAIN = "tls.localhost"
DOMAIN2 = "tls2.localhost"
JOB_UID = 65534


def bootstrap(pier_build, store, host_url, state, vars_, timeout=240):
    argv = [str(pier_build / "pierd"), "bootstrap", "--manifest", str(MANIFEST),
            "--store", store, "--host-url", host_url, "--data-dir", str(state),
            "--timeout", "60"]
    for k, v in vars_.items():
        argv += ["--var", f"{k}={v}"]
    env = dict(os.environ, PIER_KEY=KEY)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in p.stderr, show(p)
    return p


def show(p):
    return f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def api(url, key=KEY, timeout=10):
    req = urllib.request.Request(url)
    if key is not None:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f":{key}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def controller_url(host):
    status, jobs = api(host.url + "/host/jobs")
    assert status == 200
    for j in jobs:
        if j.get("env", {}).get("APP_NAME") == "controller" and j.get("state") == "up":
            port = j["allocated_ports"][0]
            port = port["port"] if isinstance(port, dict) else port
            return f"http://127.0.0.1:{port}"
    pytest.fail("no controller job is up")


def https_get(port, hostname, path, cafile, timeout=10):
    """(status, body bytes, peer cert DER) of GET https://hostname:port/path
    sent to 127.0.0.1, verifying the server against cafile only."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as s:
            auth = base64.b64encode(f":{KEY}".encode()).decode()
            s.sendall((f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\n"
                       f"Authorization: Basic {auth}\r\nConnection: close\r\n\r\n").encode())
            der = s.getpeercert(binary_form=True)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, body, der


def until(fn, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except (OSError, ssl.SSLError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what} (last error: {last!r})")
        time.sleep(0.3)


def openssl(*args, check=True):
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=30)


def mode_owner(path):
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid


def sans(cert):
    return openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").stdout


def test_bootstrap_makes_the_ca_and_the_router_serves_https(pier_build, start_pierd, start_host,
                                                            tmp_path, free_port):
    store = start_pierd("store", name="store").url
    host = start_host(store)
    state = tmp_path / "state"
    http_port, https_port, ssh_port = free_port(), free_port(), free_port()
    vars_ = {"DOMAIN": DOMAIN, "STORE": store, "HTTP_ADDR": f"127.0.0.1:{http_port}",
             "HTTPS_ADDR": f"127.0.0.1:{https_port}", "SSH_ADDR": f"127.0.0.1:{ssh_port}"}

    p = bootstrap(pier_build, store, host.url, state, vars_)
    assert p.returncode == 0, show(p)
    assert f"tls: made the cluster CA {state}/ca/ca.crt (pier CA {DOMAIN}" in p.stdout, show(p)
    assert f"tls: certificate for {DOMAIN} and *.{DOMAIN} valid until" in p.stdout, show(p)

    ca_dir, tls = state / "ca", state / "tls"
    ca_crt, srv_crt, srv_key = ca_dir / "ca.crt", tls / "server.crt", tls / "server.key"
    # Modes and owners: the CA root's only, the server key the job user's.
    assert mode_owner(ca_dir) == (0o700, 0)
    assert mode_owner(ca_dir / "ca.key") == (0o600, 0)
    assert mode_owner(ca_crt)[1] == 0
    assert mode_owner(tls) == (0o755, JOB_UID)
    assert mode_owner(srv_key) == (0o600, JOB_UID)
    assert (tls / "ca.crt").read_bytes() == ca_crt.read_bytes()
    assert not list(tls.glob("*.tmp.*")) and not list(ca_dir.glob("*.tmp.*"))

    # The CA: CN, CA:TRUE critical, keyCertSign+cRLSign, P-256.
    text = openssl("x509", "-in", ca_crt, "-noout", "-text").stdout
    assert f"CN = pier CA {DOMAIN}" in text, text
    assert "CA:TRUE" in text and "Certificate Sign, CRL Sign" in text, text
    assert "prime256v1" in text or "P-256" in text, text
    # The server certificate: its chain is the CA, it verifies against it,
    # its names are the domain's, it is for servers.
    pem = srv_crt.read_text()
    assert pem.count("BEGIN CERTIFICATE") == 2 and pem.endswith(ca_crt.read_text()), pem
    v = openssl("verify", "-CAfile", ca_crt, "-purpose", "sslserver", srv_crt, check=False)
    assert v.returncode == 0 and ": OK" in v.stdout, v.stdout + v.stderr
    assert f"DNS:{DOMAIN}, DNS:*.{DOMAIN}" in sans(srv_crt)
    text = openssl("x509", "-in", srv_crt, "-noout", "-text").stdout
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text, text
    # A CA of another cluster does not verify it.
    other = tmp_path / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=other CA", "-days", "1", "-keyout", other / "ca.key",
            "-out", other / "ca.crt")
    v = openssl("verify", "-CAfile", other / "ca.crt", srv_crt, check=False)
    assert v.returncode != 0, v.stdout

    # The router serves https://controller.DOMAIN with that certificate.
    def apps_over_https():
        status, body, der = https_get(https_port, f"controller.{DOMAIN}", "/apps", ca_crt)
        return (status, json.loads(body), der) if status == 200 else None
    status, apps, der = until(apps_over_https, what="the controller over https")
    assert "router" in {a["name"] for a in apps}
    served = ssl.DER_cert_to_PEM_cert(der)
    first = pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    assert served.strip() == first.strip()
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https_port, f"controller.{DOMAIN}", "/apps", other / "ca.crt")
    # ... and a name the certificate does not have is refused too.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(https_port, "controller.elsewhere.localhost", "/apps", ca_crt)

    # GET /cluster: the domain, the CA, the store; the key is needed.
    ctl = controller_url(host)
    status, cl = api(ctl + "/cluster")
    assert status == 200, cl
    assert cl == {"domain": DOMAIN, "ca_cert": ca_crt.read_text(), "store": store}, cl
    assert api(ctl + "/cluster", key=None)[0] == 401
    assert api(ctl + "/cluster", key="wrong")[0] == 401
    status, body, _ = https_get(https_port, f"controller.{DOMAIN}", "/cluster", ca_crt)
    assert status == 200 and json.loads(body)["ca_cert"] == ca_crt.read_text()

    # A rerun keeps the CA and the certificate.
    before = {f: f.read_bytes() for f in (ca_crt, ca_dir / "ca.key", srv_crt, srv_key)}
    p = bootstrap(pier_build, store, host.url, state, vars_)
    assert p.returncode == 0, show(p)
    assert "made the cluster CA" not in p.stdout and ", made (" not in p.stdout, show(p)
    assert f"tls: certificate for {DOMAIN} and *.{DOMAIN} valid until" in p.stdout, show(p)
    assert "cluster record" not in p.stdout, show(p)
    assert {f: f.read_bytes() for f in before} == before

    # A server certificate the CA did not sign is made again.
    srv_crt.write_bytes((other / "ca.crt").read_bytes())
    srv_key.write_bytes((other / "ca.key").read_bytes())
    p = bootstrap(pier_build, store, host.url, state, vars_)
    assert p.returncode == 0, show(p)
    assert "made (not signed by the cluster CA)" in p.stdout, show(p)
    assert openssl("verify", "-CAfile", ca_crt, srv_crt, check=False).returncode == 0
    assert mode_owner(srv_key) == (0o600, JOB_UID)

    # A new domain: a new certificate for it, from the same CA; the
    # cluster record follows.
    ca_before = ca_crt.read_bytes()
    vars2 = dict(vars_, DOMAIN=DOMAIN2)
    p = bootstrap(pier_build, store, host.url, state, vars2)
    assert p.returncode == 0, show(p)
    assert "made (its names are not the domain's)" in p.stdout, show(p)
    assert "tls: the cluster record /pier/v1/cluster updated" in p.stdout, show(p)
    assert ca_crt.read_bytes() == ca_before
    assert f"DNS:{DOMAIN2}, DNS:*.{DOMAIN2}" in sans(srv_crt)
    assert openssl("verify", "-CAfile", ca_crt, srv_crt, check=False).returncode == 0
    status, cl = api(ctl + "/cluster")
    assert status == 200 and cl["domain"] == DOMAIN2 and cl["ca_cert"] == ca_before.decode()


def test_a_ca_without_its_key_is_refused(pier_build, tmp_path, free_port):
    """A ca.crt is the cluster's (clients pin it): without its key the
    bootstrap stops before touching anything rather than make a new one."""
    state = tmp_path / "state"
    (state / "ca").mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=x", "-days", "1", "-keyout", tmp_path / "k", "-out", state / "ca/ca.crt")
    dead = f"http://127.0.0.1:{free_port()}"
    p = bootstrap(pier_build, dead, dead, state,
                  {"DOMAIN": DOMAIN, "STORE": dead, "HTTP_ADDR": "127.0.0.1:1",
                   "HTTPS_ADDR": "127.0.0.1:2", "SSH_ADDR": "127.0.0.1:3"}, timeout=60)
    assert p.returncode == 1, show(p)
    assert "tls:" in p.stderr and "is there but not its key" in p.stderr, show(p)
    assert not (state / "tls" / "server.crt").exists()
    assert not (state / "bootstrap.json").exists()
