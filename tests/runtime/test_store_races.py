"""Issue 13, section 5: store requests that race a seal or an unpin.

A reader can learn of an object (from its owner, over zmq) before the writer's seal reaches
the node (on the writer's store connection). A pull from another node then used to fail
with ``ObjectLostError ... still being written``: the object server must wait for the seal.
Both tests wait on events, never on time.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from trainkit.runtime.store.object_store import SharedMemoryStore
from trainkit.runtime.store.transfer import Puller
from trainkit.runtime.store.transfer import TransferServer
from trainkit.runtime.wire.protocol import Msg

MiB = 1 << 20
SECRET = b"s" * 32


class _Inbox:
    """Stands in for the node's inbox: records what the puller reports."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []
        self.event = threading.Event()

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        self.got.append(msg)
        self.event.set()


class _WatchedStore(SharedMemoryStore):
    """Sets ``asked_unsealed`` once the object server found the object still being written."""

    asked_unsealed = threading.Event()

    def is_sealed(self, object_id: bytes) -> bool:
        sealed = super().is_sealed(object_id)
        if not sealed:
            self.asked_unsealed.set()
        return sealed


def _pull(source: SharedMemoryStore, lock: threading.Condition, dest: SharedMemoryStore,
          oid: bytes, size: int) -> tuple[TransferServer, Puller, _Inbox]:
    server = TransferServer("127.0.0.1", SECRET, source, lock)
    server.start()
    inbox = _Inbox()
    puller = Puller(SECRET, dest, inbox, "node")  # type: ignore[arg-type]
    puller.start()
    dest.allocate(oid, size, "")
    puller.submit(oid, server.address, size)
    return server, puller, inbox


def test_a_pull_that_beats_the_seal_waits_for_it(tmp_path) -> None:
    lock = threading.Condition(threading.Lock())
    source = _WatchedStore("src", 4 * MiB, str(tmp_path))
    dest = SharedMemoryStore("dst", 4 * MiB, str(tmp_path))
    value = np.random.default_rng(3).integers(0, 255, MiB, dtype=np.uint8)
    offset = source.allocate(b"x", MiB, "owner")
    assert isinstance(offset, int)
    source._arena[offset:offset + MiB] = value.tobytes()  # written, not yet sealed
    server, puller, inbox = _pull(source, lock, dest, b"x", MiB)
    try:
        assert _WatchedStore.asked_unsealed.wait(30)  # the request is there before the seal
        assert not inbox.event.is_set()
        with lock:  # what the node does with the writer's STORE_SEAL
            source.seal(b"x")
            lock.notify_all()
        assert inbox.event.wait(30)
        assert inbox.got == [(Msg.STORE_PULLED, b"x", None)]
        with dest.view(b"x") as got:
            assert bytes(got) == value.tobytes()
        assert source.pin_count(b"x") == 0  # the server unpinned it after the stream
    finally:
        puller.stop()
        server.stop()
        source.close()
        dest.close()


def test_a_pull_into_a_fragmented_store_lands_in_a_file_of_its_own(tmp_path) -> None:
    """The copy's room is a fallback file when pins leave no range: the puller writes there
    (through the store's view), and readers on that node map it by its /proc path."""
    lock = threading.Condition(threading.Lock())
    source = SharedMemoryStore("src", 8 * MiB, str(tmp_path))
    dest = SharedMemoryStore("dst", 4 * MiB, str(tmp_path), fallback_dir=str(tmp_path))
    for i in range(4):  # every range of the destination pinned
        dest.allocate(bytes([i]), MiB - 4096, "w")
        dest.seal(bytes([i]))
        dest.pin(bytes([i]))
    value = os.urandom(2 * MiB)
    offset = source.allocate(b"y", len(value), "owner")
    assert isinstance(offset, int)
    source._arena[offset:offset + len(value)] = value
    source.seal(b"y")
    server, puller, inbox = _pull(source, lock, dest, b"y", len(value))
    try:
        assert inbox.event.wait(30)
        assert inbox.got == [(Msg.STORE_PULLED, b"y", None)]
        dest.seal(b"y")
        location, size = dest.pin(b"y")
        assert isinstance(location, str) and location.startswith(f"/proc/{os.getpid()}/fd/")
        with open(location, "rb") as f:
            assert f.read() == value and size == len(value)
        dest.unpin(b"y")
    finally:
        puller.stop()
        server.stop()
        source.close()
        dest.close()
