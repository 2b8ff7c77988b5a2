"""Schedulers driven event by event with synthetic curves: exact decisions, no runtime."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pytest

from trainkit.tune._asha import ASHAScheduler
from trainkit.tune._asha import AsyncHyperBandScheduler
from trainkit.tune._fifo import FIFOScheduler
from trainkit.tune._hyperband import HyperBandScheduler
from trainkit.tune._median import MAX_POINTS
from trainkit.tune._median import MedianStoppingRule
from trainkit.tune._metric_scheduler import MetricScheduler
from trainkit.tune._metric_scheduler import percentile
from trainkit.tune._pbt import ExploitRecord
from trainkit.tune._pbt import PopulationBasedTraining
from trainkit.tune._pbt_explore import explore
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import TrialScheduler
from trainkit.tune._trial import TrialSnapshot
from trainkit.tune._trial import TrialState

C, P, S = Decision.CONTINUE, Decision.PAUSE, Decision.STOP
RUNNING, PENDING, PAUSED = TrialState.RUNNING, TrialState.PENDING, TrialState.PAUSED


def snap(trial_id: str, state: TrialState = RUNNING, *, config: dict[str, Any] | None = None,
         ckpt: bool = False) -> TrialSnapshot:
    return TrialSnapshot(trial_id, config or {}, state, has_checkpoint=ckpt)


def it(t: float, **metrics: float) -> dict[str, float]:
    return {"training_iteration": t, **metrics}


def add_and_start(scheduler: TrialScheduler, ids: str | list[str],
                  config: dict[str, Any] | None = None) -> None:
    """Add trials and start them all, as the runner does: each via choose_trial_to_run."""
    for i in ids:
        scheduler.on_trial_add(snap(i, PENDING, config=config))
    pending = list(ids)
    while pending:
        chosen = scheduler.choose_trial_to_run([snap(i, PENDING) for i in pending])
        assert chosen in pending
        pending.remove(chosen)


# -- shared behaviour --------------------------------------------------------------------------
METRIC_SCHEDULERS: dict[str, Callable[..., MetricScheduler]] = {
    "asha": ASHAScheduler,
    "hyperband": HyperBandScheduler,
    "median": MedianStoppingRule,
    "pbt": lambda **kw: PopulationBasedTraining(hyperparam_mutations={"lr": [1, 2]}, **kw),
}


@pytest.mark.parametrize("kind", METRIC_SCHEDULERS)
def test_a_metric_scheduler_without_metric_or_mode_says_to_set_tune_config(kind: str) -> None:
    with pytest.raises(ValueError, match=r"set TuneConfig\(metric=\.\.\., mode=\.\.\.\)"):
        METRIC_SCHEDULERS[kind]().set_search_properties(None, None)
    with pytest.raises(ValueError, match="mode=None"):
        METRIC_SCHEDULERS[kind]().set_search_properties("loss", None)
    with pytest.raises(ValueError, match="needs a metric"):  # driven without the Tuner
        METRIC_SCHEDULERS[kind]().on_trial_add(snap("0"))


@pytest.mark.parametrize("kind", METRIC_SCHEDULERS)
def test_metric_and_mode_come_from_tune_config_unless_the_scheduler_has_its_own(kind: str
                                                                                ) -> None:
    scheduler = METRIC_SCHEDULERS[kind]()
    assert scheduler.set_search_properties("loss", "min")
    assert (scheduler.metric, scheduler.mode) == ("loss", "min")
    own = METRIC_SCHEDULERS[kind](metric="acc", mode="max")
    own.set_search_properties("loss", "min")
    assert (own.metric, own.mode) == ("acc", "max")
    with pytest.raises(ValueError, match="`mode` is 'avg', but must be 'min' or 'max'"):
        METRIC_SCHEDULERS[kind](mode="avg")
    with pytest.raises(ValueError, match="`mode` is 'best'"):
        METRIC_SCHEDULERS[kind]().set_search_properties("loss", "best")


@pytest.mark.parametrize("kind", METRIC_SCHEDULERS)
def test_a_result_without_the_metric_names_it_and_lists_the_reported_keys(kind: str) -> None:
    scheduler = METRIC_SCHEDULERS[kind](metric="loss", mode="min", time_attr="training_iteration")
    scheduler.on_trial_add(snap("7"))
    with pytest.raises(ValueError, match=r"trial 7 .* without 'loss' .*\['acc', "
                                         r"'training_iteration'\]"):
        scheduler.on_trial_result(snap("7"), it(1, acc=0.5))
    with pytest.raises(TypeError, match="loss='high'"):
        scheduler.on_trial_result(snap("7"), {"training_iteration": 1, "loss": "high"})


@pytest.mark.parametrize("kind", METRIC_SCHEDULERS)
def test_schedulers_pickle_with_their_state(kind: str) -> None:
    # The runner saves the scheduler with cloudpickle after every trial it adds or ends.
    scheduler = METRIC_SCHEDULERS[kind](metric="loss", mode="min", time_attr="training_iteration")
    for i in "ab":
        scheduler.on_trial_add(snap(i))
        scheduler.on_trial_result(snap(i), it(1, loss=1.0))
    clone = cloudpickle.loads(cloudpickle.dumps(scheduler))
    assert clone.debug_string() == scheduler.debug_string()


def test_fifo_runs_everything_in_order_and_needs_no_metric() -> None:
    fifo = FIFOScheduler()
    assert fifo.set_search_properties(None, None)
    fifo.on_trial_add(snap("0"))
    assert fifo.on_trial_result(snap("0"), it(1)).decision is C
    assert fifo.choose_trial_to_run([snap("0", PAUSED), snap("1", PENDING)]) == "1"
    assert fifo.choose_trial_to_run([snap("0", PAUSED)]) == "0"
    assert fifo.pending_decisions() == []
    assert isinstance(fifo, TrialScheduler)
    assert "FIFO" in fifo.debug_string()


def test_percentile_is_numpys_linear_nanpercentile() -> None:
    rng = random.Random(0)
    for n in range(1, 12):
        values = [rng.uniform(-5, 5) for _ in range(n)]
        for q in (0.0, 50.0, 66.66666666666667, 75.0, 100.0):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1.0, math.nan, 3.0], 50) == 2.0
    assert percentile([math.nan], 50) is None


# -- ASHA ----------------------------------------------------------------------------------------
# Nine trials with constant curves, reported round-robin by iteration; rf=3, grace 1, max_t 9:
# rungs 9, 3, 1, and each cutoff is the 66.7th percentile of the results recorded before.
# Rung 1: 5 go (first); 3 < 5 stops; 8 >= 4.33 goes; 1 < 6 stops; 9 >= 5 goes; 2 < 7 stops;
#   7 >= 6 goes; 4 < 7 stops; 6 < 6.33 stops.
# Rung 3: 5 goes (first); 8 >= 5 goes; 9 >= 7 goes; 7 < 8.33 stops. Then 0, 2, 4 stop at max_t.
ASHA_VALUES = [5, 3, 8, 1, 9, 2, 7, 4, 6]
ASHA_STOPPED_AT = {"1": 1, "3": 1, "5": 1, "7": 1, "8": 1, "6": 3, "0": 9, "2": 9, "4": 9}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_asha_stops_exactly_the_trials_its_rungs_cut(mode: str) -> None:
    sign = 1 if mode == "max" else -1
    asha = ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    asha.set_search_properties("score", mode)
    live = [str(i) for i in range(9)]
    for i in live:
        asha.on_trial_add(snap(i))
    stopped_at: dict[str, int] = {}
    for t in range(1, 12):
        for i in list(live):
            result = it(t, score=sign * ASHA_VALUES[int(i)])
            decision = asha.on_trial_result(snap(i), result)
            if decision.decision is S:
                assert decision.reason
                stopped_at[i] = t
                live.remove(i)
                asha.on_trial_complete(snap(i), result)
            else:
                assert decision.decision is C
    assert stopped_at == ASHA_STOPPED_AT
    recorded = {m: len(r) for m, r in asha._brackets[0].rungs}
    assert recorded == {9: 3, 3: 4, 1: 9}  # rung 9 gets the max_t trials' final results
    assert "9 stopped" in asha.debug_string()


def test_asha_without_stop_last_trials_judges_the_top_rung_instead() -> None:
    asha = ASHAScheduler(metric="score", mode="max", max_t=9, grace_period=9,
                         reduction_factor=3, stop_last_trials=False)
    for i in "ab":
        asha.on_trial_add(snap(i))
    assert asha.on_trial_result(snap("a"), it(9, score=2)).decision is C
    assert asha.on_trial_result(snap("b"), it(9, score=1)).decision is S
    assert asha.on_trial_result(snap("a"), it(10, score=2)).decision is C


def test_asha_brackets_start_later_and_are_dealt_by_rung_count() -> None:
    asha = ASHAScheduler(metric="score", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3, brackets=2)
    assert [[m for m, _ in b.rungs] for b in asha._brackets] == [[9, 3, 1], [9, 3]]
    for i in range(6):
        asha.on_trial_add(snap(str(i)))
    # weights e^0 and e^-1 (Ray's probabilities), dealt by a smooth weighted round robin
    assert [asha._brackets.index(asha._bracket_of[str(i)]) for i in range(6)] == \
        [0, 1, 0, 0, 0, 1]
    assert AsyncHyperBandScheduler is ASHAScheduler


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grace_period": 0}, "`grace_period` is 0, but must be > 0"),
    ({"reduction_factor": 1}, "`reduction_factor` is 1, but must be > 1"),
    ({"max_t": 5, "grace_period": 10}, r"`max_t` is 5, but must be >= grace_period \(10\)"),
    ({"brackets": 0}, "`brackets` is 0, but must be >= 1"),
])
def test_asha_validates_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ASHAScheduler(**kwargs)


# -- HyperBand -----------------------------------------------------------------------------------
def hyperband_with_eight_trials() -> HyperBandScheduler:
    """max_t 9, eta 3: brackets s=0 (3 trials, milestone 9) and s=1 (5 trials, milestone 3)."""
    hb = HyperBandScheduler(metric="score", mode="max", max_t=9, reduction_factor=3)
    for i in range(8):
        hb.on_trial_add(snap(str(i)))
    return hb


HB_SCORES = {"3": 1.0, "4": 5.0, "5": 3.0, "6": 4.0, "7": 2.0}


def test_hyperband_brackets_follow_rays_sizes() -> None:
    hb = hyperband_with_eight_trials()
    hb.on_trial_add(snap("8"))
    brackets = [hb._bracket_of[str(i)] for i in range(9)]
    assert [(b.s, b.n, b.milestone) for b in dict.fromkeys(brackets)] == \
        [(0, 3, 9), (1, 5, 3), (2, 9, 1)]
    assert hb._s_max_1 == 3


def test_hyperband_pauses_at_the_milestone_then_promotes_the_top_third() -> None:
    hb = hyperband_with_eight_trials()
    for t in (1, 2):
        for i in HB_SCORES:
            assert hb.on_trial_result(snap(i), it(t, score=HB_SCORES[i])).decision is C
    for i in "3456":
        decision = hb.on_trial_result(snap(i), it(3, score=HB_SCORES[i]))
        assert decision.decision is P, i
    # waiting at the milestone: never chosen, while the bracket's last trial is behind
    assert hb.choose_trial_to_run([snap(i, PAUSED) for i in "3456"]) is None
    assert hb.pending_decisions() == []
    # the last one completes the rung: ceil(5/3) = 2 go on (4 and 6), 3, 5 and 7 stop
    last = hb.on_trial_result(snap("7"), it(3, score=HB_SCORES["7"]))
    assert last.decision is S and "not in the top 2 of 5" in last.reason
    pending = hb.pending_decisions()
    assert [(i, d.decision) for i, d in pending] == [("3", S), ("5", S)]
    assert hb.pending_decisions() == []
    # the promoted ones resume; the other bracket's pending trials come first (less complete)
    paused = [snap(i, PAUSED) for i in "3456"]
    assert hb.choose_trial_to_run([*paused, snap("0", PENDING)]) == "0"
    assert hb.choose_trial_to_run(paused) == "4"
    assert hb.choose_trial_to_run(paused[2:]) == "6"
    # the stopped trials end (the runner tells it): nothing happens
    for i in "357":
        hb.on_trial_complete(snap(i, TrialState.TERMINATED), it(3, score=HB_SCORES[i]))
    for i in "46":
        for t in range(4, 9):
            assert hb.on_trial_result(snap(i), it(t, score=HB_SCORES[i])).decision is C
        assert hb.on_trial_result(snap(i), it(9, score=HB_SCORES[i])).decision is S
    assert hb.num_stopped == 5


def test_hyperband_stops_the_s0_bracket_at_max_t() -> None:
    hb = hyperband_with_eight_trials()
    assert [hb.on_trial_result(snap("0"), it(t, score=1)).decision for t in range(1, 10)] == \
        [C] * 8 + [S]


def test_hyperband_a_trial_ending_early_can_complete_the_rung() -> None:
    hb = hyperband_with_eight_trials()
    for i in "3456":
        for t in (1, 2, 3):
            hb.on_trial_result(snap(i), it(t, score=HB_SCORES[i]))
    hb.on_trial_result(snap("7"), it(1, score=HB_SCORES["7"]))
    hb.on_trial_complete(snap("7"), it(1, score=HB_SCORES["7"]))  # ended by itself
    # four live trials at the milestone: the best two (4, 6) go on, 3 and 5 stop
    assert [(i, d.decision) for i, d in hb.pending_decisions()] == [("3", S), ("5", S)]
    assert hb.choose_trial_to_run([snap(i, PAUSED) for i in "3456"]) == "4"


def test_hyperband_waits_to_fill_a_bracket_and_halves_what_it_has_when_nothing_runs() -> None:
    # The runner creates trials one at a time: a rung waits for the bracket's missing trials
    # while anything runs, since the runner gets None from choose_trial_to_run and creates one.
    hb = HyperBandScheduler(metric="score", mode="max", max_t=9, reduction_factor=3)
    for n in range(6):
        hb.on_trial_add(snap(str(n)))  # 0-2: bracket s=0; 3-5: 3 of bracket s=1's 5
    scores = {"3": 1.0, "4": 3.0, "5": 2.0}
    for i in "345":
        assert hb.on_trial_result(snap(i), it(3, score=scores[i])).decision is P
    paused = [snap(i, PAUSED) for i in "345"]
    assert hb.choose_trial_to_run(paused) is None  # 0-2 run (not candidates): wait
    for i in "012":
        hb.on_trial_complete(snap(i), it(5, score=0.0))
    assert hb.pending_decisions() == []
    # nothing runs now and no trial came: halve with three, keeping ceil(5/3) = 2
    assert hb.choose_trial_to_run(paused) == "4"
    assert [(i, d.decision) for i, d in hb.pending_decisions()] == [("3", S)]
    hb.on_trial_add(snap("6"))  # a late trial joins the bracket and catches up
    assert hb.choose_trial_to_run([snap("5", PAUSED), snap("6", PENDING)]) == "5"
    assert hb.on_trial_result(snap("6"), it(3, score=9.0)).decision is C


def test_hyperband_min_mode_keeps_the_smallest() -> None:
    hb = HyperBandScheduler(metric="loss", mode="min", max_t=9, reduction_factor=3)
    for n in range(8):
        hb.on_trial_add(snap(str(n)))
    for i in "3456":
        assert hb.on_trial_result(snap(i), it(3, loss=HB_SCORES[i])).decision is P
    assert hb.on_trial_result(snap("7"), it(3, loss=HB_SCORES["7"])).decision is C
    assert [i for i, _ in hb.pending_decisions()] == ["4", "6", "5"]  # worst first
    assert hb.choose_trial_to_run([snap(i, PAUSED) for i in "3456"]) == "3"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_t": 0}, r"`max_t` is 0, but must be >= 1"),
    ({"reduction_factor": 1}, "`reduction_factor` is 1, but must be > 1"),
])
def test_hyperband_validates_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HyperBandScheduler(**kwargs)


# -- the median stopping rule ------------------------------------------------------------------
def run_median(rule: MedianStoppingRule, curves: dict[str, list[float]]
               ) -> dict[str, list[Decision]]:
    """Report ``curves`` round-robin at time_total_s 1, 2, ...; each trial's decisions."""
    add_and_start(rule, list(curves))
    decisions: dict[str, list[Decision]] = {i: [] for i in curves}
    for t in range(1, 1 + max(len(c) for c in curves.values())):
        for i, curve in curves.items():
            if decisions[i][-1:] != [S]:
                result = {"time_total_s": float(t), "loss": curve[t - 1]}
                decisions[i].append(rule.on_trial_result(snap(i), result).decision)
    return decisions


@pytest.mark.parametrize("grace_period", [1.0, 3.0])
def test_median_stops_a_clearly_worse_trial_once_past_the_grace_period(grace_period: float
                                                                       ) -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=grace_period)
    good = [1.0] * 6
    decisions = run_median(rule, {"a": good, "b": good, "c": good, "bad": [10.0] * 6})
    assert decisions["bad"] == [C] * (int(grace_period) - 1) + [S]
    assert decisions["a"] == decisions["b"] == decisions["c"] == [C] * 6
    assert rule.debug_string() == "MedianStoppingRule: num_stopped=1"


def test_median_needs_min_samples_required_other_trials_at_the_same_time() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=1.0,
                              min_samples_required=4)
    good = [1.0] * 6
    decisions = run_median(rule, {"a": good, "b": good, "c": good, "bad": [10.0] * 6})
    assert decisions["bad"] == [C] * 6  # only three others


def test_median_compares_the_best_result_with_running_means_since_the_grace_period() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=2.0,
                              min_samples_required=2)
    decisions = run_median(rule, {"a": [4, 3, 2, 1], "b": [4, 4, 4, 4], "x": [3.5] * 4})
    # t=2: means a=3, b=4 -> median 3.5, x's best 3.5 is not worse; t=3: a=(3+2)/2, b=4 ->
    # median 3.25 < 3.5: stop. b outlives it: only a got to t=4 with it.
    assert decisions == {"a": [C] * 4, "b": [C] * 4, "x": [C, C, S]}


def test_median_soft_stop_pauses_and_a_resumed_trial_runs_on() -> None:
    rule = MedianStoppingRule(metric="acc", mode="max", grace_period=1.0, hard_stop=False)
    add_and_start(rule, "abcd")
    for i in "abc":
        rule.on_trial_result(snap(i), {"time_total_s": 1.0, "acc": 0.9})
    decision = rule.on_trial_result(snap("d"), {"time_total_s": 1.0, "acc": 0.1})
    assert decision.decision is P and "worse than the median 0.9" in decision.reason
    assert rule.on_trial_result(snap("d"), {"time_total_s": 2.0, "acc": 0.1}).decision is C


def test_median_yields_to_waiting_trials_while_it_lacks_samples() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=1.0, min_time_slice=5)
    for i in "abw":
        rule.on_trial_add(snap(i))
    rule.on_trial_result(snap("b"), {"time_total_s": 0.5, "loss": 1.0})
    # w never started: a yields to it
    assert rule.on_trial_result(snap("a"), {"time_total_s": 1.0, "loss": 1.0}).decision is P
    assert rule.choose_trial_to_run([snap("a", PAUSED), snap("w", PENDING)]) == "w"
    assert rule.choose_trial_to_run([snap("a", PAUSED)]) == "a"
    # nobody waits now; then a waits again, but b yielded less than min_time_slice ago
    assert rule.on_trial_result(snap("b"), {"time_total_s": 2.0, "loss": 1.0}).decision is C
    rule.on_trial_add(snap("w2"))
    assert rule.on_trial_result(snap("a"), {"time_total_s": 3.0, "loss": 1.0}).decision is C
    assert rule.on_trial_result(snap("b"), {"time_total_s": 4.0, "loss": 1.0}).decision is P
    assert rule.on_trial_result(snap("a"), {"time_total_s": 6.5, "loss": 1.0}).decision is P


def test_median_resumes_the_paused_trial_furthest_behind() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=1.0)
    add_and_start(rule, "abc")
    for i, t in (("a", 5.0), ("b", 2.0), ("c", 3.0)):
        rule.on_trial_result(snap(i), {"time_total_s": t, "loss": 1.0})
    paused = [snap(i, PAUSED) for i in "abc"]
    assert rule.choose_trial_to_run(paused) == "b"
    assert rule.choose_trial_to_run([*paused, snap("d", PENDING)]) == "d"


def test_median_keeps_bounded_running_sums() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=0.0)
    rule.on_trial_add(snap("a"))
    for t in range(1, 3001):
        rule.on_trial_result(snap("a"), {"time_total_s": float(t), "loss": float(t)})
    curve = rule._curves["a"]
    assert len(curve.times) <= MAX_POINTS
    assert curve.mean_until(3000.0) == pytest.approx(1500.5)
    assert curve.mean_until(2000.0) == pytest.approx(1000.5, rel=0.01)  # coarsened: close


def test_median_forgets_results_after_a_trial_went_back() -> None:
    rule = MedianStoppingRule(metric="loss", mode="min", grace_period=2.0)
    add_and_start(rule, "a")
    for t in range(1, 6):
        rule.on_trial_result(snap("a"), {"time_total_s": float(t), "loss": float(t)})
    rule.on_trial_result(snap("a"), {"time_total_s": 3.0, "loss": 7.0})  # restored: back to 3
    curve = rule._curves["a"]
    assert curve.mean_until(1e9) == pytest.approx((2 + 3 + 7) / 3)  # grace 2: t=1 not counted
    assert curve.best == 1.0 and curve.last_time == 3.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grace_period": -1}, "`grace_period` is -1, but must be >= 0"),
    ({"min_samples_required": 0}, "`min_samples_required` is 0, but must be >= 1"),
    ({"min_time_slice": -1}, "`min_time_slice` is -1, but must be >= 0"),
])
def test_median_validates_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MedianStoppingRule(**kwargs)


# -- PBT -------------------------------------------------------------------------------------------
class Uniform:
    """A search-space domain, duck-typed: ``sample`` draws with a numpy Generator."""

    def __init__(self, lower: float, upper: float) -> None:
        self.lower, self.upper = lower, upper

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.lower, self.upper))


LRS = [0.001, 0.01, 0.1]
MUTATIONS: dict[str, Any] = {"lr": LRS, "bs": lambda: 48, "opt": {"momentum": Uniform(0.8, 0.99)}}
CONFIG: dict[str, Any] = {"lr": 0.01, "bs": 32, "opt": {"momentum": 0.9, "nesterov": True},
                          "tag": "x"}


def pbt(**kwargs: Any) -> PopulationBasedTraining:
    args: dict[str, Any] = {"metric": "acc", "mode": "max", "perturbation_interval": 2,
                            "hyperparam_mutations": MUTATIONS, "seed": 0, **kwargs}
    return PopulationBasedTraining(**args)


def drive(scheduler: PopulationBasedTraining, scores: dict[str, float], times: range,
          ckpt: Callable[[str], bool] = lambda _: True) -> dict[tuple[str, int], Any]:
    """Report ``scores`` (constant) in the given order at each time; the non-plain decisions."""
    add_and_start(scheduler, list(scores), CONFIG)
    out: dict[tuple[str, int], Any] = {}
    for t in times:
        for i, score in scores.items():
            d = scheduler.on_trial_result(snap(i, config=CONFIG, ckpt=ckpt(i)), it(t, acc=score))
            if d.decision is not C or d.exploit is not None:
                out[(i, t)] = d
    return out


def assert_explored(new: dict[str, Any], old: dict[str, Any]) -> None:
    assert new["tag"] == old["tag"] and new["opt"]["nesterov"] == old["opt"]["nesterov"]
    i = LRS.index(old["lr"])
    assert new["lr"] in LRS[max(i - 1, 0):i + 2] or new["lr"] in LRS  # shifted or resampled
    assert type(new["bs"]) is int and new["bs"] in (48, int(32 * 1.2), int(32 * 0.8))
    m = new["opt"]["momentum"]
    assert m in (pytest.approx(0.9 * 1.2), pytest.approx(0.9 * 0.8)) or 0.8 <= m <= 0.99


def test_pbt_exploits_the_bottom_quantile_from_the_top() -> None:
    scheduler = pbt()
    # reported worst first: at t=2 each trial is ranked only with those that reported before
    decisions = drive(scheduler, {"D": 1.0, "C": 2.0, "B": 3.0, "A": 4.0}, range(1, 5))
    assert list(decisions) == [("D", 4)]
    exploit = decisions[("D", 4)].exploit
    assert exploit.donor_id == "A" and "bottom 1 of 4" in decisions[("D", 4)].reason
    assert_explored(dict(exploit.config), CONFIG)
    assert scheduler.history == [ExploitRecord("D", "A", CONFIG, dict(exploit.config), 4)]
    assert scheduler._members["D"].config == exploit.config  # its record follows the exploit


def test_pbt_is_deterministic_given_its_seed() -> None:
    def history(seed: int) -> list[ExploitRecord]:
        scheduler = pbt(seed=seed, resample_probability=0.5)
        drive(scheduler, {str(i): float(i) for i in range(8)}, range(1, 21))
        return scheduler.history

    assert history(3) == history(3)
    assert len(history(3)) > 10
    assert len({repr(history(seed)) for seed in range(5)}) > 1


def test_pbt_donors_need_a_checkpoint() -> None:
    scores = {str(i): float(i) for i in range(8)}  # top quantile: 6 and 7; 7 has no checkpoint
    for seed in range(10):
        scheduler = pbt(seed=seed)
        decisions = drive(scheduler, scores, range(1, 5), ckpt=lambda i: i != "7")
        donors = {d.exploit.donor_id for d in decisions.values() if d.exploit}
        assert donors == {"6"}
    none = drive(pbt(), scores, range(1, 5), ckpt=lambda i: i not in "67")
    assert all(d.exploit is None for d in none.values())


@pytest.mark.parametrize(("burn_in_period", "first_exploit_at"), [(0.0, 2), (4.0, 4), (5.0, 5)])
def test_pbt_respects_the_burn_in_period(burn_in_period: float, first_exploit_at: int) -> None:
    scheduler = pbt(burn_in_period=burn_in_period)
    decisions = drive(scheduler, {"A": 2.0, "D": 1.0}, range(1, 9))
    assert min(t for (i, t), d in decisions.items() if d.exploit) == first_exploit_at


def test_pbt_ignores_finished_trials() -> None:
    scheduler = pbt()
    drive(scheduler, {"D": 1.0, "A": 4.0, "B": 3.0}, range(1, 3))
    scheduler.on_trial_complete(snap("A"), it(2, acc=4.0))
    d = scheduler.on_trial_result(snap("D", ckpt=True), it(4, acc=1.0))
    assert d.exploit is not None and d.exploit.donor_id == "B"


def test_pbt_yields_at_a_perturbation_step_when_trials_wait() -> None:
    scheduler = pbt()
    for i in "ABW":
        scheduler.on_trial_add(snap(i, PENDING))
    assert scheduler.on_trial_result(snap("A"), it(2, acc=1.0)).decision is P
    assert scheduler.choose_trial_to_run([snap("A", PAUSED), snap("W", PENDING)]) == "W"
    assert scheduler.on_trial_result(snap("B"), it(1, acc=1.0)).decision is C  # not a step
    assert scheduler.choose_trial_to_run([snap("A", PAUSED)]) == "A"


def test_pbt_synch_waits_for_the_population_then_exploits_the_paused() -> None:
    scheduler = pbt(synch=True)
    for i in "CBA":
        scheduler.on_trial_add(snap(i, PENDING, config=CONFIG))
    scores = {"C": 1.0, "B": 2.0, "A": 3.0}
    for i in "CBA":
        assert scheduler.on_trial_result(snap(i, ckpt=True), it(1, acc=scores[i])).decision is C
    for i in "CB":
        assert scheduler.on_trial_result(snap(i, ckpt=True), it(2, acc=scores[i])).decision is P
    assert scheduler.choose_trial_to_run([snap("C", PAUSED), snap("B", PAUSED)]) is None
    last = scheduler.on_trial_result(snap("A", ckpt=True), it(2, acc=scores["A"]))
    assert last.decision is C and last.exploit is None
    [(trial_id, decision)] = scheduler.pending_decisions()
    assert trial_id == "C" and decision.exploit is not None and decision.exploit.donor_id == "A"
    assert_explored(dict(decision.exploit.config), CONFIG)
    assert scheduler.pending_decisions() == []
    assert scheduler.choose_trial_to_run([snap("C", PAUSED), snap("B", PAUSED)]) == "C"


def test_pbt_explore_moves_lists_to_a_neighbour_and_keeps_ints() -> None:
    for seed in range(20):
        new = explore(CONFIG, MUTATIONS, random.Random(seed), 0.0, (1.2, 0.8))
        assert new["lr"] in (0.001, 0.1)  # no resampling: always one step from 0.01
        assert new["bs"] in (38, 25)
        assert new["opt"]["momentum"] in (pytest.approx(1.08), pytest.approx(0.72))
        assert_explored(new, CONFIG)
    edge = explore({"lr": 0.1}, {"lr": LRS}, random.Random(1), 0.0, (1.2,))
    assert edge["lr"] in (0.01, 0.1)  # clamped at the end of the list


def test_pbt_explore_resamples_within_the_space() -> None:
    rng = random.Random(5)
    for _ in range(20):
        new = explore({"lr": 0.5, "bs": 32, "m": 0.9},
                      {"lr": LRS, "bs": lambda: 48.7, "m": Uniform(0.8, 0.99)}, rng, 1.0, (2.0,))
        assert new["lr"] in LRS  # 0.5 is not in the list: resampled from it anyway
        assert new["bs"] == 48  # ints stay ints
        assert 0.8 <= new["m"] <= 0.99
    missing = explore({}, {"lr": LRS, "m": Uniform(0, 1)}, random.Random(0), 0.0, (2.0,))
    assert missing["lr"] in LRS and 0 <= missing["m"] <= 1
    word = explore({"act": "relu"}, {"act": lambda: "tanh"}, random.Random(0), 0.0, (2.0,))
    assert word == {"act": "tanh"}  # not a number: resampled, never multiplied


def test_pbt_explore_with_a_real_search_space_domain() -> None:
    space = pytest.importorskip("trainkit.tune._search_space")
    mutations = {"lr": space.loguniform(1e-4, 1e-1), "layers": space.randint(1, 8)}
    for seed in range(10):
        new = explore({"lr": 0.01, "layers": 4}, mutations, random.Random(seed), 1.0, (1.2,))
        assert 1e-4 <= new["lr"] <= 1e-1 and type(new["layers"]) is int


def test_pbt_explore_is_seeded_copies_and_runs_the_custom_fn_last() -> None:
    def double_lr(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "lr": config["lr"] * 2}

    a = explore(CONFIG, MUTATIONS, random.Random(9), 0.5, (1.2, 0.8), double_lr)
    b = explore(CONFIG, MUTATIONS, random.Random(9), 0.5, (1.2, 0.8), double_lr)
    assert a == b and a["lr"] in [2 * x for x in LRS]
    assert CONFIG["opt"]["momentum"] == 0.9 and a["opt"] is not CONFIG["opt"]
    with pytest.raises(TypeError, match="custom_explore_fn returned None"):
        explore(CONFIG, MUTATIONS, random.Random(0), 0.5, (1.2,), lambda c: None)  # type: ignore[arg-type,return-value]
    only_custom = PopulationBasedTraining(metric="acc", mode="max", custom_explore_fn=double_lr)
    assert only_custom.hyperparam_mutations == {}


def test_pbt_without_require_attrs_ignores_incomplete_results() -> None:
    scheduler = pbt(require_attrs=False)
    scheduler.on_trial_add(snap("A"))
    assert scheduler.on_trial_result(snap("A"), it(2, loss=1.0)).decision is C
    with pytest.raises(ValueError, match="without 'acc'"):
        pbt().on_trial_result(snap("A"), it(2, loss=1.0))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"perturbation_interval": 0}, ValueError, "`perturbation_interval` is 0, but must be > 0"),
    ({"quantile_fraction": 0.6}, ValueError, r"`quantile_fraction` is 0.6, but must be in \(0, "),
    ({"quantile_fraction": 0}, ValueError, "`quantile_fraction` is 0,"),
    ({"resample_probability": 1.5}, ValueError, r"`resample_probability` is 1.5, .* \[0, 1\]"),
    ({"burn_in_period": -1}, ValueError, "`burn_in_period` is -1"),
    ({"perturbation_factors": ()}, ValueError, "`perturbation_factors` is ()"),
    ({"hyperparam_mutations": {}}, ValueError, "non-empty unless custom_explore_fn"),
    ({"hyperparam_mutations": None}, ValueError, "`hyperparam_mutations` is None"),
    ({"hyperparam_mutations": {"lr": []}}, ValueError, r"hyperparam_mutations\['lr'\]"),
    ({"hyperparam_mutations": {"opt": {"lr": 3}}}, TypeError,
     r"hyperparam_mutations\['opt'\]\['lr'\] is 3"),
])
def test_pbt_validates_its_arguments(kwargs: dict[str, Any], error: type[Exception],
                                     message: str) -> None:
    args: dict[str, Any] = {"hyperparam_mutations": {"lr": LRS}, **kwargs}
    with pytest.raises(error, match=message):
        PopulationBasedTraining(**args)
