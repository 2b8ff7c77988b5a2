"""Actors end to end: ordering, concurrency, names, restarts, deaths."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import trainkit as tk
from trainkit.exceptions import ActorDiedError


@tk.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()

    def sleep(self, s):
        time.sleep(s)
        return s

    def die(self):
        os.kill(os.getpid(), signal.SIGKILL)


def test_calls_run_in_order(rt):
    c = Counter.remote(10)
    refs = [c.incr.remote() for _ in range(200)]
    assert tk.get(refs) == list(range(11, 211))


def test_handles_can_be_passed_to_tasks(rt):
    c = Counter.remote()

    @tk.remote
    def bump(counter, k):
        return tk.get(counter.incr.remote(k))

    tk.get([bump.remote(c, 1) for _ in range(5)])
    assert tk.get(c.incr.remote(0)) == 5


def test_named_actor_and_get_actor(rt):
    Counter.options(name="counter").remote(5)
    c = tk.get_actor("counter")
    assert tk.get(c.incr.remote()) == 6
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="counter").remote()
    with pytest.raises(ValueError, match="no live actor named 'nope'"):
        tk.get_actor("nope")
    same = Counter.options(name="counter", get_if_exists=True).remote()
    assert tk.get(same.incr.remote()) == 7


def test_unknown_method_and_option(rt):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="incr"):
        c.incrr.remote()
    with pytest.raises(ValueError, match="max_restart"):
        Counter.options(max_restart=1)


def test_constructor_error_makes_calls_raise_actor_died(rt):
    @tk.remote
    class Bad:
        def __init__(self):
            raise RuntimeError("cannot start")

        def f(self):
            return 1

    b = Bad.remote()
    with pytest.raises(ActorDiedError, match="cannot start"):
        tk.get(b.f.remote(), timeout=30)


def test_threaded_actor_runs_calls_concurrently(rt):
    @tk.remote(max_concurrency=4)
    class Gate:
        def __init__(self):
            self.barrier = threading.Barrier(4)

        def meet(self):
            self.barrier.wait(timeout=10)
            return True

    g = Gate.remote()
    assert tk.get([g.meet.remote() for _ in range(4)], timeout=30) == [True] * 4


def test_async_actor_runs_coroutines_concurrently(rt):
    @tk.remote
    class Poller:
        def __init__(self):
            self.event = asyncio.Event()

        async def wait_for_it(self):
            await self.event.wait()
            return "released"

        async def release(self):
            self.event.set()
            return "ok"

    p = Poller.remote()
    waiting = p.wait_for_it.remote()
    assert tk.get(p.release.remote(), timeout=10) == "ok"
    assert tk.get(waiting, timeout=10) == "released"


def test_actor_killed_mid_call_fails_all_queued_calls(rt):
    c = Counter.remote()
    tk.get(c.incr.remote())
    busy = c.sleep.remote(30)
    queued = [c.incr.remote() for _ in range(20)]
    time.sleep(0.3)
    tk.kill(c)
    for ref in [busy, *queued]:
        with pytest.raises(ActorDiedError):
            tk.get(ref, timeout=20)
    with pytest.raises(ActorDiedError):
        tk.get(c.incr.remote(), timeout=20)


def test_actor_crash_mid_call_with_queue(rt):
    c = Counter.remote()
    first = c.die.remote()
    queued = [c.incr.remote() for _ in range(20)]
    for ref in [first, *queued]:
        with pytest.raises(ActorDiedError, match="killed by SIGKILL"):
            tk.get(ref, timeout=20)


def test_max_restarts_brings_actor_back(rt):
    c = Counter.options(max_restarts=2).remote(100)
    pid1 = tk.get(c.pid.remote())
    with pytest.raises(ActorDiedError):
        tk.get(c.die.remote(), timeout=20)
    # The restarted actor runs its constructor again and answers.
    assert tk.get(c.incr.remote(), timeout=30) == 101
    assert tk.get(c.pid.remote()) != pid1


def test_max_task_retries_replays_calls_after_restart(rt):
    c = Counter.options(max_restarts=1, max_task_retries=1).remote()
    tk.get(c.pid.remote())
    os.kill(tk.get(c.pid.remote()), signal.SIGKILL)
    assert tk.get(c.incr.remote(), timeout=30) == 1


def test_actor_exits_when_last_handle_is_deleted(rt):
    c = Counter.remote()
    p = tk.get(c.pid.remote())
    del c
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(p, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the actor's process outlived its last handle")


def test_method_error_does_not_kill_the_actor(rt):
    @tk.remote
    class Flaky:
        def __init__(self):
            self.calls = 0

        def call(self, fail):
            self.calls += 1
            if fail:
                raise KeyError("bad key")
            return self.calls

    f = Flaky.remote()
    with pytest.raises(KeyError, match="bad key"):
        tk.get(f.call.remote(True))
    assert tk.get(f.call.remote(False)) == 2


def test_kill_without_no_restart_restarts(rt):
    c = Counter.options(max_restarts=1).remote(7)
    pid = tk.get(c.pid.remote())
    tk.kill(c, no_restart=False)  # asynchronous, as in Ray: calls may still reach the old one
    new_pid = pid
    deadline = time.time() + 20
    while new_pid == pid and time.time() < deadline:
        try:
            new_pid = tk.get(c.pid.remote(), timeout=20)
        except ActorDiedError:
            pass  # the call was in flight when the old process died
        time.sleep(0.02)
    assert new_pid != pid
    assert tk.get(c.incr.remote()) == 8  # the constructor ran again


def test_a_handle_inside_task_arguments_keeps_its_actor_alive(rt):
    @tk.remote
    class Answer:
        def get(self) -> int:
            return 42

    @tk.remote
    def ask(box: list) -> int:
        import time

        time.sleep(0.3)  # the caller's temporary handle is long gone by now
        return tk.get(box[0].get.remote())

    assert tk.get(ask.remote([Answer.remote()])) == 42
