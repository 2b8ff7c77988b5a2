"""PBT's explore step: a perturbed copy of a config, as Ray Tune's ``_explore``.

For each key of ``hyperparam_mutations`` (nested dicts recurse): a list or tuple resamples
from itself with ``resample_probability`` (or when the value is not in it), else moves to a
neighbouring element (clamped at the ends); a search-space domain (anything with
``.draw(rng)``) or a callable resamples with ``resample_probability``, else multiplies the
value by one of ``perturbation_factors`` (a value that is not a number, or is missing, is
resampled). Values that were ints stay ints.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

_MISSING = object()

ExploreFn = Callable[[dict[str, Any]], Mapping[str, Any]]


def check_mutations(mutations: Mapping[str, Any], path: str = "") -> None:
    """Raise TypeError or ValueError, naming the key, for a mutation PBT cannot apply."""
    for key, spec in mutations.items():
        where = f"hyperparam_mutations[{path}{key!r}]"
        if isinstance(spec, Mapping):
            check_mutations(spec, f"{path}{key!r}][")
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"PopulationBasedTraining: {where} is an empty {type(spec)}, "
                                 "but a list of values must have at least one")
        elif not (hasattr(spec, "sample") or callable(spec)):
            raise TypeError(f"PopulationBasedTraining: {where} is {spec!r}, but must be a "
                            "list, a tuple, a dict, a search-space domain (tune.uniform(...)) "
                            "or a callable")


def _resample(spec: Any, rng: random.Random) -> Any:
    if hasattr(spec, "sample"):  # a search-space Domain: it draws with a numpy Generator
        generator = np.random.default_rng(rng.getrandbits(64))
        return spec.draw(generator) if hasattr(spec, "draw") else spec.sample(generator)
    return spec()


def _explore_level(config: Mapping[str, Any], mutations: Mapping[str, Any],
                   rng: random.Random, resample_probability: float,
                   perturbation_factors: Sequence[float]) -> dict[str, Any]:
    new = copy.deepcopy(dict(config))
    for key, spec in mutations.items():
        old = config.get(key, _MISSING)
        if isinstance(spec, Mapping):
            sub = old if isinstance(old, Mapping) else {}
            new[key] = _explore_level(sub, spec, rng, resample_probability,
                                      perturbation_factors)
        elif isinstance(spec, (list, tuple)):
            values = list(spec)
            if rng.random() < resample_probability or old not in values:
                new[key] = copy.deepcopy(rng.choice(values))
            else:
                i = values.index(old)
                j = min(max(i + rng.choice((-1, 1)), 0), len(values) - 1)
                new[key] = copy.deepcopy(values[j])
        else:
            numeric = isinstance(old, Real) and not isinstance(old, bool)
            if rng.random() < resample_probability or not numeric:
                value = _resample(spec, rng)
            else:
                value = old * rng.choice(perturbation_factors)
            if isinstance(old, int) and not isinstance(old, bool):
                value = int(value)
            new[key] = value
    return new


def explore(config: Mapping[str, Any], mutations: Mapping[str, Any], rng: random.Random,
            resample_probability: float, perturbation_factors: Sequence[float],
            custom_explore_fn: ExploreFn | None = None) -> dict[str, Any]:
    """A new config: ``config`` with every mutated key perturbed or resampled.

    Args:
        config: the donor's config (not modified).
        mutations: PBT's ``hyperparam_mutations``.
        rng: the only source of randomness (besides user callables).
        resample_probability: the chance of resampling instead of perturbing.
        perturbation_factors: what a number may be multiplied by.
        custom_explore_fn: applied last to the new config; must return a mapping.

    Raises:
        TypeError: ``custom_explore_fn`` returned something other than a mapping.

    Example:
        >>> explore({"lr": 0.1, "bs": 32}, {"bs": [16, 32, 64]}, random.Random(0), 0.0, (2.0,))
        {'lr': 0.1, 'bs': 64}
    """
    new = _explore_level(config, mutations, rng, resample_probability, perturbation_factors)
    if custom_explore_fn is not None:
        out = custom_explore_fn(new)
        if not isinstance(out, Mapping):
            raise TypeError(f"PopulationBasedTraining: custom_explore_fn returned {out!r}, but "
                            "must return the new config (a dict)")
        new = dict(out)
    return new
