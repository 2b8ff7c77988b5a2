"""Tasks sent to a worker ahead of time (with a backlog) never wait behind a task that waits
for them, never lose the parallelism of free CPUs, and keep cancel and crash semantics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trainkit as tk
from trainkit.exceptions import TaskCancelledError


def test_a_task_that_waits_for_one_queued_behind_it_on_its_worker_finishes(
        runtime: Callable[..., None]) -> None:
    runtime(num_cpus=1)

    @tk.remote(num_cpus=0)
    class Box:
        def __init__(self) -> None:
            self.ref: Any = None

        def put(self, refs: list[Any]) -> None:
            self.ref = refs[0]

        def take(self) -> Any:
            return self.ref

    @tk.remote
    def waiter(box: Any) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ref = tk.get(box.take.remote())  # blocks: queued tasks go back to the driver
            if ref is not None:
                return int(tk.get(ref)) + 1
            time.sleep(0.01)
        raise TimeoutError("the box stayed empty")

    @tk.remote
    def leaf(i: int) -> int:
        return i

    box = Box.remote()
    tk.get(box.take.remote())
    tk.get(leaf.remote(0))  # a warm worker: its lease comes back fast
    for _ in range(5):
        # The waiter first, then what it waits for and a backlog: on one CPU the task it
        # waits for is sent to the waiter's own worker, behind it.
        a = waiter.remote(box)
        b = leaf.remote(41)
        backlog = [leaf.remote(i) for i in range(20)]
        box.put.remote([b])
        assert tk.get(a, timeout=60) == 42
        assert tk.get(backlog, timeout=60) == list(range(20))
        box.put.remote([None])


def test_two_tasks_on_two_free_cpus_run_at_the_same_time(
        runtime: Callable[..., None], tmp_path: Path) -> None:
    runtime(num_cpus=2)

    @tk.remote
    def meet(me: str, other: str) -> int:
        """Each waits for the other without trainkit (a file): only side by side do they
        both finish."""
        (tmp_path / me).touch()
        deadline = time.monotonic() + 30
        while not (tmp_path / other).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{other} never started beside {me}")
            time.sleep(0.005)
        return os.getpid()

    for i in range(3):
        pids = tk.get([meet.remote(f"a{i}", f"b{i}"), meet.remote(f"b{i}", f"a{i}")],
                      timeout=60)
        assert pids[0] != pids[1]


def test_cancel_of_a_task_in_a_backlog_fails_only_it(runtime: Callable[..., None]) -> None:
    runtime(num_cpus=1)

    @tk.remote
    def slow(i: int) -> int:
        time.sleep(0.05)
        return i

    refs = [slow.remote(i) for i in range(8)]
    tk.cancel(refs[1], force=True)  # likely queued on the first one's worker, not running
    assert tk.get(refs[0], timeout=60) == 0
    with pytest.raises(TaskCancelledError):
        tk.get(refs[1], timeout=60)
    assert tk.get(refs[2:], timeout=60) == list(range(2, 8))


def test_a_worker_killed_under_a_backlog_loses_no_task(runtime: Callable[..., None]) -> None:
    runtime(num_cpus=1)

    @tk.remote(max_retries=0)
    def first() -> int:
        os.kill(os.getpid(), 9)
        return -1

    @tk.remote(max_retries=0)
    def later(i: int) -> int:
        time.sleep(0.01)
        return i

    crash = first.remote()
    refs = [later.remote(i) for i in range(10)]  # behind it, none started when it dies
    with pytest.raises(tk.exceptions.WorkerCrashedError):
        tk.get(crash, timeout=60)
    assert tk.get(refs, timeout=60) == list(range(10))
