"""Objects: zero-copy reads, reference counting, spilling, out of memory."""

from __future__ import annotations

import gc
import os
import random
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

import trainkit as tk
from trainkit.exceptions import OutOfMemoryError
from trainkit.runtime.core import context as _context
from trainkit.runtime.wire.protocol import Msg


def _store_stats():
    return _context.core.request_node(Msg.CLUSTER_INFO, what="stats")["store"]


def _wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_put_get_zero_copy_numpy_arrow_torch(rt):
    arr = np.arange(1_000_000, dtype=np.float64)
    got = tk.get(tk.put(arr))
    assert np.array_equal(got, arr) and not got.flags.writeable
    assert not np.shares_memory(got, arr)  # it lives in shared memory, not in ours

    table = pa.table({"x": np.arange(200_000), "y": np.ones(200_000)})
    assert tk.get(tk.put(table)).equals(table)

    t = torch.arange(100_000, dtype=torch.float32)
    assert torch.equal(tk.get(tk.put(t)), t)


def test_get_of_large_object_does_not_copy(rt):
    """A large value is read in place: the array returned lies inside this process's one
    mapping of the store's arena, and a second get returns the same memory."""
    import ctypes

    big = np.ones(256 << 20, np.uint8)
    ref = tk.put(big)
    del big
    first, second = tk.get(ref), tk.get(ref)
    core = _context.core
    assert core is not None
    arena = core.store._arena
    assert arena is not None
    base = ctypes.addressof(ctypes.c_char.from_buffer(arena))
    start = first.ctypes.data
    assert base <= start and start + first.nbytes <= base + len(arena)
    assert second.ctypes.data == start and not first.flags.writeable


def test_small_values_inline_and_objects_are_freed(rt):
    before = _store_stats()["num_objects"]
    ref = tk.put(np.zeros(1 << 20))
    assert _store_stats()["num_objects"] == before + 1
    del ref
    gc.collect()
    assert _wait_for(lambda: _store_stats()["num_objects"] == before)


def test_object_borrowed_by_actor_outlives_drivers_ref(rt):
    @tk.remote
    class Keeper:
        def keep(self, box):
            self.ref = box[0]
            return True

        def read(self):
            return float(tk.get(self.ref).sum())

    k = Keeper.remote()
    ref = tk.put(np.ones(1 << 20))
    tk.get(k.keep.remote([ref]))
    del ref
    gc.collect()
    time.sleep(0.2)
    assert tk.get(k.read.remote()) == float(1 << 20)


def test_task_returning_refs_keeps_them_alive(rt):
    @tk.remote
    def make():
        return [tk.put(np.full(1 << 18, 7.0))]

    (inner,) = tk.get(make.remote())
    time.sleep(0.2)
    assert tk.get(inner)[0] == 7.0


def test_put_larger_than_store_raises_oom(runtime):
    runtime(object_store_memory=32 << 20)
    with pytest.raises(OutOfMemoryError, match="object_store_memory"):
        tk.put(np.zeros(40 << 20, np.uint8))


def test_spilling_serves_random_gets_bit_exact(runtime):
    """A 75 MiB store given ~800 MiB of 8-24 MiB objects serves 1,000 random gets."""
    runtime(object_store_memory=75 << 20)
    rng = random.Random(0)
    refs, sums = [], []
    total = 0
    while total < 800 << 20:
        n = rng.randint(8 << 20, 24 << 20)
        arr = np.random.default_rng(len(refs)).integers(0, 255, n, dtype=np.uint8)
        refs.append(tk.put(arr))
        sums.append((n, int(arr[:: 4097].sum()), int(arr[-1])))
        total += n
    del arr
    for _ in range(1000):
        i = rng.randrange(len(refs))
        got = tk.get(refs[i])
        n, s, last = sums[i]
        assert got.size == n and int(got[::4097].sum()) == s and int(got[-1]) == last
        del got
    # Spot-check a few whole objects byte for byte.
    for i in rng.sample(range(len(refs)), 3):
        want = np.random.default_rng(i).integers(0, 255, sums[i][0], dtype=np.uint8)
        assert np.array_equal(tk.get(refs[i]), want)
    assert _store_stats()["num_spilled"] > 0


def test_pid_namespace_nothing_listens_on_network(rt):
    import psutil

    tk.get(tk.remote(lambda: 1).remote())
    mine = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    inet = [c for c in psutil.net_connections(kind="inet") if c.pid in mine
            and c.status == psutil.CONN_LISTEN]
    assert inet == []


def test_objects_owned_by_a_dead_worker_are_lost(rt):
    from trainkit.exceptions import ObjectLostError

    @tk.remote
    class Owner:
        def make(self):
            return [tk.put(np.ones(1 << 20)), tk.put("small")]

        def pid(self):
            return os.getpid()

    o = Owner.remote()
    big, small = tk.get(o.make.remote())
    os.kill(tk.get(o.pid.remote()), 9)
    for ref in (big, small):
        with pytest.raises(ObjectLostError):
            tk.get(ref, timeout=20)


def test_a_view_released_after_its_ref_frees_the_object(rt) -> None:
    """The owner drops the ref while a zero-copy view is alive; when the view goes, the
    store must release the object (it used to stay pinned forever)."""
    from trainkit.runtime._builtin_backend import cluster_info as _cluster_info

    for _ in range(3):
        ref = tk.put(np.ones(1 << 20))  # 8 MiB, stored in the arena
        view = tk.get(ref)
        del ref  # freed by the owner while the view pins it
        del view  # the last reader: the range is released
    store = _cluster_info()["store"]
    assert store["num_pinned"] == 0 and store["used_bytes"] == 0


def test_a_pin_that_beats_the_seal_waits_for_it(rt) -> None:
    """A task's owner may hear of its stored result before the worker's seal reaches the
    node service; the reader's pin must wait for the seal, not fail."""

    @tk.remote
    def big(i: int) -> np.ndarray:
        return np.full(1 << 18, i)  # 2 MiB: stored in the arena

    for i in range(30):
        assert int(tk.get(big.remote(i))[0]) == i
