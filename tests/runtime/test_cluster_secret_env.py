"""The cluster secret is in no process's environment on a real LocalCluster: not the node
services', the forkservers', the workers', nor a task's or the processes a task starts, even
when the process that launches the services has it in its own environment (as a shell that
runs `trainkit start` with TRAINKIT_CLUSTER_SECRET set does). /proc/<pid>/environ shows what
a process started with, so a secret removed from os.environ later would still show there.
"""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

import trainkit as tk
from trainkit.runtime.core import context as _context
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.testing import LocalCluster

pytestmark = pytest.mark.leaking("processes")  # idle pool workers; the fixture checks the end

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def cluster(two_node_cluster: LocalCluster) -> LocalCluster:
    return two_node_cluster




@tk.remote(num_cpus=0, resources={"b": 0.1})
def _environment_on_b(secret: str) -> dict[str, Any]:
    return _look_at_environment(secret)


@tk.remote(num_cpus=0)
def _environment_on_head(secret: str) -> dict[str, Any]:
    return _look_at_environment(secret)


def _look_at_environment(secret: str) -> dict[str, Any]:
    import subprocess

    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    return {"pid": os.getpid(), "in_environ": SECRET_ENV in os.environ
            or any(secret in v for v in os.environ.values()), "in_child": secret in child}


@tk.remote(num_cpus=0)
class _Holder:
    def environment(self, secret: str) -> dict[str, Any]:
        return _look_at_environment(secret)


def test_the_secret_is_in_no_environment_of_the_cluster(cluster: LocalCluster) -> None:
    secret = cluster.secret.decode()
    holder = _Holder.remote()  # type: ignore[attr-defined]
    seen = tk.get([_environment_on_b.remote(secret), _environment_on_head.remote(secret),
                   holder.environment.remote(secret)], timeout=DEADLINE_S)
    for task in seen:
        assert not task["in_environ"] and not task["in_child"], task
    procs = cluster.processes()
    pids = {p.pid for p in procs}
    assert {task["pid"] for task in seen} <= pids
    names = " ".join(" ".join(p.cmdline()) for p in procs)
    assert "trainkit.runtime.node.node_service" in names and "trainkit.runtime.node.zygote" in names
    for p in procs:
        with open(f"/proc/{p.pid}/environ", "rb") as f:
            environ = f.read()
        assert cluster.secret not in environ, p.cmdline()
        assert SECRET_ENV.encode() not in environ, p.cmdline()
    del holder


def test_a_secret_in_the_launcher_environment_goes_no_further(
        cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with `trainkit start` run in a shell that has TRAINKIT_CLUSTER_SECRET set."""
    monkeypatch.setenv(SECRET_ENV, cluster.secret.decode())
    node_id = cluster.add_node(num_cpus=1, resources={"c": 1})
    try:
        from trainkit.runtime._builtin_backend import cluster_info as _cluster_info

        # A driver attached to the head does not refresh the totals its feasibility check
        # uses when a node joins (it would refuse "c"): refresh them here.
        core = _context.core
        assert core is not None
        core.cluster_resources = _cluster_info()["total"]
        on_c = _environment_on_b.options(resources={"c": 0.1})
        assert not tk.get(on_c.remote(cluster.secret.decode()), timeout=DEADLINE_S)[
            "in_environ"]
        service = psutil.Process(cluster.node_pids()[node_id])
        procs = [service, *service.children(recursive=True)]
        assert len(procs) >= 3  # the service, its forkserver, a worker
        for p in procs:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                assert cluster.secret not in f.read(), p.cmdline()
    finally:
        cluster.remove_node(node_id)
