"""The store client: this process's side of its node's shared-memory object store.

It writes large values into the store (STORE_ALLOC, write, STORE_SEAL), reads stored ones
zero-copy (STORE_PIN, then a view of the one arena mapping this process keeps; the pin is
released when the last view is gone), and caches views of small-enough objects while this
process holds refs to them, so repeated gets skip the node. Store requests go over the
node's unix socket when there is one (answered on the calling thread), else through the
node's inbox.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.core.requests import Pending
from trainkit.runtime.core.requests import RequestTracker
from trainkit.runtime.core.requests import no_answer
from trainkit.runtime.core.values import ERROR
from trainkit.runtime.core.values import INLINE
from trainkit.runtime.core.values import STORED
from trainkit.runtime.core.values import Value
from trainkit.runtime.store.copy_pool import CopyPool
from trainkit.runtime.store.object_layout import layout_size
from trainkit.runtime.store.object_layout import map_object_file
from trainkit.runtime.store.object_layout import read_object
from trainkit.runtime.store.object_layout import write_object
from trainkit.runtime.wire.local_channel import LocalChannel
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.serialization import INLINE_THRESHOLD_BYTES
from trainkit.runtime.wire.serialization import buffers_size
from trainkit.runtime.wire.serialization import inline_buffers
from trainkit.runtime.wire.serialization import loads

RequestFn = Callable[..., Any]


def _block(arena: mmap.mmap, offset: int, size: int) -> Any:
    """A view of one object's range of this process's arena mapping.

    Readers share the one mapping (no mmap per read, so pages this process touched before
    fault no more); the returned ctypes block is the object whose lifetime says when every
    view of the object is gone, so the pin can be released.
    """
    return (ctypes.c_char * size).from_buffer(arena, offset)


class StoreClient:
    """Reads and writes of this process's node's object store.

    Args:
        node_id: the node whose store this is.
        arena_path, arena_capacity: the store's arena, mapped on first use.
        store_socket: the node's unix socket for store requests ("" for none).
        requests: the core's request ids (shared, so replies never collide).
        request_node: the core's request through the node's inbox (the fallback).
        send_node: the core's one-way message to the node.
        lock: the core's lock (the view cache is touched under it).
        is_held: whether this process still holds refs to an object (called under lock).
        session: named in errors.
    """

    def __init__(self, *, node_id: str, arena_path: str, arena_capacity: int,
                 store_socket: str, requests: RequestTracker, request_node: RequestFn,
                 send_node: Callable[[tuple[Any, ...]], None], lock: threading.RLock,
                 is_held: Callable[[bytes], bool], session: str) -> None:
        self.node_id = node_id
        self.arena_path = arena_path
        self.arena_capacity = arena_capacity
        self.channel = LocalChannel(store_socket) if store_socket else None
        self.requests = requests
        self.request_node = request_node
        self.send_node = send_node
        self.lock = lock
        self.is_held = is_held
        self.session = session
        self.copy_pool = CopyPool()
        self._arena: mmap.mmap | None = None
        self._mapped: OrderedDict[bytes, Any] = OrderedDict()
        self._mapped_bytes = 0
        self._mapped_cap = arena_capacity // 20
        self.closed = False

    def start(self, copy_threads: bool = True) -> None:
        """``copy_threads``: start the threads that share large copies now (a driver);
        otherwise the first large write starts them (a worker: most never write one)."""
        if copy_threads:
            self.copy_pool.start()

    def close(self) -> None:
        self.closed = True
        if self.channel is not None:
            self.channel.close()
        self.copy_pool.close()

    # ------------------------------------------------------------------ requests
    def request(self, kind: int, *fields: Any, what: str, timeout: float | None) -> Any:
        """A request to this machine's object store, answered on the calling thread."""
        channel = self.channel
        if channel is None:
            return self.request_node(kind, *fields, what=what, timeout=timeout)
        try:
            reply = channel.request(kind, self.requests.next_id(), fields, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            # No store socket to reach (another filesystem view): the inbox works anywhere.
            self.channel = None
            return self.request_node(kind, *fields, what=what, timeout=timeout)
        except OSError as e:
            raise RuntimeSystemError(
                f"{what} failed: the trainkit node service closed its store connection "
                f"({e}); it has stopped or crashed (session {self.session})"
            ) from None
        if reply is None:
            raise no_answer(what, timeout, self.session)
        done = Pending("", what, None)
        done.ok, done.payload = reply
        return done.value()

    def send(self, msg: tuple[Any, ...]) -> None:
        """A one-way store message, on the connection this thread's requests used."""
        channel = self.channel
        if channel is not None:
            try:
                channel.send(msg)
                return
            except OSError:
                pass
        self.send_node(msg)

    def _unpin(self, oid: bytes) -> None:
        """On the store connection of the thread that drops the last view, so the node
        reads it before that thread's next put or get needs the range."""
        if self.closed:
            return
        try:
            self.send((Msg.STORE_UNPIN, oid))
        except Exception:
            pass

    # ------------------------------------------------------------------ writing
    def _arena_view(self) -> mmap.mmap:
        if self._arena is None:
            fd = os.open(self.arena_path, os.O_RDWR)
            try:
                self._arena = mmap.mmap(fd, self.arena_capacity)
            finally:
                os.close(fd)
        return self._arena

    def store_value(self, oid: bytes, meta: bytes, buffers: list[Any], owner: str,
                    timeout: float | None) -> Value:
        """The value of a serialized object: inline if small, else written to the store."""
        if len(meta) + buffers_size(buffers) < INLINE_THRESHOLD_BYTES:
            return (INLINE, meta, inline_buffers(buffers))
        raws = [b.raw() for b in buffers]
        size = layout_size(meta, raws)
        location = self.request(Msg.STORE_ALLOC, oid, size, owner, True, timeout=timeout,
                                what=f"space for a {size}-byte object in the object store")
        if isinstance(location, str):
            # No arena range could be made: a file of its own (/proc/<node pid>/fd/<n>).
            mm = map_object_file(location, size, writable=True)
            view = memoryview(mm)
            try:
                write_object(view, meta, raws, self.copy_pool.copy)
            finally:
                view.release()
                mm.close()
        else:
            view = memoryview(self._arena_view())
            try:
                write_object(view[location:location + size], meta, raws, self.copy_pool.copy)
            finally:
                view.release()
        self.send((Msg.STORE_SEAL, oid))
        return (STORED, self.node_id, size)

    # ------------------------------------------------------------------ reading
    def materialize(self, oid: bytes, value: Value) -> Any:
        """The Python value of ``value`` (an error value is raised)."""
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
        while this process holds refs to the object. An object another node holds is
        copied here first (the node pulls it)."""
        location, size = self.request(Msg.STORE_PIN, oid, node_id, size,
                                      what=f"object {oid.hex()}", timeout=600.0)
        try:
            if isinstance(location, str):
                # A file of its own (a fallback allocation, or a spill file read in place),
                # open as /proc/<node pid>/fd/<n>: mapped copy-on-write, still zero-copy.
                mm = _block(map_object_file(location, size), 0, size)
            else:
                mm = _block(self._arena_view(), location, size)
        except BaseException:
            self._unpin(oid)
            raise
        weakref.finalize(mm, self._unpin, oid)
        if size <= self._mapped_cap:
            with self.lock:
                if self.is_held(oid):
                    self._mapped[oid] = mm
                    self._mapped_bytes += size
                    while self._mapped_bytes > self._mapped_cap:
                        _, old = self._mapped.popitem(last=False)
                        self._mapped_bytes -= len(old)
        return mm

    def forget_mapping(self, oid: bytes) -> None:
        """This process no longer holds refs to ``oid``: drop its cached view (caller holds
        the core's lock)."""
        mm = self._mapped.pop(oid, None)
        if mm is not None:
            self._mapped_bytes -= len(mm)
