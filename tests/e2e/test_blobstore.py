"""`pierd blobstore` end to end: blobs go in and out streamed, are stored
atomically with their SHA-256 in an xattr, are checked on the way out (a
corrupt one is cut short and moved aside), and writes need the cluster key
or a signed URL. Every test runs the real daemon."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import store_get

KEY = "s3cret-cluster-key"
MiB = 1024 * 1024


# ---- helpers ----

def request(url, method, path, body=None, headers=None, timeout=30):
    """(status, headers as a lower-case dict, body bytes) of one request;
    the path is sent exactly as given."""
    host, port = url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def bearer(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def basic(key=KEY, user="pier"):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def sign(method, path, expires, key=KEY):
    """A signed query string, computed here independently of lib/blobsig.c."""
    mac = hmac.new(key.encode(), f"{method}\n{path}\n{expires}".encode(), hashlib.sha256)
    return f"{path}?expires={expires}&sig={mac.hexdigest()}"


def flynn_error(body, code=None):
    j = json.loads(body)
    assert set(j) >= {"code", "message"}, j
    if code:
        assert j["code"] == code, j
    return j


def blob_files(d):
    """Every file under DIR/blobs, relative."""
    root = Path(d) / "blobs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def temp_files(d):
    return [p for p in blob_files(d) if "#" in p]


def wait_for(pred, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def blobstore(start_pierd, tmp_path):
    """A factory: blobstore(key=KEY, store=None) starts `pierd blobstore`
    with its own --dir and returns the Pierd, with .dir set."""
    n = [0]

    def start(key=KEY, store=None, args=(), dir=None):
        n[0] += 1
        d = Path(dir) if dir else tmp_path / f"blobs-{n[0]}"
        argv = ["--dir", d, *args]
        if key:
            argv += ["--key", key]
        if store:
            argv += ["--store", store]
        p = start_pierd("blobstore", args=argv, name=f"blobstore-{n[0]}")
        p.dir = d
        return p

    return start


# ---- basic API ----

def test_put_get_head_delete(blobstore):
    b = blobstore()
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    st, _, body = request(b.url, "PUT", "/slugs/app/one.tgz", data, bearer())
    assert st == 200, body
    assert json.loads(body) == {"path": "/slugs/app/one.tgz", "size": len(data), "sha256": sha}

    st, h, body = request(b.url, "GET", "/slugs/app/one.tgz")  # GET is open
    assert st == 200 and body == data
    assert h["content-length"] == str(len(data))
    assert h["etag"] == f'"{sha}"' and h["x-content-sha256"] == sha

    st, h, body = request(b.url, "HEAD", "/slugs/app/one.tgz")
    assert st == 200 and body == b""
    assert h["content-length"] == str(len(data)) and h["x-content-sha256"] == sha

    # on disk: the file, its hash in the xattr, nothing else
    f = b.dir / "blobs/slugs/app/one.tgz"
    assert f.read_bytes() == data
    assert os.getxattr(f, "user.pier.sha256").decode() == sha
    assert blob_files(b.dir) == ["slugs/app/one.tgz"]

    # an empty blob
    st, _, body = request(b.url, "PUT", "/empty", b"", bearer())
    assert st == 200 and json.loads(body)["size"] == 0
    st, h, body = request(b.url, "GET", "/empty")
    assert st == 200 and body == b"" and h["content-length"] == "0"

    # replace, delete, then a bare 404
    st, _, _ = request(b.url, "PUT", "/slugs/app/one.tgz", b"v2", bearer())
    assert st == 200 and request(b.url, "GET", "/slugs/app/one.tgz")[2] == b"v2"
    st, _, body = request(b.url, "DELETE", "/slugs/app/one.tgz", headers=bearer())
    assert st == 200, body
    for method in ("GET", "HEAD", "DELETE"):
        st, h, body = request(b.url, method, "/slugs/app/one.tgz", headers=bearer())
        assert (st, body) == (404, b""), (method, st, body)
        assert "application/json" not in h.get("content-type", "")
    # the directories it left empty are gone too
    assert not (b.dir / "blobs/slugs").exists()

    st, _, body = request(b.url, "GET", "/status")
    assert st == 200 and json.loads(body) == {"status": "ok"}


def test_bad_paths_are_refused(blobstore):
    b = blobstore()
    bad = ["/", "/a//b", "/a/", "//a", "/a/../b", "/..", "/a/./b", "/.", "/a%20b", "/a%00b",
           "/caf%C3%A9", "/a:b", "/a*b", "/#tmp.x", "/a/%2E%2E/b",
           "/" + "x" * 256, "/" + "/".join(["abcdefghi"] * 103)]
    for path in bad:
        for method in ("PUT", "GET", "DELETE"):
            st, _, body = request(b.url, method, path, b"data" if method == "PUT" else None,
                                  bearer())
            assert st == 400, (method, path, st, body)
            flynn_error(body, "validation_error")
    assert blob_files(b.dir) == []
    # the longest path allowed is fine, and so is every allowed character
    ok = "/" + "/".join(["a" * 255] * 3 + ["b" * 254, "c"])
    assert len(ok) - 1 == 1024
    assert request(b.url, "PUT", ok + "d", b"x", bearer())[0] == 400
    assert request(b.url, "PUT", ok, b"x", bearer())[0] == 200
    assert request(b.url, "PUT", "/A-z_0.9/.hidden/x..y", b"x", bearer())[0] == 200
    # the health check's path cannot be written
    st, _, body = request(b.url, "PUT", "/status", b"x", bearer())
    assert st == 400, body


def test_blob_and_prefix_conflict(blobstore):
    b = blobstore()
    assert request(b.url, "PUT", "/a/b", b"1", bearer())[0] == 200
    for path in ("/a", "/a/b/c"):
        st, _, body = request(b.url, "PUT", path, b"2", bearer())
        assert st == 409, (path, body)
        flynn_error(body, "conflict")
    assert blob_files(b.dir) == ["a/b"] and request(b.url, "GET", "/a/b")[2] == b"1"
    # a prefix is no blob
    assert request(b.url, "GET", "/a")[0] == 404
    assert request(b.url, "DELETE", "/a", headers=bearer())[0] == 404
    # once a/b is gone, "a" may be a blob
    assert request(b.url, "DELETE", "/a/b", headers=bearer())[0] == 200
    assert request(b.url, "PUT", "/a", b"3", bearer())[0] == 200
    assert request(b.url, "GET", "/a")[2] == b"3"


def test_content_sha256_header(blobstore):
    b = blobstore()
    assert request(b.url, "PUT", "/x", b"old", bearer())[0] == 200
    data = b"new contents"
    good = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    st, _, body = request(b.url, "PUT", "/x", data, {**bearer(), "X-Content-SHA256": wrong})
    assert st == 400
    assert good in flynn_error(body, "validation_error")["message"]
    assert request(b.url, "GET", "/x")[2] == b"old" and temp_files(b.dir) == []
    st, _, body = request(b.url, "PUT", "/x", data, {**bearer(), "X-Content-SHA256": "abc"})
    assert st == 400 and request(b.url, "GET", "/x")[2] == b"old"
    st, _, body = request(b.url, "PUT", "/x", data,
                          {**bearer(), "X-Content-SHA256": good.upper()})
    assert st == 200 and json.loads(body)["sha256"] == good
    assert request(b.url, "GET", "/x")[2] == data


# ---- auth ----

def other_last_char(url):
    """url with its last character (of the signature) changed: to "1" when
    it is "0", to "0" otherwise (a 1 in 16 chance that it already was)."""
    return url[:-1] + ("1" if url.endswith("0") else "0")


def test_auth_key_and_signed_urls(blobstore):
    b = blobstore()
    now = int(time.time())

    st, h, body = request(b.url, "PUT", "/p/one", b"x")
    assert st == 401 and "basic" in h.get("www-authenticate", "").lower()
    flynn_error(body, "unauthorized")
    for hdr in (bearer("wrong"), basic("wrong"), {"Authorization": "Token " + KEY}):
        st, _, body = request(b.url, "PUT", "/p/one", b"x", hdr)
        assert st == 401, hdr
        flynn_error(body, "unauthorized")
        assert request(b.url, "DELETE", "/p/one", headers=hdr)[0] == 401
    assert blob_files(b.dir) == []

    assert request(b.url, "PUT", "/p/one", b"basic", basic(user="anyone"))[0] == 200
    assert request(b.url, "PUT", "/p/two", b"bearer", bearer())[0] == 200
    # reads are open, but a wrong key that is presented is still wrong
    assert request(b.url, "GET", "/p/one")[2] == b"basic"
    assert request(b.url, "GET", "/p/one", headers=bearer("wrong"))[0] == 401

    # a good signed URL writes exactly its own method and path
    st, _, body = request(b.url, "PUT", sign("PUT", "/p/signed", now + 60), b"signed")
    assert st == 200, body
    assert request(b.url, "GET", "/p/signed")[2] == b"signed"
    refused = [
        ("PUT", sign("PUT", "/p/other", now + 60).replace("/p/other", "/p/signed2")),  # path
        ("PUT", sign("GET", "/p/signed2", now + 60)),  # method
        ("PUT", sign("PUT", "/p/signed2", now - 1)),  # expired
        ("PUT", sign("PUT", "/p/signed2", now + 60, key="other-key")),  # key
        ("PUT", sign("PUT", "/p/signed2", now + 60).replace("expires=", "expires=1")),
        ("PUT", "/p/signed2?expires=%d" % (now + 60)),  # no sig
        ("PUT", other_last_char(sign("PUT", "/p/signed2", now + 60))),
        ("DELETE", sign("PUT", "/p/one", now + 60).replace("PUT", "")),
    ]
    for method, url in refused:
        st, _, body = request(b.url, method, url, b"no" if method == "PUT" else None)
        assert st == 403, (method, url, st, body)
        flynn_error(body, "forbidden")
    msg = flynn_error(request(b.url, "PUT", sign("PUT", "/p/x", now - 5), b"n")[2])["message"]
    assert "expired" in msg
    assert request(b.url, "GET", "/p/signed2")[0] == 404
    assert request(b.url, "GET", "/p/one")[2] == b"basic"

    # as pierslug uploads a slug: curl streaming stdin (chunked, Expect: 100-continue)
    slug = os.urandom(3 * MiB)
    r = subprocess.run(["curl", "-fsS", "-T", "-", b.url + sign("PUT", "/slugs/a/b.tgz", now + 60)],
                       input=slug, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sha256"] == hashlib.sha256(slug).hexdigest()
    assert request(b.url, "GET", "/slugs/a/b.tgz")[2] == slug

    # DELETE by signed URL
    st, _, body = request(b.url, "DELETE", sign("DELETE", "/p/one", now + 60))
    assert st == 200, body
    assert request(b.url, "GET", "/p/one")[0] == 404


def test_code_blobs_need_credentials_to_read(blobstore):
    """caches/, sources/ and repos/ hold apps' code: reading them needs the
    key or a signed GET URL. Slugs and the rest stay open to read (host
    agents fetch slugs without the key)."""
    b = blobstore()
    now = int(time.time())
    for path in ("/caches/app.tgz", "/sources/app/b1.tar", "/repos/app.tar"):
        assert request(b.url, "PUT", path, b"code", bearer())[0] == 200
        for method in ("GET", "HEAD"):
            st, h, body = request(b.url, method, path)
            assert st == 401 and h.get("www-authenticate") == 'Basic realm="pier"', (path, st)
            if method == "GET":
                assert path in flynn_error(body, "unauthorized")["message"]
        assert request(b.url, "GET", path, headers=bearer())[2] == b"code"
        assert request(b.url, "GET", path, headers=basic())[2] == b"code"
        assert request(b.url, "GET", sign("GET", path, now + 60))[2] == b"code"
        assert request(b.url, "HEAD", sign("GET", path, now + 60))[0] == 200
        assert request(b.url, "GET", sign("PUT", path, now + 60))[0] == 403
        st, _, body = request(b.url, "GET", sign("GET", path, now - 5))
        assert st == 403 and "expired" in flynn_error(body, "forbidden")["message"]
        assert request(b.url, "GET", path, headers=bearer("wrong"))[0] == 401
    # whether a private blob exists is not told without credentials either
    assert request(b.url, "GET", "/caches/none.tgz")[0] == 401
    assert request(b.url, "GET", "/caches/none.tgz", headers=bearer())[0] == 404
    # open: slugs, other paths, names that only look alike
    for path in ("/slugs/app/one.tgz", "/repos.tar", "/cachesx/a.tgz", "/other/sources/a.tar"):
        assert request(b.url, "PUT", path, b"open", bearer())[0] == 200
        st, _, body = request(b.url, "GET", path)
        assert st == 200 and body == b"open", path


def test_no_key_means_open(blobstore):
    b = blobstore(key=None)
    assert request(b.url, "PUT", "/open", b"x")[0] == 200
    assert request(b.url, "DELETE", "/open")[0] == 200
    assert "no --key" in b.stderr_text()


def test_refusal_before_body_with_expect(blobstore):
    """A client that waits for 100 Continue gets the refusal at once and
    never sends its (large) body; curl reports the 401."""
    b = blobstore()
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", "-",
                        "-H", "Expect: 100-continue", b.url + "/big"],
                       input=b"x" * (8 * MiB), capture_output=True, timeout=30)
    assert r.stdout == b"401", r


# ---- integrity ----

def test_corrupt_blob_is_cut_short_and_moved(blobstore):
    b = blobstore()
    data = os.urandom(2 * MiB + 123)
    assert request(b.url, "PUT", "/slugs/app/c.tgz", data, bearer())[0] == 200
    assert request(b.url, "PUT", "/slugs/app/ok.tgz", data, bearer())[0] == 200
    f = b.dir / "blobs/slugs/app/c.tgz"
    with open(f, "r+b") as fh:  # flip one byte in place, keeping the size
        fh.seek(MiB)
        byte = fh.read(1)
        fh.seek(MiB)
        fh.write(bytes([byte[0] ^ 0xFF]))
    out = b.dir.parent / "got"
    r = subprocess.run(["curl", "-sS", "-o", out, b.url + "/slugs/app/c.tgz"],
                       capture_output=True, timeout=30)
    assert r.returncode != 0, "curl took a corrupt blob as complete"
    assert out.stat().st_size < len(data)
    wait_for(lambda: "corrupt blob" in b.stderr_text(), what="the error log")
    err = b.stderr_text()
    assert "level=error" in err and "path=slugs/app/c.tgz" in err
    moved = list((b.dir / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("slugs%app%c.tgz.")
    assert not f.exists()
    assert request(b.url, "GET", "/slugs/app/c.tgz")[0] == 404
    # the healthy one still comes whole, and curl is happy
    r = subprocess.run(["curl", "-sSf", "-o", out, b.url + "/slugs/app/ok.tgz"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and out.read_bytes() == data

    # a truncated blob is corrupt as well
    assert request(b.url, "PUT", "/t", data, bearer())[0] == 200
    os.truncate(b.dir / "blobs/t", 1000)
    r = subprocess.run(["curl", "-sS", "-o", out, b.url + "/t"], capture_output=True, timeout=30)
    assert r.returncode != 0 or out.stat().st_size != len(data)
    wait_for(lambda: not (b.dir / "blobs/t").exists(), what="the truncated blob to move")


def test_corrupt_empty_blob(blobstore):
    b = blobstore()
    assert request(b.url, "PUT", "/e", b"", bearer())[0] == 200
    os.setxattr(b.dir / "blobs/e", "user.pier.sha256", b"0" * 64)
    st, _, body = request(b.url, "GET", "/e")
    assert st == 500 and "corrupt" in flynn_error(body)["message"]
    assert len(list((b.dir / "corrupt").iterdir())) == 1


# ---- atomicity ----

def test_client_leaving_mid_put_leaves_nothing(blobstore):
    b = blobstore()
    assert request(b.url, "PUT", "/keep", b"old blob", bearer())[0] == 200
    for path in ("/keep", "/new/deep/blob"):
        s = socket.create_connection(("127.0.0.1", b.port))
        s.sendall((f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Length: {20 * MiB}\r\n\r\n").encode())
        s.sendall(os.urandom(3 * MiB))
        wait_for(lambda: temp_files(b.dir), what="the temporary file")
        s.close()
        wait_for(lambda: not temp_files(b.dir), what="the temporary file to go")
    assert request(b.url, "GET", "/keep")[2] == b"old blob"
    assert blob_files(b.dir) == ["keep"]
    assert not (b.dir / "blobs/new").exists()
    assert "upload cut short" in b.stderr_text()


def test_concurrent_puts_never_tear(blobstore):
    b = blobstore()
    versions = [bytes([i]) * (MiB + i * 4099) for i in range(6)]
    shas = {hashlib.sha256(v).hexdigest(): v for v in versions}
    assert request(b.url, "PUT", "/race", versions[0], bearer())[0] == 200
    stop = threading.Event()
    problems = []

    def writer(v):
        for _ in range(4):
            st, _, body = request(b.url, "PUT", "/race", v, bearer())
            if st != 200:
                problems.append(("put", st, body))

    def reader():
        while not stop.is_set():
            st, h, body = request(b.url, "GET", "/race")
            if st != 200 or hashlib.sha256(body).hexdigest() not in shas or \
                    h["x-content-sha256"] != hashlib.sha256(body).hexdigest():
                problems.append(("get", st, len(body)))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert problems == []
    assert hashlib.sha256(request(b.url, "GET", "/race")[2]).hexdigest() in shas
    assert blob_files(b.dir) == ["race"]


def test_big_blob_streams_in_bounded_memory(blobstore):
    """1 GiB in and out: the daemon's peak RSS stays small."""
    b = blobstore()
    size = 1024 * MiB
    block = os.urandom(MiB)
    h = hashlib.sha256()
    c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=120)
    c.putrequest("PUT", "/big/slug.tgz")
    c.putheader("Authorization", f"Bearer {KEY}")
    c.putheader("Content-Length", str(size))
    c.endheaders()
    for i in range(size // MiB):
        chunk = i.to_bytes(8, "little") + block[8:]
        h.update(chunk)
        c.send(chunk)
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.status == 200, body
    assert json.loads(body) == {"path": "/big/slug.tgz", "size": size, "sha256": h.hexdigest()}

    c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=120)
    c.request("GET", "/big/slug.tgz")
    r = c.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) == size
    got, n = hashlib.sha256(), 0
    while True:
        piece = r.read(4 * MiB)
        if not piece:
            break
        got.update(piece)
        n += len(piece)
    c.close()
    assert n == size and got.hexdigest() == h.hexdigest()
    status = Path(f"/proc/{b.pid}/status").read_text()
    hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print(f"blobstore peak RSS after 1 GiB in and out: {hwm_kb} kB")
    assert hwm_kb < 64 * 1024, f"peak RSS {hwm_kb} kB"


# ---- limits: --max-size, a signed URL's max and once ----

def sign_opts(method, path, expires, max_bytes=None, once=False, key=KEY):
    """A signed query string with max= and once=, computed here: the signed
    string gains "\\nMAX" and "\\nonce" when the URL has them."""
    msg = f"{method}\n{path}\n{expires}"
    query = f"{path}?expires={expires}"
    if max_bytes is not None:
        msg += f"\n{max_bytes}"
        query += f"&max={max_bytes}"
    if once:
        msg += "\nonce"
        query += "&once=1"
    mac = hmac.new(key.encode(), msg.encode(), hashlib.sha256)
    return f"{query}&sig={mac.hexdigest()}"


def raw_put_headers(port, path, length, expect=False):
    """Sends a PUT's headers only; returns the socket and what the server
    answers before any of the body is sent (b"" if nothing in 3 s)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Length: {length}\r\n" + ("Expect: 100-continue\r\n" if expect else "")
               + "\r\n").encode())
    s.settimeout(3)
    got = b""
    try:
        while b"\r\n\r\n" not in got or (b"413" in got.split(b"\r\n")[0] and not got.endswith(b"}")):
            piece = s.recv(65536)
            if not piece:
                break
            got += piece
    except socket.timeout:
        pass
    return s, got


def test_max_size_refuses_larger_blobs(blobstore):
    b = blobstore(args=["--max-size", "1M"])
    assert "max_size=1048576" in b.stderr_text()
    assert request(b.url, "PUT", "/keep", b"old", bearer())[0] == 200
    # exactly the limit is fine; one byte more is 413 and nothing is stored
    assert request(b.url, "PUT", "/one", b"x" * MiB, bearer())[0] == 200
    st, h, body = request(b.url, "PUT", "/keep", b"y" * (MiB + 1), bearer())
    assert st == 413, body
    assert "--max-size" in flynn_error(body, "request_body_too_big")["message"]
    assert h.get("connection", "").lower() == "close"
    assert request(b.url, "GET", "/keep")[2] == b"old"
    assert blob_files(b.dir) == ["keep", "one"]

    # a Content-Length over the limit is refused before the body: at once
    # for a client that waits for 100 Continue
    s, got = raw_put_headers(b.port, "/big", 10 * MiB, expect=True)
    s.close()
    assert got.startswith(b"HTTP/1.1 413"), got
    assert b"100 Continue" not in got

    # a streamed (chunked) body that grows past it: 413, nothing left behind
    r = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-T", "-",
                        "-H", f"Authorization: Bearer {KEY}", b.url + "/keep"],
                       input=os.urandom(3 * MiB), capture_output=True, timeout=30)
    out = r.stdout.rsplit(b"\n", 1)
    assert out[-1] == b"413", r
    flynn_error(out[0], "request_body_too_big")
    assert request(b.url, "GET", "/keep")[2] == b"old"
    assert blob_files(b.dir) == ["keep", "one"] and temp_files(b.dir) == []
    assert "upload over its limit" in b.stderr_text()

    # far past the limit the connection is cut rather than read to the end
    s = socket.create_connection(("127.0.0.1", b.port))
    s.sendall((f"PUT /huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode())
    chunk = b"%x\r\n" % MiB + b"z" * MiB + b"\r\n"
    with pytest.raises(OSError):
        for _ in range(200):
            s.sendall(chunk)
        s.settimeout(10)
        if not s.recv(1):
            raise ConnectionResetError("closed")
    s.close()
    assert blob_files(b.dir) == ["keep", "one"] and temp_files(b.dir) == []


def test_max_size_flag(pier_build, tmp_path, blobstore):
    pierd = pier_build / "pierd"
    for bad in ("0", "-1", "1X", "M", "2GG", "99999999999999999"):
        r = subprocess.run([pierd, "blobstore", "--dir", tmp_path / "d", "--max-size", bad,
                            "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "--max-size" in r.stderr, (bad, r.stderr)
    # the default is 2G, and "512K" style sizes work
    assert "max_size=2147483648" in blobstore().stderr_text()
    b = blobstore(args=["--max-size", "512K"])
    assert request(b.url, "PUT", "/a", b"x" * (512 * 1024), bearer())[0] == 200
    assert request(b.url, "PUT", "/a", b"x" * (512 * 1024 + 1), bearer())[0] == 413


def test_signed_url_max(blobstore):
    b = blobstore(args=["--max-size", "1M"])
    now = int(time.time())
    url = sign_opts("PUT", "/slugs/a/1.tgz", now + 60, max_bytes=1000)
    st, _, body = request(b.url, "PUT", url, b"x" * 1001)
    assert st == 413, body
    assert "signed URL's max" in flynn_error(body, "request_body_too_big")["message"]
    assert blob_files(b.dir) == []
    st, _, body = request(b.url, "PUT", url, b"x" * 1000)
    assert st == 200, body
    # streamed past it (curl -T -, as pierslug uploads)
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", "-",
                        b.url + sign_opts("PUT", "/slugs/a/2.tgz", now + 60, max_bytes=5000)],
                       input=os.urandom(64 * 1024), capture_output=True, timeout=30)
    assert r.stdout == b"413", r
    assert blob_files(b.dir) == ["slugs/a/1.tgz"] and temp_files(b.dir) == []
    # a max above --max-size does not lift it
    st, _, body = request(b.url, "PUT", sign_opts("PUT", "/big", now + 60, max_bytes=10 * MiB),
                          b"x" * (MiB + 1))
    assert st == 413 and "--max-size" in flynn_error(body)["message"]
    # max is signed: changed or dropped, the signature fails
    for forged in (url.replace("max=1000", "max=100000"), url.replace("&max=1000", "")):
        st, _, body = request(b.url, "PUT", forged, b"x" * 10)
        assert st == 403, (forged, body)
        flynn_error(body, "forbidden")
    for bad in ("abc", "", "0", "-5"):
        q = sign_opts("PUT", "/x", now + 60).replace("&sig=", f"&max={bad}&sig=")
        assert request(b.url, "PUT", q, b"x")[0] == 403, bad


def test_signed_url_once_never_replaces(blobstore):
    b = blobstore()
    now = int(time.time())
    url = sign_opts("PUT", "/slugs/app/b1.tgz", now + 600, max_bytes=MiB, once=True)
    st, _, body = request(b.url, "PUT", url, b"the build's slug")
    assert st == 200, body
    # the same URL, later: refused, the slug stays what the build stored
    st, _, body = request(b.url, "PUT", url, b"something else")
    assert st == 409, body
    assert "may not replace" in flynn_error(body, "conflict")["message"]
    assert request(b.url, "GET", "/slugs/app/b1.tgz")[2] == b"the build's slug"
    # refused before the body for a client waiting for 100 Continue
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", "-",
                        b.url + url], input=b"x" * MiB, capture_output=True, timeout=30)
    assert r.stdout == b"409", r
    # without once=1 in the signature, dropping it from the URL is a forgery
    st, _, _ = request(b.url, "PUT", url.replace("&once=1", ""), b"forged")
    assert st == 403
    # a URL signed without once, and the key, may replace (build caches)
    cache = sign_opts("PUT", "/slugs/app/b1.tgz", now + 600)
    assert request(b.url, "PUT", cache, b"v2")[0] == 200
    assert request(b.url, "PUT", "/slugs/app/b1.tgz", b"v3", bearer())[0] == 200
    assert request(b.url, "GET", "/slugs/app/b1.tgz")[2] == b"v3"

    # two uploads through one once-URL at the same time: the later commit
    # is refused (the check at the rename, not only at the start)
    race = sign_opts("PUT", "/slugs/app/b2.tgz", now + 600, once=True)
    s = socket.create_connection(("127.0.0.1", b.port))
    first = os.urandom(2 * MiB)
    s.sendall((f"PUT {race} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(first)}\r\n\r\n").encode())
    s.sendall(first[:MiB])
    wait_for(lambda: temp_files(b.dir), what="the first upload to start")
    assert request(b.url, "PUT", race, b"second")[0] == 200
    s.sendall(first[MiB:])
    resp = b""
    while not resp.rstrip().endswith(b"}"):
        piece = s.recv(65536)
        if not piece:
            break
        resp += piece
    s.close()
    assert resp.startswith(b"HTTP/1.1 409"), resp
    assert request(b.url, "GET", "/slugs/app/b2.tgz")[2] == b"second"
    assert temp_files(b.dir) == []


def test_symlinks_in_blob_paths_are_not_followed(blobstore, tmp_path):
    """A symlink planted under DIR/blobs (the API makes none) leads nowhere:
    no component of a path is followed."""
    b = blobstore()
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    secret = b"not a blob"
    for f in (outside / "x", outside / "sub" / "y"):
        f.write_bytes(secret)
        os.setxattr(f, "user.pier.sha256", hashlib.sha256(secret).hexdigest().encode())
    assert request(b.url, "PUT", "/real/blob", b"ok", bearer())[0] == 200
    os.symlink(outside, b.dir / "blobs" / "evil")
    os.symlink(outside, b.dir / "blobs" / "real" / "link")
    for path in ("/evil/x", "/evil/sub/y", "/real/link/x"):
        for method in ("GET", "HEAD"):
            assert request(b.url, method, path)[0] == 404, (method, path)
        assert request(b.url, "DELETE", path, headers=bearer())[0] == 404, path
        st, _, body = request(b.url, "PUT", path, b"over", bearer())
        assert st == 409, (path, body)
    assert (outside / "x").read_bytes() == secret
    assert (outside / "sub" / "y").read_bytes() == secret
    assert sorted(p.name for p in outside.iterdir()) == ["sub", "x"]
    assert request(b.url, "GET", "/real/blob")[2] == b"ok"


# ---- the daemon ----

def test_flags(pier_build, tmp_path):
    pierd = pier_build / "pierd"
    r = subprocess.run([pierd, "blobstore", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--dir DIR" in r.stdout and "--advertise" in r.stdout
    r = subprocess.run([pierd, "blobstore", "--dir", tmp_path, "--bogus", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--bogus" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PIER_BLOBSTORE_DIR"}
    r = subprocess.run([pierd, "blobstore"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--dir" in r.stderr


def test_dir_from_environment(start_pierd, tmp_path):
    d = tmp_path / "envdir"
    b = start_pierd("blobstore", args=["--key", KEY],
                    env={**os.environ, "PIER_BLOBSTORE_DIR": str(d)})
    assert request(b.url, "PUT", "/x", b"1", bearer())[0] == 200
    assert (d / "blobs/x").read_bytes() == b"1"


def test_refuses_a_filesystem_without_xattrs(blobstore, tmp_path):
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "ramfs", "none", mnt]).returncode:
        pytest.skip("needs root to mount a ramfs (no user xattrs)")
    try:
        with pytest.raises(RuntimeError) as e:
            blobstore(dir=mnt / "store")
        assert "exited with 1" in str(e.value)
        assert "extended attributes" in str(e.value)
    finally:
        subprocess.run(["umount", mnt])


def test_crash_leftovers_are_swept(blobstore, tmp_path):
    d = tmp_path / "pre"
    (d / "blobs/a/b").mkdir(parents=True)
    (d / "blobs/a/b/#tmp.1234").write_bytes(b"half")
    (d / "blobs/empty/dir").mkdir(parents=True)
    b = blobstore(dir=d)
    assert blob_files(d) == []
    assert not (d / "blobs/empty").exists()
    assert request(b.url, "PUT", "/empty", b"x", bearer())[0] == 200


def test_discovery_and_graceful_stop(blobstore, pier_store):
    b = blobstore(store=pier_store)
    addr = f"127.0.0.1:{b.port}"
    inst = "/pier/v1/services/blobstore/" + hashlib.md5(f"tcp-{addr}".encode()).hexdigest()
    wait_for(lambda: store_get(pier_store, inst) is not None, what="registration")
    rec = json.loads(store_get(pier_store, inst))
    assert rec["addr"] == addr and rec["meta"]["url"] == f"http://{addr}"

    # an upload in flight when SIGTERM comes is finished, then it exits 0
    data = os.urandom(4 * MiB)
    s = socket.create_connection(("127.0.0.1", b.port))
    s.sendall((f"PUT /late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode())
    s.sendall(data[:MiB])
    wait_for(lambda: temp_files(b.dir), what="the upload to start")
    b.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: store_get(pier_store, inst) is None, what="deregistration")
    # no new connections meanwhile
    with pytest.raises(OSError):
        request(b.url, "GET", "/status", timeout=2)
    time.sleep(0.3)
    assert b.running()
    s.sendall(data[MiB:])
    resp = b""
    while b"\r\n\r\n" not in resp or not resp.rstrip().endswith(b"}"):
        piece = s.recv(65536)
        if not piece:
            break
        resp += piece
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp
    assert b.proc.wait(timeout=15) == 0
    assert (b.dir / "blobs/late").read_bytes() == data
    assert temp_files(b.dir) == []
