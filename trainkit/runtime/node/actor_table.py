"""The actor table: every actor the control plane knows, its state, and who hears of it.

An actor's state changes only through ``ActorTable.set_status``, along the transitions of
``TRANSITIONS`` (anything else is a bug and raises ``InvalidTransitionError``)::

    PENDING ----> ALIVE <----> RESTARTING      (each arrow may also end in DEAD)
       |                          ^  |
       +--------------------------+  +--> RESTARTING (died again before it was up)

Every change is published to the actor's subscribers (its owner and the processes that
hold handles: ACTOR_STATE with its address while ALIVE); DEAD is final: the actor's name is
free again and its creation spec is dropped. ``died`` decides between a restart and death.

The table sends through the function it is given and does nothing else: starting workers,
leases and kills stay with the control plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from trainkit.exceptions import InvalidTransitionError
from trainkit.runtime.wire.protocol import ActorStatus
from trainkit.runtime.wire.protocol import Msg

PENDING, ALIVE, RESTARTING, DEAD = (ActorStatus.PENDING, ActorStatus.ALIVE,
                                    ActorStatus.RESTARTING, ActorStatus.DEAD)

TRANSITIONS: dict[ActorStatus, frozenset[ActorStatus]] = {
    PENDING: frozenset({ALIVE, RESTARTING, DEAD}),
    ALIVE: frozenset({RESTARTING, DEAD}),
    RESTARTING: frozenset({ALIVE, RESTARTING, DEAD}),
    DEAD: frozenset(),
}

Send = Callable[[str, tuple[Any, ...]], None]


@dataclass(eq=False)
class ActorRecord:
    actor_id: bytes
    owner: str
    name: str
    registered_name: tuple[str, str] | None  # (namespace, name) of a named actor
    spec: tuple[Any, ...]  # (cls_blob, payload, descs, max_concurrency)
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    restarts_left: int  # -1: unlimited
    meta: dict[str, Any]
    status: ActorStatus = PENDING
    cause: str = ""
    lease_id: bytes | None = None
    worker: Any = None  # the worker process hosting it (the node service's record)
    no_restart: bool = False  # killed or left on purpose: its next death is final
    detached: bool = False  # lifetime="detached": outlives its owner
    subscribers: set[str] = field(default_factory=set)

    @property
    def exec_addr(self) -> str | None:
        """Where calls go: the worker's address while the actor is ALIVE."""
        worker = self.worker
        return worker.exec_addr if worker is not None and self.status is ALIVE else None

    @property
    def live(self) -> bool:
        return self.status is not DEAD


class ActorTable:
    """Actors by id and named actors by (namespace, name); see the module doc."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.actors: dict[bytes, ActorRecord] = {}
        self.named: dict[tuple[str, str], bytes] = {}

    def get(self, actor_id: bytes | None) -> ActorRecord | None:
        return self.actors.get(actor_id) if actor_id is not None else None

    def __iter__(self) -> Any:
        return iter(list(self.actors.values()))

    # ------------------------------------------------------------------ names
    def named_live(self, registered_name: tuple[str, str]) -> ActorRecord | None:
        actor = self.get(self.named.get(registered_name))
        return actor if actor is not None and actor.live else None

    def live_names(self, namespace: str | None) -> list[Any]:
        """Names of live named actors in ``namespace``, or {name, namespace} rows for all."""
        live = sorted(key for key, actor_id in self.named.items()
                      if (a := self.actors.get(actor_id)) is not None and a.live)
        if namespace is None:
            return [{"name": n, "namespace": ns} for ns, n in live]
        return [n for ns, n in live if ns == namespace]

    # ------------------------------------------------------------------ changes
    def add(self, actor: ActorRecord) -> None:
        """A new actor (PENDING); its owner hears of every change. A live actor of the
        same name is a ValueError that says what to do."""
        name = actor.registered_name
        if name is not None and self.named_live(name) is not None:
            raise ValueError(
                f"an actor named {name[1]!r} already exists in namespace {name[0]!r}; pick "
                f"another name or get it with get_actor({name[1]!r})")
        actor.subscribers.add(actor.owner)
        self.actors[actor.actor_id] = actor
        if name is not None:
            self.named[name] = actor.actor_id

    def set_status(self, actor: ActorRecord, status: ActorStatus, cause: str = "") -> None:
        """The one way an actor's state changes (see ``TRANSITIONS``)."""
        if status not in TRANSITIONS[actor.status]:
            raise InvalidTransitionError("Actor", f"{actor.name} ({actor.actor_id.hex()})",
                                         actor.status, f"move to {status.name}")
        actor.status = status
        if cause:
            actor.cause = cause
        if status is DEAD:
            if actor.registered_name is not None \
                    and self.named.get(actor.registered_name) == actor.actor_id:
                del self.named[actor.registered_name]
            actor.spec = ()
        self._publish(actor)
        if status is DEAD:
            actor.subscribers.clear()

    def died(self, actor: ActorRecord, cause: str) -> bool:
        """Its process is gone: RESTARTING (True: start it again) while it may restart,
        else DEAD (False). A death it was told of first (kill, exit) keeps that cause."""
        actor.worker = None
        if actor.status is DEAD:
            return False
        if actor.no_restart:
            self.set_status(actor, DEAD, actor.cause or cause)
            return False
        if actor.restarts_left == 0:
            self.set_status(actor, DEAD, cause)
            return False
        if actor.restarts_left > 0:
            actor.restarts_left -= 1
        self.set_status(actor, RESTARTING, cause)
        return True

    def subscribe(self, actor_id: bytes, addr: str) -> None:
        """A process holds a handle: it hears the state now and every change after."""
        actor = self.actors.get(actor_id)
        if actor is None:
            self.send(addr, (Msg.ACTOR_STATE, actor_id, DEAD.value, None,
                             "the actor is unknown to this node (its owner may have died)"))
            return
        if actor.live:
            actor.subscribers.add(addr)
        self.send(addr, _state(actor))

    def _publish(self, actor: ActorRecord) -> None:
        msg = _state(actor)
        for sub in actor.subscribers:
            self.send(sub, msg)


def _state(actor: ActorRecord) -> tuple[Any, ...]:
    return (Msg.ACTOR_STATE, actor.actor_id, actor.status.value, actor.exec_addr, actor.cause)
