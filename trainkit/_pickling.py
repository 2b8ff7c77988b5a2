"""Finding what makes a function unpicklable, to name it in the error users see."""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle  # type: ignore[import-untyped]


def unpicklable_capture(fn: Any) -> str | None:
    """Name the closure variable or global of ``fn`` that cannot be pickled."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    cells = dict(zip(code.co_freevars, fn.__closure__ or (), strict=False))
    candidates = [(n, "variable", c.cell_contents) for n, c in cells.items()]
    candidates += [(n, "global", fn.__globals__[n]) for n in code.co_names
                   if n in fn.__globals__ and not inspect.ismodule(fn.__globals__[n])]
    for name, kind, value in candidates:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"the {kind} {name!r} ({type(value).__name__})"
    return None
