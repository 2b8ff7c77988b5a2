"""Per-block transforms built from user functions: each is a picklable callable that takes a
block (a pyarrow Table) and returns a block, and names its operator in every error."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np

from trainkit.data._block import BATCH_FORMATS
from trainkit.data._block import block_rows
from trainkit.data._block import block_to_rows
from trainkit.data._block import concat_blocks
from trainkit.data._block import empty_block
from trainkit.data._block import rows_to_block
from trainkit.data._block import slice_block
from trainkit.data._block import to_batch
from trainkit.data._block import to_block


def check_batch_format(batch_format: str) -> None:
    if batch_format not in BATCH_FORMATS:
        raise ValueError(f"batch_format is {batch_format!r}; use one of {sorted(BATCH_FORMATS)}")


def check_batch_size(batch_size: int | None, what: str = "batch_size") -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"{what} is {batch_size!r}, but must be an int >= 1 or None")


@dataclass(frozen=True)
class MapBatches:
    """``map_batches``: the block cut into batches of ``batch_size`` rows, each passed to the
    function in ``batch_format``, the results joined into one block."""

    name: str
    fn: Callable[..., Any] | None  # None: the actor's instance is the function
    batch_size: int | None
    batch_format: str
    fn_args: Sequence[Any] = ()
    fn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    zero_copy: bool = False

    def __call__(self, block: Any, instance: Any = None) -> Any:
        fn = self.fn if instance is None else instance
        assert fn is not None
        n = block_rows(block)
        size = self.batch_size or max(n, 1)
        outs = []
        for start in range(0, max(n, 1), size):
            piece = slice_block(block, start, min(size, n - start))
            batch = to_batch(piece, self.batch_format, zero_copy=self.zero_copy)
            if self.zero_copy:
                _read_only(batch)
            try:
                out = fn(batch, *self.fn_args, **self.fn_kwargs)
                if inspect.isgenerator(out):  # a generator function: each yield is a batch
                    for i, part in enumerate(out):
                        outs.append(_yielded_block(part, i, self.name))
                    continue
            except KeyError as e:
                raise _key_error(e, self.name, block.column_names) from e
            out_block = to_block(out, where=self.name)
            if not out_block.num_columns and not piece.num_columns:
                out_block = piece  # a batch of rows without columns ({}): keep its rows
            outs.append(out_block)
        if not outs:  # a generator that yielded nothing
            return empty_block(block.schema)
        return outs[0] if len(outs) == 1 else concat_blocks(outs)


def _read_only(batch: Any) -> None:
    """``zero_copy_batch=True``: the batch's arrays may be views of the block, so none of them
    may be written (even those pyarrow had to copy, so the rule does not depend on dtype)."""
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False


def _yielded_block(part: Any, index: int, where: str) -> Any:
    try:
        return to_block(part, where=where)
    except TypeError as e:
        raise TypeError(f"{where}: the generator's yield #{index} was a "
                        f"{type(part).__module__}.{type(part).__qualname__} ({_short(part)}); "
                        "each yield must be one batch: a dict of column name -> numpy array, "
                        "a pyarrow.Table or a pandas.DataFrame") from e


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_error(e: KeyError, where: str, columns: Sequence[str],
               what: str = "batch") -> KeyError:
    """A KeyError from the user's function, saying which columns the batch really has."""
    key = e.args[0] if e.args else None
    return KeyError(f"{where}: the function looked up {key!r}, but the {what}'s columns are "
                    f"{list(columns)}")


@dataclass(frozen=True)
class MapRows:
    """``map`` (one row out per row), ``flat_map`` (a list of rows out per row) and
    ``filter`` (rows for which the function is true)."""

    name: str
    kind: str  # "map" | "flat_map" | "filter"
    fn: Callable[..., Any] | None  # None: the actor's instance is the function
    fn_args: Sequence[Any] = ()
    fn_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, block: Any, instance: Any = None) -> Any:
        fn = self.fn if instance is None else instance
        assert fn is not None
        try:
            return self._apply(fn, block)
        except KeyError as e:
            raise _key_error(e, self.name, block.column_names, "row") from e

    def _apply(self, fn: Callable[..., Any], block: Any) -> Any:
        rows = block_to_rows(block)
        if self.kind == "filter":
            import pyarrow as pa  # type: ignore[import-untyped]

            mask = [bool(fn(r, *self.fn_args, **self.fn_kwargs)) for r in rows]
            return block.filter(pa.array(mask, type=pa.bool_()))
        out: list[dict[str, Any]] = []
        for row in rows:
            result = fn(row, *self.fn_args, **self.fn_kwargs)
            if self.kind == "map":
                _check_row(result, self.name)
                out.append(result)
            else:
                for r in result:
                    _check_row(r, self.name)
                    out.append(r)
        if not out:
            return block.schema.empty_table() if self.kind == "map" else _empty()
        return rows_to_block(out, where=self.name)


def _empty() -> Any:
    import pyarrow as pa

    return pa.table({})


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, Mapping):
        raise TypeError(f"{where} returned a {type(row).__name__}; each row must be a dict of "
                        "column -> value")


@dataclass(frozen=True)
class Columns:
    """``add_column``, ``drop_columns``, ``select_columns``."""

    name: str
    kind: str
    columns: tuple[str, ...]
    fn: Callable[..., Any] | None = None
    batch_format: str = "pandas"

    def __call__(self, block: Any, instance: Any = None) -> Any:
        import pyarrow as pa

        missing = [c for c in self.columns if c not in block.column_names]
        if self.kind == "drop":
            if missing:
                raise ValueError(f"{self.name}: no column {missing}; the columns are "
                                 f"{block.column_names}")
            return block.drop_columns(list(self.columns))
        if self.kind == "select":
            if missing:
                raise ValueError(f"{self.name}: no column {missing}; the columns are "
                                 f"{block.column_names}")
            return block.select(list(self.columns))
        assert self.fn is not None
        try:
            values = self.fn(to_batch(block, self.batch_format))
        except KeyError as e:
            raise _key_error(e, self.name, block.column_names) from e
        column = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else \
            to_block({self.columns[0]: _as_array(values)}, where=self.name).column(0)
        if self.columns[0] in block.column_names:
            block = block.drop_columns([self.columns[0]])
        return block.append_column(self.columns[0], column)


def _as_array(values: Any) -> Any:
    if hasattr(values, "to_numpy"):  # a pandas Series
        return values.to_numpy()
    return values
