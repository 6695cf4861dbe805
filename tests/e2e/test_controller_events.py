"""Events: the recorder that derives Flynn's events from the store's history,
GET /events (list, one, server-sent events) and the formations stream.

Real `pierd store` and `pierd controller`s. Records go into the store
directly (in the shapes of docs/controller.md) where the point is the event
a change makes, and through the controller's API where a Flynn client's
flow is the point (create, delete). Every event the API returns is checked
against Flynn's Event schema.
"""

import base64
import json
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import jsonschema
import pytest

from controller_util import KEY, Controller

SCHEMA_DIR = Path("/work/shared/flynn-schema")


def _schemas():
    store = {}
    for path in SCHEMA_DIR.rglob("*.json"):
        if "api-examples" in path.parts:
            continue
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "id" in doc:
            store[doc["id"].split("#")[0]] = doc
    return store


SCHEMAS = _schemas()


def validate_as(resource, obj):
    schema = SCHEMAS[f"https://flynn.io/schema/controller/{resource}"]
    resolver = jsonschema.RefResolver(base_uri=schema["id"], referrer=schema, store=SCHEMAS)
    jsonschema.Draft4Validator(schema, resolver=resolver).validate(obj)


# ---- the store, straight (etcd v3 JSON gateway) ----

def _b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _store_call(store, path, body):
    import urllib.request
    req = urllib.request.Request(store + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def sput(store, key, obj):
    return int(_store_call(store, "/v3/kv/put", {"key": _b64(key), "value": _b64(json.dumps(obj))})
               ["header"]["revision"])


def sget(store, key):
    kvs = _store_call(store, "/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def sdel(store, key, prefix=False):
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(key[:-1] + chr(ord(key[-1]) + 1))
    return _store_call(store, "/v3/kv/deleterange", body)


def stxn(store, puts=(), deletes=()):
    ops = [{"request_put": {"key": _b64(k), "value": _b64(json.dumps(v))}} for k, v in puts]
    ops += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
    res = _store_call(store, "/v3/kv/txn", {"success": ops})
    return int(res["header"]["revision"])


def srevision(store):
    return int(_store_call(store, "/v3/kv/range", {"key": _b64("/")})["header"]["revision"])


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


# ---- controllers and events ----

class Ctl(Controller):
    """Controller with a chosen environment (Controller takes none)."""

    def __init__(self, start_pierd, store, env=None, name=None):
        self.key = KEY
        self.auth = "Basic " + base64.b64encode(f":{KEY}".encode()).decode()
        full = dict(os.environ)
        full.update(env or {})
        self.daemon = start_pierd("controller", args=["--store", store, "--key", KEY],
                                  env=full, name=name)
        self.url = self.daemon.url
        self.store = store

    def events(self, query=""):
        st, body = self.get("/events" + query)
        assert st == 200, (st, body)
        for ev in body:
            validate_as("event", ev)
        return body

    def leading(self):
        return 'msg="leading" service=controller' in self.daemon.stderr_text()


def wait_for(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_events(ctl, n, query="", timeout=15.0):
    """The events of query once there are at least n (newest first)."""
    got = []

    def enough():
        got[:] = ctl.events(query)
        return len(got) >= n
    try:
        wait_for(enough, timeout, f"{n} events for {query!r}")
    except AssertionError:
        raise AssertionError(f"wanted {n} events for {query!r}, have {len(got)}: {got}")
    return got


def assert_consecutive(evs):
    ids = sorted(e["id"] for e in evs)
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    assert len(set(ids)) == len(ids)


class SSE:
    """A raw HTTP/1.1 server-sent events connection, so the framing can be
    checked byte for byte (chunked transfer decoded here)."""

    def __init__(self, ctl, path, headers=None):
        self.sock = socket.create_connection(("127.0.0.1", ctl.daemon.port), timeout=10)
        h = {"Host": f"127.0.0.1:{ctl.daemon.port}", "Authorization": ctl.auth,
             "Accept": "text/event-stream", "Content-Type": "application/json",
             "Last-Event-Id": "0"}
        h.update(headers or {})
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
        self.sock.sendall((req + "\r\n").encode())
        self.raw = b""
        self.body = b""
        t0 = time.monotonic()
        while b"\r\n\r\n" not in self.raw:
            self._recv(10)
        self.header_secs = time.monotonic() - t0
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        self._dechunk()

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        self.raw += data

    def _dechunk(self):
        while True:
            m = re.match(rb"([0-9a-fA-F]+)\r\n", self.raw)
            if not m:
                return
            n = int(m.group(1), 16)
            start = m.end()
            if len(self.raw) < start + n + 2:
                return
            self.body += self.raw[start:start + n]
            self.raw = self.raw[start + n + 2:]

    def read_until(self, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not pred(self.body):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"stream: timed out; body so far: {self.body[-2000:]!r}")
            try:
                self._recv(min(left, 1.0))
            except socket.timeout:
                continue
            self._dechunk()
        return self.body

    def settle(self, secs=0.5):
        """Reads whatever else arrives within secs."""
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            try:
                self._recv(max(0.05, deadline - time.monotonic()))
            except socket.timeout:
                break
            self._dechunk()
        return self.body

    def events(self):
        """The JSON of every data block so far, checking the framing."""
        return [json.loads(d) for d in frames(self.body)]

    def wait_events(self, n, timeout=15.0):
        self.read_until(lambda b: len(frames(b)) >= n, timeout)
        return self.events()

    def close(self):
        self.sock.close()


FRAME = re.compile(rb"(?:id: (\d+)\n)?data: ([^\n]*)\n\n|:\n")


def frames(body):
    """The data of each complete event in body. Asserts that body is nothing
    but events ("id: N\\ndata: JSON\\n\\n"), keep-alives (":\\n") and at
    most one event still arriving, and that data is compact JSON."""
    out, pos = [], 0
    while pos < len(body):
        m = FRAME.match(body, pos)
        if not m:
            rest = body[pos:]
            # a frame cut short by the network is fine at the very end
            assert b"\n\n" not in rest and not rest.startswith(b":\n"), body
            break
        if m.group(2) is not None:
            data = m.group(2).decode()
            obj = json.loads(data)
            assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False) == data, data
            if m.group(1) is not None and "id" in obj and isinstance(obj, dict) \
                    and "object_type" in obj:
                assert int(m.group(1)) == obj["id"]
            out.append(data)
        pos = m.end()
    return out


@pytest.fixture
def store(start_pierd):
    return start_pierd("store", name="store").url


@pytest.fixture
def ctl(start_pierd, store):
    c = Ctl(start_pierd, store, name="ctl")
    wait_for(c.leading, 15, "the controller to lead")
    return c


def new_id():
    return str(uuid.uuid4())


def make_app(ctl, name):
    st, app = ctl.post("/apps", {"name": name})
    assert st == 200, (st, app)
    return app


def put_release(store, app_id, processes=None, env=None):
    art = {"id": new_id(), "type": "file", "uri": "http://blob/slug.tgz", "meta": {},
           "created_at": now()}
    sput(store, "/pier/v1/artifacts/" + art["id"], art)
    rel = {"id": new_id(), "app_id": app_id, "artifacts": [art["id"]], "env": env or {},
           "meta": {}, "processes": processes or {"web": {"args": ["run"]}},
           "created_at": now()}
    sput(store, "/pier/v1/releases/" + rel["id"], rel)
    return art, rel


def set_app_release(store, app_id, release_id):
    app = sget(store, "/pier/v1/apps/" + app_id)
    app["release"] = release_id
    app["updated_at"] = now()
    sput(store, "/pier/v1/apps/" + app_id, app)


# ---- the events a change makes ----

def test_events_derived_from_store_changes(ctl, store):
    app = make_app(ctl, "evapp")
    aid = app["id"]
    ev = wait_events(ctl, 1, f"?app_id={aid}&object_types=app")[0]
    assert ev["object_id"] == aid and ev["data"]["name"] == "evapp"

    art, rel = put_release(store, aid)
    set_app_release(store, aid, rel["id"])
    got = wait_events(ctl, 1, "?object_types=app_release")
    assert got[0]["app"] == aid and got[0]["object_id"] == aid
    assert got[0]["data"]["release"]["id"] == rel["id"]
    assert "prev_release" not in got[0]["data"]
    art2, rel2 = put_release(store, aid, env={"A": "1"})
    set_app_release(store, aid, rel2["id"])
    got = wait_events(ctl, 2, "?object_types=app_release")
    assert got[0]["data"]["release"]["id"] == rel2["id"]
    assert got[0]["data"]["prev_release"]["id"] == rel["id"]
    assert [e for e in ctl.events("?object_types=artifact") if e["object_id"] == art["id"]]
    rels = ctl.events(f"?object_types=release&app_id={aid}")
    assert {e["object_id"] for e in rels} == {rel["id"], rel2["id"]}

    # formations: scale events with the counts before and after
    fkey = f"/pier/v1/formations/{aid}/{rel2['id']}"
    form = {"app": aid, "release": rel2["id"], "processes": {"web": 1}, "tags": {},
            "created_at": now(), "updated_at": now()}
    sput(store, fkey, form)
    form["processes"] = {"web": 3}
    sput(store, fkey, form)
    sdel(store, fkey)
    scale = wait_events(ctl, 3, "?object_types=scale")
    assert [e["data"]["processes"] for e in scale] == [{}, {"web": 3}, {"web": 1}]
    assert "prev_processes" not in scale[2]["data"]
    assert scale[1]["data"]["prev_processes"] == {"web": 1}
    assert all(e["object_id"] == rel2["id"] and e["app"] == aid for e in scale)
    assert set(scale[0]["data"]) == {"app", "release", "processes", "prev_processes", "tags"}

    # scale requests
    sr = {"id": new_id(), "app": aid, "release": rel2["id"], "state": "pending",
          "new_processes": {"web": 2}, "created_at": now()}
    sput(store, "/pier/v1/scale-requests/" + sr["id"], sr)
    got = wait_events(ctl, 1, "?object_types=scale_request")
    assert got[0]["data"]["id"] == sr["id"] and got[0]["data"]["state"] == "pending"

    # jobs: an event when new and on each state change, not otherwise
    jid = "host1-" + new_id()
    job = {"id": jid, "uuid": jid[6:], "host_id": "host1", "app": aid, "release": rel2["id"],
           "type": "web", "args": ["run"], "desired_state": "up", "created_at": now()}
    jkey = "/pier/v1/jobs/" + jid
    sput(store, jkey, job)
    job["state"] = "starting"
    sput(store, jkey, job)
    job["allocated_ports"] = [20001]
    sput(store, jkey, job)  # no state change: no event
    job["state"] = "up"
    job["healthy"] = True
    sput(store, jkey, job)
    job["healthy"] = False
    sput(store, jkey, job)  # no state change
    job["state"] = "crashed"
    job["exit_status"] = 2
    job["host_error"] = "exited 2"
    sput(store, jkey, job)
    sput(store, "/pier/v1/hosts/host1", {"id": "host1"})  # no event
    jobs = wait_events(ctl, 4, f"?object_types=job&object_id={jid}")
    time.sleep(1)
    jobs = ctl.events(f"?object_types=job&object_id={jid}")
    assert [e["data"]["state"] for e in jobs] == ["crashed", "up", "starting", "pending"]
    assert jobs[0]["data"]["exit_status"] == 2 and jobs[0]["data"]["host_error"] == "exited 2"
    for e in jobs:
        assert e["app"] == aid
        validate_as("job", e["data"])

    # deployments: on status or step changes only
    did = new_id()
    dep = {"id": did, "app": aid, "old_release": rel["id"], "new_release": rel2["id"],
           "strategy": "all-at-once", "status": "pending", "processes": {"web": 1},
           "created_at": now()}
    dkey = "/pier/v1/deployments/" + did
    sput(store, dkey, dep)
    dep.update(status="running", step=1)
    sput(store, dkey, dep)
    dep.update(step=2, job_type="web", job_state="up")
    sput(store, dkey, dep)
    dep["deploy_timeout"] = 31
    sput(store, dkey, dep)  # neither: no event
    dep.update(status="failed", error="web job crashed", step=3)
    sput(store, dkey, dep)
    deps = wait_events(ctl, 4, f"?object_types=deployment&object_id={did}")
    time.sleep(0.5)
    deps = ctl.events(f"?object_types=deployment&object_id={did}")
    assert [e["data"]["status"] for e in deps] == ["failed", "running", "running", "pending"]
    assert deps[1]["data"] == {"app": aid, "deployment": did, "release": rel2["id"],
                               "status": "running", "job_type": "web", "job_state": "up"}
    assert deps[0]["data"]["error"] == "web job crashed"

    # routes and keys: puts and deletes
    route = {"id": new_id(), "type": "http", "service": "evapp-web", "domain": "x.example",
             "app": aid, "parent_ref": f"controller/apps/{aid}", "created_at": now()}
    sput(store, "/pier/v1/routes/" + route["id"], route)
    sdel(store, "/pier/v1/routes/" + route["id"])
    rts = wait_events(ctl, 2, "?object_types=route,route_deletion")
    assert [e["object_type"] for e in rts] == ["route_deletion", "route"]
    assert rts[0]["data"]["domain"] == "x.example" and rts[0]["app"] == aid
    validate_as("event", rts[0])
    key = {"id": "ab:cd", "key": "ssh-ed25519 AAAA", "comment": "me", "created_at": now()}
    sput(store, "/pier/v1/keys/ab:cd", key)
    sdel(store, "/pier/v1/keys/ab:cd")
    ks = wait_events(ctl, 2, "?object_types=key,key_deletion")
    assert [e["object_type"] for e in ks] == ["key_deletion", "key"]

    # a release deleted on its own
    sdel(store, "/pier/v1/releases/" + rel["id"])
    rd = wait_events(ctl, 1, f"?object_types=release_deletion&object_id={rel['id']}")[0]
    assert rd["data"] == {"release_deletion": {"app": aid, "release": rel["id"],
                                               "remaining_apps": [], "deleted_files": []},
                          "error": ""}

    everything = ctl.events()
    assert_consecutive(everything)
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)


def test_list_filters_and_get(ctl, store):
    a = make_app(ctl, "filt-a")
    b = make_app(ctl, "filt-b")
    for i in range(3):
        sput(store, "/pier/v1/keys/k" + str(i), {"id": "k" + str(i), "key": "x"})
    evs = wait_events(ctl, 5)
    ids = [e["id"] for e in evs]

    by_name = ctl.events("?app_id=filt-a")
    assert [e["object_id"] for e in by_name] == [a["id"]]
    assert ctl.events(f"?app_id={b['id']}")[0]["object_id"] == b["id"]
    assert [e["object_type"] for e in ctl.events("?object_types=key,app")] == \
        ["key", "key", "key", "app", "app"]
    assert [e["data"]["id"] for e in ctl.events("?object_id=k1")] == ["k1"]
    assert [e["id"] for e in ctl.events("?count=2")] == ids[:2]
    assert [e["id"] for e in ctl.events(f"?before_id={ids[1]}")] == ids[2:]
    assert [e["id"] for e in ctl.events(f"?since_id={ids[3]}")] == ids[:3]
    assert [e["id"] for e in ctl.events(f"?since_id={ids[4]}&before_id={ids[0]}&count=2")] == \
        ids[1:3]
    assert ctl.events("?object_types=app_deletion") == []

    st, one = ctl.get(f"/events/{ids[0]}")
    assert st == 200 and one == evs[0]
    validate_as("event", one)
    assert "rev" not in one

    import urllib.request
    for path in ("/events/99999", "/events/abc", "/events/0", "/events?app_id=nope"):
        req = urllib.request.Request(ctl.url + path, headers={"Authorization": ctl.auth})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(path + " answered 200")
        except urllib.error.HTTPError as e:
            assert e.code == 404, path
            assert e.read() == b"" and "json" not in (e.headers.get("Content-Type") or ""), path
    for q in ("count=x", "before_id=-1", "since_id=1.5"):
        st, body = ctl.get("/events?" + q)
        assert st == 400 and body["code"] == "validation_error", (q, body)
    st, _ = ctl.get("/events", auth=False)
    assert st == 401


# ---- server-sent events ----

def test_stream_framing_live_replay_and_resume(ctl, store):
    # Headers come at once, before any event exists.
    s = SSE(ctl, "/events?object_types=app")
    assert s.status == 200 and s.header_secs < 2
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.headers.get("transfer-encoding") == "chunked"
    app = make_app(ctl, "live1")
    got = s.wait_events(1)
    assert got[0]["object_id"] == app["id"] and got[0]["object_type"] == "app"
    validate_as("event", got[0])
    assert re.fullmatch(rb"id: \d+\ndata: \{[^\n]*\}\n\n", s.body), s.body
    s.close()

    apps = [app] + [make_app(ctl, f"live{i}") for i in (2, 3, 4)]
    wait_events(ctl, 4, "?object_types=app")

    # past=true replays, oldest first, then goes on live
    p = SSE(ctl, "/events?object_types=app&past=true")
    assert [e["object_id"] for e in p.wait_events(4)] == [a["id"] for a in apps]
    five = make_app(ctl, "live5")
    assert p.wait_events(5)[4]["object_id"] == five["id"]
    ids = [e["id"] for e in p.events()]
    assert ids == sorted(ids)
    p.close()

    # count limits the replay to the newest ones, still oldest first
    c = SSE(ctl, "/events?object_types=app&past=true&count=2")
    c.read_until(lambda b: len(frames(b)) >= 2)
    c.settle()
    assert [e["object_id"] for e in c.events()] == [apps[3]["id"], five["id"]]
    c.close()

    # Last-Event-Id resumes after that id (without past)
    r = SSE(ctl, "/events?object_types=app", {"Last-Event-Id": str(ids[2])})
    assert [e["id"] for e in r.wait_events(2)] == ids[3:5]
    r.close()

    # filters apply to the live part: app_id by name
    f = SSE(ctl, "/events?app_id=live2")
    ctl.post(f"/apps/{apps[2]['id']}", {"meta": {"x": "y"}})
    ctl.post(f"/apps/{apps[1]['id']}", {"meta": {"x": "y"}})
    f.wait_events(1)
    f.settle()
    assert [e["app"] for e in f.events()] == [apps[1]["id"]]
    f.close()

    st, body = ctl.get("/events", headers={"Accept": "text/event-stream", "Last-Event-Id": "x"})
    assert st == 400 and body["code"] == "validation_error"


def test_stream_keepalive_has_no_blank_line(ctl):
    """Flynn's client decodes every blank-line-terminated block as an event:
    keep-alives must be ":\\n" alone (FLYNN-CLIENT-CONTRACT.md §3.6)."""
    s = SSE(ctl, "/events?object_types=domain_migration")
    s.read_until(lambda b: b":\n" in b, timeout=40)
    assert s.body == b":\n", s.body
    s.close()


def test_app_deletion_event(ctl, store):
    """flynn delete: subscribe, DELETE, one app_deletion event with the
    routes and releases that went with the app."""
    app = make_app(ctl, "doomed")
    aid = app["id"]
    _, rel1 = put_release(store, aid)
    _, rel2 = put_release(store, aid)
    set_app_release(store, aid, rel2["id"])
    sput(store, f"/pier/v1/formations/{aid}/{rel2['id']}",
         {"app": aid, "release": rel2["id"], "processes": {"web": 0}, "tags": {},
          "created_at": now(), "updated_at": now()})
    route = {"id": new_id(), "type": "http", "service": "doomed-web", "domain": "doomed.example",
             "app": aid, "created_at": now(), "updated_at": now()}
    sput(store, "/pier/v1/routes/" + route["id"], route)
    wait_events(ctl, 1, f"?app_id={aid}&object_types=route")

    s = SSE(ctl, "/events?app_id=doomed&object_types=app_deletion")
    st, _ = ctl.delete("/apps/doomed")
    assert st == 200
    ev = s.wait_events(1)[0]
    s.close()
    validate_as("event", ev)
    assert ev["object_type"] == "app_deletion" and ev["app"] == aid and ev["object_id"] == aid
    d = ev["data"]
    assert set(d) == {"app_deletion", "error"} and d["error"] == ""
    ad = d["app_deletion"]
    assert ad["app"] == aid and ad["deleted_resources"] == []
    assert sorted(r["id"] for r in ad["deleted_releases"]) == sorted([rel1["id"], rel2["id"]])
    assert [r["id"] for r in ad["deleted_routes"]] == [route["id"]]
    assert ad["deleted_routes"][0]["domain"] == "doomed.example"
    # the app's releases, routes and formations went with it: no events of their own
    time.sleep(1)
    after = [e for e in ctl.events(f"?since_id={ev['id'] - 1}")]
    assert [e["object_type"] for e in after] == ["app_deletion"], after


# ---- recording: many events, retention, resume, gaps ----

def test_big_revision_split_and_part_resume(start_pierd, store):
    """120 changes in one transaction are 120 events written in parts; a
    recorder that resumes in the middle of such a revision writes only the
    rest, the same events in the same order."""
    c1 = Ctl(start_pierd, store, name="ctl1")
    wait_for(c1.leading, 15, "ctl1 to lead")
    arts = [{"id": new_id(), "type": "file", "uri": f"http://b/{i}", "created_at": now()}
            for i in range(120)]
    rev = stxn(store, puts=[("/pier/v1/artifacts/" + a["id"], a) for a in arts])
    evs = wait_events(c1, 120, "?object_types=artifact")
    evs.reverse()
    assert_consecutive(evs)
    assert [e["object_id"] for e in evs] == [a["id"] for a in arts]
    head = sget(store, "/pier/v1/event-head")
    assert head["id"] == evs[-1]["id"] and "part" not in head
    stored = sget(store, "/pier/v1/events/%020d" % evs[0]["id"])
    assert stored["rev"] == rev
    c1.daemon.stop()

    # as if a recorder had stopped after 50 of them
    first = evs[0]["id"]
    for e in evs[50:]:
        sdel(store, "/pier/v1/events/%020d" % e["id"])
    sput(store, "/pier/v1/event-head", {"id": first + 49, "rev": rev, "part": 50})
    c2 = Ctl(start_pierd, store, name="ctl2")
    again = wait_events(c2, 120, "?object_types=artifact")
    again.reverse()
    assert_consecutive(again)
    assert [e["object_id"] for e in again] == [a["id"] for a in arts]
    assert again[:50] == evs[:50]
    time.sleep(1)
    assert len(c2.events("?object_types=artifact")) == 120


def test_retention_deletes_old_blocks(start_pierd, store):
    c = Ctl(start_pierd, store, env={"PIER_EVENT_RETENTION": "100"}, name="ctl")
    wait_for(c.leading, 15, "the controller to lead")
    for i in range(3):
        stxn(store, puts=[(f"/pier/v1/keys/r{i}-{j}", {"id": f"r{i}-{j}", "key": "x"})
                          for j in range(60)])
    def newest():
        e = c.events("?count=1")
        return e and e[0]["id"] == 180
    wait_for(newest, 15, "180 events")
    evs = wait_for(lambda: (lambda e: e if len(e) <= 110 else None)(c.events()), 10,
                   "old events to go")
    # the blocks of 10 ids wholly below 180 - 100 are gone: 80..180 are kept
    assert evs[-1]["id"] == 80 and evs[0]["id"] == 180, (evs[-1]["id"], evs[0]["id"])
    assert_consecutive(evs)
    assert sget(store, "/pier/v1/events/%020d" % 79) is None


def test_compacted_history_is_a_logged_gap(start_pierd, store):
    c1 = Ctl(start_pierd, store, name="ctl1")
    wait_for(c1.leading, 15, "ctl1 to lead")
    sput(store, "/pier/v1/keys/before", {"id": "before", "key": "x"})
    wait_events(c1, 1)
    c1.daemon.stop()
    sput(store, "/pier/v1/keys/lost", {"id": "lost", "key": "x"})
    _store_call(store, "/v3/kv/compaction", {"revision": str(srevision(store))})
    c2 = Ctl(start_pierd, store, name="ctl2")
    wait_for(lambda: "events lost" in c2.daemon.stderr_text(), 15, "the gap warning")
    sput(store, "/pier/v1/keys/after", {"id": "after", "key": "x"})
    evs = wait_events(c2, 2)
    assert [e["object_id"] for e in evs] == ["after", "before"]
    assert evs[0]["id"] == evs[1]["id"] + 1

    # quiet history (hosts, services) moves the head up alone once it lags
    head = sget(store, "/pier/v1/event-head")
    for i in range(1010):
        sput(store, "/pier/v1/hosts/h1", {"id": "h1", "n": i})
    wait_for(lambda: sget(store, "/pier/v1/event-head")["rev"] > head["rev"] + 1000, 15,
             "the head to catch up")
    assert sget(store, "/pier/v1/event-head")["id"] == head["id"]


# ---- two controllers: one records; a takeover loses and repeats nothing ----

def test_two_controllers_takeover(start_pierd, store):
    a = Ctl(start_pierd, store, name="ctl-a")
    wait_for(a.leading, 15, "a to lead")
    b = Ctl(start_pierd, store, name="ctl-b")
    written = []

    def change(tag):
        k = f"t-{tag}-{len(written)}"
        sput(store, "/pier/v1/keys/" + k, {"id": k, "key": "x"})
        written.append(k)

    for _ in range(10):
        change("a")
    wait_events(b, len(written))
    assert not b.leading()

    # a freezes: b takes over when a's lease runs out; a, thawed, is stale
    os.kill(a.daemon.pid, signal.SIGSTOP)
    try:
        for _ in range(5):
            change("frozen")
        wait_for(b.leading, 25, "b to lead")
        for _ in range(5):
            change("b")
        before = wait_events(b, len(written))
    finally:
        os.kill(a.daemon.pid, signal.SIGCONT)
    for _ in range(5):
        change("thawed")
    wait_events(b, len(written))
    # what a, thawed and stale, derived again was refused by the head's
    # compare: a recorded event never changes
    time.sleep(1)
    now_listed = {e["id"]: e for e in b.events()}
    assert [now_listed[e["id"]] for e in before] == before

    # b dies hard: a leads again and goes on from the head
    b.daemon.stop(signal.SIGKILL)
    for _ in range(5):
        change("killed")
    wait_for(lambda: a.daemon.stderr_text().count('msg="leading" service=controller') >= 2, 25,
             "a to lead again")
    for _ in range(5):
        change("after")
    evs = wait_events(a, len(written), timeout=20)
    time.sleep(1.5)
    evs = a.events()
    evs.reverse()
    assert_consecutive(evs)
    assert [e["object_id"] for e in evs] == written, "each change once, in order"


# ---- Flynn clients' flows and the formations stream ----

def test_deploy_wait_flow(ctl, store):
    """The deploy wait (contract §3.9): the client subscribes with past=true
    only after the deployment exists, and must still see it through."""
    app = make_app(ctl, "deployee")
    did = new_id()
    dep = {"id": did, "app": app["id"], "new_release": new_id(), "strategy": "all-at-once",
           "status": "pending", "processes": {}, "created_at": now()}
    sput(store, "/pier/v1/deployments/" + did, dep)
    wait_events(ctl, 1, f"?object_id={did}")
    s = SSE(ctl, f"/events?app_id={app['id']}&object_id={did}&object_types=deployment&past=true")
    assert s.wait_events(1)[0]["data"]["status"] == "pending"
    dep.update(status="complete", finished_at=now(), step=2)
    sput(store, "/pier/v1/deployments/" + did, dep)
    got = s.wait_events(2)
    assert got[1]["data"] == {"app": app["id"], "deployment": did,
                              "release": dep["new_release"], "status": "complete"}
    s.close()


def test_formations_stream(ctl, store):
    app = make_app(ctl, "former")
    aid = app["id"]
    art, rel = put_release(store, aid)
    _, old_rel = put_release(store, aid)
    old = {"app": aid, "release": old_rel["id"], "processes": {"web": 0}, "tags": {},
           "created_at": "2000-01-01T00:00:00.000000Z",
           "updated_at": "2000-01-01T00:00:00.000000Z"}
    sput(store, f"/pier/v1/formations/{aid}/{old_rel['id']}", old)
    form = {"app": aid, "release": rel["id"], "processes": {"web": 2}, "tags": {},
            "created_at": now(), "updated_at": now()}
    fkey = f"/pier/v1/formations/{aid}/{rel['id']}"
    sput(store, fkey, form)

    sentinel = {"updated_at": "0001-01-01T00:00:00Z"}
    s = SSE(ctl, "/formations?since=2020-01-01T01:00:00%2B01:00")
    first, mark = s.wait_events(2)
    assert mark == sentinel
    validate_as("expanded_formation", first)
    assert first["app"]["id"] == aid and first["app"]["name"] == "former"
    assert first["release"]["id"] == rel["id"] and first["processes"] == {"web": 2}
    assert [a["id"] for a in first["artifacts"]] == [art["id"]]
    assert first["updated_at"] == form["updated_at"]

    form["processes"] = {"web": 3}
    form["updated_at"] = now()
    sput(store, fkey, form)
    live = s.wait_events(3)[2]
    validate_as("expanded_formation", live)
    assert live["processes"] == {"web": 3} and live["release"]["id"] == rel["id"]
    sdel(store, fkey)
    gone = s.wait_events(4)[3]
    assert gone["processes"] == {} and gone["release"]["id"] == rel["id"]
    s.close()

    every = SSE(ctl, "/formations")
    got = every.wait_events(2)
    assert got[-1] == sentinel and [f["release"]["id"] for f in got[:-1]] == [old_rel["id"]]
    every.close()
    future = SSE(ctl, "/formations?since=2999-01-01T00:00:00Z")
    assert future.wait_events(1) == [sentinel]
    future.close()

    st, body = ctl.get("/formations?since=yesterday", headers={"Accept": "text/event-stream"})
    assert st == 400 and body["code"] == "validation_error"
    st, body = ctl.get("/formations")
    assert st == 400 and body["code"] == "validation_error"
