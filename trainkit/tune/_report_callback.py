"""``TuneReportCallback``: each report of a Trainer run inside a trial is a report of the trial.

A Trainer calls its ``RunConfig(callbacks=...)`` in its driver, which for a Trainer started by
a function trainable is the trial's own thread; the callback hands each report (rank 0's
metrics and the committed checkpoint) to the trial that runs there, as ``tune.report`` would,
and waits for the trial's decision: a trial the scheduler or a stop criterion stops ends the
Trainer's run at that report.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from trainkit.exceptions import TuneError
from trainkit.train import Checkpoint
from trainkit.tune._trial_actor import active_trial

_OUTSIDE = (
    "TuneReportCallback() was created outside a Tune trial: create it inside the function "
    "trainable that runs the Trainer, e.g. def trainable(config): Trainer(loop, "
    "run_config=RunConfig(callbacks=[TuneReportCallback()])).fit(), and give that function "
    "to tune.Tuner (a Trainer given to tune.Tuner directly reports to its trials without it)")


class TuneReportCallback:
    """Report every result of a Trainer to the Tune trial that runs it (Ray's
    ``ray.tune.integration`` callbacks for a trainer inside a function trainable).

    Args:
        metrics: which of the Trainer's metrics the trial reports: None, all of them; a key
            or a list of keys; or a dict ``{trial_key: trainer_key}`` that renames them.
        save_checkpoints: also give the trial each checkpoint the Trainer committed (a copy
            in the trial's folder, so the trial resumes and PBT exploits from it).

    Raises:
        TuneError: created outside a running trial (the message says where it belongs).
        TypeError: ``metrics`` is none of the accepted forms.

    Example:
        >>> def trainable(config):
        ...     trainer = Trainer(loop, train_loop_config=config, run_config=RunConfig(
        ...         callbacks=[TuneReportCallback({"loss": "val_loss"})]))
        ...     trainer.fit()
        >>> tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-1)}).fit()
    """

    def __init__(self, metrics: str | Sequence[str] | Mapping[str, str] | None = None,
                 save_checkpoints: bool = True) -> None:
        self.metrics = _key_map(metrics)
        self.save_checkpoints = save_checkpoints
        if active_trial() is None:
            raise TuneError(_OUTSIDE)

    def on_report(self, metrics: Mapping[str, Any], checkpoint: Checkpoint | None) -> None:
        trial = active_trial()
        if trial is None:
            raise TuneError(_OUTSIDE)
        if self.metrics is None:
            chosen = dict(metrics)
        else:
            missing = sorted(v for v in self.metrics.values() if v not in metrics)
            if missing:
                raise TuneError(f"TuneReportCallback(metrics=...) names {missing}, which the "
                                f"Trainer did not report (it reported {sorted(metrics)}): "
                                "name reported metrics, or None for all of them")
            chosen = {k: metrics[v] for k, v in self.metrics.items()}
        trial.report_from_trainer(chosen, checkpoint if self.save_checkpoints else None)

    def __repr__(self) -> str:
        return (f"TuneReportCallback(metrics={self.metrics!r}, "
                f"save_checkpoints={self.save_checkpoints})")


def _key_map(metrics: object) -> dict[str, str] | None:
    if metrics is None:
        return None
    if isinstance(metrics, str):
        return {metrics: metrics}
    if isinstance(metrics, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metrics.items()):
        return dict(metrics)
    if isinstance(metrics, (list, tuple)) and all(isinstance(k, str) for k in metrics):
        return {k: k for k in metrics}
    raise TypeError(f"TuneReportCallback(metrics={metrics!r}): give None (every metric), a "
                    "key, a list of keys, or a dict {trial_key: trainer_key}")
