"""Slugs named by discovery, as Flynn's artifacts name them: an artifact's
uri http://blobstore.discoverd/<path> is resolved by the host agent at each
fetch to the blobstore registered in discovery now, so a blobstore that
restarts on another port (a system job restarted after `pier down` / `pier
up`, or a crash) does not strand the apps whose slugs it keeps. The git
receiver records that name when it found the blobstore in discovery.

Real daemons: store, host agent (crun, the host's binds), blobstore; the
push test adds scheduler, controller and receiver (test_git_hook.Cluster).
"""

import base64
import json
import time
import urllib.request

import pytest

from test_git_hook import KEY, cluster, get, lines_in_order  # noqa: F401 (cluster: the fixture)
from test_host import log_msgs, put_job, wait_for, wait_state
from test_host_slug import SMALL, make_slug

NAMED = "http://blobstore.discoverd"
NONE_REGISTERED = "no instance of service blobstore in discovery; is the blobstore running?"


def put_blob(url, data):
    auth = base64.b64encode(f"pier:{KEY}".encode()).decode()
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def registered(store, service):
    """The addresses discovery has for service (straight from the store)."""
    prefix = f"/pier/v1/services/{service}/".encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    body = json.dumps({"key": base64.b64encode(prefix).decode(),
                       "range_end": base64.b64encode(end).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{store}/v3/kv/range", data=body),
                                timeout=10) as r:
        kvs = json.load(r).get("kvs") or []
    return [json.loads(base64.b64decode(kv["value"])).get("addr") for kv in kvs]


def start_blobstore(start_pierd, store, blobs, name):
    """A blobstore, once discovery has it: it registers just after it
    starts answering, and a job started in between would find none."""
    b = start_pierd("blobstore", name=name,
                    args=["--dir", blobs, "--key", KEY, "--store", store])
    wait_for(lambda: any(a and a.endswith(f":{b.port}") for a in registered(store, "blobstore")),
             10, f"{name} in discovery")
    return b


def run_slug(agent, name, url, sha):
    """A job running the slug at url; returns its record once it ended."""
    job_id = put_job(agent, name, ["/app/bin/run"], resources=SMALL,
                     artifact={"slug": url, "slug_sha256": sha})
    return job_id, wait_state(agent, job_id, ("down", "failed", "crashed"), timeout=60)


def test_a_slug_named_by_discovery_follows_the_blobstore(start_pierd, pier_store, start_host,
                                                         tmp_path):
    slug, sha = make_slug(tmp_path)
    agent = start_host(pier_store)
    url = f"{NAMED}/slugs/x.tgz"

    # No blobstore registered yet: the job fails, naming the service.
    job_id, rec = run_slug(agent, "none", url, sha)
    assert rec["state"] == "failed", rec
    assert NONE_REGISTERED in rec.get("host_error", ""), rec
    assert url in rec["host_error"], rec
    assert job_id not in agent.crun_list()

    blobs = tmp_path / "blobs"
    first = start_blobstore(start_pierd, pier_store, blobs, "blobstore-1")
    put_blob(f"{first.url}/slugs/x.tgz", slug.read_bytes())
    # The name resolves to the registered blobstore; a port after the name
    # is ignored.
    for name, u in (("first", url), ("port", f"http://blobstore.discoverd:1600/slugs/x.tgz"),
                    ("case", "http://BlobStore.Discoverd/slugs/x.tgz")):
        job_id, rec = run_slug(agent, name, u, sha)
        assert rec["state"] == "down" and rec.get("exit_status") == 0, rec
        assert "slug says hello" in log_msgs(agent, job_id)

    # The blobstore restarts on another port, keeping its blobs: the same
    # record still fetches, from where it is now.
    assert first.stop() == 0
    second = start_blobstore(start_pierd, pier_store, blobs, "blobstore-2")
    assert second.port != first.port
    job_id, rec = run_slug(agent, "second", url, sha)
    assert rec["state"] == "down" and rec.get("exit_status") == 0, rec
    assert "slug says hello" in log_msgs(agent, job_id)
    # (the old absolute URL is what no longer works)
    job_id, rec = run_slug(agent, "stale", f"{first.url}/slugs/x.tgz", sha)
    assert rec["state"] == "failed" and "bad artifact" in rec.get("host_error", ""), rec
    # other URLs are fetched as they are
    job_id, rec = run_slug(agent, "plain", f"{second.url}/slugs/x.tgz", sha)
    assert rec["state"] == "down" and rec.get("exit_status") == 0, rec

    # A name that is no service name, and a blob the blobstore lacks.
    job_id, rec = run_slug(agent, "badname", "http://-x.discoverd/slugs/x.tgz", sha)
    assert rec["state"] == "failed" and "service name" in rec.get("host_error", ""), rec
    job_id, rec = run_slug(agent, "missing", f"{NAMED}/slugs/nothing.tgz", sha)
    assert rec["state"] == "failed" and second.url in rec.get("host_error", ""), rec

    # Gone again (deregistered on SIGTERM): failed, naming the service.
    assert second.stop() == 0
    job_id, rec = run_slug(agent, "gone", url, sha)
    assert rec["state"] == "failed" and NONE_REGISTERED in rec.get("host_error", ""), rec



def web_jobs_up(c, app, rel):
    return [j for j in c.jobs(app, rel, "web")
            if j.get("state") == "up" and j.get("desired_state", "up") == "up"]


def answers(url):
    try:
        return get(url, timeout=2)
    except OSError:
        return None


def test_a_push_records_the_blobstore_by_name(cluster):
    """A receiver without --blobstore records the slug as
    http://blobstore.discoverd/...; after the blobstore moves, the app's
    next job still starts (the scheduler's restarts retry while none is
    registered); a receiver given --blobstore keeps the absolute URL."""
    c = cluster
    blobs = c.tmp / "blobs-found"
    blob = start_blobstore(c.start_pierd, c.store, blobs, "blobstore-found")
    gr = c.start_pierd("gitreceive", name="gitreceive-found",
                       args=["--dir", c.tmp / "gitreceive-found", "--key", KEY, "--ssh", "off",
                             "--store", c.store])
    app = c.create_app("named", env={"BUILDPACK_URL": c.bp_url})
    src = c.repo("src", {"hello.txt": "named\n"})
    r = c.push(src, "named", gr=gr)
    assert r.returncode == 0, r.stderr
    lines_in_order(r.remote, f"       Blobstore: {blob.url} (from discovery)",
                   "=====> named deployed")
    rel = c.release("named")
    status, art = c.ctl.get(f"/artifacts/{rel['artifacts'][0]}")
    assert status == 200
    assert art["uri"] == f"{NAMED}/slugs/{app['id']}/{rel['meta']['build']}.tgz", art
    assert get(c.web_url(app, rel["id"]) + "/hello.txt") == "named\n"

    # The blobstore goes away and the web job is stopped: its replacement
    # fails, naming the service, and is retried.
    assert blob.stop() == 0
    (old,) = web_jobs_up(c, app, rel["id"])
    status, _ = c.ctl.delete(f"/apps/named/jobs/{old['id']}")
    assert status == 200

    def failed_naming_it():
        return [j for j in c.jobs(app, rel["id"], "web")
                if NONE_REGISTERED in (j.get("host_error") or "")]
    wait_for(failed_naming_it, 30, "a web job failed for want of the blobstore")

    # It comes back on another port: a restart fetches the slug from there.
    moved = start_blobstore(c.start_pierd, c.store, blobs, "blobstore-moved")
    assert moved.port != blob.port
    wait_for(lambda: web_jobs_up(c, app, rel["id"]), 60, "the web job up again")
    wait_for(lambda: answers(c.web_url(app, rel["id"]) + "/hello.txt"), 20,
             "the web job to answer")
    assert get(c.web_url(app, rel["id"]) + "/hello.txt") == "named\n"

    # Given --blobstore (and no blobstore in discovery), the receiver
    # records the absolute URL it was given, as before.
    assert moved.stop() == 0
    c.create_app("given", env={"BUILDPACK_URL": c.bp_url})
    r = c.push(src, "given")
    assert r.returncode == 0, r.stderr
    rel = c.release("given")
    status, art = c.ctl.get(f"/artifacts/{rel['artifacts'][0]}")
    assert art["uri"].startswith(f"{c.blob.url}/slugs/"), art
