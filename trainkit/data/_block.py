"""Blocks: the unit of data that tasks exchange. A block is a ``pyarrow.Table``.

User functions see *batches*, converted from and to blocks here:

- ``"numpy"`` (the ``"default"``): a dict of column name -> ``np.ndarray``. A tensor column
  gives one array of shape ``(rows, *shape)``.
- ``"pyarrow"``: the ``pa.Table`` itself.
- ``"pandas"``: a ``pandas.DataFrame``; a tensor column is an object column of per-row arrays.

Column types:

- A 1-D numpy array is a plain Arrow column (zero-copy for numeric dtypes without nulls).
- A numpy array with ``ndim > 1`` (or a list of same-shape, same-dtype arrays) is a tensor
  column: ``pa.fixed_shape_tensor(value_type, shape)``, the canonical Arrow extension type.
  A C-contiguous array converts without a copy, and back again with ``to_numpy_ndarray``.
- A list of arrays whose shapes or dtypes differ (ragged) is a ``RaggedTensorType`` column:
  an extension type over ``struct<data: large_list<T>, shape: list<int64>>``, one row per
  array, so the arrays come back as arrays of their own shapes (in ``"numpy"`` format an
  object array, or one array if all rows of the block share a shape). So is a tensor of a
  dtype fixed-shape tensors do not hold (bool, datetime64, str). Blocks that disagree on a
  tensor column's type are concatenated as ragged. The type is registered with pyarrow on
  import, so it survives Parquet and IPC round trips.
- Everything else (strings, lists, dicts, ...) is whatever ``pa.array`` makes of it.

Arrays that share memory with a block (zero-copy) are read-only; pass ``zero_copy=False`` to
:func:`to_batch` for writable copies.

Pickling a *slice* of a table ships the whole buffers it points into: call
:func:`compact_block` on slices before sending them elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import get_args

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

BatchFormat = Literal["default", "numpy", "pyarrow", "pandas"]
BATCH_FORMATS: tuple[str, ...] = get_args(BatchFormat)

# A slice is copied by compact_block when the buffers it references are this much bigger
# than its own data (plus a small constant, so tiny blocks are never copied).
_COMPACT_RATIO = 2
_COMPACT_SLACK_BYTES = 64 * 1024

_RAGGED_NAME = "trainkit.ragged_tensor"
_MAX_STRING_BYTES = 2**31 - 1  # the most a ``string`` (int32 offsets) column can hold


class RaggedTensorType(pa.ExtensionType):  # type: ignore[misc]
    """Rows that are arrays of differing shapes.

    Storage ``struct<data: large_list<T>, shape: list<int64>>``: ``data`` holds each array
    flattened in C order, ``shape`` its shape.
    """

    def __init__(self, value_type: pa.DataType) -> None:
        storage = pa.struct([("data", pa.large_list(value_type)), ("shape", pa.list_(pa.int64()))])
        super().__init__(storage, _RAGGED_NAME)

    @property
    def value_type(self) -> pa.DataType:
        """The element type of the arrays."""
        return self.storage_type.field("data").type.value_type

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(
        cls, storage_type: pa.DataType, serialized: bytes
    ) -> RaggedTensorType:
        return cls(storage_type.field("data").type.value_type)

    def __reduce__(self) -> tuple[Any, ...]:
        return RaggedTensorType, (self.value_type,)


try:
    pa.register_extension_type(RaggedTensorType(pa.int64()))
except pa.ArrowKeyError:  # already registered (a module reload)
    pass


def block_rows(block: pa.Table) -> int:
    """The number of rows of ``block``."""
    return int(block.num_rows)


def block_bytes(block: pa.Table) -> int:
    """The bytes of data ``block`` references (a slice counts only its own rows)."""
    return int(block.nbytes)


def is_tensor_type(arrow_type: pa.DataType) -> bool:
    """True for the tensor column types: fixed-shape and ragged."""
    return isinstance(arrow_type, (pa.FixedShapeTensorType, RaggedTensorType))


# --- numpy -> arrow -----------------------------------------------------------------------------


def tensor_array(values: np.ndarray) -> pa.Array:
    """A ``(rows, *shape)`` array as a fixed-shape tensor column; no copy if C-contiguous.

    Arrow's fixed-shape tensors hold numbers only: other dtypes (bool, datetime64, str) make
    a ``RaggedTensorType`` column, which gives the same array back.
    """
    if values.ndim < 2:
        raise ValueError(f"a tensor column needs an array of ndim >= 2, got shape {values.shape}")
    shape = values.shape[1:]
    if math.prod(shape) == 0:
        raise ValueError(f"a tensor column's rows cannot be empty, got row shape {shape}")
    if values.dtype.kind not in "iuf":
        return _ragged_from_stacked(values)
    if values.size == 0:  # from_numpy_ndarray refuses empty arrays
        tensor_type = pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), shape)
        storage = pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1)), list_size=math.prod(shape)
        )
        return pa.ExtensionArray.from_storage(tensor_type, storage)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))


def ragged_array(arrays: Sequence[np.ndarray | None]) -> pa.Array:
    """Arrays of differing shapes (``None`` for a null row) as a ``RaggedTensorType`` column."""
    present = [a for a in arrays if a is not None]
    dtype = np.result_type(*present) if present else np.dtype(np.float64)
    flat = [np.ravel(a).astype(dtype, copy=False) for a in present]
    values = np.concatenate(flat) if flat else np.empty(0, dtype)
    sizes = [a.size for a in present]
    offsets = np.zeros(len(present) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    shapes = [s for a in present for s in a.shape]
    shape_offsets = np.zeros(len(present) + 1, np.int32)
    np.cumsum([a.ndim for a in present], out=shape_offsets[1:])
    data = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    shape = pa.ListArray.from_arrays(pa.array(shape_offsets), pa.array(shapes, pa.int64()))
    storage = pa.StructArray.from_arrays([data, shape], names=["data", "shape"])
    if len(present) != len(arrays):  # spread the present rows out, with nulls between
        positions = [i for i, a in enumerate(arrays) if a is not None]
        index = np.full(len(arrays), -1, np.int64)
        index[positions] = np.arange(len(positions))
        storage = storage.take(pa.array(index, mask=index < 0))
    return pa.ExtensionArray.from_storage(RaggedTensorType(data.type.value_type), storage)


def _ragged_from_stacked(values: np.ndarray) -> pa.Array:
    """``(rows, *shape)`` as a ragged column (for dtypes fixed-shape tensors do not hold)."""
    rows, shape = len(values), values.shape[1:]
    offsets = np.arange(rows + 1, dtype=np.int64) * math.prod(shape)
    data = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1)))
    shape_offsets = np.arange(rows + 1, dtype=np.int32) * len(shape)
    shapes = pa.array(np.tile(np.asarray(shape, np.int64), rows), pa.int64())
    storage = pa.StructArray.from_arrays(
        [data, pa.ListArray.from_arrays(pa.array(shape_offsets), shapes)], names=["data", "shape"]
    )
    return pa.ExtensionArray.from_storage(RaggedTensorType(data.type.value_type), storage)


def _arrays_to_arrow(arrays: Sequence[np.ndarray | None]) -> pa.Array:
    """Per-row arrays: a tensor column if all share shape and dtype, else a ragged column."""
    first = arrays[0]
    same = first is not None and all(
        a is not None and a.shape == first.shape and a.dtype == first.dtype for a in arrays
    )
    if same and first is not None and first.ndim > 0:
        return tensor_array(np.stack(arrays))  # type: ignore[arg-type]  # no None: checked
    if same:  # 0-d arrays: a plain column
        return pa.array(np.stack(arrays))  # type: ignore[arg-type]
    return ragged_array(arrays)


def _is_array_rows(values: Iterable[Any]) -> bool:
    """True if the values are per-row numpy arrays (``None`` allowed), not scalars."""
    found = False
    for value in values:
        if isinstance(value, np.ndarray):
            found = True
        elif value is not None:
            return False
    return found


def _column(name: str, values: Any, where: str) -> pa.Array | pa.ChunkedArray:
    """One batch column as an Arrow array; errors name ``where`` and the column."""
    try:
        return _column_unchecked(name, values, where)
    except (ValueError, pa.ArrowException) as e:
        raise TypeError(f"{where}: column {name!r} cannot be an Arrow column: {e}") from e


def _column_unchecked(name: str, values: Any, where: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, (list, tuple)):
        if _is_array_rows(values):
            return _arrays_to_arrow(values)
        return pa.array(values)
    if not isinstance(values, np.ndarray) and hasattr(values, "__array__"):
        values = np.asarray(values)  # pandas Series, CPU torch tensors, ...
    if not isinstance(values, np.ndarray) or values.ndim == 0:
        raise TypeError(
            f"{where}: column {name!r} is a single {type(values).__name__}, not an array of "
            "rows. A batch maps each column to an array (or list) with one value per row; a "
            "dict of scalars is one row (use map() for functions of one row)."
        )
    if values.dtype.hasobject:
        if _is_array_rows(values):
            return _arrays_to_arrow(list(values))
        return pa.array(values)
    if values.ndim > 1:
        return tensor_array(values)
    return pa.array(values)


def _table(columns: Mapping[str, pa.Array | pa.ChunkedArray], where: str) -> pa.Table:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{where}: the columns of a batch must have the same length, got {lengths}"
        )
    return pa.table(dict(columns))


def _dict_to_block(batch: Mapping[Any, Any], where: str) -> pa.Table:
    for key in batch:
        if not isinstance(key, str):
            raise TypeError(
                f"{where}: batch column names must be str, got {key!r} ({type(key).__name__})"
            )
    columns = {name: _column(name, values, where) for name, values in batch.items()}
    return _table(columns, where)


def _pandas_to_block(df: Any, where: str) -> pa.Table:
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: the DataFrame has duplicate column names: {names}")
    array_cols = {
        i
        for i, dtype in enumerate(df.dtypes)
        if dtype.kind == "O" and _is_array_rows(df.iloc[:, i])
    }
    plain = [i for i in range(len(names)) if i not in array_cols]
    try:
        base = pa.Table.from_pandas(df.iloc[:, plain], preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"{where}: the DataFrame cannot be an Arrow table: {e}") from e
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for i, name in enumerate(names):
        if i in array_cols:
            columns[name] = _arrays_to_arrow(df.iloc[:, i].tolist())
        else:
            columns[name] = _small_strings(base.column(plain.index(i)))
    if not columns:
        return _no_columns(len(df))
    return _table(columns, where)


def _small_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """pandas >= 3 strings arrive as ``large_string``: make them ``string`` like other blocks."""
    if pa.types.is_large_string(column.type) and column.nbytes < _MAX_STRING_BYTES:
        return column.cast(pa.string())
    return column


def _no_columns(num_rows: int) -> pa.Table:
    """A table with ``num_rows`` rows and no columns."""
    return pa.table({"_": pa.nulls(num_rows)}).drop_columns(["_"])


# --- internal metadata --------------------------------------------------------------------------
# Blocks carry trainkit's own facts in schema metadata under keys starting "trainkit.": a
# task's CPU time, and the row count of a block without columns (pickling a table of no
# columns loses its rows; its metadata survives). Users never see these keys.

_INTERNAL_PREFIX = b"trainkit."
_ROWS_KEY = b"trainkit.num_rows"


def seal_block(block: pa.Table) -> pa.Table:
    """``block``, ready to be pickled: one without columns records its row count (and reads
    as empty until :func:`unseal_block` restores it)."""
    if block.num_columns or not block.num_rows:
        return block
    meta = dict(block.schema.metadata or {})
    meta[_ROWS_KEY] = str(block.num_rows).encode()
    return block.replace_schema_metadata(meta)


def unseal_block(block: pa.Table) -> pa.Table:
    """A block as it was before pickling (see :func:`seal_block`), without internal metadata."""
    meta = block.schema.metadata
    if not meta:
        return block
    if not block.num_columns:  # (replacing the metadata of such a table drops its rows)
        return _no_columns(int(meta.get(_ROWS_KEY, block.num_rows)))
    return block.replace_schema_metadata(public_metadata(meta))  # None: no metadata


def public_metadata(meta: Mapping[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """Schema metadata without trainkit's internal keys (None when nothing is left)."""
    kept = {k: v for k, v in (meta or {}).items() if not k.startswith(_INTERNAL_PREFIX)}
    return kept or None


def public_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without trainkit's internal metadata."""
    if not schema.metadata:
        return schema
    kept = public_metadata(schema.metadata)
    return schema.with_metadata(kept) if kept else schema.remove_metadata()


def to_block(batch: Any, *, where: str) -> pa.Table:
    """A batch a user function returned, as a block.

    Accepts a dict of column -> numpy array / list / Arrow array (all one length), a
    ``pa.Table``, a ``pa.RecordBatch`` or a ``pandas.DataFrame``. ``where`` names the
    operator for error messages, e.g. ``"map_batches(normalize)"``.

    Raises:
        TypeError: ``batch`` is none of these, or a column cannot be converted.
        ValueError: the columns have different lengths.
    """
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if isinstance(batch, Mapping):
        return _dict_to_block(batch, where)
    if _is_dataframe(batch):
        return _pandas_to_block(batch, where)
    hint = ""
    if isinstance(batch, list) and batch and isinstance(batch[0], Mapping):
        hint = " A list of dicts is a list of rows: return a dict of columns, or use flat_map()."
    raise TypeError(
        f"{where} returned a {type(batch).__module__}.{type(batch).__qualname__}; a batch "
        "must be a dict of column name -> numpy array, a pyarrow.Table or a pandas.DataFrame."
        + hint
    )


def _is_dataframe(value: Any) -> bool:
    # pandas is imported only when a DataFrame can exist, that is when pandas is loaded.
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")


# --- arrow -> numpy -----------------------------------------------------------------------------


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.nulls(0, column.type)
    return pa.concat_arrays(column.chunks)


def _ragged_to_numpy(array: pa.Array) -> np.ndarray:
    storage = array.storage
    data, shapes = storage.flatten()  # (``field()`` would ignore a slice's offset)
    # flatten() gives the values of the slice only; its offsets are the parent's.
    values = data.flatten().to_numpy(zero_copy_only=False)
    offsets = data.offsets.to_numpy()
    shape_values = shapes.flatten().to_numpy(zero_copy_only=False)
    shape_offsets = shapes.offsets.to_numpy()
    shape_offsets = shape_offsets - shape_offsets[0]  # (a slice's offsets do not start at 0)
    valid = storage.is_valid().to_numpy(zero_copy_only=False)
    rows: list[np.ndarray | None] = []
    base = offsets[0]
    for i in range(len(array)):
        if not valid[i]:
            rows.append(None)
            continue
        shape = tuple(int(s) for s in shape_values[shape_offsets[i] : shape_offsets[i + 1]])
        rows.append(values[offsets[i] - base : offsets[i + 1] - base].reshape(shape))
    first = rows[0] if rows else None
    if first is not None and all(r is not None and r.shape == first.shape for r in rows):
        # All one shape (a tensor of a dtype fixed-shape tensors do not hold): one array.
        stacked: np.ndarray = values[offsets[0] - base : offsets[-1] - base]
        return stacked.reshape(len(rows), *first.shape)
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def column_to_numpy(column: pa.ChunkedArray | pa.Array, *, zero_copy: bool = True) -> np.ndarray:
    """One column as a numpy array; tensor columns as ``(rows, *shape)`` (or object if ragged).

    Zero-copy (and read-only) where pyarrow allows, unless ``zero_copy`` is False.
    """
    array = _one_chunk(column) if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array.type, pa.FixedShapeTensorType):
        result: np.ndarray = array.to_numpy_ndarray()
    elif isinstance(array.type, RaggedTensorType):
        result = _ragged_to_numpy(array)
    else:
        result = array.to_numpy(zero_copy_only=False)
    if not zero_copy and not result.flags.writeable:
        result = result.copy()
    return result


def _to_pandas(block: pa.Table) -> Any:
    tensor_cols = [i for i, f in enumerate(block.schema) if is_tensor_type(f.type)]
    df = block.drop_columns([block.column_names[i] for i in tensor_cols]).to_pandas()
    for i in tensor_cols:
        arrays = column_to_numpy(block.column(i))
        rows = np.empty(len(arrays), dtype=object)
        for j in range(len(arrays)):
            rows[j] = arrays[j]
        df.insert(i, block.column_names[i], rows)
    return df


def to_batch(block: pa.Table, batch_format: str, *, zero_copy: bool = True) -> Any:
    """``block`` as a batch of ``batch_format`` (one of :data:`BATCH_FORMATS`).

    ``"numpy"`` arrays are zero-copy and read-only where pyarrow allows; ``zero_copy=False``
    makes them writable copies.
    """
    if batch_format in ("default", "numpy"):
        return {
            name: column_to_numpy(col, zero_copy=zero_copy)
            for name, col in zip(block.column_names, block.columns, strict=True)
        }
    if batch_format == "pyarrow":
        return block
    if batch_format == "pandas":
        return _to_pandas(block)
    raise ValueError(f"batch_format is {batch_format!r}, but must be one of {list(BATCH_FORMATS)}")


# --- rows ---------------------------------------------------------------------------------------


def rows_to_block(rows: Sequence[Mapping[str, Any]], *, where: str) -> pa.Table:
    """Rows (dicts of column -> value) as a block; a column missing from a row is null there.

    Arrays in a column become a tensor column (or a ragged one if their shapes differ).
    """
    names: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(
                f"{where} returned a row of type {type(row).__qualname__}; a row must be a dict "
                "of column name -> value"
            )
        names.update(dict.fromkeys(row))
    columns = {name: _column(name, [row.get(name) for row in rows], where) for name in names}
    if not columns:
        return _no_columns(len(rows))
    return _table(columns, where)


def block_to_rows(block: pa.Table) -> Iterator[dict[str, Any]]:
    """The rows of ``block`` as dicts: Python values, numpy arrays for tensor columns."""
    names = block.column_names
    columns: list[Any] = [
        column_to_numpy(col) if is_tensor_type(col.type) else col.to_pylist()
        for col in block.columns
    ]
    for i in range(block.num_rows):
        yield {name: col[i] for name, col in zip(names, columns, strict=True)}


# --- whole blocks -------------------------------------------------------------------------------


def concat_blocks(blocks: Iterable[pa.Table]) -> pa.Table:
    """One block of all ``blocks``' rows; schemas are unified.

    A column missing from a block is null there; types are promoted where Arrow can (int64
    and float64 give float64, string and large_string give large_string).

    Blocks with neither rows nor columns (what an empty batch makes) are skipped.
    """
    tables = list(blocks)
    kept = [t for t in tables if t.num_rows > 0 or t.num_columns > 0]
    if not kept:
        return tables[0] if tables else pa.table({})
    if len(kept) == 1:
        return kept[0]
    kept = _unify_tensor_columns(kept)
    try:
        return pa.concat_tables(kept, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        schemas = "; ".join(sorted({str(t.schema).replace("\n", ", ") for t in kept}))
        raise ValueError(
            f"blocks with incompatible schemas cannot be combined: {e} ({schemas})"
        ) from e


def _unify_tensor_columns(blocks: list[pa.Table]) -> list[pa.Table]:
    """Where blocks disagree on a tensor column's type (shape, dtype, ragged or not), make it
    ragged in all of them."""
    types: dict[str, set[str]] = {}
    tensors: set[str] = set()
    for block in blocks:
        for field in block.schema:
            types.setdefault(field.name, set()).add(str(field.type))
            if is_tensor_type(field.type):
                tensors.add(field.name)
    mixed = [name for name in tensors if len(types[name]) > 1]
    if not mixed:
        return blocks
    out = []
    for block in blocks:
        for name in mixed:
            if name in block.column_names:
                i = block.column_names.index(name)
                rows = column_to_numpy(block.column(i))
                block = block.set_column(i, name, ragged_array(list(rows)))
        out.append(block)
    return out


def empty_block(schema: pa.Schema) -> pa.Table:
    """A block of no rows with ``schema`` (``schema.empty_table()`` fails on tensor types)."""
    return pa.table([pa.nulls(0, field.type) for field in schema], schema=schema)


def slice_block(block: pa.Table, start: int, length: int) -> pa.Table:
    """Rows ``[start, start + length)`` of ``block``, without copying (see compact_block)."""
    return block.slice(start, length)


def compact_block(block: pa.Table) -> pa.Table:
    """``block``, copied if it is a slice of much bigger buffers, so pickling ships only its rows.

    (Pickling a sliced table sends the whole buffers it points into.)
    """
    if block.get_total_buffer_size() <= _COMPACT_RATIO * block.nbytes + _COMPACT_SLACK_BYTES:
        return block
    return pa.Table.from_arrays(
        [pa.concat_arrays(col.chunks) if col.num_chunks else col for col in block.columns],
        schema=block.schema,
    )
