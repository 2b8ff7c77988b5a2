"""An experiment's fingerprint: what makes a rerun "the same experiment".

A rerun of a script or notebook cell with the same experiment name resumes only when the
fingerprint stored in the experiment folder matches: a hash of the trainable's code (its
source where Python can find it, its bytecode otherwise, and the same for the functions and
classes of the user's module it calls), the search space (domains by their parameters,
``sample_from`` functions by their code) and the search definition (metric, mode, the
searcher's and scheduler's types and the searcher's own space). ``num_samples``, the time
budget and the stop criteria are left out: raising them and rerunning continues the sweep.

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


def fingerprint(trainable: Any, param_space: Mapping[str, Any], tune_config: Any) -> str:
    """A short hex digest of the experiment's definition."""
    h = hashlib.sha256()
    h.update(_code_of(trainable, set(), 0).encode())
    h.update(b"\0space\0")
    h.update(_canonical(param_space, set(), 0).encode())
    h.update(b"\0search\0")
    h.update(_search_definition(tune_config).encode())
    return h.hexdigest()[:16]


def check_resume(resume: Any) -> bool | str:
    """``resume`` as given to a ``Tuner``: True, False or "auto"."""
    if isinstance(resume, bool):
        return resume
    if isinstance(resume, str) and resume.lower() == "auto":
        return "auto"
    raise ValueError(f"`resume` is {resume!r}, but must be 'auto' (continue only the same "
                     "experiment), True (continue it whatever changed) or False (start a new "
                     "one)")


def _search_definition(tc: Any) -> str:
    searcher = getattr(tc, "search_alg", None)
    inner = getattr(searcher, "searcher", searcher)  # a ConcurrencyLimiter's searcher
    scheduler = getattr(tc, "scheduler", None)
    parts = [repr(getattr(tc, "metric", None)), repr(getattr(tc, "mode", None)),
             type(inner).__qualname__ if inner is not None else "default",
             type(scheduler).__qualname__ if scheduler is not None else "default"]
    for attr in ("_params", "_constants", "_define_by_run", "_space"):  # its own space
        own = getattr(inner, attr, None)
        if own is not None:
            parts.append(f"{attr}={_canonical(own, set(), 0)}")
    return "|".join(parts)


def _code_of(obj: Any, seen: set[int], depth: int) -> str:
    """The code that defines ``obj``: a function, a class, or a Trainer (its loop)."""
    if id(obj) in seen or depth > _MAX_DEPTH:
        return "<seen>"
    seen.add(id(obj))
    wrapped = getattr(obj, "__wrapped__", None)  # with_resources / with_parameters
    if wrapped is not None and wrapped is not obj:
        return _code_of(wrapped, seen, depth)
    loop = getattr(obj, "fn", None)  # a train.Trainer: its train_loop_per_worker
    if loop is not None and hasattr(obj, "scaling"):
        return "trainer:" + _code_of(loop, seen, depth) + _canonical(
            getattr(obj, "config", None), seen, depth)
    if isinstance(obj, functools.partial):
        return ("partial:" + _code_of(obj.func, seen, depth)
                + _canonical(obj.args, seen, depth) + _canonical(obj.keywords, seen, depth))
    if inspect.isclass(obj):
        return _class_code(obj, seen, depth)
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return _function_code(obj, seen, depth)
    if callable(obj):  # a callable object: its class
        return _class_code(type(obj), seen, depth)
    return _canonical(obj, seen, depth)


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
                parts.append(f"{name}={_canonical(value, seen, depth)}")
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
    parts = [body, _canonical(fn.__defaults__, seen, depth)]
    # Functions and classes of the same module the body calls: an edited helper is an
    # edited objective too.
    module = getattr(fn, "__module__", None)
    glob = getattr(fn, "__globals__", {})
    for name in sorted(set(_names(code))):
        value = glob.get(name)
        if (inspect.isfunction(value) or inspect.isclass(value)) and \
                getattr(value, "__module__", None) == module:
            parts.append(f"{name}:{_code_of(value, seen, depth + 1)}")
    for cell_name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        parts.append(f"{cell_name}={_code_of(value, seen, depth + 1)}")
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


def _canonical(value: Any, seen: set[int], depth: int) -> str:
    """A stable text for a search space value: equal definitions give equal text."""
    if isinstance(value, Mapping):
        items = sorted((str(k), _canonical(v, seen, depth)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "[" + ",".join(
            _canonical(v, seen, depth) for v in value) + "]"
    if isinstance(value, (str, int, float, bool, type(None), enum.Enum)):
        return repr(value)
    if isinstance(value, (types.FunctionType, types.MethodType)) or inspect.isclass(value):
        return _code_of(value, seen, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ",".join(f"{f.name}={_canonical(getattr(value, f.name), seen, depth)}"
                          for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}({fields})"
    return _ADDRESS.sub("", repr(value))  # "<object at 0x...>" would differ on every run
