"""The pure core of the streaming executor: what to launch next, given what is in flight.

Nothing here calls the runtime. ``_executor`` builds a :class:`Stage` per fused task stage or
actor pool, feeds it inputs and completions, and asks :func:`next_launch` which stage may start
a task; this module decides.

* One :class:`Budget` of bytes for a whole execution, shared by every stage: a block counts
  from the launch of the task that makes it (at the stage's estimate) until the stage after it
  has finished with it (or the consumer has taken it). A stage launches only while the bytes in
  flight plus its estimate, plus one block's worth for every stage after it, fit the budget; so
  upstream stages cannot fill the budget with blocks the downstream ones have no room to turn
  over. When nothing runs at all, the most downstream stage with an input launches anyway, so
  an execution always makes progress (a single block larger than the budget goes through alone).
* :func:`size_pools`: actor pools may never hold the CPUs (or GPUs) the execution's tasks need:
  a pool is shrunk, with a warning, so that one task of every task stage can still run, or the
  execution fails at its start naming the stage and the resources (``InfeasibleError``);
  :func:`check_tasks` does the same for a task that no cluster node could ever run.
* :class:`StallDetector`: no task of the execution finished for ``stall_timeout_s``: a warning
  naming the stuck operator; for twice that: an error.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import InfeasibleError


@dataclass(frozen=True, slots=True)
class ClusterResources:
    """What an execution may use: CPUs, GPUs and object store bytes (the cluster's, or a fake
    cluster's in tests)."""

    cpus: float
    gpus: float = 0.0
    store_bytes: float = 0.0

    @staticmethod
    def from_dict(total: dict[str, float]) -> ClusterResources:
        """From ``runtime.cluster_resources()``."""
        return ClusterResources(float(total.get("CPU", 1.0)), float(total.get("GPU", 0.0)),
                                float(total.get("object_store_memory", 0.0)))


class Budget:
    """Bytes in flight of one execution, and the most there ever were."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.in_flight = 0
        self.peak = 0

    def add(self, nbytes: int) -> None:
        self.in_flight += nbytes
        self.peak = max(self.peak, self.in_flight)

    def remove(self, nbytes: int) -> None:
        self.in_flight -= nbytes


@dataclass(slots=True)
class Task:
    """One launched task (or actor call) of a stage, in launch order."""

    ref: Any
    input: Any  # what the stage was given (kept until the task is done)
    input_bytes: int  # counted in the budget while the task runs
    charged: int  # bytes counted in the budget for the output
    submitted: float
    worker: int = -1  # the actor of a pool
    done: bool = False
    output: Any = None  # (ref, block) once done
    output_bytes: int = 0


@dataclass(eq=False)
class Stage:
    """A fused task stage or an actor pool, as the core sees it."""

    name: str
    max_running: int  # the most tasks at once (for a pool: actors x calls per actor)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    is_pool: bool = False
    # (input, bytes it holds in the budget, its size as a hint for the first estimate)
    inputs: collections.deque[tuple[Any, int, int]] = field(default_factory=collections.deque)
    running: collections.deque[Task] = field(default_factory=collections.deque)
    out_blocks: int = 0
    out_bytes: int = 0

    def estimate(self, hint: int) -> int:
        """Bytes this stage's next output is expected to take: the mean so far, else the
        input's size (a map keeps about its input's size; a read, the size it announced)."""
        if self.out_blocks:
            return -(-self.out_bytes // self.out_blocks)
        return hint

    def launch(self, ref: Any, item: Any, input_bytes: int, hint: int, budget: Budget,
               now: float, worker: int = -1) -> Task:
        """Record a launched task; its output is charged to the budget at the estimate."""
        charged = self.estimate(hint)
        budget.add(charged)
        task = Task(ref, item, input_bytes, charged, now, worker)
        self.running.append(task)
        return task

    def finish(self, task: Task, output: Any, nbytes: int, budget: Budget) -> None:
        """Task done: the estimate is replaced by the real size; its input is let go."""
        budget.add(nbytes - task.charged)
        budget.remove(task.input_bytes)
        task.done, task.output, task.output_bytes = True, output, nbytes
        task.input = None
        self.out_blocks += 1
        self.out_bytes += nbytes

    def pop_ready(self, preserve_order: bool) -> list[Task]:
        """Finished tasks whose outputs may go on (in launch order when ``preserve_order``)."""
        ready: list[Task] = []
        if preserve_order:
            while self.running and self.running[0].done:
                ready.append(self.running.popleft())
        else:
            ready = [t for t in self.running if t.done]
            for t in ready:
                self.running.remove(t)
        return ready

    def working(self) -> int:
        """Tasks launched and not yet finished."""
        return sum(not t.done for t in self.running)


def next_launch(stages: list[Stage], budget: Budget, source_open: bool,
                source_estimate: int = 0) -> int | None:
    """The stage that may launch a task now (the most downstream first), or None.

    A stage needs an input (the first stage: one queued, or more to come from the source while
    ``source_open``), a free slot, and room in the budget for its estimate plus one block's
    worth for every stage after it. When no task of any stage runs, the most downstream stage
    with an input may launch regardless of the budget: the execution never stops for good.
    """
    idle = all(s.working() == 0 for s in stages)
    # Each stage's next output, expected: a stage that has made none yet keeps the size of
    # what comes into it.
    expected: list[int] = []
    for i, stage in enumerate(stages):
        hint = stage.inputs[0][2] if stage.inputs else \
            source_estimate if i == 0 else expected[-1]
        expected.append(stage.estimate(hint))
    reserve = 0
    for i in range(len(stages) - 1, -1, -1):
        stage = stages[i]
        has_input = bool(stage.inputs) or (i == 0 and source_open)
        if has_input and len(stage.running) < stage.max_running:
            unknown = expected[i] <= 0 and not stage.out_blocks  # one task, until it shows
            if idle or (not (unknown and stage.running) and
                        budget.in_flight + expected[i] + reserve <= budget.limit):
                return i
        reserve += expected[i]
    return None


@dataclass(frozen=True, slots=True)
class PoolNeed:
    """What one actor pool of a stage asks for."""

    name: str
    min_size: int
    max_size: int | None  # None: as many as fit
    num_cpus: float
    num_gpus: float


@dataclass(slots=True)
class PoolPlan:
    """The sizes :func:`size_pools` decided, and what the pools may still grow into."""

    sizes: list[tuple[int, int]]  # (start, most) per pool
    spare_cpus: float
    spare_gpus: float
    warnings: list[str]


def _fmt(x: float) -> str:
    return f"{x:g}"


def size_pools(pools: list[PoolNeed], tasks_cpus: float, tasks_gpus: float,
               resources: ClusterResources, tasks_name: str = "the execution") -> PoolPlan:
    """Sizes for the actor pools of one execution that leave ``tasks_cpus``/``tasks_gpus``
    (one task of the most demanding task stage) free, so every stage can run.

    A pool that cannot start ``min_size`` actors is shrunk (with a warning); one that cannot
    start even one raises ``InfeasibleError`` naming the stage and the resources.
    """
    cpus, gpus = resources.cpus, resources.gpus
    free_cpu, free_gpu = cpus - tasks_cpus, gpus - tasks_gpus
    reserved = (f"the tasks of {tasks_name} need {_fmt(tasks_cpus)} CPU" if tasks_cpus > 0
                else "")
    if tasks_gpus > 0:
        reserved += f" and {_fmt(tasks_gpus)} GPU"
    for pool in pools:  # one actor each, first
        free_cpu -= pool.num_cpus
        free_gpu -= pool.num_gpus
        if free_cpu < -1e-9 or free_gpu < -1e-9:
            asks = f"{_fmt(pool.num_cpus)} CPU" + (f" and {_fmt(pool.num_gpus)} GPU"
                                                  if pool.num_gpus else "")
            raise InfeasibleError(
                f"{pool.name}: an actor asks for {asks}, but the cluster has "
                f"{_fmt(cpus)} CPU and {_fmt(gpus)} GPU" + (f", {reserved}" if reserved else "")
                + (" and the pools before it hold the rest" if pool is not pools[0] else "")
                + ": no actor of this stage could ever start; ask for less (num_cpus=, "
                "num_gpus=) or start the runtime with more")
    sizes = [1] * len(pools)
    warnings: list[str] = []
    for i, pool in enumerate(pools):  # then up to min_size each
        while sizes[i] < pool.min_size and _fits(pool, free_cpu, free_gpu):
            sizes[i] += 1
            free_cpu -= pool.num_cpus
            free_gpu -= pool.num_gpus
        if sizes[i] < pool.min_size:
            warnings.append(
                f"{pool.name}: {pool.min_size} actors of {_fmt(pool.num_cpus)} CPU"
                + (f" and {_fmt(pool.num_gpus)} GPU" if pool.num_gpus else "")
                + f" do not fit in the cluster's {_fmt(cpus)} CPU and {_fmt(gpus)} GPU"
                + (f" ({reserved})" if reserved else "")
                + f"; running {sizes[i]} so that every stage can make progress")
    # The most: max_size (unbounded: the cluster's CPU count); growth past the start also
    # needs spare resources (see PoolPlan), so pools never take what the tasks need.
    plan = [(n, max(n, pool.max_size if pool.max_size is not None else math.floor(cpus)))
            for pool, n in zip(pools, sizes, strict=True)]
    return PoolPlan(plan, free_cpu, free_gpu, warnings)


def check_tasks(tasks: list[tuple[str, float, float]], resources: ClusterResources) -> None:
    """Fail at the start if one task of a stage (name, CPUs, GPUs) asks for more than the
    cluster has: it could never run."""
    for name, cpus, gpus in tasks:
        if cpus > resources.cpus + 1e-9 or gpus > resources.gpus + 1e-9:
            raise InfeasibleError(
                f"{name}: a task asks for {_fmt(cpus)} CPU and {_fmt(gpus)} GPU, but the "
                f"cluster has {_fmt(resources.cpus)} CPU and {_fmt(resources.gpus)} GPU: no "
                "task of this stage could ever run; ask for less (num_cpus=, num_gpus=) or "
                "start the runtime with more")


def _fits(pool: PoolNeed, free_cpu: float, free_gpu: float) -> bool:
    return pool.num_cpus <= free_cpu + 1e-9 and pool.num_gpus <= free_gpu + 1e-9


class StallDetector:
    """Says when an execution has made no progress (no task finished) for ``timeout_s``: a
    warning line naming the stuck operator, then, after as long again, an error.

    Args:
        timeout_s: seconds without progress before the warning (None: never).
        clock: seconds, monotonic (a fake clock in tests).
        warn: where the warning line goes.
    """

    def __init__(self, timeout_s: float | None,
                 clock: Callable[[], float] = time.monotonic,
                 warn: Callable[[str], None] = print) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.warn = warn
        self.last = clock()
        self.warned = False

    def progress(self) -> None:
        """Something finished (or the consumer took a block and came back)."""
        self.last = self.clock()
        self.warned = False

    def wait_s(self, cap: float) -> float:
        """How long the executor may wait before the next check (at most ``cap``)."""
        if self.timeout_s is None:
            return cap
        deadline = self.last + (2 if self.warned else 1) * self.timeout_s
        return max(0.0, min(cap, deadline - self.clock()))

    def check(self, describe: Callable[[], str]) -> None:
        """Warn, or raise ``GetTimeoutError``, if the execution has been stuck too long;
        ``describe()`` says which operator is stuck and what it waits for."""
        if self.timeout_s is None:
            return
        idle = self.clock() - self.last
        if idle >= 2 * self.timeout_s:
            raise GetTimeoutError(
                f"data: no progress for {idle:.0f} s: {describe()}; giving up (raise "
                "DataContext.get_current().execution_options.stall_timeout_s if this "
                "stage is just slow, or None to wait forever)")
        if idle >= self.timeout_s and not self.warned:
            self.warned = True
            self.warn(f"[trainkit] data: no progress for {idle:.0f} s: {describe()}; it fails "
                      f"after {2 * self.timeout_s:.0f} s without progress")
