"""Checking a call's arguments against a function's signature at ``.remote()``.

A wrong number of arguments must fail in the caller, naming the function, not later in a
worker as a TaskError. ``inspect.Signature.bind`` costs ~8 us per call (5 % of an actor
round trip), so a signature is reduced once to an :class:`Arity` whose check is a few
comparisons in the common case (positional arguments only); ``bind`` runs only to word the
error. An ``Arity`` is a small picklable value: actor handles carry one per method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["Arity", "arity_of"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Arity:
    """What a callable accepts: counts and names, enough to reject a call cheaply."""

    __slots__ = ("fast", "max_pos", "min_pos", "names", "required_kw", "signature",
                 "var_kw")

    def __init__(self, signature: inspect.Signature) -> None:
        params = list(signature.parameters.values())
        positional = [p for p in params if p.kind in _POSITIONAL]
        self.signature = signature
        self.min_pos = sum(1 for p in positional if p.default is p.empty)
        var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
        self.max_pos = 1 << 30 if var_pos else len(positional)
        self.var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        self.names = frozenset(p.name for p in params if p.kind is not p.POSITIONAL_ONLY
                               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        self.required_kw = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY
                                     and p.default is p.empty)
        self.fast = not self.required_kw

    def check(self, what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError naming ``what`` if ``args, kwargs`` cannot bind."""
        if not kwargs and self.fast and self.min_pos <= len(args) <= self.max_pos:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{what}.remote(): {e} (signature: {what}{self.signature})"
                            ) from None

    def __getstate__(self) -> inspect.Signature:
        return self.signature

    def __setstate__(self, signature: inspect.Signature) -> None:
        self.__init__(signature)  # type: ignore[misc]


def arity_of(fn: Callable[..., Any], *, bound: bool = False) -> Arity | None:
    """The arity of ``fn`` (``bound``: drop its first parameter, as for a method called on
    an instance); None when Python cannot tell (some builtins), so nothing is checked."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if bound:
        params = list(signature.parameters.values())
        if params and params[0].kind in _POSITIONAL:
            signature = signature.replace(parameters=params[1:])
    return Arity(signature)
