"""Unit tests for resizing a live placement group in the pure scheduler (add_bundles,
remove_bundles)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from collections.abc import Sequence

import pytest

from trainkit.exceptions import InfeasibleError
from trainkit.runtime.node.scheduler import PLACEMENT_STRATEGIES
from trainkit.runtime.node.scheduler import BundlesReady
from trainkit.runtime.node.scheduler import Event
from trainkit.runtime.node.scheduler import Grant
from trainkit.runtime.node.scheduler import PlacementGroupReady
from trainkit.runtime.node.scheduler import ResourceScheduler


def _scheduler(*nodes: tuple[str, Mapping[str, float]]) -> ResourceScheduler:
    s = ResourceScheduler()
    for node_id, resources in nodes:
        s.add_node(node_id, resources)
    return s


def _step(s: ResourceScheduler) -> list[Event]:
    out = s.schedule()
    s._validate()
    return out


def _granted(events: Sequence[Event]) -> list[str]:
    return [str(e.request_id) for e in events if isinstance(e, Grant)]


def _ready_group(
    strategy: str, bundles: int = 2, *nodes: tuple[str, Mapping[str, float]]
) -> ResourceScheduler:
    s = _scheduler(*(nodes or (("n1", {"CPU": 4}),)))
    s.create_placement_group("pg", [{"CPU": 1}] * bundles, strategy)
    assert [type(e) for e in _step(s)] == [PlacementGroupReady]
    return s


def _row(s: ResourceScheduler) -> tuple[dict[int, dict[str, float]], dict[int, str], str]:
    row = s.placement_group_table("pg")
    return row["bundles"], row["bundles_to_node_id"], row["state"]


# -- add_bundles -----------------------------------------------------------------------------


def test_added_bundles_are_reserved_by_the_next_schedule_and_shown_in_the_table() -> None:
    s = _ready_group("PACK")
    assert s.add_bundles("pg", [{"CPU": 1}, {"CPU": 0.5}]) == [2, 3]
    s._validate()
    # Until reserved: listed, with no node, the group still CREATED but not all ready.
    assert _row(s) == (
        {0: {"CPU": 1.0}, 1: {"CPU": 1.0}, 2: {"CPU": 1.0}, 3: {"CPU": 0.5}},
        {0: "n1", 1: "n1"},
        "CREATED",
    )
    assert not s.is_placement_group_ready("pg")
    assert not s.are_bundles_ready("pg", [2])
    assert s.are_bundles_ready("pg", [0, 1])
    assert _step(s) == [BundlesReady("pg", ((2, "n1"), (3, "n1")))]
    assert _row(s)[1] == {0: "n1", 1: "n1", 2: "n1", 3: "n1"}
    assert s.is_placement_group_ready("pg") and s.are_bundles_ready("pg", [2, 3])
    assert s.available_resources() == {"CPU": 0.5}


def test_adding_leaves_the_grants_in_other_bundles_alone() -> None:
    s = _ready_group("PACK")
    s.submit("a0", {"CPU": 1}, ("pg", 0))
    assert _granted(_step(s)) == ["a0"]
    s.add_bundles("pg", [{"CPU": 1}])
    s.submit("a2", {"CPU": 1}, ("pg", 2))
    assert _step(s) == [
        BundlesReady("pg", ((2, "n1"),)),
        Grant("a2", "n1", {"CPU": 1.0}, (), ("pg", 2)),
    ]
    s.release("a0")
    s._validate()
    s.submit("again", {"CPU": 1}, ("pg", 0))
    assert _granted(_step(s)) == ["again"]


def test_a_request_for_an_added_bundle_waits_until_it_is_reserved() -> None:
    s = _ready_group("PACK", 2, ("n1", {"CPU": 3}))
    s.submit("hog", {"CPU": 1})  # takes the last CPU: the addition waits
    assert _granted(_step(s)) == ["hog"]
    s.add_bundles("pg", [{"CPU": 1}])
    s.submit("in2", {"CPU": 1}, ("pg", 2))
    s.submit("any", {"CPU": 1}, ("pg", -1))  # any bundle: only reserved ones count
    assert _granted(_step(s)) == ["any"]
    assert s.queued_requests() == ["in2"]
    assert _row(s)[1] == {0: "n1", 1: "n1"}
    assert s.remove_placement_group("pg") == ["any", "in2"]
    s._validate()


def test_an_addition_is_all_or_nothing() -> None:
    s = _ready_group("PACK", 1, ("n1", {"CPU": 2}), ("n2", {"CPU": 1}))
    s.submit("hog", {"CPU": 1}, node_affinity=("n2", False))
    _step(s)
    s.add_bundles("pg", [{"CPU": 1}, {"CPU": 1}])  # one fits on n1 now, the other does not
    assert _step(s) == []
    assert _row(s)[1] == {0: "n1"}
    assert s.available_resources() == {"CPU": 1.0}
    s.release("hog")
    assert _step(s) == [BundlesReady("pg", ((1, "n1"), (2, "n2")))]


def test_each_addition_is_reserved_on_its_own() -> None:
    s = _ready_group("PACK", 1, ("n1", {"CPU": 3}), ("n2", {"CPU": 3}))
    s.submit("hog", {"CPU": 3}, node_affinity=("n2", False))
    _step(s)
    assert s.add_bundles("pg", [{"CPU": 3}]) == [1]  # fits only on n2, once it is idle
    assert s.add_bundles("pg", [{"CPU": 1}]) == [2]
    assert _step(s) == [BundlesReady("pg", ((2, "n1"),))]  # the first does not block it
    assert s.remove_bundles("pg", [1]) == []
    s._validate()
    assert s.is_placement_group_ready("pg")


@pytest.mark.parametrize(
    "strategy, where",
    [("STRICT_PACK", "n2"), ("PACK", "n2"), ("SPREAD", "n1"), ("STRICT_SPREAD", "n1")],
)
def test_additions_follow_the_groups_strategy(strategy: str, where: str) -> None:
    s = _scheduler(("n1", {"CPU": 4}), ("n2", {"CPU": 4}), ("n3", {"CPU": 4}))
    s.submit("hog", {"CPU": 4})  # keeps the group off n1, which is free again after
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}] * 2, strategy)
    (ready,) = _step(s)
    assert isinstance(ready, PlacementGroupReady)
    assert ready.bundle_nodes == (("n2", "n2") if "PACK" in strategy else ("n2", "n3"))
    s.release("hog")
    s.add_bundles("pg", [{"CPU": 1}])
    # PACK: the group's node first; SPREAD: its least used node (n1 holds none of it).
    assert _step(s) == [BundlesReady("pg", ((2, where),))]


def test_strict_pack_adds_only_on_its_node_and_fails_at_the_call_if_it_cannot() -> None:
    s = _ready_group("STRICT_PACK", 2, ("n1", {"CPU": 3}), ("n2", {"CPU": 8}))
    before = s.placement_group_table("pg")
    with pytest.raises(InfeasibleError) as info:
        s.add_bundles("pg", [{"CPU": 1}, {"CPU": 1}])
    message = str(info.value)
    assert "STRICT_PACK keeps every bundle on node 'n1', which has {'CPU': 3}" in message
    assert "already reserves {'CPU': 2}" in message and "PACK may use several nodes" in message
    assert s.placement_group_table("pg") == before  # nothing changed
    s._validate()
    assert s.add_bundles("pg", [{"CPU": 1}]) == [2]


def test_strict_spread_needs_a_node_without_the_groups_bundles() -> None:
    s = _ready_group("STRICT_SPREAD", 2, ("n1", {"CPU": 2}), ("n2", {"CPU": 2}))
    with pytest.raises(InfeasibleError, match=r"only 0 node\(s\) hold none"):
        s.add_bundles("pg", [{"CPU": 1}])
    s.add_node("n3", {"CPU": 1})
    assert s.add_bundles("pg", [{"CPU": 1}]) == [2]
    assert _step(s) == [BundlesReady("pg", ((2, "n3"),))]


def test_a_bundle_larger_than_every_node_is_infeasible_and_changes_nothing() -> None:
    s = _ready_group("PACK")
    with pytest.raises(
        InfeasibleError,
        match=r"adding \{'GPU': 1\} to placement group 'pg' "
        r"\(PACK\) can never succeed",
    ):
        s.add_bundles("pg", [{"GPU": 1}])
    assert s.add_bundles("pg", [{"CPU": 1}]) == [2]  # the failed call used no index


@pytest.mark.parametrize(
    "bundles, match",
    [
        ([], r"bundles is \[\], but add_bundles needs at least one bundle"),
        ({"CPU": 1}, r"add_bundles takes a list of bundles, e.g. \[\{'CPU': 1\}\]"),
        ([{"CPU": 0}], r"bundles\[0\] is \{'CPU': 0\}, but a bundle must reserve"),
        ([{"CPU": -1}], r"bundles\[0\]\['CPU'\] is -1"),
    ],
)
def test_add_bundles_rejects_bad_input_naming_it(bundles: object, match: str) -> None:
    s = _ready_group("PACK")
    with pytest.raises(ValueError, match=match):
        s.add_bundles("pg", bundles)  # type: ignore[arg-type]
    assert s.add_bundles("pg", [{"CPU": 1}]) == [2]


def test_adding_to_a_queued_group_makes_it_bigger_and_it_is_reserved_whole() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    s.submit("hog", {"CPU": 2})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}], "STRICT_PACK")
    assert s.add_bundles("pg", [{"CPU": 1}]) == [1]
    with pytest.raises(InfeasibleError, match="together on one node"):
        s.add_bundles("pg", [{"CPU": 1}])
    s.release("hog")
    assert _step(s) == [PlacementGroupReady("pg", ("n1", "n1"))]


def test_adding_to_an_unknown_group_names_it() -> None:
    s = _scheduler(("n1", {"CPU": 1}))
    with pytest.raises(ValueError, match="placement group 'nope' does not exist"):
        s.add_bundles("nope", [{"CPU": 1}])


# -- remove_bundles --------------------------------------------------------------------------


def test_remove_bundles_returns_what_ran_there_frees_it_and_keeps_the_indices() -> None:
    s = _ready_group("PACK", 3)
    for i in range(3):
        s.submit(f"a{i}", {"CPU": 1}, ("pg", i))
    s.submit("queued1", {"CPU": 1}, ("pg", 1))
    s.submit("any", {"CPU": 1}, ("pg", -1))
    assert _granted(_step(s)) == ["a0", "a1", "a2"]
    assert s.remove_bundles("pg", [1]) == ["a1", "queued1"]
    s._validate()
    assert _row(s) == ({0: {"CPU": 1.0}, 2: {"CPU": 1.0}}, {0: "n1", 2: "n1"}, "CREATED")
    assert s.available_resources() == {"CPU": 2.0}  # bundle 1's CPU went back to the node
    assert s.queued_requests() == ["any"]  # any bundle: still waits for one of the others
    s.release("a1")  # its holder exits later: harmless
    s.release("a2")
    assert _granted(_step(s)) == ["any"]
    assert s.add_bundles("pg", [{"CPU": 1}]) == [3]  # index 1 is never used again
    with pytest.raises(
        ValueError,
        match=r"bundle index is 1, but placement group 'pg' has 3 "
        r"bundles: use 0, 2, 3, or -1 for any bundle",
    ):
        s.submit("late", {"CPU": 1}, ("pg", 1))


def test_removing_an_unreserved_addition_drops_it() -> None:
    s = _ready_group("PACK", 1, ("n1", {"CPU": 2}))
    s.submit("hog", {"CPU": 1})
    _step(s)
    s.add_bundles("pg", [{"CPU": 1}])
    assert not s.is_placement_group_ready("pg")
    assert s.remove_bundles("pg", [1]) == []
    s._validate()
    assert s.is_placement_group_ready("pg")
    with pytest.raises(ValueError, match=r"bundle 1 of placement group 'pg' is not there"):
        s.are_bundles_ready("pg", [1])


def test_removing_every_reserved_bundle_leaves_the_group_queued() -> None:
    s = _ready_group("PACK", 1, ("n1", {"CPU": 2}))
    s.submit("hog", {"CPU": 1})
    _step(s)
    s.add_bundles("pg", [{"CPU": 1}])
    s.remove_bundles("pg", [0])
    s._validate()
    assert _row(s) == ({1: {"CPU": 1.0}}, {}, "PENDING")
    assert _step(s) == [PlacementGroupReady("pg", ("n1",))]


def test_removal_from_a_queued_group() -> None:
    s = _scheduler(("n1", {"CPU": 2}))
    s.submit("hog", {"CPU": 2})
    _step(s)
    s.create_placement_group("pg", [{"CPU": 1}, {"CPU": 1}], "PACK")  # waits for n1
    s.submit("in1", {"CPU": 1}, ("pg", 1))
    assert s.remove_bundles("pg", [1]) == ["in1"]
    s._validate()
    s.release("hog")
    assert _step(s) == [PlacementGroupReady("pg", ("n1",))]


@pytest.mark.parametrize(
    "indices, match",
    [
        (
            [],
            r"indices is \[\], but remove_bundles needs at least one bundle index of "
            r"placement group 'pg' \(0..2\)",
        ),
        ([3], r"bundle index 3 is not a bundle of placement group 'pg': its bundles are 0..2"),
        ([-1], r"bundle index -1 is not a bundle"),
        (["0"], r"bundle index '0' is not a bundle"),
        ([True], r"bundle index True is not a bundle"),
        ([1, 1], r"indices \[1, 1\] names bundle 1 more than once: name each bundle once"),
        (
            [0, 1, 2],
            r"names every bundle of placement group 'pg', but a group keeps at least "
            r"one: use remove_placement_group\(\)",
        ),
        (1, r"indices is 1, but remove_bundles takes a list of bundle indices"),
    ],
)
def test_remove_bundles_rejects_bad_input_naming_it_and_changes_nothing(
    indices: object, match: str
) -> None:
    s = _ready_group("PACK", 3)
    s.submit("a0", {"CPU": 1}, ("pg", 0))
    _step(s)
    before = s.placement_group_table("pg")
    with pytest.raises(ValueError, match=match):
        s.remove_bundles("pg", indices)  # type: ignore[arg-type]
    s._validate()
    assert s.placement_group_table("pg") == before


def test_removing_a_removed_bundle_says_it_was_removed() -> None:
    s = _ready_group("PACK", 3)
    s.remove_bundles("pg", [1])
    with pytest.raises(
        ValueError,
        match=r"bundle index 1 is not a bundle of placement group "
        r"'pg' \(it was removed\): its bundles are 0, 2",
    ):
        s.remove_bundles("pg", [1])


def test_removed_groups_row_keeps_its_last_shape() -> None:
    s = _ready_group("PACK", 3)
    s.remove_bundles("pg", [0])
    s.remove_placement_group("pg")
    assert _row(s) == ({1: {"CPU": 1.0}, 2: {"CPU": 1.0}}, {1: "n1", 2: "n1"}, "REMOVED")
    assert s.available_resources() == {"CPU": 4.0}


def test_a_lost_node_requeues_the_group_with_its_additions() -> None:
    s = _ready_group("PACK", 1, ("n1", {"CPU": 1}), ("n2", {"CPU": 2}))
    s.add_bundles("pg", [{"CPU": 2}])
    assert _step(s) == [BundlesReady("pg", ((1, "n2"),))]
    s.remove_node("n1")
    s._validate()
    assert _row(s)[2] == "RESCHEDULING"
    s.add_node("n3", {"CPU": 1})
    assert _step(s) == [PlacementGroupReady("pg", ("n3", "n2"))]


@pytest.mark.parametrize("seed", range(6))
def test_random_resizes_keep_the_books_balanced(seed: int) -> None:
    rng = random.Random(seed)
    s = _scheduler(("n0", {"CPU": 4, "GPU": 2}), ("n1", {"CPU": 2}))
    groups: list[str] = []
    granted: list[str] = []
    for serial in range(300):
        op = rng.random()
        try:
            if op < 0.25 and groups:
                pg = rng.choice(groups)
                index = rng.choice([-1, *s.placement_group_table(pg)["bundles"]])
                s.submit(f"r{serial}", {"CPU": rng.choice([0, 0.5, 1])}, (pg, index))
            elif op < 0.4 and granted:
                s.release(granted.pop(rng.randrange(len(granted))))
            elif op < 0.5:
                bundles = [{"CPU": 1, "GPU": rng.choice([0, 0.5, 1])}] * rng.randint(1, 3)
                s.create_placement_group(f"pg{serial}", bundles, rng.choice(PLACEMENT_STRATEGIES))
                groups.append(f"pg{serial}")
            elif op < 0.6 and groups:
                pg = rng.choice(groups)
                s.add_bundles(pg, [{"CPU": rng.choice([0.5, 1])}] * rng.randint(1, 2))
            elif op < 0.72 and groups:
                pg = rng.choice(groups)
                live = list(s.placement_group_table(pg)["bundles"])
                lost = s.remove_bundles(pg, rng.sample(live, rng.randint(1, len(live))))
                granted = [g for g in granted if g not in lost]
            elif op < 0.77 and groups:
                s.remove_placement_group(groups.pop(rng.randrange(len(groups))))
            else:
                granted += _granted(s.schedule())
        except ValueError:  # InfeasibleError included: the state must be unchanged
            pass
        s._validate()
        available = s.available_resources()
        assert all(v >= 0 for v in available.values())
