from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

import trainkit as tk


@pytest.fixture
def runtime() -> Iterator[Callable[..., None]]:
    """Start a fresh embedded runtime with the given init() arguments; always shut down."""

    def start(**kwargs: Any) -> None:
        kwargs.setdefault("num_cpus", 2)
        kwargs.setdefault("num_gpus", 0)  # the same on every machine; GPU tests ask for None
        tk.init(**kwargs)

    yield start
    tk.shutdown()


@pytest.fixture
def rt(runtime: Callable[..., None]) -> None:
    runtime()
