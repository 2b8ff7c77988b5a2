"""Re-batching a stream of blocks, and prefetching a stream in a background thread.

``iter_batches_from_blocks`` cuts a stream of blocks (pyarrow Tables) into tables of exactly
``batch_size`` rows, optionally through a seeded local shuffle buffer (Ray Data's
``local_shuffle_buffer_size``). ``prefetch`` runs any iterator in a daemon thread, a bounded
number of items ahead of its consumer, and measures how long the consumer waited.

Both are format-agnostic: converting a table into numpy, pandas or torch is someone else's job
(``_block.to_batch``, ``_torch``), so this module imports neither pandas nor torch.
"""

from __future__ import annotations

import collections
import numbers
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from typing import Generic
from typing import TypeVar

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

__all__ = [
    "ROW_ID_COLUMN",
    "Prefetcher",
    "iter_batches_from_blocks",
    "prefetch",
    "prefetch_blocks",
    "split_row_ids",
    "validate_batch_size",
    "validate_local_shuffle_buffer_size",
    "validate_prefetch_batches",
]

T = TypeVar("T")

# A column a resumable iterator adds to its blocks (each row's offset in the epoch, see
# ``_position``) and takes off every batch before the loop sees it: it travels through the
# re-batching and the local shuffle buffer with its row, so the rows handed out are known.
ROW_ID_COLUMN = "__trainkit_row_id__"


def split_row_ids(table: pa.Table) -> tuple[np.ndarray[Any, Any], pa.Table]:
    """(the ``ROW_ID_COLUMN`` of ``table`` as int64 numpy, ``table`` without it)."""
    ids = table.column(ROW_ID_COLUMN).to_numpy()
    return ids, table.drop_columns([ROW_ID_COLUMN])


# --- validation -------------------------------------------------------------------------------


def _as_int(value: object) -> int | None:
    # numpy integers count (a batch size often comes out of a computation); bools do not.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def validate_batch_size(batch_size: object) -> int | None:
    """Return ``batch_size`` as an int (or None), or raise if it is not a valid batch size.

    Raises:
        TypeError: ``batch_size`` is neither an int nor None.
        ValueError: ``batch_size`` is < 1.
    """
    if batch_size is None:
        return None
    value = _as_int(batch_size)
    if value is None:
        raise TypeError(
            f"`batch_size` is {batch_size!r} ({type(batch_size).__name__}), but must be an int "
            ">= 1, or None for one batch per block"
        )
    if value < 1:
        raise ValueError(
            f"`batch_size` is {batch_size!r}, but must be an int >= 1, or None for one batch "
            "per block"
        )
    return value


def validate_local_shuffle_buffer_size(size: object, batch_size: int | None) -> int | None:
    """Return ``local_shuffle_buffer_size`` as an int (or None), or raise if it is invalid.

    A shuffle buffer needs a ``batch_size``: with ``batch_size=None`` every batch is a whole
    block, so there would be nothing to shuffle.

    Raises:
        TypeError: ``size`` is neither an int nor None.
        ValueError: ``size`` is < 1, or ``batch_size`` is None while ``size`` is set.
    """
    if size is None:
        return None
    value = _as_int(size)
    if value is None:
        raise TypeError(
            f"`local_shuffle_buffer_size` is {size!r} ({type(size).__name__}), but must be an "
            "int >= 1 (the fewest rows to keep buffered), or None for no local shuffle"
        )
    if value < 1:
        raise ValueError(
            f"`local_shuffle_buffer_size` is {size!r}, but must be >= 1 (the fewest rows to "
            "keep buffered), or None for no local shuffle"
        )
    if batch_size is None:
        raise ValueError(
            f"`local_shuffle_buffer_size` is {size!r}, but `batch_size` is None (one batch per "
            "block); a local shuffle needs a batch_size"
        )
    return value


def validate_prefetch_batches(prefetch_batches: object) -> int:
    """Return ``prefetch_batches`` as an int, or raise if it is not an int >= 0.

    Raises:
        TypeError: ``prefetch_batches`` is not an int.
        ValueError: ``prefetch_batches`` is < 0.
    """
    value = _as_int(prefetch_batches)
    if value is None:
        raise TypeError(
            f"`prefetch_batches` is {prefetch_batches!r} ({type(prefetch_batches).__name__}), "
            "but must be an int >= 0 (0: no background thread)"
        )
    if value < 0:
        raise ValueError(
            f"`prefetch_batches` is {prefetch_batches!r}, but must be >= 0 "
            "(0: no background thread)"
        )
    return value


def _validate_seed(seed: object) -> int | None:
    if seed is None:
        return None
    value = _as_int(seed)
    if value is None:
        raise TypeError(
            f"`local_shuffle_seed` is {seed!r} ({type(seed).__name__}), but must be an int or None"
        )
    return value


# --- re-batching ------------------------------------------------------------------------------


def iter_batches_from_blocks(
    blocks: Iterable[pa.Table],
    *,
    batch_size: int | None,
    drop_last: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
) -> Iterator[pa.Table]:
    """Re-batch a stream of blocks into tables of exactly ``batch_size`` rows.

    Without a shuffle the rows keep their order. A batch inside one block is a zero-copy slice
    of it; a batch that straddles blocks is a zero-copy ``pa.concat_tables`` of slices, so its
    columns have one chunk per block they came from (converting it to numpy makes the one copy
    that contiguity needs). Empty blocks are skipped.

    With ``local_shuffle_buffer_size`` the rows pass through a buffer, as in Ray Data's local
    shuffle: no batch is emitted until at least ``local_shuffle_buffer_size + batch_size`` rows
    are buffered, each batch is a random sample (without replacement) of a buffer of at least
    ``local_shuffle_buffer_size + batch_size`` rows, and every row comes out exactly once. The
    buffer is reshuffled, which copies it, only once at least ``local_shuffle_buffer_size`` new
    rows have arrived, so each row is copied a bounded number of times; the buffer holds at most
    about ``2 * local_shuffle_buffer_size + batch_size`` rows plus one block. The order is a
    function of ``local_shuffle_seed`` and of the block sizes; ``None`` draws a fresh seed.

    Args:
        blocks: the stream of blocks, all with the same schema (null-typed columns are
            promoted, as ``pa.concat_tables(promote_options="default")`` does).
        batch_size: rows per batch; the last batch is shorter unless ``drop_last``. ``None``
            emits each (non-empty) block as one batch.
        drop_last: drop a last batch of fewer than ``batch_size`` rows.
        local_shuffle_buffer_size: the fewest rows to keep buffered for the local shuffle;
            ``None`` for no shuffle. Needs a ``batch_size``.
        local_shuffle_seed: the shuffle's seed.

    Returns:
        An iterator of pyarrow Tables. Arguments are checked when this is called, not when
        iteration starts.

    Raises:
        TypeError, ValueError: an invalid argument (see the ``validate_*`` functions).

    Example:
        >>> import pyarrow as pa
        >>> blocks = [pa.table({"x": [0, 1, 2]}), pa.table({"x": [3, 4]})]
        >>> [t["x"].to_pylist() for t in iter_batches_from_blocks(blocks, batch_size=2)]
        [[0, 1], [2, 3], [4]]
    """
    batch_size = validate_batch_size(batch_size)
    buffer_size = validate_local_shuffle_buffer_size(local_shuffle_buffer_size, batch_size)
    seed = _validate_seed(local_shuffle_seed)
    if batch_size is None:
        return _whole_blocks(blocks)
    if buffer_size is None:
        return _sequential(blocks, batch_size, drop_last)
    return _shuffled(blocks, batch_size, drop_last, buffer_size, np.random.default_rng(seed))


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


def _whole_blocks(blocks: Iterable[pa.Table]) -> Iterator[pa.Table]:
    for block in blocks:
        if block.num_rows:
            yield block


class _RowQueue:
    """Tables queued in order; ``take(n)`` removes the first ``n`` rows as one table, slicing
    (zero-copy) the table it stops in."""

    def __init__(self) -> None:
        self._tables: collections.deque[pa.Table] = collections.deque()
        self.num_rows = 0

    def append(self, table: pa.Table) -> None:
        if table.num_rows:
            self._tables.append(table)
            self.num_rows += table.num_rows

    def take(self, n: int) -> pa.Table:
        parts: list[pa.Table] = []
        needed = min(n, self.num_rows)
        self.num_rows -= needed
        while needed:
            head = self._tables[0]
            if head.num_rows <= needed:
                parts.append(self._tables.popleft())
                needed -= head.num_rows
            else:
                parts.append(head.slice(0, needed))
                self._tables[0] = head.slice(needed)
                needed = 0
        return _concat(parts)

    def take_all(self) -> pa.Table:
        return self.take(self.num_rows)


def _sequential(blocks: Iterable[pa.Table], batch_size: int, drop_last: bool) -> Iterator[pa.Table]:
    queue = _RowQueue()
    for block in blocks:
        queue.append(block)
        while queue.num_rows >= batch_size:
            yield queue.take(batch_size)
    if queue.num_rows and not drop_last:
        yield queue.take_all()


def _shuffled(
    blocks: Iterable[pa.Table],
    batch_size: int,
    drop_last: bool,
    buffer_size: int,
    rng: np.random.Generator,
) -> Iterator[pa.Table]:
    # Rows live in two places: `shuffled`, a table already in random order whose front is cut
    # into batches, and `arrived`, blocks not yet mixed in. Batches come only from `shuffled`,
    # and only while it keeps `buffer_size` rows after the batch; when it runs low, `arrived`
    # is mixed in by one permutation of both (a copy), once `arrived` holds `buffer_size` rows,
    # which bounds how often a row is copied.
    shuffled = _RowQueue()
    arrived = _RowQueue()

    def reshuffle() -> None:
        parts = [queue.take_all() for queue in (shuffled, arrived) if queue.num_rows]
        table = _concat(parts)
        shuffled.append(table.take(rng.permutation(table.num_rows)))

    for block in blocks:
        arrived.append(block)
        if (
            shuffled.num_rows < buffer_size + batch_size
            and arrived.num_rows >= buffer_size
            and shuffled.num_rows + arrived.num_rows >= buffer_size + batch_size
        ):
            reshuffle()
        while shuffled.num_rows >= buffer_size + batch_size:
            yield shuffled.take(batch_size)
    if arrived.num_rows:
        reshuffle()
    while shuffled.num_rows >= batch_size:
        yield shuffled.take(batch_size)
    if shuffled.num_rows and not drop_last:
        yield shuffled.take_all()


# --- prefetching ------------------------------------------------------------------------------


class _Channel:
    """The state a producer thread and its consumer share. The thread holds this, never the
    :class:`Prefetcher`, so that dropping the Prefetcher lets it be collected (and its
    finalizer stop the thread)."""

    def __init__(self, capacity: int, weight: Callable[[Any], float] | None = None) -> None:
        self.capacity = capacity
        self.weight = weight  # None: every item weighs 1
        self.queued = 0.0  # the weight of ``items``
        self.cond = threading.Condition()
        self.items: collections.deque[Any] = collections.deque()
        self.done = False  # the producer delivered its last item (or its error)
        self.error: BaseException | None = None
        self.stopped = False  # the consumer closed: the producer must stop


def _pulled_when_room(source: Iterator[Any], channel: _Channel) -> Iterator[Any]:
    """The source's items; for a weighted channel (blocks), each pulled only once the queue
    has room, so the thread holds no block beyond the queue's: pulling a block runs the
    executor, which launches tasks, and tasks launched far ahead of the consumer compete
    with it for the CPUs."""
    if channel.weight is None:
        yield from source
        return
    cond = channel.cond
    while True:
        with cond:
            while channel.items and channel.queued >= channel.capacity and \
                    not channel.stopped:
                cond.wait()
            if channel.stopped:
                return
        try:
            item = next(source)
        except StopIteration:
            return
        yield item


def _produce(source: Iterator[Any], channel: _Channel) -> None:
    cond = channel.cond
    weight = channel.weight
    try:
        for item in _pulled_when_room(source, channel):
            w = 1.0 if weight is None else weight(item)
            with cond:
                # Full: the queue holds ``capacity`` worth (always room for one item, so an
                # item heavier than the capacity still goes through alone).
                while channel.items and channel.queued >= channel.capacity and \
                        not channel.stopped:
                    cond.wait()
                if channel.stopped:
                    return
                channel.items.append((item, w))
                channel.queued += w
                cond.notify_all()
    except BaseException as error:  # the consumer, not this thread, decides what is fatal
        with cond:
            channel.error = error
    finally:
        with cond:
            channel.done = True
            cond.notify_all()
        # The source is closed here, in the thread that ran it: a generator cannot be closed
        # from another thread while it runs, and its cleanup (an upstream prefetcher, the
        # executor) belongs to the thread that drove it.
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _shutdown(channel: _Channel, thread: threading.Thread | None, source: Any) -> None:
    with channel.cond:
        channel.stopped = True
        channel.items.clear()
        channel.queued = 0.0
        channel.cond.notify_all()
    if thread is None:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    elif thread is not threading.current_thread():
        thread.join()


class Prefetcher(Generic[T]):
    """An iterator that runs another one in a background daemon thread, up to ``n`` items
    ahead of its consumer (see :func:`prefetch`).

    Threading: one consumer thread calls ``__next__``; ``close`` may come from any thread.
    The source iterator is driven only by the producer thread, which also closes it.
    """

    def __init__(self, source: Iterable[T], n: int,
                 weight: Callable[[T], float] | None = None) -> None:
        n = validate_prefetch_batches(n)
        self._source: Iterator[T] | None = iter(source)
        self._channel = _Channel(n, weight)
        self._thread: threading.Thread | None = None
        self._wait_s = 0.0
        self._exhausted = False
        if n:
            self._thread = threading.Thread(
                target=_produce,
                args=(self._source, self._channel),
                name="trainkit-prefetch",
                daemon=True,
            )
            self._source = None  # from now on the thread owns it
            self._thread.start()
        # Stops and joins the thread when the consumer drops this object without closing it.
        self._finalizer = weakref.finalize(
            self, _shutdown, self._channel, self._thread, self._source
        )
        self._finalizer.atexit = False  # a daemon thread dies with the interpreter anyway

    @property
    def wait_s(self) -> float:
        """Total seconds the consumer spent in ``__next__`` waiting for an item (with
        ``n=0``: the time the source took to produce it)."""
        return self._wait_s

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._exhausted:
            raise StopIteration
        start = time.perf_counter()
        try:
            if self._thread is None:
                return self._next_inline()
            return self._next_queued()
        finally:
            self._wait_s += time.perf_counter() - start

    def _next_inline(self) -> T:
        assert self._source is not None
        try:
            return next(self._source)
        except BaseException:
            self._exhausted = True
            raise

    def _next_queued(self) -> T:
        channel = self._channel
        with channel.cond:
            while not channel.items and not channel.done and not channel.stopped:
                channel.cond.wait()
            if channel.items:
                item: T
                item, w = channel.items.popleft()
                channel.queued -= w
                channel.cond.notify_all()
                return item
            error, channel.error = channel.error, None
        self._exhausted = True
        self.close()  # the thread has finished (or is told to): join it now
        if error is not None:
            raise error
        raise StopIteration

    def close(self) -> None:
        """Stop the producer thread (after the item it is producing, if any), join it, and
        close the source iterator. Idempotent."""
        self._exhausted = True
        self._finalizer()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def prefetch(iterator: Iterable[T], n: int) -> Prefetcher[T]:
    """Run ``iterator`` in a background daemon thread, at most ``n`` items ahead.

    The thread starts at once. An exception from the source is raised to the consumer, at the
    position in the stream where it happened. Closing the returned iterator (``close()``, a
    ``with`` block, or dropping the last reference to it) stops the thread, joins it, and
    closes the source in that thread; items produced but not consumed are dropped. ``close``
    waits for the item the source is producing, if any. ``n=0`` uses no thread: the source
    runs in the consumer's ``__next__``.

    Args:
        iterator: the source; driven only by the background thread once this returns.
        n: the most items produced ahead of the consumer (the queue's size).

    Returns:
        A :class:`Prefetcher`; its ``wait_s`` is the total time the consumer spent waiting.

    Raises:
        TypeError, ValueError: ``n`` is not an int >= 0.

    Example:
        >>> with prefetch(iter(range(3)), 2) as items:
        ...     list(items)
        [0, 1, 2]
    """
    return Prefetcher(iterator, n)


class _Inline(Prefetcher[T]):
    """A pipeline run in the consumer's thread over blocks fetched ahead by another
    :class:`Prefetcher`; ``wait_s`` is the time spent waiting for those blocks."""

    def __init__(self, source: Iterator[T], ahead: Prefetcher[Any]) -> None:
        super().__init__(source, 0)
        self._ahead = ahead

    @property
    def wait_s(self) -> float:
        return self._ahead.wait_s

    def close(self) -> None:
        super().close()
        self._ahead.close()  # (a generator closed before it started runs no cleanup)


def prefetch_blocks(
    blocks: Iterable[pa.Table],
    n: int,
    batch_size: int | None,
    then: Callable[[Iterator[pa.Table]], Iterator[T]],
) -> Prefetcher[T]:
    """``then(blocks)`` (the re-batching and conversion of the blocks into batches), run in
    the consumer's thread, over blocks fetched ahead in a background thread: as many blocks as
    hold ``n`` batches of ``batch_size`` rows, and at least one (Ray Data's prefetching).

    Why blocks and not batches cross the thread: handing each batch from one thread to the
    other costs a wake-up and a GIL switch (about 100 us), more than cutting and converting a
    batch (tens of us); a block crosses once for many batches. What the background thread
    overlaps with the consumer is the wait for blocks (tasks, object store), where the time
    goes. ``n=0`` uses no thread.

    Raises:
        TypeError, ValueError: ``n`` is not an int >= 0.
    """
    n = validate_prefetch_batches(n)
    if n == 0:
        return Prefetcher(then(iter(blocks)), 0)
    rows = batch_size
    ahead: Prefetcher[pa.Table] = Prefetcher(
        blocks, n, None if rows is None else (lambda block: block.num_rows / rows)
    )
    try:
        pipeline = then(ahead)  # (it may check its arguments now)
    except BaseException:
        ahead.close()
        raise
    return _Inline(pipeline, ahead)
