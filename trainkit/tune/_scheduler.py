"""``TrialScheduler``: decides, result by result, whether a trial continues, pauses or stops.

Schedulers are pure decision makers: they receive frozen ``TrialSnapshot``s and results and
return typed decisions; they never call into the runner. They run in the driver, in one
thread.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.tune._trial import TrialSnapshot


class Decision(enum.Enum):
    CONTINUE = "continue"
    PAUSE = "pause"  # checkpoint now, free the resources; resumed when chosen to run again
    STOP = "stop"  # terminate now, free the resources


@dataclass(frozen=True, slots=True)
class Exploit:
    """PBT's exploit: restart the trial from ``donor_id``'s latest checkpoint with ``config``."""

    donor_id: str
    config: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SchedulerDecision:
    decision: Decision
    exploit: Exploit | None = None
    reason: str = ""
    # With CONTINUE: save the trial's state now (a class trainable's ``save_checkpoint``), as
    # Ray's PBT saves its top trials at their perturbation steps; ``on_trial_save`` follows.
    save: bool = False


CONTINUE = SchedulerDecision(Decision.CONTINUE)


class TrialScheduler:
    """Base class; the default behaviour is FIFO (every trial runs to its end).

    ``set_search_properties(metric, mode)`` is called once before the first trial with the
    TuneConfig's metric and mode (either may be None: then the scheduler's own apply); it
    returns False if the scheduler has neither. A scheduler that needs a metric and got none
    raises ValueError there.
    """

    metric: str | None = None
    mode: str | None = None

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        if metric and not self.metric:
            self.metric = metric
        if mode and not self.mode:
            self.mode = mode
        return True

    def on_trial_add(self, trial: TrialSnapshot) -> None:
        """A trial was created (PENDING)."""

    def on_trial_result(self, trial: TrialSnapshot, result: Mapping[str, Any]
                        ) -> SchedulerDecision:
        """A RUNNING trial reported ``result`` (it carries ``training_iteration``)."""
        return CONTINUE

    def on_trial_complete(self, trial: TrialSnapshot, result: Mapping[str, Any]) -> None:
        """The trial finished by itself or was stopped; ``result`` is its last result."""

    def on_trial_error(self, trial: TrialSnapshot) -> None:
        """The trial failed for good."""

    def on_trial_save(self, trial: TrialSnapshot) -> None:
        """The checkpoint a ``SchedulerDecision(save=True)`` asked for is committed (a
        trainable that cannot save on demand, a function one, never gets here)."""

    def choose_trial_to_run(self, candidates: Sequence[TrialSnapshot]) -> str | None:
        """Which PENDING or PAUSED trial to start next (candidates in creation order), or None
        to start none now. The default: the first PENDING one, else the first PAUSED one."""
        for state in ("pending", "paused"):
            for t in candidates:
                if t.state.value == state:
                    return t.trial_id
        return None

    def pending_decisions(self) -> list[tuple[str, SchedulerDecision]]:
        """Decisions about trials other than the one an event was about, drained by the call.

        The runner calls it after every other scheduler call and applies each decision to the
        named trial unless that trial is already terminal: STOP stops it (a PAUSED or PENDING
        one without starting it again; then ``on_trial_complete`` as for any stop); an
        ``exploit`` gives it the donor's checkpoint and the new config before it next runs.
        HyperBand stops the losers of a halving this way (they are PAUSED at the rung), and
        PBT with ``synch=True`` exploits the PAUSED trials of the bottom quantile. The default
        has none.
        """
        return []

    def debug_string(self) -> str:
        return type(self).__name__
