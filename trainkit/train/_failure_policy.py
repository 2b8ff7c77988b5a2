"""``FailurePolicy``: after a worker group fails, restart it or give up."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from trainkit.train._config import FailureConfig


class FailureDecision(enum.Enum):
    RESTART = "restart"  # a new group resumes from the latest checkpoint
    RAISE = "raise"  # the budget is spent: fit() raises TrainingFailedError


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    config: FailureConfig

    def decide(self, failures: int) -> tuple[FailureDecision, str]:
        """The decision after the ``failures``-th failure of the run, and why."""
        limit = self.config.max_failures
        if limit == -1:
            return FailureDecision.RESTART, f"failure {failures}; max_failures=-1 (no limit)"
        if failures <= limit:
            return FailureDecision.RESTART, f"failure {failures} of at most {limit} allowed"
        return FailureDecision.RAISE, (f"failure {failures}, but FailureConfig(max_failures="
                                       f"{limit}) allows {limit}")
