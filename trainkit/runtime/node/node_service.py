"""The node service: the worker pool, leases on this node, the store; the control plane too.

``python -m trainkit.runtime.node.node_service`` (started by ``trainkit.init()``,
``trainkit start`` or ``trainkit.testing.LocalCluster``). One thread runs a zmq poller over
the control inbox, every worker's pidfd (so a worker's death is seen the moment it happens)
and output pipes, and the parent's pipe. Roles (``cfg["role"]``):

- ``embedded``: one node owned by one driver, on ipc sockets; the driver's pipe closing
  (EOF) means it died: tear everything down.

Nothing here has a name in a file system (issue 13, leftovers): sockets are in the abstract
namespace (``@<session>/...``, see ``_transport.endpoint`` and ``_local_channel``), the arena is
a memfd and spill and fallback files are unnamed (``_object_store``); other processes open
them through ``/proc/<this pid>/fd/``. A launcher learns that this node serves, or why it
could not start, on the pipe ``cfg["ready_fd"]``. So when every process is SIGKILLed at once
the kernel reclaims everything, and a clean stop has nothing to remove either.
- ``head``: the first node of a cluster and its control plane (``_node_control``), on tcp.
- ``node``: a node that joined a head; it runs what the head assigns to it, answers
  heartbeats, serves its objects to other nodes (``_transfer``) and exits when the head
  stops answering.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any
from typing import ClassVar

import zmq

from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.node.control_plane import ControlPlane
from trainkit.runtime.node.control_plane import _Lease
from trainkit.runtime.node.control_plane import _NodeRecord
from trainkit.runtime.node.control_plane import _WorkerProc
from trainkit.runtime.node.machine import machine_key
from trainkit.runtime.node.scheduler import Grant
from trainkit.runtime.store.object_store import SharedMemoryStore
from trainkit.runtime.store.transfer import Puller
from trainkit.runtime.store.transfer import TransferServer
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.local_channel import LOCAL_PREFIX
from trainkit.runtime.wire.local_channel import LocalChannelServer
from trainkit.runtime.wire.local_channel import store_socket_address
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import msg_name
from trainkit.runtime.wire.protocol import new_id
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.runtime.wire.secret import ClusterSecretError
from trainkit.runtime.wire.secret import receive_secret
from trainkit.runtime.wire.transport import Inbox
from trainkit.runtime.wire.transport import Outbox
from trainkit.runtime.wire.transport import endpoint
from trainkit.runtime.wire.transport import make_context

HEARTBEAT_S = 1.0
# A node whose head has not answered for this long exits (and its workers with it).
HEAD_TIMEOUT_S = 10.0
REGISTER_TIMEOUT_S = 15.0


class NodeService:
    """One node's service: its workers, its object store, and (embedded or head) the
    control plane."""

    # What this node service is told, and the method that handles each kind (a control
    # plane, embedded or head, adds CONTROL_HANDLERS). tests/runtime/test_wire.py holds each
    # method's parameters to the kind's FIELDS.
    HANDLERS: ClassVar[dict[int, str]] = {
        Msg.REGISTER_WORKER: "on_register_worker",
        Msg.WORKER_TAINTED: "on_worker_tainted",
        Msg.STORE_ALLOC: "on_store_alloc",
        Msg.STORE_SEAL: "on_store_seal",
        Msg.STORE_PIN: "on_store_pin",
        Msg.STORE_UNPIN: "on_store_unpin",
        Msg.STORE_FREE: "on_store_free",
        Msg.STORE_PULLED: "on_store_pulled",
        Msg.SHUTDOWN: "on_shutdown",
        Msg.PRELOAD_MODULES: "on_preload_modules",
        Msg.REGISTER_DRIVER: "on_register_driver",
        Msg.DRIVER_EXIT: "on_driver_exit",
        Msg.NODE_ASSIGN: "on_node_assign",
        Msg.NODE_RELEASE: "on_node_release",
        Msg.NODE_KILL_WORKER: "on_node_kill_worker",
        Msg.NODE_PROCESS_DIED: "on_node_process_died",
        Msg.NODE_DIED: "notify_node_died",
        Msg.NODE_TABLE: "on_node_table",
        Msg.NODE_HEARTBEAT_ACK: "on_heartbeat_ack",
    }

    def __init__(self, cfg: dict[str, Any], secret: bytes | None = None) -> None:
        self.cfg = cfg
        self.role: str = cfg.get("role", "embedded")
        self.is_control = self.role != "node"
        # A name, not a folder: it prefixes this node's abstract socket names.
        self.session: str = cfg["session"]
        self.node_id: str = cfg["node_id"]
        self.host: str | None = cfg.get("host")
        self.ctx = make_context()
        self.auth = FrameAuth(secret) if secret else None
        bind = cfg.get("bind") or endpoint(self.session, "node.ctl", self.host)
        self.inbox = Inbox(self.ctx, bind, self.auth)
        self.addr = self.inbox.address
        self.out = Outbox(self.ctx, self.auth)
        self.control_addr: str = self.addr if self.is_control else cfg["head_addr"]
        disk = cfg.get("spill_dir") or tempfile.gettempdir()
        self.store = SharedMemoryStore(f"{self.session}-arena", cfg["object_store_memory"],
                                       disk, fallback_dir=disk)
        self.arena_path = self.store.arena_path  # /proc/<pid>/fd/<n>, for every process here
        # Held by whoever calls the store; notified when an object is sealed (transfers of
        # an object to other nodes wait for that, see _transfer).
        self.store_lock = threading.Condition(threading.Lock())
        # Store requests from processes on this machine (see _local_channel).
        self.local = LocalChannelServer(store_socket_address(self.session))
        self.driver: str | None = cfg.get("driver_addr")
        self.workers: dict[bytes, _WorkerProc] = {}
        self.by_fd: dict[int, _WorkerProc] = {}
        self.pipes: dict[int, tuple[_WorkerProc, str]] = {}
        self.idle: list[_WorkerProc] = []
        self.waiting_for_worker: deque[_Lease] = deque()
        self.local_leases: dict[bytes, _Lease] = {}  # node role: what the head assigned here
        self.peers: dict[str, dict[str, Any]] = {}  # node id -> its registered info
        self.drivers: dict[int, str] = {}  # pidfd -> control address of a driver here
        self.log_targets: list[str] = [self.driver] if self.driver else []
        self.copies: set[bytes] = set()  # objects pulled from other nodes
        self.pulling: dict[bytes, list[tuple[int, str]]] = {}
        self.running = True
        self.poller = zmq.Poller()
        self.poller.register(self.inbox.socket, zmq.POLLIN)
        self.poller.register(self.local.fileno(), zmq.POLLIN)
        if self.role == "embedded":
            self.poller.register(0, zmq.POLLIN)  # the driver's pipe
        self.watch_fd = -1
        if cfg.get("watch_pid"):  # LocalCluster: stop when the process that started us does
            try:
                self.watch_fd = os.pidfd_open(cfg["watch_pid"])
            except ProcessLookupError:
                self.running = False
            else:
                self.poller.register(self.watch_fd, zmq.POLLIN)
        self.start_failures = 0
        self._draining = False
        self.transfer: TransferServer | None = None
        self.puller: Puller | None = None
        if self.host is not None and secret:
            self.transfer = TransferServer(self.host, secret, self.store, self.store_lock)
            self.puller = Puller(secret, self.store, self.out, self.addr,
                                 store_lock=self.store_lock)
        self.info = {
            "node_id": self.node_id, "addr": self.addr, "host": self.host or "127.0.0.1",
            "transfer_addr": self.transfer.address if self.transfer else "",
            "machine": machine_key(), "arena_path": self.arena_path,
            "object_store_memory": cfg["object_store_memory"], "resources": cfg["resources"],
            "gpu_ids": cfg["gpu_ids"], "session_dir": self.session,
            "store_socket": self.local.path,
            "is_head": self.role == "head", "pid": os.getpid(),
        }
        self.env = self._worker_env()
        self._secret = secret  # for the forkserver, over its socket (never an environment)
        self.max_idle = max(2, int(cfg["resources"].get("CPU", 1)))
        self.last_ack = time.monotonic()
        self.next_tick = 0.0
        # Leases, actors, placement groups and the node table (used only where this node
        # decides them: embedded or head).
        self.control = ControlPlane(self)
        if self.is_control:
            self.control.scheduler.add_node(self.node_id, cfg["resources"], cfg["gpu_ids"])
        self.handlers: dict[int, Callable[..., None]] = {
            kind: getattr(self, name) for kind, name in self.HANDLERS.items()}
        if self.is_control:
            self.handlers.update((kind, getattr(self.control, name))
                                 for kind, name in ControlPlane.CONTROL_HANDLERS.items())
        if self.role == "head":
            self.control.cluster_nodes[self.node_id] = _NodeRecord(self.info, time.monotonic())
            self.peers[self.node_id] = self.info

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TRAINKIT_SESSION_DIR": self.session,
            "TRAINKIT_NODE_ADDR": self.addr,
            "TRAINKIT_CONTROL_ADDR": self.control_addr,
            "TRAINKIT_NODE_ID": self.node_id,
            "TRAINKIT_NODE_HOST": self.host or "",
            "TRAINKIT_ARENA_PATH": self.arena_path,
            "TRAINKIT_ARENA_CAPACITY": str(self.cfg["object_store_memory"]),
            "TRAINKIT_CLUSTER_RESOURCES": json.dumps(self.cfg["resources"]),
            "TRAINKIT_SYS_PATH": json.dumps(self.cfg["sys_path"]),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.pop(SECRET_ENV, None)  # workers get the secret from the forkserver, in memory
        return env

    # ------------------------------------------------------------------ main loop
    def serve(self) -> None:
        self.start_zygote()
        for _ in range(int(self.cfg.get("prestart", 0))):
            self.start_worker()
        if self.transfer is not None:
            self.transfer.start()
        if self.puller is not None:
            self.puller.start()
        if self.role == "node":
            self.register_with_head()
        if self.driver:
            self.out.send(self.driver, (Msg.NODE_READY, self.addr, self.arena_path))
        # Tells whoever started us (CLI, LocalCluster) where we listen.
        report_to_launcher(self.cfg, {"info": self.info})
        sock = self.inbox.socket
        timeout = None if self.role == "embedded" else int(HEARTBEAT_S * 500)
        while self.running:
            # Store connections before the inbox: what a process sent there (an unpin) is in
            # the kernel before anything it sends on zmq later, so it is read first.
            for item, _ev in sorted(self.poller.poll(timeout), key=lambda e: e[0] is sock):
                if item is sock:
                    while self.running:
                        msg = self.inbox.recv_nowait()
                        if msg is None:
                            break
                        self.dispatch(msg)
                elif self.local.owns(item):
                    self.on_local_request(item)
                elif item == self.local.fileno():
                    fd = self.local.accept()
                    if fd is not None:
                        self.poller.register(fd, zmq.POLLIN)
                elif item == 0:
                    if not os.read(0, 4096):
                        self.running = False  # the driver is gone
                elif item in self.by_fd:
                    self.on_worker_exit(self.by_fd[item])
                elif item in self.pipes:
                    self.on_pipe(item)  # one read per wake-up keeps the loop fair
                elif item in self.drivers:
                    self.driver_gone(item, "the driver process exited")
                elif item == self.watch_fd:
                    self.running = False
                elif item == self.zsock.fileno():
                    self.on_zygote()
            if timeout is not None and time.monotonic() >= self.next_tick:
                self.tick()

    def tick(self) -> None:
        """Cluster roles, about once a second: heartbeats and liveness."""
        now = time.monotonic()
        self.next_tick = now + HEARTBEAT_S / 2
        if self.role == "head":
            self.control.check_nodes()
        elif self.role == "node":
            with self.store_lock:
                used = self.store.stats()["used_bytes"]
            self.send(self.control_addr, (Msg.NODE_HEARTBEAT, self.node_id, {"store_used": used}))
            limit = self.cfg.get("head_timeout_s") or HEAD_TIMEOUT_S
            if now - self.last_ack > limit:
                print(f"trainkit node: the head at {self.control_addr} has not answered for "
                      f"{limit:.0f} s; this node stops", file=sys.stderr)
                self.running = False

    def register_with_head(self) -> None:
        """Join the cluster: the head must accept this node within REGISTER_TIMEOUT_S."""
        req_id = 1
        self.out.send(self.control_addr, (Msg.REGISTER_NODE, req_id, self.addr, self.info))
        limit = self.cfg.get("register_timeout_s") or REGISTER_TIMEOUT_S
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.inbox.socket.poll(100):
                continue
            msg = self.inbox.recv_nowait()
            if msg is None:
                continue
            if msg[0] == Msg.REPLY and msg[1] == req_id:
                if not msg[2]:
                    raise RuntimeSystemError(f"the head refused this node: {msg[3]}")
                self.last_ack = time.monotonic()
                if msg[3]:
                    self.on_preload_modules(list(msg[3]))
                return
            self.dispatch(msg)
        raise RuntimeSystemError(
            f"no answer from the trainkit head at {self.control_addr} within "
            f"{limit:.0f} s: is it running there, and does this node use the "
            "same cluster secret (--secret-file or TRAINKIT_CLUSTER_SECRET)?")

    def on_heartbeat_ack(self) -> None:
        self.last_ack = time.monotonic()

    def dispatch(self, msg: tuple[Any, ...]) -> None:
        handler = self.handlers.get(msg[0])
        if handler is None:
            self.inbox.drop("bad_message", f"a message of unknown kind {msg[0]!r}")
            return
        try:
            handler(*msg[1:])
        except Exception:
            import inspect

            try:  # only on failure: did the handler run, or do its fields not fit it?
                inspect.signature(handler).bind(*msg[1:])
            except TypeError:
                self.inbox.drop("bad_message", f"a {msg_name(msg[0])} message with "
                                f"{len(msg) - 1} fields")
                return
            print("trainkit node: internal error handling", msg_name(msg[0]), file=sys.stderr)
            traceback.print_exc()

    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None:
        self.send(addr, (Msg.REPLY, req_id, ok, payload))

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        if addr.startswith(LOCAL_PREFIX):
            self.local.send(addr, msg)
            return
        try:
            self.out.send(addr, msg)
        except Exception:
            pass

    # Requests (kind, req_id, <reply address>, ...) and one-way messages allowed on a local
    # store connection; nothing else is dispatched from there.
    LOCAL_REQUESTS = frozenset({Msg.STORE_ALLOC, Msg.STORE_PIN})
    LOCAL_MESSAGES = frozenset({Msg.STORE_SEAL, Msg.STORE_UNPIN, Msg.STORE_FREE})

    def on_local_request(self, fd: int) -> None:
        got = self.local.read(fd)
        if got is None:
            self.poller.unregister(fd)
            return
        addr, msg = got
        if msg and msg[0] in self.LOCAL_REQUESTS:
            self.dispatch((msg[0], msg[1], addr, *msg[3:]))
        elif msg and msg[0] in self.LOCAL_MESSAGES:
            self.dispatch(msg)
        elif msg:
            print(f"trainkit node: {msg_name(msg[0])} is not a local store request",
                  file=sys.stderr)

    # ------------------------------------------------------------------ workers
    def start_zygote(self) -> None:
        """Start the forkserver that forks workers (see ``_zygote``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(self.env)
        env["TRAINKIT_ZYGOTE_FD"] = str(theirs.fileno())
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", "trainkit.runtime.node.zygote"], stdin=subprocess.DEVNULL,
            env=env, cwd=self.cfg["cwd"], pass_fds=(theirs.fileno(),))
        theirs.close()
        if self._secret:  # first on the socket, so before any fork request
            ours.send(json.dumps({"secret": self._secret.decode()}).encode())
        self.zsock = ours
        self.exit_codes: dict[int, int] = {}
        self.preloads = 0
        self.preloaded: set[str] = set()
        self.early_pins: dict[bytes, list[tuple[int, str]]] = {}
        self.forking: deque[_WorkerProc] = deque()
        self.poller.register(ours.fileno(), zmq.POLLIN)

    def _zygote_message(self, timeout: float | None) -> bool:
        """Handle one message from the forkserver; False if none came within ``timeout``."""
        ready, _, _ = select.select([self.zsock], [], [], timeout)
        if not ready:
            return False
        data = self.zsock.recv(65536)
        if not data:
            raise RuntimeSystemError("the worker forkserver died")
        msg: dict[str, int] = json.loads(data)
        if "exit" in msg:
            self.exit_codes[msg["exit"]] = msg["status"]
        else:
            self.on_forked(self.forking.popleft(), msg["pid"])
        return True

    def start_worker(self) -> _WorkerProc:
        """Ask the forkserver for a worker; it answers with the pid (see ``on_forked``)."""
        worker_id = new_id()
        env = dict(self.env)
        env["TRAINKIT_WORKER_ID"] = worker_id.hex()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        spec = json.dumps({"env": env, "cwd": self.cfg["cwd"]}).encode()
        socket.send_fds(self.zsock, [spec], [stdin_r, out_w, err_w])
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        w = _WorkerProc(worker_id, 0, -1, stdin_w, preloads=self.preloads)
        self.workers[worker_id] = w
        self.forking.append(w)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.pipes[fd] = (w, stream)
            self.poller.register(fd, zmq.POLLIN)
        return w

    def on_preload_modules(self, modules: list[str]) -> None:
        """Have the forkserver import ``modules``, so workers forked later start with them."""
        new = [m for m in modules if m not in self.preloaded]
        if not new:
            return
        self.preloaded.update(new)
        if self.role == "head":  # every node's forkserver, and those that join later
            for node_id, node in self.control.cluster_nodes.items():
                if node_id != self.node_id:
                    self.send(node.info["addr"], (Msg.PRELOAD_MODULES, new))
        socket.send_fds(self.zsock, [json.dumps({"preload": new}).encode()], [])
        self.preloads += 1
        stale, self.idle = self.idle, []
        for w in stale:  # they lack the modules; new workers are forked when needed
            self.send(w.exec_addr, (Msg.RETIRE,))

    def on_forked(self, w: _WorkerProc, pid: int) -> None:
        w.pid = pid
        try:
            w.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone: make its death visible all the same
            w.pidfd = os.eventfd(1)
        self.by_fd[w.pidfd] = w
        self.poller.register(w.pidfd, zmq.POLLIN)
        if w.killed_reason:
            self.local_kill_worker(w, w.killed_reason)

    def on_zygote(self) -> None:
        while self._zygote_message(0):
            pass

    def exit_code(self, pid: int) -> int | None:
        """The worker's exit status, as the forkserver reported it (it reaps its children)."""
        deadline = time.monotonic() + 1.0
        while pid not in self.exit_codes and time.monotonic() < deadline:
            if not self._zygote_message(max(0.0, deadline - time.monotonic())):
                break
        return self.exit_codes.pop(pid, None)

    def on_register_worker(self, worker_id: bytes, pid: int, exec_addr: str,
                           ctl_addr: str, staying: bool = False) -> None:
        w = self.workers.get(worker_id)
        if w is None:
            return
        w.exec_addr, w.ctl_addr, w.ready = exec_addr, ctl_addr, True
        self.start_failures = 0
        if staying and not self.waiting_for_worker:
            self.idle.append(w)  # refused to retire: it owns objects
        else:
            self.worker_available(w)

    def worker_available(self, w: _WorkerProc) -> None:
        if w.preloads < self.preloads:
            # Forked before a preload: it lacks the modules. Every waiting lease has a fresh
            # fork of its own on the way, so this one leaves.
            self.send(w.exec_addr, (Msg.RETIRE,))
        elif self.waiting_for_worker:
            self.assign(self.waiting_for_worker.popleft(), w)
        elif len(self.idle) >= self.max_idle:
            # Too many idle workers: ask this one to leave. One that owns objects stays
            # (their values live in it) and registers again.
            self.send(w.exec_addr, (Msg.RETIRE,))
        else:
            self.idle.append(w)

    def find_worker(self, worker_id: bytes) -> _WorkerProc | None:
        return self.workers.get(worker_id) or self.control.remote_workers.get(worker_id)

    def local_kill_worker(self, w: _WorkerProc, reason: str) -> None:
        if not w.killed_reason:
            w.killed_reason = reason
        if w in self.idle:
            self.idle.remove(w)
        if not w.exited and w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def local_release(self, w: _WorkerProc) -> None:
        """A lease on this node ended: its worker goes back to the pool, or away."""
        w.lease_id = None
        if w.tainted or w.actor_id is not None:
            self.local_kill_worker(w, "done")
        elif not w.exited:
            self.worker_available(w)

    def on_worker_exit(self, w: _WorkerProc) -> None:
        self.poller.unregister(w.pidfd)
        del self.by_fd[w.pidfd]
        os.close(w.pidfd)
        for fd in [fd for fd, (pw, _) in self.pipes.items() if pw is w]:
            self.on_pipe_drain(fd)
        w.exited = True
        os.close(w.stdin_w)
        code = self.exit_code(w.pid)
        self.workers.pop(w.worker_id, None)
        if w in self.idle:
            self.idle.remove(w)
        cause = w.killed_reason or _describe_exit(code)
        if w.ctl_addr:
            self.notify_process_died(w.ctl_addr, cause)
        if self.is_control:
            self.control.worker_gone(w, cause, self.node_id)
        else:
            lease = self.local_leases.pop(w.lease_id, None) if w.lease_id else None
            if lease is not None or w.ctl_addr:
                self.send(self.control_addr, (Msg.NODE_WORKER_EXIT, self.node_id,
                                              w.worker_id if lease is not None else None,
                                              w.ctl_addr, cause))
        if not w.ready:
            self.on_worker_start_failed(w, cause)

    def on_worker_start_failed(self, w: _WorkerProc, cause: str) -> None:
        self.start_failures += 1
        if not self.waiting_for_worker:
            return
        if self.start_failures < 3:
            self.start_worker()
            return
        err = RuntimeSystemError(
            f"worker processes fail to start ({cause}); their output above says why. "
            f"Command: {sys.executable} -m trainkit.runtime.core.worker_process")
        while self.waiting_for_worker:
            lease = self.waiting_for_worker.popleft()
            if not self.is_control:
                self.local_leases.pop(lease.lease_id, None)
                self.send(self.control_addr, (Msg.NODE_LEASE_FAILED, lease.lease_id, err))
            else:
                self.control.on_node_lease_failed(lease.lease_id, err)

    def on_pipe(self, fd: int) -> bool:
        """Forward what a worker wrote; False when nothing more is there to read now."""
        w, stream = self.pipes[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.poller.unregister(fd)
            del self.pipes[fd]
            os.close(fd)
            rest = w.out_partial.pop(fd, b"")
            if rest:
                for target in self.log_targets:
                    self.send(target, (Msg.LOG, stream, rest.decode(errors="replace") + "\n"))
            return False
        data = w.out_partial.pop(fd, b"") + data
        head, sep, tail = data.rpartition(b"\n")
        if tail:
            w.out_partial[fd] = tail
        if sep and self.log_targets and self.cfg.get("log_to_driver", True):
            text = (head + sep).decode(errors="replace")
            lines = [ln if ln.startswith("(") else f"(pid={w.pid}) {ln}"
                     for ln in text.splitlines()]
            if self.host is not None:  # cluster mode: say which node it came from
                lines = [ln.replace(")", f", node={self.host})", 1) for ln in lines]
            for target in self.log_targets:
                self.send(target, (Msg.LOG, stream, "\n".join(lines) + "\n"))
        return True

    def on_pipe_drain(self, fd: int) -> None:
        # Stops at the first empty read: a child the worker started may still hold the
        # pipe open, and its EOF then arrives through the poller later.
        while fd in self.pipes and self.on_pipe(fd):
            pass

    def notify_process_died(self, addr: str, cause: str) -> None:
        """A process died (here or elsewhere): free its objects here, tell the locals."""
        self.out.forget(addr)
        with self.store_lock:
            self.store.free_owned_by(addr)
        targets = set(self.drivers.values()) | {w.ctl_addr for w in self.workers.values()
                                                 if w.ctl_addr}
        if self.driver:
            targets.add(self.driver)
        for t in targets:
            if t != addr:
                self.send(t, (Msg.PROCESS_DIED, addr, cause))

    def notify_node_died(self, node_id: str, cause: str) -> None:
        """Another node died: the processes here drop what lived only there."""
        self.peers.pop(node_id, None)
        targets = set(self.drivers.values()) | {w.ctl_addr for w in self.workers.values()
                                                 if w.ctl_addr}
        if self.driver:
            targets.add(self.driver)
        for t in targets:
            self.send(t, (Msg.NODE_DIED, node_id, cause))

    def on_worker_tainted(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            w.tainted = True

    # ------------------------------------------------------------------ leases on this node
    def local_assign(self, lease: _Lease) -> None:
        """Give ``lease`` (granted on this node) a worker: an idle one or a new fork."""
        while self.idle:
            w = self.idle.pop()
            if not w.exited:
                self.assign(lease, w)
                return
        self.waiting_for_worker.append(lease)
        self.start_worker()

    def assign(self, lease: _Lease, w: _WorkerProc) -> None:
        assert lease.grant is not None
        if self.is_control:
            if not self.control.assigned(lease, w):
                self.control.release_lease(lease)
                return
        else:
            lease.worker = w
            w.lease_id = lease.lease_id
            w.actor_id = lease.actor_id
            self.send(self.control_addr, (Msg.NODE_ASSIGNED, self.node_id, lease.lease_id,
                                          w.worker_id, w.exec_addr, w.ctl_addr))
        gpu_ids = lease.grant.gpu_ids
        if lease.actor_id is None:
            self.send(lease.owner, (Msg.LEASE_GRANTED, lease.lease_id, w.worker_id, w.exec_addr,
                                    w.ctl_addr, gpu_ids))
            return
        name, blob, payload, descs, max_concurrency = lease.actor_spec
        self.send(w.exec_addr, (Msg.BECOME_ACTOR, lease.actor_id, name, blob, payload,
                                descs, gpu_ids, max_concurrency))

    def on_node_assign(self, lease_id: bytes, owner: str, actor_id: bytes | None,
                       actor_spec: tuple[Any, ...], gpu_ids: tuple[int, ...]) -> None:
        lease = _Lease(lease_id, owner, actor_id=actor_id, actor_spec=actor_spec,
                       grant=Grant(lease_id, self.node_id, {}, tuple(gpu_ids), None))
        self.local_leases[lease_id] = lease
        self.local_assign(lease)

    def on_node_release(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is None:
            return
        if w.lease_id is not None:
            self.local_leases.pop(w.lease_id, None)
        self.local_release(w)

    def on_node_kill_worker(self, worker_id: bytes, reason: str) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            self.local_kill_worker(w, reason)

    def on_node_process_died(self, addr: str, cause: str) -> None:
        self.notify_process_died(addr, cause)

    def on_node_table(self, table: dict[str, Any]) -> None:
        self.peers = dict(table["nodes"])
        self.log_targets = list(table["drivers"])

    def node_table(self) -> dict[str, Any]:
        drivers = sorted({d for n in self.control.cluster_nodes.values() for d in n.info.get(
            "drivers", ())})
        self.peers = {nid: n.info for nid, n in self.control.cluster_nodes.items()}
        self.log_targets = drivers
        return {"nodes": self.peers, "drivers": drivers}

    # ------------------------------------------------------------------ drivers
    def on_register_driver(self, req_id: int, reply_to: str, pid: int) -> None:
        """A driver on this machine attached to this node (cluster mode)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.reply(reply_to, req_id, False, RuntimeSystemError("the driver is gone"))
            return
        self.drivers[pidfd] = reply_to
        self.poller.register(pidfd, zmq.POLLIN)
        self.info.setdefault("drivers", []).append(reply_to)
        self.update_drivers()
        self.reply(reply_to, req_id, True, self.info)

    def update_drivers(self) -> None:
        if self.is_control:
            self.control.broadcast_node_table()
        else:
            self.send(self.control_addr, (Msg.REGISTER_NODE, 0, self.addr, self.info))

    def on_driver_exit(self, addr: str) -> None:
        for fd, a in list(self.drivers.items()):
            if a == addr:
                self.driver_gone(fd, "the driver called shutdown()")

    def driver_gone(self, pidfd: int, cause: str) -> None:
        addr = self.drivers.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        drivers = self.info.get("drivers", [])
        if addr in drivers:
            drivers.remove(addr)
        self.notify_process_died(addr, cause)
        if self.is_control:
            self.control.process_gone(addr, cause, self.node_id)
        else:
            self.send(self.control_addr, (Msg.NODE_WORKER_EXIT, self.node_id, None, addr, cause))
        self.update_drivers()

    # ------------------------------------------------------------------ object store
    def on_store_alloc(self, req_id: int, reply_to: str, oid: bytes, size: int,
                       owner: str, files_ok: bool = False) -> None:
        """Room for a new object: an arena offset, or (``files_ok``: the writer can map one)
        the /proc path of a fallback file of its own."""
        with self.store_lock:
            tight = not self.store.fits(size)
        if tight:
            self.drain_inbox()
        try:
            with self.store_lock:
                location = self.store.allocate(oid, size, owner)
                if isinstance(location, str) and not files_ok:
                    self.store.free(oid)
                    raise self.store.out_of_memory(
                        size, oid, "pinned and unsealed objects leave no range large enough "
                        "(and this writer maps only the arena, not a file of its own)")
        except Exception as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.reply(reply_to, req_id, True, location)

    def on_store_seal(self, oid: bytes) -> None:
        with self.store_lock:
            if self.store.contains(oid):
                self.store.seal(oid)
            self.store_lock.notify_all()
        for req_id, reply_to in self.early_pins.pop(oid, ()):
            self.on_store_pin(req_id, reply_to, oid)

    def on_store_pin(self, req_id: int, reply_to: str, oid: bytes, node_id: str = "",
                     size: int = 0) -> None:
        with self.store_lock:
            here = self.store.contains(oid)
            sealed = self.store.is_sealed(oid)
        if here and not sealed:
            # The writer's seal and a reader's pin travel on different sockets: a reader told
            # of the object by its owner can get here first. Answer once the seal arrives.
            self.early_pins.setdefault(oid, []).append((req_id, reply_to))
            return
        if not here and node_id and node_id != self.node_id:
            self.pull(req_id, reply_to, oid, node_id, size)
            return
        try:
            with self.store_lock:
                result = self.store.pin(oid)
        except KeyError:
            self.reply(reply_to, req_id, False, ObjectLostError(
                oid.hex(), "it is not in the object store (it was freed)"))
            return
        except Exception as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.reply(reply_to, req_id, True, result)

    def pull(self, req_id: int, reply_to: str, oid: bytes, node_id: str, size: int) -> None:
        """Fetch an object another node holds; the reader's pin is answered when it is here."""
        waiters = self.pulling.get(oid)
        if waiters is not None:
            waiters.append((req_id, reply_to))
            return
        peer = self.peers.get(node_id)
        if peer is None or self.puller is None:
            self.reply(reply_to, req_id, False, ObjectLostError(
                oid.hex(), f"it lived on node {node_id[:8]}, which is gone"))
            return
        try:
            with self.store_lock:
                self.store.allocate(oid, size, "")  # an arena range or a fallback file
        except Exception as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.pulling[oid] = [(req_id, reply_to)]
        self.puller.submit(oid, peer["transfer_addr"], size)

    def on_store_pulled(self, oid: bytes, error: str | None) -> None:
        waiters = self.pulling.pop(oid, [])
        if error is not None:
            with self.store_lock:
                self.store.free(oid)
            for req_id, reply_to in waiters:
                self.reply(reply_to, req_id, False, ObjectLostError(
                    oid.hex(), f"fetching it from another node failed: {error}"))
            return
        with self.store_lock:
            self.store.seal(oid)
        self.copies.add(oid)
        for req_id, reply_to in waiters:
            self.on_store_pin(req_id, reply_to, oid)
        self.drop_unused_copy(oid)

    def drop_unused_copy(self, oid: bytes) -> None:
        """A pulled copy lives while readers here pin it; the owner's copy stays the source."""
        if oid in self.copies:
            with self.store_lock:
                if self.store.pin_count(oid) == 0:
                    self.store.free(oid)
                    self.copies.discard(oid)

    def on_store_unpin(self, oid: bytes) -> None:
        # Also for a freed object whose readers still pinned it (RELEASING): the last unpin
        # releases its range. `contains()` is False for those, so it must not gate this.
        try:
            with self.store_lock:
                self.store.unpin(oid)
        except (KeyError, ValueError):
            pass  # its owner died and the store already dropped it
        self.drop_unused_copy(oid)

    def on_store_free(self, oids: list[bytes], node_id: str = "") -> None:
        if node_id and node_id != self.node_id:
            peer = self.peers.get(node_id)
            if peer is not None:
                self.send(peer["addr"], (Msg.STORE_FREE, oids))
            return
        with self.store_lock:
            for oid in oids:
                if oid not in self.copies:
                    self.store.free(oid)

    def rejected_frames(self) -> dict[str, dict[str, int]]:
        """Frames this node's inbox and its object server dropped, by reason."""
        return {"inbox": self.inbox.rejected,
                "objects": dict(self.transfer.auth.rejected) if self.transfer else {}}

    def drain_local(self) -> None:
        """Handle what the store connections hold now, before a reply that reports on the
        store (so stats asked for after an unpin count it)."""
        fds = self.local.fds()
        if not fds:
            return
        poll = select.poll()
        for fd in fds:
            poll.register(fd, select.POLLIN)
        while ready := poll.poll(0):
            for fd, _ in ready:
                if self.local.owns(fd):
                    self.on_local_request(fd)  # one message; EOF closes and forgets it
                if not self.local.owns(fd):
                    poll.unregister(fd)

    def drain_inbox(self) -> None:
        """Handle the messages waiting in the inbox now (frees, unpins), before an allocation
        that would otherwise spill or fail for room they give back."""
        if self._draining:
            return
        self._draining = True
        try:
            while self.running:
                msg = self.inbox.recv_nowait()
                if msg is None:
                    return
                self.dispatch(msg)
        finally:
            self._draining = False

    def store_info(self) -> dict[str, Any]:
        self.drain_local()
        with self.store_lock:
            stats = self.store.stats()
        if self.control.cluster_nodes:
            stats["capacity"] = sum(int(n.info["object_store_memory"])
                                    for n in self.control.cluster_nodes.values())
        return stats

    # ------------------------------------------------------------------ shutdown
    def on_shutdown(self, req_id: int, reply_to: str) -> None:
        self.running = False
        self.shutdown_reply = (reply_to, req_id)

    def cleanup(self) -> None:
        for w in list(self.workers.values()):
            self.local_kill_worker(w, "shutdown")
        # Killing the forkserver also kills any worker it forked (their death signal).
        self.zygote.kill()
        self.zygote.wait()
        self.zsock.close()
        deadline = time.monotonic() + 5
        for w in list(self.workers.values()):
            # Wait for each exit (its pidfd turns readable) so nothing outlives shutdown.
            if w.pidfd >= 0:
                select.select([w.pidfd], [], [], max(0.0, deadline - time.monotonic()))
                os.close(w.pidfd)
            os.close(w.stdin_w)
        for fd in self.pipes:
            os.close(fd)
        for fd in self.drivers:
            os.close(fd)
        if self.transfer is not None:
            self.transfer.stop()
        if self.puller is not None:
            self.puller.stop()
        self.local.close()
        self.store.close()
        reply = getattr(self, "shutdown_reply", None)
        if reply is not None:
            self.reply(reply[0], reply[1], True, None)
        self.out.close()
        self.inbox.close()
        self.ctx.term()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the process exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the process was killed by {name}"
    return f"the process exited with code {code}"

def report_to_launcher(cfg: dict[str, Any], what: dict[str, Any]) -> None:
    """Write ``{"info": ...}`` (serving) or ``{"error": ...}`` (stopping) to the launcher's
    pipe, once; a launcher that has gone away (a detached start) misses nothing it needs."""
    fd = cfg.pop("ready_fd", None)
    if fd is None:
        return
    try:
        os.write(fd, json.dumps(what).encode() + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.environ.pop(SECRET_ENV, None)  # never handed on, whoever started us
    secret = None
    if cfg.get("role", "embedded") != "embedded":  # a cluster node: no secret, no service
        try:
            secret = receive_secret()  # the launcher writes it to our stdin (_cluster)
        except ClusterSecretError as e:
            print(f"trainkit node: {e}", file=sys.stderr)
            report_to_launcher(cfg, {"error": str(e)})  # the launcher says why we stopped
            sys.exit(1)
    node = NodeService(cfg, secret)
    try:
        node.serve()
    except RuntimeSystemError as e:  # e.g. the head refused or never answered: say why
        print(f"trainkit node: {e}", file=sys.stderr)
        report_to_launcher(cfg, {"error": str(e)})
        sys.exit(1)
    finally:
        node.cleanup()


if __name__ == "__main__":
    main()
