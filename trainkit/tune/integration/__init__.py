"""Callbacks that connect other trainkit layers to Tune (Ray's ``ray.tune.integration``).

``trainkit.tune.integration.train.TuneReportCallback``: a Trainer run inside a function
trainable reports to its trial.
"""

__all__: list[str] = []
