"""Persisted checkpoints of one run: atomic commits, an index, and retention.

Layout of a run folder::

    checkpoint_000001/ ...          committed checkpoints (the index says which are live)
    checkpoint_000001/.trainkit_data_positions.json
                                    where the run's dataset shards stood at that report
    checkpoints.json           the index: written atomically, after the data
    .staging/<key>/                 where workers copy a checkpoint before it is committed

The run folder is a ``StorageLocation`` (local or object storage; see ``_storage``). A
commit moves a complete staging folder to ``checkpoint_NNNNNN`` (a rename locally; a
server-side copy on object storage), then rewrites the index (atomically: a rename locally, a
single object put remotely), and only then deletes the checkpoints retention dropped. A crash
at any point leaves the index naming only complete checkpoints; folders the index does not
name are removed when the run folder is opened again.

Opening a run folder also repairs its index (``load_index``): checkpoint folders the index
names but that are gone are dropped with a warning (the run resumes from the newest intact
one), and an index that does not parse is rebuilt from the folders, with a warning naming
the file and the run folder.

Ranks upload their parts of one report's checkpoint into the same staging folder (a sharded
``torch.distributed.checkpoint`` writes ``__<rank>_0.distcp`` on each rank and ``.metadata``
on rank 0: merged, they are one checkpoint that loads on any world size). So that one rank's
file can never silently replace another's, each rank also writes a manifest of its files
(``.trainkit_rank_<R>.json``: path -> size and SHA-256). The commit reads every manifest
first: a path two ranks wrote with different contents fails the commit, naming the file and
the ranks; the same file from several ranks (every DDP rank saving the same weights) is fine.
The manifests are deleted before the folder becomes ``checkpoint_NNNNNN``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from trainkit._result_log import RESULT_FILE
from trainkit.train import _faults
from trainkit.train import _storage
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._config import CheckpointConfig
from trainkit.train._storage import StorageLocation

if TYPE_CHECKING:
    import pyarrow.fs  # type: ignore[import-untyped]

INDEX_FILE = "checkpoints.json"
# Written by the driver into a checkpoint's staging folder before the commit, so it is
# committed (and retained, and removed) with the checkpoint it belongs to.
DATA_POSITIONS_FILE = ".trainkit_data_positions.json"
STAGING_DIR = ".staging"
_PREFIX = "checkpoint_"
_MANIFEST_PREFIX = ".trainkit_rank_"
_MANIFEST = re.compile(re.escape(_MANIFEST_PREFIX) + r"(\d+)\.json")


class CheckpointConflictError(ValueError):
    """Two ranks reported a checkpoint file of the same name with different contents: merged
    into one folder, one would replace the other. The message names the file and the ranks."""


def manifest_name(rank: int) -> str:
    """The file in a staged checkpoint that lists what ``rank`` uploaded into it."""
    return f"{_MANIFEST_PREFIX}{rank}.json"


def write_manifest(local_dir: str, rank: int) -> None:
    """List the files of ``local_dir`` (a rank's snapshot of its checkpoint, about to be
    uploaded) with their sizes and SHA-256 in ``local_dir/.trainkit_rank_<rank>.json``."""
    files: dict[str, list[Any]] = {}
    for root, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            if _MANIFEST.fullmatch(rel):
                continue  # a stale manifest copied in with the user's folder
            files[rel] = [os.path.getsize(path), _sha256(path)]
    with open(os.path.join(local_dir, manifest_name(rank)), "w") as f:
        json.dump({"rank": rank, "files": files}, f)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find_conflicts(manifests: dict[int, dict[str, list[Any]]]) -> list[tuple[str, list[int]]]:
    """The files (path, ranks that wrote it) that ranks wrote with different contents, from
    each rank's ``{path: [size, sha256]}`` (pure)."""
    seen: dict[str, dict[tuple[Any, ...], list[int]]] = {}
    for rank in sorted(manifests):
        for path, entry in manifests[rank].items():
            seen.setdefault(path, {}).setdefault(tuple(entry), []).append(rank)
    return [(path, sorted(r for ranks in versions.values() for r in ranks))
            for path, versions in sorted(seen.items()) if len(versions) > 1]


def check_merged(staged: StorageLocation) -> None:
    """Fail if ranks wrote different files of one name into ``staged``; then drop the
    manifests (see the module docstring).

    Raises:
        CheckpointConflictError: naming the first files in conflict and their ranks.
    """
    manifests: dict[int, dict[str, list[Any]]] = {}
    for name, is_dir in _storage.list_dir(staged):
        m = _MANIFEST.fullmatch(name)
        if m is None or is_dir:
            continue
        data = _storage.read_file(staged.join(name))
        if data is None:
            continue
        try:
            manifests[int(m.group(1))] = dict(json.loads(data)["files"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"the checkpoint manifest {staged.join(name)} does not parse "
                             f"({type(e).__name__}: {e})") from e
    conflicts = find_conflicts(manifests)
    if conflicts:
        listed = "; ".join(f"{path!r} from ranks {ranks}" for path, ranks in conflicts[:5])
        raise CheckpointConflictError(
            f"ranks reported different files of the same name in one checkpoint (staged at "
            f"{staged}): {listed}. "
            "Every rank's checkpoint files are merged into one folder, so each rank must "
            "write files of its own names (as torch.distributed.checkpoint does: "
            "__<rank>_0.distcp), or only one rank (rank 0) reports those files")
    for name in (manifest_name(rank) for rank in manifests):
        _storage.delete_file(staged.join(name))


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
    path: str  # on ``filesystem`` (None: the local filesystem)
    metrics: dict[str, Any]
    filesystem: pyarrow.fs.FileSystem | None = None

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.path, self.filesystem)


def read_index(run: StorageLocation) -> list[CheckpointRecord] | None:
    """The intact committed checkpoints of ``run``; None if it has no index (nor, when the
    index is unreadable, any checkpoint folder to recover). Warns as ``load_index`` does."""
    loaded = load_index(run)
    return None if loaded is None else loaded.records


@dataclass(frozen=True, slots=True)
class LoadedIndex:
    records: list[CheckpointRecord]
    next_number: int
    repaired: bool  # the index on storage no longer matches ``records``: rewrite it
    recovered: bool  # rebuilt by scanning the folders (keep folders it could not place)


def load_index(run: StorageLocation) -> LoadedIndex | None:
    """Read the index of ``run``, repairing what a lost folder or a torn file broke.

    - Checkpoint folders the index names but that are gone are dropped, with a warning
      naming them and the checkpoint the run resumes from instead.
    - An index that does not parse (truncated, corrupt) is reported, naming the file and the
      run folder, and rebuilt from the ``checkpoint_NNNNNN`` folders: those ``result.json``
      names as committed (with the metrics reported with them), or, without such rows, every
      folder there.

    None if there is no index and nothing to recover.
    """
    fs = None if run.is_local else run.filesystem
    index = run.join(INDEX_FILE)
    data = _storage.read_file(index)
    if data is None:
        return None
    try:
        parsed = json.loads(data)
        records = [CheckpointRecord(int(r["number"]), run.join(str(r["dir"])).path,
                                    dict(r["metrics"]), fs) for r in parsed["checkpoints"]]
        next_number = int(parsed["next_number"])
        recovered = False
    except (ValueError, KeyError, TypeError) as e:
        records = _scan(run, fs)
        numbers = [n for n in (checkpoint_number(name) for name, d in _storage.list_dir(run)
                               if d) if n is not None]
        next_number = max(numbers, default=0) + 1
        found = f"recovered {[_name(r.path) for r in records]} from the checkpoint folders" \
            if records else "found no checkpoint folder to recover, so the run starts afresh"
        warnings.warn(f"the checkpoint index {index} of the run folder {run} is unreadable "
                      f"({type(e).__name__}: {e}); {found}", stacklevel=3)
        recovered = True
    present = {name for name, is_dir in _storage.list_dir(run) if is_dir}
    missing = [r for r in records if _name(r.path) not in present]
    if missing:
        records = [r for r in records if _name(r.path) in present]
        instead = f"the newest intact one, {_name(records[-1].path)}" if records else \
            "none (no checkpoint named there is left, so the run starts afresh)"
        warnings.warn(f"the checkpoint index {index} names "
                      f"{[_name(r.path) for r in missing]}, but those folders are missing from "
                      f"the run folder {run}; resuming from {instead}", stacklevel=3)
    next_number = max([next_number, *(r.number + 1 for r in records)])
    return LoadedIndex(records, next_number, bool(missing) or recovered, recovered)


def _scan(run: StorageLocation, fs: pyarrow.fs.FileSystem | None) -> list[CheckpointRecord]:
    """The committed checkpoints of ``run`` as its folders and ``result.json`` tell them."""
    folders = sorted((n, name) for name, is_dir in _storage.list_dir(run) if is_dir
                     for n in [checkpoint_number(name)] if n is not None)
    committed: dict[str, dict[str, Any]] = {}
    for line in (_storage.read_file(run.join(RESULT_FILE)) or b"").decode(
            errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if isinstance(row, dict) and isinstance(row.get("checkpoint_dir_name"), str):
            committed[row["checkpoint_dir_name"]] = {
                k: v for k, v in row.items()
                if k not in ("training_iteration", "timestamp", "checkpoint_dir_name")}
    if committed:
        folders = [(n, name) for n, name in folders if name in committed]
    return [CheckpointRecord(n, run.join(name).path, committed.get(name, {}), fs)
            for n, name in folders]


def write_data_positions(staged: StorageLocation, positions: dict[str, Any]) -> None:
    """Put the dataset positions (name -> ``DataPosition.to_json()``) into a staged
    checkpoint, before it is committed."""
    _storage.write_file(staged.join(DATA_POSITIONS_FILE), json.dumps(positions).encode())


def read_data_positions(checkpoint: StorageLocation) -> dict[str, Any] | None:
    """The dataset positions saved in a committed checkpoint; None if it has none (a run
    without datasets, or a checkpoint from before positions were saved).

    Raises:
        ValueError: the file is there but does not parse (names the file).
    """
    data = _storage.read_file(checkpoint.join(DATA_POSITIONS_FILE))
    if data is None:
        return None
    try:
        positions = json.loads(data)
    except ValueError as e:
        raise ValueError(f"the dataset positions {checkpoint.join(DATA_POSITIONS_FILE)} do not "
                         f"parse ({e}); delete the file to restart the datasets' epochs") from e
    if not isinstance(positions, dict):
        raise ValueError(f"the dataset positions {checkpoint.join(DATA_POSITIONS_FILE)} are "
                         f"not a JSON object; delete the file to restart the datasets' epochs")
    return positions


class CheckpointManager:
    """Commits the checkpoints of the run in ``run`` and applies ``CheckpointConfig``.

    Used by one thread of the driver (the controller, or the loop itself in local mode).
    """

    def __init__(self, run: StorageLocation | str, config: CheckpointConfig) -> None:
        run = run if isinstance(run, StorageLocation) else _storage.local_location(run)
        self.run = run
        self.config = config
        self.records: list[CheckpointRecord] = []
        self.next_number = 1
        self._warned_missing = False
        loaded = load_index(run)
        if loaded is not None:
            self.records = loaded.records
            self.next_number = loaded.next_number
            if loaded.repaired:
                self._write_index()
        # After a recovery, folders the scan could not place are left alone (never delete
        # what might be a user's only copy on a guess).
        self._remove_uncommitted(keep_unnamed=loaded is not None and loaded.recovered)

    def _remove_uncommitted(self, keep_unnamed: bool = False) -> None:
        live = {_name(r.path) for r in self.records}
        for name, is_dir in _storage.list_dir(self.run):
            if name.startswith(_PREFIX) and name not in live and is_dir and not keep_unnamed:
                _storage.delete_dir(self.run.join(name))
        self.clear_staging()

    @property
    def staging_root(self) -> StorageLocation:
        return self.run.join(STAGING_DIR)

    def staging_dir(self, key: str) -> StorageLocation:
        return self.staging_root.join(key)

    def clear_staging(self) -> None:
        """Drop what a failed attempt staged but never committed."""
        _storage.delete_dir(self.staging_root)

    @property
    def latest(self) -> CheckpointRecord | None:
        return self.records[-1] if self.records else None

    def latest_data_positions(self) -> dict[str, Any] | None:
        """The dataset positions saved with the latest committed checkpoint, if any."""
        latest = self.latest
        return None if latest is None else \
            read_data_positions(self.run.join(_name(latest.path)))

    def commit(self, staged: StorageLocation | str, metrics: dict[str, Any]
               ) -> CheckpointRecord:
        """Make the complete folder ``staged`` the run's newest checkpoint.

        Raises:
            CheckpointConflictError: ranks wrote different files of one name into it.
        """
        if not isinstance(staged, StorageLocation):
            staged = _storage.local_location(staged)
        check_merged(staged)
        number = self.next_number
        target = self.run.join(checkpoint_dir_name(number))
        _storage.move_dir(staged, target)
        self.next_number = number + 1
        record = CheckpointRecord(number, target.path, metrics,
                                  None if self.run.is_local else self.run.filesystem)
        keep, drop = self._retain([*self.records, record])
        self.records = keep
        _faults.maybe("checkpoint_commit", rank=-1)
        self._write_index()
        for r in drop:
            _storage.delete_dir(self.run.join(_name(r.path)))
        return record

    def _write_index(self) -> None:
        index = {"next_number": self.next_number,
                 "checkpoints": [{"number": r.number, "dir": _name(r.path),
                                  "metrics": r.metrics} for r in self.records]}
        _storage.write_file(self.run.join(INDEX_FILE), json.dumps(index, default=repr).encode())

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


def _name(path: str) -> str:
    return path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
