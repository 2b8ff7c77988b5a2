"""Normal tasks: dependency waits, worker leases, pushing tasks, retries, cancellation.

Part of the core worker (see ``_core.CoreWorker``). A task's owner asks the node service
for a lease on a worker of the task's shape, pushes tasks of that shape straight to the
leased worker one after another, and returns the lease when its queue is empty.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from typing import Any

from trainkit.exceptions import TaskCancelledError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime._objects import ObjectTableMixin
from trainkit.runtime._objects import _error_repr
from trainkit.runtime._objects import return_ids
from trainkit.runtime._protocol import ERROR
from trainkit.runtime._protocol import Msg
from trainkit.runtime._protocol import new_id
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._serialization import loads


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
    return_id: bytes | tuple[bytes, ...]  # a tuple for num_returns > 1
    key: tuple[Any, ...]
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    retries_left: int
    retry_exceptions: bool | tuple[type[BaseException], ...]
    attempt: int = 0
    deps: int = 0
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class _Lease:
    lease_id: bytes
    worker_id: bytes
    exec_addr: str
    ctl_addr: str
    gpu_ids: tuple[int, ...]
    task: TaskSpec | None = None


@dataclass(slots=True, eq=False)
class _Queue:
    key: tuple[Any, ...]
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    pending: deque[TaskSpec] = field(default_factory=deque)
    requesting: int = 0  # lease requests sent and not answered yet


class TaskSubmitterMixin(ObjectTableMixin):
    """Submitting normal tasks and handling their results and failures."""

    queues: dict[tuple[Any, ...], _Queue]
    leases: dict[bytes, tuple[_Queue, _Lease | None]]
    running: dict[bytes, tuple[_Queue, _Lease]]
    fn_sent: dict[bytes, set[bytes]]
    call_owner: dict[bytes, Any]

    # ------------------------------------------------------------------ normal tasks
    def submit_task(self, spec: TaskSpec) -> None:
        deps = [r for r in spec.arg_refs if r.owner_address == self.ctl_addr]
        with self.lock:
            pending = [r for r in deps if (e := self.owned.get(r.id)) is not None
                       and e.value is None]
            spec.deps = len(pending)
            for r in pending:
                self.owned[r.id].waiters.append(partial(self._dep_ready, spec))
            if spec.deps == 0:
                self._deps_resolved(spec)

    def _dep_ready(self, spec: TaskSpec) -> None:
        with self.lock:
            spec.deps -= 1
            if spec.deps == 0:
                self._deps_resolved(spec)

    def _deps_resolved(self, spec: TaskSpec) -> None:
        """Every argument this process owns has its value: run the task, unless one of
        them is an error (a failed or cancelled task): then that error is the task's
        result too, without running it, as in Ray."""
        error = self.failed_arg(spec.arg_refs)
        if error is not None:
            self._finish_task(spec, error)
            return
        self._enqueue(spec)

    def _enqueue(self, spec: TaskSpec, front: bool = False) -> None:
        if spec.cancelled:
            return
        q = self.queues.get(spec.key)
        if q is None:
            q = self.queues[spec.key] = _Queue(spec.key, spec.resources, spec.placement)
        if front:
            q.pending.appendleft(spec)
        else:
            q.pending.append(spec)
        self._pump(q)

    def _pump(self, q: _Queue) -> None:
        """Ask for leases for the queued tasks (a lease with nothing to run goes back)."""
        if not q.pending:
            return
        cap = max(2, int(self.cluster_resources.get("CPU", 1)) * 2)
        while q.requesting < min(len(q.pending), cap):
            q.requesting += 1
            lease_id = new_id()
            self.leases[lease_id] = (q, None)
            self._send_quiet(self.control_addr, (Msg.REQUEST_LEASE, lease_id, self.ctl_addr,
                                              q.resources, q.placement))

    def _push(self, q: _Queue, lease: _Lease, spec: TaskSpec) -> None:
        lease.task = spec
        self.running[spec.task_id] = (q, lease)
        sent = self.fn_sent.setdefault(lease.worker_id, set())
        blob = None if spec.fn_id in sent else spec.fn_blob
        sent.add(spec.fn_id)
        descs = self.describe_arg_refs(spec.arg_refs)
        self._send_quiet(lease.exec_addr, (
            Msg.EXEC_TASK, spec.task_id, spec.name, spec.fn_id, blob, spec.args, descs,
            spec.return_id, self.ctl_addr, lease.gpu_ids, spec.attempt, spec.key))

    def _on_lease_granted(self, lease_id: bytes, worker_id: bytes, exec_addr: str,
                          ctl_addr: str, gpu_ids: tuple[int, ...]) -> None:
        with self.lock:
            q, _ = self.leases.get(lease_id, (None, None))
            if q is None:
                self._send_quiet(self.control_addr, (Msg.RETURN_LEASE, lease_id))
                return
            q.requesting -= 1
            lease = _Lease(lease_id, worker_id, exec_addr, ctl_addr, tuple(gpu_ids))
            self.leases[lease_id] = (q, lease)
            if q.pending:
                self._push(q, lease, q.pending.popleft())
            else:
                self._return_lease(lease)

    def _return_lease(self, lease: _Lease) -> None:
        self.leases.pop(lease.lease_id, None)
        self._send_quiet(self.control_addr, (Msg.RETURN_LEASE, lease.lease_id))

    def _on_lease_failed(self, lease_id: bytes, error: BaseException) -> None:
        with self.lock:
            q, _ = self.leases.pop(lease_id, (None, None))
            if q is None:
                return
            q.requesting -= 1
            failed = list(q.pending)
            q.pending.clear()
        for spec in failed:
            self._finish_task(spec, _error_repr(error))

    def _finish_task(self, spec: TaskSpec, value: tuple[Any, ...],
                     holder: str | None = None) -> None:
        self.set_results(spec.return_id, value, holder)
        spec.arg_refs = []
        spec.held_refs = []

    def _on_task_done(self, task_id: bytes, return_id: bytes | tuple[bytes, ...],
                      value: Any, holder: str | None) -> None:
        with self.lock:
            client = self.call_owner.pop(task_id, None)
            if client is not None:
                call = client.inflight.pop(task_id, None)
                if call is None:
                    self.release_contained(holder, return_id)
                    return
                call.arg_refs = []
                call.held_refs = []
                self.set_results(return_id, value, holder)
                self.call_finished(client)
                return
            q, lease = self.running.pop(task_id, (None, None))
            if q is None or lease is None:
                self.release_contained(holder, return_id)
                return
            spec = lease.task
            lease.task = None
            if q.pending:
                self._push(q, lease, q.pending.popleft())
            else:
                self._return_lease(lease)
            if spec is None:
                return
            if value[0] == ERROR and spec.retries_left > 0 and not spec.cancelled \
                    and self._should_retry(spec, value):
                spec.retries_left -= 1
                spec.attempt += 1
                self._enqueue(spec, front=True)
                return
        if spec.cancelled:
            value = _error_repr(TaskCancelledError(spec.name))
        self._finish_task(spec, value, holder)

    def _should_retry(self, spec: TaskSpec, value: tuple[Any, ...]) -> bool:
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

    def _on_worker_died(self, lease_id: bytes, cause: str) -> None:
        with self.lock:
            q, lease = self.leases.pop(lease_id, (None, None))
            if q is None:
                return
            if lease is None:  # died before we used it
                q.requesting -= 1
                self._pump(q)
                return
            self.fn_sent.pop(lease.worker_id, None)
            spec = lease.task
            lease.task = None
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
            self._finish_task(spec, _error_repr(err))

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        with self.lock:
            for q in self.queues.values():
                for spec in q.pending:
                    if ref.id in return_ids(spec.return_id):
                        q.pending.remove(spec)
                        spec.cancelled = True
                        self._finish_task(spec, _error_repr(TaskCancelledError(spec.name)))
                        return
            for task_id, (_q, lease) in self.running.items():
                running = lease.task
                if running is not None and ref.id in return_ids(running.return_id):
                    running.cancelled = True
                    if force:
                        self._send_quiet(self.control_addr, (Msg.KILL_WORKER, lease.worker_id))
                    else:
                        self._send_quiet(lease.ctl_addr, (Msg.CANCEL_TASK, task_id))
                    return
