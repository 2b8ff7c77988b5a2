"""A cluster whose nodes really have different network addresses.

The head and a node each run in a Linux network namespace of their own, joined by a veth pair
(10.X.Y.1 and 10.X.Y.2), so nothing can pass over loopback or a shared address: tasks, object
pulls in both directions and actor calls all cross the veth link. The driver runs in the head's
namespace (a driver attaches to a node of its own machine and network namespace).

Needs root and iproute2; skips where either is missing or namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from trainkit.runtime.cluster.nodes import start_node_process
from trainkit.runtime.wire.secret import SECRET_ENV

REPO = Path(__file__).resolve().parents[2]
IP_TIMEOUT_S = 10.0
DRIVER_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PUT_BYTES = 50 << 20
RETURN_BYTES = 30 << 20
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp

DRIVER = r"""
import hashlib, json, os, sys
import numpy as np
import psutil
import trainkit

trainkit.init(address=sys.argv[1])
try:
    nodes = sorted(n["NodeID"] for n in trainkit.nodes())

    @trainkit.remote(resources={"node_b": 1})
    def where():
        return os.environ["TRAINKIT_NODE_ID"], os.environ["TRAINKIT_NODE_HOST"]

    @trainkit.remote(resources={"node_b": 1})
    def sha256(array):
        return os.environ["TRAINKIT_NODE_ID"], hashlib.sha256(array.tobytes()).hexdigest()

    @trainkit.remote(resources={"node_b": 1})
    def make(n, seed):
        return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)

    @trainkit.remote(resources={"node_b": 0.5})
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return os.environ["TRAINKIT_NODE_ID"], self.n

    task_node, task_host = trainkit.get(where.remote(), timeout=30)

    sent = np.random.default_rng(1).integers(0, 256, int(sys.argv[2]), dtype=np.uint8)
    sha_node, sha_remote = trainkit.get(sha256.remote(trainkit.put(sent)), timeout=30)

    got = trainkit.get(make.remote(int(sys.argv[3]), 2), timeout=30)
    expected = np.random.default_rng(2).integers(0, 256, int(sys.argv[3]), dtype=np.uint8)

    counter = Counter.remote()
    actor_calls = [trainkit.get(counter.add.remote(k), timeout=30) for k in (1, 2, 3)]

    listens = sorted({c.laddr.ip for c in psutil.Process().net_connections("inet")
                      if c.status == psutil.CONN_LISTEN})
    result = {
        "nodes": nodes, "task_node": task_node, "task_host": task_host,
        "sha_node": sha_node, "sha_remote": sha_remote,
        "sha_local": hashlib.sha256(sent.tobytes()).hexdigest(),
        "returned_bytes": got.nbytes, "returned_dtype": str(got.dtype),
        "returned_equal": bool(np.array_equal(got, expected)),
        "actor_calls": actor_calls, "driver_listens": listens,
    }
finally:
    trainkit.shutdown()
print("RESULT " + json.dumps(result), flush=True)
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def _veth_pair(ns_a: str, ns_b: str, ip_a: str, ip_b: str) -> Iterator[None]:
    """Two fresh network namespaces joined by a veth pair, ``ip_a``/24 in one, ``ip_b`` in the
    other; both deleted (with the veth) on exit. Skips where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            added = _ip("netns", "add", ns, check=False)
            if added.returncode != 0:
                pytest.skip(f"`ip netns add` failed: {added.stderr.strip()}")
            made.append(ns)
        veth_a, veth_b = f"{ns_a}v", f"{ns_b}v"  # interface names: 15 characters at most
        added = _ip("link", "add", veth_a, "netns", ns_a, "type", "veth",
                    "peer", "name", veth_b, "netns", ns_b, check=False)
        if added.returncode != 0:
            pytest.skip(f"cannot create a veth pair: {added.stderr.strip()}")
        for ns, veth, addr in ((ns_a, veth_a, ip_a), (ns_b, veth_b, ip_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _hex_ip(field: str) -> str:
    """An address of /proc/net/tcp{,6} (little-endian 32-bit words) as text."""
    raw = bytes.fromhex(field)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def _listen_ips(pid: int) -> set[str]:
    """The addresses that ``pid`` and its descendants listen on (tcp).

    psutil's net_connections() reads /proc/net/tcp of *this* process's network namespace, where
    the sockets of a process in another namespace do not appear; /proc/PID/net/tcp is the table
    of PID's namespace, so it is read directly here, matched by socket inode.
    """
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    ips: set[str] = set()
    for proc in procs:
        inodes = _socket_inodes(proc.pid)
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):  # a worker that exited meanwhile
                lines = Path(f"/proc/{proc.pid}/net/{table}").read_text().splitlines()[1:]
                for line in lines:
                    cols = line.split()
                    if cols[3] == TCP_LISTEN and cols[9] in inodes:
                        ips.add(_hex_ip(cols[1].split(":")[0]))
    return ips


def _stop(procs: list[tuple[subprocess.Popen[bytes], dict[str, Any]]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in procs:
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)


def test_cluster_across_network_namespaces() -> None:
    pid = os.getpid()
    ns_a, ns_b = f"tk{pid}a", f"tk{pid}b"
    net = f"10.{200 + pid // 256 % 50}.{pid % 256}"
    ip_a, ip_b = f"{net}.1", f"{net}.2"
    port = 20000 + pid % 10000  # the namespace is new: every port is free there
    secret = secrets.token_hex(32).encode()
    with _veth_pair(ns_a, ns_b, ip_a, ip_b):
        nodes: list[tuple[subprocess.Popen[bytes], dict[str, Any]]] = []
        driver: subprocess.Popen[str] | None = None
        try:
            for ns, role, host, extra in (
                (ns_a, "head", ip_a, {"port": port}),
                (ns_b, "node", ip_b, {"head_addr": f"tcp://{ip_a}:{port}",
                                      "resources": {"node_b": 1}}),
            ):
                nodes.append(start_node_process(
                    role=role, host=host, secret=secret, num_cpus=2,
                    object_store_memory=256 << 20, watch_pid=pid,
                    command_prefix=("ip", "netns", "exec", ns), **extra))
            (head, head_info), (node, node_info) = nodes
            assert head_info["host"] == ip_a
            assert node_info["host"] == ip_b
            assert head_info["addr"] == f"tcp://{ip_a}:{port}"

            env = dict(os.environ)
            env[SECRET_ENV] = secret.decode()
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO), env.get("PYTHONPATH")) if p)
            driver = subprocess.Popen(
                ["ip", "netns", "exec", ns_a, sys.executable, "-c", DRIVER,
                 f"{ip_a}:{port}", str(PUT_BYTES), str(RETURN_BYTES)],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
            timed_out = False
            try:
                out, _ = driver.communicate(timeout=DRIVER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                driver.kill()
                out, _ = driver.communicate(timeout=STOP_TIMEOUT_S)
                timed_out = True
            if timed_out:  # outside the except: the expired command line is the whole script
                pytest.fail(f"the driver did not finish within {DRIVER_TIMEOUT_S:.0f} s; "
                            f"its output:\n{out}")
            assert driver.returncode == 0, out
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert len(lines) == 1, out
            result = json.loads(lines[0][len("RESULT "):])

            node_id = node_info["node_id"]
            assert result["nodes"] == sorted([head_info["node_id"], node_id])
            assert (result["task_node"], result["task_host"]) == (node_id, ip_b)
            assert result["sha_node"] == node_id
            assert result["sha_remote"] == result["sha_local"]
            assert (result["returned_bytes"], result["returned_dtype"]) == (RETURN_BYTES,
                                                                           "uint8")
            assert result["returned_equal"]
            assert result["actor_calls"] == [[node_id, 1], [node_id, 3], [node_id, 6]]
            assert result["driver_listens"] == [ip_a]

            assert _listen_ips(head.pid) == {ip_a}
            assert _listen_ips(node.pid) == {ip_b}
            # ip netns exec execs the driver: its session folder is named after this pid.
            assert glob.glob(f"/tmp/trainkit-{driver.pid}-*") == []
        finally:
            if driver is not None:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait(STOP_TIMEOUT_S)
                for folder in glob.glob(f"/tmp/trainkit-{driver.pid}-*"):  # a killed driver's
                    shutil.rmtree(folder, ignore_errors=True)
            _stop(nodes)
