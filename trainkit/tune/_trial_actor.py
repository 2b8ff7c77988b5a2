"""``TrialActor``: the process that runs trials, one at a time, in a thread of its own.

The driver starts a trial with ``start(spec)`` and then long-polls ``next(decision)``: each
call hands over the decision on the previous result (continue, stop or pause) and returns the
next event: a result, the end of the trial, or its error. ``report()`` in the trial waits for
that decision, so a stopped trial stops at the very result the scheduler judged. A finished
actor is reused for the next trial with the same resources (``reuse_actors``).

The actor owns its trial's folder while the trial runs: it commits checkpoints (function and
class trainables; a Trainer commits its own) and writes ``result.json``, ``progress.csv`` and
TensorBoard events. With remote storage (``TrialSpec.storage``) the actor writes them
straight to it, from its own node: checkpoints through ``RunCheckpoints`` on the storage
location, the result files into a local folder uploaded after every result (``RunFiles``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from trainkit._result_log import ResultLog
from trainkit._result_log import count_results
from trainkit._result_log import trim_results
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import TrainContext
from trainkit.train.hosting import RunCheckpoints
from trainkit.train.hosting import RunFiles
from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import hosted_loop
from trainkit.train.hosting import upload_dir
from trainkit.tune._hparams import write_session_end
from trainkit.tune._hparams import write_session_start

MAX_CONCURRENCY = 3  # the trial thread's next() + one spare


@dataclass(frozen=True, slots=True)
class TrialSpec:
    trial_id: str
    trial_name: str
    kind: str  # "function" | "class" | "trainer"
    blob: bytes  # the cloudpickled trainable
    config: dict[str, Any]
    trial_dir: str
    experiment_name: str
    checkpoint: str | None  # resume from here
    checkpoint_config: CheckpointConfig
    time_total_s: float  # carried over from earlier runs of this trial
    storage: StorageLocation | None = None  # the trial's folder in remote storage, if any


class _EndTrial(BaseException):
    """Raised in the trial thread by ``report()`` when the driver says stop or pause."""

    def __init__(self, decision: str) -> None:
        super().__init__(decision)
        self.decision = decision


class TrialActor:
    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.events: list[tuple[Any, ...]] = []
        self.decision: str | None = None
        self.thread: threading.Thread | None = None
        self.cached: Any = None  # a class trainable's object, kept for reset_config

    # -- called by the driver ------------------------------------------------------------
    def start(self, spec: TrialSpec) -> None:
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.events, self.decision = [], None
        self.thread = threading.Thread(target=self._run, args=(spec,), daemon=True,
                                       name=f"trial-{spec.trial_id}")
        self.thread.start()

    def next(self, decision: str | None, wait_s: float) -> tuple[Any, ...] | None:
        """Hand over ``decision`` on the last result; the next event, or None after wait_s."""
        with self.cv:
            if decision is not None:
                self.decision = decision
                self.cv.notify_all()
            self.cv.wait_for(lambda: bool(self.events), wait_s)
            return self.events.pop(0) if self.events else None

    # -- the trial thread ----------------------------------------------------------------
    def _emit(self, *event: Any) -> None:
        with self.cv:
            self.events.append(event)
            self.cv.notify_all()

    def _await_decision(self) -> str:
        with self.cv:
            self.cv.wait_for(lambda: self.decision is not None)
            decision, self.decision = self.decision, None
            assert decision is not None
            return decision

    def _run(self, spec: TrialSpec) -> None:
        trial = _TrialRun(self, spec)
        try:
            trial.run()
        except _EndTrial as end:
            trial.close(ok=True)
            self._emit("done", end.decision, trial.latest_checkpoint())
        except BaseException as e:  # the trial's error, whatever it is, goes to the driver
            trial.close(ok=False)
            self._emit("error", _picklable(e), traceback.format_exc(), trial.latest_checkpoint())
        else:
            trial.close(ok=True)
            self._emit("done", "finished", trial.latest_checkpoint())


def _newest(given: str | None, checkpoints: RunCheckpoints) -> str | None:
    """The checkpoint a trial resumes from: the driver's, unless the trial's own folder holds
    a newer one (the driver died after the trial committed it, before journaling it). A PBT
    exploit's copy of a donor's checkpoint (not a ``checkpoint_*`` folder) always wins."""
    own = checkpoints.latest
    if own is None:
        return given
    if given is None:
        return own.path
    number = checkpoints.number_of(given)
    if number is None:
        return given
    return own.path if own.number > number else given


def _iteration_of(path: str | None, checkpoints: RunCheckpoints) -> int | None:
    """The iteration a committed checkpoint of this trial was taken at (None: not one of
    its own, e.g. a PBT exploit's copy of a donor's)."""
    for record in checkpoints.records:
        if path is not None and os.path.realpath(record.path) == os.path.realpath(path):
            value = record.metrics.get("training_iteration")
            return int(value) if isinstance(value, int) else None
    return None


def _picklable(e: BaseException) -> BaseException:
    try:
        cloudpickle.loads(cloudpickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


_active: _TrialRun | None = None  # the function or class trial running in this process


def active_trial() -> _TrialRun | None:
    """The function or class trial running in this process, if any (for
    ``TuneReportCallback``: a Trainer's callbacks run in its driver, the trial's thread)."""
    return _active


class _TrialRun:
    """One run of one trial inside a TrialActor."""

    def __init__(self, actor: TrialActor, spec: TrialSpec) -> None:
        self.actor = actor
        self.spec = spec
        # Where result.json & co. are written: the trial folder, or a local folder of this
        # node uploaded to the trial's remote folder.
        self.files = RunFiles(spec.storage) if spec.storage is not None else None
        self.log_dir = self.files.local_dir if self.files is not None else spec.trial_dir
        self.fs = spec.storage.filesystem if spec.storage is not None else None
        self.iteration = count_results(self.log_dir)
        self.started = time.monotonic()
        self.last_report = self.started
        self.checkpoints: RunCheckpoints | None = None
        self.log: ResultLog | None = None  # result.json & co. (a Trainer writes its own)
        self.hparams_log: ResultLog | None = None  # a Trainer trial's HParams summaries
        self.committed: str | None = spec.checkpoint
        self.hparams_dir: str | None = None  # a remote Trainer trial's local HParams folder

    def latest_checkpoint(self) -> str | None:
        return self.committed

    def close(self, ok: bool) -> None:
        for log in (self.log, self.hparams_log):
            if log is not None:
                write_session_end(log, ok)
                log.close()
        if self.files is not None:
            self.files.close()
        if self.hparams_dir is not None and self.spec.storage is not None:
            # Only the HParams events: the Trainer wrote the trial's result.json itself.
            events = [n for n in os.listdir(self.hparams_dir) if n.startswith("events.")]
            for name in events:
                os.makedirs(os.path.join(self.hparams_dir, "up"), exist_ok=True)
                shutil.move(os.path.join(self.hparams_dir, name),
                            os.path.join(self.hparams_dir, "up", name))
            upload_dir(os.path.join(self.hparams_dir, "up"), self.spec.storage)
            shutil.rmtree(self.hparams_dir, ignore_errors=True)

    def run(self) -> None:
        spec = self.spec
        trainable = cloudpickle.loads(spec.blob)
        if spec.kind == "trainer":
            self._run_trainer(trainable)
            return
        self.checkpoints = RunCheckpoints(spec.storage or spec.trial_dir, spec.checkpoint_config)
        self.committed = _newest(spec.checkpoint, self.checkpoints)
        resumed = _iteration_of(self.committed, self.checkpoints)
        if resumed is not None:  # rows logged after that checkpoint are run again
            trim_results(self.log_dir, resumed)
            self.iteration = resumed
        elif self.committed is None:
            trim_results(self.log_dir, 0)
            self.iteration = 0
        self.log = ResultLog(self.log_dir)
        write_session_start(self.log, spec.trial_name, spec.config)
        context = TrainContext(world_size=1, world_rank=0, local_rank=0, local_world_size=1,
                               node_rank=0, experiment_name=spec.experiment_name,
                               run_path=spec.storage.uri if spec.storage else spec.trial_dir,
                               trial_id=spec.trial_id,
                               trial_name=spec.trial_name)
        checkpoint = Checkpoint(self.committed, self.fs) if self.committed else None
        global _active
        _active = self
        try:
            with hosted_loop(context, on_report=self._report_copying, checkpoint=checkpoint):
                if spec.kind == "function":
                    trainable(dict(spec.config))
                else:
                    self._run_class(trainable)
        finally:
            _active = None

    # -- reporting -----------------------------------------------------------------------
    def _report_copying(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        """``report()`` of a function trainable: log, commit the checkpoint, await decision."""
        write = None
        if checkpoint is not None:
            def write(d: str) -> None:
                shutil.copytree(checkpoint.path, d, dirs_exist_ok=True)
        self._report(metrics, None, write)

    def report_from_trainer(self, metrics: dict[str, Any], checkpoint: Checkpoint | None
                            ) -> None:
        """A report of a Trainer this trial runs (``TuneReportCallback``): as ``tune.report``,
        the checkpoint (on any storage) copied into the trial's own."""
        if checkpoint is None:
            self._report(metrics, None)
            return
        with checkpoint.as_directory() as source:
            def write(d: str) -> None:
                shutil.copytree(source, d, dirs_exist_ok=True)

            self._report(metrics, None, write)

    def _commit(self, write: Any, metrics: dict[str, Any]) -> str:
        """Commit the checkpoint ``write`` makes, as that of iteration ``self.iteration``."""
        assert self.checkpoints is not None
        record = {**metrics, "training_iteration": self.iteration}
        self.committed = self.checkpoints.commit(write, record).path
        return self.committed

    def _report(self, metrics: dict[str, Any], checkpoint_path: str | None,
                write: Any = None, save: Any = None) -> None:
        """Log the result, then commit its checkpoint (``write``), then await the decision.
        In that order a crash leaves either no checkpoint for a logged row (the row is
        dropped on resume and the iteration runs again) or both. The decision "save" (a
        scheduler wants the state now) commits ``save``'s checkpoint, says "saved" and goes
        on; a trainable without ``save`` (a function one) just goes on."""
        now = time.monotonic()
        self.iteration += 1
        result = {**metrics, "training_iteration": self.iteration,
                  "time_this_iter_s": now - self.last_report,
                  "time_total_s": self.spec.time_total_s + now - self.started,
                  "timestamp": time.time(), "trial_id": self.spec.trial_id}
        self.last_report = now
        if write is not None and self.checkpoints is not None:
            result["checkpoint_dir_name"] = self.checkpoints.next_dir_name
        elif checkpoint_path is not None:
            result["checkpoint_dir_name"] = os.path.basename(checkpoint_path)
        if self.log is not None:
            self.log.append(result, step=self.iteration)
            if self.files is not None:
                self.files.sync()
        if write is not None:
            checkpoint_path = self._commit(write, metrics)
        self.actor._emit("result", result, checkpoint_path)
        decision = self.actor._await_decision()
        if decision == "save":
            if save is not None and self.checkpoints is not None:
                self.actor._emit("saved", self._commit(save, metrics))
            return
        if decision != "continue":
            raise _EndTrial(decision)

    # -- class trainables ----------------------------------------------------------------
    def _run_class(self, cls: Any) -> None:
        config = dict(self.spec.config)
        cached: Any = self.actor.cached
        if type(cached) is cls and cached.reset_config(config):
            obj = cached
            obj.config = config
        else:
            if cached is not None:
                cached.cleanup()
            self.actor.cached = None
            obj = cls(config)
        if self.committed and self.fs is None:
            obj.load_checkpoint(self.committed)
        elif self.committed:
            with Checkpoint(self.committed, self.fs).as_directory() as d:
                obj.load_checkpoint(d)
        ckpt_cfg = self.spec.checkpoint_config
        try:
            while True:
                result = dict(obj.step())
                done = bool(result.pop("done", False))
                want = bool(result.pop("should_checkpoint", False)) or (
                    ckpt_cfg.checkpoint_frequency > 0
                    and (self.iteration + 1) % ckpt_cfg.checkpoint_frequency == 0) or (
                    done and ckpt_cfg.checkpoint_at_end is not False)
                try:
                    self._report(result, None, obj.save_checkpoint if want else None,
                                 save=obj.save_checkpoint)
                except _EndTrial as end:
                    if end.decision == "pause" or ckpt_cfg.checkpoint_at_end is not False:
                        self._commit(obj.save_checkpoint, result)
                    raise
                if done:
                    break
        except BaseException:
            obj.cleanup()
            raise
        self.actor.cached = obj  # may be reused by the next trial of this class

    # -- Trainer trainables --------------------------------------------------------------
    def _run_trainer(self, trainer: Any) -> None:
        spec = self.spec
        trainer = copy.copy(trainer)
        loop_config = dict(trainer.config or {})
        loop_config.update(spec.config.get("train_loop_config", {}))
        if trainer.config is not None or loop_config:
            trainer.config = loop_config
        run = trainer.run_config
        where: dict[str, Any] = {"name": os.path.basename(spec.trial_dir),
                                 "storage_path": os.path.dirname(spec.trial_dir)}
        if spec.storage is not None:
            where = {"name": spec.storage.name, "storage_filesystem": spec.storage.filesystem,
                     "storage_path": spec.storage.path.rsplit("/", 1)[0]}
        trainer.run_config = dataclasses.replace(
            run, **where, verbose=0, callbacks=(*run.callbacks, _TrainerReports(self)))
        # The Trainer writes the trial's metrics; the HParams summaries go to a file of ours.
        if spec.storage is not None:
            self.hparams_dir = tempfile.mkdtemp(prefix="trainkit-hparams-")
        self.hparams_log = ResultLog(self.hparams_dir or spec.trial_dir)
        write_session_start(self.hparams_log, spec.trial_name, spec.config)
        trainer.fit()


class _TrainerReports:
    """A Trainer callback that turns the run's reports into the trial's results."""

    def __init__(self, trial: _TrialRun) -> None:
        self.trial = trial

    def on_report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            self.trial.committed = checkpoint.path
        self.trial._report(dict(metrics), checkpoint.path if checkpoint else None)
