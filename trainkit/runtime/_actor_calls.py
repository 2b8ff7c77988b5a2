"""Actor calls: each caller sends calls straight to the actor's process, in order.

Part of the core worker (see ``_core.CoreWorker``). The node service publishes actor state
changes (ALIVE with its address, RESTARTING, DEAD) to subscribed processes; calls wait
while an actor is not ALIVE and fail with ActorDiedError once it is DEAD.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
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
    return_id: bytes
    retries_left: int


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
        self.exit_pending = False
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
        with self.lock:
            if client.status is ActorStatus.DEAD:
                self.set_result(call.return_id,
                                _error_repr(ActorDiedError(client.name, client.cause)))
                return
            if client.status is ActorStatus.ALIVE and not client.queued:
                self._send_call(client, call)
            else:
                client.queued.append(call)

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
                while client.queued:
                    self._send_call(client, client.queued.popleft())
                if client.exit_pending:
                    self._send_exit(client)
            for call in failed:
                self.set_result(call.return_id, _error_repr(ActorDiedError(client.name, cause)))

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
                self.set_result(call.return_id, _error_repr(ActorDiedError(client.name, cause)))

    def _on_actor_out_of_scope(self, actor_id: bytes) -> None:
        """The last handle of an actor this process created went away: let it exit
        once the calls already submitted to it are done."""
        client = self.actors.get(actor_id)
        if client is None or client.status is ActorStatus.DEAD:
            return
        client.exit_pending = True
        if client.status is ActorStatus.ALIVE and not client.queued:
            self._send_exit(client)

    def _send_exit(self, client: _ActorClient) -> None:
        assert client.exec_addr is not None
        self._send_quiet(client.exec_addr, (Msg.ACTOR_EXIT,))
