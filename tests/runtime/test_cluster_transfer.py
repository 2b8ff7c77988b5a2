"""A 1 GiB object crosses nodes both ways, bit-exact (pulled in chunks, verified, zero-copy
on the reading node once there)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import trainkit as tk
from trainkit.testing import LocalCluster

GIB = 1 << 30
pytestmark = pytest.mark.leaking("processes")  # idle pool workers, stopped with the cluster


@tk.remote(num_cpus=0, resources={"far": 0.1})
def digest(a: np.ndarray) -> tuple[str, bool]:
    return hashlib.sha256(a).hexdigest(), a.flags.writeable


@tk.remote(num_cpus=0, resources={"far": 0.1})
def make(seed: int) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 255, 64 << 20, dtype=np.uint8)
    return np.tile(base, GIB // base.size)


def test_one_gib_object_crosses_nodes_both_ways_bit_exact():
    with LocalCluster(num_cpus=1, object_store_memory=GIB + (256 << 20)) as c:
        c.add_node(num_cpus=1, resources={"far": 1}, object_store_memory=GIB + (256 << 20))
        c.connect()
        base = np.random.default_rng(7).integers(0, 255, 64 << 20, dtype=np.uint8)
        a = np.tile(base, GIB // base.size)
        expected = hashlib.sha256(a).hexdigest()
        ref = tk.put(a)
        del a
        sha, writeable = tk.get(digest.remote(ref), timeout=120)
        assert (sha, writeable) == (expected, False)  # a read-only view of the copy there
        del ref
        b = tk.get(make.remote(7), timeout=120)
        assert b.nbytes == GIB and hashlib.sha256(b).hexdigest() == expected
        del b
