"""The task submitter: normal tasks from submission to result.

A task waits here until every argument this process owns has a value, then joins the
queue of its shape (resources and placement). For each queue the submitter asks the control
plane for leases on workers of that shape (REQUEST_LEASE, a few at a time), pushes the
queue's tasks straight to a leased worker one after another (EXEC_TASK), and returns the
lease (RETURN_LEASE) when the queue is empty.

Pipelining: while more tasks are queued than lease requests are out (every worker the shape
can get is busy), a lease gets its next task before the one it runs is done (up to
``pipeline_depth`` in flight), so the worker starts it without waiting for a round trip to
this process. A worker whose running task blocks in ``get()`` sends back the tasks queued
behind it, not started (TASK_BOUNCED): they go to the front of the queue, and that lease gets
no task ahead until its running one is done, so a task never waits behind one that waits for
it. A task that fails is retried while it has
retries left (a crashed worker always counts; an exception only if ``retry_exceptions``
says so); a cancelled one gets TaskCancelledError.

Pure state: messages go to ``Effects``, results to the ``OwnershipTable``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from typing import Any

from trainkit.exceptions import TaskCancelledError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime.core.effects import Effects
from trainkit.runtime.core.effects import Waiter
from trainkit.runtime.core.ownership import OwnershipTable
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.values import ReturnId
from trainkit.runtime.core.values import Value
from trainkit.runtime.core.values import error_value
from trainkit.runtime.core.values import is_error
from trainkit.runtime.core.values import return_ids
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.serialization import loads


@dataclass(slots=True, eq=False)
class TaskSpec:
    """A normal task, kept by its owner until it finishes so it can be retried."""

    task_id: bytes
    name: str
    fn_id: bytes
    fn_blob: bytes
    args: tuple[Any, ...]  # (meta, inline buffers) or (None, STORED repr)
    arg_refs: list[ObjectRef]
    held_refs: list[ObjectRef]
    return_id: ReturnId
    key: tuple[Any, ...]
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    retries_left: int
    retry_exceptions: bool | tuple[type[BaseException], ...]
    attempt: int = 0
    deps: int = 0
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class Lease:
    lease_id: bytes
    worker_id: bytes
    exec_addr: str
    ctl_addr: str
    gpu_ids: tuple[int, ...]
    tasks: deque[TaskSpec] = field(default_factory=deque)  # in flight, the running one first
    blocked: bool = False  # its running task blocked in get(): nothing more goes ahead


@dataclass(slots=True, eq=False)
class Queue:
    key: tuple[Any, ...]
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    pending: deque[TaskSpec] = field(default_factory=deque)
    requesting: int = 0  # lease requests sent and not answered yet


PIPELINE_DEPTH = 2


def _identity(waiter: Waiter) -> Waiter:
    return waiter


class TaskSubmitter:
    """Normal tasks this process submitted (see module doc).

    Args:
        table: where results go and argument values are looked up.
        effects: where messages are recorded.
        self_addr: this process's control address (workers answer there).
        control_addr: the control plane that grants leases.
        cpus: the cluster's CPUs; at most twice that many lease requests are out per shape.
        pipeline_depth: the most tasks in flight on one lease (1: no pipelining).
        guard: wraps a waiter registered in the table so that it runs as the shell runs
            every part (under the core's lock, effects carried out after); the identity in
            unit tests.
    """

    def __init__(self, table: OwnershipTable, effects: Effects, *, self_addr: str,
                 control_addr: str, cpus: float, pipeline_depth: int = PIPELINE_DEPTH,
                 guard: Callable[[Waiter], Waiter] = _identity) -> None:
        self.table = table
        self.effects = effects
        self.self_addr = self_addr
        self.control_addr = control_addr
        self.cpus = cpus
        self.pipeline_depth = max(1, pipeline_depth)
        self.guard = guard
        self.queues: dict[tuple[Any, ...], Queue] = {}
        self.leases: dict[bytes, tuple[Queue, Lease | None]] = {}
        self.running: dict[bytes, tuple[Queue, Lease]] = {}
        self.fn_sent: dict[bytes, set[bytes]] = {}  # worker id -> function ids it has

    # ------------------------------------------------------------------ submitting
    def submit(self, spec: TaskSpec) -> None:
        owned = self.table.owned
        pending = [r for r in spec.arg_refs if r.owner_address == self.self_addr
                   and (e := owned.get(r.id)) is not None and e.value is None]
        spec.deps = len(pending)
        for r in pending:
            owned[r.id].waiters.append(self.guard(partial(self._dep_ready, spec)))
        if spec.deps == 0:
            self._deps_resolved(spec)

    def _dep_ready(self, spec: TaskSpec) -> None:
        spec.deps -= 1
        if spec.deps == 0:
            self._deps_resolved(spec)

    def _deps_resolved(self, spec: TaskSpec) -> None:
        """Every argument this process owns has its value: run the task, unless one of
        them is an error (a failed or cancelled task): then that error is the task's
        result too, without running it, as in Ray."""
        error = self.table.failed_arg(spec.arg_refs)
        if error is not None:
            self._finish(spec, error)
            return
        self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        if spec.cancelled:
            return
        q = self.queues.get(spec.key)
        if q is None:
            q = self.queues[spec.key] = Queue(spec.key, spec.resources, spec.placement)
        if front:
            q.pending.appendleft(spec)
        else:
            q.pending.append(spec)
        self._pump(q)

    def _pump(self, q: Queue) -> None:
        """Ask for leases for the queued tasks (a lease with nothing to run goes back)."""
        if not q.pending:
            return
        cap = max(2, int(self.cpus) * 2)
        while q.requesting < min(len(q.pending), cap):
            q.requesting += 1
            lease_id = new_id()
            self.leases[lease_id] = (q, None)
            self.effects.send(self.control_addr, (Msg.REQUEST_LEASE, lease_id, self.self_addr,
                                                  q.resources, q.placement))

    def _fill(self, q: Queue, lease: Lease) -> None:
        """Give ``lease`` a task if it has none, and one ahead while the queue holds more
        than the lease requests out could take (see the module doc)."""
        if not lease.tasks and q.pending:
            self._push(q, lease, q.pending.popleft())
        while (not lease.blocked and len(lease.tasks) < self.pipeline_depth
               and len(q.pending) > q.requesting):
            self._push(q, lease, q.pending.popleft())

    def _push(self, q: Queue, lease: Lease, spec: TaskSpec) -> None:
        lease.tasks.append(spec)
        self.running[spec.task_id] = (q, lease)
        sent = self.fn_sent.setdefault(lease.worker_id, set())
        blob = None if spec.fn_id in sent else spec.fn_blob
        sent.add(spec.fn_id)
        descs = self.table.describe(spec.arg_refs) if spec.arg_refs else []
        self.effects.send(lease.exec_addr, (
            Msg.EXEC_TASK, spec.task_id, spec.name, spec.fn_id, blob, spec.args, descs,
            spec.return_id, self.self_addr, lease.gpu_ids, spec.attempt, spec.key))

    # ------------------------------------------------------------------ leases
    def lease_granted(self, lease_id: bytes, worker_id: bytes, exec_addr: str,
                      ctl_addr: str, gpu_ids: tuple[int, ...]) -> None:
        q, _ = self.leases.get(lease_id, (None, None))
        if q is None:
            self.effects.send(self.control_addr, (Msg.RETURN_LEASE, lease_id))
            return
        q.requesting -= 1
        lease = Lease(lease_id, worker_id, exec_addr, ctl_addr, tuple(gpu_ids))
        self.leases[lease_id] = (q, lease)
        if q.pending:
            self._fill(q, lease)
        else:
            self._return_lease(lease)

    def _return_lease(self, lease: Lease) -> None:
        self.leases.pop(lease.lease_id, None)
        self.effects.send(self.control_addr, (Msg.RETURN_LEASE, lease.lease_id))

    def lease_failed(self, lease_id: bytes, error: BaseException) -> None:
        """The control plane cannot grant a lease of this shape: every queued task of the
        shape fails with its error."""
        q, _ = self.leases.pop(lease_id, (None, None))
        if q is None:
            return
        q.requesting -= 1
        failed = list(q.pending)
        q.pending.clear()
        for spec in failed:
            self._finish(spec, error_value(error))

    # ------------------------------------------------------------------ results
    def _finish(self, spec: TaskSpec, value: Value, holder: str | None = None) -> None:
        self.table.set_results(spec.return_id, value, holder)
        spec.arg_refs = []
        spec.held_refs = []

    def task_done(self, task_id: bytes, return_id: ReturnId, value: Any,
                  holder: str | None) -> None:
        q, lease = self.running.pop(task_id, (None, None))
        if q is None or lease is None:  # cancelled and answered meanwhile, or not ours
            self.table.release_contained(holder, return_id)
            return
        spec = _take(lease, task_id)
        if not lease.tasks:
            lease.blocked = False
            if not q.pending:
                self._return_lease(lease)
        if q.pending and lease.lease_id in self.leases:
            self._fill(q, lease)
        if spec is None:
            return
        if is_error(value) and spec.retries_left > 0 and not spec.cancelled \
                and self._should_retry(spec, value):
            spec.retries_left -= 1
            spec.attempt += 1
            self._enqueue(spec, front=True)
            return
        if spec.cancelled:
            value = error_value(TaskCancelledError(spec.name))
        self._finish(spec, value, holder)

    @staticmethod
    def _should_retry(spec: TaskSpec, value: Value) -> bool:
        if spec.retry_exceptions is False:
            return False
        if spec.retry_exceptions is True:
            return True
        try:
            err = loads(value[1], value[2])
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, spec.retry_exceptions)

    def task_bounced(self, task_ids: list[bytes]) -> None:
        """A worker whose running task blocked sent back these tasks, not started: they go
        to the front of their queue, in order, with their retries untouched."""
        for task_id in reversed(task_ids):
            q, lease = self.running.pop(task_id, (None, None))
            if q is None or lease is None:
                continue
            lease.blocked = True
            spec = _take(lease, task_id)
            if spec is None:
                continue
            # It may have carried the function: the next one sent there carries it again.
            self.fn_sent.get(lease.worker_id, set()).discard(spec.fn_id)
            if spec.cancelled:
                self._finish(spec, error_value(TaskCancelledError(spec.name)))
            else:
                self._enqueue(spec, front=True)

    def worker_died(self, lease_id: bytes, cause: str) -> None:
        """A leased worker died: its running task is retried (a crash always counts) or
        fails; the tasks queued behind it had not started and go back to the queue."""
        q, lease = self.leases.pop(lease_id, (None, None))
        if q is None:
            return
        if lease is None:  # died before we used it
            q.requesting -= 1
            self._pump(q)
            return
        self.fn_sent.pop(lease.worker_id, None)
        spec = lease.tasks.popleft() if lease.tasks else None
        for queued in reversed(lease.tasks):
            self.running.pop(queued.task_id, None)
            if queued.cancelled:
                self._finish(queued, error_value(TaskCancelledError(queued.name)))
            else:
                self._enqueue(queued, front=True)
        lease.tasks.clear()
        if spec is not None:
            self.running.pop(spec.task_id, None)
            if spec.retries_left > 0 and not spec.cancelled:
                spec.retries_left -= 1
                spec.attempt += 1
                self._enqueue(spec, front=True)
                spec = None
        self._pump(q)
        if spec is not None:
            err: BaseException = (TaskCancelledError(spec.name) if spec.cancelled
                                  else WorkerCrashedError(spec.name, cause))
            self._finish(spec, error_value(err))

    def cancel(self, oid: bytes, force: bool) -> None:
        """Queued: it fails at once. Running: interrupted (KeyboardInterrupt in the task)
        or, with ``force``, its worker is killed (unless that is this process); it does not
        retry."""
        for q in self.queues.values():
            for spec in q.pending:
                if oid in return_ids(spec.return_id):
                    q.pending.remove(spec)
                    spec.cancelled = True
                    self._finish(spec, error_value(TaskCancelledError(spec.name)))
                    return
        for task_id, (_q, lease) in self.running.items():
            running = next((t for t in lease.tasks if t.task_id == task_id), None)
            if running is not None and oid in return_ids(running.return_id):
                running.cancelled = True
                # A worker may be leased the tasks it submitted itself: it cannot kill
                # itself (its refs would be lost), so it interrupts them. One queued
                # behind the running task is skipped by the worker, whatever ``force``.
                if force and lease.ctl_addr != self.self_addr and running is lease.tasks[0]:
                    self.effects.send(self.control_addr, (Msg.KILL_WORKER, lease.worker_id))
                else:
                    self.effects.send(lease.ctl_addr, (Msg.CANCEL_TASK, task_id))
                return


def _take(lease: Lease, task_id: bytes) -> TaskSpec | None:
    """Remove the task ``task_id`` from the lease's tasks in flight; it, or None."""
    for spec in lease.tasks:
        if spec.task_id == task_id:
            lease.tasks.remove(spec)
            return spec
    return None
