"""What a trial runs: a function of ``config``, a ``Trainable`` class, or a ``Trainer``;
and the wrappers ``with_resources`` and ``with_parameters``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import trainkit.runtime as rt
from trainkit.train import Trainer

_RESOURCES_ATTR = "_tune_resources"


class Trainable:
    """A trial as a class: ``setup(config)`` once, then ``step()`` per iteration (returns the
    metrics dict; add ``"done": True`` to finish, ``"should_checkpoint": True`` to save).
    ``save_checkpoint(dir)`` writes the state into ``dir``; ``load_checkpoint(dir)`` reads
    it back. ``reset_config(new_config)`` returns True if the object can take a new config in
    place (then it is reused for another trial, without a new ``setup``)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.setup(self.config)

    def setup(self, config: dict[str, Any]) -> None:
        pass

    def step(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__}.step() must return a metrics dict")

    def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any] | None:
        return None

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        pass

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        return False

    def cleanup(self) -> None:
        pass


def trainable_kind(trainable: Any) -> str:
    """"function", "class" or "trainer"; a TypeError for anything else."""
    if isinstance(trainable, Trainer):
        return "trainer"
    if inspect.isclass(trainable) and issubclass(trainable, Trainable):
        return "class"
    if callable(trainable) and not inspect.isclass(trainable):
        return "function"
    raise TypeError(f"the trainable is {trainable!r}; pass a function of config, a "
                    "tune.Trainable subclass, or a train.Trainer")


def normalize_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """``{"cpu": 2, "gpu": 1, "custom": 1}`` -> ``{"CPU": 2.0, "GPU": 1.0, "custom": 1.0}``."""
    out: dict[str, float] = {}
    for key, value in resources.items():
        name = {"cpu": "CPU", "gpu": "GPU"}.get(key, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"with_resources: {key!r} is {value!r}, but must be a number >= 0")
        out[name] = float(value)
    return out


def with_resources(trainable: Any, resources: Mapping[str, float]) -> Any:
    """The trainable, run with ``resources`` per trial (e.g. ``{"cpu": 2, "gpu": 1}``)."""
    res = normalize_resources(resources)
    if trainable_kind(trainable) == "class":
        return type(trainable.__name__, (trainable,), {_RESOURCES_ATTR: res,
                                                       "__module__": trainable.__module__})

    @functools.wraps(trainable)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return trainable(*args, **kwargs)

    setattr(wrapped, _RESOURCES_ATTR, res)
    return wrapped


def resources_of(trainable: Any) -> dict[str, float] | None:
    res: dict[str, float] | None = getattr(trainable, _RESOURCES_ATTR, None)
    return res


def with_parameters(trainable: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """The trainable, called as ``trainable(config, **kwargs)``; each value is stored once in
    the object store (not pickled into every trial), and read back zero-copy in the trial."""
    if not kwargs:
        raise TypeError("with_parameters() needs keyword arguments: with_parameters(fn, data=x)")
    if not rt.is_initialized():
        rt.init()
    refs = {k: rt.put(v) for k, v in kwargs.items()}
    res = resources_of(trainable)

    @functools.wraps(trainable)
    def wrapped(config: dict[str, Any]) -> Any:
        return trainable(config, **{k: rt.get(r) for k, r in refs.items()})

    if res is not None:
        setattr(wrapped, _RESOURCES_ATTR, res)
    return wrapped
