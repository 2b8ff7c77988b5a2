from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback and a bucket in it (``bucket``), reached through ``fs``."""

    fs: Any  # pyarrow.fs.S3FileSystem
    bucket: str
    endpoint: str

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``bucket/prefix``, relative to it."""
        import pyarrow.fs

        base = f"{self.bucket}/{prefix}".rstrip("/")
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True,
                                                              allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos
                      if i.type == pyarrow.fs.FileType.File)


def s3_filesystem(endpoint: str, **kwargs: Any) -> Any:
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="test",
                                   secret_key="test", region="us-east-1", **kwargs)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A real S3-protocol server (moto) on 127.0.0.1 and a free port, stopped after the module."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"127.0.0.1:{port}"
        s3_filesystem(endpoint, allow_bucket_creation=True).create_dir("runs")
        yield S3Server(s3_filesystem(endpoint), "runs", endpoint)
    finally:
        server.stop()
