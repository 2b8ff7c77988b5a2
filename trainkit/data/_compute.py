"""Where a map's function runs: tasks (``TaskPoolStrategy``) or an actor pool
(``ActorPoolStrategy``), and the ``concurrency=`` argument that says the same in fewer words.

``resolve_compute`` turns what the user gave into a task limit or an actor pool's sizes, and
fails at the call, naming the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_count(where: str, name: str, value: Any) -> None:
    if value is not None and not _is_count(value):
        raise ValueError(f"{where}: {name} is {value!r}, but must be an int >= 1")


class ComputeStrategy:
    """Base of the compute strategies."""


class TaskPoolStrategy(ComputeStrategy):
    """Run the function in tasks, at most ``size`` at once (None: as many as fit).

    Example:
        >>> TaskPoolStrategy(size=4).size
        4
    """

    def __init__(self, size: int | None = None) -> None:
        _check_count("TaskPoolStrategy", "size", size)
        self.size = size

    def __repr__(self) -> str:
        return f"TaskPoolStrategy(size={self.size})"


class ActorPoolStrategy(ComputeStrategy):
    """Run the function on a pool of actors: ``size`` of them, or from ``min_size`` up to
    ``max_size`` (grown while every actor is busy).

    Args:
        size: a fixed pool size (not with ``min_size``/``max_size``).
        min_size: the actors started first (default 1).
        max_size: the most actors (default: unbounded, limited by the cluster's resources).
        max_tasks_in_flight_per_actor: blocks queued at one actor (default twice
            ``max_concurrency``), which overlaps the transfer of the next block with work.

    Example:
        >>> ActorPoolStrategy(min_size=1, max_size=4).max_size
        4
    """

    def __init__(self, *, size: int | None = None, min_size: int | None = None,
                 max_size: int | None = None,
                 max_tasks_in_flight_per_actor: int | None = None) -> None:
        where = "ActorPoolStrategy"
        for name, value in (("size", size), ("min_size", min_size), ("max_size", max_size),
                            ("max_tasks_in_flight_per_actor", max_tasks_in_flight_per_actor)):
            _check_count(where, name, value)
        if size is not None and (min_size is not None or max_size is not None):
            raise ValueError(f"{where}: size={size} with min_size={min_size}, "
                             f"max_size={max_size}; give size for a fixed pool, or "
                             "min_size/max_size for an autoscaled one")
        lo = size if size is not None else (min_size or 1)
        hi = size if size is not None else max_size
        if hi is not None and lo > hi:
            raise ValueError(f"{where}: min_size {lo} is more than max_size {hi}; use "
                             f"min_size <= max_size, e.g. min_size={hi}, max_size={lo}")
        self.min_size: int = lo
        self.max_size: int | None = hi
        self.max_tasks_in_flight_per_actor = max_tasks_in_flight_per_actor

    def __repr__(self) -> str:
        return f"ActorPoolStrategy(min_size={self.min_size}, max_size={self.max_size})"


@dataclass(frozen=True, slots=True)
class Compute:
    """What ``resolve_compute`` decided: tasks (with a limit) or an actor pool."""

    actors: bool
    task_limit: int | None = None
    min_size: int = 1
    max_size: int | None = None
    max_concurrency: int = 1
    max_tasks_in_flight: int | None = None


def resolve_compute(where: str, fn: Any, *, concurrency: Any, compute: Any,
                    max_concurrency: Any, is_class: bool) -> Compute:
    """Check ``concurrency=``/``compute=``/``max_concurrency=`` and say how ``fn`` runs."""
    if max_concurrency is not None and not _is_count(max_concurrency):
        raise ValueError(f"{where}: max_concurrency is {max_concurrency!r}, but must be an "
                         "int >= 1 (the calls one actor runs at once)")
    if compute is not None and concurrency is not None:
        raise ValueError(f"{where}: both compute={compute!r} and concurrency={concurrency!r}; "
                         "give one (concurrency is the newer spelling)")
    if compute is not None:
        if isinstance(compute, ActorPoolStrategy):
            return Compute(True, None, compute.min_size, compute.max_size,
                           max_concurrency or 1, compute.max_tasks_in_flight_per_actor)
        if isinstance(compute, TaskPoolStrategy):
            if is_class:
                raise ValueError(f"{where}: a callable class runs on actors, not in "
                                 f"{compute!r}; use compute=ActorPoolStrategy(...) or "
                                 "concurrency=n")
            return Compute(False, compute.size)
        raise TypeError(f"{where}: compute is {compute!r}; use data.ActorPoolStrategy(...), "
                        "data.TaskPoolStrategy(...) or concurrency=")
    if concurrency is None:
        if is_class:
            return Compute(True, None, 1, 1, max_concurrency or 1)
        return Compute(False, None)
    if _is_count(concurrency):
        if is_class:
            return Compute(True, None, concurrency, concurrency, max_concurrency or 1)
        return Compute(False, concurrency)
    if isinstance(concurrency, tuple) and len(concurrency) == 2 and \
            all(_is_count(c) for c in concurrency):
        lo, hi = concurrency
        if lo > hi:
            raise ValueError(f"{where}: concurrency is {concurrency!r}, but min {lo} is more "
                             f"than max {hi}; give (min, max) with min <= max, e.g. "
                             f"({hi}, {lo})")
        if not is_class:
            raise ValueError(f"{where}: concurrency={concurrency!r} (an autoscaled range) is "
                             "for callable classes (actor pools); for a function give an int "
                             "(the most tasks at once)")
        return Compute(True, None, lo, hi, max_concurrency or 1)
    raise ValueError(f"{where}: concurrency is {concurrency!r}, but must be an int >= 1 or a "
                     "(min, max) tuple of them, e.g. concurrency=2 or concurrency=(1, 4)")
