"""Cluster security: nothing that is not signed with the cluster's secret is ever unpickled.

Every listening port of a running cluster gets pickles that would create a canary file:
raw over tcp, as unsigned ZeroMQ frames, signed with a wrong secret, as a tampered copy of a
valid frame and as a replay (an old counter) of a valid sender. The canary must never
appear, and the cluster must keep serving.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time
from typing import Any

import psutil
import pytest
import zmq

import trainkit as tk
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime import _session
from trainkit.runtime.cluster.nodes import start_node_process
from trainkit.runtime.core import context as _context
from trainkit.runtime.wire.auth import FrameAuth
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.testing import LocalCluster

pytestmark = pytest.mark.leaking("processes")  # idle pool workers; the fixture checks the end


class _Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.path!r}, 'w').close()",))


@pytest.fixture(scope="module")
def cluster(two_node_cluster: LocalCluster) -> LocalCluster:
    return two_node_cluster




def _listening(c: LocalCluster) -> list[tuple[str, int]]:
    out = []
    for p in c.processes():
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        out += [(cn.laddr.ip, cn.laddr.port) for cn in conns if cn.status == psutil.CONN_LISTEN]
    return sorted(set(out))


def _spawn_workers_everywhere() -> None:
    @tk.remote(num_cpus=0, resources={"b": 0.1})
    class OnB:
        def ping(self) -> int:
            return 1

    @tk.remote(num_cpus=0)
    def on_head() -> int:
        return 1

    actor = OnB.remote()
    assert tk.get([actor.ping.remote(), on_head.remote()]) == [1, 1]
    return actor


def test_cluster_listens_on_the_given_address_only(cluster):
    keep = _spawn_workers_everywhere()
    ports = _listening(cluster)
    assert ports, "nothing listens?"
    assert {ip for ip, _ in ports} == {"127.0.0.1"}
    del keep


def _raw_pickle(port: int, evil: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(evil)
            s.recv(1)  # until the peer drops us
        except OSError:
            pass


def _zmq_attacks(port: int, evil: bytes, secret: bytes) -> None:
    """Against a ZeroMQ inbox: unsigned, wrong secret, tampered, replayed, older counter."""
    ctx = zmq.Context()
    try:
        right = FrameAuth(secret)
        old = right.sign(evil, port)  # counter 1: valid, but older than what follows
        fresh = right.sign(pickle.dumps((Msg.NODE_HEARTBEAT_ACK,), protocol=5), port)
        for kind in (zmq.PUSH, zmq.DEALER):  # a DEALER cannot even talk to a PULL inbox
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send(evil)
            sock.send_multipart(FrameAuth(os.urandom(32).hex().encode()).sign(evil, port))
            sock.send_multipart([fresh[0], evil, fresh[2]])  # tampered
            sock.send_multipart([bytes(f) for f in fresh])  # valid: accepted once
            sock.send_multipart([bytes(f) for f in fresh])  # replayed
            sock.send_multipart([bytes(f) for f in old])
            sock.close()
    finally:
        ctx.term()


def _framed(frames: list[Any]) -> bytes:
    header, payload, mac = (bytes(f) for f in frames)
    return struct.pack("!I", len(header) + len(mac) + len(payload)) + header + mac + payload


def _object_server_attacks(port: int, evil: bytes, secret: bytes) -> None:
    """Against an object server, in its own framing: the same set, one connection each."""
    right = FrameAuth(secret)
    old = right.sign(evil, port)
    fresh = right.sign(pickle.dumps(("get", b"no-such-object")), port)
    attempts = [
        _framed([bytes(37), evil, bytes(32)]),  # unsigned
        _framed(FrameAuth(os.urandom(32).hex().encode()).sign(evil, port)),
        _framed([fresh[0], evil, fresh[2]]),  # tampered
        _framed(fresh),  # valid: answered with an error (no such object)
        _framed(fresh),  # replayed, on a new connection
        _framed(old),
    ]
    for data in attempts:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(data)
            try:
                s.recv(1 << 16)
            except OSError:
                pass


def test_no_unauthenticated_tampered_or_replayed_frame_is_unpickled(cluster, tmp_path):
    from trainkit.runtime._builtin_backend import cluster_info as _cluster_info
    from trainkit.runtime.core.core_worker import NODE_REQUEST_TIMEOUT_S

    keep = _spawn_workers_everywhere()
    canary = str(tmp_path / "canary")
    evil = pickle.dumps(_Canary(canary), protocol=5)
    nodes = _context.core.request_control(  # type: ignore[union-attr]
        Msg.CLUSTER_NODES, what="nodes", timeout=NODE_REQUEST_TIMEOUT_S)
    object_ports = {int(n["transfer_addr"].rsplit(":", 1)[1]) for n in nodes}
    ports = [port for _, port in _listening(cluster)]
    assert len(ports) >= 6 and object_ports <= set(ports)  # inboxes, object servers, workers
    for port in ports:
        _raw_pickle(port, evil)
        if port in object_ports:
            _object_server_attacks(port, evil, cluster.secret)
        else:
            _zmq_attacks(port, evil, cluster.secret)
    time.sleep(1.0)
    assert not os.path.exists(canary)
    keep2 = _spawn_workers_everywhere()  # every node still serves
    rejected = _cluster_info()["rejected_frames"]  # the head's own counts
    assert rejected == {
        "inbox": {"malformed": 1, "bad_mac": 2, "replay": 2, "stale": 0, "oversize": 0},
        # the raw pickle's first bytes read as a length over the limit
        "objects": {"malformed": 1, "bad_mac": 2, "replay": 2, "stale": 0, "oversize": 1},
    }
    del keep, keep2


def test_oversize_frames_are_dropped_before_they_are_allocated(cluster):
    head = psutil.Process(cluster.node_pids()[cluster.head_node_id])
    port = int(cluster.address.rsplit(":", 1)[1])
    rss_before = head.memory_info().rss
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(bytes(300 << 20))  # over the 256 MiB frame limit
        sock.close()
    finally:
        ctx.term()
    time.sleep(0.5)
    assert head.memory_info().rss - rss_before < 64 << 20
    assert tk.get(tk.put(b"still serving")) == b"still serving"


def test_a_node_with_the_wrong_secret_cannot_join(cluster):
    wrong = os.urandom(32).hex().encode()
    started = time.monotonic()
    with pytest.raises(RuntimeSystemError, match="secret") as info:
        start_node_process(role="node", host="127.0.0.1", secret=wrong,
                           head_addr=f"tcp://{cluster.address}", num_cpus=1,
                           object_store_memory=64 << 20, watch_pid=os.getpid(),
                           register_timeout_s=2)
    assert time.monotonic() - started < 15
    assert wrong.decode() not in str(info.value)
    assert cluster.secret.decode() not in str(info.value)
    assert len(tk.nodes()) == 2


def test_the_secret_is_never_in_a_command_line(cluster):
    secret = cluster.secret.decode()
    for p in cluster.processes():
        try:
            assert secret not in " ".join(p.cmdline())
        except psutil.Error:
            continue


def test_a_driver_with_the_wrong_secret_is_refused_clearly(cluster, monkeypatch):
    # Last in this module: it stops the module's driver to try a new one.
    tk.shutdown()
    monkeypatch.setattr(_session, "CONNECT_TIMEOUT_S", 2.0)
    monkeypatch.setenv(SECRET_ENV, os.urandom(32).hex())
    try:
        with pytest.raises(ConnectionError, match="TRAINKIT_CLUSTER_SECRET"):
            tk.init(address=cluster.address)
        assert not tk.is_initialized()
    finally:
        monkeypatch.setenv(SECRET_ENV, cluster.secret.decode())
