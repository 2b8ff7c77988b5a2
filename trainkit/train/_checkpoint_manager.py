"""Persisted checkpoints of one run: atomic commits, an index, and retention.

Layout of a run folder::

    checkpoint_000001/ ...          committed checkpoints (the index says which are live)
    checkpoints.json           the index: written atomically, after the data
    .staging/<key>/                 where workers copy a checkpoint before it is committed

A commit renames a complete staging folder to ``checkpoint_NNNNNN`` (atomic on one file
system), then rewrites the index (temporary file, fsync, rename), and only then deletes the
checkpoints retention dropped. A crash at any point leaves the index naming only complete
checkpoints; folders the index does not name are removed when the run folder is opened again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any

from trainkit._atomic import write_atomic
from trainkit.train import _faults
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._config import CheckpointConfig

INDEX_FILE = "checkpoints.json"
STAGING_DIR = ".staging"
_PREFIX = "checkpoint_"


def checkpoint_dir_name(number: int) -> str:
    """The folder of committed checkpoint ``number``: ``checkpoint_000001`` for 1."""
    return f"{_PREFIX}{number:06d}"


def checkpoint_number(name: str) -> int | None:
    """The number in a folder name ``checkpoint_NNNNNN``; None for any other name."""
    digits = name[len(_PREFIX):]
    return int(digits) if name.startswith(_PREFIX) and digits.isdigit() else None


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One committed checkpoint and the metrics reported with it."""

    number: int
    path: str
    metrics: dict[str, Any]

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.path)


class CheckpointManager:
    """Commits the checkpoints of the run in ``run_dir`` and applies ``CheckpointConfig``.

    Used by one thread of the driver (the controller, or the loop itself in local mode).
    """

    def __init__(self, run_dir: str, config: CheckpointConfig) -> None:
        self.run_dir = run_dir
        self.config = config
        self.records: list[CheckpointRecord] = []
        self.next_number = 1
        self._warned_missing = False
        index = os.path.join(run_dir, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                data = json.load(f)
            self.next_number = int(data["next_number"])
            self.records = [CheckpointRecord(int(r["number"]), os.path.join(run_dir, r["dir"]),
                                             dict(r["metrics"])) for r in data["checkpoints"]]
        self._remove_uncommitted()

    def _remove_uncommitted(self) -> None:
        live = {os.path.basename(r.path) for r in self.records}
        for name in os.listdir(self.run_dir) if os.path.isdir(self.run_dir) else ():
            path = os.path.join(self.run_dir, name)
            if name.startswith(_PREFIX) and name not in live and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
        self.clear_staging()

    @property
    def staging_root(self) -> str:
        return os.path.join(self.run_dir, STAGING_DIR)

    def staging_dir(self, key: str) -> str:
        return os.path.join(self.staging_root, key)

    def clear_staging(self) -> None:
        """Drop what a failed attempt staged but never committed."""
        shutil.rmtree(self.staging_root, ignore_errors=True)

    @property
    def latest(self) -> CheckpointRecord | None:
        return self.records[-1] if self.records else None

    def commit(self, staged: str, metrics: dict[str, Any]) -> CheckpointRecord:
        """Make the complete folder ``staged`` the run's newest checkpoint."""
        number = self.next_number
        path = os.path.join(self.run_dir, checkpoint_dir_name(number))
        os.replace(staged, path)
        self.next_number = number + 1
        record = CheckpointRecord(number, path, metrics)
        keep, drop = self._retain([*self.records, record])
        self.records = keep
        _faults.maybe("checkpoint_commit", rank=-1)
        self._write_index()
        for r in drop:
            shutil.rmtree(r.path, ignore_errors=True)
        return record

    def _write_index(self) -> None:
        index = {"next_number": self.next_number,
                 "checkpoints": [{"number": r.number, "dir": os.path.basename(r.path),
                                  "metrics": r.metrics} for r in self.records]}
        write_atomic(os.path.join(self.run_dir, INDEX_FILE),
                     json.dumps(index, default=repr).encode())

    def _score(self, record: CheckpointRecord) -> float:
        attr = self.config.checkpoint_score_attribute
        assert attr is not None
        value = record.metrics.get(attr)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not math.isnan(value):
            return float(value) if self.config.checkpoint_score_order == "max" else -float(value)
        if not self._warned_missing:
            self._warned_missing = True
            warnings.warn(f"checkpoint_score_attribute={attr!r} is not a number in the metrics "
                          f"reported with checkpoint {record.number} ({sorted(record.metrics)}); "
                          "such checkpoints rank last", stacklevel=2)
        return -math.inf

    def _retain(self, records: list[CheckpointRecord]
                ) -> tuple[list[CheckpointRecord], list[CheckpointRecord]]:
        """(kept, dropped): the ``num_to_keep`` best (or latest), and always the latest."""
        n = self.config.num_to_keep
        if n is None or len(records) <= n:
            return records, []
        if self.config.checkpoint_score_attribute is None:
            best = records[-n:]
        else:
            best = sorted(records, key=lambda r: (self._score(r), r.number))[-n:]
        kept = {r.number for r in best} | {records[-1].number}
        return ([r for r in records if r.number in kept],
                [r for r in records if r.number not in kept])

    def best_checkpoints(self) -> list[tuple[Checkpoint, dict[str, Any]]]:
        """Every kept checkpoint with its metrics, oldest first (as Ray's ``Result``)."""
        return [(r.checkpoint, r.metrics) for r in self.records]
