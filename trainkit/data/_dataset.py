"""``Dataset``: a lazy plan of blocks; transforms return new datasets, consumers run it."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import trainkit.runtime as rt
from trainkit.data._batcher import iter_batches_from_blocks
from trainkit.data._batcher import prefetch
from trainkit.data._block import block_rows
from trainkit.data._block import block_to_rows
from trainkit.data._block import compact_block
from trainkit.data._block import concat_blocks
from trainkit.data._block import slice_block
from trainkit.data._block import to_batch
from trainkit.data._executor import ExecutionStats
from trainkit.data._executor import Executor
from trainkit.data._executor import pool_spec
from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import MapOp
from trainkit.data._plan import Plan
from trainkit.data._plan import Source
from trainkit.data._transforms import Columns
from trainkit.data._transforms import MapBatches
from trainkit.data._transforms import MapRows
from trainkit.data._transforms import check_batch_format
from trainkit.data._transforms import check_batch_size

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]


def _fn_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


class _Iterable:
    """What ``iter_batches`` and friends share between a Dataset and a DataIterator: a way
    to get a fresh stream of blocks, and the stats of the last pass."""

    def _blocks(self) -> Iterator[Any]:
        raise NotImplementedError

    def _wait_stats(self, waited: float) -> None:
        pass

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy",
                     prefetch_batches: int = 1, drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None) -> Iterator[Any]:
        check_batch_size(batch_size)
        check_batch_format(batch_format)
        tables = iter_batches_from_blocks(
            self._blocks(), batch_size=batch_size, drop_last=drop_last,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed)
        # Batches are cut and converted in the prefetch thread, overlapping the consumer.
        fetched = prefetch((to_batch(t, batch_format) for t in tables), prefetch_batches)
        try:
            yield from fetched
        finally:
            fetched.close()
            self._wait_stats(fetched.wait_s)

    def iter_torch_batches(self, *, batch_size: int | None = 256, dtypes: Any = None,
                           device: Any = "auto", collate_fn: Callable[..., Any] | None = None,
                           drop_last: bool = False, prefetch_batches: int = 1,
                           local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None,
                           pin_memory: bool = False) -> Iterator[Any]:
        from trainkit.data._torch import iter_torch_batches

        fetched = iter_torch_batches(
            self._blocks(), batch_size=batch_size, dtypes=dtypes, device=device,
            collate_fn=collate_fn, drop_last=drop_last, prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed, pin_memory=pin_memory)
        return self._timed(fetched)

    def _timed(self, fetched: Any) -> Iterator[Any]:
        try:
            yield from fetched
        finally:
            fetched.close()
            self._wait_stats(fetched.wait_s)

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        for block in self._blocks():
            yield from block_to_rows(block)


class Dataset(_Iterable):
    """A lazy dataset: a source and operators. See API.md ("Data")."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._last_stats: ExecutionStats | None = None

    def __repr__(self) -> str:
        ops = " -> ".join([self._plan.source.name] + [op.name for op in self._plan.ops])
        return f"Dataset({ops})"

    def _then(self, op: MapOp | AllToAllOp) -> Dataset:
        return Dataset(self._plan.then(op))

    # -- transforms ----------------------------------------------------------------------
    def map_batches(self, fn: Any, *, batch_size: int | None = 1024,
                    batch_format: str = "numpy", fn_args: Sequence[Any] = (),
                    fn_kwargs: Mapping[str, Any] | None = None,
                    fn_constructor_args: Sequence[Any] = (),
                    fn_constructor_kwargs: Mapping[str, Any] | None = None,
                    concurrency: int | tuple[int, int] | None = None, num_cpus: float = 1.0,
                    num_gpus: float = 0.0, zero_copy_batch: bool = False) -> Dataset:
        """Apply ``fn`` to batches. A function runs in tasks; a callable class runs on an
        actor pool of ``concurrency`` actors (each makes one instance: load a model once).
        Batches are writable copies unless ``zero_copy_batch=True`` (read-only views)."""
        check_batch_size(batch_size)
        check_batch_format(batch_format)
        name = f"map_batches({_fn_name(fn)})"
        if inspect.isclass(fn):
            transform = MapBatches(name, None, batch_size, batch_format, tuple(fn_args),
                                   dict(fn_kwargs or {}), zero_copy_batch)
            spec = pool_spec(concurrency if concurrency is not None else 1, num_cpus, num_gpus,
                             fn_constructor_args, fn_constructor_kwargs)
            return self._then(MapOp(name, transform, spec, fn, num_cpus, num_gpus))
        if not callable(fn):
            raise TypeError(f"map_batches takes a function or a callable class, got {fn!r}")
        if concurrency is not None and not isinstance(concurrency, int):
            raise ValueError("concurrency=(min, max) is for callable classes (actor pools)")
        transform = MapBatches(name, fn, batch_size, batch_format, tuple(fn_args),
                               dict(fn_kwargs or {}), zero_copy_batch)
        return self._then(MapOp(name, transform, None, None, num_cpus, num_gpus))

    def _rows(self, kind: str, fn: Any, fn_args: Sequence[Any],
              fn_kwargs: Mapping[str, Any] | None) -> Dataset:
        if not callable(fn):
            raise TypeError(f"{kind} takes a function, got {fn!r}")
        name = f"{kind}({_fn_name(fn)})"
        return self._then(MapOp(name, MapRows(name, kind, fn, tuple(fn_args),
                                              dict(fn_kwargs or {}))))

    def map(self, fn: Callable[..., Any], *, fn_args: Sequence[Any] = (),
            fn_kwargs: Mapping[str, Any] | None = None) -> Dataset:
        return self._rows("map", fn, fn_args, fn_kwargs)

    def flat_map(self, fn: Callable[..., Any], *, fn_args: Sequence[Any] = (),
                 fn_kwargs: Mapping[str, Any] | None = None) -> Dataset:
        return self._rows("flat_map", fn, fn_args, fn_kwargs)

    def filter(self, fn: Callable[..., Any], *, fn_args: Sequence[Any] = (),
               fn_kwargs: Mapping[str, Any] | None = None) -> Dataset:
        return self._rows("filter", fn, fn_args, fn_kwargs)

    def add_column(self, col: str, fn: Callable[..., Any], *,
                   batch_format: str = "pandas") -> Dataset:
        check_batch_format(batch_format)
        name = f"add_column({col})"
        return self._then(MapOp(name, Columns(name, "add", (col,), fn, batch_format)))

    def drop_columns(self, cols: Sequence[str]) -> Dataset:
        name = f"drop_columns({list(cols)})"
        return self._then(MapOp(name, Columns(name, "drop", tuple(cols))))

    def select_columns(self, cols: Sequence[str]) -> Dataset:
        name = f"select_columns({list(cols)})"
        return self._then(MapOp(name, Columns(name, "select", tuple(cols))))

    def limit(self, n: int) -> Dataset:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"limit({n!r}): n must be an int >= 0")
        return self._then(AllToAllOp(f"limit({n})", "limit", {"n": n}))

    def repartition(self, num_blocks: int) -> Dataset:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"repartition({num_blocks!r}): num_blocks must be an int >= 1")
        return self._then(AllToAllOp(f"repartition({num_blocks})", "repartition",
                                     {"num_blocks": num_blocks}))

    def random_shuffle(self, *, seed: int | None = None) -> Dataset:
        return self._then(AllToAllOp("random_shuffle", "random_shuffle", {"seed": seed}))

    def union(self, *others: Dataset) -> Dataset:
        for o in others:
            if not isinstance(o, Dataset):
                raise TypeError(f"union() takes datasets, got {type(o).__name__}")
        return self._then(AllToAllOp("union", "union",
                                     {"others": tuple(o._plan for o in others)}))

    # -- execution -----------------------------------------------------------------------
    def _execute(self) -> Iterator[tuple[Any, Any]]:
        stats = ExecutionStats()
        self._last_stats = stats
        return iter(Executor(self._plan, stats))

    def _blocks(self) -> Iterator[Any]:
        return (block for _, block in self._execute())

    def _wait_stats(self, waited: float) -> None:
        if self._last_stats is not None:
            self._last_stats.consumer_wait_s += waited

    def materialize(self) -> Dataset:
        """Run the plan once and keep its blocks in the object store (spilled if needed)."""
        refs, rows = [], []
        for ref, block in self._execute():
            refs.append(ref)
            rows.append(block_rows(block))
        source = Source(block_refs=tuple(refs), block_rows=tuple(rows), name="Materialized")
        ds = Dataset(Plan(source))
        ds._last_stats = self._last_stats
        return ds

    def count(self) -> int:
        src = self._plan.source
        if not self._plan.ops:  # from metadata when the source knows it
            if src.block_refs:
                return sum(src.block_rows)
            known = [t.num_rows for t in src.read_tasks]
            if all(n is not None for n in known):
                return sum(n for n in known if n is not None)
        return sum(block_rows(b) for b in self._blocks())

    def schema(self) -> Any:
        for block in self.limit(1)._blocks():
            return block.schema
        return None

    def columns(self) -> list[str]:
        schema = self.schema()
        return list(schema.names) if schema is not None else []

    def take(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(itertools.islice(self.limit(limit).iter_rows(), limit))

    def take_all(self) -> list[dict[str, Any]]:
        return list(self.iter_rows())

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "numpy") -> Any:
        check_batch_format(batch_format)
        blocks = list(self.limit(batch_size)._blocks())
        if not blocks:
            raise ValueError("take_batch(): the dataset is empty")
        return to_batch(concat_blocks(blocks), batch_format)

    def to_pandas(self) -> pandas.DataFrame:
        blocks = list(self._blocks())
        if not blocks:
            import pandas

            return pandas.DataFrame()
        return to_batch(concat_blocks(blocks), "pandas")

    def to_arrow(self) -> Any:
        blocks = list(self._blocks())
        return concat_blocks(blocks) if blocks else None

    def stats(self) -> str:
        """Per operator: tasks, blocks, rows, bytes and time; and how long the consumer
        waited for data, for the last execution of this dataset."""
        if self._last_stats is None:
            return "the dataset has not been executed yet"
        return self._last_stats.summary()

    # -- splitting -----------------------------------------------------------------------
    def split(self, n: int, *, equal: bool = False) -> list[Dataset]:
        """``n`` materialized datasets (split at block boundaries, or by rows with equal)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"split({n!r}): n must be an int >= 1")
        table = self.to_arrow()
        total = table.num_rows if table is not None else 0
        size = total // n if equal else -(-total // n)
        parts = []
        for i in range(n):
            start = i * size
            length = max(0, min(size, total - start))
            part = slice_block(table, start, length) if table is not None and length else None
            refs = (rt.put(compact_block(part)),) if part is not None else ()
            rows = (length,) if part is not None else ()
            parts.append(Dataset(Plan(Source(block_refs=refs, block_rows=rows, name="Split"))))
        return parts

    def train_test_split(self, test_size: float | int, *, shuffle: bool = False,
                         seed: int | None = None) -> tuple[Dataset, Dataset]:
        ds = self.random_shuffle(seed=seed) if shuffle else self
        table = ds.to_arrow()
        total = table.num_rows if table is not None else 0
        if isinstance(test_size, float):
            if not 0 < test_size < 1:
                raise ValueError(f"test_size is {test_size}; a float must be in (0, 1)")
            n_test = round(total * test_size)
        else:
            n_test = int(test_size)
        if not 0 <= n_test <= total:
            raise ValueError(f"test_size is {test_size}; the dataset has {total} rows")
        train, test = slice_block(table, 0, total - n_test), slice_block(table, total - n_test,
                                                                         n_test)
        return (Dataset(Plan(Source(block_refs=(rt.put(compact_block(train)),),
                                    block_rows=(train.num_rows,), name="Train"))),
                Dataset(Plan(Source(block_refs=(rt.put(compact_block(test)),),
                                    block_rows=(test.num_rows,), name="Test"))))

    def streaming_split(self, n: int, *, equal: bool = True,
                        lag_timeout_s: float = 600.0) -> list[Any]:
        """``n`` iterators fed by one coordinator: each row goes to exactly one of them per
        epoch; with ``equal`` every iterator gets the same number of rows. They must be
        consumed side by side (the ranks of a Trainer): one that stops taking its blocks holds
        the others, for at most ``lag_timeout_s``, then they fail naming it."""
        from trainkit.data._split import make_streaming_split

        return make_streaming_split(self._plan, n, equal, lag_timeout_s)

    # -- sinks ---------------------------------------------------------------------------
    def _write(self, path: str, fmt: str) -> list[str]:
        import os

        from trainkit.data._datasink import write_block

        os.makedirs(path, exist_ok=True)
        task = rt.remote(write_block)
        refs: list[Any] = []
        for ref, block in self._execute():
            if block_rows(block):  # an empty block makes no file
                refs.append(task.remote(ref, path, fmt, len(refs)))
        return list(rt.get(refs))

    def write_parquet(self, path: str) -> list[str]:
        return self._write(path, "parquet")

    def write_csv(self, path: str) -> list[str]:
        return self._write(path, "csv")

    def write_json(self, path: str) -> list[str]:
        return self._write(path, "json")
