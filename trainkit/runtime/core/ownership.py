"""The ownership table: which objects this process owns or borrows, who holds them, and when
they are freed.

Pure state: it sends nothing and starts nothing. What it decides (a BORROW or RELEASE to an
owner, a STORE_FREE to the object store, a value to a process that asked for it) is recorded in an
``Effects`` for the I/O shell to carry out, and the waiters it wakes are handed over there too.

The rules (as Ray's ReferenceCounter):

- An **owned** object lives while this process holds ``ObjectRef`` instances to it (``local``)
  or another process borrows it (``borrowers``, counted per process from BORROW/RELEASE). When
  both are gone it is freed: its stored copy is released, the worker that keeps the refs
  inside it (``holder``) is told, and the refs it contains are dropped. An object whose task
  has not finished is freed when the task's value arrives (``abandoned``).
- A **borrowed** object is another process's: the first local ref sends BORROW to its owner,
  the last one sends RELEASE. Its value is asked of the owner once (GET_OBJECT) and kept.
- An **actor** is owned like an object (its id is its ref): when its owner's last handle and
  every borrower are gone, ``on_actor_out_of_scope`` is called. Calls in flight hold a ref
  to their actor (the actor caller takes one), so an actor never leaves scope before the
  calls made to it are answered.
- Refs that a worker put inside a task's return value stay alive here (``held_for_caller``)
  until the caller frees that value (RELEASE_CONTAINED).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from trainkit.exceptions import ObjectLostError
from trainkit.runtime.core.effects import Effects
from trainkit.runtime.core.effects import Waiter
from trainkit.runtime.core.refs import ObjectRef
from trainkit.runtime.core.values import INLINE
from trainkit.runtime.core.values import STORED
from trainkit.runtime.core.values import ReturnId
from trainkit.runtime.core.values import Value
from trainkit.runtime.core.values import error_value
from trainkit.runtime.core.values import is_error
from trainkit.runtime.core.values import return_ids
from trainkit.runtime.core.values import stored_on
from trainkit.runtime.wire.protocol import Msg


class Owned:
    """An object this process owns."""

    __slots__ = ("abandoned", "actor", "borrowers", "contained", "getters", "holder", "local",
                 "value", "waiters")

    def __init__(self, value: Value | None = None) -> None:
        self.value = value  # None while the task that makes it runs
        self.local = 0
        self.borrowers: dict[str, int] = {}
        self.contained: list[Any] | None = None  # refs inside the value, kept alive with it
        self.holder: str | None = None  # worker keeping the refs inside a task's return
        self.waiters: list[Waiter] = []
        self.getters: list[str] = []  # processes that asked for the value before it existed
        self.abandoned = False
        self.actor = False


class Borrowed:
    """Another process's object that this process holds refs to."""

    __slots__ = ("count", "owner", "requested", "value", "waiters")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.count = 0
        self.value: Value | None = None
        self.waiters: list[Waiter] = []
        self.requested = False


def _lost(oid: bytes, why: str) -> Value:
    return error_value(ObjectLostError(oid.hex(), why))


class OwnershipTable:
    """Reference counts, borrowers and values of this process's objects (see module doc).

    Args:
        self_addr: this process's control address (the owner address of the refs it makes).
        effects: where decisions are recorded.
        forget_mapping: called with an object's id when this process stops needing its
            cached view of the object's stored copy.
        on_actor_out_of_scope: called with an actor's id when nothing holds it any more.
    """

    def __init__(self, self_addr: str, effects: Effects, *,
                 forget_mapping: Callable[[bytes], None] = lambda oid: None,
                 on_actor_out_of_scope: Callable[[bytes], None] = lambda actor_id: None
                 ) -> None:
        self.self_addr = self_addr
        self.effects = effects
        self.forget_mapping = forget_mapping
        self.on_actor_out_of_scope = on_actor_out_of_scope
        self.owned: dict[bytes, Owned] = {}
        self.borrowed: dict[bytes, Borrowed] = {}
        self.held_for_caller: dict[bytes, list[Any]] = {}

    # ------------------------------------------------------------------ owning
    def own(self, oid: bytes, value: Value | None = None, *,
            contained: list[Any] | None = None) -> Owned:
        entry = self.owned[oid] = Owned(value)
        entry.contained = contained or None
        return entry

    def own_actor(self, actor_id: bytes, *, pinned: bool) -> None:
        """An actor this process creates; ``pinned`` (named actors) keeps it alive as long
        as this process lives, whatever happens to its handles."""
        entry = self.own(actor_id, (INLINE, b"", []))
        entry.actor = True
        entry.local = 1 if pinned else 0

    def disown(self, oid: bytes) -> None:
        """Forget an entry without freeing anything (its creation failed)."""
        self.owned.pop(oid, None)

    def holds_anything(self) -> bool:
        """True while other processes may still need something of this process."""
        return bool(self.owned) or bool(self.held_for_caller)

    # ------------------------------------------------------------------ reference counts
    def add_ref(self, oid: bytes, owner: str) -> None:
        if owner == self.self_addr:
            entry = self.owned.get(oid)
            if entry is not None:
                entry.local += 1
            return
        b = self.borrowed.get(oid)
        if b is None:
            b = self.borrowed[oid] = Borrowed(owner)
        b.count += 1
        if b.count == 1:
            self.effects.send(owner, (Msg.BORROW, oid, self.self_addr))

    def remove_ref(self, oid: bytes, owner: str) -> None:
        if owner == self.self_addr:
            entry = self.owned.get(oid)
            if entry is not None:
                entry.local -= 1
                self._maybe_free(oid, entry)
            return
        b = self.borrowed.get(oid)
        if b is None:
            return
        b.count -= 1
        if b.count <= 0:
            del self.borrowed[oid]
            self.forget_mapping(oid)
            self.effects.send(owner, (Msg.RELEASE, oid, self.self_addr))

    def borrowed_by(self, oid: bytes, addr: str) -> None:
        """BORROW: process ``addr`` holds a ref to an object of ours."""
        entry = self.owned.get(oid)
        if entry is not None:
            entry.borrowers[addr] = entry.borrowers.get(addr, 0) + 1

    def released_by(self, oid: bytes, addr: str) -> None:
        """RELEASE: process ``addr`` dropped its last ref to an object of ours."""
        entry = self.owned.get(oid)
        if entry is None:
            return
        n = entry.borrowers.get(addr, 0) - 1
        if n <= 0:
            entry.borrowers.pop(addr, None)
        else:
            entry.borrowers[addr] = n
        self._maybe_free(oid, entry)

    def _maybe_free(self, oid: bytes, entry: Owned) -> None:
        if entry.local > 0 or entry.borrowers:
            return
        if entry.actor:
            self.owned.pop(oid, None)
            self.on_actor_out_of_scope(oid)
            return
        if entry.value is None:
            entry.abandoned = True  # freed when its task finishes
            return
        self.owned.pop(oid, None)
        self._release_value(oid, entry)

    def _release_value(self, oid: bytes, entry: Owned) -> None:
        value = entry.value
        if value is not None and value[0] == STORED:
            self.forget_mapping(oid)
            self.effects.send_store((Msg.STORE_FREE, [oid], value[1]))
        if entry.holder is not None:
            self.effects.send(entry.holder, (Msg.RELEASE_CONTAINED, oid))
        entry.contained = None

    # ------------------------------------------------------------------ failures
    def process_died(self, addr: str, cause: str) -> None:
        """Another process died: its borrows end, and what we borrowed from it is lost."""
        for oid, entry in list(self.owned.items()):
            if addr in entry.borrowers:
                del entry.borrowers[addr]
                self._maybe_free(oid, entry)
        for oid, b in self.borrowed.items():
            if b.owner == addr and b.value is None:
                b.value = _lost(oid, f"its owner died ({cause})")
                self.effects.wake(b.waiters)
                b.waiters = []

    def node_died(self, node_id: str, cause: str) -> None:
        """Objects whose only copy lived on a node that died are lost."""
        items: list[tuple[bytes, Owned | Borrowed]] = [*self.owned.items(),
                                                       *self.borrowed.items()]
        for oid, item in items:
            if stored_on(item.value) == node_id:
                item.value = _lost(oid, f"the node that held it died ({cause})")
                self.effects.wake(item.waiters)
                item.waiters = []

    # ------------------------------------------------------------------ results
    def set_results(self, return_id: ReturnId, value: Any, holder: str | None = None) -> None:
        """A call's result: one value, or for ``num_returns > 1`` a list of values (an
        error value is the result of every return)."""
        if not isinstance(return_id, tuple):
            self.set_result(return_id, value, holder)
        elif isinstance(value, list):
            for oid, v in zip(return_id, value, strict=True):
                self.set_result(oid, v, holder)
        else:
            for oid in return_id:
                self.set_result(oid, value, holder)

    def set_result(self, oid: bytes, value: Value, holder: str | None = None) -> None:
        entry = self.owned.get(oid)
        if entry is None or entry.value is not None:
            # Nobody will read it (freed, or a retried task answered twice).
            if holder is not None:
                self.effects.send(holder, (Msg.RELEASE_CONTAINED, oid))
            node = stored_on(value)
            if node is not None and entry is None:
                self.effects.send_store((Msg.STORE_FREE, [oid], node))
            return
        entry.value = value
        entry.holder = holder
        self.effects.wake(entry.waiters)
        entry.waiters = []
        if entry.getters:
            sent = _lost(oid, "its owner already freed it") if entry.abandoned else value
            for addr in entry.getters:
                self.effects.send(addr, (Msg.OBJECT_VALUE, oid, sent))
            entry.getters = []
        if entry.abandoned:
            self.owned.pop(oid, None)
            self._release_value(oid, entry)

    def release_contained(self, holder: str | None, return_id: ReturnId) -> None:
        """Nobody will read a result: its holder may drop the refs it keeps for it."""
        if holder is not None:
            for oid in return_ids(return_id):
                self.effects.send(holder, (Msg.RELEASE_CONTAINED, oid))

    def hold_for_caller(self, oid: bytes, refs: list[Any]) -> None:
        """Worker side: keep the refs inside a return value until its caller frees it."""
        self.held_for_caller[oid] = refs

    def caller_released(self, oid: bytes) -> None:
        """RELEASE_CONTAINED: the caller freed a value whose refs we kept."""
        self.held_for_caller.pop(oid, None)

    # ------------------------------------------------------------------ values
    def lookup(self, ref: ObjectRef) -> Value | None:
        """The value if known here (an error if we owned and freed it); None if not yet."""
        oid = ref.id
        entry = self.owned.get(oid)
        if entry is not None:
            return entry.value
        b = self.borrowed.get(oid)
        if b is not None:
            return b.value
        if ref.owner_address == self.self_addr:
            return _lost(oid, "it was already freed")
        return None

    def when_ready(self, ref: ObjectRef, waiter: Waiter) -> bool:
        """True if ``ref``'s value is known; else ``waiter`` is woken once it is (and the
        owner of a borrowed object is asked for it, once)."""
        oid = ref.id
        entry = self.owned.get(oid)
        if entry is not None:
            if entry.value is not None:
                return True
            entry.waiters.append(waiter)
            return False
        if ref.owner_address == self.self_addr:
            return True  # freed: lookup reports it lost
        b = self.borrowed.get(oid)
        if b is None:  # a ref made without registering (internal use only)
            b = self.borrowed[oid] = Borrowed(ref.owner_address)
        if b.value is not None:
            return True
        b.waiters.append(waiter)
        if not b.requested:
            b.requested = True
            self.effects.send(ref.owner_address, (Msg.GET_OBJECT, oid, self.self_addr))
        return False

    def value_requested(self, oid: bytes, reply_to: str) -> None:
        """GET_OBJECT: another process wants the value of an object of ours."""
        entry = self.owned.get(oid)
        if entry is None:
            value = _lost(oid, "its owner already freed it")
        elif entry.value is None:
            entry.getters.append(reply_to)
            return
        else:
            value = entry.value
        self.effects.send(reply_to, (Msg.OBJECT_VALUE, oid, value))

    def value_arrived(self, oid: bytes, value: Value) -> None:
        """OBJECT_VALUE: the owner of a borrowed object sent its value."""
        b = self.borrowed.get(oid)
        if b is None or b.value is not None:
            return
        b.value = value
        self.effects.wake(b.waiters)
        b.waiters = []

    def failed_arg(self, refs: Sequence[ObjectRef]) -> Value | None:
        """The error value of the first ref whose value, known here, is an error."""
        for ref in refs:
            value = self.lookup(ref)
            if is_error(value):
                return value
        return None

    def describe(self, refs: Sequence[ObjectRef]) -> list[tuple[Any, ...]]:
        """For each ref: (id, owner, value if already known here), for a call's receiver."""
        return [(ref.id, ref.owner_address, self.lookup(ref)) for ref in refs]
