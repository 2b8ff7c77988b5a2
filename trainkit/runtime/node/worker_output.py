"""What the workers on this node write to stdout and stderr, forwarded to the drivers.

A part of the node service: it owns each worker's two output pipes (their read ends, which
the node's poller watches) and what has been read of a line that is not finished yet. Whole
lines go out prefixed with who wrote them, ``(pid=N) text`` (``(pid=N, node=HOST)`` in a
cluster); a line that already starts with ``(`` carries its own prefix (a trainkit actor's
``(Name pid=N)``). An empty line goes out empty: a prefix alone says nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from trainkit._console import Record
from trainkit._console import collapse_updates
from trainkit._console import split_records
from trainkit.runtime.node.control_plane import _WorkerProc

READ_CHUNK = 65536


def prefixed(text: str, pid: int, host: str | None) -> str:
    """``text`` (one line or update, without its end) prefixed by its writer, if not empty."""
    if text and not text.startswith("("):
        text = f"(pid={pid}) {text}"
    if text and host is not None:  # cluster mode: say which node it came from
        text = text.replace(")", f", node={host})", 1)
    return text


def render(records: list[Record[bytes]], pid: int, host: str | None) -> str:
    """Records read from a worker's pipe as the text to forward: lines end with ``\\n``,
    an update (a line redrawn in place) with ``\\r``."""
    return "".join(prefixed(r.text.decode(errors="replace"), pid, host)
                   + ("\r" if r.update else "\n") for r in records)


class WorkerOutput:
    """The output pipes of this node's workers.

    ``emit(stream, text)`` sends forwarded text on (the node sends it to its drivers);
    ``unwatch(fd)`` takes a pipe out of the node's poller when it reaches its end.
    """

    def __init__(self, host: str | None, emit: Callable[[str, str], None],
                 unwatch: Callable[[int], None], forward: bool = True) -> None:
        self.host = host
        self.emit = emit
        self.unwatch = unwatch
        self.forward = forward  # False: init(log_to_driver=False), read and drop
        self.pipes: dict[int, tuple[_WorkerProc, str]] = {}
        self.partial: dict[int, bytes] = {}  # the unfinished last line of each pipe

    def add(self, fd: int, w: _WorkerProc, stream: str) -> None:
        os.set_blocking(fd, False)
        self.pipes[fd] = (w, stream)

    def owns(self, fd: int) -> bool:
        return fd in self.pipes

    def read(self, fd: int) -> bool:
        """Forward what the pipe holds now; False when nothing more is there to read."""
        w, stream = self.pipes[fd]
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.unwatch(fd)
            del self.pipes[fd]
            os.close(fd)
            rest = self.partial.pop(fd, b"")
            if rest and self.forward:
                self.emit(stream, render([Record(rest, False)], w.pid, self.host))
            return False
        records, rest = split_records(self.partial.pop(fd, b"") + data)
        if rest:
            self.partial[fd] = rest
        if records and self.forward:
            self.emit(stream, render(collapse_updates(records), w.pid, self.host))
        return True

    def drain(self, w: _WorkerProc) -> None:
        """Forward what ``w`` wrote before it exited. Stops at the first empty read: a child
        it started may still hold a pipe open, whose end then comes through the poller."""
        for fd in [fd for fd, (pw, _) in self.pipes.items() if pw is w]:
            while fd in self.pipes and self.read(fd):
                pass

    def close(self) -> None:
        for fd in self.pipes:
            os.close(fd)
        self.pipes.clear()
        self.partial.clear()
