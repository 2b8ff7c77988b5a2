"""Moving objects between nodes: each node serves its objects, readers' nodes pull them.

A node that needs an object held by another node allocates room for it in its own store and
hands the job to its :class:`Puller`. The puller asks the holder's :class:`TransferServer` to
pin the object, fetches it in chunks (a few in flight, written straight into the arena) and
unpins it; the node then seals the copy and answers the readers that wait for it, who read
it zero-copy like any local object. Every frame both ways is signed and verified
(:mod:`trainkit.runtime._auth`) before it is used; chunk payloads are raw bytes, never
unpickled.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from typing import Any

import zmq

from trainkit.runtime._auth import AuthError
from trainkit.runtime._auth import FrameAuth
from trainkit.runtime._object_store import SharedMemoryStore
from trainkit.runtime._protocol import Msg
from trainkit.runtime._transport import Outbox
from trainkit.runtime._transport import port_of

CHUNK_BYTES = 8 << 20
WINDOW = 4  # chunks in flight per pull
REPLY_TIMEOUT_S = 30.0
# A pin held for a puller that has sent nothing for this long is dropped (it died).
STALE_PIN_S = 120.0
_REQUEST_LIMIT = 1 << 16


class TransferServer(threading.Thread):
    """Serves this node's sealed objects to other nodes' pullers (ROUTER, signed frames)."""

    def __init__(self, ctx: zmq.Context[Any], host: str, secret: bytes,
                 store: SharedMemoryStore, store_lock: threading.Lock) -> None:
        super().__init__(name="trainkit-transfer", daemon=True)
        # Its own signer and replay state: frames on different sockets are not ordered.
        self.auth = FrameAuth(secret)
        self.store = store
        self.store_lock = store_lock
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, _REQUEST_LIMIT)
        self.sock.bind(f"tcp://{host}:*")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = port_of(self.address)
        # (peer identity, object id) -> (offset, size, pins, last request time)
        self.pins: dict[tuple[bytes, bytes], list[Any]] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        with self.store_lock:
            for (_, oid), pin in self.pins.items():
                for _ in range(pin[2]):
                    self._unpin(oid)
        self.pins.clear()
        self.sock.close(0)

    def run(self) -> None:
        last_sweep = time.monotonic()
        while not self._halt.is_set():
            if self.sock.poll(200):
                frames = self.sock.recv_multipart(copy=False)
                try:
                    self.handle(frames)
                except Exception as e:  # a bad request must not stop the server
                    self._reply(frames[0].bytes, pickle.dumps(("err", repr(e))))
            now = time.monotonic()
            if now - last_sweep > 10:
                last_sweep = now
                self._sweep(now)

    def handle(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 4:
            self.auth.rejected["malformed"] += 1
            return
        ident = frames[0].bytes
        try:
            payload = self.auth.verify(frames[1:], self.port)
        except AuthError:
            return  # dropped and counted
        request = pickle.loads(payload)
        kind, oid = request[0], request[1]
        key = (ident, oid)
        if kind == "pin":
            with self.store_lock:
                offset, size = self.store.pin(oid)
            pin = self.pins.setdefault(key, [offset, size, 0, 0.0])
            pin[2] += 1
            pin[3] = time.monotonic()
            self._reply(ident, pickle.dumps(("ok", offset, size)))
        elif kind == "chunk":
            start, length = request[2], request[3]
            found = self.pins.get(key)
            if found is None or start < 0 or length < 0 or start + length > found[1]:
                self._reply(ident, pickle.dumps(("err", "chunk outside a pinned object")))
                return
            found[3] = time.monotonic()
            offset = found[0] + start
            self._reply(ident, self.store._arena[offset:offset + length])
        elif kind == "unpin":
            held = self.pins.get(key)
            if held is not None:
                held[2] -= 1
                if held[2] <= 0:
                    del self.pins[key]
                with self.store_lock:
                    self._unpin(oid)
            self._reply(ident, pickle.dumps(("ok",)))

    def _reply(self, ident: bytes, payload: bytes | memoryview) -> None:
        self.sock.send_multipart([ident, *self.auth.sign(payload, 0)], copy=False)

    def _unpin(self, oid: bytes) -> None:
        try:
            self.store.unpin(oid)
        except (KeyError, ValueError):
            pass

    def _sweep(self, now: float) -> None:
        for key, pin in list(self.pins.items()):
            if now - pin[3] > STALE_PIN_S:
                del self.pins[key]
                with self.store_lock:
                    for _ in range(pin[2]):
                        self._unpin(key[1])


class PullError(Exception):
    pass


class Puller:
    """Fetches objects from other nodes into this node's store, a few jobs at a time.

    ``submit`` queues a job; when it ends, the node's inbox gets
    ``(STORE_PULLED, oid, None | error text)``.
    """

    def __init__(self, ctx: zmq.Context[Any], secret: bytes,
                 store: SharedMemoryStore, out: Outbox, node_addr: str,
                 threads: int = 2) -> None:
        self.ctx = ctx
        self.secret = secret
        self.store = store
        self.out = out
        self.node_addr = node_addr
        self.jobs: queue.Queue[tuple[bytes, str, int, int] | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._run, name="trainkit-pull", daemon=True)
                        for _ in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout=5)

    def submit(self, oid: bytes, source: str, offset: int, size: int) -> None:
        self.jobs.put((oid, source, offset, size))

    def _run(self) -> None:
        auth = FrameAuth(self.secret)  # one per thread: each has its own sockets
        sockets: dict[str, zmq.Socket[Any]] = {}
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                oid, source, offset, size = job
                sock = sockets.get(source)
                if sock is None:
                    sock = sockets[source] = self._connect(source)
                error: str | None = None
                try:
                    self._pull(auth, sock, source, oid, offset, size)
                except (PullError, AuthError, zmq.ZMQError) as e:
                    error = str(e) or type(e).__name__
                    sockets.pop(source).close(0)  # drop replies that may still come
                try:
                    self.out.send(self.node_addr, (Msg.STORE_PULLED, oid, error))
                except Exception:
                    return  # shutting down
        finally:
            for s in sockets.values():
                s.close(0)

    def _connect(self, source: str) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, CHUNK_BYTES + (1 << 16))
        sock.connect(source)
        return sock

    @staticmethod
    def _request(auth: FrameAuth, sock: zmq.Socket[Any], source: str,
                 request: tuple[Any, ...]) -> None:
        sock.send_multipart(auth.sign(pickle.dumps(request), port_of(source)), copy=True)

    @staticmethod
    def _recv(auth: FrameAuth, sock: zmq.Socket[Any], source: str) -> memoryview:
        if not sock.poll(int(REPLY_TIMEOUT_S * 1000)):
            raise PullError(f"no answer from {source} within {REPLY_TIMEOUT_S:.0f} s")
        return auth.verify(sock.recv_multipart(copy=False), 0)

    def _answer(self, auth: FrameAuth, sock: zmq.Socket[Any], source: str
                ) -> tuple[Any, ...]:
        answer: tuple[Any, ...] = pickle.loads(self._recv(auth, sock, source))
        if answer[0] != "ok":
            raise PullError(f"{source} refused: {answer[1]}")
        return answer

    def _pull(self, auth: FrameAuth, sock: zmq.Socket[Any], source: str, oid: bytes,
              offset: int, size: int) -> None:
        self._request(auth, sock, source, ("pin", oid))
        _, _, remote_size = self._answer(auth, sock, source)
        if remote_size != size:
            self._request(auth, sock, source, ("unpin", oid))
            self._answer(auth, sock, source)
            raise PullError(f"size mismatch ({remote_size} there, {size} expected)")
        arena = self.store._arena
        starts = list(range(0, size, CHUNK_BYTES))
        sent = 0
        for i, start in enumerate(starts):
            while sent < len(starts) and sent < i + WINDOW:
                s = starts[sent]
                self._request(auth, sock, source,
                              ("chunk", oid, s, min(CHUNK_BYTES, size - s)))
                sent += 1
            data = self._recv(auth, sock, source)
            length = min(CHUNK_BYTES, size - start)
            if len(data) != length:
                raise PullError(f"a chunk of {len(data)} bytes came, {length} expected")
            arena[offset + start:offset + start + length] = data
        self._request(auth, sock, source, ("unpin", oid))
        self._answer(auth, sock, source)
