"""Running a training loop outside a Trainer: what Train promises to a host.

A *host* is trainkit code that runs a training function itself, one rank, in its own process,
instead of letting ``Trainer.fit()`` run it on a worker group. Tune's trial actor is one: a
function trial is a training loop whose ``train.report()`` calls must reach the sweep, and
whose checkpoints live in the trial's folder. The host gives Train three things (a
``TrainContext``, a starting checkpoint, a sink for reports) and gets back the loop's reports,
plus the same atomic, retained checkpoint commits a Trainer run has (``RunCheckpoints``).

The public path is ``trainkit.train.hosting``; see its docstring for who may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any
from typing import TypeAlias
from typing import final

from trainkit.train import _storage
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import CheckpointManager
from trainkit.train._checkpoint_manager import CheckpointRecord
from trainkit.train._checkpoint_manager import checkpoint_dir_name
from trainkit.train._checkpoint_manager import checkpoint_number
from trainkit.train._config import CheckpointConfig
from trainkit.train._session import Session
from trainkit.train._session import TrainContext
from trainkit.train._session import current_session
from trainkit.train._session import set_session
from trainkit.train._storage import StorageLocation
from trainkit.train._storage import local_location

ReportSink: TypeAlias = Callable[[dict[str, Any], "Checkpoint | None"], None]
"""Called with each ``train.report(metrics, checkpoint=...)`` of the hosted loop, in the
loop's thread, before ``report`` returns: a copy of the metrics, and the loop's checkpoint
folder (the loop may delete it once ``report`` returns, so copy or commit it here). Whatever
the sink raises comes out of the loop's ``report`` call (a host may end the loop that way)."""


@contextlib.contextmanager
def hosted_loop(context: TrainContext, *, on_report: ReportSink,
                checkpoint: Checkpoint | None = None,
                dataset_shards: Mapping[str, Any] | None = None) -> Iterator[None]:
    """While inside, ``train.report``, ``get_checkpoint``, ``get_context`` and
    ``get_dataset_shard`` serve a loop the host runs itself.

    The session is the process's (as it is in a Trainer's worker): host one loop at a time
    per process; the loop may run in any thread. On exit, whatever session was current
    before is current again.

    Args:
        context: what ``train.get_context()`` returns (rank 0 of a world of 1 for a trial).
        on_report: receives every report (see ``ReportSink``).
        checkpoint: what ``train.get_checkpoint()`` returns: where the loop resumes from.
        dataset_shards: what ``train.get_dataset_shard(name)`` returns, by name.

    Example:
        >>> with hosted_loop(context, on_report=lambda m, c: print(m)):
        ...     train.report({"loss": 0.5})
        {'loss': 0.5}
    """
    previous = current_session()
    set_session(Session(context, checkpoint, dict(dataset_shards or {}), on_report))
    try:
        yield
    finally:
        set_session(previous)


def run_loop(fn: Callable[[dict[str, Any]], Any], config: Mapping[str, Any], *,
             context: TrainContext, on_report: ReportSink,
             checkpoint: Checkpoint | None = None) -> Any:
    """Run ``fn(config)`` (with a copy of ``config``) inside ``hosted_loop``; its return value.

    Whatever ``fn`` raises, including what ``on_report`` raised into it, propagates.
    """
    with hosted_loop(context, on_report=on_report, checkpoint=checkpoint):
        return fn(dict(config))


@final
class RunCheckpoints:
    """The committed checkpoints of one run folder, kept as ``CheckpointConfig`` says.

    The same commits a Trainer makes: a checkpoint is written into a staging folder, renamed
    to ``checkpoint_NNNNNN`` and only then named in the folder's index, so a crash at any
    moment leaves only complete checkpoints; opening the folder removes what a crashed
    commit left behind. Used by one thread at a time.

    Args:
        run_dir: the run's folder (created if missing): a local path, or a
            ``StorageLocation`` (``RunConfig.storage_location().join(...)``) that may be in
            object storage; a remote checkpoint is written to a local temporary folder
            first, then uploaded.
        config: retention (``num_to_keep``, ``checkpoint_score_attribute``/``_order``).
    """

    def __init__(self, run_dir: str | StorageLocation, config: CheckpointConfig) -> None:
        run = run_dir if isinstance(run_dir, StorageLocation) else local_location(run_dir)
        _storage.make_dirs(run)
        self._manager = CheckpointManager(run, config)

    @property
    def latest(self) -> CheckpointRecord | None:
        """The newest committed checkpoint (kept whatever the retention), or None."""
        return self._manager.latest

    @property
    def records(self) -> tuple[CheckpointRecord, ...]:
        """Every kept checkpoint with the metrics committed with it, oldest first."""
        return tuple(self._manager.records)

    @property
    def next_dir_name(self) -> str:
        """The folder name the next ``commit`` will give its checkpoint."""
        return checkpoint_dir_name(self._manager.next_number)

    @staticmethod
    def number_of(path: str) -> int | None:
        """The number in a ``checkpoint_NNNNNN`` folder's name; None for any other folder."""
        return checkpoint_number(os.path.basename(path.rstrip(os.sep)))

    def commit(self, write: Callable[[str], object], metrics: Mapping[str, Any]
               ) -> CheckpointRecord:
        """Commit, as the newest checkpoint, what ``write(folder)`` writes into an empty
        staging folder; retention then drops the checkpoints it no longer keeps.

        If ``write`` raises, nothing is committed.
        """
        staged = self._manager.staging_dir(self.next_dir_name)
        _storage.delete_dir(staged)  # what a write that raised left there
        if staged.is_local:
            os.makedirs(staged.path)
            write(staged.path)
            return self._manager.commit(staged, dict(metrics))
        local = _storage.temp_dir("trainkit-checkpoint-")
        try:
            write(local)
            _storage.upload_dir(local, staged)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return self._manager.commit(staged, dict(metrics))
