"""The one list of workloads: each is declared once, next to its code, with ``@workload``.

    @workload("actor_latency", about="sync actor call round trip (median, p99); async calls/s")
    def wl_actor_latency(args, line): ...

A workload function gets the parsed command line (``args.backend``, ``args.deadline``,
``args.t_start``) and the result line (a dict) to fill in; bench/workloads.py runs it under the
watchdog and prints the line. Declaration order is the order of ``WORKLOADS`` and of a
compare.py run, so ``wl/__init__.py`` imports the layer modules in that order (LAYERS).

Only the stdlib here: compare.py reads the registry without importing a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# watchdog deadline (s) of a workload that declares none; compare.py allows each run its
# deadline plus 35 s
DEADLINE_DEFAULT = 85.0


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable
    about: str
    deadline_s: float | None  # None: DEADLINE_DEFAULT
    on_ray: bool  # runs on trainkit-ray (trainkit's layers with init(backend="ray"))
    listed: bool  # False: an internal entry point (a child process of another workload)

    @property
    def source(self) -> str:
        """Where it is declared, relative to bench/: "wl/runtime.py"."""
        return self.run.__module__.replace(".", "/") + ".py"


_REGISTRY: dict[str, Workload] = {}


def workload(name, *, about="", deadline_s=None, on_ray=True, listed=True):
    """Register the decorated function as workload ``name`` (see the module docstring)."""

    def register(fn):
        if name in _REGISTRY:
            raise ValueError(
                f"workload {name!r} is declared twice: in {_REGISTRY[name].run.__module__} "
                f"and in {fn.__module__}"
            )
        _REGISTRY[name] = Workload(name, fn, about, deadline_s, on_ray, listed)
        return fn

    return register


def get(name) -> Workload:
    return _REGISTRY[name]


def all_workloads() -> tuple[Workload, ...]:
    """Every registered workload, the internal entry points included, in declaration order."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The workloads a user can name (WORKLOADS), in declaration order."""
    return tuple(w.name for w in _REGISTRY.values() if w.listed)


def deadlines() -> dict[str, float]:
    """{name: deadline in s} of the workloads that declare one (DEADLINES)."""
    return {w.name: w.deadline_s for w in _REGISTRY.values() if w.deadline_s is not None}


def on_ray_names() -> tuple[str, ...]:
    """The workloads that run on trainkit-ray (TK_ON_RAY_WORKLOADS)."""
    return tuple(w.name for w in _REGISTRY.values() if w.listed and w.on_ray)
