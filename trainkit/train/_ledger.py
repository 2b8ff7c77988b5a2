"""``RunLedger``: what happened in a run, as appended events in ``ledger.jsonl`` in its folder.

It is the one record ``trainkit report`` reads (see ``_goodput``): no other file holds the
same state. One JSON object a line, each with

- ``v``: the schema version (1);
- ``seq``: 1, 2, ... over the life of the folder (a resumed run continues the count);
- ``t``: wall-clock seconds since the epoch, taken as ``time.time()`` once when the ledger is
  opened plus ``time.monotonic()`` since then, so it never goes back within one process;
- ``event`` and the event's fields:

```text
run_started          name, kind ("train"), storage, num_workers, resumed
attempt_started      attempt, world_size
workers_started      attempt                       (every rank's actor answered)
rendezvous_done      attempt                       (the process group formed)
first_report         attempt
report               attempt, iteration, step_s, checkpoint
checkpoint_snapshotted  attempt, iteration, snapshot_s   (the longest any rank's report()
                                                          was blocked copying its files)
checkpoint_committed attempt, iteration, dir, commit_s
rank_failed          attempt, rank, node, error_type, message
attempt_failed       attempt, decision ("restart" | "raise"), reason, message
attempt_finished     attempt                       (every rank's loop returned)
run_finished         iterations
run_failed           error_type, message
```

A Tune sweep writes the same format to ``ledger.jsonl`` in its experiment folder (through
``trainkit.train.hosting``; the events are listed in ``trainkit.tune._sweep_ledger``): it
starts with ``sweep_started`` where a run starts with ``run_started``, which is how a reader
tells the two apart.

Cost: ``append`` only buffers a line. The buffer is written at the moments that matter (the
run and each attempt starting, a checkpoint committed, a failure, the end) and otherwise at
most every ``flush_interval_s``. On local storage a write appends to the file; on object
storage, which cannot append, it rewrites the whole file with one put (atomic: readers see
the old content or the new). Ledgers are small (about 150 bytes a report), so a rewrite at
those moments costs one small upload.

A write that fails is retried at the next flush and said once on stderr: the ledger never
fails a run. On local storage the file stays open for appending (one ``write`` a flush) until
``close()`` or the ledger is dropped. Used from one thread (the driver's controller, or the
local-mode loop).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any
from typing import Final

from trainkit.train import _storage
from trainkit.train._storage import StorageLocation

LEDGER_FILE: Final = "ledger.jsonl"
SCHEMA_VERSION: Final = 1
FLUSH_INTERVAL_S: Final = 10.0
# Events written as soon as they happen: the moments `trainkit report` must not miss.
_FLUSH_AT: Final = frozenset({"run_started", "attempt_started", "checkpoint_committed",
                              "attempt_failed", "attempt_finished", "run_finished",
                              "run_failed",
                              # a sweep's: every trial's start and end (results are buffered)
                              "sweep_started", "trial_started", "trial_paused",
                              "trial_stopped", "trial_errored", "trial_completed",
                              "sweep_finished", "sweep_failed"})
_MESSAGE_CHARS: Final = 500
# One encoder for every line: json.dumps(default=...) would build a new one per call.
_ENCODER: Final = json.JSONEncoder(default=repr)


class RunLedger:
    """The ledger of the run folder ``run``; see the module docstring."""

    def __init__(self, run: StorageLocation, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.location = run.join(LEDGER_FILE)
        self.flush_interval_s = flush_interval_s
        existing = _storage.read_file(self.location) or b""
        self.seq = _last_seq(existing)
        self._buffer: list[bytes] = []
        # Object storage cannot append, so a flush rewrites the whole file: keep what is there.
        self._written = b"" if self.location.is_local else existing
        if existing and not existing.endswith(b"\n"):  # end a line torn by a crash
            if self.location.is_local:
                self._buffer.append(b"\n")
            else:
                self._written += b"\n"
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._last_flush = self._mono0
        self._warned = False
        self._fd: int | None = None  # local storage: the file, open for appending

    def now(self) -> float:
        """This ledger's clock: wall-clock seconds that never go back in this process."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def append(self, event: str, *, t: float | None = None, **fields: Any) -> None:
        """Buffer one event (``t``: when it happened, default now); flush if it matters."""
        self.seq += 1
        record = {"v": SCHEMA_VERSION, "seq": self.seq, "t": round(self.now() if t is None
                                                                    else t, 6),
                  "event": event, **fields}
        self._buffer.append(_ENCODER.encode(record).encode() + b"\n")
        if event in _FLUSH_AT or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered events to storage."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        try:
            if self.location.is_local:
                self._append_local(data)
            else:
                _storage.write_file(self.location, self._written + data)
                self._written += data
        except OSError as e:
            if not self._warned:
                self._warned = True
                print(f"[trainkit] the run ledger {self.location} could not be written "
                      f"({type(e).__name__}: {e}); retrying at the next checkpoint",
                      file=sys.stderr, flush=True)
            return
        self._buffer = []

    def _append_local(self, data: bytes) -> None:
        # One descriptor for the ledger's life: a flush is one write(2), no open/close.
        if self._fd is None:
            os.makedirs(os.path.dirname(self.location.path), exist_ok=True)
            self._fd = os.open(self.location.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                               0o644)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            fd, self._fd = self._fd, None
            os.close(fd)  # reopened at the next flush
            raise

    def close(self) -> None:
        """Write what is buffered and let go of the file (the ledger may be used again)."""
        if self._buffer:
            self.flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def error_fields(error: BaseException) -> dict[str, Any]:
    """``error_type`` and ``message`` of an error; a rank's own error if it came wrapped."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    message = str(error)
    if len(message) > _MESSAGE_CHARS:
        message = message[:_MESSAGE_CHARS - 3] + "..."
    return {"error_type": type(error).__name__, "message": message}


def read_ledger(run: StorageLocation) -> tuple[list[dict[str, Any]], int] | None:
    """The events of the run folder ``run`` in order, and how many lines could not be read
    (a line torn by a crash); None if the folder has no ledger."""
    data = _storage.read_file(run.join(LEDGER_FILE))
    return None if data is None else parse_ledger(data)


def parse_ledger(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events in a ledger file's bytes, and how many lines could not be read (pure)."""
    events: list[dict[str, Any]] = []
    damaged = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("t"), (int, float)) \
                or not isinstance(record.get("event"), str):
            damaged += 1
            continue
        events.append(record)
    return events, damaged


def _last_seq(data: bytes) -> int:
    for line in reversed(data.splitlines()):
        try:
            seq = json.loads(line).get("seq")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(seq, int):
            return seq
    return 0
