"""ZeroMQ messaging: one PULL inbox per endpoint, one PUSH socket per peer.

Sending is ``send(peer_address, message)``; a peer is addressed by its inbox. Sockets are
created with an unlimited high-water mark (a ROUTER past its HWM silently drops
messages, and a PUSH past it blocks) and zero linger, so neither a slow peer nor a dead
one can make a sender hang or lose a message it still can deliver.

Threading: an inbox is read by one thread. ``Outbox.send`` may be called from any
thread; each peer socket is guarded by its own lock.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import zmq


def make_context() -> zmq.Context[Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


class Inbox:
    """A bound PULL socket. Read by exactly one thread."""

    def __init__(self, ctx: zmq.Context[Any], address: str) -> None:
        self.address = address
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)

    def recv(self) -> tuple[Any, ...]:
        msg: tuple[Any, ...] = pickle.loads(self.socket.recv(copy=True))
        return msg

    def recv_nowait(self) -> tuple[Any, ...] | None:
        try:
            data = self.socket.recv(zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return None
        msg: tuple[Any, ...] = pickle.loads(data)
        return msg

    def close(self) -> None:
        self.socket.close(0)


class Outbox:
    """PUSH sockets to peers, created on first use and cached."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self._ctx = ctx
        self._peers: dict[str, tuple[zmq.Socket[Any], threading.Lock]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _peer(self, address: str) -> tuple[zmq.Socket[Any], threading.Lock]:
        peer = self._peers.get(address)
        if peer is None:
            with self._lock:
                peer = self._peers.get(address)
                if peer is None:
                    if self._closed:
                        raise ConnectionError("the outbox is closed (the runtime shut down)")
                    sock = self._ctx.socket(zmq.PUSH)
                    sock.setsockopt(zmq.SNDHWM, 0)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.IMMEDIATE, 0)
                    sock.connect(address)
                    peer = (sock, threading.Lock())
                    self._peers[address] = peer
        return peer

    def connect(self, address: str) -> None:
        self._peer(address)

    def send(self, address: str, msg: tuple[Any, ...]) -> None:
        data = pickle.dumps(msg, protocol=5)
        sock, lock = self._peer(address)
        with lock:
            sock.send(data, copy=True)

    def forget(self, address: str) -> None:
        """Close the socket to a peer that is gone."""
        with self._lock:
            peer = self._peers.pop(address, None)
        if peer is not None:
            with peer[1]:
                peer[0].close(0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            peers = list(self._peers.values())
            self._peers.clear()
        for sock, lock in peers:
            with lock:
                sock.close(0)
