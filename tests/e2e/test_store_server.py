"""`pierd store` as a server: bad input changes nothing, acknowledged writes
survive SIGKILL, and a restart keeps revisions and data."""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import Pierd, sanitizer_reports


def b64(s):
    return base64.b64encode(s.encode()).decode()


def post(url, path, body, raw=False):
    """POSTs body (JSON-encoded unless raw) and returns (status, parsed JSON or None)."""
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, None


def revision(url):
    status, body = post(url, "/v3/kv/range", {"key": b64("/")})
    assert status == 200, body
    return int(body["header"]["revision"])


def all_keys(url):
    status, body = post(url, "/v3/kv/range", {"key": b64("\0"), "range_end": b64("\0")})
    assert status == 200, body
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in
            body.get("kvs", [])]


BAD_REQUESTS = [
    # (path, raw body, what it is)
    ("/v3/kv/put", b'{"key": "Zm9v", "value": ', "truncated JSON"),
    ("/v3/kv/put", b'not json at all', "not JSON"),
    ("/v3/kv/put", b'[1, 2]', "an array, not an object"),
    ("/v3/kv/put", b'{"key": 12, "value": "YmFy"}', "key of the wrong type"),
    ("/v3/kv/put", b'{"key": "!!!not base64", "value": "YmFy"}', "key that is not base64"),
    ("/v3/kv/put", b'{"key": "Zm9v", "value": "YmFy", "lease": "abc"}', "lease not a number"),
    ("/v3/kv/put", b'{"value": "YmFy"}', "no key"),
    ("/v3/kv/put", b'{"key": "Zm9v", "value": "YmFy", "key": "YmF6"}', "duplicate field"),
    ("/v3/kv/range", b'{"key": "Zm9v", "limit": "lots"}', "limit not a number"),
    ("/v3/kv/deleterange", b'{"key": {"a": 1}}', "key an object"),
    ("/v3/kv/txn", b'{"compare": "yes"}', "compare not an array"),
    ("/v3/kv/txn", b'{"compare": [{"key": "Zm9v", "result": "MAYBE"}]}', "unknown compare result"),
    ("/v3/kv/txn", b'{"success": [{"request_put": {"key": "%%%"}}]}', "bad base64 inside a txn"),
    ("/v3/kv/txn", b'{"success": [{"request_put": {"key": "Zm9v", "value": "YQ=="}}, '
                   b'{"request_put": {"key": "Zm9v", "value": "Yg=="}}]}', "duplicate key in txn"),
    ("/v3/lease/grant", b'{"TTL": "forever"}', "TTL not a number"),
    ("/v3/watch", b'{"create_request": "Zm9v"}', "create_request not an object"),
    ("/v3/watch", b'{}', "no create_request"),
]


@pytest.mark.parametrize("path,body,what", BAD_REQUESTS, ids=[b[2] for b in BAD_REQUESTS])
def test_bad_input_is_refused_and_changes_nothing(pier_store, path, body, what):
    assert post(pier_store, "/v3/kv/put", {"key": b64("keep"), "value": b64("me")})[0] == 200
    before_rev, before_keys = revision(pier_store), all_keys(pier_store)
    status, reply = post(pier_store, path, body, raw=True)
    assert 400 <= status < 500, f"{what}: got {status} {reply}"
    assert reply and reply.get("error") and reply.get("message"), f"{what}: no message: {reply}"
    assert revision(pier_store) == before_rev, what
    assert all_keys(pier_store) == before_keys, what


def test_unknown_paths_and_oversize_bodies(pier_store):
    before = revision(pier_store)
    status, reply = post(pier_store, "/v3/kv/nothing", {"key": b64("a")})
    assert status == 404 and "/v3/kv/nothing" in reply["message"]
    status, reply = post(pier_store, "/v2/keys/a", {})
    assert status == 404
    big = json.dumps({"key": b64("big"), "value": b64("x" * (3 * 1024 * 1024))}).encode()
    status, reply = post(pier_store, "/v3/kv/put", big, raw=True)
    assert status == 400 and "larger than" in reply["message"], reply
    # A GET on a POST-only path names the method.
    try:
        urllib.request.urlopen(pier_store + "/v3/kv/range", timeout=5)
        assert False, "GET /v3/kv/range should be refused"
    except urllib.error.HTTPError as e:
        assert e.code == 405
    assert revision(pier_store) == before
    assert all_keys(pier_store) == []


def test_acknowledged_writes_survive_sigkill(pier_build, tmp_path):
    """Writes keys one by one; kills the store with SIGKILL mid-stream;
    restarts it; every write that was acknowledged must be there."""
    work = tmp_path / "store"
    store = Pierd(pier_build, "store", work).start()
    port = store.port
    tool = pier_build / "tests" / "tools" / "store_load"
    env = dict(os.environ, PIER_STORE=store.url)
    writer = subprocess.Popen([str(tool), "put", "/crash/k", "1000000"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acks = []
    try:
        while len(acks) < 300:
            line = writer.stdout.readline()
            assert line, f"writer stopped early: {writer.stderr.read()}"
            acks.append(line)
        store.proc.send_signal(signal.SIGKILL)
        # Whatever the writer saw acknowledged before the kill also counts.
        out, err = writer.communicate(timeout=30)
        acks += [l + "\n" for l in out.splitlines() if l.startswith("ack ")]
        assert writer.returncode != 0, "the writer should fail once the store is gone"
        store.stop()
        assert store.returncode == -signal.SIGKILL

        again = Pierd(pier_build, "store", work, port=port).start()
        try:
            check = subprocess.run([str(tool), "check", "/crash/k", "0"], env=env,
                                   input="".join(acks), capture_output=True, text=True,
                                   timeout=120)
            assert check.returncode == 0, check.stderr
            assert check.stdout.strip() == f"checked {len(acks)}", check.stdout
            # The revision goes on from where it was, never backwards.
            last_rev = int(acks[-1].split()[2])
            assert revision(again.url) >= last_rev
        finally:
            again.stop()
            again.check_sanitizers()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        store.stop()


def test_restart_keeps_data_and_revision(pier_build, tmp_path):
    work = tmp_path / "store"
    store = Pierd(pier_build, "store", work).start()
    try:
        for i in range(20):
            assert post(store.url, "/v3/kv/put", {"key": b64(f"/r/{i}"), "value": b64(str(i))})[0] == 200
        assert post(store.url, "/v3/kv/deleterange", {"key": b64("/r/3")})[0] == 200
        rev, keys = revision(store.url), all_keys(store.url)
        assert rev == 22  # 20 puts + 1 delete on a fresh store starting at revision 1
    finally:
        assert store.stop() == 0
        store.check_sanitizers()
    again = Pierd(pier_build, "store", work, port=store.port).start()
    try:
        assert revision(again.url) == rev
        assert all_keys(again.url) == keys
        # A read at an old revision still sees the deleted key.
        status, body = post(again.url, "/v3/kv/range", {"key": b64("/r/3"), "revision": "5"})
        assert status == 200 and body["kvs"][0]["value"] == b64("3")
    finally:
        again.stop()
        again.check_sanitizers()


def test_help_and_bad_flags(pier_build, tmp_path):
    pierd = str(pier_build / "pierd")
    out = subprocess.run([pierd, "store", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--data-dir" in out.stdout and "--history" in out.stdout
    out = subprocess.run([pierd, "store", "--listen", "127.0.0.1:0"], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items()
                                         if k != "PIER_DATA_DIR"})
    assert out.returncode == 2 and "--data-dir" in out.stderr
    out = subprocess.run([pierd, "store", "--data-dir", str(tmp_path), "--history", "many"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--history" in out.stderr
    # Common flags a subcommand does not use are refused, not ignored.
    out = subprocess.run([pierd, "store", "--data-dir", str(tmp_path), "--key", "k"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "does not use --key" in out.stderr
    out = subprocess.run([pierd, "discoverd", "--store", "http://127.0.0.1:1", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "does not use --data-dir" in out.stderr
    out = subprocess.run([pierd, "nosuch"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown subcommand" in out.stderr
    assert not sanitizer_reports(out.stderr)


def test_extreme_numbers_are_handled(pier_store):
    """Limits and revisions at the edges of int64 answer sensibly; under the
    sanitized build an overflow would abort the store and fail teardown."""
    for i in range(3):
        assert post(pier_store, "/v3/kv/put", {"key": b64(f"/x/{i}"), "value": b64("v")})[0] == 200
    status, body = post(pier_store, "/v3/kv/range", {"key": b64("/x/"), "range_end": b64("/x0"),
                                                     "limit": "9223372036854775807"})
    assert status == 200 and len(body["kvs"]) == 3 and not body.get("more"), body
    status, body = post(pier_store, "/v3/kv/range", {"key": b64("/x/"),
                                                     "revision": "9223372036854775807"})
    assert status == 400 and "future revision" in body["message"], body
    status, body = post(pier_store, "/v3/kv/range", {"key": b64("/x/"), "limit": "-5"})
    assert status in (200, 400), body
