"""Whole-table operations behind ``sort``, ``groupby`` and ``random_sample``: pure functions of
pyarrow tables (the executor gathers the blocks and calls them).

Output names follow Ray: ``groupby("k").count()`` gives columns ``k`` and ``count()``,
``sum("x")`` gives ``sum(x)``; groups come out sorted by key; ``std`` has ``ddof=1``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from trainkit.data._block import concat_blocks
from trainkit.data._block import empty_block
from trainkit.data._block import to_batch
from trainkit.data._block import to_block

AGGREGATIONS = ("count", "sum", "min", "max", "mean", "std")
_ARROW_NAMES = {"sum": "sum", "min": "min", "max": "max", "mean": "mean", "std": "stddev"}


def as_keys(key: str | Sequence[str] | None, where: str) -> tuple[str, ...]:
    """``key`` as a tuple of column names (``None``: no key, one group)."""
    if key is None:
        return ()
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"{where}: the key is {key!r}; give a column name or a list of them")
    return keys


def check_columns(table: pa.Table, names: Sequence[str], where: str) -> None:
    """Fail naming the columns of ``names`` that ``table`` lacks, and the ones it has."""
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{where}: no column {missing[0]!r} in the dataset; its columns are "
                         f"{table.column_names}")


def sort_table(table: pa.Table, keys: Sequence[str], descending: Sequence[bool],
               where: str) -> pa.Table:
    """``table`` sorted by ``keys`` (stable; nulls last)."""
    check_columns(table, keys, where)
    order = [(k, "descending" if d else "ascending") for k, d in zip(keys, descending,
                                                                       strict=True)]
    return table.take(pc.sort_indices(table, sort_keys=order))  # (nulls last by default)


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One output column of a groupby: ``fn`` over ``column`` (None for ``count``)."""

    fn: str  # one of AGGREGATIONS
    column: str | None = None
    ddof: int = 1

    @property
    def name(self) -> str:
        return f"{self.fn}({self.column or ''})"


def aggregate(table: pa.Table, keys: Sequence[str], aggs: Sequence[Aggregation],
              where: str) -> pa.Table:
    """One row per group of ``keys`` (one row in all without keys), sorted by the keys."""
    check_columns(table, [*keys, *(a.column for a in aggs if a.column is not None)], where)
    specs: list[Any] = []
    for agg in aggs:
        if agg.fn == "count":
            specs.append(([], "count_all"))
        elif agg.fn == "std":
            specs.append((agg.column, "stddev", pc.VarianceOptions(ddof=agg.ddof)))
        else:
            specs.append((agg.column, _ARROW_NAMES[agg.fn]))
    grouped = table.group_by(list(keys)).aggregate(specs)
    arrow_names = ["count_all" if a.fn == "count" else f"{a.column}_{_ARROW_NAMES[a.fn]}"
                   for a in aggs]
    columns = {k: grouped.column(k) for k in keys}
    for agg, arrow_name in zip(aggs, arrow_names, strict=True):
        columns[agg.name] = grouped.column(arrow_name)
    out = pa.table(columns)
    return sort_table(out, keys, [False] * len(keys), where) if keys else out


def group_bounds(table: pa.Table, keys: Sequence[str]) -> list[int]:
    """Row offsets where a new group starts in ``table`` (sorted by ``keys``), and its end."""
    n = table.num_rows
    if not n:
        return [0]
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        values = table.column(key).to_numpy(zero_copy_only=False)
        change[1:] |= np.asarray(values[1:] != values[:-1], dtype=bool)
    return [*np.flatnonzero(change).tolist(), n]


def split_groups(table: pa.Table, keys: Sequence[str], num_blocks: int) -> list[pa.Table]:
    """``table`` (sorted by ``keys``) cut into about ``num_blocks`` blocks at group bounds."""
    bounds = group_bounds(table, keys)
    target = -(-table.num_rows // max(num_blocks, 1))
    parts, start = [], 0
    for end in bounds[1:]:
        if end - start >= target or end == table.num_rows:
            parts.append(table.slice(start, end - start))
            start = end
    return parts


@dataclass(frozen=True)
class MapGroups:
    """``map_groups``: ``fn`` on each group of a block (which holds whole groups, sorted)."""

    name: str
    keys: tuple[str, ...]
    fn: Callable[..., Any]
    batch_format: str
    fn_args: tuple[Any, ...] = ()
    fn_kwargs: dict[str, Any] | None = None

    def __call__(self, block: pa.Table, instance: Any = None) -> pa.Table:
        bounds = group_bounds(block, self.keys) if self.keys else [0, block.num_rows]
        outs = []
        for start, end in itertools.pairwise(bounds):
            batch = to_batch(block.slice(start, end - start), self.batch_format,
                             zero_copy=False)
            out = self.fn(batch, *self.fn_args, **(self.fn_kwargs or {}))
            outs.append(to_block(out, where=self.name))
        return concat_blocks(outs) if outs else empty_block(block.schema)


def sample_mask(num_rows: int, fraction: float, seed: int | None, index: int) -> np.ndarray:
    """Which rows of the ``index``-th block ``random_sample`` keeps (seeded per block)."""
    rng = np.random.default_rng(None if seed is None else [seed, index])
    return rng.random(num_rows) < fraction
