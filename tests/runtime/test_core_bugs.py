"""Runtime-core bugs of the second round, each reproduced as a user would hit it.

Every test here failed before its fix (checked by hand against the previous commit).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import trainkit as tk
from trainkit.exceptions import TaskCancelledError


def test_a_dead_owners_tasks_give_their_cpus_back(runtime):
    """An actor that submitted tasks is SIGKILLed: its tasks are its children, nobody can
    read their results, so they are cancelled and their CPUs come back."""
    runtime(num_cpus=2)

    @tk.remote
    def sleeper():
        time.sleep(1000)

    @tk.remote
    def started(path):
        return os.path.exists(path)

    @tk.remote
    class Owner:
        def go(self, marker):
            self.refs = [sleeper.remote() for _ in range(2)]
            return os.getpid()

    owner = Owner.remote()
    pid = tk.get(owner.go.remote("x"))
    # Both CPUs end up held by the owner's sleepers (the owner itself holds none).
    deadline = time.monotonic() + 60
    while tk.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tk.available_resources().get("CPU", 0) == 0
    os.kill(pid, signal.SIGKILL)

    @tk.remote
    def one():
        return 1

    assert tk.get(one.remote(), timeout=60) == 1


def test_dependents_of_a_cancelled_task_fail_instead_of_hanging(runtime):
    """cancel(force=True) of a task blocked in get() on one CPU: the task queued behind it
    (needing its result) gets TaskCancelledError instead of waiting forever."""
    runtime(num_cpus=1)

    @tk.remote
    def never():
        time.sleep(1000)

    @tk.remote
    def blocked(refs):
        return tk.get(refs[0])

    @tk.remote
    def dependent(x):
        return x

    n = never.remote()
    b = blocked.remote([n])
    d = dependent.remote(b)
    tk.cancel(b, force=True)
    with pytest.raises(TaskCancelledError):
        tk.get(b, timeout=60)
    with pytest.raises(TaskCancelledError):
        tk.get(d, timeout=60)
    tk.cancel(n, force=True)


def test_a_failed_argument_is_the_dependents_error(rt):
    @tk.remote
    def boom():
        raise KeyError("nope")

    @tk.remote
    def use(x):
        return "ran"

    with pytest.raises(KeyError):
        tk.get(use.remote(boom.remote()), timeout=60)


def test_cancel_of_a_ref_owned_by_another_process(rt, tmp_path):
    """A ref returned from a task is owned by that task's worker: cancel() is forwarded."""

    @tk.remote
    def slow():
        time.sleep(1000)

    @tk.remote
    def submit():
        return [slow.remote()]

    (inner,) = tk.get(submit.remote(), timeout=60)
    tk.cancel(inner, force=True)
    with pytest.raises(TaskCancelledError):
        tk.get(inner, timeout=60)


def test_calls_submitted_before_the_last_handle_is_dropped_are_answered(rt):
    @tk.remote
    class A:
        def f(self):
            time.sleep(0.02)
            return 1

    for _ in range(10):
        a = A.remote()
        tk.get(a.f.remote(), timeout=60)
        refs = [a.f.remote() for _ in range(3)]
        del a
        assert tk.get(refs, timeout=60) == [1, 1, 1]


def test_a_borrowers_calls_are_answered_after_it_drops_its_handle(rt):
    @tk.remote
    class A:
        def f(self):
            time.sleep(0.05)
            return 2

    @tk.remote
    def call_and_drop(handles):
        ref = handles[0].f.remote()
        del handles
        return [ref]

    a = A.remote()
    (ref,) = tk.get(call_and_drop.remote([a]), timeout=60)
    del a
    assert tk.get(ref, timeout=60) == 2


def test_subclassing_a_remote_class_says_what_to_do(rt):
    @tk.remote
    class Base:
        pass

    with pytest.raises(TypeError, match="subclass the plain class"):
        class Sub(Base):  # type: ignore[misc, valid-type]
            pass


def test_a_call_waiting_for_its_argument_does_not_block_other_callers(rt, tmp_path):
    gate = tmp_path / "gate"

    @tk.remote
    def slow(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return 1

    @tk.remote
    class A:
        def f(self, x):
            return x

    @tk.remote
    def other(handles):
        return tk.get(handles[0].f.remote(2))

    a = A.remote()
    tk.get(a.f.remote(0))
    waiting = a.f.remote(slow.remote(str(gate)))
    # Another caller's call is answered while the first still waits for its argument.
    assert tk.get(other.remote([a]), timeout=60) == 2
    ready, _ = tk.wait([waiting], timeout=0)
    assert not ready
    gate.touch()
    assert tk.get(waiting, timeout=60) == 1
