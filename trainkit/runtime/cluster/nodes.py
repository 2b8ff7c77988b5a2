"""Starting cluster node services (head or node) as processes, for the CLI and LocalCluster.

A cluster node service is ``python -m trainkit.runtime.node.node_service`` with ``role`` "head" or
"node". The secret reaches it on its stdin, never its command line or environment (where
its workers, the user's tasks and their subprocesses would inherit it). It writes
its registered info (addresses, resources), or why it could not start, to a pipe the
launcher reads (``ready_fd``) once it serves; a node does so only after the head accepted
it. No file is written: a node killed at any moment leaves nothing in /tmp or /dev/shm.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any

from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.node.machine import NODE_SERVICE_MODULE
from trainkit.runtime.node.machine import default_store_bytes
from trainkit.runtime.node.machine import detect_gpus
from trainkit.runtime.node.machine import new_session_name
from trainkit.runtime.node.scheduler import make_resource_request
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.runtime.wire.secret import hand_secret

NODE_START_TIMEOUT_S = 30.0
DEFAULT_PORT = 6380


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

    cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    detected = detect_gpus()  # the devices CUDA_VISIBLE_DEVICES allows, by their real ids
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

    res, gpu_ids = node_resources(num_cpus, num_gpus, resources)
    store_bytes = int(object_store_memory) if object_store_memory else default_store_bytes()
    session = prefix + os.urandom(4).hex() if prefix else new_session_name(role)
    node_id = os.urandom(8).hex()
    ready_r, ready_w = os.pipe()
    cfg: dict[str, Any] = {
        "role": role, "session": session, "node_id": node_id, "host": host,
        "object_store_memory": store_bytes,
        "resources": res, "gpu_ids": gpu_ids, "sys_path": [p or os.getcwd() for p in sys.path],
        "cwd": os.getcwd(), "prestart": 0, "log_to_driver": True,
        "ready_fd": ready_w, "watch_pid": watch_pid, "head_timeout_s": head_timeout_s,
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
            [*command_prefix, sys.executable, "-m", NODE_SERVICE_MODULE, json.dumps(cfg)],
            env=env,
            stdin=subprocess.PIPE, stdout=out, stderr=out, start_new_session=detach,
            close_fds=True, pass_fds=(ready_w,))
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)  # the child's copy is the only one: EOF when it exits
        if out is not None:
            out.close()
    try:
        assert proc.stdin is not None
        hand_secret(proc.stdin, secret)
        report = _read_report(ready_r, time.monotonic() + NODE_START_TIMEOUT_S)
    except BaseException:  # Ctrl-C while waiting: leave nothing running behind
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(ready_r)
    if report is not None and "info" in report:
        info: dict[str, Any] = report["info"]
        return proc, info
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if report is not None and "error" in report:
        why = f": {report['error']}"
    else:
        why = f" (its log: {log_path})" if log_path else " (its error output is above)"
    raise RuntimeSystemError(
        f"the trainkit {role} service did not start (exit code {proc.returncode}){why}")


def _read_report(fd: int, deadline: float) -> dict[str, Any] | None:
    """The node's one line on the ready pipe; None if it exited (EOF) or ran out of time."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        data += chunk
    try:
        report: dict[str, Any] = json.loads(data)
    except ValueError:
        return None
    return report
