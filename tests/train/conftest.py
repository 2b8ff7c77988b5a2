from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# torch's optimizers import torch._dynamo lazily, and it sets TORCHINDUCTOR_CACHE_DIR in
# os.environ: import it before any test, or the leak police blames the first test that trains.
import torch._dynamo  # noqa: F401


@pytest.fixture(scope="module")
def train_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    """One runtime per test module: its forkserver imports torch once (about 4 s), and every
    worker group of the module forks from it. On Ray (tests marked on_ray), a local Ray."""
    with start_backend(runtime_backend, num_cpus=2, num_gpus=0):
        yield
