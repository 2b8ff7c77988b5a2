"""What the metric-driven schedulers share: metric and mode, reading a result, a percentile,
and which trials wait to run."""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from numbers import Real
from typing import Any

from trainkit.tune._scheduler import TrialScheduler
from trainkit.tune._trial import TrialSnapshot

MODES = ("min", "max")


def check_mode(owner: str, mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"{owner}: `mode` is {mode!r}, but must be 'min' or 'max'")


def check(owner: str, name: str, value: Any, ok: bool, rule: str) -> None:
    """Raise the optuna-shaped ValueError: the field, its value, and the rule it broke."""
    if not ok:
        raise ValueError(f"{owner}: `{name}` is {value!r}, but must be {rule}")


class MetricScheduler(TrialScheduler):
    """A scheduler that ranks trials by ``metric`` (``mode`` "max" or "min") over ``time_attr``.

    Its ``set_search_properties`` fills in the metric and mode it lacks, as the base does, then
    raises ValueError if it still has no metric or mode.
    """

    def __init__(self, time_attr: str, metric: str | None, mode: str | None) -> None:
        check_mode(type(self).__name__, mode)
        self.time_attr = time_attr
        self.metric = metric
        self.mode = mode

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        check_mode("TuneConfig", mode)
        super().set_search_properties(metric, mode)
        self._check_ready()
        return True

    def _check_ready(self) -> None:
        if not self.metric or self.mode not in MODES:
            name = type(self).__name__
            raise ValueError(
                f"{name} needs a metric and a mode, but has metric={self.metric!r} and "
                f"mode={self.mode!r}: set TuneConfig(metric=..., mode=...), or pass "
                f"metric= and mode= to {name}(...)")

    @property
    def _sign(self) -> float:
        """Multiplies a metric value into a score where higher is better."""
        return 1.0 if self.mode == "max" else -1.0

    def _number(self, trial_id: str, result: Mapping[str, Any], key: str, role: str) -> float:
        if key not in result:
            raise ValueError(
                f"{type(self).__name__}: trial {trial_id} reported a result without {key!r} "
                f"(its {role}); the result has {sorted(result)}. Report {key!r} in every "
                f"result, or set the {role} to one of those keys.")
        value = result[key]
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"{type(self).__name__}: trial {trial_id} reported {key}={value!r} "
                            f"({type(value).__name__}), but its {role} must be a number")
        return float(value)

    def _read(self, trial_id: str, result: Mapping[str, Any]) -> tuple[float, float]:
        """``(time, metric value)`` of a result; raises ValueError naming a missing key."""
        self._check_ready()
        assert self.metric is not None
        return (self._number(trial_id, result, self.time_attr, "time_attr"),
                self._number(trial_id, result, self.metric, "metric"))

    def _has_keys(self, result: Mapping[str, Any]) -> bool:
        return self.time_attr in result and self.metric in result


def percentile(values: Iterable[float], q: float) -> float | None:
    """``numpy.nanpercentile(values, q)`` (linear interpolation); None without a number."""
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        return None
    rank = q / 100.0 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


class WaitingTrials:
    """The scheduler's view of which trials wait to run (PENDING or PAUSED).

    Schedulers that yield to waiting trials (Ray's median rule and PBT time-share so) learn it
    from events: a trial waits from ``on_trial_add`` and from a PAUSE it was given, and stops
    waiting when it reports, ends, or is chosen to run; each ``choose_trial_to_run`` call
    replaces the set with its candidates.
    """

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def add(self, trial_id: str) -> None:
        self._ids.add(trial_id)

    def discard(self, trial_id: str) -> None:
        self._ids.discard(trial_id)

    def sync(self, candidates: Sequence[TrialSnapshot], chosen: str | None) -> None:
        self._ids = {c.trial_id for c in candidates if not c.state.is_terminal}
        if chosen is not None:
            self._ids.discard(chosen)

    def any_besides(self, trial_id: str) -> bool:
        return any(i != trial_id for i in self._ids)
