"""iter_numpy_batches (numpy batches as slices of each record batch) gives exactly what the
pyarrow path gives, and prefetch_blocks / weighted Prefetcher queues (blocks, not batches,
cross the prefetch thread)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from trainkit.data._batcher import Prefetcher
from trainkit.data._batcher import iter_batches_from_blocks
from trainkit.data._batcher import prefetch_blocks
from trainkit.data._block import to_batch
from trainkit.data._block import to_block
from trainkit.data._numpy_batcher import iter_numpy_batches


def _reference(blocks: list[pa.Table], batch_size: int, drop_last: bool = False) -> list[Any]:
    return [to_batch(t, "numpy") for t in
            iter_batches_from_blocks(blocks, batch_size=batch_size, drop_last=drop_last)]


def _same(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for name in w:
            assert g[name].dtype == w[name].dtype, name
            assert g[name].shape == w[name].shape, name
            if w[name].dtype == object:
                assert [repr(x) for x in g[name]] == [repr(x) for x in w[name]]
            else:
                np.testing.assert_array_equal(g[name], w[name])


def _chunked(n: int, cuts: list[int], offset: int = 0) -> pa.Table:
    """A block of n rows (ints, floats, bools, a tensor) whose columns are chunked at cuts."""
    x = np.arange(offset, offset + n)
    full = to_block({"i": x, "f": x * 0.5, "b": x % 3 == 0,
                     "t": np.stack([x, -x], axis=1).astype(np.float32)}, where="test")
    bounds = [0, *cuts, n]
    return pa.concat_tables([full.slice(a, b - a) for a, b in itertools.pairwise(bounds)])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 16, 100])
@pytest.mark.parametrize("drop_last", [False, True])
def test_same_batches_as_pyarrow_on_chunked_blocks(batch_size: int, drop_last: bool) -> None:
    blocks = [_chunked(10, [3, 4]), _chunked(0, []), _chunked(5, [], 10), _chunked(20, [9], 15)]
    got = list(iter_numpy_batches(blocks, batch_size, drop_last))
    _same(got, _reference(blocks, batch_size, drop_last))
    assert sum(len(b["i"]) for b in got) == (35 // batch_size * batch_size if drop_last else 35)


def test_a_batch_inside_a_piece_is_a_read_only_view_of_the_block() -> None:
    values = np.arange(12, dtype=np.int64)
    block = pa.table({"x": values})
    first = next(iter_numpy_batches([block], 4))
    assert np.shares_memory(first["x"], block.column(0).chunk(0).to_numpy())
    assert not first["x"].flags.writeable
    straddling = next(iter_numpy_batches([block.slice(0, 3), block.slice(3)], 4))
    assert straddling["x"].tolist() == [0, 1, 2, 3]
    assert not straddling["x"].flags.writeable  # as pyarrow's view of a concatenation


def test_nulls_strings_and_ragged_take_the_pyarrow_path() -> None:
    with_nulls = pa.table({"x": pa.array([1, None, 3, 4], pa.int64()), "s": list("abcd")})
    plain = pa.table({"x": pa.array([5, 6, 7], pa.int64()), "s": list("efg")})
    blocks = [plain, with_nulls, plain]
    for size in (2, 3, 4):
        got = list(iter_numpy_batches(blocks, size))
        _same(got, _reference(blocks, size))
    # a batch that holds a null is float with NaN, one without keeps int64, as before
    batches = list(iter_numpy_batches([with_nulls], 2))
    assert batches[0]["x"].dtype == np.float64 and batches[1]["x"].dtype == np.int64
    ragged = to_block({"r": [np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2)]}, where="t")
    _same(list(iter_numpy_batches([ragged], 2)), _reference([ragged], 2))


def test_blocks_that_disagree_on_a_type_fail_as_before() -> None:
    a = pa.table({"x": pa.array([1, 2, 3], pa.int32())})
    b = pa.table({"x": pa.array([4, 5, 6], pa.int64())})
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        _reference([a, b], 4)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        list(iter_numpy_batches([a, b], 4))
    # whole batches inside one block are fine on both paths
    _same(list(iter_numpy_batches([a, b], 3)), _reference([a, b], 3))


def test_blocks_without_columns_keep_their_rows() -> None:
    block = pa.table({"_": pa.nulls(5)}).drop_columns(["_"])
    got = list(iter_numpy_batches([block], 2))
    assert got == [{}, {}, {}]


# --- weighted prefetching ---------------------------------------------------------------------


def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.001)


def test_a_weighted_queue_holds_its_capacity_and_always_one_item() -> None:
    pulled = []

    def source() -> Iterator[int]:
        for w in (3, 3, 3, 9, 1):
            pulled.append(w)
            yield w

    with Prefetcher(source(), 4, weight=float) as items:
        channel = items._channel
        # 3 + 3 >= 4: full, and a weighted queue pulls nothing more until there is room
        _until(lambda: len(channel.items) == 2)
        assert len(pulled) == 2 and channel.queued == 6
        assert next(items) == 3
        _until(lambda: len(channel.items) == 2)
        assert len(pulled) == 3
        assert [next(items), next(items)] == [3, 3]
        # 9 is heavier than the capacity: it goes through alone
        _until(lambda: len(channel.items) == 1 and channel.queued == 9)
        assert len(pulled) == 4
        assert list(items) == [9, 1]


def _blocks(sizes: list[int]) -> list[pa.Table]:
    out, start = [], 0
    for n in sizes:
        out.append(pa.table({"x": np.arange(start, start + n)}))
        start += n
    return out


@pytest.mark.parametrize("n", [0, 1, 3])
def test_prefetch_blocks_runs_the_pipeline_over_blocks_fetched_ahead(n: int) -> None:
    threads = set()

    def then(blocks: Iterator[pa.Table]) -> Iterator[list[int]]:
        for batch in iter_numpy_batches(blocks, 4):
            threads.add(threading.get_ident())
            yield batch["x"].tolist()

    with prefetch_blocks(_blocks([5, 0, 7, 2]), n, 4, then) as batches:
        got = list(batches)
        assert batches.wait_s >= 0.0
    assert [x for batch in got for x in batch] == list(range(14))
    assert threads == {threading.get_ident()}  # batches are cut in the consumer's thread


def test_prefetch_blocks_close_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def endless() -> Iterator[pa.Table]:
        try:
            while True:
                yield pa.table({"x": np.arange(8)})
        finally:
            closed.set()

    batches = prefetch_blocks(endless(), 2, 4, lambda blocks: iter_numpy_batches(blocks, 4))
    assert next(batches)["x"].tolist() == [0, 1, 2, 3]
    batches.close()
    assert closed.wait(10)


def test_prefetch_blocks_raises_the_sources_error_in_order() -> None:
    def failing() -> Iterator[pa.Table]:
        yield pa.table({"x": np.arange(4)})
        raise RuntimeError("read failed")

    with prefetch_blocks(failing(), 1, 4, lambda b: iter_numpy_batches(b, 4)) as batches:
        assert next(batches)["x"].tolist() == [0, 1, 2, 3]
        with pytest.raises(RuntimeError, match="read failed"):
            next(batches)


def test_prefetch_blocks_stops_the_thread_when_the_pipeline_fails_to_start() -> None:
    closed = threading.Event()

    def source() -> Iterator[pa.Table]:
        try:
            yield pa.table({"x": np.arange(4)})
        finally:
            closed.set()

    def bad(blocks: Iterator[pa.Table]) -> Iterator[Any]:
        raise ValueError("bad argument")

    with pytest.raises(ValueError, match="bad argument"):
        prefetch_blocks(source(), 1, 4, bad)
    assert closed.wait(10)
