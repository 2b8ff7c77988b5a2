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
from trainkit.runtime import NodeAffinitySchedulingStrategy
from trainkit.runtime import PlacementGroupSchedulingStrategy
from trainkit.runtime import get_current_placement_group
from trainkit.runtime import placement_group
from trainkit.runtime import placement_group_table
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


# ---------------------------------------------------------------------- the 2026-12 additions


@tk.remote(num_returns=2)
def pair() -> tuple[int, int]:
    return 1, 2


@tk.remote
def one_arg(x: int) -> int:
    return x


def _until(predicate: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_num_returns_on_tasks(backend):
    refs = pair.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert tk.get(refs) == [1, 2]
    assert tk.get(refs[1]) == 2

    @tk.remote
    def trio() -> tuple[str, str, str]:
        return "a", "b", "c"

    assert tk.get(trio.options(num_returns=3).remote()) == ["a", "b", "c"]

    @tk.remote
    class Box:
        def __init__(self) -> None:
            self.value: int | None = None

        def set(self, v: int) -> None:
            self.value = v

        def get(self) -> int | None:
            return self.value

    @tk.remote(num_returns=0)
    def side_effect(box: Any) -> None:
        tk.get(box.set.remote(1))

    box = Box.remote()
    assert side_effect.remote(box) is None  # no ref, but the task still runs
    assert _until(lambda: tk.get(box.get.remote(), timeout=30) == 1)


def test_num_returns_on_an_actor_method(backend):
    @tk.remote
    class Two:
        @tk.method(num_returns=2)
        def two(self, x: int) -> tuple[int, int]:
            return x, x + 1

        def one(self) -> tuple[int, int]:
            return 1, 2

    t = Two.remote()
    refs = t.two.remote(5)
    assert isinstance(refs, list) and len(refs) == 2
    assert tk.get(refs, timeout=30) == [5, 6]
    assert tk.get(t.one.remote(), timeout=30) == (1, 2)  # undecorated: one ref, a tuple


def test_exit_actor_ends_the_actor_for_good(backend):
    @tk.remote(max_restarts=2)
    class Quitter:
        def ping(self) -> int:
            return os.getpid()

        def quit(self) -> None:
            tk.exit_actor()

    q = Quitter.remote()
    assert tk.get(q.ping.remote(), timeout=30)
    # As in Ray 2.60: the caller of the call that exits sees the actor's death.
    with pytest.raises(ActorDiedError):
        tk.get(q.quit.remote(), timeout=30)
    deadline = time.monotonic() + 3  # and it is not restarted (max_restarts notwithstanding)
    while time.monotonic() < deadline:
        with pytest.raises(ActorDiedError):
            tk.get(q.ping.remote(), timeout=30)
        time.sleep(0.5)
    with pytest.raises(RuntimeError, match="outside an actor"):
        tk.exit_actor()


def test_named_get_if_exists_and_detached_actors(backend):
    @tk.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

    a = Counter.options(name="contract-gie", get_if_exists=True).remote()
    b = Counter.options(name="contract-gie", get_if_exists=True).remote()
    assert tk.get(a.incr.remote(), timeout=30) == 1
    assert tk.get(b.incr.remote(), timeout=30) == 2  # the same actor
    tk.kill(a)

    d = Counter.options(name="contract-detached", lifetime="detached").remote()
    assert tk.get(d.incr.remote(), timeout=30) == 1
    assert "contract-detached" in tk.util.list_named_actors()
    rows = tk.util.list_named_actors(all_namespaces=True)
    assert any(r["name"] == "contract-detached" for r in rows)
    assert all(set(r) >= {"name", "namespace"} for r in rows)
    tk.kill(d)
    assert _until(lambda: "contract-detached" not in tk.util.list_named_actors())


def test_runtime_context_in_tasks_and_actors(backend):
    @tk.remote
    def where() -> dict[str, Any]:
        ctx = tk.get_runtime_context()
        return {"node": ctx.get_node_id(), "actor": ctx.get_actor_id(),
                "task": ctx.get_task_id(), "job": ctx.get_job_id(),
                "namespace": ctx.namespace, "resources": ctx.get_assigned_resources()}

    @tk.remote
    class Here:
        def where(self) -> dict[str, Any]:
            ctx = tk.get_runtime_context()
            return {"node": ctx.get_node_id(), "actor": ctx.get_actor_id(),
                    "namespace": ctx.namespace}

    driver = tk.get_runtime_context()
    node_ids = {n["NodeID"] for n in tk.nodes()}
    t = tk.get(where.remote(), timeout=30)
    assert t["node"] in node_ids
    assert t["actor"] is None and t["task"] is not None
    assert t["job"] == driver.get_job_id()
    assert t["namespace"] == driver.namespace
    assert t["resources"].get("CPU") == 1.0
    h = Here.remote()
    first = tk.get(h.where.remote(), timeout=30)
    assert first["node"] in node_ids and first["actor"] is not None
    assert tk.get(h.where.remote(), timeout=30)["actor"] == first["actor"]
    assert first["namespace"] == driver.namespace
    assert driver.get_actor_id() is None


def test_node_affinity(backend):
    @tk.remote
    def node() -> str:
        return str(tk.get_runtime_context().get_node_id())

    node_id = tk.nodes()[0]["NodeID"]
    for soft in (False, True):
        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)
        assert tk.get(node.options(scheduling_strategy=strategy).remote(), timeout=30) \
            == node_id
    with pytest.raises(ValueError, match="NodeAffinitySchedulingStrategy"):
        node.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 28)).remote()


def test_wrong_arity_fails_at_remote_naming_the_function(backend):
    with pytest.raises(TypeError, match="one_arg"):
        one_arg.remote(1, 2)
    with pytest.raises(TypeError, match="one_arg"):
        one_arg.remote()

    @tk.remote
    class Needs:
        def __init__(self, a: int) -> None:
            self.a = a

    with pytest.raises(TypeError, match="Needs"):
        Needs.remote(1, 2)
    assert tk.get(one_arg.remote(7), timeout=30) == 7


def test_placement_group_table_and_current_group(backend):
    @tk.remote
    def current() -> Any:
        pg = get_current_placement_group()
        return pg.id if pg is not None else None

    pg = placement_group([{"CPU": 1}], strategy="PACK")
    assert pg.wait(timeout_seconds=30)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "PACK"
    inside = PlacementGroupSchedulingStrategy(placement_group=pg,
                                              placement_group_bundle_index=0)
    assert tk.get(current.options(scheduling_strategy=inside).remote(), timeout=30) == pg.id
    assert tk.get(current.remote(), timeout=30) is None
    assert get_current_placement_group() is None  # the driver
    assert tk.util.get_current_placement_group is get_current_placement_group
    remove_placement_group(pg)


def test_subclassing_an_actor_class_is_a_type_error(backend):
    @tk.remote
    class Base:
        def hi(self) -> str:
            return "hi"

    with pytest.raises(TypeError, match="subclass"):
        class Sub(Base):  # type: ignore[misc,valid-type]
            pass
