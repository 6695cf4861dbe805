"""`pierd controller`'s core API against a real `pierd store`: apps,
artifacts, releases, the app release, formations and scale requests, app
routes and keys, as a Flynn client uses them (FLYNN-CLIENT-CONTRACT.md).

Every response body is checked against Flynn's JSON schemas
(/work/shared/flynn-schema), and every refused request is checked to have
changed nothing in the store."""

import base64
import hashlib
import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jsonschema import Draft4Validator, RefResolver

from conftest import store_get

KEY = "s3cr3t-key"
SCHEMA_DIR = Path("/work/shared/flynn-schema")
MIB = 1024 * 1024
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# ---- schemas ----

_schemas = {}


def _schema_store():
    if not _schemas:
        for p in SCHEMA_DIR.rglob("*.json"):
            if "api-examples" in p.parts:
                continue
            s = json.loads(p.read_text())
            if isinstance(s, dict) and "id" in s:
                _schemas[s["id"].rstrip("#")] = s
    return _schemas


def check_schema(obj, name):
    """Validates obj against flynn-schema's NAME ("controller/app"), with
    format checks off."""
    store = _schema_store()
    schema = store[f"https://flynn.io/schema/{name}"]
    Draft4Validator(schema, resolver=RefResolver.from_schema(schema, store=store)).validate(obj)


# ---- a client ----

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.raw = status, headers, body

    @property
    def json(self):
        return json.loads(self.raw)

    def is_flynn_error(self, status=None, code=None):
        """A Flynn error JSON with a 4xx status."""
        assert 400 <= self.status < 500, (self.status, self.raw)
        if status is not None:
            assert self.status == status, (self.status, self.raw)
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        body = self.json
        if body["code"] != "conflict":  # pier's 409 for a taken route; not in Flynn's enum
            check_schema(body, "controller/error")
        assert body["message"], body
        if code:
            assert body["code"] == code, body
        return body

    def is_bare_404(self):
        assert self.status == 404, (self.status, self.raw)
        assert self.raw == b"", self.raw
        assert "json" not in self.headers.get("Content-Type", ""), self.headers


class API:
    def __init__(self, url, key=KEY):
        self.url, self.key = url, key

    def req(self, method, path, body=None, raw=None, auth=True, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        h = {"Content-Type": "application/json", **(headers or {})}
        if auth:
            h["Authorization"] = "Basic " + base64.b64encode(f":{self.key}".encode()).decode()
        r = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(r, timeout=15) as resp:
                return Resp(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as e:
            return Resp(e.code, e.headers, e.read())

    def ok(self, method, path, body=None, schema=None):
        """Sends a request that must succeed with exactly 200 and JSON."""
        r = self.req(method, path, body)
        assert r.status == 200, (method, path, r.status, r.raw)
        j = r.json
        if schema:
            for item in (j if isinstance(j, list) else [j]):
                check_schema(item, schema)
        return j

    def get(self, path, schema=None):
        return self.ok("GET", path, schema=schema)

    def post(self, path, body, schema=None):
        return self.ok("POST", path, body, schema)

    def put(self, path, body, schema=None):
        return self.ok("PUT", path, body, schema)


def store_list(store, prefix):
    """{key: value} of every key under prefix in the store."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {"key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode()}
    req = urllib.request.Request(store + "/v3/kv/range", method="POST",
                                 data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.loads(r.read()).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]) for kv in kvs}


def store_revision(store):
    req = urllib.request.Request(store + "/v3/kv/range", method="POST",
                                 data=json.dumps({"key": base64.b64encode(b"/").decode()})
                                 .encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(json.loads(r.read())["header"]["revision"])


def store_exists_at(store, key, revision):
    body = {"key": base64.b64encode(key.encode()).decode(), "revision": revision}
    req = urllib.request.Request(store + "/v3/kv/range", method="POST",
                                 data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return bool(json.loads(r.read()).get("kvs"))


STATE_PREFIXES = ["/pier/v1/apps/", "/pier/v1/app-names/", "/pier/v1/artifacts/",
                  "/pier/v1/releases/", "/pier/v1/formations/", "/pier/v1/routes/",
                  "/pier/v1/route-index/", "/pier/v1/keys/", "/pier/v1/scale-requests/"]


def snapshot(store):
    """The controller's records in the store, to check a refusal changed nothing."""
    snap = {}
    for p in STATE_PREFIXES:
        snap.update(store_list(store, p))
    return snap


# ---- fixtures ----

@pytest.fixture
def cluster(start_pierd, pier_store):
    """A store and a controller on it: (API, store URL, start_controller)."""
    def start_controller(args=()):
        d = start_pierd("controller", args=["--store", pier_store, "--key", KEY, *args])
        return API(d.url)
    return start_controller(), pier_store, start_controller


@pytest.fixture
def api(cluster):
    return cluster[0]


def make_app(api, name=None, **kw):
    return api.post("/apps", {"name": name, "meta": None, **kw} if name else
                    {"meta": None, **kw}, "controller/app")


def make_release(api, app=None, procs=None, env=None):
    art = api.post("/artifacts", {"type": "file", "uri": "http://blob/slug.tgz"},
                   "controller/artifact")
    body = {"artifacts": [art["id"]], "env": env or {"A": "1"},
            "processes": procs if procs is not None else {"web": {"args": ["web"]},
                                                          "worker": {"args": ["w"]}}}
    if app:
        body["app_id"] = app
    return api.post("/releases", body, "controller/release")


def ssh_pubkey(tmp_path, kind="ed25519", comment="me@laptop"):
    path = tmp_path / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return (tmp_path / f"id_{kind}.pub").read_text().strip()


def fingerprint(line):
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def self_signed(tmp_path, cn="secure.example.org", name="tls"):
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt.read_text(), key.read_text()


# ---- auth ----

def test_auth_needed_except_ping_and_status(api):
    assert api.req("GET", "/apps", auth=False).status == 401
    assert API(api.url, key="wrong").req("GET", "/apps").status == 401
    assert api.req("POST", "/apps", {"name": "x"}, auth=False).status == 401
    assert api.req("GET", "/ping", auth=False).status == 200
    st = api.req("GET", "/.well-known/status", auth=False)
    assert st.status == 200 and st.json["data"]["status"] == "healthy"
    assert api.get("/apps") == []
    bearer = api.req("GET", "/apps", auth=False, headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status == 200 and bearer.json == []
    # nothing was created by the refused POST
    assert api.get("/apps") == []


# ---- apps ----

def test_app_create_get_list_update(api, cluster):
    store = cluster[1]
    a = make_app(api, "my-app")
    assert a["name"] == "my-app" and a["meta"] == {} and a["strategy"] == "all-at-once"
    assert a["deploy_timeout"] == 30 and a["created_at"] and a["updated_at"]
    assert json.loads(store_get(store, "/pier/v1/app-names/my-app")) == {"id": a["id"]}
    gen = make_app(api)
    assert gen["name"].startswith("app-") and len(gen["name"]) == 10
    assert api.get(f"/apps/{a['id']}", "controller/app") == a
    assert api.get("/apps/my-app", "controller/app") == a
    names = {x["name"] for x in api.get("/apps", "controller/app")}
    assert names == {"my-app", gen["name"]}
    api.req("GET", "/apps/nope").is_bare_404()

    # the CLI's `deployment timeout 90`: meta null is ignored
    api.post("/apps/my-app", {"meta": {"k": "v"}})
    u = api.post("/apps/my-app", {"id": "my-app", "deploy_timeout": 90, "meta": None},
                 "controller/app")
    assert u["deploy_timeout"] == 90 and u["meta"] == {"k": "v"} and u["name"] == "my-app"
    # `deployment batch-size`: meta replaces all meta
    u = api.post(f"/apps/{a['id']}", {"id": a["id"], "meta": {"flynn-deploy-batch-size": "2"}})
    assert u["meta"] == {"flynn-deploy-batch-size": "2"}
    u = api.post("/apps/my-app", {"strategy": "one-by-one", "protected": True})
    assert u["strategy"] == "one-by-one" and u["protected"] is True
    assert u["created_at"] == a["created_at"] and u["updated_at"] > a["updated_at"]
    # `meta set`: the whole app comes back, its meta replaces ours
    whole = api.get("/apps/my-app")
    whole["meta"] = {"x": "y"}
    m = api.post("/apps/my-app/meta", whole, "controller/app")
    assert m["meta"] == {"x": "y"} and m["deploy_timeout"] == 90
    assert api.get("/apps/my-app")["meta"] == {"x": "y"}


def test_app_create_with_protected_strategy_timeout(api):
    a = make_app(api, "prot", protected=True, strategy="one-by-one", deploy_timeout=5,
                 meta={"a": "b"})
    assert (a["protected"], a["strategy"], a["deploy_timeout"], a["meta"]) == \
        (True, "one-by-one", 5, {"a": "b"})
    api.req("DELETE", "/apps/prot").is_flynn_error(400, "validation_error")
    assert api.get("/apps/prot")["id"] == a["id"]


BAD_APPS = [
    {"name": "this is not valid"}, {"name": "UPPER"}, {"name": "-lead"}, {"name": "trail-"},
    {"name": "dou--ble"}, {"name": "a" * 101}, {"name": "under_score"}, {"name": 7},
    {"name": "ok", "strategy": "sideways"}, {"name": "ok", "deploy_timeout": 0},
    {"name": "ok", "deploy_timeout": -5}, {"name": "ok", "deploy_timeout": "30"},
    {"name": "ok", "deploy_timeout": 2**31}, {"name": "ok", "deploy_timeout": 2**62},
    {"name": "ok", "meta": {"a": 1}}, {"name": "ok", "meta": "x"},
    {"name": "ok", "protected": "yes"},
]


def test_app_bad_input_changes_nothing(api, cluster):
    store = cluster[1]
    make_app(api, "taken")
    before = snapshot(store)
    for body in BAD_APPS:
        api.req("POST", "/apps", body).is_flynn_error(400, "validation_error")
    api.req("POST", "/apps", raw=b"{not json").is_flynn_error(400)
    api.req("POST", "/apps", raw=b"[1,2]").is_flynn_error(400)
    api.req("POST", "/apps", raw=b"").is_flynn_error(400)
    api.req("POST", "/apps", {"name": "taken"}).is_flynn_error(409, "object_exists")
    for body in [{"name": "renamed"}, {"strategy": "x"}, {"deploy_timeout": 0},
                 {"deploy_timeout": 2**62},
                 {"meta": {"a": []}}, {"protected": 1}]:
        api.req("POST", "/apps/taken", body).is_flynn_error(400, "validation_error")
    api.req("POST", "/apps/taken/meta", {"meta": {"a": 1}}).is_flynn_error(400)
    api.req("POST", "/apps/taken", raw=b"{").is_flynn_error(400)
    api.req("POST", "/apps/nope", {"meta": {}}).is_bare_404()
    api.req("DELETE", "/apps/nope").is_bare_404()
    assert snapshot(store) == before
    assert [a["name"] for a in api.get("/apps")] == ["taken"]


def test_app_names_unique_across_controllers(cluster):
    api, store, start = cluster
    other = start()
    results = []

    def create(c):
        results.append(c.req("POST", "/apps", {"name": "race"}).status)

    threads = [threading.Thread(target=create, args=(c,)) for c in [api, other] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 7, results
    assert len(store_list(store, "/pier/v1/apps/")) == 1


def test_second_controller_sees_same_state(cluster):
    api, store, start = cluster
    other = start()
    a = make_app(api, "shared")
    rel = make_release(api, a["id"])
    api.put("/apps/shared/release", {"id": rel["id"]})
    api.put(f"/apps/shared/formations/{rel['id']}", {"processes": {"web": 2}})
    assert other.get("/apps/shared") == api.get("/apps/shared")
    assert other.get("/apps/shared/release") == rel
    assert other.get(f"/apps/{a['id']}/formations/{rel['id']}")["processes"] == {"web": 2}
    other.post("/apps/shared", {"deploy_timeout": 77})
    assert api.get("/apps/shared")["deploy_timeout"] == 77
    other.req("POST", "/apps", {"name": "shared"}).is_flynn_error(409)


def test_app_delete_removes_everything_in_one_transaction(api, cluster):
    store = cluster[1]
    a = make_app(api, "doomed", protected=True)
    keep = make_app(api, "keeper")
    r1 = make_release(api, a["id"])
    r2 = make_release(api, "doomed")
    other_rel = make_release(api, keep["id"])
    api.put("/apps/doomed/release", {"id": r2["id"]})
    api.put(f"/apps/doomed/formations/{r1['id']}", {"processes": {"web": 0}})
    api.put(f"/apps/doomed/formations/{r2['id']}", {"processes": {"web": 1}})
    api.put(f"/apps/keeper/formations/{other_rel['id']}", {"processes": {"web": 1}})
    rt = api.post("/apps/doomed/routes", {"type": "http", "domain": "doomed.example.org"})
    tcp = api.post("/apps/doomed/routes", {"type": "tcp"})
    kept_rt = api.post("/apps/keeper/routes", {"type": "http", "domain": "keeper.example.org"})

    api.req("DELETE", "/apps/doomed").is_flynn_error(400, "validation_error")
    assert api.get("/apps/doomed")["id"] == a["id"]
    api.post("/apps/doomed", {"protected": False})
    keys = [f"/pier/v1/apps/{a['id']}", "/pier/v1/app-names/doomed",
            f"/pier/v1/formations/{a['id']}/{r1['id']}",
            f"/pier/v1/formations/{a['id']}/{r2['id']}",
            f"/pier/v1/releases/{r1['id']}", f"/pier/v1/releases/{r2['id']}",
            f"/pier/v1/routes/{rt['id']}", f"/pier/v1/routes/{tcp['id']}",
            "/pier/v1/route-index/http/doomed.example.org/",
            f"/pier/v1/route-index/tcp/{tcp['port']}"]
    for k in keys:
        assert store_get(store, k) is not None, k
    d = api.ok("DELETE", "/apps/doomed")
    assert d["id"] == a["id"] and d["name"] == "doomed"
    # the revision the app went away at: every other key went at that one too
    rev = next(r for r in range(store_revision(store), 0, -1)
               if store_exists_at(store, keys[0], r - 1))
    for k in keys:
        assert store_get(store, k) is None, k
        assert store_exists_at(store, k, rev - 1) and not store_exists_at(store, k, rev), \
            f"{k} was not deleted with the app"
    api.req("GET", "/apps/doomed").is_bare_404()
    # the other app keeps what is its own
    assert api.get("/apps/keeper")["id"] == keep["id"]
    assert api.get(f"/releases/{other_rel['id']}") == other_rel
    assert api.get(f"/apps/keeper/routes/http/{kept_rt['id']}")["id"] == kept_rt["id"]
    assert api.get(f"/apps/keeper/formations/{other_rel['id']}")["processes"] == {"web": 1}
    # the name, the domain and the port are free again
    b = make_app(api, "doomed")
    assert b["id"] != a["id"]
    api.post("/apps/doomed/routes", {"type": "http", "domain": "doomed.example.org"})
    api.post("/apps/doomed/routes", {"type": "tcp", "port": tcp["port"]})


def test_default_route_with_cluster_domain(cluster):
    _, store, start = cluster
    api = start(["--domain", "pier.test"])
    a = make_app(api, "web1")
    routes = api.get("/apps/web1/routes", "controller/route")
    assert len(routes) == 1
    assert routes[0]["domain"] == "web1.pier.test" and routes[0]["service"] == "web1-web"
    assert routes[0]["type"] == "http" and routes[0]["path"] == "/"
    api.ok("DELETE", "/apps/web1")
    assert store_list(store, "/pier/v1/routes/") == {}
    # an app whose default domain is routed already is refused, whole
    b = make_app(api, "squat")
    api.post("/apps/squat/routes", {"type": "http", "domain": "web2.pier.test"})
    before = snapshot(store)
    api.req("POST", "/apps", {"name": "web2"}).is_flynn_error(409)
    assert snapshot(store) == before
    assert b["name"] == "squat"


# ---- artifacts ----

def test_artifacts(api, cluster):
    store = cluster[1]
    f = api.post("/artifacts", {"type": "file", "uri": "http://blob:5000/slugs/a.tgz",
                                "meta": {"blobstore": "true"}, "id": "client-id",
                                "created_at": "2001-01-01T00:00:00Z"}, "controller/artifact")
    assert f["id"] != "client-id" and f["created_at"] != "2001-01-01T00:00:00Z"
    assert f["type"] == "file" and f["meta"] == {"blobstore": "true"}
    st = api.post("/artifacts", {"type": "flynn", "uri": "file:///var/lib/pier/stack"},
                  "controller/artifact")
    dk = api.post("/artifacts", {"type": "docker", "uri": "https://dl.flynn.io/tuf?name=x"},
                  "controller/artifact")
    assert api.get(f"/artifacts/{f['id']}", "controller/artifact") == f
    ids = {x["id"] for x in api.get("/artifacts", "controller/artifact")}
    assert ids == {f["id"], st["id"], dk["id"]}
    api.req("GET", "/artifacts/6ba7b810-9dad-41d1-80b4-00c04fd430c8").is_bare_404()
    api.req("GET", "/artifacts/not-an-id").is_bare_404()
    before = snapshot(store)
    for body in [{"type": "file"}, {"type": "file", "uri": ""}, {"uri": "http://x"},
                 {"type": "tarball", "uri": "http://x"}, {"type": "file", "uri": 5},
                 {"type": "file", "uri": "http://x", "meta": {"a": 1}}]:
        api.req("POST", "/artifacts", body).is_flynn_error(400, "validation_error")
    api.req("POST", "/artifacts", raw=b"nope").is_flynn_error(400)
    assert snapshot(store) == before


# ---- releases ----

def test_release_create_defaults_and_reads(api):
    a = make_app(api, "rel-app")
    art = api.post("/artifacts", {"type": "file", "uri": "http://blob/s.tgz"})
    body = {"id": "", "app_id": "rel-app", "artifacts": [art["id"]], "env": {"K": "v"},
            "meta": {"git": "true"}, "created_at": "2015-12-16T02:21:06.731551Z",
            "processes": {"web": {"args": ["bin/web"], "env": {"P": "1"},
                                  "ports": [{"port": 8080, "proto": "tcp"}]},
                          "worker": {"cmd": ["w"], "resources": {"memory": {"limit": 512 * MIB}}}}}
    rel = api.post("/releases", body, "controller/release")
    assert rel["id"] and rel["id"] != "" and rel["created_at"] != body["created_at"]
    assert rel["app_id"] == a["id"] and rel["artifacts"] == [art["id"]]
    assert rel["env"] == {"K": "v"} and rel["meta"] == {"git": "true"}
    assert rel["processes"]["web"]["resources"] == {
        "max_fd": {"request": 10000, "limit": 10000},
        "memory": {"request": 1073741824, "limit": 1073741824}}
    assert rel["processes"]["worker"]["resources"] == {
        "max_fd": {"request": 10000, "limit": 10000},
        "memory": {"request": 512 * MIB, "limit": 512 * MIB}}
    assert rel["processes"]["web"]["args"] == ["bin/web"]
    assert api.get(f"/releases/{rel['id']}", "controller/release") == rel
    # the legacy single artifact, no app
    legacy = api.post("/releases", {"artifact": art["id"], "env": {"some": "info"},
                                    "processes": {"foo": {"cmd": ["ls", "-l"]}}},
                      "controller/release")
    assert legacy["artifacts"] == [art["id"]] and "app_id" not in legacy
    ids = {r["id"] for r in api.get("/releases", "controller/release")}
    assert ids == {rel["id"], legacy["id"]}


def test_app_releases_and_current_release(api, cluster):
    store = cluster[1]
    a = make_app(api, "cur")
    api.req("GET", "/apps/cur/release").is_bare_404()
    assert api.get("/apps/cur/releases") == []
    r1 = make_release(api, a["id"])
    r2 = make_release(api, "cur")
    r3 = make_release(api, a["id"])
    make_release(api)  # another app's
    listed = api.get("/apps/cur/releases", "controller/release")
    assert [r["id"] for r in listed] == [r3["id"], r2["id"], r1["id"]], "newest first"
    api.req("GET", "/apps/cur/release").is_bare_404()
    out = api.put("/apps/cur/release", {"id": r2["id"]}, "controller/release")
    assert out["id"] == r2["id"]
    assert api.get(f"/apps/{a['id']}/release") == r2
    assert api.get("/apps/cur")["release"] == r2["id"]
    before = snapshot(store)
    api.req("PUT", "/apps/cur/release",
            {"id": "6ba7b810-9dad-41d1-80b4-00c04fd430c8"}).is_flynn_error(400)
    api.req("PUT", "/apps/cur/release", {"id": "junk"}).is_flynn_error(400)
    api.req("PUT", "/apps/cur/release", {}).is_flynn_error(400)
    api.req("PUT", "/apps/cur/release", raw=b"{").is_flynn_error(400)
    api.req("PUT", "/apps/nope/release", {"id": r1["id"]}).is_bare_404()
    assert snapshot(store) == before
    assert api.get("/apps/cur/release")["id"] == r2["id"]


def test_release_bad_input_changes_nothing(api, cluster):
    store = cluster[1]
    make_app(api, "badrel")
    art = api.post("/artifacts", {"type": "file", "uri": "http://blob/s.tgz"})
    before = snapshot(store)
    unknown = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
    bad = [
        {"artifacts": [unknown]},
        {"artifacts": [""]},
        {"artifacts": [art["id"], 5]},
        {"artifacts": "x"},
        {"artifact": unknown},
        {"app_id": "no-such-app", "artifacts": [art["id"]]},
        {"artifacts": [art["id"]], "processes": {"bad name": {}}},
        {"artifacts": [art["id"]], "processes": {"x" * 64: {}}},
        {"artifacts": [art["id"]], "processes": {"web": "ls"}},
        {"artifacts": [art["id"]], "processes": {"web": {"args": "ls"}}},
        {"artifacts": [art["id"]], "processes": {"web": {"env": {"A=B": "1"}}}},
        {"artifacts": [art["id"]], "processes": {"web": {"resources": {"memory": 5}}}},
        {"artifacts": [art["id"]], "processes": []},
        {"artifacts": [art["id"]], "env": {"": "x"}},
        {"artifacts": [art["id"]], "env": {"HAS SPACE": "x"}},
        {"artifacts": [art["id"]], "env": {"A": 1}},
        {"artifacts": [art["id"]], "meta": {"A": True}},
        # Jobs of these could never start on a host: refused up front.
        {"artifacts": [art["id"]], "env": {"a.b": "1"}},
        {"artifacts": [art["id"]], "processes": {"web": {
            "args": ["x"], "resources": {"memory": {"limit": 1}}}}},
        {"artifacts": [art["id"]], "processes": {"web": {
            "args": ["x"], "ports": [{"service": {"name": "s", "check": {"type": "http/x"}}}]}}},
    ]
    for body in bad:
        api.req("POST", "/releases", body).is_flynn_error(400, "validation_error")
    api.req("POST", "/releases", raw=b"{]").is_flynn_error(400)
    api.req("GET", f"/releases/{unknown}").is_bare_404()
    api.req("GET", "/releases/nope").is_bare_404()
    api.req("GET", "/apps/nope/releases").is_bare_404()
    assert snapshot(store) == before


# ---- formations ----

def test_formations_put_get_expand_list_delete(api, cluster):
    store = cluster[1]
    a = make_app(api, "form", meta={"m": "1"})
    rel = make_release(api, a["id"])
    path = f"/apps/form/formations/{rel['id']}"
    api.req("GET", path).is_bare_404()
    api.req("GET", path + "?expand=true").is_bare_404()
    f = api.put(path, {"app": a["id"], "release": rel["id"], "processes": {"web": 2}},
                "controller/formation")
    assert f["app"] == a["id"] and f["release"] == rel["id"] and f["processes"] == {"web": 2}
    assert f["created_at"] == f["updated_at"]
    assert api.get(path, "controller/formation") == f
    g = api.put(path, {"processes": {"web": 3, "worker": 1}, "tags": {"web": {"disk": "ssd"}}})
    assert g["created_at"] == f["created_at"] and g["updated_at"] > f["updated_at"]
    assert g["tags"] == {"web": {"disk": "ssd"}}
    x = api.get(path + "?expand=true", "controller/expanded_formation")
    assert x["app"] == {"id": a["id"], "name": "form", "meta": {"m": "1"}}
    assert x["release"] == rel and [y["id"] for y in x["artifacts"]] == rel["artifacts"]
    assert x["processes"] == {"web": 3, "worker": 1} and x["tags"] == g["tags"]
    assert x["updated_at"] == g["updated_at"]
    assert api.get("/apps/form/formations", "controller/formation") == [g]
    assert api.get("/apps/form/formations?expand=true") == [x]

    # only formations with something to run are active
    idle = make_release(api, a["id"])
    api.put(f"/apps/form/formations/{idle['id']}", {"processes": {"web": 0}})
    other = make_app(api, "other")
    orel = make_release(api, other["id"])
    api.put(f"/apps/other/formations/{orel['id']}", {"processes": {"worker": 4}})
    active = api.get("/formations?active=true", "controller/expanded_formation")
    assert sorted((y["app"]["name"], y["release"]["id"]) for y in active) == \
        sorted([("form", rel["id"]), ("other", orel["id"])])
    assert len(api.get("/apps/form/formations")) == 2

    d = api.ok("DELETE", path)
    assert d["processes"] == {"web": 3, "worker": 1}
    api.req("GET", path).is_bare_404()
    api.req("DELETE", path).is_bare_404()
    assert store_get(store, f"/pier/v1/formations/{a['id']}/{rel['id']}") is None


def test_formation_bad_input_changes_nothing(api, cluster):
    store = cluster[1]
    a = make_app(api, "fbad")
    rel = make_release(api, a["id"])
    path = f"/apps/fbad/formations/{rel['id']}"
    api.put(path, {"processes": {"web": 1}})
    before = snapshot(store)
    for body in [{"processes": {"web": -1}}, {"processes": {"db": 1}}, {"processes": {"web": 100001}},
                 {"processes": {"web": "2"}}, {"processes": {"web": 1.5}},
                 {"processes": [1]}, {"processes": {"web": 1}, "tags": {"db": {"a": "b"}}},
                 {"processes": {"web": 1}, "tags": {"web": {"a": 1}}},
                 {"processes": {"web": 1}, "tags": "x"}]:
        api.req("PUT", path, body).is_flynn_error(400, "validation_error")
    unknown = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
    api.req("PUT", f"/apps/fbad/formations/{unknown}", {"processes": {}}).is_flynn_error(400)
    api.req("PUT", "/apps/fbad/formations/junk", {"processes": {}}).is_flynn_error(400)
    api.req("PUT", path, raw=b"{").is_flynn_error(400)
    api.req("PUT", f"/apps/nope/formations/{rel['id']}", {"processes": {}}).is_bare_404()
    api.req("PUT", f"/apps/fbad/scale/{rel['id']}",
            {"new_processes": {"web": -2}}).is_flynn_error(400)
    api.req("PUT", f"/apps/fbad/scale/{rel['id']}",
            {"new_processes": {"nope": 2}}).is_flynn_error(400)
    api.req("PUT", f"/apps/fbad/scale/{unknown}", {"new_processes": {}}).is_flynn_error(400)
    assert snapshot(store) == before


def test_protected_app_cannot_scale_to_zero(api, cluster):
    store = cluster[1]
    a = make_app(api, "guarded", protected=True)
    rel = make_release(api, a["id"])
    path = f"/apps/guarded/formations/{rel['id']}"
    api.put(path, {"processes": {"web": 1, "worker": 0}})
    api.put(path, {"processes": {"web": 2, "worker": 0}})
    before = snapshot(store)
    api.req("PUT", path, {"processes": {"web": 0}}).is_flynn_error(400, "validation_error")
    api.req("PUT", path, {"processes": {"worker": 1}}).is_flynn_error(400)
    api.req("PUT", f"/apps/guarded/scale/{rel['id']}",
            {"new_processes": {"web": 0}}).is_flynn_error(400)
    api.req("DELETE", path).is_flynn_error(400)
    assert snapshot(store) == before
    api.post("/apps/guarded", {"protected": False})
    assert api.put(path, {"processes": {"web": 0}})["processes"] == {"web": 0}


def test_scale_request_flow(api, cluster):
    store = cluster[1]
    a = make_app(api, "scaly")
    rel = make_release(api, a["id"])
    # the CLI's body for `flynn scale web=3`
    sr = api.put(f"/apps/scaly/scale/{rel['id']}",
                 {"id": "", "app": "scaly", "release": rel["id"], "state": "pending",
                  "new_processes": {"web": 3}, "new_tags": {}, "created_at": None,
                  "updated_at": None}, "controller/scale_request")
    assert sr["id"] and sr["state"] == "pending" and sr["app"] == a["id"]
    assert sr["old_processes"] == {} and sr["new_processes"] == {"web": 3}
    f = api.get(f"/apps/scaly/formations/{rel['id']}")
    assert f["processes"] == {"web": 3} and f["tags"] == {}
    rec = json.loads(store_get(store, f"/pier/v1/scale-requests/{sr['id']}"))
    assert rec["state"] == "pending" and rec["release"] == rel["id"]

    sr2 = api.put(f"/apps/scaly/scale/{rel['id']}",
                  {"new_processes": {"web": 1, "worker": 2}, "new_tags": {"web": {"z": "a"}}},
                  "controller/scale_request")
    assert sr2["old_processes"] == {"web": 3} and sr2["new_processes"] == {"web": 1, "worker": 2}
    assert sr2["old_tags"] == {} and sr2["new_tags"] == {"web": {"z": "a"}}
    first = json.loads(store_get(store, f"/pier/v1/scale-requests/{sr['id']}"))
    assert first["state"] == "cancelled", "a newer request cancels the pending one"
    f = api.get(f"/apps/scaly/formations/{rel['id']}")
    assert f["processes"] == {"web": 1, "worker": 2} and f["tags"] == {"web": {"z": "a"}}
    # new_tags left out keeps the tags
    sr3 = api.put(f"/apps/scaly/scale/{rel['id']}", {"new_processes": {"web": 2}})
    assert sr3["new_tags"] == {"web": {"z": "a"}}


def test_active_formations_empty_list(api):
    # an empty list is [], never null
    r = api.req("GET", "/formations?active=true")
    assert r.status == 200 and r.raw == b"[]"
    for path in ["/apps", "/artifacts", "/releases", "/keys"]:
        assert api.req("GET", path).raw == b"[]", path


# ---- routes ----

ZERO = "0001-01-01T00:00:00Z"


def test_http_routes(api, cluster, tmp_path):
    store = cluster[1]
    a = make_app(api, "site")
    # the CLI's `route add http example.org/path/`, zero times included
    rt = api.post("/apps/site/routes", {"type": "http", "service": "site-web",
                                        "domain": "Example.org", "path": "/path/",
                                        "leader": False, "drain_backends": True,
                                        "created_at": ZERO, "updated_at": ZERO,
                                        "id": "", "parent_ref": "controller/apps/x"},
                  "controller/route")
    assert rt["id"] and rt["created_at"] != ZERO and rt["updated_at"] != ZERO
    assert rt["domain"] == "example.org" and rt["path"] == "/path/"
    assert rt["parent_ref"] == f"controller/apps/{a['id']}" and "app" not in rt
    assert json.loads(store_get(store, f"/pier/v1/routes/{rt['id']}"))["app"] == a["id"]
    d = api.post("/apps/site/routes", {"type": "http", "domain": "site.example.org"},
                 "controller/route")
    assert d["service"] == "site-web" and d["path"] == "/" and d["drain_backends"] is True
    assert d["sticky"] is False and d["leader"] is False
    p = api.post("/apps/site/routes", {"type": "http", "domain": "example.org", "path": "/api"})
    assert p["path"] == "/api/"
    listed = api.get("/apps/site/routes", "controller/route")
    assert [x["id"] for x in listed] == [rt["id"], d["id"], p["id"]]
    assert api.get(f"/apps/site/routes/http/{rt['id']}", "controller/route") == rt
    api.req("GET", f"/apps/site/routes/tcp/{rt['id']}").is_bare_404()

    # update: the CLI sends the whole route back
    whole = dict(rt, service="site-other", sticky=True)
    u = api.put(f"/apps/site/routes/http/{rt['id']}", whole, "controller/route")
    assert u["service"] == "site-other" and u["sticky"] is True
    assert u["created_at"] == rt["created_at"] and u["updated_at"] > rt["updated_at"]
    crt, key = self_signed(tmp_path)
    u = api.put(f"/apps/site/routes/http/{rt['id']}", dict(u, tls_cert=crt, tls_key=key),
                "controller/route")
    assert u["certificate"]["cert"] == crt and u["tls_cert"] == crt
    sec = api.post("/apps/site/routes", {"type": "http", "domain": "secure.example.org",
                                         "certificate": {"cert": crt, "key": key}},
                   "controller/route")
    assert sec["tls_key"] == key

    # conflicts and bad input change nothing
    other = make_app(api, "other-site")
    before = snapshot(store)
    api.req("POST", "/apps/other-site/routes",
            {"type": "http", "domain": "example.org", "path": "/path"}).is_flynn_error(409)
    api.req("POST", "/apps/site/routes",
            {"type": "http", "domain": "EXAMPLE.org", "path": "/path/"}).is_flynn_error(409)
    _, other_key = self_signed(tmp_path, name="other")
    for body in [{"type": "http"}, {"type": "http", "domain": ""}, {"type": "udp"},
                 {"domain": "x.org"}, {"type": "http", "domain": "x.org", "path": "nope"},
                 {"type": "http", "domain": "x.org", "sticky": "yes"},
                 {"type": "http", "domain": "x.org", "tls_cert": crt},
                 {"type": "http", "domain": "x.org", "tls_cert": "junk", "tls_key": "junk"},
                 {"type": "http", "domain": "x.org", "tls_cert": crt, "tls_key": other_key},
                 {"type": "http", "domain": "has space.org"}]:
        api.req("POST", "/apps/site/routes", body).is_flynn_error(400, "validation_error")
    api.req("PUT", f"/apps/site/routes/http/{rt['id']}",
            dict(u, domain="moved.org")).is_flynn_error(400)
    api.req("PUT", f"/apps/site/routes/http/{rt['id']}", dict(u, type="tcp")).is_flynn_error(400)
    api.req("PUT", f"/apps/other-site/routes/http/{rt['id']}", u).is_bare_404()
    api.req("DELETE", f"/apps/other-site/routes/http/{rt['id']}").is_bare_404()
    api.req("POST", "/apps/nope/routes", {"type": "http", "domain": "n.org"}).is_bare_404()
    assert snapshot(store) == before
    assert api.get("/apps/other-site/routes") == []

    api.ok("DELETE", f"/apps/site/routes/http/{rt['id']}")
    api.req("GET", f"/apps/site/routes/http/{rt['id']}").is_bare_404()
    assert store_get(store, "/pier/v1/route-index/http/example.org/path/") is None
    api.post("/apps/other-site/routes", {"type": "http", "domain": "example.org",
                                         "path": "/path/"})
    assert other["name"] == "other-site"


def test_tcp_routes(api, cluster):
    store = cluster[1]
    make_app(api, "tcpapp")
    t1 = api.post("/apps/tcpapp/routes", {"type": "tcp", "service": "tcpapp-web", "port": 0,
                                          "leader": True, "drain_backends": True,
                                          "created_at": ZERO, "updated_at": ZERO},
                  "controller/route")
    assert 3000 <= t1["port"] <= 3500 and t1["leader"] is True
    t2 = api.post("/apps/tcpapp/routes", {"type": "tcp"}, "controller/route")
    assert 3000 <= t2["port"] <= 3500 and t2["port"] != t1["port"]
    assert t2["service"] == "tcpapp-web"
    t3 = api.post("/apps/tcpapp/routes", {"type": "tcp", "port": 4444})
    assert t3["port"] == 4444
    before = snapshot(store)
    api.req("POST", "/apps/tcpapp/routes", {"type": "tcp", "port": 4444}).is_flynn_error(
        409, "conflict")
    api.req("POST", "/apps/tcpapp/routes",
            {"type": "tcp", "port": t1["port"]}).is_flynn_error(409)
    api.req("POST", "/apps/tcpapp/routes", {"type": "tcp", "port": 70000}).is_flynn_error(400)
    api.req("POST", "/apps/tcpapp/routes", {"type": "tcp", "port": -1}).is_flynn_error(400)
    api.req("POST", "/apps/tcpapp/routes", {"type": "tcp", "domain": 5}).is_flynn_error(400)
    api.req("PUT", f"/apps/tcpapp/routes/tcp/{t3['id']}",
            dict(t3, port=4445)).is_flynn_error(400)
    assert snapshot(store) == before
    u = api.put(f"/apps/tcpapp/routes/tcp/{t3['id']}", dict(t3, service="svc2", leader=True))
    assert u["service"] == "svc2" and u["port"] == 4444 and u["leader"] is True
    api.ok("DELETE", f"/apps/tcpapp/routes/tcp/{t3['id']}")
    assert api.post("/apps/tcpapp/routes", {"type": "tcp", "port": 4444})["port"] == 4444
    assert len(api.get("/apps/tcpapp/routes")) == 3


# ---- keys ----

def test_keys(api, cluster, tmp_path):
    store = cluster[1]
    assert api.get("/keys") == []
    line = ssh_pubkey(tmp_path)
    k = api.post("/keys", {"key": line})
    fp = fingerprint(line)
    assert k["id"] == fp and k["comment"] == "me@laptop"
    assert k["key"] == " ".join(line.split()[:2]) and k["created_at"]
    safe = fp.replace("/", "_").replace("+", "-")
    assert json.loads(store_get(store, f"/pier/v1/keys/{safe}"))["id"] == fp
    assert api.get(f"/keys/{safe}") == k
    assert api.get(f"/keys/{safe[len('SHA256:'):]}") == k
    rsa = ssh_pubkey(tmp_path, "rsa", comment="")
    k2 = api.post("/keys", {"key": rsa + "\n"})
    assert k2["id"] == fingerprint(rsa) and k2["comment"] == ""
    ec = api.post("/keys", {"key": ssh_pubkey(tmp_path, "ecdsa", comment="two words")})
    assert ec["comment"] == "two words"
    assert {x["id"] for x in api.get("/keys")} == {k["id"], k2["id"], ec["id"]}

    before = snapshot(store)
    api.req("POST", "/keys", {"key": line}).is_flynn_error(409, "object_exists")
    typ, b64 = line.split()[:2]
    blob = base64.b64decode(b64)
    for bad in ["", "ssh-ed25519", f"ssh-foo {b64}", f"ssh-ed25519 {b64[:-3]}",
                f"ssh-ed25519 !!!{b64}", f"ssh-rsa {b64}",
                "ssh-ed25519 " + base64.b64encode(blob[:-1]).decode(),
                "ssh-ed25519 " + base64.b64encode(blob + b"\0\0\0\1x").decode(),
                "ssh-ed25519 " + base64.b64encode(blob + b"\0\0\0\5x").decode(),
                f"command=\"ls\" {line}"]:
        api.req("POST", "/keys", {"key": bad}).is_flynn_error(400, "validation_error")
    api.req("POST", "/keys", {}).is_flynn_error(400)
    api.req("POST", "/keys", {"key": 5}).is_flynn_error(400)
    api.req("POST", "/keys", raw=b"ssh-ed25519").is_flynn_error(400)
    api.req("DELETE", "/keys/SHA256:nope").is_bare_404()
    assert snapshot(store) == before

    assert api.ok("DELETE", f"/keys/{safe}")["id"] == fp
    api.req("GET", f"/keys/{safe}").is_bare_404()
    assert len(api.get("/keys")) == 2
