from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import trainkit as tk
from trainkit.testing import LocalCluster


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


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A head (1 CPU) and a node (1 CPU, resource "b"), this process connected as a driver,
    logs under a temporary folder; once a module is done, every process it started is gone
    (checked)."""
    before = set(psutil.Process().children(recursive=True))
    with LocalCluster(num_cpus=1, log_dir=tmp_path_factory.mktemp("cluster-logs")) as c:
        c.add_node(num_cpus=1, resources={"b": 1})
        c.connect()
        yield c
    deadline = time.monotonic() + 10
    while (left := set(psutil.Process().children(recursive=True)) - before) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left
