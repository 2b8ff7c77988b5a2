from __future__ import annotations

from collections.abc import Iterator

import pytest

import trainkit as tk


@pytest.fixture
def data_runtime() -> Iterator[None]:
    """A runtime per test, with 2 CPUs and 2 fake GPUs (its pooled task workers are the
    test's: they go with it)."""
    tk.init(num_cpus=2, num_gpus=2, object_store_memory=256 * 2**20)
    yield
    tk.shutdown()
