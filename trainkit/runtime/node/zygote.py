"""The worker forkserver: a clean interpreter with the worker's modules imported, forking
a new worker on request in a few milliseconds instead of starting Python afresh.

Started by the node service with one end of a SOCK_SEQPACKET socketpair as fd 3. A request
is a JSON message with three file descriptors attached (the worker's stdin, stdout and
stderr); the reply is ``{"pid": N}``. Whenever a child exits, the forkserver reaps it and
sends ``{"exit": pid, "status": code}`` (negative: killed by that signal). It never creates
threads, zmq contexts or CUDA state, so forking it is safe; each child sets its own
environment (CUDA_VISIBLE_DEVICES among it) before any user code runs. A ``preload`` request
makes it import more modules (torch: its import starts no thread and no CUDA).

In cluster mode the node service's first message is ``{"secret": ...}``: the forkserver keeps
it in memory and each child passes it to the worker's ``main``, so it is in no process's
environment (a task and the processes it starts inherit the environment).
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import warnings

from trainkit.runtime.core import worker_process as _worker
from trainkit.runtime.wire import protocol as _protocol


def _child(spec: dict[str, object], fds: list[int], sock: socket.socket,
           wake: tuple[int, int], secret: bytes | None) -> None:
    try:
        sock.close()
        os.close(wake[0])
        os.close(wake[1])
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        env = spec["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(spec["cwd"]))
        _protocol.reset_ids_after_fork()
        _worker.main(secret)
    finally:
        os._exit(1)


def _preload(modules: list[str]) -> None:
    """Import ``modules`` here, once, instead of in every worker (torch takes ~2 s). A module
    that fails to import is skipped: the worker that needs it will raise the error itself."""
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:
            pass


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sock.send(json.dumps({"exit": pid, "status": code}).encode())


def main() -> None:
    _worker.die_with_parent()
    # Python 3.12+ warns at every fork once a preloaded module (torch) has started native
    # threads; it would reach the user's console on every worker start. The risk it names
    # (a lock held by such a thread at fork time) has not shown up in the DDP, data and GPU
    # runs that fork torch workers this way; it is noted in the cluster issue's report.
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                            category=DeprecationWarning)
    sock = socket.socket(fileno=int(os.environ.pop("TRAINKIT_ZYGOTE_FD")))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select via the wakeup fd
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    secret: bytes | None = None
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 3)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                os._exit(0)  # the node service is gone
            spec = json.loads(data)
            if "secret" in spec:
                secret = str(spec["secret"]).encode()
                continue
            if "preload" in spec:
                _preload(spec["preload"])
                continue
            # What this process holds goes to the collector's permanent generation: a
            # worker's full collections then never write to (and so copy) the pages it
            # shares with this process (~6 MB of private memory per worker after its
            # first full collection, measured on the import set of 2026-12).
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                _child(spec, fds, sock, (wake_r, wake_w), secret)
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    main()
