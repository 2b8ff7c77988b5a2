"""The streaming executor: blocks flow through the plan's operators as object refs.

Stateless maps next to each other are fused into one task per block (a read task fuses with
the maps after it). Callable classes run on an actor pool. Each stage keeps a bounded number
of blocks in flight, sized from a byte budget (a share of the object store, or
``DataContext``'s ``resource_limits.object_store_memory``), so upstream stages wait while
downstream ones, or the consumer, catch up: a dataset larger than the object store streams
through. Outputs come out in input order unless ``execution_options.preserve_order`` is off.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import trainkit.runtime as rt
from trainkit._display import Text
from trainkit._display import notebook_handle
from trainkit.data._block import block_bytes
from trainkit.data._block import block_rows
from trainkit.data._block import compact_block
from trainkit.data._block import concat_blocks
from trainkit.data._block import seal_block
from trainkit.data._block import slice_block
from trainkit.data._block import unseal_block
from trainkit.data._context import DataContext
from trainkit.data._datasource import ReadTask
from trainkit.data._plan import ActorPoolSpec
from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import MapOp
from trainkit.data._plan import Plan

BUDGET_SHARE = 0.25  # of the object store, for the blocks in flight of one execution
MAX_TASKS_PER_CPU = 2

# A block flowing through the executor: its ref and the (zero-copy) table itself.
Item = tuple[Any, Any]


@dataclass
class OpStats:
    name: str
    tasks: int = 0
    blocks: int = 0
    rows: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def add(self, block: Any, submitted: float) -> None:
        """Count one output block (its task's CPU time rides in its schema metadata)."""
        self.wall_s += time.monotonic() - submitted
        self.blocks += 1
        self.rows += block_rows(block)
        self.bytes += block_bytes(block)
        meta = block.schema.metadata or {}
        self.cpu_s += float(meta.get(_CPU_KEY, b"0") or 0)

    def line(self) -> str:
        return (f"{self.name}: {self.tasks} tasks, {self.blocks} blocks, {self.rows} rows, "
                f"{self.bytes / 2**20:.1f} MiB, {self.wall_s:.2f} s wall, {self.cpu_s:.2f} s "
                "CPU in tasks")


@dataclass
class ExecutionStats:
    ops: list[OpStats] = field(default_factory=list)
    consumer_wait_s: float = 0.0
    total_s: float = 0.0

    def summary(self) -> str:
        lines = [s.line() for s in self.ops]
        lines.append(f"consumer waited {self.consumer_wait_s:.2f} s of {self.total_s:.2f} s")
        return "\n".join(lines)


_CPU_KEY = b"trainkit.cpu_s"


def _with_cpu(block: Any, cpu_s: float) -> Any:
    """The block, carrying its task's CPU time in its schema metadata (no copy)."""
    block = seal_block(block)
    meta = dict(block.schema.metadata or {})
    meta[_CPU_KEY] = f"{cpu_s:.6f}".encode()
    return block.replace_schema_metadata(meta)


def _run_task(item: Any, transforms: tuple[Any, ...]) -> Any:
    """One fused task: read (or take) a block, then apply every transform in turn."""
    cpu = time.process_time()
    if isinstance(item, ReadTask):
        blocks = item.read()
        block = concat_blocks(blocks) if len(blocks) != 1 else blocks[0]
    else:
        block = unseal_block(item)
    for transform in transforms:
        block = transform(block)
    return _with_cpu(block, time.process_time() - cpu)


class _PoolWorker:
    """An actor of a pool: holds one instance of the user's class."""

    def __init__(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 transform: Any) -> None:
        self.instance = cls(*args, **kwargs)
        self.transform = transform

    def process(self, block: Any) -> Any:
        cpu = time.process_time()
        block = self.transform(unseal_block(block), self.instance)
        return _with_cpu(block, time.process_time() - cpu)


WAIT_WARNING_S = 60.0


def _get_patiently(ref: Any, what: str) -> Any:
    """``get`` a task's block, saying so once if it is slow to come: a data task can wait
    forever for a CPU when trainers (or others) hold them all."""
    ready, _ = rt.wait([ref], timeout=WAIT_WARNING_S)
    if not ready:
        import sys

        print(f"[trainkit] data: a {what} task has waited {WAIT_WARNING_S:.0f} s; if every CPU "
              f"is reserved (e.g. by training workers: {rt.available_resources()} free), "
              "data tasks cannot run: leave CPUs for them", file=sys.stderr, flush=True)
    return rt.get(ref)


def put_block(block: Any) -> Any:
    """``rt.put`` a block (one without columns keeps its rows: see ``seal_block``)."""
    return rt.put(seal_block(block))


def get_block(ref: Any) -> Any:
    """A block from the store, as it was put and without internal metadata."""
    return unseal_block(rt.get(ref))


class Executor:
    """Runs one pass over a plan; iterate it for the output blocks in order."""

    def __init__(self, plan: Plan, stats: ExecutionStats | None = None,
                 context: DataContext | None = None) -> None:
        if not rt.is_initialized():
            rt.init()
        self.plan = plan
        self.stats = stats or ExecutionStats()
        self.context = (context or DataContext.get_current()).copy()
        options = self.context.execution_options
        limits = options.resource_limits
        self.preserve_order = options.preserve_order
        total = rt.cluster_resources()  # one request for both limits
        self.cpus = max(1, int(total.get("CPU", 1)))
        if limits.object_store_memory is not None:
            self.budget = max(1, int(limits.object_store_memory))
        else:
            self.budget = int(total.get("object_store_memory", 0.0) * BUDGET_SHARE) or 512 * 2**20
        self.max_tasks = MAX_TASKS_PER_CPU * self.cpus
        self.cpu_limit = limits.cpu
        self.started = time.monotonic()
        self.progress = _Progress()

    def __iter__(self) -> Iterator[Item]:
        stream: Iterator[Any] = self._source()
        raw = bool(self.plan.source.read_tasks)  # read tasks not yet run
        pending_maps: list[MapOp] = []
        for op in self.plan.ops:
            if isinstance(op, MapOp) and op.pool is None:
                pending_maps.append(op)
                continue
            if pending_maps or raw:
                stream, pending_maps, raw = self._tasks(stream, pending_maps, raw), [], False
            if isinstance(op, MapOp):
                stream = self._pool(stream, op)
            else:
                stream = self._all_to_all(stream, op)
        if pending_maps or raw:
            stream = self._tasks(stream, pending_maps, raw)
        try:
            yield from stream
        finally:
            self.stats.total_s = time.monotonic() - self.started
            self.progress.close()

    # -- stages ----------------------------------------------------------------------------
    def _source(self) -> Iterator[Any]:
        """Read tasks (not yet run) or (ref, None) items of blocks already in the store."""
        src = self.plan.source
        if src.read_tasks:
            yield from src.read_tasks
        else:
            yield from ((ref, get_block(ref)) for ref in src.block_refs)

    def _tasks(self, upstream: Iterator[Any], ops: list[MapOp], reads: bool) -> Iterator[Item]:
        transforms = tuple(op.transform for op in ops)
        names = ([self.plan.source.name] if reads else []) + [op.name for op in ops]
        stats = OpStats("->".join(names))
        self.stats.ops.append(stats)
        num_cpus = max([op.num_cpus for op in ops] + [1.0])
        num_gpus = max([op.num_gpus for op in ops] + [0.0])
        task = rt.remote(_run_task).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                            name=stats.name)
        max_tasks = self.max_tasks
        for op in ops:
            if op.task_limit is not None:
                max_tasks = min(max_tasks, op.task_limit)
        if self.cpu_limit is not None and num_cpus > 0:
            max_tasks = min(max_tasks, max(1, int(self.cpu_limit / num_cpus)))
        pending: collections.deque[tuple[Any, float]] = collections.deque()
        avg = 0.0
        exhausted = False
        while True:
            limit = max_tasks if avg <= 0 else max(1, min(max_tasks, int(self.budget / avg)))
            while not exhausted and len(pending) < limit:
                try:
                    item = next(upstream)
                except StopIteration:
                    exhausted = True
                    break
                arg = item[0] if isinstance(item, tuple) else item
                pending.append((task.remote(arg, transforms), time.monotonic()))
                stats.tasks += 1
            if not pending:
                return
            if not self.preserve_order and len(pending) > 1:  # the first to finish goes first
                ready, _ = rt.wait([r for r, _ in pending], num_returns=1)
                at = next(i for i, (r, _) in enumerate(pending) if r == ready[0])
                pending.rotate(-at)
            ref, submitted = pending.popleft()
            block = _get_patiently(ref, stats.name)
            stats.add(block, submitted)
            avg = stats.bytes / stats.blocks
            self.progress.update(self.stats)
            yield ref, unseal_block(block)

    def _pool(self, upstream: Iterator[Item], op: MapOp) -> Iterator[Item]:
        spec = op.pool
        assert spec is not None
        stats = OpStats(op.name)
        self.stats.ops.append(stats)
        worker = rt.remote(_PoolWorker).options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
                                                max_concurrency=spec.max_concurrency)
        max_size = spec.max_size if spec.max_size is not None else \
            max(spec.min_size, self._fits(spec))
        per_actor = spec.max_tasks_in_flight or 2 * spec.max_concurrency
        actors = [worker.remote(op.udf_class, tuple(spec.constructor_args),
                                dict(spec.constructor_kwargs), op.transform)
                  for _ in range(spec.min_size)]
        load = [0] * len(actors)
        pending: collections.deque[tuple[Any, int, float]] = collections.deque()
        exhausted = False
        try:
            while True:
                while not exhausted and min(load) < per_actor:
                    if min(load) > 0 and len(actors) < max_size:  # all busy: grow
                        actors.append(worker.remote(op.udf_class, tuple(spec.constructor_args),
                                                    dict(spec.constructor_kwargs), op.transform))
                        load.append(0)
                    try:
                        ref, _ = next(upstream)
                    except StopIteration:
                        exhausted = True
                        break
                    i = load.index(min(load))
                    load[i] += 1
                    pending.append((actors[i].process.remote(ref), i, time.monotonic()))
                    stats.tasks += 1
                if not pending:
                    return
                out, i, submitted = pending.popleft()
                block = rt.get(out)
                load[i] -= 1
                stats.add(block, submitted)
                self.progress.update(self.stats)
                yield out, unseal_block(block)
        finally:
            for actor in actors:
                rt.kill(actor)

    def _fits(self, spec: ActorPoolSpec) -> int:
        """How many actors of ``spec`` the cluster holds (an unbounded pool's ceiling)."""
        total = rt.cluster_resources()
        counts = [self.cpus if self.cpu_limit is None else int(self.cpu_limit)]
        if spec.num_cpus > 0:
            counts.append(int(total.get("CPU", 1) / spec.num_cpus))
        if spec.num_gpus > 0:
            counts.append(int(total.get("GPU", 0) / spec.num_gpus))
        return max(1, min(counts))

    def _all_to_all(self, upstream: Iterator[Item], op: AllToAllOp) -> Iterator[Item]:
        stats = OpStats(op.name)
        self.stats.ops.append(stats)
        if op.kind == "limit":
            yield from self._limit(upstream, int(op.args["n"]), stats)
            return
        if op.kind == "random_sample":
            yield from self._sample(upstream, op, stats)
            return
        if op.kind == "union":
            yield from upstream
            for other in op.args["others"]:
                yield from Executor(other, self.stats, self.context)
            return
        started = time.monotonic()
        blocks = [block for _, block in upstream]
        table = concat_blocks(blocks) if blocks else None
        n = max(1, len(blocks))
        del blocks
        if table is None:
            return
        parts = _whole_table(table, op, n)
        for part in parts:
            stats.blocks += 1
            stats.rows += part.num_rows
            stats.bytes += block_bytes(part)
            part = compact_block(part)
            yield put_block(part), part
        stats.wall_s = time.monotonic() - started

    @staticmethod
    def _sample(upstream: Iterator[Item], op: AllToAllOp, stats: OpStats) -> Iterator[Item]:
        import pyarrow as pa  # type: ignore[import-untyped]

        from trainkit.data._aggregate import sample_mask

        for i, (_, block) in enumerate(upstream):
            mask = sample_mask(block_rows(block), float(op.args["fraction"]), op.args["seed"], i)
            part = compact_block(block.filter(pa.array(mask, type=pa.bool_())))
            stats.blocks += 1
            stats.rows += part.num_rows
            yield put_block(part), part

    @staticmethod
    def _limit(upstream: Iterator[Item], n: int, stats: OpStats) -> Iterator[Item]:
        left = n
        for ref, block in upstream:
            if left <= 0:
                break
            rows = block_rows(block)
            if rows > left:
                block = compact_block(slice_block(block, 0, left))
                ref = put_block(block)
                rows = left
            left -= rows
            stats.blocks += 1
            stats.rows += rows
            yield ref, block
        if hasattr(upstream, "close"):
            upstream.close()


class _Progress:
    """One line per execution on an interactive terminal (a display updated in place in a
    notebook), once an execution has run for a few seconds: each operator's blocks and rows
    so far. Silent elsewhere (logs, CI) and for short executions."""

    DELAY_S = 3.0
    PERIOD_S = 0.5

    def __init__(self) -> None:
        import sys

        self.stream = sys.stderr
        self.notebook: Any = None
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, stats: ExecutionStats) -> None:
        now = time.monotonic()
        if now - self.started < self.DELAY_S or now - self.last < self.PERIOD_S:
            return
        if not self.enabled:
            if self.shown is False and self.notebook is None and "IPython" in sys.modules:
                self.notebook = notebook_handle()  # in a notebook: a display updated in place
                self.enabled = self.notebook is not None
            if not self.enabled:
                return
        self.last = now
        parts = [f"{s.name}: {s.blocks} blocks, {s.rows} rows" for s in stats.ops]
        if self.notebook is not None:
            self.notebook.update(Text("[trainkit data] " + "\n  ".join(parts)))
            return
        self.stream.write("\r\x1b[K[trainkit data] " + " | ".join(parts)[:200])
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _whole_table(table: Any, op: AllToAllOp, num_blocks: int) -> list[Any]:
    """The output blocks of an all-to-all operator over its whole input ``table``."""
    import numpy as np

    from trainkit.data import _aggregate

    kind, args = op.kind, op.args
    if kind == "sort":
        table = _aggregate.sort_table(table, args["keys"], args["descending"], op.name)
    elif kind == "aggregate":
        return [_aggregate.aggregate(table, args["keys"], args["aggs"], op.name)]
    elif kind == "group_blocks":  # whole groups per block, for map_groups
        table = _aggregate.sort_table(table, args["keys"], [False] * len(args["keys"]), op.name)
        return _aggregate.split_groups(table, args["keys"], num_blocks)
    elif kind in ("random_shuffle", "repartition"):
        if kind == "repartition":
            num_blocks = int(args["num_blocks"])
        if kind == "random_shuffle" or args.get("shuffle"):
            order = np.random.default_rng(args.get("seed")).permutation(table.num_rows)
            table = table.take(order)
    else:
        raise ValueError(f"{op.name}: unknown operator kind {kind!r}")
    size = max(1, -(-table.num_rows // num_blocks))
    return [slice_block(table, start, min(size, table.num_rows - start))
            for start in range(0, max(table.num_rows, 1), size)]
