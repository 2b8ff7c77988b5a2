"""``RunRecorder``: what the driver does with each iteration all ranks reported.

It commits the checkpoint (if any), appends rank 0's metrics to ``result.json``,
``progress.csv`` and TensorBoard, calls the run's callbacks and updates the one progress line.

When the run's storage is remote, those three files are written to a local folder of the
driver and uploaded after every report (whole files: they are small), so the bucket holds
every reported row once ``report()`` returns; a rerun downloads ``result.json`` and
``progress.csv`` to continue them. TensorBoard events go to a new file per session.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import TextIO

from trainkit._display import Text
from trainkit._display import notebook_handle
from trainkit._result_log import PROGRESS_FILE
from trainkit._result_log import RESULT_FILE
from trainkit._result_log import ResultLog
from trainkit._result_log import count_results
from trainkit.train import _storage
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import CheckpointManager
from trainkit.train._checkpoint_manager import CheckpointRecord
from trainkit.train._config import RunConfig
from trainkit.train._storage import StorageLocation


class ProgressLine:
    """One quiet progress display on stdout: in a notebook one display updated in place; on
    a terminal one line rewritten in place; elsewhere a line every few seconds.
    ``verbose=2`` prints every report, ``verbose=0`` nothing. (stderr is for warnings.)"""

    def __init__(self, name: str, verbose: int, stream: TextIO | None = None) -> None:
        self.name = name
        self.verbose = verbose
        self.notebook = notebook_handle() if verbose and stream is None else None
        self.stream = stream or sys.stdout
        self.tty = _isatty(self.stream)
        self.start = time.monotonic()
        self.last_print = 0.0
        self.text = ""
        self.open_line = False
        self.straggler: str | None = None  # e.g. "rank 1 (node 10.0.0.2) 2.0x slower"

    def update(self, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.verbose:
            return
        shown = " ".join(f"{k}={_short(v)}" for k, v in list(metrics.items())[:6])
        elapsed = time.monotonic() - self.start
        slow = f"; straggler: {self.straggler}" if self.straggler else ""
        self.text = f"[trainkit] {self.name}: iter {iteration} {shown} ({elapsed:.1f} s{slow})"
        now = time.monotonic()
        if self.notebook is not None and self.verbose == 1:
            self.notebook.update(Text(self.text))
        elif self.verbose == 2 or (not self.tty and now - self.last_print >= 5.0):
            self.last_print = now
            self._write(self.text + "\n")
        elif self.tty:
            self._write("\r\x1b[K" + self.text[:200])
            self.open_line = True

    def say(self, message: str) -> None:
        """A message on a line of its own (resuming, restarting, finished)."""
        if self.verbose:
            self._write(("\n" if self.open_line else "") + f"[trainkit] {message}\n")
            self.open_line = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@dataclass(frozen=True, slots=True)
class Straggler:
    """A rank much slower than the others: ``slowdown`` times their time per report
    (``math.inf``: the others keep waiting for it), ``behind_s`` its typical delay."""

    rank: int
    slowdown: float
    behind_s: float

    def describe(self, node: str | None) -> str:
        where = f" (node {node})" if node else ""
        times = "" if math.isinf(self.slowdown) else \
            "over 10x slower, " if self.slowdown > 10 else f"{self.slowdown:.1f}x slower, "
        return f"rank {self.rank}{where} {times}reports {self.behind_s:.2f} s after the others"


STRAGGLER_WINDOW = 8  # iterations the straggler decision looks back over
STRAGGLER_SLOWDOWN = 1.5  # "much slower": at least this many times the others' time per step
STRAGGLER_MIN_GAP_S = 0.05  # and at least this much later: below it, polling jitter


def find_straggler(arrivals: Sequence[Mapping[int, float]],
                   min_slowdown: float = STRAGGLER_SLOWDOWN,
                   min_gap_s: float = STRAGGLER_MIN_GAP_S) -> Straggler | None:
    """The rank much slower than the others, from when each rank's report of each of the
    last iterations reached the driver (``arrivals``: one ``{rank: time}`` per iteration,
    oldest first), or None (pure).

    Two patterns: ranks that do not wait for each other (no collective per step) report at
    their own pace, so the slow one's time per report is longer; ranks that meet once per
    report (e.g. ``checkpoint_upload_mode="sync"``) report together except the slow one,
    which is late by the time the others wait for it. Ranks that meet in a collective
    *inside* each step (DDP) leave it together and report together: that slowness is not
    visible here (the collective's wait hides it). Medians keep one slow step (a checkpoint,
    an evaluation) from naming a rank."""
    if len(arrivals) < 4 or len(arrivals[-1]) < 2:
        return None
    ranks = sorted(set.intersection(*(set(a) for a in arrivals)))
    if len(ranks) < 2:
        return None
    steps = len(arrivals) - 1
    own = {r: statistics.median(arrivals[i + 1][r] - arrivals[i][r] for i in range(steps))
           for r in ranks}
    lag = {r: statistics.median(a[r] - min(a[q] for q in ranks) for a in arrivals)
           for r in ranks}
    slowest = max(ranks, key=lambda r: (lag[r], own[r]))
    fast = statistics.median(own[r] for r in ranks if r != slowest)
    period = own[slowest]
    slowdown = period / fast if fast > 0 else math.inf  # ranks at their own pace
    if lag[slowest] < period:  # ranks that meet every report: the others wait `lag`
        slowdown = max(slowdown, period / (period - lag[slowest]))
    elif lag[slowest] > 0 and fast <= 0:
        slowdown = math.inf
    gap = max(lag[slowest], period - fast)
    if gap < min_gap_s or slowdown < min_slowdown:
        return None
    return Straggler(slowest, slowdown, lag[slowest])


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 20 else text[:17] + "..."


class RunRecorder:
    """Records the reported iterations of one run folder. Used from one thread."""

    def __init__(self, run: StorageLocation, run_config: RunConfig, name: str) -> None:
        self.run = run
        self.run_dir = run.uri
        self.callbacks = run_config.callbacks
        self.checkpoints = CheckpointManager(run, run_config.checkpoint_config)
        self.logs = ResultFiles(run)
        self.iteration = count_results(self.logs.local_dir)
        self.log = ResultLog(self.logs.local_dir)
        self.progress = ProgressLine(name, run_config.verbose)
        self.metrics: dict[str, Any] = {}

    def record(self, metrics: dict[str, Any],
               staged: StorageLocation | None) -> CheckpointRecord | None:
        """Record one iteration: rank 0's ``metrics`` and the merged checkpoint in ``staged``."""
        self.iteration += 1
        saved = self.checkpoints.commit(staged, metrics) if staged else None
        row = {**metrics, "training_iteration": self.iteration, "timestamp": time.time()}
        if saved is not None:
            row["checkpoint_dir_name"] = os.path.basename(saved.path)
        self.log.append(row, step=self.iteration)
        self.logs.sync()
        self.metrics = metrics
        checkpoint = saved.checkpoint if saved else None
        for cb in self.callbacks:
            if hasattr(cb, "on_report"):
                cb.on_report(metrics, checkpoint)
        self.progress.update(self.iteration, metrics)
        return saved

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        latest = self.checkpoints.latest
        return latest.checkpoint if latest else None

    def close(self) -> None:
        self.log.close()
        self.logs.close()
        self.checkpoints.clear_staging()


class ResultFiles:
    """The local folder a ``ResultLog`` of a run writes into, uploaded to the run's storage.

    For local storage it is the run folder itself and ``sync`` does nothing. For remote
    storage it is a temporary folder: created holding the run's ``result.json`` and
    ``progress.csv`` (a resumed run continues them), uploaded file by file by ``sync`` (only
    files that changed), and deleted by ``close`` after a last upload.
    """

    def __init__(self, run: StorageLocation) -> None:
        self.run = run
        self._sizes: dict[str, int] = {}
        if run.is_local:
            self.local_dir = run.path
            return
        self.local_dir = _storage.temp_dir("trainkit-run-")
        for name in (RESULT_FILE, PROGRESS_FILE):
            data = _storage.read_file(run.join(name))
            if data is not None:
                with open(os.path.join(self.local_dir, name), "wb") as f:
                    f.write(data)
                self._sizes[name] = len(data)

    def sync(self) -> None:
        """Upload every file of the local folder that changed since the last sync."""
        if self.run.is_local:
            return
        for entry in os.scandir(self.local_dir):
            size = entry.stat().st_size
            if entry.is_file() and self._sizes.get(entry.name) != size:
                _storage.upload_file(entry.path, self.run.join(entry.name))
                self._sizes[entry.name] = size

    def close(self) -> None:
        if not self.run.is_local and os.path.isdir(self.local_dir):
            self.sync()
            shutil.rmtree(self.local_dir, ignore_errors=True)

