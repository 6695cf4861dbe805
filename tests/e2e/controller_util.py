"""A `pierd controller` for end-to-end tests, and a small JSON client for it.

Controller(start_pierd, store_url) starts one (stopped with the other
daemons at teardown) and offers get/post/put/delete that return
(status, parsed JSON body or None).
"""

import base64
import json
import urllib.error
import urllib.request

KEY = "test-cluster-key"


class Controller:
    def __init__(self, start_pierd, store, key=KEY, name=None, args=()):
        self.key = key
        self.auth = "Basic " + base64.b64encode(f":{key}".encode()).decode()
        self.daemon = start_pierd("controller", args=["--store", store, "--key", key, *args],
                                  name=name)
        self.url = self.daemon.url
        self.store = store

    def request(self, method, path, body=None, headers=None, auth=True, timeout=20):
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            h["Authorization"] = self.auth
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, _parse(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, _parse(e.read())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body if body is not None else {}, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body if body is not None else {}, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def _parse(raw):
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
