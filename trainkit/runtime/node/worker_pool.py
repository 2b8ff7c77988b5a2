"""This node's worker processes: the forkserver, forks, the idle pool, exits.

A part of the node service. It owns the forkserver (``zygote``, one process that imported
the runtime once and forks workers on request, so a worker starts in milliseconds), every
worker forked here (by id, and by pidfd: the node's poller watches each pidfd, so a death is
seen the moment it happens), the idle workers and the leases waiting for a fork. What a
worker's death or a lease's worker means beyond this node (the control plane, the owners) is
the host's to decide (``PoolHost``).

A worker's life here: ``fork()`` asks the forkserver, which answers with its pid
(``on_forked``); the worker registers (REGISTER_WORKER) and is given to the oldest waiting
lease or put in the idle pool; a lease that ends returns it (``release``); it exits when
retired (too many idle, or forked before a module preload), killed, or on its own, and
``on_exit`` reports why.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from typing import Any
from typing import Protocol

from trainkit.exceptions import RuntimeSystemError
from trainkit.runtime.node.control_plane import _Lease
from trainkit.runtime.node.control_plane import _WorkerProc
from trainkit.runtime.node.worker_output import WorkerOutput
from trainkit.runtime.wire.protocol import Msg
from trainkit.runtime.wire.protocol import new_id

ZYGOTE_MODULE = "trainkit.runtime.node.zygote"
START_ATTEMPTS = 3  # forks in a row that die before registering: the leases waiting fail
EXIT_CODE_WAIT_S = 1.0


class PoolHost(Protocol):
    """What the worker pool asks of the node service it runs in."""

    def send(self, addr: str, msg: tuple[Any, ...]) -> None: ...
    def watch(self, fd: int) -> None: ...
    def unwatch(self, fd: int) -> None: ...
    def assign(self, lease: _Lease, w: _WorkerProc) -> None: ...
    def worker_exited(self, w: _WorkerProc, cause: str) -> None: ...
    def leases_failed(self, leases: list[_Lease], err: Exception) -> None: ...


class WorkerPool:
    def __init__(self, host: PoolHost, env: dict[str, str], cwd: str, secret: bytes | None,
                 max_idle: int, output: WorkerOutput) -> None:
        self.host = host
        self.env = env
        self.cwd = cwd
        self._secret = secret  # for the forkserver, over its socket (never an environment)
        self.max_idle = max_idle
        self.output = output
        self.workers: dict[bytes, _WorkerProc] = {}
        self.by_fd: dict[int, _WorkerProc] = {}
        self.idle: list[_WorkerProc] = []
        self.waiting: deque[_Lease] = deque()  # leases granted here, waiting for a fork
        self.forking: deque[_WorkerProc] = deque()  # asked of the forkserver, pid not known
        self.exit_codes: dict[int, int] = {}  # pid -> status, as the forkserver reaped it
        self.start_failures = 0
        self.preloads = 0  # how many preload requests the forkserver has had
        self.preloaded: set[str] = set()
        self.zygote: subprocess.Popen[bytes] | None = None
        self.zsock: socket.socket | None = None

    # ------------------------------------------------------------------ the forkserver
    def start(self, prestart: int = 0) -> None:
        """Start the forkserver (see ``zygote``), and ``prestart`` workers."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(self.env)
        env["TRAINKIT_ZYGOTE_FD"] = str(theirs.fileno())
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", ZYGOTE_MODULE], stdin=subprocess.DEVNULL,
            env=env, cwd=self.cwd, pass_fds=(theirs.fileno(),))
        theirs.close()
        if self._secret:  # first on the socket, so before any fork request
            ours.send(json.dumps({"secret": self._secret.decode()}).encode())
        self.zsock = ours
        self.host.watch(ours.fileno())
        for _ in range(prestart):
            self.fork()

    def _zygote_message(self, timeout: float | None) -> bool:
        """Handle one message from the forkserver; False if none came within ``timeout``."""
        assert self.zsock is not None
        ready, _, _ = select.select([self.zsock], [], [], timeout)
        if not ready:
            return False
        data = self.zsock.recv(65536)
        if not data:
            raise RuntimeSystemError("the worker forkserver died")
        msg: dict[str, int] = json.loads(data)
        if "exit" in msg:
            self.exit_codes[msg["exit"]] = msg["status"]
        else:
            self.on_forked(self.forking.popleft(), msg["pid"])
        return True

    def fork(self) -> _WorkerProc:
        """Ask the forkserver for a worker; it answers with the pid (see ``on_forked``)."""
        assert self.zsock is not None, "start() the pool first"
        worker_id = new_id()
        env = dict(self.env)
        env["TRAINKIT_WORKER_ID"] = worker_id.hex()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        spec = json.dumps({"env": env, "cwd": self.cwd}).encode()
        socket.send_fds(self.zsock, [spec], [stdin_r, out_w, err_w])
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        w = _WorkerProc(worker_id, 0, -1, stdin_w, preloads=self.preloads)
        self.workers[worker_id] = w
        self.forking.append(w)
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            self.output.add(fd, w, stream)
            self.host.watch(fd)
        return w

    def on_forked(self, w: _WorkerProc, pid: int) -> None:
        w.pid = pid
        try:
            w.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone: make its death visible all the same
            w.pidfd = os.eventfd(1)
        self.by_fd[w.pidfd] = w
        self.host.watch(w.pidfd)
        if w.killed_reason:
            self.kill(w, w.killed_reason)

    def preload(self, modules: list[str]) -> list[str]:
        """Have the forkserver import ``modules``, so workers forked later start with them;
        returns those it had not imported yet."""
        new = [m for m in modules if m not in self.preloaded]
        if not new:
            return new
        assert self.zsock is not None
        self.preloaded.update(new)
        socket.send_fds(self.zsock, [json.dumps({"preload": new}).encode()], [])
        self.preloads += 1
        stale, self.idle = self.idle, []
        for w in stale:  # they lack the modules; new workers are forked when needed
            self.host.send(w.exec_addr, (Msg.RETIRE,))
        return new

    # ------------------------------------------------------------------ the poller's fds
    def owns(self, fd: int) -> bool:
        return fd in self.by_fd or self.output.owns(fd) or (
            self.zsock is not None and fd == self.zsock.fileno())

    def on_fd(self, fd: int) -> None:
        """``fd`` (one ``owns`` said is ours) is readable."""
        if fd in self.by_fd:
            self.on_exit(self.by_fd[fd])
        elif self.output.owns(fd):
            self.output.read(fd)  # one read per wake-up keeps the loop fair
        else:
            while self._zygote_message(0):
                pass

    # ------------------------------------------------------------------ workers
    def on_register_worker(self, worker_id: bytes, pid: int, exec_addr: str,
                           ctl_addr: str, staying: bool = False) -> None:
        w = self.workers.get(worker_id)
        if w is None:
            return
        w.exec_addr, w.ctl_addr, w.ready = exec_addr, ctl_addr, True
        self.start_failures = 0
        if staying and not self.waiting:
            self.idle.append(w)  # refused to retire: it owns objects
        else:
            self.available(w)

    def on_worker_tainted(self, worker_id: bytes) -> None:
        w = self.workers.get(worker_id)
        if w is not None:
            w.tainted = True

    def available(self, w: _WorkerProc) -> None:
        if w.preloads < self.preloads:
            # Forked before a preload: it lacks the modules. Every waiting lease has a fresh
            # fork of its own on the way, so this one leaves.
            self.host.send(w.exec_addr, (Msg.RETIRE,))
        elif self.waiting:
            self.host.assign(self.waiting.popleft(), w)
        elif len(self.idle) >= self.max_idle:
            # Too many idle workers: ask this one to leave. One that owns objects stays
            # (their values live in it) and registers again.
            self.host.send(w.exec_addr, (Msg.RETIRE,))
        else:
            self.idle.append(w)

    def give(self, lease: _Lease) -> None:
        """Give ``lease`` (granted on this node) a worker: an idle one or a new fork."""
        while self.idle:
            w = self.idle.pop()
            if not w.exited:
                self.host.assign(lease, w)
                return
        self.waiting.append(lease)
        self.fork()

    def unwait(self, lease: _Lease) -> None:
        """``lease`` no longer wants a worker (its owner returned or died)."""
        if lease in self.waiting:
            self.waiting.remove(lease)

    def release(self, w: _WorkerProc) -> None:
        """A lease on this node ended: its worker goes back to the pool, or away."""
        w.lease_id = None
        if w.tainted or w.actor_id is not None:
            self.kill(w, "done")
        elif not w.exited:
            self.available(w)

    def kill(self, w: _WorkerProc, reason: str) -> None:
        if not w.killed_reason:
            w.killed_reason = reason
        if w in self.idle:
            self.idle.remove(w)
        if not w.exited and w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def ctl_addrs(self) -> set[str]:
        """The control addresses of the workers here that registered."""
        return {w.ctl_addr for w in self.workers.values() if w.ctl_addr}

    def exit_code(self, pid: int) -> int | None:
        """The worker's exit status, as the forkserver reported it (it reaps its children)."""
        deadline = time.monotonic() + EXIT_CODE_WAIT_S
        while pid not in self.exit_codes and time.monotonic() < deadline:
            if not self._zygote_message(max(0.0, deadline - time.monotonic())):
                break
        return self.exit_codes.pop(pid, None)

    def on_exit(self, w: _WorkerProc) -> None:
        self.host.unwatch(w.pidfd)
        del self.by_fd[w.pidfd]
        os.close(w.pidfd)
        self.output.drain(w)
        w.exited = True
        os.close(w.stdin_w)
        code = self.exit_code(w.pid)
        self.workers.pop(w.worker_id, None)
        if w in self.idle:
            self.idle.remove(w)
        cause = w.killed_reason or describe_exit(code)
        self.host.worker_exited(w, cause)
        if not w.ready:
            self._start_failed(cause)

    def _start_failed(self, cause: str) -> None:
        self.start_failures += 1
        if not self.waiting:
            return
        if self.start_failures < START_ATTEMPTS:
            self.fork()
            return
        err = RuntimeSystemError(
            f"worker processes fail to start ({cause}); their output above says why. "
            f"Command: {sys.executable} -m trainkit.runtime.core.worker_process")
        failed, self.waiting = list(self.waiting), deque()
        self.host.leases_failed(failed, err)

    def close(self) -> None:
        """Kill every worker and the forkserver, and wait until they are gone."""
        for w in list(self.workers.values()):
            self.kill(w, "shutdown")
        if self.zygote is not None:
            # Killing the forkserver also kills any worker it forked (their death signal).
            self.zygote.kill()
            self.zygote.wait()
        if self.zsock is not None:
            self.zsock.close()
        deadline = time.monotonic() + 5
        for w in list(self.workers.values()):
            # Wait for each exit (its pidfd turns readable) so nothing outlives shutdown.
            if w.pidfd >= 0:
                select.select([w.pidfd], [], [], max(0.0, deadline - time.monotonic()))
                os.close(w.pidfd)
            os.close(w.stdin_w)
        self.output.close()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the process exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the process was killed by {name}"
    return f"the process exited with code {code}"
