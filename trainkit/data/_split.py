"""``streaming_split``: one coordinator actor runs the dataset and deals its rows to n
consumers (the ranks of a Trainer), epoch after epoch.

With ``equal=True`` each block is cut into n slices of the same length (the rows left over
carry into the next block; fewer than n left at the end of an epoch are dropped), so every
rank gets the same number of rows and DDP's all-reduce never waits on a rank that ran out.
The coordinator pulls blocks only while the consumers' queues are short, so memory stays
bounded; a consumer that stops taking its blocks holds the others back, and after
``lag_timeout_s`` (default 600 s) their wait fails with an error that names it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import trainkit.runtime as rt
from trainkit.data._block import block_rows
from trainkit.data._block import concat_blocks
from trainkit.data._block import slice_block
from trainkit.data._context import DataContext
from trainkit.data._dataset import DataIterator
from trainkit.data._executor import Executor
from trainkit.data._executor import get_block
from trainkit.data._executor import put_block
from trainkit.data._plan import Plan

QUEUE_BLOCKS = 2  # per consumer, dealt ahead of its requests
LAG_TIMEOUT_S = 600.0


class _Epoch:
    """One pass over the dataset: its executor and what it has dealt, per consumer."""

    def __init__(self, plan: Plan, n: int, context: DataContext | None) -> None:
        self.queues: list[collections.deque[Any]] = [collections.deque() for _ in range(n)]
        self.stream: Iterator[Any] = iter(Executor(plan, context=context))
        self.carry: Any = None
        self.done = False
        self.pulling = False
        self.finished: set[int] = set()
        self.error: BaseException | None = None


class SplitCoordinator:
    """The actor behind a streaming split (threaded: one call per waiting consumer)."""

    def __init__(self, plan: Plan, n: int, equal: bool, lag_timeout_s: float,
                 context: DataContext | None = None) -> None:
        self.plan = plan
        self.context = context  # the driver's, when the split was made
        self.n = n
        self.equal = equal
        self.lag_timeout_s = lag_timeout_s
        self.cv = threading.Condition()
        self.epochs: dict[int, _Epoch] = {}

    def _deal(self, ep: _Epoch, block: Any) -> None:
        if ep.carry is not None:
            block = concat_blocks([ep.carry, block])
            ep.carry = None
        rows = block_rows(block)
        if not self.equal:
            target = min(range(self.n), key=lambda r: len(ep.queues[r]))
            ep.queues[target].append(put_block(block))
            return
        share = rows // self.n
        if share:
            for r in range(self.n):
                ep.queues[r].append(put_block(slice_block(block, r * share, share)))
        if rows - share * self.n:
            ep.carry = slice_block(block, share * self.n, rows - share * self.n)

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
            if block is None:
                if ep.carry is not None and not self.equal:
                    ep.queues[0].append(put_block(ep.carry))
                ep.carry = None  # equal: fewer than n rows left over are dropped
                ep.done = True
            else:
                self._deal(ep, block)
            ep.pulling = False
            self.cv.notify_all()

    def next_block(self, rank: int, epoch: int) -> Any:
        """This rank's next block ref of ``epoch``, or None when its epoch is over."""
        deadline = time.monotonic() + self.lag_timeout_s
        with self.cv:
            ep = self.epochs.get(epoch)
            if ep is None:
                ep = self.epochs[epoch] = _Epoch(self.plan, self.n, self.context)
            while True:
                if ep.error is not None:
                    raise ep.error
                if ep.queues[rank]:
                    return ep.queues[rank].popleft()
                if ep.done:
                    ep.finished.add(rank)
                    if len(ep.finished) == self.n:
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


class StreamSplitDataIterator(DataIterator):
    """One consumer's view of a streaming split: each ``iter_*`` call is one epoch."""

    def __init__(self, coordinator: Any, rank: int, n: int) -> None:
        self._coordinator = coordinator
        self._rank = rank
        self._n = n
        self._epoch = 0

    def __repr__(self) -> str:
        return f"DataIterator(rank {self._rank} of {self._n})"

    def _blocks(self) -> Iterator[Any]:
        epoch = self._epoch
        self._epoch += 1
        while True:
            ref = rt.get(self._coordinator.next_block.remote(self._rank, epoch))
            if ref is None:
                return
            yield get_block(ref)


def make_streaming_split(plan: Plan, n: int, equal: bool,
                         lag_timeout_s: float = LAG_TIMEOUT_S) -> list[StreamSplitDataIterator]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"streaming_split({n!r}): n must be an int >= 1")
    if not lag_timeout_s > 0:
        raise ValueError(f"lag_timeout_s is {lag_timeout_s!r}, but must be > 0 seconds")
    if not rt.is_initialized():
        rt.init()
    coordinator = rt.remote(SplitCoordinator).options(
        num_cpus=0, max_concurrency=n + 2).remote(plan, n, equal, lag_timeout_s,
                                      DataContext.get_current().copy())
    return [StreamSplitDataIterator(coordinator, rank, n) for rank in range(n)]
