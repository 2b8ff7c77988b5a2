"""``FIFOScheduler``: every trial runs to its end, in creation order."""

from __future__ import annotations

from trainkit.tune._scheduler import TrialScheduler


class FIFOScheduler(TrialScheduler):
    """Runs trials first in, first out, and never stops, pauses or exploits one.

    The default scheduler: ``TrialScheduler``'s behaviour under its own name. It needs no
    metric.

    Example:
        >>> from trainkit.tune._trial import TrialSnapshot, TrialState
        >>> FIFOScheduler().choose_trial_to_run([TrialSnapshot("0", {}, TrialState.PENDING)])
        '0'
    """

    def debug_string(self) -> str:
        return "FIFOScheduler: trials run in creation order, to their end"
