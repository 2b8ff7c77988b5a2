"""GPUs, custom resources and placement groups, on faked GPUs."""

from __future__ import annotations

import os
import time

import pytest

import trainkit as tk
from trainkit.exceptions import InfeasibleError
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.runtime import remove_placement_group


@tk.remote
def gpu_info():
    return tk.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@tk.remote
def hold(s):
    time.sleep(s)
    return tk.get_gpu_ids()


def test_gpu_ids_are_exact_and_visible_devices_match(runtime):
    runtime(num_cpus=4, num_gpus=2)
    assert tk.cluster_resources()["GPU"] == 2
    ids, visible = tk.get(gpu_info.options(num_gpus=1).remote())
    assert len(ids) == 1 and visible == str(ids[0])
    both = tk.get([hold.options(num_gpus=1).remote(0.5) for _ in range(2)])
    assert sorted(i for ids in both for i in ids) == [0, 1]  # two 1.0 never share
    ids, visible = tk.get(gpu_info.options(num_gpus=2).remote())
    assert sorted(ids) == [0, 1] and visible in ("0,1", "1,0")


def test_fractional_gpus_pack_on_one_device(runtime):
    runtime(num_cpus=4, num_gpus=2)

    @tk.remote(num_gpus=0.5)
    class Half:
        def ids(self):
            return tk.get_gpu_ids()

    a, b = Half.remote(), Half.remote()
    assert tk.get(a.ids.remote()) == tk.get(b.ids.remote())
    assert tk.available_resources().get("GPU") == 1.0


def test_custom_resources_and_queueing(runtime):
    runtime(num_cpus=2, resources={"slot": 1})
    start = time.time()
    refs = [hold.options(num_cpus=0, resources={"slot": 1}).remote(0.4) for _ in range(3)]
    tk.get(refs, timeout=30)
    assert time.time() - start >= 1.1  # one slot: the three ran one after another
    with pytest.raises(InfeasibleError, match="slot"):
        hold.options(resources={"slot": 2}).remote(0)
    with pytest.raises(ValueError, match="num_gpus"):
        hold.options(resources={"GPU": 1}).remote(0)


def test_placement_group_gang_reserves_and_places(runtime):
    runtime(num_cpus=4, num_gpus=4)
    pg = placement_group([{"CPU": 1, "GPU": 1}] * 4, strategy="PACK")
    assert pg.wait(10)
    assert tk.available_resources().get("GPU", 0) == 0

    @tk.remote(num_gpus=1, num_cpus=1)
    class Rank:
        def ids(self):
            return tk.get_gpu_ids()

    ranks = [Rank.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(4)]
    ids = tk.get([r.ids.remote() for r in ranks], timeout=30)
    assert sorted(i for x in ids for i in x) == [0, 1, 2, 3]
    # A second group cannot be reserved while the first holds everything: all or nothing.
    pg2 = placement_group([{"GPU": 1}] * 2)
    assert not pg2.wait(0.5)
    remove_placement_group(pg)
    with pytest.raises(tk.exceptions.ActorDiedError):
        tk.get(ranks[0].ids.remote(), timeout=20)
    assert pg2.wait(10)
    remove_placement_group(pg2)


def test_placement_group_errors(runtime):
    runtime(num_cpus=2, num_gpus=1)
    with pytest.raises(ValueError, match="STRICT_SPREAD"):
        placement_group([{"CPU": 1}], strategy="SPREADY")
    with pytest.raises(InfeasibleError, match="bundle 1"):
        placement_group([{"CPU": 1}, {"GPU": 2}])
    with pytest.raises(InfeasibleError):
        placement_group([{"CPU": 1}] * 2, strategy="STRICT_SPREAD")
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(InfeasibleError, match="bundle"):
        hold.options(num_cpus=2, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=0)).remote(0)
    remove_placement_group(pg)


def test_task_in_placement_group_bundle(runtime):
    runtime(num_cpus=2)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    tk.get(pg.ready(), timeout=10)
    strat = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=1)
    assert tk.get(hold.options(scheduling_strategy=strat).remote(0)) == []
    remove_placement_group(pg)


def test_nodes_and_resources_views(runtime):
    runtime(num_cpus=2, num_gpus=1, resources={"x": 3})
    (node,) = tk.nodes()
    assert node["Alive"] and node["Resources"]["x"] == 3 and node["Resources"]["CPU"] == 2
    assert tk.cluster_resources()["GPU"] == 1
    assert tk.cluster_resources()["object_store_memory"] > 0
    assert tk.get_gpu_ids() == []


def test_removing_a_group_fails_tasks_queued_in_it(runtime):
    runtime(num_cpus=2)
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)
    strat = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
    running = hold.options(scheduling_strategy=strat).remote(30)
    queued = hold.options(scheduling_strategy=strat).remote(0)
    time.sleep(0.5)
    remove_placement_group(pg)
    for ref in (running, queued):
        with pytest.raises(Exception, match=r"placement group|died|removed"):
            tk.get(ref, timeout=20)
    assert tk.available_resources()["CPU"] == 2
