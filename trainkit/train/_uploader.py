"""``ReportQueue``: one rank's reports on their way to the driver, strictly in report order.

``report(metrics, checkpoint=..., checkpoint_upload_mode="async")`` (the default) returns once
the checkpoint's files are *snapshotted*: copied (never hard-linked: the loop may rewrite a
file in place) into a staging folder of this process on the node's local disk. The loop may
delete or rewrite its folder as soon as ``report`` returns. A background thread then lists
the snapshot's files in a manifest (sizes and SHA-256: the commit refuses a file two ranks
wrote differently, see ``_checkpoint_manager``), moves it into the run's staging folder in
storage and only then hands the report to the
driver, which commits the checkpoint once every rank's files of that report are uploaded.
``"sync"`` does the same and returns once the driver has committed the report.

```text
report() --snapshot--> todo --upload thread--> outbox --poll()--> driver --commit--> ack
```

Backpressure: at most ``MAX_PENDING_CHECKPOINTS`` (2) checkpoints of a rank are snapshotted
but not yet committed. A ``report`` with a checkpoint beyond that blocks, saying so once on
stderr, until the oldest is committed, so a loop never outruns its storage (nor fills the
local disk). Reports without a checkpoint never block in async mode; they queue behind the
uploads so that the driver still sees every report in order.

An upload that fails is the rank's failure: the next ``report`` and the driver's next ``poll``
raise it, with the storage path and the cause, and the attempt fails like a rank error.

Snapshot folders are named ``trainkit-snapshots-<pid>-*`` in the temp folder; a new queue
removes those of processes that no longer run (a SIGKILLed rank cannot clean up after itself).

Thread-safety: ``put`` is called from the loop's thread, ``ack``/``take`` from the driver's
poll (another actor thread); everything they share is guarded by one condition variable.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Final

from trainkit.exceptions import CheckpointUploadError
from trainkit.train import _faults
from trainkit.train import _storage
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import write_manifest
from trainkit.train._storage import StorageLocation

UPLOAD_MODES: Final = ("async", "sync")
# How many checkpoints of one rank may be snapshotted but not yet committed.
MAX_PENDING_CHECKPOINTS: Final = 2
_SNAPSHOT_PREFIX: Final = "trainkit-snapshots-"


def check_upload_mode(mode: object) -> None:
    """A ``ValueError`` naming a bad ``checkpoint_upload_mode`` and the valid ones (pure)."""
    if mode not in UPLOAD_MODES:
        raise ValueError(
            f"train.report(checkpoint_upload_mode={mode!r}): use 'async' (the default: return "
            "once the checkpoint's files are copied aside, upload in the background) or "
            "'sync' (return once the checkpoint is committed)")


@dataclass(frozen=True, slots=True)
class Report:
    """One ``report()`` of one rank, as the driver receives it."""

    seq: int  # 1, 2, ... within this attempt
    rank: int
    metrics: dict[str, Any]
    staged: StorageLocation | None  # the staging folder the rank uploaded its checkpoint to
    snapshot_s: float = 0.0  # how long report() was blocked copying the checkpoint aside


def staging_key(attempt: int, seq: int) -> str:
    return f"a{attempt:04d}-{seq:06d}"


class ReportQueue:
    """See the module docstring. ``close`` stops the thread and removes the snapshots."""

    def __init__(self, rank: int, attempt: int, staging_root: StorageLocation) -> None:
        self.rank = rank
        self.attempt = attempt
        self.staging_root = staging_root
        self.cv = threading.Condition()
        self.seq = 0  # the last report() call
        self.acked = 0  # the last report the driver committed
        self.outbox: list[Report] = []
        self.error: CheckpointUploadError | None = None
        self._todo: collections.deque[tuple[int, dict[str, Any], str | None, float]] = \
            collections.deque()
        self._pending: collections.deque[int] = collections.deque()  # seqs with a snapshot
        self._closed = False
        self._takes = 0  # how many take() calls began (the newest one waits, older ones end)
        self._snapshots: str | None = None
        self._thread: threading.Thread | None = None
        self.say: Callable[[str], None] = _say  # where the "report() waits" line goes

    # -- the loop's side --------------------------------------------------------------------
    def put(self, metrics: dict[str, Any], checkpoint: Checkpoint | None, mode: str) -> None:
        check_upload_mode(mode)
        self._raise_error()
        seq = self.seq + 1
        snapshot = None
        began = time.monotonic()
        if checkpoint is not None:
            self._wait_for_slot()
            snapshot = os.path.join(self._snapshot_root(), f"{seq:06d}")
            checkpoint.to_directory(snapshot)
        blocked = time.monotonic() - began if checkpoint is not None else 0.0
        with self.cv:
            self.seq = seq
            if snapshot is not None:
                self._pending.append(seq)
            self._todo.append((seq, metrics, snapshot, blocked))
            self.cv.notify_all()
        self._start()
        if mode == "sync":
            self.wait_committed(seq)

    def wait_committed(self, seq: int | None = None) -> None:
        """Block until the driver committed report ``seq`` (default: the last one)."""
        target = self.seq if seq is None else seq
        with self.cv:
            self.cv.wait_for(lambda: self.acked >= target or self.error is not None)
        if self.acked < target:
            self._raise_error()

    def _wait_for_slot(self) -> None:
        with self.cv:
            if len(self._pending) >= MAX_PENDING_CHECKPOINTS and self.error is None:
                self.say(f"[trainkit] rank {self.rank}: report() waits: {len(self._pending)} "
                         f"checkpoints of this rank are still uploading to "
                         f"{self.staging_root} (at most {MAX_PENDING_CHECKPOINTS} wait at "
                         "once); it returns once the oldest is committed")
            self.cv.wait_for(lambda: len(self._pending) < MAX_PENDING_CHECKPOINTS
                             or self.error is not None)
        self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    # -- the driver's side (poll) -----------------------------------------------------------
    def ack(self, seq: int) -> None:
        """The driver committed every report up to ``seq``."""
        with self.cv:
            if seq <= self.acked:
                return
            self.acked = seq
            while self._pending and self._pending[0] <= seq:
                self._pending.popleft()
            self.cv.notify_all()

    def take(self, wait_s: float) -> list[Report]:
        """The uploaded reports not yet taken, waiting up to ``wait_s`` for one; raises the
        upload error once every report uploaded before it was taken. A newer ``take`` ends
        this one's wait (it returns empty): a waiting long poll must not hold one of the
        actor's few threads while the driver's newer poll, which carries its ack, waits."""
        with self.cv:
            self._takes += 1
            mine = self._takes
            self.cv.notify_all()
            self.cv.wait_for(lambda: bool(self.outbox) or self.error is not None
                             or self._takes != mine, wait_s)
            out, self.outbox = self.outbox, []
        if not out:
            self._raise_error()
        return out

    # -- the upload thread ------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"trainkit-upload-rank{self.rank}")
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: bool(self._todo) or self._closed)
                if self._closed:
                    return
                seq, metrics, snapshot, blocked = self._todo.popleft()
            staged = None
            if snapshot is not None:
                staged = self.staging_root.join(staging_key(self.attempt, seq))
                try:
                    write_manifest(snapshot, self.rank)
                    _storage.move_into(snapshot, staged, after_first=lambda: _faults.maybe(
                        "checkpoint_uploading", rank=self.rank, attempt=self.attempt))
                    _faults.maybe("checkpoint_upload", rank=self.rank, attempt=self.attempt)
                except Exception as e:
                    with self.cv:
                        if self._closed:  # close() removed the snapshot under it: the
                            return        # rank's failure is what closed it, not this
                    error = CheckpointUploadError(
                        f"rank {self.rank} could not upload its checkpoint of report {seq} to "
                        f"{staged}: {type(e).__name__}: {e}")
                    error.__cause__ = e
                    with self.cv:
                        self.error = error
                        self.cv.notify_all()
                    return
            with self.cv:
                self.outbox.append(Report(seq, self.rank, metrics, staged, blocked))
                self.cv.notify_all()

    def close(self) -> None:
        """Stop the upload thread (after the upload it is in, if any); drop the snapshots."""
        with self.cv:
            self._closed = True
            self.cv.notify_all()
        if self._snapshots is not None:
            shutil.rmtree(self._snapshots, ignore_errors=True)

    def _snapshot_root(self) -> str:
        if self._snapshots is None:
            remove_stale_snapshots()
            self._snapshots = tempfile.mkdtemp(prefix=f"{_SNAPSHOT_PREFIX}{os.getpid()}-")
        return self._snapshots


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def remove_stale_snapshots(folder: str | None = None) -> None:
    """Delete the snapshot folders in ``folder`` (the temp folder) of processes now gone."""
    folder = folder or tempfile.gettempdir()
    pattern = re.compile(re.escape(_SNAPSHOT_PREFIX) + r"(\d+)-")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
