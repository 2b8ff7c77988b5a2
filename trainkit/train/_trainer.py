"""``Trainer`` and ``Result``: the user-facing entry point of Train."""

from __future__ import annotations

import datetime
import inspect
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

import trainkit.runtime as rt
from trainkit._code_digest import check_resume
from trainkit._code_digest import code_digest
from trainkit._pickling import unpicklable_capture
from trainkit._result_log import PROGRESS_FILE
from trainkit._result_log import RESULT_FILE
from trainkit._result_log import read_results
from trainkit.exceptions import InfeasibleError
from trainkit.exceptions import TrainingFailedError
from trainkit.train import _storage
from trainkit.train._checkpoint import Checkpoint
from trainkit.train._checkpoint_manager import read_index
from trainkit.train._config import RunConfig
from trainkit.train._config import ScalingConfig
from trainkit.train._controller import TrainController
from trainkit.train._controller import restore_datasets
from trainkit.train._controller import save_data_positions
from trainkit.train._ledger import RunLedger
from trainkit.train._ledger import error_fields
from trainkit.train._recorder import RunRecorder
from trainkit.train._run_folder import choose as choose_run_folder
from trainkit.train._session import DATA_POSITIONS_KEY
from trainkit.train._session import Session
from trainkit.train._session import TrainContext
from trainkit.train._session import current_session
from trainkit.train._session import set_session

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]
    import pyarrow.fs  # type: ignore[import-untyped]

_BACKENDS = ("gloo", "nccl")
# Imported once in the runtime's worker forkserver, so each training worker starts with
# them loaded: importing torch costs about 2 s per process, and DistributedDataParallel's
# first construction imports torch._dynamo (800 modules, 2 s more).
_WORKER_MODULES = ("torch", "torch.distributed", "torch.nn.parallel.distributed",
                   "torch._dynamo", "trainkit.train._worker", "trainkit.train.torch")


@dataclass(frozen=True)
class Result:
    """What ``Trainer.fit()`` returns, or ``Result.from_path`` reads back from storage.

    Attributes:
        metrics: rank 0's last reported metrics.
        checkpoint: the latest persisted checkpoint (None if none was reported).
        best_checkpoints: every kept checkpoint with its metrics, oldest first.
        path: the run's folder, a path on ``filesystem`` (no URI scheme).
        error: the failure, when the run failed (``fit()`` raises it as well).
        filesystem: the ``pyarrow.fs.FileSystem`` holding the run (None: the local one).
    """

    metrics: dict[str, Any]
    checkpoint: Checkpoint | None
    path: str
    best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]] = field(default_factory=list)
    error: BaseException | None = None
    filesystem: pyarrow.fs.FileSystem | None = None

    @property
    def metrics_dataframe(self) -> pandas.DataFrame:
        """One row per ``report()`` of rank 0, read from the run's ``result.json``."""
        if self.filesystem is None or _storage.same(self.filesystem, None):
            return read_results(self.path)
        run = _storage.StorageLocation(self.filesystem, self.path, self.path)
        local = _storage.temp_dir("trainkit-result-")
        try:
            for name in (RESULT_FILE, PROGRESS_FILE):
                data = _storage.read_file(run.join(name))
                if data is not None:
                    with open(os.path.join(local, name), "wb") as f:
                        f.write(data)
            return read_results(local)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def get_best_checkpoint(self, metric: str, mode: str) -> Checkpoint | None:
        """The kept checkpoint whose reported ``metric`` is best (``mode`` "min" or "max");
        None if the run kept no checkpoint.

        Raises:
            ValueError: a bad ``mode``, or no kept checkpoint was reported with ``metric``.
        """
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` is {mode!r}, but must be 'min' or 'max'")
        if not self.best_checkpoints:
            return None
        scored = [(float(m[metric]), c) for c, m in self.best_checkpoints
                  if isinstance(m.get(metric), (int, float)) and not isinstance(m[metric], bool)]
        if not scored:
            seen = sorted({k for _, m in self.best_checkpoints for k in m})
            raise ValueError(f"no kept checkpoint was reported with the metric {metric!r}; "
                             f"they were reported with {seen}")
        pick = min if mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])[1]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str],
                  storage_filesystem: pyarrow.fs.FileSystem | None = None) -> Result:
        """A finished (or failed) run read back from its folder: a local path, a URI
        (``s3://bucket/runs/exp``) or a path on ``storage_filesystem``.

        Example:
            >>> result = Result.from_path("s3://bucket/runs/exp")
            >>> result.get_best_checkpoint("loss", "min")

        Raises:
            ValueError: ``path`` holds no run (no result.json and no checkpoint index).
        """
        run = _storage.resolve(path, storage_filesystem)
        fs = None if run.is_local else run.filesystem
        records = read_index(run)
        results = _storage.read_file(run.join(RESULT_FILE))
        if records is None and results is None:
            raise ValueError(f"{run.uri} holds no run (no {RESULT_FILE} and no checkpoint "
                             "index): pass the run's folder, <storage_path>/<name>")
        metrics: dict[str, Any] = {}
        for line in reversed((results or b"").decode().splitlines()):
            try:
                metrics = dict(json.loads(line))
                break
            except json.JSONDecodeError:
                continue  # a line torn by a crash
        for key in ("training_iteration", "timestamp", "checkpoint_dir_name"):
            metrics.pop(key, None)
        records = records or []
        return cls(metrics=metrics, checkpoint=records[-1].checkpoint if records else None,
                   path=run.path, best_checkpoints=[(r.checkpoint, r.metrics) for r in records],
                   filesystem=fs)


class Trainer:
    """Runs ``train_loop_per_worker`` on a gang-scheduled group of workers with DDP.

    Args:
        train_loop_per_worker: the per-rank loop; takes ``config`` (``train_loop_config``)
            or no argument.
        train_loop_config: passed to the loop on every rank.
        scaling_config: workers, GPUs and resources (default: 1 CPU worker).
        run_config: name, storage, checkpoints and failures.
        datasets: name -> dataset; each rank gets its shard via ``get_dataset_shard``. A
            ``trainkit.data`` dataset is streamed, and resumes mid-epoch with the run (see
            ``get_dataset_shard``); a list is split by rank.
        resume_from_checkpoint: start a new run from this checkpoint.
        backend: "gloo" or "nccl" (default: nccl with GPUs, gloo without).
        resume: what a rerun with the same ``run_config.name`` and storage does when a run
            is there: "auto" continues it if its training loop is the same code and else
            starts a new run in ``<name>-2`` (saying so); True continues it whatever
            changed; False always starts a new run (see ``_run_folder``).
    """

    def __init__(self, train_loop_per_worker: Callable[..., Any], *,
                 train_loop_config: Mapping[str, Any] | None = None,
                 scaling_config: ScalingConfig | None = None,
                 run_config: RunConfig | None = None,
                 datasets: Mapping[str, Any] | None = None,
                 resume_from_checkpoint: Checkpoint | None = None,
                 backend: str | None = None, resume: bool | str = "auto") -> None:
        self.resume = check_resume(resume, "run")
        self.scaling = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        if not isinstance(self.scaling, ScalingConfig):
            raise TypeError(f"scaling_config is {scaling_config!r}; pass a ScalingConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError(f"run_config is {run_config!r}; pass a RunConfig")
        self.takes_config = _check_loop(train_loop_per_worker, train_loop_config)
        self.fn = train_loop_per_worker
        # What the loop is called with: the config (``{}`` if none was given), or nothing.
        self.config = dict(train_loop_config or {}) if self.takes_config else None
        self.fn_blob = _pickle_loop(train_loop_per_worker)
        _check_picklable("train_loop_config", self.config)
        if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint,
                                                                 Checkpoint):
            raise TypeError(f"resume_from_checkpoint is {resume_from_checkpoint!r}; pass a "
                            "Checkpoint (Checkpoint.from_directory(path))")
        self.resume_from_checkpoint = resume_from_checkpoint
        self.backend = backend or ("nccl" if self.scaling.uses_gpu else "gloo")
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend is {backend!r}, but must be one of {_BACKENDS}")
        self.datasets = dict(datasets or {})
        for name, ds in self.datasets.items():
            if not hasattr(ds, "streaming_split") and not isinstance(ds, Sequence):
                raise TypeError(f"datasets[{name!r}] is a {type(ds).__name__}; pass a "
                                "trainkit.data Dataset or a list (split by rank)")

    def fit(self) -> Result:
        """Run the loop to the end; raise ``TrainingFailedError`` when it fails for good."""
        began = time.monotonic()  # the run's ledger counts starting the runtime as startup
        storage = self.run_config.storage_location()
        digest = code_digest(self.fn)
        if self.run_config.name:  # a rerun continues it if the loop is the same code
            # Writable first: refused credentials or a missing bucket say so, not a lookup.
            _storage.check_writable(storage.join(self.run_config.name))
            run, why = choose_run_folder(storage, self.run_config.name, digest, self.resume)
            if why is not None and self.run_config.verbose:
                print(f"[trainkit] starting a new run in {run} ({why}; "
                      f"{storage.join(self.run_config.name)} holds the earlier one; "
                      "Trainer(resume=True) continues that)", flush=True)
        else:
            run = storage.join(f"Trainer_{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}")
        name = run.name
        _storage.check_writable(run)
        run_dir = run.uri
        n = self.scaling.num_workers
        if n > 0:
            if not rt.is_initialized():
                rt.init()
            rt.preload_worker_modules(*_WORKER_MODULES)
            _check_fits(self.scaling)
        recorder = RunRecorder(run, self.run_config, name)
        ledger = RunLedger(run)
        start = self.resume_from_checkpoint
        latest = recorder.latest_checkpoint
        ledger.append("run_started", t=ledger.now() - (time.monotonic() - began), name=name,
                      kind="train", storage=run.uri, num_workers=n, resumed=latest is not None,
                      loop_digest=digest)
        if latest is not None:
            recorder.progress.say(f"resuming run {name!r} from {latest.path}")
        elif start is not None:
            recorder.progress.say(f"run {name!r} starts from checkpoint {start.path}")
        try:
            if n == 0:
                _run_local(self, recorder, name, latest or start, ledger)
                error: TrainingFailedError | None = None
            else:
                controller = TrainController(
                    fn_blob=self.fn_blob, config=self.config, scaling=self.scaling,
                    run_config=self.run_config, backend=self.backend, recorder=recorder,
                    name=name, start_checkpoint=start, shards=self._shards(n), ledger=ledger)
                controller.run()
                error = controller.error
        except BaseException as e:
            ledger.append("run_failed", **error_fields(e))
            raise
        finally:
            recorder.close()
        if error is not None:
            ledger.append("run_failed", **error_fields(error))
        else:
            ledger.append("run_finished", iterations=recorder.iteration)
        result = Result(metrics=recorder.metrics, checkpoint=recorder.latest_checkpoint,
                        path=run.path, best_checkpoints=recorder.checkpoints.best_checkpoints(),
                        error=error, filesystem=None if run.is_local else run.filesystem)
        for cb in self.run_config.callbacks:
            if hasattr(cb, "on_end"):
                cb.on_end(result)
        if error is not None:
            recorder.progress.say(f"{name}: failed")
            raise error
        recorder.progress.say(f"{name}: finished {recorder.iteration} iterations; {run_dir}")
        return result

    def _shards(self, n: int) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = [{} for _ in range(n)]
        for name, ds in self.datasets.items():
            parts = ds.streaming_split(n) if hasattr(ds, "streaming_split") else \
                [list(ds[r::n]) for r in range(n)]
            for rank in range(n):
                shards[rank][name] = parts[rank]
        return shards


def _run_local(trainer: Trainer, recorder: RunRecorder, name: str,
               checkpoint: Checkpoint | None, ledger: RunLedger) -> None:
    """Local mode (``num_workers=0``): the loop runs here, in this thread, so pdb works."""
    seq = 0
    ledger.append("attempt_started", attempt=0, world_size=1)
    ledger.append("rendezvous_done", attempt=0)
    last = time.monotonic()
    shards = trainer._shards(1)
    # Datasets resume from the run's own latest checkpoint, not from resume_from_checkpoint.
    bases = restore_datasets(shards, 0, recorder.checkpoints.latest_data_positions())

    def reporter(metrics: dict[str, Any], ckpt: Checkpoint | None) -> None:
        nonlocal seq, last
        seq += 1
        began = time.monotonic()
        staged = None
        state = metrics.pop(DATA_POSITIONS_KEY, None)
        if ckpt is not None:
            staged = recorder.checkpoints.staging_dir(f"local-{seq:06d}")
            _storage.upload_dir(ckpt.path, staged)
            save_data_positions(staged, bases, [state])
        if seq == 1:
            ledger.append("first_report", attempt=0)
        ledger.append("report", attempt=0, iteration=recorder.iteration + 1,
                      step_s=round(began - last, 6), checkpoint=ckpt is not None)
        saved = recorder.record(metrics, staged)
        if saved is not None:
            # Local mode uploads and commits inside report(): the loop waited for all of it.
            ledger.append("checkpoint_snapshotted", attempt=0, iteration=recorder.iteration,
                          snapshot_s=round(time.monotonic() - began, 6))
            ledger.append("checkpoint_committed", attempt=0, iteration=recorder.iteration,
                          dir=os.path.basename(saved.path.rstrip("/")),
                          commit_s=round(time.monotonic() - began, 6))
        last = time.monotonic()

    context = TrainContext(world_size=1, world_rank=0, local_rank=0, local_world_size=1,
                           node_rank=0, experiment_name=name, run_path=recorder.run_dir)
    # The loop runs in this thread: a session already here (a Tune trial's) is put back after.
    previous = current_session()
    set_session(Session(context, checkpoint, shards[0], reporter, trainer.scaling.uses_gpu,
                        track_data_positions=True))
    try:
        if trainer.config is not None:
            trainer.fn(dict(trainer.config))
        else:
            trainer.fn()
        ledger.append("attempt_finished", attempt=0)
    except Exception as e:
        ledger.append("rank_failed", attempt=0, rank=0, node=None, **error_fields(e))
        ledger.append("attempt_failed", attempt=0, decision="raise",
                      reason="local mode does not retry", message=str(e)[:500])
        raise TrainingFailedError(f"the training loop raised {type(e).__name__}: {e} "
                                  "(local mode, num_workers=0)", {0: e}, e,
                                  recorder.run_dir) from e
    finally:
        set_session(previous)


def _check_loop(fn: Any, config: Mapping[str, Any] | None) -> bool:
    """Whether the loop takes ``config``; a clear error if it cannot be called as one."""
    if not callable(fn):
        raise TypeError(f"train_loop_per_worker is {fn!r}; pass a function")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"train_loop_config is {config!r}; pass a dict")
    name = getattr(fn, "__name__", repr(fn))
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): trust the caller
        return config is not None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    accepts = any(p.kind in (*positional, inspect.Parameter.VAR_POSITIONAL) for p in params)
    if len(required) > 1:
        raise TypeError(f"train_loop_per_worker {name} takes {len(required)} arguments; it "
                        "must take one (config) or none")
    if config is not None and not accepts:
        raise TypeError(f"train_loop_config was given but {name}() takes no argument: add a "
                        "`config` parameter")
    return accepts


def _pickle_loop(fn: Callable[..., Any]) -> bytes:
    try:
        return bytes(cloudpickle.dumps(fn))
    except Exception as e:
        culprit = unpicklable_capture(fn)
        where = f"; it captures {culprit}" if culprit else ""
        raise TypeError(f"train_loop_per_worker {getattr(fn, '__name__', fn)!r} cannot be "
                        f"pickled to send to the workers{where}: {e}. Create that object "
                        "inside the function instead") from e


def _check_picklable(what: str, value: Any) -> None:
    try:
        cloudpickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        bad = [k for k, v in (value or {}).items() if not _picklable(v)]
        raise TypeError(f"{what} cannot be pickled to send to the workers (keys {bad}): "
                        f"{e}") from e


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
        return True
    except Exception:
        return False


def _check_fits(scaling: ScalingConfig) -> None:
    """Fail before anything starts if the cluster can never hold the workers."""
    total = rt.cluster_resources()
    n = scaling.num_workers
    for key, per_worker in scaling.worker_resources.items():
        need = per_worker * n
        have = total.get(key, 0.0)
        if need > have:
            raise InfeasibleError(
                f"ScalingConfig(num_workers={n}, ...) needs {need:g} {key} ({per_worker:g} per "
                f"worker) but the cluster has {have:g}; lower num_workers or the resources "
                "per worker" + (", or set use_gpu=False" if key == "GPU" else ""))
