"""Tune: hyperparameter sweeps whose trials run as actors on trainkit's runtime.

``from trainkit import tune``; search algorithms are in ``tune.search``, schedulers in
``tune.schedulers``, the search-space classes in ``tune.search.sample``. ``tune.report``,
``tune.get_checkpoint``, ``tune.RunConfig`` and ``tune.CheckpointConfig`` are Train's;
``tune.FailureConfig`` is Train's plus Ray's ``fail_fast``; ``tune.run`` returns an
``ExperimentAnalysis``.
"""

from __future__ import annotations

from trainkit.exceptions import TuneError
from trainkit.train import Checkpoint
from trainkit.train import CheckpointConfig
from trainkit.train import RunConfig
from trainkit.train import get_checkpoint
from trainkit.train import get_context
from trainkit.train import report
from trainkit.tune import schedulers
from trainkit.tune import search
from trainkit.tune._analysis import ExperimentAnalysis
from trainkit.tune._config import FailureConfig
from trainkit.tune._config import TuneConfig
from trainkit.tune._result_grid import Result
from trainkit.tune._result_grid import ResultGrid
from trainkit.tune._run import Experiment
from trainkit.tune._run import run
from trainkit.tune._search_space import choice
from trainkit.tune._search_space import grid_search
from trainkit.tune._search_space import lograndint
from trainkit.tune._search_space import loguniform
from trainkit.tune._search_space import qlograndint
from trainkit.tune._search_space import qloguniform
from trainkit.tune._search_space import qrandint
from trainkit.tune._search_space import qrandn
from trainkit.tune._search_space import quniform
from trainkit.tune._search_space import randint
from trainkit.tune._search_space import randn
from trainkit.tune._search_space import sample_from
from trainkit.tune._search_space import uniform
from trainkit.tune._stopper import Stopper
from trainkit.tune._trainable import PlacementGroupFactory
from trainkit.tune._trainable import Trainable
from trainkit.tune._trainable import with_parameters
from trainkit.tune._trainable import with_resources
from trainkit.tune._trial import TrialState
from trainkit.tune._tuner import Tuner

__all__ = [
    "Checkpoint",
    "CheckpointConfig",
    "Experiment",
    "ExperimentAnalysis",
    "FailureConfig",
    "PlacementGroupFactory",
    "Result",
    "ResultGrid",
    "RunConfig",
    "Stopper",
    "Trainable",
    "TrialState",
    "TuneConfig",
    "TuneError",
    "Tuner",
    "choice",
    "get_checkpoint",
    "get_context",
    "grid_search",
    "lograndint",
    "loguniform",
    "qlograndint",
    "qloguniform",
    "qrandint",
    "qrandn",
    "quniform",
    "randint",
    "randn",
    "report",
    "run",
    "sample_from",
    "schedulers",
    "search",
    "uniform",
    "with_parameters",
    "with_resources",
]
