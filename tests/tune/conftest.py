from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tune_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    """One runtime per test module (2 CPUs, no GPU): trial actors fork from its forkserver.
    On Ray (tests marked on_ray), a local Ray."""
    with start_backend(runtime_backend, num_cpus=2, num_gpus=0):
        yield
