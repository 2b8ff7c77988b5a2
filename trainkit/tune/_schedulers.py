"""The trial schedulers, in one place for ``trainkit.tune`` and ``tune.schedulers`` to export."""

from __future__ import annotations

from trainkit.tune._asha import ASHAScheduler
from trainkit.tune._asha import AsyncHyperBandScheduler
from trainkit.tune._fifo import FIFOScheduler
from trainkit.tune._hyperband import HyperBandScheduler
from trainkit.tune._median import MedianStoppingRule
from trainkit.tune._pbt import ExploitRecord
from trainkit.tune._pbt import PopulationBasedTraining
from trainkit.tune._scheduler import Decision
from trainkit.tune._scheduler import Exploit
from trainkit.tune._scheduler import SchedulerDecision
from trainkit.tune._scheduler import TrialScheduler

__all__ = [
    "ASHAScheduler",
    "AsyncHyperBandScheduler",
    "Decision",
    "Exploit",
    "ExploitRecord",
    "FIFOScheduler",
    "HyperBandScheduler",
    "MedianStoppingRule",
    "PopulationBasedTraining",
    "SchedulerDecision",
    "TrialScheduler",
]
