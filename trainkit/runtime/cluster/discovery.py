"""Finding the runtimes on this machine that ``init(address="auto")`` may attach to.

An embedded runtime (a driver's ``init()``) names no file: its node listens on the abstract
unix socket ``@trainkit-<driver pid>-<random>/node.ctl``, which the kernel lists in
``/proc/net/unix`` for as long as it exists. ``choose`` picks: the runtime of the nearest
parent process that has one (a script or notebook that called ``init()`` and started this
process), else the cluster ``trainkit start`` started on this machine (what "auto" means in
Ray), else the only embedded runtime on the machine, else an error listing them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_NODE_SOCKET = re.compile(r"@(trainkit-(\d+)-[0-9a-f]+)/node\.ctl$")


@dataclass(frozen=True)
class Embedded:
    """A driver's embedded runtime: the session its node's sockets are named after."""

    session: str
    driver_pid: int


def embedded_runtimes(unix_table: str | None = None) -> list[Embedded]:
    """The embedded runtimes of this user's drivers, from ``/proc/net/unix`` (or the text
    given), one per session, in driver-pid order."""
    if unix_table is None:
        try:
            with open("/proc/net/unix") as f:
                unix_table = f.read()
        except OSError:
            return []
    found: dict[str, Embedded] = {}
    for line in unix_table.splitlines():
        m = _NODE_SOCKET.search(line.strip())
        if m is None or m.group(1) in found:
            continue
        pid = int(m.group(2))
        if _owned_by_me(pid):
            found[m.group(1)] = Embedded(m.group(1), pid)
    return sorted(found.values(), key=lambda e: e.driver_pid)


def _owned_by_me(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def ancestors(pid: int) -> list[int]:
    """``pid``'s parent, its parent, ... up to init (from /proc/<pid>/stat)."""
    out: list[int] = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            break
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 0:
            break
        out.append(pid)
    return out


def choose(embedded: list[Embedded], lineage: list[int], cluster: str | None
           ) -> Embedded | str:
    """The runtime "auto" means: an embedded runtime, or the started cluster's address.

    Args:
        embedded: the embedded runtimes on this machine.
        lineage: this process's ancestors, nearest first.
        cluster: the address of the cluster ``trainkit start`` started here, if any.

    Raises:
        ConnectionError: no runtime at all, or several embedded ones, none of them a
            parent's, and no cluster; the message lists them.
    """
    by_pid = {e.driver_pid: e for e in embedded}
    for pid in lineage:
        if pid in by_pid:
            return by_pid[pid]
    if cluster:
        return cluster
    if len(embedded) == 1:
        return embedded[0]
    if not embedded:
        raise ConnectionError(
            "init(address='auto'): no trainkit runtime runs on this machine (no driver's "
            "embedded runtime, no cluster from `trainkit start`); call init() to start one, "
            "start a cluster with `trainkit start --head`, or pass address='HOST:PORT'")
    listed = ", ".join(str(e.driver_pid) for e in embedded)
    raise ConnectionError(
        f"init(address='auto'): {len(embedded)} drivers run embedded runtimes on this machine "
        f"(pids {listed}) and none is a parent of this process; start this process from "
        "the driver whose runtime it should join, or start a cluster (`trainkit start "
        "--head`) and pass its address")
