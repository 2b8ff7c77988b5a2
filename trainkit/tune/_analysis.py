"""``ExperimentAnalysis``: what ``tune.run`` returns, with Ray Tune's names.

The same trials a ``ResultGrid`` holds, seen Ray's older way: ``trials`` (each with its id,
config, last result, status and checkpoint), ``best_trial``/``best_config``/``best_result``/
``best_checkpoint`` by the default metric and mode (those given to ``tune.run``), and
``results_df``, one row per trial indexed by trial id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import final

from trainkit._result_log import flatten_metrics
from trainkit.train import Checkpoint
from trainkit.tune._result_grid import Result
from trainkit.tune._result_grid import ResultGrid

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]

_STATUS = {"terminated": "TERMINATED", "errored": "ERROR", "paused": "PAUSED",
           "pending": "PENDING", "running": "RUNNING"}


@final
@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial of a finished ``tune.run``, as Ray's ``Trial`` shows it.

    ``status`` is Ray's string ("TERMINATED", "ERROR", ...); ``path`` (also ``local_path``)
    is the trial's folder; ``checkpoint`` its latest; ``error`` the error text, if it failed.
    """

    trial_id: str
    trial_name: str
    config: dict[str, Any]
    last_result: dict[str, Any]
    status: str
    checkpoint: Checkpoint | None
    path: str
    error: str | None
    result: Result

    @property
    def local_path(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.trial_name


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


@final
class ExperimentAnalysis:
    """The outcome of ``tune.run``: every trial, and the best by ``default_metric`` and
    ``default_mode`` (``tune.run(metric=, mode=)``); the ``get_best_*`` methods take their
    own metric and mode."""

    def __init__(self, trials: list[TrialRecord], experiment_path: str,
                 default_metric: str | None = None, default_mode: str | None = None) -> None:
        if default_mode is not None and default_mode not in ("min", "max"):
            raise ValueError(f"`default_mode` is {default_mode!r}, but must be 'min' or 'max'")
        self.trials = list(trials)
        self.experiment_path = experiment_path
        self.default_metric = default_metric
        self.default_mode = default_mode
        self._grid = ResultGrid([t.result for t in self.trials], experiment_path,
                                default_metric, default_mode)

    def __repr__(self) -> str:
        return f"ExperimentAnalysis({len(self.trials)} trials, {self.experiment_path!r})"

    # -- with explicit metric and mode ---------------------------------------------------
    def _resolve(self, metric: str | None, mode: str | None, what: str) -> tuple[str, str]:
        metric = metric or self.default_metric
        mode = mode or self.default_mode
        if not metric or not mode:
            raise ValueError(
                f"{what} needs a metric and a mode: pass metric= and mode= to tune.run(), or "
                f"call the get_best_* method with metric= and mode=")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` is {mode!r}, but must be 'min' or 'max'")
        return metric, mode

    def get_best_trial(self, metric: str | None = None, mode: str | None = None,
                       scope: str = "last", filter_nan_and_inf: bool = True
                       ) -> TrialRecord | None:
        """The best trial by ``metric`` (scope: "last", "all", "last-5-avg",
        "last-10-avg"); None if no trial reported it, as in Ray."""
        metric, mode = self._resolve(metric, mode, "get_best_trial()")
        try:
            best = self._grid.get_best_result(metric, mode, scope, filter_nan_and_inf)
        except ValueError as e:
            if "no trial reported" in str(e):
                return None
            raise
        return next(t for t in self.trials if t.result is best)

    def get_best_config(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last") -> dict[str, Any] | None:
        trial = self.get_best_trial(metric, mode, scope)
        return dict(trial.config) if trial is not None else None

    def get_best_checkpoint(self, trial: TrialRecord, metric: str | None = None,
                            mode: str | None = None) -> Checkpoint | None:
        """The trial's kept checkpoint with the best ``metric`` (as reported with it); its
        latest checkpoint if none of the kept ones carries the metric."""
        metric, mode = self._resolve(metric, mode, "get_best_checkpoint()")
        scored = [(float(m[metric]), c) for c, m in trial.result.best_checkpoints
                  if _finite(m.get(metric))]
        if scored:
            pick = min if mode == "min" else max
            return pick(scored, key=lambda pair: pair[0])[1]
        return trial.checkpoint

    def get_all_configs(self) -> dict[str, dict[str, Any]]:
        """Each trial's folder -> its config."""
        return {t.path: dict(t.config) for t in self.trials}

    def dataframe(self, metric: str | None = None, mode: str | None = None
                  ) -> pandas.DataFrame:
        """One row per trial: its last result, or its best one by ``metric`` and ``mode``."""
        return self._grid.get_dataframe(metric, mode)

    # -- by the default metric and mode ---------------------------------------------------
    @property
    def best_trial(self) -> TrialRecord | None:
        return self.get_best_trial()

    @property
    def best_config(self) -> dict[str, Any] | None:
        return self.get_best_config()

    @property
    def best_result(self) -> dict[str, Any] | None:
        trial = self.best_trial
        return dict(trial.last_result) if trial is not None else None

    @property
    def best_checkpoint(self) -> Checkpoint | None:
        trial = self.best_trial
        return self.get_best_checkpoint(trial) if trial is not None else None

    @property
    def best_logdir(self) -> str | None:
        trial = self.best_trial
        return trial.path if trial is not None else None

    @property
    def best_dataframe(self) -> pandas.DataFrame | None:
        trial = self.best_trial
        return trial.result.metrics_dataframe if trial is not None else None

    # -- every trial ----------------------------------------------------------------------
    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """Trial id -> its last result."""
        return {t.trial_id: dict(t.last_result) for t in self.trials}

    @property
    def results_df(self) -> pandas.DataFrame:
        """One row per trial (index: trial id): its last result, flattened with "/", and
        its config as ``config/...`` columns."""
        import pandas

        rows = []
        for t in self.trials:
            row = flatten_metrics(t.last_result)
            row.update({f"config/{k}": v for k, v in flatten_metrics(t.config).items()})
            row["trial_id"] = t.trial_id
            rows.append(row)
        if not rows:
            return pandas.DataFrame(columns=["trial_id"]).set_index("trial_id")
        return pandas.DataFrame(rows).set_index("trial_id")

    @property
    def trial_dataframes(self) -> dict[str, pandas.DataFrame]:
        """Each trial's folder -> every result it reported."""
        return {t.path: t.result.metrics_dataframe for t in self.trials}


def trial_records(trials: list[Any], results: list[Result]) -> list[TrialRecord]:
    """Runner trials and their results, paired in order, as ``TrialRecord``s."""
    return [TrialRecord(t.trial_id, t.name, dict(t.config), dict(t.last_result),
                        _STATUS.get(t.state.value, t.state.value.upper()),
                        Checkpoint(t.checkpoint) if t.checkpoint else None, t.trial_dir,
                        t.error, r)
            for t, r in zip(trials, results, strict=True)]
