"""Re-batching blocks (order, sizes, zero-copy, local shuffle) and the prefetch thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from collections.abc import Iterator

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from trainkit.data._batcher import Prefetcher
from trainkit.data._batcher import iter_batches_from_blocks
from trainkit.data._batcher import prefetch
from trainkit.data._batcher import validate_batch_size
from trainkit.data._batcher import validate_local_shuffle_buffer_size
from trainkit.data._batcher import validate_prefetch_batches

# Uneven, with empty blocks in between: batches straddle up to several blocks.
SIZES = [0, 1, 7, 3, 0, 16, 5, 2, 9, 11, 1, 0, 4]
TOTAL = sum(SIZES)


def tensors(values: np.ndarray) -> pa.Array:
    """A fixed-shape tensor column (pyarrow refuses to build an empty one from numpy)."""
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array(values.ravel()), int(np.prod(values.shape[1:]))
    )
    return pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), values.shape[1:]), storage
    )


def make_blocks(sizes: list[int] = SIZES) -> list[pa.Table]:
    """Blocks of rows numbered across blocks: ``id`` and an ``img`` (2, 3) tensor of the id."""
    blocks, start = [], 0
    for size in sizes:
        ids = np.arange(start, start + size, dtype=np.int64)
        images = np.repeat(ids, 6).astype(np.float32).reshape(size, 2, 3)
        blocks.append(pa.table({"id": ids, "img": tensors(images)}))
        start += size
    return blocks


def ids(batches: list[pa.Table]) -> list[int]:
    return [i for batch in batches for i in batch["id"].to_pylist()]


# --- sequential batches -----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 16, TOTAL, TOTAL + 5])
def test_batches_have_exact_sizes_and_keep_order(batch_size: int) -> None:
    batches = list(iter_batches_from_blocks(iter(make_blocks()), batch_size=batch_size))

    assert ids(batches) == list(range(TOTAL))
    assert [b.num_rows for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    last = TOTAL % batch_size or batch_size
    assert batches[-1].num_rows == min(last, TOTAL)
    for batch in batches:  # the tensor column travels with its rows
        assert batch.schema == make_blocks()[1].schema
        images = batch["img"].combine_chunks().to_numpy_ndarray()
        assert (images[:, 0, 0] == batch["id"].to_numpy()).all()


@pytest.mark.parametrize("batch_size", [3, 4, 7, 16, TOTAL + 5])
def test_drop_last_drops_only_a_short_last_batch(batch_size: int) -> None:
    batches = list(iter_batches_from_blocks(make_blocks(), batch_size=batch_size, drop_last=True))

    assert all(b.num_rows == batch_size for b in batches)
    assert ids(batches) == list(range(TOTAL // batch_size * batch_size))


def test_drop_last_keeps_a_full_last_batch() -> None:
    batches = list(iter_batches_from_blocks(make_blocks([3, 5]), batch_size=4, drop_last=True))
    assert ids(batches) == list(range(8))


def test_batch_size_none_passes_non_empty_blocks_through() -> None:
    blocks = make_blocks()
    batches = list(iter_batches_from_blocks(blocks, batch_size=None))
    assert len(batches) == sum(1 for size in SIZES if size)
    assert all(any(b is block for block in blocks) for b in batches)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_no_rows_no_batches(batch_size: int | None) -> None:
    assert list(iter_batches_from_blocks([], batch_size=batch_size)) == []
    assert list(iter_batches_from_blocks(make_blocks([0, 0]), batch_size=batch_size)) == []


def test_arguments_are_checked_when_called_not_when_iterated() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches_from_blocks(make_blocks(), batch_size=0)


def test_null_typed_columns_are_promoted_across_blocks() -> None:
    blocks = [pa.table({"x": pa.nulls(2)}), pa.table({"x": pa.array([1, 2, 3], pa.int64())})]
    (batch,) = iter_batches_from_blocks(blocks, batch_size=5)
    assert batch["x"].to_pylist() == [None, None, 1, 2, 3]


# --- zero-copy --------------------------------------------------------------------------------


def _numpy(chunk: pa.Array) -> np.ndarray:
    if isinstance(chunk.type, pa.FixedShapeTensorType):
        array: np.ndarray = chunk.to_numpy_ndarray()
    else:
        array = chunk.to_numpy(zero_copy_only=True)
    return array


def test_batches_inside_one_block_are_views_of_it() -> None:
    (block,) = make_blocks([100])
    batches = list(iter_batches_from_blocks([block], batch_size=10))

    assert len(batches) == 10
    for i, batch in enumerate(batches):
        for name in ("id", "img"):
            (chunk,) = batch[name].chunks
            view = _numpy(chunk)
            whole = _numpy(block[name].chunk(0))
            assert np.shares_memory(view, whole)
            assert view.ctypes.data == whole[i * 10 :].ctypes.data


def test_a_batch_across_blocks_is_a_zero_copy_concatenation() -> None:
    first, second = make_blocks([6, 6])
    batches = list(iter_batches_from_blocks([first, second], batch_size=4))

    straddling = batches[1]  # rows 4..7: two from each block
    assert straddling["id"].to_pylist() == [4, 5, 6, 7]
    for name in ("id", "img"):
        head, tail = straddling[name].chunks
        assert np.shares_memory(_numpy(head), _numpy(first[name].chunk(0)))
        assert np.shares_memory(_numpy(tail), _numpy(second[name].chunk(0)))


# --- local shuffle ----------------------------------------------------------------------------


def shuffled_ids(
    seed: int | None, *, buffer: int = 20, batch_size: int = 4, **kw: bool
) -> list[int]:
    return ids(
        list(
            iter_batches_from_blocks(
                make_blocks(),
                batch_size=batch_size,
                local_shuffle_buffer_size=buffer,
                local_shuffle_seed=seed,
                **kw,
            )
        )
    )


@pytest.mark.parametrize("buffer", [1, 3, 20, 1000])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_shuffle_emits_every_row_exactly_once(buffer: int, batch_size: int) -> None:
    batches = list(
        iter_batches_from_blocks(
            make_blocks(),
            batch_size=batch_size,
            local_shuffle_buffer_size=buffer,
            local_shuffle_seed=0,
        )
    )

    assert sorted(ids(batches)) == list(range(TOTAL))
    assert [b.num_rows for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    for batch in batches:  # rows stay whole: the tensor column is permuted with the ids
        images = batch["img"].combine_chunks().to_numpy_ndarray()
        assert (images[:, 1, 2] == batch["id"].to_numpy()).all()


def test_shuffle_is_deterministic_per_seed_and_actually_shuffles() -> None:
    first = shuffled_ids(7)

    assert first == shuffled_ids(7)
    assert first != shuffled_ids(8)
    assert first != sorted(first)
    assert shuffled_ids(None) != shuffled_ids(None)  # fresh entropy (1 in 59! to collide)


def test_shuffle_with_drop_last() -> None:
    out = shuffled_ids(0, batch_size=8, drop_last=True)
    assert len(out) == TOTAL // 8 * 8
    assert len(set(out)) == len(out)


def test_shuffle_keeps_the_buffer_filled_and_bounded() -> None:
    buffer, batch_size = 10, 4
    blocks = make_blocks([3] * 40)
    pulled = 0

    def counting() -> Iterator[pa.Table]:
        nonlocal pulled
        for block in blocks:
            pulled += block.num_rows
            yield block

    emitted = 0
    batches = iter_batches_from_blocks(
        counting(), batch_size=batch_size, local_shuffle_buffer_size=buffer, local_shuffle_seed=1
    )
    for batch in batches:
        emitted += batch.num_rows
        if pulled < 120:  # input not exhausted yet
            held = pulled - emitted
            assert held >= buffer
            assert held <= 2 * buffer + batch_size + 3
    assert emitted == 120


def test_a_buffer_as_large_as_the_data_is_a_full_shuffle() -> None:
    out = shuffled_ids(3, buffer=TOTAL, batch_size=8)
    # the first batch is drawn from all rows, not from the first blocks
    assert max(out[:8]) > 2 * 8


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError)],
)
def test_invalid_batch_size(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"`batch_size` is .*int >= 1, or None"):
        validate_batch_size(value)


def test_valid_batch_sizes() -> None:
    assert validate_batch_size(None) is None
    assert validate_batch_size(np.int64(4)) == 4
    assert type(validate_batch_size(np.int64(4))) is int


def test_invalid_local_shuffle_buffer_size() -> None:
    with pytest.raises(ValueError, match="`local_shuffle_buffer_size` is 0, but must be >= 1"):
        validate_local_shuffle_buffer_size(0, 8)
    with pytest.raises(TypeError, match=r"`local_shuffle_buffer_size` is 2\.0"):
        validate_local_shuffle_buffer_size(2.0, 8)
    with pytest.raises(ValueError, match="needs a batch_size"):
        validate_local_shuffle_buffer_size(16, None)
    assert validate_local_shuffle_buffer_size(None, None) is None


def test_invalid_prefetch_batches() -> None:
    with pytest.raises(ValueError, match="`prefetch_batches` is -1, but must be >= 0"):
        validate_prefetch_batches(-1)
    with pytest.raises(TypeError, match="`prefetch_batches` is None"):
        validate_prefetch_batches(None)
    assert validate_prefetch_batches(0) == 0


def test_invalid_seed() -> None:
    with pytest.raises(TypeError, match="`local_shuffle_seed` is 'x'"):
        iter_batches_from_blocks(
            [],
            batch_size=2,
            local_shuffle_buffer_size=2,
            local_shuffle_seed="x",  # type: ignore[arg-type]
        )


# --- prefetch ---------------------------------------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "trainkit-prefetch"]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_prefetch_yields_everything_in_order(n: int) -> None:
    with prefetch(iter(range(50)), n) as items:
        assert list(items) == list(range(50))
        assert list(items) == []
    assert prefetch_threads() == []


def test_prefetch_with_n_0_starts_no_thread() -> None:
    before = threading.active_count()
    items = prefetch(iter(range(3)), 0)
    assert threading.active_count() == before
    assert next(items) == 0
    items.close()


@pytest.mark.parametrize("n", [0, 2])
def test_prefetch_raises_the_source_error_in_place(n: int) -> None:
    boom = ValueError("boom")

    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise boom

    items = prefetch(source(), n)
    assert next(items) == 1
    assert next(items) == 2
    with pytest.raises(ValueError, match="boom") as info:
        next(items)
    assert info.value is boom
    assert list(items) == []  # exhausted after the error
    assert prefetch_threads() == []


def test_prefetch_stops_and_joins_its_thread_when_the_consumer_breaks() -> None:
    closed_in: list[threading.Thread] = []

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed_in.append(threading.current_thread())

    before = threading.active_count()
    with prefetch(endless(), 4) as items:
        assert threading.active_count() == before + 1
        for i in items:
            if i == 10:
                break
    assert threading.active_count() == before
    assert len(closed_in) == 1
    assert closed_in[0] is not threading.current_thread()  # closed by the thread that ran it


def test_prefetch_thread_stops_when_the_iterator_is_dropped() -> None:
    before = threading.active_count()
    items = prefetch(iter(range(10**9)), 2)
    next(items)
    del items  # no close(): the finalizer stops and joins the thread
    assert threading.active_count() == before


def test_prefetch_stops_inside_a_generator_that_is_closed_early() -> None:
    def consumer() -> Generator[int, None, None]:
        with prefetch(iter(range(10**9)), 2) as items:
            yield from items

    before = threading.active_count()
    gen = consumer()
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert threading.active_count() == before


def test_prefetch_runs_at_most_n_items_ahead() -> None:
    produced: list[int] = []
    reached = threading.Event()

    def source() -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            if i == 3:
                reached.set()
            yield i

    with prefetch(source(), 3) as items:
        assert reached.wait(5)
        time.sleep(0.05)  # give a runaway producer the chance to show itself
        # 3 items queued, the 4th produced and waiting for room in the queue
        assert len(produced) == 4
        assert next(items) == 0
        assert list(items) == list(range(1, 100))


def test_prefetch_measures_the_consumers_wait() -> None:
    def slow() -> Iterator[int]:
        for i in range(5):
            time.sleep(0.02)
            yield i

    for n in (0, 1):
        with prefetch(slow(), n) as items:
            assert list(items) == list(range(5))
            assert items.wait_s >= 0.09

    with prefetch(iter(range(5)), 5) as items:
        next(items)  # the first item may make us wait for the thread
        first_wait = items.wait_s
        time.sleep(0.02)  # the producer fills the queue meanwhile
        assert list(items) == [1, 2, 3, 4]
        assert items.wait_s - first_wait < 0.01


def test_prefetch_close_is_idempotent_and_ends_iteration() -> None:
    items: Prefetcher[int] = prefetch(iter(range(10)), 2)
    assert next(items) == 0
    items.close()
    items.close()
    assert list(items) == []
    with pytest.raises(StopIteration):
        next(items)


def test_prefetch_close_closes_the_source_without_a_thread() -> None:
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed.set()

    with prefetch(source(), 0) as items:
        assert next(items) == 0
    assert closed.is_set()


def test_invalid_prefetch_size() -> None:
    with pytest.raises(ValueError, match="`prefetch_batches` is -2"):
        prefetch(iter([]), -2)
