"""`pier up --store URL,URL,URL`: a cluster on an external etcd.

The test starts a three-member etcd 3.4 cluster (loopback ports, temp
dirs, stopped by PID whatever happens), then `pier up --store` with its
three client URLs: no `pierd store` is started, the host agent and the
bootstrap use those endpoints, cluster.json records them. The same smoke
as with the embedded store (cluster_util.smoke: system apps healthy, a
user app through the router), then one etcd member is killed and the API
still answers, reads and writes. `pier down` leaves etcd running.
"""

import json
import os
import signal
import time

import pytest

from conftest import Daemon, free_port, http_status
from cluster_util import PierUp, Pred, check_https_config, ok, show, smoke, until


def start_etcd_cluster(root, n=3):
    """n etcd members on loopback, each its own temp dir; returns them with
    .url set, once every one says it is healthy."""
    members = []
    for i in range(n):
        client, peer = free_port(), free_port()
        members.append((f"e{i}", client, peer))
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in members)
    out = []
    try:
        for name, client, peer in members:
            url = f"http://127.0.0.1:{client}"
            d = Daemon(name, [
                "/usr/bin/etcd", "--name", name, "--data-dir", root / name / "data",
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"pier-test-{os.getpid()}",
                "--heartbeat-interval=20", "--election-timeout=200",
                "--experimental-watch-progress-notify-interval=5s",
            ], root / name)
            d.url = url
            out.append(d.start(lambda: True))  # healthy only once a quorum is up
        until(lambda: all(http_status(d.url + "/health") == 200 for d in out),
              "the three etcd members healthy", 30)
        return out
    except BaseException:
        for d in out:
            d.stop(signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def cluster(pier_build, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("pier up starts a host agent, which runs as root", pytrace=False)
    root = tmp_path_factory.mktemp("etcd")
    etcd = start_etcd_cluster(root / "etcd")
    c = None
    try:
        c = PierUp(pier_build, root / "pier", name="e1", domain="e1.localhost",
                   store=",".join(d.url for d in etcd))
        c.etcd = etcd
        c.first_up = c.up()
        yield c
    finally:
        if c:
            c.cleanup()
        for d in etcd:
            d.stop()
        if c:
            found = c.sanitizer_findings()
            if found:
                pytest.fail("sanitizer reports:\n" + "\n\n".join(f"== {who}\n{text}"
                                                                 for who, text in found),
                            pytrace=False)


def test_up_on_external_etcd(cluster):
    c = cluster
    p = ok(c, c.first_up)
    assert not (c.state / "store.pid").exists() and not (c.state / "store").exists(), show(p)
    assert not any(a[1:2] == ["store"] for a in c.live_processes().values()), c.live_processes()
    cj = c.cluster_json()
    assert cj["store"] == {"urls": c.external_store, "external": True}, cj
    # the records are in etcd
    assert c.store_range("/pier/v1/hosts/"), "no host record in etcd"
    smoke(c)
    check_https_config(c)


def test_api_survives_losing_an_etcd_member(cluster):
    c = cluster
    victim = c.etcd[0]  # the first endpoint: where every client starts
    victim.stop(signal.SIGKILL)
    t0 = time.monotonic()

    def api_answers():
        p = c.pier("apps", timeout=30)
        return p if p.returncode == 0 else Pred(show(p))
    until(api_answers, "the API with one etcd member down", 30, every=0.5)
    st, e = c.ctl("POST", "/apps", {"name": "after-etcd-loss"})
    assert st == 200, (st, e)
    for _ in range(5):
        st, apps = c.ctl("GET", "/apps")
        assert st == 200 and "after-etcd-loss" in {a["name"] for a in apps}, (st, apps)
    print(f"API answering {time.monotonic() - t0:.1f}s after the member died")


def test_down_leaves_etcd_alone(cluster):
    c = cluster
    p = ok(c, c.down())
    assert "left the store alone" in p.stdout, show(p)
    until(lambda: not c.live_processes() or Pred(c.live_processes()),
          "every process of the cluster to stop", 15)
    for d in c.etcd[1:]:
        assert d.running(), d.stderr_tail()
        assert http_status(d.url + "/health") == 200
    st = json.loads(open(c.state / "cluster.json").read())
    assert st["store"]["external"] is True
