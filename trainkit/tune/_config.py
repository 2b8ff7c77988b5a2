"""``TuneConfig``: what a sweep optimises and how many trials it runs, validated at once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.train import FailureConfig as TrainFailureConfig


def _modes(mode: Any) -> list[str]:
    return list(mode) if isinstance(mode, (list, tuple)) else [mode]


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneConfig:
    """How a sweep searches.

    Args:
        metric: the reported metric to optimise (a list for multi-objective search).
        mode: "min" or "max" (a list alongside a list of metrics).
        search_alg: a ``tune.search.Searcher`` (default: ``BasicVariantGenerator``).
        scheduler: a ``tune.schedulers.TrialScheduler`` (default: FIFO).
        num_samples: trials to run; with ``grid_search`` in the space, repeats of the grid;
            -1: until stopped or out of time.
        max_concurrent_trials: at most this many trials at once (default: as many as the
            cluster's resources hold).
        time_budget_s: stop the whole sweep after this many seconds.
        reuse_actors: run a new trial in the process of a finished one with the same
            resources (much cheaper than a new process per trial).
        seed: seeds the default search algorithm's sampling.
    """

    metric: str | Sequence[str] | None = None
    mode: str | Sequence[str] | None = None
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode is not None:
            for mode in _modes(self.mode):
                if mode not in ("min", "max"):
                    raise ValueError(f"`mode` is {self.mode!r}, but must be 'min' or 'max'")
        if isinstance(self.metric, (list, tuple)) and (
                not isinstance(self.mode, (list, tuple)) or len(self.mode) != len(self.metric)):
            raise ValueError(f"`metric` is a list ({self.metric!r}), so `mode` must be a list of "
                             f"the same length, got {self.mode!r}")
        if self.metric is not None and self.mode is None:
            raise ValueError(f"`metric` is {self.metric!r} but `mode` is None: add "
                             "mode='min' or mode='max'")
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1):
            raise ValueError(f"`num_samples` is {n!r}, but must be an int >= 1, or -1 (run "
                             "until stopped or out of time)")
        m = self.max_concurrent_trials
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"`max_concurrent_trials` is {m!r}, but must be an int >= 1 or "
                             "None (as many as the resources hold)")
        t = self.time_budget_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
            raise ValueError(f"`time_budget_s` is {t!r}, but must be a number of seconds > 0 "
                             "or None")

    @property
    def single_metric(self) -> str | None:
        """The metric that ranks trials (the first one in multi-objective search)."""
        if self.metric is None or isinstance(self.metric, str):
            return self.metric
        return str(self.metric[0])

    @property
    def single_mode(self) -> str | None:
        if self.mode is None or isinstance(self.mode, str):
            return self.mode
        return str(self.mode[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureConfig(TrainFailureConfig):
    """Train's ``FailureConfig`` plus Ray Tune's ``fail_fast``.

    Args:
        max_failures: retries of a failed trial (each from its latest checkpoint); 0: none,
            -1: no limit.
        fail_fast: True: the first trial error ends the sweep (the other trials stop, and
            ``fit()`` returns); "raise": ``fit()`` raises that error. Needs
            ``max_failures=0``, as in Ray.
    """

    fail_fast: bool | str = False

    def __post_init__(self) -> None:
        TrainFailureConfig.__post_init__(self)
        ff = self.fail_fast
        if not isinstance(ff, bool) and not (isinstance(ff, str) and ff.lower() == "raise"):
            raise ValueError(f"`fail_fast` is {ff!r}, but must be True, False or 'raise'")
        if ff and self.max_failures != 0:
            raise ValueError(f"`fail_fast` is {ff!r} but `max_failures` is {self.max_failures}: "
                             "a sweep that ends at the first error retries nothing; set "
                             "max_failures=0 or fail_fast=False")


def fail_fast_of(failure_config: Any) -> bool | str:
    """``fail_fast`` of a run's failure config: False for Train's (which has none)."""
    value = getattr(failure_config, "fail_fast", False)
    return "raise" if isinstance(value, str) else bool(value)
