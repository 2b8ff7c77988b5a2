"""A stable text and digest of a piece of user code: what makes a rerun "the same".

The code of a function (its source where Python can find it, its bytecode otherwise), with
the functions and classes of the user's module it calls and the values it closes over,
followed a few levels deep; a class by its methods; a value by a canonical text (equal
definitions give equal text, whatever the run: no addresses). Tune fingerprints an
experiment with it (``trainkit.tune._fingerprint``), the Trainer a run's training loop.

Pure: no runtime, no files.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import re
import types
from collections.abc import Mapping
from typing import Any

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 4  # how far helpers of helpers are followed


def check_resume(resume: object, what: str) -> bool | str:
    """``resume`` as a ``Tuner`` or ``Trainer`` takes it: True, False or "auto"; ``what``
    names what a rerun continues ("experiment", "run")."""
    if isinstance(resume, bool):
        return resume
    if isinstance(resume, str) and resume.lower() == "auto":
        return "auto"
    raise ValueError(f"`resume` is {resume!r}, but must be 'auto' (continue only the same "
                     f"{what}), True (continue it whatever changed) or False (start a new "
                     "one)")


def code_digest(obj: Any) -> str:
    """A short hex digest of the code that defines ``obj``."""
    return hashlib.sha256(code_of(obj, set(), 0).encode()).hexdigest()[:16]


def code_of(obj: Any, seen: set[int], depth: int) -> str:
    """The code that defines ``obj``: a function, a class, or a Trainer (its loop)."""
    if id(obj) in seen or depth > _MAX_DEPTH:
        return "<seen>"
    seen.add(id(obj))
    wrapped = getattr(obj, "__wrapped__", None)  # with_resources / with_parameters
    if wrapped is not None and wrapped is not obj:
        return code_of(wrapped, seen, depth)
    loop = getattr(obj, "fn", None)  # a train.Trainer: its train_loop_per_worker
    if loop is not None and hasattr(obj, "scaling"):
        return "trainer:" + code_of(loop, seen, depth) + canonical(
            getattr(obj, "config", None), seen, depth)
    if isinstance(obj, functools.partial):
        return ("partial:" + code_of(obj.func, seen, depth)
                + canonical(obj.args, seen, depth) + canonical(obj.keywords, seen, depth))
    if inspect.isclass(obj):
        return _class_code(obj, seen, depth)
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return _function_code(obj, seen, depth)
    if callable(obj):  # a callable object: its class
        return _class_code(type(obj), seen, depth)
    return canonical(obj, seen, depth)


def _class_code(cls: type, seen: set[int], depth: int) -> str:
    parts = [cls.__qualname__]
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins",) or klass.__module__.startswith("trainkit."):
            continue  # the framework's own classes (tune.Trainable) are not the user's code
        for name, value in sorted(vars(klass).items()):
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, types.FunctionType):
                parts.append(f"{klass.__qualname__}.{name}:{_function_code(value, seen, depth)}")
            elif not name.startswith("__"):
                parts.append(f"{name}={canonical(value, seen, depth)}")
    return ";".join(parts)


def _function_code(fn: Any, seen: set[int], depth: int) -> str:
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    try:
        body = inspect.getsource(fn)
    except (OSError, TypeError):
        body = _bytecode(code)
    parts = [body, canonical(fn.__defaults__, seen, depth)]
    # Functions and classes of the same module the body calls: an edited helper is an
    # edited objective too.
    module = getattr(fn, "__module__", None)
    glob = getattr(fn, "__globals__", {})
    for name in sorted(set(_names(code))):
        value = glob.get(name)
        if (inspect.isfunction(value) or inspect.isclass(value)) and \
                getattr(value, "__module__", None) == module:
            parts.append(f"{name}:{code_of(value, seen, depth + 1)}")
    for cell_name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        # Code it closes over is part of it; data only by its type (a list the loop appends
        # to, a captured dataset: their contents are state, not definition).
        if callable(value) or isinstance(value, functools.partial):
            parts.append(f"{cell_name}={code_of(value, seen, depth + 1)}")
        else:
            parts.append(f"{cell_name}:{type(value).__qualname__}")
    return "\n".join(parts)


def _names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_names(const))
    return names


def _bytecode(code: types.CodeType) -> str:
    consts = [(_bytecode(c) if isinstance(c, types.CodeType) else repr(c))
              for c in code.co_consts]
    return f"{code.co_code.hex()}|{code.co_names}|{consts}"


def canonical(value: Any, seen: set[int], depth: int) -> str:
    """A stable text for a search space value: equal definitions give equal text."""
    if isinstance(value, Mapping):
        items = sorted((str(k), canonical(v, seen, depth)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "[" + ",".join(
            canonical(v, seen, depth) for v in value) + "]"
    if isinstance(value, (str, int, float, bool, type(None), enum.Enum)):
        return repr(value)
    if isinstance(value, (types.FunctionType, types.MethodType)) or inspect.isclass(value):
        return code_of(value, seen, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(f"{f.name}={canonical(getattr(value, f.name), seen, depth)}"
                          for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}({fields})"
    return _ADDRESS.sub("", repr(value))  # "<object at 0x...>" would differ on every run
