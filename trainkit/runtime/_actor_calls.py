"""Actor calls: each caller sends calls straight to the actor's process, in order.

Part of the core worker (see ``_core.CoreWorker``). The node service publishes actor state
changes (ALIVE with its address, RESTARTING, DEAD) to subscribed processes; calls wait
while an actor is not ALIVE and fail with ActorDiedError once it is DEAD.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from trainkit.exceptions import ActorDiedError
from trainkit.runtime._objects import ObjectTableMixin
from trainkit.runtime._objects import _error_repr
from trainkit.runtime._protocol import ActorStatus
from trainkit.runtime._protocol import Msg
from trainkit.runtime._refs import ObjectRef


@dataclass(slots=True, eq=False)
class _Call:
    task_id: bytes
    method: str
    args: tuple[Any, ...]
    arg_refs: list[ObjectRef]
    held_refs: list[ObjectRef]
    return_id: bytes | tuple[bytes, ...]  # a tuple for num_returns > 1
    retries_left: int
    deps: int = 0  # arguments whose values are not known yet: the call waits here for them


class _ActorClient:
    """This process's view of one actor: where it is, and its calls in flight."""

    def __init__(self, actor_id: bytes, name: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.name = name
        self.status = ActorStatus.PENDING
        self.exec_addr: str | None = None
        self.cause = ""
        self.max_task_retries = max_task_retries
        self.queued: deque[_Call] = deque()
        self.inflight: dict[bytes, _Call] = {}
        self.exit_pending = False  # the owner's last handle is gone: exit once drained
        self.release_pending = False  # a borrower's last handle is gone: RELEASE once drained
        # Creation arguments stay alive until the actor is up (for its whole life if
        # it may restart, since a restart runs the constructor again).
        self.creation_refs: list[ObjectRef] = []
        self.restart_refs: list[ObjectRef] = []


class ActorCallerMixin(ObjectTableMixin):
    """This process's actor clients and the calls it made to them."""

    call_owner: dict[bytes, Any]

    # ------------------------------------------------------------------ actors
    def actor_client(self, actor_id: bytes, name: str, max_task_retries: int,
                     subscribe: bool) -> _ActorClient:
        with self.lock:
            client = self.actors.get(actor_id)
            if client is None:
                client = self.actors[actor_id] = _ActorClient(actor_id, name, max_task_retries)
                if subscribe:
                    self._send_quiet(self.control_addr,
                                     (Msg.SUBSCRIBE_ACTOR, actor_id, self.ctl_addr))
            return client

    def call_actor(self, client: _ActorClient, call: _Call) -> None:
        """Send a call, in order after this process's earlier calls to the actor.

        A call whose argument refs have no value yet waits here, not in the actor (where it
        would hold up every other caller's calls), and the calls after it wait behind it.
        """
        with self.lock:
            if client.status is ActorStatus.DEAD:
                self.set_results(call.return_id,
                                _error_repr(ActorDiedError(client.name, client.cause)))
                return
            for ref in call.arg_refs:
                call.deps += 1
                if self._on_ready(ref, partial(self._call_dep_ready, client, call)):
                    call.deps -= 1
            if client.status is ActorStatus.ALIVE and not client.queued and call.deps == 0:
                self._send_or_fail(client, call)
            else:
                client.queued.append(call)

    def _call_dep_ready(self, client: _ActorClient, call: _Call) -> None:
        with self.lock:
            call.deps -= 1
            if call.deps == 0:
                self._drain(client)

    def _drain(self, client: _ActorClient) -> None:
        """Send the queued calls that can go, in order; exit or release once all are done."""
        if client.status is ActorStatus.ALIVE:
            while client.queued and client.queued[0].deps == 0:
                self._send_or_fail(client, client.queued.popleft())
        if client.inflight or client.queued:
            return
        if client.exit_pending and client.status is ActorStatus.ALIVE:
            client.exit_pending = False
            self._send_exit(client)
        if client.release_pending:
            self._release_actor(client)

    def _send_or_fail(self, client: _ActorClient, call: _Call) -> None:
        error = self.failed_arg(call.arg_refs)
        if error is not None:  # an argument is an error: so is the call's result
            call.arg_refs = []
            call.held_refs = []
            self.set_results(call.return_id, error)
            return
        self._send_call(client, call)

    def _send_call(self, client: _ActorClient, call: _Call) -> None:
        client.inflight[call.task_id] = call
        self.call_owner[call.task_id] = client
        descs = self.describe_arg_refs(call.arg_refs)
        assert client.exec_addr is not None
        self._send_quiet(client.exec_addr, (Msg.ACTOR_CALL, call.task_id, call.method,
                                            call.args, descs, call.return_id, self.ctl_addr))

    def _on_actor_state(self, actor_id: bytes, status: str, exec_addr: str | None,
                        cause: str) -> None:
        failed: list[_Call] = []
        with self.lock:
            client = self.actors.get(actor_id)
            if client is None:
                return
            new = ActorStatus(status)
            if client.exec_addr and client.exec_addr != exec_addr:
                self.out.forget(client.exec_addr)
            client.status, client.exec_addr, client.cause = new, exec_addr, cause
            if new in (ActorStatus.RESTARTING, ActorStatus.DEAD):
                # Calls that were in flight died with the process.
                retry: list[_Call] = []
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
            elif new is ActorStatus.ALIVE:
                client.creation_refs = client.restart_refs
                self._drain(client)
            for call in failed:
                self.set_results(call.return_id, _error_repr(ActorDiedError(client.name, cause)))

    def mark_killed(self, client: _ActorClient) -> None:
        """kill() was called here: calls made from now on fail at once, as queued ones do.
        (Calls already in flight fail when the control plane confirms the death.)"""
        cause = "it was killed with kill()"
        with self.lock:
            if client.status is ActorStatus.DEAD:
                return
            client.status, client.cause = ActorStatus.DEAD, cause
            failed = list(client.queued)
            client.queued.clear()
            for call in failed:
                self.set_results(call.return_id, _error_repr(ActorDiedError(client.name, cause)))

    def call_finished(self, client: _ActorClient) -> None:
        """A call's answer came (caller holds the lock): what waited for it may go."""
        if not client.inflight and (client.exit_pending or client.release_pending):
            self._drain(client)

    def _on_actor_out_of_scope(self, actor_id: bytes) -> None:
        """The last handle of an actor this process created went away: let it exit
        once the calls already submitted to it are answered (an exit sent earlier could
        overtake their replies)."""
        client = self.actors.get(actor_id)
        if client is None or client.status is ActorStatus.DEAD:
            return
        client.exit_pending = True
        self._drain(client)

    def actor_released(self, actor_id: bytes) -> bool:
        """This borrower's last handle to an actor went away; True to RELEASE it now,
        False if calls to it are still out (released once they are answered)."""
        client = self.actors.get(actor_id)
        if client is None or not (client.inflight or client.queued):
            return True
        client.release_pending = True
        return False

    def actor_reborrowed(self, actor_id: bytes) -> bool:
        """A new handle appeared while a release waited; True if that release is undone
        (so no new BORROW is needed)."""
        client = self.actors.get(actor_id)
        if client is None or not client.release_pending:
            return False
        client.release_pending = False
        return True

    def _release_actor(self, client: _ActorClient) -> None:
        client.release_pending = False
        b = self.borrowed.get(client.actor_id)
        if b is not None and b.count <= 0:
            del self.borrowed[client.actor_id]
            self._send_quiet(b.owner, (Msg.RELEASE, client.actor_id, self.ctl_addr))

    def _send_exit(self, client: _ActorClient) -> None:
        assert client.exec_addr is not None
        self._send_quiet(client.exec_addr, (Msg.ACTOR_EXIT,))
