"""The actor caller: this process's calls to actors, sent straight to each actor's process.

For each actor it holds a handle to, the process keeps an ``ActorClient``: the actor's state
as the control plane publishes it (PENDING, ALIVE with its address, RESTARTING, DEAD), the
calls queued here and those in flight. Calls go out in the order they were made; a call
whose argument refs have no value yet waits here (not in the actor, where it would hold up
every other caller), and the calls after it wait behind it. Calls in flight when the actor
restarts are sent again while they have retries left; when it dies they fail with
ActorDiedError, as do calls made afterwards.

A client with calls queued or in flight holds a ref to its actor in the ownership table, so
the actor cannot leave scope (and be told to exit, or be released by a borrower) before
those calls are answered. When the owner's actor leaves scope it is told to exit, at once if
it is alive, else as soon as it is.

Pure state: messages go to ``Effects``, results to the ``OwnershipTable``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from trainkit.exceptions import ActorDiedError
from trainkit.runtime.core.effects import Effects
from trainkit.runtime.core.effects import Waiter
from trainkit.runtime.core.ownership import OwnershipTable
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.values import ReturnId
from trainkit.runtime.core.values import error_value
from trainkit.runtime.wire.protocol import ActorStatus
from trainkit.runtime.wire.protocol import Msg


@dataclass(slots=True, eq=False)
class ActorCall:
    task_id: bytes
    method: str
    args: tuple[Any, ...]
    arg_refs: list[ObjectRef]
    held_refs: list[ObjectRef]
    return_id: ReturnId
    retries_left: int
    deps: int = 0  # arguments whose values are not known yet: the call waits here for them


class ActorClient:
    """This process's view of one actor: where it is, and its calls here and in flight."""

    def __init__(self, actor_id: bytes, name: str, owner: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.name = name
        self.owner = owner
        self.status = ActorStatus.PENDING
        self.exec_addr: str | None = None
        self.cause = ""
        self.max_task_retries = max_task_retries
        self.queued: deque[ActorCall] = deque()
        self.inflight: dict[bytes, ActorCall] = {}
        self.holding = False  # holds a ref to the actor while it has calls
        self.exit_pending = False  # out of scope before it was alive: exit once it is
        # Creation arguments stay alive until the actor is up (for its whole life if
        # it may restart, since a restart runs the constructor again).
        self.creation_refs: list[Any] = []
        self.restart_refs: list[Any] = []


def _identity(waiter: Waiter) -> Waiter:
    return waiter


class ActorCaller:
    """The actor clients of this process (see module doc).

    Args:
        table: where results go, argument values are looked up and actor refs are held.
        effects: where messages are recorded.
        self_addr: this process's control address (actors answer there).
        control_addr: the control plane that publishes actor states.
        guard: wraps a waiter registered in the table (see ``TaskSubmitter``).
        forget_peer: called with an actor's old address when it moved (a restart).
    """

    def __init__(self, table: OwnershipTable, effects: Effects, *, self_addr: str,
                 control_addr: str, guard: Callable[[Waiter], Waiter] = _identity,
                 forget_peer: Callable[[str], None] = lambda addr: None) -> None:
        self.table = table
        self.effects = effects
        self.self_addr = self_addr
        self.control_addr = control_addr
        self.guard = guard
        self.forget_peer = forget_peer
        self.clients: dict[bytes, ActorClient] = {}
        self.call_owner: dict[bytes, ActorClient] = {}  # task id of a call in flight

    def client(self, actor_id: bytes, name: str, owner: str,
               max_task_retries: int) -> ActorClient:
        """The client of an actor, made (and subscribed to its states, unless this process
        owns it: owners are told anyway) on first use."""
        client = self.clients.get(actor_id)
        if client is None:
            client = self.clients[actor_id] = ActorClient(actor_id, name, owner,
                                                          max_task_retries)
            if owner != self.self_addr:
                self.effects.send(self.control_addr,
                                  (Msg.SUBSCRIBE_ACTOR, actor_id, self.self_addr))
        return client

    def forget(self, actor_id: bytes) -> None:
        """Drop a client whose actor was never created."""
        self.clients.pop(actor_id, None)

    # ------------------------------------------------------------------ calls
    def call(self, client: ActorClient, call: ActorCall) -> None:
        """Send a call, in order after this process's earlier calls to the actor."""
        if client.status is ActorStatus.DEAD:
            self.table.set_results(call.return_id,
                                   error_value(ActorDiedError(client.name, client.cause)))
            return
        for ref in call.arg_refs:
            call.deps += 1
            if self.table.when_ready(ref, self.guard(partial(self._dep_ready, client, call))):
                call.deps -= 1
        if client.status is ActorStatus.ALIVE and not client.queued and call.deps == 0:
            self._send_or_fail(client, call)
        else:
            client.queued.append(call)
        self._settle(client)

    def _dep_ready(self, client: ActorClient, call: ActorCall) -> None:
        call.deps -= 1
        if call.deps == 0:
            self._drain(client)

    def _drain(self, client: ActorClient) -> None:
        """Send the queued calls that can go, in order."""
        if client.status is ActorStatus.ALIVE:
            while client.queued and client.queued[0].deps == 0:
                self._send_or_fail(client, client.queued.popleft())
        self._settle(client)
        self._maybe_exit(client)

    def _send_or_fail(self, client: ActorClient, call: ActorCall) -> None:
        error = self.table.failed_arg(call.arg_refs)
        if error is not None:  # an argument is an error: so is the call's result
            call.arg_refs = []
            call.held_refs = []
            self.table.set_results(call.return_id, error)
            return
        client.inflight[call.task_id] = call
        self.call_owner[call.task_id] = client
        descs = self.table.describe(call.arg_refs) if call.arg_refs else []
        assert client.exec_addr is not None
        self.effects.send(client.exec_addr, (Msg.ACTOR_CALL, call.task_id, call.method,
                                             call.args, descs, call.return_id,
                                             self.self_addr))

    def call_done(self, task_id: bytes, return_id: ReturnId, value: Any,
                  holder: str | None) -> bool:
        """TASK_DONE for a call; False if ``task_id`` is not a call of ours."""
        client = self.call_owner.pop(task_id, None)
        if client is None:
            return False
        call = client.inflight.pop(task_id, None)
        if call is None:  # failed meanwhile (the actor restarted or died)
            self.table.release_contained(holder, return_id)
            return True
        call.arg_refs = []
        call.held_refs = []
        self.table.set_results(return_id, value, holder)
        self._settle(client)  # the last answer may let the actor leave scope
        return True

    def _settle(self, client: ActorClient) -> None:
        """Hold a ref to the actor exactly while calls to it are queued or in flight."""
        busy = bool(client.queued or client.inflight)
        if busy is client.holding:
            return
        client.holding = busy
        if busy:
            self.table.add_ref(client.actor_id, client.owner)
        else:
            self.table.remove_ref(client.actor_id, client.owner)

    # ------------------------------------------------------------------ actor states
    def actor_state(self, actor_id: bytes, status: str, exec_addr: str | None,
                    cause: str) -> None:
        """ACTOR_STATE from the control plane."""
        client = self.clients.get(actor_id)
        if client is None:
            return
        new = ActorStatus(status)
        if client.exec_addr and client.exec_addr != exec_addr:
            self.forget_peer(client.exec_addr)
        client.status, client.exec_addr, client.cause = new, exec_addr, cause
        failed: list[ActorCall] = []
        if new in (ActorStatus.RESTARTING, ActorStatus.DEAD):
            # Calls that were in flight died with the process.
            retry: list[ActorCall] = []
            for call in client.inflight.values():
                self.call_owner.pop(call.task_id, None)
                if new is ActorStatus.RESTARTING and call.retries_left != 0:
                    call.retries_left -= 1
                    retry.append(call)
                else:
                    failed.append(call)
            client.inflight.clear()
            client.queued.extendleft(reversed(retry))
        if new is ActorStatus.DEAD:
            failed.extend(client.queued)
            client.queued.clear()
            client.creation_refs = client.restart_refs = []
            client.exit_pending = False
        elif new is ActorStatus.ALIVE:
            client.creation_refs = client.restart_refs
        for call in failed:
            self.table.set_results(call.return_id, error_value(ActorDiedError(client.name,
                                                                              cause)))
        self._drain(client)

    def mark_killed(self, client: ActorClient) -> None:
        """kill() was called here: calls made from now on fail at once, as queued ones do.
        (Calls already in flight fail when the control plane confirms the death.)"""
        if client.status is ActorStatus.DEAD:
            return
        cause = "it was killed with kill()"
        client.status, client.cause = ActorStatus.DEAD, cause
        failed = list(client.queued)
        client.queued.clear()
        for call in failed:
            self.table.set_results(call.return_id, error_value(ActorDiedError(client.name,
                                                                              cause)))
        self._settle(client)

    def out_of_scope(self, actor_id: bytes) -> None:
        """No handle of an actor this process created is left anywhere: it exits (at once
        if alive, else once it is)."""
        client = self.clients.get(actor_id)
        if client is None or client.status is ActorStatus.DEAD:
            return
        client.exit_pending = True
        self._maybe_exit(client)

    def _maybe_exit(self, client: ActorClient) -> None:
        if client.exit_pending and client.status is ActorStatus.ALIVE \
                and not (client.inflight or client.queued):
            client.exit_pending = False
            assert client.exec_addr is not None
            self.effects.send(client.exec_addr, (Msg.ACTOR_EXIT,))
