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
    """Ray's dict form: a trial stops once a reported metric reaches its value (``>=``); a
    boolean value stops it once the metric is true (``{"done": True}``). ``done`` counts as
    reported (False) by every result, as in Ray."""

    def __init__(self, criteria: Mapping[str, Any]) -> None:
        for key, value in criteria.items():
            if not isinstance(key, str):
                raise TypeError(f"stop={{{key!r}: {value!r}}}: each key must be the name of a "
                                "reported metric (a str)")
            if not isinstance(value, (bool, int, float)):
                raise ValueError(f"stop={{{key!r}: {value!r}}}: each value must be a number "
                                 "(a trial stops once its reported metric reaches it) or True/"
                                 f"False, e.g. stop={{{key!r}: True}}")
        self.criteria = dict(criteria)

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        for key, limit in self.criteria.items():
            if key not in result:
                if key == "done":
                    continue
                raise ValueError(f"stop criterion {key!r} is not in the reported result; the "
                                 f"trial reported {sorted(result)}")
            value = result[key]
            if isinstance(limit, bool):
                value = bool(value)
            if value >= limit:
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
