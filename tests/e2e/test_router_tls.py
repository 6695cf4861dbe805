"""`pierd router` over TLS (docs/router.md; src/router/tls.h): route
certificates chosen by SNI (both record forms docs/controller.md stores),
the default certificate for other names, TLS 1.2 and 1.3 only, session
resumption, proxying with X-Forwarded-Proto https, WebSockets, the
self-signed fallback and a bad certificate file at start."""

import socket
import ssl
import subprocess
import threading
import warnings

import pytest

from conftest import free_port, sanitizer_reports
from router_util import Backend, route_http, wait_status
from test_router_protocol import (Conn, Env, RawBackend, echo_json, request_bytes, tokens,
                                  ws_session)


def make_cert(d, name, cn, sans=None):
    """A self-signed EC P-256 certificate made with openssl in d:
    (cert path, key path, cert PEM, key PEM, cert DER)."""
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    sans = sans or [cn]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={cn}", "-addext",
                    "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)],
                   check=True, capture_output=True, timeout=30)
    pem = cert.read_text()
    return cert, key, pem, key.read_text(), ssl.PEM_cert_to_DER_cert(pem)


def client_ctx(minv=None, maxv=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    return ctx


def tls_conn(port, name, ctx=None, session=None, timeout=10):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s = (ctx or client_ctx()).wrap_socket(raw, server_hostname=name, session=session)
    except Exception:
        raw.close()
        raise
    return Conn(sock=s, timeout=timeout)


def cert_subject_issuer(der, tmp_path):
    p = tmp_path / "peer.der"
    p.write_bytes(der)
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(p), "-noout",
                          "-subject", "-issuer", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    return out


@pytest.fixture
def tls_env(start_pierd, tmp_path):
    """A router with --https and a default certificate; routes a.test (the
    `certificate` form), b.test (the `tls_cert`/`tls_key` form), *.w.test
    (both forms) and plain.test (no certificate), all to the echo
    Backend; ws.test to a RawBackend."""
    d = tmp_path / "certs"
    d.mkdir()
    certs = {n: make_cert(d, n, cn) for n, cn in (("default", "default.test"), ("a", "a.test"),
                                                  ("b", "b.test"), ("w", "*.w.test"))}
    e = Env(start_pierd, https=True,
            tls_args=["--tls-cert", str(certs["default"][0]), "--tls-key", str(certs["default"][1])])
    e.certs = certs
    e.echo = e.add("a.test", "web", Backend("echo"), wait=False,
                   certificate={"cert": certs["a"][2], "key": certs["a"][3]})
    route_http(e.store, "b.test", "web", tls_cert=certs["b"][2], tls_key=certs["b"][3])
    route_http(e.store, "*.w.test", "web", certificate={"cert": certs["w"][2], "key": certs["w"][3]},
               tls_cert=certs["w"][2], tls_key=certs["w"][3])
    route_http(e.store, "plain.test", "web")
    e.raw = e.add("ws.test", "raw", RawBackend(), wait=False)
    for host in ("a.test", "b.test", "x.w.test", "plain.test", "ws.test"):
        wait_status(e.port, host, 200)
    yield e
    e.close()
    assert e.alive(), "the router died during the test"


def test_sni_chooses_the_certificate(tls_env):
    c = tls_env.certs
    for name, want in (("a.test", "a"), ("b.test", "b"), ("x.w.test", "w"), ("plain.test", "default"),
                       ("unknown.test", "default"), ("w.test", "default"), (None, "default")):
        conn = tls_conn(tls_env.https_port, name)
        der = conn.sock.getpeercert(binary_form=True)
        assert der == c[want][4], f"SNI {name!r}: not the {want} certificate"
        conn.close()


def test_requests_over_tls(tls_env):
    port = tls_env.https_port
    for name in ("a.test", "b.test", "x.w.test", "plain.test"):
        conn = tls_conn(port, name)
        st, f, body = conn.request("GET", "/over-tls", name)
        assert st == 200, body[:200]
        h = echo_json(body)["headers"]
        assert h["x-forwarded-proto"] == "https", h
        assert h["x-forwarded-port"] == str(port), h
        assert h["x-forwarded-for"] == "127.0.0.1"
        conn.close()
    # the plain listener still says http
    conn = Conn(tls_env.port)
    assert echo_json(conn.request("GET", "/", "a.test")[2])["headers"]["x-forwarded-proto"] == "http"
    # a name without a route over TLS: 404 from the router
    conn = tls_conn(port, "nothing.test")
    assert conn.request("GET", "/", "nothing.test")[0] == 404


def test_tls_keep_alive_bodies_and_pipelining(tls_env):
    conn = tls_conn(tls_env.https_port, "a.test", timeout=30)
    payload = bytes(range(256)) * 12289  # ~3 MB
    st, f, body = conn.request("POST", "/up", "a.test", body=payload)
    j = echo_json(body)
    assert (st, j["framing"], j["body_bytes"]) == (200, "length", len(payload))
    conn.send(request_bytes("POST", "/upc", "a.test", [("Transfer-Encoding", "chunked")])
              + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:70000], payload[:5]))
              + b"0\r\n\r\n")
    j = echo_json(conn.response()[2])
    assert (j["framing"], j["body_bytes"]) == ("chunked", 70005)
    n = 5 * 1000 * 1000 + 7
    st, f, body = conn.request("GET", f"/big?n={n}", "a.test")
    assert st == 200 and len(body) == n and body == b"x" * n
    st, f, body = conn.request("GET", "/chunked?n=5", "a.test")
    assert "chunked" in tokens(f, "transfer-encoding") and body.count(b"part") == 5
    conn.send(request_bytes("GET", "/p1", "a.test") + request_bytes("GET", "/p2", "a.test"))
    assert echo_json(conn.response()[2])["path"] == "/p1"
    assert echo_json(conn.response()[2])["path"] == "/p2"
    conn.close()


def test_tls_versions(tls_env, tmp_path):
    port = tls_env.https_port
    for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        conn = tls_conn(port, "a.test", client_ctx(v, v))
        assert conn.sock.version() == name
        assert conn.sock.getpeercert(binary_form=True) == tls_env.certs["a"][4]
        assert conn.request("GET", "/", "a.test")[0] == 200
        conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_ctx(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        # control: this client does speak TLS 1.1 to a server that allows it
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.load_cert_chain(tls_env.certs["a"][0], tls_env.certs["a"][1])
        srv.minimum_version = ssl.TLSVersion.TLSv1
        srv.set_ciphers("DEFAULT:@SECLEVEL=0")
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)

    def serve():
        c, _ = ls.accept()
        try:
            srv.wrap_socket(c, server_side=True).close()
        except (ssl.SSLError, OSError):
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with old.wrap_socket(socket.create_connection(ls.getsockname(), timeout=5),
                         server_hostname="a.test") as s:
        assert s.version() == "TLSv1.1"
    t.join(5)
    ls.close()
    # the router refuses it
    for name in ("a.test", "unknown.test"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_conn(port, name, old, timeout=5)
    assert tls_env.alive()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_session_resumption(tls_env, version):
    port = tls_env.https_port
    for name, cert in (("unknown.test", "default"), ("a.test", "a"), ("b.test", "b")):
        ctx = client_ctx(version, version)
        conn = tls_conn(port, name, ctx)
        # a whole exchange, so a TLS 1.3 ticket (sent after the handshake) arrives
        assert conn.request("GET", "/first", name)[0] in (200, 404)
        sess = conn.sock.session
        assert not conn.sock.session_reused
        conn.close()
        assert sess is not None
        conn = tls_conn(port, name, ctx, session=sess)
        assert conn.sock.session_reused, f"{name} ({version.name}): session not resumed"
        assert conn.sock.getpeercert(binary_form=True) == tls_env.certs[cert][4]
        assert conn.request("GET", "/second", name)[0] in (200, 404)
        conn.close()


def test_websocket_over_tls(tls_env):
    conn = tls_conn(tls_env.https_port, "ws.test", timeout=15)
    ws_session(conn, "ws.test")
    req = tls_env.raw.requests[-1]
    assert ("x-forwarded-proto", "https") in req["fields"]
    assert not tls_env.raw.errors, tls_env.raw.errors


def test_a_route_with_a_broken_certificate_harms_nothing(tls_env):
    route_http(tls_env.store, "broken.test", "web",
               certificate={"cert": "-----BEGIN CERTIFICATE-----\nnot base64\n"
                                    "-----END CERTIFICATE-----\n", "key": "nope"})
    route_http(tls_env.store, "after.test", "web",
               certificate={"cert": tls_env.certs["b"][2], "key": tls_env.certs["b"][3]})
    wait_status(tls_env.port, "after.test", 200)
    assert tls_env.alive()
    for name, cert in (("a.test", "a"), ("after.test", "b")):
        conn = tls_conn(tls_env.https_port, name)
        assert conn.sock.getpeercert(binary_form=True) == tls_env.certs[cert][4], name
        assert conn.request("GET", "/", name)[0] == 200
        conn.close()
    # broken.test gets some certificate or a failed handshake, but the router lives on
    try:
        tls_conn(tls_env.https_port, "broken.test", timeout=5).close()
    except (ssl.SSLError, ConnectionError):
        pass
    assert tls_env.alive()


def test_self_signed_without_a_certificate(start_pierd, tmp_path):
    e = Env(start_pierd, https=True)
    try:
        e.add("a.test", "web", Backend("echo"))
        assert "self-signed" in e.router.stderr_text(), e.router.stderr_tail()
        conn = tls_conn(e.https_port, "a.test")
        der = conn.sock.getpeercert(binary_form=True)
        st, _, body = conn.request("GET", "/", "a.test")
        assert st == 200 and echo_json(body)["headers"]["x-forwarded-proto"] == "https"
        conn.close()
        info = cert_subject_issuer(der, tmp_path)
        subject = [ln for ln in info.splitlines() if ln.startswith("subject=")][0]
        issuer = [ln for ln in info.splitlines() if ln.startswith("issuer=")][0]
        assert subject.split("=", 1)[1] == issuer.split("=", 1)[1], info
    finally:
        e.close()


def run_router(pier_build, store_url, tmp_path, extra):
    """Runs `pierd router` in the foreground (for start failures)."""
    args = [str(pier_build / "pierd"), "router", "--listen", f"127.0.0.1:{free_port()}",
            "--store", store_url, "--http", f"127.0.0.1:{free_port()}",
            "--https", f"127.0.0.1:{free_port()}", "--workers", "1", *extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert not sanitizer_reports(p.stderr), p.stderr[-4000:]
    return p


def test_bad_certificate_files_exit_2(start_pierd, pier_build, tmp_path):
    store = start_pierd("store", name="store")
    _, key, _, _, _ = make_cert(tmp_path, "good", "good.test")
    other_cert, _, _, _, _ = make_cert(tmp_path, "other", "other.test")
    garbage = tmp_path / "garbage-cert.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing-cert.pem"
    for cert, named in ((garbage, garbage), (missing, missing)):
        p = run_router(pier_build, store.url, tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key)])
        assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
        assert str(named) in p.stderr or named.name in p.stderr, \
            f"the message does not name {named}: {p.stderr[-2000:]}"
    bad_key = tmp_path / "garbage-key.pem"
    bad_key.write_text("nothing\n")
    good_cert = tmp_path / "good.crt"
    p = run_router(pier_build, store.url, tmp_path, ["--tls-cert", str(good_cert), "--tls-key", str(bad_key)])
    assert p.returncode == 2 and "garbage-key.pem" in p.stderr, p.stderr[-2000:]
    # a key that is not the certificate's
    p = run_router(pier_build, store.url, tmp_path, ["--tls-cert", str(other_cert), "--tls-key", str(key)])
    assert p.returncode == 2 and p.stderr.strip(), (p.returncode, p.stderr[-2000:])
    # one without the other
    p = run_router(pier_build, store.url, tmp_path, ["--tls-cert", str(good_cert)])
    assert p.returncode == 2 and "--tls-key" in p.stderr, p.stderr[-2000:]
