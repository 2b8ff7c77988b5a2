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
import os
import pickle
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import zmq

from trainkit.exceptions import ActorDiedError
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.exceptions import TaskCancelledError
from trainkit.exceptions import TaskError
from trainkit.exceptions import WorkerCrashedError
from trainkit.runtime._object_layout import layout_size
from trainkit.runtime._object_layout import read_object
from trainkit.runtime._object_layout import write_object
from trainkit.runtime._protocol import ERROR
from trainkit.runtime._protocol import INLINE
from trainkit.runtime._protocol import STORED
from trainkit.runtime._protocol import ActorStatus
from trainkit.runtime._protocol import Msg
from trainkit.runtime._protocol import new_id
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._serialization import INLINE_THRESHOLD_BYTES
from trainkit.runtime._serialization import buffers_size
from trainkit.runtime._serialization import dumps
from trainkit.runtime._serialization import inline_buffers
from trainkit.runtime._serialization import loads
from trainkit.runtime._transport import Inbox
from trainkit.runtime._transport import Outbox
from trainkit.runtime._transport import make_context

# How long a request to the node service may take before the caller gets an error that
# names it. Generous: a busy 2-core machine under test can stall for seconds.
NODE_REQUEST_TIMEOUT_S = 60.0


class _ArgRef:
    """Placeholder for a top-level ObjectRef argument: the worker passes its value."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_ArgRef, (self.index,))


class _Entry:
    """An object this process owns."""

    __slots__ = ("abandoned", "actor", "borrowers", "contained", "holder", "local", "value",
                 "waiters")

    def __init__(self) -> None:
        self.value: tuple[Any, ...] | None = None  # None while the task that makes it runs
        self.local = 0
        self.borrowers: dict[str, int] = {}
        self.contained: list[ObjectRef] | None = None  # refs inside the value, kept alive
        self.holder: str | None = None  # worker keeping the refs inside a task's return
        self.waiters: list[Callable[[], None]] = []
        self.abandoned = False
        self.actor = False


class _Borrowed:
    __slots__ = ("count", "owner", "requested", "value", "waiters")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.count = 0
        self.value: tuple[Any, ...] | None = None
        self.waiters: list[Callable[[], None]] = []
        self.requested = False


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
    return_id: bytes
    key: tuple[Any, ...]
    resources: dict[str, float]
    placement: tuple[str, int] | None
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
    placement: tuple[str, int] | None
    pending: deque[TaskSpec] = field(default_factory=deque)
    idle: list[_Lease] = field(default_factory=list)
    requesting: int = 0


@dataclass(slots=True, eq=False)
class _Call:
    task_id: bytes
    method: str
    args: tuple[Any, ...]
    arg_refs: list[ObjectRef]
    held_refs: list[ObjectRef]
    return_id: bytes
    retries_left: int


class _ActorClient:
    """This process's view of one actor: where it is, and its calls in flight."""

    def __init__(self, actor_id: bytes, name: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.name = name
        self.status = ActorStatus.PENDING
        self.exec_addr: str | None = None
        self.cause = ""
        self.max_task_retries = max_task_retries
        self.queued: deque[_Call] = deque()
        self.inflight: dict[bytes, _Call] = {}
        self.exit_pending = False
        # Creation arguments stay alive until the actor is up (for its whole life if
        # it may restart, since a restart runs the constructor again).
        self.creation_refs: list[ObjectRef] = []
        self.restart_refs: list[ObjectRef] = []


class _MappedObject(mmap.mmap):
    """A reader's mapping of one stored object; unpinned when the last view of it dies."""


class CoreWorker:
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
        is_driver: bool,
        cluster_resources: dict[str, float],
    ) -> None:
        self.session_dir = session_dir
        self.node_addr = node_addr
        self.node_id = node_id
        self.arena_path = arena_path
        self.arena_capacity = arena_capacity
        self.is_driver = is_driver
        self.cluster_resources = dict(cluster_resources)
        self.ctx = make_context()
        self.ctl_addr = f"ipc://{session_dir}/{name}.ctl"
        self.inbox = Inbox(self.ctx, self.ctl_addr)
        self.out = Outbox(self.ctx)
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
        self._mapped: OrderedDict[bytes, _MappedObject] = OrderedDict()
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
        }
        self.extra_handlers: dict[int, Callable[..., None]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.out.connect(self.ctl_addr)  # connected early: close() wakes the I/O thread
        self._io.start()

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
    def request(self, target: str, kind: Msg, *fields: Any, what: str,
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
            raise GetTimeoutError(
                f"no answer to {what} within {timeout:.0f} s; is the trainkit node service "
                f"alive? (session folder: {self.session_dir})"
            )
        if not req.ok:
            err = req.payload
            if isinstance(err, BaseException):
                raise err
            raise RuntimeSystemError(f"{what} failed: {err}")
        return req.payload

    def request_node(self, kind: Msg, *fields: Any, what: str,
                     timeout: float | None = NODE_REQUEST_TIMEOUT_S) -> Any:
        return self.request(self.node_addr, kind, *fields, what=what, timeout=timeout)

    def request_async(self, target: str, kind: Msg, *fields: Any, what: str,
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

    # ------------------------------------------------------------------ reference counts
    def add_ref(self, oid: bytes, owner: str) -> None:
        with self.lock:
            if owner == self.ctl_addr:
                entry = self.owned.get(oid)
                if entry is not None:
                    entry.local += 1
                return
            b = self.borrowed.get(oid)
            if b is None:
                b = self.borrowed[oid] = _Borrowed(owner)
            b.count += 1
            if b.count == 1:
                self._send_quiet(owner, (Msg.BORROW, oid, self.ctl_addr))

    def remove_ref(self, oid: bytes, owner: str) -> None:
        with self.lock:
            if owner == self.ctl_addr:
                entry = self.owned.get(oid)
                if entry is not None:
                    entry.local -= 1
                    self._maybe_free(oid, entry)
                return
            b = self.borrowed.get(oid)
            if b is None:
                return
            b.count -= 1
            if b.count <= 0:
                del self.borrowed[oid]
                self._forget_mapping(oid)
                self._send_quiet(owner, (Msg.RELEASE, oid, self.ctl_addr))

    def _on_borrow(self, oid: bytes, addr: str) -> None:
        with self.lock:
            entry = self.owned.get(oid)
            if entry is not None:
                entry.borrowers[addr] = entry.borrowers.get(addr, 0) + 1

    def _on_release(self, oid: bytes, addr: str) -> None:
        with self.lock:
            entry = self.owned.get(oid)
            if entry is None:
                return
            n = entry.borrowers.get(addr, 0) - 1
            if n <= 0:
                entry.borrowers.pop(addr, None)
            else:
                entry.borrowers[addr] = n
            self._maybe_free(oid, entry)

    def _maybe_free(self, oid: bytes, entry: _Entry) -> None:
        if entry.local > 0 or entry.borrowers:
            return
        if entry.actor:
            self.owned.pop(oid, None)
            self._on_actor_out_of_scope(oid)
            return
        if entry.value is None:
            entry.abandoned = True  # freed when its task finishes
            return
        self.owned.pop(oid, None)
        self._release_value(oid, entry)

    def _release_value(self, oid: bytes, entry: _Entry) -> None:
        self._forget_mapping(oid)
        value = entry.value
        if value is not None and value[0] == STORED:
            self._send_quiet(self.node_addr, (Msg.STORE_FREE, [oid]))
        if entry.holder is not None:
            self._send_quiet(entry.holder, (Msg.RELEASE_CONTAINED, oid))
        entry.contained = None

    def _on_log(self, stream: str, text: str) -> None:
        sink = self.log_sink
        if sink is not None:
            sink(stream, text)

    def _on_actor_out_of_scope(self, actor_id: bytes) -> None:
        """The last handle of an actor this process created went away: let it exit
        once the calls already submitted to it are done."""
        client = self.actors.get(actor_id)
        if client is None or client.status is ActorStatus.DEAD:
            return
        client.exit_pending = True
        if client.status is ActorStatus.ALIVE and not client.queued:
            self._send_exit(client)

    def _send_exit(self, client: _ActorClient) -> None:
        assert client.exec_addr is not None
        self._send_quiet(client.exec_addr, (Msg.ACTOR_EXIT,))

    def _send_quiet(self, addr: str, msg: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self.out.send(addr, msg)
        except Exception:
            pass

    def _on_release_contained(self, oid: bytes) -> None:
        with self.lock:
            self.held_for_caller.pop(oid, None)

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

    # ------------------------------------------------------------------ object values
    def new_owned(self, value: tuple[Any, ...] | None = None) -> bytes:
        oid = new_id()
        entry = _Entry()
        entry.value = value
        with self.lock:
            self.owned[oid] = entry
        return oid

    def _arena_view(self) -> mmap.mmap:
        if self._arena is None:
            fd = os.open(self.arena_path, os.O_RDWR)
            try:
                self._arena = mmap.mmap(fd, self.arena_capacity)
            finally:
                os.close(fd)
        return self._arena

    def store_value(self, oid: bytes, meta: bytes, buffers: list[Any],
                    owner: str | None = None) -> tuple[Any, ...]:
        """Return the representation of a serialized value: inline, or written to the store."""
        if len(meta) + buffers_size(buffers) < INLINE_THRESHOLD_BYTES:
            return (INLINE, meta, inline_buffers(buffers))
        raws = [b.raw() for b in buffers]
        size = layout_size(meta, raws)
        offset = self.request_node(Msg.STORE_ALLOC, oid, size, owner or self.ctl_addr,
                                   what=f"space for a {size}-byte object in the object store")
        view = memoryview(self._arena_view())
        try:
            write_object(view[offset:offset + size], meta, raws)
        finally:
            view.release()
        self.out.send(self.node_addr, (Msg.STORE_SEAL, oid))
        return (STORED, self.node_id, size)

    def put(self, value: Any) -> ObjectRef:
        meta, buffers, refs = dumps(value, "the value passed to put()")
        oid = new_id()
        entry = _Entry()
        entry.contained = refs or None
        with self.lock:
            self.owned[oid] = entry
        entry.value = self.store_value(oid, meta, buffers)
        return ObjectRef(oid, self.ctl_addr)

    def materialize(self, oid: bytes, value: tuple[Any, ...]) -> Any:
        kind = value[0]
        if kind == INLINE:
            return loads(value[1], value[2])
        if kind == ERROR:
            err = loads(value[1], value[2])
            raise err
        return self._load_stored(oid)

    def _load_stored(self, oid: bytes) -> Any:
        with self.lock:
            mm = self._mapped.get(oid)
            if mm is not None:
                self._mapped.move_to_end(oid)
        if mm is None:
            mm = self._pin_and_map(oid)
        meta, buffers = read_object(memoryview(mm))
        return loads(meta, buffers)

    def _pin_and_map(self, oid: bytes) -> _MappedObject:
        """Pin a stored object and map it; small enough mappings stay cached (and pinned)
        while this process holds refs to the object, so repeated gets skip the node."""
        offset, size = self.request_node(Msg.STORE_PIN, oid, what=f"object {oid.hex()}")
        try:
            fd = os.open(self.arena_path, os.O_RDONLY)
            try:
                mm = _MappedObject(fd, size, offset=offset, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        except BaseException:
            self._send_quiet(self.node_addr, (Msg.STORE_UNPIN, oid))
            raise
        weakref.finalize(mm, self._send_quiet, self.node_addr, (Msg.STORE_UNPIN, oid))
        if size <= self._mapped_cap:
            with self.lock:
                if oid in self.owned or oid in self.borrowed:
                    self._mapped[oid] = mm
                    self._mapped_bytes += size
                    while self._mapped_bytes > self._mapped_cap:
                        _, old = self._mapped.popitem(last=False)
                        self._mapped_bytes -= len(old)
        return mm

    def _forget_mapping(self, oid: bytes) -> None:
        mm = self._mapped.pop(oid, None)
        if mm is not None:
            self._mapped_bytes -= len(mm)

    # ------------------------------------------------------------------ waiting for values
    def _lookup(self, ref: ObjectRef) -> tuple[Any, ...] | None:
        """The value repr if known; else registers nothing. Caller holds the lock."""
        oid = ref.id
        entry = self.owned.get(oid)
        if entry is not None:
            return entry.value
        b = self.borrowed.get(oid)
        if b is not None:
            return b.value
        if ref.owner_address == self.ctl_addr:
            return _error_repr(ObjectLostError(oid.hex(), "it was already freed"))
        return None

    def _on_ready(self, ref: ObjectRef, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once ``ref``'s value is known; True if it already is."""
        oid = ref.id
        with self.lock:
            entry = self.owned.get(oid)
            if entry is not None:
                if entry.value is not None:
                    return True
                entry.waiters.append(callback)
                return False
            if ref.owner_address == self.ctl_addr:
                return True  # freed: _lookup reports it lost
            b = self.borrowed.get(oid)
            if b is None:  # a ref made without registering (internal use only)
                b = self.borrowed[oid] = _Borrowed(ref.owner_address)
            if b.value is not None:
                return True
            b.waiters.append(callback)
            if not b.requested:
                b.requested = True
                self._send_quiet(ref.owner_address,
                                 (Msg.GET_OBJECT, oid, self.ctl_addr))
            return False

    def _on_get_object(self, oid: bytes, reply_to: str) -> None:
        with self.lock:
            entry = self.owned.get(oid)
            if entry is None:
                value = _error_repr(ObjectLostError(oid.hex(), "its owner already freed it"))
            elif entry.value is None:
                entry.waiters.append(lambda: self._send_object(oid, reply_to))
                return
            else:
                value = entry.value
        self._send_quiet(reply_to, (Msg.OBJECT_VALUE, oid, value))

    def _send_object(self, oid: bytes, reply_to: str) -> None:
        entry = self.owned.get(oid)
        value = entry.value if entry is not None else None
        if value is None:
            value = _error_repr(ObjectLostError(oid.hex(), "its owner already freed it"))
        self._send_quiet(reply_to, (Msg.OBJECT_VALUE, oid, value))

    def _on_object_value(self, oid: bytes, value: tuple[Any, ...]) -> None:
        with self.lock:
            b = self.borrowed.get(oid)
            if b is None or b.value is not None:
                return
            b.value = value
            waiters, b.waiters = b.waiters, []
        self._fire(waiters)

    def _fire(self, waiters: list[Callable[[], None]]) -> None:
        for w in waiters:
            w()
        waiters.clear()

    def wait_refs(self, refs: Sequence[ObjectRef], num_returns: int,
                  timeout: float | None) -> list[bool]:
        """Block until ``num_returns`` of ``refs`` have values; return which are ready."""
        ready = [False] * len(refs)
        cond = threading.Condition(threading.Lock())
        count = [0]

        def make_cb(i: int) -> Callable[[], None]:
            def cb() -> None:
                with cond:
                    if not ready[i]:
                        ready[i] = True
                        count[0] += 1
                        cond.notify()
            return cb

        for i, ref in enumerate(refs):
            if self._on_ready(ref, make_cb(i)):
                with cond:
                    if not ready[i]:
                        ready[i] = True
                        count[0] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            if count[0] >= num_returns:
                return list(ready)
        self._blocking(True)
        try:
            with cond:
                while count[0] < num_returns:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    cond.wait(remaining)
                return list(ready)
        finally:
            self._blocking(False)

    def _blocking(self, blocked: bool) -> None:
        if self.blocked_msg is None:
            return
        with self.lock:
            self._blocked_depth += 1 if blocked else -1
            edge = self._blocked_depth == (1 if blocked else 0)
        if edge:
            self._send_quiet(self.node_addr, self.blocked_msg[0 if blocked else 1])

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        with self.lock:
            value = self._lookup(ref)
        if value is None:
            ev = threading.Event()
            if self._on_ready(ref, ev.set):
                done = True
            else:
                self._blocking(True)
                try:
                    done = ev.wait(timeout)
                finally:
                    self._blocking(False)
            if not done:
                raise GetTimeoutError(
                    f"get() timed out after {timeout} s waiting for {ref!r}; the task that "
                    "makes it is still queued or running"
                )
            with self.lock:
                value = self._lookup(ref)
        assert value is not None
        return self.materialize(ref.id, value)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        if len(refs) == 1:
            return [self.get_one(refs[0], timeout)]
        ready = self.wait_refs(refs, len(refs), timeout)
        if not all(ready):
            missing = [r for r, ok in zip(refs, ready, strict=False) if not ok]
            raise GetTimeoutError(
                f"get() timed out after {timeout} s: {len(missing)} of {len(refs)} objects "
                f"are not ready (first: {missing[0]!r})"
            )
        out = []
        for ref in refs:
            with self.lock:
                value = self._lookup(ref)
            assert value is not None
            out.append(self.materialize(ref.id, value))
        return out

    def set_result(self, oid: bytes, value: tuple[Any, ...], holder: str | None = None) -> None:
        with self.lock:
            entry = self.owned.get(oid)
            if entry is None or entry.value is not None:
                if holder is not None:
                    self._send_quiet(holder, (Msg.RELEASE_CONTAINED, oid))
                if value[0] == STORED and entry is None:
                    self._send_quiet(self.node_addr, (Msg.STORE_FREE, [oid]))
                return
            entry.value = value
            entry.holder = holder
            waiters, entry.waiters = entry.waiters, []
            if entry.abandoned:
                self.owned.pop(oid, None)
                self._release_value(oid, entry)
        self._fire(waiters)

    # ------------------------------------------------------------------ argument encoding
    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
                    ) -> tuple[tuple[Any, ...], list[ObjectRef], list[ObjectRef], list[Any]]:
        """Serialize call arguments.

        Returns (payload, top-level refs, nested refs, descriptors of top-level refs).
        Top-level refs are replaced by placeholders and passed as values; large
        arguments go to the object store once (the payload then names the stored copy).
        """
        arg_refs: list[ObjectRef] = []

        def swap(v: Any) -> Any:
            if isinstance(v, ObjectRef):
                arg_refs.append(v)
                return _ArgRef(len(arg_refs) - 1)
            return v

        if not args and not kwargs:
            return _NO_ARGS, [], [], []
        if args:
            args = tuple(swap(a) for a in args)
        if kwargs:
            kwargs = {k: swap(v) for k, v in kwargs.items()}
        meta, buffers, nested = dumps((args, kwargs), what)
        if len(meta) + buffers_size(buffers) < INLINE_THRESHOLD_BYTES:
            payload: tuple[Any, ...] = (meta, inline_buffers(buffers))
        else:
            # Large arguments: store once, owned by the caller, freed with the spec.
            ref = self._put_serialized(meta, buffers, nested)
            nested = [ref]
            payload = (None, ref.id, ref.owner_address)
        return payload, arg_refs, nested, []

    def _put_serialized(self, meta: bytes, buffers: list[Any], refs: list[Any]) -> ObjectRef:
        oid = new_id()
        entry = _Entry()
        entry.contained = refs or None
        with self.lock:
            self.owned[oid] = entry
        entry.value = self.store_value(oid, meta, buffers)
        return ObjectRef(oid, self.ctl_addr)

    def describe_arg_refs(self, arg_refs: list[ObjectRef]) -> list[tuple[Any, ...]]:
        """For each top-level ref argument: (id, owner, value repr if already known here)."""
        if not arg_refs:
            return []
        out = []
        with self.lock:
            for ref in arg_refs:
                out.append((ref.id, ref.owner_address, self._lookup(ref)))
        return out

    def resolve_args(self, payload: tuple[Any, ...], descs: list[tuple[Any, ...]]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Worker side: rebuild (args, kwargs), fetching the values of ref arguments."""
        meta = payload[0]
        if meta is None:
            big = ObjectRef(payload[1], payload[2])
            args, kwargs = self.get_one(big, None)
        else:
            args, kwargs = loads(meta, payload[1])
        if not descs:
            return args, kwargs
        values = []
        for oid, owner, value in descs:
            if value is None:
                values.append(self.get_one(ObjectRef(oid, owner), None))
            else:
                values.append(self.materialize(oid, value))

        def sub(v: Any) -> Any:
            return values[v.index] if isinstance(v, _ArgRef) else v

        return tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}

    # ------------------------------------------------------------------ normal tasks
    def submit_task(self, spec: TaskSpec) -> None:
        deps = [r for r in spec.arg_refs if r.owner_address == self.ctl_addr]
        with self.lock:
            pending = [r for r in deps if (e := self.owned.get(r.id)) is not None
                       and e.value is None]
            spec.deps = len(pending)
            for r in pending:
                self.owned[r.id].waiters.append(lambda s=spec: self._dep_ready(s))
            if spec.deps == 0:
                self._enqueue(spec)

    def _dep_ready(self, spec: TaskSpec) -> None:
        with self.lock:
            spec.deps -= 1
            if spec.deps == 0:
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
        while q.pending and q.idle:
            self._push(q, q.idle.pop(), q.pending.popleft())
        if not q.pending:
            return
        cap = max(2, int(self.cluster_resources.get("CPU", 1)) * 2)
        while q.requesting < min(len(q.pending), cap):
            q.requesting += 1
            lease_id = new_id()
            self.leases[lease_id] = (q, None)
            self._send_quiet(self.node_addr, (Msg.REQUEST_LEASE, lease_id, self.ctl_addr,
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
            spec.return_id, self.ctl_addr, lease.gpu_ids, spec.attempt))

    def _on_lease_granted(self, lease_id: bytes, worker_id: bytes, exec_addr: str,
                          ctl_addr: str, gpu_ids: tuple[int, ...]) -> None:
        with self.lock:
            q, _ = self.leases.get(lease_id, (None, None))
            if q is None:
                self._send_quiet(self.node_addr, (Msg.RETURN_LEASE, lease_id))
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
        self._send_quiet(self.node_addr, (Msg.RETURN_LEASE, lease.lease_id))

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
        self.set_result(spec.return_id, value, holder)
        spec.arg_refs = []
        spec.held_refs = []

    def _on_task_done(self, task_id: bytes, return_id: bytes, value: tuple[Any, ...],
                      holder: str | None) -> None:
        with self.lock:
            client = self.call_owner.pop(task_id, None)
            if client is not None:
                call = client.inflight.pop(task_id, None)
                if call is not None:
                    call.arg_refs = []
                    call.held_refs = []
                    self.set_result(return_id, value, holder)
                elif holder is not None:
                    self._send_quiet(holder, (Msg.RELEASE_CONTAINED, return_id))
                return
            q, lease = self.running.pop(task_id, (None, None))
            if q is None or lease is None:
                if holder is not None:
                    self._send_quiet(holder, (Msg.RELEASE_CONTAINED, return_id))
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
                    if spec.return_id == ref.id:
                        q.pending.remove(spec)
                        spec.cancelled = True
                        self._finish_task(spec, _error_repr(TaskCancelledError(spec.name)))
                        return
            for task_id, (_q, lease) in self.running.items():
                spec = lease.task
                if spec is not None and spec.return_id == ref.id:
                    spec.cancelled = True
                    if force:
                        self._send_quiet(self.node_addr, (Msg.KILL_WORKER, lease.worker_id))
                    else:
                        self._send_quiet(lease.ctl_addr, (Msg.CANCEL_TASK, task_id))
                    return

    # ------------------------------------------------------------------ actors
    def actor_client(self, actor_id: bytes, name: str, max_task_retries: int,
                     subscribe: bool) -> _ActorClient:
        with self.lock:
            client = self.actors.get(actor_id)
            if client is None:
                client = self.actors[actor_id] = _ActorClient(actor_id, name, max_task_retries)
                if subscribe:
                    self._send_quiet(self.node_addr,
                                     (Msg.SUBSCRIBE_ACTOR, actor_id, self.ctl_addr))
            return client

    def call_actor(self, client: _ActorClient, call: _Call) -> None:
        with self.lock:
            if client.status is ActorStatus.DEAD:
                self.set_result(call.return_id,
                                _error_repr(ActorDiedError(client.name, client.cause)))
                return
            if client.status is ActorStatus.ALIVE and not client.queued:
                self._send_call(client, call)
            else:
                client.queued.append(call)

    def _send_call(self, client: _ActorClient, call: _Call) -> None:
        client.inflight[call.task_id] = call
        self.call_owner[call.task_id] = client
        descs = self.describe_arg_refs(call.arg_refs)
        assert client.exec_addr is not None
        self._send_quiet(client.exec_addr, (Msg.ACTOR_CALL, call.task_id, call.method,
                                            call.args, descs, call.return_id, self.ctl_addr))

    def _on_actor_state(self, actor_id: bytes, status: str, exec_addr: str | None,
                        cause: str) -> None:
        failed: list[_Call] = []
        with self.lock:
            client = self.actors.get(actor_id)
            if client is None:
                return
            new = ActorStatus(status)
            if client.exec_addr and client.exec_addr != exec_addr:
                self.out.forget(client.exec_addr)
            client.status, client.exec_addr, client.cause = new, exec_addr, cause
            if new in (ActorStatus.RESTARTING, ActorStatus.DEAD):
                # Calls that were in flight died with the process.
                retry: list[_Call] = []
                for call in client.inflight.values():
                    self.call_owner.pop(call.task_id, None)
                    if new is ActorStatus.RESTARTING and call.retries_left != 0:
                        call.retries_left -= 1
                        retry.append(call)
                    else:
                        failed.append(call)
                client.inflight.clear()
                client.queued.extendleft(reversed(retry))
            if new is ActorStatus.DEAD:
                failed.extend(client.queued)
                client.queued.clear()
                client.creation_refs = client.restart_refs = []
            elif new is ActorStatus.ALIVE:
                client.creation_refs = client.restart_refs
                while client.queued:
                    self._send_call(client, client.queued.popleft())
                if client.exit_pending:
                    self._send_exit(client)
            for call in failed:
                self.set_result(call.return_id, _error_repr(ActorDiedError(client.name, cause)))


_NO_ARGS = (pickle.dumps(((), {}), protocol=5), [])


def _error_repr(err: BaseException) -> tuple[Any, ...]:
    meta, buffers, _ = dumps(err, "an error")
    return (ERROR, meta, inline_buffers(buffers))


def error_value(err: BaseException) -> tuple[Any, ...]:
    return _error_repr(err)


def task_error_value(name: str, exc: BaseException) -> tuple[Any, ...]:
    """Wrap an exception raised by user code into a TaskError value."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskError):
        err: BaseException = exc
    else:
        try:
            dumps(exc)
            cause: BaseException | None = exc
        except Exception:
            cause = RuntimeSystemError(f"{type(exc).__name__}: {exc} (could not be pickled)")
        err = TaskError(name, tb, cause, os.getpid()).as_instanceof_cause()
    return _error_repr(err)
