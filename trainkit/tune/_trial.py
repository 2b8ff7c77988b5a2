"""Trials: their lifecycle, and the frozen snapshot that searchers and schedulers see.

```text
PENDING --start--> RUNNING --stop/finish--> TERMINATED
   ^                 |  |
   |                 |  +--error (no retries left)--> ERRORED
   +---requeued------+  (an error with retries left, or a restore)
                     +--pause--> PAUSED --resume--> PENDING
```
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final


class TrialState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATED = "terminated"
    ERRORED = "errored"

    @property
    def is_terminal(self) -> bool:
        return self in (TrialState.TERMINATED, TrialState.ERRORED)


TRANSITIONS: Final[Mapping[TrialState, frozenset[TrialState]]] = {
    TrialState.PENDING: frozenset({TrialState.RUNNING, TrialState.TERMINATED}),
    TrialState.RUNNING: frozenset({TrialState.PAUSED, TrialState.TERMINATED, TrialState.ERRORED,
                                   TrialState.PENDING}),
    TrialState.PAUSED: frozenset({TrialState.PENDING, TrialState.TERMINATED}),
    TrialState.TERMINATED: frozenset(),
    TrialState.ERRORED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class TrialSnapshot:
    """What a searcher or scheduler may know of a trial: a copy, never the live trial.

    Attributes:
        trial_id: unique within the experiment, e.g. "00003".
        config: the trial's resolved hyperparameters.
        state: where it is in its lifecycle.
        iteration: ``training_iteration`` of its last result (0 before any).
        last_result: its last reported metrics (with ``training_iteration``,
            ``time_total_s``), empty before any.
        has_checkpoint: whether it has a persisted checkpoint to resume or clone from.
    """

    trial_id: str
    config: Mapping[str, Any]
    state: TrialState
    iteration: int = 0
    last_result: Mapping[str, Any] = field(default_factory=dict)
    has_checkpoint: bool = False
