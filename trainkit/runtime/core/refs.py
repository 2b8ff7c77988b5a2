"""ObjectRef: a future for a value owned by the process that created it."""

from __future__ import annotations

from typing import Any

from trainkit.runtime.core import context as _context
from trainkit.runtime.wire.serialization import collect_ref


class ObjectRef:
    """A reference to a value that is, or will be, in the runtime.

    Pass it to tasks (a top-level argument arrives as its value; one nested in a container
    arrives as a ref), or read it with ``get``. The value is freed once no process holds a
    ref to it. Created by ``.remote()`` and ``put``; never construct one yourself.
    """

    __slots__ = ("__weakref__", "_id", "_owner")

    def __init__(self, object_id: bytes, owner: str, *, _add_ref: bool = True) -> None:
        self._id = object_id
        self._owner = owner
        if _add_ref:
            core = _context.core
            if core is not None:
                core.add_ref(object_id, owner)

    @property
    def id(self) -> bytes:
        return self._id

    @property
    def owner_address(self) -> str:
        return self._owner

    def hex(self) -> str:
        return self._id.hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __del__(self) -> None:
        core = _context.core
        if core is not None:
            try:
                core.remove_ref(self._id, self._owner)
            except Exception:  # interpreter shutdown: nothing left to release
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        collect_ref(self)
        return (ObjectRef, (self._id, self._owner))

    def __await__(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        core = _context.core
        if core is None:
            raise RuntimeError("trainkit is not initialized")
        return loop.run_in_executor(None, core.get_one, self, None).__await__()
