"""What a backend needs to know of a remote function or an actor class: its definition.

``@remote`` makes a ``RemoteFunction`` or ``ActorClass`` (``_api``); each holds one of these,
checked and computed once, and ``.options()`` makes a new one that shares the caches
(``shared``) so a function is pickled, or registered with Ray, only once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainkit.runtime._arity import Arity


@dataclass(slots=True)
class TaskDef:
    fn: Callable[..., Any]
    name: str
    options: dict[str, Any]
    resources: dict[str, float]
    placement: tuple[Any, ...] | None
    key: tuple[Any, ...]  # the shape of its leases: resources and placement
    retries: int
    retry_exceptions: bool | tuple[type[BaseException], ...]
    num_returns: int
    arity: Arity | None
    # [fn_id, pickled function or None, [Ray's remote function or None]]
    shared: list[Any]

    @property
    def arg_what(self) -> str:
        return f"an argument of {self.name}"  # for serialization errors


@dataclass(slots=True)
class ActorDef:
    cls: type
    options: dict[str, Any]
    resources: dict[str, float]
    methods: tuple[str, ...]
    is_async: bool
    init_arity: Arity | None
    method_info: dict[str, Any]  # method -> (num_returns, Arity or None)
    # [pickled class or None, [Ray's actor class or None], (init arity, method info)]
    shared: list[Any]

    @property
    def label(self) -> str:
        name: str | None = self.options.get("name")
        return name or self.cls.__name__
