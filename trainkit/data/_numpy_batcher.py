"""Re-batching a stream of blocks straight into numpy batches, for the ``"numpy"`` format.

Why: cutting a pyarrow slice per batch and converting each of its columns costs about 5 us
per column per batch, more than the rest of a pass at small batch sizes (256 rows of 10
columns: ~50 us a batch, 10,000 batches a pass). Here each *record batch* of a block (a run
of rows with one chunk per column) is converted to numpy once, zero-copy, and a batch is a
numpy slice of those arrays (a fraction of a microsecond per column); a batch that straddles
pieces is one ``np.concatenate`` per column, the copy contiguity needs anyway.

The result is exactly what ``to_batch(table, "numpy")`` gives for the same rows, because
the fast path is taken only where converting a slice equals slicing the conversion: columns
of plain numbers or booleans, and fixed-shape tensors of numbers, without nulls. Any other
piece (nulls, strings, ragged tensors, ...) and any batch whose pieces disagree on a column's
type are cut and converted through pyarrow as before (``_batcher``'s row queue and
``to_batch``), so behaviour, including errors for incompatible schemas, is unchanged.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from collections.abc import Iterator

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from trainkit.data._block import column_to_numpy
from trainkit.data._block import to_batch

__all__ = ["iter_numpy_batches"]

NumpyBatch = dict[str, np.ndarray]


def _fast_type(arrow_type: pa.DataType) -> bool:
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        value = arrow_type.value_type
        return bool(pa.types.is_integer(value) or pa.types.is_floating(value))
    if isinstance(arrow_type, pa.BaseExtensionType):
        return False
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )


class _Piece:
    """Rows of a block with one chunk per column (a record batch of it): as a table, for
    the pyarrow path, and, where the fast path holds, its columns as numpy arrays."""

    __slots__ = ("arrays", "rows", "schema", "table")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.schema = table.schema
        self.rows = int(table.num_rows)
        self.arrays: list[np.ndarray] | None = None
        columns = table.columns
        if columns and all(_fast_type(c.type) and c.null_count == 0 for c in columns):
            self.arrays = [column_to_numpy(c) for c in columns]


class _PieceQueue:
    """Pieces queued in order; ``take(n)`` removes the first ``n`` rows as one batch."""

    def __init__(self) -> None:
        self._pieces: collections.deque[tuple[_Piece, int]] = collections.deque()  # (, start)
        self.num_rows = 0

    def append_block(self, block: pa.Table) -> None:
        if not block.num_rows:
            return
        if not block.num_columns:  # no record batches to cut: the pyarrow path keeps rows
            self._pieces.append((_Piece(block), 0))
            self.num_rows += block.num_rows
            return
        for record_batch in block.to_batches():
            if record_batch.num_rows:
                self._pieces.append((_Piece(pa.Table.from_batches([record_batch])), 0))
                self.num_rows += record_batch.num_rows

    def take(self, n: int) -> NumpyBatch:
        parts: list[tuple[_Piece, int, int]] = []  # (piece, start, length)
        needed = min(n, self.num_rows)
        self.num_rows -= needed
        while needed:
            piece, start = self._pieces[0]
            left = piece.rows - start
            if left <= needed:
                self._pieces.popleft()
                parts.append((piece, start, left))
                needed -= left
            else:
                parts.append((piece, start, needed))
                self._pieces[0] = (piece, start + needed)
                needed = 0
        return _batch_of(parts)

    def take_all(self) -> NumpyBatch:
        return self.take(self.num_rows)


def _batch_of(parts: list[tuple[_Piece, int, int]]) -> NumpyBatch:
    first = parts[0][0]
    names = first.schema.names
    fast = first.arrays is not None and all(
        p.arrays is not None and (p is first or p.schema.types == first.schema.types)
        and p.schema.names == names
        for p, _, _ in parts
    )
    if not fast:
        tables = [p.table.slice(start, length) for p, start, length in parts]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(
            tables, promote_options="default")
        batch: NumpyBatch = to_batch(table, "numpy")
        return batch
    if len(parts) == 1:
        piece, start, length = parts[0]
        assert piece.arrays is not None
        return {name: a[start:start + length] for name, a in zip(names, piece.arrays,
                                                                  strict=True)}
    out: NumpyBatch = {}
    for i, name in enumerate(names):
        joined = np.concatenate([p.arrays[i][s:s + k] for p, s, k in parts  # type: ignore[index]
                                 ])
        joined.flags.writeable = False  # as pyarrow's view of a concatenated column would be
        out[name] = joined
    return out


def iter_numpy_batches(
    blocks: Iterable[pa.Table], batch_size: int, drop_last: bool = False
) -> Iterator[NumpyBatch]:
    """Numpy batches of exactly ``batch_size`` rows, in order, of a stream of blocks (the
    last one shorter unless ``drop_last``): the same batches as
    ``to_batch(t, "numpy") for t in iter_batches_from_blocks(blocks, batch_size=...)``.

    Example:
        >>> import pyarrow as pa
        >>> blocks = [pa.table({"x": [0, 1, 2]}), pa.table({"x": [3, 4]})]
        >>> [b["x"].tolist() for b in iter_numpy_batches(blocks, 2)]
        [[0, 1], [2, 3], [4]]
    """
    queue = _PieceQueue()
    for block in blocks:
        queue.append_block(block)
        while queue.num_rows >= batch_size:
            yield queue.take(batch_size)
    if queue.num_rows and not drop_last:
        yield queue.take_all()

