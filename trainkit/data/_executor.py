"""The streaming executor: blocks flow through the plan's operators as object refs.

Stateless maps next to each other are fused into one task per block (a read task fuses with
the maps after it). Callable classes run on an actor pool. Each stage keeps a bounded number
of blocks in flight, sized from a byte budget (a share of the object store), so upstream
stages wait while downstream ones, or the consumer, catch up: a dataset larger than the
object store streams through. Outputs come out in input order.
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
from trainkit.data._block import slice_block
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
        block = item
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
        return _with_cpu(self.transform(block, self.instance), time.process_time() - cpu)


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


class Executor:
    """Runs one pass over a plan; iterate it for the output blocks in order."""

    def __init__(self, plan: Plan, stats: ExecutionStats | None = None) -> None:
        if not rt.is_initialized():
            rt.init()
        self.plan = plan
        self.stats = stats or ExecutionStats()
        total = rt.cluster_resources()  # one request for both limits
        self.budget = int(total.get("object_store_memory", 0.0) * BUDGET_SHARE) or 512 * 2**20
        self.max_tasks = MAX_TASKS_PER_CPU * max(1, int(total.get("CPU", 1)))
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
            yield from ((ref, rt.get(ref)) for ref in src.block_refs)

    def _tasks(self, upstream: Iterator[Any], ops: list[MapOp], reads: bool) -> Iterator[Item]:
        transforms = tuple(op.transform for op in ops)
        names = ([self.plan.source.name] if reads else []) + [op.name for op in ops]
        stats = OpStats("->".join(names))
        self.stats.ops.append(stats)
        num_cpus = max([op.num_cpus for op in ops] + [1.0])
        num_gpus = max([op.num_gpus for op in ops] + [0.0])
        task = rt.remote(_run_task).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                            name=stats.name)
        pending: collections.deque[tuple[Any, float]] = collections.deque()
        avg = 0.0
        exhausted = False
        while True:
            limit = self.max_tasks if avg <= 0 else \
                max(1, min(self.max_tasks, int(self.budget / avg)))
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
            ref, submitted = pending.popleft()
            block = _get_patiently(ref, stats.name)
            stats.add(block, submitted)
            avg = stats.bytes / stats.blocks
            self.progress.update(self.stats)
            yield ref, block

    def _pool(self, upstream: Iterator[Item], op: MapOp) -> Iterator[Item]:
        spec = op.pool
        assert spec is not None
        stats = OpStats(op.name)
        self.stats.ops.append(stats)
        worker = rt.remote(_PoolWorker).options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus)
        actors = [worker.remote(op.udf_class, tuple(spec.constructor_args),
                                dict(spec.constructor_kwargs), op.transform)
                  for _ in range(spec.min_size)]
        load = [0] * len(actors)
        pending: collections.deque[tuple[Any, int, float]] = collections.deque()
        exhausted = False
        try:
            while True:
                while not exhausted and min(load) < 2:
                    if min(load) > 0 and len(actors) < spec.max_size:  # all busy: grow
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
                yield out, block
        finally:
            for actor in actors:
                rt.kill(actor)

    def _all_to_all(self, upstream: Iterator[Item], op: AllToAllOp) -> Iterator[Item]:
        stats = OpStats(op.name)
        self.stats.ops.append(stats)
        if op.kind == "limit":
            yield from self._limit(upstream, int(op.args["n"]), stats)
            return
        if op.kind == "union":
            yield from upstream
            for other in op.args["others"]:
                yield from Executor(other, self.stats)
            return
        started = time.monotonic()
        blocks = [block for _, block in upstream]
        table = concat_blocks(blocks) if blocks else None
        if op.kind == "random_shuffle" and table is not None:
            import numpy as np

            order = np.random.default_rng(op.args.get("seed")).permutation(table.num_rows)
            table = table.take(order)
            n = max(1, len(blocks))
        else:
            n = int(op.args["num_blocks"])
        del blocks
        if table is None:
            return
        size = -(-table.num_rows // n)
        for start in range(0, max(table.num_rows, 1), max(size, 1)):
            part = slice_block(table, start, min(size, table.num_rows - start))
            stats.blocks += 1
            stats.rows += part.num_rows
            stats.bytes += block_bytes(part)
            part = compact_block(part)
            yield rt.put(part), part
        stats.wall_s = time.monotonic() - started

    @staticmethod
    def _limit(upstream: Iterator[Item], n: int, stats: OpStats) -> Iterator[Item]:
        left = n
        for ref, block in upstream:
            if left <= 0:
                break
            rows = block_rows(block)
            if rows > left:
                block = compact_block(slice_block(block, 0, left))
                ref = rt.put(block)
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


def pool_spec(concurrency: Any, num_cpus: float, num_gpus: float, args: Any,
              kwargs: Any) -> ActorPoolSpec:
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        lo = hi = concurrency
    elif isinstance(concurrency, tuple) and len(concurrency) == 2 and \
            all(isinstance(c, int) and c >= 1 for c in concurrency) and \
            concurrency[0] <= concurrency[1]:
        lo, hi = concurrency
    else:
        raise ValueError(f"concurrency is {concurrency!r}; for a callable class give an int >= 1 "
                         "or a (min, max) tuple of them")
    return ActorPoolSpec(lo, hi, num_cpus, num_gpus, tuple(args or ()), dict(kwargs or {}))
