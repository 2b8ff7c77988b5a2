"""``trainkit run``: an unmodified ``torchrun`` script on gang-scheduled workers.

::

    trainkit run --nproc-per-node N [--nnodes MIN:MAX] [--max-restarts K] [--address ADDR]
                 script.py ARGS...

One placement group holds the whole group: a bundle per node (``STRICT_SPREAD`` across
nodes), each for ``N`` ranks. Each rank is an actor that runs ``python script.py ARGS`` in a
child process with torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``ROLE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``,
``TORCHELASTIC_RESTART_COUNT``, ...) and relays what it prints, each line prefixed
``(rank R)``. When a rank's script fails, the others are stopped and, while restarts are
left, the whole group runs again (a new rendezvous port, ``TORCHELASTIC_RESTART_COUNT`` one
more); the command exits with the status of the first rank that failed (128 + the signal
for one killed by a signal), 0 when every rank succeeded.

``--nnodes MIN:MAX``: each attempt uses as many nodes as offer a bundle of ``N`` ranks, up to
MAX, and waits (saying what is missing) while fewer than MIN do. In embedded mode (no
``--address``) there is one node, this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import trainkit as tk
from trainkit._console import split_records

WAIT_FOR_NODES_S = 60.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class LaunchSpec:
    script: str
    args: tuple[str, ...]
    nproc_per_node: int
    min_nodes: int = 1
    max_nodes: int = 1
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node is {self.nproc_per_node}; it must be >= 1 "
                             "(the number of ranks on each node)")
        if not 1 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"--nnodes is {self.min_nodes}:{self.max_nodes}; it must be N or "
                             "MIN:MAX with 1 <= MIN <= MAX")
        if self.max_restarts < 0:
            raise ValueError(f"--max-restarts is {self.max_restarts}; it must be >= 0")
        if not os.path.isfile(self.script):
            raise FileNotFoundError(f"the script {self.script!r} does not exist (from "
                                    f"{os.getcwd()})")


def parse_nnodes(text: str) -> tuple[int, int]:
    """``"2"`` or ``"1:4"`` as (min, max)."""
    try:
        low, _, high = text.partition(":")
        return int(low), int(high or low)
    except ValueError:
        raise ValueError(f"--nnodes is {text!r}; write N or MIN:MAX, e.g. 1:2") from None


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (128 + N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent() -> None:  # in the child, before exec: the script dies with its rank
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@tk.remote(max_concurrency=2)
class RankProcess:
    """One rank: runs the script in a child process and relays its output."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None

    def address(self, one_node: bool) -> tuple[str, int]:
        """The address the ranks reach this one at (loopback when they are all on this
        node) and a port free on it, for rank 0's rendezvous."""
        ip = "127.0.0.1" if one_node else tk.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
            return ip, int(s.getsockname()[1])

    def run(self, argv: list[str], env: dict[str, str], cwd: str, rank: int) -> int:
        full = dict(os.environ)
        full.update(env)
        self.child = subprocess.Popen(argv, env=full, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      preexec_fn=_die_with_parent)
        assert self.child.stdout is not None
        out = sys.__stdout__  # past the worker's own prefix: "(rank R)" is the prefix
        assert out is not None
        prefix = f"(rank {rank}) "
        rest = b""
        fd = self.child.stdout.fileno()
        while chunk := os.read(fd, 65536):
            records, rest = split_records(rest + chunk)
            text = "".join(prefix + r.text.decode(errors="replace") + ("\r" if r.update
                                                                          else "\n")
                           for r in records)
            if text:
                out.write(text)
                out.flush()
        if rest:
            out.write(prefix + rest.decode(errors="replace") + "\n")
            out.flush()
        return self.child.wait()

    def stop(self) -> None:
        """Stop the script: SIGTERM, then SIGKILL after a grace period (torchrun's way)."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()


def _bundles(nproc: int) -> dict[str, float]:
    return {"CPU": float(nproc) * _cpu_per_rank(nproc)}


def _cpu_per_rank(nproc: int) -> float:
    """Each rank's CPU share: one, or less when a node has fewer CPUs than ranks (torchrun
    does not count CPUs at all; this keeps every rank schedulable on a small node)."""
    per_node = [n["Resources"].get("CPU", 0.0) for n in tk.nodes() if n.get("Alive")]
    smallest = min(per_node, default=0.0)
    return min(1.0, smallest / nproc) if smallest > 0 else 1.0


def _place(spec: LaunchSpec) -> Any:
    """A placement group of as many nodes as fit (MIN..MAX); waits while fewer than MIN do."""
    deadline = time.monotonic() + WAIT_FOR_NODES_S
    said = False
    while True:
        for nodes in range(spec.max_nodes, spec.min_nodes - 1, -1):
            strategy = "STRICT_SPREAD" if nodes > 1 else "PACK"
            pg = tk.util.placement_group([_bundles(spec.nproc_per_node)] * nodes,
                                         strategy=strategy)
            if pg.wait(timeout_seconds=2 if nodes > spec.min_nodes else 5):
                return pg
            tk.util.remove_placement_group(pg)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"fewer than {spec.min_nodes} nodes can each hold {spec.nproc_per_node} "
                f"ranks ({_bundles(spec.nproc_per_node)}) after {WAIT_FOR_NODES_S:.0f} s; "
                f"the cluster has {tk.cluster_resources()}")
        if not said:
            print(f"[trainkit] run: waiting for {spec.min_nodes} nodes with room for "
                  f"{spec.nproc_per_node} ranks each", file=sys.stderr, flush=True)
            said = True


def launch(spec: LaunchSpec) -> int:
    """Run the script's group until it succeeds or its restarts run out; its exit status."""
    run_id = f"trainkit-{os.getpid()}"
    for attempt in range(spec.max_restarts + 1):
        status = _attempt(spec, attempt, run_id)
        if status == 0:
            return 0
        left = spec.max_restarts - attempt
        if left:
            print(f"[trainkit] run: a rank failed with status {status}; restarting the group "
                  f"({left} restart{'s' if left > 1 else ''} left)", file=sys.stderr, flush=True)
    return status


def _attempt(spec: LaunchSpec, attempt: int, run_id: str) -> int:
    from trainkit.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = _place(spec)
    nodes = len(pg.bundle_specs)
    nproc = spec.nproc_per_node
    world = nodes * nproc
    cpu = _cpu_per_rank(nproc)
    ranks = [RankProcess.options(  # type: ignore[attr-defined]
        num_cpus=cpu, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=r // nproc)).remote() for r in range(world)]
    try:
        master, port = tk.get(ranks[0].address.remote(nodes == 1))
        argv = [sys.executable, "-u", os.path.abspath(spec.script), *spec.args]
        runs = {}
        for r, actor in enumerate(ranks):
            env = {
                "RANK": str(r), "LOCAL_RANK": str(r % nproc), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": str(r // nproc),
                "NODE_RANK": str(r // nproc), "GROUP_WORLD_SIZE": str(nodes),
                "ROLE_RANK": str(r), "ROLE_WORLD_SIZE": str(world), "ROLE_NAME": "default",
                "MASTER_ADDR": master, "MASTER_PORT": str(port),
                "TORCHELASTIC_RESTART_COUNT": str(attempt),
                "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
                "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_USE_AGENT_STORE": "False",
            }
            if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = "1"  # as torchrun does
            runs[actor.run.remote(argv, env, os.getcwd(), r)] = r
        pending = list(runs)
        while pending:
            done, pending = tk.wait(pending, num_returns=1)
            status = _status(done[0])
            if status != 0:
                for actor in ranks:
                    actor.stop.remote()
                if pending:
                    tk.wait(pending, num_returns=len(pending), timeout=STOP_GRACE_S + 5)
                return status
        return 0
    finally:
        for actor in ranks:
            tk.kill(actor)
        tk.util.remove_placement_group(pg)


def _status(ref: Any) -> int:
    try:
        return exit_status(int(tk.get(ref)))
    except Exception as e:  # the rank's actor itself died
        print(f"[trainkit] run: a rank's process died: {e}", file=sys.stderr, flush=True)
        return 1
