"""What the core worker's parts decide to do, recorded for the I/O shell to carry out.

The parts (ownership table, task submitter, actor caller) never touch a socket or a thread:
they change their own state and record messages to send and waiters to wake here. The shell
(``CoreWorker``) runs every part under its one lock, then sends the messages (still under the
lock, so each peer sees them in the order the state changed) and wakes the waiters after
releasing it (a waiter may take the lock again). A unit test builds the parts on an
``Effects`` of its own and reads what they decided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Message = tuple[Any, ...]
Waiter = Callable[[], None]


class Effects:
    """Messages to send and waiters to wake, in the order the parts recorded them."""

    __slots__ = ("sends", "store_sends", "wakeups")

    def __init__(self) -> None:
        self.sends: list[tuple[str, Message]] = []
        self.store_sends: list[Message] = []
        self.wakeups: list[Waiter] = []

    def send(self, addr: str, msg: Message) -> None:
        self.sends.append((addr, msg))

    def send_store(self, msg: Message) -> None:
        """A message for this machine's object store (a free), sent on the store connection
        of the thread that carries it out, so that thread's next put finds the room."""
        self.store_sends.append(msg)

    def wake(self, waiters: list[Waiter]) -> None:
        self.wakeups.extend(waiters)

    def take_sends(self) -> list[tuple[str, Message]]:
        sends, self.sends = self.sends, []
        return sends

    def take_store_sends(self) -> list[Message]:
        sends, self.store_sends = self.store_sends, []
        return sends

    def take_wakeups(self) -> list[Waiter]:
        wakeups, self.wakeups = self.wakeups, []
        return wakeups
