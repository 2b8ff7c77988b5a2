"""The streaming executor: blocks flow through the plan's operators as object refs.

Stateless maps next to each other are fused into one task per block (a read task fuses with
the maps after it). Callable classes run on an actor pool. The stages between two all-to-all
operators run side by side in one loop (``Executor._segment``), the I/O shell around the pure
core in ``_streaming``: one byte budget for the whole execution (a share of the object store,
or ``DataContext``'s ``resource_limits.object_store_memory``) bounds the blocks in flight of
every stage together, so upstream stages wait while downstream ones, or the consumer, catch
up: a dataset larger than the object store streams through. Actor pools leave the CPUs the
tasks need; an execution that makes no progress for ``execution_options.stall_timeout_s``
says which operator is stuck, then fails. Outputs come out in input order unless
``execution_options.preserve_order`` is off.

The executor reaches the runtime only through ``Runtime`` and is given the cluster's
resources, so tests run it on a fake runtime.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
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
from trainkit.data._plan import AllToAllOp
from trainkit.data._plan import MapOp
from trainkit.data._plan import Plan
from trainkit.data._streaming import Budget
from trainkit.data._streaming import ClusterResources
from trainkit.data._streaming import PoolNeed
from trainkit.data._streaming import PoolPlan
from trainkit.data._streaming import Stage
from trainkit.data._streaming import StallDetector
from trainkit.data._streaming import check_tasks
from trainkit.data._streaming import next_launch
from trainkit.data._streaming import size_pools

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
    budget_bytes: int = 0  # the execution's byte budget
    peak_bytes_in_flight: int = 0  # the most bytes of blocks in flight, by its accounting

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


def put_block(block: Any) -> Any:
    """``rt.put`` a block (one without columns keeps its rows: see ``seal_block``)."""
    return rt.put(seal_block(block))


def get_block(ref: Any) -> Any:
    """A block from the store, as it was put and without internal metadata."""
    return unseal_block(rt.get(ref))


class Runtime:
    """The executor's calls into the runtime; tests give the executor a fake one (same
    methods, tasks run in-process) to check fusion, backpressure and pool sizing."""

    def __init__(self) -> None:
        if not rt.is_initialized():
            rt.init()
        # Each stage's fused transforms, put in the store once per execution (id -> (the
        # tuple, its ref)): pickling them (the user's functions, by value) with every task
        # cost the driver more than the task itself at small blocks. A ref argument reaches
        # the task as the value, deserialized afresh for each task, as before.
        self._shared: dict[int, tuple[tuple[Any, ...], Any]] = {}
        self._fns: dict[tuple[float, float, str], Any] = {}

    def resources(self) -> ClusterResources:
        return ClusterResources.from_dict(rt.cluster_resources())

    def available(self) -> dict[str, float]:
        return rt.available_resources()

    def task(self, item: Any, transforms: tuple[Any, ...], num_cpus: float, num_gpus: float,
             name: str) -> Any:
        key = (num_cpus, num_gpus, name)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = rt.remote(_run_task).options(
                num_cpus=num_cpus, num_gpus=num_gpus, name=name)
        shared = self._shared.get(id(transforms))
        if shared is None or shared[0] is not transforms:
            shared = self._shared[id(transforms)] = (transforms, rt.put(transforms))
        return fn.remote(item, shared[1])

    def actor(self, op: MapOp) -> Any:
        spec = op.pool
        assert spec is not None
        worker = rt.remote(_PoolWorker).options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus,
                                                max_concurrency=spec.max_concurrency)
        return worker.remote(op.udf_class, tuple(spec.constructor_args),
                             dict(spec.constructor_kwargs), op.transform)

    def call(self, actor: Any, ref: Any) -> Any:
        return actor.process.remote(ref)

    def kill(self, actor: Any) -> None:
        rt.kill(actor)

    def wait(self, refs: list[Any], timeout: float | None) -> list[Any]:
        """The refs of ``refs`` that are done: at least one, unless ``timeout`` passes."""
        ready, rest = rt.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:  # take every other one that is done too
            more, _ = rt.wait(rest, num_returns=len(rest), timeout=0)
            ready = [*ready, *more]
        return list(ready)

    def get(self, ref: Any) -> Any:
        return rt.get(ref)

    def put(self, block: Any) -> Any:
        return rt.put(seal_block(block))


@dataclass(eq=False)
class _Pool:
    """The actors of one pool stage, and the calls queued at each."""

    op: MapOp
    start: int
    most: int
    per_actor: int
    actors: list[Any] = field(default_factory=list)
    load: list[int] = field(default_factory=list)


class Executor:
    """Runs one pass over a plan; iterate it for the output blocks in order.

    Args:
        plan: what to run.
        stats: where the execution's statistics go.
        context: the settings (default: ``DataContext.get_current()``, copied).
        runtime: the runtime to run on (tests: a fake one).
        resources: the cluster's CPUs, GPUs and store bytes (default: the runtime's).
        budget: a budget to share (a union's other datasets run inside their parent's).
    """

    def __init__(self, plan: Plan, stats: ExecutionStats | None = None,
                 context: DataContext | None = None, *, runtime: Runtime | None = None,
                 resources: ClusterResources | None = None, budget: Budget | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.stats = stats or ExecutionStats()
        self.context = (context or DataContext.get_current()).copy()
        self.runtime = runtime or Runtime()
        self.resources = resources or self.runtime.resources()  # one request for all limits
        self.clock = clock
        options = self.context.execution_options
        limits = options.resource_limits
        self.preserve_order = options.preserve_order
        self.stall_timeout_s = options.stall_timeout_s
        self.cpus = max(1, int(self.resources.cpus))
        self.cpu_limit = limits.cpu
        if budget is not None:
            self.budget = budget
        elif limits.object_store_memory is not None:
            self.budget = Budget(int(limits.object_store_memory))
        else:
            self.budget = Budget(int(self.resources.store_bytes * BUDGET_SHARE) or 512 * 2**20)
        self.nested = budget is not None
        self.stats.budget_bytes = self.budget.limit
        self.max_tasks = MAX_TASKS_PER_CPU * self.cpus
        self.started = time.monotonic()
        self.progress = _Progress()

    def __iter__(self) -> Iterator[Item]:
        stream: Iterator[Any] = self._source()
        raw = bool(self.plan.source.read_tasks)  # read tasks not yet run
        segment: list[list[MapOp] | MapOp] = []  # stages that stream side by side
        pending_maps: list[MapOp] = []
        for op in self.plan.ops:
            if isinstance(op, MapOp) and op.pool is None:
                pending_maps.append(op)
                continue
            if pending_maps or raw:
                segment.append(pending_maps)
                pending_maps = []
            if isinstance(op, MapOp):
                segment.append(op)
            else:
                if segment:
                    stream, segment = self._segment(stream, segment, raw), []
                raw = False
                stream = self._all_to_all(stream, op)
        if pending_maps or (raw and not segment):
            segment.append(pending_maps)
        if segment:
            stream = self._segment(stream, segment, raw)
        try:
            yield from stream
        finally:
            if not self.nested:
                self.stats.total_s = time.monotonic() - self.started
                self.progress.close()

    # -- stages ----------------------------------------------------------------------------
    def _source(self) -> Iterator[Any]:
        """Read tasks (not yet run) or (ref, block) items of blocks already in the store."""
        src = self.plan.source
        if src.read_tasks:
            yield from src.read_tasks
        else:
            yield from ((ref, unseal_block(self.runtime.get(ref))) for ref in src.block_refs)

    def _stage(self, spec: list[MapOp] | MapOp, first: bool, raw: bool) -> Stage:
        """The core's view of a fused task stage (a list of maps) or a pool stage."""
        if isinstance(spec, MapOp):
            assert spec.pool is not None
            return Stage(spec.name, 0, spec.pool.num_cpus, spec.pool.num_gpus, is_pool=True)
        reads = first and raw
        name = "->".join(([self.plan.source.name] if reads else []) + [op.name for op in spec])
        num_cpus = max([op.num_cpus for op in spec] + [1.0])
        num_gpus = max([op.num_gpus for op in spec] + [0.0])
        limit = self.max_tasks
        for op in spec:
            if op.task_limit is not None:
                limit = min(limit, op.task_limit)
        if self.cpu_limit is not None and num_cpus > 0:
            limit = min(limit, max(1, int(self.cpu_limit / num_cpus)))
        return Stage(name, limit, num_cpus, num_gpus)

    def _segment(self, upstream: Iterator[Any], specs: list[list[MapOp] | MapOp],
                 raw: bool) -> Iterator[Item]:
        """Stream the blocks of ``upstream`` through task stages and actor pools side by
        side, all under the execution's one byte budget."""
        stages = [self._stage(spec, i == 0, raw) for i, spec in enumerate(specs)]
        op_stats = [OpStats(stage.name) for stage in stages]
        self.stats.ops.extend(op_stats)
        transforms = [tuple(op.transform for op in spec) if isinstance(spec, list) else ()
                      for spec in specs]
        pools = self._size_pools(specs, stages)
        spare = [pools.spare_cpus, pools.spare_gpus]
        pool_of: dict[int, _Pool] = {}
        stall = StallDetector(self.stall_timeout_s, self.clock, self._warn)
        out: collections.deque[tuple[Any, Any, int]] = collections.deque()
        source_open = True
        budget = self.budget
        try:
            for (i, spec), (lo, hi) in zip(((i, s) for i, s in enumerate(specs)
                                            if isinstance(s, MapOp)), pools.sizes, strict=True):
                assert isinstance(spec, MapOp) and spec.pool is not None
                per_actor = spec.pool.max_tasks_in_flight or 2 * spec.pool.max_concurrency
                pool = pool_of[i] = _Pool(spec, lo, hi, per_actor)
                for _ in range(lo):
                    pool.actors.append(self.runtime.actor(spec))
                    pool.load.append(0)
            while True:
                # Hand on what is done, in order.
                for i, stage in enumerate(stages):
                    for task in stage.pop_ready(self.preserve_order):
                        ref, block = task.output
                        if i + 1 < len(stages):
                            stages[i + 1].inputs.append(((ref, None), task.output_bytes,
                                                         task.output_bytes))
                        else:
                            out.append((ref, block, task.output_bytes))
                # Launch what the budget and the slots allow, the most downstream first.
                while True:
                    if source_open and not stages[0].inputs:
                        try:
                            item = next(upstream)
                        except StopIteration:
                            source_open = False
                        else:
                            hint = (item.size_bytes or 0) if isinstance(item, ReadTask) else \
                                block_bytes(item[1]) if item[1] is not None else 0
                            stages[0].inputs.append((item, 0, hint))
                            if not raw:  # an operator upstream made progress too
                                stall.progress()
                    for i, pool in pool_of.items():
                        grow = len(pool.actors) < pool.most and \
                            stages[i].num_cpus <= spare[0] + 1e-9 and \
                            stages[i].num_gpus <= spare[1] + 1e-9
                        stages[i].max_running = (len(pool.actors) + grow) * pool.per_actor
                    at = next_launch(stages, budget, False)
                    if at is None:
                        break
                    self._launch(stages[at], pool_of.get(at), transforms[at], spare)
                    op_stats[at].tasks += 1
                if out:
                    ref, block, nbytes = out.popleft()
                    budget.remove(nbytes)
                    yield ref, block
                    stall.progress()  # the consumer's time is not the pipeline's
                    continue
                working = [t for stage in stages for t in stage.running if not t.done]
                if not working:
                    if not source_open and not any(stage.inputs for stage in stages):
                        return
                    continue
                ready = self.runtime.wait([t.ref for t in working], stall.wait_s(60.0))
                if not ready:
                    stall.check(lambda: self._describe(stages, pool_of))
                    continue
                stall.progress()
                done = set(ready)
                for i, stage in enumerate(stages):
                    for task in stage.running:
                        if task.done or task.ref not in done:
                            continue
                        block = self.runtime.get(task.ref)
                        op_stats[i].add(block, task.submitted)
                        if task.worker >= 0:
                            pool_of[i].load[task.worker] -= 1
                        keep = unseal_block(block) if i + 1 == len(stages) else None
                        stage.finish(task, (task.ref, keep), block_bytes(block), budget)
                        del block
                self.stats.peak_bytes_in_flight = max(self.stats.peak_bytes_in_flight,
                                                      budget.peak)
                self.progress.update(self.stats)
        finally:
            self.stats.peak_bytes_in_flight = max(self.stats.peak_bytes_in_flight, budget.peak)
            for stage in stages:  # what was in flight is let go
                for task in stage.running:
                    budget.remove(task.output_bytes if task.done else
                                  task.charged + task.input_bytes)
                budget.remove(sum(held for _, held, _ in stage.inputs))
            budget.remove(sum(nbytes for _, _, nbytes in out))
            for pool in pool_of.values():
                for actor in pool.actors:
                    self.runtime.kill(actor)

    def _launch(self, stage: Stage, pool: _Pool | None, transforms: tuple[Any, ...],
                spare: list[float]) -> None:
        item, held, hint = stage.inputs.popleft()
        now = self.clock()
        if pool is None:
            arg = item[0] if isinstance(item, tuple) else item
            ref = self.runtime.task(arg, transforms, stage.num_cpus, stage.num_gpus, stage.name)
            stage.launch(ref, item, held, hint, self.budget, now)
            return
        if not pool.actors or (min(pool.load) > 0 and len(pool.actors) < pool.most and
                               stage.num_cpus <= spare[0] + 1e-9 and
                               stage.num_gpus <= spare[1] + 1e-9):  # all busy: grow
            pool.actors.append(self.runtime.actor(pool.op))
            pool.load.append(0)
            spare[0] -= stage.num_cpus
            spare[1] -= stage.num_gpus
        w = pool.load.index(min(pool.load))
        pool.load[w] += 1
        ref = self.runtime.call(pool.actors[w], item[0])
        stage.launch(ref, item, held, hint, self.budget, now, worker=w)

    def _size_pools(self, specs: list[list[MapOp] | MapOp], stages: list[Stage]) -> PoolPlan:
        """Pool sizes that leave one task's CPUs (and GPUs) for the task stages."""
        tasks = [stage for stage in stages if not stage.is_pool]
        needs = [PoolNeed(spec.name, spec.pool.min_size, spec.pool.max_size,
                          spec.pool.num_cpus, spec.pool.num_gpus)
                 for spec in specs if isinstance(spec, MapOp) and spec.pool is not None]
        res = self.resources
        check_tasks([(t.name, t.num_cpus, t.num_gpus) for t in tasks], res)
        if self.cpu_limit is not None:
            res = ClusterResources(min(res.cpus, self.cpu_limit), res.gpus, res.store_bytes)
        plan = size_pools(needs, max([t.num_cpus for t in tasks] + [0.0]),
                          max([t.num_gpus for t in tasks] + [0.0]), res,
                          " and ".join(t.name for t in tasks) or "the execution")
        for line in plan.warnings:
            self._warn(f"[trainkit] data: {line}")
        return plan

    def _describe(self, stages: list[Stage], pools: dict[int, _Pool]) -> str:
        """Which operator is stuck (its oldest unfinished task is the oldest), and what is
        free."""
        now = self.clock()
        oldest = min(((t.submitted, i) for i, s in enumerate(stages) for t in s.running
                      if not t.done), default=(now, 0))
        stage = stages[oldest[1]]
        what = (f"its actor pool of {len(pools[oldest[1]].actors)}"
                if oldest[1] in pools else "its tasks")
        try:
            free = self.runtime.available()
        except Exception:  # the description must not hide the stall
            free = {}
        return (f"operator {stage.name} ({what}) has {stage.working()} unfinished, the oldest "
                f"for {now - oldest[0]:.0f} s; the cluster has {self.resources.cpus:g} CPU "
                f"and {self.resources.gpus:g} GPU, free now: {free} (CPUs held by others, e.g. "
                "training workers, cannot run data tasks)")

    @staticmethod
    def _warn(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _put(self, block: Any) -> Any:
        return self.runtime.put(block)

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
                yield from Executor(other, self.stats, self.context, runtime=self.runtime,
                                    resources=self.resources, budget=self.budget)
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
            yield self._put(part), part
        stats.wall_s = time.monotonic() - started

    def _sample(self, upstream: Iterator[Item], op: AllToAllOp,
                stats: OpStats) -> Iterator[Item]:
        import pyarrow as pa  # type: ignore[import-untyped]

        from trainkit.data._aggregate import sample_mask

        for i, (_, block) in enumerate(upstream):
            mask = sample_mask(block_rows(block), float(op.args["fraction"]), op.args["seed"], i)
            part = compact_block(block.filter(pa.array(mask, type=pa.bool_())))
            stats.blocks += 1
            stats.rows += part.num_rows
            yield self._put(part), part

    def _limit(self, upstream: Iterator[Item], n: int, stats: OpStats) -> Iterator[Item]:
        left = n
        for ref, block in upstream:
            if left <= 0:
                break
            rows = block_rows(block)
            if rows > left:
                block = compact_block(slice_block(block, 0, left))
                ref = self._put(block)
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
