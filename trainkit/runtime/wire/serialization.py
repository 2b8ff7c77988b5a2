"""Values to bytes and back: pickle protocol 5 with out-of-band buffers.

``dumps`` returns the pickle stream ("meta") and the large buffers it refers to (numpy
arrays, Arrow buffers, CPU tensors) without copying them. Small values travel inline in a
message; large ones are written once into the node's shared-memory arena and ``loads``
rebuilds them as views of that memory (zero copy). Functions and classes of ``__main__``
or of modules a worker cannot import travel by value through cloudpickle.

While a value is being pickled, the ``ObjectRef``s inside it are collected, so that the
serializing process can keep them alive as long as the serialized copy may be read.
"""

from __future__ import annotations

import io
import pickle
import threading
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

INLINE_THRESHOLD_BYTES = 100 * 1024

_local = threading.local()


def collect_ref(ref: Any) -> None:
    """Called by ``ObjectRef.__reduce__``: remember refs pickled by the current ``dumps``."""
    refs = getattr(_local, "refs", None)
    if refs is not None:
        refs.append(ref)


class SerializationError(TypeError):
    """A value could not be pickled; the message names it."""


_PLAIN = (int, float, str, bytes, bool, type(None))


def _is_plain(value: Any, depth: int = 2) -> bool:
    """True for small values plain pickle handles exactly like cloudpickle (no code, no refs)."""
    t = type(value)
    if t in _PLAIN:
        return True
    if depth == 0:
        return False
    if t is tuple or t is list:
        return len(value) <= 16 and all(_is_plain(v, depth - 1) for v in value)
    if t is dict:
        return len(value) <= 16 and all(
            type(k) is str and _is_plain(v, depth - 1) for k, v in value.items())
    return False


def dumps(value: Any, what: str = "value") -> tuple[bytes, list[pickle.PickleBuffer], list[Any]]:
    """Pickle ``value``; return (meta, out-of-band buffers, contained ObjectRefs)."""
    if _is_plain(value):
        # The common small case (call arguments, results): C pickle, ~10x faster than
        # setting up a CloudPickler.
        return pickle.dumps(value, protocol=5), [], []
    buffers: list[pickle.PickleBuffer] = []
    if type(value).__name__ == "ndarray" and type(value).__module__ == "numpy" \
            and not value.dtype.hasobject:
        # A plain array holds no code or refs: the C pickler, buffers out of band.
        return pickle.dumps(value, protocol=5, buffer_callback=buffers.append), buffers, []
    outer = getattr(_local, "refs", None)
    refs: list[Any] = []
    _local.refs = refs
    try:
        f = io.BytesIO()
        cloudpickle.CloudPickler(f, protocol=5, buffer_callback=buffers.append).dump(value)
        meta = f.getvalue()
    except Exception as e:
        raise SerializationError(
            f"could not serialize {what} ({type(value).__name__}): {e}. Values sent to tasks "
            "and actors must be picklable; create unpicklable things (locks, sockets, open "
            "files, CUDA contexts) inside the task or actor instead."
        ) from e
    finally:
        _local.refs = outer
    return meta, buffers, refs


def buffers_size(buffers: list[pickle.PickleBuffer]) -> int:
    return sum(b.raw().nbytes for b in buffers)


def inline_buffers(buffers: list[pickle.PickleBuffer]) -> list[bytes]:
    return [b.raw().tobytes() for b in buffers]


def loads(meta: bytes | memoryview, buffers: Any = ()) -> Any:
    return pickle.loads(meta, buffers=buffers)


def dumps_function(fn: Any) -> bytes:
    """Pickle a function or class (by reference when importable, else by value)."""
    try:
        data: bytes = cloudpickle.dumps(fn, protocol=5)
        return data
    except Exception as e:
        raise SerializationError(
            f"could not serialize {getattr(fn, '__qualname__', fn)!r}: {e}. A remote function "
            "or actor class must be picklable: move unpicklable globals it captures into it."
        ) from e
