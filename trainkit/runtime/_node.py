"""The node service: resources, the worker pool, leases, actors, placement groups, the store.

``python -m trainkit.runtime._node`` (started by ``trainkit.init()``). One thread runs a
zmq poller over the control inbox, every worker's pidfd (so a worker's death is seen the
moment it happens) and output pipes, and the driver's pipe (EOF = the driver died: tear
everything down). Decisions about resources are made by the pure ``ResourceScheduler``;
this module only carries them out.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import zmq

from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import ObjectLostError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime._object_store import SharedMemoryStore
from trainkit.runtime._protocol import ActorStatus
from trainkit.runtime._protocol import Msg
from trainkit.runtime._protocol import msg_name
from trainkit.runtime._protocol import new_id
from trainkit.runtime._scheduler import Grant
from trainkit.runtime._scheduler import PlacementGroupReady
from trainkit.runtime._scheduler import RequestId
from trainkit.runtime._scheduler import ResourceScheduler
from trainkit.runtime._transport import Inbox
from trainkit.runtime._transport import Outbox
from trainkit.runtime._transport import make_context


@dataclass(eq=False)
class _WorkerProc:
    worker_id: bytes
    pid: int
    pidfd: int
    stdin_w: int  # its stdin's write end: our exit closes it, and the worker sees EOF
    exited: bool = False
    exec_addr: str = ""
    ctl_addr: str = ""
    ready: bool = False
    lease_id: bytes | None = None
    actor_id: bytes | None = None
    tainted: bool = False
    killed_reason: str = ""
    preloads: int = 0  # how many preload requests the forkserver had seen when forking it
    out_partial: dict[int, bytes] = field(default_factory=dict)


@dataclass(eq=False)
class _Lease:
    lease_id: bytes
    owner: str
    actor_id: bytes | None = None
    worker: _WorkerProc | None = None
    grant: Grant | None = None


@dataclass(eq=False)
class _Actor:
    actor_id: bytes
    owner: str
    name: str
    registered_name: tuple[str, str] | None
    spec: tuple[Any, ...]  # (cls_blob, payload, descs, max_concurrency)
    resources: dict[str, float]
    placement: tuple[str, int] | None
    restarts_left: int
    meta: dict[str, Any]
    status: ActorStatus = ActorStatus.PENDING
    cause: str = ""
    lease_id: bytes | None = None
    worker: _WorkerProc | None = None
    no_restart: bool = False
    subscribers: set[str] = field(default_factory=set)


class NodeService:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.session_dir: str = cfg["session_dir"]
        self.node_id: str = cfg["node_id"]
        self.ctx = make_context()
        self.addr = f"ipc://{self.session_dir}/node.ctl"
        self.inbox = Inbox(self.ctx, self.addr)
        self.out = Outbox(self.ctx)
        self.scheduler = ResourceScheduler()
        self.scheduler.add_node(self.node_id, cfg["resources"], cfg["gpu_ids"])
        self.store = SharedMemoryStore(cfg["arena_path"], cfg["object_store_memory"],
                                       os.path.join(self.session_dir, "spill"))
        self.driver: str = cfg["driver_addr"]
        self.workers: dict[bytes, _WorkerProc] = {}
        self.by_fd: dict[int, _WorkerProc] = {}
        self.pipes: dict[int, tuple[_WorkerProc, str]] = {}
        self.idle: list[_WorkerProc] = []
        self.waiting_for_worker: deque[_Lease] = deque()
        self.leases: dict[RequestId, _Lease] = {}
        self.actors: dict[bytes, _Actor] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self.pg_waiters: dict[str, list[tuple[str, int]]] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.inbox.socket, zmq.POLLIN)
        self.poller.register(0, zmq.POLLIN)  # the driver's pipe
        self.running = True
        self.start_failures = 0
        self.env = self._worker_env()
        self.max_idle = max(2, int(cfg["resources"].get("CPU", 1)))
        self.handlers: dict[int, Callable[..., None]] = {
            Msg.REGISTER_WORKER: self.on_register_worker,
            Msg.REQUEST_LEASE: self.on_request_lease,
            Msg.RETURN_LEASE: self.on_return_lease,
            Msg.CREATE_ACTOR: self.on_create_actor,
            Msg.SUBSCRIBE_ACTOR: self.on_subscribe_actor,
            Msg.GET_NAMED_ACTOR: self.on_get_named_actor,
            Msg.KILL_ACTOR: self.on_kill_actor,
            Msg.ACTOR_READY: self.on_actor_ready,
            Msg.ACTOR_INIT_FAILED: self.on_actor_init_failed,
            Msg.ACTOR_EXITING: self.on_actor_exiting,
            Msg.WORKER_TAINTED: self.on_worker_tainted,
            Msg.WORKER_BLOCKED: self.on_worker_blocked,
            Msg.WORKER_UNBLOCKED: self.on_worker_unblocked,
            Msg.CREATE_PG: self.on_create_pg,
            Msg.REMOVE_PG: self.on_remove_pg,
            Msg.WAIT_PG: self.on_wait_pg,
            Msg.STORE_ALLOC: self.on_store_alloc,
            Msg.STORE_SEAL: self.on_store_seal,
            Msg.STORE_PIN: self.on_store_pin,
            Msg.STORE_UNPIN: self.on_store_unpin,
            Msg.STORE_FREE: self.on_store_free,
            Msg.CLUSTER_INFO: self.on_cluster_info,
            Msg.KILL_WORKER: self.on_kill_worker,
            Msg.SHUTDOWN: self.on_shutdown,
            Msg.PRELOAD_MODULES: self.on_preload_modules,
        }

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TRAINKIT_SESSION_DIR": self.session_dir,
            "TRAINKIT_NODE_ADDR": self.addr,
            "TRAINKIT_NODE_ID": self.node_id,
            "TRAINKIT_ARENA_PATH": self.cfg["arena_path"],
            "TRAINKIT_ARENA_CAPACITY": str(self.cfg["object_store_memory"]),
            "TRAINKIT_CLUSTER_RESOURCES": json.dumps(self.scheduler.total_resources()),
            "TRAINKIT_SYS_PATH": json.dumps(self.cfg["sys_path"]),
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    # ------------------------------------------------------------------ main loop
    def serve(self) -> None:
        self.start_zygote()
        for _ in range(int(self.cfg.get("prestart", 0))):
            self.start_worker()
        self.out.send(self.driver, (Msg.NODE_READY, self.addr))
        sock = self.inbox.socket
        while self.running:
            for item, _ev in self.poller.poll():
                if item is sock:
                    while self.running:
                        msg = self.inbox.recv_nowait()
                        if msg is None:
                            break
                        self.dispatch(msg)
                elif item == 0:
                    if not os.read(0, 4096):
                        self.running = False  # the driver is gone
                elif item in self.by_fd:
                    self.on_worker_exit(self.by_fd[item])
                elif item in self.pipes:
                    self.on_pipe(item)  # one read per wake-up keeps the loop fair
                elif item == self.zsock.fileno():
                    self.on_zygote()

    def dispatch(self, msg: tuple[Any, ...]) -> None:
        handler = self.handlers.get(msg[0])
        if handler is None:
            print(f"trainkit node: unknown message {msg[0]!r}", file=sys.stderr)
            return
        try:
            handler(*msg[1:])
        except Exception:
            print("trainkit node: internal error handling", msg_name(msg[0]), file=sys.stderr)
            traceback.print_exc()

    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None:
        self.send(addr, (Msg.REPLY, req_id, ok, payload))

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        try:
            self.out.send(addr, msg)
        except Exception:
            pass

    # ------------------------------------------------------------------ workers
    def start_zygote(self) -> None:
        """Start the forkserver that forks workers (see ``_zygote``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(self.env)
        env["TRAINKIT_ZYGOTE_FD"] = str(theirs.fileno())
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", "trainkit.runtime._zygote"], stdin=subprocess.DEVNULL,
            env=env, cwd=self.cfg["cwd"], pass_fds=(theirs.fileno(),))
        theirs.close()
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
            self.kill_worker(w, w.killed_reason)

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

    def kill_worker(self, w: _WorkerProc, reason: str) -> None:
        if not w.killed_reason:
            w.killed_reason = reason
        if w in self.idle:
            self.idle.remove(w)
        if not w.exited and w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
                self.send(self.driver, (Msg.LOG, stream, rest.decode(errors="replace") + "\n"))
            return False
        data = w.out_partial.pop(fd, b"") + data
        head, sep, tail = data.rpartition(b"\n")
        if tail:
            w.out_partial[fd] = tail
        if sep and self.cfg.get("log_to_driver", True):
            text = (head + sep).decode(errors="replace")
            lines = [ln if ln.startswith("(") else f"(pid={w.pid}) {ln}"
                     for ln in text.splitlines()]
            self.send(self.driver, (Msg.LOG, stream, "\n".join(lines) + "\n"))
        return True

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
            self.store.free_owned_by(w.ctl_addr)
            self.broadcast_death(w.ctl_addr, cause)
        lease = self.leases.pop(w.lease_id, None) if w.lease_id else None
        if lease is not None:
            self.scheduler.release(lease.lease_id)
            if lease.actor_id is None:
                self.send(lease.owner, (Msg.WORKER_DIED, lease.lease_id, cause))
        if w.actor_id is not None:
            actor = self.actors.get(w.actor_id)
            if actor is not None and actor.worker is w:
                self.on_actor_died(actor, cause)
        if not w.ready:
            self.on_worker_start_failed(w, cause)
        self.schedule()

    def on_worker_start_failed(self, w: _WorkerProc, cause: str) -> None:
        self.start_failures += 1
        if not self.waiting_for_worker:
            return
        if self.start_failures < 3:
            self.start_worker()
            return
        err = RuntimeSystemError(
            f"worker processes fail to start ({cause}); their output above says why. "
            f"Command: {sys.executable} -m trainkit.runtime._worker")
        while self.waiting_for_worker:
            lease = self.waiting_for_worker.popleft()
            self.leases.pop(lease.lease_id, None)
            self.scheduler.release(lease.lease_id)
            if lease.actor_id is None:
                self.send(lease.owner, (Msg.LEASE_FAILED, lease.lease_id, err))
            elif (actor := self.actors.get(lease.actor_id)) is not None:
                actor.no_restart = True
                self.set_dead(actor, str(err))

    def on_pipe_drain(self, fd: int) -> None:
        # Stops at the first empty read: a child the worker started may still hold the
        # pipe open, and its EOF then arrives through the poller later.
        while fd in self.pipes and self.on_pipe(fd):
            pass

    def broadcast_death(self, addr: str, cause: str) -> None:
        self.out.forget(addr)
        targets = {self.driver} | {w.ctl_addr for w in self.workers.values() if w.ctl_addr}
        for t in targets:
            if t != addr:
                self.send(t, (Msg.PROCESS_DIED, addr, cause))
        # Actors owned by the dead process die with it (fate sharing).
        for actor in list(self.actors.values()):
            if actor.owner == addr and actor.status is not ActorStatus.DEAD:
                self.kill_actor(actor, f"its owner died ({cause})")

    def on_worker_tainted(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            w.tainted = True

    def on_worker_blocked(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None and w.lease_id is not None and self.scheduler.lend_cpus(w.lease_id):
            self.schedule()

    def on_worker_unblocked(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None and w.lease_id is not None:
            self.scheduler.reclaim_cpus(w.lease_id)

    def on_kill_worker(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            self.kill_worker(w, "killed by cancel(force=True)")

    # ------------------------------------------------------------------ leases
    def on_request_lease(self, lease_id: bytes, owner: str, resources: dict[str, float],
                         placement: tuple[str, int] | None) -> None:
        try:
            self.scheduler.submit(lease_id, resources, placement)
        except (InfeasibleError, ValueError) as e:
            self.send(owner, (Msg.LEASE_FAILED, lease_id, e))
            return
        self.leases[lease_id] = _Lease(lease_id, owner)
        self.schedule()

    def schedule(self) -> None:
        for ev in self.scheduler.schedule():
            if isinstance(ev, PlacementGroupReady):
                for addr, req_id in self.pg_waiters.pop(ev.pg_id, []):
                    self.reply(addr, req_id, True, True)
            else:
                self.on_grant(ev)

    def on_grant(self, grant: Grant) -> None:
        lease = self.leases.get(grant.request_id)
        if lease is None:
            self.scheduler.release(grant.request_id)
            return
        lease.grant = grant
        while self.idle:
            w = self.idle.pop()
            if not w.exited:
                self.assign(lease, w)
                return
        self.waiting_for_worker.append(lease)
        self.start_worker()

    def assign(self, lease: _Lease, w: _WorkerProc) -> None:
        assert lease.grant is not None
        lease.worker = w
        w.lease_id = lease.lease_id
        gpu_ids = lease.grant.gpu_ids
        if lease.actor_id is None:
            self.send(lease.owner, (Msg.LEASE_GRANTED, lease.lease_id, w.worker_id, w.exec_addr,
                                    w.ctl_addr, gpu_ids))
            return
        actor = self.actors.get(lease.actor_id)
        if actor is None or actor.status is ActorStatus.DEAD:
            self.release_lease(lease)
            return
        actor.worker = w
        w.actor_id = actor.actor_id
        blob, payload, descs, max_concurrency = actor.spec
        self.send(w.exec_addr, (Msg.BECOME_ACTOR, actor.actor_id, actor.name, blob, payload,
                                descs, gpu_ids, max_concurrency))

    def release_lease(self, lease: _Lease) -> None:
        self.leases.pop(lease.lease_id, None)
        self.scheduler.release(lease.lease_id)
        w = lease.worker
        if w is not None:
            w.lease_id = None
            if w.tainted or w.actor_id is not None:
                self.kill_worker(w, "done")
            elif not w.exited:
                self.worker_available(w)
        self.schedule()

    def on_return_lease(self, lease_id: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        if lease.grant is None:  # still queued: the owner no longer needs it
            self.scheduler.cancel(lease_id)
            self.leases.pop(lease_id, None)
            return
        if lease in self.waiting_for_worker:
            self.waiting_for_worker.remove(lease)
        self.release_lease(lease)

    # ------------------------------------------------------------------ actors
    def on_create_actor(self, req_id: int, reply_to: str, actor_id: bytes, name: str,
                        registered_name: tuple[str, str] | None, spec: tuple[Any, ...],
                        resources: dict[str, float], placement: tuple[str, int] | None,
                        max_restarts: int, meta: dict[str, Any]) -> None:
        if registered_name is not None and registered_name in self.named:
            other = self.actors.get(self.named[registered_name])
            if other is not None and other.status is not ActorStatus.DEAD:
                self.reply(reply_to, req_id, False, ValueError(
                    f"an actor named {registered_name[1]!r} already exists in namespace "
                    f"{registered_name[0]!r}; pick another name or get it with "
                    f"get_actor({registered_name[1]!r})"))
                return
        lease_id = new_id()
        try:
            self.scheduler.submit(lease_id, resources, placement)
        except (InfeasibleError, ValueError) as e:
            self.reply(reply_to, req_id, False, e)
            return
        actor = _Actor(actor_id, reply_to, name, registered_name, spec, resources, placement,
                       max_restarts, meta, lease_id=lease_id)
        actor.subscribers.add(reply_to)
        self.actors[actor_id] = actor
        if registered_name is not None:
            self.named[registered_name] = actor_id
        self.leases[lease_id] = _Lease(lease_id, reply_to, actor_id=actor_id)
        self.reply(reply_to, req_id, True, None)
        self.schedule()

    def publish(self, actor: _Actor) -> None:
        addr = actor.worker.exec_addr if actor.worker and actor.status is ActorStatus.ALIVE \
            else None
        for sub in actor.subscribers:
            self.send(sub, (Msg.ACTOR_STATE, actor.actor_id, actor.status.value, addr,
                            actor.cause))

    def on_subscribe_actor(self, actor_id: bytes, addr: str) -> None:
        actor = self.actors.get(actor_id)
        if actor is None:
            self.send(addr, (Msg.ACTOR_STATE, actor_id, ActorStatus.DEAD.value, None,
                             "the actor is unknown to this node (its owner may have died)"))
            return
        actor.subscribers.add(addr)
        addr_exec = actor.worker.exec_addr if actor.worker and \
            actor.status is ActorStatus.ALIVE else None
        self.send(addr, (Msg.ACTOR_STATE, actor_id, actor.status.value, addr_exec, actor.cause))

    def on_get_named_actor(self, req_id: int, reply_to: str, name: str, namespace: str) -> None:
        actor_id = self.named.get((namespace, name))
        actor = self.actors.get(actor_id) if actor_id else None
        if actor is None or actor.status is ActorStatus.DEAD:
            self.reply(reply_to, req_id, False, ValueError(
                f"no live actor named {name!r} in namespace {namespace!r}"))
            return
        self.reply(reply_to, req_id, True, (actor.actor_id, actor.owner, actor.meta))

    def on_actor_ready(self, actor_id: bytes, worker_id: bytes) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.worker is None or actor.worker.worker_id != worker_id:
            return
        if actor.status is ActorStatus.DEAD:
            self.kill_worker(actor.worker, "the actor was killed")
            return
        actor.status = ActorStatus.ALIVE
        self.publish(actor)

    def on_actor_init_failed(self, actor_id: bytes, error: tuple[Any, ...]) -> None:
        actor = self.actors.get(actor_id)
        if actor is None:
            return
        from trainkit.runtime._serialization import loads

        try:
            err = loads(error[1], error[2])
            cause = f"its constructor raised:\n{err}"
        except Exception as e:
            cause = f"its constructor raised an error that could not be loaded: {e}"
        actor.no_restart = True
        self.set_dead(actor, cause)
        if actor.worker is not None:
            self.kill_worker(actor.worker, cause)

    def on_actor_exiting(self, actor_id: bytes) -> None:
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.no_restart = True
            actor.cause = "it went out of scope (every handle to it was deleted)"

    def on_kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.status is ActorStatus.DEAD:
            return
        if no_restart:
            self.kill_actor(actor, "it was killed with kill()")
        elif actor.worker is not None:
            self.kill_worker(actor.worker, "it was killed with kill(no_restart=False)")

    def kill_actor(self, actor: _Actor, cause: str) -> None:
        actor.no_restart = True
        if actor.worker is not None and not actor.worker.exited:
            actor.cause = cause
            self.kill_worker(actor.worker, cause)  # on_worker_exit finishes the job
        else:
            self.set_dead(actor, cause)

    def on_actor_died(self, actor: _Actor, cause: str) -> None:
        actor.worker = None
        if actor.status is ActorStatus.DEAD:
            return
        if actor.no_restart or actor.restarts_left == 0:
            self.set_dead(actor, actor.cause or cause)
            return
        if actor.restarts_left > 0:
            actor.restarts_left -= 1
        actor.status = ActorStatus.RESTARTING
        actor.cause = cause
        self.publish(actor)
        lease_id = new_id()
        actor.lease_id = lease_id
        self.scheduler.submit(lease_id, actor.resources, actor.placement)
        self.leases[lease_id] = _Lease(lease_id, actor.owner, actor_id=actor.actor_id)

    def set_dead(self, actor: _Actor, cause: str) -> None:
        if actor.status is ActorStatus.DEAD:
            return
        actor.status = ActorStatus.DEAD
        actor.cause = cause
        if actor.lease_id is not None:
            lease = self.leases.get(actor.lease_id)
            if lease is not None and lease.grant is None:
                self.scheduler.cancel(actor.lease_id)
                self.leases.pop(actor.lease_id, None)
        if actor.registered_name is not None:
            self.named.pop(actor.registered_name, None)
        self.publish(actor)
        actor.subscribers.clear()
        actor.spec = ()

    # ------------------------------------------------------------------ placement groups
    def on_create_pg(self, req_id: int, reply_to: str, pg_id: str,
                     bundles: list[dict[str, float]], strategy: str, name: str) -> None:
        try:
            self.scheduler.create_placement_group(pg_id, bundles, strategy)
        except (InfeasibleError, ValueError) as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.reply(reply_to, req_id, True, None)
        self.schedule()

    def on_wait_pg(self, req_id: int, reply_to: str, pg_id: str) -> None:
        if self.scheduler.is_placement_group_ready(pg_id):
            self.reply(reply_to, req_id, True, True)
        else:
            self.pg_waiters.setdefault(pg_id, []).append((reply_to, req_id))

    def on_remove_pg(self, req_id: int, reply_to: str, pg_id: str) -> None:
        for request_id in self.scheduler.remove_placement_group(pg_id):
            lease = self.leases.get(request_id)
            if lease is None:
                continue
            if lease.actor_id is not None:
                actor = self.actors.get(lease.actor_id)
                if actor is not None:
                    self.kill_actor(actor, "its placement group was removed")
            elif lease.worker is not None:
                self.kill_worker(lease.worker, "its placement group was removed")
            else:
                self.leases.pop(request_id, None)
                self.send(lease.owner, (Msg.LEASE_FAILED, request_id, ValueError(
                    f"placement group {pg_id} was removed")))
        for addr, wid in self.pg_waiters.pop(pg_id, []):
            self.reply(addr, wid, False, ValueError(f"placement group {pg_id} was removed"))
        self.reply(reply_to, req_id, True, None)
        self.schedule()

    # ------------------------------------------------------------------ object store
    def on_store_alloc(self, req_id: int, reply_to: str, oid: bytes, size: int,
                       owner: str) -> None:
        try:
            offset = self.store.allocate(oid, size, owner)
        except Exception as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.reply(reply_to, req_id, True, offset)

    def on_store_seal(self, oid: bytes) -> None:
        if self.store.contains(oid):
            self.store.seal(oid)
        for req_id, reply_to in self.early_pins.pop(oid, ()):
            self.on_store_pin(req_id, reply_to, oid)

    def on_store_pin(self, req_id: int, reply_to: str, oid: bytes) -> None:
        if self.store.contains(oid) and not self.store.is_sealed(oid):
            # The writer's seal and a reader's pin travel on different sockets: a reader told
            # of the object by its owner can get here first. Answer once the seal arrives.
            self.early_pins.setdefault(oid, []).append((req_id, reply_to))
            return
        try:
            result = self.store.pin(oid)
        except KeyError:
            self.reply(reply_to, req_id, False, ObjectLostError(
                oid.hex(), "it is not in the object store (it was freed)"))
            return
        except Exception as e:
            self.reply(reply_to, req_id, False, e)
            return
        self.reply(reply_to, req_id, True, result)

    def on_store_unpin(self, oid: bytes) -> None:
        # Also for a freed object whose readers still pinned it (RELEASING): the last unpin
        # releases its range. `contains()` is False for those, so it must not gate this.
        try:
            self.store.unpin(oid)
        except (KeyError, ValueError):
            pass  # its owner died and the store already dropped it

    def on_store_free(self, oids: list[bytes]) -> None:
        for oid in oids:
            self.store.free(oid)

    # ------------------------------------------------------------------ info & shutdown
    def on_cluster_info(self, req_id: int, reply_to: str) -> None:
        self.reply(reply_to, req_id, True, {
            "total": self.scheduler.total_resources(),
            "available": self.scheduler.available_resources(),
            "nodes": self.scheduler.nodes(),
            "store": self.store.stats(),
            "workers": len(self.workers),
        })

    def on_shutdown(self, req_id: int, reply_to: str) -> None:
        self.running = False
        self.shutdown_reply = (reply_to, req_id)

    def cleanup(self) -> None:
        for w in list(self.workers.values()):
            self.kill_worker(w, "shutdown")
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
        self.store.close()
        reply = getattr(self, "shutdown_reply", None)
        if reply is not None:
            self.reply(reply[0], reply[1], True, None)
        self.out.close()
        self.inbox.close()
        self.ctx.term()
        if reply is None:  # the driver died: nobody else will clean up after it
            shutil.rmtree(self.session_dir, ignore_errors=True)


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


def main() -> None:
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = NodeService(cfg)
    try:
        node.serve()
    finally:
        node.cleanup()


if __name__ == "__main__":
    main()
