"""The unix-socket channel that carries store requests to the node on the same machine."""

from __future__ import annotations

import os
import pickle
import select
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainkit as tk
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.core import context as _context
from trainkit.runtime.wire.local_channel import LOCAL_PREFIX
from trainkit.runtime.wire.local_channel import LocalChannel
from trainkit.runtime.wire.local_channel import LocalChannelServer
from trainkit.runtime.wire.local_channel import store_socket_path
from trainkit.runtime.wire.protocol import Msg


class _Node:
    """A node loop in a thread: answers with ``handle(addr, msg)``; records what it got."""

    def __init__(self, path: str, handle: Callable[[LocalChannelServer, str, tuple[Any, ...]],
                                                   None]) -> None:
        self.server = LocalChannelServer(path)
        self.handle = handle
        self.got: list[tuple[str, tuple[Any, ...]]] = []
        self.closed: list[int] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self.thread = threading.Thread(target=self._loop, name="test-node")
        self.thread.start()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.server.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            for fd, _ in poller.poll(1000):
                if fd == self._wake_r:
                    os.read(fd, 1)
                elif fd == self.server.fileno():
                    conn = self.server.accept()
                    if conn is not None:
                        poller.register(conn, select.POLLIN)
                elif self.server.owns(fd):
                    got = self.server.read(fd)
                    if got is None:
                        poller.unregister(fd)
                        self.closed.append(fd)
                    elif got[1]:
                        self.got.append(got)
                        self.handle(self.server, *got)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self.thread.join(5)
        self.server.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., _Node]]:
    nodes: list[_Node] = []

    def make(handle: Callable[..., None]) -> _Node:
        nodes.append(_Node(store_socket_path(str(tmp_path)), handle))
        return nodes[-1]

    yield make
    for n in nodes:
        n.close()


def _echo(server: LocalChannelServer, addr: str, msg: tuple[Any, ...]) -> None:
    if len(msg) > 2 and msg[2] is None:  # a request: reply with its fields
        server.send(addr, (Msg.REPLY, msg[1], True, msg[3:]))


def test_requests_are_answered_on_the_calling_thread(node_factory):
    node = node_factory(_echo)
    channel = LocalChannel(node.server.path)
    try:
        assert channel.request(Msg.STORE_ALLOC, 7, (b"id", 4096, "me"), timeout=5) == \
            (True, (b"id", 4096, "me"))
        channel.send((Msg.STORE_SEAL, b"id"))
        # one connection per thread: another thread gets its own reply address
        other: list[Any] = []
        t = threading.Thread(target=lambda: other.append(
            channel.request(Msg.STORE_PIN, 8, ("x",), timeout=5)))
        t.start()
        t.join(10)
        assert other == [(True, ("x",))]
        deadline = time.monotonic() + 5
        while len(node.got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        addrs = [addr for addr, _ in node.got]
        assert [m[0] for _, m in node.got] == [Msg.STORE_ALLOC, Msg.STORE_SEAL, Msg.STORE_PIN]
        assert addrs[0] == addrs[1] != addrs[2]
        assert all(a.startswith(LOCAL_PREFIX) for a in addrs)
    finally:
        channel.close()


def test_a_timed_out_request_drops_its_connection_and_stale_replies_are_skipped(node_factory):
    unanswered: list[str] = []

    def handle(server: LocalChannelServer, addr: str, msg: tuple[Any, ...]) -> None:
        if msg[1] == 1:
            unanswered.append(addr)  # no answer in time
            return
        server.send(unanswered[0], (Msg.REPLY, 1, True, "late"))  # its caller gave up
        server.send(addr, (Msg.REPLY, 99, True, "stale"))  # not this request's
        server.send(addr, (Msg.REPLY, msg[1], True, "fresh"))

    node = node_factory(handle)
    channel = LocalChannel(node.server.path)
    try:
        t = time.monotonic()
        assert channel.request(Msg.STORE_PIN, 1, (b"oid",), timeout=0.3) is None
        assert 0.25 < time.monotonic() - t < 3
        assert channel.request(Msg.STORE_PIN, 2, (b"oid",), timeout=5) == (True, "fresh")
        deadline = time.monotonic() + 5
        while not node.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(node.closed) == 1  # the timed-out connection, closed by the client
        assert node.got[0][0] != node.got[1][0]
    finally:
        channel.close()


def test_a_node_that_goes_away_fails_the_waiting_request(node_factory):
    node = node_factory(lambda *_: None)  # never answers
    channel = LocalChannel(node.server.path)
    threading.Timer(0.3, node.close).start()
    try:
        with pytest.raises(OSError):
            channel.request(Msg.STORE_PIN, 1, (b"oid",), timeout=30)
        with pytest.raises(OSError):  # and the next one cannot connect
            channel.request(Msg.STORE_PIN, 2, (b"oid",), timeout=30)
    finally:
        node.thread.join(5)
        channel.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_users_connection_is_refused():
    import shutil
    import socket
    import tempfile

    folder = tempfile.mkdtemp(prefix="trainkit-test-")  # /tmp: a path the other user can reach
    os.chmod(folder, 0o755)
    server = LocalChannelServer(store_socket_path(folder))
    os.chmod(server.path, 0o777)  # the file system lets another user in; the uid check may not
    ready_r, ready_w = os.pipe()
    pid = os.fork()  # no threads here: the child only touches sockets
    if pid == 0:
        code = 1
        try:
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(server.path)
            s.send(pickle.dumps((Msg.STORE_ALLOC, 1, None, b"x", 4096, "me")))
            s.settimeout(10)
            code = 0 if s.recv(65536) == b"" else 2  # closed without an answer
        except OSError:
            code = 0
        finally:
            os.write(ready_w, b"x")
            os._exit(code)
    try:
        assert select.select([server.fileno()], [], [], 10)[0], "the child never connected"
        assert server.accept() is None  # refused: another uid
        os.read(ready_r, 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert not server._conns
    finally:
        os.close(ready_r)
        os.close(ready_w)
        server.close()
        shutil.rmtree(folder)


# ---------------------------------------------------------------- in the runtime
BIG = np.arange(2_000_000, dtype=np.float64)  # 16 MB: written to the store, not inline


def test_put_and_get_go_over_the_store_socket(rt, monkeypatch):
    core = _context.core
    assert core is not None and core.store.channel is not None
    real = core.store.request_node

    def no_store_requests(kind: int, *fields: Any, **kwargs: Any) -> Any:
        assert kind not in (Msg.STORE_ALLOC, Msg.STORE_PIN), "store request on the inbox"
        return real(kind, *fields, **kwargs)

    monkeypatch.setattr(core.store, "request_node", no_store_requests)
    ref = tk.put(BIG)
    np.testing.assert_array_equal(tk.get(ref), BIG)

    @tk.remote
    def double(x: np.ndarray) -> np.ndarray:
        return x * 2  # read and written by the worker through its own store socket

    np.testing.assert_array_equal(tk.get(double.remote(ref)), BIG * 2)
    from_threads: list[bool] = []

    def put_get() -> None:
        from_threads.append(bool((tk.get(tk.put(BIG)) == BIG).all()))

    threads = [threading.Thread(target=put_get) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert from_threads == [True] * 4


def test_store_requests_fall_back_to_the_inbox_without_the_socket(rt, tmp_path):
    core = _context.core
    assert core is not None
    core.store.channel = LocalChannel(str(tmp_path / "missing.sock"))
    ref = tk.put(BIG)
    assert core.store.channel is None  # fell back, once
    np.testing.assert_array_equal(tk.get(ref), BIG)


def test_a_store_connection_closed_by_the_node_is_a_runtime_error(rt, node_factory):
    core = _context.core
    assert core is not None
    real = core.store.channel
    node = node_factory(lambda *_: None)  # takes the request, then goes away
    core.store.channel = LocalChannel(node.server.path)
    threading.Timer(0.3, node.close).start()
    try:
        t = time.monotonic()
        with pytest.raises(RuntimeSystemError, match="closed its store connection"):
            tk.put(BIG)
        assert time.monotonic() - t < 10
    finally:
        node.thread.join(5)
        core.store.channel.close()
        core.store.channel = real
