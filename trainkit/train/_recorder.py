"""``RunRecorder``: what the driver does with each iteration all ranks reported.

It commits the checkpoint (if any), appends rank 0's metrics to ``result.json``,
``progress.csv`` and TensorBoard, calls the run's callbacks and updates the one progress line.

When the run's storage is remote, those three files are written to a local folder of the
driver and uploaded after every report (whole files: they are small), so the bucket holds
every reported row once ``report()`` returns; a rerun downloads ``result.json`` and
``progress.csv`` to continue them. TensorBoard events go to a new file per session.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
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

    def update(self, iteration: int, metrics: dict[str, Any]) -> None:
        if not self.verbose:
            return
        shown = " ".join(f"{k}={_short(v)}" for k, v in list(metrics.items())[:6])
        elapsed = time.monotonic() - self.start
        self.text = f"[trainkit] {self.name}: iter {iteration} {shown} ({elapsed:.1f} s)"
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

