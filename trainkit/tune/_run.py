"""``tune.run`` and ``tune.Experiment``: Ray Tune's function API over the ``Tuner``.

``tune.run(trainable, config=..., metric=..., mode=..., stop=...)`` builds a ``Tuner`` from
its arguments (Ray's names), runs it and returns an ``ExperimentAnalysis``. As in Ray, a trial
that failed for good makes it raise ``TuneError`` unless ``raise_on_failed_trial=False``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import final

from trainkit.exceptions import TuneError
from trainkit.train import CheckpointConfig
from trainkit.train import RunConfig
from trainkit.tune._analysis import ExperimentAnalysis
from trainkit.tune._analysis import trial_records
from trainkit.tune._config import FailureConfig
from trainkit.tune._config import TuneConfig
from trainkit.tune._result_grid import results_of
from trainkit.tune._trainable import with_resources
from trainkit.tune._trial import TrialState
from trainkit.tune._tuner import Tuner

_UNSET: Any = object()
_RESUME = (True, False, "AUTO")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """One experiment's definition, for ``tune.run(experiment)`` (Ray's ``tune.Experiment``).

    Args:
        name: the experiment's folder under ``storage_path``.
        run: the trainable (a function, a ``tune.Trainable`` subclass or a Trainer).
        stop: as ``RunConfig(stop=...)``.
        config: the search space.
        resources_per_trial: e.g. ``{"cpu": 2, "gpu": 1}``.
        num_samples: trials to run (repeats of the grid with ``grid_search``).
        storage_path: where the experiment folder goes.
        checkpoint_config: a ``CheckpointConfig``.
        max_failures: retries of a failed trial.
    """

    name: str
    run: Any
    stop: Any = None
    config: Mapping[str, Any] = field(default_factory=dict)
    resources_per_trial: Mapping[str, float] | None = None
    num_samples: int = 1
    storage_path: str | os.PathLike[str] | None = None
    checkpoint_config: CheckpointConfig | None = None
    max_failures: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Experiment: `name` is {self.name!r}, but must be a folder name")
        if self.run is None:
            raise ValueError("Experiment: `run` is None; pass the trainable to run")
        if not isinstance(self.config, Mapping):
            raise TypeError(f"Experiment: `config` is {self.config!r}, but must be a dict "
                            "(the search space)")


def run(run_or_experiment: Any, *, config: Mapping[str, Any] | None = None,
        param_space: Mapping[str, Any] | None = None, num_samples: int = 1,
        metric: str | None = None, mode: str | None = None, scheduler: Any = None,
        search_alg: Any = None, stop: Any = None,
        resources_per_trial: Mapping[str, float] | None = None,
        storage_path: str | os.PathLike[str] | None = None, name: str | None = None,
        resume: bool | str = False, max_failures: int = 0, fail_fast: bool | str = False,
        checkpoint_config: CheckpointConfig | None = None,
        max_concurrent_trials: int | None = None, time_budget_s: float | None = None,
        reuse_actors: bool = True, verbose: int = 1, callbacks: Sequence[Any] = (),
        raise_on_failed_trial: bool = True) -> ExperimentAnalysis:
    """Run a sweep (Ray's ``tune.run``) and return its ``ExperimentAnalysis``.

    ``run_or_experiment`` is a trainable or a ``tune.Experiment``. ``config`` is the search
    space (the Tuner's ``param_space``; give it once). ``resume`` follows the Tuner's rules
    (see ``Tuner(resume=...)``): False (default, as in Ray) starts a new experiment (in a new
    folder ``<name>-2`` if ``name`` holds one); True continues the experiment ``name`` whatever
    changed (a ``ValueError`` if there is none); "AUTO" continues it only if the trainable's
    code and the search space are the same, else starts a new one in a new folder.
    """
    if config is not None and param_space is not None:
        raise ValueError("tune.run() got both `config` and `param_space`: they are the same "
                         "search space; pass it once, as config= (tune.run's name)")
    space = config if config is not None else param_space
    trainable = run_or_experiment
    if isinstance(run_or_experiment, Experiment):
        exp = run_or_experiment
        if space is not None and exp.config:
            raise ValueError("tune.run() got a search space both in the Experiment (config=) "
                             "and as `config`: pass it in one place")
        trainable, space = exp.run, space if space is not None else exp.config
        name = name or exp.name
        stop = stop if stop is not None else exp.stop
        resources_per_trial = resources_per_trial or exp.resources_per_trial
        num_samples = exp.num_samples if num_samples == 1 else num_samples
        storage_path = storage_path if storage_path is not None else exp.storage_path
        checkpoint_config = checkpoint_config or exp.checkpoint_config
        max_failures = max_failures or exp.max_failures
    if isinstance(trainable, (list, tuple)):
        raise TypeError("tune.run() takes one trainable or one tune.Experiment, not a list")
    if resume not in _RESUME and not (isinstance(resume, str) and resume.upper() == "AUTO"):
        raise ValueError(f"`resume` is {resume!r}, but must be True, False or 'AUTO'")
    if resources_per_trial is not None:
        trainable = with_resources(trainable, resources_per_trial)
    run_config = RunConfig(
        name=name, storage_path=storage_path, stop=stop, verbose=verbose,
        callbacks=tuple(callbacks), checkpoint_config=checkpoint_config or CheckpointConfig(),
        failure_config=FailureConfig(max_failures=max_failures, fail_fast=fail_fast))
    tune_config = TuneConfig(metric=metric, mode=mode, search_alg=search_alg,
                             scheduler=scheduler, num_samples=num_samples,
                             max_concurrent_trials=max_concurrent_trials,
                             time_budget_s=time_budget_s, reuse_actors=reuse_actors)
    if resume is True and name is None:
        raise ValueError("tune.run(resume=True) needs the experiment's name=: without one "
                         "each run gets a new, dated folder")
    tuner = Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config,
                  resume="auto" if isinstance(resume, str) else resume)
    folder, trials = tuner._fit_trials()
    analysis = ExperimentAnalysis(trial_records(trials, results_of(trials, folder)), folder.path,
                                  metric, mode)
    failed = [t for t in trials if t.state is TrialState.ERRORED]
    if failed and raise_on_failed_trial:
        names = ", ".join(t.name for t in failed)
        first = (failed[0].error or "").splitlines()
        raise TuneError(f"{len(failed)} trials did not complete: {names}; the first failed "
                        f"with: {first[0] if first else '?'}. Pass raise_on_failed_trial="
                        "False to get the ExperimentAnalysis anyway")
    return analysis

