"""Host binds, capabilities and EXTERNAL_IP in real crun jobs (issue 7, part A).

A job record's `mounts` bind host paths into the job (read-only unless
`writeable`), `linux_capabilities` give the job's unprivileged user
capabilities of Docker's default set, and every job gets `EXTERNAL_IP`, the
host record's `ip`. Each test starts a `pierd store` and an agent
(conftest's start_host); the last one runs the whole path: a release made
through the controller's API, placed by the scheduler, run by the agent."""

import hashlib
import json
import os
import socket
import uuid

import pytest

from controller_util import Controller
from test_host import (JOBS, http, kv_put, kv_range, log_msgs, put_job, wait_for,
                       wait_state)

SMALL = {"memory": {"limit": 32 << 20}}
NOBODY = 65534


def run_to_end(agent, name, script, **fields):
    """Runs `sh -c script` as a job without ports; returns (record, log lines)."""
    job_id = put_job(agent, name, ["/bin/sh", "-c", script], resources=SMALL, ports=[], **fields)
    rec = wait_state(agent, job_id, ("down", "crashed"))
    return rec, log_msgs(agent, job_id)


def free_privileged_port():
    """A port below 1024 (the kernel's ip_unprivileged_port_start on this
    machine) nothing listens on."""
    start = int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read())
    if start <= 1:
        pytest.skip("every port is unprivileged here (ip_unprivileged_port_start=0)")
    for port in range(min(start, 1024) - 1, 600, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.fail("no free privileged port")


def test_binds_read_only_and_writeable_and_external_ip(pier_store, start_host, tmp_path):
    agent = start_host(pier_store)
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    (ro / "hello").write_text("hello from the host\n")
    rw.mkdir()
    os.chown(rw, NOBODY, NOBODY)
    script = ("cat /mnt/ro/hello; id -u; "
              "(echo x > /mnt/ro/new) 2>/dev/null && echo RO-WRITTEN || echo ro-refused; "
              "echo written-by-job > /srv/rw/out && echo rw-ok; echo ip=$EXTERNAL_IP")
    rec, msgs = run_to_end(agent, "binds", script, mounts=[
        {"location": str(ro), "target": "/mnt/ro"},
        {"location": str(rw), "target": "/srv/rw", "writeable": True},
    ])
    assert rec.get("exit_status") == 0, (rec, msgs)
    assert "hello from the host" in msgs and str(NOBODY) in msgs, msgs
    assert "ro-refused" in msgs and "RO-WRITTEN" not in msgs, msgs
    assert not (ro / "new").exists()
    assert "rw-ok" in msgs, msgs
    assert (rw / "out").read_text() == "written-by-job\n"
    # EXTERNAL_IP is the host record's ip.
    host_ip = json.loads(agent.record())["ip"]
    assert f"ip={host_ip}" in msgs, (host_ip, msgs)
    # The mount points were made in the agent's own host root.
    assert (agent.data_dir / "host-root" / "mnt" / "ro").is_dir()
    assert (agent.data_dir / "host-root" / "srv" / "rw").is_dir()

    # Without a mount the job sees nothing there; EXTERNAL_IP from the spec
    # does not win over the agent's.
    rec, msgs = run_to_end(agent, "nobinds", "ls /mnt/ro | wc -l; echo ip=$EXTERNAL_IP",
                           env={"EXTERNAL_IP": "6.6.6.6"})
    assert "0" in msgs and f"ip={host_ip}" in msgs, msgs


def test_a_missing_location_fails_the_job_naming_it(pier_store, start_host, tmp_path):
    agent = start_host(pier_store)
    missing = tmp_path / "not-there"
    job_id = put_job(agent, "nowhere", ["/bin/sh", "-c", "echo should-not-run"],
                     resources=SMALL, ports=[],
                     mounts=[{"location": str(missing), "target": "/data"}])
    rec = wait_state(agent, job_id, "failed")
    err = rec.get("host_error") or ""
    assert "mounts[0].location" in err and str(missing) in err, rec
    assert not rec.get("started_at"), rec
    assert job_id not in agent.crun_list()


def test_bad_mounts_and_capabilities_are_refused(pier_store, start_host, tmp_path):
    agent = start_host(pier_store)
    sh = ["/bin/sh", "-c", "echo should-not-run"]
    loc = str(tmp_path)
    bad = [
        ({"mounts": [{"location": loc, "target": "/"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/proc/x"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/sys"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/dev/x"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/app"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/tmp/x"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/.pier"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "data"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/data/../etc"}]}, "mounts[0].target"),
        ({"mounts": [{"location": loc, "target": "/data//x"}]}, "mounts[0].target"),
        ({"mounts": [{"location": "relative/dir", "target": "/data"}]}, "mounts[0].location"),
        ({"mounts": [{"location": loc + "/..", "target": "/data"}]}, "mounts[0].location"),
        ({"mounts": [{"location": loc, "target": "/data", "writeable": "yes"}]},
         "mounts[0].writeable"),
        ({"mounts": [{"location": loc, "target": "/d"}, {"location": loc, "target": "/d/e"}]},
         "mounts[1].target"),
        ({"mounts": {"location": loc, "target": "/data"}}, "mounts"),
        ({"mounts": [{"location": loc, "target": f"/m{i}"} for i in range(17)]}, "mounts"),
        ({"linux_capabilities": ["CAP_SYS_ADMIN"]}, "linux_capabilities[0]"),
        ({"linux_capabilities": ["CAP_NET_ADMIN"]}, "linux_capabilities[0]"),
        ({"linux_capabilities": "CAP_CHOWN"}, "linux_capabilities"),
    ]
    # Through the API: 400 naming the field, nothing written.
    for fields, field in bad:
        status, _, body = http("POST", agent.url + "/host/jobs", {"args": sh, **fields})
        assert status == 400, (fields, status, body[:500])
        msg = json.loads(body)
        assert msg.get("code") == "validation_error" and field in msg.get("message", ""), \
            (field, msg)
    # Written into the store (a scheduler's way): failed with the reason.
    for i, (fields, field) in enumerate(bad[:3] + bad[-3:]):
        job_id = f"{agent.id}-bad{i}"
        kv_put(agent.store, JOBS + job_id, {"id": job_id, "host_id": agent.id, "args": sh,
                                            "resources": SMALL, **fields})
        rec = wait_state(agent, job_id, "failed")
        assert field in (rec.get("host_error") or ""), (field, rec)
    assert not agent.crun_list()


def test_net_bind_service_lets_an_unprivileged_job_bind_a_low_port(pier_store, start_host):
    agent = start_host(pier_store)
    port = free_privileged_port()
    script = ("import os, socket\n"
              "print('uid', os.getuid())\n"
              "s = socket.socket()\n"
              "try:\n"
              f"    s.bind(('127.0.0.1', {port})); s.listen(1); print('bound')\n"
              "except OSError as e:\n"
              "    print('refused', e.errno)\n")
    with_cap = put_job(agent, "lowport", ["python3", "-c", script], resources=SMALL, ports=[],
                       linux_capabilities=["CAP_NET_BIND_SERVICE"])
    rec = wait_state(agent, with_cap, "down")
    msgs = log_msgs(agent, with_cap)
    assert f"uid {NOBODY}" in msgs and "bound" in msgs, (rec, msgs)
    without = put_job(agent, "lowport-nocap", ["python3", "-c", script], resources=SMALL,
                      ports=[])
    wait_state(agent, without, "down")
    msgs = log_msgs(agent, without)
    assert f"uid {NOBODY}" in msgs and "refused 13" in msgs, msgs
    # The capability is the job's alone: its effective set has it, another
    # job's has none.
    caps = ("grep -E '^Cap(Eff|Amb)' /proc/self/status")
    _, msgs = run_to_end(agent, "capstatus", caps, linux_capabilities=["CAP_NET_BIND_SERVICE"])
    eff = {line.split()[0]: int(line.split()[1], 16) for line in msgs}
    assert eff["CapEff:"] == 1 << 10 and eff["CapAmb:"] == 1 << 10, msgs  # CAP_NET_BIND_SERVICE
    _, msgs = run_to_end(agent, "capstatus-none", caps)
    eff = {line.split()[0]: int(line.split()[1], 16) for line in msgs}
    assert eff["CapEff:"] == 0 and eff["CapAmb:"] == 0, msgs


def test_a_stack_target_must_exist_and_is_never_made(pier_store, start_host, built_stack,
                                                     tmp_path):
    agent = start_host(pier_store, args=["--stack", str(built_stack)])
    share = tmp_path / "share"
    share.mkdir(mode=0o755)
    (share / "f").write_text("on the stack\n")
    target = f"/pier-mount-test-{os.urandom(3).hex()}"
    job_id = put_job(agent, "stackmiss", ["/bin/sh", "-c", "echo should-not-run"],
                     resources=SMALL, ports=[],
                     mounts=[{"location": str(share), "target": target}])
    rec = wait_state(agent, job_id, "failed")
    err = rec.get("host_error") or ""
    assert "mounts[0].target" in err and "not in the stack" in err, rec
    assert not (built_stack / target[1:]).exists()
    # /srv is in every Debian root: bound there, the job reads it.
    rec, msgs = run_to_end(agent, "stackok", "cat /srv/f",
                           mounts=[{"location": str(share), "target": "/srv"}])
    assert rec.get("exit_status") == 0 and "on the stack" in msgs, (rec, msgs)
    # The pier:host stack ("host") makes its mount point in the host root.
    rec, msgs = run_to_end(agent, "hostok", f"cat {target}/f", artifact={"stack": "host"},
                           mounts=[{"location": str(share), "target": target}])
    assert rec.get("exit_status") == 0 and "on the stack" in msgs, (rec, msgs)
    assert not (built_stack / target[1:]).exists()


def test_artifact_pierd_binds_the_agents_own_pierd(pier_store, start_host, pier_build):
    """artifact.pierd: the agent's own executable, read-only at /app/pierd,
    over an empty mount point file in the job's app/; no slug fetched."""
    agent = start_host(pier_store)
    exe = pier_build / "pierd"
    want_sha = hashlib.sha256(exe.read_bytes()).hexdigest()
    script = ("/app/pierd --version; echo status=$?; /app/pierd discoverd --help | head -n 1; "
              "sha256sum /app/pierd; "
              "(echo x > /app/pierd) 2>/dev/null && echo PIERD-WRITTEN || echo ro-refused; "
              "touch /app/other && echo app-writable")
    # A sanitizer build's pierd: LeakSanitizer needs ptrace, which a job may not use.
    rec, msgs = run_to_end(agent, "pierd", script, artifact={"pierd": True, "stack": "host"},
                           env={"ASAN_OPTIONS": "detect_leaks=0"})
    assert rec.get("exit_status") == 0, (rec, msgs)
    assert "pierd 0.1.0" in msgs and "status=0" in msgs, msgs
    assert "usage: pierd discoverd [flags]" in msgs, msgs
    assert f"{want_sha}  /app/pierd" in msgs, (want_sha, msgs)
    assert "ro-refused" in msgs and "PIERD-WRITTEN" not in msgs, msgs
    assert "app-writable" in msgs, msgs
    assert exe.stat().st_size > 0 and hashlib.sha256(exe.read_bytes()).hexdigest() == want_sha

    # Without artifact.pierd there is no /app/pierd.
    rec, msgs = run_to_end(agent, "nopierd", "test -e /app/pierd && echo HAS-PIERD || echo none")
    assert rec.get("exit_status") == 0 and "none" in msgs and "HAS-PIERD" not in msgs, msgs


def test_artifact_pierd_with_a_slug_is_refused(pier_store, start_host, tmp_path):
    agent = start_host(pier_store)
    sh = ["/bin/sh", "-c", "echo should-not-run"]
    slug = tmp_path / "s.tgz"
    slug.write_bytes(b"")
    art = {"pierd": True, "slug": f"file://{slug}"}
    status, _, body = http("POST", agent.url + "/host/jobs", {"args": sh, "artifact": art})
    assert status == 400, (status, body[:500])
    msg = json.loads(body)
    assert msg.get("code") == "validation_error" and "pierd" in msg.get("message", "") \
        and "slug" in msg["message"], msg
    status, _, body = http("POST", agent.url + "/host/jobs",
                           {"args": sh, "artifact": {"pierd": "yes"}})
    assert status == 400 and "pierd" in json.loads(body).get("message", ""), body[:500]
    # Written into the store: failed with the reason, nothing run.
    job_id = f"{agent.id}-pierdslug"
    kv_put(agent.store, JOBS + job_id, {"id": job_id, "host_id": agent.id, "args": sh,
                                        "resources": SMALL, "artifact": art})
    rec = wait_state(agent, job_id, "failed")
    assert "exclude each other" in (rec.get("host_error") or ""), rec
    assert not rec.get("started_at"), rec
    assert not agent.crun_list()


def test_release_with_mounts_runs_through_controller_and_scheduler(pier_store, start_host,
                                                                    start_pierd, tmp_path):
    """POST a pier:host artifact and a release whose process type has mounts
    and capabilities; the controller keeps them as given, the scheduler
    copies them into the job, and the agent honours them."""
    agent = start_host(pier_store)
    ctl = Controller(start_pierd, pier_store)
    start_pierd("scheduler", args=["--store", pier_store, "--ttl", "3"])
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)

    st, art = ctl.post("/artifacts", {"type": "flynn", "uri": "pier:host"})
    assert st == 200 and art["uri"] == "pier:host", (st, art)
    st, err = ctl.post("/artifacts", {"type": "flynn", "uri": "pier:nothing"})
    assert st == 400 and "uri" in err["message"], (st, err)
    # A file artifact may be the host's pierd, and no other pier: uri.
    st, pd = ctl.post("/artifacts", {"type": "file", "uri": "pier:pierd"})
    assert st == 200 and pd["type"] == "file" and pd["uri"] == "pier:pierd", (st, pd)
    st, err = ctl.post("/artifacts", {"type": "file", "uri": "pier:pierdx"})
    assert st == 400 and err["code"] == "validation_error", (st, err)
    assert "pier:pierdx" in err["message"], err
    # A client may choose the id (as Flynn's bootstrap does); once.
    planned = str(uuid.uuid4())
    st, art2 = ctl.post("/artifacts", {"id": planned, "type": "flynn", "uri": "pier:host"})
    assert st == 200 and art2["id"] == planned, (st, art2)
    st, err = ctl.post("/artifacts", {"id": planned, "type": "file", "uri": "file:///x.tgz"})
    assert st == 409 and err["code"] == "object_exists", (st, err)
    st, other = ctl.post("/artifacts", {"id": "not-a-uuid", "type": "flynn", "uri": "pier:host"})
    assert st == 200 and other["id"] not in ("not-a-uuid", planned), (st, other)
    assert ctl.get(f"/artifacts/{planned}")[1]["type"] == "flynn"
    st, app = ctl.post("/apps", {"name": "sysmounts"})
    assert st == 200, (st, app)
    mounts = [{"location": str(data), "target": "/data", "writeable": True}]
    caps = ["CAP_NET_BIND_SERVICE"]
    script = "echo $FLYNN_PROCESS_TYPE > /data/seen; trap 'exit 0' TERM; sleep 1000 & wait"
    proc = {"args": ["/bin/sh", "-c", script], "mounts": mounts, "linux_capabilities": caps,
            "resources": {"memory": {"limit": 32 << 20}}}
    # Malformed values: 400 naming the field, nothing stored.
    for bad, field in [({"mounts": [{"location": str(data), "target": "/proc/x"}]},
                        "mounts[0].target"),
                       ({"mounts": "x"}, "mounts"),
                       ({"linux_capabilities": ["CAP_SYS_ADMIN"]}, "linux_capabilities[0]")]:
        st, err = ctl.post("/releases", {"app_id": app["id"], "artifacts": [art["id"]],
                                         "processes": {"app": {**proc, **bad}}})
        assert st == 400 and err["code"] == "validation_error", (st, err)
        assert field in err["message"] and "processes.app" in err["message"], err
    planned = str(uuid.uuid4())
    st, rel = ctl.post("/releases", {"id": planned, "app_id": app["id"],
                                     "artifacts": [art["id"]], "processes": {"app": proc}})
    assert st == 200 and rel["id"] == planned, (st, rel)
    st, err = ctl.post("/releases", {"id": planned, "app_id": app["id"]})
    assert st == 409 and err["code"] == "object_exists", (st, err)
    st, other = ctl.post("/releases", {"id": 7, "app_id": app["id"]})
    assert st == 200 and other["id"] != planned, (st, other)
    st, got = ctl.get(f"/releases/{rel['id']}")
    assert got["processes"]["app"]["mounts"] == mounts, got
    assert got["processes"]["app"]["linux_capabilities"] == caps, got

    st, _ = ctl.put(f"/apps/{app['id']}/formations/{rel['id']}", {"processes": {"app": 1}})
    assert st == 200
    job = wait_for(lambda: next((j for j in app_jobs(pier_store, app["id"])
                                 if j.get("state") == "up"), None),
                   60, "the scheduler's job up", agent)
    assert job["mounts"] == mounts and job["linux_capabilities"] == caps, job
    assert job["artifact"]["stack"] == "host", job
    wait_for(lambda: (data / "seen").exists(), 20, "the job writing /data/seen", agent)
    assert (data / "seen").read_text() == "app\n"
    st, _ = ctl.put(f"/apps/{app['id']}/formations/{rel['id']}", {"processes": {"app": 0}})
    assert st == 200
    wait_state(agent, job["id"], "down", timeout=30)


def app_jobs(store, app_id):
    """The job records of app_id in the store."""
    jobs = (json.loads(v) for _, v, _ in kv_range(store, JOBS))
    return [j for j in jobs if j.get("app") == app_id]
