"""Search algorithms: they suggest each trial's config."""

from trainkit.tune._basic_variant import BasicVariantGenerator
from trainkit.tune._concurrency_limiter import ConcurrencyLimiter
from trainkit.tune._optuna_search import OptunaSearch
from trainkit.tune._searcher import Searcher

__all__ = ["BasicVariantGenerator", "ConcurrencyLimiter", "OptunaSearch", "Searcher"]
