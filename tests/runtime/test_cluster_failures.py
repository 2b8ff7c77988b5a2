"""Cluster failures: a node's service SIGKILLed mid-work, and the head dying."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

import trainkit as tk
from trainkit.exceptions import ObjectLostError
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.testing import LocalCluster


def _wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _idle_balanced() -> bool:
    total = {k: v for k, v in tk.cluster_resources().items() if k != "object_store_memory"}
    avail = tk.available_resources()
    return all(avail.get(k, 0.0) == v for k, v in total.items() if v)


@tk.remote(num_cpus=0)
class Where:
    def node(self) -> str:
        return os.environ["TRAINKIT_NODE_ID"]


def test_node_death_retries_tasks_restarts_actors_and_loses_its_objects(tmp_path):
    with LocalCluster(num_cpus=1) as c:
        doomed = c.add_node(num_cpus=1, resources={"w": 1})
        c.connect()
        actor = Where.options(resources={"w": 0.1}, max_restarts=1).remote()
        assert tk.get(actor.node.remote()) == doomed

        @tk.remote(num_cpus=0, resources={"w": 0.1})
        def blob() -> np.ndarray:
            return np.arange(1 << 20, dtype=np.int64)  # 8 MB: stored on its node only

        lost = blob.remote()
        tk.wait([lost])
        started = tmp_path / "started"

        @tk.remote(resources={"w": 0.5}, max_retries=2)
        def slow() -> str:
            with open(started, "a") as f:
                f.write(os.environ["TRAINKIT_NODE_ID"] + "\n")
            time.sleep(2)
            return os.environ["TRAINKIT_NODE_ID"]

        result = slow.remote()
        _wait_for(started.exists, 30, "the task to start")
        survivor = c.add_node(num_cpus=1, resources={"w": 1})
        killed_at = time.monotonic()
        c.remove_node(doomed)

        assert tk.get(result, timeout=60) == survivor  # retried on the survivor
        assert started.read_text().split() == [doomed, survivor]
        assert tk.get(actor.node.remote(), timeout=60) == survivor  # restarted there
        assert time.monotonic() - killed_at < 15
        with pytest.raises(ObjectLostError):
            tk.get(lost, timeout=30)
        assert [n["NodeID"] for n in tk.nodes()].count(doomed) == 0
        tk.kill(actor)
        _wait_for(_idle_balanced, 15, "available == total")


def test_placement_group_bundles_on_a_dead_node_are_rescheduled(tmp_path):
    with LocalCluster(num_cpus=1) as c:
        a = c.add_node(num_cpus=1, resources={"w": 1})
        b = c.add_node(num_cpus=1, resources={"w": 1})
        c.connect()
        pg = placement_group([{"w": 0.5}] * 2, strategy="STRICT_SPREAD")
        assert pg.wait(timeout_seconds=30)
        actors = [Where.options(max_restarts=2, max_task_retries=3,
                                scheduling_strategy=PlacementGroupSchedulingStrategy(
                                    placement_group=pg, placement_group_bundle_index=i)).remote()
                  for i in range(2)]
        assert sorted(tk.get([h.node.remote() for h in actors])) == sorted([a, b])
        c.remove_node(a)
        replacement = c.add_node(num_cpus=1, resources={"w": 1})
        # The group lost a bundle, so it is reserved again whole (on b and the new node) and
        # both actors restart in it; calls in flight meanwhile are retried.
        _wait_for(lambda: sorted(tk.get([h.node.remote() for h in actors], timeout=60))
                  == sorted([b, replacement]), 60, "the group's actors on b and the new node")
        for h in actors:
            tk.kill(h)
        from trainkit.runtime import remove_placement_group

        remove_placement_group(pg)
        _wait_for(_idle_balanced, 15, "available == total")


@pytest.mark.leaking("processes")  # checked below: everything the head started is gone
def test_when_the_head_dies_every_node_and_worker_exits(tmp_path):
    with LocalCluster(num_cpus=1, head_timeout_s=2) as c:
        c.add_node(num_cpus=1, resources={"w": 1})
        c.connect()

        @tk.remote(num_cpus=0, resources={"w": 0.1})
        def pid() -> int:
            return os.getpid()

        worker = tk.get(pid.remote())
        node_pids = list(c.node_pids().values())
        c.disconnect()
        procs = [psutil.Process(p) for p in [worker, *node_pids]]
        procs += [ch for p in procs for ch in p.children(recursive=True)]
        c.kill_head()
        started = time.monotonic()
        _, alive = psutil.wait_procs(procs, timeout=15)
        assert not alive, f"still running 15 s after the head died: {alive}"
        assert time.monotonic() - started < 15
