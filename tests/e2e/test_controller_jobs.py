"""The controller's jobs API end to end (issue 4): one-off jobs run on a real
host agent, detached and attached (Flynn's flynn-attach/0 frames), job
listing, kill, and the app log gathered from the agents.

Each test starts a `pierd store`, a `pierd host` agent (real crun containers
on the host's binds, as root) and a `pierd controller`; the app and release
records are written straight into the store in the shapes of
docs/controller.md, so only the jobs and log routes are under test here.
Every wait is a poll with a deadline."""

import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import pytest

from controller_util import KEY, Controller
from test_host import job_record, kv_put, kv_range

JOBS = "/pier/v1/jobs/"
ENDED = ("down", "crashed", "failed")
SCHEMA = Path("/work/shared/flynn-schema")
# A job that runs until stopped and ends at once on SIGTERM (a plain
# `sleep` as PID 1 ignores it and waits out the stop grace).
LONG = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]


def validate_as(resource, obj):
    """Validates obj against Flynn's schema controller/<resource>.json."""
    store = {}
    for path in SCHEMA.rglob("*.json"):
        if "api-examples" not in path.parts:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and "id" in doc:
                store[doc["id"].split("#")[0]] = doc
    schema = store[f"https://flynn.io/schema/controller/{resource}"]
    resolver = jsonschema.RefResolver(base_uri=schema["id"], referrer=schema, store=store)
    jsonschema.Draft4Validator(schema, resolver=resolver).validate(obj)


# ---- the cluster ----

def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def make_app(store, name):
    """An app and a release (no artifacts: jobs run on the agent's default
    root) in the store; returns (app id, release id)."""
    app_id, rel_id = str(uuid.uuid4()), str(uuid.uuid4())
    kv_put(store, f"/pier/v1/apps/{app_id}",
           {"id": app_id, "name": name, "meta": {}, "strategy": "all-at-once",
            "deploy_timeout": 30, "release": rel_id, "created_at": now(), "updated_at": now()})
    kv_put(store, f"/pier/v1/app-names/{name}", {"id": app_id})
    kv_put(store, f"/pier/v1/releases/{rel_id}",
           {"id": rel_id, "app_id": app_id, "artifacts": [], "env": {"REL_VAR": "from-release"},
            "meta": {}, "processes": {}, "created_at": now()})
    return app_id, rel_id


class Cluster:
    def __init__(self, start_pierd, start_host):
        self.store = start_pierd("store", name="store").url
        self.agent = start_host(self.store, name="host", args=["--key", KEY])
        self.ctl = Controller(start_pierd, self.store)
        self.app, self.rel = make_app(self.store, "demo")

    def job(self, job_id):
        return job_record(self.store, job_id)

    def wait_job(self, job_id, states, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.job(job_id)
            if rec and rec.get("state") in states:
                return rec
            time.sleep(0.05)
        pytest.fail(f"job {job_id} never reached {states}: {self.job(job_id)}\n"
                    f"agent:\n{self.agent.stderr_tail()}\n"
                    f"controller:\n{self.ctl.daemon.stderr_tail()}")

    def run(self, args, app="demo", **extra):
        body = {"release": self.rel, "args": args, **extra}
        status, job = self.ctl.post(f"/apps/{app}/jobs", body)
        assert status == 200, (status, job, self.ctl.daemon.stderr_tail())
        return job

    def log(self, query="", headers=None):
        req = urllib.request.Request(f"{self.ctl.url}/apps/demo/log{query}",
                                     headers={"Authorization": self.ctl.auth, **(headers or {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            return resp.headers.get("Content-Type"), resp.read().decode()

    def log_lines(self, query=""):
        ctype, text = self.log(query)
        assert ctype == "text/plain", ctype
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def store_jobs(self):
        return [k for k, _, _ in kv_range(self.store, JOBS)]


@pytest.fixture
def cluster(start_pierd, start_host):
    return Cluster(start_pierd, start_host)


# ---- a flynn-attach/0 client (FLYNN-CLIENT-CONTRACT.md section 3.7) ----

class Attached:
    """POST /apps/:a/jobs with Upgrade: flynn-attach/0, then frames."""

    def __init__(self, ctl, app, body, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", ctl.daemon.port), timeout=timeout)
        data = json.dumps(body).encode()
        self.sock.sendall(
            f"POST /apps/{app}/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {ctl.auth}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nUpgrade: flynn-attach/0\r\nConnection: upgrade\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the answer: {self.buf!r}"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode(errors="replace")
        self.status = int(self.head.split(" ")[1])
        self.out = {1: b"", 2: b"", 3: b""}
        self.closed = set()
        self.errors = []
        self.exit = None

    def check_upgraded(self):
        assert self.status == 101, f"attach answered {self.head}\n{self.buf[:500]!r}"
        lower = self.head.lower()
        assert "upgrade: flynn-attach/0" in lower and "connection: upgrade" in lower, self.head

    def stdin(self, data):
        self.sock.sendall(b"\x03\x00" + struct.pack(">I", len(data)) + data)

    def signal(self, sig):
        self.sock.sendall(b"\x04" + struct.pack(">I", sig))

    def resize(self, rows, cols):
        self.sock.sendall(b"\x06" + struct.pack(">HH", rows, cols))

    def _frame(self):
        """Parses one frame from buf; False when it holds no whole frame."""
        b = self.buf
        if not b:
            return False
        t = b[0]
        if t == 0x03:
            if len(b) < 6 or len(b) < 6 + struct.unpack(">I", b[2:6])[0]:
                return False
            n = struct.unpack(">I", b[2:6])[0]
            if n == 0:
                self.closed.add(b[1])
            self.out[b[1]] += b[6:6 + n]
            self.buf = b[6 + n:]
        elif t == 0x02:
            if len(b) < 5 or len(b) < 5 + struct.unpack(">I", b[1:5])[0]:
                return False
            n = struct.unpack(">I", b[1:5])[0]
            self.errors.append(b[5:5 + n].decode(errors="replace"))
            self.buf = b[5 + n:]
        elif t == 0x05:
            if len(b) < 5:
                return False
            self.exit = struct.unpack(">I", b[1:5])[0]
            self.buf = b[5:]
        else:
            pytest.fail(f"unknown frame type {t:#x}: {b[:32]!r}")
        return True

    def read(self, until, timeout=30):
        """Reads frames until until(self) is true or the stream ends."""
        deadline = time.monotonic() + timeout
        while not until(self):
            while self._frame():
                pass
            if until(self):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"attach: timed out; out={self.out} errors={self.errors} "
                            f"exit={self.exit}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                while self._frame():
                    pass
                break
            self.buf += chunk
        return self

    def wait_exit(self, timeout=30):
        self.read(lambda s: s.exit is not None, timeout)
        assert self.exit is not None, f"no exit frame; out={self.out} errors={self.errors}"
        # The exit status is the last frame: the server closes after it.
        self.sock.settimeout(5)
        assert self.sock.recv(1) == b""
        return self.exit

    def close(self):
        self.sock.close()


def attach(cluster, args, **extra):
    a = Attached(cluster.ctl, "demo", {"release": cluster.rel, "args": args, **extra})
    a.check_upgraded()
    return a


# ---- detached runs, listing, the log ----

def test_run_detached_is_listed_and_logged(cluster):
    job = cluster.run(["sh", "-c", "echo hi; echo oops >&2; echo $REL_VAR $ONE"],
                      env={"ONE": "one-off"}, release_env=True, meta={"who": "test"})
    validate_as("job", job)
    assert job["id"].startswith(cluster.agent.id + "-")
    assert job["id"] == f"{job['host_id']}-{job['uuid']}"
    assert job["release"] == cluster.rel and job["app"] == cluster.app
    assert job["args"][0] == "sh" and job["meta"] == {"who": "test"}

    rec = cluster.wait_job(job["id"], ENDED)
    assert rec["state"] == "down" and rec["exit_status"] == 0, rec
    assert rec["oneoff"] is True and rec["ports"] == [], rec

    # Listed (by name and by id), in Flynn's Job shape.
    for ref in ("demo", cluster.app):
        status, jobs = cluster.ctl.get(f"/apps/{ref}/jobs")
        assert status == 200
        assert [j["id"] for j in jobs] == [job["id"]]
        validate_as("job", jobs[0])
        assert jobs[0]["state"] == "down" and jobs[0]["exit_status"] == 0
    status, got = cluster.ctl.get(f"/apps/demo/jobs/{job['id']}")
    assert status == 200 and got["id"] == job["id"] and got["state"] == "down"
    validate_as("job", got)

    # Its output is in the app log.
    lines = cluster.log_lines("?lines=10")
    msgs = [(m["msg"], m["stream"]) for m in lines]
    assert ("hi", "stdout") in msgs and ("oops", "stderr") in msgs, lines
    assert ("from-release one-off", "stdout") in msgs, lines
    for m in lines:
        assert m["job_id"] == job["id"] and m["host_id"] == cluster.agent.id
        assert m["source"] == "app" and m["timestamp"].endswith("Z")
    # Flynn's stream_types filter.
    only_err = cluster.log_lines("?stream_types=stderr")
    assert [m["msg"] for m in only_err] == ["oops"]


def test_release_env_only_when_asked(cluster):
    job = cluster.run(["sh", "-c", "echo rel=${REL_VAR:-none}"])
    cluster.wait_job(job["id"], ENDED)
    assert [m["msg"] for m in cluster.log_lines(f"?job_id={job['id']}")] == ["rel=none"]


def test_release_of_another_app(cluster):
    """`pg psql` runs the postgres app's release in the user's app."""
    _, other_rel = make_app(cluster.store, "other")
    status, job = cluster.ctl.post("/apps/demo/jobs",
                                   {"release": other_rel, "args": ["echo", "cross"]})
    assert status == 200, job
    assert job["app"] == cluster.app and job["release"] == other_rel
    rec = cluster.wait_job(job["id"], ENDED)
    assert rec["exit_status"] == 0 and rec["app"] == cluster.app
    status, jobs = cluster.ctl.get("/apps/other/jobs")
    assert status == 200 and jobs == []


def test_legacy_cmd_and_flynn_example(cluster):
    """Flynn's job_run example: only "cmd" and "env"; the answer echoes cmd."""
    status, job = cluster.ctl.post("/apps/demo/jobs", {
        "release": cluster.rel, "cmd": ["sh", "-c", "echo $BODY"], "env": {"BODY": "Hello!"}})
    assert status == 200, job
    assert job["cmd"] == ["sh", "-c", "echo $BODY"]
    validate_as("job", job)
    cluster.wait_job(job["id"], ENDED)
    assert [m["msg"] for m in cluster.log_lines(f"?job_id={job['id']}")] == ["Hello!"]


def test_artifacts_of_the_new_job(cluster, tmp_path):
    """NewJob's "artifacts" (or older "artifact") replace the release's: here
    a slug unpacked into /app."""
    import tarfile
    src = tmp_path / "slug"
    src.mkdir()
    (src / "hello.txt").write_text("from the slug\n")
    slug = tmp_path / "slug.tgz"
    with tarfile.open(slug, "w:gz") as tar:
        tar.add(src / "hello.txt", arcname="./hello.txt")
    slug.chmod(0o644)
    art = str(uuid.uuid4())
    kv_put(cluster.store, f"/pier/v1/artifacts/{art}",
           {"id": art, "type": "file", "uri": f"file://{slug}", "meta": {}, "created_at": now()})
    # A docker artifact (Flynn's image) is left out: pier runs no images.
    docker = str(uuid.uuid4())
    kv_put(cluster.store, f"/pier/v1/artifacts/{docker}",
           {"id": docker, "type": "docker", "uri": "https://example.org/image?id=1", "meta": {},
            "created_at": now()})
    first = cluster.run(["cat", "/app/hello.txt"], artifacts=[docker, art])
    second = cluster.run(["cat", "/app/hello.txt"], artifact=art)
    for job in (first, second):
        rec = cluster.wait_job(job["id"], ENDED)
        assert rec["state"] == "down", rec
        assert rec["artifact"]["slug"] == f"file://{slug}", rec
        assert [m["msg"] for m in cluster.log_lines(f"?job_id={job['id']}")] == ["from the slug"]


def test_bad_input_changes_nothing(cluster):
    before = cluster.store_jobs()
    bad = [
        ({"release": str(uuid.uuid4()), "args": ["true"]}, "release"),
        # Without a release (pier's extension) there is no release env to add.
        ({"args": ["true"], "release_env": True}, "release_env"),
        ({"release": "not-an-id", "args": ["true"]}, "release"),
        ({"release": cluster.rel}, "args"),
        ({"release": cluster.rel, "args": "true"}, "args"),
        ({"release": cluster.rel, "args": ["true"], "env": {"A": 1}}, "env"),
        ({"release": cluster.rel, "args": ["true"], "tty": "yes"}, "tty"),
        # A job the host agent would refuse is refused before it is placed.
        ({"release": cluster.rel, "args": ["true"], "env": {"a.b": "1"}}, "env"),
        ({"release": cluster.rel, "args": ["true"], "artifacts": [str(uuid.uuid4())]},
         "artifact"),
    ]
    for body, word in bad:
        status, err = cluster.ctl.post("/apps/demo/jobs", body)
        assert 400 <= status < 500, (body, status, err)
        assert isinstance(err, dict) and set(err) >= {"code", "message"}, (body, err)
        assert word in err["message"], (body, err)
    status, err = cluster.ctl.post("/apps/demo/jobs", b"{not json")
    assert status == 400 and err["code"] in ("validation_error", "syntax_error"), err
    # An unknown app is a bare 404; no key is a 401.
    status, err = cluster.ctl.post("/apps/nope/jobs", {"release": cluster.rel, "args": ["true"]})
    assert status == 404 and err is None
    status, _ = cluster.ctl.post("/apps/demo/jobs", {"release": cluster.rel, "args": ["true"]},
                                 auth=False)
    assert status == 401
    for path in ("/apps/nope/jobs", "/apps/nope/log", f"/apps/demo/jobs/{cluster.agent.id}-x"):
        status, body = cluster.ctl.get(path)
        assert status == 404 and body is None, (path, status, body)
    status, err = cluster.ctl.get("/apps/demo/log?lines=many")
    assert status == 400 and "lines" in err["message"]
    assert cluster.store_jobs() == before


# ---- one-off jobs without a release (pier's extension) ----

def test_releaseless_job_runs_detached(cluster):
    """A NewJob without "release" runs on the host's default stack with only
    its own env and the platform's (the git receiver builds an app that has
    no release yet this way)."""
    for body in ({}, {"release": None}, {"release": ""}):
        status, job = cluster.ctl.post("/apps/demo/jobs", {
            **body, "args": ["sh", "-c", "echo own=$OWN rel=${REL_VAR:-none} "
                                         "app=$APP_NAME id=$FLYNN_APP_ID "
                                         "relid=${FLYNN_RELEASE_ID:-none} dyno=${DYNO%%.*}"],
            "env": {"OWN": "mine"}, "meta": {"pier.build": "b1"}})
        assert status == 200, (body, status, job)
        validate_as("job", job)
        assert job["app"] == cluster.app and "release" not in job, job
        assert job["meta"] == {"pier.build": "b1"}
        rec = cluster.wait_job(job["id"], ENDED)
        assert rec["state"] == "down" and rec["exit_status"] == 0, rec
        assert rec["oneoff"] is True and "release" not in rec and "artifact" not in rec, rec
        assert [m["msg"] for m in cluster.log_lines(f"?job_id={job['id']}")] == [
            f"own=mine rel=none app=demo id={cluster.app} relid=none dyno=run"]
    status, jobs = cluster.ctl.get("/apps/demo/jobs")
    assert status == 200 and len(jobs) == 3 and all("release" not in j for j in jobs), jobs


def test_releaseless_job_attached(cluster):
    a = Attached(cluster.ctl, "demo", {"args": ["sh", "-c", "cat; echo err >&2; exit 6"],
                                       "resources": {"memory": {"limit": 268435456}}})
    a.check_upgraded()
    a.stdin(b"piped in\n")
    a.stdin(b"")
    assert a.wait_exit() == 6
    assert a.out[1] == b"piped in\n" and a.out[2] == b"err\n", a.out
    rec = next(cluster.job(k[len(JOBS):]) for k in cluster.store_jobs())
    assert "release" not in rec and rec["stdin"] is True, rec
    assert rec["resources"]["memory"]["limit"] == 268435456, rec
    # A release-less job of an unknown app is still a bare 404.
    status, body = cluster.ctl.post("/apps/nope/jobs", {"args": ["true"]})
    assert status == 404 and body is None


# ---- kill and update ----

def test_delete_stops_the_job(cluster):
    job = cluster.run(LONG)
    cluster.wait_job(job["id"], ("up",))
    # Not another app's job.
    make_app(cluster.store, "other")
    status, body = cluster.ctl.delete(f"/apps/other/jobs/{job['id']}")
    assert status == 404 and body is None
    assert cluster.job(job["id"])["state"] == "up"

    status, body = cluster.ctl.delete(f"/apps/demo/jobs/{job['id']}")
    assert status == 200, body
    rec = cluster.wait_job(job["id"], ENDED)
    assert rec["desired_state"] == "down" and rec["state"] == "down", rec
    # Again: nothing more to do, still 200.
    assert cluster.ctl.delete(f"/apps/demo/jobs/{job['id']}")[0] == 200
    status, body = cluster.ctl.delete(f"/apps/demo/jobs/{cluster.agent.id}-nosuchjob")
    assert status == 404 and body is None


def test_put_job_update(cluster):
    job = cluster.run(LONG)
    cluster.wait_job(job["id"], ("up",))
    path = f"/apps/demo/jobs/{job['id']}"
    status, err = cluster.ctl.put(path, {"id": job["id"], "state": "crashed"})
    assert status == 400 and "down" in err["message"], err
    status, err = cluster.ctl.put(path, {"id": "someone-else", "state": "down"})
    assert status == 400, err
    assert cluster.job(job["id"]).get("desired_state", "up") == "up"
    # Flynn's job_update example: state down, which stops it.
    status, got = cluster.ctl.put(path, {"id": job["id"], "app": cluster.app,
                                         "release": cluster.rel, "state": "down"})
    assert status == 200 and got["id"] == job["id"], got
    validate_as("job", got)
    cluster.wait_job(job["id"], ENDED)


# ---- attached runs ----

def test_attached_exit_status(cluster):
    a = attach(cluster, ["sh", "-c", "exit 3"], disable_log=True)
    assert a.wait_exit() == 3
    assert a.errors == []
    a = attach(cluster, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert a.wait_exit() == 7
    assert a.out[1] == b"out\n" and a.out[2] == b"err\n", a.out
    assert {1, 2} <= a.closed


def test_attached_stdin_round_trip(cluster):
    a = attach(cluster, ["cat"])
    a.stdin(b"hello over attach\n")
    a.read(lambda s: b"hello over attach\n" in s.out[1])
    a.stdin(b"second")
    a.stdin(b"")  # stdin EOF: cat ends
    assert a.wait_exit() == 0
    assert a.out[1] == b"hello over attach\nsecond", a.out


def test_attached_stdin_sent_before_the_job_runs(cluster):
    """Stdin that arrives with the request is kept until the job runs."""
    a = Attached(cluster.ctl, "demo", {"release": cluster.rel, "args": ["cat"]})
    a.stdin(b"early\n")
    a.stdin(b"")
    a.check_upgraded()
    assert a.wait_exit() == 0
    assert a.out[1] == b"early\n", a.out


def test_tty_run_is_interactive(cluster):
    a = attach(cluster, ["sh"], tty=True, tty_columns=100, tty_lines=30,
               env={"TERM": "dumb", "PS1": "$ "})
    a.resize(40, 120)
    a.stdin(b"stty size; echo hel''lo; exit 5\n")
    assert a.wait_exit() == 5
    out = a.out[1].replace(b"\r\n", b"\n")
    assert b"\nhello\n" in out, out
    assert b"40 120" in out, out
    assert a.out[2] == b""  # a terminal has one stream


def test_signal_frame_reaches_the_job(cluster):
    a = attach(cluster, ["sh", "-c", "trap 'echo got-int; exit 4' INT; echo ready; "
                                     "while true; do sleep 0.1; done"])
    a.read(lambda s: b"ready" in s.out[1])
    a.signal(2)
    assert a.wait_exit() == 4
    assert b"got-int" in a.out[1]


def test_failed_start_is_an_error_frame(cluster):
    a = attach(cluster, ["/no/such/program"])
    assert a.wait_exit() == 1
    assert any("/no/such/program" in e for e in a.errors), a.errors


def test_client_leaving_stops_the_job(cluster):
    a = attach(cluster, LONG)
    deadline = time.monotonic() + 30
    job_id = None
    while not job_id and time.monotonic() < deadline:
        ids = [k[len(JOBS):] for k in cluster.store_jobs()]
        job_id = next((i for i in ids if cluster.job(i).get("state") == "up"), None)
        time.sleep(0.05)
    assert job_id, "the attached job never came up"
    a.close()
    rec = cluster.wait_job(job_id, ENDED)
    assert rec["desired_state"] == "down", rec


def test_disable_log_keeps_attached_output_out_of_the_app_log(cluster):
    a = attach(cluster, ["echo", "secret-output"], disable_log=True)
    assert a.wait_exit() == 0
    assert a.out[1] == b"secret-output\n"
    visible = cluster.run(["echo", "public-output"])
    cluster.wait_job(visible["id"], ENDED)
    msgs = [m["msg"] for m in cluster.log_lines()]
    assert "public-output" in msgs and "secret-output" not in msgs, msgs


# ---- the log ----

def put_typed_job(cluster, type_, script):
    """A job of a process type, written as the service scheduler does."""
    job_id = f"{cluster.agent.id}-{uuid.uuid4()}"
    kv_put(cluster.store, JOBS + job_id, {
        "id": job_id, "host_id": cluster.agent.id, "app": cluster.app, "release": cluster.rel,
        "type": type_, "args": ["sh", "-c", script], "ports": [], "created_at": now()})
    return job_id


def test_log_filters(cluster):
    web = put_typed_job(cluster, "web", "echo web-1; echo web-2; echo web-3")
    cluster.wait_job(web, ENDED)
    time.sleep(0.05)
    run = cluster.run(["sh", "-c", "echo run-1; echo run-2"])
    cluster.wait_job(run["id"], ENDED)
    # The list: newest first, as Flynn's.
    status, jobs = cluster.ctl.get("/apps/demo/jobs")
    assert status == 200 and [j["id"] for j in jobs] == [run["id"], web], jobs
    assert jobs[1]["type"] == "web" and "type" not in jobs[0], jobs

    lines = cluster.log_lines()
    assert [m["msg"] for m in lines] == ["web-1", "web-2", "web-3", "run-1", "run-2"], lines
    assert [m["timestamp"] for m in lines] == sorted(m["timestamp"] for m in lines)
    assert all(m.get("process_type") == "web" for m in lines[:3])
    # The last N over all jobs, merged by time.
    assert [m["msg"] for m in cluster.log_lines("?lines=3")] == ["web-3", "run-1", "run-2"]
    assert cluster.log_lines("?lines=0") == []
    assert [m["msg"] for m in cluster.log_lines("?process_type=web&lines=2")] == ["web-2",
                                                                                  "web-3"]
    assert [m["msg"] for m in cluster.log_lines(f"?job_id={run['id']}")] == ["run-1", "run-2"]
    assert [m["msg"] for m in cluster.log_lines(f"?job_id={run['uuid']}")] == ["run-1", "run-2"]
    assert cluster.log_lines("?process_type=worker") == []
    # Flynn's event-stream form.
    ctype, text = cluster.log("?lines=2", headers={"Accept": "text/event-stream"})
    assert ctype.startswith("text/event-stream"), ctype
    events = [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: ")]
    assert [e["event"] for e in events] == ["message", "message", "eof"], events
    assert [e["data"]["msg"] for e in events[:2]] == ["run-1", "run-2"]


def test_log_skips_a_job_whose_host_is_gone(cluster):
    job = cluster.run(["echo", "still-here"])
    cluster.wait_job(job["id"], ENDED)
    # A job on a host that is not in the cluster (any more).
    kv_put(cluster.store, JOBS + "gone-" + str(uuid.uuid4()), {
        "id": "gone-x", "host_id": "gone", "app": cluster.app, "release": cluster.rel,
        "state": "up", "args": ["true"], "created_at": now()})
    assert [m["msg"] for m in cluster.log_lines()] == ["still-here"]


class Follower:
    """GET /apps/demo/log?follow=true read line by line on a thread."""

    def __init__(self, cluster, query):
        req = urllib.request.Request(f"{cluster.ctl.url}/apps/demo/log?follow=true{query}",
                                     headers={"Authorization": cluster.ctl.auth})
        self.resp = urllib.request.urlopen(req, timeout=60)
        assert self.resp.status == 200
        assert self.resp.headers.get("Content-Type") == "text/plain"
        self.msgs = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for line in self.resp:
                if line.strip():
                    with self.lock:
                        self.msgs.append(json.loads(line))
        except (OSError, ValueError):
            pass

    def wait_for(self, msg, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(m["msg"] == msg for m in self.msgs):
                    return list(self.msgs)
            time.sleep(0.05)
        pytest.fail(f"follow never saw {msg!r}: {self.msgs}")

    def close(self):
        # The reader thread holds the response: end its read first.
        try:
            self.resp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)
        self.resp.close()


def test_log_follow(cluster):
    old = cluster.run(["echo", "before-follow"])
    cluster.wait_job(old["id"], ENDED)
    live = cluster.run(["sh", "-c", "trap 'exit 0' TERM; echo live-1; while true; do sleep 0.1; done"])
    cluster.wait_job(live["id"], ("up",))
    f = Follower(cluster, "&lines=5")
    try:
        f.wait_for("before-follow")
        f.wait_for("live-1")
        # A job that starts while following is picked up.
        new = cluster.run(["sh", "-c", "sleep 0.3; echo new-job-line"])
        msgs = f.wait_for("new-job-line")
        assert [m["job_id"] for m in msgs if m["msg"] == "new-job-line"] == [new["id"]]
        # Filters hold while following.
        g = Follower(cluster, "&process_type=web&lines=0")
        web = put_typed_job(cluster, "web", "sleep 0.3; echo typed-line")
        cluster.run(["echo", "untyped-line"])
        g.wait_for("typed-line")
        time.sleep(0.5)
        assert [m["msg"] for m in g.msgs] == ["typed-line"], g.msgs
        assert all(m["job_id"] == web for m in g.msgs)
        g.close()
    finally:
        f.close()
    cluster.ctl.delete(f"/apps/demo/jobs/{live['id']}")
    cluster.wait_job(live["id"], ENDED)
