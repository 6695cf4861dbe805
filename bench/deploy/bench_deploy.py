"""bench/deploy/bench_deploy.py BUILD_DIR: `git push` to the new code
answering through the router, on a one-host cluster (bench/deploy/run
says what it measures; this does it).

The cluster is tests/e2e/push_util.PushCluster (store, discoverd, host
agent, scheduler, controller, router, blobstore, gitreceive), started in a
temporary directory and stopped by PID at the end. For each sample app: a
new app, one unmeasured push (its first deploy, which also fills the build
cache), then PUSHES pushes of a one-line change, each timed from just
before `git push` starts to the first answer through the router that holds
the new text (a thread asks every 10 ms). Every line git prints is
timestamped as it arrives; the hook's headlines split the time:

  receive   push start -> "-----> Building"    (pack sent, hook started,
                                               source archived to the blobstore)
  build     -> "-----> Compressing and uploading the slug"  (the build job
                                               started, fetched the source
                                               and ran the buildpack)
  upload    -> "-----> Creating release"       (slug and cache uploaded, the
                                               build job ended)
  release   -> "-----> Deploying"              (artifact and release made)
  job up    -> "       web.N up"               (the deployer started the new
                                               job and the agent reports it up)
  router    -> first new answer through the router
"""

import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from push_util import PushCluster, User  # noqa: E402

ANCHOR_S = 20.0  # Heroku / Dokku: "tens of seconds" for a trivial app
TARGET_PROCFILE_S = 3.0
PHASES = ("receive", "build", "upload", "release", "job up", "router")
MARKS = (r"^-----> Building ", r"^-----> Compressing and uploading the slug",
         r"^-----> Creating release", r"^-----> Deploying", r"^\s+web\.\d+ up$")
SAMPLE_FILE = {"procfile": "server.js", "nodejs": "server.js", "static": "public/index.html",
               "c": "server.c"}
ORIGINAL = {}  # file -> its text before the first change


class Poll(threading.Thread):
    """Asks the app through the router every 10 ms until an answer holds text."""

    def __init__(self, cluster, app, text):
        super().__init__(daemon=True)
        self.c, self.app, self.text = cluster, app, text
        self.at = None
        self.asked = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            st, body = self.c.get(self.app, timeout=5)
            self.asked += 1
            if st == 200 and self.text in body:
                self.at = time.monotonic()
                return
            self.done.wait(0.01)


def one_push(c, user, repo, app, sample, n, remote):
    hello = f"hello from {sample}"
    f = repo / SAMPLE_FILE[sample]
    orig = ORIGINAL.setdefault(f, f.read_text())
    marker = f"{hello} r{n}"
    f.write_text(orig.replace(hello, marker, 1))
    user.commit(repo, f"r{n}")
    poll = Poll(c, app, marker)
    poll.start()
    p = user.push(repo, remote)
    poll.join(timeout=120)
    poll.done.set()
    if p.rc != 0:
        raise RuntimeError(f"push {n} of {app} failed:\n{p.stderr}")
    if poll.at is None:
        raise RuntimeError(f"{app} never answered with {marker!r} through the router")
    total = poll.at - p.started
    marks = [p.at(m) for m in MARKS]
    if any(m is None for m in marks):
        raise RuntimeError(f"push {n} of {app}: a headline is missing ({marks}):\n{p.stderr}")
    points = [0.0, *marks, total]
    phases = {name: points[i + 1] - points[i] for i, name in enumerate(PHASES)}
    return {"total": total, "push": p.elapsed, "deployed": p.at(r"^=====> .* deployed"),
            "asked": poll.asked, **phases}


def fmt(x):
    return f"{x:6.2f}"


def main():
    if len(sys.argv) != 2:
        print("usage: bench_deploy.py BUILD_DIR", file=sys.stderr)
        return 2
    build = Path(sys.argv[1]).resolve()
    # TERM stops the daemons on the way out, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pushes = int(os.environ.get("PUSHES", "5"))
    samples = os.environ.get("SAMPLES", "procfile nodejs").split()
    remote = {"ssh": "ssh", "http": "pier"}[os.environ.get("TRANSPORT", "ssh")]
    strategy = os.environ.get("STRATEGY", "")  # "" = the app's default (all-at-once)
    keep = os.environ.get("KEEP") == "1"
    tmp = Path(tempfile.mkdtemp(prefix="pier-bench-deploy.", dir=os.environ.get("TMPDIR")))
    tmp.chmod(0o755)
    ok = False
    results = {}
    c = None
    try:
        t0 = time.monotonic()
        c = PushCluster(build, tmp / "cluster")
        print(f"cluster up in {time.monotonic() - t0:.1f} s ({tmp}); router on "
              f"127.0.0.1:{c.router_port}; pushes over {os.environ.get('TRANSPORT', 'ssh')}")
        user = User(c, tmp / "user")
        for sample in samples:
            app = f"bench-{sample}"
            repo = user.repo(app, sample)
            user.create(repo, app, strategy=strategy or None)
            p = user.push(repo, remote)
            if p.rc != 0:
                raise RuntimeError(f"the first push of {app} failed:\n{p.stderr}")
            c.wait_content(app, f"hello from {sample}", timeout=60)
            print(f"{sample}: first push (unmeasured, fills the cache) {p.elapsed:.2f} s")
            rows = []
            for n in range(pushes):
                r = one_push(c, user, repo, app, sample, n, remote)
                rows.append(r)
                print(f"{sample}: push {n + 1}: {r['total']:.2f} s to the new code through "
                      f"the router (git push returned at {r['push']:.2f} s; "
                      + ", ".join(f"{k} {r[k]:.2f}" for k in PHASES) + ")", flush=True)
            results[sample] = rows
        ok = True
    finally:
        if c:
            c.stop()
        if keep or not ok:
            print(f"bench-deploy: logs kept in {tmp}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"p50 over {pushes} pushes, seconds (push start -> the new code answers through "
          "the router):")
    head = f"{'app':10} {'total':>6} {'push':>6} " + " ".join(f"{p:>7}" for p in PHASES)
    print(head)
    print("-" * len(head))
    for sample, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("total", "push", *PHASES)}
        print(f"{sample:10} {fmt(med['total'])} {fmt(med['push'])} "
              + " ".join(f"{med[p]:7.2f}" for p in PHASES))
    print()
    print(f"anchor: Heroku and Dokku take 'tens of seconds' for a trivial app; taken as "
          f"{ANCHOR_S:.0f} s here")
    for sample, rows in results.items():
        med = statistics.median(r["total"] for r in rows)
        line = f"  {sample:10} p50 {med:5.2f} s = {med / ANCHOR_S:.2f}x the anchor"
        if sample == "procfile":
            line += (f"; target < {TARGET_PROCFILE_S:.0f} s: "
                     f"{'met' if med < TARGET_PROCFILE_S else 'NOT met'}")
        print(line)
    if os.environ.get("JSON"):
        Path(os.environ["JSON"]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
