"""``HyperBandScheduler``: synchronous HyperBand (Li et al. 2016) as Ray Tune's, with PAUSE.

Trials fill brackets in turn. Bracket ``s`` takes ``n = ceil(s_max_1 / (s + 1) * eta ** s)``
trials and runs them to ``r = max_t * eta ** -s``. A trial that gets there pauses until every
live trial of its bracket has. Then the best ``ceil(n / eta)`` go on to ``r * eta``
(at most ``max_t``) and the others stop, ``s`` times over. Trials stop at the last milestone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Literal

from trainkit.tune._metric_scheduler import MetricScheduler
from trainkit.tune._metric_scheduler import check
from trainkit.tune._scheduler import CONTINUE
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import SchedulerDecision
from trainkit.tune._trial import TrialSnapshot
from trainkit.tune._trial import TrialState

logger = logging.getLogger(__name__)


class _Bracket:
    """One bracket: its live trials' last time and score, and the milestone they run to."""

    def __init__(self, s: int, n0: int, r0: int, max_t: float, eta: float,
                 stop_last_trials: bool) -> None:
        self.s = s
        self.n0 = n0
        self.n = n0
        self.joined = 0
        self.r = r0
        self.milestone: float = r0
        self.halves = s
        self.max_t = max_t
        self.eta = eta
        self.stop_last_trials = stop_last_trials
        self.time: dict[str, float] = {}  # live trial -> time_attr of its last result
        self.score: dict[str, float] = {}  # live trial -> its last score, higher is better
        self.progress = 0.0
        self.total_work = 0
        n: float = n0
        r: float = r0
        for _ in range(s + 1):  # Ray's _calculate_total_work
            self.total_work += int(n) * int(r)
            n = math.ceil(n / eta)
            r *= eta

    def add(self, trial_id: str) -> None:
        self.time[trial_id] = 0.0
        self.joined += 1

    def filled(self) -> bool:
        # Ray compares its live trials with n, so a bracket whose trials ended takes new
        # ones; trials created one at a time (as the runner does) would then all land in
        # the first bracket.
        return self.joined >= self.n0

    def update(self, trial_id: str, time: float, score: float) -> None:
        self.progress += max(time - self.time[trial_id], 0.0)
        self.time[trial_id] = time
        self.score[trial_id] = score

    def remove(self, trial_id: str) -> None:
        self.time.pop(trial_id, None)
        self.score.pop(trial_id, None)

    def behind(self, trial_id: str) -> bool:
        """Whether the trial still has to run to reach the milestone (Ray's continue_trial)."""
        if not self.stop_last_trials and self.halves == 0:
            return True
        return self.time[trial_id] < self.milestone

    def rung_done(self, force: bool = False) -> bool:
        """Every live trial is at the milestone, and every trial of the bracket has come."""
        return (force or self.filled()) and all(t >= self.milestone for t in self.time.values())

    def completion(self) -> float:
        if self.stop_last_trials and self.halves == 0 and self.rung_done():
            return 1.0
        return min(self.progress / self.total_work, 1.0) if self.total_work else 1.0

    def halve(self) -> tuple[list[str], list[str]]:
        """Ray's successive_halving: ``(good, bad)``, the good ones best last."""
        self.halves -= 1
        self.n = math.ceil(self.n / self.eta)
        self.r = int(min(self.r * self.eta, self.max_t))
        self.milestone = self.r
        ranked = sorted(self.time, key=lambda t: self.score[t])
        cut = max(len(ranked) - self.n, 0)
        return ranked[cut:], ranked[:cut]


class HyperBandScheduler(MetricScheduler):
    """Synchronous HyperBand with Ray Tune's brackets, pausing trials at each milestone.

    ``s_max_1 = round(log(max_t) / log(eta)) + 1`` brackets make a band; bracket ``s`` (filled
    in the order ``s = 0, 1, ...``) takes ``ceil(s_max_1 / (s + 1) * eta ** s)`` trials with a
    first milestone of ``int(max_t * eta ** -s)`` (brackets where that is 0 are skipped). A
    trial joins the current bracket until it has had its number of trials (Ray refills a
    bracket when trials leave it), and runs to the bracket's milestone. A rung is complete
    when every trial of the bracket has come and the live ones are all at the milestone.

    How the runner drives it:

    - ``on_trial_result``: CONTINUE below the milestone. At the milestone, PAUSE while other
      live trials of the bracket are behind. The result that completes the rung halves the
      bracket: the best ``ceil(n / eta)`` go on to the next milestone (the reporting trial
      gets CONTINUE or STOP), the others stop.
    - ``pending_decisions()``: the STOPs for the paused losers, drained by the call; poll it
      after every event. Ended trials (``on_trial_complete`` or ``on_trial_error``) leave the
      bracket, which may complete its rung too.
    - ``choose_trial_to_run``: a PENDING or PAUSED trial still behind its bracket's milestone
      (so the promoted ones resume), least completed bracket first, as Ray; never a trial
      waiting at a milestone; None when there is none, so the runner may create a new trial
      (for the bracket that is not full yet). When nothing runs (every live trial is among
      the candidates) and no trial is behind, the runner had no new trial to give, so an
      unfilled bracket halves with the trials it has (Ray does so when nothing runs), and
      the losers' STOPs are pending.

    At the last milestone a trial stops at once (Ray pauses it until its whole bracket is
    there, then stops them all: the same outcome). With ``stop_last_trials=False`` the last
    trials run until they end by themselves.

    Args:
        time_attr: the result key that measures progress (non-decreasing per trial).
        metric: the result key to optimize; None takes TuneConfig's.
        mode: "min" or "max"; None takes TuneConfig's.
        max_t: the most ``time_attr`` a trial gets; >= 1.
        reduction_factor: ``eta``: each halving keeps the top ``1/eta``.
        stop_last_trials: stop trials at ``max_t``.

    Example:
        >>> from trainkit.tune._trial import TrialSnapshot, TrialState
        >>> hb = HyperBandScheduler(metric="acc", mode="max", max_t=9, reduction_factor=3)
        >>> a, b = (TrialSnapshot(i, {}, TrialState.RUNNING) for i in "ab")
        >>> hb.on_trial_add(a); hb.on_trial_add(b)
        >>> hb.on_trial_result(a, {"training_iteration": 9, "acc": 0.5}).decision
        <Decision.STOP: 'stop'>
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: Literal["min", "max"] | None = None, max_t: float = 81,
                 reduction_factor: float = 3, stop_last_trials: bool = True) -> None:
        name = type(self).__name__
        check(name, "max_t", max_t, max_t >= 1, ">= 1 (milestones are whole time_attr units)")
        check(name, "reduction_factor", reduction_factor, reduction_factor > 1, "> 1")
        super().__init__(time_attr, metric, mode)
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.stop_last_trials = stop_last_trials
        self._s_max_1 = round(math.log(max_t) / math.log(reduction_factor)) + 1
        self._bands: list[list[_Bracket | None]] = [[]]
        self._current: _Bracket | None = None
        self._bracket_of: dict[str, _Bracket] = {}
        self._pending: list[tuple[str, SchedulerDecision]] = []
        self.num_stopped = 0

    def _new_bracket(self) -> _Bracket:
        eta = self.reduction_factor
        while True:
            band = self._bands[-1]
            if len(band) == self._s_max_1:
                band = []
                self._bands.append(band)
            s = len(band)
            r0 = int(self.max_t * eta ** (-s))
            if r0 == 0:
                band.append(None)
                continue
            n0 = math.ceil(self._s_max_1 / (s + 1) * eta ** s)
            bracket = _Bracket(s, n0, r0, self.max_t, eta, self.stop_last_trials)
            band.append(bracket)
            return bracket

    def on_trial_add(self, trial: TrialSnapshot) -> None:
        self._check_ready()
        if trial.trial_id in self._bracket_of:
            return
        if self._current is None or self._current.filled():
            self._current = self._new_bracket()
        self._current.add(trial.trial_id)
        self._bracket_of[trial.trial_id] = self._current

    def on_trial_result(self, trial: TrialSnapshot, result: Mapping[str, Any]
                        ) -> SchedulerDecision:
        time, value = self._read(trial.trial_id, result)
        if trial.trial_id not in self._bracket_of:
            self.on_trial_add(trial)
        bracket = self._bracket_of[trial.trial_id]
        bracket.update(trial.trial_id, time, self._sign * value)
        if bracket.behind(trial.trial_id):
            return CONTINUE
        if bracket.halves == 0:
            return self._stop(bracket, trial.trial_id, trial.trial_id, (
                f"HyperBand: {self.time_attr}={time:g} reached the last milestone "
                f"{bracket.milestone:g}")) or CONTINUE
        return self._process(bracket, trial.trial_id)

    def _process(self, bracket: _Bracket, current: str | None, force: bool = False
                 ) -> SchedulerDecision:
        """Halve ``bracket`` while its rung is complete; the decision for ``current``.

        ``force``: halve an unfilled bracket too (its late trials catch up, as Ray's)."""
        decision = SchedulerDecision(Decision.PAUSE, reason=(
            f"HyperBand: reached milestone {self.time_attr}={bracket.milestone:g}; waiting "
            "for the rest of its bracket"))
        halved = False
        while bracket.time and bracket.halves > 0 and bracket.rung_done(force):
            milestone, size = bracket.milestone, len(bracket.time)
            good, bad = bracket.halve()
            halved = True
            for trial_id in bad:
                value = self._sign * bracket.score[trial_id]
                decision = self._stop(bracket, trial_id, current, (
                    f"HyperBand: {self.metric}={value:g} is not in the top {len(good)} of "
                    f"{size} at milestone {self.time_attr}={milestone:g}")) or decision
        if bracket.halves == 0 and self.stop_last_trials:
            for trial_id in [t for t in bracket.time if not bracket.behind(t)]:
                decision = self._stop(bracket, trial_id, current, (
                    f"HyperBand: reached the last milestone {bracket.milestone:g}")) or decision
        if halved and current in bracket.time and bracket.behind(current):
            decision = SchedulerDecision(Decision.CONTINUE, reason=(
                f"HyperBand: promoted to milestone {self.time_attr}={bracket.milestone:g}"))
        return decision

    def _stop(self, bracket: _Bracket, trial_id: str, current: str | None, reason: str
              ) -> SchedulerDecision | None:
        """Drop the trial; its STOP goes to the caller if it is ``current``, else pending."""
        bracket.remove(trial_id)
        del self._bracket_of[trial_id]
        self.num_stopped += 1
        logger.debug("trial %s stops: %s", trial_id, reason)
        decision = SchedulerDecision(Decision.STOP, reason=reason)
        if trial_id == current:
            return decision
        self._pending.append((trial_id, decision))
        return None

    def _remove(self, trial_id: str) -> None:
        bracket = self._bracket_of.pop(trial_id, None)
        if bracket is not None:
            bracket.remove(trial_id)
            if bracket.time:
                self._process(bracket, None)

    def on_trial_complete(self, trial: TrialSnapshot, result: Mapping[str, Any]) -> None:
        self._remove(trial.trial_id)

    def on_trial_error(self, trial: TrialSnapshot) -> None:
        self._remove(trial.trial_id)

    def choose_trial_to_run(self, candidates: Sequence[TrialSnapshot]) -> str | None:
        waiting = {c.trial_id for c in candidates
                   if c.state in (TrialState.PENDING, TrialState.PAUSED)}
        chosen = self._first_behind(waiting)
        if chosen is None and all(t in waiting for t in self._bracket_of):
            # Nothing runs (every live trial is a candidate) and the runner has no trial for
            # the unfilled bracket: halve it with the trials it has (Ray's fallback).
            for band in self._bands:
                for bracket in band:
                    if bracket is not None and bracket.time:
                        self._process(bracket, None, force=True)
            chosen = self._first_behind(waiting)
        return chosen

    def _first_behind(self, waiting: set[str]) -> str | None:
        for band in self._bands:
            for bracket in sorted((b for b in band if b is not None), key=_Bracket.completion):
                for trial_id in bracket.time:
                    if trial_id in waiting and bracket.behind(trial_id):
                        return trial_id
        return None

    def pending_decisions(self) -> list[tuple[str, SchedulerDecision]]:
        pending, self._pending = self._pending, []
        return pending

    def debug_string(self) -> str:
        lines = [f"HyperBandScheduler: {self.num_stopped} stopped, "
                 f"{len(self._bracket_of)} live"]
        for i, band in enumerate(self._bands):
            for b in band:
                if b is not None and b.time:
                    lines.append(f"  band {i} bracket s={b.s}: {len(b.time)} live, "
                                 f"milestone {b.milestone:g}, {b.completion():.0%} done")
        return "\n".join(lines)
