"""The node's shared-memory object store: one memfd arena, spilled to disk when full.

Who does what (DESIGN.md, lessons 3 and 4):

- The node service owns a :class:`SharedMemoryStore`: it creates the arena, decides
  where each object goes (:class:`~trainkit.runtime.store.allocator.ArenaAllocator`), spills and
  restores, and frees an object when its owner says so or dies.
- Writers (driver, workers) map the whole arena once and write an object into the range
  :meth:`SharedMemoryStore.allocate` returned, then ask the node service to ``seal`` it.
- Readers ``pin`` an object, map just its range, read it without copying
  (:mod:`trainkit.runtime.store.object_layout`), and ``unpin`` when the last view of it is gone.
  A pinned object is never spilled and its range never reused, so readers need no locks.

Where an object goes, cheapest first:

1. a free range of the arena (the hot path: one first-fit lookup);
2. a range made free by spilling the cheapest run of adjacent unpinned objects
   (:func:`~trainkit.runtime.store.spill_policy.cheapest_hole`), never more than that run;
3. when pinned objects leave no range that spilling could make large enough (readers pinning
   every other object, say), a *fallback allocation*: a file of its own in ``fallback_dir``,
   on disk, that writers and readers map instead of the arena, still zero-copy (Ray's plasma
   store does the same). Its location is the file's path where an arena object has an
   offset. A spilled object that cannot be restored into the arena is read straight from its
   spill file the same way.

Nothing it makes has a name (issue 13, leftovers): the arena is a memfd and every spill or
fallback file is created unnamed (``O_TMPFILE``; or unlinked the moment it is made where the
file system lacks that). The store holds each one's descriptor, and other processes open it
as ``/proc/<node pid>/fd/<n>`` (the paths it hands out). So when every process is killed
at once the kernel frees it all: nothing is left in /dev/shm or /tmp.

Objects never disappear on their own: spilling moves bytes to disk and back, and only
:meth:`SharedMemoryStore.free` removes an object. Only an object larger than the whole store,
or one that neither the arena nor the disk can hold, gets an
:class:`~trainkit.exceptions.OutOfMemoryError`, which says why and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import mmap
import os
import resource
import tempfile
from collections import OrderedDict
from typing import Final

from trainkit.exceptions import OutOfMemoryError
from trainkit.exceptions import TrainkitInternalError
from trainkit.runtime.store.allocator import ArenaAllocator
from trainkit.runtime.store.spill_policy import Segment
from trainkit.runtime.store.spill_policy import cheapest_hole
from trainkit.runtime.store.spill_policy import largest_hole

__all__ = ["Location", "ObjectState", "SharedMemoryStore"]


Location = int | str
"""Where an object's bytes are: an offset in the arena file, or the path of the object's own
file (a fallback allocation, or a spill file read in place), mapped from its start."""


class ObjectState(enum.Enum):
    """Lifecycle of an object in the store.

    ``CREATED`` (allocated, being written) -> ``SEALED`` (immutable, readable) <-> ``SPILLED``
    (only on disk). ``free`` ends every state; a ``SEALED`` object that readers still pin
    moves to ``RELEASING`` and its range is released at the last ``unpin``.
    """

    CREATED = "created"
    SEALED = "sealed"
    SPILLED = "spilled"
    RELEASING = "releasing"
    FREED = "freed"

    @property
    def is_terminal(self) -> bool:
        """True once the object is gone from the store."""
        return self is ObjectState.FREED


_TRANSITIONS: Final[dict[ObjectState, frozenset[ObjectState]]] = {
    ObjectState.CREATED: frozenset({ObjectState.SEALED, ObjectState.FREED}),
    ObjectState.SEALED: frozenset({ObjectState.SPILLED, ObjectState.RELEASING, ObjectState.FREED}),
    ObjectState.SPILLED: frozenset({ObjectState.SEALED, ObjectState.FREED}),
    ObjectState.RELEASING: frozenset({ObjectState.FREED}),
    ObjectState.FREED: frozenset(),
}


@dataclasses.dataclass(slots=True, kw_only=True)
class _StoredObject:
    object_id: bytes
    size: int
    owner: str
    state: ObjectState = ObjectState.CREATED
    offset: int | None = None  # None while spilled or in a file of its own
    # The object's own (unnamed) file when it lives outside the arena; it may be its spill
    # file. Readers open it as ``/proc/<pid>/fd/<fd>``.
    fallback_fd: int | None = None
    pin_count: int = 0
    # The spill file stays valid after a restore (objects are immutable), so spilling the
    # same object again only releases its range instead of writing it to disk again.
    spill_fd: int | None = None


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def _unnamed_file(folder: str) -> int:
    """A new empty file in ``folder`` that no name points to: it goes with its last fd."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    # No O_TMPFILE on this file system: the name lives only between these two calls.
    fd, path = tempfile.mkstemp(prefix="trainkit-", dir=folder)
    os.unlink(path)
    return fd


def _raise_fd_limit() -> None:
    """One descriptor per spilled object: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SharedMemoryStore:
    """Node-side manager of one shared-memory arena; spills to disk when it is full.

    Lives in the node service process. Not thread-safe: the node service calls it from its
    one event loop. Clients never call it directly; they map the arena themselves
    (:func:`~trainkit.runtime.store.object_layout.map_range` of :attr:`arena_path`, a
    ``/proc/<pid>/fd/<n>`` path valid while this process lives) at the offsets it hands out.

    Memory: the arena (a memfd) is sparse; pages are committed on first write and kept after an
    object is freed, so the next object in that range is written at memcpy speed without
    page faults. The arena therefore holds at most ``capacity`` bytes of RAM.

    Args:
        name: the arena's name, for people: ``/proc/<pid>/maps`` shows ``memfd:<name>``. No
            file of that name is made.
        capacity: arena size in bytes (the node's ``object_store_memory``).
        spill_dir: directory for spilled objects, one unnamed file per object; created if
            missing (and then removed by :meth:`close`).
        fallback_dir: directory for fallback allocations (objects that no arena range can
            hold, one unnamed file each; created if missing), or None for none: such an
            object then gets an ``OutOfMemoryError``. It should be on disk, not in memory.

    Raises:
        ValueError: ``capacity`` is not positive.

    Example:
        >>> store = SharedMemoryStore("trainkit-doc", 2**20, "/tmp")
        >>> offset = store.allocate(b"id1", 1000, owner="driver")
        >>> store.seal(b"id1")
        >>> store.pin(b"id1")
        (0, 1000)
        >>> store.unpin(b"id1"); store.free(b"id1"); store.close()
    """

    def __init__(self, name: str, capacity: int, spill_dir: str, *,
                 fallback_dir: str | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"`capacity` is {capacity}, but must be > 0 bytes")
        self.name = name
        self.capacity = capacity
        self.spill_dir = spill_dir
        self.fallback_dir = fallback_dir
        # Page alignment, because readers mmap one object's range and mmap offsets must be
        # multiples of the allocation granularity.
        self._allocator = ArenaAllocator(capacity, alignment=mmap.ALLOCATIONGRANULARITY)
        # Every live object, least recently used first.
        self._objects: OrderedDict[bytes, _StoredObject] = OrderedDict()
        self._spilled_bytes_total = 0
        self._restored_bytes_total = 0
        self._closed = False
        self._fallback_bytes_total = 0
        self._made_dirs = [d for d in dict.fromkeys((spill_dir, fallback_dir))
                           if d is not None and not os.path.isdir(d)]
        for d in self._made_dirs:
            os.makedirs(d, exist_ok=True)
        _raise_fd_limit()
        self._fd_prefix = f"/proc/{os.getpid()}/fd/"
        fd = os.memfd_create(os.path.basename(name) or "trainkit-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, capacity)
            self._mmap = mmap.mmap(fd, capacity, access=mmap.ACCESS_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._arena_fd = fd
        #: Where other processes of this machine open the arena (while this one lives).
        self.arena_path = self._fd_path(fd)
        self._arena = memoryview(self._mmap)

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> SharedMemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the object API

    def allocate(self, object_id: bytes, size: int, owner: str) -> Location:
        """Reserve ``size`` bytes for a new object and return where to write it.

        The object is ``CREATED``: its owner is writing it, so it cannot be spilled until
        :meth:`seal`. When no free range is large enough, the cheapest run of adjacent
        sealed, unpinned objects is spilled to disk to make one; when pinned objects leave
        no such run, the object gets a file of its own in ``fallback_dir``.

        Args:
            object_id: the object's id (unique for the store's lifetime).
            size: bytes to reserve (>= 0), usually ``layout_size(meta, buffers)``.
            owner: the owning process; :meth:`free_owned_by` frees its objects if it dies.

        Returns:
            The offset of the object's range in the arena (page aligned), or the path of its
            file (``size`` bytes long), to map with ``map_range(path, 0, size)``.

        Raises:
            ValueError: ``object_id`` is already in the store, or ``size`` is negative.
            OutOfMemoryError: the object is larger than the store, or no arena range can be
                made for it and it cannot have a file of its own (no ``fallback_dir``, or the
                disk is full); the message shows the sizes and how to fix it.
        """
        if size < 0:
            raise ValueError(f"`size` is {size}, but must be >= 0 bytes")
        if object_id in self._objects:
            raise ValueError(
                f"object {object_id.hex()} is already in the object store "
                f"({self._objects[object_id].state.value}); object ids must be unique"
            )
        offset = self._allocate_range(size, object_id)
        if offset is not None:
            self._objects[object_id] = _StoredObject(
                object_id=object_id, size=size, owner=owner, offset=offset
            )
            return offset
        fd = self._allocate_file(size, object_id)
        self._objects[object_id] = _StoredObject(
            object_id=object_id, size=size, owner=owner, fallback_fd=fd
        )
        return self._fd_path(fd)

    def fits(self, size: int) -> bool:
        """True if an object of ``size`` bytes fits in a free range now, spilling nothing."""
        return self._allocator.largest_free_block() >= self._allocator.rounded_size(size)

    def is_sealed(self, object_id: bytes) -> bool:
        """False while the object is still being written (CREATED); True once sealed."""
        obj = self._objects.get(object_id)
        return obj is None or obj.state is not ObjectState.CREATED

    def seal(self, object_id: bytes) -> None:
        """Mark a written object immutable: from now on it can be read and spilled.

        Raises:
            KeyError: unknown ``object_id``.
            ValueError: the object is not ``CREATED`` (sealed twice).
        """
        obj = self._get(object_id)
        if obj.state is not ObjectState.CREATED:
            raise ValueError(
                f"object {object_id.hex()} is {obj.state.value}, but only a created object "
                "can be sealed"
            )
        self._transition(obj, ObjectState.SEALED)

    def pin(self, object_id: bytes) -> tuple[Location, int]:
        """Keep an object in memory, at a fixed location, while a reader reads it.

        A spilled object is restored first (to a possibly new offset), which may spill
        others; if no arena range can be made for it and there is a ``fallback_dir``, it is
        read in place from its spill file. Each ``pin`` needs one :meth:`unpin`. The object
        becomes the most recently used.

        Args:
            object_id: a sealed object.

        Returns:
            ``(location, size)``: the object's offset in the arena, or the path of the file
            that holds it from its first byte; for ``map_range``.

        Raises:
            KeyError: unknown (or freed) ``object_id``.
            ValueError: the object is still being written (not sealed).
            OutOfMemoryError: it is spilled and cannot be restored because the arena is
                full of pinned or unsealed objects and there is no ``fallback_dir``.
        """
        obj = self._get(object_id)
        if obj.state is ObjectState.CREATED:
            raise ValueError(
                f"object {object_id.hex()} is still being written; pin it after it is sealed"
            )
        if obj.state is ObjectState.SPILLED:
            self._restore(obj)
        obj.pin_count += 1
        self._objects.move_to_end(object_id)
        return self._location(obj), obj.size

    def view(self, object_id: bytes) -> memoryview:
        """The object's bytes, wherever they are, for a copy to or from another node.

        Writable while the object is being written, read-only once sealed. Valid while the
        object is ``CREATED`` or pinned; release it before the object is freed or unpinned.

        Raises:
            KeyError: unknown (or freed) ``object_id``.
            ValueError: the object is spilled (pin it first).
        """
        obj = self._get(object_id)
        writable = obj.state is ObjectState.CREATED
        if obj.offset is not None:
            view = self._arena[obj.offset : obj.offset + obj.size]
            return view if writable else view.toreadonly()
        if obj.fallback_fd is None:
            raise ValueError(f"object {object_id.hex()} is spilled; pin it before viewing it")
        if obj.size == 0:
            return memoryview(b"")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        # The view keeps the mapping alive; the mapping goes when the view is collected.
        return memoryview(mmap.mmap(obj.fallback_fd, obj.size, access=access))

    def unpin(self, object_id: bytes) -> None:
        """Undo one :meth:`pin`. The last unpin of a freed object releases its range.

        Raises:
            KeyError: unknown ``object_id``.
            ValueError: the object is not pinned.
        """
        obj = self._objects.get(object_id)
        if obj is None:
            raise KeyError(f"object {object_id.hex()} is not in the object store")
        if obj.pin_count <= 0:
            raise ValueError(f"object {object_id.hex()} is not pinned; unpin without pin")
        obj.pin_count -= 1
        if obj.pin_count == 0 and obj.state is ObjectState.RELEASING:
            self._release(obj)

    def free(self, object_id: bytes) -> None:
        """The owner released the object: remove it from memory and disk.

        If readers still pin it, it disappears from the store's view now, and its range is
        released at the last :meth:`unpin`. Freeing an unknown or freed id does nothing
        (frees can race with an owner's death).
        """
        obj = self._objects.get(object_id)
        if obj is None or obj.state is ObjectState.RELEASING:
            return
        if obj.pin_count > 0:
            # Nobody can pin it again, so the disk copy is already useless (unless readers
            # read it in place: it goes at the last unpin then).
            if obj.spill_fd != obj.fallback_fd:
                self._delete_spill_file(obj)
            self._transition(obj, ObjectState.RELEASING)
        else:
            self._release(obj)

    def free_owned_by(self, owner: str) -> list[bytes]:
        """Free every object of ``owner`` (its process died).

        Returns:
            The ids that were freed.
        """
        ids = [
            obj.object_id
            for obj in self._objects.values()
            if obj.owner == owner and obj.state is not ObjectState.RELEASING
        ]
        for object_id in ids:
            self.free(object_id)
        return ids

    def pin_count(self, object_id: bytes) -> int:
        """How many readers pin the object now (0 for unknown ids)."""
        obj = self._objects.get(object_id)
        return 0 if obj is None else obj.pin_count

    def contains(self, object_id: bytes) -> bool:
        """True if the object is in the store (in memory or spilled) and not freed."""
        obj = self._objects.get(object_id)
        return obj is not None and obj.state is not ObjectState.RELEASING

    def size_of(self, object_id: bytes) -> int:
        """The object's size in bytes, as given to :meth:`allocate`.

        Raises:
            KeyError: unknown (or freed) ``object_id``.
        """
        return self._get(object_id).size

    def state_of(self, object_id: bytes) -> ObjectState:
        """The object's :class:`ObjectState` (for tests and debugging).

        Raises:
            KeyError: unknown (or freed) ``object_id``.
        """
        return self._get(object_id).state

    def stats(self) -> dict[str, int]:
        """Counters for monitoring.

        Returns:
            ``capacity``, ``used_bytes`` (arena bytes allocated, rounded to pages),
            ``num_objects`` (not freed), ``num_in_memory``, ``num_spilled``,
            ``spilled_bytes_total`` (every move to disk, including re-spills that reuse the
            file of an earlier spill), ``restored_bytes_total``, ``num_pinned``,
            ``num_fallback`` and ``fallback_bytes`` (objects in files of their own now, and
            their bytes), ``fallback_bytes_total`` (every fallback allocation so far).
        """
        live = [o for o in self._objects.values() if o.state is not ObjectState.RELEASING]
        return {
            "capacity": self.capacity,
            "used_bytes": self._allocator.used_bytes,
            "num_objects": len(live),
            "num_in_memory": sum(o.offset is not None for o in live),
            "num_spilled": sum(o.state is ObjectState.SPILLED for o in live),
            "spilled_bytes_total": self._spilled_bytes_total,
            "restored_bytes_total": self._restored_bytes_total,
            "num_pinned": sum(o.pin_count > 0 for o in self._objects.values()),
            "num_fallback": sum(o.fallback_fd is not None for o in live),
            "fallback_bytes": sum(o.size for o in live if o.fallback_fd is not None),
            "fallback_bytes_total": self._fallback_bytes_total,
        }

    def close(self) -> None:
        """Unmap and close the arena and every spill and fallback file. Idempotent.

        Readers that still map object ranges or files keep their memory (the kernel frees it
        with their last mapping), but the store forgets every object.
        """
        if self._closed:
            return
        self._closed = True
        for obj in self._objects.values():
            self._delete_files(obj)
        self._objects.clear()
        self._arena.release()
        self._mmap.close()
        os.close(self._arena_fd)
        for d in self._made_dirs:
            # OSError: someone else put files there; leave them.
            with contextlib.suppress(OSError):
                os.rmdir(d)

    # ------------------------------------------------------------------ internals

    def _get(self, object_id: bytes) -> _StoredObject:
        obj = self._objects.get(object_id)
        if obj is None or obj.state is ObjectState.RELEASING:
            raise KeyError(f"object {object_id.hex()} is not in the object store")
        return obj

    def _transition(self, obj: _StoredObject, to: ObjectState) -> None:
        # The one place that changes an object's state, so an impossible move is caught
        # here instead of corrupting the arena later.
        if to not in _TRANSITIONS[obj.state]:
            raise TrainkitInternalError(
                f"object {obj.object_id.hex()}: illegal transition {obj.state.value} -> {to.value}"
            )
        obj.state = to

    def _allocate_range(self, size: int, object_id: bytes) -> int | None:
        """An arena range for a new object, spilling the cheapest victims if it must; None
        when pinned and unsealed objects leave no run that spilling could make large enough.
        """
        rounded = self._allocator.rounded_size(size)
        if rounded > self.capacity:
            raise self._out_of_memory(
                size,
                object_id,
                f"it needs {rounded} bytes (whole pages), more than the whole store",
            )
        offset = self._allocator.allocate(size)
        if offset is not None:
            return offset
        # Spill only what makes a hole: objects elsewhere would move to disk for nothing.
        hole = cheapest_hole(self._segments(), rounded)
        if hole is None:
            return None
        for victim in hole.victims:
            self._spill(self._objects[victim])
        offset = self._allocator.allocate(size)
        if offset is None:
            raise TrainkitInternalError(  # cheapest_hole promised a large enough range
                f"object {object_id.hex()} of {size} bytes did not fit after spilling "
                f"{len(hole.victims)} objects to free {hole.length} bytes at {hole.offset}; "
                f"free blocks: {self._allocator.free_blocks()}"
            )
        return offset

    def _segments(self) -> list[Segment]:
        """The arena's free and spillable ranges in offset order, for the spill policy."""
        segments = [Segment(offset=offset, length=length)
                    for offset, length in self._allocator.free_blocks()]
        for rank, o in enumerate(self._objects.values()):  # least recently used first
            if o.offset is not None and o.state is ObjectState.SEALED and o.pin_count == 0:
                segments.append(Segment(
                    offset=o.offset,
                    length=self._allocator.allocated_size(o.offset),
                    object_id=o.object_id,
                    write_bytes=0 if o.spill_fd is not None else o.size,
                    last_use=rank,
                ))
        segments.sort(key=lambda s: s.offset)
        return segments

    def _fd_path(self, fd: int) -> str:
        return f"{self._fd_prefix}{fd}"

    def _allocate_file(self, size: int, object_id: bytes) -> int:
        """A fallback allocation: an unnamed file of ``size`` bytes of the object's own, on
        disk; its descriptor."""
        if self.fallback_dir is None:
            raise self._out_of_memory(
                size, object_id, "pinned and unsealed objects leave no range large enough"
            )
        try:
            fd = _unnamed_file(self.fallback_dir)
        except OSError as e:
            raise self._out_of_memory(
                size, object_id, self._no_file_reason(self.fallback_dir, e)) from e
        try:
            # Reserve the blocks now: writing a sparse file on a full disk would kill the
            # writer with SIGBUS instead of raising here.
            os.posix_fallocate(fd, 0, max(size, 1))
        except OSError as e:
            os.close(fd)
            raise self._out_of_memory(
                size, object_id, self._no_file_reason(self.fallback_dir, e)) from e
        self._fallback_bytes_total += size
        return fd

    @staticmethod
    def _no_file_reason(path: str, error: OSError) -> str:
        return (
            "pinned and unsealed objects leave no range large enough, and no file can hold "
            f"it on disk either ({path}: {error.strerror or error})"
        )

    def _location(self, obj: _StoredObject) -> Location:
        if obj.offset is not None:
            return obj.offset
        if obj.fallback_fd is not None:
            return self._fd_path(obj.fallback_fd)
        raise TrainkitInternalError(
            f"object {obj.object_id.hex()} is {obj.state.value} but is neither in the arena "
            "nor in a file of its own"
        )

    def _offset(self, obj: _StoredObject) -> int:
        if obj.offset is None:
            raise TrainkitInternalError(
                f"object {obj.object_id.hex()} is {obj.state.value} but has no range in the arena"
            )
        return obj.offset

    def out_of_memory(self, size: int, object_id: bytes, why: str) -> OutOfMemoryError:
        """The error for an object of ``size`` bytes that cannot be stored, because ``why``;
        it shows the store's numbers and the fix."""
        return self._out_of_memory(size, object_id, why)

    def _out_of_memory(self, size: int, object_id: bytes, why: str) -> OutOfMemoryError:
        pinned = creating = 0
        for o in self._objects.values():
            if o.offset is None:
                continue
            # Arena bytes (whole pages), so that the numbers add up with "used".
            if o.state is ObjectState.CREATED:
                creating += self._allocator.allocated_size(o.offset)
            elif o.pin_count > 0:
                pinned += self._allocator.allocated_size(o.offset)
        rounded = self._allocator.rounded_size(size)
        # Room for this object even if everything in the store now stays there.
        suggested = -(-(self.capacity + rounded) // 2**20) * 2**20
        return OutOfMemoryError(
            f"cannot store object {object_id.hex()} of {_mib(size)} in the shared-memory "
            f"object store: {why}; capacity {_mib(self.capacity)}, used "
            f"{_mib(self._allocator.used_bytes)}, free {_mib(self._allocator.free_bytes)}, "
            f"pinned by readers {_mib(pinned)}, being written {_mib(creating)}, largest free "
            f"block {_mib(self._allocator.largest_free_block())}, largest block spilling could "
            f"free {_mib(largest_hole(self._segments()))}. Fix: start trainkit with a larger "
            f"object_store_memory (object_store_memory={suggested}, {suggested >> 20} MiB, or "
            "more), or release "
            "references to objects you no longer need (del the refs, or the arrays read from "
            "them) so they can be freed."
        )

    def _spill(self, obj: _StoredObject) -> None:
        offset = self._offset(obj)
        if obj.spill_fd is None:
            # No fsync: a spill file only has to outlive this process, not the machine
            # (after a crash the store and all its references are gone anyway).
            fd = _unnamed_file(self.spill_dir)
            try:
                with self._arena[offset : offset + obj.size] as data:
                    written = 0
                    while written < obj.size:
                        written += os.pwrite(fd, data[written:], written)
            except BaseException:
                os.close(fd)
                raise
            obj.spill_fd = fd
        self._allocator.free(offset)
        obj.offset = None
        self._spilled_bytes_total += obj.size
        self._transition(obj, ObjectState.SPILLED)

    def _restore(self, obj: _StoredObject) -> None:
        fd = obj.spill_fd
        if fd is None:
            raise TrainkitInternalError(f"spilled object {obj.object_id.hex()} has no spill file")
        offset = self._allocate_range(obj.size, obj.object_id)
        if offset is None:
            if self.fallback_dir is None:
                raise self._out_of_memory(
                    obj.size, obj.object_id,
                    "it is spilled, and pinned and unsealed objects leave no range large "
                    "enough to restore it",
                )
            # The spill file holds the whole object already: readers map it in place.
            obj.fallback_fd = fd
            self._transition(obj, ObjectState.SEALED)
            return
        try:
            dest = self._arena[offset : offset + obj.size]
            with dest:
                done = 0
                while done < obj.size:
                    n = os.preadv(fd, [dest[done:]], done)
                    if not n:
                        raise TrainkitInternalError(
                            f"the spill file of object {obj.object_id.hex()} "
                            f"ends after {done} of {obj.size} bytes"
                        )
                    done += n
        except BaseException:
            self._allocator.free(offset)
            raise
        obj.offset = offset
        self._restored_bytes_total += obj.size
        self._transition(obj, ObjectState.SEALED)

    def _release(self, obj: _StoredObject) -> None:
        if obj.offset is not None:
            self._allocator.free(obj.offset)
            obj.offset = None
        self._delete_files(obj)
        self._transition(obj, ObjectState.FREED)
        del self._objects[obj.object_id]

    def _delete_files(self, obj: _StoredObject) -> None:
        # Readers that still map a file keep its pages; the kernel frees them with the last
        # mapping.
        if obj.fallback_fd is not None:
            if obj.fallback_fd != obj.spill_fd:
                os.close(obj.fallback_fd)
            obj.fallback_fd = None
        self._delete_spill_file(obj)

    def _delete_spill_file(self, obj: _StoredObject) -> None:
        if obj.spill_fd is not None:
            os.close(obj.spill_fd)
            obj.spill_fd = None
