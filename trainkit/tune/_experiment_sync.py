"""``ExperimentFolder``: the driver's local folder of an experiment, mirrored to its storage.

The runner writes the experiment's own files (the journal, ``optuna.journal``,
``search_state.pkl``, ``tuner.pkl``, ``fingerprint``, each trial's ``params.json``) into a
local folder. With local storage that folder *is* the experiment folder. With remote storage
(``RunConfig(storage_path="s3://...")``) it is a temporary folder: opened holding the
experiment's top-level files (a restore or a rerun continues them), uploaded whole file by
whole file (each an atomic object put) when they changed, at most every ``SYNC_PERIOD_S``
and always at the end, then deleted. So a driver killed mid-sweep loses at most that period
of journal lines; the trials' results and checkpoints are written by the trials themselves,
straight to storage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import list_dir
from trainkit.train.hosting import read_file
from trainkit.train.hosting import write_file

SYNC_PERIOD_S = 2.0


class ExperimentFolder:
    """See the module docstring. Used from the driver's runner thread."""

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self._seen: dict[str, tuple[int, int]] = {}
        self._last_sync = 0.0
        self._temp: str | None = None
        if location.is_local:
            self.local_dir = location.path
            os.makedirs(self.local_dir, exist_ok=True)
            return
        self._temp = tempfile.mkdtemp(prefix="trainkit-experiment-")
        self.local_dir = os.path.join(self._temp, location.name)
        os.makedirs(self.local_dir)
        for name, is_dir in list_dir(location):
            data = None if is_dir else read_file(location.join(name))
            if data is not None:
                path = os.path.join(self.local_dir, name)
                with open(path, "wb") as f:
                    f.write(data)
                self._seen[name] = _stamp(path)

    def sync(self, force: bool = False) -> None:
        """Upload every local file that changed since the last sync (remote storage only)."""
        if self._temp is None or not (force or time.monotonic() - self._last_sync
                                      >= SYNC_PERIOD_S):
            return
        self._last_sync = time.monotonic()
        for root, _, files in os.walk(self.local_dir):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, self.local_dir)
                stamp = _stamp(path)
                if self._seen.get(rel) != stamp and not name.endswith((".tmp", ".lock")):
                    with open(path, "rb") as f:
                        write_file(self.location.join(*rel.split(os.sep)), f.read())
                    self._seen[rel] = stamp

    def close(self) -> None:
        """A last upload, then the local folder goes (remote storage only)."""
        if self._temp is not None:
            self.sync(force=True)
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
