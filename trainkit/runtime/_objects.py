"""Ownership and values: reference counts, borrowers, the object store client, get/wait.

Part of the core worker (see ``_core.CoreWorker``, which combines the mixins and defines
the shared state they use: ``lock``, ``owned``, ``borrowed``, ``out``, ``node_addr``...).
An owned object lives while its owner holds ``ObjectRef`` instances to it or another
process borrows it (BORROW/RELEASE); a serialized copy of a ref is kept alive by the
process that serialized it for as long as the copy may be read.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.exceptions import TaskError
from trainkit.runtime._copy_pool import CopyPool
from trainkit.runtime._object_layout import layout_size
from trainkit.runtime._object_layout import read_object
from trainkit.runtime._object_layout import write_object
from trainkit.runtime._protocol import ERROR
from trainkit.runtime._protocol import INLINE
from trainkit.runtime._protocol import STORED
from trainkit.runtime._protocol import Msg
from trainkit.runtime._protocol import new_id
from trainkit.runtime._refs import ObjectRef
from trainkit.runtime._serialization import INLINE_THRESHOLD_BYTES
from trainkit.runtime._serialization import buffers_size
from trainkit.runtime._serialization import dumps
from trainkit.runtime._serialization import inline_buffers
from trainkit.runtime._serialization import loads
from trainkit.runtime._transport import Outbox


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


def _block(arena: mmap.mmap, offset: int, size: int) -> Any:
    """A view of one object's range of this process's arena mapping.

    Readers share the one mapping (no mmap per read, so pages this process touched before
    fault no more); the returned ctypes block is the object whose lifetime says when every
    view of the object is gone, so the pin can be released.
    """
    return (ctypes.c_char * size).from_buffer(arena, offset)


class CoreState:
    """The state the parts of the core worker share; ``CoreWorker.__init__`` sets it all."""

    session_dir: str
    node_addr: str
    control_addr: str
    node_id: str
    arena_path: str
    arena_capacity: int
    cluster_resources: dict[str, float]
    ctl_addr: str
    out: Outbox
    lock: threading.RLock
    owned: dict[bytes, _Entry]
    borrowed: dict[bytes, _Borrowed]
    actors: dict[bytes, Any]
    held_for_caller: dict[bytes, list[ObjectRef]]
    log_sink: Callable[[str, str], None] | None
    blocked_msg: tuple[tuple[Any, ...], tuple[Any, ...]] | None
    _blocked_depth: int
    _arena: mmap.mmap | None
    copy_pool: CopyPool
    _mapped: OrderedDict[bytes, Any]
    _mapped_bytes: int
    _mapped_cap: int
    _closed: bool

    def request_node(self, kind: int, *fields: Any, what: str,
                     timeout: float | None = 60.0) -> Any:
        raise NotImplementedError

    def request_control(self, kind: int, *fields: Any, what: str,
                        timeout: float | None = 60.0) -> Any:
        raise NotImplementedError

    def request_store(self, kind: int, *fields: Any, what: str,
                      timeout: float | None = 60.0) -> Any:
        raise NotImplementedError

    def send_store(self, msg: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def wait_event(self, ev: threading.Event, timeout: float | None) -> bool:
        return ev.wait(timeout)

    def _on_actor_out_of_scope(self, actor_id: bytes) -> None:
        raise NotImplementedError

    def actor_released(self, actor_id: bytes) -> bool:
        raise NotImplementedError

    def call_finished(self, client: Any) -> None:
        raise NotImplementedError

    def actor_reborrowed(self, actor_id: bytes) -> bool:
        raise NotImplementedError


class ObjectTableMixin(CoreState):
    """The objects this process owns or borrows, and reading/writing their values."""

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
            if b.count == 1 and not self.actor_reborrowed(oid):
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
            if b.count <= 0 and self.actor_released(oid):
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
            self._on_actor_out_of_scope(oid)  # see ActorCallerMixin
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
            self._send_quiet(self.node_addr, (Msg.STORE_FREE, [oid], value[1]))
        if entry.holder is not None:
            self._send_quiet(entry.holder, (Msg.RELEASE_CONTAINED, oid))
        entry.contained = None

    def _on_node_died(self, node_id: str, cause: str) -> None:
        """Objects whose only copy lived on a node that died are lost."""
        waiters: list[Callable[[], None]] = []
        with self.lock:
            for table in (self.owned, self.borrowed):
                for oid, item in table.items():
                    value = item.value
                    if value is not None and value[0] == STORED and value[1] == node_id:
                        item.value = _error_repr(ObjectLostError(
                            oid.hex(), f"the node that held it died ({cause})"))
                        waiters.extend(item.waiters)
                        item.waiters = []
        self._fire(waiters)

    def _on_log(self, stream: str, text: str) -> None:
        sink = self.log_sink
        if sink is not None:
            sink(stream, text)

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
        offset = self.request_store(Msg.STORE_ALLOC, oid, size, owner or self.ctl_addr,
                                    what=f"space for a {size}-byte object in the object store")
        view = memoryview(self._arena_view())
        try:
            write_object(view[offset:offset + size], meta, raws, self.copy_pool.copy)
        finally:
            view.release()
        self.send_store((Msg.STORE_SEAL, oid))
        return (STORED, self.node_id, size)

    def put(self, value: Any) -> ObjectRef:
        return self._put_serialized(*dumps(value, "the value passed to put()"))

    def materialize(self, oid: bytes, value: tuple[Any, ...]) -> Any:
        kind = value[0]
        if kind == INLINE:
            return loads(value[1], value[2])
        if kind == ERROR:
            err = loads(value[1], value[2])
            raise err
        return self._load_stored(oid, value[1], value[2])

    def _load_stored(self, oid: bytes, node_id: str, size: int) -> Any:
        with self.lock:
            mm = self._mapped.get(oid)
            if mm is not None:
                self._mapped.move_to_end(oid)
        if mm is None:
            mm = self._pin_and_map(oid, node_id, size)
        meta, buffers = read_object(memoryview(mm).cast("B").toreadonly())
        return loads(meta, buffers)

    def _pin_and_map(self, oid: bytes, node_id: str, size: int) -> Any:
        """Pin a stored object and view it; small enough views stay cached (and pinned)
        while this process holds refs to the object, so repeated gets skip the node. An
        object another node holds is copied here first (the node pulls it)."""
        location, size = self.request_store(Msg.STORE_PIN, oid, node_id, size,
                                            what=f"object {oid.hex()}", timeout=600.0)

        def unpin() -> None:
            # On the store connection of the thread that drops the last view, so the node
            # reads it before that thread's next put or get needs the range (issue 13, 5).
            if not self._closed:
                try:
                    self.send_store((Msg.STORE_UNPIN, oid))
                except Exception:
                    pass

        try:
            if isinstance(location, str):
                # A file of its own (a fallback allocation, or a spill file read in place),
                # open as /proc/<node pid>/fd/<n>: mapped copy-on-write, still zero-copy.
                from trainkit.runtime._object_layout import map_object_file

                mm = _block(map_object_file(location, size), 0, size)
            else:
                mm = _block(self._arena_view(), location, size)
        except BaseException:
            unpin()
            raise
        weakref.finalize(mm, unpin)
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
            self._send_quiet(self.control_addr, self.blocked_msg[0 if blocked else 1])

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

    def set_results(self, return_id: bytes | tuple[bytes, ...], value: Any,
                    holder: str | None = None) -> None:
        """A call's result: one value, or for ``num_returns > 1`` a list of values (an
        error value is the result of every return)."""
        if not isinstance(return_id, tuple):
            self.set_result(return_id, value, holder)
        elif isinstance(value, list):
            for oid, v in zip(return_id, value, strict=True):
                self.set_result(oid, v, holder)
        else:
            for oid in return_id:
                self.set_result(oid, value, holder)

    def release_contained(self, holder: str | None,
                          return_id: bytes | tuple[bytes, ...]) -> None:
        """Nobody will read a result: its holder may drop the refs it keeps for it."""
        if holder is not None:
            for oid in return_ids(return_id):
                self._send_quiet(holder, (Msg.RELEASE_CONTAINED, oid))

    def set_result(self, oid: bytes, value: tuple[Any, ...], holder: str | None = None) -> None:
        with self.lock:
            entry = self.owned.get(oid)
            if entry is None or entry.value is not None:
                if holder is not None:
                    self._send_quiet(holder, (Msg.RELEASE_CONTAINED, oid))
                if value[0] == STORED and entry is None:
                    self._send_quiet(self.node_addr, (Msg.STORE_FREE, [oid], value[1]))
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
                    ) -> tuple[tuple[Any, ...], list[ObjectRef], list[ObjectRef]]:
        """Serialize call arguments.

        Returns (payload, top-level refs, refs nested in the arguments).
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
            return _NO_ARGS, [], []
        if args:
            args = tuple(swap(a) for a in args)
        if kwargs:
            kwargs = {k: swap(v) for k, v in kwargs.items()}
        meta, buffers, nested = dumps((args, kwargs), what)
        if len(meta) + buffers_size(buffers) < INLINE_THRESHOLD_BYTES:
            payload: tuple[Any, ...] = (meta, inline_buffers(buffers))
        else:
            # Large arguments: store once, owned by the caller, freed with the spec. The
            # payload names the stored copy itself, so the worker reads it straight from the
            # store: asking the owner would be a round trip during which the worker counts as
            # blocked and lends its CPU (with a few calls in flight, that started workers).
            ref = self._put_serialized(meta, buffers, nested)
            nested = [ref]
            with self.lock:
                stored = self.owned[ref.id].value
            payload = (None, ref.id, stored)
        return payload, arg_refs, nested

    def _put_serialized(self, meta: bytes, buffers: list[Any], refs: list[Any]) -> ObjectRef:
        """Own a serialized value; the refs inside it stay alive as long as it does."""
        oid = new_id()
        entry = _Entry()
        entry.contained = refs or None
        with self.lock:
            self.owned[oid] = entry
        entry.value = self.store_value(oid, meta, buffers)
        return ObjectRef(oid, self.ctl_addr)

    def failed_arg(self, arg_refs: list[ObjectRef]) -> tuple[Any, ...] | None:
        """The error value of the first top-level argument owned here that holds one."""
        with self.lock:
            for ref in arg_refs:
                value = self._lookup(ref)
                if value is not None and value[0] == ERROR:
                    return value
        return None

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
            args, kwargs = self.materialize(payload[1], payload[2])
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


_NO_ARGS: tuple[Any, ...] = (pickle.dumps(((), {}), protocol=5), [])


def return_ids(return_id: bytes | tuple[bytes, ...]) -> tuple[bytes, ...]:
    return return_id if isinstance(return_id, tuple) else (return_id,)


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
