"""A Trainer run inside a function trainable reports to its trial.

>>> def trainable(config):
...     Trainer(loop, run_config=RunConfig(callbacks=[TuneReportCallback()])).fit()
"""

from trainkit.tune._report_callback import TuneReportCallback

__all__ = ["TuneReportCallback"]
