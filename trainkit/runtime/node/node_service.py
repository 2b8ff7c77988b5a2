"""The node service: one process per node that runs its workers, its store and (embedded or
head) the control plane.

``python -m trainkit.runtime.node.node_service`` (started by ``trainkit.init()``,
``trainkit start`` or ``trainkit.testing.LocalCluster``). One thread runs a zmq poller over
the control inbox, the store socket and its connections, every worker's pidfd (so a worker's
death is seen the moment it happens) and output pipes, and the parent's pipe. Its parts, each
the one owner of its state: ``worker_pool.WorkerPool`` (the forkserver, forks, the idle pool,
exits), ``worker_output.WorkerOutput`` (what workers print, forwarded to the drivers),
``store_service.StoreService`` (the object store and its requests) and
``control_plane.ControlPlane`` (leases, actors, placement groups, the node table). Roles
(``cfg["role"]``):

- ``embedded``: one node owned by one driver, on ipc sockets; the driver's pipe closing
  (EOF) means it died: tear everything down.
- ``head``: the first node of a cluster and its control plane, on tcp.
- ``node``: a node that joined a head; it runs what the head assigns to it, answers
  heartbeats, serves its objects to other nodes (``store.transfer``) and exits when the head
  stops answering.

Nothing here has a name in a file system (issue 13, leftovers): sockets are in the abstract
namespace (``@<session>/...``, see ``wire.transport.endpoint`` and ``wire.local_channel``), the
arena is a memfd and spill and fallback files are unnamed (``store.object_store``); other
processes open them through ``/proc/<this pid>/fd/``. A launcher learns that this node serves,
or why it could not start, on the pipe ``cfg["ready_fd"]``. So when every process is SIGKILLed
at once the kernel reclaims everything, and a clean stop has nothing to remove either.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any
from typing import ClassVar

import zmq

from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.node.control_plane import ControlPlane
from trainkit.runtime.node.control_plane import _Lease
from trainkit.runtime.node.control_plane import _NodeRecord
from trainkit.runtime.node.control_plane import _WorkerProc
from trainkit.runtime.node.machine import machine_key
from trainkit.runtime.node.scheduler import Grant
from trainkit.runtime.node.store_service import StoreService
from trainkit.runtime.node.worker_output import WorkerOutput
from trainkit.runtime.node.worker_pool import WorkerPool
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.local_channel import LOCAL_PREFIX
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import msg_name
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
    """One node's service: its parts, its inbox loop, and what ties the parts together.

    The parts: ``pool`` (a ``WorkerPool``: the forkserver and the workers), ``objects`` (a
    ``StoreService``: the object store and the store socket) and, embedded or head,
    ``control`` (a ``ControlPlane``: leases, actors, placement groups, the node table). This
    class owns the sockets and the poller, the drivers attached here, and the node role's
    side of the cluster (heartbeats, what the head assigned to this node).
    """

    # What this node service is told: the part ("" for the service itself) and the method
    # that handles each kind (a control plane, embedded or head, adds CONTROL_HANDLERS).
    # tests/runtime/test_wire.py holds each method's parameters to the kind's FIELDS.
    HANDLERS: ClassVar[dict[int, tuple[str, str]]] = {
        Msg.REGISTER_WORKER: ("pool", "on_register_worker"),
        Msg.WORKER_TAINTED: ("pool", "on_worker_tainted"),
        Msg.STORE_ALLOC: ("objects", "on_store_alloc"),
        Msg.STORE_SEAL: ("objects", "on_store_seal"),
        Msg.STORE_PIN: ("objects", "on_store_pin"),
        Msg.STORE_UNPIN: ("objects", "on_store_unpin"),
        Msg.STORE_FREE: ("objects", "on_store_free"),
        Msg.STORE_PULLED: ("objects", "on_store_pulled"),
        Msg.SHUTDOWN: ("", "on_shutdown"),
        Msg.PRELOAD_MODULES: ("", "on_preload_modules"),
        Msg.REGISTER_DRIVER: ("", "on_register_driver"),
        Msg.DRIVER_EXIT: ("", "on_driver_exit"),
        Msg.NODE_ASSIGN: ("", "on_node_assign"),
        Msg.NODE_RELEASE: ("", "on_node_release"),
        Msg.NODE_KILL_WORKER: ("", "on_node_kill_worker"),
        Msg.NODE_PROCESS_DIED: ("", "notify_process_died"),
        Msg.NODE_DIED: ("", "notify_node_died"),
        Msg.NODE_TABLE: ("", "on_node_table"),
        Msg.NODE_HEARTBEAT_ACK: ("", "on_heartbeat_ack"),
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
        self.poller = zmq.Poller()
        self.poller.register(self.inbox.socket, zmq.POLLIN)
        disk = cfg.get("spill_dir") or tempfile.gettempdir()
        self.objects = StoreService(self, self.session, cfg["object_store_memory"], disk)
        if self.host is not None and secret:
            self.objects.serve_other_nodes(self.host, secret, self.out, self.addr)
        self.local = self.objects.local
        self.watch(self.local.fileno())
        self.driver: str | None = cfg.get("driver_addr")
        self.local_leases: dict[bytes, _Lease] = {}  # node role: what the head assigned here
        self.peers: dict[str, dict[str, Any]] = {}  # node id -> its registered info
        self.drivers: dict[int, str] = {}  # pidfd -> control address of a driver here
        self.log_targets: list[str] = [self.driver] if self.driver else []
        self.running = True
        if self.role == "embedded":
            self.watch(0)  # the driver's pipe
        self.watch_fd = -1
        if cfg.get("watch_pid"):  # LocalCluster: stop when the process that started us does
            try:
                self.watch_fd = os.pidfd_open(cfg["watch_pid"])
            except ProcessLookupError:
                self.running = False
            else:
                self.watch(self.watch_fd)
        self._draining = False
        transfer = self.objects.transfer
        self.info = {
            "node_id": self.node_id, "addr": self.addr, "host": self.host or "127.0.0.1",
            "transfer_addr": transfer.address if transfer else "",
            "machine": machine_key(), "arena_path": self.objects.arena_path,
            "object_store_memory": cfg["object_store_memory"], "resources": cfg["resources"],
            "gpu_ids": cfg["gpu_ids"], "session_dir": self.session,
            "store_socket": self.local.path,
            "is_head": self.role == "head", "pid": os.getpid(),
        }
        output = WorkerOutput(self.host, self.forward_output, self.unwatch,
                              forward=cfg.get("log_to_driver", True))
        self.pool = WorkerPool(self, self._worker_env(), cfg["cwd"], secret,
                               max_idle=max(2, int(cfg["resources"].get("CPU", 1))),
                               output=output)
        self.last_ack = time.monotonic()
        self.next_tick = 0.0
        # Leases, actors, placement groups and the node table (used only where this node
        # decides them: embedded or head).
        self.control = ControlPlane(self)
        if self.is_control:
            self.control.scheduler.add_node(self.node_id, cfg["resources"], cfg["gpu_ids"])
        parts: dict[str, object] = {"": self, "pool": self.pool, "objects": self.objects}
        self.handlers: dict[int, Callable[..., None]] = {
            kind: getattr(parts[part], name) for kind, (part, name) in self.HANDLERS.items()}
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
            "TRAINKIT_ARENA_PATH": self.objects.arena_path,
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
        self.pool.start(int(self.cfg.get("prestart", 0)))
        self.objects.start()
        if self.role == "node":
            self.register_with_head()
        if self.driver:
            self.out.send(self.driver, (Msg.NODE_READY, self.addr, self.objects.arena_path))
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
                        self.watch(fd)
                elif item == 0:
                    if not os.read(0, 4096):
                        self.running = False  # the driver is gone
                elif self.pool.owns(item):
                    self.pool.on_fd(item)
                elif item in self.drivers:
                    self.driver_gone(item, "the driver process exited")
                elif item == self.watch_fd:
                    self.running = False
            if timeout is not None and time.monotonic() >= self.next_tick:
                self.tick()

    def watch(self, fd: int) -> None:
        self.poller.register(fd, zmq.POLLIN)

    def unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)

    def tick(self) -> None:
        """Cluster roles, about once a second: heartbeats and liveness."""
        now = time.monotonic()
        self.next_tick = now + HEARTBEAT_S / 2
        if self.role == "head":
            self.control.check_nodes()
        elif self.role == "node":
            used = self.objects.used_bytes()
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

    def forward_output(self, stream: str, text: str) -> None:
        """What a worker here wrote goes to the drivers (see ``worker_output``)."""
        for target in self.log_targets:
            self.send(target, (Msg.LOG, stream, text))

    # Requests (kind, req_id, <reply address>, ...) and one-way messages allowed on a local
    # store connection; nothing else is dispatched from there.
    LOCAL_REQUESTS = frozenset({Msg.STORE_ALLOC, Msg.STORE_PIN})
    LOCAL_MESSAGES = frozenset({Msg.STORE_SEAL, Msg.STORE_UNPIN, Msg.STORE_FREE})

    def on_local_request(self, fd: int) -> None:
        got = self.local.read(fd)
        if got is None:
            self.unwatch(fd)
            return
        addr, msg = got
        if msg and msg[0] in self.LOCAL_REQUESTS:
            self.dispatch((msg[0], msg[1], addr, *msg[3:]))
        elif msg and msg[0] in self.LOCAL_MESSAGES:
            self.dispatch(msg)
        elif msg:
            print(f"trainkit node: {msg_name(msg[0])} is not a local store request",
                  file=sys.stderr)

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

    def peer(self, node_id: str) -> dict[str, Any] | None:
        return self.peers.get(node_id)

    # ------------------------------------------------------------------ workers
    def on_preload_modules(self, modules: list[str]) -> None:
        """Every forkserver imports ``modules``, so workers forked later start with them."""
        new = self.pool.preload(modules)
        if new and self.role == "head":  # every node's forkserver, and those that join later
            for node_id, node in self.control.cluster_nodes.items():
                if node_id != self.node_id:
                    self.send(node.info["addr"], (Msg.PRELOAD_MODULES, new))

    def assign(self, lease: _Lease, w: _WorkerProc) -> None:
        """``w`` runs ``lease`` (granted on this node): tell the control plane and the owner,
        or have the worker become the lease's actor."""
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

    def worker_exited(self, w: _WorkerProc, cause: str) -> None:
        """A worker here died: its objects, its owners' processes and its lease learn it."""
        if w.ctl_addr:
            self.notify_process_died(w.ctl_addr, cause)
        if self.is_control:
            self.control.worker_gone(w, cause, self.node_id)
            return
        lease = self.local_leases.pop(w.lease_id, None) if w.lease_id else None
        if lease is not None or w.ctl_addr:
            self.send(self.control_addr, (Msg.NODE_WORKER_EXIT, self.node_id,
                                          w.worker_id if lease is not None else None,
                                          w.ctl_addr, cause))

    def leases_failed(self, leases: list[_Lease], err: Exception) -> None:
        for lease in leases:
            if self.is_control:
                self.control.on_node_lease_failed(lease.lease_id, err)
            else:
                self.local_leases.pop(lease.lease_id, None)
                self.send(self.control_addr, (Msg.NODE_LEASE_FAILED, lease.lease_id, err))

    # The control plane's hands on this node (``control_plane.ControlHost``).
    def local_assign(self, lease: _Lease) -> None:
        self.pool.give(lease)

    def local_unwait(self, lease: _Lease) -> None:
        self.pool.unwait(lease)

    def local_kill_worker(self, w: _WorkerProc, reason: str) -> None:
        self.pool.kill(w, reason)

    def local_release(self, w: _WorkerProc) -> None:
        self.pool.release(w)

    def preloaded_modules(self) -> list[str]:
        return sorted(self.pool.preloaded)

    def find_worker(self, worker_id: bytes) -> _WorkerProc | None:
        return self.pool.workers.get(worker_id) or self.control.remote_workers.get(worker_id)

    def notify_process_died(self, addr: str, cause: str) -> None:
        """A process died (here or elsewhere): free its objects here, tell the locals."""
        self.out.forget(addr)
        self.objects.free_owned_by(addr)
        for t in self._local_processes():
            if t != addr:
                self.send(t, (Msg.PROCESS_DIED, addr, cause))

    def notify_node_died(self, node_id: str, cause: str) -> None:
        """Another node died: the processes here drop what lived only there."""
        self.peers.pop(node_id, None)
        for t in self._local_processes():
            self.send(t, (Msg.NODE_DIED, node_id, cause))

    def _local_processes(self) -> set[str]:
        targets = set(self.drivers.values()) | self.pool.ctl_addrs()
        if self.driver:
            targets.add(self.driver)
        return targets

    def store_info(self) -> dict[str, Any]:
        stats = self.objects.stats()
        if self.control.cluster_nodes:
            stats["capacity"] = sum(int(n.info["object_store_memory"])
                                    for n in self.control.cluster_nodes.values())
        return stats

    def rejected_frames(self) -> dict[str, dict[str, int]]:
        """Frames this node's inbox and its object server dropped, by reason."""
        return {"inbox": self.inbox.rejected, "objects": self.objects.rejected_frames()}

    def node_table(self) -> dict[str, Any]:
        drivers = sorted({d for n in self.control.cluster_nodes.values() for d in n.info.get(
            "drivers", ())})
        self.peers = {nid: n.info for nid, n in self.control.cluster_nodes.items()}
        self.log_targets = drivers
        return {"nodes": self.peers, "drivers": drivers}

    # ------------------------------------------------------------------ node role: the head's
    def on_node_assign(self, lease_id: bytes, owner: str, actor_id: bytes | None,
                       actor_spec: tuple[Any, ...], gpu_ids: tuple[int, ...]) -> None:
        lease = _Lease(lease_id, owner, actor_id=actor_id, actor_spec=actor_spec,
                       grant=Grant(lease_id, self.node_id, {}, tuple(gpu_ids), None))
        self.local_leases[lease_id] = lease
        self.pool.give(lease)

    def on_node_release(self, worker_id: bytes) -> None:
        w = self.pool.workers.get(worker_id)
        if w is None:
            return
        if w.lease_id is not None:
            self.local_leases.pop(w.lease_id, None)
        self.pool.release(w)

    def on_node_kill_worker(self, worker_id: bytes, reason: str) -> None:
        w = self.pool.workers.get(worker_id)
        if w is not None:
            self.pool.kill(w, reason)

    def on_node_table(self, table: dict[str, Any]) -> None:
        self.peers = dict(table["nodes"])
        self.log_targets = list(table["drivers"])

    # ------------------------------------------------------------------ drivers
    def on_register_driver(self, req_id: int, reply_to: str, pid: int) -> None:
        """A driver on this machine attached to this node (cluster mode)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.reply(reply_to, req_id, False, RuntimeSystemError("the driver is gone"))
            return
        self.drivers[pidfd] = reply_to
        self.watch(pidfd)
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
        self.unwatch(pidfd)
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

    # ------------------------------------------------------------------ shutdown
    def on_shutdown(self, req_id: int, reply_to: str) -> None:
        self.running = False
        self.shutdown_reply = (reply_to, req_id)

    def cleanup(self) -> None:
        self.pool.close()
        for fd in self.drivers:
            os.close(fd)
        self.objects.close()
        reply = getattr(self, "shutdown_reply", None)
        if reply is not None:
            self.reply(reply[0], reply[1], True, None)
        self.out.close()
        self.inbox.close()
        self.ctx.term()


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
