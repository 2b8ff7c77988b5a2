"""Synchronous store requests from a process to the node service on its own machine.

A ``put`` of a large value asks the node for room in the arena (``STORE_ALLOC``) and a
``get`` pins the object (``STORE_PIN``): one round trip each, on the caller's critical path.
Over zmq such a round trip crosses five threads (the caller, zmq's I/O thread on each side,
the node's loop, the caller's I/O thread) and, once the processes have gone idle, costs
~0.9 ms on this 2-core machine; over a unix socket read by the calling thread itself it
costs ~0.4 ms (a bare unix-socket round trip between idle processes: ~0.15 ms). So store
requests travel here: a ``SOCK_SEQPACKET`` socket in the abstract namespace
(:func:`store_socket_address`, ``@name``: no file, so nothing is left behind when every
process is killed; the node checks each peer's uid), one connection per calling thread,
pickled tuples as in the rest of the runtime. Everything else stays on zmq.

The node treats a connection like any other reply address (``local:<n>``), so a reply
it defers (a pin waiting for a seal, or for a copy from another node) still reaches the
thread that asked.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
import weakref
from typing import Any

from trainkit.runtime.wire.protocol import CHECK_WIRE
from trainkit.runtime.wire.protocol import check

__all__ = ["LOCAL_PREFIX", "LocalChannel", "LocalChannelServer", "store_socket_address",
           "store_socket_path"]

LOCAL_PREFIX = "local:"
_MAX_MESSAGE = 1 << 16
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def store_socket_path(session_dir: str) -> str:
    """A socket file in ``session_dir`` (a folder the caller owns and removes)."""
    return os.path.join(session_dir, "store.sock")


def store_socket_address(session: str) -> str:
    """Where the node of session ``session`` listens: an abstract socket, ``@<session>/...``.

    An abstract socket has no file: the kernel drops its name with the last process that
    holds it, so a killed node leaves nothing in /tmp.
    """
    return f"@{session}/store.sock"


def _sockaddr(path: str) -> str:
    """``@name`` (abstract namespace) -> the leading-NUL form the socket calls take."""
    return "\0" + path[1:] if path.startswith("@") else path


class LocalChannelServer:
    """The node's side: a listening socket and its connections, served from the node's
    poll loop (register ``fileno`` and every fd :meth:`accept` returns)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(_sockaddr(path))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._conns: dict[int, tuple[int, socket.socket]] = {}  # fd -> (id, socket)
        self._by_id: dict[int, socket.socket] = {}
        self._next_id = 0

    def fileno(self) -> int:
        return self._listener.fileno()

    def owns(self, fd: int) -> bool:
        return fd in self._conns

    def fds(self) -> list[int]:
        """Every open connection's fd."""
        return list(self._conns)

    def accept(self) -> int | None:
        """Accept a connection from a process of this user; its fd, or None."""
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        if _PEERCRED.unpack(creds)[1] != os.getuid():
            conn.close()
            return None
        self._next_id += 1
        self._conns[conn.fileno()] = (self._next_id, conn)
        self._by_id[self._next_id] = conn
        return conn.fileno()

    def read(self, fd: int) -> tuple[str, tuple[Any, ...]] | None:
        """The connection's reply address and its next message (``()`` if none is there
        yet), or None once the peer has gone: the fd is closed then, so unregister it
        from the poller first."""
        conn_id, conn = self._conns[fd]
        try:
            data = conn.recv(_MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return f"{LOCAL_PREFIX}{conn_id}", ()
        except OSError:
            data = b""
        if not data:
            del self._conns[fd], self._by_id[conn_id]
            conn.close()
            return None
        return f"{LOCAL_PREFIX}{conn_id}", pickle.loads(data)

    def send(self, addr: str, msg: tuple[Any, ...]) -> None:
        """Send ``msg`` to the connection named ``addr``; dropped if it has gone."""
        conn = self._by_id.get(int(addr[len(LOCAL_PREFIX):]))
        if conn is None:
            return
        try:
            conn.send(pickle.dumps(msg, protocol=5), socket.MSG_DONTWAIT)
        except OSError:
            pass  # the caller timed out or exited; it no longer waits for this

    def close(self) -> None:
        for _, conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._by_id.clear()
        self._listener.close()


class LocalChannel:
    """A process's side: ``request`` sends and waits for the reply on the calling thread.

    Each thread has its own connection (a pin that waits for a copy from another node does
    not hold up another thread's put); a forked child opens its own.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every live thread's, for close(); a finished thread's goes with its thread-local.
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._closed = False

    def close(self) -> None:
        """Close every thread's connection; requests after this raise OSError."""
        with self._lock:
            self._closed = True
            for sock in list(self._sockets):
                sock.close()
            self._sockets.clear()

    def _socket(self) -> socket.socket:
        local = self._local
        sock: socket.socket | None = getattr(local, "sock", None)
        if sock is not None and local.pid == os.getpid():
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(_sockaddr(self.path))
        except OSError:
            sock.close()
            raise
        with self._lock:
            if self._closed:
                sock.close()
                raise ConnectionAbortedError(f"the store connection to {self.path} is closed")
            self._sockets.add(sock)
        local.sock, local.pid = sock, os.getpid()
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            self._local.sock = None
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def send(self, msg: tuple[Any, ...]) -> None:
        """Send without waiting for an answer."""
        if CHECK_WIRE:
            check(msg)
        try:
            self._socket().send(pickle.dumps(msg, protocol=5))
        except OSError:
            self._drop()
            raise

    def request(self, kind: int, req_id: int, fields: tuple[Any, ...],
                timeout: float | None) -> tuple[bool, Any] | None:
        """Send ``(kind, req_id, <reply address>, *fields)``; return the reply's
        ``(ok, payload)``, or None if no reply came within ``timeout`` seconds.

        Raises:
            OSError: the node cannot be reached or closed the connection.
        """
        if CHECK_WIRE:
            check((kind, req_id, None, *fields))
        sock = self._socket()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock.send(pickle.dumps((kind, req_id, None, *fields), protocol=5))
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._drop()  # a late reply must not be read as the next one's
                    return None
                sock.settimeout(left)
                try:
                    data = sock.recv(_MAX_MESSAGE)
                except TimeoutError:
                    continue
                if not data:
                    raise ConnectionResetError(f"the node service closed {self.path}")
                reply = pickle.loads(data)
                if reply[1] == req_id:
                    return reply[2], reply[3]
        except OSError:
            self._drop()
            raise
