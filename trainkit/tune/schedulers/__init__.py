"""Trial schedulers: they decide, result by result, which trials go on, pause or stop."""

from trainkit.tune._schedulers import ASHAScheduler
from trainkit.tune._schedulers import AsyncHyperBandScheduler
from trainkit.tune._schedulers import FIFOScheduler
from trainkit.tune._schedulers import HyperBandScheduler
from trainkit.tune._schedulers import MedianStoppingRule
from trainkit.tune._schedulers import PopulationBasedTraining
from trainkit.tune._schedulers import TrialScheduler

__all__ = ["ASHAScheduler", "AsyncHyperBandScheduler", "FIFOScheduler", "HyperBandScheduler",
           "MedianStoppingRule", "PopulationBasedTraining", "TrialScheduler"]
