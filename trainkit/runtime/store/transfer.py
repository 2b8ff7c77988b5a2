"""Moving objects between nodes: each node serves its objects, readers' nodes pull them.

A node that needs an object held by another node allocates room for it in its own store and
hands the job to its :class:`Puller`. The puller asks the holder's :class:`TransferServer`
for the object over a plain TCP connection; the server waits until the object is sealed (a
reader can learn of an object before its writer's seal reaches this node), pins it,
streams it in signed chunks from the store's view of it (an arena range or a fallback
file) and unpins it. Chunks are received straight into the copy's place (no intermediate
buffer) and verified there before the copy is sealed, so a tampered chunk is never read; the
node then answers the readers waiting for it, who read it zero-copy like any local object.

Wire format, both ways: ``u32 length | header | mac | payload``, signed as in
:mod:`trainkit.runtime.wire.auth`. Requests are small pickles ``("get", object id)``, verified
before they are unpickled; a request longer than 64 KiB, one that fails verification, or an
authentic one that is not a request (counted as ``bad_message``) closes the connection.
Chunk payloads are raw bytes.

Idle peers: a connection stays unauthenticated until its first request verifies. It has
``AUTH_TIMEOUT_S`` for that, and at most ``MAX_UNAUTHENTICATED`` connections wait at once: a
new one beyond that pushes out the oldest waiting one, never one that has authenticated. A
puller whose connection is refused, reset or closed under it tries again (``PULL_RETRY_S``)
before it reports the object lost.
"""

from __future__ import annotations

import pickle
import queue
import socket
import struct
import threading
import time

from trainkit.runtime.store.object_store import SharedMemoryStore
from trainkit.runtime.wire.auth import FRAME_OVERHEAD_BYTES
from trainkit.runtime.wire.auth import MAC_BYTES
from trainkit.runtime.wire.auth import AuthError
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.transport import Outbox
from trainkit.runtime.wire.transport import port_of

CHUNK_BYTES = 8 << 20
REQUEST_LIMIT = 1 << 16
IO_TIMEOUT_S = 30.0
# How long a request for an object still being written waits for its seal.
SEAL_WAIT_S = 60.0
AUTH_TIMEOUT_S = 5.0
MAX_UNAUTHENTICATED = 64
LISTEN_BACKLOG = 1024
# Waits before each new try of a pull whose connection failed: about 3 s in all.
PULL_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_LEN = struct.Struct("!I")
_HEADER_BYTES = FRAME_OVERHEAD_BYTES - MAC_BYTES


class TransferError(Exception):
    pass


class _ConnectionClosed(TransferError):
    """The peer closed the connection: worth another try on a new one."""


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise _ConnectionClosed("the connection closed mid-message")
        view = view[n:]


def _send(sock: socket.socket, auth: FrameAuth, payload: bytes | memoryview, port: int) -> None:
    header, _, mac = auth.sign(payload, port)
    sock.sendall(_LEN.pack(len(header) + len(mac) + len(payload)) + bytes(header) + bytes(mac))
    sock.sendall(payload)


def _recv(sock: socket.socket, auth: FrameAuth, port: int, limit: int,
          into: memoryview | None = None, lock: threading.Lock | None = None) -> memoryview:
    """One signed message: verified, or AuthError / TransferError. ``into`` receives the
    payload in place (it must have exactly the payload's size)."""
    head = bytearray(_LEN.size + _HEADER_BYTES + MAC_BYTES)
    _recv_exact(sock, memoryview(head)[:_LEN.size])
    (length,) = _LEN.unpack_from(head)
    if length < FRAME_OVERHEAD_BYTES or length - FRAME_OVERHEAD_BYTES > limit:
        auth.count("oversize" if length >= FRAME_OVERHEAD_BYTES else "malformed")
        raise TransferError(f"a {length}-byte message is over the limit")
    _recv_exact(sock, memoryview(head)[_LEN.size:])
    size = length - FRAME_OVERHEAD_BYTES
    if into is None:
        into = memoryview(bytearray(size))
    elif len(into) != size:
        raise TransferError(f"a chunk of {size} bytes came, {len(into)} expected")
    _recv_exact(sock, into)
    header = bytes(head[_LEN.size:_LEN.size + _HEADER_BYTES])
    mac = bytes(head[_LEN.size + _HEADER_BYTES:])
    if lock is None:
        return auth.verify([header, into, mac], port)
    with lock:
        return auth.verify([header, into, mac], port)


def _request_oid(payload: memoryview) -> bytes | None:
    """The object id of an authentic ``("get", oid)`` request; None for anything else."""
    try:
        request = pickle.loads(payload)
    except Exception:
        return None
    if type(request) is tuple and len(request) == 2 and request[0] == "get" \
            and type(request[1]) is bytes:
        return request[1]
    return None


class TransferServer(threading.Thread):
    """Serves this node's sealed objects to other nodes' pullers, one thread per peer.

    The accepting thread also enforces the limits on unauthenticated connections (module
    docstring): it shuts a connection down, and the connection's own thread closes it.
    """

    def __init__(self, host: str, secret: bytes, store: SharedMemoryStore,
                 store_lock: threading.Condition) -> None:
        super().__init__(name="trainkit-transfer", daemon=True)
        self.secret = secret
        self.store = store
        self.store_lock = store_lock
        self.listener = socket.create_server((host, 0), backlog=LISTEN_BACKLOG)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.address = f"tcp://{host}:{self.port}"
        # One verifier for every connection, so a frame replayed on a new connection is
        # caught too (each puller connection signs with its own sender id, in order).
        self.auth = FrameAuth(secret)
        self._auth_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        # Not yet authenticated, oldest first: connection -> when it was accepted.
        self._waiting: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        with self._lock:
            for conn in self._connections:
                conn.close()
        self.listener.close()

    def run(self) -> None:
        while not self._halt.is_set():
            self._expire_waiting(time.monotonic())
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                while len(self._waiting) >= MAX_UNAUTHENTICATED:
                    oldest = next(iter(self._waiting))
                    del self._waiting[oldest]
                    _hang_up(oldest)
                self._waiting[conn] = time.monotonic()
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="trainkit-transfer-conn",
                             daemon=True).start()

    def _expire_waiting(self, now: float) -> None:
        with self._lock:
            while self._waiting:
                conn, since = next(iter(self._waiting.items()))
                if now - since < AUTH_TIMEOUT_S:
                    return
                del self._waiting[conn]
                _hang_up(conn)

    def _serve(self, conn: socket.socket) -> None:
        auth = self.auth
        conn.settimeout(IO_TIMEOUT_S)
        authenticated = False
        try:
            while not self._halt.is_set():
                try:
                    payload = _recv(conn, auth, self.port, REQUEST_LIMIT, lock=self._auth_lock)
                except (AuthError, TransferError, OSError):
                    return
                oid = _request_oid(payload)
                if oid is None:
                    auth.count("bad_message")
                    return
                if not authenticated:
                    with self._lock:
                        if self._waiting.pop(conn, None) is None:
                            return  # pushed out, or out of time, as its request came
                    authenticated = True
                try:
                    self._stream(conn, auth, oid)
                except OSError:
                    return  # the puller went away
        finally:
            with self._lock:
                self._waiting.pop(conn, None)
                self._connections.discard(conn)
            conn.close()

    def _stream(self, conn: socket.socket, auth: FrameAuth, oid: bytes) -> None:
        store = self.store
        try:
            with self.store_lock:
                # Its seal may still be on its way (it travels on the writer's connection,
                # the reader's request on another): wait for it rather than fail the pull.
                if not self.store_lock.wait_for(lambda: store.is_sealed(oid), SEAL_WAIT_S):
                    raise TimeoutError(f"it was still being written after {SEAL_WAIT_S:.0f} s")
                _, size = store.pin(oid)
                view = store.view(oid)
        except Exception as e:
            _send(conn, auth, pickle.dumps(("err", str(e) or type(e).__name__)), 0)
            return
        try:
            with view:
                _send(conn, auth, pickle.dumps(("ok", size)), 0)
                for start in range(0, size, CHUNK_BYTES):
                    _send(conn, auth, view[start:min(size, start + CHUNK_BYTES)], 0)
        finally:
            with self.store_lock:
                try:
                    self.store.unpin(oid)
                except (KeyError, ValueError):
                    pass


def _hang_up(conn: socket.socket) -> None:
    """Wake the thread blocked reading ``conn``: it sees the end and closes it."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Puller:
    """Fetches objects from other nodes into this node's store, a few jobs at a time.

    ``submit`` queues a job; when it ends, the node's inbox gets
    ``(STORE_PULLED, oid, None | error text)``. A job whose connection is refused, reset or
    closed (a cached connection the server timed out, or one it pushed out while flooded by
    unauthenticated peers) is tried again on a new connection, after each wait of
    ``PULL_RETRY_S``; an answer from the server ("no such object", a bad signature) is final.
    """

    def __init__(self, secret: bytes, store: SharedMemoryStore, out: Outbox, node_addr: str,
                 threads: int = 2, store_lock: threading.Condition | None = None) -> None:
        self.secret = secret
        self.store = store
        self.store_lock = store_lock or threading.Condition()
        self.out = out
        self.node_addr = node_addr
        self.jobs: queue.Queue[tuple[bytes, str, int] | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._run, name="trainkit-pull", daemon=True)
                        for _ in range(threads)]
        self._halt = threading.Event()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self._halt.set()
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout=5)

    def submit(self, oid: bytes, source: str, size: int) -> None:
        """Fetch ``oid`` (allocated in this store, not sealed yet) from ``source``."""
        self.jobs.put((oid, source, size))

    def _run(self) -> None:
        conns: dict[str, tuple[socket.socket, FrameAuth]] = {}
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                oid, source, size = job
                error = self._pull_with_retries(conns, oid, source, size)
                try:
                    self.out.send(self.node_addr, (Msg.STORE_PULLED, oid, error))
                except Exception:
                    return  # shutting down
        finally:
            for conn, _ in conns.values():
                conn.close()

    def _pull_with_retries(self, conns: dict[str, tuple[socket.socket, FrameAuth]],
                           oid: bytes, source: str, size: int) -> str | None:
        """Pull one object into place; None when done, else why it failed."""
        waits = iter(PULL_RETRY_S)
        while True:
            try:
                if source not in conns:
                    host, port = source[len("tcp://"):].rsplit(":", 1)
                    conn = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[source] = (conn, FrameAuth(self.secret))
                conn, auth = conns[source]
                self._pull(conn, auth, source, oid, size)
                return None
            except (TransferError, AuthError, OSError) as e:
                dropped = conns.pop(source, None)
                if dropped is not None:
                    dropped[0].close()
                error = str(e) or type(e).__name__
                if not isinstance(e, (_ConnectionClosed, ConnectionError)):
                    return error
                wait = next(waits, None)
                if wait is None:
                    return f"{error} (tried {len(PULL_RETRY_S) + 1} times)"
                if self._halt.wait(wait):
                    return error

    def _pull(self, conn: socket.socket, auth: FrameAuth, source: str, oid: bytes,
              size: int) -> None:
        _send(conn, auth, pickle.dumps(("get", oid)), port_of(source))
        try:
            answer = pickle.loads(_recv(conn, auth, 0, REQUEST_LIMIT))
            ok, detail = answer
        except (AuthError, TransferError, OSError):
            raise
        except Exception:
            raise TransferError(f"{source} answered with something that is not an answer") \
                from None
        if ok != "ok":
            raise TransferError(f"{source} could not send it: {detail}")
        if detail != size:
            raise TransferError(f"size mismatch ({detail} there, {size} expected)")
        # The copy is CREATED until the node seals it: only this job writes it, and the node
        # frees it only after this job reports (STORE_PULLED), so the view stays valid.
        with self.store_lock:
            dest = self.store.view(oid)
        with dest:
            for start in range(0, size, CHUNK_BYTES):
                _recv(conn, auth, 0, CHUNK_BYTES, into=dest[start:min(size, start + CHUNK_BYTES)])
