"""The node service's parts on their own: the worker pool's decisions and the output
forwarding, with a recording host instead of the node service."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trainkit as tk
from trainkit._console import Record
from trainkit.runtime.node.control_plane import _Lease
from trainkit.runtime.node.control_plane import _WorkerProc
from trainkit.runtime.node.worker_output import WorkerOutput
from trainkit.runtime.node.worker_output import prefixed
from trainkit.runtime.node.worker_output import render
from trainkit.runtime.node.worker_pool import WorkerPool
from trainkit.runtime.node.worker_pool import describe_exit
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id


class Host:
    """A ``PoolHost`` that records what the pool asks of it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.assigned: list[tuple[_Lease, _WorkerProc]] = []
        self.watched: set[int] = set()

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        self.sent.append((addr, msg))

    def watch(self, fd: int) -> None:
        self.watched.add(fd)

    def unwatch(self, fd: int) -> None:
        self.watched.discard(fd)

    def assign(self, lease: _Lease, w: _WorkerProc) -> None:
        self.assigned.append((lease, w))

    def worker_exited(self, w: _WorkerProc, cause: str) -> None:
        pass

    def leases_failed(self, leases: list[_Lease], err: Exception) -> None:
        pass


def _pool(max_idle: int = 2) -> tuple[WorkerPool, Host]:
    host = Host()
    output = WorkerOutput(None, lambda stream, text: None, host.unwatch)
    return WorkerPool(host, {}, "/", None, max_idle=max_idle, output=output), host


def _worker(pool: WorkerPool) -> _WorkerProc:
    wid = new_id()
    w = _WorkerProc(wid, 0, -1, -1, exec_addr=f"ipc://exec-{wid.hex()}", ready=True)
    pool.workers[wid] = w
    return w


def test_a_registered_worker_goes_to_the_oldest_waiting_lease_first() -> None:
    pool, host = _pool()
    first, second = _Lease(new_id(), "owner"), _Lease(new_id(), "owner")
    pool.waiting.extend([first, second])
    w = _worker(pool)
    pool.on_register_worker(w.worker_id, 1, w.exec_addr, "ipc://ctl")
    assert host.assigned == [(first, w)] and list(pool.waiting) == [second]
    assert pool.idle == []


def test_idle_workers_beyond_the_limit_are_retired() -> None:
    pool, host = _pool(max_idle=1)
    a, b = _worker(pool), _worker(pool)
    pool.available(a)
    pool.available(b)
    assert pool.idle == [a]
    assert host.sent == [(b.exec_addr, (Msg.RETIRE,))]


def test_a_worker_forked_before_a_preload_is_retired_not_reused() -> None:
    pool, host = _pool()
    stale = _worker(pool)
    pool.preloads = 1  # a preload came after it was forked
    pool.available(stale)
    assert pool.idle == [] and host.sent == [(stale.exec_addr, (Msg.RETIRE,))]


def test_an_idle_worker_serves_a_lease_without_a_fork() -> None:
    pool, host = _pool()
    w = _worker(pool)
    pool.available(w)
    lease = _Lease(new_id(), "owner")
    pool.give(lease)  # a fork would need the forkserver, which this pool has not started
    assert host.assigned == [(lease, w)] and not pool.waiting


def test_a_released_actor_or_tainted_worker_is_killed_a_task_worker_reused() -> None:
    pool, _ = _pool()
    task, actor, tainted = _worker(pool), _worker(pool), _worker(pool)
    actor.actor_id = b"a"
    pool.on_worker_tainted(tainted.worker_id)
    for w in (task, actor, tainted):
        w.lease_id = b"lease"
        pool.release(w)
        assert w.lease_id is None
    assert pool.idle == [task]
    assert (actor.killed_reason, tainted.killed_reason, task.killed_reason) == ("done", "done", "")


def test_unwait_forgets_a_lease_that_no_longer_wants_a_worker() -> None:
    pool, _ = _pool()
    lease = _Lease(new_id(), "owner")
    pool.waiting.append(lease)
    pool.unwait(lease)
    pool.unwait(lease)  # twice is harmless
    assert not pool.waiting


def test_exit_causes_name_the_signal_or_the_code() -> None:
    assert describe_exit(-9) == "the process was killed by SIGKILL"
    assert describe_exit(3) == "the process exited with code 3"
    assert describe_exit(None) == "the process exited"


def test_lines_are_prefixed_with_their_writer_and_empty_lines_stay_empty() -> None:
    records = [Record(b"hello", False), Record(b"", False), Record(b"50%", True)]
    assert render(records, 7, None) == "(pid=7) hello\n\n(pid=7) 50%\r"
    assert prefixed("(Trainer pid=7) step 1", 7, None) == "(Trainer pid=7) step 1"
    assert prefixed("x", 7, "10.0.0.2") == "(pid=7, node=10.0.0.2) x"


def test_output_goes_out_in_whole_lines_and_the_rest_at_the_end() -> None:
    got: list[tuple[str, str]] = []
    unwatched: list[int] = []
    out = WorkerOutput(None, lambda stream, text: got.append((stream, text)), unwatched.append)
    r, w = os.pipe()
    proc = _WorkerProc(b"w", 42, -1, -1)
    out.add(r, proc, "stderr")
    os.write(w, b"one\ntw")
    assert out.read(r) and got == [("stderr", "(pid=42) one\n")]
    os.write(w, b"o\n 10%\r 20%\r 30%\rthree")  # a redrawn line: only its latest goes
    os.close(w)
    out.drain(proc)
    assert got[1:] == [("stderr", "(pid=42) two\n(pid=42)  30%\r"), ("stderr", "(pid=42) three\n")]
    assert unwatched == [r] and not out.owns(r)


def test_workers_inherit_the_forkservers_objects_frozen(runtime: Callable[..., None]) -> None:
    """A worker's full collections leave the pages it shares with the forkserver alone (they
    would copy every one of them: ~6 MB per worker)."""
    runtime()

    @tk.remote
    def frozen() -> int:
        import gc

        gc.collect()
        return gc.get_freeze_count()

    @tk.remote(num_cpus=0)
    class Actor:
        def frozen(self) -> int:
            import gc

            return gc.get_freeze_count()

    assert tk.get(frozen.remote()) > 10_000  # the runtime's and its imports' objects
    assert tk.get(Actor.remote().frozen.remote()) > 10_000
