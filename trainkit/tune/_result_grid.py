"""``ResultGrid``: the trials of a finished sweep, with the best one a call away."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from trainkit._result_log import flatten_metrics
from trainkit.train import Checkpoint
from trainkit.train import Result as TrainResult
from trainkit.train import RunConfig
from trainkit.train.hosting import StorageLocation
from trainkit.train.hosting import read_file

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped]


@dataclass(frozen=True)
class Result(TrainResult):
    """One trial's outcome: ``metrics`` (its last result), ``config``, ``checkpoint`` (its
    latest), ``path`` (its folder), ``error`` and ``metrics_dataframe`` (every result)."""

    config: dict[str, Any] = field(default_factory=dict)


def _kept_checkpoints(trial: StorageLocation) -> list[tuple[Checkpoint, dict[str, Any]]]:
    fs = None if trial.is_local else trial.filesystem
    try:
        index = json.loads(read_file(trial.join("checkpoints.json")) or b"")
    except json.JSONDecodeError:
        return []
    return [(Checkpoint(trial.join(c["dir"]).path, fs), c["metrics"])
            for c in index["checkpoints"]]


def trial_result(trial: Any, exp: StorageLocation | None = None) -> Result:
    """A trial's ``Result``; its folder is in ``exp`` (default: its local ``trial_dir``)."""
    error = RuntimeError(trial.error) if trial.error else None
    where = exp.join(trial.name) if exp is not None and not exp.is_local else None
    fs = where.filesystem if where is not None else None
    checkpoint = Checkpoint(trial.checkpoint, fs) if trial.checkpoint else None
    kept = _kept_checkpoints(where or RunConfig(storage_path=trial.trial_dir).storage_location())
    return Result(metrics=dict(trial.last_result), checkpoint=checkpoint,
                  path=where.path if where is not None else trial.trial_dir,
                  best_checkpoints=kept, error=error, config=dict(trial.config), filesystem=fs)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ResultGrid:
    def __init__(self, results: list[Result], experiment_path: str, metric: str | None,
                 mode: str | None) -> None:
        self._results = results
        self.experiment_path = experiment_path
        self._metric = metric
        self._mode = mode

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[BaseException]:
        return [r.error for r in self._results if r.error is not None]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def num_terminated(self) -> int:
        return sum(1 for r in self._results if r.error is None)

    def get_best_result(self, metric: str | None = None, mode: str | None = None,
                        scope: str = "last", filter_nan_and_inf: bool = True) -> Result:
        """The best trial by ``metric``: its last result (scope "last"), the average of its
        last 5 or 10 ("last-5-avg", "last-10-avg"), or its best result ever ("all")."""
        metric = metric or self._metric
        mode = mode or self._mode
        if not metric or mode not in ("min", "max"):
            raise ValueError("get_best_result() needs a metric and mode='min' or 'max': pass "
                             "them, or set TuneConfig(metric=..., mode=...)")
        if scope not in ("last", "all", "last-5-avg", "last-10-avg"):
            raise ValueError(f"scope is {scope!r}; use 'last', 'all', 'last-5-avg' or "
                             "'last-10-avg'")
        scored = []
        for result in self._results:
            value = self._score(result, metric, mode, scope)
            if value is not None and (_finite(value) or not filter_nan_and_inf):
                scored.append((value, result))
        if not scored:
            raise ValueError(f"no trial reported {metric!r} (trials: {len(self._results)}, "
                             f"errors: {self.num_errors})")
        pick = min if mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])[1]

    @staticmethod
    def _score(result: Result, metric: str, mode: str, scope: str) -> float | None:
        if scope == "last":
            value: Any = result.metrics.get(metric)
            return float(value) if _finite(value) else None
        df = result.metrics_dataframe
        if metric not in df:
            return None
        values: list[float] = [float(v) for v in df[metric].tolist() if _finite(v)]
        if not values:
            return None
        if scope == "all":
            return float(min(values) if mode == "min" else max(values))
        n = 5 if scope == "last-5-avg" else 10
        tail = values[-n:]
        return sum(tail) / len(tail)

    def get_dataframe(self, filter_metric: str | None = None,
                      filter_mode: str | None = None) -> pandas.DataFrame:
        """One row per trial: its last result (or its best by ``filter_metric``), its config
        as ``config/...`` columns, and ``logdir``."""
        import pandas

        rows = []
        for r in self._results:
            metrics = dict(r.metrics)
            if filter_metric and filter_mode in ("min", "max"):
                df = r.metrics_dataframe
                if filter_metric in df and len(df):
                    idx = df[filter_metric].idxmin() if filter_mode == "min" else \
                        df[filter_metric].idxmax()
                    metrics = df.loc[idx].to_dict()
            row = flatten_metrics(metrics)
            row.update({f"config/{k}": v for k, v in flatten_metrics(r.config).items()})
            row["logdir"] = r.path
            rows.append(row)
        return pandas.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"ResultGrid({len(self)} trials, {self.num_errors} errors, "
                f"{self.experiment_path!r})")


def results_of(trials: list[Any], exp: StorageLocation | None = None) -> list[Result]:
    return [trial_result(t, exp) for t in trials]

