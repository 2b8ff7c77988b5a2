"""This node's object store, served: allocations, seals, pins, frees, copies from other nodes.

A part of the node service. It owns the shared-memory store (``store.object_store``) and the
lock every thread that touches it holds (the node's loop, and in a cluster the transfer
server's and puller's threads, which copy objects to and from other nodes), the store socket
that processes on this machine send their store requests on (``wire.local_channel``), the
copies pulled from other nodes and the reads waiting for a seal or a pull.

The flow of an object: its writer asks STORE_ALLOC (an arena offset, or the path of a
fallback file), writes it and sends STORE_SEAL; a reader's STORE_PIN is answered with where
to map it (held until the seal arrives if it came first; pulled from the node that holds it
if that is another node); STORE_UNPIN when the reader's last view is gone; the owner's
STORE_FREE when its last ref is. A copy pulled here is freed once nobody here reads it.
"""

from __future__ import annotations

import select
import threading
from typing import Any
from typing import Protocol

from trainkit.exceptions import ObjectLostError
from trainkit.runtime.store.object_store import SharedMemoryStore
from trainkit.runtime.store.transfer import Puller
from trainkit.runtime.store.transfer import TransferServer
from trainkit.runtime.wire.local_channel import LocalChannelServer
from trainkit.runtime.wire.local_channel import store_socket_address
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.transport import Outbox


class StoreHost(Protocol):
    """What the store service asks of the node service it runs in."""

    node_id: str

    def send(self, addr: str, msg: tuple[Any, ...]) -> None: ...
    def reply(self, addr: str, req_id: int, ok: bool, payload: Any) -> None: ...
    def peer(self, node_id: str) -> dict[str, Any] | None: ...
    def drain_inbox(self) -> None: ...
    def on_local_request(self, fd: int) -> None: ...


class StoreService:
    def __init__(self, host: StoreHost, session: str, capacity: int, disk: str) -> None:
        self.host = host
        self.node_id = host.node_id
        self.store = SharedMemoryStore(f"{session}-arena", capacity, disk, fallback_dir=disk)
        self.arena_path = self.store.arena_path  # /proc/<pid>/fd/<n>, for every process here
        # Held by whoever calls the store; notified when an object is sealed (transfers of
        # an object to other nodes wait for that, see store.transfer).
        self.lock = threading.Condition(threading.Lock())
        # Store requests from processes on this machine (see wire.local_channel).
        self.local = LocalChannelServer(store_socket_address(session))
        self.copies: set[bytes] = set()  # objects pulled from other nodes
        self.pulling: dict[bytes, list[tuple[int, str]]] = {}  # oid -> readers waiting
        self.early_pins: dict[bytes, list[tuple[int, str]]] = {}  # pins before the seal
        self.transfer: TransferServer | None = None
        self.puller: Puller | None = None

    def serve_other_nodes(self, host: str, secret: bytes, out: Outbox, inbox_addr: str) -> None:
        """Cluster mode: serve this node's objects to other nodes and pull theirs."""
        self.transfer = TransferServer(host, secret, self.store, self.lock)
        self.puller = Puller(secret, self.store, out, inbox_addr, store_lock=self.lock)

    def start(self) -> None:
        if self.transfer is not None:
            self.transfer.start()
        if self.puller is not None:
            self.puller.start()

    # ------------------------------------------------------------------ requests
    def on_store_alloc(self, req_id: int, reply_to: str, oid: bytes, size: int,
                       owner: str, files_ok: bool = False) -> None:
        """Room for a new object: an arena offset, or (``files_ok``: the writer can map one)
        the /proc path of a fallback file of its own."""
        with self.lock:
            tight = not self.store.fits(size)
        if tight:  # frees and unpins waiting in the inbox may give back the room needed
            self.host.drain_inbox()
        try:
            with self.lock:
                location = self.store.allocate(oid, size, owner)
                if isinstance(location, str) and not files_ok:
                    self.store.free(oid)
                    raise self.store.out_of_memory(
                        size, oid, "pinned and unsealed objects leave no range large enough "
                        "(and this writer maps only the arena, not a file of its own)")
        except Exception as e:
            self.host.reply(reply_to, req_id, False, e)
            return
        self.host.reply(reply_to, req_id, True, location)

    def on_store_seal(self, oid: bytes) -> None:
        with self.lock:
            if self.store.contains(oid):
                self.store.seal(oid)
            self.lock.notify_all()
        for req_id, reply_to in self.early_pins.pop(oid, ()):
            self.on_store_pin(req_id, reply_to, oid)

    def on_store_pin(self, req_id: int, reply_to: str, oid: bytes, node_id: str = "",
                     size: int = 0) -> None:
        with self.lock:
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
            with self.lock:
                result = self.store.pin(oid)
        except KeyError:
            self.host.reply(reply_to, req_id, False, ObjectLostError(
                oid.hex(), "it is not in the object store (it was freed)"))
            return
        except Exception as e:
            self.host.reply(reply_to, req_id, False, e)
            return
        self.host.reply(reply_to, req_id, True, result)

    def pull(self, req_id: int, reply_to: str, oid: bytes, node_id: str, size: int) -> None:
        """Fetch an object another node holds; the reader's pin is answered when it is here."""
        waiters = self.pulling.get(oid)
        if waiters is not None:
            waiters.append((req_id, reply_to))
            return
        peer = self.host.peer(node_id)
        if peer is None or self.puller is None:
            self.host.reply(reply_to, req_id, False, ObjectLostError(
                oid.hex(), f"it lived on node {node_id[:8]}, which is gone"))
            return
        try:
            with self.lock:
                self.store.allocate(oid, size, "")  # an arena range or a fallback file
        except Exception as e:
            self.host.reply(reply_to, req_id, False, e)
            return
        self.pulling[oid] = [(req_id, reply_to)]
        self.puller.submit(oid, peer["transfer_addr"], size)

    def on_store_pulled(self, oid: bytes, error: str | None) -> None:
        waiters = self.pulling.pop(oid, [])
        if error is not None:
            with self.lock:
                self.store.free(oid)
            for req_id, reply_to in waiters:
                self.host.reply(reply_to, req_id, False, ObjectLostError(
                    oid.hex(), f"fetching it from another node failed: {error}"))
            return
        with self.lock:
            self.store.seal(oid)
        self.copies.add(oid)
        for req_id, reply_to in waiters:
            self.on_store_pin(req_id, reply_to, oid)
        self.drop_unused_copy(oid)

    def drop_unused_copy(self, oid: bytes) -> None:
        """A pulled copy lives while readers here pin it; the owner's copy stays the source."""
        if oid in self.copies:
            with self.lock:
                if self.store.pin_count(oid) == 0:
                    self.store.free(oid)
                    self.copies.discard(oid)

    def on_store_unpin(self, oid: bytes) -> None:
        # Also for a freed object whose readers still pinned it (RELEASING): the last unpin
        # releases its range. `contains()` is False for those, so it must not gate this.
        try:
            with self.lock:
                self.store.unpin(oid)
        except (KeyError, ValueError):
            pass  # its owner died and the store already dropped it
        self.drop_unused_copy(oid)

    def on_store_free(self, oids: list[bytes], node_id: str = "") -> None:
        if node_id and node_id != self.node_id:
            peer = self.host.peer(node_id)
            if peer is not None:
                self.host.send(peer["addr"], (Msg.STORE_FREE, oids))
            return
        with self.lock:
            for oid in oids:
                if oid not in self.copies:
                    self.store.free(oid)

    def free_owned_by(self, addr: str) -> None:
        """A process died: the objects it owned here go."""
        with self.lock:
            self.store.free_owned_by(addr)

    # ------------------------------------------------------------------ reports
    def used_bytes(self) -> int:
        with self.lock:
            return int(self.store.stats()["used_bytes"])

    def stats(self) -> dict[str, Any]:
        """The store's figures, counting what the store connections hold now (so stats asked
        for after an unpin count it)."""
        self.drain_local()
        with self.lock:
            return dict(self.store.stats())

    def rejected_frames(self) -> dict[str, int]:
        """Frames the object server dropped, by reason."""
        return dict(self.transfer.auth.rejected) if self.transfer else {}

    def drain_local(self) -> None:
        """Handle what the store connections hold now."""
        fds = self.local.fds()
        if not fds:
            return
        poll = select.poll()
        for fd in fds:
            poll.register(fd, select.POLLIN)
        while ready := poll.poll(0):
            for fd, _ in ready:
                if self.local.owns(fd):
                    self.host.on_local_request(fd)  # one message; EOF closes and forgets it
                if not self.local.owns(fd):
                    poll.unregister(fd)

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.stop()
        if self.puller is not None:
            self.puller.stop()
        self.local.close()
        self.store.close()
