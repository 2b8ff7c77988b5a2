"""The node's shared-memory object store: one arena file in /dev/shm, spilled to disk when full.

Who does what (DESIGN.md, lessons 3 and 4):

- The node service owns a :class:`SharedMemoryStore`: it creates the arena file, decides
  where each object goes (:class:`~trainkit.runtime._allocator.ArenaAllocator`), spills and
  restores, and frees an object when its owner says so or dies.
- Writers (driver, workers) map the whole arena once and write an object into the range
  :meth:`SharedMemoryStore.allocate` returned, then ask the node service to ``seal`` it.
- Readers ``pin`` an object, map just its range, read it without copying
  (:mod:`trainkit.runtime._object_layout`), and ``unpin`` when the last view of it is gone.
  A pinned object is never spilled and its range never reused, so readers need no locks.

Objects never disappear on their own: spilling moves bytes to disk and back, and only
:meth:`SharedMemoryStore.free` removes an object. When nothing can be spilled the caller gets
an :class:`~trainkit.exceptions.OutOfMemoryError` that says why and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import mmap
import os
from collections import OrderedDict
from typing import Final

from trainkit.exceptions import OutOfMemoryError
from trainkit.exceptions import TrainkitInternalError
from trainkit.runtime._allocator import ArenaAllocator

__all__ = ["ObjectState", "SharedMemoryStore"]

_SPILL_SUFFIX: Final = ".spill"


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
    offset: int | None = None  # None while spilled
    pin_count: int = 0
    # The spill file stays valid after a restore (objects are immutable), so spilling the
    # same object again only releases its range instead of writing it to disk again.
    spill_path: str | None = None


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


class SharedMemoryStore:
    """Node-side manager of one shared-memory arena; spills to disk when it is full.

    Lives in the node service process. Not thread-safe: the node service calls it from its
    one event loop. Clients never call it directly; they map the arena file themselves
    (:func:`~trainkit.runtime._object_layout.map_range`) at the offsets it hands out.

    Memory: the arena file is sparse; pages are committed on first write and kept after an
    object is freed, so the next object in that range is written at memcpy speed without
    page faults. The arena therefore holds at most ``capacity`` bytes of RAM.

    Args:
        arena_path: the arena file to create, normally ``/dev/shm/<unique name>``. It must
            not exist (created with ``O_EXCL``, so two stores never share one by mistake).
        capacity: arena size in bytes (the node's ``object_store_memory``).
        spill_dir: directory for spilled objects, one file per object; created if missing.

    Raises:
        FileExistsError: ``arena_path`` already exists.
        ValueError: ``capacity`` is not positive.

    Example:
        >>> store = SharedMemoryStore("/dev/shm/trainkit-doc", 2**20, "/tmp/trainkit-doc")
        >>> offset = store.allocate(b"id1", 1000, owner="driver")
        >>> store.seal(b"id1")
        >>> store.pin(b"id1")
        (0, 1000)
        >>> store.unpin(b"id1"); store.free(b"id1"); store.close()
    """

    def __init__(self, arena_path: str, capacity: int, spill_dir: str) -> None:
        if capacity <= 0:
            raise ValueError(f"`capacity` is {capacity}, but must be > 0 bytes")
        self.arena_path = arena_path
        self.capacity = capacity
        self.spill_dir = spill_dir
        # Page alignment, because readers mmap one object's range and mmap offsets must be
        # multiples of the allocation granularity.
        self._allocator = ArenaAllocator(capacity, alignment=mmap.ALLOCATIONGRANULARITY)
        # Every live object, least recently used first.
        self._objects: OrderedDict[bytes, _StoredObject] = OrderedDict()
        self._spilled_bytes_total = 0
        self._restored_bytes_total = 0
        self._closed = False
        self._made_spill_dir = not os.path.isdir(spill_dir)
        os.makedirs(spill_dir, exist_ok=True)
        fd = os.open(arena_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity)
            self._mmap = mmap.mmap(fd, capacity, access=mmap.ACCESS_WRITE)
        except BaseException:
            os.close(fd)
            os.unlink(arena_path)
            raise
        os.close(fd)
        self._arena = memoryview(self._mmap)

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> SharedMemoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the object API

    def allocate(self, object_id: bytes, size: int, owner: str) -> int:
        """Reserve ``size`` bytes for a new object and return its offset in the arena.

        The object is ``CREATED``: its owner is writing it, so it cannot be spilled until
        :meth:`seal`. When the arena is full, sealed and unpinned objects are spilled to
        disk, least recently used first, until the new object fits.

        Args:
            object_id: the object's id (unique for the store's lifetime).
            size: bytes to reserve (>= 0), usually ``layout_size(meta, buffers)``.
            owner: the owning process; :meth:`free_owned_by` frees its objects if it dies.

        Returns:
            The offset of the object's range (page aligned).

        Raises:
            ValueError: ``object_id`` is already in the store, or ``size`` is negative.
            OutOfMemoryError: the object cannot fit even after spilling everything
                spillable; the message shows the sizes and how to fix it.
        """
        if size < 0:
            raise ValueError(f"`size` is {size}, but must be >= 0 bytes")
        if object_id in self._objects:
            raise ValueError(
                f"object {object_id.hex()} is already in the object store "
                f"({self._objects[object_id].state.value}); object ids must be unique"
            )
        offset = self._allocate_range(size, object_id)
        self._objects[object_id] = _StoredObject(
            object_id=object_id, size=size, owner=owner, offset=offset
        )
        return offset

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

    def pin(self, object_id: bytes) -> tuple[int, int]:
        """Keep an object in memory, at a fixed offset, while a reader reads it.

        A spilled object is restored first (to a possibly new offset), which may spill
        others. Each ``pin`` needs one :meth:`unpin`. The object becomes the most recently
        used.

        Args:
            object_id: a sealed object.

        Returns:
            ``(offset, size)`` of the object in the arena, for ``map_range``.

        Raises:
            KeyError: unknown (or freed) ``object_id``.
            ValueError: the object is still being written (not sealed).
            OutOfMemoryError: it is spilled and cannot be restored because the arena is
                full of pinned or unsealed objects.
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
        return self._offset(obj), obj.size

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
            # Nobody can pin it again, so the disk copy is already useless.
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
            file of an earlier spill), ``restored_bytes_total``, ``num_pinned``.
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
        }

    def close(self) -> None:
        """Unmap and delete the arena file and every spill file. Idempotent.

        Readers that still map object ranges keep their memory (the file is only unlinked),
        but the store forgets every object.
        """
        if self._closed:
            return
        self._closed = True
        for obj in self._objects.values():
            self._delete_spill_file(obj)
        self._objects.clear()
        self._arena.release()
        self._mmap.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.arena_path)
        if self._made_spill_dir:
            # OSError: someone else put files there; leave them.
            with contextlib.suppress(OSError):
                os.rmdir(self.spill_dir)

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

    def _allocate_range(self, size: int, object_id: bytes) -> int:
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
        # Spill only if that can succeed: pinned and unsealed objects stay where they are,
        # and if no gap between them is large enough, spilling would move data for nothing.
        if self._largest_gap_after_spilling() < rounded:
            raise self._out_of_memory(
                size, object_id, "pinned and unsealed objects leave no gap large enough"
            )
        # A snapshot of the LRU order: spilling changes the objects' states as we go.
        candidates = [
            o for o in self._objects.values() if o.state is ObjectState.SEALED and o.pin_count == 0
        ]
        for victim in candidates:
            self._spill(victim)
            offset = self._allocator.allocate(size)
            if offset is not None:
                return offset
        raise TrainkitInternalError(  # the gap check above promised that it would fit
            f"object {object_id.hex()} of {size} bytes did not fit after spilling although a "
            f"large enough gap exists; free blocks: {self._allocator.free_blocks()}"
        )

    def _offset(self, obj: _StoredObject) -> int:
        if obj.offset is None:
            raise TrainkitInternalError(
                f"object {obj.object_id.hex()} is {obj.state.value} but has no range in the arena"
            )
        return obj.offset

    def _largest_gap_after_spilling(self) -> int:
        fixed = sorted(
            (o.offset, self._allocator.allocated_size(o.offset))
            for o in self._objects.values()
            if o.offset is not None and not (o.state is ObjectState.SEALED and o.pin_count == 0)
        )
        largest, pos = 0, 0
        for offset, length in fixed:
            largest = max(largest, offset - pos)
            pos = offset + length
        return max(largest, self.capacity - pos)

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
        return OutOfMemoryError(
            f"cannot store object {object_id.hex()} of {_mib(size)} in the shared-memory "
            f"object store: {why}; capacity {_mib(self.capacity)}, used "
            f"{_mib(self._allocator.used_bytes)}, pinned by readers {_mib(pinned)}, being "
            f"written {_mib(creating)}, largest free block "
            f"{_mib(self._allocator.largest_free_block())}. Fix: start trainkit with a "
            "larger object_store_memory, or release references to objects you no longer "
            "need (del the refs, or the arrays read from them) so they can be freed."
        )

    def _spill_path(self, obj: _StoredObject) -> str:
        return os.path.join(self.spill_dir, obj.object_id.hex() + _SPILL_SUFFIX)

    def _spill(self, obj: _StoredObject) -> None:
        offset = self._offset(obj)
        if obj.spill_path is None:
            path = self._spill_path(obj)
            tmp = path + ".tmp"
            # No fsync: a spill file only has to outlive this process, not the machine
            # (after a crash the store and all its references are gone anyway).
            with self._arena[offset : offset + obj.size] as data, open(tmp, "wb", buffering=0) as f:
                written = 0
                while written < obj.size:
                    written += f.write(data[written:])
            # Atomic: a spill file either holds the whole object or does not exist.
            os.replace(tmp, path)
            obj.spill_path = path
        self._allocator.free(offset)
        obj.offset = None
        self._spilled_bytes_total += obj.size
        self._transition(obj, ObjectState.SPILLED)

    def _restore(self, obj: _StoredObject) -> None:
        path = obj.spill_path
        if path is None:
            raise TrainkitInternalError(f"spilled object {obj.object_id.hex()} has no spill file")
        offset = self._allocate_range(obj.size, obj.object_id)
        try:
            dest = self._arena[offset : offset + obj.size]
            with dest, open(path, "rb", buffering=0) as f:
                done = 0
                while done < obj.size:
                    n = f.readinto(dest[done:])
                    if not n:
                        raise TrainkitInternalError(
                            f"spill file {path} of object {obj.object_id.hex()} "
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
        self._delete_spill_file(obj)
        self._transition(obj, ObjectState.FREED)
        del self._objects[obj.object_id]

    def _delete_spill_file(self, obj: _StoredObject) -> None:
        if obj.spill_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(obj.spill_path)
            obj.spill_path = None
