"""Fault points: places where a test can make a training process die, raise or hang.

``TRAINKIT_TEST_FAULTS`` holds comma-separated rules ``point@rank:attempt=action``; ``rank``
and ``attempt`` may be ``*``; ``action`` is ``kill`` (SIGKILL this process), ``raise`` (a
RuntimeError), ``hang`` (sleep for an hour) or ``wait:<path>`` (block until the file ``path``
exists, so a test holds a point open and releases it on an event). Rank -1 is the driver.
Points: ``rendezvous`` (a rank is about to join the process group), ``checkpoint_uploading``
(a rank's upload thread has moved the first file of a checkpoint into staging, not the rest),
``checkpoint_upload`` (a rank has copied its checkpoint into staging, not yet reported),
``checkpoint_commit`` (the driver has renamed a checkpoint into place, not yet written the
index). The variable is only for tests:
the driver reads it when ``fit()`` starts and hands it to its workers (``install``), so a
test sets it without restarting the runtime. Without it every point costs one lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "TRAINKIT_TEST_FAULTS"
_installed: str | None = None


def rules() -> str:
    """The fault rules in force in this process ("" for none)."""
    return _installed if _installed is not None else os.environ.get(ENV, "")


def install(fault_rules: str) -> None:
    """Use ``fault_rules`` in this process (a worker gets the driver's)."""
    global _installed
    _installed = fault_rules


def maybe(point: str, *, rank: int, attempt: int = 0) -> None:
    """Fail here if a rule in ``TRAINKIT_TEST_FAULTS`` names this point, rank and attempt."""
    current = rules()
    if not current:
        return
    for rule in current.split(","):
        where, _, action = rule.strip().partition("=")
        name, _, scope = where.partition("@")
        want_rank, _, want_attempt = scope.partition(":")
        if name != point or want_rank not in ("*", "", str(rank)) or \
                want_attempt not in ("*", "", str(attempt)):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "raise":
            raise RuntimeError(f"injected fault at {point} (rank {rank}, attempt {attempt})")
        elif action == "hang":
            time.sleep(3600)
        elif action.startswith("wait:"):
            _wait_for_file(action[len("wait:"):])


def _wait_for_file(path: str) -> None:
    # A test-only hook with no other event to wait on than the file appearing.
    while not os.path.exists(path):
        time.sleep(0.01)
