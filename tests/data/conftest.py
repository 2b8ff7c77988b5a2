from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def data_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    """A runtime per test, with 2 CPUs and 2 fake GPUs (its pooled task workers are the
    test's: they go with it). On Ray (tests marked on_ray), a local Ray."""
    with start_backend(runtime_backend, num_cpus=2, num_gpus=2,
                       object_store_memory=256 * 2**20):
        yield
