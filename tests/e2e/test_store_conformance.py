"""The store client's conformance suite against both servers: pierd store
and etcd must behave alike for everything pier asks of them."""

import os
import subprocess

import pytest

from conftest import sanitizer_reports


@pytest.mark.parametrize("server", ["pier", "etcd"])
def test_store_client_conformance(server, pier_build, request):
    url = request.getfixturevalue("pier_store" if server == "pier" else "etcd")
    exe = pier_build / "tests" / "conformance" / "test_store_client"
    assert exe.exists(), f"{exe} has not been built"
    env = dict(os.environ, PIER_STORE=url, UBSAN_OPTIONS="print_stacktrace=1")
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=300)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, f"conformance against {server} failed:\n{output}"
    assert not sanitizer_reports(proc.stderr), f"sanitizer report in the client:\n{output}"
