"""The pure scheduler's node affinity and placement-group table (no processes)."""

from __future__ import annotations

import pytest

from trainkit.exceptions import InfeasibleError
from trainkit.runtime._scheduler import ResourceScheduler


def two_nodes() -> ResourceScheduler:
    s = ResourceScheduler()
    s.add_node("a", {"CPU": 1})
    s.add_node("b", {"CPU": 1})
    return s


def test_hard_affinity_waits_for_its_node_even_when_another_is_free():
    s = two_nodes()
    s.submit("r1", {"CPU": 1}, node_affinity=("b", False))
    assert [g.node_id for g in s.schedule()] == ["b"]
    s.submit("r2", {"CPU": 1}, node_affinity=("b", False))
    assert s.schedule() == []  # node a is free, but r2 may only run on b
    s.release("r1")
    assert [(g.request_id, g.node_id) for g in s.schedule()] == [("r2", "b")]


def test_soft_affinity_prefers_its_node_then_falls_back():
    s = two_nodes()
    s.submit("r1", {"CPU": 1}, node_affinity=("b", True))
    s.submit("r2", {"CPU": 1}, node_affinity=("b", True))
    assert [(g.request_id, g.node_id) for g in s.schedule()] == [("r1", "b"), ("r2", "a")]
    s.submit("r3", {"CPU": 0.5}, node_affinity=("gone", True))  # unknown: anywhere
    s.release("r2")
    assert [g.request_id for g in s.schedule()] == ["r3"]


def test_affinity_errors():
    s = two_nodes()
    with pytest.raises(ValueError, match="node 'zz' is unknown; the nodes are a, b"):
        s.submit("r1", {"CPU": 1}, node_affinity=("zz", False))
    with pytest.raises(InfeasibleError, match="node 'a'"):
        s.submit("r2", {"CPU": 2}, node_affinity=("a", False))
    s.create_placement_group("g", [{"CPU": 1}], "PACK")
    with pytest.raises(ValueError, match="cannot be combined"):
        s.submit("r3", {"CPU": 1}, ("g", 0), node_affinity=("a", False))


def test_a_removed_node_fails_the_requests_bound_to_it():
    s = two_nodes()
    s.submit("busy", {"CPU": 1}, node_affinity=("b", False))
    s.schedule()
    s.submit("waiting", {"CPU": 1}, node_affinity=("b", False))
    s.submit("soft", {"CPU": 1}, node_affinity=("b", True))
    assert sorted(s.remove_node("b")) == ["busy", "waiting"]
    assert [g.request_id for g in s.schedule()] == ["soft"]  # runs on a instead


def test_placement_group_table_through_its_life():
    s = two_nodes()
    s.create_placement_group("g", [{"CPU": 1}, {"CPU": 1}], "STRICT_SPREAD", name="pair")
    row = s.placement_group_table("g")
    assert row["state"] == "PENDING" and row["name"] == "pair"
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
    assert row["bundles_to_node_id"] == {}
    s.schedule()
    row = s.placement_group_table("g")
    assert row["state"] == "CREATED" and sorted(row["bundles_to_node_id"].values()) == ["a", "b"]
    s.remove_placement_group("g")
    assert s.placement_group_table("g")["state"] == "REMOVED"
    assert s.placement_group_table()["g"]["state"] == "REMOVED"
    assert s.available_resources() == {"CPU": 2.0}
    with pytest.raises(ValueError, match="'nope' is unknown"):
        s.placement_group_table("nope")
