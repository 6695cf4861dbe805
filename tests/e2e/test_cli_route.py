"""`pier route`, end to end: the app's router routes through a real
`pierd store` + `pierd controller` (started with --domain, so every app
gets its default route).

Each test is the user's steps: list the default route, add http and tcp
routes, change them, remove them, give them a certificate. Every step is
checked twice: what the CLI printed and what the controller now holds
(GET /apps/:app/routes). Wrong input is refused with a message naming the
problem (exit 2 for usage, 1 for failures) and leaves the routes as they
were; input the CLI can judge alone is refused before any request (the
same answer with no controller at all)."""

import json
import os
import re
import subprocess
from types import SimpleNamespace

import pytest

from conftest import free_port, sanitizer_reports
from controller_util import Controller

KEY = "cli-route-key"
DOMAIN = "example.test"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def cluster(start_pierd):
    store = start_pierd("store", name="store")
    ctl = Controller(start_pierd, store.url, key=KEY, name="controller",
                     args=["--domain", DOMAIN])
    return SimpleNamespace(url=ctl.url, ctl=ctl)


@pytest.fixture
def pier(pier_build, tmp_path, cluster):
    """Runs `pier ARGS` against the cluster (PIER_CONTROLLER_URL/KEY, no
    config file) and returns the CompletedProcess."""
    exe = pier_build / "pier"
    if not exe.exists():
        pytest.fail(f"{exe} has not been built", pytrace=False)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()

    def run(*args, env=None, input=""):
        e = dict(os.environ, PIER_CONFIG=str(tmp_path / "no-config.json"),
                 HOME=str(tmp_path / "home"), PIER_CONTROLLER_URL=cluster.url,
                 PIER_CONTROLLER_KEY=KEY, GIT_CONFIG_NOSYSTEM="1")
        for k in ("PIER_CLUSTER", "PIER_APP", "XDG_CONFIG_HOME"):
            e.pop(k, None)
        e.update(env or {})
        p = subprocess.run([str(exe), *args], env=e, capture_output=True, text=True,
                           timeout=60, cwd=work, input=input)
        reports = sanitizer_reports(p.stderr)
        assert not reports, f"pier {' '.join(args)} reported a sanitizer error:\n{p.stderr}"
        return p

    return run


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def fails(p, status=1):
    assert p.returncode == status, \
        f"exit {p.returncode}, wanted {status}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.stdout == "", p.stdout
    return p


def routes(cluster, app):
    status, body = cluster.ctl.get(f"/apps/{app}/routes")
    assert status == 200, (status, body)
    return body


def by_id(cluster, app):
    return {r["id"]: r for r in routes(cluster, app)}


def table(p):
    """The rows of `pier route` as lists of columns, header first."""
    return [ln.split() for ln in ok(p).stdout.splitlines()]


def make_cert(tmp_path, name, cn):
    """A self-signed EC certificate and its key, made by openssl."""
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


# ---- the default route, and listing ----

def test_an_app_starts_with_its_default_route(pier, cluster):
    assert ok(pier("create", "demo")).stdout == "demo\n"
    [default] = routes(cluster, "demo")
    assert default["domain"] == f"demo.{DOMAIN}" and default["service"] == "demo-web"

    rows = table(pier("route", "-a", "demo"))
    assert rows[0] == ["ROUTE", "SERVICE", "ID", "STICKY", "LEADER"]
    assert rows[1:] == [[f"http:demo.{DOMAIN}/", "demo-web", f"http/{default['id']}",
                         "false", "false"]]
    # `list` is the same; the app may come first or from PIER_APP.
    assert table(pier("route", "list", "-a", "demo")) == rows
    assert table(pier("-a", "demo", "route")) == rows
    assert table(pier("route", env={"PIER_APP": "demo"})) == rows
    # --json: the routes as the controller returns them, indented.
    p = ok(pier("route", "-a", "demo", "--json"))
    assert p.stdout.startswith("[\n  {") and json.loads(p.stdout) == routes(cluster, "demo")
    assert ok(pier("route", "list", "--json", "-a", "demo")).stdout == p.stdout
    assert 'unknown option "--jsonx"' in fails(pier("route", "-a", "demo", "--jsonx"), 2).stderr
    for sub in (["add", "tcp"], ["remove", f"http/{default['id']}"]):
        p = fails(pier("route", "-a", "demo", "--json", *sub), 2)
        assert "--json does not apply to route " + sub[0] in p.stderr, p.stderr
    assert routes(cluster, "demo") == [default]

    # An app without routes says how to add one.
    ok(pier("route", "-a", "demo", "remove", f"http/{default['id']}"))
    p = ok(pier("route", "-a", "demo"))
    assert p.stdout == "" and "pier route add http DOMAIN" in p.stderr
    assert json.loads(ok(pier("route", "-a", "demo", "--json")).stdout) == []


# ---- add, update, remove ----

def test_add_update_and_remove_http_routes(pier, cluster):
    ok(pier("create", "web"))
    default_id = routes(cluster, "web")[0]["id"]

    p = ok(pier("route", "add", "http", "-a", "web", "Shop.Example.COM", "--path", "/api",
                "--service", "api-svc", "--sticky", "--leader", "--no-drain-backends",
                "--disable-keep-alives"))
    m = re.fullmatch(rf"http/({UUID})\n", p.stdout)
    assert m, p.stdout
    shop = by_id(cluster, "web")[m.group(1)]
    assert {k: shop[k] for k in ("type", "domain", "path", "service", "sticky", "leader",
                                 "drain_backends", "disable_keep_alives")} == {
        "type": "http", "domain": "shop.example.com", "path": "/api/", "service": "api-svc",
        "sticky": True, "leader": True, "drain_backends": False, "disable_keep_alives": True}
    assert "certificate" not in shop

    # Flynn's DOMAIN/PATH form and short flags; the defaults otherwise.
    p = ok(pier("route", "-a", "web", "add", "http", "www.example.com/blog", "-s", "blog"))
    blog_id = re.fullmatch(rf"http/({UUID})\n", p.stdout).group(1)
    blog = by_id(cluster, "web")[blog_id]
    assert (blog["domain"], blog["path"], blog["service"]) == ("www.example.com", "/blog/", "blog")
    assert (blog["sticky"], blog["leader"], blog["drain_backends"],
            blog["disable_keep_alives"]) == (False, False, True, False)
    p = ok(pier("route", "-a", "web", "add", "http", "plain.example.com"))
    plain_id = re.fullmatch(rf"http/({UUID})\n", p.stdout).group(1)
    assert by_id(cluster, "web")[plain_id]["service"] == "web-web"

    rows = table(pier("route", "-a", "web"))
    assert rows[1:] == [
        [f"http:web.{DOMAIN}/", "web-web", f"http/{default_id}", "false", "false"],
        ["http:shop.example.com/api/", "api-svc", f"http/{shop['id']}", "true", "true"],
        ["http:www.example.com/blog/", "blog", f"http/{blog_id}", "false", "false"],
        ["http:plain.example.com/", "web-web", f"http/{plain_id}", "false", "false"]]

    # update by http/<id>: only what the flags name changes.
    p = ok(pier("route", "-a", "web", "update", f"http/{shop['id']}", "--service", "api2",
                "--no-sticky", "--no-leader", "--drain-backends", "--enable-keep-alives"))
    assert p.stdout == f"updated http/{shop['id']}\n"
    now = by_id(cluster, "web")[shop["id"]]
    assert (now["service"], now["sticky"], now["leader"], now["drain_backends"],
            now["disable_keep_alives"]) == ("api2", False, False, True, False)
    assert (now["domain"], now["path"], now["created_at"]) == \
        ("shop.example.com", "/api/", shop["created_at"])
    # ... by the bare id, and by the start of it.
    ok(pier("route", "-a", "web", "update", blog_id, "--sticky"))
    assert by_id(cluster, "web")[blog_id]["sticky"] is True
    assert by_id(cluster, "web")[blog_id]["service"] == "blog"
    p = ok(pier("route", "-a", "web", "update", f"http/{blog_id[:13]}", "--leader"))
    assert p.stdout == f"updated http/{blog_id}\n"
    assert by_id(cluster, "web")[blog_id]["leader"] is True

    # remove: by the full id, then by the start of a bare one.
    p = ok(pier("route", "-a", "web", "remove", f"http/{shop['id']}"))
    assert p.stdout == f"removed route http/{shop['id']}\n"
    p = ok(pier("route", "-a", "web", "remove", blog_id[:8]))
    assert p.stdout == f"removed route http/{blog_id}\n"
    assert set(by_id(cluster, "web")) == {default_id, plain_id}
    # The domain is free again.
    ok(pier("route", "-a", "web", "add", "http", "shop.example.com/api"))


def test_add_update_and_remove_tcp_routes(pier, cluster):
    ok(pier("create", "db"))
    port = free_port()
    p = ok(pier("route", "-a", "db", "add", "tcp", "--port", str(port), "--service", "db-pg",
                "--leader"))
    m = re.fullmatch(rf"tcp/({UUID}) listening on port {port}\n", p.stdout)
    assert m, p.stdout
    tcp = by_id(cluster, "db")[m.group(1)]
    assert (tcp["type"], tcp["port"], tcp["service"], tcp["leader"]) == \
        ("tcp", port, "db-pg", True)

    # No port: the controller picks a free one and the CLI says which.
    p = ok(pier("route", "-a", "db", "add", "tcp"))
    m = re.fullmatch(rf"tcp/({UUID}) listening on port (\d+)\n", p.stdout)
    assert m, p.stdout
    picked = by_id(cluster, "db")[m.group(1)]
    assert picked["port"] == int(m.group(2)) and 3000 <= picked["port"] <= 3500
    assert picked["service"] == "db-web" and picked["leader"] is False

    rows = table(pier("route", "-a", "db"))
    assert [f"tcp:{port}", "db-pg", f"tcp/{tcp['id']}", "false", "true"] in rows
    assert [f"tcp:{picked['port']}", "db-web", f"tcp/{picked['id']}", "false", "false"] in rows

    p = ok(pier("route", "-a", "db", "update", f"tcp/{tcp['id']}", "-s", "db-replica",
                "--no-leader"))
    assert p.stdout == f"updated tcp/{tcp['id']}\n"
    now = by_id(cluster, "db")[tcp["id"]]
    assert (now["service"], now["leader"], now["port"]) == ("db-replica", False, port)

    # http-only flags on a tcp route: refused, nothing changed.
    for flag in ("--sticky", "--no-tls"):
        p = fails(pier("route", "-a", "db", "update", tcp["id"], flag), 2)
        assert f"{flag} does not apply to a tcp route" in p.stderr, p.stderr
    assert by_id(cluster, "db")[tcp["id"]] == now

    # The type in the id must match the route's.
    p = fails(pier("route", "-a", "db", "remove", f"http/{tcp['id'][:8]}"))
    assert f'app "db" has no route "http/{tcp["id"][:8]}"' in p.stderr, p.stderr
    p = ok(pier("route", "-a", "db", "remove", f"tcp/{tcp['id']}"))
    assert p.stdout == f"removed route tcp/{tcp['id']}\n"
    assert tcp["id"] not in by_id(cluster, "db")
    # The port is free again.
    ok(pier("route", "-a", "db", "add", "tcp", "-p", str(port)))


# ---- TLS ----

def test_tls_certificates_from_files(pier, cluster, tmp_path):
    ok(pier("create", "sec"))
    cert, key = make_cert(tmp_path, "one", "secure.example.com")
    cert2, key2 = make_cert(tmp_path, "two", "secure.example.com")

    p = ok(pier("route", "-a", "sec", "add", "http", "secure.example.com", "--tls-cert", str(cert),
                "--tls-key", str(key)))
    rid = re.fullmatch(rf"http/({UUID})\n", p.stdout).group(1)
    rt = by_id(cluster, "sec")[rid]
    assert rt["certificate"] == {"cert": cert.read_text(), "key": key.read_text()}
    assert rt["tls_cert"] == cert.read_text()
    assert ["https:secure.example.com/", "sec-web", f"http/{rid}", "false", "false"] in \
        table(pier("route", "-a", "sec"))

    # A new certificate (Flynn's -c/-k, the key from stdin), then none.
    ok(pier("route", "-a", "sec", "update", f"http/{rid}", "-c", str(cert2), "-k", "-",
            input=key2.read_text()))
    rt = by_id(cluster, "sec")[rid]
    assert rt["certificate"] == {"cert": cert2.read_text(), "key": key2.read_text()}
    ok(pier("route", "-a", "sec", "update", rid, "--no-tls"))
    rt = by_id(cluster, "sec")[rid]
    assert "certificate" not in rt and "tls_cert" not in rt and "tls_key" not in rt
    assert ["http:secure.example.com/", "sec-web", f"http/{rid}", "false", "false"] in \
        table(pier("route", "-a", "sec"))
    ok(pier("route", "-a", "sec", "update", rid, "--tls-cert", str(cert), "--tls-key", str(key)))
    with_tls = by_id(cluster, "sec")[rid]
    assert with_tls["certificate"]["cert"] == cert.read_text()

    # A key that is not the certificate's: the controller's word, and a
    # hint; nothing changes.
    before = routes(cluster, "sec")
    p = fails(pier("route", "-a", "sec", "add", "http", "other.example.com", "--tls-cert",
                   str(cert), "--tls-key", str(key2)))
    assert "the certificate and key must be PEM, and the key the certificate's" in p.stderr
    assert "--tls-key the PEM private key" in p.stderr, p.stderr
    p = fails(pier("route", "-a", "sec", "update", rid, "-c", str(cert2), "-k", str(key)))
    assert "the key the certificate's" in p.stderr
    p = fails(pier("route", "-a", "sec", "update", rid, "-c", str(key), "-k", str(key)))
    assert "must be PEM" in p.stderr
    assert routes(cluster, "sec") == before

    # Files that cannot be read are named, before any request.
    dead = f"http://127.0.0.1:{free_port()}"
    missing = tmp_path / "nope.crt"
    empty = tmp_path / "empty.key"
    empty.write_text("")
    for url in (cluster.url, dead):
        env = {"PIER_CONTROLLER_URL": url}
        p = fails(pier("route", "-a", "sec", "add", "http", "x.example.com", "--tls-cert",
                       str(missing), "--tls-key", str(key), env=env))
        assert f'cannot read the TLS certificate file "{missing}": No such file or directory' \
            in p.stderr, p.stderr
        p = fails(pier("route", "-a", "sec", "update", rid, "--tls-cert", str(cert),
                       "--tls-key", str(empty), env=env))
        assert f'the TLS key file "{empty}" is empty' in p.stderr, p.stderr
        p = fails(pier("route", "-a", "sec", "add", "http", "x.example.com", "--tls-cert",
                       str(tmp_path), "--tls-key", str(key), env=env))
        assert f'cannot read the TLS certificate file "{tmp_path}": Is a directory' in p.stderr
    assert routes(cluster, "sec") == before


# ---- errors ----

def test_taken_domains_and_ports_are_refused_with_the_next_step(pier, cluster):
    ok(pier("create", "one"))
    ok(pier("create", "two"))
    ok(pier("route", "-a", "one", "add", "http", "a.example.com"))
    port = free_port()
    ok(pier("route", "-a", "one", "add", "tcp", "--port", str(port)))
    before = {app: routes(cluster, app) for app in ("one", "two")}

    p = fails(pier("route", "-a", "two", "add", "http", "A.example.com"))
    assert p.stderr.splitlines()[0] == (
        'pier: http route "a.example.com/" is taken by another route (409 conflict); '
        'pick another domain or path, or remove the other route'), p.stderr
    # The other app's default domain too.
    p = fails(pier("route", "-a", "two", "add", "http", f"one.{DOMAIN}/"))
    assert f'http route "one.{DOMAIN}/" is taken' in p.stderr
    p = fails(pier("route", "-a", "two", "add", "tcp", "--port", str(port)))
    assert f"tcp port {port} is taken by another route (409 conflict); pick another port, " \
        "or remove the other route" in p.stderr, p.stderr
    # When the route that has it is the app's own, the hint names it.
    own = [r for r in before["one"] if r.get("domain") == "a.example.com"][0]
    p = fails(pier("route", "-a", "one", "add", "http", "a.example.com"))
    assert f"it is this app's own route http/{own['id']}" in p.stderr, p.stderr
    # Another path of the same domain is a different route.
    ok(pier("route", "-a", "two", "add", "http", "a.example.com", "--path", "/two"))
    assert len(routes(cluster, "two")) == len(before["two"]) + 1
    assert routes(cluster, "one") == before["one"]


def test_bad_input_is_refused_and_changes_nothing(pier, cluster):
    ok(pier("create", "bad"))
    rid = routes(cluster, "bad")[0]["id"]
    before = routes(cluster, "bad")
    dead = f"http://127.0.0.1:{free_port()}"

    # Usage errors: exit 2, the same with or without a controller.
    cases = [
        (["add"], "route add needs a type: http or tcp"),
        (["add", "ftp"], 'unknown route type "ftp" (http, tcp)'),
        (["add", "http"], "route add http needs a DOMAIN"),
        (["add", "http", "a.example.com", "b.example.com"], 'unexpected argument "b.example.com"'),
        (["add", "http", "a.example.com", "--frob"], 'unknown option "--frob" for route'),
        (["add", "http", "a.example.com", "--service"], "--service needs a value"),
        (["add", "http", "a.example.com", "--service", ""], "--service needs a service name"),
        (["add", "http", "a.example.com/x", "--path", "/y"], "give the path once"),
        (["add", "http", "a.example.com", "--path", "y"], "--path must start with /"),
        (["add", "http", "https://a.example.com"], "without a scheme"),
        (["add", "http", "a.example.com", "--no-sticky"],
         "--no-sticky does not apply to route add http"),
        (["add", "http", "a.example.com", "--tls-cert", "x.pem"],
         "--tls-cert and --tls-key go together"),
        (["add", "http", "a.example.com", "-s", "a", "-s", "b"], "--service given twice"),
        (["add", "http", "a.example.com", "--port", "8080"],
         "--port does not apply to route add http"),
        (["add", "tcp", "--sticky"], "--sticky does not apply to route add tcp"),
        (["add", "tcp", "--path", "/x"], "--path does not apply to route add tcp"),
        (["add", "tcp", "--tls-cert", "c", "--tls-key", "k"],
         "--tls-cert does not apply to route add tcp"),
        (["add", "tcp", "a.example.com"], 'unexpected argument "a.example.com"'),
        (["add", "tcp", "--port", "70000"], "--port needs a port number from 0 to 65535"),
        (["add", "tcp", "--port", "-1"], "--port needs a port number"),
        (["add", "tcp", "--port", "12ab"], "--port needs a port number"),
        (["update"], "route update needs the route's ID"),
        (["update", rid], "route update needs something to change"),
        (["update", rid, "--sticky", "--no-sticky"], "give --sticky or --no-sticky, not both"),
        (["update", rid, "--no-tls", "--tls-cert", "c", "--tls-key", "k"],
         "give --no-tls or --tls-cert, not both"),
        (["update", rid, "--port", "1"], "a route's port cannot change"),
        (["update", rid, "--path", "/x"], "a route's path cannot change"),
        (["remove"], "route remove needs the route's ID"),
        (["remove", rid, rid], "unexpected argument"),
        (["remove", rid, "--sticky"], "--sticky does not apply to route remove"),
        (["frob"], 'unknown route subcommand "frob" (list, add, update, remove)'),
        (["list", "extra"], 'unexpected argument "extra" for route'),
        (["-a"], "-a needs an app name"),
    ]
    for args, msg in cases:
        for url in (cluster.url, dead):
            p = fails(pier("route", "-a", "bad", *args, env={"PIER_CONTROLLER_URL": url})
                      if args != ["-a"] else
                      pier("route", *args, env={"PIER_CONTROLLER_URL": url}), 2)
            assert msg in p.stderr, (args, p.stderr)
            assert "see 'pier help route'" in p.stderr, (args, p.stderr)
    assert routes(cluster, "bad") == before

    # Failures the controller decides: exit 1, its word, nothing changed.
    p = fails(pier("route", "-a", "bad", "add", "http", "has space.example.com"))
    assert "an http route needs a domain (no spaces)" in p.stderr, p.stderr
    p = fails(pier("route", "-a", "bad", "remove", "http/" + "0" * 8 + rid[8:]))
    assert 'app "bad" has no route "http/00000000' in p.stderr and "pier route" in p.stderr
    p = fails(pier("route", "-a", "bad", "update", "ffffffff", "--sticky"))
    assert 'app "bad" has no route "ffffffff"' in p.stderr
    p = fails(pier("route", "-a", "nope"))
    assert 'no app named "nope"' in p.stderr
    for args in (["add", "http", "n.example.com"], ["add", "tcp"], ["remove", rid],
                 ["update", f"http/{rid}", "--sticky"]):
        p = fails(pier("route", "-a", "nope", *args))
        assert 'no app named "nope"' in p.stderr, (args, p.stderr)
    p = fails(pier("route"))
    assert "no app given: use -a APP" in p.stderr
    p = fails(pier("route", "-a", "bad", env={"PIER_CONTROLLER_URL": dead}))
    assert "connection refused" in p.stderr and "pier status" in p.stderr
    # Another app's route is not this app's.
    ok(pier("create", "else"))
    p = fails(pier("route", "-a", "else", "remove", f"http/{rid}"))
    assert f'app "else" has no route "http/{rid}"' in p.stderr, p.stderr
    assert routes(cluster, "bad") == before


def test_an_id_prefix_shared_by_several_routes_is_ambiguous(pier, cluster):
    ok(pier("create", "many"))
    seen = {}
    # Among 17 ids two share their first hex digit.
    for _ in range(17):
        rid = re.fullmatch(rf"tcp/({UUID}) listening on port \d+\n",
                           ok(pier("route", "-a", "many", "add", "tcp")).stdout).group(1)
        if rid[0] in seen:
            break
        seen[rid[0]] = rid
    before = routes(cluster, "many")
    # (the app's default http route may share that digit too)
    n = sum(r["id"].startswith(rid[0]) for r in before)
    p = fails(pier("route", "-a", "many", "remove", rid[0]))
    assert f'"{rid[0]}" matches {n} routes; give more of the id' in p.stderr, p.stderr
    assert routes(cluster, "many") == before


def test_help(pier):
    for args in (["help", "route"], ["route", "--help"], ["route", "-h"]):
        p = ok(pier(*args))
        assert p.stdout.startswith("list, add, change and remove the app's routes\n"), p.stdout
        for line in ("pier route add http", "pier route add tcp", "pier route update",
                     "pier route remove", "--tls-cert", "--no-drain-backends", "--json"):
            assert line in p.stdout, (args, line)
    assert re.search(r"^  route\s+list, add", ok(pier("help")).stdout, re.M)
