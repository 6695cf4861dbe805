"""A second host joins a cluster made by `pier up` (`pier up --join`).

Cluster 1: `pier up --port-base A` in a state dir. Host 2, on the same
machine: `pier up --join https://controller.DOMAIN:PORT --key K --ca
S1/ca/ca.crt --state-dir S2 --port-base B`, which asks the controller for
the cluster's store (GET /cluster) and starts only a host agent with it.
`pier host list` then shows both hosts; the system apps with state
(blobstore, gitreceive, router) carry the tag pier.state=j1 only host 1
has, so the router scaled to 2 stays there; a user app scaled to web=4 runs on
both and answers through the router; after `pier down --state-dir S2` its
jobs come back on host 1 (the host record's TTL, then the scheduler) and
the app keeps answering. Everything is stopped by PID and by the jobs'
cgroups at the end; a sanitizer report in any log fails the module.
"""

import json
import os
import re
import time
from collections import Counter

import pytest

from cluster_util import PierUp, Pred, deploy_user_app, ok, show, until, user_app_answers

APP = "hello-join"


@pytest.fixture(scope="module")
def two(pier_build, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("pier up starts a host agent, which runs as root", pytrace=False)
    root = tmp_path_factory.mktemp("join")
    c1 = PierUp(pier_build, root / "c1", name="j1", domain="j1.localhost")
    c2 = PierUp(pier_build, root / "c2", join=c1)
    try:
        p = c1.up()
        c1.first_up = p
        yield c1, c2
    finally:
        for c in (c2, c1):
            c.cleanup()
        found = c1.sanitizer_findings() + c2.sanitizer_findings()
        if found:
            pytest.fail("sanitizer reports:\n" + "\n\n".join(f"== {who}\n{text}"
                                                             for who, text in found),
                        pytrace=False)


def host_ids(c1):
    return sorted(k.rsplit("/", 1)[1] for k in c1.store_range("/pier/v1/hosts/"))


def app_jobs_by_host(c1, app_id, hosts):
    """{host id: number of the app's jobs up on it} from the store's records."""
    n = Counter()
    for k, j in c1.store_range("/pier/v1/jobs/").items():
        jid = k.rsplit("/", 1)[1]
        if j.get("app") == app_id and j.get("state") == "up" and not j.get("oneoff"):
            n[next((h for h in hosts if jid.startswith(h + "-")), "?")] += 1
    return n


def test_join_refuses_a_wrong_key_and_names_an_unreachable_url(two):
    c1, c2 = two
    ok(c1, c1.first_up)
    bad = c2.root / "bad"
    p = c2.pier("up", "--join", c1.https_url("controller"), "--key", "not-the-key",
                "--ca", c1.ca_file, "--state-dir", bad, "--port-base", c2.port_base)
    assert p.returncode != 0 and "key is wrong" in p.stderr, show(p)
    assert not (bad / "cluster.json").exists() and not (bad / "host.pid").exists()
    url = "https://controller.nowhere.localhost:1"
    p = c2.pier("up", "--join", url, "--key", c1.key(), "--state-dir", bad,
                "--port-base", c2.port_base)
    assert p.returncode != 0 and url in p.stderr, show(p)
    # without the CA, the cluster's certificate does not verify
    p = c2.pier("up", "--join", c1.https_url("controller"), "--key", c1.key(),
                "--state-dir", bad, "--port-base", c2.port_base)
    assert p.returncode != 0 and "--ca" in p.stderr, show(p)


def test_second_host_joins(two):
    c1, c2 = two
    p = ok(c2, c2.up(timeout=90))
    assert "pierd store" not in p.stdout and not (c2.state / "store.pid").exists(), show(p)
    cj = c2.cluster_json()
    assert cj.get("joined") == c1.https_url("controller"), cj
    assert cj["store"]["urls"] == c1.store_url and cj["store"]["external"] is True, cj
    assert cj["domain"] == c1.domain and cj.get("host_id") == c2.host_id(), cj
    assert c2.key() == c1.key()
    assert (c2.state / "key").stat().st_mode & 0o777 == 0o600
    hosts = until(lambda: (lambda h: h if len(h) == 2 else Pred(h))(host_ids(c1)),
                  "two hosts in the store", 30)
    assert sorted(hosts) == sorted([c1.host_id(), c2.host_id()])
    p = c1.pier("host", "list", "--store", c1.store_url)
    assert p.returncode == 0 and c1.host_id() in p.stdout and c2.host_id() in p.stdout, show(p)

    # again: finds the agent running; no bootstrap, no store
    pid = c2.pid_file("host")
    p = ok(c2, c2.pier("up", "--state-dir", c2.state, timeout=60))
    assert re.search(r"\bfound\b", p.stdout), show(p)
    assert c2.pid_file("host") == pid
    # pier status of the joined state dir: its host agent only
    p = c2.pier("status", "--json", "--state-dir", c2.state)
    st = json.loads(p.stdout)
    assert [d["name"] for d in st["daemons"]] == ["host"], st
    assert st["daemons"][0]["healthy"] is True, st


STATEFUL = ["blobstore", "gitreceive", "router"]


def test_stateful_system_apps_stay_on_the_first_host(two):
    """blobstore, gitreceive and router keep data in host 1's state dir:
    their formations carry the tag pier.state=<cluster name>, which only
    the agent `pier up` started has, so the router scaled to 2 puts both
    jobs on host 1 although host 2 is emptier."""
    c1, c2 = two
    hosts = [c1.host_id(), c2.host_id()]
    recs = c1.store_range("/pier/v1/hosts/")
    tags = {k.rsplit("/", 1)[1]: r.get("tags") or {} for k, r in recs.items()}
    assert tags[hosts[0]] == {"pier.state": "j1"} and tags[hosts[1]] == {}, tags
    for name in STATEFUL:
        st, a = c1.ctl("GET", f"/apps/{name}")
        assert st == 200, (st, a)
        st, f = c1.ctl("GET", f"/apps/{a['id']}/formations/{a['release']}")
        assert st == 200 and f["tags"] == {"app": {"pier.state": "j1"}}, (name, st, f)
    st, router = c1.ctl("GET", "/apps/router")
    form = f"/apps/{router['id']}/formations/{router['release']}"
    try:
        ok(c1, c1.pier("-a", "router", "scale", "app=2", timeout=120))
        st, f = c1.ctl("GET", form)
        assert f["processes"] == {"app": 2} and f["tags"] == {"app": {"pier.state": "j1"}}, \
            f"pier scale dropped the formation's tags: {f}"
        n = until(lambda: (lambda n: n if sum(n.values()) == 2 else Pred(n))(
            app_jobs_by_host(c1, router["id"], hosts)), "2 router jobs up", 60)
        assert n == {hosts[0]: 2}, f"router jobs not all on host 1: {n}"
    finally:
        ok(c1, c1.pier("-a", "router", "scale", "app=1", timeout=120))
    until(lambda: (lambda n: n if n == {hosts[0]: 1} else Pred(n))(
        app_jobs_by_host(c1, router["id"], hosts)), "1 router job on host 1", 60)
    st, f = c1.ctl("GET", form)
    assert f["tags"] == {"app": {"pier.state": "j1"}}, f


def test_app_spreads_over_both_hosts_then_moves_to_one(two):
    c1, c2 = two
    hosts = [c1.host_id(), c2.host_id()]
    deploy_user_app(c1, APP, scale=1)
    ok(c1, c1.pier("-a", APP, "scale", "web=4", timeout=120))
    st, a = c1.ctl("GET", f"/apps/{APP}")
    app_id = a["id"]
    n = until(lambda: (lambda n: n if sum(n.values()) == 4 else Pred(n))(
        app_jobs_by_host(c1, app_id, hosts)), "4 web jobs up", 60)
    assert n[hosts[0]] >= 1 and n[hosts[1]] >= 1, f"not on both hosts: {n}"

    # every job answers through the router (each names itself)
    def all_seen():
        seen = set()
        for _ in range(40):
            body = user_app_answers(c1, APP)
            if body:
                seen.add(body.split()[-1])
            if len(seen) == 4:
                return seen
        return Pred(seen)
    until(all_seen, "the 4 jobs answering through the router", 30)

    p = ok(c2, c2.down())
    assert not c2.live_processes(), c2.live_processes()
    t0 = time.monotonic()
    n = until(lambda: (lambda n: n if n[hosts[0]] == 4 and sum(n.values()) == 4 else Pred(n))(
        app_jobs_by_host(c1, app_id, hosts)), "the 4 jobs back on host 1", 60)
    print(f"jobs moved in {time.monotonic() - t0:.1f}s: {n}")
    assert host_ids(c1) == [hosts[0]], host_ids(c1)
    for _ in range(10):
        assert until(lambda: user_app_answers(c1, APP), f"{APP} through the router", 10)
    ok(c1, c1.pier("-a", APP, "ps"))
