"""Search spaces: sampling domains, grid expansion and resolution, with Ray Tune's semantics.

A search space (a ``param_space``) is a nested dict whose leaves are plain values (copied into
every config), domains (sampled once per config) or ``grid_search`` markers (expanded into one
config per value)::

    {"lr": loguniform(1e-4, 1e-1), "model": {"depth": grid_search([2, 4]), "act": "relu"},
     "wd": sample_from(lambda spec: spec.config.lr / 10)}

``expand_grid`` fixes every grid marker (the cartesian product, in Ray's order), ``resolve``
samples the domains of one grid point; ``sample_from`` functions run last and see the values
already sampled. Nested dicts only: domains inside lists are not searched.

Domains are frozen and cheap to import: numpy is only touched through the ``rng`` (a
``numpy.random.Generator``) that callers pass to ``sample``.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import decimal
import inspect
import itertools
import math
import operator
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import MutableMapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import numpy as np

# Where a value sits in a nested config: ("model", "depth") for config["model"]["depth"].
ConfigPath = tuple[str, ...]

_GRID_KEY = "grid_search"  # Ray's dict form, {"grid_search": [...]}, is accepted too


class Domain(abc.ABC):
    """A set of values and how to sample one; immutable.

    ``sample(config=None, size=1, random_state=None)`` is Ray's: one value, or a list of
    ``size`` values, drawn with ``random_state`` (an int seed, a ``numpy.random.Generator``
    or ``RandomState``; None: fresh entropy). A generator passed first is taken as the
    ``random_state``.
    """

    __slots__ = ()

    @abc.abstractmethod
    def draw(self, rng: np.random.Generator) -> Any:
        """One value, drawn with ``rng`` (a plain Python value, never a numpy scalar)."""

    def sample(self, config: Any = None, size: int = 1, random_state: Any = None) -> Any:
        if _is_rng(config):
            config, random_state = None, config
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`size` is {size!r}, but must be an int >= 1 (the number of "
                             "values to draw)")
        rng = _as_generator(random_state)
        values = [self._draw_with(rng, config) for _ in range(size)]
        return values[0] if size == 1 else values

    def _draw_with(self, rng: np.random.Generator, config: Any) -> Any:
        return self.draw(rng)

    @abc.abstractmethod
    def is_valid(self, value: Any) -> bool:
        """Whether ``value`` could have been sampled from this domain."""


def _is_rng(value: Any) -> bool:
    return type(value).__name__ in ("Generator", "RandomState") and \
        type(value).__module__.startswith("numpy")


def _as_generator(random_state: Any) -> np.random.Generator:
    import numpy as np

    if random_state is None or isinstance(random_state, int):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(int(random_state.randint(0, 2**31 - 1)))
    raise TypeError(f"`random_state` is {random_state!r}, but must be an int seed, a "
                    "numpy.random.Generator or RandomState, or None")


# --- validation helpers ---------------------------------------------------------------------


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` is {value!r}, but must be a number")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` is {value!r}, but must be finite")
    return float(value)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` is {value!r}, but must be an int")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` is {value!r}, but must be an int") from None


def _sequence(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` is {value!r}, but must be a list")
    if not value:
        raise ValueError(f"`{name}` is {value!r}, but must not be empty")
    return tuple(value)


def _check_bounds(lower: float, upper: float, log: bool) -> None:
    if not lower < upper:
        raise ValueError(f"`lower` is {lower!r}, but must be < `upper` ({upper!r}): pass the "
                         "smaller bound first")
    if log and not lower > 0:
        raise ValueError(f"`lower` is {lower!r}, but must be > 0 for a log scale: use a "
                         "positive lower bound, or a uniform scale")


def _check_base(base: float) -> None:
    if not base > 0 or base == 1:
        raise ValueError(f"`base` is {base!r}, but must be > 0 and != 1")


def _check_q(q: float) -> None:
    if not q > 0:
        raise ValueError(f"`q` is {q!r}, but must be > 0 (the step values are rounded to, "
                         "e.g. 0.1 or 2)")


def _is_multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), rel_tol=1e-9, abs_tol=1e-9)


def _round_like(value: float, q: float) -> float:
    """``value`` (a multiple of ``q``) without float noise: 0.30000000000000004 -> 0.3 for q=0.1."""
    exponent = decimal.Decimal(repr(q)).as_tuple().exponent
    if isinstance(exponent, int) and exponent < 0:
        return round(value, -exponent)
    return value


def _fmt(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


# --- domains --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Float(Domain):
    """A float in ``[lower, upper]``, uniform or log-uniform, optionally rounded to a multiple of
    ``q`` (then ``lower`` and ``upper`` must be multiples of ``q``, and both can be drawn).

    ``base`` is accepted for Ray compatibility; a log-uniform distribution is the same in every
    base, so it changes nothing.
    """

    lower: float
    upper: float
    log: bool = False
    q: float | None = None
    base: float = 10.0

    def __post_init__(self) -> None:
        lower, upper = _real("lower", self.lower), _real("upper", self.upper)
        _check_bounds(self.lower, self.upper, self.log)  # the values as given, in messages
        _real("base", self.base)
        _check_base(self.base)
        if self.q is not None:
            _real("q", self.q)
            _check_q(self.q)
            for name, bound in (("lower", self.lower), ("upper", self.upper)):
                if not _is_multiple(bound, self.q):
                    raise ValueError(
                        f"`{name}` is {bound!r}, but must be a multiple of `q` ({self.q!r})"
                    )
            object.__setattr__(self, "q", float(self.q))
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "base", float(self.base))

    def draw(self, rng: np.random.Generator) -> float:
        if self.q is not None and not self.log:  # uniform over the grid of multiples of q
            k = int(rng.integers(round(self.lower / self.q), round(self.upper / self.q) + 1))
            return self.quantize(k * self.q)
        if self.log:
            value = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
        else:
            value = float(rng.uniform(self.lower, self.upper))
        return self.quantize(value)

    def uniform(self) -> Float:
        """The same bounds, drawn uniformly (Ray's builder: ``Float(0, 1).uniform()``)."""
        return dataclasses.replace(self, log=False)

    def loguniform(self, base: float = 10) -> Float:
        """The same bounds, drawn log-uniformly; ``lower`` must be > 0."""
        return dataclasses.replace(self, log=True, base=base)

    def quantized(self, q: float) -> Float:
        """The same distribution, rounded to a multiple of ``q`` (both bounds must be
        multiples of it, and both can then be drawn)."""
        return dataclasses.replace(self, q=q)

    def quantize(self, value: float) -> float:
        """``value`` rounded to the nearest multiple of ``q`` (if any), kept in bounds."""
        if self.q is not None:
            value = _round_like(round(value / self.q) * self.q, self.q)
        return float(min(max(value, self.lower), self.upper))

    def is_valid(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        in_range = self.lower <= value <= self.upper
        return in_range and (self.q is None or _is_multiple(value, self.q))

    def __repr__(self) -> str:
        name = ("q" if self.q is not None else "") + ("loguniform" if self.log else "uniform")
        args = [_fmt(self.lower), _fmt(self.upper)]
        if self.q is not None:
            args.append(_fmt(self.q))
        if self.log and self.base != 10:
            args.append(f"base={_fmt(self.base)}")
        return f"{name}({', '.join(args)})"


@dataclass(frozen=True, slots=True, repr=False)
class Integer(Domain):
    """An int, uniform or log-uniform.

    Without ``q`` (``randint``, ``lograndint``), ``upper`` is exclusive. With ``q``
    (``qrandint``, ``qlograndint``), the values are the multiples of ``q`` in ``[lower, upper]``,
    ``upper`` included, as in Ray. ``low``, ``high`` and ``step`` give the inclusive range.
    """

    lower: int
    upper: int
    log: bool = False
    q: int | None = None
    base: float = 10.0

    def __post_init__(self) -> None:
        lower, upper = _int("lower", self.lower), _int("upper", self.upper)
        _check_bounds(lower, upper, self.log)
        _real("base", self.base)
        _check_base(self.base)
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        if self.q is not None:
            q = _int("q", self.q)
            _check_q(q)
            object.__setattr__(self, "q", q)
            if self.low > self.high:
                raise ValueError(
                    f"`q` is {q}, but no multiple of it lies in [`lower`, `upper`] "
                    f"([{lower}, {upper}])"
                )

    @property
    def low(self) -> int:
        """The smallest value that can be drawn."""
        return self.lower if self.q is None else -(-self.lower // self.q) * self.q

    @property
    def high(self) -> int:
        """The largest value that can be drawn."""
        return self.upper - 1 if self.q is None else (self.upper // self.q) * self.q

    @property
    def step(self) -> int:
        return 1 if self.q is None else self.q

    def draw(self, rng: np.random.Generator) -> int:
        if not self.log:
            k = int(rng.integers(self.low // self.step, self.high // self.step + 1))
            return k * self.step
        if self.q is None:  # floor keeps `upper` exclusive, as Ray's lograndint
            value = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
            return min(max(math.floor(value), self.low), self.high)
        return self.quantize(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def uniform(self) -> Integer:
        """The same range, drawn uniformly (Ray's builder: ``Integer(1, 10).uniform()``)."""
        return dataclasses.replace(self, log=False)

    def loguniform(self, base: float = 10) -> Integer:
        """The same range, drawn log-uniformly; ``lower`` must be > 0."""
        return dataclasses.replace(self, log=True, base=base)

    def quantized(self, q: int) -> Integer:
        """The multiples of ``q`` in the range: ``Integer(1, 10).quantized(2)`` draws from
        2, 4, 6, 8 (``upper`` stays excluded; ``qrandint`` includes it)."""
        if self.q is not None:
            return dataclasses.replace(self, q=q)
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise ValueError(f"`q` is {q!r}, but must be an int > 0 (the step values are "
                             "rounded to, e.g. 2)")
        return dataclasses.replace(self, upper=self.upper - 1, q=q)

    def quantize(self, value: float) -> int:
        """``value`` rounded to the nearest drawable int (a multiple of ``q``, if any)."""
        return min(max(round(value / self.step) * self.step, self.low), self.high)

    def is_valid(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return self.low <= value <= self.high and value % self.step == 0

    def __repr__(self) -> str:
        name = ("q" if self.q is not None else "") + ("lograndint" if self.log else "randint")
        args = [str(self.lower), str(self.upper)]
        if self.q is not None:
            args.append(str(self.q))
        if self.log and self.base != 10:
            args.append(f"base={_fmt(self.base)}")
        return f"{name}({', '.join(args)})"


@dataclass(frozen=True, slots=True, repr=False)
class Normal(Domain):
    """A float from a normal distribution, optionally rounded to a multiple of ``q``."""

    mean: float = 0.0
    sd: float = 1.0
    q: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _real("mean", self.mean))
        sd = _real("sd", self.sd)
        if not sd > 0:
            raise ValueError(f"`sd` is {self.sd!r}, but must be > 0")
        object.__setattr__(self, "sd", sd)
        if self.q is not None:
            q = _real("q", self.q)
            _check_q(self.q)
            object.__setattr__(self, "q", q)

    def draw(self, rng: np.random.Generator) -> float:
        value = float(rng.normal(self.mean, self.sd))
        if self.q is not None:
            value = float(_round_like(round(value / self.q) * self.q, self.q))
        return value

    def is_valid(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return math.isfinite(value) and (self.q is None or _is_multiple(value, self.q))

    def __repr__(self) -> str:
        if self.q is None:
            return f"randn({_fmt(self.mean)}, {_fmt(self.sd)})"
        return f"qrandn({_fmt(self.mean)}, {_fmt(self.sd)}, {_fmt(self.q)})"


@dataclass(frozen=True, slots=True, repr=False)
class Categorical(Domain):
    """One of ``categories``, each equally likely."""

    categories: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", _sequence("categories", self.categories))

    def draw(self, rng: np.random.Generator) -> Any:
        return copy.deepcopy(self.categories[int(rng.integers(len(self.categories)))])

    def uniform(self) -> Categorical:
        """Each category equally likely (the only distribution; Ray's builder name)."""
        return self

    def is_valid(self, value: Any) -> bool:
        return value in self.categories

    def __len__(self) -> int:
        return len(self.categories)

    def __repr__(self) -> str:
        return f"choice({list(self.categories)!r})"


@dataclass(frozen=True, slots=True, repr=False)
class Function(Domain):
    """A value computed by ``func``, after every other value of the config is sampled.

    ``func`` takes no argument, or one ``spec`` whose ``spec.config`` is the config sampled so
    far (read ``spec.config.lr`` or ``spec.config["lr"]``), as in Ray.
    """

    func: Callable[..., Any]
    passes_spec: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise TypeError(f"`func` is {self.func!r}, but must be callable")
        try:
            signature = inspect.signature(self.func)
        except (TypeError, ValueError):  # some builtins have none: assume they take the spec
            return
        for args in (("spec",), ()):
            try:
                signature.bind(*args)
            except TypeError:
                continue
            object.__setattr__(self, "passes_spec", bool(args))
            return
        raise TypeError(
            f"`func` is {self.func!r}, but must take no argument or one (the spec: "
            f"`lambda spec: spec.config.a * 2`)"
        )

    def draw(self, rng: np.random.Generator) -> Any:
        return self.call(None)

    def _draw_with(self, rng: np.random.Generator, config: Any) -> Any:
        return self.call(config)

    def call(self, config: Mapping[str, Any] | None) -> Any:
        """Call ``func``; ``config`` is what ``spec.config`` shows it (the function draws
        with its own generator, as in Ray)."""
        if not self.passes_spec:
            return self.func()
        if isinstance(config, Mapping) and not isinstance(config, _ConfigView) and \
                len(config) == 1 and isinstance(config.get("config"), Mapping):
            config = config["config"]  # Ray's spec form: {"config": {...}}
        return self.func(_ConfigView({"config": config if config is not None else {}}))

    def is_valid(self, value: Any) -> bool:
        return True

    def __repr__(self) -> str:
        return f"sample_from({getattr(self.func, '__qualname__', self.func)!s})"


@dataclass(frozen=True, slots=True, repr=False)
class GridSearch:
    """A grid-search marker: one config per value (not a domain: nothing is sampled)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _sequence("values", self.values))

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"grid_search({list(self.values)!r})"


class _UnresolvedReferenceError(Exception):
    """A ``sample_from`` function read a value that is itself a ``sample_from`` not yet run."""


class _ConfigView(dict[str, Any]):
    """The config as a ``sample_from`` function sees it: attribute access (``spec.config.lr``),
    nested dicts viewed alike, and unresolved ``sample_from`` values guarded."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, Domain):
            raise _UnresolvedReferenceError(key)
        if isinstance(value, Mapping) and not isinstance(value, _ConfigView):
            return _ConfigView(value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# --- the public constructors ----------------------------------------------------------------


def uniform(lower: float, upper: float) -> Float:
    """A float drawn uniformly from ``[lower, upper)``."""
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    """A float from ``[lower, upper]`` (both included), rounded to a multiple of ``q``."""
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float, base: float = 10) -> Float:
    """A float drawn log-uniformly from ``[lower, upper)``; ``lower`` must be > 0."""
    return Float(lower, upper, log=True, base=base)


def qloguniform(lower: float, upper: float, q: float, base: float = 10) -> Float:
    """A log-uniform float from ``[lower, upper]`` (both included), rounded to a multiple of
    ``q``."""
    return Float(lower, upper, log=True, q=q, base=base)


def randn(mean: float = 0.0, sd: float = 1.0) -> Normal:
    """A float drawn from a normal distribution."""
    return Normal(mean, sd)


def qrandn(mean: float, sd: float, q: float) -> Normal:
    """A normally distributed float, rounded to a multiple of ``q``."""
    return Normal(mean, sd, q)


def randint(lower: int, upper: int) -> Integer:
    """An int drawn uniformly from ``[lower, upper)`` (``upper`` excluded, as ``range``)."""
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    """A multiple of ``q`` drawn uniformly from ``[lower, upper]`` (``upper`` included)."""
    return Integer(lower, upper, q=q)


def lograndint(lower: int, upper: int, base: float = 10) -> Integer:
    """An int drawn log-uniformly from ``[lower, upper)`` (``upper`` excluded)."""
    return Integer(lower, upper, log=True, base=base)


def qlograndint(lower: int, upper: int, q: int, base: float = 10) -> Integer:
    """A multiple of ``q`` drawn log-uniformly from ``[lower, upper]`` (``upper`` included)."""
    return Integer(lower, upper, log=True, q=q, base=base)


def choice(categories: Sequence[Any]) -> Categorical:
    """One of ``categories``, each equally likely."""
    return Categorical(_sequence("categories", categories))


def grid_search(values: Sequence[Any]) -> GridSearch:
    """Every one of ``values``: one config each (times ``num_samples``)."""
    return GridSearch(_sequence("values", values))


def sample_from(func: Callable[..., Any]) -> Function:
    """A value computed by ``func(spec)`` from the other sampled values (``spec.config``)."""
    return Function(func)


# --- spaces ---------------------------------------------------------------------------------


def _as_grid(value: Any) -> GridSearch | None:
    if isinstance(value, GridSearch):
        return value
    if isinstance(value, Mapping) and len(value) == 1 and _GRID_KEY in value:
        return GridSearch(value[_GRID_KEY])
    return None


def _is_branch(value: Any) -> bool:
    return isinstance(value, Mapping) and _as_grid(value) is None


def _leaves(tree: Mapping[str, Any], prefix: ConfigPath = ()) -> Iterator[tuple[ConfigPath, Any]]:
    for key, value in tree.items():
        if _is_branch(value):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """New dicts all the way down; domains and grid markers shared, other leaves deep-copied."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if _is_branch(value):
            out[key] = _copy_tree(value)
        elif isinstance(value, (Domain, GridSearch)) or _as_grid(value) is not None:
            out[key] = value
        else:
            out[key] = copy.deepcopy(value)
    return out


def iter_leaves(space: Mapping[str, Any]) -> Iterator[tuple[ConfigPath, Any]]:
    """Every leaf of ``space`` with its path, plain values included; Ray's
    ``{"grid_search": [...]}`` dicts come back as ``GridSearch``."""
    for path, value in _leaves(space):
        grid = _as_grid(value)
        yield path, (grid if grid is not None else value)


def flatten_space(space: Mapping[str, Any]) -> dict[ConfigPath, Domain | GridSearch]:
    """Every domain and grid marker of ``space`` by path (plain values left out); Ray's
    ``{"grid_search": [...]}`` dicts come back as ``GridSearch``."""
    return {
        path: value
        for path, value in iter_leaves(space)
        if isinstance(value, (Domain, GridSearch))
    }


def set_path(config: MutableMapping[str, Any], path: ConfigPath, value: Any) -> None:
    """``config[path[0]]...[path[-1]] = value``, creating the dicts on the way."""
    if not path:
        raise ValueError("`path` is (), but must name at least one key")
    node = config
    for key in path[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, MutableMapping):
            raise TypeError(
                f"cannot set `{'/'.join(map(str, path))}`: `{key}` holds {child!r}, not a dict"
            )
        node = child
    node[path[-1]] = value


def _grids(space: Mapping[str, Any]) -> list[tuple[ConfigPath, GridSearch]]:
    """The grid markers, in Ray's order: sorted by path; the first one varies fastest."""
    grids = [(p, g) for p, g in flatten_space(space).items() if isinstance(g, GridSearch)]
    return sorted(grids, key=lambda item: tuple(map(str, item[0])))


def _contains_grid(value: Any) -> bool:
    if _as_grid(value) is not None:
        return True
    return isinstance(value, Mapping) and any(_contains_grid(v) for v in value.values())


def expand_grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One copy of ``space`` per grid point (the cartesian product of every ``grid_search``),
    domains left in place. Ray's order: by path, the first grid varying fastest; a grid value
    that holds a grid itself is expanded in turn."""
    grids = _grids(space)
    if not grids:
        return [_copy_tree(space)]
    variants: list[dict[str, Any]] = []
    # product() varies its last argument fastest, and the first grid must vary fastest.
    for combo in itertools.product(*(grid.values for _, grid in reversed(grids))):
        variant = _copy_tree(space)
        for (path, _), value in zip(reversed(grids), combo, strict=True):
            set_path(variant, path, copy.deepcopy(value))
        if any(_contains_grid(value) for value in combo):
            variants.extend(expand_grid(variant))
        else:
            variants.append(variant)
    return variants


def grid_size(space: Mapping[str, Any]) -> int:
    """How many configs ``expand_grid(space)`` makes (1 without any ``grid_search``)."""
    grids = _grids(space)
    if any(_contains_grid(v) for _, grid in grids for v in grid.values):
        return len(expand_grid(space))
    return math.prod(len(grid) for _, grid in grids)


def resolve(space: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A config: ``space`` (its grids already fixed by ``expand_grid``) with every domain
    sampled and plain values copied; ``sample_from`` functions run last, so they can read the
    other values (and each other's, if that does not go round in a circle)."""
    config = _copy_tree(space)
    functions: list[tuple[ConfigPath, Function]] = []
    for path, value in list(_leaves(config)):
        if _as_grid(value) is not None:
            raise ValueError(
                f"`{'/'.join(map(str, path))}` is {value!r}: expand the grid with "
                f"expand_grid(space) before resolving a config"
            )
        if isinstance(value, Function):
            functions.append((path, value))
        elif isinstance(value, Domain):
            set_path(config, path, value.draw(rng))
    while functions:
        waiting: list[tuple[ConfigPath, Function]] = []
        for path, function in functions:
            try:
                set_path(config, path, function.call(_ConfigView(config)))
            except _UnresolvedReferenceError:
                waiting.append((path, function))
        if len(waiting) == len(functions):
            names = ", ".join(f"`{'/'.join(map(str, p))}`" for p, _ in waiting)
            raise ValueError(
                f"the sample_from values {names} read each other in a circle: compute at least "
                f"one of them from values that are not sample_from"
            )
        functions = waiting
    return config


def generate_variants(
    space: Mapping[str, Any], rng: np.random.Generator, num_samples: int = 1
) -> Iterator[dict[str, Any]]:
    """``num_samples`` times over the grid: each grid point resolved with fresh samples."""
    grid = expand_grid(space)
    for _ in range(num_samples):
        for variant in grid:
            yield resolve(variant, rng)
