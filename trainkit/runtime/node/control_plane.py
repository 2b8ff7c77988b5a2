"""The control plane: resources, leases, actors, placement groups and the node table.

A part of the node service (``node_service.NodeService`` holds one as ``control`` and is its
``ControlHost``: the node's own worker pool and store). It decides in exactly one process:
the embedded node service, or the head of a cluster. Decisions about resources are made by
the pure ``ResourceScheduler`` over every node; a grant on this node is carried out by the
node (``local_assign``), a grant on another node is sent to that node's service
(NODE_ASSIGN), which reports the worker it used (NODE_ASSIGNED) and its exit
(NODE_WORKER_EXIT). Workers on other nodes appear here as proxies (``_WorkerProc`` with
``node_id`` set). The head is off the hot path: a task's owner asks it for a lease once,
then pushes tasks straight to the leased worker; actor calls never pass through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar
from typing import Protocol

from trainkit.exceptions import InfeasibleError
from trainkit.runtime.node.actor_table import ActorRecord
from trainkit.runtime.node.actor_table import ActorTable
from trainkit.runtime.node.scheduler import BundlesReady
from trainkit.runtime.node.scheduler import Grant
from trainkit.runtime.node.scheduler import PlacementGroupReady
from trainkit.runtime.node.scheduler import RequestId
from trainkit.runtime.node.scheduler import ResourceScheduler
from trainkit.runtime.wire.protocol import ActorStatus
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id

# A node silent for this long is declared dead (it sends a heartbeat every second).
NODE_DEATH_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _WorkerProc:
    """A worker process: local to this node (``node_id == ""``) or a proxy for a remote one."""

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
    node_id: str = ""


@dataclass(eq=False)
class _Lease:
    lease_id: bytes
    owner: str
    actor_id: bytes | None = None
    worker: _WorkerProc | None = None
    grant: Grant | None = None
    actor_spec: tuple[Any, ...] = ()  # (name, blob, payload, descs, max_concurrency)
    returned: bool = False  # the owner gave it back before its remote worker was known


@dataclass(eq=False)
class _NodeRecord:
    info: dict[str, Any]  # what the node registered: addr, transfer_addr, host, resources...
    last_seen: float
    stats: dict[str, Any] = field(default_factory=dict)  # from its last heartbeat


class ControlHost(Protocol):
    """What the control plane asks of the node service it runs in (its own node's side)."""

    node_id: str

    def send(self, addr: str, msg: tuple[Any, ...]) -> None: ...
    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None: ...
    def local_assign(self, lease: _Lease) -> None: ...
    def local_unwait(self, lease: _Lease) -> None: ...  # it no longer waits for a fork
    def local_kill_worker(self, w: _WorkerProc, reason: str) -> None: ...
    def local_release(self, w: _WorkerProc) -> None: ...
    def find_worker(self, worker_id: bytes) -> _WorkerProc | None: ...
    def notify_process_died(self, addr: str, cause: str) -> None: ...
    def notify_node_died(self, node_id: str, cause: str) -> None: ...
    def store_info(self) -> dict[str, Any]: ...
    def rejected_frames(self) -> dict[str, dict[str, int]]: ...
    def node_table(self) -> dict[str, Any]: ...
    def preloaded_modules(self) -> list[str]: ...  # what the forkservers import first


class ControlPlane:
    """Resource control over every node; see the module docstring.

    It owns the scheduler, the leases, the actor table, the placement-group waiters, the
    proxies of other nodes' workers and the node table, and acts on its own node only
    through ``node`` (a ``ControlHost``: the node service, or a fake one in tests).
    """

    def __init__(self, node: ControlHost) -> None:
        self.node = node
        self.node_id = node.node_id
        self.scheduler = ResourceScheduler()
        self.leases: dict[RequestId, _Lease] = {}
        self.actors = ActorTable(node.send)
        # pg id -> (reply address, req id, bundle indices or None for the whole group)
        self.pg_waiters: dict[str, list[tuple[str, int, tuple[int, ...] | None]]] = {}
        self.remote_workers: dict[bytes, _WorkerProc] = {}  # other nodes' workers, by id
        self.cluster_nodes: dict[str, _NodeRecord] = {}

    # What the control plane is told, and the method that handles each kind.
    CONTROL_HANDLERS: ClassVar[dict[int, str]] = {
        Msg.REQUEST_LEASE: "on_request_lease",
        Msg.RETURN_LEASE: "on_return_lease",
        Msg.CREATE_ACTOR: "on_create_actor",
        Msg.SUBSCRIBE_ACTOR: "on_subscribe_actor",
        Msg.GET_NAMED_ACTOR: "on_get_named_actor",
        Msg.KILL_ACTOR: "on_kill_actor",
        Msg.ACTOR_READY: "on_actor_ready",
        Msg.ACTOR_INIT_FAILED: "on_actor_init_failed",
        Msg.ACTOR_EXITING: "on_actor_exiting",
        Msg.WORKER_BLOCKED: "on_worker_blocked",
        Msg.WORKER_UNBLOCKED: "on_worker_unblocked",
        Msg.KILL_WORKER: "on_kill_worker",
        Msg.CREATE_PG: "on_create_pg",
        Msg.REMOVE_PG: "on_remove_pg",
        Msg.WAIT_PG: "on_wait_pg",
        Msg.CLUSTER_INFO: "on_cluster_info",
        Msg.REGISTER_NODE: "on_register_node",
        Msg.NODE_HEARTBEAT: "on_node_heartbeat",
        Msg.NODE_ASSIGNED: "on_node_assigned",
        Msg.NODE_WORKER_EXIT: "on_node_worker_exit",
        Msg.NODE_LEASE_FAILED: "on_node_lease_failed",
        Msg.CLUSTER_NODES: "on_cluster_nodes",
        Msg.LIST_NAMED_ACTORS: "on_list_named_actors",
        Msg.PG_TABLE: "on_pg_table",
        Msg.ADD_BUNDLES: "on_add_bundles",
        Msg.REMOVE_BUNDLES: "on_remove_bundles",
    }

    # ------------------------------------------------------------------ workers
    def kill_worker(self, w: _WorkerProc, reason: str) -> None:
        if w.node_id and w.node_id != self.node_id:
            w.killed_reason = w.killed_reason or reason
            node = self.cluster_nodes.get(w.node_id)
            if node is not None:
                self.node.send(node.info["addr"], (Msg.NODE_KILL_WORKER, w.worker_id, reason))
            return
        self.node.local_kill_worker(w, reason)

    def worker_gone(self, w: _WorkerProc, cause: str, origin: str) -> None:
        """A worker exited (``origin``: the node it ran on): settle its lease and actor."""
        if w.ctl_addr:
            self.process_gone(w.ctl_addr, cause, origin)
        lease = self.leases.pop(w.lease_id, None) if w.lease_id else None
        if lease is not None:
            self.scheduler.release(lease.lease_id)
            if lease.actor_id is None:
                self.node.send(lease.owner, (Msg.WORKER_DIED, lease.lease_id, cause))
        if w.actor_id is not None:
            actor = self.actors.get(w.actor_id)
            if actor is not None and actor.worker is w:
                self.on_actor_died(actor, cause)
        self.schedule()  # its resources are free (and a restarting actor asks for them)

    def process_gone(self, addr: str, cause: str, origin: str) -> None:
        """A driver or worker process is gone: tell every other node; its actors die."""
        for node_id, node in self.cluster_nodes.items():
            if node_id != origin and node_id != self.node_id:
                self.node.send(node.info["addr"], (Msg.NODE_PROCESS_DIED, addr, cause))
        if origin != self.node_id:
            self.node.notify_process_died(addr, cause)
        # Actors owned by the dead process die with it (fate sharing), unless detached.
        for actor in self.actors:
            if actor.owner == addr and actor.live and not actor.detached:
                self.kill_actor(actor, f"its owner died ({cause})")
        self.drop_leases_of(addr, f"their owner died ({cause})")

    def drop_leases_of(self, owner: str, cause: str) -> None:
        """The tasks a dead process submitted are its children: nobody can read their
        results, so queued requests are cancelled and leased workers killed (their
        exit returns the resources), within the time it takes to notice the death."""
        for lease in [ls for ls in self.leases.values()
                      if ls.owner == owner and ls.actor_id is None]:
            if lease.grant is None:
                self.scheduler.cancel(lease.lease_id)
                self.leases.pop(lease.lease_id, None)
            elif lease.worker is not None:
                self.kill_worker(lease.worker, cause)
            elif lease.grant.node_id != self.node_id:
                lease.returned = True  # released once its node says which worker took it
            else:
                self.node.local_unwait(lease)
                self.release_lease(lease)

    def on_worker_blocked(self, worker_id: bytes) -> None:
        w = self.node.find_worker(worker_id)
        if w is not None and w.lease_id is not None and self.scheduler.lend_cpus(w.lease_id):
            self.schedule()

    def on_worker_unblocked(self, worker_id: bytes) -> None:
        w = self.node.find_worker(worker_id)
        if w is not None and w.lease_id is not None:
            self.scheduler.reclaim_cpus(w.lease_id)

    def on_kill_worker(self, worker_id: bytes) -> None:
        w = self.node.find_worker(worker_id)
        if w is not None:
            self.kill_worker(w, "killed by cancel(force=True)")

    # ------------------------------------------------------------------ leases
    def submit_request(self, lease_id: bytes, resources: dict[str, float],
                       placement: tuple[Any, ...] | None) -> None:
        """Queue a request; ``placement`` is a (group id, bundle index) or, for node
        affinity, ("node", node id, soft)."""
        if placement is not None and placement[0] == "node":
            self.scheduler.submit(lease_id, resources, None,
                                  node_affinity=(placement[1], placement[2]))
        else:
            self.scheduler.submit(lease_id, resources, placement)

    def on_request_lease(self, lease_id: bytes, owner: str, resources: dict[str, float],
                         placement: tuple[Any, ...] | None) -> None:
        try:
            self.submit_request(lease_id, resources, placement)
        except (InfeasibleError, ValueError) as e:
            self.node.send(owner, (Msg.LEASE_FAILED, lease_id, e))
            return
        self.leases[lease_id] = _Lease(lease_id, owner)
        self.schedule()

    def schedule(self) -> None:
        for ev in self.scheduler.schedule():
            if isinstance(ev, (PlacementGroupReady, BundlesReady)):
                self.answer_pg_waiters(ev.pg_id)
            else:
                self.on_grant(ev)

    def on_grant(self, grant: Grant) -> None:
        lease = self.leases.get(grant.request_id)
        if lease is None:
            self.scheduler.release(grant.request_id)
            return
        lease.grant = grant
        if lease.actor_id is not None:
            actor = self.actors.get(lease.actor_id)
            if actor is None or not actor.live:
                self.release_lease(lease)
                return
            blob, payload, descs, max_concurrency = actor.spec
            lease.actor_spec = (actor.name, blob, payload, descs, max_concurrency)
        if grant.node_id == self.node_id:
            self.node.local_assign(lease)
            return
        node = self.cluster_nodes[grant.node_id]
        self.node.send(node.info["addr"], (Msg.NODE_ASSIGN, lease.lease_id, lease.owner,
                                      lease.actor_id, lease.actor_spec, grant.gpu_ids))

    def assigned(self, lease: _Lease, w: _WorkerProc) -> bool:
        """A worker took ``lease``; False if the lease's actor is no longer wanted."""
        lease.worker = w
        w.lease_id = lease.lease_id
        if lease.actor_id is None:
            return True
        actor = self.actors.get(lease.actor_id)
        if actor is None or not actor.live:
            return False
        actor.worker = w
        w.actor_id = actor.actor_id
        return True

    def on_node_assigned(self, node_id: str, lease_id: bytes, worker_id: bytes, exec_addr: str,
                         ctl_addr: str) -> None:
        w = _WorkerProc(worker_id, 0, -1, -1, exec_addr=exec_addr, ctl_addr=ctl_addr,
                        ready=True, node_id=node_id)
        self.remote_workers[worker_id] = w
        lease = self.leases.get(lease_id)
        if lease is None:
            self.kill_worker(w, "its lease was dropped")
            return
        if not self.assigned(lease, w) or lease.returned:
            self.release_lease(lease)

    def on_node_lease_failed(self, lease_id: bytes, error: BaseException) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        self.scheduler.release(lease_id)
        if lease.actor_id is None:
            self.node.send(lease.owner, (Msg.LEASE_FAILED, lease_id, error))
        elif (actor := self.actors.get(lease.actor_id)) is not None:
            actor.no_restart = True
            self.set_dead(actor, str(error))
        self.schedule()

    def release_lease(self, lease: _Lease) -> None:
        self.leases.pop(lease.lease_id, None)
        self.scheduler.release(lease.lease_id)
        w = lease.worker
        if w is not None:
            w.lease_id = None
            if w.node_id and w.node_id != self.node_id:
                self.remote_workers.pop(w.worker_id, None)
                node = self.cluster_nodes.get(w.node_id)
                if node is not None:
                    self.node.send(node.info["addr"], (Msg.NODE_RELEASE, w.worker_id))
            else:
                self.node.local_release(w)
        self.schedule()

    def on_return_lease(self, lease_id: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        if lease.grant is None:  # still queued: the owner no longer needs it
            self.scheduler.cancel(lease_id)
            self.leases.pop(lease_id, None)
            return
        if lease.worker is None and lease.grant.node_id != self.node_id:
            lease.returned = True  # released when its node says which worker took it
            return
        self.node.local_unwait(lease)
        self.release_lease(lease)

    # ------------------------------------------------------------------ actors
    def on_create_actor(self, req_id: int, reply_to: str, actor_id: bytes, name: str,
                        registered_name: tuple[str, str] | None, spec: tuple[Any, ...],
                        resources: dict[str, float], placement: tuple[Any, ...] | None,
                        max_restarts: int, meta: dict[str, Any]) -> None:
        if registered_name is not None and self.actors.named_live(registered_name):
            self.node.reply(reply_to, req_id, False, ValueError(
                f"an actor named {registered_name[1]!r} already exists in namespace "
                f"{registered_name[0]!r}; pick another name or get it with "
                f"get_actor({registered_name[1]!r})"))
            return
        lease_id = new_id()
        try:
            self.submit_request(lease_id, resources, placement)
        except (InfeasibleError, ValueError) as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        self.actors.add(ActorRecord(actor_id, reply_to, name, registered_name, spec, resources,
                                    placement, max_restarts, meta, lease_id=lease_id,
                                    detached=bool(meta.get("detached"))))
        self.leases[lease_id] = _Lease(lease_id, reply_to, actor_id=actor_id)
        self.node.reply(reply_to, req_id, True, None)
        self.schedule()

    def on_subscribe_actor(self, actor_id: bytes, addr: str) -> None:
        self.actors.subscribe(actor_id, addr)

    def on_get_named_actor(self, req_id: int, reply_to: str, name: str, namespace: str) -> None:
        actor = self.actors.named_live((namespace, name))
        if actor is None:
            self.node.reply(reply_to, req_id, False, ValueError(
                f"no live actor named {name!r} in namespace {namespace!r}"))
            return
        self.node.reply(reply_to, req_id, True, (actor.actor_id, actor.owner, actor.meta))

    def on_actor_ready(self, actor_id: bytes, worker_id: bytes) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or actor.worker is None or actor.worker.worker_id != worker_id:
            return
        if not actor.live:
            self.kill_worker(actor.worker, "the actor was killed")
            return
        self.actors.set_status(actor, ActorStatus.ALIVE)

    def on_actor_init_failed(self, actor_id: bytes, error: tuple[Any, ...]) -> None:
        actor = self.actors.get(actor_id)
        if actor is None:
            return
        from trainkit.runtime.wire.serialization import loads

        try:
            err = loads(error[1], error[2])
            cause = f"its constructor raised:\n{err}"
        except Exception as e:
            cause = f"its constructor raised an error that could not be loaded: {e}"
        actor.no_restart = True
        self.set_dead(actor, cause)
        if actor.worker is not None:
            self.kill_worker(actor.worker, cause)

    def on_actor_exiting(self, req_id: int, reply_to: str, actor_id: bytes, cause: str) -> None:
        """The actor leaves on purpose (out of scope, exit_actor): final, never restarted."""
        actor = self.actors.get(actor_id)
        if actor is not None:
            actor.no_restart = True
            actor.cause = cause
        self.node.reply(reply_to, req_id, True, None)

    def on_list_named_actors(self, req_id: int, reply_to: str, namespace: str | None) -> None:
        """Live named actors: names in ``namespace``, or {name, namespace} rows for all."""
        self.node.reply(reply_to, req_id, True, self.actors.live_names(namespace))

    def on_pg_table(self, req_id: int, reply_to: str, pg_id: str | None) -> None:
        try:
            table = self.scheduler.placement_group_table(pg_id)
        except ValueError as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        self.node.reply(reply_to, req_id, True, table)

    def on_kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        actor = self.actors.get(actor_id)
        if actor is None or not actor.live:
            return
        if no_restart:
            self.kill_actor(actor, "it was killed with kill()")
        elif actor.worker is not None:
            self.kill_worker(actor.worker, "it was killed with kill(no_restart=False)")

    def kill_actor(self, actor: ActorRecord, cause: str) -> None:
        actor.no_restart = True
        if actor.worker is not None and not actor.worker.exited:
            actor.cause = cause
            self.kill_worker(actor.worker, cause)  # its exit finishes the job
        else:
            self.set_dead(actor, cause)

    def on_actor_died(self, actor: ActorRecord, cause: str) -> None:
        """Its worker is gone: start it again on a new lease if it may restart."""
        if not self.actors.died(actor, cause):
            self.cancel_actor_lease(actor)
            return
        lease_id = new_id()
        actor.lease_id = lease_id
        try:
            self.submit_request(lease_id, actor.resources, actor.placement)
        except (InfeasibleError, ValueError) as e:  # e.g. its placement group bundle is gone
            actor.no_restart = True
            self.set_dead(actor, f"{cause}; it could not be restarted: {e}")
            return
        self.leases[lease_id] = _Lease(lease_id, actor.owner, actor_id=actor.actor_id)

    def set_dead(self, actor: ActorRecord, cause: str) -> None:
        if not actor.live:
            return
        self.cancel_actor_lease(actor)
        self.actors.set_status(actor, ActorStatus.DEAD, cause)

    def cancel_actor_lease(self, actor: ActorRecord) -> None:
        """A dead actor's lease that was not granted yet is withdrawn."""
        if actor.lease_id is not None:
            lease = self.leases.get(actor.lease_id)
            if lease is not None and lease.grant is None:
                self.scheduler.cancel(actor.lease_id)
                self.leases.pop(actor.lease_id, None)

    # ------------------------------------------------------------------ placement groups
    def on_create_pg(self, req_id: int, reply_to: str, pg_id: str,
                     bundles: list[dict[str, float]], strategy: str, name: str) -> None:
        try:
            self.scheduler.create_placement_group(pg_id, bundles, strategy, name)
        except (InfeasibleError, ValueError) as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        self.node.reply(reply_to, req_id, True, None)
        self.schedule()

    def on_wait_pg(self, req_id: int, reply_to: str, pg_id: str,
                   indices: list[int] | None = None) -> None:
        """Answer once the group (or only ``indices``, bundles add_bundles added) is reserved:
        True for the whole group, the indices for bundles."""
        waiter = (reply_to, req_id, None if indices is None else tuple(indices))
        self.pg_waiters.setdefault(pg_id, []).append(waiter)
        self.answer_pg_waiters(pg_id)

    def answer_pg_waiters(self, pg_id: str) -> None:
        """Answer the waiters of ``pg_id`` whose bundles are reserved, or can never be."""
        waiting = []
        for addr, wid, indices in self.pg_waiters.pop(pg_id, []):
            try:
                ready = self.scheduler.are_bundles_ready(pg_id, indices)
            except ValueError as e:
                self.node.reply(addr, wid, False, e)
                continue
            if ready:
                self.node.reply(addr, wid, True, True if indices is None else list(indices))
            else:
                waiting.append((addr, wid, indices))
        if waiting:
            self.pg_waiters[pg_id] = waiting

    def on_remove_pg(self, req_id: int, reply_to: str, pg_id: str) -> None:
        for request_id in self.scheduler.remove_placement_group(pg_id):
            self.drop_grant(request_id, f"its placement group {pg_id} was removed")
        for addr, wid, _ in self.pg_waiters.pop(pg_id, []):
            self.node.reply(addr, wid, False, ValueError(f"placement group {pg_id} was removed"))
        self.node.reply(reply_to, req_id, True, None)
        self.schedule()

    def on_add_bundles(self, req_id: int, reply_to: str, pg_id: str,
                       bundles: list[dict[str, float]]) -> None:
        """Add bundles to a live group (all or none); the reply is their indices, and
        WAIT_PG with those indices answers once they are reserved."""
        try:
            indices = self.scheduler.add_bundles(pg_id, bundles)
        except (InfeasibleError, ValueError) as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        self.node.reply(reply_to, req_id, True, indices)
        self.schedule()

    def on_remove_bundles(self, req_id: int, reply_to: str, pg_id: str,
                          indices: list[int]) -> None:
        """Remove bundles (all or none): what runs in them is killed, actors for good (as by
        remove_placement_group); the other bundles are not touched."""
        try:
            lost = self.scheduler.remove_bundles(pg_id, indices)
        except ValueError as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        cause = f"its bundle of placement group {pg_id} was removed (remove_bundles({indices}))"
        for request_id in lost:
            lease = self.leases.get(request_id)
            actor = self.actors.get(lease.actor_id) if lease and lease.actor_id else None
            if actor is not None:
                self.kill_actor(actor, cause)
            else:
                self.drop_grant(request_id, cause)
        self.answer_pg_waiters(pg_id)
        self.node.reply(reply_to, req_id, True, None)
        self.schedule()

    def drop_grant(self, request_id: RequestId, cause: str) -> None:
        """The scheduler took back a grant: stop whatever holds it."""
        lease = self.leases.get(request_id)
        if lease is None:
            return
        if lease.actor_id is not None:
            actor = self.actors.get(lease.actor_id)
            if actor is not None and lease.worker is not None:
                self.kill_worker(lease.worker, cause)  # it restarts if it may
            elif actor is not None:
                self.kill_actor(actor, cause)
        elif lease.worker is not None:
            self.kill_worker(lease.worker, cause)
        else:
            self.leases.pop(request_id, None)
            self.node.send(lease.owner, (Msg.LEASE_FAILED, request_id, ValueError(cause)))

    # ------------------------------------------------------------------ nodes
    def on_register_node(self, req_id: int, reply_to: str, info: dict[str, Any]) -> None:
        node_id = info["node_id"]
        known = self.cluster_nodes.get(node_id)
        if known is not None:  # an update (its drivers changed)
            known.info = info
            self.broadcast_node_table()
            return
        try:
            self.scheduler.add_node(node_id, info["resources"], info["gpu_ids"])
        except ValueError as e:
            self.node.reply(reply_to, req_id, False, e)
            return
        self.cluster_nodes[node_id] = _NodeRecord(info, time.monotonic())
        self.node.reply(reply_to, req_id, True, self.node.preloaded_modules())
        self.broadcast_node_table()
        self.schedule()

    def on_node_heartbeat(self, node_id: str, stats: dict[str, Any]) -> None:
        node = self.cluster_nodes.get(node_id)
        if node is None:
            return
        node.last_seen = time.monotonic()
        node.stats = stats
        self.node.send(node.info["addr"], (Msg.NODE_HEARTBEAT_ACK,))

    def check_nodes(self) -> None:
        now = time.monotonic()
        for node_id, node in list(self.cluster_nodes.items()):
            if node_id != self.node_id and now - node.last_seen > NODE_DEATH_TIMEOUT_S:
                self.on_node_died(node_id, f"node {node.info['host']} ({node_id[:8]}) stopped "
                                           f"answering for {NODE_DEATH_TIMEOUT_S:.0f} s")

    def on_node_died(self, node_id: str, cause: str) -> None:
        if self.cluster_nodes.pop(node_id, None) is None:
            return
        lost = self.scheduler.remove_node(node_id)
        for w in [w for w in self.remote_workers.values() if w.node_id == node_id]:
            del self.remote_workers[w.worker_id]
            w.exited = True
            self.worker_gone(w, cause, node_id)
        for lease in [ls for ls in self.leases.values()
                      if ls.worker is None and ls.grant is not None
                      and ls.grant.node_id == node_id]:
            del self.leases[lease.lease_id]
            if lease.actor_id is None:
                self.node.send(lease.owner, (Msg.WORKER_DIED, lease.lease_id, cause))
            elif (actor := self.actors.get(lease.actor_id)) is not None:
                self.on_actor_died(actor, cause)
        for request_id in lost:
            # grants elsewhere in placement groups that lost a bundle, and requests queued
            # with a hard affinity to the dead node
            bound = self.leases.get(request_id)
            queued = bound is not None and bound.grant is None
            self.drop_grant(request_id, f"the node it was bound to (NodeAffinity) died ({cause})"
                            if queued else f"its placement group lost a node ({cause})")
        for other in list(self.cluster_nodes.values()):
            if other.info["node_id"] != self.node_id:
                self.node.send(other.info["addr"], (Msg.NODE_DIED, node_id, cause))
        self.node.notify_node_died(node_id, cause)
        self.broadcast_node_table()
        self.schedule()

    def on_node_worker_exit(self, node_id: str, worker_id: bytes | None, ctl_addr: str,
                            cause: str) -> None:
        """A process on another node exited (a worker; a driver when worker_id is None)."""
        w = self.remote_workers.pop(worker_id, None) if worker_id is not None else None
        if w is None:
            if ctl_addr:
                self.process_gone(ctl_addr, cause, node_id)
            return
        w.exited = True
        self.worker_gone(w, cause, node_id)

    def broadcast_node_table(self) -> None:
        table = self.node.node_table()
        for node_id, node in self.cluster_nodes.items():
            if node_id != self.node_id:
                self.node.send(node.info["addr"], (Msg.NODE_TABLE, table))

    def on_cluster_nodes(self, req_id: int, reply_to: str) -> None:
        self.node.reply(reply_to, req_id, True, [n.info for n in self.cluster_nodes.values()])

    # ------------------------------------------------------------------ info
    def on_cluster_info(self, req_id: int, reply_to: str) -> None:
        nodes = self.scheduler.nodes()
        store = self.node.store_info()
        for n in nodes:
            rec = self.cluster_nodes.get(n["node_id"])
            n["address"] = rec.info["host"] if rec is not None else "127.0.0.1"
            n["store_used"] = store["used_bytes"] if n["node_id"] == self.node_id else (
                rec.stats.get("store_used", 0) if rec is not None else 0)
        self.node.reply(reply_to, req_id, True, {
            "total": self.scheduler.total_resources(),
            "available": self.scheduler.available_resources(),
            "nodes": nodes,
            "store": self.node.store_info(),
            "workers": len(self.remote_workers),
            "queued": len(self.scheduler.queued_requests()),
            "queued_groups": self.scheduler.queued_placement_groups(),
            "rejected_frames": self.node.rejected_frames(),
        })
