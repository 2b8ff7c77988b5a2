"""The pure position logic of resumable dataset shards (``trainkit.data._position``): range
sets, what a rank's tracker records, how ranks' states merge, how the remainder of an epoch is
dealt again among any number of ranks, and the per-epoch shuffle seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import Plan
from trainkit.data._plan import Source
from trainkit.data._position import DataPosition
from trainkit.data._position import Dealer
from trainkit.data._position import PositionError
from trainkit.data._position import RangeSet
from trainkit.data._position import ShardTracker
from trainkit.data._position import epoch_seed
from trainkit.data._position import ids_of
from trainkit.data._position import merge_positions
from trainkit.data._position import slice_pairs
from trainkit.data._split import epoch_plan

# --- RangeSet -----------------------------------------------------------------------------


def test_range_set_from_ids_and_pairs_normalises() -> None:
    assert RangeSet.from_ids(np.array([7, 1, 2, 2, 3, 9, 8])).pairs() == ((1, 4), (7, 10))
    assert RangeSet.from_pairs([(5, 8), (0, 2), (2, 3), (6, 10), (4, 4)]).pairs() == \
        ((0, 3), (5, 10))
    assert len(RangeSet.from_pairs([(0, 3), (5, 10)])) == 8
    assert not RangeSet() and RangeSet.from_ids([0])


def test_range_set_union_and_gaps() -> None:
    a = RangeSet.from_pairs([(0, 10), (20, 30)])
    b = RangeSet.from_pairs([(10, 12), (25, 40)])
    assert a.union(b).pairs() == ((0, 12), (20, 40))
    assert a.gaps(5, 35) == [(10, 20), (30, 35)]
    assert a.gaps(10, 20) == [(10, 20)]
    assert a.gaps(0, 10) == []
    assert RangeSet().gaps(3, 5) == [(3, 5)]


def test_range_set_json_round_trip_and_bad_input() -> None:
    s = RangeSet.from_pairs([(0, 3), (8, 9)])
    assert s.to_json() == [0, 3, 8, 9]
    assert RangeSet.from_json(json.loads(json.dumps(s.to_json()))) == s
    with pytest.raises(PositionError, match="flat list of ints"):
        RangeSet.from_json([1, 2, 3])
    with pytest.raises(PositionError, match="0 <= start <= stop"):
        RangeSet.from_pairs([(5, 2)])


def test_slice_pairs_and_ids_of() -> None:
    pairs = ((10, 13), (0, 2), (20, 25))  # a block: rows 10, 11, 12, 0, 1, 20, ..., 24
    assert slice_pairs(pairs, 2, 4) == ((12, 13), (0, 2), (20, 21))
    assert slice_pairs(pairs, 0, 0) == ()
    assert ids_of(slice_pairs(pairs, 4, 3)).tolist() == [1, 20, 21]
    with pytest.raises(ValueError, match="past the 10 rows"):
        slice_pairs(pairs, 8, 3)


# --- the dealer ---------------------------------------------------------------------------


def _run_dealer(dealer: Dealer, blocks: list[int]) -> list[list[int]]:
    """Every rank's ids, dealing blocks of the given sizes."""
    got: list[list[int]] = [[] for _ in range(dealer.n)]
    for rows in blocks:
        deal = dealer.deal(rows)
        for rank, _, length, pairs in deal.cuts:
            assert sum(b - a for a, b in pairs) == length
            got[rank] += ids_of(pairs).tolist()
    for rank_ids in got:
        assert rank_ids == sorted(rank_ids)  # a rank gets its rows in stream order
    return got


def test_equal_deal_gives_every_rank_the_same_rows_and_drops_fewer_than_n() -> None:
    got = _run_dealer(Dealer(3, equal=True), [10, 7, 1, 5])  # 23 rows: 7 each, 2 dropped
    assert [len(g) for g in got] == [7, 7, 7]
    everything = sorted(i for g in got for i in g)
    assert len(set(everything)) == 21 and set(everything) <= set(range(23))


def test_the_remainder_is_dealt_again_among_any_number_of_ranks() -> None:
    # Ranks of a first attempt consumed some rows; the rest go to 1, 2 or 3 new ranks.
    consumed = RangeSet.from_pairs([(0, 40), (50, 55), (90, 96)])
    for n in (1, 2, 3):
        got = _run_dealer(Dealer(n, equal=True, skip=consumed), [30, 30, 30, 30])
        rest = sorted(i for g in got for i in g)
        expected = [i for i in range(120) if not any(a <= i < b for a, b in consumed.pairs())]
        assert len({len(g) for g in got}) == 1  # equal shares
        assert rest == expected[:len(rest)]  # none consumed twice, none repeated
        assert len(expected) - len(rest) < n  # only the last fewer-than-n rows dropped


def test_a_block_wholly_consumed_deals_nothing_and_keeps_the_carry() -> None:
    dealer = Dealer(2, equal=True, skip=RangeSet.from_pairs([(3, 10)]))
    first = dealer.deal(3)  # rows 0, 1, 2: one each, row 2 carried
    assert [c[3] for c in first.cuts] == [((0, 1),), ((1, 2),)]
    assert first.carry == (2, 1, ((2, 3),))
    second = dealer.deal(7)  # rows 3..9 were consumed before
    assert second.keep == () and second.cuts == ()
    assert second.carry == (0, 1, ((2, 3),))
    third = dealer.deal(1)  # row 10 joins the carried row 2
    assert [c[3] for c in third.cuts] == [((2, 3),), ((10, 11),)]
    assert third.keep == ((0, 1),)


def test_unequal_deal_sends_whole_blocks_to_the_shortest_queue() -> None:
    dealer = Dealer(2, equal=False, skip=RangeSet.from_pairs([(2, 4)]))
    deal = dealer.deal(6, shortest=1)
    assert deal.keep == ((0, 2), (4, 6))
    assert deal.cuts == ((1, 0, 4, ((0, 2), (4, 6))),)
    assert dealer.end() == ()


# --- a rank's tracker ---------------------------------------------------------------------


def test_tracker_records_what_was_handed_out_not_what_was_dealt() -> None:
    t = ShardTracker(0)
    t.begin(0)
    t.hand_out(np.array([4, 0, 2]))
    t.hand_out(np.array([1, 3]))
    state = t.state()
    assert state["epoch"] == 0 and state["consumed"] == [0, 5] and state["previous"] == []
    t.finish(0)  # the pass ended: the rank stands at the start of epoch 1
    state = t.state()
    assert state["epoch"] == 1 and state["consumed"] == [] and state["previous"] == [0, 5]
    t.begin(1)  # the next pass is that epoch: nothing changes
    assert t.state()["previous"] == [0, 5]
    t.hand_out(np.array([7]))
    t.begin(2)  # a pass left unfinished, then the next one
    assert t.state() == {"version": 1, "epoch": 2, "consumed": [], "previous": [7, 8]}


def test_tracker_compacts_many_handed_out_ids() -> None:
    t = ShardTracker(0)
    for start in range(0, 200_000, 100):
        t.hand_out(np.arange(start, start + 100))
    assert t.state()["consumed"] == [0, 200_000]


# --- merging ranks' states ------------------------------------------------------------------


def _state(epoch: int, consumed: list[int], previous: list[int] | None = None) -> dict:
    return {"version": 1, "epoch": epoch, "consumed": consumed, "previous": previous or []}


def test_merge_unions_the_ranks_of_one_epoch() -> None:
    base = DataPosition(base_seed=5)
    merged = merge_positions(base, [_state(0, [0, 10]), _state(0, [10, 15, 30, 40])])
    assert merged.epoch == 0 and merged.base_seed == 5
    assert merged.skip(0).pairs() == ((0, 15), (30, 40))


def test_merge_keeps_what_the_attempt_started_from() -> None:
    base = DataPosition(0, {0: RangeSet.from_pairs([(0, 100)])}, 5)
    merged = merge_positions(base, [_state(0, [100, 110]), _state(0, [110, 120])])
    assert merged.skip(0).pairs() == ((0, 120),)  # a second failure loses nothing either


def test_merge_of_ranks_an_epoch_apart_resumes_the_earlier_epoch() -> None:
    # Rank 0 finished its share of epoch 0 (in `previous`) and began epoch 1; rank 1 has not.
    merged = merge_positions(DataPosition(), [_state(1, [0, 4], [0, 50]), _state(0, [50, 90])])
    assert merged.epoch == 0
    assert merged.skip(0).pairs() == ((0, 90),)
    assert merged.skip(1).pairs() == ((0, 4),)


def test_merge_when_every_rank_finished_the_epoch_starts_the_next() -> None:
    base = DataPosition(0, {0: RangeSet.from_pairs([(0, 60)])}, 1)
    merged = merge_positions(base, [_state(1, [], [60, 80]), _state(1, [], [80, 100])])
    assert merged.epoch == 1 and dict(merged.consumed) == {}


def test_merge_rejects_ranks_more_than_an_epoch_apart_and_bad_states() -> None:
    with pytest.raises(PositionError, match=r"epochs \[0, 2\]"):
        merge_positions(DataPosition(), [_state(0, []), _state(2, [])])
    with pytest.raises(PositionError, match="rank 1's dataset position"):
        merge_positions(DataPosition(), [_state(0, []), {"epoch": 0}])


def test_position_json_round_trip() -> None:
    position = DataPosition(3, {3: RangeSet.from_pairs([(0, 5)]), 4: RangeSet.from_ids([9])}, 7)
    again = DataPosition.from_json(json.loads(json.dumps(position.to_json())))
    assert again == position
    with pytest.raises(PositionError, match="version-1"):
        DataPosition.from_json({"epoch": 0})


# --- seeds ----------------------------------------------------------------------------------


def test_unseeded_shuffles_get_a_seed_per_epoch_and_seeded_ones_keep_theirs() -> None:
    plan = Plan(Source(name="s"), (AllToAllOp("random_shuffle", "random_shuffle", {"seed": None}),
                                   AllToAllOp("random_shuffle", "random_shuffle", {"seed": 4}),
                                   AllToAllOp("repartition", "repartition",
                                              {"num_blocks": 2, "shuffle": False})))
    e0, e1 = epoch_plan(plan, 11, 0), epoch_plan(plan, 11, 1)
    assert e0.ops[0].args["seed"] == epoch_seed(11, 0, 0) != e1.ops[0].args["seed"]
    assert epoch_plan(plan, 11, 0) == e0  # the same epoch gets the same order again
    assert e0.ops[1].args["seed"] == 4 == e1.ops[1].args["seed"]
    assert "seed" not in e0.ops[2].args
