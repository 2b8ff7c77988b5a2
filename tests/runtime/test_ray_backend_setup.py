"""The Ray backend's setup: joining a Ray cluster someone else started, and the errors of a
missing Ray or an unknown backend (no runtime of the module's own is running here)."""

from __future__ import annotations

import os

import pytest

import trainkit as tk
from trainkit.exceptions import InfeasibleError


@tk.remote
def add(a: int, b: int) -> int:
    return a + b


def test_without_ray_the_ray_backend_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'trainkit\[ray\]'"):
        tk.init(backend="ray")
    assert not tk.is_initialized()


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"'builtin'.*'ray'"):
        tk.init(backend="spark")


@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None,
                    reason="Ray is not installed")
@pytest.mark.leaking("env", "threads")  # Ray sets variables and leaves threads in the driver
def test_joins_an_existing_ray_cluster(monkeypatch):
    """The point of the backend: a Ray cluster someone else started (`ray start --head`)."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray_cli is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="tkray", dir="/tmp")  # Ray's socket paths must be short
    # Ray 2.60's token auth keeps its token under the default temp dir: this private
    # cluster (its own temp dir) runs without it.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # --block: the cluster lives as long as this process, so stopping it stops only this
    # cluster (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--node-ip-address=127.0.0.1", '--resources={"ext": 1}', "--include-dashboard=false",
         f"--temp-dir={temp}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        assert head.stdout is not None
        for line in head.stdout:
            if "Ray runtime started" in line or time.monotonic() > deadline:
                break
        tk.init(backend="ray", address=f"127.0.0.1:{port}")
        try:
            assert tk.cluster_resources()["ext"] == 1.0
            assert tk.get(add.options(resources={"ext": 1}).remote(40, 2), timeout=60) == 42
            with pytest.raises(InfeasibleError):
                add.options(resources={"ext": 2}).remote(1, 1)
        finally:
            tk.shutdown()
    finally:
        head.terminate()
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
