from __future__ import annotations

from collections.abc import Iterator

import pytest

import trainkit as tk


@pytest.fixture(scope="module")
def tune_runtime() -> Iterator[None]:
    """One runtime per test module (2 CPUs, no GPU): trial actors fork from its forkserver."""
    tk.init(num_cpus=2, num_gpus=0)
    yield
    tk.shutdown()
