"""Tests of the shared-memory object store: allocator, object layout, store, spilling."""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import random
import threading
import uuid
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from trainkit.exceptions import OutOfMemoryError
from trainkit.runtime.store.allocator import ArenaAllocator
from trainkit.runtime.store.object_layout import BUFFER_ALIGNMENT
from trainkit.runtime.store.object_layout import PAGE_MATCH_BYTES
from trainkit.runtime.store.object_layout import layout_size
from trainkit.runtime.store.object_layout import map_range
from trainkit.runtime.store.object_layout import read_object
from trainkit.runtime.store.object_layout import write_object
from trainkit.runtime.store.object_store import ObjectState
from trainkit.runtime.store.object_store import SharedMemoryStore

MiB = 2**20
PAGE = mmap.ALLOCATIONGRANULARITY


def _shm_path() -> str:
    return f"/dev/shm/trainkit-{os.getpid()}-test-{uuid.uuid4().hex}"


@pytest.fixture
def shm_path() -> Iterator[str]:
    path = _shm_path()
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _make_store(shm_path: str, tmp_path: os.PathLike[str], capacity: int) -> SharedMemoryStore:
    return SharedMemoryStore(shm_path, capacity, os.path.join(tmp_path, "spill"))


StoreFactory = Callable[[int], SharedMemoryStore]


@pytest.fixture
def make_store(shm_path: str, tmp_path: os.PathLike[str]) -> Iterator[StoreFactory]:
    stores: list[SharedMemoryStore] = []

    def make(capacity: int) -> SharedMemoryStore:
        store = _make_store(shm_path, tmp_path, capacity)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            store.close()


def _serialize(value: object) -> tuple[bytes, list[memoryview]]:
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return meta, [b.raw() for b in buffers]


def _put(store: SharedMemoryStore, arena: memoryview, object_id: bytes, value: object) -> int:
    """What a client does: allocate, write through its whole-arena mapping, seal."""
    meta, buffers = _serialize(value)
    size = layout_size(meta, buffers)
    offset = store.allocate(object_id, size, owner="driver")
    write_object(arena[offset : offset + size], meta, buffers)
    store.seal(object_id)
    return offset


def _layout(store: SharedMemoryStore) -> str:
    """Where every object is and what is free, for a failure message."""
    objects = [(o.object_id.hex(), o.state.value, o.offset, o.size, o.pin_count)
               for o in store._objects.values()]
    return f"objects (LRU first): {objects}; free: {store._allocator.free_blocks()}"


def _get(store: SharedMemoryStore, object_id: bytes) -> Any:
    """What a reader does: pin, map the range, unpickle (copying here), unpin."""
    offset, size = store.pin(object_id)
    try:
        mapping = map_range(store.arena_path, offset, size)
        meta, buffers = read_object(memoryview(mapping))
        value = pickle.loads(meta, buffers=buffers)
        # Copy so that the test can close the mapping right away.
        result = pickle.loads(pickle.dumps(value, protocol=5))
        del value, meta, buffers
        mapping.close()
        return result
    finally:
        store.unpin(object_id)


# ---------------------------------------------------------------------------------- allocator


def test_allocator_rounds_sizes_to_alignment() -> None:
    alloc = ArenaAllocator(64 * 1024, alignment=4096)
    assert alloc.allocate(0) == 0
    assert alloc.allocated_size(0) == 4096
    assert alloc.allocate(1) == 4096
    assert alloc.allocate(4097) == 8192
    assert alloc.allocated_size(8192) == 8192
    assert alloc.used_bytes == 16384
    assert alloc.free_bytes == 64 * 1024 - 16384
    assert all(offset % 4096 == 0 for offset, _ in alloc.free_blocks())


def test_allocator_validates_arguments() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ArenaAllocator(4096, alignment=3000)
    with pytest.raises(ValueError, match="capacity"):
        ArenaAllocator(0)
    with pytest.raises(ValueError, match="size"):
        ArenaAllocator(4096).allocate(-1)


def test_allocator_first_fit_takes_the_lowest_offset() -> None:
    alloc = ArenaAllocator(10 * 128, alignment=128)
    offsets = [alloc.allocate(128) for _ in range(10)]
    assert offsets == list(range(0, 1280, 128))
    for offset in (128, 512, 640, 1024):
        alloc.free(offset)
    # Free: [128,256) [512,768) [1024,1152). A 256-byte block skips the first hole.
    assert alloc.allocate(256) == 512
    assert alloc.allocate(100) == 128
    assert alloc.allocate(1) == 1024
    assert alloc.allocate(1) is None


def test_allocator_coalesces_neighbours() -> None:
    alloc = ArenaAllocator(4 * 4096)
    a, b, c, d = range(0, 4 * 4096, 4096)
    assert [alloc.allocate(4096) for _ in range(4)] == [a, b, c, d]
    assert alloc.largest_free_block() == 0
    alloc.free(a)
    alloc.free(c)
    assert alloc.free_blocks() == [(0, 4096), (8192, 4096)]
    alloc.free(b)  # merges with both neighbours
    assert alloc.free_blocks() == [(0, 3 * 4096)]
    assert alloc.allocate(3 * 4096) == 0
    alloc.free(0)
    alloc.free(d)  # merges with the block before it
    assert alloc.free_blocks() == [(0, 4 * 4096)]
    assert alloc.used_bytes == 0


def test_allocator_exhaustion_and_unknown_offsets() -> None:
    alloc = ArenaAllocator(8192)
    assert alloc.allocate(8193) is None
    assert alloc.allocate(8192) == 0
    assert alloc.allocate(0) is None
    assert alloc.largest_free_block() == 0
    with pytest.raises(KeyError, match="4096"):
        alloc.free(4096)
    alloc.free(0)
    with pytest.raises(KeyError, match="freed twice"):
        alloc.free(0)


def test_allocator_fuzz_against_a_reference_model() -> None:
    """Random allocate/free against a unit bitmap: same offsets, same accounting."""
    rng = random.Random(1234)
    units, align = 512, 64
    alloc = ArenaAllocator(units * align, alignment=align)
    bitmap = [False] * units  # the reference: which units are taken
    live: dict[int, int] = {}  # offset -> units

    def reference_first_fit(n: int) -> int | None:
        run = 0
        for i, taken in enumerate(bitmap):
            run = 0 if taken else run + 1
            if run == n:
                return (i - n + 1) * align
        return None

    for _ in range(5000):
        if live and rng.random() < 0.45:
            offset = rng.choice(list(live))
            n = live.pop(offset)
            alloc.free(offset)
            bitmap[offset // align : offset // align + n] = [False] * n
        else:
            size = rng.choice([0, 1, rng.randrange(1, 8 * align), rng.randrange(1, 64 * align)])
            n = max(1, -(-size // align))
            expected = reference_first_fit(n)
            assert alloc.allocate(size) == expected
            if expected is not None:
                live[expected] = n
                bitmap[expected // align : expected // align + n] = [True] * n
        assert alloc.used_bytes == sum(live.values()) * align
        # Coalesced: free blocks are exactly the maximal runs of free units.
        blocks = alloc.free_blocks()
        assert all(a + sa < b for (a, sa), (b, _) in itertools.pairwise(blocks))
        assert sum(size for _, size in blocks) == bitmap.count(False) * align
    for offset in list(live):
        alloc.free(offset)
    assert alloc.free_blocks() == [(0, units * align)]


# ---------------------------------------------------------------------------------- layout


def test_layout_round_trip_with_aligned_buffers() -> None:
    arrays = [
        np.arange(1000, dtype=np.float64),
        np.arange(7, dtype=np.uint8),  # odd length: the next buffer must be realigned
        np.ones((3, 5), dtype=np.int32),
    ]
    value = {"arrays": arrays, "text": "hello", "blob": b"x" * 10}
    meta, buffers = _serialize(value)
    assert len(buffers) == 3
    size = layout_size(meta, buffers)
    backing = mmap.mmap(-1, size)
    dest = memoryview(backing)
    write_object(dest, meta, buffers)
    meta_view, views = read_object(dest)
    assert bytes(meta_view) == meta
    assert [bytes(v) for v in views] == [bytes(b) for b in buffers]
    base = np.frombuffer(backing, dtype=np.uint8).ctypes.data
    for view in views:
        address = np.frombuffer(view, dtype=np.uint8).ctypes.data
        assert (address - base) % BUFFER_ALIGNMENT == 0
        assert address % BUFFER_ALIGNMENT == 0
    result = pickle.loads(meta_view, buffers=views)
    assert result["text"] == "hello" and result["blob"] == b"x" * 10
    for got, want in zip(result["arrays"], arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_layout_bytes_only_and_too_small_destination() -> None:
    meta = b"just meta"
    dest = memoryview(bytearray(layout_size(meta, [])))
    write_object(dest, meta, [])
    assert read_object(dest) == (memoryview(meta), [])
    with pytest.raises(ValueError, match="needs"):
        write_object(dest[:-1], meta, [])
    with pytest.raises(ValueError, match="read-only"):
        write_object(memoryview(bytes(len(dest))), meta, [])


def test_layout_bad_magic_is_named() -> None:
    dest = memoryview(bytearray(layout_size(b"m", [memoryview(b"abc")])))
    write_object(dest, b"m", [memoryview(b"abc")])
    dest[0:4] = b"\xde\xad\xbe\xef"
    with pytest.raises(ValueError, match="bad magic number 0xefbeadde"):
        read_object(dest)
    with pytest.raises(ValueError, match="shorter than its header"):
        read_object(memoryview(b"tiny"))


def test_map_range_rejects_unaligned_offsets(shm_path: str) -> None:
    with open(shm_path, "wb") as f:
        f.truncate(2 * PAGE)
    with pytest.raises(ValueError, match="page size"):
        map_range(shm_path, 100, 10)
    with pytest.raises(ValueError, match="size"):
        map_range(shm_path, 0, 0)


def _read_array(path: str, offset: int, size: int) -> tuple[np.ndarray, mmap.mmap]:
    mapping = map_range(path, offset, size)
    meta, buffers = read_object(memoryview(mapping))
    return pickle.loads(meta, buffers=buffers), mapping


def test_numpy_read_is_zero_copy_and_read_only(
    shm_path: str, tmp_path: os.PathLike[str]
) -> None:
    with _make_store(shm_path, tmp_path, 80 * MiB) as store:
        arena_map = map_range(store.arena_path, 0, store.capacity, writable=True)
        arena = memoryview(arena_map)
        small = np.arange(8 * 1024, dtype=np.float64)  # 64 KiB
        large = np.arange(8 * MiB, dtype=np.float64)  # 64 MiB
        _put(store, arena, b"small", small)
        _put(store, arena, b"large", large)

        for object_id, want in ((b"small", small), (b"large", large)):
            offset, size = store.pin(object_id)
            assert isinstance(offset, int)
            array, mapping = _read_array(store.arena_path, offset, size)
            # The array is a view of this reader's mapping of the arena, not a copy (so a
            # read costs the same for 64 KiB and 64 MiB; no timing is asserted here).
            whole = np.frombuffer(mapping, dtype=np.uint8)
            assert np.shares_memory(array, whole)
            if want.nbytes >= PAGE_MATCH_BYTES:
                # Large buffers keep their source's offset within a page (fast memcpy),
                # and so its alignment.
                assert array.ctypes.data % 4096 == want.ctypes.data % 4096
            else:
                assert array.ctypes.data % BUFFER_ALIGNMENT == 0
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[0] = 1.0
            np.testing.assert_array_equal(array, want)
            del array, whole
            mapping.close()
            store.unpin(object_id)
        del arena
        arena_map.close()


# ---------------------------------------------------------------------------------- store


def test_store_round_trip_is_bit_exact(make_store: StoreFactory) -> None:
    store = make_store(8 * MiB)
    arena_map = map_range(store.arena_path, 0, store.capacity, writable=True)
    arena = memoryview(arena_map)
    x = np.random.default_rng(0).standard_normal(100_000)
    value = {"x": x, "y": [1, 2, 3]}
    offset = _put(store, arena, b"a", value)
    assert offset % PAGE == 0
    assert store.contains(b"a") and not store.contains(b"b")
    assert store.state_of(b"a") is ObjectState.SEALED
    got = _get(store, b"a")
    assert got["y"] == [1, 2, 3]
    assert np.array_equal(got["x"], x)
    assert store.size_of(b"a") == layout_size(*_serialize(value))
    stats = store.stats()
    assert stats["num_objects"] == stats["num_in_memory"] == 1
    assert stats["num_pinned"] == 0 and stats["capacity"] == 8 * MiB
    del arena
    arena_map.close()


def test_store_rejects_misuse(make_store: StoreFactory) -> None:
    store = make_store(MiB)
    store.allocate(b"a", 100, owner="w1")
    with pytest.raises(ValueError, match="already in the object store"):
        store.allocate(b"a", 100, owner="w1")
    with pytest.raises(ValueError, match="being written"):
        store.pin(b"a")
    store.seal(b"a")
    with pytest.raises(ValueError, match="sealed"):
        store.seal(b"a")
    with pytest.raises(KeyError):
        store.pin(b"nope")
    with pytest.raises(ValueError, match="not pinned"):
        store.unpin(b"a")
    store.free(b"nope")  # unknown: a no-op


def _open_files_in(folder: str) -> list[str]:
    """What this process holds open in ``folder`` (unnamed files show as ``folder/#n``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{folder}/"):
            found.append(target)
    return found


def test_store_names_no_file_and_closes_everything(
    shm_path: str, tmp_path: os.PathLike[str]
) -> None:
    """The arena is a memfd and spill files are unnamed: killed at any moment, the store
    leaves nothing in /dev/shm or the spill folder (issue 13, leftovers)."""
    store = _make_store(shm_path, tmp_path, MiB)
    twin = _make_store(shm_path, tmp_path, MiB)  # a name is only a label: no clash
    try:
        assert not os.path.exists(shm_path)
        assert store.arena_path == f"/proc/{os.getpid()}/fd/{store._arena_fd}"
        assert os.readlink(store.arena_path).startswith("/memfd:")
        assert os.path.getsize(store.arena_path) == MiB
        store.allocate(b"a", 600 * 1024, owner="w")
        store.seal(b"a")
        store.allocate(b"b", 600 * 1024, owner="w")  # spills a
        assert store.state_of(b"a") is ObjectState.SPILLED
        assert os.listdir(store.spill_dir) == []
        assert len(_open_files_in(store.spill_dir)) == 1
    finally:
        twin.close()
        store.close()
    store.close()  # idempotent
    assert not os.path.exists(store.arena_path)
    assert _open_files_in(store.spill_dir) == []
    assert not os.path.exists(store.spill_dir)


def test_oom_when_larger_than_capacity(make_store: StoreFactory) -> None:
    store = make_store(MiB)
    with pytest.raises(OutOfMemoryError) as info:
        store.allocate(b"big", 2 * MiB, owner="w")
    message = str(info.value)
    assert "2097152 bytes" in message and "1048576 bytes" in message
    assert "object_store_memory" in message
    assert isinstance(info.value, MemoryError)
    assert not store.contains(b"big")


def test_oom_when_everything_is_pinned_or_being_written(make_store: StoreFactory) -> None:
    store = make_store(16 * PAGE)
    store.allocate(b"writing", 6 * PAGE, owner="w")  # not sealed: cannot be spilled
    store.allocate(b"pinned", 6 * PAGE, owner="w")
    store.seal(b"pinned")
    store.pin(b"pinned")
    store.allocate(b"idle", 4 * PAGE, owner="w")
    store.seal(b"idle")
    with pytest.raises(OutOfMemoryError) as info:
        store.allocate(b"new", 5 * PAGE, owner="w")
    message = str(info.value)
    for fragment in (
        f"{5 * PAGE} bytes",  # the object
        f"capacity {16 * PAGE} bytes",
        f"used {16 * PAGE} bytes",
        f"pinned by readers {6 * PAGE} bytes",
        f"being written {6 * PAGE} bytes",
        "object_store_memory",
        "release references",
    ):
        assert fragment in message, (fragment, message)
    # Nothing was spilled for nothing: the idle object could not have made room.
    assert store.state_of(b"idle") is ObjectState.SEALED
    assert store.stats()["spilled_bytes_total"] == 0
    # 4 pages fit once the idle object is spilled.
    store.allocate(b"new", 4 * PAGE, owner="w")
    assert store.state_of(b"idle") is ObjectState.SPILLED


def test_pinned_objects_are_never_spilled_nor_reused(make_store: StoreFactory) -> None:
    store = make_store(64 * PAGE)
    arena_map = map_range(store.arena_path, 0, store.capacity, writable=True)
    arena = memoryview(arena_map)
    payload = np.frombuffer(os.urandom(20 * PAGE), dtype=np.uint8)
    _put(store, arena, b"keep", payload)
    offset, size = store.pin(b"keep")
    reader = map_range(store.arena_path, offset, size)
    meta, buffers = read_object(memoryview(reader))
    array = pickle.loads(meta, buffers=buffers)
    del meta, buffers
    rng = random.Random(7)
    for i in range(200):
        object_id = f"o{i}".encode()
        n = rng.randrange(1, 30) * PAGE
        other = store.allocate(object_id, n, owner="w")
        # No range ever overlaps the pinned one.
        assert other + n <= offset or other >= offset + size
        arena[other : other + n] = b"\xff" * n
        store.seal(object_id)
        if rng.random() < 0.3:
            store.free(object_id)
    assert store.state_of(b"keep") is ObjectState.SEALED
    assert store.pin(b"keep") == (offset, size)
    store.unpin(b"keep")
    np.testing.assert_array_equal(array, payload)
    del array
    reader.close()
    store.unpin(b"keep")
    del arena
    arena_map.close()


def test_free_of_a_pinned_object_is_deferred_to_the_last_unpin(make_store: StoreFactory) -> None:
    store = make_store(8 * PAGE)
    offset = store.allocate(b"a", 8 * PAGE, owner="w")
    store.seal(b"a")
    store.pin(b"a")
    store.pin(b"a")
    store.free(b"a")
    assert not store.contains(b"a")
    assert store.stats()["num_objects"] == 0
    assert store.stats()["num_pinned"] == 1
    with pytest.raises(KeyError):
        store.pin(b"a")
    with pytest.raises(OutOfMemoryError):  # its range is still in use by readers
        store.allocate(b"b", PAGE, owner="w")
    store.free(b"a")  # a second free is a no-op
    store.unpin(b"a")
    with pytest.raises(OutOfMemoryError):
        store.allocate(b"b", PAGE, owner="w")
    store.unpin(b"a")  # the last reader: the range is released
    assert store.stats()["used_bytes"] == 0
    assert store.allocate(b"b", 8 * PAGE, owner="w") == offset
    with pytest.raises(KeyError):
        store.unpin(b"a")


def test_free_owned_by_frees_everything_of_a_dead_owner(make_store: StoreFactory) -> None:
    store = make_store(16 * PAGE)
    for i, owner in enumerate(["w1", "w2", "w1", "w1"]):
        store.allocate(bytes([i]), 4 * PAGE, owner=owner)
    store.seal(b"\x00")
    store.seal(b"\x02")
    store.allocate(b"\x05", 4 * PAGE, owner="w2")  # spills object 0 (LRU, sealed)
    assert store.state_of(b"\x00") is ObjectState.SPILLED
    assert _open_files_in(store.spill_dir)
    store.pin(b"\x02")
    assert sorted(store.free_owned_by("w1")) == [b"\x00", b"\x02", b"\x03"]
    assert store.free_owned_by("w1") == []
    assert [i for i in range(6) if store.contains(bytes([i]))] == [1, 5]
    assert _open_files_in(store.spill_dir) == []
    store.unpin(b"\x02")
    assert store.stats()["used_bytes"] == 8 * PAGE


def test_spill_and_restore_are_bit_exact_and_lru(make_store: StoreFactory) -> None:
    store = make_store(4 * MiB)
    arena_map = map_range(store.arena_path, 0, store.capacity, writable=True)
    arena = memoryview(arena_map)
    values = {
        bytes([i]): np.random.default_rng(i).integers(0, 256, MiB, dtype=np.uint8) for i in range(8)
    }
    for object_id, value in values.items():
        _put(store, arena, object_id, value)
    stats = store.stats()
    assert stats["num_objects"] == 8 and stats["num_spilled"] == 5
    assert stats["num_in_memory"] == 3  # the three most recent: 5, 6, 7
    spilled = [i for i in range(8) if store.state_of(bytes([i])) is ObjectState.SPILLED]
    # (The layout in the message: this failed twice in full-suite runs under load, with
    # [1, 2, 3, 4, 5], and never alone; the cause is not known yet.)
    assert spilled == [0, 1, 2, 3, 4], _layout(store)
    assert _get(store, b"\x00").tobytes() == values[b"\x00"].tobytes()
    # Restoring object 0 spilled the least recently used in-memory object, 5.
    assert store.state_of(b"\x05") is ObjectState.SPILLED
    assert store.state_of(b"\x00") is ObjectState.SEALED
    for object_id in reversed(list(values)):
        assert _get(store, object_id).tobytes() == values[object_id].tobytes()
    stats = store.stats()
    assert stats["restored_bytes_total"] >= 6 * MiB
    assert stats["spilled_bytes_total"] >= stats["restored_bytes_total"]
    for object_id in values:
        store.free(object_id)
    assert store.stats()["used_bytes"] == 0
    assert _open_files_in(store.spill_dir) == []
    del arena
    arena_map.close()


# ------------------------------------------------------------------------ acceptance scenario


def _fingerprint(words: npt.NDArray[np.uint64]) -> int:
    """A position-sensitive checksum of uint64 words at ~12 GB/s (crc32 alone: ~3 GB/s).

    The 1,000 reads below touch ~16 GB, so the checksum sets the test's run time. Summing each
    4 KiB page and crc32-ing the sums still catches a wrong offset, a stale or zeroed page,
    swapped chunks and any changed word; only a permutation of words within one page would
    slip through, which no copy bug produces.
    """
    whole = len(words) // 512 * 512
    pages = words[:whole].reshape(-1, 512).sum(axis=1, dtype=np.uint64)
    return zlib.crc32(pages.tobytes(), zlib.crc32(words[whole:].tobytes()))


def test_acceptance_800_mib_through_a_75_mib_store(
    shm_path: str, tmp_path: os.PathLike[str]
) -> None:
    """~800 MiB of 8-24 MiB objects through a 75 MiB store; 1,000 random reads, bit exact."""
    rng = random.Random(2024)
    with _make_store(shm_path, tmp_path, 75 * MiB) as store:
        arena_map = map_range(store.arena_path, 0, store.capacity, writable=True)
        arena = memoryview(arena_map)
        checksums: dict[bytes, int] = {}
        total = 0
        while total < 800 * MiB:
            object_id = len(checksums).to_bytes(8, "little")
            nbytes = rng.randrange(8 * MiB, 24 * MiB + 1) // 8 * 8
            data = np.random.default_rng(len(checksums)).integers(
                0, 2**64 - 1, nbytes // 8, dtype=np.uint64, endpoint=True
            )
            _put(store, arena, object_id, data)
            checksums[object_id] = _fingerprint(data)
            total += nbytes
            del data
        assert store.stats()["num_spilled"] > 0

        ids = list(checksums)
        for _ in range(1000):
            object_id = rng.choice(ids)
            offset, size = store.pin(object_id)
            try:
                mapping = map_range(store.arena_path, offset, size)
                meta, buffers = read_object(memoryview(mapping))
                array = pickle.loads(meta, buffers=buffers)
                assert _fingerprint(array) == checksums[object_id], object_id.hex()
                del array, meta, buffers
                mapping.close()
            finally:
                store.unpin(object_id)

        stats = store.stats()
        assert stats["num_objects"] == len(ids) and stats["num_pinned"] == 0
        assert stats["restored_bytes_total"] > 0
        for object_id in ids:
            store.free(object_id)
        assert store.stats()["used_bytes"] == 0
        del arena
        arena_map.close()


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_large_buffers_are_copied_exactly_by_one_or_several_threads(monkeypatch, cpus):
    from trainkit.runtime.store import copy_pool as _copy_pool

    monkeypatch.setattr(_copy_pool.os, "cpu_count", lambda: cpus)
    pool = _copy_pool.CopyPool()
    rng = np.random.default_rng(cpus)
    # whole chunks and a partial one, the tail included; and a small one on the caller
    sizes = [_copy_pool.PARALLEL_COPY_BYTES + 12345, 3 * _copy_pool.PARALLEL_COPY_BYTES + 1,
             _copy_pool.PARALLEL_COPY_BYTES - 1]
    datas = [rng.integers(0, 255, size, dtype=np.uint8) for size in sizes]
    results: list[bool] = []

    def write_and_check(data: npt.NDArray[np.uint8]) -> None:
        meta, buffers = b"meta", [memoryview(data)]
        dest = memoryview(bytearray(layout_size(meta, buffers)))
        write_object(dest, meta, buffers, pool.copy)
        got_meta, got = read_object(dest)
        results.append(bytes(got_meta) == b"meta" and bytes(got[0]) == data.tobytes())

    try:
        for data in datas:
            write_and_check(data)
        kept = list(pool._started)
        assert len(kept) == (_copy_pool.COPY_THREADS - 1 if cpus > 1 else 0)
        # several callers at once share the same kept threads
        callers = [threading.Thread(target=write_and_check, args=(d,)) for d in datas * 2]
        for t in callers:
            t.start()
        for t in callers:
            t.join(30)
        assert pool._started == kept
        assert results == [True] * 9
    finally:
        pool.close()
    assert not any(t.is_alive() for t in kept)
    write_and_check(datas[0])  # closed: the caller copies alone
    assert results[-1]
