from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tune_runtime(runtime_backend: str, start_backend: Any) -> Iterator[None]:
    """One runtime per test module (2 CPUs, no GPU): trial actors fork from its forkserver.
    On Ray (tests marked on_ray), a local Ray."""
    with start_backend(runtime_backend, num_cpus=2, num_gpus=0):
        yield


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on loopback and a bucket in it (``bucket``), reached through ``fs``."""

    fs: Any  # pyarrow.fs.S3FileSystem
    bucket: str

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``bucket/prefix``, relative to it."""
        import pyarrow.fs

        base = f"{self.bucket}/{prefix}".rstrip("/")
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True,
                                                              allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos
                      if i.type == pyarrow.fs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.bucket}/{key}") as f:
            data: bytes = f.read()
            return data


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A real S3-protocol server (moto) on 127.0.0.1 and a free port, stopped after the module."""
    import logging
    import socket

    import pyarrow.fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        def fs(**kwargs: Any) -> Any:
            return pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                           access_key="test", secret_key="test",
                                           region="us-east-1", **kwargs)

        fs(allow_bucket_creation=True).create_dir("sweeps")
        yield S3Server(fs(), "sweeps")
    finally:
        server.stop()
