"""``PopulationBasedTraining``: PBT (Jaderberg et al. 2017) as Ray Tune's scheduler.

Every ``perturbation_interval`` of ``time_attr`` (after ``burn_in_period``), a trial's score
is recorded and the live trials are ranked by their last recorded scores. A trial in the bottom
``quantile_fraction`` exploits a random trial of the top one that has a checkpoint: it restarts
from a copy of the donor's checkpoint with an explored copy of the donor's config.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Literal
from typing import NamedTuple

from trainkit.tune._metric_scheduler import MetricScheduler
from trainkit.tune._metric_scheduler import WaitingTrials
from trainkit.tune._metric_scheduler import check
from trainkit.tune._pbt_explore import ExploreFn
from trainkit.tune._pbt_explore import check_mutations
from trainkit.tune._pbt_explore import explore
from trainkit.tune._scheduler import CONTINUE
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import Exploit
from trainkit.tune._scheduler import SchedulerDecision
from trainkit.tune._trial import TrialSnapshot

logger = logging.getLogger(__name__)


class ExploitRecord(NamedTuple):
    """One exploit: ``trial_id`` restarted from ``donor_id`` with ``new_config`` at ``time``."""

    trial_id: str
    donor_id: str
    old_config: dict[str, Any]
    new_config: dict[str, Any]
    time: float


@dataclass(slots=True)
class _Member:
    config: dict[str, Any]
    has_checkpoint: bool = False
    last_score: float | None = None  # higher is better; recorded at perturbation steps only
    last_train_time: float = 0.0
    last_perturbation_time: float = 0.0
    finished: bool = False


class PopulationBasedTraining(MetricScheduler):
    """Population based training, with Ray Tune's arguments and rules.

    When a trial's result comes ``perturbation_interval`` (of ``time_attr``) after its last
    perturbation step and not before ``burn_in_period``, its score is recorded and the live
    trials with a score are ranked (ties in creation order). The bottom and top quantiles
    hold ``ceil(n * quantile_fraction)`` trials each (at most ``n // 2``). A bottom trial gets
    ``SchedulerDecision(CONTINUE, exploit=Exploit(donor_id, config))``: the donor is drawn from
    the top trials with a checkpoint (none: no exploit), the config explores the donor's (see
    ``_pbt_explore``). The runner restarts the trial from a copy of the donor's latest
    checkpoint with that config; PBT takes the donor's config, time and perturbation time as
    the trial's, and appends an ``ExploitRecord`` to ``history``. As in Ray, a top trial is
    asked to save its state at its perturbation step (``SchedulerDecision(save=True)``, unless
    its result came with a checkpoint), so a class trainable is a donor without
    ``checkpoint_frequency``; a function trainable donates its last reported checkpoint, and
    a donor whose checkpoint has not come yet is not drawn. Like Ray, a trial that is not
    exploited at its step yields (PAUSE) when other trials wait to run, so a population larger
    than the cluster time-shares, and ``choose_trial_to_run`` picks the waiting trial that is
    furthest behind.

    With ``synch=True`` trials PAUSE at each perturbation step until every live trial is
    there; the last one to arrive ranks them all: it gets its decision, and the paused bottom
    trials get their exploits from ``pending_decisions()``. All randomness comes from
    ``random.Random(seed)`` (user callables aside).

    Args:
        time_attr: the result key that measures progress (non-decreasing per trial).
        metric: the result key to optimize; None takes TuneConfig's.
        mode: "min" or "max"; None takes TuneConfig's.
        perturbation_interval: how much ``time_attr`` between perturbation steps; > 0.
        burn_in_period: no perturbation before this much ``time_attr``.
        hyperparam_mutations: key -> list, tuple, search-space domain, callable, or a dict
            of those for a nested config.
        quantile_fraction: the share of trials in each of the top and bottom quantiles.
        resample_probability: the chance of resampling a value instead of perturbing it.
        perturbation_factors: what a numeric value may be multiplied by.
        custom_explore_fn: ``f(config) -> config``, applied after the mutations.
        log_config: log each exploit's configs at INFO.
        require_attrs: a result without ``time_attr`` or the metric is an error; False:
            such a result is ignored.
        synch: perturb the whole population at once.
        seed: seeds the scheduler's ``random.Random``.

    Example:
        >>> pbt = PopulationBasedTraining(metric="loss", mode="min", perturbation_interval=2,
        ...                               hyperparam_mutations={"lr": [1e-3, 1e-2, 1e-1]})
    """

    def __init__(self, time_attr: str = "training_iteration", metric: str | None = None,
                 mode: Literal["min", "max"] | None = None, perturbation_interval: float = 60.0,
                 burn_in_period: float = 0.0,
                 hyperparam_mutations: Mapping[str, Any] | None = None,
                 quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: Sequence[float] = (1.2, 0.8),
                 custom_explore_fn: ExploreFn | None = None, log_config: bool = True,
                 require_attrs: bool = True, synch: bool = False, seed: int | None = None
                 ) -> None:
        name = type(self).__name__
        check(name, "perturbation_interval", perturbation_interval, perturbation_interval > 0,
              "> 0")
        check(name, "burn_in_period", burn_in_period, burn_in_period >= 0, ">= 0")
        check(name, "quantile_fraction", quantile_fraction, 0 < quantile_fraction <= 0.5,
              "in (0, 0.5] (the share of trials in each of the top and bottom quantiles)")
        check(name, "resample_probability", resample_probability,
              0 <= resample_probability <= 1, "in [0, 1]")
        check(name, "perturbation_factors", perturbation_factors,
              len(perturbation_factors) > 0, "a non-empty sequence of numbers")
        mutations = dict(hyperparam_mutations or {})
        check(name, "hyperparam_mutations", hyperparam_mutations,
              bool(mutations) or custom_explore_fn is not None,
              "non-empty unless custom_explore_fn is given (PBT needs something to explore)")
        check_mutations(mutations)
        super().__init__(time_attr, metric, mode)
        self.perturbation_interval = perturbation_interval
        self.burn_in_period = burn_in_period
        self.hyperparam_mutations = mutations
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.perturbation_factors = tuple(perturbation_factors)
        self.custom_explore_fn = custom_explore_fn
        self.log_config = log_config
        self.require_attrs = require_attrs
        self.synch = synch
        self.history: list[ExploitRecord] = []
        self._rng = random.Random(seed)
        self._members: dict[str, _Member] = {}
        self._waiting = WaitingTrials()
        self._pending: list[tuple[str, SchedulerDecision]] = []
        self._next_sync = max(perturbation_interval, burn_in_period)

    def on_trial_add(self, trial: TrialSnapshot) -> None:
        self._check_ready()
        if trial.trial_id not in self._members:
            self._members[trial.trial_id] = _Member(copy.deepcopy(dict(trial.config)),
                                                    trial.has_checkpoint)
        self._waiting.add(trial.trial_id)

    def on_trial_result(self, trial: TrialSnapshot, result: Mapping[str, Any]
                        ) -> SchedulerDecision:
        trial_id = trial.trial_id
        if trial_id not in self._members:
            self.on_trial_add(trial)
        member = self._members[trial_id]
        member.has_checkpoint = trial.has_checkpoint
        self._waiting.discard(trial_id)
        if not self.require_attrs and not self._has_keys(result):
            return CONTINUE
        time, value = self._read(trial_id, result)
        if time < self.burn_in_period:
            return CONTINUE
        if time - member.last_perturbation_time < self.perturbation_interval:
            return CONTINUE
        member.last_score = self._sign * value
        member.last_train_time = time
        if self.synch:
            return self._synch_step(trial_id, time)
        member.last_perturbation_time = time
        lower, upper = self._quantiles()
        if trial_id in lower:
            exploit = self._exploit(trial_id, upper, time)
            if exploit is not None:
                return SchedulerDecision(Decision.CONTINUE, exploit=exploit, reason=(
                    f"PBT: {self.metric}={value:g} is in the bottom {len(lower)} of "
                    f"{self._ranked_count()}; exploiting trial {exploit.donor_id}"))
        if self._waiting.any_besides(trial_id):  # a paused trial commits a checkpoint
            self._waiting.add(trial_id)
            return SchedulerDecision(Decision.PAUSE, reason=(
                "PBT: perturbation step done; yielding to waiting trials"))
        if trial_id in upper and "checkpoint_dir_name" not in result:
            return SchedulerDecision(Decision.CONTINUE, save=True, reason=(
                f"PBT: {self.metric}={value:g} is in the top {len(upper)}; saving its state "
                "for the bottom trials to exploit"))
        return CONTINUE

    def _synch_step(self, trial_id: str, time: float) -> SchedulerDecision:
        behind = [i for i, m in self._members.items()
                  if i != trial_id and not m.finished and m.last_train_time < self._next_sync]
        if behind:
            self._waiting.add(trial_id)
            return SchedulerDecision(Decision.PAUSE, reason=(
                f"PBT: waiting at {self.time_attr}={self._next_sync:g} for {len(behind)} "
                "trials"))
        lower, upper = self._quantiles()
        middle = [i for i, m in self._members.items()
                  if not m.finished and i not in lower and i not in upper]
        decision = CONTINUE
        for i in upper + middle + lower:  # as Ray: the strong ones first
            self._members[i].last_perturbation_time = time
            if i not in lower:
                continue
            exploit = self._exploit(i, upper, time)
            if exploit is None:
                continue
            d = SchedulerDecision(Decision.CONTINUE, exploit=exploit, reason=(
                f"PBT: in the bottom {len(lower)} at {self.time_attr}={time:g}; exploiting "
                f"trial {exploit.donor_id}"))
            if i == trial_id:
                decision = d
            else:
                self._pending.append((i, d))
        latest = max(m.last_train_time for m in self._members.values())
        self._next_sync = max(self._next_sync + self.perturbation_interval, latest)
        return decision

    def _ranked_count(self) -> int:
        return sum(1 for m in self._members.values()
                   if m.last_score is not None and not m.finished)

    def _quantiles(self) -> tuple[list[str], list[str]]:
        """(bottom, top) trial ids, worst first / best last; empty below two scored trials."""
        scores = {i: m.last_score for i, m in self._members.items()
                  if m.last_score is not None and not m.finished}
        ranked = sorted(scores, key=scores.__getitem__)
        if len(ranked) <= 1:
            return [], []
        size = min(math.ceil(len(ranked) * self.quantile_fraction), len(ranked) // 2)
        return ranked[:size], ranked[len(ranked) - size:]

    def _exploit(self, trial_id: str, upper: list[str], time: float) -> Exploit | None:
        donors = [i for i in upper if self._members[i].has_checkpoint]
        if not donors:
            logger.info("PBT: no trial of the top quantile %s has a checkpoint; trial %s is "
                        "not exploited", upper, trial_id)
            return None
        donor_id = self._rng.choice(donors)
        member, donor = self._members[trial_id], self._members[donor_id]
        new_config = explore(donor.config, self.hyperparam_mutations, self._rng,
                             self.resample_probability, self.perturbation_factors,
                             self.custom_explore_fn)
        self.history.append(ExploitRecord(trial_id, donor_id, member.config,
                                          copy.deepcopy(new_config), time))
        if self.log_config:
            logger.info("PBT: trial %s exploits trial %s at %s=%g: %s -> %s", trial_id,
                        donor_id, self.time_attr, time, member.config, new_config)
        member.config = copy.deepcopy(new_config)
        member.last_perturbation_time = donor.last_perturbation_time
        member.last_train_time = donor.last_train_time
        return Exploit(donor_id, new_config)

    def _end(self, trial_id: str) -> None:
        self._waiting.discard(trial_id)
        if trial_id in self._members:
            self._members[trial_id].finished = True

    def on_trial_complete(self, trial: TrialSnapshot, result: Mapping[str, Any]) -> None:
        self._end(trial.trial_id)

    def on_trial_error(self, trial: TrialSnapshot) -> None:
        self._end(trial.trial_id)

    def on_trial_save(self, trial: TrialSnapshot) -> None:
        member = self._members.get(trial.trial_id)
        if member is not None:
            member.has_checkpoint = True

    def choose_trial_to_run(self, candidates: Sequence[TrialSnapshot]) -> str | None:
        """The waiting trial furthest behind (in a synch step, only those not there yet)."""
        def time_of(c: TrialSnapshot) -> float:
            member = self._members.get(c.trial_id)
            return member.last_train_time if member else 0.0

        eligible = [c for c in candidates if not c.state.is_terminal
                    and (not self.synch or time_of(c) < self._next_sync)]
        chosen = min(eligible, key=time_of).trial_id if eligible else None
        self._waiting.sync(candidates, chosen)
        return chosen

    def pending_decisions(self) -> list[tuple[str, SchedulerDecision]]:
        pending, self._pending = self._pending, []
        return pending

    def debug_string(self) -> str:
        return (f"PopulationBasedTraining: {len(self.history)} exploits, "
                f"{self._ranked_count()} ranked trials")
