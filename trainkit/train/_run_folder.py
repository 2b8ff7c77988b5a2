"""Which folder a named run goes to: the earlier run of the same loop, or a new one.

Running a script (or a notebook cell) again with the same ``RunConfig(name, storage_path)``
continues the run in ``<storage>/<name>`` when its training loop is the same code, by the
loop's digest (``trainkit._code_digest``) recorded in the run's ledger at each start. When
the loop was edited, the new code starts a new run in ``<name>-2`` (``-3``, ... the first
folder that holds no run) and says so in one line, instead of resuming the old run's
checkpoints with new code; rerunning the edited code again continues that new run. The
``Trainer(resume=...)`` switch forces either: True continues ``<name>`` whatever changed,
False always starts a new run. ``train_loop_config`` is not part of the digest: raising the
epochs and rerunning continues the run.
"""

from __future__ import annotations

from trainkit.train import _storage
from trainkit.train._checkpoint_manager import INDEX_FILE
from trainkit.train._ledger import LEDGER_FILE
from trainkit.train._ledger import read_ledger
from trainkit.train._storage import StorageLocation


def holds_run(folder: StorageLocation) -> bool:
    return _storage.is_file(folder.join(LEDGER_FILE)) or _storage.is_file(
        folder.join(INDEX_FILE))


def stored_digest(folder: StorageLocation) -> str | None:
    """The loop digest of the run's last start, from its ledger; None if it has none."""
    read = read_ledger(folder)
    if read is None:
        return None
    starts = [e for e in read[0] if e.get("event") == "run_started" and "loop_digest" in e]
    return str(starts[-1]["loop_digest"]) if starts else None


def choose(storage: StorageLocation, name: str, digest: str, resume: bool | str
           ) -> tuple[StorageLocation, str | None]:
    """(the run's folder, why it is a new folder rather than ``<name>``, or None)."""
    base = storage.join(name)
    if resume is True:
        return base, None
    for folder in _storage.numbered_folders(storage, name):
        if not holds_run(folder):
            if folder == base:
                return base, None  # nothing ran under this name yet
            why = ("resume=False" if resume is False
                   else "the training loop's code changed")
            return folder, why
        if resume == "auto":
            stored = stored_digest(folder)
            # A run from before digests were kept counts as the same.
            if stored == digest or (stored is None and folder == base):
                return folder, None
    raise AssertionError("unreachable")
