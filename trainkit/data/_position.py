"""Where the ranks of a streaming split stand in their epochs: pure values, no I/O.

A row of an epoch is named by its *offset* in the epoch's stream: the rows of the executor's
output blocks, in order (``preserve_order``: the same order on every pass and every rerun of
the same source and plan; shuffle seeds the split draws are part of the position). No id
column is needed, and block boundaries do not matter, only the order of the rows.

- :class:`RangeSet`: a set of offsets as sorted, disjoint ``[start, stop)`` ranges.
- :class:`ShardTracker`: one rank's record of the rows its loop was handed (a batch counts
  once the loop receives it: rows prefetched or still in a local shuffle buffer do not),
  for the epoch in progress and the one before. Its :meth:`~ShardTracker.state` is what the
  rank saves with a checkpoint.
- :class:`Dealer`: which rows of each block of an epoch go to which rank: the rows not yet
  consumed, cut into equal shares (``equal=True``) with the rest carried into the next block.
- :class:`DataPosition`: what a run resumes from: the first epoch not finished by every rank,
  and, per epoch, the rows already consumed. :func:`merge_positions` makes it from the
  position the attempt started from and every rank's state; it does not depend on how many
  ranks there were, so the remainder is dealt again among however many the run resumes with.

Rows handed out after the last committed checkpoint are not in it: a resumed run delivers
them again (that work was lost with the failure).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DataPosition",
    "Deal",
    "Dealer",
    "PositionError",
    "RangeSet",
    "ShardTracker",
    "TrackedPass",
    "epoch_seed",
    "ids_of",
    "merge_positions",
    "slice_pairs",
]

FORMAT_VERSION = 1
_COMPACT_IDS = 1 << 16  # handed-out ids kept as arrays before they are folded into ranges
_COMPACT_RUNS = 1 << 12  # handed-out runs kept as pairs before they are folded

Pairs = tuple[tuple[int, int], ...]
IntArray = npt.NDArray[np.int64]


class PositionError(ValueError):
    """A saved dataset position that cannot be read or does not fit together."""


class RangeSet:
    """An immutable set of non-negative ints as sorted, disjoint, non-touching ranges.

    Example:
        >>> RangeSet.from_ids(np.array([5, 1, 2, 3])).pairs()
        ((1, 4), (5, 6))
    """

    __slots__ = ("_starts", "_stops")

    def __init__(self, starts: IntArray | None = None, stops: IntArray | None = None) -> None:
        self._starts: IntArray = np.zeros(0, np.int64) if starts is None else starts
        self._stops: IntArray = np.zeros(0, np.int64) if stops is None else stops

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[int]]) -> RangeSet:
        """The union of ``[start, stop)`` ranges, in any order, overlapping or not."""
        arr = np.asarray([(int(a), int(b)) for a, b in pairs], np.int64).reshape(-1, 2)
        if (arr[:, 0] < 0).any() or (arr[:, 1] < arr[:, 0]).any():
            raise PositionError(f"ranges must be [start, stop) with 0 <= start <= stop, got "
                                f"{arr.tolist()[:5]}")
        return cls._normalize(arr[:, 0], arr[:, 1])

    @classmethod
    def from_ids(cls, ids: npt.ArrayLike) -> RangeSet:
        """The set of the ints in ``ids`` (any order, duplicates allowed)."""
        values = np.asarray(ids, np.int64).reshape(-1)
        if not len(values):
            return cls()
        steps = np.diff(values)
        if not (steps > 0).all():
            # A sort and a diff: several times faster than np.unique's hashing.
            values = np.sort(values)
            values = values[np.concatenate(([True], np.diff(values) != 0))]
            steps = np.diff(values)
        breaks = np.flatnonzero(steps != 1) + 1
        starts = values[np.concatenate(([0], breaks))]
        stops = values[np.concatenate((breaks - 1, [len(values) - 1]))] + 1
        return cls(starts, stops)

    @classmethod
    def _normalize(cls, starts: IntArray, stops: IntArray) -> RangeSet:
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        if not len(starts):
            return cls()
        order = np.argsort(starts, kind="stable")
        starts, stops = starts[order], stops[order]
        reach = np.maximum.accumulate(stops)
        # A range opens a new run when it starts after everything before it has ended.
        new = np.concatenate(([True], starts[1:] > reach[:-1]))
        heads = np.flatnonzero(new)
        ends = np.concatenate((heads[1:] - 1, [len(starts) - 1]))
        return cls(starts[heads].copy(), reach[ends].copy())

    def union(self, other: RangeSet) -> RangeSet:
        if not len(other._starts):
            return self
        if not len(self._starts):
            return other
        return RangeSet._normalize(np.concatenate((self._starts, other._starts)),
                                   np.concatenate((self._stops, other._stops)))

    def gaps(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The ranges of ``[start, stop)`` that are *not* in the set, in order."""
        out: list[tuple[int, int]] = []
        lo = int(np.searchsorted(self._stops, start, side="right"))
        hi = int(np.searchsorted(self._starts, stop, side="left"))
        at = start
        for a, b in zip(self._starts[lo:hi].tolist(), self._stops[lo:hi].tolist(), strict=True):
            if a > at:
                out.append((at, min(a, stop)))
            at = max(at, b)
        if at < stop:
            out.append((at, stop))
        return out

    def __len__(self) -> int:
        """How many ints the set holds."""
        return int((self._stops - self._starts).sum())

    def __bool__(self) -> bool:
        return bool(len(self._starts))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and np.array_equal(self._starts, other._starts) \
            and np.array_equal(self._stops, other._stops)

    def __hash__(self) -> int:
        return hash(self.pairs())

    def __repr__(self) -> str:
        shown = self.pairs()
        more = f", ... {len(shown) - 4} more" if len(shown) > 4 else ""
        return f"RangeSet({list(shown[:4])}{more})"

    def pairs(self) -> Pairs:
        return tuple(zip(self._starts.tolist(), self._stops.tolist(), strict=True))

    def to_json(self) -> list[int]:
        """Flat ``[start0, stop0, start1, stop1, ...]`` (half the size of a list of pairs)."""
        flat: list[int] = np.stack((self._starts, self._stops), axis=1).reshape(-1).tolist()
        return flat

    @classmethod
    def from_json(cls, flat: Any) -> RangeSet:
        if not isinstance(flat, list) or len(flat) % 2 or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise PositionError(f"a range set is a flat list of ints [start, stop, ...], got "
                                f"{str(flat)[:80]}")
        return cls.from_pairs(zip(flat[0::2], flat[1::2], strict=True))


def slice_pairs(pairs: Pairs, offset: int, length: int) -> Pairs:
    """The offsets of rows ``[offset, offset + length)`` of a block whose rows have the
    offsets ``pairs`` (in row order; the ranges need not be sorted)."""
    out: list[tuple[int, int]] = []
    skip, left = offset, length
    for a, b in pairs:
        if left <= 0:
            break
        size = b - a
        if skip >= size:
            skip -= size
            continue
        take = min(size - skip, left)
        out.append((a + skip, a + skip + take))
        skip, left = 0, left - take
    if left > 0:
        rows = sum(b - a for a, b in pairs)
        raise ValueError(f"slice [{offset}, {offset + length}) is past the {rows} rows of the "
                         "block")
    return tuple(out)


def ids_of(pairs: Pairs) -> IntArray:
    """The offset of every row of a block whose rows have the offsets ``pairs``."""
    if not pairs:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in pairs])


def epoch_seed(base_seed: int, epoch: int, op_index: int) -> int:
    """The seed of the ``op_index``-th shuffle of ``epoch`` when the user gave none: a new
    order every epoch (as Ray's ``random_shuffle()``), yet the same order after a restart."""
    digest = hashlib.blake2b(f"{base_seed}:{epoch}:{op_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


@dataclass(frozen=True, slots=True)
class Deal:
    """What to do with one block of the stream (see :class:`Dealer`).

    ``keep``: the block's rows to deal, as local ``[start, stop)`` ranges (the rest were
    consumed before a restart). The rows to cut are the carry from before, then the kept
    rows: ``cuts`` gives each rank its slice of them, as (rank, start, length, offsets);
    ``carry``, the (start, length, offsets) left over for the next block."""

    keep: tuple[tuple[int, int], ...]
    cuts: tuple[tuple[int, int, int, Pairs], ...]
    carry: tuple[int, int, Pairs] | None


class Dealer:
    """Deals an epoch's stream among ``n`` ranks, skipping the rows in ``skip``.

    ``equal=True``: each block's rows (after the carry) are cut into ``n`` shares of the same
    size, and what is left carries into the next block; fewer than ``n`` rows left at the end
    are dropped. ``equal=False``: each block goes whole to the rank that ``deal`` is told has
    the shortest queue.

    Example:
        >>> d = Dealer(2, equal=True, skip=RangeSet.from_pairs([(0, 3)]))
        >>> d.deal(5).cuts          # rows 3, 4 of the block are left: one each
        ((0, 0, 1, ((3, 4),)), (1, 1, 1, ((4, 5),)))
    """

    def __init__(self, n: int, *, equal: bool, skip: RangeSet | None = None) -> None:
        self.n = n
        self.equal = equal
        self.skip = skip or RangeSet()
        self.offset = 0  # rows of the stream seen so far
        self.carry: Pairs = ()

    def deal(self, rows: int, shortest: int = 0) -> Deal:
        """The next block, of ``rows`` rows; ``shortest``: the rank with the fewest blocks
        waiting (``equal=False``)."""
        start = self.offset
        self.offset += rows
        gaps = self.skip.gaps(start, start + rows) if self.skip else \
            ([(start, start + rows)] if rows else [])
        keep = tuple((a - start, b - start) for a, b in gaps)
        pairs = self.carry + tuple(gaps)
        total = sum(b - a for a, b in pairs)
        self.carry = ()
        if not gaps:  # nothing new: the carry waits for the next block
            self.carry = pairs
            return Deal(keep, (), (0, total, pairs) if total else None)
        if not self.equal:
            return Deal(keep, ((shortest, 0, total, pairs),), None)
        share = total // self.n
        cuts = tuple((r, r * share, share, slice_pairs(pairs, r * share, share))
                     for r in range(self.n)) if share else ()
        left = total - share * self.n
        carry = None
        if left:
            self.carry = slice_pairs(pairs, share * self.n, left)
            carry = (share * self.n, left, self.carry)
        return Deal(keep, cuts, carry)

    def end(self) -> Pairs:
        """The stream ended: the rows still carried (dropped when ``equal``)."""
        carry, self.carry = self.carry, ()
        return () if self.equal else carry


class ShardTracker:
    """One rank's record of the rows its loop was handed, epoch by epoch.

    Threading: ``hand_out``/``begin``/``finish`` are called from the loop's thread (where
    batches are received), ``state`` from the loop's ``report()``; a lock guards both.
    """

    def __init__(self, epoch: int) -> None:
        self._lock = threading.Lock()
        self.epoch = epoch
        self._consumed = RangeSet()
        self._pending: list[IntArray] = []  # handed-out ids in no particular order
        self._pending_rows = 0
        self._runs: list[tuple[int, int]] = []  # handed-out ids that were one ascending run
        self._previous = RangeSet()

    def begin(self, epoch: int) -> None:
        """A pass over ``epoch`` starts (the epoch before it was left, finished or not)."""
        with self._lock:
            if epoch != self.epoch:
                self._advance(epoch)

    def finish(self, epoch: int) -> None:
        """The pass over ``epoch`` ended: every row dealt to this rank was handed out (or
        dropped by ``drop_last``). The rank now stands at the start of the next epoch."""
        with self._lock:
            if epoch == self.epoch:
                self._advance(epoch + 1)

    def _advance(self, epoch: int) -> None:
        self._previous = self._compact() if epoch == self.epoch + 1 else RangeSet()
        self._consumed, self.epoch = RangeSet(), epoch

    def hand_out(self, ids: IntArray) -> None:
        """The loop received the rows ``ids`` (offsets in the current epoch)."""
        if not len(ids):
            return
        first = int(ids[0])
        # Without a local shuffle a batch is one run of offsets (or a few): keep it as a range.
        run = int(ids[-1]) - first == len(ids) - 1 and bool((np.diff(ids) == 1).all())
        with self._lock:
            if run:
                self._runs.append((first, first + len(ids)))
                if len(self._runs) >= _COMPACT_RUNS:
                    self._compact()
                return
            self._pending.append(ids)
            self._pending_rows += len(ids)
            if self._pending_rows >= _COMPACT_IDS:
                self._compact()

    def _compact(self) -> RangeSet:
        if self._runs:
            self._consumed = self._consumed.union(RangeSet.from_pairs(self._runs))
            self._runs = []
        if self._pending:
            ids = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._consumed = self._consumed.union(RangeSet.from_ids(ids))
            self._pending, self._pending_rows = [], 0
        return self._consumed

    def state(self) -> dict[str, Any]:
        """This rank's position, JSON-able: what it saves with a checkpoint."""
        with self._lock:
            return {"version": FORMAT_VERSION, "epoch": self.epoch,
                    "consumed": self._compact().to_json(), "previous": self._previous.to_json()}


@dataclass(frozen=True, slots=True)
class TrackedPass:
    """One pass of a tracked iterator: what its batch loop reports to the tracker."""

    tracker: ShardTracker
    epoch: int

    def hand_out(self, ids: IntArray) -> None:
        self.tracker.hand_out(ids)

    def finish(self) -> None:
        self.tracker.finish(self.epoch)


@dataclass(frozen=True, slots=True)
class DataPosition:
    """Where a split resumes: ``epoch`` is the first epoch some rank had not finished;
    ``consumed[e]`` the rows of epoch ``e`` (>= ``epoch``) already consumed; ``base_seed``
    the seed shuffles without a seed of their own derive each epoch's order from."""

    epoch: int = 0
    consumed: Mapping[int, RangeSet] = field(default_factory=dict)
    base_seed: int | None = None
    source: str | None = None  # what the source looked like (``source_key``), to warn on

    def skip(self, epoch: int) -> RangeSet:
        """The rows of ``epoch`` not to deal again."""
        return self.consumed.get(epoch, RangeSet())

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "epoch": self.epoch, "base_seed": self.base_seed,
                "source": self.source,
                "consumed": {str(e): s.to_json() for e, s in sorted(self.consumed.items())}}

    @classmethod
    def from_json(cls, blob: Any) -> DataPosition:
        if not isinstance(blob, Mapping) or blob.get("version") != FORMAT_VERSION:
            raise PositionError(f"not a version-{FORMAT_VERSION} dataset position: "
                                f"{str(blob)[:120]}")
        try:
            epoch = int(blob["epoch"])
            seed = blob.get("base_seed")
            source = blob.get("source")
            consumed = {int(e): RangeSet.from_json(v) for e, v in dict(blob["consumed"]).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise PositionError(f"a dataset position that does not parse ({e}): "
                                f"{str(blob)[:120]}") from e
        return cls(epoch, {e: s for e, s in consumed.items() if s and e >= epoch},
                   None if seed is None else int(seed), None if source is None else str(source))


def merge_positions(base: DataPosition, rank_states: Sequence[Mapping[str, Any]]
                    ) -> DataPosition:
    """The position after an attempt that started from ``base``, given each of its ranks'
    ``ShardTracker.state()`` at the same report.

    A rank at epoch ``e`` has finished its share of every epoch before ``e``; the rows of
    ``e - 1`` it consumed are in its ``previous``. So the run resumes at the smallest rank
    epoch, and an epoch's consumed rows are the union over ``base`` and every rank.

    Raises:
        PositionError: a state does not parse, or two ranks are more than one epoch apart
            (their reports did not line up with their passes, so the rows between are
            unknown).
    """
    if not rank_states:
        return base
    parsed: list[tuple[int, RangeSet, RangeSet]] = []
    for i, state in enumerate(rank_states):
        if not isinstance(state, Mapping) or state.get("version") != FORMAT_VERSION:
            raise PositionError(f"rank {i}'s dataset position is not a version-"
                                f"{FORMAT_VERSION} position: {str(state)[:120]}")
        try:
            parsed.append((int(state["epoch"]), RangeSet.from_json(state["consumed"]),
                           RangeSet.from_json(state["previous"])))
        except (KeyError, TypeError, ValueError) as e:
            raise PositionError(f"rank {i}'s dataset position does not parse ({e})") from e
    epochs = [p[0] for p in parsed]
    low, high = min(epochs), max(epochs)
    if high - low > 1:
        raise PositionError(
            f"the ranks' dataset positions are in epochs {epochs}, more than one apart: every "
            "rank must take the same number of passes between its reports")
    low = max(low, base.epoch)
    consumed: dict[int, RangeSet] = {e: s for e, s in base.consumed.items() if e >= low}
    for epoch, now, previous in parsed:
        for at, rows in ((epoch, now), (epoch - 1, previous)):
            if at >= low and rows:
                consumed[at] = consumed.get(at, RangeSet()).union(rows)
    return DataPosition(low, consumed, base.base_seed, base.source)
