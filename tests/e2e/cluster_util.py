"""A cluster made by `pier up` in a state directory, for end-to-end tests.

`pier up` starts `pierd store` and `pierd host` as daemons (double-forked,
their PIDs in STATE/store.pid and STATE/host.pid) and the system apps as
jobs of that host agent, so nothing of it is a child of the test. PierUp
runs the CLI against it, talks to the controller through the router (curl
resolves *.localhost to loopback; Python does not, so requests go to
127.0.0.1 with a Host field), and, whatever happened, stops everything of
the cluster by PID and by the jobs' cgroups (kill_everything, cleanup).
A PierUp can also be a cluster on an external store (store=URLS: `pier up
--store`) or a host joining another PierUp (join=: `pier up --join`).

The smoke checks every cluster gets (system apps healthy, a user app
deployed and answering through the router) are here too, shared by
test_bootstrap.py, test_up_etcd.py and test_join.py.
"""

import base64
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import CRUN, sanitizer_reports

try:
    from conftest import xdist_worker
except ImportError:  # a conftest without pytest-xdist support
    def xdist_worker():
        return 0, 1

SYSTEM_APPS = ("controller", "discoverd", "blobstore", "router", "gitreceive", "scheduler")
LIVE = ("pending", "starting", "up")


def alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid):
    """The argv of pid as a list of str, or []."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _bindable(port):
    for addr in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


def free_port_base():
    """N such that N..N+4 and the jobs' ports N+100..N+999 are free: below
    the kernel's ephemeral range (free_port()) and below the blocks
    free_port_range() hands out (21000-32000), apart from `make up`'s
    defaults (20000-20999). Under pytest-xdist each worker takes its own
    share of the ten blocks."""
    index, count = xdist_worker()
    bases = list(range(10000 + 1000 * index, 20000, 1000 * count))
    random.shuffle(bases)
    # A block handed out before is not given again while another is free:
    # a test may pick two bases before it starts anything on the first.
    bases.sort(key=lambda n: n in _given)
    for n in bases:
        if all(_bindable(p) for p in [*range(n, n + 5), *range(n + 100, n + 1000)]):
            _given.add(n)
            return n
    raise RuntimeError("no free block of 1000 ports between 10000 and 20000")


_given = set()


def delete_containers(host_id, job_ids):
    """After a test cluster is stopped: deletes what crun still has of the
    host agent host_id's jobs (the ids given and any crun lists) and the
    agent's /run/pier/<host id> directory."""
    root = Path("/run/pier") / host_id / "crun"
    ids = set(job_ids)
    if root.is_dir():
        ids.update(p.name for p in root.iterdir() if p.is_dir())
    for job_id in sorted(ids):
        subprocess.run([CRUN, "--root", str(root), "delete", "--force", job_id],
                       capture_output=True, timeout=30)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root.parent)],
                   capture_output=True, timeout=30)


def until(pred, what, timeout=60.0, every=0.2):
    """Polls pred() until it returns something truthy, which it returns;
    fails naming what and the last value it saw."""
    deadline = time.monotonic() + timeout
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(every)


class Pred:
    """A falsy result that still says why (for until's message)."""

    def __init__(self, why):
        self.why = why

    def __bool__(self):
        return False

    def __repr__(self):
        return str(self.why)


class PierUp:
    def __init__(self, build, root, name="t1", domain="t1.localhost", store=None, join=None):
        """store: "URL,URL..." of an external store (`pier up --store`);
        join: the PierUp whose cluster this one joins (`pier up --join`,
        with its https URL, key and CA): it then shares that one's CLI
        config and domain."""
        self.build = Path(build)
        self.root = Path(root)
        self.state = self.root / "state"
        self.name = name
        self.joins = join
        self.domain = join.domain if join else domain
        self.port_base = free_port_base()
        self.external_store = store
        self.store_url = join.store_url if join else \
            (store.split(",")[0] if store else f"http://127.0.0.1:{self.port_base}")
        self.store_urls = join.store_urls if join else \
            (store.split(",") if store else [self.store_url])
        self.host_url = f"http://127.0.0.1:{self.port_base + 1}"
        # a joining host has no router of its own: the cluster's answers
        self.http_port = join.http_port if join else self.port_base + 2
        self.https_port = self.port_base + 3
        self.config = join.config if join else self.root / "pier-config.json"
        self.workdir = self.root / "cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIER_", "XDG_CONFIG")) or k == "PIER_BUILD_DIR"}
        env.update(PIER_CONFIG=str(self.config), UBSAN_OPTIONS="print_stacktrace=1",
                   HOME=str(self.root))
        self.env = env
        self.outputs = []  # (command, stdout + stderr) of every pier run, for sanitizers

    # ---- the CLI ----

    def pier(self, *args, timeout=120, cwd=None):
        argv = [str(self.build / "pier"), *map(str, args)]
        t0 = time.monotonic()
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd=str(cwd or self.workdir))
        p.elapsed = time.monotonic() - t0
        self.outputs.append((" ".join(["pier", *map(str, args)]), p.stdout + p.stderr))
        return p

    def up(self, *extra, timeout=240):
        if self.joins:
            j = self.joins
            return self.pier("up", "--join", j.https_url("controller"), "--key", j.key(),
                             "--ca", j.ca_file, "--state-dir", self.state,
                             "--port-base", self.port_base, *extra, timeout=timeout)
        store = ("--store", self.external_store) if self.external_store else ()
        return self.pier("up", "--state-dir", self.state, "--port-base", self.port_base,
                         "--name", self.name, "--domain", self.domain, *store, *extra,
                         timeout=timeout)

    def down(self, timeout=120):
        return self.pier("down", "--state-dir", self.state, timeout=timeout)

    # ---- the state directory ----

    def key(self):
        return (self.state / "key").read_text().strip()

    @property
    def ca_file(self):
        """The cluster CA `pierd bootstrap` makes (the joined cluster's for a
        joining host)."""
        return self.joins.ca_file if self.joins else self.state / "ca" / "ca.crt"

    def https_url(self, sub):
        port = self.joins.https_port if self.joins else self.https_port
        return f"https://{sub}.{self.domain}:{port}"

    def cluster_json(self):
        try:
            return json.loads((self.state / "cluster.json").read_text())
        except (OSError, ValueError):
            return {}

    def host_id(self):
        try:
            hid = (self.state / "host" / "host-id").read_text().strip()
            if hid:
                return hid
        except OSError:
            pass
        cj = self.cluster_json()
        for k in ("host_id", "host"):
            if isinstance(cj.get(k), str) and cj[k]:
                return cj[k]
        return None

    def pid_file(self, name):
        try:
            return int((self.state / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def job_dirs(self):
        d = self.state / "host" / "jobs"
        return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    # ---- HTTP ----

    def _auth(self):
        return "Basic " + base64.b64encode(f":{self.key()}".encode()).decode()

    def http(self, method, host, path, body=None, port=None, auth=True, timeout=15,
             headers=None):
        """(status, parsed JSON or text or None) of a request to 127.0.0.1:port
        (the router's HTTP port by default) with Host: host. Raises OSError
        when the connection fails."""
        port = port or self.http_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            h = {"Host": f"{host}:{port}" if host else f"127.0.0.1:{port}",
                 "Accept": "application/json", "Connection": "close"}
            if auth:
                h["Authorization"] = self._auth()
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            h.update(headers or {})
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            raw = r.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw.strip() else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, parsed

    def ctl(self, method, path, body=None, **kw):
        """A controller request through the router."""
        return self.http(method, f"controller.{self.domain}", path, body, **kw)

    def try_ctl(self, method, path, body=None, **kw):
        try:
            return self.ctl(method, path, body, **kw)
        except OSError as e:
            return None, str(e)

    def agent(self, path):
        """(status, JSON) from the host agent's API (None, msg when down)."""
        try:
            return self.http("GET", None, path, port=self.port_base + 1, timeout=5)
        except OSError as e:
            return None, str(e)

    def agent_jobs(self):
        """The agent's view of its jobs (records merged with what it observes)."""
        st, jobs = self.agent("/host/jobs")
        if st != 200:
            return []
        if isinstance(jobs, dict):
            jobs = list(jobs.values())
        return jobs if isinstance(jobs, list) else []

    def store_range(self, prefix):
        """{key: parsed value} under prefix, straight from the store."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                           "range_end": base64.b64encode(end.encode()).decode()}).encode()
        kvs, last = None, None
        for url in self.store_urls:  # the first member that answers
            host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("POST", "/v3/kv/range", body=body,
                             headers={"Content-Type": "application/json"})
                kvs = json.loads(conn.getresponse().read()).get("kvs") or []
                break
            except OSError as e:
                last = e
            finally:
                conn.close()
        if kvs is None:
            raise last
        out = {}
        for kv in kvs:
            try:
                out[base64.b64decode(kv["key"]).decode()] = json.loads(base64.b64decode(kv["value"]))
            except ValueError:
                pass
        return out

    def curl(self, url, *args, timeout=15):
        """(http status as int or None, body) of curl URL (which resolves
        *.localhost itself)."""
        if url.startswith("https:") and "--cacert" not in args:
            args = ("--cacert", str(self.ca_file), *args)
        p = subprocess.run(["curl", "-sS", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}",
                            *args, url], capture_output=True, text=True, timeout=timeout + 5)
        body, _, code = p.stdout.rpartition("\n")
        try:
            return int(code), body
        except ValueError:
            return None, p.stderr

    # ---- stopping everything ----

    def _pierd_pids(self):
        """PIDs of processes that belong to this state dir: the daemons of
        the pid files (when they still are pierd), the shims of its job
        directories, and any pierd or pier run naming the state dir."""
        state = str(self.state)
        jobs_dir = str(self.state / "host" / "jobs")
        out = set()
        for name in ("store", "host"):
            pid = self.pid_file(name)
            if pid and pid > 1 and alive(pid) and any("pierd" in a for a in cmdline(pid)[:1]):
                out.add(pid)
        me = os.getpid()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in (me, 1):
                continue
            argv = cmdline(int(d.name))
            if not argv:
                continue
            for i, a in enumerate(argv):
                if (a == "--dir" and i + 1 < len(argv) and argv[i + 1].startswith(jobs_dir)) \
                        or ("pierd" in argv[0] and a.startswith(state)):
                    out.add(int(d.name))
                    break
        return {p for p in out if alive(p)}

    def _job_cgroups(self):
        hid = self.host_id()
        if not hid:
            return []
        bases = [Path("/sys/fs/cgroup/pier"), *Path("/sys/fs/cgroup").glob("*/pier")]
        return [d for b in bases if b.is_dir() for d in b.glob(f"{hid}-*") if d.is_dir()]

    def _cgroup_pids(self):
        pids = set()
        for d in self._job_cgroups():
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return {p for p in pids if alive(p)}

    def live_processes(self):
        """{pid: argv} of every process of this cluster still running."""
        return {p: cmdline(p) for p in self._pierd_pids() | self._cgroup_pids()}

    def kill_everything(self, timeout=15.0):
        """SIGKILL to every process of this cluster, nothing graceful: the
        store and the agent (pid files), every shim of its job directories,
        every process in its jobs' cgroups (cgroup.kill where the cgroup
        has it, else each pid of cgroup.procs). Returns what it killed."""
        killed = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self._pierd_pids()
            for p in pids:
                killed.setdefault(p, cmdline(p))
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for d in self._job_cgroups():
                if (d / "cgroup.kill").exists():
                    try:
                        (d / "cgroup.kill").write_text("1")
                    except OSError:
                        pass
            cg = self._cgroup_pids()
            for p in cg:
                killed.setdefault(p, cmdline(p))
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids and not cg:
                return killed
            time.sleep(0.05)
        raise AssertionError(f"still running after SIGKILL: {self.live_processes()}")

    def cleanup(self):
        """After the tests: `pier down`, then whatever is left is killed,
        crun's containers deleted and the jobs' cgroups removed."""
        try:
            if (self.state / "cluster.json").exists() or self.pid_file("store"):
                self.down(timeout=90)
        except (subprocess.TimeoutExpired, OSError):
            pass
        try:
            self.kill_everything()
        finally:
            hid = self.host_id()
            if hid:
                delete_containers(hid, [d.name for d in self.job_dirs()])
                for d in self._job_cgroups():
                    try:
                        d.rmdir()
                    except OSError:
                        pass

    # ---- sanitizers ----

    def sanitizer_findings(self):
        """(who, text) for each log of the cluster holding a sanitizer
        report: the daemons' logs, the shims' and every job's output (the
        system daemons run as jobs), and what pier printed."""
        found = []
        files = sorted(self.state.glob("*.log"))
        for d in self.job_dirs():
            files += sorted(d.glob("log*")) + [d / "shim.log"]
        for f in files:
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            if sanitizer_reports(text):
                found.append((str(f), text[-6000:]))
        for cmd, text in self.outputs:
            if sanitizer_reports(text):
                found.append((cmd, text[-6000:]))
        return found


# ---- the smoke checks of a cluster ----

SERVER = r"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = (os.environ["BOOT_MSG"] + " " + os.environ.get("PIER_JOB_ID", "?") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""
BOOT_MSG = "hello from the bootstrap test"


def show(p):
    return f"exit {p.returncode} after {getattr(p, 'elapsed', 0):.1f}s\nstdout:\n{p.stdout}\n" \
           f"stderr:\n{p.stderr}"


def logs_tail(c, lines=40):
    out = []
    for f in sorted(c.state.glob("*.log")):
        try:
            text = f.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {f.name} (last {lines} lines)\n" + "\n".join(text))
    return "\n".join(out)


def job_logs_tail(c, apps=("scheduler", "controller"), lines=25):
    """The end of the logs of the system apps' jobs that run (by the agent's
    labels) and the scale requests in the store: what a failed scale or
    deploy needs to be understood."""
    out = []
    try:
        ids = {a["id"]: a["name"] for a in c.store_range("/pier/v1/apps/").values()
               if a.get("name") in apps}
        for j in c.agent_jobs():
            if j.get("app") in ids and j.get("state") in LIVE:
                f = c.state / "host" / "jobs" / j["id"] / "log"
                text = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {ids[j['app']]} job {j['id']} (last {lines} lines)\n"
                           + "\n".join(text))
        for k, v in c.store_range("/pier/v1/scale-requests/").items():
            out.append(f"{k}: {v.get('state')} {v.get('new_processes')} {v.get('updated_at')}")
    except (OSError, ValueError) as e:
        out.append(f"(could not read more: {e})")
    return "\n".join(out)


def ok(c, p):
    assert p.returncode == 0, show(p) + "\n" + logs_tail(c) + "\n" + job_logs_tail(c)
    return p


def up_jobs(c, app_id, release=None, type_=None):
    """The agent's jobs of the app (release, type) that are up and wanted up."""
    return [j for j in c.agent_jobs()
            if j.get("app") == app_id and j.get("state") == "up"
            and j.get("desired_state", "up") == "up" and not j.get("oneoff")
            and (release is None or j.get("release") == release)
            and (type_ is None or j.get("type") == type_)]


def serves(c, job):
    """Whether the job's first port answers GET /.well-known/status with 200
    (at 127.0.0.1: pier up's default --listen-ip, the jobs' EXTERNAL_IP)."""
    ports = job.get("allocated_ports") or []
    if not ports:
        return False
    port = ports[0]["port"] if isinstance(ports[0], dict) else ports[0]
    try:
        st, _ = c.http("GET", None, "/.well-known/status", port=port, auth=False, timeout=3)
    except OSError:
        return False
    return st == 200


def formation(c, app):
    """(app record, its current release id, the formation's processes)."""
    st, a = c.ctl("GET", f"/apps/{app}")
    assert st == 200, (app, st, a)
    rel = a.get("release")
    assert rel, f"app {app} has no release: {a}"
    st, f = c.ctl("GET", f"/apps/{app}/formations/{rel}")
    assert st == 200, (app, st, f)
    return a, rel, f.get("processes") or {}


def apps_running(c, apps, check_ports=True):
    """Checks that each app has, for every process type of its formation,
    exactly that many jobs up (the agent's view), each serving on its port
    when it has one; returns {app: [job ids]} or a Pred saying what is not."""
    try:
        out = {}
        for app in apps:
            st, a = c.try_ctl("GET", f"/apps/{app}")
            if st != 200:
                return Pred(f"GET /apps/{app} through the router: {st} {a}")
            rel = a.get("release")
            st, f = c.try_ctl("GET", f"/apps/{app}/formations/{rel}")
            if st != 200:
                return Pred(f"formation of {app}: {st} {f}")
            ids = []
            for t, n in (f.get("processes") or {}).items():
                jobs = up_jobs(c, a["id"], rel, t)
                if len(jobs) != n:
                    return Pred(f"{app} {t}: {len(jobs)} jobs up of {n}: "
                                f"{[(j['id'], j.get('state')) for j in jobs]}")
                for j in jobs:
                    if check_ports and j.get("allocated_ports") and not serves(c, j):
                        return Pred(f"{app} job {j['id']} is up but its port "
                                    f"{j['allocated_ports']} does not answer")
                ids += [j["id"] for j in jobs]
            if not ids:
                return Pred(f"{app}: no job wanted by its formation {f.get('processes')}")
            out[app] = sorted(ids)
        return out
    except (OSError, ValueError) as e:
        return Pred(f"{type(e).__name__}: {e}")


def check_status(c):
    p = c.pier("status")
    assert p.returncode == 0, show(p)
    for app in SYSTEM_APPS:
        # a line per system app: its name, then its health (the jobs under it)
        assert re.search(rf"^{app}\b.*\bhealthy\b", p.stdout, re.M), \
            f"pier status does not say {app} is healthy:\n{show(p)}"
    return p


def check_https_config(c):
    """The CLI config `pier up` wrote: the https URLs, the CA's PEM and its
    pin (base64 SHA-256 of the DER), and the API answering over https
    through the router, verified against that CA; returns the entry."""
    cfg = json.loads(c.config.read_text())
    (entry,) = [e for e in cfg["clusters"] if e["name"] == c.name]
    assert entry["url"] == c.https_url("controller"), entry
    assert entry["git_url"] == c.https_url("git"), entry
    ca = c.ca_file.read_text()
    assert entry["ca_cert"] == ca, entry
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=ca.encode(),
                         capture_output=True, check=True).stdout
    import hashlib
    assert entry["tls_pin"] == base64.b64encode(hashlib.sha256(der).digest()).decode(), entry
    st, body = c.curl(c.https_url("controller") + "/apps", "-u", f":{c.key()}")
    assert st == 200, (st, body)
    # a client without the CA does not trust it
    st, body = c.curl(c.https_url("controller") + "/apps", "--cacert", "/dev/null")
    assert st != 200, (st, body)
    return entry


def user_app_answers(c, app, msg=BOOT_MSG):
    st, body = c.curl(f"http://{app}.{c.domain}:{c.http_port}/")
    return body if st == 200 and msg in body else Pred(f"{st} {body[:300]!r}")


def deploy_user_app(c, app, scale=1, msg=BOOT_MSG):
    """`pier create APP`, a release running SERVER with BOOT_MSG=msg, a
    deploy, `pier scale web=N`, then waits until it answers through the
    router. Returns the release id."""
    p = ok(c, c.pier("create", app))
    assert p.stdout.strip() == app, show(p)
    st, rel = c.ctl("POST", "/releases", {
        "app_id": app, "env": {"BOOT_MSG": msg},
        "processes": {"web": {"args": ["python3", "-c", SERVER],
                              "resources": {"memory": {"limit": 128 << 20}}}}})
    assert st == 200, (st, rel)
    st, dep = c.ctl("POST", f"/apps/{app}/deploy", {"id": rel["id"]})
    assert st == 200 and dep["status"] == "complete", (st, dep)
    ok(c, c.pier("-a", app, "scale", f"web={scale}", timeout=120))
    until(lambda: user_app_answers(c, app, msg), f"{app} through the router", 60)
    return rel["id"]


def smoke(c, app="hello-smoke"):
    """What every new cluster must do: the system apps listed, protected and
    healthy (`pier apps`, `pier status`), each with its jobs serving, then
    a user app deployed and answering through the router."""
    p = ok(c, c.pier("apps", "--json"))
    apps = {a["name"]: a for a in json.loads(p.stdout)}
    for name in SYSTEM_APPS:
        assert name in apps, f"{name} not in pier apps --json: {sorted(apps)}"
        assert apps[name].get("protected") is True, apps[name]
    running = until(lambda: apps_running(c, SYSTEM_APPS), "the system apps' jobs", 60)
    check_status(c)
    deploy_user_app(c, app)
    return running
