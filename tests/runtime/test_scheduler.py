"""Unit tests for the pure resource scheduler (leases, GPUs, placement groups)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from collections.abc import Sequence

import pytest

from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import TrainkitInternalError
from trainkit.runtime.node import scheduler as _scheduler_module
from trainkit.runtime.node.scheduler import PLACEMENT_STRATEGIES
from trainkit.runtime.node.scheduler import Grant
from trainkit.runtime.node.scheduler import PlacementGroupReady
from trainkit.runtime.node.scheduler import ResourceScheduler
from trainkit.runtime.node.scheduler import make_resource_request


def _scheduler(*nodes: tuple[str, Mapping[str, float]]) -> ResourceScheduler:
    s = ResourceScheduler()
    for node_id, resources in nodes:
        s.add_node(node_id, resources)
    s._validate()
    return s


def _step(s: ResourceScheduler) -> list[Grant | PlacementGroupReady]:
    out = s.schedule()
    s._validate()
    return out


def _submit(
    s: ResourceScheduler,
    request_id: str,
    resources: Mapping[str, float],
    placement: tuple[str, int] | None = None,
    node_affinity: tuple[str, bool] | None = None,
) -> None:
    s.submit(request_id, resources, placement, node_affinity)
    s._validate()


def _granted(events: Sequence[Grant | PlacementGroupReady]) -> list[str]:
    return [e.request_id for e in events if isinstance(e, Grant)]


def _where(events: Sequence[Grant | PlacementGroupReady]) -> list[tuple[str, str]]:
    return [(str(e.request_id), e.node_id) for e in events if isinstance(e, Grant)]


def _three_nodes() -> ResourceScheduler:
    return _scheduler(("n1", {"CPU": 2}), ("n2", {"CPU": 2}), ("n3", {"CPU": 2}))


# -- make_resource_request -------------------------------------------------------------------


def test_request_defaults_to_one_cpu() -> None:
    assert make_resource_request() == {"CPU": 1.0}
    assert make_resource_request(default_cpus=0) == {}
    assert make_resource_request(num_cpus=0, default_cpus=1) == {}


def test_request_collects_every_kind_and_drops_zeros() -> None:
    request = make_resource_request(
        num_cpus=2, num_gpus=0.5, memory=1e9, resources={"accel": 1, "unused": 0}
    )
    assert request == {"CPU": 2.0, "GPU": 0.5, "memory": 1e9, "accel": 1.0}


def test_request_keeps_large_memory_exact() -> None:
    assert make_resource_request(memory=16 * 2**30) == {"CPU": 1.0, "memory": 17179869184.0}


@pytest.mark.parametrize("gpus", [2, 2.0, 0.25, 1])
def test_request_accepts_whole_and_fractional_gpus(gpus: float) -> None:
    assert make_resource_request(num_gpus=gpus)["GPU"] == float(gpus)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"num_cpus": -1}, ["num_cpus is -1", ">= 0"]),
        ({"num_gpus": True}, ["num_gpus is True", "bool"]),
        ({"num_gpus": False}, ["num_gpus is False", "bool"]),
        ({"num_cpus": "2"}, ["num_cpus is '2'", "str", "number"]),
        ({"memory": float("nan")}, ["memory is nan", "finite"]),
        ({"memory": float("inf")}, ["memory is inf", "finite"]),
        ({"default_cpus": -0.5}, ["default_cpus is -0.5"]),
        ({"num_gpus": 1.5}, ["num_gpus is 1.5", "fractional GPUs must be < 1"]),
        ({"num_cpus": 1e-6}, ["num_cpus is 1e-06", "0.0001"]),
        ({"resources": {"CPU": 2}}, ["'CPU': 2", "use num_cpus=2"]),
        ({"resources": {"GPU": 1}}, ["'GPU': 1", "use num_gpus=1"]),
        ({"resources": {"memory": 5}}, ["'memory': 5", "use memory=5"]),
        ({"resources": {"gpu": 1}}, ["use num_gpus=1"]),
        ({"resources": {"accel": -2}}, ["resources['accel'] is -2"]),
        ({"resources": {"accel": None}}, ["resources['accel'] is None"]),
    ],
)
def test_request_rejects_bad_values_with_a_useful_message(
    kwargs: dict[str, object], fragments: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        make_resource_request(**kwargs)  # type: ignore[arg-type]
    for fragment in fragments:
        assert fragment in str(info.value)


# -- nodes ---------------------------------------------------------------------------------


def test_add_node_defaults_gpu_ids_and_reports_nodes() -> None:
    s = _scheduler(("n1", {"CPU": 4, "GPU": 2, "memory": 1000}))
    s.add_node("n2", {"CPU": 1}, gpu_ids=[5, 3])
    s._validate()
    assert s.nodes() == [
        {
            "node_id": "n1",
            "resources_total": {"CPU": 4.0, "GPU": 2.0, "memory": 1000.0},
            "resources_available": {"CPU": 4.0, "GPU": 2.0, "memory": 1000.0},
            "gpu_ids": [0, 1],
        },
        {
            "node_id": "n2",
            "resources_total": {"CPU": 1.0, "GPU": 2.0},
            "resources_available": {"CPU": 1.0, "GPU": 2.0},
            "gpu_ids": [5, 3],
        },
    ]
    assert s.total_resources() == {"CPU": 5.0, "GPU": 4.0, "memory": 1000.0}


@pytest.mark.parametrize(
    ("resources", "gpu_ids", "fragment"),
    [
        ({"CPU": 1, "GPU": 2}, [0], "must agree"),
        ({"CPU": 1, "GPU": 0}, [0], "must agree"),
        ({"GPU": 0.5}, [], "whole GPUs"),
        ({"CPU": 1}, [0, 0], "distinct ints >= 0"),
        ({"CPU": 1}, [-1], "distinct ints >= 0"),
        ({"CPU": 1}, [True], "distinct ints >= 0"),
        ({"CPU": -1}, [], "resources['CPU'] is -1"),
    ],
)
def test_add_node_rejects_inconsistent_gpus(
    resources: dict[str, float], gpu_ids: list[int], fragment: str
) -> None:
    s = ResourceScheduler()
    with pytest.raises(ValueError, match=re.escape(fragment)):
        s.add_node("n1", resources, gpu_ids)
    assert s.nodes() == []


def test_add_node_twice_is_an_error() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    with pytest.raises(ValueError, match="already exists"):
        s.add_node("n1", {"CPU": 1})


# -- CPU leases ------------------------------------------------------------------------------


def test_cpu_requests_queue_until_released() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"CPU": 1})
    assert _step(s) == [
        Grant("a", "n1", {"CPU": 1.0}, (), None),
        Grant("b", "n1", {"CPU": 1.0}, (), None),
    ]
    assert s.queued_requests() == ["c"]
    assert s.available_resources() == {"CPU": 0.0}
    assert _step(s) == []
    s.release("a")
    s._validate()
    assert _step(s) == [Grant("c", "n1", {"CPU": 1.0}, (), None)]
    assert s.queued_requests() == []


def test_tenths_add_up_exactly() -> None:
    s = _scheduler(("n1", {"CPU": 0.3}))
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"CPU": 0.1})
    assert _granted(_step(s)) == ["a", "b", "c"]
    assert s.available_resources() == {"CPU": 0.0}
    for rid in ("a", "b", "c"):
        s.release(rid)
    assert s.available_resources() == {"CPU": 0.3}


def test_zero_resource_request_is_granted_on_the_first_node() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 1}))
    _submit(s, "actor", {})
    assert _step(s) == [Grant("actor", "n1", {}, (), None)]


def test_requests_go_to_the_first_node_that_fits() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 4, "accel": 1}))
    _submit(s, "a", {"CPU": 1})
    _submit(s, "b", {"CPU": 1})
    _submit(s, "c", {"accel": 1})
    assert [(g.request_id, g.node_id) for g in _step(s) if isinstance(g, Grant)] == [
        ("a", "n1"),
        ("b", "n2"),
        ("c", "n2"),
    ]


def test_cancel_drops_only_queued_requests() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    _submit(s, "a", {"CPU": 1})
    _submit(s, "b", {"CPU": 1})
    _step(s)
    assert s.cancel("b") is True
    assert s.cancel("b") is False
    assert s.cancel("a") is False  # granted: release it instead
    assert s.cancel("nope") is False
    s.release("a")
    assert _step(s) == []
    assert s.available_resources() == {"CPU": 1.0}


def test_duplicate_request_ids_are_rejected() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    _submit(s, "a", {"CPU": 1})
    with pytest.raises(ValueError, match="'a' is already queued or granted"):
        s.submit("a", {"CPU": 1})
    _step(s)
    with pytest.raises(ValueError, match="already queued or granted"):
        s.submit("a", {"CPU": 1})


def test_release_of_unknown_or_released_id_is_a_no_op() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    _submit(s, "a", {"CPU": 1})
    _step(s)
    s.release("a")
    s.release("a")
    s.release("never")
    s._validate()
    assert s.available_resources() == {"CPU": 1.0}


def test_no_head_of_line_blocking() -> None:
    s = _scheduler(("n1", {"CPU": 3}))
    _submit(s, "a", {"CPU": 2})
    _submit(s, "big", {"CPU": 2})
    _submit(s, "small", {"CPU": 1})
    _submit(s, "big2", {"CPU": 2})
    assert _granted(_step(s)) == ["a", "small"]
    assert s.queued_requests() == ["big", "big2"]
    s.release("a")
    s.release("small")
    # FIFO among those that fit: the older big request goes first.
    assert _granted(_step(s)) == ["big"]
    assert s.queued_requests() == ["big2"]


# -- infeasible requests ---------------------------------------------------------------------


def test_infeasible_request_names_its_needs_and_every_node() -> None:
    s = _scheduler(("n1", {"CPU": 4}), ("n2", {"CPU": 2, "GPU": 1}))
    with pytest.raises(InfeasibleError) as info:
        s.submit("r1", {"CPU": 8})
    message = str(info.value)
    for fragment in ("'r1'", "{'CPU': 8}", "node 'n1' has {'CPU': 4}", "'n2'", "'GPU': 1"):
        assert fragment in message
    assert "add a node" in message
    assert isinstance(info.value, ValueError)
    assert s.queued_requests() == []


@pytest.mark.parametrize(
    "request_",
    [{"GPU": 2}, {"CPU": 1, "GPU": 1, "accel": 1}, {"memory": 2e9}, {"CPU": 4.5}],
)
def test_requests_no_node_can_hold_are_infeasible(request_: dict[str, float]) -> None:
    s = _scheduler(("n1", {"CPU": 4, "GPU": 1, "memory": 1e9}), ("n2", {"CPU": 2, "accel": 1}))
    with pytest.raises(InfeasibleError, match="more than any node can ever provide"):
        s.submit("r", request_)


def test_infeasible_without_nodes() -> None:
    with pytest.raises(InfeasibleError, match="there are no nodes"):
        ResourceScheduler().submit("r", {"CPU": 1})


def test_feasible_but_busy_request_waits() -> None:
    s = _scheduler(("n1", {"CPU": 1, "GPU": 1}))
    _submit(s, "a", {"GPU": 1})
    _submit(s, "b", {"GPU": 1})
    assert _granted(_step(s)) == ["a"]
    assert s.queued_requests() == ["b"]


def test_submit_rejects_invalid_amounts() -> None:
    s = _scheduler(("n1", {"CPU": 4, "GPU": 4}))
    with pytest.raises(ValueError, match="fractional GPUs must be < 1"):
        s.submit("a", {"GPU": 1.5})
    with pytest.raises(ValueError, match="resources\\['CPU'\\] is -1"):
        s.submit("b", {"CPU": -1})


# -- GPUs ----------------------------------------------------------------------------------


def test_whole_gpu_ids_are_exact() -> None:
    s = ResourceScheduler()
    s.add_node("n1", {"CPU": 8, "GPU": 4}, gpu_ids=[4, 5, 6, 7])
    _submit(s, "a", {"GPU": 2})
    _submit(s, "b", {"GPU": 1})
    _submit(s, "c", {"GPU": 2})
    assert _step(s) == [
        Grant("a", "n1", {"GPU": 2.0}, (4, 5), None),
        Grant("b", "n1", {"GPU": 1.0}, (6,), None),
    ]
    s.release("a")
    assert _step(s) == [Grant("c", "n1", {"GPU": 2.0}, (4, 5), None)]


def test_half_gpus_share_a_device_and_a_third_takes_another() -> None:
    s = _scheduler(("n1", {"GPU": 2}))
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"GPU": 0.5})
    assert [(g.request_id, g.gpu_ids) for g in _step(s) if isinstance(g, Grant)] == [
        ("a", (0,)),
        ("b", (0,)),
        ("c", (1,)),
    ]
    assert s.available_resources() == {"GPU": 0.5}


def test_whole_gpus_never_share_a_device() -> None:
    s = _scheduler(("n1", {"GPU": 2}))
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"GPU": 1})
    assert [(g.request_id, g.gpu_ids) for g in _step(s) if isinstance(g, Grant)] == [
        ("a", (0,)),
        ("b", (1,)),
    ]
    assert s.queued_requests() == ["c"]


def test_quarter_gpus_fill_one_device_first() -> None:
    s = _scheduler(("n1", {"GPU": 2}))
    for i in range(5):
        _submit(s, f"q{i}", {"GPU": 0.25})
    grants = [g for g in _step(s) if isinstance(g, Grant)]
    assert [g.gpu_ids for g in grants] == [(0,), (0,), (0,), (0,), (1,)]
    assert all(g.resources == {"GPU": 0.25} for g in grants)


def test_fractional_request_picks_the_fullest_device_that_fits() -> None:
    s = _scheduler(("n1", {"GPU": 3}))
    _submit(s, "a", {"GPU": 0.75})  # device 0
    _submit(s, "b", {"GPU": 0.5})  # device 1 (device 0 has only 0.25)
    _submit(s, "c", {"GPU": 0.25})  # device 0: the fullest with room
    _submit(s, "d", {"GPU": 0.5})  # device 1
    assert [g.gpu_ids for g in _step(s) if isinstance(g, Grant)] == [(0,), (1,), (0,), (1,)]
    assert s.nodes()[0]["resources_available"] == {"GPU": 1.0}


def test_whole_gpu_request_skips_partly_used_devices() -> None:
    s = _scheduler(("n1", {"GPU": 2}))
    _submit(s, "half", {"GPU": 0.5})
    _submit(s, "one", {"GPU": 1})
    _submit(s, "two", {"GPU": 1})
    assert _step(s) == [
        Grant("half", "n1", {"GPU": 0.5}, (0,), None),
        Grant("one", "n1", {"GPU": 1.0}, (1,), None),
    ]
    # 0.5 GPU is free in total, but no whole device is.
    assert s.queued_requests() == ["two"]
    s.release("half")
    assert _step(s) == [Grant("two", "n1", {"GPU": 1.0}, (0,), None)]


# -- placement groups: creation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bundles", "strategy", "fragments"),
    [
        ([{"CPU": 1}], "BEST", ["'BEST'", "PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"]),
        ([], "PACK", ["bundles is empty"]),
        ([{"CPU": 1}, {"CPU": 0}], "PACK", ["bundles[1] is {'CPU': 0}", "positive"]),
        ([{}], "PACK", ["bundles[0] is {}"]),
        ([{"CPU": -1}], "PACK", ["bundles[0]['CPU'] is -1"]),
        ([{"GPU": 1.5}], "PACK", ["fractional GPUs must be < 1"]),
    ],
)
def test_create_placement_group_validates(
    bundles: list[dict[str, float]], strategy: str, fragments: list[str]
) -> None:
    s = _scheduler(("n1", {"CPU": 4}))
    with pytest.raises(ValueError) as info:
        s.create_placement_group("pg", bundles, strategy)
    assert not isinstance(info.value, InfeasibleError)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert s.queued_placement_groups() == []


def test_duplicate_placement_group_id_is_rejected() -> None:
    s = _scheduler(("n1", {"CPU": 4}))
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    with pytest.raises(ValueError, match="already exists"):
        s.create_placement_group("pg", [{"CPU": 1}], "PACK")


def test_bundle_larger_than_every_node_is_infeasible() -> None:
    s = _three_nodes()
    with pytest.raises(InfeasibleError) as info:
        s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 3, "GPU": 1}], "SPREAD")
    message = str(info.value)
    for fragment in ("'pg'", "bundle 1", "{'CPU': 3, 'GPU': 1}", "larger than every node"):
        assert fragment in message
    assert "node 'n1' has {'CPU': 2}" in message
    assert s.queued_placement_groups() == []


def test_strict_pack_larger_than_every_node_is_infeasible() -> None:
    s = _three_nodes()
    with pytest.raises(InfeasibleError) as info:
        s.create_placement_group("pg", [{"CPU": 1}] * 3, "STRICT_PACK")
    assert "need {'CPU': 3} together on one node" in str(info.value)
    assert "Use PACK" in str(info.value)


def test_strict_spread_with_too_few_nodes_is_infeasible() -> None:
    s = _three_nodes()
    s.add_node("gpu", {"GPU": 1})
    with pytest.raises(InfeasibleError) as info:
        s.create_placement_group("pg", [{"CPU": 1}] * 4, "STRICT_SPREAD")
    assert "4 distinct nodes, but only 3 node(s)" in str(info.value)


def test_groups_that_never_fit_together_are_infeasible() -> None:
    s = _scheduler(("n1", {"CPU": 2}), ("n2", {"CPU": 1}))
    with pytest.raises(InfeasibleError, match="do not fit together"):
        s.create_placement_group("pg", [{"CPU": 2}, {"CPU": 2}], "PACK")


def test_strict_spread_on_one_node_is_infeasible() -> None:
    s = _scheduler(("n1", {"CPU": 4}))
    with pytest.raises(InfeasibleError, match="2 distinct nodes"):
        s.create_placement_group("pg", [{"CPU": 1}] * 2, "STRICT_SPREAD")


# -- placement groups: reservation ---------------------------------------------------------


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_one_node_group_is_reserved_whole(strategy: str) -> None:
    s = _scheduler(("n1", {"CPU": 4, "GPU": 2}))
    s.create_placement_group("pg", [{"CPU": 1, "GPU": 1}, {"CPU": 2}], strategy)
    s._validate()
    assert not s.is_placement_group_ready("pg")
    assert s.queued_placement_groups() == ["pg"]
    assert _step(s) == [PlacementGroupReady("pg", ("n1", "n1"))]
    assert s.is_placement_group_ready("pg")
    assert s.queued_placement_groups() == []
    # Reserved bundles count as used, as in Ray.
    assert s.available_resources() == {"CPU": 1.0, "GPU": 1.0}
    assert s.placement_group_bundles("pg") == [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 2.0}]


@pytest.mark.parametrize("strategy", PLACEMENT_STRATEGIES)
def test_one_node_group_is_all_or_nothing(strategy: str) -> None:
    s = _scheduler(("n1", {"CPU": 4}))
    _submit(s, "hog", {"CPU": 3})
    _step(s)
    bundles = [{"CPU": 1}, {"CPU": 1}] if strategy != "STRICT_SPREAD" else [{"CPU": 2}]
    s.create_placement_group("pg", bundles, strategy)
    assert _step(s) == []
    assert s.available_resources() == {"CPU": 1.0}  # nothing partly reserved
    assert s.queued_placement_groups() == ["pg"]
    s.release("hog")
    assert _step(s) == [PlacementGroupReady("pg", ("n1",) * len(bundles))]


@pytest.mark.parametrize(
    ("strategy", "count", "expected"),
    [
        ("PACK", 2, ("n1", "n1")),
        ("PACK", 3, ("n1", "n1", "n2")),
        ("PACK", 5, ("n1", "n1", "n2", "n2", "n3")),
        ("STRICT_PACK", 2, ("n1", "n1")),
        ("SPREAD", 3, ("n1", "n2", "n3")),
        ("SPREAD", 5, ("n1", "n2", "n3", "n1", "n2")),
        ("STRICT_SPREAD", 2, ("n1", "n2")),
        ("STRICT_SPREAD", 3, ("n1", "n2", "n3")),
    ],
)
def test_three_node_strategies_place_bundles_exactly(
    strategy: str, count: int, expected: tuple[str, ...]
) -> None:
    s = _three_nodes()
    s.create_placement_group("pg", [{"CPU": 1}] * count, strategy)
    assert _step(s) == [PlacementGroupReady("pg", expected)]
    assert s.available_resources() == {"CPU": 6.0 - count}


@pytest.mark.parametrize("strategy", PLACEMENT_STRATEGIES)
def test_three_node_group_is_all_or_nothing(strategy: str) -> None:
    s = _three_nodes()
    _submit(s, "a", {"CPU": 1})
    _submit(s, "b", {"CPU": 2})
    _submit(s, "c", {"CPU": 2})
    assert [g.node_id for g in _step(s) if isinstance(g, Grant)] == ["n1", "n2", "n3"]
    # One CPU is free, on n1: every bundle could go there, but not the whole group.
    bundles = [{"CPU": 1}] * (3 if strategy == "STRICT_SPREAD" else 2)
    s.create_placement_group("pg", bundles, strategy)
    assert _step(s) == []
    free = [n["resources_available"] for n in s.nodes()]
    assert free == [{"CPU": 1.0}, {"CPU": 0.0}, {"CPU": 0.0}]
    s.release("b")
    s.release("c")
    (ready,) = _step(s)
    assert isinstance(ready, PlacementGroupReady)
    assert s.available_resources() == {"CPU": 5.0 - len(bundles)}


def test_pack_prefers_one_node_even_if_it_is_not_the_first() -> None:
    s = _three_nodes()
    _submit(s, "a", {"CPU": 1})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "PACK")
    assert _step(s) == [PlacementGroupReady("pg", ("n2", "n2"))]


def test_group_placement_backtracks_when_first_fit_fails() -> None:
    s = _scheduler(("n1", {"CPU": 3}), ("n2", {"CPU": 2}))
    s.create_placement_group("pg", [{"CPU": 2}, {"CPU": 3}], "PACK")
    assert _step(s) == [PlacementGroupReady("pg", ("n2", "n1"))]


def test_strict_spread_matches_bundles_to_capable_nodes() -> None:
    s = _scheduler(("big", {"CPU": 4}), ("small", {"CPU": 1}))
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 4}], "STRICT_SPREAD")
    assert _step(s) == [PlacementGroupReady("pg", ("small", "big"))]


def test_spread_shares_nodes_when_it_must() -> None:
    s = _scheduler(("n1", {"CPU": 2}), ("n2", {"CPU": 2}))
    _submit(s, "a", {"CPU": 2})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "SPREAD")
    assert _step(s) == [PlacementGroupReady("pg", ("n2", "n2"))]


def test_groups_do_not_block_each_other_and_go_before_requests() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    _submit(s, "hog", {"CPU": 1})
    _step(s)
    _submit(s, "r", {"CPU": 1})
    s.create_placement_group("big", [{"CPU": 2}], "PACK")
    s.create_placement_group("small", [{"CPU": 1}], "PACK")
    assert _step(s) == [PlacementGroupReady("small", ("n1",))]
    assert s.queued_requests() == ["r"]
    assert s.queued_placement_groups() == ["big"]


def test_gpu_bundles_reserve_specific_devices() -> None:
    s = _scheduler(("n1", {"CPU": 4, "GPU": 4}), ("n2", {"CPU": 4, "GPU": 4}))
    _submit(s, "a", {"GPU": 1})
    _step(s)
    s.create_placement_group("pg", [{"GPU": 2}, {"GPU": 0.5}, {"GPU": 0.5}], "STRICT_PACK")
    assert _step(s) == [PlacementGroupReady("pg", ("n1", "n1", "n1"))]
    node = s.nodes()[0]
    assert node["resources_available"] == {"CPU": 4.0, "GPU": 0.0}
    # The two half bundles share device 3; devices 1 and 2 belong to bundle 0.
    _submit(s, "in0", {"GPU": 2}, ("pg", 0))
    _submit(s, "in1", {"GPU": 0.5}, ("pg", 1))
    _submit(s, "in2", {"GPU": 0.5}, ("pg", 2))
    assert _step(s) == [
        Grant("in0", "n1", {"GPU": 2.0}, (1, 2), ("pg", 0)),
        Grant("in1", "n1", {"GPU": 0.5}, (3,), ("pg", 1)),
        Grant("in2", "n1", {"GPU": 0.5}, (3,), ("pg", 2)),
    ]


def test_strict_spread_over_many_identical_busy_nodes_fails_fast() -> None:
    s = _scheduler(*((f"n{i:02}", {"CPU": 1}) for i in range(40)))
    _submit(s, "hog", {"CPU": 1})
    _step(s)
    # Every bundle fits some node, so only the search can tell that 40 do not fit 39 nodes.
    s.create_placement_group("pg", [{"CPU": 1}] * 40, "STRICT_SPREAD")
    assert _step(s) == []
    s.release("hog")
    (ready,) = _step(s)
    assert isinstance(ready, PlacementGroupReady)
    assert ready.bundle_nodes == tuple(f"n{i:02}" for i in range(40))


def test_an_undecided_search_leaves_the_group_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _scheduler(("n1", {"CPU": 2}), ("n2", {"CPU": 1}))
    monkeypatch.setattr(_scheduler_module, "_SEARCH_BUDGET", 1)
    # Never fits, but a search cut short cannot prove it: the group is queued, not rejected.
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 2}, {"CPU": 1}], "SPREAD")
    assert _step(s) == []
    assert s.queued_placement_groups() == ["pg"]
    monkeypatch.undo()
    with pytest.raises(InfeasibleError, match="do not fit together"):
        s.create_placement_group("pg2", [{"CPU": 1}, {"CPU": 2}, {"CPU": 1}], "SPREAD")


# -- requests inside bundles ---------------------------------------------------------------


def _gpu_group() -> ResourceScheduler:
    s = _scheduler(("n1", {"CPU": 8, "GPU": 4}))
    _submit(s, "outside", {"GPU": 1})
    _step(s)  # takes device 0
    s.create_placement_group("pg", [{"CPU": 2, "GPU": 2}, {"CPU": 1}], "PACK")
    assert _step(s) == [PlacementGroupReady("pg", ("n1", "n1"))]
    return s


def test_requests_in_a_bundle_use_only_its_devices() -> None:
    s = _gpu_group()
    _submit(s, "w0", {"CPU": 1, "GPU": 1}, ("pg", 0))
    _submit(s, "w1", {"CPU": 1, "GPU": 1}, ("pg", 0))
    _submit(s, "w2", {"CPU": 0, "GPU": 1}, ("pg", 0))
    assert _step(s) == [
        Grant("w0", "n1", {"CPU": 1.0, "GPU": 1.0}, (1,), ("pg", 0)),
        Grant("w1", "n1", {"CPU": 1.0, "GPU": 1.0}, (2,), ("pg", 0)),
    ]
    # Device 3 is free on the node, but not in the bundle.
    assert s.queued_requests() == ["w2"]
    assert s.available_resources() == {"CPU": 5.0, "GPU": 1.0}
    s.release("w0")
    s._validate()
    assert s.available_resources() == {"CPU": 5.0, "GPU": 1.0}  # went back to the bundle
    assert _step(s) == [Grant("w2", "n1", {"GPU": 1.0}, (1,), ("pg", 0))]


def test_fractional_requests_share_a_bundle_device() -> None:
    s = _gpu_group()
    for i in range(5):
        _submit(s, f"f{i}", {"GPU": 0.5}, ("pg", 0))
    grants = [g for g in _step(s) if isinstance(g, Grant)]
    assert [g.gpu_ids for g in grants] == [(1,), (1,), (2,), (2,)]
    assert s.queued_requests() == ["f4"]


def test_any_bundle_index_tries_bundles_in_order() -> None:
    s = _three_nodes()
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "SPREAD")
    _step(s)
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"CPU": 1}, ("pg", -1))
    assert _step(s) == [
        Grant("a", "n1", {"CPU": 1.0}, (), ("pg", 0)),
        Grant("b", "n2", {"CPU": 1.0}, (), ("pg", 1)),
    ]
    assert s.queued_requests() == ["c"]


def test_requests_wait_for_their_group_to_be_ready() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    _submit(s, "hog", {"CPU": 2})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    _submit(s, "in", {"CPU": 1}, ("pg", 0))
    assert _step(s) == []
    s.release("hog")
    assert _step(s) == [
        PlacementGroupReady("pg", ("n1",)),
        Grant("in", "n1", {"CPU": 1.0}, (), ("pg", 0)),
    ]


def test_submit_into_a_group_validates_placement() -> None:
    s = _gpu_group()
    with pytest.raises(ValueError, match="placement group 'nope' does not exist"):
        s.submit("a", {"CPU": 1}, ("nope", 0))
    with pytest.raises(ValueError, match=r"bundle index is 2.*has 2 bundles.*0\.\.1, or -1"):
        s.submit("a", {"CPU": 1}, ("pg", 2))
    with pytest.raises(ValueError, match="bundle index is -2"):
        s.submit("a", {"CPU": 1}, ("pg", -2))
    assert s.queued_requests() == []


def test_request_larger_than_its_bundle_is_infeasible() -> None:
    s = _gpu_group()
    with pytest.raises(InfeasibleError) as info:
        s.submit("a", {"CPU": 1, "GPU": 1}, ("pg", 1))
    message = str(info.value)
    for fragment in ("'a'", "{'CPU': 1, 'GPU': 1}", "bundle 1", "reserves {'CPU': 1}"):
        assert fragment in message
    with pytest.raises(
        InfeasibleError, match=r"any bundle of group 'pg'.*bundle 0 reserves.*bundle 1"
    ):
        s.submit("b", {"CPU": 3}, ("pg", -1))
    # Fits on the node, but a request placed in a group is held to the bundle.
    with pytest.raises(InfeasibleError):
        s.submit("c", {"GPU": 3}, ("pg", 0))
    assert s.queued_requests() == []


def test_whole_gpu_request_never_fits_a_fractional_bundle() -> None:
    s = _scheduler(("n1", {"GPU": 1}))
    s.create_placement_group("pg", [{"GPU": 0.5}], "PACK")
    with pytest.raises(InfeasibleError, match=re.escape("'GPU': 0.5")):
        s.submit("a", {"GPU": 1}, ("pg", 0))
    _submit(s, "b", {"GPU": 0.25}, ("pg", 0))
    _submit(s, "c", {"GPU": 0.25}, ("pg", 0))
    _submit(s, "d", {"GPU": 0.25}, ("pg", 0))
    _submit(s, "e", {"GPU": 0.5})
    assert _granted(_step(s)) == ["b", "c", "e"]
    assert s.queued_requests() == ["d"]
    assert s.available_resources() == {"GPU": 0.0}


# -- node affinity ---------------------------------------------------------------------------


def test_hard_affinity_is_granted_only_on_its_node() -> None:
    s = _three_nodes()
    _submit(s, "a", {"CPU": 1}, node_affinity=("n2", False))
    _submit(s, "b", {"CPU": 1})
    assert _step(s) == [
        Grant("a", "n2", {"CPU": 1.0}, (), None),
        Grant("b", "n1", {"CPU": 1.0}, (), None),
    ]


def test_hard_affinity_waits_while_its_node_is_busy_even_if_another_is_free() -> None:
    s = _three_nodes()
    _submit(s, "hog", {"CPU": 2}, node_affinity=("n2", False))
    _submit(s, "bound", {"CPU": 1}, node_affinity=("n2", False))
    _submit(s, "plain", {"CPU": 1})  # same shape, no affinity: not held back by "bound"
    assert _where(_step(s)) == [("hog", "n2"), ("plain", "n1")]
    assert s.queued_requests() == ["bound"]
    assert _step(s) == []
    s.release("hog")
    assert _where(_step(s)) == [("bound", "n2")]


def test_hard_affinity_to_an_unknown_node_names_it_and_the_nodes() -> None:
    s = _three_nodes()
    with pytest.raises(ValueError) as info:
        s.submit("r", {"CPU": 1}, node_affinity=("n9", False))
    message = str(info.value)
    for fragment in ("'r'", "names no live node", "node 'n9' is unknown", "n1, n2, n3", "soft"):
        assert fragment in message
    assert not isinstance(info.value, InfeasibleError)
    assert s.queued_requests() == []


def test_hard_affinity_larger_than_its_node_is_infeasible() -> None:
    s = _scheduler(("small", {"CPU": 1}), ("big", {"CPU": 4}))
    with pytest.raises(InfeasibleError) as info:
        s.submit("r", {"CPU": 2}, node_affinity=("small", False))
    message = str(info.value)
    for fragment in ("'r'", "{'CPU': 2}", "node 'small'", "{'CPU': 1}", "soft=True"):
        assert fragment in message
    assert s.queued_requests() == []
    # Soft, it runs where it fits; soft or not, it must fit somewhere.
    _submit(s, "r", {"CPU": 2}, node_affinity=("small", True))
    assert _where(_step(s)) == [("r", "big")]
    with pytest.raises(InfeasibleError, match="more than any node can ever provide"):
        s.submit("huge", {"CPU": 8}, node_affinity=("small", True))


def test_remove_node_fails_the_requests_bound_to_it() -> None:
    s = _scheduler(("n1", {"CPU": 2}), ("n2", {"CPU": 2, "GPU": 1}))
    _submit(s, "gpu_hog", {"GPU": 1}, node_affinity=("n2", False))
    _submit(s, "waiting", {"CPU": 1, "GPU": 1}, node_affinity=("n2", False))
    _submit(s, "soft", {"CPU": 1, "GPU": 1}, node_affinity=("n2", True))
    _submit(s, "plain", {"CPU": 1})
    _submit(s, "plain2", {"CPU": 2})
    assert _where(_step(s)) == [("gpu_hog", "n2"), ("plain", "n1"), ("plain2", "n2")]
    # Grants that died first, then the queued request that can never run now.
    assert s.remove_node("n2") == ["gpu_hog", "plain2", "waiting"]
    s._validate()
    assert s.queued_requests() == ["soft"]  # soft: it waits for any node that can hold it
    s.add_node("n3", {"CPU": 1, "GPU": 1})
    assert _where(_step(s)) == [("soft", "n3")]


def test_soft_affinity_prefers_its_node_then_falls_back() -> None:
    s = _three_nodes()
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"CPU": 1}, node_affinity=("n3", True))
    assert _where(_step(s)) == [("a", "n3"), ("b", "n3"), ("c", "n1")]
    s.release("a")
    _submit(s, "d", {"CPU": 1}, node_affinity=("n3", True))
    assert _where(_step(s)) == [("d", "n3")]


def test_soft_affinity_to_an_unknown_node_runs_anywhere() -> None:
    s = _three_nodes()
    _submit(s, "r", {"CPU": 2}, node_affinity=("gone", True))
    assert _where(_step(s)) == [("r", "n1")]
    with pytest.raises(InfeasibleError, match="more than any node can ever provide"):
        s.submit("huge", {"CPU": 3}, node_affinity=("gone", True))


@pytest.mark.parametrize("soft", [False, True])
def test_node_affinity_with_a_placement_group_is_an_error(soft: bool) -> None:
    s = _three_nodes()
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    with pytest.raises(ValueError, match="cannot be combined") as info:
        s.submit("r", {"CPU": 1}, ("pg", 0), node_affinity=("n1", soft))
    assert "('pg', 0)" in str(info.value) and "('n1'," in str(info.value)
    assert s.queued_requests() == []


@pytest.mark.parametrize("affinity", ["n1", ("n1",), ("n1", 1), ("n1", None), (1, False)])
def test_malformed_node_affinity_is_an_error(affinity: object) -> None:
    s = _three_nodes()
    with pytest.raises(ValueError, match="must be a \\(node_id: str, soft: bool\\) pair"):
        s.submit("r", {"CPU": 1}, node_affinity=affinity)  # type: ignore[arg-type]
    assert s.queued_requests() == []


# -- removal -------------------------------------------------------------------------------


def test_remove_placement_group_returns_granted_and_queued_and_frees() -> None:
    s = _gpu_group()
    _submit(s, "w0", {"GPU": 1}, ("pg", 0))
    _submit(s, "w1", {"CPU": 1}, ("pg", 1))
    _submit(s, "w2", {"CPU": 1}, ("pg", 1))
    _submit(s, "other", {"CPU": 1})
    assert _granted(_step(s)) == ["w0", "w1", "other"]
    assert s.remove_placement_group("pg") == ["w0", "w1", "w2"]
    s._validate()
    assert s.queued_requests() == []
    assert not s.is_placement_group_ready("pg")
    assert s.queued_placement_groups() == []
    assert s.available_resources() == {"CPU": 7.0, "GPU": 3.0}
    s.release("w0")  # the holder exits later: harmless
    s._validate()
    assert s.remove_placement_group("pg") == []
    with pytest.raises(ValueError, match="does not exist"):
        s.placement_group_bundles("pg")


def test_remove_queued_placement_group() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    _submit(s, "hog", {"CPU": 1})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    _submit(s, "in", {"CPU": 1}, ("pg", 0))
    assert s.remove_placement_group("pg") == ["in"]
    s._validate()
    assert s.queued_placement_groups() == []
    assert s.queued_requests() == []


def test_remove_node_returns_its_grants_and_shrinks_the_cluster() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 2, "GPU": 1}))
    for rid in ("a", "b", "c"):
        _submit(s, rid, {"CPU": 1})
    assert _granted(_step(s)) == ["a", "b", "c"]
    assert s.remove_node("n2") == ["b", "c"]
    s._validate()
    assert s.total_resources() == {"CPU": 1.0}
    assert s.available_resources() == {"CPU": 0.0}
    assert s.remove_node("n2") == []
    s.release("b")  # already gone with its node
    s._validate()


def test_remove_node_unreserves_groups_with_a_bundle_there() -> None:
    s = _scheduler(("n1", {"CPU": 4}), ("n2", {"CPU": 4}))
    s.create_placement_group("spread", [{"CPU": 1}, {"CPU": 1}], "SPREAD")
    s.create_placement_group("safe", [{"CPU": 1}], "STRICT_PACK")
    assert _step(s) == [
        PlacementGroupReady("spread", ("n1", "n2")),
        PlacementGroupReady("safe", ("n1",)),
    ]
    _submit(s, "on_n1", {"CPU": 1}, ("spread", 0))
    _submit(s, "on_n2", {"CPU": 1}, ("spread", 1))
    _submit(s, "in_safe", {"CPU": 1}, ("safe", 0))
    _submit(s, "plain", {"CPU": 1})
    _submit(s, "waiting", {"CPU": 1}, ("spread", 1))
    assert _granted(_step(s)) == ["on_n1", "on_n2", "in_safe", "plain"]
    # The group is never left half reserved, so its grant on n1 goes too.
    assert s.remove_node("n2") == ["on_n1", "on_n2"]
    s._validate()
    assert not s.is_placement_group_ready("spread")
    assert s.is_placement_group_ready("safe")
    assert s.queued_placement_groups() == ["spread"]
    assert s.queued_requests() == ["waiting"]
    assert s.available_resources() == {"CPU": 2.0}  # n1: 4 - safe bundle - plain
    assert _step(s) == [
        PlacementGroupReady("spread", ("n1", "n1")),
        Grant("waiting", "n1", {"CPU": 1.0}, (), ("spread", 1)),
    ]


def test_remove_node_leaves_strict_spread_group_waiting_for_a_new_node() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 1}))
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    _step(s)
    assert s.remove_node("n1") == []
    assert _step(s) == []
    assert s.available_resources() == {"CPU": 1.0}
    s.add_node("n3", {"CPU": 1})
    assert _step(s) == [PlacementGroupReady("pg", ("n2", "n3"))]


# -- placement group table -------------------------------------------------------------------


def test_placement_group_table_follows_a_group_from_create_to_remove() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 1, "GPU": 1}))
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1, "GPU": 1}], "STRICT_SPREAD", "pair")
    pending = {
        "placement_group_id": "pg",
        "name": "pair",
        "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 1.0, "GPU": 1.0}},
        "bundles_to_node_id": {},
        "strategy": "STRICT_SPREAD",
        "state": "PENDING",
    }
    assert s.placement_group_table("pg") == pending
    assert _step(s) == [PlacementGroupReady("pg", ("n1", "n2"))]
    created = {**pending, "bundles_to_node_id": {0: "n1", 1: "n2"}, "state": "CREATED"}
    assert s.placement_group_table("pg") == created
    s.remove_placement_group("pg")
    s._validate()
    assert s.placement_group_table("pg") == {**created, "state": "REMOVED"}
    assert s.placement_group_table() == {"pg": {**created, "state": "REMOVED"}}
    # The removed row holds nothing: a new group gets the whole cluster.
    assert s.available_resources() == {"CPU": 2.0, "GPU": 1.0}
    s.create_placement_group("next", [{"CPU": 1}, {"CPU": 1, "GPU": 1}], "STRICT_SPREAD")
    assert _step(s) == [PlacementGroupReady("next", ("n1", "n2"))]


def test_placement_group_table_lists_every_group_by_id() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    s.create_placement_group("old", [{"CPU": 1}], "PACK")
    s.create_placement_group("fits", [{"CPU": 1}], "SPREAD")
    s.create_placement_group("waits", [{"CPU": 2}], "STRICT_PACK")
    _step(s)
    s.remove_placement_group("old")
    table = s.placement_group_table()
    assert list(table) == ["old", "fits", "waits"]
    assert {pg_id: row["state"] for pg_id, row in table.items()} == {
        "old": "REMOVED",
        "fits": "CREATED",
        "waits": "PENDING",
    }
    assert table["fits"]["name"] == ""  # no name given, as in Ray
    assert table["waits"]["bundles_to_node_id"] == {}


def test_placement_group_table_shows_a_group_rescheduling_after_node_loss() -> None:
    s = _scheduler(("n1", {"CPU": 1}), ("n2", {"CPU": 1}))
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD")
    _step(s)
    s.remove_node("n2")
    row = s.placement_group_table("pg")
    assert (row["state"], row["bundles_to_node_id"]) == ("RESCHEDULING", {})
    s.add_node("n3", {"CPU": 1})
    _step(s)
    row = s.placement_group_table("pg")
    assert (row["state"], row["bundles_to_node_id"]) == ("CREATED", {0: "n1", 1: "n3"})


def test_placement_group_table_of_an_unknown_id_is_an_error() -> None:
    s = _three_nodes()
    with pytest.raises(ValueError, match="placement group 'nope' is unknown"):
        s.placement_group_table("nope")


def test_placement_group_table_returns_copies() -> None:
    s = _three_nodes()
    s.create_placement_group("pg", [{"CPU": 1}], "PACK")
    s.remove_placement_group("pg")
    for row in (s.placement_group_table("pg"), s.placement_group_table()["pg"]):
        row["bundles"][0]["CPU"] = 99.0
        row["bundles_to_node_id"][0] = "elsewhere"
        row["state"] = "CREATED"
    assert s.placement_group_table("pg")["bundles"] == {0: {"CPU": 1.0}}
    assert s.placement_group_table("pg")["state"] == "REMOVED"


def test_removed_rows_are_bounded_and_a_reused_id_is_live_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_scheduler_module, "_REMOVED_ROWS_KEPT", 2)
    s = _three_nodes()
    for pg_id in ("a", "b", "c"):
        s.create_placement_group(pg_id, [{"CPU": 1}], "PACK")
        s.remove_placement_group(pg_id)
        s._validate()
    assert list(s.placement_group_table()) == ["b", "c"]
    with pytest.raises(ValueError, match="'a' is unknown"):
        s.placement_group_table("a")
    s.create_placement_group("b", [{"CPU": 2}], "PACK", name="again")
    s._validate()
    assert s.placement_group_table("b")["state"] == "PENDING"
    assert [row["state"] for row in s.placement_group_table().values()] == ["REMOVED", "PENDING"]


def test_placement_group_name_must_be_a_str() -> None:
    s = _three_nodes()
    with pytest.raises(ValueError, match="name is None, but must be a str"):
        s.create_placement_group("pg", [{"CPU": 1}], "PACK", None)  # type: ignore[arg-type]
    assert s.queued_placement_groups() == []


# -- invariants ------------------------------------------------------------------------------


def test_validate_catches_a_corrupted_pool() -> None:
    s = _gpu_group()
    s._nodes["n1"].pool.free["CPU"] += 10_000
    with pytest.raises(TrainkitInternalError, match="node 'n1'"):
        s._validate()


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_keep_the_books_balanced(seed: int) -> None:
    rng = random.Random(seed)
    s = ResourceScheduler()
    s.add_node("n0", {"CPU": 4, "GPU": 2, "accel": 1})
    nodes: list[str] = ["n0"]
    groups: list[str] = []
    granted: list[str] = []
    for serial in range(200):
        op = rng.random()
        try:
            if op < 0.35:
                placement = None
                if groups and rng.random() < 0.5:
                    placement = (rng.choice(groups), -1)
                resources = {"CPU": rng.choice([0, 0.5, 1]), "GPU": rng.choice([0, 0.25, 0.5, 1])}
                affinity = None
                if placement is None and rng.random() < 0.3:
                    affinity = (rng.choice([*nodes, "gone"]), rng.random() < 0.5)
                s.submit(f"r{serial}", resources, placement, affinity)
            elif op < 0.55 and granted:
                s.release(granted.pop(rng.randrange(len(granted))))
            elif op < 0.65:
                bundles = [{"CPU": 1, "GPU": rng.choice([0, 0.5, 1])}] * rng.randint(1, 3)
                s.create_placement_group(f"pg{serial}", bundles, rng.choice(PLACEMENT_STRATEGIES))
                groups.append(f"pg{serial}")
            elif op < 0.7 and groups:
                s.remove_placement_group(groups.pop(rng.randrange(len(groups))))
            elif op < 0.76:
                s.add_node(f"n{serial}", {"CPU": rng.choice([1, 2, 4]), "GPU": rng.randint(0, 2)})
                nodes.append(f"n{serial}")
            elif op < 0.8 and len(nodes) > 1:
                s.remove_node(nodes.pop(rng.randrange(len(nodes))))
            elif op < 0.85 and s.queued_requests():
                s.cancel(rng.choice(s.queued_requests()))
            else:
                granted += _granted(s.schedule())
        except ValueError:  # InfeasibleError included: the state must be unchanged
            pass
        s._validate()
        available = s.available_resources()
        assert all(v >= 0 for v in available.values())
        assert all(available[k] <= v for k, v in s.total_resources().items())


def test_blocked_holder_lends_its_cpus_and_takes_them_back() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    s.submit("parent", {"CPU": 1})
    assert [g.request_id for g in s.schedule()] == ["parent"]
    s.submit("child", {"CPU": 1})
    assert s.schedule() == []
    assert s.lend_cpus("parent")
    assert not s.lend_cpus("parent")  # lending twice is a no-op
    assert [g.request_id for g in s.schedule()] == ["child"]
    s._validate()
    s.reclaim_cpus("parent")  # over-commits until the child finishes, as Ray does
    assert s.available_resources()["CPU"] == -1.0
    s.release("child")
    s.release("parent")
    assert s.available_resources()["CPU"] == 1.0
    s._validate()
