"""``RunRecorder``: what the driver does with each iteration all ranks reported.

It commits the checkpoint (if any), appends rank 0's metrics to ``result.json``,
``progress.csv`` and TensorBoard, calls the run's callbacks and updates the one progress line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any
from typing import TextIO

from trainkit._result_log import ResultLog
from trainkit._result_log import count_results
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import CheckpointManager
from trainkit.train._checkpoint_manager import CheckpointRecord
from trainkit.train._config import RunConfig


class ProgressLine:
    """One quiet console line: rewritten in place on a terminal, else printed every few
    seconds; ``verbose=2`` prints every report, ``verbose=0`` nothing."""

    def __init__(self, name: str, verbose: int, stream: TextIO | None = None) -> None:
        self.name = name
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_print = 0.0
        self.text = ""
        self.open_line = False

    def update(self, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.verbose:
            return
        shown = " ".join(f"{k}={_short(v)}" for k, v in list(metrics.items())[:6])
        elapsed = time.monotonic() - self.start
        self.text = f"[trainkit] {self.name}: iter {iteration} {shown} ({elapsed:.1f} s)"
        now = time.monotonic()
        if self.verbose == 2 or (not self.tty and now - self.last_print >= 5.0):
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


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 20 else text[:17] + "..."


class RunRecorder:
    """Records the reported iterations of one run folder. Used from one thread."""

    def __init__(self, run_dir: str, run_config: RunConfig, name: str) -> None:
        self.run_dir = run_dir
        self.callbacks = run_config.callbacks
        self.checkpoints = CheckpointManager(run_dir, run_config.checkpoint_config)
        self.iteration = count_results(run_dir)
        self.log = ResultLog(run_dir)
        self.progress = ProgressLine(name, run_config.verbose)
        self.metrics: dict[str, Any] = {}

    def record(self, metrics: dict[str, Any], staged: str | None) -> CheckpointRecord | None:
        """Record one iteration: rank 0's ``metrics`` and the merged checkpoint in ``staged``."""
        self.iteration += 1
        saved = self.checkpoints.commit(staged, metrics) if staged else None
        row = {**metrics, "training_iteration": self.iteration, "timestamp": time.time()}
        if saved is not None:
            row["checkpoint_dir_name"] = os.path.basename(saved.path)
        self.log.append(row, step=self.iteration)
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
        self.checkpoints.clear_staging()

