"""The ``trainkit`` command: start, inspect and stop a cluster (API.md, "Cluster").

::

    trainkit start --head [--host IP] [--port 6380] [--num-cpus N] [--num-gpus N]
                   [--resources JSON] [--secret-file PATH]
    trainkit start --address HOST:PORT [--host IP] [--num-cpus N] [--num-gpus N]
                   [--resources JSON] [--secret-file PATH]
    trainkit status [--address HOST:PORT] [--secret-file PATH]
    trainkit stop
    trainkit report PATH [--json]
    trainkit dashboard [--storage PATH] [--address ADDR] [--host 127.0.0.1] [--port 8265]
    trainkit run --nproc-per-node N [--nnodes MIN:MAX] [--max-restarts K] [--address ADDR]
                 script.py ARGS...

``start`` runs a node service detached from the terminal and records it in
``~/.trainkit/cluster.json`` (the head's address, for ``status`` and ``init(address="auto")``,
and each process started here, for ``stop``). Its output goes to ``~/.trainkit/logs/``. The
cluster secret reaches the service on its stdin, never its command line or environment (which
the tasks it runs would inherit), and is never printed. Exit codes: 0 done, 1 the cluster
failed or cannot be reached, 2 a usage error (bad option, no usable secret).

``report`` needs no runtime: it reads a run's or a sweep's ledger in its folder (a local path
or a URI such as ``s3://bucket/runs/exp``) and prints where the time went (see
``trainkit.train._goodput`` and ``trainkit.train._goodput``); exit code 2 when the path
holds neither. ``dashboard`` serves a web page of the same ledgers (``trainkit.dashboard``).
``run`` runs an unmodified torchrun script on gang-scheduled workers and exits with its status
(``trainkit.train._launch``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import ipaddress
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainkit._atomic import write_atomic
from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.cluster.nodes import DEFAULT_PORT
from trainkit.runtime.cluster.nodes import parse_address
from trainkit.runtime.cluster.nodes import route_ip
from trainkit.runtime.cluster.nodes import start_node_process
from trainkit.runtime.wire.secret import SECRET_ENV
from trainkit.runtime.wire.secret import ClusterSecretError
from trainkit.runtime.wire.secret import default_secret_path
from trainkit.runtime.wire.secret import load_secret

HEAD_QUERY_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
_NODE_MODULE = "trainkit.runtime.node.node_service"
_BUILTIN_RESOURCES = {"cpu": "--num-cpus", "gpu": "--num-gpus", "memory": None}
# The last line of a Python traceback: "pkg.mod.SomeError: message".
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): (.+)$")
# Services started by this process, by pid. The `trainkit` command exits right after a start;
# a program that calls main() itself (the tests) reaps them here when `stop` ends them.
_started: dict[int, subprocess.Popen[bytes]] = {}


class _CliError(Exception):
    """A failure to report as one message (no traceback) with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- arguments --------------------------------------------------------------------------------


def _address_arg(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _host_arg(text: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address; give the IP of this machine that the other "
            "machines reach, e.g. --host 10.0.0.5") from None
    if ip.is_unspecified:
        hint = route_ip("8.8.8.8")
        example = f" (this machine's outgoing address looks like {hint})" \
            if hint != "127.0.0.1" else ""
        raise argparse.ArgumentTypeError(
            f"{text} means every interface, but the other nodes and drivers need one concrete "
            f"address to reach this one; give this machine's IP, e.g. --host 10.0.0.5{example}")
    return text


def _port_arg(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give a number from 1 to 65535")
    return int(text)


def _cpus_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU count; give a number >= 0")
    return value


def _gpus_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a GPU count; give a whole number >= 0 (e.g. --num-gpus 2)")
    return int(text)


def _resources_arg(text: str) -> dict[str, float]:
    example = """e.g. --resources '{"accel": 2}'"""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid JSON ({e.msg} at character {e.pos}); give an object of "
            f"resource names to amounts, {example}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a JSON {type(value).__name__}, not an object of resource names to "
            f"amounts; {example}")
    resources: dict[str, float] = {}
    for name, amount in value.items():
        flag = _BUILTIN_RESOURCES.get(name.lower(), "")
        if flag != "":
            fix = f"use {flag} instead" if flag else "it is set from this machine's memory"
            raise argparse.ArgumentTypeError(f"{name!r} is a built-in resource; {fix}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                or not math.isfinite(amount) or amount < 0:
            raise argparse.ArgumentTypeError(
                f"resource {name!r} is {amount!r}, but amounts must be numbers >= 0; {example}")
        resources[name] = float(amount)
    return resources


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainkit", description="Manage a trainkit cluster.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = subcommands.add_parser(
        "start", help="start a head or a node on this machine",
        description="Start a cluster's head (--head) or a node that joins one (--address).")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the cluster's head")
    role.add_argument("--address", type=_address_arg, metavar="HOST:PORT",
                      help="join the cluster whose head is at HOST:PORT")
    start.add_argument(
        "--host", type=_host_arg, metavar="IP",
        help="the address this node listens on; for --head 127.0.0.1 (this machine only) "
             "unless told otherwise, for --address the IP that routes to the head")
    start.add_argument("--port", type=_port_arg, metavar="PORT",
                       help=f"the head's port (default {DEFAULT_PORT}); only with --head")
    start.add_argument("--num-cpus", type=_cpus_arg, metavar="N",
                       help="CPUs to offer (default: this machine's count)")
    start.add_argument("--num-gpus", type=_gpus_arg, metavar="N",
                       help="GPUs to offer (default: the GPUs this machine shows)")
    start.add_argument("--resources", type=_resources_arg, metavar="JSON",
                       help="""custom resources, e.g. '{"accel": 2}'""")
    _secret_option(start)
    status = subcommands.add_parser(
        "status", help="show nodes, resources and placement groups",
        description="Show the nodes of a cluster, its resources used/total and what waits.")
    status.add_argument("--address", type=_address_arg, metavar="HOST:PORT",
                        help="the head (default: the cluster started on this machine)")
    _secret_option(status)
    subcommands.add_parser("stop", help="stop what `trainkit start` started on this machine")
    report = subcommands.add_parser(
        "report", help="where a run's or sweep's time went, from its ledger (no cluster needed)",
        description="Print a run's or a sweep's status, wall time, productive time, badput by "
                    "cause and failures (and a sweep's trials and best trial), read from the "
                    "ledger in its folder.")
    report.add_argument("path", metavar="PATH",
                        help="the run's or sweep's folder: a local path or a URI "
                             "(s3://bucket/runs/exp)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    from trainkit.dashboard._main import add_arguments

    add_arguments(subcommands.add_parser(
        "dashboard", help="a web page of the runs and sweeps in a storage folder (and a cluster)",
        description="Serve a web page listing every run and sweep under --storage with its "
                    "status, each run's metric curves, each sweep's trials and a plot, and "
                    "with --address the cluster's nodes, resources, actors and placement "
                    "groups. Loopback only unless --host says otherwise."))
    launch = subcommands.add_parser(
        "run", help="run a torchrun script (RANK, WORLD_SIZE, MASTER_ADDR...) on the runtime",
        description="Run an unmodified torchrun-style script on gang-scheduled workers with "
                    "torchrun's environment; each output line is prefixed with its rank; the "
                    "whole group restarts on a failure up to --max-restarts; the exit status "
                    "is the script's.")
    launch.add_argument("--nproc-per-node", type=int, required=True, metavar="N",
                        help="ranks on each node")
    launch.add_argument("--nnodes", default="1", metavar="MIN:MAX",
                        help="nodes to use: N, or a range (as many as fit, at least MIN)")
    launch.add_argument("--max-restarts", type=int, default=0, metavar="K",
                        help="restarts of the whole group after a failure (default 0)")
    launch.add_argument("--address", metavar="ADDR",
                        help="a cluster to run on (auto, or HOST:PORT); default: this machine")
    launch.add_argument("script", help="the training script")
    launch.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="its arguments")
    return parser


def _secret_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-file", metavar="PATH",
        help=f"the cluster's secret (default: ${SECRET_ENV}, else {_home_path(_secret_path())})")


# --- where things are -------------------------------------------------------------------------


def _secret_path() -> Path:
    return default_secret_path()


def _state_path() -> Path:
    """``~/.trainkit/cluster.json``, where ``init(address="auto")`` finds the address."""
    return default_secret_path().parent / "cluster.json"


def _home_path(path: Path | str) -> str:
    """``path`` with the home folder written ``~`` (for messages)."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + "/") else text


def _secret_source(secret_file: str | None) -> str:
    if secret_file is not None:
        return f"--secret-file {secret_file}"
    if SECRET_ENV in os.environ:
        return f"the environment variable {SECRET_ENV}"
    return _home_path(_secret_path())


# --- ~/.trainkit/cluster.json -----------------------------------------------------------------


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serializes read-modify-write of cluster.json between `trainkit` commands here."""
    folder = _state_path().parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_state() -> dict[str, Any] | None:
    path = _state_path()
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise _CliError(
            f"cannot read {_home_path(path)} ({e}); if no trainkit process runs here, "
            "remove it") from None
    if not isinstance(state, dict) or not isinstance(state.get("processes", []), list):
        raise _CliError(
            f"{_home_path(path)} is not what `trainkit start` writes; if no trainkit process "
            "runs here, remove it")
    return state


def _write_state(state: dict[str, Any]) -> None:
    write_atomic(str(_state_path()), (json.dumps(state, indent=2) + "\n").encode())


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of process ``pid``; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The fields after the command name, which is in parentheses and may hold spaces:
            # the state is field 3, the start time field 22.
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _exists(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``started``, if given) is there and has not exited
    (a zombie has)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and started in (None, stat[1])


def _is_running(proc: dict[str, Any]) -> bool:
    """Whether the recorded node service still runs (not a later process with its pid)."""
    pid = proc.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return False
    # An exiting process shows an empty command line: it no longer counts as running.
    return _exists(pid) and _NODE_MODULE in cmdline and str(proc.get("node_id", "")) in cmdline


def _same_address(a: str, b: str) -> bool:
    (host_a, port_a), (host_b, port_b) = parse_address(a), parse_address(b)
    if port_a != port_b:
        return False
    try:
        return socket.gethostbyname(host_a) == socket.gethostbyname(host_b)
    except OSError:
        return host_a == host_b


# --- start ------------------------------------------------------------------------------------


def _check_port(host: str, port: int) -> None:
    """Fail early, and clearly, where the head could not listen."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as zmq does
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise _CliError(
                    f"port {port} on {host} is already in use (another trainkit head? "
                    f"`trainkit status --address {host}:{port}`); pass --port with a free "
                    "port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise _CliError(
                    f"--host {host} is not an address of this machine; give one of its own "
                    "IPs (see `ip -4 addr`)", code=2) from None
            raise _CliError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _log_path(name: str) -> Path:
    logs = _state_path().parent / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    return logs / f"{name}.log"


def _failure_reason(log: Path, offset: int) -> str | None:
    """The error a failed service wrote to its log after ``offset``: its last exception."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return match.group(1)
    return None


def _start_service(role: str, log: Path, **kwargs: Any) -> dict[str, Any]:
    offset = log.stat().st_size if log.exists() else 0
    try:
        proc, info = start_node_process(role=role, detach=True, log_path=str(log), **kwargs)
    except ValueError as e:  # a resource amount the scheduler refuses
        raise _CliError(str(e), code=2) from None
    except RuntimeSystemError as e:
        reason = _failure_reason(log, offset)
        what = "head" if role == "head" else "node"
        detail = reason if reason is not None else str(e)
        raise _CliError(f"the trainkit {what} did not start: {detail}\n"
                        f"(its log: {_home_path(log)})") from None
    _started[proc.pid] = proc
    return info


def _live_processes(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [p for p in (state or {}).get("processes", []) if _is_running(p)]


def _record(info: dict[str, Any], role: str, log: Path) -> dict[str, Any]:
    return {"pid": info["pid"], "role": role, "node_id": info["node_id"],
            "session_dir": info["session_dir"], "arena_path": info["arena_path"],
            "address": info["addr"].removeprefix("tcp://"), "log": str(log)}


def _describe_resources(resources: dict[str, float]) -> str:
    parts = [f"CPU {_num(resources.get('CPU', 0.0))}", f"GPU {_num(resources.get('GPU', 0.0))}"]
    parts += [f"{k} {_num(v)}" for k, v in sorted(resources.items())
              if k not in ("CPU", "GPU", "memory")]
    return ", ".join(parts)


def _default_gpus(num_gpus: int | None) -> int:
    if num_gpus is not None:
        return num_gpus
    from trainkit.runtime.node.machine import detect_gpus

    return len(detect_gpus())


def _start_head(args: argparse.Namespace) -> int:
    host: str = args.host or "127.0.0.1"
    port: int = args.port or DEFAULT_PORT
    address = f"{host}:{port}"
    secret_file: str | None = args.secret_file
    secret_path = Path(secret_file) if secret_file is not None else _secret_path()
    creates = SECRET_ENV not in os.environ or secret_file is not None
    existed = secret_path.exists()
    secret = load_secret(secret_file, create=True)
    with _state_lock():
        state = _read_state()
        live = _live_processes(state)
        if live and state is not None:
            pids = ", ".join(str(p["pid"]) for p in live)
            raise _CliError(
                f"a trainkit cluster started on this machine still runs (address "
                f"{state.get('address')}, pids {pids}); stop it first with `trainkit stop`")
        _check_port(host, port)
        log = _log_path(f"head-{port}")
        info = _start_service("head", log, host=host, port=port, secret=secret,
                              num_cpus=args.num_cpus, num_gpus=_default_gpus(args.num_gpus),
                              resources=args.resources)
        _write_state({"address": address, "processes": [_record(info, "head", log)]})
    lines = [f"Started the trainkit head at {address} (node {info['node_id'][:8]}, "
             f"{_describe_resources(info['resources'])}; pid {info['pid']})."]
    if creates and not existed:
        lines.append(f"Created the cluster secret {_home_path(secret_path)} (mode 0600).")
    if ipaddress.IPv4Address(host).is_loopback:
        lines.append(f"It listens on {host} only, so only this machine can join; for other "
                     "machines, stop it and start it with --host <this machine's IP>.")
    if secret_file is not None:
        how = f"copy {secret_file} there (mode 0600) and pass --secret-file with its path"
    elif SECRET_ENV in os.environ:
        how = f"set {SECRET_ENV} there to the same value as here"
    else:
        how = (f"copy {_home_path(secret_path)} to the same place there (mode 0600), or pass "
               "--secret-file PATH")
    lines += [
        "To add a node, run on that machine:",
        f"    trainkit start --address {address}",
        f"  with this cluster's secret: {how}.",
        "To connect a driver:",
        f'    trainkit.init(address="{address}")   # or address="auto" on this machine',
    ]
    if secret_file is not None:
        lines.append(f"  (a driver and `trainkit status` find the secret in {SECRET_ENV} or "
                     f"{_home_path(_secret_path())}, not in {secret_file})")
    lines.append(f"Status: `trainkit status`. Stop: `trainkit stop`. Log: {_home_path(log)}")
    print("\n".join(lines))
    return 0


def _start_node(args: argparse.Namespace) -> int:
    address: str = args.address
    head_host, _ = parse_address(address)
    secret = load_secret(args.secret_file, create=False)
    with _state_lock():
        state = _read_state()
        live = _live_processes(state)
        if live and state is not None and not _same_address(str(state.get("address")), address):
            pids = ", ".join(str(p["pid"]) for p in live)
            raise _CliError(
                f"this machine already runs processes of the cluster at {state.get('address')} "
                f"(pids {pids}); stop them first with `trainkit stop`, or join that cluster")
    # Asking first turns a wrong secret into a clear answer in seconds: the head drops our
    # frames unanswered, and a node would wait for it much longer.
    _query_head(address, secret, args.secret_file)
    host: str = args.host or route_ip(head_host)
    log = _log_path(f"node-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    info = _start_service("node", log, host=host, secret=secret,
                          head_addr=f"tcp://{address}", num_cpus=args.num_cpus,
                          num_gpus=_default_gpus(args.num_gpus), resources=args.resources)
    with _state_lock():
        state = _read_state()
        if state is None or not _live_processes(state):
            state = {"address": address, "processes": []}
        state["processes"].append(_record(info, "node", log))
        _write_state(state)
    print(f"Joined the trainkit cluster at {address} as node {info['node_id'][:8]} "
          f"(listening on {host}; {_describe_resources(info['resources'])}; pid {info['pid']}).\n"
          f"Status: `trainkit status`. Stop: `trainkit stop`. Log: {_home_path(log)}")
    return 0


def _start(args: argparse.Namespace) -> int:
    if args.head:
        return _start_head(args)
    if args.port is not None:
        raise _CliError("--port is for --head; a node that joins with --address listens on a "
                        "free port of its own", code=2)
    return _start_node(args)


# --- status -----------------------------------------------------------------------------------


def _query_head(address: str, secret: bytes,
                secret_file: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The head's CLUSTER_INFO and CLUSTER_NODES answers, asked as a short-lived client."""
    from trainkit.runtime.core.core_worker import CoreWorker
    from trainkit.runtime.wire.auth import FrameAuth
    from trainkit.runtime.wire.protocol import Msg

    host, port = parse_address(address)
    try:
        socket.gethostbyname(host)
    except OSError as e:
        raise _CliError(f"cannot resolve the head's host {host!r} ({e.strerror}); check the "
                        "address, or give the head's IP") from None
    head_addr = f"tcp://{host}:{port}"
    try:
        core = CoreWorker(session=f"trainkit-{os.getpid()}-cli", node_addr=head_addr, node_id="",
                          arena_path="", arena_capacity=1 << 20, name="cli",
                          cluster_resources={}, control_addr=head_addr, host=route_ip(host),
                          auth=FrameAuth(secret))
        core.start()
        try:
            info = core.request_control(Msg.CLUSTER_INFO, what="the cluster's state",
                                        timeout=HEAD_QUERY_TIMEOUT_S)
            nodes = core.request_control(Msg.CLUSTER_NODES, what="the cluster's nodes",
                                         timeout=HEAD_QUERY_TIMEOUT_S)
        finally:
            core.close()
    except GetTimeoutError:
        raise _CliError(
            f"no answer from a trainkit head at {address} within {HEAD_QUERY_TIMEOUT_S:.0f} s: "
            "the head is not reachable at that address, or its secret differs from the one "
            f"used here ({_secret_source(secret_file)}); frames signed with another secret are "
            "dropped unanswered") from None
    return info, nodes


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


def _size(n: Any) -> str:
    """Bytes for people: "12 MiB", "4.9 GiB"; "?" when unknown."""
    if not isinstance(n, (int, float)):
        return "?"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{round(n / 2**20)} MiB"


def _used_total(total: dict[str, float], free: dict[str, float], name: str) -> str:
    t = float(total.get(name, 0.0))
    used = t - float(free.get(name, t))
    if name == "memory":
        return f"{_size(used)}/{_size(t)}"
    return f"{_num(used)}/{_num(t)}"


def _resource_cells(total: dict[str, float], free: dict[str, float], store: str) -> list[str]:
    """CPU, GPU, memory, object store and custom resources as "used/total" cells."""
    other = ", ".join(f"{k} {_used_total(total, free, k)}" for k in sorted(total)
                      if k not in ("CPU", "GPU", "memory"))
    return [*(_used_total(total, free, k) for k in ("CPU", "GPU", "memory")), store, other]


def _nonzero_counts(counts: dict[str, Any], where: str = "") -> list[tuple[str, int]]:
    """``{reason: n}``, or ``{where: {reason: n}}``, as [("where bad_mac", n)...] for n > 0."""
    found: list[tuple[str, int]] = []
    for key, value in sorted(counts.items()):
        name = f"{where} {key}".strip()
        if isinstance(value, dict):
            found += _nonzero_counts(value, name)
        elif isinstance(value, int) and value:
            found.append((name, value))
    return found


def _status(args: argparse.Namespace) -> int:
    address: str | None = args.address
    if address is None:
        state = _read_state()
        if state is None or not isinstance(state.get("address"), str):
            raise _CliError(
                f"no cluster was started on this machine ({_home_path(_state_path())} is "
                "missing); pass --address HOST:PORT of the head, or start one with "
                "`trainkit start --head`")
        address = str(state["address"])
    secret = load_secret(args.secret_file, create=False)
    info, nodes = _query_head(address, secret, args.secret_file)
    by_id = {n["node_id"]: n for n in nodes}
    rows = [["NODE", "ADDRESS", "ROLE", "CPU", "GPU", "MEMORY", "OBJECT STORE", "OTHER"]]
    store_used = store_capacity = 0
    for node in sorted(info["nodes"], key=lambda n: not by_id.get(n["node_id"], {})
                       .get("is_head", False)):
        registered = by_id.get(node["node_id"], {})
        addr = str(registered.get("addr", node.get("address", "?"))).removeprefix("tcp://")
        used, capacity = node.get("store_used"), registered.get("object_store_memory")
        store = f"{_size(used)}/{_size(capacity)}"
        store_used += int(used or 0)
        store_capacity += int(capacity or 0)
        rows.append([node["node_id"][:8], addr, "head" if registered.get("is_head") else "node",
                     *_resource_cells(node["resources_total"], node["resources_available"],
                                      store)])
    rows.append(["total", "", "", *_resource_cells(
        info["total"], info["available"], f"{_size(store_used)}/{_size(store_capacity)}")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    count = len(info["nodes"])
    lines = [f"trainkit cluster at {address}: {count} node{'s' if count != 1 else ''} "
             "(resources used/total)", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
               .rstrip() for row in rows]
    lines += ["", f"waiting lease requests: {info['queued']}",
              f"placement groups waiting: {len(info['queued_groups'])}"]
    rejected = _nonzero_counts(info.get("rejected_frames", {}))
    if rejected:
        counts = ", ".join(f"{k} {v}" for k, v in rejected)
        lines.append(f"frames the head rejected: {counts} (a peer with another secret, or "
                     "traffic that is not trainkit's)")
        if any(k.endswith("bad_message") for k, _ in rejected):
            lines.append("  bad_message: signed with this cluster's secret, but not a message "
                         "the head understands (another trainkit version, or a bug; its log "
                         "names the first one)")
    print("\n".join(lines))
    return 0


# --- stop -------------------------------------------------------------------------------------


def _signal_all(procs: list[dict[str, Any]], sig: int) -> None:
    for proc in procs:
        try:
            os.kill(proc["pid"], sig)
        except ProcessLookupError:
            pass


def _wait_gone(procs: list[dict[str, Any]], starts: dict[int, str]) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_exists(p["pid"], starts[p["pid"]]) for p in procs) \
            and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop(args: argparse.Namespace) -> int:
    del args
    with _state_lock():
        state = _read_state()
        if state is None:
            print("Nothing to stop: no trainkit process was started on this machine.")
            return 0
        procs: list[dict[str, Any]] = state.get("processes", [])
        live = [p for p in procs if _is_running(p)]
        # From here on a pid counts as ours while its start time is the same, even while the
        # process exits and its command line is already empty.
        starts = {p["pid"]: (_stat(p["pid"]) or ("", ""))[1] for p in live}
        _signal_all(live, signal.SIGTERM)
        _wait_gone(live, starts)
        killed = [p for p in live if _exists(p["pid"], starts[p["pid"]])]
        _signal_all(killed, signal.SIGKILL)
        _wait_gone(killed, starts)
        survivors = [p for p in killed if _exists(p["pid"], starts[p["pid"]])]
        for proc in procs:
            if proc not in survivors:
                child = _started.pop(proc.get("pid", 0), None)
                if child is not None:
                    child.poll()  # reaps it (it has exited)
        if survivors:
            state["processes"] = survivors
            _write_state(state)
        else:
            _state_path().unlink(missing_ok=True)
    if not live:
        print(f"Nothing was running (the cluster at {state.get('address')} had stopped); "
              f"removed {_home_path(_state_path())}.")
    for proc in live:
        how = "killed after it ignored SIGTERM for 10 s" if proc in killed else "stopped"
        if proc in survivors:
            how = "still running after SIGKILL"
        print(f"trainkit {proc.get('role', 'node')} {str(proc.get('node_id', ''))[:8]} "
              f"(pid {proc['pid']}): {how}")
    if survivors:
        raise _CliError(f"{len(survivors)} process(es) did not exit; see `ps` for their state")
    return 0


# --- report ---------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    from trainkit.train import _storage
    from trainkit.train._goodput import format_report
    from trainkit.train._goodput import format_sweep_report
    from trainkit.train._goodput import summarize
    from trainkit.train._goodput import summarize_sweep
    from trainkit.train._ledger import LEDGER_FILE
    from trainkit.train._ledger import read_ledger

    try:
        run = _storage.resolve(args.path)
        found = read_ledger(run)
    except (OSError, ValueError) as e:
        raise _CliError(f"{args.path} cannot be read: {e}") from None
    if found is None:
        raise _CliError(f"{run.uri} is not a run or a sweep: it holds no {LEDGER_FILE} (pass "
                        "a run's or a sweep's folder, <storage_path>/<name>)", code=2)
    events, damaged = found
    kinds = {e["event"] for e in events}
    if "run_started" in kinds:
        summary = summarize(events, damaged=damaged) | {"path": run.uri}
        text = format_report(summary, run.uri)
    elif "sweep_started" in kinds:
        summary = summarize_sweep(events, damaged=damaged) | {"path": run.uri}
        text = format_sweep_report(summary, run.uri)
    else:
        raise _CliError(f"{run.uri} is not a run or a sweep: its {LEDGER_FILE} records no "
                        f"run_started or sweep_started event ({damaged} damaged line(s))",
                        code=2)
    if damaged and not args.json:
        print(f"trainkit report: {run.join(LEDGER_FILE).uri} is damaged: {damaged} line(s) "
              "could not be read (a write cut short?); reporting what could be read",
              file=sys.stderr)
    print(json.dumps(summary) if args.json else text)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from trainkit.dashboard._main import run

    return run(args)


# --- run --------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from trainkit.train._launch import LaunchSpec
    from trainkit.train._launch import launch
    from trainkit.train._launch import parse_nnodes

    try:
        low, high = parse_nnodes(args.nnodes)
        spec = LaunchSpec(args.script, tuple(args.script_args), args.nproc_per_node,
                          low, high, args.max_restarts)
    except (ValueError, FileNotFoundError) as e:
        raise _CliError(str(e), 2) from None
    import trainkit as tk

    if args.address:
        tk.init(address=args.address)
    else:
        tk.init()
    try:
        return launch(spec)
    finally:
        tk.shutdown()


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trainkit`` command.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code: 0 done, 1 the cluster failed or cannot be reached, 2 a usage
        error (a bad option or no usable cluster secret).

    Example:
        >>> main(["status"])  # doctest: +SKIP
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and the error
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    commands = {"start": _start, "status": _status, "stop": _stop, "report": _report,
                "dashboard": _dashboard, "run": _run}
    try:
        return commands[args.command](args)
    except ClusterSecretError as e:
        print(f"trainkit {args.command}: {e}", file=sys.stderr)
        return 2
    except _CliError as e:
        print(f"trainkit {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"trainkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
