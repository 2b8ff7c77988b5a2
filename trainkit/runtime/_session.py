"""Starting and stopping the embedded runtime: the driver's core worker plus a node service.

A session is a name (``trainkit-<pid>-<random>``), not a folder: its sockets are abstract
(``_transport.endpoint``), its arena a memfd the node reports in NODE_READY, its spill files
unnamed. Nothing is written to /tmp or /dev/shm, so nothing can be left there.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime._log_printer import LogPrinter
from trainkit.runtime.cluster.discovery import Embedded
from trainkit.runtime.cluster.discovery import ancestors
from trainkit.runtime.cluster.discovery import choose
from trainkit.runtime.cluster.discovery import embedded_runtimes
from trainkit.runtime.core import context as _context
from trainkit.runtime.core.core_worker import CoreWorker
from trainkit.runtime.node.machine import NODE_SERVICE_MODULE
from trainkit.runtime.node.machine import default_store_bytes
from trainkit.runtime.node.machine import detect_gpus
from trainkit.runtime.node.machine import new_session_name
from trainkit.runtime.node.scheduler import make_resource_request
from trainkit.runtime.wire.local_channel import store_socket_address
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.transport import endpoint

NODE_START_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_lock = threading.RLock()
_node_proc: subprocess.Popen[bytes] | None = None
_cluster_driver = False
_namespace = "default"


def namespace() -> str:
    return _namespace


def _check_number(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"init({name}={value!r}): must be a number >= 0")


def start(*, num_cpus: float | None, num_gpus: float | None,
          resources: dict[str, float] | None, object_store_memory: int | None,
          namespace: str | None, log_to_driver: bool) -> None:
    global _node_proc, _namespace
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                        ("object_store_memory", object_store_memory)):
        _check_number(name, value)
    if num_gpus is not None and int(num_gpus) != num_gpus:
        raise ValueError(f"init(num_gpus={num_gpus!r}): must be a whole number of GPUs")
    gpu_ids = detect_gpus() if num_gpus is None else list(range(int(num_gpus)))
    cpus = float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))
    total_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    node_resources = make_resource_request(
        num_cpus=cpus, num_gpus=float(len(gpu_ids)), memory=float(int(total_mem * 0.7)),
        resources=resources, default_cpus=cpus)
    node_resources.setdefault("CPU", 0.0)
    node_resources.setdefault("GPU", 0.0)
    store_bytes = int(object_store_memory) if object_store_memory else default_store_bytes()
    if store_bytes < 1 << 20:
        raise ValueError(f"init(object_store_memory={object_store_memory!r}): must be at "
                         "least 1 MiB")
    session = new_session_name("")
    node_id = os.urandom(8).hex()
    core = CoreWorker(
        session=session, node_addr=endpoint(session, "node.ctl", None), node_id=node_id,
        arena_path="", arena_capacity=store_bytes, name="driver",
        cluster_resources=node_resources, store_socket=store_socket_address(session))
    ready = threading.Event()

    def on_node_ready(addr: str, arena_path: str) -> None:
        core.arena_path = arena_path  # the node's memfd, as /proc/<node pid>/fd/<n>
        ready.set()

    core.extra_handlers[Msg.NODE_READY] = on_node_ready
    core.log_sink = LogPrinter() if log_to_driver else None
    core.start()
    cfg = {
        "session": session, "node_id": node_id,
        "object_store_memory": store_bytes, "resources": node_resources, "gpu_ids": gpu_ids,
        "driver_addr": core.ctl_addr, "sys_path": [p or os.getcwd() for p in sys.path],
        "cwd": os.getcwd(), "prestart": min(int(cpus), 4), "log_to_driver": log_to_driver,
    }
    proc = subprocess.Popen([sys.executable, "-m", NODE_SERVICE_MODULE, json.dumps(cfg)],
                            stdin=subprocess.PIPE, close_fds=True)
    deadline_ok = False
    waited = 0.0
    while waited < NODE_START_TIMEOUT_S:
        if ready.wait(0.05):
            deadline_ok = True
            break
        waited += 0.05
        if proc.poll() is not None:
            break
    if not deadline_ok:
        proc.kill()
        proc.wait()
        core.close()
        raise RuntimeSystemError(
            f"the trainkit node service did not start (exit code {proc.returncode}); its "
            f"error output is above. Command: {sys.executable} -m {NODE_SERVICE_MODULE}")
    _node_proc = proc
    _namespace = namespace or "default"
    _context.core = core


def connect(address: str, *, namespace: str | None, log_to_driver: bool) -> None:
    """Attach this process, as a driver, to a running cluster through a node on this machine.

    ``address`` is "HOST:PORT" of the head, or "auto": the embedded runtime of the nearest
    parent process that has one, else the cluster `trainkit start` started here, else the
    only embedded runtime on this machine (see ``cluster.discovery``). The secret comes from
    TRAINKIT_CLUSTER_SECRET or ~/.trainkit/cluster_secret.
    """
    global _namespace, _cluster_driver
    from trainkit.runtime.cluster.nodes import parse_address
    from trainkit.runtime.cluster.nodes import route_ip
    from trainkit.runtime.node.machine import machine_key
    from trainkit.runtime.wire.auth import FrameAuth
    from trainkit.runtime.wire.secret import load_secret

    if address == "auto":
        target = choose(embedded_runtimes(), ancestors(os.getpid()), _started_cluster())
        if isinstance(target, Embedded):
            _attach_embedded(target, namespace=namespace, log_to_driver=log_to_driver)
            return
        address = target
    host, port = parse_address(address)
    _check_listening(address, host, port)
    auth = FrameAuth(load_secret())
    head_addr = f"tcp://{host}:{port}"
    core = CoreWorker(session=new_session_name("driver"), node_addr=head_addr, node_id="",
                      arena_path="", arena_capacity=1 << 20, name="driver",
                      cluster_resources={}, control_addr=head_addr, host=route_ip(host),
                      auth=auth)
    core.log_sink = LogPrinter() if log_to_driver else None
    core.start()
    try:
        try:
            nodes = core.request_control(Msg.CLUSTER_NODES, what="the cluster's nodes",
                                         timeout=CONNECT_TIMEOUT_S)
        except GetTimeoutError:
            raise ConnectionError(
                f"no answer from a trainkit head at {address} within {CONNECT_TIMEOUT_S:.0f} "
                "s: is the cluster running there (`trainkit status`), and does this process "
                "have the cluster's secret (TRAINKIT_CLUSTER_SECRET or "
                "~/.trainkit/cluster_secret)? Frames signed with another secret are dropped "
                "unanswered.") from None
        here = machine_key()
        local = sorted((n for n in nodes if n["machine"] == here),
                       key=lambda n: not n["is_head"])
        if not local:
            raise ConnectionError(
                f"the cluster at {address} has no node on this machine; start one here with "
                f"`trainkit start --address {address}` and connect again")
        node = local[0]
        core.attach_store(node["addr"], node["node_id"], node["arena_path"],
                          int(node["object_store_memory"]), node["store_socket"])
        core.request_node(Msg.REGISTER_DRIVER, os.getpid(), what="attaching to the node",
                          timeout=CONNECT_TIMEOUT_S)
        core.cluster_resources = core.request_control(
            Msg.CLUSTER_INFO, what="cluster resources")["total"]
    except BaseException:
        core.close()
        raise
    _cluster_driver = True
    _namespace = namespace or "default"
    _context.core = core


def _attach_embedded(runtime: Embedded, *, namespace: str | None,
                     log_to_driver: bool) -> None:
    """Attach this process as a second driver to another driver's embedded runtime: its
    node takes this process's tasks and actors, and drops them when this process ends."""
    global _namespace, _cluster_driver
    node_addr = endpoint(runtime.session, "node.ctl", None)
    core = CoreWorker(session=new_session_name("driver"), node_addr=node_addr, node_id="",
                      arena_path="", arena_capacity=1 << 20, name="driver",
                      cluster_resources={}, control_addr=node_addr)
    core.log_sink = LogPrinter() if log_to_driver else None
    core.start()
    try:
        try:
            node = core.request_node(Msg.REGISTER_DRIVER, os.getpid(),
                                     what="attaching to the node", timeout=CONNECT_TIMEOUT_S)
        except GetTimeoutError:
            raise ConnectionError(
                f"init(address='auto'): the embedded runtime of driver pid "
                f"{runtime.driver_pid} (session {runtime.session}) did not answer within "
                f"{CONNECT_TIMEOUT_S:.0f} s; it may be stopping") from None
        core.attach_store(node["addr"], node["node_id"], node["arena_path"],
                          int(node["object_store_memory"]), node["store_socket"])
        core.cluster_resources = core.request_control(
            Msg.CLUSTER_INFO, what="cluster resources")["total"]
    except BaseException:
        core.close()
        raise
    _cluster_driver = True
    _namespace = namespace or "default"
    _context.core = core


def _check_listening(address: str, host: str, port: int) -> None:
    """Fail at once, not after a long wait for an answer, when nothing listens there."""
    import socket

    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except ConnectionRefusedError:
        raise ConnectionError(
            f"init(address={address!r}): nothing listens at {host}:{port} (connection "
            "refused); is the head running there (`trainkit start --head --port ...`)?"
        ) from None
    except OSError as e:
        raise ConnectionError(f"init(address={address!r}): cannot reach {host}:{port} "
                              f"({e})") from None


def _started_cluster() -> str | None:
    """The address of the cluster `trainkit start` started on this machine, if any."""
    from trainkit.runtime.wire.secret import default_secret_path

    state = default_secret_path().parent / "cluster.json"
    try:
        with open(state) as f:
            address: str = json.load(f)["address"]
    except (OSError, ValueError, KeyError):
        return None
    from trainkit.runtime.cluster.nodes import parse_address

    try:  # a file left by a cluster that stopped names no runtime
        socket.create_connection(parse_address(address), timeout=1.0).close()
    except (OSError, ValueError):
        return None
    return address


def stop() -> None:
    global _node_proc
    global _cluster_driver
    with _lock:
        core = _context.core
        proc = _node_proc
        if core is None:
            return
        _context.core = None
        _node_proc = None
        if _cluster_driver:
            _cluster_driver = False
            try:  # what this driver owns is freed and its actors stop, as at its exit
                core.out.send(core.node_addr, (Msg.DRIVER_EXIT, core.ctl_addr))
            except Exception:
                pass
            core.close()
            return
        try:
            core.request_node(Msg.SHUTDOWN, what="node service shutdown", timeout=10)
        except Exception:
            pass
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        core.close()


def ensure_started() -> CoreWorker:
    core = _context.core
    if core is not None:
        return core
    with _lock:
        if _context.core is None:
            start(num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                  namespace=None, log_to_driver=True)
    assert _context.core is not None
    return _context.core


atexit.register(stop)
