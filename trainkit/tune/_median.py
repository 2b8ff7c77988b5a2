"""``MedianStoppingRule``: Google Vizier's median stopping rule, as Ray Tune's.

A trial at time ``t >= grace_period`` stops if its best result so far is strictly worse than
the median, over the other trials that got to ``t``, of their mean result between
``grace_period`` and ``t``. With fewer than ``min_samples_required`` such trials it may yield
to waiting trials instead (PAUSE), at most once per ``min_time_slice``.
"""

from __future__ import annotations

import bisect
import logging
import statistics
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from trainkit.tune._metric_scheduler import MetricScheduler
from trainkit.tune._metric_scheduler import WaitingTrials
from trainkit.tune._metric_scheduler import check
from trainkit.tune._scheduler import CONTINUE
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import SchedulerDecision
from trainkit.tune._trial import TrialSnapshot
from trainkit.tune._trial import TrialState

logger = logging.getLogger(__name__)

MAX_POINTS = 512  # running sums kept per trial; beyond it every other one is dropped


@dataclass(slots=True)
class _Curve:
    """One trial's best value, last time, and running sums of its values from grace_period on.

    ``times[i]``, ``sums[i]``, ``counts[i]``: the sum and count of the values reported at
    times in ``[grace_period, times[i]]``. At most ``MAX_POINTS`` (coarsened beyond), so a
    mean "up to t" is exact until a trial reports more often than that.
    """

    best: float
    last_time: float
    times: list[float] = field(default_factory=list)
    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, time: float, value: float, grace_period: float) -> None:
        self.last_time = time
        if time < grace_period:
            return
        cut = bisect.bisect_right(self.times, time)
        if cut < len(self.times):  # it went back (restored from a checkpoint): forget after
            del self.times[cut:], self.sums[cut:], self.counts[cut:]
        self.times.append(time)
        self.sums.append((self.sums[-1] if self.sums else 0.0) + value)
        self.counts.append((self.counts[-1] if self.counts else 0) + 1)
        if len(self.times) > MAX_POINTS:
            self.times, self.sums, self.counts = (
                self.times[::2], self.sums[::2], self.counts[::2])

    def mean_until(self, time: float) -> float | None:
        i = bisect.bisect_right(self.times, time) - 1
        return self.sums[i] / self.counts[i] if i >= 0 else None


class MedianStoppingRule(MetricScheduler):
    """Stops trials that do worse than the median trial, with Ray Tune's rule and arguments.

    At each result at time ``t >= grace_period``, the trial's best result so far is compared
    with the median of the running means (results between ``grace_period`` and ``t``) of the
    other trials whose last result is at ``t`` or later, completed ones included; strictly
    worse: STOP (or PAUSE if not ``hard_stop``; such a trial, resumed, is never judged
    again). With fewer than ``min_samples_required`` such trials, the trial yields (PAUSE) if
    other trials wait to run and it ran ``min_time_slice`` since it last yielded; else it goes
    on. A yielded trial resumes when the runner asks ``choose_trial_to_run``, which picks a
    PENDING trial first, then the PAUSED one furthest behind, so the others catch up (Ray's
    FIFO picks the first PAUSED one, which may be the one that just yielded). Trials without
    a result in ``[grace_period, t]`` are not counted (Ray counts them and gets a NaN
    median). State: a best value and bounded running sums per trial.

    Args:
        time_attr: the result key that measures progress (non-decreasing per trial).
        metric: the result key to optimize; None takes TuneConfig's.
        mode: "min" or "max"; None takes TuneConfig's.
        grace_period: no trial stops, nor counts results, before this time.
        min_samples_required: how many other trials must have got to ``t``.
        min_time_slice: the least time a trial runs between two yields.
        hard_stop: STOP a bad trial; False: PAUSE it.

    Example:
        >>> rule = MedianStoppingRule(metric="loss", mode="min", grace_period=2)
    """

    def __init__(self, time_attr: str = "time_total_s", metric: str | None = None,
                 mode: Literal["min", "max"] | None = None, grace_period: float = 60.0,
                 min_samples_required: int = 3, min_time_slice: float = 0,
                 hard_stop: bool = True) -> None:
        name = type(self).__name__
        check(name, "grace_period", grace_period, grace_period >= 0, ">= 0")
        check(name, "min_samples_required", min_samples_required, min_samples_required >= 1,
              ">= 1")
        check(name, "min_time_slice", min_time_slice, min_time_slice >= 0, ">= 0")
        super().__init__(time_attr, metric, mode)
        self.grace_period = grace_period
        self.min_samples_required = min_samples_required
        self.min_time_slice = min_time_slice
        self.hard_stop = hard_stop
        self._curves: dict[str, _Curve] = {}
        self._stopped: set[str] = set()
        self._last_pause: dict[str, float] = {}
        self._waiting = WaitingTrials()

    def on_trial_add(self, trial: TrialSnapshot) -> None:
        self._check_ready()
        self._waiting.add(trial.trial_id)

    def _record(self, trial_id: str, time: float, value: float) -> _Curve:
        curve = self._curves.get(trial_id)
        if curve is None:
            curve = self._curves[trial_id] = _Curve(value, time)
        better = max if self.mode == "max" else min
        curve.best = better(curve.best, value)
        curve.add(time, value, self.grace_period)
        return curve

    def on_trial_result(self, trial: TrialSnapshot, result: Mapping[str, Any]
                        ) -> SchedulerDecision:
        trial_id = trial.trial_id
        time, value = self._read(trial_id, result)
        self._waiting.discard(trial_id)
        if trial_id in self._stopped:
            return CONTINUE  # paused by the rule and resumed since: FIFO from here, as Ray
        curve = self._record(trial_id, time, value)
        if time < self.grace_period:
            return CONTINUE
        means = [m for i, c in self._curves.items()
                 if i != trial_id and c.last_time >= time
                 and (m := c.mean_until(time)) is not None]
        if len(means) < self.min_samples_required:
            return self._on_insufficient_samples(trial_id, time, len(means))
        median = statistics.median(means)
        if not (curve.best < median if self.mode == "max" else curve.best > median):
            return CONTINUE
        self._stopped.add(trial_id)
        reason = (f"median rule: best {self.metric}={curve.best:g} is worse than the median "
                  f"{median:g} of {len(means)} other trials' means at "
                  f"{self.time_attr}={time:g}")
        logger.debug("trial %s: %s", trial_id, reason)
        if self.hard_stop:
            return SchedulerDecision(Decision.STOP, reason=reason)
        self._waiting.add(trial_id)
        return SchedulerDecision(Decision.PAUSE, reason=reason)

    def _on_insufficient_samples(self, trial_id: str, time: float, samples: int
                                 ) -> SchedulerDecision:
        last = self._last_pause.get(trial_id, float("-inf"))
        if time - last > self.min_time_slice and self._waiting.any_besides(trial_id):
            self._last_pause[trial_id] = time
            self._waiting.add(trial_id)
            return SchedulerDecision(Decision.PAUSE, reason=(
                f"median rule: {samples} of {self.min_samples_required} samples needed at "
                f"{self.time_attr}={time:g}; yielding to waiting trials"))
        return CONTINUE

    def on_trial_complete(self, trial: TrialSnapshot, result: Mapping[str, Any]) -> None:
        self._waiting.discard(trial.trial_id)
        curve = self._curves.get(trial.trial_id)
        if self._has_keys(result):
            time, value = self._read(trial.trial_id, result)
            if curve is None or time > curve.last_time:  # not the last result once more
                self._record(trial.trial_id, time, value)

    def on_trial_error(self, trial: TrialSnapshot) -> None:
        self._waiting.discard(trial.trial_id)

    def choose_trial_to_run(self, candidates: Sequence[TrialSnapshot]) -> str | None:
        """The first PENDING trial, else the PAUSED one furthest behind (Ray: the first)."""
        def time_of(c: TrialSnapshot) -> float:
            curve = self._curves.get(c.trial_id)
            return curve.last_time if curve else float("-inf")

        pending = [c for c in candidates if c.state is TrialState.PENDING]
        paused = [c for c in candidates if c.state is TrialState.PAUSED]
        chosen = (pending[0].trial_id if pending
                  else min(paused, key=time_of).trial_id if paused else None)
        self._waiting.sync(candidates, chosen)
        return chosen

    def debug_string(self) -> str:
        return f"MedianStoppingRule: num_stopped={len(self._stopped)}"
