"""The runtime's contract, run on both backends: trainkit's own runtime and Ray Core
(``init(backend="ray")``). Train, Tune and Data rely on exactly this behaviour."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import trainkit as tk
from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import TaskError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import placement_group
from trainkit.runtime import remove_placement_group

# The module's runtime keeps its idle pool workers across tests; backend_runtime checks that
# nothing is left once it stops.
pytestmark = [pytest.mark.on_ray, pytest.mark.leaking("processes")]


@pytest.fixture(scope="module")
def backend(runtime_backend: str, start_backend: Any) -> Iterator[str]:
    with start_backend(runtime_backend, num_cpus=2, num_gpus=2):
        yield runtime_backend


@tk.remote
def add(a: int, b: int) -> int:
    return a + b


@tk.remote(max_retries=0)
def fail(msg: str) -> None:
    raise KeyError(msg)


def test_tasks_refs_and_nesting(backend):
    one = add.remote(0, 1)
    assert tk.get(add.remote(one, 2)) == 3  # a top-level ref arrives as its value

    @tk.remote
    def kind(box: list) -> str:
        return type(box[0]).__name__

    assert tk.get(kind.remote([one])) == "ObjectRef"  # a nested one stays a ref
    assert tk.get([add.remote(i, i) for i in range(5)]) == [0, 2, 4, 6, 8]


def test_a_task_error_is_the_users_class_and_a_task_error(backend):
    with pytest.raises(KeyError, match="missing") as info:
        tk.get(fail.remote("missing"))
    assert isinstance(info.value, TaskError)
    assert "fail" in str(info.value)


def test_get_timeout_and_wait(backend):
    @tk.remote
    def slow(s: float) -> float:
        time.sleep(s)
        return s

    pending = slow.remote(20)
    with pytest.raises(GetTimeoutError):
        tk.get(pending, timeout=0.2)
    fast = slow.remote(0)
    ready, rest = tk.wait([pending, fast], num_returns=1, timeout=15)
    assert (ready, rest) == ([fast], [pending])
    tk.cancel(pending, force=True)


def test_put_get_large_array(backend):
    a = np.arange(5_000_000, dtype=np.int64)
    got = tk.get(tk.put(a))
    assert np.array_equal(got, a) and not got.flags.writeable  # a read-only shared view


def test_actor_calls_in_order_named_and_killed(backend):
    @tk.remote
    class Log:
        def __init__(self) -> None:
            self.items: list[int] = []

        def add(self, x: int) -> list[int]:
            self.items.append(x)
            return list(self.items)

    log = Log.options(name="contract-log").remote()
    assert tk.get([log.add.remote(i) for i in range(4)])[-1] == [0, 1, 2, 3]
    assert tk.get(tk.get_actor("contract-log").add.remote(4)) == [0, 1, 2, 3, 4]
    tk.kill(log)
    with pytest.raises(ActorDiedError):
        tk.get(log.add.remote(5), timeout=30)


def test_actor_restarts(backend):
    @tk.remote(max_restarts=1)
    class Fragile:
        def pid(self) -> int:
            return os.getpid()

        def die(self) -> None:
            os._exit(1)

    f = Fragile.remote()
    first = tk.get(f.pid.remote())
    f.die.remote()
    deadline = time.monotonic() + 30
    while True:
        try:
            second = tk.get(f.pid.remote(), timeout=30)
            break
        except ActorDiedError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert second != first


def test_threaded_and_async_actors_run_calls_concurrently(backend):
    @tk.remote(max_concurrency=2)
    class Gate:
        def __init__(self) -> None:
            self.event = threading.Event()

        def wait(self) -> bool:
            return self.event.wait(10)

        def open(self) -> None:
            self.event.set()

    gate = Gate.remote()
    waiting = gate.wait.remote()
    tk.get(gate.open.remote(), timeout=10)
    assert tk.get(waiting, timeout=10) is True

    @tk.remote
    class Sleeper:
        async def nap(self) -> tuple[float, float]:
            start = time.time()
            await asyncio.sleep(2)
            return start, time.time()

    s = Sleeper.remote()
    spans = tk.get([s.nap.remote() for _ in range(10)], timeout=30)
    assert max(a for a, _ in spans) < min(b for _, b in spans)  # every nap overlapped


def test_impossible_requests_fail_at_submission(backend):
    with pytest.raises(InfeasibleError):
        add.options(num_gpus=8).remote(1, 2)
    with pytest.raises(InfeasibleError):
        add.options(resources={"no_such_thing": 1}).remote(1, 2)

    @tk.remote(num_cpus=64)
    class Huge:
        pass

    with pytest.raises(InfeasibleError):
        Huge.remote()
    with pytest.raises(InfeasibleError):
        placement_group([{"CPU": 64}], strategy="PACK")


def test_gpu_ids_are_exact_and_visible(backend):
    @tk.remote(num_gpus=1)
    def gpu() -> tuple[list[int], str]:
        return tk.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

    ids, visible = tk.get(gpu.remote())
    assert len(ids) == 1 and visible == str(ids[0]) and ids[0] in (0, 1)


def test_placement_groups(backend):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert pg.wait(timeout_seconds=30)
    refs = [add.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=i)).remote(i, 10) for i in range(2)]
    assert tk.get(refs) == [10, 11]
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="SIDEWAYS")


def test_a_dead_worker_is_a_worker_crashed_error(backend):
    @tk.remote(max_retries=0)
    def crash() -> None:
        os._exit(3)

    with pytest.raises(WorkerCrashedError):
        tk.get(crash.remote(), timeout=60)


def test_resources_are_reported(backend):
    total = tk.cluster_resources()
    assert (total["CPU"], total["GPU"]) == (2.0, 2.0)
    deadline = time.monotonic() + 10
    while tk.available_resources().get("CPU", 0.0) != 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tk.available_resources()["CPU"] == 2.0
    assert len(tk.nodes()) == 1
