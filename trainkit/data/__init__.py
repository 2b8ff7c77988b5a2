"""Data: lazy, streaming datasets of Arrow blocks, executed on trainkit's runtime.

``from trainkit import data``; ``data.read_parquet(...)``, ``data.from_numpy(...)``, ... make
a ``Dataset``; transforms are lazy; iterating runs a streaming executor with bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trainkit.runtime as rt
from trainkit.data import _datasource
from trainkit.data._compute import ActorPoolStrategy
from trainkit.data._compute import TaskPoolStrategy
from trainkit.data._context import DataContext
from trainkit.data._context import ExecutionOptions
from trainkit.data._context import ExecutionResources
from trainkit.data._dataset import DataIterator
from trainkit.data._dataset import Dataset
from trainkit.data._dataset import GroupedData
from trainkit.data._executor import put_block
from trainkit.data._plan import Plan
from trainkit.data._plan import Source

__all__ = [
    "ActorPoolStrategy",
    "DataContext",
    "DataIterator",
    "Dataset",
    "ExecutionOptions",
    "ExecutionResources",
    "GroupedData",
    "TaskPoolStrategy",
    "from_arrow",
    "from_items",
    "from_numpy",
    "from_pandas",
    "range",
    "range_tensor",
    "read_csv",
    "read_json",
    "read_numpy",
    "read_parquet",
]


def _source(make: Callable[..., Any], name: str) -> Callable[..., Dataset]:
    def build(*args: Any, **kwargs: Any) -> Dataset:
        tasks = make(*args, **kwargs)
        return Dataset(Plan(Source(read_tasks=tuple(tasks), name=name)))

    build.__name__ = make.__name__
    build.__doc__ = make.__doc__
    return build


def _in_memory(make: Callable[..., Any], name: str) -> Callable[..., Dataset]:
    """In-memory data goes into the object store once, when the dataset is made (as Ray
    does), not into every task of every pass."""

    def build(*args: Any, **kwargs: Any) -> Dataset:
        if not rt.is_initialized():
            rt.init()
        refs, rows = [], []
        for task in make(*args, **kwargs):
            for block in task.read():
                refs.append(put_block(block))
                rows.append(int(block.num_rows))
        return Dataset(Plan(Source(block_refs=tuple(refs), block_rows=tuple(rows), name=name)))

    build.__name__ = make.__name__
    build.__doc__ = make.__doc__
    return build


read_parquet = _source(_datasource.read_parquet, "ReadParquet")
read_csv = _source(_datasource.read_csv, "ReadCSV")
read_json = _source(_datasource.read_json, "ReadJSON")
read_numpy = _source(_datasource.read_numpy, "ReadNumpy")
from_items = _in_memory(_datasource.from_items, "FromItems")
from_numpy = _in_memory(_datasource.from_numpy, "FromNumpy")
from_arrow = _in_memory(_datasource.from_arrow, "FromArrow")
from_pandas = _in_memory(_datasource.from_pandas, "FromPandas")
range = _source(_datasource.range, "Range")
range_tensor = _source(_datasource.range_tensor, "RangeTensor")
