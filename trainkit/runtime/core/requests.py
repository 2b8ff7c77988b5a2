"""The request tracker: ids for requests to other processes, their replies, and what to do
when an answer cannot come.

A request is a message carrying an id and the address to reply to; the answer is a REPLY
with that id, ``(ok, payload)``. A caller either waits for it on a thread (``Pending.event``)
or hands a callback that runs on the I/O thread. When the process a request went to dies,
or the runtime shuts down, its pending requests fail instead of waiting forever.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from trainkit.exceptions import GetTimeoutError
from trainkit.exceptions import RuntimeSystemError

Callback = Callable[[bool, Any], None]


class Pending:
    """One request waiting for its reply."""

    __slots__ = ("callback", "event", "ok", "payload", "target", "what")

    def __init__(self, target: str, what: str, callback: Callback | None) -> None:
        self.callback = callback
        self.event = threading.Event()
        self.ok = False
        self.payload: Any = None
        self.target = target
        self.what = what

    def answer(self, ok: bool, payload: Any) -> None:
        if self.callback is not None:
            self.callback(ok, payload)
            return
        self.ok, self.payload = ok, payload
        self.event.set()

    def value(self) -> Any:
        """The reply's payload, or its error raised."""
        if self.ok:
            return self.payload
        if isinstance(self.payload, BaseException):
            raise self.payload
        raise RuntimeSystemError(f"{self.what} failed: {self.payload}")


class RequestTracker:
    """Requests in flight by id. Thread-safe: user threads open requests, the I/O thread
    answers them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        """An id for a request answered outside the tracker (the store's channel)."""
        return next(self._ids)

    def open(self, target: str, what: str, callback: Callback | None = None
             ) -> tuple[int, Pending]:
        req_id = next(self._ids)
        pending = Pending(target, what, callback)
        with self._lock:
            self._pending[req_id] = pending
        return req_id, pending

    def abandon(self, req_id: int) -> None:
        """The caller stopped waiting (a timeout): a late reply is dropped."""
        with self._lock:
            self._pending.pop(req_id, None)

    def reply(self, req_id: int, ok: bool, payload: Any) -> None:
        with self._lock:
            pending = self._pending.pop(req_id, None)
        if pending is not None:
            pending.answer(ok, payload)

    def fail_target(self, target: str, error: BaseException) -> None:
        """The process ``target`` died: its requests fail with ``error``."""
        with self._lock:
            failed = [(i, p) for i, p in self._pending.items() if p.target == target]
            for req_id, _ in failed:
                del self._pending[req_id]
        for _, pending in failed:
            pending.answer(False, error)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            failed, self._pending = list(self._pending.values()), {}
        for pending in failed:
            pending.answer(False, error)


def no_answer(what: str, timeout: float | None, session: str) -> GetTimeoutError:
    return GetTimeoutError(
        f"no answer to {what} within {timeout:.0f} s; is the trainkit node service "
        f"alive? (session {session})")
