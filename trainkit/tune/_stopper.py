"""Stop conditions of a sweep: ``RunConfig(stop=...)`` as a dict, a function or a ``Stopper``."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any


class Stopper:
    """Base class: ``__call__`` says whether one trial stops; ``stop_all`` whether the sweep
    does. Called in the driver after every result."""

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


class _DictStopper(Stopper):
    def __init__(self, criteria: Mapping[str, Any]) -> None:
        for key, value in criteria.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"stop={{{key!r}: {value!r}}}: each value must be a number; a "
                                 "trial stops once its reported metric reaches it")
        self.criteria = dict(criteria)

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        for key, limit in self.criteria.items():
            if key not in result:
                raise ValueError(f"stop criterion {key!r} is not in the reported result; the "
                                 f"trial reported {sorted(result)}")
            if result[key] >= limit:
                return True
        return False


class _FunctionStopper(Stopper):
    def __init__(self, fn: Callable[[str, Mapping[str, Any]], bool]) -> None:
        self.fn = fn

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        return bool(self.fn(trial_id, result))


def make_stopper(stop: Any) -> Stopper:
    if stop is None:
        return Stopper()
    if isinstance(stop, Stopper):
        return stop
    if isinstance(stop, Mapping):
        return _DictStopper(stop)
    if callable(stop):
        return _FunctionStopper(stop)
    raise TypeError(f"RunConfig(stop={stop!r}): pass a dict, a function (trial_id, result) -> "
                    "bool, or a tune.Stopper")
