"""Starting cluster node services (head or node) as processes, for the CLI and LocalCluster.

A cluster node service is ``python -m trainkit.runtime._node`` with ``role`` "head" or
"node". The secret reaches it on its stdin, never its command line or environment (where
its workers, the user's tasks and their subprocesses would inherit it). It writes
its registered info (addresses, resources) to ``ready_file`` once it serves; a node does so
only after the head accepted it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime._scheduler import make_resource_request
from trainkit.runtime._secret import SECRET_ENV
from trainkit.runtime._secret import hand_secret

NODE_START_TIMEOUT_S = 30.0
DEFAULT_PORT = 6380


def machine_key() -> str:
    """Identifies this machine and network namespace: a driver attaches to a node here."""
    try:
        with open("/etc/machine-id") as f:
            machine = f.read().strip()
    except OSError:
        machine = socket.gethostname()
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return f"{machine}:{netns}"


def route_ip(host: str) -> str:
    """The address of this machine that packets to ``host`` leave from."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            ip: str = s.getsockname()[0]
            return ip
    except OSError:
        return "127.0.0.1"


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> (host, port), with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster address {address!r} must look like HOST:PORT, e.g. "
                         f"127.0.0.1:{DEFAULT_PORT}")
    return host, int(port)


def node_resources(num_cpus: float | None, num_gpus: int | None,
                   resources: dict[str, float] | None) -> tuple[dict[str, float], list[int]]:
    from trainkit.runtime._session import _detect_gpus

    cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    detected = _detect_gpus()  # the devices CUDA_VISIBLE_DEVICES allows, by their real ids
    gpus = len(detected) if num_gpus is None else int(num_gpus)
    gpu_ids = detected[:gpus] if len(detected) >= gpus else list(range(gpus))  # fakes
    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    res = make_resource_request(num_cpus=cpus, num_gpus=float(gpus),
                                memory=float(int(total_mem * 0.7)), resources=resources,
                                default_cpus=cpus)
    res.setdefault("CPU", 0.0)
    res.setdefault("GPU", 0.0)
    return res, gpu_ids


def start_node_process(*, role: str, host: str, secret: bytes, port: int = 0,
                       head_addr: str = "", num_cpus: float | None = None,
                       num_gpus: int | None = None, resources: dict[str, float] | None = None,
                       object_store_memory: int | None = None, prefix: str = "",
                       watch_pid: int | None = None, detach: bool = False,
                       log_path: str | None = None, head_timeout_s: float | None = None,
                       register_timeout_s: float | None = None,
                       command_prefix: tuple[str, ...] = ()
                       ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a head (``role="head"``, listening on ``host:port``) or a node joining
    ``head_addr``; return the process and its info once it serves.

    ``command_prefix`` runs it through another command (e.g. ``ip netns exec NS``);
    ``head_timeout_s``: how long a node waits for a silent head before it stops.
    """
    from trainkit.runtime._session import default_store_bytes

    res, gpu_ids = node_resources(num_cpus, num_gpus, resources)
    store_bytes = int(object_store_memory) if object_store_memory else default_store_bytes()
    session_dir = tempfile.mkdtemp(prefix=prefix or f"trainkit-{os.getpid()}-{role}-",
                                   dir="/tmp")
    session = os.path.basename(session_dir)
    node_id = os.urandom(8).hex()
    ready_file = os.path.join(session_dir, "ready.json")
    arena_path = f"/dev/shm/{session}-arena"
    cfg: dict[str, Any] = {
        "role": role, "session_dir": session_dir, "node_id": node_id, "host": host,
        "arena_path": arena_path, "object_store_memory": store_bytes,
        "resources": res, "gpu_ids": gpu_ids, "sys_path": [p or os.getcwd() for p in sys.path],
        "cwd": os.getcwd(), "prestart": 0, "log_to_driver": True,
        "ready_file": ready_file, "watch_pid": watch_pid, "head_timeout_s": head_timeout_s,
        "register_timeout_s": register_timeout_s,
    }
    if role == "head":
        cfg["bind"] = f"tcp://{host}:{port}"
    else:
        cfg["head_addr"] = head_addr
    # A secret the user gave this process through the environment goes no further.
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 (handed to the child)
    try:
        proc = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "trainkit.runtime._node", json.dumps(cfg)],
            env=env,
            stdin=subprocess.PIPE, stdout=out, stderr=out, start_new_session=detach,
            close_fds=True)
    finally:
        if out is not None:
            out.close()
    assert proc.stdin is not None
    hand_secret(proc.stdin, secret)
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if os.path.exists(ready_file):
                with open(ready_file) as f:
                    info: dict[str, Any] = json.load(f)
                return proc, info
            if proc.poll() is not None:
                break
            time.sleep(0.02)
    except BaseException:  # Ctrl-C while waiting: leave nothing running behind
        proc.kill()
        proc.wait()
        cleanup_node_files(session_dir, arena_path)
        raise
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    try:
        with open(session_dir + ".error") as f:
            why = f": {f.read()}"
        os.unlink(session_dir + ".error")
    except OSError:
        why = f" (its log: {log_path})" if log_path else " (its error output is above)"
    cleanup_node_files(session_dir, arena_path)
    raise RuntimeSystemError(
        f"the trainkit {role} service did not start (exit code {proc.returncode}){why}")


def cleanup_node_files(session_dir: str, arena_path: str) -> None:
    """What a node leaves when it is killed: its session folder and arena file."""
    import shutil

    shutil.rmtree(session_dir, ignore_errors=True)
    try:
        os.unlink(arena_path)
    except FileNotFoundError:
        pass
