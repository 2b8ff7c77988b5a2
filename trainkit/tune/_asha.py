"""``ASHAScheduler``: asynchronous successive halving, as Ray Tune's ``AsyncHyperBandScheduler``.

Bracket ``s`` has rungs at ``grace_period * reduction_factor ** (k + s) <= max_t``. When a
trial's ``time_attr`` first reaches a rung (the highest one it reached), its score is compared
with the scores other trials recorded there: below the ``1 - 1/reduction_factor`` percentile of
them (outside their top ``1/reduction_factor``) it stops. Either way its score is recorded. The
first trial at a rung always goes on. A trial that reaches ``max_t`` stops if
``stop_last_trials``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any
from typing import Literal

from trainkit.tune._metric_scheduler import MetricScheduler
from trainkit.tune._metric_scheduler import check
from trainkit.tune._metric_scheduler import percentile
from trainkit.tune._scheduler import CONTINUE
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import SchedulerDecision
from trainkit.tune._trial import TrialSnapshot

logger = logging.getLogger(__name__)


class _Bracket:
    """The rungs of one bracket, highest first: ``(milestone, {trial_id: score})``."""

    def __init__(self, grace_period: float, max_t: float, rf: float, s: int,
                 stop_last_trials: bool) -> None:
        self.rf = rf
        self.stop_last_trials = stop_last_trials
        self.rungs: list[tuple[float, dict[str, float]]] = []
        k = 0
        while grace_period * rf ** (k + s) <= max_t:
            self.rungs.insert(0, (grace_period * rf ** (k + s), {}))
            k += 1

    def cutoff(self, recorded: Mapping[str, float]) -> float | None:
        return percentile(recorded.values(), (1 - 1 / self.rf) * 100)

    def on_result(self, trial_id: str, time: float, score: float) -> tuple[bool, str]:
        """Ray's ``_Bracket.on_result``: ``(stop, why)`` for a result at ``time``."""
        for milestone, recorded in self.rungs:
            if time >= milestone and trial_id in recorded and not self.stop_last_trials:
                break  # judged at this rung already; lower rungs were judged before it
            if time < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            n = len(recorded)
            recorded[trial_id] = score  # a NaN too, as Ray: percentile() skips it
            if cutoff is not None and score < cutoff:
                return True, f"rung {milestone:g}: below the cutoff of {n} earlier results"
            return False, f"rung {milestone:g}: recorded"
        return False, ""

    def debug_str(self) -> str:
        rungs = ", ".join(f"{m:g}: {len(r)}" for m, r in self.rungs)
        return f"rungs (milestone: results) {rungs}"


class ASHAScheduler(MetricScheduler):
    """Asynchronous successive halving (ASHA, Li et al. 2018), with Ray Tune's semantics.

    Each trial joins one of ``brackets`` brackets; bracket ``s`` has rungs at
    ``grace_period * reduction_factor ** (k + s)`` for every ``k >= 0`` that stays within
    ``max_t``. When a trial first reaches a rung, its result is compared with those other
    trials recorded at that rung: below the ``(1 - 1/reduction_factor)`` percentile of them
    (linear interpolation, as ``numpy.percentile``), it stops; either way its result is
    recorded. Trials at ``max_t`` stop if ``stop_last_trials``, else they keep being judged at
    the top rung and end by themselves. Ray draws each trial's bracket at random with weights
    ``e ** (rungs - most rungs)``; here they are dealt with those weights in a fixed (smooth
    weighted) round robin, so runs repeat. State: one score per trial per rung, and a live
    trial's bracket.

    Args:
        time_attr: the result key that measures progress (non-decreasing per trial).
        metric: the result key to optimize; None takes TuneConfig's.
        mode: "min" or "max"; None takes TuneConfig's.
        max_t: the most ``time_attr`` a trial gets.
        grace_period: the first rung: no trial stops before it.
        reduction_factor: each rung keeps the top ``1/reduction_factor`` of its results.
        brackets: how many brackets (bracket ``s`` starts at ``grace_period * rf ** s``).
        stop_last_trials: stop trials at ``max_t``.

    Raises:
        ValueError: an argument out of range (the message names it and the rule).

    Example:
        >>> from trainkit.tune._trial import TrialSnapshot, TrialState
        >>> asha = ASHAScheduler(metric="loss", mode="min", max_t=9, reduction_factor=3)
        >>> a, b = (TrialSnapshot(i, {}, TrialState.RUNNING) for i in "ab")
        >>> asha.on_trial_add(a); asha.on_trial_add(b)
        >>> asha.on_trial_result(a, {"training_iteration": 1, "loss": 0.5}).decision
        <Decision.CONTINUE: 'continue'>
        >>> asha.on_trial_result(b, {"training_iteration": 1, "loss": 0.9}).reason
        'ASHA: loss=0.9 at training_iteration=1, rung 1: below the cutoff of 1 earlier results'
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: Literal["min", "max"] | None = None, max_t: float = 100,
                 grace_period: float = 1, reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True) -> None:
        name = type(self).__name__
        check(name, "grace_period", grace_period, grace_period > 0, "> 0")
        check(name, "reduction_factor", reduction_factor, reduction_factor > 1, "> 1")
        check(name, "max_t", max_t, max_t >= grace_period,
              f">= grace_period ({grace_period!r})")
        check(name, "brackets", brackets, brackets >= 1, ">= 1")
        super().__init__(time_attr, metric, mode)
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.stop_last_trials = stop_last_trials
        self._brackets = [_Bracket(grace_period, max_t, reduction_factor, s, stop_last_trials)
                          for s in range(brackets)]
        most = max(len(b.rungs) for b in self._brackets)
        self._weights = [math.exp(len(b.rungs) - most) for b in self._brackets]
        self._credit = [0.0] * brackets  # smooth weighted round robin (nginx's)
        self._bracket_of: dict[str, _Bracket] = {}
        self.num_stopped = 0

    def _next_bracket(self) -> _Bracket:
        for i, w in enumerate(self._weights):
            self._credit[i] += w
        best = max(range(len(self._credit)), key=lambda i: self._credit[i])
        self._credit[best] -= sum(self._weights)
        return self._brackets[best]

    def on_trial_add(self, trial: TrialSnapshot) -> None:
        self._check_ready()
        if trial.trial_id not in self._bracket_of:
            self._bracket_of[trial.trial_id] = self._next_bracket()

    def on_trial_result(self, trial: TrialSnapshot, result: Mapping[str, Any]
                        ) -> SchedulerDecision:
        time, value = self._read(trial.trial_id, result)
        if trial.trial_id not in self._bracket_of:
            self.on_trial_add(trial)
        if self.stop_last_trials and time >= self.max_t:
            self.num_stopped += 1
            return SchedulerDecision(Decision.STOP, reason=(
                f"ASHA: {self.time_attr}={time:g} reached max_t={self.max_t:g}"))
        stop, why = self._bracket_of[trial.trial_id].on_result(
            trial.trial_id, time, self._sign * value)
        if not stop:
            return CONTINUE
        self.num_stopped += 1
        reason = f"ASHA: {self.metric}={value:g} at {self.time_attr}={time:g}, {why}"
        logger.debug("trial %s stops: %s", trial.trial_id, reason)
        return SchedulerDecision(Decision.STOP, reason=reason)

    def on_trial_complete(self, trial: TrialSnapshot, result: Mapping[str, Any]) -> None:
        bracket = self._bracket_of.pop(trial.trial_id, None)
        if bracket is not None and self._has_keys(result):
            time, value = self._read(trial.trial_id, result)
            bracket.on_result(trial.trial_id, time, self._sign * value)

    def on_trial_error(self, trial: TrialSnapshot) -> None:
        self._bracket_of.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        lines = [f"ASHAScheduler: {self.num_stopped} stopped"]
        lines += [f"  bracket {i}: {b.debug_str()}" for i, b in enumerate(self._brackets)]
        return "\n".join(lines)


AsyncHyperBandScheduler = ASHAScheduler
