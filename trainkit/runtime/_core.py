"""The core worker: the part of the runtime that lives in every driver and worker process.

It owns the refs its process creates (their reference counts, values, and the task specs
to retry them), submits tasks to leased workers and actor calls straight to actors, and
answers other processes' requests for its objects. One I/O thread reads the process's
control inbox; user threads submit and wait. All state is guarded by one re-entrant lock.

Reference counting (ownership): an owned object lives while its owner holds ``ObjectRef``
instances to it or any other process borrows it. A process that deserializes a ref it does
not own registers as a borrower (BORROW) and deregisters (RELEASE) when its last instance
goes. A serialized copy of a ref is kept alive by the process that serialized it for as
long as the copy may be read: a task's arguments until the task finishes, a stored
object's contents until that object is freed.
"""

from __future__ import annotations

import itertools
import mmap
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime._actor_calls import ActorCallerMixin
from trainkit.runtime._actor_calls import _ActorClient
from trainkit.runtime._auth import FrameAuth
from trainkit.runtime._copy_pool import CopyPool
from trainkit.runtime._local_channel import LocalChannel
from trainkit.runtime._objects import _Borrowed
from trainkit.runtime._objects import _Entry
from trainkit.runtime._objects import _error_repr
from trainkit.runtime._protocol import Msg
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._tasks import TaskSubmitterMixin
from trainkit.runtime._tasks import _Lease
from trainkit.runtime._tasks import _Queue
from trainkit.runtime._transport import Inbox
from trainkit.runtime._transport import Outbox
from trainkit.runtime._transport import endpoint
from trainkit.runtime._transport import make_context

# How long a request to the node service may take before the caller gets an error that
# names it. Generous: a busy 2-core machine under test can stall for seconds.
NODE_REQUEST_TIMEOUT_S = 60.0

class _Request:
    __slots__ = ("callback", "event", "ok", "payload", "target", "what")

    def __init__(self, target: str, what: str,
                 callback: Callable[[bool, Any], None] | None = None) -> None:
        self.callback = callback
        self.event = threading.Event()
        self.ok = False
        self.payload: Any = None
        self.target = target
        self.what = what


def _reply_value(ok: bool, payload: Any, what: str) -> Any:
    if ok:
        return payload
    if isinstance(payload, BaseException):
        raise payload
    raise RuntimeSystemError(f"{what} failed: {payload}")


class CoreWorker(TaskSubmitterMixin, ActorCallerMixin):
    """Runtime state of one process (driver or worker)."""

    def __init__(
        self,
        *,
        session_dir: str,
        node_addr: str,
        node_id: str,
        arena_path: str,
        arena_capacity: int,
        name: str,
        cluster_resources: dict[str, float],
        control_addr: str | None = None,
        host: str | None = None,
        auth: FrameAuth | None = None,
        store_socket: str = "",
    ) -> None:
        self.session_dir = session_dir
        self.node_addr = node_addr
        # Where leases, actors and placement groups are decided: this node's service in
        # embedded mode, the head in a cluster.
        self.control_addr = control_addr or node_addr
        self.node_id = node_id
        self.arena_path = arena_path
        self.arena_capacity = arena_capacity
        # Store requests go to the node over a unix socket when there is one (see
        # _local_channel); through the node's inbox otherwise.
        self.store_channel = LocalChannel(store_socket) if store_socket else None
        self.cluster_resources = dict(cluster_resources)
        self.ctx = make_context()
        self.inbox = Inbox(self.ctx, endpoint(session_dir, f"{name}.ctl", host), auth)
        self.ctl_addr = self.inbox.address
        self.out = Outbox(self.ctx, auth)
        self.lock = threading.RLock()
        self.owned: dict[bytes, _Entry] = {}
        self.borrowed: dict[bytes, _Borrowed] = {}
        self.requests: dict[int, _Request] = {}
        self._req_ids = itertools.count(1)
        self.queues: dict[tuple[Any, ...], _Queue] = {}
        self.leases: dict[bytes, tuple[_Queue, _Lease | None]] = {}
        self.running: dict[bytes, tuple[_Queue, _Lease]] = {}
        self.fn_sent: dict[bytes, set[bytes]] = {}
        self.actors: dict[bytes, _ActorClient] = {}
        self.call_owner: dict[bytes, _ActorClient] = {}
        self.held_for_caller: dict[bytes, list[ObjectRef]] = {}
        self.log_sink: Callable[[str, str], None] | None = None
        # Workers tell the node when a task blocks in get()/wait() so its CPUs are lent out.
        self.blocked_msg: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._blocked_depth = 0
        self._arena: mmap.mmap | None = None
        self.copy_pool = CopyPool()
        self._mapped: OrderedDict[bytes, Any] = OrderedDict()
        self._mapped_bytes = 0
        self._mapped_cap = arena_capacity // 20
        self._closed = False
        self._io = threading.Thread(target=self._io_loop, name="trainkit-io", daemon=True)
        self._handlers: dict[int, Callable[..., None]] = {
            Msg.REPLY: self._on_reply,
            Msg.TASK_DONE: self._on_task_done,
            Msg.LEASE_GRANTED: self._on_lease_granted,
            Msg.LEASE_FAILED: self._on_lease_failed,
            Msg.WORKER_DIED: self._on_worker_died,
            Msg.ACTOR_STATE: self._on_actor_state,
            Msg.PROCESS_DIED: self._on_process_died,
            Msg.GET_OBJECT: self._on_get_object,
            Msg.BORROW: self._on_borrow,
            Msg.RELEASE: self._on_release,
            Msg.RELEASE_CONTAINED: self._on_release_contained,
            Msg.OBJECT_VALUE: self._on_object_value,
            Msg.LOG: self._on_log,
            Msg.NODE_DIED: self._on_node_died,
            Msg.CANCEL_REF: self._on_cancel_ref,
        }
        self.extra_handlers: dict[int, Callable[..., None]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.out.connect(self.ctl_addr)  # connected early: close() wakes the I/O thread
        self._io.start()
        self.copy_pool.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.out.send(self.ctl_addr, (Msg.EXIT,))
        except Exception:
            pass
        if self._io.is_alive() and threading.current_thread() is not self._io:
            self._io.join(timeout=5)
        self.out.close()
        self.inbox.close()
        self.ctx.term()
        if self.store_channel is not None:
            self.store_channel.close()
        self.copy_pool.close()
        with self.lock:
            for req in self.requests.values():
                req.ok, req.payload = False, RuntimeSystemError("the runtime shut down")
                req.event.set()
            self.requests.clear()

    def _io_loop(self) -> None:
        sock = self.inbox.socket
        handlers = self._handlers
        while True:
            try:
                msg = self.inbox.recv()
            except zmq.ContextTerminated:
                return
            kind = msg[0]
            if kind == Msg.EXIT:
                return
            handler = handlers.get(kind) or self.extra_handlers.get(kind)
            if handler is None:
                print(f"trainkit: ignoring unknown message {kind!r}", file=sys.stderr)
                continue
            try:
                handler(*msg[1:])
            except Exception:  # a bug must not kill the I/O thread silently
                import traceback

                print("trainkit internal error in the I/O thread:", file=sys.stderr)
                traceback.print_exc()
        del sock

    # ------------------------------------------------------------------ requests
    def request(self, target: str, kind: int, *fields: Any, what: str,
                timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        """Send a request carrying an id and wait for its REPLY (or a named timeout)."""
        req_id = next(self._req_ids)
        req = _Request(target, what)
        with self.lock:
            self.requests[req_id] = req
        self.out.send(target, (kind, req_id, self.ctl_addr, *fields))
        if not req.event.wait(timeout):
            with self.lock:
                self.requests.pop(req_id, None)
            raise self._no_answer(what, timeout)
        return _reply_value(req.ok, req.payload, what)

    def _no_answer(self, what: str, timeout: float | None) -> GetTimeoutError:
        return GetTimeoutError(
            f"no answer to {what} within {timeout:.0f} s; is the trainkit node service "
            f"alive? (session folder: {self.session_dir})")

    def request_store(self, kind: int, *fields: Any, what: str,
                      timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        """A request to this machine's object store, answered on the calling thread."""
        channel = self.store_channel
        if channel is None:
            return self.request_node(kind, *fields, what=what, timeout=timeout)
        try:
            reply = channel.request(kind, next(self._req_ids), fields, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            # No store socket to reach (another filesystem view): the inbox works anywhere.
            self.store_channel = None
            return self.request_node(kind, *fields, what=what, timeout=timeout)
        except OSError as e:
            raise RuntimeSystemError(
                f"{what} failed: the trainkit node service closed its store connection "
                f"({e}); it has stopped or crashed (session folder: {self.session_dir})"
            ) from None
        if reply is None:
            raise self._no_answer(what, timeout)
        return _reply_value(*reply, what)

    def send_store(self, msg: tuple[Any, ...]) -> None:
        """A one-way store message, on the connection this thread's requests used."""
        channel = self.store_channel
        if channel is not None:
            try:
                channel.send(msg)
                return
            except OSError:
                pass
        self.out.send(self.node_addr, msg)

    def request_node(self, kind: int, *fields: Any, what: str,
                     timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.request(self.node_addr, kind, *fields, what=what, timeout=timeout)

    def request_control(self, kind: int, *fields: Any, what: str,
                        timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.request(self.control_addr, kind, *fields, what=what, timeout=timeout)

    def request_async(self, target: str, kind: int, *fields: Any, what: str,
                      callback: Callable[[bool, Any], None]) -> None:
        """Send a request; ``callback(ok, payload)`` runs on the I/O thread with the reply."""
        req_id = next(self._req_ids)
        with self.lock:
            self.requests[req_id] = _Request(target, what, callback)
        self.out.send(target, (kind, req_id, self.ctl_addr, *fields))

    def _on_reply(self, req_id: int, ok: bool, payload: Any) -> None:
        with self.lock:
            req = self.requests.pop(req_id, None)
        if req is None:
            return
        if req.callback is not None:
            req.callback(ok, payload)
            return
        req.ok, req.payload = ok, payload
        req.event.set()

    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None:
        self.out.send(addr, (Msg.REPLY, req_id, ok, payload))

    def _on_cancel_ref(self, oid: bytes, force: bool) -> None:
        """Another process holding a ref to a task of ours asked to cancel it."""
        self.cancel(ObjectRef(oid, self.ctl_addr, _add_ref=False), force)

    def _on_process_died(self, addr: str, cause: str) -> None:
        """Another process died: drop its borrows, fail what we waited for from it."""
        self.out.forget(addr)
        failed: list[_Request] = []
        with self.lock:
            for oid, entry in list(self.owned.items()):
                if addr in entry.borrowers:
                    del entry.borrowers[addr]
                    self._maybe_free(oid, entry)
            for req_id, req in list(self.requests.items()):
                if req.target == addr:
                    del self.requests[req_id]
                    failed.append(req)
            for oid, b in self.borrowed.items():
                if b.owner == addr and b.value is None:
                    b.value = _error_repr(ObjectLostError(oid.hex(), f"its owner died ({cause})"))
                    self._fire(b.waiters)
        for req in failed:
            err = ObjectLostError("", f"the process died ({cause})")
            if req.callback is not None:
                req.callback(False, err)
            else:
                req.ok, req.payload = False, err
                req.event.set()
