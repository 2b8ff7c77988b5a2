"""``StorageReader``: the runs and sweeps under a storage folder.

A run or a sweep is a folder right under the storage (``<storage_path>/<name>``) holding a
``ledger.jsonl``; a sweep's trials are the folders right under it. Names come only from
listing the storage, never from a request's path, so a URL cannot reach outside it.

Object storage (``s3://...``, ``gs://...``) is read through the storage layer
(``trainkit.train.hosting``: ``list_dir``, ``read_file`` on a ``StorageLocation``). A local
folder is read with ``os`` directly: the same two operations, without importing pyarrow,
which would triple the idle memory of a dashboard that only looks at local runs (about
40 MB of its 70). Either way the bytes go to the one ledger parser (``parse_ledger``).
Holds no state: every call reads what is there now, so it is thread-safe.
"""

from __future__ import annotations

import os
from typing import Any
from typing import Protocol

from trainkit.dashboard._model import Entry
from trainkit.dashboard._model import entry_of
from trainkit.dashboard._model import parse_results
from trainkit.dashboard._model import summary_of
from trainkit.train.hosting import LEDGER_FILE
from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import list_dir
from trainkit.train.hosting import parse_ledger
from trainkit.train.hosting import read_file

RESULT_FILE = "result.json"


class Folder(Protocol):
    """A folder to read: local or on a ``pyarrow.fs`` filesystem."""

    uri: str

    def child(self, name: str) -> Folder: ...

    def dirs(self) -> list[str]:
        """The names of the folders right under this one, sorted; [] if it does not exist."""
        ...

    def read(self, name: str) -> bytes | None:
        """The bytes of the file ``name`` right here; None if there is none."""
        ...


class LocalFolder:
    def __init__(self, path: str) -> None:
        self.uri = path

    def child(self, name: str) -> LocalFolder:
        return LocalFolder(os.path.join(self.uri, name))

    def dirs(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.uri) if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.uri, name), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None


class StoreFolder:
    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self.uri = location.uri

    def child(self, name: str) -> StoreFolder:
        return StoreFolder(self.location.join(name))

    def dirs(self) -> list[str]:
        return sorted(name for name, is_dir in list_dir(self.location) if is_dir)

    def read(self, name: str) -> bytes | None:
        return read_file(self.location.join(name))


class StorageReader:
    """Reads the storage folder ``root``; see the module docstring."""

    def __init__(self, root: Folder) -> None:
        self.root = root

    @property
    def uri(self) -> str:
        return self.root.uri

    def entries(self) -> tuple[list[Entry], list[str]]:
        """Every run and sweep, and a line for each folder whose ledger cannot be read."""
        entries: list[Entry] = []
        problems: list[str] = []
        if self.root.read(LEDGER_FILE) is not None:
            problems.append(f"{self.root.uri} is itself a run or a sweep: the dashboard lists "
                            "the folders under its --storage, so pass its parent folder")
        for name in self.root.dirs():
            try:
                found = self._load(name)
            except OSError as e:
                problems.append(f"{self.root.child(name).uri}: cannot be read ({e})")
                continue
            if found is not None:
                events, summary = found
                entries.append(entry_of(name, summary, events))
        return entries, problems

    def load(self, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """(events, report) of the run or sweep ``name``; None if it is not one."""
        return self._load(name) if name in self.root.dirs() else None

    def _load(self, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        data = self.root.child(name).read(LEDGER_FILE)
        if data is None:
            return None
        events, damaged = parse_ledger(data)
        summary = summary_of(events, damaged)
        return None if summary is None else (events, summary)

    def results(self, name: str, trial: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """The rows of ``result.json`` of run ``name`` (or of its trial ``trial``), and how
        many lines could not be read; ([], 0) when there is none."""
        if name not in self.root.dirs():
            return [], 0
        folder = self.root.child(name)
        if trial is not None:
            if trial not in folder.dirs():
                return [], 0
            folder = folder.child(trial)
        data = folder.read(RESULT_FILE)
        return parse_results(data) if data else ([], 0)
