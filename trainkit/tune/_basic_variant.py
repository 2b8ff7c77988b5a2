"""``BasicVariantGenerator``: grid search and random search, Tune's default searcher.

The configs come in blocks. First one block per point of ``points_to_evaluate`` (the point
replaces those values of the space; the rest is sampled), then ``num_samples - len(points)``
blocks of the space itself (without end for ``num_samples=-1``). A block holds one config per
grid point, in ``expand_grid``'s order, so a run has ``grid_size * num_samples`` configs when
no points are given. Every config draws fresh samples, unless ``constant_grid_search`` asks for
one draw per block shared by its grid points.

The searcher learns nothing from results; its state is a cursor (block, position in the block)
and the generator's state, so a restored experiment continues with the next config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from trainkit.tune._search_space import ConfigPath
from trainkit.tune._search_space import Domain
from trainkit.tune._search_space import Function
from trainkit.tune._search_space import expand_grid
from trainkit.tune._search_space import flatten_space
from trainkit.tune._search_space import grid_size
from trainkit.tune._search_space import resolve
from trainkit.tune._search_space import set_path
from trainkit.tune._searcher import Searcher

if TYPE_CHECKING:
    import numpy as np


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s values written over it, dict by dict."""
    for key, value in update.items():
        current = base.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(current, dict)
            and "grid_search" not in current
        ):
            _deep_update(current, value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _make_rng(random_state: int | np.random.Generator | None) -> np.random.Generator:
    import numpy as np

    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, int)
    ):
        raise TypeError(
            f"`random_state` is {random_state!r}, but must be an int seed, a "
            f"numpy.random.Generator or None"
        )
    return np.random.default_rng(random_state)


class BasicVariantGenerator(Searcher):
    """Grid and random search over a Tune search space, in Ray's order.

    Args:
        points_to_evaluate: configs to try first, in order; each may be partial (its missing
            values are sampled) and counts as one of ``num_samples``.
        max_concurrent: at most this many of its trials alive at once (0: no limit);
            ``suggest`` returns None while the limit is reached.
        random_state: an int seed or a ``numpy.random.Generator`` (used, and advanced, as
            is); None draws a fresh seed.
        constant_grid_search: sample the random values once per pass over the grid, so every
            grid point of the pass shares them.

    Runs in the driver, in one thread, like every searcher.
    """

    def __init__(
        self,
        points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
        max_concurrent: int = 0,
        random_state: int | np.random.Generator | None = None,
        constant_grid_search: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise TypeError(f"`max_concurrent` is {max_concurrent!r}, but must be an int")
        if max_concurrent < 0:
            raise ValueError(
                f"`max_concurrent` is {max_concurrent}, but must be >= 0 (0 means no limit)"
            )
        points = list(points_to_evaluate or [])
        for i, point in enumerate(points):
            if not isinstance(point, Mapping):
                raise TypeError(f"`points_to_evaluate[{i}]` is {point!r}, but must be a dict")
        self._points: list[dict[str, Any]] = [copy.deepcopy(dict(p)) for p in points]
        self._max_concurrent = max_concurrent
        self._constant_grid_search = constant_grid_search
        self._rng = _make_rng(random_state)
        self._space: dict[str, Any] | None = None
        self._num_samples = 1
        # The cursor: the next config is the `_position`-th grid point of block `_block`.
        self._block = 0
        self._position = 0
        self._constants: list[tuple[ConfigPath, Any]] | None = None  # constant_grid_search
        self._suggested = 0
        self._live: dict[str, dict[str, Any]] = {}
        self._block_cache: tuple[int, list[dict[str, Any]]] | None = None

    # --- Searcher ---------------------------------------------------------------------------

    def set_search_properties(
        self,
        metric: str | Sequence[str] | None,
        mode: str | Sequence[str] | None,
        config: Mapping[str, Any],
        *,
        num_samples: int = 1,
    ) -> bool:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"`num_samples` is {num_samples!r}, but must be an int")
        if num_samples == 0 or num_samples < -1:
            raise ValueError(
                f"`num_samples` is {num_samples}, but must be >= 1, or -1 (no limit)"
            )
        super().set_search_properties(metric, mode, config, num_samples=num_samples)
        self._space = copy.deepcopy(dict(config))
        self._num_samples = num_samples
        self._block_cache = None
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._live:  # asked again (e.g. after a restore): the same config
            return copy.deepcopy(self._live[trial_id])
        if not self._seek():
            return Searcher.FINISHED
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        config = self._next_config()
        self._live[trial_id] = config
        return copy.deepcopy(config)

    def on_trial_complete(
        self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False
    ) -> None:
        self._live.pop(trial_id, None)

    def get_state(self) -> dict[str, Any]:
        return {
            "block": self._block,
            "position": self._position,
            "constants": copy.deepcopy(self._constants),
            "suggested": self._suggested,
            "live": copy.deepcopy(self._live),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        import numpy as np

        self._block = state["block"]
        self._position = state["position"]
        self._constants = copy.deepcopy(state["constants"])
        self._suggested = state["suggested"]
        self._live = copy.deepcopy(state["live"])
        rng_state = state["rng"]
        if rng_state["bit_generator"] != type(self._rng.bit_generator).__name__:
            bit_generator = getattr(np.random, rng_state["bit_generator"])()
            self._rng = np.random.Generator(bit_generator)
        self._rng.bit_generator.state = copy.deepcopy(rng_state)
        self._block_cache = None

    # --- what is left -----------------------------------------------------------------------

    @property
    def total_samples(self) -> int | None:
        """How many configs this searcher makes in all; None for no limit (num_samples=-1)."""
        space = self._require_space()
        random_blocks = self._random_blocks()
        if random_blocks is None:
            return None
        from_points = sum(grid_size(_deep_update(copy.deepcopy(space), p)) for p in self._points)
        return from_points + random_blocks * grid_size(space)

    @property
    def suggested(self) -> int:
        """How many configs this searcher has handed out."""
        return self._suggested

    @property
    def is_finished(self) -> bool:
        """Whether every config has been handed out."""
        return not self._seek()

    # --- the cursor -------------------------------------------------------------------------

    def _require_space(self) -> dict[str, Any]:
        if self._space is None:
            raise RuntimeError(
                "BasicVariantGenerator has no search space yet: the Tuner gives it one with "
                "set_search_properties(metric, mode, param_space, num_samples=...)"
            )
        return self._space

    def _random_blocks(self) -> int | None:
        if self._num_samples == -1:
            return None
        return max(0, self._num_samples - len(self._points))

    def _block_space(self, block: int) -> dict[str, Any]:
        space = self._require_space()
        if block < len(self._points):
            return _deep_update(copy.deepcopy(space), self._points[block])
        return space

    def _block_grid(self, block: int) -> list[dict[str, Any]]:
        """The block's grid points (random blocks share one list)."""
        key = min(block, len(self._points))
        if self._block_cache is None or self._block_cache[0] != key:
            self._block_cache = (key, expand_grid(self._block_space(block)))
        return self._block_cache[1]

    def _seek(self) -> bool:
        """Move the cursor onto the next config to make; False if there is none."""
        random_blocks = self._random_blocks()
        while random_blocks is None or self._block < len(self._points) + random_blocks:
            if self._position < len(self._block_grid(self._block)):
                return True
            self._block += 1
            self._position = 0
            self._constants = None
        return False

    def _next_config(self) -> dict[str, Any]:
        variant = self._block_grid(self._block)[self._position]
        if self._constant_grid_search:
            if self._position == 0 or self._constants is None:
                space = self._block_space(self._block)
                self._constants = [
                    (path, domain.draw(self._rng))
                    for path, domain in flatten_space(space).items()
                    if isinstance(domain, Domain) and not isinstance(domain, Function)
                ]
            variant = copy.deepcopy(variant)
            for path, value in self._constants:
                set_path(variant, path, copy.deepcopy(value))
        config = resolve(variant, self._rng)
        self._position += 1
        self._suggested += 1
        return config
