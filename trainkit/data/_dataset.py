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
from trainkit.data._aggregate import Aggregation
from trainkit.data._aggregate import MapGroups
from trainkit.data._aggregate import as_keys
from trainkit.data._batcher import ROW_ID_COLUMN
from trainkit.data._batcher import iter_batches_from_blocks
from trainkit.data._batcher import prefetch_blocks
from trainkit.data._batcher import split_row_ids
from trainkit.data._block import block_rows
from trainkit.data._block import block_to_rows
from trainkit.data._block import compact_block
from trainkit.data._block import concat_blocks
from trainkit.data._block import public_schema
from trainkit.data._block import slice_block
from trainkit.data._block import to_batch
from trainkit.data._compute import resolve_compute
from trainkit.data._executor import ExecutionStats
from trainkit.data._executor import Executor
from trainkit.data._executor import put_block
from trainkit.data._numpy_batcher import iter_numpy_batches
from trainkit.data._plan import ActorPoolSpec
from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import MapOp
from trainkit.data._plan import Plan
from trainkit.data._plan import Source
from trainkit.data._position import TrackedPass
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

    def _tracked_pass(self) -> tuple[Iterator[Any], TrackedPass] | None:
        """A pass whose blocks carry ``ROW_ID_COLUMN`` and a tracker to hand their rows to,
        for iterators whose position is saved (a Trainer's shards); None: untracked."""
        return None

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy",
                     prefetch_batches: int = 1, drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None,
                     local_shuffle_seed: int | None = None) -> Iterator[Any]:
        check_batch_size(batch_size)
        check_batch_format(batch_format)
        tracked = self._tracked_pass()
        blocks = self._blocks() if tracked is None else tracked[0]

        # numpy batches cut in order are numpy slices (see _numpy_batcher), else pyarrow's
        direct = batch_format in ("numpy", "default") and batch_size is not None and \
            local_shuffle_buffer_size is None

        def batches(ahead: Iterator[Any], ids: bool = False) -> Iterator[Any]:
            if direct:
                assert batch_size is not None
                fast = iter_numpy_batches(ahead, batch_size, drop_last)
                return ((b.pop(ROW_ID_COLUMN), b) for b in fast) if ids else fast
            tables = iter_batches_from_blocks(
                ahead, batch_size=batch_size, drop_last=drop_last,
                local_shuffle_buffer_size=local_shuffle_buffer_size,
                local_shuffle_seed=local_shuffle_seed)
            if ids:
                return ((i, to_batch(t, batch_format)) for i, t in map(split_row_ids, tables))
            return (to_batch(t, batch_format) for t in tables)

        if tracked is None:
            # Blocks are fetched ahead in a thread; batches are cut and converted here.
            fetched = prefetch_blocks(blocks, prefetch_batches, batch_size, batches)
            try:
                yield from fetched
            finally:
                fetched.close()
                self._wait_stats(fetched.wait_s)
            return
        handle = tracked[1]
        pairs = prefetch_blocks(
            blocks, prefetch_batches, batch_size,
            lambda ahead: batches(ahead, ids=True))
        try:
            for ids, batch in pairs:
                handle.hand_out(ids)  # consumed once the loop has it, not when prefetched
                yield batch
            handle.finish()
        finally:
            pairs.close()
            self._wait_stats(pairs.wait_s)

    def iter_torch_batches(self, *, batch_size: int | None = 256, dtypes: Any = None,
                           device: Any = "auto", collate_fn: Callable[..., Any] | None = None,
                           drop_last: bool = False, prefetch_batches: int = 1,
                           local_shuffle_buffer_size: int | None = None,
                           local_shuffle_seed: int | None = None,
                           pin_memory: bool = False) -> Iterator[Any]:
        from trainkit.data._torch import iter_torch_batches
        from trainkit.data._torch import iter_torch_batches_with_ids

        tracked = self._tracked_pass()
        if tracked is None:
            fetched = iter_torch_batches(
                self._blocks(), batch_size=batch_size, dtypes=dtypes, device=device,
                collate_fn=collate_fn, drop_last=drop_last, prefetch_batches=prefetch_batches,
                local_shuffle_buffer_size=local_shuffle_buffer_size,
                local_shuffle_seed=local_shuffle_seed, pin_memory=pin_memory)
            return self._timed(fetched)
        pairs = iter_torch_batches_with_ids(
            tracked[0], batch_size=batch_size, dtypes=dtypes, device=device,
            collate_fn=collate_fn, drop_last=drop_last, prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size,
            local_shuffle_seed=local_shuffle_seed, pin_memory=pin_memory)
        return self._tracked(pairs, tracked[1])

    def _timed(self, fetched: Any) -> Iterator[Any]:
        try:
            yield from fetched
        finally:
            fetched.close()
            self._wait_stats(fetched.wait_s)

    def _tracked(self, pairs: Any, handle: TrackedPass) -> Iterator[Any]:
        try:
            for ids, batch in pairs:
                handle.hand_out(ids)
                yield batch
            handle.finish()
        finally:
            pairs.close()
            self._wait_stats(pairs.wait_s)

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
    def _map(self, kind: str, fn: Any, transform_for: Callable[[Any], Any], *,
             concurrency: Any, compute: Any, max_concurrency: Any, num_cpus: float,
             num_gpus: float, fn_constructor_args: Sequence[Any],
             fn_constructor_kwargs: Mapping[str, Any] | None) -> Dataset:
        """A map operator: ``transform_for(fn_or_None)`` makes its per-block transform (None:
        the actor's instance is the function)."""
        is_class = inspect.isclass(fn)
        if not is_class and not callable(fn):
            raise TypeError(f"{kind} takes a function or a callable class, got {fn!r}")
        name = f"{kind}({_fn_name(fn)})"
        how = resolve_compute(name, fn, concurrency=concurrency, compute=compute,
                              max_concurrency=max_concurrency, is_class=is_class)
        if not is_class and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError(f"{name}: fn_constructor_args/fn_constructor_kwargs are for "
                             "callable classes; pass a function's arguments as fn_args/fn_kwargs")
        if not how.actors:
            return self._then(MapOp(name, transform_for(fn), None, None, num_cpus, num_gpus,
                                    task_limit=how.task_limit))
        udf_class = fn if is_class else _Returns(fn)
        spec = ActorPoolSpec(how.min_size, how.max_size, num_cpus, num_gpus,
                             tuple(fn_constructor_args), dict(fn_constructor_kwargs or {}),
                             how.max_concurrency, how.max_tasks_in_flight)
        return self._then(MapOp(name, transform_for(None), spec, udf_class, num_cpus, num_gpus))

    def map_batches(self, fn: Any, *, batch_size: int | None = 1024,
                    batch_format: str = "numpy", zero_copy_batch: bool = False,
                    fn_args: Sequence[Any] = (), fn_kwargs: Mapping[str, Any] | None = None,
                    fn_constructor_args: Sequence[Any] = (),
                    fn_constructor_kwargs: Mapping[str, Any] | None = None,
                    compute: Any = None, concurrency: int | tuple[int, int] | None = None,
                    max_concurrency: int | None = None, num_cpus: float = 1.0,
                    num_gpus: float = 0.0) -> Dataset:
        """Apply ``fn`` to batches.

        A function runs in tasks (at most ``concurrency`` at once); a callable class runs on
        an actor pool (each actor makes one instance: load a model once) of ``concurrency``
        actors, or autoscaled within ``concurrency=(min, max)``; ``max_concurrency`` calls
        run at once on each actor. ``compute=ActorPoolStrategy(...)`` is Ray's older
        spelling. A generator function's every yield is one output batch. Batches are
        writable copies unless ``zero_copy_batch=True`` (read-only, maybe views).

        Example:
            >>> ds = data.range(8).map_batches(lambda b: {"id": b["id"] * 2}, batch_size=4)
        """
        check_batch_size(batch_size)
        check_batch_format(batch_format)
        if not isinstance(zero_copy_batch, bool):
            raise TypeError(f"zero_copy_batch is {zero_copy_batch!r}, but must be a bool")
        kwargs = dict(fn_kwargs or {})

        def transform(f: Any) -> Any:
            name = f"map_batches({_fn_name(fn)})"
            return MapBatches(name, f, batch_size, batch_format, tuple(fn_args), kwargs,
                              zero_copy_batch)

        return self._map("map_batches", fn, transform, concurrency=concurrency,
                         compute=compute, max_concurrency=max_concurrency, num_cpus=num_cpus,
                         num_gpus=num_gpus, fn_constructor_args=fn_constructor_args,
                         fn_constructor_kwargs=fn_constructor_kwargs)

    def _rows(self, kind: str, fn: Any, fn_args: Sequence[Any],
              fn_kwargs: Mapping[str, Any] | None, **how: Any) -> Dataset:
        kwargs = dict(fn_kwargs or {})

        def transform(f: Any) -> Any:
            return MapRows(f"{kind}({_fn_name(fn)})", kind, f, tuple(fn_args), kwargs)

        return self._map(kind, fn, transform, **how)

    def map(self, fn: Any, *, fn_args: Sequence[Any] = (),
            fn_kwargs: Mapping[str, Any] | None = None, fn_constructor_args: Sequence[Any] = (),
            fn_constructor_kwargs: Mapping[str, Any] | None = None, compute: Any = None,
            concurrency: int | tuple[int, int] | None = None,
            max_concurrency: int | None = None, num_cpus: float = 1.0,
            num_gpus: float = 0.0) -> Dataset:
        """Apply ``fn`` (a function or callable class) to each row; compute arguments as
        :meth:`map_batches`."""
        return self._rows("map", fn, fn_args, fn_kwargs, concurrency=concurrency,
                          compute=compute, max_concurrency=max_concurrency, num_cpus=num_cpus,
                          num_gpus=num_gpus, fn_constructor_args=fn_constructor_args,
                          fn_constructor_kwargs=fn_constructor_kwargs)

    def flat_map(self, fn: Any, *, fn_args: Sequence[Any] = (),
                 fn_kwargs: Mapping[str, Any] | None = None,
                 fn_constructor_args: Sequence[Any] = (),
                 fn_constructor_kwargs: Mapping[str, Any] | None = None, compute: Any = None,
                 concurrency: int | tuple[int, int] | None = None,
                 max_concurrency: int | None = None, num_cpus: float = 1.0,
                 num_gpus: float = 0.0) -> Dataset:
        """Apply ``fn`` to each row; it returns a list of rows."""
        return self._rows("flat_map", fn, fn_args, fn_kwargs, concurrency=concurrency,
                          compute=compute, max_concurrency=max_concurrency, num_cpus=num_cpus,
                          num_gpus=num_gpus, fn_constructor_args=fn_constructor_args,
                          fn_constructor_kwargs=fn_constructor_kwargs)

    def filter(self, fn: Any, *, fn_args: Sequence[Any] = (),
               fn_kwargs: Mapping[str, Any] | None = None,
               fn_constructor_args: Sequence[Any] = (),
               fn_constructor_kwargs: Mapping[str, Any] | None = None, compute: Any = None,
               concurrency: int | tuple[int, int] | None = None,
               max_concurrency: int | None = None, num_cpus: float = 1.0,
               num_gpus: float = 0.0) -> Dataset:
        """Keep the rows for which ``fn`` is true."""
        return self._rows("filter", fn, fn_args, fn_kwargs, concurrency=concurrency,
                          compute=compute, max_concurrency=max_concurrency, num_cpus=num_cpus,
                          num_gpus=num_gpus, fn_constructor_args=fn_constructor_args,
                          fn_constructor_kwargs=fn_constructor_kwargs)

    def add_column(self, col: str, fn: Callable[..., Any], *, batch_format: str = "pandas",
                   concurrency: int | None = None, num_cpus: float = 1.0) -> Dataset:
        """Add (or replace) column ``col``: ``fn(batch)`` returns its values for the batch.

        Example:
            >>> ds = data.range(4).add_column("double", lambda df: df["id"] * 2)
        """
        if not isinstance(col, str):
            raise TypeError(f"add_column: the column name is {col!r}, but must be a str")
        if not callable(fn):
            raise TypeError(f"add_column({col!r}) takes a function of a batch, got {fn!r}")
        check_batch_format(batch_format)
        name = f"add_column({col})"
        how = resolve_compute(name, fn, concurrency=concurrency, compute=None,
                              max_concurrency=None, is_class=False)
        return self._then(MapOp(name, Columns(name, "add", (col,), fn, batch_format),
                                num_cpus=num_cpus, task_limit=how.task_limit))

    def drop_columns(self, cols: Sequence[str]) -> Dataset:
        """Drop ``cols``; dropping every column keeps the rows (as ``{}``)."""
        name = f"drop_columns({list(cols)})"
        return self._then(MapOp(name, Columns(name, "drop", tuple(cols))))

    def select_columns(self, cols: Sequence[str]) -> Dataset:
        name = f"select_columns({list(cols)})"
        return self._then(MapOp(name, Columns(name, "select", tuple(cols))))

    def random_sample(self, fraction: float, *, seed: int | None = None) -> Dataset:
        """Each row kept with probability ``fraction`` (about that share of the rows; the same
        rows again for the same ``seed`` and blocks).

        Example:
            >>> ds = data.range(1000).random_sample(0.1, seed=0)
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
                not 0 <= fraction <= 1:
            raise ValueError(f"random_sample: fraction is {fraction!r}, but must be a number "
                             "in [0, 1] (the share of rows to keep, e.g. 0.1)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"random_sample: seed is {seed!r}, but must be an int or None")
        return self._then(AllToAllOp(f"random_sample({fraction})", "random_sample",
                                     {"fraction": float(fraction), "seed": seed}))

    def sort(self, key: str | Sequence[str], descending: bool | Sequence[bool] = False
             ) -> Dataset:
        """Sort the rows by ``key`` (a column or a list of them), each ascending unless
        ``descending`` (one bool, or one per key) says otherwise.

        Raises:
            ValueError: a key is not a column (when the dataset runs).

        Example:
            >>> ds = data.from_items([{"k": 2}, {"k": 1}]).sort("k")
        """
        keys = as_keys(key, "sort")
        if not keys:
            raise ValueError("sort: give the column(s) to sort by, e.g. sort('id')")
        if isinstance(descending, bool):
            order = (descending,) * len(keys)
        else:
            order = tuple(descending)
            if len(order) != len(keys) or not all(isinstance(d, bool) for d in order):
                raise ValueError(f"sort: descending is {descending!r}; give one bool, or one "
                                 f"per key ({len(keys)})")
        return self._then(AllToAllOp(f"sort({list(keys)})", "sort",
                                     {"keys": keys, "descending": order}))

    def groupby(self, key: str | Sequence[str] | None) -> GroupedData:
        """Group the rows by ``key`` (a column, a list of them, or None for one group) for
        ``count``/``sum``/``min``/``max``/``mean``/``std`` or ``map_groups``.

        Example:
            >>> counts = data.from_items([{"k": 1}, {"k": 1}]).groupby("k").count()
        """
        return GroupedData(self, as_keys(key, "groupby"))

    def limit(self, n: int) -> Dataset:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"limit({n!r}): n must be an int >= 0")
        return self._then(AllToAllOp(f"limit({n})", "limit", {"n": n}))

    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> Dataset:
        """The same rows in ``num_blocks`` blocks of about equal size (in order, or in a random
        order with ``shuffle=True``)."""
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"repartition({num_blocks!r}): num_blocks must be an int >= 1")
        if not isinstance(shuffle, bool):
            raise TypeError(f"repartition: shuffle is {shuffle!r}, but must be a bool")
        return self._then(AllToAllOp(f"repartition({num_blocks})", "repartition",
                                     {"num_blocks": num_blocks, "shuffle": shuffle}))

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
        """The ``pyarrow.Schema`` of the rows (None for an empty dataset)."""
        for block in self.limit(1)._blocks():
            return public_schema(block.schema)
        return None

    def show(self, limit: int = 20) -> None:
        """Print the first ``limit`` rows, one per line."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"show: limit is {limit!r}, but must be an int >= 0")
        for row in self.take(limit):
            print(row)

    def iterator(self) -> DataIterator:
        """A :class:`DataIterator` over this dataset: each ``iter_*`` call is one pass."""
        return _DatasetIterator(self)

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
            refs = (put_block(compact_block(part)),) if part is not None else ()
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
        return (Dataset(Plan(Source(block_refs=(put_block(compact_block(train)),),
                                    block_rows=(train.num_rows,), name="Train"))),
                Dataset(Plan(Source(block_refs=(put_block(compact_block(test)),),
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


class _Returns:
    """Stands in for a class on an actor pool when the user gave a function: "making an
    instance" gives the function back."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self) -> Callable[..., Any]:
        return self.fn


class GroupedData:
    """Rows grouped by key columns: ``ds.groupby(key)``. Each aggregation is a new dataset of
    one row per group, sorted by key, with columns named as Ray names them: ``count()``,
    ``sum(x)``, ``mean(x)``, ...; a key that is not a column fails when the dataset runs."""

    def __init__(self, dataset: Dataset, keys: tuple[str, ...]) -> None:
        self._dataset = dataset
        self._keys = keys

    def __repr__(self) -> str:
        return f"GroupedData({self._dataset!r}, key={list(self._keys)})"

    def _aggregate(self, fn: str, on: str | Sequence[str] | None, ddof: int = 1) -> Dataset:
        if on is None and fn != "count":
            raise ValueError(f"groupby(...).{fn}: give the column(s), e.g. {fn}('x')")
        columns: tuple[str | None, ...] = (None,) if on is None else as_keys(on, fn)
        aggs = tuple(Aggregation(fn, c, ddof) for c in columns)
        name = f"groupby({list(self._keys)}).{fn}({', '.join(c or '' for c in columns)})"
        return self._dataset._then(AllToAllOp(name, "aggregate",
                                              {"keys": self._keys, "aggs": aggs}))

    def count(self) -> Dataset:
        """The number of rows of each group, in column ``count()``."""
        return self._aggregate("count", None)

    def sum(self, on: str | Sequence[str]) -> Dataset:
        return self._aggregate("sum", on)

    def min(self, on: str | Sequence[str]) -> Dataset:
        return self._aggregate("min", on)

    def max(self, on: str | Sequence[str]) -> Dataset:
        return self._aggregate("max", on)

    def mean(self, on: str | Sequence[str]) -> Dataset:
        return self._aggregate("mean", on)

    def std(self, on: str | Sequence[str], ddof: int = 1) -> Dataset:
        """The sample standard deviation (``ddof=1``, as pandas and Ray)."""
        return self._aggregate("std", on, ddof)

    def map_groups(self, fn: Callable[..., Any], *, batch_format: str = "default",
                   fn_args: Sequence[Any] = (), fn_kwargs: Mapping[str, Any] | None = None,
                   num_cpus: float = 1.0) -> Dataset:
        """``fn(group)`` for each group (a whole group is one batch); the results' rows."""
        if not callable(fn):
            raise TypeError(f"map_groups takes a function of a batch, got {fn!r}")
        check_batch_format(batch_format)
        keys = self._keys
        grouped = self._dataset._then(AllToAllOp(f"groupby({list(keys)})", "group_blocks",
                                                 {"keys": keys}))
        name = f"map_groups({_fn_name(fn)})"
        return grouped._then(MapOp(name, MapGroups(name, keys, fn, batch_format,
                                                   tuple(fn_args), dict(fn_kwargs or {})),
                                   num_cpus=num_cpus))


class DataIterator(_Iterable):
    """An iterator over a dataset's rows: each ``iter_batches``/``iter_rows``/
    ``iter_torch_batches`` call is one pass (one epoch). ``ds.iterator()`` gives one over a
    whole dataset, ``train.get_dataset_shard`` one over a rank's shard.

    Example:
        >>> it = data.range(10).iterator()
        >>> sum(len(b["id"]) for b in it.iter_batches(batch_size=4))
        10
    """

    def materialize(self) -> Dataset:
        """One pass of this iterator, kept in the object store as a dataset."""
        refs, rows = [], []
        for block in self._blocks():
            refs.append(put_block(block))
            rows.append(block_rows(block))
        return Dataset(Plan(Source(block_refs=tuple(refs), block_rows=tuple(rows),
                                   name="Materialized")))

    def stats(self) -> str:
        return "no stats for this iterator"

    def schema(self) -> Any:
        """The schema of the rows, from the first block of a pass (None if empty)."""
        for block in self._blocks():
            return public_schema(block.schema)
        return None


class _DatasetIterator(DataIterator):
    """``ds.iterator()``: passes over a whole dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def __repr__(self) -> str:
        return f"DataIterator({self._dataset!r})"

    def _blocks(self) -> Iterator[Any]:
        return self._dataset._blocks()

    def _wait_stats(self, waited: float) -> None:
        self._dataset._wait_stats(waited)

    def stats(self) -> str:
        return self._dataset.stats()
