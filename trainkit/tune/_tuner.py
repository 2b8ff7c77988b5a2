"""``Tuner``: a hyperparameter sweep, its restore, and the checks made before any trial."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import posixpath
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

import trainkit.runtime as rt
from trainkit._atomic import write_atomic
from trainkit._code_digest import check_resume
from trainkit._pickling import unpicklable_capture
from trainkit.exceptions import InfeasibleError
from trainkit.train import RunConfig
from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import check_writable
from trainkit.train.hosting import delete_dir
from trainkit.train.hosting import read_file
from trainkit.tune._config import TuneConfig
from trainkit.tune._experiment_state import JOURNAL
from trainkit.tune._experiment_state import TUNER_STATE
from trainkit.tune._experiment_state import experiment_family
from trainkit.tune._experiment_state import is_experiment
from trainkit.tune._experiment_state import load_search_state
from trainkit.tune._experiment_state import next_free_folder
from trainkit.tune._experiment_state import read_fingerprint
from trainkit.tune._experiment_state import replay
from trainkit.tune._experiment_state import write_fingerprint
from trainkit.tune._experiment_sync import ExperimentFolder
from trainkit.tune._fingerprint import fingerprint
from trainkit.tune._result_grid import ResultGrid
from trainkit.tune._result_grid import results_of
from trainkit.tune._runner import Trial
from trainkit.tune._runner import TuneRunner
from trainkit.tune._scheduler import TrialScheduler
from trainkit.tune._search_space import flatten_space
from trainkit.tune._searcher import Searcher
from trainkit.tune._stopper import make_stopper
from trainkit.tune._trainable import reserved_of
from trainkit.tune._trainable import resources_of
from trainkit.tune._trainable import trainable_kind
from trainkit.tune._trial import TrialState

# Imported once in the runtime's worker forkserver, so trial processes start with them.
_WORKER_MODULES = ("trainkit.tune._trial_actor", "tensorboard.compat.proto.summary_pb2",
                   "tensorboard.plugins.hparams.metadata",
                   "tensorboard.plugins.hparams.plugin_data_pb2")
_TORCH_MODULES = ("torch", "torch.distributed", "torch.nn.parallel.distributed",
                  "torch._dynamo", "trainkit.train._worker", "trainkit.train.torch")


class Tuner:
    """Runs trials of ``trainable`` over ``param_space``; see API.md ("Tune").

    Args:
        trainable: a function of ``config``, a ``tune.Trainable`` subclass, or a
            ``train.Trainer`` (each trial is then a whole distributed run; put the loop's
            hyperparameters under ``param_space["train_loop_config"]``).
        param_space: the search space: sampling domains, ``grid_search`` and constants.
        tune_config: metric, mode, searcher, scheduler, number of trials.
        run_config: name, storage, stop criteria, per-trial failures and checkpoints.
        resume: what a rerun with the same ``run_config.name`` and storage does when that
            folder already holds an experiment. ``"auto"`` (default): continue it only if it
            is the same experiment (same trainable code, search space, metric, mode,
            searcher and scheduler types, compared by a fingerprint kept in the folder);
            otherwise start a new experiment in a new folder ``<name>-2`` (``-3``, ...) and
            print one line naming it. A folder of that family holding the same definition
            is continued, so rerunning an edited cell twice continues the second one.
            ``True``: continue the experiment in ``<name>`` whatever changed (a
            ``ValueError`` if there is none). ``False``: always start a new experiment (in
            ``<name>`` if it holds none, else in a new folder, as above).
    """

    def __init__(self, trainable: Any, *, param_space: Mapping[str, Any] | None = None,
                 tune_config: TuneConfig | None = None,
                 run_config: RunConfig | None = None, resume: bool | str = "auto") -> None:
        self.trainable = trainable
        self.kind = trainable_kind(trainable)
        self.param_space = dict(param_space or {})
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        if not isinstance(self.tune_config, TuneConfig):
            raise TypeError(f"tune_config is {tune_config!r}; pass a tune.TuneConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError(f"run_config is {run_config!r}; pass a train.RunConfig")
        make_stopper(self.run_config.stop)  # a bad stop criterion fails here, not at a result
        self.resume = check_resume(resume, "experiment")
        self.blob = _pickle_trainable(trainable)
        self.fingerprint = fingerprint(trainable, self.param_space, self.tune_config)
        self.searcher = self._make_searcher()
        self.scheduler = self._make_scheduler()
        self._restored: dict[str, Any] | None = None

    def _make_searcher(self) -> Searcher:
        from trainkit.tune._basic_variant import BasicVariantGenerator

        tc = self.tune_config
        searcher = tc.search_alg if tc.search_alg is not None else \
            BasicVariantGenerator(random_state=tc.seed)
        if not isinstance(searcher, Searcher):
            raise TypeError(f"search_alg is {searcher!r}; pass a tune.search.Searcher")
        inner = getattr(searcher, "searcher", searcher)  # a ConcurrencyLimiter's searcher
        _check_agree(type(inner).__name__, inner, tc.metric, tc.mode)
        took_space = searcher.set_search_properties(
            tc.metric if isinstance(tc.metric, str) or tc.metric is None else list(tc.metric),
            tc.mode if isinstance(tc.mode, str) or tc.mode is None else list(tc.mode),
            self.param_space, num_samples=tc.num_samples)
        domains = sorted("/".join(map(str, path)) for path in flatten_space(self.param_space))
        if not took_space and domains:
            name = type(inner).__name__
            raise ValueError(
                f"{name} was given a search space of its own, and the Tuner's param_space has "
                f"search domains too ({', '.join(domains)}): define every domain in one place, "
                f"{name}(space=...) or Tuner(param_space=...); param_space may still hold "
                "plain values")
        return searcher

    def _make_scheduler(self) -> TrialScheduler:
        from trainkit.tune._schedulers import FIFOScheduler

        tc = self.tune_config
        scheduler = tc.scheduler if tc.scheduler is not None else FIFOScheduler()
        if not isinstance(scheduler, TrialScheduler):
            raise TypeError(f"scheduler is {scheduler!r}; pass a tune.schedulers.TrialScheduler")
        _check_agree(type(scheduler).__name__, scheduler, tc.single_metric, tc.single_mode)
        scheduler.set_search_properties(tc.single_metric, tc.single_mode)
        return scheduler

    # -- restore ---------------------------------------------------------------------------
    @classmethod
    def can_restore(cls, path: str | os.PathLike[str],
                    storage_filesystem: Any = None) -> bool:
        """Whether ``path`` (a local folder, a URI such as ``s3://bucket/runs/sweep``, or a
        path on ``storage_filesystem``) holds an experiment ``Tuner.restore`` can continue."""
        return is_experiment(_location(path, storage_filesystem))

    @classmethod
    def restore(cls, path: str | os.PathLike[str], trainable: Any, *,
                storage_filesystem: Any = None,
                resume_errored: bool = False, restart_errored: bool = False,
                param_space: Mapping[str, Any] | None = None) -> Tuner:
        """Continue the experiment in ``path`` (local, a URI, or a path on
        ``storage_filesystem``, a ``pyarrow.fs.FileSystem``): finished trials are kept,
        unfinished ones resume from their checkpoints, pending ones start; errored ones stay
        errored unless ``resume_errored`` (from their checkpoint) or ``restart_errored``
        (from scratch)."""
        exp = _location(path, storage_filesystem)
        if not is_experiment(exp):
            raise ValueError(f"{exp.uri} holds no experiment to restore (no {JOURNAL}); check "
                             "the path (and storage_filesystem), or start a new Tuner")
        data = read_file(exp.join(TUNER_STATE))
        assert data is not None
        saved = cloudpickle.loads(data)
        parent = os.path.dirname(exp.path) if exp.is_local else posixpath.dirname(exp.path)
        run_config = dataclasses.replace(saved["run_config"], name=exp.name, storage_path=parent,
                                         storage_filesystem=None if exp.is_local else
                                         exp.filesystem)
        tuner = cls(trainable, param_space=param_space or saved["param_space"],
                    tune_config=saved["tune_config"], run_config=run_config)
        tuner._restored = {"resume_errored": resume_errored, "restart_errored": restart_errored}
        return tuner

    # -- fit -------------------------------------------------------------------------------
    def fit(self) -> ResultGrid:
        """Run the sweep; every trial's outcome, errors included (they do not raise)."""
        exp, ran = self._fit_trials()
        tc = self.tune_config
        return ResultGrid(results_of(ran, exp), exp.path, tc.single_metric, tc.single_mode)

    def _fit_trials(self) -> tuple[StorageLocation, list[Trial]]:
        """Run the sweep: (the experiment folder, the trials that ran)."""
        run = self.run_config
        name = run.name or f"{_trainable_name(self.trainable)}_" \
            f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
        storage = run.storage_location()
        if not storage.is_local:  # a missing bucket or refused keys fail before any trial
            check_writable(storage)
        exp, resuming = self._choose_folder(storage, name)
        name = exp.name
        folder = ExperimentFolder(exp)
        try:
            return exp, self._run(folder, name, resuming)
        finally:
            folder.close()

    def _run(self, folder: ExperimentFolder, name: str, resuming: bool) -> list[Trial]:
        tc, run = self.tune_config, self.run_config
        exp_dir = folder.local_dir
        if not rt.is_initialized():
            rt.init()
        # Trials of a script that uses torch will import it too: have the forkserver do it once.
        uses_torch = self.kind == "trainer" or "torch" in sys.modules
        modules = _WORKER_MODULES + (_TORCH_MODULES if uses_torch else ())
        rt.preload_worker_modules(*modules)
        resources, need = self._resources()
        capacity = self._capacity(need)
        trials: list[Trial] = []
        if resuming:
            trials = self._load(exp_dir, folder.location)
            write_fingerprint(exp_dir, self.fingerprint)
            if run.verbose:
                done = sum(t.state.is_terminal for t in trials)
                print(f"[trainkit] resuming experiment {name!r} from {exp_dir}: {len(trials)} "
                      f"trials, {done} finished", flush=True)
        else:
            write_atomic(os.path.join(exp_dir, TUNER_STATE), cloudpickle.dumps({
                "param_space": self.param_space, "tune_config": self.tune_config,
                "run_config": self.run_config}))
            write_fingerprint(exp_dir, self.fingerprint)
        runner = TuneRunner(
            blob=self.blob, kind=self.kind, trainable_name=_trainable_name(self.trainable),
            resources=resources, tune_config=tc, run_config=run, exp_dir=exp_dir,
            exp_name=name, searcher=self.searcher, scheduler=self.scheduler, trials=trials,
            capacity=capacity, param_space=self.param_space, folder=folder)
        runner.run()
        if runner.fail_fast_error is not None:
            raise runner.fail_fast_error
        # Trials created ahead that never started (the sweep ran out of time) are left out.
        return [t for t in runner.trials.values()
                if t.last_result or t.state is not TrialState.PENDING]

    def _choose_folder(self, storage: StorageLocation, name: str
                       ) -> tuple[StorageLocation, bool]:
        """(the experiment folder, whether to continue the experiment in it); see ``resume``."""
        exp_dir = storage.join(name)
        if self._restored is not None:
            return exp_dir, True
        if self.resume is True:
            if not is_experiment(exp_dir):
                raise ValueError(f"resume=True, but {exp_dir} holds no experiment to continue: "
                                 "check the name and storage_path, or pass resume='auto' to "
                                 "start one when there is none")
            return exp_dir, True
        family = experiment_family(storage, name)
        if self.resume == "auto":
            for folder in family:
                stored = read_fingerprint(folder)
                # An experiment from before fingerprints were kept counts as the same.
                if stored == self.fingerprint or (stored is None and folder == exp_dir):
                    return folder, True
        fresh = next_free_folder(storage, name)
        if fresh != exp_dir and self.run_config.verbose:
            why = ("resume=False" if self.resume is False else
                   "the trainable's code or the search space changed")
            print(f"[trainkit] starting a new experiment in {fresh} ({why}; "
                  f"{exp_dir} holds the earlier one; Tuner(resume=True) continues that)",
                  flush=True)
        return fresh, False

    def _load(self, exp_dir: str, exp: StorageLocation) -> list[Trial]:
        opts = self._restored or {}
        state = load_search_state(exp_dir)
        if state is not None:
            searcher_state, scheduler = state
            self.searcher.set_state(searcher_state)
            if scheduler is not None:
                self.scheduler = scheduler
        trials = []
        for rec in replay(exp_dir).values():
            # The folder by name: a remote experiment's local folder differs on each run.
            trial = Trial(rec.trial_id, rec.name, rec.config, os.path.join(exp_dir, rec.name),
                          rec.resources,
                          last_result=rec.last_result, checkpoint=rec.checkpoint,
                          error=rec.error, failures=rec.failures)
            trial.state = {"terminated": TrialState.TERMINATED, "errored": TrialState.ERRORED,
                           "paused": TrialState.PAUSED}.get(rec.state, TrialState.PENDING)
            if trial.state is TrialState.ERRORED and opts.get("restart_errored"):
                shutil.rmtree(trial.trial_dir, ignore_errors=True)
                delete_dir(exp.join(rec.name))
                os.makedirs(trial.trial_dir)
                trial.state, trial.checkpoint, trial.last_result = TrialState.PENDING, None, {}
                trial.error, trial.failures = None, 0
            elif trial.state is TrialState.ERRORED and opts.get("resume_errored"):
                trial.state, trial.error, trial.failures = TrialState.PENDING, None, 0
            trials.append(trial)
        return trials

    def _resources(self) -> tuple[dict[str, float], dict[str, float]]:
        """(what a trial's actor reserves, what a whole trial needs of the cluster)."""
        if self.kind == "trainer":
            scaling = self.trainable.scaling
            need = {k: v * max(1, scaling.num_workers)
                    for k, v in scaling.worker_resources.items()}
            return ({"CPU": 0.0} if scaling.num_workers > 0 else need), need
        res = resources_of(self.trainable) or {"CPU": 1.0}
        return res, reserved_of(self.trainable) or res

    def _capacity(self, need: dict[str, float]) -> int:
        total = rt.cluster_resources()
        fits = math.inf
        for key, amount in need.items():
            if amount <= 0:
                continue
            have = total.get(key, 0.0)
            if amount > have:
                raise InfeasibleError(
                    f"each trial needs {amount:g} {key} but the cluster has {have:g}: lower the "
                    "trial's resources (tune.with_resources, ScalingConfig) or add resources")
            fits = min(fits, math.floor(have / amount + 1e-9))
        cap = self.tune_config.max_concurrent_trials
        limit = int(fits) if fits != math.inf else (cap or 1000)
        return max(1, min(limit, cap) if cap else limit)


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_agree(owner: str, obj: Any, metric: Any, mode: Any) -> None:
    """TuneConfig's metric and mode against those ``obj`` (a searcher or scheduler) was
    given: either may be left out, but two different values fail, naming both."""
    for name, ours in (("metric", metric), ("mode", mode)):
        theirs = getattr(obj, name, None)
        if ours is None or theirs is None:
            continue
        if _norm(ours) != _norm(theirs):
            raise ValueError(
                f"TuneConfig({name}={ours!r}) disagrees with {owner}({name}={theirs!r}): give "
                f"the {name} in one place only (TuneConfig, or {owner}), or the same in both")


def _trainable_name(trainable: Any) -> str:
    if trainable_kind(trainable) == "trainer":
        return "Trainer"
    return str(getattr(trainable, "__name__", type(trainable).__name__))


def _pickle_trainable(trainable: Any) -> bytes:
    try:
        return bytes(cloudpickle.dumps(trainable))
    except Exception as e:
        culprit = unpicklable_capture(getattr(trainable, "__wrapped__", trainable))
        where = f"; it captures {culprit}" if culprit else ""
        raise TypeError(f"the trainable cannot be pickled to send to the trials{where}: {e}. "
                        "Pass large or unpicklable objects with tune.with_parameters(trainable, "
                        "name=value), or create them inside the trainable") from e


def _location(path: str | os.PathLike[str], filesystem: Any) -> StorageLocation:
    """``path`` on ``filesystem``, resolved as ``RunConfig(storage_path=...)`` is."""
    return RunConfig(storage_path=path, storage_filesystem=filesystem).storage_location()

