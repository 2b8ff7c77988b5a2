"""``SweepLedger``: a sweep's story, appended to ``ledger.jsonl`` in its experiment folder.

The same format and writer as a Train run's ledger (``trainkit.train.hosting.RunLedger``: one
JSON object a line with ``v``, ``seq``, ``t``, ``event``), so ``trainkit report`` and the
dashboard read both with one reader. It is what they read about a sweep; the experiment
journal (``experiment_state.jsonl``) stays what ``Tuner.restore`` replays. The events:

```text
sweep_started    name, kind ("tune"), storage, resumed, metric, mode, num_samples,
                 searcher, scheduler, trainable
trial_added      trial_id, name, params
trial_started    trial_id, run (1, 2, ... this trial's runs), resumed ("paused" | "error"
                 | null: what this run continues after)
trial_result     trial_id, iteration, checkpoint, metrics (the sweep's metric(s) and
                 time_total_s; every numeric metric, up to 8, when the sweep names none)
best_changed     trial_id, metric, value, iteration (another trial has the best last result)
trial_paused     trial_id, iteration
trial_stopped    trial_id, iteration, by ("scheduler" | "sweep"), reason
trial_errored    trial_id, error_type, message, failures, retrying
trial_completed  trial_id, iteration
trial_config     trial_id, params (PBT gave the trial a new config; a run of it ended)
sweep_finished   trials (a count per status), best_trial_id
sweep_failed     error_type, message
```

Cost: results are buffered and written at most every ``FLUSH_INTERVAL_S``; every other event
is written as it happens (a local append; the experiment folder is mirrored to remote
storage by ``ExperimentFolder``). Used from the runner's thread only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Final

from trainkit.train.hosting import RunLedger
from trainkit.train.hosting import ledger_error_fields
from trainkit.train.hosting import local_location

_AUTO: Final = frozenset({"training_iteration", "time_this_iter_s", "time_total_s",
                          "timestamp", "trial_id", "checkpoint_dir_name", "done"})
_MAX_METRICS: Final = 8
_MESSAGE_CHARS: Final = 500


class SweepLedger:
    """The ledger of the experiment whose local folder is ``exp_dir``; see the module docstring.

    Args:
        exp_dir: the local folder the runner writes the experiment's files into.
        metric, mode: the sweep's ``TuneConfig(metric=..., mode=...)``; a list of metrics is
            recorded, and the first one decides ``best_changed``.
    """

    def __init__(self, exp_dir: str, metric: str | Sequence[str] | None,
                 mode: str | Sequence[str] | None) -> None:
        self.ledger = RunLedger(local_location(exp_dir))
        self.metrics = [metric] if isinstance(metric, str) else list(metric or [])
        first_mode = mode if isinstance(mode, str) or mode is None else mode[0]
        self.sign = -1.0 if first_mode == "min" else 1.0  # larger sign * value is better
        self.last: dict[str, float] = {}  # trial id -> its last value of the first metric
        self.best: str | None = None
        self.runs: dict[str, int] = {}

    def sweep_started(self, **fields: Any) -> None:
        self.ledger.append("sweep_started", kind="tune", **fields)

    def trial_added(self, trial_id: str, name: str, params: Mapping[str, Any]) -> None:
        self.ledger.append("trial_added", trial_id=trial_id, name=name, params=dict(params))

    def trial_config(self, trial_id: str, params: Mapping[str, Any]) -> None:
        self.ledger.append("trial_config", trial_id=trial_id, params=dict(params))

    def trial_started(self, trial_id: str, resumed: str | None) -> None:
        self.runs[trial_id] = self.runs.get(trial_id, 0) + 1
        self.ledger.append("trial_started", trial_id=trial_id, run=self.runs[trial_id],
                           resumed=resumed)

    def trial_result(self, trial_id: str, result: Mapping[str, Any], checkpoint: bool) -> None:
        self.ledger.append("trial_result", trial_id=trial_id,
                           iteration=result.get("training_iteration"), checkpoint=checkpoint,
                           metrics=self._summary(result))
        if self.metrics:
            value = _number(result.get(self.metrics[0]))
            if value is not None:
                self._update_best(trial_id, value, result.get("training_iteration"))

    def trial_paused(self, trial_id: str, iteration: int) -> None:
        self.ledger.append("trial_paused", trial_id=trial_id, iteration=iteration)

    def trial_stopped(self, trial_id: str, iteration: int, by: str, reason: str) -> None:
        self.ledger.append("trial_stopped", trial_id=trial_id, iteration=iteration, by=by,
                           reason=reason)

    def trial_completed(self, trial_id: str, iteration: int) -> None:
        self.ledger.append("trial_completed", trial_id=trial_id, iteration=iteration)

    def trial_errored(self, trial_id: str, error: BaseException | None, text: str,
                      failures: int, retrying: bool) -> None:
        if error is not None:
            fields = ledger_error_fields(error)
        else:  # the trial's actor died: only the text of the runtime's error is known
            kind, _, message = text.splitlines()[0].partition(": ") if text else ("", "", "")
            fields = {"error_type": kind or None, "message": message[:_MESSAGE_CHARS]}
        self.ledger.append("trial_errored", trial_id=trial_id, failures=failures,
                           retrying=retrying, **fields)

    def sweep_finished(self, counts: Mapping[str, int]) -> None:
        self.ledger.append("sweep_finished", trials=dict(counts), best_trial_id=self.best)

    def sweep_failed(self, error: BaseException) -> None:
        self.ledger.append("sweep_failed", **ledger_error_fields(error))

    def close(self) -> None:
        self.ledger.close()

    def _summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        keys = self.metrics or [k for k in result if k not in _AUTO
                                and _number(result[k]) is not None][:_MAX_METRICS]
        out = {k: v for k in [*keys, "time_total_s"]
               if (v := _number(result.get(k))) is not None}
        return out

    def _update_best(self, trial_id: str, value: float, iteration: Any) -> None:
        """Say when another trial becomes the best (by last results): not each new value of
        the best trial, which the trial's own results already carry."""
        previous = self.last.get(trial_id)
        self.last[trial_id] = value
        best = self.best
        if best is None:
            best = trial_id
        elif best == trial_id:
            if previous is not None and self.sign * value < self.sign * previous:
                # the best trial got worse: another may lead now (all trials looked at)
                best = max(self.last, key=lambda t: self.sign * self.last[t])
        elif self.sign * value > self.sign * self.last[best]:
            best = trial_id
        if best != self.best:
            self.best = best
            self.ledger.append("best_changed", trial_id=best, metric=self.metrics[0],
                               value=self.last[best],
                               iteration=iteration if best == trial_id else None)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (a string, a list, a NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None
