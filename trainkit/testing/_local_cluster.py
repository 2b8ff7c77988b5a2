"""Test helpers: a whole cluster on one machine.

``LocalCluster`` starts a head and any number of nodes as separate processes, each with its
own node service, object store and declared resources (fake GPUs included), talking over
loopback tcp with a secret of their own, exactly as machines of a real cluster do::

    with LocalCluster(num_cpus=1) as cluster:
        cluster.add_node(num_cpus=1, num_gpus=2, resources={"gpu_node": 1})
        cluster.connect()                 # this process becomes the cluster's driver
        ...
        cluster.remove_node(node_id)      # SIGKILL: a node failure

Every process it starts stops when the process that made the cluster exits, however it exits.
Their output goes to this process's stderr, or with ``log_dir`` to one file per node there
(:meth:`LocalCluster.log_path`).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LocalCluster"]


class LocalCluster:
    """A head plus nodes on this machine; see the module docstring.

    Args:
        num_cpus, num_gpus, resources, object_store_memory: the head node's resources
            (``object_store_memory`` defaults to 256 MiB per node here).
        log_dir: A folder for each node's output (``head-0.log``, ``node-1.log``, ...); by
            default it goes to this process's stderr.
    """

    def __init__(self, *, num_cpus: float = 1, num_gpus: int = 0,
                 resources: dict[str, float] | None = None,
                 object_store_memory: int | None = None, host: str = "127.0.0.1",
                 head_timeout_s: float | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        self.host = host
        self.head_timeout_s = head_timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._logs: dict[str, Path] = {}
        self.secret = secrets.token_hex(32).encode()
        self._procs: dict[str, tuple[subprocess.Popen[bytes], dict[str, Any]]] = {}
        self._connected = False
        self._env_before: str | None = None
        _, info = self._start("head", num_cpus, num_gpus, resources, object_store_memory)
        self.head_node_id: str = info["node_id"]
        self.address = f"{host}:{info['addr'].rsplit(':', 1)[1]}"

    def _start(self, role: str, num_cpus: float, num_gpus: int,
               resources: dict[str, float] | None, object_store_memory: int | None,
               ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        from trainkit.runtime.cluster.nodes import start_node_process

        head_addr = f"tcp://{self.address}" if role == "node" else ""
        log = None
        if self.log_dir is not None:
            log = self.log_dir / f"{role}-{len(self._logs)}.log"
        proc, info = start_node_process(
            role=role, host=self.host, secret=self.secret, head_addr=head_addr,
            num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
            object_store_memory=object_store_memory or 256 << 20, watch_pid=os.getpid(),
            head_timeout_s=self.head_timeout_s, log_path=str(log) if log else None)
        self._procs[info["node_id"]] = (proc, info)
        if log is not None:
            self._logs[info["node_id"]] = log
        return proc, info

    def add_node(self, *, num_cpus: float = 1, num_gpus: int = 0,
                 resources: dict[str, float] | None = None,
                 object_store_memory: int | None = None) -> str:
        """Start a node; returns its id once the head accepted it (it is schedulable)."""
        _, info = self._start("node", num_cpus, num_gpus, resources, object_store_memory)
        node_id: str = info["node_id"]
        return node_id

    def remove_node(self, node_id: str) -> None:
        """Kill a node's service with SIGKILL, as a machine failure would; its workers exit."""
        if node_id == self.head_node_id:
            raise ValueError("remove_node() takes a non-head node; use kill_head() for the head")
        proc, _ = self._procs.pop(node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def kill_head(self) -> None:
        """SIGKILL the head's service (every node then stops within a bounded time)."""
        proc, _ = self._procs.pop(self.head_node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def log_path(self, node_id: str) -> Path:
        """The file a node's output goes to (only with ``log_dir``)."""
        if node_id not in self._logs:
            raise ValueError(f"no log file for node {node_id!r}: pass log_dir= to LocalCluster")
        return self._logs[node_id]

    def node_pids(self) -> dict[str, int]:
        return {node_id: proc.pid for node_id, (proc, _) in self._procs.items()}

    def processes(self) -> list[Any]:
        """Every process of the cluster (``psutil.Process``): node services, forkservers,
        workers."""
        import psutil

        procs = [psutil.Process(pid) for pid in self.node_pids().values()]
        return procs + [ch for p in procs for ch in p.children(recursive=True)]

    def connect(self, **init_kwargs: Any) -> None:
        """``trainkit.init(address=self.address)`` with this cluster's secret."""
        import trainkit
        from trainkit.runtime.wire.secret import SECRET_ENV

        self._env_before = os.environ.get(SECRET_ENV)
        os.environ[SECRET_ENV] = self.secret.decode()
        self._connected = True
        trainkit.init(address=self.address, **init_kwargs)

    def disconnect(self) -> None:
        """``trainkit.shutdown()`` of the driver that :meth:`connect` attached."""
        from trainkit.runtime.wire.secret import SECRET_ENV

        if not self._connected:
            return
        import trainkit

        trainkit.shutdown()
        self._connected = False
        if self._env_before is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = self._env_before

    def shutdown(self) -> None:
        """Disconnect the driver and stop every node and the head."""
        self.disconnect()
        procs = list(self._procs.values())
        self._procs.clear()
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"LocalCluster(address={self.address!r}, nodes={len(self._procs)})"
