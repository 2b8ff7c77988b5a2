"""What a training loop calls: ``report``, ``get_checkpoint``, ``get_context``,
``get_dataset_shard``. Each works inside a loop run by ``Trainer.fit()``, in a worker or, in
local mode, in the driver itself."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainkit.train._checkpoint import Checkpoint
from trainkit.train._uploader import check_upload_mode


@dataclass(frozen=True, slots=True)
class TrainContext:
    """Where this rank stands in the worker group (``train.get_context()``)."""

    world_size: int
    world_rank: int
    local_rank: int
    local_world_size: int
    node_rank: int
    experiment_name: str
    run_path: str
    trial_id: str | None = None  # set in a Tune trial
    trial_name: str | None = None

    def get_world_size(self) -> int:
        return self.world_size

    def get_world_rank(self) -> int:
        return self.world_rank

    def get_local_rank(self) -> int:
        return self.local_rank

    def get_local_world_size(self) -> int:
        return self.local_world_size

    def get_node_rank(self) -> int:
        return self.node_rank

    def get_experiment_name(self) -> str:
        return self.experiment_name

    def get_storage_path(self) -> str:
        """The run's folder, where checkpoints and results are written."""
        return self.run_path

    def get_trial_id(self) -> str | None:
        return self.trial_id

    def get_trial_name(self) -> str | None:
        return self.trial_name

    def get_trial_dir(self) -> str:
        return self.run_path


# The key under which ``report()`` hands the dataset shards' positions to the Trainer, next
# to the metrics (taken out before the metrics are recorded); see ``data_positions``.
DATA_POSITIONS_KEY = "__trainkit_data_positions__"

Reporter = Callable[[dict[str, Any], "Checkpoint | None"], None]
# (metrics, checkpoint, checkpoint_upload_mode): a Trainer's worker, which uploads in the
# background; hosts and local mode give only a ``Reporter``, which commits before returning.
Uploader = Callable[[dict[str, Any], "Checkpoint | None", str], None]


@dataclass(slots=True)
class Session:
    """One rank's view of the run while its loop executes."""

    context: TrainContext
    checkpoint: Checkpoint | None
    dataset_shards: Mapping[str, Any]
    reporter: Reporter
    use_gpu: bool = False  # whether this rank trains on a GPU (ScalingConfig.use_gpu)
    upload: Uploader | None = None  # takes checkpoint_upload_mode; else ``reporter`` is used
    # A Trainer's ranks save where their dataset shards stand with every report (hosts that
    # run a loop themselves, such as Tune's, do not).
    track_data_positions: bool = False

    def data_positions(self) -> dict[str, Any]:
        """Each resumable shard's position (its ``_save_position()``), by dataset name."""
        return {name: shard._save_position() for name, shard in self.dataset_shards.items()
                if hasattr(shard, "_save_position")}


_current: Session | None = None


def current_session() -> Session | None:
    return _current


def set_session(session: Session | None) -> None:
    global _current
    _current = session


def _session(fn: str) -> Session:
    if _current is None:
        raise RuntimeError(f"train.{fn}() was called outside a training loop: call it inside "
                           "the function passed to Trainer(...) while fit() runs it")
    return _current


def report(metrics: Mapping[str, Any], *, checkpoint: Checkpoint | None = None,
           checkpoint_upload_mode: str = "async") -> None:
    """Report this iteration's metrics, and optionally a checkpoint folder.

    Every rank must call it the same number of times. Rank 0's metrics are recorded; the
    checkpoint folders of all ranks of one report are merged into one checkpoint, committed
    (named in the run's index) only once every rank's files are uploaded, so the latest
    committed checkpoint is always complete.

    With ``checkpoint_upload_mode="async"`` (the default) it returns once the checkpoint's
    files are copied to a staging folder on this node's disk; the upload and the commit happen
    in the background, strictly in report order, and the folder passed here may be deleted or
    rewritten as soon as ``report`` returns. At most 2 checkpoints of a rank wait for their
    commit: a third ``report`` with a checkpoint blocks (saying so on stderr) until the oldest
    is committed. ``fit()`` returns only once every upload is committed. With ``"sync"`` it
    returns once this report is committed. In local mode (``num_workers=0``) and in Tune
    trials every report is committed before it returns.

    Each report also carries where this rank's ``get_dataset_shard`` iterators stand (the
    rows its loop has received, per epoch); the driver saves that with the checkpoint it
    commits, so a resumed run continues each epoch with the rows no committed step consumed.
    Rows received after the last committed checkpoint are delivered again after a failure.

    Raises:
        ValueError: ``checkpoint_upload_mode`` is neither "async" nor "sync".
        CheckpointUploadError: an earlier checkpoint of this rank could not be uploaded.
    """
    check_upload_mode(checkpoint_upload_mode)
    session = _session("report")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"train.report() takes a dict of metrics, got {type(metrics).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise TypeError("train.report(checkpoint=...) takes a Checkpoint "
                        f"(Checkpoint.from_directory(path)), got {type(checkpoint).__name__}")
    sent = dict(metrics)
    if session.track_data_positions:
        # Every report carries them (a rank may report without a checkpoint while others
        # give one); the driver saves them with the checkpoint it commits.
        positions = session.data_positions()
        if positions:
            sent[DATA_POSITIONS_KEY] = positions
    if session.upload is not None:
        session.upload(sent, checkpoint, checkpoint_upload_mode)
    else:
        session.reporter(sent, checkpoint)


def get_checkpoint() -> Checkpoint | None:
    """The checkpoint to resume from (latest persisted, or ``resume_from_checkpoint``)."""
    return _session("get_checkpoint").checkpoint


def get_context() -> TrainContext:
    return _session("get_context").context


def get_dataset_shard(name: str = "train") -> Any:
    """This rank's part of ``Trainer(datasets={name: ...})``: a ``DataIterator`` whose
    every ``iter_batches``/``iter_torch_batches``/``iter_rows`` call is one epoch.

    It resumes exactly: when the run restarts from a checkpoint (a failed rank, a rerun of
    the script, a different ``num_workers``), its first pass is the rest of the epoch that
    checkpoint was in: the rows no committed step consumed, dealt equally among the ranks
    there are now; later passes are whole epochs. A batch counts as consumed once the loop
    has received it (rows prefetched or waiting in a local shuffle buffer do not), so rows
    received after the last committed checkpoint are delivered again. A loop that resumes
    should therefore take its epoch counter from its checkpoint, as it does its model.
    ``resume_from_checkpoint`` starts a new run, whose datasets start from the beginning."""
    shards = _session("get_dataset_shard").dataset_shards
    if name not in shards:
        raise KeyError(f"no dataset named {name!r}: Trainer(datasets=...) has "
                       f"{sorted(shards) or 'none'}")
    return shards[name]
