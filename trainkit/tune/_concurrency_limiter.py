"""``ConcurrencyLimiter``: at most ``max_concurrent`` live trials from any searcher."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from trainkit.tune._searcher import Searcher


class ConcurrencyLimiter(Searcher):
    """Wraps ``searcher`` so that at most ``max_concurrent`` of its trials are alive at once:
    ``suggest`` returns None at the limit, without asking the wrapped searcher.

    With ``batch=True`` the limiter works in batches: once ``max_concurrent`` trials are
    alive, none starts until all of them have ended, and the wrapped searcher hears of their
    ends together, when the last one ends (useful for searchers that learn in rounds).

    Results and ends of trials are passed through; the wrapped searcher is ``.searcher``.
    Runs in the driver, in one thread, like every searcher.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, batch: bool = False) -> None:
        if not isinstance(searcher, Searcher):
            raise TypeError(f"`searcher` is {searcher!r}, but must be a tune.search.Searcher")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise TypeError(f"`max_concurrent` is {max_concurrent!r}, but must be an int")
        if max_concurrent < 1:
            raise ValueError(f"`max_concurrent` is {max_concurrent}, but must be >= 1")
        super().__init__(searcher.metric, searcher.mode)
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.batch = batch
        self._live: set[str] = set()
        # batch mode: the ends held back until the whole batch has ended
        self._ended: dict[str, tuple[Mapping[str, Any] | None, bool]] = {}

    def set_search_properties(
        self,
        metric: str | Sequence[str] | None,
        mode: str | Sequence[str] | None,
        config: Mapping[str, Any],
        *,
        num_samples: int = 1,
    ) -> bool:
        accepted = self.searcher.set_search_properties(
            metric, mode, config, num_samples=num_samples
        )
        self.metric, self.mode = self.searcher.metric, self.searcher.mode
        return accepted

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._live:  # asked again: the wrapped searcher decides what it gives
            return self.searcher.suggest(trial_id)
        if len(self._live) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if isinstance(suggestion, dict):
            self._live.add(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._live:
            return
        if not self.batch:
            self._live.discard(trial_id)
            self.searcher.on_trial_complete(trial_id, result, error)
            return
        self._ended[trial_id] = (result, error)
        if len(self._ended) < len(self._live):
            return  # the batch is still running
        ended, self._ended = self._ended, {}
        for ended_id, (ended_result, ended_error) in ended.items():
            self._live.discard(ended_id)
            self.searcher.on_trial_complete(ended_id, ended_result, ended_error)

    @property
    def live_trials(self) -> frozenset[str]:
        """The trials this limiter counts as alive (in batch mode, until the batch ends)."""
        return frozenset(self._live)

    def get_state(self) -> dict[str, Any]:
        return {
            "searcher": self.searcher.get_state(),
            "live": sorted(self._live),
            "ended": dict(self._ended),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.searcher.set_state(state["searcher"])
        self._live = set(state["live"])
        self._ended = dict(state["ended"])
