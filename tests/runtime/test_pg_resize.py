"""Resizing a live placement group end to end: pg.add_bundles / pg.remove_bundles on the
built-in runtime, with actors in the other bundles alive throughout."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import trainkit as tk
from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import InfeasibleError
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.runtime import placement_group_table
from trainkit.runtime import remove_placement_group


@tk.remote(num_cpus=1)
class Pid:
    def pid(self) -> int:
        return os.getpid()


def _in_bundle(pg: object, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)


def test_add_and_remove_bundles_leave_the_other_bundles_actors_alone(
    runtime: Callable[..., None],
) -> None:
    runtime(num_cpus=3)
    start = tk.available_resources()
    pg = placement_group([{"CPU": 1}] * 2, strategy="PACK")
    assert pg.wait(30)
    a0 = Pid.options(scheduling_strategy=_in_bundle(pg, 0)).remote()
    # max_restarts: a removed bundle's actor dies for good, as with remove_placement_group
    a1 = Pid.options(scheduling_strategy=_in_bundle(pg, 1), max_restarts=2).remote()
    pid0 = tk.get(a0.pid.remote(), timeout=60)
    tk.get(a1.pid.remote(), timeout=60)
    node = placement_group_table(pg)["bundles_to_node_id"][0]

    assert tk.get(pg.add_bundles([{"CPU": 1}]), timeout=30) == [2]
    row = placement_group_table(pg)
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}, 2: {"CPU": 1.0}}
    assert row["bundles_to_node_id"] == {0: node, 1: node, 2: node}
    assert row["state"] == "CREATED"
    assert (pg.bundle_indices, pg.bundle_count) == ([0, 1, 2], 3)
    a2 = Pid.options(scheduling_strategy=_in_bundle(pg, 2)).remote()
    assert tk.get(a2.pid.remote(), timeout=60) != pid0

    pg.remove_bundles([1])
    row = placement_group_table(pg)
    assert row["bundles"] == {0: {"CPU": 1.0}, 2: {"CPU": 1.0}}  # indices are kept
    assert row["bundles_to_node_id"] == {0: node, 2: node}
    assert tk.available_resources() == {**start, "CPU": 1.0}  # bundle 1's CPU is free
    with pytest.raises(ActorDiedError, match="remove_bundles"):
        tk.get(a1.pid.remote(), timeout=60)
    assert tk.get(a0.pid.remote(), timeout=60) == pid0  # same process, still answering
    tk.get(a2.pid.remote(), timeout=60)
    assert pg.wait(30)

    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert tk.available_resources() == start


def test_bad_resizes_fail_at_the_call_and_change_nothing(rt: None) -> None:
    pg = placement_group([{"CPU": 1}] * 2, strategy="STRICT_PACK")
    assert pg.wait(30)
    before = placement_group_table(pg)
    with pytest.raises(InfeasibleError, match="STRICT_PACK keeps every bundle on node"):
        pg.add_bundles([{"CPU": 1}])  # the node has 2 CPUs, both in the group
    with pytest.raises(ValueError, match=r"bundles is \[\], but add_bundles needs"):
        pg.add_bundles([])
    with pytest.raises(ValueError, match=r"bundle index 5 is not a bundle of placement group"):
        pg.remove_bundles([5])
    with pytest.raises(ValueError, match=r"names bundle 0 more than once"):
        pg.remove_bundles([0, 0])
    with pytest.raises(ValueError, match=r"use remove_placement_group\(\) to remove it whole"):
        pg.remove_bundles([0, 1])
    with pytest.raises(ValueError, match=r"indices is \[\]"):
        pg.remove_bundles([])
    assert placement_group_table(pg) == before
    assert pg.bundle_indices == [0, 1]
    remove_placement_group(pg)


def test_a_pending_addition_that_is_removed_fails_its_ref(rt: None) -> None:
    pg = placement_group([{"CPU": 1}], strategy="PACK")
    assert pg.wait(30)
    hog = Pid.remote()  # takes the other CPU: the addition must wait
    tk.get(hog.pid.remote(), timeout=60)
    added = pg.add_bundles([{"CPU": 1}])
    assert placement_group_table(pg)["bundles_to_node_id"] == {0: placement_group_table(pg)[
        "bundles_to_node_id"][0]}
    assert not pg.wait(0)
    pg.remove_bundles([1])
    with pytest.raises(ValueError, match=r"bundle 1 of placement group .* is not there"):
        tk.get(added, timeout=30)
    assert pg.wait(30)
    tk.kill(hog)
    remove_placement_group(pg)


def test_the_ray_backend_says_ray_cannot_resize_a_group() -> None:
    from trainkit.runtime._ray_backend import RayBackend

    ray_backend = object.__new__(RayBackend)  # no Ray cluster needed to refuse
    with pytest.raises(NotImplementedError, match=r"Ray cannot resize a placement group: "
                                                  r"remove it with remove_placement_group\(\)"):
        ray_backend.add_bundles(None, [{"CPU": 1}])
    with pytest.raises(NotImplementedError, match="Ray cannot resize"):
        ray_backend.remove_bundles(None, [0])
