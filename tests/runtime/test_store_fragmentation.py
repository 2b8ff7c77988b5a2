"""A fragmented store: spill only what makes a hole, else a disk-backed file; never a false OOM.

Readers pinning every other object leave no contiguous range that spilling could free, and
a 30 MiB put into a 200 MiB store used to fail with ``OutOfMemoryError`` while ~100 MiB was
spillable. The spill policy is pure and tested alone first, then the store with a real arena
file, then the runtime end to end.
"""

from __future__ import annotations

import errno
import gc
import itertools
import mmap
import os
import pickle
import random
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import trainkit as tk
from trainkit.exceptions import OutOfMemoryError
from trainkit.runtime.store.object_layout import layout_size
from trainkit.runtime.store.object_layout import map_range
from trainkit.runtime.store.object_layout import read_object
from trainkit.runtime.store.object_layout import write_object
from trainkit.runtime.store.object_store import Location
from trainkit.runtime.store.object_store import ObjectState
from trainkit.runtime.store.object_store import SharedMemoryStore
from trainkit.runtime.store.spill_policy import Hole
from trainkit.runtime.store.spill_policy import Segment
from trainkit.runtime.store.spill_policy import cheapest_hole
from trainkit.runtime.store.spill_policy import largest_hole

MiB = 2**20
PAGE = mmap.ALLOCATIONGRANULARITY

# ---------------------------------------------------------------------------- spill policy


def _free(offset: int, length: int) -> Segment:
    return Segment(offset=offset * PAGE, length=length * PAGE)


def _obj(name: str, offset: int, length: int, *, on_disk: bool = False, last_use: int = 0
         ) -> Segment:
    return Segment(offset=offset * PAGE, length=length * PAGE, object_id=name.encode(),
                   write_bytes=0 if on_disk else length * PAGE, last_use=last_use)


def test_cheapest_hole_spills_only_the_neighbours_of_a_free_gap() -> None:
    # [a][b][free 2][c][d] ... and the least recently used object far away, which cannot help.
    segments = [_obj("a", 0, 2, last_use=5), _obj("b", 2, 2, last_use=6), _free(4, 2),
                _obj("c", 6, 1, last_use=7), _obj("d", 7, 3, last_use=8),
                _obj("old", 20, 1, last_use=0)]
    assert cheapest_hole(segments, 2 * PAGE) == Hole(
        offset=4 * PAGE, length=2 * PAGE, victims=(), write_bytes=0)
    assert cheapest_hole(segments, 3 * PAGE) == Hole(
        offset=2 * PAGE, length=4 * PAGE, victims=(b"b",), write_bytes=2 * PAGE)
    assert cheapest_hole(segments, 5 * PAGE) == Hole(
        offset=0, length=6 * PAGE, victims=(b"a", b"b"), write_bytes=4 * PAGE)
    assert cheapest_hole(segments, 8 * PAGE) == Hole(
        offset=2 * PAGE, length=8 * PAGE, victims=(b"b", b"c", b"d"), write_bytes=6 * PAGE)
    assert cheapest_hole(segments, 11 * PAGE) is None


def test_cheapest_hole_never_crosses_a_fixed_range() -> None:
    # Pinned objects sit in the gaps between these segments: [0,2) | [3,5) | [6,7).
    segments = [_obj("a", 0, 1), _free(1, 1), _obj("b", 3, 2), _free(6, 1)]
    assert cheapest_hole(segments, 3 * PAGE) is None
    assert largest_hole(segments) == 2 * PAGE
    assert cheapest_hole(segments, 2 * PAGE) == Hole(
        offset=0, length=2 * PAGE, victims=(b"a",), write_bytes=PAGE)
    assert cheapest_hole([], PAGE) is None and largest_hole([]) == 0


def test_cheapest_hole_spills_the_least_recently_used_then_the_fewest_bytes() -> None:
    # Never a newer object while an older one would do, even if the older one is larger.
    segments = [_obj("hot", 0, 1, last_use=9), _free(1, 1), _obj("cold", 3, 2, last_use=1)]
    hole = cheapest_hole(segments, 2 * PAGE)
    assert hole is not None and hole.victims == (b"cold",)
    # The same newest victim either way: the neighbour whose spill file is still valid
    # (re-spilling it writes nothing) joins it.
    segments = [_obj("on_disk", 0, 1, on_disk=True, last_use=1), _obj("n", 1, 1, last_use=5),
                _obj("fresh", 2, 1, last_use=2)]
    assert cheapest_hole(segments, 2 * PAGE) == Hole(
        offset=0, length=2 * PAGE, victims=(b"on_disk", b"n"), write_bytes=PAGE)


def _brute_force(segments: list[Segment], need: int) -> tuple[int, int, int] | None:
    best = None
    for i, j in itertools.combinations_with_replacement(range(len(segments)), 2):
        window = segments[i:j + 1]
        if any(b.offset != a.end for a, b in itertools.pairwise(window)):
            continue
        if window[-1].end - window[0].offset < need:
            continue
        victims = [s for s in window if s.object_id is not None]
        key = (max((s.last_use for s in victims), default=-1),
               sum(s.write_bytes for s in victims), sum(s.length for s in victims))
        best = key if best is None or key < best else best
    return best


def test_cheapest_hole_matches_a_brute_force_search() -> None:
    rng = random.Random(99)
    for _ in range(400):
        segments, pos, uses = [], 0, list(range(30))
        rng.shuffle(uses)
        for k in range(rng.randrange(0, 12)):
            pos += rng.choice([0, 0, 0, rng.randrange(1, 3)])  # a gap: something pinned
            length = rng.randrange(1, 5)
            if rng.random() < 0.3 and (not segments or segments[-1].object_id is not None
                                       or segments[-1].end != pos * PAGE):
                segments.append(_free(pos, length))
            else:
                segments.append(_obj(f"o{k}", pos, length, on_disk=rng.random() < 0.3,
                                     last_use=uses[k]))
            pos += length
        need = rng.randrange(1, 12) * PAGE
        hole = cheapest_hole(segments, need)
        expected = _brute_force(segments, need)
        if expected is None:
            assert hole is None
            continue
        assert hole is not None and hole.length >= need
        window = [s for s in segments if hole.offset <= s.offset < hole.offset + hole.length]
        victims = [s for s in window if s.object_id is not None]
        assert hole.victims == tuple(s.object_id for s in victims)
        assert (max((s.last_use for s in victims), default=-1), hole.write_bytes,
                sum(s.length for s in victims)) == expected


# ---------------------------------------------------------------------------- the store


@pytest.fixture
def make_store(tmp_path: os.PathLike[str]) -> Iterator[Callable[..., SharedMemoryStore]]:
    stores: list[SharedMemoryStore] = []

    def make(capacity: int, *, fallback: bool = True) -> SharedMemoryStore:
        path = f"/dev/shm/trainkit-{os.getpid()}-test-{uuid.uuid4().hex}"
        options = {"fallback_dir": os.path.join(tmp_path, "fallback")} if fallback else {}
        store = SharedMemoryStore(path, capacity, os.path.join(tmp_path, "spill"), **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _fill_and_pin_alternate(store: SharedMemoryStore, object_size: int) -> list[bytes]:
    """Fill the arena with sealed objects and pin every other one, as readers holding
    every other array would; returns the ids, in arena order."""
    ids = []
    while store.stats()["used_bytes"] + object_size <= store.capacity:
        object_id = f"o{len(ids):03d}".encode()
        store.allocate(object_id, object_size, owner="driver")
        store.seal(object_id)
        ids.append(object_id)
    for object_id in ids[::2]:
        store.pin(object_id)
    return ids


def _write(location: Location, size: int, store: SharedMemoryStore, value: Any) -> None:
    """What a writer does with the location ``allocate`` returned."""
    meta, buffers = _serialize(value)
    if isinstance(location, str):
        mapping = map_range(location, 0, size, writable=True)
        base = 0
    else:
        mapping = map_range(store.arena_path, 0, store.capacity, writable=True)
        base = location
    with memoryview(mapping) as view:
        write_object(view[base:base + size], meta, buffers)
    mapping.close()


def _serialize(value: object) -> tuple[bytes, list[memoryview]]:
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return meta, [b.raw() for b in buffers]


def _read_pinned(store: SharedMemoryStore, location: Location, size: int
                 ) -> tuple[Any, mmap.mmap]:
    """What a reader does with a pin: map the object's range or file, unpickle in place."""
    if isinstance(location, str):
        mapping = map_range(location, 0, size)
    else:
        mapping = map_range(store.arena_path, location, size)
    meta, buffers = read_object(memoryview(mapping))
    return pickle.loads(meta, buffers=buffers), mapping


def test_a_put_into_a_store_fragmented_by_pins_goes_to_a_file_not_oom(make_store) -> None:
    """The reported bug, at a tenth of the size: half the store pinned in alternate 1 MiB
    objects, the rest spillable; a 6 MiB object used to raise OutOfMemoryError."""
    store = make_store(32 * MiB)
    ids = _fill_and_pin_alternate(store, MiB)
    assert store.stats()["num_pinned"] == 16 and store.stats()["used_bytes"] == 32 * MiB
    value = np.random.default_rng(1).integers(0, 2**31, 6 * MiB // 8, dtype=np.int64)
    size = layout_size(*_serialize(value))

    location = store.allocate(b"big", size, owner="driver")

    # An unnamed file in fallback_dir, which the store holds open: nothing to leave behind.
    assert isinstance(location, str) and location.startswith(f"/proc/{os.getpid()}/fd/")
    assert os.readlink(location).startswith(f"{store.fallback_dir}/")
    assert os.path.getsize(location) == size and os.listdir(store.fallback_dir) == []
    # Spilling could not have made a 6 MiB range, so nothing was written to disk for nothing.
    assert store.stats()["spilled_bytes_total"] == 0
    assert all(store.state_of(i) is ObjectState.SEALED for i in ids)
    _write(location, size, store, value)
    store.seal(b"big")
    assert store.pin(b"big") == (location, size)
    array, mapping = _read_pinned(store, location, size)
    assert np.shares_memory(array, np.frombuffer(mapping, dtype=np.uint8))  # zero-copy
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, value)
    stats = store.stats()
    assert (stats["num_fallback"], stats["fallback_bytes"]) == (1, size)
    assert stats["fallback_bytes_total"] == size and stats["used_bytes"] == 32 * MiB

    del array
    mapping.close()
    store.unpin(b"big")
    store.free(b"big")
    assert not os.path.exists(location) and store.stats()["num_fallback"] == 0


def test_spilling_frees_one_hole_and_nothing_elsewhere(make_store) -> None:
    """Least-recently-used spilling wrote every old unpinned object to disk, even those
    between pinned ones that could never join the hole; only the run next to it goes now."""
    store = make_store(16 * MiB, fallback=False)
    for i in range(16):
        store.allocate(bytes([i]), MiB, owner="w")
        store.seal(bytes([i]))
    movable = {1, 3, 5, 10, 11, 12}  # 1, 3 and 5 are the least recently used
    for i in sorted(set(range(16)) - movable):
        store.pin(bytes([i]))

    offset = store.allocate(b"new", 3 * MiB, owner="w")

    assert offset == 10 * MiB
    assert [i for i in range(16) if store.state_of(bytes([i])) is ObjectState.SPILLED] == \
        [10, 11, 12]
    assert store.stats()["spilled_bytes_total"] == 3 * MiB


def test_a_spilled_object_that_cannot_come_back_is_read_from_its_spill_file(make_store) -> None:
    store = make_store(16 * MiB)
    value = np.arange(MiB // 8, dtype=np.int64)
    size = layout_size(*_serialize(value))
    location = store.allocate(b"x", size, owner="w")
    assert isinstance(location, int)
    _write(location, size, store, value)
    store.seal(b"x")
    # Fill the rest, then one more object so that x (the oldest) is spilled.
    others = []
    while store.stats()["num_spilled"] == 0:
        others.append(f"o{len(others)}".encode())
        store.allocate(others[-1], MiB, owner="w")
        store.seal(others[-1])
    assert store.state_of(b"x") is ObjectState.SPILLED
    for object_id in others:  # every object in the arena pinned: no range for x
        store.pin(object_id)
    restored_before = store.stats()["restored_bytes_total"]

    location, pinned_size = store.pin(b"x")

    assert isinstance(location, str) and os.readlink(location).startswith(f"{store.spill_dir}/")
    assert pinned_size == size and store.state_of(b"x") is ObjectState.SEALED
    assert store.stats()["restored_bytes_total"] == restored_before  # nothing was copied
    array, mapping = _read_pinned(store, location, size)
    np.testing.assert_array_equal(array, value)
    del array
    mapping.close()
    store.unpin(b"x")
    store.free(b"x")
    assert not os.path.exists(location)


def test_real_oom_says_what_is_pinned_free_and_the_largest_hole(make_store) -> None:
    """Without a fallback directory the fragmented store's OOM is real; it says why."""
    store = make_store(32 * MiB, fallback=False)
    _fill_and_pin_alternate(store, MiB)
    with pytest.raises(OutOfMemoryError) as info:
        store.allocate(b"big", 6 * MiB, owner="w")
    message = str(info.value)
    for fragment in (
        f"{6 * MiB} bytes",
        f"capacity {32 * MiB} bytes",
        "free 0 bytes",
        f"pinned by readers {16 * MiB} bytes",
        "largest free block 0 bytes",
        f"largest block spilling could free {MiB} bytes",
        f"object_store_memory={38 * MiB}",
        "release references",
    ):
        assert fragment in message, (fragment, message)
    assert store.stats()["spilled_bytes_total"] == 0


def test_oom_when_no_file_can_hold_the_object_either(make_store, monkeypatch) -> None:
    store = make_store(8 * MiB)
    _fill_and_pin_alternate(store, MiB)

    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", disk_full)
    with pytest.raises(OutOfMemoryError, match="No space left on device") as info:
        store.allocate(b"big", 3 * MiB, owner="w")
    assert "object_store_memory" in str(info.value)
    assert os.listdir(store.fallback_dir) == [] and not store.contains(b"big")


def test_objects_larger_than_the_store_still_raise_oom(make_store) -> None:
    store = make_store(4 * MiB)
    with pytest.raises(OutOfMemoryError, match="more than the whole store"):
        store.allocate(b"huge", 5 * MiB, owner="w")
    assert os.listdir(store.fallback_dir) == []


def test_a_fallback_file_lives_until_freed_and_the_last_reader_unpins(make_store) -> None:
    store = make_store(4 * MiB)
    _fill_and_pin_alternate(store, MiB)
    location = store.allocate(b"f", 2 * MiB, owner="w1")
    assert isinstance(location, str)
    with store.view(b"f") as view:  # what a pull from another node writes into
        assert not view.readonly and view.nbytes == 2 * MiB
        view[:4] = b"abcd"
    store.seal(b"f")
    with store.view(b"f") as view:  # what a transfer to another node reads
        assert view.readonly and bytes(view[:4]) == b"abcd"
    store.pin(b"f")
    store.free(b"f")
    assert os.path.exists(location) and not store.contains(b"f")
    store.unpin(b"f")
    assert not os.path.exists(location)
    # Dead owners' files go too, and close() removes the folder.
    other = store.allocate(b"g", 2 * MiB, owner="w2")
    assert isinstance(other, str)
    assert store.free_owned_by("w2") == [b"g"] and not os.path.exists(other)
    store.allocate(b"h", 2 * MiB, owner="w2")
    fallback_dir = store.fallback_dir
    store.close()
    assert fallback_dir is not None and not os.path.exists(fallback_dir)


# ---------------------------------------------------------------------------- end to end


def _store_stats() -> dict[str, int]:
    from trainkit.runtime._builtin_backend import cluster_info as _cluster_info

    stats: dict[str, int] = _cluster_info()["store"]
    return stats


def _eventually(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll until ``predicate()`` holds; frees travel asynchronously to the node service."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


def test_runtime_reads_a_spilled_object_that_cannot_come_back_in_place(runtime) -> None:
    """Held arrays pin every object in the arena; a spilled one is then read straight from
    its (unnamed) spill file instead of an OutOfMemoryError, zero-copy, and the file goes
    once its last reader drops it."""
    runtime(num_cpus=1, object_store_memory=16 * MiB)
    first = tk.put(np.full(2 * MiB, 7, dtype=np.uint8))
    refs = [tk.put(np.full(2 * MiB, i, dtype=np.uint8)) for i in range(7)]
    assert _store_stats()["num_spilled"] >= 1  # `first`, the least recently used
    held = [tk.get(ref) for ref in refs]  # pinned: no range is left for `first`

    got = tk.get(first)

    assert int(got[0]) == 7 and got.nbytes == 2 * MiB and not got.flags.writeable
    assert _store_stats()["num_fallback"] == 1
    del got, held
    gc.collect()
    assert _eventually(lambda: _store_stats()["num_pinned"] == 0)


def test_runtime_put_into_a_store_fragmented_by_held_arrays(runtime) -> None:
    """Arrays the driver holds from ``tk.get`` pin every other object; a 6 MiB put into the
    32 MiB store must still succeed (and stay zero-copy for readers)."""
    runtime(num_cpus=1, object_store_memory=32 * MiB)
    refs = [tk.put(np.full(MiB, i, dtype=np.uint8)) for i in range(30)]
    held = [tk.get(ref) for ref in refs[::2]]  # pinned while these views live
    assert _store_stats()["num_spilled"] == 0
    big = np.random.default_rng(5).integers(0, 255, 6 * MiB, dtype=np.uint8)

    ref = tk.put(big)

    got = tk.get(ref)
    np.testing.assert_array_equal(got, big)
    assert not got.flags.writeable and not np.shares_memory(got, big)
    assert _store_stats()["num_fallback"] == 1
    for i, ref_i in enumerate(refs):  # the unpinned ones are intact too
        assert int(tk.get(ref_i)[0]) == i
    del got, ref, held
    gc.collect()
    assert _eventually(lambda: _store_stats()["num_fallback"] == 0)


def test_a_released_view_is_unpinned_before_the_next_get_needs_its_range(runtime) -> None:
    """Two 24 MiB objects through a 30 MiB store: each get restores one into the range the
    previous one used. The unpin of a dropped view used to travel on another socket than
    the next pin, so the node often still counted it pinned (OutOfMemoryError then, or a
    file instead of the arena since fallback allocations)."""
    runtime(num_cpus=1, object_store_memory=30 * MiB)
    refs = [tk.put(np.full(24 * MiB, i, dtype=np.uint8)) for i in range(2)]
    for k in range(60):
        got = tk.get(refs[k % 2])
        assert int(got[0]) == k % 2
        del got
    stats = _store_stats()
    assert stats["num_fallback"] == 0 and stats["restored_bytes_total"] >= 59 * 24 * MiB
