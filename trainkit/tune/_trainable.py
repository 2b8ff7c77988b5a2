"""What a trial runs: a function of ``config``, a ``Trainable`` class, or a ``Trainer``;
and the wrappers ``with_resources`` and ``with_parameters``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import final

import trainkit.runtime as rt
from trainkit.train import Trainer

_RESOURCES_ATTR = "_tune_resources"
_RESERVED_ATTR = "_tune_reserved"


@final
class PlacementGroupFactory:
    """What one trial reserves, as bundles (Ray's ``tune.PlacementGroupFactory``).

    The first bundle is what the trial's own process holds; the others are kept free for
    what the trial starts, typically a ``Trainer``'s workers (one bundle per worker, as its
    ``ScalingConfig`` asks: ``num_workers`` bundles of ``resources_per_worker``, 1 CPU by
    default). Tune runs no more trials at once than the cluster holds whole reservations
    of, so the Trainer inside each trial always finds its workers' resources::

        tune.with_resources(train_fn, tune.PlacementGroupFactory(
            [{"CPU": 1}] + [{"CPU": 1}] * num_workers))

    Args:
        bundles: a non-empty list of resource dicts (``"cpu"``/``"gpu"`` or ``"CPU"``/...).
        strategy: kept for Ray's signature ("PACK", "SPREAD", ...); the bundles after the
            first are reserved as a count, not placed.
    """

    def __init__(self, bundles: Sequence[Mapping[str, float]], strategy: str = "PACK") -> None:
        if not isinstance(bundles, (list, tuple)) or not bundles or \
                not all(isinstance(b, Mapping) for b in bundles):
            raise ValueError(f"PlacementGroupFactory: `bundles` is {bundles!r}, but must be a "
                             "non-empty list of dicts, e.g. [{'CPU': 1}, {'CPU': 1}]")
        self.bundles = [normalize_resources(b) for b in bundles]
        self.strategy = strategy

    @property
    def head_bundle(self) -> dict[str, float]:
        """What the trial's own process holds."""
        return dict(self.bundles[0])

    @property
    def required_resources(self) -> dict[str, float]:
        """All the bundles together: what one trial takes of the cluster."""
        total: dict[str, float] = {}
        for bundle in self.bundles:
            for key, amount in bundle.items():
                total[key] = total.get(key, 0.0) + amount
        return total

    def __repr__(self) -> str:
        return f"PlacementGroupFactory({self.bundles!r}, strategy={self.strategy!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupFactory) and \
            (self.bundles, self.strategy) == (other.bundles, other.strategy)

    def __hash__(self) -> int:
        return hash(repr(self))


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


def with_resources(trainable: Any,
                   resources: Mapping[str, float] | PlacementGroupFactory) -> Any:
    """The trainable, run with ``resources`` per trial (e.g. ``{"cpu": 2, "gpu": 1}``), or
    with a ``PlacementGroupFactory``: its first bundle for the trial, the others reserved
    for what the trial starts (a Trainer's workers)."""
    if isinstance(resources, PlacementGroupFactory):
        res, reserved = resources.head_bundle, resources.required_resources
    elif isinstance(resources, Mapping):
        res = normalize_resources(resources)
        reserved = dict(res)
    else:
        raise TypeError(f"with_resources: `resources` is {resources!r}; pass a dict like "
                        "{'cpu': 2, 'gpu': 1} or a tune.PlacementGroupFactory")
    if trainable_kind(trainable) == "class":
        return type(trainable.__name__, (trainable,), {
            _RESOURCES_ATTR: res, _RESERVED_ATTR: reserved, "__module__": trainable.__module__})

    @functools.wraps(trainable)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return trainable(*args, **kwargs)

    setattr(wrapped, _RESOURCES_ATTR, res)
    setattr(wrapped, _RESERVED_ATTR, reserved)
    return wrapped


def resources_of(trainable: Any) -> dict[str, float] | None:
    """What the trial's own process holds (None: the default, 1 CPU)."""
    res: dict[str, float] | None = getattr(trainable, _RESOURCES_ATTR, None)
    return res


def reserved_of(trainable: Any) -> dict[str, float] | None:
    """What one trial takes of the cluster: its own resources plus the bundles reserved for
    what it starts (None: the same as ``resources_of``)."""
    res: dict[str, float] | None = getattr(trainable, _RESERVED_ATTR, None)
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
        setattr(wrapped, _RESERVED_ATTR, reserved_of(trainable) or res)
    return wrapped
