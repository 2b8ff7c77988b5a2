"""``Searcher``: suggests configurations and learns from their results.

Searchers run in the driver, in one thread. ``suggest`` returns a config (a dict, the search
space's values resolved), ``None`` when it has nothing right now (e.g. waiting for results),
or ``Searcher.FINISHED`` when it will never suggest again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import ClassVar


class Searcher:
    FINISHED: ClassVar[str] = "FINISHED"

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        self.metric = metric
        self.mode = mode

    def set_search_properties(self, metric: str | Sequence[str] | None,
                              mode: str | Sequence[str] | None,
                              config: Mapping[str, Any], *, num_samples: int = 1) -> bool:
        """Called once by the Tuner with TuneConfig's metric/mode, the param_space and
        num_samples (-1: no limit). Returns False if the searcher was already given a space of
        its own. Raises ValueError, naming the key, for a space it cannot handle. Searchers
        other than the BasicVariantGenerator may ignore num_samples: the runner stops asking
        after that many trials. ``metric`` and ``mode`` are lists for a multi-objective
        TuneConfig; the base class keeps single ones only (its own, if it has them)."""
        if isinstance(metric, str) and not self.metric:
            self.metric = metric
        if isinstance(mode, str) and not self.mode:
            self.mode = mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        raise NotImplementedError

    def on_trial_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """An intermediate result of a trial this searcher suggested."""

    def on_trial_complete(self, trial_id: str, result: Mapping[str, Any] | None = None,
                          error: bool = False) -> None:
        """The trial ended: ``result`` is its last result (None if it never reported)."""

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue after a restore (must pickle)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``get_state()``'s value."""

    def save(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Write ``get_state()`` to the file ``checkpoint_path`` (atomically), as Ray's
        ``Searcher.save``; ``restore`` reads it back into a searcher built the same way."""
        import cloudpickle  # type: ignore[import-untyped]

        from trainkit._atomic import write_atomic

        path = os.fspath(checkpoint_path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{type(self).__name__}.save({path!r}): that is a folder; "
                                    "pass a file path, e.g. os.path.join(folder, "
                                    "'searcher.pkl')")
        write_atomic(path, cloudpickle.dumps({"searcher": type(self).__name__,
                                              "state": self.get_state()}))

    def restore(self, checkpoint_path: str | os.PathLike[str]) -> None:
        """Continue from what ``save(checkpoint_path)`` wrote."""
        import cloudpickle

        path = os.fspath(checkpoint_path)
        with open(path, "rb") as f:
            saved = cloudpickle.load(f)
        if not isinstance(saved, dict) or saved.get("searcher") != type(self).__name__:
            what = saved.get("searcher") if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"{path} holds the state of {what!r}, not of a "
                             f"{type(self).__name__}: restore it into the searcher that "
                             "saved it")
        self.set_state(saved["state"])
