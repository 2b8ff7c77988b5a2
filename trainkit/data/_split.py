"""``streaming_split``: one coordinator actor runs the dataset and deals its rows to n
consumers (the ranks of a Trainer), epoch after epoch.

With ``equal=True`` each block is cut into n slices of the same length (the rows left over
carry into the next block; fewer than n left at the end of an epoch are dropped), so every
rank gets the same number of rows and DDP's all-reduce never waits on a rank that ran out.
The coordinator pulls blocks only while the consumers' queues are short, so memory stays
bounded; a consumer that stops taking its blocks holds the others back, and after
``lag_timeout_s`` (default 600 s) their wait fails with an error that names it.

Resumable: every dealt block carries the offsets of its rows in the epoch's stream (see
``_position``), each consumer records what its loop was handed, and :func:`restore_split`
starts an attempt of a run from a saved :class:`DataPosition`: the coordinator drops whatever
the previous attempt had in flight, runs each epoch again (the same rows in the same order:
shuffles without a seed take theirs from the split's ``base_seed`` and the epoch) and deals
only the rows not consumed yet, among however many consumers there are now.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import trainkit.runtime as rt
from trainkit.data._batcher import ROW_ID_COLUMN
from trainkit.data._block import block_rows
from trainkit.data._block import block_to_rows
from trainkit.data._block import concat_blocks
from trainkit.data._block import slice_block
from trainkit.data._context import DataContext
from trainkit.data._dataset import DataIterator
from trainkit.data._dataset import Dataset
from trainkit.data._executor import Executor
from trainkit.data._executor import get_block
from trainkit.data._executor import put_block
from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import Plan
from trainkit.data._plan import Source
from trainkit.data._position import DataPosition
from trainkit.data._position import Dealer
from trainkit.data._position import Pairs
from trainkit.data._position import RangeSet
from trainkit.data._position import ShardTracker
from trainkit.data._position import TrackedPass
from trainkit.data._position import epoch_seed
from trainkit.data._position import ids_of

QUEUE_BLOCKS = 2  # per consumer, dealt ahead of its requests
LAG_TIMEOUT_S = 600.0
RESET_TIMEOUT_S = 60.0
# Operators whose order comes from a seed; without one, each epoch draws its own.
_SEEDED = ("random_shuffle", "random_sample", "repartition")


class StaleSplitError(RuntimeError):
    """A consumer of an attempt the split has since been restarted past."""


def source_key(plan: Plan) -> str:
    """What a position's offsets depend on, in words: the source and its block count. Rows
    are matched by their order in the stream, which a different block count does not change
    for the sources (``range``, files in sorted order, in-memory data), but transforms that
    see whole blocks (``random_sample``, ``map_batches(batch_size=None)``) may."""
    source = plan.source
    blocks = len(source.read_tasks) or len(source.block_refs)
    return f"{source.name} of {blocks} blocks, then {len(plan.ops)} operators"


def epoch_plan(plan: Plan, base_seed: int, epoch: int) -> Plan:
    """``plan`` with a seed for every shuffle and sample that has none: a new order each
    epoch (as Ray's), the same one when the epoch runs again after a restart (pure)."""
    ops = []
    for i, op in enumerate(plan.ops):
        if isinstance(op, AllToAllOp) and op.kind in _SEEDED and op.args.get("seed") is None \
                and (op.kind != "repartition" or op.args.get("shuffle")):
            op = dataclasses.replace(op, args={**op.args, "seed": epoch_seed(base_seed, epoch, i)})
        ops.append(op)
    return Plan(plan.source, tuple(ops))


class _Epoch:
    """One pass over the dataset: its executor, where its stream is, and what it has dealt,
    per consumer, as (block ref, row offsets) pairs."""

    def __init__(self, plan: Plan, n: int, equal: bool, context: DataContext | None,
                 skip: RangeSet) -> None:
        self.queues: list[collections.deque[tuple[Any, Pairs]]] = [
            collections.deque() for _ in range(n)]
        self.stream: Iterator[Any] = iter(Executor(plan, context=context))
        # Which rows go where; rows consumed before a restart (``skip``) are not dealt again.
        self.dealer = Dealer(n, equal=equal, skip=skip)
        self.carry: Any = None  # the rows the dealer carries, as a block
        self.done = False
        self.pulling = False
        self.stale = False  # the split was reset: close the stream, deal nothing more
        self.finished: set[int] = set()
        self.error: BaseException | None = None

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


class SplitCoordinator:
    """The actor behind a streaming split (threaded: one call per waiting consumer)."""

    def __init__(self, plan: Plan, n: int, equal: bool, lag_timeout_s: float,
                 context: DataContext | None = None, base_seed: int = 0) -> None:
        self.plan = plan
        self.context = context  # the driver's, when the split was made
        self.n = n
        self.equal = equal
        self.lag_timeout_s = lag_timeout_s
        self.cv = threading.Condition()
        self.epochs: dict[int, _Epoch] = {}
        self.attempt = 0
        self.position = DataPosition(base_seed=base_seed)

    def reset(self, attempt: int, position: Mapping[str, Any]) -> list[str]:
        """Start attempt ``attempt`` from ``position``: what earlier attempts had in flight
        is dropped, and their consumers' calls fail (``StaleSplitError``). Returns warnings
        about a position that may not name the same rows any more."""
        restored = DataPosition.from_json(position)
        notes: list[str] = []
        resumes = restored.epoch > 0 or bool(restored.consumed)
        key = source_key(self.plan)
        if resumes and restored.source is not None and restored.source != key:
            notes.append(
                f"the dataset's position was saved for a source of {restored.source}, and it "
                f"is now {key}: rows are matched by their order in the stream, so transforms "
                "that depend on block boundaries may give other rows than before")
        if resumes and self.context is not None and \
                not self.context.execution_options.preserve_order:
            notes.append(
                "DataContext.execution_options.preserve_order is False: a pass may give its "
                "rows in another order, so the resumed epoch may repeat or skip rows; set it to "
                "True (the default) for exactly-once resume")
        with self.cv:
            old, self.epochs = list(self.epochs.values()), {}
            self.attempt = attempt
            self.position = restored
            for ep in old:
                ep.stale = True
            self.cv.notify_all()
        for ep in old:
            if not ep.pulling:  # else the puller closes it when its block arrives
                ep.close()
        return notes

    def _new_epoch(self, epoch: int) -> _Epoch:
        seed = self.position.base_seed or 0
        return _Epoch(epoch_plan(self.plan, seed, epoch), self.n, self.equal, self.context,
                      self.position.skip(epoch))

    def _deal(self, ep: _Epoch, block: Any) -> None:
        rows = block_rows(block)
        deal = ep.dealer.deal(rows, min(range(self.n), key=lambda r: len(ep.queues[r])))
        pieces = [] if ep.carry is None else [ep.carry]
        pieces += [block if (a, b) == (0, rows) else slice_block(block, a, b - a)
                   for a, b in deal.keep]
        if not pieces:
            return
        joined = pieces[0] if len(pieces) == 1 else concat_blocks(pieces)
        for rank, start, length, pairs in deal.cuts:
            ep.queues[rank].append((put_block(slice_block(joined, start, length)), pairs))
        ep.carry = None if deal.carry is None else \
            slice_block(joined, deal.carry[0], deal.carry[1])

    def _pull(self, ep: _Epoch) -> None:
        """Take the next block from the epoch's executor; called without the lock held."""
        try:
            _, block = next(ep.stream)
        except StopIteration:
            block = None
        except BaseException as e:  # a task failed for good: every consumer gets the error
            with self.cv:
                ep.error, ep.done, ep.pulling = e, True, False
                self.cv.notify_all()
            return
        with self.cv:
            ep.pulling = False
            stale = ep.stale
            if stale:
                pass
            elif block is None:
                rest = ep.dealer.end()  # equal: fewer than n rows left over are dropped
                if rest and ep.carry is not None:
                    ep.queues[0].append((put_block(ep.carry), rest))
                ep.carry = None
                ep.done = True
            else:
                self._deal(ep, block)
            self.cv.notify_all()
        if stale:
            ep.close()

    def _check_attempt(self, rank: int, attempt: int) -> None:
        if attempt != self.attempt:
            raise StaleSplitError(
                f"rank {rank} of attempt {attempt} asked for data, but the split was restarted "
                f"for attempt {self.attempt}")

    def next_block(self, rank: int, epoch: int, attempt: int = 0) -> tuple[Any, Pairs] | None:
        """This rank's next (block ref, row offsets) of ``epoch``, or None when its epoch is
        over."""
        deadline = time.monotonic() + self.lag_timeout_s
        with self.cv:
            self._check_attempt(rank, attempt)
            ep = self.epochs.get(epoch)
            if ep is None:
                ep = self.epochs[epoch] = self._new_epoch(epoch)
            while True:
                self._check_attempt(rank, attempt)
                if ep.error is not None:
                    raise ep.error
                if ep.queues[rank]:
                    return ep.queues[rank].popleft()
                if ep.done:
                    ep.finished.add(rank)
                    if len(ep.finished) == self.n and self.epochs.get(epoch) is ep:
                        del self.epochs[epoch]
                    return None
                full = [r for r in range(self.n) if len(ep.queues[r]) >= QUEUE_BLOCKS]
                if not ep.pulling and not full:
                    ep.pulling = True
                    self.cv.release()
                    try:
                        self._pull(ep)
                    finally:
                        self.cv.acquire()
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"rank {rank} waited {self.lag_timeout_s:g} s for data in epoch {epoch}: "
                        f"ranks {full} have not taken their blocks (a rank that lags holds "
                        "every rank back)")
                self.cv.wait(1.0)


def _with_row_ids(block: Any, pairs: Pairs) -> Any:
    return block.append_column(ROW_ID_COLUMN, _id_array(pairs))


def _id_array(pairs: Pairs) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return pa.array(ids_of(pairs), type=pa.int64())


class StreamSplitDataIterator(DataIterator):
    """One consumer's view of a streaming split: each ``iter_*`` call is one epoch.

    It records the rows its loop is handed (``ShardTracker``) so that a Trainer can save its
    position with each checkpoint (``_save_position``) and resume from it."""

    def __init__(self, coordinator: Any, rank: int, n: int, base_seed: int = 0,
                 source: str | None = None) -> None:
        self._coordinator = coordinator
        self._rank = rank
        self._n = n
        self._epoch = 0
        self._attempt = 0
        self._base_seed = base_seed
        self._source = source
        self._tracker: ShardTracker | None = None

    def __repr__(self) -> str:
        return f"DataIterator(rank {self._rank} of {self._n})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tracker"] = None  # a rank starts recording where the iterator was sent from
        return state

    def _get_tracker(self) -> ShardTracker:
        if self._tracker is None:
            self._tracker = ShardTracker(self._epoch)
        return self._tracker

    def _save_position(self) -> dict[str, Any]:
        """This rank's position (JSON-able), saved by the Trainer with each report."""
        return self._get_tracker().state()

    def _refs(self, epoch: int) -> Iterator[tuple[Any, Pairs]]:
        while True:
            got = rt.get(self._coordinator.next_block.remote(self._rank, epoch, self._attempt))
            if got is None:
                return
            ref, pairs = got
            yield ref, tuple((int(a), int(b)) for a, b in pairs)

    def _start_pass(self) -> TrackedPass:
        tracker = self._get_tracker()
        epoch = self._epoch
        self._epoch += 1
        tracker.begin(epoch)
        return TrackedPass(tracker, epoch)

    def _blocks(self) -> Iterator[Any]:
        # Untracked (schema()): the pass's rows count as not consumed.
        epoch = self._epoch
        self._epoch += 1
        for ref, _ in self._refs(epoch):
            yield get_block(ref)

    def _tracked_pass(self) -> tuple[Iterator[Any], TrackedPass]:
        handle = self._start_pass()

        def blocks() -> Iterator[Any]:
            for ref, pairs in self._refs(handle.epoch):
                yield _with_row_ids(get_block(ref), pairs)

        return blocks(), handle

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        handle = self._start_pass()
        for ref, pairs in self._refs(handle.epoch):
            ids = ids_of(pairs)
            for i, row in enumerate(block_to_rows(get_block(ref))):
                handle.hand_out(ids[i:i + 1])
                yield row
        handle.finish()

    def materialize(self) -> Dataset:
        """This rank's next pass, kept in the object store as a dataset."""
        handle = self._start_pass()
        refs, rows = [], []
        for ref, pairs in self._refs(handle.epoch):
            refs.append(ref)
            rows.append(sum(b - a for a, b in pairs))
            handle.hand_out(ids_of(pairs))
        handle.finish()
        return Dataset(Plan(Source(block_refs=tuple(refs), block_rows=tuple(rows),
                                   name="Materialized")))


def make_streaming_split(plan: Plan, n: int, equal: bool,
                         lag_timeout_s: float = LAG_TIMEOUT_S) -> list[StreamSplitDataIterator]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"streaming_split({n!r}): n must be an int >= 1")
    if not lag_timeout_s > 0:
        raise ValueError(f"lag_timeout_s is {lag_timeout_s!r}, but must be > 0 seconds")
    if not rt.is_initialized():
        rt.init()
    base_seed = secrets.randbits(62)
    coordinator = rt.remote(SplitCoordinator).options(
        num_cpus=0, max_concurrency=n + 2).remote(plan, n, equal, lag_timeout_s,
                                                  DataContext.get_current().copy(), base_seed)
    key = source_key(plan)
    return [StreamSplitDataIterator(coordinator, rank, n, base_seed, key) for rank in range(n)]


def restore_split(iterators: Sequence[StreamSplitDataIterator], attempt: int,
                  saved: Mapping[str, Any] | None) -> DataPosition:
    """Start attempt ``attempt`` of the consumers ``iterators`` (every rank of one split,
    as the driver holds them, before they are sent to the ranks) from ``saved`` (a
    ``DataPosition.to_json()``, from any number of ranks) or from the start. Returns the
    position the attempt starts from: ``merge_positions`` of it and the ranks' states is
    the position to save with their next checkpoint.

    Raises:
        PositionError: ``saved`` does not parse.
    """
    first = iterators[0]
    position = DataPosition.from_json(saved) if saved is not None else \
        DataPosition(base_seed=first._base_seed)
    if position.base_seed is None:
        position = dataclasses.replace(position, base_seed=first._base_seed)
    for line in rt.get(first._coordinator.reset.remote(attempt, position.to_json()),
                       timeout=RESET_TIMEOUT_S):
        warnings.warn(line, stacklevel=2)
    # From now on the position describes the source as it is (a rerun's first save).
    position = dataclasses.replace(position, source=first._source)
    for it in iterators:
        it._epoch = position.epoch
        it._attempt = attempt
        it._base_seed = position.base_seed or 0
        it._tracker = None
    return position
