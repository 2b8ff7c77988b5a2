"""The streaming executor's core (issue 16): one byte budget shared by every stage, actor pools
that leave the CPUs their tasks need, and a stall detector. Unit tests run the real executor on
a fake runtime (tasks run in-process when waited on); end-to-end tests on the 2-CPU runtime."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from trainkit import data
from trainkit.data._block import seal_block
from trainkit.data._context import DataContext
from trainkit.data._executor import Executor
from trainkit.data._executor import _PoolWorker
from trainkit.data._executor import _run_task
from trainkit.data._plan import MapOp
from trainkit.data._streaming import Budget
from trainkit.data._streaming import ClusterResources
from trainkit.data._streaming import PoolNeed
from trainkit.data._streaming import Stage
from trainkit.data._streaming import StallDetector
from trainkit.data._streaming import check_tasks
from trainkit.data._streaming import next_launch
from trainkit.data._streaming import size_pools
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import InfeasibleError

ROW_BYTES = 8 * 128  # one row of a (128,) float64 tensor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """The executor's runtime calls, in-process: a task runs when it is waited on, the oldest
    launched first. ``stuck`` makes every wait time out (advancing the fake clock)."""

    def __init__(self, resources: ClusterResources, clock: FakeClock | None = None) -> None:
        self.res = resources
        self.clock = clock or FakeClock()
        self.ids = itertools.count()
        self.pending: dict[int, Any] = {}  # ref -> thunk, in launch order
        self.results: dict[int, Any] = {}
        self.actors: list[Any] = []
        self.killed = 0
        self.stuck = False
        self.most_running = 0

    def _value(self, arg: Any) -> Any:
        return self.results[arg] if isinstance(arg, int) else arg

    def resources(self) -> ClusterResources:
        return self.res

    def available(self) -> dict[str, float]:
        return {"CPU": 0.0}

    def task(self, item: Any, transforms: tuple[Any, ...], num_cpus: float, num_gpus: float,
             name: str) -> int:
        return self._launch(lambda: _run_task(self._value(item), transforms))

    def actor(self, op: MapOp) -> Any:
        assert op.pool is not None
        actor = _PoolWorker(op.udf_class, tuple(op.pool.constructor_args),
                            dict(op.pool.constructor_kwargs), op.transform)
        self.actors.append(actor)
        return actor

    def call(self, actor: Any, ref: Any) -> int:
        return self._launch(lambda: actor.process(self._value(ref)))

    def kill(self, actor: Any) -> None:
        self.killed += 1

    def _launch(self, thunk: Any) -> int:
        ref = next(self.ids)
        self.pending[ref] = thunk
        self.most_running = max(self.most_running, len(self.pending))
        return ref

    def wait(self, refs: list[Any], timeout: float | None) -> list[Any]:
        if self.stuck:
            self.clock.now += timeout or 0.0
            return []
        ref = min(r for r in refs if r in self.pending)
        self.results[ref] = self.pending.pop(ref)()
        return [ref]

    def get(self, ref: Any) -> Any:
        return self.results[ref]

    def put(self, block: Any) -> int:
        ref = next(self.ids)
        self.results[ref] = seal_block(block)
        return ref


def _context(budget: int | None = None, stall_timeout_s: float | None = 300.0) -> DataContext:
    ctx = DataContext()
    ctx.execution_options.resource_limits.object_store_memory = budget
    ctx.execution_options.stall_timeout_s = stall_timeout_s
    return ctx


class AddOne:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"data": batch["data"] + 1}


class AddOneId:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"] + 1}


def _double(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"data": batch["data"] * 2}


def _three_stages(blocks: int, rows_per_block: int) -> data.Dataset:
    """Read->map (fused tasks), an actor pool, then map tasks: three stages."""
    return (data.range_tensor(blocks * rows_per_block, shape=(128,),
                              override_num_blocks=blocks)
            .map_batches(_double, batch_size=None)
            .map_batches(AddOne, concurrency=2, batch_size=None)
            .map_batches(_double, batch_size=None))


# --- the pure core ----------------------------------------------------------------------------


def test_next_launch_prefers_downstream_and_reserves_room_for_it() -> None:
    budget = Budget(1000)
    up, down = Stage("up", 8), Stage("down", 8)
    up.out_blocks, up.out_bytes = 1, 300  # estimates: 300 bytes a block
    down.out_blocks, down.out_bytes = 1, 300
    down.inputs.append(("block", 300, 300))
    budget.add(300)  # the block waiting for "down"
    up.launch("r1", "task", 0, 0, budget, 0.0)
    assert next_launch([up, down], budget, source_open=True) == 1  # downstream first
    down.launch("r2", down.inputs.popleft()[0], 300, 300, budget, 0.0)
    # 900 bytes in flight: "up" would need 300 more (plus 300 kept for "down"): no room.
    assert budget.in_flight == 900
    assert next_launch([up, down], budget, source_open=True) is None
    # Nothing runs at all: the most downstream stage with an input goes anyway.
    up.finish(up.running[0], ("ref", None), 300, budget)
    down.finish(down.running[0], ("ref", None), 300, budget)
    assert up.working() == down.working() == 0
    assert next_launch([up, down], budget, source_open=True) == 0
    # A stage whose output size is unknown runs one task until it knows.
    fresh = Stage("read", 8)
    fresh.launch("r3", "task", 0, 0, budget, 0.0)
    assert next_launch([fresh], Budget(10**9), source_open=True) is None


def test_size_pools_leaves_the_tasks_a_cpu_or_names_the_stage() -> None:
    two = ClusterResources(cpus=2.0)
    plan = size_pools([PoolNeed("map_batches(Model)", 2, 2, 1.0, 0.0)], 1.0, 0.0, two, "Read")
    assert plan.sizes == [(1, 2)] and plan.spare_cpus == 0.0
    assert plan.warnings == ["map_batches(Model): 2 actors of 1 CPU do not fit in the cluster's "
                             "2 CPU and 0 GPU (the tasks of Read need 1 CPU); running 1 so that "
                             "every stage "
                             "can make progress"]
    free = size_pools([PoolNeed("m", 2, 4, 1.0, 0.0)], 0.0, 0.0, ClusterResources(cpus=8.0))
    assert free.sizes == [(2, 4)] and free.spare_cpus == 6.0 and not free.warnings
    with pytest.raises(InfeasibleError, match=r"map_batches\(Big\): an actor asks for 2 CPU, "
                                              r"but the cluster has 2 CPU and 0 GPU, the tasks "
                                              r"of Read need 1 CPU"):
        size_pools([PoolNeed("map_batches(Big)", 1, 1, 2.0, 0.0)], 1.0, 0.0, two, "Read")
    with pytest.raises(InfeasibleError, match=r"map_batches\(Gpu\).*1 GPU.*0 GPU"):
        size_pools([PoolNeed("map_batches(Gpu)", 1, 1, 0.0, 1.0)], 1.0, 0.0, two)
    check_tasks([("Read->map_batches(f)", 2.0, 0.0)], two)
    with pytest.raises(InfeasibleError, match=r"map_batches\(g\): a task asks for 1 CPU and 1 "
                                              r"GPU, but the cluster has 2 CPU and 0 GPU"):
        check_tasks([("map_batches(g)", 1.0, 1.0)], two)


def test_stall_detector_warns_then_fails_with_a_fake_clock() -> None:
    clock = FakeClock()
    lines: list[str] = []
    stall = StallDetector(10.0, clock, lines.append)
    assert stall.wait_s(60.0) == 10.0
    clock.now = 9.0
    stall.check(lambda: "operator X")
    assert lines == []
    clock.now = 10.0
    stall.check(lambda: "operator X")
    assert lines == ["[trainkit] data: no progress for 10 s: operator X; it fails after 20 s "
                     "without progress"]
    assert stall.wait_s(60.0) == 10.0  # until the error
    stall.check(lambda: "operator X")
    assert len(lines) == 1  # once per stall
    clock.now = 15.0
    stall.progress()  # a block came through: a new period
    clock.now = 34.0
    stall.check(lambda: "operator X")
    assert len(lines) == 2
    clock.now = 35.0
    with pytest.raises(GetTimeoutError, match=r"no progress for 20 s: operator X; giving up"):
        stall.check(lambda: "operator X")
    never = StallDetector(None, clock)
    clock.now = 10**6
    never.check(lambda: "never")
    assert never.wait_s(60.0) == 60.0
    with pytest.raises(ValueError, match=r"stall_timeout_s is 0, but must be"):
        data.ExecutionOptions(stall_timeout_s=0)


# --- the executor on a fake runtime -------------------------------------------------------


def test_one_budget_for_every_stage_of_a_pipeline_ten_times_larger() -> None:
    rows_per_block, blocks = 100, 40
    block = rows_per_block * ROW_BYTES
    budget = 4 * block  # the data is 10x the budget
    runtime = FakeRuntime(ClusterResources(cpus=8.0, store_bytes=10**9))
    ex = Executor(_three_stages(blocks, rows_per_block)._plan, context=_context(budget),
                  runtime=runtime)  # type: ignore[arg-type]
    ids = [int(np.ravel(row)[0]) for _, out in ex for row in out.column("data").to_pylist()]
    assert ids == [(2 * i + 1) * 2 for i in range(blocks * rows_per_block)]  # in order
    assert [op.name for op in ex.stats.ops] == [
        "RangeTensor->map_batches(_double)", "map_batches(AddOne)", "map_batches(_double)"]
    assert [op.blocks for op in ex.stats.ops] == [blocks] * 3
    assert ex.stats.budget_bytes == budget
    assert block <= ex.stats.peak_bytes_in_flight <= budget
    assert ex.budget.in_flight == 0  # everything let go
    assert runtime.most_running >= 2  # stages overlap under the budget
    assert runtime.killed == len(runtime.actors) == 2


def test_a_single_block_larger_than_the_budget_still_goes_through() -> None:
    runtime = FakeRuntime(ClusterResources(cpus=2.0))
    ex = Executor(_three_stages(3, 100)._plan, context=_context(100), runtime=runtime)  # type: ignore[arg-type]
    assert sum(out.num_rows for _, out in ex) == 300
    assert ex.budget.in_flight == 0


def test_a_pool_that_would_take_every_cpu_leaves_one_for_the_reads(
        capsys: pytest.CaptureFixture[str]) -> None:
    runtime = FakeRuntime(ClusterResources(cpus=2.0))
    ds = data.range(100, override_num_blocks=4).map_batches(AddOneId, concurrency=2)
    ex = Executor(ds._plan, context=_context(), runtime=runtime)  # type: ignore[arg-type]
    assert sum(out.num_rows for _, out in ex) == 100
    assert len(runtime.actors) == 1
    assert "map_batches(AddOneId): 2 actors of 1 CPU do not fit in the cluster's 2 CPU and 0 " \
           "GPU (the tasks of Range need 1 CPU); running 1" in capsys.readouterr().err
    big = data.range(10).map_batches(AddOneId, concurrency=1, num_cpus=2)
    with pytest.raises(InfeasibleError, match=r"map_batches\(AddOneId\): an actor asks for 2 "):
        list(Executor(big._plan, context=_context(), runtime=runtime))  # type: ignore[arg-type]


def test_a_stalled_execution_names_its_operator_then_fails(
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    runtime = FakeRuntime(ClusterResources(cpus=2.0), clock)
    runtime.stuck = True
    ds = data.range(10).map_batches(AddOneId, concurrency=1)
    ex = Executor(ds._plan, context=_context(stall_timeout_s=30.0), runtime=runtime,  # type: ignore[arg-type]
                  clock=clock)
    with pytest.raises(GetTimeoutError, match=r"no progress for 60 s: operator Range"):
        next(iter(ex))
    err = capsys.readouterr().err
    assert "[trainkit] data: no progress for 30 s: operator Range (its tasks) has 4 " \
           "unfinished, the oldest for 30 s; the cluster has 2 CPU and 0 GPU, free now: " \
           "{'CPU': 0.0}" in err
    assert runtime.killed == 1


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture
def fresh_context() -> Iterator[DataContext]:
    ctx = DataContext()
    DataContext._set_current(ctx)
    try:
        yield ctx
    finally:
        DataContext._set_current(None)


@pytest.mark.usefixtures("data_runtime")
def test_actor_pool_of_every_cpu_finishes_on_two_cpus(
        fresh_context: DataContext, capsys: pytest.CaptureFixture[str]) -> None:
    fresh_context.execution_options.stall_timeout_s = 30.0  # a regression fails, never hangs
    ds = data.range(400, override_num_blocks=8).map_batches(AddOneId, concurrency=2)
    assert sorted(r["id"] for r in ds.take_all()) == list(range(1, 401))
    assert "running 1 so that every stage can make progress" in capsys.readouterr().err



def _store_used() -> int:
    """The store's used bytes, from the runtime's cluster info (a private call: the runtime's
    module layout is moving, so both of its homes are tried)."""
    try:
        from trainkit.runtime._builtin_backend import cluster_info
    except ImportError:
        from trainkit.runtime._api import _cluster_info as cluster_info  # type: ignore[attr-defined,no-redef]
    return int(cluster_info()["store"]["used_bytes"])


@pytest.mark.usefixtures("data_runtime")
def test_budget_holds_end_to_end(fresh_context: DataContext) -> None:
    rows_per_block, blocks = 256, 20
    block = rows_per_block * ROW_BYTES
    budget = 4 * block
    fresh_context.execution_options.resource_limits.object_store_memory = budget
    base = _store_used()
    ex = Executor(_three_stages(blocks, rows_per_block)._plan)
    used = []
    rows = 0
    for _, out in ex:
        rows += out.num_rows
        used.append(_store_used() - base)
    assert rows == blocks * rows_per_block
    assert block <= ex.stats.peak_bytes_in_flight <= budget
    # The store's own count, while the consumer holds a block (frees land a little late).
    assert max(used) <= budget * 3 // 2
