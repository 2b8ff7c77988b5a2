"""Cluster mode on one machine: a head and nodes, each with its own node service and store
(``trainkit.testing.LocalCluster``), talking over loopback tcp with signed frames."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import psutil
import pytest

import trainkit as tk
from trainkit.exceptions import InfeasibleError
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.runtime import remove_placement_group
from trainkit.testing import LocalCluster

MB = 1 << 20
# The nodes' idle workers outlive each test (they are the pool the next test uses); the
# fixture checks instead that nothing at all is left once the cluster stops.
pytestmark = pytest.mark.leaking("processes")


@pytest.fixture(scope="module")
def cluster():
    before = set(psutil.Process().children(recursive=True))
    with LocalCluster(num_cpus=1) as c:
        gpu_node = c.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 1})
        cpu_node = c.add_node(num_cpus=1, resources={"cpu_node": 1})
        c.connect()
        c.gpu_node, c.cpu_node = gpu_node, cpu_node
        yield c
    deadline = time.monotonic() + 10
    while (left := set(psutil.Process().children(recursive=True)) - before) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left after the cluster stopped: {left}"


@tk.remote(num_cpus=0)
def where() -> str:
    return os.environ["TRAINKIT_NODE_ID"]


@tk.remote(num_cpus=0)
def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


@tk.remote(num_cpus=0)
def make(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def _wait_idle(timeout: float = 10.0) -> tuple[dict[str, float], dict[str, float]]:
    deadline = time.monotonic() + timeout
    while True:
        total = {k: v for k, v in tk.cluster_resources().items() if k != "object_store_memory"}
        avail = tk.available_resources()
        if all(avail.get(k, 0.0) == v for k, v in total.items() if v) \
                or time.monotonic() > deadline:
            return total, avail
        time.sleep(0.1)


def test_nodes_and_their_resources_add_up(cluster):
    nodes = tk.nodes()
    assert sorted(n["NodeID"] for n in nodes) == sorted(
        [cluster.head_node_id, cluster.gpu_node, cluster.cpu_node])
    res = tk.cluster_resources()
    assert (res["CPU"], res["GPU"], res["gpu_node"], res["cpu_node"]) == (4.0, 2.0, 1.0, 1.0)
    assert res["object_store_memory"] == 3 * 256 * MB


def test_custom_resources_and_gpus_pin_work_to_node_kinds(cluster):
    assert tk.get(where.options(resources={"gpu_node": 0.1}).remote()) == cluster.gpu_node
    assert tk.get(where.options(resources={"cpu_node": 0.1}).remote()) == cluster.cpu_node

    @tk.remote(num_gpus=1)
    def gpu_task() -> tuple[str, str, list[int]]:
        return (os.environ["TRAINKIT_NODE_ID"], os.environ["CUDA_VISIBLE_DEVICES"],
                tk.get_gpu_ids())

    node, visible, ids = tk.get(gpu_task.remote())
    assert node == cluster.gpu_node
    assert visible == ",".join(map(str, ids)) and len(ids) == 1


def _bundle_nodes(pg) -> list[str]:
    refs = [where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=i)).remote()
        for i in range(len(pg.bundle_specs))]
    return tk.get(refs, timeout=30)


@pytest.mark.parametrize(("strategy", "n", "distinct"), [
    ("STRICT_SPREAD", 3, 3), ("SPREAD", 2, 2), ("STRICT_PACK", 2, 1), ("PACK", 2, 1)])
def test_placement_group_strategies_across_nodes(cluster, strategy, n, distinct):
    pg = placement_group([{"CPU": 1}] * n, strategy=strategy)
    try:
        assert pg.wait(timeout_seconds=30)
        nodes = _bundle_nodes(pg)
        assert len(set(nodes)) == distinct
        if strategy == "STRICT_PACK":  # only the GPU node has 2 CPUs
            assert nodes == [cluster.gpu_node] * 2
    finally:
        remove_placement_group(pg)


def test_strict_spread_over_more_bundles_than_nodes_is_infeasible(cluster):
    with pytest.raises(InfeasibleError, match="STRICT_SPREAD"):
        placement_group([{"CPU": 0.5}] * 4, strategy="STRICT_SPREAD")


@pytest.mark.parametrize("size", [10, 150_000, 10 * MB + 3, 64 * MB])
def test_objects_cross_nodes_bit_exact_both_ways(cluster, size):
    a = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8)
    ref = tk.put(a)  # on the head node
    assert tk.get(digest.options(resources={"cpu_node": 0.1}).remote(ref)) == _sha(a)
    made = make.options(resources={"cpu_node": 0.1}).remote(size, size + 1)  # on cpu_node
    b = tk.get(made)
    expected = np.random.default_rng(size + 1).integers(0, 255, size, dtype=np.uint8)
    assert np.array_equal(b, expected)
    # node to node, neither of them the driver's
    assert tk.get(digest.options(resources={"gpu_node": 0.1}).remote(made)) == _sha(expected)


def test_pulled_copies_are_freed_with_their_readers(cluster):
    a = np.ones(32 * MB, dtype=np.uint8)
    ref = tk.put(a)
    for _ in range(3):
        assert tk.get(digest.options(resources={"cpu_node": 0.1}).remote(ref)) == _sha(a)
    del ref
    # The node's store holds nothing once every reader is done (its copies are dropped).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        used = _node_store_used(cluster.cpu_node)
        if used == 0:
            break
        time.sleep(0.1)
    assert _node_store_used(cluster.cpu_node) == 0


def _node_store_used(node_id: str) -> int:
    from trainkit.runtime._builtin_backend import cluster_info as _cluster_info

    for n in _cluster_info()["nodes"]:
        if n["node_id"] == node_id:
            return int(n["store_used"])
    raise AssertionError(node_id)


def test_actor_calls_across_nodes_are_direct(cluster):
    @tk.remote(num_cpus=0, resources={"cpu_node": 0.1})
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self, k: int) -> tuple[int, str]:
            self.n += k
            return self.n, os.environ["TRAINKIT_NODE_ID"]

    c = Counter.remote()
    assert tk.get([c.add.remote(1) for _ in range(50)])[-1] == (50, cluster.cpu_node)

    @tk.remote(num_cpus=0, resources={"gpu_node": 0.1})
    def call_from_gpu_node(h) -> int:
        return tk.get(h.add.remote(10))[0]

    assert tk.get(call_from_gpu_node.remote(c)) == 60
    tk.kill(c)


def test_worker_output_reaches_the_driver_prefixed_with_its_node(cluster, capsys):
    @tk.remote(num_cpus=0, resources={"cpu_node": 0.1})
    def shout() -> None:
        print("hello from the cpu node", flush=True)

    tk.get(shout.remote())
    deadline = time.monotonic() + 10
    out = ""
    while "hello from the cpu node" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
        out += capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "hello from the cpu node" in ln)
    assert "node=127.0.0.1" in line and "shout" in line


def test_resources_balance_once_idle(cluster):
    total, avail = _wait_idle()
    assert {k: avail.get(k, 0.0) for k in total} == total
