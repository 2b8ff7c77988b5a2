"""ZeroMQ messaging: one PULL inbox per endpoint, one PUSH socket per peer.

Sending is ``send(peer_address, message)``; a peer is addressed by its inbox. Sockets are
created with an unlimited high-water mark (a ROUTER past its HWM silently drops
messages, and a PUSH past it blocks) and zero linger, so neither a slow peer nor a dead
one can make a sender hang or lose a message it still can deliver.

Embedded mode binds ipc:// names in the abstract namespace (``ipc://@<session>/<name>``: no
socket file, so a killed process leaves nothing behind) that only processes of this user may
connect to (``ZMQ_IPC_FILTER_UID``), and sends bare pickles. Cluster mode binds tcp:// on the
node's address and signs every frame (:class:`~trainkit.runtime.wire.auth.FrameAuth`): an inbox
verifies a frame before a single byte of it is unpickled, drops what fails and counts it
(``rejected``), and refuses frames over the size limit without allocating them
(``ZMQ_MAXMSGSIZE``). An authentic frame whose payload is not a ``(kind, ...)`` tuple is
dropped too and counted as ``bad_message``; so is one its reader cannot dispatch (``drop``).
A peer that connects and never completes the ZeroMQ handshake is disconnected after
``HANDSHAKE_S`` (idle raw connections cost a file descriptor each until then, nothing else).

Threading: an inbox is read by one thread. ``Outbox.send`` may be called from any
thread; each peer socket is guarded by its own lock (frames to one peer are signed and
sent under it, so their counters arrive in order).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from typing import Any

import zmq

from trainkit.runtime.wire.auth import FRAME_OVERHEAD_BYTES
from trainkit.runtime.wire.auth import AuthError
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.protocol import CHECK_WIRE
from trainkit.runtime.wire.protocol import check

# A tcp peer that has not completed the ZMTP handshake by then is disconnected (libzmq's
# default is 30 s). Loopback and LAN handshakes take milliseconds, done by zmq's I/O thread.
HANDSHAKE_S = 10.0


def make_context() -> zmq.Context[Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


def port_of(address: str) -> int:
    """The port of a tcp:// address; 0 for ipc:// ones."""
    if not address.startswith("tcp://"):
        return 0
    return int(address.rsplit(":", 1)[1])


def endpoint(session: str, name: str, host: str | None) -> str:
    """Where to bind an inbox: an abstract ipc name of ``session`` in embedded mode, else
    a free tcp port on ``host``."""
    return f"ipc://@{session}/{name}" if host is None else f"tcp://{host}:*"


class Inbox:
    """A bound PULL socket. Read by exactly one thread.

    ``address`` is what peers connect to (for ``tcp://host:*``, the port the OS picked).
    """

    def __init__(self, ctx: zmq.Context[Any], address: str,
                 auth: FrameAuth | None = None) -> None:
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.auth = auth
        if auth is not None:
            self.socket.setsockopt(zmq.MAXMSGSIZE, auth.max_frame_bytes)
            self.socket.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))
        if address.startswith("ipc://"):
            # An abstract socket has no file permissions: the kernel's peer credentials
            # decide instead (libzmq closes a connection from another uid at once).
            self.socket.setsockopt(zmq.IPC_FILTER_UID, os.getuid())
        self.socket.bind(address)
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = port_of(self.address)
        self._dropped: dict[str, int] = {}  # embedded mode: there is no auth to count in
        self._logged: set[str] = set()

    def _decode(self, flags: int) -> tuple[Any, ...] | None:
        if self.auth is None:
            msg: tuple[Any, ...] = pickle.loads(self.socket.recv(flags, copy=True))
            return msg
        frames = self.socket.recv_multipart(flags, copy=False)
        try:
            payload = self.auth.verify(frames, self.port)
        except AuthError:
            return None  # dropped and counted in auth.rejected
        # Authentic, so unpickling it is safe; what it unpickles to is still unchecked.
        try:
            msg = pickle.loads(payload)
        except Exception as e:
            self.drop("bad_message", f"a payload that does not unpickle ({type(e).__name__})")
            return None
        if type(msg) is not tuple or not msg or type(msg[0]) is not int:
            self.drop("bad_message", f"a payload that unpickles to a {type(msg).__name__}, "
                      "not a (kind, ...) tuple")
            return None
        return msg

    def drop(self, reason: str, what: str) -> None:
        """Count a received message that is dropped for ``reason`` (e.g. "bad_message": its
        kind or fields are not ones the reader knows). The first one of each reason is
        logged to stderr; later ones are only counted."""
        if self.auth is not None:
            self.auth.count(reason)
        else:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
        if reason not in self._logged:
            self._logged.add(reason)
            print(f"trainkit: dropped {what} received on {self.address} ({reason}); further "
                  "ones are counted, not logged", file=sys.stderr, flush=True)

    def recv(self) -> tuple[Any, ...]:
        while True:
            msg = self._decode(0)
            if msg is not None:
                return msg

    def recv_nowait(self) -> tuple[Any, ...] | None:
        """The next message, or None if none is waiting (a rejected frame is skipped)."""
        while True:
            try:
                msg = self._decode(zmq.NOBLOCK)
            except zmq.Again:
                return None
            if msg is not None:
                return msg

    @property
    def rejected(self) -> dict[str, int]:
        return dict(self.auth.rejected) if self.auth is not None else dict(self._dropped)

    def close(self) -> None:
        self.socket.close(0)


class Outbox:
    """PUSH sockets to peers, created on first use and cached."""

    def __init__(self, ctx: zmq.Context[Any], auth: FrameAuth | None = None) -> None:
        self._ctx = ctx
        self._auth = auth
        self._peers: dict[str, tuple[zmq.Socket[Any], threading.Lock, int]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _peer(self, address: str) -> tuple[zmq.Socket[Any], threading.Lock, int]:
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
                    peer = (sock, threading.Lock(), port_of(address))
                    self._peers[address] = peer
        return peer

    def connect(self, address: str) -> None:
        self._peer(address)

    def send(self, address: str, msg: tuple[Any, ...]) -> None:
        if CHECK_WIRE:
            check(msg)
        data = pickle.dumps(msg, protocol=5)
        sock, lock, port = self._peer(address)
        auth = self._auth
        if auth is None:
            with lock:
                sock.send(data, copy=True)
            return
        if len(data) + FRAME_OVERHEAD_BYTES > auth.max_frame_bytes:
            raise ValueError(
                f"a {len(data)}-byte message to {address} is over the cluster's frame limit "
                f"({auth.max_frame_bytes} bytes); pass large values through the object store "
                "(put) instead of inside a function or its arguments")
        with lock:
            sock.send_multipart(auth.sign(data, port), copy=True)

    def forget(self, address: str) -> None:
        """Close the socket to a peer that is gone."""
        with self._lock:
            peer = self._peers.pop(address, None)
        if peer is not None:
            with peer[1]:
                peer[0].close(0)

    def flush(self, timeout_s: float) -> None:
        """Close every peer socket, waiting up to ``timeout_s`` for what is queued to go
        (for a process about to exit: its last replies must not die with it)."""
        with self._lock:
            self._closed = True
            peers = list(self._peers.values())
            self._peers.clear()
        for sock, lock, _port in peers:
            with lock:
                sock.close(int(timeout_s * 1000))

    def close(self) -> None:
        """Close every peer socket at once, dropping what is still queued."""
        self.flush(0)
