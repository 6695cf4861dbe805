"""`pierd store-migrate`: an operator moves a cluster's state from the
embedded `pierd store` to etcd (and back). Every permanent key arrives with
its exact bytes, leased keys stay behind for their owners to re-register, a
dry run writes nothing, a destination with keys is refused unless --force,
and a migration that stops midway is finished by running it again."""

import base64
import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from conftest import Daemon, free_port, http_status, sanitizer_reports


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def post(url, path, body):
    """POSTs a JSON body; returns (status, parsed answer)."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def put_all(url, items, lease=0):
    """Writes {key: value bytes} in transactions of 100 puts."""
    keys = sorted(items)
    for i in range(0, len(keys), 100):
        ops = [{"request_put": {"key": b64(k), "value": b64(items[k]),
                                **({"lease": str(lease)} if lease else {})}}
               for k in keys[i:i + 100]]
        status, body = post(url, "/v3/kv/txn", {"success": ops})
        assert status == 200, body


def grant(url, ttl=60):
    status, body = post(url, "/v3/lease/grant", {"TTL": str(ttl)})
    assert status == 200, body
    return int(body["ID"])


def dump(url, prefix="", revision=0):
    """{key: (value bytes, lease)} of every key starting with prefix."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\0"
    req = {"key": b64(prefix or "\0"), "range_end": b64(end)}
    if revision:
        req["revision"] = str(revision)
    status, body = post(url, "/v3/kv/range", req)
    assert status == 200, body
    return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")),
                                                   int(kv.get("lease", 0)))
            for kv in body.get("kvs", [])}


def revision(url):
    status, body = post(url, "/v3/kv/range", {"key": b64("/"), "count_only": True})
    assert status == 200, body
    return int(body["header"]["revision"])


def cluster_state(n=3000):
    """What a cluster's store holds: JSON documents, some binary values (every
    byte, NULs included), an empty one, and one large enough to need a
    transaction of its own."""
    items = {}
    for i in range(n):
        kind = ("apps", "releases", "jobs", "routes", "formations")[i % 5]
        items[f"/pier/v1/{kind}/{i:05d}"] = json.dumps({"id": i, "kind": kind}).encode()
    for i in range(50):
        items[f"/pier/v1/artifacts/bin-{i:02d}"] = bytes(range(256)) + os.urandom(64 + i)
    items["/pier/v1/keys/empty"] = b""
    items["/pier/v1/artifacts/big"] = os.urandom(700 * 1024)
    return items


def migrate(pier_build, *args, timeout=60):
    """Runs pierd store-migrate; fails the test on a sanitizer report."""
    r = subprocess.run([str(pier_build / "pierd"), "store-migrate", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "UBSAN_OPTIONS": "print_stacktrace=1"})
    reports = sanitizer_reports(r.stderr)
    assert not reports, r.stderr[-8000:]
    return r


def start_etcd_with(workdir, *flags, ports=None):
    """A single-member etcd like the `etcd` fixture's, with extra flags. Give
    the .ports of an earlier one (stopped) to start it again on its data."""
    client, peer = ports or (free_port(), free_port())
    url = f"http://127.0.0.1:{client}"
    d = Daemon("etcd", [
        "/usr/bin/etcd", "--name", "m", "--data-dir", workdir / "data",
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"m=http://127.0.0.1:{peer}",
        "--heartbeat-interval=10", "--election-timeout=100", *flags,
    ], workdir)
    d.url, d.ports = url, (client, peer)
    return d.start(lambda: http_status(url + "/health") == 200)


def test_every_key_moves_to_etcd_and_leased_keys_stay_behind(pier_store, etcd, pier_build):
    items = cluster_state()
    put_all(pier_store, items)
    put_all(pier_store, {"/other/app/thing": b"not pier's"})
    lease = grant(pier_store)
    leased = {"/pier/v1/services/web/i-1": b'{"addr":"10.0.0.1:80"}',
              "/pier/v1/services/web/i-2": b'{"addr":"10.0.0.2:80"}',
              "/pier/v1/hosts/h-1": b'{"id":"h-1"}'}
    put_all(pier_store, leased, lease=lease)

    r = migrate(pier_build, "--from", pier_store, "--to", etcd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(items) + 3} keys under /pier/" in r.stdout
    assert "skipping 3 leased keys" in r.stdout and "/pier/v1/hosts/h-1" in r.stdout
    progress = re.findall(rf"^copied (\d+)/{len(items)} keys$", r.stdout, re.M)
    assert len(progress) >= 3 and progress[-1] == str(len(items)), r.stdout
    assert re.search(rf"done in .* holds the {len(items)} keys under /pier/ .*, verified",
                     r.stdout), r.stdout
    assert "3 leased keys skipped" in r.stdout

    there = dump(etcd)
    assert set(there) == set(items), "exactly the permanent keys under /pier/ arrive"
    for key, value in items.items():
        assert there[key] == (value, 0), key
    assert not any(k in there for k in leased)
    assert dump(pier_store, "/pier/v1/services/")  # the source is left as it was


def test_dry_run_writes_nothing(pier_store, etcd, pier_build):
    items = cluster_state(500)
    put_all(pier_store, items)
    before = revision(etcd)
    r = migrate(pier_build, "--from", pier_store, "--to", etcd, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    size = sum(len(k) + len(v) for k, v in items.items())
    assert f"dry run: would copy {len(items)} keys ({size / 1024:.1f} KiB, {size} bytes)" \
        in r.stdout, r.stdout
    assert "nothing written" in r.stdout and "copied" not in r.stdout
    assert dump(etcd) == {} and revision(etcd) == before


def test_destination_with_keys_is_refused_unless_forced(pier_store, etcd, pier_build):
    items = {f"/pier/v1/apps/{i}": f"app {i}".encode() for i in range(300)}
    put_all(pier_store, items)
    put_all(etcd, {"/pier/v1/apps/7": b"stale", "/pier/v1/apps/zzz-gone": b"old app",
                   "/elsewhere": b"not ours"})
    live = grant(etcd)
    put_all(etcd, {"/pier/v1/services/web/new-1": b"registered already"}, lease=live)
    before = dump(etcd)

    r = migrate(pier_build, "--from", pier_store, "--to", etcd)
    assert r.returncode == 1
    assert "already has 3 keys under /pier/" in r.stderr and "--force" in r.stderr, r.stderr
    assert dump(etcd) == before, "refused: nothing written"

    r = migrate(pier_build, "--from", pier_store, "--to", etcd, "--dry-run", "--force")
    assert r.returncode == 0, r.stderr
    assert "1 will be overwritten, 1 deleted" in r.stdout, r.stdout
    assert "/pier/v1/apps/7: overwrite (value differs)" in r.stdout
    assert "/pier/v1/apps/zzz-gone: delete (not in the source)" in r.stdout
    assert dump(etcd) == before, "a dry run writes nothing, forced or not"

    r = migrate(pier_build, "--from", pier_store, "--to", etcd, "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    after = dump(etcd)
    assert {k: v for k, (v, _) in after.items() if k.startswith("/pier/v1/apps/")} == items
    assert after["/pier/v1/services/web/new-1"] == (b"registered already", live)
    assert after["/elsewhere"] == (b"not ours", 0)

    # Idempotent: a second forced run finds everything equal and writes nothing.
    rev = revision(etcd)
    r = migrate(pier_build, "--from", pier_store, "--to", etcd, "--force")
    assert r.returncode == 0 and f"{len(items)} are already equal" in r.stdout, r.stdout
    assert revision(etcd) == rev


def test_a_migration_stopped_midway_is_finished_by_running_it_again(pier_store, pier_build,
                                                                    tmp_path):
    # etcd refusing requests over 64 KiB makes the batch with a large value fail.
    items = cluster_state(1000)
    del items["/pier/v1/artifacts/big"]
    items["/pier/v1/jobs/00500-big"] = os.urandom(100 * 1024)
    put_all(pier_store, items)
    small = start_etcd_with(tmp_path / "etcd", "--max-request-bytes=65536")
    try:
        r = migrate(pier_build, "--from", pier_store, "--to", small.url)
        assert r.returncode == 1, r.stdout
        m = re.search(r"stopped after (\d+) of (\d+) keys, at \"([^\"]+)\"", r.stderr)
        assert m, r.stderr
        assert "run again with --force to finish" in r.stderr
        done, total, at = int(m[1]), int(m[2]), m[3]
        assert 0 < done < total == len(items)
        assert f"copied {done}/{total} keys" in r.stdout
        there = dump(small.url)
        assert len(there) == done and all(k < at for k in there), "every key before it is in place"
    finally:
        small.stop()
        small.check_sanitizers()

    # The operator raises the limit and runs again with --force.
    etcd = start_etcd_with(tmp_path / "etcd", ports=small.ports)
    try:
        r = migrate(pier_build, "--from", pier_store, "--to", etcd.url, "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{done} are already equal" in r.stdout
        assert {k: v for k, (v, _) in dump(etcd.url).items()} == items
    finally:
        etcd.stop()


def test_writes_during_the_copy_cannot_tear_it(pier_store, etcd, pier_build):
    put_all(pier_store, cluster_state(2000))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            put_all(pier_store, {f"/pier/v1/jobs/{i % 2000:05d}": f"rewritten {i}".encode(),
                                 f"/pier/v1/jobs/late-{i}": b"x"})
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        r = migrate(pier_build, "--from", pier_store, "--to", etcd)
    finally:
        stop.set()
        t.join()
    # The copy is the source as of one revision, and the run says the source
    # moved on, so the operator knows writers were still running.
    assert r.returncode == 1, r.stdout
    assert "the source (--from" in r.stderr and "changed during the migration" in r.stderr
    rev = int(re.search(r"at revision (\d+)", r.stdout)[1])
    snapshot = {k: v for k, (v, _) in dump(pier_store, "/pier/", revision=rev).items()}
    assert {k: v for k, (v, _) in dump(etcd).items()} == snapshot


def test_back_from_etcd_to_pierd_store(etcd, pier_store, pier_build):
    items = cluster_state(1000)
    put_all(etcd, items)
    put_all(etcd, {"/pier/v1/services/db/i-1": b"leased"}, lease=grant(etcd))
    r = migrate(pier_build, "--from", etcd, "--to", pier_store, "--prefix", "/pier/v1/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipping 1 leased keys" in r.stdout
    assert dump(pier_store) == {k: (v, 0) for k, v in items.items()}


BAD_USAGE = [
    ([], "--from is missing"),
    (["--from", "{src}"], "--to is missing"),
    (["--to", "{src}"], "--from is missing"),
    (["--from", "{src}", "--to", "{src}/"], "must be different stores"),
    (["--from", "{src}", "--to", "ftp://127.0.0.1:2379"], "--to: store endpoint"),
    (["--from", "127.0.0.1:7001", "--to", "{src}"], "not http://"),
    (["--from", "{src}", "--to", "{dead}", "--prefix", ""], "--prefix is empty"),
    (["--from", "{src}", "--to", "{dead}", "--verbose"], 'unknown flag "--verbose"'),
    (["--from", "{src}", "--to", "{dead}", "extra"], 'unexpected argument "extra"'),
    (["--from", "{src}", "--to"], 'flag "--to" needs a value'),
]


@pytest.mark.parametrize("args,message", BAD_USAGE, ids=[m for _, m in BAD_USAGE])
def test_bad_usage_exits_2_and_names_the_problem(pier_store, pier_build, args, message):
    dead = f"http://127.0.0.1:{free_port()}"
    r = migrate(pier_build, *[a.format(src=pier_store, dead=dead) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stderr.startswith("pierd store-migrate: "), r.stderr


def test_unreachable_stores_exit_1_and_write_nothing(pier_store, pier_build):
    put_all(pier_store, {"/pier/v1/apps/a": b"{}"})
    dead = f"http://127.0.0.1:{free_port()}"
    before = dump(pier_store)

    r = migrate(pier_build, "--from", dead, "--to", pier_store)
    assert r.returncode == 1
    assert f"cannot reach the source (--from {dead})" in r.stderr, r.stderr
    assert "connection refused" in r.stderr and "Nothing was written" in r.stderr

    r = migrate(pier_build, "--from", pier_store, "--to", dead)
    assert r.returncode == 1
    assert f"cannot reach the destination (--to {dead})" in r.stderr, r.stderr
    assert dump(pier_store) == before


def test_help(pier_build):
    r = migrate(pier_build, "--help")
    assert r.returncode == 0 and "usage: pierd store-migrate --from URL" in r.stdout
    r = subprocess.run([str(pier_build / "pierd"), "--help"], capture_output=True, text=True)
    assert "store-migrate" in r.stdout
