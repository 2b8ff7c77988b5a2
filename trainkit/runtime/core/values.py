"""Object values as they travel between processes: small tuples, cheap to pickle.

- ``(INLINE, meta, buffers)``: a small value, carried in the message itself;
- ``(STORED, node_id, size)``: a large value in the object store of node ``node_id``;
- ``(ERROR, meta, buffers)``: an exception, raised by whoever reads the value.
"""

from __future__ import annotations

import os
from typing import Any

from trainkit.exceptions import RuntimeSystemError
from trainkit.exceptions import TaskError
from trainkit.runtime.wire.protocol import ERROR
from trainkit.runtime.wire.protocol import INLINE
from trainkit.runtime.wire.protocol import STORED
from trainkit.runtime.wire.serialization import dumps
from trainkit.runtime.wire.serialization import inline_buffers

Value = tuple[Any, ...]
ReturnId = bytes | tuple[bytes, ...]  # a tuple for num_returns > 1

__all__ = ["ERROR", "INLINE", "STORED", "ReturnId", "Value", "error_value", "is_error",
           "return_ids", "stored_on", "task_error_value"]


def error_value(err: BaseException) -> Value:
    meta, buffers, _ = dumps(err, "an error")
    return (ERROR, meta, inline_buffers(buffers))


def is_error(value: Value | None) -> bool:
    return value is not None and value[0] == ERROR


def stored_on(value: Value | None) -> str | None:
    """The node whose store holds the value, or None for an inline value or an error."""
    return value[1] if value is not None and value[0] == STORED else None


def return_ids(return_id: ReturnId) -> tuple[bytes, ...]:
    return return_id if isinstance(return_id, tuple) else (return_id,)


def task_error_value(name: str, exc: BaseException) -> Value:
    """Wrap an exception raised by user code into a TaskError value."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskError):
        err: BaseException = exc
    else:
        try:
            dumps(exc)
            cause: BaseException | None = exc
        except Exception:
            cause = RuntimeSystemError(f"{type(exc).__name__}: {exc} (could not be pickled)")
        err = TaskError(name, tb, cause, os.getpid()).as_instanceof_cause()
    return error_value(err)
