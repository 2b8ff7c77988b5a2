"""``DataContext``: the process's settings for executing datasets, as Ray spells them.

``DataContext.get_current()`` is one object per process; change its fields before a dataset
runs. A run takes a copy when it starts (a streaming split ships the driver's copy to its
coordinator), so a change affects the executions started after it.

Unlike trainkit's frozen configs these objects are mutable, because Ray users write
``ctx.execution_options.preserve_order = True``.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from dataclasses import field
from typing import ClassVar


@dataclass(kw_only=True)
class ExecutionResources:
    """Limits for one execution; ``None`` means no limit beyond the cluster's.

    Args:
        cpu: CPUs the execution's tasks may hold at once.
        gpu: GPUs (accepted for Ray compatibility; actor pools ask for theirs).
        object_store_memory: bytes of blocks in flight, shared by every stage (default: a
            quarter of the object store).

    Example:
        >>> ExecutionResources(object_store_memory=2**30).object_store_memory
        1073741824
    """

    cpu: float | None = None
    gpu: float | None = None
    object_store_memory: float | None = None

    def __post_init__(self) -> None:
        for name in ("cpu", "gpu", "object_store_memory"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"ExecutionResources: {name} is {value!r}, but must be a "
                                 "number >= 0 or None (no limit)")


@dataclass(kw_only=True)
class ExecutionOptions:
    """How an execution runs.

    Args:
        resource_limits: what it may use (see :class:`ExecutionResources`).
        preserve_order: blocks come out in the order of the input. Ray's default is False;
            trainkit's is True, so that a pass over a dataset is deterministic (a Trainer's
            resumable shard positions rely on it). False lets a fast block pass a slow one.
        stall_timeout_s: seconds without any task of the execution finishing before a
            warning names the stuck operator; after twice as long the execution fails
            (``GetTimeoutError``). None: wait forever. (Not in Ray, whose stalls are silent.)
    """

    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)
    preserve_order: bool = True
    stall_timeout_s: float | None = 300.0

    def __post_init__(self) -> None:
        value = self.stall_timeout_s
        if value is not None and (isinstance(value, bool) or
                                  not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"ExecutionOptions: stall_timeout_s is {value!r}, but must be a "
                             "number of seconds > 0, or None (never time out)")


@dataclass(kw_only=True)
class DataContext:
    """The settings datasets of this process run with.

    Example:
        >>> ctx = DataContext.get_current()
        >>> ctx.execution_options.preserve_order
        True
    """

    execution_options: ExecutionOptions = field(default_factory=ExecutionOptions)

    _current: ClassVar[DataContext | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @staticmethod
    def get_current() -> DataContext:
        """This process's context (made with the defaults on first use)."""
        with DataContext._lock:
            if DataContext._current is None:
                DataContext._current = DataContext()
            return DataContext._current

    @staticmethod
    def _set_current(context: DataContext | None) -> None:
        """Replace this process's context (None: back to the defaults on next use)."""
        with DataContext._lock:
            DataContext._current = context

    def copy(self) -> DataContext:
        """A deep copy: what an execution runs with, unaffected by later changes."""
        return copy.deepcopy(self)
